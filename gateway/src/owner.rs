//! The owner's commands: `init`, `scan`, `pair`, `devices`, `forget`,
//! `status`. They work on the same state database as the daemon, whether it
//! runs or not (the daemon picks up pairings and forgettings within
//! seconds).

use crate::ble::{Ble, Nearby};
use crate::config::GatewayConfig;
use crate::pipeline::now_ms;
use crate::store::{DeviceRow, Store};
use anyhow::{Context, Result, bail};
use hailan_proto::envelope::{Body, Envelope, Registration};
use hailan_proto::zk::{DeviceSecret, device_commitment};
use std::io::IsTerminal;
use std::time::Duration;

fn open_store(cfg: &GatewayConfig) -> Result<Store> {
    Store::open(&cfg.state_dir, cfg.quota_bytes())
}

/// `init`: create the state directory and, if missing, the owner's data key.
pub fn init(cfg: &GatewayConfig) -> Result<()> {
    let store = open_store(cfg)?;
    println!("state: {}", store.path().display());
    if cfg.keys.data_key_file.exists() {
        crate::keys::load_data_key(&cfg.keys.data_key_file, &cfg.keys.data_key_id)?;
        println!(
            "data key: {} (exists, kept)",
            cfg.keys.data_key_file.display()
        );
    } else {
        crate::keys::generate_data_key(&cfg.keys.data_key_file)?;
        println!(
            "data key: {} (new; give a copy to the clinician API's key ring as {:?})",
            cfg.keys.data_key_file.display(),
            cfg.keys.data_key_id
        );
    }
    Ok(())
}

