//! Helpers for the BLE tests: the simulator in-process on a private bus
//! (`harness::isolated`), fast settings, awaiting events with a deadline, and
//! checking values against the simulator's ground truth with proto's decoders.
#![allow(dead_code)]

use anyhow::{Context, bail};
use hailan_firmware_sim::{DeviceInfo, SimConfig, Simulator, TruthRecord};
use hailan_gateway::ble::agent::PairingAnswers;
use hailan_gateway::ble::{Ble, BleConfig, BleEvent, BleStats, DeviceKind, KnownDevice};
use hailan_gateway::health::Beat;
use hailan_proto::gatt::{self, Characteristic};
use std::sync::Arc;
use std::sync::atomic::AtomicI32;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A whole test (child process) may take this long.
pub const LIMIT: Duration = Duration::from_secs(60);
/// Any single awaited event may take this long.
pub const STEP: Duration = Duration::from_secs(15);

/// Log to the test output (`RUST_LOG` overrides).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("hailan_gateway=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// The simulator with these devices, 10× faster schedules.
pub fn sim_config(devices: &[(hailan_firmware_sim::DeviceKind, usize)]) -> SimConfig {
    SimConfig {
        devices: devices.to_vec(),
        seed: 42,
        speed: 10.0,
        ..SimConfig::default()
    }
}

/// Short timings for tests.
pub fn fast() -> BleConfig {
    BleConfig {
        adapters: hailan_gateway::ble::AdapterChoice::First,
        // Every device holds its link (slots are tested in tests/tests/slots.rs).
        max_connections: 16,
        idle_disconnect: Duration::from_secs(3600),
        battery_interval: Duration::from_secs(60),
        scan_stall_after: Duration::from_secs(3),
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_secs(1),
        pair_timeout: Duration::from_secs(10),
        set_device_clock: true,
    }
}

/// What an owner reads off the simulated device to pair it: its passkey,
/// "yes" to its number, its PIN.
pub fn answers(d: &DeviceInfo) -> PairingAnswers {
    use hailan_firmware_sim::Pairing;
    let mut a = PairingAnswers::default();
    match &d.pairing {
        Pairing::JustWorks => {}
        Pairing::Passkey(n) => a.passkey = Some(*n),
        Pairing::NumericComparison(_) => a.confirm = true,
        Pairing::LegacyPin(p) => a.pin = Some(p.clone()),
    }
    a
}

/// proto's kind for a simulated device.
pub fn kind_of(d: &DeviceInfo) -> anyhow::Result<DeviceKind> {
    DeviceKind::from_service(d.kind.service_uuid16())
        .with_context(|| format!("no proto kind for {:?}", d.kind))
}

/// A known device for the simulated device `name` (device id = name).
pub fn known(sim: &Simulator, name: &str, cursor: i32) -> anyhow::Result<KnownDevice> {
    let d = sim
        .device(name)
        .with_context(|| format!("no sim device {name}"))?;
    Ok(KnownDevice {
        device_id: name.to_string(),
        address: d.address.clone(),
        kind: kind_of(&d)?,
        glucose_cursor: Arc::new(AtomicI32::new(cursor)),
        bonded_at_ms: 0,
        paired_at_ms: 0,
        consents: Vec::new(),
    })
}

/// A running `Ble::run`.
pub struct Running {
    pub events: mpsc::Receiver<BleEvent>,
    pub devices: watch::Sender<Vec<KnownDevice>>,
    pub stats: Arc<BleStats>,
    pub beat: Arc<Beat>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
    /// The connection state each device reported last (every event seen).
    pub connected: std::collections::HashMap<String, bool>,
}

impl Running {
    pub fn start(ble: Ble, devices: Vec<KnownDevice>) -> Running {
        let (tx, events) = mpsc::channel(1024);
        let (devices, rx) = watch::channel(devices);
        let stats = ble.stats();
        let beat = Beat::new();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(ble.run(rx, tx, beat.clone(), shutdown.clone()));
        Running {
            events,
            devices,
            stats,
            beat,
            shutdown,
            task,
            connected: Default::default(),
        }
    }

