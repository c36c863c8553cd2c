//! The native half of the `phivault` Python package: the Rust client
//! (`phivault-client`) behind a small surface that the Python half
//! (`python/phivault`) wraps in classes, exceptions and data-frame helpers.
//!
//! Every call releases the GIL while it waits, so other Python threads run;
//! a blocking call still answers Ctrl-C. Results cross into Python as plain
//! lists: the tokens or values, `None` where an item failed, and the
//! failures as `(index, code, message)`. A message never holds the item:
//! the server's item messages do not, and nothing here adds one.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use phivault_client::{Batch, Client, ClientError, ClientOptions, ItemResult, Purpose};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(
    _native,
    NativeError,
    PyException,
    "A failure of the native client, as (kind, code, message, retry_after); the Python \
     package turns it into its own exceptions."
);

/// What a call answers: one text or `None` per item, and the failed items.
type Answer = (Vec<Option<String>>, Vec<(usize, &'static str, String)>);

/// How often a blocking call looks for Ctrl-C.
const SIGNAL_CHECK: Duration = Duration::from_millis(100);
/// A batch's payload stays well under the server's 4 MiB message limit,
/// however long its values (as the CLI's bulk runs keep theirs).
const BATCH_BYTES: usize = 1 << 20;

fn native_error(error: ClientError) -> PyErr {
    let retry_after = error.retry_after().map(|d| d.as_secs_f64());
    match error {
        ClientError::Status(status) => NativeError::new_err((
            "status",
            Some(phivault_client::code_name(status.code() as i32)),
            status.message().to_owned(),
            retry_after,
        )),
        ClientError::PlaintextRefused(_)
        | ClientError::InvalidEndpoint { .. }
        | ClientError::BadKey => {
            NativeError::new_err(("config", None::<&str>, error.to_string(), None::<f64>))
        }
        other => NativeError::new_err(("connect", None::<&str>, other.to_string(), None::<f64>)),
    }
}

/// `seconds` as a duration, or a configuration error naming `what`.
fn seconds(what: &str, seconds: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(seconds).map_err(|_| {
        NativeError::new_err((
            "config",
            None::<&str>,
            format!("{what} must be a finite, non-negative number of seconds"),
            None::<f64>,
        ))
    })
}

fn closed() -> PyErr {
    NativeError::new_err((
        "closed",
        None::<&str>,
        "the client is closed".to_owned(),
        None::<f64>,
    ))
}

/// Splits results into what Python gets: texts in order, `None` for the
/// failed items, and the failures.
fn answer(results: impl IntoIterator<Item = ItemResult>) -> Answer {
    let mut texts = Vec::new();
    let mut failures = Vec::new();
    for (i, result) in results.into_iter().enumerate() {
        match result {
            Ok(text) => texts.push(Some(text)),
            Err(e) => {
                texts.push(None);
                failures.push((i, phivault_client::code_name(e.code), e.message));
            }
        }
    }
    (texts, failures)
}

/// Runs `future` on the shared runtime with the GIL released, looking for
/// Ctrl-C (or another signal Python handles) meanwhile; a signal's
/// exception abandons the call.
fn wait<T: Send>(py: Python<'_>, future: impl Future<Output = PyResult<T>> + Send) -> PyResult<T> {
    py.detach(|| {
        pyo3_async_runtimes::tokio::get_runtime().block_on(async {
            let mut future = std::pin::pin!(future);
            loop {
                tokio::select! {
                    out = &mut future => return out,
                    () = tokio::time::sleep(SIGNAL_CHECK) => {
                        Python::attach(|py| py.check_signals())?;
                    }
                }
            }
        })
    })
}

/// A connection to a vault (its endpoints, moving to the next when one goes
/// away), shared by the threads and tasks that use it.
#[pyclass(frozen, module = "phivault._native")]
struct NativeClient {
    client: Mutex<Option<Client>>,
}

impl NativeClient {
    fn client(&self) -> PyResult<Client> {
        self.client
            .lock()
            .map_err(|_| closed())?
            .as_ref()
            .cloned()
            .ok_or_else(closed)
    }
}

/// Cells of one column in batches of at most `per_batch` items and about
/// [`BATCH_BYTES`], leaving out the `None`s; and, per batch, where its
/// answers go in the column.
fn batches_of(
    namespace: &str,
    cells: Vec<Option<String>>,
    per_batch: usize,
) -> (Vec<Batch>, Vec<Vec<usize>>) {
    let mut batches = Vec::new();
    let mut targets = Vec::new();
    let (mut items, mut at) = (Vec::new(), Vec::new());
    let mut bytes = 0;
    for (row, cell) in cells.into_iter().enumerate() {
        let Some(cell) = cell else { continue };
        if !items.is_empty() && bytes + cell.len() > BATCH_BYTES {
            batches.push(Batch {
                namespace: namespace.to_owned(),
                items: std::mem::take(&mut items),
            });
            targets.push(std::mem::take(&mut at));
            bytes = 0;
        }
        bytes += cell.len();
        items.push(cell);
        at.push(row);
        if items.len() == per_batch {
            bytes = 0;
            batches.push(Batch {
                namespace: namespace.to_owned(),
                items: std::mem::take(&mut items),
            });
            targets.push(std::mem::take(&mut at));
        }
    }
    if !items.is_empty() {
        batches.push(Batch {
            namespace: namespace.to_owned(),
            items,
        });
        targets.push(at);
    }
    (batches, targets)
}

/// Columns sent as batches over one stream (up to `in_flight` out),
/// reconnecting for up to `retry_for`; answers one [`Answer`] per column,
/// `None` kept where the column had `None`.
async fn send_columns(
    client: Client,
    columns: Vec<(String, Vec<Option<String>>)>,
    per_batch: usize,
    in_flight: usize,
    retry_for: Duration,
    masked: Option<bool>,
) -> PyResult<Vec<Answer>> {
    let mut all = Vec::new();
    let mut owners = Vec::new();
    let mut lengths = Vec::new();
    for (column, (namespace, cells)) in columns.into_iter().enumerate() {
        lengths.push(cells.len());
        let (batches, targets) = batches_of(&namespace, cells, per_batch.clamp(1, 10_000));
        owners.extend(targets.into_iter().map(|t| (column, t)));
        all.extend(batches);
    }
    let results = match masked {
        None => client.tokenize_all(all, in_flight.max(1), retry_for).await,
        Some(masked) => {
            client
                .detokenize_all(all, masked, in_flight.max(1), retry_for)
                .await
        }
    }
    .map_err(native_error)?;
    let mut answers: Vec<Answer> = lengths
        .into_iter()
        .map(|n| (vec![None; n], Vec::new()))
        .collect();
    for ((column, rows), batch) in owners.into_iter().zip(results) {
        let (texts, failures) = &mut answers[column];
        for (row, result) in rows.into_iter().zip(batch) {
            match result {
                Ok(text) => texts[row] = Some(text),
                Err(e) => failures.push((row, phivault_client::code_name(e.code), e.message)),
            }
        }
    }
    for (_, failures) in &mut answers {
        failures.sort_unstable_by_key(|f| f.0);
    }
    Ok(answers)
}

#[pymethods]
impl NativeClient {
    /// Connects to the first endpoint (of a comma-separated list) that
    /// answers.
    #[staticmethod]
    #[pyo3(signature = (endpoints, api_key, ca_pem, cert_pem, key_pem, domain, insecure_plaintext, deadline, purpose, reason))]
    #[allow(clippy::too_many_arguments)]
    fn connect(
        py: Python<'_>,
        endpoints: String,
        api_key: Option<String>,
        ca_pem: Option<Vec<u8>>,
        cert_pem: Option<Vec<u8>>,
        key_pem: Option<Vec<u8>>,
        domain: Option<String>,
        insecure_plaintext: bool,
        deadline: Option<f64>,
        purpose: Option<String>,
        reason: Option<String>,
    ) -> PyResult<Self> {
        let mut options = ClientOptions::new(endpoints)
            .insecure_plaintext(insecure_plaintext)
            .deadline(deadline.map(|d| seconds("the deadline", d)).transpose()?)
            .purpose(Purpose::new(
                purpose.unwrap_or_default(),
                reason.unwrap_or_default(),
            ));
        if let Some(key) = api_key {
            options = options.api_key(key);
        }
        if let Some(ca) = ca_pem {
            options = options.ca_pem(ca);
        }
        if let (Some(cert), Some(key)) = (cert_pem, key_pem) {
            options = options.identity_pem(cert, key);
        }
        if let Some(domain) = domain {
            options = options.domain(domain);
        }
        let client = wait(py, async {
            Client::connect(options).await.map_err(native_error)
        })?;
        Ok(Self {
            client: Mutex::new(Some(client)),
        })
    }

    /// Drops the connections; later calls fail.
    fn close(&self) {
        if let Ok(mut client) = self.client.lock() {
            client.take();
        }
    }

    fn tokenize(&self, py: Python<'_>, namespace: String, values: Vec<String>) -> PyResult<Answer> {
        let client = self.client()?;
        wait(py, async move {
            client
                .tokenize(&namespace, values)
                .await
                .map(answer)
                .map_err(native_error)
        })
    }

    #[pyo3(signature = (namespace, tokens, masked, purpose, reason))]
    fn detokenize(
        &self,
        py: Python<'_>,
        namespace: String,
        tokens: Vec<String>,
        masked: bool,
        purpose: Option<String>,
        reason: Option<String>,
    ) -> PyResult<Answer> {
        let client = self.client()?;
        wait(py, async move {
            detokenize(client, namespace, tokens, masked, purpose, reason).await
        })
    }

    #[pyo3(signature = (namespace, values))]
    fn tokenize_async<'py>(
        &self,
        py: Python<'py>,
        namespace: String,
        values: Vec<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client()?;
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            client
                .tokenize(&namespace, values)
                .await
                .map(answer)
                .map_err(native_error)
        })
    }

    #[pyo3(signature = (namespace, tokens, masked, purpose, reason))]
    fn detokenize_async<'py>(
        &self,
        py: Python<'py>,
        namespace: String,
        tokens: Vec<String>,
        masked: bool,
        purpose: Option<String>,
        reason: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client()?;
        pyo3_async_runtimes::tokio::future_into_py(
            py,
            detokenize(client, namespace, tokens, masked, purpose, reason),
        )
    }

    /// Tokenizes columns (`masked` is `None`) or reveals them (masked or
    /// not; every batch is audited), each `(namespace, cells)`, `None`
    /// cells left as they are.
    #[pyo3(signature = (columns, masked, batch_items, in_flight, retry_for))]
    fn columns(
        &self,
        py: Python<'_>,
        columns: Vec<(String, Vec<Option<String>>)>,
        masked: Option<bool>,
        batch_items: usize,
        in_flight: usize,
        retry_for: f64,
    ) -> PyResult<Vec<Answer>> {
        let client = self.client()?;
        let retry_for = seconds("retry_for", retry_for)?;
        wait(
            py,
            send_columns(client, columns, batch_items, in_flight, retry_for, masked),
        )
    }

    /// [`NativeClient::columns`], awaitable.
    #[pyo3(signature = (columns, masked, batch_items, in_flight, retry_for))]
    fn columns_async<'py>(
        &self,
        py: Python<'py>,
        columns: Vec<(String, Vec<Option<String>>)>,
        masked: Option<bool>,
        batch_items: usize,
        in_flight: usize,
        retry_for: f64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client()?;
        let retry_for = seconds("retry_for", retry_for)?;
        pyo3_async_runtimes::tokio::future_into_py(
            py,
            send_columns(client, columns, batch_items, in_flight, retry_for, masked),
        )
    }

    /// Whether the vault process answers (gRPC health, overall).
    fn health(&self, py: Python<'_>) -> PyResult<bool> {
        let client = self.client()?;
        wait(
            py,
            async move { client.health().await.map_err(native_error) },
        )
    }

    /// Whether the vault can answer tokenize and detokenize now.
    fn ready(&self, py: Python<'_>) -> PyResult<bool> {
        let client = self.client()?;
        wait(
            py,
            async move { client.ready().await.map_err(native_error) },
        )
    }

    /// The server's version, storage and limits, as
    /// `(version, store, max_message_bytes, max_items, max_value_bytes)`.
    fn server_info(&self, py: Python<'_>) -> PyResult<(String, String, u64, u32, u32)> {
        let client = self.client()?;
        wait(py, async move {
            client
                .server_info()
                .await
                .map(|i| {
                    (
                        i.version,
                        i.store,
                        i.max_message_bytes,
                        i.max_items,
                        i.max_value_bytes,
                    )
                })
                .map_err(native_error)
        })
    }
}

/// A reveal stating its own purpose when given one, else the client's.
async fn detokenize(
    client: Client,
    namespace: String,
    tokens: Vec<String>,
    masked: bool,
    purpose: Option<String>,
    reason: Option<String>,
) -> PyResult<Answer> {
    let results = if purpose.is_some() || reason.is_some() {
        let purpose = Purpose::new(purpose.unwrap_or_default(), reason.unwrap_or_default());
        client
            .detokenize_for(&namespace, tokens, masked, &purpose)
            .await
    } else {
        client.detokenize(&namespace, tokens, masked).await
    };
    results.map(answer).map_err(native_error)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NativeClient>()?;
    m.add("NativeError", m.py().get_type::<NativeError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
