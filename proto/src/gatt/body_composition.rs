//! Body Composition service 0x181B: Body Composition Measurement 0x2A9C
//! (indicate), Bluetooth SIG Body Composition Service v1.0 §3.2 with the
//! field formats of the GATT Specification Supplement.
//!
//! Flags (**uint16**): bit 0 units (0 = SI: kg and m, 1 = imperial: lb and
//! in), 1 Time Stamp, 2 User ID, 3 Basal Metabolism, 4 Muscle Percentage,
//! 5 Muscle Mass, 6 Fat Free Mass, 7 Soft Lean Mass, 8 Body Water Mass,
//! 9 Impedance, 10 Weight, 11 Height present, 12 Multiple Packet
//! Measurement, 13–15 reserved (ignored, not re-encoded).
//!
//! Fields, in this order: flags, Body Fat Percentage uint16 (× 0.1 %;
//! 0xFFFF = measurement unsuccessful), [Date Time], [User ID uint8, 0xFF =
//! unknown], [Basal Metabolism uint16 kJ], [Muscle Percentage uint16 × 0.1 %],
//! [Muscle Mass], [Fat Free Mass], [Soft Lean Mass], [Body Water Mass],
//! [Impedance uint16 × 0.1 Ω], \[Weight\], \[Height\]. Masses are uint16 in
//! 0.005 kg (SI) or 0.01 lb (imperial); height uint16 in 0.001 m (SI) or
//! 0.1 in (imperial). The Body Composition Feature (0x2A9B) may declare a
//! coarser resolution; the wire units stay the ones above.
//!
//! **Multiple packets.** With every field a measurement is 32 bytes, more
//! than the 20 an indication carries at the default ATT MTU; a server then
//! sends it in two indications, each with bit 12 set and each with its own
//! flags and Body Fat Percentage, the optional fields split between them.
//! [`BodyCompositionMeasurement::merge`] joins the two halves.

use super::GattError;
use super::codec::{Reader, Writer, decimal_json};
use super::datetime::DateTime;
use super::weight::WeightUnit;
use serde_json::{Map, Value, json};

/// The raw body fat percentage meaning "measurement unsuccessful".
pub const BODY_FAT_UNSUCCESSFUL: u16 = 0xFFFF;

/// Flag bit 12: this value is one of two packets of one measurement.
pub const MULTIPLE_PACKET: u16 = 1 << 12;

/// Body Composition Measurement 0x2A9C. Every optional field is `Some` when
/// its flag bit is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BodyCompositionMeasurement {
    /// Measurement Units (flag bit 0): SI (kg, m) or imperial (lb, in), for the masses and
    /// the height.
    pub unit: WeightUnit,
    /// × 0.1 %; [`BODY_FAT_UNSUCCESSFUL`] = failed.
    pub body_fat_raw: u16,
    /// Time Stamp (flag bit 1): the scale's clock when it measured.
    pub timestamp: Option<DateTime>,
    /// 0xFF = unknown user.
    pub user_id: Option<u8>,
    /// kJ (per day).
    pub basal_metabolism_kj: Option<u16>,
    /// × 0.1 %.
    pub muscle_pct_raw: Option<u16>,
    /// Masses: SI × 0.005 kg, imperial × 0.01 lb.
    pub muscle_mass_raw: Option<u16>,
    /// Fat Free Mass (flag bit 6): SI × 0.005 kg, imperial × 0.01 lb.
    pub fat_free_mass_raw: Option<u16>,
    /// Soft Lean Mass (flag bit 7): SI × 0.005 kg, imperial × 0.01 lb.
    pub soft_lean_mass_raw: Option<u16>,
    /// Body Water Mass (flag bit 8): SI × 0.005 kg, imperial × 0.01 lb.
    pub body_water_mass_raw: Option<u16>,
    /// × 0.1 Ω.
    pub impedance_raw: Option<u16>,
    /// Weight (flag bit 10): SI × 0.005 kg, imperial × 0.01 lb.
    pub weight_raw: Option<u16>,
    /// SI × 0.001 m, imperial × 0.1 in.
    pub height_raw: Option<u16>,
    /// Flag bit 12.
    pub multiple_packet: bool,
}

