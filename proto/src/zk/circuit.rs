//! The two constraint systems (ZK.md §"Statements").
//!
//! Range checks are bit decompositions: `v − lo` and `hi − v` are each shown
//! to fit in `k` bits, which (with `lo ≤ hi < 2^k`, checked by the verifier
//! outside the circuit) gives `lo ≤ v ≤ hi` over the integers and `v < 2^k`,
//! so packing several values into one field element is injective.

use super::poseidon::{hash_var, tag_device, tag_reading, tag_window};
use crate::data_type::MAX_SLOTS;
use ark_bn254::Fr;
use ark_ff::{AdditiveGroup, Field, One, Zero};
use ark_r1cs_std::alloc::AllocVar;
use ark_r1cs_std::boolean::Boolean;
use ark_r1cs_std::eq::EqGadget;
use ark_r1cs_std::fields::FieldVar;
use ark_r1cs_std::fields::fp::FpVar;
use ark_relations::gr1cs::{ConstraintSynthesizer, ConstraintSystemRef, SynthesisError};

/// Bits of each range check in the reading statement: bounds up to 2^32 − 1.
pub const READING_RANGE_BITS: usize = 32;
/// W: readings per window proof (fixed per key; shorter windows are padded).
pub const WINDOW_LEN: usize = 16;
/// Bits per window value: window bounds must satisfy `hi < 2^15`.
pub const WINDOW_VALUE_BITS: usize = 15;

/// Number of public inputs of the reading statement: D, C, x, lo\[4\], hi\[4\].
pub const READING_PUBLIC_INPUTS: usize = 3 + 2 * MAX_SLOTS;
/// Number of public inputs of the window statement: D, C, x, n, lo, hi.
pub const WINDOW_PUBLIC_INPUTS: usize = 6;

/// `Σ v_i · 2^(bits·i)`: how values are packed into one field element.
pub fn pack(values: &[u32], bits: usize) -> Fr {
    let step = Fr::from(2u64).pow([bits as u64]);
    let mut acc = Fr::zero();
    let mut pow = Fr::one();
    for v in values {
        acc += pow * Fr::from(*v);
        pow *= step;
    }
    acc
}

/// Allocates `bits` boolean witnesses holding the low bits of `value` and
/// returns their weighted sum (one booleanity constraint per bit).
fn alloc_bits(
    cs: &ConstraintSystemRef<Fr>,
    value: u64,
    bits: usize,
) -> Result<FpVar<Fr>, SynthesisError> {
    let mut acc = FpVar::<Fr>::zero();
    let mut pow = Fr::one();
    for j in 0..bits {
        let bit = Boolean::new_witness(cs.clone(), || Ok((value >> j) & 1 == 1))?;
        acc += FpVar::from(bit) * pow;
        pow.double_in_place();
    }
    Ok(acc)
}

/// The per-reading statement. Public values are fields so one struct serves
/// setup (any values), proving and the tests' forced proofs.
#[derive(Clone, Debug)]
pub struct ReadingCircuit {
    /// Public `D = H(tag_dev, s)`: the device commitment pinned at registration.
    pub device_commitment: Fr,
    /// Public `C = H(tag_rd, pack32(values), r, x)`: the reading commitment.
    pub commitment: Fr,
    /// Public `x`: the reading header's context
    /// ([`crate::header::ReadingHeader::context`]).
    pub context: Fr,
    /// Public lower bounds `lo_i`, inclusive, fixed point (`0` for an unused slot).
    pub lo: [u32; MAX_SLOTS],
    /// Public upper bounds `hi_i`, inclusive, fixed point (`0` for an unused slot).
    pub hi: [u32; MAX_SLOTS],
    /// Private device secret `s`.
    pub secret: Fr,
    /// Private slot values `v_i`, fixed point, unused slots zero.
    pub values: [u32; MAX_SLOTS],
    /// Private commitment blinding `r`.
    pub blinding: Fr,
}

impl ReadingCircuit {
    /// The public inputs in allocation order.
    pub fn public_inputs(&self) -> Vec<Fr> {
        reading_public_inputs(
            self.device_commitment,
            self.commitment,
            self.context,
            &self.lo,
            &self.hi,
        )
    }

