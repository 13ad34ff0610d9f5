//! Ingest keeps going whatever it is sent (real Mosquitto and PostgreSQL,
//! the `hailan-ingest run` binary): every message ends as rows or as
//! quarantine, never nowhere, and the stream never stops.
//!
//! - the hostile corpus, generated from `hailan_proto::columns`: for every
//!   column an envelope reaches, a message that exceeds it by one unit,
//!   mixed into good traffic;
//! - the column table against the migrated schema (drift in either fails);
//! - a message PostgreSQL refuses (a column narrower than the table says) is
//!   isolated as `unstorable` and the rest commits; if even its quarantine
//!   row is refused, its payload alone is held;
//! - a `rate_limited` row that cannot be stored does not stop the replay of
//!   the others;
//! - SIGTERM while PostgreSQL is gone ends the process within 5 s, and
//!   nothing unacknowledged is lost.

use anyhow::{Context, Result, ensure};
use hailan_proto::columns::{self, MAX_TIME_MS, MIN_TIME_MS, SqlType};
use hailan_proto::envelope::{self, Body, Envelope};
use hailan_proto::{DataType, topic};
use hailan_tests::{
    DevZk, IngestOptions, IngestProcess, PrivatePostgres, Publisher, TestDb, TestDevice,
    count_readings, enrol, eventually,
};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::path::Path;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_hailan-ingest");
const WAIT: Duration = Duration::from_secs(60);
/// A column narrower than `hailan_proto::columns` says (drift, or a check
/// nobody told the envelope about): a 20-character model passes `decode`
/// and PostgreSQL refuses it.
const NARROW_MODEL: &str = "ALTER TABLE iot_devices ALTER COLUMN model TYPE varchar(8)";

