//! One known device, kept connected: wait until BlueZ knows it, connect
//! (holding one of the adapter's [`slots`](super::slots)), discover services, subscribe to
//! every Notify/Indicate characteristic of its kind (re-bonding if BlueZ
//! says "not paired"), read battery and firmware, fetch glucose records,
//! forward values, notice the link going away, reconnect with backoff.
//!
//! A streaming device (heart rate, continuous SpO2) keeps its link. A device
//! that hands over measurements is connected when it is heard advertising
//! (or, if never heard, after the reconnect backoff's longest delay), and
//! its link is closed once no value came for `ble.idle_disconnect_s` and no
//! RACP procedure is in flight, giving its slot back.
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
use super::clock;
use super::gatt::{
    self, BATTERY_LEVEL, FIRMWARE_REVISION, GLUCOSE_MEASUREMENT, PLX_CONTINUOUS, PLX_SPOT_CHECK,
    RACP,
};
use super::glucose;
use super::placement::{AdapterCtx, Adapters};
use super::slots::{self, Slot};
use super::spot_checks::{self, Answer};
use super::{BleConfig, BleEvent, BleStats, KnownDevice, RSSI_DEAD_BAND, Receipt, wall_ms};
use anyhow::{Context, bail};
use btleplug::api::{
    Central as _, CentralEvent, CharPropFlags, Characteristic, Peripheral as _, ValueNotification,
    WriteType,
};
use btleplug::platform::{Peripheral, PeripheralId};
use futures::{Stream, StreamExt};
use hailan_proto::gatt::DeviceKind;
use hailan_proto::gatt::uds::{
    UCP_SUCCESS, USER_CONTROL_POINT, USER_DATA_SERVICE, UserControl, response_name,
};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Connect + resolve services.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// While a device is unknown to BlueZ, look again this often (besides
/// reacting to its discovery event at once).
const LOOK_AGAIN: Duration = Duration::from_secs(2);

/// What every session shares.
pub(crate) struct SessionCtx {
    /// The adapters, each with its hub and slots ([`placement`](super::placement)).
    pub(crate) adapters: Adapters,
    pub(crate) cfg: BleConfig,
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
    /// A hand-over device's link idled and was closed.
    Idle,
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
    /// The RACP is a pulse oximeter's: stored spot-checks, "all records".
    plx: bool,
    /// Spot-checks forwarded while their report was in flight.
    fetched: usize,
    /// The report ended with spot-checks taken: delete them once stored.
    delete_due: bool,
    /// When the last value came (or the link was set up).
    last_value: Instant,
    /// A shared device's User Control Point, when user slots are mapped.
    ucp: Option<Characteristic>,
    /// Mapped users not yet consented for on this link, (index, code).
    consents_left: std::collections::VecDeque<(u8, u16)>,
    /// The user whose consent the device has yet to answer.
    consenting: Option<u8>,
    /// When to act on consents: give up waiting for an answer (while
    /// `consenting`), else consent for the next user — once the current
    /// user's queued measurements have stopped coming.
    consent_next: Option<Instant>,
}

/// How long a device has to answer a consent.
const CONSENT_ANSWER: Duration = Duration::from_secs(5);
/// A consented user's queued measurements have all come once the link has
/// been this quiet: then the next user's consent.
const CONSENT_QUIET: Duration = Duration::from_secs(1);

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
    address: String,
    /// The adapter its links go through (`None` until placed).
    at: Option<usize>,
    /// Its id on that adapter.
    pid: PeripheralId,
    /// That adapter's events.
    central: broadcast::Receiver<CentralEvent>,
    /// Wakes when an adapter goes up or down.
    adapter_changes: watch::Receiver<u64>,
    /// Told the owner it waits for the one adapter holding its bond.
    told_bond_bound: bool,
    /// Counted as streaming where it is placed (fixed at the start: a
    /// spot-check oximeter found out later stays counted as it was).
    placed_streaming: bool,
    /// Which adapters hold its bond, as last told by each (an adapter that
    /// is gone cannot say; what it said before still holds).
    bonds: Vec<bool>,
    status: Status,
    sent: Option<Status>,
    cancel: CancellationToken,
    /// Holds its link (streams) rather than handing over measurements.
    streaming: bool,
    /// Heard advertising since its last link ended.
    heard: bool,
    /// When the gateway paired it.
    paired_at_ms: i64,
    /// Its Current Time characteristic and its clock as read on this link.
    clock: Option<(Characteristic, Option<hailan_proto::clock::DeviceClock>)>,
}

