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
    /// The registry every metric below is registered in, under the
    /// `hailan_gateway_` prefix; [`Metrics::encode`] renders it.
    pub registry: Registry,
    /// Measurements decoded into readings (before proving).
    pub readings_taken: Counter,
    /// Readings proven (or marked unproven), sealed and committed to the outbox.
    pub readings_queued: Counter,
    /// Readings whose device time stamp was flagged: the device's clock had
    /// been reset, or the stamp was implausible and replaced by an estimate.
    pub clock_flagged: Counter,
    /// Readings of a shared device held unassigned: no user index, or one
    /// no user slot is mapped to (`hailan-gateway unassigned`).
    pub unassigned: Counter,
    /// Readings not taken: the outbox was full or its write failed.
    pub readings_refused: Counter,
    /// Characteristic values that did not decode (or Body Composition
    /// halves that do not make one measurement).
    pub malformed: Counter,
    /// Measurements that make no reading (an IEEE 11073 special value or a
    /// missing field where a slot needs a number, a scale's "unsuccessful",
    /// a Body Composition half whose other half never came).
    pub no_reading: Counter,
    /// Readings committed without a proof (their group holds a value
    /// outside the proof bounds); ingest quarantines them.
    pub unproven: Counter,
    /// Device-state envelopes not queued because the outbox was full.
    pub states_refused: Counter,
    /// Outbox envelopes handed to the MQTT client (republished ones counted again).
    pub published: Counter,
    /// Outbox envelopes acknowledged by the broker (PUBACK) and removed.
    pub acked: Counter,
    /// Connections the broker accepted (CONNACK), reconnections included.
    pub broker_connects: Counter,
    /// 1 while connected to the broker, else 0.
    pub broker_connected: Gauge,
    /// Envelopes in the outbox (registrations, reading batches, device states).
    pub outbox_entries: Gauge,
    /// Paired devices that refused their bond (`needs_repair`).
    pub devices_needing_repair: Gauge,
    /// Links held now (`ble.max_connections` at most).
    pub ble_slots_held: Gauge,
    /// Devices waiting for a link.
    pub ble_slots_waiting: Gauge,
    /// Adapters powered and answering (of those in `ble.adapters`).
    pub ble_adapters_up: Gauge,
    /// Readings in the outbox, not yet acknowledged by the broker.
    pub outbox_readings: Gauge,
    /// Bytes of envelope payload in the outbox.
    pub outbox_bytes: Gauge,
    /// Seconds since the oldest outbox envelope was written.
    pub outbox_oldest_age_seconds: Gauge,
    /// Seconds to prove, seal and commit one envelope of readings
    /// (buckets 1 ms … about 8 s).
    pub prove_seconds: Histogram,
    /// Seconds from handing a publish to the MQTT client to its PUBACK
    /// (buckets 0.5 ms … about 16 s).
    pub publish_to_ack_seconds: Histogram,
}

impl Metrics {
    /// Every metric at zero, registered under the `hailan_gateway_` prefix
    /// with its help text; shared by the daemon's tasks.
    pub fn new() -> Arc<Metrics> {
        let mut m = Metrics {
            registry: Registry::with_prefix("hailan_gateway"),
            readings_taken: Counter::default(),
            clock_flagged: Counter::default(),
            unassigned: Counter::default(),
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
            ble_adapters_up: Gauge::default(),
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
            "clock_flagged",
            "Readings whose device time stamp was flagged (clock reset, or implausible and estimated)",
            m.clock_flagged.clone(),
        );
        r.register(
            "unassigned",
            "Readings of a shared device held for the owner to assign (no mapped user slot)",
            m.unassigned.clone(),
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
            "ble_adapters_up",
            "Bluetooth adapters powered and answering (devices of one that is down move to the others)",
            m.ble_adapters_up.clone(),
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
