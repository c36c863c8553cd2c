//! Prometheus metrics: calls by RPC and status, call latency, and the
//! writer's group-commit batch sizes, served as text on `/metrics`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::FutureExt as _;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tonic::codegen::http;

use crate::Vault;
use crate::store::{BATCH_BUCKETS, COMMIT_MICROS_BUCKETS};

/// The RPCs metrics are kept for. Anything else is counted as `other`, so
/// that a caller cannot grow the label set by inventing method names.
const KNOWN_RPCS: [&str; 18] = [
    "/phivault.v1.Tokenizer/Tokenize",
    "/phivault.v1.Tokenizer/Detokenize",
    "/phivault.v1.Tokenizer/TokenizeStream",
    "/phivault.v1.Tokenizer/DetokenizeStream",
    "/phivault.v1.Tokenizer/GetServerInfo",
    "/phivault.v1.Admin/CreateNamespace",
    "/phivault.v1.Admin/ListNamespaces",
    "/phivault.v1.Admin/CreateClient",
    "/phivault.v1.Admin/ListClients",
    "/phivault.v1.Admin/RevokeClient",
    "/phivault.v1.Admin/ReleaseClient",
    "/phivault.v1.Admin/RotateClientKey",
    "/phivault.v1.Admin/RotateKeys",
    "/phivault.v1.Admin/GetKeyStatus",
    "/phivault.v1.Admin/Backup",
    "/phivault.v1.Admin/VerifyAudit",
    "/phivault.v1.Admin/ListDisclosures",
    "/phivault.v1.Admin/ExportAudit",
];

/// The label of the RPC at `path`: one of [`KNOWN_RPCS`], or `other`.
fn known_rpc(path: &str) -> &'static str {
    KNOWN_RPCS
        .iter()
        .copied()
        .find(|known| *known == path)
        .unwrap_or("other")
}

