#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lumen_core::input::fuzz::input_packet(data));
