//! `hailan-ingest api`: the clinician API (DESIGN §1, §5.2, §6).
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
//! - `GET /api/v1/patients/{id}/observations?type=&from=&to=&limit=&cursor=`
//! - `GET /api/v1/patients/{id}/series?type=&from=&to=&bucket=minute|hour|day`
//! - `GET /api/v1/patients/{id}/devices` — battery, last sync, sync status, gaps
//! - `GET /api/v1/patients/{id}/readings/{reading}/proof` — proof bundle + snarkjs JSON
//! - `GET /fhir/Observation?patient=&code=&date=ge…&date=le…` — FHIR R4 searchset ([`fhir`])
//! - `GET /` — the clinicians' web page; `GET /healthz`

pub mod check;
pub mod fhir;
pub mod keyring;
pub mod opened_cache;
pub mod params;
pub mod routes;
pub mod session;

use crate::config::IngestConfig;
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
    pub primary: PgPool,
    pub replica: Option<PgPool>,
    pub keys: Arc<KeyRing>,
    /// Windows already opened with `keys` (replace both together).
    pub opened: Arc<opened_cache::OpenedCache>,
    /// Verifying keys by hex key id, for the snarkjs `vk.json` of a proof bundle.
    pub vks: Arc<HashMap<String, VerifyingKey>>,
    pub replica_wait: Duration,
    pub max_page: i64,
}

/// A request that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("a valid bearer token is required")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("not found")]
    NotFound,
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("internal: {0}")]
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = match &self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Db(e) => {
                tracing::error!(error = %e, "database error");
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ApiError::Internal(e) => {
                tracing::error!(error = %e, "internal error");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let msg = match &self {
            ApiError::Db(_) | ApiError::Internal(_) => "internal error".to_owned(),
            e => e.to_string(),
        };
        let mut resp = (code, Json(serde_json::json!({ "error": msg }))).into_response();
        if code == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

/// `hailan-ingest admin revoke-tokens`: revoke every unrevoked API token of
/// the user with this DID; returns how many.
pub async fn revoke_tokens(pool: &PgPool, did: &str) -> anyhow::Result<u64> {
    let user = crate::admin::user_id(pool, did).await?;
    let r = sqlx::query(
        "UPDATE api_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
    )
    .bind(user)
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
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
pub async fn state_from_config(cfg: &IngestConfig) -> anyhow::Result<ApiState> {
    let keys = KeyRing::load(&cfg.api.key_ring)?;
    if keys.is_empty() {
        tracing::warn!("the key ring holds no key: no value can be shown");
    }
    let primary = crate::db::connect(cfg.database_url()?, cfg.api.max_connections).await?;
    let replica = match cfg.api.read_database_url.as_deref() {
        Some(url) if !url.is_empty() => Some(
            crate::db::connect(url, cfg.api.max_connections)
                .await
                .context("api.read_database_url")?,
        ),
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
    })
}

/// Serve the API on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    axum::serve(listener, routes::router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}
