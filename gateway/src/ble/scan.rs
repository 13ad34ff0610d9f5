//! One-off scans for the CLI (`Ble::scan`): which health devices are near,
//! with name, kinds from the advertised services, and RSSI.

use super::Nearby;
use super::adapter::Radio;
use super::gatt::uuid16;
use anyhow::{Context, bail};
use btleplug::api::{Central as _, CentralEvent, Peripheral as _};
use btleplug::platform::{Peripheral, PeripheralId};
use futures::StreamExt;
use hailan_proto::gatt::DeviceKind;
use std::collections::HashMap;
use std::time::Duration;

/// The peripheral an advertising event is about.
pub(crate) fn event_peripheral(ev: &CentralEvent) -> Option<&PeripheralId> {
    match ev {
        CentralEvent::DeviceDiscovered(id)
        | CentralEvent::DeviceUpdated(id)
        | CentralEvent::RssiUpdate { id, .. }
        | CentralEvent::ServicesAdvertisement { id, .. }
        | CentralEvent::ManufacturerDataAdvertisement { id, .. }
        | CentralEvent::ServiceDataAdvertisement { id, .. } => Some(id),
        _ => None,
    }
}

/// What a peripheral advertises, if it is a health device.
pub(crate) async fn nearby(p: &Peripheral) -> Option<Nearby> {
    let props = p.properties().await.ok()??;
    let services: Vec<u16> = props
        .services
        .iter()
        .filter_map(|u| uuid16(u.as_u128()))
        .collect();
    let kinds = DeviceKind::from_services(&services);
    if kinds.is_empty() {
        return None;
    }
    Some(Nearby {
        address: p.address().to_string().to_ascii_uppercase(),
        name: props
            .local_name
            .as_deref()
            .and_then(|n| hailan_proto::columns::fit_text(&hailan_proto::columns::NAME, n)),
        rssi: props.rssi,
        kinds,
    })
}

/// Scan for `duration`; see [`super::Ble::scan`].
pub(crate) async fn scan(
    radio: &Radio,
    duration: Duration,
    mut progress: impl FnMut(&Nearby),
) -> anyhow::Result<Vec<Nearby>> {
    let mut events = radio
        .central
        .events()
        .await
        .with_context(|| format!("subscribing to events of adapter {}", radio.name))?;
    radio.start_scan().await?;
    let deadline = tokio::time::Instant::now() + duration;
    let mut found: HashMap<String, Nearby> = HashMap::new();
    let outcome = loop {
        let ev = match tokio::time::timeout_at(deadline, events.next()).await {
            Err(_) => break Ok(()),
            Ok(None) => break Err(anyhow::anyhow!("BlueZ event stream ended while scanning")),
            Ok(Some(ev)) => ev,
        };
        let Some(id) = event_peripheral(&ev) else {
            continue;
        };
        let Ok(p) = radio.central.peripheral(id).await else {
            continue;
        };
        let Some(n) = nearby(&p).await else {
            continue;
        };
        let changed = found
            .get(&n.address)
            .is_none_or(|old| old.rssi != n.rssi || old.name != n.name || old.kinds != n.kinds);
        if changed {
            progress(&n);
            found.insert(n.address.clone(), n);
        }
    };
    radio.stop_scan().await;
    if let Err(e) = outcome {
        bail!(e);
    }
    let mut all: Vec<Nearby> = found.into_values().collect();
    // strongest first; unknown RSSI last; then by address for a stable order
    all.sort_by(|a, b| {
        b.rssi
            .unwrap_or(i16::MIN)
            .cmp(&a.rssi.unwrap_or(i16::MIN))
            .then_with(|| a.address.cmp(&b.address))
    });
    Ok(all)
}
