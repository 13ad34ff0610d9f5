//! Keys: setup, serialisation, key ids and development keys (ZK.md §"Keys").
//!
//! One key pair per statement shape ([`ProofKind::Reading`], [`ProofKind::Window`]).
//! A key id is SHA-256 of the arkworks compressed serialisation of the
//! verifying key; every proven group names it. Key files are this module's
//! byte format (magic, kind, origin, arkworks compressed key); proto never
//! touches the file system, the CLI does.
//!
//! [`KeyOrigin::Dev`] keys come from a seeded ChaCha20 RNG: anyone who knows
//! the seed can forge proofs, so they are marked in the key bytes and a
//! production [`super::Verifier`] refuses them.

use super::ZkError;
use super::circuit::{READING_PUBLIC_INPUTS, ReadingCircuit, WINDOW_PUBLIC_INPUTS, WindowCircuit};
use crate::envelope::ProofKind;
use ark_bn254::{Bn254, Fr};
use ark_ec::pairing::Pairing;
use ark_groth16::{Groth16, PreparedVerifyingKey};
use ark_relations::gr1cs::{
    ConstraintSynthesizer, ConstraintSystem, Matrix, OptimizationGoal, R1CS_PREDICATE_LABEL,
    SynthesisMode,
};
use ark_serialize::{CanonicalDeserialize, CanonicalSerialize, Compress, Validate};
use rand_chacha::ChaCha20Rng;
use rand_core::{CryptoRng, RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use std::fmt;

/// SHA-256 of a verifying key's compressed serialisation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 32]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// Where a key came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyOrigin {
    /// A setup from a CSPRNG whose toxic waste was dropped (or, later, a ceremony).
    Setup,
    /// A reproducible development setup from a public seed: never for production.
    Dev {
        /// The seed the setup's ChaCha20 RNG was derived from (`zk setup --dev-seed N`).
        seed: u64,
    },
}

const PK_MAGIC: &[u8; 8] = b"HLZKPK1\0";
const VK_MAGIC: &[u8; 8] = b"HLZKVK1\0";

fn kind_byte(kind: ProofKind) -> u8 {
    match kind {
        ProofKind::Reading => 1,
        ProofKind::Window => 2,
    }
}

fn kind_from_byte(b: u8) -> Result<ProofKind, ZkError> {
    match b {
        1 => Ok(ProofKind::Reading),
        2 => Ok(ProofKind::Window),
        _ => Err(ZkError::MalformedKey(format!("unknown statement kind {b}"))),
    }
}

/// Short stable name of a statement shape (`reading`, `window`).
pub fn kind_name(kind: ProofKind) -> &'static str {
    match kind {
        ProofKind::Reading => "reading",
        ProofKind::Window => "window",
    }
}

/// Parses [`kind_name`].
pub fn kind_from_name(name: &str) -> Option<ProofKind> {
    match name {
        "reading" => Some(ProofKind::Reading),
        "window" => Some(ProofKind::Window),
        _ => None,
    }
}

/// Number of public inputs of a statement shape.
pub fn public_input_count(kind: ProofKind) -> usize {
    match kind {
        ProofKind::Reading => READING_PUBLIC_INPUTS,
        ProofKind::Window => WINDOW_PUBLIC_INPUTS,
    }
}

fn write_header(out: &mut Vec<u8>, magic: &[u8; 8], kind: ProofKind, origin: KeyOrigin) {
    out.extend_from_slice(magic);
    out.push(kind_byte(kind));
    match origin {
        KeyOrigin::Setup => out.extend_from_slice(&[0; 9]),
        KeyOrigin::Dev { seed } => {
            out.push(1);
            out.extend_from_slice(&seed.to_be_bytes());
        }
    }
}

fn read_header<'a>(
    bytes: &'a [u8],
    magic: &[u8; 8],
) -> Result<(ProofKind, KeyOrigin, &'a [u8]), ZkError> {
    if bytes.len() < 18 || &bytes[..8] != magic {
        return Err(ZkError::MalformedKey(
            "bad magic (not a hailan key file of this kind)".into(),
        ));
    }
    let kind = kind_from_byte(bytes[8])?;
    let mut seed = [0u8; 8];
    seed.copy_from_slice(&bytes[10..18]);
    let origin = match bytes[9] {
        0 => KeyOrigin::Setup,
        1 => KeyOrigin::Dev {
            seed: u64::from_be_bytes(seed),
        },
        b => return Err(ZkError::MalformedKey(format!("unknown key origin {b}"))),
    };
    Ok((kind, origin, &bytes[18..]))
}

/// The id of an arkworks verifying key.
pub fn key_id_of(vk: &ark_groth16::VerifyingKey<Bn254>) -> KeyId {
    let mut bytes = Vec::new();
    vk.serialize_compressed(&mut bytes)
        .expect("serialising into a Vec cannot fail");
    KeyId(Sha256::digest(&bytes).into())
}

