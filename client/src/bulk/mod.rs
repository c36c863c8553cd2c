//! Bulk tokenization of whole files: delimited text, NDJSON, FHIR R4 (Bulk
//! Data NDJSON and Bundles), HL7 v2 messages (and an MLLP relay, [`mllp`]),
//! and Parquet files ([`ParquetLayout`]), read a row group at a time instead
//! of cutting into units.
//!
//! A reader thread cuts the input into *units* (a CSV record, an NDJSON line,
//! a Bundle, an HL7 message) and finds the cells to send; [`pipeline`] sends them over one
//! `TokenizeStream` or `DetokenizeStream` with several batches in flight and
//! resends what was unanswered when the server goes away; a writer thread
//! puts every unit back in input order, each cell replaced in place, so that
//! every other byte of the input passes through unchanged. Every stage holds
//! a bounded number of chunks, so memory does not grow with the input.

mod delimited;
mod fhir;
#[cfg(fuzzing)]
pub mod fuzzing;
mod hl7;
mod json;
pub mod mllp;
mod parquet;
mod pipeline;

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use delimited::{CsvDialect, CsvLayout};
pub use fhir::{FhirLayout, Profile, ProfileError};
pub use hl7::{Address as Hl7Address, AddressError as Hl7AddressError, Hl7Layout, Hl7Profile};
pub use json::{JsonLayout, Pointer, PointerError};
pub use parquet::ParquetLayout;
pub use pipeline::run;

/// The largest CSV record or NDJSON line read as one unit. A larger one is
/// almost always an unclosed quote or a file of another kind, and is refused
/// rather than read into memory.
pub const MAX_UNIT_BYTES: usize = 64 << 20;

/// Which way a run goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Values to tokens.
    Tokenize,
    /// Tokens to values; `masked` reveals all but the last 4 characters
    /// masked.
    Detokenize {
        /// Ask for the masked reveal.
        masked: bool,
    },
}

/// What happens to a row with a cell that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// Write the row with the failed cell as it was in the input.
    #[default]
    Keep,
    /// Leave the row out of the output.
    DropRow,
    /// Stop the run at that row.
    Fail,
}

/// How a run cuts its input and which cells it sends where.
pub enum Layout {
    /// Delimited text in a dialect (CSV by default), with or without a header row.
    Csv(CsvLayout),
    /// One JSON value per line.
    Ndjson(JsonLayout),
    /// FHIR resources, one per line (Bulk Data export), or one Bundle
    /// document when `bundle` is set.
    Fhir {
        /// The rules.
        layout: FhirLayout,
        /// The whole input is one JSON document.
        bundle: bool,
    },
    /// HL7 v2 messages, in a file or MLLP-framed.
    Hl7(Hl7Layout),
    /// A Parquet file (read from the file itself: its footer comes first).
    Parquet(ParquetLayout),
}

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Tokenize or detokenize.
    pub direction: Direction,
    /// What to do with a row whose cell failed.
    pub on_error: OnError,
    /// The most items in one stream message (the server takes up to 10,000).
    pub batch_items: usize,
    /// Stream messages sent and not yet answered.
    pub in_flight: usize,
    /// How long to keep reconnecting after the server went away, counted
    /// from the last answer received.
    pub retry_for: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            direction: Direction::Tokenize,
            on_error: OnError::Keep,
            batch_items: 1_000,
            in_flight: 16,
            retry_for: Duration::from_secs(120),
        }
    }
}

/// Counters of a run, updated as it goes; a progress display reads them.
#[derive(Debug, Default)]
pub struct Progress {
    /// Input bytes read.
    pub bytes_read: AtomicU64,
    /// Rows written (or dropped) so far.
    pub rows: AtomicU64,
    /// Cells sent and answered so far.
    pub fields: AtomicU64,
    /// Cells that failed so far.
    pub errors: AtomicU64,
    /// Rows left out by `--on-error drop-row` so far.
    pub dropped_rows: AtomicU64,
    /// Times the stream was opened again after the server went away.
    pub reconnects: AtomicU64,
}

