//! `Ble::run`: the supervisor. It owns, per adapter, a hub (BlueZ events)
//! and a scanner, and one session task per known device; follows the
//! device list; keeps each adapter's up/down state for
//! [`placement`](super::placement); and beats the systemd watchdog only while
//! its loop turns *and* an adapter answers *and* BlueZ events still flow.

use super::hub::Hub;
use super::placement::{AdapterCtx, Adapters};
use super::session::{self, SessionCtx};
use super::slots::{self, Slots};
use super::watchdog::Scanner;
use super::{Ble, BleEvent, KnownDevice};
use crate::health::Beat;
use anyhow::Context;
use btleplug::api::{Central as _, CentralEvent, CentralState};
use hailan_proto::gatt::DeviceKind;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long shutdown waits for sessions to disconnect their devices.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

struct Running {
    address: String,
    kind: DeviceKind,
    bonded_at_ms: i64,
    device: watch::Sender<KnownDevice>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

pub(crate) async fn run(
    ble: Ble,
    mut devices: watch::Receiver<Vec<KnownDevice>>,
    events: mpsc::Sender<BleEvent>,
    beat: Arc<Beat>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Ble {
        cfg,
        radios,
        missing,
        stats,
    } = ble;
    let pump_cancel = CancellationToken::new();
    let mut pumps = Vec::new();
    let mut placed = Vec::new();
    // Power events of every adapter, by adapter index.
    let (power_tx, mut power) = mpsc::unbounded_channel::<(usize, bool)>();
    for (i, radio) in radios.into_iter().enumerate() {
        let hub = Arc::new(Hub::new());
        let stream = radio
            .central
            .events()
            .await
            .with_context(|| format!("subscribing to events of adapter {}", radio.name))?;
        pumps.push({
            let hub = hub.clone();
            let cancel = pump_cancel.clone();
            tokio::spawn(async move { hub.pump(stream, cancel).await })
        });
        pumps.push(tokio::spawn(forward_power(
            i,
            hub.subscribe(),
            power_tx.clone(),
            pump_cancel.clone(),
        )));
        let slots = Slots::new(cfg.max_connections, stats.clone());
        placed.push(AdapterCtx::new(radio, hub, slots));
    }
    drop(power_tx);
    let ctx = Arc::new(SessionCtx {
        adapters: Adapters::new(placed, !missing.is_empty()),
        cfg: cfg.clone(),
        stats: stats.clone(),
        events: events.clone(),
    });
    let mut sessions: HashMap<String, Running> = HashMap::new();
    let list = devices.borrow_and_update().clone();
    reconcile(&ctx, &mut sessions, &list);
    let mut scanners: Vec<Scanner> = ctx
        .adapters
        .all
        .iter()
        .map(|_| Scanner::new(cfg.scan_stall_after, cfg.reconnect_min, cfg.reconnect_max))
        .collect();
    let mut answering = vec![true; scanners.len()];
    let every =
        (cfg.scan_stall_after / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut devices_open = true;
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            r = devices.changed(), if devices_open => match r {
                Ok(()) => {
                    let list = devices.borrow_and_update().clone();
                    reconcile(&ctx, &mut sessions, &list);
                }
                Err(_) => {
                    devices_open = false;
                    tracing::warn!("the device list has no sender any more: keeping the current sessions");
                }
            },
            Some((i, on)) = power.recv() => {
                if let (Some(a), Some(scanner)) = (ctx.adapters.all.get(i), scanners.get_mut(i)) {
                    scanner.on_powered(&a.radio, on);
                    ctx.adapters.set_up(i, on);
                }
            },
            _ = tick.tick() => {
                let mut any_answering = false;
                // Asked together: one hung adapter does not hold up the others.
                let infos = futures::future::join_all(ctx.adapters.all.iter().map(|a| a.radio.info())).await;
                for (i, ((a, scanner), info)) in ctx.adapters.all.iter().zip(scanners.iter_mut()).zip(infos).enumerate() {
                    match (&info, answering[i]) {
                        (Err(e), true) => tracing::warn!("{e:#}"),
                        (Ok(_), false) => tracing::info!(adapter = %a.radio.name, "adapter answers again"),
                        _ => {}
                    }
                    answering[i] = info.is_ok();
                    any_answering |= info.is_ok();
                    ctx.adapters.set_up(i, info.as_ref().is_ok_and(|i| i.powered));
                    scanner.step(&a.radio, &a.hub, &stats, info.as_ref().ok()).await;
                }
                sessions.retain(|id, r| {
                    let ended = r.task.is_finished() && !r.cancel.is_cancelled();
                    if ended {
                        tracing::error!(device = %id, "session ended by itself; it restarts when the device list changes");
                    }
                    !ended
                });
                if events.is_closed() {
                    break Err(anyhow::anyhow!("the BLE event receiver is gone"));
                }
                if ctx.adapters.all.iter().any(|a| !a.hub.alive()) {
                    break Err(anyhow::anyhow!("the BlueZ event stream ended (D-Bus connection lost?)"));
                }
                let up = ctx.adapters.all.iter().filter(|a| a.up()).count();
                stats.set_adapters_up(up as u64);
                let dbus_alive = ctx.adapters.all.iter().all(|a| a.radio.dbus_alive.load(Ordering::Relaxed));
                if any_answering && dbus_alive {
                    beat.beat();
                }
            }
        }
    };
    // Shut down: sessions disconnect their devices, discovery stops.
    let mut tasks = Vec::new();
    for (_, r) in sessions.drain() {
        r.cancel.cancel();
        tasks.push(r.task);
    }
    if tokio::time::timeout(SHUTDOWN_GRACE, futures::future::join_all(tasks))
        .await
        .is_err()
    {
        tracing::warn!("sessions did not end within {SHUTDOWN_GRACE:?}");
    }
    for (a, scanner) in ctx.adapters.all.iter().zip(&scanners) {
        if scanner.scanning() {
            a.radio.stop_scan().await;
        }
    }
    pump_cancel.cancel();
    for p in pumps {
        let _ = p.await;
    }
    result
}

