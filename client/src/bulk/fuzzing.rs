//! Entry points for the fuzz targets under `fuzz/`, compiled only with
//! `--cfg fuzzing` (which `cargo fuzz` sets). Each reads untrusted input the
//! way a bulk run does and checks what the run relies on, for any input.

use std::io::Cursor;

use super::pipeline::open_reader;
use super::{Cell, Encoding, Layout, Unit, splice};

/// Reads `input` as a run with `layout` would and checks every unit:
/// - the units cover the input byte for byte, in order, when it is read to
///   the end (everything that is not a cell passes through unchanged);
/// - cells lie inside their unit, in order, without overlapping, and name a
///   namespace of the layout;
/// - a unit written back with each CSV cell replaced by its own text is the
///   unit again, a JSON unit written back so is still one JSON value, and
///   an HL7 cell's text, escaped in its message's delimiters, reads back as
///   the same text and ends no segment.
///
/// A reader may refuse the input (an unclosed quote, a line that is too
/// long); it must not panic, loop or lose bytes.
pub fn read_units(input: &[u8], layout: Layout) {
    let Ok((mut reader, names)) = open_reader(Cursor::new(input.to_vec()), layout) else {
        return;
    };
    let mut passed: Vec<u8> = Vec::with_capacity(input.len());
    loop {
        match reader.next_unit() {
            Ok(Some(unit)) => {
                check_cells(&unit, names.namespaces.len());
                check_write_back(&unit);
                passed.extend_from_slice(&unit.raw);
                assert!(
                    passed.len() <= input.len(),
                    "units hold more than the input"
                );
            }
            Ok(None) => {
                assert!(
                    passed == input,
                    "units do not cover the input byte for byte"
                );
                return;
            }
            Err(_) => return,
        }
    }
}

fn check_cells(unit: &Unit, namespaces: usize) {
    let mut cells: Vec<&Cell> = unit.cells.iter().collect();
    cells.sort_by_key(|c| c.span.start);
    let mut end = 0;
    for cell in cells {
        assert!(cell.span.start >= end, "cells overlap");
        assert!(cell.span.start <= cell.span.end && cell.span.end <= unit.raw.len());
        assert!(cell.namespace < namespaces, "a cell names no namespace");
        end = cell.span.end;
    }
}

fn check_write_back(unit: &Unit) {
    if unit.problem.is_some() {
        return;
    }
    let texts: Vec<(usize, String)> = unit
        .cells
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.text.as_ref().ok().map(|t| (i, t.clone())))
        .collect();
    let mut replacements: Vec<(usize, &str)> =
        texts.iter().map(|(i, t)| (*i, t.as_str())).collect();
    let mut out = Vec::with_capacity(unit.raw.len());
    splice(unit, &mut replacements, &mut out);
    let json = unit
        .cells
        .iter()
        .any(|c| matches!(c.encoding, Encoding::Json | Encoding::JsonFragment));
    let hl7 = unit
        .cells
        .iter()
        .any(|c| matches!(c.encoding, Encoding::Hl7 { .. }));
    if hl7 {
        for (i, text) in &texts {
            let Encoding::Hl7 { delimiters, date } = unit.cells[*i].encoding else {
                continue;
            };
            let mut written = Vec::new();
            super::hl7::encode(text, &delimiters, date, &mut written);
            assert!(
                !written.contains(&b'\r') && !written.contains(&b'\n'),
                "an HL7 cell written back breaks its segment"
            );
            let read = delimiters
                .decode(&written)
                .expect("an escaped cell reads back");
            let want = if date {
                text.replace('-', "")
            } else {
                text.clone()
            };
            assert_eq!(read, want, "an HL7 cell written back reads differently");
        }
    } else if !json {
        assert!(
            out == unit.raw,
            "a CSV unit written back with its own cells differs"
        );
    } else if let Ok(text) = std::str::from_utf8(&out) {
        let document = text
            .trim_start_matches('\u{feff}')
            .trim_end_matches(['\r', '\n']);
        assert!(
            serde_json::from_str::<serde::de::IgnoredAny>(document).is_ok(),
            "a JSON unit written back with its own cells is no longer JSON"
        );
    } else {
        panic!("a JSON unit written back is not UTF-8");
    }
}
