//! The clinical contract of DESIGN §3 as code: every data type hailan carries,
//! its GATT source, value slots (unsigned fixed point), UCUM units,
//! plausibility bounds and LOINC codes. This is the one place that table
//! lives; the gateway, ingest, the simulator and the API all read it.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The most value slots a reading can carry (the proof statement has this many).
pub const MAX_SLOTS: usize = 4;

/// A known data type. On the wire a data type travels as its name
/// ([`DataType::as_str`]) so that an unknown type can still be stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DataType {
    /// `HEART_RATE`: heart rate in bpm, from Heart Rate Measurement 0x2A37 (service
    /// 0x180D); proven in windows.
    HeartRate,
    /// `BLOOD_PRESSURE`: systolic, diastolic and mean arterial pressure (mmHg × 10) and
    /// pulse (bpm), from Blood Pressure Measurement 0x2A35 (service 0x1810).
    BloodPressure,
    /// `SPO2`: oxygen saturation (% × 10) and pulse (bpm), from PLX Spot-Check 0x2A5E or
    /// Continuous 0x2A5F Measurement (service 0x1822).
    Spo2,
    /// `BODY_TEMPERATURE`: body temperature in °C × 100, from Temperature Measurement
    /// 0x2A1C (service 0x1809).
    BodyTemperature,
    /// `GLUCOSE`: blood glucose in mg/dL × 10, from Glucose Measurement 0x2A18 (service
    /// 0x1808), records fetched through RACP.
    Glucose,
    /// `BODY_WEIGHT`: body weight in kg × 1000 (grams), from Weight Measurement 0x2A9D
    /// (service 0x181D).
    BodyWeight,
    /// `BODY_COMPOSITION`: body fat and muscle (% × 10), muscle and body water mass (kg ×
    /// 1000), from Body Composition Measurement 0x2A9C (service 0x181B).
    BodyComposition,
}

/// One value slot of a data type: how its unsigned fixed-point integer reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotSpec {
    /// Short machine name of the slot (`systolic`, `pulse` …).
    pub name: &'static str,
    /// Human-readable name.
    pub display: &'static str,
    /// UCUM unit of the *decoded* value (after dividing by `scale`).
    pub unit: &'static str,
    /// Fixed-point divisor: the wire integer is `value × scale`.
    pub scale: u32,
    /// Plausibility bounds, inclusive, in fixed point. Policy, not physiology.
    pub lo: u32,
    /// Upper plausibility bound, inclusive, in fixed point.
    pub hi: u32,
    /// LOINC code of this slot's observation (or component).
    pub loinc: &'static str,
}

impl SlotSpec {
    /// The fixed-point value as a decimal number in `unit`.
    pub fn to_decimal(&self, fixed: u32) -> f64 {
        f64::from(fixed) / f64::from(self.scale)
    }

    /// Whether `fixed` is inside the plausibility bounds.
    pub fn in_bounds(&self, fixed: u32) -> bool {
        (self.lo..=self.hi).contains(&fixed)
    }
}

/// Everything the system knows about one data type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataTypeSpec {
    /// The data type this row describes.
    pub data_type: DataType,
    /// Wire and database name (`HEART_RATE` …); also the partition value.
    pub name: &'static str,
    /// LOINC code of the observation as a whole (the panel for blood pressure).
    pub loinc: &'static str,
    /// LOINC display text for `loinc`.
    pub loinc_display: &'static str,
    /// Additional LOINC codes the observation carries (US Core pulse oximetry).
    pub extra_loinc: &'static [&'static str],
    /// 16-bit SIG UUID of the GATT service.
    pub gatt_service: u16,
    /// 16-bit SIG UUIDs of the measurement characteristics.
    pub gatt_measurements: &'static [u16],
    /// The value slots, in order.
    pub slots: &'static [SlotSpec],
    /// High-rate types prove a window of readings rather than each one (DESIGN §5.1).
    pub windowed: bool,
    /// Values sealed beside the slots (in the plaintext's `extras`) that the
    /// API shows, marked as not proven: what did not fit the proof's slots.
    pub shown_extras: &'static [ExtraSpec],
}

