//! Automatic failover on a real HA engine: PostgreSQL run by Patroni over a
//! three-member etcd cluster (`hailan_tests::ha`, rendered from the shipped
//! `deploy/patroni/`), `synchronous_mode: true`, with `hailan-ingest run`
//! writing what a test gateway publishes through the real Mosquitto, on the
//! multi-host URL OPERATIONS.md §3 gives. Every test counts by seq: each
//! reading the broker acknowledged to the publisher is stored exactly once,
//! and a watch polls `pg_is_in_recovery()` on every node throughout: never
//! two writable nodes at once.
//!
//! Run one at a time (the `patroni` test group in `.config/nextest.toml`):
//! each starts three etcd members and two Patroni nodes.

use anyhow::{Context, Result};
use hailan_proto::envelope;
use hailan_proto::{DataType, topic};
use hailan_tests::ha::{HaCluster, TEST_TIMING, WatchReport, WritableWatch};
use hailan_tests::{
    DevZk, HasUrl, IngestProcess, Publisher, TestDevice, count_readings, enrol, eventually,
};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use std::path::Path;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_hailan-ingest");
const WAIT: Duration = Duration::from_secs(60);
/// The test gateway account (in the development broker).
const GW: &str = "gw-drill-3";
/// Readings published per second by the stream.
const RATE: usize = 2000;

/// The multi-host URL ingest is given.
struct Servers(String);

impl HasUrl for Servers {
    fn url(&self) -> &str {
        &self.0
    }
}

/// A pool on the node that is writable now (`None`: none is).
async fn leader_pool(cluster: &HaCluster) -> Option<PgPool> {
    for n in &cluster.nodes {
        if n.writable().await == Some(true) {
            return PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(2))
                .connect(&n.app_url())
                .await
                .ok();
        }
    }
    None
}

/// Readings on the writable node (`-1`: none is writable or it failed).
async fn rows(cluster: &HaCluster) -> i64 {
    let Some(pool) = leader_pool(cluster).await else {
        return -1;
    };
    let n = count_readings(&pool, "").await.unwrap_or(-1);
    pool.close().await;
    n
}

/// Wait until the writable node holds at least `n` readings.
async fn wait_rows(cluster: &HaCluster, n: i64, limit: Duration) -> Result<i64> {
    eventually(
        limit,
        &format!("{n} readings on the leader"),
        || async move {
            let c = rows(cluster).await;
            Ok((c >= n).then_some(c))
        },
    )
    .await
}

