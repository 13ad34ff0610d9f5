//! Fair share under abuse, end to end (real Mosquitto, PostgreSQL and the
//! `hailan-ingest run` binary): a gateway that floods, or keeps sending bad
//! proofs, is held to its own limits while a well-behaved gateway's
//! readings flow; the abuser's excess is quarantined as `rate_limited`,
//! never lost, and a replay stores it.

use anyhow::{Context, Result};
use hailan_proto::envelope::{self, Body, Envelope};
use hailan_proto::{DataType, topic};
use hailan_tests::{
    DevZk, IngestOptions, IngestProcess, Publisher, TestDb, TestDevice, enrol, eventually,
    free_port, http_get, plausible_slots,
};
use sqlx::PgPool;
use std::path::Path;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_hailan-ingest");
const WAIT: Duration = Duration::from_secs(60);

fn enc(e: &Envelope) -> Vec<u8> {
    envelope::encode(e)
}

/// health_data rows of one gateway (as the owner, through the partition).
async fn rows_of(pool: &PgPool, gateway: &str) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM health_data_heart_rate WHERE gateway_id = $1")
            .bind(gateway)
            .fetch_one(pool)
            .await?,
    )
}

async fn quarantined(pool: &PgPool, gateway: &str, reason: &str) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM rejected_readings WHERE gateway_id = $1 AND reason = $2",
    )
    .bind(gateway)
    .bind(reason)
    .fetch_one(pool)
    .await?)
}

