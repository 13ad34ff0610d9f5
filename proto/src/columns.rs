//! Where each envelope field is stored, and what its column can hold.
//!
//! An envelope that is valid on the wire must also be storable: a string one
//! character longer than its `varchar(n)`, a NUL character in any text, a time
//! outside what a `timestamptz` holds or a number outside its column's type
//! fails the whole `INSERT` (SQLSTATE 22001, 22021, 22008, 22003) — a property
//! of the message, never of the connection, so retrying cannot help. This
//! table is the one statement of those limits: [`crate::envelope::decode`]
//! checks every field against it (and names the field it refuses), the
//! gateway fits device-supplied text to it ([`fit_text`]), and a test
//! compares it with the migrated schema (`information_schema.columns`,
//! `tests/tests/schema.rs`), so a column widened or narrowed in a migration
//! without this table, or the reverse, fails the test suite.

/// A column's SQL type, as `information_schema.columns` describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SqlType {
    /// `character varying(n)`: at most `n` characters (not bytes), no NUL.
    Varchar(usize),
    /// `text[]`: text elements of any length, no NUL.
    TextArray,
    /// `bigint`: a signed 64-bit integer.
    BigInt,
    /// `integer`: a signed 32-bit integer.
    Integer,
    /// `smallint`: a signed 16-bit integer.
    SmallInt,
    /// `timestamp with time zone`.
    TimestampTz,
}

impl SqlType {
    /// `information_schema.columns.data_type` of this type.
    pub fn information_schema_name(self) -> &'static str {
        match self {
            SqlType::Varchar(_) => "character varying",
            SqlType::TextArray => "ARRAY",
            SqlType::BigInt => "bigint",
            SqlType::Integer => "integer",
            SqlType::SmallInt => "smallint",
            SqlType::TimestampTz => "timestamp with time zone",
        }
    }

    /// `information_schema.columns.character_maximum_length`.
    pub fn max_chars(self) -> Option<usize> {
        match self {
            SqlType::Varchar(n) => Some(n),
            _ => None,
        }
    }

    /// The integer range the type holds, if it is an integer type.
    pub fn integer_range(self) -> Option<(i64, i64)> {
        match self {
            SqlType::BigInt => Some((i64::MIN, i64::MAX)),
            SqlType::Integer => Some((i32::MIN.into(), i32::MAX.into())),
            SqlType::SmallInt => Some((i16::MIN.into(), i16::MAX.into())),
            _ => None,
        }
    }
}

/// One column of the schema (`migrations/`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Column {
    /// The table the column belongs to, e.g. `iot_devices`.
    pub table: &'static str,
    /// The column's name in that table, e.g. `serial_number`.
    pub name: &'static str,
    /// The column's SQL type, which sets what values it can hold.
    pub ty: SqlType,
}

/// An envelope field (named as WIRE.md names it) and every column it lands in.
#[derive(Clone, Copy, Debug)]
pub struct Field {
    /// The field's name in WIRE.md, qualified by the map that holds it
    /// (e.g. `registration.serial`); error messages name the field by it.
    pub path: &'static str,
    /// Every column the field is written to; empty for a field that is
    /// checked (for NUL, or as a time) but not stored in a column of its own.
    pub columns: &'static [Column],
}

impl Field {
    /// The most characters every column of this field holds.
    pub fn max_chars(&self) -> Option<usize> {
        self.columns.iter().filter_map(|c| c.ty.max_chars()).min()
    }

    /// The integer range every column of this field holds.
    pub fn integer_range(&self) -> Option<(i64, i64)> {
        self.columns
            .iter()
            .filter_map(|c| c.ty.integer_range())
            .reduce(|(lo, hi), (l, h)| (lo.max(l), hi.min(h)))
    }

    /// Whether `s` fits every column: no NUL, at most [`Self::max_chars`]
    /// characters. The error names the field and the narrowest column.
    pub fn check_text(&self, s: &str) -> Result<(), String> {
        if s.contains('\0') {
            return Err(format!("{} contains a NUL character", self.path));
        }
        if let Some(max) = self.max_chars() {
            let n = s.chars().count();
            if n > max {
                return Err(format!(
                    "{} is {n} characters, more than the {max} of {}",
                    self.path,
                    self.narrowest()
                ));
            }
        }
        Ok(())
    }

