//! Client library for the phivault gRPC service, and the `phivault-client`
//! command-line tool.
//!
//! It depends on `phivault-proto` only, never on the server crate, so a
//! pipeline builds it without compiling RocksDB.
//!
//! A vault may run as several stateless nodes over one database, any of
//! which can serve any call: give them all, separated by commas, and the
//! client uses one at a time, moving on to the next when it goes away (see
//! [`Client::connect`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), phivault_client::ClientError> {
//! use phivault_client::{Client, ClientOptions};
//! let options = ClientOptions::new("http://127.0.0.1:50051,http://127.0.0.1:50052");
//! let client = Client::connect(options.api_key("pv_…")).await?;
//! let tokens = client.tokenize("ssn", vec!["123-45-6789".into()]).await?;
//! # Ok(()) }
//! ```

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{Stream, StreamExt, TryStreamExt, stream};
pub use phivault_proto::code_name;
use phivault_proto::v1 as pb;
use phivault_proto::v1::admin_client::AdminClient;
use phivault_proto::v1::tokenizer_client::TokenizerClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Response, Status};
use zeroize::Zeroizing;

pub use phivault_proto::v1;

pub mod bulk;
pub mod output;

/// Attempts after the first of a call that may be sent again (see
/// [`Retry`]): at least this many, and at least one on every other endpoint.
/// With one endpoint, 5 more attempts, 0.1 to 1.6 s apart, ride out a
/// restart.
const RETRIES: usize = 5;
/// The wait before going round the endpoints again, doubled each round.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long a call may take unless [`ClientOptions::deadline`] says
/// otherwise: far above a healthy call (milliseconds), far below a stuck
/// one.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);
/// The least deadline of the calls in [`LONG`].
const LONG_DEADLINE: Duration = Duration::from_secs(600);
/// Calls with no deadline: streams, which last as long as their input or
/// the trail (a stalled one is found by HTTP/2 keepalive, and a bulk run
/// has its own `retry_for`), and the walk of the whole audit trail, which
/// grows with every reveal ever made.
const STREAMING: [&str; 4] = [
    "TokenizeStream",
    "DetokenizeStream",
    "ExportAudit",
    "VerifyAudit",
];
/// Calls that copy the vault, or whose answer is shown once and lost if the
/// call is cut after its commit (a new client's key): ten minutes at least.
const LONG: [&str; 4] = ["Backup", "CreateClient", "RotateClientKey", "RotateKeys"];
/// How long one endpoint may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings on a connection with calls under way, so that a node whose
/// host vanished is found within a minute rather than by TCP, hours later;
/// a stream has no deadline to find it by.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// How to reach and authenticate to a vault.
#[derive(Clone)]
pub struct ClientOptions {
    /// As given, trimmed; checked by [`ClientOptions::transport`] and
    /// [`Client::connect`], not before, so that building options never
    /// fails.
    endpoints: Vec<String>,
    api_key: Option<Zeroizing<String>>,
    ca_pem: Option<Vec<u8>>,
    identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    domain: Option<String>,
    insecure_plaintext: bool,
    purpose: Purpose,
    deadline: Option<Duration>,
}

/// Why a reveal is made: an HL7 PurposeOfUse code (`TREAT`, `HPAYMT`,
/// `HOPERAT`, `ETREAT` to break the glass…) and a reason in words (up to
/// 200 characters, never PHI: it is recorded as given). Recorded with the
/// reveal and shown by disclosures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Purpose {
    /// The PurposeOfUse code; empty for none.
    pub code: String,
    /// The reason in words; empty for none.
    pub reason: String,
}

impl Purpose {
    /// `code` with `reason`.
    pub fn new(code: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            reason: reason.into(),
        }
    }
}

impl ClientOptions {
    /// `http://host:port` for plaintext (loopback), `https://host:port` for
    /// TLS, `unix:PATH` for a Unix domain socket. An `http://` endpoint whose
    /// host is not loopback is refused unless
    /// [`ClientOptions::insecure_plaintext`] is set.
    ///
    /// Several endpoints, separated by commas
    /// (`https://a:50051,https://b:50051`), are nodes of one vault: any of
    /// them can serve any call, and the client moves from one to the next
    /// when one goes away. Every endpoint passes the same checks; an empty
    /// one (two commas in a row, or one at an end) is an error rather than
    /// skipped, since it is most likely a typing slip.
    pub fn new(endpoints: impl Into<String>) -> Self {
        Self {
            endpoints: endpoints
                .into()
                .split(',')
                .map(|endpoint| endpoint.trim().to_owned())
                .collect(),
            api_key: None,
            ca_pem: None,
            identity_pem: None,
            domain: None,
            insecure_plaintext: false,
            purpose: Purpose::default(),
            deadline: Some(DEFAULT_DEADLINE),
        }
    }

    /// Adds one more endpoint, after those given so far, taken whole: a
    /// comma in it does not separate (a socket path may hold one). The
    /// same checks apply to it as to the others.
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoints.push(endpoint.into().trim().to_owned());
        self
    }

    /// How long each call may take ([`DEFAULT_DEADLINE`] unless set;
    /// `None`: no deadline). Sent as `grpc-timeout`, so the server stops
    /// working on a call nobody waits for, and enforced here too. Streams
    /// and trail verification have none; backups, key rotation and the
    /// calls that hand out a new API key get at least ten minutes.
    pub fn deadline(mut self, deadline: Option<Duration>) -> Self {
        self.deadline = deadline;
        self
    }

    /// The purpose of use every reveal of this client states, unless a
    /// call gives its own ([`Client::detokenize_for`]).
    pub fn purpose(mut self, purpose: Purpose) -> Self {
        self.purpose = purpose;
        self
    }

    /// The API key, `pv_<id>_<secret>`.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(Zeroizing::new(key.into().trim().to_owned()));
        self
    }

    /// Trust this PEM CA bundle instead of the system roots (for every
    /// `https://` endpoint).
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
    /// from the endpoint's host. With several endpoints it applies to each:
    /// nodes behind one certificate name.
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

    /// How [`Client::connect`] would reach the endpoints, decided without
    /// connecting: the refusal of plaintext off loopback, and of an endpoint
    /// that is not one, comes from here. With several endpoints, the least
    /// protected of their transports: a warning about plaintext must not
    /// depend on which node happens to answer.
    pub fn transport(&self) -> Result<Transport, ClientError> {
        // `check` refuses an empty list: the fallback is never taken.
        Ok(self
            .check()?
            .iter()
            .map(|checked| checked.transport)
            .max_by_key(|transport| transport.exposure())
            .unwrap_or(Transport::Tls))
    }

    /// Every endpoint parsed and checked, in order; the first that fails
    /// is the error, named by its position (its text may carry user
    /// information, `http://user:secret@host`, which must not reach an
    /// error) or, when plaintext is refused, by its host.
    fn check(&self) -> Result<Vec<Checked>, ClientError> {
        if self.endpoints.is_empty() {
            return Err(ClientError::InvalidEndpoint {
                position: 1,
                problem: "is missing",
            });
        }
        let mut checked = Vec::with_capacity(self.endpoints.len());
        for (index, text) in self.endpoints.iter().enumerate() {
            let position = index + 1;
            if text.is_empty() {
                return Err(ClientError::InvalidEndpoint {
                    position,
                    problem: "is empty (two commas in a row, or one at an end?)",
                });
            }
            let endpoint =
                Endpoint::from_shared(text.clone()).map_err(|_| ClientError::InvalidEndpoint {
                    position,
                    problem: "is not an address (http://host:port, https://host:port or unix:PATH)",
                })?;
            let transport = self.transport_of(text, position, &endpoint)?;
            checked.push(Checked {
                name: endpoint_name(text, &endpoint),
                endpoint,
                transport,
            });
        }
        Ok(checked)
    }

    fn transport_of(
        &self,
        text: &str,
        position: usize,
        endpoint: &Endpoint,
    ) -> Result<Transport, ClientError> {
        // tonic takes an endpoint spelled `unix:…` as the path of a Unix
        // domain socket (the same test as `Endpoint::from_shared`): the
        // traffic never leaves the machine.
        if text.starts_with("unix:") {
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
            Err(ClientError::PlaintextRefused(format!(
                "(no host in endpoint {position})"
            )))
        } else {
            // The host only: the endpoint may carry user information
            // (`http://user:secret@host`), which must not reach an error.
            Err(ClientError::PlaintextRefused(host.to_owned()))
        }
    }

    /// The TLS settings every `https://` endpoint gets.
    fn tls_config(&self) -> ClientTlsConfig {
        // aws-lc-rs offers the hybrid post-quantum key exchange
        // X25519MLKEM768 first; a provider the embedding program installed
        // already is kept.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut tls = ClientTlsConfig::new();
        tls = match &self.ca_pem {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(ca)),
            None => tls.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity_pem {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        if let Some(domain) = &self.domain {
            tls = tls.domain_name(domain.clone());
        }
        tls
    }
}

