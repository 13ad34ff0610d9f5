//! The quality flags a device sets on a measurement, named: what a clinician
//! must see beside a value (DESIGN §3: "non-proven extras"). They travel
//! sealed with the value in [`crate::seal::SealedValue::extras`] — under the
//! owner's key and bound to the reading's header, but not covered by the
//! range proof — and come out here as a list the API shows (FHIR components
//! marked unproven).
//!
//! Sources, per data type:
//! - heart rate (0x2A37): sensor contact supported and not detected;
//! - blood pressure (0x2A35) Measurement Status: body movement, cuff too
//!   loose, irregular pulse, pulse rate above/below range, improper
//!   measurement position;
//! - pulse oximetry (0x2A5E/0x2A5F): every set Measurement Status and Device
//!   and Sensor Status bit;
//! - glucose (0x2A18): every set Sensor Status Annunciation bit, and a
//!   control-solution sample (type 10 or location 4): not a patient's blood;
//! - every type with a device time stamp: the gateway's `clock` flag
//!   ([`crate::clock`]): the device's clock had been reset, or its stamp was
//!   implausible and the time is the gateway's estimate.
//!
//! A flag's code is `<field>.<bit>` (the Bluetooth SIG bit number) or
//! `<field>.<name>`, stable across releases; its display is the SIG's words.

use crate::DataType;
use crate::clock::ClockFlag;
use crate::gatt::{glucose, plx};
use ciborium::Value as Cbor;
use std::collections::BTreeMap;

/// One quality flag the device set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QualityFlag {
    /// Stable code, e.g. `bp-measurement-status.0`.
    pub code: String,
    /// The SIG's description, e.g. `body movement detected`.
    pub display: String,
}

impl QualityFlag {
    fn new(code: impl Into<String>, display: impl Into<String>) -> Self {
        QualityFlag {
            code: code.into(),
            display: display.into(),
        }
    }
}

/// Whether readings of `t` can carry quality flags (the API opens a
/// verified reading's extras again only for these).
pub fn has_flags(t: DataType) -> bool {
    matches!(
        t,
        DataType::HeartRate
            | DataType::BloodPressure
            | DataType::Spo2
            | DataType::Glucose
            | DataType::BodyTemperature
            | DataType::BodyWeight
            | DataType::BodyComposition
    )
}

fn int(extras: &BTreeMap<String, Cbor>, key: &str) -> Option<u64> {
    u64::try_from(i128::from(extras.get(key)?.as_integer()?)).ok()
}

/// The flags set in a decrypted value's `extras`, in bit order. Unknown or
/// malformed extras are no flags (never a panic: extras come from a device).
pub fn flags(t: DataType, extras: &BTreeMap<String, Cbor>) -> Vec<QualityFlag> {
    let mut out = Vec::new();
    match t {
        DataType::HeartRate
            if extras.get("sensor_contact").and_then(Cbor::as_text) == Some("not_detected") =>
        {
            out.push(QualityFlag::new(
                "hr-sensor-contact.not-detected",
                "sensor contact not detected",
            ));
        }
        DataType::BloodPressure => {
            if let Some(s) = int(extras, "measurement_status") {
                bp_status(s, &mut out);
            }
        }
        DataType::Spo2 => {
            if let Some(s) = int(extras, "measurement_status").and_then(|s| u16::try_from(s).ok()) {
                for (bit, name) in plx::measurement_status_names(s) {
                    out.push(QualityFlag::new(
                        format!("plx-measurement-status.{bit}"),
                        name,
                    ));
                }
            }
            if let Some(s) =
                int(extras, "device_and_sensor_status").and_then(|s| u32::try_from(s).ok())
            {
                for (bit, name) in plx::device_sensor_status_names(s) {
                    out.push(QualityFlag::new(
                        format!("plx-device-sensor-status.{bit}"),
                        name,
                    ));
                }
            }
        }
        DataType::Glucose => {
            if int(extras, "sample_type") == Some(10) || int(extras, "sample_location") == Some(4) {
                out.push(QualityFlag::new(
                    "glucose-sample.control-solution",
                    "control solution, not a patient sample",
                ));
            }
            if let Some(s) =
                int(extras, "sensor_status_annunciation").and_then(|s| u16::try_from(s).ok())
            {
                for (bit, name) in glucose::sensor_status_names(s) {
                    out.push(QualityFlag::new(
                        format!("glucose-sensor-status.{bit}"),
                        name,
                    ));
                }
            }
        }
        _ => {}
    }
    match extras
        .get("clock")
        .and_then(Cbor::as_text)
        .and_then(ClockFlag::from_name)
    {
        Some(ClockFlag::Reset) => out.push(QualityFlag::new(
            "clock.reset",
            "device clock had been reset; time corrected from the device's current time",
        )),
        Some(ClockFlag::Estimated) => out.push(QualityFlag::new(
            "clock.estimated",
            "device time stamp implausible; time estimated as when the gateway received it",
        )),
        None => {}
    }
    out
}

