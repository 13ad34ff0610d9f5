//! Device clocks (issue 19): on every connection a device's Current Time
//! (0x2A2B) is read, before any measurement is subscribed to, so the values
//! that link carries — stored ones included — are placed in time by the
//! clock that stamped them ([`hailan_proto::clock`]). When a hand-over
//! device's link idles, its data handed over, a clock found off by more
//! than [`TOLERANCE_MS`] is set to the gateway's local time
//! (`ble.set_device_clock`): setting it earlier would leave records stamped
//! by the old clock to be read by the new one.

use super::gatt::{self, CURRENT_TIME, CURRENT_TIME_SERVICE};
use super::wall_ms;
use crate::ble::adapter::CALL_TIMEOUT;
use anyhow::Context;
use btleplug::api::{CharPropFlags, Characteristic, Peripheral as _, WriteType};
use btleplug::platform::Peripheral;
use hailan_proto::clock::DeviceClock;
use hailan_proto::gatt::CurrentTime;

/// A clock closer than this to the gateway's is left alone: 2 s.
pub(crate) const TOLERANCE_MS: i64 = 2_000;

/// The gateway's local time minus UTC, in milliseconds: what a device
/// showing the gateway's local time reads ahead of UTC.
fn local_minus_utc_ms() -> i64 {
    i64::from(chrono::Local::now().offset().local_minus_utc()) * 1000
}

/// The device's Current Time characteristic, if it has one.
pub(crate) fn find(p: &Peripheral) -> Option<Characteristic> {
    gatt::find(p, CURRENT_TIME_SERVICE, CURRENT_TIME)
}

/// Read the device's clock; `None` (logged) if it has no Current Time or
/// its answer does not decode to a date.
pub(crate) async fn read(
    p: &Peripheral,
    c: &Characteristic,
    who: &str,
    paired_at_ms: i64,
) -> Option<DeviceClock> {
    let bytes = match gatt::read(p, c).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(device = %who, "device clock: {e:#}");
            return None;
        }
    };
    let gateway_ms = wall_ms();
    let device_ms = match CurrentTime::decode(&bytes).map(|t| t.unix_ms_naive()) {
        Ok(Some(ms)) => ms,
        Ok(None) => {
            tracing::warn!(device = %who, bytes = %hex::encode(&bytes), "device clock: not a date");
            return None;
        }
        Err(e) => {
            tracing::warn!(device = %who, bytes = %hex::encode(&bytes), "device clock: {e}");
            return None;
        }
    };
    let clock = DeviceClock::read(device_ms, gateway_ms, paired_at_ms);
    let off_ms = clock.offset_ms + local_minus_utc_ms();
    if clock.was_reset {
        tracing::warn!(device = %who, "device clock reads earlier than its pairing (reset, e.g. by a battery change); its time stamps are corrected by {} s", clock.offset_ms / 1000);
    } else if off_ms.abs() >= TOLERANCE_MS {
        tracing::info!(device = %who, "device clock is {:.1} s {} the gateway's", (off_ms.abs() as f64) / 1000.0, if off_ms > 0 { "behind" } else { "ahead of" });
    }
    Some(clock)
}

/// Whether a clock read as `clock` should be set.
pub(crate) fn needs_setting(clock: DeviceClock) -> bool {
    clock.was_reset || (clock.offset_ms + local_minus_utc_ms()).abs() >= TOLERANCE_MS
}

/// Set the device's clock to the gateway's local time. Returns the clock
/// as it now stands, or `None` (logged) if the device refused.
pub(crate) async fn set(
    p: &Peripheral,
    c: &Characteristic,
    who: &str,
    was: DeviceClock,
) -> Option<DeviceClock> {
    if !c
        .properties
        .intersects(CharPropFlags::WRITE | CharPropFlags::WRITE_WITHOUT_RESPONSE)
    {
        tracing::debug!(device = %who, "device clock is read-only; its offset is corrected, not set");
        return None;
    }
    let local = local_minus_utc_ms();
    let now = CurrentTime::at(wall_ms() + local)?;
    let written = tokio::time::timeout(
        CALL_TIMEOUT,
        p.write(c, &now.encode(), WriteType::WithResponse),
    )
    .await
    .context("no answer")
    .and_then(|r| r.context("refused"));
    match written {
        Ok(()) => {
            tracing::info!(device = %who, "device clock set (it was {:.1} s off)", ((was.offset_ms + local).abs() as f64) / 1000.0);
            Some(DeviceClock {
                offset_ms: -local,
                was_reset: false,
            })
        }
        Err(e) => {
            tracing::warn!(device = %who, "setting the device clock: {e:#}");
            None
        }
    }
}
