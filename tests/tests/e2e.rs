//! The whole system as one: simulated devices (fake BlueZ) → hailan-gateway
//! (btleplug, proofs, outbox) → Mosquitto → hailan-ingest (batch
//! verification) → PostgreSQL, compared with the simulator's ground truth.

use anyhow::{Context, Result};
use hailan_tests::gateway::*;
use hailan_tests::{DevZk, IngestProcess, TestDb, count_readings, enrol, eventually};
use std::collections::HashMap;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_emitted_value_is_stored_verified_once_with_device_state() -> Result<()> {
    let gw_id = "gw-e2e-6";
    let db = TestDb::create().await?;
    let zk = DevZk::new()?;
    let logs = tempfile::tempdir()?;
    enrol(&db.pool, gw_id).await?;
    let ingest_bin = workspace_binary("hailan-ingest")?;
    let _ingest = IngestProcess::start(&ingest_bin, &db, &zk, &[gw_id], logs.path())?;
    let truth_path = logs.path().join("truth.jsonl");
    let broker = Broker::shared();
    let (mut sim, rig, devices) = sim_and_pair(
        "hr=2,bp=1,spo2=1,temp=1,glucose=1,scale=1",
        &truth_path,
        gw_id,
        &broker,
        &zk,
        "[pipeline]\nwindow_size = 4\nwindow_max_ms = 1500\n",
        &[],
    )?;
    let (collector, mut gw) =
        start_all_connected(&rig, &broker, &devices, Duration::from_secs(60)).await?;
    // One out-of-range value: the gateway sends it without proof and the
    // reason; ingest stores it unverified (never shown to a clinician).
    sim.sim.command("fault out-of-range=temp0")?;
    for name in ["bp0", "temp0", "scale0", "glucose0", "spo20", "temp0"] {
        sim.sim.command(&format!("measure {name}"))?;
    }
    let hr: Vec<String> = ids_of_kind(&devices, "hr");
    // Every measurement asked for, not only the straps' stream (which may
    // have its 8 readings before the cuff has finished inflating).
    let asked: Vec<(String, usize)> = [("bp", 1), ("temp", 2), ("scale", 1), ("spo2", 1)]
        .into_iter()
        .map(|(kind, n)| Ok((id_of_kind(&devices, kind)?, n)))
        .collect::<Result<_>>()?;
    collector
        .wait_for(
            Duration::from_secs(60),
            "every measurement asked for",
            |e| {
                hr.iter().all(|id| readings_of(e, id).len() >= 8)
                    && asked.iter().all(|(id, n)| readings_of(e, id).len() >= *n)
            },
        )
        .await?;
    let exit = gw.terminate()?;
    assert!(exit.success());
    let (envelopes, _) = after_stop(&rig, &collector).await?;
    let truth = read_truth(&truth_path)?;
    check_against_truth(&rig, &envelopes, &devices, &truth, 0..0)?;

    // What the gateway published, per device: (readings, without proof).
    let mut published: HashMap<String, (i64, i64)> = HashMap::new();
    for id in devices.values() {
        let readings = by_seq(&envelopes, id)?;
        let unproven = readings.values().filter(|(g, _)| g.proof.is_none()).count() as i64;
        published.insert(id.clone(), (readings.len() as i64, unproven));
    }
    let total: i64 = published.values().map(|(n, u)| n - u).sum();
    let unproven: i64 = published.values().map(|(_, u)| u).sum();
    assert_eq!(
        unproven, 1,
        "exactly the out-of-range temperature goes unproven"
    );
    eventually(Duration::from_secs(60), "every reading stored", || async {
        Ok((count_readings(&db.pool, "").await? >= total + unproven).then_some(()))
    })
    .await?;
    // Exactly once; the proven ones verified with their proof hash.
    assert_eq!(count_readings(&db.pool, "").await?, total + unproven);
    assert_eq!(
        count_readings(&db.pool, "AND verified AND zk_proof_hash IS NOT NULL").await?,
        total
    );
    assert_eq!(
        count_readings(
            &db.pool,
            "AND NOT verified AND data_type = 'BODY_TEMPERATURE'"
        )
        .await?,
        1
    );
    // Device state and sync state per device.
    for (id, (n, _)) in &published {
        let (battery, last_seq): (Option<i32>, Option<i64>) =
            sqlx::query_as("SELECT battery_level, last_seq FROM iot_devices WHERE device_id = $1")
                .bind(id)
                .fetch_one(&db.pool)
                .await
                .with_context(|| format!("iot_devices row of {id}"))?;
        assert!(battery.is_some(), "{id}: battery");
        assert_eq!(last_seq, Some(*n), "{id}: last seq");
    }
    Ok(())
}
