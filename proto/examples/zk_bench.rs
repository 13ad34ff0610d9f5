//! The zk benchmark (not a timed test): one run prints constraints per
//! statement, single-thread prove time per reading (reading and window
//! statements), and verify time per proof one-by-one vs batched at N = 64
//! and N = 256, including deserialisation with subgroup checks.
//!
//! ```text
//! cargo run -p hailan-proto --release --example zk_bench
//! ```

use hailan_proto::data_type::DataType;
use hailan_proto::envelope::{ProofKind, ProvenGroup, Reading, Sealed};
use hailan_proto::zk::keys::constraint_count;
use hailan_proto::zk::{
    DevKeys, DeviceSecret, GroupClaim, Policy, ProvingKey, Verifier, WINDOW_LEN, device_commitment,
    prove_reading, prove_window,
};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use std::time::Instant;

const GW: &str = "gw-bench";
const DEV: &str = "dev-bench";

fn reading(seq: u64, at: i64) -> Reading {
    Reading {
        seq,
        data_type: DataType::HeartRate.as_str().into(),
        recorded_at_ms: at,
        sealed: Sealed {
            kid: "k".into(),
            nonce: [0; 12],
            ciphertext: vec![0; 32],
        },
    }
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    println!("hailan zk benchmark (single thread, BN254 Groth16, arkworks 0.6)");
    for kind in [ProofKind::Reading, ProofKind::Window] {
        println!(
            "constraints {:>8}: {}",
            format!("{kind:?}"),
            constraint_count(kind)?
        );
    }

    let t = Instant::now();
    let rpk = ProvingKey::setup(ProofKind::Reading, &mut rng)?;
    let setup_r = t.elapsed();
    let t = Instant::now();
    let wpk = ProvingKey::setup(ProofKind::Window, &mut rng)?;
    let setup_w = t.elapsed();
    println!(
        "setup: reading {:.0} ms ({} KB pk), window {:.0} ms ({} KB pk); vk {} B",
        ms(setup_r),
        rpk.to_bytes().len() / 1024,
        ms(setup_w),
        wpk.to_bytes().len() / 1024,
        rpk.verifying_key().to_bytes().len()
    );
    let t = Instant::now();
    let _ = ProvingKey::from_bytes(&rpk.to_bytes())?;
    println!(
        "load reading pk from bytes (checked): {:.0} ms",
        ms(t.elapsed())
    );

    let secret = DeviceSecret::generate(&mut rng);
    let d = device_commitment(&secret);

    // Per-reading proofs (also the verification corpus).
    let n_proofs = 256;
    let mut groups = Vec::with_capacity(n_proofs);
    let t = Instant::now();
    for i in 0..n_proofs as u64 {
        let r = reading(i, 1_700_000_000_000 + i as i64 * 1000);
        let p = prove_reading(
            &rpk,
            &secret,
            DataType::HeartRate,
            &[60 + (i % 50) as u32],
            &r.header(GW, DEV),
            &mut rng,
        )?;
        groups.push(ProvenGroup {
            kind: ProofKind::Reading,
            key_id: rpk.id().0,
            commitment: p.commitment,
            proof: Some(p.proof.to_vec()),
            no_proof_reason: None,
            readings: vec![r],
        });
    }
    let per_reading = ms(t.elapsed()) / n_proofs as f64;
    println!("prove reading statement: {per_reading:.1} ms per reading (mean of {n_proofs})");

    // Windows of W readings.
    let windows = 24;
    let t = Instant::now();
    for w in 0..windows as u64 {
        let readings: Vec<Reading> = (0..WINDOW_LEN as u64)
            .map(|i| reading(10_000 + w * 100 + i, 1_700_000_000_000 + i as i64 * 1000))
            .collect();
        let g = ProvenGroup {
            kind: ProofKind::Window,
            key_id: wpk.id().0,
            commitment: [0; 32],
            proof: None,
            no_proof_reason: Some("-".into()),
            readings,
        };
        let header = g.window_header(GW, DEV).ok_or("window header")?;
        let values: Vec<u32> = (0..WINDOW_LEN as u32).map(|i| 60 + i).collect();
        prove_window(
            &wpk,
            &secret,
            DataType::HeartRate,
            &values,
            &header,
            &mut rng,
        )?;
    }
    let per_window = ms(t.elapsed()) / windows as f64;
    println!(
        "prove window statement (W = {WINDOW_LEN}): {per_window:.1} ms per window = {:.2} ms per reading; \
         readings/s/core {:.0}",
        per_window / WINDOW_LEN as f64,
        1000.0 * WINDOW_LEN as f64 / per_window
    );

    let verifier = Verifier::new(
        vec![rpk.verifying_key(), wpk.verifying_key()],
        Policy::from_spec(),
        DevKeys::Refuse,
    )?;
    let claims: Vec<GroupClaim> = groups
        .iter()
        .map(|g| GroupClaim {
            gateway_id: GW,
            device_id: DEV,
            device_commitment: &d,
            group: g,
        })
        .collect();
    let mut os = ChaCha20Rng::seed_from_u64(2);
    for n in [64usize, 256] {
        let set = &claims[..n];
        let rounds = if n == 64 { 8 } else { 3 };
        let t = Instant::now();
        for _ in 0..rounds {
            for c in set {
                verifier.verify(c).map_err(|e| e.to_string())?;
            }
        }
        let one = ms(t.elapsed()) / (rounds * n) as f64;
        let t = Instant::now();
        for _ in 0..rounds {
            let res = verifier.verify_batch(set, &mut os);
            if res.iter().any(Result::is_err) {
                return Err("batch rejected valid proofs".into());
            }
        }
        let batch = ms(t.elapsed()) / (rounds * n) as f64;
        println!(
            "verify N = {n:>3}: one-by-one {one:.3} ms/proof, batch {batch:.3} ms/proof ({:.0} proofs/s/core), ratio {:.1}x",
            1000.0 / batch,
            one / batch
        );
    }
    // Bisection cost: one bad proof among 64.
    let mut bad = groups[..64].to_vec();
    bad[17].commitment[1] ^= 1;
    let bad_claims: Vec<GroupClaim> = bad
        .iter()
        .map(|g| GroupClaim {
            gateway_id: GW,
            device_id: DEV,
            device_commitment: &d,
            group: g,
        })
        .collect();
    let t = Instant::now();
    let (res, checks) = verifier.verify_batch_counted(&bad_claims, &mut os);
    let bad_found: Vec<usize> = res
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_err())
        .map(|(i, _)| i)
        .collect();
    println!(
        "bisection: N = 64 with one bad proof -> bad {:?} in {checks} batch checks, {:.1} ms",
        bad_found,
        ms(t.elapsed())
    );
    Ok(())
}
