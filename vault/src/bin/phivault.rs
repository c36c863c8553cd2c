//! The `phivault` command: create, unseal, inspect and serve a vault.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use phivault::crypto::HsmSeal;
use phivault::server::config::{
    AlertsConfig, ConfigFile, LimitsConfig, TlsConfig, TransportConfig,
};
use phivault::server::{ServeOptions, TlsOptions, TransportLimits};
use phivault::store::postgres::PgTarget;
use phivault::store::{Durability, Location, StoreOptions};
use phivault::{MasterKey, Vault, VaultOptions};
use zeroize::Zeroizing;

/// Every allocation of the server and its commands. A tokenize call makes
/// and frees several small objects per value across the runtime's threads;
/// under glibc's allocator that was 39% of the server's CPU samples on
/// batches of new values on PostgreSQL (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Format-preserving tokenization vault for protected health information.
#[derive(Parser)]
#[command(name = "phivault", version, about)]
struct Cli {
    /// How log lines are written to standard error: `text`, or `json` (one
    /// object per line, for a log pipeline). The level comes from
    /// PHIVAULT_LOG (`info` by default; `phivault=debug,warn`…), and a
    /// running server reads it again from the file named by
    /// PHIVAULT_LOG_FILE, if set, on SIGHUP.
    #[arg(
        long,
        global = true,
        env = "PHIVAULT_LOG_FORMAT",
        hide_env_values = true,
        value_parser = ["text", "json"],
        default_value = "text"
    )]
    log_format: String,
    /// Send traces to this OpenTelemetry collector over OTLP/gRPC
    /// (`http://collector:4317`, or https://): a span per call, with its
    /// method, namespace, item count, status and request id, never a value
    /// or token, joined to the caller's trace when the call carries W3C
    /// `traceparent`. The standard OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT and
    /// OTEL_SERVICE_NAME variables are read too.
    #[arg(
        long,
        global = true,
        env = "PHIVAULT_OTLP_ENDPOINT",
        hide_env_values = true
    )]
    otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a completion script for `shell` (bash, zsh, fish, elvish,
    /// powershell) to standard output.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write a man page for this command and each subcommand into `dir`.
    ManPages {
        /// Where the pages go (created if missing).
        dir: PathBuf,
    },
    /// Create a new vault with the default namespaces and an `admin` client.
    Init {
        #[command(flatten)]
        vault: VaultArgs,
        /// Write the admin API key to this new file (mode 0600). The key is
        /// never printed: a terminal's scrollback and a CI log are not
        /// places for it.
        #[arg(long)]
        admin_key_file: PathBuf,
        #[command(flatten)]
        kdf: KdfArgs,
    },
    /// Unseal a vault and serve gRPC until SIGTERM or Ctrl-C.
    Serve(Box<ServeArgs>),
    /// Unseal a vault and print its keys, namespaces and clients.
    Status {
        #[command(flatten)]
        vault: VaultArgs,
        /// One JSON object instead of text, with the fields
        /// `phivault-client --json` prints for keys, namespaces and clients.
        #[arg(long)]
        json: bool,
    },
    /// Replace the master passphrase or key file of a stopped vault.
    Rekey(RekeyArgs),
    /// Copy a stopped vault to a new directory (a consistent checkpoint; no
    /// key needed). A serving vault is backed up with `Admin.Backup`.
    Backup {
        /// The vault's data directory.
        #[arg(long, env = "PHIVAULT_DATA_DIR", hide_env_values = true)]
        data_dir: PathBuf,
        /// The new directory to write; must not exist.
        #[arg(long)]
        to: PathBuf,
    },
    /// Write a whole vault to a new file, to import it into another backend.
    ///
    /// RocksDB to PostgreSQL or back. Needs the vault's key: the file
    /// (owner-only) is authenticated under it and reveals no more than the
    /// storage does. On PostgreSQL it reads one snapshot beside serving
    /// nodes; a RocksDB vault must be stopped (or export a backup).
    Export {
        #[command(flatten)]
        vault: VaultArgs,
        /// The new file to write; must not exist.
        #[arg(long)]
        to: PathBuf,
    },
    /// Create a vault from an export file, then verify it.
    ///
    /// In a new directory or an empty PostgreSQL database, with the exported
    /// vault's passphrase or key; nothing is kept unless the whole file
    /// arrived and its MAC verifies. Then every mapping and the audit chain
    /// are checked, as `verify` does.
    Import {
        /// Where the new vault goes, and the exported vault's key.
        #[command(flatten)]
        vault: VaultArgs,
        /// The export file.
        #[arg(long)]
        from: PathBuf,
    },
    /// Check every mapping of a stopped vault (or a backup) and its audit
    /// chain: exits non-zero if any row is damaged, orphaned or does not hash
    /// back, or the chain is broken.
    Verify {
        #[command(flatten)]
        vault: VaultArgs,
    },
    /// The audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the audit hash chain from the first record to the head and name
    /// the first bad sequence number; exits non-zero if there is one. Needs
    /// no key and works beside a running server (read-only).
    Verify {
        /// The vault: its data directory (or a backup's), or --store.
        #[command(flatten)]
        store: StoreArgs,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct RekeyArgs {
    #[command(flatten)]
    vault: VaultArgs,
    /// File holding the new passphrase; without it PHIVAULT_NEW_PASSPHRASE,
    /// else a prompt (twice) on the terminal.
    #[arg(long, conflicts_with = "new_master_key_file")]
    new_passphrase_file: Option<PathBuf>,
    /// Switch to a 32-byte master key file.
    #[arg(long)]
    new_master_key_file: Option<PathBuf>,
    /// With --new-master-key-file: create that key file first.
    #[arg(long, requires = "new_master_key_file")]
    create_new_key_file: bool,
    /// Switch to an HSM key, named by a PKCS#11 URI (see --hsm).
    #[arg(long, conflicts_with_all = ["new_master_key_file", "new_passphrase_file"])]
    new_hsm: Option<String>,
    /// With --new-hsm: make that key on the token unless one has its label.
    #[arg(long, requires = "new_hsm")]
    create_new_hsm_key: bool,
    /// Switch to a new random master key split into this many shares
    /// (2 to 16), written to --new-key-share-dir.
    #[arg(long, value_name = "N", requires_all = ["new_key_threshold", "new_key_share_dir"], conflicts_with_all = ["new_master_key_file", "new_passphrase_file", "new_hsm"])]
    new_key_shares: Option<u8>,
    /// With --new-key-shares: how many shares unseal (2 to N).
    #[arg(long, value_name = "K", requires = "new_key_shares")]
    new_key_threshold: Option<u8>,
    /// With --new-key-shares: the directory the shares are written to.
    #[arg(long, value_name = "DIR", requires = "new_key_shares")]
    new_key_share_dir: Option<PathBuf>,
    #[command(flatten)]
    kdf: KdfArgs,
}

/// Argon2id cost of a passphrase; each at least RFC 9106's second
/// recommended option (64 MiB, 3 passes, 4 lanes), the default.
#[derive(Args)]
struct KdfArgs {
    /// Argon2id memory in KiB [default: 65536; at most 1048576].
    #[arg(long)]
    argon2_memory_kib: Option<u32>,
    /// Argon2id passes [default: 3; at most 16].
    #[arg(long)]
    argon2_passes: Option<u32>,
    /// Argon2id lanes [default: 4; at most 16].
    #[arg(long)]
    argon2_lanes: Option<u32>,
}

impl KdfArgs {
    fn params(&self) -> anyhow::Result<phivault::crypto::KdfParams> {
        let d = phivault::crypto::KdfParams::default();
        let params = phivault::crypto::KdfParams {
            m_cost_kib: self.argon2_memory_kib.unwrap_or(d.m_cost_kib),
            t_cost: self.argon2_passes.unwrap_or(d.t_cost),
            p_cost: self.argon2_lanes.unwrap_or(d.p_cost),
        };
        params.check()?;
        Ok(params)
    }
}

/// Where a vault lives: a data directory (the embedded store) or a
/// PostgreSQL database.
#[derive(Args, Clone, Default)]
struct StoreArgs {
    /// The vault's data directory (the embedded RocksDB store).
    #[arg(long, env = "PHIVAULT_DATA_DIR", hide_env_values = true)]
    data_dir: Option<PathBuf>,
    /// A vault in PostgreSQL, shared by any number of nodes: a connection
    /// string, `postgres://USER@HOST1,HOST2/DB?target_session_attrs=read-write`
    /// or `host=… dbname=…` pairs. Off this machine it needs
    /// `sslmode=verify-full&sslrootcert=CA.pem`. Never a password in it.
    #[arg(
        long,
        env = "PHIVAULT_STORE",
        hide_env_values = true,
        conflicts_with = "data_dir"
    )]
    store: Option<String>,
    /// File holding the PostgreSQL password; without it
    /// PHIVAULT_STORE_PASSWORD, else none (certificate or peer
    /// authentication).
    #[arg(long, env = "PHIVAULT_STORE_PASSWORD_FILE", hide_env_values = true)]
    store_password_file: Option<PathBuf>,
}

