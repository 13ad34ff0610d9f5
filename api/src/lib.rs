//! hailan-api: the clinician and patient read side (DESIGN §1, §2, §5.2, §6),
//! its own program (`hailan-api`, `src/main.rs` a thin layer over this crate)
//! with its own configuration ([`config`]) and systemd unit.
//!
//! The only process that holds the owners' data keys. Every request is one
//! transaction under the caller's PostgreSQL role and identity
//! ([`session`]), so Row Level Security decides which rows exist for it; the
//! API decrypts what it is given and re-opens each commitment ([`check`])
//! before it shows a number; every request writes an `audit_logs` row in
//! that transaction.
//!
//! Endpoints (JSON unless said):
//! - `GET /api/v1/me`
//! - `GET /api/v1/patients` — the caller's patients (active grants), or the patient themself
//! - `GET /api/v1/patients/{id}/observations?type=&from=&to=&limit=&cursor=&order=asc|desc`
//! - `GET /api/v1/patients/{id}/series?type=&from=&to=&bucket=minute|hour|day`
//! - `GET /api/v1/patients/{id}/devices` — battery, last sync, sync status, gaps, and the
//!   link: `connection_state` (the reported state only when fresh and from an
//!   online gateway, else `UNKNOWN`), `reported_connection_state`,
//!   `state_observed_at`, `state_stale` (older than `api.stale_after_s`),
//!   `gateway_offline_since`, `needs_repair`; `bluetooth_address` and `registered_at`
//!   (the page folds re-registrations of one physical device)
//! - `GET /api/v1/patients/{id}/readings/{reading}/proof` — proof bundle + snarkjs JSON
//! - `GET /api/v1/patients/{id}/export.csv?type=&from=&to=` ([`export_csv`]),
//!   `GET /api/v1/patients/{id}/export.fhir.json?from=&to=` (a FHIR `transaction`);
//!   both streamed, any length, from one snapshot ([`export`])
//! - `GET|POST /api/v1/grants`, `DELETE /api/v1/grants/{id}` — a patient's grants ([`grants`])
//! - `GET /fhir/Observation?patient=&code=&date=ge…&date=le…` — FHIR R4 searchset ([`fhir`]),
//!   `GET /fhir/Patient/{id}/$everything`, `GET /fhir/Device/{id}`
//! - `GET /` — the clinicians' web page; `GET /healthz`
//!
//! What one request or one client may cost is bounded ([`limits`]): a
//! statement timeout in every transaction, a cap on the readings one request
//! reads (exports stream instead), a request timeout, a number of requests served at once, and failed
//! log-ins per client address ([`login_limiter`]). Every answer carries the
//! security headers of [`headers`]; query strings are parsed by [`params`]
//! and the FHIR search, never trusted to be well formed.

#![deny(missing_docs)]

pub mod check;
pub mod config;
pub mod export;
pub mod export_csv;
pub mod fhir;
pub mod grants;
pub mod headers;
pub mod json;
pub mod keyring;
pub mod limits;
pub mod login_limiter;
pub mod opened_cache;
pub mod params;
pub mod routes;
pub mod session;
pub mod store;

use crate::config::Config;
use anyhow::Context;
use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hailan_proto::zk::VerifyingKey;
use keyring::KeyRing;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    /// The primary database (the multi-host URL's read-write server): log-in,
    /// audit rows and grant changes, and every read when there is no replica
    /// or it lags.
    pub primary: PgPool,
    /// A streaming standby for reads (`api.read_database_url`), used once it
    /// has replayed the primary's WAL position taken at log-in; `None`: reads
    /// go to the primary.
    pub replica: Option<PgPool>,
    /// The owners' data keys by key id (`api.key_ring`), which open the sealed values.
    pub keys: Arc<KeyRing>,
    /// Windows already opened with `keys` (replace both together).
    pub opened: Arc<opened_cache::OpenedCache>,
    /// Verifying keys by hex key id, for the snarkjs `vk.json` of a proof bundle.
    pub vks: Arc<HashMap<String, VerifyingKey>>,
    /// Longest a request waits for the replica to catch up before reading
    /// from the primary instead (`api.replica_wait_ms`).
    pub replica_wait: Duration,
    /// Largest page of observations one request returns (`api.max_page`, at least 1).
    pub max_page: i64,
    /// A device state older than this is stale (`api.stale_after_s`).
    pub stale_after: Duration,
    /// What one request may cost (statement timeout, rows, time, slots).
    pub limits: limits::Limits,
}