/// `scan`: nearby health devices, with live progress on a terminal.
pub async fn scan(cfg: &GatewayConfig, duration: Duration, json: bool) -> Result<()> {
    let paired: Vec<String> = open_store(cfg)?
        .devices()?
        .into_iter()
        .map(|d| d.address)
        .collect();
    let ble = Ble::open(cfg.ble_config()).await?;
    let bar = (!json && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.enable_steady_tick(Duration::from_millis(120));
        b.set_message("scanning…");
        b
    });
    let mut seen = 0usize;
    let found = ble
        .scan(duration, |n: &Nearby| {
            seen += 1;
            if let Some(b) = &bar {
                b.set_message(format!(
                    "scanning… {seen} update(s), last: {} {}",
                    n.name.as_deref().unwrap_or("?"),
                    n.address
                ));
            }
        })
        .await?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if json {
        let rows: Vec<serde_json::Value> = found
            .iter()
            .map(|n| {
                serde_json::json!({
                    "address": n.address,
                    "name": n.name,
                    "rssi": n.rssi,
                    "kinds": n.kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
                    "paired": paired.iter().any(|p| p.eq_ignore_ascii_case(&n.address)),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if found.is_empty() {
        println!("no health devices found in {} s", duration.as_secs());
        return Ok(());
    }
    println!(
        "{:<19} {:<24} {:>5}  {:<24} PAIRED",
        "ADDRESS", "NAME", "RSSI", "TYPE"
    );
    for n in &found {
        let kinds: Vec<&str> = n.kinds.iter().map(|k| k.as_str()).collect();
        println!(
            "{:<19} {:<24} {:>5}  {:<24} {}",
            n.address,
            n.name.as_deref().unwrap_or("-"),
            n.rssi.map_or("-".into(), |r| r.to_string()),
            kinds.join(","),
            if paired.iter().any(|p| p.eq_ignore_ascii_case(&n.address)) {
                "yes"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// A new device id: readable, unique per pairing (re-pairing makes a new one).
fn new_device_id(kind: &str, address: &str) -> String {
    use rand_core::{OsRng, RngCore};
    let short = kind.split('_').map(|w| &w[..1]).collect::<String>();
    let addr: String = address.chars().filter(|c| *c != ':').collect();
    format!(
        "{short}-{}-{:04x}",
        addr.to_lowercase(),
        OsRng.next_u32() & 0xffff
    )
}

/// `pair`: connect, bond if needed, read Device Information and battery,
/// make the device secret, store it and queue the registration.
pub async fn pair(cfg: &GatewayConfig, who: &str, json: bool) -> Result<()> {
    let store = open_store(cfg)?;
    if let Some(d) = store.find_device(who)? {
        bail!(
            "{who} is already paired as {} ({}); `hailan-gateway forget {}` first to pair it again",
            d.device_id,
            d.address,
            d.device_id
        );
    }
    let ble = Ble::open(cfg.ble_config()).await?;
    let info = ble
        .pair(who)
        .await
        .with_context(|| format!("pairing {who}"))?;
    let secret = DeviceSecret::generate(&mut rand_core::OsRng);
    let kind = info.kind.as_str();
    let device_id = new_device_id(kind, &info.address);
    let paired_at_ms = now_ms();
    let data_type = info.kind.data_type();
    let registration = Envelope {
        v: 1,
        gateway_id: cfg.gateway_id.clone(),
        sent_at_ms: paired_at_ms,
        body: Body::Registration(Box::new(Registration {
            device_id: device_id.clone(),
            device_type: data_type.as_str().into(),
            data_types: vec![data_type.as_str().into()],
            bluetooth_address: info.address.clone(),
            name: info.name.clone(),
            manufacturer: info.manufacturer.clone(),
            model: info.model.clone(),
            serial: info.serial.clone(),
            firmware_version: info.firmware.clone(),
            hardware_version: info.hardware.clone(),
            device_commitment: device_commitment(&secret),
            paired_at_ms,
        })),
    };
    registration.validate().map_err(|e| {
        anyhow::anyhow!("the device's information does not fit a registration: {e}")
    })?;
    let row = DeviceRow {
        device_id: device_id.clone(),
        address: info.address.clone(),
        name: info.name.clone(),
        kind: kind.into(),
        secret: secret.clone(),
        manufacturer: info.manufacturer.clone(),
        model: info.model.clone(),
        serial: info.serial.clone(),
        firmware: info.firmware.clone(),
        hardware: info.hardware.clone(),
        paired_at_ms,
        next_seq: 1,
        glucose_cursor: -1,
        battery: info.battery,
        rssi: None,
        connected: false,
        state_at_ms: None,
        last_reading_at_ms: None,
        outbox_depth: 0,
    };
    store.add_device(&row, &hailan_proto::envelope::encode(&registration))?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "device_id": device_id,
                "address": info.address,
                "name": info.name,
                "kind": kind,
                "bonded": info.bonded,
                "manufacturer": info.manufacturer,
                "model": info.model,
                "serial": info.serial,
                "firmware": info.firmware,
                "battery": info.battery,
            })
        );
    } else {
        println!(
            "paired {} ({}, {}) as {device_id}{}; battery {}",
            info.name.as_deref().unwrap_or("device"),
            info.address,
            kind,
            if info.bonded { ", bonded" } else { "" },
            info.battery.map_or("unknown".into(), |b| format!("{b} %"))
        );
    }
    Ok(())
}

/// `devices`: paired devices with battery, connection, last reading, outbox depth.
pub fn devices(cfg: &GatewayConfig, json: bool) -> Result<()> {
    let rows = open_store(cfg)?.devices()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no paired devices; `hailan-gateway scan`, then `hailan-gateway pair <address>`");
        return Ok(());
    }
    println!(
        "{:<28} {:<19} {:<22} {:>7} {:<9} {:>8} {:>7}  LAST READING",
        "DEVICE", "ADDRESS", "TYPE", "BATTERY", "LINK", "NEXT SEQ", "OUTBOX"
    );
    let now = now_ms();
    for d in rows {
        println!(
            "{:<28} {:<19} {:<22} {:>7} {:<9} {:>8} {:>7}  {}",
            d.device_id,
            d.address,
            d.kind,
            d.battery.map_or("-".into(), |b| format!("{b} %")),
            if d.connected { "connected" } else { "-" },
            d.next_seq,
            d.outbox_depth,
            d.last_reading_at_ms.map_or("never".into(), |t| format!(
                "{} s ago",
                (now - t).max(0) / 1000
            ))
        );
    }
    Ok(())
}

/// `forget`: remove a device, its secret and its unsent readings.
pub fn forget(cfg: &GatewayConfig, who: &str) -> Result<()> {
    let store = open_store(cfg)?;
    let d = store
        .find_device(who)?
        .with_context(|| format!("no paired device {who:?} (see `hailan-gateway devices`)"))?;
    let dropped = store.forget_device(&d.device_id)?;
    println!(
        "forgot {} ({}){}",
        d.device_id,
        d.address,
        if dropped > 0 {
            format!("; {dropped} unsent outbox entr(y/ies) dropped")
        } else {
            String::new()
        }
    );
    Ok(())
}

/// The daemon's state as `status` reports it.
#[derive(Debug, serde::Serialize)]
pub struct Status {
    pub daemon_running: bool,
    pub daemon_pid: Option<u32>,
    pub broker: Option<String>,
    pub devices: usize,
    pub devices_connected: usize,
    pub outbox: crate::store::OutboxStats,
    pub oldest_unsent_age_s: Option<i64>,
}

/// Whether process `pid` is alive (signal 0 through /proc).
fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// `status`: is the daemon up, broker connected, outbox depth and age.
/// Exits non-zero (like `systemctl is-active`) when the daemon is not running.
pub fn status(cfg: &GatewayConfig, json: bool) -> Result<bool> {
    let store = open_store(cfg)?;
    let pid: Option<u32> = store.meta("daemon_pid")?.and_then(|p| p.parse().ok());
    let heartbeat: Option<i64> = store
        .meta("daemon_heartbeat_ms")?
        .and_then(|p| p.parse().ok());
    let now = now_ms();
    let running = pid.is_some_and(alive) && heartbeat.is_some_and(|h| now - h < 15_000);
    let devices = store.devices()?;
    let outbox = store.outbox_stats()?;
    let s = Status {
        daemon_running: running,
        daemon_pid: pid.filter(|_| running),
        broker: if running { store.meta("broker")? } else { None },
        devices: devices.len(),
        devices_connected: if running {
            devices.iter().filter(|d| d.connected).count()
        } else {
            0
        },
        oldest_unsent_age_s: outbox
            .oldest_recorded_at_ms
            .map(|t| (now - t).max(0) / 1000),
        outbox,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!(
            "daemon:  {}",
            match s.daemon_pid {
                Some(p) => format!("running (pid {p})"),
                None => "not running".into(),
            }
        );
        println!("broker:  {}", s.broker.as_deref().unwrap_or("-"));
        println!(
            "devices: {} paired, {} connected",
            s.devices, s.devices_connected
        );
        println!(
            "outbox:  {} readings in {} envelopes, {} bytes{}",
            s.outbox.readings,
            s.outbox.entries,
            s.outbox.bytes,
            s.oldest_unsent_age_s.map_or(String::new(), |a| format!(
                ", oldest unsent reading {a} s old"
            ))
        );
    }
    Ok(running)
}
