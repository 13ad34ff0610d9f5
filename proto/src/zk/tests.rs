//! Unit tests of the zk module. One seeded dev setup per test binary.

use super::circuit::{ReadingCircuit, WindowCircuit};
use super::keys::{constraint_count, public_input_count};
use super::prove::prove_circuit;
use super::snarkjs::SnarkjsExport;
use super::*;
use crate::data_type::{DataType, MAX_SLOTS};
use crate::envelope::{ProofKind, ProvenGroup, Reading, Sealed};
use ark_bn254::{Bn254, Fr};
use ark_ff::{One, Zero};
use ark_groth16::{Groth16, Proof};
use ark_relations::gr1cs::{ConstraintSynthesizer, ConstraintSystem};
use ark_serialize::{CanonicalDeserialize, CanonicalSerialize};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use std::sync::OnceLock;

const GW: &str = "gw-1";
const DEV: &str = "dev-1";

struct Fx {
    reading: ProvingKey,
    window: ProvingKey,
    verifier: Verifier,
    secret: DeviceSecret,
    d: [u8; 32],
}

fn fx() -> &'static Fx {
    static FX: OnceLock<Fx> = OnceLock::new();
    FX.get_or_init(|| {
        let reading = ProvingKey::dev_setup(ProofKind::Reading, 1).expect("reading setup");
        let window = ProvingKey::dev_setup(ProofKind::Window, 1).expect("window setup");
        let verifier = Verifier::new(
            vec![reading.verifying_key(), window.verifying_key()],
            Policy::from_spec(),
            DevKeys::Allow,
        )
        .expect("verifier");
        let secret = DeviceSecret::generate(&mut rng(99));
        let d = device_commitment(&secret);
        Fx {
            reading,
            window,
            verifier,
            secret,
            d,
        }
    })
}

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

fn sealed() -> Sealed {
    Sealed {
        kid: "k1".into(),
        nonce: [0; 12],
        ciphertext: vec![0; 32],
    }
}

fn reading(data_type: DataType, seq: u64, at: i64) -> Reading {
    Reading {
        seq,
        data_type: data_type.as_str().into(),
        recorded_at_ms: at,
        sealed: sealed(),
    }
}

fn mid_slots(data_type: DataType) -> Vec<u32> {
    data_type
        .spec()
        .slots
        .iter()
        .map(|s| s.lo + (s.hi - s.lo) / 3)
        .collect()
}

fn group(
    kind: ProofKind,
    key: &ProvingKey,
    p: &ReadingProof,
    readings: Vec<Reading>,
) -> ProvenGroup {
    ProvenGroup {
        kind,
        key_id: key.id().0,
        commitment: p.commitment,
        proof: Some(p.proof.to_vec()),
        no_proof_reason: None,
        readings,
    }
}

fn proven_reading(
    data_type: DataType,
    slots: &[u32],
    seq: u64,
    seed: u64,
) -> (ProvenGroup, ReadingProof) {
    let f = fx();
    let r = reading(data_type, seq, 1_700_000_000_000 + seq as i64 * 1000);
    let p = prove_reading(
        &f.reading,
        &f.secret,
        data_type,
        slots,
        &r.header(GW, DEV),
        &mut rng(seed),
    )
    .expect("prove");
    (group(ProofKind::Reading, &f.reading, &p, vec![r]), p)
}

fn window_readings(first_seq: u64, n: usize) -> Vec<Reading> {
    (0..n)
        .map(|i| {
            reading(
                DataType::HeartRate,
                first_seq + i as u64,
                1_700_000_000_000 + i as i64 * 1000 + (i as i64 % 3),
            )
        })
        .collect()
}

