//! Tests of the whole module: the outside vectors of `proto/vectors/gatt.json`,
//! every flag combination of every flagged characteristic, and property tests
//! (encode → decode round trips; decode of arbitrary bytes never panics and is
//! stable under re-encoding).

use super::*;
use proptest::prelude::*;
use serde_json::Value;
use std::path::PathBuf;

/// Keys in gatt.json's `expected` that annotate rather than state a decoded
/// field (free text, whose wording differs between vectors).
const ANNOTATIONS: &[&str] = &[
    "note",
    "float_raw",
    "sfloat_raw",
    "encoding",
    "lenient_parsers",
];

fn vectors_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vectors/gatt.json")
}

/// Every key of `expected` must be in `actual` with an equal value (numbers
/// compared as f64, objects recursively). `direction` may carry extra text.
fn check_subset(path: &str, expected: &Value, actual: &Value, problems: &mut Vec<String>) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                if ANNOTATIONS.contains(&k.as_str()) {
                    continue;
                }
                let p = format!("{path}.{k}");
                match a.get(k) {
                    None => problems.push(format!("{p}: missing (expected {ev})")),
                    Some(av) if k == "direction" => {
                        let ok = matches!((ev, av), (Value::String(e), Value::String(a)) if e.starts_with(a.as_str()));
                        if !ok {
                            problems.push(format!("{p}: expected {ev}, got {av}"));
                        }
                    }
                    Some(av) => check_subset(&p, ev, av, problems),
                }
            }
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                check_subset(&format!("{path}[{i}]"), ev, av, problems);
            }
        }
        (Value::Number(e), Value::Number(a)) => {
            if e.as_f64() != a.as_f64() {
                problems.push(format!("{path}: expected {e}, got {a}"));
            }
        }
        (e, a) => {
            if e != a {
                problems.push(format!("{path}: expected {e}, got {a}"));
            }
        }
    }
}

