//! Poseidon over the BN254 scalar field: width 3 (rate 2, capacity 1), α = 5,
//! 8 full and 57 partial rounds, round constants and MDS matrix from
//! ark-crypto-primitives' Grain-LFSR generation
//! (`find_poseidon_ark_and_mds(254, 2, 8, 57, 0)`). The permutation matches
//! circomlib's; the arkworks sponge squeezes another state element, so the
//! hashes are not circomlib's (irrelevant: only proofs and public inputs leave).
//!
//! `H(a, b, …)` absorbs the elements in order into a fresh sponge and squeezes
//! one element. The first element is always a domain-separation tag.

use ark_bn254::Fr;
use ark_crypto_primitives::sponge::CryptographicSponge;
use ark_crypto_primitives::sponge::constraints::CryptographicSpongeVar;
use ark_crypto_primitives::sponge::poseidon::constraints::PoseidonSpongeVar;
use ark_crypto_primitives::sponge::poseidon::{
    PoseidonConfig, PoseidonSponge, find_poseidon_ark_and_mds,
};
use ark_ff::PrimeField;
use ark_r1cs_std::fields::fp::FpVar;
use ark_relations::gr1cs::{ConstraintSystemRef, SynthesisError};
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

pub const FULL_ROUNDS: usize = 8;
pub const PARTIAL_ROUNDS: usize = 57;
pub const ALPHA: u64 = 5;
pub const RATE: usize = 2;
pub const CAPACITY: usize = 1;

/// The Poseidon parameters (computed once per process).
pub fn config() -> &'static PoseidonConfig<Fr> {
    static CONFIG: OnceLock<PoseidonConfig<Fr>> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let (ark, mds) = find_poseidon_ark_and_mds::<Fr>(
            u64::from(Fr::MODULUS_BIT_SIZE),
            RATE,
            FULL_ROUNDS as u64,
            PARTIAL_ROUNDS as u64,
            0,
        );
        PoseidonConfig::new(FULL_ROUNDS, PARTIAL_ROUNDS, ALPHA, mds, ark, RATE, CAPACITY)
    })
}

fn tag(label: &[u8]) -> Fr {
    Fr::from_be_bytes_mod_order(&Sha256::digest(label))
}

/// Domain tag of the device commitment `D = H(tag_dev, s)`.
pub fn tag_device() -> Fr {
    tag(b"hailan/v1/zk/device")
}

/// Domain tag of a reading commitment `C = H(tag_rd, packed, r, x)`.
pub fn tag_reading() -> Fr {
    tag(b"hailan/v1/zk/reading")
}

/// Domain tag of a window commitment `C = H(tag_win, packed, r, x)`.
pub fn tag_window() -> Fr {
    tag(b"hailan/v1/zk/window")
}

/// `H(inputs…)`, natively.
pub fn hash(inputs: &[Fr]) -> Fr {
    let mut sponge = PoseidonSponge::new(config());
    sponge.absorb(&inputs.to_vec());
    sponge.squeeze_field_elements::<Fr>(1)[0]
}

/// `H(inputs…)`, in a constraint system (≈ 243 constraints per permutation).
pub fn hash_var(
    cs: ConstraintSystemRef<Fr>,
    inputs: &[FpVar<Fr>],
) -> Result<FpVar<Fr>, SynthesisError> {
    let mut sponge = PoseidonSpongeVar::new(cs, config());
    sponge.absorb(&inputs.to_vec())?;
    let mut out = sponge.squeeze_field_elements(1)?;
    out.pop().ok_or(SynthesisError::Unsatisfiable)
}
