//! Client library for the phivault gRPC service, and the `phivault-client`
//! command-line tool.
//!
//! It depends on `phivault-proto` only, never on the server crate, so a
//! pipeline builds it without compiling RocksDB.
//!
//! ```no_run
//! # async fn demo() -> Result<(), phivault_client::ClientError> {
//! use phivault_client::{Client, ClientOptions};
//! let client = Client::connect(ClientOptions::new("http://127.0.0.1:50051").api_key("pv_…")).await?;
//! let tokens = client.tokenize("ssn", vec!["123-45-6789".into()]).await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use futures_util::{Stream, StreamExt, TryStreamExt, stream};
use phivault_proto::v1 as pb;
use phivault_proto::v1::admin_client::AdminClient;
use phivault_proto::v1::tokenizer_client::TokenizerClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};
use zeroize::Zeroizing;

pub use phivault_proto::v1;

pub mod bulk;

/// Attempts of an idempotent call (tokenize) while the server answers
/// `UNAVAILABLE`.
const RETRIES: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// How to reach and authenticate to a vault.
#[derive(Clone)]
pub struct ClientOptions {
    endpoint: String,
    api_key: Option<Zeroizing<String>>,
    ca_pem: Option<Vec<u8>>,
    identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    domain: Option<String>,
}

impl ClientOptions {
    /// `http://host:port` for plaintext (loopback), `https://host:port` for
    /// TLS.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            api_key: None,
            ca_pem: None,
            identity_pem: None,
            domain: None,
        }
    }

    /// The API key, `pv_<id>_<secret>`.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(Zeroizing::new(key.into().trim().to_owned()));
        self
    }

    /// Trust this PEM CA bundle instead of the system roots.
    pub fn ca_pem(mut self, pem: Vec<u8>) -> Self {
        self.ca_pem = Some(pem);
        self
    }

    /// Present this client certificate and key (mTLS).
    pub fn identity_pem(mut self, cert: Vec<u8>, key: Vec<u8>) -> Self {
        self.identity_pem = Some((cert, key));
        self
    }

    /// The name to verify the server certificate against, when it differs
    /// from the endpoint's host.
    pub fn domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }
}

/// Client failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The endpoint or TLS settings are unusable, or the connection failed.
    #[error("cannot connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The API key cannot be sent as metadata.
    #[error("the API key holds characters that cannot be sent")]
    BadKey,
    /// The server refused or failed the call.
    #[error("{:?}: {}", .0.code(), .0.message())]
    Status(Status),
}

// Not `#[from]`: that would also make the status the error's source, and
// error reports would print its code and message twice.
impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        Self::Status(status)
    }
}

/// Adds `authorization: Bearer <key>` to every call.
#[derive(Clone)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

type Svc = InterceptedService<Channel, Auth>;

/// One item's outcome: a token or value, or the server's item error.
pub type ItemResult = Result<String, pb::ItemError>;

/// The answers of a streaming call: one entry per batch sent, in order; a
/// call-level failure (the server going away, say) ends it with an error.
pub type BatchResults =
    std::pin::Pin<Box<dyn Stream<Item = Result<Vec<ItemResult>, ClientError>> + Send>>;

/// Values (or tokens) of one namespace, sent as one stream message.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The namespace every item belongs to.
    pub namespace: String,
    /// The values to tokenize, or the tokens to reveal.
    pub items: Vec<String>,
}

/// A connection to a vault. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Client {
    tokenizer: TokenizerClient<Svc>,
    admin: AdminClient<Svc>,
    channel: Channel,
}

impl Client {
    /// Connects to the vault.
    pub async fn connect(options: ClientOptions) -> Result<Self, ClientError> {
        let mut endpoint = Endpoint::from_shared(options.endpoint.clone())?
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true);
        if options.endpoint.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            tls = match &options.ca_pem {
                Some(ca) => tls.ca_certificate(Certificate::from_pem(ca)),
                None => tls.with_native_roots(),
            };
            if let Some((cert, key)) = &options.identity_pem {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            if let Some(domain) = &options.domain {
                tls = tls.domain_name(domain.clone());
            }
            endpoint = endpoint.tls_config(tls)?;
        }
        let channel = endpoint.connect().await?;
        let header = options
            .api_key
            .as_ref()
            .map(|key| format!("Bearer {}", key.as_str()).parse::<MetadataValue<Ascii>>())
            .transpose()
            .map_err(|_| ClientError::BadKey)?;
        let auth = Auth(header);
        let max = 64 << 20;
        Ok(Self {
            tokenizer: TokenizerClient::with_interceptor(channel.clone(), auth.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            admin: AdminClient::with_interceptor(channel.clone(), auth),
            channel,
        })
    }