impl StoreArgs {
    /// The vault's location; `pool_size` for a PostgreSQL one.
    fn location(&self, pool_size: Option<usize>) -> anyhow::Result<Location> {
        match (&self.data_dir, &self.store) {
            (Some(_), Some(_)) => bail!("give --data-dir or --store, not both"),
            (Some(dir), None) => {
                if self.store_password_file.is_some() {
                    bail!("--store-password-file is for a vault in PostgreSQL (--store)");
                }
                Ok(Location::directory(dir))
            }
            (None, Some(text)) => {
                if !PgTarget::looks_like(text) {
                    bail!(
                        "--store takes a PostgreSQL connection string (postgres://… or host=… dbname=…); a vault in a directory is given by --data-dir"
                    );
                }
                let mut target = PgTarget::parse(text)?;
                if target.has_password() {
                    bail!(
                        "the PostgreSQL connection string holds a password: put it in --store-password-file or PHIVAULT_STORE_PASSWORD, where it is not seen in the process list or a shell history"
                    );
                }
                if let Some(file) = &self.store_password_file {
                    check_private(file, "the PostgreSQL password file")?;
                    let password = Zeroizing::new(
                        std::fs::read(file)
                            .with_context(|| format!("cannot read {}", file.display()))?,
                    );
                    let password = password.strip_suffix(b"\n").unwrap_or(&password);
                    target.set_password(password);
                } else if let Some(password) = std::env::var_os("PHIVAULT_STORE_PASSWORD") {
                    target.set_password(password.as_encoded_bytes());
                }
                if let Some(size) = pool_size {
                    target.set_pool_size(size);
                }
                Ok(Location::Postgres(Box::new(target)))
            }
            (None, None) => bail!("no vault: pass --data-dir or --store"),
        }
    }
}

#[derive(Args)]
struct VaultArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// File holding the passphrase (one trailing newline is ignored).
    /// Without it, PHIVAULT_PASSPHRASE, else a prompt on the terminal.
    #[arg(
        long,
        env = "PHIVAULT_PASSPHRASE_FILE",
        hide_env_values = true,
        conflicts_with = "master_key_file"
    )]
    passphrase_file: Option<PathBuf>,
    /// A 32-byte master key file (raw or 64 hex digits) instead of a
    /// passphrase.
    #[arg(long, env = "PHIVAULT_MASTER_KEY_FILE", hide_env_values = true)]
    master_key_file: Option<PathBuf>,
    /// With `init` and --master-key-file: create the key file first.
    #[arg(long, env = "PHIVAULT_CREATE_KEY_FILE", hide_env_values = true, value_parser = clap::builder::BoolishValueParser::new(), requires = "master_key_file")]
    create_key_file: bool,
    /// A PKCS#11 URI naming the HSM key that seals the vault, instead of a
    /// passphrase or key file: pkcs11:token=T;object=K?module-path=LIB&pin-source=file:PIN
    #[arg(long, env = "PHIVAULT_HSM", hide_env_values = true, conflicts_with_all = ["passphrase_file", "master_key_file"])]
    hsm: Option<String>,
    /// With `init` and --hsm: make the AES key on the token unless one has
    /// its label.
    #[arg(long, requires = "hsm")]
    create_hsm_key: bool,
    /// A file holding one key share (repeat for as many as the split
    /// needs), for a vault whose master key was split (`init --key-shares`).
    #[arg(long = "key-share", value_name = "FILE", conflicts_with_all = ["passphrase_file", "master_key_file", "hsm"])]
    key_shares: Vec<PathBuf>,
    /// Ask for key shares on the terminal, one holder after another, until
    /// the split's threshold is met (after any --key-share files).
    #[arg(long, conflicts_with_all = ["passphrase_file", "master_key_file", "hsm"])]
    key_shares_prompt: bool,
    /// With `init`: seal with a new random master key split into this many
    /// shares (2 to 16), written to --key-share-dir; the key itself is
    /// written nowhere.
    #[arg(long = "key-shares", value_name = "N", requires_all = ["key_threshold", "key_share_dir"], conflicts_with_all = ["passphrase_file", "master_key_file", "hsm", "key_shares", "key_shares_prompt"])]
    split_into: Option<u8>,
    /// With --key-shares: how many shares unseal (2 to N).
    #[arg(long, value_name = "K", requires = "split_into")]
    key_threshold: Option<u8>,
    /// With --key-shares: the directory the shares are written to, one
    /// 0600 file each (share-1.txt …), for handing to their holders.
    #[arg(long, value_name = "DIR", requires = "split_into")]
    key_share_dir: Option<PathBuf>,
}

impl VaultArgs {
    fn seal(&self) -> Seal<'_> {
        Seal {
            passphrase_file: self.passphrase_file.as_deref(),
            master_key_file: self.master_key_file.as_deref(),
            hsm: self.hsm.as_deref(),
            key_shares: &self.key_shares,
            key_shares_prompt: self.key_shares_prompt,
        }
    }
}

