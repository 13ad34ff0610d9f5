//! Pulse Oximeter service 0x1822: PLX Spot-Check Measurement 0x2A5E
//! (indicate) and PLX Continuous Measurement 0x2A5F (notify).
//!
//! Spot-check flags: bit 0 Timestamp, 1 Measurement Status, 2 Device &
//! Sensor Status, 3 Pulse Amplitude Index present, 4 device clock not set;
//! 5–7 reserved (ignored). Fields: flags, SpO2 SFLOAT %, PR SFLOAT bpm,
//! [Date Time], [Measurement Status uint16], [Device & Sensor Status
//! uint24], [PAI SFLOAT %].
//!
//! Continuous flags: bit 0 SpO2PR-Fast, 1 SpO2PR-Slow, 2 Measurement Status,
//! 3 Device & Sensor Status, 4 PAI present; 5–7 reserved (ignored). Fields:
//! flags, SpO2PR-Normal (SpO2, PR), [SpO2PR-Fast], [SpO2PR-Slow],
//! [Measurement Status uint16], [Device & Sensor Status uint24], \[PAI\].
//!
//! Measurement Status bits 5–15: measurement ongoing, early estimated data,
//! validated data, fully qualified data, data from measurement storage,
//! data for demonstration, data for testing, calibration ongoing,
//! measurement unavailable, questionable measurement detected, invalid
//! measurement detected (0–4 reserved). Device & Sensor Status bits 0–15 are
//! listed in [`device_sensor_status_bits`]; 16–23 reserved.

use super::GattError;
use super::codec::{Reader, Writer};
use super::datetime::DateTime;
use super::sfloat::SFloat;
use serde_json::{Map, Value, json};

const MEASUREMENT_STATUS: [(u32, &str); 11] = [
    (5, "measurement ongoing"),
    (6, "early estimated data"),
    (7, "validated data"),
    (8, "fully qualified data"),
    (9, "data from measurement storage"),
    (10, "data for demonstration"),
    (11, "data for testing"),
    (12, "calibration ongoing"),
    (13, "measurement unavailable"),
    (14, "questionable measurement detected"),
    (15, "invalid measurement detected"),
];

const DEVICE_SENSOR_STATUS: [&str; 16] = [
    "extended display update ongoing",
    "equipment malfunction detected",
    "signal processing irregularity detected",
    "inadequate signal detected",
    "poor signal detected",
    "low perfusion detected",
    "erratic signal detected",
    "non-pulsatile signal detected",
    "questionable pulse detected",
    "signal analysis ongoing",
    "sensor interference detected",
    "sensor unconnected to user",
    "unknown sensor connected",
    "sensor displaced",
    "sensor malfunctioning",
    "sensor disconnected",
];

/// The set PLX Measurement Status bits with their names (reserved bits left out).
pub fn measurement_status_names(status: u16) -> Vec<(u32, &'static str)> {
    MEASUREMENT_STATUS
        .iter()
        .filter(|(b, _)| status & (1 << b) != 0)
        .copied()
        .collect()
}

/// The set Device and Sensor Status bits with their names (reserved bits left out).
pub fn device_sensor_status_names(status: u32) -> Vec<(usize, &'static str)> {
    DEVICE_SENSOR_STATUS
        .iter()
        .enumerate()
        .filter(|(b, _)| status & (1 << b) != 0)
        .map(|(b, n)| (b, *n))
        .collect()
}

/// Names of the set PLX Measurement Status bits, e.g. `measurement ongoing (bit5)`.
pub fn measurement_status_bits(status: u16) -> Vec<String> {
    (0..16u32)
        .filter(|b| status & (1 << b) != 0)
        .map(|b| {
            let name = MEASUREMENT_STATUS
                .iter()
                .find(|(i, _)| *i == b)
                .map_or("reserved", |(_, n)| n);
            format!("{name} (bit{b})")
        })
        .collect()
}

/// Names of the set Device and Sensor Status bits, e.g. `low perfusion detected (bit5)`.
pub fn device_sensor_status_bits(status: u32) -> Vec<String> {
    (0..24u32)
        .filter(|b| status & (1 << b) != 0)
        .map(|b| {
            format!(
                "{} (bit{b})",
                DEVICE_SENSOR_STATUS
                    .get(b as usize)
                    .copied()
                    .unwrap_or("reserved")
            )
        })
        .collect()
}

