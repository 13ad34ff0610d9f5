//! Pairing a new device (`Ble::pair`): find it, connect, bond when its kind
//! has encrypted characteristics, prove the GATT table is the kind's, read
//! Device Information and battery, disconnect.
//!
//! btleplug has no pair call: the owner's pairing is BlueZ `Device1.Pair`
//! with the gateway's agent answering ([`agent::pair`]). Nothing else bonds:
//! a session that finds a bond lost marks the device `needs_repair`.

use super::adapter::{Radio, normalise_address};
use super::agent::{self, PairingAnswers};
use super::gatt::{self, needs_bond};
use super::scan::event_peripheral;
use super::{BleConfig, PairedInfo};
use anyhow::{Context, bail};
use btleplug::api::{Central as _, Peripheral as _};
use btleplug::platform::Peripheral;
use futures::StreamExt;
use hailan_proto::columns;
use hailan_proto::gatt::DeviceKind;
use tokio::time::Instant;

/// Does this peripheral answer to `who` (address or advertised name)?
async fn answers_to(p: &Peripheral, who: &str) -> bool {
    if p.address().to_string().eq_ignore_ascii_case(who.trim()) {
        return true;
    }
    match p.properties().await {
        Ok(Some(props)) => [props.local_name, props.advertisement_name]
            .into_iter()
            .flatten()
            .filter_map(|n| columns::fit_text(&columns::NAME, &n))
            .any(|n| n.eq_ignore_ascii_case(who.trim())),
        _ => false,
    }
}

/// The peripheral for `who`, scanning until `deadline` if BlueZ does not know it yet.
pub(super) async fn find(
    radio: &Radio,
    who: &str,
    deadline: Instant,
) -> anyhow::Result<Peripheral> {
    // Subscribe before looking, so a discovery in between is not missed;
    // btleplug replays the known devices at the start of the stream.
    let mut events = radio
        .central
        .events()
        .await
        .with_context(|| format!("subscribing to events of adapter {}", radio.name))?;
    if let Some(a) = normalise_address(who)
        && let Ok(p) = radio.central.peripheral(&radio.peripheral_id(&a)?).await
    {
        return Ok(p);
    }
    for p in radio.central.peripherals().await.unwrap_or_default() {
        if answers_to(&p, who).await {
            return Ok(p);
        }
    }
    radio.start_scan().await?;
    let found = async {
        while let Some(ev) = events.next().await {
            let Some(id) = event_peripheral(&ev) else {
                continue;
            };
            if let Ok(p) = radio.central.peripheral(id).await
                && answers_to(&p, who).await
            {
                return Some(p);
            }
        }
        None
    };
    let r = tokio::time::timeout_at(deadline, found).await;
    radio.stop_scan().await;
    match r {
        Ok(Some(p)) => Ok(p),
        Ok(None) => bail!("BlueZ event stream ended while looking for {who:?}"),
        Err(_) => bail!(
            "no device {who:?} (address or advertised name) found on {} within the pair timeout",
            radio.name
        ),
    }
}

/// The kind a connected peripheral is: the first advertised health kind
/// whose GATT table satisfies it, else the first discovered one that does.
fn kind_of(p: &Peripheral, advertised: &[DeviceKind]) -> Option<DeviceKind> {
    let discovered = DeviceKind::from_services(&gatt::services(p));
    advertised
        .iter()
        .chain(discovered.iter())
        .copied()
        .find(|k| k.is_satisfied_by(&gatt::characteristics_of(p, k.service())))
}

/// The command an owner runs to pair `who` again, quoted for a shell.
fn pair_command(who: &str) -> String {
    let plain = !who.is_empty()
        && who
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":_.-".contains(c));
    if plain {
        format!("hailan-gateway pair {who}")
    } else {
        format!("hailan-gateway pair '{}'", who.replace('\'', r"'\''"))
    }
}

