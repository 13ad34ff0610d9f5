//! Date Time (0x2A08, 7 bytes) and Current Time (0x2A2B, 10 bytes).
//!
//! Date Time: year uint16 (0 = unknown, otherwise 1582–9999), month uint8
//! (0 = unknown, 1–12), day uint8 (0 = unknown, 1–31), hours 0–23,
//! minutes 0–59, seconds 0–59. It is the device's local wall-clock time with
//! no zone. Decoding keeps the bytes as sent (a device with an unset clock
//! still delivers its measurement); [`DateTime::is_valid_instant`] says
//! whether it names a real instant, and only then does it become a reading's
//! `recorded_at` (see [`super::slots`]).
//!
//! Current Time: Date Time, Day of Week (0 = unknown, 1 = Monday … 7 =
//! Sunday), Fractions256 (1/256 s), Adjust Reason (bit 0 manual update, bit 1
//! external reference update, bit 2 time-zone change, bit 3 DST change).

use super::GattError;
use super::codec::{Reader, Writer};
use serde_json::{Value, json};
use std::fmt;

/// A Date Time field, exactly as the device sent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DateTime {
    /// 0 = unknown, otherwise 1582–9999.
    pub year: u16,
    /// 0 = unknown, otherwise 1–12.
    pub month: u8,
    /// 0 = unknown, otherwise 1–31.
    pub day: u8,
    /// 0–23.
    pub hours: u8,
    /// 0–59.
    pub minutes: u8,
    /// 0–59.
    pub seconds: u8,
}

impl DateTime {
    /// Length on the wire.
    pub const LEN: usize = 7;

    /// A date time from its parts (not validated; see [`Self::is_valid_instant`]).
    pub const fn new(year: u16, month: u8, day: u8, hours: u8, minutes: u8, seconds: u8) -> Self {
        DateTime {
            year,
            month,
            day,
            hours,
            minutes,
            seconds,
        }
    }

    pub(crate) fn from_bytes(b: [u8; 7]) -> Self {
        DateTime {
            year: u16::from_le_bytes([b[0], b[1]]),
            month: b[2],
            day: b[3],
            hours: b[4],
            minutes: b[5],
            seconds: b[6],
        }
    }

    /// The 7 wire bytes.
    pub fn to_bytes(&self) -> [u8; 7] {
        let y = self.year.to_le_bytes();
        [
            y[0],
            y[1],
            self.month,
            self.day,
            self.hours,
            self.minutes,
            self.seconds,
        ]
    }

    /// Decode exactly 7 bytes (the Date Time characteristic 0x2A08).
    pub fn decode(bytes: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(bytes)?;
        let v = r.date_time("date time")?;
        r.finish()?;
        Ok(v)
    }

    /// The 7 wire bytes as a vector.
    pub fn encode(&self) -> Vec<u8> {
        self.to_bytes().to_vec()
    }

    /// Whether every part is known and in range, and the day exists in that
    /// month (leap years counted): the time names one wall-clock instant.
    pub fn is_valid_instant(&self) -> bool {
        (1582..=9999).contains(&self.year)
            && (1..=12).contains(&self.month)
            && self.day >= 1
            && self.day <= days_in_month(self.year, self.month)
            && self.hours < 24
            && self.minutes < 60
            && self.seconds < 60
    }

    /// Seconds since 1970-01-01T00:00:00 reading this wall-clock time as if
    /// it were UTC (the gateway applies the device's zone). `None` unless
    /// [`Self::is_valid_instant`].
    pub fn unix_seconds_naive(&self) -> Option<i64> {
        if !self.is_valid_instant() {
            return None;
        }
        let days = days_from_civil(
            i64::from(self.year),
            i64::from(self.month),
            i64::from(self.day),
        );
        Some(
            days * 86_400
                + i64::from(self.hours) * 3600
                + i64::from(self.minutes) * 60
                + i64::from(self.seconds),
        )
    }