/// An endpoint that passed [`ClientOptions::check`].
struct Checked {
    endpoint: Endpoint,
    transport: Transport,
    /// As errors name it: [`endpoint_name`].
    name: String,
}

/// How an endpoint is named in errors and by [`Client::endpoint`]:
/// `scheme://host:port`, without the user information a URI may carry
/// (`http://user:secret@host`), its path or its query; a Unix domain socket
/// as `unix:PATH`.
fn endpoint_name(text: &str, endpoint: &Endpoint) -> String {
    if text.starts_with("unix:") {
        return text.to_owned();
    }
    let uri = endpoint.uri();
    let mut name = match uri.scheme_str() {
        Some(scheme) => format!("{scheme}://"),
        None => String::new(),
    };
    name.push_str(uri.host().unwrap_or("(no host)"));
    if let Some(port) = uri.port_u16() {
        name.push_str(&format!(":{port}"));
    }
    name
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

impl Transport {
    /// How much of a call others can read: what the least protected of
    /// several endpoints is chosen by.
    fn exposure(self) -> u8 {
        match self {
            Self::Tls => 0,
            Self::LocalPlaintext => 1,
            Self::InsecurePlaintext => 2,
        }
    }
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
    /// The TLS settings are unusable.
    #[error("cannot connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// An endpoint of the list, counted from 1, is empty or not an address.
    /// Its text is not repeated: it may carry user information.
    #[error("endpoint {position} {problem}")]
    InvalidEndpoint {
        /// Where it is in the list, from 1.
        position: usize,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// No endpoint answered [`Client::connect`]: each, in the order tried,
    /// with why.
    #[error("cannot connect {}", failures_text(.0))]
    Unreachable(Vec<EndpointFailure>),
    /// The API key cannot be sent as metadata.
    #[error("the API key holds characters that cannot be sent")]
    BadKey,
    /// A plaintext endpoint whose host (named) is not loopback, without
    /// [`ClientOptions::insecure_plaintext`]. Nothing was sent, to it or to
    /// any other endpoint.
    #[error(
        "refusing plaintext to {0}, which is not a loopback address: the API key, values and tokens would cross the network unencrypted; use an https:// endpoint, or pass --insecure-plaintext (ClientOptions::insecure_plaintext) if the network is protected otherwise"
    )]
    PlaintextRefused(String),
    /// The server refused or failed the call.
    #[error("{}: {}", code_name(.0.code() as i32), .0.message())]
    Status(Status),
}

impl ClientError {
    /// How long the server asked the caller to wait before sending the call
    /// again, for a call refused by a rate limit or quota
    /// (`RESOURCE_EXHAUSTED` with `grpc-retry-pushback-ms`). `None` when it
    /// gave no time, or said that waiting does not help (a call larger than
    /// the limit's burst).
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        let Self::Status(status) = self else {
            return None;
        };
        let ms: i64 = status
            .metadata()
            .get("grpc-retry-pushback-ms")?
            .to_str()
            .ok()?
            .parse()
            .ok()?;
        u64::try_from(ms).ok().map(std::time::Duration::from_millis)
    }
}

// Not `#[from]`: that would also make the status the error's source, and
// error reports would print its code and message twice.
impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        Self::Status(status)
    }
}

/// One endpoint [`Client::connect`] could not reach.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointFailure {
    /// The endpoint, as `scheme://host:port` (without user information) or
    /// `unix:PATH`.
    pub endpoint: String,
    /// Why: the transport's error and its causes (refused, timed out, a
    /// TLS failure). Nothing of the API key, which is not sent before the
    /// connection is made.
    pub reason: String,
}

/// `to ENDPOINT (why)`, or `to any of the N endpoints: ENDPOINT (why); …`.
fn failures_text(failures: &[EndpointFailure]) -> String {
    let each: Vec<String> = failures
        .iter()
        .map(|failure| format!("{} ({})", failure.endpoint, failure.reason))
        .collect();
    match each.as_slice() {
        [one] => format!("to {one}"),
        _ => format!(
            "to any of the {} endpoints: {}",
            each.len(),
            each.join("; ")
        ),
    }
}

/// `error` and its causes, as `error: cause: cause`, each said once
/// (tonic's connect error repeats its cause's text).
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut last = text.clone();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !line.is_empty() && line != last {
            text.push_str(": ");
            text.push_str(&line);
        }
        last = line;
        source = cause.source();
    }
    text
}

/// Whether `status` says that the node the call went to is out of reach,
/// rather than answering it: `UNAVAILABLE` (a node says so when it is
/// shutting down or lost its database; tonic says so when it cannot
/// connect), or a status this side made of a transport failure — the
/// connection dropped under the call, which tonic reports as `UNKNOWN` or
/// `CANCELLED` carrying the I/O error as its source, which a status sent by
/// a server never has.
fn node_down(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable => true,
        Code::Unknown | Code::Cancelled => std::error::Error::source(status).is_some(),
        _ => false,
    }
}

/// Somewhere between half of `wait` and all of it: clients that lost the
/// same node at the same moment come back spread out, not all at once.
fn jittered(wait: Duration) -> Duration {
    use std::hash::{BuildHasher as _, Hasher as _};
    // A fresh random state per call: no generator to carry or seed.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let half = wait / 2;
    half + half.mul_f64((random % 1_000_000) as f64 / 1_000_000.0)
}

/// Whether `status` comes from a connection that could not be made (refused,
/// timed out, TLS handshake failed): then the request never left this
/// process, and no node can have acted on it. tonic marks those with
/// [`tonic::ConnectError`] in the status's sources. Anything else — a
/// connection lost after the request went out, or a node's own
/// `UNAVAILABLE` (its database may have committed before it lost it) —
/// leaves open whether the call took effect.
fn never_sent(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<tonic::ConnectError>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// Whether `error` says that the node a call or stream went to is out of
/// reach ([`node_down`]): what a bulk run reconnects after.
pub(crate) fn transport_failed(error: &ClientError) -> bool {
    matches!(error, ClientError::Status(status) if node_down(status))
}

/// Whether a call may be sent again, to the next endpoint, after its node
/// went out of reach under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Sending it twice does what sending it once does: tokenize
    /// (deterministic tokens over one database: a value tokenized twice gets
    /// one token), detokenize, every read, and revoking (a second keeps the
    /// first revocation time).
    Idempotent,
    /// The first attempt may have taken effect — a client, a namespace, a
    /// keyset or a backup created — and a second would create another or
    /// fail as a duplicate: sent again only when the first provably never
    /// left ([`never_sent`]); otherwise the error is returned for the caller
    /// to look (list clients, key status) before trying again.
    IfUnsent,
}

