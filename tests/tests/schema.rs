//! The schema against the real PostgreSQL: partitions, idempotent inserts,
//! the roles' privileges and the RLS matrix of DESIGN §6.

use anyhow::Result;
use hailan_proto::DataType;
use hailan_tests::TestDb;
use sqlx::{AssertSqlSafe, PgConnection, Row};
use uuid::Uuid;

/// Users, gateway and devices every test here starts from.
struct Fixture {
    patient_a: Uuid,
    patient_b: Uuid,
    device_a: Uuid,
    device_b: Uuid,
}

async fn user(conn: &mut PgConnection, kind: &str) -> Result<Uuid> {
    let id = Uuid::new_v4();
    sqlx::query("INSERT INTO users (id, did, user_kind) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(format!("did:hailan:{id}"))
        .bind(kind)
        .execute(&mut *conn)
        .await?;
    Ok(id)
}

async fn device(conn: &mut PgConnection, owner: Uuid, gateway: &str, name: &str) -> Result<Uuid> {
    sqlx::query("INSERT INTO gateways (id, owner_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(gateway)
        .bind(owner)
        .execute(&mut *conn)
        .await?;
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO iot_devices (user_id, device_id, device_type, gateway_id, bluetooth_address, zk_device_commitment)
         VALUES ($1, $2, 'HEART_RATE', $3, $4, $5) RETURNING id",
    )
    .bind(owner)
    .bind(name)
    .bind(gateway)
    .bind(format!("AA:BB:CC:00:00:{:02X}", name.len()))
    .bind(vec![7u8; 32])
    .fetch_one(&mut *conn)
    .await?;
    Ok(id)
}

async fn fixture(conn: &mut PgConnection) -> Result<Fixture> {
    let patient_a = user(conn, "PATIENT").await?;
    let patient_b = user(conn, "PATIENT").await?;
    let device_a = device(conn, patient_a, "gw-a", "dev-a").await?;
    let device_b = device(conn, patient_b, "gw-b", "dev-b").await?;
    Ok(Fixture {
        patient_a,
        patient_b,
        device_a,
        device_b,
    })
}

/// Insert a reading the way ingest does: as hailan_ingest, idempotent on the key.
/// Returns the number of rows inserted (0 for a redelivery).
async fn insert_reading(
    conn: &mut PgConnection,
    user_id: Uuid,
    device_id: Uuid,
    data_type: &str,
    seq: i64,
    verified: bool,
) -> Result<u64> {
    sqlx::query("SET ROLE hailan_ingest")
        .execute(&mut *conn)
        .await?;
    let result = sqlx::query(
        "INSERT INTO health_data (user_id, device_id, data_type, value, recorded_at, seq, gateway_id, verified, verified_at)
         VALUES ($1, $2, $3, '{\"kid\":\"k\",\"nonce\":\"00\",\"ciphertext\":\"00\"}', now(), $4, 'gw', $5,
                 CASE WHEN $5 THEN now() END)
         ON CONFLICT DO NOTHING",
    )
    .bind(user_id)
    .bind(device_id)
    .bind(data_type)
    .bind(seq)
    .bind(verified)
    .execute(&mut *conn)
    .await;
    sqlx::query("RESET ROLE").execute(&mut *conn).await?;
    Ok(result?.rows_affected())
}

/// Run `sql` as `role` with identity `user` in one transaction; return the seqs seen.
async fn seqs_as(conn: &mut PgConnection, role: &str, user: Option<Uuid>) -> Result<Vec<i64>> {
    sqlx::query("BEGIN").execute(&mut *conn).await?;
    sqlx::query(AssertSqlSafe(format!("SET LOCAL ROLE {role}")))
        .execute(&mut *conn)
        .await?;
    if let Some(u) = user {
        sqlx::query("SELECT set_config('hailan.user_id', $1, true)")
            .bind(u.to_string())
            .execute(&mut *conn)
            .await?;
    }
    let rows = sqlx::query_scalar::<_, i64>("SELECT seq FROM health_data ORDER BY seq")
        .fetch_all(&mut *conn)
        .await;
    sqlx::query("ROLLBACK").execute(&mut *conn).await?;
    Ok(rows?)
}

/// Migration 0008 on a database that already stored BODY_COMPOSITION
/// readings in DEFAULT (sent before the type existed): they move into the new
/// partition instead of making the migration fail. Re-enacted on a fresh
/// database by detaching the partition and forgetting 0008.
#[tokio::test]
async fn body_composition_partition_takes_rows_stored_in_default() -> Result<()> {
    let db = TestDb::create().await?;
    let mut conn = db.pool.acquire().await?;
    let f = fixture(&mut conn).await?;
    for sql in [
        "ALTER TABLE health_data DETACH PARTITION health_data_body_composition",
        "DROP TABLE health_data_body_composition",
        "DELETE FROM _sqlx_migrations WHERE version = 8",
    ] {
        sqlx::query(sql).execute(&mut *conn).await?;
    }
    for seq in [1, 2] {
        insert_reading(
            &mut conn,
            f.patient_a,
            f.device_a,
            "BODY_COMPOSITION",
            seq,
            false,
        )
        .await?;
    }
    let in_default: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM health_data_default WHERE data_type = 'BODY_COMPOSITION'",
    )
    .fetch_one(&mut *conn)
    .await?;
    assert_eq!(in_default, 2);
    hailan_db::migrate(&db.pool).await?;
    let moved: Vec<i64> =
        sqlx::query_scalar("SELECT seq FROM health_data_body_composition ORDER BY seq")
            .fetch_all(&mut *conn)
            .await?;
    assert_eq!(moved, vec![1, 2]);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM health_data_default")
        .fetch_one(&mut *conn)
        .await?;
    assert_eq!(left, 0);
    // The reading key still holds on the attached partition.
    assert_eq!(
        insert_reading(
            &mut conn,
            f.patient_a,
            f.device_a,
            "BODY_COMPOSITION",
            1,
            false
        )
        .await?,
        0
    );
    drop(conn);
    db.drop().await
}

