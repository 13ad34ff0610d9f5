//! Ingest benchmark: verified readings per second end to end (MQTT in → rows
//! committed) with one and with two consumers, p50/p99 publish → row, beside
//! the pure batch verification of the same proofs and a COPY-based bulk load
//! of the same rows.
//!
//! ```sh
//! cargo xtask services
//! cargo run --release -p hailan-ingest --example ingest_bench -- [READINGS] [WINDOWS] [CONSUMERS]
//! ```
//! READINGS (default 1000) messages with one per-reading proof each, from 10
//! blood-pressure cuffs; WINDOWS (default 250) messages with one heart-rate
//! window proof of 16 readings each, from 10 straps; runs with 1..=CONSUMERS
//! (default 1) consumers in one shared-subscription group. Consumers run inside
//! this process (same code as `hailan-ingest run`), against the development
//! broker and a fresh database per scenario.

use anyhow::{Context, Result};
use hailan_db as db;
use hailan_ingest::config::{BatchConfig, HttpConfig, IngestConfig, MqttConfig, ZkConfig};
use hailan_ingest::{metrics::Metrics, run};
use hailan_proto::envelope::{self, Body, Envelope};
use hailan_proto::zk::{DevKeys, GroupClaim, Policy, Verifier, device_commitment};
use hailan_proto::{DataType, topic};
use hailan_tests::{
    DevZk, Publisher, TestDb, TestDevice, count_readings, enrol, mqtt_ingest_host_port,
    mqtt_password,
};
use sha2::Digest;
use sqlx::Row;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

const GW: &str = "gw-demo";
const DEVICES: usize = 10;

struct Workload {
    name: &'static str,
    registrations: Vec<Vec<u8>>,
    messages: Vec<Vec<u8>>,
    readings: usize,
    commitments: HashMap<String, [u8; 32]>,
}

