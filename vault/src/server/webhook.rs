//! Alerts sent to a webhook: each alert as a JSON POST, signed with
//! HMAC-SHA256 so that the receiver can tell it came from the vault and was
//! not replayed, retried with backoff when the receiver is down.
//!
//! The request: `POST URL` with `content-type: application/json`,
//! `x-phivault-timestamp: <seconds since the Unix epoch>` and
//! `x-phivault-signature: sha256=<hex>`, the hex of HMAC-SHA256 under the
//! secret of the timestamp, a dot and the body; the body is `{"kind",
//! "client_id", "namespace", "items", "reason", "time_ms"}`, what the
//! alert's audit record holds, never a value, a token or a key. A receiver
//! checks the signature in constant time and refuses timestamps older than
//! a few minutes.
//!
//! Delivery never holds up a call: alerts queue (up to [`QUEUE`]; more are
//! dropped and counted in the log, the audit record stays) and one task
//! sends them in order, up to [`ATTEMPTS`] times each with doubling waits,
//! on connection errors, 429 and 5xx answers.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use sha2::Sha256;
use tokio::sync::mpsc;
use zeroize::Zeroizing;

/// Alerts waiting to be sent, at most.
pub(crate) const QUEUE: usize = 1024;
/// Attempts per alert.
pub(crate) const ATTEMPTS: u32 = 5;
/// The first wait between attempts; each next one doubles.
const FIRST_WAIT: Duration = Duration::from_millis(500);
/// Longest one attempt may take, connection included.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where alerts go, and how they are signed.
#[derive(Clone)]
pub struct WebhookOptions {
    /// `https://host[:port]/path`, or `http://` to a loopback address.
    pub url: String,
    /// The HMAC key the receiver shares.
    pub secret: Arc<Zeroizing<Vec<u8>>>,
    /// PEM CA bundle to trust instead of the system roots.
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for WebhookOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookOptions")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Why a webhook setting cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("alert webhook: {0}")]
pub struct WebhookError(String);

/// A parsed destination.
#[derive(Clone)]
struct Target {
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    host: String,
    port: u16,
    authority: String,
    path: String,
}

impl Target {
    fn parse(options: &WebhookOptions) -> Result<Self, WebhookError> {
        let uri: hyper::Uri = options
            .url
            .parse()
            .map_err(|_| WebhookError("the URL is not a URL".into()))?;
        let host = uri
            .host()
            .ok_or_else(|| WebhookError("the URL has no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(WebhookError(
                    "the URL is neither https:// nor http://".into(),
                ));
            }
        };
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !https && !loopback {
            return Err(WebhookError(
                "plaintext http:// is allowed to a loopback address only: alerts name clients and namespaces".into(),
            ));
        }
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let mut roots = rustls::RootCertStore::empty();
            match &options.ca_pem {
                Some(pem) => {
                    for cert in rustls_pemfile_certs(pem)? {
                        roots
                            .add(cert)
                            .map_err(|_| WebhookError("a CA certificate is not usable".into()))?;
                    }
                }
                None => {
                    for cert in rustls_native_certs::load_native_certs().certs {
                        let _ = roots.add(cert);
                    }
                }
            }
            let config = rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth();
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|_| WebhookError("the host is not a valid server name".into()))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(Self {
            tls,
            authority: uri
                .authority()
                .map_or_else(|| host.clone(), |a| a.as_str().to_owned()),
            host,
            port,
            path: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        })
    }
}

/// The certificates of a PEM bundle.
fn rustls_pemfile_certs(
    pem: &[u8],
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, WebhookError> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| WebhookError("the CA file is not PEM certificates".into()))
}

/// The sending side: alerts are queued here.
#[derive(Clone)]
pub(crate) struct Webhook {
    queue: mpsc::Sender<serde_json::Value>,
}