impl Progress {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A counter's current value.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// What a finished run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Data rows read (a CSV header and blank lines are not rows).
    pub rows: u64,
    /// Rows left out by `--on-error drop-row`.
    pub dropped_rows: u64,
    /// Cells sent to the vault, and cells refused before sending.
    pub fields: u64,
    /// Cells that failed.
    pub errors: u64,
    /// Times the stream was opened again.
    pub reconnects: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// Why a run stopped. Messages name rows, columns and namespaces, never a
/// value or a token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BulkError {
    /// Reading the input or writing the output failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being read or written.
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// The input is not of the declared shape (an unclosed quote, a header
    /// without a mapped column, an oversized record, …).
    #[error("{0}")]
    Input(String),
    /// The vault answered something a vault must not (a protocol fault).
    #[error("the vault {0}")]
    Vault(String),
    /// The vault refused or failed the stream for good, with this status.
    #[error("the vault refused the stream: {} ({message})", crate::code_name(*code as i32))]
    Refused {
        /// The status.
        code: tonic::Code,
        /// What the vault said (it names no value or token).
        message: String,
    },
    /// No node answered for the whole of `--retry-for`.
    #[error("the vault {0}")]
    Unanswered(String),
    /// A cell failed and the run was told to stop at the first failure.
    #[error(
        "row {row} (line {line}), {location}, namespace {namespace}: {code}; stopped (--on-error fail)"
    )]
    ItemFailed {
        /// The data row.
        row: u64,
        /// The line the row starts on.
        line: u64,
        /// The column or JSON path.
        location: String,
        /// The cell's namespace.
        namespace: String,
        /// The error code's name.
        code: &'static str,
    },
}

impl BulkError {
    fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        move |source| Self::Io { what, source }
    }
}

/// How a replacement text is written into the unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    /// A field of a delimited file, in its dialect: in quotes if it was
    /// quoted, and if the text needs them.
    Csv { quoted: bool, dialect: CsvDialect },
    /// A JSON string.
    Json,
    /// A part of a JSON string's text, written escaped without quotes.
    JsonFragment,
    /// A part of an HL7 v2 message, escaped in the message's delimiters; a
    /// date cell's answer is written back as `YYYYMMDD`.
    Hl7 {
        delimiters: hl7::Delimiters,
        date: bool,
    },
}

/// Where a cell sits, for the errors file: a CSV column (an index into the
/// layout's column names), a concrete JSON path, or a part of an HL7
/// message.
#[derive(Debug, Clone)]
enum Location {
    Column(usize),
    Path(Box<str>),
    Hl7(hl7::Place),
}

/// One value (or token) found in a unit.
#[derive(Debug)]
struct Cell {
    /// The bytes it replaces, within the unit.
    span: Range<usize>,
    /// Index into the layout's namespaces.
    namespace: usize,
    /// The text to send; `Err` names why it cannot be sent at all.
    text: Result<String, &'static str>,
    location: Location,
    encoding: Encoding,
}

/// A CSV record, an NDJSON line, a Bundle: what passes through as a whole
/// and is dropped as a whole.
#[derive(Debug)]
struct Unit {
    /// Data row number from 1; 0 for what is not a row (a header, a blank
    /// line), which passes through untouched and is not counted.
    row: u64,
    /// The line the unit starts on, from 1.
    line: u64,
    raw: Vec<u8>,
    cells: Vec<Cell>,
    /// A problem with the unit as a whole (a line that is not JSON).
    problem: Option<&'static str>,
}

/// Reads units off the input, one at a time.
trait UnitReader: Send {
    /// The next unit, or `None` at the end of the input.
    fn next_unit(&mut self) -> Result<Option<Unit>, BulkError>;
}

/// Names of what the layout addresses, for the errors file.
#[derive(Debug, Clone, Default)]
struct Names {
    namespaces: Vec<String>,
    columns: Vec<String>,
}

impl Names {
    fn location(&self, location: &Location) -> String {
        match location {
            Location::Column(i) => self.columns.get(*i).cloned().unwrap_or_default(),
            Location::Path(path) => path.to_string(),
            Location::Hl7(place) => place.to_string(),
        }
    }
}

/// Values held in memory (a Parquet batch's columns, an MLLP message's
/// cells) grouped into requests by namespace, each of at most `limit` items
/// and `pipeline::BATCH_BYTES`, each item with where its answer goes.
struct Batches<T> {
    limit: usize,
    batches: Vec<crate::Batch>,
    targets: Vec<Vec<T>>,
    bytes: Vec<usize>,
    /// The batch of each namespace that still takes items.
    open: std::collections::HashMap<String, usize>,
}

impl<T> Batches<T> {
    fn new(limit: usize) -> Self {
        Self {
            limit: limit.clamp(1, 10_000),
            batches: Vec::new(),
            targets: Vec::new(),
            bytes: Vec::new(),
            open: std::collections::HashMap::new(),
        }
    }

