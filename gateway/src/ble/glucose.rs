//! Glucose meters keep their records; the gateway fetches them with the
//! Record Access Control Point (RACP, 0x2A52): "report stored records ≥
//! cursor + 1" (or all when there is no cursor), then the records arrive on
//! 0x2A18 (+ 0x2A34) and an indication on 0x2A52 ends the procedure.
//! Bytes come from proto's encoders/decoders, never by hand.

use hailan_proto::gatt::racp::{RESPONSE_NO_RECORDS_FOUND, RESPONSE_SUCCESS, response_code_name};
use hailan_proto::gatt::{GlucoseMeasurement, Racp};
use std::time::Duration;

/// How long a meter may take to send its records and the RACP response.
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// The last sequence number already held, from a cursor (-1 = none).
pub(crate) fn last_seen(cursor: i32) -> Option<u16> {
    u16::try_from(cursor).ok()
}

/// The later of two "last seen" sequence numbers.
pub(crate) fn later(a: Option<u16>, b: Option<u16>) -> Option<u16> {
    a.max(b)
}

/// The RACP request for the records after `last_seen`.
pub(crate) fn request(last_seen: Option<u16>) -> (Racp, Vec<u8>) {
    let r = Racp::records_after(last_seen);
    (r, r.encode())
}

/// The sequence number of a 0x2A18 record, if it decodes.
pub(crate) fn sequence_number(bytes: &[u8]) -> Option<u16> {
    GlucoseMeasurement::decode(bytes)
        .ok()
        .map(|g| g.sequence_number)
}

/// Log a RACP indication. Returns true when it ends the pending procedure.
pub(crate) fn on_response(who: &str, bytes: &[u8]) -> bool {
    match Racp::decode(bytes) {
        Ok(Racp::ResponseCode {
            request_op_code,
            response,
        }) => {
            match response {
                RESPONSE_SUCCESS => {
                    tracing::info!(device = %who, "RACP: stored records transferred")
                }
                RESPONSE_NO_RECORDS_FOUND => {
                    tracing::debug!(device = %who, "RACP: no new records")
                }
                other => tracing::warn!(
                    device = %who,
                    "RACP request {request_op_code} answered {other} ({})",
                    response_code_name(other)
                ),
            }
            true
        }
        Ok(Racp::NumberOfStoredRecords(n)) => {
            tracing::info!(device = %who, "RACP: {n} stored records");
            true
        }
        Ok(other) => {
            tracing::warn!(device = %who, "RACP: unexpected indication {other:?}");
            false
        }
        Err(e) => {
            tracing::warn!(device = %who, "RACP: undecodable indication {bytes:02X?}: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_follow_the_cursor() {
        assert_eq!(request(last_seen(-1)).1, vec![0x01, 0x01]);
        assert_eq!(request(last_seen(5)).1, vec![0x01, 0x03, 0x01, 6, 0]);
        assert_eq!(later(last_seen(5), Some(9)), Some(9));
        assert_eq!(later(None, last_seen(-1)), None);
        assert!(on_response("g", &[0x06, 0x00, 0x01, 0x06]));
        assert!(!on_response("g", &[0xFF]));
    }
}
