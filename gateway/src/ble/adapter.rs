//! The Bluetooth adapter: which one, and the BlueZ calls btleplug lacks.
//!
//! btleplug drives scanning, connections and GATT. A second, plain
//! bluez-async session on the same bus gives what btleplug does not expose:
//! the adapter's `Powered`/`Discovering` properties (liveness, watchdog,
//! power reset), `Device1.Pair`, and device lists in one call. Also here: the
//! BlueZ error names the rest of the module reacts to.

use super::AdapterChoice;
use anyhow::{Context, bail};
use bluez_async::{AdapterId, AdapterInfo, BluetoothError, BluetoothSession, DeviceId};
use btleplug::api::{Central as _, Manager as _};
use btleplug::platform::{Adapter, Manager, PeripheralId};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long one BlueZ housekeeping call (properties, power, discovery) may take.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// One opened adapter, shared by scans, pairing, its scanner and the
/// sessions placed on it.
#[derive(Clone, Debug)]
pub(crate) struct Radio {
    /// btleplug's view (scan, connect, GATT).
    pub(crate) central: Adapter,
    /// Plain bluez-async session (power, pairing, device lists).
    pub(crate) bluez: BluetoothSession,
    /// `/org/bluez/hci0`.
    pub(crate) id: AdapterId,
    /// `hci0`.
    pub(crate) name: String,
    /// False once the bluez-async D-Bus connection is gone (nothing recovers it).
    pub(crate) dbus_alive: Arc<AtomicBool>,
}

impl Radio {
    /// Connect to BlueZ and open the adapters `choice` names, in the order
    /// named (`First`/`All`: by name, `hci0` first). The error names a
    /// missing adapter and lists those present.
    /// Also returns the named adapters that are missing (left out).
    pub(crate) async fn open(choice: &AdapterChoice) -> anyhow::Result<(Vec<Radio>, Vec<String>)> {
        let manager = Manager::new()
            .await
            .context("connecting to BlueZ (org.bluez) on the D-Bus system bus")?;
        let (handle, bluez) = BluetoothSession::new()
            .await
            .context("opening a second D-Bus session to BlueZ")?;
        let dbus_alive = Arc::new(AtomicBool::new(true));
        let alive = dbus_alive.clone();
        tokio::spawn(async move {
            let e = handle.await;
            alive.store(false, Ordering::Relaxed);
            tracing::error!("D-Bus connection to BlueZ lost: {e:?}");
        });
        let mut infos = bluez
            .get_adapters()
            .await
            .context("listing Bluetooth adapters (org.bluez ObjectManager)")?;
        infos.sort_by_key(|a| adapter_order(&a.id.to_string()));
        let names: Vec<String> = infos.iter().map(|a| a.id.to_string()).collect();
        let mut left_out = Vec::new();
        let chosen: Vec<&AdapterInfo> = match choice {
            AdapterChoice::First | AdapterChoice::All => {
                let n = if *choice == AdapterChoice::First {
                    1
                } else {
                    infos.len()
                };
                let chosen: Vec<&AdapterInfo> = infos.iter().take(n).collect();
                if chosen.is_empty() {
                    bail!(
                        "no Bluetooth adapter present (is bluetoothd running, the adapter plugged in and not rfkill-blocked?)"
                    );
                }
                chosen
            }
            AdapterChoice::Named(wanted) => {
                // Several named: run on those present (one unplugged must not
                // stop the gateway); none present is an error.
                let (found, missing): (Vec<&String>, Vec<&String>) = wanted
                    .iter()
                    .partition(|w| infos.iter().any(|a| a.id.to_string() == **w));
                if found.is_empty() {
                    let missing: Vec<String> = missing.iter().map(|w| format!("{w:?}")).collect();
                    bail!(
                        "Bluetooth adapter {} not found; adapters present: {}",
                        missing.join(", "),
                        list_or_none(&names)
                    );
                }
                left_out = missing.iter().map(|w| w.to_string()).collect();
                for w in &missing {
                    tracing::warn!(
                        "Bluetooth adapter {w:?} (ble.adapters) not found: running without it; restart the service once it is plugged in (adapters present: {})",
                        list_or_none(&names)
                    );
                }
                found
                    .iter()
                    .filter_map(|w| infos.iter().find(|a| a.id.to_string() == **w))
                    .collect()
            }
        };
        let centrals = manager
            .adapters()
            .await
            .context("listing adapters through btleplug")?;
        let mut described = Vec::new();
        for a in centrals {
            let d = a.adapter_info().await.unwrap_or_default();
            described.push((d, a));
        }
        let mut radios = Vec::new();
        for info in chosen {
            let name = info.id.to_string();
            let Some((_, central)) = described
                .iter()
                .find(|(d, _)| *d == name || d.starts_with(&format!("{name} ")))
            else {
                bail!(
                    "adapter {name} vanished while opening it; adapters present: {}",
                    list_or_none(&names)
                );
            };
            tracing::info!(adapter = %name, powered = info.powered, "Bluetooth adapter opened");
            radios.push(Radio {
                central: central.clone(),
                bluez: bluez.clone(),
                id: info.id.clone(),
                name,
                dbus_alive: dbus_alive.clone(),
            });
        }
        Ok((radios, left_out))
    }

