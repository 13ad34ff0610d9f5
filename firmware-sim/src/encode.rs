//! Measurement → characteristic bytes, through `hailan_proto::gatt` (the one
//! encoder per format, DESIGN §2). This module only maps the simulator's
//! typed values onto proto's characteristic structs, and breaks bytes on
//! purpose for the malformed-notification fault.

use crate::model::{DateTime, Measurement, PressureUnit, TempUnit, WeightUnit};
use hailan_proto::gatt::{
    self, BatteryLevel, BloodPressureMeasurement, BodyCompositionMeasurement, Float,
    GlucoseConcentration, GlucoseMeasurement, GlucoseUnit, HeartRate, HeartRateMeasurement,
    IntermediateCuffPressure, PlxContinuous, PlxSpotCheck, SFloat, SensorContact, SpO2Pr,
    TemperatureMeasurement, TemperatureType, TemperatureUnit, WeightMeasurement,
};

/// 1 mmHg in kPa (the conventional millimetre of mercury, as proto converts).
const KPA_PER_MMHG: f64 = 0.133_322_387_415;

/// SFLOAT of `value × 10^exponent`, giving up decimals until the mantissa
/// fits in 12 bits (as firmware does for large values).
pub fn sfloat_fit(mut value: i64, mut exponent: i8) -> SFloat {
    loop {
        if let Ok(v) = i32::try_from(value)
            && let Ok(s) = SFloat::new(v, exponent)
        {
            return s;
        }
        if exponent >= SFloat::EXPONENT_MAX {
            return SFloat::NRES;
        }
        value = (value as f64 / 10.0).round() as i64;
        exponent += 1;
    }
}

fn float_fit(mut value: i64, mut exponent: i8) -> Float {
    loop {
        if let Ok(v) = i32::try_from(value)
            && let Ok(f) = Float::new(v, exponent)
        {
            return f;
        }
        if exponent == Float::EXPONENT_MAX {
            return Float::NRES;
        }
        value = (value as f64 / 10.0).round() as i64;
        exponent += 1;
    }
}

/// The simulator's date-time as proto's GATT Date Time.
pub fn gatt_time(t: &DateTime) -> gatt::DateTime {
    gatt::DateTime {
        year: t.year,
        month: t.month,
        day: t.day,
        hours: t.hour,
        minutes: t.minute,
        seconds: t.second,
    }
}

fn pressure(mmhg_x10: u32, unit: PressureUnit) -> SFloat {
    match unit {
        PressureUnit::MmHg => sfloat_fit(i64::from(mmhg_x10), -1),
        // kPa with 2 decimals where it fits (1 above 20.47 kPa)
        PressureUnit::KPa => sfloat_fit(
            (f64::from(mmhg_x10) * KPA_PER_MMHG * 10.0).round() as i64,
            -2,
        ),
    }
}

fn pressure_unit(u: PressureUnit) -> gatt::PressureUnit {
    match u {
        PressureUnit::MmHg => gatt::PressureUnit::MmHg,
        PressureUnit::KPa => gatt::PressureUnit::KPa,
    }
}

