//! Blood Pressure service 0x1810: Blood Pressure Measurement 0x2A35
//! (indicate) and Intermediate Cuff Pressure 0x2A36 (notify). Same layout.
//!
//! Flags (uint8):
//!
//! | bit | meaning |
//! |-----|---------|
//! | 0 | units: 0 = mmHg, 1 = kPa (applies to the three pressures, not pulse) |
//! | 1 | Time Stamp present |
//! | 2 | Pulse Rate present |
//! | 3 | User ID present |
//! | 4 | Measurement Status present |
//! | 5–7 | reserved (ignored) |
//!
//! Fields: flags, systolic SFLOAT, diastolic SFLOAT, MAP SFLOAT,
//! [Date Time], [pulse rate SFLOAT bpm], [User ID uint8, 0xFF = unknown],
//! [Measurement Status uint16]. Minimum 7 bytes. For Intermediate Cuff
//! Pressure the first SFLOAT is the current cuff pressure and the other two
//! are unused (should be NaN).
//!
//! Measurement Status bits: 0 body movement, 1 cuff too loose, 2 irregular
//! pulse, 3–4 pulse-rate range (0 in range, 1 above upper limit, 2 below
//! lower limit), 5 improper measurement position; others reserved.

use super::GattError;
use super::codec::{Reader, Writer};
use super::datetime::DateTime;
use super::sfloat::SFloat;
use serde_json::{Value, json};

/// Unit of the pressures (flag bit 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PressureUnit {
    /// Millimetres of mercury (flag bit 0 clear).
    MmHg,
    /// Kilopascals (flag bit 0 set); the gateway converts to mmHg.
    KPa,
}

impl PressureUnit {
    /// `mmHg` or `kPa` (gatt.json).
    pub fn as_str(self) -> &'static str {
        match self {
            PressureUnit::MmHg => "mmHg",
            PressureUnit::KPa => "kPa",
        }
    }
}

/// Blood Pressure Measurement 0x2A35.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BloodPressureMeasurement {
    /// Unit of the three pressures (flag bit 0); the pulse rate is always in bpm.
    pub unit: PressureUnit,
    /// Blood Pressure Measurement Compound Value – Systolic, in `unit`.
    pub systolic: SFloat,
    /// Blood Pressure Measurement Compound Value – Diastolic, in `unit`.
    pub diastolic: SFloat,
    /// Blood Pressure Measurement Compound Value – Mean Arterial Pressure, in `unit`.
    pub mean_arterial_pressure: SFloat,
    /// Time Stamp (flag bit 1): the device's clock when it measured.
    pub timestamp: Option<DateTime>,
    /// Beats per minute (never in kPa).
    pub pulse_rate: Option<SFloat>,
    /// 0xFF = unknown user.
    pub user_id: Option<u8>,
    /// Raw status bits; see [`BpStatus`].
    pub measurement_status: Option<u16>,
}

/// Accessors for Blood Pressure Measurement Status bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BpStatus(pub u16);

impl BpStatus {
    /// Bit 0: body movement was detected during the measurement.
    pub fn body_movement(self) -> bool {
        self.0 & 0x01 != 0
    }
    /// Bit 1: the cuff fitted too loosely.
    pub fn cuff_too_loose(self) -> bool {
        self.0 & 0x02 != 0
    }
    /// Bit 2: an irregular pulse was detected.
    pub fn irregular_pulse(self) -> bool {
        self.0 & 0x04 != 0
    }
    /// 0 in range, 1 above upper limit, 2 below lower limit, 3 reserved.
    pub fn pulse_rate_range(self) -> u8 {
        ((self.0 >> 3) & 0x03) as u8
    }
    /// Bit 5: the measurement position was improper.
    pub fn improper_measurement_position(self) -> bool {
        self.0 & 0x20 != 0
    }
    /// JSON object of the named bits.
    pub fn to_json(self) -> Value {
        json!({
            "body_movement": self.body_movement(),
            "cuff_too_loose": self.cuff_too_loose(),
            "irregular_pulse": self.irregular_pulse(),
            "pulse_rate_range": self.pulse_rate_range(),
            "improper_measurement_position": self.improper_measurement_position(),
        })
    }
}

impl BloodPressureMeasurement {
    /// The flags byte this value encodes with.
    pub fn flags(&self) -> u8 {
        let mut f = 0;
        if self.unit == PressureUnit::KPa {
            f |= 0x01;
        }
        if self.timestamp.is_some() {
            f |= 0x02;
        }
        if self.pulse_rate.is_some() {
            f |= 0x04;
        }
        if self.user_id.is_some() {
            f |= 0x08;
        }
        if self.measurement_status.is_some() {
            f |= 0x10;
        }
        f
    }

