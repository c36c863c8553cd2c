//! NDJSON input of `phivault-client bulk`, with pointers into objects and
//! arrays.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phivault_client::bulk::{JsonLayout, Layout, Pointer, fuzzing};

fuzz_target!(|input: &[u8]| {
    let pointer = |p: &str| p.parse::<Pointer>().expect("a valid pointer");
    let layout = JsonLayout::new(vec![
        (pointer("/ssn"), "ssn".into()),
        (pointer("/names/*/given"), "name".into()),
        (pointer("/a~1b"), "text".into()),
    ]);
    fuzzing::read_units(input, Layout::Ndjson(layout));
});
