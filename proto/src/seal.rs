//! AES-256-GCM sealing of reading values (DESIGN §4, §5.2).
//!
//! The gateway seals each reading's [`SealedValue`] under the owner's data key;
//! only the clinician API holds that key again. The associated data is the
//! reading's canonical header plus the key id, so moving a ciphertext to
//! another reading, device, time or key fails to open. Nonces are 96 random
//! bits from the caller's CSPRNG (proto does no I/O, so the caller passes it).

use crate::envelope::{NONCE_LEN, Sealed};
use crate::header::ReadingHeader;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// An owner's AES-256 data key and its id (with its expanded AES-GCM key
/// schedule, computed once: the API opens a day's 86,400 readings with one key).
#[derive(Clone)]
pub struct DataKey {
    kid: String,
    key: [u8; 32],
    cipher: Aes256Gcm,
}

/// The key bytes are wiped when the key is dropped (the AES key schedule is
/// wiped by `aes-gcm` itself, its `zeroize` feature).
impl Drop for DataKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl DataKey {
    /// A key from its id and 32 bytes.
    pub fn new(kid: impl Into<String>, key: [u8; 32]) -> Self {
        DataKey {
            kid: kid.into(),
            key,
            cipher: Aes256Gcm::new(&key.into()),
        }
    }

    /// A fresh random key.
    pub fn generate(kid: impl Into<String>, rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut key = [0u8; 32];
        rng.fill_bytes(&mut key);
        DataKey::new(kid, key)
    }

    /// The key id every sealed value names.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The raw key bytes (for storing the key in a key file).
    pub fn bytes(&self) -> &[u8; 32] {
        &self.key
    }
}

/// The plaintext inside a sealed reading: the proven slots and what is needed
/// to open the commitment, plus the extras that are carried but not proven.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SealedValue {
    /// Fixed-point slot values (DESIGN §3), in the data type's slot order.
    pub slots: Vec<u32>,
    /// The commitment's blinding `r`, 32 bytes (a BN254 scalar, little-endian).
    #[serde(with = "serde_bytes")]
    pub blinding: [u8; 32],
    /// Index of this reading in its proven group (0 for a single reading).
    pub position: u16,
    /// The unit the device reported, if it was converted (e.g. `[degF]`).
    #[serde(default)]
    pub original_unit: Option<String>,
    /// Non-proven extras: RR intervals, sensor contact, status bits, context.
    #[serde(default)]
    pub extras: BTreeMap<String, ciborium::Value>,
}

impl SealedValue {
    /// CBOR bytes of this value (the plaintext that gets sealed).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        ciborium::into_writer(self, &mut out).expect("CBOR encoding into a Vec is infallible");
        out
    }

    /// Parse the plaintext of a sealed value.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        ciborium::from_reader(bytes).map_err(|e| SealError::BadPlaintext(e.to_string()))
    }
}

/// Why a sealed value did not open.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// The value was sealed under another key id than the key given.
    #[error("sealed with key {found:?}, but the key given is {expected:?}")]
    WrongKeyId {
        /// The id of the key given to open it.
        expected: String,
        /// The key id the sealed value names.
        found: String,
    },
    /// AES-GCM refused the ciphertext: wrong key bytes, or the header, key id, nonce or
    /// ciphertext differ from what was sealed.
    #[error(
        "ciphertext does not authenticate: wrong key, or the reading's header or ciphertext was changed"
    )]
    Authentication,
    /// The ciphertext opened but its plaintext is not a CBOR [`SealedValue`]; holds the
    /// decoder's error.
    #[error("decrypted plaintext is not a sealed value: {0}")]
    BadPlaintext(String),
}

/// The associated data for a reading sealed under key `kid`.
pub fn associated_data(header: &ReadingHeader<'_>, kid: &str) -> Vec<u8> {
    let mut aad = header.canonical_bytes();
    let len = u16::try_from(kid.len()).unwrap_or(u16::MAX);
    aad.extend_from_slice(&len.to_be_bytes());
    aad.extend_from_slice(&kid.as_bytes()[..usize::from(len)]);
    aad
}

/// Seal `value` for the reading with this header.
pub fn seal(
    key: &DataKey,
    header: &ReadingHeader<'_>,
    value: &SealedValue,
    rng: &mut (impl RngCore + CryptoRng),
) -> Sealed {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let aad = associated_data(header, &key.kid);
    let plaintext = value.to_bytes();
    let ciphertext = key
        .cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &plaintext,
                aad: &aad,
            },
        )
        .expect("AES-GCM encryption fails only past 2^36 bytes");
    Sealed {
        kid: key.kid.clone(),
        nonce,
        ciphertext,
    }
}

/// Open a sealed value of the reading with this header.
pub fn open(
    key: &DataKey,
    header: &ReadingHeader<'_>,
    sealed: &Sealed,
) -> Result<SealedValue, SealError> {
    open_parts(key, header, &sealed.kid, &sealed.nonce, &sealed.ciphertext)
}

/// [`open`], from a sealed value's parts as they are stored apart (the
/// clinician API reads them from a row, not from an envelope).
pub fn open_parts(
    key: &DataKey,
    header: &ReadingHeader<'_>,
    kid: &str,
    nonce: &[u8; NONCE_LEN],
    ciphertext: &[u8],
) -> Result<SealedValue, SealError> {
    if kid != key.kid {
        return Err(SealError::WrongKeyId {
            expected: key.kid.clone(),
            found: kid.to_owned(),
        });
    }
    let aad = associated_data(header, kid);
    let plaintext = key
        .cipher
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: &aad,
            },
        )
        .map_err(|_| SealError::Authentication)?;
    SealedValue::from_bytes(&plaintext)
}
