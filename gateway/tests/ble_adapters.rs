//! `Ble::run` over two adapters (`ble.adapters`) against a simulator with
//! two: devices spread over both; when one powers off, its devices move to
//! the other and nothing they sent is lost; a cuff bonded only through the
//! adapter that went off waits for it (never linked through a stranger
//! adapter, never marked needs_repair) and delivers once it is back.

mod ble_common;

use ble_common::*;
use hailan_firmware_sim::DeviceKind as Sim;
use hailan_firmware_sim::harness::isolated;
use hailan_firmware_sim::{Fault, SimConfig, Simulator, TruthEvent};
use hailan_gateway::ble::{AdapterChoice, Ble, BleConfig, BleEvent};
use std::collections::HashMap;
use std::time::Duration;

fn two_adapters() -> BleConfig {
    BleConfig {
        adapters: AdapterChoice::Named(vec!["hci0".into(), "hci1".into()]),
        ..fast()
    }
}

/// The simulator with these devices and two adapters.
async fn two_adapter_sim(bus: &str, devices: &[(Sim, usize)]) -> anyhow::Result<Simulator> {
    Simulator::start(
        bus,
        SimConfig {
            adapters: 2,
            ..sim_config(devices)
        },
    )
    .await
}

/// `Ble::run` over `names`, once every one of them is connected.
async fn run_connected(ble: Ble, sim: &Simulator, names: &[&str]) -> anyhow::Result<Running> {
    let devices = names
        .iter()
        .map(|n| known(sim, n, -1))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut run = Running::start(ble, devices);
    for n in names {
        run.connected_now(n).await?;
    }
    Ok(run)
}

/// Pair the simulated `name` through `adapter` alone (BlueZ keeps the bond
/// on that adapter).
async fn pair_through(sim: &Simulator, name: &str, adapter: &str) -> anyhow::Result<()> {
    let d = sim.device(name).expect("simulated device");
    Ble::open(BleConfig {
        adapters: AdapterChoice::Named(vec![adapter.into()]),
        ..fast()
    })
    .await?
    .pair(&d.address, &answers(&d))
    .await?;
    Ok(())
}

