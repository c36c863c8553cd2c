//! TLS on the gRPC listener, with a certificate that can be replaced while
//! serving.
//!
//! tonic's own TLS takes one certificate for the life of the server, and
//! certificates issued by cert-manager or an internal CA live 60 to 90 days.
//! Here each new connection is handed the configuration current when it
//! arrives; a reload (SIGHUP) builds a new one from the files and swaps it
//! in, so connections already open keep their session and are never
//! dropped. A reload that cannot be used (a file missing, a key that does not
//! match its certificate) is refused and the old configuration kept: a
//! botched renewal must not take the vault off the network.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;

use super::listener::Admitted;

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

/// Why TLS material cannot be used. Names the part, never its bytes.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

impl TlsOptions {
    /// The rustls configuration these files make (`alpn` offered: `h2` for
    /// gRPC, `http/1.1` for the HTTP/JSON API; client
    /// certificates required when a client CA is given, the process's
    /// crypto provider: see [`super::install_tls_provider`]), and when the
    /// server certificate expires, in seconds since the epoch.
    pub(crate) fn server_config(
        &self,
        alpn: &'static [u8],
    ) -> Result<(Arc<ServerConfig>, u64), TlsError> {
        let provider = rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
        let chain = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError(format!("the certificate file is not PEM: {e}")))?;
        let Some(leaf) = chain.first() else {
            return Err(TlsError("the certificate file holds no certificate".into()));
        };
        let expires = {
            use x509_cert::der::Decode as _;
            x509_cert::Certificate::from_der(leaf.as_ref())
                .map_err(|e| TlsError(format!("the certificate cannot be read: {e}")))?
                .tbs_certificate
                .validity
                .not_after
                .to_unix_duration()
                .as_secs()
        };
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|e| TlsError(format!("the key file holds no usable private key: {e}")))?;
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(format!("TLS versions: {e}")))?;
        let builder = match &self.client_ca_pem {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca) {
                    let cert =
                        cert.map_err(|e| TlsError(format!("the client CA file is not PEM: {e}")))?;
                    roots.add(cert).map_err(|e| {
                        TlsError(format!(
                            "the client CA file holds an unusable certificate: {e}"
                        ))
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| TlsError(format!("the client CA: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| {
            TlsError(format!(
                "the key does not go with the certificate, or cannot be used: {e}"
            ))
        })?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok((Arc::new(config), expires))
    }
}

/// The configuration new connections get, replaceable while serving.
pub(crate) struct Tls {
    current: RwLock<Arc<ServerConfig>>,
    /// The protocol the listener speaks, offered by ALPN.
    alpn: &'static [u8],
    /// When the certificate in use expires (seconds since the epoch).
    expires: AtomicU64,
}

impl Tls {
    pub(crate) fn new(options: &TlsOptions) -> Result<Self, TlsError> {
        Self::for_alpn(options, b"h2")
    }

    /// For a listener speaking `alpn`.
    pub(crate) fn for_alpn(options: &TlsOptions, alpn: &'static [u8]) -> Result<Self, TlsError> {
        let (config, expires) = options.server_config(alpn)?;
        Ok(Self {
            current: RwLock::new(config),
            alpn,
            expires: AtomicU64::new(expires),
        })
    }

    /// When the certificate new connections get expires, in seconds since
    /// the epoch: the metric an alert watches, well before the day.
    pub(crate) fn expires(&self) -> u64 {
        self.expires.load(Ordering::Relaxed)
    }

    fn current(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Uses `options` for connections from now on, if they can be used.
    pub(crate) fn replace(&self, options: &TlsOptions) -> Result<(), TlsError> {
        let (config, expires) = options.server_config(self.alpn)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
        self.expires.store(expires, Ordering::Relaxed);
        Ok(())
    }
}

/// The connections of `admitted` once their TLS handshake is done, each
/// under the configuration current when it arrived. Handshakes run on their
/// own tasks, so a slow peer delays nobody else; one not done within
/// `timeout` is closed. Ends when the server stops taking connections.
pub(crate) fn handshaken(
    admitted: impl Stream<Item = Result<Admitted, io::Error>> + Send + 'static,
    tls: Arc<Tls>,
    timeout: Duration,
) -> impl Stream<Item = Result<TlsStream<Admitted>, io::Error>> {
    let (done, ready) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut admitted = std::pin::pin!(admitted);
        loop {
            let next = tokio::select! {
                next = admitted.next() => next,
                () = done.closed() => break,
            };
            let connection = match next {
                None => break,
                Some(Err(e)) => {
                    if done.send(Err(e)).await.is_err() {
                        break;
                    }
                    continue;
                }
                Some(Ok(connection)) => connection,
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
            let done = done.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(timeout, acceptor.accept(connection)).await {
                    Ok(Ok(stream)) => {
                        let _ = done.send(Ok(stream)).await;
                    }
                    // A failed handshake is the peer's business (a port
                    // scan, a wrong CA, a client certificate refused): it
                    // never ends the accept loop.
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
        }
    });
    futures_util::stream::unfold(ready, |mut ready| async move {
        ready.recv().await.map(|next| (next, ready))
    })
}