#[derive(Args)]
struct ServeArgs {
    /// A TOML file with any of the settings below; PHIVAULT_* variables
    /// override it, and flags override both. See deploy/phivault.toml.
    #[arg(long, env = "PHIVAULT_CONFIG", hide_env_values = true)]
    config: Option<PathBuf>,
    /// DEVELOPMENT ONLY: a throwaway vault in ./.phivault-dev, created on
    /// first start, whose master key and admin key sit next to its data.
    #[arg(long, conflicts_with_all = ["data_dir", "store", "passphrase_file", "master_key_file", "hsm"])]
    dev: bool,
    #[command(flatten)]
    store: StoreArgs,
    /// PostgreSQL connections this node keeps at most [default: 16].
    #[arg(long, env = "PHIVAULT_STORE_POOL_SIZE", hide_env_values = true)]
    store_pool_size: Option<usize>,
    /// File holding the passphrase; without it PHIVAULT_PASSPHRASE, else a
    /// prompt on the terminal.
    #[arg(
        long,
        env = "PHIVAULT_PASSPHRASE_FILE",
        hide_env_values = true,
        conflicts_with = "master_key_file"
    )]
    passphrase_file: Option<PathBuf>,
    /// A 32-byte master key file instead of a passphrase.
    #[arg(long, env = "PHIVAULT_MASTER_KEY_FILE", hide_env_values = true)]
    master_key_file: Option<PathBuf>,
    /// A PKCS#11 URI naming the HSM key that seals the vault, instead of a
    /// passphrase or key file (the PIN in a file: pin-source=file:PATH).
    #[arg(long, env = "PHIVAULT_HSM", hide_env_values = true, conflicts_with_all = ["passphrase_file", "master_key_file"])]
    hsm: Option<String>,
    /// A file holding one key share (repeat for as many as the split
    /// needs), for a vault whose master key was split.
    #[arg(long = "key-share", value_name = "FILE", conflicts_with_all = ["passphrase_file", "master_key_file", "hsm"])]
    key_shares: Vec<PathBuf>,
    /// Ask for key shares on the terminal until the split's threshold is
    /// met (after any --key-share files).
    #[arg(long, conflicts_with_all = ["passphrase_file", "master_key_file", "hsm"])]
    key_shares_prompt: bool,
    /// Address to listen on [default: 127.0.0.1:50051]; port 0 picks a free
    /// port.
    #[arg(long, env = "PHIVAULT_LISTEN", hide_env_values = true)]
    listen: Option<SocketAddr>,
    /// PEM certificate chain for TLS.
    #[arg(
        long,
        env = "PHIVAULT_TLS_CERT",
        hide_env_values = true,
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[arg(
        long,
        env = "PHIVAULT_TLS_KEY",
        hide_env_values = true,
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// PEM CA bundle: require client certificates that chain to it (mTLS).
    #[arg(
        long,
        env = "PHIVAULT_TLS_CLIENT_CA",
        hide_env_values = true,
        requires = "tls_cert"
    )]
    tls_client_ca: Option<PathBuf>,
    /// DANGEROUS: serve plaintext gRPC on a non-loopback address.
    /// (No variable: a switch this dangerous is given where it is seen.)
    #[arg(long)]
    insecure_plaintext: bool,
    /// Serve Prometheus metrics on http://ADDR/metrics (port 0 picks one;
    /// the address is printed as `phivault metrics on IP:PORT`).
    #[arg(long, env = "PHIVAULT_METRICS_LISTEN", hide_env_values = true)]
    metrics_listen: Option<SocketAddr>,
    /// Serve the HTTP/JSON API on ADDR (port 0 picks one; the address is
    /// printed as `phivault http on IP:PORT`): the same keys, scopes, limits
    /// and audit records as gRPC.
    #[arg(long, env = "PHIVAULT_HTTP_LISTEN", hide_env_values = true)]
    http_listen: Option<SocketAddr>,
    /// Largest gRPC message accepted, in bytes [default: 4194304].
    #[arg(long, env = "PHIVAULT_MAX_MESSAGE_BYTES", hide_env_values = true)]
    max_message_bytes: Option<usize>,
    /// Items per tokenize or detokenize request [default: 10000].
    #[arg(long, env = "PHIVAULT_MAX_ITEMS", hide_env_values = true)]
    max_items: Option<usize>,
    /// Bytes per value or token [default: 4096].
    #[arg(long, env = "PHIVAULT_MAX_VALUE_BYTES", hide_env_values = true)]
    max_value_bytes: Option<usize>,
    /// A rate limit or quota for every client that does not set its own,
    /// KIND[:NAMESPACE]=ALLOWANCE (repeatable): `detokenize=500/s,burst=1000`,
    /// `tokenize=20000/s`, `new-mappings=1000000/24h` [default: none].
    #[arg(long = "client-limit", value_name = "RULE")]
    client_limits: Vec<String>,
    /// How often tokenize calls and calls over a limit are summed up in the
    /// audit trail, per client and namespace, in seconds [default: 60].
    #[arg(long)]
    summary_window_secs: Option<u64>,
    /// How long a client with a break-glass scope may reveal stating an
    /// emergency, from its first such reveal, before an administrator must
    /// re-arm it (`clients release`), in seconds [default: 1800].
    #[arg(long)]
    break_glass_window_secs: Option<u64>,
    /// The window reveal-anomaly detection scores each client's activity
    /// in, in seconds; 0 turns detection off [default: 300].
    #[arg(long, env = "PHIVAULT_DETECTION_WINDOW_SECS", hide_env_values = true)]
    detection_window_secs: Option<u64>,
    /// Also send every alert as a signed JSON POST to this URL (https://, or
    /// http:// to a loopback address).
    #[arg(long, requires = "alert_webhook_secret_file")]
    alert_webhook: Option<String>,
    /// The file holding the HMAC key alerts sent to the webhook are signed
    /// with (mode 0600 or stricter).
    #[arg(long)]
    alert_webhook_secret_file: Option<PathBuf>,
    /// PEM CA bundle the webhook's certificate must chain to, instead of the
    /// system roots.
    #[arg(long)]
    alert_webhook_ca: Option<PathBuf>,
    /// `fsync` (default): every acknowledged write is on disk. `os`: leave
    /// flushing to the OS — faster, loses acknowledged writes on power loss.
    #[arg(long, env = "PHIVAULT_DURABILITY", hide_env_values = true, value_parser = ["fsync", "os"])]
    durability: Option<String>,
    /// Most mappings a key rotation moves per second [default: unlimited].
    #[arg(long, env = "PHIVAULT_ROTATION_MAX_RATE", hide_env_values = true)]
    rotation_max_rate: Option<u32>,
    /// Confine `Admin.Backup` to new directories inside this one.
    #[arg(long, env = "PHIVAULT_BACKUP_DIR", hide_env_values = true)]
    backup_dir: Option<PathBuf>,
    /// Print the settings as resolved (defaults, --config, PHIVAULT_*
    /// variables, flags) in the configuration file's format, and exit
    /// without opening the vault.
    #[arg(long)]
    check_config: bool,
    /// Connection, stream and call caps: set in the configuration file's
    /// `[transport]` section only.
    #[arg(skip)]
    transport: TransportLimits,
}

