//! hailan-ingest end to end against the real Mosquitto and PostgreSQL: the
//! `hailan-ingest run` binary consumes what test gateways publish.
//! Each test uses its own gateways, consumer group, database and keys.

use anyhow::Result;
use hailan_proto::envelope::{self, Body, Envelope};
use hailan_proto::{DataType, topic};
use hailan_tests::{
    DevZk, IngestOptions, IngestProcess, Publisher, TestDb, TestDevice, count_readings, enrol,
    eventually, plausible_slots,
};
use std::path::Path;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_hailan-ingest");
const WAIT: Duration = Duration::from_secs(60);

fn enc(e: &Envelope) -> Vec<u8> {
    envelope::encode(e)
}

/// `n` envelopes of one reading without proof each (stored unverified): cheap volume.
fn unproven(dev: &mut TestDevice, n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|_| enc(&dev.unproven_reading(&[70]))).collect()
}

async fn wait_rows(db: &TestDb, extra: &str, n: i64) -> Result<()> {
    wait_rows_in(&db.pool, extra, n).await
}

/// Wait for `n` rows; a failing count (the database restarting) is retried.
async fn wait_rows_in(pool: &sqlx::PgPool, extra: &str, n: i64) -> Result<()> {
    let pool = pool.clone();
    let extra = extra.to_owned();
    eventually(WAIT, &format!("{n} rows {extra}"), move || {
        let pool = pool.clone();
        let extra = extra.clone();
        async move {
            Ok(count_readings(&pool, &extra)
                .await
                .is_ok_and(|c| c >= n)
                .then_some(()))
        }
    })
    .await
}

/// What most tests start from: a fresh database with `gw` enrolled, dev
/// keys, a running consumer for `gw`, and a publisher logged in as `gw`.
struct Rig {
    db: TestDb,
    zk: DevZk,
    _logs: tempfile::TempDir,
    ingest: IngestProcess,
    publisher: Publisher,
}

async fn rig(gw: &str) -> Result<Rig> {
    let db = TestDb::create().await?;
    let zk = DevZk::new()?;
    let logs = tempfile::tempdir()?;
    enrol(&db.pool, gw).await?;
    let ingest = IngestProcess::start(Path::new(BIN), &db, &zk, &[gw], logs.path())?;
    let publisher = Publisher::connect(gw).await?;
    Ok(Rig {
        db,
        zk,
        _logs: logs,
        ingest,
        publisher,
    })
}

/// Exactly `n` readings, `n` distinct seqs, in `partition`.
async fn assert_exactly(pool: &sqlx::PgPool, partition: &str, n: usize) -> Result<()> {
    assert_eq!(count_readings(pool, "").await?, n as i64);
    let distinct: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(DISTINCT seq) FROM health_data_{partition}"
    )))
    .fetch_one(pool)
    .await?;
    assert_eq!(distinct, n as i64);
    Ok(())
}

async fn quarantine_count(db: &TestDb, reason: &str) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM rejected_readings WHERE reason = $1")
            .bind(reason)
            .fetch_one(&db.pool)
            .await?,
    )
}

