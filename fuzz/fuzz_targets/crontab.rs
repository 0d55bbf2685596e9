#![no_main]
//! cargo-fuzz target: see `celeriac_fuzz::crontab` for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| celeriac_fuzz::crontab(data));
