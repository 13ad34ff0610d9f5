//! A test-side reader of the characteristic bytes, written from the Bluetooth
//! SIG GATT Specification Supplement, independent of the simulator's encoder.
//! TO BE REPLACED by `hailan_proto::gatt` decoders when they land on main.

use anyhow::{Context, bail};

fn u16le(b: &[u8], i: usize) -> anyhow::Result<u16> {
    Ok(u16::from_le_bytes([
        *b.get(i).context("short")?,
        *b.get(i + 1).context("short")?,
    ]))
}

/// IEEE-11073 SFLOAT → f64.
pub fn sfloat(b: &[u8], i: usize) -> anyhow::Result<f64> {
    let raw = u16le(b, i)?;
    let mut m = (raw & 0x0FFF) as i32;
    if m >= 0x0800 {
        m -= 0x1000;
    }
    let mut e = (raw >> 12) as i32;
    if e >= 8 {
        e -= 16;
    }
    if raw == 0x07FF {
        return Ok(f64::NAN);
    }
    Ok(f64::from(m) * 10f64.powi(e))
}

/// IEEE-11073 FLOAT → f64.
pub fn float32(b: &[u8], i: usize) -> anyhow::Result<f64> {
    let raw = u32::from_le_bytes(b.get(i..i + 4).context("short")?.try_into()?);
    let mut m = (raw & 0x00FF_FFFF) as i64;
    if m >= 0x0080_0000 {
        m -= 0x0100_0000;
    }
    let e = (raw >> 24) as u8 as i8;
    Ok(m as f64 * 10f64.powi(i32::from(e)))
}

/// Decoded values in DESIGN §3 canonical units (bpm; mmHg; %; °C; mg/dL; kg).
pub fn decode(uuid16: u16, b: &[u8]) -> anyhow::Result<Vec<f64>> {
    let flags = *b.first().context("empty")?;
    match uuid16 {
        0x2A37 => {
            let (bpm, mut i) = if flags & 1 == 1 {
                (f64::from(u16le(b, 1)?), 3)
            } else {
                (f64::from(*b.get(1).context("short")?), 2)
            };
            if flags & 0x08 != 0 {
                i += 2;
            }
            if flags & 0x10 != 0 {
                let rest = b.len().saturating_sub(i);
                if rest == 0 || rest % 2 != 0 {
                    bail!("RR intervals flagged but {rest} bytes left");
                }
            } else if b.len() != i {
                bail!("trailing bytes");
            }
            Ok(vec![bpm])
        }
        0x2A35 => {
            let kpa = flags & 1 == 1;
            let k = if kpa { 1.0 / 0.133_322 } else { 1.0 };
            let mut need = 7;
            if flags & 0x02 != 0 {
                need += 7;
            }
            if flags & 0x04 != 0 {
                need += 2;
            }
            if flags & 0x08 != 0 {
                need += 1;
            }
            if flags & 0x10 != 0 {
                need += 2;
            }
            if b.len() != need {
                bail!("blood pressure: {} bytes, flags say {need}", b.len());
            }
            let mut v = vec![sfloat(b, 1)? * k, sfloat(b, 3)? * k, sfloat(b, 5)? * k];
            let pi = if flags & 0x02 != 0 { 14 } else { 7 };
            if flags & 0x04 != 0 {
                v.push(sfloat(b, pi)?);
            }
            Ok(v)
        }
        0x2A36 => Ok(vec![sfloat(b, 1)?]),
        0x2A5F => {
            if flags & !0x1F != 0 || b.len() < 5 {
                bail!("bad PLX continuous");
            }
            Ok(vec![sfloat(b, 1)?, sfloat(b, 3)?])
        }
        0x2A5E => {
            let need = 5 + if flags & 1 != 0 { 7 } else { 0 };
            if b.len() < need {
                bail!("PLX spot: {} bytes, need {need}", b.len());
            }
            Ok(vec![sfloat(b, 1)?, sfloat(b, 3)?])
        }
        0x2A1C => {
            let need = 5 + if flags & 2 != 0 { 7 } else { 0 } + if flags & 4 != 0 { 1 } else { 0 };
            if b.len() != need {
                bail!("temperature: {} bytes, flags say {need}", b.len());
            }
            let t = float32(b, 1)?;
            Ok(vec![if flags & 1 == 1 {
                (t - 32.0) * 5.0 / 9.0
            } else {
                t
            }])
        }
        0x2A18 => {
            let mut need = 10;
            if flags & 0x01 != 0 {
                need += 2;
            }
            if flags & 0x02 != 0 {
                need += 3;
            }
            if flags & 0x08 != 0 {
                need += 2;
            }
            if b.len() != need || flags & 0x02 == 0 {
                bail!("glucose: {} bytes, flags say {need}", b.len());
            }
            let ci = if flags & 0x01 != 0 { 12 } else { 10 };
            let c = sfloat(b, ci)?;
            // kg/L -> mg/dL (x 1e5); mol/L not produced here
            Ok(vec![f64::from(u16le(b, 1)?), c * 1e5])
        }
        0x2A9D => {
            let need = 3
                + if flags & 2 != 0 { 7 } else { 0 }
                + if flags & 4 != 0 { 1 } else { 0 }
                + if flags & 8 != 0 { 4 } else { 0 };
            if b.len() != need {
                bail!("weight: {} bytes, flags say {need}", b.len());
            }
            let w = f64::from(u16le(b, 1)?);
            Ok(vec![if flags & 1 == 1 {
                w * 0.01 * 0.453_592_37
            } else {
                w * 0.005
            }])
        }
        0x2A19 => Ok(vec![f64::from(flags)]),
        other => bail!("no decoder for {other:04x}"),
    }
}
