//! The clinician API end to end: readings are proven by test devices, go
//! through Mosquitto and the real `hailan-ingest run` into PostgreSQL, and
//! are read back through `hailan-api` (connected as a login that is
//! only a member of `hailan_api`). Tamper tests change stored rows afterwards.

use anyhow::{Context, Result};
use hailan_proto::envelope::{self, Envelope};
use hailan_proto::{DataType, topic};
use hailan_tests::api::{
    ApiProcess, User, ensure_api_login, fhir_profile_errors, http_get_answer, http_get_auth, user,
    validate_fhir, write_key_ring,
};
use hailan_tests::{
    DevZk, IngestProcess, Publisher, T0_MS, TestDb, TestDevice, count_readings, eventually,
    plausible_slots,
};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// The ingest binary, built with the workspace (`cargo xtask test` builds
/// every program; `cargo nextest run -p hailan-api` alone does not rebuild it).
fn ingest_bin() -> Result<std::path::PathBuf> {
    hailan_tests::gateway::workspace_binary("hailan-ingest")
}
const WAIT: Duration = Duration::from_secs(60);

fn enc(e: &Envelope) -> Vec<u8> {
    envelope::encode(e)
}

struct Rig {
    db: TestDb,
    zk: DevZk,
    _ingest: IngestProcess,
    publisher: Publisher,
    api: ApiProcess,
    patient: User,
    gw: &'static str,
    /// Last: the processes print their logs from here when dropped.
    logs: tempfile::TempDir,
}

/// A time as the API's query parameters take it.
fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Patient `p`'s heart-rate series in `bucket`s over `from..to`, as `token` sees it.
async fn hr_series(
    r: &Rig,
    token: &str,
    p: uuid::Uuid,
    bucket: &str,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
) -> Result<serde_json::Value> {
    let path = format!(
        "/api/v1/patients/{p}/series?type=HEART_RATE&bucket={bucket}&from={}&to={}",
        rfc3339(from),
        rfc3339(to)
    );
    r.api.json(token, &path).await
}

async fn rig(gw: &'static str) -> Result<Rig> {
    let db = TestDb::create().await?;
    ensure_api_login(&db.pool).await?;
    let zk = DevZk::new()?;
    let logs = tempfile::tempdir()?;
    let patient = user(&db.pool, "PATIENT", "Pat Example").await?;
    hailan_ingest::admin::enrol_gateway(&db.pool, gw, &patient.did, None).await?;
    let ingest = IngestProcess::start(&ingest_bin()?, &db, &zk, &[gw], logs.path())?;
    let publisher = Publisher::connect(gw).await?;
    let ring = write_key_ring(logs.path())?;
    let api = ApiProcess::start(&db, None, &ring, zk.dir.path(), logs.path()).await?;
    Ok(Rig {
        db,
        zk,
        logs,
        _ingest: ingest,
        publisher,
        api,
        patient,
        gw,
    })
}

async fn wait_rows(pool: &sqlx::PgPool, n: i64) -> Result<()> {
    let pool = pool.clone();
    eventually(WAIT, &format!("{n} rows"), move || {
        let pool = pool.clone();
        async move { Ok((count_readings(&pool, "").await? >= n).then_some(())) }
    })
    .await
}

/// What `seed` publishes.
const HR1: [u32; 16] = [
    60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75,
];
const HR2: [u32; 8] = [80, 82, 84, 86, 88, 90, 92, 94];
/// Rows stored by `seed`: 16 + 8 heart rate (two windows), one blood
/// pressure, one unverified heart rate.
const SEEDED: i64 = 26;

/// Heart rate: a window (seqs 1–16), 100 seqs never sent (a gap), a window
/// of 8 (seqs 117–124, two minutes later), an unproven reading (seq 125);
/// blood pressure: one proven reading; battery 55 %.
async fn seed(r: &mut Rig) -> Result<(TestDevice, TestDevice)> {
    let mut hr = TestDevice::new(r.gw, "hr-1", DataType::HeartRate, 1);
    let mut bp = TestDevice::new(r.gw, "bp-1", DataType::BloodPressure, 2);
    let mut payloads = vec![enc(&hr.registration()), enc(&bp.registration())];
    let topic = topic::up(r.gw);
    r.publisher
        .publish_all(&topic, std::mem::take(&mut payloads))
        .await?;
    let pool = r.db.pool.clone();
    eventually(WAIT, "registrations", || {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM iot_devices")
                .fetch_one(&pool)
                .await?;
            Ok((n == 2).then_some(()))
        }
    })
    .await?;
    payloads.push(enc(&hr.proven_window(&r.zk.window, &HR1)?));
    hr.next_seq += 100;
    payloads.push(enc(&hr.proven_window(&r.zk.window, &HR2)?));
    payloads.push(enc(&hr.unproven_reading(&[99])));
    payloads.push(enc(&hr.state(55, T0_MS + 200_000)));
    payloads.push(enc(&bp.proven_reading(
        &r.zk.reading,
        &plausible_slots(DataType::BloodPressure),
    )?));
    r.publisher.publish_all(&topic, payloads).await?;
    wait_rows(&r.db.pool, SEEDED).await?;
    Ok((hr, bp))
}

fn obs_path(patient: uuid::Uuid, extra: &str) -> String {
    format!("/api/v1/patients/{patient}/observations?limit=1000{extra}")
}

fn observations(v: &Value) -> Vec<Value> {
    v["observations"].as_array().cloned().unwrap_or_default()
}

fn count_status(list: &[Value], status: &str) -> usize {
    list.iter().filter(|o| o["status"] == status).count()
}

async fn grant(
    pool: &sqlx::PgPool,
    patient: &User,
    c: &User,
    types: Option<Vec<&str>>,
) -> Result<()> {
    hailan_ingest::admin::grant(
        pool,
        &patient.did,
        &c.did,
        types.map(|t| t.into_iter().map(String::from).collect()),
        None,
    )
    .await?;
    Ok(())
}

/// health_data rows a clinician can read with plain SQL under their role.
async fn rows_as_clinician(pool: &sqlx::PgPool, c: &User, table: &str) -> Result<i64> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL ROLE hailan_clinician")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT set_config('hailan.user_id', $1, true)")
        .bind(c.id.to_string())
        .execute(&mut *tx)
        .await?;
    let n = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(&mut *tx)
        .await?;
    tx.rollback().await?;
    Ok(n)
}

async fn audit_count(pool: &sqlx::PgPool, actor: &User) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM audit_logs WHERE actor_id = $1")
            .bind(actor.id)
            .fetch_one(pool)
            .await?,
    )
}

#[tokio::test]
async fn access_follows_grants_and_every_read_is_audited() -> Result<()> {
    let mut r = rig("gw-api-1").await?;
    seed(&mut r).await?;
    let pool = r.db.pool.clone();
    let p = r.patient.id;
    let full = user(&pool, "CLINICIAN", "Dr Full").await?;
    let none = user(&pool, "CLINICIAN", "Dr None").await?;
    let bp_only = user(&pool, "CLINICIAN", "Dr Pressure").await?;
    grant(&pool, &r.patient, &full, None).await?;
    grant(&pool, &r.patient, &bp_only, Some(vec!["BLOOD_PRESSURE"])).await?;
    let mut full_reads = 0;

    // A full grant: every verified reading, as numbers; never the unverified one.
    let pats = r.api.json(&full.token, "/api/v1/patients").await?;
    full_reads += 1;
    assert_eq!(pats["patients"][0]["id"], p.to_string(), "{pats}");
    let v = r.api.json(&full.token, &obs_path(p, "")).await?;
    full_reads += 1;
    let list = observations(&v);
    assert_eq!(list.len(), 25, "{v}");
    assert_eq!(count_status(&list, "verified"), 25, "{v}");
    assert!(list.iter().all(|o| o["seq"] != 125), "unverified row shown");
    let hr: Vec<f64> = list
        .iter()
        .filter(|o| o["data_type"] == "HEART_RATE")
        .filter_map(|o| o["values"]["heart_rate"]["value"].as_f64())
        .collect();
    let expect: Vec<f64> = HR1
        .iter()
        .chain(HR2.iter())
        .map(|x| f64::from(*x))
        .collect();
    assert_eq!(hr, expect);
    let bp = list
        .iter()
        .find(|o| o["data_type"] == "BLOOD_PRESSURE")
        .context("bp row")?;
    let slots = plausible_slots(DataType::BloodPressure);
    assert_eq!(
        bp["values"]["systolic"]["value"].as_f64(),
        Some(f64::from(slots[0]) / 10.0)
    );
    // Cursor pagination walks the same rows, oldest first by default and
    // newest first with `order=desc` (the page's "latest value").
    let mut walked = std::collections::HashMap::new();
    for order in ["asc", "desc"] {
        let mut ids = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let extra = cursor
                .as_ref()
                .map(|c| format!("&cursor={c}"))
                .unwrap_or_default();
            let page = r
                .api
                .json(
                    &full.token,
                    &format!("/api/v1/patients/{p}/observations?limit=7&order={order}{extra}"),
                )
                .await?;
            full_reads += 1;
            assert_eq!(page["order"], order, "{page}");
            ids.extend(observations(&page).iter().map(|o| o["id"].to_string()));
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        walked.insert(order, ids);
    }
    assert_eq!(walked["asc"].len(), 25);
    let mut newest_first = walked["asc"].clone();
    newest_first.reverse();
    assert_eq!(walked["desc"], newest_first);

    // No grant: no patients, no rows — through the API and through SQL.
    let v = r.api.json(&none.token, "/api/v1/patients").await?;
    assert_eq!(v["patients"], serde_json::json!([]));
    let v = r.api.json(&none.token, &obs_path(p, "")).await?;
    assert!(observations(&v).is_empty(), "{v}");
    let v = r
        .api
        .json(&none.token, &format!("/api/v1/patients/{p}/devices"))
        .await?;
    assert_eq!(v["devices"], serde_json::json!([]));
    assert_eq!(rows_as_clinician(&pool, &none, "health_data").await?, 0);
    assert_eq!(rows_as_clinician(&pool, &full, "health_data").await?, 25);
    let direct = rows_as_clinician(&pool, &none, "health_data_heart_rate").await;
    assert!(
        direct.is_err_and(|e| e.to_string().contains("permission denied")),
        "a partition must not be readable directly"
    );

    // A grant for some data types shows only those.
    let v = r.api.json(&bp_only.token, &obs_path(p, "")).await?;
    let list = observations(&v);
    assert_eq!(list.len(), 1, "{v}");
    assert_eq!(list[0]["data_type"], "BLOOD_PRESSURE");
    let v = r
        .api
        .json(&bp_only.token, &obs_path(p, "&type=HEART_RATE"))
        .await?;
    assert!(observations(&v).is_empty());

    // The patient sees their own data, the unverified reading as unverifiable.
    let v = r.api.json(&r.patient.token, &obs_path(p, "")).await?;
    let list = observations(&v);
    assert_eq!(list.len(), 26, "{v}");
    let unverified = list.iter().find(|o| o["seq"] == 125).context("seq 125")?;
    assert_eq!(unverified["status"], "unverifiable");
    assert!(unverified["values"].is_null());
    assert!(
        unverified["reason"]
            .as_str()
            .is_some_and(|s| s.contains("not verified")),
        "{unverified}"
    );
    // …and not another patient's.
    let other = user(&pool, "PATIENT", "Someone Else").await?;
    let v = r.api.json(&other.token, &obs_path(p, "")).await?;
    assert!(observations(&v).is_empty());

    // An expired grant stops access at once; so does a revoked one.
    sqlx::query(
        "UPDATE care_grants SET expires_at = now() - interval '1 second' WHERE clinician_id = $1",
    )
    .bind(full.id)
    .execute(&pool)
    .await?;
    let v = r.api.json(&full.token, &obs_path(p, "")).await?;
    full_reads += 1;
    assert!(observations(&v).is_empty(), "expired grant: {v}");
    let v = r.api.json(&full.token, "/api/v1/patients").await?;
    full_reads += 1;
    assert_eq!(v["patients"], serde_json::json!([]));
    sqlx::query("UPDATE care_grants SET expires_at = NULL WHERE clinician_id = $1")
        .bind(full.id)
        .execute(&pool)
        .await?;
    assert_eq!(
        observations(&r.api.json(&full.token, &obs_path(p, "")).await?).len(),
        25
    );
    full_reads += 1;
    assert_eq!(
        hailan_ingest::admin::revoke(&pool, &r.patient.did, &full.did).await?,
        1
    );
    let v = r.api.json(&full.token, &obs_path(p, "")).await?;
    full_reads += 1;
    assert!(observations(&v).is_empty(), "revoked grant: {v}");

    // Every read is audited, in its transaction, with the rows it returned.
    assert_eq!(audit_count(&pool, &full).await?, full_reads);
    let (action, patient, rows): (String, Option<uuid::Uuid>, i32) = sqlx::query_as(
        "SELECT action, patient_id, row_count FROM audit_logs
          WHERE actor_id = $1 AND action = 'read_observations' ORDER BY at, row_count DESC LIMIT 1",
    )
    .bind(full.id)
    .fetch_one(&pool)
    .await?;
    assert_eq!(
        (action.as_str(), patient, rows),
        ("read_observations", Some(p), 25)
    );
    assert_eq!(audit_count(&pool, &none).await?, 3);

    // Tokens: none, unknown, revoked → 401, and nothing audited.
    let (code, _) = http_get_auth(r.api.port, "/api/v1/patients", None).await?;
    assert_eq!(code, 401);
    let (code, _) = r.api.get("hl_not-a-token", "/api/v1/patients").await?;
    assert_eq!(code, 401);
    let revoked = std::process::Command::new(ingest_bin()?)
        .args(["admin", "revoke-tokens", &none.did])
        .env("DATABASE_URL", &r.db.url)
        .env_remove("HAILAN_INGEST_CONFIG")
        .output()?;
    assert!(
        String::from_utf8_lossy(&revoked.stdout).contains("1 token(s) revoked"),
        "{revoked:?}"
    );
    let (code, _) = r.api.get(&none.token, "/api/v1/patients").await?;
    assert_eq!(code, 401);
    assert_eq!(audit_count(&pool, &none).await?, 3);
    drop(r.api);
    r.db.drop().await
}

