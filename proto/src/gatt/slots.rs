//! From a decoded measurement to the reading slots of DESIGN §3.
//!
//! A reading carries unsigned fixed-point integers: slot = value (in the
//! slot's unit) × `scale`, with units and scales taken from
//! [`crate::data_type`] (never repeated here). [`ReadingSlots`] fills
//! [`crate::seal::SealedValue`]'s `slots`, `original_unit` and `extras`.
//!
//! # Rounding rule
//!
//! The device value is an exact decimal (`mantissa × 10^exponent`). It is
//! converted to the slot unit **exactly** (rational arithmetic on `i128`,
//! never `f64`), multiplied by the slot's scale, then rounded **once, half
//! away from zero** to an integer. A result below 0 or above `u32::MAX`, or
//! an intermediate that does not fit `i128`, gives [`NoReading::NotRepresentable`].
//!
//! # Conversions (exact factors)
//!
//! | from | to | factor |
//! |---|---|---|
//! | kPa | mm\[Hg\] | × 1 / 0.133322387415 (1 mmHg = 133.322387415 Pa, the conventional millimetre of mercury: 13.5951 g/cm³ × 9.80665 m/s² × 1 mm) |
//! | °F (\[degF\]) | Cel | (°F − 32) × 5 / 9 |
//! | mol/L | mg/dL | × 18015.6 (glucose molar mass 180.156 g/mol: × 180 156 mg/mol ÷ 10 dL/L) |
//! | kg/L | mg/dL | × 100 000 (10⁶ mg/kg ÷ 10 dL/L) |
//! | lb (\[lb_av\]) | kg | × 0.45359237 (exact, international avoirdupois pound) |
//! | weight SI raw | kg | × 0.005 |
//! | weight imperial raw | lb | × 0.01 |
//!
//! Note: 0.133322368 kPa (101.325/760) is the **torr**; mmHg is 1.4 × 10⁻⁷
//! larger. At the 0.1 mmHg slot resolution the two only differ for values
//! within 10⁻⁵ of a rounding tie.
//!
//! # No fake numbers
//!
//! A special SFLOAT/FLOAT value (NaN, NRes, ±INF, reserved) in a proven
//! field, a missing field (blood pressure without pulse rate, glucose
//! without concentration) or a weight of 0xFFFF ("measurement
//! unsuccessful") produces **no reading**: the reason comes back as
//! [`NoReading`]. Unproven extras never block a reading: a special value
//! there is kept as its name (`"NaN"`).
//!
//! # Extras
//!
//! Everything a device says that is not proven rides in `extras` (CBOR):
//! RR intervals, sensor contact, energy expended, measurement status bits,
//! user id, glucose sequence number, sample type/location, sensor status,
//! context (see [`ReadingSlots::add_glucose_context`]), PLX fast/slow
//! pairs and PAI, BMI and height. A device time that is present but not a
//! valid instant (year 0, month 13, clock not set …) is not used as
//! `recorded_at`; it is kept as `device_time_raw` and the gateway stamps the
//! reading with its own receive time.

use super::blood_pressure::{BloodPressureMeasurement, PressureUnit};
use super::body_composition::BodyCompositionMeasurement;
use super::datetime::DateTime;
use super::glucose::{GlucoseMeasurement, GlucoseMeasurementContext, GlucoseUnit, MedicationUnit};
use super::heart_rate::{HeartRateMeasurement, SensorContact};
use super::plx::{PlxContinuous, PlxSpotCheck};
use super::sfloat::{Float, Ieee11073, SFloat, Special};
use super::temperature::{TemperatureMeasurement, TemperatureUnit};
use super::weight::{WeightMeasurement, WeightUnit};
use super::{Characteristic, Decoded};
use crate::data_type::DataType;
use ciborium::Value as Cbor;
use std::collections::BTreeMap;

/// The slots and sealed-payload fields of one reading.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadingSlots {
    /// The data type of the reading, which fixes the number and order of its slots.
    pub data_type: DataType,
    /// Fixed point, in `data_type.spec().slots` order.
    pub slots: Vec<u32>,
    /// The unit the device used when it was converted (UCUM: `kPa`,
    /// `[degF]`, `mol/L`, `kg/L`, `[lb_av]`); `None` if no conversion.
    pub original_unit: Option<String>,
    /// Non-proven extras for the sealed payload.
    pub extras: BTreeMap<String, Cbor>,
    /// The device's wall-clock time of the measurement (no zone), when it
    /// sent a valid one; otherwise the gateway uses its receive time.
    pub recorded_at: Option<DateTime>,
}

