//! Truthful link state with a real gateway (issue 18): simulated heart-rate
//! straps on a private bus → `hailan-gateway run` → Mosquitto →
//! `hailan-ingest run` → PostgreSQL → `hailan-ingest api`. When the gateway
//! is stopped (SIGTERM), killed (kill -9) or hangs (SIGSTOP: nothing closes
//! its socket, so only the broker's keep-alive notices), its devices are
//! shown `UNKNOWN`, with the time the gateway went offline, within the
//! broker's keep-alive × 1.5 + 5 s; when it runs again, their states come
//! back (it re-sends every device's state on each connection).

use anyhow::{Context, Result};
use hailan_tests::api::{ApiProcess, User, ensure_api_login, user, write_key_ring};
use hailan_tests::gateway::*;
use hailan_tests::{DevZk, IngestProcess, TestDb, eventually};
use std::time::{Duration, Instant};

/// `mqtt.keep_alive_s` of the test rig's gateway config (`GatewayRig::new`).
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// How long the devices may still look connected after the gateway is gone:
/// the broker gives up on a silent client after 1.5 × its keep-alive, then
/// publishes its will; 5 s more for ingest and the API.
fn deadline() -> Duration {
    KEEP_ALIVE.mul_f64(1.5) + Duration::from_secs(5)
}

/// Each device's `(connection_state, gateway_offline_since)` as the API shows it.
async fn shown(
    api: &ApiProcess,
    who: &User,
    ids: &[String],
) -> Result<Vec<(String, serde_json::Value)>> {
    let v = api
        .json(&who.token, &format!("/api/v1/patients/{}/devices", who.id))
        .await?;
    let devices = v["devices"].as_array().context("devices")?;
    ids.iter()
        .map(|id| {
            // Not registered yet (the gateway sends it on its first connection): no state.
            let Some(d) = devices.iter().find(|d| d["device_id"] == id.as_str()) else {
                return Ok((String::new(), serde_json::Value::Null));
            };
            Ok((
                d["connection_state"].as_str().unwrap_or("").to_owned(),
                d["gateway_offline_since"].clone(),
            ))
        })
        .collect()
}

/// Wait (up to `limit`) until the API shows every device `UNKNOWN` with its
/// gateway offline; how long it took.
async fn wait_unknown(
    api: &ApiProcess,
    who: &User,
    ids: &[String],
    limit: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    eventually(limit, "every device UNKNOWN, gateway offline", || async {
        let s = shown(api, who, ids).await?;
        Ok(s.iter()
            .all(|(state, since)| state == "UNKNOWN" && since.is_string())
            .then_some(()))
    })
    .await?;
    Ok(start.elapsed())
}

/// Wait until the API shows every device `CONNECTED` (a fresh state from an
/// online gateway); how long it took.
async fn wait_connected(
    api: &ApiProcess,
    who: &User,
    ids: &[String],
    limit: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    eventually(limit, "every device CONNECTED", || async {
        let s = shown(api, who, ids).await?;
        Ok(s.iter()
            .all(|(state, since)| state == "CONNECTED" && since.is_null())
            .then_some(()))
    })
    .await?;
    Ok(start.elapsed())
}

fn signal(gw: &GatewayProcess, sig: &str) -> Result<()> {
    let ok = std::process::Command::new("kill")
        .args([sig, &gw.child.id().to_string()])
        .status()?
        .success();
    anyhow::ensure!(ok, "kill {sig} failed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_of_a_stopped_killed_or_hung_gateway_turn_unknown_and_come_back() -> Result<()> {
    let gw_id = "gw-link-3";
    let db = TestDb::create().await?;
    ensure_api_login(&db.pool).await?;
    let zk = DevZk::new()?;
    let logs = tempfile::tempdir()?;
    let patient = user(&db.pool, "PATIENT", "Pat Gateway").await?;
    hailan_ingest::admin::enrol_gateway(&db.pool, gw_id, &patient.did, None).await?;
    let ingest_bin = workspace_binary("hailan-ingest")?;
    let _ingest = IngestProcess::start(&ingest_bin, &db, &zk, &[gw_id], logs.path())?;
    let ring = write_key_ring(logs.path())?;
    let api = ApiProcess::start(&ingest_bin, &db, None, &ring, zk.dir.path(), logs.path()).await?;
    let broker = Broker::shared();
    let (_sim, rig, devices) = sim_and_pair(
        "hr=2",
        &logs.path().join("truth.jsonl"),
        gw_id,
        &broker,
        &zk,
        "",
        &[],
    )?;
    let ids: Vec<String> = devices.values().cloned().collect();
    let up = Duration::from_secs(60);

    let mut gw = rig.start(&[])?;
    let took = wait_connected(&api, &patient, &ids, up).await?;
    eprintln!("link: first start → CONNECTED in {took:?}");

    // SIGTERM: the gateway disconnects its devices, drains, says `offline`.
    signal(&gw, "-TERM")?;
    let took = wait_unknown(&api, &patient, &ids, deadline()).await?;
    eprintln!(
        "link: SIGTERM → UNKNOWN in {took:?} (limit {:?})",
        deadline()
    );
    let exit = gw.child.wait()?;
    assert!(exit.success(), "clean stop: {exit}");
    let (status, since): (String, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT status, offline_since FROM gateways WHERE id = $1")
            .bind(gw_id)
            .fetch_one(&db.pool)
            .await?;
    assert_eq!(status, "OFFLINE");
    assert!(since.is_some());

    // Back: the states return (re-sent on connection, then from the links).
    let mut gw = rig.start(&[])?;
    let took = wait_connected(&api, &patient, &ids, up).await?;
    eprintln!("link: restart → CONNECTED in {took:?}");

    // kill -9: the kernel closes its socket; the broker publishes its will.
    gw.kill9()?;
    let took = wait_unknown(&api, &patient, &ids, deadline()).await?;
    eprintln!(
        "link: kill -9 → UNKNOWN in {took:?} (limit {:?})",
        deadline()
    );
    let mut gw = rig.start(&[])?;
    let took = wait_connected(&api, &patient, &ids, up).await?;
    eprintln!("link: restart after kill -9 → CONNECTED in {took:?}");

    let resends = |gw: &GatewayProcess| gw.log_text().matches("device states sent again").count();
    // SIGSTOP: a hung gateway whose socket stays open. Only the broker's
    // keep-alive (1.5 × 5 s) notices; then its will goes out.
    signal(&gw, "-STOP")?;
    let took = wait_unknown(&api, &patient, &ids, deadline());
    let took = match took.await {
        Ok(t) => t,
        Err(e) => {
            signal(&gw, "-CONT")?;
            return Err(e);
        }
    };
    eprintln!(
        "link: SIGSTOP → UNKNOWN in {took:?} (limit {:?})",
        deadline()
    );
    // It wakes up: its broker connection is gone, it connects again, says
    // `online` and sends every device's state again (its links held).
    let before = resends(&gw);
    signal(&gw, "-CONT")?;
    let took = wait_connected(&api, &patient, &ids, up).await?;
    eprintln!("link: SIGCONT → CONNECTED in {took:?}");
    assert!(
        resends(&gw) > before,
        "the states came back because the gateway sent them again on its new connection"
    );
    let exit = gw.terminate()?;
    assert!(exit.success(), "clean stop: {exit}");
    drop(api);
    db.drop().await
}