fn enc(e: &Envelope) -> Vec<u8> {
    envelope::encode(e)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Wait until `pool` holds at least `n` readings.
async fn wait_readings(pool: &PgPool, n: i64) -> Result<()> {
    eventually(WAIT, &format!("{n} readings"), || async move {
        Ok(count_readings(pool, "")
            .await
            .is_ok_and(|c| c >= n)
            .then_some(()))
    })
    .await
}

/// The (reason, detail, gateway) of the quarantine row holding `payload`,
/// once there is one.
async fn held(pool: &PgPool, payload: &[u8]) -> Result<(String, String, Option<String>)> {
    let sha = sha256_hex(payload);
    eventually(WAIT, &format!("quarantine row {sha}"), || {
        let sha = sha.clone();
        async move {
            Ok(sqlx::query_as::<_, (String, String, Option<String>)>(
                "SELECT reason, detail, gateway_id FROM rejected_readings WHERE payload_sha256 = $1",
            )
            .bind(&sha)
            .fetch_optional(pool)
            .await?)
        }
    })
    .await
}

/// What the consumer tests start from: a fresh database (changed first by
/// `alter`, run as its owner), `gw` enrolled, development keys, a consumer
/// for `gw` (with `env` settings), a publisher as `gw`, and the device
/// `good` registered. Bind every field of it: one left unbound is dropped
/// at once (the consumer killed, its log and keys deleted).
struct Rig {
    db: TestDb,
    zk: DevZk,
    _logs: tempfile::TempDir,
    ingest: IngestProcess,
    publisher: Publisher,
    good: TestDevice,
}

async fn rig(gw: &str, alter: &[&str], env: &[(&str, &str)], good: TestDevice) -> Result<Rig> {
    let db = TestDb::create().await?;
    for sql in alter {
        sqlx::query(sqlx::AssertSqlSafe(*sql))
            .execute(&db.pool)
            .await?;
    }
    let zk = DevZk::new()?;
    let logs = tempfile::tempdir()?;
    enrol(&db.pool, gw).await?;
    let opts = IngestOptions {
        env,
        ..Default::default()
    };
    let ingest = IngestProcess::start_opts(Path::new(BIN), &db, &zk, &[gw], logs.path(), opts)?;
    let mut publisher = Publisher::connect(gw).await?;
    publisher.register(&db.pool, &[&good]).await?;
    Ok(Rig {
        db,
        zk,
        _logs: logs,
        ingest,
        publisher,
        good,
    })
}

// ------------------------------------------------------------------ the corpus

/// A registration of a fresh device, changed by `edit`.
fn registration_with(
    gw: &str,
    n: usize,
    edit: impl FnOnce(&mut envelope::Registration),
) -> Vec<u8> {
    let d = TestDevice::new(
        gw,
        &format!("dev-h-{n}"),
        DataType::BloodPressure,
        500 + n as u64,
    );
    let mut e = d.registration();
    let Body::Registration(r) = &mut e.body else {
        unreachable!("a registration")
    };
    edit(r);
    enc(&e)
}

/// A one-reading batch of `dev`, changed by `edit`.
fn reading_with(dev: &mut TestDevice, edit: impl FnOnce(&mut Envelope)) -> Vec<u8> {
    let mut e = dev.unproven_reading(&[70]);
    edit(&mut e);
    enc(&e)
}

fn first_reading(e: &mut Envelope) -> &mut hailan_proto::Reading {
    let Body::Readings(b) = &mut e.body else {
        unreachable!("readings")
    };
    &mut b.groups[0].readings[0]
}

/// The envelope as a CBOR value, `key` of its body's inner map set to
/// `value` — for numbers the Rust types cannot hold.
fn cbor_body_field(e: &Envelope, key: &str, value: ciborium::Value) -> Result<Vec<u8>> {
    let mut v: ciborium::Value = ciborium::Value::serialized(e)?;
    let body = v
        .as_map_mut()
        .and_then(|m| m.iter_mut().find(|(k, _)| k.as_text() == Some("body")))
        .and_then(|(_, b)| b.as_map_mut())
        .and_then(|m| m.first_mut())
        .and_then(|(_, inner)| inner.as_map_mut())
        .context("envelope body map")?;
    let slot = body
        .iter_mut()
        .find(|(k, _)| k.as_text() == Some(key))
        .with_context(|| format!("body field {key}"))?;
    slot.1 = value;
    let mut out = Vec::new();
    ciborium::into_writer(&v, &mut out)?;
    Ok(out)
}

/// For every field an envelope stores, messages one unit past its column:
/// (what, the field path the refusal must name, payload).
fn hostile_corpus(gw: &str, dev: &mut TestDevice) -> Result<Vec<(String, &'static str, Vec<u8>)>> {
    let mut out: Vec<(String, &'static str, Vec<u8>)> = Vec::new();
    let mut n = 0;
    let mut next = || {
        n += 1;
        n
    };
    type Setter = fn(&mut envelope::Registration, String);
    let texts: [(&columns::Field, Setter); 7] = [
        (&columns::NAME, |r, s| r.name = Some(s)),
        (&columns::MANUFACTURER, |r, s| r.manufacturer = Some(s)),
        (&columns::MODEL, |r, s| r.model = Some(s)),
        (&columns::SERIAL, |r, s| r.serial = Some(s)),
        (&columns::FIRMWARE_VERSION, |r, s| {
            r.firmware_version = Some(s)
        }),
        (&columns::HARDWARE_VERSION, |r, s| {
            r.hardware_version = Some(s)
        }),
        (&columns::BLUETOOTH_ADDRESS, |r, s| r.bluetooth_address = s),
    ];
    for (field, set) in texts {
        let max = field.max_chars().context("a varchar field")?;
        // One character too many (two bytes each: characters are counted).
        let long = "é".repeat(max + 1);
        out.push((
            format!("{} of {} characters", field.path, max + 1),
            field.path,
            registration_with(gw, next(), |r| set(r, long)),
        ));
        out.push((
            format!("{} with a NUL", field.path),
            field.path,
            registration_with(gw, next(), |r| set(r, "Omron\0\0\0".into())),
        ));
    }
    let type_max = columns::DATA_TYPE.max_chars().context("data type width")?;
    let long_type = "A".repeat(type_max + 1);
    out.push((
        "device_type one character too long".into(),
        columns::DEVICE_TYPE.path,
        registration_with(gw, next(), |r| r.device_type = long_type.clone()),
    ));
    out.push((
        "a data_types element one character too long".into(),
        columns::DATA_TYPES.path,
        registration_with(gw, next(), |r| r.data_types = vec![long_type.clone()]),
    ));
    out.push((
        "paired_at one millisecond too late".into(),
        columns::PAIRED_AT.path,
        registration_with(gw, next(), |r| r.paired_at_ms = MAX_TIME_MS + 1),
    ));
    out.push((
        "reading data_type one character too long".into(),
        columns::DATA_TYPE.path,
        reading_with(dev, |e| first_reading(e).data_type = long_type.clone()),
    ));
    out.push((
        "recorded_at one millisecond too late".into(),
        columns::RECORDED_AT.path,
        reading_with(dev, |e| first_reading(e).recorded_at_ms = MAX_TIME_MS + 1),
    ));
    out.push((
        "recorded_at one millisecond too early".into(),
        columns::RECORDED_AT.path,
        reading_with(dev, |e| first_reading(e).recorded_at_ms = MIN_TIME_MS - 1),
    ));
    out.push((
        "seq one past bigint".into(),
        columns::SEQ.path,
        reading_with(dev, |e| first_reading(e).seq = i64::MAX as u64 + 1),
    ));
    out.push((
        "sent_at one millisecond too early".into(),
        columns::SENT_AT.path,
        reading_with(dev, |e| e.sent_at_ms = MIN_TIME_MS - 1),
    ));
    out.push((
        "no_proof_reason with a NUL".into(),
        columns::NO_PROOF_REASON.path,
        reading_with(dev, |e| {
            if let Body::Readings(b) = &mut e.body {
                b.groups[0].no_proof_reason = Some("low battery\0".into());
            }
        }),
    ));
    let state = dev.state(50, hailan_tests::T0_MS);
    let mut late = state.clone();
    if let Body::DeviceState(s) = &mut late.body {
        s.observed_at_ms = MAX_TIME_MS + 1;
    }
    out.push((
        "observed_at one millisecond too late".into(),
        columns::OBSERVED_AT.path,
        enc(&late),
    ));
    let mut fw = state.clone();
    if let Body::DeviceState(s) = &mut fw.body {
        s.firmware_version = Some("9".repeat(51));
    }
    out.push((
        "device state firmware one character too long".into(),
        columns::FIRMWARE_VERSION.path,
        enc(&fw),
    ));
    out.push((
        "battery past its CHECK".into(),
        columns::BATTERY_LEVEL.path,
        cbor_body_field(&state, "battery_level", 101.into())?,
    ));
    out.push((
        "rssi one past smallint".into(),
        "rssi",
        cbor_body_field(&state, "rssi", (i64::from(i16::MAX) + 1).into())?,
    ));
    Ok(out)
}

/// The table of `hailan_proto::columns` is the migrated schema: a column
/// widened or narrowed in a migration without the table, or the reverse,
/// fails here; and both ends of the time range are storable.
#[tokio::test]
async fn the_column_table_is_the_migrated_schema() -> Result<()> {
    let db = TestDb::create().await?;
    for field in columns::STORED {
        ensure!(!field.columns.is_empty(), "{} names no column", field.path);
        for c in field.columns {
            let (data_type, max_len): (String, Option<i32>) = sqlx::query_as(
                "SELECT data_type, character_maximum_length FROM information_schema.columns
                  WHERE table_schema = 'public' AND table_name = $1 AND column_name = $2",
            )
            .bind(c.table)
            .bind(c.name)
            .fetch_optional(&db.pool)
            .await?
            .with_context(|| format!("{}.{} is not in the schema", c.table, c.name))?;
            assert_eq!(
                data_type,
                c.ty.information_schema_name(),
                "{}.{} ({})",
                c.table,
                c.name,
                field.path
            );
            assert_eq!(
                max_len.map(|n| n as usize),
                c.ty.max_chars(),
                "{}.{}: the migration and hailan_proto::columns disagree on its width",
                c.table,
                c.name
            );
        }
    }
    // Every varchar column of the tables an envelope writes is in the table
    // (a new column reached by a new field must be added to it).
    let reached: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text FROM information_schema.columns
          WHERE table_schema = 'public' AND data_type = 'character varying'
            AND table_name IN ('iot_devices', 'health_data', 'rejected_readings')
            AND column_name NOT IN ('sync_status', 'connection_state', 'unit', 'zk_proof_hash',
                                    'ipfs_data_cid', 'reason')",
    )
    .fetch_all(&db.pool)
    .await?;
    for (table, column) in reached {
        let known = columns::STORED
            .iter()
            .flat_map(|f| f.columns)
            .any(|c| c.table == table && c.name == column);
        assert!(
            known,
            "{table}.{column} is written from the envelope but not in hailan_proto::columns"
        );
    }
    let (lo, hi): (String, String) = sqlx::query_as(
        "SELECT to_char(to_timestamp($1 / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS'),
                to_char(to_timestamp($2 / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS')",
    )
    .bind(MIN_TIME_MS as f64)
    .bind(MAX_TIME_MS as f64)
    .fetch_one(&db.pool)
    .await?;
    assert_eq!(lo, "0001-01-01 00:00:00.000");
    assert_eq!(hi, "9999-12-31 23:59:59.999");
    assert!(matches!(columns::SEQ.columns[0].ty, SqlType::BigInt));
    db.drop().await
}

/// Every message of the corpus, mixed into 100 good ones: all good ones
/// stored, each bad one quarantined naming its field, within 10 s.
#[tokio::test]
async fn a_hostile_corpus_from_the_schema_never_stops_the_stream() -> Result<()> {
    let gw = "gw-hostile-1";
    let good = TestDevice::new(gw, "dev-h-good", DataType::HeartRate, 400);
    // Every field bound: an unbound one would be dropped here (the consumer killed).
    let Rig {
        db,
        zk: _zk,
        _logs,
        ingest: _ingest,
        mut publisher,
        mut good,
    } = rig(gw, &[], &[], good).await?;
    let mut bad_dev = TestDevice::new(gw, "dev-h-good", DataType::HeartRate, 400);
    bad_dev.next_seq = 1_000;
    let corpus = hostile_corpus(gw, &mut bad_dev)?;

    // Good and bad interleaved, so they share batches.
    let mut payloads = Vec::new();
    let every = 100 / corpus.len() + 1;
    let mut bad = corpus.iter();
    for i in 0..100_usize {
        payloads.push(enc(&good.unproven_reading(&[60 + (i % 40) as u32])));
        if i % every == 0
            && let Some((_, _, p)) = bad.next()
        {
            payloads.push(p.clone());
        }
    }
    payloads.extend(bad.map(|(_, _, p)| p.clone()));
    let started = Instant::now();
    publisher.publish_all(&topic::up(gw), payloads).await?;

    wait_readings(&db.pool, 100).await?;
    for (what, field, payload) in &corpus {
        let (reason, detail, _) = held(&db.pool, payload).await?;
        assert!(
            reason == "undecodable" || reason == "unstorable",
            "{what}: quarantined as {reason} ({detail})"
        );
        assert!(
            detail.contains(field),
            "{what}: the refusal names no {field}: {detail}"
        );
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "the corpus took {took:?}");
    assert_eq!(
        count_readings(&db.pool, "").await?,
        100,
        "only the good readings are stored"
    );
    let registered: i64 = sqlx::query_scalar("SELECT count(*) FROM iot_devices")
        .fetch_one(&db.pool)
        .await?;
    assert_eq!(registered, 1, "no hostile registration is stored");
    // The consumer is still there.
    publisher
        .publish_all(&topic::up(gw), vec![enc(&good.unproven_reading(&[61]))])
        .await?;
    wait_readings(&db.pool, 101).await?;
    db.drop().await
}

/// A database narrower than the table (drift, or a check nobody told the
/// envelope about): the message it refuses is found by bisection and held
/// `unstorable` with PostgreSQL's words; everything around it commits.
#[tokio::test]
async fn a_message_the_database_refuses_is_isolated_and_the_rest_commits() -> Result<()> {
    let gw = "gw-hostile-2";
    let good = TestDevice::new(gw, "dev-h2-good", DataType::HeartRate, 410);
    let Rig {
        db,
        zk: _zk,
        _logs,
        ingest,
        mut publisher,
        mut good,
    } = rig(gw, &[NARROW_MODEL], &[], good).await?;

    let poison = registration_with(gw, 2_000, |r| r.model = Some("Model 20 characters!".into()));
    let mut payloads: Vec<Vec<u8>> = (0..50)
        .map(|_| enc(&good.unproven_reading(&[70])))
        .collect();
    payloads.push(poison.clone());
    payloads.extend((0..50).map(|_| enc(&good.unproven_reading(&[71]))));
    publisher.publish_all(&topic::up(gw), payloads).await?;

    wait_readings(&db.pool, 100).await?;
    let (reason, detail, gateway) = held(&db.pool, &poison).await?;
    assert_eq!(reason, "unstorable", "{detail}");
    assert!(detail.contains("too long"), "PostgreSQL's words: {detail}");
    assert_eq!(gateway.as_deref(), Some(gw));
    // Still consuming, and it said what it did.
    publisher
        .publish_all(&topic::up(gw), vec![enc(&good.unproven_reading(&[72]))])
        .await?;
    wait_readings(&db.pool, 101).await?;
    assert_eq!(count_readings(&db.pool, "").await?, 101);
    assert!(
        ingest
            .log_text()
            .contains("splitting it to find the messages at fault")
    );
    db.drop().await
}

/// A message whose own quarantine row is refused too is held with its topic
/// and payload alone, and the stream flows on.
#[tokio::test]
async fn a_message_whose_quarantine_row_is_refused_keeps_its_payload() -> Result<()> {
    let gw = "gw-hostile-3";
    let good = TestDevice::new(gw, "dev-h3-good", DataType::HeartRate, 420);
    // Every quarantine row naming this gateway is now refused.
    let narrow_gateway = "ALTER TABLE rejected_readings ALTER COLUMN gateway_id TYPE varchar(3)";
    let Rig {
        db,
        zk: _zk,
        _logs,
        ingest: _ingest,
        mut publisher,
        mut good,
    } = rig(gw, &[narrow_gateway], &[], good).await?;
    // A reading of a device nobody registered: quarantined `unknown_device`
    // with its gateway — which the narrowed column refuses.
    let mut stranger = TestDevice::new(gw, "dev-h3-stranger", DataType::HeartRate, 421);
    let orphan = enc(&stranger.unproven_reading(&[70]));
    let mut payloads: Vec<Vec<u8>> = (0..20)
        .map(|_| enc(&good.unproven_reading(&[70])))
        .collect();
    payloads.push(orphan.clone());
    payloads.extend((0..20).map(|_| enc(&good.unproven_reading(&[71]))));
    publisher.publish_all(&topic::up(gw), payloads).await?;

    wait_readings(&db.pool, 40).await?;
    let (reason, detail, gateway) = held(&db.pool, &orphan).await?;
    assert_eq!(reason, "unstorable");
    assert_eq!(gateway, None, "held with its payload only");
    assert!(detail.contains("refused too"), "{detail}");
    db.drop().await
}

/// `rate_limited` rows are replayed by themselves; one that cannot be
/// stored becomes `unstorable` and the others are stored — the replay does
/// not wedge on it at every tick.
#[tokio::test]
async fn a_rate_limited_row_that_cannot_be_stored_does_not_stop_replay() -> Result<()> {
    let gw = "gw-hostile-4";
    let good = TestDevice::new(gw, "dev-h4-good", DataType::HeartRate, 430);
    let env = [
        ("HAILAN_INGEST__FAIR_SHARE__ENABLED", "true"),
        ("HAILAN_INGEST__FAIR_SHARE__REPLAY_INTERVAL_MS", "100"),
    ];
    let Rig {
        db,
        zk: _zk,
        _logs,
        ingest: _ingest,
        publisher: _publisher,
        mut good,
    } = rig(gw, &[NARROW_MODEL], &env, good).await?;

    // Held as over the gateway's rate: the poison first, oldest.
    let poison = registration_with(gw, 3_000, |r| r.model = Some("Model 20 characters!".into()));
    let mut held_back = vec![poison.clone()];
    held_back.extend((0..10).map(|_| enc(&good.unproven_reading(&[70]))));
    for (i, p) in held_back.iter().enumerate() {
        sqlx::query(
            "INSERT INTO rejected_readings (received_at, topic, gateway_id, reason, detail, payload, payload_sha256)
             VALUES (now() - interval '1 minute' + $1 * interval '1 ms', $2, $3, 'rate_limited', 'test', $4, $5)",
        )
        .bind(i as f64)
        .bind(topic::up(gw))
        .bind(gw)
        .bind(p)
        .bind(sha256_hex(p))
        .execute(&db.pool)
        .await?;
    }
    wait_readings(&db.pool, 10).await?;
    let (reason, detail, _) = held(&db.pool, &poison).await?;
    let (reason, detail) = if reason == "rate_limited" {
        // Not yet replayed: wait for it.
        let sha = sha256_hex(&poison);
        eventually(WAIT, "the poison replayed", || {
            let sha = sha.clone();
            let pool = db.pool.clone();
            async move {
                let r: (String, String) = sqlx::query_as(
                    "SELECT reason, detail FROM rejected_readings WHERE payload_sha256 = $1",
                )
                .bind(&sha)
                .fetch_one(&pool)
                .await?;
                Ok((r.0 != "rate_limited").then_some(r))
            }
        })
        .await?
    } else {
        (reason, detail)
    };
    assert_eq!(reason, "unstorable", "{detail}");
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rejected_readings WHERE reason = 'rate_limited'")
            .fetch_one(&db.pool)
            .await?;
    assert_eq!(left, 0);
    assert_eq!(count_readings(&db.pool, "").await?, 10);
    db.drop().await
}

/// SIGTERM while every write fails on a lost connection: the process ends
/// within 5 s, acknowledging nothing it did not commit; started again
/// against the database back, it stores every reading exactly once.
#[tokio::test]
async fn sigterm_while_the_database_is_gone_exits_within_5_s_and_loses_nothing() -> Result<()> {
    let gw = "gw-hostile-5";
    let pg = PrivatePostgres::start().await?;
    let pool = hailan_db::connect(&pg.url, 2).await?;
    let zk = DevZk::new()?;
    let logs = tempfile::tempdir()?;
    enrol(&pool, gw).await?;
    let mut ingest = IngestProcess::start(Path::new(BIN), &pg, &zk, &[gw], logs.path())?;
    let mut publisher = Publisher::connect(gw).await?;
    let mut dev = TestDevice::new(gw, "dev-h5", DataType::HeartRate, 440);
    publisher.register(&pool, &[&dev]).await?;
    let first: Vec<Vec<u8>> = (0..20).map(|_| enc(&dev.unproven_reading(&[70]))).collect();
    publisher.publish_all(&topic::up(gw), first).await?;
    wait_readings(&pool, 20).await?;
    pool.close().await;

    pg.stop()?;
    let second: Vec<Vec<u8>> = (0..20).map(|_| enc(&dev.unproven_reading(&[71]))).collect();
    publisher.publish_all(&topic::up(gw), second).await?;
    let log_has_retry = || {
        let log = ingest.log_text();
        log.contains("batch not written") || log.contains("batch not planned")
    };
    eventually(WAIT, "ingest retrying the batch", || async {
        Ok(log_has_retry().then_some(()))
    })
    .await?;
    let asked = Instant::now();
    let status = ingest.terminate()?;
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "SIGTERM took {took:?} to end the process"
    );
    assert!(status.success(), "exit status {status}");

    pg.start_again()?;
    let pool = hailan_db::connect(&pg.url, 2).await?;
    ingest.restart()?;
    wait_readings(&pool, 40).await?;
    assert_eq!(count_readings(&pool, "").await?, 40);
    let distinct: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT seq) FROM health_data_heart_rate")
            .fetch_one(&pool)
            .await?;
    assert_eq!(distinct, 40);
    Ok(())
}

/// A window group of `n` readings of `dev` (the next seqs, one second
/// apart), with 128 bytes that are no proof at all.
fn garbage_window(dev: &mut TestDevice, key: [u8; 32], n: usize) -> hailan_proto::ProvenGroup {
    let Body::Readings(mut b) = dev.unproven_reading(&[70]).body else {
        unreachable!("readings")
    };
    let mut g = b.groups.remove(0);
    let template = g.readings[0].clone();
    g.readings = (0..n as u64)
        .map(|i| hailan_proto::Reading {
            seq: template.seq + i,
            recorded_at_ms: template.recorded_at_ms + 1000 * i as i64,
            ..template.clone()
        })
        .collect();
    dev.next_seq = template.seq + n as u64;
    g.kind = hailan_proto::envelope::ProofKind::Window;
    g.key_id = key;
    g.proof = Some(vec![0xA5; hailan_proto::envelope::PROOF_LEN]);
    g.no_proof_reason = None;
    g
}

/// The largest envelope of `groups` groups of equal windows (at most 64
/// readings each) that fits the 256 KiB limit.
fn worst_case_envelope(dev: &mut TestDevice, key: [u8; 32], groups: usize) -> Vec<u8> {
    let mut best = Vec::new();
    for per_group in 1..=hailan_proto::envelope::MAX_GROUP_READINGS {
        let start = dev.next_seq;
        let mut e = dev.unproven_reading(&[70]);
        dev.next_seq = start;
        let Body::Readings(b) = &mut e.body else {
            unreachable!("readings")
        };
        b.groups = (0..groups)
            .map(|_| garbage_window(dev, key, per_group))
            .collect();
        let bytes = enc(&e);
        if bytes.len() > hailan_proto::envelope::MAX_ENVELOPE_BYTES {
            dev.next_seq = start + (groups * (per_group - 1)) as u64;
            break;
        }
        best = bytes;
    }
    best
}

/// Peak resident memory of process `pid`, in bytes (`VmHWM`).
fn peak_rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmHWM in /proc/<pid>/status")?;
    Ok(kb * 1024)
}

