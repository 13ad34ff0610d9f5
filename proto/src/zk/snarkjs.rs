//! Third-party verification: a stored proof as snarkjs 0.7 groth16 JSON
//! (`vk.json`, `proof.json`, `public.json`), so anyone can check a reading
//! with `snarkjs groth16 verify vk.json public.json proof.json`.
//!
//! Points are decimal affine coordinates; G1 `[x, y, "1"]`, G2
//! `[[x.c0, x.c1], [y.c0, y.c1], ["1", "0"]]` (c0 first — Solidity/EVM
//! verifiers want c1 first). snarkjs does not check the number of public
//! inputs, so [`SnarkjsExport::new`] pins it: the bundle must carry exactly
//! the key's count.

use super::ZkError;
use super::keys::{KeyId, VerifyingKey, kind_from_name, kind_name, public_input_count};
use crate::envelope::{PROOF_LEN, ProofKind};
use ark_bn254::{Bn254, Fr, G1Affine, G2Affine};
use ark_groth16::Proof;
use ark_serialize::{CanonicalDeserialize, Compress, Validate};
use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// A proof with everything needed to re-verify it: what ingest stores once
/// per proof, and what the export reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofBundle {
    /// `reading` or `window`.
    pub statement: String,
    /// Hex SHA-256 of the verifying key.
    pub key_id: String,
    /// Hex of the 128-byte compressed proof.
    pub proof: String,
    /// Public inputs, decimal, in statement order.
    pub public_inputs: Vec<String>,
}

impl ProofBundle {
    /// A bundle of a `kind` proof made for key `key_id`: the compressed proof bytes as hex
    /// and its public inputs, in statement order, as decimals.
    pub fn new(kind: ProofKind, key_id: KeyId, proof: &[u8], inputs: &[Fr]) -> Self {
        ProofBundle {
            statement: kind_name(kind).to_owned(),
            key_id: key_id.to_string(),
            proof: hex::encode(proof),
            public_inputs: inputs.iter().map(|x| x.to_string()).collect(),
        }
    }

    /// The parsed inputs (decimal, each below the field order).
    pub fn inputs(&self) -> Result<Vec<Fr>, ZkError> {
        self.public_inputs
            .iter()
            .map(|s| {
                let ok = !s.is_empty() && s.len() <= 78 && s.bytes().all(|b| b.is_ascii_digit());
                let x = if ok { Fr::from_str(s).ok() } else { None };
                // Fr::from_str reduces; insist on the canonical decimal.
                x.filter(|x| x.to_string() == *s)
                    .ok_or(ZkError::MalformedScalar("public input"))
            })
            .collect()
    }

    /// The parsed proof (subgroup-checked).
    pub fn proof(&self) -> Result<Proof<Bn254>, ZkError> {
        let bytes =
            hex::decode(&self.proof).map_err(|_| ZkError::Bundle("proof is not hex".into()))?;
        if bytes.len() != PROOF_LEN {
            return Err(ZkError::Bundle(format!(
                "proof is {} bytes, not {PROOF_LEN}",
                bytes.len()
            )));
        }
        Proof::deserialize_with_mode(&bytes[..], Compress::Yes, Validate::Yes)
            .map_err(|e| ZkError::Bundle(format!("proof: {e}")))
    }
}

/// snarkjs `vk.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnarkjsVk {
    /// Always `groth16`.
    pub protocol: String,
    /// Always `bn128` (snarkjs's name for BN254).
    pub curve: String,
    /// Number of public inputs of the statement (11 for reading, 6 for window).
    #[serde(rename = "nPublic")]
    pub n_public: usize,
    /// The key's α, a G1 point.
    pub vk_alpha_1: [String; 3],
    /// The key's β, a G2 point.
    pub vk_beta_2: [[String; 2]; 3],
    /// The key's γ, a G2 point.
    pub vk_gamma_2: [[String; 2]; 3],
    /// The key's δ, a G2 point.
    pub vk_delta_2: [[String; 2]; 3],
    /// The input commitments (arkworks' `gamma_abc_g1`): G1 points, one for the constant 1
    /// and then one per public input.
    #[serde(rename = "IC")]
    pub ic: Vec<[String; 3]>,
}

