//! The run: reader thread → batches in flight on one stream → writer
//! thread, with every stage bounded.

use std::collections::VecDeque;
use std::io::{BufRead, BufWriter, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream};
use tokio::sync::{mpsc, oneshot};
use tonic::Code;

use super::delimited::CsvReader;
use super::fhir::BundleReader;
use super::hl7::Hl7Reader;
use super::json::LineReader;
use super::{
    BulkError, Direction, Layout, Names, OnError, Options, Progress, Summary, Unit, UnitReader,
    splice,
};
use crate::{Batch, BatchResults, Client, ClientError, ItemResult, code_name, v1 as pb};

/// A batch's payload stays well under the server's 4 MiB message limit.
pub(super) const BATCH_BYTES: usize = 1 << 20;
/// Input bytes in one chunk.
const CHUNK_BYTES: usize = 4 << 20;
/// Chunks read ahead of the stream, and chunks done ahead of the writer.
const CHUNKS_AHEAD: usize = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Units read together: the unit of ordering between the stages.
#[derive(Default)]
struct Chunk {
    units: Vec<Unit>,
    cells: usize,
    bytes: usize,
}

/// A chunk whose batches are out.
struct Pending {
    chunk: Chunk,
    /// One per cell of the chunk, in unit order.
    results: Vec<Option<ItemResult>>,
    /// Batches not answered yet.
    waiting: usize,
}

/// A batch sent and not yet answered: kept whole so that it can be sent
/// again on a new stream.
struct Sent {
    /// Index of its chunk among all chunks of the run.
    chunk: u64,
    /// Where each answer goes among the chunk's cells.
    targets: Vec<u32>,
    batch: Batch,
}

/// Runs one bulk job: reads `input`, writes `output` (and the failed cells
/// to `errors`, as CSV: row, line, column, namespace, code, message), and
/// says what it did. Counters in `progress` move as it goes.
pub async fn run(
    client: &Client,
    input: Box<dyn BufRead + Send>,
    output: Box<dyn Write + Send>,
    errors: Option<Box<dyn Write + Send>>,
    layout: Layout,
    options: Options,
    progress: Arc<Progress>,
) -> Result<Summary, BulkError> {
    if let Layout::Parquet(layout) = layout {
        return super::parquet::run(client, layout, output, errors, options, progress).await;
    }
    let started = Instant::now();
    let input = Counted {
        inner: input,
        progress: Arc::clone(&progress),
    };
    let (names_tx, names_rx) = oneshot::channel();
    let (chunks_tx, mut chunks) = mpsc::channel(CHUNKS_AHEAD);
    let limits = options.batch_items.clamp(1, 10_000);
    std::thread::spawn(move || read(input, layout, limits, names_tx, chunks_tx));
    let names = names_rx
        .await
        .map_err(|_| BulkError::Input("the input reader stopped".into()))??;

    let (done_tx, done_rx) = mpsc::channel(CHUNKS_AHEAD);
    let writer = {
        let names = names.clone();
        let progress = Arc::clone(&progress);
        let on_error = options.on_error;
        std::thread::spawn(move || write(done_rx, output, errors, &names, on_error, &progress))
    };

    let mut driver = Driver {
        client,
        options: &options,
        names: &names,
        progress: &progress,
        pending: VecDeque::new(),
        first_chunk: 0,
        unanswered: VecDeque::new(),
        last_answer: Instant::now(),
    };
    let driven = driver.drive(&mut chunks, &done_tx).await;
    drop(done_tx);
    drop(chunks);
    let written = writer
        .join()
        .map_err(|_| BulkError::Input("the output writer stopped".into()))?;
    // The writer's own failure (an output error, --on-error fail) comes
    // first: the driver only saw its channel close.
    written?;
    driven?;
    Ok(Summary {
        rows: Progress::get(&progress.rows),
        dropped_rows: Progress::get(&progress.dropped_rows),
        fields: Progress::get(&progress.fields),
        errors: Progress::get(&progress.errors),
        reconnects: Progress::get(&progress.reconnects),
        elapsed: started.elapsed(),
    })
}

/// Counts the input bytes for the progress display.
struct Counted<R> {
    inner: R,
    progress: Arc<Progress>,
}

