//! One known device, kept connected: wait until BlueZ knows it, connect
//! (bounded by the connection semaphore), discover services, subscribe to
//! every Notify/Indicate characteristic of its kind (re-bonding if BlueZ
//! says "not paired"), read battery and firmware, fetch glucose records,
//! forward values, notice the link going away, reconnect with backoff.
//!
//! Disconnection is seen two ways: btleplug's `DeviceDisconnected` (from the
//! hub, double-checked with `Connected`, since a stale event from the previous
//! link can arrive after a reconnect) and any failed operation followed by
//! `Connected == false`.
//!
//! The notification stream of a device is opened once and kept across
//! reconnects: every stream dropped costs a D-Bus match rule removal that
//! bluez-async 0.9 does in a spawned task with `unwrap()`, which panics
//! (harmlessly, but noisily, and leaking the rule) when a signal arrives
//! between the drop and the removal.

use super::adapter::{CALL_TIMEOUT, Radio, error_name, needs_pairing};
use super::backoff::Backoff;
use super::gatt::{self, BATTERY_LEVEL, FIRMWARE_REVISION, GLUCOSE_MEASUREMENT, RACP};
use super::glucose;
use super::hub::Hub;
use super::pair::bond;
use super::{BleConfig, BleEvent, BleStats, KnownDevice, RSSI_DEAD_BAND, wall_ms};
use anyhow::{Context, bail};
use btleplug::api::{
    Central as _, CentralEvent, CharPropFlags, Characteristic, Peripheral as _, ValueNotification,
    WriteType,
};
use btleplug::platform::{Peripheral, PeripheralId};
use futures::{Stream, StreamExt};
use hailan_proto::gatt::DeviceKind;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{Semaphore, broadcast, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Connect + resolve services.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// While a device is unknown to BlueZ, look again this often (besides
/// reacting to its discovery event at once).
const LOOK_AGAIN: Duration = Duration::from_secs(2);

/// What every session shares.
pub(crate) struct SessionCtx {
    pub(crate) radio: Radio,
    pub(crate) cfg: BleConfig,
    pub(crate) hub: Arc<Hub>,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) stats: Arc<BleStats>,
    pub(crate) events: mpsc::Sender<BleEvent>,
}

type Notes = Pin<Box<dyn Stream<Item = ValueNotification> + Send>>;

/// Why a connection ended.
enum Ended {
    /// Cancelled (device forgotten, shutdown, event receiver gone).
    Cancelled,
    /// The link went away.
    Lost(String),
}

/// The values a [`BleEvent::State`] carries.
#[derive(Clone, Debug, Default, PartialEq)]
struct Status {
    connected: bool,
    battery: Option<u8>,
    rssi: Option<i16>,
    firmware: Option<String>,
}

impl Status {
    /// Worth a new State event compared with what was last sent?
    fn differs_enough(&self, sent: &Status) -> bool {
        let rssi_moved = match (self.rssi, sent.rssi) {
            (Some(a), Some(b)) => (a - b).abs() >= RSSI_DEAD_BAND,
            (a, b) => a != b,
        };
        self.connected != sent.connected
            || self.battery != sent.battery
            || self.firmware != sent.firmware
            || rssi_moved
    }
}

/// What one established connection needs to remember.
struct Link {
    battery: Option<Characteristic>,
    racp: Option<Characteristic>,
    /// An RACP procedure in flight, until this deadline.
    racp_pending: Option<Instant>,
    /// Highest glucose sequence number forwarded on this link.
    seen: Option<u16>,
}

/// A hub event, or "you missed some".
enum Heard {
    Event(CentralEvent),
    Lagged,
}

/// Next hub event; waits forever once the hub is gone (the supervisor
/// notices that and stops everything).
async fn hear(rx: &mut broadcast::Receiver<CentralEvent>) -> Heard {
    match rx.recv().await {
        Ok(ev) => Heard::Event(ev),
        Err(broadcast::error::RecvError::Lagged(_)) => Heard::Lagged,
        Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
    }
}

struct Session {
    ctx: Arc<SessionCtx>,
    device: watch::Receiver<KnownDevice>,
    device_id: String,
    kind: DeviceKind,
    /// `device_id (address)`, for logs and errors.
    label: String,
    pid: PeripheralId,
    central: broadcast::Receiver<CentralEvent>,
    status: Status,
    sent: Option<Status>,
    cancel: CancellationToken,
}