/// The value of one sample line of `/metrics` (0 when absent).
fn metric(text: &str, line_prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// `hailan-ingest run` for `gateways` with `/metrics` on a free port (returned)
/// and the `[fair_share]` settings in `env`.
fn ingest_limited(
    db: &TestDb,
    zk: &DevZk,
    gateways: &[&str],
    logs: &Path,
    env: &[(&str, &str)],
) -> Result<(IngestProcess, u16)> {
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let opts = IngestOptions {
        http_listen: Some(&listen),
        env,
        ..Default::default()
    };
    let ingest = IngestProcess::start_opts(Path::new(BIN), db, zk, gateways, logs, opts)?;
    Ok((ingest, port))
}

/// A flood of 20,000 messages from one gateway against 200 from another:
/// the well-behaved gateway's readings are all stored while the flood is
/// still being worked off; every flood message ends as a row or a
/// `rate_limited` quarantine row (none lost, none doubled); a replay stores
/// the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_gateway_is_held_to_its_share_and_loses_nothing() -> Result<()> {
    const ABUSER: &str = "gw-ops-2";
    const GOOD: &str = "gw-ops-3";
    const FLOOD: usize = 20_000;
    const MODEST: usize = 200;
    let started = Instant::now();
    let db = TestDb::create().await?;
    let zk = DevZk::new()?;
    let logs = tempfile::tempdir()?;
    enrol(&db.pool, ABUSER).await?;
    enrol(&db.pool, GOOD).await?;
    let (ingest, port) = ingest_limited(
        &db,
        &zk,
        &[ABUSER, GOOD],
        logs.path(),
        &[
            ("HAILAN_INGEST__FAIR_SHARE__MESSAGES_PER_SECOND", "200"),
            ("HAILAN_INGEST__FAIR_SHARE__MESSAGE_BURST", "1000"),
            // By hand here (the CLI); the automatic replay has its own test.
            ("HAILAN_INGEST__FAIR_SHARE__REPLAY_INTERVAL_MS", "0"),
        ],
    )?;
    let mut bad_pub = Publisher::connect(ABUSER).await?;
    let mut good_pub = Publisher::connect(GOOD).await?;
    let mut flood_dev = TestDevice::new(ABUSER, "flood-1", DataType::HeartRate, 21);
    let mut good_dev = TestDevice::new(GOOD, "good-1", DataType::HeartRate, 22);
    bad_pub.register(&db.pool, &[&flood_dev]).await?;
    good_pub.register(&db.pool, &[&good_dev]).await?;

    let flood: Vec<Vec<u8>> = (0..FLOOD)
        .map(|_| enc(&flood_dev.unproven_reading(&[70])))
        .collect();
    let modest: Vec<Vec<u8>> = (0..MODEST)
        .map(|_| enc(&good_dev.unproven_reading(&[60])))
        .collect();
    // How many received messages wait in ingest for a batch, at most
    // (sampled from /metrics; reported, not asserted).
    let backlog_stop = tokio_util::sync::CancellationToken::new();
    let backlog_task = {
        let stop = backlog_stop.clone();
        tokio::spawn(async move {
            let mut max = 0.0f64;
            while !stop.is_cancelled() {
                if let Ok((200, text)) = http_get(port, "/metrics").await {
                    max = max.max(metric(&text, "hailan_ingest_delivery_backlog "));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            max
        })
    };
    // The flood goes out first; the modest stream joins it while it is
    // still being published and worked off.
    let flood_started = Instant::now();
    let flood_task = tokio::spawn(async move {
        bad_pub.publish_all(&topic::up(ABUSER), flood).await?;
        anyhow::Ok(bad_pub)
    });
    let pool = db.pool.clone();
    eventually(WAIT, "the flood to reach ingest", || {
        let pool = pool.clone();
        async move { Ok((rows_of(&pool, ABUSER).await? > 0).then_some(())) }
    })
    .await?;
    good_pub.publish_all(&topic::up(GOOD), modest).await?;
    eventually(WAIT, "the modest stream stored", || {
        let pool = pool.clone();
        async move { Ok((rows_of(&pool, GOOD).await? == MODEST as i64).then_some(())) }
    })
    .await?;
    let abuser_done =
        rows_of(&pool, ABUSER).await? + quarantined(&pool, ABUSER, "rate_limited").await?;
    let _bad_pub = flood_task.await??;
    eprintln!(
        "modest stream stored after {:?}, flood worked off: {abuser_done} of {FLOOD}",
        started.elapsed()
    );
    assert!(
        abuser_done < FLOOD as i64,
        "the modest stream was stored while the flood was still being worked off ({abuser_done} of {FLOOD} done)"
    );

    // The flood is worked off: every message is a row or a rate_limited row.
    eventually(WAIT, "the flood worked off", || {
        let pool = pool.clone();
        async move {
            let done =
                rows_of(&pool, ABUSER).await? + quarantined(&pool, ABUSER, "rate_limited").await?;
            Ok((done >= FLOOD as i64).then_some(()))
        }
    })
    .await?;
    let stored = rows_of(&pool, ABUSER).await?;
    let limited = quarantined(&pool, ABUSER, "rate_limited").await?;
    backlog_stop.cancel();
    let backlog = backlog_task.await?;
    eprintln!(
        "flood: {stored} stored, {limited} rate_limited, worked off {:?} after its first publish; delivery backlog at most {backlog}",
        flood_started.elapsed()
    );
    assert_eq!(stored + limited, FLOOD as i64, "none lost, none doubled");
    assert!(limited > 0, "the flood went over its share");
    assert_eq!(quarantined(&pool, GOOD, "rate_limited").await?, 0);
    let other: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rejected_readings WHERE reason <> 'rate_limited'")
            .fetch_one(&pool)
            .await?;
    assert_eq!(other, 0);
    let (code, text) = http_get(port, "/metrics").await?;
    assert_eq!(code, 200);
    let counted = metric(
        &text,
        &format!(
            "hailan_ingest_gateway_rate_limited_total{{gateway=\"{ABUSER}\",limit=\"messages\"}}"
        ),
    );
    assert_eq!(counted, limited as f64, "{text}");
    assert!(
        !text.contains(&format!("gateway=\"{GOOD}\",limit")),
        "{text}"
    );

    // The quarantined excess is replayable: afterwards every flood reading
    // is stored exactly once.
    let out = std::process::Command::new(BIN)
        .args([
            "quarantine",
            "replay",
            "--reason",
            "rate_limited",
            "--limit",
            "100000",
        ])
        .env("DATABASE_URL", hailan_tests::HasUrl::url(&db))
        .env("HAILAN_INGEST__ZK__KEYS_DIR", zk.dir.path())
        .env("HAILAN_INGEST__ZK__ALLOW_DEV_KEYS", "true")
        .env_remove("HAILAN_INGEST_CONFIG")
        .output()
        .context("quarantine replay")?;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(rows_of(&pool, ABUSER).await?, FLOOD as i64);
    let distinct: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT seq) FROM health_data_heart_rate WHERE gateway_id = $1",
    )
    .bind(ABUSER)
    .fetch_one(&pool)
    .await?;
    assert_eq!(distinct, FLOOD as i64);
    assert_eq!(quarantined(&pool, ABUSER, "rate_limited").await?, 0);
    drop(ingest);
    db.drop().await?;
    Ok(())
}

