//! Shared test helpers: a plain btleplug client (no project code) and a
//! reference reader of the bytes.
#![allow(dead_code)]

pub mod decode;

use anyhow::{Context, bail};
use btleplug::api::bleuuid::uuid_from_u16;
use btleplug::api::{
    Central, CentralEvent, Characteristic, Manager as _, Peripheral as _, ScanFilter,
};
use btleplug::platform::{Adapter, Manager, Peripheral};
use futures::{Stream, StreamExt};
use std::collections::HashSet;
use std::pin::Pin;
use std::time::Duration;

/// How long any single awaited event may take before the test fails.
pub const STEP: Duration = Duration::from_secs(15);

/// Await `fut` or fail with `what` after [`STEP`].
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(STEP, fut)
        .await
        .with_context(|| format!("timed out: {what}"))
}

/// The first adapter of a fresh btleplug manager (on $DBUS_SYSTEM_BUS_ADDRESS).
pub async fn adapter() -> anyhow::Result<Adapter> {
    let manager = Manager::new().await?;
    manager
        .adapters()
        .await?
        .into_iter()
        .next()
        .context("no adapter")
}

pub type Events = Pin<Box<dyn Stream<Item = CentralEvent> + Send>>;

/// Scan until `n` distinct devices were discovered; returns their peripherals.
pub async fn scan(
    adapter: &Adapter,
    events: &mut Events,
    n: usize,
) -> anyhow::Result<Vec<Peripheral>> {
    adapter.start_scan(ScanFilter::default()).await?;
    let mut seen = HashSet::new();
    within("discovering devices", async {
        while seen.len() < n {
            match events.next().await {
                Some(CentralEvent::DeviceDiscovered(id)) => {
                    seen.insert(id);
                }
                Some(_) => {}
                None => bail!("event stream ended"),
            }
        }
        Ok(())
    })
    .await??;
    let mut out = Vec::new();
    for id in seen {
        out.push(adapter.peripheral(&id).await?);
    }
    Ok(out)
}

/// The peripheral with this address.
pub fn by_address<'a>(ps: &'a [Peripheral], address: &str) -> anyhow::Result<&'a Peripheral> {
    ps.iter()
        .find(|p| p.address().to_string().eq_ignore_ascii_case(address))
        .with_context(|| format!("{address} not discovered"))
}

/// Connect and discover services.
pub async fn connect(p: &Peripheral) -> anyhow::Result<()> {
    within("connect", p.connect()).await??;
    within("discover services", p.discover_services()).await??;
    Ok(())
}

/// A characteristic by 16-bit UUID.
pub fn ch(p: &Peripheral, uuid16: u16) -> anyhow::Result<Characteristic> {
    let u = uuid_from_u16(uuid16);
    p.characteristics()
        .into_iter()
        .find(|c| c.uuid == u)
        .with_context(|| format!("characteristic {uuid16:04x} not found"))
}

pub type Notes = Pin<Box<dyn Stream<Item = btleplug::api::ValueNotification> + Send>>;

/// Next notification on `uuid16`.
pub async fn next_on(notes: &mut Notes, uuid16: u16) -> anyhow::Result<Vec<u8>> {
    let u = uuid_from_u16(uuid16);
    within(&format!("notification on {uuid16:04x}"), async {
        while let Some(n) = notes.next().await {
            if n.uuid == u {
                return Ok(n.value);
            }
        }
        bail!("notification stream ended")
    })
    .await?
}

/// "name: message" of the D-Bus error inside a btleplug error (BlueZ's
/// error names are what a gateway matches on), else its Display.
pub fn dbus_error(e: &btleplug::Error) -> String {
    if let btleplug::Error::Other(inner) = e
        && let Some(bluez_async::BluetoothError::DbusError(d)) =
            inner.downcast_ref::<bluez_async::BluetoothError>()
    {
        return format!("{}: {}", d.name().unwrap_or("?"), d.message().unwrap_or(""));
    }
    format!("{e:?}")
}

/// Hex of bytes (as the truth log writes them).
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
