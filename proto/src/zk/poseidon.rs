//! Poseidon over the BN254 scalar field: width 3 (rate 2, capacity 1), α = 5,
//! 8 full and 57 partial rounds, round constants and MDS matrix from
//! ark-crypto-primitives' Grain-LFSR generation
//! (`find_poseidon_ark_and_mds(254, 2, 8, 57, 0)`). The permutation matches
//! circomlib's; the arkworks sponge squeezes another state element, so the
//! hashes are not circomlib's (irrelevant: only proofs and public inputs leave).
//!
//! `H(a, b, …)` absorbs the elements in order into a fresh sponge and squeezes
//! one element. The first element is always a domain-separation tag.
//!
//! Natively, [`hash`] runs its own permutation on a fixed `[Fr; 3]` state with
//! the same constants: the arkworks sponge clones its whole configuration (70
//! vectors) for every hash and allocates in every round, which made the API's
//! re-opening of a day's window commitments cost 40 µs per permutation. The
//! arkworks sponge stays the reference: a property test holds the two equal,
//! and the circuit uses the arkworks gadget.

use ark_bn254::Fr;
#[cfg(test)]
use ark_crypto_primitives::sponge::CryptographicSponge;
use ark_crypto_primitives::sponge::constraints::CryptographicSpongeVar;
#[cfg(test)]
use ark_crypto_primitives::sponge::poseidon::PoseidonSponge;
use ark_crypto_primitives::sponge::poseidon::constraints::PoseidonSpongeVar;
use ark_crypto_primitives::sponge::poseidon::{PoseidonConfig, find_poseidon_ark_and_mds};
use ark_ff::{AdditiveGroup, Field, PrimeField};
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
    static TAG: OnceLock<Fr> = OnceLock::new();
    *TAG.get_or_init(|| tag(b"hailan/v1/zk/device"))
}

/// Domain tag of a reading commitment `C = H(tag_rd, packed, r, x)`.
pub fn tag_reading() -> Fr {
    static TAG: OnceLock<Fr> = OnceLock::new();
    *TAG.get_or_init(|| tag(b"hailan/v1/zk/reading"))
}

/// Domain tag of a window commitment `C = H(tag_win, packed, r, x)`.
pub fn tag_window() -> Fr {
    static TAG: OnceLock<Fr> = OnceLock::new();
    *TAG.get_or_init(|| tag(b"hailan/v1/zk/window"))
}

const WIDTH: usize = RATE + CAPACITY;
const ROUNDS: usize = FULL_ROUNDS + PARTIAL_ROUNDS;

/// [`config`]'s round constants and MDS matrix in fixed arrays.
struct Constants {
    ark: [[Fr; WIDTH]; ROUNDS],
    mds: [[Fr; WIDTH]; WIDTH],
}

fn constants() -> &'static Constants {
    static CONSTANTS: OnceLock<Constants> = OnceLock::new();
    CONSTANTS.get_or_init(|| {
        let c = config();
        let row = |v: &[Fr]| std::array::from_fn(|j| v.get(j).copied().unwrap_or_default());
        Constants {
            ark: std::array::from_fn(|i| row(c.ark.get(i).map_or(&[][..], Vec::as_slice))),
            mds: std::array::from_fn(|i| row(c.mds.get(i).map_or(&[][..], Vec::as_slice))),
        }
    })
}

/// x⁵
fn sbox(x: &mut Fr) {
    let x2 = x.square();
    *x *= x2.square();
}

/// The Poseidon permutation (the arkworks sponge's `permute`, on an array).
fn permute(state: &mut [Fr; WIDTH], k: &Constants) {
    for (round, ark) in k.ark.iter().enumerate() {
        for (s, a) in state.iter_mut().zip(ark) {
            *s += a;
        }
        let partial = FULL_ROUNDS / 2..FULL_ROUNDS / 2 + PARTIAL_ROUNDS;
        if !partial.contains(&round) {
            state.iter_mut().for_each(sbox);
        } else {
            sbox(&mut state[0]);
        }
        let old = *state;
        for (s, m) in state.iter_mut().zip(&k.mds) {
            // One Montgomery reduction for the three products.
            *s = Fr::sum_of_products(m, &old);
        }
    }
}

/// `H(inputs…)`, natively: what a fresh arkworks `PoseidonSponge` with
/// [`config`] gives for `absorb(inputs)` then one squeezed element.
pub fn hash(inputs: &[Fr]) -> Fr {
    let k = constants();
    let mut state = [Fr::ZERO; WIDTH];
    let mut next = 0;
    for x in inputs {
        if next == RATE {
            permute(&mut state, k);
            next = 0;
        }
        state[CAPACITY + next] += x;
        next += 1;
    }
    permute(&mut state, k);
    state[CAPACITY]
}

/// `H(inputs…)` with the arkworks sponge itself (the reference for [`hash`]).
#[cfg(test)]
fn hash_arkworks(inputs: &[Fr]) -> Fr {
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fr(bytes: &[u8; 32]) -> Fr {
        Fr::from_le_bytes_mod_order(bytes)
    }

    proptest! {
        #[test]
        fn hash_is_the_arkworks_sponge(inputs in proptest::collection::vec(any::<[u8; 32]>(), 0..7)) {
            let inputs: Vec<Fr> = inputs.iter().map(fr).collect();
            prop_assert_eq!(hash(&inputs), hash_arkworks(&inputs));
        }
    }

    #[test]
    fn hash_depends_on_every_input_and_its_order() {
        let a = [
            Fr::from(1u64),
            Fr::from(2u64),
            Fr::from(3u64),
            Fr::from(4u64),
        ];
        let h = hash(&a);
        assert_eq!(h, hash_arkworks(&a));
        for i in 0..a.len() {
            let mut b = a;
            b[i] += Fr::from(1u64);
            assert_ne!(hash(&b), h, "input {i} is ignored");
        }
        assert_ne!(hash(&[a[1], a[0], a[2], a[3]]), h);
        assert_ne!(hash(&a[..3]), h);
    }
}
