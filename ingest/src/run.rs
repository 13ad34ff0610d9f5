//! `hailan-ingest run`: the consumer loop.
//!
//! One MQTT connection with a persistent session (fixed client id, clean
//! session off) and manual acknowledgements, on the shared subscription.
//! Messages are gathered into batches bounded by size and time; each batch is
//! planned (decode, resolve, verify) and written in one transaction; only
//! after the commit are its messages acknowledged — as Vector's end-to-end
//! acknowledgements do. Planning and writing are two stages: the next batch
//! is verified while the writer commits the one before (commits stay in
//! order; a batch that registers or changes devices commits before the next
//! is planned). A batch that cannot be written is handled by [`commit`]:
//! connection loss is retried with backoff (nothing is acked, nothing is
//! lost), a message PostgreSQL refuses is isolated to quarantine and the
//! rest commits. On shutdown the batch in hand gets `SHUTDOWN_GRACE` to
//! commit; what has not committed by then is left unacknowledged. A message whose
//! connection has since been replaced is not acked: the broker redelivers it
//! on the new connection, and the unique key absorbs the duplicate.

use crate::commit::{self, Committer};
use crate::config::IngestConfig;
use crate::fair_share::{Allowance, FairShare};
use crate::metrics::Metrics;
use crate::plan::{self, Message};
use crate::{link, quarantine, store};
use anyhow::{Context, Result};
use hailan_proto::zk::{BatchWeights, DevKeys, Policy, Verifier};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use sqlx::PgPool;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// How long a batch in hand may still take to commit after shutdown is
/// asked; with the broker's DISCONNECT after it, the process ends within 5 s.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// A received message and the connection it arrived on.
struct Delivery {
    epoch: u64,
    publish: Publish,
}

/// A gateway status message, when it was seen, and its connection.
struct StatusDelivery {
    epoch: u64,
    seen_at: chrono::DateTime<chrono::Utc>,
    publish: Publish,
}

/// Apply gateway status messages in arrival order ([`link::apply`]), each
/// acknowledged after its transaction commits. A database failure is
/// retried with backoff until shutdown (unacknowledged, the message comes
/// back with the next session); a payload that is neither `online` nor
/// `offline` is logged, counted and acknowledged.
async fn follow_gateway_status(
    pool: PgPool,
    client: AsyncClient,
    mut rx: mpsc::UnboundedReceiver<StatusDelivery>,
    epoch: Arc<AtomicU64>,
    acks_unsent: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        let d = tokio::select! {
            d = rx.recv() => match d { Some(d) => d, None => return },
            _ = shutdown.cancelled() => return,
        };
        let Some(hailan_proto::topic::Topic::Status { gateway_id }) =
            hailan_proto::topic::parse(&d.publish.topic)
        else {
            continue;
        };
        match link::GatewayStatus::parse(&d.publish.payload) {
            None => {
                metrics.count_gateway_status("invalid");
                tracing::warn!(
                    gateway = gateway_id,
                    bytes = d.publish.payload.len(),
                    "a gateway status that is neither online nor offline; ignored"
                );
            }
            Some(status) => {
                let mut backoff = Duration::from_millis(200);
                loop {
                    let applied = tokio::select! {
                        a = link::apply(&pool, gateway_id, status, d.seen_at) => a,
                        _ = shutdown.cancelled() => return,
                    };
                    match applied {
                        Ok(a) if !a.known_gateway => {
                            metrics.count_gateway_status("unknown_gateway");
                            tracing::debug!(
                                gateway = gateway_id,
                                "status of a gateway that is not enrolled"
                            );
                            break;
                        }
                        Ok(a) => {
                            metrics.count_gateway_status(status.as_str());
                            tracing::info!(
                                gateway = gateway_id,
                                status = status.as_str(),
                                devices = a.devices,
                                offline_since = ?a.offline_since,
                                retained = d.publish.retain,
                                "gateway status"
                            );
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(gateway = gateway_id, error = %format!("{e:#}"), retry_in_ms = backoff.as_millis() as u64, "gateway status not applied");
                            tokio::select! {
                                _ = tokio::time::sleep(backoff) => {}
                                _ = shutdown.cancelled() => return,
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                        }
                    }
                }
            }
        }
        if d.epoch == epoch.load(Ordering::SeqCst) && d.publish.qos != QoS::AtMostOnce {
            acks_unsent.fetch_add(1, Ordering::SeqCst);
            if let Err(e) = client.ack(&d.publish).await {
                let _ = acks_unsent.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    Some(n.saturating_sub(1))
                });
                tracing::warn!(error = %e, "acknowledging a gateway status");
            }
        }
    }
}

