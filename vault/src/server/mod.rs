//! The gRPC server: `phivault.v1.Tokenizer`, `phivault.v1.Admin`, the
//! standard health service and server reflection, over TLS or (on loopback,
//! or when explicitly told so) plaintext.

mod activity;
mod admin;
mod alerts;
mod call;
pub mod config;
pub mod convert;
mod gate;
mod json_api;
mod limiter;
mod listener;
mod metrics;
mod refusals;
mod status;
mod tally;
mod tls;
mod tokenizer;
mod watch;
pub mod webhook;

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use phivault_proto::v1::admin_server::AdminServer;
use phivault_proto::v1::tokenizer_server::TokenizerServer;
use tonic::codegen::http;
use tonic::transport::Server;

pub use activity::{LIMITED_SUMMARY_RPC, TOKENIZE_SUMMARY_RPC};
pub use admin::AdminService;
pub use alerts::ALERT_RPC;
pub use metrics::{CALL_SPAN, Metrics};
pub use refusals::{MAX_SUMMARIES, SUMMARY_RPC};
pub use tls::{TlsError, TlsOptions};
pub use tokenizer::BREAK_GLASS_OPENED_RPC;
pub use tokenizer::TokenizerService;
pub use watch::SUSPENDED_RPC;

use crate::Vault;

/// How the server listens.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to bind; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Certificate and key (and optionally a client CA for mTLS).
    pub tls: Option<TlsOptions>,
    /// Replacement TLS material (the files read again on SIGHUP): new
    /// connections use it once it passes its checks, open ones keep theirs.
    pub tls_reloads: Option<tokio::sync::watch::Receiver<TlsOptions>>,
    /// Makes a span ([`CALL_SPAN`]) for every call, for the process's
    /// tracing subscriber to export (OpenTelemetry).
    pub trace_calls: bool,
    /// Allows plaintext gRPC on a non-loopback address. Dangerous: API keys
    /// and PHI cross the network in clear.
    pub insecure_plaintext: bool,
    /// Largest gRPC message accepted or sent.
    pub max_message_bytes: usize,
    /// Where to serve Prometheus metrics over HTTP (`/metrics`), if at all.
    pub metrics_listen: Option<SocketAddr>,
    /// Where to serve the HTTP/JSON API, if at all.
    pub http_listen: Option<SocketAddr>,
    /// The directory `Admin.Backup` writes new directories into (`None`:
    /// the RPC answers `FAILED_PRECONDITION`).
    pub backup_dir: Option<std::path::PathBuf>,
    /// Caps on what peers can make the server hold.
    pub transport: TransportLimits,
    /// Rate limits and quotas for clients that do not set their own.
    pub client_limits: crate::limits::Limits,
    /// How often tokenize calls and calls over a limit are summed up in
    /// the audit trail.
    pub summary_window: Duration,
    /// How long a client may break the glass, from its first such reveal,
    /// before an administrator must re-arm it.
    pub break_glass_window: Duration,
    /// The window reveal-anomaly detection scores; `None` turns it off.
    pub detection_window: Option<Duration>,
    /// Where alerts are also sent as signed JSON, if anywhere.
    pub alert_webhook: Option<webhook::WebhookOptions>,
}