/// Re-seal `slots` for a stored reading with the owner's key: decrypts, but
/// is not the proven value.
async fn reseal(pool: &sqlx::PgPool, dev: &TestDevice, seq: u64, slots: Vec<u32>) -> Result<()> {
    let table = format!(
        "health_data_{}",
        dev.data_type.as_str().to_ascii_lowercase()
    );
    let (recorded_at, value): (chrono::DateTime<chrono::Utc>, Value) =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT recorded_at, value FROM {table} WHERE seq = $1"
        )))
        .bind(seq as i64)
        .fetch_one(pool)
        .await?;
    let header = hailan_proto::ReadingHeader {
        gateway_id: &dev.gateway_id,
        device_id: &dev.device_id,
        data_type: dev.data_type.as_str(),
        seq,
        recorded_at_ms: recorded_at.timestamp_millis(),
    };
    let sealed = hailan_proto::envelope::Sealed {
        kid: value["kid"].as_str().context("kid")?.to_owned(),
        nonce: <[u8; 12]>::try_from(hex::decode(value["nonce"].as_str().context("nonce")?)?)
            .map_err(|_| anyhow::anyhow!("nonce"))?,
        ciphertext: hex::decode(value["ciphertext"].as_str().context("ct")?)?,
    };
    let mut opened = hailan_proto::seal::open(&dev.key, &header, &sealed)?;
    opened.slots = slots;
    let mut rng = rand::thread_rng();
    let forged = hailan_proto::seal::seal(&dev.key, &header, &opened, &mut rng);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {table} SET value = $2 WHERE seq = $1"
    )))
    .bind(seq as i64)
    .bind(hailan_proto::stored::encode(&forged))
    .execute(pool)
    .await?;
    Ok(())
}

/// Flip the first hex digit of a stored heart-rate ciphertext (the reading `seq`).
async fn flip_ciphertext(pool: &sqlx::PgPool, seq: i64) -> Result<()> {
    sqlx::query(
        "UPDATE health_data_heart_rate
            SET value = jsonb_set(value, '{ciphertext}', to_jsonb(overlay(value->>'ciphertext'
                placing CASE WHEN left(value->>'ciphertext', 1) = '0' THEN '1' ELSE '0' END from 1 for 1)))
          WHERE seq = $1",
    )
    .bind(seq)
    .execute(pool)
    .await?;
    Ok(())
}

fn by_seq(list: &[Value], data_type: &str, seq: i64) -> Result<Value> {
    list.iter()
        .find(|o| o["data_type"] == data_type && o["seq"] == seq)
        .cloned()
        .with_context(|| format!("{data_type} seq {seq}"))
}

#[tokio::test]
async fn tampered_values_are_unverifiable_never_numbers() -> Result<()> {
    let mut r = rig("gw-api-2").await?;
    let (hr, bp) = seed(&mut r).await?;
    let pool = r.db.pool.clone();
    let p = r.patient.id;
    let doc = user(&pool, "CLINICIAN", "Dr Who").await?;
    grant(&pool, &r.patient, &doc, None).await?;

    // 1. A blood pressure value re-sealed with the owner's key: it decrypts,
    //    but its commitment does not open.
    reseal(&pool, &bp, 1, vec![1200, 800, 933, 70]).await?;
    // 2. One heart-rate reading's stored commitment changed (window 1, seq 3).
    sqlx::query("UPDATE health_data_heart_rate SET reading_commitment = $1 WHERE seq = 3")
        .bind(vec![9u8; 32])
        .execute(&pool)
        .await?;
    // 3. A ciphertext byte flipped in window 2 (seq 120).
    flip_ciphertext(&pool, 120).await?;
    // 4. A heart-rate value in window 1 re-sealed: the whole window's
    //    commitment no longer opens.
    let v = r.api.json(&doc.token, &obs_path(p, "")).await?;
    let list = observations(&v);
    let bp1 = by_seq(&list, "BLOOD_PRESSURE", 1)?;
    assert_eq!(bp1["status"], "unverifiable", "{bp1}");
    assert!(bp1["values"].is_null());
    assert!(
        bp1["reason"]
            .as_str()
            .is_some_and(|s| s.contains("commitment does not open")),
        "{bp1}"
    );
    let hr3 = by_seq(&list, "HEART_RATE", 3)?;
    assert_eq!(hr3["status"], "unverifiable", "{hr3}");
    assert!(hr3["values"].is_null());
    let hr4 = by_seq(&list, "HEART_RATE", 4)?;
    assert_eq!(
        hr4["status"], "verified",
        "the rest of window 1 still opens: {hr4}"
    );
    let hr120 = by_seq(&list, "HEART_RATE", 120)?;
    assert!(
        hr120["reason"]
            .as_str()
            .is_some_and(|s| s.contains("does not decrypt")),
        "{hr120}"
    );
    for seq in 117..=124 {
        let o = by_seq(&list, "HEART_RATE", seq)?;
        assert_eq!(o["status"], "unverifiable", "window 2 cannot open: {o}");
        assert!(o["values"].is_null());
    }
    assert_eq!(count_status(&list, "verified"), 15, "{v}");

    reseal(&pool, &hr, 10, vec![150]).await?;
    let v = r
        .api
        .json(&doc.token, &obs_path(p, "&type=HEART_RATE"))
        .await?;
    let list = observations(&v);
    assert_eq!(count_status(&list, "verified"), 0, "{v}");
    let hr10 = by_seq(&list, "HEART_RATE", 10)?;
    assert!(
        hr10["reason"]
            .as_str()
            .is_some_and(|s| s.contains("commitment does not open")),
        "{hr10}"
    );

    // The chart series counts them as unverifiable, never in min/avg/max.
    let from = chrono::DateTime::from_timestamp_millis(T0_MS).context("t0")?;
    let to = from + chrono::Duration::minutes(10);
    let s = hr_series(&r, &doc.token, p, "minute", from, to).await?;
    assert_eq!(s["points"], serde_json::json!([]), "{s}");
    let bad: u64 = s["unverifiable"]
        .as_array()
        .context("unverifiable")?
        .iter()
        .filter_map(|b| b["n"].as_u64())
        .sum();
    assert_eq!(bad, 24, "{s}");

    // FHIR: no value, a data-absent reason, the state in the extension.
    let (code, body) = r
        .api
        .get(
            &doc.token,
            &format!("/fhir/Observation?patient=Patient/{p}&code=85354-9"),
        )
        .await?;
    assert_eq!(code, 200, "{body}");
    let b: Value = serde_json::from_str(&body)?;
    let o = &b["entry"][0]["resource"];
    assert!(
        o.get("component").is_none() && o.get("valueQuantity").is_none(),
        "{o}"
    );
    assert_eq!(o["dataAbsentReason"]["coding"][0]["code"], "error");
    assert!(body.contains("\"valueCode\":\"unverifiable\""));
    drop(r.api);
    r.db.drop().await
}

/// A window opened once is kept opened (the API's opened-window cache, on by
/// default) and served again without opening it — but a change to any of its
/// stored bytes is seen at once: tampering after a clinician has looked is
/// caught like tampering before.
#[tokio::test]
async fn an_opened_window_is_opened_again_when_its_stored_bytes_change() -> Result<()> {
    let mut r = rig("gw-api-7").await?;
    let (hr, _bp) = seed(&mut r).await?;
    let pool = r.db.pool.clone();
    let p = r.patient.id;
    let doc = user(&pool, "CLINICIAN", "Dr Cache").await?;
    grant(&pool, &r.patient, &doc, None).await?;
    let path = obs_path(p, "&type=HEART_RATE");

    // Opened once, then served again: the same verified values.
    let first = observations(&r.api.json(&doc.token, &path).await?);
    assert_eq!(count_status(&first, "verified"), 24, "{first:?}");
    let again = observations(&r.api.json(&doc.token, &path).await?);
    assert_eq!(
        again, first,
        "a window served again differs from its first opening"
    );

    // A ciphertext byte flipped in window 1 (seq 5): the window no longer opens.
    flip_ciphertext(&pool, 5).await?;
    // A value of window 2 (seq 120) re-sealed with the owner's key: it
    // decrypts, to another number, and the commitment does not open.
    reseal(&pool, &hr, 120, vec![180]).await?;
    let list = observations(&r.api.json(&doc.token, &path).await?);
    for seq in (1..=16).chain(117..=124) {
        let o = by_seq(&list, "HEART_RATE", seq)?;
        assert_eq!(
            o["status"], "unverifiable",
            "seq {seq} served from before the change: {o}"
        );
        assert!(o["values"].is_null(), "{o}");
    }
    let hr5 = by_seq(&list, "HEART_RATE", 5)?;
    assert!(
        hr5["reason"]
            .as_str()
            .is_some_and(|s| s.contains("does not decrypt")),
        "{hr5}"
    );
    let hr120 = by_seq(&list, "HEART_RATE", 120)?;
    assert!(
        hr120["reason"]
            .as_str()
            .is_some_and(|s| s.contains("commitment does not open")),
        "{hr120}"
    );
    drop(r.api);
    r.db.drop().await
}

