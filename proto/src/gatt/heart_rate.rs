//! Heart Rate service 0x180D: Heart Rate Measurement 0x2A37 (notify) and
//! Body Sensor Location 0x2A38 (read).
//!
//! Heart Rate Measurement flags (uint8):
//!
//! | bit | meaning |
//! |-----|---------|
//! | 0 | HR format: 0 = uint8, 1 = uint16 |
//! | 1 | sensor contact detected (meaningful only when bit 2 = 1) |
//! | 2 | sensor contact supported |
//! | 3 | Energy Expended present |
//! | 4 | RR-Interval(s) present |
//! | 5–7 | reserved (ignored) |
//!
//! Fields: flags, HR (uint8 or uint16 bpm), [Energy Expended uint16 kJ,
//! 0xFFFF = saturated], [RR intervals: uint16 each in 1/1024 s, to the end].
//! Strict rules: an odd number of RR bytes, or the RR flag with no RR bytes
//! (as Nordic's parser; Wireshark shows count 0), is an error.

use super::GattError;
use super::codec::{Reader, Writer};
use serde_json::{Value, json};

/// The heart rate value in the width the device sent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HeartRate {
    /// Flag bit 0 clear.
    U8(u8),
    /// Flag bit 0 set.
    U16(u16),
}

impl HeartRate {
    /// Beats per minute.
    pub fn bpm(self) -> u16 {
        match self {
            HeartRate::U8(v) => u16::from(v),
            HeartRate::U16(v) => v,
        }
    }

    /// The narrowest width holding `bpm`.
    pub fn from_bpm(bpm: u16) -> Self {
        u8::try_from(bpm).map_or(HeartRate::U16(bpm), HeartRate::U8)
    }
}

/// Sensor contact (flag bits 1 and 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SensorContact {
    /// Bit 2 clear: the sensor cannot tell (bit 1 is then meaningless and dropped).
    NotSupported,
    /// Bits 2 set, 1 clear.
    NotDetected,
    /// Bits 2 and 1 set.
    Detected,
}

/// Heart Rate Measurement 0x2A37.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HeartRateMeasurement {
    /// Heart Rate Measurement Value, in bpm, in the width the device sent (flag bit 0).
    pub heart_rate: HeartRate,
    /// Sensor Contact Status (flag bits 1 and 2).
    pub sensor_contact: SensorContact,
    /// Energy expended since the last reset, kJ (0xFFFF = saturated).
    pub energy_expended_kj: Option<u16>,
    /// RR intervals in 1/1024 s, oldest first. Empty = flag bit 4 clear
    /// (an RR flag with zero intervals is not a valid payload).
    pub rr_intervals_1024: Vec<u16>,
}

impl HeartRateMeasurement {
    /// The flags byte this value encodes with.
    pub fn flags(&self) -> u8 {
        let mut f = 0;
        if matches!(self.heart_rate, HeartRate::U16(_)) {
            f |= 0x01;
        }
        match self.sensor_contact {
            SensorContact::NotSupported => {}
            SensorContact::NotDetected => f |= 0x04,
            SensorContact::Detected => f |= 0x06,
        }
        if self.energy_expended_kj.is_some() {
            f |= 0x08;
        }
        if !self.rr_intervals_1024.is_empty() {
            f |= 0x10;
        }
        f
    }

    /// Decode a notification value.
    pub fn decode(bytes: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(bytes)?;
        let flags = r.u8("flags")?;
        let heart_rate = if flags & 0x01 != 0 {
            HeartRate::U16(r.u16("heart rate (uint16)")?)
        } else {
            HeartRate::U8(r.u8("heart rate (uint8)")?)
        };
        let sensor_contact = match (flags & 0x04 != 0, flags & 0x02 != 0) {
            (false, _) => SensorContact::NotSupported,
            (true, false) => SensorContact::NotDetected,
            (true, true) => SensorContact::Detected,
        };
        let energy_expended_kj = if flags & 0x08 != 0 {
            Some(r.u16("energy expended")?)
        } else {
            None
        };
        let mut rr_intervals_1024 = Vec::new();
        if flags & 0x10 != 0 {
            let rest = r.rest();
            if rest.is_empty() {
                return Err(GattError::Invalid {
                    field: "RR intervals",
                    reason: "RR-interval flag set but no RR bytes".into(),
                });
            }
            if rest.len() % 2 != 0 {
                return Err(GattError::Invalid {
                    field: "RR intervals",
                    reason: format!("odd number of RR bytes ({})", rest.len()),
                });
            }
            rr_intervals_1024 = rest
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
        }
        r.finish()?;
        Ok(HeartRateMeasurement {
            heart_rate,
            sensor_contact,
            energy_expended_kj,
            rr_intervals_1024,
        })
    }

    /// The notification value.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(self.flags());
        match self.heart_rate {
            HeartRate::U8(v) => w.u8(v),
            HeartRate::U16(v) => w.u16(v),
        };
        if let Some(e) = self.energy_expended_kj {
            w.u16(e);
        }
        for rr in &self.rr_intervals_1024 {
            w.u16(*rr);
        }
        w.finish()
    }

    /// JSON with the gatt.json field names.
    pub fn to_json(&self) -> Value {
        let rr = (!self.rr_intervals_1024.is_empty()).then(|| self.rr_intervals_1024.clone());
        // x/1024 is exact in binary floating point.
        let rr_s = rr.as_ref().map(|v| {
            v.iter()
                .map(|x| f64::from(*x) / 1024.0)
                .collect::<Vec<f64>>()
        });
        json!({
            "flags": self.flags(),
            "hr_format": match self.heart_rate { HeartRate::U8(_) => "uint8", HeartRate::U16(_) => "uint16" },
            "heart_rate_bpm": self.heart_rate.bpm(),
            "sensor_contact_supported": self.sensor_contact != SensorContact::NotSupported,
            "sensor_contact_detected": match self.sensor_contact {
                SensorContact::NotSupported => None,
                SensorContact::NotDetected => Some(false),
                SensorContact::Detected => Some(true),
            },
            "energy_expended_kj": self.energy_expended_kj,
            "energy_expended_saturated": self.energy_expended_kj.map(|e| e == 0xFFFF),
            "rr_intervals_1024": rr,
            "rr_intervals_s": rr_s,
        })
    }
}

/// Body Sensor Location 0x2A38 (exactly 1 byte). Values 7–255 are reserved
/// and kept as sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BodySensorLocation(pub u8);

impl BodySensorLocation {
    /// Decode exactly one byte.
    pub fn decode(bytes: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(bytes)?;
        let v = r.u8("body sensor location")?;
        r.finish()?;
        Ok(BodySensorLocation(v))
    }

    /// The one-byte value.
    pub fn encode(&self) -> Vec<u8> {
        vec![self.0]
    }

    /// `Other`, `Chest`, `Wrist`, `Finger`, `Hand`, `Ear Lobe`, `Foot`, or `Reserved`.
    pub fn name(&self) -> &'static str {
        match self.0 {
            0 => "Other",
            1 => "Chest",
            2 => "Wrist",
            3 => "Finger",
            4 => "Hand",
            5 => "Ear Lobe",
            6 => "Foot",
            _ => "Reserved",
        }
    }

    /// JSON `{body_sensor_location, name}`.
    pub fn to_json(&self) -> Value {
        json!({ "body_sensor_location": self.0, "name": self.name() })
    }
}
