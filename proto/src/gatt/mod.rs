//! Bluetooth SIG GATT health profiles: exact decoders **and** encoders for
//! every measurement hailan reads, the IEEE 11073 number formats, the
//! mapping from a measurement to the reading slots of DESIGN §3, and which
//! services make which kind of device.
//!
//! Code map:
//!
//! | module | what |
//! |---|---|
//! | [`sfloat`] | IEEE 11073 SFLOAT / FLOAT; special values are variants, never numbers |
//! | [`datetime`] | Date Time 0x2A08, Current Time 0x2A2B |
//! | [`heart_rate`] | Heart Rate Measurement 0x2A37, Body Sensor Location 0x2A38 |
//! | [`blood_pressure`] | Blood Pressure Measurement 0x2A35, Intermediate Cuff Pressure 0x2A36 |
//! | [`temperature`] | Temperature Measurement 0x2A1C, Temperature Type 0x2A1D, Intermediate Temperature 0x2A1E |
//! | [`glucose`] | Glucose Measurement 0x2A18, Glucose Measurement Context 0x2A34 |
//! | [`racp`] | Record Access Control Point 0x2A52 (requests and responses) |
//! | [`plx`] | PLX Spot-Check 0x2A5E, PLX Continuous 0x2A5F |
//! | [`weight`] | Weight Measurement 0x2A9D |
//! | [`body_composition`] | Body Composition Measurement 0x2A9C (two-byte flags, multiple packets) |
//! | [`device_info`] | Battery Level 0x2A19, Device Information strings, PnP ID 0x2A50 |
//! | [`slots`] | measurement → [`ReadingSlots`] (fixed point, unit conversion, extras) or [`NoReading`] |
//! | [`device_kind`] | services/characteristics → [`DeviceKind`] (scanning and pairing) |
//!
//! Every characteristic type has `decode(&[u8]) -> Result<Self, GattError>`,
//! `encode(&self) -> Vec<u8>` and `to_json()`. [`Characteristic`] names the
//! characteristics by UUID, [`decode`] dispatches on it to a [`Decoded`],
//! and [`decode_to_json`] gives the field names of `proto/vectors/gatt.json`
//! (used by `hailan-gateway decode`).
//!
//! Decoders are strict: every value is little-endian, optional fields appear
//! in the listed order only when their flag bit is set, and a value shorter
//! than its flags require, with bytes left over, or longer than ATT's 512
//! bytes is a [`GattError`] — never a panic and never a plausible wrong
//! number. Reserved flag bits are ignored (and not re-encoded).

pub mod blood_pressure;
pub mod body_composition;
mod codec;
pub mod datetime;
pub mod device_info;
pub mod device_kind;
pub mod glucose;
pub mod heart_rate;
pub mod plx;
pub mod racp;
pub mod sfloat;
pub mod slots;
pub mod temperature;
pub mod uds;
pub mod weight;

#[cfg(test)]
mod tests;

pub use blood_pressure::{
    BloodPressureMeasurement, BpStatus, IntermediateCuffPressure, PressureUnit,
};
pub use body_composition::BodyCompositionMeasurement;
pub use codec::ATT_MAX_VALUE_LEN;
pub use datetime::{CurrentTime, DateTime};
pub use device_info::{BatteryLevel, DeviceInfoString, PnpId};
pub use device_kind::{CharacteristicUse, Delivery, DeviceKind};
pub use glucose::{
    Carbohydrate, Exercise, GlucoseConcentration, GlucoseMeasurement, GlucoseMeasurementContext,
    GlucoseUnit, Medication, MedicationUnit, TesterHealth,
};
pub use heart_rate::{BodySensorLocation, HeartRate, HeartRateMeasurement, SensorContact};
pub use plx::{PlxContinuous, PlxSpotCheck, SpO2Pr};
pub use racp::{Racp, RacpFilter, RacpOperand};
pub use sfloat::{Float, Ieee11073, SFloat, Special};
pub use slots::{NoReading, ReadingSlots};
pub use temperature::{
    IntermediateTemperature, TemperatureMeasurement, TemperatureType, TemperatureUnit,
};
pub use uds::UserControl;
pub use weight::{BmiHeight, WeightMeasurement, WeightUnit};

