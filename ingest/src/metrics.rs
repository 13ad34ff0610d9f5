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

/// Label set of `quarantined`: the quarantine reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// A [`crate::quarantine::Reason`] code, e.g. `bad_proof`.
    pub reason: String,
}

/// Label set of `readings` and `gateway_status`: an outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `stored`, `duplicate` or `unverified` for readings; `online`, `offline`,
    /// `unknown_gateway` or `invalid` for gateway statuses.
    pub outcome: String,
}

/// A gateway (bounded: `fair_share.max_gateway_labels`, then `_other`) and
/// which of its limits (`messages`, `proofs`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GatewayLimitLabel {
    /// The gateway id, or `_other` past `fair_share.max_gateway_labels`.
    pub gateway: String,
    /// Which limit it hit: `messages` or `proofs`.
    pub limit: String,
}

/// Label set of `gateway_bad_proofs`: a gateway (bounded:
/// `fair_share.max_gateway_labels`, then `_other`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GatewayLabel {
    /// The gateway id, or `_other`.
    pub gateway: String,
}

/// Label set of `pairing_checks`: which verification batch.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BatchLabel {
    /// `shared` (the batch of every gateway that is not a suspect) or
    /// `isolated` (suspect gateways' batches of their own).
    pub batch: String,
}

/// Every metric the consumer reports.
pub struct Metrics {
    /// The registry every metric is registered in, under the `hailan_ingest_` prefix.
    pub registry: Registry,
    /// Batches committed (`hailan_ingest_batches_total`).
    pub batches: Counter,
    /// Batch attempts that failed and were retried or split
    /// (`hailan_ingest_batch_failures_total`).
    pub batch_failures: Counter,
    /// MQTT messages committed, and then acknowledged (`hailan_ingest_messages_total`).
    pub messages: Counter,
    /// Readings by outcome (`hailan_ingest_readings_total`): `stored` (new rows),
    /// `duplicate` (already stored), and `unverified` (stored without a verified
    /// proof; also counted in one of the other two).
    pub readings: Family<OutcomeLabel, Counter>,
    /// Quarantine rows planned, by reason (`hailan_ingest_quarantined_total`);
    /// a message already held counts again here though it is not stored twice.
    pub quarantined: Family<ReasonLabel, Counter>,
    /// Proven groups whose proofs were checked (`hailan_ingest_groups_verified_total`).
    pub groups_verified: Counter,
    /// Acks not sent because the message's broker connection was replaced; the
    /// broker redelivers it (`hailan_ingest_stale_acks_skipped_total`).
    pub stale_acks_skipped: Counter,
    /// Times the writer pool moved to another server of a multi-host database
    /// URL, i.e. a failover (`hailan_ingest_db_primary_switches_total`).
    pub db_primary_switches: Counter,
    /// Messages per batch (histogram `hailan_ingest_batch_messages`).
    pub batch_size: Histogram,
    /// Planning time per batch in seconds — decode, resolve and batch-verify
    /// (histogram `hailan_ingest_plan_seconds`).
    pub verify_seconds: Histogram,
    /// Transaction time per batch in seconds (histogram `hailan_ingest_commit_seconds`).
    pub commit_seconds: Histogram,
    /// Messages of a gateway quarantined as `rate_limited`, by the limit they hit
    /// (`hailan_ingest_gateway_rate_limited_total`).
    pub gateway_rate_limited_total: Family<GatewayLimitLabel, Counter>,
    /// Proven groups of a gateway whose proofs failed verification
    /// (`hailan_ingest_gateway_bad_proofs_total`).
    pub gateway_bad_proofs_total: Family<GatewayLabel, Counter>,
    /// Pairing checks spent by batch verification, shared batch vs suspects'
    /// own batches (`hailan_ingest_pairing_checks_total`).
    pub pairing_checks: Family<BatchLabel, Counter>,
    /// Messages received from the broker and waiting for a batch, sampled when a
    /// batch starts (`hailan_ingest_delivery_backlog`).
    pub delivery_backlog: Gauge,
    /// `rate_limited` quarantine rows replayed automatically every
    /// `fair_share.replay_interval_ms` (`hailan_ingest_rate_limited_replayed_total`).
    pub rate_limited_replayed: Counter,
    /// Quarantine rows dropped by retention (`[quarantine]`), by cause (`age`, `quota`).
    pub quarantine_dropped: Family<CauseLabel, Counter>,
    /// Gateway status messages applied, by outcome (`online`, `offline`,
    /// `unknown_gateway`, `invalid`).
    pub gateway_status: Family<OutcomeLabel, Counter>,
}

/// Label set of `quarantine_dropped`: why retention dropped rows.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabel {
    /// `age` (`quarantine.max_age_days`) or `quota` (`quarantine.max_bytes`).
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

    /// Every metric at zero, registered under the `hailan_ingest_` prefix.
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

    /// Count one committed batch (or part of one): its messages, readings by
    /// outcome, quarantine rows by reason, proven groups and pairing checks, and
    /// observe its planning and commit times.
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