/// Adds `authorization: Bearer <key>` to every call.
#[derive(Clone)]
pub struct Auth(Option<MetadataValue<Ascii>>, Option<Duration>);

impl Auth {
    /// The header for `key`, or none without a key.
    fn bearer(key: Option<&str>) -> Result<Self, ClientError> {
        let Some(key) = key else {
            return Ok(Self(None, None));
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
        Ok(Self(Some(value), None))
    }

    /// Also gives every call `deadline` (see [`ClientOptions::deadline`]).
    fn with_deadline(mut self, deadline: Option<Duration>) -> Self {
        self.1 = deadline;
        self
    }
}

/// The deadline of a call to `method`, when calls have `deadline`.
fn deadline_of(method: &str, deadline: Option<Duration>) -> Option<Duration> {
    let deadline = deadline?;
    if STREAMING.contains(&method) {
        None
    } else if LONG.contains(&method) {
        Some(deadline.max(LONG_DEADLINE))
    } else {
        Some(deadline)
    }
}

impl Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        let method = request
            .extensions()
            .get::<tonic::GrpcMethod>()
            .map(|m| m.method());
        if let Some(deadline) = method.and_then(|m| deadline_of(m, self.1)) {
            request.set_timeout(deadline);
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

/// One endpoint: its connection and the clients over it.
#[derive(Clone)]
struct Node {
    /// As [`endpoint_name`] names it.
    name: Arc<str>,
    tokenizer: TokenizerClient<Svc>,
    admin: AdminClient<Svc>,
    channel: Channel,
}

impl Node {
    fn new(name: String, channel: Channel, auth: &Auth) -> Self {
        let max = 64 << 20;
        Self {
            name: name.into(),
            tokenizer: TokenizerClient::with_interceptor(channel.clone(), auth.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            admin: AdminClient::with_interceptor(channel.clone(), auth.clone()),
            channel,
        }
    }
}

/// A client's endpoints, shared by its clones, and which one is in use.
struct Nodes {
    /// In the order given; never empty.
    list: Vec<Node>,
    /// Counts the moves from one endpoint to the next: the node in use is
    /// `list[position % list.len()]`. A call that saw its node go away
    /// moves it on only if nothing did since the call read it (compare and
    /// swap), so that calls failing together on one node move the client
    /// on once, not once each. An atomic rather than a lock: nothing shared
    /// is held across a call or a backoff.
    position: AtomicUsize,
}

impl Nodes {
    /// The position of the node in use, and the node.
    fn current(&self) -> (usize, Node) {
        // Relaxed: the position is only a hint of where to go; the list it
        // indexes never changes after `Client::connect`.
        let position = self.position.load(Ordering::Relaxed);
        (position, self.at(position))
    }

    fn at(&self, position: usize) -> Node {
        // In range: `list` is never empty (`Client::connect` returns only
        // after one of its endpoints answered).
        self.list[position % self.list.len()].clone()
    }

    /// Moves on from the node at `from` to the next endpoint, unless a call
    /// did already; returns the position now in use.
    fn fail_over(&self, from: usize) -> usize {
        let next = from.wrapping_add(1);
        match self
            .position
            .compare_exchange(from, next, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => next,
            Err(now) => now,
        }
    }

    /// `status` as a call's error, after moving on from the node at
    /// `position` if it says that node is out of reach.
    fn failed(&self, position: usize, status: Status) -> ClientError {
        if node_down(&status) {
            self.fail_over(position);
        }
        status.into()
    }
}

/// A connection to a vault: to one of its endpoints at a time, moving on to
/// the next when that one goes away (see [`Client::connect`]). Cheap to
/// clone; clones share the connections and which endpoint is in use.
#[derive(Clone)]
pub struct Client {
    nodes: Arc<Nodes>,
    /// What reveals state unless a call gives its own.
    purpose: Arc<Purpose>,
}

impl Client {
    /// Connects to the vault: to the first of the endpoints, in the order
    /// given, that answers; fails only when none does, saying for each why
    /// ([`ClientError::Unreachable`]). Every endpoint is checked first,
    /// before anything is sent anywhere: plaintext off loopback is refused
    /// unless [`ClientOptions::insecure_plaintext`] is set.
    ///
    /// In order rather than from a random one: the list is a preference (the
    /// nearest node first, say), the same every run, so that which node a
    /// run used is predictable; spreading clients over the nodes is done by
    /// giving them the list in different orders.
    ///
    /// The other endpoints are connected to when first needed. When a call
    /// finds its node out of reach — a transport error, or `UNAVAILABLE`:
    /// the node died, is restarting, or lost its database — the client
    /// moves on to the next endpoint (after the last, the first) for every
    /// later call, and sends the call again there if that is safe: see each
    /// call. Calls on a stream are not sent again (the stream's messages
    /// are the caller's); [`bulk::run`] sends its unanswered batches again
    /// on a new stream.
    pub async fn connect(options: ClientOptions) -> Result<Self, ClientError> {
        let checked = options.check()?;
        let auth = Auth::bearer(options.api_key.as_deref().map(String::as_str))?
            .with_deadline(options.deadline);
        let tls = checked
            .iter()
            .any(|c| c.transport == Transport::Tls)
            .then(|| options.tls_config());
        let mut endpoints = Vec::with_capacity(checked.len());
        for Checked {
            endpoint,
            transport,
            name,
        } in checked
        {
            let mut endpoint = endpoint
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT);
            // The server ends a call at its grpc-timeout; this is for a node
            // that stops answering altogether (a stream waits only for its
            // headers here).
            if let Some(deadline) = options.deadline {
                endpoint = endpoint.timeout(deadline.max(LONG_DEADLINE) + Duration::from_secs(5));
            }
            if let (Transport::Tls, Some(config)) = (transport, &tls) {
                endpoint = endpoint.tls_config(config.clone())?;
            }
            endpoints.push((name, endpoint));
        }
        let mut failures = Vec::new();
        let mut answered = None;
        for (index, (name, endpoint)) in endpoints.iter().enumerate() {
            match endpoint.connect().await {
                Ok(channel) => {
                    answered = Some((index, channel));
                    break;
                }
                Err(error) => failures.push(EndpointFailure {
                    endpoint: name.clone(),
                    reason: error_chain(&error),
                }),
            }
        }
        let Some((first, channel)) = answered else {
            return Err(ClientError::Unreachable(failures));
        };
        // The others connect on their first call, so that a node that is
        // down now costs nothing until the client needs it; one that failed
        // above is tried again then.
        let list = endpoints
            .into_iter()
            .enumerate()
            .map(|(index, (name, endpoint))| {
                let channel = if index == first {
                    channel.clone()
                } else {
                    endpoint.connect_lazy()
                };
                Node::new(name, channel, &auth)
            })
            .collect();
        Ok(Self {
            nodes: Arc::new(Nodes {
                list,
                position: AtomicUsize::new(first),
            }),
            purpose: Arc::new(options.purpose.clone()),
        })
    }

    /// The endpoint calls go to now, as `scheme://host:port` (without user
    /// information) or `unix:PATH`: it changes when the client moves on.
    pub fn endpoint(&self) -> String {
        self.nodes.current().1.name.to_string()
    }

    /// Moves the client on from the node at `position`, unless a call did
    /// already: for a stream that ended while batches were unanswered (a
    /// node shutting down ends its streams cleanly).
    pub(crate) fn fail_over_from(&self, position: usize) {
        self.nodes.fail_over(position);
    }

    /// Sends a call with `send` to the node in use. When that node is out of
    /// reach ([`node_down`]), moves the client on to the next endpoint and,
    /// as `retry` allows, sends the call again there: straight away to an
    /// endpoint this call has not tried, after a wait that doubles each time
    /// it comes round to one it has (the node may be restarting, or every
    /// node lost the database for a moment). Bounded: [`RETRIES`] attempts
    /// after the first, or one on every other endpoint if there are more.
    /// The waits hold nothing shared, only this call's own handle on a node.
    /// Returns the answer and the position of the node that gave it.
    async fn call_at<T, F, Fut>(&self, retry: Retry, mut send: F) -> Result<(T, usize), ClientError>
    where
        F: FnMut(Node) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let count = self.nodes.list.len();
        let budget = RETRIES.max(count.saturating_sub(1));
        let mut tried = vec![false; count];
        let mut backoff = FIRST_BACKOFF;
        let mut retries = 0;
        let (mut position, mut node) = self.nodes.current();
        loop {
            let status = match send(node).await {
                Ok(response) => return Ok((response.into_inner(), position)),
                Err(status) => status,
            };
            if !node_down(&status) {
                return Err(status.into());
            }
            if let Some(slot) = tried.get_mut(position % count) {
                *slot = true;
            }
            let next = self.nodes.fail_over(position);
            let again = match retry {
                Retry::Idempotent => true,
                Retry::IfUnsent => never_sent(&status),
            };
            if !again || retries >= budget {
                return Err(status.into());
            }
            retries += 1;
            if tried.get(next % count).copied().unwrap_or(true) {
                tokio::time::sleep(jittered(backoff)).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            // Where the client is now: another call may have moved it on
            // further while this one waited.
            (position, node) = self.nodes.current();
        }
    }

    /// [`Client::call_at`], without the position.
    async fn call<T, F, Fut>(&self, retry: Retry, send: F) -> Result<T, ClientError>
    where
        F: FnMut(Node) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.call_at(retry, send).await.map(|(answer, _)| answer)
    }

    /// Tokenizes `values` in `namespace`. Sent again, on the next endpoint,
    /// when its node goes out of reach: tokens are deterministic over one
    /// database, so a value tokenized twice gets the token it got the first
    /// time. (In a namespace of random tokens the second attempt makes
    /// fresh ones; those of a first attempt whose answer was lost are never
    /// delivered.)
    pub async fn tokenize(
        &self,
        namespace: &str,
        values: Vec<String>,
    ) -> Result<Vec<ItemResult>, ClientError> {
        let request = pb::TokenizeRequest {
            namespace: namespace.to_owned(),
            values,
        };
        let response = self
            .call(Retry::Idempotent, |node: Node| {
                let request = request.clone();
                async move {
                    let mut tokenizer = node.tokenizer;
                    tokenizer.tokenize(request).await
                }
            })
            .await?;
        Ok(results(response.results))
    }

    /// Reveals `tokens` of `namespace`, masked (all but the last 4
    /// characters) when `masked` is set. Sent again, on the next endpoint,
    /// when its node goes out of reach: a reveal changes nothing stored. A
    /// node that cannot write the call's audit record reveals nothing
    /// (`UNAVAILABLE`); one that did and then went away before answering
    /// leaves the record, so a reveal sent twice is on the trail twice —
    /// what happened, never less.
    pub async fn detokenize(
        &self,
        namespace: &str,
        tokens: Vec<String>,
        masked: bool,
    ) -> Result<Vec<ItemResult>, ClientError> {
        let purpose = Arc::clone(&self.purpose);
        self.detokenize_for(namespace, tokens, masked, &purpose)
            .await
    }

    /// [`Client::detokenize`], stating `purpose` for this call.
    pub async fn detokenize_for(
        &self,
        namespace: &str,
        tokens: Vec<String>,
        masked: bool,
        purpose: &Purpose,
    ) -> Result<Vec<ItemResult>, ClientError> {
        let request = pb::DetokenizeRequest {
            namespace: namespace.to_owned(),
            tokens,
            masked,
            purpose: purpose.code.clone(),
            reason: purpose.reason.clone(),
        };
        let response = self
            .call(Retry::Idempotent, |node: Node| {
                let request = request.clone();
                async move {
                    let mut tokenizer = node.tokenizer;
                    tokenizer.detokenize(request).await
                }
            })
            .await?;
        Ok(results(response.results))
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
    ///
    /// The stream goes to the node in use and is not moved: when that node
    /// goes out of reach, the stream ends with the error and the client
    /// moves on, so that the next stream opened goes to the next endpoint;
    /// sending the unanswered batches again is the caller's to do, as
    /// [`bulk::run`] does.
    pub async fn tokenize_batches<S>(
        &self,
        batches: S,
        in_flight: usize,
    ) -> Result<BatchResults, ClientError>
    where
        S: Stream<Item = Batch> + Send + 'static,
    {
        self.open_tokenize(batches, in_flight)
            .await
            .map(|(answers, _)| answers)
    }

    /// [`Client::tokenize_batches`], and the position of the node the
    /// stream went to.
    pub(crate) async fn open_tokenize<S>(
        &self,
        batches: S,
        in_flight: usize,
    ) -> Result<(BatchResults, usize), ClientError>
    where
        S: Stream<Item = Batch> + Send + 'static,
    {
        let requests = batches.map(|batch| pb::TokenizeRequest {
            namespace: batch.namespace,
            values: batch.items,
        });
        let (position, node) = self.nodes.current();
        let mut tokenizer = node.tokenizer;
        let (outgoing, slots) = windowed(requests, in_flight);
        let response = tokenizer
            .tokenize_stream(outgoing)
            .await
            .map_err(|status| self.nodes.failed(position, status))?;
        let answers = slots
            .freed_by(response.into_inner())
            .map_ok(|r| results(r.results));
        Ok((
            watched(Arc::clone(&self.nodes), position, answers),
            position,
        ))
    }

    /// Reveals batches of tokens of any namespaces over one
    /// `DetokenizeStream` call, up to `in_flight` outstanding; one result
    /// per batch, in order. Every batch is audited on its own. When the
    /// node goes away, as [`Client::tokenize_batches`].
    pub async fn detokenize_batches<S>(
        &self,
        batches: S,
        masked: bool,
        in_flight: usize,
    ) -> Result<BatchResults, ClientError>
    where
        S: Stream<Item = Batch> + Send + 'static,
    {
        self.open_detokenize(batches, masked, in_flight)
            .await
            .map(|(answers, _)| answers)
    }

    /// [`Client::detokenize_batches`], and the position of the node the
    /// stream went to.
    pub(crate) async fn open_detokenize<S>(
        &self,
        batches: S,
        masked: bool,
        in_flight: usize,
    ) -> Result<(BatchResults, usize), ClientError>
    where
        S: Stream<Item = Batch> + Send + 'static,
    {
        let purpose = Arc::clone(&self.purpose);
        let requests = batches.map(move |batch| pb::DetokenizeRequest {
            namespace: batch.namespace,
            tokens: batch.items,
            masked,
            purpose: purpose.code.clone(),
            reason: purpose.reason.clone(),
        });
        let (position, node) = self.nodes.current();
        let mut tokenizer = node.tokenizer;
        let (outgoing, slots) = windowed(requests, in_flight);
        let response = tokenizer
            .detokenize_stream(outgoing)
            .await
            .map_err(|status| self.nodes.failed(position, status))?;
        let answers = slots
            .freed_by(response.into_inner())
            .map_ok(|r| results(r.results));
        Ok((
            watched(Arc::clone(&self.nodes), position, answers),
            position,
        ))
    }

    /// Tokenizes `batches` (of any namespaces) over a stream, up to
    /// `in_flight` outstanding, and answers one result per batch, in order.
    /// When the stream's node goes out of reach, a new stream is opened (on
    /// the next endpoint) and the batches not answered yet are sent again,
    /// with backoff, until a node answers or `retry_for` has passed since
    /// the last answer: what [`bulk::run`] does for files, for batches held
    /// in memory (a data frame's columns, say).
    pub async fn tokenize_all(
        &self,
        batches: Vec<Batch>,
        in_flight: usize,
        retry_for: Duration,
    ) -> Result<Vec<Vec<ItemResult>>, ClientError> {
        self.all(batches, in_flight, retry_for, None).await
    }

    /// [`Client::tokenize_all`] for reveals, masked when `masked` is set;
    /// every batch is audited on its own (a batch sent again is on the
    /// trail twice, as with [`Client::detokenize`]).
    pub async fn detokenize_all(
        &self,
        batches: Vec<Batch>,
        masked: bool,
        in_flight: usize,
        retry_for: Duration,
    ) -> Result<Vec<Vec<ItemResult>>, ClientError> {
        self.all(batches, in_flight, retry_for, Some(masked)).await
    }

    /// The stream behind [`Client::tokenize_all`] (`masked` is `None`) and
    /// [`Client::detokenize_all`].
    async fn all(
        &self,
        batches: Vec<Batch>,
        in_flight: usize,
        retry_for: Duration,
        masked: Option<bool>,
    ) -> Result<Vec<Vec<ItemResult>>, ClientError> {
        const FIRST_BACKOFF: Duration = Duration::from_millis(100);
        const MAX_BACKOFF: Duration = Duration::from_secs(5);
        let batches = Arc::new(batches);
        let mut answered: Vec<Vec<ItemResult>> = Vec::with_capacity(batches.len());
        let mut last_answer = std::time::Instant::now();
        let mut backoff = FIRST_BACKOFF;
        while answered.len() < batches.len() {
            let from = answered.len();
            let rest = {
                let batches = Arc::clone(&batches);
                stream::iter(from..batches.len()).map(move |i| batches[i].clone())
            };
            let opened = match masked {
                None => self.tokenize_batches(rest, in_flight).await,
                Some(masked) => self.detokenize_batches(rest, masked, in_flight).await,
            };
            let failure = match opened {
                Ok(mut answers) => loop {
                    // A node that stops answering without going away is
                    // waited for as long as one that went away would be.
                    let next =
                        tokio::time::timeout_at((last_answer + retry_for).into(), answers.next())
                            .await;
                    match next {
                        Ok(Some(Ok(results))) => {
                            let sent = batches[answered.len()].items.len();
                            if results.len() != sent {
                                return Err(Status::internal(format!(
                                    "the vault answered {} results for a batch of {sent} items",
                                    results.len()
                                ))
                                .into());
                            }
                            answered.push(results);
                            last_answer = std::time::Instant::now();
                            backoff = FIRST_BACKOFF;
                        }
                        Ok(Some(Err(e))) => break Some(e),
                        Ok(None) => break None,
                        Err(_) => {
                            return Err(Status::unavailable(format!(
                                "no answer for {} (retry_for)",
                                humantime::format_duration(retry_for)
                            ))
                            .into());
                        }
                    }
                },
                Err(e) => Some(e),
            };
            match failure {
                Some(e) if !transport_failed(&e) || last_answer.elapsed() > retry_for => {
                    return Err(e);
                }
                Some(_) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                // A stream that ends before every batch is answered broke
                // the protocol; it is not opened again in a loop.
                None if answered.len() < batches.len() => {
                    return Err(Status::internal(
                        "the stream ended before every batch was answered",
                    )
                    .into());
                }
                None => {}
            }
        }
        Ok(answered)
    }

    /// Creates a namespace. Not sent again after its node went away under
    /// it, unless it never left: the first may have created it, and a second
    /// would fail as `ALREADY_EXISTS`. List the namespaces to see.
    pub async fn create_namespace(
        &self,
        request: pb::CreateNamespaceRequest,
    ) -> Result<pb::Namespace, ClientError> {
        self.call(Retry::IfUnsent, |node: Node| {
            let request = request.clone();
            async move {
                let mut admin = node.admin;
                admin.create_namespace(request).await
            }
        })
        .await
    }

    /// Every namespace.
    pub async fn list_namespaces(&self) -> Result<Vec<pb::Namespace>, ClientError> {
        let response = self
            .call(Retry::Idempotent, |node: Node| async move {
                let mut admin = node.admin;
                admin.list_namespaces(pb::ListNamespacesRequest {}).await
            })
            .await?;
        Ok(response.namespaces)
    }

    /// Creates a client; the response holds its API key, shown once. Not
    /// sent again after its node went away under it, unless it never left:
    /// the first may have created a client whose key was lost with the
    /// answer, and a second would create another. List the clients (and
    /// revoke the orphan) before trying again.
    pub async fn create_client(
        &self,
        name: &str,
        scopes: Vec<String>,
    ) -> Result<pb::CreateClientResponse, ClientError> {
        self.create_client_with(pb::CreateClientRequest {
            name: name.to_owned(),
            scopes,
            ..Default::default()
        })
        .await
    }

    /// Creates a client as `request` says (`allow_masked_oracle` among
    /// others). Sent again only as [`Client::create_client`] is.
    pub async fn create_client_with(
        &self,
        request: pb::CreateClientRequest,
    ) -> Result<pb::CreateClientResponse, ClientError> {
        self.call(Retry::IfUnsent, |node: Node| {
            let request = request.clone();
            async move {
                let mut admin = node.admin;
                admin.create_client(request).await
            }
        })
        .await
    }

    /// Every client.
    pub async fn list_clients(&self) -> Result<Vec<pb::Client>, ClientError> {
        let response = self
            .call(Retry::Idempotent, |node: Node| async move {
                let mut admin = node.admin;
                admin.list_clients(pb::ListClientsRequest {}).await
            })
            .await?;
        Ok(response.clients)
    }

    /// Revokes a client. Sent again on the next endpoint when its node goes
    /// away: revoking twice keeps the first revocation.
    pub async fn revoke_client(&self, client_id: &str) -> Result<pb::Client, ClientError> {
        let request = pb::RevokeClientRequest {
            client_id: client_id.to_owned(),
        };
        self.call(Retry::Idempotent, |node: Node| {
            let request = request.clone();
            async move {
                let mut admin = node.admin;
                admin.revoke_client(request).await
            }
        })
        .await
    }

    /// Gives a client a new API key (in the answer, shown once); the old
    /// one is still accepted for `grace`. Not sent again after its node went
    /// away under it unless it never left: a second rotation would retire
    /// the key the first one made.
    pub async fn rotate_client_key(
        &self,
        client_id: &str,
        grace: std::time::Duration,
    ) -> Result<pb::CreateClientResponse, ClientError> {
        let request = pb::RotateClientKeyRequest {
            client_id: client_id.to_owned(),
            grace_secs: Some(grace.as_secs()),
        };
        self.call(Retry::IfUnsent, |node: Node| {
            let request = request.clone();
            async move {
                let mut admin = node.admin;
                admin.rotate_client_key(request).await
            }
        })
        .await
    }

    /// Re-arms a client whose break-glass window has opened. Sent again on
    /// the next endpoint when its node goes away: re-arming twice is
    /// re-arming once.
    pub async fn release_client(&self, client_id: &str) -> Result<pb::Client, ClientError> {
        let request = pb::ReleaseClientRequest {
            client_id: client_id.to_owned(),
        };
        self.call(Retry::Idempotent, |node: Node| {
            let request = request.clone();
            async move {
                let mut admin = node.admin;
                admin.release_client(request).await
            }
        })
        .await
    }

    /// Starts a key rotation; returns the version now active. Not sent again
    /// after its node went away under it, unless it never left: the first
    /// may have started one, and a second would fail (`FAILED_PRECONDITION`,
    /// one at a time) or, once it finished, start another. See the key
    /// status before trying again.
    pub async fn rotate_keys(&self) -> Result<u32, ClientError> {
        let response = self
            .call(Retry::IfUnsent, |node: Node| async move {
                let mut admin = node.admin;
                admin.rotate_keys(pb::RotateKeysRequest {}).await
            })
            .await?;
        Ok(response.new_version)
    }

    /// What the node in use is (version, store) and the limits it applies:
    /// the most items per request, the largest message and value. Any valid
    /// key may ask.
    pub async fn server_info(&self) -> Result<pb::GetServerInfoResponse, ClientError> {
        self.call(Retry::Idempotent, |node: Node| async move {
            let mut tokenizer = node.tokenizer;
            tokenizer.get_server_info(pb::GetServerInfoRequest {}).await
        })
        .await
    }

    /// Key versions and rotation progress.
    pub async fn key_status(&self) -> Result<pb::KeyStatus, ClientError> {
        self.call(Retry::Idempotent, |node: Node| async move {
            let mut admin = node.admin;
            admin.get_key_status(pb::GetKeyStatusRequest {}).await
        })
        .await
    }

    /// Has the server write a consistent checkpoint to `path` (on the file
    /// system of the node that answers). Not sent again after its node went
    /// away under it, unless it never left: the first may have written it,
    /// and a second would find the path taken.
    pub async fn backup(&self, path: &str) -> Result<pb::BackupResponse, ClientError> {
        let request = pb::BackupRequest {
            path: path.to_owned(),
        };
        self.call(Retry::IfUnsent, |node: Node| {
            let request = request.clone();
            async move {
                let mut admin = node.admin;
                admin.backup(request).await
            }
        })
        .await
    }

    /// Walks the server's audit hash chain.
    pub async fn verify_audit(&self) -> Result<pb::VerifyAuditResponse, ClientError> {
        self.call(Retry::Idempotent, |node: Node| async move {
            let mut admin = node.admin;
            admin.verify_audit(pb::VerifyAuditRequest {}).await
        })
        .await
    }

    /// Every call that revealed `token` in `namespace` (in full or masked),
    /// oldest first, fetched page by page (each page sent again on the next
    /// endpoint when its node goes away). Needs the `audit` or `admin`
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
                .call(Retry::Idempotent, |node: Node| {
                    let request = request.clone();
                    async move {
                        let mut admin = node.admin;
                        admin.list_disclosures(request).await
                    }
                })
                .await?;
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
    ///
    /// When its node goes away under it, the export goes on from the next
    /// endpoint after the last record received, so that no record is
    /// skipped or repeated; it then runs up to the head as it is when it
    /// goes on, which may hold records appended meanwhile.
    pub async fn export_audit(
        &self,
        since_ms: u64,
    ) -> Result<impl Stream<Item = Result<pb::AuditRecord, ClientError>> + use<>, ClientError> {
        let export = Export::open(self.clone(), since_ms).await?;
        Ok(stream::unfold(export, next_record))
    }

    /// Opens an audit export from `since_ms` after the record `after_seq`
    /// (0: from the first).
    async fn export_from(
        &self,
        since_ms: u64,
        after_seq: u64,
    ) -> Result<(tonic::Streaming<pb::AuditRecord>, usize), ClientError> {
        let request = pb::ExportAuditRequest {
            since_ms,
            after_seq,
        };
        self.call_at(Retry::Idempotent, |node: Node| async move {
            let mut admin = node.admin;
            admin.export_audit(request).await
        })
        .await
    }

    /// The standard gRPC health check (`""`) of the node in use, moving on
    /// to the next endpoint while the node is out of reach: whether the vault
    /// is serving through this client. It stays true while the vault cannot
    /// commit (the process is alive and heals by itself); see
    /// [`Client::ready`].
    pub async fn health(&self) -> Result<bool, ClientError> {
        self.health_of("").await
    }

    /// Whether the node in use can answer tokenize and detokenize now: the
    /// gRPC health of `phivault.v1.Tokenizer`, which is `NOT_SERVING` while
    /// commits fail (every reveal then fails closed).
    pub async fn ready(&self) -> Result<bool, ClientError> {
        self.health_of("phivault.v1.Tokenizer").await
    }

    async fn health_of(&self, service: &str) -> Result<bool, ClientError> {
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::health_client::HealthClient;
        let response = self
            .call(Retry::Idempotent, |node: Node| async move {
                let mut health = HealthClient::new(node.channel);
                health
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: service.to_owned(),
                    })
                    .await
            })
            .await?;
        Ok(response.status() == ServingStatus::Serving)
    }
}

