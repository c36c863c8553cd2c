//! Delimited text — CSV (RFC 4180) and its dialects: `;`, tab or `|`
//! between fields, another quote character, an escape character instead of
//! doubled quotes, with or without a header row — cut into records whose
//! untouched bytes pass through exactly.
//!
//! csv-core parses. It reports how many input bytes each field took, which
//! gives every field's raw span within its record, and it hands back the
//! field's text unescaped. Unmapped fields are never written again: the
//! record's bytes are. Only a replaced cell is encoded, in the dialect.

use std::io::BufRead;
use std::ops::Range;

use csv_core::{ReadFieldResult, ReaderBuilder};

use super::{BulkError, Cell, Encoding, Location, MAX_UNIT_BYTES, Names, Unit, UnitReader};

/// How a delimited file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CsvDialect {
    /// Between fields: `,` by default; `;`, tab and `|` are common.
    pub delimiter: u8,
    /// Around a field that holds a delimiter, a quote or a line break.
    pub quote: u8,
    /// Before a quote (or itself) inside a quoted field; `None`: a quote
    /// inside a quoted field is written twice, as RFC 4180 has it.
    pub escape: Option<u8>,
    /// The first record names the columns.
    pub header: bool,
}

impl Default for CsvDialect {
    fn default() -> Self {
        Self {
            delimiter: b',',
            quote: b'"',
            escape: None,
            header: true,
        }
    }
}

impl CsvDialect {
    /// Why the dialect cannot be read unambiguously, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        let mut special = vec![("the delimiter", self.delimiter), ("the quote", self.quote)];
        if let Some(escape) = self.escape {
            special.push(("the escape character", escape));
        }
        for (name, byte) in &special {
            if !byte.is_ascii() || matches!(byte, b'\r' | b'\n') {
                return Err(format!(
                    "{name} must be one ASCII character other than a line break"
                ));
            }
        }
        for (i, (a, x)) in special.iter().enumerate() {
            if let Some((b, _)) = special[i + 1..].iter().find(|(_, y)| y == x) {
                return Err(format!("{a} and {b} must differ"));
            }
        }
        Ok(())
    }

    fn reader(&self) -> csv_core::Reader {
        ReaderBuilder::new()
            .delimiter(self.delimiter)
            .quote(self.quote)
            .escape(self.escape)
            .double_quote(self.escape.is_none())
            .build()
    }

    /// Whether `text`, written bare, would not read back as one field. An
    /// escape character is quoted (and escaped) too: csv-core takes it
    /// literally outside quotes, but other readers (Python's, say) do not.
    fn needs_quotes(&self, text: &str) -> bool {
        text.bytes().any(|b| {
            b == self.delimiter
                || b == self.quote
                || Some(b) == self.escape
                || matches!(b, b'\r' | b'\n')
        })
    }

    /// Writes `text` as a field: bare when it can be (and `quoted` is not
    /// set), else in quotes, its quotes doubled or escaped.
    pub(super) fn encode(&self, text: &str, quoted: bool, out: &mut Vec<u8>) {
        if !quoted && !self.needs_quotes(text) {
            out.extend_from_slice(text.as_bytes());
            return;
        }
        out.push(self.quote);
        for b in text.bytes() {
            if b == self.quote || Some(b) == self.escape {
                out.push(self.escape.unwrap_or(self.quote));
            }
            out.push(b);
        }
        out.push(self.quote);
    }
}

/// Which columns go to which namespaces, and how the file is written.
#[derive(Debug, Clone)]
pub struct CsvLayout {
    maps: Vec<(String, String)>,
    dialect: CsvDialect,
}

impl CsvLayout {
    /// `maps` are (column, namespace) pairs, as given by `--map
    /// COLUMN=NAMESPACE`: the header's name of the column, or its number
    /// from 1 when the file has no header row. RFC 4180 CSV.
    pub fn new(maps: Vec<(String, String)>) -> Self {
        Self::with_dialect(maps, CsvDialect::default())
    }

    /// [`CsvLayout::new`] for a file written in `dialect`.
    pub fn with_dialect(maps: Vec<(String, String)>, dialect: CsvDialect) -> Self {
        Self { maps, dialect }
    }
}

/// One field of a record: where its raw bytes are, whether they are
/// quoted, and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Field {
    span: Range<usize>,
    quoted: bool,
    text: Vec<u8>,
}

