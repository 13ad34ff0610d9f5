//! Glucose service 0x1808: Glucose Measurement 0x2A18 (notify) and Glucose
//! Measurement Context 0x2A34 (notify). Records are requested through the
//! Record Access Control Point ([`super::racp`]).
//!
//! Glucose Measurement flags (uint8):
//!
//! | bit | meaning |
//! |-----|---------|
//! | 0 | Time Offset present |
//! | 1 | Concentration + Type/Sample Location present |
//! | 2 | concentration unit: 0 = kg/L, 1 = mol/L (meaningful with bit 1) |
//! | 3 | Sensor Status Annunciation present |
//! | 4 | Context Information Follows (a 0x2A34 with the same sequence number) |
//! | 5–7 | reserved (ignored) |
//!
//! Fields: flags, Sequence Number uint16, Base Time (Date Time), [Time
//! Offset sint16 minutes], [Concentration SFLOAT + Type/Location uint8],
//! [Sensor Status Annunciation uint16]. Minimum 10 bytes. User-facing time
//! = base time + offset. Type/Location byte: type = low nibble, sample
//! location = high nibble.
//!
//! Glucose Measurement Context flags (uint8): bit 0 Carbohydrate ID +
//! Carbohydrate (SFLOAT kg), 1 Meal, 2 Tester-Health, 3 Exercise Duration
//! (uint16 s, 0xFFFF = overrun) + Intensity (uint8 %), 4 Medication ID +
//! Medication (SFLOAT), 5 medication unit (0 = kg, 1 = litres), 6 HbA1c
//! (SFLOAT %), 7 Extended Flags present. Fields: flags, Sequence Number
//! uint16, [Extended Flags], [Carbohydrate ID, Carbohydrate], \[Meal\],
//! [Tester-Health], [Exercise Duration, Intensity], [Medication ID,
//! Medication], \[HbA1c\].
//!
//! Tester-Health nibble order: the decoders disagree. We follow Nordic
//! (tester = low nibble, health = high nibble, the same convention as
//! Type/Location); Wireshark 4.0.17 has them the other way round.

use super::GattError;
use super::codec::{Reader, Writer};
use super::datetime::DateTime;
use super::sfloat::SFloat;
use serde_json::{Map, Value, json};

/// Glucose concentration unit (flag bit 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GlucoseUnit {
    /// kg/L (bit 2 clear).
    KgPerL,
    /// mol/L (bit 2 set).
    MolPerL,
}

impl GlucoseUnit {
    /// `kg/L` or `mol/L` (gatt.json, also UCUM).
    pub fn as_str(self) -> &'static str {
        match self {
            GlucoseUnit::KgPerL => "kg/L",
            GlucoseUnit::MolPerL => "mol/L",
        }
    }
}

/// The concentration field group of a Glucose Measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GlucoseConcentration {
    /// Unit of `value` (flag bit 2): kg/L or mol/L; the gateway converts to mg/dL.
    pub unit: GlucoseUnit,
    /// Glucose Concentration, in `unit`.
    pub value: SFloat,
    /// Sample type, 4 bits (see [`sample_type_name`]). Only the low nibble is encoded.
    pub sample_type: u8,
    /// Sample location, 4 bits (see [`sample_location_name`]). Only the low nibble is encoded.
    pub sample_location: u8,
}

/// Name of a glucose sample type nibble.
pub fn sample_type_name(t: u8) -> &'static str {
    match t {
        1 => "Capillary Whole blood",
        2 => "Capillary Plasma",
        3 => "Venous Whole blood",
        4 => "Venous Plasma",
        5 => "Arterial Whole blood",
        6 => "Arterial Plasma",
        7 => "Undetermined Whole blood",
        8 => "Undetermined Plasma",
        9 => "Interstitial Fluid (ISF)",
        10 => "Control Solution",
        _ => "Reserved",
    }
}

/// Name of a glucose sample location nibble.
pub fn sample_location_name(l: u8) -> &'static str {
    match l {
        1 => "Finger",
        2 => "Alternate Site Test (AST)",
        3 => "Earlobe",
        4 => "Control solution",
        15 => "Sample Location value not available",
        _ => "Reserved",
    }
}

const SENSOR_STATUS_BITS: [&str; 12] = [
    "device battery low",
    "sensor malfunction",
    "sample size insufficient",
    "strip insertion error",
    "strip type incorrect",
    "sensor result too high",
    "sensor result too low",
    "sensor temperature too high",
    "sensor temperature too low",
    "sensor read interrupted",
    "general device fault",
    "time fault",
];

