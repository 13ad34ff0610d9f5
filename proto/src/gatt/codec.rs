//! Little-endian byte reader and writer shared by every codec in this module.
//!
//! Every GATT value is little-endian. Optional fields appear in the order the
//! characteristic lists them, only when their flag bit is set. The reader
//! names the field it is reading so a short payload becomes a precise error
//! ("timestamp missing: needs 7 bytes, 2 left") and never a panic.

use super::GattError;
use super::datetime::DateTime;
use super::sfloat::{Float, SFloat};

/// The longest attribute value ATT allows (Core spec Vol 3 Part F 3.2.9).
/// Longer input is rejected before any decoding, which also bounds every
/// allocation a decoder makes by this many bytes.
pub const ATT_MAX_VALUE_LEN: usize = 512;

/// A cursor over a characteristic value.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Result<Self, GattError> {
        if bytes.len() > ATT_MAX_VALUE_LEN {
            return Err(GattError::TooLong { len: bytes.len() });
        }
        Ok(Reader { bytes, pos: 0 })
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    pub(crate) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], GattError> {
        if self.remaining() < n {
            return Err(GattError::Truncated {
                field,
                needed: n,
                available: self.remaining(),
            });
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, GattError> {
        Ok(self.take(1, field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, GattError> {
        let b = self.take(2, field)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub(crate) fn i16(&mut self, field: &'static str) -> Result<i16, GattError> {
        let b = self.take(2, field)?;
        Ok(i16::from_le_bytes([b[0], b[1]]))
    }

    pub(crate) fn u24(&mut self, field: &'static str) -> Result<u32, GattError> {
        let b = self.take(3, field)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], 0]))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, GattError> {
        let b = self.take(4, field)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn sfloat(&mut self, field: &'static str) -> Result<SFloat, GattError> {
        Ok(SFloat::from_raw(self.u16(field)?))
    }

    pub(crate) fn float(&mut self, field: &'static str) -> Result<Float, GattError> {
        Ok(Float::from_raw(self.u32(field)?))
    }

    pub(crate) fn date_time(&mut self, field: &'static str) -> Result<DateTime, GattError> {
        let b = self.take(DateTime::LEN, field)?;
        Ok(DateTime::from_bytes([
            b[0], b[1], b[2], b[3], b[4], b[5], b[6],
        ]))
    }

    /// Everything not read yet (for RR intervals and strings).
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let out = &self.bytes[self.pos..];
        self.pos = self.bytes.len();
        out
    }

    /// The value must end here: trailing bytes are an error, because a strict
    /// decoder cannot know what they mean.
    pub(crate) fn finish(self) -> Result<(), GattError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(GattError::TrailingBytes { extra }),
        }
    }
}

/// Appends little-endian fields.
#[derive(Default)]
pub(crate) struct Writer {
    pub(crate) out: Vec<u8>,
}

impl Writer {
    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.out.push(v);
        self
    }
    pub(crate) fn u16(&mut self, v: u16) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(crate) fn i16(&mut self, v: i16) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// The low 24 bits of `v`.
    pub(crate) fn u24(&mut self, v: u32) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes()[..3]);
        self
    }
    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(crate) fn sfloat(&mut self, v: SFloat) -> &mut Self {
        self.u16(v.to_raw())
    }
    pub(crate) fn float(&mut self, v: Float) -> &mut Self {
        self.u32(v.to_raw())
    }
    pub(crate) fn date_time(&mut self, v: &DateTime) -> &mut Self {
        self.out.extend_from_slice(&v.to_bytes());
        self
    }
    pub(crate) fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }
}

/// A JSON number for `mantissa × 10^exponent`, correctly rounded to the
/// nearest `f64` (via the decimal string, so 189e-1 prints as 18.9, not
/// 18.900000000000002). Display only: slots never go through `f64`.
pub(crate) fn decimal_f64(mantissa: i64, exponent: i32) -> f64 {
    format!("{mantissa}e{exponent}")
        .parse::<f64>()
        .unwrap_or(f64::NAN)
}

/// `decimal_f64` as a JSON value (`null` if not finite, which cannot happen
/// for the exponent ranges of SFLOAT and FLOAT but keeps JSON valid).
pub(crate) fn decimal_json(mantissa: i64, exponent: i32) -> serde_json::Value {
    serde_json::Number::from_f64(decimal_f64(mantissa, exponent))
        .map(serde_json::Value::Number)
        .unwrap_or(serde_json::Value::Null)
}
