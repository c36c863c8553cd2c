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

use std::net::IpAddr;
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
pub mod output;

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
    insecure_plaintext: bool,
}

impl ClientOptions {
    /// `http://host:port` for plaintext (loopback), `https://host:port` for
    /// TLS. An `http://` endpoint whose host is not loopback is refused
    /// unless [`ClientOptions::insecure_plaintext`] is set.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            api_key: None,
            ca_pem: None,
            identity_pem: None,
            domain: None,
            insecure_plaintext: false,
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

    /// DANGEROUS: allows plaintext (`http://`) to a host that is not
    /// loopback, so that the API key, every value and every token cross the
    /// network readable by anyone on the path. Only for a network protected
    /// otherwise (a service mesh's mTLS sidecar, say). Without it,
    /// [`Client::connect`] refuses such an endpoint before connecting. A
    /// program that sets it should say so loudly: [`ClientOptions::transport`]
    /// answers [`Transport::InsecurePlaintext`] when it is in use.
    pub fn insecure_plaintext(mut self, allow: bool) -> Self {
        self.insecure_plaintext = allow;
        self
    }

    /// How [`Client::connect`] would reach the endpoint, decided without
    /// connecting: the refusal of plaintext off loopback comes from here.
    pub fn transport(&self) -> Result<Transport, ClientError> {
        let endpoint = Endpoint::from_shared(self.endpoint.clone())?;
        self.transport_of(&endpoint)
    }

    fn transport_of(&self, endpoint: &Endpoint) -> Result<Transport, ClientError> {
        // tonic takes an endpoint spelled `unix:…` as the path of a Unix
        // domain socket (the same test as `Endpoint::from_shared`): the
        // traffic never leaves the machine.
        if self.endpoint.starts_with("unix:") {
            return Ok(Transport::LocalPlaintext);
        }
        let uri = endpoint.uri();
        // The parsed scheme, not the string's prefix: `HTTPS://` is TLS too,
        // and tonic's connector decides on this same value.
        if uri.scheme_str() == Some("https") {
            return Ok(Transport::Tls);
        }
        let host = uri.host().unwrap_or_default();
        if is_loopback_host(host) {
            Ok(Transport::LocalPlaintext)
        } else if self.insecure_plaintext {
            Ok(Transport::InsecurePlaintext)
        } else if host.is_empty() {
            Err(ClientError::PlaintextRefused("(no host)".to_owned()))
        } else {
            // The host only: the endpoint may carry user information
            // (`http://user:secret@host`), which must not reach an error.
            Err(ClientError::PlaintextRefused(host.to_owned()))
        }
    }
}

/// How a connection reaches the vault, as [`ClientOptions::transport`]
/// decides before anything is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transport {
    /// TLS (`https://`).
    Tls,
    /// Plaintext that never leaves the machine: `localhost`, an address in
    /// 127.0.0.0/8 or `::1`, or a Unix domain socket (`unix:PATH`).
    LocalPlaintext,
    /// Plaintext over the network, allowed by
    /// [`ClientOptions::insecure_plaintext`]: the API key, values and tokens
    /// cross it readable.
    InsecurePlaintext,
}

/// Whether plaintext to `host`, as a URI spells it (IPv6 in brackets),
/// stays on this machine: `localhost`, 127.0.0.0/8 or `::1` (also written
/// as the IPv4-mapped `::ffff:127.x.y.z`).
///
/// Nothing else counts, not even names that usually resolve to loopback:
/// the check runs on the text, before any lookup, so that it cannot be
/// steered by DNS. `0.0.0.0` is not loopback either (Linux happens to route
/// it to the local host, other systems do not).
fn is_loopback_host(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
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
    /// A plaintext endpoint whose host (named) is not loopback, without
    /// [`ClientOptions::insecure_plaintext`]. Nothing was sent.
    #[error(
        "refusing plaintext to {0}, which is not a loopback address: the API key, values and tokens would cross the network unencrypted; use an https:// endpoint, or pass --insecure-plaintext (ClientOptions::insecure_plaintext) if the network is protected otherwise"
    )]
    PlaintextRefused(String),
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

