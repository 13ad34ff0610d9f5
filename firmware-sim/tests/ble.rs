//! The simulator seen through plain btleplug (the gateway's BLE stack), on a
//! private bus per test process (see `harness::isolated`).

mod common;

use btleplug::api::{Central, CentralEvent, CentralState, Peripheral as _, WriteType};
use common::*;
use futures::StreamExt;
use hailan_firmware_sim::harness::isolated;
use hailan_firmware_sim::model::DeviceKind;
use hailan_firmware_sim::{Fault, SimConfig, Simulator, TruthRecord};
use hailan_proto::gatt::{GlucoseMeasurement, HeartRateMeasurement, IntermediateCuffPressure};
use std::str::FromStr;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);

fn cfg(devices: &[(DeviceKind, usize)]) -> SimConfig {
    SimConfig {
        devices: devices.to_vec(),
        seed: 42,
        speed: 10.0,
        ..SimConfig::default()
    }
}

/// The truth record for bytes received on `uuid16` from `address`.
fn truth_for(
    sim: &Simulator,
    address: &str,
    uuid16: u16,
    bytes: &[u8],
) -> anyhow::Result<TruthRecord> {
    let c = format!("{uuid16:04x}");
    let h = hex(bytes);
    sim.truth()
        .into_iter()
        .rev()
        .find(|r| r.address == address && r.characteristic == c && r.bytes == h)
        .ok_or_else(|| anyhow::anyhow!("no ground truth for {address} {c} {h}"))
}

/// Decode with proto and compare its slots with the truth's (within the wire
/// resolution of kPa cuffs, °F thermometers and lb scales).
fn check_against_truth(uuid16: u16, bytes: &[u8], truth: &TruthRecord) -> anyhow::Result<()> {
    let got = decode::slots(uuid16, bytes)?;
    let tol = match uuid16 {
        0x2A35 => 4, // kPa: 0.01 kPa (0.1 above 20.47 kPa) ≤ 0.4 mmHg
        0x2A1C => 1, // °F: 0.01 °F ≤ 0.01 °C
        0x2A9D => 5, // lb: 0.01 lb ≈ 4.5 g
        _ => 0,
    };
    let ok = got.len() == truth.slots.len()
        && got
            .iter()
            .zip(&truth.slots)
            .all(|(g, w)| g.abs_diff(*w) <= tol);
    anyhow::ensure!(
        ok,
        "{uuid16:04x}: proto reads {got:?}, truth is {:?}",
        truth.slots
    );
    Ok(())
}

#[test]
fn discovers_every_kind_and_reads_device_information() -> anyhow::Result<()> {
    isolated(
        "discovers_every_kind_and_reads_device_information",
        LIMIT,
        |bus| async move {
            let sim = Simulator::start(&bus, cfg(&DeviceKind::ALL.map(|k| (k, 1)))).await?;
            let adapter = adapter().await?;
            let mut events = adapter.events().await?;
            let ps = scan(&adapter, &mut events, DeviceKind::ALL.len()).await?;
            adapter.stop_scan().await?;
            for d in sim.devices() {
                let p = by_address(&ps, &d.address)?;
                let props = p.properties().await?.expect("properties");
                assert_eq!(props.local_name.as_deref(), Some(d.local_name.as_str()));
                let svc = btleplug::api::bleuuid::uuid_from_u16(d.kind.service_uuid16());
                assert!(props.services.contains(&svc), "{} advertises {svc}", d.name);
                assert!(props.rssi.is_some());
                connect(p).await?;
                let read = |u| async move {
                    let c = ch(p, u)?;
                    anyhow::Ok(String::from_utf8(p.read(&c).await?)?)
                };
                // Some models pad their strings with NULs to 20 bytes.
                let padded = |s: &str| {
                    let mut s = s.to_owned();
                    while d.kind.pads_device_information() && s.len() < 20 {
                        s.push('\0');
                    }
                    s
                };
                assert_eq!(read(0x2A29).await?, padded("HaiLan Sim Devices"));
                assert_eq!(read(0x2A24).await?, padded(d.kind.model_number()));
                assert_eq!(read(0x2A25).await?, padded(&d.serial));
                assert!(read(0x2A26).await?.starts_with("fw-"));
                assert!(!read(0x2A27).await?.is_empty());
                let battery = p.read(&ch(p, 0x2A19)?).await?;
                assert!(
                    battery.len() == 1 && (1..=100).contains(&battery[0]),
                    "{battery:?}"
                );
                assert!(p.is_connected().await?);
                p.disconnect().await?;
                assert!(!p.is_connected().await?);
            }
            Ok(())
        },
    )
}

