//! Canonical headers: the exact bytes that bind a sealed value and a proof to
//! one reading (or one window of readings), and the proof *context* derived
//! from them (DESIGN §4, §5.1).
//!
//! The same bytes serve twice: as AES-GCM associated data when a value is
//! sealed (so no header field can be changed without failing decryption) and,
//! hashed with SHA-256 and reduced into the BN254 scalar field, as the public
//! context `x` of the proof (so a proof cannot be replayed on another reading).
//! The layout is specified in `proto/WIRE.md` §"Canonical headers".

use ark_bn254::Fr;
use ark_ff::PrimeField;
use sha2::{Digest, Sha256};

/// Domain tag that starts a single reading's canonical header.
pub const READING_TAG: &[u8] = b"hailan/v1/reading\0";
/// Domain tag that starts a window's canonical header.
pub const WINDOW_TAG: &[u8] = b"hailan/v1/window\0";

/// The header fields of one reading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadingHeader<'a> {
    /// The gateway that published the reading (the envelope's `gateway_id`).
    pub gateway_id: &'a str,
    /// The device that measured it.
    pub device_id: &'a str,
    /// The reading's data-type name, e.g. `HEART_RATE`.
    pub data_type: &'a str,
    /// The reading's per-device sequence number.
    pub seq: u64,
    /// Milliseconds since the Unix epoch (UTC).
    pub recorded_at_ms: i64,
}

/// The header of a window: W consecutive readings of one device and one data
/// type, proven together (DESIGN §5.1). Reading `i` has sequence number
/// `first_seq + i` and was recorded at `start_ms + offsets_ms[i]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowHeader<'a> {
    /// The gateway that published the window.
    pub gateway_id: &'a str,
    /// The device that measured every reading of the window.
    pub device_id: &'a str,
    /// The data-type name all readings of the window share.
    pub data_type: &'a str,
    /// Sequence number of the window's first reading.
    pub first_seq: u64,
    /// When the first reading was recorded (ms since the Unix epoch, UTC).
    pub start_ms: i64,
    /// For each reading, in order, its `recorded_at_ms` minus `start_ms` (so the first is
    /// 0); the count W is this length.
    pub offsets_ms: Vec<u32>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Identifiers are bounded far below 64 KiB by the envelope decoder; a
    // longer one is truncated in the length field only if it was never
    // checked, so refuse to guess: saturate and let the caller's validation
    // (envelope::MAX_ID_LEN) have rejected it first.
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
}

/// SHA-256 of `bytes`, read big-endian and reduced modulo the BN254 scalar
/// field order: how every context element is made.
pub fn context_from_bytes(bytes: &[u8]) -> Fr {
    Fr::from_be_bytes_mod_order(&Sha256::digest(bytes))
}

impl ReadingHeader<'_> {
    /// The canonical bytes of this header (WIRE.md §"Canonical headers").
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(READING_TAG.len() + 64);
        out.extend_from_slice(READING_TAG);
        put_str(&mut out, self.gateway_id);
        put_str(&mut out, self.device_id);
        put_str(&mut out, self.data_type);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.recorded_at_ms.to_be_bytes());
        out
    }

    /// The proof context `x` of this reading.
    pub fn context(&self) -> Fr {
        context_from_bytes(&self.canonical_bytes())
    }
}

impl WindowHeader<'_> {
    /// Number of readings in the window.
    pub fn len(&self) -> usize {
        self.offsets_ms.len()
    }

    /// Whether the window holds no reading (never valid on the wire).
    pub fn is_empty(&self) -> bool {
        self.offsets_ms.is_empty()
    }

    /// The canonical bytes of this window header (WIRE.md §"Canonical headers").
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(WINDOW_TAG.len() + 64 + 4 * self.offsets_ms.len());
        out.extend_from_slice(WINDOW_TAG);
        put_str(&mut out, self.gateway_id);
        put_str(&mut out, self.device_id);
        put_str(&mut out, self.data_type);
        out.extend_from_slice(&self.first_seq.to_be_bytes());
        let count = u16::try_from(self.offsets_ms.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&count.to_be_bytes());
        out.extend_from_slice(&self.start_ms.to_be_bytes());
        for off in self.offsets_ms.iter().take(usize::from(count)) {
            out.extend_from_slice(&off.to_be_bytes());
        }
        out
    }

    /// The proof context `x` of this window.
    pub fn context(&self) -> Fr {
        context_from_bytes(&self.canonical_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> ReadingHeader<'static> {
        ReadingHeader {
            gateway_id: "gw-1",
            device_id: "dev-1",
            data_type: "HEART_RATE",
            seq: 7,
            recorded_at_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn canonical_bytes_layout() {
        let b = header().canonical_bytes();
        let mut expect = READING_TAG.to_vec();
        expect.extend_from_slice(&[0, 4]);
        expect.extend_from_slice(b"gw-1");
        expect.extend_from_slice(&[0, 5]);
        expect.extend_from_slice(b"dev-1");
        expect.extend_from_slice(&[0, 10]);
        expect.extend_from_slice(b"HEART_RATE");
        expect.extend_from_slice(&7u64.to_be_bytes());
        expect.extend_from_slice(&1_700_000_000_000i64.to_be_bytes());
        assert_eq!(b, expect);
    }

    #[test]
    fn every_field_changes_the_context() {
        let base = header().context();
        let mut h = header();
        h.seq = 8;
        assert_ne!(h.context(), base);
        let mut h = header();
        h.recorded_at_ms += 1;
        assert_ne!(h.context(), base);
        let mut h = header();
        h.device_id = "dev-2";
        assert_ne!(h.context(), base);
        let mut h = header();
        h.gateway_id = "gw-2";
        assert_ne!(h.context(), base);
        let mut h = header();
        h.data_type = "SPO2";
        assert_ne!(h.context(), base);
        // Moving bytes between fields is not a collision: lengths are prefixed.
        let a = ReadingHeader {
            gateway_id: "ab",
            device_id: "c",
            ..header()
        };
        let b = ReadingHeader {
            gateway_id: "a",
            device_id: "bc",
            ..header()
        };
        assert_ne!(a.context(), b.context());
    }

    #[test]
    fn window_binds_offsets_and_count() {
        let w = WindowHeader {
            gateway_id: "gw",
            device_id: "d",
            data_type: "HEART_RATE",
            first_seq: 100,
            start_ms: 5,
            offsets_ms: vec![0, 1000, 2000],
        };
        let mut moved = w.clone();
        moved.offsets_ms[1] = 1001;
        assert_ne!(w.context(), moved.context());
        let mut shorter = w.clone();
        shorter.offsets_ms.pop();
        assert_ne!(w.context(), shorter.context());
        assert_eq!(w.len(), 3);
    }
}
