//! Committing a batch whatever it holds.
//!
//! A batch's write can fail for two kinds of reason, and they need opposite
//! answers. **Connection-class** failures (the server gone, restarting,
//! read-only after a failover, out of resources, a serialization failure
//! or deadlock) are about the moment, not the messages: the same batch is
//! retried with backoff and nothing is acknowledged meanwhile. **Data**
//! failures (a value too long for its column, a NUL in text, a time out of
//! range, a constraint — SQLSTATE classes 22 and 23, and anything else
//! PostgreSQL refuses about a statement) are properties of some message in
//! the batch: retrying can never succeed, so the batch is bisected — each
//! half planned and written on its own, in order — until the messages that
//! fail alone are found; they are quarantined as `unstorable` with the
//! database's error text, and the rest commits. A message whose quarantine
//! row cannot be written either is held with its topic and payload only.
//! Nothing stops the stream, nothing is dropped.
//!
//! Every retry loop ends when `stop` fires: the batch is then left
//! unacknowledged, and the broker redelivers it to the next session.

use crate::fair_share::Allowance;
use crate::metrics::Metrics;
use crate::plan::{self, Message, Plan, QuarantineRow};
use crate::quarantine::Reason;
use crate::run::Status;
use crate::store::{self, Written};
use hailan_proto::zk::Verifier;
use sqlx::PgPool;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Why a batch could not be planned or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The connection, or the server's state: retry the same batch.
    Connection,
    /// Something PostgreSQL refused about the rows: isolate the messages.
    Data,
    /// Not the database at all (a bug tripped by some input): retried a
    /// few times, then isolated like a data failure.
    Internal,
}

/// SQLSTATE classes and codes that are about the connection or the
/// server's state, never the rows (PostgreSQL manual, appendix A).
fn is_connection_sqlstate(code: &str) -> bool {
    matches!(
        code.get(..2),
        // 08 connection exception, 40 transaction rollback (serialization
        // failure, deadlock), 53 insufficient resources, 57 operator
        // intervention (shutdown, query canceled, cannot connect now),
        // 58 system error (I/O). XX (internal error) may depend on the
        // rows: it stays a data failure.
        Some("08" | "40" | "53" | "57" | "58")
    ) || matches!(
        code,
        // read-only transaction (a standby after failover), lock not
        // available, object in use
        "25006" | "55P03" | "55006"
    )
}

/// Classify a failed plan or write.
pub fn classify(e: &anyhow::Error) -> Failure {
    let Some(db) = e.chain().find_map(|c| c.downcast_ref::<sqlx::Error>()) else {
        return Failure::Internal;
    };
    match db {
        sqlx::Error::Database(d) => match d.code() {
            Some(code) if is_connection_sqlstate(&code) => Failure::Connection,
            _ => Failure::Data,
        },
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => Failure::Connection,
        _ => Failure::Data,
    }
}

/// What a committed batch (or the parts it was split into) wrote.
#[derive(Debug, Default)]
pub struct Committed {
    /// The batch's plan; for a bisected batch, the first part's with the later
    /// parts' readings, registrations, quarantine rows and proof usage added
    /// ([`Plan::absorb`]): what fair share is charged and registered devices'
    /// quarantine replayed from.
    pub plan: Plan,
    /// What the transactions wrote, summed over those parts.
    pub written: Written,
}

impl Committed {
    fn absorb(&mut self, other: Committed) {
        self.plan.absorb(other.plan);
        self.written.readings_new += other.written.readings_new;
        self.written.readings_duplicate += other.written.readings_duplicate;
        self.written.quarantined += other.written.quarantined;
    }
}

/// Longest database error text kept in a quarantine row's detail.
const ERROR_TEXT_CAP: usize = 1024;

/// What planning and writing a batch needs.
pub struct Committer<'a> {
    /// The pool batches are planned against and written to (as the `hailan_ingest` role).
    pub pool: &'a PgPool,
    /// The proof verifier, shared with the blocking tasks that verify batches.
    pub verifier: &'a Arc<Verifier>,
    /// Recorded in `zk_verifications.verifier_name`.
    pub name: &'a str,
    /// Where batch failures and committed batches are counted.
    pub metrics: &'a Metrics,
    /// `db_ok` is set here: false on a connection-class failure, true after a write.
    pub status: &'a Status,
}