/// A namespace's name: chosen by an administrator, validated, never PHI.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamespaceLabel {
    namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    rpc: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabel {
    rpc: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ItemLabels {
    operation: &'static str,
    outcome: &'static str,
}

/// Items answered, by operation (`tokenize`, `detokenize`) and outcome
/// (`OK`, or the item's status spelt as call statuses are: `NOT_FOUND`,
/// `INVALID_ARGUMENT`…). A call refused as a whole is counted by
/// `phivault_grpc_calls_total`, not here.
#[derive(Clone, Default)]
pub(crate) struct Items(Family<ItemLabels, Counter>);

impl Items {
    pub(crate) fn count(&self, operation: &'static str, results: &[crate::ItemResult]) {
        let mut tally: Vec<(&'static str, u64)> = Vec::new();
        for result in results {
            let outcome = match result {
                Ok(_) => phivault_proto::code_name(0),
                Err(e) => phivault_proto::code_name(e.code.grpc_code()),
            };
            match tally.iter_mut().find(|(o, _)| *o == outcome) {
                Some((_, n)) => *n += 1,
                None => tally.push((outcome, 1)),
            }
        }
        for (outcome, n) in tally {
            self.0
                .get_or_create(&ItemLabels { operation, outcome })
                .inc_by(n);
        }
    }
}

/// What is running, for dashboards that follow a rolling upgrade.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    /// `embedded` (RocksDB) or `postgres`.
    store: &'static str,
}

/// The server's metrics registry.
pub struct Metrics {
    registry: Registry,
    /// Read from storage just before each scrape (see [`Metrics::refresh`]).
    store_bytes: Gauge,
    rotating: Gauge,
    rotation_done: Gauge<f64, AtomicU64>,
    active_keyset: Gauge,
    quarantined: Gauge,
    calls: Family<CallLabels, Counter>,
    in_progress: Family<RpcLabel, Gauge>,
    latency: Family<RpcLabel, Histogram>,
    fill: Family<NamespaceLabel, Gauge<f64, AtomicU64>>,
    vault: Arc<Vault>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics for `vault`'s server, with the count of `alerts` raised, the
    /// `items` answered and the expiry of the TLS certificate, if it serves
    /// TLS.
    pub(crate) fn new(
        vault: Arc<Vault>,
        alerts: &super::alerts::Alerts,
        items: &Items,
        tls: Option<Arc<super::tls::Tls>>,
    ) -> Self {
        let mut registry = Registry::with_prefix("phivault");
        registry.register(
            "items",
            "Items answered by tokenize and detokenize calls, by operation and outcome",
            items.0.clone(),
        );
        if let Some(tls) = tls {
            registry.register(
                "tls_certificate_expiry_timestamp_seconds",
                "When the gRPC listener's certificate expires (seconds since the epoch); follows SIGHUP reloads",
                CertificateExpiry(tls),
            );
        }
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "grpc_calls",
            "gRPC calls by method and status code",
            calls.clone(),
        );
        let in_progress = Family::<RpcLabel, Gauge>::default();
        registry.register(
            "grpc_calls_in_progress",
            "gRPC calls under way (streams included), by method",
            in_progress.clone(),
        );
        let latency = Family::<RpcLabel, Histogram>::new_with_constructor(|| {
            // 250 µs to about 4 s.
            Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
        });
        registry.register(
            "grpc_call_seconds",
            "gRPC call duration, until its status is sent (a stream's whole life)",
            latency.clone(),
        );
        registry.register(
            "writer_jobs_per_commit",
            "Requests folded into one durable group commit",
            WriterBatches(Arc::clone(&vault)),
        );
        registry.register(
            "writer_commit_seconds",
            "Time each successful write commit took: on RocksDB the group commit's batch written to the log and (with --durability fsync, the default) fsynced; on PostgreSQL a write statement's or an audit lane append's round trip, with its wait for a connection",
            CommitDurations(Arc::clone(&vault)),
        );
        registry.register(
            "audit_records_written",
            "Audit records durably appended since start",
            AuditCount(Arc::clone(&vault), true),
        );
        registry.register(
            "audit_records_failed",
            "Audit records that could not be written since start; each failed its call (fail closed)",
            AuditCount(Arc::clone(&vault), false),
        );
        let fill = Family::<NamespaceLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "namespace_fill_ratio",
            "Share of candidate tokens found taken since start, by namespace: how full the token space is for the values being tokenized",
            fill.clone(),
        );
        registry.register(
            "writer_queue_depth",
            "Operations waiting for the embedded store's single writer (0 on PostgreSQL, which has none)",
            WriterQueue(Arc::clone(&vault)),
        );
        let store_bytes = Gauge::default();
        registry.register(
            "store_bytes",
            "Bytes the vault takes in storage: RocksDB's tables, memtables and write-ahead log, or the PostgreSQL database",
            store_bytes.clone(),
        );
        let rotating = Gauge::default();
        registry.register(
            "rotation_in_progress",
            "1 while a key rotation moves mappings to the new keyset",
            rotating.clone(),
        );
        let rotation_done = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "rotation_progress_ratio",
            "Share of the mappings the rotation in progress has examined (0 when none runs)",
            rotation_done.clone(),
        );
        let active_keyset = Gauge::default();
        registry.register(
            "keyset_active_version",
            "The keyset version new mappings are written under",
            active_keyset.clone(),
        );
        let quarantined = Gauge::default();
        registry.register(
            "clients_quarantined",
            "Clients suspended by reveal-anomaly detection, until an administrator releases them",
            quarantined.clone(),
        );
        registry.register(
            "build",
            "The running version and store; always 1",
            prometheus_client::metrics::info::Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                store: if vault.shares_storage() {
                    "postgres"
                } else {
                    "embedded"
                },
            }),
        );
        registry.register(
            "alerts",
            "Alerts raised since start, by kind (each is also an audit record: pvc alerts list)",
            alerts.raised.clone(),
        );
        Self {
            registry,
            store_bytes,
            rotating,
            rotation_done,
            active_keyset,
            quarantined,
            calls,
            in_progress,
            latency,
            fill,
            vault,
        }
    }

    fn record(&self, rpc: &'static str, code: &'static str, seconds: f64) {
        self.calls.get_or_create(&CallLabels { rpc, code }).inc();
        self.latency
            .get_or_create(&RpcLabel { rpc })
            .observe(seconds);
    }

    /// Reads what only storage knows (its size, the rotation's progress),
    /// each within `SCRAPE_READ`: a slow store leaves the last figures in
    /// place. Run by one task every [`REFRESH_EVERY`], never by a scrape,
    /// so that scraping (unauthenticated, plain HTTP) costs storage
    /// nothing.
    pub async fn refresh(&self) {
        if let Ok(Ok(bytes)) = tokio::time::timeout(SCRAPE_READ, self.vault.store_size()).await {
            self.store_bytes
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        if let Ok(Ok(status)) = tokio::time::timeout(SCRAPE_READ, self.vault.key_status()).await {
            self.active_keyset.set(i64::from(status.active));
            match &status.rotation {
                Some(rotation) => {
                    self.rotating.set(1);
                    self.rotation_done
                        .set(rotation.done as f64 / rotation.total.max(1) as f64);
                }
                None => {
                    self.rotating.set(0);
                    self.rotation_done.set(0.0);
                }
            }
        }
    }

    /// The registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let quarantined = self
            .vault
            .clients()
            .iter()
            .filter(|c| c.suspended.is_some() && c.revoked_at.is_none())
            .count();
        self.quarantined
            .set(i64::try_from(quarantined).unwrap_or(i64::MAX));
        for (namespace, ratio) in self.vault.namespace_fill() {
            self.fill
                .get_or_create(&NamespaceLabel { namespace })
                .set(ratio);
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Reads the writer's batch-size counters when scraped.
struct WriterBatches(Arc<Vault>);

impl std::fmt::Debug for WriterBatches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriterBatches")
    }
}