    /// Tokenizes `values` in `namespace`, retrying with backoff while the
    /// server is `UNAVAILABLE` (tokenize is idempotent).
    pub async fn tokenize(
        &self,
        namespace: &str,
        values: Vec<String>,
    ) -> Result<Vec<ItemResult>, ClientError> {
        let request = pb::TokenizeRequest {
            namespace: namespace.to_owned(),
            values,
        };
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 0;
        loop {
            match self.tokenizer.clone().tokenize(request.clone()).await {
                Ok(response) => return Ok(results(response.into_inner().results)),
                Err(status) if status.code() == Code::Unavailable && attempt < RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                Err(status) => return Err(status.into()),
            }
        }
    }

    /// Reveals `tokens` of `namespace`, masked (all but the last 4
    /// characters) when `masked` is set. Not retried: a reveal is audited.
    pub async fn detokenize(
        &self,
        namespace: &str,
        tokens: Vec<String>,
        masked: bool,
    ) -> Result<Vec<ItemResult>, ClientError> {
        let request = pb::DetokenizeRequest {
            namespace: namespace.to_owned(),
            tokens,
            masked,
        };
        let response = self.tokenizer.clone().detokenize(request).await?;
        Ok(results(response.into_inner().results))
    }

    /// Tokenizes a stream of batches of `namespace` over one
    /// `TokenizeStream` call with up to `in_flight` batches outstanding;
    /// results come back per batch, in order.
    pub async fn tokenize_stream<S>(
        &self,
        namespace: &str,
        batches: S,
        in_flight: usize,
    ) -> Result<BatchResults, ClientError>
    where
        S: Stream<Item = Vec<String>> + Send + 'static,
    {
        self.tokenize_batches(of_namespace(namespace, batches), in_flight)
            .await
    }

    /// Reveals a stream of token batches of `namespace` over one
    /// `DetokenizeStream` call with up to `in_flight` batches outstanding;
    /// results come back per batch, in order. Every batch is audited on its
    /// own.
    pub async fn detokenize_stream<S>(
        &self,
        namespace: &str,
        batches: S,
        masked: bool,
        in_flight: usize,
    ) -> Result<BatchResults, ClientError>
    where
        S: Stream<Item = Vec<String>> + Send + 'static,
    {
        self.detokenize_batches(of_namespace(namespace, batches), masked, in_flight)
            .await
    }

    /// Tokenizes batches of any namespaces over one `TokenizeStream` call,
    /// up to `in_flight` outstanding; one result per batch, in order.
    pub async fn tokenize_batches<S>(
        &self,
        batches: S,
        in_flight: usize,
    ) -> Result<BatchResults, ClientError>
    where
        S: Stream<Item = Batch> + Send + 'static,
    {
        let requests = batches.map(|batch| pb::TokenizeRequest {
            namespace: batch.namespace,
            values: batch.items,
        });
        let outbound = outbound(requests, in_flight);
        let response = self.tokenizer.clone().tokenize_stream(outbound).await?;
        Ok(Box::pin(
            response
                .into_inner()
                .map_err(ClientError::from)
                .map_ok(|r| results(r.results)),
        ))
    }

    /// Reveals batches of tokens of any namespaces over one
    /// `DetokenizeStream` call, up to `in_flight` outstanding; one result
    /// per batch, in order. Every batch is audited on its own.
    pub async fn detokenize_batches<S>(
        &self,
        batches: S,
        masked: bool,
        in_flight: usize,
    ) -> Result<BatchResults, ClientError>
    where
        S: Stream<Item = Batch> + Send + 'static,
    {
        let requests = batches.map(move |batch| pb::DetokenizeRequest {
            namespace: batch.namespace,
            tokens: batch.items,
            masked,
        });
        let outbound = outbound(requests, in_flight);
        let response = self.tokenizer.clone().detokenize_stream(outbound).await?;
        Ok(Box::pin(
            response
                .into_inner()
                .map_err(ClientError::from)
                .map_ok(|r| results(r.results)),
        ))
    }

    /// Creates a namespace.
    pub async fn create_namespace(
        &self,
        request: pb::CreateNamespaceRequest,
    ) -> Result<pb::Namespace, ClientError> {
        Ok(self
            .admin
            .clone()
            .create_namespace(request)
            .await?
            .into_inner())
    }

    /// Every namespace.
    pub async fn list_namespaces(&self) -> Result<Vec<pb::Namespace>, ClientError> {
        Ok(self
            .admin
            .clone()
            .list_namespaces(pb::ListNamespacesRequest {})
            .await?
            .into_inner()
            .namespaces)
    }

    /// Creates a client; the response holds its API key, shown once.
    pub async fn create_client(
        &self,
        name: &str,
        scopes: Vec<String>,
    ) -> Result<pb::CreateClientResponse, ClientError> {
        let request = pb::CreateClientRequest {
            name: name.to_owned(),
            scopes,
        };
        Ok(self
            .admin
            .clone()
            .create_client(request)
            .await?
            .into_inner())
    }

    /// Every client.
    pub async fn list_clients(&self) -> Result<Vec<pb::Client>, ClientError> {
        Ok(self
            .admin
            .clone()
            .list_clients(pb::ListClientsRequest {})
            .await?
            .into_inner()
            .clients)
    }

