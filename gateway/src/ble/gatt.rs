//! GATT helpers shared by pairing and the sessions: which characteristics a
//! kind subscribes to and forwards, finding them on a peripheral, and
//! reading Device Information and the battery with proto's decoders.

use super::adapter::CALL_TIMEOUT;
use anyhow::Context;
use btleplug::api::{Characteristic, Peripheral as _};
use btleplug::platform::Peripheral;
use hailan_proto::columns;
use hailan_proto::gatt::device_kind::{BATTERY_SERVICE, DEVICE_INFORMATION_SERVICE};
use hailan_proto::gatt::{BatteryLevel, Delivery, DeviceInfoString, DeviceKind, sig_uuid16};

/// Battery Level.
pub(crate) const BATTERY_LEVEL: u16 = 0x2A19;
/// Record Access Control Point.
pub(crate) const RACP: u16 = 0x2A52;
/// Glucose Measurement.
pub(crate) const GLUCOSE_MEASUREMENT: u16 = 0x2A18;
/// PLX Spot-check Measurement (live, and stored ones fetched by RACP).
pub(crate) const PLX_SPOT_CHECK: u16 = 0x2A5E;
/// PLX Continuous Measurement (a spot-check-only oximeter has none).
pub(crate) const PLX_CONTINUOUS: u16 = 0x2A5F;
/// Firmware Revision String.
pub(crate) const FIRMWARE_REVISION: u16 = 0x2A26;
/// Current Time Service.
pub(crate) const CURRENT_TIME_SERVICE: u16 = 0x1805;
/// Current Time.
pub(crate) const CURRENT_TIME: u16 = 0x2A2B;

/// The 16-bit SIG UUID of a UUID (given as `Uuid::as_u128`), if it is on the SIG base.
pub(crate) fn uuid16(u: u128) -> Option<u16> {
    sig_uuid16(u)
}

/// Kinds whose measurement characteristics are encrypted: the device must be
/// bonded (BlueZ `Device1.Pair`) before they can be subscribed.
pub(crate) fn needs_bond(kind: DeviceKind) -> bool {
    matches!(
        kind,
        DeviceKind::BloodPressureMonitor | DeviceKind::GlucoseMeter
    )
}

/// The kind's characteristics to enable notifications/indications on.
pub(crate) fn subscribed(kind: DeviceKind) -> impl Iterator<Item = (u16, bool)> {
    kind.characteristics()
        .iter()
        .filter(|u| u.delivery != Delivery::Read)
        .map(|u| (u.characteristic.uuid16(), u.required))
}

/// Is a value on `uuid16` forwarded as [`super::BleEvent::Measurement`]?
/// Every Notify/Indicate characteristic of the kind (measurements and their
/// companions: intermediate cuff pressure, intermediate temperature, glucose
/// context); not the RACP control point (its responses are handled by the
/// session) and not the battery (a [`super::BleEvent::State`]).
pub(crate) fn forwarded(kind: DeviceKind, uuid16: u16) -> bool {
    kind.characteristics().iter().any(|u| {
        u.characteristic.uuid16() == uuid16
            && matches!(u.delivery, Delivery::Notify | Delivery::Indicate)
    })
}

/// A discovered characteristic of `service16` with UUID `char16`.
pub(crate) fn find(p: &Peripheral, service16: u16, char16: u16) -> Option<Characteristic> {
    p.characteristics().into_iter().find(|c| {
        uuid16(c.uuid.as_u128()) == Some(char16)
            && uuid16(c.service_uuid.as_u128()) == Some(service16)
    })
}

/// The 16-bit UUIDs of the discovered characteristics of `service16`.
pub(crate) fn characteristics_of(p: &Peripheral, service16: u16) -> Vec<u16> {
    p.characteristics()
        .iter()
        .filter(|c| uuid16(c.service_uuid.as_u128()) == Some(service16))
        .filter_map(|c| uuid16(c.uuid.as_u128()))
        .collect()
}

/// The 16-bit UUIDs of the discovered services.
pub(crate) fn services(p: &Peripheral) -> Vec<u16> {
    p.services()
        .iter()
        .filter_map(|s| uuid16(s.uuid.as_u128()))
        .collect()
}

/// Read a characteristic, bounded by [`CALL_TIMEOUT`].
pub(crate) async fn read(p: &Peripheral, c: &Characteristic) -> anyhow::Result<Vec<u8>> {
    let what = uuid16(c.uuid.as_u128()).map_or_else(|| c.uuid.to_string(), |u| format!("{u:04X}"));
    tokio::time::timeout(CALL_TIMEOUT, p.read(c))
        .await
        .with_context(|| format!("reading {what}: no answer within {CALL_TIMEOUT:?}"))?
        .with_context(|| format!("reading {what}"))
}

/// A Device Information string fitted to the column it is registered in
/// (cut at NUL padding, trimmed, shortened: [`columns::fit_text`]); `None`
/// if absent, empty or unreadable (logged).
pub(crate) async fn read_info_string(
    p: &Peripheral,
    who: &str,
    char16: u16,
    field: &columns::Field,
) -> Option<String> {
    let c = find(p, DEVICE_INFORMATION_SERVICE, char16)?;
    match read(p, &c).await {
        Ok(bytes) => match DeviceInfoString::decode(&bytes) {
            Ok(s) => columns::fit_text(field, &s.0),
            Err(e) => {
                tracing::warn!(device = %who, "device information {char16:04X}: {e}");
                None
            }
        },
        Err(e) => {
            tracing::warn!(device = %who, "{e:#}");
            None
        }
    }
}

/// The battery characteristic, if the device has one.
pub(crate) fn battery_char(p: &Peripheral) -> Option<Characteristic> {
    find(p, BATTERY_SERVICE, BATTERY_LEVEL)
}

/// Decode a battery value; a bad one is logged and ignored.
pub(crate) fn decode_battery(who: &str, bytes: &[u8]) -> Option<u8> {
    match BatteryLevel::decode(bytes) {
        Ok(b) => Some(b.percent()),
        Err(e) => {
            tracing::warn!(device = %who, "battery level {bytes:02X?}: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_each_kind_subscribes_and_forwards() {
        let g: Vec<u16> = subscribed(DeviceKind::GlucoseMeter).map(|s| s.0).collect();
        assert_eq!(g, vec![0x2A18, 0x2A34, 0x2A52]);
        assert!(forwarded(DeviceKind::GlucoseMeter, 0x2A18));
        assert!(forwarded(DeviceKind::GlucoseMeter, 0x2A34));
        assert!(!forwarded(DeviceKind::GlucoseMeter, RACP));
        assert!(!forwarded(DeviceKind::HeartRateMonitor, 0x2A38));
        assert!(!forwarded(DeviceKind::HeartRateMonitor, BATTERY_LEVEL));
        assert!(forwarded(DeviceKind::BloodPressureMonitor, 0x2A36));
        assert!(needs_bond(DeviceKind::BloodPressureMonitor));
        assert!(!needs_bond(DeviceKind::Thermometer));
    }
}