impl EncodeMetric for WriterBatches {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.0.writer_stats();
        let buckets: Vec<(f64, u64)> = BATCH_BUCKETS
            .iter()
            .zip(stats.batches)
            .map(|(&upper, count)| (upper as f64, count))
            .collect();
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            stats.jobs as f64,
            stats.commits,
            &buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Reads the writer's commit-duration counters when scraped.
struct CommitDurations(Arc<Vault>);

impl std::fmt::Debug for CommitDurations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommitDurations")
    }
}

impl EncodeMetric for CommitDurations {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.0.writer_stats();
        // Counts per bucket: the encoder sums them into cumulative ones.
        let buckets: Vec<(f64, u64)> = COMMIT_MICROS_BUCKETS
            .iter()
            .map(|&upper| upper as f64 / 1e6)
            .chain([f64::INFINITY])
            .zip(stats.commit_micros)
            .collect();
        let count = stats.commit_micros.iter().sum();
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            stats.commit_micros_sum as f64 / 1e6,
            count,
            &buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Records every gRPC call: its method, its status and how long it took.
/// A call refused or failed before its answer has its status in the
/// response headers (a trailers-only response) and is recorded then; any
/// other call, a stream above all, is recorded when its status goes out in
/// the trailers at its end, so a stream that fails after its first message
/// counts as the failure it is and its duration is the whole stream's. A
/// response dropped before its status (the client went away) counts as
/// `Cancelled`.
///
/// With `trace_calls`, each call is also a span ([`CALL_SPAN`]) for the
/// OpenTelemetry exporter: its parent is the caller's W3C trace context
/// (`traceparent`, `tracestate`), its fields the method, namespace, item
/// count, request id and status, and it lasts as long as the call.
#[derive(Clone)]
pub(crate) struct RecordLayer {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) trace_calls: bool,
}

impl<S> tower::Layer<S> for RecordLayer {
    type Service = Record<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Record {
            inner,
            metrics: Arc::clone(&self.metrics),
            trace_calls: self.trace_calls,
        }
    }
}

#[derive(Clone)]
pub(crate) struct Record<S> {
    inner: S,
    metrics: Arc<Metrics>,
    trace_calls: bool,
}

