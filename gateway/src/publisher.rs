//! The outbox → MQTT publisher (DESIGN §4, §7).
//!
//! QoS 1 on `hailan/v1/{gateway}/up`, persistent session (fixed client id,
//! clean session off), the retained `online` status with `offline` as last
//! will. An outbox row leaves the outbox only on its PUBACK: rumqttc reports
//! each publish's packet id (`Outgoing::Publish`) in the order the publishes
//! were handed to it, so a FIFO of outbox ids pairs them, and at most
//! `max_inflight - 1` are in flight so a packet id is never reused before
//! its PUBACK. On any connection error the whole connection is dropped and
//! rebuilt after a jittered, capped backoff, and everything unacknowledged
//! is published again from the outbox (ingest's unique key absorbs the
//! duplicates) — in order, so per-device order holds.

use crate::config::GatewayConfig;
use crate::health::Beat;
use crate::metrics::Metrics;
use crate::pipeline::now_ms;
use crate::store::Store;
use anyhow::{Context, Result};
use rand::Rng;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, LastWill, MqttOptions, Outgoing, QoS};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// Whether the broker link is up (for READY=1, `status` and STATUS=).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Link {
    /// A connection attempt is under way (also the state before the first one).
    Connecting,
    /// The broker accepted the connection (CONNACK); the outbox is being published.
    Connected,
    /// The connection failed or was lost, with the error; another attempt
    /// follows after a backoff.
    Down(String),
}

/// Retained payload of the status topic (`hailan/v1/{gateway_id}/status`)
/// while the gateway is connected.
pub const ONLINE: &str = "online";
/// Retained payload of the status topic once the gateway is gone: published
/// on a clean shutdown and left by the broker as the MQTT last will.
pub const OFFLINE: &str = "offline";

/// The publisher task: keeps the broker connection, publishes unsent outbox
/// rows in order at QoS 1, and removes each row on its PUBACK.
pub struct Publisher {
    /// The gateway configuration: `[mqtt]` for the connection, the gateway
    /// id for the topics, `[home_assistant]` for discovery.
    pub cfg: Arc<GatewayConfig>,
    /// The store whose outbox is published; its `broker` status value is
    /// kept up to date for `hailan-gateway status`.
    pub store: Arc<Store>,
    /// Woken by the pipeline after each outbox commit, so new rows go out at once.
    pub outbox_changed: Arc<Notify>,
    /// Beaten by the publisher's loop; the daemon stops pinging the systemd
    /// watchdog when it goes quiet.
    pub beat: Arc<Beat>,
    /// Counters of published and acknowledged envelopes, broker connections
    /// and publish-to-PUBACK times.
    pub metrics: Arc<Metrics>,
    /// Where the state of the broker link is announced (to the daemon for
    /// READY=1 and STATUS=, to the pipeline to send device states again).
    pub link: watch::Sender<Link>,
}

/// How long shutdown waits for the outbox to drain before disconnecting.
pub const DRAIN_ON_SHUTDOWN: Duration = Duration::from_secs(5);

fn options(cfg: &GatewayConfig) -> Result<MqttOptions> {
    let mut opts = MqttOptions::new(cfg.client_id(), &cfg.mqtt.host, cfg.mqtt.port);
    opts.set_clean_session(false);
    opts.set_keep_alive(Duration::from_secs(cfg.mqtt.keep_alive_s.max(5)));
    opts.set_inflight(cfg.mqtt.max_inflight);
    opts.set_max_packet_size(4096, hailan_proto::envelope::MAX_ENVELOPE_BYTES + 4096);
    opts.set_request_channel_capacity(usize::from(cfg.mqtt.max_inflight) * 2 + 16);
    opts.set_last_will(LastWill::new(
        hailan_proto::topic::status(&cfg.gateway_id),
        OFFLINE,
        QoS::AtLeastOnce,
        true,
    ));
    if let Some(pw) = cfg.password()? {
        opts.set_credentials(cfg.username(), pw);
    }
    if let Some(ca) = &cfg.mqtt.ca_file {
        let pem = std::fs::read(ca).with_context(|| format!("mqtt.ca_file: {}", ca.display()))?;
        let client_auth = match (&cfg.mqtt.client_cert_file, &cfg.mqtt.client_key_file) {
            (Some(c), Some(k)) => Some((
                std::fs::read(c)
                    .with_context(|| format!("mqtt.client_cert_file: {}", c.display()))?,
                crate::config::read_secret_file(k, "mqtt.client_key_file")?.into_bytes(),
            )),
            _ => None,
        };
        opts.set_transport(rumqttc::Transport::tls(pem, client_auth, None));
    }
    Ok(opts)
}

