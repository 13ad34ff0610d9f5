//! One request, one transaction: the bearer token is checked by
//! `hailan_api_login` (which also sets `hailan.user_id`), the transaction
//! takes the caller's role with `SET LOCAL ROLE`, and the audit row is written
//! in the same transaction before it commits. Row Level Security, not Rust,
//! decides what the caller sees.
//!
//! With a read replica, the reads run in a second, read-only transaction on
//! the replica under the same role and identity, after the replica has
//! replayed up to the primary's WAL position taken at log-in (so a grant
//! revoked or a reading committed before the request is seen). The primary
//! transaction (log-in, audit row) commits before any data is returned:
//! nothing leaves the API unaudited.
//!
//! Each transaction begins with `SET LOCAL statement_timeout`
//! (`api.statement_timeout_ms`, [`super::limits`]), in the same round trip
//! as its `BEGIN`: no statement of a request, the log-in included, runs
//! longer.

use super::ApiError;
use super::ApiState;
use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use sqlx::{AssertSqlSafe, PgConnection, Postgres, Transaction};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Kind {
    /// A `CLINICIAN` account: the transactions run as `hailan_clinician`, and
    /// RLS shows it verified readings of the data types its active grants cover.
    Clinician,
    /// A `PATIENT` account: the transactions run as `hailan_patient`, and RLS
    /// shows the patient their own rows.
    Patient,
}

impl Kind {
    /// The role, and room to sort a day of readings in memory.
    fn role(self) -> &'static str {
        match self {
            Kind::Clinician => "SET LOCAL ROLE hailan_clinician; SET LOCAL work_mem = '64MB'",
            Kind::Patient => "SET LOCAL ROLE hailan_patient; SET LOCAL work_mem = '64MB'",
        }
    }
}

/// An authenticated request's transactions.
pub struct Session {
    /// The caller's user id (`users.id`), as `hailan_api_login` found it for the token.
    pub user_id: Uuid,
    /// Whether the caller is a clinician or a patient (the role the transactions take).
    pub kind: Kind,
    primary: Transaction<'static, Postgres>,
    replica: Option<Transaction<'static, Postgres>>,
}

/// The bearer token of a request, or why there is none.
fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let v = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or(ApiError::Unauthorized("no Authorization header"))?
        .to_str()
        .map_err(|_| ApiError::Unauthorized("malformed Authorization header"))?;
    match v.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(token.trim()),
        _ => Err(ApiError::Unauthorized("not a bearer token")),
    }
}

impl Session {
    /// Log in with the request's bearer token and open the transaction(s).
    pub async fn begin(state: &ApiState, headers: &HeaderMap) -> Result<Session, ApiError> {
        let token = bearer(headers)?;
        let hash = hex::encode(Sha256::digest(token.as_bytes()));
        let mut primary = state
            .primary
            .begin_with(AssertSqlSafe(state.limits.begin_sql()))
            .await?;
        let who: Option<(Uuid, String)> =
            sqlx::query_as("SELECT user_id, user_kind FROM hailan_api_login($1)")
                .bind(&hash)
                .fetch_optional(&mut *primary)
                .await?;
        let Some((user_id, kind)) = who else {
            return Err(ApiError::Unauthorized(
                "unknown, expired or revoked token, or inactive user",
            ));
        };
        let kind = match kind.as_str() {
            "CLINICIAN" => Kind::Clinician,
            "PATIENT" => Kind::Patient,
            other => {
                return Err(ApiError::Forbidden(format!(
                    "a {other} account cannot use the clinician API"
                )));
            }
        };
        sqlx::raw_sql(kind.role()).execute(&mut *primary).await?;
        let replica = match &state.replica {
            None => None,
            Some(pool) => {
                let lsn: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
                    .fetch_one(&mut *primary)
                    .await?;
                let mut rtx = pool
                    .begin_with(AssertSqlSafe(state.limits.begin_read_only_sql()))
                    .await?;
                sqlx::raw_sql(kind.role()).execute(&mut *rtx).await?;
                sqlx::query("SELECT set_config('hailan.user_id', $1, true)")
                    .bind(user_id.to_string())
                    .execute(&mut *rtx)
                    .await?;
                if caught_up(&mut rtx, &lsn, state.replica_wait).await? {
                    Some(rtx)
                } else {
                    tracing::warn!(
                        lsn,
                        "the read replica has not replayed the primary's position: reading from the primary"
                    );
                    None
                }
            }
        };
        Ok(Session {
            user_id,
            kind,
            primary,
            replica,
        })
    }