/// One record as read: its bytes (blank lines before it included, and its
/// terminator) and its fields.
struct Record {
    raw: Vec<u8>,
    fields: Vec<Field>,
    /// Bytes before the record's first field: blank lines, a byte-order
    /// mark.
    skipped: usize,
}

/// Line ends in `bytes` (a line feed, or a carriage return not followed by
/// one, as old Mac files end lines), so that a record spanning quoted line
/// breaks counts each.
fn line_feeds(bytes: &[u8]) -> u64 {
    let mut ends = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' || (b == b'\r' && bytes.get(i + 1) != Some(&b'\n')) {
            ends += 1;
        }
    }
    ends
}

/// Reads the records of a delimited input.
pub(super) struct CsvReader<R> {
    input: R,
    core: csv_core::Reader,
    dialect: CsvDialect,
    /// Mapped (field index, namespace index, column index), by field index.
    mapped: Vec<(usize, usize, usize)>,
    /// Fields of the header, or of the first row without one.
    width: usize,
    /// The header, returned as the first unit; or the first row, when the
    /// file has none and that row was read to learn the width.
    first: Option<Record>,
    row: u64,
    next_line: u64,
    /// csv-core's unescaped output, before it is moved into a field.
    scratch: Vec<u8>,
    /// Bytes read before the first record (a byte-order mark), which go
    /// with it.
    prefix: Vec<u8>,
}

/// UTF-8's byte-order mark, which some writers put first.
const BOM: &[u8] = b"\xef\xbb\xbf";

impl<R: BufRead + Send> CsvReader<R> {
    /// Reads the header (or the first row, without one) and resolves the
    /// mapped columns.
    pub(super) fn new(input: R, layout: &CsvLayout) -> Result<(Self, Names), BulkError> {
        layout.dialect.check().map_err(BulkError::Input)?;
        let mut reader = Self {
            input,
            core: layout.dialect.reader(),
            dialect: layout.dialect,
            mapped: Vec::new(),
            width: 0,
            first: None,
            row: 0,
            next_line: 1,
            scratch: vec![0; 64 << 10],
            prefix: Vec::new(),
        };
        // The mark is taken here rather than left to csv-core, which counts
        // it in the first field's bytes, and which would take a first read
        // holding only the mark for the end of the input.
        let buffer = reader
            .input
            .fill_buf()
            .map_err(BulkError::io("cannot read the input"))?;
        if buffer.starts_with(BOM) {
            reader.prefix = BOM.to_vec();
            reader.input.consume(BOM.len());
        }
        let Some(first) = reader.read_record()? else {
            return Err(BulkError::Input(if layout.dialect.header {
                "the input is empty: a CSV file needs a header row".into()
            } else {
                "the input is empty".into()
            }));
        };
        if first.fields.is_empty() {
            return Err(BulkError::Input("the input holds only blank lines".into()));
        }
        let what = if layout.dialect.header {
            "the header row"
        } else {
            "the first row"
        };
        for field in &first.fields {
            check_field(&first.raw, field, &layout.dialect)
                .map_err(|e| BulkError::Input(format!("{what}: {e}")))?;
        }
        reader.width = first.fields.len();
        let names = if layout.dialect.header {
            reader.resolve_names(&first, layout)?
        } else {
            reader.resolve_numbers(layout)?
        };
        reader.first = Some(first);
        Ok((reader, names))
    }

