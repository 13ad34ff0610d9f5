//! The zero-knowledge statements, prover and verifier (DESIGN §5, `ZK.md`).
//!
//! Two Groth16 (BN254) statements, one key pair each:
//!
//! - **reading** ([`ProofKind::Reading`]): one reading, up to [`MAX_SLOTS`]
//!   values. Public `D, C, x, lo[4], hi[4]`; private `s, v[4], r`;
//!   `D = H(tag_dev, s)`, `C = H(tag_rd, pack32(v), r, x)`,
//!   `lo_i ≤ v_i ≤ hi_i` (unused slots have bounds `0..=0`, so `v_i = 0`).
//! - **window** ([`ProofKind::Window`]): `n ≤ W` ([`WINDOW_LEN`]) consecutive
//!   readings of one single-slot data type. Public `D, C, x, n, lo, hi`;
//!   `C = H(tag_win, pack15(v[0..W]), r, x)` with `x` the window header's
//!   context; readings `0..n` are in bounds, positions `n..W` are zero.
//!
//! `H` is Poseidon (width 3, α = 5, 8 full + 57 partial rounds, arkworks
//! parameter generation). Everything here is synchronous, pure and `Send`:
//! randomness comes from the caller, heavy work belongs off any async runtime.
//!
//! - [`poseidon`]: parameters, native hash, in-circuit hash, tags.
//! - [`circuit`]: the two constraint systems.
//! - [`keys`]: setup, (de)serialisation, key ids, dev keys.
//! - [`prove`]: the gateway's API and the clinician's commitment recomputation.
//! - [`verify`]: ingest's verifier: policy, one-by-one, batch, bisection.
//! - [`snarkjs`]: export to snarkjs's groth16 JSON and the proof bundle.
//!
//! [`MAX_SLOTS`]: crate::data_type::MAX_SLOTS
//! [`ProofKind::Reading`]: crate::envelope::ProofKind::Reading
//! [`ProofKind::Window`]: crate::envelope::ProofKind::Window

pub mod circuit;
pub mod keys;
pub mod poseidon;
pub mod prove;
pub mod snarkjs;
pub mod verify;

#[cfg(test)]
mod tests;

pub use circuit::{READING_RANGE_BITS, WINDOW_LEN, WINDOW_VALUE_BITS};
pub use keys::{KeyId, KeyOrigin, ProvingKey, VerifyingKey};
pub use prove::{
    DeviceSecret, ReadingProof, WindowProof, device_commitment, prove_reading, prove_window,
    reading_commitment, window_commitment, windowable,
};
pub use snarkjs::ProofBundle;
pub use verify::{BatchWeights, DevKeys, GroupClaim, Policy, Reject, Verifier};

use ark_bn254::Fr;
use ark_serialize::{CanonicalDeserialize, CanonicalSerialize};

/// Everything that can go wrong on the proving and key side (the verifier
/// answers with a [`Reject`] per group instead).
#[derive(Debug, thiserror::Error)]
pub enum ZkError {
    /// The proving key is for a different statement (reading or window) from the one
    /// asked for.
    #[error("this is a {key:?} key; the statement needs a {needed:?} key")]
    WrongKey {
        /// The statement the key proves.
        key: crate::envelope::ProofKind,
        /// The statement asked for.
        needed: crate::envelope::ProofKind,
    },
    /// The number of slot values does not match the data type (or a window reading has more
    /// than one slot).
    #[error("{data_type} readings carry {expected} slot(s), got {got}")]
    SlotCount {
        /// The data type's wire name, e.g. `BLOOD_PRESSURE`.
        data_type: &'static str,
        /// Slots a reading of it carries (1 for a window reading).
        expected: usize,
        /// Slots given.
        got: usize,
    },
    /// A value lies outside the bounds the proof would assert: the reading cannot be
    /// proven.
    #[error("slot {slot} value {value} is outside the bounds {lo}..={hi}")]
    OutOfBounds {
        /// Index of the slot (0 for a window value).
        slot: usize,
        /// The value, fixed point.
        value: u32,
        /// Lower bound, inclusive, fixed point.
        lo: u32,
        /// Upper bound, inclusive, fixed point.
        hi: u32,
    },
    /// The header names another data type than the values are for.
    #[error("the header is for data type {header:?}, the values for {values}")]
    HeaderMismatch {
        /// The data type the header names.
        header: String,
        /// The data type the values were given for.
        values: &'static str,
    },
    /// A window with no readings or more than it may hold, or whose values and header
    /// differ in count.
    #[error("a window holds 1..={max} readings, got {got}")]
    WindowSize {
        /// Readings (values) given.
        got: usize,
        /// The most allowed ([`WINDOW_LEN`]), or the header's reading count
        /// when values and header disagree.
        max: usize,
    },
    /// The data type cannot be proven in a window (several slots, or a bound of 2^15 or
    /// more); holds its name.
    #[error(
        "{0} cannot be proven in a window: it needs one slot with bounds below 2^{WINDOW_VALUE_BITS}"
    )]
    NotWindowable(&'static str),
    /// A bounds policy was refused (wrong slot count, or a lower bound above the upper);
    /// holds why.
    #[error("bounds policy: {0}")]
    Policy(String),
    /// Key-file bytes that are not a key of this build's statements (magic, kind, origin,
    /// encoding, curve or subgroup, shape); holds why.
    #[error("malformed key: {0}")]
    MalformedKey(String),
    /// A proof bundle that does not match its verifying key or does not verify; holds why.
    #[error("proof bundle: {0}")]
    Bundle(String),
    /// 32 bytes that are not a canonical BN254 scalar; holds what they were meant to be
    /// (`device secret`, `blinding`, …).
    #[error("{0} is not a canonical BN254 scalar (32 bytes, little-endian, below the group order)")]
    MalformedScalar(&'static str),
    /// A development key given to a verifier built with [`DevKeys::Refuse`]; holds its
    /// seed.
    #[error("development keys (dev seed {0}) are refused by this configuration")]
    DevKeyRefused(u64),
    /// Two verifying keys given to one verifier have the same id.
    #[error("two verifying keys share the id {0}")]
    DuplicateKey(KeyId),
    /// Building the constraint system, the keys or the proof failed in arkworks, or a
    /// witness did not fit the key's statement; holds the error.
    #[error("constraint synthesis failed: {0}")]
    Synthesis(String),
}

/// A BN254 scalar as 32 little-endian bytes (arkworks' canonical encoding).
pub fn fr_to_bytes(x: &Fr) -> [u8; 32] {
    let mut out = [0u8; 32];
    // A field element always serialises to exactly 32 bytes.
    x.serialize_compressed(&mut out[..])
        .expect("a BN254 scalar serialises into 32 bytes");
    out
}

/// The scalar encoded by `bytes`, refusing non-canonical encodings (≥ the order).
pub fn fr_from_bytes(bytes: &[u8; 32]) -> Option<Fr> {
    Fr::deserialize_compressed(&bytes[..]).ok()
}

/// Runs `f` with tracing switched off for this thread. arkworks' constraint
/// code (ark-relations, ark-crypto-primitives) opens an INFO-level tracing
/// span per gadget call; under a subscriber that enables INFO (any service's
/// default) synthesis becomes ~500× slower — a dev-profile `zk setup` took
/// 3 min 46 s instead of 0.4 s. Every synthesis in this module goes through here.
pub(crate) fn quiet<T>(f: impl FnOnce() -> T) -> T {
    tracing::dispatcher::with_default(&tracing::Dispatch::none(), f)
}
