//! The owner's commands for a shared device (a family scale or cuff with
//! User Data Service user slots): map a user slot to a patient of the
//! household (`pair <device> --user-index N --consent C [--patient DID]`,
//! or `--consent C` alone for a new slot), list the readings held because
//! they named no mapped slot (`unassigned`), and assign one (`assign`).
//!
//! A user slot is a device of its own for ingest — its own id
//! (`{device_id}-u{N}-{random}`), secret, commitment and seq line — registered for
//! its patient (WIRE.md §2.2 `patient`) and sealed with their data key. A
//! reading is never assigned from its value: only by its user index, or by
//! the owner.

use crate::ble::Ble;
use crate::config::GatewayConfig;
use crate::owner::open_store;
use crate::pipeline::now_ms;
use crate::store::{DeviceRow, HeldRow, SlotRow, Store};
use anyhow::{Context, Result, bail};
use hailan_proto::DataType;
use hailan_proto::gatt::uds::{UCP_SUCCESS, UserControl};
use hailan_proto::group::Taken;
use hailan_proto::zk::DeviceSecret;

/// Which user slot `pair` maps.
#[derive(Clone, Debug)]
pub struct SlotRequest {
    /// An existing slot of the device; `None` registers a new one.
    pub user_index: Option<u8>,
    /// Its consent code (0–9999).
    pub consent: u16,
    /// The patient it belongs to; `None` is the gateway's owner.
    pub patient: Option<String>,
}

/// `pair <device> --consent C …`: prove the consent code to the device (or
/// register a new slot with it), then map the slot and queue its registration.
pub async fn pair_slot(
    cfg: &GatewayConfig,
    who: &str,
    request: &SlotRequest,
    through: Option<&str>,
    json: bool,
) -> Result<()> {
    let store = open_store(cfg)?;
    let d = store.find_device(who)?.with_context(|| {
        format!("{who:?} is not paired: `hailan-gateway pair {who}` first, then map its users")
    })?;
    if let Some(did) = &request.patient
        && !cfg.keys.patients.iter().any(|p| &p.did == did)
    {
        bail!(
            "--patient {did}: no [[keys.patients]] entry has this did (its data key seals the slot's readings)"
        );
    }
    let mut ble_cfg = cfg.ble_config();
    if let Some(a) = through {
        ble_cfg.adapters = crate::ble::AdapterChoice::Named(vec![a.to_string()]);
    }
    let ble = Ble::open(ble_cfg).await?;
    let ucp = match request.user_index {
        Some(user_index) => UserControl::Consent {
            user_index,
            consent: request.consent,
        },
        None => UserControl::RegisterNewUser {
            consent: request.consent,
        },
    };
    let answer = ble.user_control(&d.address, ucp).await?;
    if answer.value != UCP_SUCCESS {
        bail!(
            "{} refused {}: {}{}",
            d.device_id,
            match request.user_index {
                Some(i) => format!("consent for user {i}"),
                None => "a new user".into(),
            },
            answer.name(),
            if answer.value == hailan_proto::gatt::uds::UCP_USER_NOT_AUTHORIZED {
                " (wrong consent code?)"
            } else {
                ""
            }
        );
    }
    let Some(user_index) = request.user_index.or(answer.user_index) else {
        bail!("{} made a new user but did not say its index", d.device_id);
    };
    let slot = map_slot(cfg, &store, &d, user_index, request)?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "slot_id": slot.slot_id,
                "device_id": slot.device_id,
                "user_index": slot.user_index,
                "patient": slot.patient,
            })
        );
    } else {
        println!(
            "user {user_index} of {} mapped to {} as {}",
            d.device_id,
            slot.patient.as_deref().unwrap_or("the owner"),
            slot.slot_id
        );
    }
    Ok(())
}