    /// Maps columns named in the header row.
    fn resolve_names(&mut self, first: &Record, layout: &CsvLayout) -> Result<Names, BulkError> {
        let mut header = Vec::with_capacity(first.fields.len());
        for field in &first.fields {
            let name = String::from_utf8(field.text.clone())
                .map_err(|_| BulkError::Input("the header row is not valid UTF-8".into()))?;
            header.push(name);
        }
        if let Some(name) = header.first_mut()
            && let Some(stripped) = name.strip_prefix('\u{feff}')
        {
            *name = stripped.to_owned();
        }
        let mut names = Names::default();
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
            self.map(index, column, namespace, &mut names)?;
        }
        self.mapped.sort_unstable();
        Ok(names)
    }

    /// Maps columns by number, from 1, for a file without a header row.
    fn resolve_numbers(&mut self, layout: &CsvLayout) -> Result<Names, BulkError> {
        let mut names = Names::default();
        for (column, namespace) in &layout.maps {
            let number = column
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    BulkError::Input(format!(
                        "--map {column}={namespace}: without a header row, columns are numbered from 1"
                    ))
                })?;
            if number > self.width {
                return Err(BulkError::Input(format!(
                    "--map {column}={namespace}: the first row has {} columns",
                    self.width
                )));
            }
            self.map(number - 1, column.trim(), namespace, &mut names)?;
        }
        self.mapped.sort_unstable();
        Ok(names)
    }

    fn map(
        &mut self,
        index: usize,
        column: &str,
        namespace: &str,
        names: &mut Names,
    ) -> Result<(), BulkError> {
        if self.mapped.iter().any(|(i, _, _)| *i == index) {
            return Err(BulkError::Input(format!(
                "column {column:?} is mapped twice"
            )));
        }
        let ns = names
            .namespaces
            .iter()
            .position(|n| n == namespace)
            .unwrap_or_else(|| {
                names.namespaces.push(namespace.to_owned());
                names.namespaces.len() - 1
            });
        names.columns.push(column.to_owned());
        self.mapped.push((index, ns, names.columns.len() - 1));
        Ok(())
    }

    /// The next record, its terminator and any blank lines before it
    /// included; `None` at the end of the input.
    fn read_record(&mut self) -> Result<Option<Record>, BulkError> {
        let line = self.next_line;
        let mut raw = std::mem::take(&mut self.prefix);
        let mut fields = Vec::new();
        let mut text = Vec::new();
        let mut start = raw.len();
        let mut skipped = start;
        loop {
            let buffer = self
                .input
                .fill_buf()
                .map_err(BulkError::io("cannot read the input"))?;
            let (result, read, written) = self.core.read_field(buffer, &mut self.scratch);
            raw.extend_from_slice(&buffer[..read]);
            self.input.consume(read);
            text.extend_from_slice(&self.scratch[..written]);
            if raw.len() > MAX_UNIT_BYTES {
                return Err(BulkError::Input(format!(
                    "the record starting on line {line} is longer than {} MiB: is a quote left open?",
                    MAX_UNIT_BYTES >> 20
                )));
            }
            match result {
                ReadFieldResult::InputEmpty | ReadFieldResult::OutputFull => {}
                ReadFieldResult::Field { record_end } => {
                    if fields.is_empty() {
                        // csv-core passes over blank lines before a record;
                        // their bytes stay with it, outside its fields.
                        start += raw[start..]
                            .iter()
                            .take_while(|b| matches!(b, b'\r' | b'\n'))
                            .count();
                        skipped = start;
                    }
                    // The field's bytes end before what ended it: the
                    // delimiter, or the record's terminator (none at the
                    // end of the input, where nothing was read).
                    let ended_by_byte = !record_end || read > 0;
                    let end = if ended_by_byte {
                        raw.len() - 1
                    } else {
                        raw.len()
                    };
                    let end = end.max(start);
                    fields.push(Field {
                        span: start..end,
                        quoted: raw.get(start) == Some(&self.dialect.quote),
                        text: std::mem::take(&mut text),
                    });
                    start = raw.len();
                    if record_end {
                        self.take_crlf_tail(&mut raw)?;
                        break;
                    }
                }
                ReadFieldResult::End => {
                    if raw.is_empty() {
                        return Ok(None);
                    }
                    // Blank lines at the end of the input: no record.
                    break;
                }
            }
        }
        self.next_line += line_feeds(&raw);
        Ok(Some(Record {
            raw,
            fields,
            skipped,
        }))
    }

    /// After a record ended by a carriage return, the line feed of a CRLF
    /// belongs to that record's bytes, not to the blank space before the
    /// next.
    fn take_crlf_tail(&mut self, raw: &mut Vec<u8>) -> Result<(), BulkError> {
        if raw.last() != Some(&b'\r') {
            return Ok(());
        }
        let buffer = self
            .input
            .fill_buf()
            .map_err(BulkError::io("cannot read the input"))?;
        if buffer.first() == Some(&b'\n') {
            raw.push(b'\n');
            self.input.consume(1);
        }
        Ok(())
    }
}