use serde_json::Value;

/// Why a characteristic value could not be decoded (or a value not encoded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GattError {
    /// The value ends before a field the flags announce.
    #[error("truncated: {field} missing (needs {needed} bytes, {available} left)")]
    Truncated {
        /// The name of the field being read, e.g. `timestamp`.
        field: &'static str,
        /// Bytes the field takes.
        needed: usize,
        /// Bytes left in the value.
        available: usize,
    },
    /// Shorter than the characteristic's fixed minimum length.
    #[error("too short: {len} bytes, the minimum is {min}")]
    TooShort {
        /// Length of the value, in bytes.
        len: usize,
        /// The characteristic's minimum length, in bytes.
        min: usize,
    },
    /// Bytes after the last field the flags announce.
    #[error("{extra} unexpected trailing byte(s) after the last field")]
    TrailingBytes {
        /// How many bytes were left over.
        extra: usize,
    },
    /// Longer than an ATT attribute value can be.
    #[error("value is {len} bytes, longer than the ATT maximum of 512")]
    TooLong {
        /// Length of the value, in bytes (more than [`ATT_MAX_VALUE_LEN`]).
        len: usize,
    },
    /// A field with a value the characteristic forbids.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The name of the field.
        field: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// A number outside its allowed range.
    #[error("{field} {value} out of range {range}")]
    OutOfRange {
        /// The name of the field.
        field: &'static str,
        /// The value read.
        value: i64,
        /// The allowed range, as text (e.g. `0..=100`).
        range: &'static str,
    },
    /// A value that cannot be put on the wire.
    #[error("cannot encode: {0}")]
    NotEncodable(String),
    /// A UUID this module has no codec for.
    #[error("unknown or unsupported characteristic {0:?} (try `2A37` or a 128-bit SIG UUID)")]
    UnknownCharacteristic(String),
    /// Input text that is not hex.
    #[error("bad hex: {0}")]
    BadHex(String),
}

/// The Bluetooth SIG base UUID `0000xxxx-0000-1000-8000-00805F9B34FB` with
/// `uuid16` in place, as a `u128` (what `uuid::Uuid::from_u128` takes).
pub const fn sig_uuid(uuid16: u16) -> u128 {
    ((uuid16 as u128) << 96) | 0x0000_0000_0000_1000_8000_0080_5F9B_34FB
}

/// The 16-bit SIG UUID inside a 128-bit UUID, if it is on the SIG base.
pub const fn sig_uuid16(uuid: u128) -> Option<u16> {
    if uuid & !(0xFFFF_u128 << 96) == sig_uuid(0) && (uuid >> 112) == 0 {
        Some((uuid >> 96) as u16)
    } else {
        None
    }
}

/// Parse a UUID as typed by a person: `2A37`, `0x2a37`, or the full
/// 128-bit form `00002a37-0000-1000-8000-00805f9b34fb` (hyphens optional).
/// Returns the 16-bit SIG UUID.
pub fn parse_uuid16(text: &str) -> Option<u16> {
    let t = text.trim();
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    let hexdigits: String = t.chars().filter(|c| *c != '-').collect();
    if !hexdigits.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    match hexdigits.len() {
        4 => u16::from_str_radix(&hexdigits, 16).ok(),
        32 => u128::from_str_radix(&hexdigits, 16)
            .ok()
            .and_then(sig_uuid16),
        _ => None,
    }
}