/// Shared state for health checks.
#[derive(Default)]
pub struct Status {
    /// Whether the broker connection is up (set on CONNACK, cleared on a
    /// connection error); `/readyz` needs it.
    pub mqtt_connected: AtomicBool,
    /// Whether the database answered the last write (cleared by a
    /// connection-class failure, set again by the next successful write);
    /// `/readyz` needs it.
    pub db_ok: AtomicBool,
}

/// Load the verifier: every verifying key in `keys_dir`, the table's bounds.
pub fn load_verifier(cfg: &IngestConfig) -> Result<Verifier> {
    let keys = crate::zk_cli::load_verifying_keys(&cfg.zk.keys_dir)
        .with_context(|| format!("zk.keys_dir = {}", cfg.zk.keys_dir.display()))?;
    let dev = if cfg.zk.allow_dev_keys {
        DevKeys::Allow
    } else {
        DevKeys::Refuse
    };
    let weights = if cfg.zk.batch_weight_bits == 64 {
        BatchWeights::Bits64
    } else {
        BatchWeights::Bits128
    };
    Ok(Verifier::new(keys, Policy::from_spec(), dev)
        .map_err(|e| anyhow::anyhow!("zk: {e} (set zk.allow_dev_keys only for development)"))?
        .with_batch_weights(weights))
}

/// Replay quarantined readings of devices that just registered.
async fn replay_registered(
    committer: &Committer<'_>,
    devices: &[String],
    shutdown: &CancellationToken,
) -> Result<()> {
    let query = quarantine::for_replay(
        committer.pool,
        Some(quarantine::Reason::UnknownDevice.code()),
        devices,
        10_000,
    );
    let rows = tokio::select! {
        r = query => r?,
        // Left for the next registration or `quarantine replay`.
        _ = shutdown.cancelled() => return Ok(()),
    };
    if rows.is_empty() {
        return Ok(());
    }
    tracing::info!(
        count = rows.len(),
        "replaying readings that arrived before their registration"
    );
    let messages: Vec<Message> = rows.into_iter().map(quarantine::Rejected::replay).collect();
    committer
        .commit(&messages, &Allowance::unlimited(), shutdown)
        .await;
    Ok(())
}

/// Charge a committed plan's verification work to the gateways' fair
/// share, and count what it quarantined for the proof budget and its bad proofs.
fn account(fair: &mut FairShare, metrics: &Metrics, plan: &plan::Plan) {
    fair.charge(&plan.proof_usage, Instant::now());
    for g in &plan.proof_limited {
        metrics.gateway_rate_limited(&fair.label(g), "proofs");
    }
    for (g, u) in &plan.proof_usage {
        if u.bad > 0 {
            metrics.gateway_bad_proofs(&fair.label(g), u.bad);
        }
    }
}

/// Replay `rate_limited` quarantine rows whose gateway has message tokens
/// again (each takes one), oldest first, at most `max` — so a gateway's
/// excess comes back by itself at its own rate. Each row is deleted in the
/// transaction that stores its message's new outcome. Called between
/// batches, every `fair_share.replay_interval_ms`. Shutdown abandons a
/// replay that cannot commit (its rows simply stay in quarantine).
async fn replay_rate_limited(
    committer: &Committer<'_>,
    fair: &mut FairShare,
    max: usize,
    shutdown: &CancellationToken,
) {
    let per_gateway = (max / 2).max(1) as i64;
    let query = quarantine::rate_limited_for_replay(committer.pool, per_gateway, max as i64);
    // A database that is gone must not hold up a shutdown (pool waits are long).
    let rows = match tokio::select! {
        r = query => r,
        _ = shutdown.cancelled() => return,
    } {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "cannot read rate_limited rows to replay");
            return;
        }
    };
    let now = Instant::now();
    let mut gateways: Vec<String> = Vec::new();
    let messages: Vec<Message> = rows
        .into_iter()
        .filter_map(|r| {
            let g = r.gateway_id.clone()?;
            fair.admit(&g, now).ok()?;
            gateways.push(g);
            Some(r.replay())
        })
        .collect();
    if messages.is_empty() {
        return;
    }
    let allowance = fair.allowance(gateways.iter().map(String::as_str), now);
    if let Some(done) = committer.commit(&messages, &allowance, shutdown).await {
        account(fair, committer.metrics, &done.plan);
        committer
            .metrics
            .rate_limited_replayed
            .inc_by(messages.len() as u64);
        tracing::debug!(count = messages.len(), "replayed rate_limited messages");
    }
}