/// Refuses a field csv-core would read leniently but that cannot be what
/// the file meant: an unclosed quote, text after a closing quote, a quote
/// inside an unquoted field (RFC 4180 wants such a field quoted; in another
/// dialect it is most often a wrong --quote).
fn check_field(raw: &[u8], field: &Field, dialect: &CsvDialect) -> Result<(), &'static str> {
    let bytes = &raw[field.span.clone()];
    if field.quoted {
        let closed = bytes.len() >= 2
            && bytes.last() == Some(&dialect.quote)
            && closes(&bytes[1..bytes.len() - 1], dialect);
        if !closed {
            return Err(
                "a quoted field is not closed, text follows its closing quote, or an escape character comes before a character that needs none",
            );
        }
    } else if bytes.contains(&dialect.quote) {
        return Err("a quote inside an unquoted field (the field should be quoted)");
    } else if dialect.escape.is_some_and(|e| bytes.contains(&e)) {
        // csv-core takes it literally there; other readers (and the
        // writers of database dumps) escape the next byte with it, a
        // delimiter say, and the fields would not be what the file means.
        return Err("an escape character outside quotes (the field should be quoted)");
    }
    Ok(())
}

/// Whether `inner`, the bytes between a field's first and last quote,
/// holds no quote that is not doubled (or escaped): else the last quote is
/// not the closing one, or text follows an earlier one.
fn closes(inner: &[u8], dialect: &CsvDialect) -> bool {
    let mut i = 0;
    while i < inner.len() {
        let b = inner[i];
        if Some(b) == dialect.escape {
            // An escape escapes a quote or itself; before anything else it
            // would be dropped by the reading, and the text changed. One at
            // the very end escapes the closing quote.
            match inner.get(i + 1) {
                Some(&next) if next == dialect.quote || Some(next) == dialect.escape => i += 2,
                _ => return false,
            }
        } else if b == dialect.quote {
            if dialect.escape.is_some() || inner.get(i + 1) != Some(&dialect.quote) {
                return false;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    i == inner.len()
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
            " (the header row has {} columns; names are compared exactly; a file without one takes --no-header)",
            header.len()
        ),
    };
    BulkError::Input(format!(
        "--map {column}={namespace}: no column {column:?} in the header row{hint}"
    ))
}

impl<R: BufRead + Send> CsvReader<R> {
    /// A record as a unit: the header passes through; a data row's mapped
    /// fields become cells.
    fn unit(&mut self, record: Record, header: bool) -> Result<Unit, BulkError> {
        let line =
            self.next_line - line_feeds(&record.raw) + line_feeds(&record.raw[..record.skipped]);
        if header || record.fields.is_empty() {
            return Ok(Unit {
                row: 0,
                line,
                raw: record.raw,
                cells: Vec::new(),
                problem: None,
            });
        }
        // A line holding only spaces is a record of one field; a line with
        // nothing is a blank line, which csv-core passes over.
        self.row += 1;
        let row = self.row;
        for field in &record.fields {
            check_field(&record.raw, field, &self.dialect).map_err(|e| {
                BulkError::Input(format!(
                    "row {row} (line {line}): {e}; nothing was written past the row before it"
                ))
            })?;
        }
        let end = record.fields.last().map_or(0, |f| f.span.end);
        let mut cells = Vec::with_capacity(self.mapped.len());
        for &(index, namespace, column) in &self.mapped {
            let Some(field) = record.fields.get(index) else {
                cells.push(Cell {
                    span: end..end,
                    namespace,
                    text: Err("the row has fewer fields than the header"),
                    location: Location::Column(column),
                    encoding: Encoding::Csv {
                        quoted: false,
                        dialect: self.dialect,
                    },
                });
                continue;
            };
            if field.text.is_empty() {
                continue;
            }
            cells.push(Cell {
                text: String::from_utf8(field.text.clone())
                    .map_err(|_| "the cell is not valid UTF-8"),
                span: field.span.clone(),
                namespace,
                location: Location::Column(column),
                encoding: Encoding::Csv {
                    quoted: field.quoted,
                    dialect: self.dialect,
                },
            });
        }
        let problem = (record.fields.len() > self.width).then_some(if self.dialect.header {
            "the row has more fields than the header"
        } else {
            "the row has more fields than the first row"
        });
        Ok(Unit {
            row,
            line,
            raw: record.raw,
            cells,
            problem,
        })
    }
}

impl<R: BufRead + Send> UnitReader for CsvReader<R> {
    fn next_unit(&mut self) -> Result<Option<Unit>, BulkError> {
        if let Some(first) = self.first.take() {
            // `next_line` is past the first record already; `unit` counts
            // back from it.
            return self.unit(first, self.dialect.header).map(Some);
        }
        match self.read_record()? {
            Some(record) => self.unit(record, false).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(input: &str, layout: &CsvLayout) -> (Vec<Unit>, Names) {
        let (mut reader, names) = CsvReader::new(input.as_bytes(), layout).expect("header");
        let mut units = Vec::new();
        while let Some(unit) = reader.next_unit().expect("unit") {
            units.push(unit);
        }
        let raw: Vec<u8> = units.iter().flat_map(|u| u.raw.clone()).collect();
        assert_eq!(raw, input.as_bytes(), "units cover the input exactly");
        (units, names)
    }

    fn texts(unit: &Unit) -> Vec<&str> {
        unit.cells
            .iter()
            .map(|c| c.text.as_deref().expect("a text"))
            .collect()
    }

    fn spans<'a>(input: &'a str, unit: &Unit, at: usize) -> Vec<&'a str> {
        unit.cells
            .iter()
            .map(|c| &input[at + c.span.start..at + c.span.end])
            .collect()
    }

    #[test]
    fn records_span_quoted_line_breaks_and_the_header_resolves_names() {
        let input = "\u{feff}id,full name,note\r\n1,\"Doe,\r\nJane\",x\r\n2,,\"y\"\n3,Ann";
        let layout = CsvLayout::new(vec![
            ("full name".into(), "name".into()),
            ("id".into(), "mrn".into()),
        ]);
        let (units, names) = read_all(input, &layout);
        assert_eq!(names.namespaces, ["name", "mrn"]);
        let rows: Vec<_> = units
            .iter()
            .map(|u| (u.row, u.line, u.cells.len()))
            .collect();
        assert_eq!(rows, [(0, 1, 0), (1, 2, 2), (2, 4, 1), (3, 5, 2)]);
        assert_eq!(texts(&units[1]), ["1", "Doe,\r\nJane"]);
        assert_eq!(
            units[1].cells[1].encoding,
            Encoding::Csv {
                quoted: true,
                dialect: CsvDialect::default()
            }
        );
        let at = units[0].raw.len();
        assert_eq!(spans(input, &units[1], at), ["1", "\"Doe,\r\nJane\""]);
    }

    #[test]
    fn quoted_fields_keep_their_raw_bytes_and_read_unescaped() {
        let input = "a,b,c\n\"d\"\"e\",\"\",\"x,y\"\n";
        let layout = CsvLayout::new(vec![("a".into(), "n".into()), ("c".into(), "n".into())]);
        let (units, _) = read_all(input, &layout);
        assert_eq!(texts(&units[1]), ["d\"e", "x,y"]);
        assert_eq!(spans(input, &units[1], 6), ["\"d\"\"e\"", "\"x,y\""]);
    }

    #[test]
    fn dialects_semicolons_tabs_pipes_quotes_and_escapes() {
        for (input, dialect, want) in [
            (
                "ssn;name\n123-45-6789;\"Doe; Jane\"\n",
                CsvDialect {
                    delimiter: b';',
                    ..CsvDialect::default()
                },
                vec!["123-45-6789", "Doe; Jane"],
            ),
            (
                "ssn\tname\r\n123-45-6789\tJane Doe\r\n",
                CsvDialect {
                    delimiter: b'\t',
                    ..CsvDialect::default()
                },
                vec!["123-45-6789", "Jane Doe"],
            ),
            (
                "ssn|name\n123-45-6789|'O''Brien|Jane'\n",
                CsvDialect {
                    delimiter: b'|',
                    quote: b'\'',
                    ..CsvDialect::default()
                },
                vec!["123-45-6789", "O'Brien|Jane"],
            ),
            (
                "ssn,name\n123-45-6789,\"C:\\\\temp\"\n",
                CsvDialect {
                    escape: Some(b'\\'),
                    ..CsvDialect::default()
                },
                vec!["123-45-6789", "C:\\temp"],
            ),
            (
                "ssn,name\n123-45-6789,\"say \\\"hi\\\" \\\\ bye\"\n",
                CsvDialect {
                    escape: Some(b'\\'),
                    ..CsvDialect::default()
                },
                vec!["123-45-6789", "say \"hi\" \\ bye"],
            ),
        ] {
            let layout = CsvLayout::with_dialect(
                vec![("ssn".into(), "ssn".into()), ("name".into(), "name".into())],
                dialect,
            );
            let (units, _) = read_all(input, &layout);
            assert_eq!(texts(&units[1]), want, "{input:?}");
            // The text written back in the dialect, bare where it can be or
            // quoted, reads back the same.
            for quoted in [false, true] {
                let mut field = Vec::new();
                dialect.encode(want[1], quoted, &mut field);
                let mut file = format!(
                    "a{}b\nx{}",
                    dialect.delimiter as char, dialect.delimiter as char
                )
                .into_bytes();
                file.extend_from_slice(&field);
                file.push(b'\n');
                let file = String::from_utf8(file).expect("utf-8");
                let layout = CsvLayout::with_dialect(vec![("b".into(), "name".into())], dialect);
                let (again, _) = read_all(&file, &layout);
                assert_eq!(texts(&again[1]), [want[1]], "{file:?}");
            }
        }
    }

    #[test]
    fn without_a_header_columns_are_numbered_and_the_first_line_is_data() {
        let input = "123-45-6789,Jane\n\n987-65-4321,Ann\n";
        let layout = CsvLayout::with_dialect(
            vec![("1".into(), "ssn".into())],
            CsvDialect {
                header: false,
                ..CsvDialect::default()
            },
        );
        let (units, names) = read_all(input, &layout);
        assert_eq!(names.columns, ["1"]);
        let rows: Vec<_> = units.iter().map(|u| (u.row, u.line)).collect();
        assert_eq!(rows, [(1, 1), (2, 3)]);
        assert_eq!(texts(&units[0]), ["123-45-6789"]);
        assert_eq!(texts(&units[1]), ["987-65-4321"]);
        for bad in ["0", "3", "ssn"] {
            let layout = CsvLayout::with_dialect(
                vec![(bad.into(), "ssn".into())],
                CsvDialect {
                    header: false,
                    ..CsvDialect::default()
                },
            );
            let Err(BulkError::Input(message)) = CsvReader::new(input.as_bytes(), &layout) else {
                panic!("{bad} is not a column");
            };
            assert!(!message.contains("123-45"), "{message}");
        }
    }

    #[test]
    fn a_byte_order_mark_passes_through_outside_the_first_field() {
        for input in [
            "\u{feff}\"ssn\",\"n\"\r\n\"123-45-6789\",1\r\n",
            "\u{feff}\n\nssn,n\n123-45-6789,1\n",
        ] {
            let layout = CsvLayout::new(vec![("ssn".into(), "ssn".into())]);
            let (units, _) = read_all(input, &layout);
            assert_eq!(texts(&units[1]), ["123-45-6789"], "{input:?}");
            assert_eq!(
                units[1].line,
                line_feeds(&input.as_bytes()[..input.find("123").unwrap_or(0)]) + 1
            );
        }
        let layout = CsvLayout::with_dialect(
            vec![("1".into(), "ssn".into())],
            CsvDialect {
                header: false,
                ..CsvDialect::default()
            },
        );
        let input = "\u{feff}123-45-6789,x\n";
        let (units, _) = read_all(input, &layout);
        assert_eq!(units[0].cells[0].span, 3..14, "the mark is not in the cell");
        // A first read holding only the mark is not the end of the input.
        let reader = std::io::BufReader::with_capacity(3, input.as_bytes());
        let (mut reader, _) = CsvReader::new(reader, &layout).expect("a first row");
        let unit = reader.next_unit().expect("unit").expect("a row");
        assert_eq!(texts(&unit), ["123-45-6789"]);
    }

    #[test]
    fn blank_lines_and_line_ends_pass_through() {
        let input = "ssn,n\r\n\r\n123-45-6789,1\r\n\n\n987-65-4321,2\r\n\r\n";
        let layout = CsvLayout::new(vec![("ssn".into(), "ssn".into())]);
        let (units, _) = read_all(input, &layout);
        let rows: Vec<_> = units
            .iter()
            .map(|u| (u.row, u.line, u.cells.len()))
            .collect();
        assert_eq!(rows, [(0, 1, 0), (1, 3, 1), (2, 6, 1), (0, 7, 0)]);
    }

    /// Found by fuzzing the earlier reader: an input that ends in a lone CR
    /// (a CRLF cut short, or old Mac line ends) ends its last record there.
    #[test]
    fn a_lone_cr_ends_a_record() {
        let input = "ssn,Patient Name\r123-45-6789,x\r";
        let layout = CsvLayout::new(vec![("ssn".into(), "ssn".into())]);
        let (units, _) = read_all(input, &layout);
        assert_eq!(units.len(), 2);
        assert_eq!(texts(&units[1]), ["123-45-6789"]);
    }

    #[test]
    fn malformed_records_are_named_without_their_text() {
        let layout = CsvLayout::new(vec![("a".into(), "n".into())]);
        for input in ["a,b\n\"open,x\n", "a,b\n\"a\"b,c\n", "a,b\nx\"y,z\n"] {
            let (mut reader, _) = CsvReader::new(input.as_bytes(), &layout).expect("header");
            reader.next_unit().expect("the header");
            let Err(BulkError::Input(message)) = reader.next_unit() else {
                panic!("{input:?} should be refused");
            };
            assert!(message.contains("row 1"), "{message}");
            assert!(
                !message.contains("open") && !message.contains("x\"y"),
                "{message}"
            );
        }
        // An escape outside quotes, or before a character that needs none:
        // readers disagree on what the field holds.
        let dialect = CsvDialect {
            escape: Some(b'\\'),
            ..CsvDialect::default()
        };
        let layout = CsvLayout::with_dialect(vec![("a".into(), "n".into())], dialect);
        for input in ["a,b\nx\\,y,z\n", "a,b\n\"C:\\temp\",z\n"] {
            let (mut reader, _) = CsvReader::new(input.as_bytes(), &layout).expect("header");
            reader.next_unit().expect("the header");
            assert!(reader.next_unit().is_err(), "{input:?} should be refused");
        }
        // A mistaken dialect: the same delimiter and quote.
        let dialect = CsvDialect {
            quote: b',',
            ..CsvDialect::default()
        };
        assert!(CsvReader::new(&b"a\n"[..], &CsvLayout::with_dialect(vec![], dialect)).is_err());
    }

    proptest::proptest! {
        /// For any input of the characters that matter, in any dialect:
        /// the units cover the input byte for byte, cells lie in order
        /// inside their unit, and a unit written back with each cell's own
        /// text (in its encoding) is the unit again — so only a replaced
        /// cell can change.
        #[test]
        fn any_input_passes_through_and_writes_back_as_it_was(
            body in "[ab,;\"'\\\\\r\n ]{0,80}",
            dialect in 0usize..4,
            chunk in 1usize..9,
        ) {
            let dialect = [
                CsvDialect::default(),
                CsvDialect { delimiter: b';', quote: b'\'', ..CsvDialect::default() },
                CsvDialect { escape: Some(b'\\'), ..CsvDialect::default() },
                CsvDialect { header: false, ..CsvDialect::default() },
            ][dialect];
            let input = format!("\u{feff}a{}b\n{body}", dialect.delimiter as char);
            let maps = if dialect.header {
                vec![("a".into(), "x".into()), ("b".into(), "y".into())]
            } else {
                vec![("1".into(), "x".into()), ("2".into(), "y".into())]
            };
            let layout = CsvLayout::with_dialect(maps, dialect);
            // Read a few bytes at a time, so that fields, line ends and
            // CRLFs fall across the reader's buffer boundaries.
            let chunked = std::io::BufReader::with_capacity(chunk, input.as_bytes());
            let Ok((mut reader, _)) = CsvReader::new(chunked, &layout) else {
                return Ok(());
            };
            let mut passed = Vec::new();
            let mut finished = false;
            loop {
                let unit = match reader.next_unit() {
                    Ok(Some(unit)) => unit,
                    Ok(None) => {
                        finished = true;
                        break;
                    }
                    // A refused record ends the run there.
                    Err(_) => break,
                };
                let mut end = 0;
                for cell in &unit.cells {
                    proptest::prop_assert!(cell.span.start >= end && cell.span.end <= unit.raw.len());
                    end = cell.span.end;
                }
                if unit.problem.is_none() {
                    let texts: Vec<(usize, String)> = unit.cells.iter().enumerate()
                        .filter_map(|(i, c)| c.text.as_ref().ok().map(|t| (i, t.clone())))
                        .collect();
                    let mut replacements: Vec<(usize, &str)> =
                        texts.iter().map(|(i, t)| (*i, t.as_str())).collect();
                    let mut out = Vec::new();
                    super::super::splice(&unit, &mut replacements, &mut out);
                    proptest::prop_assert_eq!(&out, &unit.raw);
                }
                passed.extend_from_slice(&unit.raw);
            }
            // A read to the end covers the input.
            if finished {
                proptest::prop_assert_eq!(passed, input.as_bytes());
            }
        }
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