macro_rules! characteristics {
    ($( $variant:ident = $uuid:literal, $name:literal; )*) => {
        /// A characteristic this module decodes and encodes.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Characteristic {
            $( #[doc = $name] $variant, )*
        }

        impl Characteristic {
            /// Every supported characteristic.
            pub const ALL: &'static [Characteristic] = &[$(Characteristic::$variant),*];

            /// The 16-bit SIG UUID.
            pub const fn uuid16(self) -> u16 {
                match self { $(Characteristic::$variant => $uuid,)* }
            }

            /// The SIG name.
            pub const fn name(self) -> &'static str {
                match self { $(Characteristic::$variant => $name,)* }
            }

            /// The characteristic with this 16-bit UUID.
            pub fn from_uuid16(uuid: u16) -> Option<Self> {
                match uuid { $($uuid => Some(Characteristic::$variant),)* _ => None }
            }
        }
    };
}

characteristics! {
    HeartRateMeasurement = 0x2A37, "Heart Rate Measurement";
    BodySensorLocation = 0x2A38, "Body Sensor Location";
    BloodPressureMeasurement = 0x2A35, "Blood Pressure Measurement";
    IntermediateCuffPressure = 0x2A36, "Intermediate Cuff Pressure";
    TemperatureMeasurement = 0x2A1C, "Temperature Measurement";
    TemperatureType = 0x2A1D, "Temperature Type";
    IntermediateTemperature = 0x2A1E, "Intermediate Temperature";
    GlucoseMeasurement = 0x2A18, "Glucose Measurement";
    GlucoseMeasurementContext = 0x2A34, "Glucose Measurement Context";
    RecordAccessControlPoint = 0x2A52, "Record Access Control Point";
    PlxSpotCheck = 0x2A5E, "PLX Spot-Check Measurement";
    PlxContinuous = 0x2A5F, "PLX Continuous Measurement";
    WeightMeasurement = 0x2A9D, "Weight Measurement";
    BodyCompositionMeasurement = 0x2A9C, "Body Composition Measurement";
    BatteryLevel = 0x2A19, "Battery Level";
    ManufacturerName = 0x2A29, "Manufacturer Name String";
    ModelNumber = 0x2A24, "Model Number String";
    SerialNumber = 0x2A25, "Serial Number String";
    HardwareRevision = 0x2A27, "Hardware Revision String";
    FirmwareRevision = 0x2A26, "Firmware Revision String";
    SoftwareRevision = 0x2A28, "Software Revision String";
    PnpId = 0x2A50, "PnP ID";
    DateTime = 0x2A08, "Date Time";
    CurrentTime = 0x2A2B, "Current Time";
}

impl Characteristic {
    /// Parse `2A37`, `0x2A37` or a 128-bit SIG UUID.
    pub fn parse(text: &str) -> Result<Self, GattError> {
        parse_uuid16(text)
            .and_then(Characteristic::from_uuid16)
            .ok_or_else(|| GattError::UnknownCharacteristic(text.to_owned()))
    }

    /// The full 128-bit UUID.
    pub const fn uuid128(self) -> u128 {
        sig_uuid(self.uuid16())
    }

    /// Whether the value starts with a flags byte (shown as `flags` in JSON).
    pub fn has_flags(self) -> bool {
        use Characteristic as C;
        matches!(
            self,
            C::HeartRateMeasurement
                | C::BloodPressureMeasurement
                | C::IntermediateCuffPressure
                | C::TemperatureMeasurement
                | C::IntermediateTemperature
                | C::GlucoseMeasurement
                | C::GlucoseMeasurementContext
                | C::PlxSpotCheck
                | C::PlxContinuous
                | C::WeightMeasurement
                | C::BodyCompositionMeasurement
        )
    }

    /// Decode a value of this characteristic.
    pub fn decode(self, bytes: &[u8]) -> Result<Decoded, GattError> {
        decode(self, bytes)
    }
}