impl<R: BufRead> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        Progress::add(&self.progress.bytes_read, n as u64);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Counted<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        Progress::add(&self.progress.bytes_read, amount as u64);
        self.inner.consume(amount);
    }
}

type ChunkSender = mpsc::Sender<Result<Chunk, BulkError>>;

/// The reader of `layout` over `input`, and the names its cells refer to.
pub(super) fn open_reader(
    input: impl BufRead + Send + 'static,
    layout: Layout,
) -> Result<(Box<dyn UnitReader>, Names), BulkError> {
    match layout {
        Layout::Csv(csv) => CsvReader::new(input, &csv)
            .map(|(reader, names)| (Box::new(reader) as Box<dyn UnitReader>, names)),
        Layout::Ndjson(layout) => {
            let (rules, names) = layout.rules();
            Ok((Box::new(LineReader::new(input, rules)), names))
        }
        Layout::Fhir {
            layout,
            bundle: false,
        } => {
            let names = layout.names();
            Ok((Box::new(LineReader::new(input, layout)), names))
        }
        Layout::Fhir {
            layout,
            bundle: true,
        } => {
            let names = layout.names();
            Ok((Box::new(BundleReader::new(input, layout)), names))
        }
        Layout::Hl7(layout) => {
            let names = layout.names();
            Ok((Box::new(Hl7Reader::new(input, layout)), names))
        }
        Layout::Parquet(_) => Err(BulkError::Input(
            "a Parquet file is read by its own run, not cut into units".into(),
        )),
    }
}

/// The reader thread: opens the layout, then sends chunks until the input
/// ends, an input error (sent in order, after the chunks before it), or the
/// run stopping.
fn read(
    input: impl BufRead + Send + 'static,
    layout: Layout,
    batch_items: usize,
    names_tx: oneshot::Sender<Result<Names, BulkError>>,
    chunks: ChunkSender,
) {
    let mut reader = match open_reader(input, layout) {
        Ok((reader, names)) => {
            if names_tx.send(Ok(names)).is_err() {
                return;
            }
            reader
        }
        Err(e) => {
            let _ = names_tx.send(Err(e));
            return;
        }
    };
    let mut chunk = Chunk::default();
    loop {
        let unit = match reader.next_unit() {
            Ok(Some(unit)) => unit,
            Ok(None) => break,
            Err(e) => {
                if !chunk.units.is_empty() && chunks.blocking_send(Ok(chunk)).is_err() {
                    return;
                }
                let _ = chunks.blocking_send(Err(e));
                return;
            }
        };
        chunk.cells += unit.cells.len();
        chunk.bytes += unit.raw.len();
        chunk.units.push(unit);
        let full = chunk.units.len() >= batch_items
            || chunk.cells >= 8 * batch_items
            || chunk.bytes >= CHUNK_BYTES;
        if full
            && chunks
                .blocking_send(Ok(std::mem::take(&mut chunk)))
                .is_err()
        {
            return;
        }
    }
    if !chunk.units.is_empty() {
        let _ = chunks.blocking_send(Ok(chunk));
    }
}

/// One open stream: batches go in through `batches`, answers come out of
/// `answers` in the same order.
struct Link {
    batches: mpsc::UnboundedSender<Batch>,
    answers: BatchResults,
    /// Which of the client's endpoints it went to (its position), so that a
    /// stream that ends early moves the client on from that node only.
    position: usize,
}

impl Link {
    async fn open(client: &Client, options: &Options) -> Result<Self, ClientError> {
        // Unbounded here, bounded by the driver: it never has more than
        // `in_flight` (plus one chunk's) batches unanswered, and it must
        // never wait on sending while the answers it would read pile up.
        let (batches, receiver) = mpsc::unbounded_channel();
        let outgoing = stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|batch| (batch, receiver))
        });
        let in_flight = options.in_flight.max(1);
        // The stream goes to the endpoint the client uses now; when its node
        // goes away, the client moves on, and the next `open` goes to the
        // next endpoint.
        let (answers, position) = match options.direction {
            Direction::Tokenize => client.open_tokenize(outgoing, in_flight).await?,
            Direction::Detokenize { masked } => {
                client.open_detokenize(outgoing, masked, in_flight).await?
            }
        };
        Ok(Self {
            batches,
            answers,
            position,
        })
    }
}

