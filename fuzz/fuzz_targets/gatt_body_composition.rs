#![no_main]
//! Fuzz the BodyCompositionMeasurement decoder (two-byte flags) (see hailan_fuzz::check).
use hailan_proto::gatt::Characteristic;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hailan_fuzz::check(Characteristic::BodyCompositionMeasurement, data));
