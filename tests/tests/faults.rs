//! The fault matrix, end to end: simulated devices → hailan-gateway →
//! Mosquitto → hailan-ingest → PostgreSQL while, one after another, the
//! simulator storms and stalls, ingest is killed (-9) while flowing and while
//! holding an unwritten batch, PostgreSQL and Mosquitto restart, the gateway
//! is killed (-9), and a forger with valid broker credentials sends bad
//! input with `mosquitto_pub`. Then exact counts: every reading the gateway
//! assigned a seq is stored once, with the bytes it published (which match
//! the simulator's ground truth); the quarantine holds exactly the bad input,
//! each with its reason; replays changed nothing.
//!
//! One broker, one database and the gateway's processes are this test's own
//! (a private Mosquitto and PostgreSQL), so restarting them disturbs no other
//! test.

use anyhow::{Context, Result, ensure};
use hailan_proto::envelope::{self, Body};
use hailan_proto::{DataType, topic};
use hailan_tests::gateway::*;
use hailan_tests::{
    DevZk, IngestOptions, IngestProcess, PrivatePostgres, TestDevice, count_readings, enrol,
    eventually, mqtt_password, plausible_slots,
};
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);
/// What the forger's bad input must leave in quarantine, by reason.
const BAD_INPUT: &[(&str, i64)] = &[
    // one malformed CBOR, three poison messages valid on the wire
    ("undecodable", 4),
    ("oversize", 1),
    ("gateway_mismatch", 1),
    ("device_gateway_mismatch", 1),
    ("device_key_mismatch", 1),
    ("unknown_device", 1),
    ("bad_proof", 2),
];

