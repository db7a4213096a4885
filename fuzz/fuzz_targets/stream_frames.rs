#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| netdev::fuzzing::stream_frames(data));