/// An audit export under way: goes on after the last record received, on
/// the next endpoint, when its node goes away under it.
struct Export {
    client: Client,
    since_ms: u64,
    /// The sequence number of the last record received (0: none yet).
    after_seq: u64,
    /// The open stream and the position of its node; `None` once it ended.
    records: Option<(tonic::Streaming<pb::AuditRecord>, usize)>,
    /// Times the export went on since the last record it received: bounded,
    /// so that a node that fails every stream at once ends the export.
    stalls: usize,
}

impl Export {
    async fn open(client: Client, since_ms: u64) -> Result<Self, ClientError> {
        let records = client.export_from(since_ms, 0).await?;
        Ok(Self {
            client,
            since_ms,
            after_seq: 0,
            records: Some(records),
            stalls: 0,
        })
    }

    /// The next record, or the error that ends the export, or `None` at its
    /// end.
    async fn next(&mut self) -> Option<Result<pb::AuditRecord, ClientError>> {
        loop {
            let (records, position) = self.records.as_mut()?;
            let position = *position;
            let received = records.message().await;
            let status = match received {
                Ok(Some(record)) => {
                    self.after_seq = record.seq;
                    self.stalls = 0;
                    return Some(Ok(record));
                }
                Ok(None) => {
                    self.records = None;
                    return None;
                }
                Err(status) => status,
            };
            self.records = None;
            if !node_down(&status) || self.stalls >= RETRIES {
                return Some(Err(self.client.nodes.failed(position, status)));
            }
            self.client.nodes.fail_over(position);
            self.stalls += 1;
            match self.client.export_from(self.since_ms, self.after_seq).await {
                Ok(records) => self.records = Some(records),
                Err(error) => return Some(Err(error)),
            }
        }
    }
}