/// Pass adapter `i`'s power events on, tagged with `i`.
async fn forward_power(
    i: usize,
    mut central: broadcast::Receiver<CentralEvent>,
    to: mpsc::UnboundedSender<(usize, bool)>,
    cancel: CancellationToken,
) {
    loop {
        let ev = tokio::select! {
            _ = cancel.cancelled() => return,
            ev = central.recv() => ev,
        };
        let on = match ev {
            Ok(CentralEvent::StateUpdate(CentralState::PoweredOff)) => false,
            Ok(CentralEvent::StateUpdate(CentralState::PoweredOn)) => true,
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if to.send((i, on)).is_err() {
            return;
        }
    }
}

/// Start, stop or update sessions to match `list`.
fn reconcile(ctx: &Arc<SessionCtx>, sessions: &mut HashMap<String, Running>, list: &[KnownDevice]) {
    let mut wanted: HashMap<&str, &KnownDevice> = HashMap::new();
    let mut addresses: HashMap<String, &str> = HashMap::new();
    for d in list {
        let a = d.address.to_ascii_uppercase();
        if let Some(other) = addresses.get(&a) {
            tracing::warn!(device = %d.device_id, "same address {a} as {other}: ignored");
            continue;
        }
        addresses.insert(a, &d.device_id);
        wanted.insert(&d.device_id, d);
    }
    share_slots(ctx, wanted.values().map(|d| d.kind));
    // Stop what is gone or changed; remember the tasks a replacement must wait for.
    let mut ending: HashMap<String, JoinHandle<()>> = HashMap::new();
    let ids: Vec<String> = sessions.keys().cloned().collect();
    for id in ids {
        let keep = wanted.get(id.as_str()).is_some_and(|d| {
            sessions.get(&id).is_some_and(|r| {
                r.address.eq_ignore_ascii_case(&d.address)
                    && r.kind == d.kind
                    && r.bonded_at_ms == d.bonded_at_ms
            })
        });
        if keep {
            continue;
        }
        if let Some(r) = sessions.remove(&id) {
            tracing::info!(device = %id, "device forgotten or changed: ending its session");
            r.cancel.cancel();
            ending.insert(r.address.to_ascii_uppercase(), r.task);
        }
    }
    for (id, d) in wanted {
        if let Some(r) = sessions.get(id) {
            r.device.send_replace(d.clone());
            continue;
        }
        let (tx, rx) = watch::channel(d.clone());
        let cancel = CancellationToken::new();
        let before = ending.remove(&d.address.to_ascii_uppercase());
        let task = {
            let ctx = ctx.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                // The old session of this address frees the device first.
                if let Some(t) = before {
                    let _ = t.await;
                }
                session::run(ctx, rx, cancel).await;
            })
        };
        tracing::info!(device = %id, address = %d.address, kind = d.kind.as_str(), "session started");
        sessions.insert(
            id.to_string(),
            Running {
                address: d.address.clone(),
                kind: d.kind,
                bonded_at_ms: d.bonded_at_ms,
                device: tx,
                cancel,
                task,
            },
        );
    }
}

/// Keep one slot for hand-overs while devices of both kinds are paired, and
/// say so when streaming devices outnumber the links left to them.
fn share_slots(ctx: &SessionCtx, kinds: impl Iterator<Item = DeviceKind>) {
    let (streaming, handing_over) = kinds.fold((0usize, 0usize), |(s, h), k| {
        if slots::streams(k) {
            (s + 1, h)
        } else {
            (s, h + 1)
        }
    });
    for a in &ctx.adapters.all {
        a.slots
            .keep_one_for_handovers(streaming > 0 && handing_over > 0);
    }
    let cap: usize = ctx
        .adapters
        .all
        .iter()
        .map(|a| a.slots.streaming_cap())
        .sum();
    if streaming > cap {
        tracing::warn!(
            streaming,
            links = cap,
            max_connections = ctx.cfg.max_connections,
            "more streaming devices than links for them: {} wait until one frees; raise ble.max_connections if the adapter holds more links",
            streaming - cap
        );
    }
    if ctx.cfg.max_connections == 1 && streaming > 0 && handing_over > 0 {
        tracing::warn!(
            "ble.max_connections = 1 with streaming and hand-over devices: a hand-over waits while a streaming device holds the link"
        );
    }
}
