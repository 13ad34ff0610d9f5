//! Bounds on what one request can make the API do (issue 16).
//!
//! The API decrypts and re-opens every reading it returns, so one request
//! for a long range can hold a core and hundreds of megabytes, and a slow
//! query holds a database connection. Each request is therefore bounded:
//!
//! - in **time per statement**: its transaction(s) begin with
//!   `SET LOCAL statement_timeout` ([`Limits::begin_sql`]); PostgreSQL
//!   cancels a statement past it and the request answers 503
//!   ([`ApiError::StatementTimeout`]);
//! - in **rows**: a chart reads at most `max_rows_per_request + 1` readings
//!   (a `LIMIT` on the read itself, no separate count) and answers 400 past
//!   the cap ([`ApiError::TooManyRows`]); pages are bounded by `max_page`;
//!   exports are not capped: they stream `max_page` readings at a time
//!   from one snapshot ([`crate::export`]), so their memory is bounded
//!   instead, and [`bound_request`] keeps their slot until the body ends;
//! - in **time overall** and in **requests at once** ([`bound_request`]).

use super::ApiError;
use super::login_limiter::LoginLimiter;
use crate::config::ApiConfig;
use axum::body::{Body, HttpBody};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::FutureExt;
use futures::StreamExt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

/// The limits of [`ApiConfig`], and the request slots they share.
#[derive(Clone)]
pub struct Limits {
    /// `api.statement_timeout_ms`.
    pub statement_timeout_ms: u64,
    /// `api.max_rows_per_request`.
    pub max_rows: i64,
    /// `api.request_timeout_ms`.
    pub request_timeout: Duration,
    /// `api.max_concurrent_requests` permits.
    slots: Arc<Semaphore>,
    slot_count: usize,
    /// Failed log-ins per client address (`api.login_failures_per_minute`).
    pub logins: Arc<LoginLimiter>,
}

impl Limits {
    /// The limits `cfg` sets (validated by `Config::load`).
    pub fn new(cfg: &ApiConfig) -> Limits {
        let slot_count = cfg.max_concurrent_requests.max(1);
        Limits {
            statement_timeout_ms: cfg.statement_timeout_ms.max(1),
            max_rows: cfg.max_rows_per_request.max(1),
            request_timeout: Duration::from_millis(cfg.request_timeout_ms.max(1)),
            slots: Arc::new(Semaphore::new(slot_count)),
            slot_count,
            logins: Arc::new(LoginLimiter::new(cfg.login_failures_per_minute)),
        }
    }

    /// The statement that begins a request's transaction on the primary:
    /// the timeout is set before the log-in, so every statement of the
    /// request is bounded, and costs no extra round trip.
    pub fn begin_sql(&self) -> String {
        format!(
            "BEGIN; SET LOCAL statement_timeout = {}",
            self.statement_timeout_ms
        )
    }

    /// The statement that begins an export's snapshot
    /// ([`crate::session::Session::snapshot_reader`]): read only, one
    /// snapshot for all its pages, each statement bounded as any other, and
    /// the pause between pages bounded by the request timeout.
    pub fn begin_snapshot_sql(&self) -> String {
        format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL statement_timeout = {}; \
             SET LOCAL idle_in_transaction_session_timeout = {}",
            self.statement_timeout_ms,
            self.request_timeout.as_millis()
        )
    }

    /// The same for the read-only transaction on a replica.
    pub fn begin_read_only_sql(&self) -> String {
        format!(
            "BEGIN READ ONLY; SET LOCAL statement_timeout = {}",
            self.statement_timeout_ms
        )
    }
}

/// Run a request within the request timeout and a request slot, in a span
/// that names it (so its log lines say which request they are about), and
/// turn a panic into a 500 instead of a dropped connection.
///
/// Over `api.max_concurrent_requests` a request **waits** for a slot rather
/// than being refused: the slots exist to bound memory, CPU and database
/// connections, not to turn away work — the web page asks for its charts
/// one after another and a few clinicians opening pages together would
/// otherwise see spurious failures. The wait is not unbounded: it counts
/// towards `api.request_timeout_ms`, so under lasting overload requests
/// answer 503 after the timeout instead of queueing without end.
pub async fn bound_request(State(limits): State<Limits>, req: Request, next: Next) -> Response {
    let span = tracing::info_span!("request", method = %req.method(), path = %req.uri().path());
    let ms = limits.request_timeout.as_millis() as u64;
    let work = async {
        let slot = acquire_slot(&limits).await?;
        let resp = AssertUnwindSafe(next.run(req))
            .catch_unwind()
            .await
            .map_err(|panic| {
                ApiError::Internal(format!("handler panicked: {}", panic_text(&panic)))
            })?;
        Ok::<_, ApiError>(hold_while_streaming(resp, slot))
    };
    match tokio::time::timeout(limits.request_timeout, work)
        .instrument(span.clone())
        .await
    {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => span.in_scope(|| e.into_response()),
        Err(_) => span.in_scope(|| ApiError::RequestTimeout { ms }.into_response()),
    }
}

/// A streamed answer (an export: no length known) keeps its request slot
/// until its body ends, as it keeps a database connection until then; any
/// other answer gives it back once the handler returns.
fn hold_while_streaming(resp: Response, slot: OwnedSemaphorePermit) -> Response {
    if resp.body().size_hint().exact().is_some() {
        return resp;
    }
    resp.map(|body| {
        Body::from_stream(body.into_data_stream().map(move |chunk| {
            let _held = &slot;
            chunk
        }))
    })
}

/// A request slot; waits (logged at debug) when all are taken.
async fn acquire_slot(limits: &Limits) -> Result<OwnedSemaphorePermit, ApiError> {
    if let Ok(p) = Arc::clone(&limits.slots).try_acquire_owned() {
        return Ok(p);
    }
    tracing::debug!(
        slots = limits.slot_count,
        "every request slot is taken (api.max_concurrent_requests): waiting for one"
    );
    Arc::clone(&limits.slots)
        .acquire_owned()
        .await
        .map_err(|e| ApiError::Internal(format!("request slots closed: {e}")))
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> &str {
    p.downcast_ref::<&str>()
        .copied()
        .or_else(|| p.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactions_begin_with_the_statement_timeout() {
        let cfg = ApiConfig {
            statement_timeout_ms: 1234,
            ..ApiConfig::default()
        };
        let l = Limits::new(&cfg);
        assert_eq!(l.begin_sql(), "BEGIN; SET LOCAL statement_timeout = 1234");
        assert_eq!(
            l.begin_read_only_sql(),
            "BEGIN READ ONLY; SET LOCAL statement_timeout = 1234"
        );
    }
}
