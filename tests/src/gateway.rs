//! Gateway end-to-end helpers: the real `hailan-gateway` binary against
//! `hailan-sim` (fake BlueZ on a private D-Bus) and a real Mosquitto — the
//! set-up's shared broker or a private one that a test may stop and start.

use crate::{DevZk, is_root, mqtt_host_port, mqtt_ingest_host_port, mqtt_password, repo_root};
use anyhow::{Context, Result, bail, ensure};
use hailan_firmware_sim::harness::SimHarness;
use hailan_proto::envelope::{Body, Envelope};
use hailan_proto::header::ReadingHeader;
use hailan_proto::seal::DataKey;
use hailan_proto::zk::{DevKeys, GroupClaim, Policy, Verifier, VerifyingKey};
use hailan_proto::{DataType, ProvenGroup, Reading};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A workspace binary next to (or above) the test executable
/// (`target/<profile>/NAME`; `cargo nextest run --workspace` builds them).
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("current_exe")?;
    let mut dir = exe.parent();
    for _ in 0..2 {
        let Some(d) = dir else { break };
        let cand = d.join(name);
        if cand.is_file() {
            return Ok(cand);
        }
        dir = d.parent();
    }
    bail!(
        "{name} not found near {} (build the workspace: cargo build --workspace)",
        exe.display()
    )
}

/// The owner data key every gateway test uses (and the API test key ring).
pub const TEST_DATA_KEY: [u8; 32] = [0x42; 32];
/// The key id of [`TEST_DATA_KEY`]: the rigs' `keys.data_key_id`, and the
/// key's name in the API test key ring.
pub const TEST_DATA_KEY_ID: &str = "owner-key-test";

/// Where a gateway under test connects, and where ingest does.
#[derive(Clone, Debug)]
pub struct Broker {
    /// Host name or address of both listeners (`127.0.0.1` for a private broker).
    pub host: String,
    /// The gateway listener: gateway and Home Assistant accounts, the
    /// client id forced to the user name.
    pub port: u16,
    /// The service listener on the same host: the `hailan-ingest` account.
    pub ingest_port: u16,
}

impl Broker {
    /// The set-up's shared development broker.
    pub fn shared() -> Broker {
        let (host, port) = mqtt_host_port();
        let (_, ingest_port) = mqtt_ingest_host_port();
        Broker {
            host,
            port,
            ingest_port,
        }
    }
}

/// `base` with the tables and keys of `extra` laid over it (a table named in
/// both is merged key by key: `extra` may set a `[ble]` key the rig sets).
fn merged_toml(base: &str, extra: &str) -> Result<String> {
    fn lay(under: &mut toml::Table, over: toml::Table) {
        for (k, v) in over {
            match (under.get_mut(&k), v) {
                (Some(toml::Value::Table(u)), toml::Value::Table(o)) => lay(u, o),
                (_, v) => {
                    under.insert(k, v);
                }
            }
        }
    }
    let mut config: toml::Table = base.parse().context("the rig's own gateway config")?;
    let extra: toml::Table = extra
        .parse()
        .with_context(|| format!("extra config {extra:?}"))?;
    lay(&mut config, extra);
    toml::to_string(&config).context("writing the gateway config")
}

/// A gateway's state directory, config and keys, on one simulator bus.
pub struct GatewayRig {
    /// The rig's temporary directory: `gateway.toml`, `owner.key`,
    /// `mqtt.password`, the state directory `state/` and the daemon's
    /// `gateway.log`; deleted on drop.
    pub dir: tempfile::TempDir,
    /// `gateway.toml` in `dir`, given as `--config` to every command.
    pub config: PathBuf,
    /// The gateway's id, also its broker account (made by the set-up).
    pub gateway_id: String,
    /// The D-Bus address of the simulator's private bus: commands run with
    /// it as `DBUS_SYSTEM_BUS_ADDRESS`, so the BlueZ they talk to is the simulator.
    pub bus: String,
    /// The `hailan-gateway` binary of this build ([`workspace_binary`]).
    pub bin: PathBuf,
    /// The owner data key the rig's gateway seals with ([`TEST_DATA_KEY`]),
    /// to open its readings.
    pub data_key: DataKey,
}