/// A stream of the largest envelopes a gateway may send — 256 groups, or
/// 64-reading windows, every group failing — costs one quarantine row per
/// message and keeps ingest under 100 MB resident.
#[tokio::test]
async fn worst_case_envelopes_keep_ingest_under_100_mb() -> Result<()> {
    let gw = "gw-hostile-6";
    let dev = TestDevice::new(gw, "dev-h6", DataType::HeartRate, 460);
    let env = [("HAILAN_INGEST__FAIR_SHARE__ENABLED", "false")];
    let Rig {
        db,
        zk,
        ingest,
        mut publisher,
        good: mut dev,
        _logs,
    } = rig(gw, &[], &env, dev).await?;

    // The window key's id: every group reaches the verifier, and fails there.
    let key = zk.window.id().0;
    let mut sent = 0_usize;
    let mut bytes = 0_usize;
    for round in 0..8 {
        let payloads: Vec<Vec<u8>> = (0..25)
            .map(|i| {
                let groups = if (round + i) % 2 == 0 { 256 } else { 32 };
                worst_case_envelope(&mut dev, key, groups)
            })
            .collect();
        sent += payloads.len();
        bytes += payloads.iter().map(Vec::len).sum::<usize>();
        publisher.publish_all(&topic::up(gw), payloads).await?;
    }
    ensure!(
        bytes > sent * 200 * 1024,
        "envelopes of {} bytes on average",
        bytes / sent
    );
    let pool = db.pool.clone();
    eventually(WAIT, &format!("{sent} messages quarantined"), || {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM rejected_readings")
                .fetch_one(&pool)
                .await?;
            Ok((n as usize >= sent).then_some(()))
        }
    })
    .await?;
    let rows: Vec<(String, i32, i32)> = sqlx::query_as(
        "SELECT reason, octet_length(detail), octet_length(payload) FROM rejected_readings",
    )
    .fetch_all(&db.pool)
    .await?;
    assert_eq!(rows.len(), sent, "one row per message");
    for (reason, detail, payload) in &rows {
        // Windows longer than the key's statement fail on their shape, the
        // others on their proof bytes.
        assert!(
            reason == "malformed_proof" || reason == "bad_group_shape",
            "{reason}"
        );
        assert!(*detail <= 4096 + 64, "detail of {detail} bytes");
        assert!(*payload > 200 * 1024);
    }
    let peak = peak_rss(ingest.child.id())?;
    eprintln!(
        "peak RSS {:.1} MB after {sent} envelopes ({:.1} MB)",
        peak as f64 / 1e6,
        bytes as f64 / 1e6
    );
    assert!(peak < 100_000_000, "peak RSS {peak} bytes");
    db.drop().await
}

