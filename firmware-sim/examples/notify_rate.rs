//! How many notifications per second a plain btleplug client receives from
//! N simulated devices.
//!
//! ```text
//! cargo run --release -p hailan-firmware-sim --example notify_rate -- [DEVICES] [SPEED] [SECS]
//! # e.g. 50 heart-rate straps at 20x real time (1,000 notifications/s offered), 10 s:
//! cargo run --release -p hailan-firmware-sim --example notify_rate -- hr=50 20 10
//! ```
//! Starts a private dbus-daemon, re-runs itself with `DBUS_SYSTEM_BUS_ADDRESS`
//! pointing at it, serves the simulator in-process (its own runtime) and the
//! btleplug client on another runtime, connects every device, subscribes to
//! its measurement characteristic and counts what arrives. Latency is from
//! the simulator handing a value to D-Bus to btleplug yielding it.

use btleplug::api::bleuuid::uuid_from_u16;
use btleplug::api::{Central, CentralEvent, Manager as _, Peripheral as _, ScanFilter};
use btleplug::platform::Manager;
use futures::StreamExt;
use hailan_firmware_sim::harness::PrivateBus;
use hailan_firmware_sim::{SimConfig, Simulator, sim};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const CHILD: &str = "HAILAN_NOTIFY_RATE_CHILD";

/// (device address, value, when btleplug yielded it)
type Received = (String, Vec<u8>, Instant);

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if std::env::var(CHILD).is_ok() {
        let bus = std::env::var("DBUS_SYSTEM_BUS_ADDRESS")?;
        return measure(&bus, &args);
    }
    let bus = PrivateBus::start()?;
    let status = std::process::Command::new(std::env::current_exe()?)
        .args(&args)
        .env(CHILD, "1")
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus.address())
        .status()?;
    anyhow::ensure!(status.success(), "measurement failed: {status}");
    Ok(())
}

fn measure(bus: &str, args: &[String]) -> anyhow::Result<()> {
    let devices = sim::parse_devices(args.first().map(String::as_str).unwrap_or("hr=50"))
        .map_err(anyhow::Error::msg)?;
    let speed: f64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(20.0);
    let secs: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let n: usize = devices.iter().map(|(_, n)| n).sum();

    // simulator on its own runtime (as if it were its own process)
    let sim_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let cfg = SimConfig {
        devices,
        speed,
        ..SimConfig::default()
    };
    let sim = sim_rt.block_on(Simulator::start(bus, cfg))?;
    let sim = Arc::new(sim);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let manager = Manager::new().await?;
        let adapter = manager
            .adapters()
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("no adapter"))?;
        let mut events = adapter.events().await?;
        let t0 = Instant::now();
        adapter.start_scan(ScanFilter::default()).await?;
        let mut seen = HashSet::new();
        while seen.len() < n {
            if let Some(CentralEvent::DeviceDiscovered(id)) = events.next().await {
                seen.insert(id);
            }
        }
        adapter.stop_scan().await?;
        let scanned = t0.elapsed();
        let count = Arc::new(AtomicU64::new(0));
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let t1 = Instant::now();
        let mut tasks = Vec::new();
        for id in seen {
            let p = adapter.peripheral(&id).await?;
            p.connect().await?;
            p.discover_services().await?;
            let wanted = [0x2A37u16, 0x2A5F].map(uuid_from_u16);
            let c = p
                .characteristics()
                .into_iter()
                .find(|c| wanted.contains(&c.uuid))
                .ok_or_else(|| anyhow::anyhow!("no continuous measurement on {}", p.address()))?;
            let mut notes = p.notifications().await?;
            p.subscribe(&c).await?;
            let count = count.clone();
            let received = received.clone();
            let address = p.address().to_string();
            tasks.push(tokio::spawn(async move {
                while let Some(n) = notes.next().await {
                    count.fetch_add(1, Ordering::Relaxed);
                    let now = Instant::now();
                    if let Ok(mut r) = received.lock() {
                        r.push((address.clone(), n.value, now));
                    }
                }
            }));
        }
        let connected = t1.elapsed();
        // steady state: let the backlog built while connecting drain, then count
        tokio::time::sleep(Duration::from_secs(2)).await;
        let c0 = count.load(Ordering::Relaxed);
        let r0 = received.lock().map(|r| r.len()).unwrap_or(0);
        let s0 = sim.notifications_sent();
        let t2 = Instant::now();
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let dt = t2.elapsed().as_secs_f64();
        let got = count.load(Ordering::Relaxed) - c0;
        let sent = sim.notifications_sent() - s0;
        // latency: match each received value with the latest send of the same
        // bytes by the same device before it
        // received first: every value received then has its send in the truth
        let got_values = received
            .lock()
            .map(|r| r[r0..].to_vec())
            .unwrap_or_default();
        let mut sends: HashMap<(String, String), Vec<Instant>> = HashMap::new();
        for t in sim.truth() {
            if let Some(at) = t.sent_at {
                sends.entry((t.address, t.bytes)).or_default().push(at);
            }
        }
        let mut lat: Vec<f64> = Vec::new();
        for (addr, value, at) in got_values {
            let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
            if let Some(v) = sends.get(&(addr, hex)) {
                let i = v.partition_point(|s| *s <= at);
                if i > 0 {
                    lat.push((at - v[i - 1]).as_secs_f64() * 1e3);
                }
            }
        }
        lat.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            lat.get(((lat.len() as f64 - 1.0) * p).round() as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        println!(
            "devices={n} speed={speed} offered={:.0}/s sent={:.0}/s received={:.0}/s \
             latency p50 {:.2} ms p99 {:.2} ms max {:.2} ms \
             (window {dt:.1} s; scan {:.0} ms; connect+discover+subscribe all {:.0} ms)",
            n as f64 * speed,
            sent as f64 / dt,
            got as f64 / dt,
            pct(0.5),
            pct(0.99),
            pct(1.0),
            scanned.as_secs_f64() * 1e3,
            connected.as_secs_f64() * 1e3,
        );
        for t in tasks {
            t.abort();
        }
        anyhow::Ok(())
    })?;
    drop(sim);
    Ok(())
}