/// A decoded value of any supported characteristic.
#[derive(Clone, Debug, PartialEq)]
pub enum Decoded {
    /// Heart Rate Measurement 0x2A37.
    HeartRateMeasurement(HeartRateMeasurement),
    /// Body Sensor Location 0x2A38.
    BodySensorLocation(BodySensorLocation),
    /// Blood Pressure Measurement 0x2A35.
    BloodPressureMeasurement(BloodPressureMeasurement),
    /// Intermediate Cuff Pressure 0x2A36 (the cuff pressure while it inflates or deflates).
    IntermediateCuffPressure(IntermediateCuffPressure),
    /// Temperature Measurement 0x2A1C.
    TemperatureMeasurement(TemperatureMeasurement),
    /// Temperature Type 0x2A1D (the body site, when sent apart from the measurement).
    TemperatureType(TemperatureType),
    /// Intermediate Temperature 0x2A1E (a value while the measurement is in progress).
    IntermediateTemperature(IntermediateTemperature),
    /// Glucose Measurement 0x2A18.
    GlucoseMeasurement(GlucoseMeasurement),
    /// Glucose Measurement Context 0x2A34: carbohydrate, meal, tester and health,
    /// exercise, medication and HbA1c of the record with the same sequence number.
    GlucoseMeasurementContext(GlucoseMeasurementContext),
    /// Record Access Control Point 0x2A52: a request or a response.
    RecordAccessControlPoint(Racp),
    /// PLX Spot-Check Measurement 0x2A5E.
    PlxSpotCheck(PlxSpotCheck),
    /// PLX Continuous Measurement 0x2A5F.
    PlxContinuous(PlxContinuous),
    /// Weight Measurement 0x2A9D.
    WeightMeasurement(WeightMeasurement),
    /// Body Composition Measurement 0x2A9C.
    BodyCompositionMeasurement(BodyCompositionMeasurement),
    /// Battery Level 0x2A19 (percent).
    BatteryLevel(BatteryLevel),
    /// One of the six Device Information strings.
    DeviceInfoString(Characteristic, DeviceInfoString),
    /// PnP ID 0x2A50.
    PnpId(PnpId),
    /// Date Time 0x2A08.
    DateTime(DateTime),
    /// Current Time 0x2A2B.
    CurrentTime(CurrentTime),
}

/// Decode `bytes` as a value of `characteristic`.
pub fn decode(characteristic: Characteristic, bytes: &[u8]) -> Result<Decoded, GattError> {
    use Characteristic as C;
    Ok(match characteristic {
        C::HeartRateMeasurement => {
            Decoded::HeartRateMeasurement(HeartRateMeasurement::decode(bytes)?)
        }
        C::BodySensorLocation => Decoded::BodySensorLocation(BodySensorLocation::decode(bytes)?),
        C::BloodPressureMeasurement => {
            Decoded::BloodPressureMeasurement(BloodPressureMeasurement::decode(bytes)?)
        }
        C::IntermediateCuffPressure => {
            Decoded::IntermediateCuffPressure(IntermediateCuffPressure::decode(bytes)?)
        }
        C::TemperatureMeasurement => {
            Decoded::TemperatureMeasurement(TemperatureMeasurement::decode(bytes)?)
        }
        C::TemperatureType => Decoded::TemperatureType(TemperatureType::decode(bytes)?),
        C::IntermediateTemperature => {
            Decoded::IntermediateTemperature(IntermediateTemperature::decode(bytes)?)
        }
        C::GlucoseMeasurement => Decoded::GlucoseMeasurement(GlucoseMeasurement::decode(bytes)?),
        C::GlucoseMeasurementContext => {
            Decoded::GlucoseMeasurementContext(GlucoseMeasurementContext::decode(bytes)?)
        }
        C::RecordAccessControlPoint => Decoded::RecordAccessControlPoint(Racp::decode(bytes)?),
        C::PlxSpotCheck => Decoded::PlxSpotCheck(PlxSpotCheck::decode(bytes)?),
        C::PlxContinuous => Decoded::PlxContinuous(PlxContinuous::decode(bytes)?),
        C::WeightMeasurement => Decoded::WeightMeasurement(WeightMeasurement::decode(bytes)?),
        C::BodyCompositionMeasurement => {
            Decoded::BodyCompositionMeasurement(BodyCompositionMeasurement::decode(bytes)?)
        }
        C::BatteryLevel => Decoded::BatteryLevel(BatteryLevel::decode(bytes)?),
        C::ManufacturerName
        | C::ModelNumber
        | C::SerialNumber
        | C::HardwareRevision
        | C::FirmwareRevision
        | C::SoftwareRevision => {
            Decoded::DeviceInfoString(characteristic, DeviceInfoString::decode(bytes)?)
        }
        C::PnpId => Decoded::PnpId(PnpId::decode(bytes)?),
        C::DateTime => Decoded::DateTime(DateTime::decode(bytes)?),
        C::CurrentTime => Decoded::CurrentTime(CurrentTime::decode(bytes)?),
    })
}