#[tokio::test]
async fn each_data_type_lands_in_its_partition_and_unknown_in_default() -> Result<()> {
    let db = TestDb::create().await?;
    let mut conn = db.pool.acquire().await?;
    let f = fixture(&mut conn).await?;
    for (i, t) in DataType::ALL.iter().enumerate() {
        assert_eq!(
            insert_reading(
                &mut conn,
                f.patient_a,
                f.device_a,
                t.as_str(),
                i as i64,
                true
            )
            .await?,
            1
        );
    }
    assert_eq!(
        insert_reading(&mut conn, f.patient_a, f.device_a, "EAR_WAX_PH", 99, true).await?,
        1
    );

    // The owner reads partitions directly (RLS does not apply there — which
    // is exactly why no other role is granted on partitions).
    for t in DataType::ALL {
        let partition = format!("health_data_{}", t.as_str().to_ascii_lowercase());
        let types: Vec<String> =
            sqlx::query_scalar(AssertSqlSafe(format!("SELECT data_type FROM {partition}")))
                .fetch_all(&mut *conn)
                .await?;
        assert_eq!(types, vec![t.as_str().to_owned()], "{partition}");
    }
    let default: Vec<String> = sqlx::query_scalar("SELECT data_type FROM health_data_default")
        .fetch_all(&mut *conn)
        .await?;
    assert_eq!(default, vec!["EAR_WAX_PH".to_owned()]);

    let strategy: String = sqlx::query_scalar("SELECT pg_get_partkeydef('health_data'::regclass)")
        .fetch_one(&mut *conn)
        .await?;
    assert_eq!(strategy, "LIST (data_type)");
    let summary = hailan_db::schema_summary(&db.pool).await?;
    // One per data type, and DEFAULT.
    assert_eq!(summary.partitions.len(), DataType::ALL.len() + 1);
    assert!(summary.rls_enabled && summary.rls_forced);
    drop(conn);
    db.drop().await
}

