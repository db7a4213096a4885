#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mconsole::fuzzing::mconsole_command(data));
