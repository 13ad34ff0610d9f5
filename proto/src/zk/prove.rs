//! The gateway's prover API and the clinician's commitment recomputation.

use super::circuit::{
    READING_RANGE_BITS, ReadingCircuit, WINDOW_LEN, WINDOW_VALUE_BITS, WindowCircuit, pack,
};
use super::keys::ProvingKey;
use super::poseidon::{hash, tag_device, tag_reading, tag_window};
use super::{ZkError, fr_from_bytes, fr_to_bytes};
use crate::data_type::{DataType, MAX_SLOTS};
use crate::envelope::{PROOF_LEN, ProofKind};
use crate::header::{ReadingHeader, WindowHeader};
use ark_bn254::{Bn254, Fr};
use ark_ff::UniformRand;
use ark_groth16::{Groth16, Proof};
use ark_relations::gr1cs::{
    ConstraintSynthesizer, ConstraintSystem, OptimizationGoal, SynthesisMode,
};
use ark_serialize::CanonicalSerialize;
use rand_core::{CryptoRng, RngCore};
use std::fmt;

/// A device secret `s`: a uniform BN254 scalar (≈ 254 bits of entropy),
/// generated at pairing, kept by the gateway, never sent.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceSecret([u8; 32]);

/// Wiped when dropped: a gateway holds one per paired device for months.
impl Drop for DeviceSecret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for DeviceSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceSecret(…)")
    }
}

impl DeviceSecret {
    /// A fresh secret from the caller's CSPRNG.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        DeviceSecret(fr_to_bytes(&Fr::rand(rng)))
    }

    /// A stored secret (32 bytes, little-endian canonical scalar).
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, ZkError> {
        fr_from_bytes(&bytes).ok_or(ZkError::MalformedScalar("device secret"))?;
        Ok(DeviceSecret(bytes))
    }

    /// The bytes to store (keep them secret).
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    fn scalar(&self) -> Fr {
        // Checked at construction.
        fr_from_bytes(&self.0).unwrap_or_default()
    }
}

/// `D = H(tag_dev, s)`: what the gateway registers for the device.
pub fn device_commitment(secret: &DeviceSecret) -> [u8; 32] {
    fr_to_bytes(&device_commitment_fr(secret))
}

fn device_commitment_fr(secret: &DeviceSecret) -> Fr {
    hash(&[tag_device(), secret.scalar()])
}

/// A proven reading: what goes into the [`crate::ProvenGroup`] (commitment,
/// proof) and into the sealed value (blinding).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadingProof {
    /// The commitment `C` (32 bytes, a little-endian BN254 scalar) that goes into the
    /// group.
    pub commitment: [u8; 32],
    /// The blinding `r` (32 bytes, a little-endian BN254 scalar) that goes into each
    /// reading's sealed value.
    pub blinding: [u8; 32],
    /// The compressed Groth16 proof (128 bytes).
    pub proof: [u8; PROOF_LEN],
}

/// A proven window; every reading's sealed value carries the same blinding
/// and its own position.
pub type WindowProof = ReadingProof;

fn reading_commitment_fr(values: &[u32; MAX_SLOTS], blinding: Fr, context: Fr) -> Fr {
    hash(&[
        tag_reading(),
        pack(values, READING_RANGE_BITS),
        blinding,
        context,
    ])
}

fn window_commitment_fr(values: &[u32; WINDOW_LEN], blinding: Fr, context: Fr) -> Fr {
    hash(&[
        tag_window(),
        pack(values, WINDOW_VALUE_BITS),
        blinding,
        context,
    ])
}

fn padded_slots(data_type: DataType, slots: &[u32]) -> Result<[u32; MAX_SLOTS], ZkError> {
    let spec = data_type.spec();
    if slots.len() != spec.slots.len() {
        return Err(ZkError::SlotCount {
            data_type: spec.name,
            expected: spec.slots.len(),
            got: slots.len(),
        });
    }
    let mut out = [0u32; MAX_SLOTS];
    out[..slots.len()].copy_from_slice(slots);
    Ok(out)
}