#[test]
fn notifications_and_indications_decode_to_ground_truth() -> anyhow::Result<()> {
    isolated(
        "notifications_and_indications_decode_to_ground_truth",
        LIMIT,
        |bus| async move {
            use DeviceKind::*;
            let sim =
                Simulator::start(&bus, cfg(&[(Hr, 1), (Spo2, 1), (Temp, 1), (Scale, 1)])).await?;
            let adapter = adapter().await?;
            let mut events = adapter.events().await?;
            let ps = scan(&adapter, &mut events, 4).await?;
            // (device, characteristic, how many to check)
            let plan = [
                ("hr0", 0x2A37, 5),
                ("spo20", 0x2A5F, 5),
                ("spo20", 0x2A5E, 1),
                ("temp0", 0x2A1C, 2),
                ("scale0", 0x2A9D, 2),
            ];
            for (name, uuid16, n) in plan {
                let d = sim.device(name).expect("device");
                let p = by_address(&ps, &d.address)?;
                if !p.is_connected().await? {
                    connect(p).await?;
                }
                let mut notes: Notes = p.notifications().await?;
                p.subscribe(&ch(p, uuid16)?).await?;
                for _ in 0..n {
                    if matches!(uuid16, 0x2A1C | 0x2A9D | 0x2A5E) {
                        sim.measure_now(name)?;
                    }
                    let bytes = next_on(&mut notes, uuid16).await?;
                    let truth = truth_for(&sim, &d.address, uuid16, &bytes)?;
                    check_against_truth(uuid16, &bytes, &truth)?;
                    assert!(!truth.malformed && !truth.out_of_range);
                }
                p.unsubscribe(&ch(p, uuid16)?).await?;
            }
            Ok(())
        },
    )
}

/// Pair through bluez-async (`Device1.Pair`), as a gateway would: btleplug has no pair call.
async fn pair(address: &str) -> anyhow::Result<()> {
    let (_conn, session) = bluez_async::BluetoothSession::new().await?;
    let id = bluez_async::DeviceId::from_str(&format!("hci0/dev_{}", address.replace(':', "_")))?;
    within(
        "pairing",
        session.pair_with_timeout(&id, Duration::from_secs(10)),
    )
    .await??;
    Ok(())
}

#[test]
fn pairing_required_characteristics_fail_before_pairing_and_work_after() -> anyhow::Result<()> {
    isolated(
        "pairing_required_characteristics_fail_before_pairing_and_work_after",
        LIMIT,
        |bus| async move {
            let sim = Simulator::start(&bus, cfg(&[(DeviceKind::Bp, 1), (DeviceKind::Glucose, 1)]))
                .await?;
            let adapter = adapter().await?;
            let mut events = adapter.events().await?;
            let ps = scan(&adapter, &mut events, 2).await?;
            let bp = sim.device("bp0").expect("bp0");
            let p = by_address(&ps, &bp.address)?;
            connect(p).await?;
            // Device Information needs no pairing; the measurement does.
            p.read(&ch(p, 0x2A24)?).await?;
            for u in [0x2A35, 0x2A36] {
                let e = p
                    .subscribe(&ch(p, u)?)
                    .await
                    .expect_err("subscribe before pairing must fail");
                let e = dbus_error(&e);
                assert!(
                    e.contains("org.bluez.Error.NotPermitted") && e.contains("Not paired"),
                    "{e}"
                );
            }
            let g = sim.device("glucose0").expect("glucose0");
            let gp = by_address(&ps, &g.address)?;
            connect(gp).await?;
            let e = gp
                .write(&ch(gp, 0x2A52)?, &[0x04, 0x01], WriteType::WithResponse)
                .await
                .expect_err("RACP before pairing must fail");
            assert!(dbus_error(&e).contains("Not paired"), "{}", dbus_error(&e));
            assert!(gp.subscribe(&ch(gp, 0x2A18)?).await.is_err());

            pair(&bp.address).await?;
            let e = pair(&bp.address).await.expect_err("second Pair");
            assert!(format!("{e:#}").contains("Already Paired"), "{e:#}");
            let mut notes: Notes = p.notifications().await?;
            p.subscribe(&ch(p, 0x2A36)?).await?;
            p.subscribe(&ch(p, 0x2A35)?).await?;
            sim.measure_now("bp0")?;
            // intermediate cuff pressure while inflating, then the indicated result
            let cuff = next_on(&mut notes, 0x2A36).await?;
            let cuff = IntermediateCuffPressure::decode(&cuff)?;
            assert!(
                cuff.current_cuff_pressure()
                    .to_f64()
                    .is_some_and(|p| p > 0.0)
            );
            let result = next_on(&mut notes, 0x2A35).await?;
            let truth = truth_for(&sim, &bp.address, 0x2A35, &result)?;
            check_against_truth(0x2A35, &result, &truth)?;
            assert_eq!(truth.event, hailan_firmware_sim::TruthEvent::Indicate);
            Ok(())
        },
    )
}