/// `seed` and one SpO2 reading (two codes, pulse as a component): 26
/// proven readings of three devices under four proofs; a clinician granted.
async fn fhir_rig(gw: &'static str) -> Result<(Rig, User)> {
    let mut r = rig(gw).await?;
    seed(&mut r).await?;
    // One SpO2 reading as well (two codes, pulse as a component).
    let mut ox = TestDevice::new(r.gw, "ox-1", DataType::Spo2, 3);
    let topic = topic::up(r.gw);
    r.publisher
        .publish_all(&topic, vec![enc(&ox.registration())])
        .await?;
    let pool = r.db.pool.clone();
    eventually(WAIT, "spo2 registration", || {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM iot_devices")
                .fetch_one(&pool)
                .await?;
            Ok((n == 3).then_some(()))
        }
    })
    .await?;
    // The oximeter flags the measurement (questionable, low perfusion).
    let status = [
        (
            "measurement_status".to_owned(),
            ciborium::Value::from(1u64 << 14),
        ),
        (
            "device_and_sensor_status".to_owned(),
            ciborium::Value::from(1u64 << 5),
        ),
    ];
    let ox_reading = ox.proven_reading_with_extras(
        &r.zk.reading,
        &plausible_slots(DataType::Spo2),
        status.into_iter().collect(),
    )?;
    r.publisher
        .publish_all(&topic, vec![enc(&ox_reading)])
        .await?;
    wait_rows(&pool, SEEDED + 1).await?;
    let doc = user(&pool, "CLINICIAN", "Dr Fhir").await?;
    grant(&pool, &r.patient, &doc, None).await?;
    Ok((r, doc))
}

#[tokio::test]
async fn fhir_searchset_validates_and_carries_verification() -> Result<()> {
    let (r, doc) = fhir_rig("gw-api-3").await?;
    let pool = r.db.pool.clone();
    let p = r.patient.id;

    let from = chrono::DateTime::from_timestamp_millis(T0_MS).context("t0")?;
    let q = format!(
        "/fhir/Observation?patient={p}&date=ge{}&date=le{}",
        from.format("%Y-%m-%d"),
        (from + chrono::Duration::days(1)).format("%Y-%m-%dT%H:%M:%SZ")
    );
    let (code, body) = r.api.get(&doc.token, &q).await?;
    assert_eq!(code, 200, "{body}");
    let b: Value = serde_json::from_str(&body)?;
    assert_eq!(b["resourceType"], "Bundle");
    assert_eq!(b["type"], "searchset");
    let entries = b["entry"].as_array().context("entries")?;
    assert_eq!(
        entries.len(),
        26,
        "24 HR + BP + SpO2 (the unverified one is not shown)"
    );
    assert_eq!(validate_fhir(&body, r.logs.path())?, "valid 26");
    // The oximeter's quality flags are components, marked unproven.
    let spo2 = entries
        .iter()
        .find(|e| e["resource"]["code"]["coding"][0]["code"] == "59408-5")
        .context("an SpO2")?;
    let flags: Vec<(&str, &str)> = spo2["resource"]["component"]
        .as_array()
        .context("components")?
        .iter()
        .filter(|c| c["code"]["coding"][0]["system"] == hailan_api::fhir::QUALITY_CODES)
        .filter(|c| c["valueBoolean"] == true)
        .filter(|c| c["extension"][0]["url"] == hailan_api::fhir::UNPROVEN_EXTENSION)
        .filter_map(|c| {
            Some((
                c["code"]["coding"][0]["code"].as_str()?,
                c["code"]["coding"][0]["display"].as_str()?,
            ))
        })
        .collect();
    assert_eq!(
        flags,
        [
            (
                "plx-measurement-status.14",
                "questionable measurement detected"
            ),
            ("plx-device-sensor-status.5", "low perfusion detected")
        ],
        "{spo2}"
    );
    // The outside validator (HL7's R4 definitions and vital-signs profiles)
    // finds nothing wrong — and does find it when a required element goes.
    let none: Vec<String> = Vec::new();
    assert_eq!(fhir_profile_errors(&body, r.logs.path())?, none);
    let mut broken: Value = serde_json::from_str(&body)?;
    let hr_at = entries
        .iter()
        .position(|e| e["resource"]["code"]["coding"][0]["code"] == "8867-4")
        .context("a heart rate")?;
    let bp_at = entries
        .iter()
        .position(|e| e["resource"]["code"]["coding"][0]["code"] == "85354-9")
        .context("a blood pressure")?;
    broken["entry"][hr_at]["resource"]
        .as_object_mut()
        .context("hr")?
        .remove("category");
    let errors = fhir_profile_errors(&broken.to_string(), r.logs.path())?;
    assert!(
        errors
            .iter()
            .any(|e| e.contains(&format!("entry[{hr_at}].resource.category"))),
        "{errors:?}"
    );
    let mut broken: Value = serde_json::from_str(&body)?;
    broken["entry"][bp_at]["resource"]["component"][1]
        .as_object_mut()
        .context("bp component")?
        .remove("code");
    let errors = fhir_profile_errors(&broken.to_string(), r.logs.path())?;
    assert!(
        errors
            .iter()
            .any(|e| e.contains(&format!("entry[{bp_at}].resource.component[1].code"))),
        "{errors:?}"
    );

    let find = |code: &str| {
        entries
            .iter()
            .map(|e| &e["resource"])
            .find(|o| o["code"]["coding"][0]["code"] == code)
            .cloned()
            .with_context(|| format!("observation {code}"))
    };
    let bp = find("85354-9")?;
    let comps: Vec<&str> = bp["component"]
        .as_array()
        .context("bp components")?
        .iter()
        .filter_map(|c| c["code"]["coding"][0]["code"].as_str())
        .collect();
    assert_eq!(comps, ["8480-6", "8462-4", "8478-0", "8867-4"]);
    assert_eq!(bp["component"][0]["valueQuantity"]["code"], "mm[Hg]");
    assert_eq!(
        bp["component"][0]["valueQuantity"]["system"],
        "http://unitsofmeasure.org"
    );
    assert!(bp.get("valueQuantity").is_none());
    let hr = find("8867-4")?;
    assert_eq!(hr["valueQuantity"]["unit"], "/min");
    assert_eq!(hr["valueQuantity"]["value"], 60.0);
    assert!(
        hr["device"]["reference"]
            .as_str()
            .is_some_and(|d| d.starts_with("Device/"))
    );
    assert_eq!(hr["subject"]["reference"], format!("Patient/{p}"));
    assert_eq!(
        hr["effectiveDateTime"],
        from.checked_add_signed(chrono::Duration::seconds(1))
            .context("t")?
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    );
    let ext = &hr["extension"][0];
    assert_eq!(ext["url"], hailan_api::fhir::ZK_EXTENSION);
    assert_eq!(ext["extension"][0]["valueCode"], "verified");
    assert_eq!(ext["extension"][1]["url"], "proofHash");
    let hash = ext["extension"][1]["valueString"]
        .as_str()
        .context("hash")?;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM zk_proofs WHERE proof_hash = $1")
        .bind(hash)
        .fetch_one(&pool)
        .await?;
    assert_eq!(stored, 1);
    let ox = find("59408-5")?;
    assert_eq!(ox["code"]["coding"][1]["code"], "2708-6");
    assert_eq!(ox["component"][0]["code"]["coding"][0]["code"], "8889-8");

    // code= narrows the search; the audit row records the search.
    let (_, body) = r
        .api
        .get(
            &doc.token,
            &format!("/fhir/Observation?patient={p}&code=http://loinc.org|8867-4"),
        )
        .await?;
    let b: Value = serde_json::from_str(&body)?;
    assert_eq!(b["entry"].as_array().map(Vec::len), Some(24));
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_logs WHERE actor_id = $1 AND action = 'fhir_search_observation' AND patient_id = $2",
    )
    .bind(doc.id)
    .bind(p)
    .fetch_one(&pool)
    .await?;
    assert_eq!(audited, 2);
    drop(r.api);
    r.db.drop().await
}

/// The entries of a Bundle by resource type.
fn entries_of<'a>(b: &'a Value, kind: &str) -> Vec<&'a Value> {
    b["entry"]
        .as_array()
        .map(|es| {
            es.iter()
                .filter(|e| e["resource"]["resourceType"] == kind)
                .collect()
        })
        .unwrap_or_default()
}

/// The value of an Observation's ZK extension part `name`.
fn zk_part<'a>(o: &'a Value, name: &str) -> Option<&'a str> {
    o["extension"]
        .as_array()?
        .iter()
        .find(|e| e["url"] == hailan_api::fhir::ZK_EXTENSION)?["extension"]
        .as_array()?
        .iter()
        .find(|e| e["url"] == name)
        .and_then(|e| e["valueString"].as_str())
}

/// The gatewayDevice reference of an Observation.
fn gateway_ref(o: &Value) -> Option<&str> {
    o["extension"]
        .as_array()?
        .iter()
        .find(|e| e["url"] == "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice")?
        ["valueReference"]["reference"]
        .as_str()
}