/// A request that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No valid bearer token; the reason is logged (with the client's
    /// address, never the token) and counted by [`login_limiter`].
    #[error("a valid bearer token is required")]
    Unauthorized(&'static str),
    /// Authenticated, but not allowed (403): an account that is neither a
    /// patient nor a clinician, or a clinician changing grants.
    #[error("{0}")]
    Forbidden(String),
    /// A malformed or unsupported parameter or body (400); the message names it.
    #[error("{0}")]
    BadRequest(String),
    /// Nothing the caller may see at that address (404): a reading without a
    /// stored proof, a device or grant that RLS hides or that does not exist.
    #[error("not found")]
    NotFound,
    /// A range holds more readings than one request may read.
    #[error(
        "the range holds more than {cap} readings (api.max_rows_per_request); ask for a shorter range"
    )]
    TooManyRows {
        /// The row cap, `api.max_rows_per_request` (readings).
        cap: i64,
    },
    /// PostgreSQL cancelled a statement at the transaction's `statement_timeout`.
    #[error(
        "a database query took longer than api.statement_timeout_ms allows; ask for a shorter range or try again later"
    )]
    StatementTimeout,
    /// The whole request took longer than `api.request_timeout_ms`.
    #[error("the request took longer than api.request_timeout_ms ({ms} ms); try again later")]
    RequestTimeout {
        /// The limit that was hit, `api.request_timeout_ms` (milliseconds).
        ms: u64,
    },
    /// No database connection came free in time.
    #[error("the database is busy; try again later")]
    PoolBusy,
    /// Too many failed log-ins from this client address.
    #[error(
        "too many failed log-ins from this address (api.login_failures_per_minute); retry after {} s",
        retry_after.as_secs()
    )]
    TooManyFailedLogins {
        /// How long until the client's minute is over (sent as `Retry-After`,
        /// in whole seconds, at least 1).
        retry_after: Duration,
    },
    /// Any other database error (500); logged, and answered without its text.
    #[error("database: {0}")]
    Db(sqlx::Error),
    /// A bug or a failed task (500, e.g. a handler that panicked); logged,
    /// and answered without its text.
    #[error("internal: {0}")]
    Internal(String),
}

/// SQLSTATE `query_canceled`: what a statement stopped by `statement_timeout` raises.
const QUERY_CANCELED: &str = "57014";

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut => ApiError::PoolBusy,
            sqlx::Error::Database(d) if d.code().as_deref() == Some(QUERY_CANCELED) => {
                ApiError::StatementTimeout
            }
            _ => ApiError::Db(e),
        }
    }
}

