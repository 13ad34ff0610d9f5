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
//! is planned). A batch that cannot be written is kept and retried
//! with backoff (PostgreSQL down: nothing is acked, nothing is lost; the
//! broker's in-flight window bounds what is held in memory). A message whose
//! connection has since been replaced is not acked: the broker redelivers it
//! on the new connection, and the unique key absorbs the duplicate.

use crate::config::IngestConfig;
use crate::fair_share::{Allowance, FairShare};
use crate::metrics::Metrics;
use crate::plan::{self, Message};
use crate::{quarantine, store};
use anyhow::{Context, Result};
use hailan_proto::zk::{BatchWeights, DevKeys, Policy, Verifier};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use sqlx::PgPool;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// A received message and the connection it arrived on.
struct Delivery {
    epoch: u64,
    publish: Publish,
}

/// Shared state for health checks.
#[derive(Default)]
pub struct Status {
    pub mqtt_connected: AtomicBool,
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

/// Whether an error came from the database (or the connection to it), as
/// opposed to a bug tripped by some input.
fn is_database_error(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<sqlx::Error>().is_some())
}

/// Plan and write `messages`, retrying with capped backoff until it commits
/// or `shutdown` fires (then the batch is left unacknowledged, for redelivery).
///
/// A batch that keeps failing for a reason other than the database is not
/// retried for ever: it is split, and a message that fails on its own is
/// quarantined as `internal_error` so the rest flows on.
#[allow(clippy::too_many_arguments)]
pub async fn process(
    pool: &PgPool,
    verifier: &Arc<Verifier>,
    messages: &[Message],
    allowance: &Allowance,
    name: &str,
    metrics: &Metrics,
    status: &Status,
    shutdown: &CancellationToken,
) -> Option<plan::Plan> {
    let mut delay = Duration::from_millis(100);
    let mut input_failures = 0;
    loop {
        let started = Instant::now();
        let attempt = async {
            let plan = plan::plan_with(pool, Arc::clone(verifier), messages, allowance).await?;
            let verified_at = Instant::now();
            let written = store::write(pool, &plan, name).await?;
            anyhow::Ok((plan, written, verified_at))
        };
        match attempt.await {
            Ok((plan, written, verified_at)) => {
                status.db_ok.store(true, Ordering::Relaxed);
                metrics.record_batch(
                    &plan,
                    &written,
                    verified_at - started,
                    verified_at.elapsed(),
                );
                return Some(plan);
            }
            Err(e) => {
                metrics.batch_failures.inc();
                if is_database_error(&e) {
                    status.db_ok.store(false, Ordering::Relaxed);
                } else {
                    input_failures += 1;
                    if input_failures >= 3 {
                        return isolate(
                            pool, verifier, messages, allowance, name, metrics, status, shutdown,
                            &e,
                        )
                        .await;
                    }
                }
                tracing::warn!(error = %format!("{e:#}"), retry_in_ms = delay.as_millis() as u64, "batch not written; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return None,
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Process a failing batch one message at a time; quarantine the ones that
/// fail alone. Returns the merged plan of what was written.
#[allow(clippy::too_many_arguments)]
async fn isolate(
    pool: &PgPool,
    verifier: &Arc<Verifier>,
    messages: &[Message],
    allowance: &Allowance,
    name: &str,
    metrics: &Metrics,
    status: &Status,
    shutdown: &CancellationToken,
    first_error: &anyhow::Error,
) -> Option<plan::Plan> {
    tracing::error!(error = %format!("{first_error:#}"), messages = messages.len(), "batch fails on its input; isolating the message");
    let mut merged = plan::Plan::default();
    for m in messages {
        let one = std::slice::from_ref(m);
        let outcome = async {
            let plan = plan::plan_with(pool, Arc::clone(verifier), one, allowance).await?;
            store::write(pool, &plan, name).await?;
            anyhow::Ok(plan)
        }
        .await;
        let plan = match outcome {
            Ok(p) => p,
            Err(e) if is_database_error(&e) => {
                // The database went away meanwhile: back to the retry loop.
                return Box::pin(process(
                    pool, verifier, messages, allowance, name, metrics, status, shutdown,
                ))
                .await;
            }
            Err(e) => {
                let mut p = plan::Plan {
                    message_count: 1,
                    replayed: m.from_quarantine.into_iter().collect(),
                    ..Default::default()
                };
                p.quarantine.push(plan::QuarantineRow {
                    topic: m.topic.clone(),
                    gateway_id: hailan_proto::topic::parse(&m.topic).and_then(|t| match t {
                        hailan_proto::topic::Topic::Up { gateway_id } => {
                            Some(gateway_id.to_owned())
                        }
                        hailan_proto::topic::Topic::Status { .. } => None,
                    }),
                    device_id: None,
                    data_type: None,
                    seq: None,
                    reason: quarantine::Reason::InternalError,
                    detail: format!("{e:#}"),
                    payload: m.payload.clone(),
                });
                if let Err(e) = store::write(pool, &p, name).await {
                    tracing::warn!(error = %format!("{e:#}"), "cannot quarantine; retrying the batch");
                    return Box::pin(process(
                        pool, verifier, messages, allowance, name, metrics, status, shutdown,
                    ))
                    .await;
                }
                p
            }
        };
        merged.message_count += plan.message_count;
        merged.registered.extend(plan.registered);
        merged.quarantine.extend(plan.quarantine);
    }
    Some(merged)
}

/// Replay quarantined readings of devices that just registered.
async fn replay_registered(
    pool: &PgPool,
    verifier: &Arc<Verifier>,
    devices: &[String],
    name: &str,
    metrics: &Metrics,
    status: &Status,
    shutdown: &CancellationToken,
) -> Result<()> {
    let rows = quarantine::for_replay(
        pool,
        Some(quarantine::Reason::UnknownDevice.code()),
        devices,
        10_000,
    )
    .await?;
    if rows.is_empty() {
        return Ok(());
    }
    tracing::info!(
        count = rows.len(),
        "replaying readings that arrived before their registration"
    );
    let messages: Vec<Message> = rows
        .into_iter()
        .map(|r| Message {
            topic: r.topic,
            payload: r.payload,
            from_quarantine: Some(r.id),
            rate_limited: None,
        })
        .collect();
    let unlimited = Allowance::unlimited();
    process(
        pool, verifier, &messages, &unlimited, name, metrics, status, shutdown,
    )
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
#[allow(clippy::too_many_arguments)]
async fn replay_rate_limited(
    pool: &PgPool,
    verifier: &Arc<Verifier>,
    fair: &mut FairShare,
    max: usize,
    name: &str,
    metrics: &Metrics,
    status: &Status,
    shutdown: &CancellationToken,
) {
    let per_gateway = (max / 2).max(1) as i64;
    let rows = match quarantine::rate_limited_for_replay(pool, per_gateway, max as i64).await {
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
            let g = r.gateway_id?;
            fair.admit(&g, now).ok()?;
            gateways.push(g);
            Some(Message {
                topic: r.topic,
                payload: r.payload,
                from_quarantine: Some(r.id),
                rate_limited: None,
            })
        })
        .collect();
    if messages.is_empty() {
        return;
    }
    let allowance = fair.allowance(gateways.iter().map(String::as_str), now);
    if let Some(plan) = process(
        pool, verifier, &messages, &allowance, name, metrics, status, shutdown,
    )
    .await
    {
        account(fair, metrics, &plan);
        metrics.rate_limited_replayed.inc_by(messages.len() as u64);
        tracing::debug!(count = messages.len(), "replayed rate_limited messages");
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
/// to [`process`] (plan again and write, with backoff, isolating bad input).
/// Returns the devices the batch registered; `None` only if it can never be
/// written (never: the batch in hand is finished whatever the shutdown).
async fn write_planned(
    pool: &PgPool,
    verifier: &Arc<Verifier>,
    p: &mut Planned,
    name: &str,
    metrics: &Metrics,
    status: &Status,
) -> Option<Vec<String>> {
    if let Some((plan, plan_time)) = p.plan.take() {
        let started = Instant::now();
        match store::write(pool, &plan, name).await {
            Ok(written) => {
                status.db_ok.store(true, Ordering::Relaxed);
                metrics.record_batch(&plan, &written, plan_time, started.elapsed());
                return Some(plan.registered);
            }
            Err(e) => {
                metrics.batch_failures.inc();
                if is_database_error(&e) {
                    status.db_ok.store(false, Ordering::Relaxed);
                }
                tracing::warn!(error = %format!("{e:#}"), "batch not written; planning it again");
            }
        }
    }
    let finish = CancellationToken::new();
    process(
        pool,
        verifier,
        &p.messages,
        &p.allowance,
        name,
        metrics,
        status,
        &finish,
    )
    .await
    .map(|plan| plan.registered)
}

/// Run until `shutdown`: then finish the batch in hand, acknowledge it, and
/// disconnect (the broker keeps the session and queues for our return).
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
    let mut opts = MqttOptions::new(&cfg.mqtt.client_id, &cfg.mqtt.host, cfg.mqtt.port);
    opts.set_clean_session(false);
    opts.set_manual_acks(true);
    opts.set_keep_alive(Duration::from_secs(cfg.mqtt.keep_alive_s.max(5)));
    opts.set_max_packet_size(hailan_proto::envelope::MAX_ENVELOPE_BYTES + 4096, 4096);
    if let Some(pw) = &cfg.mqtt.password {
        opts.set_credentials(&cfg.mqtt.username, pw);
    }
    if let Some(ca) = &cfg.mqtt.ca_file {
        let pem = std::fs::read(ca).with_context(|| format!("mqtt.ca_file = {}", ca.display()))?;
        opts.set_transport(rumqttc::Transport::tls(pem, None, None));
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 10_000);
    // The event loop must never wait for the batch loop while acks are
    // queued: rumqttc sends them from the same loop (one queued request per
    // poll), and an event loop parked on a full delivery channel while the
    // batch loop waits on a full request queue is a deadlock — seen under a
    // 20,000-message flood (ingest/tests/fair_share.rs). So the channel is
    // unbounded, and the event loop pauses (stops reading the broker) only
    // while more than `high_water` messages are held *and* no ack is waiting
    // to go out. (Mosquitto 2.0.11 was measured sending well past
    // `max_inflight_messages` to this client, so the broker's window alone
    // does not bound what is held.)
    let (tx, mut rx) = mpsc::unbounded_channel::<Delivery>();
    let held = Arc::new(AtomicUsize::new(0));
    let acks_unsent = Arc::new(AtomicUsize::new(0));
    let drained = Arc::new(tokio::sync::Notify::new());
    let high_water = cfg.batch.max_messages.max(1) * 4;
    let epoch = Arc::new(AtomicU64::new(0));

    // The event loop: connection, subscription, incoming messages, and the
    // outgoing acks. It outlives `shutdown` until the last batch's acks and
    // the DISCONNECT have gone out (`loop_stop`).
    let loop_stop = CancellationToken::new();
    let loop_handle = {
        let client = client.clone();
        let epoch = Arc::clone(&epoch);
        let status = Arc::clone(&status);
        let shutdown = loop_stop.clone();
        let subscriptions = cfg.mqtt.subscriptions.clone();
        let (held, acks_unsent, drained) = (
            Arc::clone(&held),
            Arc::clone(&acks_unsent),
            Arc::clone(&drained),
        );
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            loop {
                // Back-pressure without deadlock (see above).
                while held.load(Ordering::SeqCst) >= high_water
                    && acks_unsent.load(Ordering::SeqCst) == 0
                    && !shutdown.is_cancelled()
                {
                    tokio::select! {
                        _ = drained.notified() => {}
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
                let event = tokio::select! {
                    e = eventloop.poll() => e,
                    _ = shutdown.cancelled() => break,
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
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let d = Delivery {
                            epoch: epoch.load(Ordering::SeqCst),
                            publish,
                        };
                        // After shutdown nobody takes it: unacknowledged, it is
                        // redelivered to the next session. Keep polling so the
                        // last acks and the DISCONNECT go out.
                        if tx.send(d).is_ok() {
                            held.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => tracing::info!("subscribed"),
                    Ok(Event::Outgoing(rumqttc::Outgoing::PubAck(_))) => {
                        let _ = acks_unsent.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                            Some(n.saturating_sub(1))
                        });
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                    Ok(_) => {}
                    Err(err) => {
                        status.mqtt_connected.store(false, Ordering::Relaxed);
                        tracing::warn!(%err, retry_in_ms = backoff.as_millis() as u64, "broker connection lost");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = shutdown.cancelled() => break,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
        })
    };

    // The writer: commits planned batches in order, then acknowledges their
    // messages. One batch can wait planned while another is written, so
    // verification overlaps the previous batch's transaction.
    let (to_writer, mut planned_batches) = mpsc::channel::<Planned>(1);
    let writer = {
        let (pool, verifier, metrics, status) = (
            pool.clone(),
            Arc::clone(&verifier),
            Arc::clone(&metrics),
            Arc::clone(&status),
        );
        let (client, epoch, acks_unsent) =
            (client.clone(), Arc::clone(&epoch), Arc::clone(&acks_unsent));
        let (name, shutdown) = (name.clone(), shutdown.clone());
        tokio::spawn(async move {
            while let Some(mut p) = planned_batches.recv().await {
                let Some(registered) =
                    write_planned(&pool, &verifier, &mut p, &name, &metrics, &status).await
                else {
                    break;
                };
                let current = epoch.load(Ordering::SeqCst);
                for d in &p.batch {
                    if d.epoch == current {
                        if d.publish.qos != QoS::AtMostOnce {
                            acks_unsent.fetch_add(1, Ordering::SeqCst);
                        }
                        client.ack(&d.publish).await.context("acknowledging")?;
                    } else {
                        metrics.stale_acks_skipped.inc();
                    }
                }
                if !registered.is_empty()
                    && let Err(e) = replay_registered(
                        &pool,
                        &verifier,
                        &registered,
                        &name,
                        &metrics,
                        &status,
                        &shutdown,
                    )
                    .await
                {
                    tracing::warn!(error = %format!("{e:#}"), "replaying quarantine failed; `hailan-ingest quarantine replay` retries");
                }
                if let Some(committed) = p.committed {
                    let _ = committed.send(());
                }
            }
            anyhow::Ok(())
        })
    };

    let max_wait = Duration::from_millis(cfg.batch.max_wait_ms);
    let mut fair = FairShare::new(cfg.fair_share.clone());
    let replay_on = cfg.fair_share.enabled && cfg.fair_share.replay_interval_ms > 0;
    let mut replay_tick = tokio::time::interval(Duration::from_millis(
        cfg.fair_share.replay_interval_ms.max(1),
    ));
    replay_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let first = tokio::select! {
            d = rx.recv() => match d { Some(d) => d, None => break },
            _ = replay_tick.tick(), if replay_on => {
                replay_rate_limited(
                    &pool, &verifier, &mut fair, cfg.batch.max_messages, &name, &metrics, &status,
                    &shutdown,
                )
                .await;
                continue;
            }
            _ = shutdown.cancelled() => break,
        };
        metrics.delivery_backlog.set(rx.len() as i64 + 1);
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + max_wait;
        while batch.len() < cfg.batch.max_messages {
            tokio::select! {
                d = rx.recv() => match d { Some(d) => batch.push(d), None => break },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        // Fair share: a message over its gateway's message limit is marked
        // (and quarantined undecoded); the proof budget of the batch's
        // gateways is fixed once here, so a retried batch is not charged twice.
        let now = Instant::now();
        let mut gateways: Vec<String> = Vec::new();
        held.fetch_sub(batch.len(), Ordering::SeqCst);
        drained.notify_one();
        let messages: Vec<Message> = batch
            .iter()
            .map(|d| {
                let topic = d.publish.topic.clone();
                let gateway = match hailan_proto::topic::parse(&topic) {
                    Some(hailan_proto::topic::Topic::Up { gateway_id }) => {
                        Some(gateway_id.to_owned())
                    }
                    _ => None,
                };
                let rate_limited = gateway.and_then(|g| {
                    let r = fair.admit(&g, now).err();
                    if r.is_some() {
                        metrics.gateway_rate_limited(&fair.label(&g), "messages");
                    } else {
                        gateways.push(g);
                    }
                    r
                });
                Message {
                    topic,
                    payload: d.publish.payload.to_vec(),
                    from_quarantine: None,
                    rate_limited,
                }
            })
            .collect();
        let allowance = fair.allowance(gateways.iter().map(String::as_str), now);
        // Plan (decode, resolve, verify) here while the writer commits the
        // batch before; a plan that fails is planned again by the writer.
        let started = Instant::now();
        let plan = match plan::plan_with(&pool, Arc::clone(&verifier), &messages, &allowance).await
        {
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
    // Once a batch is in hand it is finished even if shutdown is asked
    // meanwhile: the writer drains what was planned, then stops.
    drop(to_writer);
    match writer.await {
        Ok(result) => result?,
        Err(e) => tracing::error!(error = %e, "the writer task failed"),
    }
    tracing::info!("shutting down: last batch acknowledged");
    drop(rx);
    let _ = client.disconnect().await;
    let mut loop_handle = loop_handle;
    if tokio::time::timeout(Duration::from_secs(5), &mut loop_handle)
        .await
        .is_err()
    {
        loop_stop.cancel();
        let _ = loop_handle.await;
    }
    Ok(())
}