/// See [`super::Ble::pair`].
pub(crate) async fn pair(
    radio: &Radio,
    cfg: &BleConfig,
    who: &str,
    answers: &PairingAnswers,
) -> anyhow::Result<PairedInfo> {
    let deadline = Instant::now() + cfg.pair_timeout;
    let p = find(radio, who, deadline).await?;
    let address = p.address().to_string().to_ascii_uppercase();
    let label = if address.eq_ignore_ascii_case(who.trim()) {
        address.clone()
    } else {
        format!("{who} ({address})")
    };
    let bonding = Bonding {
        answers,
        command: pair_command(who),
    };
    let r = paired_info(radio, cfg, &p, &address, &label, deadline, &bonding).await;
    // Always leave the device free (sessions connect it when it is known).
    if p.is_connected().await.unwrap_or(false)
        && let Err(e) = p.disconnect().await
    {
        tracing::warn!(device = %label, "disconnecting after pairing: {e}");
    }
    r
}

/// How to bond: the owner's answers for the agent, and the command named in errors.
struct Bonding<'a> {
    answers: &'a PairingAnswers,
    command: String,
}

async fn paired_info(
    radio: &Radio,
    cfg: &BleConfig,
    p: &Peripheral,
    address: &str,
    label: &str,
    deadline: Instant,
    bonding: &Bonding<'_>,
) -> anyhow::Result<PairedInfo> {
    let props = p
        .properties()
        .await
        .with_context(|| format!("reading properties of {label}"))?
        .unwrap_or_default();
    // Advertised names come NUL-padded from some devices: fit for registering.
    let name = props
        .local_name
        .as_deref()
        .and_then(|n| columns::fit_text(&columns::NAME, n));
    let advertised: Vec<u16> = props
        .services
        .iter()
        .filter_map(|u| gatt::uuid16(u.as_u128()))
        .collect();
    let advertised = DeviceKind::from_services(&advertised);
    tokio::time::timeout_at(deadline, p.connect())
        .await
        .with_context(|| format!("connecting to {label}: pair timeout"))?
        .with_context(|| format!("connecting to {label}"))?;
    p.discover_services()
        .await
        .with_context(|| format!("discovering services of {label}"))?;
    let Some(kind) = kind_of(p, &advertised) else {
        bail!(
            "{label} is not a supported health device: its services are {:04X?}",
            gatt::services(p)
        );
    };
    let id = radio.device_id(address)?;
    if needs_bond(kind) {
        agent::pair(
            &format!("/org/bluez/{id}"),
            label,
            &bonding.command,
            bonding.answers,
            cfg.pair_timeout,
        )
        .await?;
        tracing::info!(device = %label, "bonded");
        p.discover_services()
            .await
            .with_context(|| format!("discovering services of {label} after bonding"))?;
        // Prove the bond: the mandatory measurement characteristic must now
        // accept a subscription (encrypted link).
        if let Some((u, _)) = gatt::subscribed(kind).find(|(_, required)| *required)
            && let Some(c) = gatt::find(p, kind.service(), u)
        {
            p.subscribe(&c).await.with_context(|| {
                format!("{label} bonded, but {u:04X} still refuses a subscription")
            })?;
            if let Err(e) = p.unsubscribe(&c).await {
                tracing::debug!(device = %label, "unsubscribing {u:04X}: {e}");
            }
        }
    }
    let bonded = radio
        .bluez
        .get_device_info(&id)
        .await
        .map(|d| d.paired || d.bonded)
        .unwrap_or(false);
    let battery = match gatt::battery_char(p) {
        Some(c) => match gatt::read(p, &c).await {
            Ok(b) => gatt::decode_battery(label, &b),
            Err(e) => {
                tracing::warn!(device = %label, "{e:#}");
                None
            }
        },
        None => None,
    };
    Ok(PairedInfo {
        address: address.to_string(),
        name,
        kind,
        bonded,
        manufacturer: gatt::read_info_string(p, label, 0x2A29, &columns::MANUFACTURER).await,
        model: gatt::read_info_string(p, label, 0x2A24, &columns::MODEL).await,
        serial: gatt::read_info_string(p, label, 0x2A25, &columns::SERIAL).await,
        firmware: gatt::read_info_string(
            p,
            label,
            gatt::FIRMWARE_REVISION,
            &columns::FIRMWARE_VERSION,
        )
        .await,
        hardware: gatt::read_info_string(p, label, 0x2A27, &columns::HARDWARE_VERSION).await,
        battery,
    })
}