/// Run the session of one known device until `cancel`.
pub(crate) async fn run(
    ctx: Arc<SessionCtx>,
    device: watch::Receiver<KnownDevice>,
    cancel: CancellationToken,
) {
    let d = device.borrow().clone();
    let label = format!("{} ({})", d.device_id, d.address);
    let pid = match ctx.radio.peripheral_id(&d.address) {
        Ok(pid) => pid,
        Err(e) => {
            tracing::error!(device = %label, "cannot keep this device connected: {e:#}");
            return;
        }
    };
    let central = ctx.hub.subscribe();
    let mut s = Session {
        ctx,
        device,
        device_id: d.device_id,
        kind: d.kind,
        label,
        pid,
        central,
        status: Status::default(),
        sent: None,
        cancel,
    };
    s.run().await;
}

impl Session {
    async fn run(&mut self) {
        let mut backoff = Backoff::new(self.ctx.cfg.reconnect_min, self.ctx.cfg.reconnect_max);
        let Some(p) = self.wait_for_peripheral().await else {
            return;
        };
        let mut notes: Option<Notes> = None;
        loop {
            if self.cancel.is_cancelled() {
                break;
            }
            // Gone from BlueZ (adapter reset, cache expiry)? Wait for it again.
            if self.ctx.radio.central.peripheral(&self.pid).await.is_err()
                && self.wait_for_peripheral().await.is_none()
            {
                break;
            }
            if notes.is_none() {
                match p.notifications().await {
                    Ok(n) => notes = Some(n),
                    Err(e) => {
                        tracing::warn!(device = %self.label, "opening the notification stream: {e}")
                    }
                }
            }
            // Events from before this attempt are about an older link.
            self.central = self.central.resubscribe();
            let started = Instant::now();
            let cancel = self.cancel.clone();
            let mut during = self.ctx.hub.subscribe();
            let pid = self.pid.clone();
            let attempt = tokio::select! {
                _ = cancel.cancelled() => break,
                r = self.establish(&p) => r,
                () = dropped_while_connecting(&mut during, &pid) => {
                    Err(anyhow::anyhow!("the link dropped while connecting"))
                }
            };
            match (attempt, notes.as_mut()) {
                (Ok(link), Some(n)) => {
                    self.ctx.stats.bump(|s| &s.connections);
                    tracing::info!(device = %self.label, kind = self.kind.as_str(), "connected and subscribed");
                    self.status.connected = true;
                    if !self.publish().await {
                        break;
                    }
                    let end = self.connected(&p, n, link).await;
                    self.status.connected = false;
                    match end {
                        Ended::Cancelled => break,
                        Ended::Lost(why) => {
                            self.ctx.stats.bump(|s| &s.disconnections);
                            tracing::warn!(device = %self.label, "link lost ({why}); reconnecting");
                            if why.starts_with("notification stream") {
                                notes = None;
                            }
                        }
                    }
                    if !self.publish().await {
                        break;
                    }
                    if started.elapsed() >= self.ctx.cfg.reconnect_max {
                        backoff.reset();
                    }
                }
                (Ok(_), None) => {
                    tracing::warn!(device = %self.label, "connected, but no notification stream: retrying");
                    self.disconnect(&p).await;
                }
                (Err(e), _) => {
                    tracing::warn!(device = %self.label, "connection attempt failed: {e:#}");
                    // Start the next attempt from a clean link.
                    if p.is_connected().await.unwrap_or(false) {
                        self.disconnect(&p).await;
                    }
                }
            }
            let delay = backoff.next_delay();
            tracing::debug!(device = %self.label, "next connection attempt in {delay:?}");
            if !self.pause(delay).await {
                break;
            }
        }
        // Leaving (forgotten or shutting down): free the device.
        if p.is_connected().await.unwrap_or(false) {
            self.disconnect(&p).await;
        }
        if self.status.connected {
            self.status.connected = false;
            let _ = self.publish().await;
        }
    }

