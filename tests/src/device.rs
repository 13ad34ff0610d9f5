//! Simulated paired devices as a gateway holds them, so ingest and API tests
//! need neither a gateway nor BLE: they build the envelopes a gateway would
//! publish (registrations, device states, proven and unproven readings).

use anyhow::Result;
use hailan_proto::DataType;
use hailan_proto::envelope::{
    Body, DeviceState, Envelope, ProvenGroup, ReadingBatch, Registration,
};
use hailan_proto::group::Taken;
use hailan_proto::seal::DataKey;
use hailan_proto::zk::{DeviceSecret, ProvingKey, device_commitment};
use rand::SeedableRng;

/// A simulated paired device as a gateway holds it: secret, owner's data key, seq.
pub struct TestDevice {
    /// The gateway it is paired to: every envelope's `gateway_id`, so they
    /// belong on `hailan/v1/{gateway_id}/up`.
    pub gateway_id: String,
    /// Its id in its registration, states and readings.
    pub device_id: String,
    /// The one data type it measures.
    pub data_type: DataType,
    /// The device secret `s` (seeded): its registration carries the device
    /// commitment D of it, and its proofs show knowledge of it.
    pub secret: DeviceSecret,
    /// The owner's data key values are sealed with: id `owner-key-1`, 32
    /// bytes of 7 (as in [`crate::api::write_key_ring`]).
    pub key: DataKey,
    /// The seq its next reading gets (from 1).
    pub next_seq: u64,
    /// The RNG (seeded) that sealing nonces, blindings and proofs draw from.
    pub rng: rand_chacha::ChaCha20Rng,
}

/// Milliseconds of a fixed, recent instant the test readings count from.
pub const T0_MS: i64 = 1_763_900_000_000;

impl TestDevice {
    /// A device of `gateway_id` measuring `data_type`, its secret and RNG
    /// seeded from `seed` (the same seed, the same device), next seq 1.
    pub fn new(gateway_id: &str, device_id: &str, data_type: DataType, seed: u64) -> TestDevice {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        let secret = DeviceSecret::generate(&mut rng);
        TestDevice {
            gateway_id: gateway_id.into(),
            device_id: device_id.into(),
            data_type,
            secret,
            key: DataKey::new("owner-key-1", [7; 32]),
            next_seq: 1,
            rng,
        }
    }

    fn envelope(&self, body: Body) -> Envelope {
        Envelope {
            v: 1,
            gateway_id: self.gateway_id.clone(),
            sent_at_ms: T0_MS,
            body,
        }
    }

    /// Its registration envelope, as a gateway queues it at pairing: the
    /// device commitment D, a Bluetooth address derived from the device id
    /// (`C0:FF:…`), paired and sent at [`T0_MS`].
    pub fn registration(&self) -> Envelope {
        self.envelope(Body::Registration(Box::new(Registration {
            device_id: self.device_id.clone(),
            device_type: self.data_type.as_str().into(),
            data_types: vec![self.data_type.as_str().into()],
            bluetooth_address: {
                let h =
                    hailan_proto::header::context_from_bytes(self.device_id.as_bytes()).to_string();
                let h = h.as_bytes();
                format!("C0:FF:{:02X}:{:02X}:{:02X}:{:02X}", h[0], h[1], h[2], h[3])
            },
            name: Some(format!("test {}", self.data_type)),
            manufacturer: Some("hailan tests".into()),
            model: None,
            serial: None,
            firmware_version: Some("1.0".into()),
            hardware_version: None,
            device_commitment: device_commitment(&self.secret),
            paired_at_ms: T0_MS,
            patient: None,
            user_slot_of: None,
        })))
    }

    /// A device state: connected, battery `battery` percent, RSSI -60 dBm,
    /// observed at `observed_at_ms` (ms since the Unix epoch).
    pub fn state(&self, battery: u8, observed_at_ms: i64) -> Envelope {
        self.envelope(Body::DeviceState(DeviceState {
            device_id: self.device_id.clone(),
            battery_level: Some(battery),
            rssi: Some(-60),
            connected: true,
            firmware_version: None,
            observed_at_ms,
            needs_repair: Some(false),
        }))
    }