#[tokio::test]
async fn everything_and_the_export_trace_each_value_to_its_devices_and_proof() -> Result<()> {
    let (r, doc) = fhir_rig("gw-api-8").await?;
    let pool = r.db.pool.clone();
    let p = r.patient.id;

    // $everything: 26 Observations, 3 sensors + 1 gateway, 4 proofs.
    let (code, body) = r
        .api
        .get(&doc.token, &format!("/fhir/Patient/{p}/$everything"))
        .await?;
    assert_eq!(code, 200, "{body}");
    let b: Value = serde_json::from_str(&body)?;
    assert_eq!(b["type"], "searchset");
    let none: Vec<String> = Vec::new();
    assert_eq!(
        fhir_profile_errors(&body, r.logs.path())?,
        none,
        "$everything"
    );
    let obs = entries_of(&b, "Observation");
    let devices = entries_of(&b, "Device");
    let provs = entries_of(&b, "Provenance");
    assert_eq!((obs.len(), devices.len(), provs.len()), (26, 4, 4));
    let ids = |es: &[&Value], kind: &str| -> std::collections::HashSet<String> {
        es.iter()
            .filter_map(|e| {
                e["resource"]["id"]
                    .as_str()
                    .map(|id| format!("{kind}/{id}"))
            })
            .collect()
    };
    let device_refs = ids(&devices, "Device");
    let obs_refs = ids(&obs, "Observation");
    for e in &devices {
        assert_eq!(e["search"]["mode"], "include");
    }
    let sensor = devices
        .iter()
        .map(|e| &e["resource"])
        .find(|d| d["identifier"][0]["value"] == "ox-1")
        .context("the oximeter's Device")?;
    assert_eq!(sensor["patient"]["reference"], format!("Patient/{p}"));
    assert_eq!(sensor["identifier"][0]["system"], "urn:hailan:device");
    assert_eq!(
        sensor["specialization"][0]["systemType"]["coding"][0]["code"],
        "528388"
    );
    // Every Observation names a sensor and the gateway in the Bundle, and
    // is a target of the one Provenance whose proof hash it carries.
    for e in &obs {
        let o = &e["resource"];
        assert_eq!(e["search"]["mode"], "match");
        let dev = o["device"]["reference"].as_str().context("device")?;
        assert!(device_refs.contains(dev), "{dev}");
        let gw = gateway_ref(o).context("gatewayDevice")?;
        assert!(device_refs.contains(gw), "{gw}");
        let hash = zk_part(o, "proofHash").context("proofHash")?;
        let me = format!("Observation/{}", o["id"].as_str().context("id")?);
        let covering: Vec<&&Value> = provs
            .iter()
            .filter(|pv| {
                pv["resource"]["target"]
                    .as_array()
                    .is_some_and(|ts| ts.iter().any(|t| t["reference"] == me.as_str()))
            })
            .collect();
        assert_eq!(covering.len(), 1, "{me}");
        let pv = &covering[0]["resource"];
        assert_eq!(pv["entity"][0]["what"]["identifier"]["value"], hash);
        assert_eq!(pv["agent"][0]["who"]["reference"], gw);
    }
    let window: Vec<&&Value> = provs
        .iter()
        .filter(|pv| pv["resource"]["target"].as_array().map(Vec::len) == Some(16))
        .collect();
    assert_eq!(
        window.len(),
        1,
        "the first heart-rate window's proof covers 16"
    );
    for pv in &provs {
        for t in pv["resource"]["target"].as_array().context("targets")? {
            assert!(obs_refs.contains(t["reference"].as_str().unwrap_or("")));
        }
        // The proof bundle it names is there, and is that proof.
        let url = pv["resource"]["entity"][0]["extension"][0]["valueUrl"]
            .as_str()
            .context("bundle url")?;
        let bundle = r.api.json(&doc.token, url).await?;
        assert_eq!(
            bundle["proof_hash"], pv["resource"]["entity"][0]["what"]["identifier"]["value"],
            "{bundle}"
        );
    }
    // The search includes the same Devices and Provenance when asked, and
    // names an include it does not know.
    let inc = r
        .api
        .json(
            &doc.token,
            &format!("/fhir/Observation?patient={p}&_include=Observation:device&_revinclude=Provenance:target"),
        )
        .await?;
    assert_eq!(
        (
            entries_of(&inc, "Observation").len(),
            entries_of(&inc, "Device").len(),
            entries_of(&inc, "Provenance").len()
        ),
        (26, 4, 4)
    );
    let (code, msg) = r
        .api
        .get(
            &doc.token,
            &format!("/fhir/Observation?patient={p}&_include=Observation:subject"),
        )
        .await?;
    assert_eq!(code, 400, "{msg}");
    assert!(msg.contains("_include"), "{msg}");
    // Paging: _count=10 gives 10 Observations and a next link that goes on.
    let (_, page) = r
        .api
        .get(
            &doc.token,
            &format!("/fhir/Patient/{p}/$everything?_count=10"),
        )
        .await?;
    let page: Value = serde_json::from_str(&page)?;
    assert_eq!(entries_of(&page, "Observation").len(), 10);
    let next = page["link"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["relation"] == "next"))
        .and_then(|l| l["url"].as_str())
        .context("next link")?;
    let rest = r.api.json(&doc.token, next).await?;
    let first: std::collections::HashSet<&str> = entries_of(&page, "Observation")
        .iter()
        .filter_map(|e| e["resource"]["id"].as_str())
        .collect();
    let second = entries_of(&rest, "Observation");
    assert_eq!(second.len(), 10);
    assert!(
        second
            .iter()
            .all(|e| !first.contains(e["resource"]["id"].as_str().unwrap_or("")))
    );

    // Devices read one by one; a device nobody may see is a 404.
    let gw_id = devices
        .iter()
        .map(|e| &e["resource"])
        .find(|d| d["identifier"][0]["system"] == "urn:hailan:gateway")
        .and_then(|d| d["id"].as_str())
        .context("gateway Device")?;
    let gw_dev = r
        .api
        .json(&doc.token, &format!("/fhir/Device/{gw_id}"))
        .await?;
    assert_eq!(gw_dev["identifier"][0]["value"], r.gw);
    let (code, _) = r
        .api
        .get(
            &doc.token,
            &format!("/fhir/Device/{}", uuid::Uuid::new_v4()),
        )
        .await?;
    assert_eq!(code, 404);

    // The export: a transaction of conditional creates, references by urn:uuid.
    let (code, body) = r
        .api
        .get(
            &doc.token,
            &format!("/api/v1/patients/{p}/export.fhir.json"),
        )
        .await?;
    assert_eq!(code, 200, "{body}");
    let t: Value = serde_json::from_str(&body)?;
    assert_eq!(t["type"], "transaction");
    assert_eq!(
        fhir_profile_errors(&body, r.logs.path())?,
        none,
        "the export"
    );
    let entries = t["entry"].as_array().context("entries")?;
    assert_eq!(entries.len(), 34);
    let full_urls: std::collections::HashSet<&str> = entries
        .iter()
        .filter_map(|e| e["fullUrl"].as_str())
        .collect();
    for e in entries {
        let kind = e["resource"]["resourceType"].as_str().unwrap_or("");
        match kind {
            "Observation" | "Device" => {
                assert_eq!(e["request"]["method"], "POST", "{e}");
                assert!(
                    e["request"]["ifNoneExist"]
                        .as_str()
                        .is_some_and(|q| q.starts_with("identifier=urn:hailan:")),
                    "{e}"
                );
                assert!(e["resource"].get("id").is_none());
            }
            "Provenance" => assert_eq!(e["request"]["method"], "PUT"),
            other => panic!("unexpected {other}"),
        }
        if kind == "Observation" {
            let o = &e["resource"];
            assert!(full_urls.contains(o["device"]["reference"].as_str().unwrap_or("")));
            assert!(full_urls.contains(gateway_ref(o).unwrap_or("")));
            assert_eq!(
                o["subject"]["reference"],
                format!("Patient?identifier=urn:hailan:patient|{p}")
            );
        }
    }
    // CSV: one line per reading of the type, the values the API shows.
    let (code, csv) = r
        .api
        .get(
            &doc.token,
            &format!("/api/v1/patients/{p}/export.csv?type=BLOOD_PRESSURE"),
        )
        .await?;
    assert_eq!(code, 200, "{csv}");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(
        lines[0].starts_with("recorded_at,device_id,seq,verification,reason,"),
        "{csv}"
    );
    assert!(
        lines[1].contains(",bp-1,") && lines[1].contains(",verified,"),
        "{csv}"
    );
    let bp_obs = obs
        .iter()
        .map(|e| &e["resource"])
        .find(|o| o["code"]["coding"][0]["code"] == "85354-9")
        .context("bp observation")?;
    let systolic = bp_obs["component"][0]["valueQuantity"]["value"]
        .as_f64()
        .context("systolic")?;
    assert!(
        lines[1].contains(&format!(",{systolic},")),
        "{csv} vs {systolic}"
    );
    let (_, hr_csv) = r
        .api
        .get(
            &doc.token,
            &format!("/api/v1/patients/{p}/export.csv?type=HEART_RATE"),
        )
        .await?;
    let hr_obs = obs
        .iter()
        .filter(|e| e["resource"]["code"]["coding"][0]["code"] == "8867-4")
        .count();
    assert_eq!(hr_csv.lines().count(), 1 + hr_obs, "{hr_csv}");
    let (code, body) = r
        .api
        .get(&doc.token, &format!("/api/v1/patients/{p}/export.csv"))
        .await?;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("type"), "{body}");
    let audited: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM audit_logs WHERE actor_id = $1 AND patient_id = $2 ORDER BY at",
    )
    .bind(doc.id)
    .bind(p)
    .fetch_all(&pool)
    .await?;
    for action in [
        "fhir_everything",
        "fhir_read_device",
        "export_fhir",
        "export_csv",
    ] {
        assert!(audited.iter().any(|a| a == action), "{action}: {audited:?}");
    }
    drop(r.api);
    r.db.drop().await
}

