#![no_main]
//! cargo-fuzz target: see `celeriac_fuzz::task_message` for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| celeriac_fuzz::task_message(data));
