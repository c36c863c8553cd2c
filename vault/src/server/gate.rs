//! The gate every call passes before its body is read: authentication from
//! the headers, and the server-wide limit on calls in progress.
//!
//! Authenticating here, before tonic decodes a message, means that a peer
//! without a key never makes the server buffer, decode or record what it
//! sent: it is answered `UNAUTHENTICATED` from the headers alone, and its
//! refusal is counted in memory ([`Refusals`]) rather than written per call.
//! A call that passes is marked [`Gated`]; its handler checks the key again
//! (for each message of a stream, so that a revocation stops an open one).

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::Semaphore;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::refusals::Refusals;
use super::status;
use crate::Vault;
use crate::auth::{self, AuthError};

/// The mark of a call that passed the gate, in the request's extensions:
/// where the handler tallies a refusal if a later message of a stream finds
/// the key revoked.
#[derive(Clone)]
pub(crate) struct Gated {
    pub(crate) refusals: Arc<Refusals>,
}

/// The only services that answer without an API key: probes and tools carry
/// none, and these reveal nothing. Every other path needs a key, so that a
/// service added later is closed until it is listed here.
const PUBLIC_SERVICES: [&str; 2] = [
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
];

/// What the gate needs: the vault to authenticate against, the refusal
/// tallies, and the permits for calls in progress.
#[derive(Clone)]
pub(crate) struct GateLayer {
    pub(crate) vault: Arc<Vault>,
    pub(crate) refusals: Arc<Refusals>,
    pub(crate) in_progress: Arc<Semaphore>,
}

impl GateLayer {
    /// The key check a call gets from its headers alone, for a listener
    /// that must refuse before it reads a body (the HTTP/JSON API): the
    /// same authentication, look again for a key another node made, and
    /// refusal tally as a gRPC call at the gate.
    pub(crate) async fn check(
        &self,
        authorization: Option<&str>,
        peer: Option<IpAddr>,
    ) -> Result<(), Status> {
        let Err(e) = self.vault.authenticate(authorization) else {
            return Ok(());
        };
        let e = if self.vault.shares_storage() && e == AuthError::Unknown {
            // A key another node created since this one read the clients:
            // look again (one small read, no body read) before refusing.
            // Not logged per call: a flood of made-up keys while the
            // database is away must not fill the log.
            if self.vault.refresh_for_unknown_key().await.is_err() {
                return Err(Status::unavailable(
                    "the vault cannot reach its storage; retry with backoff",
                ));
            }
            match self.vault.authenticate(authorization) {
                Ok(_) => return Ok(()),
                Err(e) => e,
            }
        } else {
            e
        };
        Err(self.refused(authorization, peer, e))
    }

    /// Tallies the refusal of a call's key, and the status it gets.
    fn refused(&self, authorization: Option<&str>, peer: Option<IpAddr>, e: AuthError) -> Status {
        let claimed = auth::claimed_client_id(authorization).unwrap_or_default();
        self.refusals.count(peer, claimed, e);
        status::unauthenticated(e)
    }
}

impl<S> tower::Layer<S> for GateLayer {
    type Service = Gate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Gate {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Gate<S> {
    inner: S,
    layer: GateLayer,
}

/// The peer's address, as tonic records it for plaintext and TLS
/// connections.
pub(crate) fn peer_ip(extensions: &http::Extensions) -> Option<IpAddr> {
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.get_ref().remote_addr())
        })
        .map(|a| a.ip())
}

/// What the gate hands back for a call: the service's answer, or its own.
type Answer<E> = Pin<Box<dyn Future<Output = Result<http::Response<Body>, E>> + Send>>;

fn refuse(status: Status) -> http::Response<Body> {
    status.into_http()
}

impl<S> tower::Service<http::Request<Body>> for Gate<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let path = request.uri().path();
        if PUBLIC_SERVICES.iter().any(|s| path.starts_with(s)) {
            return Box::pin(self.inner.call(request));
        }
        let header = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        // Authenticate first, so that a refusal is tallied even when the
        // vault is at its limit.
        if let Err(e) = self.layer.vault.authenticate(header) {
            if self.layer.vault.shares_storage() && e == AuthError::Unknown {
                return self.call_after_refresh(request);
            }
            let status = self.layer.refused(header, peer_ip(request.extensions()), e);
            // The body is dropped unread: hyper resets the stream.
            return Box::pin(std::future::ready(Ok(refuse(status))));
        }
        self.admit(request)
    }
}

impl<S> Gate<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    /// Checks the key again once the registry was read again
    /// ([`GateLayer::check`]), then admits or refuses.
    fn call_after_refresh(&mut self, request: http::Request<Body>) -> Answer<S::Error> {
        // The service that was polled ready goes with the call; this gate
        // keeps a fresh clone for the next.
        let ready = self.inner.clone();
        let mut gate = Self {
            inner: std::mem::replace(&mut self.inner, ready),
            layer: self.layer.clone(),
        };
        Box::pin(async move {
            let header = request
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            match gate
                .layer
                .check(header, peer_ip(request.extensions()))
                .await
            {
                Ok(()) => gate.admit(request).await,
                Err(status) => Ok(refuse(status)),
            }
        })
    }

    /// Lets an authenticated call in, or sheds it when too many are in
    /// progress.
    fn admit(&mut self, mut request: http::Request<Body>) -> Answer<S::Error> {
        // Shed rather than queue: a call that cannot start now is answered
        // at once, so that a burst costs memory for permits, not for bodies.
        let Ok(permit) = Arc::clone(&self.layer.in_progress).try_acquire_owned() else {
            return Box::pin(std::future::ready(Ok(refuse(Status::unavailable(
                "the vault is at its limit of calls in progress; retry with backoff",
            )))));
        };
        request.extensions_mut().insert(Gated {
            refusals: Arc::clone(&self.layer.refusals),
        });
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            drop(permit);
            response
        })
    }
}
