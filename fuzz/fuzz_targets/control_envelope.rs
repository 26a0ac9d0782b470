#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lumen_core::control::fuzz::control_envelope(data));
