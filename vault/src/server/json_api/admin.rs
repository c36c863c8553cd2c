//! The administration calls users need over HTTP: namespaces, clients and
//! their keys, keysets and rotation, and the audit trail's verification and
//! disclosures. Each stands for the `phivault.v1.Admin` call of the same
//! name and answers its message as JSON with the proto's field names.
//!
//! Not here, on purpose: `Backup` writes to a path on the server's own disk
//! and `ExportAudit` streams the whole trail; both are operators' commands
//! (`phivault-client admin backup`, `audit export`) over gRPC.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use phivault_proto::v1 as pb;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ADMIN_SERVICE, Api, Failure, unary};

/// The gRPC method `name` of the Admin service.
fn method(name: &str) -> String {
    format!("{ADMIN_SERVICE}{name}")
}

pub(super) fn routes() -> OpenApiRouter<Api> {
    OpenApiRouter::new()
        .routes(routes!(list_namespaces, create_namespace))
        .routes(routes!(list_clients, create_client))
        .routes(routes!(revoke_client))
        .routes(routes!(release_client))
        .routes(routes!(rotate_client_key))
        .routes(routes!(key_status))
        .routes(routes!(rotate_keys))
        .routes(routes!(verify_audit))
        .routes(routes!(list_disclosures))
}

/// The namespaces, their formats and options.
#[utoipa::path(
    get,
    path = "/v1/namespaces",
    tag = "admin",
    responses(
        (status = 200, description = "Every namespace", body = pb::ListNamespacesResponse),
        (status = "4XX", description = "The call was refused", body = Failure),
        (status = "5XX", description = "The call failed", body = Failure),
    ),
    security(("api_key" = []))
)]
async fn list_namespaces(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    unary(
        &api,
        &headers,
        peer,
        None,
        &method("ListNamespaces"),
        |()| pb::ListNamespacesRequest {},
        |r: pb::ListNamespacesResponse| r,
    )
    .await
}

/// Creates a namespace: a name, a format (ssn, card, phone, email, date,
/// name, alnum or opaque) and its options. A namespace cannot be changed
/// once it holds tokens.
#[utoipa::path(
    post,
    path = "/v1/namespaces",
    tag = "admin",
    request_body = pb::CreateNamespaceRequest,
    responses(
        (status = 200, description = "The namespace created", body = pb::Namespace),
        (status = "4XX", description = "The call was refused", body = Failure),
        (status = "5XX", description = "The call failed", body = Failure),
    ),
    security(("api_key" = []))
)]
async fn create_namespace(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    unary(
        &api,
        &headers,
        peer,
        Some(body),
        &method("CreateNamespace"),
        |r: pb::CreateNamespaceRequest| r,
        |r: pb::Namespace| r,
    )
    .await
}

/// The clients, their scopes, limits and state (never their keys).
#[utoipa::path(
    get,
    path = "/v1/clients",
    tag = "admin",
    responses(
        (status = 200, description = "Every client", body = pb::ListClientsResponse),
        (status = "4XX", description = "The call was refused", body = Failure),
        (status = "5XX", description = "The call failed", body = Failure),
    ),
    security(("api_key" = []))
)]
async fn list_clients(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    unary(
        &api,
        &headers,
        peer,
        None,
        &method("ListClients"),
        |()| pb::ListClientsRequest {},
        |r: pb::ListClientsResponse| r,
    )
    .await
}

/// Creates a client and answers its API key, shown this once and never
/// stored. A client that may reveal, grant or read the trail needs a caller
/// holding the grant scope too.
#[utoipa::path(
    post,
    path = "/v1/clients",
    tag = "admin",
    request_body = pb::CreateClientRequest,
    responses(
        (status = 200, description = "The client and its API key", body = pb::CreateClientResponse),
        (status = "4XX", description = "The call was refused", body = Failure),
        (status = "5XX", description = "The call failed", body = Failure),
    ),
    security(("api_key" = []))
)]
async fn create_client(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    unary(
        &api,
        &headers,
        peer,
        Some(body),
        &method("CreateClient"),
        |r: pb::CreateClientRequest| r,
        |r: pb::CreateClientResponse| r,
    )
    .await
}

/// Revokes a client: its next call, on every node, is refused.
#[utoipa::path(
    post,
    path = "/v1/clients/{client_id}/revoke",
    tag = "admin",
    params(("client_id" = String, Path, description = "The client's id")),
    responses(
        (status = 200, description = "The client, revoked", body = pb::Client),
        (status = "4XX", description = "The call was refused", body = Failure),
        (status = "5XX", description = "The call failed", body = Failure),
    ),
    security(("api_key" = []))
)]
async fn revoke_client(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(client_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    unary(
        &api,
        &headers,
        peer,
        None,
        &method("RevokeClient"),
        |()| pb::RevokeClientRequest { client_id },
        |r: pb::Client| r,
    )
    .await
}

/// Re-arms a client whose break-glass window opened, or lifts a suspension
/// by anomaly detection, after review. Releasing a client that may reveal,
/// grant or read the trail also needs the grant scope.
#[utoipa::path(
    post,
    path = "/v1/clients/{client_id}/release",
    tag = "admin",
    params(("client_id" = String, Path, description = "The client's id")),
    responses(
        (status = 200, description = "The client, released", body = pb::Client),
        (status = "4XX", description = "The call was refused", body = Failure),
        (status = "5XX", description = "The call failed", body = Failure),
    ),
    security(("api_key" = []))
)]
async fn release_client(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(client_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    unary(
        &api,
        &headers,
        peer,
        None,
        &method("ReleaseClient"),
        |()| pb::ReleaseClientRequest { client_id },
        |r: pb::Client| r,
    )
    .await
}

/// How long the key a rotation retires is still accepted.
#[derive(Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RotateClientKeyBody {
    /// Seconds; left out: 86400 (a day); 0: not at all.
    grace_secs: Option<u64>,
}

