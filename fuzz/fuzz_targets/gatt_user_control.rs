#![no_main]
//! Fuzz the User Control Point decoder (User Data Service; see
//! hailan_fuzz::check_user_control).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hailan_fuzz::check_user_control(data));
