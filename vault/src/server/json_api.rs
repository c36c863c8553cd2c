//! The HTTP/JSON API. Each call is transcoded into the gRPC request it
//! stands for and sent through the very stack gRPC calls pass (the record
//! layer, the gate, the service), so that authentication, scopes, limits,
//! audit records, detection and metrics are one code path: this module only
//! reads JSON, frames a protobuf message, and turns the gRPC answer into
//! JSON and an HTTP status.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use phivault_proto::v1 as pb;
use prost::Message;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Code;
use tonic::codegen::http;
use tonic::transport::server::TcpConnectInfo;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::call::{REQUEST_ID, new_request_id, usable_request_id};
use super::gate::GateLayer;

mod admin;

/// The gRPC methods the API's calls stand for: the names their audit
/// records, metrics and spans carry.
const TOKENIZE: &str = "/phivault.v1.Tokenizer/Tokenize";
const DETOKENIZE: &str = "/phivault.v1.Tokenizer/Detokenize";
const SERVER_INFO: &str = "/phivault.v1.Tokenizer/GetServerInfo";
const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
/// The prefix of the Admin service's methods.
const ADMIN_SERVICE: &str = "/phivault.v1.Admin/";

/// The gRPC stack an HTTP call is sent through: the same layers and
/// services the gRPC listener serves.
pub(crate) type GrpcStack = tower::util::BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    Infallible,
>;

#[derive(Clone)]
struct Api {
    grpc: GrpcStack,
    /// The gRPC port's gate, whose key check runs before a body is read.
    gate: GateLayer,
    /// Bodies read and parsed at once: each holds up to `max_body` bytes
    /// and what they parse into until its call ends, so their number is
    /// bounded as the gate bounds calls in progress.
    bodies: Arc<Semaphore>,
    max_body: usize,
    /// The Admin service takes smaller messages than the Tokenizer's.
    admin_max_body: usize,
    /// Longest reading a body, and then the call, may take.
    timeout: Duration,
    /// The OpenAPI document, as JSON.
    document: Bytes,
}

/// The document's frame: what the paths and schemas the routes bring are
/// gathered into.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "phivault HTTP/JSON API",
        description = "Tokenize and reveal PHI, and administer the vault, over HTTP/1.1 and JSON. \
Every call is transcoded into the gRPC call it stands for and passes the same authentication, \
scopes, limits and audit records. A whole call that fails answers an HTTP status and an `error` \
object; a call that ran answers 200 with one result per item, each a `text` or an `error`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    modifiers(&BearerKey),
    tags(
        (name = "tokens", description = "Tokenize values and reveal tokens."),
        (name = "admin", description = "Namespaces, clients and keys (admin scope; a client that may reveal, grant or read the trail also needs grant), and the audit trail (audit scope)."),
        (name = "service", description = "Health, server information and this document.")
    )
)]
struct Document;

/// The API key as a bearer token, the one security scheme.
struct BearerKey;

impl utoipa::Modify for BearerKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("pv_<client-id>_<secret>")
                    .build(),
            ),
        );
    }
}

/// Every route with its OpenAPI operation: one list, so that the document
/// cannot name a route the server lacks, or miss one it has.
fn routes() -> OpenApiRouter<Api> {
    OpenApiRouter::with_openapi(<Document as utoipa::OpenApi>::openapi())
        .routes(routes!(tokenize))
        .routes(routes!(detokenize))
        .routes(routes!(server_info))
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(openapi_json))
        .merge(admin::routes())
}

/// The OpenAPI 3.1 document of the API, as served at `/v1/openapi.json`
/// and checked in as `vault/openapi.json`.
pub(crate) fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut document) = routes().split_for_parts();
    document.info.version = env!("CARGO_PKG_VERSION").to_owned();
    document
}