#[tokio::test]
async fn a_patient_gives_and_revokes_grants_and_a_clinician_cannot() -> Result<()> {
    let mut r = rig("gw-api-9").await?;
    seed(&mut r).await?;
    let pool = r.db.pool.clone();
    let p = r.patient.id;
    let doc = user(&pool, "CLINICIAN", "Dr Given").await?;
    let other = user(&pool, "PATIENT", "Pat Other").await?;
    let obs = obs_path(p, "");

    // Nothing granted: the clinician sees nothing of the patient.
    let (code, _) = r.api.get(&doc.token, &obs).await?;
    let before = if code == 200 {
        observations(&r.api.json(&doc.token, &obs).await?).len()
    } else {
        0
    };
    assert_eq!(before, 0);

    // The patient grants heart rate for a week.
    let expires = (chrono::Utc::now() + chrono::Duration::days(7))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let body = format!(
        r#"{{"clinician":"{}","data_types":["HEART_RATE"],"expires_at":"{expires}"}}"#,
        doc.did
    );
    let (code, made) = r
        .api
        .send("POST", &r.patient.token, "/api/v1/grants", Some(&body))
        .await?;
    assert_eq!(code, 201, "{made}");
    let made: Value = serde_json::from_str(&made)?;
    assert_eq!(made["active"], true);
    assert_eq!(made["clinician"]["did"], doc.did.as_str());
    let id = made["id"].as_str().context("grant id")?.to_owned();
    let seen = observations(&r.api.json(&doc.token, &obs).await?);
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|o| o["data_type"] == "HEART_RATE"),
        "only the granted type"
    );

    // Both parties list it; a third user does not see it.
    for who in [&r.patient, &doc] {
        let l = r.api.json(&who.token, "/api/v1/grants").await?;
        assert_eq!(l["grants"].as_array().map(Vec::len), Some(1), "{l}");
    }
    let l = r.api.json(&other.token, "/api/v1/grants").await?;
    assert_eq!(l["grants"].as_array().map(Vec::len), Some(0), "{l}");

    // The clinician's patient list says when access ends; with a second
    // grant that never expires, it never ends (not the later expiry).
    let expiry_listed = |l: &Value| -> Result<Value> {
        let me = l["patients"]
            .as_array()
            .and_then(|ps| ps.iter().find(|x| x["id"] == p.to_string()))
            .with_context(|| format!("the patient in {l}"))?;
        Ok(me["grant_expires_at"].clone())
    };
    let l = r.api.json(&doc.token, "/api/v1/patients").await?;
    let listed: chrono::DateTime<chrono::Utc> = serde_json::from_value(expiry_listed(&l)?)?;
    assert_eq!(
        listed.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        expires
    );
    let forever = format!(
        r#"{{"clinician":"{}","data_types":["HEART_RATE"]}}"#,
        doc.did
    );
    let (code, made2) = r
        .api
        .send("POST", &r.patient.token, "/api/v1/grants", Some(&forever))
        .await?;
    assert_eq!(code, 201, "{made2}");
    let l = r.api.json(&doc.token, "/api/v1/patients").await?;
    assert_eq!(expiry_listed(&l)?, Value::Null, "{l}");
    let id2 = serde_json::from_str::<Value>(&made2)?["id"]
        .as_str()
        .context("grant id")?
        .to_owned();
    let (code, msg) = r
        .api
        .send(
            "DELETE",
            &r.patient.token,
            &format!("/api/v1/grants/{id2}"),
            None,
        )
        .await?;
    assert_eq!(code, 200, "{msg}");

    // A clinician can neither give nor revoke; nor can another patient revoke.
    let self_grant = format!(r#"{{"clinician":"{}"}}"#, doc.did);
    let (code, msg) = r
        .api
        .send("POST", &doc.token, "/api/v1/grants", Some(&self_grant))
        .await?;
    assert_eq!(code, 403, "{msg}");
    let (code, msg) = r
        .api
        .send("DELETE", &doc.token, &format!("/api/v1/grants/{id}"), None)
        .await?;
    assert_eq!(code, 403, "{msg}");
    let (code, msg) = r
        .api
        .send(
            "DELETE",
            &other.token,
            &format!("/api/v1/grants/{id}"),
            None,
        )
        .await?;
    assert_eq!(code, 404, "{msg}");
    // Grants only to clinicians, with known types.
    let to_patient = format!(r#"{{"clinician":"{}"}}"#, other.did);
    let (code, msg) = r
        .api
        .send(
            "POST",
            &r.patient.token,
            "/api/v1/grants",
            Some(&to_patient),
        )
        .await?;
    assert_eq!(code, 400, "{msg}");
    assert!(msg.contains("not a clinician"), "{msg}");
    let bad_type = format!(r#"{{"clinician":"{}","data_types":["MOOD"]}}"#, doc.did);
    let (code, msg) = r
        .api
        .send("POST", &r.patient.token, "/api/v1/grants", Some(&bad_type))
        .await?;
    assert_eq!(code, 400, "{msg}");
    assert!(msg.contains("data_types"), "{msg}");

    // The database holds the line too: as hailan_patient, a grant from
    // someone else is refused by its policy.
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL ROLE hailan_patient")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT set_config('hailan.user_id', $1, true)")
        .bind(other.id.to_string())
        .execute(&mut *tx)
        .await?;
    let forged = sqlx::query("INSERT INTO care_grants (patient_id, clinician_id) VALUES ($1, $2)")
        .bind(p)
        .bind(doc.id)
        .execute(&mut *tx)
        .await;
    assert!(
        forged.is_err(),
        "a patient inserted another patient's grant"
    );
    tx.rollback().await?;

    // Revoked: the clinician sees nothing again; revoking again is harmless.
    let (code, msg) = r
        .api
        .send(
            "DELETE",
            &r.patient.token,
            &format!("/api/v1/grants/{id}"),
            None,
        )
        .await?;
    assert_eq!(code, 200, "{msg}");
    let revoked: Value = serde_json::from_str(&msg)?;
    assert_eq!(revoked["active"], false);
    let (code, _) = r.api.get(&doc.token, &obs).await?;
    let after = if code == 200 {
        observations(&r.api.json(&doc.token, &obs).await?).len()
    } else {
        0
    };
    assert_eq!(after, 0);
    let (code, _) = r
        .api
        .send(
            "DELETE",
            &r.patient.token,
            &format!("/api/v1/grants/{id}"),
            None,
        )
        .await?;
    assert_eq!(code, 200);

    let actions: Vec<String> =
        sqlx::query_scalar("SELECT action FROM audit_logs WHERE actor_id = $1 ORDER BY at")
            .bind(r.patient.id)
            .fetch_all(&pool)
            .await?;
    for a in ["grant_access", "read_grants", "revoke_grant"] {
        assert!(actions.iter().any(|x| x == a), "{a}: {actions:?}");
    }
    drop(r.api);
    r.db.drop().await
}

#[tokio::test]
async fn series_devices_and_proof_bundles() -> Result<()> {
    let mut r = rig("gw-api-4").await?;
    seed(&mut r).await?;
    let pool = r.db.pool.clone();
    let p = r.patient.id;
    let doc = user(&pool, "CLINICIAN", "Dr Chart").await?;
    grant(&pool, &r.patient, &doc, None).await?;
    let from = chrono::DateTime::from_timestamp_millis(T0_MS).context("t0")?;
    let to = from + chrono::Duration::hours(1);
    let s = hr_series(&r, &doc.token, p, "minute", from, to).await?;
    // Window 1 (seqs 1–16) falls in one minute, window 2 (117–124) two minutes later.
    let points = s["points"].as_array().context("points")?;
    assert_eq!(points.len(), 2, "{s}");
    assert_eq!(points[0]["n"], 16);
    assert_eq!(points[0]["min"][0], 60.0);
    assert_eq!(points[0]["max"][0], 75.0);
    assert_eq!(points[0]["avg"][0], 67.5);
    assert_eq!(points[1]["n"], 8);
    assert_eq!(points[1]["avg"][0], 87.0);
    assert_eq!(s["readings"], 24);
    // A range that cuts a window still opens it (its hidden readings are read too).
    let cut_from = from + chrono::Duration::seconds(10);
    let s = hr_series(&r, &doc.token, p, "hour", cut_from, to).await?;
    assert_eq!(s["unverifiable"], serde_json::json!([]), "{s}");
    assert_eq!(s["readings"], 15, "{s}");
    check_the_row_cap(&r, &doc).await?;

    let d = r
        .api
        .json(&doc.token, &format!("/api/v1/patients/{p}/devices"))
        .await?;
    let devs = d["devices"].as_array().context("devices")?;
    assert_eq!(devs.len(), 2, "{d}");
    let hr = devs
        .iter()
        .find(|x| x["device_id"] == "hr-1")
        .context("hr-1")?;
    assert_eq!(hr["battery_level"], 55);
    assert_eq!(hr["sync_status"], "GAPS");
    assert_eq!(hr["missing_seqs"], 100);
    assert!(hr["last_sync"].is_string());
    let gap = &hr["gaps"][0];
    assert_eq!(
        (
            gap["first_missing_seq"].as_i64(),
            gap["last_missing_seq"].as_i64()
        ),
        (Some(17), Some(116)),
        "{hr}"
    );
    assert!(
        gap["after"].is_string() && gap["before"].is_string(),
        "{gap}"
    );

    // The proof bundle of one reading: re-verified with the key, snarkjs JSON, recorded.
    let obs = r
        .api
        .json(
            &doc.token,
            &format!("/api/v1/patients/{p}/observations?type=HEART_RATE&limit=1"),
        )
        .await?;
    let id = obs["observations"][0]["id"]
        .as_str()
        .context("id")?
        .to_owned();
    let b = r
        .api
        .json(
            &doc.token,
            &format!("/api/v1/patients/{p}/readings/{id}/proof"),
        )
        .await?;
    assert_eq!(b["bundle"]["statement"], "window", "{b}");
    assert_eq!(b["covers"]["readings"], 16);
    assert_eq!(b["reverified"]["valid"], true, "{b}");
    assert_eq!(b["snarkjs"]["public"].as_array().map(Vec::len), Some(6));
    assert_eq!(b["snarkjs"]["proof"]["protocol"], "groth16");
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM zk_verifications WHERE verifier_id = $1 AND verified AND data_id::text = $2",
    )
    .bind(doc.id)
    .bind(&id)
    .fetch_one(&pool)
    .await?;
    assert_eq!(recorded, 1);
    if let Some(snarkjs) = hailan_tests::setting("HAILAN_SNARKJS").filter(|s| Path::new(s).exists())
    {
        let dir = r.logs.path();
        for (name, key) in [
            ("vk.json", "vk"),
            ("proof.json", "proof"),
            ("public.json", "public"),
        ] {
            std::fs::write(dir.join(name), b["snarkjs"][key].to_string())?;
        }
        let out = std::process::Command::new(snarkjs)
            .args(["groth16", "verify", "vk.json", "public.json", "proof.json"])
            .current_dir(dir)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("OK"),
            "snarkjs: {text}"
        );
    }
    drop(r.api);
    r.db.drop().await
}

/// The value of attribute `name` in one serialised tag.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let len = tag[start..].find('"')?;
    Some(&tag[start..start + len])
}

/// `<circle …>` tags of chart points of `data_type` in the DOM: (slot, t, avg).
fn chart_points(dom: &str, data_type: &str) -> Vec<(String, String, f64)> {
    dom.split("<circle")
        .skip(1)
        .filter_map(|rest| {
            let tag = &rest[..rest.find('>')?];
            (attr(tag, "data-type")? == data_type && attr(tag, "class")?.contains("verified"))
                .then_some(())?;
            Some((
                attr(tag, "data-slot")?.to_owned(),
                attr(tag, "data-t")?.to_owned(),
                attr(tag, "data-avg")?.parse().ok()?,
            ))
        })
        .collect()
}

#[tokio::test]
async fn web_page_charts_the_api_series_in_headless_chromium() -> Result<()> {
    let mut r = rig("gw-api-5").await?;
    seed(&mut r).await?;
    let pool = r.db.pool.clone();
    let p = r.patient.id;
    let doc = user(&pool, "CLINICIAN", "Dr Browser").await?;
    grant(&pool, &r.patient, &doc, None).await?;
    let from = chrono::DateTime::from_timestamp_millis(T0_MS - 60_000).context("t0")?;
    let to = from + chrono::Duration::minutes(10);
    let api_series = hr_series(&r, &doc.token, p, "minute", from, to).await?;
    let expect: Vec<(String, String, f64)> = api_series["points"]
        .as_array()
        .context("points")?
        .iter()
        .filter_map(|pt| {
            Some((
                "heart_rate".to_owned(),
                pt["t"].as_str()?.to_owned(),
                pt["avg"][0].as_f64()?,
            ))
        })
        .collect();
    assert_eq!(expect.len(), 2);

    // Log in with the token in the URL fragment (never sent to the server),
    // open the patient, let the page fetch and draw, then dump the DOM and
    // take a screenshot.
    let dir = r.logs.path();
    let shot = dir.join("clinician.png");
    let url = format!(
        "http://127.0.0.1:{}/#token={}&patient={p}&from={}&to={}&bucket=minute",
        r.api.port,
        doc.token,
        rfc3339(from),
        rfc3339(to)
    );
    let out = tokio::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--virtual-time-budget=20000",
            "--window-size=1280,1400",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.join("chromium").display()
        ))
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--dump-dom")
        .arg(&url)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), out)
        .await
        .context("chromium did not finish in 90 s")?
        .context("running chromium (cargo xtask services installs Debian's chromium)")?;
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("data-state=\"ready\""),
        "the page did not finish: {dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The chart's points are the API's series, bucket for bucket.
    assert_eq!(chart_points(&dom, "HEART_RATE"), expect);
    let bp = chart_points(&dom, "BLOOD_PRESSURE");
    let slots: Vec<&str> = bp.iter().map(|(s, _, _)| s.as_str()).collect();
    assert_eq!(slots, ["systolic", "diastolic", "mean_arterial", "pulse"]);
    // The line breaks at the empty minute between the windows (a gap is a gap).
    let hr_path = dom
        .split("<path")
        .skip(1)
        .find(|t| t.contains("data-slot=\"heart_rate\""))
        .context("heart-rate path")?;
    assert_eq!(
        attr(hr_path, "d").map(|d| d.matches('M').count()),
        Some(2),
        "{hr_path}"
    );
    // Device battery and sync status.
    let row = dom
        .split("<tr")
        .find(|t| t.contains("data-device=\"hr-1\""))
        .context("hr-1 row")?;
    assert_eq!(attr(row, "data-battery"), Some("55"));
    assert_eq!(attr(row, "data-sync"), Some("GAPS"));
    assert_eq!(attr(row, "data-registrations"), Some("1"));
    // The summary: the latest reading of each vital, as the API has it.
    for data_type in ["HEART_RATE", "BLOOD_PRESSURE"] {
        let latest = r
            .api
            .json(
                &doc.token,
                &format!("/api/v1/patients/{p}/observations?type={data_type}&order=desc&limit=1"),
            )
            .await?;
        let latest = observations(&latest)
            .first()
            .cloned()
            .context("a latest reading")?;
        let card = dom
            .split("<div")
            .find(|t| t.contains(&format!("data-summary=\"{data_type}\"")))
            .with_context(|| format!("{data_type} summary"))?;
        assert_eq!(
            attr(card, "data-time"),
            latest["recorded_at"].as_str(),
            "{card}"
        );
        let verified = latest["status"] == "verified";
        assert_eq!(
            attr(card, "data-verified"),
            Some(if verified { "true" } else { "false" })
        );
        if verified {
            let shown: Vec<f64> = attr(card, "data-value")
                .context("data-value")?
                .split('/')
                .map(|v| v.parse::<f64>())
                .collect::<Result<_, _>>()?;
            let slots: Vec<&str> = attr(card, "data-slots")
                .context("data-slots")?
                .split('/')
                .collect();
            let api: Vec<f64> = slots
                .iter()
                .filter_map(|s| latest["values"][s]["value"].as_f64())
                .collect();
            assert_eq!(shown, api, "{card}");
        }
    }
    // The newest heart rate is the last of the second window (the unproven
    // reading is older).
    let hr_card = dom
        .split("<div")
        .find(|t| t.contains("data-summary=\"HEART_RATE\""))
        .context("heart-rate summary")?;
    assert_eq!(attr(hr_card, "data-value"), Some("94"), "{hr_card}");
    let png = std::fs::read(&shot).context("screenshot")?;
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    // The page's reads were audited like any other.
    let series_reads: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_logs WHERE actor_id = $1 AND action = 'read_series'",
    )
    .bind(doc.id)
    .fetch_one(&pool)
    .await?;
    assert_eq!(
        series_reads, 3,
        "one by the test, one per data type with readings by the page"
    );
    // The screenshot is kept as the run's artefact.
    let artefacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("artefacts");
    std::fs::create_dir_all(&artefacts)?;
    std::fs::copy(&shot, artefacts.join("clinician-page.png"))?;
    if let Some(keep) = std::env::var_os("HAILAN_KEEP_SCREENSHOT") {
        std::fs::copy(&shot, keep)?;
    }
    drop(r.api);
    r.db.drop().await
}

