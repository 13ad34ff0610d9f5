//! hailan-tests: helpers shared by the database and end-to-end tests.
//!
//! Tests run against the real PostgreSQL and Mosquitto that `cargo xtask
//! services` starts; `cargo xtask test` passes their URLs in the environment
//! (and writes them to `.hailan/env`, which is read when the variables are
//! not set, so `cargo nextest run` works on its own after set-up).

pub mod api;
pub mod cpu;
pub mod gateway;
pub mod ha;
pub mod ops;

use anyhow::{Context, Result};
use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};
use std::path::PathBuf;

fn log_note(msg: &str) {
    eprintln!("hailan-tests: {msg}");
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// A setting from the environment, else from `.hailan/env`.
pub fn setting(name: &str) -> Option<String> {
    if let Ok(v) = std::env::var(name) {
        return Some(v);
    }
    let text = std::fs::read_to_string(repo_root().join(".hailan/env")).ok()?;
    text.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// The PostgreSQL URL of the set-up's database.
pub fn database_url() -> Result<String> {
    setting("DATABASE_URL")
        .context("DATABASE_URL is not set and .hailan/env is missing: run `cargo xtask services`")
}

/// Something ingest can be pointed at.
pub trait HasUrl {
    fn url(&self) -> &str;
}

impl HasUrl for TestDb {
    fn url(&self) -> &str {
        &self.url
    }
}

impl HasUrl for PrivatePostgres {
    fn url(&self) -> &str {
        &self.url
    }
}

/// A fresh, migrated database for one test, dropped by [`TestDb::drop`].
pub struct TestDb {
    pub pool: PgPool,
    pub name: String,
    pub url: String,
    admin_url: String,
}

fn with_database(url: &str, db: &str) -> String {
    // Keep the query (`?sslmode=…`): only the database name changes.
    let (url, query) = match url.split_once('?') {
        Some((u, q)) => (u, format!("?{q}")),
        None => (url, String::new()),
    };
    match url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{db}{query}"),
        None => format!("{url}{query}"),
    }
}

impl TestDb {
    /// Create `hailan_test_<random>` and apply the migrations.
    pub async fn create() -> Result<Self> {
        let admin_url = database_url()?;
        let name = format!("hailan_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .context("connecting to the set-up's database (run `cargo xtask services`)")?;
        admin
            .execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await?;
        admin.close().await?;
        let url = with_database(&admin_url, &name);
        let pool = hailan_db::connect(&url, 4).await?;
        // Roles are cluster-wide: migrations of parallel test databases would
        // race on them, so test processes take turns (nextest runs each test
        // in its own process, hence a file lock rather than a mutex).
        let lock = std::fs::File::create(std::env::temp_dir().join("hailan-test-migrate.lock"))?;
        lock.lock()?;
        let migrated = hailan_db::migrate(&pool).await;
        lock.unlock()?;
        migrated?;
        Ok(TestDb {
            pool,
            name,
            url,
            admin_url,
        })
    }

    /// Close the pool and drop the database.
    ///
    /// A consumer still running may be opening a connection at that moment;
    /// PostgreSQL refuses to terminate a backend that has not authenticated
    /// yet ("must be a member of the role whose process is being
    /// terminated"), so the drop is retried a few times.
    pub async fn drop(self) -> Result<()> {
        self.pool.close().await;
        let mut admin = PgConnection::connect(&self.admin_url).await?;
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let mut attempt = 0;
        loop {
            match admin.execute(AssertSqlSafe(sql.clone())).await {
                Ok(_) => return Ok(()),
                Err(e) if attempt < 50 => {
                    attempt += 1;
                    log_note(&format!("retrying {sql}: {e}"));
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

// ------------------------------------------------------------------ MQTT

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

// ------------------------------------------------------------------ ZK and devices

use hailan_proto::DataType;
use hailan_proto::envelope::{
    Body, DeviceState, Envelope, ProvenGroup, ReadingBatch, Registration,
};
use hailan_proto::group::Taken;
use hailan_proto::seal::DataKey;
use hailan_proto::zk::{DeviceSecret, ProvingKey, device_commitment};
use rand::SeedableRng;

/// Development zk keys in a temporary directory (what `zk.keys_dir` names).
pub struct DevZk {
    pub dir: tempfile::TempDir,
    pub reading: ProvingKey,
    pub window: ProvingKey,
}

impl DevZk {
    pub fn new() -> Result<DevZk> {
        let dir = tempfile::tempdir()?;
        hailan_ingest::zk_cli::setup(dir.path(), Some(20261123), true)?;
        let reading = ProvingKey::from_bytes(&std::fs::read(dir.path().join("reading.pk"))?)?;
        let window = ProvingKey::from_bytes(&std::fs::read(dir.path().join("window.pk"))?)?;
        Ok(DevZk {
            dir,
            reading,
            window,
        })
    }
}

/// A simulated paired device as a gateway holds it: secret, owner's data key, seq.
pub struct TestDevice {
    pub gateway_id: String,
    pub device_id: String,
    pub data_type: DataType,
    pub secret: DeviceSecret,
    pub key: DataKey,
    pub next_seq: u64,
    pub rng: rand_chacha::ChaCha20Rng,
}

/// Milliseconds of a fixed, recent instant the test readings count from.
pub const T0_MS: i64 = 1_763_900_000_000;

impl TestDevice {
    pub fn new(gateway_id: &str, device_id: &str, data_type: DataType, seed: u64) -> TestDevice {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        let secret = DeviceSecret::generate(&mut rng);
        TestDevice {
            gateway_id: gateway_id.into(),
            device_id: device_id.into(),
            data_type,
            secret,
            key: DataKey::new("owner-key-1", [7; 32]),
            next_seq: 1,
            rng,
        }
    }

    fn envelope(&self, body: Body) -> Envelope {
        Envelope {
            v: 1,
            gateway_id: self.gateway_id.clone(),
            sent_at_ms: T0_MS,
            body,
        }
    }

    pub fn registration(&self) -> Envelope {
        self.envelope(Body::Registration(Box::new(Registration {
            device_id: self.device_id.clone(),
            device_type: self.data_type.as_str().into(),
            data_types: vec![self.data_type.as_str().into()],
            bluetooth_address: {
                let h =
                    hailan_proto::header::context_from_bytes(self.device_id.as_bytes()).to_string();
                let h = h.as_bytes();
                format!("C0:FF:{:02X}:{:02X}:{:02X}:{:02X}", h[0], h[1], h[2], h[3])
            },
            name: Some(format!("test {}", self.data_type)),
            manufacturer: Some("hailan tests".into()),
            model: None,
            serial: None,
            firmware_version: Some("1.0".into()),
            hardware_version: None,
            device_commitment: device_commitment(&self.secret),
            paired_at_ms: T0_MS,
        })))
    }

    pub fn state(&self, battery: u8, observed_at_ms: i64) -> Envelope {
        self.envelope(Body::DeviceState(DeviceState {
            device_id: self.device_id.clone(),
            battery_level: Some(battery),
            rssi: Some(-60),
            connected: true,
            firmware_version: None,
            observed_at_ms,
            needs_repair: Some(false),
        }))
    }

    /// A device state saying whether the device is connected, observed at
    /// `observed_at_ms` (battery 50 %).
    pub fn link_state(&self, connected: bool, observed_at_ms: i64) -> Envelope {
        self.envelope(Body::DeviceState(DeviceState {
            device_id: self.device_id.clone(),
            battery_level: Some(50),
            rssi: Some(-60),
            connected,
            firmware_version: None,
            observed_at_ms,
            needs_repair: Some(false),
        }))
    }

    fn prover<'a>(&'a self, pk: &'a ProvingKey) -> hailan_proto::group::Prover<'a> {
        hailan_proto::group::Prover {
            pk,
            secret: &self.secret,
            data_key: &self.key,
            gateway_id: &self.gateway_id,
            device_id: &self.device_id,
            data_type: self.data_type,
        }
    }

    fn batch(&self, group: ProvenGroup) -> Envelope {
        self.envelope(Body::Readings(ReadingBatch {
            device_id: self.device_id.clone(),
            groups: vec![group],
        }))
    }

    /// One reading the gateway could not prove (the next seq; `proof: null`
    /// with a reason): ingest stores it unverified. Cheap volume for tests.
    pub fn unproven_reading(&mut self, slots: &[u32]) -> Envelope {
        let seq = self.next_seq;
        self.next_seq += 1;
        let t = T0_MS + 1000 * seq as i64;
        let header = hailan_proto::ReadingHeader {
            gateway_id: &self.gateway_id,
            device_id: &self.device_id,
            data_type: self.data_type.as_str(),
            seq,
            recorded_at_ms: t,
        };
        let value = hailan_proto::seal::SealedValue {
            slots: slots.to_vec(),
            blinding: [0; 32],
            position: 0,
            original_unit: None,
            extras: Default::default(),
        };
        let sealed = hailan_proto::seal::seal(&self.key, &header, &value, &mut self.rng);
        self.batch(ProvenGroup {
            kind: hailan_proto::envelope::ProofKind::Reading,
            key_id: [0; 32],
            commitment: [0; 32],
            proof: None,
            no_proof_reason: Some("test: not proven".into()),
            readings: vec![hailan_proto::Reading {
                seq,
                data_type: self.data_type.as_str().into(),
                recorded_at_ms: t,
                sealed,
            }],
        })
    }

    /// One reading with its own proof (the next seq, one second apart).
    pub fn proven_reading(&mut self, pk: &ProvingKey, slots: &[u32]) -> Result<Envelope> {
        self.proven_reading_with_extras(pk, slots, Default::default())
    }

    /// [`TestDevice::proven_reading`] carrying `extras` sealed beside the
    /// slots (status bits, sensor contact …: what a device sends unproven).
    pub fn proven_reading_with_extras(
        &mut self,
        pk: &ProvingKey,
        slots: &[u32],
        extras: std::collections::BTreeMap<String, ciborium::Value>,
    ) -> Result<Envelope> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut taken = Taken::new(T0_MS + 1000 * seq as i64, slots.to_vec());
        taken.extras = extras;
        let mut rng = self.rng.clone();
        let group = self.prover(pk).reading(seq, &taken, &mut rng);
        self.rng = rng;
        if let Some(reason) = &group.no_proof_reason {
            anyhow::bail!("not provable: {reason}");
        }
        Ok(self.batch(group))
    }

    /// A window of one-slot readings, one per second, with one proof.
    pub fn proven_window(&mut self, pk: &ProvingKey, values: &[u32]) -> Result<Envelope> {
        let first = self.next_seq;
        self.next_seq += values.len() as u64;
        let taken: Vec<Taken> = values
            .iter()
            .enumerate()
            .map(|(i, v)| Taken::new(T0_MS + 1000 * (first + i as u64) as i64, vec![*v]))
            .collect();
        let mut rng = self.rng.clone();
        let group = self.prover(pk).window(first, &taken, &mut rng);
        self.rng = rng;
        if let Some(reason) = &group.no_proof_reason {
            anyhow::bail!("not provable: {reason}");
        }
        Ok(self.batch(group))
    }
}

/// Plausible in-range slots for a data type (mid-bounds).
pub fn plausible_slots(t: DataType) -> Vec<u32> {
    t.spec()
        .slots
        .iter()
        .map(|s| s.lo + (s.hi - s.lo) / 3)
        .collect()
}

// ------------------------------------------------------------------ processes

/// A `hailan-ingest run` child process for one test: its own consumer
/// group (so parallel tests never take each other's messages), client id,
/// database and keys. Killed on drop.
pub struct IngestProcess {
    pub child: std::process::Child,
    pub client_id: String,
    pub log: std::path::PathBuf,
    binary: std::path::PathBuf,
    env: Vec<(String, String)>,
}

/// What an [`IngestProcess`] starts with beyond its database, keys and gateways.
#[derive(Default)]
pub struct IngestOptions<'a> {
    /// Consumer group (processes of one group share the load); `None`: a fresh one.
    pub group: Option<&'a str>,
    /// `http.listen` for `/metrics` (`None`: off).
    pub http_listen: Option<&'a str>,
    /// The broker's service listener (`None`: the set-up's).
    pub broker: Option<(&'a str, u16)>,
    /// The MQTT client id (`None`: a fresh one). The same id again resumes
    /// the broker's persistent session of an earlier process.
    pub client_id: Option<&'a str>,
    /// More `HAILAN_INGEST__SECTION__KEY` settings.
    pub env: &'a [(&'a str, &'a str)],
}

impl IngestProcess {
    /// Start `binary run` for `gateways` against `db` with keys from `zk`.
    pub fn start(
        binary: &std::path::Path,
        db: &impl HasUrl,
        zk: &DevZk,
        gateways: &[&str],
        log_dir: &std::path::Path,
    ) -> Result<IngestProcess> {
        Self::start_opts(binary, db, zk, gateways, log_dir, IngestOptions::default())
    }

    /// Like [`IngestProcess::start`], in consumer group `group` (processes of
    /// one group share the load), with `http_listen` for `/metrics` (empty: off).
    pub fn start_with(
        binary: &std::path::Path,
        db: &impl HasUrl,
        zk: &DevZk,
        gateways: &[&str],
        log_dir: &std::path::Path,
        group: &str,
        http_listen: &str,
    ) -> Result<IngestProcess> {
        let opts = IngestOptions {
            group: Some(group),
            http_listen: Some(http_listen).filter(|l| !l.is_empty()),
            ..Default::default()
        };
        Self::start_opts(binary, db, zk, gateways, log_dir, opts)
    }

    /// Like [`IngestProcess::start`], with [`IngestOptions`].
    pub fn start_opts(
        binary: &std::path::Path,
        db: &impl HasUrl,
        zk: &DevZk,
        gateways: &[&str],
        log_dir: &std::path::Path,
        opts: IngestOptions<'_>,
    ) -> Result<IngestProcess> {
        let fresh = format!("g{}", uuid::Uuid::new_v4().simple());
        let group = opts.group.unwrap_or(&fresh);
        let (host, port) = match opts.broker {
            Some((h, p)) => (h.to_owned(), p),
            None => mqtt_ingest_host_port(),
        };
        let http_listen = opts.http_listen.unwrap_or("");
        let client_id = match opts.client_id {
            Some(id) => id.to_owned(),
            None => format!("ingest-test-{}", uuid::Uuid::new_v4().simple()),
        };
        let subs: Vec<String> = gateways
            .iter()
            .map(|g| format!("\"$share/{group}/hailan/v1/{g}/up\""))
            .collect();
        let env = vec![
            ("DATABASE_URL".to_owned(), db.url().to_owned()),
            ("HAILAN_INGEST__MQTT__HOST".to_owned(), host),
            ("HAILAN_INGEST__MQTT__PORT".to_owned(), port.to_string()),
            (
                "HAILAN_INGEST__MQTT__CLIENT_ID".to_owned(),
                client_id.clone(),
            ),
            (
                "HAILAN_INGEST__MQTT__PASSWORD".to_owned(),
                mqtt_password("hailan-ingest")?,
            ),
            (
                "HAILAN_INGEST__ZK__KEYS_DIR".to_owned(),
                zk.dir.path().display().to_string(),
            ),
            (
                "HAILAN_INGEST__ZK__ALLOW_DEV_KEYS".to_owned(),
                "true".to_owned(),
            ),
            (
                "HAILAN_INGEST__HTTP__LISTEN".to_owned(),
                http_listen.to_owned(),
            ),
            (
                "HAILAN_INGEST__BATCH__MAX_WAIT_MS".to_owned(),
                "20".to_owned(),
            ),
        ];
        let mut env = env;
        env.extend(
            opts.env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let config = log_dir.join(format!("{client_id}.toml"));
        std::fs::write(
            &config,
            format!("[mqtt]\nsubscriptions = [{}]\n", subs.join(", ")),
        )?;
        env.push((
            "HAILAN_INGEST_CONFIG".to_owned(),
            config.display().to_string(),
        ));
        let log = log_dir.join(format!("{client_id}.log"));
        let mut p = IngestProcess {
            child: spawn_logged(binary, &["run"], &env, &log)?,
            client_id,
            log,
            binary: binary.to_owned(),
            env,
        };
        p.wait_subscribed(0)?;
        Ok(p)
    }

    fn subscriptions_seen(&self) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.contains("hailan_ingest::run: subscribed"))
            .count()
    }

    /// Wait until the log shows more than `before` SUBACKs (the consumer is
    /// subscribed, so nothing published from now on can miss it).
    fn wait_subscribed(&mut self, before: usize) -> Result<()> {
        let start = std::time::Instant::now();
        while self.subscriptions_seen() <= before {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("hailan-ingest exited ({status}):\n{}", self.log_text());
            }
            if start.elapsed() > std::time::Duration::from_secs(30) {
                anyhow::bail!(
                    "hailan-ingest did not subscribe within 30 s:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(())
    }

    /// Start the same consumer again (same client id: the broker's session resumes).
    pub fn restart(&mut self) -> Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let before = self.subscriptions_seen();
        self.child = spawn_logged(&self.binary, &["run"], &self.env, &self.log)?;
        self.wait_subscribed(before)
    }

    /// kill -9.
    pub fn kill9(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()?;
        Ok(self.child.wait()?)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for IngestProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Shown by the test harness only when the test fails.
        let log = self.log_text();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!("--- last lines of {} ---", self.log.display());
        for l in tail.iter().rev() {
            eprintln!("{l}");
        }
    }
}

fn spawn_logged(
    binary: &std::path::Path,
    args: &[&str],
    env: &[(String, String)],
    log: &std::path::Path,
) -> Result<std::process::Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let err = out.try_clone()?;
    std::process::Command::new(binary)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))
}

/// Poll `probe` until it returns `Some`, or fail after `limit` with `what`.
pub async fn eventually<T, F, Fut>(
    limit: std::time::Duration,
    what: &str,
    mut probe: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = probe().await? {
            return Ok(v);
        }
        if start.elapsed() > limit {
            anyhow::bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Rows in `health_data` (read as the owner through the partitions, where RLS does not apply).
pub async fn count_readings(pool: &PgPool, extra_where: &str) -> Result<i64> {
    let sql = format!(
        "SELECT count(*) FROM ({}) r WHERE true {extra_where}",
        DataType::ALL
            .iter()
            .map(|t| format!(
                "SELECT * FROM health_data_{}",
                t.as_str().to_ascii_lowercase()
            ))
            .chain(["SELECT * FROM health_data_default".to_owned()])
            .collect::<Vec<_>>()
            .join(" UNION ALL ")
    );
    Ok(sqlx::query_scalar(AssertSqlSafe(sql))
        .fetch_one(pool)
        .await?)
}

/// Enrol `gateway` for a fresh patient; returns the patient's id.
pub async fn enrol(pool: &PgPool, gateway: &str) -> Result<uuid::Uuid> {
    let did = format!("did:hailan:test:{}", uuid::Uuid::new_v4().simple());
    let id = hailan_ingest::admin::add_user(pool, &did, "PATIENT", None).await?;
    hailan_ingest::admin::enrol_gateway(pool, gateway, &did, None).await?;
    Ok(id)
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// GET `path` from 127.0.0.1:`port` (HTTP/1.0); returns (status code, body).
pub async fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    api::http_get_auth(port, path, None).await
}

// ------------------------------------------------------------------ private PostgreSQL

/// A PostgreSQL 15 cluster of one test's own (initdb in a temporary
/// directory, its own port), so a test can restart or kill it without
/// disturbing the others. Runs as the `postgres` account when the test runs
/// as root. Stopped (immediate) and deleted on drop.
pub struct PrivatePostgres {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub url: String,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Whether this process runs as root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

pub(crate) fn as_postgres(program: &str) -> std::process::Command {
    if is_root() {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--", &format!("{PG_BIN}/{program}")]);
        c
    } else {
        std::process::Command::new(format!("{PG_BIN}/{program}"))
    }
}

pub(crate) fn checked(mut c: std::process::Command, what: &str) -> Result<()> {
    let out = c
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `pg_ctl ARGS` on the cluster in `dir/data` listening on `port` (TCP on
/// 127.0.0.1 and a socket in `dir`), logging to `dir/postgres.log`.
pub(crate) fn pg_ctl(dir: &std::path::Path, port: u16, args: &[&str]) -> Result<()> {
    let mut c = as_postgres("pg_ctl");
    c.arg("-D")
        .arg(dir.join("data"))
        .arg("-l")
        .arg(dir.join("postgres.log"))
        .arg("-o")
        .arg(format!("-p {port} -k {} -h 127.0.0.1", dir.display()));
    c.args(args);
    checked(c, &format!("pg_ctl {}", args.join(" ")))
}

impl PrivatePostgres {
    /// initdb, start, create role `hailan` (password `hailan`) and database `hailan`, migrate.
    pub async fn start() -> Result<PrivatePostgres> {
        Self::start_with(&[]).await
    }

    /// Like [`PrivatePostgres::start`], with `extra_conf` lines appended to
    /// `postgresql.conf` before the first start (e.g. WAL archiving).
    pub async fn start_with(extra_conf: &[String]) -> Result<PrivatePostgres> {
        let dir = tempfile::Builder::new().prefix("hailan-pg-").tempdir()?;
        std::process::Command::new("chmod")
            .arg("777")
            .arg(dir.path())
            .status()?;
        let data = dir.path().join("data");
        let port = free_port()?;
        let mut init = as_postgres("initdb");
        init.args(["-D"]).arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        checked(init, "initdb")?;
        append_conf(&data, extra_conf)?;
        let pg = PrivatePostgres {
            url: format!("postgres://hailan:hailan@127.0.0.1:{port}/hailan"),
            dir,
            port,
        };
        pg.pg_ctl(&["start", "-w", "-t", "30"])?;
        let admin = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        let mut c = PgConnection::connect(&admin).await?;
        c.execute("CREATE ROLE hailan LOGIN PASSWORD 'hailan' CREATEDB CREATEROLE")
            .await?;
        c.execute("CREATE DATABASE hailan OWNER hailan").await?;
        c.close().await?;
        let pool = hailan_db::connect(&pg.url, 2).await?;
        hailan_db::migrate(&pool).await?;
        pool.close().await;
        Ok(pg)
    }

    /// Adopt the cluster in `dir/data` (e.g. a restored base backup) on
    /// `port`, without starting it; stopped on drop like any other.
    pub fn adopt(dir: tempfile::TempDir, port: u16) -> PrivatePostgres {
        PrivatePostgres {
            url: format!("postgres://hailan:hailan@127.0.0.1:{port}/hailan"),
            dir,
            port,
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The URL of database `hailan` as the superuser `postgres`.
    pub fn superuser_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/hailan", self.port)
    }

    /// A connection as the superuser `postgres`.
    pub async fn superuser(&self) -> Result<PgConnection> {
        Ok(PgConnection::connect(&self.superuser_url()).await?)
    }

    /// kill -9 the postmaster and every backend it started: a crash of the
    /// server, not a shutdown (nothing is flushed or handed over).
    pub fn kill9(&self) -> Result<()> {
        kill9_postmaster(&self.data_dir())
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<()> {
        pg_ctl(self.dir.path(), self.port, args)
    }

    /// Stop (fast: connections are cut) and start again; waits until it accepts connections.
    pub fn restart(&self) -> Result<()> {
        self.pg_ctl(&["restart", "-m", "fast", "-w", "-t", "30"])
    }

    /// Stop (fast).
    pub fn stop(&self) -> Result<()> {
        self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "30"])
    }

    /// Start a stopped cluster.
    pub fn start_again(&self) -> Result<()> {
        self.pg_ctl(&["start", "-w", "-t", "30"])
    }
}

/// kill -9 the postmaster of the cluster in `data` and every backend it
/// started: a crash of the server, not a shutdown (nothing is flushed or
/// handed over).
pub fn kill9_postmaster(data: &std::path::Path) -> Result<()> {
    let pidfile = std::fs::read_to_string(data.join("postmaster.pid"))
        .context("reading postmaster.pid (is the cluster running?)")?;
    let pid: u32 = pidfile
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .context("postmaster.pid without a pid")?;
    let mut victims = vec![pid];
    victims.extend(children_of(pid));
    // One `kill` for all, so that no backend outlives the postmaster by
    // more than an instant. A backend that exited on its own between the
    // listing and the kill makes `kill` report failure ("No such
    // process"): what matters is that none of them is left.
    let _ = std::process::Command::new("kill")
        .arg("-KILL")
        .args(victims.iter().map(|p| p.to_string()))
        .status()?;
    let alive = |p: &u32| {
        std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while victims.iter().any(alive) {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "kill -KILL left {:?} running",
            victims.iter().filter(|p| alive(p)).collect::<Vec<_>>()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(())
}

/// Append `lines` to `data/postgresql.conf` (later settings win).
pub fn append_conf(data: &std::path::Path, lines: &[String]) -> Result<()> {
    append_to(data, "postgresql.conf", lines)
}

/// Append `lines` to `data/<file>`.
pub fn append_to(data: &std::path::Path, file: &str, lines: &[String]) -> Result<()> {
    use std::io::Write;
    if lines.is_empty() {
        return Ok(());
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join(file))
        .with_context(|| format!("opening {file}"))?;
    writeln!(f, "\n# added by the test")?;
    for l in lines {
        writeln!(f, "{l}")?;
    }
    Ok(())
}

/// The processes whose parent is `pid` (from /proc).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    // "pid (comm) state ppid …": comm may hold spaces.
                    let after = s.rsplit_once(')')?.1;
                    after.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "10"]);
    }
}
