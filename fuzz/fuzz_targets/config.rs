//! The `serve --config` file, as an operator (or a mistake) writes it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| phivault::fuzzing::config(bytes));