/// Flags over the configuration file over the built-in defaults.
fn resolve(args: ServeArgs) -> anyhow::Result<ServeArgs> {
    let file = match &args.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    let durability = args
        .durability
        .or(file.durability)
        .unwrap_or_else(|| "fsync".into());
    if durability != "fsync" && durability != "os" {
        bail!("durability must be \"fsync\" or \"os\"");
    }
    let resolved = ServeArgs {
        config: args.config,
        dev: args.dev,
        check_config: args.check_config,
        store: StoreArgs {
            data_dir: args.store.data_dir.or(file.data_dir),
            store: args.store.store.or(file.store),
            store_password_file: args.store.store_password_file.or(file.store_password_file),
        },
        store_pool_size: args.store_pool_size.or(file.store_pool_size),
        passphrase_file: args.passphrase_file.or(file.passphrase_file),
        master_key_file: args.master_key_file.or(file.master_key_file),
        hsm: args.hsm.or(file.hsm),
        key_shares: args.key_shares,
        key_shares_prompt: args.key_shares_prompt,
        listen: Some(
            args.listen
                .or(file.listen)
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 50051))),
        ),
        tls_cert: args.tls_cert.or(file.tls.cert),
        tls_key: args.tls_key.or(file.tls.key),
        tls_client_ca: args.tls_client_ca.or(file.tls.client_ca),
        insecure_plaintext: args.insecure_plaintext || file.insecure_plaintext.unwrap_or(false),
        metrics_listen: args.metrics_listen.or(file.metrics_listen),
        http_listen: args.http_listen.or(file.http_listen),
        max_message_bytes: Some(
            args.max_message_bytes
                .or(file.limits.max_message_bytes)
                .unwrap_or(4 << 20),
        ),
        max_items: Some(args.max_items.or(file.limits.max_items).unwrap_or(10_000)),
        max_value_bytes: Some(
            args.max_value_bytes
                .or(file.limits.max_value_bytes)
                .unwrap_or(4096),
        ),
        client_limits: if args.client_limits.is_empty() {
            file.limits.client_defaults.unwrap_or_default()
        } else {
            args.client_limits
        },
        summary_window_secs: match args.summary_window_secs.or(file.limits.summary_window_secs) {
            Some(0) => bail!("the summary window must be at least 1 second"),
            window => Some(window.unwrap_or(60)),
        },
        alert_webhook: args.alert_webhook.or(file.alerts.webhook_url),
        alert_webhook_secret_file: args
            .alert_webhook_secret_file
            .or(file.alerts.webhook_secret_file),
        alert_webhook_ca: args.alert_webhook_ca.or(file.alerts.webhook_ca_file),
        detection_window_secs: Some(
            args.detection_window_secs
                .or(file.limits.detection_window_secs)
                .unwrap_or(300),
        ),
        break_glass_window_secs: match args
            .break_glass_window_secs
            .or(file.limits.break_glass_window_secs)
        {
            Some(0) => bail!("the break-glass window must be at least 1 second"),
            window => Some(window.unwrap_or(1800)),
        },
        durability: Some(durability),
        rotation_max_rate: args.rotation_max_rate.or(file.rotation_max_rate),
        backup_dir: args.backup_dir.or(file.backup_dir),
        transport: file.transport.over(TransportLimits::default())?,
    };
    phivault::limits::Limits::parse(&resolved.client_limits)
        .map_err(|e| anyhow::anyhow!("client limits: {e}"))?;
    if resolved.alert_webhook.is_some() != resolved.alert_webhook_secret_file.is_some() {
        bail!("the alert webhook needs both a URL and a secret file");
    }
    if resolved.tls_cert.is_some() != resolved.tls_key.is_some() {
        bail!("TLS needs both a certificate and a key");
    }
    if resolved.dev
        && (resolved.store.data_dir.is_some()
            || resolved.store.store.is_some()
            || resolved.passphrase_file.is_some()
            || resolved.master_key_file.is_some()
            || resolved.hsm.is_some())
    {
        bail!(
            "--dev runs a throwaway vault in ./.phivault-dev: it takes no data directory, store, passphrase file or master key file (one is set in --config or PHIVAULT_*)"
        );
    }
    if !resolved.dev && resolved.store.data_dir.is_none() && resolved.store.store.is_none() {
        bail!("no vault: pass --data-dir or --store, set one in --config, or use --dev");
    }
    if let Some(store) = &resolved.store.store
        && PgTarget::looks_like(store)
        && PgTarget::parse(store).is_ok_and(|target| target.has_password())
    {
        // Refused before anything prints it (`--check-config`).
        bail!(
            "the PostgreSQL connection string holds a password: put it in --store-password-file or PHIVAULT_STORE_PASSWORD"
        );
    }
    if resolved.store.data_dir.is_some() && resolved.store.store.is_some() {
        bail!(
            "give a data directory or a store, not both (one may come from --config or PHIVAULT_*)"
        );
    }
    let seals = [
        resolved.passphrase_file.is_some(),
        resolved.master_key_file.is_some(),
        resolved.hsm.is_some(),
        !resolved.key_shares.is_empty() || resolved.key_shares_prompt,
    ];
    if seals.into_iter().filter(|given| *given).count() > 1 {
        bail!(
            "give one of a passphrase file, a master key file, an HSM (--hsm) or key shares, not several"
        );
    }
    if let Some(uri) = &resolved.hsm {
        // Checked by the parser itself before anything prints it
        // (`--check-config`): a PIN in the URI, or in place of its file, is
        // refused without being repeated.
        HsmSeal::check_uri(uri)?;
    }
    Ok(resolved)
}

/// The resolved settings of `serve`, as a configuration file that gives
/// them all. Paths only: no secret is ever a setting.
fn render_settings(args: &ServeArgs) -> anyhow::Result<String> {
    let file = ConfigFile {
        data_dir: args.store.data_dir.clone(),
        store: args.store.store.clone(),
        store_password_file: args.store.store_password_file.clone(),
        store_pool_size: args.store_pool_size,
        passphrase_file: args.passphrase_file.clone(),
        master_key_file: args.master_key_file.clone(),
        hsm: args.hsm.clone(),
        listen: args.listen,
        metrics_listen: args.metrics_listen,
        http_listen: args.http_listen,
        insecure_plaintext: Some(args.insecure_plaintext),
        durability: args.durability.clone(),
        rotation_max_rate: args.rotation_max_rate,
        backup_dir: args.backup_dir.clone(),
        tls: TlsConfig {
            cert: args.tls_cert.clone(),
            key: args.tls_key.clone(),
            client_ca: args.tls_client_ca.clone(),
        },
        limits: LimitsConfig {
            max_message_bytes: args.max_message_bytes,
            max_items: args.max_items,
            max_value_bytes: args.max_value_bytes,
            client_defaults: Some(args.client_limits.clone()),
            summary_window_secs: args.summary_window_secs,
            break_glass_window_secs: args.break_glass_window_secs,
            detection_window_secs: args.detection_window_secs,
        },
        transport: TransportConfig::from(&args.transport),
        alerts: AlertsConfig {
            webhook_url: args.alert_webhook.clone(),
            webhook_secret_file: args.alert_webhook_secret_file.clone(),
            webhook_ca_file: args.alert_webhook_ca.clone(),
        },
    };
    let dev = if args.dev {
        "# --dev: a throwaway vault in ./.phivault-dev (no setting gives it)\n"
    } else {
        ""
    };
    Ok(format!("{dev}{}", toml::to_string(&file)?))
}

/// What unseals a vault, as its flags and settings name it.
#[derive(Default, Clone, Copy)]
struct Seal<'a> {
    passphrase_file: Option<&'a Path>,
    master_key_file: Option<&'a Path>,
    hsm: Option<&'a str>,
    key_shares: &'a [PathBuf],
    key_shares_prompt: bool,
}

fn master_key(seal: Seal<'_>, create: bool, confirm: bool) -> anyhow::Result<MasterKey> {
    if let Some(uri) = seal.hsm {
        return hsm_seal(uri, create);
    }
    if !seal.key_shares.is_empty() || seal.key_shares_prompt {
        return gather_key_shares(seal.key_shares, seal.key_shares_prompt);
    }
    if let Some(path) = seal.master_key_file {
        return Ok(if create {
            MasterKey::create_key_file(path)?
        } else {
            MasterKey::read_key_file(path)?
        });
    }
    if let Some(path) = seal.passphrase_file {
        return read_passphrase_file(path);
    }
    if let Ok(passphrase) = std::env::var("PHIVAULT_PASSPHRASE") {
        tracing::warn!(
            "the passphrase comes from PHIVAULT_PASSPHRASE: the environment is inherited by child processes and readable in /proc by the same user; prefer --passphrase-file on a tmpfs or a secrets mount"
        );
        return Ok(MasterKey::Passphrase(Zeroizing::new(passphrase)));
    }
    let first = Zeroizing::new(rpassword::prompt_password("vault passphrase: ").context(
        "no passphrase: pass --passphrase-file, set PHIVAULT_PASSPHRASE, or run on a terminal",
    )?);
    if confirm {
        let again = Zeroizing::new(rpassword::prompt_password("repeat passphrase: ")?);
        if first != again {
            bail!("the passphrases differ");
        }
    }
    Ok(MasterKey::Passphrase(first))
}

/// The master key rebuilt from key shares: those in `files` (one share
/// each, readable by their owner only), then, with `prompt`, as many more
/// as the split needs, typed at the terminal one holder after another
/// without echo.
fn gather_key_shares(files: &[PathBuf], prompt: bool) -> anyhow::Result<MasterKey> {
    let mut shares: Vec<Zeroizing<String>> = Vec::new();
    for file in files {
        check_private(file, "a key share file")?;
        shares.push(Zeroizing::new(
            std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?,
        ));
    }
    if prompt {
        loop {
            let needed = shares
                .first()
                .and_then(|s| phivault::crypto::shares::threshold_of(s));
            if needed.is_some_and(|n| shares.len() >= usize::from(n)) {
                break;
            }
            let asked = match needed {
                Some(n) => format!("key share {} of {n}: ", shares.len() + 1),
                None => format!("key share {}: ", shares.len() + 1),
            };
            let share = Zeroizing::new(
                rpassword::prompt_password(asked)
                    .context("no key share: give --key-share files or run on a terminal")?,
            );
            if phivault::crypto::shares::threshold_of(&share).is_none() {
                eprintln!("that is not a phivault key share, or it is mistyped; try again");
                continue;
            }
            shares.push(share);
        }
    }
    let key = phivault::crypto::shares::combine(&shares)?;
    Ok(MasterKey::KeyFile(key))
}

