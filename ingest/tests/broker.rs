//! Issue 16: a gateway's broker credentials must not reach ingest's
//! persistent session. With one listener and one password file, a gateway
//! account that connected under ingest's client id took over that session
//! (and a clean-session connect discarded its queue): every reading queued
//! for ingest while it was down was lost, although the broker had
//! acknowledged it to the gateway. The broker configuration now has a
//! gateway listener that makes the user name the client id and a service
//! listener that knows only ingest accounts.
//!
//! The attack, on the development broker (`deploy/mosquitto/dev.conf.in`,
//! what `cargo xtask services` runs) and on the production configuration
//! itself (`deploy/mosquitto/hailan.conf` with TLS and a test CA): ingest
//! (the real `hailan-ingest run`) is down with 3 readings queued in its
//! session; a gateway account connects with ingest's client id on the
//! gateway listener, persistent and then clean, and tries the service
//! listener; then ingest comes back, and all 3 readings are stored.

use anyhow::{Context, Result, ensure};
use hailan_proto::envelope;
use hailan_proto::{DataType, topic};
use hailan_tests::gateway::PrivateMosquitto;
use hailan_tests::{
    DevZk, IngestOptions, IngestProcess, Publisher, TestDb, TestDevice, count_readings, enrol,
    eventually, mqtt_host_port, mqtt_ingest_host_port, mqtt_password,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_hailan-ingest");
const WAIT: Duration = Duration::from_secs(60);
/// The gateway account of the attack (reserved for these tests).
const GW: &str = "gw-hostile-7";

/// A broker with its two listeners.
struct Listeners {
    host: String,
    /// Gateway listener.
    port: u16,
    /// Service listener.
    ingest_port: u16,
    /// CA certificate (PEM) when the listeners are TLS.
    ca_file: Option<PathBuf>,
}

/// How a connection attempt ended: accepted (with whether the broker had a
/// session for its client id), or refused (the CONNACK's code).
#[derive(Debug, PartialEq)]
enum Connack {
    Accepted { session_present: bool },
    Refused(String),
}

/// Connect as `user` with `client_id` and the given clean-session flag,
/// wait for the CONNACK and drop the connection.
async fn try_connect(
    to: &Listeners,
    port: u16,
    user: &str,
    client_id: &str,
    clean_session: bool,
) -> Result<Connack> {
    let mut opts = rumqttc::MqttOptions::new(client_id, to.host.clone(), port);
    opts.set_credentials(user, mqtt_password(user)?);
    opts.set_clean_session(clean_session);
    if let Some(ca) = &to.ca_file {
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        opts.set_transport(rumqttc::Transport::tls(pem, None, None));
    }
    let (_client, mut events) = rumqttc::AsyncClient::new(opts, 10);
    let what = format!("CONNACK for {user} as client id {client_id} on port {port}");
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a))) => {
                    return Ok(Connack::Accepted {
                        session_present: a.session_present,
                    });
                }
                Ok(_) => {}
                Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                    return Ok(Connack::Refused(format!("{code:?}")));
                }
                Err(e) => return Err(anyhow::Error::new(e).context(what.clone())),
            }
        }
    })
    .await
    .with_context(|| format!("no {what} within 10 s"))?
}

/// What the gateway account's attempts on ingest's session got.
#[derive(Debug)]
struct Attack {
    persistent_on_gateway_listener: Connack,
    clean_on_gateway_listener: Connack,
    on_service_listener: Connack,
    ingest_on_gateway_listener: Connack,
}

