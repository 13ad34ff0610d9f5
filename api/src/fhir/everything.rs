//! A patient's record as one Bundle, with what it references:
//!
//! - `GET /fhir/Patient/{id}/$everything?start=…&end=…&_count=…` — a
//!   `searchset` of the patient's Observations in the range (paged, `next`
//!   link), each sensor and gateway `Device` they name and each proof's
//!   `Provenance` (`search.mode = include`).
//! - `GET /api/v1/patients/{id}/export.fhir.json?from=…&to=…` — the same
//!   resources as a `transaction` Bundle a record system can post as it is:
//!   Observations and Devices are conditional creates (`ifNoneExist` on
//!   their identifiers: posting the export twice creates nothing the second
//!   time), each Provenance an update at its proof's id (Provenance has no
//!   identifier to create on), references between entries by `urn:uuid:`
//!   and to the patient by identifier. Any number of readings: the Bundle
//!   streams a page at a time ([`crate::export`]), each Device and
//!   Provenance written once, a window proof's Provenance targeting all its
//!   Observations in the range.
//! - `GET /fhir/Device/{id}` — one sensor's or gateway's Device.
//!
//! Every read is audited as any other (`fhir_everything`, `export_fhir`,
//! `fhir_read_device`).

use super::trace::{self, ProofRow, Refs, SensorRow};
use super::{Check, StoredReading, bundle, fhir_json, observation, unproven_components};
use crate::check::CutWindow;
use crate::export::{self, Audit, Export, Render, Scope};
use crate::params::{ApiPath, all_type_names, parse_cursor};
use crate::routes::{EARLIEST, LATEST, read_checked};
use crate::session::Session;
use crate::store::{self, Range, Take, read_proofs, read_sensors};
use crate::{ApiError, ApiState};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgConnection;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use uuid::Uuid;

/// What a Bundle holds besides the Observations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Include {
    /// The sensors' and gateways' Devices (`_include=Observation:device`).
    pub devices: bool,
    /// The proofs' Provenance (`_revinclude=Provenance:target`).
    pub provenance: bool,
}

/// The resources the checked readings reference, read in the session.
#[derive(Debug, Default)]
pub struct Referenced {
    /// The sensors (`iot_devices` rows) the readings name, when Devices are included.
    pub sensors: Vec<SensorRow>,
    /// The gateways the readings came through, when Devices are included.
    pub gateways: Vec<String>,
    /// The proofs (`zk_proofs` rows) covering the readings, when Provenance is included.
    pub proofs: Vec<ProofRow>,
    /// Each proof's Observations over a whole export's range, by proof
    /// hash, when its Bundle is written page by page ([`Written`]); `None`:
    /// a proof's targets are the Observations of this Bundle.
    pub targets: Option<BTreeMap<String, Vec<Uuid>>>,
}

/// What a Bundle written page by page (a streamed export) already holds,
/// so that each Device and each Provenance is written once.
#[derive(Debug, Default)]
pub struct Written {
    sensors: HashSet<Uuid>,
    gateways: HashSet<String>,
    proofs: HashSet<String>,
}

/// The range a streamed export reads: a window proof's Provenance targets
/// every Observation of the window within it, not only those of one page.
#[derive(Debug, Clone, Copy)]
pub struct ExportRange {
    /// Earliest `recorded_at` (inclusive).
    pub from: DateTime<Utc>,
    /// Latest `recorded_at` (inclusive).
    pub to: DateTime<Utc>,
}

impl Referenced {
    /// Read, in the caller's session (RLS decides), the sensors and proofs that
    /// `checked` references, as far as `include` asks for them.
    pub async fn read(
        conn: &mut PgConnection,
        patient: Uuid,
        checked: &[(StoredReading, Check)],
        include: Include,
    ) -> Result<Referenced, ApiError> {
        Self::read_new(
            conn,
            patient,
            checked,
            include,
            &mut Written::default(),
            None,
        )
        .await
    }