/// Splits a new master key into `count` shares, `threshold` of which
/// unseal, written one per 0600 file `share-N.txt` in `dir` (made 0700 if
/// missing; existing files are never overwritten). The key itself is
/// written nowhere. Returns it and the files.
fn split_new_key(
    dir: &Path,
    count: u8,
    threshold: u8,
) -> anyhow::Result<(MasterKey, Vec<PathBuf>)> {
    let mut key = Zeroizing::new([0u8; 32]);
    phivault::crypto::fill_random(&mut key[..])?;
    let shares = phivault::crypto::shares::split(&key, threshold, count)?;
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    for (i, share) in shares.iter().enumerate() {
        let path = dir.join(format!("share-{}.txt", i + 1));
        let made = create_secret_file(&path).and_then(|mut file| {
            writeln!(file, "{}", share.as_str())?;
            file.sync_all()?;
            Ok(())
        });
        if let Err(e) = made {
            let _ = std::fs::remove_file(&path);
            remove_all(&written);
            return Err(e);
        }
        written.push(path);
    }
    // The shares are the only copy of the key: on disk for good before the
    // vault is sealed with it.
    let synced = std::fs::File::open(dir).and_then(|d| d.sync_all());
    if let Err(e) = synced {
        remove_all(&written);
        return Err(anyhow::Error::new(e).context(format!("cannot sync {}", dir.display())));
    }
    Ok((MasterKey::KeyFile(key), written))
}

/// Removes the share files of a split whose vault was never sealed with it.
fn remove_all(files: &[PathBuf]) {
    for file in files {
        let _ = std::fs::remove_file(file);
    }
}

/// The HSM seal a PKCS#11 URI names; with `create`, its key is made on
/// the token first unless one has its label.
fn hsm_seal(uri: &str, create: bool) -> anyhow::Result<MasterKey> {
    let seal = HsmSeal::from_uri(uri)?;
    check_private(seal.pin_file(), "the HSM PIN file")?;
    if create && seal.create_key()? {
        println!("made a new AES-256 key on the token (sensitive, never extractable)");
    }
    Ok(MasterKey::Hsm(seal))
}

/// A passphrase file: its text, without one trailing newline.
fn read_passphrase_file(path: &Path) -> anyhow::Result<MasterKey> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
    );
    let line = text.strip_suffix('\n').unwrap_or(&text);
    let line = line.strip_suffix('\r').unwrap_or(line);
    Ok(MasterKey::Passphrase(Zeroizing::new(line.to_owned())))
}

/// A new file readable by its owner only (create-new: an existing file or
/// symbolic link at `path` is refused).
fn create_secret_file(path: &Path) -> anyhow::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))
}

/// Writes a secret to a new file readable by its owner only.
fn write_secret_file(path: &Path, secret: &str) -> anyhow::Result<()> {
    let mut file = create_secret_file(path)?;
    writeln!(file, "{secret}")?;
    file.sync_all()?;
    Ok(())
}

/// Swaps the log level of the running process.
type LevelHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

static LOG_LEVEL: std::sync::OnceLock<LevelHandle> = std::sync::OnceLock::new();

/// Installs the log subscriber: `format` (text or JSON lines) to standard
/// error, at the level PHIVAULT_LOG says, swappable on SIGHUP; and, when a
/// collector is configured, spans exported over OTLP (called within the
/// runtime: the exporter's gRPC client needs it). Returns the tracer
/// provider, to flush at exit.
fn init_logging(
    format: &str,
    otlp_endpoint: Option<&str>,
) -> Option<opentelemetry_sdk::trace::SdkTracerProvider> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("PHIVAULT_LOG")
        .unwrap_or_else(|_| "info".into());
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let _ = LOG_LEVEL.set(handle);
    let (provider, traces) = match otlp_tracer(otlp_endpoint) {
        Ok(Some((provider, tracer))) => (
            Some(provider),
            Some(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    // Only the calls' own spans: the server makes one per
                    // call, named for its method.
                    .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                        meta.is_span() && meta.name() == phivault::server::CALL_SPAN
                    })),
            ),
        ),
        Ok(None) => (None, None),
        Err(e) => {
            eprintln!("phivault: traces are off: {e}");
            (None, None)
        }
    };
    let fmt = if format == "json" {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed()
    };
    // The log level filters the log lines only: traces keep their calls
    // whatever PHIVAULT_LOG says.
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(traces)
        .init();
    provider
}

/// Whether an `http://host[:port]` URL names this machine.
fn is_loopback_url(url: &str) -> bool {
    let host = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split(['/', '?'])
        .next()
        .unwrap_or("");
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The OTLP exporter and tracer, when an endpoint is configured (the flag,
/// or OpenTelemetry's own variables).
fn otlp_tracer(
    endpoint: Option<&str>,
) -> anyhow::Result<
    Option<(
        opentelemetry_sdk::trace::SdkTracerProvider,
        opentelemetry_sdk::trace::Tracer,
    )>,
> {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;
    let configured = endpoint.is_some()
        || std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || std::env::var_os("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some();
    if !configured {
        return Ok(None);
    }
    use opentelemetry_otlp::WithTonicConfig as _;
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    let named = endpoint.map(str::to_owned).or_else(|| {
        std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .ok()
    });
    if let Some(endpoint) = endpoint {
        exporter = exporter.with_endpoint(endpoint);
    }
    match named.as_deref() {
        // A collector over TLS is checked against the system's roots.
        Some(url) if url.starts_with("https://") => {
            exporter = exporter
                .with_tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots());
        }
        Some(url) if !is_loopback_url(url) => eprintln!(
            "phivault: traces go to the collector in plaintext (http://): they name methods, namespaces and counts, never a value; use https:// off the machine"
        ),
        _ => {}
    }
    let exporter = exporter.build()?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("phivault");
    }
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("phivault");
    Ok(Some((provider, tracer)))
}

/// The files the gRPC listener's TLS comes from, read at start and again
/// on SIGHUP.
struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn read(&self) -> anyhow::Result<TlsOptions> {
        let read = |path: &Path| {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
        };
        Ok(TlsOptions {
            cert_pem: read(&self.cert)?,
            key_pem: read(&self.key)?,
            client_ca_pem: self.client_ca.as_deref().map(read).transpose()?,
        })
    }
}

/// On SIGHUP: reads the log level again from the file PHIVAULT_LOG_FILE
/// names (one filter directive, as PHIVAULT_LOG takes), and the TLS
/// certificate, key and client CA from their files, and applies both
/// without dropping a connection. What cannot be read or used is logged and
/// the old setting kept.
async fn reload_on_sighup(
    hangups: std::io::Result<tokio::signal::unix::Signal>,
    tls: Option<(TlsFiles, tokio::sync::watch::Sender<TlsOptions>)>,
) {
    let Ok(mut hangups) = hangups else {
        tracing::warn!(
            "cannot watch SIGHUP: the log level and TLS certificate cannot be changed while serving"
        );
        return;
    };
    while hangups.recv().await.is_some() {
        if let Some((files, updates)) = &tls {
            match files.read() {
                // The server checks the new material before using it.
                Ok(options) => {
                    let _ = updates.send(options);
                }
                Err(e) => tracing::error!(
                    error = %format!("{e:#}"),
                    "SIGHUP: TLS certificate not reloaded: its files cannot be read; the one in use stays"
                ),
            }
        }
        reload_log_level();
    }
}

