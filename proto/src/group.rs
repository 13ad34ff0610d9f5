//! From taken readings to a [`ProvenGroup`]: prove, then seal each reading
//! under the owner's data key with the proof's blinding inside (DESIGN §5.1).
//!
//! One assembly serves the gateway's pipeline and the test and benchmark
//! publishers, so a group is built the same way wherever it comes from. A
//! reading that cannot be proven (a value outside the table bounds, a slot
//! count that does not fit) still travels: sealed, with `proof: null` and the
//! reason, so ingest quarantines it visibly instead of the gateway dropping it.

use crate::data_type::DataType;
use crate::envelope::{ProofKind, ProvenGroup, Reading};
use crate::header::{ReadingHeader, WindowHeader};
use crate::seal::{DataKey, SealedValue, seal};
use crate::zk::{DeviceSecret, ProvingKey, ReadingProof, ZkError, prove_reading, prove_window};
use rand_chacha::ChaCha20Rng;
use rand_core::{CryptoRng, RngCore, SeedableRng};
use std::collections::BTreeMap;

/// One reading as taken from a device, before it is proven and sealed.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Taken {
    /// Milliseconds since the Unix epoch (the device's time when it sent one).
    pub recorded_at_ms: i64,
    /// Fixed-point slots (DESIGN §3), in the data type's slot order.
    pub slots: Vec<u32>,
    /// The device's unit, when it was converted.
    pub original_unit: Option<String>,
    /// Non-proven extras carried in the ciphertext.
    pub extras: BTreeMap<String, ciborium::Value>,
}

impl Taken {
    /// A reading with these slots and nothing else.
    pub fn new(recorded_at_ms: i64, slots: Vec<u32>) -> Taken {
        Taken {
            recorded_at_ms,
            slots,
            original_unit: None,
            extras: BTreeMap::new(),
        }
    }

    /// The reading as the gateway holds it while it waits, not yet proven
    /// (a shared device's reading waiting for its owner to assign it): CBOR.
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(self, &mut out).expect("CBOR encoding into a Vec is infallible");
        out
    }

    /// The reading [`Taken::to_cbor`] wrote.
    pub fn from_cbor(bytes: &[u8]) -> Result<Taken, String> {
        ciborium::from_reader(bytes).map_err(|e| format!("a held reading: {e}"))
    }

    /// Whether every slot is inside the table bounds of `data_type` (what
    /// the proof asserts; a reading outside them cannot be proven).
    pub fn in_bounds(&self, data_type: DataType) -> bool {
        let spec = data_type.spec();
        self.slots.len() == spec.slots.len()
            && self
                .slots
                .iter()
                .zip(spec.slots)
                .all(|(v, s)| (s.lo..=s.hi).contains(v))
    }
}

/// Who proves and seals: the same for every group of one device.
#[derive(Clone, Copy)]
pub struct Prover<'a> {
    /// Proving key of the statement the group uses (reading or window).
    pub pk: &'a ProvingKey,
    /// The device secret `s` behind the device's commitment `D` (held by the gateway only).
    pub secret: &'a DeviceSecret,
    /// The owner's data key every reading of the group is sealed under.
    pub data_key: &'a DataKey,
    /// The gateway that publishes the group (bound into every header).
    pub gateway_id: &'a str,
    /// The device the readings come from.
    pub device_id: &'a str,
    /// The data type of every reading of the group; its table bounds are what the proof
    /// asserts.
    pub data_type: DataType,
}