/// The set Sensor Status Annunciation bits with their names (reserved bits left out).
pub fn sensor_status_names(status: u16) -> Vec<(usize, &'static str)> {
    SENSOR_STATUS_BITS
        .iter()
        .enumerate()
        .filter(|(b, _)| status & (1 << b) != 0)
        .map(|(b, n)| (b, *n))
        .collect()
}

/// Names of the set Sensor Status Annunciation bits (reserved bits as `reserved (bitN)`).
pub fn sensor_status_bits(status: u16) -> Vec<String> {
    (0..16)
        .filter(|b| status & (1 << b) != 0)
        .map(|b| {
            format!(
                "{} (bit{b})",
                SENSOR_STATUS_BITS.get(b).copied().unwrap_or("reserved")
            )
        })
        .collect()
}

/// Glucose Measurement 0x2A18.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GlucoseMeasurement {
    /// Sequence Number of the record on the meter (what RACP requests filter on).
    pub sequence_number: u16,
    /// Base Time: the meter's clock when it measured, before `time_offset_min`.
    pub base_time: DateTime,
    /// Minutes to add to `base_time` for the user-facing time.
    pub time_offset_min: Option<i16>,
    /// Glucose Concentration with its Type and Sample Location (flag bit 1); `None` when
    /// the record holds no value.
    pub concentration: Option<GlucoseConcentration>,
    /// Sensor Status Annunciation bits (flag bit 3); see [`sensor_status_names`].
    pub sensor_status: Option<u16>,
    /// A Glucose Measurement Context with the same sequence number follows.
    pub context_follows: bool,
}

impl GlucoseMeasurement {
    /// The flags byte this value encodes with.
    pub fn flags(&self) -> u8 {
        let mut f = 0;
        if self.time_offset_min.is_some() {
            f |= 0x01;
        }
        if let Some(c) = &self.concentration {
            f |= 0x02;
            if c.unit == GlucoseUnit::MolPerL {
                f |= 0x04;
            }
        }
        if self.sensor_status.is_some() {
            f |= 0x08;
        }
        if self.context_follows {
            f |= 0x10;
        }
        f
    }

    /// Base time plus offset, if the base time is a valid instant.
    pub fn user_facing_time(&self) -> Option<DateTime> {
        self.base_time
            .checked_add_minutes(i64::from(self.time_offset_min.unwrap_or(0)))
    }

    /// Decode a notification value.
    pub fn decode(bytes: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(bytes)?;
        let flags = r.u8("flags")?;
        let sequence_number = r.u16("sequence number")?;
        let base_time = r.date_time("base time")?;
        let time_offset_min = if flags & 0x01 != 0 {
            Some(r.i16("time offset")?)
        } else {
            None
        };
        let concentration = if flags & 0x02 != 0 {
            let value = r.sfloat("glucose concentration")?;
            let tl = r.u8("type/sample location")?;
            Some(GlucoseConcentration {
                unit: if flags & 0x04 != 0 {
                    GlucoseUnit::MolPerL
                } else {
                    GlucoseUnit::KgPerL
                },
                value,
                sample_type: tl & 0x0F,
                sample_location: tl >> 4,
            })
        } else {
            None
        };
        let sensor_status = if flags & 0x08 != 0 {
            Some(r.u16("sensor status annunciation")?)
        } else {
            None
        };
        r.finish()?;
        Ok(GlucoseMeasurement {
            sequence_number,
            base_time,
            time_offset_min,
            concentration,
            sensor_status,
            context_follows: flags & 0x10 != 0,
        })
    }

    /// The notification value.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(self.flags())
            .u16(self.sequence_number)
            .date_time(&self.base_time);
        if let Some(o) = self.time_offset_min {
            w.i16(o);
        }
        if let Some(c) = &self.concentration {
            w.sfloat(c.value)
                .u8((c.sample_type & 0x0F) | (c.sample_location << 4));
        }
        if let Some(s) = self.sensor_status {
            w.u16(s);
        }
        w.finish()
    }

    /// JSON with the gatt.json field names.
    pub fn to_json(&self) -> Value {
        let c = self.concentration.as_ref();
        json!({
            "flags": self.flags(),
            "sequence_number": self.sequence_number,
            "base_time": self.base_time.to_json(),
            "time_offset_min": self.time_offset_min,
            "user_facing_time": self.user_facing_time().map(|t| t.to_string()),
            "unit": c.map(|c| c.unit.as_str()),
            "glucose_concentration": c.map(|c| c.value.to_json()),
            "type": c.map(|c| c.sample_type),
            "type_name": c.map(|c| sample_type_name(c.sample_type)),
            "sample_location": c.map(|c| c.sample_location),
            "sample_location_name": c.map(|c| sample_location_name(c.sample_location)),
            "sensor_status_annunciation": self.sensor_status,
            "status_bits": self.sensor_status.map(sensor_status_bits),
            "context_follows": self.context_follows,
        })
    }
}