    /// A device state saying whether the device is connected, observed at
    /// `observed_at_ms` (battery 50 %).
    pub fn link_state(&self, connected: bool, observed_at_ms: i64) -> Envelope {
        self.envelope(Body::DeviceState(DeviceState {
            device_id: self.device_id.clone(),
            battery_level: Some(50),
            rssi: Some(-60),
            connected,
            firmware_version: None,
            observed_at_ms,
            needs_repair: Some(false),
        }))
    }

    fn prover<'a>(&'a self, pk: &'a ProvingKey) -> hailan_proto::group::Prover<'a> {
        hailan_proto::group::Prover {
            pk,
            secret: &self.secret,
            data_key: &self.key,
            gateway_id: &self.gateway_id,
            device_id: &self.device_id,
            data_type: self.data_type,
        }
    }

    fn batch(&self, group: ProvenGroup) -> Envelope {
        self.envelope(Body::Readings(ReadingBatch {
            device_id: self.device_id.clone(),
            groups: vec![group],
        }))
    }

    /// One reading the gateway could not prove (the next seq; `proof: null`
    /// with a reason): ingest stores it unverified. Cheap volume for tests.
    pub fn unproven_reading(&mut self, slots: &[u32]) -> Envelope {
        let seq = self.next_seq;
        self.next_seq += 1;
        let t = T0_MS + 1000 * seq as i64;
        let header = hailan_proto::ReadingHeader {
            gateway_id: &self.gateway_id,
            device_id: &self.device_id,
            data_type: self.data_type.as_str(),
            seq,
            recorded_at_ms: t,
        };
        let value = hailan_proto::seal::SealedValue {
            slots: slots.to_vec(),
            blinding: [0; 32],
            position: 0,
            original_unit: None,
            extras: Default::default(),
        };
        let sealed = hailan_proto::seal::seal(&self.key, &header, &value, &mut self.rng);
        self.batch(ProvenGroup {
            kind: hailan_proto::envelope::ProofKind::Reading,
            key_id: [0; 32],
            commitment: [0; 32],
            proof: None,
            no_proof_reason: Some("test: not proven".into()),
            readings: vec![hailan_proto::Reading {
                seq,
                data_type: self.data_type.as_str().into(),
                recorded_at_ms: t,
                sealed,
            }],
        })
    }

    /// One reading with its own proof (the next seq, one second apart).
    pub fn proven_reading(&mut self, pk: &ProvingKey, slots: &[u32]) -> Result<Envelope> {
        self.proven_reading_with_extras(pk, slots, Default::default())
    }

    /// [`TestDevice::proven_reading`] carrying `extras` sealed beside the
    /// slots (status bits, sensor contact …: what a device sends unproven).
    pub fn proven_reading_with_extras(
        &mut self,
        pk: &ProvingKey,
        slots: &[u32],
        extras: std::collections::BTreeMap<String, ciborium::Value>,
    ) -> Result<Envelope> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut taken = Taken::new(T0_MS + 1000 * seq as i64, slots.to_vec());
        taken.extras = extras;
        let mut rng = self.rng.clone();
        let group = self.prover(pk).reading(seq, &taken, &mut rng);
        self.rng = rng;
        if let Some(reason) = &group.no_proof_reason {
            anyhow::bail!("not provable: {reason}");
        }
        Ok(self.batch(group))
    }

    /// A window of one-slot readings, one per second, with one proof.
    pub fn proven_window(&mut self, pk: &ProvingKey, values: &[u32]) -> Result<Envelope> {
        let first = self.next_seq;
        self.next_seq += values.len() as u64;
        let taken: Vec<Taken> = values
            .iter()
            .enumerate()
            .map(|(i, v)| Taken::new(T0_MS + 1000 * (first + i as u64) as i64, vec![*v]))
            .collect();
        let mut rng = self.rng.clone();
        let group = self.prover(pk).window(first, &taken, &mut rng);
        self.rng = rng;
        if let Some(reason) = &group.no_proof_reason {
            anyhow::bail!("not provable: {reason}");
        }
        Ok(self.batch(group))
    }
}

/// Plausible in-range slots for a data type (mid-bounds).
pub fn plausible_slots(t: DataType) -> Vec<u32> {
    t.spec()
        .slots
        .iter()
        .map(|s| s.lo + (s.hi - s.lo) / 3)
        .collect()
}