/// Publishes unproven readings of one device, 50 at a time (each chunk
/// waits for its PUBACKs), at about [`RATE`] a second, until `limit`.
fn stream(
    mut p: Publisher,
    mut d: TestDevice,
    limit: usize,
) -> tokio::task::JoinHandle<Result<usize>> {
    tokio::spawn(async move {
        let topic = topic::up(&d.gateway_id);
        let started = Instant::now();
        let mut sent = 0;
        while sent < limit {
            let n = 50.min(limit - sent);
            let chunk = (0..n)
                .map(|_| envelope::encode(&d.unproven_reading(&[70])))
                .collect();
            p.publish_all(&topic, chunk).await?;
            sent += n;
            let due = started + Duration::from_secs_f64(sent as f64 / RATE as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        Ok(sent)
    })
}

/// A Patroni cluster, ingest on its multi-host URL, a registered device.
struct Rig {
    cluster: HaCluster,
    ingest: IngestProcess,
    _zk: DevZk,
    _logs: tempfile::TempDir,
}

impl Rig {
    /// The rig, and the publisher and device the stream takes.
    async fn start(device: &str, seed: u64) -> Result<(Rig, Publisher, TestDevice)> {
        let cluster = HaCluster::start(2).await?;
        let pool = leader_pool(&cluster)
            .await
            .context("no writable node after start")?;
        enrol(&pool, GW).await?;
        let zk = DevZk::new()?;
        let logs = tempfile::tempdir()?;
        let ingest = IngestProcess::start(
            Path::new(BIN),
            &Servers(cluster.url()),
            &zk,
            &[GW],
            logs.path(),
        )?;
        let mut publisher = Publisher::connect(GW).await?;
        let d = TestDevice::new(GW, device, DataType::HeartRate, seed);
        publisher.register(&pool, &[&d]).await?;
        pool.close().await;
        Ok((
            Rig {
                cluster,
                ingest,
                _zk: zk,
                _logs: logs,
            },
            publisher,
            d,
        ))
    }

    /// Poll every node's writability from now on.
    fn watch(&self) -> WritableWatch {
        WritableWatch::start(
            self.cluster
                .nodes
                .iter()
                .map(|n| (n.pg_port, n.superuser_url("postgres")))
                .collect(),
        )
    }
}

fn assert_no_split_brain(report: &WatchReport) {
    assert!(
        report.max_writable <= 1,
        "two writable nodes at once: {:?} ({report:?})",
        report.split_brain
    );
    assert!(report.rounds > 20, "the watch hardly ran: {report:?}");
}

/// kill -9 of the leader's postmaster and backends while ingest writes:
/// Patroni fails over to the synchronous standby by itself
/// (`primary_start_timeout: 0`), ingest follows, every acknowledged reading
/// is there exactly once (RPO 0), and the old leader comes back as a
/// standby by itself (pg_rewind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_9_fails_over_with_nothing_lost_and_the_old_leader_rejoins() -> Result<()> {
    let started = Instant::now();
    let (rig, p, d) = Rig::start("dev-ha-kill", 2101).await?;
    let (old, _) = rig.cluster.wait_healthy(WAIT).await?;
    let watch = rig.watch();
    const N: usize = 8000;
    let s = stream(p, d, N);
    let (cluster, ingest) = (&rig.cluster, &rig.ingest);
    let at_kill = wait_rows(cluster, 1500, WAIT).await?;
    cluster.nodes[old].kill9_postgres()?;
    let killed = Instant::now();
    let new = cluster.wait_new_leader(old, WAIT).await?;
    let promoted = killed.elapsed();
    wait_rows(cluster, at_kill + 1, WAIT).await?;
    let resumed = killed.elapsed();
    assert!(
        (at_kill as usize) < N,
        "the stream was over before the kill"
    );
    let sent = s.await??;
    assert_eq!(sent, N);
    check_counts(cluster, N).await?;
    let (leader, sync) = cluster.wait_healthy(Duration::from_secs(120)).await?;
    let rejoined = killed.elapsed();
    assert_eq!(
        (leader, sync),
        (new, old),
        "the old leader is the new synchronous standby"
    );
    let report = watch.finish().await?;
    assert_no_split_brain(&report);
    let log = ingest.log_text();
    assert!(
        log.contains("the primary changed: writing to the new primary"),
        "ingest must say it followed the failover:\n{log}"
    );
    eprintln!(
        "kill -9: {N} readings, {at_kill} stored before the kill; new leader {promoted:?} after \
         the kill, first reading committed there {resumed:?}, old leader a synchronous standby \
         again {rejoined:?}; {} watch rounds, max writable {}; whole test {:?}",
        report.rounds,
        report.max_writable,
        started.elapsed()
    );
    Ok(())
}

/// All `n` readings on the leader, each seq once, no gap.
async fn check_counts(cluster: &HaCluster, n: usize) -> Result<()> {
    wait_rows(cluster, n as i64, WAIT).await?;
    let pool = leader_pool(cluster)
        .await
        .context("no writable node at the end")?;
    assert_eq!(
        count_readings(&pool, "").await?,
        n as i64,
        "nothing doubled"
    );
    let (distinct, lo, hi): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(DISTINCT seq), min(seq), max(seq) FROM health_data_heart_rate",
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!(distinct, n as i64, "every seq once");
    assert_eq!(
        hi - lo + 1,
        n as i64,
        "no seq missing between {lo} and {hi}"
    );
    pool.close().await;
    Ok(())
}

/// A planned switchover (`patronictl switchover`) in the middle of the
/// stream: the leader hands over to the synchronous standby, ingest
/// follows; batches cut off by the switch are retried and absorbed by the
/// reading key, so nothing is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_switchover_mid_stream_loses_and_doubles_nothing() -> Result<()> {
    let started = Instant::now();
    let (rig, p, d) = Rig::start("dev-ha-switchover", 2102).await?;
    let cluster = &rig.cluster;
    let (old, sync) = cluster.wait_healthy(WAIT).await?;
    let watch = rig.watch();
    const N: usize = 8000;
    let s = stream(p, d, N);
    let at_switch = wait_rows(cluster, 1500, WAIT).await?;
    let switch_started = Instant::now();
    let out = {
        let (leader, candidate) = (old, sync);
        // patronictl waits for the switchover; the stream goes on meanwhile.
        let c = cluster;
        tokio::task::block_in_place(|| c.switchover(leader, candidate))?
    };
    let new = cluster.wait_new_leader(old, WAIT).await?;
    assert_eq!(new, sync, "the synchronous standby took over: {out}");
    let switched = switch_started.elapsed();
    wait_rows(cluster, at_switch + 1, WAIT).await?;
    let resumed = switch_started.elapsed();
    assert!(
        (at_switch as usize) < N,
        "the stream was over before the switchover"
    );
    assert_eq!(s.await??, N);
    check_counts(cluster, N).await?;
    let (leader, standby) = cluster.wait_healthy(Duration::from_secs(120)).await?;
    assert_eq!(
        (leader, standby),
        (sync, old),
        "the old leader follows the new one"
    );
    let report = watch.finish().await?;
    assert_no_split_brain(&report);
    let log = rig.ingest.log_text();
    assert!(
        log.contains("the primary changed: writing to the new primary"),
        "ingest must say it followed the switchover:\n{log}"
    );
    eprintln!(
        "switchover: {N} readings, {at_switch} stored before it; new leader {switched:?} after \
         `patronictl switchover`, writing there {resumed:?}; {} watch rounds; whole test {:?}",
        report.rounds,
        started.elapsed()
    );
    Ok(())
}

