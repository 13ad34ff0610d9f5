//! Prometheus metrics of the consumer, served at `/metrics`.

use crate::plan::Plan;
use crate::store::Written;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

/// A gateway (bounded: `fair_share.max_gateway_labels`, then `_other`) and
/// which of its limits (`messages`, `proofs`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GatewayLimitLabel {
    pub gateway: String,
    pub limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GatewayLabel {
    pub gateway: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BatchLabel {
    pub batch: String,
}

/// Every metric the consumer reports.
pub struct Metrics {
    pub registry: Registry,
    pub batches: Counter,
    pub batch_failures: Counter,
    pub messages: Counter,
    pub readings: Family<OutcomeLabel, Counter>,
    pub quarantined: Family<ReasonLabel, Counter>,
    pub groups_verified: Counter,
    pub stale_acks_skipped: Counter,
    pub db_primary_switches: Counter,
    pub batch_size: Histogram,
    pub verify_seconds: Histogram,
    pub commit_seconds: Histogram,
    pub gateway_rate_limited_total: Family<GatewayLimitLabel, Counter>,
    pub gateway_bad_proofs_total: Family<GatewayLabel, Counter>,
    pub pairing_checks: Family<BatchLabel, Counter>,
    pub delivery_backlog: Gauge,
    pub rate_limited_replayed: Counter,
    /// Quarantine rows dropped by retention (`[quarantine]`), by cause (`age`, `quota`).
    pub quarantine_dropped: Family<CauseLabel, Counter>,
    /// Gateway status messages applied, by outcome (`online`, `offline`,
    /// `unknown_gateway`, `invalid`).
    pub gateway_status: Family<OutcomeLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabel {
    pub cause: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Count one gateway status message by `outcome`.
    pub fn count_gateway_status(&self, outcome: &str) {
        self.gateway_status
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("hailan_ingest");
        let m = Metrics {
            batches: Counter::default(),
            batch_failures: Counter::default(),
            messages: Counter::default(),
            readings: Family::default(),
            quarantined: Family::default(),
            groups_verified: Counter::default(),
            stale_acks_skipped: Counter::default(),
            db_primary_switches: Counter::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            verify_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            commit_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            gateway_rate_limited_total: Family::default(),
            gateway_bad_proofs_total: Family::default(),
            pairing_checks: Family::default(),
            delivery_backlog: Gauge::default(),
            rate_limited_replayed: Counter::default(),
            quarantine_dropped: Family::default(),
            gateway_status: Family::default(),
            registry: Registry::default(),
        };
        registry.register("batches", "Batches committed", m.batches.clone());
        registry.register(
            "gateway_status",
            "Gateway status messages (online/offline) applied, by outcome",
            m.gateway_status.clone(),
        );
        registry.register(
            "batch_failures",
            "Batch attempts that failed and were retried",
            m.batch_failures.clone(),
        );
        registry.register(
            "messages",
            "MQTT messages committed (and then acknowledged)",
            m.messages.clone(),
        );
        registry.register(
            "readings",
            "Readings by outcome (stored, duplicate, unverified)",
            m.readings.clone(),
        );
        registry.register(
            "quarantined",
            "Quarantine rows by reason",
            m.quarantined.clone(),
        );
        registry.register(
            "groups_verified",
            "Proven groups whose proofs were checked",
            m.groups_verified.clone(),
        );
        registry.register(
            "stale_acks_skipped",
            "Acks skipped because the message's connection was replaced (redelivered instead)",
            m.stale_acks_skipped.clone(),
        );
        registry.register(
            "db_primary_switches",
            "Times the writer pool moved to another server of a multi-host DATABASE_URL (a failover)",
            m.db_primary_switches.clone(),
        );
        registry.register("batch_messages", "Messages per batch", m.batch_size.clone());
        registry.register(
            "plan_seconds",
            "Decode, resolve and batch-verify time per batch",
            m.verify_seconds.clone(),
        );
        registry.register(
            "commit_seconds",
            "Transaction time per batch",
            m.commit_seconds.clone(),
        );
        registry.register(
            "gateway_rate_limited",
            "Messages of a gateway quarantined as rate_limited, by the limit they hit (fair share)",
            m.gateway_rate_limited_total.clone(),
        );
        registry.register(
            "gateway_bad_proofs",
            "Proven groups of a gateway whose proofs failed verification",
            m.gateway_bad_proofs_total.clone(),
        );
        registry.register(
            "pairing_checks",
            "Pairing checks of batch verification: the shared batch, and suspect gateways' own batches",
            m.pairing_checks.clone(),
        );
        registry.register(
            "delivery_backlog",
            "Messages received from the broker and waiting for a batch (at the last batch start)",
            m.delivery_backlog.clone(),
        );
        registry.register(
            "rate_limited_replayed",
            "rate_limited quarantine rows replayed automatically (fair_share.replay_interval_ms)",
            m.rate_limited_replayed.clone(),
        );
        registry.register(
            "quarantine_dropped",
            "Quarantine rows dropped by retention ([quarantine] max_age_days, max_bytes), by cause",
            m.quarantine_dropped.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn record_batch(
        &self,
        plan: &Plan,
        written: &Written,
        plan_time: Duration,
        commit_time: Duration,
    ) {
        let messages = plan_messages(plan);
        self.batches.inc();
        self.messages.inc_by(messages);
        self.batch_size.observe(messages as f64);
        self.verify_seconds.observe(plan_time.as_secs_f64());
        self.commit_seconds.observe(commit_time.as_secs_f64());
        self.groups_verified.inc_by(plan.groups_verified as u64);
        for (batch, n) in [
            ("shared", plan.pairing_checks_shared),
            ("isolated", plan.pairing_checks_isolated),
        ] {
            self.pairing_checks
                .get_or_create(&BatchLabel {
                    batch: batch.into(),
                })
                .inc_by(n as u64);
        }
        let unverified = plan.readings.iter().filter(|r| !r.verified).count() as u64;
        self.readings
            .get_or_create(&OutcomeLabel {
                outcome: "stored".into(),
            })
            .inc_by(written.readings_new);
        self.readings
            .get_or_create(&OutcomeLabel {
                outcome: "duplicate".into(),
            })
            .inc_by(written.readings_duplicate);
        self.readings
            .get_or_create(&OutcomeLabel {
                outcome: "unverified".into(),
            })
            .inc_by(unverified);
        for q in &plan.quarantine {
            self.quarantined
                .get_or_create(&ReasonLabel {
                    reason: q.reason.code().into(),
                })
                .inc();
        }
    }

    /// One message of `gateway` (a bounded label) over its `limit`.
    pub fn gateway_rate_limited(&self, gateway: &str, limit: &str) {
        self.gateway_rate_limited_total
            .get_or_create(&GatewayLimitLabel {
                gateway: gateway.into(),
                limit: limit.into(),
            })
            .inc();
    }

    /// `n` bad proofs of `gateway` (a bounded label).
    pub fn gateway_bad_proofs(&self, gateway: &str, n: u64) {
        self.gateway_bad_proofs_total
            .get_or_create(&GatewayLabel {
                gateway: gateway.into(),
            })
            .inc_by(n);
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn plan_messages(plan: &Plan) -> u64 {
    plan.message_count as u64
}
