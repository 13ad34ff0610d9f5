//! The `hailan-sim` binary as the gateway's tests will use it: a child
//! process on a private bus, controlled over stdin, writing ground truth.

mod common;

use btleplug::api::{Central, CentralEvent, Peripheral as _};
use common::*;
use futures::StreamExt;
use hailan_firmware_sim::TruthRecord;
use hailan_firmware_sim::harness::{SimHarness, SimProcess, isolated};
use std::path::Path;
use std::time::Duration;

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn harness_starts_bus_and_binary_and_kills_only_them() -> anyhow::Result<()> {
    let h = SimHarness::start(&["--devices", "hr=2,bp=1", "--seed", "5"])?;
    let names: Vec<_> = h.sim.devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["hr0", "hr1", "bp0"]);
    assert_eq!(h.sim.devices[2].address, "F0:4A:1A:02:00:00");
    let (bus_pid, sim_pid) = (h.bus.pid(), h.sim.pid());
    // org.bluez answers on the private bus
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let conn = zbus::connection::Builder::address(h.bus_address())?
            .build()
            .await?;
        let om = zbus::fdo::ObjectManagerProxy::builder(&conn)
            .destination("org.bluez")?
            .path("/")?
            .build()
            .await?;
        let objs = om.get_managed_objects().await?;
        anyhow::ensure!(
            objs.keys().any(|p| p.as_str() == "/org/bluez/hci0"),
            "no adapter"
        );
        anyhow::Ok(())
    })?;
    assert!(alive(bus_pid) && alive(sim_pid));
    drop(h);
    assert!(!alive(bus_pid), "dbus-daemon {bus_pid} left behind");
    assert!(!alive(sim_pid), "hailan-sim {sim_pid} left behind");
    Ok(())
}

#[test]
fn binary_serves_btleplug_takes_faults_on_stdin_and_logs_truth() -> anyhow::Result<()> {
    isolated(
        "binary_serves_btleplug_takes_faults_on_stdin_and_logs_truth",
        Duration::from_secs(120),
        |bus| async move {
            let dir = tempfile::tempdir()?;
            let gt = dir.path().join("truth.jsonl");
            let gt_arg = gt.display().to_string();
            let mut sim = SimProcess::spawn(
                Path::new(env!("CARGO_BIN_EXE_hailan-sim")),
                &bus,
                &[
                    "--devices",
                    "hr=2,glucose=1",
                    "--seed",
                    "9",
                    "--speed",
                    "10",
                    "--ground-truth",
                    &gt_arg,
                    "--faults",
                    "rssi=hr1:-91@0s",
                ],
            )?;
            let adapter = adapter().await?;
            let mut events = adapter.events().await?;
            let ps = scan(&adapter, &mut events, 3).await?;
            // the scheduled CLI fault took effect before discovery
            let hr1 = sim
                .devices
                .iter()
                .find(|d| d.name == "hr1")
                .expect("hr1")
                .clone();
            let rssi = by_address(&ps, &hr1.address)?
                .properties()
                .await?
                .and_then(|p| p.rssi);
            assert_eq!(rssi, Some(-91));
            let hr0 = sim
                .devices
                .iter()
                .find(|d| d.name == "hr0")
                .expect("hr0")
                .clone();
            let p = by_address(&ps, &hr0.address)?;
            connect(p).await?;
            let mut notes: Notes = p.notifications().await?;
            p.subscribe(&ch(p, 0x2A37)?).await?;
            let bytes = next_on(&mut notes, 0x2A37).await?;
            // the binary's ground truth file has it (written before it is sent)
            let lines = std::fs::read_to_string(&gt)?;
            let recs: Vec<TruthRecord> = lines
                .lines()
                .map(serde_json::from_str)
                .collect::<Result<_, _>>()?;
            let h = hex(&bytes);
            let t = recs
                .iter()
                .find(|r| r.address == hr0.address && r.bytes == h)
                .ok_or_else(|| anyhow::anyhow!("{h} not in ground truth file"))?;
            assert_eq!(decode::slots(0x2A37, &bytes)?, t.slots);
            // the glucose meter's stored records are in the truth too
            assert!(recs.iter().filter(|r| r.device == "glucose0").count() >= 8);

            assert!(sim.command("fault drop=nosuch").is_err());
            sim.command("measure glucose0")?;
            sim.command("fault drop=hr0")?;
            // the reply comes once the fault is applied
            assert!(!p.is_connected().await?);
            within("DeviceDisconnected after stdin fault", async {
                while let Some(e) = events.next().await {
                    if matches!(&e, CentralEvent::DeviceDisconnected(id) if *id == p.id()) {
                        return;
                    }
                }
            })
            .await?;
            let pid = sim.pid();
            drop(sim);
            assert!(!alive(pid));
            Ok(())
        },
    )
}

/// `hailan-sim run --private-bus`: starts its own bus, prints it, and on
/// `quit` takes it down again.
#[test]
fn private_bus_mode_prints_its_bus_and_cleans_up() -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Child, Command, Stdio};
    /// On failure too: ask the simulator to quit (so it removes its own bus),
    /// kill it only if it does not.
    struct Quit(Child);
    impl Drop for Quit {
        fn drop(&mut self) {
            if let Some(mut stdin) = self.0.stdin.take() {
                let _ = writeln!(stdin, "quit");
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_hailan-sim"))
        .args(["run", "--private-bus", "--devices", "scale=2"])
        .env_remove("DBUS_SYSTEM_BUS_ADDRESS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut child = Quit(child);
    let mut lines = BufReader::new(stdout).lines();
    let mut bus = None;
    let mut devices = 0;
    for line in lines.by_ref() {
        let line = line?;
        if let Some(b) = line.strip_prefix("BUS ") {
            bus = Some(b.to_string());
        }
        devices += usize::from(line.starts_with("DEVICE scale"));
        if line == "READY" {
            break;
        }
    }
    let bus = bus.expect("a BUS line before READY");
    assert_eq!(devices, 2);
    let sock = bus
        .strip_prefix("unix:path=")
        .expect("unix path address")
        .to_string();
    assert!(Path::new(&sock).exists());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let conn = zbus::connection::Builder::address(bus.as_str())?
            .build()
            .await?;
        let dbus = zbus::fdo::DBusProxy::new(&conn).await?;
        let owner = dbus.get_name_owner("org.bluez".try_into()?).await;
        anyhow::ensure!(owner.is_ok(), "org.bluez not owned on {bus}");
        anyhow::Ok(())
    })?;
    let mut stdin = child.0.stdin.take().expect("piped stdin");
    writeln!(stdin, "quit")?;
    let status = child.0.wait()?;
    assert!(status.success(), "{status}");
    assert!(!Path::new(&sock).exists(), "private bus socket left behind");
    Ok(())
}
