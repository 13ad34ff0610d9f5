//! `hailan-gateway selftest`: can this machine prove? One window of
//! synthetic heart-rate readings is proven with the installed window key,
//! checked against the key's own verifying key, and written as a proof
//! bundle (the format `hailan-ingest zk verify` and `zk export` read), so a
//! proof made on one architecture can be verified on another (issue 17: the
//! arm64 build's proofs must verify on the amd64 server).
//!
//! Nothing is published and no state is touched: the device secret and the
//! data key are fresh and dropped at the end.

use crate::keys::read_proving_key;
use anyhow::{Context, Result, bail};
use hailan_proto::data_type::DataType;
use hailan_proto::envelope::ProofKind;
use hailan_proto::group::{Prover, Taken};
use hailan_proto::seal::DataKey;
use hailan_proto::zk::snarkjs::ProofBundle;
use hailan_proto::zk::verify::{DevKeys, GroupClaim, Policy, Verifier};
use hailan_proto::zk::{DeviceSecret, KeyOrigin, WINDOW_LEN, prove};
use rand::RngCore;
use std::path::Path;
use std::time::{Duration, Instant};

/// What one self-test made.
pub struct Selftest {
    /// The window's proof with its public inputs and key id, in the bundle
    /// format `hailan-ingest zk verify` reads; already verified here.
    pub bundle: ProofBundle,
    /// Readings under the window proof.
    pub readings: usize,
    /// Wall time proving (and sealing) the window took; the verification
    /// after it is not included.
    pub prove_time: Duration,
    /// Where the window key came from: a real setup, or a development
    /// (seeded) one that must never serve in production.
    pub origin: KeyOrigin,
}

/// Proves one window of `readings` heart-rate values with `zk_dir/window.pk`
/// and verifies it before returning its bundle.
pub fn run(zk_dir: &Path, readings: usize) -> Result<Selftest> {
    if !(1..=WINDOW_LEN).contains(&readings) {
        bail!("--readings {readings}: a window holds 1 to {WINDOW_LEN} readings");
    }
    let pk = read_proving_key(zk_dir, ProofKind::Window)?;
    let mut rng = rand::rngs::OsRng;
    let secret = DeviceSecret::generate(&mut rng);
    let mut key = [0u8; 32];
    rng.fill_bytes(&mut key);
    let data_key = DataKey::new("selftest", key);
    let prover = Prover {
        pk: &pk,
        secret: &secret,
        data_key: &data_key,
        gateway_id: "selftest",
        device_id: "selftest-heart-rate",
        data_type: DataType::HeartRate,
    };
    let start_ms = crate::pipeline::now_ms();
    let taken: Vec<Taken> = (0..readings)
        .map(|i| Taken::new(start_ms + 1000 * i as i64, vec![60 + (i as u32 % 40)]))
        .collect();
    let started = Instant::now();
    let group = prover.window(1, &taken, &mut rng);
    let prove_time = started.elapsed();
    if let Some(reason) = &group.no_proof_reason {
        bail!("the window could not be proven: {reason}");
    }
    let verifier = Verifier::new(
        vec![pk.verifying_key()],
        Policy::from_spec(),
        DevKeys::Allow,
    )
    .context("building a verifier from the window key")?;
    let device_commitment = prove::device_commitment(&secret);
    let claim = GroupClaim {
        gateway_id: prover.gateway_id,
        device_id: prover.device_id,
        device_commitment: &device_commitment,
        group: &group,
    };
    verifier
        .verify(&claim)
        .context("the proof made here does not verify against its own key")?;
    let bundle = verifier
        .bundle(&claim)
        .context("writing the proof bundle")?;
    Ok(Selftest {
        bundle,
        readings,
        prove_time,
        origin: pk.origin(),
    })
}
