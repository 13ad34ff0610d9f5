//! Quarantine: why a message (or one proven group of it) was not stored as
//! readings. Nothing is dropped — the raw payload is kept with the reason —
//! and `hailan-ingest quarantine list/replay` inspect and retry.

use anyhow::Result;
use hailan_proto::zk::Reject;
use sqlx::PgPool;
use uuid::Uuid;

/// A stable reason code (stored in `rejected_readings.reason`, used in metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The topic is not `hailan/v1/{gateway}/up`.
    BadTopic,
    /// The payload is larger than the envelope limit (`MAX_ENVELOPE_BYTES`).
    Oversize,
    /// The payload is not a valid envelope (CBOR or structural validation
    /// failed), or a reading's seq or time is out of range for its column.
    Undecodable,
    /// An envelope of a version this build does not read.
    UnsupportedVersion,
    /// The envelope names another gateway than the topic it was published on.
    GatewayMismatch,
    /// The sending gateway is not enrolled, or is revoked.
    UnknownGateway,
    /// Readings or a device state of a device not registered yet; replayed
    /// automatically when its registration arrives.
    UnknownDevice,
    /// The device is registered to another gateway than the sender.
    DeviceGatewayMismatch,
    /// A re-registration with another device commitment than the one pinned.
    DeviceKeyMismatch,
    /// A registration for a patient the gateway is not enrolled for
    /// (`gateway_patients`), or naming another patient than the one the
    /// device is registered under.
    UnknownPatient,
    /// The proof names a verifying key ingest does not have.
    UnknownKey,
    /// The proof's key is for the other statement: a reading key on a window
    /// group, or the reverse.
    KeyKindMismatch,
    /// The group cannot be a statement (wrong reading count, seqs or times, a
    /// data type a window cannot prove), or the proof is not 128 bytes.
    BadGroupShape,
    /// The proof bytes are not a valid compressed Groth16 proof on BN254, or a
    /// commitment is not a canonical scalar.
    MalformedProof,
    /// The proof does not verify for this device, header, commitment and
    /// ingest's bounds policy (also a proof made for other bounds or another
    /// reading's context).
    BadProof,
    /// Processing failed for a reason that is not the input's fault (a bug);
    /// kept so the rest flows on, and replayable once fixed.
    InternalError,
    /// Valid on the wire, but PostgreSQL refused to store it (a data error
    /// the envelope's validation did not foresee): found by bisecting its
    /// batch, held with the database's error text so the rest flows on.
    Unstorable,
    /// Over its gateway's fair share (`[fair_share]`): kept undecoded and
    /// acknowledged; `quarantine replay --reason rate_limited` runs it again.
    RateLimited,
}

impl Reason {
    /// Every reason, in declaration order (for listings and for [`Reason::from_code`]).
    pub const ALL: [Reason; 18] = [
        Reason::BadTopic,
        Reason::Oversize,
        Reason::Undecodable,
        Reason::UnsupportedVersion,
        Reason::GatewayMismatch,
        Reason::UnknownGateway,
        Reason::UnknownDevice,
        Reason::DeviceGatewayMismatch,
        Reason::DeviceKeyMismatch,
        Reason::UnknownPatient,
        Reason::UnknownKey,
        Reason::KeyKindMismatch,
        Reason::BadGroupShape,
        Reason::MalformedProof,
        Reason::BadProof,
        Reason::InternalError,
        Reason::Unstorable,
        Reason::RateLimited,
    ];

    /// The stable code stored in `rejected_readings.reason` and used as the
    /// `reason` metric label, e.g. `bad_proof`.
    pub fn code(self) -> &'static str {
        match self {
            Reason::BadTopic => "bad_topic",
            Reason::Oversize => "oversize",
            Reason::Undecodable => "undecodable",
            Reason::UnsupportedVersion => "unsupported_version",
            Reason::GatewayMismatch => "gateway_mismatch",
            Reason::UnknownGateway => "unknown_gateway",
            Reason::UnknownDevice => "unknown_device",
            Reason::DeviceGatewayMismatch => "device_gateway_mismatch",
            Reason::DeviceKeyMismatch => "device_key_mismatch",
            Reason::UnknownPatient => "unknown_patient",
            Reason::UnknownKey => "unknown_key",
            Reason::KeyKindMismatch => "key_kind_mismatch",
            Reason::BadGroupShape => "bad_group_shape",
            Reason::MalformedProof => "malformed_proof",
            Reason::BadProof => "bad_proof",
            Reason::InternalError => "internal_error",
            Reason::Unstorable => "unstorable",
            Reason::RateLimited => "rate_limited",
        }
    }

    /// The reason whose [`Reason::code`] is `code`; `None` for an unknown code.
    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.code() == code)
    }

    /// The quarantine reason for a rejected proof. A proof made with other
    /// bounds than ingest's policy, or for another header (context), or with
    /// another device secret, does not verify: all are `bad_proof`, and the
    /// detail says which statement was checked.
    pub fn from_reject(r: &Reject) -> Reason {
        match r {
            Reject::UnknownKey(_) => Reason::UnknownKey,
            Reject::KindMismatch { .. } => Reason::KeyKindMismatch,
            Reject::Shape(_) | Reject::ProofLength(_) => Reason::BadGroupShape,
            Reject::MalformedProof | Reject::MalformedScalar(_) => Reason::MalformedProof,
            Reject::InvalidProof | Reject::NoProof(_) | Reject::UnknownDataType(_) => {
                Reason::BadProof
            }
        }
    }
}

