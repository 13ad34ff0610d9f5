//! The owner's commands: `init`, `scan`, `pair`, `devices`, `forget`,
//! `status`. They work on the same state database as the daemon, whether it
//! runs or not (the daemon picks up pairings and forgettings within
//! seconds).

use crate::ble::agent::PairingAnswers;
use crate::ble::{Ble, Nearby};
use crate::config::GatewayConfig;
use crate::pipeline::now_ms;
use crate::store::{DeviceRow, Store};
use anyhow::{Context, Result, bail};
use hailan_proto::envelope::{Body, Envelope, Registration};
use hailan_proto::zk::{DeviceSecret, device_commitment};
use std::io::IsTerminal;
use std::time::Duration;

pub(crate) fn open_store(cfg: &GatewayConfig) -> Result<Store> {
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
pub async fn scan(
    cfg: &GatewayConfig,
    duration: Duration,
    through: Option<&str>,
    json: bool,
) -> Result<()> {
    let paired: Vec<String> = open_store(cfg)?
        .devices()?
        .into_iter()
        .map(|d| d.address)
        .collect();
    let ble = Ble::open(ble_config_through(cfg, through)).await?;
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
/// A device that shows a passkey, asks to compare a number or wants a PIN is
/// answered from `answers` (flags, or a prompt on a terminal).
pub async fn pair(
    cfg: &GatewayConfig,
    who: &str,
    answers: &PairingAnswers,
    through: Option<&str>,
    json: bool,
) -> Result<()> {
    let store = open_store(cfg)?;
    if let Some(d) = store.find_device(who)?
        && d.needs_repair
    {
        return repair(cfg, &store, &d, answers, through).await;
    }
    if let Some(d) = store.find_device(who)?
        && let Some(adapter) = through
    {
        return bond_through(cfg, &d, answers, adapter).await;
    }
    if let Some(d) = store.find_device(who)? {
        bail!(
            "{who} is already paired as {} ({}); `hailan-gateway forget {}` first to pair it again",
            d.device_id,
            d.address,
            d.device_id
        );
    }
    let ble = Ble::open(ble_config_through(cfg, through)).await?;
    // Pairing errors name the device, the cause and the command to run.
    let info = ble.pair(who, answers).await?;
    let secret = DeviceSecret::generate(&mut rand_core::OsRng);
    let kind = info.kind.as_str();
    let device_id = new_device_id(kind, &info.address);
    let paired_at_ms = now_ms();
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
        needs_repair: false,
        bonded_at_ms: paired_at_ms,
        outbox_depth: 0,
    };
    let registration = registration(cfg, &row, &secret, paired_at_ms, None)?;
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

/// The registration of device `d`, or of its user `slot` (its own id, its
/// patient, `user_slot_of` naming `d`): `d`'s information and the
/// commitment to `secret`.
pub(crate) fn registration(
    cfg: &GatewayConfig,
    d: &DeviceRow,
    secret: &DeviceSecret,
    paired_at_ms: i64,
    slot: Option<&crate::store::SlotRow>,
) -> Result<Envelope> {
    let data_type = hailan_proto::gatt::DeviceKind::ALL
        .into_iter()
        .find(|k| k.as_str() == d.kind)
        .with_context(|| format!("device kind {:?} is unknown", d.kind))?
        .data_type();
    let registration = Envelope {
        v: 1,
        gateway_id: cfg.gateway_id.clone(),
        sent_at_ms: paired_at_ms,
        body: Body::Registration(Box::new(Registration {
            device_id: slot.map_or(&d.device_id, |s| &s.slot_id).clone(),
            device_type: data_type.as_str().into(),
            data_types: vec![data_type.as_str().into()],
            bluetooth_address: d.address.clone(),
            name: d.name.clone(),
            manufacturer: d.manufacturer.clone(),
            model: d.model.clone(),
            serial: d.serial.clone(),
            firmware_version: d.firmware.clone(),
            hardware_version: d.hardware.clone(),
            device_commitment: device_commitment(secret),
            paired_at_ms,
            patient: slot.and_then(|s| s.patient.clone()),
            user_slot_of: slot.map(|_| d.device_id.clone()),
        })),
    };
    registration.validate().map_err(|e| {
        anyhow::anyhow!("the device's information does not fit a registration: {e}")
    })?;
    Ok(registration)
}

/// The BLE settings with `through` (`hci1`), if given, as the only adapter.
fn ble_config_through(cfg: &GatewayConfig, through: Option<&str>) -> crate::ble::BleConfig {
    let mut ble = cfg.ble_config();
    if let Some(a) = through {
        ble.adapters = crate::ble::AdapterChoice::Named(vec![a.to_string()]);
    }
    ble
}

/// `pair --adapter NAME` of a device already paired: bond it through that
/// adapter as well, so it can move there (BlueZ keeps bonds per adapter).
/// Same device id, secret and seq line; nothing is registered anew.
async fn bond_through(
    cfg: &GatewayConfig,
    d: &DeviceRow,
    answers: &PairingAnswers,
    adapter: &str,
) -> Result<()> {
    let ble = Ble::open(ble_config_through(cfg, Some(adapter))).await?;
    let info = ble.pair(&d.address, answers).await?;
    if let Some(differs) = not_the_same_device(d, &info) {
        if let Err(e) = ble.remove_device(&d.address).await {
            tracing::warn!("removing the new bond again: {e:#}");
        }
        bail!(
            "{} answers through {adapter} with {differs}: not the device {} was; nothing changed",
            d.address,
            d.device_id
        );
    }
    println!(
        "paired {} ({}) through {adapter} as well: {} can move there when its adapter is down",
        info.name.as_deref().unwrap_or("device"),
        d.address,
        d.device_id
    );
    Ok(())
}

/// What tells the device that answered at `d`'s address from `d`: another
/// kind, or another serial, model or manufacturer where both sides read one
/// (Device Information).
fn not_the_same_device(d: &DeviceRow, info: &crate::ble::PairedInfo) -> Option<String> {
    if info.kind.as_str() != d.kind {
        return Some(format!(
            "kind {} (paired as {})",
            info.kind.as_str(),
            d.kind
        ));
    }
    let fields = [
        ("serial", &d.serial, &info.serial),
        ("model", &d.model, &info.model),
        ("manufacturer", &d.manufacturer, &info.manufacturer),
    ];
    fields.iter().find_map(|(what, was, now)| match (was, now) {
        (Some(was), Some(now)) if was != now => Some(format!("{what} {now:?} (paired as {was:?})")),
        _ => None,
    })
}

/// `pair` of a device marked `needs_repair`: BlueZ's stale bond is removed,
/// the device paired again, and it keeps its device id, secret and seq line
/// (ingest sees the same device continue, no new registration).
async fn repair(
    cfg: &GatewayConfig,
    store: &Store,
    d: &DeviceRow,
    answers: &PairingAnswers,
    through: Option<&str>,
) -> Result<()> {
    // The device forgot every bond: the stale ones go from every adapter.
    Ble::open(cfg.ble_config())
        .await?
        .remove_device(&d.address)
        .await?;
    let ble = Ble::open(ble_config_through(cfg, through)).await?;
    let info = ble.pair(&d.address, answers).await?;
    if let Some(differs) = not_the_same_device(d, &info) {
        // Leave no bond to a device that is not this one.
        if let Err(e) = ble.remove_device(&d.address).await {
            tracing::warn!("removing the new bond again: {e:#}");
        }
        bail!(
            "{} answers with {differs}: not the device {} was; nothing changed — `hailan-gateway forget {}` and pair it as new if it is a new device",
            d.address,
            d.device_id,
            d.device_id
        );
    }
    store.rebonded(&d.device_id, now_ms())?;
    println!(
        "paired {} ({}) again as {}: same device id, readings continue at seq {}",
        info.name.as_deref().unwrap_or("device"),
        d.address,
        d.device_id,
        d.next_seq
    );
    Ok(())
}

/// `devices`: paired devices with battery, connection, last reading, outbox depth.
pub fn devices(cfg: &GatewayConfig, json: bool) -> Result<()> {
    let store = open_store(cfg)?;
    let rows = store.devices()?;
    let slots = store.slots()?;
    let slots_of = |d: &DeviceRow| -> Vec<&crate::store::SlotRow> {
        slots
            .iter()
            .filter(|s| s.device_id == d.device_id)
            .collect()
    };
    if json {
        let mut out = Vec::new();
        for d in &rows {
            let mut v = serde_json::to_value(d)?;
            if let Some(o) = v.as_object_mut() {
                o.insert("user_slots".into(), serde_json::to_value(slots_of(d))?);
            }
            out.push(v);
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no paired devices; `hailan-gateway scan`, then `hailan-gateway pair <address>`");
        return Ok(());
    }
    println!(
        "{:<28} {:<19} {:<22} {:>7} {:<12} {:>8} {:>7}  LAST READING",
        "DEVICE", "ADDRESS", "TYPE", "BATTERY", "LINK", "NEXT SEQ", "OUTBOX"
    );
    let now = now_ms();
    let ago = |t: Option<i64>| {
        t.map_or("never".into(), |t| {
            format!("{} s ago", (now - t).max(0) / 1000)
        })
    };
    for d in &rows {
        println!(
            "{:<28} {:<19} {:<22} {:>7} {:<12} {:>8} {:>7}  {}",
            d.device_id,
            d.address,
            d.kind,
            d.battery.map_or("-".into(), |b| format!("{b} %")),
            if d.needs_repair {
                "needs repair"
            } else if d.connected {
                "connected"
            } else {
                "-"
            },
            d.next_seq,
            d.outbox_depth,
            ago(d.last_reading_at_ms)
        );
        for s in slots_of(d) {
            println!(
                "  {:<26} user {:<3} of {:<34} {:>8} {:>7}  {}",
                s.slot_id,
                s.user_index,
                s.patient.as_deref().unwrap_or("the owner"),
                s.next_seq,
                "",
                ago(s.last_reading_at_ms)
            );
        }
    }
    Ok(())
}

/// `forget`: remove a device, its secret and its unsent readings, and its
/// bond from BlueZ (so pairing it again is a new pairing, passkey and all).
pub async fn forget(cfg: &GatewayConfig, who: &str) -> Result<()> {
    let store = open_store(cfg)?;
    if store.slots()?.iter().any(|s| s.slot_id == who) {
        let dropped = store.forget_slot(who)?;
        println!("forgot user slot {who}; {dropped} unsent outbox entr(y/ies) dropped");
        return Ok(());
    }
    let d = store
        .find_device(who)?
        .with_context(|| format!("no paired device {who:?} (see `hailan-gateway devices`)"))?;
    let dropped = store.forget_device(&d.device_id)?;
    // The gateway's side is gone whatever BlueZ says; a bond left behind is
    // reported with the command that removes it by hand.
    let removed = match Ble::open(cfg.ble_config()).await {
        Ok(ble) => ble.remove_device(&d.address).await,
        Err(e) => Err(e),
    };
    if let Err(e) = removed {
        eprintln!(
            "warning: {} is forgotten here but BlueZ may still hold its bond ({e:#}); remove it with `bluetoothctl remove {}`",
            d.device_id, d.address
        );
    }
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
    /// The daemon is up: the pid it recorded is alive and its heartbeat in
    /// the store is less than 15 s old.
    pub daemon_running: bool,
    /// The daemon's process id, when it is running.
    pub daemon_pid: Option<u32>,
    /// The daemon's last word on the broker link (`connected`,
    /// `down since <ms>: <error>`, `stopped`); `None` when it is not running.
    pub broker: Option<String>,
    /// Paired devices, `needs_repair` ones included.
    pub devices: usize,
    /// Paired devices the daemon holds a BLE link to (0 when it is not running).
    pub devices_connected: usize,
    /// Devices that refused their bond: `hailan-gateway pair` them again.
    pub devices_needing_repair: Vec<String>,
    /// Envelopes, readings and bytes waiting in the outbox for a PUBACK.
    pub outbox: crate::store::OutboxStats,
    /// Seconds since the oldest unsent reading was recorded (measured on
    /// the device, not queued); `None` when no reading waits.
    pub oldest_unsent_age_s: Option<i64>,
    /// Shared devices' readings held for the owner to assign
    /// (`hailan-gateway unassigned`).
    pub unassigned: usize,
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
        devices_needing_repair: devices
            .iter()
            .filter(|d| d.needs_repair)
            .map(|d| d.device_id.clone())
            .collect(),
        oldest_unsent_age_s: outbox
            .oldest_recorded_at_ms
            .map(|t| (now - t).max(0) / 1000),
        outbox,
        unassigned: store.held()?.iter().filter(|h| h.slot_id.is_none()).count(),
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
        for d in &s.devices_needing_repair {
            println!(
                "         {d} needs repair: its bond was refused; `hailan-gateway pair {d}` again"
            );
        }
        println!(
            "outbox:  {} readings in {} envelopes, {} bytes{}",
            s.outbox.readings,
            s.outbox.entries,
            s.outbox.bytes,
            s.oldest_unsent_age_s.map_or(String::new(), |a| format!(
                ", oldest unsent reading {a} s old"
            ))
        );
        if s.unassigned > 0 {
            println!(
                "held:    {} reading(s) of shared devices name no mapped user: `hailan-gateway unassigned`",
                s.unassigned
            );
        }
    }
    Ok(running)
}