/// Quarantine retention: rows past `max_age_days` go, then the oldest until
/// the held payloads fit `max_bytes`; the newest stay.
#[tokio::test]
async fn quarantine_retention_drops_the_oldest_first() -> Result<()> {
    let db = TestDb::create().await?;
    let insert = |age_days: i32, n: u8| {
        let pool = db.pool.clone();
        async move {
            let payload = vec![n; 1024];
            sqlx::query(
                "INSERT INTO rejected_readings (received_at, topic, reason, detail, payload, payload_sha256)
                 VALUES (now() - make_interval(days => $1) - make_interval(secs => $2), 'hailan/v1/gw/up',
                         'undecodable', 'test', $3, $4)",
            )
            .bind(age_days)
            .bind(f64::from(n))
            .bind(&payload)
            .bind(sha256_hex(&payload))
            .execute(&pool)
            .await?;
            anyhow::Ok(())
        }
    };
    for n in 0..3 {
        insert(40, n).await?;
    }
    for n in 10..15 {
        insert(0, n).await?;
    }
    let pruned = hailan_ingest::quarantine::prune(&db.pool, 30, 3 * 1024).await?;
    assert_eq!((pruned.by_age, pruned.by_quota), (3, 2));
    // The newest three are kept (n = 10 is the newest: the least seconds back).
    let kept: Vec<i16> = sqlx::query_scalar(
        "SELECT get_byte(payload, 0)::int2 FROM rejected_readings ORDER BY received_at DESC",
    )
    .fetch_all(&db.pool)
    .await?;
    assert_eq!(kept, vec![10, 11, 12]);
    // Limits of 0 keep everything.
    let none = hailan_ingest::quarantine::prune(&db.pool, 0, 0).await?;
    assert_eq!((none.by_age, none.by_quota), (0, 0));
    db.drop().await
}

