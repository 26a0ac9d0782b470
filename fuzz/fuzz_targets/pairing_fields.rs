#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lumen_core::nvhttp::fuzz::pairing_fields(data));
