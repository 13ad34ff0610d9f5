//! The gateway's Bluetooth LE layer: scan for health devices, pair (bond)
//! them, and keep one session per known device that forwards every
//! measurement value as a [`BleEvent`].
//!
//! It is built for the failures BLE gateways are known for: a scanner that
//! silently stops reporting (`watchdog`: restart discovery, then reset the
//! adapter), connection attempts that exhaust the adapter (a semaphore bounds
//! attempts in flight, `backoff` spreads retries), and bonding that fails on
//! blood-pressure cuffs and glucose meters (`pair`, and sessions re-bond
//! when BlueZ says "not paired").
//!
//! | file | job |
//! |---|---|
//! | `adapter` | open BlueZ + the adapter; power, discovery, BlueZ error names |
//! | [`agent`] | the pairing agent (`org.bluez.Agent1`): passkey, comparison, PIN |
//! | `gatt` | which characteristics a kind uses; DIS/battery reads |
//! | `scan` | one-off scans ([`Ble::scan`]) |
//! | `pair` | find, connect, bond, check the GATT table, read DIS ([`Ble::pair`]) |
//! | `session` | one known device: connect, subscribe, forward, reconnect |
//! | `glucose` | RACP: fetch the records after the cursor |
//! | `spot_checks` | PLX RACP: fetch an oximeter's stored spot-checks, delete them once stored |
//! | `clock` | read a device's clock before its values; set it when its link idles |
//! | `hub` | the one btleplug event stream, fanned out to everyone |
//! | `watchdog` | keep discovery running and reporting |
//! | `slots` | how many links an adapter holds at once, and who waits for one |
//! | `placement` | which adapter a device's link goes through; moving off a lost one |
//! | `supervisor` | [`Ble::run`]: start/stop sessions, scanner, heartbeat |
//! | `backoff` | jittered exponential backoff |

mod adapter;
pub mod agent;
mod backoff;
mod clock;
mod gatt;
mod glucose;
mod hub;
mod pair;
mod placement;
mod scan;
mod session;
mod slots;
mod spot_checks;
mod supervisor;
mod users;
pub use users::UserControlAnswer;
mod watchdog;

pub use hailan_proto::gatt::DeviceKind;

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::Duration;

/// Which Bluetooth adapters the gateway uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AdapterChoice {
    /// The first adapter present (by number: `hci0` before `hci1`).
    #[default]
    First,
    /// These, by name (`hci0`): devices spread over them.
    Named(Vec<String>),
    /// Every adapter present when the gateway starts.
    All,
}

/// BLE settings.
#[derive(Clone, Debug)]
pub struct BleConfig {
    /// The adapters to use ([`AdapterChoice`]). With several, each device
    /// is placed on one (the least loaded; a bonded device only where
    /// BlueZ holds its bond) and moves when its adapter powers off or
    /// stops answering. Scans and pairing use the first.
    pub adapters: AdapterChoice,
    /// Links held at once, per adapter: streaming devices keep theirs,
    /// devices that hand over measurements give theirs back when idle.
    pub max_connections: usize,
    /// A hand-over device's link is closed after this long without a value
    /// (or an RACP procedure in flight).
    pub idle_disconnect: Duration,
    /// Periodic battery read per connected device (a glucose meter is also
    /// asked for new records then).
    pub battery_interval: Duration,
    /// No discovery/RSSI event for this long while scanning ⇒ restart discovery.
    pub scan_stall_after: Duration,
    /// Reconnect backoff start.
    pub reconnect_min: Duration,
    /// Reconnect backoff cap (jittered exponential). A connection that lasted
    /// at least this long resets the backoff.
    pub reconnect_max: Duration,
    /// Pairing (finding the device included).
    pub pair_timeout: Duration,
    /// Set a device's clock (Current Time 0x2A2B, where writable) when it
    /// is off; read it on every connection either way.
    pub set_device_clock: bool,
}

impl Default for BleConfig {
    fn default() -> Self {
        BleConfig {
            adapters: AdapterChoice::First,
            max_connections: 4,
            idle_disconnect: Duration::from_secs(10),
            battery_interval: Duration::from_secs(5 * 60),
            scan_stall_after: Duration::from_secs(30),
            reconnect_min: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(60),
            pair_timeout: Duration::from_secs(30),
            set_device_clock: true,
        }
    }
}

/// A device found by a scan.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Nearby {
    /// `AA:BB:CC:DD:EE:FF`, upper case.
    pub address: String,
    /// Advertised name.
    pub name: Option<String>,
    /// dBm.
    pub rssi: Option<i16>,
    /// From the advertised services; only health devices are reported.
    /// Serialised as `heart_rate_monitor` … ([`DeviceKind::as_str`]).
    #[serde(serialize_with = "kinds_as_str")]
    pub kinds: Vec<DeviceKind>,
}

