//! Gateway configuration: `/etc/hailan/gateway.toml` (or `--config FILE`)
//! overlaid by environment variables `HAILAN_GATEWAY__SECTION__KEY` (e.g.
//! `HAILAN_GATEWAY__MQTT__HOST`). A bad value is one error naming its key;
//! secret files that others can read are refused.

use anyhow::{Context, Result, bail};
use hailan_proto::DataType;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The default configuration file.
pub const DEFAULT_FILE: &str = "/etc/hailan/gateway.toml";

/// Everything the gateway reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// This gateway's id: its MQTT topic (`hailan/v1/{id}/up`), default MQTT
    /// user and client id, and the name ingest enrolled it under.
    pub gateway_id: String,
    /// Where the database (devices, secrets, outbox) lives.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// `[mqtt]`: how the gateway reaches the broker.
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// `[ble]`: the adapter, links held at once, timeouts and reconnect backoff.
    #[serde(default)]
    pub ble: BleSection,
    /// `[keys]`: where the owner's data key and the zk proving keys are.
    #[serde(default)]
    pub keys: KeysConfig,
    /// `[pipeline]`: which data types are proven in windows, window limits,
    /// prover threads and how often device states are sent again.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// `[outbox]`: the disk quota of the outbox.
    #[serde(default)]
    pub outbox: OutboxConfig,
    /// `[metrics]`: the Prometheus `/metrics` listener (off by default).
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// `[home_assistant]`: MQTT discovery of each device's battery and link
    /// (off by default).
    #[serde(default)]
    pub home_assistant: HomeAssistantConfig,
}

/// The `[home_assistant]` section: Home Assistant MQTT discovery, which
/// shows each paired device's battery and connectivity (never a health value).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HomeAssistantConfig {
    /// Publish MQTT discovery for each device's battery and connectivity
    /// (never a health value). The broker ACL must let the gateway write
    /// `homeassistant/+/{gateway_id}/#` and `hailan/v1/{gateway_id}/ha/#`.
    pub enabled: bool,
    /// The topic prefix Home Assistant reads discovery configs under
    /// (default `homeassistant`, Home Assistant's own default).
    pub discovery_prefix: String,
}

impl Default for HomeAssistantConfig {
    fn default() -> Self {
        HomeAssistantConfig {
            enabled: false,
            discovery_prefix: "homeassistant".into(),
        }
    }
}

/// The `[metrics]` section: the daemon's Prometheus endpoint.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where `/metrics` listens (e.g. `127.0.0.1:9465`); empty = off.
    pub listen: String,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/hailan-gateway")
}

/// The `[mqtt]` section: the broker connection the publisher makes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Broker host name or IP address (default `127.0.0.1`).
    pub host: String,
    /// Broker TCP port (default 1883; 8883 is the usual TLS port).
    pub port: u16,
    /// Default: the gateway id. Fixed, so the broker keeps the session.
    pub client_id: Option<String>,
    /// Default: the gateway id (the broker ACL lets user `u` write only `hailan/v1/u/#`).
    pub username: Option<String>,
    /// The broker password, inline; used before `password_file` when both
    /// are set. With neither, the gateway connects without credentials.
    pub password: Option<String>,
    /// A file holding the password (refused if group/world-readable).
    pub password_file: Option<PathBuf>,
    /// CA certificate (PEM) of the broker: when set, connect over TLS.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for TLS client authentication.
    pub client_cert_file: Option<PathBuf>,
    /// Private key (PEM) of `client_cert_file` (refused if group/world-readable);
    /// the two are set together or not at all.
    pub client_key_file: Option<PathBuf>,
    /// MQTT keep-alive interval in seconds (default 30; values below 5 count as 5).
    pub keep_alive_s: u64,
    /// Most unacknowledged publishes in flight.
    pub max_inflight: u16,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: None,
            username: None,
            password: None,
            password_file: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            keep_alive_s: 30,
            max_inflight: 64,
        }
    }
}

/// The error for a bad value: it names the key.
fn bad(key: &str, why: String) -> Result<()> {
    bail!("invalid configuration: {key} {why}")
}