    /// This time plus `minutes` (may be negative), across day, month and
    /// year boundaries. `None` unless [`Self::is_valid_instant`] and the
    /// result stays within years 1582–9999.
    pub fn checked_add_minutes(&self, minutes: i64) -> Option<DateTime> {
        let t = self
            .unix_seconds_naive()?
            .checked_add(minutes.checked_mul(60)?)?;
        DateTime::from_unix_seconds_naive(t)
    }

    /// The wall-clock time `t` seconds after 1970-01-01T00:00:00 (the
    /// inverse of [`Self::unix_seconds_naive`]). `None` outside years
    /// 1582–9999.
    pub fn from_unix_seconds_naive(t: i64) -> Option<DateTime> {
        let days = t.div_euclid(86_400);
        let secs = t.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        let out = DateTime {
            year: u16::try_from(y).ok()?,
            month: m as u8,
            day: d as u8,
            hours: (secs / 3600) as u8,
            minutes: ((secs / 60) % 60) as u8,
            seconds: (secs % 60) as u8,
        };
        out.is_valid_instant().then_some(out)
    }

    /// JSON object `{year, month, day, hours, minutes, seconds}` (gatt.json names).
    pub fn to_json(&self) -> Value {
        json!({
            "year": self.year,
            "month": self.month,
            "day": self.day,
            "hours": self.hours,
            "minutes": self.minutes,
            "seconds": self.seconds,
        })
    }
}

impl fmt::Display for DateTime {
    /// `YYYY-MM-DD HH:MM:SS`, as sent (unknown parts print as 0).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hours, self.minutes, self.seconds
        )
    }
}

fn is_leap(y: u16) -> bool {
    (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400)
}

