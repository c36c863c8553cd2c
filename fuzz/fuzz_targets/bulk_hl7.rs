//! HL7 v2 input of `phivault-client bulk`: files of messages in any line
//! ending and MLLP frames, with the built-in profile and its providers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phivault_client::bulk::{Hl7Layout, Hl7Profile, Layout, fuzzing};

fuzz_target!(|input: (bool, &[u8])| {
    let (providers, bytes) = input;
    let profile = Hl7Profile::parse(if providers { "providers = true" } else { "" });
    let layout = Hl7Layout::new(profile.ok().as_ref(), &[]);
    fuzzing::read_units(bytes, Layout::Hl7(layout));
});
