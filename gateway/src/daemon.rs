//! `hailan-gateway run`: the daemon. Wires BLE → pipeline → outbox →
//! publisher, talks to systemd (READY, WATCHDOG, STATUS), and shuts down
//! through one signal: SIGTERM/SIGINT cancel one token; BLE stops, the
//! pipeline proves and queues what it holds (open windows too), the
//! publisher drains the outbox for a bounded time and says `offline`.

use crate::ble::{Ble, KnownDevice};
use crate::config::GatewayConfig;
use crate::health::Beat;
use crate::keys::Keys;
use crate::metrics::Metrics;
use crate::pipeline::{Cursors, Pipeline, now_ms};
use crate::publisher::{Link, Publisher};
use crate::store::Store;
use anyhow::{Context, Result};
use hailan_proto::gatt::DeviceKind;
use sd_notify::NotifyState;
use std::sync::Arc;
use std::sync::atomic::AtomicI32;
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

/// How often the daemon re-reads the paired devices (the CLI may pair or
/// forget one while it runs) and refreshes its status.
const DEVICE_POLL: Duration = Duration::from_secs(2);

/// How long shutdown waits for the BLE layer to disconnect its devices.
const BLE_STOP: Duration = Duration::from_secs(8);

/// Run the daemon until SIGTERM/SIGINT.
pub async fn run(cfg: GatewayConfig) -> Result<()> {
    let cfg = Arc::new(cfg);
    let keys = Arc::new(Keys::load(&cfg)?);
    let store = Arc::new(Store::open(&cfg.state_dir, cfg.quota_bytes())?);
    // No link is held yet, whatever a killed run left recorded.
    store.reset_links()?;
    store.set_meta("daemon_pid", &std::process::id().to_string())?;
    store.set_meta("daemon_started_ms", &now_ms().to_string())?;
    let metrics = Metrics::new();
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone())?;

    let ble = Ble::open(cfg.ble_config())
        .await
        .context("opening the Bluetooth adapter (ble.adapter)")?;
    // BlueZ's default agent while the daemon runs: a device asking to pair by
    // itself is refused and logged (only the owner pairs). Kept alive to the end.
    let _agent = match crate::ble::agent::serve_default().await {
        Ok(conn) => Some(conn),
        Err(e) => {
            tracing::warn!("no pairing agent: {e:#}");
            None
        }
    };
    let ble_stats = ble.stats();
    let ble_beat = Beat::new();
    let pub_beat = Beat::new();
    let outbox_changed = Arc::new(Notify::new());
    let cursors: Cursors = Arc::default();
    let (link_tx, mut link_rx) = watch::channel(Link::Connecting);

    let devices = known_devices(&store, &cursors)?;
    tracing::info!(
        gateway = %cfg.gateway_id,
        devices = devices.len(),
        "hailan-gateway {} starting",
        crate::VERSION
    );
    let (devices_tx, devices_rx) = watch::channel(devices);
    let (events_tx, events_rx) = mpsc::channel(1024);

    // BLE stops on `shutdown`; the pipeline ends when BLE drops its sender.
    let ble_stop = shutdown.child_token();
    let ble_task = tokio::spawn(ble.run(devices_rx, events_tx, ble_beat.clone(), ble_stop));
    let pipeline = Pipeline {
        cfg: cfg.pipeline.clone(),
        gateway_id: cfg.gateway_id.clone(),
        keys,
        store: store.clone(),
        outbox_changed: outbox_changed.clone(),
        metrics: metrics.clone(),
        cursors: cursors.clone(),
        link: link_tx.subscribe(),
    };
    let pipeline_stop = CancellationToken::new();
    let pipeline_task = tokio::spawn(pipeline.run(events_rx, pipeline_stop.clone()));
    // The publisher outlives BLE and the pipeline so the last windows go out.
    let publisher_stop = CancellationToken::new();
    let publisher = Publisher {
        cfg: cfg.clone(),
        store: store.clone(),
        outbox_changed: outbox_changed.clone(),
        beat: pub_beat.clone(),
        metrics: metrics.clone(),
        link: link_tx,
    };
    let publisher_task = tokio::spawn(publisher.run(publisher_stop.clone()));
    if !cfg.metrics.listen.is_empty() {
        let m = metrics.clone();
        let listen = cfg.metrics.listen.clone();
        let stop = publisher_stop.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(&listen, m, stop).await {
                tracing::error!("{e:#}");
            }
        });
    }

    // READY=1 once the adapter is open (above) and the broker connected.
    let ready_wait = async {
        loop {
            if *link_rx.borrow_and_update() == Link::Connected {
                return;
            }
            if link_rx.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = ready_wait => {
            notify(&[NotifyState::Ready, NotifyState::Status("running")]);
            tracing::info!("ready: adapter open, broker connected");
        }
        _ = shutdown.cancelled() => {}
    }

    let watchdog = watchdog_interval();
    let mut tick = tokio::time::interval(watchdog.map_or(DEVICE_POLL, |w| w.min(DEVICE_POLL)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_status = String::new();
    while !shutdown.is_cancelled() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        if let Some(limit) = watchdog {
            let (b, p) = (ble_beat.age(), pub_beat.age());
            if b < limit * 2 && p < limit * 2 {
                notify(&[NotifyState::Watchdog]);
            } else {
                tracing::error!(
                    ble_silent_s = b.as_secs(),
                    publisher_silent_s = p.as_secs(),
                    "a loop stopped beating; withholding WATCHDOG=1"
                );
            }
        }
        match known_devices(&store, &cursors) {
            Ok(now) => {
                devices_tx.send_if_modified(|old| {
                    let same = old.len() == now.len()
                        && old.iter().zip(&now).all(|(a, b)| {
                            a.device_id == b.device_id
                                && a.bonded_at_ms == b.bonded_at_ms
                                && a.consents == b.consents
                        });
                    if !same {
                        tracing::info!(devices = now.len(), "paired devices changed");
                        *old = now;
                    }
                    !same
                });
            }
            Err(e) => tracing::warn!("reading paired devices: {e:#}"),
        }
        metrics.ble_slots_held.set(ble_stats.slots_held() as i64);
        metrics
            .ble_slots_waiting
            .set(ble_stats.slots_waiting() as i64);
        metrics.ble_adapters_up.set(ble_stats.adapters_up() as i64);
        let status = status_line(&store, &metrics, &link_rx.borrow());
        if status != last_status {
            notify(&[NotifyState::Status(&status)]);
            last_status = status;
        }
        store
            .set_meta("daemon_heartbeat_ms", &now_ms().to_string())
            .ok();
    }

    tracing::info!("stopping: flushing open windows and draining the outbox");
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    match tokio::time::timeout(BLE_STOP, ble_task).await {
        Ok(Ok(Err(e))) => tracing::warn!("BLE layer ended with: {e:#}"),
        Ok(Err(e)) => tracing::warn!("BLE task: {e}"),
        Err(_) => tracing::warn!("BLE layer did not stop within {BLE_STOP:?}; going on"),
        Ok(Ok(Ok(()))) => tracing::info!("BLE stopped"),
    }
    pipeline_stop.cancel();
    match pipeline_task.await {
        Ok(Err(e)) => tracing::warn!("pipeline ended with: {e:#}"),
        Err(e) => tracing::warn!("pipeline task: {e}"),
        Ok(Ok(())) => tracing::info!("pipeline flushed: open windows proven and queued"),
    }
    publisher_stop.cancel();
    match publisher_task.await {
        Ok(Err(e)) => tracing::warn!("publisher ended with: {e:#}"),
        Err(e) => tracing::warn!("publisher task: {e}"),
        Ok(Ok(())) => tracing::info!("publisher stopped"),
    }
    store.set_meta("daemon_pid", "").ok();
    tracing::info!("stopped");
    Ok(())
}

/// The devices BLE should keep connected, with their shared glucose cursors.
fn known_devices(store: &Store, cursors: &Cursors) -> Result<Vec<KnownDevice>> {
    let rows = store.devices()?;
    let slots = store.slots()?;
    let mut map = cursors.lock().unwrap_or_else(|p| p.into_inner());
    Ok(rows
        .into_iter()
        // A device that refused its bond gets no session until re-paired.
        .filter(|r| !r.needs_repair)
        .filter_map(|r| {
            let kind = DeviceKind::ALL.into_iter().find(|k| k.as_str() == r.kind)?;
            let cursor = map
                .entry(r.device_id.clone())
                .or_insert_with(|| Arc::new(AtomicI32::new(r.glucose_cursor)))
                .clone();
            Some(KnownDevice {
                address: r.address,
                kind,
                glucose_cursor: cursor,
                bonded_at_ms: r.bonded_at_ms,
                paired_at_ms: r.paired_at_ms,
                consents: slots
                    .iter()
                    .filter(|s| s.device_id == r.device_id)
                    .filter_map(|s| Some((s.user_index, s.consent?)))
                    .collect(),
                device_id: r.device_id,
            })
        })
        .collect())
}

fn status_line(store: &Store, metrics: &Metrics, link: &Link) -> String {
    let devices = store.devices().unwrap_or_default();
    let connected = devices.iter().filter(|d| d.connected).count();
    let needing_repair = devices.iter().filter(|d| d.needs_repair).count();
    metrics.devices_needing_repair.set(needing_repair as i64);
    let stats = store.outbox_stats().unwrap_or_default();
    metrics.outbox_entries.set(stats.entries as i64);
    metrics.outbox_readings.set(stats.readings as i64);
    metrics.outbox_bytes.set(stats.bytes as i64);
    let age_s = stats
        .oldest_created_at_ms
        .map_or(0, |t| (now_ms() - t).max(0) / 1000);
    metrics.outbox_oldest_age_seconds.set(age_s);
    let broker = match link {
        Link::Connected => "broker connected".to_owned(),
        Link::Connecting => "connecting to the broker".to_owned(),
        Link::Down(_) => "broker unreachable".to_owned(),
    };
    let repair = if needing_repair > 0 {
        format!(", {needing_repair} need pairing again")
    } else {
        String::new()
    };
    format!(
        "{connected}/{} devices connected{repair}, {broker}, outbox {} readings (oldest {age_s} s)",
        devices.len(),
        stats.readings
    )
}

fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!("sd_notify: {e}");
    }
}

/// Half the systemd watchdog period, if the watchdog is on: `WATCHDOG_USEC`
/// set and `WATCHDOG_PID`, when set, naming this process (libsystemd's
/// `sd_watchdog_enabled` rule; the sd-notify crate also demands the pid).
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

fn spawn_signal_handler(token: CancellationToken) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
        token.cancel();
    });
    Ok(())
}