/// An SpO2 and pulse-rate pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpO2Pr {
    /// Percent.
    pub spo2: SFloat,
    /// Beats per minute.
    pub pulse_rate: SFloat,
}

/// PLX Spot-Check Measurement 0x2A5E.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PlxSpotCheck {
    /// SpO2PR-Spot-Check – SpO2, in percent.
    pub spo2: SFloat,
    /// SpO2PR-Spot-Check – PR, the pulse rate in bpm.
    pub pulse_rate: SFloat,
    /// Timestamp (flag bit 0): the oximeter's clock when it measured.
    pub timestamp: Option<DateTime>,
    /// Measurement Status bits (flag bit 1); see [`measurement_status_names`].
    pub measurement_status: Option<u16>,
    /// 24 bits; only the low 24 bits are encoded.
    pub device_and_sensor_status: Option<u32>,
    /// Pulse amplitude index, percent.
    pub pulse_amplitude_index: Option<SFloat>,
    /// Flag bit 4: the device clock is not set (the timestamp is not a real time).
    pub device_clock_not_set: bool,
}

fn status_json(m: &mut Map<String, Value>, ms: Option<u16>, ds: Option<u32>, pai: Option<SFloat>) {
    m.insert("measurement_status".into(), json!(ms));
    m.insert(
        "measurement_status_bits".into(),
        json!(ms.map(measurement_status_bits)),
    );
    m.insert("device_and_sensor_status".into(), json!(ds));
    m.insert(
        "device_and_sensor_status_bits".into(),
        json!(ds.map(device_sensor_status_bits)),
    );
    m.insert(
        "pulse_amplitude_index_pct".into(),
        pai.map_or(Value::Null, SFloat::to_json),
    );
}

impl PlxSpotCheck {
    /// The flags byte this value encodes with.
    pub fn flags(&self) -> u8 {
        let mut f = 0;
        if self.timestamp.is_some() {
            f |= 0x01;
        }
        if self.measurement_status.is_some() {
            f |= 0x02;
        }
        if self.device_and_sensor_status.is_some() {
            f |= 0x04;
        }
        if self.pulse_amplitude_index.is_some() {
            f |= 0x08;
        }
        if self.device_clock_not_set {
            f |= 0x10;
        }
        f
    }

    /// Decode an indication value.
    pub fn decode(bytes: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(bytes)?;
        let flags = r.u8("flags")?;
        let spo2 = r.sfloat("SpO2")?;
        let pulse_rate = r.sfloat("pulse rate")?;
        let timestamp = if flags & 0x01 != 0 {
            Some(r.date_time("timestamp")?)
        } else {
            None
        };
        let measurement_status = if flags & 0x02 != 0 {
            Some(r.u16("measurement status")?)
        } else {
            None
        };
        let device_and_sensor_status = if flags & 0x04 != 0 {
            Some(r.u24("device and sensor status")?)
        } else {
            None
        };
        let pulse_amplitude_index = if flags & 0x08 != 0 {
            Some(r.sfloat("pulse amplitude index")?)
        } else {
            None
        };
        r.finish()?;
        Ok(PlxSpotCheck {
            spo2,
            pulse_rate,
            timestamp,
            measurement_status,
            device_and_sensor_status,
            pulse_amplitude_index,
            device_clock_not_set: flags & 0x10 != 0,
        })
    }

    /// The indication value.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(self.flags()).sfloat(self.spo2).sfloat(self.pulse_rate);
        if let Some(t) = &self.timestamp {
            w.date_time(t);
        }
        if let Some(s) = self.measurement_status {
            w.u16(s);
        }
        if let Some(s) = self.device_and_sensor_status {
            w.u24(s);
        }
        if let Some(p) = self.pulse_amplitude_index {
            w.sfloat(p);
        }
        w.finish()
    }

    /// JSON with the gatt.json field names.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("flags".into(), json!(self.flags()));
        m.insert("spo2_pct".into(), self.spo2.to_json());
        m.insert("pulse_rate_bpm".into(), self.pulse_rate.to_json());
        m.insert(
            "timestamp".into(),
            self.timestamp.map_or(Value::Null, |t| t.to_json()),
        );
        status_json(
            &mut m,
            self.measurement_status,
            self.device_and_sensor_status,
            self.pulse_amplitude_index,
        );
        m.insert(
            "device_clock_not_set".into(),
            json!(self.device_clock_not_set),
        );
        Value::Object(m)
    }
}

