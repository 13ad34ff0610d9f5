//! Characteristic bytes for the simulator's measurements.
//!
//! TO BE REPLACED by `hailan_proto::gatt` encoders when the GATT issue lands on
//! main: there must be exactly one encoder per format (DESIGN §2). Until then
//! this is the minimal encoding the simulator needs, written from the Bluetooth
//! SIG GATT Specification Supplement; the tests decode with their own reader
//! (`tests/common/decode.rs`) which will likewise switch to proto.

use crate::model::{DateTime, Measurement, PressureUnit, TempUnit, WeightUnit};

/// IEEE-11073 16-bit SFLOAT: 12-bit signed mantissa, 4-bit signed exponent.
pub fn sfloat(mantissa: i16, exponent: i8) -> [u8; 2] {
    let m = (mantissa as u16) & 0x0FFF;
    let e = ((exponent as u8) & 0x0F) as u16;
    ((e << 12) | m).to_le_bytes()
}

/// SFLOAT of `value x 10^exponent`, giving up decimals until the mantissa fits
/// in 12 bits (as firmware does for large values).
pub fn sfloat_fit(mut value: i64, mut exponent: i8) -> [u8; 2] {
    while !(-2046..=2046).contains(&value) && exponent < 7 {
        value = (value as f64 / 10.0).round() as i64;
        exponent += 1;
    }
    sfloat(value.clamp(-2046, 2046) as i16, exponent)
}

/// SFLOAT NaN (used for the unused fields of an intermediate cuff pressure).
pub const SFLOAT_NAN: [u8; 2] = [0xFF, 0x07];

/// IEEE-11073 32-bit FLOAT: 24-bit signed mantissa, 8-bit signed exponent.
pub fn float32(mantissa: i32, exponent: i8) -> [u8; 4] {
    let m = (mantissa as u32) & 0x00FF_FFFF;
    let e = (exponent as u8) as u32;
    ((e << 24) | m).to_le_bytes()
}

/// GATT Date Time (0x2A08): year u16, month, day, hours, minutes, seconds.
pub fn date_time(t: &DateTime) -> [u8; 7] {
    let y = t.year.to_le_bytes();
    [y[0], y[1], t.month, t.day, t.hour, t.minute, t.second]
}

