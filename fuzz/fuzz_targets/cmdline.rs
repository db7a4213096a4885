#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| kuml::fuzzing::cmdline(data));