/// [`Export::next`] in the shape `stream::unfold` takes. A function rather
/// than a closure, so that the stream [`Client::export_audit`] returns
/// borrows nothing of the call.
async fn next_record(mut export: Export) -> Option<(Result<pb::AuditRecord, ClientError>, Export)> {
    let record = export.next().await?;
    Some((record, export))
}

/// `answers` as [`BatchResults`], moving the client on from the node at
/// `position` when the stream breaks because that node went out of reach,
/// so that the caller's next stream goes to the next endpoint.
fn watched<S>(nodes: Arc<Nodes>, position: usize, answers: S) -> BatchResults
where
    S: Stream<Item = Result<Vec<ItemResult>, Status>> + Send + 'static,
{
    Box::pin(answers.map_err(move |status| nodes.failed(position, status)))
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

/// The request side of a bidirectional stream, and the answers it waits
/// on: a request is sent only while fewer than `in_flight` are unanswered,
/// and each answer frees a slot. So at most `in_flight` batches are ever
/// outstanding, on the wire and in the server's buffers, whatever the
/// caller's stream can produce: a server rightly treats a peer that keeps
/// it buffering ever more small messages as a flood (h2 answers
/// `ENHANCE_YOUR_CALM` and closes the connection).
fn windowed<R: Send + 'static>(
    requests: impl Stream<Item = R> + Send + 'static,
    in_flight: usize,
) -> (impl Stream<Item = R>, SlotsClosedOnDrop) {
    let slots = Arc::new(tokio::sync::Semaphore::new(in_flight.max(1)));
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    let sending = Arc::clone(&slots);
    tokio::spawn(async move {
        let mut requests = Box::pin(requests);
        // Closed when the answers are dropped: nothing is sent after.
        while let Ok(slot) = sending.acquire().await {
            let Some(request) = requests.next().await else {
                break;
            };
            slot.forget();
            if sender.send(request).await.is_err() {
                break;
            }
        }
    });
    let outgoing = stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|request| (request, receiver))
    });
    (outgoing, SlotsClosedOnDrop(slots))
}