#[test]
fn devices_spread_over_two_adapters_and_move_off_one_powered_off() -> anyhow::Result<()> {
    isolated(
        "devices_spread_over_two_adapters_and_move_off_one_powered_off",
        LIMIT,
        |bus| async move {
            init_tracing();
            let sim = two_adapter_sim(&bus, &[(Sim::Hr, 2), (Sim::Temp, 1), (Sim::Bp, 2)]).await?;
            let ble = Ble::open(two_adapters()).await?;
            assert_eq!(ble.adapter_names(), ["hci0", "hci1"]);
            // bp0 is bonded through hci0 only; bp1 through both.
            for name in ["bp0", "bp1"] {
                let d = sim.device(name).expect("cuff");
                ble.pair(&d.address, &answers(&d)).await?;
            }
            pair_through(&sim, "bp1", "hci1").await?;

            let names = ["hr0", "hr1", "temp0", "bp0", "bp1"];
            let mut run = run_connected(ble, &sim, &names).await?;
            // Spread: both adapters hold links, bp0 only through hci0.
            assert!(
                sim.links_on(0) > 0 && sim.links_on(1) > 0,
                "links: hci0 {}, hci1 {}",
                sim.links_on(0),
                sim.links_on(1)
            );
            assert_eq!(sim.linked_through("bp0"), Some(0));
            // From here on every event is kept: what was sent from now on
            // must all arrive.
            let from = std::time::Instant::now();
            let mut got: HashMap<(String, u16), Vec<Vec<u8>>> = HashMap::new();
            let mut keep = |ev: &BleEvent| {
                if let BleEvent::Measurement {
                    device_id,
                    characteristic,
                    bytes,
                    ..
                } = ev
                {
                    got.entry((device_id.clone(), *characteristic))
                        .or_default()
                        .push(bytes.clone());
                }
            };
            // Straps stream on both adapters.
            for strap in ["hr0", "hr1"] {
                run.next(strap, |ev| {
                    keep(ev);
                    matches!(ev, BleEvent::Measurement { device_id, .. } if device_id == strap)
                        .then_some(())
                })
                .await?;
            }

            // hci0 powers off (rfkill-blocked for 4 s: no one can power it on).
            sim.inject(Fault::PowerOff {
                adapter: Some("hci0".into()),
                duration: Some(Duration::from_secs(4)),
            })
            .await?;
            assert_eq!(sim.links_on(0), 0);
            for n in ["temp0", "bp0", "bp1"] {
                sim.measure_now(n)?;
            }
            // While hci0 is off: the straps, the thermometer and bp1 are all
            // served through hci1 and keep delivering.
            let mut since_off: HashMap<&str, bool> = HashMap::new();
            let expected = [
                ("hr0", 0x2A37u16),
                ("hr1", 0x2A37),
                ("temp0", 0x2A1C),
                ("bp1", 0x2A35),
            ];
            while since_off.len() < expected.len() {
                let (device, c) = run
                    .next("a value through hci1 from each movable device", |ev| {
                        keep(ev);
                        match ev {
                            BleEvent::Measurement {
                                device_id,
                                characteristic,
                                ..
                            } => Some((device_id.clone(), *characteristic)),
                            BleEvent::NeedsRepair { device_id, .. } => {
                                panic!("{device_id} marked needs_repair")
                            }
                            _ => None,
                        }
                    })
                    .await?;
                if let Some((d, _)) = expected.iter().find(|e| e.0 == device && e.1 == c) {
                    assert_eq!(sim.linked_through(d), Some(1), "{d} moved to hci1");
                    since_off.insert(d, true);
                }
            }
            assert_ne!(
                sim.linked_through("bp0"),
                Some(1),
                "bp0 has no bond through hci1"
            );
            // hci0 comes back: bp0 delivers what it took meanwhile, through hci0.
            run.next("bp0's blood pressure", |ev| {
                keep(ev);
                matches!(ev, BleEvent::Measurement { device_id, characteristic: 0x2A35, .. } if device_id == "bp0")
                    .then_some(())
            })
            .await?;
            assert_eq!(sim.linked_through("bp0"), Some(0));
            let until = std::time::Instant::now();
            // What was sent before `until` and is still on its way.
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while let Some(ev) = run.events.recv().await {
                    keep(&ev);
                }
            })
            .await;
            run.stop().await?;

            // Nothing lost: every value the simulator sent reached the gateway.
            for r in sim.truth() {
                let sent_in_window = r.sent_at.is_some_and(|t| from <= t && t <= until);
                if !matches!(r.event, TruthEvent::Notify | TruthEvent::Indicate) || !sent_in_window
                {
                    continue;
                }
                let c = u16::from_str_radix(&r.characteristic, 16)?;
                if c == 0x2A19 || c == 0x2A36 {
                    continue; // battery and intermediate cuff pressure are not readings
                }
                let bytes: Vec<u8> = (0..r.bytes.len() / 2)
                    .map(|i| u8::from_str_radix(&r.bytes[2 * i..2 * i + 2], 16))
                    .collect::<Result<_, _>>()?;
                let seen = got
                    .get(&(r.device.clone(), c))
                    .is_some_and(|v| v.contains(&bytes));
                anyhow::ensure!(
                    seen,
                    "{} {c:04X} {} sent, never received",
                    r.device,
                    r.bytes
                );
            }
            Ok(())
        },
    )
}

