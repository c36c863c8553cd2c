//! CSV (RFC 4180) with a header row, cut into records whose untouched bytes
//! pass through exactly.
//!
//! The `csv` crate parses fields but hands back their unescaped contents,
//! never the bytes they came from, so writing a record back with it would
//! normalise the quoting of every column it did not touch. Here a record is
//! found by quote parity and split into raw field spans; only mapped cells
//! are unescaped and, on the way out, re-encoded.

use std::io::BufRead;
use std::ops::Range;

use super::{BulkError, Cell, Encoding, Location, MAX_UNIT_BYTES, Names, Unit, UnitReader};

/// Which CSV columns go to which namespaces.
#[derive(Debug, Clone)]
pub struct CsvLayout {
    maps: Vec<(String, String)>,
}

impl CsvLayout {
    /// `maps` are (column name, namespace) pairs, as given by
    /// `--map COLUMN=NAMESPACE`.
    pub fn new(maps: Vec<(String, String)>) -> Self {
        Self { maps }
    }
}

/// One field of a record: its raw bytes and whether they are quoted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RawField {
    span: Range<usize>,
    quoted: bool,
}

/// Splits a record (without its line terminator) into fields.
fn split(record: &[u8]) -> Result<Vec<RawField>, &'static str> {
    let mut fields = Vec::new();
    let mut at = 0;
    loop {
        let start = at;
        if record.get(at) == Some(&b'"') {
            at += 1;
            loop {
                let Some(quote) = record[at..].iter().position(|&b| b == b'"') else {
                    return Err("a quoted field is not closed");
                };
                at += quote + 1;
                if record.get(at) == Some(&b'"') {
                    at += 1;
                } else {
                    break;
                }
            }
            fields.push(RawField {
                span: start..at,
                quoted: true,
            });
            match record.get(at) {
                None => return Ok(fields),
                Some(b',') => at += 1,
                Some(_) => return Err("text after the closing quote of a field"),
            }
        } else {
            let end = record[at..]
                .iter()
                .position(|&b| b == b',')
                .map_or(record.len(), |p| at + p);
            if record[start..end].contains(&b'"') {
                return Err("a quote inside an unquoted field (RFC 4180 wants the field quoted)");
            }
            // Written back, such a field would have to be quoted: the output
            // would not be the input byte for byte.
            if record[start..end].contains(&b'\r') {
                return Err(
                    "a carriage return inside an unquoted field (RFC 4180 wants the field quoted)",
                );
            }
            fields.push(RawField {
                span: start..end,
                quoted: false,
            });
            if end == record.len() {
                return Ok(fields);
            }
            at = end + 1;
        }
    }
}

/// The text of a field: quotes removed and `""` made `"`.
fn unescape(raw: &[u8], quoted: bool) -> Result<String, &'static str> {
    let bytes = if quoted {
        let inner = &raw[1..raw.len() - 1];
        let mut text = Vec::with_capacity(inner.len());
        let mut rest = inner;
        while let Some(q) = rest.iter().position(|&b| b == b'"') {
            text.extend_from_slice(&rest[..=q]);
            rest = &rest[q + 2..];
        }
        text.extend_from_slice(rest);
        text
    } else {
        raw.to_vec()
    };
    String::from_utf8(bytes).map_err(|_| "the cell is not valid UTF-8")
}

/// The length of a record's line terminator (`\n` or `\r\n`, or a lone `\r`
/// ending the input, which is where one can only be), if it has one.
fn terminator(record: &[u8]) -> usize {
    match record {
        [.., b'\r', b'\n'] => 2,
        [.., b'\n'] | [.., b'\r'] => 1,
        _ => 0,
    }
}

/// Reads the records of a CSV input.
pub(super) struct CsvReader<R> {
    input: R,
    /// Mapped (field index, namespace index, column index), by field index.
    mapped: Vec<(usize, usize, usize)>,
    width: usize,
    /// The header, returned as the first unit.
    header: Option<Unit>,
    row: u64,
    next_line: u64,
}