/// Encode one measurement as the bytes of its characteristic.
pub fn encode(m: &Measurement) -> Vec<u8> {
    match m {
        Measurement::HeartRate {
            bpm,
            rr_1024,
            contact,
        } => HeartRateMeasurement {
            heart_rate: HeartRate::from_bpm(*bpm),
            sensor_contact: if *contact {
                SensorContact::Detected
            } else {
                SensorContact::NotDetected
            },
            energy_expended_kj: None,
            rr_intervals_1024: rr_1024.clone(),
        }
        .encode(),
        Measurement::BloodPressure {
            systolic_x10,
            diastolic_x10,
            map_x10,
            pulse,
            user,
            unit,
            time: t,
        } => BloodPressureMeasurement {
            unit: pressure_unit(*unit),
            systolic: pressure(*systolic_x10, *unit),
            diastolic: pressure(*diastolic_x10, *unit),
            mean_arterial_pressure: pressure(*map_x10, *unit),
            timestamp: Some(gatt_time(t)),
            pulse_rate: Some(sfloat_fit(i64::from(*pulse), 0)),
            user_id: Some(*user),
            measurement_status: None,
        }
        .encode(),
        Measurement::CuffPressure { pressure_x10, unit } => {
            IntermediateCuffPressure::new(pressure_unit(*unit), pressure(*pressure_x10, *unit))
                .encode()
        }
        Measurement::SpO2Continuous { spo2_x10, pulse } => PlxContinuous {
            normal: SpO2Pr {
                spo2: sfloat_fit(i64::from(*spo2_x10), -1),
                pulse_rate: sfloat_fit(i64::from(*pulse), 0),
            },
            fast: None,
            slow: None,
            measurement_status: None,
            device_and_sensor_status: None,
            pulse_amplitude_index: None,
        }
        .encode(),
        Measurement::SpO2Spot {
            spo2_x10,
            pulse,
            time: t,
        } => PlxSpotCheck {
            spo2: sfloat_fit(i64::from(*spo2_x10), -1),
            pulse_rate: sfloat_fit(i64::from(*pulse), 0),
            timestamp: Some(gatt_time(t)),
            measurement_status: None,
            device_and_sensor_status: None,
            pulse_amplitude_index: None,
            device_clock_not_set: false,
        }
        .encode(),
        Measurement::Temperature { unit, time: t, .. } => TemperatureMeasurement {
            unit: match unit {
                TempUnit::Celsius => TemperatureUnit::Celsius,
                TempUnit::Fahrenheit => TemperatureUnit::Fahrenheit,
            },
            temperature: float_fit(i64::from(m.wire_temperature_x100().unwrap_or(0)), -2),
            timestamp: Some(gatt_time(t)),
            temperature_type: Some(TemperatureType(2)), // body (general)
        }
        .encode(),
        Measurement::Glucose {
            seq,
            mg_dl_x10,
            time: t,
        } => GlucoseMeasurement {
            sequence_number: *seq,
            base_time: gatt_time(t),
            time_offset_min: None,
            // 1 mg/dL = 1e-5 kg/L: whole mg/dL as the mantissa
            concentration: Some(GlucoseConcentration {
                unit: GlucoseUnit::KgPerL,
                value: sfloat_fit(i64::from(*mg_dl_x10 / 10), -5),
                sample_type: 1,     // capillary whole blood
                sample_location: 1, // finger
            }),
            sensor_status: None,
            context_follows: false,
        }
        .encode(),
        Measurement::Weight {
            unit,
            user,
            time: t,
            ..
        } => WeightMeasurement {
            unit: match unit {
                WeightUnit::Kilogram => gatt::WeightUnit::Si,
                WeightUnit::Pound => gatt::WeightUnit::Imperial,
            },
            weight_raw: m.wire_weight().unwrap_or(0),
            timestamp: Some(gatt_time(t)),
            user_id: Some(*user),
            bmi_height: None,
        }
        .encode(),
        Measurement::BodyComposition { .. } => {
            body_composition(m).map(|b| b.encode()).unwrap_or_default()
        }
        Measurement::Battery { percent } => BatteryLevel::new((*percent).min(100))
            .map(|b| b.encode())
            .unwrap_or_else(|| vec![(*percent).min(100)]),
    }
}

/// Grams in the wire unit of a Weight or Body Composition mass (5 g, or
/// 0.01 lb rounded).
fn wire_mass(unit: WeightUnit, grams: u32) -> u16 {
    match unit {
        WeightUnit::Kilogram => (grams / 5).min(u32::from(u16::MAX)) as u16,
        WeightUnit::Pound => ((f64::from(grams)) / 453.592_37 * 100.0)
            .round()
            .min(f64::from(u16::MAX)) as u16,
    }
}

