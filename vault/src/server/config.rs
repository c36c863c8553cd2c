//! The `phivault serve --config FILE` file: the same settings as the flags,
//! parsed and checked here so that the binary and the fuzz target read it
//! the same way. Unknown keys are an error, so a typo cannot silently leave
//! a default in place.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::TransportLimits;

/// A configuration file that cannot be used, in words that name the key or
/// line and never quote the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl ConfigError {
    fn new(message: String) -> Self {
        Self(message)
    }
}

/// `phivault serve --config FILE`: the same settings as the flags.
/// Unknown keys are an error, so a typo cannot silently leave a default in
/// place.
#[derive(Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `--data-dir`: the vault's data directory.
    pub data_dir: Option<PathBuf>,
    /// `--store`: a vault in PostgreSQL, by connection string (no password).
    pub store: Option<String>,
    /// `--store-password-file`: the file holding the PostgreSQL password.
    pub store_password_file: Option<PathBuf>,
    /// `--store-pool-size`: PostgreSQL connections this node keeps at most.
    pub store_pool_size: Option<usize>,
    /// `--passphrase-file`: the file holding the passphrase.
    pub passphrase_file: Option<PathBuf>,
    /// `--master-key-file`: a 32-byte master key file.
    pub master_key_file: Option<PathBuf>,
    /// `--hsm`: a PKCS#11 URI naming the HSM key that seals the vault (its
    /// PIN in a file, never in the URI).
    pub hsm: Option<String>,
    /// `--listen`: the gRPC address.
    pub listen: Option<SocketAddr>,
    /// `--metrics-listen`: the Prometheus address.
    pub metrics_listen: Option<SocketAddr>,
    /// `--http-listen`: the HTTP/JSON API's address.
    pub http_listen: Option<SocketAddr>,
    /// `--insecure-plaintext`: plaintext gRPC off loopback.
    pub insecure_plaintext: Option<bool>,
    /// `--durability`: `fsync` or `os`.
    pub durability: Option<String>,
    /// `--rotation-max-rate`: mappings a rotation moves per second.
    pub rotation_max_rate: Option<u32>,
    /// `--backup-dir`: where `Admin.Backup` may write.
    pub backup_dir: Option<PathBuf>,
    /// `[tls]`.
    #[serde(default)]
    pub tls: TlsConfig,
    /// `[limits]`.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// `[transport]`.
    #[serde(default)]
    pub transport: TransportConfig,
    /// `[alerts]`.
    #[serde(default)]
    pub alerts: AlertsConfig,
}

/// `[alerts]`: where alerts are also sent.
#[derive(Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// `--alert-webhook`: the URL alerts are POSTed to.
    pub webhook_url: Option<String>,
    /// `--alert-webhook-secret-file`: the HMAC key's file.
    pub webhook_secret_file: Option<PathBuf>,
    /// `--alert-webhook-ca`: the CA bundle to trust for it.
    pub webhook_ca_file: Option<PathBuf>,
}

/// `[transport]`: every key optional, defaults in [`TransportLimits`].
#[derive(Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TransportConfig {
    /// [`TransportLimits::max_connections`].
    pub max_connections: Option<usize>,
    /// [`TransportLimits::max_connections_per_peer`].
    pub max_connections_per_peer: Option<usize>,
    /// [`TransportLimits::ipv6_peer_prefix`].
    pub ipv6_peer_prefix: Option<u8>,
    /// [`TransportLimits::max_concurrent_streams`].
    pub max_concurrent_streams: Option<u32>,
    /// [`TransportLimits::max_calls_in_progress`].
    pub max_calls_in_progress: Option<usize>,
    /// [`TransportLimits::max_pending_accept_reset_streams`].
    pub max_pending_accept_reset_streams: Option<usize>,
    /// [`TransportLimits::max_local_error_reset_streams`].
    pub max_local_error_reset_streams: Option<usize>,
    /// [`TransportLimits::request_timeout`], in seconds.
    pub request_timeout_secs: Option<u64>,
    /// [`TransportLimits::keepalive_interval`], in seconds.
    pub keepalive_interval_secs: Option<u64>,
    /// [`TransportLimits::keepalive_timeout`], in seconds.
    pub keepalive_timeout_secs: Option<u64>,
    /// [`TransportLimits::max_header_list_bytes`].
    pub max_header_list_bytes: Option<u32>,
    /// [`TransportLimits::admin_max_message_bytes`].
    pub admin_max_message_bytes: Option<usize>,
    /// [`TransportLimits::refusal_window`], in seconds.
    pub refusal_window_secs: Option<u64>,
    /// [`TransportLimits::handshake_timeout`], in seconds.
    pub handshake_timeout_secs: Option<u64>,
}