    /// Whether `v` fits every integer column of this field.
    pub fn check_integer(&self, v: i128) -> Result<(), String> {
        match self.integer_range() {
            Some((lo, hi)) if v < i128::from(lo) || v > i128::from(hi) => Err(format!(
                "{} is {v}, outside {lo}..={hi} ({})",
                self.path,
                self.narrowest()
            )),
            _ => Ok(()),
        }
    }

    /// Whether `ms` (since the Unix epoch, UTC) is a time every column holds
    /// ([`MIN_TIME_MS`]`..=`[`MAX_TIME_MS`]).
    pub fn check_time(&self, ms: i64) -> Result<(), String> {
        if (MIN_TIME_MS..=MAX_TIME_MS).contains(&ms) {
            Ok(())
        } else {
            Err(format!(
                "{} is {ms} ms, outside {MIN_TIME_MS}..={MAX_TIME_MS} \
                 (0001-01-01T00:00:00Z..=9999-12-31T23:59:59.999Z)",
                self.path
            ))
        }
    }

    /// `table.column` of the narrowest column, for error messages.
    fn narrowest(&self) -> String {
        let c = self
            .columns
            .iter()
            .min_by_key(|c| c.ty.max_chars().unwrap_or(usize::MAX))
            .or(self.columns.first());
        c.map_or_else(
            || self.path.to_owned(),
            |c| format!("{}.{}", c.table, c.name),
        )
    }
}

/// The earliest time stored: 0001-01-01T00:00:00Z. Every time a reading or
/// state carries must be one a FHIR `instant` and RFC 3339 can write (years
/// 0001–9999), which is inside PostgreSQL's `timestamptz` range (4713 BC to
/// 294276 AD) and inside what ingest's date library holds.
pub const MIN_TIME_MS: i64 = -62_135_596_800_000;
/// The latest time stored: 9999-12-31T23:59:59.999Z.
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;

const fn col(table: &'static str, name: &'static str, ty: SqlType) -> Column {
    Column { table, name, ty }
}

use SqlType::*;

