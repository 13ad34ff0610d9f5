//! Placeholder until the BLE layer lands (branch `ble`).
pub use hailan_proto::gatt::DeviceKind;
use std::sync::Arc;
use std::sync::atomic::AtomicI32;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct BleConfig {
    pub adapter: Option<String>,
    pub max_connections: usize,
    pub battery_interval: Duration,
    pub scan_stall_after: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub pair_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct Nearby {
    pub address: String,
    pub name: Option<String>,
    pub rssi: Option<i16>,
    pub kinds: Vec<DeviceKind>,
}

#[derive(Clone, Debug)]
pub struct PairedInfo {
    pub address: String,
    pub name: Option<String>,
    pub kind: DeviceKind,
    pub bonded: bool,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub firmware: Option<String>,
    pub hardware: Option<String>,
    pub battery: Option<u8>,
}

#[derive(Clone, Debug)]
pub struct KnownDevice {
    pub device_id: String,
    pub address: String,
    pub kind: DeviceKind,
    pub glucose_cursor: Arc<AtomicI32>,
}

#[derive(Clone, Debug)]
pub enum BleEvent {
    Measurement {
        device_id: String,
        characteristic: u16,
        bytes: Vec<u8>,
        received_at_ms: i64,
    },
    State {
        device_id: String,
        connected: bool,
        battery: Option<u8>,
        rssi: Option<i16>,
        firmware: Option<String>,
    },
}

pub struct Ble;

impl Ble {
    pub async fn open(_cfg: BleConfig) -> anyhow::Result<Ble> {
        anyhow::bail!("BLE layer not built yet")
    }
    pub async fn scan(
        &self,
        _d: Duration,
        _progress: impl FnMut(&Nearby),
    ) -> anyhow::Result<Vec<Nearby>> {
        anyhow::bail!("BLE layer not built yet")
    }
    pub async fn pair(&self, _who: &str) -> anyhow::Result<PairedInfo> {
        anyhow::bail!("BLE layer not built yet")
    }
    pub async fn run(
        self,
        _devices: tokio::sync::watch::Receiver<Vec<KnownDevice>>,
        _events: tokio::sync::mpsc::Sender<BleEvent>,
        _beat: Arc<crate::health::Beat>,
        _shutdown: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<()> {
        anyhow::bail!("BLE layer not built yet")
    }
}
