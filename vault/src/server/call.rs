//! One call as the audit trail sees it: the RPC, the request id and the
//! caller, and the record written for it before it is answered.

use std::sync::Arc;

use tonic::codegen::http;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use super::gate::{self, Gated};
use super::refusals::Refusals;
use super::status;
use crate::auth::{self, Action, Client};
use crate::{AuditEvent, NamespaceSpec, Vault};

/// The metadata key of the request id, read from the caller when it sends
/// one and echoed in every response.
pub(crate) const REQUEST_ID: &str = "x-request-id";
/// Longest request id taken from a caller; a longer or odd one is replaced.
const MAX_REQUEST_ID: usize = 64;

/// The gRPC method of a call (`/package.Service/Method`), put into the
/// request's extensions by [`tag_method`]: tonic hands a handler the message
/// and metadata, not the path.
#[derive(Clone)]
struct Method(String);

/// Records the request path for the audit trail. The router only reaches a
/// handler for a path it serves, so the tag names a real method.
pub(crate) fn tag_method<B>(mut request: http::Request<B>) -> http::Request<B> {
    let path = request.uri().path().to_owned();
    request.extensions_mut().insert(Method(path));
    request
}

/// The context of one call.
pub(crate) struct Call {
    rpc: String,
    request_id: String,
    authorization: Option<String>,
    peer: Option<std::net::IpAddr>,
    /// Where refusals are tallied; `None` only for a call that did not come
    /// through the gate (which then fails closed).
    refusals: Option<Arc<Refusals>>,
}

