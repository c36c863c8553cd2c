//! CSV input of `phivault-client bulk`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phivault_client::bulk::{CsvLayout, Layout, fuzzing};

fuzz_target!(|input: &[u8]| {
    let layout = CsvLayout::new(vec![
        ("ssn".into(), "ssn".into()),
        ("Patient Name".into(), "name".into()),
    ]);
    fuzzing::read_units(input, Layout::Csv(layout));
});
