#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| netdev::fuzzing::switch_packets(data));
