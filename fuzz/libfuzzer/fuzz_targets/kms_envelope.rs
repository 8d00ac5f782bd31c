#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (yilian_fuzz::target("kms_envelope").run)(data);
});
