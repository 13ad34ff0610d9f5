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

/// Full rounds of the permutation (S-box on every state element), split half before and
/// half after the partial rounds.
pub const FULL_ROUNDS: usize = 8;
/// Partial rounds of the permutation (S-box on the first state element only).
pub const PARTIAL_ROUNDS: usize = 57;
/// The S-box exponent α: each S-box computes `x^5`.
pub const ALPHA: u64 = 5;
/// Field elements absorbed per permutation; with [`CAPACITY`] the state width is 3.
pub const RATE: usize = 2;
/// State elements kept as capacity: input is never absorbed into them.
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
const HALF_FULL: usize = FULL_ROUNDS / 2;

type Vector = [Fr; WIDTH];
type Matrix = [[Fr; WIDTH]; WIDTH];

/// [`config`]'s permutation rearranged for speed, the same function (the
/// optimisation of the Poseidon paper's appendix B): in the partial rounds,
/// where the S-box touches only the first element, the round constants of
/// the other elements are moved back to the first partial round (each
/// later round adds one scalar after its S-box), and each round's MDS matrix
/// is factored into a sparse matrix (first row and first column, identity
/// elsewhere: 2t − 1 products instead of t²) times a matrix that leaves the
/// first element alone and so moves back through the S-box and into the
/// previous round's matrix; what is left of it is applied once, before the
/// first partial round.
struct Constants {
    ark: [Vector; ROUNDS],
    mds: Matrix,
    /// The first partial round's constants (all that the partial rounds add
    /// before their S-boxes).
    partial_first: Vector,
    /// Added to the first element after partial round k's S-box (the last is 0).
    partial_after: [Fr; PARTIAL_ROUNDS],
    /// Applied once before the first partial round's S-box.
    partial_pre: Matrix,
    /// Partial round k's sparse matrix: its first row, and its first column below the diagonal.
    sparse_row: [Vector; PARTIAL_ROUNDS],
    sparse_col: [[Fr; WIDTH - 1]; PARTIAL_ROUNDS],
}

fn mat_vec(m: &Matrix, v: &Vector) -> Vector {
    // One Montgomery reduction for each row's products.
    std::array::from_fn(|i| Fr::sum_of_products(&m[i], v))
}

fn mat_mul(a: &Matrix, b: &Matrix) -> Matrix {
    std::array::from_fn(|i| std::array::from_fn(|j| (0..WIDTH).map(|k| a[i][k] * b[k][j]).sum()))
}

/// The inverse of a square matrix of order `n ≤ WIDTH` held in the top-left
/// corner of `m` (Gauss–Jordan; MDS matrices and their square submatrices
/// are invertible).
fn inverse(m: &Matrix, n: usize) -> Matrix {
    let mut a = *m;
    let mut inv = [[Fr::ZERO; WIDTH]; WIDTH];
    for (i, row) in inv.iter_mut().enumerate().take(n) {
        row[i] = Fr::ONE;
    }
    for col in 0..n {
        let pivot = (col..n).find(|&r| a[r][col] != Fr::ZERO).unwrap_or(col);
        a.swap(col, pivot);
        inv.swap(col, pivot);
        let p = a[col][col].inverse().unwrap_or(Fr::ZERO);
        for j in 0..n {
            a[col][j] *= p;
            inv[col][j] *= p;
        }
        for r in 0..n {
            if r != col {
                let f = a[r][col];
                for j in 0..n {
                    let (x, y) = (a[col][j], inv[col][j]);
                    a[r][j] -= f * x;
                    inv[r][j] -= f * y;
                }
            }
        }
    }
    inv
}