#[tokio::test]
async fn every_data_type_lands_verified_with_device_state() -> Result<()> {
    let gw = "gw-test-1";
    let Rig {
        db,
        zk,
        _logs,
        ingest: _ingest,
        mut publisher,
    } = rig(gw).await?;

    let mut payloads = Vec::new();
    let mut devices = Vec::new();
    for (i, t) in DataType::ALL.into_iter().enumerate() {
        let mut d = TestDevice::new(
            gw,
            &format!("dev-{}", t.as_str().to_lowercase()),
            t,
            i as u64,
        );
        payloads.push(enc(&d.registration()));
        payloads.push(enc(&d.proven_reading(&zk.reading, &plausible_slots(t))?));
        payloads.push(enc(&d.state(80 - i as u8, hailan_tests::T0_MS + 5000)));
        devices.push(d);
    }
    // Heart rate also as a window of 16 readings (one proof).
    let hr = devices
        .iter_mut()
        .find(|d| d.data_type == DataType::HeartRate)
        .expect("hr device");
    let values: Vec<u32> = (0..16).map(|i| 60 + i).collect();
    payloads.push(enc(&hr.proven_window(&zk.window, &values)?));
    // A state observed earlier, delivered later, never overwrites a newer one.
    payloads.push(enc(&hr.state(10, hailan_tests::T0_MS)));
    publisher.publish_all(&topic::up(gw), payloads).await?;

    let types = DataType::ALL.len() as i64;
    wait_rows(&db, "", types + 16).await?;
    assert_eq!(
        count_readings(&db.pool, "AND verified AND zk_proof_hash IS NOT NULL").await?,
        types + 16
    );
    for t in DataType::ALL {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM health_data_{} WHERE verified",
            t.as_str().to_lowercase()
        )))
        .fetch_one(&db.pool)
        .await?;
        assert_eq!(n, if t == DataType::HeartRate { 17 } else { 1 }, "{t}");
    }
    // The stored value is the sealed one, never the plaintext.
    let value: serde_json::Value =
        sqlx::query_scalar("SELECT value FROM health_data_blood_pressure")
            .fetch_one(&db.pool)
            .await?;
    assert_eq!(value["alg"], "A256GCM");
    assert!(value.get("slots").is_none());
    // One proof row per proof: one per data type + 1 window.
    let proofs: i64 = sqlx::query_scalar("SELECT count(*) FROM zk_proofs")
        .fetch_one(&db.pool)
        .await?;
    assert_eq!(proofs, types + 1);
    // Device state and sync state.
    let (battery, last_seq, status): (Option<i32>, Option<i64>, String) = sqlx::query_as(
        "SELECT battery_level, last_seq, sync_status FROM iot_devices WHERE device_id = 'dev-heart_rate'",
    )
    .fetch_one(&db.pool)
    .await?;
    assert_eq!(
        (battery, last_seq, status.as_str()),
        (Some(80), Some(17), "SYNCED")
    );
    assert_eq!(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM rejected_readings")
            .fetch_one(&db.pool)
            .await?,
        0
    );

    // Re-pairing: the cuff's hardware paired again under a new device id
    // takes over the address; the old device keeps its readings, inactive.
    let old = devices
        .iter()
        .find(|d| d.data_type == DataType::BloodPressure)
        .expect("cuff");
    let mut repaired = old.registration();
    let address = match &mut repaired.body {
        Body::Registration(r) => {
            r.device_id = "dev-blood_pressure-2".into();
            r.bluetooth_address.clone()
        }
        _ => unreachable!("a registration"),
    };
    publisher
        .register_envelope(&db.pool, &repaired, "dev-blood_pressure-2")
        .await?;
    let rows: Vec<(String, Option<String>, Option<bool>)> = sqlx::query_as(
        "SELECT device_id, bluetooth_address, is_active FROM iot_devices
          WHERE device_id LIKE 'dev-blood_pressure%' ORDER BY device_id",
    )
    .fetch_all(&db.pool)
    .await?;
    assert_eq!(
        rows,
        vec![
            ("dev-blood_pressure".to_owned(), None, Some(false)),
            ("dev-blood_pressure-2".to_owned(), Some(address), Some(true)),
        ]
    );
    db.drop().await
}

