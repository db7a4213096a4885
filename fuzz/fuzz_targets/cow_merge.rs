#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ubd::fuzzing::cow_merge(data));