/// The User ID value that means "unknown user" (BLS, WSS, BCS): the device
/// could not tell who measured.
pub const UNKNOWN_USER: u8 = 0xFF;

impl Decoded {
    /// The user slot (User Data Service user index) a measurement names: its
    /// User ID field, unless absent or [`UNKNOWN_USER`]. Only blood pressure,
    /// weight and body composition measurements carry one.
    pub fn user_index(&self) -> Option<u8> {
        let id = match self {
            Decoded::BloodPressureMeasurement(m) => m.user_id,
            Decoded::WeightMeasurement(m) => m.user_id,
            Decoded::BodyCompositionMeasurement(m) => m.user_id,
            _ => None,
        };
        id.filter(|&u| u != UNKNOWN_USER)
    }

    /// The characteristic this value belongs to.
    pub fn characteristic(&self) -> Characteristic {
        use Characteristic as C;
        match self {
            Decoded::HeartRateMeasurement(_) => C::HeartRateMeasurement,
            Decoded::BodySensorLocation(_) => C::BodySensorLocation,
            Decoded::BloodPressureMeasurement(_) => C::BloodPressureMeasurement,
            Decoded::IntermediateCuffPressure(_) => C::IntermediateCuffPressure,
            Decoded::TemperatureMeasurement(_) => C::TemperatureMeasurement,
            Decoded::TemperatureType(_) => C::TemperatureType,
            Decoded::IntermediateTemperature(_) => C::IntermediateTemperature,
            Decoded::GlucoseMeasurement(_) => C::GlucoseMeasurement,
            Decoded::GlucoseMeasurementContext(_) => C::GlucoseMeasurementContext,
            Decoded::RecordAccessControlPoint(_) => C::RecordAccessControlPoint,
            Decoded::PlxSpotCheck(_) => C::PlxSpotCheck,
            Decoded::PlxContinuous(_) => C::PlxContinuous,
            Decoded::WeightMeasurement(_) => C::WeightMeasurement,
            Decoded::BodyCompositionMeasurement(_) => C::BodyCompositionMeasurement,
            Decoded::BatteryLevel(_) => C::BatteryLevel,
            Decoded::DeviceInfoString(c, _) => *c,
            Decoded::PnpId(_) => C::PnpId,
            Decoded::DateTime(_) => C::DateTime,
            Decoded::CurrentTime(_) => C::CurrentTime,
        }
    }