    async fn disconnect(&self, p: &Peripheral) {
        match tokio::time::timeout(CALL_TIMEOUT, p.disconnect()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(device = %self.label, "disconnecting: {e}"),
            Err(_) => tracing::debug!(device = %self.label, "disconnecting: no answer"),
        }
    }

    /// Send a State event if something changed enough. False if the
    /// receiver is gone (the session should end).
    async fn publish(&mut self) -> bool {
        if self
            .sent
            .as_ref()
            .is_some_and(|sent| !self.status.differs_enough(sent))
        {
            return true;
        }
        let s = self.status.clone();
        let ev = BleEvent::State {
            device_id: self.device_id.clone(),
            connected: s.connected,
            battery: s.battery,
            rssi: s.rssi,
            firmware: s.firmware.clone(),
        };
        self.sent = Some(s);
        self.send(ev).await
    }

    async fn send(&self, ev: BleEvent) -> bool {
        if self.ctx.events.send(ev).await.is_err() {
            tracing::debug!(device = %self.label, "event receiver gone");
            return false;
        }
        true
    }

    /// Note what the hub said about this device while not connected.
    async fn note(&mut self, heard: &Heard) -> bool {
        if let Heard::Event(CentralEvent::RssiUpdate { id, rssi }) = heard
            && *id == self.pid
        {
            self.status.rssi = Some(*rssi);
            return self.publish().await;
        }
        true
    }

    /// Wait `d` (listening for RSSI). False if cancelled.
    async fn pause(&mut self, d: Duration) -> bool {
        let until = Instant::now() + d;
        loop {
            let heard = tokio::select! {
                _ = self.cancel.cancelled() => return false,
                _ = tokio::time::sleep_until(until) => return true,
                h = hear(&mut self.central) => h,
            };
            if !self.note(&heard).await {
                return false;
            }
        }
    }

    /// The peripheral, once BlueZ knows the device (discovered by the
    /// scanner). None if cancelled.
    async fn wait_for_peripheral(&mut self) -> Option<Peripheral> {
        let mut told = false;
        loop {
            if let Ok(p) = self.ctx.radio.central.peripheral(&self.pid).await {
                if let Ok(Some(props)) = p.properties().await
                    && props.rssi.is_some()
                {
                    self.status.rssi = props.rssi;
                }
                return Some(p);
            }
            if !told {
                tracing::info!(device = %self.label, "not known to BlueZ yet: waiting for it to be discovered");
                told = true;
            }
            let until = Instant::now() + LOOK_AGAIN;
            loop {
                let heard = tokio::select! {
                    _ = self.cancel.cancelled() => return None,
                    _ = tokio::time::sleep_until(until) => break,
                    h = hear(&mut self.central) => h,
                };
                if let Heard::Event(CentralEvent::DeviceDiscovered(id)) = &heard
                    && *id == self.pid
                {
                    break;
                }
            }
        }
    }