impl<R: BufRead + Send> CsvReader<R> {
    /// Reads the header and resolves the mapped columns.
    pub(super) fn new(mut input: R, layout: &CsvLayout) -> Result<(Self, Names), BulkError> {
        let mut raw = Vec::new();
        let lines = read_record(&mut input, &mut raw, 1)?;
        if raw.is_empty() {
            return Err(BulkError::Input(
                "the input is empty: a CSV file needs a header row".into(),
            ));
        }
        let body = &raw[..raw.len() - terminator(&raw)];
        let fields = split(body).map_err(|e| BulkError::Input(format!("the header row: {e}")))?;
        let mut header = Vec::with_capacity(fields.len());
        for field in &fields {
            let name = unescape(&body[field.span.clone()], field.quoted)
                .map_err(|e| BulkError::Input(format!("the header row: {e}")))?;
            header.push(name);
        }
        if let Some(first) = header.first_mut()
            && let Some(stripped) = first.strip_prefix('\u{feff}')
        {
            *first = stripped.to_owned();
        }
        let mut names = Names::default();
        let mut mapped = Vec::new();
        for (column, namespace) in &layout.maps {
            let found: Vec<usize> = (0..header.len())
                .filter(|i| header[*i] == *column)
                .collect();
            let index = match found.as_slice() {
                [index] => *index,
                [] => return Err(unknown_column(&header, column, namespace)),
                _ => {
                    return Err(BulkError::Input(format!(
                        "--map {column}={namespace}: the header has {} columns named {column:?}",
                        found.len()
                    )));
                }
            };
            if mapped.iter().any(|(i, _, _)| *i == index) {
                return Err(BulkError::Input(format!(
                    "column {column:?} is mapped twice"
                )));
            }
            let ns = names
                .namespaces
                .iter()
                .position(|n| n == namespace)
                .unwrap_or_else(|| {
                    names.namespaces.push(namespace.clone());
                    names.namespaces.len() - 1
                });
            names.columns.push(column.clone());
            mapped.push((index, ns, names.columns.len() - 1));
        }
        mapped.sort_unstable();
        let header = Unit {
            row: 0,
            line: 1,
            raw,
            cells: Vec::new(),
            problem: None,
        };
        Ok((
            Self {
                input,
                mapped,
                width: fields.len(),
                header: Some(header),
                row: 0,
                next_line: 1 + lines,
            },
            names,
        ))
    }
}

/// A mapped column the header lacks. The header is not listed: when a file
/// has no header row its first row is data, and an error must not echo it.
/// A header name that differs only in case or surrounding spaces is
/// suggested — a value will not look like the column's name.
fn unknown_column(header: &[String], column: &str, namespace: &str) -> BulkError {
    let near = header
        .iter()
        .find(|h| h.trim().eq_ignore_ascii_case(column.trim()));
    let hint = match near {
        Some(name) => format!("; did you mean {name:?}?"),
        None => format!(
            " (the header row has {} columns; names are compared exactly)",
            header.len()
        ),
    };
    BulkError::Input(format!(
        "--map {column}={namespace}: no column {column:?} in the header row{hint}"
    ))
}

/// Appends one record, up to and including its terminator, to `raw`: lines
/// are joined while a quoted field is open. Returns the number of lines.
fn read_record(input: &mut impl BufRead, raw: &mut Vec<u8>, line: u64) -> Result<u64, BulkError> {
    let mut quotes = 0usize;
    let mut lines = 0;
    loop {
        let start = raw.len();
        let n = input
            .read_until(b'\n', raw)
            .map_err(BulkError::io("cannot read the input"))?;
        if n == 0 {
            return Ok(lines);
        }
        lines += 1;
        quotes += raw[start..].iter().filter(|&&b| b == b'"').count();
        if quotes.is_multiple_of(2) {
            return Ok(lines);
        }
        if raw.len() > MAX_UNIT_BYTES {
            return Err(BulkError::Input(format!(
                "the record starting on line {line} is longer than {} MiB: is a quote left open?",
                MAX_UNIT_BYTES >> 20
            )));
        }
    }
}

