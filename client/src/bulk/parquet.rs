//! Parquet files: one row group at a time, the mapped columns decoded to
//! Arrow arrays, sent, and encoded again; every other column chunk copied
//! as it lies in the input, its pages, statistics, page index and bloom
//! filter with it, without being decoded.
//!
//! A mapped column's statistics, page index and bloom filter are computed
//! anew from what is written, never copied: the input's would hold the
//! values (a minimum and a maximum, a filter that answers for them).

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use arrow_array::{Array, ArrayRef, LargeStringArray, StringArray, StringViewArray, cast::AsArray};
use arrow_schema::DataType;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::arrow_writer::{ArrowRowGroupWriterFactory, compute_leaves};
use parquet::bloom_filter::Sbbf;
use parquet::column::writer::ColumnCloseResult;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;
use tonic::Code;

use super::pipeline::csv_error;
use super::{BulkError, Direction, OnError, Options, Progress, Summary};
use crate::{Batch, Client, ClientError, code_name, v1 as pb};

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
    leaf: usize,
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
        let rows = row_group.num_rows() as u64;
        let columns = read_columns(&input, &reader_metadata, group, &mapped)?;
        let (columns, failures) = send(client, &options, &mapped, columns, &progress).await?;
        for (column, index, code, message) in &failures {
            let row = first_row + *index as u64 + 1;
            if let Some(errors) = &mut errors {
                errors
                    .write_record([
                        row.to_string().as_str(),
                        "",
                        &mapped[*column].name,
                        &mapped[*column].namespace,
                        code_name(*code),
                        message,
                    ])
                    .map_err(csv_error)?;
            }
        }
        Progress::add(&progress.errors, failures.len() as u64);
        if options.on_error == OnError::Fail
            && let Some((column, index, code, _)) = failures.first()
        {
            if let Some(errors) = &mut errors {
                errors
                    .flush()
                    .map_err(BulkError::io("cannot write the errors file"))?;
            }
            return Err(BulkError::ItemFailed {
                row: first_row + *index as u64 + 1,
                line: 0,
                location: mapped[*column].name.clone(),
                namespace: mapped[*column].namespace.clone(),
                code: code_name(*code),
            });
        }
        let mut out = writer.next_row_group().map_err(output_error)?;
        let mut encoders = factory
            .create_column_writers(group)
            .map_err(output_error)?
            .into_iter();
        let mut replaced = columns.into_iter();
        for (leaf, chunk) in row_group.columns().iter().enumerate() {
            let encoder = encoders.next();
            match mapped.iter().position(|m| m.leaf == leaf) {
                Some(column) => {
                    let (array, mut encoder) = replaced
                        .next()
                        .zip(encoder)
                        .ok_or_else(|| input_error("a mapped column has no writer"))?;
                    let field = arrow_schema.field(mapped_field(&arrow_schema, &mapped[column])?);
                    for leaf in compute_leaves(field, &array).map_err(output_error)? {
                        encoder.write(&leaf).map_err(output_error)?;
                    }
                    encoder
                        .close()
                        .map_err(output_error)?
                        .append_to_row_group(&mut out)
                        .map_err(output_error)?;
                }
                None => {
                    let page_index = metadata.page_index();
                    let close = ColumnCloseResult {
                        bytes_written: chunk.compressed_size() as u64,
                        rows_written: rows,
                        metadata: chunk.clone(),
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
        Progress::add(&progress.rows, rows);
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
        let Some((_, field)) = arrow_schema.column_with_name(name) else {
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

fn mapped_field(schema: &arrow_schema::Schema, mapped: &Mapped) -> Result<usize, BulkError> {
    schema
        .index_of(&mapped.name)
        .map_err(|_| input_error("a mapped column left the schema"))
}

/// The output's writer settings: the input's key-value metadata (the
/// Arrow schema, pandas' and Spark's), and each mapped column compressed
/// as it was.
fn writer_properties(metadata: &ParquetMetaData, mapped: &[Mapped]) -> WriterProperties {
    let mut builder = WriterProperties::builder()
        .set_key_value_metadata(metadata.file_metadata().key_value_metadata().cloned());
    if let Some(first) = metadata.row_groups().first() {
        for m in mapped {
            let chunk = first.column(m.leaf);
            builder = builder
                .set_column_compression(ColumnPath::new(vec![m.name.clone()]), chunk.compression());
        }
    }
    builder.build()
}

/// The mapped columns of one row group, in leaf order.
fn read_columns(
    input: &File,
    metadata: &ArrowReaderMetadata,
    group: usize,
    mapped: &[Mapped],
) -> Result<Vec<ArrayRef>, BulkError> {
    let rows = metadata.metadata().row_group(group).num_rows().max(1) as usize;
    let mask = ProjectionMask::leaves(metadata.parquet_schema(), mapped.iter().map(|m| m.leaf));
    let file = input
        .try_clone()
        .map_err(BulkError::io("cannot read the input"))?;
    let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file, metadata.clone())
        .with_row_groups(vec![group])
        .with_projection(mask)
        .with_batch_size(rows)
        .build()
        .map_err(input_error)?;
    let mut columns: Vec<Vec<ArrayRef>> = vec![Vec::new(); mapped.len()];
    for batch in reader {
        let batch = batch.map_err(input_error)?;
        for (i, column) in batch.columns().iter().enumerate() {
            if let Some(parts) = columns.get_mut(i) {
                parts.push(Arc::clone(column));
            }
        }
    }
    columns
        .into_iter()
        .map(|parts| match parts.as_slice() {
            [one] => Ok(Arc::clone(one)),
            _ => {
                let parts: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
                arrow_select::concat::concat(&parts).map_err(input_error)
            }
        })
        .collect()
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
fn rebuild(like: &DataType, values: Vec<Option<String>>) -> ArrayRef {
    match like {
        DataType::LargeUtf8 => Arc::new(LargeStringArray::from(values)),
        DataType::Utf8View => Arc::new(StringViewArray::from_iter(values)),
        _ => Arc::new(StringArray::from(values)),
    }
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
    columns: Vec<ArrayRef>,
    progress: &Progress,
) -> Result<(Vec<ArrayRef>, Vec<(usize, usize, i32, String)>), BulkError> {
    let limit = options.batch_items.clamp(1, 10_000);
    // Per column: the strings that are sent (a dictionary's values, or the
    // column's own), each `None`, or `Some` of what comes back.
    let mut slots: Vec<Vec<Option<String>>> = Vec::with_capacity(columns.len());
    let mut batches: Vec<Batch> = Vec::new();
    let mut targets: Vec<Vec<Target>> = Vec::new();
    let mut open: HashMap<&str, usize> = HashMap::new();
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
            let at = match open.get(namespace) {
                Some(&at) if batches[at].items.len() < limit => at,
                _ => {
                    batches.push(Batch {
                        namespace: namespace.to_owned(),
                        items: Vec::new(),
                    });
                    targets.push(Vec::new());
                    open.insert(namespace, batches.len() - 1);
                    batches.len() - 1
                }
            };
            batches[at].items.push(text.to_owned());
            targets[at].push(Target { column, slot });
        }
        slots.push(own);
    }
    let sent: u64 = batches.iter().map(|b| b.items.len() as u64).sum();
    let answers = match options.direction {
        Direction::Tokenize => {
            client
                .tokenize_all(batches, options.in_flight, options.retry_for)
                .await
        }
        Direction::Detokenize { masked } => {
            client
                .detokenize_all(batches, masked, options.in_flight, options.retry_for)
                .await
        }
    }
    .map_err(|e| match e {
        ClientError::Status(status) if status.code() != Code::Unavailable => BulkError::Refused {
            code: status.code(),
            message: status.message().to_owned(),
        },
        e => BulkError::Unanswered(format!("did not answer: {e}")),
    })?;
    Progress::add(&progress.fields, sent);
    // (column, slot) of each failure, with its code and message.
    let mut failed: Vec<(usize, usize, i32, String)> = Vec::new();
    for (answers, targets) in answers.into_iter().zip(targets) {
        for (answer, target) in answers.into_iter().zip(targets) {
            match answer {
                Ok(text) => slots[target.column][target.slot] = Some(text),
                Err(pb::ItemError { code, message }) => {
                    failed.push((target.column, target.slot, code, message))
                }
            }
        }
    }
    let mut failures = Vec::new();
    let mut out = Vec::with_capacity(columns.len());
    for (column, (array, values)) in columns.iter().zip(slots).enumerate() {
        match array.as_any_dictionary_opt() {
            Some(dictionary) => {
                let values_type = dictionary.values().data_type().clone();
                // Every row that uses a failed dictionary value failed.
                let keys = dictionary.normalized_keys();
                for (c, slot, code, message) in failed.iter().filter(|f| f.0 == column) {
                    for (row, key) in keys.iter().enumerate() {
                        if *key == *slot && !array.is_null(row) {
                            failures.push((*c, row, *code, message.clone()));
                        }
                    }
                }
                out.push(dictionary.with_values(rebuild(&values_type, values)));
            }
            None => {
                failures.extend(failed.iter().filter(|f| f.0 == column).cloned());
                out.push(rebuild(array.data_type(), values));
            }
        }
    }
    failures.sort_by_key(|f| (f.1, f.0));
    Ok((out, failures))
}