/// The scenario of the module comment. `client_id`: what ingest is
/// configured with; `victim_id`: the client id its session has on the broker
/// (the same, unless the service listener forces the account name).
async fn queued_readings_survive_a_gateway_account(
    to: &Listeners,
    group: Option<&str>,
    client_id: &str,
    victim_id: &str,
) -> Result<()> {
    let db = TestDb::create().await?;
    let zk = DevZk::new()?;
    let logs = tempfile::tempdir()?;
    enrol(&db.pool, GW).await?;
    let ca = to.ca_file.as_ref().map(|p| p.display().to_string());
    let ca_env: Vec<(&str, &str)> = ca
        .as_deref()
        .map(|ca| ("HAILAN_INGEST__MQTT__CA_FILE", ca))
        .into_iter()
        .collect();
    let mut ingest = IngestProcess::start_opts(
        Path::new(BIN),
        &db,
        &zk,
        &[GW],
        logs.path(),
        IngestOptions {
            group,
            broker: Some((&to.host, to.ingest_port)),
            client_id: Some(client_id),
            env: &ca_env,
            ..Default::default()
        },
    )?;
    let mut publisher = Publisher::connect_to(GW, &to.host, to.port, to.ca_file.as_deref()).await?;
    let mut dev = TestDevice::new(GW, "dev-issue16", DataType::HeartRate, 1600);
    publisher.register(&db.pool, &[&dev]).await?;

    // Ingest goes down; 3 readings are acknowledged to the gateway and
    // queued in ingest's session.
    ingest.kill9()?;
    let readings: Vec<Vec<u8>> = (0..3)
        .map(|_| envelope::encode(&dev.unproven_reading(&[70])))
        .collect();
    publisher.publish_all(&topic::up(GW), readings).await?;
    // The gateway account holds one connection at a time: the publisher
    // leaves before the attack's connections.
    drop(publisher);

    // The gateway's credentials with ingest's client id: resume the session
    // (persistent), then discard it (clean); on the service listener too.
    // And ingest's account on the gateway listener.
    let attack = Attack {
        persistent_on_gateway_listener: try_connect(to, to.port, GW, victim_id, false).await?,
        clean_on_gateway_listener: try_connect(to, to.port, GW, victim_id, true).await?,
        on_service_listener: try_connect(to, to.ingest_port, GW, victim_id, true).await?,
        ingest_on_gateway_listener: try_connect(
            to,
            to.port,
            "hailan-ingest",
            &format!("ingest-probe-{}", uuid::Uuid::new_v4().simple()),
            true,
        )
        .await?,
    };

    // Ingest comes back under its client id: 3 of 3 readings stored. (Checked
    // first: it is the point, and what the old configuration failed.)
    ingest.restart()?;
    let stored = match eventually(WAIT, "the 3 queued readings stored", || async {
        let n = count_readings(&db.pool, "").await?;
        Ok((n >= 3).then_some(n))
    })
    .await
    {
        Ok(n) => n,
        Err(e) => {
            let n = count_readings(&db.pool, "").await?;
            return Err(e.context(format!(
                "{n} of 3 queued readings stored after {attack:?}; ingest's log:\n{}",
                ingest.log_text()
            )));
        }
    };
    assert_eq!(stored, 3, "readings stored after the attack");
    assert_eq!(count_readings(&db.pool, "AND seq IN (1, 2, 3)").await?, 3);

    // The gateway account logged in (valid credentials) but was given no
    // session of ingest's; the service listener refused it; the gateway
    // listener refuses ingest's account.
    assert_eq!(
        attack.persistent_on_gateway_listener,
        Connack::Accepted {
            session_present: false
        },
        "{attack:?}"
    );
    assert!(
        matches!(attack.clean_on_gateway_listener, Connack::Accepted { .. }),
        "{attack:?}"
    );
    assert!(
        matches!(attack.on_service_listener, Connack::Refused(_)),
        "{attack:?}"
    );
    assert!(
        matches!(attack.ingest_on_gateway_listener, Connack::Refused(_)),
        "{attack:?}"
    );
    ensure!(
        ingest.terminate()?.success(),
        "ingest exit:\n{}",
        ingest.log_text()
    );
    db.drop().await
}

/// On the development broker: its service listener keeps the configured
/// client id (many test processes share the one ingest account), so the
/// attack uses that id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_account_cannot_touch_ingests_session_on_the_dev_broker() -> Result<()> {
    let (host, port) = mqtt_host_port();
    let (ingest_host, ingest_port) = mqtt_ingest_host_port();
    ensure!(
        host == ingest_host,
        "the listeners on one host: {host} vs {ingest_host}"
    );
    let to = Listeners {
        host,
        port,
        ingest_port,
        ca_file: None,
    };
    let id = format!("ingest-issue16-{}", uuid::Uuid::new_v4().simple());
    queued_readings_survive_a_gateway_account(&to, None, &id, &id).await
}

/// On `deploy/mosquitto/hailan.conf` as shipped (TLS on both listeners, a
/// test CA): the service listener makes the account `hailan-ingest` the
/// client id, whatever ingest sends, so that is the id the attack uses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_account_cannot_touch_ingests_session_on_the_shipped_config() -> Result<()> {
    let mosquitto = PrivateMosquitto::start_shipped()?;
    let to = Listeners {
        host: "127.0.0.1".into(),
        port: mosquitto.port,
        ingest_port: mosquitto.ingest_port,
        ca_file: Some(mosquitto.dir().join("ca.pem")),
    };
    queued_readings_survive_a_gateway_account(
        &to,
        Some("hailan-ingest"),
        "hailan-ingest-1",
        "hailan-ingest",
    )
    .await
    .with_context(|| {
        format!(
            "broker log:\n{}",
            std::fs::read_to_string(mosquitto.log_path()).unwrap_or_default()
        )
    })
}
