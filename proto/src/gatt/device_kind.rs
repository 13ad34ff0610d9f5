//! Which services and characteristics make a device of which kind: used by
//! scanning (advertised service UUIDs) and pairing (discovered GATT table).
//!
//! | kind | service | subscribe | also read / write |
//! |---|---|---|---|
//! | heart-rate monitor | 0x180D | 0x2A37 notify (mandatory) | 0x2A38 read |
//! | blood-pressure monitor | 0x1810 | 0x2A35 indicate (mandatory), 0x2A36 notify | — |
//! | thermometer | 0x1809 | 0x2A1C indicate (mandatory), 0x2A1E notify | 0x2A1D read |
//! | glucose meter | 0x1808 | 0x2A18 notify, 0x2A34 notify, 0x2A52 indicate (mandatory) | 0x2A52 write (RACP requests) |
//! | pulse oximeter | 0x1822 | 0x2A5E indicate and/or 0x2A5F notify (at least one) | 0x2A52 (optional RACP) |
//! | weight scale | 0x181D | 0x2A9D indicate (mandatory) | — |
//! | body-composition scale | 0x181B | 0x2A9C indicate (mandatory) | — |
//!
//! A scale with both 0x181D and 0x181B is two kinds (paired as two devices),
//! as a cuff with heart rate is.
//!
//! Every kind may also expose Battery 0x180F (0x2A19 read, optionally
//! notify), Device Information 0x180A (strings, PnP ID) and Current Time
//! 0x1805 ([`COMMON`]). A glucose collector must enable notifications on
//! 0x2A18 (and 0x2A34) and indications on 0x2A52 before writing a RACP request.

use super::Characteristic;
use crate::data_type::DataType;

/// Battery service.
pub const BATTERY_SERVICE: u16 = 0x180F;
/// Device Information service.
pub const DEVICE_INFORMATION_SERVICE: u16 = 0x180A;
/// Current Time service.
pub const CURRENT_TIME_SERVICE: u16 = 0x1805;

/// How the gateway uses a characteristic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Delivery {
    /// Enable notifications (CCCD 0x0001).
    Notify,
    /// Enable indications (CCCD 0x0002).
    Indicate,
    /// Read once (at pairing / connection).
    Read,
    /// Enable indications, then write requests (a control point).
    WriteIndicate,
}

/// One characteristic a device kind uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CharacteristicUse {
    /// Service it lives in.
    pub service: u16,
    /// Which characteristic of `service` (its UUID is [`Characteristic::uuid16`]).
    pub characteristic: Characteristic,
    /// How the gateway takes its values: notify, indicate, read, or indicate and write.
    pub delivery: Delivery,
    /// Mandatory for this kind (a device without it cannot be paired as this kind).
    pub required: bool,
    /// Its values become readings ([`super::Decoded::to_reading`]).
    pub makes_readings: bool,
}

const fn use_(
    service: u16,
    characteristic: Characteristic,
    delivery: Delivery,
    required: bool,
    makes_readings: bool,
) -> CharacteristicUse {
    CharacteristicUse {
        service,
        characteristic,
        delivery,
        required,
        makes_readings,
    }
}

/// A kind of health device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceKind {
    /// Heart Rate service 0x180D; makes `HEART_RATE` readings.
    HeartRateMonitor,
    /// Blood Pressure service 0x1810; makes `BLOOD_PRESSURE` readings.
    BloodPressureMonitor,
    /// Health Thermometer service 0x1809; makes `BODY_TEMPERATURE` readings.
    Thermometer,
    /// Glucose service 0x1808 (records fetched with RACP); makes `GLUCOSE` readings.
    GlucoseMeter,
    /// Pulse Oximeter service 0x1822; makes `SPO2` readings.
    PulseOximeter,
    /// Weight Scale service 0x181D; makes `BODY_WEIGHT` readings.
    WeightScale,
    /// Body Composition service 0x181B; makes `BODY_COMPOSITION` readings.
    BodyCompositionScale,
}

use Characteristic as C;
use Delivery::{Indicate, Notify, Read, WriteIndicate};

