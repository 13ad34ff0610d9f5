#![no_main]
//! Fuzz every GATT decoder: the first byte picks the characteristic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hailan_fuzz::check_any(data));