/// What one peer, or all of them, can make the server hold: connections,
/// streams, calls, time. Set explicitly because the transport's own defaults
/// leave some unbounded (tonic turns off hyper's cap on concurrent streams
/// and h2's cap on locally reset streams). DESIGN.md §10: availability is
/// part of security.
#[derive(Debug, Clone)]
pub struct TransportLimits {
    /// Open connections in all; one more is accepted and closed at once.
    pub max_connections: usize,
    /// Open connections from one peer: an IPv4 address, or an IPv6 prefix
    /// of [`Self::ipv6_peer_prefix`] bits.
    pub max_connections_per_peer: usize,
    /// How many leading bits of an IPv6 address make one peer (48 to 128):
    /// a host is usually handed a whole /64.
    pub ipv6_peer_prefix: u8,
    /// HTTP/2 streams (calls) open at once on one connection.
    pub max_concurrent_streams: u32,
    /// Tokenizer and Admin calls in progress in all; one more is answered
    /// `UNAVAILABLE` at once (load shedding), not queued.
    pub max_calls_in_progress: usize,
    /// Streams a peer may reset before they are accepted, before the
    /// connection is closed (the HTTP/2 "rapid reset" flood).
    pub max_pending_accept_reset_streams: usize,
    /// Streams the server may reset for protocol errors on one connection
    /// before closing it.
    pub max_local_error_reset_streams: usize,
    /// Longest a unary call (or a stream's opening) may take before it is
    /// answered `CANCELLED`; a caller's shorter `grpc-timeout` wins.
    pub request_timeout: Duration,
    /// Idle time after which the server pings a connection over HTTP/2.
    pub keepalive_interval: Duration,
    /// How long an unanswered ping waits before the connection is closed.
    pub keepalive_timeout: Duration,
    /// Largest header block accepted (the API key and request id are small).
    pub max_header_list_bytes: u32,
    /// Largest message accepted by `Admin` (its requests are names and
    /// scopes; the data-plane limit is `ServeOptions::max_message_bytes`).
    pub admin_max_message_bytes: usize,
    /// How often refused unauthenticated calls are summarised into the
    /// audit trail.
    pub refusal_window: Duration,
    /// Longest a new connection may take to send its opening bytes (the
    /// HTTP/2 preface, or a TLS ClientHello) and, under TLS, to finish its
    /// handshake: a peer that connects and says nothing is closed.
    pub handshake_timeout: Duration,
}

impl Default for TransportLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_connections_per_peer: 256,
            ipv6_peer_prefix: 64,
            max_concurrent_streams: 128,
            max_calls_in_progress: 2048,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1024,
            request_timeout: Duration::from_secs(120),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_header_list_bytes: 16 << 10,
            admin_max_message_bytes: 64 << 10,
            refusal_window: refusals::DEFAULT_WINDOW,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Plaintext on a non-loopback address without `--insecure-plaintext`.
    #[error(
        "refusing plaintext gRPC on {0}, which is not a loopback address: give --tls-cert and --tls-key, or --insecure-plaintext if the network is protected otherwise"
    )]
    PlaintextRefused(SocketAddr),
    /// The HTTP/JSON API in plaintext on a non-loopback address, without
    /// the override.
    #[error(
        "refusing the HTTP/JSON API in plaintext on {0}, which is not a loopback address: give --tls-cert and --tls-key, or --insecure-plaintext if the network is protected otherwise"
    )]
    HttpPlaintextRefused(SocketAddr),
    /// The address could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// The TLS certificate, key or client CA cannot be used.
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    /// The transport failed (I/O).
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not be built from the descriptors.
    #[error("server reflection: {0}")]
    Reflection(String),
    /// The alert webhook's settings cannot be used.
    #[error("{0}")]
    Webhook(String),
}

/// gRPC's other implementations answer a message over the size limit with
/// `RESOURCE_EXHAUSTED`; tonic's codec says `OUT_OF_RANGE`. Clients and
/// operators should see one status for one cause, so the codec's answer is
/// rewritten (it is a trailers-only response: the status is in the headers,
/// the message percent-encoded).
/// A listener on `addr`, and the address it got (port 0 picks one).
async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), ServeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| ServeError::Bind(addr, e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| ServeError::Bind(addr, e))?;
    Ok((listener, bound))
}

fn oversize_is_resource_exhausted<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let oversize = headers.get("grpc-status").is_some_and(|s| s == "11")
        && headers.get("grpc-message").is_some_and(|m| {
            m.as_bytes()
                .starts_with(b"Error,%20decoded%20message%20length%20too%20large")
        });
    if oversize {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
        headers.insert(
            "grpc-message",
            http::HeaderValue::from_static("the request exceeds the server's message size limit"),
        );
    }
    response
}

