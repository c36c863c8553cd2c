//! Delimited input of `phivault-client bulk`: the first byte picks a
//! dialect (RFC 4180 CSV, semicolons with another quote, backslash escapes,
//! no header row), the rest is the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phivault_client::bulk::{CsvDialect, CsvLayout, Layout, fuzzing};

fuzz_target!(|input: &[u8]| {
    let Some((&pick, file)) = input.split_first() else {
        return;
    };
    let dialect = match pick % 4 {
        0 => CsvDialect::default(),
        1 => CsvDialect {
            delimiter: b';',
            quote: b'\'',
            ..CsvDialect::default()
        },
        2 => CsvDialect {
            escape: Some(b'\\'),
            ..CsvDialect::default()
        },
        _ => CsvDialect {
            delimiter: b'\t',
            header: false,
            ..CsvDialect::default()
        },
    };
    let maps = if dialect.header {
        vec![
            ("ssn".into(), "ssn".into()),
            ("Patient Name".into(), "name".into()),
        ]
    } else {
        vec![("1".into(), "ssn".into()), ("2".into(), "name".into())]
    };
    fuzzing::read_units(file, Layout::Csv(CsvLayout::with_dialect(maps, dialect)));
});
