#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| devices::fuzzing::legacy_ports(data));