/// The routes of the API, answering through `grpc`: a call's key is
/// checked by `gate` from its headers, then its body is read (at most
/// `max_body` bytes, or `admin_max_body` for an administrative call,
/// within `timeout`, no more than `bodies_at_once` at once), then the call
/// goes through `grpc` within `timeout`.
pub(crate) fn router(
    grpc: GrpcStack,
    gate: GateLayer,
    bodies_at_once: usize,
    (max_body, admin_max_body): (usize, usize),
    timeout: Duration,
) -> axum::Router {
    let (router, _) = routes().split_for_parts();
    // Serialising the document's strings and maps cannot fail.
    let document = Bytes::from(serde_json::to_vec_pretty(&openapi()).unwrap_or_default());
    router.with_state(Api {
        grpc,
        gate,
        bodies: Arc::new(Semaphore::new(bodies_at_once)),
        max_body,
        admin_max_body,
        timeout,
        document,
    })
}

/// Values to tokenize.
#[derive(Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct TokenizeBody {
    /// The values, in any form the namespace's format accepts.
    values: Vec<String>,
}

/// Tokens to reveal.
#[derive(Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct DetokenizeBody {
    tokens: Vec<String>,
    /// Reveal only what the format keeps in clear (e.g. an SSN's last 4
    /// digits); needs the detokenize-masked scope, or detokenize.
    #[serde(default)]
    masked: bool,
    /// The purpose of use (an HL7 PurposeOfUse code such as TREAT, HPAYMT or
    /// ETREAT), recorded with the reveal; required for clients created with
    /// require_purpose.
    #[serde(default)]
    purpose: String,
    /// The reason in words, recorded with the reveal.
    #[serde(default)]
    reason: String,
}

/// One item's answer: its text, or why it has none.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
enum Item {
    /// The token (tokenize) or the value (detokenize).
    Text(String),
    /// Why this item has no answer; the other items are answered.
    Error {
        /// A gRPC status code name, e.g. INVALID_ARGUMENT or NOT_FOUND.
        code: &'static str,
        /// What was wrong, never the item itself.
        message: String,
    },
}

/// One result per item, in the order the items were sent.
#[derive(Serialize, utoipa::ToSchema)]
struct Results {
    results: Vec<Item>,
}

/// A whole call refused or failed.
#[derive(Serialize, utoipa::ToSchema)]
struct Failure {
    error: FailureBody,
}

#[derive(Serialize, utoipa::ToSchema)]
struct FailureBody {
    /// A gRPC status code name, e.g. UNAUTHENTICATED or RESOURCE_EXHAUSTED.
    code: &'static str,
    /// What was wrong, never a value or token.
    message: String,
    /// How long to wait before a retry (also as Retry-After, in seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
}

/// What went wrong with a call, as the client sees it.
struct Refused {
    code: Code,
    message: String,
    /// The server's pushback: -1 for "do not retry as it is".
    retry_after_ms: Option<i64>,
    /// An HTTP status more precise than the code's (413, 415).
    status: Option<StatusCode>,
}

impl Refused {
    fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_ms: None,
            status: None,
        }
    }
}

/// gRPC status codes as HTTP statuses (the README's table).
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Internal | Code::Unknown | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn respond(status: StatusCode, request_id: &str, body: impl Serialize) -> Response {
    // Serialising strings, numbers and enums cannot fail.
    let json = serde_json::to_vec(&body).unwrap_or_default();
    let mut response = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        json,
    )
        .into_response();
    // Answers carry values and tokens: no cache on the way keeps them.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(id) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert(REQUEST_ID, id);
    }
    response
}

fn refused(refused: Refused, request_id: &str) -> Response {
    let status = refused.status.unwrap_or_else(|| http_status(refused.code));
    let retry_after_ms = refused.retry_after_ms.and_then(|ms| u64::try_from(ms).ok());
    let mut response = respond(
        status,
        request_id,
        Failure {
            error: FailureBody {
                code: phivault_proto::code_name(refused.code as i32),
                message: refused.message,
                retry_after_ms,
            },
        },
    );
    if let Some(ms) = retry_after_ms {
        let seconds = ms.div_ceil(1000).max(1);
        if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
    }
    if refused.code == Code::Unauthenticated {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// Parses a JSON document. An error names where it went wrong, never what
/// the document held (serde's own messages quote it).
fn json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Refused> {
    serde_json::from_slice(body).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Io | serde_json::error::Category::Eof => {
                "the JSON body ends early"
            }
            serde_json::error::Category::Syntax => "the body is not valid JSON",
            serde_json::error::Category::Data => {
                "the JSON body does not have the fields this call takes, of their types"
            }
        };
        Refused::new(
            Code::InvalidArgument,
            format!("{what} (line {}, column {})", e.line(), e.column()),
        )
    })
}

