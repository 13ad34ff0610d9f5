//! `Ble::run` against the simulator: measurements and states flow, sessions
//! survive disconnect storms, a stalled scanner and a powered-off adapter,
//! and glucose records stored while disconnected are fetched after the cursor.

mod ble_common;

use ble_common::*;
use hailan_firmware_sim::DeviceKind as Sim;
use hailan_firmware_sim::harness::isolated;
use hailan_firmware_sim::{Fault, Simulator, TruthEvent};
use hailan_gateway::ble::{Ble, BleConfig, BleEvent};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Heart rate, blood pressure, thermometer and glucose meter: every kind's
/// values arrive as Measurement events that decode to the simulator's
/// ground truth; each device reports connected=true with a battery level.
#[test]
fn ble_run_delivers_measurements_matching_truth() -> anyhow::Result<()> {
    isolated(
        "ble_run_delivers_measurements_matching_truth",
        LIMIT,
        |bus| async move {
            init_tracing();
            let sim = Simulator::start(
                &bus,
                sim_config(&[
                    (Sim::Hr, 1),
                    (Sim::Bp, 1),
                    (Sim::Temp, 1),
                    (Sim::Glucose, 1),
                ]),
            )
            .await?;
            let cfg = BleConfig {
                battery_interval: Duration::from_secs(1),
                ..fast()
            };
            let ble = Ble::open(cfg).await?;
            for name in ["bp0", "glucose0"] {
                let d = sim.device(name).expect("device");
                ble.pair(&d.address, &answers(&d)).await?;
            }
            let names = ["hr0", "bp0", "temp0", "glucose0"];
            let devices = names
                .iter()
                .map(|n| known(&sim, n, -1))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut run = Running::start(ble, devices);
            let mut connected = std::collections::HashSet::new();
            let mut glucose_seqs = Vec::new();
            let mut checked = std::collections::HashSet::new();
            let mut measured = std::collections::HashSet::new();
            // Every device connects (with a battery level), then each kind delivers.
            let want = [
                ("hr0", 0x2A37u16),
                ("bp0", 0x2A36),
                ("bp0", 0x2A35),
                ("temp0", 0x2A1C),
                ("glucose0", 0x2A18),
            ];
            let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
            while checked.len() < want.len() || glucose_seqs.len() < 9 {
                let ev = tokio::time::timeout_at(deadline, run.events.recv())
                .await
                .map_err(|_| anyhow::anyhow!("timed out: connected {connected:?}, checked {checked:?}, glucose {glucose_seqs:?}"))?
                .ok_or_else(|| anyhow::anyhow!("event channel closed"))?;
                match ev {
                    BleEvent::State {
                        device_id,
                        connected: true,
                        battery,
                        firmware,
                        ..
                    } => {
                        assert!(
                            battery.is_some_and(|b| (1..=100).contains(&b)),
                            "{device_id}: {battery:?}"
                        );
                        assert!(firmware.as_deref().is_some_and(|f| f.starts_with("fw-")));
                        if connected.insert(device_id.clone())
                            && device_id != "hr0"
                            && measured.insert(device_id.clone())
                        {
                            // cuff, thermometer: measure now; meter: store a 9th record
                            sim.measure_now(&device_id)?;
                        }
                    }
                    BleEvent::State {
                        device_id,
                        connected: false,
                        ..
                    } => {
                        panic!("{device_id} disconnected unexpectedly");
                    }
                    BleEvent::NeedsRepair { device_id, reason } => {
                        panic!("{device_id} refused its bond: {reason}");
                    }
                    // No oximeter here: nothing asks whether values are stored.
                    BleEvent::Stored { receipt, .. } => receipt.settle(true),
                    BleEvent::Measurement {
                        device_id,
                        characteristic,
                        bytes,
                        ..
                    } => {
                        let d = sim.device(&device_id).expect("device");
                        if characteristic == 0x2A36 {
                            // intermediate cuff pressure: no reading, but proto decodes it
                            hailan_proto::gatt::IntermediateCuffPressure::decode(&bytes)?;
                        } else {
                            check_against_truth(&sim, &d.address, characteristic, &bytes)?;
                        }
                        if characteristic == 0x2A18 {
                            glucose_seqs.push(glucose_seq(&bytes)?);
                        }
                        checked.insert((device_id, characteristic));
                    }
                }
            }
            // 8 stored records (cursor -1 = all), then the one measured while
            // connected (fetched by the periodic RACP poll) — each exactly once.
            assert_eq!(glucose_seqs, (1..=9).collect::<Vec<u16>>());
            assert_eq!(connected.len(), 4);
            assert!(
                run.beat.age() < Duration::from_secs(3),
                "beat {:?}",
                run.beat.age()
            );
            run.stop().await?;
            assert!(!sim.is_connected("hr0"), "shutdown disconnects");
            Ok(())
        },
    )
}

