//! Row encodings and audit records as read from a data directory or backup.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| phivault::fuzzing::stored_rows(bytes));
