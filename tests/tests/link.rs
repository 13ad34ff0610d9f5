//! Truthful link state with a real gateway (issue 18): simulated heart-rate
//! straps on a private bus → `hailan-gateway run` → Mosquitto →
//! `hailan-ingest run` → PostgreSQL → `hailan-ingest api`. When the gateway
//! is stopped (SIGTERM), killed (kill -9) or hangs (SIGSTOP: nothing closes
//! its socket, so only the broker's keep-alive notices), its devices are
//! shown `UNKNOWN`, with the time the gateway went offline, within the
//! broker's keep-alive × 1.5 (+ slack, see [`deadline`]); when it runs
//! again, their states come back (it re-sends every device's state on each
//! connection).

use anyhow::{Context, Result};
use hailan_tests::api::{ApiProcess, User, ensure_api_login, user, write_key_ring};
use hailan_tests::gateway::*;
use hailan_tests::{DevZk, IngestProcess, TestDb, eventually};
use std::time::{Duration, Instant};

/// `mqtt.keep_alive_s` of the test rig's gateway config (`GatewayRig::new`).
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// The gateway's broker account (in the dev broker's password file).
const GW_ID: &str = "gw-link-3";

/// How long the devices may still look connected after the gateway is gone:
/// the broker gives up on a silent client after 1.5 × its keep-alive
/// (Mosquitto counts whole seconds, so up to a second more), then publishes
/// its will; then ingest applies it in one transaction and the API reads it.
/// Those last steps take milliseconds on a quiet machine, but CI runs this
/// beside the packaging test's dpkg, whose fsyncs can hold a PostgreSQL
/// commit for seconds: 15 s for them (the measured time is printed).
fn deadline() -> Duration {
    KEEP_ALIVE.mul_f64(1.5) + Duration::from_secs(1) + Duration::from_secs(15)
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

/// Wait (up to `limit`) until the API shows every device as `want`;
/// how long it took. On time-out the error says what the API showed last
/// and what the `gateways` row says (did ingest hear the will at all?).
async fn wait_for(
    api: &ApiProcess,
    db: &TestDb,
    who: &User,
    ids: &[String],
    limit: Duration,
    want: Want,
) -> Result<Duration> {
    let start = Instant::now();
    let last = std::sync::Mutex::new(Vec::new());
    let what = format!("every device {want:?}");
    let waited = eventually(limit, &what, || async {
        let now = shown(api, who, ids).await?;
        let done = now.iter().all(|(state, since)| want.holds(state, since));
        *last.lock().expect("not poisoned") = now;
        Ok(done.then_some(()))
    })
    .await;
    if let Err(e) = waited {
        let gateway: Option<(String, Option<chrono::DateTime<chrono::Utc>>)> =
            sqlx::query_as("SELECT status, offline_since FROM gateways WHERE id = $1")
                .bind(GW_ID)
                .fetch_optional(&db.pool)
                .await?;
        anyhow::bail!(
            "{e}: the API showed {:?}; gateways row (status, offline_since): {gateway:?}",
            last.lock().expect("not poisoned")
        );
    }
    Ok(start.elapsed())
}

/// What the test waits for the API to show of every device.
#[derive(Clone, Copy, Debug)]
enum Want {
    /// `UNKNOWN`, with the time its gateway went offline.
    Unknown,
    /// `CONNECTED` (a fresh state from an online gateway), no offline time.
    Connected,
}

impl Want {
    fn holds(self, state: &str, since: &serde_json::Value) -> bool {
        match self {
            Want::Unknown => state == "UNKNOWN" && since.is_string(),
            Want::Connected => state == "CONNECTED" && since.is_null(),
        }
    }
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
    let gw_id = GW_ID;
    let db = TestDb::create().await?;
    ensure_api_login(&db.pool).await?;
    let zk = DevZk::new()?;
    let logs = tempfile::tempdir()?;
    let patient = user(&db.pool, "PATIENT", "Pat Gateway").await?;
    hailan_ingest::admin::enrol_gateway(&db.pool, gw_id, &patient.did, None).await?;
    let ingest_bin = workspace_binary("hailan-ingest")?;
    let _ingest = IngestProcess::start(&ingest_bin, &db, &zk, &[gw_id], logs.path())?;
    let ring = write_key_ring(logs.path())?;
    let api = ApiProcess::start(&db, None, &ring, zk.dir.path(), logs.path()).await?;
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
    let took = wait_for(&api, &db, &patient, &ids, up, Want::Connected).await?;
    eprintln!("link: first start → CONNECTED in {took:?}");

    // SIGTERM: the gateway disconnects its devices, drains, says `offline`.
    signal(&gw, "-TERM")?;
    let took = wait_for(&api, &db, &patient, &ids, deadline(), Want::Unknown).await?;
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
    let took = wait_for(&api, &db, &patient, &ids, up, Want::Connected).await?;
    eprintln!("link: restart → CONNECTED in {took:?}");

    // kill -9: the kernel closes its socket; the broker publishes its will.
    gw.kill9()?;
    let took = wait_for(&api, &db, &patient, &ids, deadline(), Want::Unknown).await?;
    eprintln!(
        "link: kill -9 → UNKNOWN in {took:?} (limit {:?})",
        deadline()
    );
    let mut gw = rig.start(&[])?;
    let took = wait_for(&api, &db, &patient, &ids, up, Want::Connected).await?;
    eprintln!("link: restart after kill -9 → CONNECTED in {took:?}");

    let resends = |gw: &GatewayProcess| gw.log_text().matches("device states sent again").count();
    // SIGSTOP: a hung gateway whose socket stays open. Only the broker's
    // keep-alive (1.5 × 5 s) notices; then its will goes out.
    signal(&gw, "-STOP")?;
    let took = wait_for(&api, &db, &patient, &ids, deadline(), Want::Unknown);
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
    let took = wait_for(&api, &db, &patient, &ids, up, Want::Connected).await?;
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
