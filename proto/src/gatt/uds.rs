//! User Data Service (0x181C): the user slots of a shared device — a
//! family scale or cuff — and the consent that lets a collector act for one.
//!
//! | characteristic | UUID | properties | value |
//! |---|---|---|---|
//! | Database Change Increment | 0x2A99 | read, write, notify | uint32 |
//! | User Index | 0x2A9A | read | uint8, 0xFF = unknown user |
//! | User Control Point | 0x2A9F | write, indicate | below |
//!
//! User Control Point: Op Code uint8, then its parameter.
//!
//! | op code | meaning | parameter |
//! |---|---|---|
//! | 0x01 | Register New User | Consent Code uint16 |
//! | 0x02 | Consent | User Index uint8, Consent Code uint16 |
//! | 0x03 | Delete User Data | none (the user consented on this link) |
//! | 0x20 | Response Code | Request Op Code uint8, Response Value uint8, then for a successful Register New User the new User Index uint8 |
//!
//! Response values: 0x01 success, 0x02 op code not supported, 0x03 invalid
//! parameter, 0x04 operation failed, 0x05 user not authorized. A consent
//! code is 0x0000–0x270F (0–9999, four digits the device shows or its
//! owner chose); anything larger is an invalid parameter.
//!
//! The decoder is strict: unknown op codes, a consent code out of range,
//! short or extra bytes are errors. Measurements name their user in their
//! own User ID field (Blood Pressure 0x2A35 flag bit 3, Weight 0x2A9D bit 2,
//! Body Composition 0x2A9C bit 2), decoded with them.

use super::GattError;
use super::codec::{Reader, Writer};

/// The service.
pub const USER_DATA_SERVICE: u16 = 0x181C;
/// Database Change Increment.
pub const DATABASE_CHANGE_INCREMENT: u16 = 0x2A99;
/// User Index.
pub const USER_INDEX: u16 = 0x2A9A;
/// User Control Point.
pub const USER_CONTROL_POINT: u16 = 0x2A9F;
/// The User Index (and measurement User ID) of a user the device does not know.
pub const UNKNOWN_USER: u8 = 0xFF;
/// The largest consent code (9999).
pub const MAX_CONSENT_CODE: u16 = 0x270F;

/// Response value: success.
pub const UCP_SUCCESS: u8 = 0x01;
/// Response value: the consent code did not match (or no user consented).
pub const UCP_USER_NOT_AUTHORIZED: u8 = 0x05;

/// A User Control Point request (written) or response (indicated).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UserControl {
    /// 0x01: make a new user slot, protected by `consent`.
    RegisterNewUser {
        /// 0–9999.
        consent: u16,
    },
    /// 0x02: act for user `user_index` on this link, proven by `consent`.
    Consent {
        /// The slot.
        user_index: u8,
        /// 0–9999.
        consent: u16,
    },
    /// 0x03: delete the data of the user who consented on this link.
    DeleteUserData,
    /// 0x20: the answer to a request.
    Response {
        /// The op code of the request this answers.
        request_op_code: u8,
        /// 0x01 success … 0x05 user not authorized ([`response_name`]).
        value: u8,
        /// The new user's index, for a successful Register New User.
        user_index: Option<u8>,
    },
}

/// Name of a response value.
pub fn response_name(v: u8) -> &'static str {
    match v {
        0x01 => "Success",
        0x02 => "Op Code not supported",
        0x03 => "Invalid Parameter",
        0x04 => "Operation Failed",
        0x05 => "User Not Authorized",
        _ => "Reserved",
    }
}

fn consent(r: &mut Reader<'_>) -> Result<u16, GattError> {
    let c = r.u16("consent code")?;
    if c > MAX_CONSENT_CODE {
        return Err(GattError::Invalid {
            field: "consent code",
            reason: format!("{c} is above 9999"),
        });
    }
    Ok(c)
}

impl UserControl {
    /// The op code byte.
    pub fn op_code(&self) -> u8 {
        match self {
            UserControl::RegisterNewUser { .. } => 0x01,
            UserControl::Consent { .. } => 0x02,
            UserControl::DeleteUserData => 0x03,
            UserControl::Response { .. } => 0x20,
        }
    }

    /// Decode a written or indicated value.
    pub fn decode(bytes: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(bytes)?;
        let v = match r.u8("op code")? {
            0x01 => UserControl::RegisterNewUser {
                consent: consent(&mut r)?,
            },
            0x02 => UserControl::Consent {
                user_index: r.u8("user index")?,
                consent: consent(&mut r)?,
            },
            0x03 => UserControl::DeleteUserData,
            0x20 => {
                let request_op_code = r.u8("request op code")?;
                let value = r.u8("response value")?;
                let user_index = if request_op_code == 0x01 && value == UCP_SUCCESS {
                    Some(r.u8("user index")?)
                } else {
                    None
                };
                UserControl::Response {
                    request_op_code,
                    value,
                    user_index,
                }
            }
            other => {
                return Err(GattError::Invalid {
                    field: "op code",
                    reason: format!("unknown op code {other:#04x}"),
                });
            }
        };
        r.finish()?;
        Ok(v)
    }

    /// The value to write or indicate.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(self.op_code());
        match self {
            UserControl::RegisterNewUser { consent } => {
                w.u16(*consent);
            }
            UserControl::Consent {
                user_index,
                consent,
            } => {
                w.u8(*user_index).u16(*consent);
            }
            UserControl::DeleteUserData => {}
            UserControl::Response {
                request_op_code,
                value,
                user_index,
            } => {
                w.u8(*request_op_code).u8(*value);
                if let Some(u) = user_index {
                    w.u8(*u);
                }
            }
        }
        w.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_round_trip_with_their_bytes() {
        let cases: [(UserControl, &[u8]); 5] = [
            (
                UserControl::RegisterNewUser { consent: 1234 },
                &[0x01, 0xD2, 0x04],
            ),
            (
                UserControl::Consent {
                    user_index: 2,
                    consent: 9999,
                },
                &[0x02, 0x02, 0x0F, 0x27],
            ),
            (UserControl::DeleteUserData, &[0x03]),
            (
                UserControl::Response {
                    request_op_code: 0x01,
                    value: UCP_SUCCESS,
                    user_index: Some(3),
                },
                &[0x20, 0x01, 0x01, 0x03],
            ),
            (
                UserControl::Response {
                    request_op_code: 0x02,
                    value: UCP_USER_NOT_AUTHORIZED,
                    user_index: None,
                },
                &[0x20, 0x02, 0x05],
            ),
        ];
        for (v, bytes) in cases {
            assert_eq!(v.encode(), bytes, "{v:?}");
            assert_eq!(UserControl::decode(bytes).expect("decodes"), v);
        }
    }

    #[test]
    fn bad_values_are_errors() {
        for bad in [
            &[][..],
            &[0x04],
            &[0x01, 0x10, 0x27],       // consent 10000
            &[0x02, 0x01, 0x0F],       // short
            &[0x03, 0x00],             // extra byte
            &[0x20, 0x01, 0x01],       // success without the new index
            &[0x20, 0x02, 0x01, 0x00], // extra byte
        ] {
            assert!(UserControl::decode(bad).is_err(), "{bad:02X?}");
        }
        assert_eq!(response_name(0x05), "User Not Authorized");
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_or_fail_and_what_decodes_encodes_back(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..8)
        ) {
            if let Ok(v) = UserControl::decode(&bytes) {
                proptest::prop_assert_eq!(v.encode(), bytes);
            }
        }
    }
}
