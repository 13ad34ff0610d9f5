//! proto/WIRE.md is precise enough: a decoder written from it alone, in
//! Python (`tests/wire/decode_envelope.py`), reads exactly what the Rust code
//! writes — every field, the canonical headers, the context elements, and the
//! sealed plaintext opened with the spec's associated data.

use anyhow::{Context, Result, bail};
use ark_ff::PrimeField;
use hailan_proto::envelope::{
    self, Body, DeviceState, Envelope, ProofKind, ProvenGroup, Reading, ReadingBatch, Registration,
};
use hailan_proto::seal::{self, DataKey, SealedValue};
use hailan_proto::{ReadingHeader, WindowHeader};
use hailan_tests::{repo_root, setting};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::Command;

const GW: &str = "gw-test-1";
const DEV: &str = "dev-hr-7";

fn value(slots: Vec<u32>, position: u16) -> SealedValue {
    let mut extras = BTreeMap::new();
    extras.insert(
        "rr_intervals_1024".to_owned(),
        ciborium::Value::Array(vec![ciborium::Value::Integer(840.into())]),
    );
    SealedValue {
        slots,
        blinding: [position as u8 + 1; 32],
        position,
        original_unit: None,
        extras,
    }
}

fn batch(key: &DataKey) -> Envelope {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let mut readings = Vec::new();
    for (i, bpm) in [72u32, 74, 73].into_iter().enumerate() {
        let seq = 1000 + i as u64;
        let t = 1_763_900_000_000 + 1000 * i as i64;
        let header = ReadingHeader {
            gateway_id: GW,
            device_id: DEV,
            data_type: "HEART_RATE",
            seq,
            recorded_at_ms: t,
        };
        let sealed = seal::seal(key, &header, &value(vec![bpm], i as u16), &mut rng);
        readings.push(Reading {
            seq,
            data_type: "HEART_RATE".into(),
            recorded_at_ms: t,
            sealed,
        });
    }
    let bp_header = ReadingHeader {
        gateway_id: GW,
        device_id: DEV,
        data_type: "BLOOD_PRESSURE",
        seq: 1003,
        recorded_at_ms: 1_763_900_100_000,
    };
    let bp = Reading {
        seq: 1003,
        data_type: "BLOOD_PRESSURE".into(),
        recorded_at_ms: 1_763_900_100_000,
        sealed: seal::seal(
            key,
            &bp_header,
            &value(vec![1205, 803, 937, 71], 0),
            &mut rng,
        ),
    };
    Envelope {
        v: 1,
        gateway_id: GW.into(),
        sent_at_ms: 1_763_900_200_000,
        body: Body::Readings(ReadingBatch {
            device_id: DEV.into(),
            groups: vec![
                ProvenGroup {
                    kind: ProofKind::Window,
                    key_id: [0xAB; 32],
                    commitment: [0xCD; 32],
                    proof: Some(vec![0xEF; 128]),
                    no_proof_reason: None,
                    readings,
                },
                ProvenGroup {
                    kind: ProofKind::Reading,
                    key_id: [0xAB; 32],
                    commitment: [0x01; 32],
                    proof: None,
                    no_proof_reason: Some("no proving key".into()),
                    readings: vec![bp],
                },
            ],
        }),
    }
}

fn others() -> Vec<Envelope> {
    vec![
        Envelope {
            v: 1,
            gateway_id: GW.into(),
            sent_at_ms: -5,
            body: Body::Registration(Box::new(Registration {
                device_id: DEV.into(),
                device_type: "HEART_RATE".into(),
                data_types: vec!["HEART_RATE".into()],
                bluetooth_address: "C0:FF:EE:00:00:07".into(),
                name: Some("Strap ü".into()),
                manufacturer: None,
                model: Some("HRM".into()),
                serial: None,
                firmware_version: Some("2.1".into()),
                hardware_version: None,
                device_commitment: [3; 32],
                paired_at_ms: 1_763_800_000_000,
                patient: Some("did:example:bob".into()),
                user_slot_of: Some("ws-f04a1a060000-3d1d".into()),
            })),
        },
        Envelope {
            v: 1,
            gateway_id: GW.into(),
            sent_at_ms: 1,
            body: Body::DeviceState(DeviceState {
                device_id: DEV.into(),
                battery_level: Some(55),
                rssi: Some(-70),
                connected: false,
                firmware_version: None,
                observed_at_ms: 2,
                needs_repair: Some(true),
            }),
        },
    ]
}

fn python() -> Result<String> {
    let py =
        setting("HAILAN_PYTHON").context("HAILAN_PYTHON not set: run `cargo xtask services`")?;
    if !std::path::Path::new(&py).exists() {
        bail!("{py} is missing: run `cargo xtask services`");
    }
    Ok(py)
}

