//! The JSON endpoints, and the reads they share with FHIR.

use super::check::{self, Check, StoredReading};
use super::json::{link_view, observation_json};
use super::params::{ApiPath, ApiQuery, ObservationParams, ObservationQuery};
use super::params::{SeriesParams, SeriesQuery};
use super::session::{Kind, Session};
use super::store::decode_rows;
use super::{ApiError, ApiState};
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::middleware;
use axum::response::{Html, IntoResponse};
use axum::routing::{delete, get};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgConnection;
use sqlx::postgres::PgRow;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The clinicians' web page (plain HTML and an inline SVG chart).
pub const INDEX_HTML: &str = include_str!("../web/index.html");

pub use super::params::{EARLIEST, LATEST, bucket_ms, parse_types};

/// The API's routes, with (outermost first) the security headers, the
/// failed-log-in limiter and the request bounds (timeout, slots) around them.
pub fn router(state: ApiState) -> Router {
    let limits = state.limits.clone();
    let logins = std::sync::Arc::clone(&limits.logins);
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/api/v1/me", get(me))
        .route("/api/v1/patients", get(patients))
        .route("/api/v1/patients/{id}/observations", get(observations))
        .route("/api/v1/patients/{id}/series", get(series))
        .route("/api/v1/patients/{id}/devices", get(devices))
        .route("/api/v1/patients/{id}/readings/{reading}/proof", get(proof))
        .route(
            "/api/v1/grants",
            get(super::grants::list).post(super::grants::create),
        )
        .route("/api/v1/grants/{id}", delete(super::grants::revoke))
        .route("/fhir/Observation", get(super::fhir::observations))
        .route(
            "/fhir/Patient/{id}/$everything",
            get(super::fhir::everything::everything),
        )
        .route("/fhir/Device/{id}", get(super::fhir::everything::device))
        .route(
            "/api/v1/patients/{id}/export.csv",
            get(super::export_csv::export_csv),
        )
        .route(
            "/api/v1/patients/{id}/export.fhir.json",
            get(super::fhir::everything::export_transaction),
        )
        .with_state(state)
        .layer(middleware::from_fn_with_state(
            limits,
            super::limits::bound_request,
        ))
        .layer(middleware::from_fn_with_state(
            logins,
            super::login_limiter::guard,
        ))
        .layer(middleware::from_fn(super::headers::secure))
}

/// The page, with the policy that lets exactly its own script and style run.
async fn index() -> impl IntoResponse {
    (
        [
            (
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-store"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                super::headers::PAGE_CSP.clone(),
            ),
        ],
        Html(INDEX_HTML),
    )
}

// ------------------------------------------------------------------ reads

use crate::store::{
    self, Devices, Range, Take, complete_proofs, fill_device, read_devices, read_siblings,
    readings_query,
};

/// Rows decrypted per blocking task while the rest still stream in.
const OPEN_CHUNK: usize = 4096;

/// A chunk of readings, decrypted, with its windows' commitments recomputed.
type OpenedChunk = (
    Vec<StoredReading>,
    Vec<check::Opened>,
    check::PrecomputedWindows,
);

/// Decode a chunk of raw rows, then open it, on the blocking pool: the
/// request's task only receives rows, so PostgreSQL's stream is never held
/// up by decoding, decrypting or hashing. A chunk whose request has given
/// up (`abandoned`: over the row cap, timed out, failed) by the time it
/// starts is skipped.
fn spawn_open(
    chunk: Vec<PgRow>,
    state: &ApiState,
    devices: &Arc<Devices>,
    abandoned: &CancellationToken,
) -> tokio::task::JoinHandle<Result<OpenedChunk, sqlx::Error>> {
    let keys = Arc::clone(&state.keys);
    let cache = Arc::clone(&state.opened);
    let devices = Arc::clone(devices);
    let abandoned = abandoned.clone();
    tokio::task::spawn_blocking(move || {
        if abandoned.is_cancelled() {
            return Ok(Default::default());
        }
        let mut rows = decode_rows(&chunk)?;
        drop(chunk);
        for r in &mut rows {
            fill_device(r, &devices);
        }
        let (opened, pre) = check::open_chunk(&rows, &keys, &cache);
        Ok((rows, opened, pre))
    })
}

