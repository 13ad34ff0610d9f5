//! Truthful link state (issue 18): the real `hailan-ingest run` follows the
//! gateways' retained status topics on the development Mosquitto and marks a
//! gateway's devices `UNKNOWN` when it goes `offline` — said on a clean stop
//! or published by the broker as its last will — and the clinician API
//! (`hailan-api`) shows it. Order is by observed time: a device state
//! observed before the gateway went offline never overwrites the UNKNOWN.
//! The broker's ACL decides whose status a message is.

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use hailan_proto::envelope::{self, Body, Envelope};
use hailan_proto::{DataType, topic};
use hailan_tests::api::{ApiProcess, User, ensure_api_login, user, write_key_ring};
use hailan_tests::{
    DevZk, IngestProcess, Publisher, TestDb, TestDevice, eventually, mqtt_ingest_host_port,
};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_hailan-ingest");
const WAIT: Duration = Duration::from_secs(30);

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// A device's row as ingest left it.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Link {
    connection_state: String,
    state_observed_at: Option<DateTime<Utc>>,
    gateway_offline_since: Option<DateTime<Utc>>,
    needs_repair: Option<bool>,
}

async fn link(pool: &sqlx::PgPool, device_id: &str) -> Result<Link> {
    sqlx::query_as(
        "SELECT connection_state, state_observed_at, gateway_offline_since, needs_repair
           FROM iot_devices WHERE device_id = $1",
    )
    .bind(device_id)
    .fetch_one(pool)
    .await
    .with_context(|| format!("iot_devices row of {device_id}"))
}

/// Wait until `device_id`'s row satisfies `done`.
async fn wait_link(
    pool: &sqlx::PgPool,
    device_id: &str,
    what: &str,
    done: impl Fn(&Link) -> bool,
) -> Result<Link> {
    eventually(WAIT, &format!("{device_id}: {what}"), || async {
        let l = link(pool, device_id).await?;
        Ok(done(&l).then_some(l))
    })
    .await
}

/// The gateway's row: (status, offline_since).
async fn gateway(pool: &sqlx::PgPool, id: &str) -> Result<(String, Option<DateTime<Utc>>)> {
    Ok(
        sqlx::query_as("SELECT status, offline_since FROM gateways WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await?,
    )
}

async fn wait_gateway_online(pool: &sqlx::PgPool, id: &str) -> Result<()> {
    eventually(WAIT, &format!("{id} online"), || async {
        let (status, since) = gateway(pool, id).await?;
        Ok((status == "ONLINE" && since.is_none()).then_some(()))
    })
    .await
}

/// The devices of the API's listing, by device id.
async fn api_devices(api: &ApiProcess, who: &User, patient: uuid::Uuid) -> Result<Vec<Value>> {
    let v = api
        .json(&who.token, &format!("/api/v1/patients/{patient}/devices"))
        .await?;
    Ok(v["devices"].as_array().context("devices")?.clone())
}

fn api_device<'a>(devices: &'a [Value], id: &str) -> Result<&'a Value> {
    devices
        .iter()
        .find(|d| d["device_id"] == id)
        .with_context(|| format!("{id} in {devices:?}"))
}

/// Gateway statuses the ingest process has applied (its log says each).
fn statuses_applied(ingest: &IngestProcess) -> usize {
    ingest
        .log_text()
        .lines()
        .filter(|l| l.contains("gateway status") && l.contains("devices="))
        .count()
}

async fn publish(p: &mut Publisher, gw: &str, envelopes: &[Envelope]) -> Result<()> {
    p.publish_all(
        &topic::up(gw),
        envelopes.iter().map(envelope::encode).collect(),
    )
    .await
}