impl Webhook {
    /// Checks `options` and starts the task that sends alerts.
    pub(crate) fn start(options: WebhookOptions) -> Result<Self, WebhookError> {
        let target = Target::parse(&options)?;
        let (queue, mut alerts) = mpsc::channel::<serde_json::Value>(QUEUE);
        tokio::spawn(async move {
            while let Some(alert) = alerts.recv().await {
                deliver(&target, &options.secret, &alert).await;
            }
        });
        Ok(Self { queue })
    }

    /// Queues `alert`; drops it (logged) when the queue is full.
    pub(crate) fn send(&self, alert: serde_json::Value) {
        if self.queue.try_send(alert).is_err() {
            tracing::error!(
                "the alert webhook queue is full (the receiver is down or slow): an alert was not sent; it is in the audit trail"
            );
        }
    }
}

/// The signature of `body` at `timestamp`, as the header carries it.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

async fn deliver(target: &Target, secret: &[u8], alert: &serde_json::Value) {
    let body = serde_json::to_vec(alert).unwrap_or_default();
    let mut wait = FIRST_WAIT;
    for attempt in 1..=ATTEMPTS {
        let timestamp = crate::clock::now_secs();
        let sig = signature(secret, timestamp, &body);
        let outcome = tokio::time::timeout(ATTEMPT_TIMEOUT, post(target, &body, timestamp, &sig))
            .await
            .unwrap_or_else(|_| Err("timed out".into()));
        match outcome {
            Ok(status) if status.is_success() => return,
            Ok(status) if status.as_u16() == 429 || status.is_server_error() => {
                tracing::warn!(
                    attempt,
                    status = status.as_u16(),
                    "the alert webhook refused an alert for now; retrying"
                );
            }
            Ok(status) => {
                tracing::error!(
                    status = status.as_u16(),
                    "the alert webhook refused an alert; not retried"
                );
                return;
            }
            Err(why) => {
                tracing::warn!(attempt, error = %why, "the alert webhook is unreachable; retrying");
            }
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
    }
    tracing::error!(
        attempts = ATTEMPTS,
        "an alert could not be sent to the webhook; it is in the audit trail"
    );
}

/// One POST; the answer's status.
async fn post(
    target: &Target,
    body: &[u8],
    timestamp: u64,
    signature: &str,
) -> Result<hyper::StatusCode, String> {
    let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| e.to_string())?;
    let request = hyper::Request::post(target.path.as_str())
        .header(hyper::header::HOST, target.authority.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header("x-phivault-timestamp", timestamp.to_string())
        .header("x-phivault-signature", signature)
        .body(Full::new(Bytes::copy_from_slice(body)))
        .map_err(|e| e.to_string())?;
    match &target.tls {
        Some((connector, name)) => {
            let tls = connector
                .connect(name.clone(), tcp)
                .await
                .map_err(|e| e.to_string())?;
            send(hyper_util::rt::TokioIo::new(tls), request).await
        }
        None => send(hyper_util::rt::TokioIo::new(tcp), request).await,
    }
}

async fn send<T>(io: T, request: hyper::Request<Full<Bytes>>) -> Result<hyper::StatusCode, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    // Read the answer out, so that the connection ends cleanly.
    let _ = response.into_body().collect().await;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_goes_to_loopback_only_and_signatures_are_stable() {
        let options = |url: &str| WebhookOptions {
            url: url.into(),
            secret: Arc::new(Zeroizing::new(b"k".to_vec())),
            ca_pem: None,
        };
        assert!(Target::parse(&options("http://127.0.0.1:9000/alerts")).is_ok());
        let refused = Target::parse(&options("http://siem.example.org/alerts"))
            .err()
            .expect("plaintext off loopback");
        assert!(refused.to_string().contains("loopback"));
        assert!(Target::parse(&options("ftp://x/")).is_err());
        assert_eq!(
            signature(b"k", 1, b"{}"),
            signature(b"k", 1, b"{}"),
            "deterministic"
        );
        assert_ne!(signature(b"k", 1, b"{}"), signature(b"k", 2, b"{}"));
    }
}