/// Carbohydrate ID and amount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Carbohydrate {
    /// 1 breakfast, 2 lunch, 3 dinner, 4 snack, 5 drink, 6 supper, 7 brunch.
    pub id: u8,
    /// Kilograms.
    pub kg: SFloat,
}

/// Tester and health nibbles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TesterHealth {
    /// 1 self, 2 health-care professional, 3 lab test, 15 not available (low nibble).
    pub tester: u8,
    /// 1 minor issues, 2 major issues, 3 during menses, 4 under stress,
    /// 5 no issues, 15 not available (high nibble).
    pub health: u8,
}

/// Exercise duration and intensity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Exercise {
    /// Seconds, 0xFFFF = overrun.
    pub duration_s: u16,
    /// Percent.
    pub intensity_pct: u8,
}

/// Medication unit (context flag bit 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MedicationUnit {
    /// Medication in kilograms (flag bit 5 clear).
    Kilograms,
    /// Medication in litres (flag bit 5 set).
    Litres,
}

/// Medication ID and amount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Medication {
    /// 1 rapid-acting, 2 short-acting, 3 intermediate-acting, 4 long-acting, 5 pre-mixed insulin.
    pub id: u8,
    /// Unit of `amount` (context flag bit 5).
    pub unit: MedicationUnit,
    /// Medication amount, in `unit`.
    pub amount: SFloat,
}

/// Glucose Measurement Context 0x2A34.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GlucoseMeasurementContext {
    /// Matches the Glucose Measurement record.
    pub sequence_number: u16,
    /// Extended Flags (flag bit 7); reserved for future use by the SIG.
    pub extended_flags: Option<u8>,
    /// Carbohydrate ID and amount (flag bit 0).
    pub carbohydrate: Option<Carbohydrate>,
    /// 1 preprandial, 2 postprandial, 3 fasting, 4 casual, 5 bedtime.
    pub meal: Option<u8>,
    /// Tester and Health (flag bit 2).
    pub tester_health: Option<TesterHealth>,
    /// Exercise Duration and Intensity (flag bit 3).
    pub exercise: Option<Exercise>,
    /// Medication ID and amount (flag bit 4).
    pub medication: Option<Medication>,
    /// Percent.
    pub hba1c: Option<SFloat>,
}

fn code_name(table: &[&'static str], v: u8) -> &'static str {
    table.get(usize::from(v)).copied().unwrap_or("Reserved")
}

const CARB_NAMES: [&str; 8] = [
    "Reserved",
    "Breakfast",
    "Lunch",
    "Dinner",
    "Snack",
    "Drink",
    "Supper",
    "Brunch",
];
const MEAL_NAMES: [&str; 6] = [
    "Reserved",
    "Preprandial (before meal)",
    "Postprandial (after meal)",
    "Fasting",
    "Casual (snacks, drinks, etc.)",
    "Bedtime",
];
const MED_NAMES: [&str; 6] = [
    "Reserved",
    "Rapid acting insulin",
    "Short acting insulin",
    "Intermediate acting insulin",
    "Long acting insulin",
    "Pre-mixed insulin",
];

fn tester_name(v: u8) -> &'static str {
    match v {
        1 => "Self",
        2 => "Health Care Professional",
        3 => "Lab test",
        15 => "Tester value not available",
        _ => "Reserved",
    }
}

fn health_name(v: u8) -> &'static str {
    match v {
        1 => "Minor health issues",
        2 => "Major health issues",
        3 => "During menses",
        4 => "Under stress",
        5 => "No health issues",
        15 => "Health value not available",
        _ => "Reserved",
    }
}

impl GlucoseMeasurementContext {
    /// Only the sequence number.
    pub fn new(sequence_number: u16) -> Self {
        GlucoseMeasurementContext {
            sequence_number,
            extended_flags: None,
            carbohydrate: None,
            meal: None,
            tester_health: None,
            exercise: None,
            medication: None,
            hba1c: None,
        }
    }

    /// The flags byte this value encodes with.
    pub fn flags(&self) -> u8 {
        let mut f = 0;
        if self.carbohydrate.is_some() {
            f |= 0x01;
        }
        if self.meal.is_some() {
            f |= 0x02;
        }
        if self.tester_health.is_some() {
            f |= 0x04;
        }
        if self.exercise.is_some() {
            f |= 0x08;
        }
        if let Some(m) = &self.medication {
            f |= 0x10;
            if m.unit == MedicationUnit::Litres {
                f |= 0x20;
            }
        }
        if self.hba1c.is_some() {
            f |= 0x40;
        }
        if self.extended_flags.is_some() {
            f |= 0x80;
        }
        f
    }