/// snarkjs `proof.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnarkjsProof {
    /// The proof's A, a G1 point.
    pub pi_a: [String; 3],
    /// The proof's B, a G2 point.
    pub pi_b: [[String; 2]; 3],
    /// The proof's C, a G1 point.
    pub pi_c: [String; 3],
    /// Always `groth16`.
    pub protocol: String,
    /// Always `bn128` (snarkjs's name for BN254).
    pub curve: String,
}

/// The three snarkjs files of one proof.
#[derive(Clone, Debug)]
pub struct SnarkjsExport {
    /// `vk.json`: the verifying key.
    pub vk: SnarkjsVk,
    /// `proof.json`: the proof.
    pub proof: SnarkjsProof,
    /// `public.json`: decimal strings.
    pub public: Vec<String>,
}

fn g1(p: &G1Affine) -> [String; 3] {
    // Proof and key points are never the identity for a valid proof; the
    // identity would print as (0, 0), which snarkjs also rejects.
    let (x, y) = (p.x, p.y);
    [x.to_string(), y.to_string(), "1".into()]
}

fn g2(p: &G2Affine) -> [[String; 2]; 3] {
    [
        [p.x.c0.to_string(), p.x.c1.to_string()],
        [p.y.c0.to_string(), p.y.c1.to_string()],
        ["1".into(), "0".into()],
    ]
}

/// snarkjs JSON of a verifying key.
pub fn vk_json(vk: &VerifyingKey) -> SnarkjsVk {
    let ark = vk.ark();
    SnarkjsVk {
        protocol: "groth16".into(),
        curve: "bn128".into(),
        n_public: ark.gamma_abc_g1.len() - 1,
        vk_alpha_1: g1(&ark.alpha_g1),
        vk_beta_2: g2(&ark.beta_g2),
        vk_gamma_2: g2(&ark.gamma_g2),
        vk_delta_2: g2(&ark.delta_g2),
        ic: ark.gamma_abc_g1.iter().map(g1).collect(),
    }
}

/// snarkjs JSON of a proof.
pub fn proof_json(proof: &Proof<Bn254>) -> SnarkjsProof {
    SnarkjsProof {
        pi_a: g1(&proof.a),
        pi_b: g2(&proof.b),
        pi_c: g1(&proof.c),
        protocol: "groth16".into(),
        curve: "bn128".into(),
    }
}

impl ProofBundle {
    /// Verifies the bundle natively against `vk`: the same key id, the same
    /// statement, exactly the key's public-input count, and a proof that
    /// verifies. Returns the parsed proof.
    pub fn verify(&self, vk: &VerifyingKey) -> Result<Proof<Bn254>, ZkError> {
        if self.key_id != vk.id().to_string() {
            return Err(ZkError::Bundle(format!(
                "the bundle names key {}, the verifying key is {}",
                self.key_id,
                vk.id()
            )));
        }
        if kind_from_name(&self.statement) != Some(vk.kind()) {
            return Err(ZkError::Bundle(format!(
                "the bundle is a {:?} statement, the key proves {} statements",
                self.statement,
                kind_name(vk.kind())
            )));
        }
        let inputs = self.inputs()?;
        let expected = public_input_count(vk.kind());
        if inputs.len() != expected || vk.ark().gamma_abc_g1.len() != expected + 1 {
            return Err(ZkError::Bundle(format!(
                "{} public inputs given, the {} statement has {expected}",
                inputs.len(),
                kind_name(vk.kind())
            )));
        }
        let proof = self.proof()?;
        let ok =
            ark_groth16::Groth16::<Bn254>::verify_proof(&vk.pvk, &proof, &inputs).unwrap_or(false);
        if !ok {
            return Err(ZkError::Bundle(
                "the proof does not verify against this key".into(),
            ));
        }
        Ok(proof)
    }
}

impl SnarkjsExport {
    /// Checks the bundle against the key (same id, same statement, exactly
    /// the key's public-input count, proof verifies natively) and converts.
    pub fn new(vk: &VerifyingKey, bundle: &ProofBundle) -> Result<Self, ZkError> {
        let proof = bundle.verify(vk)?;
        Ok(SnarkjsExport {
            vk: vk_json(vk),
            proof: proof_json(&proof),
            public: bundle.public_inputs.clone(),
        })
    }
}
