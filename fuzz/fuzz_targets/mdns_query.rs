#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lumen_core::mdns::fuzz::mdns_query(data));