/// Glucose RACP: number of records, records ≥ N, all records, bad operands.
#[test]
fn racp_returns_exactly_the_stored_glucose_records() -> anyhow::Result<()> {
    isolated(
        "racp_returns_exactly_the_stored_glucose_records",
        LIMIT,
        |bus| async move {
            // This client registers no agent: the meter pairs Just Works here
            // (its own method, a passkey, would fail without one).
            let sim = Simulator::start(
                &bus,
                SimConfig {
                    pairing: vec![("glucose0".into(), "just-works".into())],
                    ..cfg(&[(DeviceKind::Glucose, 1)])
                },
            )
            .await?;
            let adapter = adapter().await?;
            let mut events = adapter.events().await?;
            let ps = scan(&adapter, &mut events, 1).await?;
            let g = sim.device("glucose0").expect("glucose0");
            let p = by_address(&ps, &g.address)?;
            pair(&g.address).await?; // connects too
            p.discover_services().await?;
            let racp = ch(p, 0x2A52)?;
            // RACP without indications enabled: ATT 0xFD
            let e = p
                .write(&racp, &[0x04, 0x01], WriteType::WithResponse)
                .await
                .expect_err("no CCCD");
            assert!(dbus_error(&e).contains("0xfd"), "{}", dbus_error(&e));
            let mut notes: Notes = p.notifications().await?;
            p.subscribe(&ch(p, 0x2A18)?).await?;
            p.subscribe(&racp).await?;
            // one more record measured now
            let mut truth = sim.subscribe_truth();
            sim.measure_now("glucose0")?;
            within("record stored", async {
                while let Ok(r) = truth.recv().await {
                    if r.device == "glucose0" && r.event == hailan_firmware_sim::TruthEvent::Stored
                    {
                        return;
                    }
                }
            })
            .await?;
            let stored = sim.glucose_records("glucose0");
            let seqs: Vec<u16> = stored
                .iter()
                .map(|m| match m {
                    hailan_firmware_sim::Measurement::Glucose { seq, .. } => *seq,
                    _ => 0,
                })
                .collect();
            assert_eq!(seqs, (1..=9).collect::<Vec<u16>>());

            // number of stored records
            p.write(&racp, &[0x04, 0x01], WriteType::WithResponse)
                .await?;
            assert_eq!(next_on(&mut notes, 0x2A52).await?, vec![0x05, 0x00, 9, 0]);

            // records with sequence number >= 6
            p.write(&racp, &[0x01, 0x03, 0x01, 6, 0], WriteType::WithResponse)
                .await?;
            let mut got = Vec::new();
            let u18 = btleplug::api::bleuuid::uuid_from_u16(0x2A18);
            let u52 = btleplug::api::bleuuid::uuid_from_u16(0x2A52);
            let response = within("RACP report", async {
                while let Some(n) = notes.next().await {
                    if n.uuid == u18 {
                        got.push(n.value);
                    } else if n.uuid == u52 {
                        return Some(n.value);
                    }
                }
                None
            })
            .await?;
            assert_eq!(
                response,
                Some(vec![0x06, 0x00, 0x01, 0x01]),
                "success response"
            );
            let got_seqs: Vec<u16> = got
                .iter()
                .map(|b| GlucoseMeasurement::decode(b).map(|g| g.sequence_number))
                .collect::<Result<_, _>>()?;
            assert_eq!(got_seqs, vec![6, 7, 8, 9]);
            for b in &got {
                let truth = truth_for(&sim, &g.address, 0x2A18, b)?;
                check_against_truth(0x2A18, b, &truth)?;
            }

            // no records >= 100; malformed operand; unsupported op code
            p.write(&racp, &[0x01, 0x03, 0x01, 100, 0], WriteType::WithResponse)
                .await?;
            assert_eq!(
                next_on(&mut notes, 0x2A52).await?,
                vec![0x06, 0x00, 0x01, 0x06]
            );
            p.write(&racp, &[0x01, 0x03, 0x01, 6], WriteType::WithResponse)
                .await?;
            assert_eq!(
                next_on(&mut notes, 0x2A52).await?,
                vec![0x06, 0x00, 0x01, 0x05]
            );
            p.write(&racp, &[0x02, 0x01], WriteType::WithResponse)
                .await?;
            assert_eq!(
                next_on(&mut notes, 0x2A52).await?,
                vec![0x06, 0x00, 0x02, 0x02]
            );
            Ok(())
        },
    )
}