fn kinds_as_str<S: serde::Serializer>(kinds: &[DeviceKind], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(kinds.iter().map(|k| k.as_str()))
}

/// What [`Ble::pair`] learned.
#[derive(Clone, Debug)]
pub struct PairedInfo {
    /// `AA:BB:CC:DD:EE:FF`.
    pub address: String,
    /// Advertised name.
    pub name: Option<String>,
    /// The kind it was paired as.
    pub kind: DeviceKind,
    /// BlueZ holds a bond (`Paired`) for it.
    pub bonded: bool,
    /// 0x2A29.
    pub manufacturer: Option<String>,
    /// 0x2A24.
    pub model: Option<String>,
    /// 0x2A25.
    pub serial: Option<String>,
    /// 0x2A26.
    pub firmware: Option<String>,
    /// 0x2A27.
    pub hardware: Option<String>,
    /// 0x2A19, percent.
    pub battery: Option<u8>,
}

/// A device the gateway has paired and should keep connected.
#[derive(Clone, Debug)]
pub struct KnownDevice {
    /// The gateway's id for it (events carry it).
    pub device_id: String,
    /// `AA:BB:CC:DD:EE:FF`.
    pub address: String,
    /// Its kind.
    pub kind: DeviceKind,
    /// Glucose: sequence number of the last record durably stored by the
    /// gateway (-1 = none). The pipeline updates it after each commit; on
    /// every connection the session asks (RACP "report stored records,
    /// greater than or equal to" last+1, or "all records" when -1) so no
    /// record is missed across disconnects.
    pub glucose_cursor: Arc<AtomicI32>,
    /// When its bond was made: a new bond (pairing again after
    /// `needs_repair`) restarts its session.
    pub bonded_at_ms: i64,
    /// When the gateway first paired it (a device clock reading earlier was
    /// reset; [`hailan_proto::clock`]).
    pub paired_at_ms: i64,
    /// A shared device's mapped user slots, (user index, consent code):
    /// consent is given for each on every link (User Data Service), since a
    /// device sends a user's data only to a collector that gave it.
    pub consents: Vec<(u8, u16)>,
}

/// What the BLE layer tells the pipeline.
#[derive(Clone, Debug)]
pub enum BleEvent {
    /// A value on a Notify/Indicate characteristic of the device's kind, as
    /// received: measurements and their companions (0x2A36 intermediate cuff
    /// pressure, 0x2A1E intermediate temperature, 0x2A34 glucose context —
    /// which a meter sends right *after* the 0x2A18 record it belongs to,
    /// same sequence number). Not forwarded: RACP 0x2A52 responses (the
    /// session handles them) and battery 0x2A19 (a [`BleEvent::State`]).
    /// Undecodable bytes are forwarded too: the pipeline decides.
    Measurement {
        /// The gateway's id of the device ([`KnownDevice::device_id`]).
        device_id: String,
        /// The 16-bit UUID of the characteristic the value came on (e.g.
        /// 0x2A37 heart rate measurement).
        characteristic: u16,
        /// The characteristic value exactly as the device sent it, not yet
        /// decoded.
        bytes: Vec<u8>,
        /// Wall clock, ms since the Unix epoch, at receipt.
        received_at_ms: i64,
        /// The device's clock as read on this link (its Current Time), if
        /// it has one: what its time stamps are corrected by.
        clock: Option<hailan_proto::clock::DeviceClock>,
        /// When the gateway paired the device ([`KnownDevice::paired_at_ms`]).
        paired_at_ms: i64,
    },
    /// Connection, battery, RSSI or firmware changed; carries all current
    /// values. RSSI alone triggers one only when it moved by at least
    /// [`RSSI_DEAD_BAND`] dB since the last State (advertising RSSI jitters
    /// every second).
    State {
        /// The gateway's id of the device ([`KnownDevice::device_id`]).
        device_id: String,
        /// Whether the gateway holds a link to the device now.
        connected: bool,
        /// Battery level (0x2A19), percent; `None` until one was read.
        battery: Option<u8>,
        /// Signal strength, dBm; `None` until one was seen.
        rssi: Option<i16>,
        /// Firmware revision (0x2A26) read on connection; `None` if the
        /// device does not report it.
        firmware: Option<String>,
    },
    /// Every value of the device forwarded before this one: tell `receipt`
    /// once they are durably stored (the outbox committed them) or will not
    /// be. A session sends it before it deletes records from a device.
    Stored {
        /// The gateway's id of the device ([`KnownDevice::device_id`]).
        device_id: String,
        /// Settled by the pipeline.
        receipt: Receipt,
    },
    /// The device refused its bond: nothing more is taken from it until the
    /// owner pairs it again (`needs_repair`).
    NeedsRepair {
        /// The gateway's id of the device ([`KnownDevice::device_id`]).
        device_id: String,
        /// Why the bond was refused, as the BLE layer saw it; the pipeline
        /// logs it when it marks the device.
        reason: String,
    },
}

