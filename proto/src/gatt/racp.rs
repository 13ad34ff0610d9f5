//! Record Access Control Point 0x2A52 (write + indicate), as used by the
//! Glucose service (also CGMS and PLX).
//!
//! Format: Op Code uint8, Operator uint8, Operand (variable).
//!
//! | op code | meaning | operator | operand |
//! |---|---|---|---|
//! | 1 | Report stored records | filter (below) | filter operand |
//! | 2 | Delete stored records | filter | filter operand |
//! | 3 | Abort operation | Null (0) | none |
//! | 4 | Report number of stored records | filter | filter operand |
//! | 5 | Number of stored records response | Null | uint16 count |
//! | 6 | Response code | Null | request op code uint8 + response value uint8 |
//!
//! Operators: 0 Null, 1 all records, 2 ≤, 3 ≥, 4 within range (inclusive),
//! 5 first record, 6 last record. Operators 2–4 carry a filter type
//! (1 = sequence number, then uint16 value(s); 2 = user-facing time, then
//! Date Time value(s)); 1, 5 and 6 carry no operand.
//!
//! There is no strict "greater than": to fetch new records, ask for
//! `≥ last_seen + 1` ([`Racp::records_after`]). Response values: 1 success,
//! 2 op code not supported, 3 invalid operator, 4 operator not supported,
//! 5 invalid operand, 6 no records found, 7 abort unsuccessful, 8 procedure
//! not completed, 9 operand not supported.
//!
//! The decoder is strict: unknown op codes, operators and filter types,
//! a non-Null operator where Null is required, short or extra operand bytes
//! are errors (the GLS count is uint16; Nordic's lenient 1/2/4-byte counts
//! are not accepted).

use super::GattError;
use super::codec::{Reader, Writer};
use super::datetime::DateTime;
use serde_json::{Map, Value, json};

/// The value of a ≤ or ≥ filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RacpOperand {
    /// Filter type 1.
    SequenceNumber(u16),
    /// Filter type 2.
    UserFacingTime(DateTime),
}

/// Which records a request is about (operator + operand).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RacpFilter {
    /// Operator 1.
    All,
    /// Operator 2.
    LessOrEqual(RacpOperand),
    /// Operator 3.
    GreaterOrEqual(RacpOperand),
    /// Operator 4, filter type 1, inclusive.
    SequenceRange(u16, u16),
    /// Operator 4, filter type 2, inclusive.
    TimeRange(DateTime, DateTime),
    /// Operator 5.
    First,
    /// Operator 6.
    Last,
}

impl RacpFilter {
    /// The operator byte.
    pub fn operator(&self) -> u8 {
        match self {
            RacpFilter::All => 1,
            RacpFilter::LessOrEqual(_) => 2,
            RacpFilter::GreaterOrEqual(_) => 3,
            RacpFilter::SequenceRange(..) | RacpFilter::TimeRange(..) => 4,
            RacpFilter::First => 5,
            RacpFilter::Last => 6,
        }
    }
}

/// A RACP request (written by the collector) or response (indicated by the server).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Racp {
    /// Op code 1.
    ReportStoredRecords(RacpFilter),
    /// Op code 2.
    DeleteStoredRecords(RacpFilter),
    /// Op code 3, operator Null.
    Abort,
    /// Op code 4.
    ReportNumberOfStoredRecords(RacpFilter),
    /// Op code 5, operator Null, uint16 count.
    NumberOfStoredRecords(u16),
    /// Op code 6, operator Null.
    ResponseCode {
        /// The op code of the request this answers.
        request_op_code: u8,
        /// Response Code Value: 1 success, 6 no records found, … (see
        /// [`response_code_name`]).
        response: u8,
    },
}

/// Response value 1.
pub const RESPONSE_SUCCESS: u8 = 1;
/// Response value 6.
pub const RESPONSE_NO_RECORDS_FOUND: u8 = 6;

/// Name of an op code.
pub fn op_code_name(op: u8) -> &'static str {
    match op {
        1 => "Report stored records",
        2 => "Delete stored records",
        3 => "Abort operation",
        4 => "Report number of stored records",
        5 => "Number of stored records response",
        6 => "Response code",
        _ => "Reserved",
    }
}