/// Publish `payload` (QoS 1) as `user` with `mosquitto_pub`; its exit status.
fn mosquitto_pub(
    broker: &Broker,
    user: &str,
    topic: &str,
    payload: &[u8],
    dir: &Path,
) -> Result<std::process::ExitStatus> {
    let file = dir.join(format!("payload-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&file, payload)?;
    let status = std::process::Command::new("mosquitto_pub")
        .args(["-h", &broker.host, "-p", &broker.port.to_string()])
        .args(["-u", user, "-P", &mqtt_password(user)?])
        .args(["-q", "1", "-t", topic, "-f"])
        .arg(&file)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .context("running mosquitto_pub (package mosquitto-clients)")?;
    Ok(status)
}

/// Wait until at least `n` readings are stored.
async fn stored_at_least(pool: &PgPool, n: i64, what: &str) -> Result<i64> {
    eventually(WAIT, what, || async {
        let c = count_readings(pool, "").await?;
        Ok((c >= n).then_some(c))
    })
    .await
}

/// Stored readings of one device: seq → (hex ciphertext, verified).
async fn stored(pool: &PgPool, device_id: &str) -> Result<BTreeMap<u64, (String, bool)>> {
    let mut out = BTreeMap::new();
    for t in DataType::ALL {
        let sql = format!(
            "SELECT h.seq, h.value->>'ciphertext', h.verified FROM health_data_{} h \
             JOIN iot_devices d ON d.id = h.device_id WHERE d.device_id = $1",
            t.as_str().to_ascii_lowercase()
        );
        let rows: Vec<(i64, String, bool)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(device_id)
            .fetch_all(pool)
            .await?;
        for (seq, ct, verified) in rows {
            let seq = u64::try_from(seq)?;
            ensure!(
                out.insert(seq, (ct, verified)).is_none(),
                "{device_id} seq {seq} stored twice"
            );
        }
    }
    Ok(out)
}

/// `hailan_ingest_readings_total{outcome="duplicate"}` of the ingest process
/// serving `/metrics` on `port` (0 before the first duplicate).
async fn duplicate_readings(port: u16) -> Result<u64> {
    let (code, body) = hailan_tests::http_get(port, "/metrics").await?;
    ensure!(code == 200, "GET /metrics: {code}");
    let prefix = "hailan_ingest_readings_total{outcome=\"duplicate\"} ";
    match body.lines().find_map(|l| l.strip_prefix(prefix)) {
        Some(v) => v
            .trim()
            .parse::<f64>()
            .map(|v| v as u64)
            .with_context(|| format!("metric value {v}")),
        None => Ok(0),
    }
}

async fn quarantine(pool: &PgPool) -> Result<HashMap<String, i64>> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT reason, count(*) FROM rejected_readings GROUP BY reason")
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fault_matrix_loses_and_doubles_nothing() -> Result<()> {
    let gw_id = "gw-e2e-9";
    let forger = "gw-e2e-10";
    let pg = PrivatePostgres::start().await?;
    let pool = hailan_db::connect(&pg.url, 2).await?;
    let mut mq = PrivateMosquitto::start()?;
    let broker = mq.broker();
    let zk = DevZk::new()?;
    let tmp = tempfile::tempdir()?;
    enrol(&pool, gw_id).await?;
    enrol(&pool, forger).await?;
    let ingest_bin = workspace_binary("hailan-ingest")?;
    let metrics_port = hailan_tests::free_port()?;
    let metrics_listen = format!("127.0.0.1:{metrics_port}");
    let on_private_broker = IngestOptions {
        broker: Some((&broker.host, broker.ingest_port)),
        http_listen: Some(&metrics_listen),
        ..Default::default()
    };
    let mut ingest = IngestProcess::start_opts(
        &ingest_bin,
        &pg,
        &zk,
        &[gw_id, forger],
        tmp.path(),
        on_private_broker,
    )?;
    let truth_path = tmp.path().join("truth.jsonl");
    let (mut sim, rig, devices) = sim_and_pair(
        "hr=2,bp=1,spo2=1,temp=1,glucose=1,scale=1",
        &truth_path,
        gw_id,
        &broker,
        &zk,
        "[pipeline]\nwindow_size = 4\nwindow_max_ms = 1000\n",
        &[],
    )?;
    let (collector, mut gw) = start_all_connected(&rig, &broker, &devices, WAIT).await?;
    let mut rows = stored_at_least(&pool, 8, "the first readings stored").await?;

    // 1. A disconnect storm during a stalled scanner.
    sim.sim.command("fault stall+4s")?;
    for round in 1..=3 {
        sim.sim.command("fault drop=*")?;
        collector
            .wait_for(WAIT, "every device back after a drop", |e| {
                devices
                    .values()
                    .all(|id| states(e, id, false) >= round && last_connected(e, id) == Some(true))
            })
            .await
            .with_context(|| format!("storm round {round}"))?;
    }
    for name in ["bp0", "spo20", "temp0", "scale0", "glucose0"] {
        sim.sim.command(&format!("measure {name}"))?;
    }
    rows = stored_at_least(&pool, rows + 8, "readings after the storm").await?;

    // 2. kill -9 of ingest while readings flow; the session resumes.
    ingest.kill9()?;
    ingest.restart()?;
    rows = stored_at_least(&pool, rows + 8, "readings after ingest's kill -9").await?;

    // 3. PostgreSQL restarts under ingest.
    pg.restart()?;
    rows = stored_at_least(&pool, rows + 8, "readings after PostgreSQL's restart").await?;

    // 4. kill -9 of ingest while it holds a batch it could not write.
    pg.stop()?;
    eventually(WAIT, "ingest to hold an unwritten batch", || {
        let log = ingest.log_text();
        async move { Ok(log.contains("batch not written; retrying").then_some(())) }
    })
    .await?;
    ingest.kill9()?;
    pg.start_again()?;
    ingest.restart()?;
    rows = stored_at_least(&pool, rows + 8, "readings after the database outage").await?;

    // 5. Mosquitto restarts: gateway, ingest and collector reconnect; the
    // sessions (and their queues) survive in the broker's persistence.
    mq.stop()?;
    mq.start_again()?;
    gw.wait_log("connected to the broker", WAIT)?;
    rows = stored_at_least(&pool, rows + 8, "readings after the broker's restart").await?;

    // 6. kill -9 of the gateway; its outbox is republished after the restart.
    gw.kill9()?;
    sim.sim.command("measure glucose0")?;
    let mut gw = rig.start(&[])?;
    rows = stored_at_least(&pool, rows + 8, "readings after the gateway's kill -9").await?;

    // 7. Bad input, published with mosquitto_pub by a forger that holds
    // valid broker credentials (and, once the gateway has stopped, replays
    // of real messages).
    let up = topic::up(forger);
    let hr0 = id_of_kind(&devices, "hr")?;
    let pub_as = |user: &str, topic: &str, bytes: &[u8]| -> Result<bool> {
        Ok(mosquitto_pub(&broker, user, topic, bytes, tmp.path())?.success())
    };
    let enc = |e: &envelope::Envelope| envelope::encode(e);
    ensure!(pub_as(forger, &up, b"\xa1not an envelope")?);
    // Over ingest's limit, under the broker's: quarantined unread.
    ensure!(pub_as(
        forger,
        &up,
        &vec![0xa0; envelope::MAX_ENVELOPE_BYTES + 1000]
    )?);
    // Over the broker's max_packet_size: refused by Mosquitto, never delivered.
    let _ = pub_as(forger, &up, &vec![0xa0; 300_000])?;
    // Another gateway's topic: refused by the ACL, never delivered.
    let _ = pub_as(forger, &topic::up(gw_id), b"\xa0")?;
    // Claims to be the real gateway, on its own topic.
    let posing = TestDevice::new(gw_id, "posing-0", DataType::HeartRate, 90);
    ensure!(pub_as(forger, &up, &enc(&posing.registration()))?);
    // Registers a real device of the real gateway as its own.
    let stolen = TestDevice::new(forger, &hr0, DataType::HeartRate, 91);
    ensure!(pub_as(forger, &up, &enc(&stolen.registration()))?);
    // Its own device, registered; then re-registered with another secret and
    // readings proven with that other secret.
    let own = TestDevice::new(forger, "forged-0", DataType::HeartRate, 92);
    ensure!(pub_as(forger, &up, &enc(&own.registration()))?);
    let mut other = TestDevice::new(forger, "forged-0", DataType::HeartRate, 93);
    ensure!(pub_as(forger, &up, &enc(&other.registration()))?);
    for _ in 0..2 {
        let e = other.proven_reading(&zk.reading, &plausible_slots(DataType::HeartRate))?;
        ensure!(pub_as(forger, &up, &enc(&e))?);
    }
    // Readings of a device nobody registered.
    let mut stray = TestDevice::new(forger, "stray-0", DataType::HeartRate, 94);
    ensure!(pub_as(forger, &up, &enc(&stray.unproven_reading(&[70])))?);
    // Poison: valid CBOR of the right shape whose fields would not fit their
    // columns (a NUL-padded model, a name one character too long, a time
    // past 9999): each refused at decode, naming its field, the stream goes on.
    let mut nul_model = TestDevice::new(forger, "poison-0", DataType::HeartRate, 95).registration();
    let mut long_name = TestDevice::new(forger, "poison-1", DataType::HeartRate, 96).registration();
    if let (Body::Registration(a), Body::Registration(b)) =
        (&mut nul_model.body, &mut long_name.body)
    {
        a.model = Some("HRM\0\0\0".into());
        b.name = Some("n".repeat(101));
    }
    let mut far_future = stray.unproven_reading(&[71]);
    if let Body::Readings(b) = &mut far_future.body {
        b.groups[0].readings[0].recorded_at_ms = hailan_proto::columns::MAX_TIME_MS + 1;
    }
    for poison in [&nul_model, &long_name, &far_future] {
        ensure!(pub_as(forger, &up, &enc(poison))?);
    }
    let expected: HashMap<String, i64> =
        BAD_INPUT.iter().map(|(r, n)| (r.to_string(), *n)).collect();
    let total_bad: i64 = expected.values().sum();
    eventually(WAIT, "the bad input quarantined", || async {
        let q = quarantine(&pool).await?;
        Ok((q.values().sum::<i64>() >= total_bad).then_some(()))
    })
    .await?;
    stored_at_least(&pool, rows + 8, "readings after the bad input").await?;

    // Stop the gateway cleanly: every seq it assigned is published.
    let exit = gw.terminate()?;
    ensure!(exit.success(), "gateway exit {exit}");
    let (envelopes, next) = after_stop(&rig, &collector).await?;
    let truth = read_truth(&truth_path)?;
    check_against_truth(&rig, &envelopes, &devices, &truth, 0..0)?;
    verify_all(&zk, gw_id, &envelopes)?;
    let assigned: i64 = next.values().map(|n| *n as i64 - 1).sum();
    eventually(WAIT, "every assigned reading stored", || async {
        Ok((count_readings(&pool, "").await? >= assigned).then_some(()))
    })
    .await?;
    // Replays of five real messages, by the real gateway's account: only
    // now that its daemon has stopped, since the broker makes the account
    // the client id and a second connection under it would take over the
    // daemon's. Each replayed reading is counted a duplicate; nothing is
    // stored (the exact counts below).
    let real: Vec<(Vec<u8>, u64)> = collector
        .snapshot()
        .into_iter()
        .filter(|r| r.topic == topic::up(gw_id))
        .filter_map(|r| match r.envelope()?.body {
            Body::Readings(b) => {
                let n = b.groups.iter().map(|g| g.readings.len() as u64).sum();
                Some((r.payload, n))
            }
            _ => None,
        })
        .take(5)
        .collect();
    ensure!(real.len() == 5, "five real messages to replay");
    let replayed: u64 = real.iter().map(|(_, n)| n).sum();
    let before = duplicate_readings(metrics_port).await?;
    for (p, _) in &real {
        ensure!(pub_as(gw_id, &topic::up(gw_id), p)?);
    }
    let after = eventually(
        WAIT,
        "ingest to count the replays as duplicates",
        || async {
            let n = duplicate_readings(metrics_port).await?;
            Ok((n >= before + replayed).then_some(n))
        },
    )
    .await?;
    assert_eq!(
        after,
        before + replayed,
        "duplicate readings after the replays"
    );
    ingest.terminate()?;

    eprintln!(
        "faults: {assigned} readings assigned by the gateway, {rows} stored before the bad input; next seqs {next:?}"
    );
    // Exact counts: every seq the gateway assigned is stored once, verified,
    // with the bytes it published; nothing else is stored.
    assert_eq!(count_readings(&pool, "").await?, assigned);
    for (id, n) in &next {
        let published = by_seq(&envelopes, id)?;
        let rows = stored(&pool, id).await?;
        assert_eq!(rows.len() as u64, n - 1, "{id}: stored readings");
        assert_eq!(published.len() as u64, n - 1, "{id}: published readings");
        for (seq, (_, r)) in &published {
            let (ct, verified) = rows
                .get(seq)
                .with_context(|| format!("{id} seq {seq} not stored"))?;
            assert_eq!(*ct, hex::encode(&r.sealed.ciphertext), "{id} seq {seq}");
            assert!(*verified, "{id} seq {seq} not verified");
        }
        let last_seq: Option<i64> =
            sqlx::query_scalar("SELECT last_seq FROM iot_devices WHERE device_id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await?;
        assert_eq!(last_seq, Some(*n as i64 - 1), "{id}: last seq");
    }
    // The quarantine holds exactly the bad input.
    assert_eq!(quarantine(&pool).await?, expected);
    // The forger's own device was registered once, with its first secret;
    // the stolen id still belongs to the real gateway.
    let owners: Vec<(String, String)> =
        sqlx::query_as("SELECT device_id, gateway_id FROM iot_devices WHERE device_id = ANY($1)")
            .bind(vec![
                "forged-0".to_owned(),
                hr0.clone(),
                "posing-0".to_owned(),
            ])
            .fetch_all(&pool)
            .await?;
    let owners: HashMap<String, String> = owners.into_iter().collect();
    assert_eq!(owners.get("forged-0").map(String::as_str), Some(forger));
    assert_eq!(owners.get(&hr0).map(String::as_str), Some(gw_id));
    assert_eq!(owners.get("posing-0"), None);
    drop(sim);
    Ok(())
}
