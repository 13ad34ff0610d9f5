//! Ingest configuration: a TOML file (optional) overlaid by environment
//! variables `HAILAN_INGEST__SECTION__KEY` (e.g. `HAILAN_INGEST__MQTT__HOST`),
//! and `DATABASE_URL` for the database. A bad value names the key.

use anyhow::{Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Everything `hailan-ingest run` reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// PostgreSQL URL (or the `DATABASE_URL` environment variable). May name
    /// a primary and its standbys in libpq's multi-host form,
    /// `postgres://u:p@host1:5432,host2:5432/hailan?target_session_attrs=read-write`:
    /// `run` then writes to whichever of them is the read-write primary and
    /// follows a promotion (OPERATIONS.md, "Failover").
    #[serde(default)]
    pub database_url: Option<String>,
    /// The broker connection and subscriptions (`[mqtt]`).
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// How messages are gathered into batches (`[batch]`).
    #[serde(default)]
    pub batch: BatchConfig,
    /// Where the verifying keys are and how proofs are batch-verified (`[zk]`).
    #[serde(default)]
    pub zk: ZkConfig,
    /// The `/metrics`, `/healthz`, `/readyz` listener (`[http]`).
    #[serde(default)]
    pub http: HttpConfig,
    /// Per-gateway message and proof limits (`[fair_share]`).
    #[serde(default)]
    pub fair_share: FairShareConfig,
    /// Quarantine retention (`[quarantine]`).
    #[serde(default)]
    pub quarantine: QuarantineConfig,
}

/// How long, and how much, quarantine keeps (`crate::quarantine::prune`):
/// held messages are for inspection and replay, not for ever, and a
/// gateway's flood of bad input must not fill the disk. Oldest rows go first.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuarantineConfig {
    /// Rows older than this many days are dropped; 0 keeps them for ever.
    pub max_age_days: u32,
    /// When the held payloads add up to more than this many bytes, the
    /// oldest rows are dropped until they fit; 0: no quota.
    pub max_bytes: u64,
    /// How often a consumer applies both, in seconds; 0: never.
    pub prune_interval_s: u64,
}

impl Default for QuarantineConfig {
    fn default() -> Self {
        QuarantineConfig {
            max_age_days: 90,
            max_bytes: 10 * 1024 * 1024 * 1024,
            prune_interval_s: 300,
        }
    }
}

/// Per-gateway limits, so one gateway that floods the broker or keeps
/// sending bad proofs cannot starve the others (`crate::fair_share`,
/// ARCHITECTURE.md "Fair share"). A message over a limit is not dropped: it
/// is quarantined as `rate_limited` (raw payload kept; `hailan-ingest
/// quarantine replay --reason rate_limited` runs it again, unlimited).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FairShareConfig {
    /// Off: no limits, every proof verified in one shared batch.
    pub enabled: bool,
    /// Sustained MQTT messages per second one gateway may send…
    pub messages_per_second: f64,
    /// …and the burst above that (a gateway emptying its outbox after an
    /// outage sends its backlog at once).
    pub message_burst: f64,
    /// Sustained proofs per second verified for one gateway…
    pub proofs_per_second: f64,
    /// …and the burst. A message is admitted while the gateway's budget is
    /// positive, then its proofs are charged (the budget can go into debt by
    /// up to one burst).
    pub proof_burst: f64,
    /// Budget charged for each bad proof on top of its own verification
    /// (bisection costs ≈ 2·log2(batch) pairing checks per bad proof).
    pub bad_proof_cost: f64,
    /// After this many bad proofs within `suspect_window_s`, a gateway's
    /// proofs are verified in a batch of their own (their bisection no
    /// longer slows anybody else's batch) until the window passes without.
    pub suspect_after_bad_proofs: u64,
    /// The window of `suspect_after_bad_proofs`, in seconds (default 60):
    /// bad proofs are counted per window, and a suspect stays one until this
    /// long after its last bad proof.
    pub suspect_window_s: u64,
    /// Gateways named in metric labels; the rest are counted as `_other`
    /// (bounded cardinality).
    pub max_gateway_labels: usize,
    /// Every this many milliseconds, `rate_limited` quarantine rows are
    /// replayed (oldest first, at most `batch.max_messages`), each taking a
    /// token of its gateway's message bucket: a gateway's excess comes back
    /// by itself at its own rate once it calms down. 0: only by hand
    /// (`hailan-ingest quarantine replay --reason rate_limited`).
    pub replay_interval_ms: u64,
}