/// A message from an account that is no enrolled gateway keeps only its
/// first 4 KiB in quarantine; an enrolled gateway's message keeps all of it.
#[tokio::test]
async fn strangers_payloads_are_cut_to_4_kib() -> Result<()> {
    let db = TestDb::create().await?;
    let zk = DevZk::new()?;
    enrol(&db.pool, "gw-known").await?;
    let keys = hailan_ingest::zk_cli::load_verifying_keys(zk.dir.path())?;
    let verifier = std::sync::Arc::new(hailan_proto::zk::Verifier::new(
        keys,
        hailan_proto::zk::Policy::from_spec(),
        hailan_proto::zk::DevKeys::Allow,
    )?);
    let big = |gw: &str| {
        let mut d = TestDevice::new(gw, "dev-big", DataType::HeartRate, 470);
        let mut e = d.unproven_reading(&[70]);
        if let Body::Readings(b) = &mut e.body {
            let g = b.groups[0].clone();
            b.groups = (0..60).map(|_| g.clone()).collect();
        }
        hailan_ingest::plan::Message {
            topic: topic::up(gw),
            payload: enc(&e).into(),
            from_quarantine: None,
            rate_limited: None,
        }
    };
    let messages = vec![big("gw-stranger"), big("gw-known")];
    ensure!(messages[0].payload.len() > 4096, "a message over 4 KiB");
    let plan = hailan_ingest::plan::plan(&db.pool, verifier, &messages).await?;
    let by_reason = |r: &str| {
        plan.quarantine
            .iter()
            .find(|q| q.reason.code() == r)
            .with_context(|| format!("a {r} row"))
    };
    let stranger = by_reason("unknown_gateway")?;
    assert_eq!(stranger.payload.len(), 4096);
    assert!(
        stranger.detail.contains("first 4096"),
        "{}",
        stranger.detail
    );
    let known = by_reason("unknown_device")?;
    assert_eq!(known.payload.len(), messages[1].payload.len());
    db.drop().await
}
