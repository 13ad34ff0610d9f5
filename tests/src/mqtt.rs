//! The development broker as tests reach it, so a test can publish as a
//! gateway without running one: account passwords, the gateway and service
//! listeners, and a [`Publisher`] that waits for each PUBACK.

use crate::device::TestDevice;
use crate::settings::{repo_root, setting};
use crate::wait::eventually;
use anyhow::{Context, Result};
use sqlx::postgres::PgPool;

/// The password of a development broker account (`cargo xtask services` made them).
pub fn mqtt_password(user: &str) -> Result<String> {
    let path = repo_root().join(".hailan/mosquitto/credentials");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} (run `cargo xtask services`)", path.display()))?;
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(u, _)| *u == user)
        .map(|(_, p)| p.to_owned())
        .with_context(|| format!("no broker account {user} (run `cargo xtask services`)"))
}

/// Host and port of an `mqtt://host:port` URL from setting `name`, else `default_port` on 127.0.0.1.
fn broker_host_port(name: &str, default_port: u16) -> (String, u16) {
    let url = setting(name).unwrap_or_else(|| format!("mqtt://127.0.0.1:{default_port}"));
    let rest = url.trim_start_matches("mqtt://");
    match rest.rsplit_once(':') {
        Some((h, p)) => (h.to_owned(), p.parse().unwrap_or(default_port)),
        None => (rest.to_owned(), default_port),
    }
}

/// Host and port of the development broker's gateway listener
/// (`HAILAN_MQTT_URL`): gateway and Home Assistant accounts. The broker
/// forces the client id to the user name there, so one account holds one
/// connection at a time: a second one takes over the first.
pub fn mqtt_host_port() -> (String, u16) {
    broker_host_port("HAILAN_MQTT_URL", 1883)
}

/// Host and port of the development broker's service listener
/// (`HAILAN_MQTT_INGEST_URL`): the `hailan-ingest` account only, each
/// connection under its own client id.
pub fn mqtt_ingest_host_port() -> (String, u16) {
    broker_host_port("HAILAN_MQTT_INGEST_URL", 1884)
}

/// A QoS 1 publisher logged in as one gateway; `publish` returns once the
/// broker has acknowledged the message.
///
/// The gateway listener makes the account its client id (whatever id is sent
/// here), so a `Publisher` for gateway X takes over the connection of X's
/// daemon or of another `Publisher` for X: give each concurrently running
/// test its own gateway accounts.
pub struct Publisher {
    client: rumqttc::AsyncClient,
    acks: tokio::sync::mpsc::UnboundedReceiver<u16>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    /// Log in as gateway `user` on the development broker's gateway listener.
    pub async fn connect(user: &str) -> Result<Publisher> {
        let (host, port) = mqtt_host_port();
        Self::connect_to(user, &host, port, None).await
    }

    /// Log in as `user` on `host:port`, over TLS trusting the CA certificate
    /// `ca_file` (PEM) when given.
    pub async fn connect_to(
        user: &str,
        host: &str,
        port: u16,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Publisher> {
        Self::connect_opts(user, host, port, ca_file, None).await
    }

    /// Log in as gateway `user` on the development broker's gateway listener
    /// with a last will: `payload` on `topic`, QoS 1, retained — as a
    /// gateway's `offline`. Dropping the publisher closes its socket without
    /// a DISCONNECT, so the broker publishes the will at once.
    pub async fn connect_with_will(user: &str, topic: &str, payload: &[u8]) -> Result<Publisher> {
        let (host, port) = mqtt_host_port();
        let will = rumqttc::LastWill::new(topic, payload.to_vec(), rumqttc::QoS::AtLeastOnce, true);
        Self::connect_opts(user, &host, port, None, Some(will)).await
    }

    async fn connect_opts(
        user: &str,
        host: &str,
        port: u16,
        ca_file: Option<&std::path::Path>,
        will: Option<rumqttc::LastWill>,
    ) -> Result<Publisher> {
        let mut opts = rumqttc::MqttOptions::new(
            format!("{user}-{}", uuid::Uuid::new_v4().simple()),
            host,
            port,
        );
        opts.set_credentials(user, mqtt_password(user)?);
        if let Some(will) = will {
            opts.set_last_will(will);
        }
        if let Some(ca) = ca_file {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            opts.set_transport(rumqttc::Transport::tls(pem, None, None));
        }
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 1000);
        let (tx, acks) = tokio::sync::mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(Ok(()));
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(a))) => {
                        let _ = tx.send(a.pkid);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(Err(e.to_string()));
                            return;
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            }
        });
        match tokio::time::timeout(std::time::Duration::from_secs(10), ready_rx).await {
            Ok(Ok(Ok(()))) => Ok(Publisher { client, acks, task }),
            Ok(Ok(Err(e))) => anyhow::bail!("broker refused {user}: {e}"),
            _ => anyhow::bail!("no CONNACK from the broker for {user}"),
        }
    }

    /// Publish each payload on `topic` at QoS 1 and wait for all PUBACKs.
    pub async fn publish_all(&mut self, topic: &str, payloads: Vec<Vec<u8>>) -> Result<()> {
        let n = payloads.len();
        for p in payloads {
            self.client
                .publish(topic, rumqttc::QoS::AtLeastOnce, false, p)
                .await?;
        }
        for _ in 0..n {
            tokio::time::timeout(std::time::Duration::from_secs(30), self.acks.recv())
                .await
                .context("waiting for PUBACK")?
                .context("publisher stopped")?;
        }
        Ok(())
    }

    /// Publish one retained message on `topic` at QoS 1 and wait for its PUBACK.
    pub async fn publish_retained(&mut self, topic: &str, payload: &[u8]) -> Result<()> {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, true, payload.to_vec())
            .await?;
        tokio::time::timeout(std::time::Duration::from_secs(30), self.acks.recv())
            .await
            .context("waiting for PUBACK")?
            .context("publisher stopped")?;
        Ok(())
    }

    /// Publish `registration` on its gateway's topic and wait until ingest
    /// has stored `device_id` in `pool`.
    pub async fn register_envelope(
        &mut self,
        pool: &PgPool,
        registration: &hailan_proto::envelope::Envelope,
        device_id: &str,
    ) -> Result<()> {
        self.publish_all(
            &hailan_proto::topic::up(&registration.gateway_id),
            vec![hailan_proto::envelope::encode(registration)],
        )
        .await?;
        eventually(
            std::time::Duration::from_secs(60),
            &format!("registration of {device_id}"),
            || async move {
                let n: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM iot_devices WHERE device_id = $1")
                        .bind(device_id)
                        .fetch_one(pool)
                        .await?;
                Ok((n == 1).then_some(()))
            },
        )
        .await
    }

    /// Register each device (see [`register_envelope`](Self::register_envelope)).
    pub async fn register(&mut self, pool: &PgPool, devices: &[&TestDevice]) -> Result<()> {
        for d in devices {
            self.register_envelope(pool, &d.registration(), &d.device_id)
                .await?;
        }
        Ok(())
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}
