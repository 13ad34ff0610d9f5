//! Every statement the API runs to read readings, devices and proofs, and
//! the decoding of their rows — the one place that knows the columns. The
//! checks ([`crate::check`]) are pure over what this returns; the handlers
//! ([`crate::routes`], [`crate::fhir`], [`crate::grants`]) only call it.
//! (A request's log-in, role and audit row are [`crate::session`]'s.)

use crate::ApiError;
use crate::check::{self, SealedBytes, StoredReading};
use crate::fhir::trace::{ProofRow as ProofRecord, SensorRow};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, PgConnection, Row};
use std::collections::HashSet;
use std::sync::Arc;
use uuid::Uuid;

macro_rules! reading_select {
    ($cid:literal) => {
        concat!(
            "SELECT h.id, h.device_id, h.data_type, h.recorded_at, h.seq, h.gateway_id,
                    h.verified, h.zk_proof_hash, h.reading_commitment, ",
            $cid,
            ", h.value->>'kid' AS kid, h.value->>'nonce' AS nonce,
                    h.value->>'ciphertext' AS ciphertext
               FROM health_data h"
        )
    };
}

/// The columns of a `health_data` row the API reads, in the order
/// [`StoredReading`]'s decoder takes them (by position: looking 13 columns up
/// by name for each of a day's 86,400 rows was a tenth of a day view).
pub const READING_SELECT: &str = reading_select!("h.ipfs_data_cid");

/// [`READING_SELECT`] for charts, which show no CIDs (59 bytes less per row
/// for PostgreSQL to send and the API to copy).
pub const READING_SELECT_NO_CID: &str = reading_select!("NULL::text AS ipfs_data_cid");

/// A time range and a page position.
pub struct Range {
    /// Earliest `recorded_at` read (inclusive).
    pub from: DateTime<Utc>,
    /// Latest `recorded_at` read (inclusive).
    pub to: DateTime<Utc>,
    /// Keyset cursor: readings after (recorded_at, id) — before it for
    /// [`Take::NewestFirst`].
    pub after: Option<(DateTime<Utc>, Uuid)>,
    /// A page, or every reading up to a cap.
    pub take: Take,
}

/// How many readings of a range are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// At most this many, in time order, with their CIDs (a page).
    Page(i64),
    /// At most this many, newest first, with their CIDs (a page read
    /// backwards: the latest value of a vital is one row of an index scan).
    NewestFirst(i64),
    /// All of them, in no particular order and without their CIDs (a chart
    /// aggregates them: PostgreSQL streams the scan without sorting it) —
    /// but more than `cap` is refused ([`ApiError::TooManyRows`]): the read
    /// stops at `cap + 1` rows.
    All {
        /// Most readings one request may read (`api.max_rows_per_request`).
        cap: i64,
    },
}

impl Range {
    /// The readings query (parameters: patient, types, from, to, after
    /// time, after id, page size). The cap of [`Take::All`] is written into
    /// the statement, not bound: the planner then knows it (with a bound
    /// `LIMIT $n` PostgreSQL's generic plan guesses a tenth of the rows and
    /// may pick another scan), and a cap above the range's rows leaves the
    /// plan as it was without one.
    pub fn sql(&self) -> String {
        match self.take {
            Take::Page(_) => format!("{READING_SELECT} {RANGE_WHERE}"),
            Take::NewestFirst(_) => format!("{READING_SELECT} {RANGE_WHERE_NEWEST_FIRST}"),
            Take::All { cap } => format!(
                "{} {RANGE_WHERE_ALL} LIMIT {}",
                READING_SELECT_NO_CID,
                cap.saturating_add(1)
            ),
        }
    }

    /// The page size bound as `$7` (NULL for [`Take::All`]).
    pub fn page(&self) -> Option<i64> {
        match self.take {
            Take::Page(n) | Take::NewestFirst(n) => Some(n),
            Take::All { .. } => None,
        }
    }

    /// `Err(TooManyRows)` when `read` rows are more than [`Take::All`]'s cap.
    pub(crate) fn check_cap(&self, read: usize) -> Result<(), ApiError> {
        match self.take {
            Take::All { cap } if read as u64 > cap.max(0) as u64 => {
                Err(ApiError::TooManyRows { cap })
            }
            _ => Ok(()),
        }
    }
}

