//! Clinician API benchmark: latency of a one-day heart-rate chart (86,400
//! readings at 1 Hz, 1-minute buckets) for one patient, p50/p99, and
//! observations served per second; plus a page of observations.
//!
//! ```sh
//! cargo xtask services
//! cargo run -p hailan-api --example api_bench -- [REQUESTS]
//! ```
//!
//! The day is written into a fresh database the way ingest writes it (as
//! `hailan_ingest`: real AES-GCM seals under the owner's key, real window
//! commitments of 16 readings, each window's public inputs in `zk_proofs`,
//! `verified = true`) but without generating the 5,400 Groth16 proofs, which
//! would take minutes and which the API does not re-verify on reads (it
//! decrypts every reading and re-opens every window commitment, which is what
//! is measured). The API runs in this process (the same router as
//! `hailan-api`), reached over HTTP on 127.0.0.1: twice, once without
//! the opened-window cache (every request opens the day afresh, as the first
//! look at a day does) and once with it (the default: the day read again).

use anyhow::{Context, Result};
use hailan_api::{self as api, ApiState, keyring::KeyRing};
use hailan_proto::seal::{DataKey, SealedValue, seal};
use hailan_proto::zk::fr_from_bytes;
use hailan_proto::zk::prove::window_commitment;
use hailan_proto::{DataType, WindowHeader};
use hailan_tests::TestDb;
use hailan_tests::api::http_get_auth;
use rand::{Rng, RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

const GW: &str = "gw-bench-api";
const DEVICE: &str = "hr-bench";
const DAY_S: i64 = 86_400;
const W: usize = 16;
/// 2025-11-24T00:00:00Z
const DAY_START_MS: i64 = 1_763_942_400_000;

struct Rows {
    ids: Vec<Uuid>,
    values: Vec<serde_json::Value>,
    recorded: Vec<chrono::DateTime<chrono::Utc>>,
    hashes: Vec<String>,
    seqs: Vec<i64>,
    commitments: Vec<Vec<u8>>,
}

/// A window's proof row: hash, first seq, proof bytes, public inputs.
type ProofRow = (String, i64, Vec<u8>, serde_json::Value);

/// Seal and commit one day of 1 Hz heart rate in windows of 16.
fn day(key: &DataKey) -> Result<(Rows, Vec<ProofRow>)> {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(86_400);
    let mut rows = Rows {
        ids: Vec::new(),
        values: Vec::new(),
        recorded: Vec::new(),
        hashes: Vec::new(),
        seqs: Vec::new(),
        commitments: Vec::new(),
    };
    let mut proofs = Vec::new();
    let mut hr: i64 = 70;
    let d = "1234567890";
    let policy = DataType::HeartRate.spec().slots[0];
    for w in 0..(DAY_S as usize / W) {
        let first_seq = (w * W + 1) as u64;
        let start_ms = DAY_START_MS + (w * W) as i64 * 1000;
        let values: Vec<u32> = (0..W)
            .map(|_| {
                hr = (hr + rng.gen_range(-2..=2)).clamp(45, 160);
                hr as u32
            })
            .collect();
        let mut blinding = [0u8; 32];
        rng.fill_bytes(&mut blinding);
        blinding[31] &= 0x0f; // below the BN254 scalar modulus
        let header = WindowHeader {
            gateway_id: GW,
            device_id: DEVICE,
            data_type: "HEART_RATE",
            first_seq,
            start_ms,
            offsets_ms: (0..W as u32).map(|i| i * 1000).collect(),
        };
        let c = window_commitment(&values, &blinding, &header)?;
        let c_dec = fr_from_bytes(&c).context("commitment")?.to_string();
        let mut proof = vec![0u8; 128];
        proof[..8].copy_from_slice(&(w as u64).to_be_bytes());
        let hash = hex::encode(Sha256::digest(&proof));
        let inputs = serde_json::json!([
            d,
            c_dec,
            header.context().to_string(),
            W.to_string(),
            policy.lo.to_string(),
            policy.hi.to_string()
        ]);
        proofs.push((hash.clone(), first_seq as i64, proof, inputs));
        for (i, v) in values.iter().enumerate() {
            let seq = first_seq + i as u64;
            let t = start_ms + i as i64 * 1000;
            let rh = hailan_proto::ReadingHeader {
                gateway_id: GW,
                device_id: DEVICE,
                data_type: "HEART_RATE",
                seq,
                recorded_at_ms: t,
            };
            let value = SealedValue {
                slots: vec![*v],
                blinding,
                position: i as u16,
                original_unit: None,
                extras: Default::default(),
            };
            let s = seal(key, &rh, &value, &mut rng);
            rows.ids.push(Uuid::new_v4());
            rows.values.push(hailan_proto::stored::encode(&s));
            rows.recorded
                .push(chrono::DateTime::from_timestamp_millis(t).context("time")?);
            rows.hashes.push(hash.clone());
            rows.seqs.push(seq as i64);
            rows.commitments.push(c.to_vec());
        }
    }
    Ok((rows, proofs))
}

/// A field of `/proc/self/status` in KiB (`VmRSS`, `VmHWM`).
fn proc_status_kib(field: &str) -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .with_context(|| format!("no {field} in /proc/self/status"))
}

