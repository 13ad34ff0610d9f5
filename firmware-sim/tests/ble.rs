//! The simulator seen through plain btleplug (the gateway's BLE stack), on a
//! private bus per test process (see `harness::isolated`).

mod common;

use btleplug::api::{Central, CentralEvent, Peripheral as _, WriteType};
use common::*;
use futures::StreamExt;
use hailan_firmware_sim::harness::isolated;
use hailan_firmware_sim::model::DeviceKind;
use hailan_firmware_sim::{Fault, SimConfig, Simulator, TruthRecord};
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
fn truth_for(sim: &Simulator, address: &str, uuid16: u16, bytes: &[u8]) -> anyhow::Result<TruthRecord> {
    let c = format!("{uuid16:04x}");
    let h = hex(bytes);
    sim.truth()
        .into_iter()
        .rev()
        .find(|r| r.address == address && r.characteristic == c && r.bytes == h)
        .ok_or_else(|| anyhow::anyhow!("no ground truth for {address} {c} {h}"))
}

/// Decode with the reference reader and compare with the truth's slots.
fn check_against_truth(uuid16: u16, bytes: &[u8], truth: &TruthRecord) -> anyhow::Result<()> {
    let v = decode::decode(uuid16, bytes)?;
    let s = &truth.slots;
    let close = |got: f64, want: u64, scale: f64, tol: f64| (got * scale - want as f64).abs() <= tol;
    let ok = match uuid16 {
        0x2A37 => close(v[0], s[0], 1.0, 0.0),
        0x2A35 => {
            close(v[0], s[0], 10.0, 0.5)
                && close(v[1], s[1], 10.0, 0.5)
                && close(v[2], s[2], 10.0, 0.5)
                && close(v[3], s[3], 1.0, 0.0)
        }
        0x2A5F | 0x2A5E => close(v[0], s[0], 10.0, 0.01) && close(v[1], s[1], 1.0, 0.0),
        // °F on the wire: 0.01 °F resolution -> within 0.01 °C
        0x2A1C => close(v[0], s[0], 100.0, 1.0),
        0x2A18 => close(v[1], s[0], 10.0, 0.01),
        // 5 g (kg) or 0.01 lb (≈ 4.5 g) resolution
        0x2A9D => close(v[0], s[0], 1000.0, 5.0),
        _ => true,
    };
    anyhow::ensure!(ok, "{uuid16:04x}: decoded {v:?} but truth slots {s:?}");
    Ok(())
}

#[test]
fn discovers_every_kind_and_reads_device_information() -> anyhow::Result<()> {
    isolated("discovers_every_kind_and_reads_device_information", LIMIT, |bus| async move {
        let sim = Simulator::start(&bus, cfg(&DeviceKind::ALL.map(|k| (k, 1)))).await?;
        let adapter = adapter().await?;
        let mut events = adapter.events().await?;
        let ps = scan(&adapter, &mut events, 6).await?;
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
            assert_eq!(read(0x2A29).await?, "HaiLan Sim Devices");
            assert_eq!(read(0x2A24).await?, d.kind.model_number());
            assert_eq!(read(0x2A25).await?, d.serial);
            assert!(read(0x2A26).await?.starts_with("fw-"));
            assert!(!read(0x2A27).await?.is_empty());
            let battery = p.read(&ch(p, 0x2A19)?).await?;
            assert!(battery.len() == 1 && (1..=100).contains(&battery[0]), "{battery:?}");
            assert!(p.is_connected().await?);
            p.disconnect().await?;
            assert!(!p.is_connected().await?);
        }
        Ok(())
    })
}

#[test]
fn notifications_and_indications_decode_to_ground_truth() -> anyhow::Result<()> {
    isolated("notifications_and_indications_decode_to_ground_truth", LIMIT, |bus| async move {
        use DeviceKind::*;
        let sim = Simulator::start(&bus, cfg(&[(Hr, 1), (Spo2, 1), (Temp, 1), (Scale, 1)])).await?;
        let adapter = adapter().await?;
        let mut events = adapter.events().await?;
        let ps = scan(&adapter, &mut events, 4).await?;
        // (device, characteristic, how many to check)
        let plan = [("hr0", 0x2A37, 5), ("spo20", 0x2A5F, 5), ("spo20", 0x2A5E, 1), ("temp0", 0x2A1C, 2), ("scale0", 0x2A9D, 2)];
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
    })
}