/// PLX Continuous Measurement 0x2A5F.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PlxContinuous {
    /// SpO2PR-Normal: SpO2 (%) and pulse rate (bpm) at the normal averaging time.
    pub normal: SpO2Pr,
    /// SpO2PR-Fast (flag bit 0): the same at a fast averaging time.
    pub fast: Option<SpO2Pr>,
    /// SpO2PR-Slow (flag bit 1): the same at a slow averaging time.
    pub slow: Option<SpO2Pr>,
    /// Measurement Status bits (flag bit 2); see [`measurement_status_names`].
    pub measurement_status: Option<u16>,
    /// 24 bits; only the low 24 bits are encoded.
    pub device_and_sensor_status: Option<u32>,
    /// Pulse amplitude index, percent.
    pub pulse_amplitude_index: Option<SFloat>,
}

impl PlxContinuous {
    /// The flags byte this value encodes with.
    pub fn flags(&self) -> u8 {
        let mut f = 0;
        if self.fast.is_some() {
            f |= 0x01;
        }
        if self.slow.is_some() {
            f |= 0x02;
        }
        if self.measurement_status.is_some() {
            f |= 0x04;
        }
        if self.device_and_sensor_status.is_some() {
            f |= 0x08;
        }
        if self.pulse_amplitude_index.is_some() {
            f |= 0x10;
        }
        f
    }

    /// Decode a notification value.
    pub fn decode(bytes: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(bytes)?;
        let flags = r.u8("flags")?;
        let normal = SpO2Pr {
            spo2: r.sfloat("SpO2 (normal)")?,
            pulse_rate: r.sfloat("pulse rate (normal)")?,
        };
        let fast = if flags & 0x01 != 0 {
            Some(SpO2Pr {
                spo2: r.sfloat("SpO2 (fast)")?,
                pulse_rate: r.sfloat("pulse rate (fast)")?,
            })
        } else {
            None
        };
        let slow = if flags & 0x02 != 0 {
            Some(SpO2Pr {
                spo2: r.sfloat("SpO2 (slow)")?,
                pulse_rate: r.sfloat("pulse rate (slow)")?,
            })
        } else {
            None
        };
        let measurement_status = if flags & 0x04 != 0 {
            Some(r.u16("measurement status")?)
        } else {
            None
        };
        let device_and_sensor_status = if flags & 0x08 != 0 {
            Some(r.u24("device and sensor status")?)
        } else {
            None
        };
        let pulse_amplitude_index = if flags & 0x10 != 0 {
            Some(r.sfloat("pulse amplitude index")?)
        } else {
            None
        };
        r.finish()?;
        Ok(PlxContinuous {
            normal,
            fast,
            slow,
            measurement_status,
            device_and_sensor_status,
            pulse_amplitude_index,
        })
    }

    /// The notification value.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(self.flags())
            .sfloat(self.normal.spo2)
            .sfloat(self.normal.pulse_rate);
        for p in [self.fast, self.slow].into_iter().flatten() {
            w.sfloat(p.spo2).sfloat(p.pulse_rate);
        }
        if let Some(s) = self.measurement_status {
            w.u16(s);
        }
        if let Some(s) = self.device_and_sensor_status {
            w.u24(s);
        }
        if let Some(p) = self.pulse_amplitude_index {
            w.sfloat(p);
        }
        w.finish()
    }

    /// JSON with the gatt.json field names.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("flags".into(), json!(self.flags()));
        m.insert("spo2_pct".into(), self.normal.spo2.to_json());
        m.insert("pulse_rate_bpm".into(), self.normal.pulse_rate.to_json());
        m.insert(
            "spo2_fast_pct".into(),
            self.fast.map_or(Value::Null, |p| p.spo2.to_json()),
        );
        m.insert(
            "pulse_rate_fast_bpm".into(),
            self.fast.map_or(Value::Null, |p| p.pulse_rate.to_json()),
        );
        m.insert(
            "spo2_slow_pct".into(),
            self.slow.map_or(Value::Null, |p| p.spo2.to_json()),
        );
        m.insert(
            "pulse_rate_slow_bpm".into(),
            self.slow.map_or(Value::Null, |p| p.pulse_rate.to_json()),
        );
        status_json(
            &mut m,
            self.measurement_status,
            self.device_and_sensor_status,
            self.pulse_amplitude_index,
        );
        Value::Object(m)
    }
}
