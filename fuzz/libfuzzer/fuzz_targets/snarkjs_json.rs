#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (yilian_fuzz::target("snarkjs_json").run)(data);
});