impl<R: BufRead + Send> UnitReader for CsvReader<R> {
    fn next_unit(&mut self) -> Result<Option<Unit>, BulkError> {
        if let Some(header) = self.header.take() {
            return Ok(Some(header));
        }
        let line = self.next_line;
        let mut raw = Vec::new();
        let lines = read_record(&mut self.input, &mut raw, line)?;
        if raw.is_empty() {
            return Ok(None);
        }
        self.next_line += lines;
        let body = &raw[..raw.len() - terminator(&raw)];
        if body.is_empty() {
            return Ok(Some(Unit {
                row: 0,
                line,
                raw,
                cells: Vec::new(),
                problem: None,
            }));
        }
        self.row += 1;
        let row = self.row;
        let fields = split(body).map_err(|e| {
            BulkError::Input(format!(
                "row {row} (line {line}): {e}; nothing was written past the row before it"
            ))
        })?;
        let mut cells = Vec::with_capacity(self.mapped.len());
        for &(index, namespace, column) in &self.mapped {
            let Some(field) = fields.get(index) else {
                cells.push(Cell {
                    span: body.len()..body.len(),
                    namespace,
                    text: Err("the row has fewer fields than the header"),
                    location: Location::Column(column),
                    encoding: Encoding::CsvBare,
                });
                continue;
            };
            let span = field.span.clone();
            if span.is_empty() || (field.quoted && span.len() == 2) {
                continue;
            }
            cells.push(Cell {
                text: unescape(&body[span.clone()], field.quoted),
                span,
                namespace,
                location: Location::Column(column),
                encoding: if field.quoted {
                    Encoding::CsvQuoted
                } else {
                    Encoding::CsvBare
                },
            });
        }
        let problem =
            (fields.len() > self.width).then_some("the row has more fields than the header");
        Ok(Some(Unit {
            row,
            line,
            raw,
            cells,
            problem,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(record: &str) -> Vec<(&str, bool)> {
        split(record.as_bytes())
            .expect("valid record")
            .into_iter()
            .map(|f| (&record[f.span], f.quoted))
            .collect()
    }

    #[test]
    fn fields_keep_their_raw_bytes() {
        assert_eq!(
            spans("a,\"b,c\",,\"d\"\"e\",\"\""),
            [
                ("a", false),
                ("\"b,c\"", true),
                ("", false),
                ("\"d\"\"e\"", true),
                ("\"\"", true)
            ]
        );
        assert_eq!(spans("x,"), [("x", false), ("", false)]);
        assert_eq!(spans("\"line\r\nbreak\""), [("\"line\r\nbreak\"", true)]);
        assert_eq!(unescape(b"\"d\"\"e\"\"\"", true).as_deref(), Ok("d\"e\""));
    }

    #[test]
    fn malformed_records_are_named() {
        assert!(split(b"\"open").is_err());
        assert!(split(b"\"a\"b").is_err());
        assert!(split(b"a\"b").is_err());
        // Found by fuzzing: a bare CR in an unquoted field could not be
        // written back without quoting it.
        assert!(split(b"a\rb,c").is_err());
        assert!(split(b"\"a\rb\",c").is_ok());
    }

    /// Found by fuzzing: an input that ends in a lone CR (a CRLF cut short,
    /// or old Mac line ends) ends its last record there, as a terminator.
    #[test]
    fn a_lone_cr_at_the_end_of_the_input_ends_the_record() {
        let input = "ssn,Patient Name\n\r";
        let layout = CsvLayout::new(vec![("ssn".into(), "ssn".into())]);
        let (mut reader, _) = CsvReader::new(input.as_bytes(), &layout).expect("header");
        let mut units = Vec::new();
        while let Some(unit) = reader.next_unit().expect("unit") {
            units.push(unit);
        }
        let raw: Vec<u8> = units.iter().flat_map(|u| u.raw.clone()).collect();
        assert_eq!(raw, input.as_bytes());
        assert!(
            units[1].cells.is_empty() && units[1].row == 0,
            "a blank line"
        );
    }

    #[test]
    fn records_span_quoted_line_breaks_and_the_header_resolves_names() {
        let input = "\u{feff}id,full name,note\r\n1,\"Doe,\r\nJane\",x\r\n2,,\"y\"\n3,Ann";
        let layout = CsvLayout::new(vec![
            ("full name".into(), "name".into()),
            ("id".into(), "mrn".into()),
        ]);
        let (mut reader, names) = CsvReader::new(input.as_bytes(), &layout).expect("header");
        assert_eq!(names.namespaces, ["name", "mrn"]);
        let mut units = Vec::new();
        while let Some(unit) = reader.next_unit().expect("unit") {
            units.push(unit);
        }
        let raw: Vec<u8> = units.iter().flat_map(|u| u.raw.clone()).collect();
        assert_eq!(raw, input.as_bytes(), "records cover the input exactly");
        let rows: Vec<_> = units
            .iter()
            .map(|u| (u.row, u.line, u.cells.len()))
            .collect();
        assert_eq!(rows, [(0, 1, 0), (1, 2, 2), (2, 4, 1), (3, 5, 2)]);
        assert_eq!(units[1].cells[1].text.as_deref(), Ok("Doe,\r\nJane"));
        assert_eq!(units[1].cells[1].encoding, Encoding::CsvQuoted);
    }

    #[test]
    fn an_unknown_column_is_named_without_echoing_the_first_row() {
        let layout = CsvLayout::new(vec![("SSN".into(), "ssn".into())]);
        let Err(BulkError::Input(message)) = CsvReader::new(&b"ssn,name\n"[..], &layout) else {
            panic!("expected an input error");
        };
        assert!(message.contains("did you mean \"ssn\""), "{message}");
        // A file without its header row: the first row is PHI.
        let Err(BulkError::Input(message)) =
            CsvReader::new(&b"123-45-6789,Jane Doe\n"[..], &layout)
        else {
            panic!("expected an input error");
        };
        assert!(
            !message.contains("123-45") && !message.contains("Jane"),
            "{message}"
        );
        assert!(message.contains("2 columns"), "{message}");
    }
}
