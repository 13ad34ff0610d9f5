//! `hailan-ingest admin`: the operator's tools — users (patients, clinicians)
//! by DID, gateways enrolled for an owner, a patient's grants to a clinician,
//! and API tokens. Runs with the owner login (not the ingest role).

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

/// The kinds of account (`users.user_kind`).
pub const USER_KINDS: [&str; 4] = ["PATIENT", "CLINICIAN", "AUDITOR", "ADMIN"];

/// Create a user (or return the existing one with this DID).
pub async fn add_user(
    pool: &PgPool,
    did: &str,
    kind: &str,
    display_name: Option<&str>,
) -> Result<Uuid> {
    if !USER_KINDS.contains(&kind) {
        bail!("user kind {kind:?} is not one of {}", USER_KINDS.join(", "));
    }
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO users (did, user_kind, display_name) VALUES ($1, $2, $3)
         ON CONFLICT (did) DO UPDATE SET display_name = COALESCE(EXCLUDED.display_name, users.display_name)
         RETURNING id",
    )
    .bind(did)
    .bind(kind)
    .bind(display_name)
    .fetch_one(pool)
    .await
    .with_context(|| format!("creating user {did}"))?;
    Ok(id)
}

pub use hailan_db::user_id;

/// Enrol gateway `gateway_id` (its MQTT user name) for the owner `owner_did`.
pub async fn enrol_gateway(
    pool: &PgPool,
    gateway_id: &str,
    owner_did: &str,
    name: Option<&str>,
) -> Result<()> {
    if !hailan_proto::envelope::is_valid_id(gateway_id) {
        bail!("gateway id {gateway_id:?} must be 1–64 characters of A-Z a-z 0-9 - _ . :");
    }
    let owner = user_id(pool, owner_did).await?;
    let r = sqlx::query(
        "INSERT INTO gateways (id, owner_id, name) VALUES ($1, $2, $3)
         ON CONFLICT (id) DO UPDATE SET name = COALESCE(EXCLUDED.name, gateways.name), revoked_at = NULL
         WHERE gateways.owner_id = EXCLUDED.owner_id",
    )
    .bind(gateway_id)
    .bind(owner)
    .bind(name)
    .execute(pool)
    .await?;
    if r.rows_affected() == 0 {
        bail!("gateway {gateway_id} is enrolled for another owner");
    }
    Ok(())
}

/// Let gateway `gateway_id` register devices for `patient_did` as well as
/// for its owner: a shared device's user slot mapped to that patient
/// (WIRE.md §2.2 `patient`). Adding a patient twice changes nothing.
pub async fn enrol_patient(pool: &PgPool, gateway_id: &str, patient_did: &str) -> Result<()> {
    let patient = user_id(pool, patient_did).await?;
    let kind: String = sqlx::query_scalar("SELECT user_kind::text FROM users WHERE id = $1")
        .bind(patient)
        .fetch_one(pool)
        .await
        .with_context(|| format!("reading the kind of {patient_did}"))?;
    if kind != "PATIENT" {
        bail!("{patient_did} is a {kind}, not a PATIENT: a gateway serves patients only");
    }
    sqlx::query(
        "INSERT INTO gateway_patients (gateway_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(gateway_id)
    .bind(patient)
    .execute(pool)
    .await
    .with_context(|| format!("enrolling gateway {gateway_id} for patient {patient_did}"))?;
    Ok(())
}

/// Stop gateway `gateway_id` serving `patient_did` (undoes
/// [`enrol_patient`]): their user slots' registrations and readings from it
/// are quarantined `unknown_patient` from now on; what is stored stays.
pub async fn withdraw_patient(pool: &PgPool, gateway_id: &str, patient_did: &str) -> Result<()> {
    let patient = user_id(pool, patient_did).await?;
    let r = sqlx::query("DELETE FROM gateway_patients WHERE gateway_id = $1 AND user_id = $2")
        .bind(gateway_id)
        .bind(patient)
        .execute(pool)
        .await
        .with_context(|| format!("withdrawing patient {patient_did} from gateway {gateway_id}"))?;
    if r.rows_affected() == 0 {
        bail!("gateway {gateway_id} is not enrolled for patient {patient_did}");
    }
    Ok(())
}

/// Let `clinician_did` read `patient_did`'s data of `data_types` (all when
/// `None`) until `expires_at` (for ever when `None`).
pub async fn grant(
    pool: &PgPool,
    patient_did: &str,
    clinician_did: &str,
    data_types: Option<Vec<String>>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<Uuid> {
    if let Some(types) = &data_types {
        for t in types {
            t.parse::<hailan_proto::DataType>()?;
        }
    }
    let patient = user_id(pool, patient_did).await?;
    let clinician = user_id(pool, clinician_did).await?;
    let id = sqlx::query_scalar(
        "INSERT INTO care_grants (patient_id, clinician_id, data_types, expires_at) VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(patient)
    .bind(clinician)
    .bind(data_types)
    .bind(expires_at)
    .fetch_one(pool)
    .await?;
    Ok(id)
}

/// Revoke every active grant from `patient_did` to `clinician_did`; returns how many.
pub async fn revoke(pool: &PgPool, patient_did: &str, clinician_did: &str) -> Result<u64> {
    let patient = user_id(pool, patient_did).await?;
    let clinician = user_id(pool, clinician_did).await?;
    let r = sqlx::query(
        "UPDATE care_grants SET revoked_at = now()
          WHERE patient_id = $1 AND clinician_id = $2 AND revoked_at IS NULL",
    )
    .bind(patient)
    .bind(clinician)
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}

/// Issue an API bearer token for `did`, valid `days`; only its hash is stored.
pub async fn issue_token(
    pool: &PgPool,
    did: &str,
    days: i64,
    label: Option<&str>,
) -> Result<String> {
    let user = user_id(pool, did).await?;
    let mut raw = [0u8; 32];
    OsRng.fill_bytes(&mut raw);
    let token = format!("hl_{}", hex::encode(raw));
    sqlx::query(
        "INSERT INTO api_tokens (user_id, token_sha256, label, expires_at)
         VALUES ($1, $2, $3, now() + make_interval(days => $4))",
    )
    .bind(user)
    .bind(hex::encode(Sha256::digest(token.as_bytes())))
    .bind(label)
    .bind(i32::try_from(days).context("token lifetime in days is too large")?)
    .execute(pool)
    .await?;
    Ok(token)
}

/// `hailan-ingest admin revoke-tokens`: revoke every unrevoked API token of
/// the user with this DID; returns how many.
pub async fn revoke_tokens(pool: &PgPool, did: &str) -> Result<u64> {
    let user = user_id(pool, did).await?;
    let r = sqlx::query(
        "UPDATE api_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
    )
    .bind(user)
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}