/// The simulator's body composition as proto's 0x2A9C value, every field present.
fn body_composition(m: &Measurement) -> Option<BodyCompositionMeasurement> {
    let Measurement::BodyComposition {
        body_fat_x10,
        muscle_pct_x10,
        muscle_mass_g,
        fat_free_mass_g,
        soft_lean_mass_g,
        body_water_mass_g,
        basal_metabolism_kj,
        impedance_x10,
        weight_g,
        height_mm,
        unit,
        user,
        time,
    } = m
    else {
        return None;
    };
    let u16_of = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
    let mut b = BodyCompositionMeasurement::new(
        match unit {
            WeightUnit::Kilogram => gatt::WeightUnit::Si,
            WeightUnit::Pound => gatt::WeightUnit::Imperial,
        },
        u16_of(*body_fat_x10),
    );
    b.timestamp = Some(gatt_time(time));
    b.user_id = Some(*user);
    b.basal_metabolism_kj = Some(u16_of(*basal_metabolism_kj));
    b.muscle_pct_raw = Some(u16_of(*muscle_pct_x10));
    b.muscle_mass_raw = Some(wire_mass(*unit, *muscle_mass_g));
    b.fat_free_mass_raw = Some(wire_mass(*unit, *fat_free_mass_g));
    b.soft_lean_mass_raw = Some(wire_mass(*unit, *soft_lean_mass_g));
    b.body_water_mass_raw = Some(wire_mass(*unit, *body_water_mass_g));
    b.impedance_raw = Some(u16_of(*impedance_x10));
    b.weight_raw = Some(wire_mass(*unit, *weight_g));
    b.height_raw = Some(match unit {
        WeightUnit::Kilogram => u16_of(*height_mm),
        // 0.1 in = 2.54 mm
        WeightUnit::Pound => (f64::from(*height_mm) / 2.54)
            .round()
            .min(f64::from(u16::MAX)) as u16,
    });
    Some(b)
}

/// The ATT values that carry `m`, in order. One, except a body composition
/// with every field (32 bytes): at the default ATT MTU (23) an indication
/// carries 20, so the scale sends the two packets of a multiple-packet
/// measurement (BCS §3.2), each with its flags and body fat: time stamp,
/// user, basal metabolism, muscle % and muscle mass in the first (18
/// bytes), the masses, impedance, weight and height in the second (16).
pub fn packets(m: &Measurement) -> Vec<Vec<u8>> {
    let Some(full) = body_composition(m) else {
        return vec![encode(m)];
    };
    let mut first = BodyCompositionMeasurement::new(full.unit, full.body_fat_raw);
    first.multiple_packet = true;
    first.timestamp = full.timestamp;
    first.user_id = full.user_id;
    first.basal_metabolism_kj = full.basal_metabolism_kj;
    first.muscle_pct_raw = full.muscle_pct_raw;
    first.muscle_mass_raw = full.muscle_mass_raw;
    let mut second = full;
    second.multiple_packet = true;
    second.timestamp = None;
    second.user_id = None;
    second.basal_metabolism_kj = None;
    second.muscle_pct_raw = None;
    second.muscle_mass_raw = None;
    vec![first.encode(), second.encode()]
}