/// A sealed, unproven value of a reading that the API shows (FHIR
/// component, page): an integer under `key` in the sealed `extras`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtraSpec {
    /// Key in the sealed `extras` map.
    pub key: &'static str,
    /// Human-readable name.
    pub display: &'static str,
    /// UCUM unit of the decoded value (integer ÷ `scale`).
    pub unit: &'static str,
    /// Fixed-point divisor.
    pub scale: u32,
    /// LOINC code, or `None` where LOINC has none (see ARCHITECTURE.md).
    pub loinc: Option<&'static str>,
}

impl ExtraSpec {
    /// The integer as a decimal number in `unit`.
    pub fn to_decimal(&self, fixed: i64) -> f64 {
        fixed as f64 / f64::from(self.scale)
    }
}

const HEART_RATE_SLOT: SlotSpec = SlotSpec {
    name: "heart_rate",
    display: "Heart rate",
    unit: "/min",
    scale: 1,
    lo: 20,
    hi: 300,
    loinc: "8867-4",
};

/// Body composition: the fields of 0x2A9C that are not proven slots.
const BODY_COMPOSITION_EXTRAS: &[ExtraSpec] = &[
    ExtraSpec {
        key: "basal_metabolism_kj",
        display: "Basal metabolism",
        unit: "kJ/d",
        scale: 1,
        loinc: None,
    },
    ExtraSpec {
        key: "fat_free_mass_g",
        display: "Fat free mass",
        unit: "kg",
        scale: 1000,
        loinc: None,
    },
    ExtraSpec {
        key: "soft_lean_mass_g",
        display: "Soft lean mass",
        unit: "kg",
        scale: 1000,
        loinc: None,
    },
    ExtraSpec {
        key: "impedance_ohm_x10",
        display: "Body impedance",
        unit: "Ohm",
        scale: 10,
        loinc: None,
    },
    ExtraSpec {
        key: "weight_g",
        display: "Body weight",
        unit: "kg",
        scale: 1000,
        loinc: Some("29463-7"),
    },
    ExtraSpec {
        key: "height_mm",
        display: "Body height",
        unit: "m",
        scale: 1000,
        loinc: Some("8302-2"),
    },
];

