//! Per reading: decode → slots → (window) → prove and seal → outbox
//! (DESIGN §5.1, §7).
//!
//! One worker task per device keeps that device's readings in seq order:
//! it owns the open window and the next seq, proves on the blocking pool
//! (never on the async runtime that carries BLE events; `prover_threads`
//! bounds how many proofs run at once), and commits each group to the
//! outbox. A window closes on `window_size` readings, on `window_max_ms`
//! after its first reading, before an unwindowable reading of the same
//! device, and when the pipeline shuts down.

use crate::ble::{BleEvent, Receipt};
use crate::config::PipelineConfig;
use crate::keys::Keys;
use crate::metrics::Metrics;
use crate::publisher::Link;
use crate::store::{NewReadings, Refused, Route, Store};
use anyhow::{Context, Result};
use hailan_proto::envelope::{Body, DeviceState, Envelope, ReadingBatch};
use hailan_proto::gatt::{self, BodyCompositionMeasurement, Characteristic, Decoded, DeviceKind};
use hailan_proto::group::{Prover, Taken};
use hailan_proto::zk::DeviceSecret;
use hailan_proto::{DataType, ProvenGroup};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Glucose cursors shared with the BLE sessions (last record stored, -1 = none).
pub type Cursors = Arc<std::sync::Mutex<HashMap<String, Arc<AtomicI32>>>>;

/// Wall clock, milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// What the pipeline shares with its device workers.
pub struct Pipeline {
    /// The `[pipeline]` section: windowed data types, window limits, prover
    /// threads, state refresh period.
    pub cfg: PipelineConfig,
    /// This gateway's id, put in every envelope and reading header (and so
    /// bound into every proof's context).
    pub gateway_id: String,
    /// The owner's data key that seals each value, and the reading and
    /// window proving keys.
    pub keys: Arc<Keys>,
    /// The durable store: each device's secret and next seq, and the outbox
    /// that proven readings and device states are committed to.
    pub store: Arc<Store>,
    /// Woken after every outbox commit (the publisher waits on it).
    pub outbox_changed: Arc<Notify>,
    /// The daemon's metrics (readings taken, queued, refused, unproven …).
    pub metrics: Arc<Metrics>,
    /// Each glucose meter's cursor, shared with its BLE session; advanced
    /// after each commit so the next RACP request starts after it.
    pub cursors: Cursors,
    /// The broker link (from the publisher): on every (re)connection, and
    /// every `state_refresh_s` while connected, every paired device's state
    /// is sent again.
    pub link: tokio::sync::watch::Receiver<crate::publisher::Link>,
}

/// One decoded measurement on its way to a device worker.
struct Item {
    taken: Taken,
    glucose_record: Option<u16>,
    /// The user slot (User Data Service user index) the measurement names.
    user: Option<u8>,
    /// A held reading the owner assigned ([`crate::store::HeldRow::id`]):
    /// it leaves the hold in the transaction that commits it.
    held: Option<i64>,
}

/// The device workers of a running pipeline, by device or user slot id.
struct Workers {
    senders: HashMap<String, mpsc::Sender<Job>>,
    tasks: JoinSet<()>,
    provers: Arc<Semaphore>,
    /// Devices with a reading dropped here since their last `Stored`.
    dropped: std::collections::HashSet<String>,
}

/// How often assigned readings are looked for, and how long one handed to
/// its worker is left alone before it is handed again (its commit failed).
const ASSIGNED_POLL: Duration = Duration::from_secs(1);
const ASSIGNED_RETRY: Duration = Duration::from_secs(60);

/// What a device's worker is asked to do, in order.
enum Job {
    /// Prove, seal and commit a reading (or add it to the open window).
    Take(Item),
    /// Close the open window, then settle the receipt: were all readings
    /// taken since the last flush committed?
    Flush(Receipt),
}