    /// An instance of the right shape (values zero) for setup and matrices.
    pub fn blank() -> Self {
        ReadingCircuit {
            device_commitment: Fr::zero(),
            commitment: Fr::zero(),
            context: Fr::zero(),
            lo: [0; MAX_SLOTS],
            hi: [0; MAX_SLOTS],
            secret: Fr::zero(),
            values: [0; MAX_SLOTS],
            blinding: Fr::zero(),
        }
    }
}

/// Public inputs of the reading statement: `D, C, x, lo_0..lo_3, hi_0..hi_3`.
pub fn reading_public_inputs(
    d: Fr,
    c: Fr,
    x: Fr,
    lo: &[u32; MAX_SLOTS],
    hi: &[u32; MAX_SLOTS],
) -> Vec<Fr> {
    let mut out = Vec::with_capacity(READING_PUBLIC_INPUTS);
    out.extend([d, c, x]);
    out.extend(lo.iter().map(|v| Fr::from(*v)));
    out.extend(hi.iter().map(|v| Fr::from(*v)));
    out
}

impl ConstraintSynthesizer<Fr> for ReadingCircuit {
    fn generate_constraints(self, cs: ConstraintSystemRef<Fr>) -> Result<(), SynthesisError> {
        let d = FpVar::new_input(cs.clone(), || Ok(self.device_commitment))?;
        let c = FpVar::new_input(cs.clone(), || Ok(self.commitment))?;
        let x = FpVar::new_input(cs.clone(), || Ok(self.context))?;
        let mut lo = Vec::with_capacity(MAX_SLOTS);
        for v in self.lo {
            lo.push(FpVar::new_input(cs.clone(), || Ok(Fr::from(v)))?);
        }
        let mut hi = Vec::with_capacity(MAX_SLOTS);
        for v in self.hi {
            hi.push(FpVar::new_input(cs.clone(), || Ok(Fr::from(v)))?);
        }
        let s = FpVar::new_witness(cs.clone(), || Ok(self.secret))?;
        let r = FpVar::new_witness(cs.clone(), || Ok(self.blinding))?;

        let step = Fr::from(2u64).pow([READING_RANGE_BITS as u64]);
        let mut weight = Fr::one();
        let mut packed = FpVar::<Fr>::zero();
        for i in 0..MAX_SLOTS {
            let v_native = self.values[i];
            // v = lo + d with d < 2^k; hi − v = e with e < 2^k.
            let d_bits = alloc_bits(
                &cs,
                u64::from(v_native.wrapping_sub(self.lo[i])),
                READING_RANGE_BITS,
            )?;
            let v = &lo[i] + d_bits;
            let e_bits = alloc_bits(
                &cs,
                u64::from(self.hi[i].wrapping_sub(v_native)),
                READING_RANGE_BITS,
            )?;
            (&hi[i] - &v).enforce_equal(&e_bits)?;
            packed += v * weight;
            weight *= step;
        }

        let d_calc = hash_var(cs.clone(), &[FpVar::constant(tag_device()), s])?;
        d_calc.enforce_equal(&d)?;
        let c_calc = hash_var(cs, &[FpVar::constant(tag_reading()), packed, r, x])?;
        c_calc.enforce_equal(&c)
    }
}

/// The window statement: `count` (= n) of [`WINDOW_LEN`] positions are
/// readings, the rest are padding that must be zero.
#[derive(Clone, Debug)]
pub struct WindowCircuit {
    /// Public `D = H(tag_dev, s)`: the device commitment pinned at registration.
    pub device_commitment: Fr,
    /// Public `C = H(tag_win, pack15(values), r, x)`: the window commitment.
    pub commitment: Fr,
    /// Public `x`: the window header's context ([`crate::header::WindowHeader::context`]).
    pub context: Fr,
    /// Public `n`: how many positions hold readings, 1..=[`WINDOW_LEN`].
    pub count: u32,
    /// Public lower bound, inclusive, fixed point, for every reading.
    pub lo: u32,
    /// Public upper bound, inclusive, fixed point, for every reading; must be below
    /// 2^[`WINDOW_VALUE_BITS`].
    pub hi: u32,
    /// Private device secret `s`.
    pub secret: Fr,
    /// Private values, one slot per reading in position order; positions `count..` are
    /// zero.
    pub values: [u32; WINDOW_LEN],
    /// Private commitment blinding `r`, shared by every reading of the window.
    pub blinding: Fr,
}