fn reload_log_level() {
    let Some(path) = std::env::var_os("PHIVAULT_LOG_FILE") else {
        tracing::info!("SIGHUP: no PHIVAULT_LOG_FILE to read a log level from");
        return;
    };
    let level = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().to_owned(),
        Err(e) => {
            tracing::warn!(error = %e, "SIGHUP: cannot read PHIVAULT_LOG_FILE; the log level is kept");
            return;
        }
    };
    match (
        tracing_subscriber::EnvFilter::try_new(&level),
        LOG_LEVEL.get(),
    ) {
        (Ok(filter), Some(handle)) => match handle.reload(filter) {
            Ok(()) => tracing::info!(level = %level, "SIGHUP: log level changed"),
            Err(e) => tracing::warn!(error = %e, "SIGHUP: the log level could not be changed"),
        },
        (Err(_), _) => {
            tracing::warn!("SIGHUP: PHIVAULT_LOG_FILE holds no valid log level; kept")
        }
        (_, None) => {}
    }
}

fn main() -> ExitCode {
    // Nothing secret is read before the process is hardened: arguments
    // name files, and the commands read them later.
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("phivault: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let traces = {
        let _within = runtime.enter();
        init_logging(&cli.log_format, cli.otlp_endpoint.as_deref())
    };
    harden_process();
    let trace_calls = traces.is_some();
    let status = match runtime.block_on(run(cli.command, trace_calls)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("phivault: {e:#}");
            ExitCode::FAILURE
        }
    };
    if let Some(provider) = traces {
        // The spans of the last calls, before the process goes.
        let _within = runtime.enter();
        if let Err(e) = provider.shutdown() {
            eprintln!("phivault: the last traces could not be sent: {e}");
        }
    }
    status
}

/// Before any key is read or any file created: files and directories are
/// created for the owner only, and the process never dumps core.
///
/// Both limits on core dumps are needed: `RLIMIT_CORE = 0` stops a core
/// file, but when `core_pattern` pipes dumps to a helper (systemd-coredump,
/// apport) the kernel ignores that limit, whereas a process that is not
/// dumpable is never dumped — and cannot be attached to with ptrace, or have
/// its memory read through /proc, by other processes of the same user.
fn harden_process() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let none = rustix::process::Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    if let Err(e) = rustix::process::setrlimit(rustix::process::Resource::Core, none) {
        tracing::warn!(error = %e, "cannot turn core dumps off (RLIMIT_CORE)");
    }
    if let Err(e) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        tracing::warn!(error = %e, "cannot make the process non-dumpable");
    }
    // Open files: RocksDB's tables and logs and every connection share one
    // limit, whose usual soft value (1024) sits below the connection cap; a
    // flood of connections must not leave the store unable to open a file.
    let files = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if files.current < files.maximum {
        let raised = rustix::process::Rlimit {
            current: files.maximum,
            maximum: files.maximum,
        };
        if let Err(e) = rustix::process::setrlimit(rustix::process::Resource::Nofile, raised) {
            tracing::warn!(error = %e, "cannot raise the open-file limit to its hard limit");
        }
    }
}

/// Refuses a data directory, key or passphrase file that anyone but its
/// owner can reach: the master key and every mapping would be one `cat`
/// away for another account on the machine.
fn check_private(path: &Path, what: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        let wanted = if meta.is_dir() { "700" } else { "600" };
        bail!(
            "{what} {} is open to group or others (mode {mode:03o}); refusing to start: chmod {wanted} {}",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

async fn run(command: Command, trace_calls: bool) -> anyhow::Result<()> {
    match command {
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "phivault",
                &mut std::io::stdout(),
            );
        }
        Command::ManPages { dir } => {
            use clap::CommandFactory as _;
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("cannot write the man pages to {}", dir.display()))?;
            // The process's owner-only umask is for secrets; man pages are
            // for every user of the machine.
            for entry in std::fs::read_dir(&dir)?.filter_map(Result::ok) {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with("phivault") && name.ends_with(".1") {
                    std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o644))?;
                }
            }
        }
        Command::Init {
            vault,
            admin_key_file,
            kdf,
        } => {
            let options = VaultOptions {
                kdf: kdf.params()?,
                ..VaultOptions::default()
            };
            // The key's file is created before the vault, so that a vault is
            // never made whose admin key could not be written anywhere.
            let location = vault.store.location(None)?;
            let mut key_out = create_secret_file(&admin_key_file)?;
            let made = async {
                let (master, share_files) =
                    match (vault.split_into, vault.key_threshold, &vault.key_share_dir) {
                        (Some(count), Some(threshold), Some(dir)) => {
                            let (master, files) = split_new_key(dir, count, threshold)?;
                            (master, files)
                        }
                        _ => (
                            master_key(
                                vault.seal(),
                                vault.create_key_file || vault.create_hsm_key,
                                true,
                            )?,
                            Vec::new(),
                        ),
                    };
                let opened = match Vault::init_at(&location, master, options).await {
                    Ok(opened) => opened,
                    Err(e) => {
                        for file in &share_files {
                            let _ = std::fs::remove_file(file);
                        }
                        return Err(e.into());
                    }
                };
                for file in &share_files {
                    println!("key share written to {} (mode 0600)", file.display());
                }
                let (_, key) = opened
                    .create_client("admin", &["admin", "grant", "audit"])
                    .await?;
                writeln!(key_out, "{}", key.expose())?;
                key_out.sync_all()?;
                anyhow::Ok(opened)
            }
            .await;
            let opened = match made {
                Ok(opened) => opened,
                Err(e) => {
                    drop(key_out);
                    let _ = std::fs::remove_file(&admin_key_file);
                    return Err(e);
                }
            };
            println!("initialised a vault at {location}");
            println!(
                "admin API key written to {} (mode 0600)",
                admin_key_file.display()
            );
            opened.close()?;
        }
        Command::Status { vault, json } => {
            let opened = open_vault(&vault).await?;
            let printed = print_status(&opened, json).await;
            opened.close()?;
            printed?;
        }
        Command::Serve(args) => serve(*args, trace_calls).await?,
        Command::Rekey(args) => rekey(args).await?,
        Command::Backup { data_dir, to } => {
            let info = phivault::backup_offline(&data_dir, &to).await?;
            println!(
                "backup written to {} ({} bytes); it opens with the vault's passphrase or master key",
                info.path.display(),
                info.bytes
            );
        }
        Command::Export { vault, to } => {
            let opened = open_vault(&vault).await?;
            let written = opened.export_to(&to).await;
            opened.close()?;
            let info = written?;
            println!(
                "exported {} rows to {} ({} bytes); import it with `phivault import --from` and the same passphrase or key",
                info.rows,
                to.display(),
                info.bytes
            );
            println!("file MAC {}", info.mac);
        }
        Command::Import { vault, from } => {
            let location = vault.store.location(None)?;
            let master = master_key(vault.seal(), false, false)?;
            let info = phivault::import(&from, &location, master).await?;
            // An older export of the same vault is just as authentic: the
            // MAC and time say which one this was.
            let exported_at =
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(info.exported_at_ms);
            println!(
                "imported {} rows into {location} from the export written {}, file MAC {}; checking it",
                info.rows,
                humantime::format_rfc3339_seconds(exported_at),
                info.mac
            );
            verify_vault(&vault).await?;
        }
        Command::Verify { vault } => verify_vault(&vault).await?,
        Command::Audit(AuditCommand::Verify { store, json }) => {
            let report = phivault::verify_audit_at(&store.location(None)?).await?;
            print_audit_report(&report, json);
            if let Some((seq, _)) = report.first_bad {
                bail!("the audit chain is broken at record {seq}");
            }
        }
    }
    Ok(())
}

