//! Parquet files: one row group at a time, the mapped columns decoded to
//! Arrow arrays, sent, and encoded again; every other column chunk copied
//! as it lies in the input, its pages, statistics, page index and bloom
//! filter with it, without being decoded.
//!
//! A mapped column's statistics and page index are computed anew from what
//! is written, and it gets no bloom filter; the input's are never copied:
//! they would hold the values (a minimum and a maximum, a filter that
//! answers for them).

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use arrow_array::{Array, ArrayRef, LargeStringArray, StringArray, StringViewArray, cast::AsArray};
use arrow_schema::DataType;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::arrow_writer::{ArrowColumnWriter, ArrowRowGroupWriterFactory, compute_leaves};
use parquet::bloom_filter::Sbbf;
use parquet::column::writer::ColumnCloseResult;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;
use tonic::Code;

use super::pipeline::{BATCH_BYTES, csv_error};
use super::{Batches, BulkError, OnError, Options, Progress, Summary};
use crate::{Client, ClientError, code_name, v1 as pb};

/// A Parquet input and the columns it maps.
pub struct ParquetLayout {
    input: File,
    maps: Vec<(String, String)>,
}

impl ParquetLayout {
    /// `input` read with `maps`, (top-level column, namespace) pairs.
    pub fn new(input: File, maps: Vec<(String, String)>) -> Self {
        Self { input, maps }
    }
}

/// A mapped column: its index among the top-level fields and leaves.
struct Mapped {
    name: String,
    namespace: String,
    field: usize,
    leaf: usize,
}

/// A value the vault refused, or that could not be sent.
struct Failure {
    /// Index into the mapped columns.
    column: usize,
    /// Row within its batch, from 0.
    row: usize,
    code: i32,
    message: String,
}

fn input_error(e: impl std::fmt::Display) -> BulkError {
    BulkError::Input(format!("the Parquet input: {e}"))
}

fn output_error(e: parquet::errors::ParquetError) -> BulkError {
    match e {
        parquet::errors::ParquetError::External(e) => match e.downcast::<std::io::Error>() {
            Ok(source) => BulkError::Io {
                what: "cannot write the output",
                source: *source,
            },
            Err(e) => BulkError::Input(format!("cannot write the Parquet output: {e}")),
        },
        e => BulkError::Input(format!("cannot write the Parquet output: {e}")),
    }
}