/// The caller's request id when it is one the gRPC side would keep, else
/// a new one: the id every answer of the call carries, refusals included.
fn request_id_of(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| usable_request_id(id))
        .map_or_else(new_request_id, str::to_owned)
}

impl Api {
    /// Sends `message` to gRPC method `path` as the HTTP caller, and reads
    /// the answer. Returns the answer and the request id the call ran under.
    async fn call<Req: Message, Resp: Message + Default>(
        &self,
        path: &str,
        headers: &HeaderMap,
        request_id: &str,
        peer: SocketAddr,
        message: Req,
    ) -> Result<Resp, Refused> {
        let encoded = message.encode_to_vec();
        let mut framed = Vec::with_capacity(encoded.len() + 5);
        framed.push(0);
        framed.extend_from_slice(
            &u32::try_from(encoded.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        framed.extend_from_slice(&encoded);
        let mut request = http::Request::post(path)
            .header(header::CONTENT_TYPE, "application/grpc")
            .header("te", "trailers")
            .body(tonic::body::Body::new(http_body_util::Full::new(
                Bytes::from(framed),
            )))
            .unwrap_or_default();
        if let Some(auth) = headers.get(header::AUTHORIZATION) {
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, auth.clone());
        }
        if let Ok(id) = HeaderValue::from_str(request_id) {
            request.headers_mut().insert(REQUEST_ID, id);
        }
        // The caller's trace, which the call's span joins as on gRPC.
        if let Some(parent) = headers.get("traceparent") {
            request.headers_mut().insert("traceparent", parent.clone());
        }
        request.extensions_mut().insert(TcpConnectInfo {
            local_addr: None,
            remote_addr: Some(peer),
        });
        let mut grpc = self.grpc.clone();
        let answer = tokio::time::timeout(self.timeout, async move {
            let response = tower::Service::call(&mut grpc, request).await;
            let Ok(response) = response;
            let (parts, body) = response.into_parts();
            let collected = body.collect().await;
            (parts, collected)
        })
        .await;
        let Ok((parts, collected)) = answer else {
            return Err(Refused::new(
                Code::DeadlineExceeded,
                "the call took longer than the server allows",
            ));
        };
        let Ok(collected) = collected else {
            return Err(Refused::new(Code::Unavailable, "the call was cut off"));
        };
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let data = collected.to_bytes();
        let status = tonic::Status::from_header_map(&trailers)
            .or_else(|| tonic::Status::from_header_map(&parts.headers));
        if let Some(status) = status
            && status.code() != Code::Ok
        {
            let retry_after_ms = status
                .metadata()
                .get("grpc-retry-pushback-ms")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            return Err(Refused {
                code: status.code(),
                message: status.message().to_owned(),
                retry_after_ms,
                status: None,
            });
        }
        data.get(5..)
            .and_then(|m| Resp::decode(m).ok())
            .ok_or_else(|| Refused::new(Code::Internal, "the vault's answer could not be read"))
    }
}

fn items(results: Vec<pb::ItemResult>) -> Results {
    Results {
        results: results
            .into_iter()
            .map(|r| match r.outcome {
                Some(pb::item_result::Outcome::Text(text)) => Item::Text(text),
                Some(pb::item_result::Outcome::Error(e)) => Item::Error {
                    code: phivault_proto::code_name(e.code),
                    message: e.message,
                },
                None => Item::Error {
                    code: "INTERNAL",
                    message: "no answer for this item".into(),
                },
            })
            .collect(),
    }
}

impl Api {
    /// Checks the call's key from its headers, then reads its JSON body:
    /// at most `max_body` bytes, within the timeout, under a permit held
    /// until the call ends.
    async fn admit<T: serde::de::DeserializeOwned>(
        &self,
        headers: &HeaderMap,
        peer: SocketAddr,
        body: axum::body::Body,
        max_body: usize,
    ) -> Result<(T, OwnedSemaphorePermit), Refused> {
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        self.gate
            .check(authorization, Some(peer.ip()))
            .await
            .map_err(|status| Refused::new(status.code(), status.message()))?;
        let is_json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(Refused {
                status: Some(StatusCode::UNSUPPORTED_MEDIA_TYPE),
                ..Refused::new(
                    Code::InvalidArgument,
                    "the body must be JSON (Content-Type: application/json)",
                )
            });
        }
        let too_large = || Refused {
            status: Some(StatusCode::PAYLOAD_TOO_LARGE),
            retry_after_ms: Some(-1),
            ..Refused::new(
                Code::ResourceExhausted,
                format!(
                    "the body is larger than the server takes ({} bytes)",
                    max_body
                ),
            )
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > max_body) {
            return Err(too_large());
        }
        let Ok(permit) = Arc::clone(&self.bodies).try_acquire_owned() else {
            return Err(Refused::new(
                Code::Unavailable,
                "the vault is at its limit of calls in progress; retry with backoff",
            ));
        };
        let read = tokio::time::timeout(
            self.timeout,
            http_body_util::Limited::new(body, max_body).collect(),
        )
        .await;
        let bytes = match read {
            Err(_) => {
                return Err(Refused::new(
                    Code::DeadlineExceeded,
                    "the body took longer to arrive than the server allows",
                ));
            }
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
            Ok(Err(_)) => {
                return Err(Refused::new(
                    Code::InvalidArgument,
                    "the body could not be read",
                ));
            }
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        Ok((json(&bytes)?, permit))
    }
}

/// One call: its key checked and its JSON body read into `T` when it takes
/// one (`body`), the request `make` builds sent to gRPC method `path`, and
/// the answer `out` makes of the reply sent back as JSON. A call without a
/// body leaves its key to the gate on the way.
async fn unary<T, Req, Resp, Out>(
    api: &Api,
    headers: &HeaderMap,
    peer: SocketAddr,
    body: Option<axum::body::Body>,
    path: &str,
    make: impl FnOnce(T) -> Req,
    out: impl FnOnce(Resp) -> Out,
) -> Response
where
    T: serde::de::DeserializeOwned + Default,
    Req: Message,
    Resp: Message + Default,
    Out: Serialize,
{
    let id = request_id_of(headers);
    let answer = async {
        let max_body = if path.starts_with(ADMIN_SERVICE) {
            api.admin_max_body
        } else {
            api.max_body
        };
        let (request, _permit) = match body {
            Some(body) => {
                let (parsed, permit) = api.admit::<T>(headers, peer, body, max_body).await?;
                (make(parsed), Some(permit))
            }
            None => (make(T::default()), None),
        };
        api.call::<_, Resp>(path, headers, &id, peer, request).await
    }
    .await;
    match answer {
        Ok(answer) => respond(StatusCode::OK, &id, out(answer)),
        Err(e) => refused(e, &id),
    }
}

/// Gives every value a token in `namespace`.
///
/// The same value always gets the same token in a deterministic namespace.
/// Needs the `tokenize:<namespace>` scope; with `lookup:<namespace>`
/// instead, only values already in the vault are answered (any other is the
/// item error NOT_FOUND, and nothing is written).
#[utoipa::path(
    post,
    path = "/v1/namespaces/{namespace}/tokenize",
    tag = "tokens",
    params(("namespace" = String, Path, description = "The namespace, e.g. ssn")),
    request_body = TokenizeBody,
    responses(
        (status = 200, description = "One token or item error per value", body = Results),
        (status = "4XX", description = "The call was refused", body = Failure),
        (status = "5XX", description = "The call failed", body = Failure),
    ),
    security(("api_key" = []))
)]
async fn tokenize(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(namespace): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    unary(
        &api,
        &headers,
        peer,
        Some(body),
        TOKENIZE,
        |b: TokenizeBody| pb::TokenizeRequest {
            namespace,
            values: b.values,
        },
        |r: pb::TokenizeResponse| items(r.results),
    )
    .await
}