/// Offline (retained, then as a last will), ordering, online, staleness and
/// `needs_repair`, in the database and through the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_marks_devices_unknown_and_online_lets_states_back() -> Result<()> {
    let gw = "gw-link-1";
    let status = topic::status(gw);
    let db = TestDb::create().await?;
    ensure_api_login(&db.pool).await?;
    let zk = DevZk::new()?;
    let logs = tempfile::tempdir()?;
    let patient = user(&db.pool, "PATIENT", "Pat Link").await?;
    hailan_ingest::admin::enrol_gateway(&db.pool, gw, &patient.did, None).await?;
    let ingest = IngestProcess::start(Path::new(BIN), &db, &zk, &[gw], logs.path())?;
    let ring = write_key_ring(logs.path())?;
    let api = ApiProcess::start(&db, None, &ring, zk.dir.path(), logs.path()).await?;
    let mut p = Publisher::connect(gw).await?;
    // An earlier run may have left `offline` retained: start online.
    p.publish_retained(&status, b"online").await?;
    wait_gateway_online(&db.pool, gw).await?;

    let hr = TestDevice::new(gw, "link-hr-1", DataType::HeartRate, 1);
    let bp = TestDevice::new(gw, "link-bp-1", DataType::BloodPressure, 2);
    p.register(&db.pool, &[&hr, &bp]).await?;

    // hr: connected now. bp: connected 20 minutes ago (older than the
    // default api.stale_after_s, 900 s), and needing repair.
    let t = now_ms();
    let mut bp_state = bp.link_state(true, t - 20 * 60_000);
    if let Body::DeviceState(s) = &mut bp_state.body {
        s.needs_repair = Some(true);
    }
    publish(&mut p, gw, &[hr.link_state(true, t), bp_state]).await?;
    wait_link(&db.pool, "link-hr-1", "connected", |l| {
        l.connection_state == "CONNECTED"
    })
    .await?;
    let b = wait_link(&db.pool, "link-bp-1", "connected", |l| {
        l.connection_state == "CONNECTED"
    })
    .await?;
    assert_eq!(b.needs_repair, Some(true));
    let devices = api_devices(&api, &patient, patient.id).await?;
    let h = api_device(&devices, "link-hr-1")?;
    assert_eq!(
        (
            &h["connection_state"],
            &h["state_stale"],
            &h["gateway_offline_since"],
            &h["needs_repair"]
        ),
        (
            &Value::from("CONNECTED"),
            &Value::from(false),
            &Value::Null,
            &Value::from(false)
        ),
        "{h}"
    );
    let b = api_device(&devices, "link-bp-1")?;
    assert_eq!(
        (
            &b["connection_state"],
            &b["reported_connection_state"],
            &b["state_stale"],
            &b["needs_repair"]
        ),
        (
            &Value::from("UNKNOWN"),
            &Value::from("CONNECTED"),
            &Value::from(true),
            &Value::from(true)
        ),
        "a stale state is never shown CONNECTED: {b}"
    );

    // 1. The gateway says `offline` (retained), as on a clean stop.
    let before = Utc::now();
    p.publish_retained(&status, b"offline").await?;
    let h = wait_link(&db.pool, "link-hr-1", "unknown", |l| {
        l.connection_state == "UNKNOWN" && l.gateway_offline_since.is_some()
    })
    .await?;
    let since = h.gateway_offline_since.context("offline since")?;
    assert!(
        since >= before - chrono::Duration::seconds(1),
        "{since} {before}"
    );
    assert_eq!(h.state_observed_at, Some(since), "UNKNOWN as of then");
    assert_eq!(
        gateway(&db.pool, gw).await?,
        ("OFFLINE".to_owned(), Some(since))
    );
    let b = link(&db.pool, "link-bp-1").await?;
    assert_eq!(
        (b.connection_state.as_str(), b.gateway_offline_since),
        ("UNKNOWN", Some(since))
    );
    let devices = api_devices(&api, &patient, patient.id).await?;
    for id in ["link-hr-1", "link-bp-1"] {
        let d = api_device(&devices, id)?;
        assert_eq!(d["connection_state"], "UNKNOWN", "{d}");
        let shown: DateTime<Utc> = serde_json::from_value(d["gateway_offline_since"].clone())
            .with_context(|| format!("gateway_offline_since of {d}"))?;
        assert_eq!(shown, since);
    }

    // 2. Ordering by observed time: a state the gateway observed before it
    // went offline arrives late and does not overwrite the UNKNOWN; one
    // observed after it (bp's, published behind it on the same topic, so
    // written after it) does, but the API still says UNKNOWN while the
    // gateway is offline.
    let late = hr.link_state(true, since.timestamp_millis() - 1_000);
    let after = bp.link_state(true, since.timestamp_millis() + 1_000);
    publish(&mut p, gw, &[late, after]).await?;
    wait_link(&db.pool, "link-bp-1", "state after offline", |l| {
        l.connection_state == "CONNECTED"
    })
    .await?;
    let h = link(&db.pool, "link-hr-1").await?;
    assert_eq!(
        (h.connection_state.as_str(), h.state_observed_at),
        ("UNKNOWN", Some(since)),
        "a state observed before the offline time never overwrites it"
    );
    let devices = api_devices(&api, &patient, patient.id).await?;
    assert_eq!(
        api_device(&devices, "link-bp-1")?["connection_state"],
        "UNKNOWN"
    );

    // The retained `offline`, delivered again (a second offline), keeps the first time.
    let seen = statuses_applied(&ingest);
    p.publish_retained(&status, b"offline").await?;
    eventually(WAIT, "the second offline applied", || async {
        Ok((statuses_applied(&ingest) > seen).then_some(()))
    })
    .await?;
    assert_eq!(gateway(&db.pool, gw).await?.1, Some(since));
    assert_eq!(
        link(&db.pool, "link-hr-1").await?.gateway_offline_since,
        Some(since)
    );

    // 3. `online` clears the offline time; states come from the gateway again.
    p.publish_retained(&status, b"online").await?;
    wait_gateway_online(&db.pool, gw).await?;
    wait_link(&db.pool, "link-hr-1", "gateway online", |l| {
        l.gateway_offline_since.is_none()
    })
    .await?;
    publish(&mut p, gw, &[hr.link_state(true, now_ms())]).await?;
    wait_link(&db.pool, "link-hr-1", "connected again", |l| {
        l.connection_state == "CONNECTED"
    })
    .await?;
    let devices = api_devices(&api, &patient, patient.id).await?;
    let h = api_device(&devices, "link-hr-1")?;
    assert_eq!(
        (&h["connection_state"], &h["gateway_offline_since"]),
        (&Value::from("CONNECTED"), &Value::Null),
        "{h}"
    );

    // 4. The last will: a connection that ends without DISCONNECT.
    drop(p);
    let will = Publisher::connect_with_will(gw, &status, b"offline").await?;
    let before = Utc::now();
    drop(will);
    let h = wait_link(&db.pool, "link-hr-1", "unknown after the will", |l| {
        l.connection_state == "UNKNOWN" && l.gateway_offline_since.is_some()
    })
    .await?;
    assert!(h.gateway_offline_since >= Some(before - chrono::Duration::seconds(1)));
    let devices = api_devices(&api, &patient, patient.id).await?;
    assert_eq!(
        api_device(&devices, "link-hr-1")?["connection_state"],
        "UNKNOWN"
    );
    // Back: online, and a fresh state.
    let mut p = Publisher::connect(gw).await?;
    p.publish_retained(&status, b"online").await?;
    wait_gateway_online(&db.pool, gw).await?;
    publish(&mut p, gw, &[hr.link_state(true, now_ms())]).await?;
    wait_link(&db.pool, "link-hr-1", "connected after the will", |l| {
        l.connection_state == "CONNECTED" && l.gateway_offline_since.is_none()
    })
    .await?;
    drop(api);
    db.drop().await
}