/// Runs a bulk job over a Parquet file; see [`super::run`].
pub(super) async fn run(
    client: &Client,
    layout: ParquetLayout,
    output: Box<dyn Write + Send>,
    errors: Option<Box<dyn Write + Send>>,
    options: Options,
    progress: Arc<Progress>,
) -> Result<Summary, BulkError> {
    let started = Instant::now();
    if options.on_error == OnError::DropRow {
        return Err(BulkError::Input(
            "--on-error drop-row cannot be used on Parquet: the columns that are not mapped are copied as they are, row groups whole; use keep or fail".into(),
        ));
    }
    let input = layout.input;
    // The page index and bloom filters too, to copy them with their chunks.
    let metadata = ParquetMetaDataReader::new()
        .with_page_index_policy(PageIndexPolicy::Optional)
        .parse_and_finish(&input)
        .map_err(input_error)?;
    let reader_metadata =
        ArrowReaderMetadata::try_new(Arc::new(metadata.clone()), ArrowReaderOptions::new())
            .map_err(input_error)?;
    let arrow_schema = Arc::clone(reader_metadata.schema());
    let parquet_schema = reader_metadata.parquet_schema();
    let mapped = mapped_columns(&layout.maps, &arrow_schema, parquet_schema)?;

    let mut errors = errors.map(::csv::Writer::from_writer);
    if let Some(errors) = &mut errors {
        errors
            .write_record(["row", "line", "column", "namespace", "code", "message"])
            .map_err(csv_error)?;
    }
    let properties = writer_properties(&metadata, &mapped);
    let mut writer = SerializedFileWriter::new(
        output,
        metadata.file_metadata().schema_descr().root_schema_ptr(),
        Arc::new(properties),
    )
    .map_err(output_error)?;
    let factory = ArrowRowGroupWriterFactory::new(&writer, Arc::clone(&arrow_schema));
    let mut first_row = 0u64;
    for (group, row_group) in metadata.row_groups().iter().enumerate() {
        let rows = row_group.num_rows().max(0) as u64;
        // Every leaf's encoder, in leaf order; only the mapped ones write.
        let mut encoders: Vec<Option<ArrowColumnWriter>> = factory
            .create_column_writers(group)
            .map_err(output_error)?
            .into_iter()
            .map(Some)
            .collect();
        let mut at = first_row;
        // A row group is read in bounded batches, each sent and encoded
        // before the next is read: memory holds a batch, and the encoded
        // mapped chunks of the row group.
        for batch in read_batches(&input, &reader_metadata, group, &mapped)? {
            let batch = batch.map_err(input_error)?;
            let (columns, failures) =
                send(client, &options, &mapped, batch.columns(), &progress).await?;
            report(&mut errors, &mapped, at, &failures)?;
            Progress::add(&progress.errors, failures.len() as u64);
            if options.on_error == OnError::Fail
                && let Some(failure) = failures.first()
            {
                if let Some(errors) = &mut errors {
                    errors
                        .flush()
                        .map_err(BulkError::io("cannot write the errors file"))?;
                }
                return Err(BulkError::ItemFailed {
                    row: at + failure.row as u64 + 1,
                    line: 0,
                    location: mapped[failure.column].name.clone(),
                    namespace: mapped[failure.column].namespace.clone(),
                    code: code_name(failure.code),
                });
            }
            for (m, array) in mapped.iter().zip(&columns) {
                let encoder = encoders
                    .get_mut(m.leaf)
                    .and_then(Option::as_mut)
                    .ok_or_else(|| input_error("a mapped column has no writer"))?;
                for leaf in
                    compute_leaves(arrow_schema.field(m.field), array).map_err(output_error)?
                {
                    encoder.write(&leaf).map_err(output_error)?;
                }
            }
            at += batch.num_rows() as u64;
            Progress::add(&progress.rows, batch.num_rows() as u64);
        }
        let mut out = writer.next_row_group().map_err(output_error)?;
        for (leaf, chunk) in row_group.columns().iter().enumerate() {
            let encoder = encoders.get_mut(leaf).and_then(Option::take);
            match (mapped.iter().any(|m| m.leaf == leaf), encoder) {
                (true, Some(encoder)) => encoder
                    .close()
                    .map_err(output_error)?
                    .append_to_row_group(&mut out)
                    .map_err(output_error)?,
                (true, None) => return Err(input_error("a mapped column has no writer")),
                (false, _) => {
                    let page_index = metadata.page_index();
                    let close = ColumnCloseResult {
                        bytes_written: chunk.compressed_size().max(0) as u64,
                        rows_written: rows,
                        metadata: chunk.clone(),
                        // A filter that cannot be read is left out: it only
                        // lets readers skip row groups, and its absence
                        // never makes them skip one they need.
                        bloom_filter: Sbbf::read_from_column_chunk(chunk, &input).ok().flatten(),
                        column_index: page_index
                            .and_then(|p| p.column_index(group, leaf))
                            .cloned(),
                        offset_index: page_index
                            .and_then(|p| p.offset_index(group, leaf))
                            .cloned(),
                    };
                    out.append_column(&input, close).map_err(output_error)?;
                }
            }
        }
        out.close().map_err(output_error)?;
        first_row += rows;
        Progress::add(
            &progress.bytes_read,
            row_group.compressed_size().max(0) as u64,
        );
    }
    writer.close().map_err(output_error)?;
    if let Some(errors) = &mut errors {
        errors
            .flush()
            .map_err(BulkError::io("cannot write the errors file"))?;
    }
    Ok(Summary {
        rows: Progress::get(&progress.rows),
        dropped_rows: 0,
        fields: Progress::get(&progress.fields),
        errors: Progress::get(&progress.errors),
        reconnects: Progress::get(&progress.reconnects),
        elapsed: started.elapsed(),
    })
}

