//! Failover benchmark on a real HA engine (BENCHMARKS.md "PostgreSQL
//! failover"): a Patroni cluster of two PostgreSQL nodes over three etcd
//! members (`hailan_tests::ha`, the shipped `deploy/patroni/`,
//! `synchronous_mode: true`), ingest following the leader on the multi-host
//! URL, readings through the development broker.
//!
//! ```sh
//! cargo xtask services
//! cargo run --release -p hailan-ingest --example ha_bench -- [RUNS] [READINGS]
//! ```
//!
//! - **Recovery time**, RUNS times (default 10): while a gateway publishes a
//!   steady 1,000 readings/s, kill -9 the leader's postmaster and backends;
//!   the time from the kill to the first reading committed on the new leader
//!   (the first row whose `pg_xact_commit_timestamp` is after the kill).
//!   Between runs the old leader rejoins as the synchronous standby by
//!   itself. p50/p99.
//! - **Write throughput, synchronous vs asynchronous replication**: READINGS
//!   (default 5,000) readings queued in the broker while ingest is stopped,
//!   then drained by ingest; readings/s from its start to the last commit,
//!   three times with `synchronous_mode: true` and three with `false`
//!   (`patronictl edit-config`), median of each.
//!
//! Ingest runs inside this process (the same code as `hailan-ingest run`,
//! including the follower of `hailan_db`).

use anyhow::Result;
use hailan_db as db;
use hailan_ingest::config::{BatchConfig, HttpConfig, IngestConfig, MqttConfig, ZkConfig};
use hailan_ingest::{metrics::Metrics, run};
use hailan_proto::{DataType, envelope, topic};
use hailan_tests::ha::HaCluster;
use hailan_tests::{
    DevZk, Publisher, TestDevice, count_readings, enrol, eventually, mqtt_ingest_host_port,
    mqtt_password,
};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const GW: &str = "gw-drill-4";
const WAIT: Duration = Duration::from_secs(120);

/// An ingest consumer inside this process, following the leader.
struct Consumer {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<()>>,
}

async fn consumer(url: &str, client_id: &str, group: &str, zk: &DevZk) -> Result<Consumer> {
    let (host, port) = mqtt_ingest_host_port();
    let cfg = IngestConfig {
        database_url: Some(url.to_owned()),
        mqtt: MqttConfig {
            host,
            port,
            client_id: client_id.to_owned(),
            username: "hailan-ingest".into(),
            password: Some(mqtt_password("hailan-ingest")?),
            keep_alive_s: 30,
            ca_file: None,
            subscriptions: vec![format!("$share/{group}/hailan/v1/{GW}/up")],
            status_subscription: String::new(),
        },
        batch: BatchConfig {
            max_messages: 500,
            max_wait_ms: 20,
            ..BatchConfig::default()
        },
        zk: ZkConfig {
            keys_dir: zk.dir.path().to_owned(),
            allow_dev_keys: true,
            batch_weight_bits: 128,
        },
        http: HttpConfig {
            listen: String::new(),
        },
        fair_share: hailan_ingest::config::FairShareConfig {
            enabled: false,
            ..Default::default()
        },
        quarantine: Default::default(),
    };
    let (pool, follower) = db::connect_following(url, 8).await?;
    let verifier = Arc::new(run::load_verifier(&cfg)?);
    let stop = CancellationToken::new();
    let metrics = Arc::new(Metrics::new());
    if let Some(f) = follower {
        tokio::spawn(db::follow_primary(
            pool.clone(),
            f,
            metrics.db_primary_switches.clone(),
            stop.clone(),
        ));
    }
    let status = Arc::new(run::Status::default());
    let task = tokio::spawn(run::run(cfg, pool, verifier, metrics, status, stop.clone()));
    Ok(Consumer { stop, task })
}

impl Consumer {
    async fn stop(self) -> Result<()> {
        self.stop.cancel();
        self.task.await?
    }
}

async fn pool_on(url: &str) -> Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(2))
        .connect(url)
        .await?)
}