impl Auth {
    /// The header for `key`, or none without a key.
    fn bearer(key: Option<&str>) -> Result<Self, ClientError> {
        let Some(key) = key else {
            return Ok(Self(None));
        };
        let header = Zeroizing::new(format!("Bearer {key}"));
        let mut value = header
            .as_str()
            .parse::<MetadataValue<Ascii>>()
            .map_err(|_| ClientError::BadKey)?;
        // Sensitive: its `Debug` prints `Sensitive` instead of the key, so
        // no debug log of the request's metadata or headers shows it; and h2
        // sends it as a never-indexed HPACK literal, kept out of the
        // compression table that compression side channels (CRIME-style)
        // probe.
        value.set_sensitive(true);
        Ok(Self(Some(value)))
    }
}

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
    /// Connects to the vault. A plaintext endpoint off loopback is refused
    /// first, before anything is sent, unless
    /// [`ClientOptions::insecure_plaintext`] is set.
    pub async fn connect(options: ClientOptions) -> Result<Self, ClientError> {
        let endpoint = Endpoint::from_shared(options.endpoint.clone())?;
        let transport = options.transport_of(&endpoint)?;
        let auth = Auth::bearer(options.api_key.as_deref().map(String::as_str))?;
        let mut endpoint = endpoint
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true);
        if transport == Transport::Tls {
            // aws-lc-rs offers the hybrid post-quantum key exchange
            // X25519MLKEM768 first; a provider the embedding program
            // installed already is kept.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn transport(endpoint: &str, insecure_plaintext: bool) -> Result<Transport, ClientError> {
        ClientOptions::new(endpoint)
            .insecure_plaintext(insecure_plaintext)
            .transport()
    }

    #[test]
    fn plaintext_to_loopback_is_allowed() {
        for endpoint in [
            "http://127.0.0.1:50051",
            "http://127.8.9.10:1",
            "http://[::1]:50051",
            "http://[::ffff:127.0.0.1]:50051",
            "http://localhost:50051",
            "http://LocalHost:50051",
            "unix:/run/phivault/grpc.sock",
        ] {
            assert_eq!(
                transport(endpoint, false).expect(endpoint),
                Transport::LocalPlaintext,
                "{endpoint}"
            );
        }
    }

    #[test]
    fn plaintext_off_loopback_is_refused_naming_the_host() {
        for (endpoint, host) in [
            ("http://10.0.0.1:50051", "10.0.0.1"),
            ("http://vault.example.org:50051", "vault.example.org"),
            (
                "http://localhost.example.org:50051",
                "localhost.example.org",
            ),
            ("http://[2001:db8::1]:50051", "[2001:db8::1]"),
            ("http://[::ffff:10.0.0.1]:50051", "[::ffff:10.0.0.1]"),
            ("http://0.0.0.0:50051", "0.0.0.0"),
            ("HTTP://10.0.0.1:50051", "10.0.0.1"),
            ("http://etl:hunter2-secret@10.0.0.1:50051", "10.0.0.1"),
        ] {
            let error = transport(endpoint, false).expect_err(endpoint);
            assert!(
                matches!(&error, ClientError::PlaintextRefused(h) if h == host),
                "{endpoint}: {error}"
            );
            let message = error.to_string();
            assert!(
                message.contains(host)
                    && message.contains("https://")
                    && message.contains("--insecure-plaintext"),
                "{message}"
            );
            assert!(!message.contains("hunter2"), "user information leaked");
        }
    }

    #[test]
    fn plaintext_off_loopback_is_allowed_when_asked_for() {
        for endpoint in ["http://10.0.0.1:50051", "http://vault.example.org:50051"] {
            assert_eq!(
                transport(endpoint, true).expect(endpoint),
                Transport::InsecurePlaintext
            );
        }
        // The flag does not make loopback look dangerous.
        assert_eq!(
            transport("http://127.0.0.1:50051", true).expect("loopback"),
            Transport::LocalPlaintext
        );
    }

    #[test]
    fn https_is_always_allowed() {
        for endpoint in [
            "https://10.0.0.1:50051",
            "https://vault.example.org",
            "https://127.0.0.1:50051",
            "HTTPS://vault.example.org:443",
        ] {
            for insecure_plaintext in [false, true] {
                assert_eq!(
                    transport(endpoint, insecure_plaintext).expect(endpoint),
                    Transport::Tls,
                    "{endpoint}"
                );
            }
        }
    }

    #[tokio::test]
    async fn connect_refuses_before_connecting() {
        // Port 1 of a private address: were a connection attempted, it would
        // end in a `Connect` error (or the 10-second timeout), not this.
        let started = std::time::Instant::now();
        let refused = Client::connect(
            ClientOptions::new("http://10.1.2.3:1").api_key("pv_0123456789abcdef_not-a-secret"),
        )
        .await
        .err()
        .expect("refused");
        assert!(
            matches!(&refused, ClientError::PlaintextRefused(host) if host == "10.1.2.3"),
            "{refused}"
        );
        assert!(!refused.to_string().contains("not-a-secret"));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn the_authorization_value_is_sensitive() {
        let mut auth = Auth::bearer(Some("pv_0123456789abcdef_canarysecret")).expect("ASCII key");
        let request = auth.call(Request::new(())).expect("intercepted");
        let value = request
            .metadata()
            .get("authorization")
            .expect("authorization set");
        assert!(value.is_sensitive());
        let printed = format!("{:?} {value:?}", request.metadata());
        assert!(!printed.contains("canarysecret"), "{printed}");
        assert!(printed.contains("Sensitive"), "{printed}");
    }

    #[test]
    fn no_key_sends_no_authorization() {
        let mut auth = Auth::bearer(None).expect("no key");
        let request = auth.call(Request::new(())).expect("intercepted");
        assert!(request.metadata().get("authorization").is_none());
    }
}