#[tokio::test]
async fn redelivered_reading_is_a_no_op() -> Result<()> {
    let db = TestDb::create().await?;
    let mut conn = db.pool.acquire().await?;
    let f = fixture(&mut conn).await?;
    assert_eq!(
        insert_reading(&mut conn, f.patient_a, f.device_a, "HEART_RATE", 1, true).await?,
        1
    );
    assert_eq!(
        insert_reading(&mut conn, f.patient_a, f.device_a, "HEART_RATE", 1, true).await?,
        0
    );
    // Same seq on another device or data type is a different reading.
    assert_eq!(
        insert_reading(&mut conn, f.patient_a, f.device_a, "SPO2", 1, true).await?,
        1
    );
    assert_eq!(
        insert_reading(&mut conn, f.patient_b, f.device_b, "HEART_RATE", 1, true).await?,
        1
    );

    // Naming the conflict target would need a SELECT policy for ingest,
    // which it deliberately does not have (see migrations/0002).
    sqlx::query("SET ROLE hailan_ingest")
        .execute(&mut *conn)
        .await?;
    let named = sqlx::query(
        "INSERT INTO health_data (user_id, device_id, data_type, value, recorded_at, seq, gateway_id)
         VALUES ($1, $2, 'HEART_RATE', '{}', now(), 1, 'gw')
         ON CONFLICT (user_id, device_id, data_type, seq) DO NOTHING",
    )
    .bind(f.patient_a)
    .bind(f.device_a)
    .execute(&mut *conn)
    .await;
    assert!(
        named.is_err(),
        "ingest must not be able to name a conflict target"
    );
    // Without ON CONFLICT the duplicate is refused by the unique key.
    let dup = sqlx::query(
        "INSERT INTO health_data (user_id, device_id, data_type, value, recorded_at, seq, gateway_id)
         VALUES ($1, $2, 'HEART_RATE', '{}', now(), 1, 'gw')",
    )
    .bind(f.patient_a)
    .bind(f.device_a)
    .execute(&mut *conn)
    .await;
    let err = dup.expect_err("duplicate reading must violate the unique key");
    assert!(err.to_string().contains("health_data"), "{err}");
    sqlx::query("RESET ROLE").execute(&mut *conn).await?;

    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM health_data_heart_rate")
        .fetch_one(&mut *conn)
        .await?;
    assert_eq!(rows, 2);
    drop(conn);
    db.drop().await
}

#[tokio::test]
async fn ingest_role_cannot_read_values_or_partitions() -> Result<()> {
    let db = TestDb::create().await?;
    let mut conn = db.pool.acquire().await?;
    let f = fixture(&mut conn).await?;
    insert_reading(&mut conn, f.patient_a, f.device_a, "HEART_RATE", 1, true).await?;

    for (role, sql) in [
        ("hailan_ingest", "SELECT value FROM health_data"),
        ("hailan_ingest", "SELECT * FROM health_data"),
        ("hailan_ingest", "SELECT count(seq) FROM health_data"),
        ("hailan_ingest", "SELECT seq FROM health_data_heart_rate"),
        ("hailan_patient", "SELECT seq FROM health_data_heart_rate"),
        ("hailan_clinician", "SELECT value FROM health_data_default"),
        ("hailan_clinician", "UPDATE health_data SET verified = true"),
        ("hailan_patient", "DELETE FROM health_data"),
    ] {
        sqlx::query("BEGIN").execute(&mut *conn).await?;
        sqlx::query(AssertSqlSafe(format!("SET LOCAL ROLE {role}")))
            .execute(&mut *conn)
            .await?;
        let err = sqlx::query(sql).execute(&mut *conn).await.expect_err(sql);
        sqlx::query("ROLLBACK").execute(&mut *conn).await?;
        let code = err
            .as_database_error()
            .and_then(|e| e.code())
            .map(|c| c.into_owned());
        assert_eq!(code.as_deref(), Some("42501"), "{role}: {sql}: {err}");
    }

    // Ingest keeps device state current.
    sqlx::query("SET ROLE hailan_ingest")
        .execute(&mut *conn)
        .await?;
    let updated = sqlx::query(
        "UPDATE iot_devices SET battery_level = 81, last_seq = 1, last_sync = now(),
                sync_status = 'SYNCED', connection_state = 'CONNECTED', rssi = -60
          WHERE id = $1",
    )
    .bind(f.device_a)
    .execute(&mut *conn)
    .await?;
    sqlx::query("RESET ROLE").execute(&mut *conn).await?;
    assert_eq!(updated.rows_affected(), 1);
    drop(conn);
    db.drop().await
}