/// Every device dropped, again and again: each time the session reports
/// connected=false, reconnects (connected=true) and values flow again.
#[test]
fn ble_run_survives_disconnect_storm() -> anyhow::Result<()> {
    isolated(
        "ble_run_survives_disconnect_storm",
        LIMIT,
        |bus| async move {
            init_tracing();
            let sim = Simulator::start(&bus, sim_config(&[(Sim::Hr, 2), (Sim::Temp, 1)])).await?;
            let ble = Ble::open(fast()).await?;
            let devices = vec![
                known(&sim, "hr0", -1)?,
                known(&sim, "hr1", -1)?,
                known(&sim, "temp0", -1)?,
            ];
            let mut run = Running::start(ble, devices);
            for n in ["hr0", "hr1", "temp0"] {
                run.state(n, true).await?;
            }
            let address = sim.device("hr0").expect("hr0").address;
            for round in 0..4 {
                sim.inject(Fault::Drop { device: "*".into() }).await?;
                run.state("hr0", false).await?;
                run.state("hr0", true).await?;
                let bytes = run.measurement("hr0", 0x2A37).await?;
                check_against_truth(&sim, &address, 0x2A37, &bytes)?;
                tracing::info!("storm round {round} survived");
            }
            // the others came back too, and a thermometer reading still arrives
            run.connected_now("temp0").await?;
            sim.measure_now("temp0")?;
            let bytes = run.measurement("temp0", 0x2A1C).await?;
            check_against_truth(
                &sim,
                &sim.device("temp0").expect("temp0").address,
                0x2A1C,
                &bytes,
            )?;
            run.measurement("hr1", 0x2A37).await?;
            assert!(run.stats.disconnections() >= 4, "{:?}", run.stats);
            run.stop().await
        },
    )
}

/// A link that drops between `Connect` and `ServicesResolved` (the device
/// walked away mid-connection) is noticed at once and connected again —
/// not left waiting for a service resolution that never comes (bluez-async
/// waits 30 s, longer than this test's step) while holding its connection
/// slot. Two slots, two straps: each holds one.
#[test]
fn ble_run_reconnects_when_the_link_drops_while_connecting() -> anyhow::Result<()> {
    isolated(
        "ble_run_reconnects_when_the_link_drops_while_connecting",
        LIMIT,
        |bus| async move {
            init_tracing();
            let sim = Simulator::start(&bus, sim_config(&[(Sim::Hr, 2)])).await?;
            let ble = Ble::open(BleConfig {
                max_connections: 2,
                ..fast()
            })
            .await?;
            let devices = vec![known(&sim, "hr0", -1)?, known(&sim, "hr1", -1)?];
            let mut run = Running::start(ble, devices);
            for n in ["hr0", "hr1"] {
                run.state(n, true).await?;
            }
            sim.inject(Fault::DropOnConnect {
                device: "hr0".into(),
                count: 2,
            })
            .await?;
            sim.inject(Fault::Drop { device: "*".into() }).await?;
            run.state("hr0", false).await?;
            run.state("hr0", true).await?;
            let bytes = run.measurement("hr0", 0x2A37).await?;
            check_against_truth(
                &sim,
                &sim.device("hr0").expect("hr0").address,
                0x2A37,
                &bytes,
            )?;
            run.connected_now("hr1").await?;
            run.measurement("hr1", 0x2A37).await?;
            run.stop().await
        },
    )
}

/// A scanner that stops reporting (Discovering stays true) is noticed and
/// restarted; a known device never seen before the stall is connected once
/// discovery reports again.
#[test]
fn ble_run_restarts_a_stalled_scanner() -> anyhow::Result<()> {
    isolated(
        "ble_run_restarts_a_stalled_scanner",
        LIMIT,
        |bus| async move {
            init_tracing();
            let sim = Simulator::start(&bus, sim_config(&[(Sim::Hr, 2)])).await?;
            // Stalled from the start: nothing is ever reported until it ends.
            sim.inject(Fault::StallDiscovery { duration: None }).await?;
            let cfg = BleConfig {
                scan_stall_after: Duration::from_millis(1500),
                ..fast()
            };
            let ble = Ble::open(cfg).await?;
            let mut run = Running::start(ble, vec![known(&sim, "hr0", -1)?]);
            let stats = run.stats.clone();
            tokio::time::timeout(
                STEP,
                stats.wait_for(|s| s.scan_restarts() >= 1 && s.adapter_resets() >= 1),
            )
            .await
            .map_err(|_| anyhow::anyhow!("watchdog did not act: {stats:?}"))?;
            assert!(!sim.is_connected("hr0"));
            sim.inject(Fault::ResumeDiscovery).await?;
            run.state("hr0", true).await?;
            let bytes = run.measurement("hr0", 0x2A37).await?;
            check_against_truth(
                &sim,
                &sim.device("hr0").expect("hr0").address,
                0x2A37,
                &bytes,
            )?;
            // Now healthy (hr1 advertises RSSI): no further cures.
            let (restarts, resets) = (stats.scan_restarts(), stats.adapter_resets());
            run.measurement("hr0", 0x2A37).await?;
            run.measurement("hr0", 0x2A37).await?;
            assert!(
                stats.adapter_resets() <= resets + 1,
                "{stats:?} (was {restarts}/{resets})"
            );
            run.stop().await
        },
    )
}