/// Reveals every token in `namespace`, in full or masked.
///
/// Every reveal is recorded in the audit trail before the answer leaves.
/// Needs `detokenize:<namespace>` (or `detokenize-masked:<namespace>` for a
/// masked reveal).
#[utoipa::path(
    post,
    path = "/v1/namespaces/{namespace}/detokenize",
    tag = "tokens",
    params(("namespace" = String, Path, description = "The namespace, e.g. ssn")),
    request_body = DetokenizeBody,
    responses(
        (status = 200, description = "One value or item error per token", body = Results),
        (status = "4XX", description = "The call was refused", body = Failure),
        (status = "5XX", description = "The call failed", body = Failure),
    ),
    security(("api_key" = []))
)]
async fn detokenize(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(namespace): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    unary(
        &api,
        &headers,
        peer,
        Some(body),
        DETOKENIZE,
        |b: DetokenizeBody| pb::DetokenizeRequest {
            namespace,
            tokens: b.tokens,
            masked: b.masked,
            purpose: b.purpose,
            reason: b.reason,
        },
        |r: pb::DetokenizeResponse| items(r.results),
    )
    .await
}

/// What the server runs and the limits it applies to a call.
#[derive(Serialize, utoipa::ToSchema)]
struct ServerInfo {
    version: String,
    /// The gRPC services it serves.
    apis: Vec<String>,
    /// rocksdb or postgres.
    store: String,
    max_message_bytes: u64,
    /// Most values or tokens one call takes.
    max_items: u32,
    max_value_bytes: u32,
}