impl Default for FairShareConfig {
    fn default() -> Self {
        FairShareConfig {
            enabled: true,
            messages_per_second: 200.0,
            message_burst: 20_000.0,
            proofs_per_second: 400.0,
            proof_burst: 20_000.0,
            bad_proof_cost: 16.0,
            suspect_after_bad_proofs: 8,
            suspect_window_s: 60,
            max_gateway_labels: 100,
            replay_interval_ms: 1000,
        }
    }
}

/// The consumer's MQTT session (`[mqtt]`): the broker's service listener,
/// the account, and what to subscribe to. The session is persistent and
/// acknowledged by hand ([`crate::run`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Broker host name or address (default `127.0.0.1`).
    pub host: String,
    /// Broker port (default 1884, the broker's listener for ingest accounts;
    /// gateways log in on 1883/8883).
    pub port: u16,
    /// Fixed client id: the broker keeps this session (and its queue) while
    /// the process is away. Two processes must not share one.
    pub client_id: String,
    /// MQTT user name (default `hailan-ingest`); sent only when `password` is set.
    pub username: String,
    /// MQTT password (default none: connect without credentials).
    pub password: Option<String>,
    /// Keep-alive in seconds.
    pub keep_alive_s: u64,
    /// CA certificate (PEM) of the broker: when set, connect over TLS.
    pub ca_file: Option<PathBuf>,
    /// Topic filters to subscribe to (QoS 1). The default shared
    /// subscription lets several ingest processes split the load.
    pub subscriptions: Vec<String>,
    /// The gateways' status topics (`online` / `offline`), subscribed by
    /// every process (not shared): a gateway going offline marks its
    /// devices' link UNKNOWN. Empty: this process does not follow them.
    pub status_subscription: String,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            host: "127.0.0.1".into(),
            // The broker's service listener (deploy/mosquitto: ingest
            // accounts only; gateways log in on 1883/8883).
            port: 1884,
            client_id: "hailan-ingest-1".into(),
            username: "hailan-ingest".into(),
            password: None,
            keep_alive_s: 30,
            ca_file: None,
            subscriptions: vec![hailan_proto::topic::INGEST_SHARED_SUBSCRIPTION.to_owned()],
            status_subscription: hailan_proto::topic::STATUS_SUBSCRIPTION.to_owned(),
        }
    }
}

/// How the consumer gathers received messages into batches (`[batch]`): each
/// batch is planned, verified and written in one transaction.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Most MQTT messages per batch (one transaction, one batched verification).
    pub max_messages: usize,
    /// Most payload bytes per batch: a batch closes at `max_messages` or at
    /// this, whichever comes first, and the consumer stops reading the
    /// broker while four batches' worth is waiting. It bounds memory when
    /// envelopes are large (up to 256 KiB each, thousands of readings).
    pub max_bytes: usize,
    /// Longest a message waits for its batch to fill, in milliseconds.
    pub max_wait_ms: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_messages: 500,
            max_bytes: 4 * 1024 * 1024,
            max_wait_ms: 50,
        }
    }
}