/// A stream's answers, each freeing the slot of the request it answers.
struct FreeingSlots<A> {
    answers: A,
    slots: SlotsClosedOnDrop,
}

/// The slots of [`windowed`]; stops its sending side when dropped.
struct SlotsClosedOnDrop(Arc<tokio::sync::Semaphore>);

impl SlotsClosedOnDrop {
    /// `answers`, each freeing a slot.
    fn freed_by<A>(self, answers: A) -> FreeingSlots<A> {
        FreeingSlots {
            answers,
            slots: self,
        }
    }
}

impl Drop for SlotsClosedOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl<A: Stream + Unpin> Stream for FreeingSlots<A> {
    type Item = A::Item;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<A::Item>> {
        let next = self.answers.poll_next_unpin(cx);
        if let std::task::Poll::Ready(Some(_)) = &next {
            self.slots.0.add_permits(1);
        }
        next
    }
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
    use std::sync::Mutex;

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

    #[test]
    fn a_comma_separated_list_gives_every_endpoint_in_order() {
        let options = ClientOptions::new(
            " https://a.example.org:50051, https://b.example.org:50051 ,unix:/run/pv.sock",
        );
        assert_eq!(
            options.endpoints,
            [
                "https://a.example.org:50051",
                "https://b.example.org:50051",
                "unix:/run/pv.sock"
            ]
        );
        let names: Vec<String> = options
            .check()
            .expect("three good endpoints")
            .into_iter()
            .map(|checked| checked.name)
            .collect();
        assert_eq!(
            names,
            [
                "https://a.example.org:50051",
                "https://b.example.org:50051",
                "unix:/run/pv.sock"
            ]
        );
        // One endpoint is a list of one, as before.
        assert_eq!(
            ClientOptions::new("http://127.0.0.1:50051").endpoints,
            ["http://127.0.0.1:50051"]
        );
    }