async fn join_open(
    task: tokio::task::JoinHandle<Result<OpenedChunk, sqlx::Error>>,
) -> Result<OpenedChunk, ApiError> {
    Ok(task
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??)
}

/// Read and check: the in-range readings with their checks. The readings
/// stream in and are decoded and decrypted chunk by chunk on the blocking
/// pool as they arrive, and each window's commitment is recomputed there too
/// (it needs no proof data); then the proofs' public inputs are read,
/// windows cut by a chunk or the range are recomputed whole, and everything
/// is compared.
pub async fn read_checked(
    state: &ApiState,
    conn: &mut PgConnection,
    patient: Uuid,
    types: &[String],
    range: &Range,
) -> Result<Vec<(StoredReading, Check)>, ApiError> {
    use futures::TryStreamExt;
    let started = std::time::Instant::now();
    let devices = Arc::new(read_devices(conn, patient).await?);
    // Chunks not yet opened are skipped once this request returns early.
    let abandoned = CancellationToken::new();
    let _abandon_on_return = abandoned.clone().drop_guard();
    let mut tasks = Vec::new();
    let mut chunk = Vec::with_capacity(OPEN_CHUNK);
    let mut streamed_rows = 0usize;
    {
        let mut stream = readings_query(range, patient, types).fetch(&mut *conn);
        while let Some(row) = stream.try_next().await? {
            streamed_rows += 1;
            range.check_cap(streamed_rows)?;
            chunk.push(row);
            if chunk.len() == OPEN_CHUNK {
                let full = std::mem::take(&mut chunk);
                tasks.push(spawn_open(full, state, &devices, &abandoned));
            }
        }
    }
    if !chunk.is_empty() {
        tasks.push(spawn_open(chunk, state, &devices, &abandoned));
    }
    let streamed = started.elapsed();
    let mut rows = Vec::with_capacity(tasks.len() * OPEN_CHUNK);
    let mut opened = Vec::with_capacity(tasks.len() * OPEN_CHUNK);
    let mut pre = check::PrecomputedWindows::default();
    for t in tasks {
        let (c, o, p) = join_open(t).await?;
        rows.extend(c);
        opened.extend(o);
        check::merge_precomputed(&mut pre, p);
    }
    let n = rows.len();
    let opened_at = started.elapsed();
    complete_proofs(conn, patient, &mut rows).await?;
    let proofs_at = started.elapsed();
    let mut groups = check::groups(&rows);
    let cut = check::incomplete_windows(&rows, &groups);
    if !cut.is_empty() {
        let more = read_siblings(conn, patient, &cut, &rows).await?;
        let (mut more, more_opened, _) =
            join_open(spawn_open(more, state, &devices, &abandoned)).await?;
        complete_proofs(conn, patient, &mut more).await?;
        rows.extend(more);
        opened.extend(more_opened);
        groups = check::groups(&rows);
    }
    let read = started.elapsed();
    let rows = Arc::new(rows);
    let checks =
        check::check_parallel(Arc::clone(&rows), Arc::new(opened), Arc::new(pre), groups).await;
    tracing::debug!(
        rows = rows.len(),
        streamed_ms = streamed.as_secs_f64() * 1e3,
        opened_ms = opened_at.as_secs_f64() * 1e3,
        proofs_ms = proofs_at.as_secs_f64() * 1e3,
        read_and_decrypt_ms = read.as_secs_f64() * 1e3,
        check_ms = (started.elapsed() - read).as_secs_f64() * 1e3,
        "readings read and opened"
    );
    let rows = Arc::try_unwrap(rows).unwrap_or_else(|a| (*a).clone());
    Ok(rows.into_iter().zip(checks).take(n).collect())
}

// ------------------------------------------------------------------ handlers

async fn me(State(state): State<ApiState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let mut s = Session::begin(&state, &headers).await?;
    let user = s.user_id;
    let (did, name) = store::identity(s.reader(), user).await?;
    let kind = s.kind;
    s.finish("me", "/api/v1/me", None, 1, json!({})).await?;
    Ok(Json(
        json!({ "id": user, "did": did, "display_name": name, "kind": kind }),
    ))
}