/// Make a notification malformed the way broken firmware does: the flags
/// promise fields that are not there (the payload is cut short).
pub fn malform(bytes: &[u8]) -> Vec<u8> {
    match bytes.len() {
        0 | 1 => vec![0xFF],
        n => {
            let mut v = bytes[..n / 2].to_vec();
            v[0] |= 0x1E;
            v
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Physiology;
    use hailan_proto::gatt::{Characteristic, decode};

    fn slots(m: &Measurement) -> Vec<u32> {
        let c = Characteristic::from_uuid16(m.characteristic()).expect("known characteristic");
        let d = decode(c, &encode(m)).expect("proto decodes the simulator's bytes");
        d.to_reading().expect("a reading").slots
    }

    #[test]
    fn sfloat_fit_gives_up_decimals() {
        assert_eq!(sfloat_fit(1205, -1), SFloat::new(1205, -1).expect("fits"));
        assert_eq!(sfloat_fit(3500, -1), SFloat::new(350, 0).expect("fits"));
    }

    /// Every model's bytes decode with proto to the truth's slots (within
    /// the wire resolution for °F, lb and kPa devices).
    #[test]
    fn proto_reads_back_the_truth() {
        for seed in 0..40 {
            let mut p = Physiology::new(seed, seed);
            let (icp, bp) = p.blood_pressure();
            let mut ms = vec![
                p.heart_rate(),
                bp,
                p.spo2_continuous(),
                p.spo2_spot(),
                p.temperature(),
                p.glucose(7, DateTime::now()),
                p.weight(),
                p.body_composition(),
            ];
            ms.extend(ms.clone().into_iter().map(Physiology::out_of_range));
            for m in ms {
                let got = slots(&m);
                let want = m.slots();
                assert_eq!(got.len(), want.len(), "{m:?}");
                let tol: u64 = match m {
                    Measurement::BloodPressure { .. } => 4,   // kPa: ≤ 0.4 mmHg
                    Measurement::Temperature { .. } => 1,     // °F: ≤ 0.01 °C
                    Measurement::Weight { .. } => 5,          // lb: ≤ 5 g
                    Measurement::BodyComposition { .. } => 5, // lb: ≤ 5 g
                    _ => 0,
                };
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        u64::from(*g).abs_diff(*w) <= tol,
                        "{m:?}: {got:?} vs {want:?}"
                    );
                }
            }
            for c in icp {
                let b = encode(&c);
                let d = IntermediateCuffPressure::decode(&b).expect("cuff pressure");
                assert!(d.current_cuff_pressure().to_f64().is_some_and(|v| v > 0.0));
            }
        }
    }

    /// The two packets proto joins are the full measurement, every field
    /// within the wire resolution of the truth, each packet ≤ 20 bytes.
    #[test]
    fn body_composition_goes_in_two_packets() {
        for seed in 0..20 {
            let m = Physiology::new(seed, seed).body_composition();
            let p = packets(&m);
            assert_eq!(p.len(), 2);
            assert!(
                p.iter().all(|b| b.len() <= 20),
                "{:?}",
                p.iter().map(Vec::len).collect::<Vec<_>>()
            );
            let a = BodyCompositionMeasurement::decode(&p[0]).expect("first");
            let b = BodyCompositionMeasurement::decode(&p[1]).expect("second");
            let joined = a.merge(&b).expect("merge");
            let mut whole = BodyCompositionMeasurement::decode(&encode(&m)).expect("whole");
            whole.multiple_packet = true;
            assert_eq!(joined, whole);
            let r = joined.to_reading().expect("reading");
            let Measurement::BodyComposition {
                fat_free_mass_g,
                soft_lean_mass_g,
                weight_g,
                height_mm,
                basal_metabolism_kj,
                impedance_x10,
                ..
            } = m
            else {
                unreachable!("a body composition")
            };
            let int = |k: &str| {
                r.extras
                    .get(k)
                    .and_then(|v| v.as_integer())
                    .map(i128::from)
                    .unwrap_or(-1)
            };
            for (k, want, tol) in [
                ("fat_free_mass_g", fat_free_mass_g, 5),
                ("soft_lean_mass_g", soft_lean_mass_g, 5),
                ("weight_g", weight_g, 5),
                ("height_mm", height_mm, 2),
                ("basal_metabolism_kj", basal_metabolism_kj, 0),
                ("impedance_ohm_x10", impedance_x10, 0),
            ] {
                assert!(
                    int(k).abs_diff(i128::from(want)) <= tol,
                    "{k}: {} vs {want}",
                    int(k)
                );
            }
        }
    }
}
