//! Measurement → characteristic bytes, through `hailan_proto::gatt` (the one
//! encoder per format, DESIGN §2). This module only maps the simulator's
//! typed values onto proto's characteristic structs, and breaks bytes on
//! purpose for the malformed-notification fault.

use crate::model::{DateTime, Measurement, PressureUnit, TempUnit, WeightUnit};
use hailan_proto::gatt::{
    self, BatteryLevel, BloodPressureMeasurement, Float, GlucoseConcentration, GlucoseMeasurement,
    GlucoseUnit, HeartRate, HeartRateMeasurement, IntermediateCuffPressure, PlxContinuous,
    PlxSpotCheck, SFloat, SensorContact, SpO2Pr, TemperatureMeasurement, TemperatureType,
    TemperatureUnit, WeightMeasurement,
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
        Measurement::Battery { percent } => BatteryLevel::new((*percent).min(100))
            .map(|b| b.encode())
            .unwrap_or_else(|| vec![(*percent).min(100)]),
    }
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
            ];
            ms.extend(ms.clone().into_iter().map(Physiology::out_of_range));
            for m in ms {
                let got = slots(&m);
                let want = m.slots();
                assert_eq!(got.len(), want.len(), "{m:?}");
                let tol: u64 = match m {
                    Measurement::BloodPressure { .. } => 4, // kPa: ≤ 0.4 mmHg
                    Measurement::Temperature { .. } => 1,   // °F: ≤ 0.01 °C
                    Measurement::Weight { .. } => 5,        // lb: ≤ 5 g
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
}
