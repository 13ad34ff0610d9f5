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
    #[serde(default)]
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub batch: BatchConfig,
    #[serde(default)]
    pub zk: ZkConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub fair_share: FairShareConfig,
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

/// `hailan-ingest api`: the clinician API (a separate process from `run`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address the API (JSON, FHIR and the web page) listens on.
    pub listen: String,
    /// A streaming replica for reads; empty: read from `database_url`.
    /// Writes (audit rows) and token checks always go to the primary.
    pub read_database_url: Option<String>,
    /// The owners' data keys: one `kid = 64 hex digits` per line. Refused
    /// when group- or world-readable.
    pub key_ring: PathBuf,
    /// Largest page of observations one request returns.
    pub max_page: i64,
    /// Longest wait for the replica to replay up to the primary's position
    /// at the start of a request, in milliseconds; then the primary serves it.
    pub replica_wait_ms: u64,
    /// Connections to each database.
    pub max_connections: u32,
    /// Windows of readings kept opened (decrypted, commitment recomputed) so
    /// that charts read again are not opened again; least recently used go
    /// first. About 2.5 KB each: 5,400 windows are one day of 1 Hz heart rate.
    /// 0 disables it.
    pub opened_cache_windows: usize,
    /// Longest one SQL statement of a request may run, in milliseconds
    /// (`SET LOCAL statement_timeout` in each request's transaction, log-in
    /// included); over it the request answers 503 and is logged. Keep it
    /// below `request_timeout_ms`, or the request timeout answers first.
    pub statement_timeout_ms: u64,
    /// Most readings one request may read and decrypt. A chart (`/series`)
    /// whose range holds more answers 400 naming this key; pages
    /// (`/observations`, FHIR) are bounded by `max_page`, which may not
    /// exceed it. The default holds two days of 1 Hz heart rate.
    pub max_rows_per_request: i64,
    /// Requests served at once; more wait for a slot (the wait counts
    /// towards `request_timeout_ms`). Each holds a database connection
    /// (`max_connections`) and, for a chart, its decrypted readings.
    pub max_concurrent_requests: usize,
    /// Longest a request may take, waiting for a slot included, in
    /// milliseconds; over it the request answers 503.
    pub request_timeout_ms: u64,
    /// Failed bearer-token authentications one client address (IPv6: its
    /// /64) may make within a minute; past them every request from it
    /// answers 429 with `Retry-After` until the minute has passed. The
    /// address is the TCP peer's: behind a reverse proxy, the proxy's.
    pub login_failures_per_minute: u32,
    /// A device state older than this many seconds is stale: the API says
    /// so (`state_stale`) and never shows it as `CONNECTED`. Gateways
    /// re-send every device's state every `pipeline.state_refresh_s` (300 s
    /// by default), so keep it above that. 1 to 31,536,000 (a year).
    pub stale_after_s: u64,
}

/// Longest `api.stale_after_s`: a year.
pub const MAX_STALE_AFTER_S: u64 = 365 * 24 * 3600;

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:8080".into(),
            read_database_url: None,
            key_ring: PathBuf::from("/etc/hailan/api-keys"),
            max_page: 5000,
            replica_wait_ms: 2000,
            max_connections: 8,
            opened_cache_windows: 20_000,
            statement_timeout_ms: 10_000,
            max_rows_per_request: 200_000,
            max_concurrent_requests: 16,
            request_timeout_ms: 30_000,
            login_failures_per_minute: 10,
            stale_after_s: 900,
        }
    }
}

impl ApiConfig {
    /// The limits' values make sense together; an error names the key.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("max_page", self.max_page >= 1),
            ("max_rows_per_request", self.max_rows_per_request >= 1),
            ("max_concurrent_requests", self.max_concurrent_requests >= 1),
            ("request_timeout_ms", self.request_timeout_ms >= 1),
            (
                "login_failures_per_minute",
                self.login_failures_per_minute >= 1,
            ),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, ok)| !ok) {
            anyhow::bail!("invalid configuration: api.{key} must be at least 1");
        }
        // PostgreSQL's statement_timeout is an int4 of milliseconds; 0 would turn it off.
        if !(1..=i32::MAX as u64).contains(&self.statement_timeout_ms) {
            anyhow::bail!(
                "invalid configuration: api.statement_timeout_ms must be 1 to {}, not {}",
                i32::MAX,
                self.statement_timeout_ms
            );
        }
        if self.max_page > self.max_rows_per_request {
            anyhow::bail!(
                "invalid configuration: api.max_page ({}) must not exceed api.max_rows_per_request ({})",
                self.max_page,
                self.max_rows_per_request
            );
        }
        if !(1..=MAX_STALE_AFTER_S).contains(&self.stale_after_s) {
            anyhow::bail!(
                "invalid configuration: api.stale_after_s must be 1 to {MAX_STALE_AFTER_S} seconds, not {}",
                self.stale_after_s
            );
        }
        if self.max_concurrent_requests > tokio::sync::Semaphore::MAX_PERMITS {
            anyhow::bail!("invalid configuration: api.max_concurrent_requests is too large");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    /// Fixed client id: the broker keeps this session (and its queue) while
    /// the process is away. Two processes must not share one.
    pub client_id: String,
    pub username: String,
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
        cfg.api.validate()?;
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
    fn api_example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/api.example.toml");
        let cfg = IngestConfig::load(Some(&path)).expect("the shipped example parses");
        assert_eq!(cfg.api.listen, "127.0.0.1:8080");
        assert_eq!(cfg.api.key_ring, PathBuf::from("/etc/hailan/api-keys"));
        assert_eq!(cfg.api.read_database_url, None);
        assert_eq!(cfg.api.max_page, 5000);
        let d = ApiConfig::default();
        assert_eq!(
            (
                cfg.api.statement_timeout_ms,
                cfg.api.max_rows_per_request,
                cfg.api.max_concurrent_requests,
                cfg.api.request_timeout_ms,
                cfg.api.login_failures_per_minute,
                cfg.api.stale_after_s
            ),
            (
                d.statement_timeout_ms,
                d.max_rows_per_request,
                d.max_concurrent_requests,
                d.request_timeout_ms,
                d.login_failures_per_minute,
                d.stale_after_s
            ),
            "the example shows the defaults"
        );
        assert!(
            d.max_rows_per_request >= 86_400,
            "a day of 1 Hz heart rate fits"
        );
    }

    #[test]
    fn a_bad_api_limit_names_its_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.toml");
        for (toml, key) in [
            ("statement_timeout_ms = 0", "api.statement_timeout_ms"),
            (
                "statement_timeout_ms = 3000000000",
                "api.statement_timeout_ms",
            ),
            ("max_rows_per_request = 0", "api.max_rows_per_request"),
            ("max_rows_per_request = 100", "api.max_page"),
            ("max_concurrent_requests = 0", "api.max_concurrent_requests"),
            ("request_timeout_ms = 0", "api.request_timeout_ms"),
            (
                "login_failures_per_minute = 0",
                "api.login_failures_per_minute",
            ),
            ("max_page = 0", "api.max_page"),
            ("stale_after_s = 0", "api.stale_after_s"),
            ("stale_after_s = 40000000", "api.stale_after_s"),
            ("stale_after_s = -5", "stale_after_s"),
            ("request_timeout_ms = \"soon\"", "request_timeout_ms"),
        ] {
            std::fs::write(&path, format!("[api]\n{toml}\n")).expect("write");
            let err = IngestConfig::load(Some(&path)).expect_err(toml).to_string();
            assert!(err.contains(key), "{toml}: {err}");
        }
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