/// An adapter pulled out (its objects vanish from the bus): the devices it
/// served move to the other one and keep delivering; a cuff bonded only
/// through it waits (its bond is still on the adapter's disk: never marked
/// needs_repair, never linked through the other); put back, it counts as up
/// again and the cuff delivers through it.
#[test]
fn devices_of_an_unplugged_adapter_move_to_the_other() -> anyhow::Result<()> {
    isolated(
        "devices_of_an_unplugged_adapter_move_to_the_other",
        LIMIT,
        |bus| async move {
            init_tracing();
            let sim = two_adapter_sim(&bus, &[(Sim::Hr, 2), (Sim::Temp, 1), (Sim::Bp, 1)]).await?;
            pair_through(&sim, "bp0", "hci1").await?;
            let ble = Ble::open(two_adapters()).await?;
            let names = ["hr0", "hr1", "temp0", "bp0"];
            let mut run = run_connected(ble, &sim, &names).await?;
            let stats = run.stats.clone();
            tokio::time::timeout(STEP, stats.wait_for(|s| s.adapters_up() == 2)).await?;
            assert_eq!(
                sim.linked_through("bp0"),
                Some(1),
                "bonded through hci1 only"
            );

            sim.inject(Fault::Unplug {
                adapter: "hci1".into(),
            })
            .await?;
            sim.measure_now("temp0")?;
            sim.measure_now("bp0")?;
            let no_repair = |ev: &BleEvent| {
                if let BleEvent::NeedsRepair { device_id, reason } = ev {
                    panic!("{device_id} marked needs_repair: {reason}");
                }
            };
            for n in ["hr0", "hr1"] {
                // A value after the unplug, through hci0.
                loop {
                    run.next(n, |ev| {
                        no_repair(ev);
                        matches!(ev, BleEvent::Measurement { device_id, .. } if device_id == n)
                            .then_some(())
                    })
                    .await?;
                    if sim.linked_through(n) == Some(0) {
                        break;
                    }
                }
            }
            run.next("temp0", |ev| {
                no_repair(ev);
                matches!(ev, BleEvent::Measurement { device_id, characteristic: 0x2A1C, .. } if device_id == "temp0")
                    .then_some(())
            })
            .await?;
            assert_eq!(sim.linked_through("temp0"), Some(0));
            tokio::time::timeout(STEP, stats.wait_for(|s| s.adapters_up() == 1)).await?;
            assert_eq!(sim.linked_through("bp0"), None, "bp0 waits for hci1");

            sim.inject(Fault::Plug {
                adapter: "hci1".into(),
            })
            .await?;
            tokio::time::timeout(STEP, stats.wait_for(|s| s.adapters_up() == 2)).await?;
            run.next("bp0's blood pressure through hci1", |ev| {
                no_repair(ev);
                matches!(ev, BleEvent::Measurement { device_id, characteristic: 0x2A35, .. } if device_id == "bp0")
                    .then_some(())
            })
            .await?;
            assert_eq!(sim.linked_through("bp0"), Some(1));
            run.stop().await
        },
    )
}

/// An adapter named in the settings but missing at start (unplugged): the
/// gateway runs on the other; a cuff bonded only through the missing one is
/// refused on the present one, and that is not a lost bond — it is never
/// marked needs_repair while the strap streams on.
#[test]
fn a_cuff_bonded_through_an_adapter_missing_at_start_is_not_marked_for_repair() -> anyhow::Result<()>
{
    isolated(
        "a_cuff_bonded_through_an_adapter_missing_at_start_is_not_marked_for_repair",
        LIMIT,
        |bus| async move {
            init_tracing();
            let sim = two_adapter_sim(&bus, &[(Sim::Hr, 1), (Sim::Bp, 1)]).await?;
            pair_through(&sim, "bp0", "hci1").await?;
            sim.inject(Fault::Unplug {
                adapter: "hci1".into(),
            })
            .await?;
            let ble = Ble::open(two_adapters()).await?;
            assert_eq!(ble.adapter_names(), ["hci0"], "hci1 is missing");
            let devices = vec![known(&sim, "hr0", -1)?, known(&sim, "bp0", -1)?];
            let mut run = Running::start(ble, devices);
            let mut values = 0;
            while values < 30 {
                run.next("hr0's values", |ev| match ev {
                    BleEvent::NeedsRepair { device_id, reason } => {
                        panic!("{device_id} marked needs_repair: {reason}")
                    }
                    BleEvent::Measurement { device_id, .. } if device_id == "hr0" => Some(()),
                    _ => None,
                })
                .await?;
                values += 1;
            }
            assert_ne!(sim.linked_through("bp0"), Some(0));
            run.stop().await
        },
    )
}