/// Public inputs of the window statement: `D, C, x, n, lo, hi`.
pub fn window_public_inputs(d: Fr, c: Fr, x: Fr, count: u32, lo: u32, hi: u32) -> Vec<Fr> {
    vec![d, c, x, Fr::from(count), Fr::from(lo), Fr::from(hi)]
}

impl WindowCircuit {
    /// The public inputs in allocation order.
    pub fn public_inputs(&self) -> Vec<Fr> {
        window_public_inputs(
            self.device_commitment,
            self.commitment,
            self.context,
            self.count,
            self.lo,
            self.hi,
        )
    }

    /// An instance of the right shape (one reading) for setup and matrices.
    pub fn blank() -> Self {
        WindowCircuit {
            device_commitment: Fr::zero(),
            commitment: Fr::zero(),
            context: Fr::zero(),
            count: 1,
            lo: 0,
            hi: 0,
            secret: Fr::zero(),
            values: [0; WINDOW_LEN],
            blinding: Fr::zero(),
        }
    }
}

impl ConstraintSynthesizer<Fr> for WindowCircuit {
    fn generate_constraints(self, cs: ConstraintSystemRef<Fr>) -> Result<(), SynthesisError> {
        let d = FpVar::new_input(cs.clone(), || Ok(self.device_commitment))?;
        let c = FpVar::new_input(cs.clone(), || Ok(self.commitment))?;
        let x = FpVar::new_input(cs.clone(), || Ok(self.context))?;
        let n = FpVar::new_input(cs.clone(), || Ok(Fr::from(self.count)))?;
        let lo = FpVar::new_input(cs.clone(), || Ok(Fr::from(self.lo)))?;
        let hi = FpVar::new_input(cs.clone(), || Ok(Fr::from(self.hi)))?;
        let s = FpVar::new_witness(cs.clone(), || Ok(self.secret))?;
        let r = FpVar::new_witness(cs.clone(), || Ok(self.blinding))?;

        let step = Fr::from(2u64).pow([WINDOW_VALUE_BITS as u64]);
        let mut weight = Fr::one();
        let mut packed = FpVar::<Fr>::zero();
        let mut active_sum = FpVar::<Fr>::zero();
        let mut prev: Option<FpVar<Fr>> = None;
        for i in 0..WINDOW_LEN {
            let active_native = (i as u64) < u64::from(self.count);
            let active: FpVar<Fr> = Boolean::new_witness(cs.clone(), || Ok(active_native))?.into();
            // Active positions form a prefix: a_i · (1 − a_{i−1}) = 0.
            if let Some(p) = &prev {
                active.mul_equals(&(FpVar::one() - p), &FpVar::zero())?;
            }
            active_sum += &active;
            // Padding (a_i = 0) gives 0 ≤ v and 0 ≤ −v with 15 bits each: v = 0.
            let lo_a = &lo * &active;
            let hi_a = &hi * &active;
            let v_native = self.values[i];
            let (lo_n, hi_n) = if active_native {
                (self.lo, self.hi)
            } else {
                (0, 0)
            };
            let d_bits = alloc_bits(
                &cs,
                u64::from(v_native.wrapping_sub(lo_n)),
                WINDOW_VALUE_BITS,
            )?;
            let v = lo_a + d_bits;
            let e_bits = alloc_bits(
                &cs,
                u64::from(hi_n.wrapping_sub(v_native)),
                WINDOW_VALUE_BITS,
            )?;
            (hi_a - &v).enforce_equal(&e_bits)?;
            packed += v * weight;
            weight *= step;
            prev = Some(active);
        }
        active_sum.enforce_equal(&n)?;

        let d_calc = hash_var(cs.clone(), &[FpVar::constant(tag_device()), s])?;
        d_calc.enforce_equal(&d)?;
        let c_calc = hash_var(cs, &[FpVar::constant(tag_window()), packed, r, x])?;
        c_calc.enforce_equal(&c)
    }
}