/// Apply quarantine retention between batches; a failure is logged (the
/// next tick tries again), never fatal.
async fn prune_quarantine(pool: &PgPool, cfg: &crate::config::QuarantineConfig, metrics: &Metrics) {
    match quarantine::prune(pool, cfg.max_age_days, cfg.max_bytes).await {
        Ok(p) => {
            for (cause, n) in [("age", p.by_age), ("quota", p.by_quota)] {
                if n > 0 {
                    metrics
                        .quarantine_dropped
                        .get_or_create(&crate::metrics::CauseLabel {
                            cause: cause.into(),
                        })
                        .inc_by(n);
                    tracing::warn!(
                        rows = n,
                        cause,
                        "quarantine retention dropped the oldest rows"
                    );
                }
            }
        }
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "quarantine retention failed"),
    }
}

/// A batch taken from the broker, with its plan (decoded, resolved,
/// verified) unless planning failed — then the writer plans it again in its
/// retry loop.
struct Planned {
    batch: Vec<Delivery>,
    messages: Vec<Message>,
    allowance: Allowance,
    plan: Option<(plan::Plan, Duration)>,
    /// Told once the batch is committed and acknowledged.
    committed: Option<oneshot::Sender<()>>,
}

/// Commit a planned batch; if that fails, or it was not planned, fall back
/// to [`Committer::commit`] (plan again and write: connection failures
/// retried, messages that cannot be stored isolated). Returns the devices
/// the batch registered; `None` if `stop` fired before it committed (then
/// nothing of it may be acknowledged).
async fn write_planned(
    committer: &Committer<'_>,
    p: &mut Planned,
    stop: &CancellationToken,
) -> Option<Vec<String>> {
    if let Some((plan, plan_time)) = p.plan.take() {
        let started = Instant::now();
        let written = tokio::select! {
            w = store::write(committer.pool, &plan, committer.name) => w,
            _ = stop.cancelled() => return None,
        };
        match written {
            Ok(written) => {
                committer.status.db_ok.store(true, Ordering::Relaxed);
                committer
                    .metrics
                    .record_batch(&plan, &written, plan_time, started.elapsed());
                return Some(plan.registered);
            }
            Err(e) => {
                committer.metrics.batch_failures.inc();
                if commit::classify(&e) == commit::Failure::Connection {
                    committer.status.db_ok.store(false, Ordering::Relaxed);
                }
                tracing::warn!(error = %format!("{e:#}"), "batch not written; planning it again");
            }
        }
    }
    committer
        .commit(&p.messages, &p.allowance, stop)
        .await
        .map(|done| done.plan.registered)
}