const RANGE_WHERE: &str =
    "WHERE h.user_id = $1 AND h.data_type = ANY($2) AND h.recorded_at >= $3 AND h.recorded_at <= $4
            AND ($5::timestamptz IS NULL OR (h.recorded_at, h.id) > ($5, $6))
          ORDER BY h.recorded_at, h.id
          LIMIT $7";
const RANGE_WHERE_NEWEST_FIRST: &str =
    "WHERE h.user_id = $1 AND h.data_type = ANY($2) AND h.recorded_at >= $3 AND h.recorded_at <= $4
            AND ($5::timestamptz IS NULL OR (h.recorded_at, h.id) < ($5, $6))
          ORDER BY h.recorded_at DESC, h.id DESC
          LIMIT $7";
const RANGE_WHERE_ALL: &str =
    "WHERE h.user_id = $1 AND h.data_type = ANY($2) AND h.recorded_at >= $3 AND h.recorded_at <= $4
            AND ($5::timestamptz IS NULL OR (h.recorded_at, h.id) > ($5, $6))
            AND $7::int8 IS NULL";

/// The readings query of `patient`, `types` and `range`, bound (one for the
/// streaming and the collecting reader). Rows come raw: the streaming reader
/// decodes them on the blocking pool.
pub(crate) fn readings_query<'a>(
    range: &Range,
    patient: Uuid,
    types: &'a [String],
) -> sqlx::query::Query<'a, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let (after_at, after_id) = match range.after {
        Some((t, id)) => (Some(t), Some(id)),
        None => (None, None),
    };
    sqlx::query(AssertSqlSafe(range.sql()))
        .bind(patient)
        .bind(types)
        .bind(range.from)
        .bind(range.to)
        .bind(after_at)
        .bind(after_id)
        .bind(range.page())
}

/// Readings of `patient` of `types` in `range` (as RLS lets the caller see
/// them), in time order, plus the hidden rest of every window cut by the range
/// (needed to re-open its commitment), with device ids and proofs filled in.
/// Returns (rows, how many are in range). (What [`crate::routes::read_checked`] does, without
/// streaming: for benchmarks and tools.)
pub async fn read_readings(
    conn: &mut PgConnection,
    patient: Uuid,
    types: &[String],
    range: &Range,
) -> Result<(Vec<StoredReading>, usize), ApiError> {
    let devices = read_devices(conn, patient).await?;
    let raw = readings_query(range, patient, types)
        .fetch_all(&mut *conn)
        .await?;
    range.check_cap(raw.len())?;
    let mut rows = decode_rows(&raw)?;
    drop(raw);
    let n = rows.len();
    complete_proofs(conn, patient, &mut rows).await?;
    let cut = check::incomplete_windows(&rows, &check::groups(&rows));
    if !cut.is_empty() {
        let mut more = decode_rows(&read_siblings(conn, patient, &cut, &rows).await?)?;
        complete_proofs(conn, patient, &mut more).await?;
        rows.extend(more);
    }
    for r in &mut rows {
        fill_device(r, &devices);
    }
    Ok((rows, n))
}

/// Joins `health_data h` to windows given as parameters `$2..=$6`
/// ([`WindowKeys`]): each reading of a window, by device, type, seq range
/// and proof, through the readings' unique key.
const WINDOWS_JOIN: &str = "JOIN UNNEST($2::uuid[], $3::text[], $4::int8[], $5::int8[], $6::text[])
       AS w(device, data_type, first_seq, last_seq, proof_hash)
    ON h.device_id = w.device AND h.data_type = w.data_type
   AND h.seq BETWEEN w.first_seq AND w.last_seq AND h.zk_proof_hash = w.proof_hash";

/// Windows as the column arrays bound to [`WINDOWS_JOIN`]'s `$2..=$6`.
struct WindowKeys<'a> {
    devices: Vec<Uuid>,
    types: Vec<&'a str>,
    first: Vec<i64>,
    last: Vec<i64>,
    hashes: Vec<&'a str>,
}

impl<'a> WindowKeys<'a> {
    fn of(windows: &'a [check::CutWindow]) -> Self {
        WindowKeys {
            devices: windows.iter().map(|w| w.device).collect(),
            types: windows.iter().map(|w| &*w.data_type).collect(),
            first: windows.iter().map(|w| w.first_seq).collect(),
            last: windows.iter().map(|w| w.last_seq).collect(),
            hashes: windows.iter().map(|w| &*w.proof_hash).collect(),
        }
    }
}