/// The uint16 fields after the user id, in wire order: (flag bit, name).
const U16_FIELDS: [(u16, &str); 9] = [
    (3, "basal metabolism"),
    (4, "muscle percentage"),
    (5, "muscle mass"),
    (6, "fat free mass"),
    (7, "soft lean mass"),
    (8, "body water mass"),
    (9, "impedance"),
    (10, "weight"),
    (11, "height"),
];

impl BodyCompositionMeasurement {
    /// A measurement with only the mandatory field.
    pub fn new(unit: WeightUnit, body_fat_raw: u16) -> Self {
        BodyCompositionMeasurement {
            unit,
            body_fat_raw,
            timestamp: None,
            user_id: None,
            basal_metabolism_kj: None,
            muscle_pct_raw: None,
            muscle_mass_raw: None,
            fat_free_mass_raw: None,
            soft_lean_mass_raw: None,
            body_water_mass_raw: None,
            impedance_raw: None,
            weight_raw: None,
            height_raw: None,
            multiple_packet: false,
        }
    }

    fn u16_fields(&self) -> [Option<u16>; 9] {
        [
            self.basal_metabolism_kj,
            self.muscle_pct_raw,
            self.muscle_mass_raw,
            self.fat_free_mass_raw,
            self.soft_lean_mass_raw,
            self.body_water_mass_raw,
            self.impedance_raw,
            self.weight_raw,
            self.height_raw,
        ]
    }

    fn u16_fields_mut(&mut self) -> [&mut Option<u16>; 9] {
        [
            &mut self.basal_metabolism_kj,
            &mut self.muscle_pct_raw,
            &mut self.muscle_mass_raw,
            &mut self.fat_free_mass_raw,
            &mut self.soft_lean_mass_raw,
            &mut self.body_water_mass_raw,
            &mut self.impedance_raw,
            &mut self.weight_raw,
            &mut self.height_raw,
        ]
    }

    /// The flags this value encodes with (reserved bits clear).
    pub fn flags(&self) -> u16 {
        let mut f = 0u16;
        if self.unit == WeightUnit::Imperial {
            f |= 1;
        }
        if self.timestamp.is_some() {
            f |= 1 << 1;
        }
        if self.user_id.is_some() {
            f |= 1 << 2;
        }
        for ((bit, _), v) in U16_FIELDS.iter().zip(self.u16_fields()) {
            if v.is_some() {
                f |= 1 << bit;
            }
        }
        if self.multiple_packet {
            f |= MULTIPLE_PACKET;
        }
        f
    }

    /// Whether the scale reported 0xFFFF (measurement unsuccessful).
    pub fn is_unsuccessful(&self) -> bool {
        self.body_fat_raw == BODY_FAT_UNSUCCESSFUL
    }

    /// Decode an indication value.
    pub fn decode(bytes: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(bytes)?;
        let flags = r.u16("flags")?;
        let unit = if flags & 1 != 0 {
            WeightUnit::Imperial
        } else {
            WeightUnit::Si
        };
        let mut m = BodyCompositionMeasurement::new(unit, r.u16("body fat percentage")?);
        if flags & (1 << 1) != 0 {
            m.timestamp = Some(r.date_time("timestamp")?);
        }
        if flags & (1 << 2) != 0 {
            m.user_id = Some(r.u8("user id")?);
        }
        for ((bit, name), slot) in U16_FIELDS.iter().zip(m.u16_fields_mut()) {
            if flags & (1 << bit) != 0 {
                *slot = Some(r.u16(name)?);
            }
        }
        m.multiple_packet = flags & MULTIPLE_PACKET != 0;
        r.finish()?;
        Ok(m)
    }