/// A burst over a gateway's share is quarantined as `rate_limited`, then
/// comes back by itself at the gateway's own rate (`replay_interval_ms`):
/// in the end every message is stored exactly once and nothing waits in
/// quarantine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_messages_come_back_by_themselves() -> Result<()> {
    const GW: &str = "gw-ops-6";
    const BURST: usize = 3000;
    let db = TestDb::create().await?;
    let zk = DevZk::new()?;
    let logs = tempfile::tempdir()?;
    enrol(&db.pool, GW).await?;
    let (ingest, port) = ingest_limited(
        &db,
        &zk,
        &[GW],
        logs.path(),
        &[
            ("HAILAN_INGEST__FAIR_SHARE__MESSAGES_PER_SECOND", "1000"),
            ("HAILAN_INGEST__FAIR_SHARE__MESSAGE_BURST", "300"),
            ("HAILAN_INGEST__FAIR_SHARE__REPLAY_INTERVAL_MS", "100"),
        ],
    )?;
    let mut publisher = Publisher::connect(GW).await?;
    let mut dev = TestDevice::new(GW, "bursty-1", DataType::HeartRate, 61);
    publisher.register(&db.pool, &[&dev]).await?;
    let burst: Vec<Vec<u8>> = (0..BURST)
        .map(|_| enc(&dev.unproven_reading(&[65])))
        .collect();
    let started = Instant::now();
    publisher.publish_all(&topic::up(GW), burst).await?;
    let pool = db.pool.clone();
    // Some of the burst went over the share (seen in the metric: the
    // quarantine rows may already be replayed)…
    eventually(WAIT, "the burst limited", || async move {
        let (_, text) = http_get(port, "/metrics").await?;
        let n = metric(
            &text,
            &format!(
                "hailan_ingest_gateway_rate_limited_total{{gateway=\"{GW}\",limit=\"messages\"}}"
            ),
        );
        Ok((n > 0.0).then_some(()))
    })
    .await?;
    // …and all of it is stored in the end, nothing left in quarantine.
    eventually(WAIT, "the burst stored", || {
        let pool = pool.clone();
        async move {
            let stored = rows_of(&pool, GW).await?;
            let waiting = quarantined(&pool, GW, "rate_limited").await?;
            Ok((stored == BURST as i64 && waiting == 0).then_some(()))
        }
    })
    .await?;
    let (_, text) = http_get(port, "/metrics").await?;
    let limited = metric(
        &text,
        &format!("hailan_ingest_gateway_rate_limited_total{{gateway=\"{GW}\",limit=\"messages\"}}"),
    );
    let replayed = metric(&text, "hailan_ingest_rate_limited_replayed_total ");
    eprintln!(
        "burst of {BURST}: {limited} rate_limited, {replayed} replayed, all stored after {:?}",
        started.elapsed()
    );
    assert!(replayed >= limited && limited > 0.0, "{text}");
    let distinct: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT seq) FROM health_data_heart_rate WHERE gateway_id = $1",
    )
    .bind(GW)
    .fetch_one(&pool)
    .await?;
    assert_eq!(distinct, BURST as i64, "none doubled");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM rejected_readings")
        .fetch_one(&pool)
        .await?;
    assert_eq!(left, 0);
    drop(ingest);
    db.drop().await?;
    Ok(())
}