async fn patients(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let mut s = Session::begin(&state, &headers).await?;
    // care_grants' own policy admits only the caller's grants; the filter
    // below picks the active ones where the caller is the clinician.
    let rows = match s.kind {
        Kind::Clinician => store::clinicians_patients(s.reader()).await?,
        Kind::Patient => store::the_patient(s.reader()).await?,
    };
    let n = rows.len();
    s.finish("list_patients", "/api/v1/patients", None, n, json!({}))
        .await?;
    let list: Vec<Value> = rows
        .into_iter()
        .map(|(id, did, name, types, _, expires)| {
            json!({ "id": id, "did": did, "display_name": name, "data_types": types, "grant_expires_at": expires })
        })
        .collect();
    Ok(Json(json!({ "patients": list })))
}

async fn observations(
    State(state): State<ApiState>,
    headers: HeaderMap,
    ApiPath(patient): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<ObservationQuery>,
) -> Result<Json<Value>, ApiError> {
    let ObservationParams {
        types,
        from,
        to,
        limit,
        after,
        newest_first,
    } = ObservationParams::parse(&q, state.max_page)?;
    let mut s = Session::begin(&state, &headers).await?;
    let range = Range {
        from,
        to,
        after,
        take: if newest_first {
            Take::NewestFirst(limit)
        } else {
            Take::Page(limit)
        },
    };
    let checked = read_checked(&state, s.reader(), patient, &types, &range).await?;
    let next = (checked.len() as i64 == limit)
        .then(|| checked.last())
        .flatten()
        .map(|(r, _)| format!("{}_{}", r.recorded_at.timestamp_micros(), r.id));
    let unverifiable = checked
        .iter()
        .filter(|(_, c)| matches!(c, Check::Unverifiable(_)))
        .count();
    s.finish(
        "read_observations",
        &format!("/api/v1/patients/{patient}/observations"),
        Some(patient),
        checked.len(),
        json!({ "types": types, "from": from, "to": to, "unverifiable": unverifiable }),
    )
    .await?;
    let list: Vec<Value> = checked
        .iter()
        .map(|(r, c)| observation_json(r, c))
        .collect();
    let order = if newest_first { "desc" } else { "asc" };
    Ok(Json(
        json!({ "patient": patient, "order": order, "observations": list, "next_cursor": next }),
    ))
}

/// Per-bucket aggregate of one slot set.
#[derive(Default)]
struct Agg {
    n: u32,
    /// Per slot: readings that carry it (an optional slot — its bound admits
    /// 0 — holding 0 was not sent by the device and is not averaged).
    counts: Vec<u32>,
    min: Vec<u32>,
    max: Vec<u32>,
    sum: Vec<u64>,
}

