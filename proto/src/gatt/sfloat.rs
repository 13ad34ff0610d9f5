//! IEEE 11073-20601 medical number formats: SFLOAT (16 bit) and FLOAT (32 bit).
//!
//! Both are `mantissa × 10^exponent` with two's-complement parts:
//!
//! | type   | exponent            | mantissa              |
//! |--------|---------------------|-----------------------|
//! | SFLOAT | `(int4) raw >> 12`  | `(int12) raw & 0x0FFF`|
//! | FLOAT  | `(int8) raw >> 24`  | `(int24) raw & 0xFFFFFF` |
//!
//! With exponent 0 five mantissas are not numbers (the special values):
//!
//! | meaning   | SFLOAT raw | FLOAT raw    |
//! |-----------|------------|--------------|
//! | NaN       | `0x07FF`   | `0x007FFFFF` |
//! | NRes      | `0x0800`   | `0x00800000` |
//! | +INFINITY | `0x07FE`   | `0x007FFFFE` |
//! | −INFINITY | `0x0802`   | `0x00800002` |
//! | reserved  | `0x0801`   | `0x00800001` |
//!
//! [`SFloat`] and [`Float`] hold the raw bits, so every wire value round-trips
//! exactly; [`SFloat::classify`] / [`Float::classify`] tell a number
//! ([`Ieee11073::Number`]) from a special value ([`Ieee11073::Special`]),
//! which never turns into a number anywhere in hailan.

use super::GattError;
use super::codec::decimal_json;
use std::fmt;

/// A special (non-numeric) IEEE 11073 value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Special {
    /// Not a number: the device has no valid value.
    NaN,
    /// Not at this resolution: the value cannot be represented.
    NRes,
    /// Positive infinity (above the device's range).
    PositiveInfinity,
    /// Negative infinity (below the device's range).
    NegativeInfinity,
    /// Reserved for future use.
    Reserved,
}

impl Special {
    /// Short text as used in JSON: `NaN`, `NRes`, `+INF`, `-INF`, `Reserved`.
    pub fn as_str(self) -> &'static str {
        match self {
            Special::NaN => "NaN",
            Special::NRes => "NRes",
            Special::PositiveInfinity => "+INF",
            Special::NegativeInfinity => "-INF",
            Special::Reserved => "Reserved",
        }
    }
}