fn proven_window(values: &[u32], first_seq: u64, seed: u64) -> (ProvenGroup, ReadingProof) {
    let f = fx();
    let readings = window_readings(first_seq, values.len());
    let mut g = group(
        ProofKind::Window,
        &f.window,
        &ReadingProof {
            commitment: [0; 32],
            blinding: [0; 32],
            proof: [0; 128],
        },
        readings,
    );
    let header = g.window_header(GW, DEV).expect("header");
    let p = prove_window(
        &f.window,
        &f.secret,
        DataType::HeartRate,
        values,
        &header,
        &mut rng(seed),
    )
    .expect("prove");
    g.commitment = p.commitment;
    g.proof = Some(p.proof.to_vec());
    (g, p)
}

fn claim(g: &ProvenGroup) -> GroupClaim<'_> {
    GroupClaim {
        gateway_id: GW,
        device_id: DEV,
        device_commitment: &fx().d,
        group: g,
    }
}

fn hr_values(n: usize) -> Vec<u32> {
    (0..n).map(|i| 60 + (i as u32 * 7) % 40).collect()
}

#[test]
fn constraint_counts_fit_their_domains() {
    let reading = constraint_count(ProofKind::Reading).expect("count");
    let window = constraint_count(ProofKind::Window).expect("count");
    eprintln!("constraints: reading {reading}, window {window}");
    // Domain = next power of two of constraints + instance variables.
    assert!(
        reading + public_input_count(ProofKind::Reading) < 1024,
        "{reading}"
    );
    assert!(
        window + public_input_count(ProofKind::Window) < 2048,
        "{window}"
    );
}

#[test]
fn completeness_every_data_type() {
    let f = fx();
    for (i, t) in DataType::ALL.into_iter().enumerate() {
        for slots in [
            mid_slots(t),
            t.spec().slots.iter().map(|s| s.lo).collect(),
            t.spec().slots.iter().map(|s| s.hi).collect::<Vec<_>>(),
        ] {
            let (g, p) = proven_reading(t, &slots, 10 + i as u64, i as u64);
            assert_eq!(f.verifier.verify(&claim(&g)), Ok(()), "{t}");
            let header = g.readings[0].header(GW, DEV);
            assert_eq!(
                reading_commitment(t, &slots, &p.blinding, &header).expect("C"),
                p.commitment
            );
        }
    }
}

#[test]
fn window_completeness_full_and_early_closed() {
    let f = fx();
    for n in [WINDOW_LEN, 5, 1] {
        let values = hr_values(n);
        let (g, p) = proven_window(&values, 100, n as u64);
        assert_eq!(f.verifier.verify(&claim(&g)), Ok(()), "n = {n}");
        let header = g.window_header(GW, DEV).expect("header");
        assert_eq!(
            window_commitment(&values, &p.blinding, &header).expect("C"),
            p.commitment
        );
    }
}

#[test]
fn prover_refuses_bad_input() {
    let f = fx();
    let r = reading(DataType::HeartRate, 1, 0);
    let h = r.header(GW, DEV);
    let mut g = rng(1);
    assert!(matches!(
        prove_reading(
            &f.reading,
            &f.secret,
            DataType::HeartRate,
            &[301],
            &h,
            &mut g
        ),
        Err(ZkError::OutOfBounds { .. })
    ));
    assert!(matches!(
        prove_reading(
            &f.reading,
            &f.secret,
            DataType::HeartRate,
            &[60, 70],
            &h,
            &mut g
        ),
        Err(ZkError::SlotCount { .. })
    ));
    assert!(matches!(
        prove_reading(
            &f.reading,
            &f.secret,
            DataType::Spo2,
            &[900, 70],
            &h,
            &mut g
        ),
        Err(ZkError::HeaderMismatch { .. })
    ));
    assert!(matches!(
        prove_reading(&f.window, &f.secret, DataType::HeartRate, &[60], &h, &mut g),
        Err(ZkError::WrongKey { .. })
    ));
    let readings = window_readings(1, WINDOW_LEN + 1);
    let wg = ProvenGroup {
        kind: ProofKind::Window,
        key_id: [0; 32],
        commitment: [0; 32],
        proof: None,
        no_proof_reason: Some("x".into()),
        readings,
    };
    let wh = wg.window_header(GW, DEV).expect("header");
    assert!(matches!(
        prove_window(
            &f.window,
            &f.secret,
            DataType::HeartRate,
            &hr_values(WINDOW_LEN + 1),
            &wh,
            &mut g
        ),
        Err(ZkError::WindowSize { .. })
    ));
    assert!(DeviceSecret::from_bytes([0xff; 32]).is_err());
}

