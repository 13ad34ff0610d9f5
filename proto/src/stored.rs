//! The stored form of a sealed value: the JSON object in `health_data.value`
//! (DESIGN §6). Ingest writes it ([`encode`]); the clinician API reads it
//! back ([`SealedBytes::from_hex`], or [`decode`] for a whole value). It holds
//! only what the envelope carried sealed — the key id, nonce and ciphertext
//! — never a plaintext value:
//!
//! ```json
//! {"alg": "A256GCM", "kid": "k1", "nonce": "<24 hex>", "ciphertext": "<hex, tag included>"}
//! ```
//!
//! The field names are [`ALG`], [`KID`], [`NONCE`] and [`CIPHERTEXT`]; the
//! API's SQL reads them with `value->>'…'`, and a test there holds its
//! statement to these names.

use crate::envelope::NONCE_LEN;
use crate::envelope::Sealed;

/// The algorithm every stored value names.
pub const ALGORITHM: &str = "A256GCM";
/// Field: the algorithm ([`ALGORITHM`]).
pub const ALG: &str = "alg";
/// Field: the id of the owner's data key that sealed the value.
pub const KID: &str = "kid";
/// Field: the 12-byte nonce, lower-case hex.
pub const NONCE: &str = "nonce";
/// Field: the ciphertext followed by the 16-byte GCM tag, lower-case hex.
pub const CIPHERTEXT: &str = "ciphertext";

/// The JSON stored in `health_data.value` for a sealed value.
pub fn encode(s: &Sealed) -> serde_json::Value {
    serde_json::json!({
        ALG: ALGORITHM,
        KID: s.kid,
        NONCE: hex::encode(s.nonce),
        CIPHERTEXT: hex::encode(&s.ciphertext),
    })
}

/// A stored value's nonce and ciphertext, decoded (its key id travels beside it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedBytes {
    /// The nonce.
    pub nonce: [u8; NONCE_LEN],
    /// Ciphertext and tag.
    pub ciphertext: Vec<u8>,
}

impl SealedBytes {
    /// From the hex text of the [`NONCE`] and [`CIPHERTEXT`] fields (`None`
    /// where the field is missing). Uses faster-hex: decoding a day's 86,400
    /// values with the `hex` crate cost as much as their AES-GCM.
    pub fn from_hex(nonce: Option<&[u8]>, ciphertext: Option<&[u8]>) -> Result<Self, &'static str> {
        let (Some(nonce), Some(ct)) = (nonce, ciphertext) else {
            return Err("the stored value is not a sealed value");
        };
        let mut n = [0u8; NONCE_LEN];
        if nonce.len() != 2 * NONCE_LEN || faster_hex::hex_decode(nonce, &mut n).is_err() {
            return Err("the stored nonce is malformed");
        }
        let mut ciphertext = vec![0u8; ct.len() / 2];
        if ct.len() % 2 != 0 || faster_hex::hex_decode(ct, &mut ciphertext).is_err() {
            return Err("the stored ciphertext is not hex");
        }
        Ok(SealedBytes {
            nonce: n,
            ciphertext,
        })
    }
}

/// A whole stored value back into the [`Sealed`] it was made from.
pub fn decode(v: &serde_json::Value) -> Result<Sealed, &'static str> {
    if v.get(ALG).and_then(|a| a.as_str()) != Some(ALGORITHM) {
        return Err("the stored value names no A256GCM algorithm");
    }
    let kid = v
        .get(KID)
        .and_then(|k| k.as_str())
        .ok_or("the stored value has no key id")?;
    let field = |name| {
        v.get(name)
            .and_then(|f: &serde_json::Value| f.as_str())
            .map(str::as_bytes)
    };
    let bytes = SealedBytes::from_hex(field(NONCE), field(CIPHERTEXT))?;
    Ok(Sealed {
        kid: kid.to_owned(),
        nonce: bytes.nonce,
        ciphertext: bytes.ciphertext,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn decode_inverts_encode(kid in "[a-z0-9-]{1,40}", nonce in any::<[u8; 12]>(), ct in proptest::collection::vec(any::<u8>(), 16..200)) {
            let s = Sealed { kid, nonce, ciphertext: ct };
            let stored = encode(&s);
            prop_assert_eq!(decode(&stored), Ok(s));
        }

        #[test]
        fn decode_never_panics(v in "\\PC*") {
            let parsed: serde_json::Value = serde_json::from_str(&v).unwrap_or(serde_json::Value::String(v));
            let _ = decode(&parsed);
        }
    }

    #[test]
    fn the_stored_shape_is_the_documented_one() {
        let s = Sealed {
            kid: "k1".into(),
            nonce: [0xab; 12],
            ciphertext: vec![1, 2, 255],
        };
        assert_eq!(
            encode(&s),
            serde_json::json!({"alg": "A256GCM", "kid": "k1", "nonce": "abababababababababababab", "ciphertext": "0102ff"})
        );
    }

    #[test]
    fn malformed_fields_are_refused_with_a_reason() {
        assert_eq!(
            SealedBytes::from_hex(Some(b"abcd"), Some(b"00")),
            Err("the stored nonce is malformed")
        );
        assert_eq!(
            SealedBytes::from_hex(Some(&[b'a'; 24]), Some(b"0")),
            Err("the stored ciphertext is not hex")
        );
        assert_eq!(
            SealedBytes::from_hex(None, Some(b"00")),
            Err("the stored value is not a sealed value")
        );
        assert!(decode(&serde_json::json!({"alg": "none", "kid": "k"})).is_err());
    }
}
