//! HL7 FHIR R4: `GET /fhir/Observation?patient=…&code=…&date=ge…&date=le…`
//! returns a `searchset` Bundle of vital-signs Observations.
//!
//! - `code`: LOINC (and the extra codes) and UCUM units from the data-type
//!   table (`proto/src/data_type.rs`); blood pressure is one panel
//!   (85354-9) with systolic / diastolic / mean / pulse components; SpO2
//!   carries 59408-5 and 2708-6 with pulse as a component.
//! - `effectiveDateTime` is `recorded_at`; `device` references the
//!   `iot_devices` row; `subject` the patient.
//! - Body composition: body fat % is the value (41982-0); the other proven
//!   slots are components, left out when the scale did not send them (an
//!   optional slot whose bound admits 0 holds 0). The values that did not fit
//!   the proof (the data type's `shown_extras`: fat-free and soft lean mass,
//!   basal metabolism, impedance, weight, height) are components too, read
//!   from the decrypted value and marked with [`UNPROVEN_EXTENSION`] = true:
//!   sealed by the gateway (AES-GCM under the owner's key, bound to the
//!   reading's header) but not covered by the range proof.
//! - Quality flags the device set (blood-pressure measurement status: body
//!   movement, cuff too loose, irregular pulse, pulse out of range, improper
//!   position; heart-rate sensor contact; pulse-oximetry measurement and
//!   device/sensor status; glucose sensor status and control solution) are
//!   components coded in [`QUALITY_CODES`] with `valueBoolean` true, also
//!   marked unproven: the device said so, sealed, but no proof covers it;
//!   so is the gateway's `clock` flag (a reset device clock, an estimated
//!   time) on every type with a time stamp.
//! - The device's own time stamp (`device_time_ms`, [`hailan_proto::clock`])
//!   is a `device-time` component beside `effectiveDateTime` (the corrected
//!   time): a `valueString`, since a device's wall clock has no zone.
//! - Verification travels in the extension [`ZK_EXTENSION`]: `state`
//!   (`verified` / `unverifiable`), `proofHash`, `statement`, `keyId`, and for
//!   an unverifiable reading its `reason`. An unverifiable reading has no
//!   value: `dataAbsentReason` = `error` with the reason as text.

pub mod everything;
pub mod trace;

use super::check::{Check, StoredReading, open_row};
use super::keyring::KeyRing;
use super::routes::read_checked;
use super::session::Session;
use super::store::{Range, Take};
use super::{ApiError, ApiState};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, Utc};
use hailan_proto::{DataType, SlotSpec, quality};
use serde_json::{Value, json};
use trace::Refs;
use uuid::Uuid;

/// The extension that carries a reading's proof state.
pub const ZK_EXTENSION: &str = "urn:hailan:fhir:StructureDefinition:zk-verification";
/// On a component: `valueBoolean` true when the value was sealed but not proven.
pub const UNPROVEN_EXTENSION: &str = "urn:hailan:fhir:StructureDefinition:unproven";
/// A reading's identifier (device, data type, sequence number): what a
/// receiving server creates an Observation on, once.
pub const READING_ID_SYSTEM: &str = "urn:hailan:reading";
/// Codes for values LOINC has no code for (the sealed extras' keys).
const HAILAN_CODES: &str = "urn:hailan:fhir:CodeSystem:extras";
/// Code system of the devices' quality flags (`hailan_proto::quality` codes).
pub const QUALITY_CODES: &str = "urn:hailan:fhir:CodeSystem:quality-flags";
const LOINC: &str = "http://loinc.org";
const UCUM: &str = "http://unitsofmeasure.org";

/// The data types a search `code` names (LOINC, optionally `system|code`).
fn types_for_code(code: &str) -> Vec<DataType> {
    let code = code.rsplit('|').next().unwrap_or(code);
    DataType::ALL
        .into_iter()
        .filter(|t| {
            let s = t.spec();
            s.loinc == code
                || s.extra_loinc.contains(&code)
                || (*t == DataType::Glucose
                    && code == hailan_proto::data_type::GLUCOSE_NON_CAPILLARY_LOINC)
        })
        .collect()
}