fn reading_circuit(
    values: [u32; MAX_SLOTS],
    lo: [u32; MAX_SLOTS],
    hi: [u32; MAX_SLOTS],
) -> ReadingCircuit {
    let f = fx();
    let secret = Fr::from_le_bytes_mod_order_checked(&f.secret.to_bytes());
    let blinding = Fr::from(12345u64);
    let context = Fr::from(777u64);
    let packed = super::circuit::pack(&values, READING_RANGE_BITS);
    let commitment =
        super::poseidon::hash(&[super::poseidon::tag_reading(), packed, blinding, context]);
    ReadingCircuit {
        device_commitment: fr_from_bytes(&f.d).expect("D"),
        commitment,
        context,
        lo,
        hi,
        secret,
        values,
        blinding,
    }
}

trait FromChecked {
    fn from_le_bytes_mod_order_checked(b: &[u8; 32]) -> Fr;
}
impl FromChecked for Fr {
    fn from_le_bytes_mod_order_checked(b: &[u8; 32]) -> Fr {
        fr_from_bytes(b).expect("canonical")
    }
}

fn satisfied<C: ConstraintSynthesizer<Fr>>(c: C) -> bool {
    let cs = ConstraintSystem::<Fr>::new_ref();
    c.generate_constraints(cs.clone()).expect("synthesis");
    cs.is_satisfied().expect("satisfaction")
}

fn verifies(kind: ProofKind, proof: &[u8; 128], inputs: &[Fr]) -> bool {
    let f = fx();
    let key = match kind {
        ProofKind::Reading => &f.reading,
        ProofKind::Window => &f.window,
    };
    let vk = key.verifying_key();
    let proof = Proof::<Bn254>::deserialize_compressed(&proof[..]).expect("proof");
    Groth16::<Bn254>::verify_proof(&vk.pvk, &proof, inputs).expect("verify")
}

#[test]
fn out_of_range_is_unsatisfied_and_a_forced_proof_fails() {
    let f = fx();
    let lo = [20, 0, 0, 0];
    let hi = [300, 0, 0, 0];
    assert!(satisfied(reading_circuit([20, 0, 0, 0], lo, hi)));
    assert!(satisfied(reading_circuit([300, 0, 0, 0], lo, hi)));
    for bad in [
        [19, 0, 0, 0],
        [301, 0, 0, 0],
        [60, 1, 0, 0],
        [u32::MAX, 0, 0, 0],
    ] {
        let c = reading_circuit(bad, lo, hi);
        assert!(!satisfied(c.clone()), "{bad:?}");
        let inputs = c.public_inputs();
        let proof = prove_circuit(&f.reading, c, &mut rng(3)).expect("forced proof");
        assert!(!verifies(ProofKind::Reading, &proof, &inputs), "{bad:?}");
    }
    // A window with one value out of range, and one with non-zero padding.
    let context = Fr::from(5u64);
    let mk = |values: [u32; WINDOW_LEN], count: u32| {
        let blinding = Fr::from(9u64);
        let packed = super::circuit::pack(&values, WINDOW_VALUE_BITS);
        WindowCircuit {
            device_commitment: fr_from_bytes(&f.d).expect("D"),
            commitment: super::poseidon::hash(&[
                super::poseidon::tag_window(),
                packed,
                blinding,
                context,
            ]),
            context,
            count,
            lo: 20,
            hi: 300,
            secret: fr_from_bytes(&f.secret.to_bytes()).expect("s"),
            values,
            blinding,
        }
    };
    let mut ok = [0u32; WINDOW_LEN];
    ok[..4].copy_from_slice(&[60, 61, 62, 63]);
    assert!(satisfied(mk(ok, 4)));
    let mut high = ok;
    high[2] = 301;
    let mut padded = ok;
    padded[7] = 60;
    for (values, count) in [(high, 4), (padded, 4), (ok, 3)] {
        let c = mk(values, count);
        assert!(!satisfied(c.clone()));
        let inputs = c.public_inputs();
        let proof = prove_circuit(&f.window, c, &mut rng(4)).expect("forced proof");
        assert!(!verifies(ProofKind::Window, &proof, &inputs));
    }
}