    /// Connect, discover, subscribe, read battery/firmware, ask for glucose
    /// records. Holds a connection permit throughout.
    async fn establish(&mut self, p: &Peripheral) -> anyhow::Result<Link> {
        let _permit = self
            .ctx
            .permits
            .clone()
            .acquire_owned()
            .await
            .context("connection semaphore closed")?;
        let label = self.label.clone();
        tokio::time::timeout(CONNECT_TIMEOUT, p.connect())
            .await
            .with_context(|| {
                format!("connecting to {label}: no answer within {CONNECT_TIMEOUT:?}")
            })?
            .with_context(|| format!("connecting to {label}"))?;
        tokio::time::timeout(CALL_TIMEOUT, p.discover_services())
            .await
            .with_context(|| format!("discovering services of {label}: no answer"))?
            .with_context(|| format!("discovering services of {label}"))?;
        let kind = self.kind;
        let chars = gatt::characteristics_of(p, kind.service());
        if !kind.is_satisfied_by(&chars) {
            bail!(
                "{label}: service {:04X} has {chars:04X?}, not what a {} needs",
                kind.service(),
                kind.as_str()
            );
        }
        let mut bonded_now = false;
        for (u, required) in gatt::subscribed(kind) {
            let Some(c) = gatt::find(p, kind.service(), u) else {
                if required {
                    bail!("{label}: no characteristic {u:04X}");
                }
                continue;
            };
            match self.subscribe(p, &c).await {
                Ok(()) => {}
                Err(e) if gatt::needs_bond(kind) && !bonded_now && is_not_paired(&e) => {
                    tracing::warn!(device = %label, "BlueZ refuses {u:04X} without a bond: pairing again");
                    let id = self.ctx.radio.device_id(&self.device.borrow().address)?;
                    bond(&self.ctx.radio, &id, &label, self.ctx.cfg.pair_timeout).await?;
                    bonded_now = true;
                    self.subscribe(p, &c).await.with_context(|| {
                        format!("subscribing to {u:04X} of {label} after bonding")
                    })?;
                }
                Err(e) => return Err(e.context(format!("subscribing to {u:04X} of {label}"))),
            }
        }
        let battery = gatt::battery_char(p);
        if let Some(c) = &battery {
            if c.properties.contains(CharPropFlags::NOTIFY)
                && let Err(e) = self.subscribe(p, c).await
            {
                tracing::warn!(device = %label, "battery notifications: {e:#}");
            }
            match gatt::read(p, c).await {
                Ok(b) => {
                    if let Some(level) = gatt::decode_battery(&label, &b) {
                        self.status.battery = Some(level);
                    }
                }
                Err(e) => tracing::warn!(device = %label, "{e:#}"),
            }
        }
        if let Some(fw) = gatt::read_info_string(
            p,
            &label,
            FIRMWARE_REVISION,
            &hailan_proto::columns::FIRMWARE_VERSION,
        )
        .await
        {
            self.status.firmware = Some(fw);
        }
        let mut link = Link {
            battery,
            racp: None,
            racp_pending: None,
            seen: None,
        };
        if kind == DeviceKind::GlucoseMeter {
            link.racp = gatt::find(p, kind.service(), RACP);
            link.seen = glucose::last_seen(self.cursor());
            self.ask_for_records(p, &mut link).await?;
        }
        Ok(link)
    }

    fn cursor(&self) -> i32 {
        self.device.borrow().glucose_cursor.load(Ordering::Acquire)
    }

    /// Enable notifications/indications; "already notifying" is fine.
    async fn subscribe(&self, p: &Peripheral, c: &Characteristic) -> anyhow::Result<()> {
        let r = tokio::time::timeout(CALL_TIMEOUT, p.subscribe(c))
            .await
            .context("no answer")?;
        match r {
            Ok(()) => Ok(()),
            Err(e) if error_name(&e).as_deref() == Some("org.bluez.Error.InProgress") => Ok(()),
            Err(e) => Err(anyhow::Error::new(e)),
        }
    }

    /// RACP: report stored records after what the gateway holds.
    async fn ask_for_records(&self, p: &Peripheral, link: &mut Link) -> anyhow::Result<()> {
        let Some(c) = link.racp.clone() else {
            return Ok(());
        };
        let after = glucose::later(glucose::last_seen(self.cursor()), link.seen);
        let (req, bytes) = glucose::request(after);
        tokio::time::timeout(CALL_TIMEOUT, p.write(&c, &bytes, WriteType::WithResponse))
            .await
            .with_context(|| format!("RACP request to {}: no answer", self.label))?
            .with_context(|| format!("writing RACP request {req:?} to {}", self.label))?;
        tracing::debug!(device = %self.label, "RACP {req:?} sent");
        link.racp_pending = Some(Instant::now() + glucose::RESPONSE_TIMEOUT);
        Ok(())
    }

    async fn still_connected(&self, p: &Peripheral) -> bool {
        matches!(
            tokio::time::timeout(CALL_TIMEOUT, p.is_connected()).await,
            Ok(Ok(true))
        )
    }

