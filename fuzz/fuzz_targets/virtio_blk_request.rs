#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| devices::fuzzing::virtio_blk_request(data));