/// The publishing gateway's id (top-level `gateway_id`): `gateways.id` and
/// the `gateway_id` of `iot_devices`, `health_data` and `rejected_readings`.
pub const GATEWAY_ID: Field = Field {
    path: "gateway_id",
    columns: &[
        col("gateways", "id", Varchar(64)),
        col("iot_devices", "gateway_id", Varchar(64)),
        col("health_data", "gateway_id", Varchar(64)),
        col("rejected_readings", "gateway_id", Varchar(64)),
    ],
};
/// A device's id (the `device_id` of a registration, batch or device
/// state): `iot_devices.device_id` and `rejected_readings.device_id`.
pub const DEVICE_ID: Field = Field {
    path: "device_id",
    columns: &[
        col("iot_devices", "device_id", Varchar(255)),
        col("rejected_readings", "device_id", Varchar(255)),
    ],
};
/// A registration's primary data type: `iot_devices.device_type`.
pub const DEVICE_TYPE: Field = Field {
    path: "registration.device_type",
    columns: &[col("iot_devices", "device_type", Varchar(50))],
};
/// The data types a registered device produces: `iot_devices.data_types`
/// (`text[]`).
pub const DATA_TYPES: Field = Field {
    path: "registration.data_types",
    columns: &[col("iot_devices", "data_types", TextArray)],
};
/// A registered device's Bluetooth address: `iot_devices.bluetooth_address`.
pub const BLUETOOTH_ADDRESS: Field = Field {
    path: "registration.bluetooth_address",
    columns: &[col("iot_devices", "bluetooth_address", Varchar(50))],
};
/// A registered device's name (GATT Device Information or advertised):
/// `iot_devices.device_name`.
pub const NAME: Field = Field {
    path: "registration.name",
    columns: &[col("iot_devices", "device_name", Varchar(100))],
};
/// A registered device's Manufacturer Name String (GATT Device Information):
/// `iot_devices.manufacturer`.
pub const MANUFACTURER: Field = Field {
    path: "registration.manufacturer",
    columns: &[col("iot_devices", "manufacturer", Varchar(100))],
};
/// A registered device's Model Number String (GATT Device Information):
/// `iot_devices.model`.
pub const MODEL: Field = Field {
    path: "registration.model",
    columns: &[col("iot_devices", "model", Varchar(100))],
};
/// A registered device's Serial Number String (GATT Device Information):
/// `iot_devices.serial_number`.
pub const SERIAL: Field = Field {
    path: "registration.serial",
    columns: &[col("iot_devices", "serial_number", Varchar(100))],
};
/// The firmware revision of a registration or a device state:
/// `iot_devices.firmware_version`.
pub const FIRMWARE_VERSION: Field = Field {
    path: "firmware_version",
    columns: &[col("iot_devices", "firmware_version", Varchar(50))],
};
/// A registered device's Hardware Revision String (GATT Device Information):
/// `iot_devices.hardware_version`.
pub const HARDWARE_VERSION: Field = Field {
    path: "registration.hardware_version",
    columns: &[col("iot_devices", "hardware_version", Varchar(50))],
};
/// A reading's data-type name: `health_data.data_type` (the partition key)
/// and `rejected_readings.data_type`.
pub const DATA_TYPE: Field = Field {
    path: "reading.data_type",
    columns: &[
        col("health_data", "data_type", Varchar(50)),
        col("rejected_readings", "data_type", Varchar(50)),
    ],
};
/// A reading's per-device sequence number: `health_data.seq`,
/// `rejected_readings.seq`, `zk_proofs.first_seq` and `iot_devices.last_seq`,
/// all `bigint`, so a group's last seq must be at most 2⁶³ − 1.
pub const SEQ: Field = Field {
    path: "reading.seq",
    columns: &[
        col("health_data", "seq", BigInt),
        col("rejected_readings", "seq", BigInt),
        col("zk_proofs", "first_seq", BigInt),
        col("iot_devices", "last_seq", BigInt),
    ],
};
/// When the device measured a reading (milliseconds since the Unix epoch):
/// `health_data.recorded_at`.
pub const RECORDED_AT: Field = Field {
    path: "reading.recorded_at_ms",
    columns: &[col("health_data", "recorded_at", TimestampTz)],
};
/// The number of readings in a group: `zk_proofs.reading_count`.
pub const GROUP_READINGS: Field = Field {
    path: "group.readings",
    columns: &[col("zk_proofs", "reading_count", Integer)],
};
/// A device state's battery level (percent, 0–100): `iot_devices.battery_level`.
pub const BATTERY_LEVEL: Field = Field {
    path: "device_state.battery_level",
    columns: &[col("iot_devices", "battery_level", Integer)],
};
/// A device state's received signal strength (dBm): `iot_devices.rssi`
/// (`smallint`).
pub const RSSI: Field = Field {
    path: "device_state.rssi",
    columns: &[col("iot_devices", "rssi", SmallInt)],
};
/// When the gateway saw a device state (milliseconds since the Unix epoch):
/// `iot_devices.state_observed_at`.
pub const OBSERVED_AT: Field = Field {
    path: "device_state.observed_at_ms",
    columns: &[col("iot_devices", "state_observed_at", TimestampTz)],
};
/// Not stored, but a time all the same: held to the same range.
pub const SENT_AT: Field = Field {
    path: "sent_at_ms",
    columns: &[],
};
/// The patient a registration names (a user slot of a shared device): looked
/// up as `users.did`, never stored as text.
pub const PATIENT: Field = Field {
    path: "registration.patient",
    columns: &[col("users", "did", Varchar(255))],
};
/// The shared device a user slot's registration belongs to:
/// `iot_devices.shared_device_id`.
pub const USER_SLOT_OF: Field = Field {
    path: "registration.user_slot_of",
    columns: &[col("iot_devices", "shared_device_id", Varchar(255))],
};
/// Not stored, but a time all the same: held to the same range.
pub const PAIRED_AT: Field = Field {
    path: "registration.paired_at_ms",
    columns: &[],
};
/// Stored in `zk_verifications.reason` (text) when it explains a group.
pub const NO_PROOF_REASON: Field = Field {
    path: "group.no_proof_reason",
    columns: &[],
};
/// Inside the sealed value's JSON (`health_data.value`), where PostgreSQL's
/// `jsonb` refuses a NUL character as it does in text.
pub const KID: Field = Field {
    path: "sealed.kid",
    columns: &[],
};