/// etcd loses one member of three: nothing changes (the leader stays,
/// writes go on). It loses a second (no quorum): Patroni demotes the
/// leader — no node is writable, ingest commits (and so acknowledges)
/// nothing — and when the members return a leader is elected and ingest
/// resumes; every reading stored exactly once, never two writable nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_losing_one_member_changes_nothing_and_losing_quorum_demotes_the_leader() -> Result<()>
{
    let started = Instant::now();
    let (mut rig, p, d) = Rig::start("dev-ha-etcd", 2103).await?;
    let (old, _) = rig.cluster.wait_healthy(WAIT).await?;
    let watch = rig.watch();
    const N: usize = 24_000;
    let s = stream(p, d, N);
    let before = wait_rows(&rig.cluster, 1000, WAIT).await?;

    // One member of three gone: the leader stays and writes go on.
    rig.cluster.etcd[2].kill();
    let one_gone = Instant::now();
    wait_rows(&rig.cluster, before + 4000, WAIT).await?;
    assert_eq!(
        rig.cluster.leader().await,
        Some(old),
        "losing one etcd member of three must not move the leader"
    );
    let with_two = one_gone.elapsed();

    // A second member gone: no quorum. The leader demotes itself.
    rig.cluster.etcd[1].kill();
    let quorum_lost = Instant::now();
    let cluster = &rig.cluster;
    eventually(
        WAIT,
        "no writable node without etcd quorum",
        || async move {
            let mut any = false;
            for n in &cluster.nodes {
                any |= n.writable().await == Some(true);
            }
            Ok((!any).then_some(()))
        },
    )
    .await
    .with_context(|| cluster.patroni_logs())?;
    let demoted = quorum_lost.elapsed();
    let ttl = Duration::from_secs(TEST_TIMING.ttl.into());
    assert!(
        demoted <= ttl,
        "the leader took {demoted:?} to demote (ttl {ttl:?})"
    );
    // Nothing is committed while there is no leader (so nothing acknowledged).
    let stuck = count_on(&cluster.nodes[old]).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        count_on(&cluster.nodes[old]).await?,
        stuck,
        "a commit without a leader"
    );
    assert!(
        (stuck as usize) < N,
        "the stream was over before quorum was lost"
    );

    // Quorum back: a leader again, ingest resumes, nothing lost.
    rig.cluster.etcd[1].restart()?;
    rig.cluster.etcd[2].restart()?;
    let back = Instant::now();
    let cluster = &rig.cluster;
    wait_rows(cluster, stuck + 1, WAIT).await?;
    let resumed = back.elapsed();
    assert_eq!(s.await??, N);
    check_counts(cluster, N).await?;
    cluster.wait_healthy(Duration::from_secs(120)).await?;
    let report = watch.finish().await?;
    assert_no_split_brain(&report);
    assert!(
        report.rounds_without_writer > 0,
        "the watch never saw the demotion: {report:?}"
    );
    eprintln!(
        "etcd: {N} readings; with 2 of 3 members {with_two:?} of writing as before; quorum \
         lost → leader demoted in {demoted:?}; quorum back → writing again in {resumed:?}; {} \
         watch rounds ({} without a writable node); whole test {:?}",
        report.rounds,
        report.rounds_without_writer,
        started.elapsed()
    );
    Ok(())
}

