#![no_main]
//! Fuzz the MQTT envelope decoder: any input decodes to a valid envelope or
//! to an error, never a panic; what decodes re-encodes to an envelope that
//! decodes to the same value.
use hailan_proto::envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(e) = envelope::decode(data) else { return };
    assert!(e.validate().is_ok());
    let again = envelope::encode(&e);
    assert_eq!(envelope::decode(&again).ok().as_ref(), Some(&e));
});