    /// The next event matching `pick` (others are skipped), within [`STEP`].
    pub async fn next<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&BleEvent) -> Option<T>,
    ) -> anyhow::Result<T> {
        tokio::time::timeout(STEP, async {
            while let Some(ev) = self.events.recv().await {
                if let BleEvent::State {
                    device_id,
                    connected,
                    ..
                } = &ev
                {
                    self.connected.insert(device_id.clone(), *connected);
                }
                if let Some(t) = pick(&ev) {
                    return Ok(t);
                }
            }
            bail!("event channel closed")
        })
        .await
        .with_context(|| format!("timed out waiting for {what}"))?
    }

    /// The next measurement of `device` on `characteristic`.
    pub async fn measurement(
        &mut self,
        device: &str,
        characteristic: u16,
    ) -> anyhow::Result<Vec<u8>> {
        self.next(&format!("{device} {characteristic:04X}"), |ev| match ev {
            BleEvent::Measurement {
                device_id,
                characteristic: c,
                bytes,
                received_at_ms,
                ..
            } if device_id == device && *c == characteristic => {
                assert!(*received_at_ms > 1_600_000_000_000, "wall-clock ms");
                Some(bytes.clone())
            }
            _ => None,
        })
        .await
    }

    /// The next State of `device` with `connected`; returns its battery.
    pub async fn state(&mut self, device: &str, connected: bool) -> anyhow::Result<Option<u8>> {
        self.next(&format!("{device} connected={connected}"), |ev| match ev {
            BleEvent::State {
                device_id,
                connected: c,
                battery,
                ..
            } if device_id == device && *c == connected => Some(*battery),
            _ => None,
        })
        .await
    }

    /// Return once `device`'s latest reported state is connected (at once if
    /// it already is).
    pub async fn connected_now(&mut self, device: &str) -> anyhow::Result<()> {
        if self.connected.get(device) == Some(&true) {
            return Ok(());
        }
        self.state(device, true).await.map(drop)
    }

    /// Stop and check `run` ended cleanly.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(STEP, self.task)
            .await
            .context("run did not stop")???;
        Ok(())
    }
}

/// The truth record for bytes sent on `uuid16` by `address`.
pub fn truth_for(
    sim: &Simulator,
    address: &str,
    uuid16: u16,
    bytes: &[u8],
) -> anyhow::Result<TruthRecord> {
    let c = format!("{uuid16:04x}");
    let h: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    sim.truth()
        .into_iter()
        .rev()
        .find(|r| r.address == address && r.characteristic == c && r.bytes == h)
        .with_context(|| format!("no ground truth for {address} {c} {h}"))
}

/// Decode with proto and compare the reading slots with the truth's (within
/// the wire resolution of kPa cuffs, °F thermometers and lb scales).
pub fn check_against_truth(
    sim: &Simulator,
    address: &str,
    uuid16: u16,
    bytes: &[u8],
) -> anyhow::Result<()> {
    let truth = truth_for(sim, address, uuid16, bytes)?;
    let c = Characteristic::from_uuid16(uuid16).context("no codec")?;
    let reading = gatt::decode(c, bytes)?
        .to_reading()
        .map_err(|e| anyhow::anyhow!("no reading: {e:?}"))?;
    let got: Vec<u64> = reading.slots.into_iter().map(u64::from).collect();
    let tol = match uuid16 {
        0x2A35 => 4,
        0x2A1C => 1,
        0x2A9D => 5,
        _ => 0,
    };
    let ok = got.len() == truth.slots.len()
        && got
            .iter()
            .zip(&truth.slots)
            .all(|(g, w)| g.abs_diff(*w) <= tol);
    anyhow::ensure!(ok, "{uuid16:04x}: decoded {got:?}, truth {:?}", truth.slots);
    Ok(())
}

/// Sequence number of a glucose record.
pub fn glucose_seq(bytes: &[u8]) -> anyhow::Result<u16> {
    Ok(gatt::GlucoseMeasurement::decode(bytes)?.sequence_number)
}