impl Call {
    /// Reads the method, the `authorization` metadata and the caller's
    /// request id (or makes one up).
    pub(crate) fn of<T>(request: &Request<T>) -> Self {
        let rpc = request
            .extensions()
            .get::<Method>()
            .map(|m| m.0.clone())
            .unwrap_or_default();
        let metadata = request.metadata();
        let request_id = metadata
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|id| usable_request_id(id))
            .map_or_else(new_request_id, str::to_owned);
        let authorization = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let refusals = request
            .extensions()
            .get::<Gated>()
            .map(|a| Arc::clone(&a.refusals));
        Self {
            rpc,
            request_id,
            authorization,
            peer: gate::peer_ip(request.extensions()),
            refusals,
        }
    }

    /// The peer's address.
    pub(crate) fn peer(&self) -> Option<std::net::IpAddr> {
        self.peer
    }

    /// The caller's `authorization` metadata.
    pub(crate) fn authorization(&self) -> Option<&str> {
        self.authorization.as_deref()
    }

    /// `body` with the request id in its metadata.
    pub(crate) fn respond<T>(&self, body: T) -> Response<T> {
        let mut response = Response::new(body);
        if let Ok(id) = MetadataValue::try_from(self.request_id.as_str()) {
            response.metadata_mut().insert(REQUEST_ID, id);
        }
        response
    }

    /// `status` with the request id in its metadata.
    pub(crate) fn fail(&self, mut status: Status) -> Status {
        if let Ok(id) = MetadataValue::try_from(self.request_id.as_str()) {
            status.metadata_mut().insert(REQUEST_ID, id);
        }
        status
    }

    /// Authenticates the caller and checks that it may perform `action` on
    /// `items` items. A permission refusal is recorded before it is
    /// answered (if the record cannot be written the caller gets
    /// `UNAVAILABLE` instead); an unauthenticated one is tallied.
    pub(crate) async fn authorize(
        &self,
        vault: &Vault,
        action: Action<'_>,
        items: usize,
    ) -> Result<Arc<Client>, Status> {
        let namespace = match action {
            Action::Tokenize(ns)
            | Action::Detokenize(ns)
            | Action::DetokenizeMasked(ns)
            | Action::BreakGlass { namespace: ns, .. } => ns,
            Action::Admin | Action::Audit | Action::Grant => "",
        };
        let refused = AuditEvent {
            namespace: namespace.to_owned(),
            items: count(items),
            masked: matches!(
                action,
                Action::DetokenizeMasked(_) | Action::BreakGlass { masked: true, .. }
            ),
            ..AuditEvent::default()
        };
        // Another node may have revoked this client, created it, or
        // rotated the keysets since this node last looked.
        if let Err(e) = vault.refresh().await {
            return Err(self.fail(Status::from(e)));
        }
        let client = self.authenticate(vault)?;
        if let Some((_, why)) = &client.suspended {
            tracing::info!(client_id = %client.id, request_id = %self.request_id, "suspended client refused");
            // The kind only: the figures that decided it would tell a
            // caller how to pace itself below them.
            let kind = why.split(':').next().unwrap_or("an alert");
            let status = Status::permission_denied(format!(
                "this client is suspended by anomaly detection ({kind}); an administrator releases it after review (pvc clients release {})",
                client.id
            ));
            let event = AuditEvent {
                client_id: client.id.clone(),
                authenticated: true,
                ..refused
            };
            return Err(self.finish_event(vault, event, &status).await);
        }
        if !client.allows(action) {
            let (kind, namespace_bytes) = match action {
                Action::Tokenize(ns) => ("tokenize", ns.len()),
                Action::Detokenize(ns) => ("detokenize", ns.len()),
                Action::DetokenizeMasked(ns) => ("detokenize-masked", ns.len()),
                Action::BreakGlass { namespace, .. } => ("break-glass", namespace.len()),
                Action::Admin => ("admin", 0),
                Action::Audit => ("audit", 0),
                Action::Grant => ("grant", 0),
            };
            tracing::info!(client_id = %client.id, request_id = %self.request_id, action = kind, namespace_bytes, "permission denied");
            let what = match action {
                Action::Tokenize(ns) => format!("tokenize in namespace {}", shown(ns)),
                Action::Detokenize(ns) => format!("detokenize in namespace {}", shown(ns)),
                Action::DetokenizeMasked(ns) => {
                    format!("detokenize (masked) in namespace {}", shown(ns))
                }
                Action::BreakGlass { namespace, .. } => format!(
                    "detokenize, even for an emergency, in namespace {}",
                    shown(namespace)
                ),
                Action::Admin => "administer the vault".into(),
                Action::Audit => "read the audit trail".into(),
                Action::Grant => {
                    "grant a reveal (the grant scope, which admin does not imply)".into()
                }
            };
            let status = Status::permission_denied(format!("this client may not {what}"));
            let event = AuditEvent {
                client_id: client.id.clone(),
                authenticated: true,
                ..refused
            };
            return Err(self.finish_event(vault, event, &status).await);
        }
        Ok(client)
    }

    /// The gate authenticated the call before its body was read; this
    /// checks the key again for each message of a stream, so that a client
    /// revoked while its stream is open is stopped. A refusal is tallied
    /// like the gate's (see [`Refusals`]), not written per message.
    pub(crate) fn authenticate(&self, vault: &Vault) -> Result<Arc<Client>, Status> {
        let Some(refusals) = &self.refusals else {
            tracing::error!(rpc = %self.rpc, "a keyed call reached its handler without passing the gate; refused");
            return Err(self.fail(Status::internal("internal error")));
        };
        match vault.authenticate(self.authorization()) {
            Ok(client) => Ok(client),
            Err(e) => {
                let claimed = auth::claimed_client_id(self.authorization()).unwrap_or_default();
                refusals.count(self.peer, claimed, e);
                Err(self.fail(status::unauthenticated(e)))
            }
        }
    }

    /// Records what an authorised call did and returns its answer, or
    /// `UNAVAILABLE` if the record cannot be written (fail closed: the
    /// result is dropped unseen). `subject` carries the namespace, target,
    /// items and token marks; the rest is filled in here.
    pub(crate) async fn finish<T>(
        &self,
        vault: &Vault,
        client: &Client,
        subject: AuditEvent,
        result: Result<T, Status>,
    ) -> Result<T, Status> {
        let event = AuditEvent {
            client_id: client.id.clone(),
            authenticated: true,
            ..subject
        };
        match result {
            Ok(answer) => {
                let event = AuditEvent {
                    outcome: 0,
                    ..event
                };
                self.write(vault, event).await.map(|()| answer)
            }
            Err(status) => Err(self.finish_event(vault, event, &status).await),
        }
    }

    /// The record of an authorised call that succeeds, for the vault to
    /// append in the same commit as the change it describes.
    pub(crate) fn success_record(&self, client: &Client, subject: AuditEvent) -> AuditEvent {
        AuditEvent {
            client_id: client.id.clone(),
            authenticated: true,
            outcome: 0,
            rpc: self.rpc.clone(),
            request_id: self.request_id.clone(),
            namespace: recorded_namespace(&subject.namespace),
            ..subject
        }
    }

    /// Records a call that ends in `status`; returns the status to send.
    async fn finish_event(&self, vault: &Vault, event: AuditEvent, status: &Status) -> Status {
        let event = AuditEvent {
            outcome: status.code() as i32,
            ..event
        };
        match self.write(vault, event).await {
            Ok(()) => self.fail(status.clone()),
            Err(unavailable) => unavailable,
        }
    }

    async fn write(&self, vault: &Vault, event: AuditEvent) -> Result<(), Status> {
        // Every record's namespace passes here: whatever path filled it in,
        // a caller's invalid name is stored by its length only.
        let event = AuditEvent {
            rpc: self.rpc.clone(),
            request_id: self.request_id.clone(),
            namespace: recorded_namespace(&event.namespace),
            ..event
        };
        vault
            .audit(&event)
            .await
            .map(drop)
            .map_err(|e| self.fail(Status::from(e)))
    }
}

/// A caller-supplied namespace as the audit trail records it: as given
/// when it is a valid name, otherwise only its length, so that a caller
/// cannot make the server store (or echo) arbitrary bytes.
fn recorded_namespace(namespace: &str) -> String {
    if namespace.is_empty() {
        String::new()
    } else {
        crate::namespace::shown_name(namespace)
    }
}

/// A namespace as an error message may show it.
fn shown(namespace: &str) -> String {
    if NamespaceSpec::valid_name(namespace) {
        format!("{namespace:?}")
    } else {
        format!("(an invalid name of {} bytes)", namespace.len())
    }
}

/// An item count as the record stores it.
pub(crate) fn count(items: usize) -> u32 {
    u32::try_from(items).unwrap_or(u32::MAX)
}

/// Whether a caller's request id is kept as it is: short, and of characters
/// that are safe in a log line and a header.
pub(crate) fn usable_request_id(id: &str) -> bool {
    (1..=MAX_REQUEST_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

/// A request id unique among every call the process serves: a random
/// per-process prefix and a counter. Uniqueness, not secrecy, is what a
/// request id needs, so a call costs no trip to the OS RNG.
pub(crate) fn new_request_id() -> String {
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let mut bytes = [0u8; 8];
        if crate::crypto::fill_random(&mut bytes).is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            bytes = nanos.to_be_bytes();
        }
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    });
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}{n:016x}")
}