const HR: &[CharacteristicUse] = &[
    use_(0x180D, C::HeartRateMeasurement, Notify, true, true),
    use_(0x180D, C::BodySensorLocation, Read, false, false),
];
const BP: &[CharacteristicUse] = &[
    use_(0x1810, C::BloodPressureMeasurement, Indicate, true, true),
    use_(0x1810, C::IntermediateCuffPressure, Notify, false, false),
];
const THERMO: &[CharacteristicUse] = &[
    use_(0x1809, C::TemperatureMeasurement, Indicate, true, true),
    use_(0x1809, C::TemperatureType, Read, false, false),
    use_(0x1809, C::IntermediateTemperature, Notify, false, false),
];
const GLUCOSE: &[CharacteristicUse] = &[
    use_(0x1808, C::GlucoseMeasurement, Notify, true, true),
    use_(0x1808, C::GlucoseMeasurementContext, Notify, false, false),
    use_(
        0x1808,
        C::RecordAccessControlPoint,
        WriteIndicate,
        true,
        false,
    ),
];
const PLX: &[CharacteristicUse] = &[
    use_(0x1822, C::PlxSpotCheck, Indicate, false, true),
    use_(0x1822, C::PlxContinuous, Notify, false, true),
    use_(
        0x1822,
        C::RecordAccessControlPoint,
        WriteIndicate,
        false,
        false,
    ),
];
const WEIGHT: &[CharacteristicUse] = &[use_(0x181D, C::WeightMeasurement, Indicate, true, true)];
const BODY_COMPOSITION: &[CharacteristicUse] = &[use_(
    0x181B,
    C::BodyCompositionMeasurement,
    Indicate,
    true,
    true,
)];

/// Characteristics every kind may have (battery, device information, time).
pub const COMMON: &[CharacteristicUse] = &[
    use_(BATTERY_SERVICE, C::BatteryLevel, Read, false, false),
    use_(
        DEVICE_INFORMATION_SERVICE,
        C::ManufacturerName,
        Read,
        false,
        false,
    ),
    use_(
        DEVICE_INFORMATION_SERVICE,
        C::ModelNumber,
        Read,
        false,
        false,
    ),
    use_(
        DEVICE_INFORMATION_SERVICE,
        C::SerialNumber,
        Read,
        false,
        false,
    ),
    use_(
        DEVICE_INFORMATION_SERVICE,
        C::HardwareRevision,
        Read,
        false,
        false,
    ),
    use_(
        DEVICE_INFORMATION_SERVICE,
        C::FirmwareRevision,
        Read,
        false,
        false,
    ),
    use_(
        DEVICE_INFORMATION_SERVICE,
        C::SoftwareRevision,
        Read,
        false,
        false,
    ),
    use_(DEVICE_INFORMATION_SERVICE, C::PnpId, Read, false, false),
    use_(CURRENT_TIME_SERVICE, C::CurrentTime, Read, false, false),
];

impl DeviceKind {
    /// Every kind, in data-type table order.
    pub const ALL: [DeviceKind; 7] = [
        DeviceKind::HeartRateMonitor,
        DeviceKind::BloodPressureMonitor,
        DeviceKind::Thermometer,
        DeviceKind::GlucoseMeter,
        DeviceKind::PulseOximeter,
        DeviceKind::WeightScale,
        DeviceKind::BodyCompositionScale,
    ];

    /// The data type its readings have.
    pub fn data_type(self) -> DataType {
        match self {
            DeviceKind::HeartRateMonitor => DataType::HeartRate,
            DeviceKind::BloodPressureMonitor => DataType::BloodPressure,
            DeviceKind::Thermometer => DataType::BodyTemperature,
            DeviceKind::GlucoseMeter => DataType::Glucose,
            DeviceKind::PulseOximeter => DataType::Spo2,
            DeviceKind::WeightScale => DataType::BodyWeight,
            DeviceKind::BodyCompositionScale => DataType::BodyComposition,
        }
    }

    /// The kind whose readings have `data_type`.
    pub fn for_data_type(data_type: DataType) -> DeviceKind {
        match data_type {
            DataType::HeartRate => DeviceKind::HeartRateMonitor,
            DataType::BloodPressure => DeviceKind::BloodPressureMonitor,
            DataType::BodyTemperature => DeviceKind::Thermometer,
            DataType::Glucose => DeviceKind::GlucoseMeter,
            DataType::Spo2 => DeviceKind::PulseOximeter,
            DataType::BodyWeight => DeviceKind::WeightScale,
            DataType::BodyComposition => DeviceKind::BodyCompositionScale,
        }
    }