/// Name of an operator.
pub fn operator_name(op: u8) -> &'static str {
    match op {
        0 => "Null",
        1 => "All records",
        2 => "Less than or equal to",
        3 => "Greater than or equal to",
        4 => "Within range of (inclusive)",
        5 => "First record",
        6 => "Last record",
        _ => "Reserved",
    }
}

/// Name of a response value.
pub fn response_code_name(v: u8) -> &'static str {
    match v {
        1 => "Success",
        2 => "Op code not supported",
        3 => "Invalid operator",
        4 => "Operator not supported",
        5 => "Invalid operand",
        6 => "No records found",
        7 => "Abort unsuccessful",
        8 => "Procedure not completed",
        9 => "Operand not supported",
        _ => "Reserved",
    }
}

fn invalid(field: &'static str, reason: String) -> GattError {
    GattError::Invalid { field, reason }
}

impl Racp {
    /// Request all records with sequence number ≥ `last_seen + 1`
    /// (`01 03 01 <seq LE16>`), or all records if `last_seen` is `None` or
    /// 0xFFFF (nothing after it fits in uint16).
    pub fn records_after(last_seen: Option<u16>) -> Racp {
        match last_seen.and_then(|s| s.checked_add(1)) {
            Some(next) => Racp::ReportStoredRecords(RacpFilter::GreaterOrEqual(
                RacpOperand::SequenceNumber(next),
            )),
            None => Racp::ReportStoredRecords(RacpFilter::All),
        }
    }

    /// The op code byte.
    pub fn op_code(&self) -> u8 {
        match self {
            Racp::ReportStoredRecords(_) => 1,
            Racp::DeleteStoredRecords(_) => 2,
            Racp::Abort => 3,
            Racp::ReportNumberOfStoredRecords(_) => 4,
            Racp::NumberOfStoredRecords(_) => 5,
            Racp::ResponseCode { .. } => 6,
        }
    }

    /// The operator byte.
    pub fn operator(&self) -> u8 {
        match self {
            Racp::ReportStoredRecords(f)
            | Racp::DeleteStoredRecords(f)
            | Racp::ReportNumberOfStoredRecords(f) => f.operator(),
            _ => 0,
        }
    }

    /// Whether the collector writes this (op codes 1–4) rather than the server indicating it.
    pub fn is_request(&self) -> bool {
        self.op_code() <= 4
    }

    fn decode_filter(operator: u8, r: &mut Reader<'_>) -> Result<RacpFilter, GattError> {
        Ok(match operator {
            1 => RacpFilter::All,
            5 => RacpFilter::First,
            6 => RacpFilter::Last,
            2..=4 => {
                let filter_type = r.u8("filter type")?;
                match (operator, filter_type) {
                    (4, 1) => RacpFilter::SequenceRange(
                        r.u16("minimum sequence number")?,
                        r.u16("maximum sequence number")?,
                    ),
                    (4, 2) => RacpFilter::TimeRange(
                        r.date_time("minimum time")?,
                        r.date_time("maximum time")?,
                    ),
                    (_, 1 | 2) => {
                        let operand = if filter_type == 1 {
                            RacpOperand::SequenceNumber(r.u16("sequence number")?)
                        } else {
                            RacpOperand::UserFacingTime(r.date_time("user facing time")?)
                        };
                        if operator == 2 {
                            RacpFilter::LessOrEqual(operand)
                        } else {
                            RacpFilter::GreaterOrEqual(operand)
                        }
                    }
                    _ => {
                        return Err(invalid(
                            "filter type",
                            format!("unknown filter type {filter_type}"),
                        ));
                    }
                }
            }
            0 => {
                return Err(invalid(
                    "operator",
                    "Null operator on a record request".into(),
                ));
            }
            other => return Err(invalid("operator", format!("unknown operator {other}"))),
        })
    }

