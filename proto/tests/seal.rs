//! Sealing: what opens, and everything that must not.

use hailan_proto::ReadingHeader;
use hailan_proto::seal::{self, DataKey, SealError, SealedValue};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::collections::BTreeMap;

fn header() -> ReadingHeader<'static> {
    ReadingHeader {
        gateway_id: "gw-1",
        device_id: "dev-1",
        data_type: "BLOOD_PRESSURE",
        seq: 42,
        recorded_at_ms: 1_763_900_000_000,
    }
}

fn value() -> SealedValue {
    let mut extras = BTreeMap::new();
    extras.insert("irregular_pulse".to_owned(), ciborium::Value::Bool(true));
    SealedValue {
        slots: vec![1205, 803, 937, 71],
        blinding: [5; 32],
        position: 0,
        original_unit: Some("kPa".into()),
        extras,
    }
}

fn key(n: u8) -> DataKey {
    DataKey::new(format!("owner-{n}"), [n; 32])
}

#[test]
fn seal_then_open() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let sealed = seal::seal(&key(1), &header(), &value(), &mut rng);
    assert_eq!(sealed.kid, "owner-1");
    assert_eq!(seal::open(&key(1), &header(), &sealed), Ok(value()));
    // Fresh nonce each time.
    let again = seal::seal(&key(1), &header(), &value(), &mut rng);
    assert_ne!(again.nonce, sealed.nonce);
    assert_ne!(again.ciphertext, sealed.ciphertext);
}

#[test]
fn every_header_field_is_bound() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let sealed = seal::seal(&key(1), &header(), &value(), &mut rng);
    let changed = [
        ReadingHeader {
            gateway_id: "gw-2",
            ..header()
        },
        ReadingHeader {
            device_id: "dev-2",
            ..header()
        },
        ReadingHeader {
            data_type: "HEART_RATE",
            ..header()
        },
        ReadingHeader {
            seq: 43,
            ..header()
        },
        ReadingHeader {
            recorded_at_ms: 1_763_900_000_001,
            ..header()
        },
    ];
    for h in changed {
        assert_eq!(
            seal::open(&key(1), &h, &sealed),
            Err(SealError::Authentication),
            "{h:?}"
        );
    }
}

#[test]
fn every_ciphertext_and_nonce_byte_is_bound() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let sealed = seal::seal(&key(1), &header(), &value(), &mut rng);
    for i in 0..sealed.ciphertext.len() {
        let mut s = sealed.clone();
        s.ciphertext[i] ^= 0x01;
        assert_eq!(
            seal::open(&key(1), &header(), &s),
            Err(SealError::Authentication),
            "byte {i}"
        );
    }
    for i in 0..sealed.nonce.len() {
        let mut s = sealed.clone();
        s.nonce[i] ^= 0x80;
        assert_eq!(
            seal::open(&key(1), &header(), &s),
            Err(SealError::Authentication),
            "nonce {i}"
        );
    }
    let mut s = sealed.clone();
    s.ciphertext.truncate(10);
    assert_eq!(
        seal::open(&key(1), &header(), &s),
        Err(SealError::Authentication)
    );
}

#[test]
fn wrong_key_fails() {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let sealed = seal::seal(&key(1), &header(), &value(), &mut rng);
    // Different key id: refused up front, naming both.
    assert!(matches!(
        seal::open(&key(2), &header(), &sealed),
        Err(SealError::WrongKeyId { .. })
    ));
    // Same id, different bytes: fails authentication.
    let impostor = DataKey::new("owner-1", [2; 32]);
    assert_eq!(
        seal::open(&impostor, &header(), &sealed),
        Err(SealError::Authentication)
    );
    // Relabelled kid on the wire: the kid is associated data too.
    let mut relabelled = sealed.clone();
    relabelled.kid = "owner-2".into();
    assert_eq!(
        seal::open(&key(2), &header(), &relabelled),
        Err(SealError::Authentication)
    );
}