/// Last state published per device (to publish only changes).
#[derive(Clone, Debug, PartialEq)]
struct LastState {
    connected: bool,
    battery: Option<u8>,
    rssi: Option<i16>,
    firmware: Option<String>,
    at: Instant,
}

/// First halves of multiple-packet Body Composition measurements, per device,
/// with when they arrived.
type Halves = HashMap<String, (BodyCompositionMeasurement, i64)>;

/// The second packet of a Body Composition measurement follows the first at
/// once (two indications in a row); a first half older than this is from a
/// measurement whose second half was lost.
const SECOND_HALF_WITHIN_MS: i64 = 10_000;

/// RSSI moves all the time; publish it only on a large change, rarely.
const RSSI_STEP_DBM: i16 = 10;
const RSSI_MIN_INTERVAL: Duration = Duration::from_secs(60);

impl Pipeline {
    /// Consume BLE events until the channel closes or `stop` is cancelled
    /// (after the BLE layer stopped: what it already sent is still taken),
    /// then flush every open window and return.
    pub async fn run(
        self,
        mut events: mpsc::Receiver<BleEvent>,
        stop: tokio_util::sync::CancellationToken,
    ) -> Result<()> {
        let shared = Arc::new(self);
        let mut workers = Workers {
            senders: HashMap::new(),
            tasks: JoinSet::new(),
            provers: Arc::new(Semaphore::new(shared.cfg.prover_threads)),
            dropped: Default::default(),
        };
        let mut handed: HashMap<i64, Instant> = HashMap::new();
        let mut assigned = tokio::time::interval(ASSIGNED_POLL);
        assigned.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut states: HashMap<String, LastState> = HashMap::new();
        let mut halves = Halves::new();
        let mut link = shared.link.clone();
        let mut link_open = true;
        let period = shared.cfg.state_refresh();
        let mut refresh = tokio::time::interval_at(Instant::now() + period, period);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let ev = tokio::select! {
                ev = events.recv() => ev,
                changed = link.changed(), if link_open && !stop.is_cancelled() => {
                    match changed {
                        Ok(()) => {
                            let connected = *link.borrow_and_update() == Link::Connected;
                            if connected {
                                shared.resend_states(&mut states).await;
                                refresh.reset();
                            }
                        }
                        Err(_) => link_open = false,
                    }
                    continue;
                }
                _ = assigned.tick(), if !stop.is_cancelled() => {
                    shared.hand_assigned(&mut workers, &mut handed).await;
                    continue;
                }
                _ = refresh.tick(), if !stop.is_cancelled() => {
                    let connected = *link.borrow() == Link::Connected;
                    if connected {
                        shared.resend_states(&mut states).await;
                    }
                    continue;
                }
                _ = stop.cancelled() => events.try_recv().ok(),
            };
            let Some(ev) = ev else { break };
            match ev {
                BleEvent::Measurement {
                    device_id,
                    characteristic,
                    bytes,
                    received_at_ms,
                    clock,
                    paired_at_ms,
                } => {
                    let received = Received {
                        at_ms: received_at_ms,
                        clock,
                        paired_at_ms,
                    };
                    let Some(item) = shared.measurement(
                        &device_id,
                        characteristic,
                        &bytes,
                        &received,
                        &mut halves,
                    ) else {
                        continue;
                    };
                    shared.dispatch(&device_id, item, &mut workers).await;
                }
                BleEvent::Stored { device_id, receipt } => match workers.senders.get(&device_id) {
                    _ if workers.dropped.remove(&device_id) => receipt.settle(false),
                    // Its worker settles it after what it was sent before.
                    Some(tx) => {
                        if let Err(e) = tx.send(Job::Flush(receipt)).await
                            && let Job::Flush(receipt) = e.0
                        {
                            receipt.settle(false);
                            workers.senders.remove(&device_id);
                        }
                    }
                    // Nothing of the device was taken since the start: nothing pending.
                    None => receipt.settle(true),
                },
                BleEvent::State {
                    device_id,
                    connected,
                    battery,
                    rssi,
                    firmware,
                } => {
                    let now = Instant::now();
                    let next = LastState {
                        connected,
                        battery,
                        rssi,
                        firmware,
                        at: now,
                    };
                    let publish = match states.get(&device_id) {
                        None => true,
                        Some(last) => {
                            last.connected != next.connected
                                || last.battery != next.battery
                                || last.firmware != next.firmware
                                || (rssi_moved(last.rssi, next.rssi)
                                    && now.duration_since(last.at) >= RSSI_MIN_INTERVAL)
                        }
                    };
                    if publish {
                        states.insert(device_id.clone(), next.clone());
                        shared.record_state_blocking(device_id, next, false).await;
                    }
                }
                BleEvent::NeedsRepair { device_id, reason } => {
                    let store = shared.clone();
                    let id = device_id.clone();
                    let marked =
                        tokio::task::spawn_blocking(move || store.store.set_needs_repair(&id))
                            .await;
                    match marked {
                        Ok(Ok(true)) => tracing::error!(
                            device = %device_id,
                            "needs_repair: {reason}; nothing is taken from it until `hailan-gateway pair` again"
                        ),
                        Ok(Ok(false)) => {}
                        Ok(Err(e)) => {
                            tracing::error!(device = %device_id, "marking needs_repair: {e:#}")
                        }
                        Err(e) => tracing::error!(device = %device_id, "marking needs_repair: {e}"),
                    }
                    // Its link is down as far as anyone downstream knows.
                    if let Some(last) = states.get(&device_id).cloned()
                        && last.connected
                    {
                        let next = LastState {
                            connected: false,
                            at: Instant::now(),
                            ..last
                        };
                        states.insert(device_id.clone(), next.clone());
                        shared.record_state_blocking(device_id, next, true).await;
                    }
                }
            }
        }
        let Workers {
            senders, mut tasks, ..
        } = workers;
        drop(senders);
        while let Some(r) = tasks.join_next().await {
            if let Err(e) = r {
                tracing::error!("a device pipeline failed: {e}");
            }
        }
        Ok(())
    }

    /// Send a measurement of `device_id` where it belongs: the device's own
    /// worker, the worker of the user slot its user index is mapped to, or
    /// (a shared device's measurement no slot claims) the hold.
    async fn dispatch(self: &Arc<Self>, device_id: &str, item: Item, workers: &mut Workers) {
        let route = match self.store.route(device_id, item.user) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(device = %device_id, "routing a measurement: {e:#}; dropped");
                workers.dropped.insert(device_id.to_owned());
                return;
            }
        };
        match route {
            Route::Device => {
                self.to_worker(device_id, item, workers).await;
            }
            Route::Slot(slot) => {
                // A slot whose worker cannot start (its patient's data key
                // came after the daemon did): held for it, not dropped;
                // taken once the daemon restarts with the key.
                if let Some(item) = self.to_worker(&slot, item, workers).await {
                    self.hold(device_id, item, Some(slot)).await;
                }
            }
            Route::Unassigned => self.hold(device_id, item, None).await,
        }
    }

    /// Hand `item` to the worker of device or user slot `id`, started if
    /// it is not running. Gives the item back when the worker cannot start
    /// (the error is logged); drops it when `id` is not paired.
    async fn to_worker(
        self: &Arc<Self>,
        id: &str,
        item: Item,
        workers: &mut Workers,
    ) -> Option<Item> {
        if !workers.senders.contains_key(id) {
            match self.start_worker(id, workers.provers.clone(), &mut workers.tasks) {
                Ok(Some(tx)) => {
                    workers.senders.insert(id.to_owned(), tx);
                }
                Ok(None) => {
                    tracing::warn!(device = %id, "measurement from a device that is not paired (forgotten?); dropped");
                    workers.dropped.insert(id.to_owned());
                    return None;
                }
                Err(e) => {
                    tracing::error!(device = %id, "cannot start the device's pipeline: {e:#}");
                    workers.dropped.insert(id.to_owned());
                    return Some(item);
                }
            }
        }
        if let Some(tx) = workers.senders.get(id)
            && tx.send(Job::Take(item)).await.is_err()
        {
            // The worker ended (device forgotten): start afresh next time.
            workers.senders.remove(id);
            workers.dropped.insert(id.to_owned());
        }
        None
    }

    /// Hold a shared device's measurement that names no mapped user slot
    /// until the owner assigns it (`hailan-gateway unassigned`, `assign`):
    /// never guessed from its value. One already `assigned` to a slot
    /// waits for that slot's worker.
    async fn hold(self: &Arc<Self>, device_id: &str, item: Item, assigned: Option<String>) {
        let store = self.store.clone();
        let id = device_id.to_owned();
        let for_slot = assigned.is_some();
        let held = tokio::task::spawn_blocking(move || -> Result<i64> {
            let kind = store
                .identity(&id)?
                .map(|d| d.kind)
                .with_context(|| format!("device {id} is not paired (forgotten?)"))?;
            let data_type = DeviceKind::ALL
                .into_iter()
                .find(|k| k.as_str() == kind)
                .with_context(|| format!("stored device kind {kind:?} is unknown"))?
                .data_type();
            store.hold(
                &id,
                item.user,
                data_type.as_str(),
                &item.taken.to_cbor(),
                now_ms(),
                assigned.as_deref(),
            )
        })
        .await;
        match held {
            Ok(Ok(n)) if for_slot => {
                tracing::warn!(device = %device_id, held = n, "held for its user slot until the daemon can prove for it (restart it once [[keys.patients]] has the patient's key)");
            }
            Ok(Ok(n)) => {
                self.metrics.unassigned.inc();
                tracing::warn!(device = %device_id, user_index = ?item.user, held = n, "reading of a shared device names no mapped user: held unassigned (`hailan-gateway unassigned`, `assign {n} <user>`)");
            }
            Ok(Err(e)) => {
                self.metrics.readings_refused.inc();
                tracing::error!(device = %device_id, "holding an unassigned reading: {e:#}; dropped")
            }
            Err(e) => {
                self.metrics.readings_refused.inc();
                tracing::error!(device = %device_id, "holding an unassigned reading: {e}; dropped")
            }
        }
    }

    /// `read` on the store, off the async runtime; `None` (logged with
    /// `what`) when it failed.
    async fn off_runtime<T: Send + 'static>(
        &self,
        what: &str,
        read: fn(&Store) -> Result<T>,
    ) -> Option<T> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || read(&store)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                tracing::warn!("{what}: {e:#}");
                None
            }
            Err(e) => {
                tracing::warn!("{what}: {e}");
                None
            }
        }
    }

    /// Hand every reading the owner assigned to its user slot's worker
    /// (proven with its original time; it leaves the hold when committed).
    async fn hand_assigned(
        self: &Arc<Self>,
        workers: &mut Workers,
        handed: &mut HashMap<i64, Instant>,
    ) {
        let Some(rows) = self
            .off_runtime("reading the held readings", Store::assigned)
            .await
        else {
            return;
        };
        let now = Instant::now();
        handed.retain(|id, at| {
            rows.iter().any(|r| r.id == *id) && now.duration_since(*at) < ASSIGNED_RETRY
        });
        for row in rows {
            let Some(slot) = row.slot_id else { continue };
            if handed.contains_key(&row.id) {
                continue;
            }
            let taken = match Taken::from_cbor(&row.taken) {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(held = row.id, "{e}; left held");
                    continue;
                }
            };
            handed.insert(row.id, now);
            let item = Item {
                taken,
                glucose_record: None,
                user: row.user_index,
                held: Some(row.id),
            };
            // Not started: it stays held, handed again after ASSIGNED_RETRY.
            let _ = self.to_worker(&slot, item, workers).await;
        }
    }

    /// Send the state of every paired device again (a forgotten one is
    /// not paired any more, so never): what this run of the daemon saw last,
    /// or not connected for a device it has no link to yet. Observed now, so
    /// it supersedes the UNKNOWN ingest wrote while this gateway was offline.
    async fn resend_states(self: &Arc<Self>, states: &mut HashMap<String, LastState>) {
        let Some(rows) = self
            .off_runtime("device states not sent again", Store::devices)
            .await
        else {
            return;
        };
        states.retain(|id, _| rows.iter().any(|r| &r.device_id == id));
        let n = rows.len();
        for row in rows {
            let state = match states.get(&row.device_id) {
                Some(s) if !row.needs_repair => s.clone(),
                _ => LastState {
                    connected: false,
                    battery: row.battery,
                    rssi: row.rssi,
                    firmware: row.firmware.clone(),
                    at: Instant::now(),
                },
            };
            self.record_state_blocking(row.device_id, state, row.needs_repair)
                .await;
        }
        tracing::debug!(devices = n, "device states sent again");
    }

    /// [`Self::record_device_state`] off the async runtime.
    async fn record_state_blocking(
        self: &Arc<Self>,
        device_id: String,
        next: LastState,
        needs_repair: bool,
    ) {
        let store = self.clone();
        let res = tokio::task::spawn_blocking(move || {
            store.record_device_state(&device_id, &next, needs_repair)
        })
        .await;
        match res {
            Ok(Err(e)) => tracing::warn!("device state not recorded: {e:#}"),
            Err(e) => tracing::warn!("device state task failed: {e}"),
            Ok(Ok(())) => {}
        }
    }

    fn record_device_state(
        &self,
        device_id: &str,
        s: &LastState,
        needs_repair: bool,
    ) -> Result<()> {
        let at = now_ms();
        let state = DeviceState {
            device_id: device_id.to_owned(),
            battery_level: s.battery,
            rssi: s.rssi,
            connected: s.connected,
            firmware_version: s.firmware.clone(),
            observed_at_ms: at,
            needs_repair: Some(needs_repair),
        };
        let envelope = Envelope {
            v: 1,
            gateway_id: self.gateway_id.clone(),
            sent_at_ms: at,
            body: Body::DeviceState(state.clone()),
        };
        let payload = hailan_proto::envelope::encode(&envelope);
        let queued = self.store.record_state(&state, Some(&payload))?;
        if queued {
            self.outbox_changed.notify_one();
        } else {
            self.metrics.states_refused.inc();
        }
        Ok(())
    }

    /// Decode a value into a reading, or say (log and count) why not. The
    /// first packet of a multiple-packet Body Composition measurement is kept
    /// in `halves` until the second arrives; the two make one reading.
    fn measurement(
        &self,
        device_id: &str,
        characteristic: u16,
        bytes: &[u8],
        received: &Received,
        halves: &mut Halves,
    ) -> Option<Item> {
        let received_at_ms = received.at_ms;
        let Some(c) = Characteristic::from_uuid16(characteristic) else {
            tracing::debug!(device = %device_id, "value on {characteristic:04x} ignored");
            return None;
        };
        let decoded = match gatt::decode(c, bytes) {
            Ok(d) => d,
            Err(e) => {
                self.metrics.malformed.inc();
                tracing::warn!(device = %device_id, characteristic = %format!("{characteristic:04x}"), bytes = %hex::encode(bytes), "malformed value: {e}");
                return None;
            }
        };
        let decoded = match decoded {
            Decoded::BodyCompositionMeasurement(second) if second.multiple_packet => {
                match halves.remove(device_id) {
                    Some((first, at)) if received_at_ms - at <= SECOND_HALF_WITHIN_MS => {
                        match first.merge(&second) {
                            Ok(joined) => Decoded::BodyCompositionMeasurement(joined),
                            Err(e) => {
                                self.metrics.malformed.inc();
                                tracing::warn!(device = %device_id, "body composition packets do not make one measurement ({e}); the first is dropped, the second waits for its other half");
                                halves.insert(device_id.to_owned(), (second, received_at_ms));
                                return None;
                            }
                        }
                    }
                    stale => {
                        if stale.is_some() {
                            self.metrics.no_reading.inc();
                            tracing::warn!(device = %device_id, "a body composition measurement's second packet never came; its first is dropped");
                        }
                        halves.insert(device_id.to_owned(), (second, received_at_ms));
                        return None;
                    }
                }
            }
            d => d,
        };
        let glucose_record = match &decoded {
            Decoded::GlucoseMeasurement(g) => Some(g.sequence_number),
            _ => None,
        };
        let slots = match decoded.to_reading() {
            Ok(s) => s,
            Err(hailan_proto::gatt::NoReading::NotAMeasurement(_)) => return None,
            Err(e) => {
                self.metrics.no_reading.inc();
                tracing::warn!(device = %device_id, characteristic = %format!("{characteristic:04x}"), "no reading: {e}");
                return None;
            }
        };
        let placed = received.place(slots.recorded_at.as_ref());
        if let Some(flag) = placed.flag {
            self.metrics.clock_flagged.inc();
            tracing::warn!(device = %device_id, device_time_ms = ?placed.device_time_ms, recorded_at_ms = placed.recorded_at_ms, "time stamp flagged: {}", flag.as_str());
        }
        let mut extras = slots.extras;
        extras.extend(placed.extras());
        self.metrics.readings_taken.inc();
        Some(Item {
            taken: Taken {
                recorded_at_ms: placed.recorded_at_ms,
                slots: slots.slots,
                original_unit: slots.original_unit,
                extras,
            },
            glucose_record,
            user: decoded.user_index(),
            held: None,
        })
    }

    fn start_worker(
        self: &Arc<Self>,
        device_id: &str,
        provers: Arc<Semaphore>,
        tasks: &mut JoinSet<()>,
    ) -> Result<Option<mpsc::Sender<Job>>> {
        let Some(row) = self.store.identity(device_id)? else {
            return Ok(None);
        };
        if self.keys.data_key_for(row.patient.as_deref()).is_none() {
            anyhow::bail!(
                "keys.patients has no data key for patient {:?} (add a [[keys.patients]] entry)",
                row.patient
            );
        }
        let kind = DeviceKind::ALL
            .into_iter()
            .find(|k| k.as_str() == row.kind)
            .with_context(|| format!("stored device kind {:?} is unknown", row.kind))?;
        let data_type = kind.data_type();
        let cursor = {
            let mut map = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(device_id.to_owned())
                .or_insert_with(|| Arc::new(AtomicI32::new(row.glucose_cursor)))
                .clone()
        };
        let worker = Worker {
            pipeline: self.clone(),
            device_id: device_id.to_owned(),
            data_type,
            windowed: self.cfg.is_windowed(data_type),
            secret: row.secret.clone(),
            patient: row.patient.clone(),
            next_seq: row.next_seq,
            cursor,
            window: Vec::new(),
            window_deadline: None,
            provers,
            full_warned_at: None,
            lost: false,
        };
        let (tx, rx) = mpsc::channel(256);
        tasks.spawn(worker.run(rx));
        Ok(Some(tx))
    }
}