/// Store user `user_index` of `d` as a slot of its own and queue its registration.
fn map_slot(
    cfg: &GatewayConfig,
    store: &Store,
    d: &DeviceRow,
    user_index: u8,
    request: &SlotRequest,
) -> Result<SlotRow> {
    let secret = DeviceSecret::generate(&mut rand_core::OsRng);
    let slot = SlotRow {
        // Unique per mapping, as a device id is per pairing: a slot
        // forgotten and mapped again is a new device to ingest (new secret,
        // new seq line), never a re-registration of the old one.
        slot_id: format!(
            "{}-u{user_index}-{:04x}",
            d.device_id,
            rand_core::RngCore::next_u32(&mut rand_core::OsRng) & 0xffff
        ),
        device_id: d.device_id.clone(),
        user_index,
        consent: Some(request.consent),
        patient: request.patient.clone(),
        secret: secret.clone(),
        paired_at_ms: now_ms(),
        next_seq: 1,
        last_reading_at_ms: None,
    };
    let registration = crate::owner::registration(cfg, d, &secret, slot.paired_at_ms, Some(&slot))?;
    store.add_slot(&slot, &hailan_proto::envelope::encode(&registration))?;
    Ok(slot)
}

/// `unassigned`: the readings held for the owner, oldest first.
pub fn unassigned(cfg: &GatewayConfig, json: bool) -> Result<()> {
    let rows = open_store(cfg)?.held()?;
    if json {
        let rows: Vec<serde_json::Value> = rows.iter().map(held_json).collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no unassigned readings");
        return Ok(());
    }
    println!(
        "{:>6}  {:<28} {:>4}  {:<24} {:<26} ASSIGNED",
        "ID", "DEVICE", "USER", "RECORDED (UTC)", "VALUE"
    );
    for r in &rows {
        let taken = Taken::from_cbor(&r.taken).ok();
        println!(
            "{:>6}  {:<28} {:>4}  {:<24} {:<26} {}",
            r.id,
            r.device_id,
            r.user_index.map_or("-".into(), |u| u.to_string()),
            taken.as_ref().map_or("?".into(), |t| utc(t.recorded_at_ms)),
            taken
                .as_ref()
                .map_or("?".into(), |t| value_text(&r.data_type, t)),
            r.slot_id.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

fn held_json(r: &HeldRow) -> serde_json::Value {
    let taken = Taken::from_cbor(&r.taken).ok();
    serde_json::json!({
        "id": r.id,
        "device_id": r.device_id,
        "user_index": r.user_index,
        "data_type": r.data_type,
        "recorded_at_ms": taken.as_ref().map(|t| t.recorded_at_ms),
        "value": taken.as_ref().map(|t| value_text(&r.data_type, t)),
        "received_at_ms": r.received_at_ms,
        "assigned_to": r.slot_id,
    })
}

fn utc(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}

/// The reading's slots as the owner reads them: `82.35 kg`, `121 mm[Hg] / 79 mm[Hg] …`.
fn value_text(data_type: &str, t: &Taken) -> String {
    let Some(dt) = DataType::from_name(data_type) else {
        return format!("{:?}", t.slots);
    };
    dt.spec()
        .slots
        .iter()
        .zip(&t.slots)
        .map(|(s, v)| format!("{} {}", s.to_decimal(*v), s.unit))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// `assign <reading> <user>`: give held reading `id` to the slot of its
/// device that `user` names (its user index, or its patient's DID).
pub fn assign(cfg: &GatewayConfig, id: i64, user: &str) -> Result<()> {
    let store = open_store(cfg)?;
    let held = store
        .held()?
        .into_iter()
        .find(|r| r.id == id)
        .with_context(|| format!("no unassigned reading {id} (see `hailan-gateway unassigned`)"))?;
    if let Some(slot) = &held.slot_id {
        bail!("reading {id} is assigned to {slot} already");
    }
    let slots: Vec<SlotRow> = store
        .slots()?
        .into_iter()
        .filter(|s| s.device_id == held.device_id)
        .collect();
    let index: Option<u8> = user.parse().ok();
    let hits: Vec<&SlotRow> = slots
        .iter()
        .filter(|s| Some(s.user_index) == index || s.patient.as_deref() == Some(user))
        .collect();
    let slot = match hits.as_slice() {
        [one] => *one,
        [] => bail!(
            "{user:?} names no user slot of {} (mapped: {})",
            held.device_id,
            slots
                .iter()
                .map(|s| format!(
                    "{} {}",
                    s.user_index,
                    s.patient.as_deref().unwrap_or("owner")
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => bail!(
            "{user:?} names several user slots of {}: give the user index",
            held.device_id
        ),
    };
    store.assign(id, &slot.slot_id)?;
    println!(
        "reading {id} assigned to user {} ({}) as {}; the daemon sends it with its original time",
        slot.user_index,
        slot.patient.as_deref().unwrap_or("the owner"),
        slot.slot_id
    );
    Ok(())
}
