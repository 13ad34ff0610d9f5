//! Device clocks end to end (issue 19): a cuff whose clock is 3 minutes
//! fast, a scale whose clock went back to 2000-01-01 (a battery change) and
//! a thermometer whose clock is right (fake BlueZ, Current Time Service) →
//! hailan-gateway (reads each clock on connection, places every time stamp
//! by it, sets the wrong clocks once the data is handed over) → Mosquitto →
//! hailan-ingest → PostgreSQL. Every stored `recorded_at` is within 2 s of
//! the simulator's true time; the readings the reset clock stamped are
//! flagged `clock = reset` in their sealed extras, the others are not; after
//! one idle link the wrong clocks are right and the right one was left alone.

use anyhow::{Context, Result, ensure};
use hailan_firmware_sim::harness::SimHarness;
use hailan_tests::api::{ApiProcess, ensure_api_login, validate_fhir, write_key_ring};
use hailan_tests::gateway::*;
use hailan_tests::{DevZk, IngestProcess, TestDb, enrol_with_token, eventually, or_quarantined};
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;

/// A gateway account of the development broker (xtask/src/services.rs).
const GW: &str = "gw-clock-1";
/// How far the cuff's clock is ahead.
const CUFF_AHEAD_S: i64 = 180;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_stamps_follow_the_true_time_whatever_the_device_clock_says() -> Result<()> {
    let db = TestDb::create().await?;
    let zk = DevZk::new()?;
    let logs = tempfile::tempdir()?;
    let (patient, token) = enrol_with_token(&db.pool, GW).await?;
    let ingest_bin = workspace_binary("hailan-ingest")?;
    let _ingest = IngestProcess::start(&ingest_bin, &db, &zk, &[GW], logs.path())?;
    let truth_path = logs.path().join("truth.jsonl");
    let broker = Broker::shared();
    let sim = SimHarness::start(&[
        "--devices",
        "bp=1,scale=1,temp=1",
        "--seed",
        "11",
        "--speed",
        "4",
        "--ground-truth",
        &truth_path.display().to_string(),
        "--faults",
        &format!("clock=bp0:{CUFF_AHEAD_S},clock-reset=scale0"),
    ])?;
    // Links idle after 2 s: that is when a wrong clock is set.
    let (mut sim, rig, devices) =
        pair_all(sim, GW, &broker, &zk, "[ble]\nidle_disconnect_s = 2\n", &[])?;
    // Two measurements each by the clocks as they are (a second apart: the
    // stamps have whole seconds), taken before the gateway runs: they wait
    // on the devices and are handed over on the first link. (Taken once the
    // links are up, they raced the 2 s idle that sets the clocks: under load
    // the scale's clock was set before it measured.)
    for _ in 0..2 {
        for name in ["bp0", "scale0", "temp0"] {
            sim.sim.command(&format!("measure {name}"))?;
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let (collector, mut gw) =
        start_all_connected(&rig, &broker, &devices, Duration::from_secs(60)).await?;
    // Handed over, the links idle and the gateway sets the wrong clocks.
    for name in ["bp0", "scale0"] {
        let (offset, _) = eventually(
            Duration::from_secs(60),
            &format!("{name}'s clock set"),
            || {
                let answer = sim.sim.clock(name);
                async move { Ok(answer.ok().filter(|(_, sets)| *sets >= 1)) }
            },
        )
        .await?;
        ensure!(
            offset.abs() < 2_000,
            "{name}'s clock is {offset} ms off after the gateway set it"
        );
    }
    let (temp_offset, temp_sets) = sim.sim.clock("temp0")?;
    ensure!(
        temp_sets == 0 && temp_offset.abs() < 1_000,
        "a right clock is left alone ({temp_sets} sets, {temp_offset} ms off)"
    );
    // One more measurement each by the clocks as set.
    for name in ["bp0", "scale0"] {
        sim.sim.command(&format!("measure {name}"))?;
    }
    let cuff = id_of_kind(&devices, "bp")?;
    let scale = id_of_kind(&devices, "scale")?;
    let thermometer = id_of_kind(&devices, "temp")?;
    collector
        .wait_for(Duration::from_secs(60), "every measurement", |e| {
            readings_of(e, &cuff).len() >= 3
                && readings_of(e, &scale).len() >= 3
                && readings_of(e, &thermometer).len() >= 2
        })
        .await?;
    let exit = gw.terminate()?;
    ensure!(exit.success(), "gateway exit {exit}");
    let (envelopes, _) = after_stop(&rig, &collector).await?;

    let mut published: HashMap<(String, i64), i64> = HashMap::new();
    let mut scale_flags: HashMap<i64, bool> = HashMap::new();
    let mut reset_flags = 0;
    let truth = read_truth(&truth_path)?;
    for (name, id) in [("bp0", &cuff), ("scale0", &scale), ("temp0", &thermometer)] {
        let sent: Vec<&Truth> = truth
            .iter()
            .filter(|t| t.device == name && t.makes_reading())
            .collect();
        let mut next = 0;
        for (seq, (_, r)) in by_seq(&envelopes, id)? {
            let slots = open(&rig, id, r)?;
            let found = sent[next..].iter().position(|s| s.matches(&slots));
            let i =
                next + found.with_context(|| format!("{name} seq {seq}: {slots:?} not sent"))?;
            next = i + 1;
            let s = sent[i];
            let true_ms = s.true_time_ms().context("a time stamp")?;
            ensure!(
                (r.recorded_at_ms - true_ms).abs() <= 2_000,
                "{name} seq {seq}: recorded at {} ms, taken at {true_ms} ms (its clock {} s ahead)",
                r.recorded_at_ms,
                s.device_clock_offset_s
            );
            let v = open_sealed(&rig, id, r)?;
            let flag = v
                .extras
                .get("clock")
                .and_then(|c| c.as_text())
                .map(str::to_owned);
            let stamped_by_reset_clock = s.device_clock_offset_s < -10 * 365 * 86_400;
            ensure!(
                flag.as_deref() == stamped_by_reset_clock.then_some("reset"),
                "{name} seq {seq}: clock flag {flag:?}, stamped by a reset clock: {stamped_by_reset_clock}"
            );
            reset_flags += usize::from(stamped_by_reset_clock);
            if name == "scale0" {
                scale_flags.insert(r.recorded_at_ms, stamped_by_reset_clock);
            }
            // The device's own stamp travels sealed beside the corrected time.
            let device_time = v
                .extras
                .get("device_time_ms")
                .and_then(|t| t.as_integer())
                .map(i128::from)
                .with_context(|| format!("{name} seq {seq}: no device time"))?;
            ensure!(
                (device_time - i128::from(true_ms + s.device_clock_offset_s * 1000)).abs() < 1000,
                "{name} seq {seq}: device time {device_time} is not the stamp it sent"
            );
            published.insert((id.clone(), r.seq as i64), r.recorded_at_ms);
        }
    }
    ensure!(
        reset_flags >= 2,
        "the two measurements by the reset clock are flagged ({reset_flags})"
    );

    // Stored as published.
    let ids: Vec<String> = vec![cuff.clone(), scale.clone(), thermometer.clone()];
    let stored = eventually(Duration::from_secs(60), "every reading stored", || async {
        // The partitions: the parent table is behind row-level security.
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT d.device_id, h.seq, (extract(epoch FROM h.recorded_at) * 1000)::int8
               FROM (SELECT * FROM health_data_blood_pressure
                     UNION ALL SELECT * FROM health_data_body_weight
                     UNION ALL SELECT * FROM health_data_body_temperature) h
               JOIN iot_devices d ON d.id = h.device_id
              WHERE d.device_id = ANY($1) AND h.verified",
        )
        .bind(&ids)
        .fetch_all(&db.pool)
        .await?;
        Ok((rows.len() >= published.len()).then_some(rows))
    })
    .await;
    let rows = or_quarantined(&db.pool, stored).await?;
    ensure!(
        rows.len() == published.len(),
        "{} rows for {} readings",
        rows.len(),
        published.len()
    );
    for (device, seq, at) in rows {
        ensure!(
            published.get(&(device.clone(), seq)) == Some(&at),
            "{device} seq {seq}: stored at {at}, published {:?}",
            published.get(&(device.clone(), seq))
        );
    }

    // FHIR: effective at the corrected time, the device's own stamp kept
    // beside it, the reset clock flagged — all valid R4.
    ensure_api_login(&db.pool).await?;
    let ring = write_key_ring(logs.path())?;
    let api = ApiProcess::start(&db, None, &ring, zk.dir.path(), logs.path()).await?;
    let path = format!("/fhir/Observation?patient={patient}&code=http://loinc.org|29463-7");
    let (code, body) = api.get(&token, &path).await?;
    ensure!(code == 200, "GET {path}: {code} {body}");
    assert_eq!(
        validate_fhir(&body, logs.path())?,
        format!("valid {}", scale_flags.len())
    );
    let bundle: Value = serde_json::from_str(&body)?;
    for e in bundle["entry"].as_array().context("entries")? {
        let o = &e["resource"];
        let at = chrono::DateTime::parse_from_rfc3339(
            o["effectiveDateTime"]
                .as_str()
                .context("effectiveDateTime")?,
        )?
        .timestamp_millis();
        let reset = *scale_flags
            .get(&at)
            .with_context(|| format!("an Observation at {at} that was not published"))?;
        let codes: Vec<&str> = o["component"]
            .as_array()
            .map(|c| {
                c.iter()
                    .filter_map(|c| c["code"]["coding"][0]["code"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        ensure!(
            codes.contains(&"device-time") && codes.contains(&"clock.reset") == reset,
            "scale Observation at {at} (reset clock: {reset}) has components {codes:?}"
        );
    }
    Ok(())
}