#[test]
fn shared_vectors() {
    let path = vectors_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("GATT vectors missing: cannot read {} ({e})", path.display()));
    let vectors: Vec<Value> = serde_json::from_str(&text).expect("gatt.json is a JSON array");
    assert!(!vectors.is_empty(), "gatt.json has no vectors");
    let mut problems = Vec::new();
    let (mut ok, mut errors) = (0, 0);
    for (i, v) in vectors.iter().enumerate() {
        let uuid = v["characteristic_uuid"]
            .as_str()
            .expect("characteristic_uuid");
        let hex = v["hex"].as_str().expect("hex");
        let expected = &v["expected"];
        let label = format!("#{i} {uuid} {hex}");
        let got = decode_hex_to_json(uuid, hex);
        if let Some(why) = expected.get("error") {
            match got {
                Err(_) => errors += 1,
                Ok(j) => problems.push(format!("{label}: expected error ({why}), decoded {j}")),
            }
            continue;
        }
        match got {
            Err(e) => problems.push(format!("{label}: {e}")),
            Ok(actual) => {
                let before = problems.len();
                check_subset(&label, expected, &actual, &mut problems);
                // A vector's bytes re-encode to themselves (reserved flag
                // bits, which some vectors set, are not re-encoded).
                let mut bytes = parse_hex(hex).expect("hex");
                let c = Characteristic::parse(uuid).expect("uuid");
                let decoded = decode(c, &bytes);
                if c == Characteristic::BodyCompositionMeasurement
                    && let Some(hi) = bytes.get_mut(1)
                {
                    *hi &= 0x1F;
                }
                match decoded {
                    Ok(d) if d.encode() == bytes => {}
                    other => problems.push(format!(
                        "{label}: does not re-encode to its bytes: {other:?}"
                    )),
                }
                if problems.len() == before {
                    ok += 1;
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} vector problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert_eq!(ok + errors, vectors.len());
    println!(
        "gatt.json: {} vectors passed ({ok} decoded, {errors} rejected as expected)",
        vectors.len()
    );
}

/// Every characteristic the brief lists is decodable by UUID.
#[test]
fn every_listed_characteristic_has_a_codec() {
    for u in [
        0x2A37, 0x2A38, 0x2A35, 0x2A36, 0x2A1C, 0x2A1D, 0x2A1E, 0x2A18, 0x2A34, 0x2A52, 0x2A5E,
        0x2A5F, 0x2A9D, 0x2A9C, 0x2A19, 0x2A29, 0x2A24, 0x2A25, 0x2A27, 0x2A26, 0x2A28, 0x2A50,
        0x2A2B,
    ] {
        let c = Characteristic::from_uuid16(u).unwrap_or_else(|| panic!("{u:#06X} has no codec"));
        assert_eq!(c.uuid16(), u);
        assert_eq!(Characteristic::parse(&format!("{u:04x}")), Ok(c));
        assert_eq!(
            Characteristic::parse(&format!("0000{u:04x}-0000-1000-8000-00805f9b34fb")),
            Ok(c)
        );
        assert_eq!(sig_uuid16(c.uuid128()), Some(u));
    }
    assert!(Characteristic::parse("2A00").is_err());
    assert!(Characteristic::parse("00002a37-0000-1000-8000-00805f9b34fc").is_err());
    assert!(Characteristic::parse("zz").is_err());
}

#[test]
fn oversized_values_are_rejected() {
    for c in Characteristic::ALL {
        assert_eq!(
            decode(*c, &[0u8; 513]),
            Err(GattError::TooLong { len: 513 }),
            "{c:?}"
        );
    }
}

/// For every flagged characteristic and every flags byte 0..=255: some
/// length of payload after it decodes, shorter ones fail with an error, and
/// what decodes re-encodes to the same field bytes and decodes again to the
/// same value. This covers every flag combination deterministically.
#[test]
fn every_flag_combination_decodes_and_round_trips() {
    let filler: Vec<u8> = (0..64u32)
        .map(|i| (i.wrapping_mul(37).wrapping_add(11) % 251) as u8)
        .collect();
    let mut combos = 0;
    for c in Characteristic::ALL
        .iter()
        .copied()
        .filter(|c| c.has_flags() && *c != Characteristic::BodyCompositionMeasurement)
    {
        for flags in 0..=255u8 {
            let mut decoded_any = false;
            for len in 0..=filler.len() {
                let mut bytes = vec![flags];
                bytes.extend_from_slice(&filler[..len]);
                let Ok(d) = decode(c, &bytes) else { continue };
                decoded_any = true;
                let again = d.encode();
                assert_eq!(again[1..], bytes[1..], "{c:?} flags {flags:#04x} len {len}");
                assert_eq!(
                    decode(c, &again).as_ref(),
                    Ok(&d),
                    "{c:?} flags {flags:#04x}"
                );
                let _ = d.to_json();
                let _ = d.to_reading();
            }
            assert!(decoded_any, "{c:?}: flags {flags:#04x} never decodes");
            combos += 1;
        }
    }
    assert_eq!(combos, 10 * 256);
}

/// Body Composition's flags are two bytes: every one of the 2¹⁶ values
/// decodes at exactly the length its bits announce (2 + 2 + 7 + 1 + 2 per
/// uint16 field), one byte less or more is an error, and the value
/// re-encodes to the same bytes with reserved bits 13–15 cleared.
#[test]
fn every_body_composition_flag_combination() {
    let filler: Vec<u8> = (0..40u32).map(|i| (i * 53 + 7) as u8).collect();
    for flags in 0..=u16::MAX {
        let want = 2
            + 2
            + if flags & 2 != 0 { 7 } else { 0 }
            + usize::from(flags & 4 != 0)
            + 2 * (3..=11).filter(|b| flags & (1 << b) != 0).count();
        let mut bytes = flags.to_le_bytes().to_vec();
        bytes.extend_from_slice(&filler[..want - 2]);
        let d = BodyCompositionMeasurement::decode(&bytes)
            .unwrap_or_else(|e| panic!("flags {flags:#06x}: {e}"));
        let mut again = bytes.clone();
        again[1] &= 0x1F;
        assert_eq!(d.encode(), again, "flags {flags:#06x}");
        assert_eq!(d.flags(), flags & 0x1FFF);
        assert!(BodyCompositionMeasurement::decode(&bytes[..want - 1]).is_err());
        bytes.push(0);
        assert!(BodyCompositionMeasurement::decode(&bytes).is_err());
        let _ = d.to_json();
        if let Ok(r) = d.to_reading() {
            assert_eq!(r.slots.len(), 4);
        }
    }
}

#[test]
fn body_composition_packets_merge() {
    let mut first = BodyCompositionMeasurement::new(WeightUnit::Si, 215);
    first.multiple_packet = true;
    first.user_id = Some(2);
    first.muscle_mass_raw = Some(6000);
    let mut second = first;
    second.user_id = None;
    second.muscle_mass_raw = None;
    second.weight_raw = Some(15000);
    let m = first.merge(&second).expect("merge");
    assert_eq!(
        (m.user_id, m.muscle_mass_raw, m.weight_raw),
        (Some(2), Some(6000), Some(15000))
    );
    // A field in both packets, even with the same value: two first halves.
    for muscle in [6000, 6001] {
        let mut clash = second;
        clash.muscle_mass_raw = Some(muscle);
        assert!(matches!(
            first.merge(&clash),
            Err(GattError::Invalid {
                field: "muscle mass",
                ..
            })
        ));
    }
    assert!(first.merge(&first).is_err(), "a first half twice");
    // The halves the wrong way round.
    assert!(second.merge(&first).is_err());
    let mut other_fat = second;
    other_fat.body_fat_raw = 216;
    assert!(first.merge(&other_fat).is_err());
    let mut single = second;
    single.multiple_packet = false;
    assert!(first.merge(&single).is_err());
}

// ---- property tests -------------------------------------------------------

const CASES: u32 = 2000;

fn sfloat() -> impl Strategy<Value = SFloat> {
    any::<u16>().prop_map(SFloat::from_raw)
}

fn float() -> impl Strategy<Value = Float> {
    any::<u32>().prop_map(Float::from_raw)
}

fn date_time() -> impl Strategy<Value = DateTime> {
    (
        any::<u16>(),
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
    )
        .prop_map(|(y, mo, d, h, mi, s)| DateTime::new(y, mo, d, h, mi, s))
}

fn u24() -> impl Strategy<Value = u32> {
    0u32..(1 << 24)
}

fn heart_rate() -> impl Strategy<Value = HeartRateMeasurement> {
    (
        prop_oneof![
            any::<u8>().prop_map(HeartRate::U8),
            any::<u16>().prop_map(HeartRate::U16)
        ],
        prop_oneof![
            Just(SensorContact::NotSupported),
            Just(SensorContact::NotDetected),
            Just(SensorContact::Detected)
        ],
        proptest::option::of(any::<u16>()),
        proptest::collection::vec(any::<u16>(), 0..10),
    )
        .prop_map(
            |(heart_rate, sensor_contact, energy_expended_kj, rr_intervals_1024)| {
                HeartRateMeasurement {
                    heart_rate,
                    sensor_contact,
                    energy_expended_kj,
                    rr_intervals_1024,
                }
            },
        )
}

fn blood_pressure() -> impl Strategy<Value = BloodPressureMeasurement> {
    (
        prop_oneof![Just(PressureUnit::MmHg), Just(PressureUnit::KPa)],
        (sfloat(), sfloat(), sfloat()),
        proptest::option::of(date_time()),
        proptest::option::of(sfloat()),
        proptest::option::of(any::<u8>()),
        proptest::option::of(any::<u16>()),
    )
        .prop_map(
            |(unit, (s, d, m), timestamp, pulse_rate, user_id, measurement_status)| {
                BloodPressureMeasurement {
                    unit,
                    systolic: s,
                    diastolic: d,
                    mean_arterial_pressure: m,
                    timestamp,
                    pulse_rate,
                    user_id,
                    measurement_status,
                }
            },
        )
}

fn temperature() -> impl Strategy<Value = TemperatureMeasurement> {
    (
        prop_oneof![
            Just(TemperatureUnit::Celsius),
            Just(TemperatureUnit::Fahrenheit)
        ],
        float(),
        proptest::option::of(date_time()),
        proptest::option::of(any::<u8>().prop_map(TemperatureType)),
    )
        .prop_map(
            |(unit, temperature, timestamp, temperature_type)| TemperatureMeasurement {
                unit,
                temperature,
                timestamp,
                temperature_type,
            },
        )
}

fn glucose() -> impl Strategy<Value = GlucoseMeasurement> {
    let conc = (
        prop_oneof![Just(GlucoseUnit::KgPerL), Just(GlucoseUnit::MolPerL)],
        sfloat(),
        0u8..16,
        0u8..16,
    )
        .prop_map(
            |(unit, value, sample_type, sample_location)| GlucoseConcentration {
                unit,
                value,
                sample_type,
                sample_location,
            },
        );
    (
        any::<u16>(),
        date_time(),
        proptest::option::of(any::<i16>()),
        proptest::option::of(conc),
        proptest::option::of(any::<u16>()),
        any::<bool>(),
    )
        .prop_map(
            |(
                sequence_number,
                base_time,
                time_offset_min,
                concentration,
                sensor_status,
                context_follows,
            )| {
                GlucoseMeasurement {
                    sequence_number,
                    base_time,
                    time_offset_min,
                    concentration,
                    sensor_status,
                    context_follows,
                }
            },
        )
}

fn glucose_context() -> impl Strategy<Value = GlucoseMeasurementContext> {
    (
        any::<u16>(),
        proptest::option::of(any::<u8>()),
        proptest::option::of((any::<u8>(), sfloat()).prop_map(|(id, kg)| Carbohydrate { id, kg })),
        proptest::option::of(any::<u8>()),
        proptest::option::of(
            (0u8..16, 0u8..16).prop_map(|(tester, health)| TesterHealth { tester, health }),
        ),
        proptest::option::of((any::<u16>(), any::<u8>()).prop_map(
            |(duration_s, intensity_pct)| Exercise {
                duration_s,
                intensity_pct,
            },
        )),
        proptest::option::of((any::<u8>(), any::<bool>(), sfloat()).prop_map(
            |(id, litres, amount)| Medication {
                id,
                unit: if litres {
                    MedicationUnit::Litres
                } else {
                    MedicationUnit::Kilograms
                },
                amount,
            },
        )),
        proptest::option::of(sfloat()),
    )
        .prop_map(
            |(
                sequence_number,
                extended_flags,
                carbohydrate,
                meal,
                tester_health,
                exercise,
                medication,
                hba1c,
            )| {
                GlucoseMeasurementContext {
                    sequence_number,
                    extended_flags,
                    carbohydrate,
                    meal,
                    tester_health,
                    exercise,
                    medication,
                    hba1c,
                }
            },
        )
}

fn racp() -> impl Strategy<Value = Racp> {
    let operand = prop_oneof![
        any::<u16>().prop_map(RacpOperand::SequenceNumber),
        date_time().prop_map(RacpOperand::UserFacingTime),
    ];
    let filter = prop_oneof![
        Just(RacpFilter::All),
        Just(RacpFilter::First),
        Just(RacpFilter::Last),
        operand.clone().prop_map(RacpFilter::LessOrEqual),
        operand.prop_map(RacpFilter::GreaterOrEqual),
        (any::<u16>(), any::<u16>()).prop_map(|(a, b)| RacpFilter::SequenceRange(a, b)),
        (date_time(), date_time()).prop_map(|(a, b)| RacpFilter::TimeRange(a, b)),
    ];
    prop_oneof![
        filter.clone().prop_map(Racp::ReportStoredRecords),
        filter.clone().prop_map(Racp::DeleteStoredRecords),
        filter.prop_map(Racp::ReportNumberOfStoredRecords),
        Just(Racp::Abort),
        any::<u16>().prop_map(Racp::NumberOfStoredRecords),
        (any::<u8>(), any::<u8>()).prop_map(|(request_op_code, response)| Racp::ResponseCode {
            request_op_code,
            response
        }),
    ]
}

fn spo2pr() -> impl Strategy<Value = SpO2Pr> {
    (sfloat(), sfloat()).prop_map(|(spo2, pulse_rate)| SpO2Pr { spo2, pulse_rate })
}

fn plx_spot() -> impl Strategy<Value = PlxSpotCheck> {
    (
        spo2pr(),
        proptest::option::of(date_time()),
        proptest::option::of(any::<u16>()),
        proptest::option::of(u24()),
        proptest::option::of(sfloat()),
        any::<bool>(),
    )
        .prop_map(
            |(
                p,
                timestamp,
                measurement_status,
                device_and_sensor_status,
                pulse_amplitude_index,
                device_clock_not_set,
            )| {
                PlxSpotCheck {
                    spo2: p.spo2,
                    pulse_rate: p.pulse_rate,
                    timestamp,
                    measurement_status,
                    device_and_sensor_status,
                    pulse_amplitude_index,
                    device_clock_not_set,
                }
            },
        )
}

fn plx_continuous() -> impl Strategy<Value = PlxContinuous> {
    (
        spo2pr(),
        proptest::option::of(spo2pr()),
        proptest::option::of(spo2pr()),
        proptest::option::of(any::<u16>()),
        proptest::option::of(u24()),
        proptest::option::of(sfloat()),
    )
        .prop_map(
            |(
                normal,
                fast,
                slow,
                measurement_status,
                device_and_sensor_status,
                pulse_amplitude_index,
            )| {
                PlxContinuous {
                    normal,
                    fast,
                    slow,
                    measurement_status,
                    device_and_sensor_status,
                    pulse_amplitude_index,
                }
            },
        )
}

fn weight() -> impl Strategy<Value = WeightMeasurement> {
    (
        prop_oneof![Just(WeightUnit::Si), Just(WeightUnit::Imperial)],
        any::<u16>(),
        proptest::option::of(date_time()),
        proptest::option::of(any::<u8>()),
        proptest::option::of(
            (any::<u16>(), any::<u16>()).prop_map(|(bmi_raw, height_raw)| BmiHeight {
                bmi_raw,
                height_raw,
            }),
        ),
    )
        .prop_map(
            |(unit, weight_raw, timestamp, user_id, bmi_height)| WeightMeasurement {
                unit,
                weight_raw,
                timestamp,
                user_id,
                bmi_height,
            },
        )
}

fn body_composition() -> impl Strategy<Value = BodyCompositionMeasurement> {
    let o = || proptest::option::of(any::<u16>());
    (
        (
            prop_oneof![Just(WeightUnit::Si), Just(WeightUnit::Imperial)],
            any::<u16>(),
            proptest::option::of(date_time()),
            proptest::option::of(any::<u8>()),
            any::<bool>(),
        ),
        (o(), o(), o(), o(), o(), o(), o(), o(), o()),
    )
        .prop_map(|((unit, fat, timestamp, user_id, multiple_packet), f)| {
            let mut m = BodyCompositionMeasurement::new(unit, fat);
            m.timestamp = timestamp;
            m.user_id = user_id;
            m.multiple_packet = multiple_packet;
            (
                m.basal_metabolism_kj,
                m.muscle_pct_raw,
                m.muscle_mass_raw,
                m.fat_free_mass_raw,
                m.soft_lean_mass_raw,
                m.body_water_mass_raw,
                m.impedance_raw,
                m.weight_raw,
                m.height_raw,
            ) = f;
            m
        })
}

/// `decode(encode(v)) == v`, and the decoded value's JSON and reading do not panic.
macro_rules! round_trip {
    ($name:ident, $strategy:expr, $ty:ty) => {
        proptest! {
            #![proptest_config(ProptestConfig::with_cases(CASES))]
            #[test]
            fn $name(v in $strategy) {
                let bytes = v.encode();
                prop_assert!(bytes.len() <= ATT_MAX_VALUE_LEN);
                prop_assert_eq!(<$ty>::decode(&bytes), Ok(v.clone()));
                let _ = v.to_json();
            }
        }
    };
}

round_trip!(round_trip_heart_rate, heart_rate(), HeartRateMeasurement);
round_trip!(
    round_trip_body_sensor_location,
    any::<u8>().prop_map(BodySensorLocation),
    BodySensorLocation
);
round_trip!(
    round_trip_blood_pressure,
    blood_pressure(),
    BloodPressureMeasurement
);
round_trip!(
    round_trip_cuff_pressure,
    blood_pressure().prop_map(IntermediateCuffPressure),
    IntermediateCuffPressure
);
round_trip!(
    round_trip_temperature,
    temperature(),
    TemperatureMeasurement
);
round_trip!(
    round_trip_temperature_type,
    any::<u8>().prop_map(TemperatureType),
    TemperatureType
);
round_trip!(round_trip_glucose, glucose(), GlucoseMeasurement);
round_trip!(
    round_trip_glucose_context,
    glucose_context(),
    GlucoseMeasurementContext
);
round_trip!(round_trip_racp, racp(), Racp);
round_trip!(round_trip_plx_spot_check, plx_spot(), PlxSpotCheck);
round_trip!(round_trip_plx_continuous, plx_continuous(), PlxContinuous);
round_trip!(round_trip_weight, weight(), WeightMeasurement);
round_trip!(
    round_trip_body_composition,
    body_composition(),
    BodyCompositionMeasurement
);
round_trip!(
    round_trip_battery,
    (0u8..=100).prop_map(|p| BatteryLevel::new(p).expect("0..=100")),
    BatteryLevel
);
round_trip!(
    round_trip_device_info_string,
    "\\PC{0,60}".prop_map(DeviceInfoString),
    DeviceInfoString
);
round_trip!(
    round_trip_pnp_id,
    (any::<u8>(), any::<u16>(), any::<u16>(), any::<u16>()).prop_map(|(s, v, p, r)| PnpId {
        vendor_id_source: s,
        vendor_id: v,
        product_id: p,
        product_version: r
    }),
    PnpId
);
round_trip!(round_trip_date_time, date_time(), DateTime);
round_trip!(
    round_trip_current_time,
    (date_time(), any::<u8>(), any::<u8>(), any::<u8>()).prop_map(
        |(date_time, day_of_week, fractions256, adjust_reason)| {
            CurrentTime {
                date_time,
                day_of_week,
                fractions256,
                adjust_reason,
            }
        }
    ),
    CurrentTime
);

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Arbitrary bytes for any characteristic: an error or a value, never a
    /// panic; a value re-encodes to bytes that decode to the same value.
    #[test]
    fn decode_any_bytes(index in 0..Characteristic::ALL.len(), bytes in proptest::collection::vec(any::<u8>(), 0..48)) {
        let c = Characteristic::ALL[index];
        if let Ok(d) = decode(c, &bytes) {
            let again = d.encode();
            prop_assert_eq!(decode(c, &again), Ok(d.clone()));
            if !c.has_flags() {
                prop_assert_eq!(again, bytes);
            }
            let _ = d.to_json();
            let _ = d.to_reading();
        }
    }

    /// Body Composition alone (decode_any_bytes spreads its cases over every
    /// characteristic): arbitrary bytes decode or are refused, never panic;
    /// what decodes re-encodes to the same bytes with reserved flag bits
    /// cleared; joining it with any other value never panics.
    #[test]
    fn body_composition_any_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..40),
        other in body_composition(),
    ) {
        if let Ok(m) = BodyCompositionMeasurement::decode(&bytes) {
            let mut want = bytes.clone();
            want[1] &= 0x1F;
            prop_assert_eq!(m.encode(), want);
            let _ = m.to_reading();
            let _ = m.merge(&other).map(|j| j.to_reading());
            let _ = other.merge(&m);
        }
    }

    /// Slot mapping never panics, and a reading has the data type's slot count.
    #[test]
    fn readings_have_the_right_shape(
        bp in blood_pressure(), t in temperature(), g in glucose(), w in weight(),
        s in plx_spot(), c in plx_continuous(), h in heart_rate(), b in body_composition(),
    ) {
        let all = [h.to_reading(), bp.to_reading(), t.to_reading(), g.to_reading(), w.to_reading(), s.to_reading(), c.to_reading(), b.to_reading()];
        for r in all.into_iter().flatten() {
            prop_assert_eq!(r.slots.len(), r.data_type.slot_count());
        }
    }
}

#[test]
fn a_measurement_names_its_user_slot_unless_the_user_is_unknown() {
    let weight = |user_id| {
        Decoded::WeightMeasurement(WeightMeasurement {
            unit: WeightUnit::Si,
            weight_raw: 14_000,
            timestamp: None,
            user_id,
            bmi_height: None,
        })
    };
    assert_eq!(weight(Some(2)).user_index(), Some(2));
    assert_eq!(weight(Some(UNKNOWN_USER)).user_index(), None);
    assert_eq!(weight(None).user_index(), None);
    // From the bytes: flags 0x04 (user id present), 70 kg, user 3.
    let d = decode(Characteristic::WeightMeasurement, &[0x04, 0xB0, 0x36, 0x03]).expect("valid");
    assert_eq!(d.user_index(), Some(3));
}