/// Makes aws-lc-rs the process's TLS provider, so that the server offers the
/// hybrid post-quantum key exchange X25519MLKEM768 first (then X25519, P-256,
/// P-384). Explicit rather than left to the crates' features, so that a
/// dependency turning on another provider cannot silently change it. A
/// provider installed already (by the embedding program) is kept.
pub fn install_tls_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Tells a service manager that started the server with `Type=notify`
/// (systemd sets `NOTIFY_SOCKET`) that it is ready: the sd_notify protocol,
/// one datagram `READY=1` to that socket (a path, or an abstract name
/// written with a leading `@`). Nothing happens without the variable; a
/// failure is logged, never fatal — the manager's start timeout tells.
fn notify_ready() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    let sent = UnixDatagram::unbound().and_then(|socket| {
        let address = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(std::path::Path::new(&path))?,
        };
        socket.send_to_addr(b"READY=1\nSTATUS=serving\n", &address)
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, "could not tell the service manager that the vault is ready (NOTIFY_SOCKET)");
    }
}

/// Runs `tick` every `period` (the first a period from now; a tick that
/// overruns delays the next rather than bunching them) until `stop`
/// resolves: the loop of the server's periodic work.
pub(crate) async fn every<F, Fut>(period: Duration, stop: impl Future<Output = ()>, mut tick: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = ticks.tick() => tick().await,
            () = &mut stop => return,
        }
    }
}

/// Largest request health and reflection accept.
const PUBLIC_MAX_MESSAGE_BYTES: usize = 4 << 10;

/// How often health looks at the write path.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// Keeps the health service true to the write path: `phivault.v1.Tokenizer`
/// and `phivault.v1.Admin` report NOT_SERVING while commits fail, since
/// every reveal then fails closed and a load balancer or readiness probe
/// should send callers elsewhere; SERVING again once a commit that reached
/// the store succeeds. While the path is down and no call is writing, a
/// probe write each second finds out when it is back. The overall status
/// (`""`, what liveness probes ask) stays SERVING: the process is alive and
/// heals by itself, and restarting it would not bring the disk back. A
/// writer that has ended while serving cannot heal: the process exits so
/// that its supervisor restarts it. On storage shared with other nodes, it
/// also reads the registry again once a second when another node changed it,
/// and writes the audit lanes' checkpoints when this node holds their lease.
async fn watch_write_path(vault: Arc<Vault>, health: tonic_health::server::HealthReporter) {
    let mut serving = true;
    let mut ticks = tokio::time::interval(HEALTH_INTERVAL);
    loop {
        ticks.tick().await;
        // A node without calls still follows the registry other nodes
        // change, so that it can take a rotation over with the new keyset.
        if vault.shares_storage() {
            if let Err(e) = vault.refresh_periodically().await {
                tracing::warn!(error = %e, "cannot read the registry's epoch");
            }
            if let Err(e) = vault.checkpoint_audit().await {
                tracing::warn!(error = %e, "cannot write an audit checkpoint");
            }
        }
        let mut healthy = vault.write_path_healthy();
        if !healthy {
            match vault.probe_write_path().await {
                Ok(()) => healthy = vault.write_path_healthy(),
                Err(crate::Error::Store(crate::store::StoreError::WriterStopped)) => {
                    tracing::error!(
                        "the storage writer has stopped while serving; exiting so that the supervisor restarts the vault"
                    );
                    std::process::exit(70);
                }
                Err(_) => {}
            }
        }
        if healthy == serving {
            continue;
        }
        serving = healthy;
        let status = if healthy {
            tracing::info!("the write path is back: serving");
            tonic_health::ServingStatus::Serving
        } else {
            tracing::error!(
                "the write path is down (commits fail): Tokenizer and Admin report NOT_SERVING"
            );
            tonic_health::ServingStatus::NotServing
        };
        health
            .set_service_status(
                <TokenizerServer<TokenizerService> as tonic::server::NamedService>::NAME,
                status,
            )
            .await;
        health
            .set_service_status(
                <AdminServer<AdminService> as tonic::server::NamedService>::NAME,
                status,
            )
            .await;
    }
}