/// The leader's index, once its PostgreSQL answers as writable.
async fn writable_leader(cluster: &HaCluster) -> Result<usize> {
    eventually(WAIT, "a writable leader", || async move {
        for (i, n) in cluster.nodes.iter().enumerate() {
            if n.writable().await == Some(true) {
                return Ok(Some(i));
            }
        }
        Ok(None)
    })
    .await
}

async fn rows_on(cluster: &HaCluster, i: usize) -> Result<i64> {
    let pool = pool_on(&cluster.nodes[i].app_url()).await?;
    let n = count_readings(&pool, "").await?;
    pool.close().await;
    Ok(n)
}

/// Publish at `rate` readings/s until `stop`; hands the publisher and
/// device back.
fn steady(
    mut p: Publisher,
    mut d: TestDevice,
    rate: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Result<(Publisher, TestDevice)>> {
    tokio::spawn(async move {
        let topic = topic::up(&d.gateway_id);
        let started = Instant::now();
        let mut sent = 0usize;
        while !stop.load(Ordering::SeqCst) {
            let chunk = (0..50)
                .map(|_| envelope::encode(&d.unproven_reading(&[70])))
                .collect();
            p.publish_all(&topic, chunk).await?;
            sent += 50;
            let due = started + Duration::from_secs_f64(sent as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        Ok((p, d))
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn set_synchronous(cluster: &HaCluster, on: bool) -> Result<()> {
    let v = if on { "true" } else { "false" };
    cluster.patronictl(&[
        "edit-config",
        "--set",
        &format!("synchronous_mode={v}"),
        "--force",
    ])?;
    let leader = writable_leader(cluster).await?;
    let url = cluster.nodes[leader].superuser_url("postgres");
    eventually(WAIT, "synchronous_standby_names to follow", || {
        let url = url.clone();
        async move {
            let pool = pool_on(&url).await?;
            let names: String = sqlx::query_scalar("SHOW synchronous_standby_names")
                .fetch_one(&pool)
                .await?;
            pool.close().await;
            Ok((names.is_empty() != on).then_some(()))
        }
    })
    .await?;
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(10);
    let readings: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(5000);
    let started = Instant::now();
    let cluster = HaCluster::start(2).await?;
    let leader = writable_leader(&cluster).await?;
    let pool = pool_on(&cluster.nodes[leader].app_url()).await?;
    enrol(&pool, GW).await?;
    let zk = DevZk::new()?;
    let group = format!("hab{}", uuid::Uuid::new_v4().simple());
    let client_id = format!("ha-bench-{}", uuid::Uuid::new_v4().simple());
    let url = cluster.url();
    let mut ingest = consumer(&url, &client_id, &group, &zk).await?;
    let mut p = Publisher::connect(GW).await?;
    let mut d = TestDevice::new(GW, "dev-ha-bench", DataType::HeartRate, 2201);
    p.register(&pool, &[&d]).await?;
    pool.close().await;
    eprintln!("cluster up and ingest running in {:?}", started.elapsed());

    // Recovery time.
    let mut recovery = Vec::new();
    let mut promotion = Vec::new();
    for run in 0..runs {
        let (old, _) = cluster.wait_healthy(WAIT).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = steady(p, d, 1000, Arc::clone(&stop));
        let before = rows_on(&cluster, old).await?;
        let c = &cluster;
        eventually(WAIT, "ingest writing", || async move {
            Ok((rows_on(c, old).await.unwrap_or(0) >= before + 500).then_some(()))
        })
        .await?;
        let su = pool_on(&cluster.nodes[old].superuser_url("hailan")).await?;
        let kill_at: String = sqlx::query_scalar("SELECT clock_timestamp()::text")
            .fetch_one(&su)
            .await?;
        su.close().await;
        cluster.nodes[old].kill9_postgres()?;
        let killed = Instant::now();
        let new = cluster.wait_new_leader(old, WAIT).await?;
        let promoted = killed.elapsed();
        let su_url = cluster.nodes[new].superuser_url("hailan");
        eventually(WAIT, "a reading committed on the new leader", || {
            let (su_url, kill_at) = (su_url.clone(), kill_at.clone());
            async move {
                let Ok(pool) = pool_on(&su_url).await else {
                    return Ok(None);
                };
                let after: Option<bool> = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM health_data_heart_rate \
                      WHERE pg_xact_commit_timestamp(xmin) > $1::timestamptz)",
                )
                .bind(&kill_at)
                .fetch_one(&pool)
                .await
                .ok();
                pool.close().await;
                Ok((after == Some(true)).then_some(()))
            }
        })
        .await?;
        let recovered = killed.elapsed();
        stop.store(true, Ordering::SeqCst);
        (p, d) = s.await??;
        eprintln!(
            "run {}: new leader {:.2} s after the kill, first reading committed there {:.2} s",
            run + 1,
            promoted.as_secs_f64(),
            recovered.as_secs_f64()
        );
        promotion.push(promoted.as_secs_f64());
        recovery.push(recovered.as_secs_f64());
    }

    // Throughput, synchronous vs asynchronous.
    let mut throughput = Vec::new();
    for sync in [true, false] {
        set_synchronous(&cluster, sync).await?;
        cluster.wait_healthy(WAIT).await.ok();
        let mut rates = Vec::new();
        for _ in 0..3 {
            ingest.stop().await?;
            let leader = writable_leader(&cluster).await?;
            let before = rows_on(&cluster, leader).await?;
            let topic = topic::up(GW);
            let mut left = readings;
            while left > 0 {
                let n = left.min(500);
                let chunk = (0..n)
                    .map(|_| envelope::encode(&d.unproven_reading(&[70])))
                    .collect();
                p.publish_all(&topic, chunk).await?;
                left -= n;
            }
            let t0 = Instant::now();
            ingest = consumer(&url, &client_id, &group, &zk).await?;
            let target = before + readings as i64;
            let c = &cluster;
            eventually(WAIT, "the queued readings stored", || async move {
                Ok((rows_on(c, leader).await.unwrap_or(0) >= target).then_some(()))
            })
            .await?;
            rates.push(readings as f64 / t0.elapsed().as_secs_f64());
        }
        rates.sort_by(f64::total_cmp);
        eprintln!(
            "{}: {:?} readings/s",
            if sync { "synchronous" } else { "asynchronous" },
            rates.iter().map(|r| r.round()).collect::<Vec<_>>()
        );
        throughput.push(percentile(&rates, 0.5));
    }
    set_synchronous(&cluster, true).await?;
    ingest.stop().await?;

    recovery.sort_by(f64::total_cmp);
    promotion.sort_by(f64::total_cmp);
    println!(
        "ha_bench: {runs} failovers (kill -9 of the leader's postmaster and backends, ttl 10 s, loop_wait 1 s)"
    );
    println!(
        "  new leader after the kill:                  p50 {:.2} s  p99 {:.2} s",
        percentile(&promotion, 0.5),
        percentile(&promotion, 0.99)
    );
    println!(
        "  first reading committed on the new leader:  p50 {:.2} s  p99 {:.2} s  (min {:.2}, max {:.2})",
        percentile(&recovery, 0.5),
        percentile(&recovery, 0.99),
        recovery.first().copied().unwrap_or(f64::NAN),
        recovery.last().copied().unwrap_or(f64::NAN)
    );
    let (s, a) = (
        throughput.first().copied().unwrap_or(f64::NAN),
        throughput.get(1).copied().unwrap_or(f64::NAN),
    );
    println!(
        "  ingest write throughput, {readings} queued readings (median of 3): synchronous {s:.0}/s, \
         asynchronous {a:.0}/s ({:.0} % of asynchronous)",
        100.0 * s / a
    );
    println!("  whole benchmark {:.0} s", started.elapsed().as_secs_f64());
    drop(cluster);
    Ok(())
}