    /// The wire value (re-encoding a decoded value gives the same bytes,
    /// except that reserved flag bits are dropped).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Decoded::HeartRateMeasurement(v) => v.encode(),
            Decoded::BodySensorLocation(v) => v.encode(),
            Decoded::BloodPressureMeasurement(v) => v.encode(),
            Decoded::IntermediateCuffPressure(v) => v.encode(),
            Decoded::TemperatureMeasurement(v) => v.encode(),
            Decoded::TemperatureType(v) => v.encode(),
            Decoded::IntermediateTemperature(v) => v.encode(),
            Decoded::GlucoseMeasurement(v) => v.encode(),
            Decoded::GlucoseMeasurementContext(v) => v.encode(),
            Decoded::RecordAccessControlPoint(v) => v.encode(),
            Decoded::PlxSpotCheck(v) => v.encode(),
            Decoded::PlxContinuous(v) => v.encode(),
            Decoded::WeightMeasurement(v) => v.encode(),
            Decoded::BodyCompositionMeasurement(v) => v.encode(),
            Decoded::BatteryLevel(v) => v.encode(),
            Decoded::DeviceInfoString(_, v) => v.encode(),
            Decoded::PnpId(v) => v.encode(),
            Decoded::DateTime(v) => v.encode(),
            Decoded::CurrentTime(v) => v.encode(),
        }
    }

    /// JSON with the field names of `proto/vectors/gatt.json`.
    pub fn to_json(&self) -> Value {
        match self {
            Decoded::HeartRateMeasurement(v) => v.to_json(),
            Decoded::BodySensorLocation(v) => v.to_json(),
            Decoded::BloodPressureMeasurement(v) => v.to_json(),
            Decoded::IntermediateCuffPressure(v) => v.to_json(),
            Decoded::TemperatureMeasurement(v) => v.to_json(),
            Decoded::TemperatureType(v) => v.to_json(),
            Decoded::IntermediateTemperature(v) => v.to_json(),
            Decoded::GlucoseMeasurement(v) => v.to_json(),
            Decoded::GlucoseMeasurementContext(v) => v.to_json(),
            Decoded::RecordAccessControlPoint(v) => v.to_json(),
            Decoded::PlxSpotCheck(v) => v.to_json(),
            Decoded::PlxContinuous(v) => v.to_json(),
            Decoded::WeightMeasurement(v) => v.to_json(),
            Decoded::BodyCompositionMeasurement(v) => v.to_json(),
            Decoded::BatteryLevel(v) => v.to_json(),
            Decoded::DeviceInfoString(_, v) => v.to_json(),
            Decoded::PnpId(v) => v.to_json(),
            Decoded::DateTime(v) => v.to_json(),
            Decoded::CurrentTime(v) => v.to_json(),
        }
    }
}

/// Decode `bytes` of the characteristic named by `uuid` (`2A37`, `0x2A37`,
/// or 128-bit) to JSON with the field names of `proto/vectors/gatt.json`,
/// plus `characteristic_uuid` and `characteristic`. `flags` is the flags
/// byte as received (including reserved bits).
pub fn decode_to_json(uuid: &str, bytes: &[u8]) -> Result<Value, GattError> {
    let characteristic = Characteristic::parse(uuid)?;
    let decoded = decode(characteristic, bytes)?;
    let mut json = decoded.to_json();
    if let Value::Object(m) = &mut json {
        if characteristic == Characteristic::BodyCompositionMeasurement {
            // The one characteristic here with a two-byte (uint16) flags field.
            if let [lo, hi, ..] = bytes {
                m.insert("flags".into(), Value::from(u16::from_le_bytes([*lo, *hi])));
            }
        } else if characteristic.has_flags()
            && let Some(f) = bytes.first()
        {
            m.insert("flags".into(), Value::from(*f));
        }
        m.insert(
            "characteristic_uuid".into(),
            Value::from(format!("{:04X}", characteristic.uuid16())),
        );
        m.insert("characteristic".into(), Value::from(characteristic.name()));
    }
    Ok(json)
}

/// Parse hex as typed by a person: whitespace, `:` and a leading `0x` are
/// ignored; the empty string is a zero-length value.
pub fn parse_hex(text: &str) -> Result<Vec<u8>, GattError> {
    let t = text.trim();
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    let digits: String = t
        .chars()
        .filter(|c| !c.is_ascii_whitespace() && *c != ':')
        .collect();
    hex::decode(&digits).map_err(|e| GattError::BadHex(format!("{e} in {text:?}")))
}

/// [`parse_hex`] then [`decode_to_json`]: what `hailan-gateway decode` runs.
pub fn decode_hex_to_json(uuid: &str, hex_text: &str) -> Result<Value, GattError> {
    let characteristic = Characteristic::parse(uuid)?;
    let bytes = parse_hex(hex_text)?;
    decode_to_json(&format!("{:04X}", characteristic.uuid16()), &bytes)
}
