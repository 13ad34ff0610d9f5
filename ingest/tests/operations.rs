//! The procedures of OPERATIONS.md, run for real: a backup and
//! point-in-time restore drill and a failover to a synchronous standby,
//! each with a `hailan-ingest run` process writing what test gateways
//! publish through the real Mosquitto into private PostgreSQL clusters.
//! The settings and commands come from `hailan_tests::ops`, the same
//! templates OPERATIONS.md quotes (checked by the last test here).

use anyhow::{Context, Result};
use hailan_proto::envelope;
use hailan_proto::{DataType, topic};
use hailan_tests::api::Standby;
use hailan_tests::ops;
use hailan_tests::{
    DevZk, HasUrl, IngestProcess, PrivatePostgres, Publisher, TestDevice, count_readings, enrol,
    eventually,
};
use sqlx::{AssertSqlSafe, Executor, PgPool};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_hailan-ingest");
const WAIT: Duration = Duration::from_secs(40);

/// A temporary directory the `postgres` account can write to.
fn shared_tempdir(prefix: &str) -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
    let status = std::process::Command::new("chmod")
        .arg("777")
        .arg(dir.path())
        .status()?;
    anyhow::ensure!(status.success(), "chmod 777 {}", dir.path().display());
    Ok(dir)
}

/// Readings in `pool` (an error — the server restarting or gone — counts as none).
async fn rows(pool: &PgPool) -> i64 {
    count_readings(pool, "").await.unwrap_or(-1)
}

/// Wait until `pool` holds at least `n` readings; returns the count seen.
async fn wait_rows(pool: &PgPool, n: i64) -> Result<i64> {
    eventually(WAIT, &format!("{n} readings"), || async move {
        let c = rows(pool).await;
        Ok((c >= n).then_some(c))
    })
    .await
}

/// Publishes unproven readings of one device in chunks of 100 (each chunk
/// waits for its PUBACKs) until `limit` or until `stop` is set.
struct Stream {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<usize>>,
}

fn stream(mut p: Publisher, mut d: TestDevice, limit: usize) -> Stream {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let task = tokio::spawn(async move {
        let topic = topic::up(&d.gateway_id);
        let mut sent = 0;
        while sent < limit && !flag.load(Ordering::SeqCst) {
            let n = 100.min(limit - sent);
            let chunk = (0..n)
                .map(|_| envelope::encode(&d.unproven_reading(&[70])))
                .collect();
            p.publish_all(&topic, chunk).await?;
            sent += n;
        }
        Ok(sent)
    });
    Stream { stop, task }
}

impl Stream {
    /// Stop publishing; how many readings were published (all PUBACKed).
    async fn finish(self) -> Result<usize> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await?
    }

    /// Wait until all of `limit` is published.
    async fn join(self) -> Result<usize> {
        self.task.await?
    }
}

/// Every (device, seq) stored, in order (as the superuser, straight from
/// the partition, where RLS does not apply), optionally only those whose
/// transaction committed at or before `committed_by`.
async fn readings(su: &PgPool, committed_by: Option<&str>) -> Result<Vec<String>> {
    const SELECT: &str = "SELECT device_id::text || '/' || seq FROM health_data_heart_rate";
    Ok(match committed_by {
        Some(t) => {
            sqlx::query_scalar(AssertSqlSafe(format!(
                "{SELECT} WHERE pg_xact_commit_timestamp(xmin) <= $1::timestamptz \
                 ORDER BY device_id, seq"
            )))
            .bind(t)
            .fetch_all(su)
            .await?
        }
        None => {
            sqlx::query_scalar(AssertSqlSafe(format!("{SELECT} ORDER BY device_id, seq")))
                .fetch_all(su)
                .await?
        }
    })
}