/// The name of the span every call makes when calls are traced. Its fields
/// name methods, namespaces and counts only: never a value, a token or a
/// key.
pub const CALL_SPAN: &str = "phivault.call";

/// Reads the W3C trace context out of a request's headers.
struct Headers<'a>(&'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The span of a call to `rpc`, a child of the caller's trace when its
/// headers carry one.
fn call_span(rpc: &'static str, headers: &http::HeaderMap) -> tracing::Span {
    use opentelemetry::propagation::TextMapPropagator as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let (service, method) = rpc
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or(("other", "other"));
    let span = tracing::info_span!(
        "phivault.call",
        otel.name = rpc.trim_start_matches('/'),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
        phivault.namespace = tracing::field::Empty,
        phivault.items = tracing::field::Empty,
        phivault.request_id = tracing::field::Empty,
    );
    // The caller's trace and span ids only: its tracestate is free text the
    // vault does not pass on.
    let extracted =
        opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&Headers(headers));
    let remote = {
        use opentelemetry::trace::TraceContextExt as _;
        extracted.span().span_context().clone()
    };
    if remote.is_valid() {
        use opentelemetry::trace::TraceContextExt as _;
        let parent = opentelemetry::trace::SpanContext::new(
            remote.trace_id(),
            remote.span_id(),
            remote.trace_flags(),
            true,
            opentelemetry::trace::TraceState::default(),
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
    }
    span
}

/// A call whose status is not known yet: counted in progress until it is
/// dropped, and as `Cancelled` if dropped before a status was seen (the
/// client went away, or the server's request timeout, which sits outside
/// this layer, gave up on it).
struct Pending {
    metrics: Arc<Metrics>,
    rpc: &'static str,
    started: Instant,
    finished: bool,
    /// The call's span, closed when this is dropped.
    span: Option<tracing::Span>,
}

impl Pending {
    fn start(metrics: Arc<Metrics>, rpc: &'static str, span: Option<tracing::Span>) -> Self {
        metrics.in_progress.get_or_create(&RpcLabel { rpc }).inc();
        Self {
            metrics,
            rpc,
            started: Instant::now(),
            finished: false,
            span,
        }
    }

    fn finish(mut self, code: tonic::Code) {
        self.record(code);
    }

    fn record(&mut self, code: tonic::Code) {
        self.finished = true;
        if let Some(span) = &self.span {
            span.record("rpc.grpc.status_code", code as i32);
            span.record(
                "otel.status_code",
                if code == tonic::Code::Ok {
                    "OK"
                } else {
                    "ERROR"
                },
            );
        }
        self.metrics.record(
            self.rpc,
            phivault_proto::code_name(code as i32),
            self.started.elapsed().as_secs_f64(),
        );
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.finished {
            self.record(tonic::Code::Cancelled);
        }
        self.metrics
            .in_progress
            .get_or_create(&RpcLabel { rpc: self.rpc })
            .dec();
    }
}

fn status_in(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .map(|v| tonic::Code::from_bytes(v.as_bytes()))
}

impl<S, B, R> tower::Service<http::Request<B>> for Record<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: http_body::Body + Unpin,
{
    type Response = http::Response<Recorded<R>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        use tracing::Instrument as _;
        let rpc = known_rpc(request.uri().path());
        let span = self.trace_calls.then(|| call_span(rpc, request.headers()));
        // A request id the caller chose may be a record key (even a value):
        // only one the server made goes on the span.
        let own_request_id = !request.headers().contains_key("x-request-id");
        let pending = Pending::start(Arc::clone(&self.metrics), rpc, span.clone());
        // The handler runs in the span, so it can name the namespace and the
        // item count on it (tracing::Span::current()).
        let response = match span {
            Some(span) => self.inner.call(request).instrument(span).left_future(),
            None => self.inner.call(request).right_future(),
        };
        Box::pin(async move {
            let response = response.await?;
            if let (true, Some(span), Some(id)) = (
                own_request_id,
                &pending.span,
                response.headers().get("x-request-id"),
            ) && let Ok(id) = id.to_str()
            {
                span.record("phivault.request_id", id);
            }
            let call = match status_in(response.headers()) {
                Some(code) => {
                    pending.finish(code);
                    None
                }
                None => Some(pending),
            };
            Ok(response.map(|inner| Recorded { inner, call }))
        })
    }
}