/// Lower and upper bound of a search date.
type Bounds = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// A FHIR date (`YYYY-MM-DD`, its whole UTC day) or dateTime with its
/// prefix, as [lo, hi] bounds. Years 0–9999, as FHIR writes them, and no
/// arithmetic that can overflow: a malformed or extreme date is a 400 naming
/// the parameter (`date=262142-12-31` used to panic adding a day).
fn date_bound(v: &str) -> Result<Bounds, ApiError> {
    let (prefix, rest) = match v.split_at_checked(2) {
        Some((p @ ("ge" | "gt" | "le" | "lt" | "eq"), rest)) => (p, rest),
        _ => ("eq", v),
    };
    let bad = || {
        ApiError::BadRequest(format!(
            "date {v:?}: expected [ge|gt|le|lt|eq]YYYY-MM-DD or a dateTime, years 0 to 9999"
        ))
    };
    let us = chrono::Duration::microseconds(1);
    let (start, end) = if let Ok(t) = DateTime::parse_from_rfc3339(rest) {
        let t = t.with_timezone(&Utc);
        (t, t)
    } else {
        let d = NaiveDate::parse_from_str(rest, "%Y-%m-%d").map_err(|_| bad())?;
        let s = d.and_hms_opt(0, 0, 0).ok_or_else(bad)?.and_utc();
        let e = s
            .checked_add_signed(chrono::Duration::days(1))
            .and_then(|t| t.checked_sub_signed(us))
            .ok_or_else(bad)?;
        (s, e)
    };
    if !(0..=9999).contains(&start.year()) || !(0..=9999).contains(&end.year()) {
        return Err(bad());
    }
    Ok(match prefix {
        "ge" => (Some(start), None),
        "gt" => (Some(end.checked_add_signed(us).ok_or_else(bad)?), None),
        "le" => (None, Some(end)),
        "lt" => (None, Some(start.checked_sub_signed(us).ok_or_else(bad)?)),
        _ => (Some(start), Some(end)),
    })
}

/// A FHIR Observation search, parsed from its query string.
#[derive(Debug)]
pub struct SearchParams {
    /// The patient searched (`patient` or `subject`, a bare id or `Patient/{id}`); required.
    pub patient: Uuid,
    /// Data type names.
    pub types: Vec<String>,
    /// Earliest `recorded_at`, from the `date` parameters (`ge`, `gt`, `eq`);
    /// `None`: no lower bound.
    pub from: Option<DateTime<Utc>>,
    /// Latest `recorded_at`, from the `date` parameters (`le`, `lt`, `eq`);
    /// `None`: no upper bound.
    pub to: Option<DateTime<Utc>>,
    /// `_count`, 1 to `max_page` (500 unless asked).
    pub count: i64,
    /// `_include=Observation:device`, `_revinclude=Provenance:target`.
    pub include: everything::Include,
}

impl SearchParams {
    /// Parse `raw` (the query string); any malformed parameter is a 400
    /// naming it. Runs before authentication.
    pub fn parse(raw: &str, max_page: i64) -> Result<Self, ApiError> {
        let mut patient: Option<Uuid> = None;
        let mut types: Option<Vec<String>> = None;
        let (mut from, mut to): Bounds = (None, None);
        let mut count = 500i64;
        let mut include = everything::Include::default();
        for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
            match k.as_ref() {
                "patient" | "subject" => {
                    let id = v.strip_prefix("Patient/").unwrap_or(&v);
                    patient = Some(id.parse().map_err(|_| {
                        ApiError::BadRequest(format!("{k} {v:?} is not a patient id"))
                    })?);
                }
                "code" => {
                    let t = types.get_or_insert_with(Vec::new);
                    for c in v.split(',') {
                        t.extend(types_for_code(c).iter().map(|d| d.as_str().to_owned()));
                    }
                }
                "date" => {
                    let (lo, hi) = date_bound(&v)?;
                    if let Some(lo) = lo {
                        from = Some(from.map_or(lo, |f| f.max(lo)));
                    }
                    if let Some(hi) = hi {
                        to = Some(to.map_or(hi, |t| t.min(hi)));
                    }
                }
                "_count" => {
                    count = v.trim().parse().map_err(|_| {
                        ApiError::BadRequest(format!("_count {v:?}: expected a whole number"))
                    })?;
                }
                "_include" if v == "Observation:device" => include.devices = true,
                "_revinclude" if v == "Provenance:target" => include.provenance = true,
                "_include" | "_revinclude" => {
                    return Err(ApiError::BadRequest(format!(
                        "{k} {v:?}: supported are _include=Observation:device and _revinclude=Provenance:target"
                    )));
                }
                "category" | "_format" => {}
                other => {
                    return Err(ApiError::BadRequest(format!(
                        "unsupported search parameter {other:?}"
                    )));
                }
            }
        }
        let patient = patient
            .ok_or_else(|| ApiError::BadRequest("the patient parameter is required".into()))?;
        let types = types.unwrap_or_else(super::params::all_type_names);
        Ok(SearchParams {
            patient,
            types,
            from,
            to,
            count: count.clamp(1, max_page.max(1)),
            include,
        })
    }
}