/// The `[ble]` section as written in the file (seconds and milliseconds);
/// [`GatewayConfig::ble_config`] turns it into the BLE layer's
/// [`BleConfig`](crate::ble::BleConfig).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BleSection {
    /// Adapter name (`hci0`); empty = the first one.
    pub adapter: String,
    /// Several adapters to spread devices over (`["hci0", "hci1"]`, or
    /// `["all"]` for every adapter present at start); a device whose
    /// adapter powers off or vanishes moves to another. Empty = just
    /// `ble.adapter`; the two do not go together.
    pub adapters: Vec<String>,
    /// Links held at once (the rest wait in a queue).
    pub max_connections: usize,
    /// Close a hand-over device's link after this many seconds without a value.
    pub idle_disconnect_s: u64,
    /// Seconds between battery reads of each connected device (a glucose
    /// meter is also asked for new records then); default 300.
    pub battery_interval_s: u64,
    /// No discovery event for this long while scanning = a stalled scanner.
    pub scan_stall_s: u64,
    /// First delay before a device's next connection attempt, in
    /// milliseconds (default 1000); it doubles, jittered, after each failure.
    pub reconnect_min_ms: u64,
    /// Cap of that delay in milliseconds (default 60 000); a link that lasted
    /// at least this long starts the delay from `reconnect_min_ms` again.
    pub reconnect_max_ms: u64,
    /// Seconds `hailan-gateway pair` may take, finding the device included
    /// (default 30).
    pub pair_timeout_s: u64,
    /// Set the clock of a device that lets its Current Time (0x2A2B) be
    /// written, when it is found off by more than 2 s (default true).
    pub set_device_clock: bool,
}

impl Default for BleSection {
    fn default() -> Self {
        BleSection {
            adapter: String::new(),
            adapters: Vec::new(),
            max_connections: 4,
            idle_disconnect_s: 10,
            battery_interval_s: 300,
            scan_stall_s: 30,
            reconnect_min_ms: 1000,
            reconnect_max_ms: 60_000,
            pair_timeout_s: 30,
            set_device_clock: true,
        }
    }
}

/// The `[keys]` section: the key material the gateway seals and proves with
/// (DESIGN §5.2), loaded by [`Keys::load`](crate::keys::Keys::load).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// The owner's AES-256 data key: 64 hex characters (`hailan-gateway init` writes one).
    pub data_key_file: PathBuf,
    /// The key id sealed values name (the clinician API's key ring maps it to the key).
    pub data_key_id: String,
    /// Directory with `reading.pk` and `window.pk` (from `hailan-ingest zk setup`).
    pub zk_dir: PathBuf,
    /// Accept development (seeded) proving keys. Never in production.
    pub allow_dev_keys: bool,
    /// The other patients of the household (`[[keys.patients]]`): a shared
    /// device's user slot mapped to one of them (`pair --patient DID`) seals
    /// with their data key, not the owner's.
    pub patients: Vec<PatientKey>,
}

/// One `[[keys.patients]]` entry: a patient by DID and their data key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatientKey {
    /// The patient's DID, as enrolled on the ingest side
    /// (`hailan-ingest admin enrol-gateway … --patient DID`).
    pub did: String,
    /// Their AES-256 data key: 64 hex characters, mode 0600.
    pub data_key_file: PathBuf,
    /// The key id their sealed values name (in the clinician API's key ring).
    pub data_key_id: String,
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            data_key_file: PathBuf::from("/etc/hailan/owner.key"),
            data_key_id: "owner-key-1".into(),
            zk_dir: PathBuf::from("/etc/hailan/zk"),
            allow_dev_keys: false,
            patients: Vec::new(),
        }
    }
}

/// The `[pipeline]` section: how readings are grouped into proofs, how many
/// proofs run at once, and how often device states are sent again.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Readings per window proof (1..=16) for windowed data types.
    pub window_size: usize,
    /// A window closes this long after its first reading, full or not.
    pub window_max_ms: u64,
    /// Data types proven in windows (high-rate ones); others per reading.
    pub windowed: Vec<String>,
    /// Proofs computed at once (each takes one core while it runs).
    pub prover_threads: usize,
    /// Every this many seconds while the broker is connected (and at once
    /// on every connection), the state of every paired device is sent
    /// again, so ingest knows it is still true (its `api.stale_after_s`,
    /// 900 s by default, must be longer). 10..=86,400.
    pub state_refresh_s: u64,
}

