//! Health Thermometer service 0x1809: Temperature Measurement 0x2A1C
//! (indicate), Temperature Type 0x2A1D (read), Intermediate Temperature
//! 0x2A1E (notify, same layout as 0x2A1C, not a reading).
//!
//! Flags (uint8): bit 0 unit (0 = °C, 1 = °F), bit 1 Time Stamp present,
//! bit 2 Temperature Type present, bits 3–7 reserved (ignored).
//! Fields: flags, temperature FLOAT (32 bit), [Date Time], [Temperature Type
//! uint8]. Minimum 5 bytes.
//!
//! Temperature Type: 1 armpit, 2 body (general), 3 ear (usually ear lobe),
//! 4 finger, 5 gastro-intestinal tract, 6 mouth, 7 rectum, 8 toe,
//! 9 tympanum (ear drum); 0 and 10–255 reserved.

use super::GattError;
use super::codec::{Reader, Writer};
use super::datetime::DateTime;
use super::sfloat::Float;
use serde_json::{Value, json};

/// Temperature unit (flag bit 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TemperatureUnit {
    /// Degrees Celsius (flag bit 0 clear).
    Celsius,
    /// Degrees Fahrenheit (flag bit 0 set); the gateway converts to °C.
    Fahrenheit,
}

impl TemperatureUnit {
    /// `Celsius` or `Fahrenheit` (gatt.json).
    pub fn as_str(self) -> &'static str {
        match self {
            TemperatureUnit::Celsius => "Celsius",
            TemperatureUnit::Fahrenheit => "Fahrenheit",
        }
    }
}

/// Temperature Type (0x2A1D, and the optional field of 0x2A1C).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TemperatureType(pub u8);

impl TemperatureType {
    /// Human name (gatt.json spelling), `Reserved` outside 1–9.
    pub fn name(self) -> &'static str {
        match self.0 {
            1 => "Armpit",
            2 => "Body (general)",
            3 => "Ear (usually ear lobe)",
            4 => "Finger",
            5 => "Gastro-intestinal Tract",
            6 => "Mouth",
            7 => "Rectum (usually)",
            8 => "Toe",
            9 => "Tympanum (ear drum)",
            _ => "Reserved",
        }
    }

    /// Decode exactly one byte (0x2A1D).
    pub fn decode(bytes: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(bytes)?;
        let v = r.u8("temperature type")?;
        r.finish()?;
        Ok(TemperatureType(v))
    }

    /// The one-byte value.
    pub fn encode(&self) -> Vec<u8> {
        vec![self.0]
    }

    /// JSON `{temperature_type, name}`.
    pub fn to_json(&self) -> Value {
        json!({ "temperature_type": self.0, "name": self.name() })
    }
}

/// Temperature Measurement 0x2A1C (and Intermediate Temperature 0x2A1E).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TemperatureMeasurement {
    /// Unit of `temperature` (flag bit 0).
    pub unit: TemperatureUnit,
    /// Temperature Measurement Value (IEEE 11073 FLOAT), in `unit`.
    pub temperature: Float,
    /// Time Stamp (flag bit 1): the thermometer's clock when it measured.
    pub timestamp: Option<DateTime>,
    /// Temperature Type (flag bit 2): where on the body it was measured.
    pub temperature_type: Option<TemperatureType>,
}

/// Intermediate Temperature 0x2A1E has the Temperature Measurement layout.
pub type IntermediateTemperature = TemperatureMeasurement;

impl TemperatureMeasurement {
    /// The flags byte this value encodes with.
    pub fn flags(&self) -> u8 {
        let mut f = 0;
        if self.unit == TemperatureUnit::Fahrenheit {
            f |= 0x01;
        }
        if self.timestamp.is_some() {
            f |= 0x02;
        }
        if self.temperature_type.is_some() {
            f |= 0x04;
        }
        f
    }

    /// Decode an indication value.
    pub fn decode(bytes: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(bytes)?;
        let flags = r.u8("flags")?;
        let unit = if flags & 0x01 != 0 {
            TemperatureUnit::Fahrenheit
        } else {
            TemperatureUnit::Celsius
        };
        let temperature = r.float("temperature")?;
        let timestamp = if flags & 0x02 != 0 {
            Some(r.date_time("timestamp")?)
        } else {
            None
        };
        let temperature_type = if flags & 0x04 != 0 {
            Some(TemperatureType(r.u8("temperature type")?))
        } else {
            None
        };
        r.finish()?;
        Ok(TemperatureMeasurement {
            unit,
            temperature,
            timestamp,
            temperature_type,
        })
    }

    /// The indication value.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(self.flags()).float(self.temperature);
        if let Some(t) = &self.timestamp {
            w.date_time(t);
        }
        if let Some(t) = self.temperature_type {
            w.u8(t.0);
        }
        w.finish()
    }

    /// JSON with the gatt.json field names.
    pub fn to_json(&self) -> Value {
        json!({
            "flags": self.flags(),
            "unit": self.unit.as_str(),
            "temperature": self.temperature.to_json(),
            "timestamp": self.timestamp.map(|t| t.to_json()),
            "temperature_type": self.temperature_type.map(|t| t.0),
            "temperature_type_name": self.temperature_type.map(TemperatureType::name),
        })
    }
}
