//! The gateway's key material: the owner's AES-256 data key and the two
//! proving keys (DESIGN §5.2). Loaded once at start; a missing, malformed,
//! world-readable or (in production) development key is refused with the
//! config key that points at it.

use crate::config::{GatewayConfig, read_secret_file};
use anyhow::{Context, Result, bail};
use hailan_proto::envelope::ProofKind;
use hailan_proto::seal::DataKey;
use hailan_proto::zk::keys::kind_name;
use hailan_proto::zk::{KeyOrigin, ProvingKey};
use std::collections::HashMap;
use std::path::Path;

/// Everything needed to seal and prove.
pub struct Keys {
    /// The owner's AES-256 data key (`keys.data_key_file`, named by
    /// `keys.data_key_id`): every reading's value is sealed with it.
    pub data_key: DataKey,
    /// The data keys of the household's other patients, by DID
    /// (`[[keys.patients]]`): the readings of a user slot mapped to one of
    /// them are sealed with theirs.
    pub patients: HashMap<String, DataKey>,
    /// The proving key for one reading per proof (`reading.pk` in `keys.zk_dir`).
    pub reading: ProvingKey,
    /// The proving key for a window of readings under one proof
    /// (`window.pk` in `keys.zk_dir`).
    pub window: ProvingKey,
}

impl Keys {
    /// Load the keys named by `cfg.keys`.
    pub fn load(cfg: &GatewayConfig) -> Result<Keys> {
        let data_key = load_data_key(&cfg.keys.data_key_file, &cfg.keys.data_key_id)?;
        let pk = |kind: ProofKind| -> Result<ProvingKey> {
            let key = read_proving_key(&cfg.keys.zk_dir, kind)?;
            if let KeyOrigin::Dev { seed } = key.origin()
                && !cfg.keys.allow_dev_keys
            {
                bail!(
                    "keys.zk_dir: {} is a development key (seed {seed}): anyone can forge its proofs; set keys.allow_dev_keys = true only for tests and demos",
                    proving_key_path(&cfg.keys.zk_dir, kind).display()
                );
            }
            Ok(key)
        };
        let mut patients = HashMap::new();
        for (i, p) in cfg.keys.patients.iter().enumerate() {
            let key = load_data_key(&p.data_key_file, &p.data_key_id)
                .with_context(|| format!("keys.patients[{i}] ({})", p.did))?;
            patients.insert(p.did.clone(), key);
        }
        Ok(Keys {
            data_key,
            patients,
            reading: pk(ProofKind::Reading)?,
            window: pk(ProofKind::Window)?,
        })
    }
}

impl Keys {
    /// The data key that seals readings for `patient` (`None`: the owner);
    /// `None` when the configuration has no key for them.
    pub fn data_key_for(&self, patient: Option<&str>) -> Option<&DataKey> {
        match patient {
            None => Some(&self.data_key),
            Some(did) => self.patients.get(did),
        }
    }
}

/// Where `zk setup` writes the proving key of `kind` in a key directory.
fn proving_key_path(zk_dir: &Path, kind: ProofKind) -> std::path::PathBuf {
    zk_dir.join(format!("{}.pk", kind_name(kind)))
}

/// Read the proving key of `kind` from the key directory `zk_dir`
/// (`keys.zk_dir`), checking that it proves that statement. Development
/// keys are returned as they are: the caller decides whether they may serve.
pub fn read_proving_key(zk_dir: &Path, kind: ProofKind) -> Result<ProvingKey> {
    let path = proving_key_path(zk_dir, kind);
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "keys.zk_dir: cannot read {} (write the keys with `hailan-ingest zk setup --out {}`)",
            path.display(),
            zk_dir.display()
        )
    })?;
    let key = ProvingKey::from_bytes(&bytes)
        .with_context(|| format!("keys.zk_dir: {} is not a proving key", path.display()))?;
    if key.kind() != kind {
        bail!(
            "keys.zk_dir: {} holds a {:?} key",
            path.display(),
            key.kind()
        );
    }
    Ok(key)
}

/// Read the owner's data key: 64 hex characters, mode 0600.
pub fn load_data_key(path: &Path, kid: &str) -> Result<DataKey> {
    let text = zeroize::Zeroizing::new(read_secret_file(path, "keys.data_key_file")?);
    let bytes = zeroize::Zeroizing::new(hex::decode(text.trim()).with_context(|| {
        format!(
            "keys.data_key_file: {} is not hex (64 hex characters expected)",
            path.display()
        )
    })?);
    let mut key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        anyhow::anyhow!(
            "keys.data_key_file: {} holds {} bytes, an AES-256 key is 32",
            path.display(),
            bytes.len()
        )
    })?;
    let data_key = DataKey::new(kid, key);
    zeroize::Zeroize::zeroize(&mut key);
    Ok(data_key)
}

/// Write a new random data key to `path` (mode 0600); refuses to overwrite.
pub fn generate_data_key(path: &Path) -> Result<()> {
    use rand_core::{OsRng, RngCore};
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut key = [0u8; 32];
    OsRng.fill_bytes(&mut key);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    writeln!(f, "{}", hex::encode(key)).context("writing the data key")?;
    f.sync_all().context("syncing the data key")?;
    Ok(())
}