/// A response body that records its call when the status passes in the
/// trailers (dropped without one, its call counts as `Cancelled`).
pub(crate) struct Recorded<B> {
    inner: B,
    call: Option<Pending>,
}

impl<B: http_body::Body + Unpin> http_body::Body for Recorded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame
                .trailers_ref()
                .map(|trailers| status_in(trailers).unwrap_or(tonic::Code::Unknown)),
            Poll::Ready(Some(Err(_))) => Some(tonic::Code::Unknown),
            // An answer that ends without a status is not one gRPC knows.
            Poll::Ready(None) => Some(tonic::Code::Unknown),
            Poll::Pending => None,
        };
        if let Some(code) = ended
            && let Some(call) = self.call.take()
        {
            call.finish(code);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// How long `/readyz` waits for the store to answer.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether the vault can serve calls now: unsealed (it is, or the listener
/// would not be up), its write path healthy (commits, audit records
/// included, succeed), and, for storage other nodes share, the store
/// answering. `Err` says which part is not.
async fn ready(vault: &Vault) -> Result<(), &'static str> {
    if !vault.write_path_healthy() {
        return Err("the write path is down: commits (and so audit records) fail");
    }
    if vault.shares_storage() {
        match tokio::time::timeout(READY_TIMEOUT, vault.refresh()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err("the store does not answer"),
            Err(_) => return Err("the store does not answer in time"),
        }
    }
    Ok(())
}

/// Serves the operations endpoints on `listener`, in plain HTTP whatever the
/// gRPC port's TLS (a kubelet probes in plaintext), until the task is
/// dropped or aborted: `/metrics`, `/healthz` (the process answers: a
/// liveness probe) and `/readyz` (it can serve calls now: a readiness
/// probe, 503 with the reason otherwise).
pub(crate) async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    let vault = Arc::clone(&metrics.vault);
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = Arc::clone(&metrics);
                async move {
                    // What prometheus-client writes is OpenMetrics (an
                    // `info` type, a closing `# EOF`), which Prometheus's
                    // older text parser refuses: say so.
                    (
                        [(
                            http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.render(),
                    )
                }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let vault = Arc::clone(&vault);
                async move {
                    match ready(&vault).await {
                        Ok(()) => (http::StatusCode::OK, "ready\n".to_owned()),
                        Err(why) => (
                            http::StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {why}\n"),
                        ),
                    }
                }
            }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "the metrics endpoint stopped");
    }
}

/// How long a refresh waits for storage before keeping the last figures.
const SCRAPE_READ: std::time::Duration = std::time::Duration::from_secs(1);
/// How often the figures read from storage are refreshed.
pub(crate) const REFRESH_EVERY: std::time::Duration = std::time::Duration::from_secs(15);

/// Reads the writer's queue when scraped.
struct WriterQueue(Arc<Vault>);

impl std::fmt::Debug for WriterQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriterQueue")
    }
}

impl EncodeMetric for WriterQueue {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let queued = self.0.writer_stats().queued;
        encoder.encode_gauge(&i64::try_from(queued).unwrap_or(i64::MAX))
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

struct CertificateExpiry(Arc<super::tls::Tls>);

impl std::fmt::Debug for CertificateExpiry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertificateExpiry")
    }
}

impl EncodeMetric for CertificateExpiry {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&i64::try_from(self.0.expires()).unwrap_or(i64::MAX))
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// Reads the audit trail's counters when scraped: written (`true`) or
/// failed.
struct AuditCount(Arc<Vault>, bool);

impl std::fmt::Debug for AuditCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditCount")
    }
}

impl EncodeMetric for AuditCount {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (written, failed) = self.0.audit_counts();
        let value = if self.1 { written } else { failed };
        encoder.encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&value, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}