async fn series(
    State(state): State<ApiState>,
    headers: HeaderMap,
    ApiPath(patient): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<SeriesQuery>,
) -> Result<Json<Value>, ApiError> {
    let SeriesParams {
        data_type,
        from,
        to,
        bucket,
        step,
    } = SeriesParams::parse(&q)?;
    let started = std::time::Instant::now();
    let mut s = Session::begin(&state, &headers).await?;
    let session_ms = started.elapsed().as_secs_f64() * 1e3;
    // Every reading in range is decrypted: at most api.max_rows_per_request.
    let range = Range {
        from,
        to,
        after: None,
        take: Take::All {
            cap: state.limits.max_rows,
        },
    };
    let types = vec![data_type.as_str().to_owned()];
    let checked = read_checked(&state, s.reader(), patient, &types, &range).await?;
    let read_ms = started.elapsed().as_secs_f64() * 1e3;
    let spec = data_type.spec();
    let slots = spec.slots.len();
    let mut buckets: BTreeMap<i64, Agg> = BTreeMap::new();
    let mut bad: BTreeMap<i64, (u32, BTreeMap<String, u32>)> = BTreeMap::new();
    for (r, c) in &checked {
        let b = r.recorded_at.timestamp_millis().div_euclid(step) * step;
        match c {
            Check::Verified(v) if v.len() == slots => {
                let a = buckets.entry(b).or_insert_with(|| Agg {
                    n: 0,
                    counts: vec![0; slots],
                    min: vec![u32::MAX; slots],
                    max: vec![0; slots],
                    sum: vec![0; slots],
                });
                a.n += 1;
                for (k, x) in v.iter().enumerate() {
                    if *x == 0 && spec.slots[k].lo == 0 {
                        continue;
                    }
                    a.counts[k] += 1;
                    a.min[k] = a.min[k].min(*x);
                    a.max[k] = a.max[k].max(*x);
                    a.sum[k] += u64::from(*x);
                }
            }
            Check::Verified(_) => {
                let e = bad.entry(b).or_default();
                e.0 += 1;
                *e.1.entry("wrong number of slots".into()).or_default() += 1;
            }
            Check::Unverifiable(why) => {
                let e = bad.entry(b).or_default();
                e.0 += 1;
                *e.1.entry(why.clone()).or_default() += 1;
            }
        }
    }
    let unverifiable: usize = bad.values().map(|(n, _)| *n as usize).sum();
    let aggregated_ms = started.elapsed().as_secs_f64() * 1e3;
    s.finish(
        "read_series",
        &format!("/api/v1/patients/{patient}/series"),
        Some(patient),
        checked.len(),
        json!({ "type": data_type.as_str(), "from": from, "to": to, "bucket": bucket,
                "unverifiable": unverifiable }),
    )
    .await?;
    tracing::debug!(
        session_ms,
        read_ms,
        aggregated_ms,
        audited_ms = started.elapsed().as_secs_f64() * 1e3,
        "series read, checked, aggregated and audited"
    );
    let t = |b: i64| DateTime::from_timestamp_millis(b).map(|d| d.to_rfc3339());
    let points: Vec<Value> = buckets
        .into_iter()
        .map(|(b, a)| {
            // null: no reading of the bucket carries the slot.
            let dec = |k: usize, x: f64| {
                (a.counts[k] > 0).then(|| x / f64::from(spec.slots[k].scale))
            };
            json!({
                "t": t(b),
                "n": a.n,
                "min": (0..slots).map(|k| dec(k, f64::from(a.min[k]))).collect::<Vec<_>>(),
                "avg": (0..slots).map(|k| dec(k, a.sum[k] as f64 / f64::from(a.counts[k].max(1)))).collect::<Vec<_>>(),
                "max": (0..slots).map(|k| dec(k, f64::from(a.max[k]))).collect::<Vec<_>>(),
            })
        })
        .collect();
    let bad: Vec<Value> = bad
        .into_iter()
        .map(|(b, (n, reasons))| json!({ "t": t(b), "n": n, "reasons": reasons }))
        .collect();
    let readings = checked.len();
    // Freeing a day's 86,400 readings takes 30–40 ms: not on the answer's path.
    tokio::task::spawn_blocking(move || drop(checked));
    Ok(Json(json!({
        "patient": patient,
        "data_type": data_type.as_str(),
        "bucket": bucket,
        "bucket_ms": step,
        "from": from,
        "to": to,
        "slots": spec.slots.iter().map(|s| json!({ "name": s.name, "display": s.display, "unit": s.unit })).collect::<Vec<_>>(),
        "readings": readings,
        "points": points,
        "unverifiable": bad,
    })))
}