#[tokio::test]
async fn bad_input_is_quarantined_with_its_reason_and_the_rest_flows() -> Result<()> {
    let db = TestDb::create().await?;
    let zk = DevZk::new()?;
    let logs = tempfile::tempdir()?;
    let gw = "gw-test-2";
    let stranger = "gw-test-3"; // a broker account, but not enrolled
    enrol(&db.pool, gw).await?;
    let _ingest = IngestProcess::start(Path::new(BIN), &db, &zk, &[gw, stranger], logs.path())?;
    let mut p = Publisher::connect(gw).await?;
    let mut p_stranger = Publisher::connect(stranger).await?;

    let mut good = TestDevice::new(gw, "dev-good", DataType::Spo2, 1);
    let mut late = TestDevice::new(gw, "dev-late", DataType::BodyTemperature, 2);
    let mut forger = TestDevice::new(gw, "dev-good", DataType::Spo2, 99); // same id, other secret
    let s_dev = TestDevice::new(stranger, "dev-stranger", DataType::Glucose, 3);

    let mut payloads = vec![
        enc(&good.registration()),
        b"\xa1garbage".to_vec(),                               // undecodable
        vec![0u8; envelope::MAX_ENVELOPE_BYTES + 1],           // oversize
        enc(&late.proven_reading(&zk.reading, &[3700])?),      // unknown device (for now)
        enc(&forger.registration()),                           // device key mismatch
        enc(&forger.proven_reading(&zk.reading, &[975, 70])?), // bad proof: wrong device secret
    ];
    let mut foreign = good.state(50, 1);
    foreign.gateway_id = "gw-test-9".into(); // envelope names another gateway
    payloads.push(enc(&foreign));
    // A proven reading whose header was changed after proving (its time):
    // the context no longer matches, so the proof fails.
    let mut moved = good.proven_reading(&zk.reading, &[960, 66])?;
    if let Body::Readings(b) = &mut moved.body {
        b.groups[0].readings[0].recorded_at_ms += 1;
    }
    payloads.push(enc(&moved));
    // Proofs that cannot even be checked: an unknown key, the window key
    // named for a single reading, and bytes that are no proof.
    for (i, tamper) in [
        |g: &mut envelope::ProvenGroup, _: [u8; 32]| g.key_id = [9; 32],
        |g: &mut envelope::ProvenGroup, window_key: [u8; 32]| g.key_id = window_key,
        |g: &mut envelope::ProvenGroup, _: [u8; 32]| g.proof = Some(vec![0xFF; 128]),
    ]
    .into_iter()
    .enumerate()
    {
        let mut e = good.proven_reading(&zk.reading, &[950 + i as u32, 60])?;
        if let Body::Readings(b) = &mut e.body {
            tamper(&mut b.groups[0], zk.window.id().0);
        }
        payloads.push(enc(&e));
    }
    let mut v2 = good.state(50, 1);
    v2.v = 2;
    payloads.push(enc(&v2));
    payloads.push(enc(&good.proven_reading(&zk.reading, &[968, 64])?)); // good, after all the bad
    p.publish_all(&topic::up(gw), payloads).await?;
    p_stranger
        .publish_all(&topic::up(stranger), vec![enc(&s_dev.registration())])
        .await?;

    wait_rows(&db, "AND data_type = 'SPO2'", 1).await?;
    let pool = db.pool.clone();
    eventually(WAIT, "quarantine rows", || {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM rejected_readings")
                .fetch_one(&pool)
                .await?;
            Ok((n >= 12).then_some(()))
        }
    })
    .await?;
    for (reason, n) in [
        ("undecodable", 1),
        ("oversize", 1),
        ("unknown_device", 1),
        ("device_key_mismatch", 1),
        ("bad_proof", 2),
        ("unknown_key", 1),
        ("key_kind_mismatch", 1),
        ("malformed_proof", 1),
        ("gateway_mismatch", 1),
        ("unsupported_version", 1),
        ("unknown_gateway", 1),
    ] {
        assert_eq!(quarantine_count(&db, reason).await?, n, "{reason}");
    }
    // Exactly one good reading stored, verified; the forged one is not there.
    assert_eq!(count_readings(&db.pool, "").await?, 1);
    assert_eq!(
        count_readings(&db.pool, "AND verified AND seq = 5").await?,
        1
    );

    // The reading that came before its device's registration is replayed
    // when the registration arrives, and leaves quarantine.
    p.publish_all(&topic::up(gw), vec![enc(&late.registration())])
        .await?;
    wait_rows(&db, "AND data_type = 'BODY_TEMPERATURE' AND verified", 1).await?;
    let pool = db.pool.clone();
    eventually(WAIT, "unknown_device row to leave quarantine", || {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM rejected_readings WHERE reason = 'unknown_device'",
            )
            .fetch_one(&pool)
            .await?;
            Ok((n == 0).then_some(()))
        }
    })
    .await?;
    // The raw payload is kept for every quarantined message.
    let kept: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM rejected_readings WHERE octet_length(payload) > 0 AND payload_sha256 = encode(sha256(payload), 'hex')",
    )
    .fetch_one(&db.pool)
    .await?;
    assert_eq!(kept, 11);
    db.drop().await
}