#[test]
fn fault_drop_connection_and_refuse_connects() -> anyhow::Result<()> {
    isolated(
        "fault_drop_connection_and_refuse_connects",
        LIMIT,
        |bus| async move {
            let sim = Simulator::start(&bus, cfg(&[(DeviceKind::Hr, 1)])).await?;
            let adapter = adapter().await?;
            let mut events = adapter.events().await?;
            let ps = scan(&adapter, &mut events, 1).await?;
            let d = sim.device("hr0").expect("hr0");
            let p = by_address(&ps, &d.address)?;
            connect(p).await?;
            let mut notes: Notes = p.notifications().await?;
            p.subscribe(&ch(p, 0x2A37)?).await?;
            next_on(&mut notes, 0x2A37).await?;

            sim.inject(Fault::Drop {
                device: "hr0".into(),
            })
            .await?;
            within("DeviceDisconnected", async {
                while let Some(e) = events.next().await {
                    if matches!(&e, CentralEvent::DeviceDisconnected(id) if *id == p.id()) {
                        return;
                    }
                }
            })
            .await?;
            assert!(!p.is_connected().await?);
            // GATT calls on a dropped link fail as BlueZ fails them
            let e = p.read(&ch(p, 0x2A19)?).await.expect_err("read after drop");
            assert!(
                dbus_error(&e).contains("Not connected"),
                "{}",
                dbus_error(&e)
            );

            sim.inject(Fault::RefuseConnects {
                device: Some("hr0".into()),
                duration: Duration::from_secs(600),
            })
            .await?;
            let e = p.connect().await.expect_err("refused");
            let e = dbus_error(&e);
            assert!(
                e.contains("org.bluez.Error.Failed") && e.contains("le-connection-abort-by-local"),
                "{e}"
            );
            sim.inject(Fault::RefuseConnects {
                device: Some("hr0".into()),
                duration: Duration::ZERO,
            })
            .await?;
            connect(p).await?;
            p.subscribe(&ch(p, 0x2A37)?).await?;
            next_on(&mut notes, 0x2A37).await?;
            Ok(())
        },
    )
}

