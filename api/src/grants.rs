//! Grants in the patient's hands: `GET /api/v1/grants` lists the grants the
//! caller is a party to (a patient's given, a clinician's held);
//! `POST /api/v1/grants` (`{"clinician": DID, "data_types": [..] | null,
//! "expires_at": RFC 3339 | null}`) gives one; `DELETE /api/v1/grants/{id}`
//! revokes one. Only a patient gives and revokes, and only their own:
//! the API refuses a clinician with a 403, and PostgreSQL would refuse the
//! row anyway (migration 0010: `hailan_patient` may insert grants from
//! itself to a clinician and set `revoked_at` on its own). Every call is
//! audited (`read_grants`, `grant_access`, `revoke_grant`); the admin CLI's
//! `grant` / `revoke` stay for operators.

use super::params::ApiPath;
use super::session::{Kind, Session};
use super::{ApiError, ApiState};
use crate::store::{self, GrantRow};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use hailan_proto::DataType;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

impl GrantRow {
    /// The grant as the API shows it, `active` as of `now`.
    fn json(&self, now: DateTime<Utc>) -> Value {
        let active = self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > now);
        json!({
            "id": self.id,
            "patient": { "id": self.patient_id, "did": self.patient_did, "name": self.patient_name },
            "clinician": { "id": self.clinician_id, "did": self.clinician_did, "name": self.clinician_name },
            "data_types": self.data_types,
            "granted_at": self.granted_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "active": active,
        })
    }
}

/// What a patient sends to give a grant.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewGrant {
    /// The clinician's DID.
    pub clinician: String,
    /// Data type names; absent or null: every type.
    #[serde(default)]
    pub data_types: Option<Vec<String>>,
    /// Absent or null: until revoked.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

impl NewGrant {
    /// Parse and check a request body; every problem is a 400 naming the field.
    pub fn parse(body: &[u8], now: DateTime<Utc>) -> Result<NewGrant, ApiError> {
        let g: NewGrant = serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("grant: {e}")))?;
        if g.clinician.trim().is_empty() {
            return Err(ApiError::BadRequest(
                "clinician: the clinician's DID is required".into(),
            ));
        }
        if let Some(types) = &g.data_types {
            if types.is_empty() {
                return Err(ApiError::BadRequest(
                    "data_types: name at least one, or leave it out for every type".into(),
                ));
            }
            for t in types {
                if DataType::from_name(t).is_none() {
                    return Err(ApiError::BadRequest(format!(
                        "data_types: unknown data type {t:?}"
                    )));
                }
            }
        }
        if g.expires_at.is_some_and(|e| e <= now) {
            return Err(ApiError::BadRequest(
                "expires_at: must be in the future".into(),
            ));
        }
        Ok(g)
    }
}

fn patients_only(s: &Session, what: &str) -> Result<(), ApiError> {
    match s.kind {
        Kind::Patient => Ok(()),
        Kind::Clinician => Err(ApiError::Forbidden(format!(
            "only a patient {what} (their own grants)"
        ))),
    }
}

/// `GET /api/v1/grants`.
pub async fn list(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let mut s = Session::begin(&state, &headers).await?;
    let rows = store::grants_of_caller(s.writer()).await?;
    let n = rows.len();
    s.finish("read_grants", "/api/v1/grants", None, n, json!({}))
        .await?;
    let now = Utc::now();
    Ok(Json(
        json!({ "grants": rows.iter().map(|g| g.json(now)).collect::<Vec<_>>() }),
    ))
}

/// `POST /api/v1/grants`.
pub async fn create(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let now = Utc::now();
    let new = NewGrant::parse(&body, now)?;
    let mut s = Session::begin(&state, &headers).await?;
    patients_only(&s, "gives access")?;
    let clinician = store::user_by_did(s.writer(), new.clinician.trim()).await?;
    let clinician = match clinician {
        Some((id, kind)) if kind == "CLINICIAN" => id,
        Some(_) => {
            return Err(ApiError::BadRequest(format!(
                "clinician: {} is not a clinician",
                new.clinician
            )));
        }
        None => {
            return Err(ApiError::BadRequest(format!(
                "clinician: no user has the DID {}",
                new.clinician
            )));
        }
    };
    let row = store::give_grant(s.writer(), clinician, &new.data_types, new.expires_at).await?;
    let id = row.id;
    let patient = s.user_id;
    s.finish(
        "grant_access",
        &format!("/api/v1/grants/{id}"),
        Some(patient),
        1,
        json!({ "clinician": clinician, "data_types": new.data_types, "expires_at": new.expires_at }),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(row.json(now))))
}

/// `DELETE /api/v1/grants/{id}`: revoked from now; revoking a revoked grant
/// changes nothing and answers as the first time.
pub async fn revoke(
    State(state): State<ApiState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Value>, ApiError> {
    let mut s = Session::begin(&state, &headers).await?;
    patients_only(&s, "revokes access")?;
    let row = store::revoke_grant(s.writer(), id).await?;
    let Some(row) = row else {
        return Err(ApiError::NotFound);
    };
    let patient = s.user_id;
    s.finish(
        "revoke_grant",
        &format!("/api/v1/grants/{id}"),
        Some(patient),
        1,
        json!({ "clinician": row.clinician_id }),
    )
    .await?;
    Ok(Json(row.json(Utc::now())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("time")
    }

    #[test]
    fn a_grant_request_is_checked_field_by_field() {
        let ok = NewGrant::parse(
            br#"{"clinician":"did:example:doc","data_types":["HEART_RATE"],"expires_at":"2030-01-01T00:00:00Z"}"#,
            now(),
        )
        .expect("valid");
        assert_eq!(ok.data_types, Some(vec!["HEART_RATE".to_owned()]));
        assert!(NewGrant::parse(br#"{"clinician":"did:example:doc"}"#, now()).is_ok());
        for (body, names) in [
            (&br#"{"data_types":null}"#[..], "clinician"),
            (br#"{"clinician":" "}"#, "clinician"),
            (br#"{"clinician":"d","data_types":["PULSE"]}"#, "data_types"),
            (br#"{"clinician":"d","data_types":[]}"#, "data_types"),
            (
                br#"{"clinician":"d","expires_at":"2020-01-01T00:00:00Z"}"#,
                "expires_at",
            ),
            (br#"{"clinician":"d","expires_at":"soon"}"#, "grant"),
            (br#"{"clinician":"d","role":"admin"}"#, "role"),
            (b"not json", "grant"),
        ] {
            match NewGrant::parse(body, now()) {
                Err(ApiError::BadRequest(m)) => assert!(m.contains(names), "{m}"),
                other => panic!("{}: {other:?}", String::from_utf8_lossy(body)),
            }
        }
    }
}