/// The verifier's keys and batch verification (`[zk]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ZkConfig {
    /// Directory holding the verifying keys (`*.vk`) written by `hailan-ingest zk setup`.
    pub keys_dir: PathBuf,
    /// Accept development (seeded) keys. Never in production.
    pub allow_dev_keys: bool,
    /// Bits of the random weights in batch verification: 128 (soundness
    /// error ≈ 2^-128 per batch, the default) or 64 (≈ 2^-64, about 5 %
    /// faster; see BENCHMARKS.md).
    pub batch_weight_bits: u32,
}

impl Default for ZkConfig {
    fn default() -> Self {
        ZkConfig {
            keys_dir: PathBuf::from("/etc/hailan/zk"),
            allow_dev_keys: false,
            batch_weight_bits: 128,
        }
    }
}

/// The operations endpoint of [`crate::http`] (`[http]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Where `/metrics`, `/healthz` and `/readyz` listen; empty disables them.
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

impl IngestConfig {
    /// Load from `file` (if given, it must exist), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self> {
        let mut builder = config::Config::builder();
        if let Some(f) = file {
            builder = builder.add_source(
                config::File::from(f)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        builder = builder.add_source(
            config::Environment::with_prefix("HAILAN_INGEST")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        let raw = builder.build().context("reading the configuration")?;
        let mut cfg: IngestConfig = raw
            .try_deserialize()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        if cfg.database_url.is_none() {
            cfg.database_url = std::env::var("DATABASE_URL").ok();
        }
        if !matches!(cfg.zk.batch_weight_bits, 64 | 128) {
            anyhow::bail!(
                "invalid configuration: zk.batch_weight_bits must be 64 or 128, not {}",
                cfg.zk.batch_weight_bits
            );
        }
        let f = &cfg.fair_share;
        for (key, v) in [
            ("messages_per_second", f.messages_per_second),
            ("message_burst", f.message_burst),
            ("proofs_per_second", f.proofs_per_second),
            ("proof_burst", f.proof_burst),
        ] {
            if !(v.is_finite() && v > 0.0) {
                anyhow::bail!(
                    "invalid configuration: fair_share.{key} must be a positive number, not {v}"
                );
            }
        }
        if !(f.bad_proof_cost.is_finite() && f.bad_proof_cost >= 0.0) {
            anyhow::bail!("invalid configuration: fair_share.bad_proof_cost must be 0 or more");
        }
        if cfg.batch.max_messages == 0 {
            anyhow::bail!("invalid configuration: batch.max_messages must be at least 1");
        }
        if cfg.batch.max_bytes == 0 {
            anyhow::bail!("invalid configuration: batch.max_bytes must be at least 1");
        }
        Ok(cfg)
    }

    /// The database URL, or an error naming where to set it.
    pub fn database_url(&self) -> Result<&str> {
        self.database_url
            .as_deref()
            .context("no database: set database_url in the config file, or DATABASE_URL")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/ingest.example.toml");
        let cfg = IngestConfig::load(Some(&path)).expect("the shipped example parses");
        assert_eq!(cfg.mqtt.port, 8884);
        assert_eq!(cfg.batch.max_messages, 500);
        assert!(!cfg.zk.allow_dev_keys);
        assert!(cfg.fair_share.enabled);
        assert_eq!(cfg.fair_share.messages_per_second, 200.0);
        assert_eq!(cfg.fair_share.suspect_after_bad_proofs, 8);
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[batch]\nmax_messages = \"lots\"\n").expect("write");
        let err = IngestConfig::load(Some(&path))
            .expect_err("must fail")
            .to_string();
        assert!(err.contains("max_messages"), "{err}");
        std::fs::write(&path, "[zk]\nbatch_weight_bits = 32\n").expect("write");
        let err = IngestConfig::load(Some(&path))
            .expect_err("must fail")
            .to_string();
        assert!(err.contains("zk.batch_weight_bits"), "{err}");
        std::fs::write(&path, "[mqtt]\nhots = \"x\"\n").expect("write");
        let err = IngestConfig::load(Some(&path))
            .expect_err("must fail")
            .to_string();
        assert!(err.contains("hots"), "{err}");
    }
}