#[test]
fn fault_stall_discovery_keeps_discovering_true() -> anyhow::Result<()> {
    isolated(
        "fault_stall_discovery_keeps_discovering_true",
        LIMIT,
        |bus| async move {
            let sim = Simulator::start(&bus, cfg(&[(DeviceKind::Hr, 3)])).await?;
            sim.inject(Fault::StallDiscovery { duration: None }).await?;
            let adapter = adapter().await?;
            let mut events = adapter.events().await?;
            adapter
                .start_scan(btleplug::api::ScanFilter::default())
                .await?;
            // Discovering is true on the bus, yet nothing is reported.
            let conn = zbus::connection::Builder::address(bus.as_str())?
                .build()
                .await?;
            let props = zbus::fdo::PropertiesProxy::builder(&conn)
                .destination("org.bluez")?
                .path("/org/bluez/hci0")?
                .build()
                .await?;
            let iface = zbus::names::InterfaceName::from_static_str("org.bluez.Adapter1")?;
            assert!(bool::try_from(
                props.get(iface.clone(), "Discovering").await?
            )?);
            // A stalled scanner reports nothing: a bounded look, not a wait for an event.
            let quiet = tokio::time::timeout(Duration::from_millis(1500), async {
                while let Some(e) = events.next().await {
                    if let CentralEvent::DeviceDiscovered(id) = e {
                        return Some(id);
                    }
                }
                None
            })
            .await;
            assert!(
                quiet.is_err(),
                "a stalled scan reported a device: {quiet:?}"
            );
            assert!(adapter.peripherals().await?.is_empty());
            assert!(bool::try_from(props.get(iface, "Discovering").await?)?);
            // The watchdog's cure works: once the stall ends, devices appear.
            sim.inject(Fault::ResumeDiscovery).await?;
            let mut n = 0;
            within("discovery after stall", async {
                while let Some(e) = events.next().await {
                    if matches!(e, CentralEvent::DeviceDiscovered(_)) {
                        n += 1;
                        if n == 3 {
                            return;
                        }
                    }
                }
            })
            .await?;
            Ok(())
        },
    )
}

#[test]
fn fault_malformed_out_of_range_rssi_and_battery() -> anyhow::Result<()> {
    isolated(
        "fault_malformed_out_of_range_rssi_and_battery",
        LIMIT,
        |bus| async move {
            let sim =
                Simulator::start(&bus, cfg(&[(DeviceKind::Hr, 1), (DeviceKind::Temp, 1)])).await?;
            let adapter = adapter().await?;
            let mut events = adapter.events().await?;
            let ps = scan(&adapter, &mut events, 2).await?;
            // RSSI change while scanning
            let t = sim.device("temp0").expect("temp0");
            let tp = by_address(&ps, &t.address)?;
            sim.inject(Fault::Rssi {
                device: "temp0".into(),
                rssi: -97,
            })
            .await?;
            within("RssiUpdate -97", async {
                while let Some(e) = events.next().await {
                    if matches!(&e, CentralEvent::RssiUpdate { id, rssi: -97 } if *id == tp.id()) {
                        return;
                    }
                }
            })
            .await?;
            assert_eq!(tp.properties().await?.and_then(|p| p.rssi), Some(-97));

            let d = sim.device("hr0").expect("hr0");
            let p = by_address(&ps, &d.address)?;
            connect(p).await?;
            let mut notes: Notes = p.notifications().await?;
            // a battery running low is notified and readable
            p.subscribe(&ch(p, 0x2A19)?).await?;
            sim.inject(Fault::Battery {
                device: "hr0".into(),
                percent: 12,
            })
            .await?;
            assert_eq!(next_on(&mut notes, 0x2A19).await?, vec![12]);
            assert_eq!(p.read(&ch(p, 0x2A19)?).await?, vec![12]);
            p.subscribe(&ch(p, 0x2A37)?).await?;
            let good = next_on(&mut notes, 0x2A37).await?;
            assert!(HeartRateMeasurement::decode(&good).is_ok());
            sim.inject(Fault::Malformed {
                device: "hr0".into(),
                count: 1,
            })
            .await?;
            let bad = within("malformed notification", async {
                loop {
                    let b = next_on(&mut notes, 0x2A37).await?;
                    if truth_for(&sim, &d.address, 0x2A37, &b)?.malformed {
                        return anyhow::Ok(b);
                    }
                }
            })
            .await??;
            assert!(
                HeartRateMeasurement::decode(&bad).is_err(),
                "malformed bytes decoded: {bad:?}"
            );

            sim.inject(Fault::OutOfRange {
                device: "hr0".into(),
                count: 1,
            })
            .await?;
            let oor = within("out-of-range notification", async {
                loop {
                    let b = next_on(&mut notes, 0x2A37).await?;
                    let t = truth_for(&sim, &d.address, 0x2A37, &b)?;
                    if t.out_of_range {
                        return anyhow::Ok((b, t));
                    }
                }
            })
            .await??;
            let bpm = HeartRateMeasurement::decode(&oor.0)?.heart_rate.bpm();
            assert!(
                bpm > 300,
                "out-of-range heart rate {bpm} must exceed the 300 bpm bound"
            );
            check_against_truth(0x2A37, &oor.0, &oor.1)?;
            Ok(())
        },
    )
}