/// Bounds of `pipeline.state_refresh_s`.
pub const STATE_REFRESH_S: std::ops::RangeInclusive<u64> = 10..=86_400;

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            window_size: 16,
            window_max_ms: 20_000,
            windowed: vec!["HEART_RATE".into()],
            prover_threads: 1,
            state_refresh_s: 300,
        }
    }
}

impl PipelineConfig {
    /// Whether `t` is proven in windows.
    pub fn is_windowed(&self, t: DataType) -> bool {
        self.windowed.iter().any(|w| w == t.as_str())
    }

    /// `window_max_ms` as a duration: how long a window stays open after
    /// its first reading before it is proven, full or not.
    pub fn window_max(&self) -> Duration {
        Duration::from_millis(self.window_max_ms)
    }

    /// `state_refresh_s` as a duration: the period at which every paired
    /// device's state is sent again while the broker is connected.
    pub fn state_refresh(&self) -> Duration {
        Duration::from_secs(self.state_refresh_s)
    }
}

/// The `[outbox]` section: the limit of the durable outbox.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Disk the outbox may use, in MiB (default 256). When full, the newest readings are refused
    /// (counted and logged); glucose records stay on the meter and are
    /// fetched later. Registrations are always kept.
    pub quota_mb: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig { quota_mb: 256 }
    }
}

