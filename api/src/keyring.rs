//! The owners' data keys, which only the API holds (DESIGN §5.2).
//!
//! File format, one key per line: `kid = 64 hex digits` (the AES-256 key);
//! blank lines and `#` comments are ignored. The file must not be readable
//! by group or others (mode 0600 or 0400), or it is refused.

use anyhow::{Context, Result, bail};
use hailan_proto::seal::DataKey;
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Data keys by key id.
#[derive(Debug, Default, Clone)]
pub struct KeyRing {
    keys: HashMap<String, DataKey>,
}

impl KeyRing {
    /// Keys from `pairs` (tests, benchmarks).
    pub fn from_keys(keys: impl IntoIterator<Item = DataKey>) -> KeyRing {
        KeyRing {
            keys: keys.into_iter().map(|k| (k.kid().to_owned(), k)).collect(),
        }
    }

    /// Read a key ring file, refusing one that group or others can read.
    pub fn load(path: &Path) -> Result<KeyRing> {
        let meta = std::fs::metadata(path)
            .with_context(|| format!("api.key_ring: cannot read {}", path.display()))?;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            bail!(
                "api.key_ring: {} has mode {:04o}; it holds the owners' data keys and must not be \
                 readable by group or others (chmod 600 {})",
                path.display(),
                mode & 0o7777,
                path.display()
            );
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("api.key_ring: cannot read {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("api.key_ring: {}", path.display()))
    }

    /// Parse the key ring text.
    pub fn parse(text: &str) -> Result<KeyRing> {
        let mut keys = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((kid, hex_key)) = line.split_once('=') else {
                bail!("line {}: expected `kid = <64 hex digits>`", i + 1);
            };
            let (kid, hex_key) = (kid.trim(), hex_key.trim().trim_matches('"'));
            if kid.is_empty() {
                bail!("line {}: empty key id", i + 1);
            }
            let bytes = hex::decode(hex_key)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .with_context(|| format!("line {}: key {kid:?} is not 64 hex digits", i + 1))?;
            if keys
                .insert(kid.to_owned(), DataKey::new(kid, bytes))
                .is_some()
            {
                bail!("line {}: key id {kid:?} appears twice", i + 1);
            }
        }
        Ok(KeyRing { keys })
    }

    /// The key with this id.
    pub fn get(&self, kid: &str) -> Option<&DataKey> {
        self.keys.get(kid)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the ring holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses_readable_files() {
        let ring = KeyRing::parse(&format!(
            "# owners\nowner-key-1 = {}\n\nowner-key-test=\"{}\"\n",
            hex::encode([7u8; 32]),
            hex::encode([0x42u8; 32])
        ))
        .expect("parses");
        assert_eq!(ring.len(), 2);
        assert_eq!(ring.get("owner-key-1").map(|k| *k.bytes()), Some([7; 32]));
        assert!(KeyRing::parse("k = 00").is_err());
        assert!(KeyRing::parse("no equals sign").is_err());

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys");
        std::fs::write(&path, format!("k = {}\n", hex::encode([1u8; 32]))).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let err = KeyRing::load(&path)
            .expect_err("group-readable")
            .to_string();
        assert!(err.contains("must not be readable"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(KeyRing::load(&path).expect("0600 loads").len(), 1);
    }
}
