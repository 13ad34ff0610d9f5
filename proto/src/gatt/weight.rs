//! Weight Scale service 0x181D: Weight Measurement 0x2A9D (indicate).
//!
//! Flags (uint8): bit 0 units (0 = SI: kg and m, 1 = imperial: lb and in),
//! bit 1 Time Stamp present, bit 2 User ID present, bit 3 BMI **and** Height
//! present (one bit covers both), bits 4–7 reserved (ignored).
//!
//! Fields: flags, Weight uint16 (SI: × 0.005 kg; imperial: × 0.01 lb;
//! 0xFFFF = measurement unsuccessful), [Date Time], [User ID uint8, 0xFF =
//! unknown], [BMI uint16 × 0.1 kg/m², Height uint16 (SI: × 0.001 m;
//! imperial: × 0.1 in)].
//!
//! The Weight Scale Feature (0x2A9E) may declare a coarser resolution; the
//! wire value is still in the units above, so it does not change decoding.

use super::GattError;
use super::codec::{Reader, Writer, decimal_json};
use super::datetime::DateTime;
use serde_json::{Map, Value, json};

/// Unit system (flag bit 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightUnit {
    /// kg (0.005 kg steps) and m (0.001 m steps).
    Si,
    /// lb (0.01 lb steps) and in (0.1 in steps).
    Imperial,
}

/// The raw weight meaning "measurement unsuccessful".
pub const WEIGHT_UNSUCCESSFUL: u16 = 0xFFFF;

/// BMI and height (one flag bit covers both).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BmiHeight {
    /// × 0.1 kg/m².
    pub bmi_raw: u16,
    /// SI: × 0.001 m; imperial: × 0.1 in.
    pub height_raw: u16,
}

/// Weight Measurement 0x2A9D.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WeightMeasurement {
    /// Measurement Units (flag bit 0): SI (kg, m) or imperial (lb, in), for the weight and
    /// the height.
    pub unit: WeightUnit,
    /// SI: × 0.005 kg; imperial: × 0.01 lb; [`WEIGHT_UNSUCCESSFUL`] = failed.
    pub weight_raw: u16,
    /// Time Stamp (flag bit 1): the scale's clock when it measured.
    pub timestamp: Option<DateTime>,
    /// 0xFF = unknown user.
    pub user_id: Option<u8>,
    /// BMI and Height (flag bit 3).
    pub bmi_height: Option<BmiHeight>,
}

impl WeightMeasurement {
    /// The flags byte this value encodes with.
    pub fn flags(&self) -> u8 {
        let mut f = 0;
        if self.unit == WeightUnit::Imperial {
            f |= 0x01;
        }
        if self.timestamp.is_some() {
            f |= 0x02;
        }
        if self.user_id.is_some() {
            f |= 0x04;
        }
        if self.bmi_height.is_some() {
            f |= 0x08;
        }
        f
    }

    /// Whether the scale reported 0xFFFF (measurement unsuccessful).
    pub fn is_unsuccessful(&self) -> bool {
        self.weight_raw == WEIGHT_UNSUCCESSFUL
    }

    /// Decode an indication value.
    pub fn decode(bytes: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(bytes)?;
        let flags = r.u8("flags")?;
        let unit = if flags & 0x01 != 0 {
            WeightUnit::Imperial
        } else {
            WeightUnit::Si
        };
        let weight_raw = r.u16("weight")?;
        let timestamp = if flags & 0x02 != 0 {
            Some(r.date_time("timestamp")?)
        } else {
            None
        };
        let user_id = if flags & 0x04 != 0 {
            Some(r.u8("user id")?)
        } else {
            None
        };
        let bmi_height = if flags & 0x08 != 0 {
            let bmi_raw = r.u16("BMI")?;
            Some(BmiHeight {
                bmi_raw,
                height_raw: r.u16("height")?,
            })
        } else {
            None
        };
        r.finish()?;
        Ok(WeightMeasurement {
            unit,
            weight_raw,
            timestamp,
            user_id,
            bmi_height,
        })
    }

    /// The indication value.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(self.flags()).u16(self.weight_raw);
        if let Some(t) = &self.timestamp {
            w.date_time(t);
        }
        if let Some(u) = self.user_id {
            w.u8(u);
        }
        if let Some(b) = &self.bmi_height {
            w.u16(b.bmi_raw).u16(b.height_raw);
        }
        w.finish()
    }

    /// JSON with the gatt.json field names (`weight_kg`/`height_m` for SI,
    /// `weight_lb`/`height_in` for imperial; `null` weight when unsuccessful).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("flags".into(), json!(self.flags()));
        let si = self.unit == WeightUnit::Si;
        m.insert("unit".into(), json!(if si { "SI" } else { "Imperial" }));
        m.insert("weight_raw".into(), json!(self.weight_raw));
        m.insert(
            "measurement_unsuccessful".into(),
            json!(self.is_unsuccessful()),
        );
        let weight = if self.is_unsuccessful() {
            Value::Null
        } else if si {
            decimal_json(i64::from(self.weight_raw) * 5, -3)
        } else {
            decimal_json(i64::from(self.weight_raw), -2)
        };
        m.insert((if si { "weight_kg" } else { "weight_lb" }).into(), weight);
        m.insert(
            "timestamp".into(),
            self.timestamp.map_or(Value::Null, |t| t.to_json()),
        );
        m.insert("user_id".into(), json!(self.user_id));
        let b = self.bmi_height.as_ref();
        m.insert("bmi_raw".into(), json!(b.map(|b| b.bmi_raw)));
        m.insert(
            "bmi".into(),
            b.map_or(Value::Null, |b| decimal_json(i64::from(b.bmi_raw), -1)),
        );
        m.insert("height_raw".into(), json!(b.map(|b| b.height_raw)));
        let height = b.map_or(Value::Null, |b| {
            if si {
                decimal_json(i64::from(b.height_raw), -3)
            } else {
                decimal_json(i64::from(b.height_raw), -1)
            }
        });
        m.insert((if si { "height_m" } else { "height_in" }).into(), height);
        Value::Object(m)
    }
}