fn padded_window(values: &[u32]) -> Result<[u32; WINDOW_LEN], ZkError> {
    if values.is_empty() || values.len() > WINDOW_LEN {
        return Err(ZkError::WindowSize {
            got: values.len(),
            max: WINDOW_LEN,
        });
    }
    let mut out = [0u32; WINDOW_LEN];
    out[..values.len()].copy_from_slice(values);
    Ok(out)
}

/// The clinician's check: the reading commitment `C` recomputed from the
/// opened slots and blinding and the reading's own header.
pub fn reading_commitment(
    data_type: DataType,
    slots: &[u32],
    blinding: &[u8; 32],
    header: &ReadingHeader,
) -> Result<[u8; 32], ZkError> {
    let values = padded_slots(data_type, slots)?;
    let r = fr_from_bytes(blinding).ok_or(ZkError::MalformedScalar("blinding"))?;
    Ok(fr_to_bytes(&reading_commitment_fr(
        &values,
        r,
        header.context(),
    )))
}

/// The clinician's check for a window: `values[i]` is the one slot of the
/// reading at position `i`; `header.len()` must equal `values.len()`.
pub fn window_commitment(
    values: &[u32],
    blinding: &[u8; 32],
    header: &WindowHeader,
) -> Result<[u8; 32], ZkError> {
    if header.len() != values.len() {
        return Err(ZkError::WindowSize {
            got: values.len(),
            max: header.len(),
        });
    }
    let padded = padded_window(values)?;
    if let Some(v) = values.iter().find(|v| **v >= 1 << WINDOW_VALUE_BITS) {
        return Err(ZkError::OutOfBounds {
            slot: 0,
            value: *v,
            lo: 0,
            hi: (1 << WINDOW_VALUE_BITS) - 1,
        });
    }
    let r = fr_from_bytes(blinding).ok_or(ZkError::MalformedScalar("blinding"))?;
    Ok(fr_to_bytes(&window_commitment_fr(
        &padded,
        r,
        header.context(),
    )))
}