/// The adapter powers off (and refuses power for 2 s): links drop, the
/// session reports connected=false, retries, and reconnects once the adapter
/// is back; discovery is running again.
#[test]
fn ble_run_recovers_from_adapter_power_off() -> anyhow::Result<()> {
    isolated(
        "ble_run_recovers_from_adapter_power_off",
        LIMIT,
        |bus| async move {
            init_tracing();
            let sim = Simulator::start(&bus, sim_config(&[(Sim::Hr, 1), (Sim::Temp, 1)])).await?;
            let ble = Ble::open(fast()).await?;
            let mut run = Running::start(ble, vec![known(&sim, "hr0", -1)?]);
            run.state("hr0", true).await?;
            run.measurement("hr0", 0x2A37).await?;
            sim.inject(Fault::PowerOff {
                adapter: None,
                duration: Some(Duration::from_secs(2)),
            })
            .await?;
            run.state("hr0", false).await?;
            run.state("hr0", true).await?;
            let bytes = run.measurement("hr0", 0x2A37).await?;
            check_against_truth(
                &sim,
                &sim.device("hr0").expect("hr0").address,
                0x2A37,
                &bytes,
            )?;
            // Discovery runs again: a device forgotten-then-added is found and connected.
            run.devices
                .send_replace(vec![known(&sim, "hr0", -1)?, known(&sim, "temp0", -1)?]);
            run.state("temp0", true).await?;
            run.stop().await
        },
    )
}

/// Glucose records stored while the meter was out of reach are fetched on
/// reconnect: exactly those after the cursor, none before it.
#[test]
fn ble_run_fetches_glucose_records_after_the_cursor() -> anyhow::Result<()> {
    isolated(
        "ble_run_fetches_glucose_records_after_the_cursor",
        LIMIT,
        |bus| async move {
            init_tracing();
            let sim = Simulator::start(&bus, sim_config(&[(Sim::Glucose, 1)])).await?;
            let ble = Ble::open(fast()).await?;
            let glucose0 = sim.device("glucose0").expect("glucose0");
            let address = glucose0.address.clone();
            ble.pair(&address, &answers(&glucose0)).await?;
            // The gateway already holds records 1..=5.
            let dev = known(&sim, "glucose0", 5)?;
            let cursor = dev.glucose_cursor.clone();
            let mut run = Running::start(ble, vec![dev]);
            let mut got = Vec::new();
            while got.len() < 3 {
                let b = run.measurement("glucose0", 0x2A18).await?;
                check_against_truth(&sim, &address, 0x2A18, &b)?;
                got.push(glucose_seq(&b)?);
            }
            assert_eq!(got, vec![6, 7, 8]);
            cursor.store(8, Ordering::Release); // the pipeline committed them

            // Out of reach: dropped, and refusing connections for now.
            sim.inject(Fault::RefuseConnects {
                device: Some("glucose0".into()),
                duration: Duration::from_secs(600),
            })
            .await?;
            sim.inject(Fault::Drop {
                device: "glucose0".into(),
            })
            .await?;
            run.state("glucose0", false).await?;
            let mut truth = sim.subscribe_truth();
            for _ in 0..2 {
                sim.measure_now("glucose0")?;
                tokio::time::timeout(STEP, async {
                    while let Ok(r) = truth.recv().await {
                        if r.device == "glucose0" && r.event == TruthEvent::Stored {
                            return;
                        }
                    }
                })
                .await?;
            }
            // Back in reach.
            sim.inject(Fault::RefuseConnects {
                device: Some("glucose0".into()),
                duration: Duration::ZERO,
            })
            .await?;
            run.state("glucose0", true).await?;
            let mut got = Vec::new();
            while got.len() < 2 {
                let b = run.measurement("glucose0", 0x2A18).await?;
                check_against_truth(&sim, &address, 0x2A18, &b)?;
                got.push(glucose_seq(&b)?);
            }
            assert_eq!(got, vec![9, 10], "records after cursor 8 only");
            run.stop().await
        },
    )
}