    /// The 16-bit UUID of its primary service (the data-type table's `gatt_service`).
    pub fn service(self) -> u16 {
        self.data_type().spec().gatt_service
    }

    /// Short machine name (`heart_rate_monitor` …).
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::HeartRateMonitor => "heart_rate_monitor",
            DeviceKind::BloodPressureMonitor => "blood_pressure_monitor",
            DeviceKind::Thermometer => "thermometer",
            DeviceKind::GlucoseMeter => "glucose_meter",
            DeviceKind::PulseOximeter => "pulse_oximeter",
            DeviceKind::WeightScale => "weight_scale",
            DeviceKind::BodyCompositionScale => "body_composition_scale",
        }
    }

    /// The characteristics of its primary service that the gateway uses.
    pub fn characteristics(self) -> &'static [CharacteristicUse] {
        match self {
            DeviceKind::HeartRateMonitor => HR,
            DeviceKind::BloodPressureMonitor => BP,
            DeviceKind::Thermometer => THERMO,
            DeviceKind::GlucoseMeter => GLUCOSE,
            DeviceKind::PulseOximeter => PLX,
            DeviceKind::WeightScale => WEIGHT,
            DeviceKind::BodyCompositionScale => BODY_COMPOSITION,
        }
    }

    /// The kind whose primary service is `service`.
    pub fn from_service(service: u16) -> Option<DeviceKind> {
        DeviceKind::ALL.into_iter().find(|k| k.service() == service)
    }

    /// The kinds a device is, from its advertised or discovered service
    /// UUIDs (16-bit), in table order, without duplicates. A device with
    /// several health services (e.g. a cuff that also offers heart rate)
    /// is several kinds.
    pub fn from_services(services: &[u16]) -> Vec<DeviceKind> {
        DeviceKind::ALL
            .into_iter()
            .filter(|k| services.contains(&k.service()))
            .collect()
    }

    /// Whether a discovered GATT table (16-bit characteristic UUIDs of the
    /// kind's service) is enough to pair as this kind: every required
    /// characteristic is there, and for a pulse oximeter at least one of
    /// spot-check and continuous.
    pub fn is_satisfied_by(self, characteristics: &[u16]) -> bool {
        let uses = self.characteristics();
        let required_ok = uses
            .iter()
            .filter(|u| u.required)
            .all(|u| characteristics.contains(&u.characteristic.uuid16()));
        let readings_ok = uses
            .iter()
            .filter(|u| u.makes_readings)
            .any(|u| characteristics.contains(&u.characteristic.uuid16()));
        required_ok && readings_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_match_the_data_type_table() {
        for k in DeviceKind::ALL {
            assert_eq!(DeviceKind::for_data_type(k.data_type()), k);
            assert_eq!(DeviceKind::from_service(k.service()), Some(k));
            let spec = k.data_type().spec();
            let reading_chars: Vec<u16> = k
                .characteristics()
                .iter()
                .filter(|u| u.makes_readings)
                .map(|u| u.characteristic.uuid16())
                .collect();
            assert_eq!(reading_chars, spec.gatt_measurements, "{k:?}");
            assert!(
                k.characteristics()
                    .iter()
                    .all(|u| u.service == spec.gatt_service)
            );
        }
    }

    #[test]
    fn from_services_and_pairing() {
        assert_eq!(
            DeviceKind::from_services(&[0x180A, 0x180F, 0x1810, 0x180D]),
            vec![
                DeviceKind::HeartRateMonitor,
                DeviceKind::BloodPressureMonitor
            ]
        );
        assert!(DeviceKind::from_services(&[0x180A]).is_empty());
        assert!(DeviceKind::GlucoseMeter.is_satisfied_by(&[0x2A18, 0x2A52]));
        assert!(!DeviceKind::GlucoseMeter.is_satisfied_by(&[0x2A18]));
        assert!(DeviceKind::PulseOximeter.is_satisfied_by(&[0x2A5F]));
        assert!(!DeviceKind::PulseOximeter.is_satisfied_by(&[0x2A52]));
    }
}
