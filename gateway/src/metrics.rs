//! Prometheus metrics of the daemon, served at `/metrics` when
//! `metrics.listen` is set (off by default: a home gateway rarely has a
//! scraper; `hailan-gateway status` shows the same essentials).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// Every metric the gateway reports.
pub struct Metrics {
    pub registry: Registry,
    pub readings_taken: Counter,
    pub readings_queued: Counter,
    pub readings_refused: Counter,
    pub malformed: Counter,
    pub no_reading: Counter,
    pub unproven: Counter,
    pub states_refused: Counter,
    pub published: Counter,
    pub acked: Counter,
    pub broker_connects: Counter,
    pub broker_connected: Gauge,
    pub outbox_entries: Gauge,
    /// Paired devices that refused their bond (`needs_repair`).
    pub devices_needing_repair: Gauge,
    /// Links held now (`ble.max_connections` at most).
    pub ble_slots_held: Gauge,
    /// Devices waiting for a link.
    pub ble_slots_waiting: Gauge,
    pub outbox_readings: Gauge,
    pub outbox_bytes: Gauge,
    pub outbox_oldest_age_seconds: Gauge,
    pub prove_seconds: Histogram,
    pub publish_to_ack_seconds: Histogram,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut m = Metrics {
            registry: Registry::with_prefix("hailan_gateway"),
            readings_taken: Counter::default(),
            readings_queued: Counter::default(),
            readings_refused: Counter::default(),
            malformed: Counter::default(),
            no_reading: Counter::default(),
            unproven: Counter::default(),
            states_refused: Counter::default(),
            published: Counter::default(),
            acked: Counter::default(),
            broker_connects: Counter::default(),
            broker_connected: Gauge::default(),
            outbox_entries: Gauge::default(),
            devices_needing_repair: Gauge::default(),
            ble_slots_held: Gauge::default(),
            ble_slots_waiting: Gauge::default(),
            outbox_readings: Gauge::default(),
            outbox_bytes: Gauge::default(),
            outbox_oldest_age_seconds: Gauge::default(),
            prove_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            publish_to_ack_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
        };
        let r = &mut m.registry;
        r.register(
            "readings_taken",
            "Measurements decoded into readings",
            m.readings_taken.clone(),
        );
        r.register(
            "readings_queued",
            "Readings proven, sealed and committed to the outbox",
            m.readings_queued.clone(),
        );
        r.register(
            "readings_refused",
            "Readings not taken (outbox full or write failed)",
            m.readings_refused.clone(),
        );
        r.register(
            "malformed",
            "Characteristic values that did not decode",
            m.malformed.clone(),
        );
        r.register(
            "no_reading",
            "Measurements that make no reading (special values, missing fields)",
            m.no_reading.clone(),
        );
        r.register(
            "unproven",
            "Readings sent without proof (outside the proof bounds)",
            m.unproven.clone(),
        );
        r.register(
            "states_refused",
            "Device states not queued (outbox full)",
            m.states_refused.clone(),
        );
        r.register(
            "published",
            "Outbox envelopes published",
            m.published.clone(),
        );
        r.register(
            "acked",
            "Outbox envelopes acknowledged by the broker and removed",
            m.acked.clone(),
        );
        r.register(
            "broker_connects",
            "Connections made to the broker",
            m.broker_connects.clone(),
        );
        r.register(
            "broker_connected",
            "1 while connected to the broker",
            m.broker_connected.clone(),
        );
        r.register(
            "devices_needing_repair",
            "Paired devices that refused their bond: pair them again",
            m.devices_needing_repair.clone(),
        );
        r.register(
            "ble_slots_held",
            "Bluetooth links held now (at most ble.max_connections)",
            m.ble_slots_held.clone(),
        );
        r.register(
            "ble_slots_waiting",
            "Devices waiting for a free Bluetooth link",
            m.ble_slots_waiting.clone(),
        );
        r.register(
            "outbox_entries",
            "Unacknowledged outbox envelopes",
            m.outbox_entries.clone(),
        );
        r.register(
            "outbox_readings",
            "Unacknowledged readings",
            m.outbox_readings.clone(),
        );
        r.register(
            "outbox_bytes",
            "Bytes in the outbox",
            m.outbox_bytes.clone(),
        );
        r.register(
            "outbox_oldest_age_seconds",
            "Age of the oldest unacknowledged outbox envelope",
            m.outbox_oldest_age_seconds.clone(),
        );
        r.register(
            "prove_seconds",
            "Time to prove, seal and commit one envelope",
            m.prove_seconds.clone(),
        );
        r.register(
            "publish_to_ack_seconds",
            "Time from publish to PUBACK",
            m.publish_to_ack_seconds.clone(),
        );
        Arc::new(m)
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!("encoding metrics: {e}");
        }
        out
    }
}

/// Serve `/metrics` on `listen` until `shutdown`.
pub async fn serve(
    listen: &str,
    metrics: Arc<Metrics>,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("metrics.listen: cannot listen on {listen}"))?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let m = metrics.clone();
            async move { m.encode() }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("metrics server")
}