impl From<&TransportLimits> for TransportConfig {
    /// Every cap set: what `serve --check-config` prints.
    fn from(t: &TransportLimits) -> Self {
        Self {
            max_connections: Some(t.max_connections),
            max_connections_per_peer: Some(t.max_connections_per_peer),
            ipv6_peer_prefix: Some(t.ipv6_peer_prefix),
            max_concurrent_streams: Some(t.max_concurrent_streams),
            max_calls_in_progress: Some(t.max_calls_in_progress),
            max_pending_accept_reset_streams: Some(t.max_pending_accept_reset_streams),
            max_local_error_reset_streams: Some(t.max_local_error_reset_streams),
            request_timeout_secs: Some(t.request_timeout.as_secs()),
            keepalive_interval_secs: Some(t.keepalive_interval.as_secs()),
            keepalive_timeout_secs: Some(t.keepalive_timeout.as_secs()),
            max_header_list_bytes: Some(t.max_header_list_bytes),
            admin_max_message_bytes: Some(t.admin_max_message_bytes),
            refusal_window_secs: Some(t.refusal_window.as_secs()),
            handshake_timeout_secs: Some(t.handshake_timeout.as_secs()),
        }
    }
}

impl TransportConfig {
    /// These caps over `d`, checked: a count of 0 or a time of 0 seconds
    /// is refused, naming the key.
    pub fn over(self, d: TransportLimits) -> Result<TransportLimits, ConfigError> {
        let secs = |v: Option<u64>, default: std::time::Duration, what: &str| match v {
            Some(0) => Err(ConfigError::new(format!(
                "transport.{what} must be at least 1 second"
            ))),
            Some(n) => Ok(std::time::Duration::from_secs(n)),
            None => Ok(default),
        };
        let limits = TransportLimits {
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            max_connections_per_peer: self
                .max_connections_per_peer
                .unwrap_or(d.max_connections_per_peer),
            ipv6_peer_prefix: match self.ipv6_peer_prefix {
                Some(bits @ 48..=128) => bits,
                Some(_) => {
                    return Err(ConfigError::new(
                        "transport.ipv6_peer_prefix must be from 48 to 128 bits".into(),
                    ));
                }
                None => d.ipv6_peer_prefix,
            },
            max_concurrent_streams: self
                .max_concurrent_streams
                .unwrap_or(d.max_concurrent_streams),
            max_calls_in_progress: self
                .max_calls_in_progress
                .unwrap_or(d.max_calls_in_progress),
            max_pending_accept_reset_streams: self
                .max_pending_accept_reset_streams
                .unwrap_or(d.max_pending_accept_reset_streams),
            max_local_error_reset_streams: self
                .max_local_error_reset_streams
                .unwrap_or(d.max_local_error_reset_streams),
            request_timeout: secs(
                self.request_timeout_secs,
                d.request_timeout,
                "request_timeout_secs",
            )?,
            keepalive_interval: secs(
                self.keepalive_interval_secs,
                d.keepalive_interval,
                "keepalive_interval_secs",
            )?,
            keepalive_timeout: secs(
                self.keepalive_timeout_secs,
                d.keepalive_timeout,
                "keepalive_timeout_secs",
            )?,
            max_header_list_bytes: self
                .max_header_list_bytes
                .unwrap_or(d.max_header_list_bytes),
            admin_max_message_bytes: self
                .admin_max_message_bytes
                .unwrap_or(d.admin_max_message_bytes),
            refusal_window: secs(
                self.refusal_window_secs,
                d.refusal_window,
                "refusal_window_secs",
            )?,
            handshake_timeout: secs(
                self.handshake_timeout_secs,
                d.handshake_timeout,
                "handshake_timeout_secs",
            )?,
        };
        let counts = [
            ("max_connections", limits.max_connections),
            ("max_connections_per_peer", limits.max_connections_per_peer),
            (
                "max_concurrent_streams",
                limits.max_concurrent_streams as usize,
            ),
            ("max_calls_in_progress", limits.max_calls_in_progress),
            ("admin_max_message_bytes", limits.admin_max_message_bytes),
        ];
        for (name, value) in counts {
            if value == 0 {
                return Err(ConfigError::new(format!(
                    "transport.{name} must be at least 1"
                )));
            }
        }
        Ok(limits)
    }
}

