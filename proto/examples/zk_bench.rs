//! The zk benchmark (not a timed test): one run prints constraints per
//! statement, single-thread prove time per reading (reading and window
//! statements), and verify time per proof one-by-one vs batched at N = 64
//! and N = 256, including deserialisation with subgroup checks.
//!
//! ```text
//! cargo run -p hailan-proto --release --example zk_bench
//! ```

use ark_serialize::{CanonicalDeserialize, Compress, Validate};
use hailan_proto::data_type::DataType;
use hailan_proto::envelope::{ProofKind, ProvenGroup, Reading, Sealed};
use hailan_proto::zk::keys::constraint_count;
use hailan_proto::zk::{
    BatchWeights, DevKeys, DeviceSecret, GroupClaim, Policy, ProvingKey, Verifier, WINDOW_LEN,
    device_commitment, prove_reading, prove_window,
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

/// On-CPU time of this thread in ns (Linux `/proc/thread-self/schedstat`):
/// the figure that stays honest when other processes share the cores.
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Runs `f`, returning its result, wall ms and thread-CPU ms.
fn timed<T>(f: impl FnOnce() -> T) -> (T, f64, f64) {
    let (t, c) = (Instant::now(), cpu_ns());
    let out = f();
    (out, ms(t.elapsed()), (cpu_ns() - c) as f64 / 1e6)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    println!("hailan zk benchmark: single thread, BN254 Groth16, arkworks 0.6");
    println!(
        "times: thread CPU time (wall clock in brackets; they differ when other processes share the cores)"
    );
    for kind in [ProofKind::Reading, ProofKind::Window] {
        println!(
            "constraints {:>8}: {}",
            format!("{kind:?}"),
            constraint_count(kind)?
        );
    }

    let (rpk, _, setup_r) = timed(|| ProvingKey::setup(ProofKind::Reading, &mut rng));
    let rpk = rpk?;
    let (wpk, _, setup_w) = timed(|| ProvingKey::setup(ProofKind::Window, &mut rng));
    let wpk = wpk?;
    println!(
        "setup: reading {setup_r:.0} ms ({} KB pk), window {setup_w:.0} ms ({} KB pk); vk {} B, proof 128 B",
        rpk.to_bytes().len() / 1024,
        wpk.to_bytes().len() / 1024,
        rpk.verifying_key().to_bytes().len()
    );
    let pk_bytes = rpk.to_bytes();
    let (_, _, load) = timed(|| ProvingKey::from_bytes(&pk_bytes));
    println!("load reading pk from bytes (with subgroup checks): {load:.0} ms");

    let secret = DeviceSecret::generate(&mut rng);
    let d = device_commitment(&secret);

    // Per-reading proofs (also the verification corpus).
    let n_proofs = 256;
    let (groups, wall, cpu) = timed(|| -> Result<Vec<ProvenGroup>, Box<dyn std::error::Error>> {
        let mut groups = Vec::with_capacity(n_proofs);
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
        Ok(groups)
    });
    let groups = groups?;
    let n = n_proofs as f64;
    println!(
        "prove reading statement: {:.1} ms per reading [{:.1}] (mean of {n_proofs})",
        cpu / n,
        wall / n
    );

    // Windows of W readings.
    let windows = 32;
    let (res, wall, cpu) = timed(|| -> Result<(), Box<dyn std::error::Error>> {
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
        Ok(())
    });
    res?;
    let (per_window, per_window_wall) = (cpu / windows as f64, wall / windows as f64);
    println!(
        "prove window statement (W = {WINDOW_LEN}): {per_window:.1} ms per window [{per_window_wall:.1}] = {:.2} ms per reading [{:.2}]; {:.0} heart-rate straps at 1 Hz per core",
        per_window / WINDOW_LEN as f64,
        per_window_wall / WINDOW_LEN as f64,
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

    // Deserialisation alone (compressed, curve + subgroup checks).
    let (_, _, de) = timed(|| {
        for g in &groups {
            let bytes = g.proof.as_deref().unwrap_or_default();
            let p = ark_groth16::Proof::<ark_bn254::Bn254>::deserialize_with_mode(
                bytes,
                Compress::Yes,
                Validate::Yes,
            );
            assert!(p.is_ok());
        }
    });
    println!(
        "deserialise one proof with subgroup checks: {:.3} ms",
        de / n
    );

    let mut os = ChaCha20Rng::seed_from_u64(2);
    for n in [64usize, 256] {
        let set = &claims[..n];
        let rounds = if n == 64 { 8 } else { 3 };
        let total = (rounds * n) as f64;
        let (res, wall1, one) = timed(|| -> Result<(), String> {
            for _ in 0..rounds {
                for c in set {
                    verifier.verify(c).map_err(|e| e.to_string())?;
                }
            }
            Ok(())
        });
        res?;
        let (res, wallb, batch) = timed(|| {
            (0..rounds).all(|_| {
                verifier
                    .verify_batch(set, &mut os)
                    .iter()
                    .all(Result::is_ok)
            })
        });
        if !res {
            return Err("batch rejected valid proofs".into());
        }
        println!(
            "verify N = {n:>3}: one-by-one {:.3} ms/proof [{:.3}], batch {:.3} ms/proof [{:.3}] = {:.0} proofs/s/core, ratio {:.1}x",
            one / total,
            wall1 / total,
            batch / total,
            wallb / total,
            1000.0 * total / batch,
            one / batch
        );
    }
    {
        let v64 = verifier.clone().with_batch_weights(BatchWeights::Bits64);
        let set = &claims[..256];
        let rounds = 3;
        let (ok, wall, cpu) =
            timed(|| (0..rounds).all(|_| v64.verify_batch(set, &mut os).iter().all(Result::is_ok)));
        if !ok {
            return Err("batch rejected valid proofs".into());
        }
        let total = (rounds * 256) as f64;
        println!(
            "verify N = 256, 64-bit batch weights (soundness 2^-64 per batch): {:.3} ms/proof [{:.3}] = {:.0} proofs/s/core",
            cpu / total,
            wall / total,
            1000.0 * total / cpu
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
    let ((res, checks), _, cpu) = timed(|| verifier.verify_batch_counted(&bad_claims, &mut os));
    let bad_found: Vec<usize> = res
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_err())
        .map(|(i, _)| i)
        .collect();
    println!(
        "bisection: N = 64 with one bad proof -> bad {bad_found:?} in {checks} batch checks, {cpu:.1} ms"
    );
    Ok(())
}