#[test]
fn fault_adapter_power_off_and_on() -> anyhow::Result<()> {
    isolated("fault_adapter_power_off_and_on", LIMIT, |bus| async move {
        let sim = Simulator::start(&bus, cfg(&[(DeviceKind::Hr, 1)])).await?;
        let adapter = adapter().await?;
        let mut events = adapter.events().await?;
        let ps = scan(&adapter, &mut events, 1).await?;
        let d = sim.device("hr0").expect("hr0");
        let p = by_address(&ps, &d.address)?;
        connect(p).await?;
        // rfkill-style: off, and cannot be powered on for a while
        sim.inject(Fault::PowerOff {
            adapter: None,
            duration: Some(Duration::from_secs(600)),
        })
        .await?;
        let (mut disconnected, mut off) = (false, false);
        within("disconnect + PoweredOff", async {
            while !(disconnected && off) {
                match events.next().await {
                    Some(CentralEvent::DeviceDisconnected(id)) if id == p.id() => {
                        disconnected = true
                    }
                    Some(CentralEvent::StateUpdate(CentralState::PoweredOff)) => off = true,
                    Some(_) => {}
                    None => return,
                }
            }
        })
        .await?;
        assert_eq!(adapter.adapter_state().await?, CentralState::PoweredOff);
        // btleplug powers the adapter on before scanning: blocked
        assert!(
            adapter
                .start_scan(btleplug::api::ScanFilter::default())
                .await
                .is_err()
        );
        let e = p.connect().await.expect_err("connect while off");
        assert!(
            dbus_error(&e).contains("org.bluez.Error.NotReady"),
            "{}",
            dbus_error(&e)
        );
        sim.inject(Fault::PowerOn { adapter: None }).await?;
        within("PoweredOn", async {
            while let Some(e) = events.next().await {
                if matches!(e, CentralEvent::StateUpdate(CentralState::PoweredOn)) {
                    return;
                }
            }
        })
        .await?;
        adapter
            .start_scan(btleplug::api::ScanFilter::default())
            .await?;
        connect(p).await?;
        assert!(p.is_connected().await?);
        Ok(())
    })
}

/// 50 devices at once: every one connects, subscribes and delivers.
#[test]
fn fifty_devices_all_connect_and_deliver() -> anyhow::Result<()> {
    isolated(
        "fifty_devices_all_connect_and_deliver",
        LIMIT,
        |bus| async move {
            let sim = Simulator::start(&bus, cfg(&[(DeviceKind::Hr, 40), (DeviceKind::Spo2, 10)]))
                .await?;
            let adapter = adapter().await?;
            let mut events = adapter.events().await?;
            let ps = scan(&adapter, &mut events, 50).await?;
            adapter.stop_scan().await?;
            let mut streams = Vec::new();
            for p in &ps {
                connect(p).await?;
                let c = ch(p, 0x2A37).or_else(|_| ch(p, 0x2A5F))?;
                let notes: Notes = p.notifications().await?;
                p.subscribe(&c).await?;
                streams.push((p.address().to_string(), c.uuid, notes));
            }
            for (address, uuid, mut notes) in streams {
                let n = within(&format!("first notification from {address}"), notes.next())
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("stream ended"))?;
                assert_eq!(n.uuid, uuid);
            }
            assert!(sim.devices().iter().all(|d| sim.is_connected(&d.name)));
            Ok(())
        },
    )
}
