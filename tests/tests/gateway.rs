//! The gateway end to end: `hailan-sim` (fake BlueZ on a private D-Bus) →
//! the real `hailan-gateway` (btleplug, pipeline, outbox, publisher) → the
//! real Mosquitto → a collector; compared with the simulator's ground truth.

use anyhow::{Context, Result};
use hailan_firmware_sim::harness::SimHarness;
use hailan_proto::envelope::Body;
use hailan_tests::DevZk;
use hailan_tests::gateway::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

async fn notify_socket(
    dir: &std::path::Path,
) -> Result<(
    std::path::PathBuf,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
)> {
    let path = dir.join("notify.sock");
    let sock = tokio::net::UnixDatagram::bind(&path)?;
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = got.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf).await {
            if let Ok(mut v) = sink.lock() {
                v.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    });
    Ok((path, got))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reading_arrives_sealed_proven_in_order_and_systemd_is_told() -> Result<()> {
    let zk = DevZk::new()?;
    let tmp = tempfile::tempdir()?;
    let truth_path = tmp.path().join("truth.jsonl");
    let broker = Broker::shared();
    let metrics_port = hailan_tests::free_port()?;
    let (mut sim, rig, devices) = sim_and_pair(
        "hr=1,bp=1,spo2=1,temp=1,glucose=1,scale=1",
        &truth_path,
        "gw-e2e-1",
        &broker,
        &zk,
        &format!(
            "[pipeline]\nwindow_size = 4\nwindow_max_ms = 1500\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"
        ),
        &[],
    )?;
    assert_eq!(devices.len(), 6);
    let listed: serde_json::Value = serde_json::from_str(&rig.cli(&["devices", "--json"])?)?;
    assert_eq!(listed.as_array().map(Vec::len), Some(6), "{listed}");
    let collector = Collector::start(&broker, &rig.gateway_id).await?;
    let (sock, notes) = notify_socket(tmp.path()).await?;
    let sock_s = sock.display().to_string();
    let mut gw = rig.start(&[("NOTIFY_SOCKET", &sock_s), ("WATCHDOG_USEC", "2000000")])?;

    collector
        .wait_for(Duration::from_secs(60), "every device connected", |e| {
            all_connected(e, &devices)
        })
        .await?;
    // From here on every value the devices send must arrive.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let from = line_count(&truth_path);
    for round in 0..2 {
        for name in ["bp0", "temp0", "scale0", "glucose0", "spo20"] {
            sim.sim
                .command(&format!("measure {name}"))
                .with_context(|| format!("round {round}"))?;
        }
        let hr_id = id_of_kind(&devices, "hr")?;
        let want = 6 * (round + 1);
        collector
            .wait_for(Duration::from_secs(60), "heart-rate readings", |e| {
                readings_of(e, &hr_id).len() >= want
            })
            .await?;
    }
    // The meter stores records; the gateway fetches them (RACP) on its poll.
    let glucose_id = id_of_kind(&devices, "glucose")?;
    let stored_on_meter = || {
        read_truth(&truth_path)
            .map(|t| {
                t.iter()
                    .filter(|t| t.device == "glucose0" && t.event == "stored")
                    .count()
            })
            .unwrap_or(usize::MAX)
    };
    collector
        .wait_for(
            Duration::from_secs(30),
            "every stored glucose record",
            |e| readings_of(e, &glucose_id).len() >= stored_on_meter(),
        )
        .await?;
    // The meter may store another before the stop: that one waits on it
    // for the next link (RACP after the cursor), it is not lost.
    let stored_before = stored_on_meter();
    // Prometheus: readings queued and acknowledged are counted.
    let (code, text) = hailan_tests::http_get(metrics_port, "/metrics").await?;
    assert_eq!(code, 200);
    let counter = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    assert!(
        counter("hailan_gateway_readings_queued_total") >= 12.0,
        "{text}"
    );
    assert!(counter("hailan_gateway_acked_total") >= 1.0, "{text}");
    assert_eq!(counter("hailan_gateway_broker_connected"), 1.0, "{text}");
    // Right clocks, plausible values: nothing flagged, nothing unproven.
    assert_eq!(counter("hailan_gateway_clock_flagged_total"), 0.0, "{text}");
    assert!(
        text.contains("hailan_gateway_clock_flagged_total"),
        "{text}"
    );
    assert_eq!(counter("hailan_gateway_unproven_total"), 0.0, "{text}");
    let status = rig.status()?;
    assert_eq!(status["daemon_running"], true, "{status}");
    assert_eq!(status["devices"], 6, "{status}");
    let until = line_count(&truth_path);
    let stopped = Instant::now();
    let exit = gw.terminate()?;
    assert!(exit.success(), "SIGTERM exit: {exit}");
    assert!(
        stopped.elapsed() < Duration::from_secs(15),
        "stop took {:?}",
        stopped.elapsed()
    );
    // After a clean stop the outbox is empty and every seq it assigned was published.
    let (envelopes, _) = after_stop(&rig, &collector).await?;
    let status = rig.status()?;
    assert_eq!(status["outbox"]["entries"], 0, "{status}");
    assert_eq!(status["daemon_running"], false, "{status}");

    let truth = read_truth(&truth_path)?;
    let checked = check_against_truth(&rig, &envelopes, &devices, &truth, from..until)?;
    assert!(checked >= 30, "only {checked} readings checked");
    let groups = verify_all(&zk, &rig.gateway_id, &envelopes)?;
    assert!(groups > 0);
    // Every stored glucose record arrived exactly once (RACP; by_seq in
    // check_against_truth refuses a doubled seq): all stored before the
    // wait above, and none that was never stored.
    let stored = truth
        .iter()
        .filter(|t| t.device == "glucose0" && t.event == "stored")
        .count();
    let got = readings_of(&envelopes, &glucose_id).len();
    assert!(
        (stored_before..=stored).contains(&got),
        "glucose records published: {got}, stored on the meter: {stored_before} before the stop, {stored} in all"
    );
    // Battery and connection states arrived for every device.
    for id in devices.values() {
        assert!(
            envelopes.iter().any(|e| matches!(&e.body, Body::DeviceState(s) if &s.device_id == id && s.battery_level.is_some())),
            "no battery state for {id}"
        );
    }
    // The status topic: online while up, offline after the clean stop (retained).
    let statuses: Vec<String> = collector
        .snapshot()
        .iter()
        .filter(|m| m.topic.ends_with("/status"))
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    assert!(statuses.contains(&"online".to_owned()), "{statuses:?}");
    assert_eq!(
        statuses.last().map(String::as_str),
        Some("offline"),
        "{statuses:?}"
    );
    // systemd: READY=1 once up, WATCHDOG=1 while alive, STATUS= lines, STOPPING=1.
    let notes = notes.lock().map(|v| v.join("\n")).unwrap_or_default();
    for needle in ["READY=1", "WATCHDOG=1", "STATUS=", "STOPPING=1"] {
        assert!(notes.contains(needle), "no {needle} in:\n{notes}");
    }
    drop(gw);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_stream_then_restart_loses_and_doubles_nothing() -> Result<()> {
    let zk = DevZk::new()?;
    let tmp = tempfile::tempdir()?;
    let truth_path = tmp.path().join("truth.jsonl");
    let broker = Broker::shared();
    let (mut sim, rig, devices) = sim_and_pair(
        "hr=2,glucose=1",
        &truth_path,
        "gw-e2e-2",
        &broker,
        &zk,
        "[pipeline]\nwindow_size = 4\nwindow_max_ms = 1000\n",
        &[],
    )?;
    let collector = Collector::start(&broker, &rig.gateway_id).await?;
    let mut gw = rig.start(&[])?;
    let hr: Vec<String> = ids_of_kind(&devices, "hr");
    collector
        .wait_for(Duration::from_secs(60), "heart-rate readings", |e| {
            hr.iter().all(|id| readings_of(e, id).len() >= 8)
        })
        .await?;
    gw.kill9()?;
    // Records stored on the meter while the gateway is down come on reconnect.
    sim.sim.command("measure glucose0")?;
    sim.sim.command("measure glucose0")?;
    let mut gw = rig.start(&[])?;
    let before: HashMap<String, usize> = hr
        .iter()
        .map(|id| (id.clone(), readings_of(&collector.envelopes(), id).len()))
        .collect();
    collector
        .wait_for(Duration::from_secs(60), "readings after the restart", |e| {
            hr.iter()
                .all(|id| readings_of(e, id).len() >= before[id] + 8)
        })
        .await?;
    let exit = gw.terminate()?;
    assert!(exit.success());
    let (envelopes, next) = after_stop(&rig, &collector).await?;
    // Contiguous seqs, any duplicate byte-identical (ingest's key absorbs it),
    // every value from the ground truth, every glucose record exactly once.
    let truth = read_truth(&truth_path)?;
    check_against_truth(&rig, &envelopes, &devices, &truth, 0..0)?;
    for (id, n) in &next {
        assert_eq!(by_seq(&envelopes, id)?.len() as u64, n - 1, "{id}");
    }
    let glucose_id = id_of_kind(&devices, "glucose")?;
    let stored = truth
        .iter()
        .filter(|t| t.device == "glucose0" && t.event == "stored")
        .count();
    assert_eq!(by_seq(&envelopes, &glucose_id)?.len(), stored);
    verify_all(&zk, &rig.gateway_id, &envelopes)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_is_buffered_and_delivered_in_order() -> Result<()> {
    let zk = DevZk::new()?;
    let tmp = tempfile::tempdir()?;
    let truth_path = tmp.path().join("truth.jsonl");
    let mut mosquitto = PrivateMosquitto::start()?;
    let broker = mosquitto.broker();
    let (_sim, rig, devices) = sim_and_pair(
        "hr=2,temp=1",
        &truth_path,
        "gw-e2e-3",
        &broker,
        &zk,
        "[pipeline]\nwindow_size = 4\nwindow_max_ms = 1000\n",
        &[],
    )?;
    let (collector, mut gw) =
        start_all_connected(&rig, &broker, &devices, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let from = line_count(&truth_path);
    mosquitto.stop()?;
    let outage = Duration::from_secs(
        std::env::var("HAILAN_OUTAGE_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    // During the outage readings pile up in the outbox, visibly.
    let start = Instant::now();
    let mut peak = 0u64;
    while start.elapsed() < outage {
        let s = rig.status()?;
        peak = peak.max(s["outbox"]["readings"].as_u64().unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        peak >= 8,
        "outbox never grew during the outage (peak {peak})"
    );
    mosquitto.start_again()?;
    let until = line_count(&truth_path);
    gw.wait_log("connected to the broker", Duration::from_secs(60))?;
    collector
        .wait_for(Duration::from_secs(60), "the backlog", |e| {
            let truth = read_truth(&truth_path).unwrap_or_default();
            check_against_truth(&rig, e, &devices, &truth, from..until).is_ok()
        })
        .await?;
    let exit = gw.terminate()?;
    assert!(exit.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_scanner_and_a_disconnect_storm_are_survived_without_a_restart() -> Result<()> {
    let zk = DevZk::new()?;
    let tmp = tempfile::tempdir()?;
    let truth_path = tmp.path().join("truth.jsonl");
    let broker = Broker::shared();
    // hr2 stays unpaired: it keeps advertising, so a silent scanner is a stall.
    let (mut sim, rig, devices) = sim_and_pair(
        "hr=3,temp=1",
        &truth_path,
        "gw-e2e-4",
        &broker,
        &zk,
        "[pipeline]\nwindow_size = 4\nwindow_max_ms = 1000\n",
        &["hr2"],
    )?;
    assert_eq!(devices.len(), 3);
    let (collector, mut gw) =
        start_all_connected(&rig, &broker, &devices, Duration::from_secs(60)).await?;
    sim.sim.command("fault stall+8s")?;
    gw.wait_log(
        "(stalled scanner): restarting discovery",
        Duration::from_secs(30),
    )?;
    for round in 1..=3 {
        sim.sim.command("fault drop=*")?;
        collector
            .wait_for(
                Duration::from_secs(60),
                "every device back after a drop",
                |e| {
                    devices.values().all(|id| {
                        states(e, id, false) >= round && last_connected(e, id) == Some(true)
                    })
                },
            )
            .await
            .with_context(|| format!("storm round {round}"))?;
    }
    let hr: Vec<String> = ids_of_kind(&devices, "hr");
    let before: HashMap<String, usize> = hr
        .iter()
        .map(|id| (id.clone(), readings_of(&collector.envelopes(), id).len()))
        .collect();
    sim.sim.command("measure temp0")?;
    collector
        .wait_for(Duration::from_secs(60), "readings after the storm", |e| {
            hr.iter()
                .all(|id| readings_of(e, id).len() >= before[id] + 8)
        })
        .await?;
    let exit = gw.terminate()?;
    assert!(exit.success());
    let (envelopes, _) = after_stop(&rig, &collector).await?;
    let truth = read_truth(&truth_path)?;
    check_against_truth(&rig, &envelopes, &devices, &truth, 0..0)?;
    verify_all(&zk, &rig.gateway_id, &envelopes)?;
    assert!(
        gw.log_text().contains("hailan-gateway 0.1.0 starting"),
        "one daemon run"
    );
    assert_eq!(gw.log_text().matches(" starting gateway=").count(), 1);
    Ok(())
}

/// The shipped systemd units pass `systemd-analyze verify`, and a broken one
/// does not (so the check can fail).
#[test]
fn systemd_units_verify() -> Result<()> {
    std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .context("systemd-analyze is missing: `cargo xtask services` installs it (apt-get install systemd)")?;
    let dir = tempfile::tempdir()?;
    let verify = |name: &str, text: &str| -> Result<std::process::Output> {
        let path = dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(std::process::Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()?)
    };
    let root = hailan_tests::repo_root();
    for (unit, bin) in [
        ("hailan-gateway.service", "hailan-gateway"),
        ("hailan-ingest.service", "hailan-ingest"),
    ] {
        let text = std::fs::read_to_string(root.join("deploy").join(unit))?;
        let built = hailan_tests::gateway::workspace_binary(bin)?;
        let text = text.replace(
            &format!("/usr/local/bin/{bin}"),
            &built.display().to_string(),
        );
        let out = verify(unit, &text)?;
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{unit}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let broken = verify(
            &format!("broken-{unit}"),
            &text.replace("Restart=on-failure", "Restart=sometimes"),
        )?;
        assert!(
            !broken.stderr.is_empty(),
            "a bad Restart= value must be reported"
        );
    }
    Ok(())
}

/// The owner's CLI without the daemon: init, scan, pair, devices, status, forget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_cli_scans_pairs_lists_and_forgets() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let zk = DevZk::new()?;
    let sim = SimHarness::start(&["--devices", "hr=1,bp=1", "--seed", "3"])?;
    let rig = GatewayRig::new("gw-e2e-5", sim.bus_address(), &Broker::shared(), &zk, "")?;
    // init writes a fresh data key (mode 0600) and keeps an existing one.
    let key = rig.dir.path().join("owner.key");
    std::fs::remove_file(&key)?;
    rig.cli(&["init"])?;
    assert_eq!(std::fs::metadata(&key)?.permissions().mode() & 0o777, 0o600);
    let first = std::fs::read_to_string(&key)?;
    assert!(rig.cli(&["init"])?.contains("exists, kept"));
    assert_eq!(std::fs::read_to_string(&key)?, first);

    let scan = |rig: &GatewayRig| -> Result<serde_json::Value> {
        Ok(serde_json::from_str(&rig.cli(&[
            "scan",
            "--duration",
            "2",
            "--json",
        ])?)?)
    };
    let found = scan(&rig)?;
    let found = found.as_array().context("scan --json is an array")?;
    assert_eq!(found.len(), 2, "{found:?}");
    let bp = &sim
        .sim
        .devices
        .iter()
        .find(|d| d.name == "bp0")
        .context("bp0")?
        .address;
    let cuff = found
        .iter()
        .find(|d| d["address"] == bp.as_str())
        .context("cuff found")?;
    assert_eq!(cuff["kinds"][0], "blood_pressure_monitor");
    assert_eq!(cuff["paired"], false);

    let paired = rig.pair(bp)?;
    assert_eq!(paired["bonded"], true, "a cuff is bonded: {paired}");
    let again = rig.cli(&["pair", bp]);
    assert!(format!("{again:?}").contains("already paired"), "{again:?}");
    let found = scan(&rig)?;
    let cuff = found
        .as_array()
        .and_then(|a| a.iter().find(|d| d["address"] == bp.as_str()).cloned())
        .context("cuff found again")?;
    assert_eq!(cuff["paired"], true);

    // No daemon: status says so and exits 3, like `systemctl is-active`.
    let out = std::process::Command::new(&rig.bin)
        .args(["--config", &rig.config.display().to_string(), "status"])
        .output()?;
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).contains("not running"));
    let status = rig.status()?;
    assert_eq!(
        status["outbox"]["entries"], 1,
        "the registration waits: {status}"
    );

    let table = rig.cli(&["devices"])?;
    assert!(
        table.contains(bp.as_str()) && table.contains("blood_pressure_monitor"),
        "{table}"
    );
    rig.cli(&["forget", bp])?;
    let listed: serde_json::Value = serde_json::from_str(&rig.cli(&["devices", "--json"])?)?;
    assert_eq!(listed.as_array().map(Vec::len), Some(0));
    assert_eq!(
        rig.status()?["outbox"]["entries"],
        0,
        "its registration went too"
    );
    // A bad config names the key.
    let bad = rig.dir.path().join("bad.toml");
    std::fs::write(&bad, "gateway_id = \"gw\"\n[outbox]\nquota_mb = 0\n")?;
    let out = std::process::Command::new(&rig.bin)
        .args(["--config", &bad.display().to_string(), "devices"])
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("outbox.quota_mb"));
    Ok(())
}

/// The production transport: the gateway publishes over TLS, trusting the
/// broker through `mqtt.ca_file`; a gateway that trusts another CA does not
/// connect (and says why), and keeps its readings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_publishes_over_tls_and_refuses_an_untrusted_broker() -> Result<()> {
    let zk = DevZk::new()?;
    let tmp = tempfile::tempdir()?;
    let (mosquitto, tls_port) = PrivateMosquitto::start_with_tls()?;
    let plain = mosquitto.broker();
    let (_sim, rig, devices) = sim_and_pair(
        "hr=1",
        &tmp.path().join("truth.jsonl"),
        "gw-e2e-7",
        &plain,
        &zk,
        "[pipeline]\nwindow_size = 4\nwindow_max_ms = 1000\n",
        &[],
    )?;
    let hr = devices.values().next().context("hr0")?.clone();
    let collector = Collector::start(&plain, &rig.gateway_id).await?;
    let ca = mosquitto.dir().join("ca.pem").display().to_string();
    let port = tls_port.to_string();
    // A CA the broker's certificate is not signed by: no connection.
    let other_ca = test_ca(tmp.path(), "other", "other-ca")?;
    let other = other_ca.display().to_string();
    let mut gw = rig.start(&[
        ("HAILAN_GATEWAY__MQTT__PORT", &port),
        ("HAILAN_GATEWAY__MQTT__CA_FILE", &other),
    ])?;
    gw.wait_log("broker connection lost", Duration::from_secs(30))?;
    assert!(!gw.log_text().contains("connected to the broker"));
    gw.terminate()?;
    // The right CA: readings flow over TLS.
    let mut gw = rig.start(&[
        ("HAILAN_GATEWAY__MQTT__PORT", &port),
        ("HAILAN_GATEWAY__MQTT__CA_FILE", &ca),
    ])?;
    collector
        .wait_for(Duration::from_secs(60), "readings over TLS", |e| {
            readings_of(e, &hr).len() >= 8
        })
        .await?;
    assert!(gw.log_text().contains(&format!("port={tls_port}")));
    let exit = gw.terminate()?;
    assert!(exit.success());
    Ok(())
}

/// Home Assistant discovery (off by default): each device's battery and link
/// are announced and kept current, retained, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_assistant_sees_battery_and_link_never_a_health_value() -> Result<()> {
    let zk = DevZk::new()?;
    let tmp = tempfile::tempdir()?;
    let mosquitto = PrivateMosquitto::start()?;
    let broker = mosquitto.broker();
    let gw_id = "gw-e2e-5";
    let (mut sim, rig, devices) = sim_and_pair(
        "hr=1,temp=1",
        &tmp.path().join("truth.jsonl"),
        gw_id,
        &broker,
        &zk,
        "[home_assistant]\nenabled = true\n",
        &[],
    )?;
    // Home Assistant's account of the shipped ACL (not the gateway's own:
    // the broker makes the account the client id, so a second connection
    // as the gateway would push its daemon off).
    let ha = Collector::start_as(
        &broker,
        "homeassistant",
        gw_id,
        vec![
            format!("homeassistant/+/{gw_id}/#"),
            format!("hailan/v1/{gw_id}/ha/#"),
        ],
    )
    .await?;
    let mut gw = rig.start(&[])?;
    let temp = id_of_kind(&devices, "temp")?;
    let state_of = |id: &str| -> Option<serde_json::Value> {
        ha.snapshot()
            .iter()
            .rev()
            .find(|m| m.topic == format!("hailan/v1/{gw_id}/ha/{id}"))
            .and_then(|m| serde_json::from_slice(&m.payload).ok())
    };
    let start = std::time::Instant::now();
    while !devices
        .values()
        .all(|id| state_of(id).is_some_and(|s| s["connected"] == true))
    {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(60),
            "no connected state for every device"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let msgs = ha.snapshot();
    for id in devices.values() {
        for (component, suffix) in [("sensor", "battery"), ("binary_sensor", "link")] {
            let topic = format!("homeassistant/{component}/{gw_id}/{id}_{suffix}/config");
            let cfg = msgs
                .iter()
                .find(|m| m.topic == topic)
                .with_context(|| topic.clone())?;
            let v: serde_json::Value = serde_json::from_slice(&cfg.payload)?;
            assert_eq!(v["state_topic"], format!("hailan/v1/{gw_id}/ha/{id}"));
        }
    }
    // Battery changes reach Home Assistant.
    sim.sim.command("fault battery=temp0:15")?;
    let start = std::time::Instant::now();
    while state_of(&temp).is_none_or(|s| s["battery"] != 15) {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(30),
            "battery 15 not announced"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Only battery and link: no reading, no value field, nothing sealed.
    for m in ha.snapshot().iter().filter(|m| m.topic.contains("/ha/")) {
        let v: serde_json::Value = serde_json::from_slice(&m.payload)?;
        let keys: Vec<&String> = v.as_object().context("object")?.keys().collect();
        assert_eq!(keys, ["battery", "connected"], "{v}");
    }
    gw.terminate()?;
    Ok(())
}