    /// Decode a notification value.
    pub fn decode(bytes: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(bytes)?;
        let flags = r.u8("flags")?;
        let mut c = GlucoseMeasurementContext::new(r.u16("sequence number")?);
        if flags & 0x80 != 0 {
            c.extended_flags = Some(r.u8("extended flags")?);
        }
        if flags & 0x01 != 0 {
            let id = r.u8("carbohydrate id")?;
            c.carbohydrate = Some(Carbohydrate {
                id,
                kg: r.sfloat("carbohydrate")?,
            });
        }
        if flags & 0x02 != 0 {
            c.meal = Some(r.u8("meal")?);
        }
        if flags & 0x04 != 0 {
            let th = r.u8("tester-health")?;
            c.tester_health = Some(TesterHealth {
                tester: th & 0x0F,
                health: th >> 4,
            });
        }
        if flags & 0x08 != 0 {
            let duration_s = r.u16("exercise duration")?;
            c.exercise = Some(Exercise {
                duration_s,
                intensity_pct: r.u8("exercise intensity")?,
            });
        }
        if flags & 0x10 != 0 {
            let id = r.u8("medication id")?;
            let amount = r.sfloat("medication")?;
            let unit = if flags & 0x20 != 0 {
                MedicationUnit::Litres
            } else {
                MedicationUnit::Kilograms
            };
            c.medication = Some(Medication { id, unit, amount });
        }
        if flags & 0x40 != 0 {
            c.hba1c = Some(r.sfloat("HbA1c")?);
        }
        r.finish()?;
        Ok(c)
    }

    /// The notification value.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(self.flags()).u16(self.sequence_number);
        if let Some(e) = self.extended_flags {
            w.u8(e);
        }
        if let Some(c) = &self.carbohydrate {
            w.u8(c.id).sfloat(c.kg);
        }
        if let Some(m) = self.meal {
            w.u8(m);
        }
        if let Some(th) = &self.tester_health {
            w.u8((th.tester & 0x0F) | (th.health << 4));
        }
        if let Some(e) = &self.exercise {
            w.u16(e.duration_s).u8(e.intensity_pct);
        }
        if let Some(m) = &self.medication {
            w.u8(m.id).sfloat(m.amount);
        }
        if let Some(h) = self.hba1c {
            w.sfloat(h);
        }
        w.finish()
    }

    /// JSON with the gatt.json field names (absent groups are `null`).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("flags".into(), json!(self.flags()));
        m.insert("sequence_number".into(), json!(self.sequence_number));
        m.insert("extended_flags".into(), json!(self.extended_flags));
        let c = self.carbohydrate.as_ref();
        m.insert("carbohydrate_id".into(), json!(c.map(|c| c.id)));
        m.insert(
            "carbohydrate_id_name".into(),
            json!(c.map(|c| code_name(&CARB_NAMES, c.id))),
        );
        m.insert(
            "carbohydrate_kg".into(),
            c.map_or(Value::Null, |c| c.kg.to_json()),
        );
        m.insert("meal".into(), json!(self.meal));
        m.insert(
            "meal_name".into(),
            json!(self.meal.map(|v| code_name(&MEAL_NAMES, v))),
        );
        let th = self.tester_health.as_ref();
        m.insert("tester".into(), json!(th.map(|t| t.tester)));
        m.insert(
            "tester_name".into(),
            json!(th.map(|t| tester_name(t.tester))),
        );
        m.insert("health".into(), json!(th.map(|t| t.health)));
        m.insert(
            "health_name".into(),
            json!(th.map(|t| health_name(t.health))),
        );
        let e = self.exercise.as_ref();
        m.insert("exercise_duration_s".into(), json!(e.map(|e| e.duration_s)));
        m.insert(
            "exercise_duration_overrun".into(),
            json!(e.map(|e| e.duration_s == 0xFFFF)),
        );
        m.insert(
            "exercise_intensity_pct".into(),
            json!(e.map(|e| e.intensity_pct)),
        );
        let md = self.medication.as_ref();
        m.insert("medication_id".into(), json!(md.map(|m| m.id)));
        m.insert(
            "medication_id_name".into(),
            json!(md.map(|m| code_name(&MED_NAMES, m.id))),
        );
        m.insert(
            "medication_unit".into(),
            json!(md.map(|m| match m.unit {
                MedicationUnit::Kilograms => "kg",
                MedicationUnit::Litres => "L",
            })),
        );
        m.insert(
            "medication".into(),
            md.map_or(Value::Null, |m| m.amount.to_json()),
        );
        m.insert(
            "hba1c_pct".into(),
            self.hba1c.map_or(Value::Null, SFloat::to_json),
        );
        Value::Object(m)
    }
}