impl GatewayRig {
    /// Write a config for `gateway_id` (a broker account made by the set-up)
    /// with dev zk keys from `zk`; the tables of `extra` are laid over it.
    pub fn new(
        gateway_id: &str,
        bus: &str,
        broker: &Broker,
        zk: &DevZk,
        extra: &str,
    ) -> Result<GatewayRig> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new().prefix("hailan-gw-").tempdir()?;
        let key_file = dir.path().join("owner.key");
        std::fs::write(&key_file, hex::encode(TEST_DATA_KEY))?;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))?;
        let pw_file = dir.path().join("mqtt.password");
        std::fs::write(&pw_file, mqtt_password(gateway_id)?)?;
        std::fs::set_permissions(&pw_file, std::fs::Permissions::from_mode(0o600))?;
        let config = dir.path().join("gateway.toml");
        let base = format!(
            r#"gateway_id = "{gateway_id}"
state_dir = "{state}"

[mqtt]
host = "{host}"
port = {port}
password_file = "{pw}"
keep_alive_s = 5

[ble]
scan_stall_s = 5
battery_interval_s = 2
reconnect_min_ms = 200
reconnect_max_ms = 2000
pair_timeout_s = 20
# Every link held, as before slots: tests of one behaviour need not wait
# their turn (tests/tests/slots.rs sets the real bounds).
max_connections = 32
idle_disconnect_s = 3600

[keys]
data_key_file = "{key}"
data_key_id = "{TEST_DATA_KEY_ID}"
zk_dir = "{zk}"
allow_dev_keys = true
"#,
            state = dir.path().join("state").display(),
            host = broker.host,
            port = broker.port,
            pw = pw_file.display(),
            key = key_file.display(),
            zk = zk.dir.path().display(),
        );
        std::fs::write(&config, merged_toml(&base, extra)?)?;
        Ok(GatewayRig {
            config,
            gateway_id: gateway_id.to_owned(),
            bus: bus.to_owned(),
            bin: workspace_binary("hailan-gateway")?,
            data_key: DataKey::new(TEST_DATA_KEY_ID, TEST_DATA_KEY),
            dir,
        })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--config")
            .arg(&self.config)
            .args(args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.bus)
            .env("RUST_LOG", "info,hailan_gateway=debug")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null());
        c
    }

    /// Run a CLI command to completion; its stdout, or an error with stderr.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = self
            .command(args)
            .output()
            .with_context(|| format!("running hailan-gateway {args:?}"))?;
        if !out.status.success() {
            bail!(
                "hailan-gateway {args:?} failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `pair ADDRESS --json` (a Just Works device).
    pub fn pair(&self, address: &str) -> Result<serde_json::Value> {
        self.pair_with(address, &[])
    }

    /// `pair ADDRESS FLAGS… --json`: `flags` answer the device's pairing
    /// (`SimDeviceLine::pair_flags`: `--passkey N`, `--confirm`, `--pin P`).
    pub fn pair_with(&self, address: &str, flags: &[String]) -> Result<serde_json::Value> {
        let mut args = vec!["pair", address, "--json"];
        args.extend(flags.iter().map(String::as_str));
        let out = self.cli(&args)?;
        serde_json::from_str(out.trim()).with_context(|| format!("pair output: {out}"))
    }

    /// `status --json` (exit code 3 = daemon not running is not an error here).
    pub fn status(&self) -> Result<serde_json::Value> {
        let out = self.command(&["status", "--json"]).output()?;
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("status output: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// Start the daemon, logging to `state/../gateway.log`; `env` is added.
    pub fn start(&self, env: &[(&str, &str)]) -> Result<GatewayProcess> {
        let log = self.dir.path().join("gateway.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let err = out.try_clone()?;
        let mut c = self.command(&["run"]);
        c.envs(env.iter().copied()).stdout(out).stderr(err);
        let child = c.spawn().context("starting hailan-gateway run")?;
        Ok(GatewayProcess { child, log })
    }
}

/// A running `hailan-gateway run`. Killed on drop; its log tail is printed
/// (shown when the test fails).
pub struct GatewayProcess {
    /// The `hailan-gateway run` child process.
    pub child: Child,
    /// Its stdout and stderr, `gateway.log` in the rig's directory (appended
    /// to across starts); the last 60 lines are printed on drop.
    pub log: PathBuf,
}

impl GatewayProcess {
    /// Everything the daemon has logged so far (empty if the log is unreadable).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the log contains `needle`.
    pub fn wait_log(&mut self, needle: &str, limit: Duration) -> Result<()> {
        let start = Instant::now();
        while !self.log_text().contains(needle) {
            if let Some(status) = self.child.try_wait()? {
                bail!("hailan-gateway exited ({status}):\n{}", self.log_text());
            }
            if start.elapsed() > limit {
                bail!(
                    "no {needle:?} in the gateway log within {limit:?}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// kill -9 the daemon and reap it: a crash, not a shutdown (no window is
    /// flushed, no `offline` sent; the broker publishes the last will).
    pub fn kill9(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM and wait for the exit.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        Ok(self.child.wait()?)
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = self.log_text();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        eprintln!("--- last lines of {} ---", self.log.display());
        for l in tail.iter().rev() {
            eprintln!("{l}");
        }
    }
}

/// Wall clock, ms since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One message the collector received.
#[derive(Clone, Debug)]
pub struct Received {
    /// The topic it came on (`hailan/v1/{gateway_id}/up`, `…/status` …).
    pub topic: String,
    /// The payload as received (an encoded envelope on `up`).
    pub payload: Vec<u8>,
    /// The retain flag as delivered: set for a retained message the broker
    /// sent on subscribing.
    pub retain: bool,
    /// Wall clock at receipt, ms since the Unix epoch.
    pub at_ms: i64,
}

impl Received {
    /// The envelope, if this is an uplink message.
    pub fn envelope(&self) -> Option<Envelope> {
        if self.topic.ends_with("/up") {
            hailan_proto::envelope::decode(&self.payload).ok()
        } else {
            None
        }
    }
}

/// A QoS 1 subscriber to one gateway's `up` and `status` topics, with a
/// persistent session, so nothing published while it reconnects is lost.
pub struct Collector {
    /// Every message received so far, in arrival order (appended to by the
    /// collector's task).
    pub received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    /// As the ingest account, on the service listener (its own client id).
    pub async fn start(broker: &Broker, gateway_id: &str) -> Result<Collector> {
        let topics = vec![
            hailan_proto::topic::up(gateway_id),
            hailan_proto::topic::status(gateway_id),
        ];
        Self::connect(
            broker.ingest_port,
            broker,
            "hailan-ingest",
            gateway_id,
            topics,
        )
        .await
    }

    /// A collector logged in as `user` on the gateway listener (a Home
    /// Assistant or gateway account: the broker makes `user` the client id),
    /// subscribed to `topics`.
    pub async fn start_as(
        broker: &Broker,
        user: &str,
        gateway_id: &str,
        topics: Vec<String>,
    ) -> Result<Collector> {
        Self::connect(broker.port, broker, user, gateway_id, topics).await
    }

    async fn connect(
        port: u16,
        broker: &Broker,
        user: &str,
        gateway_id: &str,
        topics: Vec<String>,
    ) -> Result<Collector> {
        let mut opts = rumqttc::MqttOptions::new(
            format!("collector-{gateway_id}-{}", uuid::Uuid::new_v4().simple()),
            broker.host.clone(),
            port,
        );
        opts.set_credentials(user, mqtt_password(user)?);
        opts.set_clean_session(false);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 1000);
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut subscribed = false;
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) if !subscribed => {
                        subscribed = true;
                        for t in &topics {
                            let _ = client.subscribe(t, rumqttc::QoS::AtLeastOnce).await;
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        if let Ok(mut v) = sink.lock() {
                            v.push(Received {
                                topic: p.topic.clone(),
                                payload: p.payload.to_vec(),
                                retain: p.retain,
                                at_ms: now_ms(),
                            });
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .with_context(|| {
                format!("the collector ({user} on port {port}) did not subscribe within 10 s")
            })??;
        Ok(Collector { received, task })
    }

    /// A copy of every message received so far, in arrival order.
    pub fn snapshot(&self) -> Vec<Received> {
        self.received.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Decoded uplink envelopes so far, in arrival order.
    pub fn envelopes(&self) -> Vec<Envelope> {
        self.snapshot()
            .iter()
            .filter_map(Received::envelope)
            .collect()
    }

    /// Wait until `done(envelopes)` holds.
    pub async fn wait_for(
        &self,
        limit: Duration,
        what: &str,
        done: impl Fn(&[Envelope]) -> bool,
    ) -> Result<Vec<Envelope>> {
        let start = Instant::now();
        loop {
            let e = self.envelopes();
            if done(&e) {
                return Ok(e);
            }
            if start.elapsed() > limit {
                bail!("timed out after {limit:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Readings of one device in an envelope list, in order: (its group, the reading).
pub fn readings_of<'a>(
    envelopes: &'a [Envelope],
    device_id: &str,
) -> Vec<(&'a hailan_proto::ProvenGroup, &'a hailan_proto::Reading)> {
    envelopes
        .iter()
        .filter_map(|e| match &e.body {
            Body::Readings(b) if b.device_id == device_id => Some(b),
            _ => None,
        })
        .flat_map(|b| b.groups.iter())
        .flat_map(|g| g.readings.iter().map(move |r| (g, r)))
        .collect()
}

/// A private Mosquitto (same accounts and ACLs as the set-up's) that a test
/// may stop and start; persistence on, so sessions and queues survive.
pub struct PrivateMosquitto {
    dir: tempfile::TempDir,
    conf: PathBuf,
    child: Option<Child>,
    /// The gateway listener (gateway and Home Assistant accounts).
    pub port: u16,
    /// The service listener (the `hailan-ingest` account).
    pub ingest_port: u16,
}

/// Run `openssl ARGS` in `dir`.
fn openssl(dir: &std::path::Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()?;
    if !out.status.success() {
        bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A self-signed test CA in `dir`: `{stem}.pem` and `{stem}.key`; returns the
/// certificate's path.
pub fn test_ca(dir: &std::path::Path, common_name: &str, stem: &str) -> Result<PathBuf> {
    let (key, pem) = (format!("{stem}.key"), format!("{stem}.pem"));
    let subject = format!("/CN={common_name}");
    openssl(
        dir,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", &subject,
            "-keyout", &key, "-out", &pem,
        ],
    )?;
    Ok(dir.join(pem))
}

/// A test CA (`ca.pem`) and a server certificate for 127.0.0.1 (only: not
/// `localhost`) signed by it (`server.pem`, `server.key`) in `dir`.
pub fn server_certificate(dir: &std::path::Path) -> Result<()> {
    let run = |args: &[&str]| openssl(dir, args);
    test_ca(dir, "hailan test CA", "ca")?;
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ])?;
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n")?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
    ])
}

/// Two distinct TCP ports on 127.0.0.1 that were free a moment ago.
fn two_free_ports() -> Result<(u16, u16)> {
    let a = crate::free_port()?;
    loop {
        let b = crate::free_port()?;
        if b != a {
            return Ok((a, b));
        }
    }
}

/// A fresh broker directory with the set-up's password files (`passwd`:
/// gateways and Home Assistant; `services.passwd`: ingest) and the shipped
/// ACLs (`hailan.acl`, `hailan-services.acl`).
fn broker_dir() -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new().prefix("hailan-mqtt-").tempdir()?;
    let src = repo_root().join(".hailan/mosquitto");
    for file in ["passwd", "services.passwd"] {
        std::fs::copy(src.join(file), dir.path().join(file)).with_context(|| {
            format!("copying the set-up's broker passwords {file} (run `cargo xtask services`)")
        })?;
    }
    for file in ["hailan.acl", "hailan-services.acl"] {
        std::fs::copy(
            repo_root().join("deploy/mosquitto").join(file),
            dir.path().join(file),
        )
        .with_context(|| format!("copying deploy/mosquitto/{file}"))?;
    }
    std::fs::create_dir_all(dir.path().join("data"))?;
    Ok(dir)
}

impl PrivateMosquitto {
    /// Start a broker from the development configuration
    /// (`deploy/mosquitto/dev.conf.in`) on two free ports, with the set-up's
    /// accounts and the shipped ACLs; returns once both listeners accept
    /// connections.
    pub fn start() -> Result<PrivateMosquitto> {
        Self::start_with(|_| Ok(String::new()))
    }

    /// Like [`start`](Self::start), plus a third listener on `tls_port`
    /// with TLS, its certificate signed by a test CA (`ca.pem` in
    /// [`dir`](Self::dir)), and the gateway listener's accounts, ACL and
    /// forced client ids; the first two listeners stay plain.
    pub fn start_with_tls() -> Result<(PrivateMosquitto, u16)> {
        let tls_port = crate::free_port()?;
        let m = Self::start_with(|dir| {
            server_certificate(dir)?;
            Ok(format!(
                "\nlistener {tls_port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\nuse_username_as_clientid true\nallow_anonymous false\npassword_file {d}/passwd\nacl_file {d}/hailan.acl\n",
                d = dir.display()
            ))
        })?;
        Ok((m, tls_port))
    }

    /// The production configuration itself, `deploy/mosquitto/hailan.conf`,
    /// with only its paths and addresses made the test's: both listeners on
    /// 127.0.0.1 (`port`: gateway listener, `ingest_port`: service
    /// listener), TLS with a server certificate of a test CA (`ca.pem` in
    /// [`dir`](Self::dir)), the set-up's accounts. Fails if the file no
    /// longer has a line this rewrites, or still names a production path.
    pub fn start_shipped() -> Result<PrivateMosquitto> {
        let (port, ingest_port) = two_free_ports()?;
        let dir = broker_dir()?;
        server_certificate(dir.path())?;
        let d = dir.path().display().to_string();
        let shipped = std::fs::read_to_string(repo_root().join("deploy/mosquitto/hailan.conf"))
            .context("reading deploy/mosquitto/hailan.conf")?;
        let rewrites: Vec<(String, String)> = [
            ("listener 8883", format!("listener {port} 127.0.0.1")),
            (
                "listener 8884 10.0.0.10",
                format!("listener {ingest_port} 127.0.0.1"),
            ),
            (
                "persistence_location /var/lib/mosquitto/",
                format!("persistence_location {d}/data/"),
            ),
            (
                "certfile /etc/mosquitto/certs/server.crt",
                format!("certfile {d}/server.pem"),
            ),
            (
                "keyfile /etc/mosquitto/certs/server.key",
                format!("keyfile {d}/server.key"),
            ),
            (
                "cafile /etc/mosquitto/ca_certificates/ca.crt",
                format!("cafile {d}/ca.pem"),
            ),
            (
                "password_file /etc/mosquitto/hailan.passwd",
                format!("password_file {d}/passwd"),
            ),
            (
                "password_file /etc/mosquitto/hailan-services.passwd",
                format!("password_file {d}/services.passwd"),
            ),
            (
                "acl_file /etc/mosquitto/hailan.acl",
                format!("acl_file {d}/hailan.acl"),
            ),
            (
                "acl_file /etc/mosquitto/hailan-services.acl",
                format!("acl_file {d}/hailan-services.acl"),
            ),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b))
        .collect();
        let mut used = vec![false; rewrites.len()];
        let mut conf = String::new();
        for line in shipped.lines() {
            let mut line = line.to_owned();
            if let Some(i) = rewrites.iter().position(|(from, _)| line.trim() == from) {
                used[i] = true;
                line = rewrites[i].1.clone();
            }
            ensure!(
                line.trim_start().starts_with('#')
                    || !(line.contains("/etc/") || line.contains("/var/")),
                "deploy/mosquitto/hailan.conf has a line the test does not rewrite: {line}"
            );
            conf.push_str(&line);
            conf.push('\n');
        }
        for ((from, _), used) in rewrites.iter().zip(used) {
            ensure!(used, "deploy/mosquitto/hailan.conf has no line `{from}`");
        }
        // Logging only (global options, valid after the listeners).
        conf.push_str(&format!(
            "\nlog_dest file {d}/mosquitto.log\nlog_type all\nconnection_messages true\n"
        ));
        Self::launch(dir, conf, port, ingest_port)
    }

    /// The broker's directory (configuration, persistence, log, certificates).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    fn start_with(
        extra: impl FnOnce(&std::path::Path) -> Result<String>,
    ) -> Result<PrivateMosquitto> {
        let (port, ingest_port) = two_free_ports()?;
        let dir = broker_dir()?;
        let template = std::fs::read_to_string(repo_root().join("deploy/mosquitto/dev.conf.in"))
            .context("reading deploy/mosquitto/dev.conf.in")?;
        let conf_text = template
            .replace("@STATE@", &dir.path().display().to_string())
            .replace("@PORT@", &port.to_string())
            .replace("@SERVICE_PORT@", &ingest_port.to_string())
            + &extra(dir.path())?;
        Self::launch(dir, conf_text, port, ingest_port)
    }

    /// Write `conf_text` as the configuration in `dir` and start the broker.
    fn launch(
        dir: tempfile::TempDir,
        conf_text: String,
        port: u16,
        ingest_port: u16,
    ) -> Result<PrivateMosquitto> {
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(&conf, conf_text)?;
        if is_root() {
            // Mosquitto started as root drops to the `mosquitto` user.
            Command::new("chown")
                .args(["-R", "mosquitto:mosquitto"])
                .arg(dir.path())
                .status()?;
        }
        let mut m = PrivateMosquitto {
            dir,
            conf,
            child: None,
            port,
            ingest_port,
        };
        m.start_again()?;
        Ok(m)
    }

    /// Where a gateway and ingest reach it: 127.0.0.1 and its two listeners.
    pub fn broker(&self) -> Broker {
        Broker {
            host: "127.0.0.1".into(),
            port: self.port,
            ingest_port: self.ingest_port,
        }
    }

    /// Start it (after [`stop`](Self::stop)) and wait until both listeners
    /// accept connections.
    pub fn start_again(&mut self) -> Result<()> {
        let stderr_path = self.dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path)
            .with_context(|| format!("creating {}", stderr_path.display()))?;
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("starting mosquitto")?;
        self.child = Some(child);
        let start = Instant::now();
        for port in [self.port, self.ingest_port] {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Some(c) = self.child.as_mut()
                    && let Some(status) = c.try_wait()?
                {
                    bail!(
                        "mosquitto exited at start ({status}): {}{}",
                        std::fs::read_to_string(&stderr_path).unwrap_or_default(),
                        std::fs::read_to_string(self.log_path()).unwrap_or_default()
                    );
                }
                if start.elapsed() > Duration::from_secs(10) {
                    bail!("mosquitto did not listen on {port} within 10 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// SIGTERM (it saves its persistence file) and wait until the port is free.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()?;
            c.wait()?;
        }
        Ok(())
    }

    /// The broker's log file, `mosquitto.log` in its directory.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }
}

impl Drop for PrivateMosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ------------------------------------------------------------ ground truth

/// One line of the simulator's ground-truth file.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Truth {
    /// The simulator's name of the device (`hr0`, `bp0` …).
    pub device: String,
    /// The device's Bluetooth address (`F0:4A:1A:01:00:00`).
    pub address: String,
    /// What happened to the value: `notify`, `indicate`, or `stored` (a
    /// glucose record kept on the meter, sent later through RACP).
    pub event: String,
    /// The characteristic, 16-bit UUID in lower-case hex (`2a37`).
    pub characteristic: String,
    /// The value's fixed-point slots (DESIGN §3): what the gateway's reading
    /// should open to.
    pub slots: Vec<u64>,
    /// The bytes were deliberately malformed (fault injection).
    pub malformed: bool,
    /// The typed value as the simulator took it (its `time`, where it has
    /// one, is the true time).
    #[serde(default)]
    pub measurement: serde_json::Value,
    /// How far ahead of the true time the device's clock was when it took
    /// the value (its stamp on the air is the true time plus this).
    #[serde(default)]
    pub device_clock_offset_s: i64,
}

/// The records of the simulator's ground-truth file (JSON lines; blank lines skipped).
pub fn read_truth(path: &std::path::Path) -> Result<Vec<Truth>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("truth line {l}")))
        .collect()
}

/// The data type a measurement characteristic makes readings of.
pub fn data_type_of(characteristic: &str) -> Option<DataType> {
    Some(match characteristic {
        "2a37" => DataType::HeartRate,
        "2a35" => DataType::BloodPressure,
        "2a5e" | "2a5f" => DataType::Spo2,
        "2a1c" => DataType::BodyTemperature,
        "2a18" => DataType::Glucose,
        "2a9d" => DataType::BodyWeight,
        "2a9c" => DataType::BodyComposition,
        _ => return None,
    })
}

/// Wire resolution of converted units (kPa cuffs, °F thermometers, lb scales).
pub fn tolerance(characteristic: &str) -> u64 {
    match characteristic {
        "2a35" => 4,
        "2a1c" => 1,
        // lb scales: masses within 5 g (body fat and muscle % are exact)
        "2a9d" | "2a9c" => 5,
        _ => 0,
    }
}

impl Truth {
    /// When the value was truly taken (ms since the epoch), if it carries a
    /// time stamp.
    pub fn true_time_ms(&self) -> Option<i64> {
        let t = &self.measurement["time"];
        let n = |k: &str| t[k].as_u64().and_then(|v| u32::try_from(v).ok());
        let date = chrono::NaiveDate::from_ymd_opt(
            i32::try_from(n("year")?).ok()?,
            n("month")?,
            n("day")?,
        )?;
        Some(
            date.and_hms_opt(n("hour")?, n("minute")?, n("second")?)?
                .and_utc()
                .timestamp_millis(),
        )
    }

    /// Whether this value, as sent, makes a reading.
    pub fn makes_reading(&self) -> bool {
        matches!(self.event.as_str(), "notify" | "indicate")
            && !self.malformed
            && data_type_of(&self.characteristic)
                .is_some_and(|t| t.slot_count() == self.slots.len())
    }

    /// Whether `slots` (opened from a reading) are this value's slots, each
    /// within the [`tolerance`] of the characteristic's converted units.
    pub fn matches(&self, slots: &[u32]) -> bool {
        let tol = tolerance(&self.characteristic);
        slots.len() == self.slots.len()
            && slots
                .iter()
                .zip(&self.slots)
                .all(|(a, b)| u64::from(*a).abs_diff(*b) <= tol)
    }
}

/// A verifier of the development keys in `zk` (`reading.vk`, `window.vk`),
/// with the bounds policy of the data-type spec and development keys allowed.
pub fn verifier(zk: &DevZk) -> Result<Verifier> {
    let keys = ["reading.vk", "window.vk"]
        .iter()
        .map(|f| {
            let bytes = std::fs::read(zk.dir.path().join(f))?;
            Ok(VerifyingKey::from_bytes(&bytes)?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Verifier::new(keys, Policy::from_spec(), DevKeys::Allow)?)
}

/// Device commitments from the registrations.
pub fn commitments(envelopes: &[Envelope]) -> HashMap<String, [u8; 32]> {
    envelopes
        .iter()
        .filter_map(|e| match &e.body {
            Body::Registration(r) => Some((r.device_id.clone(), r.device_commitment)),
            _ => None,
        })
        .collect()
}

/// Every group's proof verifies against the device's registered commitment.
pub fn verify_all(zk: &DevZk, gateway_id: &str, envelopes: &[Envelope]) -> Result<usize> {
    let v = verifier(zk)?;
    let pinned = commitments(envelopes);
    let mut claims = Vec::new();
    for e in envelopes {
        if let Body::Readings(b) = &e.body {
            let d = pinned
                .get(&b.device_id)
                .with_context(|| format!("readings of {} before its registration", b.device_id))?;
            for g in &b.groups {
                claims.push(GroupClaim {
                    gateway_id,
                    device_id: &b.device_id,
                    device_commitment: d,
                    group: g,
                });
            }
        }
    }
    let verdicts = v.verify_batch(&claims, &mut rand::rngs::OsRng);
    for (c, r) in claims.iter().zip(&verdicts) {
        if let Err(e) = r {
            bail!(
                "group of {} (seq {:?}) does not verify: {e}",
                c.device_id,
                c.group.readings.first().map(|r| r.seq)
            );
        }
    }
    Ok(claims.len())
}

/// Open a reading with the owner key: its slots.
pub fn open(rig: &GatewayRig, device_id: &str, r: &Reading) -> Result<Vec<u32>> {
    Ok(open_sealed(rig, device_id, r)?.slots)
}

/// Open a reading with the owner key: the whole sealed value (slots and
/// the extras the gateway sealed beside them).
pub fn open_sealed(
    rig: &GatewayRig,
    device_id: &str,
    r: &Reading,
) -> Result<hailan_proto::seal::SealedValue> {
    let header = ReadingHeader {
        gateway_id: &rig.gateway_id,
        device_id,
        data_type: &r.data_type,
        seq: r.seq,
        recorded_at_ms: r.recorded_at_ms,
    };
    hailan_proto::seal::open(&rig.data_key, &header, &r.sealed)
        .with_context(|| format!("opening {device_id} seq {}", r.seq))
}

/// Per device: seq → (group, reading); fails on a gap or a changed duplicate.
pub fn by_seq<'a>(
    envelopes: &'a [Envelope],
    device_id: &str,
) -> Result<BTreeMap<u64, (&'a ProvenGroup, &'a Reading)>> {
    let mut out: BTreeMap<u64, (&ProvenGroup, &Reading)> = BTreeMap::new();
    for (g, r) in readings_of(envelopes, device_id) {
        if let Some((_, prev)) = out.get(&r.seq) {
            ensure!(
                prev.sealed == r.sealed,
                "{device_id} seq {} sent twice with different contents",
                r.seq
            );
        }
        out.insert(r.seq, (g, r));
    }
    if let (Some(first), Some(last)) = (out.keys().next(), out.keys().last()) {
        ensure!(*first == 1, "{device_id}: first seq is {first}, not 1");
        ensure!(
            out.len() as u64 == last - first + 1,
            "{device_id}: seqs are not contiguous: {:?}",
            out.keys().collect::<Vec<_>>()
        );
    }
    Ok(out)
}

/// Each device's readings, opened, in seq order, must be an in-order
/// subsequence of its ground truth; every truth value in `must` (indices
/// into the truth file) must be among them.
pub fn check_against_truth(
    rig: &GatewayRig,
    envelopes: &[Envelope],
    devices: &HashMap<String, String>,
    truth: &[Truth],
    must: std::ops::Range<usize>,
) -> Result<usize> {
    let mut checked = 0;
    for (address, device_id) in devices {
        let readings = by_seq(envelopes, device_id)?;
        let mine: Vec<(usize, &Truth)> = truth
            .iter()
            .enumerate()
            .filter(|(_, t)| t.address.eq_ignore_ascii_case(address) && t.makes_reading())
            .collect();
        let mut j = 0;
        let mut matched = Vec::new();
        for (seq, (_, r)) in &readings {
            let slots = open(rig, device_id, r)?;
            while j < mine.len() && !mine[j].1.matches(&slots) {
                j += 1;
            }
            ensure!(
                j < mine.len(),
                "{device_id} seq {seq}: {slots:?} is not in the ground truth (in order)"
            );
            matched.push(mine[j].0);
            j += 1;
            checked += 1;
        }
        let missing: Vec<String> = mine
            .iter()
            .filter(|(i, _)| must.contains(i) && !matched.contains(i))
            .map(|(i, t)| format!("#{i} {} {} {:?}", t.device, t.characteristic, t.slots))
            .collect();
        ensure!(
            missing.is_empty(),
            "{device_id}: emitted but never published: {missing:?}"
        );
    }
    Ok(checked)
}

/// Lines in the file at `path`, 0 if it cannot be read (e.g. ground-truth
/// records written so far).
pub fn line_count(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Every device connected (a connected=true device state per device).
pub fn all_connected(envelopes: &[Envelope], devices: &HashMap<String, String>) -> bool {
    devices.values().all(|id| {
        envelopes
            .iter()
            .any(|e| matches!(&e.body, Body::DeviceState(s) if &s.device_id == id && s.connected))
    })
}

/// Start `rig`'s gateway with a collector already listening on its topics,
/// and wait (up to `wait`) until every paired device reported connected.
pub async fn start_all_connected(
    rig: &GatewayRig,
    broker: &Broker,
    devices: &HashMap<String, String>,
    wait: Duration,
) -> Result<(Collector, GatewayProcess)> {
    let collector = Collector::start(broker, &rig.gateway_id).await?;
    let gw = rig.start(&[])?;
    collector
        .wait_for(wait, "every device connected", |e| {
            all_connected(e, devices)
        })
        .await?;
    Ok((collector, gw))
}

/// Start the simulator and pair every device through the CLI.
pub fn sim_and_pair(
    devices: &str,
    truth: &std::path::Path,
    gateway_id: &str,
    broker: &Broker,
    zk: &DevZk,
    extra: &str,
    skip: &[&str],
) -> Result<(SimHarness, GatewayRig, HashMap<String, String>)> {
    let truth_arg = truth.display().to_string();
    let sim = SimHarness::start(&[
        "--devices",
        devices,
        "--seed",
        "7",
        "--speed",
        "4",
        "--ground-truth",
        &truth_arg,
    ])?;
    pair_all(sim, gateway_id, broker, zk, extra, skip)
}

/// Pair every device of a running simulator (but `skip`) through the CLI
/// of a new gateway rig (`extra`: [`GatewayRig::new`]); the device ids by
/// address.
pub fn pair_all(
    sim: SimHarness,
    gateway_id: &str,
    broker: &Broker,
    zk: &DevZk,
    extra: &str,
    skip: &[&str],
) -> Result<(SimHarness, GatewayRig, HashMap<String, String>)> {
    let rig = GatewayRig::new(gateway_id, sim.bus_address(), broker, zk, extra)?;
    let mut paired = HashMap::new();
    for d in sim
        .sim
        .devices
        .iter()
        .filter(|d| !skip.contains(&d.name.as_str()))
    {
        let out = rig.pair_with(&d.address, &d.pair_flags())?;
        let id = out["device_id"]
            .as_str()
            .context("pair --json gives device_id")?
            .to_owned();
        paired.insert(d.address.clone(), id);
    }
    Ok((sim, rig, paired))
}

/// Device states of `id` with `connected == want`.
pub fn states(envelopes: &[Envelope], id: &str, want: bool) -> usize {
    envelopes
        .iter()
        .filter(
            |e| matches!(&e.body, Body::DeviceState(s) if s.device_id == id && s.connected == want),
        )
        .count()
}

/// The connection state `id` reported last.
pub fn last_connected(envelopes: &[Envelope], id: &str) -> Option<bool> {
    envelopes.iter().rev().find_map(|e| match &e.body {
        Body::DeviceState(s) if s.device_id == id => Some(s.connected),
        _ => None,
    })
}

/// Everything the devices sent until now (the truth file's lines so far)
/// reaches the broker within `wait`, proven and exact; then, after a clean
/// stop of `gw`, still exactly once. Returns the envelopes after the stop.
pub async fn every_value_sent_arrives(
    rig: &GatewayRig,
    collector: &Collector,
    gw: &mut GatewayProcess,
    devices: &HashMap<String, String>,
    truth_path: &std::path::Path,
    wait: Duration,
) -> Result<Vec<Envelope>> {
    let until = line_count(truth_path);
    let arrived = collector
        .wait_for(wait, "every value sent", |e| {
            let truth = read_truth(truth_path).unwrap_or_default();
            check_against_truth(rig, e, devices, &truth, 0..until).is_ok()
        })
        .await;
    if let Err(e) = arrived {
        let truth = read_truth(truth_path)?;
        let why = check_against_truth(rig, &collector.envelopes(), devices, &truth, 0..until);
        return Err(e.context(format!("{why:?}")));
    }
    let exit = gw.terminate()?;
    anyhow::ensure!(exit.success(), "gateway exit {exit}");
    let (envelopes, _) = after_stop(rig, collector).await?;
    let truth = read_truth(truth_path)?;
    check_against_truth(rig, &envelopes, devices, &truth, 0..until)?;
    Ok(envelopes)
}

/// After a clean stop: waits until every seq the gateway assigned (its
/// `next_seq` per device) reached the collector; returns the envelopes and
/// the next seqs.
pub async fn after_stop(
    rig: &GatewayRig,
    collector: &Collector,
) -> Result<(Vec<Envelope>, HashMap<String, u64>)> {
    let after: serde_json::Value = serde_json::from_str(&rig.cli(&["devices", "--json"])?)?;
    let next: HashMap<String, u64> = after
        .as_array()
        .context("devices")?
        .iter()
        .filter_map(|d| Some((d["device_id"].as_str()?.to_owned(), d["next_seq"].as_u64()?)))
        .collect();
    let envelopes = collector
        .wait_for(Duration::from_secs(30), "every queued reading", |e| {
            next.iter().all(|(id, n)| {
                readings_of(e, id)
                    .iter()
                    .map(|(_, r)| r.seq)
                    .max()
                    .unwrap_or(0)
                    + 1
                    >= *n
            })
        })
        .await?;
    Ok((envelopes, next))
}

/// Paired device ids (of `sim_and_pair`'s address → id map) of one simulator
/// kind (`hr`, `bp`, `spo2`, `temp`, `glucose`, `scale`, `bodycomp`), in address order:
/// the simulator's addresses are `F0:4A:1A:<kind code>:<index>`.
pub fn ids_of_kind(devices: &HashMap<String, String>, kind: &str) -> Vec<String> {
    let code = match kind {
        "hr" => "01",
        "bp" => "02",
        "spo2" => "03",
        "temp" => "04",
        "glucose" => "05",
        "scale" => "06",
        "bodycomp" => "07",
        _ => "",
    };
    let mut found: Vec<(&String, &String)> = devices
        .iter()
        .filter(|(a, _)| a.split(':').nth(3) == Some(code))
        .collect();
    found.sort();
    found.into_iter().map(|(_, id)| id.clone()).collect()
}

/// The first paired device of one simulator kind (`hr0`, `glucose0` …).
pub fn id_of_kind(devices: &HashMap<String, String>, kind: &str) -> Result<String> {
    ids_of_kind(devices, kind)
        .into_iter()
        .next()
        .with_context(|| format!("no {kind} device paired"))
}