#[tokio::test]
async fn the_same_message_twice_is_one_row() -> Result<()> {
    let gw = "gw-test-4";
    let Rig {
        db,
        zk,
        _logs,
        ingest: _ingest,
        publisher: mut p,
    } = rig(gw).await?;
    let mut d = TestDevice::new(gw, "dev-scale", DataType::BodyWeight, 4);
    let reading = enc(&d.proven_reading(&zk.reading, &[72_400])?);
    p.publish_all(
        &topic::up(gw),
        vec![enc(&d.registration()), reading.clone(), reading.clone()],
    )
    .await?;
    wait_rows(&db, "", 1).await?;
    // A later message proves the duplicate was processed, not just late.
    let marker = enc(&d.proven_reading(&zk.reading, &[72_300])?);
    p.publish_all(&topic::up(gw), vec![reading, marker]).await?;
    wait_rows(&db, "", 2).await?;
    assert_eq!(count_readings(&db.pool, "").await?, 2);

    // A message that is quarantined, delivered again (as the broker does
    // when the acknowledgement of a committed batch was lost), is held once.
    let garbage = b"not an envelope".to_vec();
    p.publish_all(&topic::up(gw), vec![garbage.clone(), garbage.clone()])
        .await?;
    let marker = enc(&d.proven_reading(&zk.reading, &[72_200])?);
    p.publish_all(&topic::up(gw), vec![garbage, marker]).await?;
    wait_rows(&db, "", 3).await?;
    let held: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rejected_readings WHERE reason = 'undecodable'")
            .fetch_one(&db.pool)
            .await?;
    assert_eq!(held, 1, "a message delivered three times is held once");
    db.drop().await
}

/// Batches of one message: while a registration's batch is being committed
/// the consumer already plans the next message — its device's first
/// reading. A batch that registers devices must commit (and its quarantine
/// replay run) before the next is planned; otherwise that reading is judged
/// an unknown device after the replay for its registration has run, and
/// stays in quarantine.
#[tokio::test]
async fn a_reading_right_behind_its_registration_waits_for_it() -> Result<()> {
    let gw = "gw-test-13";
    let db = TestDb::create().await?;
    let zk = DevZk::new()?;
    let logs = tempfile::tempdir()?;
    enrol(&db.pool, gw).await?;
    let one_per_batch = [("HAILAN_INGEST__BATCH__MAX_MESSAGES", "1")];
    let _ingest = IngestProcess::start_opts(
        Path::new(BIN),
        &db,
        &zk,
        &[gw],
        logs.path(),
        IngestOptions {
            env: &one_per_batch,
            ..Default::default()
        },
    )?;
    let mut p = Publisher::connect(gw).await?;
    let mut payloads = Vec::new();
    for k in 0..5u32 {
        let mut d = TestDevice::new(
            gw,
            &format!("scale-{k}"),
            DataType::BodyWeight,
            40 + u64::from(k),
        );
        payloads.push(enc(&d.registration()));
        payloads.push(enc(&d.proven_reading(&zk.reading, &[70_000 + 100 * k])?));
    }
    p.publish_all(&topic::up(gw), payloads).await?;
    wait_rows(&db, "AND verified", 5).await?;
    let held: i64 = sqlx::query_scalar("SELECT count(*) FROM rejected_readings")
        .fetch_one(&db.pool)
        .await?;
    assert_eq!(
        held, 0,
        "a reading was judged before its registration committed"
    );
    db.drop().await
}