#[test]
fn wrong_device_secret_fails() {
    let f = fx();
    let other = DeviceSecret::generate(&mut rng(1234));
    let r = reading(DataType::BodyTemperature, 3, 1000);
    let p = prove_reading(
        &f.reading,
        &other,
        DataType::BodyTemperature,
        &[3700],
        &r.header(GW, DEV),
        &mut rng(5),
    )
    .expect("prove");
    let g = group(ProofKind::Reading, &f.reading, &p, vec![r]);
    // The gateway's claim carries the device's pinned D, not the other secret's.
    assert_eq!(f.verifier.verify(&claim(&g)), Err(Reject::InvalidProof));
}

#[test]
fn changing_each_public_input_fails() {
    let (g, p) = proven_reading(
        DataType::BloodPressure,
        &mid_slots(DataType::BloodPressure),
        42,
        7,
    );
    let inputs = fx().verifier.public_inputs(&claim(&g)).expect("inputs");
    assert_eq!(inputs.len(), public_input_count(ProofKind::Reading));
    assert!(verifies(ProofKind::Reading, &p.proof, &inputs));
    for i in 0..inputs.len() {
        let mut changed = inputs.clone();
        changed[i] += Fr::one();
        assert!(
            !verifies(ProofKind::Reading, &p.proof, &changed),
            "reading input {i}"
        );
    }
    let (wg, wp) = proven_window(&hr_values(6), 500, 8);
    let inputs = fx().verifier.public_inputs(&claim(&wg)).expect("inputs");
    assert_eq!(inputs.len(), public_input_count(ProofKind::Window));
    assert!(verifies(ProofKind::Window, &wp.proof, &inputs));
    for i in 0..inputs.len() {
        let mut changed = inputs.clone();
        changed[i] += Fr::one();
        assert!(
            !verifies(ProofKind::Window, &wp.proof, &changed),
            "window input {i}"
        );
    }
}

#[test]
fn claim_changes_fail() {
    let f = fx();
    let (g, _) = proven_reading(DataType::Glucose, &[1000], 9, 11);
    assert_eq!(f.verifier.verify(&claim(&g)), Ok(()));
    // Another gateway, device or device commitment.
    let other_d = device_commitment(&DeviceSecret::generate(&mut rng(77)));
    for c in [
        GroupClaim {
            gateway_id: "gw-2",
            ..claim(&g)
        },
        GroupClaim {
            device_id: "dev-2",
            ..claim(&g)
        },
        GroupClaim {
            device_commitment: &other_d,
            ..claim(&g)
        },
    ] {
        assert_eq!(f.verifier.verify(&c), Err(Reject::InvalidProof));
    }
    // Every header field and the commitment.
    let mut moved = Vec::new();
    let mut m = g.clone();
    m.readings[0].seq += 1;
    moved.push(m);
    let mut m = g.clone();
    m.readings[0].recorded_at_ms += 1;
    moved.push(m);
    let mut m = g.clone();
    m.commitment[0] ^= 1;
    moved.push(m);
    for m in &moved {
        assert_eq!(f.verifier.verify(&claim(m)), Err(Reject::InvalidProof));
    }
    // A proof moved to another reading's header.
    let (g2, _) = proven_reading(DataType::Glucose, &[1000], 10, 12);
    let mut swapped = g2.clone();
    swapped.proof = g.proof.clone();
    assert_eq!(
        f.verifier.verify(&claim(&swapped)),
        Err(Reject::InvalidProof)
    );
    // Another data type with the same slot count (temperature) and its bounds.
    let mut retyped = g.clone();
    retyped.readings[0].data_type = "BODY_TEMPERATURE".into();
    assert_eq!(
        f.verifier.verify(&claim(&retyped)),
        Err(Reject::InvalidProof)
    );
    // A policy other than the proven bounds.
    let strict = Verifier::new(
        vec![f.reading.verifying_key(), f.window.verifying_key()],
        Policy::from_spec()
            .with_bounds(DataType::Glucose, vec![(200, 5000)])
            .expect("policy"),
        DevKeys::Allow,
    )
    .expect("verifier");
    assert_eq!(strict.verify(&claim(&g)), Err(Reject::InvalidProof));
}