/// `[tls]`: the server's certificate and key, and the CA of client
/// certificates for mTLS.
#[derive(Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// `--tls-cert`: the PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// `--tls-key`: the PEM private key.
    pub key: Option<PathBuf>,
    /// `--tls-client-ca`: the CA bundle client certificates must chain to.
    pub client_ca: Option<PathBuf>,
}

/// `[limits]`: request size limits.
#[derive(Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// `--max-message-bytes`.
    pub max_message_bytes: Option<usize>,
    /// `--max-items`.
    pub max_items: Option<usize>,
    /// `--max-value-bytes`.
    pub max_value_bytes: Option<usize>,
    /// `--client-limit`: rate limits and quotas for clients that do not set
    /// their own (`["detokenize=500/s", "new-mappings=1000000/24h"]`).
    pub client_defaults: Option<Vec<String>>,
    /// `--summary-window-secs`: how often tokenize calls and calls over a
    /// limit are summed up in the audit trail.
    pub summary_window_secs: Option<u64>,
    /// `--break-glass-window-secs`: how long a client may break the glass
    /// before an administrator re-arms it.
    pub break_glass_window_secs: Option<u64>,
    /// `--detection-window-secs`: the window reveal-anomaly detection
    /// scores; 0 turns it off.
    pub detection_window_secs: Option<u64>,
}

impl ConfigFile {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| {
            ConfigError::new(format!("invalid configuration in {}: {e}", path.display()))
        })
    }

    /// Parses a configuration file's text. An error names the line and
    /// what is wrong, never quoting the line: a secret pasted into the
    /// file by mistake (`passphrase = "..."`) stays out of logs.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let line = e.span().map(|span| {
                text.bytes()
                    .take(span.start)
                    .filter(|&b| b == b'\n')
                    .count()
                    + 1
            });
            let message = redact_strings(e.message().trim()).replace('\n', " ");
            ConfigError::new(match line {
                Some(line) => format!("line {line}: {message}"),
                None => message,
            })
        })
    }
}

/// `message` with every double-quoted string outside backticks replaced by
/// `"…"`: the parser quotes a value of the wrong type ("invalid type:
/// string \"…\", expected usize"), and a value in the file may be a secret
/// in the wrong place. Backticks quote the parser's own words (expected
/// characters, key names).
fn redact_strings(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut chars = message.chars();
    let mut in_backticks = false;
    while let Some(c) = chars.next() {
        match c {
            '`' => {
                in_backticks = !in_backticks;
                out.push(c);
            }
            '"' if !in_backticks => {
                // Up to the closing quote (a backslash escapes one).
                let mut escaped = false;
                for c in chars.by_ref() {
                    match c {
                        '\\' if !escaped => escaped = true,
                        '"' if !escaped => break,
                        _ => escaped = false,
                    }
                }
                out.push_str("\"…\"");
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value in the wrong place is named by its key and line, never
    /// quoted: it may be a secret.
    #[test]
    fn errors_name_the_line_and_never_quote_a_value() {
        let error = ConfigFile::parse("[limits]\nmax_items = \"correct horse battery\"\n")
            .expect_err("a string for a count");
        let text = error.to_string();
        assert!(text.starts_with("line 2: "), "{text}");
        assert!(!text.contains("correct horse"), "{text}");
        let error = ConfigFile::parse("data_dir = \"/srv\"\npassphrase = \"correct horse\"\n")
            .expect_err("unknown key");
        let text = error.to_string();
        assert!(
            text.starts_with("line 2: ") && text.contains("`passphrase`"),
            "{text}"
        );
        assert!(!text.contains("correct horse"), "{text}");
        assert_eq!(
            redact_strings(r#"expected `"`, found "a \" b" and "c""#),
            r#"expected `"`, found "…" and "…""#
        );
    }
}
