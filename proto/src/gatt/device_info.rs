//! Battery Level 0x2A19 and the Device Information service 0x180A.
//!
//! - Battery Level: uint8 percent, 0–100, exactly 1 byte. Above 100 is an
//!   error (Nordic rejects it; Wireshark flags "Bad Data").
//! - Device Information strings (0x2A29 manufacturer, 0x2A24 model, 0x2A25
//!   serial, 0x2A27 hardware revision, 0x2A26 firmware revision, 0x2A28
//!   software revision): UTF-8 with no terminator; the length is the ATT
//!   value length; zero length is legal. Invalid UTF-8 is an error.
//! - PnP ID 0x2A50: vendor ID source uint8 (1 = Bluetooth SIG, 2 = USB-IF),
//!   vendor ID uint16, product ID uint16, product version uint16; 7 bytes.

use super::GattError;
use super::codec::{Reader, Writer};
use serde_json::{Value, json};

/// Battery Level 0x2A19: 0–100 %.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatteryLevel(u8);

impl BatteryLevel {
    /// `None` above 100.
    pub fn new(percent: u8) -> Option<Self> {
        (percent <= 100).then_some(BatteryLevel(percent))
    }

    /// Percent, 0–100.
    pub fn percent(self) -> u8 {
        self.0
    }

    /// Decode exactly one byte, 0–100.
    pub fn decode(bytes: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(bytes)?;
        let v = r.u8("battery level")?;
        r.finish()?;
        BatteryLevel::new(v).ok_or(GattError::OutOfRange {
            field: "battery level",
            value: i64::from(v),
            range: "0..=100",
        })
    }

    /// The one-byte value.
    pub fn encode(&self) -> Vec<u8> {
        vec![self.0]
    }

    /// JSON `{battery_level_pct}`.
    pub fn to_json(&self) -> Value {
        json!({ "battery_level_pct": self.0 })
    }
}

/// A Device Information string characteristic (manufacturer, model, serial,
/// hardware/firmware/software revision).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DeviceInfoString(pub String);

impl DeviceInfoString {
    /// Decode UTF-8 (any length up to the ATT maximum, including zero).
    pub fn decode(bytes: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(bytes)?;
        let s = std::str::from_utf8(r.rest()).map_err(|e| GattError::Invalid {
            field: "device information string",
            reason: format!("not UTF-8: {e}"),
        })?;
        Ok(DeviceInfoString(s.to_owned()))
    }

    /// The UTF-8 bytes, no terminator.
    pub fn encode(&self) -> Vec<u8> {
        self.0.as_bytes().to_vec()
    }

    /// JSON `{value}`.
    pub fn to_json(&self) -> Value {
        json!({ "value": self.0 })
    }
}

/// PnP ID 0x2A50.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PnpId {
    /// 1 = Bluetooth SIG company identifier, 2 = USB Implementer's Forum vendor ID.
    pub vendor_id_source: u8,
    /// Vendor ID: the maker's company identifier, from the list `vendor_id_source` names.
    pub vendor_id: u16,
    /// Product ID: the product's identifier, managed by the vendor.
    pub product_id: u16,
    /// Product Version: the product's version, managed by the vendor.
    pub product_version: u16,
}

impl PnpId {
    /// Decode exactly 7 bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(bytes)?;
        let v = PnpId {
            vendor_id_source: r.u8("vendor id source")?,
            vendor_id: r.u16("vendor id")?,
            product_id: r.u16("product id")?,
            product_version: r.u16("product version")?,
        };
        r.finish()?;
        Ok(v)
    }

    /// The 7 wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(self.vendor_id_source)
            .u16(self.vendor_id)
            .u16(self.product_id)
            .u16(self.product_version);
        w.finish()
    }

    /// JSON with named fields.
    pub fn to_json(&self) -> Value {
        json!({
            "vendor_id_source": self.vendor_id_source,
            "vendor_id_source_name": match self.vendor_id_source {
                1 => "Bluetooth SIG",
                2 => "USB Implementer's Forum",
                _ => "Reserved",
            },
            "vendor_id": self.vendor_id,
            "product_id": self.product_id,
            "product_version": self.product_version,
        })
    }
}