/// How a value reached the gateway: when, over a link whose device clock
/// read how ([`hailan_proto::clock`]).
struct Received {
    at_ms: i64,
    clock: Option<hailan_proto::clock::DeviceClock>,
    paired_at_ms: i64,
}

impl Received {
    /// The reading's time from the device's stamp, if it sent one.
    fn place(&self, stamp: Option<&hailan_proto::gatt::DateTime>) -> hailan_proto::clock::Placed {
        // A stamp that is no valid date counts as none.
        let device_ms = stamp
            .and_then(|t| t.unix_seconds_naive())
            .map(|s| s.saturating_mul(1000));
        hailan_proto::clock::place(device_ms, self.clock, self.at_ms, self.paired_at_ms)
    }
}

fn rssi_moved(a: Option<i16>, b: Option<i16>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() >= RSSI_STEP_DBM,
        (a, b) => a.is_some() != b.is_some(),
    }
}

/// One device's readings, in order.
struct Worker {
    pipeline: Arc<Pipeline>,
    device_id: String,
    data_type: DataType,
    windowed: bool,
    secret: DeviceSecret,
    /// Whose readings these are (`None`: the owner): picks the data key.
    patient: Option<String>,
    next_seq: u64,
    cursor: Arc<AtomicI32>,
    window: Vec<Taken>,
    window_deadline: Option<Instant>,
    provers: Arc<Semaphore>,
    full_warned_at: Option<Instant>,
    /// Readings taken since the last flush were refused or failed.
    lost: bool,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        loop {
            let deadline = self.window_deadline;
            tokio::select! {
                job = rx.recv() => match job {
                    Some(Job::Take(item)) => {
                        if !self.take(item).await {
                            return;
                        }
                    }
                    Some(Job::Flush(receipt)) => {
                        let open = self.close_window().await;
                        receipt.settle(open && !std::mem::take(&mut self.lost));
                        if !open {
                            return;
                        }
                    }
                    None => break,
                },
                _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)).await }, if deadline.is_some() => {
                    if !self.close_window().await {
                        return;
                    }
                }
            }
        }
        // Shutdown: the open window is proven and queued, not dropped.
        self.close_window().await;
    }

    /// Returns false when the device is gone (forgotten).
    async fn take(&mut self, item: Item) -> bool {
        if let Some(record) = item.glucose_record {
            let cursor = self.cursor.load(Ordering::Relaxed);
            if cursor >= 0 && i32::from(record) <= cursor {
                tracing::debug!(device = %self.device_id, record, cursor, "glucose record already stored; skipped");
                return true;
            }
        }
        // A held reading is committed on its own: its leaving the hold rides
        // on that one transaction.
        if self.windowed && item.held.is_none() && item.taken.in_bounds(self.data_type) {
            if self.window.is_empty() {
                self.window_deadline = Some(Instant::now() + self.pipeline.cfg.window_max());
            }
            self.window.push(item.taken);
            if self.window.len() >= self.pipeline.cfg.window_size {
                return self.close_window().await;
            }
            return true;
        }
        if !self.close_window().await {
            return false;
        }
        let taken = vec![item.taken];
        self.commit(taken, item.glucose_record, item.held).await
    }

    async fn close_window(&mut self) -> bool {
        self.window_deadline = None;
        if self.window.is_empty() {
            return true;
        }
        let taken = std::mem::take(&mut self.window);
        self.commit(taken, None, None).await
    }

    /// Prove, seal and queue `taken` in one envelope: one window group when
    /// the device is windowed and every value is in bounds, else one group
    /// per reading.
    async fn commit(
        &mut self,
        taken: Vec<Taken>,
        glucose_record: Option<u16>,
        held: Option<i64>,
    ) -> bool {
        let first_seq = self.next_seq;
        let count = taken.len() as u64;
        let as_window = self.windowed && taken.iter().all(|t| t.in_bounds(self.data_type));
        let p = self.pipeline.clone();
        let secret = self.secret.clone();
        let patient = self.patient.clone();
        let device_id = self.device_id.clone();
        let data_type = self.data_type;
        let oldest = taken.iter().map(|t| t.recorded_at_ms).min().unwrap_or(0);
        let newest = taken.iter().map(|t| t.recorded_at_ms).max().unwrap_or(0);
        let permit = match self.provers.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => return false,
        };
        let started = std::time::Instant::now();
        let built = tokio::task::spawn_blocking(move || {
            let keys = &p.keys;
            let Some(data_key) = keys.data_key_for(patient.as_deref()) else {
                // Checked when the worker started; the keys do not change.
                return (
                    Err(Refused::Db(anyhow::anyhow!(
                        "no data key for patient {patient:?}"
                    ))),
                    0,
                );
            };
            let prover = Prover {
                pk: if as_window {
                    &keys.window
                } else {
                    &keys.reading
                },
                secret: &secret,
                data_key,
                gateway_id: &p.gateway_id,
                device_id: &device_id,
                data_type,
            };
            let mut rng = rand::rngs::OsRng;
            let groups: Vec<ProvenGroup> = if as_window {
                vec![prover.window(first_seq, &taken, &mut rng)]
            } else {
                taken
                    .iter()
                    .enumerate()
                    .map(|(i, t)| prover.reading(first_seq + i as u64, t, &mut rng))
                    .collect()
            };
            // The next proof may start while this envelope is committed (fsync).
            drop(permit);
            let envelope = Envelope {
                v: 1,
                gateway_id: p.gateway_id.clone(),
                sent_at_ms: now_ms(),
                body: Body::Readings(ReadingBatch {
                    device_id: device_id.clone(),
                    groups,
                }),
            };
            let unproven = match &envelope.body {
                Body::Readings(b) => b
                    .groups
                    .iter()
                    .filter(|g| g.proof.is_none())
                    .map(|g| g.readings.len())
                    .sum(),
                _ => 0,
            };
            let payload = hailan_proto::envelope::encode(&envelope);
            let res = p.store.commit_readings(
                &NewReadings {
                    device_id: &device_id,
                    first_seq,
                    count,
                    oldest_recorded_at_ms: oldest,
                    newest_recorded_at_ms: newest,
                    glucose_record,
                    assigned: held.as_slice(),
                    payload: &payload,
                },
                now_ms(),
            );
            (res, unproven)
        })
        .await;
        let (res, unproven) = match built {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(device = %self.device_id, "proving task failed: {e}");
                self.lost = true;
                return true;
            }
        };
        self.pipeline
            .metrics
            .prove_seconds
            .observe(started.elapsed().as_secs_f64());
        match res {
            Ok(_) => {
                tracing::debug!(device = %self.device_id, first_seq, count, took_ms = started.elapsed().as_millis() as u64, "queued");
                self.next_seq += count;
                if let Some(r) = glucose_record {
                    self.cursor.fetch_max(i32::from(r), Ordering::Relaxed);
                }
                self.pipeline.metrics.readings_queued.inc_by(count);
                if unproven > 0 {
                    self.pipeline.metrics.unproven.inc_by(unproven as u64);
                    tracing::warn!(device = %self.device_id, first_seq, "{unproven} reading(s) outside the proof bounds sent without proof (ingest quarantines them)");
                }
                self.pipeline.outbox_changed.notify_one();
                true
            }
            Err(Refused::Full { bytes, quota }) => {
                self.lost = true;
                self.pipeline.metrics.readings_refused.inc_by(count);
                let now = Instant::now();
                if self
                    .full_warned_at
                    .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60))
                {
                    self.full_warned_at = Some(now);
                    tracing::warn!(device = %self.device_id, bytes, quota, "outbox full: {count} newest reading(s) refused (policy: keep the oldest; raise outbox.quota_mb or bring the broker back)");
                }
                true
            }
            Err(Refused::NotHeld(id)) => {
                tracing::debug!(device = %self.device_id, held = id, "held reading committed already; not again");
                true
            }
            Err(Refused::UnknownDevice(_)) => {
                tracing::info!(device = %self.device_id, "device forgotten; its pipeline stops");
                false
            }
            Err(Refused::SeqOutOfOrder { expected, got, .. }) => {
                tracing::error!(device = %self.device_id, expected, got, "seq out of step with the database; resynchronised, {count} reading(s) lost");
                self.lost = true;
                self.next_seq = expected;
                true
            }
            Err(Refused::Db(e)) => {
                self.lost = true;
                self.pipeline.metrics.readings_refused.inc_by(count);
                tracing::error!(device = %self.device_id, "outbox write failed, {count} reading(s) not taken: {e:#}");
                true
            }
        }
    }
}