/// The readings of windows `cut` that are not among `have` (raw rows),
/// found by device and seq range through the readings' unique key.
pub(crate) async fn read_siblings(
    conn: &mut PgConnection,
    patient: Uuid,
    cut: &[check::CutWindow],
    have: &[StoredReading],
) -> Result<Vec<PgRow>, ApiError> {
    let have: HashSet<Uuid> = have.iter().map(|r| r.id).collect();
    let w = WindowKeys::of(cut);
    let mut more: Vec<PgRow> = sqlx::query(AssertSqlSafe(format!(
        "{READING_SELECT} {WINDOWS_JOIN} WHERE h.user_id = $1"
    )))
    .bind(patient)
    .bind(&w.devices)
    .bind(&w.types)
    .bind(&w.first)
    .bind(&w.last)
    .bind(&w.hashes)
    .fetch_all(&mut *conn)
    .await?;
    more.retain(|r| r.try_get::<Uuid, _>(0).is_ok_and(|id| !have.contains(&id)));
    Ok(more)
}

/// The patient's devices the caller may see: id → (own device id, name).
pub(crate) type Devices = check::Map<Uuid, Arc<check::DeviceInfo>>;

pub(crate) async fn read_devices(
    conn: &mut PgConnection,
    patient: Uuid,
) -> Result<Devices, ApiError> {
    let devices: Vec<(Uuid, String, Option<String>)> =
        sqlx::query_as("SELECT id, device_id, device_name FROM iot_devices WHERE user_id = $1")
            .bind(patient)
            .fetch_all(&mut *conn)
            .await?;
    Ok(devices
        .into_iter()
        .map(|(id, ext, name)| (id, Arc::new(check::DeviceInfo { ext, name })))
        .collect())
}

pub(crate) fn fill_device(r: &mut StoredReading, devices: &Devices) {
    r.device = r.device_id.and_then(|d| devices.get(&d)).cloned();
}

/// Fill in each reading's proof statement, size, key and public inputs C
/// and x. Read apart from the readings (one row per proof, joined here),
/// which keeps the readings' query a plain range scan. The hashes are
/// compared as `bpchar`, the column's type, so that the unique index serves
/// them: with `proof_hash::text = ANY($2)` PostgreSQL's generic plan (chosen
/// after a prepared statement's fifth run) scanned every proof of the patient
/// against all 5,400 hashes of a day, 250–450 ms instead of 35.
pub(crate) async fn complete_proofs(
    conn: &mut PgConnection,
    patient: Uuid,
    rows: &mut [StoredReading],
) -> Result<(), ApiError> {
    if rows.is_empty() {
        return Ok(());
    }
    let hashes: Vec<&str> = rows
        .iter()
        .filter_map(|r| r.zk_proof_hash.as_deref())
        .collect::<HashSet<_, foldhash::fast::RandomState>>()
        .into_iter()
        .collect();
    let proofs: Vec<ProofColumns> = sqlx::query_as(PROOF_INPUTS_SELECT)
        .bind(patient)
        .bind(&hashes)
        .fetch_all(&mut *conn)
        .await?;
    let proofs: check::Map<String, Arc<check::ProofInfo>> = proofs
        .into_iter()
        .map(
            |(hash, statement, first_seq, reading_count, key_id, c, x)| {
                let info = check::ProofInfo {
                    statement,
                    first_seq,
                    reading_count,
                    key_id,
                    c,
                    x,
                };
                (hash, Arc::new(info))
            },
        )
        .collect();
    for r in rows.iter_mut() {
        r.proof = r
            .zk_proof_hash
            .as_ref()
            .and_then(|h| proofs.get(&**h))
            .cloned();
    }
    Ok(())
}

/// The proofs of patient `$1` with hashes `$2` (text[]): hash, statement,
/// first seq, count, key id, public inputs C and x (`ProofColumns`).
pub const PROOF_INPUTS_SELECT: &str =
    "SELECT proof_hash::text, statement::text, first_seq, reading_count, key_id::text,
            public_inputs->>1, public_inputs->>2
       FROM zk_proofs WHERE user_id = $1 AND proof_hash = ANY($2::bpchar[])";