static SPECS: [DataTypeSpec; 7] = [
    DataTypeSpec {
        data_type: DataType::HeartRate,
        name: "HEART_RATE",
        loinc: "8867-4",
        loinc_display: "Heart rate",
        extra_loinc: &[],
        gatt_service: 0x180D,
        gatt_measurements: &[0x2A37],
        slots: &[HEART_RATE_SLOT],
        windowed: true,
        shown_extras: &[],
    },
    DataTypeSpec {
        data_type: DataType::BloodPressure,
        name: "BLOOD_PRESSURE",
        loinc: "85354-9",
        loinc_display: "Blood pressure panel with all children optional",
        extra_loinc: &[],
        gatt_service: 0x1810,
        gatt_measurements: &[0x2A35],
        slots: &[
            SlotSpec {
                name: "systolic",
                display: "Systolic blood pressure",
                unit: "mm[Hg]",
                scale: 10,
                lo: 400,
                hi: 3000,
                loinc: "8480-6",
            },
            SlotSpec {
                name: "diastolic",
                display: "Diastolic blood pressure",
                unit: "mm[Hg]",
                scale: 10,
                lo: 200,
                hi: 2000,
                loinc: "8462-4",
            },
            SlotSpec {
                name: "mean_arterial",
                display: "Mean blood pressure",
                unit: "mm[Hg]",
                scale: 10,
                lo: 300,
                hi: 2500,
                loinc: "8478-0",
            },
            SlotSpec {
                name: "pulse",
                display: "Heart rate",
                unit: "/min",
                scale: 1,
                lo: 20,
                hi: 300,
                loinc: "8867-4",
            },
        ],
        windowed: false,
        shown_extras: &[],
    },
    DataTypeSpec {
        data_type: DataType::Spo2,
        name: "SPO2",
        loinc: "59408-5",
        loinc_display: "Oxygen saturation in Arterial blood by Pulse oximetry",
        extra_loinc: &["2708-6"],
        gatt_service: 0x1822,
        gatt_measurements: &[0x2A5E, 0x2A5F],
        slots: &[
            SlotSpec {
                name: "spo2",
                display: "Oxygen saturation",
                unit: "%",
                scale: 10,
                lo: 500,
                hi: 1000,
                loinc: "59408-5",
            },
            SlotSpec {
                name: "pulse",
                display: "Heart rate by Pulse oximetry",
                unit: "/min",
                scale: 1,
                lo: 20,
                hi: 300,
                loinc: "8889-8",
            },
        ],
        windowed: false,
        shown_extras: &[],
    },
    DataTypeSpec {
        data_type: DataType::BodyTemperature,
        name: "BODY_TEMPERATURE",
        loinc: "8310-5",
        loinc_display: "Body temperature",
        extra_loinc: &[],
        gatt_service: 0x1809,
        gatt_measurements: &[0x2A1C],
        slots: &[SlotSpec {
            name: "temperature",
            display: "Body temperature",
            unit: "Cel",
            scale: 100,
            lo: 2500,
            hi: 4500,
            loinc: "8310-5",
        }],
        windowed: false,
        shown_extras: &[],
    },
    DataTypeSpec {
        data_type: DataType::Glucose,
        name: "GLUCOSE",
        loinc: "41653-7",
        loinc_display: "Glucose [Mass/volume] in Capillary blood by Glucometer",
        extra_loinc: &[],
        gatt_service: 0x1808,
        gatt_measurements: &[0x2A18],
        slots: &[SlotSpec {
            name: "glucose",
            display: "Glucose",
            unit: "mg/dL",
            scale: 10,
            lo: 100,
            hi: 6000,
            loinc: "41653-7",
        }],
        windowed: false,
        shown_extras: &[],
    },
    DataTypeSpec {
        data_type: DataType::BodyWeight,
        name: "BODY_WEIGHT",
        loinc: "29463-7",
        loinc_display: "Body weight",
        extra_loinc: &[],
        gatt_service: 0x181D,
        gatt_measurements: &[0x2A9D],
        slots: &[SlotSpec {
            name: "weight",
            display: "Body weight",
            unit: "kg",
            scale: 1000,
            lo: 500,
            hi: 650_000,
            loinc: "29463-7",
        }],
        windowed: false,
        shown_extras: &[],
    },
    // Body Composition Measurement 0x2A9C. The proof has four slots; the
    // mandatory body fat and the three optional fields with LOINC codes of
    // their own are proven, the other values are sealed extras
    // (`shown_extras`). An optional slot holds 0 when the device did not send
    // the field (0 % muscle or 0 kg is not a body), so its lower bound is 0.
    DataTypeSpec {
        data_type: DataType::BodyComposition,
        name: "BODY_COMPOSITION",
        loinc: "41982-0",
        loinc_display: "Percentage of body fat Measured",
        extra_loinc: &[],
        gatt_service: 0x181B,
        gatt_measurements: &[0x2A9C],
        slots: &[
            SlotSpec {
                name: "body_fat",
                display: "Percentage of body fat Measured",
                unit: "%",
                scale: 10,
                lo: 10,
                hi: 900,
                loinc: "41982-0",
            },
            SlotSpec {
                name: "muscle_percentage",
                display: "Body muscle mass/Body weight Measured",
                unit: "%",
                scale: 10,
                lo: 0,
                hi: 1000,
                loinc: "73965-6",
            },
            SlotSpec {
                name: "muscle_mass",
                display: "Body muscle mass",
                unit: "kg",
                scale: 1000,
                lo: 0,
                hi: 650_000,
                loinc: "73964-9",
            },
            SlotSpec {
                name: "body_water_mass",
                display: "Body water mass",
                unit: "kg",
                scale: 1000,
                lo: 0,
                hi: 650_000,
                loinc: "101683-1",
            },
        ],
        windowed: false,
        shown_extras: BODY_COMPOSITION_EXTRAS,
    },
];