#[test]
fn window_reorder_move_replay_fail() {
    let f = fx();
    let values = hr_values(8);
    let (g, p) = proven_window(&values, 200, 21);
    assert_eq!(f.verifier.verify(&claim(&g)), Ok(()));

    // Reorder: swapping two readings breaks consecutive seqs…
    let mut r = g.clone();
    r.readings.swap(2, 3);
    assert!(matches!(
        f.verifier.verify(&claim(&r)),
        Err(Reject::Shape(_))
    ));
    // …swapping their times (seqs kept) changes the offsets in the context…
    let mut r = g.clone();
    let (t2, t3) = (r.readings[2].recorded_at_ms, r.readings[3].recorded_at_ms);
    r.readings[2].recorded_at_ms = t3;
    r.readings[3].recorded_at_ms = t2;
    assert_eq!(f.verifier.verify(&claim(&r)), Err(Reject::InvalidProof));
    // …and swapping the values (the clinician's opening) changes C.
    let header = g.window_header(GW, DEV).expect("header");
    let mut swapped = values.clone();
    swapped.swap(2, 3);
    assert_ne!(
        window_commitment(&swapped, &p.blinding, &header).expect("C"),
        p.commitment
    );

    // Move: the same proof under another window (later seqs, other device).
    let mut m = g.clone();
    for r in &mut m.readings {
        r.seq += values.len() as u64;
    }
    assert_eq!(f.verifier.verify(&claim(&m)), Err(Reject::InvalidProof));
    let other_gw = GroupClaim {
        gateway_id: "gw-2",
        ..claim(&g)
    };
    assert_eq!(f.verifier.verify(&other_gw), Err(Reject::InvalidProof));
    let other_dev = GroupClaim {
        device_id: "dev-2",
        ..claim(&g)
    };
    assert_eq!(f.verifier.verify(&other_dev), Err(Reject::InvalidProof));
    // Dropping or adding a reading changes n and the context.
    let mut short = g.clone();
    short.readings.pop();
    assert_eq!(f.verifier.verify(&claim(&short)), Err(Reject::InvalidProof));
    let mut long = g.clone();
    let mut extra = long.readings[7].clone();
    extra.seq += 1;
    extra.recorded_at_ms += 1000;
    long.readings.push(extra);
    assert_eq!(f.verifier.verify(&claim(&long)), Err(Reject::InvalidProof));
    // Replay later in time: every time shifted by one window.
    let mut later = g.clone();
    for r in &mut later.readings {
        r.seq += 100;
        r.recorded_at_ms += 60_000;
    }
    assert_eq!(f.verifier.verify(&claim(&later)), Err(Reject::InvalidProof));
    // A reading proof's key cannot carry a window.
    let mut kind = g.clone();
    kind.key_id = f.reading.id().0;
    assert!(matches!(
        f.verifier.verify(&claim(&kind)),
        Err(Reject::KindMismatch { .. })
    ));
    // An identical replay is the same statement and verifies: ingest drops it
    // by its (device, seq) unique key, not here and never by proof hash.
    assert_eq!(f.verifier.verify(&claim(&g.clone())), Ok(()));
}