/// GET `path` over HTTP/1.1 and count the answer's bytes without keeping
/// them; the last few bytes are returned to show the download ended whole.
async fn download_counting(port: u16, path: &str, token: &str) -> Result<(u64, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    let mut buf = vec![0u8; 1 << 16];
    let (mut total, mut first, mut last) = (0u64, Vec::new(), Vec::new());
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        if first.len() < 64 {
            first.extend_from_slice(&buf[..n.min(64)]);
        }
        last.extend_from_slice(&buf[..n]);
        let keep = last.len().saturating_sub(32);
        last.drain(..keep);
        total += n as u64;
    }
    anyhow::ensure!(
        first.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&first)
    );
    Ok((total, String::from_utf8_lossy(&last).into_owned()))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> Result<()> {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let requests: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(30);
    let db = TestDb::create().await?;
    let pool = db.pool.clone();
    let key = DataKey::new("owner-key-1", [7; 32]);

    let t = Instant::now();
    let (rows, proofs) = tokio::task::spawn_blocking(move || day(&key)).await??;
    println!(
        "generated {} sealed readings in {} windows in {:.1} s",
        rows.ids.len(),
        proofs.len(),
        t.elapsed().as_secs_f64()
    );

    let patient = hailan_ingest::admin::add_user(
        &pool,
        "did:hailan:bench:patient",
        "PATIENT",
        Some("Bench Patient"),
    )
    .await?;
    hailan_ingest::admin::enrol_gateway(&pool, GW, "did:hailan:bench:patient", None).await?;
    hailan_ingest::admin::add_user(&pool, "did:hailan:bench:dr", "CLINICIAN", Some("Dr Bench"))
        .await?;
    hailan_ingest::admin::grant(
        &pool,
        "did:hailan:bench:patient",
        "did:hailan:bench:dr",
        None,
        None,
    )
    .await?;
    let token = hailan_ingest::admin::issue_token(&pool, "did:hailan:bench:dr", 1, None).await?;
    let device: Uuid = sqlx::query_scalar(
        "INSERT INTO iot_devices (user_id, device_id, device_type, gateway_id, data_types, zk_device_commitment, battery_level)
         VALUES ($1, $2, 'HEART_RATE', $3, '{HEART_RATE}', $4, 80) RETURNING id",
    )
    .bind(patient)
    .bind(DEVICE)
    .bind(GW)
    .bind(vec![1u8; 32])
    .fetch_one(&pool)
    .await?;

    let t = Instant::now();
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL ROLE hailan_ingest")
        .execute(&mut *tx)
        .await?;
    for chunk in proofs.chunks(2000) {
        let hashes: Vec<&str> = chunk.iter().map(|p| p.0.as_str()).collect();
        let first: Vec<i64> = chunk.iter().map(|p| p.1).collect();
        let proof: Vec<&[u8]> = chunk.iter().map(|p| p.2.as_slice()).collect();
        let inputs: Vec<&serde_json::Value> = chunk.iter().map(|p| &p.3).collect();
        sqlx::query(
            "INSERT INTO zk_proofs (user_id, proof_hash, key_id, statement, device_id, first_seq, reading_count, proof, public_inputs)
             SELECT $1, h, repeat('0', 64), 'window', $2, f, 16, p, i
               FROM UNNEST($3::text[], $4::int8[], $5::bytea[], $6::jsonb[]) AS x(h, f, p, i)",
        )
        .bind(patient)
        .bind(device)
        .bind(&hashes)
        .bind(&first)
        .bind(&proof)
        .bind(&inputs)
        .execute(&mut *tx)
        .await?;
    }
    for k in (0..rows.ids.len()).step_by(10_000) {
        let e = (k + 10_000).min(rows.ids.len());
        sqlx::query(
            "INSERT INTO health_data (id, user_id, device_id, data_type, value, unit, recorded_at, zk_proof_hash,
                                      verified, verified_at, seq, gateway_id, reading_commitment)
             SELECT i, $1, $2, 'HEART_RATE', v, '/min', r, h, true, now(), s, $3, c
               FROM UNNEST($4::uuid[], $5::jsonb[], $6::timestamptz[], $7::text[], $8::int8[], $9::bytea[])
                    AS x(i, v, r, h, s, c)",
        )
        .bind(patient)
        .bind(device)
        .bind(GW)
        .bind(&rows.ids[k..e])
        .bind(&rows.values[k..e])
        .bind(&rows.recorded[k..e])
        .bind(&rows.hashes[k..e])
        .bind(&rows.seqs[k..e])
        .bind(&rows.commitments[k..e])
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    // As a day someone looks at has long been vacuumed: hint bits and the
    // visibility map set, so that no request pays for them.
    sqlx::query("VACUUM (ANALYZE) health_data")
        .execute(&pool)
        .await?;
    println!("stored in {:.1} s", t.elapsed().as_secs_f64());

    // Where the time of one day view goes, single-threaded.
    {
        let dr: Uuid = sqlx::query_scalar("SELECT id FROM users WHERE did = 'did:hailan:bench:dr'")
            .fetch_one(&pool)
            .await?;
        let mut tx = pool.begin().await?;
        sqlx::raw_sql("SET LOCAL ROLE hailan_clinician; SET LOCAL work_mem = '64MB'")
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT set_config('hailan.user_id', $1, true)")
            .bind(dr.to_string())
            .execute(&mut *tx)
            .await?;
        let range = api::store::Range {
            from: chrono::DateTime::from_timestamp_millis(DAY_START_MS).context("t")?,
            to: chrono::DateTime::from_timestamp_millis(DAY_START_MS + DAY_S * 1000 - 1)
                .context("t")?,
            after: None,
            // What the API's series reads: every reading, up to the default cap.
            take: api::store::Take::All {
                cap: hailan_api::config::ApiConfig::default().max_rows_per_request,
            },
        };
        let t = Instant::now();
        let (rows, _) =
            api::store::read_readings(&mut tx, patient, &["HEART_RATE".to_owned()], &range).await?;
        let read = t.elapsed();
        // PostgreSQL's own share: the scan's execution time, without sending rows.
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "EXPLAIN (ANALYZE, TIMING OFF) {}",
            range.sql()
        )))
        .bind(patient)
        .bind(vec!["HEART_RATE".to_owned()])
        .bind(range.from)
        .bind(range.to)
        .bind(None::<chrono::DateTime<chrono::Utc>>)
        .bind(None::<Uuid>)
        .bind(None::<i64>)
        .fetch_all(&mut *tx)
        .await?;
        let scan_ms = plan
            .iter()
            .find_map(|l| l.strip_prefix("Execution Time: "))
            .and_then(|l| l.trim_end_matches(" ms").parse::<f64>().ok())
            .context("no execution time in EXPLAIN ANALYZE")?;
        tx.rollback().await?;
        let keys = KeyRing::from_keys([DataKey::new("owner-key-1", [7; 32])]);
        let t = Instant::now();
        let all = api::check::open_all(&rows, &keys);
        let opened = all.iter().filter(|o| o.is_ok()).count();
        let open = t.elapsed();
        let t = Instant::now();
        let checks =
            api::check::check_groups(&rows, &all, &api::check::groups(&rows), &Default::default());
        let check = t.elapsed();
        let verified = checks.iter().filter(|(_, c)| c.slots().is_some()).count();
        anyhow::ensure!(opened == rows.len() && verified == rows.len());
        println!(
            "breakdown of one day view, one thread: read {} rows {:.0} ms (of which PostgreSQL's scan {scan_ms:.0} ms); decrypt {:.0} ms ({:.1} µs/reading); \
             commitment re-open {:.0} ms ({:.1} µs/reading)",
            rows.len(),
            read.as_secs_f64() * 1e3,
            open.as_secs_f64() * 1e3,
            open.as_secs_f64() * 1e6 / rows.len() as f64,
            check.as_secs_f64() * 1e3,
            check.as_secs_f64() * 1e6 / rows.len() as f64,
        );
    }

    // Two API servers on the same database: one opens every window on every
    // request (a day nobody has looked at yet), one keeps opened windows
    // (the default: a chart read again).
    let stop = tokio_util::sync::CancellationToken::new();
    let mut ports = Vec::new();
    let mut caches = Vec::new();
    let mut servers = Vec::new();
    for cache_windows in [
        0,
        hailan_api::config::ApiConfig::default().opened_cache_windows,
    ] {
        let opened = Arc::new(api::opened_cache::OpenedCache::new(cache_windows));
        let state = ApiState {
            primary: hailan_db::connect(&db.url, 8).await?,
            replica: None,
            keys: Arc::new(KeyRing::from_keys([DataKey::new("owner-key-1", [7; 32])])),
            opened: Arc::clone(&opened),
            vks: Arc::new(Default::default()),
            replica_wait: Duration::from_secs(2),
            max_page: 5000,
            stale_after: Duration::from_secs(900),
            limits: api::limits::Limits::new(&hailan_api::config::ApiConfig::default()),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        ports.push(listener.local_addr()?.port());
        caches.push(opened);
        servers.push(tokio::spawn(api::serve(listener, state, stop.clone())));
    }

    let from = chrono::DateTime::from_timestamp_millis(DAY_START_MS).context("t")?;
    let to = from + chrono::Duration::seconds(DAY_S - 1);
    let fmt =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let series = format!(
        "/api/v1/patients/{patient}/series?type=HEART_RATE&bucket=minute&from={}&to={}",
        fmt(from),
        fmt(to)
    );
    let page = format!(
        "/api/v1/patients/{patient}/observations?type=HEART_RATE&limit=5000&from={}",
        fmt(from)
    );
    for (name, path, readings, port) in [
        (
            "day series, 1-minute buckets, opened afresh",
            &series,
            86_400.0,
            ports[0],
        ),
        (
            "day series, 1-minute buckets, read again (opened-window cache)",
            &series,
            86_400.0,
            ports[1],
        ),
        (
            "observations page of 5,000, opened afresh",
            &page,
            5_000.0,
            ports[0],
        ),
    ] {
        // Warm-up (fills the cache), and a check that every reading opened.
        let (code, body) = http_get_auth(port, path, Some(&token)).await?;
        anyhow::ensure!(code == 200, "{code} {body}");
        let v: serde_json::Value = serde_json::from_str(&body)?;
        if path == &series {
            anyhow::ensure!(
                v["readings"] == 86_400 && v["unverifiable"] == serde_json::json!([]),
                "{}",
                &body[..body.len().min(500)]
            );
            anyhow::ensure!(v["points"].as_array().map(Vec::len) == Some(1440));
        } else {
            anyhow::ensure!(v["observations"].as_array().map(Vec::len) == Some(5000));
        }
        if port == ports[1] {
            println!(
                "opened-window cache after the first request: {} windows",
                caches[1].len()
            );
        }
        let mut times = Vec::with_capacity(requests);
        let cpu_before = (
            hailan_tests::cpu::cpu_seconds(|pid, _| pid == std::process::id()),
            hailan_tests::cpu::cpu_seconds(|_, comm| comm == "postgres"),
        );
        for _ in 0..requests {
            let t = Instant::now();
            let (code, _) = http_get_auth(port, path, Some(&token)).await?;
            anyhow::ensure!(code == 200);
            times.push(t.elapsed());
        }
        let per_request = |before: f64, after: f64| (after - before) * 1e3 / requests as f64;
        let api_cpu = per_request(
            cpu_before.0,
            hailan_tests::cpu::cpu_seconds(|pid, _| pid == std::process::id()),
        );
        let pg_cpu = per_request(
            cpu_before.1,
            hailan_tests::cpu::cpu_seconds(|_, comm| comm == "postgres"),
        );
        times.sort();
        let mean = times.iter().sum::<Duration>().as_secs_f64() / times.len() as f64;
        println!(
            "{name}: {requests} requests, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; {:.0} observations/s; \
             CPU per request: API {api_cpu:.0} ms, PostgreSQL {pg_cpu:.0} ms",
            percentile(&times, 0.5).as_secs_f64() * 1e3,
            percentile(&times, 0.99).as_secs_f64() * 1e3,
            times.last().map_or(0.0, |t| t.as_secs_f64() * 1e3),
            readings / mean
        );
    }
    // Exports of the whole day: streamed a page at a time, so what the API
    // holds is a page, not the day (the client here counts bytes and
    // keeps none of them).
    for (name, path) in [
        (
            "CSV export of the day",
            format!(
                "/api/v1/patients/{patient}/export.csv?type=HEART_RATE&from={}&to={}",
                fmt(from),
                fmt(to)
            ),
        ),
        (
            "FHIR transaction export of the day",
            format!(
                "/api/v1/patients/{patient}/export.fhir.json?from={}&to={}",
                fmt(from),
                fmt(to)
            ),
        ),
    ] {
        let rss_before = proc_status_kib("VmRSS")?;
        std::fs::write("/proc/self/clear_refs", "5").context("reset VmHWM")?;
        let t = Instant::now();
        let (bytes, tail) = download_counting(ports[0], &path, &token).await?;
        let took = t.elapsed().as_secs_f64();
        let peak = proc_status_kib("VmHWM")?;
        println!(
            "{name}: {:.1} MB in {took:.1} s ({:.0} readings/s); the process's peak RSS {:.0} MB over its {:.0} MB before; ends {tail:?}",
            bytes as f64 / 1e6,
            86_400.0 / took,
            peak.saturating_sub(rss_before) as f64 / 1024.0,
            rss_before as f64 / 1024.0,
        );
    }
    stop.cancel();
    for s in servers {
        let _ = s.await;
    }
    db.drop().await
}