    #[test]
    fn an_added_endpoint_is_taken_whole() {
        let options = ClientOptions::new("https://a.example.org:50051")
            .endpoint("unix:/run/phivault/a,b.sock")
            .endpoint(" https://c.example.org:50051 ");
        assert_eq!(
            options.endpoints,
            [
                "https://a.example.org:50051",
                "unix:/run/phivault/a,b.sock",
                "https://c.example.org:50051"
            ]
        );
        assert_eq!(
            options.transport().expect("all good"),
            Transport::LocalPlaintext
        );
    }

    #[test]
    fn an_empty_endpoint_is_refused_by_its_position() {
        for (list, position) in [
            ("", 1),
            (
                "https://a.example.org:50051,,https://b.example.org:50051",
                2,
            ),
            ("https://a.example.org:50051,", 2),
            (",https://a.example.org:50051", 1),
            (
                "https://a.example.org:50051, ,https://b.example.org:50051",
                2,
            ),
        ] {
            let error = transport(list, false).expect_err(list);
            let ClientError::InvalidEndpoint { position: at, .. } = &error else {
                panic!("{list:?}: {error}");
            };
            assert_eq!(*at, position, "{list:?}");
            assert!(error.to_string().contains("is empty"), "{error}");
        }
    }

    #[test]
    fn an_endpoint_that_is_no_address_is_named_by_position_never_quoted() {
        let error = transport(
            "https://a.example.org:50051,http://etl:hunter2@vault host:1",
            false,
        )
        .expect_err("a space is no part of a URI");
        assert!(
            matches!(error, ClientError::InvalidEndpoint { position: 2, .. }),
            "{error}"
        );
        let message = error.to_string();
        assert!(message.starts_with("endpoint 2 "), "{message}");
        assert!(
            !message.contains("hunter2") && !message.contains("etl"),
            "{message}"
        );
    }

    #[test]
    fn every_endpoint_of_a_list_passes_the_plaintext_check() {
        // The refusal names the endpoint that is wrong, whichever it is.
        for list in [
            "http://10.0.0.1:50051,http://127.0.0.1:50051",
            "http://127.0.0.1:50051,http://10.0.0.1:50051",
            "https://vault.example.org,http://etl:hunter2@10.0.0.1:50051",
        ] {
            let error = transport(list, false).expect_err(list);
            assert!(
                matches!(&error, ClientError::PlaintextRefused(host) if host == "10.0.0.1"),
                "{list}: {error}"
            );
            assert!(!error.to_string().contains("hunter2"));
        }
        let error = transport("http://127.0.0.1:50051,http://:50051", false).expect_err("no host");
        assert!(error.to_string().contains("endpoint 2"), "{error}");
    }

    #[test]
    fn a_list_answers_its_least_protected_transport() {
        for (list, expected) in [
            (
                "https://a.example.org,https://b.example.org",
                Transport::Tls,
            ),
            (
                "https://a.example.org,http://127.0.0.1:1",
                Transport::LocalPlaintext,
            ),
            (
                "http://127.0.0.1:1,https://a.example.org,http://10.0.0.1:1",
                Transport::InsecurePlaintext,
            ),
        ] {
            assert_eq!(transport(list, true).expect(list), expected, "{list}");
        }
    }