/// Whether the stream broke in a way a new stream can mend: the node
/// shutting down, restarting, without its database or unreachable, or the
/// connection dropped under the call (the transport reports that as
/// `UNKNOWN` or `CANCELLED` carrying the I/O error as its source, which a
/// status sent by a server never has).
fn retryable(error: &ClientError) -> bool {
    crate::transport_failed(error)
}

struct Driver<'a> {
    client: &'a Client,
    options: &'a Options,
    names: &'a Names,
    progress: &'a Progress,
    pending: VecDeque<Pending>,
    /// Index of `pending[0]` among all chunks of the run.
    first_chunk: u64,
    unanswered: VecDeque<Sent>,
    /// When the vault last answered, or was first asked after a pause.
    last_answer: Instant,
}

impl Driver<'_> {
    async fn drive(
        &mut self,
        chunks: &mut mpsc::Receiver<Result<Chunk, BulkError>>,
        done: &mpsc::Sender<Pending>,
    ) -> Result<(), BulkError> {
        // A node that went away between `Client::connect` and here is
        // passed over as one that goes away during the run is.
        let mut link = match Link::open(self.client, self.options).await {
            Ok(link) => link,
            Err(e) if retryable(&e) => self.open_again().await?,
            Err(e) => return Err(self.refused(&e)),
        };
        let mut input_done = false;
        let mut input_error = None;
        loop {
            while self.pending.front().is_some_and(|p| p.waiting == 0) {
                let Some(ready) = self.pending.pop_front() else {
                    break;
                };
                self.first_chunk += 1;
                if done.send(ready).await.is_err() {
                    // The writer stopped; its own result says why.
                    return Ok(());
                }
            }
            if input_done && self.pending.is_empty() {
                return input_error.map_or(Ok(()), Err);
            }
            let room = self.unanswered.len() < self.options.in_flight.max(1);
            tokio::select! {
                biased;
                answer = link.answers.next(), if !self.unanswered.is_empty() => match answer {
                    Some(Ok(results)) => self.answered(results)?,
                    Some(Err(e)) if retryable(&e) => link = self.reconnect(link).await?,
                    None => link = self.reconnect(link).await?,
                    Some(Err(e)) => return Err(self.refused(&e)),
                },
                () = tokio::time::sleep_until((self.last_answer + self.options.retry_for).into()),
                    if !self.unanswered.is_empty() => return Err(self.silent()),
                chunk = chunks.recv(), if !input_done && room => match chunk {
                    Some(Ok(chunk)) => self.dispatch(chunk, &link),
                    Some(Err(e)) => {
                        input_done = true;
                        input_error = Some(e);
                    }
                    None => input_done = true,
                },
            }
        }
    }

    /// Groups a chunk's cells into batches by namespace and sends them.
    fn dispatch(&mut self, mut chunk: Chunk, link: &Link) {
        let index = self.first_chunk + self.pending.len() as u64;
        let mut results = Vec::with_capacity(chunk.cells);
        let mut open: Vec<Option<(Batch, Vec<u32>, usize)>> =
            vec![None; self.names.namespaces.len()];
        let mut ready = Vec::new();
        let limit = self.options.batch_items.clamp(1, 10_000);
        for cell in chunk.units.iter_mut().flat_map(|u| u.cells.iter_mut()) {
            let target = results.len() as u32;
            if cell.text.as_ref().is_ok_and(|t| t.len() > BATCH_BYTES) {
                // One such item would make a message the server refuses,
                // and the whole stream with it; no vault holds a value
                // this long (4 KiB by default).
                cell.text = Err("the value is longer than 1 MiB, more than a vault holds");
            }
            let text = match &mut cell.text {
                Ok(text) => std::mem::take(text),
                Err(why) => {
                    results.push(Some(Err(pb::ItemError {
                        code: Code::InvalidArgument as i32,
                        message: (*why).to_owned(),
                    })));
                    continue;
                }
            };
            results.push(None);
            let slot = &mut open[cell.namespace];
            let (batch, targets, bytes) = slot.get_or_insert_with(|| {
                let batch = Batch {
                    namespace: self.names.namespaces[cell.namespace].clone(),
                    items: Vec::new(),
                };
                (batch, Vec::new(), 0)
            });
            *bytes += text.len();
            batch.items.push(text);
            targets.push(target);
            if batch.items.len() >= limit || *bytes >= BATCH_BYTES {
                ready.extend(slot.take());
            }
        }
        ready.extend(open.into_iter().flatten());
        let waiting = ready.len();
        if self.unanswered.is_empty() {
            // Silence is counted from the first question, not from the last
            // answer before a pause in the input.
            self.last_answer = Instant::now();
        }
        for (batch, targets, _) in ready {
            // A closed link shows as a broken answer stream, which resends.
            let _ = link.batches.send(batch.clone());
            self.unanswered.push_back(Sent {
                chunk: index,
                targets,
                batch,
            });
        }
        self.pending.push_back(Pending {
            chunk,
            results,
            waiting,
        });
    }

    fn answered(&mut self, results: Vec<ItemResult>) -> Result<(), BulkError> {
        let Some(sent) = self.unanswered.pop_front() else {
            return Err(BulkError::Vault(
                "answered a batch that was not sent".into(),
            ));
        };
        if results.len() != sent.targets.len() {
            return Err(BulkError::Vault(format!(
                "answered {} items for a batch of {}",
                results.len(),
                sent.targets.len()
            )));
        }
        self.last_answer = Instant::now();
        let Some(pending) = usize::try_from(sent.chunk - self.first_chunk)
            .ok()
            .and_then(|i| self.pending.get_mut(i))
        else {
            return Err(BulkError::Vault(
                "answered a batch of a finished chunk".into(),
            ));
        };
        for (target, result) in sent.targets.into_iter().zip(results) {
            pending.results[target as usize] = Some(result);
        }
        pending.waiting -= 1;
        Ok(())
    }

    /// Opens a new stream, with backoff, and sends every unanswered batch
    /// again, in order, before any new one.
    ///
    /// The new stream goes to the client's next endpoint: the old one's node
    /// went away (a stream that broke moved the client on already; one that
    /// ended while batches were unanswered is a node shutting down, and
    /// moves it on here), and while the next is out of reach too, each
    /// attempt moves on again, round the list. The nodes are stateless over
    /// one database, so every row still goes out exactly once, in order,
    /// whichever node answers it:
    ///
    /// * Nothing is dropped. A batch leaves `unanswered` only when its
    ///   answer arrives, and a stream answers in the order it was sent to,
    ///   so the batches unanswered when a stream breaks are exactly those
    ///   sent again, in their order, and the new stream's answers line up
    ///   with them (`answered` pairs them first in, first out).
    /// * Nothing is written twice. The old stream is dropped before anything
    ///   is sent again, so no batch is answered on both; each answer fills
    ///   its chunk's cells once, and the writer puts chunks out in order.
    /// * A batch the old node committed but did not answer is tokenized
    ///   again by the new one; tokens are deterministic, and the database
    ///   the nodes share already holds the mapping, so the answer is the
    ///   same token. (A namespace of random tokens gets fresh ones; the
    ///   first were never delivered.) A batch revealed twice is audited
    ///   twice, which is what happened.
    async fn reconnect(&mut self, broken: Link) -> Result<Link, BulkError> {
        self.client.fail_over_from(broken.position);
        // Closing our side of the old stream first: a server shutting down
        // gracefully waits for its connections' streams to end.
        drop(broken);
        self.open_again().await
    }

    /// Opens a new stream, with backoff, until one opens or `--retry-for`
    /// passes without an answer, and sends every unanswered batch on it, in
    /// order.
    async fn open_again(&mut self) -> Result<Link, BulkError> {
        let mut backoff = FIRST_BACKOFF;
        loop {
            if self.last_answer.elapsed() > self.options.retry_for {
                return Err(self.silent());
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            match Link::open(self.client, self.options).await {
                Ok(link) => {
                    Progress::add(&self.progress.reconnects, 1);
                    for sent in &self.unanswered {
                        let _ = link.batches.send(sent.batch.clone());
                    }
                    return Ok(link);
                }
                Err(e) if retryable(&e) => {}
                Err(e) => return Err(self.refused(&e)),
            }
        }
    }

    fn silent(&self) -> BulkError {
        BulkError::Unanswered(format!(
            "has not answered for {} (--retry-for); every row before the first unanswered one was written",
            humantime::format_duration(self.options.retry_for)
        ))
    }

    fn refused(&self, error: &ClientError) -> BulkError {
        match error {
            ClientError::Status(status) => BulkError::Refused {
                code: status.code(),
                message: status.message().to_owned(),
            },
            ClientError::Unreachable(_) => BulkError::Unanswered(format!("failed: {error}")),
            other => BulkError::Vault(format!("failed: {other}")),
        }
    }
}