fn constants() -> &'static Constants {
    static CONSTANTS: OnceLock<Constants> = OnceLock::new();
    CONSTANTS.get_or_init(|| {
        let c = config();
        let row = |v: &[Fr]| std::array::from_fn(|j| v.get(j).copied().unwrap_or_default());
        let ark: [Vector; ROUNDS] =
            std::array::from_fn(|i| row(c.ark.get(i).map_or(&[][..], Vec::as_slice)));
        let mds: Matrix = std::array::from_fn(|i| row(c.mds.get(i).map_or(&[][..], Vec::as_slice)));

        // Constants: M·y + c = M·(y + M⁻¹c); of u = M⁻¹c, all but the first
        // element pass back through the previous round's S-box.
        let mds_inv = inverse(&mds, WIDTH);
        let mut partial: [Vector; PARTIAL_ROUNDS] = std::array::from_fn(|k| ark[HALF_FULL + k]);
        let mut partial_after = [Fr::ZERO; PARTIAL_ROUNDS];
        for k in (1..PARTIAL_ROUNDS).rev() {
            let u = mat_vec(&mds_inv, &partial[k]);
            partial_after[k - 1] = u[0];
            for i in 1..WIDTH {
                partial[k - 1][i] += u[i];
            }
        }

        // Matrices, from the last partial round back: A = S·D with
        // D = diag(1, Â) (commutes with the S-box) and S sparse; D joins the
        // previous round's matrix.
        let mut sparse_row = [[Fr::ZERO; WIDTH]; PARTIAL_ROUNDS];
        let mut sparse_col = [[Fr::ZERO; WIDTH - 1]; PARTIAL_ROUNDS];
        let mut a = mds;
        let mut d = [[Fr::ZERO; WIDTH]; WIDTH];
        for k in (0..PARTIAL_ROUNDS).rev() {
            let mut hat = [[Fr::ZERO; WIDTH]; WIDTH];
            for i in 1..WIDTH {
                for j in 1..WIDTH {
                    hat[i - 1][j - 1] = a[i][j];
                }
            }
            let hat_inv = inverse(&hat, WIDTH - 1);
            // First row: a00, then v with vᵀ·Â = (a01 … a0,t−1).
            sparse_row[k][0] = a[0][0];
            for j in 1..WIDTH {
                sparse_row[k][j] = (1..WIDTH).map(|i| a[0][i] * hat_inv[i - 1][j - 1]).sum();
            }
            for i in 1..WIDTH {
                sparse_col[k][i - 1] = a[i][0];
            }
            d = [[Fr::ZERO; WIDTH]; WIDTH];
            d[0][0] = Fr::ONE;
            for i in 1..WIDTH {
                for j in 1..WIDTH {
                    d[i][j] = a[i][j];
                }
            }
            a = mat_mul(&d, &mds);
        }
        Constants {
            ark,
            mds,
            partial_first: partial[0],
            partial_after,
            partial_pre: d,
            sparse_row,
            sparse_col,
        }
    })
}

/// x⁵
fn sbox(x: &mut Fr) {
    let x2 = x.square();
    *x *= x2.square();
}

fn full_round(state: &mut Vector, ark: &Vector, mds: &Matrix) {
    for (s, a) in state.iter_mut().zip(ark) {
        *s += a;
        sbox(s);
    }
    *state = mat_vec(mds, state);
}

/// The Poseidon permutation (the arkworks sponge's `permute`, on an array,
/// with the partial rounds rearranged as [`Constants`] says).
fn permute(state: &mut Vector, k: &Constants) {
    for ark in &k.ark[..HALF_FULL] {
        full_round(state, ark, &k.mds);
    }
    for (s, c) in state.iter_mut().zip(&k.partial_first) {
        *s += c;
    }
    *state = mat_vec(&k.partial_pre, state);
    for r in 0..PARTIAL_ROUNDS {
        sbox(&mut state[0]);
        state[0] += k.partial_after[r];
        let first = state[0];
        state[0] = Fr::sum_of_products(&k.sparse_row[r], state);
        for (s, w) in state[1..].iter_mut().zip(&k.sparse_col[r]) {
            *s += *w * first;
        }
    }
    for ark in &k.ark[HALF_FULL + PARTIAL_ROUNDS..] {
        full_round(state, ark, &k.mds);
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