#[tokio::test]
async fn rls_matrix_patients_and_clinicians() -> Result<()> {
    let db = TestDb::create().await?;
    let mut conn = db.pool.acquire().await?;
    let f = fixture(&mut conn).await?;
    // Patient A: verified HR (seq 1), unverified HR (2), verified BP (3).
    insert_reading(&mut conn, f.patient_a, f.device_a, "HEART_RATE", 1, true).await?;
    insert_reading(&mut conn, f.patient_a, f.device_a, "HEART_RATE", 2, false).await?;
    insert_reading(
        &mut conn,
        f.patient_a,
        f.device_a,
        "BLOOD_PRESSURE",
        3,
        true,
    )
    .await?;
    // Patient B: verified HR (seq 10).
    insert_reading(&mut conn, f.patient_b, f.device_b, "HEART_RATE", 10, true).await?;

    let active = user(&mut conn, "CLINICIAN").await?;
    let none = user(&mut conn, "CLINICIAN").await?;
    let expired = user(&mut conn, "CLINICIAN").await?;
    let revoked = user(&mut conn, "CLINICIAN").await?;
    let hr_only = user(&mut conn, "CLINICIAN").await?;
    let future_expiry = user(&mut conn, "CLINICIAN").await?;
    for (clin, types, expires, revoked_at) in [
        (active, None, None, None),
        (expired, None, Some("now() - interval '1 hour'"), None),
        (revoked, None, None, Some("now() - interval '1 minute'")),
        (hr_only, Some(vec!["HEART_RATE".to_owned()]), None, None),
        (future_expiry, None, Some("now() + interval '1 day'"), None),
    ] {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO care_grants (patient_id, clinician_id, data_types, expires_at, revoked_at)
             VALUES ($1, $2, $3, {}, {})",
            expires.unwrap_or("NULL"),
            revoked_at.unwrap_or("NULL")
        )))
        .bind(f.patient_a)
        .bind(clin)
        .bind(types)
        .execute(&mut *conn)
        .await?;
    }

    let cases: [(&str, Option<Uuid>, Vec<i64>); 10] = [
        ("hailan_patient", Some(f.patient_a), vec![1, 2, 3]),
        ("hailan_patient", Some(f.patient_b), vec![10]),
        ("hailan_patient", None, vec![]),
        ("hailan_clinician", Some(active), vec![1, 3]),
        ("hailan_clinician", Some(none), vec![]),
        ("hailan_clinician", Some(expired), vec![]),
        ("hailan_clinician", Some(revoked), vec![]),
        ("hailan_clinician", Some(hr_only), vec![1]),
        ("hailan_clinician", Some(future_expiry), vec![1, 3]),
        // A clinician identity used with the patient role sees only "own" rows: none.
        ("hailan_patient", Some(active), vec![]),
    ];
    for (role, who, expected) in cases {
        assert_eq!(
            seqs_as(&mut conn, role, who).await?,
            expected,
            "{role} as {who:?}"
        );
    }
    // The API role itself may not read health data until it assumes a caller's role.
    assert!(
        seqs_as(&mut conn, "hailan_api", Some(f.patient_a))
            .await
            .is_err()
    );

    // Devices follow the same grants.
    sqlx::query("BEGIN").execute(&mut *conn).await?;
    sqlx::query("SET LOCAL ROLE hailan_clinician")
        .execute(&mut *conn)
        .await?;
    sqlx::query("SELECT set_config('hailan.user_id', $1, true)")
        .bind(active.to_string())
        .execute(&mut *conn)
        .await?;
    let devices: Vec<Uuid> = sqlx::query("SELECT id FROM iot_devices")
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| r.get("id"))
        .collect();
    sqlx::query("ROLLBACK").execute(&mut *conn).await?;
    assert_eq!(devices, vec![f.device_a]);
    drop(conn);
    db.drop().await
}