/// hash, statement, first seq, count, key id, public inputs C and x.
type ProofColumns = (
    String,
    String,
    i64,
    i32,
    String,
    Option<String>,
    Option<String>,
);

/// The bytes in column `i` of `row` (`None` for NULL).
fn raw_bytes(row: &PgRow, i: usize) -> Result<Option<&[u8]>, sqlx::Error> {
    let raw = row.try_get_raw(i)?;
    if sqlx::ValueRef::is_null(&raw) {
        return Ok(None);
    }
    raw.as_bytes()
        .map(Some)
        .map_err(|e| sqlx::Error::ColumnDecode {
            index: i.to_string(),
            source: e,
        })
}

/// Decodes [`READING_SELECT`] rows, sharing a string with the previous row
/// when the stored bytes are the same.
#[derive(Default)]
pub struct RowDecoder {
    data_type: Option<Arc<str>>,
    gateway_id: Option<Arc<str>>,
    zk_proof_hash: Option<Arc<str>>,
    kid: Option<Arc<str>>,
}

/// The text in column `i` of `row`, the previous row's `last` again when the
/// bytes are equal.
fn shared_text(
    row: &PgRow,
    i: usize,
    last: &mut Option<Arc<str>>,
) -> Result<Option<Arc<str>>, sqlx::Error> {
    let Some(bytes) = raw_bytes(row, i)? else {
        return Ok(None);
    };
    if let Some(l) = last.as_ref().filter(|l| l.as_bytes() == bytes) {
        return Ok(Some(Arc::clone(l)));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| sqlx::Error::ColumnDecode {
        index: i.to_string(),
        source: Box::new(e),
    })?;
    let text: Arc<str> = Arc::from(text);
    *last = Some(Arc::clone(&text));
    Ok(Some(text))
}

impl RowDecoder {
    /// One row. Unchecked: the columns are [`READING_SELECT`]'s, whose types
    /// are known; sqlx's per-value type-compatibility check (cloning and
    /// comparing type descriptions) was a sixth of decoding a day.
    pub fn decode(&mut self, row: &PgRow) -> Result<StoredReading, sqlx::Error> {
        let not_null = |v: Option<Arc<str>>, i: usize| {
            v.ok_or_else(|| sqlx::Error::ColumnDecode {
                index: i.to_string(),
                source: "unexpected NULL".into(),
            })
        };
        let commitment: Option<Vec<u8>> = row.try_get_unchecked(8)?;
        Ok(StoredReading {
            id: row.try_get_unchecked(0)?,
            device_id: row.try_get_unchecked(1)?,
            data_type: not_null(shared_text(row, 2, &mut self.data_type)?, 2)?,
            recorded_at: row.try_get_unchecked(3)?,
            seq: row.try_get_unchecked(4)?,
            gateway_id: not_null(shared_text(row, 5, &mut self.gateway_id)?, 5)?,
            verified: row.try_get_unchecked(6)?,
            zk_proof_hash: shared_text(row, 7, &mut self.zk_proof_hash)?,
            reading_commitment: commitment.and_then(|c| c.try_into().ok()),
            ipfs_data_cid: row.try_get_unchecked(9)?,
            kid: shared_text(row, 10, &mut self.kid)?,
            sealed: SealedBytes::from_hex(raw_bytes(row, 11)?, raw_bytes(row, 12)?),
            device: None,
            proof: None,
        })
    }
}

/// Decode [`READING_SELECT`] rows.
pub fn decode_rows(rows: &[PgRow]) -> Result<Vec<StoredReading>, sqlx::Error> {
    let mut decoder = RowDecoder::default();
    rows.iter().map(|r| decoder.decode(r)).collect()
}

// ------------------------------------------------------------------ people, devices, proofs

/// id, did, display name, granted data types (NULL: all), active, grant expiry.
pub type PatientRow = (
    Uuid,
    String,
    Option<String>,
    Option<Vec<String>>,
    bool,
    Option<DateTime<Utc>>,
);
/// device, first and last missing seq, time before and after the gap.
pub type GapRow = (Uuid, i64, i64, Option<DateTime<Utc>>, Option<DateTime<Utc>>);
/// data type, seq, statement, key id, proof, public inputs, first seq, count, proof hash,
/// the reading's sealed-value CID.
pub type ProofRow = (
    String,
    i64,
    String,
    String,
    Vec<u8>,
    Value,
    i64,
    i32,
    String,
    Option<String>,
);