impl Prover<'_> {
    fn header(&self, seq: u64, recorded_at_ms: i64) -> ReadingHeader<'_> {
        ReadingHeader {
            gateway_id: self.gateway_id,
            device_id: self.device_id,
            data_type: self.data_type.as_str(),
            seq,
            recorded_at_ms,
        }
    }

    fn sealed_reading(
        &self,
        seq: u64,
        taken: &Taken,
        slots: Vec<u32>,
        blinding: [u8; 32],
        position: u16,
        rng: &mut ChaCha20Rng,
    ) -> Reading {
        let value = SealedValue {
            slots,
            blinding,
            position,
            original_unit: taken.original_unit.clone(),
            extras: taken.extras.clone(),
        };
        Reading {
            seq,
            data_type: self.data_type.as_str().into(),
            recorded_at_ms: taken.recorded_at_ms,
            sealed: seal(
                self.data_key,
                &self.header(seq, taken.recorded_at_ms),
                &value,
                rng,
            ),
        }
    }

    /// One reading with its own proof (the reading statement); `pk` must be
    /// the reading key. Never fails: an unprovable reading gets `proof: null`
    /// and the reason.
    pub fn reading(
        &self,
        seq: u64,
        taken: &Taken,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> ProvenGroup {
        self.reading_with(seq, taken, &mut seeded(rng))
    }

    fn reading_with(&self, seq: u64, taken: &Taken, rng: &mut ChaCha20Rng) -> ProvenGroup {
        let header = self.header(seq, taken.recorded_at_ms);
        let proven = prove_reading(
            self.pk,
            self.secret,
            self.data_type,
            &taken.slots,
            &header,
            rng,
        );
        let (proof, reason) = split(proven, rng);
        let reading = self.sealed_reading(seq, taken, taken.slots.clone(), proof.blinding, 0, rng);
        group(ProofKind::Reading, self.pk, proof, reason, vec![reading])
    }

    /// Readings `first_seq ..` under one window proof; `pk` must be the
    /// window key, `taken` 1..=[`crate::zk::WINDOW_LEN`] single-slot readings
    /// in time order (a time before the first is read as the first).
    pub fn window(
        &self,
        first_seq: u64,
        taken: &[Taken],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> ProvenGroup {
        self.window_with(first_seq, taken, &mut seeded(rng))
    }

    fn window_with(&self, first_seq: u64, taken: &[Taken], rng: &mut ChaCha20Rng) -> ProvenGroup {
        let start_ms = taken.first().map_or(0, |t| t.recorded_at_ms);
        let offsets_ms: Vec<u32> = taken
            .iter()
            .map(|t| u32::try_from((t.recorded_at_ms - start_ms).max(0)).unwrap_or(u32::MAX))
            .collect();
        let values: Vec<u32> = taken
            .iter()
            .map(|t| t.slots.first().copied().unwrap_or(0))
            .collect();
        let header = WindowHeader {
            gateway_id: self.gateway_id,
            device_id: self.device_id,
            data_type: self.data_type.as_str(),
            first_seq,
            start_ms,
            offsets_ms,
        };
        let proven = if taken.iter().any(|t| t.slots.len() != 1) {
            Err(ZkError::SlotCount {
                data_type: self.data_type.spec().name,
                expected: 1,
                got: taken.iter().map(|t| t.slots.len()).max().unwrap_or(0),
            })
        } else {
            prove_window(self.pk, self.secret, self.data_type, &values, &header, rng)
        };
        let (proof, reason) = split(proven, rng);
        let readings = taken
            .iter()
            .enumerate()
            .map(|(i, t)| {
                self.sealed_reading(
                    first_seq + i as u64,
                    t,
                    t.slots.clone(),
                    proof.blinding,
                    u16::try_from(i).unwrap_or(u16::MAX),
                    rng,
                )
            })
            .collect();
        group(ProofKind::Window, self.pk, proof, reason, readings)
    }
}

/// A generator seeded from the caller's. Generic code is compiled in the
/// caller's crate, so the public entry points are thin and the proving work
/// is compiled (optimised) here, whatever profile the caller uses.
fn seeded(rng: &mut (impl RngCore + CryptoRng)) -> ChaCha20Rng {
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    ChaCha20Rng::from_seed(seed)
}

/// A proof, or (for an unprovable reading) random commitment and blinding
/// with the reason.
fn split(
    proven: Result<ReadingProof, ZkError>,
    rng: &mut ChaCha20Rng,
) -> (ReadingProof, Option<String>) {
    match proven {
        Ok(p) => (p, None),
        Err(e) => {
            let mut commitment = [0u8; 32];
            let mut blinding = [0u8; 32];
            rng.fill_bytes(&mut commitment);
            rng.fill_bytes(&mut blinding);
            (
                ReadingProof {
                    commitment,
                    blinding,
                    proof: [0; crate::envelope::PROOF_LEN],
                },
                Some(e.to_string()),
            )
        }
    }
}

fn group(
    kind: ProofKind,
    pk: &ProvingKey,
    proof: ReadingProof,
    reason: Option<String>,
    readings: Vec<Reading>,
) -> ProvenGroup {
    ProvenGroup {
        kind,
        key_id: pk.id().0,
        commitment: proof.commitment,
        proof: reason.is_none().then(|| proof.proof.to_vec()),
        no_proof_reason: reason,
        readings,
    }
}

#[cfg(test)]
mod tests {
    use super::Taken;

    #[test]
    fn a_held_reading_comes_back_as_it_was_taken() {
        let mut t = Taken::new(1_700_000_000_123, vec![70_250]);
        t.original_unit = Some("lb".into());
        t.extras
            .insert("user_id".into(), ciborium::Value::Integer(3.into()));
        t.extras
            .insert("bytes".into(), ciborium::Value::Bytes(vec![0, 0xff]));
        assert_eq!(Taken::from_cbor(&t.to_cbor()), Ok(t));
        assert!(Taken::from_cbor(&[0xff, 0x00]).is_err());
    }
}