/// Run until `shutdown`: then finish the batch in hand, acknowledge it, and
/// disconnect (the broker keeps the session and queues for our return).
///
/// Four tasks: the broker's event loop (`event_loop`), the gateway-status
/// follower (`follow_gateway_status`), the writer (`write_batches`) and
/// this one, which gathers batches, admits them through fair share and plans
/// them (`gather`, `admit`, then `plan::plan_with`).
pub async fn run(
    cfg: IngestConfig,
    pool: PgPool,
    verifier: Arc<Verifier>,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
    shutdown: CancellationToken,
) -> Result<()> {
    let name = format!(
        "hailan-ingest/{}/{}",
        cfg.mqtt.client_id,
        std::process::id()
    );
    let (client, eventloop) = AsyncClient::new(mqtt_options(&cfg.mqtt)?, 10_000);
    let (tx, mut rx) = mpsc::unbounded_channel::<Delivery>();
    let flow = Flow::new(&cfg.batch);
    let epoch = Arc::new(AtomicU64::new(0));
    let (to_link, from_loop) = mpsc::unbounded_channel::<StatusDelivery>();
    let link_task = tokio::spawn(follow_gateway_status(
        pool.clone(),
        client.clone(),
        from_loop,
        Arc::clone(&epoch),
        Arc::clone(&flow.acks_unsent),
        Arc::clone(&metrics),
        shutdown.clone(),
    ));
    // The event loop outlives `shutdown` until the last batch's acks and the
    // DISCONNECT have gone out (`loop_stop`).
    let loop_stop = CancellationToken::new();
    let loop_handle = tokio::spawn(event_loop(
        eventloop,
        Broker {
            client: client.clone(),
            epoch: Arc::clone(&epoch),
            flow: flow.clone(),
        },
        Arc::clone(&status),
        subscriptions(&cfg.mqtt),
        to_link.clone(),
        tx,
        loop_stop.clone(),
    ));
    let finish_by = grace_after(&shutdown);
    let (to_writer, planned_batches) = mpsc::channel::<Planned>(1);
    let writer = tokio::spawn(write_batches(
        Writer {
            pool: pool.clone(),
            verifier: Arc::clone(&verifier),
            name: name.clone(),
            metrics: Arc::clone(&metrics),
            status: Arc::clone(&status),
        },
        planned_batches,
        Broker {
            client: client.clone(),
            epoch: Arc::clone(&epoch),
            flow: flow.clone(),
        },
        shutdown.clone(),
        finish_by,
    ));

    let max_wait = Duration::from_millis(cfg.batch.max_wait_ms);
    let mut fair = FairShare::new(cfg.fair_share.clone());
    let replay_on = cfg.fair_share.enabled && cfg.fair_share.replay_interval_ms > 0;
    let mut replay_tick = tokio::time::interval(Duration::from_millis(
        cfg.fair_share.replay_interval_ms.max(1),
    ));
    replay_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // Replays of rate_limited rows commit from this loop, between batches.
    let replayer = Committer {
        pool: &pool,
        verifier: &verifier,
        name: &name,
        metrics: &metrics,
        status: &status,
    };
    let retention = cfg.quarantine.clone();
    let prune_on = retention.prune_interval_s > 0;
    let mut prune_tick =
        tokio::time::interval(Duration::from_secs(retention.prune_interval_s.max(1)));
    prune_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let first = tokio::select! {
            d = rx.recv() => match d { Some(d) => d, None => break },
            _ = prune_tick.tick(), if prune_on => {
                tokio::select! {
                    _ = prune_quarantine(&pool, &retention, &metrics) => {}
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
            _ = replay_tick.tick(), if replay_on => {
                replay_rate_limited(&replayer, &mut fair, cfg.batch.max_messages, &shutdown).await;
                continue;
            }
            _ = shutdown.cancelled() => break,
        };
        metrics.delivery_backlog.set(rx.len() as i64 + 1);
        let (batch, bytes) = gather(&mut rx, first, &cfg.batch, max_wait).await;
        flow.handed_over(batch.len(), bytes);
        let now = Instant::now();
        let (messages, admitted) = admit(&batch, &mut fair, &metrics, now);
        let allowance = fair.allowance(admitted.iter().map(String::as_str), now);
        // Plan (decode, resolve, verify) here while the writer commits the
        // batch before; a plan that fails is planned again by the writer.
        let started = Instant::now();
        let planning = plan::plan_with(&pool, Arc::clone(&verifier), &messages, &allowance);
        let planned = tokio::select! {
            p = planning => p,
            // Unacknowledged, the batch is redelivered to the next session.
            _ = shutdown.cancelled() => break,
        };
        let plan = match planned {
            Ok(plan) => {
                account(&mut fair, &metrics, &plan);
                Some((plan, started.elapsed()))
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "batch not planned; the writer retries it");
                None
            }
        };
        // A batch that registers or changes devices commits before the next
        // is planned: the next may hold their readings (and the quarantine
        // replay of a registration must see them).
        let barrier = plan
            .as_ref()
            .is_none_or(|(p, _)| !p.devices.is_empty() || !p.registered.is_empty());
        let (committed, wait) = if barrier {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let planned = Planned {
            batch,
            messages,
            allowance,
            plan,
            committed,
        };
        if to_writer.send(planned).await.is_err() {
            break;
        }
        if let Some(wait) = wait
            && wait.await.is_err()
        {
            break;
        }
    }
    // A batch in hand is finished if it commits within the grace period
    // after shutdown: the writer drains what was planned, then stops.
    drop(to_writer);
    match writer.await {
        Ok(result) => result?,
        Err(e) => tracing::error!(error = %e, "the writer task failed"),
    }
    tracing::info!("shutting down: committed batches acknowledged, the rest left to the broker");
    drop(rx);
    drop(to_link);
    link_task.abort();
    let _ = client.disconnect().await;
    let mut loop_handle = loop_handle;
    // The DISCONNECT goes out in milliseconds when the broker is there; a
    // broker that is not does not hold the exit up.
    if tokio::time::timeout(Duration::from_secs(1), &mut loop_handle)
        .await
        .is_err()
    {
        loop_stop.cancel();
        let _ = loop_handle.await;
    }
    Ok(())
}

/// The MQTT session: persistent (clean session off), manual acks, room for
/// the largest envelope, TLS when a CA is configured.
fn mqtt_options(cfg: &crate::config::MqttConfig) -> Result<MqttOptions> {
    let mut opts = MqttOptions::new(&cfg.client_id, &cfg.host, cfg.port);
    opts.set_clean_session(false);
    opts.set_manual_acks(true);
    opts.set_keep_alive(Duration::from_secs(cfg.keep_alive_s.max(5)));
    opts.set_max_packet_size(hailan_proto::envelope::MAX_ENVELOPE_BYTES + 4096, 4096);
    if let Some(pw) = &cfg.password {
        opts.set_credentials(&cfg.username, pw);
    }
    if let Some(ca) = &cfg.ca_file {
        let pem = std::fs::read(ca).with_context(|| format!("mqtt.ca_file = {}", ca.display()))?;
        opts.set_transport(rumqttc::Transport::tls(pem, None, None));
    }
    Ok(opts)
}

/// The readings subscriptions plus the gateway-status one.
fn subscriptions(cfg: &crate::config::MqttConfig) -> Vec<String> {
    let mut subscriptions = cfg.subscriptions.clone();
    if !cfg.status_subscription.is_empty() && !subscriptions.contains(&cfg.status_subscription) {
        subscriptions.push(cfg.status_subscription.clone());
    }
    subscriptions
}

/// A token cancelled [`SHUTDOWN_GRACE`] after `shutdown`: a batch in hand
/// when shutdown is asked is finished if it can be by then; after it,
/// whatever is not committed is left to the broker (a supervisor's stop
/// timeout must never be what ends us).
fn grace_after(shutdown: &CancellationToken) -> CancellationToken {
    let finish_by = CancellationToken::new();
    let (shutdown, done) = (shutdown.clone(), finish_by.clone());
    tokio::spawn(async move {
        shutdown.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
        done.cancel();
    });
    finish_by
}

/// How much the event loop holds for the batch loop, and the acks it still
/// has to send.
///
/// The event loop must never wait for the batch loop while acks are queued:
/// rumqttc sends them from the same loop (one queued request per poll), and
/// an event loop parked on a full delivery channel while the batch loop
/// waits on a full request queue is a deadlock — seen under a 20,000-message
/// flood (ingest/tests/fair_share.rs). So the delivery channel is unbounded,
/// and the event loop pauses (stops reading the broker) only while more
/// than `high_water` messages (or bytes) are held *and* no ack is waiting to
/// go out. (Mosquitto 2.0.11 was measured sending well past
/// `max_inflight_messages` to this client, so the broker's window alone does
/// not bound what is held.)
#[derive(Clone)]
struct Flow {
    held: Arc<AtomicUsize>,
    held_bytes: Arc<AtomicUsize>,
    acks_unsent: Arc<AtomicUsize>,
    drained: Arc<tokio::sync::Notify>,
    high_water: usize,
    high_water_bytes: usize,
}

impl Flow {
    fn new(batch: &crate::config::BatchConfig) -> Flow {
        Flow {
            held: Arc::default(),
            held_bytes: Arc::default(),
            acks_unsent: Arc::default(),
            drained: Arc::default(),
            high_water: batch.max_messages.max(1) * 4,
            high_water_bytes: batch.max_bytes.max(1).saturating_mul(4),
        }
    }

    /// Wait while too much is held and no ack is queued (or until `stop`).
    async fn wait_for_room(&self, stop: &CancellationToken) {
        while (self.held.load(Ordering::SeqCst) >= self.high_water
            || self.held_bytes.load(Ordering::SeqCst) >= self.high_water_bytes)
            && self.acks_unsent.load(Ordering::SeqCst) == 0
            && !stop.is_cancelled()
        {
            tokio::select! {
                _ = self.drained.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = stop.cancelled() => {}
            }
        }
    }

    /// The event loop handed a message of `bytes` to the batch loop.
    fn took(&self, bytes: usize) {
        self.held.fetch_add(1, Ordering::SeqCst);
        self.held_bytes.fetch_add(bytes, Ordering::SeqCst);
    }

    /// The batch loop took `n` messages of `bytes` into a batch.
    fn handed_over(&self, n: usize, bytes: usize) {
        self.held.fetch_sub(n, Ordering::SeqCst);
        self.held_bytes.fetch_sub(bytes, Ordering::SeqCst);
        self.drained.notify_one();
    }

    /// An ack was queued for the event loop to send.
    fn ack_queued(&self) {
        self.acks_unsent.fetch_add(1, Ordering::SeqCst);
    }

    /// The event loop sent an ack.
    fn ack_sent(&self) {
        let _ = self
            .acks_unsent
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                Some(n.saturating_sub(1))
            });
    }
}