    /// [`Referenced::read`] for one page of a Bundle written page by page:
    /// only what `written` does not hold yet (then added to it), and with
    /// `range`, each new proof's targets over the whole range.
    pub async fn read_new(
        conn: &mut PgConnection,
        patient: Uuid,
        checked: &[(StoredReading, Check)],
        include: Include,
        written: &mut Written,
        range: Option<ExportRange>,
    ) -> Result<Referenced, ApiError> {
        let mut out = Referenced::default();
        if include.devices {
            let ids: BTreeSet<Uuid> = checked
                .iter()
                .filter_map(|(r, _)| r.device_id)
                .filter(|id| written.sensors.insert(*id))
                .collect();
            let ids: Vec<Uuid> = ids.into_iter().collect();
            if !ids.is_empty() {
                out.sensors = read_sensors(conn, patient, &ids).await?;
            }
            let gateways: BTreeSet<&str> = checked.iter().map(|(r, _)| &*r.gateway_id).collect();
            out.gateways = gateways
                .into_iter()
                .filter(|g| written.gateways.insert((*g).to_owned()))
                .map(str::to_owned)
                .collect();
        }
        if include.provenance {
            let hashes: BTreeSet<&str> = checked
                .iter()
                .filter_map(|(r, _)| r.zk_proof_hash.as_deref())
                .filter(|h| written.proofs.insert((*h).to_owned()))
                .collect();
            let hashes: Vec<&str> = hashes.into_iter().collect();
            if !hashes.is_empty() {
                out.proofs = read_proofs(conn, patient, &hashes).await?;
                if let Some(range) = range {
                    out.targets = Some(targets_in(conn, patient, checked, &hashes, range).await?);
                }
            }
        }
        Ok(out)
    }
}

/// The Observations each proof of `hashes` covers within `range`: a
/// window's readings in range (read by device and seq), or the one reading
/// a reading proof covers.
async fn targets_in(
    conn: &mut PgConnection,
    patient: Uuid,
    checked: &[(StoredReading, Check)],
    hashes: &[&str],
    range: ExportRange,
) -> Result<BTreeMap<String, Vec<Uuid>>, ApiError> {
    let mut targets: BTreeMap<String, Vec<Uuid>> = BTreeMap::new();
    let mut windows = Vec::new();
    for h in hashes {
        let Some((r, _)) = checked
            .iter()
            .find(|(r, _)| r.zk_proof_hash.as_deref() == Some(*h))
        else {
            continue;
        };
        match CutWindow::of(r) {
            Some(w) => windows.push(w),
            None => targets.entry((*h).to_owned()).or_default().push(r.id),
        }
    }
    if !windows.is_empty() {
        for (hash, id) in
            store::window_members(conn, patient, &windows, range.from, range.to).await?
        {
            targets.entry(hash).or_default().push(id);
        }
    }
    Ok(targets)
}

/// The identifier a reading's Observation is created on (the device, the
/// data type and the device's sequence number: one reading, one value).
pub fn reading_identifier(r: &StoredReading) -> String {
    format!(
        "{}/{}/{}",
        r.device_id.map(|d| d.to_string()).unwrap_or_default(),
        r.data_type,
        r.seq
    )
}

/// One resource and what it is in the Bundle.
#[derive(Debug)]
pub struct Resource {
    /// The FHIR resource type: `Observation`, `Device` or `Provenance`.
    pub kind: &'static str,
    /// Its id: the reading's, the sensor's row id, the gateway's derived id
    /// ([`trace::gateway_device_id`]), or the proof's row id.
    pub id: Uuid,
    /// The resource's JSON.
    pub body: Value,
    /// `match` for an Observation, `include` for what it references.
    pub matched: bool,
    /// The search that finds it on a receiving server (conditional create);
    /// `None`: written by id.
    pub if_none_exist: Option<String>,
}