/// Every field of the envelope that reaches a column, for the schema test.
pub const STORED: &[Field] = &[
    GATEWAY_ID,
    DEVICE_ID,
    DEVICE_TYPE,
    DATA_TYPES,
    BLUETOOTH_ADDRESS,
    NAME,
    MANUFACTURER,
    MODEL,
    SERIAL,
    FIRMWARE_VERSION,
    HARDWARE_VERSION,
    PATIENT,
    USER_SLOT_OF,
    DATA_TYPE,
    SEQ,
    RECORDED_AT,
    GROUP_READINGS,
    BATTERY_LEVEL,
    RSSI,
    OBSERVED_AT,
];

/// Device-supplied text (a Device Information string, an advertised name)
/// made storable in `field`: cut at the first NUL (devices pad fixed-size
/// strings with NULs), trimmed of surrounding whitespace, and shortened to
/// the column's width on a character boundary; `None` if nothing is left.
pub fn fit_text(field: &Field, raw: &str) -> Option<String> {
    let text = raw.split('\0').next().unwrap_or_default().trim();
    let fitted: String = match field.max_chars() {
        Some(max) => text.chars().take(max).collect(),
        None => text.to_owned(),
    };
    let fitted = fitted.trim_end();
    (!fitted.is_empty()).then(|| fitted.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_limits_count_characters_and_refuse_nul() {
        let ok = "é".repeat(100);
        assert!(NAME.check_text(&ok).is_ok(), "100 characters, 200 bytes");
        let e = NAME.check_text(&"é".repeat(101)).unwrap_err();
        assert!(e.contains("registration.name") && e.contains("iot_devices.device_name"));
        assert!(MODEL.check_text("abc\0").unwrap_err().contains("NUL"));
        assert!(KID.check_text("k\0").is_err(), "no column, still no NUL");
    }

    #[test]
    fn the_narrowest_column_wins() {
        assert_eq!(DATA_TYPE.max_chars(), Some(50));
        assert_eq!(SEQ.integer_range(), Some((i64::MIN, i64::MAX)));
        assert!(RSSI.check_integer(i128::from(i16::MIN) - 1).is_err());
        assert!(SEQ.check_integer(i128::from(i64::MAX) + 1).is_err());
        assert!(SEQ.check_integer(i128::from(i64::MAX)).is_ok());
    }

    #[test]
    fn times_are_four_digit_years() {
        assert!(RECORDED_AT.check_time(MIN_TIME_MS).is_ok());
        assert!(RECORDED_AT.check_time(MAX_TIME_MS).is_ok());
        assert!(RECORDED_AT.check_time(MIN_TIME_MS - 1).is_err());
        let e = RECORDED_AT.check_time(MAX_TIME_MS + 1).unwrap_err();
        assert!(e.contains("reading.recorded_at_ms"), "{e}");
        // 9999-12-31T23:59:59.999Z and 0001-01-01T00:00:00Z, by civil-day count.
        let days_to_1970_from_0001 = 719_162_i64;
        assert_eq!(MIN_TIME_MS, -days_to_1970_from_0001 * 86_400_000);
        let days_1970_to_10000 = 2_932_897_i64;
        assert_eq!(MAX_TIME_MS, days_1970_to_10000 * 86_400_000 - 1);
    }

    #[test]
    fn device_text_is_cut_at_nul_trimmed_and_fitted() {
        assert_eq!(fit_text(&NAME, "Cuff 7\0\0\0\0").as_deref(), Some("Cuff 7"));
        assert_eq!(fit_text(&NAME, "  Scale \0junk").as_deref(), Some("Scale"));
        assert_eq!(fit_text(&NAME, "\0\0\0"), None);
        assert_eq!(fit_text(&NAME, "   "), None);
        let long = "ü".repeat(150);
        let fitted = fit_text(&MODEL, &long).expect("text");
        assert_eq!(fitted.chars().count(), 100);
        assert!(MODEL.check_text(&fitted).is_ok());
    }
}