/// The mapped columns, checked: top-level string columns of the file.
fn mapped_columns(
    maps: &[(String, String)],
    arrow_schema: &arrow_schema::Schema,
    parquet_schema: &parquet::schema::types::SchemaDescriptor,
) -> Result<Vec<Mapped>, BulkError> {
    let mut mapped = Vec::with_capacity(maps.len());
    for (name, namespace) in maps {
        let named = arrow_schema
            .fields()
            .iter()
            .filter(|f| f.name() == name)
            .count();
        if named > 1 {
            return Err(BulkError::Input(format!(
                "--map {name:?}: the file has {named} columns of that name; one would pass unread"
            )));
        }
        let Some((field_index, field)) = arrow_schema.column_with_name(name) else {
            let names: Vec<&str> = arrow_schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect();
            return Err(BulkError::Input(format!(
                "--map {name:?}: the file has no such column (it has {})",
                names.join(", ")
            )));
        };
        if !is_text(field.data_type()) {
            return Err(BulkError::Input(format!(
                "--map {name:?}: the column holds {}, not strings",
                field.data_type()
            )));
        }
        let leaf = (0..parquet_schema.num_columns())
            .find(|&i| {
                let path = parquet_schema.column(i).path().parts().to_vec();
                path == [name.clone()]
            })
            .ok_or_else(|| {
                BulkError::Input(format!(
                    "--map {name:?}: only top-level string columns can be mapped"
                ))
            })?;
        if mapped.iter().any(|m: &Mapped| m.leaf == leaf) {
            return Err(BulkError::Input(format!(
                "--map {name:?}: the column is mapped twice"
            )));
        }
        mapped.push(Mapped {
            name: name.clone(),
            namespace: namespace.clone(),
            field: field_index,
            leaf,
        });
    }
    // Written in leaf order, so read and replaced in it too.
    mapped.sort_by_key(|m| m.leaf);
    Ok(mapped)
}

fn is_text(data_type: &DataType) -> bool {
    match data_type {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, values) => is_text(values),
        _ => false,
    }
}

/// The output's writer settings: the input's key-value metadata (the
/// Arrow schema, pandas' and Spark's), and each mapped column compressed
/// as it was.
fn writer_properties(metadata: &ParquetMetaData, mapped: &[Mapped]) -> WriterProperties {
    let file = metadata.file_metadata();
    let mut builder =
        WriterProperties::builder().set_key_value_metadata(file.key_value_metadata().cloned());
    // The copied chunks' statistics were written by the input's writer,
    // and readers decide by its name whether to trust them (PARQUET-251).
    if let Some(created_by) = file.created_by() {
        builder = builder.set_created_by(created_by.to_owned());
    }
    if let Some(first) = metadata.row_groups().first() {
        for m in mapped {
            let chunk = first.column(m.leaf);
            builder = builder
                .set_column_compression(ColumnPath::new(vec![m.name.clone()]), chunk.compression());
        }
    }
    builder.build()
}

/// Rows of a row group read at once.
const BATCH_ROWS: usize = 65_536;

/// The mapped columns of one row group, in batches, columns in leaf order.
fn read_batches(
    input: &File,
    metadata: &ArrowReaderMetadata,
    group: usize,
    mapped: &[Mapped],
) -> Result<ParquetRecordBatchReader, BulkError> {
    let mask = ProjectionMask::leaves(metadata.parquet_schema(), mapped.iter().map(|m| m.leaf));
    let file = input
        .try_clone()
        .map_err(BulkError::io("cannot read the input"))?;
    ParquetRecordBatchReaderBuilder::new_with_metadata(file, metadata.clone())
        .with_row_groups(vec![group])
        .with_projection(mask)
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(input_error)
}