#[test]
fn rerandomised_proof_still_verifies() {
    let f = fx();
    let (g, p) = proven_reading(DataType::BodyWeight, &[72_500], 5, 31);
    let proof = Proof::<Bn254>::deserialize_compressed(&p.proof[..]).expect("proof");
    let vk = f.reading.verifying_key();
    let again = Groth16::<Bn254>::rerandomize_proof(vk.ark(), &proof, &mut rng(32));
    let mut bytes = Vec::new();
    again.serialize_compressed(&mut bytes).expect("serialise");
    assert_ne!(bytes, p.proof.to_vec());
    let mut g2 = g.clone();
    g2.proof = Some(bytes);
    assert_eq!(f.verifier.verify(&claim(&g2)), Ok(()));
}

fn corrupt(g: &mut ProvenGroup) {
    // A valid proof of another statement: well-formed bytes, wrong statement.
    let (other, _) = proven_reading(DataType::HeartRate, &[61], 9999, 4242);
    if g.kind == ProofKind::Reading {
        g.proof = other.proof;
    } else {
        g.commitment[3] ^= 0x10;
    }
}

#[test]
fn batch_with_bad_proofs_bisects_to_exactly_them() {
    let f = fx();
    let mut groups = Vec::new();
    for i in 0..6u64 {
        groups.push(proven_reading(DataType::HeartRate, &[60 + i as u32], 1000 + i, 100 + i).0);
    }
    for i in 0..3u64 {
        groups.push(proven_window(&hr_values(3 + i as usize), 2000 + 20 * i, 200 + i).0);
    }
    let claims: Vec<_> = groups.iter().map(claim).collect();
    let (ok, checks) = f.verifier.verify_batch_counted(&claims, &mut rng(1));
    assert!(ok.iter().all(Result::is_ok), "{ok:?}");
    assert_eq!(checks, 1);

    for bad in [vec![4usize], vec![1, 7]] {
        let mut gs = groups.clone();
        for b in &bad {
            corrupt(&mut gs[*b]);
        }
        let claims: Vec<_> = gs.iter().map(claim).collect();
        let v64 = f.verifier.clone().with_batch_weights(BatchWeights::Bits64);
        for v in [&f.verifier, &v64] {
            let (res, checks) = v.verify_batch_counted(&claims, &mut rng(2));
            for (i, r) in res.iter().enumerate() {
                if bad.contains(&i) {
                    assert_eq!(r, &Err(Reject::InvalidProof), "{i}");
                } else {
                    assert_eq!(r, &Ok(()), "{i}");
                }
            }
            assert!(checks > 1 && checks < 2 * groups.len(), "{checks}");
        }
    }
}

#[test]
fn batch_rejects_malformed_groups_before_pairing() {
    let f = fx();
    let (good, _) = proven_reading(DataType::HeartRate, &[70], 1, 1);
    let mut short = good.clone();
    short.proof = Some(vec![0; 127]);
    let mut garbage = good.clone();
    garbage.proof = Some(vec![0xAB; 128]);
    let mut unknown = good.clone();
    unknown.key_id = [7; 32];
    let mut none = good.clone();
    none.proof = None;
    none.no_proof_reason = Some("sensor error".into());
    let mut bad_c = good.clone();
    bad_c.commitment = [0xff; 32];
    let mut unknown_type = good.clone();
    unknown_type.readings[0].data_type = "RESPIRATORY_RATE".into();
    let groups = [good, short, garbage, unknown, none, bad_c, unknown_type];
    let claims: Vec<_> = groups.iter().map(claim).collect();
    let res = f.verifier.verify_batch(&claims, &mut rng(3));
    let codes: Vec<&str> = res
        .iter()
        .map(|r| r.as_ref().map_or_else(Reject::code, |_| "ok"))
        .collect();
    assert_eq!(
        codes,
        [
            "ok",
            "bad_proof_length",
            "malformed_proof",
            "unknown_key",
            "no_proof",
            "malformed_commitment",
            "unknown_data_type"
        ]
    );
}