async fn devices(
    State(state): State<ApiState>,
    headers: HeaderMap,
    ApiPath(patient): ApiPath<Uuid>,
) -> Result<Json<Value>, ApiError> {
    let mut s = Session::begin(&state, &headers).await?;
    let devs = store::devices(s.reader(), patient).await?;
    let ids: Vec<Uuid> = devs.iter().map(|d| d.id).collect();
    let gaps = store::gaps(s.reader(), &ids, patient).await?;
    let n = devs.len();
    s.finish(
        "read_devices",
        &format!("/api/v1/patients/{patient}/devices"),
        Some(patient),
        n,
        json!({ "gaps": gaps.len() }),
    )
    .await?;
    let now = Utc::now();
    let list: Vec<Value> = devs
        .iter()
        .map(|d| {
            let link = link_view(
                &d.connection_state,
                d.state_observed_at,
                d.gateway_offline_since,
                state.stale_after,
                now,
            );
            let g: Vec<Value> = gaps
                .iter()
                .filter(|g| g.0 == d.id)
                .map(|g| json!({ "first_missing_seq": g.1, "last_missing_seq": g.2, "missing": g.2 - g.1 + 1,
                                  "after": g.3, "before": g.4 }))
                .collect();
            json!({
                "id": d.id, "device_id": d.device_id, "name": d.device_name, "device_type": d.device_type,
                "manufacturer": d.manufacturer, "model": d.model, "firmware_version": d.firmware_version,
                "gateway_id": d.gateway_id, "battery_level": d.battery_level, "last_sync": d.last_sync,
                "sync_status": d.sync_status, "connection_state": link.connection_state,
                "reported_connection_state": d.connection_state, "state_stale": link.stale,
                "gateway_offline_since": d.gateway_offline_since, "needs_repair": d.needs_repair,
                "rssi": d.rssi, "state_observed_at": d.state_observed_at, "last_seq": d.last_seq,
                "missing_seqs": d.missing_seqs, "data_types": d.data_types, "active": d.is_active,
                "bluetooth_address": d.bluetooth_address, "registered_at": d.created_at,
                "gaps": g,
            })
        })
        .collect();
    Ok(Json(json!({ "patient": patient, "devices": list })))
}

async fn proof(
    State(state): State<ApiState>,
    headers: HeaderMap,
    ApiPath((patient, reading)): ApiPath<(Uuid, Uuid)>,
) -> Result<Json<Value>, ApiError> {
    let mut s = Session::begin(&state, &headers).await?;
    // Every data type named: the primary key is (user_id, data_type, id), so
    // each partition is probed at one point instead of scanning the
    // patient's part of its index. (Rows of other types, in the default
    // partition, never have a proof: ingest quarantines unknown types, so
    // they were not found here before either.)
    let types = parse_types(None)?;
    let row = store::proof_of_reading(s.reader(), patient, reading, &types).await?;
    let Some((data_type, seq, statement, key_id, proof, inputs, first_seq, count, hash, cid)) = row
    else {
        s.finish(
            "read_proof",
            &format!("/api/v1/patients/{patient}/readings/{reading}/proof"),
            Some(patient),
            0,
            json!({ "reading": reading }),
        )
        .await?;
        return Err(ApiError::NotFound);
    };
    let public_inputs: Vec<String> = serde_json::from_value(inputs).unwrap_or_default();
    let bundle = hailan_proto::zk::ProofBundle {
        statement,
        key_id: key_id.clone(),
        proof: hex::encode(&proof),
        public_inputs,
    };
    // With the verifying key at hand the export re-verifies the proof
    // natively; that check is recorded like any auditor's.
    let (snarkjs, reverified) = match state.vks.get(&key_id) {
        Some(vk) => match hailan_proto::zk::snarkjs::SnarkjsExport::new(vk, &bundle) {
            Ok(e) => (
                json!({ "vk": e.vk, "proof": e.proof, "public": e.public }),
                Some((true, None)),
            ),
            Err(err) => (Value::Null, Some((false, Some(err.to_string())))),
        },
        None => (
            bundle
                .proof()
                .ok()
                .map(|p| json!({ "proof": hailan_proto::zk::snarkjs::proof_json(&p), "public": bundle.public_inputs }))
                .unwrap_or(Value::Null),
            None,
        ),
    };
    if let Some((ok, reason)) = &reverified {
        store::record_reverification(
            s.writer(),
            patient,
            reading,
            &hash,
            &key_id,
            *ok,
            reason.as_deref(),
        )
        .await?;
    }
    s.finish(
        "read_proof",
        &format!("/api/v1/patients/{patient}/readings/{reading}/proof"),
        Some(patient),
        1,
        json!({ "reading": reading, "reverified": reverified.as_ref().map(|r| r.0) }),
    )
    .await?;
    Ok(Json(json!({
        "reading": reading,
        "data_type": data_type,
        "seq": seq,
        "proof_hash": hash,
        "ipfs_data_cid": cid,
        "covers": { "first_seq": first_seq, "readings": count },
        "bundle": bundle,
        "reverified": reverified.map(|r| json!({ "valid": r.0, "reason": r.1 })),
        "snarkjs": snarkjs,
    })))
}
