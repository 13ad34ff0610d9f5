//! A pulse oximeter's stored spot-checks (PLXS §3.5): measurements it took
//! while no gateway listened, kept for its Record Access Control Point
//! (0x2A52). PLX's RACP knows only the "all records" operator — no sequence
//! numbers to ask after, unlike a glucose meter — so on each connection the
//! session asks for all of them (they arrive on 0x2A5E, oldest first, then a
//! response code), waits until the pipeline says every one is in the outbox
//! ([`super::BleEvent::Stored`]), and only then deletes them from the device.
//! A record is thus never lost. It is taken twice — doubled rather than
//! lost — when the delete does not happen after the commit: the link drops
//! or the gateway stops in between, the pipeline does not answer within
//! [`STORED_WITHIN`], or some of the batch were refused (outbox full), in
//! which case all stay on the device and those already stored come again.
//! Bytes come from proto's encoders/decoders, never by hand.

use hailan_proto::gatt::racp::{RESPONSE_NO_RECORDS_FOUND, RESPONSE_SUCCESS, response_code_name};
use hailan_proto::gatt::{Racp, RacpFilter};

/// How long a session waits for the pipeline to confirm the spot-checks
/// are in the outbox before it leaves them on the device.
pub(crate) const STORED_WITHIN: std::time::Duration = std::time::Duration::from_secs(300);

/// "Report stored records: all".
pub(crate) fn report_all() -> Vec<u8> {
    Racp::ReportStoredRecords(RacpFilter::All).encode()
}

/// "Delete stored records: all".
pub(crate) fn delete_all() -> Vec<u8> {
    Racp::DeleteStoredRecords(RacpFilter::All).encode()
}

/// What an RACP indication says about the procedure in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// "Report stored records" ended: `true` if every record was sent.
    Reported(bool),
    /// "Delete stored records" ended: `true` if they are gone.
    Deleted(bool),
    /// Any other procedure ended.
    Other,
}

/// Read (and log) an RACP indication; `None` if it ends nothing.
pub(crate) fn answer(who: &str, bytes: &[u8]) -> Option<Answer> {
    match Racp::decode(bytes) {
        Ok(Racp::ResponseCode {
            request_op_code,
            response,
        }) => {
            let ok = response == RESPONSE_SUCCESS;
            if !ok && response != RESPONSE_NO_RECORDS_FOUND {
                tracing::warn!(
                    device = %who,
                    "RACP request {request_op_code} answered {response} ({})",
                    response_code_name(response)
                );
            }
            Some(match request_op_code {
                1 => Answer::Reported(ok),
                2 => Answer::Deleted(ok),
                _ => Answer::Other,
            })
        }
        Ok(Racp::NumberOfStoredRecords(n)) => {
            tracing::info!(device = %who, "RACP: {n} stored spot-checks");
            Some(Answer::Other)
        }
        Ok(other) => {
            tracing::warn!(device = %who, "RACP: unexpected indication {other:?}");
            None
        }
        Err(e) => {
            tracing::warn!(device = %who, "RACP: undecodable indication {bytes:02X?}: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers() {
        assert_eq!(report_all(), vec![0x01, 0x01]);
        assert_eq!(delete_all(), vec![0x02, 0x01]);
        assert_eq!(
            answer("o", &[0x06, 0x00, 0x01, 0x01]),
            Some(Answer::Reported(true))
        );
        assert_eq!(
            answer("o", &[0x06, 0x00, 0x01, 0x06]),
            Some(Answer::Reported(false))
        );
        assert_eq!(
            answer("o", &[0x06, 0x00, 0x02, 0x01]),
            Some(Answer::Deleted(true))
        );
        assert_eq!(answer("o", &[0x05, 0x00, 0x03, 0x00]), Some(Answer::Other));
        assert_eq!(answer("o", &[0xFF]), None);
    }
}