/// The DID and display name of user `user`.
pub async fn identity(
    conn: &mut PgConnection,
    user: Uuid,
) -> Result<(String, Option<String>), ApiError> {
    Ok(
        sqlx::query_as("SELECT did, display_name FROM users WHERE id = $1")
            .bind(user)
            .fetch_one(conn)
            .await?,
    )
}

/// The calling clinician's patients: active grants (care_grants' own policy
/// admits only the caller's grants; the filter picks the active ones where
/// the caller is the clinician), with the data types granted (NULL: all).
pub async fn clinicians_patients(conn: &mut PgConnection) -> Result<Vec<PatientRow>, ApiError> {
    Ok(sqlx::query_as(
        "SELECT u.id, u.did, u.display_name,
                CASE WHEN bool_or(g.data_types IS NULL) THEN NULL
                     ELSE array_agg(DISTINCT t) FILTER (WHERE t IS NOT NULL) END,
                true,
                CASE WHEN bool_or(g.expires_at IS NULL) THEN NULL ELSE max(g.expires_at) END
           FROM care_grants g
           JOIN users u ON u.id = g.patient_id
           LEFT JOIN LATERAL unnest(g.data_types) t ON true
          WHERE g.clinician_id = hailan_current_user() AND g.revoked_at IS NULL
            AND (g.expires_at IS NULL OR g.expires_at > now())
          GROUP BY u.id, u.did, u.display_name
          ORDER BY u.display_name NULLS LAST, u.did",
    )
    .fetch_all(conn)
    .await?)
}

/// The calling patient, as a [`PatientRow`].
pub async fn the_patient(conn: &mut PgConnection) -> Result<Vec<PatientRow>, ApiError> {
    Ok(sqlx::query_as(
        "SELECT id, did, display_name, NULL::text[], true, NULL::timestamptz
           FROM users WHERE id = hailan_current_user()",
    )
    .fetch_all(conn)
    .await?)
}

/// One `iot_devices` row as `/devices` shows it.
#[derive(sqlx::FromRow)]
pub struct DeviceRow {
    /// Row id (`iot_devices.id`), what readings reference.
    pub id: Uuid,
    /// The device's own id as its gateway registered it (`iot_devices.device_id`).
    pub device_id: String,
    /// Its name (`iot_devices.device_name`), if it has one.
    pub device_name: Option<String>,
    /// What it measures (`iot_devices.device_type`): the data type name of its
    /// primary measurement, e.g. `BLOOD_PRESSURE`.
    pub device_type: String,
    /// Manufacturer from its Device Information service (`iot_devices.manufacturer`).
    pub manufacturer: Option<String>,
    /// Model number from Device Information (`iot_devices.model`).
    pub model: Option<String>,
    /// Firmware revision (`iot_devices.firmware_version`), from registration or
    /// the latest device state.
    pub firmware_version: Option<String>,
    /// The gateway it is paired with (`iot_devices.gateway_id`).
    pub gateway_id: String,
    /// Battery level in percent, 0–100 (`iot_devices.battery_level`).
    pub battery_level: Option<i32>,
    /// When ingest last wrote readings or a state of it (`iot_devices.last_sync`).
    pub last_sync: Option<DateTime<Utc>>,
    /// `PENDING`, `SYNCED`, `GAPS` or `STALE` (`iot_devices.sync_status`).
    pub sync_status: String,
    /// The link as last reported (`iot_devices.connection_state`): `CONNECTED`,
    /// `DISCONNECTED`, or `UNKNOWN` (also set when its gateway went offline);
    /// shown as `reported_connection_state`.
    pub connection_state: String,
    /// Received signal strength at the gateway in dBm (`iot_devices.rssi`).
    pub rssi: Option<i16>,
    /// When the gateway observed the state (`iot_devices.state_observed_at`):
    /// what staleness (`api.stale_after_s`) is measured from.
    pub state_observed_at: Option<DateTime<Utc>>,
    /// Highest seq received (`iot_devices.last_seq`); `None` before the first reading.
    pub last_seq: Option<i64>,
    /// How many seqs are missing between the lowest and the highest received
    /// (`iot_devices.missing_seqs`).
    pub missing_seqs: i64,
    /// Data types it registered (`iot_devices.data_types`).
    pub data_types: Vec<String>,
    /// Whether it is still paired (`iot_devices.is_active`): false once the
    /// device at its address on its gateway was paired again under another id.
    pub is_active: Option<bool>,
    /// Since when its gateway is offline (`iot_devices.gateway_offline_since`);
    /// `None` while online.
    pub gateway_offline_since: Option<DateTime<Utc>>,
    /// The device refused its bond and must be paired again
    /// (`iot_devices.needs_repair`); `None`: the gateway did not say.
    pub needs_repair: Option<bool>,
    /// Its Bluetooth address (`iot_devices.bluetooth_address`); `None` once given
    /// up to a re-pairing.
    pub bluetooth_address: Option<String>,
    /// When it was registered (`iot_devices.created_at`), shown as `registered_at`.
    pub created_at: Option<DateTime<Utc>>,
}