/// The resources of `checked` and what they reference, Observations first
/// (in time order), then Devices, then Provenance.
pub fn resources(
    patient: Uuid,
    checked: &[(StoredReading, Check)],
    unproven: &dyn Fn(&StoredReading, &Check) -> Vec<Value>,
    referenced: &Referenced,
    include: Include,
    refs: Refs,
) -> Vec<Resource> {
    let mut out: Vec<Resource> = checked
        .iter()
        .map(|(r, c)| Resource {
            kind: "Observation",
            id: r.id,
            body: observation(patient, r, c, &unproven(r, c), refs),
            matched: true,
            if_none_exist: Some(format!(
                "identifier={}|{}",
                super::READING_ID_SYSTEM,
                reading_identifier(r)
            )),
        })
        .collect();
    if include.devices {
        out.extend(referenced.sensors.iter().map(|d| Resource {
            kind: "Device",
            id: d.id,
            body: trace::sensor_device(d, refs),
            matched: false,
            if_none_exist: Some(format!(
                "identifier={}|{}",
                trace::DEVICE_ID_SYSTEM,
                d.device_id
            )),
        }));
        out.extend(referenced.gateways.iter().map(|g| Resource {
            kind: "Device",
            id: trace::gateway_device_id(g),
            body: trace::gateway_device(g),
            matched: false,
            if_none_exist: Some(format!("identifier={}|{g}", trace::GATEWAY_ID_SYSTEM)),
        }));
    }
    if include.provenance {
        // The Observations each proof covers (in this Bundle), and one of
        // them to name the proof bundle by.
        let mut covered: BTreeMap<&str, (Vec<Uuid>, &StoredReading)> = BTreeMap::new();
        for (r, _) in checked {
            if let Some(h) = r.zk_proof_hash.as_deref() {
                covered
                    .entry(h)
                    .or_insert_with(|| (Vec::new(), r))
                    .0
                    .push(r.id);
            }
        }
        out.extend(referenced.proofs.iter().filter_map(|p| {
            let (in_bundle, first) = covered.get(p.proof_hash.as_str())?;
            let targets = referenced
                .targets
                .as_ref()
                .and_then(|t| t.get(p.proof_hash.as_str()))
                .unwrap_or(in_bundle);
            let url = format!("/api/v1/patients/{patient}/readings/{}/proof", first.id);
            Some(Resource {
                kind: "Provenance",
                id: p.id,
                body: trace::provenance(p, targets, &first.gateway_id, &url, refs),
                matched: false,
                if_none_exist: None,
            })
        }));
    }
    out
}

/// A `searchset` entry.
pub fn search_entry(r: Resource) -> Value {
    json!({
        "fullUrl": format!("urn:uuid:{}", r.id),
        "resource": r.body,
        "search": { "mode": if r.matched { "match" } else { "include" } },
    })
}

/// A `transaction` entry: a conditional create, or an update at the id.
fn transaction_entry(r: Resource) -> Value {
    let Resource {
        kind,
        id,
        mut body,
        if_none_exist,
        ..
    } = r;
    let request = match if_none_exist {
        Some(q) => {
            // The receiving server assigns the id of what it creates.
            if let Some(o) = body.as_object_mut() {
                o.remove("id");
            }
            json!({ "method": "POST", "url": kind, "ifNoneExist": q })
        }
        None => json!({ "method": "PUT", "url": format!("{kind}/{id}") }),
    };
    json!({ "fullUrl": format!("urn:uuid:{id}"), "resource": body, "request": request })
}

/// `$everything`'s parameters.
#[derive(Debug)]
struct EverythingParams {
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
    count: i64,
    after: Option<(DateTime<Utc>, Uuid)>,
}

impl EverythingParams {
    fn parse(raw: &str, max_page: i64) -> Result<Self, ApiError> {
        let mut p = EverythingParams {
            start: None,
            end: None,
            count: max_page,
            after: None,
        };
        for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
            match k.as_ref() {
                // A date's whole day, or a dateTime, as in a search's `date`.
                "start" => p.start = super::date_bound(&format!("ge{v}"))?.0,
                "end" => p.end = super::date_bound(&format!("le{v}"))?.1,
                "_count" => {
                    p.count = v.trim().parse().map_err(|_| {
                        ApiError::BadRequest(format!("_count {v:?}: expected a whole number"))
                    })?
                }
                "_cursor" => p.after = Some(parse_cursor(&v)?),
                "_format" => {}
                other => {
                    return Err(ApiError::BadRequest(format!(
                        "unsupported $everything parameter {other:?}"
                    )));
                }
            }
        }
        p.count = p.count.clamp(1, max_page.max(1));
        Ok(p)
    }
}

const ALL: Include = Include {
    devices: true,
    provenance: true,
};