/// `phivault verify`: every mapping, then the audit chain; an error if
/// either has a problem.
async fn verify_vault(vault: &VaultArgs) -> anyhow::Result<()> {
    let opened = open_vault(vault).await?;
    let report = opened.verify().await?;
    opened.close()?;
    print_report(&report);
    let audit = phivault::verify_audit_at(&vault.store.location(None)?).await?;
    print_audit_report(&audit, false);
    if !report.is_clean() {
        bail!("{} problem(s) found", report.counts.values().sum::<u64>());
    }
    if let Some((seq, _)) = audit.first_bad {
        bail!("the audit chain is broken at record {seq}");
    }
    Ok(())
}

fn print_audit_report(report: &phivault::AuditReport, json: bool) {
    if json {
        let (first_bad, problem) = match report.first_bad {
            Some((seq, why)) => (Some(seq), Some(why)),
            None => (None, None),
        };
        println!(
            "{}",
            serde_json::json!({
                "records": report.records,
                "head_seq": report.head_seq,
                "intact": report.is_intact(),
                "first_bad_seq": first_bad,
                "problem": problem,
            })
        );
        return;
    }
    match report.first_bad {
        None => println!(
            "ok: the audit chain is intact ({} records, head {})",
            report.records, report.head_seq
        ),
        Some((seq, why)) => {
            println!(
                "BROKEN at record {seq}: {why} ({} records verified before it; head {})",
                report.records, report.head_seq
            );
        }
    }
}

/// Unseals the vault that `args` names, for an offline command.
async fn open_vault(args: &VaultArgs) -> anyhow::Result<Vault> {
    let master = master_key(args.seal(), false, false)?;
    Ok(Vault::open_at(&args.store.location(None)?, master, VaultOptions::default()).await?)
}

fn print_report(report: &phivault::VerifyReport) {
    println!("reverse rows:    {}", report.reverse_rows);
    println!("forward entries: {}", report.forward_entries);
    for (version, rows) in &report.rows_by_keyset {
        println!("  sealed under keyset {version}: {rows}");
    }
    if report.is_clean() {
        println!("ok: every mapping opens, is indexed and hashes back");
        return;
    }
    for (kind, count) in &report.counts {
        println!("PROBLEM {kind}: {count}");
    }
    for problem in &report.problems {
        println!("  {problem}");
    }
    let listed = report.problems.len() as u64;
    let total: u64 = report.counts.values().sum();
    if listed < total {
        println!("  ... and {} more", total - listed);
    }
}

async fn rekey(args: RekeyArgs) -> anyhow::Result<()> {
    let old = master_key(args.vault.seal(), false, false)?;
    let mut share_files = Vec::new();
    let new = if let (Some(count), Some(threshold), Some(dir)) = (
        args.new_key_shares,
        args.new_key_threshold,
        &args.new_key_share_dir,
    ) {
        let (master, files) = split_new_key(dir, count, threshold)?;
        share_files = files;
        master
    } else if let Some(uri) = &args.new_hsm {
        hsm_seal(uri, args.create_new_hsm_key)?
    } else if let Some(path) = &args.new_master_key_file {
        if args.create_new_key_file {
            MasterKey::create_key_file(path)?
        } else {
            MasterKey::read_key_file(path)?
        }
    } else if let Some(path) = &args.new_passphrase_file {
        read_passphrase_file(path)?
    } else if let Ok(passphrase) = std::env::var("PHIVAULT_NEW_PASSPHRASE") {
        tracing::warn!(
            "the new passphrase comes from PHIVAULT_NEW_PASSPHRASE: the environment is inherited by child processes and readable in /proc by the same user; prefer --new-passphrase-file"
        );
        MasterKey::Passphrase(Zeroizing::new(passphrase))
    } else {
        let first = Zeroizing::new(rpassword::prompt_password("new passphrase: ").context(
            "no new passphrase: pass --new-passphrase-file or --new-master-key-file, set PHIVAULT_NEW_PASSPHRASE, or run on a terminal",
        )?);
        let again = Zeroizing::new(rpassword::prompt_password("repeat new passphrase: ")?);
        if first != again {
            bail!("the passphrases differ");
        }
        MasterKey::Passphrase(first)
    };
    let location = args.vault.store.location(None)?;
    if let Err(e) = Vault::rekey(&location, old, new, args.kdf.params()?).await {
        // The files stay: a rekey that failed after its commit is sealed
        // with them, and they would be the only copy of the key.
        if !share_files.is_empty() {
            eprintln!(
                "the rekey failed; the new key shares were kept in case it committed: check which key opens the vault (`phivault status` with the old key, then with the new shares) before removing them"
            );
        }
        return Err(e.into());
    }
    for file in &share_files {
        println!("key share written to {} (mode 0600)", file.display());
    }
    println!(
        "master key replaced for {location}; the old passphrase or key file no longer opens it"
    );
    Ok(())
}

async fn serve(args: ServeArgs, trace_calls: bool) -> anyhow::Result<()> {
    let args = resolve(args)?;
    if args.check_config {
        print!("{}", render_settings(&args)?);
        return Ok(());
    }
    let durability = if args.durability.as_deref() == Some("os") {
        Durability::Os
    } else {
        Durability::Fsync
    };
    if durability == Durability::Os {
        tracing::warn!("durability = os: acknowledged writes can be lost on power failure");
    }
    let options = VaultOptions {
        store: StoreOptions {
            durability,
            ..StoreOptions::default()
        },
        limits: phivault::Limits {
            max_items: args.max_items.unwrap_or(10_000),
            max_value_bytes: args.max_value_bytes.unwrap_or(4096),
        },
        rotation_max_rate: args.rotation_max_rate,
        ..VaultOptions::default()
    };
    let vault = if args.dev {
        dev_vault(Path::new(".phivault-dev"), options).await?
    } else {
        let location = args.store.location(args.store_pool_size)?;
        if let Location::Directory(data_dir) = &location {
            check_private(data_dir, "the data directory")?;
        }
        if let Some(file) = &args.master_key_file {
            check_private(file, "the master key file")?;
        }
        if let Some(file) = &args.passphrase_file {
            check_private(file, "the passphrase file")?;
        }
        let master = master_key(
            Seal {
                passphrase_file: args.passphrase_file.as_deref(),
                master_key_file: args.master_key_file.as_deref(),
                hsm: args.hsm.as_deref(),
                key_shares: &args.key_shares,
                key_shares_prompt: args.key_shares_prompt,
            },
            false,
            false,
        )?;
        Vault::open_at(&location, master, options).await?
    };
    let tls_files = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args.tls_client_ca.clone(),
        }),
        _ => None,
    };
    let tls = tls_files.as_ref().map(TlsFiles::read).transpose()?;
    let (tls_updates, tls_reloads) = match &tls {
        Some(tls) => {
            let (updates, reloads) = tokio::sync::watch::channel(tls.clone());
            (Some(updates), Some(reloads))
        }
        None => (None, None),
    };
    let serve_options = ServeOptions {
        listen: args
            .listen
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 50051))),
        tls,
        tls_reloads,
        trace_calls,
        insecure_plaintext: args.insecure_plaintext,
        max_message_bytes: args.max_message_bytes.unwrap_or(4 << 20),
        metrics_listen: args.metrics_listen,
        http_listen: args.http_listen,
        backup_dir: args.backup_dir.clone(),
        transport: args.transport.clone(),
        client_limits: phivault::limits::Limits::parse(&args.client_limits)
            .map_err(|e| anyhow::anyhow!("client limits: {e}"))?,
        summary_window: std::time::Duration::from_secs(args.summary_window_secs.unwrap_or(60)),
        break_glass_window: std::time::Duration::from_secs(
            args.break_glass_window_secs.unwrap_or(1800),
        ),
        detection_window: match args.detection_window_secs.unwrap_or(300) {
            0 => None,
            secs => Some(std::time::Duration::from_secs(secs)),
        },
        alert_webhook: match (&args.alert_webhook, &args.alert_webhook_secret_file) {
            (Some(url), Some(secret)) => {
                check_private(secret, "the alert webhook's secret file")?;
                let key = std::fs::read(secret)
                    .with_context(|| format!("cannot read {}", secret.display()))?;
                let key = zeroize::Zeroizing::new(key.trim_ascii().to_vec());
                if key.len() < 16 {
                    bail!("the alert webhook's secret must be at least 16 bytes");
                }
                Some(phivault::server::webhook::WebhookOptions {
                    url: url.clone(),
                    secret: Arc::new(key),
                    ca_pem: args
                        .alert_webhook_ca
                        .as_ref()
                        .map(|ca| {
                            std::fs::read(ca)
                                .with_context(|| format!("cannot read {}", ca.display()))
                        })
                        .transpose()?,
                })
            }
            _ => None,
        },
    };
    let vault = Arc::new(vault);
    // Watched before the server says it is ready: a SIGHUP (systemd's
    // reload) that came before the handler would end the process, or be
    // lost where the signal is ignored.
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let reloads = tokio::spawn(reload_on_sighup(hangups, tls_files.zip(tls_updates)));
    vault.resume_background_jobs().await?;
    phivault::server::serve(Arc::clone(&vault), serve_options, shutdown_signal()).await?;
    reloads.abort();
    // A rotation stops after its current chunk; its cursor is on disk.
    vault.stop_background_jobs().await;
    // Every service is gone with the server; the writer flushes what is
    // queued and storage closes cleanly.
    match Arc::try_unwrap(vault) {
        Ok(vault) => vault.close()?,
        Err(_) => tracing::warn!(
            "the vault was still shared at shutdown; storage closes as the process exits"
        ),
    }
    tracing::info!("vault closed");
    Ok(())
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot watch SIGTERM; stop with Ctrl-C");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: no new calls; finishing those in flight");
}

