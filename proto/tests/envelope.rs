//! The envelope codec: round trips, validation, and hostile input.

use hailan_proto::envelope::{
    self, Body, DecodeError, DeviceState, Envelope, MAX_ENVELOPE_BYTES, ProofKind, ProvenGroup,
    Reading, ReadingBatch, Registration, Sealed,
};
use proptest::prelude::*;

fn sealed(n: u8) -> Sealed {
    Sealed {
        kid: "owner-key-1".into(),
        nonce: [n; 12],
        ciphertext: vec![n; 40],
    }
}

fn reading(seq: u64, t: i64) -> Reading {
    Reading {
        seq,
        data_type: "HEART_RATE".into(),
        recorded_at_ms: t,
        sealed: sealed(seq as u8),
    }
}

fn envelope(body: Body) -> Envelope {
    Envelope {
        v: 1,
        gateway_id: "gw-test-1".into(),
        sent_at_ms: 1_763_900_000_000,
        body,
    }
}

pub fn registration() -> Envelope {
    envelope(Body::Registration(Box::new(Registration {
        device_id: "dev-bp-1".into(),
        device_type: "BLOOD_PRESSURE".into(),
        data_types: vec!["BLOOD_PRESSURE".into()],
        bluetooth_address: "C0:FF:EE:00:00:01".into(),
        name: Some("Cuff".into()),
        manufacturer: Some("Acme".into()),
        model: Some("BP-1".into()),
        serial: Some("SN1".into()),
        firmware_version: Some("1.0.3".into()),
        hardware_version: None,
        device_commitment: [9; 32],
        paired_at_ms: 1_763_900_000_000,
        patient: None,
        user_slot_of: None,
    })))
}

pub fn readings() -> Envelope {
    envelope(Body::Readings(ReadingBatch {
        device_id: "dev-hr-1".into(),
        groups: vec![
            ProvenGroup {
                kind: ProofKind::Window,
                key_id: [1; 32],
                commitment: [2; 32],
                proof: Some(vec![3; 128]),
                no_proof_reason: None,
                readings: vec![reading(10, 1000), reading(11, 2000), reading(12, 3000)],
            },
            ProvenGroup {
                kind: ProofKind::Reading,
                key_id: [1; 32],
                commitment: [4; 32],
                proof: None,
                no_proof_reason: Some("proving key not loaded".into()),
                readings: vec![reading(13, 4000)],
            },
        ],
    }))
}

pub fn device_state() -> Envelope {
    envelope(Body::DeviceState(DeviceState {
        device_id: "dev-hr-1".into(),
        battery_level: Some(77),
        rssi: Some(-61),
        connected: true,
        firmware_version: None,
        observed_at_ms: 1_763_900_000_500,
        needs_repair: Some(false),
    }))
}

/// A device state as a gateway wrote it before `needs_repair` existed: the
/// same map without that key. It still decodes, as "not said".
#[test]
fn a_device_state_without_needs_repair_still_decodes() {
    use ciborium::Value;
    let mut e = device_state();
    let bytes = envelope::encode(&e);
    let mut v: Value = ciborium::from_reader(bytes.as_slice()).expect("CBOR");
    let state = v
        .as_map_mut()
        .and_then(|m| m.iter_mut().find(|(k, _)| k.as_text() == Some("body")))
        .and_then(|(_, b)| b.as_map_mut())
        .and_then(|m| m.first_mut())
        .and_then(|(_, s)| s.as_map_mut())
        .expect("body.device_state map");
    let before = state.len();
    state.retain(|(k, _)| k.as_text() != Some("needs_repair"));
    assert_eq!(state.len(), before - 1, "the encoder writes needs_repair");
    let mut old = Vec::new();
    ciborium::into_writer(&v, &mut old).expect("CBOR");
    if let Body::DeviceState(s) = &mut e.body {
        s.needs_repair = None;
    }
    assert_eq!(envelope::decode(&old).expect("an old device state"), e);
}

#[test]
fn needs_repair_must_be_a_bool() {
    use ciborium::Value;
    let bytes = envelope::encode(&device_state());
    let mut v: Value = ciborium::from_reader(bytes.as_slice()).expect("CBOR");
    let state = v
        .as_map_mut()
        .and_then(|m| m.iter_mut().find(|(k, _)| k.as_text() == Some("body")))
        .and_then(|(_, b)| b.as_map_mut())
        .and_then(|m| m.first_mut())
        .and_then(|(_, s)| s.as_map_mut())
        .expect("body.device_state map");
    for (k, val) in state.iter_mut() {
        if k.as_text() == Some("needs_repair") {
            *val = Value::Integer(1.into());
        }
    }
    let mut bad = Vec::new();
    ciborium::into_writer(&v, &mut bad).expect("CBOR");
    let err = envelope::decode(&bad)
        .expect_err("an integer is not a bool")
        .to_string();
    assert!(err.contains("needs_repair"), "{err}");
}

#[test]
fn every_message_round_trips() {
    for e in [registration(), readings(), device_state()] {
        let bytes = envelope::encode(&e);
        let back = envelope::decode(&bytes).expect("decode");
        assert_eq!(back, e);
        // The encoding is deterministic: one value, one byte string.
        assert_eq!(envelope::encode(&back), bytes);
    }
}

