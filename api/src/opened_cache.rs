//! Windows the API has already opened: their decrypted readings and
//! recomputed commitment, kept by a SHA-256 digest of every stored byte that
//! opening them depends on.
//!
//! Why: a clinician's chart re-reads the same day again and again (each
//! range change, each reload, every FHIR poll), and opening a day of 1 Hz
//! heart rate costs 86,400 AES-GCM decryptions and 5,400 Poseidon
//! commitments — most of a day view's time. Opening is a pure function of
//! the stored row bytes (ids, seqs, times, gateway, device, data type, key
//! id, nonce, ciphertext) and the key ring, and the cache lives and dies with
//! the key ring it was filled with; so a hit gives exactly what opening again
//! would. A stored byte changed by anyone (a tampered ciphertext, a moved
//! reading) changes the digest: the window is opened afresh, and shown as
//! unverifiable if it no longer opens. What is never cached: the comparison
//! with the stored commitment and the proof's public inputs, which every
//! request makes again.
//!
//! Bounded (least recently used windows go first); plaintext values stay in
//! the API process, which holds the owners' keys anyway.

use super::check::{Calc, StoredReading};
use hailan_proto::seal::SealedValue;
use lru::LruCache;
use sha2::{Digest, Sha256};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

/// One opened window: its readings' sealed values in seq order and its
/// recomputed commitment.
#[derive(Debug)]
pub struct OpenedWindow {
    /// The decrypted sealed values of the window's readings, in seq order.
    pub values: Vec<SealedValue>,
    /// The recomputed commitment (bytes and decimal), context x and slot values.
    pub calc: Calc,
}

/// The digest a window is kept under.
pub type WindowDigest = [u8; 32];

/// Opened windows, least recently used first out. Capacity 0: nothing kept.
pub struct OpenedCache {
    windows: Option<Mutex<LruCache<WindowDigest, Arc<OpenedWindow>>>>,
}

impl std::fmt::Debug for OpenedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedCache")
            .field("windows", &self.len())
            .finish()
    }
}

impl OpenedCache {
    /// A cache of at most `windows` windows (0: disabled).
    pub fn new(windows: usize) -> Self {
        OpenedCache {
            windows: NonZeroUsize::new(windows).map(|n| Mutex::new(LruCache::new(n))),
        }
    }

    /// The window opened under `digest`, if kept (marks it recently used).
    pub fn get(&self, digest: &WindowDigest) -> Option<Arc<OpenedWindow>> {
        let mut windows = self.windows.as_ref()?.lock().ok()?;
        windows.get(digest).cloned()
    }

    /// Keep `window` under `digest`, dropping the least recently used one when
    /// full; nothing when disabled.
    pub fn insert(&self, digest: WindowDigest, window: OpenedWindow) {
        if let Some(Ok(mut windows)) = self.windows.as_ref().map(Mutex::lock) {
            windows.put(digest, Arc::new(window));
        }
    }

    /// Whether windows are kept at all (capacity 0: no digest is worth computing).
    pub fn is_enabled(&self) -> bool {
        self.windows.is_some()
    }

    /// Windows kept now.
    pub fn len(&self) -> usize {
        self.windows
            .as_ref()
            .and_then(|w| w.lock().ok().map(|w| w.len()))
            .unwrap_or(0)
    }

    /// Whether no window is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The digest of the stored bytes of `members` of `rows` (in seq order)
/// that opening them reads: each field length-prefixed, so no two different
/// windows share an encoding. Gathered into one buffer and hashed in one
/// call (a dozen small `update`s per reading cost more than the hashing).
pub fn digest(rows: &[StoredReading], members: &[usize]) -> WindowDigest {
    fn put(buf: &mut Vec<u8>, bytes: &[u8]) {
        buf.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        buf.extend_from_slice(bytes);
    }
    let mut buf = Vec::with_capacity(members.len() * 320);
    buf.extend_from_slice(b"hailan/api/opened-window/v2");
    for i in members {
        let r = &rows[*i];
        put(&mut buf, r.id.as_bytes());
        put(&mut buf, &r.seq.to_be_bytes());
        put(&mut buf, &r.recorded_at.timestamp_millis().to_be_bytes());
        put(&mut buf, r.gateway_id.as_bytes());
        put(&mut buf, r.device_ext().unwrap_or_default().as_bytes());
        put(&mut buf, &[u8::from(r.device_ext().is_some())]);
        put(&mut buf, r.data_type.as_bytes());
        put(&mut buf, &[u8::from(r.kid.is_some())]);
        put(&mut buf, r.kid.as_deref().unwrap_or_default().as_bytes());
        match &r.sealed {
            Ok(sealed) => {
                put(&mut buf, &[1]);
                put(&mut buf, &sealed.nonce);
                put(&mut buf, &sealed.ciphertext);
            }
            Err(why) => {
                put(&mut buf, &[0]);
                put(&mut buf, why.as_bytes());
            }
        }
    }
    Sha256::digest(&buf).into()
}