/// The server's version, storage and limits; any valid key may ask.
#[utoipa::path(
    get,
    path = "/v1/server-info",
    tag = "service",
    responses(
        (status = 200, description = "The server's version, storage and limits", body = ServerInfo),
        (status = "4XX", description = "The call was refused", body = Failure),
        (status = "5XX", description = "The call failed", body = Failure),
    ),
    security(("api_key" = []))
)]
async fn server_info(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    unary(
        &api,
        &headers,
        peer,
        None,
        SERVER_INFO,
        |()| pb::GetServerInfoRequest {},
        |i: pb::GetServerInfoResponse| ServerInfo {
            version: i.version,
            apis: i.apis,
            store: i.store,
            max_message_bytes: i.max_message_bytes,
            max_items: i.max_items,
            max_value_bytes: i.max_value_bytes,
        },
    )
    .await
}

/// What the health service says.
#[derive(Serialize, utoipa::ToSchema)]
struct Health {
    /// SERVING, or NOT_SERVING (answered with 503).
    status: &'static str,
}

/// Asks the gRPC health service about `service`: 200 when it serves, 503
/// when not. Needs no key, as on gRPC.
async fn health_of(api: &Api, headers: &HeaderMap, peer: SocketAddr, service: &str) -> Response {
    use tonic_health::pb::health_check_response::ServingStatus;
    let id = request_id_of(headers);
    let request = tonic_health::pb::HealthCheckRequest {
        service: service.to_owned(),
    };
    let answer = api
        .call::<_, tonic_health::pb::HealthCheckResponse>(HEALTH_CHECK, headers, &id, peer, request)
        .await;
    match answer {
        Ok(answer) if answer.status() == ServingStatus::Serving => {
            respond(StatusCode::OK, &id, Health { status: "SERVING" })
        }
        Ok(_) => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            &id,
            Health {
                status: "NOT_SERVING",
            },
        ),
        Err(e) => refused(e, &id),
    }
}

/// Liveness: 200 while the process serves at all (restarting it would not
/// bring a lost disk or database back).
#[utoipa::path(
    get,
    path = "/v1/health",
    tag = "service",
    responses(
        (status = 200, description = "The process serves", body = Health),
        (status = 503, description = "It does not", body = Health),
    ),
    security(())
)]
async fn health(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    health_of(&api, &headers, peer, "").await
}