/// The broker decides whose status a message is: a gateway cannot publish
/// another gateway's status, nor can the ingest account publish any; what a
/// gateway says about itself is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_gateway_itself_can_say_it_is_offline() -> Result<()> {
    let gw = "gw-link-2";
    // Enrolled here, but no broker account may write its topics.
    let victim = "gw-link-victim";
    let db = TestDb::create().await?;
    let zk = DevZk::new()?;
    let logs = tempfile::tempdir()?;
    let patient = hailan_tests::enrol(&db.pool, gw).await?;
    let did: String = sqlx::query_scalar("SELECT did FROM users WHERE id = $1")
        .bind(patient)
        .fetch_one(&db.pool)
        .await?;
    hailan_ingest::admin::enrol_gateway(&db.pool, victim, &did, None).await?;
    sqlx::query(
        "INSERT INTO iot_devices (user_id, device_id, device_type, gateway_id, bluetooth_address,
                                  zk_device_commitment, connection_state, state_observed_at)
         VALUES ($1, 'victim-hr-1', 'HEART_RATE', $2, 'AA:BB:CC:00:00:01', $3, 'CONNECTED', now())",
    )
    .bind(patient)
    .bind(victim)
    .bind(vec![7u8; 32])
    .execute(&db.pool)
    .await?;
    let _ingest = IngestProcess::start(Path::new(BIN), &db, &zk, &[gw], logs.path())?;
    let mut p = Publisher::connect(gw).await?;
    p.publish_retained(&topic::status(gw), b"online").await?;
    wait_gateway_online(&db.pool, gw).await?;
    let own = TestDevice::new(gw, "link-own-1", DataType::HeartRate, 3);
    p.register(&db.pool, &[&own]).await?;
    publish(&mut p, gw, &[own.link_state(true, now_ms())]).await?;
    wait_link(&db.pool, "link-own-1", "connected", |l| {
        l.connection_state == "CONNECTED"
    })
    .await?;

    // The ingest account (service listener) may read statuses, never write one.
    let (host, port) = mqtt_ingest_host_port();
    let mut service = Publisher::connect_to("hailan-ingest", &host, port, None).await?;
    service
        .publish_retained(&topic::status(victim), b"offline")
        .await?;
    service
        .publish_retained(&topic::status(gw), b"offline")
        .await?;
    // Another gateway's status: refused by the gateway listener's ACL
    // (Mosquitto still acknowledges it, and drops it).
    p.publish_retained(&topic::status(victim), b"offline")
        .await?;
    // Its own: applied. The broker handles one connection's messages in
    // order and the others' before them (each was acknowledged first), so
    // once this one is applied the refused ones would have been too.
    p.publish_retained(&topic::status(gw), b"offline").await?;
    wait_link(&db.pool, "link-own-1", "unknown", |l| {
        l.connection_state == "UNKNOWN" && l.gateway_offline_since.is_some()
    })
    .await?;
    let v = link(&db.pool, "victim-hr-1").await?;
    assert_eq!(
        (v.connection_state.as_str(), v.gateway_offline_since),
        ("CONNECTED", None),
        "nobody but the gateway itself can take it offline"
    );
    assert_eq!(gateway(&db.pool, victim).await?.1, None);
    p.publish_retained(&topic::status(gw), b"online").await?;
    wait_gateway_online(&db.pool, gw).await?;
    db.drop().await
}