    /// Decode a written or indicated value.
    pub fn decode(bytes: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(bytes)?;
        let op = r.u8("op code")?;
        let operator = r.u8("operator")?;
        let null_only = |name: &str| -> Result<(), GattError> {
            if operator != 0 {
                return Err(invalid(
                    "operator",
                    format!("{name} needs the Null operator, got {operator}"),
                ));
            }
            Ok(())
        };
        let v = match op {
            1 => Racp::ReportStoredRecords(Self::decode_filter(operator, &mut r)?),
            2 => Racp::DeleteStoredRecords(Self::decode_filter(operator, &mut r)?),
            4 => Racp::ReportNumberOfStoredRecords(Self::decode_filter(operator, &mut r)?),
            3 => {
                null_only("abort")?;
                Racp::Abort
            }
            5 => {
                null_only("number of stored records response")?;
                Racp::NumberOfStoredRecords(r.u16("number of stored records (uint16)")?)
            }
            6 => {
                null_only("response code")?;
                let request_op_code = r.u8("request op code")?;
                Racp::ResponseCode {
                    request_op_code,
                    response: r.u8("response code value")?,
                }
            }
            other => return Err(invalid("op code", format!("unknown op code {other}"))),
        };
        r.finish()?;
        Ok(v)
    }

    /// The value to write or indicate.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(self.op_code()).u8(self.operator());
        match self {
            Racp::ReportStoredRecords(f)
            | Racp::DeleteStoredRecords(f)
            | Racp::ReportNumberOfStoredRecords(f) => match f {
                RacpFilter::All | RacpFilter::First | RacpFilter::Last => {}
                RacpFilter::LessOrEqual(o) | RacpFilter::GreaterOrEqual(o) => match o {
                    RacpOperand::SequenceNumber(s) => {
                        w.u8(1).u16(*s);
                    }
                    RacpOperand::UserFacingTime(t) => {
                        w.u8(2).date_time(t);
                    }
                },
                RacpFilter::SequenceRange(a, b) => {
                    w.u8(1).u16(*a).u16(*b);
                }
                RacpFilter::TimeRange(a, b) => {
                    w.u8(2).date_time(a).date_time(b);
                }
            },
            Racp::Abort => {}
            Racp::NumberOfStoredRecords(n) => {
                w.u16(*n);
            }
            Racp::ResponseCode {
                request_op_code,
                response,
            } => {
                w.u8(*request_op_code).u8(*response);
            }
        }
        w.finish()
    }

    /// JSON with the gatt.json field names.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert(
            "direction".into(),
            json!(if self.is_request() {
                "collector->server"
            } else {
                "server->collector"
            }),
        );
        m.insert("op_code".into(), json!(self.op_code()));
        m.insert("op_code_name".into(), json!(op_code_name(self.op_code())));
        m.insert("operator".into(), json!(self.operator()));
        m.insert(
            "operator_name".into(),
            json!(operator_name(self.operator())),
        );
        match self {
            Racp::ReportStoredRecords(f)
            | Racp::DeleteStoredRecords(f)
            | Racp::ReportNumberOfStoredRecords(f) => {
                let (ft, values): (Option<u8>, Vec<Value>) = match f {
                    RacpFilter::All | RacpFilter::First | RacpFilter::Last => (None, vec![]),
                    RacpFilter::LessOrEqual(o) | RacpFilter::GreaterOrEqual(o) => match o {
                        RacpOperand::SequenceNumber(s) => (Some(1), vec![json!(s)]),
                        RacpOperand::UserFacingTime(t) => (Some(2), vec![t.to_json()]),
                    },
                    RacpFilter::SequenceRange(a, b) => (Some(1), vec![json!(a), json!(b)]),
                    RacpFilter::TimeRange(a, b) => (Some(2), vec![a.to_json(), b.to_json()]),
                };
                if let Some(ft) = ft {
                    m.insert("filter_type".into(), json!(ft));
                    m.insert(
                        "filter_type_name".into(),
                        json!(if ft == 1 {
                            "Sequence number"
                        } else {
                            "User facing time"
                        }),
                    );
                    m.insert("operand".into(), Value::Array(values));
                }
            }
            Racp::Abort => {}
            Racp::NumberOfStoredRecords(n) => {
                m.insert("number_of_records".into(), json!(n));
            }
            Racp::ResponseCode {
                request_op_code,
                response,
            } => {
                m.insert("request_op_code".into(), json!(request_op_code));
                m.insert(
                    "request_op_code_name".into(),
                    json!(op_code_name(*request_op_code)),
                );
                m.insert("response_code".into(), json!(response));
                m.insert(
                    "response_code_name".into(),
                    json!(response_code_name(*response)),
                );
            }
        }
        Value::Object(m)
    }
}
