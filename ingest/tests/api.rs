//! The clinician API end to end: readings are proven by test devices, go
//! through Mosquitto and the real `hailan-ingest run` into PostgreSQL, and
//! are read back through `hailan-ingest api` (connected as a login that is
//! only a member of `hailan_api`). Tamper tests change stored rows afterwards.

use anyhow::{Context, Result};
use hailan_proto::envelope::{self, Body, Envelope};
use hailan_proto::{DataType, topic};
use hailan_tests::api::{ApiProcess, User, ensure_api_login, http_get_auth, user, write_key_ring};
use hailan_tests::{
    DevZk, IngestProcess, Publisher, T0_MS, TestDb, TestDevice, count_readings, eventually,
    plausible_slots,
};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_hailan-ingest");
const WAIT: Duration = Duration::from_secs(60);

fn enc(e: &Envelope) -> Vec<u8> {
    envelope::encode(e)
}

/// A reading the gateway could not prove (stored unverified).
fn unproven(dev: &mut TestDevice, value: u32) -> Vec<u8> {
    let seq = dev.next_seq;
    dev.next_seq += 1;
    let t = T0_MS + 1000 * seq as i64;
    let header = hailan_proto::ReadingHeader {
        gateway_id: &dev.gateway_id,
        device_id: &dev.device_id,
        data_type: dev.data_type.as_str(),
        seq,
        recorded_at_ms: t,
    };
    let value = hailan_proto::seal::SealedValue {
        slots: vec![value],
        blinding: [0; 32],
        position: 0,
        original_unit: None,
        extras: Default::default(),
    };
    let sealed = hailan_proto::seal::seal(&dev.key, &header, &value, &mut dev.rng);
    enc(&Envelope {
        v: 1,
        gateway_id: dev.gateway_id.clone(),
        sent_at_ms: t,
        body: Body::Readings(envelope::ReadingBatch {
            device_id: dev.device_id.clone(),
            groups: vec![envelope::ProvenGroup {
                kind: envelope::ProofKind::Reading,
                key_id: [0; 32],
                commitment: [0; 32],
                proof: None,
                no_proof_reason: Some("test: not provable".into()),
                readings: vec![envelope::Reading {
                    seq,
                    data_type: dev.data_type.as_str().into(),
                    recorded_at_ms: t,
                    sealed,
                }],
            }],
        }),
    })
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

async fn rig(gw: &'static str) -> Result<Rig> {
    let db = TestDb::create().await?;
    ensure_api_login(&db.pool).await?;
    let zk = DevZk::new()?;
    let logs = tempfile::tempdir()?;
    let patient = user(&db.pool, "PATIENT", "Pat Example").await?;
    hailan_ingest::admin::enrol_gateway(&db.pool, gw, &patient.did, None).await?;
    let ingest = IngestProcess::start(Path::new(BIN), &db, &zk, &[gw], logs.path())?;
    let publisher = Publisher::connect(gw).await?;
    let ring = write_key_ring(logs.path())?;
    let api =
        ApiProcess::start(Path::new(BIN), &db, None, &ring, zk.dir.path(), logs.path()).await?;
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
        .publish_all(&topic, payloads.drain(..).collect())
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
    payloads.push(unproven(&mut hr, 99));
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
    // Cursor pagination walks the same rows.
    let mut seen = 0;
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
                &format!("/api/v1/patients/{p}/observations?limit=7{extra}"),
            )
            .await?;
        full_reads += 1;
        seen += observations(&page).len();
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, 25);

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
    sqlx::query("UPDATE api_tokens SET revoked_at = now() WHERE user_id = $1")
        .bind(none.id)
        .execute(&pool)
        .await?;
    let (code, _) = r.api.get(&none.token, "/api/v1/patients").await?;
    assert_eq!(code, 401);
    assert_eq!(audit_count(&pool, &none).await?, 3);
    drop(r.api);
    r.db.drop().await
}