impl fmt::Display for Special {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an SFLOAT or FLOAT means: an exact decimal number or a special value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ieee11073 {
    /// `mantissa × 10^exponent`, exactly.
    Number {
        /// The signed mantissa (12 bits for SFLOAT, 24 bits for FLOAT).
        mantissa: i32,
        /// The signed base-10 exponent (4 bits for SFLOAT, 8 bits for FLOAT).
        exponent: i8,
    },
    /// A special value: never a number.
    Special(Special),
}

macro_rules! ieee_type {
    (
        $(#[$doc:meta])*
        $name:ident, $raw:ty, mantissa_bits = $mbits:expr, exponent_bits = $ebits:expr,
        nan = $nan:expr, nres = $nres:expr, pinf = $pinf:expr, ninf = $ninf:expr, reserved = $res:expr
    ) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name($raw);

        impl $name {
            /// Not a number.
            pub const NAN: $name = $name($nan);
            /// Not at this resolution.
            pub const NRES: $name = $name($nres);
            /// +INFINITY.
            pub const POSITIVE_INFINITY: $name = $name($pinf);
            /// −INFINITY.
            pub const NEGATIVE_INFINITY: $name = $name($ninf);
            /// The reserved special value.
            pub const RESERVED: $name = $name($res);
            /// Smallest mantissa.
            pub const MANTISSA_MIN: i32 = -(1 << ($mbits - 1));
            /// Largest mantissa.
            pub const MANTISSA_MAX: i32 = (1 << ($mbits - 1)) - 1;
            /// Smallest exponent.
            pub const EXPONENT_MIN: i8 = (-(1i32 << ($ebits - 1))) as i8;
            /// Largest exponent.
            pub const EXPONENT_MAX: i8 = ((1i32 << ($ebits - 1)) - 1) as i8;
            const MANTISSA_MASK: $raw = ((1u64 << $mbits) - 1) as $raw;

            /// The value with these raw wire bits (every bit pattern is valid).
            pub const fn from_raw(raw: $raw) -> Self {
                $name(raw)
            }

            /// The raw wire bits.
            pub const fn to_raw(self) -> $raw {
                self.0
            }

            /// The number `mantissa × 10^exponent`. Fails if a part is out of
            /// range or the pair is one of the special bit patterns.
            pub fn new(mantissa: i32, exponent: i8) -> Result<Self, GattError> {
                if !(Self::MANTISSA_MIN..=Self::MANTISSA_MAX).contains(&mantissa)
                    || !(Self::EXPONENT_MIN..=Self::EXPONENT_MAX).contains(&exponent)
                {
                    return Err(GattError::NotEncodable(format!(
                        "{}: {mantissa}e{exponent} is outside mantissa {}..={}, exponent {}..={}",
                        stringify!($name),
                        Self::MANTISSA_MIN,
                        Self::MANTISSA_MAX,
                        Self::EXPONENT_MIN,
                        Self::EXPONENT_MAX
                    )));
                }
                let raw = ((((exponent as i32) as $raw) << $mbits)
                    | ((mantissa as $raw) & Self::MANTISSA_MASK)) as $raw;
                let v = $name(raw);
                match v.classify() {
                    Ieee11073::Number { .. } => Ok(v),
                    Ieee11073::Special(s) => Err(GattError::NotEncodable(format!(
                        "{}: {mantissa}e{exponent} has the bit pattern of {s}",
                        stringify!($name)
                    ))),
                }
            }

            /// `value` rounded (half away from zero) to `exponent` decimal
            /// places: e.g. `from_f64(120.5, -1)` is 1205e-1. `None` if the
            /// rounded mantissa does not fit or `value` is not finite. For
            /// simulators and tests; decoding never goes through `f64`.
            pub fn from_f64(value: f64, exponent: i8) -> Option<Self> {
                let m = (value * 10f64.powi(-(exponent as i32))).round();
                if !m.is_finite() || m < Self::MANTISSA_MIN as f64 || m > Self::MANTISSA_MAX as f64 {
                    return None;
                }
                Self::new(m as i32, exponent).ok()
            }

            /// Number or special value.
            pub fn classify(self) -> Ieee11073 {
                let raw = self.0;
                let exponent = ((raw as i64) >> $mbits) as i64;
                let exponent = (exponent << (64 - $ebits)) >> (64 - $ebits);
                let m = (raw & Self::MANTISSA_MASK) as i64;
                let mantissa = (m << (64 - $mbits)) >> (64 - $mbits);
                if exponent == 0 {
                    let special = if raw == $nan {
                        Some(Special::NaN)
                    } else if raw == $nres {
                        Some(Special::NRes)
                    } else if raw == $pinf {
                        Some(Special::PositiveInfinity)
                    } else if raw == $ninf {
                        Some(Special::NegativeInfinity)
                    } else if raw == $res {
                        Some(Special::Reserved)
                    } else {
                        None
                    };
                    if let Some(s) = special {
                        return Ieee11073::Special(s);
                    }
                }
                Ieee11073::Number { mantissa: mantissa as i32, exponent: exponent as i8 }
            }

            /// The special value, if this is one.
            pub fn special(self) -> Option<Special> {
                match self.classify() {
                    Ieee11073::Special(s) => Some(s),
                    Ieee11073::Number { .. } => None,
                }
            }

            /// `(mantissa, exponent)` if this is a number.
            pub fn number(self) -> Option<(i32, i8)> {
                match self.classify() {
                    Ieee11073::Number { mantissa, exponent } => Some((mantissa, exponent)),
                    Ieee11073::Special(_) => None,
                }
            }

            /// The nearest `f64` (for display); `None` for a special value.
            pub fn to_f64(self) -> Option<f64> {
                self.number()
                    .map(|(m, e)| super::codec::decimal_f64(m as i64, e as i32))
            }

            /// JSON: a number, or the special value's name
            /// (`"NaN"`, `"NRes"`, `"+INF"`, `"-INF"`, `"Reserved(0x…)"`).
            pub fn to_json(self) -> serde_json::Value {
                match self.classify() {
                    Ieee11073::Number { mantissa, exponent } => {
                        decimal_json(mantissa as i64, exponent as i32)
                    }
                    Ieee11073::Special(Special::Reserved) => serde_json::Value::String(format!(
                        "Reserved(0x{:0width$X})",
                        self.0,
                        width = std::mem::size_of::<$raw>() * 2
                    )),
                    Ieee11073::Special(s) => serde_json::Value::String(s.as_str().to_owned()),
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.classify() {
                    Ieee11073::Number { mantissa, exponent } => {
                        write!(f, "{}({mantissa}e{exponent})", stringify!($name))
                    }
                    Ieee11073::Special(s) => write!(f, "{}({s})", stringify!($name)),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.classify() {
                    Ieee11073::Number { mantissa, exponent } => write!(f, "{mantissa}e{exponent}"),
                    Ieee11073::Special(s) => write!(f, "{s}"),
                }
            }
        }
    };
}

ieee_type!(
    /// IEEE 11073 16-bit SFLOAT: 4-bit exponent, 12-bit mantissa.
    SFloat, u16, mantissa_bits = 12, exponent_bits = 4,
    nan = 0x07FF, nres = 0x0800, pinf = 0x07FE, ninf = 0x0802, reserved = 0x0801
);

ieee_type!(
    /// IEEE 11073 32-bit FLOAT: 8-bit exponent, 24-bit mantissa.
    Float, u32, mantissa_bits = 24, exponent_bits = 8,
    nan = 0x007F_FFFF, nres = 0x0080_0000, pinf = 0x007F_FFFE, ninf = 0x0080_0002,
    reserved = 0x0080_0001
);

#[cfg(test)]
mod tests {
    use super::*;

    fn sf(b: [u8; 2]) -> SFloat {
        SFloat::from_raw(u16::from_le_bytes(b))
    }

    #[test]
    fn reference_sfloat_examples() {
        assert_eq!(sf([0x8A, 0x00]).number(), Some((138, 0)));
        assert_eq!(sf([0xBD, 0xF0]).number(), Some((189, -1)));
        assert_eq!(sf([0xBD, 0xF0]).to_f64(), Some(18.9));
        assert_eq!(sf([0x65, 0xF0]).to_f64(), Some(10.1));
        assert_eq!(sf([0xE8, 0xF3]).to_f64(), Some(100.0));
        assert_eq!(sf([0x7A, 0xE3]).number(), Some((890, -2)));
        assert_eq!(sf([0x37, 0xC0]).number(), Some((55, -4)));
        assert_eq!(sf([0x37, 0xC0]).to_f64(), Some(0.0055));
        assert_eq!(sf([0xFF, 0x0F]).number(), Some((-1, 0)));
        assert_eq!(sf([0x02, 0x08]).special(), Some(Special::NegativeInfinity));
        assert_eq!(SFloat::from_raw(0x07FF).special(), Some(Special::NaN));
        assert_eq!(SFloat::from_raw(0x0800).special(), Some(Special::NRes));
        assert_eq!(
            SFloat::from_raw(0x07FE).special(),
            Some(Special::PositiveInfinity)
        );
        assert_eq!(SFloat::from_raw(0x0801).special(), Some(Special::Reserved));
        // Same mantissa bits with a non-zero exponent is a number.
        assert_eq!(SFloat::from_raw(0x17FF).number(), Some((2047, 1)));
        assert_eq!(
            SFloat::from_raw(0x0801).to_json(),
            serde_json::json!("Reserved(0x0801)")
        );
    }

    #[test]
    fn reference_float_examples() {
        let f = |b: [u8; 4]| Float::from_raw(u32::from_le_bytes(b));
        assert_eq!(f([0xB0, 0x0E, 0x00, 0xFE]).number(), Some((3760, -2)));
        assert_eq!(f([0xB0, 0x0E, 0x00, 0xFE]).to_f64(), Some(37.6));
        assert_eq!(f([0x87, 0xD6, 0x12, 0xFE]).to_f64(), Some(12345.67));
        assert_eq!(f([0x01, 0, 0, 0]).to_f64(), Some(1.0));
        assert_eq!(f([0xDA, 0x03, 0x00, 0xFF]).to_f64(), Some(98.6));
        assert_eq!(Float::NAN.special(), Some(Special::NaN));
        assert_eq!(
            Float::from_raw(0x0080_0001).special(),
            Some(Special::Reserved)
        );
        assert_eq!(Float::from_raw(0x0080_0000).special(), Some(Special::NRes));
    }

    #[test]
    fn new_checks_ranges_and_specials() {
        assert_eq!(SFloat::new(189, -1).map(SFloat::to_raw), Ok(0xF0BD));
        assert!(SFloat::new(2048, 0).is_err());
        assert!(SFloat::new(1, 8).is_err());
        assert!(SFloat::new(2047, 0).is_err()); // NaN pattern
        assert!(SFloat::new(-2048, 0).is_err()); // NRes pattern
        assert_eq!(
            SFloat::new(-2048, -8).map(|v| v.number()),
            Ok(Some((-2048, -8)))
        );
        assert_eq!(Float::new(3760, -2).map(Float::to_raw), Ok(0xFE00_0EB0));
        assert!(Float::new(0x7F_FFFF, 0).is_err());
        assert_eq!(
            SFloat::from_f64(120.5, -1).and_then(SFloat::number),
            Some((1205, -1))
        );
        assert_eq!(SFloat::from_f64(1e9, 0), None);
    }

    #[test]
    fn every_sfloat_round_trips_through_classify() {
        for raw in 0..=u16::MAX {
            let v = SFloat::from_raw(raw);
            match v.classify() {
                Ieee11073::Number { mantissa, exponent } => {
                    assert_eq!(SFloat::new(mantissa, exponent), Ok(v), "{raw:#06x}");
                }
                Ieee11073::Special(_) => assert_eq!(raw & 0xF000, 0, "{raw:#06x}"),
            }
        }
    }
}