    /// The adapter's properties, if it answers within [`CALL_TIMEOUT`].
    pub(crate) async fn info(&self) -> anyhow::Result<AdapterInfo> {
        tokio::time::timeout(CALL_TIMEOUT, self.bluez.get_adapter_info(&self.id))
            .await
            .with_context(|| {
                format!(
                    "adapter {} did not answer within {CALL_TIMEOUT:?}",
                    self.name
                )
            })?
            .with_context(|| format!("reading adapter {} properties", self.name))
    }

    /// BlueZ's device id (`hci0/dev_AA_BB_…`) for an address.
    pub(crate) fn device_id(&self, address: &str) -> anyhow::Result<DeviceId> {
        let a = normalise_address(address).with_context(|| {
            format!("{address:?} is not a Bluetooth address (AA:BB:CC:DD:EE:FF)")
        })?;
        DeviceId::from_str(&format!("{}/dev_{}", self.name, a.replace(':', "_")))
            .with_context(|| format!("device id for {a}"))
    }

    /// btleplug's peripheral id for an address.
    pub(crate) fn peripheral_id(&self, address: &str) -> anyhow::Result<PeripheralId> {
        Ok(PeripheralId::from(self.device_id(address)?))
    }

    /// Power the adapter off and on again (the cure of last resort for a
    /// radio that stopped reporting). Drops every connection.
    pub(crate) async fn power_cycle(&self) -> anyhow::Result<()> {
        let call = |on: bool| async move {
            tokio::time::timeout(CALL_TIMEOUT, self.bluez.set_powered(&self.id, on))
                .await
                .with_context(|| format!("setting {} Powered={on}: no answer", self.name))?
                .with_context(|| format!("setting {} Powered={on}", self.name))
        };
        call(false).await?;
        call(true).await
    }

    /// Start discovery (btleplug powers the adapter on first). "Already in
    /// progress" counts as started.
    pub(crate) async fn start_scan(&self) -> anyhow::Result<()> {
        let r = tokio::time::timeout(
            CALL_TIMEOUT,
            self.central
                .start_scan(btleplug::api::ScanFilter::default()),
        )
        .await
        .with_context(|| format!("starting discovery on {}: no answer", self.name))?;
        match r {
            Ok(()) => Ok(()),
            Err(e) if error_name(&e).as_deref() == Some("org.bluez.Error.InProgress") => Ok(()),
            Err(e) => {
                Err(anyhow::Error::new(e).context(format!("starting discovery on {}", self.name)))
            }
        }
    }

    /// Stop discovery; errors are only logged (nothing to stop is fine).
    pub(crate) async fn stop_scan(&self) {
        match tokio::time::timeout(CALL_TIMEOUT, self.central.stop_scan()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(adapter = %self.name, "stopping discovery: {e}"),
            Err(_) => tracing::debug!(adapter = %self.name, "stopping discovery: no answer"),
        }
    }
}

/// `hci10` after `hci9`: adapters sort by number.
fn adapter_order(name: &str) -> (u64, String) {
    let n = name
        .strip_prefix("hci")
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX);
    (n, name.to_string())
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// `aa:bb:…` → `AA:BB:…`, if it is six hex pairs.
pub(crate) fn normalise_address(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.trim().split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    ok.then(|| s.trim().to_ascii_uppercase())
}

/// The D-Bus error name (`org.bluez.Error.Failed`) and message inside a btleplug error.
pub(crate) fn dbus_error(e: &btleplug::Error) -> Option<(String, String)> {
    match e {
        btleplug::Error::Other(inner) => inner
            .downcast_ref::<BluetoothError>()
            .and_then(bluetooth_dbus_error),
        _ => None,
    }
}

/// The D-Bus error name and message inside a bluez-async error.
pub(crate) fn bluetooth_dbus_error(e: &BluetoothError) -> Option<(String, String)> {
    match e {
        BluetoothError::DbusError(d) => Some((
            d.name().unwrap_or_default().to_string(),
            d.message().unwrap_or_default().to_string(),
        )),
        _ => None,
    }
}

/// Just the D-Bus error name.
pub(crate) fn error_name(e: &btleplug::Error) -> Option<String> {
    dbus_error(e).map(|(n, _)| n)
}

/// Does this error mean "bond first" (encrypted characteristic, no bond)?
pub(crate) fn needs_pairing(e: &btleplug::Error) -> bool {
    let Some((name, msg)) = dbus_error(e) else {
        return false;
    };
    let msg = msg.to_ascii_lowercase();
    matches!(
        name.as_str(),
        "org.bluez.Error.NotPermitted"
            | "org.bluez.Error.NotAuthorized"
            | "org.bluez.Error.AuthenticationFailed"
    ) && (msg.contains("pair")
        || msg.contains("authenticat")
        || msg.contains("encrypt")
        || msg.contains("0x05")
        || msg.contains("0x0f"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked_and_upper_cased() {
        assert_eq!(
            normalise_address(" f0:4a:1a:01:00:0a ").as_deref(),
            Some("F0:4A:1A:01:00:0A")
        );
        assert_eq!(normalise_address("F0:4A:1A:01:00"), None);
        assert_eq!(normalise_address("hr0"), None);
        assert_eq!(normalise_address("F0:4A:1A:01:00:0G"), None);
    }
}