fn days_in_month(y: u16, m: u8) -> u8 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Current Time 0x2A2B (exactly 10 bytes; 7 bytes alone is a Date Time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CurrentTime {
    /// The Date Time part (the first 7 bytes): the device's local wall-clock time, no zone.
    pub date_time: DateTime,
    /// 0 = unknown, 1 = Monday … 7 = Sunday.
    pub day_of_week: u8,
    /// 1/256 second.
    pub fractions256: u8,
    /// Bit 0 manual update, 1 external reference update, 2 time-zone change, 3 DST change.
    pub adjust_reason: u8,
}

impl CurrentTime {
    /// Length on the wire.
    pub const LEN: usize = 10;

    /// Decode exactly 10 bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(bytes)?;
        let date_time = r.date_time("date time")?;
        let day_of_week = r.u8("day of week")?;
        let fractions256 = r.u8("fractions256")?;
        let adjust_reason = r.u8("adjust reason")?;
        r.finish()?;
        Ok(CurrentTime {
            date_time,
            day_of_week,
            fractions256,
            adjust_reason,
        })
    }

    /// The Current Time of the wall-clock instant `unix_ms` (milliseconds
    /// after 1970-01-01T00:00:00, read as wall-clock time), as a client
    /// writes it to set a device's clock: day of week from the date,
    /// adjust reason "manual time update" (bit 0). `None` outside years
    /// 1582–9999.
    pub fn at(unix_ms: i64) -> Option<CurrentTime> {
        let secs = unix_ms.div_euclid(1000);
        let date_time = DateTime::from_unix_seconds_naive(secs)?;
        // 1970-01-01 was a Thursday (4).
        let day_of_week = (secs.div_euclid(86_400) + 3).rem_euclid(7) as u8 + 1;
        Some(CurrentTime {
            date_time,
            day_of_week,
            fractions256: (unix_ms.rem_euclid(1000) * 256 / 1000) as u8,
            adjust_reason: 0b1,
        })
    }

    /// Milliseconds after 1970-01-01T00:00:00 of this wall-clock time
    /// (fractions included); `None` unless the date is a valid instant.
    pub fn unix_ms_naive(&self) -> Option<i64> {
        let s = self.date_time.unix_seconds_naive()?;
        Some(s * 1000 + i64::from(self.fractions256) * 1000 / 256)
    }

    /// The 10 wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.date_time(&self.date_time)
            .u8(self.day_of_week)
            .u8(self.fractions256)
            .u8(self.adjust_reason);
        w.finish()
    }

    /// Name of the day of week (`None` for 0 = unknown and reserved values).
    pub fn day_of_week_name(&self) -> Option<&'static str> {
        const DAYS: [&str; 7] = [
            "Monday",
            "Tuesday",
            "Wednesday",
            "Thursday",
            "Friday",
            "Saturday",
            "Sunday",
        ];
        DAYS.get(usize::from(self.day_of_week).wrapping_sub(1))
            .copied()
    }

    /// JSON with the gatt.json field names.
    pub fn to_json(&self) -> Value {
        let d = &self.date_time;
        json!({
            "year": d.year,
            "month": d.month,
            "day": d.day,
            "hours": d.hours,
            "minutes": d.minutes,
            "seconds": d.seconds,
            "day_of_week": self.day_of_week,
            "day_of_week_name": self.day_of_week_name(),
            "fractions256": self.fractions256,
            "adjust_reason": self.adjust_reason,
            "adjust_reason_bits": {
                "manual_time_update": self.adjust_reason & 1 != 0,
                "external_reference_time_update": self.adjust_reason & 2 != 0,
                "time_zone_change": self.adjust_reason & 4 != 0,
                "dst_change": self.adjust_reason & 8 != 0,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_time_at_an_instant_round_trips() {
        // 2026-12-06T02:30:15.500 was a Sunday (7).
        let ms = 1_796_524_215_500;
        let ct = CurrentTime::at(ms).expect("in range");
        assert_eq!(ct.date_time, DateTime::new(2026, 12, 6, 2, 30, 15));
        assert_eq!(ct.day_of_week, 7);
        assert_eq!(ct.fractions256, 128);
        let back = CurrentTime::decode(&ct.encode()).expect("decodes");
        assert_eq!(back.unix_ms_naive(), Some(ms));
        // 1970-01-01 was a Thursday.
        assert_eq!(CurrentTime::at(0).map(|c| c.day_of_week), Some(4));
        assert_eq!(CurrentTime::at(i64::MAX), None);
        assert_eq!(CurrentTime::at(i64::MIN), None);
    }

    #[test]
    fn glucose_offset_example() {
        let base = DateTime::new(2019, 2, 27, 11, 10, 30);
        assert_eq!(
            base.checked_add_minutes(-5),
            Some(DateTime::new(2019, 2, 27, 11, 5, 30))
        );
        let nye = DateTime::new(2023, 12, 31, 23, 59, 0);
        assert_eq!(
            nye.checked_add_minutes(2),
            Some(DateTime::new(2024, 1, 1, 0, 1, 0))
        );
        let leap = DateTime::new(2024, 3, 1, 0, 0, 0);
        assert_eq!(
            leap.checked_add_minutes(-1),
            Some(DateTime::new(2024, 2, 29, 23, 59, 0))
        );
        assert_eq!(
            DateTime::new(0, 4, 17, 20, 41, 59).checked_add_minutes(0),
            None
        );
    }

    #[test]
    fn validity_and_epoch() {
        assert_eq!(
            DateTime::new(1970, 1, 1, 0, 0, 0).unix_seconds_naive(),
            Some(0)
        );
        assert_eq!(
            DateTime::new(2000, 3, 1, 0, 0, 0).unix_seconds_naive(),
            Some(951_868_800)
        );
        assert!(!DateTime::new(2023, 2, 29, 0, 0, 0).is_valid_instant());
        assert!(DateTime::new(2024, 2, 29, 0, 0, 0).is_valid_instant());
        assert!(!DateTime::new(2024, 13, 1, 0, 0, 0).is_valid_instant());
        assert!(!DateTime::new(2024, 1, 1, 24, 0, 0).is_valid_instant());
        assert!(DateTime::new(1582, 1, 1, 0, 0, 0).is_valid_instant());
    }

    #[test]
    fn current_time_length() {
        assert!(CurrentTime::decode(&[0; 7]).is_err());
        assert!(CurrentTime::decode(&[0; 11]).is_err());
        assert_eq!(
            CurrentTime::decode(&[0; 10]).map(|c| c.encode()),
            Ok(vec![0; 10])
        );
    }
}