#[tokio::test]
async fn kill9_mid_stream_then_restart_loses_and_doubles_nothing() -> Result<()> {
    let gw = "gw-test-5";
    let Rig {
        db,
        zk: _zk,
        _logs,
        mut ingest,
        publisher: mut p,
    } = rig(gw).await?;
    let mut d = TestDevice::new(gw, "dev-hr-kill", DataType::HeartRate, 5);
    p.register(&db.pool, &[&d]).await?;
    const N: usize = 3000;
    let mut payloads = unproven(&mut d, N);
    let second_half = payloads.split_off(N / 2);
    p.publish_all(&topic::up(gw), payloads).await?;
    // Kill while rows are arriving; the second half queues at the broker
    // while ingest is down.
    wait_rows(&db, "", 200).await?;
    ingest.kill9()?;
    let at_kill = count_readings(&db.pool, "").await?;
    p.publish_all(&topic::up(gw), second_half).await?;
    ingest.restart()?;
    wait_rows(&db, "", N as i64).await?;
    assert!(
        at_kill < N as i64,
        "the kill came too late to test anything ({at_kill} rows)"
    );
    assert_exactly(&db.pool, "heart_rate", N).await?;
    let (status, missing): (String, i64) = sqlx::query_as(
        "SELECT sync_status, missing_seqs FROM iot_devices WHERE device_id = 'dev-hr-kill'",
    )
    .fetch_one(&db.pool)
    .await?;
    assert_eq!((status.as_str(), missing), ("SYNCED", 0));
    db.drop().await
}

#[tokio::test]
async fn an_outage_longer_than_mosquittos_default_queue_loses_nothing() -> Result<()> {
    let gw = "gw-test-6";
    let Rig {
        db,
        zk: _zk,
        _logs,
        mut ingest,
        publisher: mut p,
    } = rig(gw).await?;
    let mut d = TestDevice::new(gw, "dev-ox-outage", DataType::Spo2, 6);
    p.register(&db.pool, &[&d]).await?;
    // Ingest leaves cleanly (its session stays), 1,500 messages queue up.
    assert!(
        ingest.terminate()?.success(),
        "SIGTERM must exit 0:\n{}",
        ingest.log_text()
    );
    const N: usize = 1500;
    p.publish_all(&topic::up(gw), unproven(&mut d, N)).await?;
    ingest.restart()?;
    wait_rows(&db, "", N as i64).await?;
    assert_eq!(count_readings(&db.pool, "").await?, N as i64);
    db.drop().await
}

#[tokio::test]
async fn the_broker_refuses_a_gateway_publishing_under_another_gateways_topic() -> Result<()> {
    // Subscribe as ingest would (on the service listener), to the gateway's topic.
    let (host, port) = hailan_tests::mqtt_ingest_host_port();
    let mut opts = rumqttc::MqttOptions::new(
        format!("acl-{}", uuid::Uuid::new_v4().simple()),
        &host,
        port,
    );
    opts.set_credentials(
        "hailan-ingest",
        hailan_tests::mqtt_password("hailan-ingest")?,
    );
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 100);
    client
        .subscribe("hailan/v1/gw-test-8/up", rumqttc::QoS::AtLeastOnce)
        .await?;
    // Await the SUBACK before anyone publishes.
    tokio::time::timeout(WAIT, async {
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) = events.poll().await? {
                return anyhow::Ok(());
            }
        }
    })
    .await??;
    let seen = tokio::spawn(async move {
        let mut got = Vec::new();
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    got.push(p.payload.to_vec());
                    if p.payload.as_ref() == b"from gw-test-8" {
                        return got;
                    }
                }
                Ok(_) => {}
                Err(_) => return got,
            }
        }
    });
    let mut intruder = Publisher::connect("gw-test-7").await?;
    intruder
        .publish_all("hailan/v1/gw-test-8/up", vec![b"from gw-test-7".to_vec()])
        .await?;
    // Nor may the ingest account publish anything (a stolen ingest password
    // injects no readings): another ingest connection tries.
    let mut ingest_account = Publisher::connect_to("hailan-ingest", &host, port, None).await?;
    ingest_account
        .publish_all(
            "hailan/v1/gw-test-8/up",
            vec![b"from hailan-ingest".to_vec()],
        )
        .await?;
    let mut owner = Publisher::connect("gw-test-8").await?;
    owner
        .publish_all("hailan/v1/gw-test-8/up", vec![b"from gw-test-8".to_vec()])
        .await?;
    let got = tokio::time::timeout(WAIT, seen).await??;
    assert_eq!(
        got,
        vec![b"from gw-test-8".to_vec()],
        "the intruder's or the ingest account's message got through"
    );
    Ok(())
}

