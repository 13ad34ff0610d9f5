//! When a measurement was taken, from a device clock nobody set (issue 19).
//!
//! Cuffs, scales, thermometers and meters stamp each measurement with their
//! own wall clock, which drifts by minutes, is often in local time, and goes
//! back to a default date (2000-01-01 and the like) when the battery is
//! changed. A measurement's time is the one thing every chart and every
//! clinician relies on, and it is bound by the proof, so the gateway places
//! it once, here, by documented rules:
//!
//! 1. No device time stamp: the gateway's time of receipt ([`TimeSource::Gateway`]).
//! 2. The device's Current Time (0x2A2B) was read on the link the value came
//!    over: the stamp is moved by the clock's offset from the gateway's
//!    (`gateway now − device now`, which also absorbs the device's time
//!    zone) ([`TimeSource::DeviceCorrected`]). If the device's clock read
//!    earlier than the device's pairing, the clock was reset: the corrected
//!    time is still right, and the reading is flagged [`ClockFlag::Reset`].
//! 3. No Current Time: the stamp is taken as it is (read as UTC)
//!    ([`TimeSource::Device`]).
//! 4. Implausible — later than receipt + [`FUTURE_SLACK_MS`], or (with no
//!    Current Time to vouch for the clock) earlier than the pairing — the
//!    time is replaced by the estimate "when the gateway received it" and
//!    flagged [`ClockFlag::Estimated`]. For a live measurement that is within
//!    seconds of the truth; for a stored record handed over later it is an
//!    upper bound. A record taken before a clock reset and handed over after
//!    it lands here too: its stamp, moved by the new clock's offset, lies in
//!    the future.
//!
//! The corrected time becomes the reading's `recorded_at` (proven); the
//! device's own stamp, the offset and the flag travel sealed in the value's
//! extras ([`Placed::extras`], WIRE.md "sealed value").

use ciborium::Value as Cbor;

/// How far past its receipt a measurement may claim to be (device and
/// gateway clocks are never exactly in step): 5 minutes.
pub const FUTURE_SLACK_MS: i64 = 5 * 60 * 1000;

/// A device clock as read on one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceClock {
    /// `gateway now − device now` in milliseconds, the device's wall-clock
    /// time read as if it were UTC.
    pub offset_ms: i64,
    /// The device's clock read earlier than the device's pairing: it was
    /// reset (battery change, factory reset).
    pub was_reset: bool,
}

impl DeviceClock {
    /// The clock of a device whose Current Time read `device_ms` (wall
    /// clock as UTC) when the gateway's clock read `gateway_ms`; `paired_at_ms`
    /// is when the gateway paired it.
    ///
    /// The offset is rounded to whole seconds: time stamps have a resolution
    /// of one second, and the read itself takes some milliseconds, so a
    /// finer offset would only move whole-second stamps off their seconds.
    pub fn read(device_ms: i64, gateway_ms: i64, paired_at_ms: i64) -> DeviceClock {
        let raw = gateway_ms.saturating_sub(device_ms);
        let offset_ms = raw
            .saturating_add(500)
            .div_euclid(1000)
            .saturating_mul(1000);
        DeviceClock {
            offset_ms,
            was_reset: device_ms < paired_at_ms,
        }
    }
}

/// Where a reading's time came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSource {
    /// The gateway's time of receipt (the value has no time stamp).
    Gateway,
    /// The device's stamp as it is (no Current Time to correct it by).
    Device,
    /// The device's stamp moved by its clock's offset.
    DeviceCorrected,
}

/// Why a reading's time deserves a second look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockFlag {
    /// The device's clock had been reset; the time was corrected through
    /// its Current Time.
    Reset,
    /// The device's stamp was implausible and was replaced by the time the
    /// gateway received the value.
    Estimated,
}

impl ClockFlag {
    /// The flag's name in the sealed extras (`clock`).
    pub fn as_str(self) -> &'static str {
        match self {
            ClockFlag::Reset => "reset",
            ClockFlag::Estimated => "estimated",
        }
    }

    /// The flag named `s` in the sealed extras.
    pub fn from_name(s: &str) -> Option<ClockFlag> {
        match s {
            "reset" => Some(ClockFlag::Reset),
            "estimated" => Some(ClockFlag::Estimated),
            _ => None,
        }
    }
}