async fn last_audit_replica(pool: &sqlx::PgPool, actor: &User) -> Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT detail->>'replica' FROM audit_logs WHERE actor_id = $1 ORDER BY at DESC LIMIT 1",
    )
    .bind(actor.id)
    .fetch_optional(pool)
    .await?)
}

#[tokio::test]
async fn reads_are_served_by_a_hot_standby_once_replayed() -> Result<()> {
    let primary = hailan_tests::PrivatePostgres::start().await?;
    let pool = hailan_db::connect(&primary.url, 4).await?;
    ensure_api_login(&pool).await?;
    let standby = hailan_tests::api::Standby::start(&primary).await?;
    let standby_pool = hailan_db::connect(&standby.url, 2).await?;
    let zk = DevZk::new()?;
    let logs = tempfile::tempdir()?;
    let gw = "gw-api-6";
    let patient = user(&pool, "PATIENT", "Pat Replica").await?;
    hailan_ingest::admin::enrol_gateway(&pool, gw, &patient.did, None).await?;
    let doc = user(&pool, "CLINICIAN", "Dr Replica").await?;
    grant(&pool, &patient, &doc, None).await?;
    let _ingest = IngestProcess::start(&ingest_bin()?, &primary, &zk, &[gw], logs.path())?;
    let mut publisher = Publisher::connect(gw).await?;
    let ring = write_key_ring(logs.path())?;
    let api = ApiProcess::start_with_env(
        &primary,
        Some(&standby.url),
        &ring,
        zk.dir.path(),
        logs.path(),
        &[("HAILAN_API__API__REPLICA_WAIT_MS", "300")],
    )
    .await?;
    let topic = topic::up(gw);
    let mut bp = TestDevice::new(gw, "bp-replica", DataType::BloodPressure, 6);
    publisher
        .publish_all(&topic, vec![enc(&bp.registration())])
        .await?;
    let slots = plausible_slots(DataType::BloodPressure);
    let first = bp.proven_reading(&zk.reading, &slots)?;
    // Registration first: a reading that beats it is quarantined until replay.
    let p2 = pool.clone();
    eventually(WAIT, "registration", || {
        let pool = p2.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM iot_devices")
                .fetch_one(&pool)
                .await?;
            Ok((n == 1).then_some(()))
        }
    })
    .await?;
    publisher.publish_all(&topic, vec![enc(&first)]).await?;
    wait_rows(&pool, 1).await?;

    // Served from the standby once it has replayed the primary's position
    // (awaited first: on a loaded machine replay can take longer than the
    // API's 300 ms wait, and then the primary answers, as it should).
    eventually(WAIT, "the standby replayed the reading", || async {
        Ok((count_readings(&standby_pool, "").await? == 1).then_some(()))
    })
    .await?;
    let path = obs_path(patient.id, "");
    let v = api.json(&doc.token, &path).await?;
    assert_eq!(count_status(&observations(&v), "verified"), 1, "{v}");
    assert_eq!(
        last_audit_replica(&pool, &doc).await?.as_deref(),
        Some("true")
    );

    // Replay paused: a reading committed on the primary is not on the
    // standby yet, so the API (after waiting 300 ms) reads from the primary.
    standby
        .superuser("SELECT 'paused' FROM (SELECT pg_wal_replay_pause()) x")
        .await?;
    eventually(WAIT, "replay paused", || async {
        Ok((standby
            .superuser("SELECT pg_get_wal_replay_pause_state()")
            .await?
            == "paused")
            .then_some(()))
    })
    .await?;
    let second = bp.proven_reading(&zk.reading, &slots)?;
    publisher.publish_all(&topic, vec![enc(&second)]).await?;
    wait_rows(&pool, 2).await?;
    assert_eq!(
        count_readings(&standby_pool, "").await?,
        1,
        "replay is paused"
    );
    let v = api.json(&doc.token, &path).await?;
    assert_eq!(count_status(&observations(&v), "verified"), 2, "{v}");
    assert_eq!(
        last_audit_replica(&pool, &doc).await?.as_deref(),
        Some("false")
    );

    // Once replayed, the standby serves the new reading.
    standby
        .superuser("SELECT 'resumed' FROM (SELECT pg_wal_replay_resume()) x")
        .await?;
    wait_rows(&standby_pool, 2).await?;
    let v = api.json(&doc.token, &path).await?;
    let list = observations(&v);
    assert_eq!(count_status(&list, "verified"), 2, "{v}");
    assert_eq!(list[1]["seq"], 2);
    assert_eq!(
        last_audit_replica(&pool, &doc).await?.as_deref(),
        Some("true")
    );
    drop(api);
    standby_pool.close().await;
    pool.close().await;
    Ok(())
}

#[tokio::test]
async fn a_readable_key_ring_is_refused() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let db = TestDb::create().await?;
    let zk = DevZk::new()?;
    let logs = tempfile::tempdir()?;
    let ring = write_key_ring(logs.path())?;
    std::fs::set_permissions(&ring, std::fs::Permissions::from_mode(0o644))?;
    let err = match ApiProcess::start(&db, None, &ring, zk.dir.path(), logs.path()).await {
        Ok(_) => anyhow::bail!("the API started with a world-readable key ring"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("must not be readable by group or others"),
        "{err}"
    );
    db.drop().await
}

// ------------------------------------------------------------------ content addressing

/// RFC 4648 base32 (lower case, no padding) decoded — written here apart
/// from proto's encoder, so the test does not check the encoder with itself.
fn base32_decode(s: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let (mut buffer, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = match c {
            b'a'..=b'z' => c - b'a',
            b'2'..=b'7' => c - b'2' + 26,
            _ => anyhow::bail!("{c:?} is not base32 lower"),
        };
        buffer = (buffer << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

/// The dag-pb node of a one-chunk UnixFS file (what `ipfs_cid` hashes):
/// PBNode { Data: UnixFS { Type: File, Data: bytes, filesize } }.
fn unixfs_file_node(content: &[u8]) -> Vec<u8> {
    fn varint(mut n: u64, out: &mut Vec<u8>) {
        while n >= 0x80 {
            out.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }
    let mut unixfs = vec![0x08, 0x02]; // field 1 (Type), varint: File
    if !content.is_empty() {
        unixfs.push(0x12); // field 2 (Data), bytes
        varint(content.len() as u64, &mut unixfs);
        unixfs.extend_from_slice(content);
    }
    unixfs.push(0x18); // field 3 (filesize), varint
    varint(content.len() as u64, &mut unixfs);
    let mut node = vec![0x0a]; // PBNode field 1 (Data), bytes
    varint(unixfs.len() as u64, &mut node);
    node.extend_from_slice(&unixfs);
    node
}

/// `ipfs_cid`'s CIDv1 of a file holding `content` (a dag-pb UnixFS CID: the
/// tool has no raw-leaves option).
fn ipfs_cid_tool(dir: &Path, content: &[u8]) -> Result<String> {
    let file = dir.join("blob");
    std::fs::write(&file, content)?;
    let out = std::process::Command::new("ipfs_cid")
        .arg(&file)
        .output()
        .context("running ipfs_cid (package ipfs-cid; `cargo xtask services` installs it)")?;
    anyhow::ensure!(out.status.success(), "ipfs_cid failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let json = text
        .lines()
        .find(|l| l.starts_with('{'))
        .context("no JSON line from ipfs_cid")?;
    let v: Value = serde_json::from_str(json)?;
    Ok(v["CIDv1"].as_str().context("CIDv1")?.to_owned())
}

/// Every stored reading carries the CIDv1 (raw, sha2-256) of its sealed
/// value's ciphertext; the API hands it out with each observation, in the
/// proof bundle and as a FHIR identifier. Checked against Debian's
/// `ipfs_cid`: it prints only dag-pb UnixFS CIDs, so the test builds the
/// UnixFS node of the same bytes, and checks proto's CIDv1 encoding (version,
/// codec, multihash, base32) of that node against the tool's output, and the
/// stored raw CID by decoding it independently (codec 0x55, sha2-256 of the
/// ciphertext).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_values_are_content_addressed() -> Result<()> {
    use hailan_proto::cid;
    use sha2::{Digest, Sha256};
    let mut r = rig("gw-ops-1").await?;
    seed(&mut r).await?;
    let pool = r.db.pool.clone();
    let rows: Vec<(uuid::Uuid, Option<String>, String)> = sqlx::query_as(
        "SELECT id, ipfs_data_cid, value->>'ciphertext' FROM health_data_heart_rate
         UNION ALL SELECT id, ipfs_data_cid, value->>'ciphertext' FROM health_data_blood_pressure",
    )
    .fetch_all(&pool)
    .await?;
    assert_eq!(rows.len() as i64, SEEDED);
    let mut by_id = std::collections::HashMap::new();
    for (id, stored, ct_hex) in &rows {
        let ct = hex::decode(ct_hex)?;
        let stored = stored.as_deref().context("ipfs_data_cid is set")?;
        assert!(stored.starts_with("bafkrei"), "{stored}");
        let bytes = base32_decode(&stored[1..])?;
        assert_eq!(
            &bytes[..4],
            &[0x01, 0x55, 0x12, 0x20],
            "CIDv1, raw, sha2-256"
        );
        assert_eq!(&bytes[4..], Sha256::digest(&ct).as_slice());
        let node = unixfs_file_node(&ct);
        assert_eq!(
            ipfs_cid_tool(r.logs.path(), &ct)?,
            cid::v1_sha256(cid::DAG_PB, &Sha256::digest(&node).into()),
            "proto's CIDv1 encoding agrees with ipfs_cid"
        );
        by_id.insert(id.to_string(), stored.to_owned());
    }
    let distinct: std::collections::HashSet<&String> = by_id.values().collect();
    assert_eq!(distinct.len(), rows.len(), "one CID per sealed value");

    let p = r.patient.id;
    let doc = user(&pool, "CLINICIAN", "Dr Cid").await?;
    grant(&pool, &r.patient, &doc, None).await?;
    let obs = r.api.json(&doc.token, &obs_path(p, "")).await?;
    let list = observations(&obs);
    assert_eq!(
        list.len() as i64,
        SEEDED - 1,
        "the unverified one is not shown"
    );
    for o in &list {
        let id = o["id"].as_str().context("id")?;
        assert_eq!(
            o["ipfs_data_cid"].as_str(),
            by_id.get(id).map(String::as_str),
            "{o}"
        );
    }
    let id = list[0]["id"].as_str().context("id")?;
    let b = r
        .api
        .json(
            &doc.token,
            &format!("/api/v1/patients/{p}/readings/{id}/proof"),
        )
        .await?;
    assert_eq!(
        b["ipfs_data_cid"].as_str(),
        by_id.get(id).map(String::as_str),
        "{b}"
    );
    let f = r
        .api
        .json(&doc.token, &format!("/fhir/Observation?patient={p}"))
        .await?;
    let entries = f["entry"].as_array().context("entries")?;
    assert_eq!(entries.len(), list.len());
    for e in entries {
        let res = &e["resource"];
        let id = res["id"].as_str().context("id")?;
        let cid = res["identifier"]
            .as_array()
            .and_then(|ids| {
                ids.iter()
                    .find(|i| i["system"] == "urn:hailan:sealed-value-cid")
            })
            .and_then(|i| i["value"].as_str());
        assert_eq!(cid, by_id.get(id).map(String::as_str), "{res}");
    }
    Ok(())
}

/// A day view reads 5,400 proofs by hash. Compared as `text`, the hashes
/// could not use the `(user_id, proof_hash)` key: once PostgreSQL switched
/// a prepared statement to its generic plan (from the sixth run) every proof
/// of the patient was compared with every hash, 250–450 ms per day view.
/// Under the generic plan, with sequential scans discouraged, the key must
/// be searched on the hash itself.
#[tokio::test]
async fn proofs_are_looked_up_by_hash_through_their_key_in_the_generic_plan() -> Result<()> {
    let db = TestDb::create().await?;
    let mut tx = db.pool.begin().await?;
    sqlx::raw_sql("SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL enable_seqscan = off")
        .execute(&mut *tx)
        .await?;
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN {}",
        hailan_api::store::PROOF_INPUTS_SELECT
    )))
    .bind(uuid::Uuid::new_v4())
    .bind(vec!["ab".repeat(32)])
    .fetch_all(&mut *tx)
    .await?;
    let plan = plan.join("\n");
    assert!(
        plan.contains("Index Cond") && plan.contains("proof_hash = ANY"),
        "the proofs are not found through their key by hash:\n{plan}"
    );
    tx.rollback().await?;
    db.drop().await
}

// ------------------------------------------------------------------ limits (issue 16)

/// A database, a clinician, and `hailan-api` with `env` — no broker
/// and no ingest: for what does not need readings.
struct BareApi {
    db: TestDb,
    doc: User,
    api: ApiProcess,
    /// Last: the API prints its log from here when dropped.
    _logs: tempfile::TempDir,
}

async fn bare_api(env: &[(&str, &str)]) -> Result<BareApi> {
    let db = TestDb::create().await?;
    ensure_api_login(&db.pool).await?;
    let logs = tempfile::tempdir()?;
    let doc = user(&db.pool, "CLINICIAN", "Dr Limits").await?;
    let ring = write_key_ring(logs.path())?;
    // No verifying keys: only proof bundles would need them.
    let api = ApiProcess::start_with_env(&db, None, &ring, logs.path(), logs.path(), env).await?;
    Ok(BareApi {
        db,
        doc,
        api,
        _logs: logs,
    })
}

/// `audit_logs` locked by a transaction of the test's own: every request
/// then stops at its audit row (`/api/v1/me` writes one too) until
/// [`AuditLock::release`].
struct AuditLock(sqlx::Transaction<'static, sqlx::Postgres>);

impl AuditLock {
    async fn take(pool: &sqlx::PgPool) -> Result<AuditLock> {
        let mut tx = pool.begin().await?;
        sqlx::query("LOCK TABLE audit_logs IN ACCESS EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        Ok(AuditLock(tx))
    }

    async fn release(self) -> Result<()> {
        Ok(self.0.rollback().await?)
    }
}

/// Requests waiting for the lock on `audit_logs` (`pg_locks` is readable by
/// any role, unlike other roles' rows of `pg_stat_activity`).
async fn audit_lock_waiters(pool: &sqlx::PgPool) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE relation = 'audit_logs'::regclass AND NOT granted",
    )
    .fetch_one(pool)
    .await?)
}