/// The answer to [`BleEvent::Stored`], settled once: `true` when every value
/// forwarded before it is in the outbox, `false` when some were refused or
/// failed. Dropped unsettled (by a pipeline that stopped), it reads `false`.
#[derive(Clone, Debug)]
pub struct Receipt(Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Sender<bool>>>>);

impl Receipt {
    /// A receipt and where its answer arrives.
    pub fn new() -> (Receipt, tokio::sync::oneshot::Receiver<bool>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Receipt(Arc::new(std::sync::Mutex::new(Some(tx)))), rx)
    }

    /// Give the answer (only the first counts).
    pub fn settle(&self, stored: bool) {
        let tx = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(tx) = tx {
            let _ = tx.send(stored);
        }
    }
}

/// RSSI changes smaller than this (dB) do not cause a [`BleEvent::State`] by themselves.
pub const RSSI_DEAD_BAND: i16 = 5;

/// Counters of what the BLE layer did (for tests, metrics and logs).
#[derive(Debug)]
pub struct BleStats {
    scan_restarts: AtomicU64,
    adapter_resets: AtomicU64,
    connections: AtomicU64,
    disconnections: AtomicU64,
    /// Links held now ([`slots`]).
    pub(crate) slots_held: AtomicU64,
    /// Devices waiting for a link now.
    pub(crate) slots_waiting: AtomicU64,
    /// Adapters powered and answering now.
    pub(crate) adapters_up: AtomicU64,
    /// Bumped with every counter, so one can await a change.
    changes: tokio::sync::watch::Sender<u64>,
}

impl Default for BleStats {
    fn default() -> Self {
        BleStats {
            scan_restarts: AtomicU64::new(0),
            adapter_resets: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            disconnections: AtomicU64::new(0),
            slots_held: AtomicU64::new(0),
            slots_waiting: AtomicU64::new(0),
            adapters_up: AtomicU64::new(0),
            changes: tokio::sync::watch::channel(0).0,
        }
    }
}