/// A reading's time, placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// The reading's `recorded_at` (ms since the epoch, UTC).
    pub recorded_at_ms: i64,
    /// Where it came from.
    pub source: TimeSource,
    /// The device's own stamp (wall clock read as UTC), if it sent one.
    pub device_time_ms: Option<i64>,
    /// The offset applied, if any.
    pub offset_ms: Option<i64>,
    /// A flag, if the time deserves a second look.
    pub flag: Option<ClockFlag>,
}

impl Placed {
    /// The sealed extras that keep the device's side of the story:
    /// `device_time_ms` (its own stamp), `clock_offset_ms` (the correction
    /// applied) and `clock` (`reset` or `estimated`), each only when there
    /// is something to say.
    pub fn extras(&self) -> Vec<(String, Cbor)> {
        let mut out = Vec::new();
        if let Some(t) = self.device_time_ms {
            out.push(("device_time_ms".to_owned(), Cbor::from(t)));
        }
        if let Some(o) = self.offset_ms.filter(|o| *o != 0) {
            out.push(("clock_offset_ms".to_owned(), Cbor::from(o)));
        }
        if let Some(f) = self.flag {
            out.push(("clock".to_owned(), Cbor::Text(f.as_str().to_owned())));
        }
        out
    }
}

/// Place a measurement in time by the rules of this module's doc.
/// `device_time_ms` is the device's stamp (wall clock read as UTC),
/// `clock` its Current Time as read on the link, `received_at_ms` when the
/// gateway received the value and `paired_at_ms` when it paired the device.
pub fn place(
    device_time_ms: Option<i64>,
    clock: Option<DeviceClock>,
    received_at_ms: i64,
    paired_at_ms: i64,
) -> Placed {
    let Some(stamp) = device_time_ms else {
        return Placed {
            recorded_at_ms: received_at_ms,
            source: TimeSource::Gateway,
            device_time_ms: None,
            offset_ms: None,
            flag: None,
        };
    };
    let (corrected, source) = match clock {
        Some(c) => (
            stamp.saturating_add(c.offset_ms),
            TimeSource::DeviceCorrected,
        ),
        None => (stamp, TimeSource::Device),
    };
    let future = corrected > received_at_ms.saturating_add(FUTURE_SLACK_MS);
    let unvouched_past = clock.is_none() && corrected < paired_at_ms;
    if future || unvouched_past {
        return Placed {
            recorded_at_ms: received_at_ms,
            source,
            device_time_ms: Some(stamp),
            offset_ms: clock.map(|c| c.offset_ms),
            flag: Some(ClockFlag::Estimated),
        };
    }
    Placed {
        recorded_at_ms: corrected,
        source,
        device_time_ms: Some(stamp),
        offset_ms: clock.map(|c| c.offset_ms),
        flag: clock.filter(|c| c.was_reset).map(|_| ClockFlag::Reset),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PAIRED: i64 = 1_790_000_000_000;
    const NOW: i64 = 1_796_524_215_000;
    const MIN: i64 = 60_000;

    #[test]
    fn a_fast_clock_is_corrected_by_its_offset() {
        // The device is 3 minutes fast; it measured 10 minutes ago.
        let clock = DeviceClock::read(NOW + 3 * MIN, NOW, PAIRED);
        assert!(!clock.was_reset);
        let p = place(Some(NOW - 7 * MIN), Some(clock), NOW, PAIRED);
        assert_eq!(p.recorded_at_ms, NOW - 10 * MIN);
        assert_eq!(p.source, TimeSource::DeviceCorrected);
        assert_eq!(p.flag, None);
        assert_eq!(p.device_time_ms, Some(NOW - 7 * MIN));
    }

    #[test]
    fn the_offset_is_whole_seconds() {
        // Read 40 ms after the device answered, its clock 3 s fast.
        assert_eq!(
            DeviceClock::read(NOW + 3_000, NOW + 40, PAIRED).offset_ms,
            -3_000
        );
        assert_eq!(DeviceClock::read(NOW, NOW + 499, PAIRED).offset_ms, 0);
        assert_eq!(DeviceClock::read(NOW, NOW + 501, PAIRED).offset_ms, 1_000);
        assert_eq!(
            DeviceClock::read(NOW + 1_600, NOW, PAIRED).offset_ms,
            -2_000
        );
    }

    #[test]
    fn a_reset_clock_is_corrected_and_flagged() {
        // Reset to 2000-01-01 an hour ago; a measurement 5 minutes ago.
        let reset_at = 946_684_800_000;
        let device_now = reset_at + 60 * MIN;
        let clock = DeviceClock::read(device_now, NOW, PAIRED);
        assert!(clock.was_reset);
        let p = place(Some(device_now - 5 * MIN), Some(clock), NOW, PAIRED);
        assert_eq!(p.recorded_at_ms, NOW - 5 * MIN);
        assert_eq!(p.flag, Some(ClockFlag::Reset));
        // A record stamped by the clock before the reset lands in the
        // future once moved by the new offset: estimated.
        let before_reset = place(Some(NOW - 2 * 60 * MIN), Some(clock), NOW, PAIRED);
        assert_eq!(before_reset.recorded_at_ms, NOW);
        assert_eq!(before_reset.flag, Some(ClockFlag::Estimated));
    }

    #[test]
    fn without_current_time_only_plausible_stamps_are_kept() {
        let p = place(Some(NOW - 30 * MIN), None, NOW, PAIRED);
        assert_eq!((p.recorded_at_ms, p.flag), (NOW - 30 * MIN, None));
        assert_eq!(p.source, TimeSource::Device);
        let reset = place(Some(946_684_800_000), None, NOW, PAIRED);
        assert_eq!(
            (reset.recorded_at_ms, reset.flag),
            (NOW, Some(ClockFlag::Estimated))
        );
        let future = place(Some(NOW + 6 * MIN), None, NOW, PAIRED);
        assert_eq!(future.flag, Some(ClockFlag::Estimated));
        let slack = place(Some(NOW + 4 * MIN), None, NOW, PAIRED);
        assert_eq!(
            slack.flag, None,
            "clocks a few minutes apart are not implausible"
        );
    }

    #[test]
    fn no_stamp_is_the_gateways_time() {
        let p = place(None, None, NOW, PAIRED);
        assert_eq!(p.recorded_at_ms, NOW);
        assert_eq!(p.source, TimeSource::Gateway);
        assert!(p.extras().is_empty());
    }

    #[test]
    fn extras_name_the_flag_the_offset_and_the_stamp() {
        let clock = DeviceClock::read(NOW - 2 * MIN, NOW, PAIRED);
        let p = place(Some(NOW - 3 * MIN), Some(clock), NOW, PAIRED);
        let keys: Vec<String> = p.extras().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["device_time_ms", "clock_offset_ms"]);
        for f in [ClockFlag::Reset, ClockFlag::Estimated] {
            assert_eq!(ClockFlag::from_name(f.as_str()), Some(f));
        }
    }

    proptest! {
        /// Whatever a device sends, the placed time is never later than
        /// receipt + the slack, never panics, and an estimate is receipt.
        #[test]
        fn placing_never_panics_nor_lands_far_in_the_future(
            stamp in proptest::option::of(any::<i64>()),
            device_now in any::<i64>(),
            with_clock in any::<bool>(),
            received in 0i64..4_102_444_800_000,
        ) {
            let clock = with_clock.then(|| DeviceClock::read(device_now, received, PAIRED));
            let p = place(stamp, clock, received, PAIRED);
            prop_assert!(p.recorded_at_ms <= received + FUTURE_SLACK_MS);
            if p.flag == Some(ClockFlag::Estimated) {
                prop_assert_eq!(p.recorded_at_ms, received);
            }
        }
    }
}