/// The R1CS matrices of a statement, built once per key and reused by every
/// proof (saves re-deriving them per proof).
pub(crate) struct Shape {
    pub matrices: Vec<Matrix<Fr>>,
    pub num_inputs: usize,
    pub num_constraints: usize,
    pub num_witnesses: usize,
}

pub(crate) fn blank_circuit_shape<C: ConstraintSynthesizer<Fr>>(
    circuit: C,
) -> Result<Shape, ZkError> {
    super::quiet(|| blank_circuit_shape_inner(circuit))
}

fn blank_circuit_shape_inner<C: ConstraintSynthesizer<Fr>>(circuit: C) -> Result<Shape, ZkError> {
    let cs = ConstraintSystem::<Fr>::new_ref();
    cs.set_optimization_goal(OptimizationGoal::Constraints);
    cs.set_mode(SynthesisMode::Setup);
    circuit
        .generate_constraints(cs.clone())
        .map_err(|e| ZkError::Synthesis(e.to_string()))?;
    cs.finalize();
    let mut all = cs
        .to_matrices()
        .map_err(|e| ZkError::Synthesis(e.to_string()))?;
    let matrices = all
        .remove(R1CS_PREDICATE_LABEL)
        .ok_or_else(|| ZkError::Synthesis("no R1CS matrices".into()))?;
    Ok(Shape {
        matrices,
        num_inputs: cs.num_instance_variables(),
        num_constraints: cs.num_constraints(),
        num_witnesses: cs.num_witness_variables(),
    })
}

pub(crate) fn shape_of(kind: ProofKind) -> Result<Shape, ZkError> {
    match kind {
        ProofKind::Reading => blank_circuit_shape(ReadingCircuit::blank()),
        ProofKind::Window => blank_circuit_shape(WindowCircuit::blank()),
    }
}

/// Number of R1CS constraints of a statement shape.
pub fn constraint_count(kind: ProofKind) -> Result<usize, ZkError> {
    Ok(shape_of(kind)?.num_constraints)
}

/// A proving key (the gateway's), with its verifying key and cached matrices.
pub struct ProvingKey {
    kind: ProofKind,
    origin: KeyOrigin,
    id: KeyId,
    pub(crate) pk: ark_groth16::ProvingKey<Bn254>,
    pub(crate) shape: Shape,
}

impl fmt::Debug for ProvingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProvingKey")
            .field("kind", &self.kind)
            .field("origin", &self.origin)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ProvingKey {
    /// A fresh setup for `kind` from the caller's CSPRNG (OS randomness in
    /// production). The toxic waste lives only inside this call.
    pub fn setup(kind: ProofKind, rng: &mut (impl RngCore + CryptoRng)) -> Result<Self, ZkError> {
        Self::setup_with(kind, KeyOrigin::Setup, rng)
    }

    /// A reproducible development setup: same seed, same keys. Marked
    /// [`KeyOrigin::Dev`]; anyone with the seed can forge proofs.
    pub fn dev_setup(kind: ProofKind, seed: u64) -> Result<Self, ZkError> {
        let mut material = Sha256::new();
        material.update(b"hailan/v1/zk/dev-setup\0");
        material.update([kind_byte(kind)]);
        material.update(seed.to_be_bytes());
        let mut rng = ChaCha20Rng::from_seed(material.finalize().into());
        Self::setup_with(kind, KeyOrigin::Dev { seed }, &mut rng)
    }

    fn setup_with(
        kind: ProofKind,
        origin: KeyOrigin,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Self, ZkError> {
        let pk = super::quiet(|| match kind {
            ProofKind::Reading => Groth16::<Bn254>::generate_random_parameters_with_reduction(
                ReadingCircuit::blank(),
                rng,
            ),
            ProofKind::Window => Groth16::<Bn254>::generate_random_parameters_with_reduction(
                WindowCircuit::blank(),
                rng,
            ),
        })
        .map_err(|e| ZkError::Synthesis(e.to_string()))?;
        Self::from_parts(kind, origin, pk)
    }

    fn from_parts(
        kind: ProofKind,
        origin: KeyOrigin,
        pk: ark_groth16::ProvingKey<Bn254>,
    ) -> Result<Self, ZkError> {
        let shape = shape_of(kind)?;
        if pk.vk.gamma_abc_g1.len() != shape.num_inputs
            || pk.a_query.len() != shape.num_inputs + shape.num_witnesses
        {
            return Err(ZkError::MalformedKey(format!(
                "the key does not fit this build's {} statement",
                kind_name(kind)
            )));
        }
        let id = key_id_of(&pk.vk);
        Ok(ProvingKey {
            kind,
            origin,
            id,
            pk,
            shape,
        })
    }

    /// The statement this key proves: reading or window.
    pub fn kind(&self) -> ProofKind {
        self.kind
    }
    /// Whether the key came from a real setup or from a public development seed.
    pub fn origin(&self) -> KeyOrigin {
        self.origin
    }
    /// The id every proof made with this key names.
    pub fn id(&self) -> KeyId {
        self.id
    }
    /// Number of R1CS constraints of this key's statement.
    pub fn constraints(&self) -> usize {
        self.shape.num_constraints
    }

    /// The matching verifying key.
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey::from_parts(self.kind, self.origin, self.pk.vk.clone())
    }

    /// Key-file bytes: header then the arkworks key, compressed.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_key_file(PK_MAGIC, self.kind, self.origin, &self.pk)
    }

    /// Parses [`Self::to_bytes`], with curve and subgroup checks.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ZkError> {
        let (kind, origin, pk) =
            decode_key_file::<ark_groth16::ProvingKey<Bn254>>(bytes, PK_MAGIC)?;
        Self::from_parts(kind, origin, pk)
    }
}