#[test]
fn keys_round_trip_and_dev_keys_are_marked() {
    let f = fx();
    let pk_bytes = f.reading.to_bytes();
    let pk = ProvingKey::from_bytes(&pk_bytes).expect("pk");
    assert_eq!(pk.id(), f.reading.id());
    assert_eq!(pk.origin(), KeyOrigin::Dev { seed: 1 });
    let vk = VerifyingKey::from_bytes(&f.window.verifying_key().to_bytes()).expect("vk");
    assert_eq!(vk.id(), f.window.id());
    assert_eq!(vk.kind(), ProofKind::Window);
    assert!(VerifyingKey::from_bytes(&pk_bytes).is_err());
    let mut truncated = f.window.verifying_key().to_bytes();
    truncated.pop();
    assert!(VerifyingKey::from_bytes(&truncated).is_err());
    // Production configuration refuses dev keys.
    assert!(matches!(
        Verifier::new(vec![vk.clone()], Policy::default(), DevKeys::Refuse),
        Err(ZkError::DevKeyRefused(1))
    ));
    assert!(matches!(
        Verifier::new(vec![vk.clone(), vk], Policy::default(), DevKeys::Allow),
        Err(ZkError::DuplicateKey(_))
    ));
    // A key from a CSPRNG is not a dev key, and has another id.
    let fresh = ProvingKey::setup(ProofKind::Reading, &mut rng(5)).expect("setup");
    assert_eq!(fresh.origin(), KeyOrigin::Setup);
    assert_ne!(fresh.id(), f.reading.id());
    assert!(
        Verifier::new(
            vec![fresh.verifying_key()],
            Policy::default(),
            DevKeys::Refuse
        )
        .is_ok()
    );
}

#[test]
fn snarkjs_export_pins_the_input_count() {
    let f = fx();
    let (g, _) = proven_reading(DataType::Spo2, &[975, 64], 3, 3);
    let bundle = f.verifier.bundle(&claim(&g)).expect("bundle");
    let mut none = g.clone();
    none.proof = None;
    none.no_proof_reason = Some("battery low".into());
    assert_eq!(
        f.verifier.bundle(&claim(&none)),
        Err(Reject::NoProof("battery low".into()))
    );
    let vk = f.reading.verifying_key();
    let export = SnarkjsExport::new(&vk, &bundle).expect("export");
    assert_eq!(export.vk.n_public, public_input_count(ProofKind::Reading));
    assert_eq!(export.public.len(), export.vk.n_public);
    assert_eq!(export.vk.ic.len(), export.vk.n_public + 1);
    let mut fewer = bundle.clone();
    fewer.public_inputs.pop();
    assert!(SnarkjsExport::new(&vk, &fewer).is_err());
    let mut wrong = bundle.clone();
    wrong.public_inputs[0] = "1".into();
    assert!(SnarkjsExport::new(&vk, &wrong).is_err());
    let mut noncanonical = bundle;
    noncanonical.public_inputs[3] = format!("0{}", noncanonical.public_inputs[3]);
    assert!(SnarkjsExport::new(&vk, &noncanonical).is_err());
    assert!(SnarkjsExport::new(&f.window.verifying_key(), &fewer).is_err());
    let _ = Fr::zero();
}

/// Counts spans and events: arkworks' gadgets must not reach the caller's
/// tracing subscriber while we synthesise (see `zk::quiet`).
struct Counting(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl tracing::Subscriber for Counting {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let n = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::span::Id::from_u64(n as u64 + 1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn synthesis_stays_out_of_the_callers_tracing() {
    let f = fx();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tracing::subscriber::with_default(Counting(seen.clone()), || {
        let r = reading(DataType::HeartRate, 77, 0);
        prove_reading(
            &f.reading,
            &f.secret,
            DataType::HeartRate,
            &[70],
            &r.header(GW, DEV),
            &mut rng(77),
        )
        .expect("prove");
        let _ = constraint_count(ProofKind::Window).expect("count");
    });
    assert_eq!(seen.load(std::sync::atomic::Ordering::Relaxed), 0);
}