/// Why a measurement makes no reading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoReading {
    /// A proven field holds an IEEE 11073 special value.
    #[error("{field} is {special} (IEEE 11073 special value), not a number")]
    SpecialValue {
        /// The measurement field, e.g. `systolic`.
        field: &'static str,
        /// The special value it holds.
        special: Special,
    },
    /// A proven field is absent.
    #[error("{field} is missing")]
    Missing {
        /// The measurement field, e.g. `pulse rate`.
        field: &'static str,
    },
    /// The value does not fit the slot (negative, too large, or absurd exponent).
    #[error("{field} cannot be a slot value: {reason}")]
    NotRepresentable {
        /// The measurement field.
        field: &'static str,
        /// Why its value cannot be a slot.
        reason: String,
    },
    /// The scale reported 0xFFFF (weight, or body fat percentage).
    #[error("measurement unsuccessful (0xFFFF)")]
    MeasurementUnsuccessful,
    /// The characteristic is not a measurement (or an intermediate one).
    #[error("{0} does not make a reading")]
    NotAMeasurement(&'static str),
}

/// An exact rational `num / den`, `den > 0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Exact {
    num: i128,
    den: i128,
}

fn gcd(mut a: i128, mut b: i128) -> i128 {
    a = a.abs();
    b = b.abs();
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

impl Exact {
    fn int(v: i128) -> Exact {
        Exact { num: v, den: 1 }
    }

    /// `mantissa × 10^exponent`; `None` if 10^|exponent| does not fit.
    fn decimal(mantissa: i64, exponent: i32) -> Option<Exact> {
        let p = 10i128.checked_pow(exponent.unsigned_abs())?;
        if exponent >= 0 {
            Some(Exact {
                num: i128::from(mantissa).checked_mul(p)?,
                den: 1,
            })
        } else {
            Some(
                Exact {
                    num: i128::from(mantissa),
                    den: p,
                }
                .reduced(),
            )
        }
    }

    fn reduced(self) -> Exact {
        let g = gcd(self.num, self.den);
        Exact {
            num: self.num / g,
            den: self.den / g,
        }
    }

    /// × n / d (d > 0).
    fn mul(self, n: i128, d: i128) -> Option<Exact> {
        let a = Exact {
            num: self.num,
            den: d,
        }
        .reduced();
        let b = Exact {
            num: n,
            den: self.den,
        }
        .reduced();
        Some(
            Exact {
                num: a.num.checked_mul(b.num)?,
                den: a.den.checked_mul(b.den)?,
            }
            .reduced(),
        )
    }

    /// − k.
    fn sub_int(self, k: i128) -> Option<Exact> {
        Some(Exact {
            num: self.num.checked_sub(k.checked_mul(self.den)?)?,
            den: self.den,
        })
    }

    /// Round half away from zero.
    fn round_half_away(self) -> Option<i128> {
        let q = self.num.abs() / self.den;
        let r = self.num.abs() % self.den;
        let up = r.checked_mul(2)? >= self.den;
        let m = if up { q + 1 } else { q };
        Some(if self.num < 0 { -m } else { m })
    }
}

fn overflow(field: &'static str) -> NoReading {
    NoReading::NotRepresentable {
        field,
        reason: "value out of range for exact conversion".into(),
    }
}

/// Exact value of a number, or why it is none.
fn sfloat_exact(field: &'static str, v: SFloat) -> Result<Exact, NoReading> {
    match v.classify() {
        Ieee11073::Number { mantissa, exponent } => {
            Exact::decimal(i64::from(mantissa), i32::from(exponent)).ok_or_else(|| overflow(field))
        }
        Ieee11073::Special(special) => Err(NoReading::SpecialValue { field, special }),
    }
}

fn float_exact(field: &'static str, v: Float) -> Result<Exact, NoReading> {
    match v.classify() {
        Ieee11073::Number { mantissa, exponent } => {
            Exact::decimal(i64::from(mantissa), i32::from(exponent)).ok_or_else(|| overflow(field))
        }
        Ieee11073::Special(special) => Err(NoReading::SpecialValue { field, special }),
    }
}

/// `value` (in the slot's unit) × the slot's scale, rounded half away from zero.
fn to_slot(
    field: &'static str,
    data_type: DataType,
    index: usize,
    value: Exact,
) -> Result<u32, NoReading> {
    let spec = data_type
        .spec()
        .slots
        .get(index)
        .ok_or(NoReading::NotRepresentable {
            field,
            reason: format!("{data_type} has no slot {index}"),
        })?;
    let scaled = value
        .mul(i128::from(spec.scale), 1)
        .ok_or_else(|| overflow(field))?;
    let r = scaled.round_half_away().ok_or_else(|| overflow(field))?;
    u32::try_from(r).map_err(|_| NoReading::NotRepresentable {
        field,
        reason: format!(
            "{r} (fixed point, scale {}) is not in 0..=u32::MAX",
            spec.scale
        ),
    })
}

/// kPa → mmHg: × 10^12 / 133 322 387 415.
fn kpa_to_mmhg(v: Exact) -> Option<Exact> {
    v.mul(1_000_000_000_000, 133_322_387_415)
}

fn cbor_sfloat(v: SFloat) -> Cbor {
    match v.to_f64() {
        Some(f) => Cbor::Float(f),
        None => Cbor::Text(v.special().map_or("NaN", Special::as_str).to_owned()),
    }
}

fn cbor_int(v: impl Into<ciborium::value::Integer>) -> Cbor {
    Cbor::Integer(v.into())
}

impl ReadingSlots {
    fn new(data_type: DataType) -> Self {
        ReadingSlots {
            data_type,
            slots: Vec::with_capacity(data_type.slot_count()),
            original_unit: None,
            extras: BTreeMap::new(),
            recorded_at: None,
        }
    }

    fn extra(&mut self, key: &str, value: Cbor) {
        self.extras.insert(key.to_owned(), value);
    }

    /// Use `t` as `recorded_at` if it is a valid instant, else keep it as an extra.
    fn device_time(&mut self, t: Option<DateTime>) {
        if let Some(t) = t {
            if t.is_valid_instant() {
                self.recorded_at = Some(t);
            } else {
                self.extra("device_time_raw", Cbor::Text(t.to_string()));
            }
        }
    }

    /// Add a Glucose Measurement Context (same sequence number) to the
    /// extras of a glucose reading, under `context.*` keys.
    pub fn add_glucose_context(&mut self, c: &GlucoseMeasurementContext) {
        self.extra("context.sequence_number", cbor_int(c.sequence_number));
        if let Some(e) = c.extended_flags {
            self.extra("context.extended_flags", cbor_int(e));
        }
        if let Some(carb) = &c.carbohydrate {
            self.extra("context.carbohydrate_id", cbor_int(carb.id));
            self.extra("context.carbohydrate_kg", cbor_sfloat(carb.kg));
        }
        if let Some(m) = c.meal {
            self.extra("context.meal", cbor_int(m));
        }
        if let Some(th) = &c.tester_health {
            self.extra("context.tester", cbor_int(th.tester));
            self.extra("context.health", cbor_int(th.health));
        }
        if let Some(e) = &c.exercise {
            self.extra("context.exercise_duration_s", cbor_int(e.duration_s));
            self.extra("context.exercise_intensity_pct", cbor_int(e.intensity_pct));
        }
        if let Some(m) = &c.medication {
            self.extra("context.medication_id", cbor_int(m.id));
            self.extra(
                "context.medication_unit",
                Cbor::Text(
                    match m.unit {
                        MedicationUnit::Kilograms => "kg",
                        MedicationUnit::Litres => "L",
                    }
                    .into(),
                ),
            );
            self.extra("context.medication", cbor_sfloat(m.amount));
        }
        if let Some(h) = c.hba1c {
            self.extra("context.hba1c_pct", cbor_sfloat(h));
        }
    }
}

impl HeartRateMeasurement {
    /// HEART_RATE: one slot, bpm × 1. Extras: sensor contact, energy
    /// expended, RR intervals (1/1024 s).
    pub fn to_reading(&self) -> Result<ReadingSlots, NoReading> {
        let mut r = ReadingSlots::new(DataType::HeartRate);
        r.slots.push(to_slot(
            "heart rate",
            DataType::HeartRate,
            0,
            Exact::int(i128::from(self.heart_rate.bpm())),
        )?);
        r.extra(
            "sensor_contact",
            Cbor::Text(
                match self.sensor_contact {
                    SensorContact::NotSupported => "not_supported",
                    SensorContact::NotDetected => "not_detected",
                    SensorContact::Detected => "detected",
                }
                .into(),
            ),
        );
        if let Some(e) = self.energy_expended_kj {
            r.extra("energy_expended_kj", cbor_int(e));
        }
        if !self.rr_intervals_1024.is_empty() {
            r.extra(
                "rr_intervals_1024",
                Cbor::Array(
                    self.rr_intervals_1024
                        .iter()
                        .map(|v| cbor_int(*v))
                        .collect(),
                ),
            );
        }
        Ok(r)
    }
}

impl BloodPressureMeasurement {
    /// BLOOD_PRESSURE: systolic, diastolic, MAP (mm\[Hg\] × 10, converted
    /// from kPa if needed) and pulse (bpm × 1). All four must be numbers.
    pub fn to_reading(&self) -> Result<ReadingSlots, NoReading> {
        let t = DataType::BloodPressure;
        let mut r = ReadingSlots::new(t);
        let pressures = [
            ("systolic", self.systolic),
            ("diastolic", self.diastolic),
            ("mean arterial pressure", self.mean_arterial_pressure),
        ];
        for (i, (field, v)) in pressures.into_iter().enumerate() {
            let mut e = sfloat_exact(field, v)?;
            if self.unit == PressureUnit::KPa {
                e = kpa_to_mmhg(e).ok_or_else(|| overflow(field))?;
            }
            r.slots.push(to_slot(field, t, i, e)?);
        }
        let pulse = self.pulse_rate.ok_or(NoReading::Missing {
            field: "pulse rate",
        })?;
        r.slots.push(to_slot(
            "pulse rate",
            t,
            3,
            sfloat_exact("pulse rate", pulse)?,
        )?);
        if self.unit == PressureUnit::KPa {
            r.original_unit = Some("kPa".into());
        }
        r.device_time(self.timestamp);
        if let Some(u) = self.user_id {
            r.extra("user_id", cbor_int(u));
        }
        if let Some(s) = self.measurement_status {
            r.extra("measurement_status", cbor_int(s));
        }
        Ok(r)
    }
}

impl TemperatureMeasurement {
    /// BODY_TEMPERATURE: Cel × 100 (from °F: (°F − 32) × 5/9).
    pub fn to_reading(&self) -> Result<ReadingSlots, NoReading> {
        let t = DataType::BodyTemperature;
        let mut r = ReadingSlots::new(t);
        let mut e = float_exact("temperature", self.temperature)?;
        if self.unit == TemperatureUnit::Fahrenheit {
            e = e
                .sub_int(32)
                .and_then(|v| v.mul(5, 9))
                .ok_or_else(|| overflow("temperature"))?;
            r.original_unit = Some("[degF]".into());
        }
        r.slots.push(to_slot("temperature", t, 0, e)?);
        r.device_time(self.timestamp);
        if let Some(tt) = self.temperature_type {
            r.extra("temperature_type", cbor_int(tt.0));
        }
        Ok(r)
    }
}

impl GlucoseMeasurement {
    /// GLUCOSE: mg/dL × 10 (from kg/L × 100 000 or mol/L × 18 015.6).
    /// `recorded_at` is base time + time offset.
    pub fn to_reading(&self) -> Result<ReadingSlots, NoReading> {
        let t = DataType::Glucose;
        let mut r = ReadingSlots::new(t);
        let c = self.concentration.ok_or(NoReading::Missing {
            field: "glucose concentration",
        })?;
        let e = sfloat_exact("glucose concentration", c.value)?;
        let mg_dl = match c.unit {
            GlucoseUnit::KgPerL => e.mul(100_000, 1),
            GlucoseUnit::MolPerL => e.mul(180_156, 10),
        }
        .ok_or_else(|| overflow("glucose concentration"))?;
        r.slots.push(to_slot("glucose concentration", t, 0, mg_dl)?);
        r.original_unit = Some(c.unit.as_str().into());
        match self.user_facing_time() {
            Some(ft) => r.recorded_at = Some(ft),
            None => r.extra("device_time_raw", Cbor::Text(self.base_time.to_string())),
        }
        r.extra("sequence_number", cbor_int(self.sequence_number));
        if let Some(o) = self.time_offset_min {
            r.extra("time_offset_min", cbor_int(o));
        }
        r.extra("sample_type", cbor_int(c.sample_type));
        r.extra("sample_location", cbor_int(c.sample_location));
        if let Some(s) = self.sensor_status {
            r.extra("sensor_status_annunciation", cbor_int(s));
        }
        r.extra("context_follows", Cbor::Bool(self.context_follows));
        Ok(r)
    }
}

fn spo2_slots(r: &mut ReadingSlots, spo2: SFloat, pulse: SFloat) -> Result<(), NoReading> {
    r.slots.push(to_slot(
        "SpO2",
        DataType::Spo2,
        0,
        sfloat_exact("SpO2", spo2)?,
    )?);
    r.slots.push(to_slot(
        "pulse rate",
        DataType::Spo2,
        1,
        sfloat_exact("pulse rate", pulse)?,
    )?);
    Ok(())
}

fn plx_status_extras(r: &mut ReadingSlots, ms: Option<u16>, ds: Option<u32>, pai: Option<SFloat>) {
    if let Some(s) = ms {
        r.extra("measurement_status", cbor_int(s));
    }
    if let Some(s) = ds {
        r.extra("device_and_sensor_status", cbor_int(s));
    }
    if let Some(p) = pai {
        r.extra("pulse_amplitude_index_pct", cbor_sfloat(p));
    }
}

impl PlxSpotCheck {
    /// SPO2: % × 10, pulse bpm × 1. The timestamp is not used when the
    /// device says its clock is not set.
    pub fn to_reading(&self) -> Result<ReadingSlots, NoReading> {
        let mut r = ReadingSlots::new(DataType::Spo2);
        spo2_slots(&mut r, self.spo2, self.pulse_rate)?;
        r.extra("plx_measurement", Cbor::Text("spot_check".into()));
        if self.device_clock_not_set {
            r.extra("device_clock_not_set", Cbor::Bool(true));
            if let Some(t) = self.timestamp {
                r.extra("device_time_raw", Cbor::Text(t.to_string()));
            }
        } else {
            r.device_time(self.timestamp);
        }
        plx_status_extras(
            &mut r,
            self.measurement_status,
            self.device_and_sensor_status,
            self.pulse_amplitude_index,
        );
        Ok(r)
    }
}

impl PlxContinuous {
    /// SPO2 from the SpO2PR-Normal pair; fast and slow pairs go to extras.
    pub fn to_reading(&self) -> Result<ReadingSlots, NoReading> {
        let mut r = ReadingSlots::new(DataType::Spo2);
        spo2_slots(&mut r, self.normal.spo2, self.normal.pulse_rate)?;
        r.extra("plx_measurement", Cbor::Text("continuous".into()));
        for (name, p) in [("fast", self.fast), ("slow", self.slow)] {
            if let Some(p) = p {
                r.extra(&format!("spo2_{name}_pct"), cbor_sfloat(p.spo2));
                r.extra(&format!("pulse_rate_{name}_bpm"), cbor_sfloat(p.pulse_rate));
            }
        }
        plx_status_extras(
            &mut r,
            self.measurement_status,
            self.device_and_sensor_status,
            self.pulse_amplitude_index,
        );
        Ok(r)
    }
}

impl WeightMeasurement {
    /// BODY_WEIGHT: kg × 1000 (SI raw × 0.005 kg; imperial raw × 0.01 lb ×
    /// 0.45359237 kg/lb). Extras: user id, BMI × 10 and height raw with its unit.
    pub fn to_reading(&self) -> Result<ReadingSlots, NoReading> {
        if self.is_unsuccessful() {
            return Err(NoReading::MeasurementUnsuccessful);
        }
        let t = DataType::BodyWeight;
        let mut r = ReadingSlots::new(t);
        let raw = i128::from(self.weight_raw);
        let kg = match self.unit {
            WeightUnit::Si => Exact {
                num: raw * 5,
                den: 1000,
            },
            WeightUnit::Imperial => {
                r.original_unit = Some("[lb_av]".into());
                Exact {
                    num: raw * 45_359_237,
                    den: 10_000_000_000,
                }
            }
        };
        r.slots.push(to_slot("weight", t, 0, kg.reduced())?);
        r.device_time(self.timestamp);
        if let Some(u) = self.user_id {
            r.extra("user_id", cbor_int(u));
        }
        if let Some(b) = &self.bmi_height {
            r.extra("bmi_x10", cbor_int(b.bmi_raw));
            match self.unit {
                WeightUnit::Si => r.extra("height_mm", cbor_int(b.height_raw)),
                WeightUnit::Imperial => r.extra("height_in_x10", cbor_int(b.height_raw)),
            }
        }
        Ok(r)
    }
}

/// A Weight or Body Composition mass in kg, exactly: SI raw × 0.005 kg,
/// imperial raw × 0.01 lb × 0.45359237 kg/lb.
fn mass_kg(unit: WeightUnit, raw: u16) -> Exact {
    let raw = i128::from(raw);
    match unit {
        WeightUnit::Si => Exact {
            num: raw * 5,
            den: 1000,
        },
        WeightUnit::Imperial => Exact {
            num: raw * 45_359_237,
            den: 10_000_000_000,
        },
    }
    .reduced()
}

/// `v` × 1000, rounded half away from zero (kg → g, m → mm).
fn thousandths(field: &'static str, v: Exact) -> Result<i64, NoReading> {
    v.mul(1000, 1)
        .and_then(Exact::round_half_away)
        .and_then(|r| i64::try_from(r).ok())
        .ok_or_else(|| overflow(field))
}

impl BodyCompositionMeasurement {
    /// BODY_COMPOSITION: body fat % × 10, muscle % × 10, muscle mass and
    /// body water mass kg × 1000 (masses converted as weight is; an optional
    /// field the scale did not send is 0). Extras (sealed, not proven, shown
    /// by the API from the data type's `shown_extras`): basal metabolism kJ,
    /// fat-free and soft lean mass in g, impedance Ω × 10, weight in g,
    /// height in mm (imperial 0.1 in × 2.54 mm, rounded); user id; whether it
    /// came in two packets.
    pub fn to_reading(&self) -> Result<ReadingSlots, NoReading> {
        if self.is_unsuccessful() {
            return Err(NoReading::MeasurementUnsuccessful);
        }
        let t = DataType::BodyComposition;
        let mut r = ReadingSlots::new(t);
        if self.unit == WeightUnit::Imperial {
            r.original_unit = Some("[lb_av]".into());
        }
        let tenth = |raw: u16| Exact {
            num: i128::from(raw),
            den: 10,
        };
        let mass = |raw: Option<u16>| raw.map_or(Exact::int(0), |m| mass_kg(self.unit, m));
        r.slots.push(to_slot(
            "body fat percentage",
            t,
            0,
            tenth(self.body_fat_raw),
        )?);
        r.slots.push(to_slot(
            "muscle percentage",
            t,
            1,
            tenth(self.muscle_pct_raw.unwrap_or(0)),
        )?);
        r.slots
            .push(to_slot("muscle mass", t, 2, mass(self.muscle_mass_raw))?);
        r.slots.push(to_slot(
            "body water mass",
            t,
            3,
            mass(self.body_water_mass_raw),
        )?);
        r.device_time(self.timestamp);
        if let Some(u) = self.user_id {
            r.extra("user_id", cbor_int(u));
        }
        if let Some(b) = self.basal_metabolism_kj {
            r.extra("basal_metabolism_kj", cbor_int(b));
        }
        for (key, raw) in [
            ("fat_free_mass_g", self.fat_free_mass_raw),
            ("soft_lean_mass_g", self.soft_lean_mass_raw),
            ("weight_g", self.weight_raw),
        ] {
            if let Some(m) = raw {
                r.extra(key, cbor_int(thousandths(key, mass_kg(self.unit, m))?));
            }
        }
        if let Some(z) = self.impedance_raw {
            r.extra("impedance_ohm_x10", cbor_int(z));
        }
        if let Some(h) = self.height_raw {
            let m = match self.unit {
                WeightUnit::Si => Exact {
                    num: i128::from(h),
                    den: 1000,
                },
                // 0.1 in = 2.54 mm
                WeightUnit::Imperial => Exact {
                    num: i128::from(h) * 254,
                    den: 100_000,
                },
            };
            r.extra("height_mm", cbor_int(thousandths("height", m)?));
        }
        if self.multiple_packet {
            r.extra("multiple_packet", Cbor::Bool(true));
        }
        Ok(r)
    }
}

impl Decoded {
    /// The reading this value makes, if it is a final measurement
    /// (intermediate cuff pressure and temperature are not readings).
    pub fn to_reading(&self) -> Result<ReadingSlots, NoReading> {
        match self {
            Decoded::HeartRateMeasurement(v) => v.to_reading(),
            Decoded::BloodPressureMeasurement(v) => v.to_reading(),
            Decoded::TemperatureMeasurement(v) => v.to_reading(),
            Decoded::GlucoseMeasurement(v) => v.to_reading(),
            Decoded::PlxSpotCheck(v) => v.to_reading(),
            Decoded::PlxContinuous(v) => v.to_reading(),
            Decoded::WeightMeasurement(v) => v.to_reading(),
            Decoded::BodyCompositionMeasurement(v) => v.to_reading(),
            other => Err(NoReading::NotAMeasurement(other.characteristic().name())),
        }
    }
}

/// Which characteristic makes readings of `data_type` (the inverse of
/// [`Decoded::to_reading`]): the data type's `gatt_measurements`.
pub fn measurement_characteristics(data_type: DataType) -> impl Iterator<Item = Characteristic> {
    data_type
        .spec()
        .gatt_measurements
        .iter()
        .filter_map(|u| Characteristic::from_uuid16(*u))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gatt::glucose::GlucoseConcentration;

    fn sf(m: i32, e: i8) -> SFloat {
        SFloat::new(m, e).expect("valid sfloat")
    }

    #[test]
    fn rounding_is_half_away_from_zero() {
        let r = |n, d| Exact { num: n, den: d }.round_half_away();
        assert_eq!(r(5, 2), Some(3));
        assert_eq!(r(-5, 2), Some(-3));
        assert_eq!(r(7, 3), Some(2));
        assert_eq!(r(8, 3), Some(3));
        assert_eq!(r(-7, 3), Some(-2));
    }

    fn bp(
        unit: PressureUnit,
        s: SFloat,
        d: SFloat,
        m: SFloat,
        p: Option<SFloat>,
    ) -> BloodPressureMeasurement {
        BloodPressureMeasurement {
            unit,
            systolic: s,
            diastolic: d,
            mean_arterial_pressure: m,
            timestamp: None,
            pulse_rate: p,
            user_id: None,
            measurement_status: None,
        }
    }

    #[test]
    fn blood_pressure_mmhg_and_kpa() {
        let r = bp(
            PressureUnit::MmHg,
            sf(1205, -1),
            sf(80, 0),
            sf(93, 0),
            Some(sf(72, 0)),
        )
        .to_reading()
        .expect("reading");
        assert_eq!(r.slots, vec![1205, 800, 930, 72]);
        assert_eq!(r.original_unit, None);
        // 16.0 kPa = 120.0099 mmHg → 1200; 10.7 kPa = 80.2566 → 803; 12.5 kPa = 93.7577 → 938
        let r = bp(
            PressureUnit::KPa,
            sf(160, -1),
            sf(107, -1),
            sf(125, -1),
            Some(sf(60, 0)),
        )
        .to_reading()
        .expect("reading");
        assert_eq!(r.slots, vec![1200, 803, 938, 60]);
        assert_eq!(r.original_unit.as_deref(), Some("kPa"));
    }

    #[test]
    fn specials_and_missing_make_no_reading() {
        let e = bp(
            PressureUnit::MmHg,
            SFloat::NRES,
            sf(80, 0),
            sf(93, 0),
            Some(sf(72, 0)),
        )
        .to_reading();
        assert_eq!(
            e,
            Err(NoReading::SpecialValue {
                field: "systolic",
                special: Special::NRes
            })
        );
        let e = bp(PressureUnit::MmHg, sf(120, 0), sf(80, 0), sf(93, 0), None).to_reading();
        assert_eq!(
            e,
            Err(NoReading::Missing {
                field: "pulse rate"
            })
        );
        let e = bp(
            PressureUnit::MmHg,
            sf(-120, 0),
            sf(80, 0),
            sf(93, 0),
            Some(sf(72, 0)),
        )
        .to_reading();
        assert!(matches!(
            e,
            Err(NoReading::NotRepresentable {
                field: "systolic",
                ..
            })
        ));
        let w = WeightMeasurement {
            unit: WeightUnit::Si,
            weight_raw: 0xFFFF,
            timestamp: None,
            user_id: None,
            bmi_height: None,
        };
        assert_eq!(w.to_reading(), Err(NoReading::MeasurementUnsuccessful));
        let t = TemperatureMeasurement {
            unit: TemperatureUnit::Celsius,
            temperature: Float::NAN,
            timestamp: None,
            temperature_type: None,
        };
        assert!(matches!(
            t.to_reading(),
            Err(NoReading::SpecialValue {
                special: Special::NaN,
                ..
            })
        ));
    }

    #[test]
    fn fahrenheit_to_celsius() {
        let t = |m, e| TemperatureMeasurement {
            unit: TemperatureUnit::Fahrenheit,
            temperature: Float::new(m, e).expect("float"),
            timestamp: Some(DateTime::new(2024, 1, 2, 3, 4, 5)),
            temperature_type: None,
        };
        // 98.6 °F = 37.0 °C exactly
        let r = t(986, -1).to_reading().expect("reading");
        assert_eq!(r.slots, vec![3700]);
        assert_eq!(r.original_unit.as_deref(), Some("[degF]"));
        assert_eq!(r.recorded_at, Some(DateTime::new(2024, 1, 2, 3, 4, 5)));
        // 100.0 °F = 37.777… → 3778
        assert_eq!(t(1000, -1).to_reading().map(|r| r.slots), Ok(vec![3778]));
        // 99.5 °F = 37.5 °C
        assert_eq!(t(995, -1).to_reading().map(|r| r.slots), Ok(vec![3750]));
        // 0 °F = −17.78 °C: not an unsigned slot
        assert!(matches!(
            t(0, 0).to_reading(),
            Err(NoReading::NotRepresentable { .. })
        ));
        // absurd exponent: not representable, not a panic
        assert!(matches!(
            t(1, 127).to_reading(),
            Err(NoReading::NotRepresentable { .. })
        ));
        assert!(matches!(
            t(1, -128).to_reading(),
            Err(NoReading::NotRepresentable { .. })
        ));
    }

    #[test]
    fn glucose_units() {
        let g = |unit, v| GlucoseMeasurement {
            sequence_number: 7,
            base_time: DateTime::new(2019, 2, 27, 11, 10, 30),
            time_offset_min: Some(-5),
            concentration: Some(GlucoseConcentration {
                unit,
                value: v,
                sample_type: 1,
                sample_location: 1,
            }),
            sensor_status: None,
            context_follows: false,
        };
        // 5.5 mmol/L = 0.0055 mol/L × 18015.6 = 99.0858 mg/dL → 990.858 → 991
        let r = g(GlucoseUnit::MolPerL, sf(55, -4))
            .to_reading()
            .expect("reading");
        assert_eq!(r.slots, vec![991]);
        assert_eq!(r.original_unit.as_deref(), Some("mol/L"));
        assert_eq!(r.recorded_at, Some(DateTime::new(2019, 2, 27, 11, 5, 30)));
        // 95 mg/dL = 0.00095 kg/L (95e-5) → 950
        assert_eq!(
            g(GlucoseUnit::KgPerL, sf(95, -5))
                .to_reading()
                .map(|r| r.slots),
            Ok(vec![950])
        );
        let mut no = g(GlucoseUnit::KgPerL, sf(95, -5));
        no.concentration = None;
        assert_eq!(
            no.to_reading(),
            Err(NoReading::Missing {
                field: "glucose concentration"
            })
        );
    }

    #[test]
    fn weight_units() {
        let w = |unit, raw| WeightMeasurement {
            unit,
            weight_raw: raw,
            timestamp: Some(DateTime::new(0, 1, 1, 0, 0, 0)),
            user_id: None,
            bmi_height: None,
        };
        let r = w(WeightUnit::Si, 15000).to_reading().expect("reading");
        assert_eq!(r.slots, vec![75_000]);
        assert_eq!(r.recorded_at, None);
        assert!(r.extras.contains_key("device_time_raw"));
        // 165.35 lb × 0.45359237 = 75.00149… kg → 75001 g
        let r = w(WeightUnit::Imperial, 16535)
            .to_reading()
            .expect("reading");
        assert_eq!(r.slots, vec![75_001]);
        assert_eq!(r.original_unit.as_deref(), Some("[lb_av]"));
    }

    #[test]
    fn spo2_and_heart_rate() {
        let p = PlxSpotCheck {
            spo2: sf(975, -1),
            pulse_rate: sf(725, -1),
            timestamp: None,
            measurement_status: None,
            device_and_sensor_status: None,
            pulse_amplitude_index: Some(SFloat::NAN),
            device_clock_not_set: false,
        };
        let r = p.to_reading().expect("reading");
        assert_eq!(r.slots, vec![975, 73]); // 72.5 → 73 (half away from zero)
        assert_eq!(
            r.extras.get("pulse_amplitude_index_pct"),
            Some(&Cbor::Text("NaN".into()))
        );
        let h = HeartRateMeasurement {
            heart_rate: crate::gatt::HeartRate::U16(300),
            sensor_contact: SensorContact::Detected,
            energy_expended_kj: None,
            rr_intervals_1024: vec![800, 810],
        };
        let r = h.to_reading().expect("reading");
        assert_eq!(r.slots, vec![300]);
        assert_eq!(
            r.extras.get("rr_intervals_1024"),
            Some(&Cbor::Array(vec![cbor_int(800u16), cbor_int(810u16)]))
        );
    }

    #[test]
    fn body_composition_slots_and_extras() {
        let mut m = BodyCompositionMeasurement::new(WeightUnit::Si, 215);
        m.muscle_pct_raw = Some(412);
        m.muscle_mass_raw = Some(6000); // 30 kg
        m.body_water_mass_raw = Some(8001); // 40.005 kg
        m.fat_free_mass_raw = Some(11800);
        m.soft_lean_mass_raw = Some(11000);
        m.basal_metabolism_kj = Some(7100);
        m.impedance_raw = Some(5123);
        m.weight_raw = Some(15000);
        m.height_raw = Some(1750);
        m.user_id = Some(3);
        let r = m.to_reading().expect("reading");
        assert_eq!(r.data_type, DataType::BodyComposition);
        assert_eq!(r.slots, vec![215, 412, 30_000, 40_005]);
        let int = |k: &str| r.extras.get(k).and_then(|v| v.as_integer()).map(i128::from);
        assert_eq!(int("fat_free_mass_g"), Some(59_000));
        assert_eq!(int("soft_lean_mass_g"), Some(55_000));
        assert_eq!(int("weight_g"), Some(75_000));
        assert_eq!(int("height_mm"), Some(1750));
        assert_eq!(int("basal_metabolism_kj"), Some(7100));
        assert_eq!(int("impedance_ohm_x10"), Some(5123));
        assert_eq!(int("user_id"), Some(3));
        // Every shown extra is one the mapping writes.
        for e in DataType::BodyComposition.spec().shown_extras {
            assert!(r.extras.contains_key(e.key), "{}", e.key);
        }
        // Absent optional fields are 0; imperial masses are converted.
        let mut i = BodyCompositionMeasurement::new(WeightUnit::Imperial, 300);
        i.muscle_mass_raw = Some(6614); // 66.14 lb = 30.0005994 kg
        i.height_raw = Some(689); // 68.9 in = 1750.06 mm
        let r = i.to_reading().expect("reading");
        assert_eq!(r.slots, vec![300, 0, 30_001, 0]);
        assert_eq!(r.original_unit.as_deref(), Some("[lb_av]"));
        assert_eq!(
            r.extras
                .get("height_mm")
                .and_then(|v| v.as_integer())
                .map(i128::from),
            Some(1750)
        );
        let failed = BodyCompositionMeasurement::new(WeightUnit::Si, 0xFFFF);
        assert_eq!(failed.to_reading(), Err(NoReading::MeasurementUnsuccessful));
    }
}
