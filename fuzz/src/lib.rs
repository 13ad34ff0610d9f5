//! Shared checks for the `gatt_*` fuzz targets.
//!
//! For any input: decoding returns a value or an error and never panics; a
//! decoded value re-encodes to the same field bytes (flag bytes may lose
//! reserved/meaningless bits), decodes again to the same value, and its JSON
//! and reading mapping do not panic.

use hailan_proto::gatt::{Characteristic, decode};

/// Run every check for `data` as a value of `c`.
pub fn check(c: Characteristic, data: &[u8]) {
    let Ok(d) = decode(c, data) else { return };
    let again = d.encode();
    if c == Characteristic::BodyCompositionMeasurement {
        // Two flag bytes; reserved bits 13–15 are not re-encoded.
        let mut want = data.to_vec();
        if let Some(hi) = want.get_mut(1) {
            *hi &= 0x1F;
        }
        assert_eq!(again, want, "{c:?}: does not re-encode");
    } else if c.has_flags() {
        assert_eq!(
            again.get(1..),
            data.get(1..),
            "{c:?}: fields do not re-encode"
        );
    } else {
        assert_eq!(again, data, "{c:?}: does not re-encode");
    }
    assert_eq!(
        decode(c, &again).as_ref(),
        Ok(&d),
        "{c:?}: not stable under re-encoding"
    );
    let _ = d.to_json();
    let _ = d.to_reading();
}

/// The first byte picks the characteristic; the rest is its value.
pub fn check_any(data: &[u8]) {
    let Some((first, rest)) = data.split_first() else {
        return;
    };
    let all = Characteristic::ALL;
    check(all[usize::from(*first) % all.len()], rest);
}

/// A User Control Point value (written by the gateway, indicated by a
/// shared device): decoding never panics, and what decodes re-encodes to
/// the same bytes (the decoder takes no reserved bits nor trailing bytes).
pub fn check_user_control(data: &[u8]) {
    use hailan_proto::gatt::UserControl;
    let Ok(v) = UserControl::decode(data) else {
        return;
    };
    assert_eq!(v.encode(), data, "{v:?}: does not re-encode");
}