fn generate(zk: &DevZk, windows: bool, messages: usize) -> Result<Workload> {
    let per_device = messages.div_ceil(DEVICES);
    let t = if windows {
        DataType::HeartRate
    } else {
        DataType::BloodPressure
    };
    let mut devices: Vec<TestDevice> = (0..DEVICES)
        .map(|i| {
            TestDevice::new(
                GW,
                &format!("bench-{}-{i}", t.as_str().to_lowercase()),
                t,
                1000 + i as u64,
            )
        })
        .collect();
    let registrations = devices
        .iter()
        .map(|d| envelope::encode(&d.registration()))
        .collect();
    let commitments = devices
        .iter()
        .map(|d| (d.device_id.clone(), device_commitment(&d.secret)))
        .collect();
    let started = Instant::now();
    let halves: Vec<&mut [TestDevice]> = {
        let (a, b) = devices.split_at_mut(DEVICES / 2);
        vec![a, b]
    };
    let produced: Vec<Result<Vec<Vec<u8>>>> = std::thread::scope(|s| {
        let handles: Vec<_> = halves
            .into_iter()
            .map(|half| {
                s.spawn(move || -> Result<Vec<Vec<u8>>> {
                    let mut out = Vec::new();
                    for d in half.iter_mut() {
                        for k in 0..per_device {
                            let e = if windows {
                                let values: Vec<u32> =
                                    (0..16).map(|i| 60 + ((k as u32 + i) % 40)).collect();
                                d.proven_window(&zk.window, &values)?
                            } else {
                                d.proven_reading(
                                    &zk.reading,
                                    &[1200 + (k as u32 % 200), 800, 933, 70],
                                )?
                            };
                            out.push(envelope::encode(&e));
                        }
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("prover thread panicked")))
            })
            .collect()
    });
    let mut all = Vec::new();
    for p in produced {
        all.extend(p?);
    }
    let readings = all.len() * if windows { 16 } else { 1 };
    println!(
        "generated {} {} messages ({} readings) in {:.1} s on 2 threads",
        all.len(),
        if windows { "window" } else { "per-reading" },
        readings,
        started.elapsed().as_secs_f64()
    );
    Ok(Workload {
        name: if windows {
            "heart-rate windows (16 readings/proof)"
        } else {
            "per-reading proofs"
        },
        registrations,
        messages: all,
        readings,
        commitments,
    })
}

/// Pure batch verification of the workload's proofs (N = 256 per batch), one thread.
fn pure_verification(zk: &DevZk, w: &Workload) -> Result<f64> {
    let keys = hailan_ingest::zk_cli::load_verifying_keys(zk.dir.path())?;
    let verifier = Verifier::new(keys, Policy::from_spec(), DevKeys::Allow)?;
    let envelopes: Vec<Envelope> = w
        .messages
        .iter()
        .map(|m| envelope::decode(m))
        .collect::<Result<_, _>>()?;
    let started = Instant::now();
    for chunk in envelopes.chunks(256) {
        let claims: Vec<GroupClaim<'_>> = chunk
            .iter()
            .map(|e| {
                let Body::Readings(b) = &e.body else {
                    unreachable!("workload holds readings")
                };
                GroupClaim {
                    gateway_id: &e.gateway_id,
                    device_id: &b.device_id,
                    device_commitment: &w.commitments[&b.device_id],
                    group: &b.groups[0],
                }
            })
            .collect();
        let verdicts = verifier.verify_batch(&claims, &mut rand_core::OsRng);
        anyhow::ensure!(
            verdicts.iter().all(Result::is_ok),
            "a benchmark proof does not verify"
        );
    }
    Ok(w.readings as f64 / started.elapsed().as_secs_f64())
}

struct Consumer {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<()>>,
    metrics: Arc<Metrics>,
}

/// Readings the consumers have committed (their metrics count a batch's rows
/// once its transaction has committed): watched instead of polling
/// `count(*)`, which took PostgreSQL CPU from the run it measured.
fn stored(consumers: &[Consumer]) -> u64 {
    consumers
        .iter()
        .map(|c| {
            c.metrics
                .readings
                .get_or_create(&hailan_ingest::metrics::OutcomeLabel {
                    outcome: "stored".into(),
                })
                .get()
        })
        .sum()
}

async fn consumer(url: &str, group: &str, zk: &DevZk) -> Result<Consumer> {
    let (host, port) = mqtt_ingest_host_port();
    let cfg = IngestConfig {
        database_url: Some(url.to_owned()),
        mqtt: MqttConfig {
            host,
            port,
            client_id: format!("bench-{}", uuid::Uuid::new_v4().simple()),
            username: "hailan-ingest".into(),
            password: Some(mqtt_password("hailan-ingest")?),
            keep_alive_s: 30,
            ca_file: None,
            subscriptions: vec![format!("$share/{group}/hailan/v1/{GW}/up")],
            // The bench measures readings only.
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
        // One gateway publishes the whole benchmark load: no per-gateway limits.
        fair_share: hailan_ingest::config::FairShareConfig {
            enabled: false,
            ..Default::default()
        },
        quarantine: Default::default(),
    };
    let pool = db::connect(url, 8).await?;
    let verifier = Arc::new(run::load_verifier(&cfg)?);
    let stop = CancellationToken::new();
    let status = Arc::new(run::Status::default());
    let metrics = Arc::new(Metrics::new());
    let task = tokio::spawn(run::run(
        cfg,
        pool,
        verifier,
        Arc::clone(&metrics),
        status,
        stop.clone(),
    ));
    Ok(Consumer {
        stop,
        task,
        metrics,
    })
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// CPU seconds of this process (consumers and publisher), PostgreSQL and Mosquitto.
#[derive(Clone, Copy)]
struct Cpu {
    this: f64,
    postgres: f64,
    mosquitto: f64,
}

impl Cpu {
    fn now() -> Self {
        use hailan_tests::cpu::cpu_seconds;
        Cpu {
            this: cpu_seconds(|pid, _| pid == std::process::id()),
            postgres: cpu_seconds(|_, comm| comm == "postgres"),
            mosquitto: cpu_seconds(|_, comm| comm == "mosquitto"),
        }
    }

    fn since(self) -> Self {
        let now = Cpu::now();
        Cpu {
            this: now.this - self.this,
            postgres: now.postgres - self.postgres,
            mosquitto: now.mosquitto - self.mosquitto,
        }
    }
}

/// One end-to-end run; returns (readings/s, p50 ms, p99 ms, CPU spent).
async fn end_to_end(zk: &DevZk, w: &Workload, consumers: usize) -> Result<(f64, f64, f64, Cpu)> {
    let db = TestDb::create().await?;
    enrol(&db.pool, GW).await?;
    let group = format!("bench{}", uuid::Uuid::new_v4().simple());
    let mut running = Vec::new();
    for _ in 0..consumers {
        running.push(consumer(&db.url, &group, zk).await?);
    }
    let mut publisher = Publisher::connect(GW).await?;
    // Registrations are idempotent: repeat until the consumers (subscribing
    // in the background) have stored them all.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        publisher
            .publish_all(&topic::up(GW), w.registrations.clone())
            .await?;
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM iot_devices")
            .fetch_one(&db.pool)
            .await?;
        if n as usize == DEVICES {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "registrations not stored within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    let cpu = Cpu::now();
    let published_at = now_ms();
    let topic = topic::up(GW);
    let mut sent_ms = Vec::with_capacity(w.messages.len());
    for chunk in w.messages.chunks(100) {
        sent_ms.push(now_ms());
        publisher.publish_all(&topic, chunk.to_vec()).await?;
    }
    loop {
        let n = stored(&running);
        if n as usize >= w.readings {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "only {n} of {} readings after 600 s",
            w.readings
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu.since();
    let verified = count_readings(&db.pool, "AND verified").await?;
    anyhow::ensure!(
        verified as usize == w.readings,
        "{verified} of {} readings verified",
        w.readings
    );
    // Latency: row creation (its transaction's start) minus when its chunk was published.
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT (extract(epoch FROM created_at) * 1000)::bigint AS created_ms FROM health_data_{}",
        if w.name.starts_with("heart") {
            "heart_rate"
        } else {
            "blood_pressure"
        }
    )))
    .fetch_all(&db.pool)
    .await?;
    let mut created: Vec<i64> = rows.iter().map(|r| r.get::<i64, _>("created_ms")).collect();
    created.sort_unstable();
    // Rows commit in publish order to within a batch; pair the k-th row with the k-th reading's chunk.
    let per_msg = w.readings / w.messages.len();
    let mut lat: Vec<f64> = created
        .iter()
        .enumerate()
        .map(|(k, c)| {
            let chunk = (k / per_msg) / 100;
            (c - sent_ms.get(chunk).copied().unwrap_or(published_at)) as f64
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    for c in running {
        c.stop.cancel();
        let _ = c.task.await;
    }
    db.drop().await?;
    Ok((
        w.readings as f64 / elapsed,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        cpu,
    ))
}

/// Bulk-load the same rows the way FACTS.md measures COPY: COPY into a
/// temporary table, then one idempotent INSERT … SELECT as hailan_ingest.
async fn copy_baseline(w: &Workload) -> Result<f64> {
    let db = TestDb::create().await?;
    let owner = enrol(&db.pool, GW).await?;
    let mut devices = HashMap::new();
    for (device_id, c) in &w.commitments {
        let id: uuid::Uuid = sqlx::query_scalar(
            "INSERT INTO iot_devices (user_id, device_id, device_type, gateway_id, zk_device_commitment)
             VALUES ($1, $2, 'X', $3, $4) RETURNING id",
        )
        .bind(owner)
        .bind(device_id)
        .bind(GW)
        .bind(c.as_slice())
        .fetch_one(&db.pool)
        .await?;
        devices.insert(device_id.clone(), id);
    }
    let mut csv = String::new();
    for m in &w.messages {
        let e = envelope::decode(m)?;
        let Body::Readings(b) = &e.body else { continue };
        let g = &b.groups[0];
        let hash = hex::encode(sha2::Sha256::digest(g.proof.as_deref().unwrap_or_default()));
        for r in &g.readings {
            let value = hailan_proto::stored::encode(&r.sealed)
                .to_string()
                .replace('"', "\"\"");
            let t = chrono::DateTime::from_timestamp_millis(r.recorded_at_ms).context("time")?;
            csv.push_str(&format!(
                "{owner},{},{},\"{value}\",,{},{hash},true,{},{},{GW},\\x{}\n",
                devices[&b.device_id],
                r.data_type,
                t.to_rfc3339(),
                chrono::Utc::now().to_rfc3339(),
                r.seq,
                hex::encode(g.commitment)
            ));
        }
    }
    let mut conn = db.pool.acquire().await?;
    let started = Instant::now();
    sqlx::query("BEGIN").execute(&mut *conn).await?;
    sqlx::query(
        "CREATE TEMP TABLE load (user_id uuid, device_id uuid, data_type text, value jsonb, unit text,
            recorded_at timestamptz, zk_proof_hash text, verified bool, verified_at timestamptz, seq int8,
            gateway_id text, reading_commitment bytea) ON COMMIT DROP",
    )
    .execute(&mut *conn)
    .await?;
    let mut copy = conn
        .copy_in_raw("COPY load FROM STDIN (FORMAT csv)")
        .await?;
    copy.send(csv.as_bytes()).await?;
    copy.finish().await?;
    sqlx::query("GRANT SELECT ON load TO hailan_ingest")
        .execute(&mut *conn)
        .await?;
    sqlx::query("SET LOCAL ROLE hailan_ingest")
        .execute(&mut *conn)
        .await?;
    let inserted = sqlx::query(
        "INSERT INTO health_data (user_id, device_id, data_type, value, unit, recorded_at, zk_proof_hash,
                                  verified, verified_at, seq, gateway_id, reading_commitment)
         SELECT * FROM load ON CONFLICT DO NOTHING",
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    sqlx::query("COMMIT").execute(&mut *conn).await?;
    let rate = inserted as f64 / started.elapsed().as_secs_f64();
    anyhow::ensure!(
        inserted as usize == w.readings,
        "COPY loaded {inserted} of {}",
        w.readings
    );
    drop(conn);
    db.drop().await?;
    Ok(rate)
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let singles: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1000);
    let windows: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(250);
    let max_consumers: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1);
    let zk = DevZk::new()?;
    let workloads = [
        generate(&zk, false, singles)?,
        generate(&zk, true, windows)?,
    ];
    println!();
    // A workload of 0 messages (e.g. `-- 1000 0`) is skipped.
    for w in workloads.iter().filter(|w| !w.messages.is_empty()) {
        let pure = pure_verification(&zk, w)?;
        println!(
            "== {} — {} readings in {} messages",
            w.name,
            w.readings,
            w.messages.len()
        );
        println!("  pure batch verification (1 thread, N = 256): {pure:>9.0} readings/s");
        for consumers in 1..=max_consumers {
            let (rate, p50, p99, cpu) = end_to_end(&zk, w, consumers).await?;
            println!(
                "  end to end, {consumers} consumer(s):            {rate:>9.0} verified readings/s  ({:.0} % of pure verification)  publish→row p50 {p50:.0} ms, p99 {p99:.0} ms",
                100.0 * rate / pure
            );
            let per_1000 = |s: f64| s * 1e3 * 1000.0 / w.readings as f64;
            println!(
                "    CPU per 1,000 readings: consumers + publisher {:.0} ms, PostgreSQL {:.0} ms, Mosquitto {:.0} ms",
                per_1000(cpu.this),
                per_1000(cpu.postgres),
                per_1000(cpu.mosquitto)
            );
        }
        let copy = copy_baseline(w).await?;
        println!("  COPY + INSERT … SELECT of the same rows:   {copy:>9.0} rows/s");
    }
    println!(
        "\npeak RSS of this process (generator + publisher + consumers): {:.0} MB",
        peak_rss_mb()
    );
    Ok(())
}