#[tokio::test]
async fn metrics_and_health_endpoints_report_what_happened() -> Result<()> {
    let db = TestDb::create().await?;
    let zk = DevZk::new()?;
    let logs = tempfile::tempdir()?;
    let gw = "gw-test-11";
    enrol(&db.pool, gw).await?;
    let port = hailan_tests::free_port()?;
    let group = format!("g{}", uuid::Uuid::new_v4().simple());
    let _ingest = IngestProcess::start_with(
        Path::new(BIN),
        &db,
        &zk,
        &[gw],
        logs.path(),
        &group,
        &format!("127.0.0.1:{port}"),
    )?;
    assert_eq!(hailan_tests::http_get(port, "/healthz").await?.0, 200);
    let mut p = Publisher::connect(gw).await?;
    let mut d = TestDevice::new(gw, "dev-metrics", DataType::BodyTemperature, 11);
    p.publish_all(
        &topic::up(gw),
        vec![
            enc(&d.registration()),
            enc(&d.proven_reading(&zk.reading, &[3650])?),
            b"junk".to_vec(),
        ],
    )
    .await?;
    wait_rows(&db, "", 1).await?;
    let body = eventually(WAIT, "metrics to show the batch", || async move {
        let (_, body) = hailan_tests::http_get(port, "/metrics").await?;
        Ok(
            (body.contains("hailan_ingest_readings_total{outcome=\"stored\"} 1")
                && body.contains("hailan_ingest_quarantined_total{reason=\"undecodable\"} 1"))
            .then_some(body),
        )
    })
    .await?;
    assert!(
        body.contains("hailan_ingest_groups_verified_total 1"),
        "{body}"
    );
    let (code, ready) = hailan_tests::http_get(port, "/readyz").await?;
    assert_eq!(code, 200, "{ready}");
    db.drop().await
}

#[tokio::test]
async fn postgres_restart_mid_stream_loses_and_doubles_nothing() -> Result<()> {
    // A cluster of this test's own, so restarting it disturbs no other test.
    let pg = hailan_tests::PrivatePostgres::start().await?;
    let pool = hailan_db::connect(&pg.url, 2).await?;
    let zk = DevZk::new()?;
    let logs = tempfile::tempdir()?;
    let gw = "gw-test-12";
    enrol(&pool, gw).await?;
    let ingest = IngestProcess::start(Path::new(BIN), &pg, &zk, &[gw], logs.path())?;
    let mut p = Publisher::connect(gw).await?;
    let mut d = TestDevice::new(gw, "dev-pg-restart", DataType::HeartRate, 12);
    p.register(&pool, &[&d]).await?;
    const N: usize = 3000;
    let mut payloads = unproven(&mut d, N);
    let second_half = payloads.split_off(N / 2);
    p.publish_all(&topic::up(gw), payloads).await?;
    wait_rows_in(&pool, "", 200).await?;
    // PostgreSQL goes away mid-stream; the second half arrives while it is
    // down, so ingest must hold it unacknowledged and retry.
    pg.stop()?;
    p.publish_all(&topic::up(gw), second_half).await?;
    eventually(WAIT, "ingest to notice the database is down", || {
        let log = ingest.log_text();
        async move { Ok(log.contains("batch not written; retrying").then_some(())) }
    })
    .await?;
    pg.start_again()?;
    wait_rows_in(&pool, "", N as i64).await?;
    assert_exactly(&pool, "heart_rate", N).await?;
    Ok(())
}

