//! The JSON the API answers with for a reading and a device's link: one
//! mapping from what is stored and checked to what a client is shown, kept
//! apart from the handlers that read it so each reads as its steps.

use crate::check::{Check, StoredReading};
use chrono::{DateTime, Utc};
use hailan_proto::DataType;
use serde_json::{Value, json};

/// The JSON of one checked reading.
pub fn observation_json(r: &StoredReading, c: &Check) -> Value {
    let spec = DataType::from_name(&r.data_type).map(|t| t.spec());
    let (status, values, reason) = match c {
        Check::Verified(slots) => {
            let mut values = serde_json::Map::new();
            if let Some(spec) = spec {
                for (s, v) in spec.slots.iter().zip(slots) {
                    values.insert(
                        s.name.into(),
                        json!({ "value": s.to_decimal(*v), "unit": s.unit }),
                    );
                }
            }
            ("verified", Value::Object(values), Value::Null)
        }
        Check::Unverifiable(why) => ("unverifiable", Value::Null, Value::String(why.clone())),
    };
    json!({
        "id": r.id,
        "data_type": r.data_type,
        "recorded_at": r.recorded_at,
        "seq": r.seq,
        "device": { "id": r.device_id, "device_id": r.device_ext(),
                    "name": r.device.as_ref().and_then(|d| d.name.as_deref()) },
        "status": status,
        "values": values,
        "reason": reason,
        "proof": { "hash": r.zk_proof_hash, "statement": r.statement(),
                   "key_id": r.proof.as_ref().map(|p| &p.key_id) },
        "ipfs_data_cid": r.ipfs_data_cid,
    })
}

/// What the page and the API may say about a device's link, `now`.
#[derive(Debug, PartialEq, Eq)]
pub struct LinkView {
    /// The reported `CONNECTED` or `DISCONNECTED` only when the state is
    /// fresh and its gateway online; a stale state, or any state while the
    /// gateway is offline, is `UNKNOWN`.
    pub connection_state: &'static str,
    /// The state was observed more than `stale_after` before `now` (or never).
    pub stale: bool,
}

/// The link of a device whose last state is `reported`, observed at
/// `observed_at`, its gateway offline since `gateway_offline_since`.
pub fn link_view(
    reported: &str,
    observed_at: Option<DateTime<Utc>>,
    gateway_offline_since: Option<DateTime<Utc>>,
    stale_after: std::time::Duration,
    now: DateTime<Utc>,
) -> LinkView {
    let stale = observed_at.is_none_or(|t| {
        chrono::Duration::from_std(stale_after).is_ok_and(|d| now.signed_duration_since(t) > d)
    });
    let connection_state = match reported {
        "CONNECTED" if !stale && gateway_offline_since.is_none() => "CONNECTED",
        "DISCONNECTED" if !stale && gateway_offline_since.is_none() => "DISCONNECTED",
        _ => "UNKNOWN",
    };
    LinkView {
        connection_state,
        stale,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn connected_only_when_fresh_and_the_gateway_is_online() {
        let now = Utc::now();
        let fresh = Some(now - chrono::Duration::seconds(10));
        let old = Some(now - chrono::Duration::seconds(901));
        let after = Duration::from_secs(900);
        let v = |r, at, off| link_view(r, at, off, after, now);
        assert_eq!(
            v("CONNECTED", fresh, None),
            LinkView {
                connection_state: "CONNECTED",
                stale: false
            }
        );
        assert_eq!(
            v("CONNECTED", old, None),
            LinkView {
                connection_state: "UNKNOWN",
                stale: true
            }
        );
        assert_eq!(v("CONNECTED", None, None).connection_state, "UNKNOWN");
        assert!(v("CONNECTED", None, None).stale);
        assert_eq!(
            v("CONNECTED", fresh, Some(now)).connection_state,
            "UNKNOWN",
            "the gateway is offline"
        );
        assert_eq!(
            v("DISCONNECTED", fresh, None).connection_state,
            "DISCONNECTED"
        );
        assert_eq!(v("DISCONNECTED", old, None).connection_state, "UNKNOWN");
        assert_eq!(v("UNKNOWN", fresh, None).connection_state, "UNKNOWN");
        // A clock ahead of ours is not stale.
        let ahead = Some(now + chrono::Duration::seconds(60));
        assert!(!v("CONNECTED", ahead, None).stale);
    }
}
