//! `cargo xtask demo`: the whole system on this machine, for real.
//!
//! Services (PostgreSQL, Mosquitto), migrations, development zk keys, a demo
//! owner, clinician, grant and API token; then `hailan-sim` (one device of
//! each kind plus heart-rate straps) on a private D-Bus, `hailan-gateway`
//! pairing every device through its CLI and running as the daemon, and
//! `hailan-ingest run`. Live progress every few seconds; after `--duration`
//! or Ctrl-C a summary from PostgreSQL. Everything it started is stopped
//! (gracefully, in pipeline order) unless `--keep`.

use crate::procstat::{Usage, pids_named};
use crate::services::Endpoints;
use crate::sh::{Cmd, repo_root};
use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const GATEWAY: &str = "gw-demo";
const OWNER: &str = "did:hailan:demo:owner";
const CLINICIAN: &str = "did:hailan:demo:clinician";
const API_LISTEN: &str = "127.0.0.1:8443";
/// The simulated devices by default.
pub const DEVICES: &str = "hr=3,bp=1,spo2=1,temp=1,glucose=1,scale=1,bodycomp=1";
/// Device schedules run this much faster than real time by default (a cuff
/// every 45 s instead of 3 min), so a one-minute demo shows every kind.
pub const SPEED: u32 = 4;

/// A child process stopped with SIGTERM (then SIGKILL) on drop unless kept.
struct Proc {
    name: &'static str,
    child: Child,
    keep: bool,
}

impl Proc {
    fn terminate(&mut self, grace: Duration) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < grace {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop within {grace:?}: killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.keep {
            self.terminate(Duration::from_secs(20));
        }
    }
}

/// Where cargo put the binaries of the chosen profile.
fn target_dir(release: bool) -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    base.join(if release { "release" } else { "debug" })
}

fn logged(cmd: &mut Command, log: &Path) -> Result<Child> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))
}

/// `health_data` read as its owner: through the partitions, since RLS is
/// forced on the parent (the demo is not a clinician; the API is).
const ROWS: &str = "(SELECT * FROM health_data_heart_rate UNION ALL SELECT * FROM health_data_blood_pressure \
    UNION ALL SELECT * FROM health_data_spo2 UNION ALL SELECT * FROM health_data_body_temperature \
    UNION ALL SELECT * FROM health_data_glucose UNION ALL SELECT * FROM health_data_body_weight \
    UNION ALL SELECT * FROM health_data_body_composition \
    UNION ALL SELECT * FROM health_data_default)";

fn psql(e: &Endpoints, sql: &str) -> Result<String> {
    Cmd::new("psql")
        .arg(&e.database_url)
        .args(["-X", "-A", "-t", "-F", "\t", "-c", sql])
        .quiet()
        .output()
}

/// Options of `cargo xtask demo`.
pub struct Options {
    pub duration: Duration,
    pub keep: bool,
    /// `hailan-sim --devices` (e.g. `hr=20,bp=1`).
    pub devices: String,
    /// `hailan-sim --speed`.
    pub speed: u32,
    /// Build and run the release binaries (what a deployment runs).
    pub release: bool,
    /// Run the binaries already in the target directory, without building.
    pub no_build: bool,
}