#[tokio::test]
async fn migrations_are_idempotent() -> Result<()> {
    let db = TestDb::create().await?;
    hailan_db::migrate(&db.pool).await?;
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&db.pool)
        .await?;
    assert_eq!(applied as usize, hailan_db::MIGRATOR.iter().count());
    db.drop().await
}

/// Link truth (0009): ingest records when a gateway went offline, on the
/// gateway and on its devices; clinicians and patients read it through
/// `iot_devices`' own policies and still cannot read `gateways`.
#[tokio::test]
async fn link_truth_columns_follow_the_device_policies() -> Result<()> {
    let db = TestDb::create().await?;
    let mut conn = db.pool.acquire().await?;
    let f = fixture(&mut conn).await?;
    let clinician = user(&mut conn, "CLINICIAN").await?;
    sqlx::query("INSERT INTO care_grants (patient_id, clinician_id) VALUES ($1, $2)")
        .bind(f.patient_a)
        .bind(clinician)
        .execute(&mut *conn)
        .await?;

    sqlx::query("BEGIN").execute(&mut *conn).await?;
    sqlx::query("SET LOCAL ROLE hailan_ingest")
        .execute(&mut *conn)
        .await?;
    let gw = sqlx::query(
        "UPDATE gateways SET status = 'OFFLINE', offline_since = now(), last_seen = now() WHERE id = 'gw-a'",
    )
    .execute(&mut *conn)
    .await?;
    let devices = sqlx::query(
        "UPDATE iot_devices SET connection_state = 'UNKNOWN', gateway_offline_since = now(),
                state_observed_at = now(), needs_repair = true
          WHERE gateway_id = 'gw-a'",
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query("COMMIT").execute(&mut *conn).await?;
    assert_eq!((gw.rows_affected(), devices.rows_affected()), (1, 1));

    // Ingest may change a gateway's status, never its owner.
    sqlx::query("BEGIN").execute(&mut *conn).await?;
    sqlx::query("SET LOCAL ROLE hailan_ingest")
        .execute(&mut *conn)
        .await?;
    let err = sqlx::query("UPDATE gateways SET owner_id = $1")
        .bind(f.patient_b)
        .execute(&mut *conn)
        .await
        .expect_err("owner_id is not ingest's");
    sqlx::query("ROLLBACK").execute(&mut *conn).await?;
    let code = err.as_database_error().and_then(|e| e.code());
    assert_eq!(code.as_deref(), Some("42501"), "{err}");

    for (role, who, expected) in [
        ("hailan_clinician", clinician, vec!["dev-a"]),
        ("hailan_patient", f.patient_a, vec!["dev-a"]),
        ("hailan_patient", f.patient_b, vec![]),
    ] {
        sqlx::query("BEGIN").execute(&mut *conn).await?;
        sqlx::query(AssertSqlSafe(format!("SET LOCAL ROLE {role}")))
            .execute(&mut *conn)
            .await?;
        sqlx::query("SELECT set_config('hailan.user_id', $1, true)")
            .bind(who.to_string())
            .execute(&mut *conn)
            .await?;
        let rows: Vec<(String, bool, Option<bool>)> = sqlx::query_as(
            "SELECT device_id, gateway_offline_since IS NOT NULL, needs_repair FROM iot_devices
              WHERE gateway_offline_since IS NOT NULL ORDER BY device_id",
        )
        .fetch_all(&mut *conn)
        .await?;
        let gateways = sqlx::query("SELECT offline_since FROM gateways")
            .execute(&mut *conn)
            .await;
        sqlx::query("ROLLBACK").execute(&mut *conn).await?;
        let seen: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(seen, expected, "{role}");
        assert!(rows.iter().all(|r| r.1 && r.2 == Some(true)), "{role}");
        let code = gateways
            .expect_err("gateways is not readable")
            .as_database_error()
            .and_then(|e| e.code())
            .map(|c| c.into_owned());
        assert_eq!(code.as_deref(), Some("42501"), "{role}");
    }
    drop(conn);
    db.drop().await
}