/// Writes `failures` of a batch starting at row `first` (from 0) to the
/// errors file.
fn report(
    errors: &mut Option<::csv::Writer<Box<dyn Write + Send>>>,
    mapped: &[Mapped],
    first: u64,
    failures: &[Failure],
) -> Result<(), BulkError> {
    let Some(errors) = errors else {
        return Ok(());
    };
    for failure in failures {
        let m = &mapped[failure.column];
        errors
            .write_record([
                (first + failure.row as u64 + 1).to_string().as_str(),
                "",
                &m.name,
                &m.namespace,
                code_name(failure.code),
                &failure.message,
            ])
            .map_err(csv_error)?;
    }
    Ok(())
}

/// The strings of a plain string array, `None` for nulls; `None` for an
/// array of another type.
fn texts(array: &dyn Array) -> Option<Vec<Option<&str>>> {
    Some(match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().iter().collect(),
        DataType::LargeUtf8 => array.as_string::<i64>().iter().collect(),
        DataType::Utf8View => array.as_string_view().iter().collect(),
        _ => return None,
    })
}

/// A plain string array of `like`'s type holding `values`.
fn rebuild(like: &DataType, values: Vec<Option<String>>) -> Result<ArrayRef, BulkError> {
    let total: usize = values.iter().flatten().map(String::len).sum();
    Ok(match like {
        DataType::LargeUtf8 => Arc::new(LargeStringArray::from(values)),
        DataType::Utf8View => Arc::new(StringViewArray::from_iter(values)),
        // 32-bit offsets: tokens longer than their values could overflow
        // them, which must stop the run rather than panic.
        _ if i32::try_from(total).is_err() => {
            return Err(BulkError::Input(
                "a batch of a mapped column would hold more than 2 GiB of text; write the file with smaller row groups or as large_string".into(),
            ));
        }
        _ => Arc::new(StringArray::from(values)),
    })
}

/// Where one sent value sits: the column, and the rows it stands for
/// (every row of a dictionary value).
struct Target {
    column: usize,
    slot: usize,
}