/// `GET /fhir/Patient/{id}/$everything`.
pub async fn everything(
    State(state): State<ApiState>,
    headers: HeaderMap,
    ApiPath(patient): ApiPath<Uuid>,
    RawQuery(raw): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    let raw = raw.unwrap_or_default();
    let p = EverythingParams::parse(&raw, state.max_page)?;
    let mut s = Session::begin(&state, &headers).await?;
    let range = Range {
        from: p.start.unwrap_or(EARLIEST),
        to: p.end.unwrap_or(LATEST),
        after: p.after,
        take: Take::Page(p.count),
    };
    let checked = read_checked(&state, s.reader(), patient, &all_type_names(), &range).await?;
    let referenced = Referenced::read(s.reader(), patient, &checked, ALL).await?;
    let path = format!("/fhir/Patient/{patient}/$everything");
    s.finish(
        "fhir_everything",
        &path,
        Some(patient),
        checked.len(),
        json!({ "query": raw, "devices": referenced.sensors.len(), "proofs": referenced.proofs.len() }),
    )
    .await?;
    let next = (checked.len() as i64 == p.count)
        .then(|| checked.last())
        .flatten()
        .map(|(r, _)| {
            let mut q = form_urlencoded::Serializer::new(String::new());
            for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
                if k != "_cursor" {
                    q.append_pair(&k, &v);
                }
            }
            q.append_pair(
                "_cursor",
                &format!("{}_{}", r.recorded_at.timestamp_micros(), r.id),
            );
            format!("{path}?{}", q.finish())
        });
    let unproven = |r: &StoredReading, c: &Check| unproven_components(r, c, &state.keys);
    let entries: Vec<Value> =
        resources(patient, &checked, &unproven, &referenced, ALL, Refs::Server)
            .into_iter()
            .map(search_entry)
            .collect();
    let mut links = vec![json!({ "relation": "self", "url": format!("{path}?{raw}") })];
    if let Some(n) = next {
        links.push(json!({ "relation": "next", "url": n }));
    }
    Ok(fhir_json(bundle("searchset", links, entries)))
}

/// A `transaction` Bundle written page by page: each page's Observations,
/// then the Devices and Provenance it is the first to reference.
struct Transaction {
    written: Written,
    entries: u64,
}

impl Render for Transaction {
    fn head(&mut self) -> String {
        // The Bundle's own elements, then its entries as they come.
        let mut b = bundle("transaction", Vec::new(), Vec::new());
        if let Some(o) = b.as_object_mut() {
            o.remove("entry");
        }
        let mut head = b.to_string();
        head.pop();
        head.push_str(",\"entry\":[");
        head
    }

    async fn page(
        &mut self,
        export: &mut Export,
        page: Vec<(StoredReading, Check)>,
    ) -> Result<String, ApiError> {
        let scope = export.scope().clone();
        let range = ExportRange {
            from: scope.from,
            to: scope.to,
        };
        let referenced = Referenced::read_new(
            export.conn(),
            scope.patient,
            &page,
            ALL,
            &mut self.written,
            Some(range),
        )
        .await?;
        let keys = &export.state().keys;
        let unproven = |r: &StoredReading, c: &Check| unproven_components(r, c, keys);
        let mut text = String::new();
        for r in resources(
            scope.patient,
            &page,
            &unproven,
            &referenced,
            ALL,
            Refs::Transaction,
        ) {
            if self.entries > 0 {
                text.push(',');
            }
            self.entries += 1;
            text.push_str(&transaction_entry(r).to_string());
        }
        Ok(text)
    }

    fn tail(&mut self) -> String {
        "]}".to_owned()
    }
}

/// `GET /api/v1/patients/{id}/export.fhir.json`: the audit row
/// (`export_fhir`, with the count of readings) commits, then the Bundle
/// streams ([`crate::export`]).
pub async fn export_transaction(
    State(state): State<ApiState>,
    headers: HeaderMap,
    ApiPath(patient): ApiPath<Uuid>,
    RawQuery(raw): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    let raw = raw.unwrap_or_default();
    let (from, to) = export_range(&raw)?;
    let scope = Scope {
        patient,
        types: all_type_names(),
        from: from.unwrap_or(EARLIEST),
        to: to.unwrap_or(LATEST),
    };
    let resource = format!("/api/v1/patients/{patient}/export.fhir.json");
    let audit = Audit {
        action: "export_fhir",
        resource: &resource,
        detail: json!({ "query": raw }),
    };
    let (export, _) = Export::begin(&state, &headers, scope, audit).await?;
    let name = format!("attachment; filename=\"hailan-{patient}.fhir.json\"");
    Ok((
        [
            (header::CONTENT_TYPE, "application/fhir+json".to_owned()),
            (header::CONTENT_DISPOSITION, name),
        ],
        export::body(
            export,
            Transaction {
                written: Written::default(),
                entries: 0,
            },
        ),
    ))
}