/// Serves `vault` until `shutdown` resolves, then stops accepting calls and
/// lets the ones in flight finish. Once the port is bound and the services are
/// ready it prints `phivault listening on IP:PORT` on stdout.
pub async fn serve(
    vault: Arc<Vault>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let loopback = options.listen.ip().is_loopback();
    if options.tls.is_none() && !loopback {
        if !options.insecure_plaintext {
            return Err(ServeError::PlaintextRefused(options.listen));
        }
        tracing::warn!(
            listen = %options.listen,
            "DANGER: --insecure-plaintext: API keys and PHI cross the network unencrypted"
        );
    }
    if let Some(http) = options.http_listen
        && options.tls.is_none()
        && !http.ip().is_loopback()
    {
        if !options.insecure_plaintext {
            return Err(ServeError::HttpPlaintextRefused(http));
        }
        tracing::warn!(
            listen = %http,
            "DANGER: --insecure-plaintext: API keys and PHI cross the network unencrypted (HTTP/JSON API)"
        );
    }
    install_tls_provider();
    // Refused before anything is bound: a server that cannot present its
    // certificate must not look started.
    let tls = options
        .tls
        .as_ref()
        .map(tls::Tls::new)
        .transpose()?
        .map(Arc::new);
    // The HTTP/JSON API's listener presents the same certificate, offering
    // HTTP/1.1 by ALPN.
    let http_tls = match (&options.tls, options.http_listen) {
        (Some(files), Some(_)) => Some(Arc::new(tls::Tls::for_alpn(files, b"http/1.1")?)),
        _ => None,
    };
    if let (Some(dir), Some(data_dir)) = (&options.backup_dir, vault.data_dir()) {
        let (dir_owned, data_dir) = (dir.clone(), data_dir.to_path_buf());
        let removed = tokio::task::spawn_blocking(move || {
            crate::maintenance::remove_interrupted_backups(&dir_owned, &data_dir)
        })
        .await
        .unwrap_or(0);
        if removed > 0 {
            tracing::warn!(
                removed,
                dir = %dir.display(),
                "removed the staging directories of backups cut short by a crash"
            );
        }
    }
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| ServeError::Bind(options.listen, e))?;
    let local = listener
        .local_addr()
        .map_err(|e| ServeError::Bind(options.listen, e))?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<TokenizerServer<TokenizerService>>()
        .await;
    health.set_serving::<AdminServer<AdminService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(phivault_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;

    let watch_health = tokio::spawn(watch_write_path(Arc::clone(&vault), health.clone()));

    let max = options.max_message_bytes;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stop.send(true);
    };
    let activity = Arc::new(activity::Activity::default());
    let limiter = Arc::new(limiter::Limiter::new(options.client_limits.clone()));
    let alerts = Arc::new(alerts::Alerts {
        webhook: options
            .alert_webhook
            .clone()
            .map(webhook::Webhook::start)
            .transpose()
            .map_err(|e| ServeError::Webhook(e.to_string()))?,
        ..alerts::Alerts::default()
    });
    let watch = options.detection_window.map(|window| {
        Arc::new(watch::Watch::new(
            Arc::clone(&vault),
            Arc::clone(&alerts),
            window,
        ))
    });
    let items = metrics::Items::default();
    let plane = tokenizer::Plane {
        info: phivault_proto::v1::GetServerInfoResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            apis: vec!["phivault.v1".to_owned()],
            store: if vault.shares_storage() {
                "postgres"
            } else {
                "embedded"
            }
            .to_owned(),
            max_message_bytes: max as u64,
            max_items: u32::try_from(vault.limits().max_items).unwrap_or(u32::MAX),
            max_value_bytes: u32::try_from(vault.limits().max_value_bytes).unwrap_or(u32::MAX),
        },
        items: items.clone(),
        vault: Arc::clone(&vault),
        limiter: Arc::clone(&limiter),
        activity: Arc::clone(&activity),
        alerts: Arc::clone(&alerts),
        break_glass_window: options.break_glass_window,
        watch: watch.clone(),
    };
    let scoring = watch.zip(options.detection_window).map(|(watch, window)| {
        tokio::spawn(async move {
            watch.run(window, std::future::pending()).await;
        })
    });
    // Nodes over one database share what they admitted under each limit.
    let share_limits = vault.shares_storage().then(|| {
        let vault = Arc::clone(&vault);
        tokio::spawn(async move {
            every(limiter::SHARE_EVERY, std::future::pending(), || async {
                if let Err(e) = limiter.share(&vault).await {
                    tracing::warn!(error = %e, "cannot share rate limit figures with the other nodes");
                }
            })
            .await;
        })
    });
    // The HTTP/JSON API stops taking calls when the gRPC port does.
    let http_stopping = stopping.clone();
    let tokenizer = TokenizerServer::new(TokenizerService::new(plane, stopping))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let limits = &options.transport;
    let admin = AdminServer::new(
        AdminService::new(Arc::clone(&vault)).with_backup_dir(options.backup_dir.clone()),
    )
    .max_decoding_message_size(limits.admin_max_message_bytes)
    .max_encoding_message_size(max);

    let metrics = Arc::new(Metrics::new(
        Arc::clone(&vault),
        &alerts,
        &items,
        tls.clone(),
    ));
    // The figures only storage knows are read here, off the scrape path.
    let refresh_metrics = options.metrics_listen.map(|_| {
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            metrics.refresh().await;
            every(metrics::REFRESH_EVERY, std::future::pending(), || {
                metrics.refresh()
            })
            .await;
        })
    });
    let metrics_task = match options.metrics_listen {
        Some(addr) => {
            let (listener, bound) = bind(addr).await?;
            println!("phivault metrics on {bound}");
            Some(tokio::spawn(metrics::serve(listener, Arc::clone(&metrics))))
        }
        None => None,
    };
    let refusals = Arc::new(refusals::Refusals::default());
    let gate = gate::GateLayer {
        vault: Arc::clone(&vault),
        refusals: Arc::clone(&refusals),
        in_progress: Arc::new(tokio::sync::Semaphore::new(limits.max_calls_in_progress)),
    };
    let (summaries_stop, summaries_stopping) = tokio::sync::watch::channel(false);
    let summaries = {
        let vault = Arc::clone(&vault);
        let refusals = Arc::clone(&refusals);
        let (refusal_window, activity_window) = (limits.refusal_window, options.summary_window);
        let stopped = move || {
            let mut stopping = summaries_stopping.clone();
            async move {
                let _ = stopping.wait_for(|stop| *stop).await;
            }
        };
        tokio::spawn(async move {
            tokio::join!(
                refusals.tallies.run(&vault, refusal_window, stopped()),
                activity.tallies.run(&vault, activity_window, stopped()),
            );
        })
    };
    // Outermost first: the call is recorded with the status the client sees.
    let layers = tower::ServiceBuilder::new()
        .layer(metrics::RecordLayer {
            metrics,
            trace_calls: options.trace_calls,
        })
        .map_request(call::tag_method::<tonic::body::Body>)
        .map_response(oversize_is_resource_exhausted::<tonic::body::Body>)
        .layer(gate.clone());
    let http_task = match options.http_listen {
        Some(addr) => {
            let routes = tonic::service::Routes::new(tokenizer.clone())
                .add_service(admin.clone())
                .add_service(
                    health_service
                        .clone()
                        .max_decoding_message_size(PUBLIC_MAX_MESSAGE_BYTES),
                );
            let stack: json_api::GrpcStack = tower::util::BoxCloneSyncService::new(
                tower::ServiceBuilder::new()
                    .map_response(|r: http::Response<_>| r.map(tonic::body::Body::new))
                    .layer(layers.clone())
                    .service(routes),
            );
            let (listener, bound) = bind(addr).await?;
            println!("phivault http on {bound}");
            let router = json_api::router(
                stack,
                gate.clone(),
                limits.max_calls_in_progress,
                (max, limits.admin_max_message_bytes),
                limits.request_timeout,
            );
            let http_limits = json_api::HttpLimits {
                header_read_timeout: limits.handshake_timeout,
                max_header_bytes: limits.max_header_list_bytes as usize,
                drain: limits.request_timeout,
            };
            // Connections are capped and must open in time, as on the gRPC
            // port (each listener has caps of its own).
            let admitted = listener::admitted(
                listener,
                limits.max_connections,
                limits.max_connections_per_peer,
                limits.ipv6_peer_prefix,
                limits.handshake_timeout,
            );
            let stopping = http_stopping;
            Some(match &http_tls {
                Some(http_tls) => {
                    let handshaken =
                        tls::handshaken(admitted, Arc::clone(http_tls), limits.handshake_timeout);
                    let incoming = futures_util::StreamExt::map(handshaken, |r| {
                        r.map(|io| {
                            let peer =
                                tonic::transport::server::Connected::connect_info(io.get_ref().0)
                                    .remote_addr();
                            (io, peer)
                        })
                    });
                    tokio::spawn(json_api::serve(incoming, router, http_limits, stopping))
                }
                None => {
                    let incoming = futures_util::StreamExt::map(admitted, |r| {
                        r.map(|io| {
                            let peer = tonic::transport::server::Connected::connect_info(&io)
                                .remote_addr();
                            (io, peer)
                        })
                    });
                    tokio::spawn(json_api::serve(incoming, router, http_limits, stopping))
                }
            })
        }
        None => None,
    };
    let mut builder = Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_max_pending_accept_reset_streams(Some(limits.max_pending_accept_reset_streams))
        .http2_max_local_error_reset_streams(Some(limits.max_local_error_reset_streams))
        .http2_max_header_list_size(limits.max_header_list_bytes)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .timeout(limits.request_timeout)
        .accept_http1(false)
        .layer(layers);
    // Health and reflection answer without a key: their requests are a
    // service name or a symbol, so a few KiB is plenty, and nobody can make
    // the server buffer megabytes through them.
    let router = builder
        .add_service(health_service.max_decoding_message_size(PUBLIC_MAX_MESSAGE_BYTES))
        .add_service(reflection.max_decoding_message_size(PUBLIC_MAX_MESSAGE_BYTES))
        .add_service(tokenizer)
        .add_service(admin);

    let mode = match &options.tls {
        Some(tls) if tls.client_ca_pem.is_some() => "mTLS",
        Some(_) => "TLS",
        None => "plaintext",
    };
    tracing::info!(%local, mode, "serving");
    // The readiness line that scripts and tests wait for.
    println!("phivault listening on {local}");
    notify_ready();
    let _ = std::io::stdout().flush();

    let incoming = listener::admitted(
        listener,
        limits.max_connections,
        limits.max_connections_per_peer,
        limits.ipv6_peer_prefix,
        limits.handshake_timeout,
    );
    let result = match tls {
        Some(tls) => {
            let reloads = options.tls_reloads.clone().map(|mut updates| {
                let tls = Arc::clone(&tls);
                let http_tls = http_tls.clone();
                tokio::spawn(async move {
                    while updates.changed().await.is_ok() {
                        let next = updates.borrow_and_update().clone();
                        if let Some(http_tls) = &http_tls
                            && let Err(e) = http_tls.replace(&next)
                        {
                            tracing::error!(error = %e, "TLS certificate not reloaded on the HTTP listener; the one in use stays");
                        }
                        match tls.replace(&next) {
                            Ok(()) => tracing::info!(
                                expires_unix = tls.expires(),
                                "TLS certificate reloaded: new connections use it, open ones keep theirs"
                            ),
                            Err(e) => tracing::error!(
                                error = %e,
                                "TLS certificate not reloaded; the one in use stays"
                            ),
                        }
                    }
                })
            });
            let incoming = tls::handshaken(incoming, tls, limits.handshake_timeout);
            let result = router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await;
            if let Some(task) = reloads {
                task.abort();
            }
            result
        }
        None => {
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
    };
    watch_health.abort();
    if let Some(task) = share_limits {
        task.abort();
    }
    if let Some(task) = scoring {
        task.abort();
    }
    health
        .set_not_serving::<TokenizerServer<TokenizerService>>()
        .await;
    if let Some(task) = metrics_task {
        task.abort();
    }
    if let Some(task) = refresh_metrics {
        task.abort();
    }
    // The HTTP API's calls are answered (within the request timeout), then
    // the last window's refusals and activity are written before the vault
    // closes.
    if let Some(task) = http_task {
        let _ = task.await;
    }
    let _ = summaries_stop.send(true);
    let _ = summaries.await;
    tracing::info!("stopped accepting calls; in-flight calls finished");
    Ok(result?)
}