    /// Forward values until the link ends.
    async fn connected(&mut self, p: &Peripheral, notes: &mut Notes, mut link: Link) -> Ended {
        let every = self
            .ctx
            .cfg
            .battery_interval
            .max(Duration::from_millis(100));
        let mut tick = tokio::time::interval_at(Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let racp_deadline = link.racp_pending;
            tokio::select! {
                _ = self.cancel.cancelled() => return Ended::Cancelled,
                n = notes.next() => {
                    let Some(n) = n else {
                        return Ended::Lost("notification stream ended".into());
                    };
                    if !self.on_value(&mut link, n).await {
                        return Ended::Cancelled;
                    }
                }
                heard = hear(&mut self.central) => match heard {
                    Heard::Event(CentralEvent::DeviceDisconnected(id)) if id == self.pid => {
                        if !self.still_connected(p).await {
                            return Ended::Lost("BlueZ reported the disconnection".into());
                        }
                    }
                    Heard::Lagged => {
                        if !self.still_connected(p).await {
                            return Ended::Lost("not connected (after missed events)".into());
                        }
                    }
                    other => {
                        if !self.note(&other).await {
                            return Ended::Cancelled;
                        }
                    }
                },
                _ = tick.tick() => {
                    if let Some(c) = link.battery.clone() {
                        match gatt::read(p, &c).await {
                            Ok(b) => {
                                if let Some(level) = gatt::decode_battery(&self.label, &b) {
                                    self.status.battery = Some(level);
                                    if !self.publish().await {
                                        return Ended::Cancelled;
                                    }
                                }
                            }
                            Err(e) => {
                                if !self.still_connected(p).await {
                                    return Ended::Lost(format!("{e:#}"));
                                }
                                tracing::warn!(device = %self.label, "{e:#}");
                            }
                        }
                    } else if !self.still_connected(p).await {
                        return Ended::Lost("not connected".into());
                    }
                    if link.racp.is_some() && link.racp_pending.is_none()
                        && let Err(e) = self.ask_for_records(p, &mut link).await
                    {
                        if !self.still_connected(p).await {
                            return Ended::Lost(format!("{e:#}"));
                        }
                        tracing::warn!(device = %self.label, "{e:#}");
                    }
                }
                _ = tokio::time::sleep_until(racp_deadline.unwrap_or_else(Instant::now)), if racp_deadline.is_some() => {
                    tracing::warn!(device = %self.label, "no RACP response within {:?}", glucose::RESPONSE_TIMEOUT);
                    link.racp_pending = None;
                }
            }
        }
    }

    /// Handle one value. False if the event receiver is gone.
    async fn on_value(&mut self, link: &mut Link, n: ValueNotification) -> bool {
        let Some(u) = gatt::uuid16(n.uuid.as_u128()) else {
            return true;
        };
        if u == BATTERY_LEVEL {
            if let Some(level) = gatt::decode_battery(&self.label, &n.value) {
                self.status.battery = Some(level);
                return self.publish().await;
            }
            return true;
        }
        if u == RACP && link.racp.is_some() {
            if glucose::on_response(&self.label, &n.value) {
                link.racp_pending = None;
            }
            return true;
        }
        if !gatt::forwarded(self.kind, u) {
            tracing::debug!(device = %self.label, "ignoring a value on {u:04X}");
            return true;
        }
        if u == GLUCOSE_MEASUREMENT {
            link.seen = glucose::later(link.seen, glucose::sequence_number(&n.value));
            // records keep the procedure alive
            if link.racp_pending.is_some() {
                link.racp_pending = Some(Instant::now() + glucose::RESPONSE_TIMEOUT);
            }
        }
        self.send(BleEvent::Measurement {
            device_id: self.device_id.clone(),
            characteristic: u,
            bytes: n.value,
            received_at_ms: wall_ms(),
        })
        .await
    }
}

/// Resolves when the link being established goes away again: BlueZ said
/// `Connected` (a `DeviceConnected` event), then not (`DeviceDisconnected`).
/// Without it, a link dropped between `Connect` and `ServicesResolved` leaves
/// bluez-async waiting 30 s for a service resolution that never comes, with a
/// connection permit held. Events about an older link come before this
/// attempt's `DeviceConnected`, so they are not mistaken for this one's end.
async fn dropped_while_connecting(rx: &mut broadcast::Receiver<CentralEvent>, pid: &PeripheralId) {
    let mut up = false;
    loop {
        match hear(rx).await {
            Heard::Event(CentralEvent::DeviceConnected(id)) if id == *pid => up = true,
            Heard::Event(CentralEvent::DeviceDisconnected(id)) if id == *pid && up => return,
            _ => {}
        }
    }
}

/// BlueZ says the link needs a bond.
fn is_not_paired(e: &anyhow::Error) -> bool {
    e.downcast_ref::<btleplug::Error>()
        .is_some_and(needs_pairing)
}
