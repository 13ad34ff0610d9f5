//! Exports of any length, streamed: a patient's readings of a range read and
//! checked one page at a time (`api.max_page` readings) and written to the
//! answer as they are, so an export's memory is one page's, not the range's
//! (`export.csv`, [`crate::export_csv`]; `export.fhir.json`,
//! [`crate::fhir::everything`]).
//!
//! Why it is its own module: the audit row of a request commits before any
//! data leaves ([`crate::session`]), but an export's body is written after
//! the handler returns. So an export reads in a transaction of its own — a
//! read-only snapshot ([`Session::snapshot_reader`]) that every page sees
//! alike — counts the range in it, writes the audit row with that count,
//! commits the request's transaction, and only then streams. The answer's
//! status and headers go out first: a failure after that (a statement
//! timeout, a lost connection, a client paused past `api.request_timeout_ms`)
//! ends the body without its last chunk, so the client sees a broken
//! download, never a short file that looks whole.

use crate::check::{Check, StoredReading};
use crate::routes::read_checked;
use crate::session::Session;
use crate::store::{self, Range, Take};
use crate::{ApiError, ApiState};
use axum::body::Body;
use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Postgres, Transaction};
use std::future::Future;
use uuid::Uuid;

/// What an export is: whose readings, of which types, over which range.
#[derive(Debug, Clone)]
pub struct Scope {
    /// The patient (`users.id`).
    pub patient: Uuid,
    /// The data types exported (names as stored).
    pub types: Vec<String>,
    /// Earliest `recorded_at` (inclusive).
    pub from: DateTime<Utc>,
    /// Latest `recorded_at` (inclusive).
    pub to: DateTime<Utc>,
}

/// The audit row of an export.
#[derive(Debug)]
pub struct Audit<'a> {
    /// `audit_logs.action`.
    pub action: &'a str,
    /// `audit_logs.resource`: the path read.
    pub resource: &'a str,
    /// `audit_logs.detail`.
    pub detail: serde_json::Value,
}

/// An export under way: its snapshot and how far it has read.
pub struct Export {
    state: ApiState,
    snapshot: Transaction<'static, Postgres>,
    scope: Scope,
    after: Option<(DateTime<Utc>, Uuid)>,
    page: i64,
    done: bool,
    written: u64,
}

impl Export {
    /// Log in, open the snapshot, count the range in it, write the audit row
    /// with that count and commit: what follows is only reading. Returns
    /// the export and how many readings it holds.
    pub async fn begin(
        state: &ApiState,
        headers: &HeaderMap,
        scope: Scope,
        audit: Audit<'_>,
    ) -> Result<(Export, i64), ApiError> {
        let s = Session::begin(state, headers).await?;
        let mut snapshot = s.snapshot_reader(state).await?;
        let n = store::count_readings(
            &mut snapshot,
            scope.patient,
            &scope.types,
            scope.from,
            scope.to,
        )
        .await?;
        let rows = usize::try_from(n).unwrap_or(usize::MAX);
        s.finish(
            audit.action,
            audit.resource,
            Some(scope.patient),
            rows,
            audit.detail,
        )
        .await?;
        let export = Export {
            state: state.clone(),
            snapshot,
            scope,
            after: None,
            page: state.max_page.max(1),
            done: false,
            written: 0,
        };
        Ok((export, n))
    }

    /// The next page of readings in time order, checked; `None` once all
    /// are read.
    pub async fn next_page(&mut self) -> Result<Option<Vec<(StoredReading, Check)>>, ApiError> {
        if self.done {
            return Ok(None);
        }
        let range = Range {
            from: self.scope.from,
            to: self.scope.to,
            after: self.after,
            take: Take::Page(self.page),
        };
        let checked = read_checked(
            &self.state,
            &mut self.snapshot,
            self.scope.patient,
            &self.scope.types,
            &range,
        )
        .await?;
        self.done = (checked.len() as i64) < self.page;
        let Some((last, _)) = checked.last() else {
            return Ok(None);
        };
        self.after = Some((last.recorded_at, last.id));
        self.written += checked.len() as u64;
        Ok(Some(checked))
    }

    /// The snapshot's connection, for what a page references.
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.snapshot
    }

    /// What is exported.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The state the export was begun with (keys, limits).
    pub fn state(&self) -> &ApiState {
        &self.state
    }
}

/// How an export's readings become bytes: a head, each page, a tail.
pub trait Render: Send + 'static {
    /// What comes before the first reading.
    fn head(&mut self) -> String;
    /// One page of readings (and what they reference, read in `export`'s snapshot).
    fn page(
        &mut self,
        export: &mut Export,
        page: Vec<(StoredReading, Check)>,
    ) -> impl Future<Output = Result<String, ApiError>> + Send;
    /// What comes after the last reading.
    fn tail(&mut self) -> String;
}

/// Where the body's stream is.
enum Step {
    Head,
    Pages,
    Done,
}

/// The answer's body: `render`'s head, its pages as they are read, its
/// tail. A failure is logged and ends the body early.
pub fn body<R: Render>(export: Export, render: R) -> Body {
    let stream = futures::stream::try_unfold(
        (export, render, Step::Head),
        |(mut export, mut render, step)| async move {
            match step {
                Step::Head => {
                    let head = render.head();
                    Ok(Some((head, (export, render, Step::Pages))))
                }
                Step::Pages => match export.next_page().await {
                    Ok(Some(page)) => match render.page(&mut export, page).await {
                        Ok(text) => Ok(Some((text, (export, render, Step::Pages)))),
                        Err(e) => Err(aborted(&export, e)),
                    },
                    Ok(None) => {
                        let tail = render.tail();
                        Ok(Some((tail, (export, render, Step::Done))))
                    }
                    Err(e) => Err(aborted(&export, e)),
                },
                Step::Done => Ok(None),
            }
        },
    );
    Body::from_stream(stream)
}

/// Log why an export stopped after its status went out.
fn aborted(export: &Export, e: ApiError) -> ApiError {
    tracing::error!(
        patient = %export.scope.patient,
        readings_written = export.written,
        error = %e,
        "an export failed part way: its body ends without its last chunk"
    );
    e
}