async fn wait_for_audit_lock_waiters(pool: &sqlx::PgPool, n: i64) -> Result<()> {
    let pool = pool.clone();
    eventually(
        WAIT,
        &format!("{n} request(s) waiting on audit_logs"),
        || {
            let pool = pool.clone();
            async move { Ok((audit_lock_waiters(&pool).await? == n).then_some(())) }
        },
    )
    .await
}

fn error_text(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("(not a JSON error: {body})"))
}

/// A chart reads at most `api.max_rows_per_request` readings: a range that
/// holds more is refused with a 400 naming the cap (the read stops at cap +
/// 1 rows); a range within it is drawn. Pages keep paging, `limit` bounded
/// by `max_page`. (On a seeded rig of its own: a second API with a cap of
/// 20 and pages of 10 over [`seed`]'s 24 verified heart-rate readings.)
async fn check_the_row_cap(r: &Rig, doc: &User) -> Result<()> {
    let logs = tempfile::tempdir()?;
    let ring = write_key_ring(logs.path())?;
    let api = ApiProcess::start_with_env(
        &r.db,
        None,
        &ring,
        r.zk.dir.path(),
        logs.path(),
        &[
            ("HAILAN_API__API__MAX_ROWS_PER_REQUEST", "20"),
            ("HAILAN_API__API__MAX_PAGE", "10"),
        ],
    )
    .await?;
    let p = r.patient.id;
    let from = chrono::DateTime::from_timestamp_millis(T0_MS).context("t0")?;
    let series = |to: chrono::DateTime<chrono::Utc>| {
        format!(
            "/api/v1/patients/{p}/series?type=HEART_RATE&bucket=minute&from={}&to={}",
            rfc3339(from),
            rfc3339(to)
        )
    };
    // 24 verified heart-rate readings in the hour: over the cap of 20.
    let (code, body) = api
        .get(&doc.token, &series(from + chrono::Duration::hours(1)))
        .await?;
    assert_eq!(code, 400, "{body}");
    let e = error_text(&body);
    assert!(
        e.contains("more than 20 readings") && e.contains("api.max_rows_per_request"),
        "{e}"
    );
    // The first window alone (16 readings) is within it.
    let s = api
        .json(&doc.token, &series(from + chrono::Duration::seconds(30)))
        .await?;
    assert_eq!(s["readings"], 16, "{s}");
    assert_eq!(s["points"][0]["n"], 16, "{s}");

    // Pages: limit=1000 is served as max_page = 10, and the cursor walks all 25.
    let mut seen = 0;
    let mut cursor: Option<String> = None;
    loop {
        let extra = cursor
            .as_ref()
            .map(|c| format!("&cursor={c}"))
            .unwrap_or_default();
        let page = api.json(&doc.token, &obs_path(p, &extra)).await?;
        let n = observations(&page).len();
        assert!(n <= 10, "{page}");
        seen += n;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, 25);
    let f = api
        .json(
            &doc.token,
            &format!("/fhir/Observation?patient={p}&_count=1000"),
        )
        .await?;
    assert_eq!(f["entry"].as_array().map(Vec::len), Some(10), "{f}");
    check_exports_stream_past_the_cap(&api, r, doc).await
}

