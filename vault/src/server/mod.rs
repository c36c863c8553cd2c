//! The gRPC server: `phivault.v1.Tokenizer`, `phivault.v1.Admin`, the
//! standard health service and server reflection, over TLS or (on loopback,
//! or when explicitly told so) plaintext.

mod admin;
mod call;
mod convert;
mod metrics;
mod status;
mod tokenizer;

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use phivault_proto::v1::admin_server::AdminServer;
use phivault_proto::v1::tokenizer_server::TokenizerServer;
use tonic::codegen::http;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

pub use admin::AdminService;
pub use metrics::Metrics;
pub use tokenizer::TokenizerService;

use crate::Vault;

/// How the server listens.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to bind; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Certificate and key (and optionally a client CA for mTLS).
    pub tls: Option<TlsOptions>,
    /// Allows plaintext gRPC on a non-loopback address. Dangerous: API keys
    /// and PHI cross the network in clear.
    pub insecure_plaintext: bool,
    /// Largest gRPC message accepted or sent.
    pub max_message_bytes: usize,
    /// Where to serve Prometheus metrics over HTTP (`/metrics`), if at all.
    pub metrics_listen: Option<SocketAddr>,
    /// The directory `Admin.Backup` may write into (`None`: any absolute
    /// path the server can write).
    pub backup_dir: Option<std::path::PathBuf>,
}

/// PEM-encoded TLS material.
#[derive(Clone)]
pub struct TlsOptions {
    /// Server certificate chain.
    pub cert_pem: Vec<u8>,
    /// Server private key.
    pub key_pem: Vec<u8>,
    /// CA that client certificates must chain to; `Some` turns on mTLS.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("mtls", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
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
    /// The address could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// The transport failed (TLS configuration, I/O).
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not be built from the descriptors.
    #[error("server reflection: {0}")]
    Reflection(String),
}

/// gRPC's other implementations answer a message over the size limit with
/// `RESOURCE_EXHAUSTED`; tonic's codec says `OUT_OF_RANGE`. Clients and
/// operators should see one status for one cause, so the codec's answer is
/// rewritten (it is a trailers-only response: the status is in the headers,
/// the message percent-encoded).
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

    let max = options.max_message_bytes;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stop.send(true);
    };
    let tokenizer = TokenizerServer::new(TokenizerService::new(Arc::clone(&vault), stopping))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let admin = AdminServer::new(
        AdminService::new(Arc::clone(&vault)).with_backup_dir(options.backup_dir.clone()),
    )
    .max_decoding_message_size(max)
    .max_encoding_message_size(max);

    let metrics = Arc::new(Metrics::new(Arc::clone(&vault)));
    let metrics_task = match options.metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| ServeError::Bind(addr, e))?;
            let bound = listener
                .local_addr()
                .map_err(|e| ServeError::Bind(addr, e))?;
            println!("phivault metrics on {bound}");
            Some(tokio::spawn(metrics::serve(listener, Arc::clone(&metrics))))
        }
        None => None,
    };
    // Outermost first: the call is recorded with the status the client sees.
    let layers = tower::ServiceBuilder::new()
        .layer(metrics::RecordLayer(metrics))
        .map_request(call::tag_method::<tonic::body::Body>)
        .map_response(oversize_is_resource_exhausted::<tonic::body::Body>);
    let mut builder = Server::builder().layer(layers);
    if let Some(tls) = &options.tls {
        let mut config =
            ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem));
        if let Some(ca) = &tls.client_ca_pem {
            config = config.client_ca_root(Certificate::from_pem(ca));
        }
        builder = builder.tls_config(config)?;
    }
    let router = builder
        .add_service(health_service)
        .add_service(reflection)
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
    let _ = std::io::stdout().flush();

    let result = router
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await;
    health
        .set_not_serving::<TokenizerServer<TokenizerService>>()
        .await;
    if let Some(task) = metrics_task {
        task.abort();
    }
    tracing::info!("stopped accepting calls; in-flight calls finished");
    Ok(result?)
}