/// What the event loop and the writer share of the broker connection: the
/// client (for subscriptions and acks), the connection's epoch (a message
/// is acked only on the connection it came on), and the flow counters.
struct Broker {
    client: AsyncClient,
    epoch: Arc<AtomicU64>,
    flow: Flow,
}

/// The broker's event loop: connection, subscription, incoming messages
/// (readings to `deliveries`, gateway statuses to `statuses`), and the
/// outgoing acks; reconnects with capped backoff until `stop`.
async fn event_loop(
    mut eventloop: rumqttc::EventLoop,
    broker: Broker,
    status: Arc<Status>,
    subscriptions: Vec<String>,
    statuses: mpsc::UnboundedSender<StatusDelivery>,
    deliveries: mpsc::UnboundedSender<Delivery>,
    stop: CancellationToken,
) {
    let Broker {
        client,
        epoch,
        flow,
    } = broker;
    let mut backoff = Duration::from_millis(200);
    loop {
        flow.wait_for_room(&stop).await;
        let event = tokio::select! {
            e = eventloop.poll() => e,
            _ = stop.cancelled() => break,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                let e = epoch.fetch_add(1, Ordering::SeqCst) + 1;
                status.mqtt_connected.store(true, Ordering::Relaxed);
                backoff = Duration::from_millis(200);
                tracing::info!(
                    session_present = ack.session_present,
                    epoch = e,
                    "connected to the broker"
                );
                for filter in &subscriptions {
                    // Never wait on the request queue here: only this
                    // loop empties it.
                    if let Err(err) = client.try_subscribe(filter, QoS::AtLeastOnce) {
                        tracing::error!(%err, filter, "cannot subscribe");
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish)))
                if matches!(
                    hailan_proto::topic::parse(&publish.topic),
                    Some(hailan_proto::topic::Topic::Status { .. })
                ) =>
            {
                // A gateway's online/offline: applied in arrival order by
                // the link task, stamped with when it was seen.
                let _ = statuses.send(StatusDelivery {
                    epoch: epoch.load(Ordering::SeqCst),
                    seen_at: chrono::Utc::now(),
                    publish,
                });
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let size = publish.payload.len();
                let d = Delivery {
                    epoch: epoch.load(Ordering::SeqCst),
                    publish,
                };
                // After shutdown nobody takes it: unacknowledged, it is
                // redelivered to the next session. Keep polling so the last
                // acks and the DISCONNECT go out.
                if deliveries.send(d).is_ok() {
                    flow.took(size);
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => tracing::info!("subscribed"),
            Ok(Event::Outgoing(rumqttc::Outgoing::PubAck(_))) => flow.ack_sent(),
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
            Ok(_) => {}
            Err(err) => {
                status.mqtt_connected.store(false, Ordering::Relaxed);
                tracing::warn!(%err, retry_in_ms = backoff.as_millis() as u64, "broker connection lost");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// What the writer owns to build its [`Committer`].
struct Writer {
    pool: PgPool,
    verifier: Arc<Verifier>,
    name: String,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
}

/// The writer: commits planned batches in order, then acknowledges their
/// messages (on the connection they came on) and replays the quarantined
/// readings of devices a batch registered. One batch can wait planned while
/// another is written, so verification overlaps the previous batch's
/// transaction. A batch not committed by `finish_by` is left
/// unacknowledged, for the broker to redeliver.
async fn write_batches(
    w: Writer,
    mut planned_batches: mpsc::Receiver<Planned>,
    broker: Broker,
    shutdown: CancellationToken,
    finish_by: CancellationToken,
) -> Result<()> {
    let committer = Committer {
        pool: &w.pool,
        verifier: &w.verifier,
        name: &w.name,
        metrics: &w.metrics,
        status: &w.status,
    };
    while let Some(mut p) = planned_batches.recv().await {
        let Some(registered) = write_planned(&committer, &mut p, &finish_by).await else {
            break;
        };
        let current = broker.epoch.load(Ordering::SeqCst);
        for d in &p.batch {
            if d.epoch == current {
                if d.publish.qos != QoS::AtMostOnce {
                    broker.flow.ack_queued();
                }
                broker
                    .client
                    .ack(&d.publish)
                    .await
                    .context("acknowledging")?;
            } else {
                w.metrics.stale_acks_skipped.inc();
            }
        }
        if !registered.is_empty()
            && let Err(e) = replay_registered(&committer, &registered, &shutdown).await
        {
            tracing::warn!(error = %format!("{e:#}"), "replaying quarantine failed; `hailan-ingest quarantine replay` retries");
        }
        if let Some(committed) = p.committed {
            let _ = committed.send(());
        }
    }
    Ok(())
}

/// Gather a batch starting with `first`: more deliveries until the batch is
/// full (messages or bytes) or `max_wait` has passed. Returns it and its bytes.
async fn gather(
    rx: &mut mpsc::UnboundedReceiver<Delivery>,
    first: Delivery,
    limits: &crate::config::BatchConfig,
    max_wait: Duration,
) -> (Vec<Delivery>, usize) {
    let mut bytes = first.publish.payload.len();
    let mut batch = vec![first];
    let deadline = tokio::time::Instant::now() + max_wait;
    while batch.len() < limits.max_messages && bytes < limits.max_bytes {
        tokio::select! {
            d = rx.recv() => match d {
                Some(d) => {
                    bytes += d.publish.payload.len();
                    batch.push(d);
                }
                None => break,
            },
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    (batch, bytes)
}

/// Fair share at the door: a message over its gateway's message limit is
/// marked (and quarantined undecoded by planning). Returns the messages and
/// the gateways of those admitted, whose proof budget is then fixed once for
/// the batch (so a retried batch is not charged twice).
fn admit(
    batch: &[Delivery],
    fair: &mut FairShare,
    metrics: &Metrics,
    now: Instant,
) -> (Vec<Message>, Vec<String>) {
    let mut admitted: Vec<String> = Vec::new();
    let messages = batch
        .iter()
        .map(|d| {
            let topic = d.publish.topic.clone();
            let gateway = match hailan_proto::topic::parse(&topic) {
                Some(hailan_proto::topic::Topic::Up { gateway_id }) => Some(gateway_id.to_owned()),
                _ => None,
            };
            let rate_limited = gateway.and_then(|g| {
                let r = fair.admit(&g, now).err();
                if r.is_some() {
                    metrics.gateway_rate_limited(&fair.label(&g), "messages");
                } else {
                    admitted.push(g);
                }
                r
            });
            Message {
                topic,
                payload: d.publish.payload.clone(),
                from_quarantine: None,
                rate_limited,
            }
        })
        .collect();
    (messages, admitted)
}