/// The patient's devices (as RLS lets the caller see them), by device id.
pub async fn devices(conn: &mut PgConnection, patient: Uuid) -> Result<Vec<DeviceRow>, ApiError> {
    Ok(sqlx::query_as(
        "SELECT id, device_id, device_name, device_type, manufacturer, model, firmware_version, gateway_id,
                battery_level, last_sync, sync_status, connection_state, rssi, state_observed_at, last_seq,
                missing_seqs, data_types, is_active, gateway_offline_since, needs_repair,
                bluetooth_address, created_at
           FROM iot_devices WHERE user_id = $1 ORDER BY device_id",
    )
    .bind(patient)
    .fetch_all(conn)
    .await?)
}

/// Holes between the seq ranges received from `devices`, the newest 100 per
/// device, with the times of the readings on either side where the caller
/// may see them.
pub async fn gaps(
    conn: &mut PgConnection,
    devices: &[Uuid],
    patient: Uuid,
) -> Result<Vec<GapRow>, ApiError> {
    Ok(sqlx::query_as(
        "WITH holes AS (
            SELECT device_id, hi + 1 AS first_missing, lead(lo) OVER w - 1 AS last_missing
              FROM device_seq_ranges WHERE device_id = ANY($1)
            WINDOW w AS (PARTITION BY device_id ORDER BY lo)),
         ranked AS (
            SELECT *, row_number() OVER (PARTITION BY device_id ORDER BY first_missing DESC) AS k
              FROM holes WHERE last_missing IS NOT NULL)
         SELECT r.device_id, r.first_missing, r.last_missing,
                (SELECT max(h.recorded_at) FROM health_data h
                  WHERE h.user_id = $2 AND h.device_id = r.device_id AND h.seq = r.first_missing - 1),
                (SELECT min(h.recorded_at) FROM health_data h
                  WHERE h.user_id = $2 AND h.device_id = r.device_id AND h.seq = r.last_missing + 1)
           FROM ranked r WHERE k <= 100 ORDER BY r.device_id, r.first_missing",
    )
    .bind(devices)
    .bind(patient)
    .fetch_all(conn)
    .await?)
}

/// A reading's proof, read through the reading. Every data type is named
/// (`types`): the primary key is (user_id, data_type, id), so each partition
/// is probed at one point instead of scanning the patient's part of its
/// index.
pub async fn proof_of_reading(
    conn: &mut PgConnection,
    patient: Uuid,
    reading: Uuid,
    types: &[String],
) -> Result<Option<ProofRow>, ApiError> {
    Ok(sqlx::query_as(
        "SELECT h.data_type, h.seq, p.statement::text, p.key_id::text, p.proof, p.public_inputs,
                p.first_seq, p.reading_count, p.proof_hash::text, h.ipfs_data_cid::text
           FROM health_data h
           JOIN zk_proofs p ON p.user_id = h.user_id AND p.proof_hash = h.zk_proof_hash::bpchar
          WHERE h.user_id = $1 AND h.data_type = ANY($3) AND h.id = $2",
    )
    .bind(patient)
    .bind(reading)
    .bind(types)
    .fetch_optional(conn)
    .await?)
}

/// Record the API's own re-verification of a reading's proof (as any
/// auditor's is recorded), by the caller.
pub async fn record_reverification(
    conn: &mut PgConnection,
    patient: Uuid,
    reading: Uuid,
    proof_hash: &str,
    key_id: &str,
    verified: bool,
    reason: Option<&str>,
) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO zk_verifications (user_id, data_id, proof_hash, key_id, verifier_id, verifier_name, verified, reason)
         VALUES ($1, $2, $3, $4, hailan_current_user(), 'hailan-api', $5, $6)",
    )
    .bind(patient)
    .bind(reading)
    .bind(proof_hash)
    .bind(key_id)
    .bind(verified)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}