impl Committer<'_> {
    /// Plan and write `messages`, retrying connection-class failures with
    /// capped backoff until it commits or `stop` fires (then `None`: nothing
    /// was committed, nothing may be acknowledged), and isolating messages
    /// that cannot be stored. Returns what was written, merged over the
    /// parts a bisected batch was committed in.
    pub async fn commit(
        &self,
        messages: &[Message],
        allowance: &Allowance,
        stop: &CancellationToken,
    ) -> Option<Committed> {
        let mut delay = Duration::from_millis(100);
        let mut internal_failures = 0;
        loop {
            if stop.is_cancelled() {
                return None;
            }
            let e = match self.attempt(messages, allowance, stop).await {
                Ok(done) => return Some(done),
                Err(e) => e,
            };
            self.metrics.batch_failures.inc();
            match classify(&e) {
                Failure::Connection => self.status.db_ok.store(false, Ordering::Relaxed),
                Failure::Data => return self.bisect(messages, allowance, stop, &e).await,
                Failure::Internal => {
                    internal_failures += 1;
                    if internal_failures >= 3 {
                        return self.bisect(messages, allowance, stop, &e).await;
                    }
                }
            }
            tracing::warn!(error = %format!("{e:#}"), retry_in_ms = delay.as_millis() as u64, "batch not written; retrying");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => return None,
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// One plan-and-write, abandoned (as a connection failure) if `stop` fires.
    async fn attempt(
        &self,
        messages: &[Message],
        allowance: &Allowance,
        stop: &CancellationToken,
    ) -> anyhow::Result<Committed> {
        let work = async {
            let started = Instant::now();
            let plan =
                plan::plan_with(self.pool, Arc::clone(self.verifier), messages, allowance).await?;
            let planned = Instant::now();
            let written = store::write(self.pool, &plan, self.name).await?;
            self.status.db_ok.store(true, Ordering::Relaxed);
            self.metrics
                .record_batch(&plan, &written, planned - started, planned.elapsed());
            anyhow::Ok(Committed { plan, written })
        };
        tokio::select! {
            r = work => r,
            _ = stop.cancelled() => Err(anyhow::anyhow!("stopping")),
        }
    }

    /// Split a batch that fails on its rows: each half is committed on its
    /// own, the first before the second (a registration keeps its place
    /// before the readings behind it), until single messages remain.
    async fn bisect(
        &self,
        messages: &[Message],
        allowance: &Allowance,
        stop: &CancellationToken,
        error: &anyhow::Error,
    ) -> Option<Committed> {
        if let [one] = messages {
            return self.quarantine_unstorable(one, error, stop).await;
        }
        tracing::warn!(
            error = %format!("{error:#}"),
            messages = messages.len(),
            "batch cannot be stored as it is; splitting it to find the messages at fault"
        );
        let (first, second) = messages.split_at(messages.len() / 2);
        let mut merged = Box::pin(self.commit(first, allowance, stop)).await?;
        let rest = Box::pin(self.commit(second, allowance, stop)).await?;
        merged.absorb(rest);
        Some(merged)
    }

    /// Hold a message that cannot be stored: `unstorable`, with the
    /// database's error text; if even that row is refused, its topic and
    /// payload alone.
    async fn quarantine_unstorable(
        &self,
        m: &Message,
        error: &anyhow::Error,
        stop: &CancellationToken,
    ) -> Option<Committed> {
        let text = cap(&format!("{error:#}"), ERROR_TEXT_CAP);
        // A bug tripped by the message is told apart from a refusal of the database.
        let reason = match classify(error) {
            Failure::Internal => Reason::InternalError,
            Failure::Connection | Failure::Data => Reason::Unstorable,
        };
        tracing::error!(topic = %m.topic, error = %text, reason = reason.code(), "message cannot be stored; quarantined");
        let full = QuarantineRow::of_message(m, reason, text.clone());
        let plan = unstorable_plan(m, full);
        match self.write_retrying(&plan, stop).await? {
            Ok(written) => return Some(Committed { plan, written }),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "the quarantine row is refused too; keeping the payload only")
            }
        }
        let bare = QuarantineRow {
            gateway_id: None,
            device_id: None,
            data_type: None,
            seq: None,
            ..QuarantineRow::of_message(
                m,
                reason,
                format!("its quarantine row was refused too: {text}"),
            )
        };
        let plan = unstorable_plan(m, bare);
        match self.write_retrying(&plan, stop).await? {
            Ok(written) => Some(Committed { plan, written }),
            Err(e) => {
                // Only a bug in the quarantine writer itself gets here:
                // say everything about the message, and let the stream on.
                tracing::error!(
                    error = %format!("{e:#}"),
                    topic = %m.topic,
                    payload_hex = %faster_hex::hex_string(&m.payload),
                    "message dropped: not even its payload could be quarantined"
                );
                Some(Committed {
                    plan: Plan {
                        message_count: 1,
                        ..Plan::default()
                    },
                    written: Written::default(),
                })
            }
        }
    }

    /// Write `plan`, retrying connection-class failures until `stop`.
    /// `Some(Err)` is a data failure of the plan itself.
    async fn write_retrying(
        &self,
        plan: &Plan,
        stop: &CancellationToken,
    ) -> Option<anyhow::Result<Written>> {
        let mut delay = Duration::from_millis(100);
        loop {
            let attempt = tokio::select! {
                r = store::write(self.pool, plan, self.name) => r,
                _ = stop.cancelled() => return None,
            };
            match attempt {
                Ok(written) => {
                    self.metrics
                        .record_batch(plan, &written, Duration::ZERO, Duration::ZERO);
                    return Some(Ok(written));
                }
                Err(e) if classify(&e) == Failure::Connection => {
                    self.status.db_ok.store(false, Ordering::Relaxed);
                    tracing::warn!(error = %format!("{e:#}"), "quarantine not written; retrying");
                }
                Err(e) => return Some(Err(e)),
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => return None,
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

/// The plan of one message held in quarantine (replacing the quarantine
/// row it was replayed from, if any).
fn unstorable_plan(m: &Message, row: QuarantineRow) -> Plan {
    Plan {
        message_count: 1,
        replayed: m.from_quarantine.into_iter().collect(),
        quarantine: vec![row],
        ..Plan::default()
    }
}

/// `s` cut to at most `max` bytes on a character boundary, marked when cut.
pub fn cap(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &s[..end], s.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_split_into_connection_and_data() {
        for code in [
            "08006", "08001", "40001", "40P01", "53300", "57P01", "57014", "25006",
        ] {
            assert!(is_connection_sqlstate(code), "{code}");
        }
        // string too long, NUL in text, datetime overflow, numeric out of
        // range, unique and check violations, undefined column
        for code in [
            "22001", "22021", "22008", "22003", "23505", "23514", "42703", "XX000",
        ] {
            assert!(!is_connection_sqlstate(code), "{code}");
        }
    }

    #[test]
    fn errors_without_a_database_cause_are_internal() {
        let e = anyhow::anyhow!("verifier task panicked");
        assert_eq!(classify(&e), Failure::Internal);
        let e = anyhow::Error::from(sqlx::Error::PoolTimedOut).context("writing readings");
        assert_eq!(classify(&e), Failure::Connection);
        let e = anyhow::Error::from(sqlx::Error::RowNotFound).context("writing readings");
        assert_eq!(classify(&e), Failure::Data);
    }

    #[test]
    fn cap_cuts_on_a_character_boundary() {
        assert_eq!(cap("short", 10), "short");
        let s = "é".repeat(10);
        let c = cap(&s, 5);
        assert!(c.starts_with("éé…"), "{c}");
        assert!(c.ends_with("(20 bytes in all)"), "{c}");
    }
}