async fn dev_vault(dir: &Path, options: VaultOptions) -> anyhow::Result<Vault> {
    let data = dir.join("data");
    let key_file = dir.join("master.key");
    let admin_file = dir.join("admin.key");
    eprintln!(
        "WARNING: development vault in {}: its master key and admin key sit next to its data.",
        dir.display()
    );
    eprintln!("WARNING: never put real PHI in it.");
    let vault = if data.join("CURRENT").exists() {
        Vault::open(&data, MasterKey::read_key_file(&key_file)?, options).await?
    } else {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let master = if key_file.exists() {
            MasterKey::read_key_file(&key_file)?
        } else {
            MasterKey::create_key_file(&key_file)?
        };
        let vault = Vault::init(&data, master, options).await?;
        let (_, key) = vault
            .create_client("admin", &["admin", "grant", "audit"])
            .await?;
        write_secret_file(&admin_file, key.expose())?;
        vault
    };
    let admin_key = std::fs::read_to_string(&admin_file).unwrap_or_default();
    eprintln!("\nadmin API key: {}", admin_key.trim());
    eprintln!("try, in another terminal:");
    eprintln!("  export PHIVAULT_API_KEY=$(cat {})", admin_file.display());
    eprintln!("  ./target/debug/phivault-client clients create pipeline --scope tokenize:ssn");
    eprintln!("  ./target/debug/phivault-client namespaces list\n");
    Ok(vault)
}

/// What `phivault status` shows, rendered as `phivault-client` renders the
/// same messages from a served vault.
async fn print_status(vault: &Vault, json: bool) -> anyhow::Result<()> {
    use std::fmt::Write as _;

    use phivault::server::convert;
    use phivault_proto::render;
    let keys = convert::key_status(&vault.key_status().await?);
    let audit_records = vault.audit_record_count().await?;
    let namespaces: Vec<_> = vault.namespaces().iter().map(convert::namespace).collect();
    let clients: Vec<_> = vault.clients().iter().map(convert::client).collect();
    let mut text = String::new();
    if json {
        let status = serde_json::json!({
            "keys": render::key_status_json(&keys),
            "audit_records": audit_records,
            "namespaces": namespaces.iter().map(render::namespace_json).collect::<Vec<_>>(),
            "clients": clients.iter().map(render::client_json).collect::<Vec<_>>(),
        });
        writeln!(text, "{status}")?;
    } else {
        text.push_str(&render::key_status_text(&keys));
        if keys.rotation.is_some() {
            writeln!(
                text,
                "  (a stopped vault: the rotation resumes when it is served)"
            )?;
        }
        writeln!(
            text,
            "audit trail: {audit_records} records (`phivault audit verify` walks the chain)"
        )?;
        writeln!(text, "namespaces:")?;
        for ns in &namespaces {
            writeln!(text, "  {}", render::namespace_line(ns))?;
        }
        writeln!(text, "clients:")?;
        for client in &clients {
            writeln!(text, "  {}", render::client_line(client))?;
        }
    }
    // A closed pipe is an error to report, not a panic.
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_configuration_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/phivault.toml");
        let config = ConfigFile::load(&path).expect("deploy/phivault.toml parses");
        assert!(config.data_dir.is_some() && config.tls.cert.is_some());
        // The example shows the defaults: the two must not drift apart.
        let shown = config
            .transport
            .over(TransportLimits::default())
            .expect("valid");
        assert_eq!(
            format!("{shown:?}"),
            format!("{:?}", TransportLimits::default())
        );
        assert!(
            TransportConfig::default()
                .over(TransportLimits::default())
                .is_ok()
        );
        let zero = TransportConfig {
            max_concurrent_streams: Some(0),
            ..TransportConfig::default()
        };
        assert!(zero.over(TransportLimits::default()).is_err());
    }

    /// What `--check-config` prints is a configuration file that resolves
    /// to the same settings.
    #[test]
    fn the_printed_settings_load_back_as_they_were() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/phivault.toml");
        let serve = |argv: &[&str]| {
            let Command::Serve(args) = Cli::parse_from(argv).command else {
                panic!("serve")
            };
            resolve(*args).expect("resolve")
        };
        let first = serve(&[
            "phivault",
            "serve",
            "--config",
            example.to_str().expect("utf-8"),
            "--max-items",
            "77",
        ]);
        let printed = render_settings(&first).expect("render");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("printed.toml");
        std::fs::write(&path, &printed).expect("write");
        let again = serve(&[
            "phivault",
            "serve",
            "--config",
            path.to_str().expect("utf-8"),
        ]);
        assert_eq!(render_settings(&again).expect("render"), printed);
        assert!(printed.contains("max_items = 77"), "{printed}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let error = ConfigFile::parse("lissen = \"0.0.0.0:1\"").expect_err("typo");
        assert!(error.to_string().contains("lissen"), "{error}");
        assert!(ConfigFile::parse("[limits]\nmax_itemz = 1").is_err());
        // A secret pasted into the file under a wrong key is named by its
        // key and line, never quoted.
        let error =
            ConfigFile::parse("listen = \"127.0.0.1:1\"\npassphrase = \"correct horse battery\"\n")
                .expect_err("unknown key");
        assert!(error.to_string().starts_with("line 2: "), "{error}");
        assert!(error.to_string().contains("passphrase"), "{error}");
        assert!(!error.to_string().contains("correct horse"), "{error}");
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "data_dir = \"/srv/v\"\nlisten = \"127.0.0.1:7000\"\n[limits]\nmax_items = 50\n",
        )
        .expect("write");
        let args = Cli::parse_from([
            "phivault",
            "serve",
            "--config",
            path.to_str().expect("utf-8"),
            "--listen",
            "127.0.0.1:8000",
        ]);
        let Command::Serve(args) = args.command else {
            panic!("serve")
        };
        let resolved = resolve(*args).expect("resolve");
        assert_eq!(
            resolved.listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 8000)))
        );
        assert_eq!(
            resolved.store.data_dir.as_deref(),
            Some(Path::new("/srv/v"))
        );
        assert_eq!(resolved.max_items, Some(50));
        assert_eq!(resolved.max_value_bytes, Some(4096));
    }
}
