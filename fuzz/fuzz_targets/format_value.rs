//! Values of every format, as a tokenize call hands them over.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u8, u8, u8, &str)| {
    let (format, keep_prefix, keep_suffix, value) = input;
    if let Some(spec) = phivault::fuzzing::spec(format, keep_prefix, keep_suffix) {
        phivault::fuzzing::value(&spec, value);
    }
});
