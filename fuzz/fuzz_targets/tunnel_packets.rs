#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| netdev::fuzzing::tunnel_packets(data));