fn run_decoder(files: &[std::path::PathBuf], key: &DataKey) -> Result<(bool, String, String)> {
    let out = Command::new(python()?)
        .arg(repo_root().join("tests/wire/decode_envelope.py"))
        .arg("--key")
        .arg(format!("{}:{}", key.kid(), hex::encode(key.bytes())))
        .args(files)
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn context_decimal(header: &[u8]) -> String {
    hailan_proto::header::context_from_bytes(header)
        .into_bigint()
        .to_string()
}

#[test]
fn python_decoder_from_the_spec_reads_what_rust_writes() -> Result<()> {
    let key = DataKey::new("owner-key-1", [0x42; 32]);
    let dir = tempfile::tempdir()?;
    let mut envelopes = vec![batch(&key)];
    envelopes.extend(others());
    let mut files = Vec::new();
    for (i, e) in envelopes.iter().enumerate() {
        let path = dir.path().join(format!("{i}.cbor"));
        std::fs::write(&path, envelope::encode(e))?;
        files.push(path);
    }
    let (ok, stdout, stderr) = run_decoder(&files, &key)?;
    assert!(ok, "python decoder failed: {stderr}");
    let decoded: Vec<Value> = serde_json::from_str(&stdout)?;
    assert_eq!(decoded.len(), 3);

    // Every field of every envelope, as the spec describes it (bytes as hex).
    for (e, d) in envelopes.iter().zip(&decoded) {
        let expected = match &e.body {
            Body::Registration(_) => "registration",
            Body::Readings(_) => "readings",
            Body::DeviceState(_) => "device_state",
        };
        assert_eq!(d["kind"], expected);
        let env = &d["envelope"];
        assert_eq!(env["v"], 1);
        assert_eq!(env["gateway_id"], e.gateway_id.as_str());
        assert_eq!(env["sent_at_ms"], e.sent_at_ms);
    }
    let reg = &decoded[1]["envelope"]["body"]["registration"];
    assert_eq!(reg["device_commitment"], hex::encode([3u8; 32]));
    assert_eq!(reg["name"], "Strap ü");
    assert_eq!(reg["manufacturer"], Value::Null);
    let state = &decoded[2]["envelope"]["body"]["device_state"];
    assert_eq!(
        (state["battery_level"].as_i64(), state["rssi"].as_i64()),
        (Some(55), Some(-70))
    );
    assert_eq!(state["connected"], false);
    assert_eq!(state["needs_repair"], true);

    // Headers, contexts and plaintexts agree with the Rust side.
    let Body::Readings(b) = &envelopes[0].body else {
        bail!("first envelope is a batch")
    };
    let groups = decoded[0]["groups"].as_array().context("groups")?;
    let raw_groups = &decoded[0]["envelope"]["body"]["readings"]["groups"];
    assert_eq!(raw_groups[0]["kind"], "window");
    assert_eq!(raw_groups[0]["proof"], hex::encode([0xEFu8; 128]));
    assert_eq!(raw_groups[1]["proof"], Value::Null);
    assert_eq!(raw_groups[1]["no_proof_reason"], "no proving key");
    for (g, dg) in b.groups.iter().zip(groups) {
        for (i, (r, dr)) in g
            .readings
            .iter()
            .zip(dg["readings"].as_array().context("readings")?)
            .enumerate()
        {
            let h = r.header(GW, DEV).canonical_bytes();
            assert_eq!(dr["header"], hex::encode(&h));
            assert_eq!(dr["context"], context_decimal(&h));
            let opened = seal::open(&key, &r.header(GW, DEV), &r.sealed)?;
            let py = &dr["opened"];
            let slots: Vec<u32> = serde_json::from_value(py["slots"].clone())?;
            assert_eq!(slots, opened.slots);
            assert_eq!(py["position"], i);
            assert_eq!(py["blinding"], hex::encode(opened.blinding));
            assert_eq!(py["extras"]["rr_intervals_1024"][0], 840);
        }
        if g.kind == ProofKind::Window {
            let w: WindowHeader<'_> = g.window_header(GW, DEV).context("window header")?;
            assert_eq!(dg["window_header"], hex::encode(w.canonical_bytes()));
            assert_eq!(dg["window_context"], context_decimal(&w.canonical_bytes()));
        }
    }
    Ok(())
}

#[test]
fn python_decoder_refuses_what_rust_refuses() -> Result<()> {
    let key = DataKey::new("owner-key-1", [0x42; 32]);
    let dir = tempfile::tempdir()?;
    let mut future = others().remove(1);
    future.v = 2;
    let mut gapped = batch(&key);
    if let Body::Readings(b) = &mut gapped.body {
        b.groups[0].readings[2].seq += 1;
    }
    // WIRE.md §6 "Storable": fields that would not fit their columns.
    let mut long_name = others().remove(0);
    let mut nul_model = others().remove(0);
    if let (Body::Registration(a), Body::Registration(b)) =
        (&mut long_name.body, &mut nul_model.body)
    {
        a.name = Some("ü".repeat(101));
        b.model = Some("HRM\0\0".into());
    }
    let mut too_late = batch(&key);
    if let Body::Readings(b) = &mut too_late.body {
        for r in &mut b.groups[0].readings {
            r.recorded_at_ms = hailan_proto::columns::MAX_TIME_MS + 1;
        }
    }
    let mut long_type = batch(&key);
    if let Body::Readings(b) = &mut long_type.body {
        for r in &mut b.groups[0].readings {
            r.data_type = "A".repeat(51);
        }
    }
    for (name, e) in [
        ("future", future),
        ("gapped", gapped),
        ("long_name", long_name),
        ("nul_model", nul_model),
        ("too_late", too_late),
        ("long_type", long_type),
    ] {
        let bytes = envelope::encode(&e);
        assert!(envelope::decode(&bytes).is_err(), "rust accepted {name}");
        let path = dir.path().join(name);
        std::fs::write(&path, bytes)?;
        let (ok, _, stderr) = run_decoder(&[path], &key)?;
        assert!(!ok, "python accepted {name}");
        assert!(stderr.contains("invalid envelope"), "{stderr}");
    }
    Ok(())
}
