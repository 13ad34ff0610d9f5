//! MQTT topic names of DESIGN §4: built and parsed here only.

use crate::envelope::is_valid_id;

/// Prefix of every hailan topic.
pub const PREFIX: &str = "hailan/v1";
/// The shared subscription ingest processes use to split the load.
pub const INGEST_SHARED_SUBSCRIPTION: &str = "$share/hailan-ingest/hailan/v1/+/up";
/// The gateways' status topics, subscribed by every ingest process (not
/// shared: each one follows every gateway's `online` / `offline`).
pub const STATUS_SUBSCRIPTION: &str = "hailan/v1/+/status";
/// Payload of the retained status topic while the gateway is connected.
pub const STATUS_ONLINE: &[u8] = b"online";
/// Payload of the retained status topic after the gateway left (its last will).
pub const STATUS_OFFLINE: &[u8] = b"offline";

/// `hailan/v1/{gateway_id}/up`: envelopes, QoS 1, not retained.
pub fn up(gateway_id: &str) -> String {
    format!("{PREFIX}/{gateway_id}/up")
}

/// `hailan/v1/{gateway_id}/status`: retained `online` / `offline`.
pub fn status(gateway_id: &str) -> String {
    format!("{PREFIX}/{gateway_id}/status")
}

/// What a hailan topic names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topic<'a> {
    /// `hailan/v1/{gateway_id}/up`: the gateway's envelopes.
    Up {
        /// The gateway the topic belongs to (a valid identifier).
        gateway_id: &'a str,
    },
    /// `hailan/v1/{gateway_id}/status`: the gateway's retained `online` / `offline`.
    Status {
        /// The gateway the topic belongs to (a valid identifier).
        gateway_id: &'a str,
    },
}

/// Parse a topic name; `None` if it is not a hailan v1 topic with a valid gateway id.
pub fn parse(topic: &str) -> Option<Topic<'_>> {
    let rest = topic.strip_prefix(PREFIX)?.strip_prefix('/')?;
    let (gateway_id, leaf) = rest.split_once('/')?;
    if !is_valid_id(gateway_id) {
        return None;
    }
    match leaf {
        "up" => Some(Topic::Up { gateway_id }),
        "status" => Some(Topic::Status { gateway_id }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        assert_eq!(up("gw-1"), "hailan/v1/gw-1/up");
        assert_eq!(parse(&up("gw-1")), Some(Topic::Up { gateway_id: "gw-1" }));
        assert_eq!(
            parse(&status("gw-1")),
            Some(Topic::Status { gateway_id: "gw-1" })
        );
    }

    #[test]
    fn rejects_foreign_and_malformed() {
        for t in [
            "hailan/v2/gw/up",
            "hailan/v1/gw/down",
            "hailan/v1//up",
            "hailan/v1/a/b/up",
            "hailan/v1/+/up",
            "hailan/v1/gw/up/extra",
            "",
        ] {
            assert_eq!(parse(t), None, "{t}");
        }
    }
}
