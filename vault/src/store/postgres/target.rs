//! Where a PostgreSQL-backed vault lives: the connection string, read the
//! way libpq reads it (a `postgres://` URL or `key=value` pairs, several
//! hosts for a highly available cluster), and how the connection is
//! protected.
//!
//! Two of libpq's settings are read here rather than by `tokio-postgres`,
//! which knows neither: `sslmode` and `sslrootcert`. Only the modes that
//! cannot be misused are taken: `verify-full` (the server's certificate
//! chains to `sslrootcert` and names the host), and `disable` for a server on
//! this machine. `prefer`, `require` and `verify-ca` would let an attacker on
//! the path read or answer the vault's traffic, and are refused by name.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::Host;

/// How the connection to PostgreSQL is protected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgTls {
    /// Plaintext, to a server on this machine only (a Unix socket or a
    /// loopback address).
    Disable,
    /// TLS; the server's certificate must chain to the CA certificates in
    /// this PEM file and name the host connected to.
    VerifyFull {
        /// The CA certificates (`sslrootcert`).
        root_cert: PathBuf,
    },
}

/// A PostgreSQL connection target. Its `Debug` and `Display` show the user,
/// hosts and database, never a password.
#[derive(Clone)]
pub struct PgTarget {
    pub(super) config: tokio_postgres::Config,
    pub(super) tls: PgTls,
    /// Connections each node keeps open at most.
    pub(super) pool_size: usize,
    shown: String,
}

/// Connections a node keeps by default: a few per core of this kind of
/// machine, well under PostgreSQL's default `max_connections` of 100 for a
/// handful of nodes.
pub const DEFAULT_POOL_SIZE: usize = 16;

/// Why a connection string was refused. Names the setting, never its value
/// (a connection string may carry a password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Not a connection string `tokio-postgres` reads.
    #[error(
        "invalid PostgreSQL connection string: expected postgres://user@host[,host…][:port]/database?… or host=… dbname=… pairs (values with spaces in single quotes)"
    )]
    Invalid,
    /// An `sslmode` that would leave the connection open to an attacker.
    #[error(
        "sslmode={0} is not accepted: use sslmode=verify-full with sslrootcert=<CA file>, or sslmode=disable for a server on this machine"
    )]
    WeakTls(String),
    /// `sslmode=verify-full` without the CA to verify against.
    #[error(
        "sslmode=verify-full needs sslrootcert=<file of the CA certificates that signed the server's>"
    )]
    NoRootCert,
    /// Plaintext to a host that is not this machine.
    #[error(
        "sslmode=disable is only accepted for a server on this machine (a Unix socket or a loopback address); use sslmode=verify-full"
    )]
    PlaintextOffHost,
    /// No host at all.
    #[error("the connection string names no host")]
    NoHost,
    /// No database name.
    #[error("the connection string names no database (dbname=… or postgres://…/<database>)")]
    NoDatabase,
}

impl PgTarget {
    /// Whether `text` is a PostgreSQL connection string rather than a path.
    pub fn looks_like(text: &str) -> bool {
        text.starts_with("postgres://")
            || text.starts_with("postgresql://")
            || text.split_whitespace().any(|pair| {
                pair.split_once('=')
                    .is_some_and(|(key, _)| matches!(key, "host" | "dbname" | "hostaddr"))
            })
    }