/// A gateway that keeps sending bad proofs becomes a suspect: its proofs
/// are verified in batches of its own, and past its verification budget its
/// messages wait in quarantine as `rate_limited`; a well-behaved gateway's
/// proven readings are all stored, verified. Exact counts at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_sending_bad_proofs_is_verified_apart_and_throttled() -> Result<()> {
    const ABUSER: &str = "gw-ops-4";
    const GOOD: &str = "gw-ops-5";
    const WAVE1: usize = 10;
    const WAVE2: usize = 300;
    const PROVEN: usize = 8;
    let db = TestDb::create().await?;
    let zk = DevZk::new()?;
    let logs = tempfile::tempdir()?;
    enrol(&db.pool, ABUSER).await?;
    enrol(&db.pool, GOOD).await?;
    let (ingest, port) = ingest_limited(
        &db,
        &zk,
        &[ABUSER, GOOD],
        logs.path(),
        &[
            ("HAILAN_INGEST__FAIR_SHARE__PROOFS_PER_SECOND", "10"),
            ("HAILAN_INGEST__FAIR_SHARE__PROOF_BURST", "50"),
            ("HAILAN_INGEST__FAIR_SHARE__BAD_PROOF_COST", "1"),
            ("HAILAN_INGEST__FAIR_SHARE__SUSPECT_AFTER_BAD_PROOFS", "8"),
            // Exact metric-to-row counts: no automatic replay meanwhile.
            ("HAILAN_INGEST__FAIR_SHARE__REPLAY_INTERVAL_MS", "0"),
        ],
    )?;
    let mut bad_pub = Publisher::connect(ABUSER).await?;
    let mut good_pub = Publisher::connect(GOOD).await?;
    let mut bad_dev = TestDevice::new(ABUSER, "forger-1", DataType::BloodPressure, 41);
    let mut good_dev = TestDevice::new(GOOD, "honest-1", DataType::BloodPressure, 42);
    bad_pub.register(&db.pool, &[&bad_dev]).await?;
    good_pub.register(&db.pool, &[&good_dev]).await?;

    // One real proof, replayed onto other seqs: each copy is a bad proof
    // (the context x binds a proof to its reading's header).
    let slots = plausible_slots(DataType::BloodPressure);
    let template = bad_dev.proven_reading(&zk.reading, &slots)?;
    let forged = |seq: u64| -> Vec<u8> {
        let mut e = template.clone();
        if let Body::Readings(b) = &mut e.body {
            b.groups[0].readings[0].seq = seq;
        }
        enc(&e)
    };
    let topic_bad = topic::up(ABUSER);
    let pool = db.pool.clone();
    let bad_total = |pool: PgPool| async move {
        anyhow::Ok(
            quarantined(&pool, ABUSER, "bad_proof").await?
                + quarantined(&pool, ABUSER, "rate_limited").await?,
        )
    };
    // Wave 1: enough bad proofs to make the gateway a suspect.
    bad_pub
        .publish_all(
            &topic_bad,
            (0..WAVE1 as u64).map(|i| forged(1000 + i)).collect(),
        )
        .await?;
    eventually(WAIT, "wave 1 quarantined", || {
        let pool = pool.clone();
        async move {
            Ok((quarantined(&pool, ABUSER, "bad_proof").await? == WAVE1 as i64).then_some(()))
        }
    })
    .await?;
    // Wave 2 and the honest gateway's proven readings, together.
    let honest: Vec<Vec<u8>> = (0..PROVEN)
        .map(|_| {
            good_dev
                .proven_reading(&zk.reading, &slots)
                .map(|e| enc(&e))
        })
        .collect::<Result<_>>()?;
    let wave2: Vec<Vec<u8>> = (0..WAVE2 as u64).map(|i| forged(2000 + i)).collect();
    let flood_task = tokio::spawn(async move {
        bad_pub.publish_all(&topic_bad, wave2).await?;
        anyhow::Ok(bad_pub)
    });
    good_pub.publish_all(&topic::up(GOOD), honest).await?;
    let _bad_pub = flood_task.await??;
    eventually(WAIT, "everything accounted for", || {
        let pool = pool.clone();
        async move {
            let good = sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM health_data_blood_pressure WHERE gateway_id = $1 AND verified",
            )
            .bind(GOOD)
            .fetch_one(&pool)
            .await?;
            let bad = bad_total(pool.clone()).await?;
            Ok((good == PROVEN as i64 && bad == (WAVE1 + WAVE2) as i64).then_some(()))
        }
    })
    .await?;
    let abuser_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM health_data_blood_pressure WHERE gateway_id = $1")
            .bind(ABUSER)
            .fetch_one(&pool)
            .await?;
    assert_eq!(abuser_rows, 0, "no forged reading stored");
    let bad = quarantined(&pool, ABUSER, "bad_proof").await?;
    let limited = quarantined(&pool, ABUSER, "rate_limited").await?;
    eprintln!("forger: {bad} bad_proof, {limited} rate_limited");
    assert_eq!(
        bad + limited,
        (WAVE1 + WAVE2) as i64,
        "none lost, none doubled"
    );
    assert!(bad > WAVE1 as i64, "some of wave 2 were verified (apart)");
    assert!(
        limited > 0,
        "past its budget the forger waits in quarantine"
    );
    assert_eq!(quarantined(&pool, GOOD, "rate_limited").await?, 0);
    let (code, text) = http_get(port, "/metrics").await?;
    assert_eq!(code, 200);
    let bad_metric = metric(
        &text,
        &format!("hailan_ingest_gateway_bad_proofs_total{{gateway=\"{ABUSER}\"}}"),
    );
    assert_eq!(bad_metric, bad as f64, "{text}");
    let limited_metric = metric(
        &text,
        &format!(
            "hailan_ingest_gateway_rate_limited_total{{gateway=\"{ABUSER}\",limit=\"proofs\"}}"
        ),
    );
    assert_eq!(limited_metric, limited as f64, "{text}");
    assert!(
        metric(
            &text,
            "hailan_ingest_pairing_checks_total{batch=\"isolated\"}"
        ) > 0.0,
        "the suspect's proofs were verified in a batch of their own: {text}"
    );
    assert!(
        ingest
            .log_text()
            .contains("gateway keeps sending bad proofs"),
        "{}",
        ingest.log_text()
    );
    drop(ingest);
    db.drop().await?;
    Ok(())
}