/// LOINC for glucose measured other than by a capillary glucometer
/// (Glucose [Mass/volume] in Blood).
pub const GLUCOSE_NON_CAPILLARY_LOINC: &str = "2339-0";

impl DataType {
    /// Every known data type, in table order.
    pub const ALL: [DataType; 7] = [
        DataType::HeartRate,
        DataType::BloodPressure,
        DataType::Spo2,
        DataType::BodyTemperature,
        DataType::Glucose,
        DataType::BodyWeight,
        DataType::BodyComposition,
    ];

    /// The row of the data-type table for this type.
    pub fn spec(self) -> &'static DataTypeSpec {
        // SPECS is in the same order as ALL; the test below keeps it so.
        &SPECS[self as usize]
    }

    /// Wire and database name, e.g. `HEART_RATE`.
    pub fn as_str(self) -> &'static str {
        self.spec().name
    }

    /// The known type with this wire name, if any.
    pub fn from_name(name: &str) -> Option<DataType> {
        SPECS.iter().find(|s| s.name == name).map(|s| s.data_type)
    }

    /// Number of value slots a reading of this type carries.
    pub fn slot_count(self) -> usize {
        self.spec().slots.len()
    }

    /// The known type whose GATT service is `service`.
    pub fn from_gatt_service(service: u16) -> Option<DataType> {
        SPECS
            .iter()
            .find(|s| s.gatt_service == service)
            .map(|s| s.data_type)
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DataType {
    type Err = UnknownDataType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DataType::from_name(s).ok_or_else(|| UnknownDataType(s.to_owned()))
    }
}

/// A data-type name that is not in the table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown data type {0:?} (known: HEART_RATE, BLOOD_PRESSURE, SPO2, BODY_TEMPERATURE, GLUCOSE, BODY_WEIGHT, BODY_COMPOSITION)"
)]
pub struct UnknownDataType(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_order_matches_enum() {
        for (i, t) in DataType::ALL.iter().enumerate() {
            assert_eq!(SPECS[i].data_type, *t);
            assert_eq!(DataType::from_name(t.as_str()), Some(*t));
        }
    }

    #[test]
    fn slots_are_well_formed() {
        for t in DataType::ALL {
            let spec = t.spec();
            assert!(
                !spec.slots.is_empty() && spec.slots.len() <= MAX_SLOTS,
                "{t}"
            );
            for slot in spec.slots {
                assert!(slot.lo <= slot.hi, "{t}.{}", slot.name);
                assert!(slot.scale > 0);
            }
            assert_eq!(DataType::from_gatt_service(spec.gatt_service), Some(t));
        }
    }

    #[test]
    fn serde_uses_wire_names() {
        for t in DataType::ALL {
            let json = serde_json::to_string(&t).expect("serialise");
            assert_eq!(json, format!("\"{}\"", t.as_str()));
        }
    }

    #[test]
    fn design_bounds() {
        let bp = DataType::BloodPressure.spec();
        assert_eq!((bp.slots[0].lo, bp.slots[0].hi), (400, 3000));
        assert_eq!(bp.slots[0].to_decimal(1205), 120.5);
        assert!(DataType::BodyWeight.spec().slots[0].in_bounds(650_000));
        assert!(!DataType::BodyWeight.spec().slots[0].in_bounds(650_001));
        assert_eq!("SPO2".parse::<DataType>(), Ok(DataType::Spo2));
        assert!("FOO".parse::<DataType>().is_err());
    }
}