    /// The connection reads go to (the replica's transaction, if any).
    pub fn reader(&mut self) -> &mut PgConnection {
        match &mut self.replica {
            Some(r) => &mut *r,
            None => &mut self.primary,
        }
    }

    /// The primary's transaction (for rows the request writes besides the audit row).
    pub fn writer(&mut self) -> &mut PgConnection {
        &mut self.primary
    }

    /// Whether reads are served by the replica.
    pub fn from_replica(&self) -> bool {
        self.replica.is_some()
    }

    /// A read-only `REPEATABLE READ` transaction under the caller's role and
    /// identity, for a read that outlives the request's own transactions (an
    /// export streamed after its audit row commits): every page it reads sees
    /// one snapshot, taken by its first statement. On the replica when this
    /// request reads from it (it has already caught up), else on the primary.
    /// It also bounds the pause between two statements
    /// (`idle_in_transaction_session_timeout` = `api.request_timeout_ms`): a
    /// client that stops reading does not hold the connection for longer.
    pub async fn snapshot_reader(
        &self,
        state: &ApiState,
    ) -> Result<Transaction<'static, Postgres>, ApiError> {
        let pool = match (&self.replica, &state.replica) {
            (Some(_), Some(replica)) => replica,
            _ => &state.primary,
        };
        let mut tx = pool
            .begin_with(AssertSqlSafe(state.limits.begin_snapshot_sql()))
            .await?;
        sqlx::raw_sql(self.kind.role()).execute(&mut *tx).await?;
        sqlx::query("SELECT set_config('hailan.user_id', $1, true)")
            .bind(self.user_id.to_string())
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    /// Write the audit row and commit. Call before the response is built.
    pub async fn finish(
        mut self,
        action: &str,
        resource: &str,
        patient: Option<Uuid>,
        rows: usize,
        detail: serde_json::Value,
    ) -> Result<(), ApiError> {
        let mut detail = detail;
        if let Some(obj) = detail.as_object_mut() {
            obj.insert("replica".into(), self.replica.is_some().into());
        }
        sqlx::query(
            "INSERT INTO audit_logs (actor_id, actor_kind, patient_id, action, resource, row_count, detail)
             VALUES (hailan_current_user(), $1, $2, $3, $4, $5, $6)",
        )
        .bind(match self.kind {
            Kind::Clinician => "CLINICIAN",
            Kind::Patient => "PATIENT",
        })
        .bind(patient)
        .bind(action)
        .bind(resource)
        .bind(i32::try_from(rows).unwrap_or(i32::MAX))
        .bind(detail)
        .execute(&mut *self.primary)
        .await?;
        if let Some(r) = self.replica.take() {
            r.rollback().await?;
        }
        self.primary.commit().await?;
        Ok(())
    }
}

/// Wait (up to `limit`) until the replica has replayed `lsn`.
async fn caught_up(
    rtx: &mut Transaction<'static, Postgres>,
    lsn: &str,
    limit: Duration,
) -> Result<bool, ApiError> {
    let start = Instant::now();
    loop {
        // NULL when the server is not in recovery (a primary given as replica).
        let done: Option<bool> =
            sqlx::query_scalar("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn")
                .bind(lsn)
                .fetch_one(&mut **rtx)
                .await?;
        if done != Some(false) {
            return Ok(true);
        }
        if start.elapsed() >= limit {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
