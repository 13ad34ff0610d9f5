//! Truthful link state: ingest follows every gateway's retained status
//! (`hailan/v1/{gateway}/status`, `online` / `offline`; the offline one is
//! the gateway's MQTT last will and what it says on a clean stop).
//!
//! On `offline`, seen at T: every device of that gateway becomes
//! `connection_state = 'UNKNOWN'` as of T (`state_observed_at` moves up to
//! T, so a device state the gateway observed before T — one still in flight
//! on the shared subscription — never overwrites it: [`crate::store`] keeps
//! the state with the latest observed time), and T is recorded as the
//! gateway's `offline_since` and the devices' `gateway_offline_since`. A
//! repeated `offline` (the retained one, delivered again on every
//! subscription) keeps the first T. On `online`: both are cleared; the
//! devices' states then come from the gateway's own device-state messages,
//! which it re-sends for every device on each connection.
//!
//! The topic's `{gateway}` is the gateway the broker authenticated: the
//! gateway listener's ACL (`pattern readwrite hailan/v1/%u/status`) lets an
//! account write only its own status topic.

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// What a gateway's status topic says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatewayStatus {
    /// `online`: the gateway is connected to the broker; `gateways.status`
    /// becomes `ONLINE` and its `offline_since` and its devices'
    /// `gateway_offline_since` are cleared.
    Online,
    /// `offline` (the gateway's last will, or what it says on a clean stop):
    /// `gateways.status` becomes `OFFLINE` and its devices'
    /// `connection_state` `UNKNOWN` as of when it was first seen.
    Offline,
}

impl GatewayStatus {
    /// The status of a payload of the status topic; `None` for anything else.
    pub fn parse(payload: &[u8]) -> Option<GatewayStatus> {
        match payload {
            p if p == hailan_proto::topic::STATUS_ONLINE => Some(GatewayStatus::Online),
            p if p == hailan_proto::topic::STATUS_OFFLINE => Some(GatewayStatus::Offline),
            _ => None,
        }
    }

    /// The payload text of the status (`online` / `offline`), also the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            GatewayStatus::Online => "online",
            GatewayStatus::Offline => "offline",
        }
    }
}

/// What applying a status changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Whether the gateway is enrolled (a status of an unknown gateway changes nothing).
    pub known_gateway: bool,
    /// Devices of the gateway whose row was updated.
    pub devices: u64,
    /// Since when the gateway is offline (`None` after `online`).
    pub offline_since: Option<DateTime<Utc>>,
}

/// Apply `status` of `gateway_id`, seen at `seen_at`, in one transaction as
/// `hailan_ingest`.
pub async fn apply(
    pool: &PgPool,
    gateway_id: &str,
    status: GatewayStatus,
    seen_at: DateTime<Utc>,
) -> Result<Applied> {
    let mut tx = pool
        .begin()
        .await
        .context("starting the gateway status transaction")?;
    sqlx::query("SET LOCAL ROLE hailan_ingest")
        .execute(&mut *tx)
        .await?;
    let offline_since: Option<Option<DateTime<Utc>>> = match status {
        GatewayStatus::Offline => sqlx::query_scalar(
            "UPDATE gateways SET status = 'OFFLINE', offline_since = COALESCE(offline_since, $2),
                    last_seen = GREATEST(last_seen, $2)
              WHERE id = $1 RETURNING offline_since",
        ),
        GatewayStatus::Online => sqlx::query_scalar(
            "UPDATE gateways SET status = 'ONLINE', offline_since = NULL,
                    last_seen = GREATEST(last_seen, $2)
              WHERE id = $1 RETURNING offline_since",
        ),
    }
    .bind(gateway_id)
    .bind(seen_at)
    .fetch_optional(&mut *tx)
    .await
    .context("updating the gateway's status")?;
    let Some(offline_since) = offline_since else {
        tx.commit().await.context("committing")?;
        return Ok(Applied {
            known_gateway: false,
            devices: 0,
            offline_since: None,
        });
    };
    // Device rows are locked in id order, as the batch writer locks them
    // (`store::lock_devices`), so the two never deadlock.
    sqlx::query("SELECT id FROM iot_devices WHERE gateway_id = $1 ORDER BY id FOR NO KEY UPDATE")
        .bind(gateway_id)
        .execute(&mut *tx)
        .await
        .context("locking the gateway's devices")?;
    let devices = match offline_since {
        Some(since) => sqlx::query(
            "UPDATE iot_devices
                SET connection_state = 'UNKNOWN', gateway_offline_since = $2,
                    state_observed_at = GREATEST(state_observed_at, $2)
              WHERE gateway_id = $1
                AND (connection_state <> 'UNKNOWN' OR gateway_offline_since IS DISTINCT FROM $2
                     OR state_observed_at IS NULL OR state_observed_at < $2)",
        )
        .bind(gateway_id)
        .bind(since),
        None => sqlx::query(
            "UPDATE iot_devices SET gateway_offline_since = NULL
              WHERE gateway_id = $1 AND gateway_offline_since IS NOT NULL",
        )
        .bind(gateway_id),
    }
    .execute(&mut *tx)
    .await
    .context("updating the gateway's devices")?
    .rows_affected();
    tx.commit().await.context("committing the gateway status")?;
    Ok(Applied {
        known_gateway: true,
        devices,
        offline_since,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_two_payloads_are_statuses() {
        assert_eq!(GatewayStatus::parse(b"online"), Some(GatewayStatus::Online));
        assert_eq!(
            GatewayStatus::parse(b"offline"),
            Some(GatewayStatus::Offline)
        );
        for p in [&b"ONLINE"[..], b"online\n", b"", b"off", b"\xff"] {
            assert_eq!(GatewayStatus::parse(p), None, "{p:?}");
        }
    }
}