    /// The indication value.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u16(self.flags()).u16(self.body_fat_raw);
        if let Some(t) = &self.timestamp {
            w.date_time(t);
        }
        if let Some(u) = self.user_id {
            w.u8(u);
        }
        for v in self.u16_fields().into_iter().flatten() {
            w.u16(v);
        }
        w.finish()
    }

    /// Join the two packets of a multiple-packet measurement (BCS §3.2:
    /// each carries bit 12, its flags and Body Fat Percentage; the optional
    /// fields are split between them). Refused, naming the field, when
    /// either is not a multiple-packet value, the units or body fat differ,
    /// the time stamp or user differ, or an optional field is in both or the
    /// second's fields do not all come after the first's in wire order (two
    /// first halves of two measurements are never joined into one).
    pub fn merge(&self, second: &Self) -> Result<Self, GattError> {
        let bad = |field: &'static str, reason: &str| GattError::Invalid {
            field,
            reason: reason.to_owned(),
        };
        if !self.multiple_packet || !second.multiple_packet {
            return Err(bad(
                "flags",
                "only two values with the Multiple Packet Measurement bit are joined",
            ));
        }
        if self.unit != second.unit {
            return Err(bad("flags", "the two packets use different units"));
        }
        if self.body_fat_raw != second.body_fat_raw {
            return Err(bad(
                "body fat percentage",
                "the two packets carry different values",
            ));
        }
        fn join<T: PartialEq + Copy>(
            a: Option<T>,
            b: Option<T>,
            field: &'static str,
        ) -> Result<Option<T>, GattError> {
            match (a, b) {
                (Some(x), Some(y)) if x != y => Err(GattError::Invalid {
                    field,
                    reason: "the two packets carry different values".into(),
                }),
                (a, b) => Ok(a.or(b)),
            }
        }
        let mine = self.u16_fields();
        let theirs = second.u16_fields();
        let last_mine = mine.iter().rposition(Option::is_some);
        if let (Some(a), Some(b)) = (last_mine, theirs.iter().position(Option::is_some))
            && a >= b
        {
            return Err(bad(
                U16_FIELDS[b].1,
                "in both packets, or before the first packet's last field: the second packet carries the fields after the first's",
            ));
        }
        let mut m = *self;
        m.timestamp = join(self.timestamp, second.timestamp, "timestamp")?;
        m.user_id = join(self.user_id, second.user_id, "user id")?;
        for (((_, name), slot), b) in U16_FIELDS.iter().zip(m.u16_fields_mut()).zip(theirs) {
            *slot = join(*slot, b, name)?;
        }
        Ok(m)
    }

    /// JSON with the gatt.json field names: raw values and decimals, masses
    /// as `*_kg` (SI) or `*_lb` (imperial), height as `height_m` or `height_in`.
    pub fn to_json(&self) -> Value {
        let si = self.unit == WeightUnit::Si;
        let mass = |raw: Option<u16>| {
            raw.map_or(Value::Null, |r| {
                if si {
                    decimal_json(i64::from(r) * 5, -3)
                } else {
                    decimal_json(i64::from(r), -2)
                }
            })
        };
        let tenth = |raw: Option<u16>| raw.map_or(Value::Null, |r| decimal_json(i64::from(r), -1));
        let mut m = Map::new();
        m.insert("flags".into(), json!(self.flags()));
        m.insert("unit".into(), json!(if si { "SI" } else { "Imperial" }));
        m.insert("body_fat_raw".into(), json!(self.body_fat_raw));
        m.insert(
            "measurement_unsuccessful".into(),
            json!(self.is_unsuccessful()),
        );
        m.insert(
            "body_fat_pct".into(),
            if self.is_unsuccessful() {
                Value::Null
            } else {
                tenth(Some(self.body_fat_raw))
            },
        );
        m.insert(
            "timestamp".into(),
            self.timestamp.map_or(Value::Null, |t| t.to_json()),
        );
        m.insert("user_id".into(), json!(self.user_id));
        m.insert(
            "basal_metabolism_kj".into(),
            json!(self.basal_metabolism_kj),
        );
        m.insert("muscle_pct_raw".into(), json!(self.muscle_pct_raw));
        m.insert("muscle_pct".into(), tenth(self.muscle_pct_raw));
        let u = if si { "kg" } else { "lb" };
        for (name, raw) in [
            ("muscle_mass", self.muscle_mass_raw),
            ("fat_free_mass", self.fat_free_mass_raw),
            ("soft_lean_mass", self.soft_lean_mass_raw),
            ("body_water_mass", self.body_water_mass_raw),
            ("weight", self.weight_raw),
        ] {
            m.insert(format!("{name}_raw"), json!(raw));
            m.insert(format!("{name}_{u}"), mass(raw));
        }
        m.insert("impedance_raw".into(), json!(self.impedance_raw));
        m.insert("impedance_ohm".into(), tenth(self.impedance_raw));
        m.insert("height_raw".into(), json!(self.height_raw));
        let height = self.height_raw.map_or(Value::Null, |h| {
            decimal_json(i64::from(h), if si { -3 } else { -1 })
        });
        m.insert((if si { "height_m" } else { "height_in" }).into(), height);
        m.insert("multiple_packet".into(), json!(self.multiple_packet));
        Value::Object(m)
    }
}