/// Backup while ingest writes, restore to a time T into a fresh cluster,
/// and find there exactly the readings whose transactions committed at or
/// before T — no fewer (the archive replayed up to T), no more (replay
/// stopped at T).
///
/// Why a time and commit timestamps: `recovery_target_time` stops replay
/// before the first commit record later than T, and with
/// `track_commit_timestamp = on` the primary can be asked which rows'
/// transactions committed at or before T — the same timestamps, so the
/// expected set is exact while ingest keeps writing across T (no pause, no
/// guess about batches in flight).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_point_in_time_restore_drill() -> Result<()> {
    let started = Instant::now();
    let archive = shared_tempdir("hailan-archive-")?;
    let pg = PrivatePostgres::start_with(&ops::archive_conf(archive.path())?).await?;
    let pool = hailan_db::connect(&pg.url, 2).await?;
    let zk = DevZk::new()?;
    let logs = tempfile::tempdir()?;
    let gw = "gw-drill-1";
    enrol(&pool, gw).await?;
    let _ingest = IngestProcess::start(Path::new(BIN), &pg, &zk, &[gw], logs.path())?;
    let mut p = Publisher::connect(gw).await?;
    let d = TestDevice::new(gw, "dev-drill-pitr", DataType::HeartRate, 1001);
    p.register(&pool, &[&d]).await?;

    // Ingest writes a stream; the base backup is taken in the middle of it.
    let s = stream(p, d, 40_000);
    let before_backup = wait_rows(&pool, 200).await?;
    let backups = shared_tempdir("hailan-backup-")?;
    let backup = backups.path().join("base");
    let backup_started = Instant::now();
    {
        let backup = backup.clone();
        let port = pg.port;
        tokio::task::spawn_blocking(move || ops::base_backup(port, &backup)).await??;
    }
    let backup_time = backup_started.elapsed();
    let after_backup = rows(&pool).await;
    anyhow::ensure!(
        after_backup > before_backup,
        "ingest wrote nothing during the backup ({before_backup} rows before and after)"
    );

    // T, mid-stream: rows commit before and after it.
    wait_rows(&pool, after_backup + 300).await?;
    let su = PgPool::connect(&pg.superuser_url()).await?;
    let target: String = sqlx::query_scalar("SELECT clock_timestamp()::text")
        .fetch_one(&su)
        .await?;
    let at_target = rows(&pool).await;
    wait_rows(&pool, at_target + 300).await?;
    let sent = s.finish().await?;
    wait_rows(&pool, sent as i64).await?;

    // Archive the WAL up to now (T's successor commits are in it).
    let segment: String = sqlx::query_scalar("SELECT pg_walfile_name(pg_switch_wal())")
        .fetch_one(&su)
        .await?;
    eventually(WAIT, "the last WAL segment in the archive", || {
        let seg = segment.clone();
        let su = &su;
        async move {
            let last: Option<String> =
                sqlx::query_scalar("SELECT last_archived_wal FROM pg_stat_archiver")
                    .fetch_one(su)
                    .await?;
            Ok(last.is_some_and(|l| l >= seg).then_some(()))
        }
    })
    .await?;
    let all = readings(&su, None).await?;
    let expected = readings(&su, Some(&target)).await?;
    assert_eq!(all.len(), sent, "every published reading is on the primary");
    assert!(
        expected.len() as i64 > after_backup && expected.len() < sent,
        "T must fall after the backup and before the end of the stream: \
         {after_backup} rows after the backup, {} before T, {sent} in all",
        expected.len()
    );

    // Restore into a fresh data directory on another port.
    let restore_started = Instant::now();
    let restore_dir = shared_tempdir("hailan-restore-")?;
    let data = restore_dir.path().join("data");
    ops::restore_steps(&backup, &data)?;
    hailan_tests::append_conf(&data, &ops::restore_conf(archive.path(), &target)?)?;
    let restored = PrivatePostgres::adopt(restore_dir, hailan_tests::free_port()?);
    restored.start_again()?;
    let r = &restored;
    let rc = eventually(
        WAIT,
        "the restored cluster to finish recovery",
        || async move {
            let Ok(c) = PgPool::connect(&r.superuser_url()).await else {
                return Ok(None);
            };
            let recovering: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
                .fetch_one(&c)
                .await?;
            Ok((!recovering).then_some(c))
        },
    )
    .await?;
    let restore_time = restore_started.elapsed();
    let got = readings(&rc, None).await?;
    assert_eq!(
        got.len(),
        expected.len(),
        "the restored cluster holds exactly the readings committed by T"
    );
    assert_eq!(got, expected);
    eprintln!(
        "drill: {sent} readings, backup {backup_time:?} while ingest wrote {} rows, \
         {} committed by T, restore to T {restore_time:?}, whole test {:?}",
        after_backup - before_backup,
        expected.len(),
        started.elapsed()
    );
    Ok(())
}

