//! `Ble::scan` and `Ble::pair` against the simulator (fake BlueZ on a private bus).

mod ble_common;

use ble_common::*;
use hailan_firmware_sim::Simulator;
use hailan_firmware_sim::harness::isolated;
use hailan_gateway::ble::{Ble, DeviceKind};
use std::collections::HashMap;
use std::time::Duration;

/// One device of each kind is found, with its kind, advertised name and an
/// RSSI; progress is reported for each; strongest first.
#[test]
fn ble_scan_finds_every_kind() -> anyhow::Result<()> {
    isolated("ble_scan_finds_every_kind", LIMIT, |bus| async move {
        init_tracing();
        let sim = Simulator::start(
            &bus,
            sim_config(&hailan_firmware_sim::DeviceKind::ALL.map(|k| (k, 1))),
        )
        .await?;
        let ble = Ble::open(fast()).await?;
        let mut progress = HashMap::new();
        let found = ble
            .scan(Duration::from_secs(2), |n| {
                progress.insert(n.address.clone(), n.clone());
            })
            .await?;
        assert_eq!(found.len(), sim.devices().len(), "{found:#?}");
        for d in sim.devices() {
            let n = found
                .iter()
                .find(|n| n.address == d.address)
                .unwrap_or_else(|| panic!("{} ({}) not found", d.name, d.address));
            assert_eq!(n.kinds, vec![kind_of(&d)?], "{}", d.name);
            assert_eq!(n.name.as_deref(), Some(d.local_name.as_str()));
            assert!(n.rssi.is_some_and(|r| (-100..0).contains(&r)), "{n:?}");
            assert!(
                progress.contains_key(&d.address),
                "no progress for {}",
                d.name
            );
        }
        assert!(
            found.windows(2).all(|w| w[0].rssi >= w[1].rssi),
            "not sorted by RSSI: {found:#?}"
        );
        let json = serde_json::to_value(&found[0])?;
        assert!(json["kinds"][0].is_string(), "{json}");
        Ok(())
    })
}

/// Pairing each kind (by address, and by advertised name) returns the Device
/// Information the simulator serves and a battery level; cuff and meter
/// are bonded (their measurements are refused without). The thermometer and
/// the scale serve their strings NUL-padded to 20 bytes: the gateway cuts
/// the padding before anything is registered.
#[test]
fn ble_pair_each_kind_reads_device_information() -> anyhow::Result<()> {
    isolated(
        "ble_pair_each_kind_reads_device_information",
        LIMIT,
        |bus| async move {
            init_tracing();
            let sim = Simulator::start(
                &bus,
                sim_config(&hailan_firmware_sim::DeviceKind::ALL.map(|k| (k, 1))),
            )
            .await?;
            let ble = Ble::open(fast()).await?;
            for (i, d) in sim.devices().into_iter().enumerate() {
                // every other one by its advertised name (scans until found)
                let who = if i % 2 == 0 {
                    d.address.clone()
                } else {
                    d.local_name.clone()
                };
                let info = ble.pair(&who, &answers(&d)).await?;
                let kind = kind_of(&d)?;
                assert_eq!(info.address, d.address);
                assert_eq!(info.kind, kind);
                assert_eq!(info.name.as_deref(), Some(d.local_name.as_str()));
                let needs_bond = matches!(
                    kind,
                    DeviceKind::BloodPressureMonitor | DeviceKind::GlucoseMeter
                );
                assert_eq!(info.bonded, needs_bond, "{}", d.name);
                assert_eq!(
                    d.kind.pads_device_information(),
                    matches!(
                        kind,
                        DeviceKind::Thermometer
                            | DeviceKind::WeightScale
                            | DeviceKind::BodyCompositionScale
                    ),
                    "the simulator pads what this test says"
                );
                assert_eq!(info.manufacturer.as_deref(), Some("HaiLan Sim Devices"));
                assert_eq!(info.model.as_deref(), Some(d.kind.model_number()));
                assert_eq!(info.serial.as_deref(), Some(d.serial.as_str()));
                assert!(
                    info.firmware
                        .as_deref()
                        .is_some_and(|f| f.starts_with("fw-")),
                    "{info:?}"
                );
                assert!(info.hardware.as_deref().is_some_and(|h| !h.is_empty()));
                assert!(
                    info.battery.is_some_and(|b| (1..=100).contains(&b)),
                    "{info:?}"
                );
                assert!(!sim.is_connected(&d.name), "{} left connected", d.name);
            }
            // Pairing again is fine ("Already Paired").
            let bp0 = sim.device("bp0").expect("bp0");
            let again = ble.pair(&bp0.address, &answers(&bp0)).await?;
            assert!(again.bonded);
            // Unknown devices are an error naming them.
            let e = Ble::open(hailan_gateway::ble::BleConfig {
                pair_timeout: Duration::from_millis(500),
                ..fast()
            })
            .await?
            .pair("no-such-device", &Default::default())
            .await
            .expect_err("unknown device");
            assert!(format!("{e:#}").contains("no-such-device"), "{e:#}");
            Ok(())
        },
    )
}

/// Opening an adapter that does not exist names it and lists those present.
#[test]
fn ble_open_unknown_adapter_lists_adapters() -> anyhow::Result<()> {
    isolated(
        "ble_open_unknown_adapter_lists_adapters",
        LIMIT,
        |bus| async move {
            let _sim = Simulator::start(
                &bus,
                sim_config(&[(hailan_firmware_sim::DeviceKind::Hr, 1)]),
            )
            .await?;
            let e = Ble::open(hailan_gateway::ble::BleConfig {
                adapters: hailan_gateway::ble::AdapterChoice::Named(vec!["hci7".into()]),
                ..fast()
            })
            .await
            .expect_err("hci7 does not exist");
            let msg = format!("{e:#}");
            assert!(msg.contains("hci7") && msg.contains("hci0"), "{msg}");
            // Of several named, the ones present are used: one unplugged
            // does not stop a gateway.
            let ble = Ble::open(hailan_gateway::ble::BleConfig {
                adapters: hailan_gateway::ble::AdapterChoice::Named(vec![
                    "hci7".into(),
                    "hci0".into(),
                ]),
                ..fast()
            })
            .await?;
            assert_eq!(ble.adapter_names(), ["hci0"]);
            Ok(())
        },
    )
}
