//! The API's configuration: a TOML file (`/etc/hailan/api.toml`, optional)
//! overlaid by environment variables `HAILAN_API__SECTION__KEY` (e.g.
//! `HAILAN_API__API__LISTEN`), and `DATABASE_URL` for the database. A bad
//! value names the key. The file's shape is the one `hailan-ingest api`
//! read before the API became its own program, so an existing `api.toml`
//! keeps working.

use anyhow::{Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Everything `hailan-api` reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// PostgreSQL URL of the API's login (or the `DATABASE_URL` environment
    /// variable); may name a primary and its standbys in libpq's multi-host
    /// form, and the API follows the read-write one (OPERATIONS.md §3).
    #[serde(default)]
    pub database_url: Option<String>,
    /// `[api]`: listener, replica, key ring and per-request limits.
    #[serde(default)]
    pub api: ApiConfig,
    /// `[zk]`: where the verifying keys are.
    #[serde(default)]
    pub zk: ZkConfig,
}

/// `[zk]`: where the verifying keys are, for the snarkjs `vk.json` of a proof bundle.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ZkConfig {
    /// Directory holding `reading.vk` and `window.vk` (the same keys ingest verifies with).
    pub keys_dir: PathBuf,
}

impl Default for ZkConfig {
    fn default() -> Self {
        ZkConfig {
            keys_dir: PathBuf::from("/etc/hailan/zk"),
        }
    }
}

impl Config {
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
            config::Environment::with_prefix("HAILAN_API")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        let raw = builder.build().context("reading the configuration")?;
        let mut cfg: Config = raw
            .try_deserialize()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        if cfg.database_url.is_none() {
            cfg.database_url = std::env::var("DATABASE_URL").ok();
        }
        cfg.api.validate()?;
        Ok(cfg)
    }

    /// The database URL, or an error naming where to set it.
    pub fn database_url(&self) -> Result<&str> {
        self.database_url
            .as_deref()
            .context("no database: set database_url in the config file, or DATABASE_URL")
    }
}

/// `[api]`: where the API listens, its key ring, and what one request may cost.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/api.example.toml");
        let cfg = Config::load(Some(&path)).expect("the shipped example parses");
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
            let err = Config::load(Some(&path)).expect_err(toml).to_string();
            assert!(err.contains(key), "{toml}: {err}");
        }
    }

    #[test]
    fn an_unknown_key_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[api]\nlisten = \"127.0.0.1:1\"\nlistne = \"x\"\n").expect("write");
        let err = Config::load(Some(&path))
            .expect_err("must fail")
            .to_string();
        assert!(err.contains("listne"), "{err}");
        std::fs::write(&path, "[zk]\nallow_dev_keys = true\n").expect("write");
        let err = Config::load(Some(&path))
            .expect_err("must fail")
            .to_string();
        assert!(err.contains("allow_dev_keys"), "{err}");
    }
}