fn quantity(s: &SlotSpec, v: u32) -> Value {
    json!({ "value": s.to_decimal(v), "unit": s.unit, "system": UCUM, "code": s.unit })
}

fn coding(code: &str, display: &str) -> Value {
    json!({ "system": LOINC, "code": code, "display": display })
}

/// Components for what a verified reading carries sealed but unproven: the
/// values a data type shows (`shown_extras`) and the device's quality flags
/// ([`hailan_proto::quality`]: cuff fit, body movement, irregular pulse,
/// sensor contact, control solution …). Decrypted again, only for types
/// that have either. A value the gateway did not send is left out; a flag
/// is a component only when set (`valueBoolean` true).
pub fn unproven_components(r: &StoredReading, c: &Check, keys: &KeyRing) -> Vec<Value> {
    let Some(t) = DataType::from_name(&r.data_type) else {
        return Vec::new();
    };
    let spec = t.spec();
    if (spec.shown_extras.is_empty() && !quality::has_flags(t)) || !matches!(c, Check::Verified(_))
    {
        return Vec::new();
    }
    let Ok(opened) = open_row(r, keys) else {
        return Vec::new();
    };
    let unproven = || json!([{ "url": UNPROVEN_EXTENSION, "valueBoolean": true }]);
    let values = spec.shown_extras.iter().filter_map(|e| {
        let v = i64::try_from(i128::from(opened.extras.get(e.key)?.as_integer()?)).ok()?;
        let code = match e.loinc {
            Some(l) => coding(l, e.display),
            None => json!({ "system": HAILAN_CODES, "code": e.key, "display": e.display }),
        };
        Some(json!({
            "extension": unproven(),
            "code": { "coding": [code], "text": e.display },
            "valueQuantity": { "value": e.to_decimal(v), "unit": e.unit, "system": UCUM, "code": e.unit },
        }))
    });
    let flags = quality::flags(t, &opened.extras).into_iter().map(|f| {
        json!({
            "extension": unproven(),
            "code": {
                "coding": [{ "system": QUALITY_CODES, "code": f.code, "display": f.display }],
                "text": f.display,
            },
            "valueBoolean": true,
        })
    });
    let device_time = opened
        .extras
        .get("device_time_ms")
        .and_then(|v| v.as_integer())
        .and_then(|i| i64::try_from(i128::from(i)).ok())
        .and_then(device_time);
    values.chain(flags).chain(device_time).collect()
}

/// The device's own time stamp, kept beside the corrected time the
/// Observation is effective at (the PHD guide's coincident time stamp, as a
/// component): the wall clock the device showed, which has no time zone,
/// so a string, not a FHIR dateTime.
fn device_time(ms: i64) -> Option<Value> {
    let t = chrono::DateTime::from_timestamp_millis(ms)?.naive_utc();
    let display = "time stamp by the device's own clock (its wall clock, no time zone)";
    Some(json!({
        "extension": [{ "url": UNPROVEN_EXTENSION, "valueBoolean": true }],
        "code": {
            "coding": [{ "system": HAILAN_CODES, "code": "device-time", "display": display }],
            "text": display,
        },
        "valueString": t.format("%Y-%m-%dT%H:%M:%S").to_string(),
    }))
}

