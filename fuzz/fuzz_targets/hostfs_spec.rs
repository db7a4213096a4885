#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| hostfs::fuzzing::hostfs_spec(data));