// ------------------------------------------------------------------ grants

/// A grant as the API shows it.
#[derive(Debug, sqlx::FromRow)]
pub struct GrantRow {
    /// The grant's id (`care_grants.id`).
    pub id: Uuid,
    /// The patient who gives access (`care_grants.patient_id`).
    pub patient_id: Uuid,
    /// The patient's DID (`users.did`).
    pub patient_did: String,
    /// The patient's display name (`users.display_name`).
    pub patient_name: Option<String>,
    /// The clinician given access (`care_grants.clinician_id`).
    pub clinician_id: Uuid,
    /// The clinician's DID (`users.did`).
    pub clinician_did: String,
    /// The clinician's display name (`users.display_name`).
    pub clinician_name: Option<String>,
    /// Data types granted (`care_grants.data_types`); `None`: all of them.
    pub data_types: Option<Vec<String>>,
    /// When it was given (`care_grants.granted_at`).
    pub granted_at: DateTime<Utc>,
    /// When it ends by itself (`care_grants.expires_at`); `None`: only when revoked.
    pub expires_at: Option<DateTime<Utc>>,
    /// When the patient revoked it (`care_grants.revoked_at`); `None`: not revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

const GRANT_SELECT: &str =
    "SELECT g.id, g.patient_id, p.did AS patient_did, p.display_name AS patient_name,
        g.clinician_id, c.did AS clinician_did, c.display_name AS clinician_name,
        g.data_types, g.granted_at, g.expires_at, g.revoked_at
   FROM care_grants g JOIN users p ON p.id = g.patient_id JOIN users c ON c.id = g.clinician_id";

/// The grants where the caller is the patient or the clinician, newest first.
pub async fn grants_of_caller(conn: &mut PgConnection) -> Result<Vec<GrantRow>, ApiError> {
    Ok(sqlx::query_as(AssertSqlSafe(format!(
        "{GRANT_SELECT} WHERE g.patient_id = hailan_current_user() OR g.clinician_id = hailan_current_user()
          ORDER BY g.granted_at DESC, g.id"
    )))
    .fetch_all(conn)
    .await?)
}

/// A user's id and kind (`PATIENT`, `CLINICIAN`) by DID.
pub async fn user_by_did(
    conn: &mut PgConnection,
    did: &str,
) -> Result<Option<(Uuid, String)>, ApiError> {
    Ok(
        sqlx::query_as("SELECT id, user_kind FROM users WHERE did = $1")
            .bind(did)
            .fetch_optional(conn)
            .await?,
    )
}

/// The calling patient gives `clinician` access to `data_types` (NULL: all)
/// until `expires_at` (NULL: until revoked); the new grant.
pub async fn give_grant(
    conn: &mut PgConnection,
    clinician: Uuid,
    data_types: &Option<Vec<String>>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<GrantRow, ApiError> {
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO care_grants (patient_id, clinician_id, data_types, expires_at)
         VALUES (hailan_current_user(), $1, $2, $3) RETURNING id",
    )
    .bind(clinician)
    .bind(data_types)
    .bind(expires_at)
    .fetch_one(&mut *conn)
    .await?;
    Ok(
        sqlx::query_as(AssertSqlSafe(format!("{GRANT_SELECT} WHERE g.id = $1")))
            .bind(id)
            .fetch_one(conn)
            .await?,
    )
}

/// The calling patient revokes grant `id` from now (a revoked grant stays
/// as it was); the grant, or `None` when it is not the caller's.
pub async fn revoke_grant(conn: &mut PgConnection, id: Uuid) -> Result<Option<GrantRow>, ApiError> {
    sqlx::query(
        "UPDATE care_grants SET revoked_at = now()
          WHERE id = $1 AND patient_id = hailan_current_user() AND revoked_at IS NULL",
    )
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(sqlx::query_as(AssertSqlSafe(format!(
        "{GRANT_SELECT} WHERE g.id = $1 AND g.patient_id = hailan_current_user()"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

// ------------------------------------------------------------------ FHIR's devices and proofs

const SENSOR_SELECT: &str =
    "SELECT id, user_id, device_id, device_name, device_type, manufacturer, model,
        serial_number, firmware_version, hardware_version, bluetooth_address, gateway_id, is_active
   FROM iot_devices";

/// The sensors `ids` of `patient` the caller may see (RLS decides).
pub async fn read_sensors(
    conn: &mut PgConnection,
    patient: Uuid,
    ids: &[Uuid],
) -> Result<Vec<SensorRow>, ApiError> {
    Ok(sqlx::query_as(AssertSqlSafe(format!(
        "{SENSOR_SELECT} WHERE user_id = $1 AND id = ANY($2) ORDER BY id"
    )))
    .bind(patient)
    .bind(ids)
    .fetch_all(conn)
    .await?)
}

/// The proofs of `patient` with hashes `hashes` (compared as `bpchar`, the
/// column's type, so that the unique index serves them).
pub async fn read_proofs(
    conn: &mut PgConnection,
    patient: Uuid,
    hashes: &[&str],
) -> Result<Vec<ProofRecord>, ApiError> {
    Ok(sqlx::query_as(
        "SELECT id, proof_hash::text AS proof_hash, key_id::text AS key_id, statement::text AS statement, created_at
           FROM zk_proofs WHERE user_id = $1 AND proof_hash = ANY($2::bpchar[]) ORDER BY id",
    )
    .bind(patient)
    .bind(hashes)
    .fetch_all(conn)
    .await?)
}

/// The readings of `patient` in `from..=to` (as RLS lets the caller see
/// them) that the windows `windows` cover, as (proof hash, reading id) in
/// time order: a window proof's Provenance targets over a whole export.
/// Found by device and seq range through the readings' unique key, as
/// `read_siblings` finds a cut window's readings.
pub async fn window_members(
    conn: &mut PgConnection,
    patient: Uuid,
    windows: &[check::CutWindow],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<(String, Uuid)>, ApiError> {
    let w = WindowKeys::of(windows);
    Ok(sqlx::query_as(AssertSqlSafe(format!(
        "SELECT h.zk_proof_hash::text, h.id FROM health_data h {WINDOWS_JOIN}
          WHERE h.user_id = $1 AND h.recorded_at >= $7 AND h.recorded_at <= $8
          ORDER BY h.recorded_at, h.id"
    )))
    .bind(patient)
    .bind(&w.devices)
    .bind(&w.types)
    .bind(&w.first)
    .bind(&w.last)
    .bind(&w.hashes)
    .bind(from)
    .bind(to)
    .fetch_all(conn)
    .await?)
}

/// How many readings of `patient` of `types` in `from..=to` the caller may
/// see (RLS decides): an export's size, counted in its snapshot.
pub async fn count_readings(
    conn: &mut PgConnection,
    patient: Uuid,
    types: &[String],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<i64, ApiError> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM health_data h
          WHERE h.user_id = $1 AND h.data_type = ANY($2) AND h.recorded_at >= $3 AND h.recorded_at <= $4",
    )
    .bind(patient)
    .bind(types)
    .bind(from)
    .bind(to)
    .fetch_one(conn)
    .await?)
}

/// Sensor `id`, if the caller may see it.
pub async fn sensor(conn: &mut PgConnection, id: Uuid) -> Result<Option<SensorRow>, ApiError> {
    Ok(
        sqlx::query_as(AssertSqlSafe(format!("{SENSOR_SELECT} WHERE id = $1")))
            .bind(id)
            .fetch_optional(conn)
            .await?,
    )
}

/// The gateways of the devices the caller may see, with the devices' owners.
pub async fn visible_gateways(conn: &mut PgConnection) -> Result<Vec<(String, Uuid)>, ApiError> {
    Ok(
        sqlx::query_as("SELECT DISTINCT gateway_id, user_id FROM iot_devices")
            .fetch_all(conn)
            .await?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_select_reads_the_fields_proto_stores() {
        use hailan_proto::stored::{CIPHERTEXT, KID, NONCE};
        for select in [READING_SELECT, READING_SELECT_NO_CID] {
            for field in [KID, NONCE, CIPHERTEXT] {
                assert!(
                    select.contains(&format!("h.value->>'{field}' AS {field}")),
                    "{field}: {select}"
                );
            }
        }
    }
}
