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
    HeartRate,
    BloodPressure,
    Spo2,
    BodyTemperature,
    Glucose,
    BodyWeight,
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

static SPECS: [DataTypeSpec; 6] = [
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
    },
];

/// LOINC for glucose measured other than by a capillary glucometer
/// (Glucose [Mass/volume] in Blood).
pub const GLUCOSE_NON_CAPILLARY_LOINC: &str = "2339-0";

impl DataType {
    /// Every known data type, in table order.
    pub const ALL: [DataType; 6] = [
        DataType::HeartRate,
        DataType::BloodPressure,
        DataType::Spo2,
        DataType::BodyTemperature,
        DataType::Glucose,
        DataType::BodyWeight,
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
    "unknown data type {0:?} (known: HEART_RATE, BLOOD_PRESSURE, SPO2, BODY_TEMPERATURE, GLUCOSE, BODY_WEIGHT)"
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
