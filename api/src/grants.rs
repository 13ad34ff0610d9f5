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
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use hailan_proto::DataType;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::AssertSqlSafe;
use uuid::Uuid;

/// A grant as the API shows it.
#[derive(Debug, sqlx::FromRow)]
struct GrantRow {
    id: Uuid,
    patient_id: Uuid,
    patient_did: String,
    patient_name: Option<String>,
    clinician_id: Uuid,
    clinician_did: String,
    clinician_name: Option<String>,
    data_types: Option<Vec<String>>,
    granted_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

const GRANT_SELECT: &str =
    "SELECT g.id, g.patient_id, p.did AS patient_did, p.display_name AS patient_name,
        g.clinician_id, c.did AS clinician_did, c.display_name AS clinician_name,
        g.data_types, g.granted_at, g.expires_at, g.revoked_at
   FROM care_grants g JOIN users p ON p.id = g.patient_id JOIN users c ON c.id = g.clinician_id";

impl GrantRow {
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
    let rows: Vec<GrantRow> = sqlx::query_as(AssertSqlSafe(format!(
        "{GRANT_SELECT} WHERE g.patient_id = hailan_current_user() OR g.clinician_id = hailan_current_user()
          ORDER BY g.granted_at DESC, g.id"
    )))
    .fetch_all(s.writer())
    .await?;
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
    let clinician: Option<(Uuid, String)> =
        sqlx::query_as("SELECT id, user_kind FROM users WHERE did = $1")
            .bind(new.clinician.trim())
            .fetch_optional(s.writer())
            .await?;
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
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO care_grants (patient_id, clinician_id, data_types, expires_at)
         VALUES (hailan_current_user(), $1, $2, $3) RETURNING id",
    )
    .bind(clinician)
    .bind(&new.data_types)
    .bind(new.expires_at)
    .fetch_one(s.writer())
    .await?;
    let row: GrantRow = sqlx::query_as(AssertSqlSafe(format!("{GRANT_SELECT} WHERE g.id = $1")))
        .bind(id)
        .fetch_one(s.writer())
        .await?;
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
    sqlx::query(
        "UPDATE care_grants SET revoked_at = now()
          WHERE id = $1 AND patient_id = hailan_current_user() AND revoked_at IS NULL",
    )
    .bind(id)
    .execute(s.writer())
    .await?;
    let row: Option<GrantRow> = sqlx::query_as(AssertSqlSafe(format!(
        "{GRANT_SELECT} WHERE g.id = $1 AND g.patient_id = hailan_current_user()"
    )))
    .bind(id)
    .fetch_optional(s.writer())
    .await?;
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
