//! Third-party verification end to end: `hailan-ingest zk setup`, a proof
//! made by the proto prover, `hailan-ingest zk export`, then snarkjs 0.7
//! (installed by the project set-up, never assumed) verifies it.

use hailan_proto::data_type::DataType;
use hailan_proto::envelope::{ProofKind, ProvenGroup, Reading, Sealed};
use hailan_proto::zk::{
    DevKeys, DeviceSecret, GroupClaim, Policy, ProofBundle, ProvingKey, Verifier, VerifyingKey,
    device_commitment, prove_reading, prove_window,
};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn snarkjs() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin = root.join(".hailan/tools/node_modules/.bin/snarkjs");
    assert!(
        bin.exists(),
        "snarkjs is missing at {}: run `cargo xtask services` (it runs \
         `npm install --prefix <repo>/.hailan/tools snarkjs@0.7`)",
        bin.display()
    );
    bin
}

fn ingest(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hailan-ingest"))
        .args(args)
        .output()
        .expect("run hailan-ingest")
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn snarkjs_verify(dir: &Path) -> (bool, String) {
    let out = Command::new(snarkjs())
        .current_dir(dir)
        .args(["groth16", "verify", "vk.json", "public.json", "proof.json"])
        .output()
        .expect("run snarkjs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.success() && text.contains("OK") && !text.contains("Invalid"),
        text,
    )
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

#[test]
fn snarkjs_verifies_exported_proofs() {
    let snarkjs_bin = snarkjs();
    assert!(snarkjs_bin.exists());
    let tmp = tempfile::tempdir().expect("tempdir");
    let keys = tmp.path().join("keys");
    let keys_s = keys.to_str().expect("utf-8 path");
    ok(
        &ingest(&["zk", "setup", "--out", keys_s, "--dev-seed", "7"]),
        "zk setup",
    );
    // A second setup into the same directory refuses to overwrite.
    assert!(
        !ingest(&["zk", "setup", "--out", keys_s, "--dev-seed", "7"])
            .status
            .success()
    );

    let load_pk = |name: &str| {
        ProvingKey::from_bytes(&std::fs::read(keys.join(name)).expect("read pk")).expect("pk")
    };
    let load_vk = |name: &str| {
        VerifyingKey::from_bytes(&std::fs::read(keys.join(name)).expect("read vk")).expect("vk")
    };
    let (rpk, wpk) = (load_pk("reading.pk"), load_pk("window.pk"));
    let verifier = Verifier::new(
        vec![load_vk("reading.vk"), load_vk("window.vk")],
        Policy::default(),
        DevKeys::Allow,
    )
    .expect("verifier");
    assert!(
        Verifier::new(
            vec![load_vk("reading.vk")],
            Policy::default(),
            DevKeys::Refuse
        )
        .is_err()
    );

    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let secret = DeviceSecret::generate(&mut rng);
    let d = device_commitment(&secret);

    // A blood-pressure reading (4 slots) and a heart-rate window of 5.
    let r = reading(DataType::BloodPressure, 41, 1_700_000_000_000);
    let p = prove_reading(
        &rpk,
        &secret,
        DataType::BloodPressure,
        &[1200, 800, 933, 72],
        &r.header("gw-1", "cuff-1"),
        &mut rng,
    )
    .expect("prove reading");
    let reading_group = ProvenGroup {
        kind: ProofKind::Reading,
        key_id: rpk.id().0,
        commitment: p.commitment,
        proof: Some(p.proof.to_vec()),
        no_proof_reason: None,
        readings: vec![r],
    };
    let mut window_group = ProvenGroup {
        kind: ProofKind::Window,
        key_id: wpk.id().0,
        commitment: [0; 32],
        proof: None,
        no_proof_reason: None,
        readings: (0..5)
            .map(|i| {
                reading(
                    DataType::HeartRate,
                    100 + i,
                    1_700_000_000_000 + 1000 * i as i64,
                )
            })
            .collect(),
    };
    let header = window_group
        .window_header("gw-1", "cuff-1")
        .expect("window header");
    let wp = prove_window(
        &wpk,
        &secret,
        DataType::HeartRate,
        &[61, 62, 64, 63, 60],
        &header,
        &mut rng,
    )
    .expect("prove window");
    window_group.commitment = wp.commitment;
    window_group.proof = Some(wp.proof.to_vec());

    for (name, group, n_public) in [
        ("reading", &reading_group, 11),
        ("window", &window_group, 6),
    ] {
        let claim = GroupClaim {
            gateway_id: "gw-1",
            device_id: "cuff-1",
            device_commitment: &d,
            group,
        };
        let bundle: ProofBundle = verifier.bundle(&claim).expect("bundle");
        let bundle_path = tmp.path().join(format!("{name}-bundle.json"));
        std::fs::write(
            &bundle_path,
            serde_json::to_vec_pretty(&bundle).expect("json"),
        )
        .expect("write bundle");
        let out_dir = tmp.path().join(format!("{name}-export"));
        ok(
            &ingest(&[
                "zk",
                "export",
                "--bundle",
                bundle_path.to_str().expect("utf-8"),
                "--keys",
                keys_s,
                "--out",
                out_dir.to_str().expect("utf-8"),
            ]),
            "zk export",
        );
        let vk: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out_dir.join("vk.json")).expect("vk.json"))
                .expect("vk json");
        assert_eq!(vk["nPublic"], n_public);
        let (valid, text) = snarkjs_verify(&out_dir);
        assert!(valid, "snarkjs rejected the {name} proof:\n{text}");

        // snarkjs must reject a changed public input.
        let public_path = out_dir.join("public.json");
        let mut public: Vec<String> =
            serde_json::from_slice(&std::fs::read(&public_path).expect("public.json"))
                .expect("public json");
        public[2] = "12345".into();
        std::fs::write(&public_path, serde_json::to_vec(&public).expect("json")).expect("write");
        let (valid, text) = snarkjs_verify(&out_dir);
        assert!(
            !valid,
            "snarkjs accepted a changed {name} public input:\n{text}"
        );

        // The export pins the public-input count.
        let mut short = bundle.clone();
        short.public_inputs.pop();
        let short_path = tmp.path().join(format!("{name}-short.json"));
        std::fs::write(&short_path, serde_json::to_vec(&short).expect("json")).expect("write");
        let out = ingest(&[
            "zk",
            "export",
            "--bundle",
            short_path.to_str().expect("utf-8"),
            "--keys",
            keys_s,
            "--out",
            tmp.path().join("nope").to_str().expect("utf-8"),
        ]);
        assert!(
            !out.status.success(),
            "export accepted a bundle with a missing public input"
        );
    }
}
