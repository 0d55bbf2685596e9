#![no_main]
//! cargo-fuzz target: see `celeriac_fuzz::kombu_envelope` for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| celeriac_fuzz::kombu_envelope(data));