#[test]
fn window_header_is_rebuilt_from_the_readings() {
    let e = readings();
    let Body::Readings(batch) = &e.body else {
        unreachable!()
    };
    let w = batch.groups[0]
        .window_header(&e.gateway_id, &batch.device_id)
        .expect("window");
    assert_eq!(w.first_seq, 10);
    assert_eq!(w.start_ms, 1000);
    assert_eq!(w.offsets_ms, vec![0, 1000, 2000]);
    assert_eq!(w.data_type, "HEART_RATE");
}

fn with_batch(f: impl FnOnce(&mut ReadingBatch)) -> Envelope {
    let mut e = readings();
    if let Body::Readings(b) = &mut e.body {
        f(b);
    }
    e
}

fn assert_invalid(e: Envelope, needle: &str) {
    let bytes = envelope::encode(&e);
    match envelope::decode(&bytes) {
        Err(DecodeError::Invalid(msg)) => assert!(msg.contains(needle), "{msg:?} lacks {needle:?}"),
        other => panic!("expected Invalid({needle}), got {other:?}"),
    }
}

#[test]
fn structural_rules_are_enforced() {
    assert_invalid(
        with_batch(|b| b.groups[0].proof = Some(vec![0; 127])),
        "127 bytes",
    );
    assert_invalid(
        with_batch(|b| b.groups[1].no_proof_reason = None),
        "no proof",
    );
    assert_invalid(
        with_batch(|b| b.groups[0].readings[1].seq = 99),
        "not consecutive",
    );
    assert_invalid(
        with_batch(|b| b.groups[0].readings[2].recorded_at_ms = 0),
        "backwards",
    );
    assert_invalid(
        with_batch(|b| b.groups[0].readings[1].data_type = "SPO2".into()),
        "mixes",
    );
    assert_invalid(
        with_batch(|b| b.groups[1].readings.push(reading(14, 5000))),
        "exactly 1",
    );
    assert_invalid(with_batch(|b| b.groups.clear()), "groups");
    assert_invalid(with_batch(|b| b.device_id = "a/b".into()), "device_id");
    assert_invalid(
        with_batch(|b| b.groups[0].readings[0].sealed.ciphertext.truncate(3)),
        "ciphertext",
    );
    let mut e = readings();
    e.gateway_id = "+".into();
    assert_invalid(e, "gateway_id");
    let mut e = device_state();
    if let Body::DeviceState(s) = &mut e.body {
        s.battery_level = Some(101);
    }
    assert_invalid(e, "battery_level");
}

#[test]
fn another_version_is_named() {
    let mut e = device_state();
    e.v = 2;
    match envelope::decode(&envelope::encode(&e)) {
        Err(DecodeError::UnsupportedVersion(2)) => {}
        other => panic!("expected UnsupportedVersion(2), got {other:?}"),
    }
}

#[test]
fn oversized_input_is_refused_before_decoding() {
    let big = vec![0u8; MAX_ENVELOPE_BYTES + 1];
    assert!(matches!(
        envelope::decode(&big),
        Err(DecodeError::TooLarge(_))
    ));
}

#[test]
fn truncations_never_decode() {
    let bytes = envelope::encode(&readings());
    for n in 0..bytes.len() {
        assert!(
            envelope::decode(&bytes[..n]).is_err(),
            "prefix of {n} bytes decoded"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = envelope::decode(&bytes);
    }

    #[test]
    fn mutated_envelopes_never_panic(
        which in 0usize..3,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let e = [registration(), readings(), device_state()][which].clone();
        let mut bytes = envelope::encode(&e);
        for (i, b) in flips {
            let at = i.index(bytes.len());
            bytes[at] = b;
        }
        if let Ok(decoded) = envelope::decode(&bytes) {
            // Whatever decodes is valid and re-encodes to something that decodes the same.
            prop_assert!(decoded.validate().is_ok());
            prop_assert_eq!(envelope::decode(&envelope::encode(&decoded)).ok(), Some(decoded));
        }
    }

    #[test]
    fn device_state_round_trips(
        battery in proptest::option::of(0u8..=100),
        rssi in any::<Option<i16>>(),
        connected: bool,
        needs_repair in any::<Option<bool>>(),
        t in hailan_proto::columns::MIN_TIME_MS..=hailan_proto::columns::MAX_TIME_MS,
    ) {
        let e = envelope(Body::DeviceState(DeviceState {
            device_id: "d-1".into(), battery_level: battery, rssi, connected, firmware_version: None, observed_at_ms: t,
            needs_repair,
        }));
        prop_assert_eq!(envelope::decode(&envelope::encode(&e)).ok(), Some(e));
    }

    /// A time no column can hold is refused, and the refusal names the field.
    #[test]
    fn device_state_times_outside_the_columns_are_refused(
        t in prop_oneof![i64::MIN..hailan_proto::columns::MIN_TIME_MS, (hailan_proto::columns::MAX_TIME_MS + 1)..=i64::MAX],
    ) {
        let e = envelope(Body::DeviceState(DeviceState {
            device_id: "d-1".into(), battery_level: None, rssi: None, connected: true, firmware_version: None, observed_at_ms: t,
            needs_repair: None,
        }));
        let err = envelope::decode(&envelope::encode(&e)).expect_err("out of range").to_string();
        prop_assert!(err.contains("device_state.observed_at_ms"), "{}", err);
    }
}