/// Readings on one node (a standby answers too), as the application role.
/// A leader that has just demoted itself restarts as a standby and refuses
/// connections for a moment: asked again until it answers.
async fn count_on(node: &hailan_tests::ha::PatroniNode) -> Result<i64> {
    eventually(WAIT, &format!("connecting to {}", node.name), || async {
        let Ok(pool) = PgPoolOptions::new()
            .max_connections(1)
            .connect(&node.app_url())
            .await
        else {
            return Ok(None);
        };
        let n = count_readings(&pool, "").await.ok();
        pool.close().await;
        Ok(n)
    })
    .await
}

/// The leader cut off etcd (its relays close): it cannot renew its lease
/// and demotes itself within `ttl`; the other node is promoted; never two
/// writable nodes. Healed, the old leader rejoins as the synchronous
/// standby; every reading stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_partitioned_from_etcd_demotes_itself_and_the_standby_takes_over() -> Result<()> {
    let started = Instant::now();
    let (rig, p, d) = Rig::start("dev-ha-partition", 2104).await?;
    let cluster = &rig.cluster;
    let (old, sync) = cluster.wait_healthy(WAIT).await?;
    let watch = rig.watch();
    const N: usize = 30_000;
    let s = stream(p, d, N);
    let at_cut = wait_rows(cluster, 1500, WAIT).await?;
    cluster.nodes[old].cut_from_etcd();
    let cut = Instant::now();
    let node = &cluster.nodes[old];
    eventually(
        WAIT,
        "the partitioned leader to demote itself",
        || async move { Ok((node.writable().await != Some(true)).then_some(())) },
    )
    .await
    .with_context(|| cluster.patroni_logs())?;
    let demoted = cut.elapsed();
    let ttl = Duration::from_secs(TEST_TIMING.ttl.into());
    assert!(
        demoted <= ttl,
        "the partitioned leader took {demoted:?} to demote (ttl {ttl:?})"
    );
    let new = cluster.wait_new_leader(old, WAIT).await?;
    assert_eq!(new, sync);
    let promoted = cut.elapsed();
    wait_rows(cluster, at_cut + 1, WAIT).await?;
    let resumed = cut.elapsed();
    cluster.nodes[old].heal_etcd();
    assert!(
        (at_cut as usize) < N,
        "the stream was over before the partition"
    );
    assert_eq!(s.await??, N);
    check_counts(cluster, N).await?;
    let (leader, standby) = cluster.wait_healthy(Duration::from_secs(120)).await?;
    assert_eq!(
        (leader, standby),
        (new, old),
        "the old leader rejoins as the standby"
    );
    let report = watch.finish().await?;
    assert_no_split_brain(&report);
    eprintln!(
        "partition: {N} readings, {at_cut} stored before the cut; old leader read-only {demoted:?} \
         after the cut (ttl {ttl:?}), new leader {promoted:?}, writing there {resumed:?}; {} \
         watch rounds; whole test {:?}",
        report.rounds,
        started.elapsed()
    );
    Ok(())
}

/// OPERATIONS.md §3 shows the commands these tests run (`hailan_tests::ha`'s
/// templates filled with `ha::DOC_VALUES`), word for word, and names every
/// test of this file.
#[test]
fn operations_md_quotes_the_patroni_commands_the_tests_run() -> Result<()> {
    use hailan_tests::{ha, ops};
    let path = hailan_tests::repo_root().join("OPERATIONS.md");
    let doc = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let missing: Vec<String> = [ha::LIST, ha::SWITCHOVER, ha::ETCD_HEALTH]
        .iter()
        .map(|t| ops::render(t, ha::DOC_VALUES))
        .chain(
            [
                "leader_killed_9_fails_over_with_nothing_lost_and_the_old_leader_rejoins",
                "planned_switchover_mid_stream_loses_and_doubles_nothing",
                "etcd_losing_one_member_changes_nothing_and_losing_quorum_demotes_the_leader",
                "leader_partitioned_from_etcd_demotes_itself_and_the_standby_takes_over",
            ]
            .map(str::to_owned),
        )
        .filter(|line| !doc.contains(line.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "OPERATIONS.md no longer quotes what the HA tests run; missing:\n{}",
        missing.join("\n")
    );
    Ok(())
}