    /// Adds `text`, no longer than `pipeline::BATCH_BYTES`, for `namespace`.
    fn push(&mut self, namespace: &str, text: String, target: T) {
        let at = match self.open.get(namespace) {
            Some(&at)
                if self.batches[at].items.len() < self.limit
                    && self.bytes[at] + text.len() <= pipeline::BATCH_BYTES =>
            {
                at
            }
            _ => {
                self.batches.push(crate::Batch {
                    namespace: namespace.to_owned(),
                    items: Vec::new(),
                });
                self.targets.push(Vec::new());
                self.bytes.push(0);
                self.open
                    .insert(namespace.to_owned(), self.batches.len() - 1);
                self.batches.len() - 1
            }
        };
        self.bytes[at] += text.len();
        self.batches[at].items.push(text);
        self.targets[at].push(target);
    }

    /// Items added.
    fn len(&self) -> usize {
        self.targets.iter().map(Vec::len).sum()
    }

    /// Sends every batch over one stream (resent on another node when one
    /// goes away) and answers each item with its target.
    async fn send(
        self,
        client: &crate::Client,
        direction: Direction,
        in_flight: usize,
        retry_for: Duration,
    ) -> Result<Vec<(T, crate::ItemResult)>, crate::ClientError> {
        let answers = match direction {
            Direction::Tokenize => {
                client
                    .tokenize_all(self.batches, in_flight, retry_for)
                    .await
            }
            Direction::Detokenize { masked } => {
                client
                    .detokenize_all(self.batches, masked, in_flight, retry_for)
                    .await
            }
        }?;
        Ok(self
            .targets
            .into_iter()
            .zip(answers)
            .flat_map(|(targets, answers)| targets.into_iter().zip(answers))
            .collect())
    }
}

/// Writes `text` in place of a cell, in the cell's encoding.
fn encode(text: &str, encoding: Encoding, out: &mut Vec<u8>) {
    match encoding {
        Encoding::Json => {
            // Serialising a `str` cannot fail.
            let quoted = serde_json::to_string(text).unwrap_or_default();
            out.extend_from_slice(quoted.as_bytes());
        }
        Encoding::JsonFragment => {
            // Serialising a `str` cannot fail, and gives it in quotes.
            let quoted = serde_json::to_string(text).unwrap_or_default();
            let inner = quoted.strip_prefix('"').and_then(|q| q.strip_suffix('"'));
            out.extend_from_slice(inner.unwrap_or_default().as_bytes());
        }
        Encoding::Csv { quoted, dialect } => dialect.encode(text, quoted, out),
        Encoding::Hl7 { delimiters, date } => hl7::encode(text, &delimiters, date, out),
    }
}

/// The unit with each replaced cell written over its span; `replacements`
/// are (cell index, text) in any order.
fn splice(unit: &Unit, replacements: &mut [(usize, &str)], out: &mut Vec<u8>) {
    replacements.sort_by_key(|(cell, _)| unit.cells[*cell].span.start);
    let mut at = 0;
    for (cell, text) in replacements.iter() {
        let cell = &unit.cells[*cell];
        out.extend_from_slice(&unit.raw[at..cell.span.start]);
        encode(text, cell.encoding, out);
        at = cell.span.end;
    }
    out.extend_from_slice(&unit.raw[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(raw: &str, cells: &[(Range<usize>, Encoding)]) -> Unit {
        Unit {
            row: 1,
            line: 1,
            raw: raw.as_bytes().to_vec(),
            cells: cells
                .iter()
                .map(|(span, encoding)| Cell {
                    span: span.clone(),
                    namespace: 0,
                    text: Ok(String::new()),
                    location: Location::Column(0),
                    encoding: *encoding,
                })
                .collect(),
            problem: None,
        }
    }

    #[test]
    fn splicing_keeps_every_other_byte_and_quotes_what_needs_it() {
        let u = unit(
            "a,\"b\",c\r\n",
            &[
                (
                    0..1,
                    Encoding::Csv {
                        quoted: false,
                        dialect: CsvDialect::default(),
                    },
                ),
                (
                    2..5,
                    Encoding::Csv {
                        quoted: true,
                        dialect: CsvDialect::default(),
                    },
                ),
            ],
        );
        let mut out = Vec::new();
        splice(&u, &mut [(1, "x\"y"), (0, "p,q")], &mut out);
        assert_eq!(out, b"\"p,q\",\"x\"\"y\",c\r\n");
        let u = unit("{\"n\":\"a\"}", &[(5..8, Encoding::Json)]);
        let mut out = Vec::new();
        splice(&u, &mut [(0, "q\"\u{e9}")], &mut out);
        assert_eq!(out, "{\"n\":\"q\\\"\u{e9}\"}".as_bytes());
    }
}
