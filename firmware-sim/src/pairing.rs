//! How a simulated device pairs: the association model its I/O capabilities
//! give with a `KeyboardDisplay` host (Core spec Vol 3 Part H §2.3.5.1), and
//! the secret it shows.
//!
//! | method | the device | BlueZ asks the caller's agent |
//! |---|---|---|
//! | just works | nothing to show or type | nothing |
//! | passkey entry | shows a 6-digit passkey (glucose meters) | `RequestPasskey` |
//! | numeric comparison | shows a number, has a yes button | `RequestConfirmation` |
//! | legacy PIN | a fixed PIN from its manual | `RequestPinCode` |
//!
//! The secret is fixed for a run (derived from the seed), so a test or an
//! owner can read it before pairing, as one reads a meter's screen; the
//! simulator prints it (`PAIRING glucose0 passkey 123456`).

use crate::model::DeviceKind;
use serde::{Deserialize, Serialize};

/// A device's pairing method and secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "method", content = "secret")]
pub enum Pairing {
    /// No person involved.
    JustWorks,
    /// The device shows this passkey; the host types it.
    Passkey(u32),
    /// Both sides show this number; the host confirms it.
    NumericComparison(u32),
    /// Legacy PIN.
    LegacyPin(String),
}

/// A 6-digit number from the seed and the device's index (stable per run).
fn six_digits(seed: u64, index: usize) -> u32 {
    let mut z = seed
        .wrapping_add((index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(0x5EED_0000);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) % 1_000_000) as u32
}

impl Pairing {
    /// The model's own method: glucose meters show a passkey (as Contour
    /// and Accu-Chek meters do); the rest pair with Just Works.
    pub fn default_for(kind: DeviceKind, seed: u64, index: usize) -> Pairing {
        match kind {
            DeviceKind::Glucose => Pairing::Passkey(six_digits(seed, index)),
            _ => Pairing::JustWorks,
        }
    }

    /// `just-works`, `passkey[:NNNNNN]`, `numeric[:NNNNNN]`, `pin[:PIN]`.
    pub fn parse(spec: &str, seed: u64, index: usize) -> Result<Pairing, String> {
        let (method, secret) = match spec.split_once(':') {
            Some((m, s)) => (m, Some(s)),
            None => (spec, None),
        };
        let number = |s: Option<&str>| -> Result<u32, String> {
            match s {
                None => Ok(six_digits(seed, index)),
                Some(s) => s
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n <= 999_999 && !s.is_empty())
                    .ok_or_else(|| format!("{spec:?}: the number is 0..=999999")),
            }
        };
        Ok(match method {
            "just-works" => Pairing::JustWorks,
            "passkey" => Pairing::Passkey(number(secret)?),
            "numeric" => Pairing::NumericComparison(number(secret)?),
            "pin" => {
                let pin = secret.unwrap_or("0000").to_string();
                if pin.is_empty() || pin.len() > 16 {
                    return Err(format!("{spec:?}: a PIN is 1 to 16 characters"));
                }
                Pairing::LegacyPin(pin)
            }
            other => {
                return Err(format!(
                    "pairing method {other:?}: just-works, passkey[:N], numeric[:N] or pin[:PIN]"
                ));
            }
        })
    }

    /// `just-works`, `passkey 012345`, `numeric 012345`, `pin 0000`: what
    /// the simulator prints after `PAIRING <device>`.
    pub fn describe(&self) -> String {
        match self {
            Pairing::JustWorks => "just-works".into(),
            Pairing::Passkey(n) => format!("passkey {n:06}"),
            Pairing::NumericComparison(n) => format!("numeric {n:06}"),
            Pairing::LegacyPin(p) => format!("pin {p}"),
        }
    }
}

/// `DEVICE=METHOD,…` (e.g. `bp0=numeric,glucose0=pin:1234`).
pub fn parse_pairing(spec: &str) -> Result<Vec<(String, String)>, String> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            item.split_once('=')
                .map(|(d, m)| (d.trim().to_string(), m.trim().to_string()))
                .ok_or_else(|| format!("{item:?}: DEVICE=METHOD"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_parse_and_print_back() {
        assert_eq!(Pairing::parse("just-works", 1, 0), Ok(Pairing::JustWorks));
        assert_eq!(
            Pairing::parse("passkey:012345", 1, 0),
            Ok(Pairing::Passkey(12345))
        );
        assert_eq!(Pairing::Passkey(12345).describe(), "passkey 012345");
        assert_eq!(
            Pairing::parse("pin", 1, 0),
            Ok(Pairing::LegacyPin("0000".into()))
        );
        assert!(Pairing::parse("numeric:1000000", 1, 0).is_err());
        assert!(Pairing::parse("magic", 1, 0).is_err());
        assert_eq!(
            parse_pairing("bp0=numeric, glucose0=pin:1").map(|v| v.len()),
            Ok(2)
        );
    }

    #[test]
    fn a_glucose_meter_shows_a_passkey_that_depends_on_the_seed() {
        let a = Pairing::default_for(DeviceKind::Glucose, 1, 4);
        let b = Pairing::default_for(DeviceKind::Glucose, 2, 4);
        assert!(matches!(a, Pairing::Passkey(_)));
        assert_ne!(a, b);
        assert_eq!(
            Pairing::default_for(DeviceKind::Bp, 1, 1),
            Pairing::JustWorks
        );
    }
}