/// One reading as a vital-signs Observation; `unproven` are its
/// [`unproven_components`].
pub fn observation(
    patient: Uuid,
    r: &StoredReading,
    c: &Check,
    unproven: &[Value],
    refs: Refs,
) -> Value {
    let mut ext = vec![json!({ "url": "state", "valueCode": match c {
        Check::Verified(_) => "verified",
        Check::Unverifiable(_) => "unverifiable",
    }})];
    if let Some(h) = &r.zk_proof_hash {
        ext.push(json!({ "url": "proofHash", "valueString": h }));
    }
    if let Some(p) = &r.proof {
        ext.push(json!({ "url": "statement", "valueCode": p.statement }));
        ext.push(json!({ "url": "keyId", "valueString": p.key_id }));
    }
    if let Check::Unverifiable(why) = c {
        ext.push(json!({ "url": "reason", "valueString": why }));
    }
    let mut identifier =
        vec![json!({ "system": READING_ID_SYSTEM, "value": everything::reading_identifier(r) })];
    // The sealed value's content address (CIDv1, raw, sha2-256 of its ciphertext).
    if let Some(cid) = &r.ipfs_data_cid {
        identifier.push(json!({ "system": "urn:hailan:sealed-value-cid", "value": cid }));
    }
    let mut o = json!({
        "resourceType": "Observation",
        "id": r.id,
        "meta": { "profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns"] },
        "extension": [
            { "url": ZK_EXTENSION, "extension": ext },
            { "url": trace::GATEWAY_DEVICE_EXTENSION, "valueReference": {
                "reference": refs.to("Device", trace::gateway_device_id(&r.gateway_id)),
                "display": &*r.gateway_id } },
        ],
        "identifier": identifier,
        "status": "final",
        "category": [{ "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "vital-signs", "display": "Vital Signs" }] }],
        "subject": { "reference": refs.patient(patient) },
        "effectiveDateTime": r.recorded_at.to_rfc3339_opts(SecondsFormat::Millis, true),
    });
    if let Some(d) = r.device_id {
        let display = r.device.as_ref().map(|d| d.name.as_ref().unwrap_or(&d.ext));
        o["device"] = json!({ "reference": refs.to("Device", d), "display": display });
    }
    let Some(spec) = DataType::from_name(&r.data_type).map(|t| t.spec()) else {
        o["code"] = json!({ "text": r.data_type });
        o["dataAbsentReason"] = json!({ "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "unsupported" }] });
        return o;
    };
    let mut codes = vec![coding(spec.loinc, spec.loinc_display)];
    codes.extend(
        spec.extra_loinc
            .iter()
            .map(|c| json!({ "system": LOINC, "code": c })),
    );
    o["code"] = json!({ "coding": codes, "text": spec.loinc_display });
    match c {
        Check::Verified(slots) => {
            let panel = spec.data_type == DataType::BloodPressure;
            let skip = if panel {
                0
            } else {
                if let (Some(s), Some(v)) = (spec.slots.first(), slots.first()) {
                    o["valueQuantity"] = quantity(s, *v);
                }
                1
            };
            let comps: Vec<Value> = spec
                .slots
                .iter()
                .zip(slots)
                .skip(skip)
                // An optional slot (its bound admits 0) holding 0: not sent.
                .filter(|(s, v)| !(s.lo == 0 && **v == 0))
                .map(|(s, v)| json!({ "code": { "coding": [coding(s.loinc, s.display)] }, "valueQuantity": quantity(s, *v) }))
                .chain(unproven.iter().cloned())
                .collect();
            if !comps.is_empty() {
                o["component"] = Value::Array(comps);
            }
        }
        Check::Unverifiable(why) => {
            o["dataAbsentReason"] = json!({
                "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                             "code": "error", "display": "Error" }],
                "text": format!("unverifiable: {why}"),
            });
        }
    }
    o
}

/// `GET /fhir/Observation?patient=…&code=…&date=…&_count=…`: a `searchset`
/// Bundle of the patient's Observations in time order, with the included
/// Devices and Provenance when asked; audited as `fhir_search_observation`.
/// `total` is given only when the page is not full.
pub async fn observations(
    State(state): State<ApiState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    let raw = raw.unwrap_or_default();
    let SearchParams {
        patient,
        types,
        from,
        to,
        count,
        include,
    } = SearchParams::parse(&raw, state.max_page)?;
    let mut s = Session::begin(&state, &headers).await?;
    let range = Range {
        from: from.unwrap_or(super::routes::EARLIEST),
        to: to.unwrap_or(super::routes::LATEST),
        after: None,
        take: Take::Page(count),
    };
    let checked = read_checked(&state, s.reader(), patient, &types, &range).await?;
    let referenced = everything::Referenced::read(s.reader(), patient, &checked, include).await?;
    s.finish(
        "fhir_search_observation",
        "/fhir/Observation",
        Some(patient),
        checked.len(),
        json!({ "query": raw, "types": types }),
    )
    .await?;
    let unproven = |r: &StoredReading, c: &Check| unproven_components(r, c, &state.keys);
    let entries: Vec<Value> = everything::resources(
        patient,
        &checked,
        &unproven,
        &referenced,
        include,
        Refs::Server,
    )
    .into_iter()
    .map(everything::search_entry)
    .collect();
    let full_page = checked.len() as i64 >= count;
    let self_link = json!({ "relation": "self", "url": format!("/fhir/Observation?{raw}") });
    let mut bundle = bundle("searchset", vec![self_link], entries);
    // `total` is the number of matches: known only when the page is not full.
    if !full_page {
        bundle["total"] = json!(checked.len());
    }
    Ok(fhir_json(bundle))
}

/// A Bundle of `kind` (`searchset`, `transaction`) made now.
pub fn bundle(kind: &str, links: Vec<Value>, entries: Vec<Value>) -> Value {
    let mut b = json!({
        "resourceType": "Bundle",
        "id": Uuid::new_v4(),
        "meta": { "lastUpdated": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true) },
        "type": kind,
        "entry": entries,
    });
    if !links.is_empty() {
        b["link"] = Value::Array(links);
    }
    b
}

/// A FHIR JSON answer.
pub fn fhir_json(body: Value) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/fhir+json")],
        body.to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_dates() {
        assert_eq!(
            types_for_code("http://loinc.org|8867-4"),
            vec![DataType::HeartRate]
        );
        assert_eq!(types_for_code("2708-6"), vec![DataType::Spo2]);
        assert_eq!(types_for_code("2339-0"), vec![DataType::Glucose]);
        assert!(types_for_code("0000-0").is_empty());
        let (lo, hi) = date_bound("ge2025-01-02").expect("date");
        assert_eq!(
            lo.map(|t| t.to_rfc3339()),
            Some("2025-01-02T00:00:00+00:00".into())
        );
        assert_eq!(hi, None);
        let (lo, hi) = date_bound("le2025-01-02T03:04:05Z").expect("dateTime");
        assert_eq!(lo, None);
        assert_eq!(hi.map(|t| t.timestamp()), Some(1_735_787_045));
        assert!(date_bound("xx").is_err());
    }

    #[test]
    fn extreme_dates_are_a_bad_request_not_a_panic() {
        for v in [
            "262142-12-31",
            "ge262142-12-31",
            "gt262142-12-31",
            "lt-262143-01-01",
            "-262143-01-01",
            "le10000-01-01",
            "ge\u{e9}\u{e9}",
            "g\u{e9}",
        ] {
            assert!(
                matches!(date_bound(v), Err(ApiError::BadRequest(m)) if m.starts_with("date ")),
                "{v}"
            );
        }
        assert!(date_bound("gt9999-12-31T23:59:59.999999Z").is_ok());
    }

    /// Query strings: parameters the search knows with values near and far
    /// from their formats, and anything at all.
    fn query() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let value = prop_oneof![
            any::<String>(),
            "(ge|gt|le|lt|eq|x)?-?[0-9]{1,7}-[0-9]{1,3}-[0-9]{1,3}(T[0-9:.]{1,15}(Z|[+-][0-9:]{1,6})?)?",
            "(Patient/)?[0-9a-f-]{0,40}",
            "-?[0-9]{0,25}",
        ];
        let key = prop_oneof![
            Just("patient".to_owned()),
            Just("subject".to_owned()),
            Just("code".to_owned()),
            Just("date".to_owned()),
            Just("_count".to_owned()),
            Just("category".to_owned()),
            any::<String>(),
        ];
        proptest::collection::vec((key, value), 0..6).prop_map(|kv| {
            form_urlencoded::Serializer::new(String::new())
                .extend_pairs(kv)
                .finish()
        })
    }

    proptest::proptest! {
        #[test]
        fn any_query_string_parses_or_is_a_bad_request(
            raw in query(),
            noise in proptest::prelude::any::<String>(),
            max_page in proptest::prelude::any::<i64>(),
        ) {
            for q in [&raw, &noise] {
                match SearchParams::parse(q, max_page) {
                    Ok(p) => {
                        proptest::prop_assert!(p.count >= 1);
                        for t in p.from.iter().chain(&p.to) {
                            proptest::prop_assert!((0..=10_000).contains(&t.year()));
                        }
                    }
                    Err(ApiError::BadRequest(_)) => {}
                    Err(e) => return Err(proptest::test_runner::TestCaseError::fail(format!("{e:?}"))),
                }
            }
        }
    }
}