/// Marks a 401 answer for [`login_limiter`], with why the log-in failed.
#[derive(Debug, Clone, Copy)]
pub struct LoginFailure(pub &'static str);

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::BadRequest(_) | ApiError::TooManyRows { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::StatementTimeout | ApiError::RequestTimeout { .. } | ApiError::PoolBusy => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::TooManyFailedLogins { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Db(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Log what the operator should see (the request's span names its path).
    fn log(&self) {
        match self {
            ApiError::Db(e) => tracing::error!(error = %e, "database error"),
            ApiError::Internal(e) => tracing::error!(error = %e, "internal error"),
            ApiError::StatementTimeout => {
                tracing::warn!("a statement ran past api.statement_timeout_ms: answered 503")
            }
            ApiError::RequestTimeout { ms } => {
                tracing::warn!(
                    ms,
                    "the request ran past api.request_timeout_ms: answered 503"
                )
            }
            ApiError::PoolBusy => {
                tracing::warn!("no database connection came free: answered 503")
            }
            ApiError::TooManyRows { cap } => {
                tracing::info!(cap, "a range over api.max_rows_per_request: answered 400")
            }
            _ => {}
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        let code = self.status();
        let msg = match &self {
            ApiError::Db(_) | ApiError::Internal(_) => "internal error".to_owned(),
            e => e.to_string(),
        };
        let mut resp = (code, Json(serde_json::json!({ "error": msg }))).into_response();
        match self {
            ApiError::Unauthorized(reason) => {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
                resp.extensions_mut().insert(LoginFailure(reason));
            }
            ApiError::TooManyFailedLogins { retry_after } => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, retry_after.as_secs().max(1).into());
            }
            _ => {}
        }
        resp
    }
}

/// Verifying keys found in `dir` (`reading.vk`, `window.vk`), by hex key id.
/// Missing keys only mean proof bundles come without `vk.json`.
pub fn load_vks(dir: &std::path::Path) -> HashMap<String, VerifyingKey> {
    let mut out = HashMap::new();
    for name in ["reading.vk", "window.vk"] {
        let path = dir.join(name);
        match std::fs::read(&path).map(|b| VerifyingKey::from_bytes(&b)) {
            Ok(Ok(vk)) => {
                out.insert(vk.id().to_string(), vk);
            }
            Ok(Err(e)) => tracing::warn!(path = %path.display(), error = %e, "bad verifying key"),
            Err(e) => tracing::info!(path = %path.display(), error = %e, "no verifying key"),
        }
    }
    out
}

/// Build the state from the configuration (connects to the databases, reads the key ring).
pub async fn state_from_config(cfg: &Config) -> anyhow::Result<ApiState> {
    let keys = KeyRing::load(&cfg.api.key_ring)?;
    if keys.is_empty() {
        tracing::warn!("the key ring holds no key: no value can be shown");
    }
    // Both pools follow Patroni's leader changes on a multi-host URL: the
    // primary pool the read-write server, the replica pool a standby (else
    // the primary); see OPERATIONS.md §3.
    let follow = |pool: &sqlx::PgPool, follower: Option<Arc<hailan_db::Follower>>| {
        if let Some(f) = follower {
            tokio::spawn(hailan_db::follow_primary(
                pool.clone(),
                f,
                Default::default(),
                tokio_util::sync::CancellationToken::new(),
            ));
        }
    };
    let (primary, follower) =
        hailan_db::connect_following(cfg.database_url()?, cfg.api.max_connections).await?;
    follow(&primary, follower);
    let replica = match cfg.api.read_database_url.as_deref() {
        Some(url) if !url.is_empty() => {
            let (pool, follower) = hailan_db::connect_following_as(
                url,
                cfg.api.max_connections,
                hailan_db::Want::Standby,
            )
            .await
            .context("api.read_database_url")?;
            follow(&pool, follower);
            Some(pool)
        }
        _ => None,
    };
    Ok(ApiState {
        primary,
        replica,
        keys: Arc::new(keys),
        opened: Arc::new(opened_cache::OpenedCache::new(cfg.api.opened_cache_windows)),
        vks: Arc::new(load_vks(&cfg.zk.keys_dir)),
        replica_wait: Duration::from_millis(cfg.api.replica_wait_ms),
        max_page: cfg.api.max_page.max(1),
        stale_after: Duration::from_secs(cfg.api.stale_after_s),
        limits: limits::Limits::new(&cfg.api),
    })
}

/// Serve the API on `listener` until `shutdown`. Each request knows its
/// peer's address (`ConnectInfo<SocketAddr>`), for [`login_limiter`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = routes::router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("serving the API")?;
    Ok(())
}