impl GatewayConfig {
    /// Load from `file` (which must exist when given; the default file is
    /// used if it exists), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self> {
        Self::load_with(file, None)
    }

    /// [`GatewayConfig::load`] with `env` standing for the process
    /// environment when given (tests).
    fn load_with(file: Option<&Path>, env: Option<config::Map<String, String>>) -> Result<Self> {
        let mut builder = config::Config::builder();
        let file = match file {
            Some(f) => Some(f.to_path_buf()),
            None => Some(PathBuf::from(DEFAULT_FILE)).filter(|p| p.exists()),
        };
        if let Some(f) = &file {
            builder = builder.add_source(
                config::File::from(f.as_path())
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        builder = builder.add_source(
            config::Environment::with_prefix("HAILAN_GATEWAY")
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("pipeline.windowed")
                .with_list_parse_key("ble.adapters")
                .try_parsing(true)
                .source(env),
        );
        let raw = builder.build().context("reading the configuration")?;
        let cfg: GatewayConfig = raw.try_deserialize().map_err(|e| {
            let origin = file
                .as_ref()
                .map(|f| format!(" ({})", f.display()))
                .unwrap_or_default();
            anyhow::anyhow!("invalid configuration{origin}: {e}")
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        if !hailan_proto::envelope::is_valid_id(&self.gateway_id) {
            bad(
                "gateway_id",
                format!(
                    "{:?} must be 1..=64 characters of A-Z a-z 0-9 - _ . :",
                    self.gateway_id
                ),
            )?;
        }
        if !(1..=hailan_proto::zk::WINDOW_LEN).contains(&self.pipeline.window_size) {
            bad(
                "pipeline.window_size",
                format!(
                    "must be 1..={}, not {}",
                    hailan_proto::zk::WINDOW_LEN,
                    self.pipeline.window_size
                ),
            )?;
        }
        for w in &self.pipeline.windowed {
            match DataType::from_name(w) {
                Some(t) if hailan_proto::zk::windowable(t) => {}
                Some(_) => bad(
                    "pipeline.windowed",
                    format!("{w:?} has more than one slot and cannot be proven in windows"),
                )?,
                None => bad("pipeline.windowed", format!("{w:?} is not a data type"))?,
            }
        }
        if self.pipeline.prover_threads == 0 {
            bad("pipeline.prover_threads", "must be at least 1".into())?;
        }
        if !STATE_REFRESH_S.contains(&self.pipeline.state_refresh_s) {
            bad(
                "pipeline.state_refresh_s",
                format!(
                    "must be {}..={} seconds, not {}",
                    STATE_REFRESH_S.start(),
                    STATE_REFRESH_S.end(),
                    self.pipeline.state_refresh_s
                ),
            )?;
        }
        self.check_adapters()?;
        self.check_patients()?;
        if self.ble.max_connections == 0 {
            bad("ble.max_connections", "must be at least 1".into())?;
        }
        if self.ble.idle_disconnect_s == 0 {
            bad("ble.idle_disconnect_s", "must be at least 1".into())?;
        }
        if self.ble.reconnect_min_ms == 0 || self.ble.reconnect_min_ms > self.ble.reconnect_max_ms {
            bad(
                "ble.reconnect_min_ms",
                "must be at least 1 and at most ble.reconnect_max_ms".into(),
            )?;
        }
        if self.mqtt.max_inflight < 2 {
            bad("mqtt.max_inflight", "must be at least 2".into())?;
        }
        if self.outbox.quota_mb == 0 {
            bad("outbox.quota_mb", "must be at least 1".into())?;
        }
        if self.mqtt.client_cert_file.is_some() != self.mqtt.client_key_file.is_some() {
            bad(
                "mqtt.client_cert_file",
                "and mqtt.client_key_file go together".into(),
            )?;
        }
        Ok(())
    }

    /// `[[keys.patients]]`: a DID that fits `users.did`, each once, and a
    /// key id of its own (the API's key ring finds keys by id).
    fn check_patients(&self) -> Result<()> {
        let mut kids = vec![self.keys.data_key_id.as_str()];
        for (i, p) in self.keys.patients.iter().enumerate() {
            let key = |k: &str| format!("keys.patients[{i}].{k}");
            if p.did.is_empty() || hailan_proto::columns::PATIENT.check_text(&p.did).is_err() {
                bad(
                    &key("did"),
                    format!("{:?} is not a DID of 1..=255 characters", p.did),
                )?;
            }
            if self.keys.patients[..i].iter().any(|q| q.did == p.did) {
                bad(&key("did"), format!("{:?} is listed twice", p.did))?;
            }
            if kids.contains(&p.data_key_id.as_str()) || p.data_key_id.is_empty() {
                bad(
                    &key("data_key_id"),
                    format!("{:?} is empty or already names another key", p.data_key_id),
                )?;
            }
            kids.push(&p.data_key_id);
        }
        Ok(())
    }

    /// `ble.adapter` and `ble.adapters`: adapter names (`hci1`), `all`
    /// alone, no name twice, not both keys.
    fn check_adapters(&self) -> Result<()> {
        let named = |a: &str| {
            a.strip_prefix("hci")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        };
        if !self.ble.adapter.is_empty() && !named(&self.ble.adapter) {
            bad(
                "ble.adapter",
                format!(
                    "{:?} is not an adapter name (hci0, hci1, …)",
                    self.ble.adapter
                ),
            )?;
        }
        if self.ble.adapters.is_empty() {
            return Ok(());
        }
        if !self.ble.adapter.is_empty() {
            bad(
                "ble.adapters",
                "and ble.adapter do not go together: list every adapter in ble.adapters".into(),
            )?;
        }
        if self.ble.adapters.iter().any(|a| a == "all") {
            if self.ble.adapters.len() > 1 {
                bad("ble.adapters", "\"all\" stands alone".into())?;
            }
            return Ok(());
        }
        for (i, a) in self.ble.adapters.iter().enumerate() {
            if !named(a) {
                bad(
                    "ble.adapters",
                    format!("{a:?} is not an adapter name (hci0, hci1, …) or \"all\""),
                )?;
            }
            if self.ble.adapters[..i].contains(a) {
                bad("ble.adapters", format!("{a:?} is listed twice"))?;
            }
        }
        Ok(())
    }

    /// The MQTT client id: `mqtt.client_id`, else the gateway id. It stays
    /// the same across restarts so the broker keeps the persistent session.
    pub fn client_id(&self) -> &str {
        self.mqtt.client_id.as_deref().unwrap_or(&self.gateway_id)
    }

    /// The MQTT user name: `mqtt.username`, else the gateway id (the broker
    /// ACL lets user `u` write only under `hailan/v1/u/`).
    pub fn username(&self) -> &str {
        self.mqtt.username.as_deref().unwrap_or(&self.gateway_id)
    }

    /// The MQTT password, from `mqtt.password` or `mqtt.password_file`.
    pub fn password(&self) -> Result<Option<String>> {
        if let Some(p) = &self.mqtt.password {
            return Ok(Some(p.clone()));
        }
        match &self.mqtt.password_file {
            None => Ok(None),
            Some(f) => Ok(Some(
                read_secret_file(f, "mqtt.password_file")?.trim().to_owned(),
            )),
        }
    }

    /// The outbox quota in bytes.
    pub fn quota_bytes(&self) -> u64 {
        self.outbox.quota_mb.saturating_mul(1 << 20)
    }

    /// Which adapters `ble.adapter` / `ble.adapters` name.
    fn adapter_choice(&self) -> crate::ble::AdapterChoice {
        use crate::ble::AdapterChoice;
        match (self.ble.adapters.as_slice(), self.ble.adapter.as_str()) {
            ([all], _) if all == "all" => AdapterChoice::All,
            ([], "") => AdapterChoice::First,
            ([], one) => AdapterChoice::Named(vec![one.to_string()]),
            (several, _) => AdapterChoice::Named(several.to_vec()),
        }
    }

    /// The `[ble]` section as the BLE layer takes it: durations instead of
    /// numbers, an empty adapter name as "the first adapter", and a battery
    /// interval, scan stall time or pairing timeout of 0 s raised to 1 s.
    pub fn ble_config(&self) -> crate::ble::BleConfig {
        crate::ble::BleConfig {
            adapters: self.adapter_choice(),
            max_connections: self.ble.max_connections,
            idle_disconnect: Duration::from_secs(self.ble.idle_disconnect_s),
            battery_interval: Duration::from_secs(self.ble.battery_interval_s.max(1)),
            scan_stall_after: Duration::from_secs(self.ble.scan_stall_s.max(1)),
            reconnect_min: Duration::from_millis(self.ble.reconnect_min_ms),
            reconnect_max: Duration::from_millis(self.ble.reconnect_max_ms),
            pair_timeout: Duration::from_secs(self.ble.pair_timeout_s.max(1)),
            set_device_clock: self.ble.set_device_clock,
        }
    }
}

/// Read a secret file, refusing it if group or others may read it.
pub fn read_secret_file(path: &Path, key: &str) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("{key}: cannot read {}", path.display()))?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        bail!(
            "{key}: {} is readable by group or others (mode {:o}); run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    std::fs::read_to_string(path).with_context(|| format!("{key}: reading {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<GatewayConfig> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, text)?;
        GatewayConfig::load(Some(&path))
    }

    #[test]
    fn example_config_parses() -> Result<()> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/gateway.example.toml");
        let cfg = GatewayConfig::load(Some(&path))?;
        assert_eq!(cfg.mqtt.port, 8883);
        assert!(cfg.mqtt.ca_file.is_some());
        assert!(!cfg.keys.allow_dev_keys);
        assert!(cfg.pipeline.is_windowed(DataType::HeartRate));
        assert_eq!(
            cfg.pipeline.state_refresh_s,
            PipelineConfig::default().state_refresh_s,
            "the example shows the default"
        );
        Ok(())
    }

    #[test]
    fn setting_device_clocks_is_on_by_default_and_can_be_turned_off() -> Result<()> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/gateway.example.toml");
        assert!(
            GatewayConfig::load(Some(&path))?
                .ble_config()
                .set_device_clock
        );
        let base = std::fs::read_to_string(&path)?;
        let off = base.replace("set_device_clock = true", "set_device_clock = false");
        assert_ne!(off, base, "the example names the key");
        assert!(!load(&off)?.ble_config().set_device_clock);
        Ok(())
    }

    #[test]
    fn adapters_are_one_named_several_or_all() -> Result<()> {
        use crate::ble::AdapterChoice;
        let choice = |ble: &str| -> Result<AdapterChoice> {
            Ok(load(&format!("gateway_id = \"gw\"\n[ble]\n{ble}\n"))?
                .ble_config()
                .adapters)
        };
        assert_eq!(choice("")?, AdapterChoice::First);
        assert_eq!(
            choice("adapter = \"hci1\"")?,
            AdapterChoice::Named(vec!["hci1".into()])
        );
        assert_eq!(
            choice("adapters = [\"hci0\", \"hci1\"]")?,
            AdapterChoice::Named(vec!["hci0".into(), "hci1".into()])
        );
        assert_eq!(choice("adapters = [\"all\"]")?, AdapterChoice::All);
        // From the environment, comma-separated.
        let env = [
            ("HAILAN_GATEWAY__GATEWAY_ID", "gw"),
            ("HAILAN_GATEWAY__BLE__ADAPTERS", "hci0,hci1"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let cfg = GatewayConfig::load_with(None, Some(env.into_iter().collect()))?;
        assert_eq!(
            cfg.ble_config().adapters,
            AdapterChoice::Named(vec!["hci0".into(), "hci1".into()])
        );
        Ok(())
    }

    #[test]
    fn each_patient_of_the_household_names_a_did_and_a_key_of_their_own() -> Result<()> {
        let patient = |did: &str, kid: &str| {
            format!(
                "[[keys.patients]]\ndid = \"{did}\"\ndata_key_file = \"/k\"\ndata_key_id = \"{kid}\"\n"
            )
        };
        let cfg = |p: &str| load(&format!("gateway_id = \"gw\"\n{p}"));
        let two = patient("did:example:bob", "bob-1") + &patient("did:example:eve", "eve-1");
        let dids: Vec<String> = cfg(&two)?
            .keys
            .patients
            .into_iter()
            .map(|p| p.did)
            .collect();
        assert_eq!(dids, ["did:example:bob", "did:example:eve"]);
        let err = |p: &str| format!("{:#}", cfg(p).expect_err("must fail"));
        let e = err(&patient("", "bob-1"));
        assert!(e.contains("keys.patients[0].did"), "{e}");
        let e = err(&(patient("did:example:bob", "bob-1") + &patient("did:example:bob", "bob-2")));
        assert!(e.contains("keys.patients[1].did"), "{e}");
        let e = err(&patient("did:example:bob", "owner-key-1"));
        assert!(e.contains("keys.patients[0].data_key_id"), "{e}");
        let e = err("[[keys.patients]]\ndid = \"did:example:bob\"\n");
        assert!(e.contains("data_key_file"), "{e}");
        Ok(())
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let err = |t: &str| format!("{:#}", load(t).expect_err("must fail"));
        assert!(err("").contains("gateway_id"));
        let e = err("gateway_id = \"gw\"\n[mqtt]\nport = \"x\"\n");
        assert!(e.contains("port"), "{e}");
        let e = err("gateway_id = \"gw\"\n[pipeline]\nwindow_size = 40\n");
        assert!(e.contains("pipeline.window_size"), "{e}");
        let e = err("gateway_id = \"gw\"\n[pipeline]\nwindowed = [\"BLOOD_PRESSURE\"]\n");
        assert!(e.contains("pipeline.windowed"), "{e}");
        for v in ["0", "9", "86401"] {
            let e = err(&format!(
                "gateway_id = \"gw\"\n[pipeline]\nstate_refresh_s = {v}\n"
            ));
            assert!(e.contains("pipeline.state_refresh_s"), "{v}: {e}");
        }
        let e = err("gateway_id = \"gw\"\n[pipeline]\nstate_refresh_s = -1\n");
        assert!(e.contains("state_refresh_s"), "{e}");
        for (adapters, why) in [
            (
                "adapter = \"hci0\"\nadapters = [\"hci1\"]",
                "do not go together",
            ),
            ("adapters = [\"all\", \"hci0\"]", "stands alone"),
            ("adapters = [\"hci0\", \"hci0\"]", "twice"),
            ("adapters = [\"usb0\"]", "not an adapter name"),
        ] {
            let e = err(&format!("gateway_id = \"gw\"\n[ble]\n{adapters}\n"));
            assert!(e.contains("ble.adapters") && e.contains(why), "{e}");
        }
        let e = err("gateway_id = \"gw\"\n[ble]\nadapter = \"first\"\n");
        assert!(e.contains("ble.adapter"), "{e}");
        let e = err("gateway_id = \"gw\"\n[ble]\nmax_conections = 3\n");
        assert!(e.contains("max_conections"), "{e}");
        let e = err("gateway_id = \"no spaces\"\n");
        assert!(e.contains("gateway_id"), "{e}");
    }

    #[test]
    fn readable_secret_files_are_refused() -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let f = dir.path().join("pw");
        std::fs::write(&f, "secret\n")?;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644))?;
        let e = read_secret_file(&f, "mqtt.password_file").expect_err("world-readable");
        assert!(format!("{e}").contains("chmod 600"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600))?;
        assert_eq!(read_secret_file(&f, "mqtt.password_file")?, "secret\n");
        Ok(())
    }
}