/// A verifying key (ingest's and the clinician's), prepared for pairing.
#[derive(Clone)]
pub struct VerifyingKey {
    kind: ProofKind,
    origin: KeyOrigin,
    id: KeyId,
    pub(crate) pvk: PreparedVerifyingKey<Bn254>,
    pub(crate) beta_prepared: <Bn254 as Pairing>::G2Prepared,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kind", &self.kind)
            .field("origin", &self.origin)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl VerifyingKey {
    fn from_parts(
        kind: ProofKind,
        origin: KeyOrigin,
        vk: ark_groth16::VerifyingKey<Bn254>,
    ) -> Self {
        let id = key_id_of(&vk);
        let beta_prepared = vk.beta_g2.into();
        let pvk = ark_groth16::prepare_verifying_key(&vk);
        VerifyingKey {
            kind,
            origin,
            id,
            pvk,
            beta_prepared,
        }
    }

    /// The statement this key verifies: reading or window.
    pub fn kind(&self) -> ProofKind {
        self.kind
    }
    /// Whether the key came from a real setup or from a public development seed (which a
    /// production [`super::Verifier`] refuses).
    pub fn origin(&self) -> KeyOrigin {
        self.origin
    }
    /// The key id ([`KeyId`]: SHA-256 of this key's compressed serialisation) that proofs
    /// made for it name.
    pub fn id(&self) -> KeyId {
        self.id
    }
    /// The arkworks verifying key.
    pub fn ark(&self) -> &ark_groth16::VerifyingKey<Bn254> {
        &self.pvk.vk
    }

    /// Key-file bytes: header then the arkworks key, compressed.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_key_file(VK_MAGIC, self.kind, self.origin, &self.pvk.vk)
    }

    /// Parses [`Self::to_bytes`], with curve and subgroup checks, and checks
    /// the key has the public-input count of its statement.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ZkError> {
        let (kind, origin, vk) =
            decode_key_file::<ark_groth16::VerifyingKey<Bn254>>(bytes, VK_MAGIC)?;
        if vk.gamma_abc_g1.len() != public_input_count(kind) + 1 {
            return Err(ZkError::MalformedKey(format!(
                "a {} key has {} public inputs, this one {}",
                kind_name(kind),
                public_input_count(kind),
                vk.gamma_abc_g1.len().saturating_sub(1)
            )));
        }
        Ok(Self::from_parts(kind, origin, vk))
    }
}

/// Key-file bytes: the header, then the arkworks key compressed.
fn encode_key_file(
    magic: &[u8; 8],
    kind: ProofKind,
    origin: KeyOrigin,
    key: &impl CanonicalSerialize,
) -> Vec<u8> {
    let mut out = Vec::new();
    write_header(&mut out, magic, kind, origin);
    key.serialize_compressed(&mut out)
        .expect("serialising into a Vec cannot fail");
    out
}

/// Parses [`encode_key_file`] with curve and subgroup checks; no trailing bytes.
fn decode_key_file<T: CanonicalDeserialize>(
    bytes: &[u8],
    magic: &[u8; 8],
) -> Result<(ProofKind, KeyOrigin, T), ZkError> {
    let (kind, origin, mut reader) = read_header(bytes, magic)?;
    let key = T::deserialize_with_mode(&mut reader, Compress::Yes, Validate::Yes)
        .map_err(|e| ZkError::MalformedKey(e.to_string()))?;
    if !reader.is_empty() {
        return Err(ZkError::MalformedKey(format!(
            "{} trailing bytes",
            reader.len()
        )));
    }
    Ok((kind, origin, key))
}