/// Exports are not capped: they stream a page (`api.max_page`, here 10) at
/// a time, past `api.max_rows_per_request` (here 20). The pages cut the
/// heart-rate windows (16 and 8 readings), yet every reading is checked
/// whole, every Device and Provenance is written once, and each window
/// proof's Provenance targets all of its Observations. The audit row counts
/// what the export holds.
async fn check_exports_stream_past_the_cap(api: &ApiProcess, r: &Rig, doc: &User) -> Result<()> {
    let p = r.patient.id;
    let (code, csv) = api
        .get(
            &doc.token,
            &format!("/api/v1/patients/{p}/export.csv?type=HEART_RATE"),
        )
        .await?;
    assert_eq!(code, 200, "{csv}");
    let lines: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(lines.len(), 24, "{csv}");
    assert!(lines.iter().all(|l| l.contains(",verified,")), "{csv}");
    let seqs: std::collections::BTreeSet<&str> =
        lines.iter().filter_map(|l| l.split(',').nth(2)).collect();
    assert_eq!(seqs.len(), 24, "each reading once: {csv}");

    let (code, body) = api
        .get(
            &doc.token,
            &format!("/api/v1/patients/{p}/export.fhir.json"),
        )
        .await?;
    assert_eq!(code, 200, "{body}");
    let t: Value = serde_json::from_str(&body).context("the streamed Bundle is one JSON value")?;
    assert_eq!(t["type"], "transaction");
    let kinds = |kind: &str| -> Vec<&Value> {
        t["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["resource"]["resourceType"] == kind)
            .collect()
    };
    let obs: std::collections::HashSet<&str> = kinds("Observation")
        .iter()
        .filter_map(|e| e["fullUrl"].as_str())
        .collect();
    assert_eq!(obs.len(), 25, "24 heart rates and a blood pressure");
    let devices: std::collections::HashSet<&str> = kinds("Device")
        .iter()
        .filter_map(|e| e["fullUrl"].as_str())
        .collect();
    assert_eq!(
        (devices.len(), kinds("Device").len()),
        (3, 3),
        "two sensors, one gateway, once each"
    );
    let provenance = kinds("Provenance");
    let mut targeted: Vec<&str> = Vec::new();
    let mut sizes: Vec<usize> = Vec::new();
    for e in &provenance {
        let targets: Vec<&str> = e["resource"]["target"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["reference"].as_str())
            .collect();
        sizes.push(targets.len());
        targeted.extend(targets);
    }
    sizes.sort_unstable();
    assert_eq!(
        sizes,
        vec![1, 8, 16],
        "one Provenance per proof, each with all its Observations"
    );
    let unique: std::collections::HashSet<&str> = targeted.iter().copied().collect();
    assert_eq!(
        (targeted.len(), unique),
        (25, obs.clone()),
        "every Observation traced once"
    );

    let counted: Vec<(String, i32)> = sqlx::query_as(
        "SELECT action, row_count FROM audit_logs
          WHERE actor_id = $1 AND action IN ('export_csv', 'export_fhir') ORDER BY at",
    )
    .bind(doc.id)
    .fetch_all(&r.db.pool)
    .await?;
    assert_eq!(
        counted,
        vec![
            ("export_csv".to_owned(), 24),
            ("export_fhir".to_owned(), 25)
        ]
    );
    Ok(())
}

/// A statement that runs past `api.statement_timeout_ms` (here: waiting for
/// a lock another transaction holds) is cancelled by PostgreSQL, and the
/// request answers 503 saying so, logged; a request past
/// `api.request_timeout_ms` answers 503 too, naming that key.
#[tokio::test]
async fn slow_requests_answer_503_naming_the_timeout() -> Result<()> {
    let b = bare_api(&[
        ("HAILAN_API__API__STATEMENT_TIMEOUT_MS", "300"),
        ("RUST_LOG", "info"),
    ])
    .await?;
    let lock = AuditLock::take(&b.db.pool).await?;
    let (code, body) = b.api.get(&b.doc.token, "/api/v1/me").await?;
    assert_eq!(code, 503, "{body}");
    assert!(
        error_text(&body).contains("api.statement_timeout_ms"),
        "{body}"
    );
    let log = b.api.log_text();
    assert!(
        log.contains("WARN")
            && log.contains("ran past api.statement_timeout_ms")
            && log.contains("/api/v1/me"),
        "{log}"
    );
    lock.release().await?;
    b.api.json(&b.doc.token, "/api/v1/me").await?;

    // The request timeout, with a statement timeout that would come later.
    let logs = tempfile::tempdir()?;
    let ring = write_key_ring(logs.path())?;
    let slow = ApiProcess::start_with_env(
        &b.db,
        None,
        &ring,
        logs.path(),
        logs.path(),
        &[
            ("HAILAN_API__API__REQUEST_TIMEOUT_MS", "500"),
            ("HAILAN_API__API__STATEMENT_TIMEOUT_MS", "60000"),
        ],
    )
    .await?;
    let lock = AuditLock::take(&b.db.pool).await?;
    let (code, body) = slow.get(&b.doc.token, "/api/v1/me").await?;
    assert_eq!(code, 503, "{body}");
    assert!(
        error_text(&body).contains("api.request_timeout_ms (500 ms)"),
        "{body}"
    );
    lock.release().await?;
    slow.json(&b.doc.token, "/api/v1/me").await?;
    drop(slow);
    drop(b.api);
    b.db.drop().await
}

/// Over `api.max_concurrent_requests` a request waits for a slot (it does
/// not reach the database meanwhile) and is served when one comes free.
#[tokio::test]
async fn a_request_over_the_concurrency_limit_waits_for_a_slot() -> Result<()> {
    let b = bare_api(&[
        ("HAILAN_API__API__MAX_CONCURRENT_REQUESTS", "1"),
        ("HAILAN_API__API__STATEMENT_TIMEOUT_MS", "60000"),
        ("HAILAN_API__API__REQUEST_TIMEOUT_MS", "60000"),
        ("RUST_LOG", "info,hailan_api::limits=debug"),
    ])
    .await?;
    let pool = b.db.pool.clone();
    let lock = AuditLock::take(&pool).await?;
    let port = b.api.port;
    let get_me = |token: String| {
        tokio::spawn(async move { http_get_auth(port, "/api/v1/me", Some(&token)).await })
    };
    // The first takes the only slot and stops at its audit row.
    let first = get_me(b.doc.token.clone());
    wait_for_audit_lock_waiters(&pool, 1).await?;
    // The second waits for the slot, not for the lock.
    let second = get_me(b.doc.token.clone());
    let api = &b.api;
    eventually(
        WAIT,
        "the second request waiting for a slot",
        || async move {
            Ok(api
                .log_text()
                .contains("every request slot is taken")
                .then_some(()))
        },
    )
    .await?;
    assert_eq!(
        audit_lock_waiters(&pool).await?,
        1,
        "the waiting request reached the database"
    );
    assert!(!second.is_finished());
    lock.release().await?;
    for (name, task) in [("first", first), ("second", second)] {
        let (code, body) = task.await??;
        assert_eq!(code, 200, "{name}: {body}");
    }
    assert_eq!(audit_count(&pool, &b.doc).await?, 2);
    drop(b.api);
    b.db.drop().await
}

/// Failed log-ins are logged with the client's address and the reason, never
/// the token; past `api.login_failures_per_minute` the address is answered
/// 429 with Retry-After — a good token too, and before the database is asked.
#[tokio::test]
async fn failed_logins_are_logged_and_limited_per_address() -> Result<()> {
    let b = bare_api(&[
        ("HAILAN_API__API__LOGIN_FAILURES_PER_MINUTE", "3"),
        ("RUST_LOG", "info"),
    ])
    .await?;
    let bad: Vec<String> = (0..4)
        .map(|k| format!("hl_guess-{k}-{}", uuid::Uuid::new_v4()))
        .collect();
    for t in &bad[..3] {
        let (code, body) = b.api.get(t, "/api/v1/patients").await?;
        assert_eq!(code, 401, "{body}");
    }
    // The fourth failure is not even tried.
    let a = http_get_answer(b.api.port, "/api/v1/patients", Some(&bad[3])).await?;
    assert_eq!(a.code, 429, "{a:?}");
    let retry: u64 = a
        .header("retry-after")
        .context("Retry-After")?
        .parse()
        .context("Retry-After in seconds")?;
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(
        error_text(&a.body).contains("api.login_failures_per_minute"),
        "{a:?}"
    );
    // A good token from the same address waits out the minute as well.
    let a = http_get_answer(b.api.port, "/api/v1/me", Some(&b.doc.token)).await?;
    assert_eq!(a.code, 429, "{a:?}");
    assert!(a.header("retry-after").is_some(), "{a:?}");
    assert_eq!(
        audit_count(&b.db.pool, &b.doc).await?,
        0,
        "the database was asked"
    );

    let log = b.api.log_text();
    let failures: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("failed bearer-token authentication"))
        .collect();
    assert_eq!(failures.len(), 3, "{log}");
    for l in &failures {
        assert!(
            l.contains("WARN")
                && l.contains("127.0.0.1")
                && l.contains("unknown, expired or revoked token"),
            "{l}"
        );
    }
    assert!(
        log.contains("too many failed log-ins from this address"),
        "{log}"
    );
    for t in bad.iter().chain([&b.doc.token]) {
        assert!(!log.contains(t.as_str()), "a token reached the log:\n{log}");
    }
    drop(b.api);
    b.db.drop().await
}

/// The page may run only its own inline script and style (by hash), may not
/// be framed and sends no Referer; every other answer forbids everything.
#[tokio::test]
async fn every_answer_carries_the_security_headers() -> Result<()> {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let b = bare_api(&[]).await?;
    let page = http_get_answer(b.api.port, "/", None).await?;
    assert_eq!(page.code, 200);
    let csp = page
        .header("content-security-policy")
        .context("CSP on the page")?;
    let inline = |tag: &str| -> Result<String> {
        let open = format!("<{tag}>");
        let start = page.body.find(&open).context("inline element")? + open.len();
        let len = page.body[start..]
            .find(&format!("</{tag}>"))
            .context("its end")?;
        let digest = Sha256::digest(&page.body.as_bytes()[start..start + len]);
        Ok(format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        ))
    };
    assert!(csp.starts_with("default-src 'self';"), "{csp}");
    assert!(
        csp.contains(&format!("script-src {};", inline("script")?)),
        "{csp}"
    );
    assert!(
        csp.contains(&format!("style-src {};", inline("style")?)),
        "{csp}"
    );
    assert!(
        csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe"),
        "{csp}"
    );
    let refused = http_get_answer(b.api.port, "/api/v1/me", None).await?;
    assert_eq!(refused.code, 401);
    let ok = http_get_answer(b.api.port, "/api/v1/me", Some(&b.doc.token)).await?;
    assert_eq!(ok.code, 200);
    for a in [&page, &refused, &ok] {
        assert_eq!(a.header("referrer-policy"), Some("no-referrer"), "{a:?}");
        assert_eq!(a.header("x-content-type-options"), Some("nosniff"), "{a:?}");
        assert_eq!(a.header("x-frame-options"), Some("DENY"), "{a:?}");
    }
    for a in [&refused, &ok] {
        assert_eq!(
            a.header("content-security-policy"),
            Some("default-src 'none'; frame-ancestors 'none'"),
            "{a:?}"
        );
    }
    drop(b.api);
    b.db.drop().await
}

/// Malformed query strings are a 400 naming the parameter, with or without a
/// token — `date=262142-12-31` used to panic the FHIR search (adding a day
/// overflowed) before authentication.
#[tokio::test]
async fn malformed_parameters_are_a_400_naming_them() -> Result<()> {
    let b = bare_api(&[]).await?;
    let p = uuid::Uuid::new_v4();
    let cases = [
        (
            format!("/fhir/Observation?patient={p}&date=262142-12-31"),
            "date",
        ),
        (
            format!("/fhir/Observation?patient={p}&date=lt-262143-01-01"),
            "date",
        ),
        (
            format!("/fhir/Observation?patient={p}&date=ge2026-13-01"),
            "date",
        ),
        (
            format!("/fhir/Observation?patient={p}&_count=lots"),
            "_count",
        ),
        ("/fhir/Observation?patient=Patient/x".to_owned(), "patient"),
        (
            format!(
                "/api/v1/patients/{p}/series?type=HEART_RATE&from=yesterday&to=2026-12-01T00:00:00Z"
            ),
            "from",
        ),
        (
            format!("/api/v1/patients/{p}/series?type=HEART_RATE&from=2026-12-01T00:00:00Z"),
            "`to`",
        ),
        (
            format!("/api/v1/patients/{p}/observations?limit=-x"),
            "limit",
        ),
        (
            format!("/api/v1/patients/{p}/observations?cursor=1_2"),
            "cursor",
        ),
        (
            format!("/api/v1/patients/{p}/observations?order=newest"),
            "order",
        ),
        (
            format!("/api/v1/patients/{p}/observations?type=PULSE"),
            "type",
        ),
        (
            "/api/v1/patients/not-a-uuid/observations".to_owned(),
            "UUID",
        ),
    ];
    for token in [None, Some(b.doc.token.as_str())] {
        for (path, name) in &cases {
            let (code, body) = http_get_auth(b.api.port, path, token).await?;
            assert_eq!(code, 400, "{path}: {body}");
            let e = error_text(&body);
            assert!(e.contains(name), "{path}: {e}");
        }
    }
    let (code, _) = http_get_auth(b.api.port, "/healthz", None).await?;
    assert_eq!(code, 200, "the API is still up");
    drop(b.api);
    b.db.drop().await
}

/// One proven reading of every data type through FHIR: each Observation —
/// with the search's sensors, gateway and provenance — passes the outside
/// validator (HL7's R4 definitions and the vital-signs profiles), and each
/// carries its data type's code.
#[tokio::test]
async fn an_observation_of_every_data_type_passes_the_outside_validator() -> Result<()> {
    let mut r = rig("gw-api-10").await?;
    let topic = topic::up(r.gw);
    let mut devices: Vec<TestDevice> = DataType::ALL
        .iter()
        .enumerate()
        .map(|(i, t)| TestDevice::new(r.gw, &format!("all-{i}"), *t, 40 + i as u64))
        .collect();
    let registrations = devices.iter().map(|d| enc(&d.registration())).collect();
    r.publisher.publish_all(&topic, registrations).await?;
    let pool = r.db.pool.clone();
    let n = DataType::ALL.len() as i64;
    eventually(WAIT, "registrations", || {
        let pool = pool.clone();
        async move {
            let got: i64 = sqlx::query_scalar("SELECT count(*) FROM iot_devices")
                .fetch_one(&pool)
                .await?;
            Ok((got == n).then_some(()))
        }
    })
    .await?;
    let mut readings = Vec::new();
    for d in &mut devices {
        let slots = plausible_slots(d.data_type);
        readings.push(enc(&d.proven_reading(&r.zk.reading, &slots)?));
    }
    r.publisher.publish_all(&topic, readings).await?;
    wait_rows(&pool, n).await?;
    let p = r.patient.id;
    let (code, body) = r
        .api
        .get(
            &r.patient.token,
            &format!(
                "/fhir/Observation?patient={p}&_include=Observation:device&_revinclude=Provenance:target"
            ),
        )
        .await?;
    assert_eq!(code, 200, "{body}");
    let none: Vec<String> = Vec::new();
    assert_eq!(fhir_profile_errors(&body, r.logs.path())?, none);
    let b: Value = serde_json::from_str(&body)?;
    let codes: std::collections::BTreeSet<String> = b["entry"]
        .as_array()
        .context("entries")?
        .iter()
        .filter(|e| e["resource"]["resourceType"] == "Observation")
        .filter_map(|e| {
            e["resource"]["code"]["coding"][0]["code"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    for t in DataType::ALL {
        let loinc = t.spec().loinc.to_owned();
        assert!(
            codes.contains(&loinc),
            "{t}: no Observation coded {loinc} in {codes:?}"
        );
    }
    Ok(())
}