fn cli(db: &TestDb, zk: &DevZk, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(BIN)
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env("HAILAN_INGEST__ZK__KEYS_DIR", zk.dir.path())
        .env("HAILAN_INGEST__ZK__ALLOW_DEV_KEYS", "true")
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn quarantine_is_listed_and_replayed_from_the_cli() -> Result<()> {
    let db = TestDb::create().await?;
    let zk = DevZk::new()?;
    let logs = tempfile::tempdir()?;
    let gw = "gw-test-9"; // not enrolled yet: everything it sends is quarantined
    let _ingest = IngestProcess::start(Path::new(BIN), &db, &zk, &[gw], logs.path())?;
    let mut p = Publisher::connect(gw).await?;
    let mut d = TestDevice::new(gw, "dev-early", DataType::Glucose, 9);
    p.publish_all(
        &topic::up(gw),
        vec![
            enc(&d.registration()),
            enc(&d.proven_reading(&zk.reading, &[1040])?),
        ],
    )
    .await?;
    let pool = db.pool.clone();
    eventually(WAIT, "two quarantine rows", || {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM rejected_readings")
                .fetch_one(&pool)
                .await?;
            Ok((n == 2).then_some(()))
        }
    })
    .await?;
    let listed = cli(&db, &zk, &["quarantine", "list", "--json"])?;
    let rows: Vec<serde_json::Value> = listed
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter()
            .all(|r| r["reason"] == "unknown_gateway" && r["gateway_id"] == gw),
        "{listed}"
    );

    // The owner enrols the gateway; replaying stores the registration and the reading.
    enrol(&db.pool, gw).await?;
    let replayed = cli(
        &db,
        &zk,
        &["quarantine", "replay", "--reason", "unknown_gateway"],
    )?;
    assert!(
        replayed.contains("replayed 2: 1 readings stored"),
        "{replayed}"
    );
    assert_eq!(
        count_readings(&db.pool, "AND verified AND data_type = 'GLUCOSE'").await?,
        1
    );
    assert_eq!(quarantine_count(&db, "unknown_gateway").await?, 0);
    // Replaying again finds nothing left.
    let again = cli(&db, &zk, &["quarantine", "replay"])?;
    assert!(again.contains("replayed 0"), "{again}");
    db.drop().await
}

#[tokio::test]
async fn two_processes_share_the_load_and_one_killed_loses_nothing() -> Result<()> {
    let db = TestDb::create().await?;
    let zk = DevZk::new()?;
    let logs = tempfile::tempdir()?;
    let gw = "gw-test-10";
    enrol(&db.pool, gw).await?;
    let group = format!("g{}", uuid::Uuid::new_v4().simple());
    let mut a =
        IngestProcess::start_with(Path::new(BIN), &db, &zk, &[gw], logs.path(), &group, "")?;
    let _b = IngestProcess::start_with(Path::new(BIN), &db, &zk, &[gw], logs.path(), &group, "")?;
    let mut p = Publisher::connect(gw).await?;
    let mut d = TestDevice::new(gw, "dev-shared", DataType::HeartRate, 10);
    p.register(&db.pool, &[&d]).await?;
    const N: usize = 3000;
    let payloads = unproven(&mut d, N);
    let publish = tokio::spawn(async move { p.publish_all(&topic::up(gw), payloads).await });
    wait_rows(&db, "", 300).await?;
    a.kill9()?;
    publish.await??;
    // What the broker had sent to the killed process waits in its session
    // until it comes back (as systemd's Restart= brings it back).
    a.restart()?;
    wait_rows(&db, "", N as i64).await?;
    assert_exactly(&db.pool, "heart_rate", N).await?;
    db.drop().await
}