/// What Home Assistant has been told on this connection.
#[derive(Default)]
struct HaSent {
    announced: std::collections::HashSet<String>,
    states: HashMap<String, Vec<u8>>,
}

/// What was handed to rumqttc and not yet acknowledged.
#[derive(Default)]
struct InFlight {
    /// Publishes whose packet id is not known yet: outbox id (None: a status message).
    unnumbered: VecDeque<(Option<i64>, Instant)>,
    /// Packet id → outbox id.
    numbered: HashMap<u16, (Option<i64>, Instant)>,
    /// Highest outbox id handed over.
    last_id: i64,
}

impl InFlight {
    fn len(&self) -> usize {
        self.unnumbered.len() + self.numbered.len()
    }
}

impl Publisher {
    /// Publish until `shutdown`; then drain for up to [`DRAIN_ON_SHUTDOWN`],
    /// publish `offline` and disconnect.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let opts = options(&self.cfg)?;
        let mut backoff = Duration::from_millis(500);
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let started = Instant::now();
            let _ = self.link.send(Link::Connecting);
            let outcome = self.connection(opts.clone(), &shutdown).await;
            self.metrics.broker_connected.set(0);
            match outcome {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let why = format!("{e:#}");
                    tracing::warn!("broker connection lost: {why}");
                    let _ = self.link.send(Link::Down(why.clone()));
                    let _ = self
                        .store
                        .set_meta("broker", &format!("down since {}: {why}", now_ms()));
                }
            }
            if started.elapsed() > Duration::from_secs(30) {
                backoff = Duration::from_millis(500);
            }
            let jitter = rand::thread_rng().gen_range(0.5..1.0);
            let wait = backoff.mul_f64(jitter);
            backoff = (backoff * 2).min(Duration::from_secs(30));
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = self.beating_sleep(wait) => {}
            }
        }
    }

    async fn beating_sleep(&self, d: Duration) {
        let end = tokio::time::Instant::now() + d;
        while tokio::time::Instant::now() < end {
            self.beat.beat();
            tokio::time::sleep_until(end.min(tokio::time::Instant::now() + Duration::from_secs(1)))
                .await;
        }
    }

    /// One connection, from connect to error (Err) or shutdown (Ok).
    async fn connection(&self, opts: MqttOptions, shutdown: &CancellationToken) -> Result<()> {
        let cap = usize::from(self.cfg.mqtt.max_inflight) * 2 + 16;
        let (client, mut eventloop) = AsyncClient::new(opts, cap);
        let window = usize::from(self.cfg.mqtt.max_inflight) - 1;
        let up = hailan_proto::topic::up(&self.cfg.gateway_id);
        let status = hailan_proto::topic::status(&self.cfg.gateway_id);
        let mut flight = InFlight::default();
        let mut connected = false;
        let mut acked: Vec<i64> = Vec::new();
        let mut draining_since: Option<Instant> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Home Assistant: what this connection has announced and sent.
        let mut ha = HaSent::default();
        let mut ha_due = false;
        loop {
            self.beat.beat();
            if connected && ha_due && self.cfg.home_assistant.enabled {
                ha_due = !self.home_assistant(&client, window, &mut flight, &mut ha)?;
            }
            if connected {
                self.fill(&client, &up, window, &mut flight)?;
            }
            if let Some(since) = draining_since {
                let empty = flight.len() == 0 && self.store.pending(0, 1)?.is_empty();
                if empty || since.elapsed() >= DRAIN_ON_SHUTDOWN || !connected {
                    if !empty {
                        tracing::warn!(
                            "shutting down with unsent readings in the outbox; they go out at the next start"
                        );
                    }
                    return self
                        .goodbye(&client, &mut eventloop, &status, connected)
                        .await;
                }
            }
            tokio::select! {
                ev = eventloop.poll() => {
                    let ev = match ev {
                        Ok(ev) => ev,
                        Err(e) => {
                            // Keep what was acknowledged: it must not go out again.
                            if let Err(r) = self.remove(&mut acked).await {
                                tracing::warn!("removing acknowledged rows: {r:#}");
                            }
                            return Err(anyhow::Error::new(e).context("MQTT connection"));
                        }
                    };
                    match ev {
                        Event::Incoming(Incoming::ConnAck(ack)) => {
                            if ack.code != rumqttc::ConnectReturnCode::Success {
                                anyhow::bail!("broker refused the connection: {:?}", ack.code);
                            }
                            connected = true;
                            self.metrics.broker_connects.inc();
                            self.metrics.broker_connected.set(1);
                            tracing::info!(host = %self.cfg.mqtt.host, port = self.cfg.mqtt.port, session_present = ack.session_present, "connected to the broker");
                            client.try_publish(&status, QoS::AtLeastOnce, true, ONLINE)
                                .context("publishing the online status")?;
                            flight.unnumbered.push_back((None, Instant::now()));
                            ha_due = true;
                            let _ = self.link.send(Link::Connected);
                            let _ = self.store.set_meta("broker", "connected");
                        }
                        Event::Outgoing(Outgoing::Publish(pkid)) => {
                            if let Some(entry) = flight.unnumbered.pop_front() {
                                flight.numbered.insert(pkid, entry);
                            }
                        }
                        Event::Incoming(Incoming::PubAck(ack)) => {
                            if let Some((id, sent)) = flight.numbered.remove(&ack.pkid) {
                                self.metrics.publish_to_ack_seconds.observe(sent.elapsed().as_secs_f64());
                                if let Some(id) = id {
                                    acked.push(id);
                                }
                            }
                        }
                        _ => {}
                    }
                }
                _ = self.outbox_changed.notified() => {}
                _ = tick.tick() => ha_due = true,
                _ = shutdown.cancelled(), if draining_since.is_none() => {
                    draining_since = Some(Instant::now());
                }
            }
            if !acked.is_empty()
                && (acked.len() >= 32 || flight.len() < window / 2 || draining_since.is_some())
            {
                self.remove(&mut acked).await?;
            }
        }
    }

    /// Announce new devices and send changed battery/link states to Home
    /// Assistant (retained, QoS 1), within the in-flight window. Returns
    /// whether everything due was sent.
    fn home_assistant(
        &self,
        client: &AsyncClient,
        window: usize,
        flight: &mut InFlight,
        sent: &mut HaSent,
    ) -> Result<bool> {
        let devices = self.store.devices()?;
        let prefix = &self.cfg.home_assistant.discovery_prefix;
        let gw = &self.cfg.gateway_id;
        let mut due: Vec<(String, Vec<u8>)> = Vec::new();
        for d in &devices {
            if !sent.announced.contains(&d.device_id) {
                due.extend(crate::home_assistant::discovery(
                    prefix,
                    gw,
                    std::slice::from_ref(d),
                ));
            }
            let state = crate::home_assistant::state(d);
            if sent.states.get(&d.device_id) != Some(&state) {
                due.push((crate::home_assistant::state_topic(gw, &d.device_id), state));
            }
        }
        if flight.len() + due.len() > window {
            return Ok(false);
        }
        for (topic, payload) in due {
            client
                .try_publish(topic, QoS::AtLeastOnce, true, payload)
                .context("publishing Home Assistant discovery")?;
            flight.unnumbered.push_back((None, Instant::now()));
        }
        for d in devices {
            sent.states
                .insert(d.device_id.clone(), crate::home_assistant::state(&d));
            sent.announced.insert(d.device_id);
        }
        Ok(true)
    }

    /// Hand unsent outbox rows to rumqttc, up to the window.
    fn fill(
        &self,
        client: &AsyncClient,
        up: &str,
        window: usize,
        flight: &mut InFlight,
    ) -> Result<()> {
        while flight.len() < window {
            let room = window - flight.len();
            let rows = self.store.pending(flight.last_id, room)?;
            if rows.is_empty() {
                break;
            }
            for row in rows {
                client
                    .try_publish(up, QoS::AtLeastOnce, false, row.payload)
                    .context("handing a publish to the MQTT client")?;
                flight.last_id = row.id;
                flight.unnumbered.push_back((Some(row.id), Instant::now()));
                self.metrics.published.inc();
            }
        }
        Ok(())
    }

    async fn remove(&self, acked: &mut Vec<i64>) -> Result<()> {
        let ids = std::mem::take(acked);
        let n = ids.len() as u64;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.remove(&ids))
            .await
            .context("outbox removal task")??;
        self.metrics.acked.inc_by(n);
        Ok(())
    }

    /// Publish `offline` (retained) and disconnect cleanly.
    async fn goodbye(
        &self,
        client: &AsyncClient,
        eventloop: &mut EventLoop,
        status: &str,
        connected: bool,
    ) -> Result<()> {
        if connected {
            let _ = client.try_publish(status, QoS::AtLeastOnce, true, OFFLINE);
            let _ = client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Ok(ev) = eventloop.poll().await {
                    if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                        break;
                    }
                }
            })
            .await;
        }
        let _ = self.store.set_meta("broker", "stopped");
        Ok(())
    }
}