pub fn run(e: &Endpoints, opts: &Options) -> Result<()> {
    let env = e.env();
    let dir = e.state_dir.join("demo");
    std::fs::create_dir_all(&dir)?;
    let bins = target_dir(opts.release);
    let bin = |name: &str| bins.join(name);
    if opts.no_build {
        for name in [
            "hailan-ingest",
            "hailan-api",
            "hailan-gateway",
            "hailan-sim",
        ] {
            if !bin(name).is_file() {
                bail!("--no-build: {} is missing", bin(name).display());
            }
        }
    } else {
        println!("\n== building the binaries");
        crate::cargo()
            .args([
                "build",
                "--quiet",
                "-p",
                "hailan-ingest",
                "-p",
                "hailan-api",
                "-p",
                "hailan-gateway",
                "-p",
                "hailan-firmware-sim",
            ])
            .args(opts.release.then_some("--release"))
            .run()?;
    }
    let ingest = bin("hailan-ingest");
    let admin = |args: &[&str]| -> Result<String> {
        Cmd::new(&ingest).args(args).envs(&env).quiet().output()
    };
    println!("== migrating, demo keys and people");
    admin(&["migrate"])?;
    let zk = dir.join("zk");
    if !zk.join("keys.json").exists() {
        admin(&[
            "zk",
            "setup",
            "--out",
            &zk.display().to_string(),
            "--dev-seed",
            "20261201",
        ])?;
    }
    admin(&[
        "admin",
        "add-user",
        OWNER,
        "--kind",
        "PATIENT",
        "--name",
        "Demo Owner",
    ])?;
    admin(&[
        "admin",
        "add-user",
        CLINICIAN,
        "--kind",
        "CLINICIAN",
        "--name",
        "Demo Clinician",
    ])?;
    admin(&["admin", "enrol-gateway", GATEWAY, "--owner", OWNER])?;
    admin(&[
        "admin",
        "grant",
        "--patient",
        OWNER,
        "--clinician",
        CLINICIAN,
    ])?;
    let token = admin(&[
        "admin", "token", CLINICIAN, "--days", "1", "--label", "demo",
    ])?
    .trim()
    .to_owned();
    let started_at = psql(e, "SELECT now()")?.trim().to_owned();
    let owner_id = psql(e, &format!("SELECT id FROM users WHERE did = '{OWNER}'"))?
        .trim()
        .to_owned();

    let speed = opts.speed.to_string();
    println!(
        "== hailan-sim: {} (schedules ×{speed}) on a private D-Bus",
        opts.devices
    );
    let mut sim_cmd = Command::new(bin("hailan-sim"));
    sim_cmd
        .args([
            "run",
            "--devices",
            &opts.devices,
            "--speed",
            &speed,
            "--private-bus",
        ])
        .args([
            "--ground-truth",
            &dir.join("truth.jsonl").display().to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("sim.log"))?);
    let mut sim_child = sim_cmd.spawn().context("starting hailan-sim")?;
    let stdout = sim_child.stdout.take().context("sim stdout")?;
    let mut sim_stdin = sim_child.stdin.take();
    let mut sim = Proc {
        name: "hailan-sim",
        child: sim_child,
        keep: opts.keep,
    };
    let mut bus = String::new();
    let mut addresses = Vec::new();
    let mut pair_flags: std::collections::HashMap<String, Vec<String>> = Default::default();
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line?;
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["DEVICE", name, kind, address, ..] => {
                addresses.push((name.to_string(), kind.to_string(), address.to_string()))
            }
            // What the device "shows" for pairing; the owner would read it.
            ["PAIRING", name, "passkey", n] => {
                pair_flags.insert(name.to_string(), vec!["--passkey".into(), n.to_string()]);
            }
            ["PAIRING", name, "numeric", _] => {
                pair_flags.insert(name.to_string(), vec!["--confirm".into()]);
            }
            ["PAIRING", name, "pin", p] => {
                pair_flags.insert(name.to_string(), vec!["--pin".into(), p.to_string()]);
            }
            ["BUS", address] => bus = address.to_string(),
            ["READY"] => break,
            _ => {}
        }
    }
    if bus.is_empty() {
        bail!(
            "hailan-sim did not start (see {})",
            dir.join("sim.log").display()
        );
    }
    // Keep draining the simulator's stdout so it never blocks.
    std::thread::spawn(move || for _ in lines {});

    // The gateway: fresh state each run (re-pairing is what an owner does).
    let gw_state = dir.join("gateway-state");
    let _ = std::fs::remove_dir_all(&gw_state);
    let key_file = dir.join("owner.key");
    let pw_file = dir.join("mqtt.password");
    write_private(
        &pw_file,
        e.mqtt_credentials
            .get(GATEWAY)
            .context("no gw-demo broker account")?,
    )?;
    let (host, port) = e
        .mqtt_url
        .trim_start_matches("mqtt://")
        .rsplit_once(':')
        .context("MQTT URL")?;
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "gateway_id = \"{GATEWAY}\"\nstate_dir = \"{}\"\n\n[mqtt]\nhost = \"{host}\"\nport = {port}\npassword_file = \"{}\"\n\n[keys]\ndata_key_file = \"{}\"\ndata_key_id = \"owner-key-demo\"\nzk_dir = \"{}\"\nallow_dev_keys = true\n\n[pipeline]\nwindow_size = 16\nwindow_max_ms = 5000\n\n[ble]\nbattery_interval_s = 10\n# the demo's nine devices each on a link of their own\nmax_connections = 10\n",
            gw_state.display(),
            pw_file.display(),
            key_file.display(),
            zk.display()
        ),
    )?;
    let gateway = |args: &[&str]| -> Result<String> {
        Cmd::new(bin("hailan-gateway"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus)
            .quiet()
            .output()
    };
    if !key_file.exists() {
        gateway(&["init"])?;
    }
    println!(
        "== pairing {} devices with `hailan-gateway pair`",
        addresses.len()
    );
    for (name, kind, address) in &addresses {
        let mut args = vec!["pair", address.as_str()];
        if let Some(flags) = pair_flags.get(name) {
            args.extend(flags.iter().map(String::as_str));
        }
        let out = gateway(&args)?;
        println!("   {name:<8} {kind:<8} {}", out.trim());
    }

    println!("== starting hailan-ingest and the gateway daemon");
    // Its own consumer group: a stale persistent session in the default
    // group (a test's, say) would be handed a share of the messages.
    let ingest_config = dir.join("ingest.toml");
    std::fs::write(
        &ingest_config,
        format!("[mqtt]\nsubscriptions = [\"$share/hailan-demo/hailan/v1/{GATEWAY}/up\"]\n"),
    )?;
    // Ingest logs in on the broker's service listener, not the gateways'.
    let (ingest_host, ingest_port) = e
        .mqtt_ingest_url
        .trim_start_matches("mqtt://")
        .rsplit_once(':')
        .context("MQTT ingest URL")?;
    // A persistent session keeps its subscriptions across restarts, whatever
    // the config says now: start the demo consumer's session afresh (one
    // clean-session connect discards it), so it holds exactly the filter above.
    let ingest_pw = e
        .mqtt_credentials
        .get("hailan-ingest")
        .context("ingest account")?;
    Cmd::new("mosquitto_sub")
        .args([
            "-h",
            ingest_host,
            "-p",
            ingest_port,
            "-u",
            "hailan-ingest",
            "-P",
            ingest_pw,
        ])
        .args([
            "-i",
            "hailan-ingest-demo",
            "-t",
            &format!("hailan/v1/{GATEWAY}/status"),
        ])
        // Exit once subscribed: the clean session has replaced the old one.
        .arg("-E")
        .quiet()
        .run()
        .context("resetting the demo consumer's broker session")?;
    let mut ingest_cmd = Command::new(&ingest);
    ingest_cmd
        .arg("--config")
        .arg(&ingest_config)
        .arg("run")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("HAILAN_INGEST__MQTT__HOST", ingest_host)
        .env("HAILAN_INGEST__MQTT__PORT", ingest_port)
        .env("HAILAN_INGEST__MQTT__PASSWORD", ingest_pw)
        .env("HAILAN_INGEST__MQTT__CLIENT_ID", "hailan-ingest-demo")
        .env("HAILAN_INGEST__ZK__KEYS_DIR", &zk)
        .env("HAILAN_INGEST__ZK__ALLOW_DEV_KEYS", "true")
        .env("HAILAN_INGEST__HTTP__LISTEN", "127.0.0.1:9464");
    let mut ingest_proc = Proc {
        name: "hailan-ingest",
        child: logged(&mut ingest_cmd, &dir.join("ingest.log"))?,
        keep: opts.keep,
    };
    // The clinician API: the only process with the owner's data key.
    let owner_key = std::fs::read_to_string(&key_file)
        .with_context(|| format!("reading {}", key_file.display()))?;
    let key_ring = dir.join("api-keys");
    write_private(
        &key_ring,
        &format!("owner-key-demo = {}\n", owner_key.trim()),
    )?;
    let mut api_cmd = Command::new(bin("hailan-api"));
    api_cmd
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("HAILAN_API__API__LISTEN", API_LISTEN)
        .env("HAILAN_API__API__KEY_RING", &key_ring)
        .env("HAILAN_API__ZK__KEYS_DIR", &zk);
    let mut api_proc = Proc {
        name: "hailan-api",
        child: logged(&mut api_cmd, &dir.join("api.log"))?,
        keep: opts.keep,
    };
    let mut gw_cmd = Command::new(bin("hailan-gateway"));
    gw_cmd
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus);
    let mut gw_proc = Proc {
        name: "hailan-gateway",
        child: logged(&mut gw_cmd, &dir.join("gateway.log"))?,
        keep: opts.keep,
    };

    // One measurement of each spot device right away (then their schedules).
    if let Some(stdin) = sim_stdin.as_mut() {
        for (name, kind, _) in &addresses {
            if matches!(
                kind.as_str(),
                "bp" | "temp" | "scale" | "bodycomp" | "glucose" | "spo2"
            ) {
                writeln!(stdin, "measure {name}")?;
            }
        }
        stdin.flush()?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }
    println!(
        "== running for {} s (Ctrl-C to stop early); logs in {}\n",
        opts.duration.as_secs(),
        dir.display()
    );
    let begin = Instant::now();
    let mosquitto_pid = std::fs::read_to_string(e.state_dir.join("mosquitto/mosquitto.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    let usage = Usage::start(vec![
        ("hailan-sim".into(), vec![sim.child.id()]),
        ("hailan-gateway".into(), vec![gw_proc.child.id()]),
        ("hailan-ingest run".into(), vec![ingest_proc.child.id()]),
        ("hailan-api".into(), vec![api_proc.child.id()]),
        ("mosquitto".into(), mosquitto_pid.into_iter().collect()),
        ("postgres (all)".into(), pids_named("postgres")),
        ("dbus-daemon (all)".into(), pids_named("dbus-daemon")),
    ]);
    let progress_sql = format!(
        "SELECT data_type, count(*), count(*) FILTER (WHERE verified) FROM {ROWS} h \
         JOIN iot_devices d ON d.id = h.device_id WHERE d.gateway_id = '{GATEWAY}' AND h.created_at >= '{started_at}' \
         GROUP BY data_type ORDER BY data_type"
    );
    while begin.elapsed() < opts.duration && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_secs(5));
        for p in [&mut sim, &mut ingest_proc, &mut gw_proc, &mut api_proc] {
            if let Some(status) = p.child.try_wait()? {
                bail!("{} exited early ({status}); see {}", p.name, dir.display());
            }
        }
        let stored = psql(e, &progress_sql).unwrap_or_default();
        let per_type: Vec<String> = stored
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                Some(format!("{} {}/{}", f.first()?, f.get(2)?, f.get(1)?))
            })
            .collect();
        let outbox = gateway(&["status", "--json"])
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .map_or("?".into(), |s| s["outbox"]["readings"].to_string());
        let quarantined = psql(
            e,
            &format!("SELECT count(*) FROM rejected_readings WHERE gateway_id = '{GATEWAY}' AND received_at >= '{started_at}'"),
        )
        .unwrap_or_default();
        let batteries = psql(
            e,
            &format!("SELECT string_agg(COALESCE(battery_level::text, '?') || '%', ' ' ORDER BY device_type) FROM iot_devices WHERE gateway_id = '{GATEWAY}' AND is_active"),
        )
        .unwrap_or_default();
        println!(
            "[{:>3} s] verified/stored: {} | outbox {outbox} | quarantined {} | batteries {}",
            begin.elapsed().as_secs(),
            if per_type.is_empty() {
                "-".into()
            } else {
                per_type.join(", ")
            },
            quarantined.trim(),
            batteries.trim()
        );
        std::io::stdout().flush()?;
    }

    let elapsed = begin.elapsed();
    let used = usage.report();
    // What the granted clinician sees through the API (RLS, decrypted, re-opened).
    let seen = http_get(
        API_LISTEN,
        &format!("/fhir/Observation?patient={owner_id}&_count=5000"),
        &token,
    )
    .ok()
    .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
    .map_or("?".into(), |b| match b["total"].as_u64() {
        Some(n) => n.to_string(),
        None => "5000 or more".into(),
    });
    if opts.keep {
        println!(
            "\n--keep: leaving hailan-sim, hailan-gateway, hailan-ingest run and api running (logs in {})",
            dir.display()
        );
    } else {
        println!(
            "\n== stopping: gateway (flushes windows, drains its outbox), then ingest, then the simulator"
        );
        gw_proc.terminate(Duration::from_secs(30));
        // Let ingest take what the gateway just published.
        std::thread::sleep(Duration::from_secs(2));
        ingest_proc.terminate(Duration::from_secs(30));
        if let Some(mut stdin) = sim_stdin.take() {
            let _ = writeln!(stdin, "quit");
        }
        sim.terminate(Duration::from_secs(10));
        api_proc.terminate(Duration::from_secs(10));
    }

    println!("\n== summary (rows stored during this run)");
    let summary = psql(
        e,
        &format!(
            "SELECT data_type, count(*), round(100.0 * count(*) FILTER (WHERE verified) / count(*), 1), \
             round((percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM h.created_at - h.recorded_at)))::numeric, 2), \
             round((percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM h.created_at - h.recorded_at)))::numeric, 2) \
             FROM {ROWS} h JOIN iot_devices d ON d.id = h.device_id \
             WHERE d.gateway_id = '{GATEWAY}' AND h.created_at >= '{started_at}' GROUP BY data_type ORDER BY data_type"
        ),
    )?;
    println!(
        "{:<18} {:>6} {:>9} {:>16} {:>16}",
        "partition", "rows", "verified", "p50 device→row", "p99 device→row"
    );
    println!(
        "(device→row: the reading's device time to its commit; glucose records were stored on the meter long before)"
    );
    for l in summary.lines() {
        let f: Vec<&str> = l.split('\t').collect();
        if let [t, n, v, p50, p99] = f.as_slice() {
            println!("{t:<18} {n:>6} {:>8}% {:>14} s {:>14} s", v, p50, p99);
        }
    }
    let total: u64 = summary
        .lines()
        .filter_map(|l| l.split('\t').nth(1)?.parse::<u64>().ok())
        .sum();
    println!(
        "\n{total} readings stored in {:.0} s: {:.1} readings/s",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    println!(
        "\n{:<20} {:>16} {:>14}",
        "process", "CPU (% of a core)", "peak RSS (MB)"
    );
    for (name, cpu, rss) in used {
        println!("{name:<20} {cpu:>16.1} {rss:>14.1}");
    }
    println!(
        "(CPU over the running phase; postgres and dbus-daemon summed over their processes, RSS of the largest)"
    );
    println!(
        "\nThe clinician {CLINICIAN} sees {seen} FHIR Observations of the owner through the API."
    );
    println!("Clinician page: http://{API_LISTEN}/#token={token}&patient={owner_id}");
    if !opts.keep {
        println!("(run with --keep to leave the API up and open it)");
    }
    Ok(())
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// GET `path` with a bearer token over HTTP/1.0; the body.
fn http_get(addr: &str, path: &str, token: &str) -> Result<String> {
    use std::io::Read;
    let mut s =
        std::net::TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").context("HTTP response")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_owned())
}