    #[test]
    fn names_leave_user_information_path_and_query_out() {
        for (text, name) in [
            (
                "https://etl:hunter2@vault.example.org:50051/x?key=1",
                "https://vault.example.org:50051",
            ),
            ("http://[::1]:50051", "http://[::1]:50051"),
            ("https://vault.example.org", "https://vault.example.org"),
            (
                "unix:/run/phivault/grpc.sock",
                "unix:/run/phivault/grpc.sock",
            ),
        ] {
            let endpoint = Endpoint::from_shared(text.to_owned()).expect(text);
            assert_eq!(endpoint_name(text, &endpoint), name);
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

    #[tokio::test]
    async fn a_list_is_refused_whole_when_one_endpoint_is_wrong() {
        // The good endpoint comes first and is not connected to either.
        let started = std::time::Instant::now();
        let refused = Client::connect(ClientOptions::new("http://127.0.0.1:1,http://10.1.2.3:1"))
            .await
            .err()
            .expect("refused");
        assert!(
            matches!(&refused, ClientError::PlaintextRefused(host) if host == "10.1.2.3"),
            "{refused}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    /// A loopback port nothing listens on: bound, then let go.
    fn dead_endpoint() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        drop(listener);
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn connect_fails_only_when_no_endpoint_answers_listing_each() {
        let (a, b) = (dead_endpoint(), dead_endpoint());
        let error = Client::connect(
            ClientOptions::new(format!("{a},{b}")).api_key("pv_0123456789abcdef_not-a-secret"),
        )
        .await
        .err()
        .expect("nothing listens");
        let ClientError::Unreachable(failures) = &error else {
            panic!("expected Unreachable, got {error}");
        };
        let tried: Vec<&str> = failures.iter().map(|f| f.endpoint.as_str()).collect();
        assert_eq!(tried, [a.as_str(), b.as_str()]);
        assert!(failures.iter().all(|f| !f.reason.is_empty()));
        let message = error.to_string();
        assert!(
            message.starts_with("cannot connect") && message.contains(&a) && message.contains(&b),
            "{message}"
        );
        assert!(!message.contains("not-a-secret"), "{message}");
    }

    /// A client over `count` endpoints nothing listens on, connected lazily
    /// (`Client::connect` would refuse them): for the retry policy, which
    /// the tests drive with statuses of their own.
    fn unconnected(count: usize) -> Client {
        let auth = Auth::bearer(None).expect("no key");
        let list = (0..count)
            .map(|i| {
                let name = format!("http://127.0.0.1:{}", i + 1);
                let channel = Endpoint::from_shared(name.clone())
                    .expect("a URI")
                    .connect_lazy();
                Node::new(name, channel, &auth)
            })
            .collect();
        Client {
            nodes: Arc::new(Nodes {
                list,
                position: AtomicUsize::new(0),
            }),
            purpose: Arc::default(),
        }
    }

    /// What a connection that could not be made looks like to a call.
    fn connect_failure() -> Status {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        Status::from_error(Box::new(tonic::ConnectError(Box::new(refused))))
    }

    /// What a connection dropped under a call looks like to it.
    fn dropped_connection() -> Status {
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        Status::from_error(Box::new(reset))
    }

    #[test]
    fn statuses_are_told_apart_by_where_they_come_from() {
        let connect = connect_failure();
        assert_eq!(connect.code(), Code::Unavailable);
        assert!(node_down(&connect) && never_sent(&connect));

        let dropped = dropped_connection();
        assert!(node_down(&dropped), "{dropped:?}");
        assert!(!never_sent(&dropped));

        // A node's own UNAVAILABLE: out of reach, but it may have acted.
        let sent = Status::unavailable("the store is unavailable");
        assert!(node_down(&sent) && !never_sent(&sent));

        // Answers from a node that is up are not failures of the node, even
        // UNKNOWN and CANCELLED when the server sent them.
        for status in [
            Status::unknown("sent by the server"),
            Status::cancelled("sent by the server"),
            Status::permission_denied("no scope"),
            Status::invalid_argument("bad value"),
            Status::failed_precondition("one rotation at a time"),
            Status::already_exists("namespace"),
        ] {
            assert!(!node_down(&status), "{status:?}");
        }
        assert!(transport_failed(&ClientError::Status(dropped_connection())));
        assert!(!transport_failed(&ClientError::BadKey));
    }

    /// Sends through `client.call` with `retry`, answering each attempt
    /// with `status()`; returns the endpoints tried, in order, and the
    /// error.
    async fn attempts(
        client: &Client,
        retry: Retry,
        status: fn() -> Status,
    ) -> (Vec<String>, ClientError) {
        let tried = Mutex::new(Vec::new());
        let error = client
            .call(retry, |node: Node| {
                tried
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(node.name.to_string());
                let failure = status();
                async move { Err::<Response<()>, Status>(failure) }
            })
            .await
            .expect_err("every attempt fails");
        let tried = tried
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (tried, error)
    }

    #[tokio::test]
    async fn an_idempotent_call_tries_every_endpoint_once_before_waiting() {
        // Six endpoints: the budget (one attempt on every other endpoint)
        // goes round once, without a wait.
        let client = unconnected(6);
        let started = std::time::Instant::now();
        let (tried, error) = attempts(&client, Retry::Idempotent, dropped_connection).await;
        let expected: Vec<String> = (1..=6).map(|p| format!("http://127.0.0.1:{p}")).collect();
        assert_eq!(tried, expected);
        assert!(transport_failed(&error), "{error}");
        assert!(
            started.elapsed() < Duration::from_millis(90),
            "no wait in the first round"
        );
        // The client moved on with the call: the next goes where it ended.
        assert_eq!(client.endpoint(), "http://127.0.0.1:1");
    }

    #[tokio::test]
    async fn with_one_endpoint_an_idempotent_call_is_retried_with_backoff() {
        let client = unconnected(1);
        let started = std::time::Instant::now();
        let (tried, _) = attempts(&client, Retry::Idempotent, || {
            Status::unavailable("restarting")
        })
        .await;
        assert_eq!(tried.len(), 1 + RETRIES);
        // 0.1 + 0.2 + 0.4 + 0.8 + 1.6 s, each wait jittered down to as
        // little as half.
        assert!(started.elapsed() >= Duration::from_millis(1_550));
    }

    #[tokio::test]
    async fn a_call_that_creates_is_sent_again_only_if_it_never_left() {
        let client = unconnected(6);
        // Sent, and the node went away: it may have committed.
        let (tried, error) = attempts(&client, Retry::IfUnsent, dropped_connection).await;
        assert_eq!(tried, ["http://127.0.0.1:1"]);
        assert!(transport_failed(&error));
        // The client still moved on, for the calls after it.
        assert_eq!(client.endpoint(), "http://127.0.0.1:2");

        let (tried, _) = attempts(&client, Retry::IfUnsent, || {
            Status::unavailable("lost the database")
        })
        .await;
        assert_eq!(tried, ["http://127.0.0.1:2"]);

        // Never sent: no node can have acted on it.
        let (tried, _) = attempts(&client, Retry::IfUnsent, connect_failure).await;
        assert_eq!(tried.len(), 6, "{tried:?}");
        assert_eq!(tried[0], "http://127.0.0.1:3");
    }

    #[tokio::test]
    async fn an_answer_that_is_not_a_node_failure_is_returned_at_once() {
        let client = unconnected(3);
        let (tried, error) = attempts(&client, Retry::Idempotent, || {
            Status::permission_denied("no scope")
        })
        .await;
        assert_eq!(tried, ["http://127.0.0.1:1"]);
        assert!(matches!(error, ClientError::Status(s) if s.code() == Code::PermissionDenied));
        assert_eq!(client.endpoint(), "http://127.0.0.1:1", "the node is fine");
    }

    #[tokio::test]
    async fn calls_failing_together_move_the_client_on_once() {
        let client = unconnected(3);
        let (seen, _) = client.nodes.current();
        assert_eq!(client.nodes.fail_over(seen), seen + 1);
        // A second call that saw the same node fail finds the move made.
        assert_eq!(client.nodes.fail_over(seen), seen + 1);
        assert_eq!(client.endpoint(), "http://127.0.0.1:2");
        // After the last endpoint, the first.
        client.nodes.fail_over(seen + 1);
        client.nodes.fail_over(seen + 2);
        assert_eq!(client.endpoint(), "http://127.0.0.1:1");
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
    fn unary_calls_carry_a_deadline_and_streams_none() {
        let thirty = Some(DEFAULT_DEADLINE);
        assert_eq!(deadline_of("Tokenize", thirty), thirty);
        assert_eq!(deadline_of("TokenizeStream", thirty), None);
        assert_eq!(deadline_of("ExportAudit", thirty), None);
        assert_eq!(deadline_of("VerifyAudit", thirty), None);
        assert_eq!(deadline_of("CreateClient", thirty), Some(LONG_DEADLINE));
        assert_eq!(deadline_of("Backup", thirty), Some(LONG_DEADLINE));
        assert_eq!(deadline_of("Tokenize", None), None);
        let mut auth = Auth::bearer(None).expect("no key").with_deadline(thirty);
        let mut request = Request::new(());
        request.extensions_mut().insert(tonic::GrpcMethod::new(
            "phivault.v1.Tokenizer",
            "Detokenize",
        ));
        let request = auth.call(request).expect("intercepted");
        assert_eq!(
            request
                .metadata()
                .get("grpc-timeout")
                .map(|v| v.to_str().ok()),
            Some(Some("30000000u"))
        );
    }

    #[test]
    fn backoff_waits_are_spread_between_half_and_all_of_the_wait() {
        let waits: std::collections::HashSet<Duration> =
            (0..50).map(|_| jittered(Duration::from_secs(2))).collect();
        assert!(waits.len() > 40, "not spread: {waits:?}");
        assert!(
            waits
                .iter()
                .all(|w| *w >= Duration::from_secs(1) && *w <= Duration::from_secs(2))
        );
    }

    #[test]
    fn no_key_sends_no_authorization() {
        let mut auth = Auth::bearer(None).expect("no key");
        let request = auth.call(Request::new(())).expect("intercepted");
        assert!(request.metadata().get("authorization").is_none());
    }
}