/// Blood Pressure Measurement Status (0x2A35): bits 0–2 and 5, and the
/// pulse-rate range in bits 3–4.
fn bp_status(s: u64, out: &mut Vec<QualityFlag>) {
    let bit = |b: u32| s & (1 << b) != 0;
    for (b, name) in [
        (0, "body movement detected"),
        (1, "cuff too loose"),
        (2, "irregular pulse detected"),
    ] {
        if bit(b) {
            out.push(QualityFlag::new(format!("bp-measurement-status.{b}"), name));
        }
    }
    match (s >> 3) & 0x03 {
        1 => out.push(QualityFlag::new(
            "bp-measurement-status.pulse-above-range",
            "pulse rate exceeds upper limit",
        )),
        2 => out.push(QualityFlag::new(
            "bp-measurement-status.pulse-below-range",
            "pulse rate is less than lower limit",
        )),
        _ => {}
    }
    if bit(5) {
        out.push(QualityFlag::new(
            "bp-measurement-status.5",
            "improper measurement position",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn extras(pairs: &[(&str, Cbor)]) -> BTreeMap<String, Cbor> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    fn codes(f: &[QualityFlag]) -> Vec<&str> {
        f.iter().map(|f| f.code.as_str()).collect()
    }

    #[test]
    fn the_gateways_clock_flag_is_named_for_every_type() {
        let reset = extras(&[("clock", Cbor::Text("reset".into()))]);
        assert_eq!(codes(&flags(DataType::BodyWeight, &reset)), ["clock.reset"]);
        let est = extras(&[("clock", Cbor::Text("estimated".into()))]);
        assert_eq!(codes(&flags(DataType::Glucose, &est)), ["clock.estimated"]);
        let odd = extras(&[("clock", Cbor::from(3u64))]);
        assert!(flags(DataType::BodyTemperature, &odd).is_empty());
        assert!(has_flags(DataType::BodyComposition));
    }

    #[test]
    fn blood_pressure_status_bits_are_named() {
        // body movement, irregular pulse, pulse below range, improper position
        let e = extras(&[("measurement_status", Cbor::from(0b10_0101u64 | (2 << 3)))]);
        let f = flags(DataType::BloodPressure, &e);
        assert_eq!(
            codes(&f),
            [
                "bp-measurement-status.0",
                "bp-measurement-status.2",
                "bp-measurement-status.pulse-below-range",
                "bp-measurement-status.5"
            ]
        );
        assert_eq!(f[1].display, "irregular pulse detected");
        assert!(
            flags(
                DataType::BloodPressure,
                &extras(&[("measurement_status", Cbor::from(0u64))])
            )
            .is_empty()
        );
    }

    #[test]
    fn heart_rate_contact_glucose_control_and_plx_status() {
        let hr = extras(&[("sensor_contact", Cbor::Text("not_detected".into()))]);
        assert_eq!(
            codes(&flags(DataType::HeartRate, &hr)),
            ["hr-sensor-contact.not-detected"]
        );
        let ok = extras(&[("sensor_contact", Cbor::Text("detected".into()))]);
        assert!(flags(DataType::HeartRate, &ok).is_empty());
        let glu = extras(&[
            ("sample_type", Cbor::from(10u64)),
            ("sample_location", Cbor::from(1u64)),
            ("sensor_status_annunciation", Cbor::from(0b100u64)),
        ]);
        let f = flags(DataType::Glucose, &glu);
        assert_eq!(
            codes(&f),
            ["glucose-sample.control-solution", "glucose-sensor-status.2"]
        );
        assert_eq!(f[1].display, "sample size insufficient");
        let plx = extras(&[
            ("measurement_status", Cbor::from(1u64 << 14)),
            ("device_and_sensor_status", Cbor::from(1u64 << 5)),
        ]);
        let f = flags(DataType::Spo2, &plx);
        assert_eq!(
            codes(&f),
            ["plx-measurement-status.14", "plx-device-sensor-status.5"]
        );
        assert_eq!(f[0].display, "questionable measurement detected");
        assert_eq!(f[1].display, "low perfusion detected");
    }

    proptest! {
        #[test]
        fn any_extras_give_flags_without_panicking(
            key in prop_oneof![
                Just("measurement_status".to_owned()), Just("device_and_sensor_status".to_owned()),
                Just("sensor_status_annunciation".to_owned()), Just("sensor_contact".to_owned()),
                Just("sample_type".to_owned()), Just("sample_location".to_owned()), "[a-z_]{1,12}"
            ],
            n in any::<i64>(),
            text in "\\PC{0,20}",
            t in proptest::sample::select(DataType::ALL.to_vec()),
        ) {
            let _ = flags(t, &extras(&[(&key, Cbor::from(n))]));
            let _ = flags(t, &extras(&[(&key, Cbor::Text(text))]));
        }
    }
}