/// An export's `from` / `to` (RFC 3339 times or dates).
fn export_range(raw: &str) -> Result<super::Bounds, ApiError> {
    let (mut from, mut to) = (None, None);
    for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
        match k.as_ref() {
            "from" => from = super::date_bound(&format!("ge{v}"))?.0,
            "to" => to = super::date_bound(&format!("le{v}"))?.1,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unsupported export parameter {other:?}"
                )));
            }
        }
    }
    Ok((from, to))
}

/// `GET /fhir/Device/{id}`: a sensor the caller may see, or a gateway one
/// of them came through.
pub async fn device(
    State(state): State<ApiState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<impl IntoResponse, ApiError> {
    let mut s = Session::begin(&state, &headers).await?;
    let sensor = store::sensor(s.reader(), id).await?;
    let body = match sensor {
        Some(d) => Some((d.user_id, trace::sensor_device(&d, Refs::Server))),
        None => {
            // Gateways of the devices the caller may see.
            let gateways = store::visible_gateways(s.reader()).await?;
            gateways
                .into_iter()
                .find(|(g, _)| trace::gateway_device_id(g) == id)
                .map(|(g, user)| (user, trace::gateway_device(&g)))
        }
    };
    let Some((owner, body)) = body else {
        return Err(ApiError::NotFound);
    };
    s.finish(
        "fhir_read_device",
        &format!("/fhir/Device/{id}"),
        Some(owner),
        1,
        json!({}),
    )
    .await?;
    Ok(fhir_json(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_parameters_parse_or_name_the_bad_one() {
        let p = EverythingParams::parse("start=2026-01-02&end=2026-01-03&_count=10", 500)
            .expect("parses");
        assert_eq!(
            p.start.map(|t| t.to_rfc3339()),
            Some("2026-01-02T00:00:00+00:00".into())
        );
        assert_eq!(
            p.end.map(|t| t.to_rfc3339()),
            Some("2026-01-03T23:59:59.999999+00:00".into())
        );
        assert_eq!(p.count, 10);
        assert_eq!(
            EverythingParams::parse("_count=99999", 500)
                .expect("clamped")
                .count,
            500
        );
        for bad in [
            "start=yesterday",
            "_count=x",
            "_since=2026-01-01",
            "_cursor=1",
        ] {
            assert!(
                matches!(
                    EverythingParams::parse(bad, 500),
                    Err(ApiError::BadRequest(_))
                ),
                "{bad}"
            );
        }
        assert!(
            matches!(export_range("type=x"), Err(ApiError::BadRequest(m)) if m.contains("\"type\""))
        );
    }

    #[test]
    fn a_transaction_entry_is_a_conditional_create_or_an_update_by_id() {
        let id = Uuid::from_u128(5);
        let create = transaction_entry(Resource {
            kind: "Observation",
            id,
            body: json!({ "resourceType": "Observation", "id": id }),
            matched: true,
            if_none_exist: Some("identifier=a|b".into()),
        });
        assert_eq!(create["request"]["method"], "POST");
        assert_eq!(create["request"]["ifNoneExist"], "identifier=a|b");
        assert!(create["resource"].get("id").is_none());
        assert_eq!(create["fullUrl"], format!("urn:uuid:{id}"));
        let update = transaction_entry(Resource {
            kind: "Provenance",
            id,
            body: json!({ "resourceType": "Provenance", "id": id }),
            matched: false,
            if_none_exist: None,
        });
        assert_eq!(update["request"]["method"], "PUT");
        assert_eq!(update["request"]["url"], format!("Provenance/{id}"));
        assert_eq!(update["resource"]["id"], json!(id));
    }
}