/// Run the session of one known device until `cancel`.
pub(crate) async fn run(
    ctx: Arc<SessionCtx>,
    device: watch::Receiver<KnownDevice>,
    cancel: CancellationToken,
) {
    let d = device.borrow().clone();
    let label = format!("{} ({})", d.device_id, d.address);
    let Some(first) = ctx.adapters.all.first() else {
        return;
    };
    let pid = match first.radio.peripheral_id(&d.address) {
        Ok(pid) => pid,
        Err(e) => {
            tracing::error!(device = %label, "cannot keep this device connected: {e:#}");
            return;
        }
    };
    let central = first.hub.subscribe();
    let adapter_changes = ctx.adapters.watch();
    let mut s = Session {
        ctx: ctx.clone(),
        device,
        device_id: d.device_id,
        kind: d.kind,
        label,
        address: d.address,
        at: None,
        pid,
        central,
        adapter_changes,
        told_bond_bound: false,
        placed_streaming: slots::streams(d.kind),
        bonds: vec![false; ctx.adapters.all.len()],
        status: Status::default(),
        sent: None,
        cancel,
        streaming: slots::streams(d.kind),
        heard: false,
        paired_at_ms: d.paired_at_ms,
        clock: None,
    };
    s.run().await;
    ctx.adapters.unplace(s.at, s.placed_streaming);
}