    /// Decode an indication value (also the layout of 0x2A36).
    pub fn decode(bytes: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(bytes)?;
        if bytes.len() < 7 {
            return Err(GattError::TooShort {
                len: bytes.len(),
                min: 7,
            });
        }
        let flags = r.u8("flags")?;
        let unit = if flags & 0x01 != 0 {
            PressureUnit::KPa
        } else {
            PressureUnit::MmHg
        };
        let systolic = r.sfloat("systolic")?;
        let diastolic = r.sfloat("diastolic")?;
        let mean_arterial_pressure = r.sfloat("mean arterial pressure")?;
        let timestamp = if flags & 0x02 != 0 {
            Some(r.date_time("timestamp")?)
        } else {
            None
        };
        let pulse_rate = if flags & 0x04 != 0 {
            Some(r.sfloat("pulse rate")?)
        } else {
            None
        };
        let user_id = if flags & 0x08 != 0 {
            Some(r.u8("user id")?)
        } else {
            None
        };
        let measurement_status = if flags & 0x10 != 0 {
            Some(r.u16("measurement status")?)
        } else {
            None
        };
        r.finish()?;
        Ok(BloodPressureMeasurement {
            unit,
            systolic,
            diastolic,
            mean_arterial_pressure,
            timestamp,
            pulse_rate,
            user_id,
            measurement_status,
        })
    }

    /// The indication value.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(self.flags())
            .sfloat(self.systolic)
            .sfloat(self.diastolic)
            .sfloat(self.mean_arterial_pressure);
        if let Some(t) = &self.timestamp {
            w.date_time(t);
        }
        if let Some(p) = self.pulse_rate {
            w.sfloat(p);
        }
        if let Some(u) = self.user_id {
            w.u8(u);
        }
        if let Some(s) = self.measurement_status {
            w.u16(s);
        }
        w.finish()
    }

    fn common_json(&self, out: &mut serde_json::Map<String, Value>) {
        out.insert("flags".into(), json!(self.flags()));
        out.insert("unit".into(), json!(self.unit.as_str()));
        out.insert(
            "timestamp".into(),
            self.timestamp.map_or(Value::Null, |t| t.to_json()),
        );
        out.insert(
            "pulse_rate_bpm".into(),
            self.pulse_rate.map_or(Value::Null, SFloat::to_json),
        );
        out.insert("user_id".into(), json!(self.user_id));
        out.insert("measurement_status".into(), json!(self.measurement_status));
        out.insert(
            "status_bits".into(),
            self.measurement_status
                .map_or(Value::Null, |s| BpStatus(s).to_json()),
        );
    }

    /// JSON with the gatt.json field names.
    pub fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        self.common_json(&mut m);
        m.insert("systolic".into(), self.systolic.to_json());
        m.insert("diastolic".into(), self.diastolic.to_json());
        m.insert(
            "mean_arterial_pressure".into(),
            self.mean_arterial_pressure.to_json(),
        );
        Value::Object(m)
    }
}

/// Intermediate Cuff Pressure 0x2A36: the Blood Pressure Measurement layout
/// with the current cuff pressure in the systolic position. Not a reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IntermediateCuffPressure(pub BloodPressureMeasurement);

impl IntermediateCuffPressure {
    /// A cuff-pressure notification with the unused fields set to NaN.
    pub fn new(unit: PressureUnit, current_cuff_pressure: SFloat) -> Self {
        IntermediateCuffPressure(BloodPressureMeasurement {
            unit,
            systolic: current_cuff_pressure,
            diastolic: SFloat::NAN,
            mean_arterial_pressure: SFloat::NAN,
            timestamp: None,
            pulse_rate: None,
            user_id: None,
            measurement_status: None,
        })
    }

    /// The current cuff pressure.
    pub fn current_cuff_pressure(&self) -> SFloat {
        self.0.systolic
    }

    /// Decode a notification value.
    pub fn decode(bytes: &[u8]) -> Result<Self, GattError> {
        BloodPressureMeasurement::decode(bytes).map(IntermediateCuffPressure)
    }

    /// The notification value.
    pub fn encode(&self) -> Vec<u8> {
        self.0.encode()
    }

    /// JSON with the gatt.json field names.
    pub fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        self.0.common_json(&mut m);
        m.insert("current_cuff_pressure".into(), self.0.systolic.to_json());
        m.insert("diastolic_unused".into(), self.0.diastolic.to_json());
        m.insert("map_unused".into(), self.0.mean_arterial_pressure.to_json());
        Value::Object(m)
    }
}