/// Proves `circuit` with `pk`'s cached matrices. Does not check that the
/// circuit is satisfied: an unsatisfied one yields a proof that fails to verify.
pub(crate) fn prove_circuit<C: ConstraintSynthesizer<Fr>>(
    pk: &ProvingKey,
    circuit: C,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<[u8; PROOF_LEN], ZkError> {
    super::quiet(|| prove_circuit_inner(pk, circuit, rng))
}

fn prove_circuit_inner<C: ConstraintSynthesizer<Fr>>(
    pk: &ProvingKey,
    circuit: C,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<[u8; PROOF_LEN], ZkError> {
    let cs = ConstraintSystem::<Fr>::new_ref();
    cs.set_optimization_goal(OptimizationGoal::Constraints);
    cs.set_mode(SynthesisMode::Prove {
        construct_matrices: false,
        generate_lc_assignments: false,
    });
    circuit
        .generate_constraints(cs.clone())
        .map_err(|e| ZkError::Synthesis(e.to_string()))?;
    let instance = cs
        .instance_assignment()
        .map_err(|e| ZkError::Synthesis(e.to_string()))?;
    let witness = cs
        .witness_assignment()
        .map_err(|e| ZkError::Synthesis(e.to_string()))?;
    let shape = &pk.shape;
    if instance.len() != shape.num_inputs || witness.len() != shape.num_witnesses {
        return Err(ZkError::Synthesis(
            "the witness does not fit the key's statement".into(),
        ));
    }
    let full = [instance, witness].concat();
    let r = Fr::rand(rng);
    let s = Fr::rand(rng);
    let proof: Proof<Bn254> = Groth16::<Bn254>::create_proof_with_reduction_and_matrices(
        &pk.pk,
        r,
        s,
        &shape.matrices,
        shape.num_inputs,
        shape.num_constraints,
        &full,
    )
    .map_err(|e| ZkError::Synthesis(e.to_string()))?;
    let mut out = [0u8; PROOF_LEN];
    proof
        .serialize_compressed(&mut out[..])
        .map_err(|e| ZkError::Synthesis(e.to_string()))?;
    Ok(out)
}

fn check_bounds(values: &[u32], bounds: impl Iterator<Item = (u32, u32)>) -> Result<(), ZkError> {
    for (slot, (v, (lo, hi))) in values.iter().zip(bounds).enumerate() {
        if !(lo..=hi).contains(v) {
            return Err(ZkError::OutOfBounds {
                slot,
                value: *v,
                lo,
                hi,
            });
        }
    }
    Ok(())
}

/// The key proves `needed` statements, and the header names `data_type`.
fn check_inputs(
    pk: &ProvingKey,
    needed: ProofKind,
    header_type: &str,
    data_type: DataType,
) -> Result<(), ZkError> {
    if pk.kind() != needed {
        return Err(ZkError::WrongKey {
            key: pk.kind(),
            needed,
        });
    }
    if header_type != data_type.as_str() {
        return Err(ZkError::HeaderMismatch {
            header: header_type.to_owned(),
            values: data_type.as_str(),
        });
    }
    Ok(())
}

/// Proves one reading (single thread, ≈ tens of ms: call it off any async
/// runtime). The bounds proven are the data type's table bounds (DESIGN §3),
/// which ingest's policy must equal. An out-of-bounds value is refused here
/// (send the reading with no proof and the error as reason).
pub fn prove_reading(
    pk: &ProvingKey,
    secret: &DeviceSecret,
    data_type: DataType,
    slots: &[u32],
    header: &ReadingHeader,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<ReadingProof, ZkError> {
    check_inputs(pk, ProofKind::Reading, header.data_type, data_type)?;
    let values = padded_slots(data_type, slots)?;
    let spec = data_type.spec();
    check_bounds(slots, spec.slots.iter().map(|s| (s.lo, s.hi)))?;
    let mut lo = [0u32; MAX_SLOTS];
    let mut hi = [0u32; MAX_SLOTS];
    for (i, s) in spec.slots.iter().enumerate() {
        lo[i] = s.lo;
        hi[i] = s.hi;
    }
    let blinding = Fr::rand(rng);
    let secret_fr = secret.scalar();
    let commitment = reading_commitment_fr(&values, blinding, header.context());
    let circuit = ReadingCircuit {
        device_commitment: device_commitment_fr(secret),
        commitment,
        context: header.context(),
        lo,
        hi,
        secret: secret_fr,
        values,
        blinding,
    };
    let proof = prove_circuit(pk, circuit, rng)?;
    Ok(ReadingProof {
        commitment: fr_to_bytes(&commitment),
        blinding: fr_to_bytes(&blinding),
        proof,
    })
}

/// Whether `data_type` can be proven in windows: one slot with `hi < 2^15`.
pub fn windowable(data_type: DataType) -> bool {
    let slots = data_type.spec().slots;
    slots.len() == 1 && slots[0].hi < 1 << WINDOW_VALUE_BITS
}

/// Proves a window of 1..=[`WINDOW_LEN`] readings of one single-slot data
/// type; `values[i]` belongs to reading `first_seq + i` at
/// `start_ms + offsets_ms[i]` of `header`.
pub fn prove_window(
    pk: &ProvingKey,
    secret: &DeviceSecret,
    data_type: DataType,
    values: &[u32],
    header: &WindowHeader,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<WindowProof, ZkError> {
    check_inputs(pk, ProofKind::Window, header.data_type, data_type)?;
    if !windowable(data_type) {
        return Err(ZkError::NotWindowable(data_type.as_str()));
    }
    if header.len() != values.len() {
        return Err(ZkError::WindowSize {
            got: values.len(),
            max: header.len(),
        });
    }
    let padded = padded_window(values)?;
    let slot = data_type.spec().slots[0];
    check_bounds(values, std::iter::repeat((slot.lo, slot.hi)))?;
    let blinding = Fr::rand(rng);
    let context = header.context();
    let commitment = window_commitment_fr(&padded, blinding, context);
    let circuit = WindowCircuit {
        device_commitment: device_commitment_fr(secret),
        commitment,
        context,
        count: values.len() as u32,
        lo: slot.lo,
        hi: slot.hi,
        secret: secret.scalar(),
        values: padded,
        blinding,
    };
    let proof = prove_circuit(pk, circuit, rng)?;
    Ok(ReadingProof {
        commitment: fr_to_bytes(&commitment),
        blinding: fr_to_bytes(&blinding),
        proof,
    })
}