/// Gives a client a new API key, shown this once; the old key is still
/// accepted for the grace period. The body is JSON, `{}` for the default
/// grace. Re-keying a client that may reveal, grant or read the trail also
/// needs the grant scope.
#[utoipa::path(
    post,
    path = "/v1/clients/{client_id}/rotate-key",
    tag = "admin",
    params(("client_id" = String, Path, description = "The client's id")),
    request_body = RotateClientKeyBody,
    responses(
        (status = 200, description = "The client and its new API key", body = pb::CreateClientResponse),
        (status = "4XX", description = "The call was refused", body = Failure),
        (status = "5XX", description = "The call failed", body = Failure),
    ),
    security(("api_key" = []))
)]
async fn rotate_client_key(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(client_id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    unary(
        &api,
        &headers,
        peer,
        Some(body),
        &method("RotateClientKey"),
        |b: RotateClientKeyBody| pb::RotateClientKeyRequest {
            client_id,
            grace_secs: b.grace_secs,
        },
        |r: pb::CreateClientResponse| r,
    )
    .await
}

/// The keyset versions, the rotation in progress and the last one finished.
#[utoipa::path(
    get,
    path = "/v1/keys",
    tag = "admin",
    responses(
        (status = 200, description = "The keysets and rotations", body = pb::KeyStatus),
        (status = "4XX", description = "The call was refused", body = Failure),
        (status = "5XX", description = "The call failed", body = Failure),
    ),
    security(("api_key" = []))
)]
async fn key_status(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    unary(
        &api,
        &headers,
        peer,
        None,
        &method("GetKeyStatus"),
        |()| pb::GetKeyStatusRequest {},
        |r: pb::KeyStatus| r,
    )
    .await
}

/// Creates the next keyset version, active for new writes at once, and
/// starts moving every mapping to it; tokens never change. Refused (400,
/// FAILED_PRECONDITION) while a rotation runs.
#[utoipa::path(
    post,
    path = "/v1/keys/rotate",
    tag = "admin",
    responses(
        (status = 200, description = "The version now active", body = pb::RotateKeysResponse),
        (status = "4XX", description = "The call was refused", body = Failure),
        (status = "5XX", description = "The call failed", body = Failure),
    ),
    security(("api_key" = []))
)]
async fn rotate_keys(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    unary(
        &api,
        &headers,
        peer,
        None,
        &method("RotateKeys"),
        |()| pb::RotateKeysRequest {},
        |r: pb::RotateKeysResponse| r,
    )
    .await
}

/// Walks the audit hash chain from its first record to its head (audit
/// scope). A POST: the walk reads the whole trail.
#[utoipa::path(
    post,
    path = "/v1/audit/verify",
    tag = "admin",
    responses(
        (status = 200, description = "How far the chain verified", body = pb::VerifyAuditResponse),
        (status = "4XX", description = "The call was refused", body = Failure),
        (status = "5XX", description = "The call failed", body = Failure),
    ),
    security(("api_key" = []))
)]
async fn verify_audit(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    unary(
        &api,
        &headers,
        peer,
        None,
        &method("VerifyAudit"),
        |()| pb::VerifyAuditRequest {},
        |r: pb::VerifyAuditResponse| r,
    )
    .await
}

/// Which token's disclosures to list. The token travels in the body, not
/// the URL, so that no proxy or access log on the way keeps it.
#[derive(Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct DisclosuresBody {
    /// In any form the namespace's format accepts.
    token: String,
    /// Disclosures after this sequence number only (the previous page's
    /// next_after_seq); 0 or left out: from the start.
    #[serde(default)]
    after_seq: u64,
    /// At most this many; 0 or left out: 1000.
    #[serde(default)]
    limit: u32,
}

/// Every call that revealed a token, in full or masked, oldest first, on
/// any node and across key rotations (audit scope).
#[utoipa::path(
    post,
    path = "/v1/namespaces/{namespace}/disclosures/search",
    tag = "admin",
    params(("namespace" = String, Path, description = "The token's namespace")),
    request_body = DisclosuresBody,
    responses(
        (status = 200, description = "A page of disclosures", body = pb::ListDisclosuresResponse),
        (status = "4XX", description = "The call was refused", body = Failure),
        (status = "5XX", description = "The call failed", body = Failure),
    ),
    security(("api_key" = []))
)]
async fn list_disclosures(
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
        &method("ListDisclosures"),
        |b: DisclosuresBody| pb::ListDisclosuresRequest {
            namespace,
            token: b.token,
            after_seq: b.after_seq,
            limit: b.limit,
        },
        |r: pb::ListDisclosuresResponse| r,
    )
    .await
}