/// A multi-host DATABASE_URL (primary first, then the standby), as
/// OPERATIONS.md tells an operator to write it.
struct Servers(String);

impl HasUrl for Servers {
    fn url(&self) -> &str {
        &self.0
    }
}

/// kill -9 the primary while ingest writes to it with a synchronous
/// standby, promote the standby: ingest moves to it by itself, and every
/// published reading is there exactly once — including those of the batch
/// the primary died under.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_the_synchronous_standby_loses_and_doubles_nothing() -> Result<()> {
    let started = Instant::now();
    let primary = PrivatePostgres::start().await?;
    let standby = Standby::start_named(&primary, Some("standby1")).await?;
    let su = PgPool::connect(&primary.superuser_url()).await?;
    for sql in ops::render_all(ops::SYNC_ON_PRIMARY, &[("NAME", "standby1")]) {
        su.execute(AssertSqlSafe(sql)).await?;
    }
    eventually(WAIT, "the standby to be synchronous", || {
        let su = &su;
        async move {
            let state: Option<String> = sqlx::query_scalar(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby1'",
            )
            .fetch_optional(su)
            .await?;
            Ok((state.as_deref() == Some("sync")).then_some(()))
        }
    })
    .await?;
    su.close().await;
    let pool = hailan_db::connect(&primary.url, 2).await?;
    let replica = hailan_db::connect(&standby.url, 2).await?;
    let gw = "gw-drill-2";
    enrol(&pool, gw).await?;
    let zk = DevZk::new()?;
    let logs = tempfile::tempdir()?;
    let servers = Servers(format!(
        "postgres://hailan:hailan@127.0.0.1:{},127.0.0.1:{}/hailan?target_session_attrs=read-write",
        primary.port, standby.port
    ));
    let ingest = IngestProcess::start(Path::new(BIN), &servers, &zk, &[gw], logs.path())?;
    let mut p = Publisher::connect(gw).await?;
    let d = TestDevice::new(gw, "dev-drill-failover", DataType::HeartRate, 1002);
    p.register(&pool, &[&d]).await?;

    const N: usize = 6000;
    let s = stream(p, d, N);
    wait_rows(&pool, (N / 4) as i64).await?;
    let at_kill = rows(&pool).await;
    primary.kill9()?;
    let killed = Instant::now();
    anyhow::ensure!(at_kill < N as i64, "the stream was over before the kill");
    standby.promote()?;
    let promote_time = killed.elapsed();
    wait_rows(&replica, at_kill + 1).await?;
    let resumed = killed.elapsed();
    let sent = s.join().await?;
    assert_eq!(sent, N);
    wait_rows(&replica, N as i64).await?;
    let all_in = killed.elapsed();
    assert_eq!(
        count_readings(&replica, "").await?,
        N as i64,
        "nothing doubled"
    );
    let distinct: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT seq) FROM health_data_heart_rate")
            .fetch_one(&replica)
            .await?;
    assert_eq!(distinct, N as i64, "every seq once");
    let log = ingest.log_text();
    assert!(
        log.contains("the primary changed: writing to the new primary"),
        "ingest must say it followed the promotion:\n{log}"
    );
    eprintln!(
        "failover: {N} readings, {at_kill} stored before kill -9; promoted in {promote_time:?}, \
         first write on the new primary {resumed:?} after the kill, all in {all_in:?}; \
         whole test {:?}",
        started.elapsed()
    );
    Ok(())
}

/// OPERATIONS.md shows every template of `hailan_tests::ops`, filled with
/// `ops::DOC_VALUES`, word for word: the document says what the tests do.
#[test]
fn operations_md_quotes_what_the_tests_run() -> Result<()> {
    let path = hailan_tests::repo_root().join("OPERATIONS.md");
    let doc = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let templates = ops::ARCHIVE_CONF
        .iter()
        .chain(ops::RESTORE_CONF)
        .chain(ops::RESTORE_STEPS)
        .chain(ops::STANDBY_CONF)
        .chain(ops::SYNC_ON_PRIMARY)
        .chain([&ops::BASE_BACKUP]);
    let missing: Vec<String> = templates
        .map(|t| ops::render(t, ops::DOC_VALUES))
        .filter(|line| !doc.contains(line.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "OPERATIONS.md no longer quotes what the tests run; missing:\n{}",
        missing.join("\n")
    );
    Ok(())
}
