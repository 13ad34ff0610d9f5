//! Gateway benchmark: N simulated heart-rate straps at `speed` × 1 Hz →
//! hailan-gateway pinned to one core (sealed, proven in windows, fsync'd to
//! the outbox, published at QoS 1) → Mosquitto → a collector.
//!
//! ```text
//! cargo build --workspace
//! cargo run -p hailan-tests --example gateway_bench -- 20 10 60   # 20 straps at 10 Hz = 200 readings/s
//! cargo run -p hailan-tests --example gateway_bench -- 50 4 60    # 50 straps at 4 Hz = 200 readings/s
//! ```
//! Prints readings/s delivered, the gateway's CPU (share of one core) and
//! peak RSS, the outbox depth at the end, and p50/p99 of notification →
//! delivered latency (the reading's gateway receive time, which is its
//! `recorded_at` for straps, to its arrival at the subscriber; arrival
//! follows the PUBACK within a millisecond on loopback).

use anyhow::{Context, Result};
use hailan_firmware_sim::harness::SimHarness;
use hailan_proto::envelope::Body;
use hailan_tests::DevZk;
use hailan_tests::gateway::{Broker, Collector, GatewayRig};
use std::time::{Duration, Instant};

fn proc_field(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime of `pid`, in clock ticks (100 Hz on Linux).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = s.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn pct(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.first().map_or(Ok(20), |s| s.parse())?;
    let speed: f64 = args.get(1).map_or(Ok(10.0), |s| s.parse())?;
    let secs: u64 = args.get(2).map_or(Ok(60), |s| s.parse())?;
    let zk = DevZk::new()?;
    let sim = SimHarness::start(&[
        "--devices",
        &format!("hr={n}"),
        "--speed",
        &speed.to_string(),
    ])?;
    let broker = Broker::shared();
    let rig = GatewayRig::new(
        "gw-e2e-8",
        sim.bus_address(),
        &broker,
        &zk,
        "[pipeline]\nwindow_size = 16\nwindow_max_ms = 20000\n",
    )?;
    let paired = Instant::now();
    for d in &sim.sim.devices {
        rig.pair_with(&d.address, &d.pair_flags())?;
    }
    eprintln!("paired {n} devices in {:.1?}", paired.elapsed());
    let collector = Collector::start(&broker, &rig.gateway_id).await?;
    let mut gw = rig.start(&[])?;
    let pid = gw.child.id();
    // Pin the daemon to core 0 (the goal is per core) and the simulator,
    // which plays the radio, to core 1.
    for (p, core) in [(pid, "0"), (sim.sim.pid(), "1"), (std::process::id(), "1")] {
        let _ = std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", core, &p.to_string()])
            .output();
    }
    collector
        .wait_for(Duration::from_secs(120), "every strap connected", |e| {
            e.iter()
                .filter(|e| matches!(&e.body, Body::DeviceState(s) if s.connected))
                .count()
                >= n
        })
        .await?;
    // Warm up one window period, then measure.
    tokio::time::sleep(Duration::from_secs_f64(16.0 / speed + 2.0)).await;
    let count = |c: &Collector| -> usize {
        c.envelopes()
            .iter()
            .filter_map(|e| match &e.body {
                Body::Readings(b) => Some(b.groups.iter().map(|g| g.readings.len()).sum::<usize>()),
                _ => None,
            })
            .sum()
    };
    let start_count = count(&collector);
    let start_msgs = collector.snapshot().len();
    let t0 = Instant::now();
    let cpu0 = cpu_ticks(pid).context("gateway cpu")?;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let cpu1 = cpu_ticks(pid).context("gateway cpu")?;
    let elapsed = t0.elapsed().as_secs_f64();
    let delivered = count(&collector) - start_count;
    let rss_peak_kb = proc_field(pid, "VmHWM:").unwrap_or(0);
    let rss_kb = proc_field(pid, "VmRSS:").unwrap_or(0);
    let status = rig.status()?;
    // Latency of every reading delivered in the measured period.
    let mut lat: Vec<i64> = collector
        .snapshot()
        .iter()
        .skip(start_msgs)
        .filter_map(|m| Some((m.at_ms, m.envelope()?)))
        .flat_map(|(at, e)| match e.body {
            Body::Readings(b) => b
                .groups
                .iter()
                .flat_map(|g| g.readings.iter().map(|r| at - r.recorded_at_ms))
                .collect::<Vec<_>>(),
            _ => vec![],
        })
        .collect();
    lat.sort_unstable();
    gw.terminate()?;
    // Per envelope: readings and prove+seal+commit time, from the debug log.
    let (mut envs, mut readings, mut took) = (0u64, 0u64, 0u64);
    for l in gw.log_text().lines().filter(|l| l.contains(" queued")) {
        let field = |k: &str| -> u64 {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        envs += 1;
        readings += field("count=");
        took += field("took_ms=");
    }
    let offered = n as f64 * speed;
    println!(
        "gateway_bench: {n} heart-rate straps at {speed} Hz (offered {offered:.0} readings/s), {secs} s, gateway pinned to 1 core"
    );
    println!(
        "  delivered      {:.0} readings/s ({:.0} % of offered)",
        delivered as f64 / elapsed,
        100.0 * delivered as f64 / elapsed / offered
    );
    let cpu_s = (cpu1 - cpu0) as f64 / 100.0;
    println!(
        "  gateway CPU    {:.0} % of one core; {:.1} ms of CPU per delivered reading = {:.0} readings/s per core",
        cpu_s / elapsed * 100.0,
        1000.0 * cpu_s / delivered.max(1) as f64,
        delivered as f64 / cpu_s.max(0.001)
    );
    println!(
        "  gateway RSS    {:.1} MB now, {:.1} MB peak",
        rss_kb as f64 / 1024.0,
        rss_peak_kb as f64 / 1024.0
    );
    println!(
        "  pipeline       {envs} envelopes, {:.1} readings each, {:.1} ms each to prove, seal and commit (wall)",
        readings as f64 / envs.max(1) as f64,
        took as f64 / envs.max(1) as f64
    );
    println!("  outbox at end  {} readings", status["outbox"]["readings"]);
    println!(
        "  latency        p50 {:.1} s, p99 {:.1} s (notification → delivered; window closes at 16 readings = {:.1} s, or 20 s)",
        pct(&lat, 0.5) as f64 / 1000.0,
        pct(&lat, 0.99) as f64 / 1000.0,
        16.0 / speed
    );
    Ok(())
}