/// Sends the non-empty strings of `columns` and answers the columns with
/// each replaced, and the failures as (column, row, code, message). A
/// dictionary column sends its dictionary, each distinct value once.
async fn send(
    client: &Client,
    options: &Options,
    mapped: &[Mapped],
    columns: &[ArrayRef],
    progress: &Progress,
) -> Result<(Vec<ArrayRef>, Vec<Failure>), BulkError> {
    // (column, slot) of each value that failed, with its code and message.
    let mut failed: Vec<(usize, usize, i32, String)> = Vec::new();
    // Per column: the strings that are sent (a dictionary's values, or the
    // column's own), each `None`, or `Some` of what comes back.
    let mut slots: Vec<Vec<Option<String>>> = Vec::with_capacity(columns.len());
    let mut batches = Batches::new(options.batch_items);
    for (column, array) in columns.iter().enumerate() {
        let strings = match array.as_any_dictionary_opt() {
            Some(dictionary) => texts(dictionary.values().as_ref()),
            None => texts(array.as_ref()),
        }
        .ok_or_else(|| input_error("a mapped column is not strings"))?;
        let namespace = mapped[column].namespace.as_str();
        let mut own = Vec::with_capacity(strings.len());
        for (slot, text) in strings.iter().enumerate() {
            own.push(text.map(str::to_owned));
            let Some(text) = text.filter(|t| !t.is_empty()) else {
                continue;
            };
            if text.len() > BATCH_BYTES {
                // One such item would make a message the server refuses,
                // and the whole stream with it.
                failed.push((
                    column,
                    slot,
                    Code::InvalidArgument as i32,
                    "the value is longer than 1 MiB, more than a vault holds".into(),
                ));
                continue;
            }
            batches.push(namespace, text.to_owned(), Target { column, slot });
        }
        slots.push(own);
    }
    let sent = batches.len() as u64;
    let answers = batches
        .send(
            client,
            options.direction,
            options.in_flight,
            options.retry_for,
        )
        .await
        .map_err(|e| match e {
            ClientError::Status(status) if status.code() != Code::Unavailable => {
                BulkError::Refused {
                    code: status.code(),
                    message: status.message().to_owned(),
                }
            }
            e => BulkError::Unanswered(format!("did not answer: {e}")),
        })?;
    Progress::add(&progress.fields, sent + failed.len() as u64);
    for (target, answer) in answers {
        match answer {
            Ok(text) => slots[target.column][target.slot] = Some(text),
            Err(pb::ItemError { code, message }) => {
                failed.push((target.column, target.slot, code, message))
            }
        }
    }
    let mut failures = Vec::new();
    let mut out = Vec::with_capacity(columns.len());
    for (column, (array, values)) in columns.iter().zip(slots).enumerate() {
        let mut by_slot: HashMap<usize, (i32, &str)> = HashMap::new();
        for (_, slot, code, message) in failed.iter().filter(|f| f.0 == column) {
            by_slot.insert(*slot, (*code, message));
        }
        let failure = |row: usize, (code, message): (i32, &str)| Failure {
            column,
            row,
            code,
            message: message.to_owned(),
        };
        match array.as_any_dictionary_opt() {
            Some(dictionary) => {
                // Every row that uses a failed dictionary value failed.
                if !by_slot.is_empty() {
                    let keys = dictionary.normalized_keys();
                    for (row, key) in keys.iter().enumerate() {
                        if let Some(f) = by_slot.get(key).filter(|_| !array.is_null(row)) {
                            failures.push(failure(row, *f));
                        }
                    }
                }
                let values = rebuild(dictionary.values().data_type(), values)?;
                out.push(dictionary.with_values(values));
            }
            None => {
                let mut rows: Vec<_> = by_slot.into_iter().collect();
                rows.sort_by_key(|(row, _)| *row);
                failures.extend(rows.into_iter().map(|(row, f)| failure(row, f)));
                out.push(rebuild(array.data_type(), values)?);
            }
        }
    }
    failures.sort_by_key(|f| (f.row, f.column));
    Ok((out, failures))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::{Field, Schema};
    use parquet::arrow::ArrowSchemaConverter;

    fn mapped(fields: Vec<Field>, maps: &[&str]) -> Result<Vec<Mapped>, BulkError> {
        let schema = Schema::new(fields);
        let descriptor = ArrowSchemaConverter::new()
            .convert(&schema)
            .expect("schema");
        let maps: Vec<_> = maps
            .iter()
            .map(|m| ((*m).to_owned(), "text".to_owned()))
            .collect();
        mapped_columns(&maps, &schema, &descriptor)
    }

    #[test]
    fn only_one_top_level_string_column_of_a_name_can_be_mapped() {
        let text = |n: &str| Field::new(n, DataType::Utf8, true);
        let nested = Field::new(
            "visit",
            DataType::Struct(vec![text("ssn"), Field::new("bed", DataType::Int32, true)].into()),
            true,
        );
        let got = mapped(
            vec![nested.clone(), text("ssn"), text("name")],
            &["name", "ssn"],
        )
        .expect("mapped");
        let got: Vec<_> = got
            .iter()
            .map(|m| (m.name.as_str(), m.field, m.leaf))
            .collect();
        // Leaves: visit.ssn, visit.bed, ssn, name; sorted by leaf.
        assert_eq!(got, [("ssn", 1, 2), ("name", 2, 3)]);
        for (fields, map) in [
            (vec![text("ssn"), text("ssn")], "ssn"),
            (
                vec![Field::new("amount", DataType::Float64, true)],
                "amount",
            ),
            (vec![nested], "visit"),
            (vec![text("ssn")], "nope"),
        ] {
            assert!(mapped(fields, &[map]).is_err(), "{map}");
        }
        assert!(mapped(vec![text("ssn")], &["ssn", "ssn"]).is_err());
    }

    #[test]
    fn strings_are_rebuilt_in_their_own_type() {
        for kind in [DataType::Utf8, DataType::LargeUtf8, DataType::Utf8View] {
            let array =
                rebuild(&kind, vec![Some("a".into()), None, Some(String::new())]).expect("array");
            assert_eq!(array.data_type(), &kind);
            assert_eq!(texts(array.as_ref()), Some(vec![Some("a"), None, Some("")]));
        }
    }
}
