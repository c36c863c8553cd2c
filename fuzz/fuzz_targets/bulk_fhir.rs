//! FHIR input of `phivault-client bulk`: Bulk Data NDJSON and Bundles, with
//! the built-in Patient profile.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phivault_client::bulk::{FhirLayout, Layout, fuzzing};

fuzz_target!(|input: (bool, &[u8])| {
    let (bundle, bytes) = input;
    let layout = FhirLayout::new(None);
    fuzzing::read_units(bytes, Layout::Fhir { layout, bundle });
});
