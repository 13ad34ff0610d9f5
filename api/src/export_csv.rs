//! `GET /api/v1/patients/{id}/export.csv?type=…&from=…&to=…`: one data
//! type's readings as CSV (RFC 4180), for the patient or a granted
//! clinician, audited as `export_csv`.
//!
//! One row per reading, in time order: time, device, sequence number,
//! verification state (and the reason when unverifiable), then one column
//! per proven value of the data type, headed `name (unit)`, empty where the
//! reading is unverifiable (its value is never shown), then the proof hash
//! and the sealed value's CID. Any number of readings: the body streams,
//! a page at a time ([`crate::export`]).

use super::check::{Check, StoredReading};
use super::export::{self, Audit, Export, Render, Scope};
use super::params::ApiPath;
use super::routes::{EARLIEST, LATEST};
use super::{ApiError, ApiState};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use chrono::SecondsFormat;
use hailan_proto::{DataType, DataTypeSpec};
use serde_json::json;
use uuid::Uuid;

/// A CSV field: quoted when it holds a comma, a quote or a line break.
fn field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s.into()
    }
}

/// The header line of `spec`'s CSV.
pub fn header_line(spec: &DataTypeSpec) -> String {
    let mut cols: Vec<String> = ["recorded_at", "device_id", "seq", "verification", "reason"]
        .iter()
        .map(|c| (*c).to_owned())
        .collect();
    cols.extend(
        spec.slots
            .iter()
            .map(|s| format!("{} ({})", s.name, s.unit)),
    );
    cols.extend(["proof_hash".to_owned(), "sealed_value_cid".to_owned()]);
    cols.iter()
        .map(|c| field(c).into_owned())
        .collect::<Vec<_>>()
        .join(",")
}

/// One reading's line.
pub fn line(spec: &DataTypeSpec, r: &StoredReading, c: &Check) -> String {
    let (state, reason, values): (&str, &str, Vec<String>) = match c {
        Check::Verified(slots) => (
            "verified",
            "",
            spec.slots
                .iter()
                .zip(slots)
                .map(|(s, v)| s.to_decimal(*v).to_string())
                .collect(),
        ),
        Check::Unverifiable(why) => ("unverifiable", why, vec![String::new(); spec.slots.len()]),
    };
    let mut cols: Vec<String> = vec![
        r.recorded_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        r.device_ext().unwrap_or("").to_owned(),
        r.seq.to_string(),
        state.to_owned(),
        reason.to_owned(),
    ];
    cols.extend(values);
    cols.push(r.zk_proof_hash.as_deref().unwrap_or("").to_owned());
    cols.push(r.ipfs_data_cid.clone().unwrap_or_default());
    cols.iter()
        .map(|c| field(c).into_owned())
        .collect::<Vec<_>>()
        .join(",")
}

/// CSV lines of one data type.
struct Csv {
    spec: &'static DataTypeSpec,
}

impl Render for Csv {
    fn head(&mut self) -> String {
        let mut head = header_line(self.spec);
        head.push_str("\r\n");
        head
    }

    async fn page(
        &mut self,
        _export: &mut Export,
        page: Vec<(StoredReading, Check)>,
    ) -> Result<String, ApiError> {
        let mut text = String::new();
        for (r, c) in &page {
            text.push_str(&line(self.spec, r, c));
            text.push_str("\r\n");
        }
        Ok(text)
    }

    fn tail(&mut self) -> String {
        String::new()
    }
}

/// `GET /api/v1/patients/{id}/export.csv?type=…&from=…&to=…`: exactly one
/// data type (`type`), `from`/`to` RFC 3339 and optional. The audit row
/// (`export_csv`, with the count of readings exported) commits before the
/// body starts; the body streams ([`crate::export`]). Answered as an
/// attachment named `hailan-{patient}-{type, lower case}.csv`.
pub async fn export_csv(
    State(state): State<ApiState>,
    headers: HeaderMap,
    ApiPath(patient): ApiPath<Uuid>,
    RawQuery(raw): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    let raw = raw.unwrap_or_default();
    let (mut data_type, mut from, mut to) = (None, EARLIEST, LATEST);
    for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
        match k.as_ref() {
            "type" => {
                data_type = Some(DataType::from_name(v.trim()).ok_or_else(|| {
                    ApiError::BadRequest(format!("type: unknown data type {v:?}"))
                })?)
            }
            "from" => from = super::params::parse_time("from", &v)?,
            "to" => to = super::params::parse_time("to", &v)?,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unsupported export parameter {other:?}"
                )));
            }
        }
    }
    let data_type =
        data_type.ok_or_else(|| ApiError::BadRequest("type: one data type is required".into()))?;
    let scope = Scope {
        patient,
        types: vec![data_type.as_str().to_owned()],
        from,
        to,
    };
    let resource = format!("/api/v1/patients/{patient}/export.csv");
    let audit = Audit {
        action: "export_csv",
        resource: &resource,
        detail: json!({ "query": raw }),
    };
    let (export, _) = Export::begin(&state, &headers, scope, audit).await?;
    let name = format!(
        "attachment; filename=\"hailan-{patient}-{}.csv\"",
        data_type.as_str().to_ascii_lowercase()
    );
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (header::CONTENT_DISPOSITION, name),
        ],
        export::body(
            export,
            Csv {
                spec: data_type.spec(),
            },
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_with_commas_quotes_or_breaks_are_quoted() {
        assert_eq!(field("plain"), "plain");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field("two\nlines"), "\"two\nlines\"");
    }

    #[test]
    fn the_header_names_each_proven_value_with_its_unit() {
        let h = header_line(DataType::BloodPressure.spec());
        assert!(
            h.starts_with("recorded_at,device_id,seq,verification,reason,"),
            "{h}"
        );
        assert!(h.contains("(mm[Hg])"), "{h}");
        assert!(h.ends_with(",proof_hash,sealed_value_cid"), "{h}");
    }
}