/// Ingest down while its gateway goes offline: the `offline` the broker
/// retained is what a starting ingest reads first, and the devices left
/// `CONNECTED` by the last run turn `UNKNOWN` as of then — a restart or an
/// upgrade of ingest never leaves a dead gateway's devices shown connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_started_after_its_gateway_went_offline_marks_its_devices() -> Result<()> {
    let gw = "gw-link-4";
    let status = topic::status(gw);
    let db = TestDb::create().await?;
    let zk = DevZk::new()?;
    let logs = tempfile::tempdir()?;
    hailan_tests::enrol(&db.pool, gw).await?;
    let mut ingest = IngestProcess::start(Path::new(BIN), &db, &zk, &[gw], logs.path())?;
    let mut p = Publisher::connect(gw).await?;
    p.publish_retained(&status, b"online").await?;
    wait_gateway_online(&db.pool, gw).await?;
    let hr = TestDevice::new(gw, "link-hr-4", DataType::HeartRate, 1);
    p.register(&db.pool, &[&hr]).await?;
    publish(&mut p, gw, &[hr.link_state(true, now_ms())]).await?;
    wait_link(&db.pool, "link-hr-4", "connected", |l| {
        l.connection_state == "CONNECTED"
    })
    .await?;

    // Ingest stops; then the gateway goes offline (its retained status).
    let exit = ingest.terminate()?;
    anyhow::ensure!(exit.success(), "ingest exit {exit}");
    let before = Utc::now();
    p.publish_retained(&status, b"offline").await?;
    assert_eq!(
        link(&db.pool, "link-hr-4").await?.connection_state,
        "CONNECTED",
        "nobody has told the database yet"
    );

    let _ingest = IngestProcess::start(Path::new(BIN), &db, &zk, &[gw], logs.path())?;
    let h = wait_link(&db.pool, "link-hr-4", "unknown after a restart", |l| {
        l.connection_state == "UNKNOWN"
    })
    .await?;
    let since = h.gateway_offline_since.context("gateway_offline_since")?;
    assert!(
        since >= before - chrono::Duration::seconds(1),
        "offline as of when the new ingest saw it ({since}), not before the status was said ({before})"
    );
    assert_eq!(
        gateway(&db.pool, gw).await?,
        ("OFFLINE".to_owned(), Some(since))
    );
    p.publish_retained(&status, b"online").await?;
    db.drop().await
}