    /// Reads a connection string. Without `sslmode`, a server on this
    /// machine is reached in plaintext and any other with `verify-full`.
    pub fn parse(text: &str) -> Result<Self, TargetError> {
        let (rest, sslmode, root_cert) = split_tls_settings(text);
        // The parser's own words may quote part of the string (a password
        // written without quotes): not repeated.
        let mut config =
            tokio_postgres::Config::from_str(&rest).map_err(|_| TargetError::Invalid)?;
        if config.get_hosts().is_empty() {
            return Err(TargetError::NoHost);
        }
        let Some(dbname) = config.get_dbname().map(str::to_owned) else {
            return Err(TargetError::NoDatabase);
        };
        // `hostaddr` is where tokio-postgres connects when given: it must be
        // on this machine too for plaintext.
        let local = config.get_hosts().iter().all(is_local)
            && config.get_hostaddrs().iter().all(|ip| ip.is_loopback());
        let tls = match sslmode.as_deref() {
            None if local => PgTls::Disable,
            Some("disable") if local => PgTls::Disable,
            Some("disable") => return Err(TargetError::PlaintextOffHost),
            None | Some("verify-full") => PgTls::VerifyFull {
                root_cert: root_cert.ok_or(TargetError::NoRootCert)?,
            },
            Some(other) => return Err(TargetError::WeakTls(other.chars().take(16).collect())),
        };
        config.ssl_mode(match tls {
            PgTls::Disable => tokio_postgres::config::SslMode::Disable,
            PgTls::VerifyFull { .. } => tokio_postgres::config::SslMode::Require,
        });
        if config.get_connect_timeout().is_none() {
            // A dead host must not hold a request for the kernel's minutes.
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_application_name().is_none() {
            config.application_name("phivault");
        }
        // Find a dead peer within a minute rather than two hours.
        config.keepalives_idle(Duration::from_secs(30));
        let hosts: Vec<String> = config.get_hosts().iter().map(host_name).collect();
        let ports = config.get_ports();
        let hosts = hosts
            .iter()
            .enumerate()
            .map(|(i, host)| match ports.get(i).or(ports.first()) {
                Some(port) if !host.starts_with('/') => format!("{host}:{port}"),
                _ => host.clone(),
            })
            .collect::<Vec<_>>()
            .join(",");
        let user = config
            .get_user()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        Ok(Self {
            config,
            tls,
            pool_size: DEFAULT_POOL_SIZE,
            shown: format!("postgres://{user}{hosts}/{dbname}"),
        })
    }

    /// Whether the connection string carried a password.
    pub fn has_password(&self) -> bool {
        self.config.get_password().is_some()
    }

    /// Sets the password (read from a file or the environment).
    pub fn set_password(&mut self, password: &[u8]) {
        self.config.password(password);
    }

    /// Sets how many connections this node keeps open at most.
    pub fn set_pool_size(&mut self, size: usize) {
        self.pool_size = size.max(1);
    }

    /// How the connection is protected.
    pub fn tls(&self) -> &PgTls {
        &self.tls
    }

    /// The CA file, if TLS is on.
    pub fn root_cert(&self) -> Option<&Path> {
        match &self.tls {
            PgTls::Disable => None,
            PgTls::VerifyFull { root_cert } => Some(root_cert),
        }
    }
}

impl PartialEq for PgTarget {
    fn eq(&self, other: &Self) -> bool {
        self.shown == other.shown && self.tls == other.tls
    }
}

impl Eq for PgTarget {}

impl fmt::Display for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTarget")
            .field("target", &self.shown)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// Removes `sslmode` and `sslrootcert` from either form of connection
/// string, returning what is left and the two values.
fn split_tls_settings(text: &str) -> (String, Option<String>, Option<PathBuf>) {
    let mut sslmode = None;
    let mut root_cert = None;
    let mut take = |key: &str, value: &str| match key {
        "sslmode" => {
            sslmode = Some(value.to_owned());
            true
        }
        "sslrootcert" => {
            root_cert = Some(PathBuf::from(value));
            true
        }
        _ => false,
    };
    let rest = if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        match text.split_once('?') {
            Some((base, query)) => {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|pair| {
                        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                        !take(key, &percent_decode(value))
                    })
                    .collect();
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
            None => text.to_owned(),
        }
    } else {
        text.split_whitespace()
            .filter(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                !take(key.trim(), value.trim_matches('\''))
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    (rest, sslmode, root_cert)
}

/// `%XX` escapes of a URL query value (a path to a CA file may hold some).
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = value.get(i + 1..i + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_local(host: &Host) -> bool {
    match host {
        Host::Unix(_) => true,
        Host::Tcp(name) => {
            name == "localhost"
                || name
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
    }
}

fn host_name(host: &Host) -> String {
    match host {
        Host::Tcp(name) => name.clone(),
        Host::Unix(path) => path.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_server_defaults_to_plaintext_and_a_remote_one_to_verify_full() {
        let local =
            PgTarget::parse("host=/tmp/pg port=5433 dbname=vault user=phivault").expect("local");
        assert_eq!(local.tls, PgTls::Disable);
        assert_eq!(local.to_string(), "postgres://phivault@/tmp/pg/vault");
        let loopback =
            PgTarget::parse("postgres://phivault@127.0.0.1:5432/vault").expect("loopback");
        assert_eq!(loopback.tls, PgTls::Disable);
        assert_eq!(
            PgTarget::parse("postgres://db.example.org/vault").map(|_| ()),
            Err(TargetError::NoRootCert)
        );
        let remote = PgTarget::parse(
            "postgres://u@a.example.org:5432,b.example.org:5433/vault?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&target_session_attrs=read-write",
        )
        .expect("remote");
        assert_eq!(remote.root_cert(), Some(Path::new("/etc/ca.pem")));
        assert_eq!(
            remote.to_string(),
            "postgres://u@a.example.org:5432,b.example.org:5433/vault"
        );
    }

    #[test]
    fn weak_tls_and_plaintext_off_host_are_refused() {
        for mode in ["prefer", "require", "verify-ca", "allow"] {
            assert_eq!(
                PgTarget::parse(&format!("host=db.example.org dbname=v sslmode={mode}"))
                    .map(|_| ()),
                Err(TargetError::WeakTls(mode.into()))
            );
        }
        assert_eq!(
            PgTarget::parse("host=db.example.org dbname=v sslmode=disable").map(|_| ()),
            Err(TargetError::PlaintextOffHost)
        );
    }

    #[test]
    fn a_password_is_never_shown() {
        let target = PgTarget::parse("postgres://u:s3cret@127.0.0.1/vault").expect("parse");
        assert!(target.has_password());
        assert!(!target.to_string().contains("s3cret"));
        assert!(!format!("{target:?}").contains("s3cret"));
        let refused = PgTarget::parse("host=127.0.0.1 password=s3cret dbname=v nonsense=1")
            .map(|_| ())
            .expect_err("unknown option");
        assert!(!refused.to_string().contains("s3cret"));
        let unquoted = PgTarget::parse("host=127.0.0.1 dbname=v password=ab c=d")
            .map(|_| ())
            .expect_err("unknown option c");
        assert_eq!(unquoted, TargetError::Invalid);
    }

    #[test]
    fn a_loopback_name_over_a_remote_address_is_not_local() {
        assert_eq!(
            PgTarget::parse("host=localhost hostaddr=10.0.0.5 dbname=v").map(|_| ()),
            Err(TargetError::NoRootCert)
        );
        assert_eq!(
            PgTarget::parse("host=localhost hostaddr=10.0.0.5 dbname=v sslmode=disable")
                .map(|_| ()),
            Err(TargetError::PlaintextOffHost)
        );
    }

    #[test]
    fn connection_strings_are_told_from_paths() {
        assert!(PgTarget::looks_like("postgres://h/db"));
        assert!(PgTarget::looks_like("host=a,b dbname=v"));
        assert!(!PgTarget::looks_like("/var/lib/phivault"));
        assert!(!PgTarget::looks_like("./data"));
    }
}
