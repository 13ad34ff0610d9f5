//! Stored records (issue 19): while the gateway is stopped, a cuff, a scale
//! and a thermometer keep their measurements queued, a glucose meter stores
//! its records and a pulse oximeter its spot-checks; when the gateway runs
//! again every one of them is delivered (indications oldest first, glucose
//! through RACP after the gateway's cursor, spot-checks through PLX RACP
//! "all records"), published exactly once, in the order taken, each with
//! the time it was taken — not the time it was handed over. The oximeter's
//! spot-checks are deleted from it once the gateway stored them, so a
//! second restart takes nothing twice.

use anyhow::{Context, Result, ensure};
use hailan_firmware_sim::harness::SimHarness;
use hailan_tests::DevZk;
use hailan_tests::gateway::*;
use std::time::Duration;

/// A gateway account of the development broker (xtask/src/services.rs).
const GW: &str = "gw-stored-1";
const DEVICES: [&str; 5] = ["spo20", "bp0", "scale0", "temp0", "glucose0"];

/// What a device's readings must be, in order: a cuff's, scale's or
/// thermometer's indicated values; a meter's stored records and an
/// oximeter's stored spot-checks (each once, however often RACP sent it).
fn taken(truth: &[Truth], device: &str) -> Vec<Truth> {
    truth
        .iter()
        .filter(|t| t.device == device)
        .filter(|t| {
            if device.starts_with("glucose") || device.starts_with("spo2") {
                t.event == "stored"
            } else {
                t.makes_reading()
            }
        })
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_taken_while_the_gateway_was_stopped_arrive_once_in_order_with_their_time()
-> Result<()> {
    let zk = DevZk::new()?;
    let tmp = tempfile::tempdir()?;
    let truth_path = tmp.path().join("truth.jsonl");
    let broker = Broker::shared();
    // Device schedules slowed down a hundredfold: the only measurements are
    // the ones this test asks for (and the meter's stored history; the
    // oximeter, first, streams its first continuous value at the start,
    // before any gateway listens, and its next 100 s later).
    let sim = SimHarness::start(&[
        "--devices",
        "spo2=1,bp=1,scale=1,temp=1,glucose=1",
        "--seed",
        "13",
        "--speed",
        "0.01",
        "--ground-truth",
        &truth_path.display().to_string(),
    ])?;
    let (mut sim, rig, devices) = pair_all(sim, GW, &broker, &zk, "", &[])?;
    let (collector, mut gw) =
        start_all_connected(&rig, &broker, &devices, Duration::from_secs(60)).await?;
    let exit = gw.terminate()?;
    ensure!(exit.success(), "gateway exit {exit}");

    // The gateway is down: three measurements each, a second apart (device
    // time stamps have whole seconds).
    for _ in 0..3 {
        for name in DEVICES {
            sim.sim.command(&format!("measure {name}"))?;
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }

    let mut gw = rig.start(&[])?;
    let ids = ids_of(&devices)?;
    wait_for_taken(&collector, &truth_path, &ids, 3, "every stored record").await?;
    // The oximeter's spot-checks were deleted once stored (the meter keeps
    // its records: its cursor says which it has given).
    let deleted = hailan_tests::eventually(Duration::from_secs(30), "spot-checks deleted", || {
        let left = sim.sim.stored("spo20");
        async move { Ok((left? == 0).then_some(())) }
    })
    .await;
    deleted?;
    ensure!(
        sim.sim.stored("glucose0")? >= 3,
        "the meter keeps its records"
    );
    // A second start takes nothing again.
    let exit = gw.terminate()?;
    ensure!(exit.success(), "gateway exit {exit}");
    let seen = collector.envelopes();
    let before: Vec<(String, usize)> = devices
        .values()
        .map(|id| (id.clone(), states(&seen, id, true)))
        .collect();
    let mut gw = rig.start(&[])?;
    collector
        .wait_for(
            Duration::from_secs(60),
            "every device connected again",
            |e| before.iter().all(|(id, n)| states(e, id, true) > *n),
        )
        .await?;
    let exit = gw.terminate()?;
    ensure!(exit.success(), "gateway exit {exit}");
    let (envelopes, next) = after_stop(&rig, &collector).await?;
    let truth = read_truth(&truth_path)?;
    // Every value the devices put on the air was published (the glucose
    // records through RACP, each once).
    check_against_truth(&rig, &envelopes, &devices, &truth, 0..truth.len())?;

    // No live values: every reading is a record.
    each_once_in_order(&rig, &envelopes, &next, &truth, &ids, i64::MAX)
}

/// A week without a gateway: the simulator replays the last 7 days at
/// 20,160× (30 s) with a household's rates — a cuff twice a day, a
/// thermometer three times, a scale once, a meter's records and the
/// oximeter's spot-checks four times — while the gateway is stopped; then
/// the gateway starts, and every record of the week is published exactly
/// once, in the order taken, with the time it was taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_week_without_a_gateway_arrives_once_in_order_with_its_times() -> Result<()> {
    let zk = DevZk::new()?;
    let tmp = tempfile::tempdir()?;
    let truth_path = tmp.path().join("truth.jsonl");
    let broker = Broker::shared();
    let sim = SimHarness::start(&[
        "--devices",
        "spo2=1,bp=1,scale=1,temp=1,glucose=1",
        "--seed",
        "17",
        "--rates",
        "home",
        "--speed",
        "20160",
        "--replay-days",
        "7",
        "--ground-truth",
        &truth_path.display().to_string(),
    ])?;
    // Paired at the start of the replayed week; no gateway runs during it.
    let (mut sim, rig, devices) = pair_all(sim, "gw-outage-1", &broker, &zk, "", &[])?;
    hailan_tests::eventually(Duration::from_secs(120), "the replayed week", || {
        let now = sim.sim.now();
        async move { Ok(now?.1.then_some(())) }
    })
    .await?;
    let collector = Collector::start(&broker, &rig.gateway_id).await?;
    let live_from = now_ms();
    let mut gw = rig.start(&[])?;
    let ids = ids_of(&devices)?;
    // A week at home: at least 6 of each (a scale weighs once a day). The
    // queued ones enter the truth as they are handed over.
    wait_for_taken(&collector, &truth_path, &ids, 6, "the week's records").await?;
    let exit = gw.terminate()?;
    ensure!(exit.success(), "gateway exit {exit}");
    let (envelopes, next) = after_stop(&rig, &collector).await?;
    let truth = read_truth(&truth_path)?;
    check_against_truth(&rig, &envelopes, &devices, &truth, 0..truth.len())?;
    let mut oldest = i64::MAX;
    for (_, id) in &ids {
        for (_, (_, r)) in by_seq(&envelopes, id)? {
            oldest = oldest.min(r.recorded_at_ms);
        }
    }
    ensure!(
        now_ms() - oldest > 6 * 86_400_000,
        "the oldest record is from the start of the week"
    );
    each_once_in_order(&rig, &envelopes, &next, &truth, &ids, live_from)
}

/// Each of [`DEVICES`] with the id it was paired as.
fn ids_of(
    devices: &std::collections::HashMap<String, String>,
) -> Result<Vec<(&'static str, String)>> {
    DEVICES
        .iter()
        .map(|name| Ok((*name, id_of_kind(devices, name.trim_end_matches('0'))?)))
        .collect()
}

/// Wait until each device took at least `min` values (`taken`; queued ones
/// enter the truth as they are handed over) and has as many readings.
async fn wait_for_taken(
    collector: &Collector,
    truth_path: &std::path::Path,
    ids: &[(&str, String)],
    min: usize,
    what: &str,
) -> Result<()> {
    collector
        .wait_for(Duration::from_secs(120), what, |e| {
            let Ok(truth) = read_truth(truth_path) else {
                return false;
            };
            ids.iter().all(|(name, id)| {
                let want = taken(&truth, name).len();
                want >= min && readings_of(e, id).len() >= want
            })
        })
        .await?;
    Ok(())
}

/// Every device's readings: one per seq, none skipped, one per value it
/// took (`taken`), in the order taken, each within 2 s of its true time.
/// Readings recorded from `live_from` on (a streaming oximeter's live
/// values once the gateway runs) are only counted: `check_against_truth`
/// has matched them.
fn each_once_in_order(
    rig: &GatewayRig,
    envelopes: &[hailan_proto::envelope::Envelope],
    next: &std::collections::HashMap<String, u64>,
    truth: &[Truth],
    ids: &[(&str, String)],
    live_from: i64,
) -> Result<()> {
    for (name, id) in ids {
        let all = by_seq(envelopes, id)?;
        // Exactly once: one reading per seq, none skipped.
        let n = next.get(id).copied().context("next seq")?;
        ensure!(
            all.len() as u64 == n - 1,
            "{name}: {} readings for seqs 1..{n}",
            all.len()
        );
        let readings: Vec<_> = all
            .iter()
            .filter(|(_, (_, r))| r.recorded_at_ms < live_from)
            .collect();
        let values = taken(truth, name);
        ensure!(
            readings.len() == values.len(),
            "{name}: {} readings for {} values sent",
            readings.len(),
            values.len()
        );
        // In the order taken, each with its own time.
        let mut last = i64::MIN;
        for ((seq, (_, r)), t) in readings.iter().zip(&values) {
            let slots = open(rig, id, r)?;
            ensure!(
                t.matches(&slots),
                "{name} seq {seq}: {slots:?} is not {:?}",
                t.slots
            );
            let taken = t.true_time_ms().context("a time stamp")?;
            ensure!(
                (r.recorded_at_ms - taken).abs() <= 2_000,
                "{name} seq {seq}: recorded at {} ms, taken at {taken} ms",
                r.recorded_at_ms
            );
            ensure!(r.recorded_at_ms >= last, "{name} seq {seq}: out of order");
            last = r.recorded_at_ms;
        }
    }
    Ok(())
}