/// Encode one measurement as the bytes of its characteristic.
pub fn encode(m: &Measurement) -> Vec<u8> {
    let mut out = Vec::with_capacity(20);
    match m {
        Measurement::HeartRate {
            bpm,
            rr_1024,
            contact,
        } => {
            // flags: bit0 u16 format, bits1-2 contact (bit2 supported, bit1 detected), bit4 RR present
            let wide = *bpm > 255;
            let mut flags = 0x04u8 | if *contact { 0x02 } else { 0 };
            if wide {
                flags |= 0x01;
            }
            if !rr_1024.is_empty() {
                flags |= 0x10;
            }
            out.push(flags);
            if wide {
                out.extend_from_slice(&bpm.to_le_bytes());
            } else {
                out.push(*bpm as u8);
            }
            for rr in rr_1024 {
                out.extend_from_slice(&rr.to_le_bytes());
            }
        }
        Measurement::BloodPressure {
            systolic_x10,
            diastolic_x10,
            map_x10,
            pulse,
            user,
            unit,
            time,
        } => {
            // flags: bit0 kPa, bit1 time stamp, bit2 pulse rate, bit3 user id
            let kpa = *unit == PressureUnit::KPa;
            out.push(0x02 | 0x04 | 0x08 | u8::from(kpa));
            for v in [systolic_x10, diastolic_x10, map_x10] {
                out.extend_from_slice(&pressure(*v, *unit));
            }
            out.extend_from_slice(&date_time(time));
            out.extend_from_slice(&sfloat_fit(*pulse as i64, 0));
            out.push(*user);
        }
        Measurement::CuffPressure { pressure_x10, unit } => {
            out.push(u8::from(*unit == PressureUnit::KPa));
            out.extend_from_slice(&pressure(*pressure_x10, *unit));
            out.extend_from_slice(&SFLOAT_NAN);
            out.extend_from_slice(&SFLOAT_NAN);
        }
        Measurement::SpO2Continuous { spo2_x10, pulse } => {
            out.push(0x00); // only SpO2PR-Normal
            out.extend_from_slice(&sfloat_fit(*spo2_x10 as i64, -1));
            out.extend_from_slice(&sfloat_fit(*pulse as i64, 0));
        }
        Measurement::SpO2Spot {
            spo2_x10,
            pulse,
            time,
        } => {
            out.push(0x01); // timestamp present
            out.extend_from_slice(&sfloat_fit(*spo2_x10 as i64, -1));
            out.extend_from_slice(&sfloat_fit(*pulse as i64, 0));
            out.extend_from_slice(&date_time(time));
        }
        Measurement::Temperature {
            celsius_x100,
            unit,
            time,
        } => {
            // flags: bit0 Fahrenheit, bit1 time stamp, bit2 temperature type
            let f = *unit == TempUnit::Fahrenheit;
            out.push(0x02 | 0x04 | u8::from(f));
            out.extend_from_slice(&float32(m.wire_temperature_x100().unwrap_or(0), -2));
            out.extend_from_slice(&date_time(time));
            out.push(0x02); // temperature type: body (general)
            let _ = celsius_x100;
        }
        Measurement::Glucose {
            seq,
            mg_dl_x10,
            time,
        } => {
            // flags: bit1 concentration + type/location present, units kg/L (bit2 = 0)
            out.push(0x02);
            out.extend_from_slice(&seq.to_le_bytes());
            out.extend_from_slice(&date_time(time));
            // 1 mg/dL = 1e-5 kg/L: whole mg/dL as mantissa, exponent -5
            out.extend_from_slice(&sfloat_fit((*mg_dl_x10 / 10) as i64, -5));
            out.push(0x11); // type 1 (capillary whole blood), location 1 (finger)
        }
        Measurement::Weight {
            grams,
            unit,
            user,
            time,
        } => {
            // flags: bit0 imperial, bit1 time stamp, bit2 user id
            let lb = *unit == WeightUnit::Pound;
            out.push(0x02 | 0x04 | u8::from(lb));
            out.extend_from_slice(&m.wire_weight().unwrap_or(0).to_le_bytes());
            out.extend_from_slice(&date_time(time));
            out.push(*user);
            let _ = grams;
        }
        Measurement::Battery { percent } => out.push(*percent),
    }
    out
}

fn pressure(mmhg_x10: u32, unit: PressureUnit) -> [u8; 2] {
    match unit {
        PressureUnit::MmHg => sfloat_fit(mmhg_x10 as i64, -1),
        // 1 mmHg = 0.133322 kPa; kPa with 2 decimals where it fits
        PressureUnit::KPa => sfloat_fit(((mmhg_x10 as f64) * 1.33322).round() as i64, -2),
    }
}

/// Make a notification malformed the way broken firmware does: the flags
/// promise fields that are not there (the payload is cut short).
pub fn malform(bytes: &[u8]) -> Vec<u8> {
    match bytes.len() {
        0 => vec![0xFF],
        1 => vec![0xFF],
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

    #[test]
    fn sfloat_vectors() {
        // 120.5 mmHg = 1205 x 10^-1 -> exponent 0xF, mantissa 0x4B5
        assert_eq!(sfloat(1205, -1), [0xB5, 0xF4]);
        assert_eq!(sfloat(72, 0), [72, 0x00]);
        assert_eq!(sfloat(-1, 0), [0xFF, 0x0F]);
        // 350.0 mmHg does not fit as 3500 x 10^-1: becomes 350 x 10^0
        assert_eq!(sfloat_fit(3500, -1), sfloat(350, 0));
    }

    #[test]
    fn float32_vector() {
        // 36.85 = 3685 x 10^-2
        assert_eq!(float32(3685, -2), [0x65, 0x0E, 0x00, 0xFE]);
    }
}