/// Readiness: 503 while commits fail (every reveal then fails closed), so
/// that a load balancer sends callers to another node.
#[utoipa::path(
    get,
    path = "/v1/health/ready",
    tag = "service",
    responses(
        (status = 200, description = "Tokenize and detokenize can be answered", body = Health),
        (status = 503, description = "The write path is down", body = Health),
    ),
    security(())
)]
async fn ready(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let service = <pb::tokenizer_server::TokenizerServer<super::tokenizer::TokenizerService> as tonic::server::NamedService>::NAME;
    health_of(&api, &headers, peer, service).await
}

/// This document (OpenAPI 3.1); needs no key.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "service",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json")),
    security(())
)]
async fn openapi_json(State(api): State<Api>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        api.document.clone(),
    )
        .into_response()
}

/// What an HTTP connection may make the server hold.
#[derive(Clone, Copy)]
pub(crate) struct HttpLimits {
    /// Longest a request's headers may take to arrive.
    pub(crate) header_read_timeout: Duration,
    /// Largest buffer of request headers (hyper takes no less than 8 KiB).
    pub(crate) max_header_bytes: usize,
    /// Longest the server waits, once stopping, for calls in progress.
    pub(crate) drain: Duration,
}

/// Serves the API on each connection of `incoming` (admitted, and under TLS
/// handshaken, as the gRPC listener's are) until `stop` turns true; then
/// answers the requests in progress and returns.
pub(crate) async fn serve<I>(
    incoming: impl futures_util::Stream<Item = Result<(I, Option<SocketAddr>), std::io::Error>>
    + Send
    + 'static,
    router: axum::Router,
    limits: HttpLimits,
    stop: tokio::sync::watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use futures_util::StreamExt as _;
    // Boxed, so that dropping it closes the listener.
    let mut incoming = Box::pin(incoming);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let next = tokio::select! {
            next = incoming.next() => next,
            // Finished connections are let go as they end.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = stopped(stop.clone()) => break,
        };
        let Some(next) = next else { break };
        // A connection that failed its opening or handshake is gone already.
        let Ok((io, peer)) = next else { continue };
        let peer = peer.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        let router = router.clone();
        let service = hyper_util::service::TowerToHyperService::new(
            tower::ServiceBuilder::new()
                .map_request(move |mut request: http::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    request
                })
                .service(router),
        );
        let stop = stop.clone();
        connections.spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_header_bytes.max(8192))
                .serve_connection(hyper_util::rt::TokioIo::new(io), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = stopped(stop) => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    // No new connection from here; the calls in progress are answered, for
    // as long as a call may take, and what is left then is cut.
    drop(incoming);
    let drained = tokio::time::timeout(limits.drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.shutdown().await;
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    /// Where the document is checked in, for readers and generators of
    /// clients who do not run a server.
    const CHECKED_IN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");

    #[test]
    fn the_checked_in_openapi_document_is_the_one_the_server_serves() {
        let generated = serde_json::to_string_pretty(&super::openapi()).expect("a document") + "\n";
        if std::env::var_os("PHIVAULT_WRITE_OPENAPI").is_some() {
            std::fs::write(CHECKED_IN, &generated).expect("write vault/openapi.json");
            return;
        }
        let checked_in = std::fs::read_to_string(CHECKED_IN).unwrap_or_default();
        assert!(
            checked_in == generated,
            "vault/openapi.json is not the API's document; write it again with \
             `PHIVAULT_WRITE_OPENAPI=1 cargo test -p phivault --lib openapi`"
        );
    }

    #[test]
    fn the_document_is_openapi_3_1_and_every_operation_says_who_may_call_it() {
        let document = serde_json::to_value(super::openapi()).expect("a document");
        assert_eq!(document["openapi"], "3.1.0");
        let paths = document["paths"].as_object().expect("paths");
        assert!(paths.len() >= 15, "{} paths", paths.len());
        for (path, item) in paths {
            for (method, operation) in item.as_object().expect("a path item") {
                assert!(
                    operation.get("security").is_some(),
                    "{method} {path} does not say whether it needs a key"
                );
                assert!(
                    operation["responses"].get("200").is_some(),
                    "{method} {path} has no 200 answer"
                );
            }
        }
    }
}