impl BleStats {
    /// Discovery restarts by the stall watchdog (stop + start discovery).
    pub fn scan_restarts(&self) -> u64 {
        self.scan_restarts.load(Ordering::Relaxed)
    }
    /// Adapter power resets (Powered off → on) by the watchdog.
    pub fn adapter_resets(&self) -> u64 {
        self.adapter_resets.load(Ordering::Relaxed)
    }
    /// Sessions that became connected and subscribed.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
    /// Established sessions that lost their link.
    pub fn disconnections(&self) -> u64 {
        self.disconnections.load(Ordering::Relaxed)
    }
    /// Links held at once now (at most `ble.max_connections`).
    pub fn slots_held(&self) -> u64 {
        self.slots_held.load(Ordering::Relaxed)
    }
    /// Devices waiting for a free link now.
    pub fn slots_waiting(&self) -> u64 {
        self.slots_waiting.load(Ordering::Relaxed)
    }
    /// Adapters powered and answering now (of those in use).
    pub fn adapters_up(&self) -> u64 {
        self.adapters_up.load(Ordering::Relaxed)
    }
    /// Wait until `pred` holds (checked now and after every counter change).
    pub async fn wait_for(&self, pred: impl Fn(&BleStats) -> bool) {
        let mut rx = self.changes.subscribe();
        while !pred(self) {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
    /// Record the adapters up now (wakes [`BleStats::wait_for`] on a change).
    pub(crate) fn set_adapters_up(&self, n: u64) {
        if self.adapters_up.swap(n, Ordering::Relaxed) != n {
            self.changes.send_modify(|c| *c = c.wrapping_add(1));
        }
    }
    fn bump(&self, counter: fn(&BleStats) -> &AtomicU64) {
        counter(self).fetch_add(1, Ordering::Relaxed);
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// The BLE layer on one or several adapters.
#[derive(Debug)]
pub struct Ble {
    cfg: BleConfig,
    /// At least one; the first does scans and pairing.
    radios: Vec<adapter::Radio>,
    /// Adapters named in the settings but not present at start.
    missing: Vec<String>,
    stats: Arc<BleStats>,
}

impl Ble {
    /// Connect to BlueZ and open the configured adapters (the error names
    /// a missing adapter and lists those present).
    pub async fn open(cfg: BleConfig) -> anyhow::Result<Ble> {
        let (radios, missing) = adapter::Radio::open(&cfg.adapters).await?;
        Ok(Ble {
            cfg,
            radios,
            missing,
            stats: Arc::default(),
        })
    }

    /// The adapters in use (`hci0`, …), the first doing scans and pairing.
    pub fn adapter_names(&self) -> Vec<String> {
        self.radios.iter().map(|r| r.name.clone()).collect()
    }

    /// The adapter scans and pairing use.
    fn first(&self) -> &adapter::Radio {
        &self.radios[0]
    }

    /// Counters, live (take them before [`Ble::run`] consumes `self`).
    pub fn stats(&self) -> Arc<BleStats> {
        self.stats.clone()
    }

    /// Scan for `duration`, calling `progress` for each new or updated nearby
    /// health device; return all found, strongest RSSI first.
    pub async fn scan(
        &self,
        duration: Duration,
        progress: impl FnMut(&Nearby),
    ) -> anyhow::Result<Vec<Nearby>> {
        scan::scan(self.first(), duration, progress).await
    }

    /// Find `who` (address or advertised name; scanning up to the pair
    /// timeout if not yet known), connect, bond when the kind needs it
    /// ("Already Paired" counts as success), discover services, check the
    /// kind's characteristics, read Device Information and battery, then
    /// disconnect.
    /// A device that needs a person to pair (a passkey it shows, a number to
    /// compare, a PIN) is answered from `answers` by the gateway's agent.
    pub async fn pair(
        &self,
        who: &str,
        answers: &agent::PairingAnswers,
    ) -> anyhow::Result<PairedInfo> {
        pair::pair(self.first(), &self.cfg, who, answers).await
    }

    /// Write `request` to the User Control Point of a paired shared device
    /// (User Data Service) and wait for its answer: a consent for a user
    /// slot, or a new slot ([`users`]).
    pub async fn user_control(
        &self,
        who: &str,
        request: hailan_proto::gatt::uds::UserControl,
    ) -> anyhow::Result<UserControlAnswer> {
        users::user_control(self.first(), &self.cfg, who, request).await
    }

    /// Remove `address` from BlueZ on every adapter in use
    /// (`Adapter1.RemoveDevice`): its bonds and its cached services go, so
    /// pairing it again asks for its passkey again. A device BlueZ does not
    /// know is not an error.
    pub async fn remove_device(&self, address: &str) -> anyhow::Result<()> {
        use anyhow::Context;
        let conn = zbus::Connection::system()
            .await
            .context("connecting to the system D-Bus (BlueZ)")?;
        for radio in &self.radios {
            remove_from(&conn, radio, address).await?;
        }
        Ok(())
    }

    /// Run until `shutdown` is cancelled: keep scanning (with the stall
    /// watchdog), keep one session per known device (following changes of
    /// `devices`), send events, beat while alive. Returns an error only if
    /// it cannot work at all (the event receiver or BlueZ's event stream is gone).
    pub async fn run(
        self,
        devices: tokio::sync::watch::Receiver<Vec<KnownDevice>>,
        events: tokio::sync::mpsc::Sender<BleEvent>,
        beat: Arc<crate::health::Beat>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<()> {
        supervisor::run(self, devices, events, beat, shutdown).await
    }
}

/// `Adapter1.RemoveDevice` of `address` on one adapter; "does not exist" is fine.
async fn remove_from(
    conn: &zbus::Connection,
    radio: &adapter::Radio,
    address: &str,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let id = radio.device_id(address)?;
    let device =
        zbus::zvariant::ObjectPath::try_from(format!("/org/bluez/{id}")).context("device path")?;
    let adapter = format!("/org/bluez/{}", radio.name);
    match conn
        .call_method(
            Some("org.bluez"),
            adapter.as_str(),
            Some("org.bluez.Adapter1"),
            "RemoveDevice",
            &(device,),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(zbus::Error::MethodError(name, msg, _))
            if name.as_str() == "org.bluez.Error.DoesNotExist"
                || msg.as_deref().is_some_and(|m| m.contains("does not exist")) =>
        {
            Ok(())
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "removing {address} from BlueZ (Adapter1.RemoveDevice on {adapter})"
        ))),
    }
}

/// Wall clock, ms since the Unix epoch.
pub(crate) fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