    /// Revokes a client.
    pub async fn revoke_client(&self, client_id: &str) -> Result<pb::Client, ClientError> {
        let request = pb::RevokeClientRequest {
            client_id: client_id.to_owned(),
        };
        Ok(self
            .admin
            .clone()
            .revoke_client(request)
            .await?
            .into_inner())
    }

    /// Starts a key rotation; returns the version now active.
    pub async fn rotate_keys(&self) -> Result<u32, ClientError> {
        Ok(self
            .admin
            .clone()
            .rotate_keys(pb::RotateKeysRequest {})
            .await?
            .into_inner()
            .new_version)
    }

    /// Key versions and rotation progress.
    pub async fn key_status(&self) -> Result<pb::KeyStatus, ClientError> {
        Ok(self
            .admin
            .clone()
            .get_key_status(pb::GetKeyStatusRequest {})
            .await?
            .into_inner())
    }

    /// Has the server write a consistent checkpoint to `path` (on the
    /// server's file system).
    pub async fn backup(&self, path: &str) -> Result<pb::BackupResponse, ClientError> {
        let request = pb::BackupRequest {
            path: path.to_owned(),
        };
        Ok(self.admin.clone().backup(request).await?.into_inner())
    }

    /// Walks the server's audit hash chain.
    pub async fn verify_audit(&self) -> Result<pb::VerifyAuditResponse, ClientError> {
        Ok(self
            .admin
            .clone()
            .verify_audit(pb::VerifyAuditRequest {})
            .await?
            .into_inner())
    }

    /// Every call that revealed `token` in `namespace` (in full or masked),
    /// oldest first, fetched page by page. Needs the `audit` or `admin`
    /// scope.
    pub async fn list_disclosures(
        &self,
        namespace: &str,
        token: &str,
    ) -> Result<Vec<pb::Disclosure>, ClientError> {
        let mut all = Vec::new();
        let mut after_seq = 0;
        loop {
            let request = pb::ListDisclosuresRequest {
                namespace: namespace.to_owned(),
                token: token.to_owned(),
                after_seq,
                limit: 0,
            };
            let page = self
                .admin
                .clone()
                .list_disclosures(request)
                .await?
                .into_inner();
            all.extend(page.disclosures);
            if page.next_after_seq == 0 {
                return Ok(all);
            }
            after_seq = page.next_after_seq;
        }
    }

    /// The audit records from `since_ms` (milliseconds since the Unix
    /// epoch; 0: from the first) up to the head as it is when the call
    /// starts, oldest first. Needs the `audit` or `admin` scope.
    pub async fn export_audit(
        &self,
        since_ms: u64,
    ) -> Result<impl Stream<Item = Result<pb::AuditRecord, ClientError>> + use<>, ClientError> {
        let request = pb::ExportAuditRequest {
            since_ms,
            after_seq: 0,
        };
        let response = self.admin.clone().export_audit(request).await?;
        Ok(response.into_inner().map_err(ClientError::from))
    }

    /// The standard gRPC health check of the whole server (`""`).
    pub async fn health(&self) -> Result<bool, ClientError> {
        use tonic_health::pb::health_check_response::ServingStatus;
        let mut health = tonic_health::pb::health_client::HealthClient::new(self.channel.clone());
        let response = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await?;
        Ok(response.into_inner().status() == ServingStatus::Serving)
    }
}

/// Batches of one namespace's items as [`Batch`]es.
fn of_namespace<S>(namespace: &str, batches: S) -> impl Stream<Item = Batch> + Send + use<S>
where
    S: Stream<Item = Vec<String>> + Send,
{
    let namespace = namespace.to_owned();
    batches.map(move |items| Batch {
        namespace: namespace.clone(),
        items,
    })
}

/// The request side of a bidirectional stream: `requests` fed through a
/// channel of `in_flight` slots, so that at most that many batches are
/// produced ahead of what the transport has taken (HTTP/2 flow control does
/// the rest) and memory stays bounded.
fn outbound<R: Send + 'static>(
    requests: impl Stream<Item = R> + Send + 'static,
    in_flight: usize,
) -> impl Stream<Item = R> {
    let (sender, receiver) = tokio::sync::mpsc::channel(in_flight.max(1));
    tokio::spawn(async move {
        let mut requests = Box::pin(requests);
        while let Some(request) = requests.next().await {
            if sender.send(request).await.is_err() {
                break;
            }
        }
    });
    stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|request| (request, receiver))
    })
}

/// The name of a `google.rpc.Code` (`INVALID_ARGUMENT`), as the errors file
/// and reports spell it.
pub fn code_name(code: i32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or("UNKNOWN")
}

fn results(results: Vec<pb::ItemResult>) -> Vec<ItemResult> {
    results
        .into_iter()
        .map(|r| match r.outcome {
            Some(pb::item_result::Outcome::Text(text)) => Ok(text),
            Some(pb::item_result::Outcome::Error(e)) => Err(e),
            None => Err(pb::ItemError {
                code: Code::Internal as i32,
                message: "empty item result".into(),
            }),
        })
        .collect()
}