impl Session {
    async fn run(&mut self) {
        let mut backoff = Backoff::new(self.ctx.cfg.reconnect_min, self.ctx.cfg.reconnect_max);
        let mut found: Option<Peripheral> = None;
        let mut notes: Option<Notes> = None;
        // Given back only once the link is down (a slot is a link).
        let mut slot: Option<Slot> = None;
        loop {
            if self.cancel.is_cancelled() {
                break;
            }
            if self.place().await {
                // Another adapter: another object, another notification stream.
                if let Some(mut old) = notes.take()
                    && !self.forward_left_over(&mut old).await
                {
                    break;
                }
                found = None;
            }
            // Not yet known, or gone from BlueZ (adapter reset, cache
            // expiry)? Wait for it (again).
            let known = match &found {
                Some(_) => self.radio().central.peripheral(&self.pid).await.is_ok(),
                None => false,
            };
            if !known {
                match self.wait_for_peripheral().await {
                    Some(p) => found = Some(p),
                    None if self.cancel.is_cancelled() => break,
                    // Its adapter went down: place it again.
                    None => continue,
                }
            }
            let Some(p) = found.clone() else { continue };
            if notes.is_none() {
                match p.notifications().await {
                    Ok(n) => notes = Some(n),
                    Err(e) => {
                        tracing::warn!(device = %self.label, "opening the notification stream: {e}")
                    }
                }
            }
            // A hand-over device is connected when it advertises.
            if !self.streaming {
                if !self.wait_until_heard(self.ctx.cfg.reconnect_max).await {
                    break;
                }
                if self.adapter_went_down() {
                    // Heard before its adapter went: hear it anew (else a
                    // device that cannot move would spin here).
                    self.heard = false;
                    continue;
                }
            }
            let slots = self.adapter().slots.clone();
            slot = Some(tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break,
                slot = slots.take(self.streaming) => slot,
            });
            self.heard = false;
            // Events from before this attempt are about an older link.
            self.central = self.central.resubscribe();
            let started = Instant::now();
            let cancel = self.cancel.clone();
            let mut during = self.adapter().hub.subscribe();
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
                    self.heard = false;
                    match end {
                        Ended::Cancelled => break,
                        Ended::Idle => {
                            self.set_clock(&p).await;
                            tracing::info!(device = %self.label, "idle: link closed until it advertises again");
                            self.disconnect(&p).await;
                            backoff.reset();
                        }
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
                (Err(e), _)
                    if e.downcast_ref::<BondRefused>().is_some() && self.bond_elsewhere().await =>
                {
                    tracing::warn!(
                        device = %self.label,
                        "{e:#}: BlueZ holds no bond of it through {}; it waits for an adapter that does (or pair it through this one: `hailan-gateway pair {} --adapter {}`)",
                        self.radio().name,
                        self.address,
                        self.radio().name
                    );
                    if let Some(at) = self.at
                        && let Some(b) = self.bonds.get_mut(at)
                    {
                        *b = false;
                    }
                    self.disconnect(&p).await;
                    drop(slot.take());
                    if !self.pause(self.ctx.cfg.reconnect_max).await {
                        break;
                    }
                    continue;
                }
                (Err(e), _) if e.downcast_ref::<BondRefused>().is_some() => {
                    tracing::error!(
                        device = %self.label,
                        "{e:#}: marked needs_repair; pair it again with `hailan-gateway pair {}`",
                        self.device.borrow().address
                    );
                    self.disconnect(&p).await;
                    drop(slot.take());
                    let reason = e.to_string();
                    let device_id = self.device_id.clone();
                    if !self.send(BleEvent::NeedsRepair { device_id, reason }).await {
                        break;
                    }
                    // No more attempts: the supervisor ends this session
                    // when the device leaves the list (until it is re-paired).
                    self.cancel.cancelled().await;
                    break;
                }
                (Err(e), _) => {
                    tracing::warn!(device = %self.label, "connection attempt failed: {e:#}");
                    // Start the next attempt from a clean link.
                    if p.is_connected().await.unwrap_or(false) {
                        self.disconnect(&p).await;
                    }
                }
            }
            // The link is down: the slot goes back before any pause.
            drop(slot.take());
            let delay = backoff.next_delay();
            tracing::debug!(device = %self.label, "next connection attempt in {delay:?}");
            if !self.pause(delay).await {
                break;
            }
        }
        // Leaving (forgotten or shutting down): free the device, then its slot.
        if let Some(p) = &found
            && p.is_connected().await.unwrap_or(false)
        {
            self.disconnect(p).await;
        }
        drop(slot);
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
        let Heard::Event(ev) = heard else {
            return true;
        };
        if advertised_by(ev, &self.pid) {
            self.heard = true;
        }
        if let CentralEvent::RssiUpdate { id, rssi } = ev
            && *id == self.pid
        {
            self.status.rssi = Some(*rssi);
            return self.publish().await;
        }
        true
    }

    /// Wait until the device is heard advertising, or `fallback` passed
    /// (an advertisement whose RSSI did not change makes no D-Bus signal).
    /// False if cancelled.
    async fn wait_until_heard(&mut self, fallback: Duration) -> bool {
        self.listen(fallback, true).await
    }

    /// Wait `d` (listening for RSSI). False if cancelled.
    async fn pause(&mut self, d: Duration) -> bool {
        self.listen(d, false).await
    }

    /// Note hub events for up to `d`, or until the device is heard if
    /// `until_heard`. False if cancelled.
    /// Also ends (true) when its adapter went down and another may take it.
    async fn listen(&mut self, d: Duration, until_heard: bool) -> bool {
        let until = Instant::now() + d;
        while !(until_heard && self.heard) {
            let heard = tokio::select! {
                _ = self.cancel.cancelled() => return false,
                _ = tokio::time::sleep_until(until) => return true,
                () = adapter_change(&mut self.adapter_changes) => {
                    if self.adapter_went_down() {
                        return true;
                    }
                    continue;
                }
                h = hear(&mut self.central) => h,
            };
            if !self.note(&heard).await {
                return false;
            }
        }
        true
    }

    /// The adapter the session is placed on.
    fn adapter(&self) -> &AdapterCtx {
        let i = self.at.unwrap_or(0);
        &self.ctx.adapters.all[i.min(self.ctx.adapters.all.len() - 1)]
    }

    fn radio(&self) -> &Radio {
        &self.adapter().radio
    }

    /// Its adapter is down while another could take its links.
    fn adapter_went_down(&self) -> bool {
        let all = &self.ctx.adapters.all;
        all.len() > 1 && !self.adapter().up() && all.iter().any(AdapterCtx::up)
    }

    /// Place the session on the adapter for its next link
    /// ([`placement::choose`](super::placement::choose)). True if that is
    /// another adapter than before (or the first placement).
    async fn place(&mut self) -> bool {
        let adapters = &self.ctx.adapters;
        let bonds = if adapters.all.len() > 1 && gatt::needs_bond(self.kind) {
            let told = adapters.bonds(&self.address).await;
            for (known, now) in self.bonds.iter_mut().zip(told) {
                if let Some(now) = now {
                    *known = now;
                }
            }
            Some(self.bonds.clone())
        } else {
            None
        };
        let to = adapters.place(self.at, bonds.as_deref(), self.placed_streaming);
        let bond_bound = bonds.as_ref().is_some_and(|b| b.iter().any(|x| *x));
        if bond_bound
            && !adapters.all[to].up()
            && adapters.all.iter().any(AdapterCtx::up)
            && !std::mem::replace(&mut self.told_bond_bound, true)
        {
            tracing::warn!(
                device = %self.label,
                "bonded only through adapters that are down: it waits for them; pair it through another adapter too (`hailan-gateway pair {} --adapter NAME`) to let it move",
                self.address
            );
        }
        if Some(to) == self.at {
            return false;
        }
        let from = self.at.replace(to);
        // The address was checked when the session started.
        match adapters.all[to].radio.peripheral_id(&self.address) {
            Ok(pid) => self.pid = pid,
            Err(e) => tracing::error!(device = %self.label, "{e:#}"),
        }
        self.told_bond_bound = false;
        self.central = adapters.all[to].hub.subscribe();
        self.heard = false;
        if let Some(from) = from {
            tracing::info!(
                device = %self.label,
                from = %adapters.all[from].radio.name,
                to = %adapters.all[to].radio.name,
                "moves to another adapter"
            );
        }
        true
    }

    /// The bond was refused on an adapter where BlueZ holds none for the
    /// device, while its bond may be on another adapter (one known to hold
    /// it, one down, or one missing since start): not a lost bond.
    async fn bond_elsewhere(&self) -> bool {
        let adapters = &self.ctx.adapters;
        if adapters.all.len() < 2 && !adapters.some_missing {
            return false;
        }
        if super::placement::bonded_on(self.radio(), &self.address).await {
            return false;
        }
        let here = self.at.unwrap_or(0);
        adapters.some_missing
            || self.bonds.iter().enumerate().any(|(i, b)| *b && i != here)
            || adapters.all.iter().any(|a| !a.up())
    }

    /// Values that reached the old adapter's notification stream before the
    /// link dropped, forwarded before that stream goes. False if the event
    /// receiver is gone.
    async fn forward_left_over(&mut self, notes: &mut Notes) -> bool {
        use futures::FutureExt;
        while let Some(Some(n)) = notes.next().now_or_never() {
            let Some(u) = gatt::uuid16(n.uuid.as_u128()) else {
                continue;
            };
            if u == BATTERY_LEVEL || u == RACP || !gatt::forwarded(self.kind, u) {
                continue;
            }
            if !self.send(self.measurement(u, n.value)).await {
                return false;
            }
        }
        true
    }

    /// The peripheral, once BlueZ knows the device (discovered by the
    /// scanner). None if cancelled, or if its adapter went down meanwhile.
    async fn wait_for_peripheral(&mut self) -> Option<Peripheral> {
        let mut told = false;
        loop {
            if let Ok(p) = self.radio().central.peripheral(&self.pid).await {
                if let Ok(Some(props)) = p.properties().await
                    && props.rssi.is_some()
                {
                    // BlueZ drops RSSI when discovery stops: heard in this one.
                    self.status.rssi = props.rssi;
                    self.heard = true;
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
                    () = adapter_change(&mut self.adapter_changes) => {
                        if self.adapter_went_down() {
                            return None;
                        }
                        continue;
                    }
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
    /// records. The caller holds a slot.
    async fn establish(&mut self, p: &Peripheral) -> anyhow::Result<Link> {
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
        // The clock before any value: stored ones arrive on subscription.
        self.clock = match clock::find(p) {
            Some(c) => {
                let read = clock::read(p, &c, &label, self.paired_at_ms).await;
                Some((c, read))
            }
            None => None,
        };
        for (u, required) in gatt::subscribed(kind) {
            let Some(c) = gatt::find(p, kind.service(), u) else {
                if required {
                    bail!("{label}: no characteristic {u:04X}");
                }
                continue;
            };
            match self.subscribe(p, &c).await {
                Ok(()) => {}
                Err(e) if gatt::needs_bond(kind) && is_not_paired(&e) => {
                    // The bond is gone on one side (the device was reset or
                    // its battery changed, or BlueZ lost it) — or this is
                    // not the device that was paired. Never re-bond without
                    // the owner: an impostor at the same address would be let in.
                    return Err(anyhow::Error::new(BondRefused(format!(
                        "{u:04X} refused on the bonded link: {e:#}"
                    ))));
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
        if kind == DeviceKind::PulseOximeter
            && gatt::find(p, kind.service(), PLX_CONTINUOUS).is_none()
        {
            // A spot-check oximeter: it hands over, like a cuff.
            self.streaming = false;
        }
        let mut link = Link {
            battery,
            racp: None,
            racp_pending: None,
            seen: None,
            plx: false,
            fetched: 0,
            delete_due: false,
            last_value: Instant::now(),
            ucp: None,
            consents_left: Default::default(),
            consenting: None,
            consent_next: None,
        };
        let consents = self.device.borrow().consents.clone();
        if !consents.is_empty() {
            link.ucp = self.user_control_point(p).await;
            if link.ucp.is_some() {
                link.consents_left = consents.into();
                self.consent_next(p, &mut link).await;
            }
        }
        if kind == DeviceKind::GlucoseMeter {
            link.racp = gatt::find(p, kind.service(), RACP);
            link.seen = glucose::last_seen(self.cursor());
            self.ask_for_records(p, &mut link).await?;
        }
        if kind == DeviceKind::PulseOximeter {
            link.racp = gatt::find(p, kind.service(), RACP);
            link.plx = link.racp.is_some();
            if link.plx {
                self.write_racp(
                    p,
                    &mut link,
                    spot_checks::report_all(),
                    "report all stored spot-checks",
                )
                .await?;
            }
        }
        Ok(link)
    }

    /// The User Control Point of a shared device with mapped user slots,
    /// subscribed (its answers come as indications).
    async fn user_control_point(&self, p: &Peripheral) -> Option<Characteristic> {
        let Some(c) = gatt::find(p, USER_DATA_SERVICE, USER_CONTROL_POINT) else {
            tracing::warn!(device = %self.label, "user slots are mapped but the device has no User Control Point");
            return None;
        };
        match self.subscribe(p, &c).await {
            Ok(()) => Some(c),
            Err(e) => {
                tracing::warn!(device = %self.label, "user control point: {e:#}");
                None
            }
        }
    }

    /// Give consent for the next mapped user on this link (User Data
    /// Service): a shared device sends a user's measurements, queued ones
    /// included, only to a collector that proved the user's consent code —
    /// some only those of the user who consented last, so users are taken
    /// one at a time. The answer comes on the User Control Point
    /// ([`Self::consented`]).
    async fn consent_next(&self, p: &Peripheral, link: &mut Link) {
        link.consent_next = None;
        let Some(c) = link.ucp.clone() else { return };
        while let Some((user_index, consent)) = link.consents_left.pop_front() {
            let request = UserControl::Consent {
                user_index,
                consent,
            };
            match tokio::time::timeout(
                CALL_TIMEOUT,
                p.write(&c, &request.encode(), WriteType::WithResponse),
            )
            .await
            {
                Ok(Ok(())) => {
                    link.consenting = Some(user_index);
                    link.consent_next = Some(Instant::now() + CONSENT_ANSWER);
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!(device = %self.label, user_index, "writing the consent: {e}")
                }
                Err(_) => {
                    tracing::warn!(device = %self.label, user_index, "writing the consent: no answer")
                }
            }
        }
    }

    /// Set the device's clock if it is off and `ble.set_device_clock`.
    async fn set_clock(&mut self, p: &Peripheral) {
        if !self.ctx.cfg.set_device_clock {
            return;
        }
        let Some((c, Some(was))) = self.clock.clone() else {
            return;
        };
        if clock::needs_setting(was)
            && let Some(now) = clock::set(p, &c, &self.label, was).await
        {
            self.clock = Some((c, Some(now)));
        }
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

    /// Write an RACP request; its procedure is in flight until its response
    /// (or [`glucose::RESPONSE_TIMEOUT`]).
    async fn write_racp(
        &self,
        p: &Peripheral,
        link: &mut Link,
        bytes: Vec<u8>,
        what: &str,
    ) -> anyhow::Result<()> {
        let Some(c) = link.racp.clone() else {
            return Ok(());
        };
        tokio::time::timeout(CALL_TIMEOUT, p.write(&c, &bytes, WriteType::WithResponse))
            .await
            .with_context(|| format!("RACP request to {}: no answer", self.label))?
            .with_context(|| format!("writing RACP request ({what}) to {}", self.label))?;
        tracing::debug!(device = %self.label, "RACP: {what}");
        link.racp_pending = Some(Instant::now() + glucose::RESPONSE_TIMEOUT);
        Ok(())
    }

    /// The oximeter's spot-checks were all sent: once the pipeline has every
    /// one in the outbox, delete them from the device; otherwise keep them
    /// there for the next link.
    async fn delete_once_stored(&mut self, p: &Peripheral, link: &mut Link) -> anyhow::Result<()> {
        let (receipt, stored) = Receipt::new();
        let asked = BleEvent::Stored {
            device_id: self.device_id.clone(),
            receipt,
        };
        if !self.send(asked).await {
            return Ok(());
        }
        let n = std::mem::take(&mut link.fetched);
        // Proving may queue behind other devices' readings: wait long, but
        // not past a cancel.
        let answer = tokio::select! {
            _ = self.cancel.cancelled() => return Ok(()),
            a = tokio::time::timeout(spot_checks::STORED_WITHIN, stored) => a,
        };
        match answer {
            Ok(Ok(true)) => {
                tracing::info!(device = %self.label, "{n} stored spot-check(s) taken: deleting them from the device");
                self.write_racp(
                    p,
                    link,
                    spot_checks::delete_all(),
                    "delete all stored spot-checks",
                )
                .await
            }
            _ => {
                tracing::warn!(device = %self.label, "stored spot-checks not all in the outbox: kept on the device for the next link");
                Ok(())
            }
        }
    }

    /// RACP: report stored records after what the gateway holds.
    async fn ask_for_records(&self, p: &Peripheral, link: &mut Link) -> anyhow::Result<()> {
        let after = glucose::later(glucose::last_seen(self.cursor()), link.seen);
        let (req, bytes) = glucose::request(after);
        self.write_racp(p, link, bytes, &format!("{req:?}")).await
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
        let idle_after = self.ctx.cfg.idle_disconnect;
        loop {
            let racp_deadline = link.racp_pending;
            let consent_due = link.consent_next;
            let idles = !self.streaming && racp_deadline.is_none() && consent_due.is_none();
            tokio::select! {
                _ = self.cancel.cancelled() => return Ended::Cancelled,
                _ = tokio::time::sleep_until(link.last_value + idle_after), if idles => return Ended::Idle,
                n = notes.next() => {
                    let Some(n) = n else {
                        return Ended::Lost("notification stream ended".into());
                    };
                    if !self.on_value(&mut link, n).await {
                        return Ended::Cancelled;
                    }
                    if std::mem::take(&mut link.delete_due)
                        && let Err(e) = self.delete_once_stored(p, &mut link).await
                    {
                        if !self.still_connected(p).await {
                            return Ended::Lost(format!("{e:#}"));
                        }
                        tracing::warn!(device = %self.label, "{e:#}");
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
                    if link.racp.is_some() && !link.plx && link.racp_pending.is_none()
                        && let Err(e) = self.ask_for_records(p, &mut link).await
                    {
                        if !self.still_connected(p).await {
                            return Ended::Lost(format!("{e:#}"));
                        }
                        tracing::warn!(device = %self.label, "{e:#}");
                    }
                }
                _ = tokio::time::sleep_until(consent_due.unwrap_or_else(Instant::now)), if consent_due.is_some() => {
                    if let Some(user_index) = link.consenting.take() {
                        tracing::warn!(device = %self.label, user_index, "no answer to the consent within {CONSENT_ANSWER:?}");
                    }
                    self.consent_next(p, &mut link).await;
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
        // A measurement or an RACP answer keeps a hand-over link up; a
        // battery level does not.
        link.last_value = Instant::now();
        if u == USER_CONTROL_POINT {
            self.consented(link, &n.value);
            return true;
        }
        if u == RACP && link.racp.is_some() {
            if link.plx {
                match spot_checks::answer(&self.label, &n.value) {
                    Some(Answer::Reported(true)) if link.fetched > 0 => {
                        link.racp_pending = None;
                        link.delete_due = true;
                    }
                    Some(_) => link.racp_pending = None,
                    None => {}
                }
            } else if glucose::on_response(&self.label, &n.value) {
                link.racp_pending = None;
            }
            return true;
        }
        if u == PLX_SPOT_CHECK && link.plx && link.racp_pending.is_some() {
            link.fetched += 1;
            // records keep the procedure alive
            link.racp_pending = Some(Instant::now() + glucose::RESPONSE_TIMEOUT);
        }
        if !gatt::forwarded(self.kind, u) {
            tracing::debug!(device = %self.label, "ignoring a value on {u:04X}");
            return true;
        }
        if link.consenting.is_none() && link.consent_next.is_some() {
            // The consented user's measurements are still coming.
            link.consent_next = Some(Instant::now() + CONSENT_QUIET);
        }
        if u == GLUCOSE_MEASUREMENT {
            link.seen = glucose::later(link.seen, glucose::sequence_number(&n.value));
            // records keep the procedure alive
            if link.racp_pending.is_some() {
                link.racp_pending = Some(Instant::now() + glucose::RESPONSE_TIMEOUT);
            }
        }
        self.send(self.measurement(u, n.value)).await
    }

    /// The device's answer to a consent written on this link.
    fn consented(&self, link: &mut Link, bytes: &[u8]) {
        match UserControl::decode(bytes) {
            Ok(UserControl::Response {
                request_op_code: 0x02,
                value,
                ..
            }) => {
                let user_index = link.consenting.take();
                // The next user once this one's queued measurements are in.
                link.consent_next =
                    (!link.consents_left.is_empty()).then(|| Instant::now() + CONSENT_QUIET);
                if value == UCP_SUCCESS {
                    tracing::info!(device = %self.label, ?user_index, "user consent given");
                } else {
                    tracing::warn!(device = %self.label, ?user_index, "user consent refused: {} (the user's readings do not come; map the user again with `hailan-gateway pair <device> --user-index N --consent C`)", response_name(value));
                }
            }
            Ok(other) => tracing::debug!(device = %self.label, "user control point: {other:?}"),
            Err(e) => {
                tracing::warn!(device = %self.label, "user control point: undecodable {bytes:02X?}: {e}")
            }
        }
    }

    /// The event for a value on characteristic `u`, received now.
    fn measurement(&self, u: u16, bytes: Vec<u8>) -> BleEvent {
        BleEvent::Measurement {
            device_id: self.device_id.clone(),
            characteristic: u,
            bytes,
            received_at_ms: wall_ms(),
            clock: self.clock.as_ref().and_then(|(_, c)| *c),
            paired_at_ms: self.paired_at_ms,
        }
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

/// The next adapter up/down change (never, once nobody sends them).
async fn adapter_change(rx: &mut watch::Receiver<u64>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// An advertisement of `pid` (found, or heard again: RSSI, data, services).
fn advertised_by(ev: &CentralEvent, pid: &PeripheralId) -> bool {
    match ev {
        CentralEvent::DeviceDiscovered(id)
        | CentralEvent::RssiUpdate { id, .. }
        | CentralEvent::ManufacturerDataAdvertisement { id, .. }
        | CentralEvent::ServiceDataAdvertisement { id, .. }
        | CentralEvent::ServicesAdvertisement { id, .. } => id == pid,
        _ => false,
    }
}

/// A bonded device's link refused what needs the bond.
#[derive(Debug, thiserror::Error)]
#[error("the bond of this device is lost ({0})")]
struct BondRefused(String);

fn is_not_paired(e: &anyhow::Error) -> bool {
    e.downcast_ref::<btleplug::Error>()
        .is_some_and(needs_pairing)
}