/// One quarantine row, as listed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Rejected {
    /// Row id (`rejected_readings.id`); a replay deletes the row by it, in the
    /// transaction that stores the message's new outcome.
    pub id: Uuid,
    /// When the row was written (`rejected_readings.received_at`).
    pub received_at: chrono::DateTime<chrono::Utc>,
    /// The MQTT topic the message came on.
    pub topic: String,
    /// The gateway the topic names, if any.
    pub gateway_id: Option<String>,
    /// The device the message is about, when it was known.
    pub device_id: Option<String>,
    /// The reason's code (see [`Reason::code`]).
    pub reason: String,
    /// Human-readable detail of the reason.
    pub detail: String,
    /// The raw MQTT payload (cut for senders that are not enrolled gateways).
    pub payload: Vec<u8>,
}

impl Rejected {
    /// The message this row holds, to be planned again; the row is deleted
    /// in the transaction that stores the message's new outcome.
    pub fn replay(self) -> crate::plan::Message {
        crate::plan::Message {
            topic: self.topic,
            payload: self.payload.into(),
            from_quarantine: Some(self.id),
            rate_limited: None,
        }
    }
}

/// Rows dropped by one [`prune`], by cause.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Rows dropped for being older than `quarantine.max_age_days`.
    pub by_age: u64,
    /// Oldest rows dropped to fit `quarantine.max_bytes`.
    pub by_quota: u64,
}

/// Apply retention: drop rows older than `max_age_days` (0: none), then the
/// oldest rows until the held payloads fit `max_bytes` (0: no quota).
pub async fn prune(pool: &PgPool, max_age_days: u32, max_bytes: u64) -> Result<Pruned> {
    let mut pruned = Pruned::default();
    if max_age_days > 0 {
        pruned.by_age = sqlx::query(
            "DELETE FROM rejected_readings WHERE received_at < now() - make_interval(days => $1)",
        )
        .bind(i32::try_from(max_age_days).unwrap_or(i32::MAX))
        .execute(pool)
        .await?
        .rows_affected();
    }
    if max_bytes > 0 {
        // Keep the newest rows whose payloads, added up newest first, fit.
        pruned.by_quota = sqlx::query(
            "DELETE FROM rejected_readings r
              USING (SELECT id, sum(octet_length(payload)) OVER (ORDER BY received_at DESC, id DESC) AS held
                       FROM rejected_readings) s
              WHERE r.id = s.id AND s.held > $1",
        )
        .bind(i64::try_from(max_bytes).unwrap_or(i64::MAX))
        .execute(pool)
        .await?
        .rows_affected();
    }
    Ok(pruned)
}

/// Quarantine rows, newest first, optionally of one reason.
pub async fn list(pool: &PgPool, reason: Option<&str>, limit: i64) -> Result<Vec<Rejected>> {
    Ok(sqlx::query_as::<_, Rejected>(
        "SELECT id, received_at, topic, gateway_id, device_id, reason, detail, payload
           FROM rejected_readings
          WHERE ($1::text IS NULL OR reason = $1)
          ORDER BY received_at DESC LIMIT $2",
    )
    .bind(reason)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Quarantine rows to replay: of these ids, or of a reason, or for devices.
pub async fn for_replay(
    pool: &PgPool,
    reason: Option<&str>,
    device_ids: &[String],
    limit: i64,
) -> Result<Vec<Rejected>> {
    Ok(sqlx::query_as::<_, Rejected>(
        "SELECT id, received_at, topic, gateway_id, device_id, reason, detail, payload
           FROM rejected_readings
          WHERE ($1::text IS NULL OR reason = $1)
            AND (cardinality($2::text[]) = 0 OR device_id = ANY($2))
          ORDER BY received_at LIMIT $3",
    )
    .bind(reason)
    .bind(device_ids)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// `rate_limited` rows to replay, oldest first: at most `per_gateway` of
/// each gateway (so one gateway's backlog does not hide the others') and
/// `limit` in all.
pub async fn rate_limited_for_replay(
    pool: &PgPool,
    per_gateway: i64,
    limit: i64,
) -> Result<Vec<Rejected>> {
    Ok(sqlx::query_as::<_, Rejected>(
        "SELECT id, received_at, topic, gateway_id, device_id, reason, detail, payload
           FROM (SELECT *, row_number() OVER (PARTITION BY gateway_id ORDER BY received_at) AS n
                   FROM rejected_readings WHERE reason = 'rate_limited') r
          WHERE n <= $1
          ORDER BY received_at LIMIT $2",
    )
    .bind(per_gateway)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}