/// The writer thread: puts every finished chunk out in order.
fn write(
    mut done: mpsc::Receiver<Pending>,
    output: Box<dyn Write + Send>,
    errors: Option<Box<dyn Write + Send>>,
    names: &Names,
    on_error: OnError,
    progress: &Progress,
) -> Result<(), BulkError> {
    let mut out = BufWriter::with_capacity(1 << 20, output);
    let mut errors = errors.map(::csv::Writer::from_writer);
    if let Some(errors) = &mut errors {
        errors
            .write_record(["row", "line", "column", "namespace", "code", "message"])
            .map_err(csv_error)?;
    }
    let mut buffer = Vec::new();
    while let Some(pending) = done.blocking_recv() {
        let mut at = 0;
        for unit in &pending.chunk.units {
            let unit_results = &pending.results[at..at + unit.cells.len()];
            at += unit.cells.len();
            if unit.row == 0 {
                out.write_all(&unit.raw)
                    .map_err(BulkError::io("cannot write the output"))?;
                continue;
            }
            let mut failures = Vec::new();
            if let Some(problem) = unit.problem {
                failures.push((
                    String::new(),
                    String::new(),
                    Code::InvalidArgument as i32,
                    problem.to_owned(),
                ));
            }
            let mut replacements = Vec::with_capacity(unit.cells.len());
            for (i, (cell, result)) in unit.cells.iter().zip(unit_results).enumerate() {
                match result {
                    Some(Ok(text)) => replacements.push((i, text.as_str())),
                    Some(Err(e)) => failures.push((
                        names.location(&cell.location),
                        names.namespaces[cell.namespace].clone(),
                        e.code,
                        e.message.clone(),
                    )),
                    None => failures.push((
                        names.location(&cell.location),
                        names.namespaces[cell.namespace].clone(),
                        Code::Internal as i32,
                        "no answer".to_owned(),
                    )),
                }
            }
            Progress::add(&progress.rows, 1);
            Progress::add(&progress.fields, unit.cells.len() as u64);
            Progress::add(&progress.errors, failures.len() as u64);
            if let Some(errors) = &mut errors {
                for (location, namespace, code, message) in &failures {
                    errors
                        .write_record([
                            unit.row.to_string().as_str(),
                            unit.line.to_string().as_str(),
                            location,
                            namespace,
                            code_name(*code),
                            message,
                        ])
                        .map_err(csv_error)?;
                }
            }
            if let Some((location, namespace, code, _)) = failures.into_iter().next() {
                match on_error {
                    OnError::Keep => {}
                    OnError::DropRow => {
                        Progress::add(&progress.dropped_rows, 1);
                        continue;
                    }
                    OnError::Fail => {
                        out.flush()
                            .map_err(BulkError::io("cannot write the output"))?;
                        if let Some(errors) = &mut errors {
                            errors
                                .flush()
                                .map_err(BulkError::io("cannot write the errors file"))?;
                        }
                        return Err(BulkError::ItemFailed {
                            row: unit.row,
                            line: unit.line,
                            location,
                            namespace,
                            code: code_name(code),
                        });
                    }
                }
            }
            buffer.clear();
            splice(unit, &mut replacements, &mut buffer);
            out.write_all(&buffer)
                .map_err(BulkError::io("cannot write the output"))?;
        }
    }
    out.flush()
        .map_err(BulkError::io("cannot write the output"))?;
    if let Some(errors) = &mut errors {
        errors
            .flush()
            .map_err(BulkError::io("cannot write the errors file"))?;
    }
    Ok(())
}

pub(super) fn csv_error(error: ::csv::Error) -> BulkError {
    match error.into_kind() {
        ::csv::ErrorKind::Io(source) => BulkError::Io {
            what: "cannot write the errors file",
            source,
        },
        other => BulkError::Input(format!("cannot write the errors file: {other:?}")),
    }
}
