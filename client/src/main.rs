//! `phivault-client`: tokenize, reveal and administer from the shell.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use phivault_client::output::{create_private, ensure_absent, publish};
use phivault_client::{Client, ClientOptions, ItemResult, Transport, bulk, code_name, v1 as pb};
use phivault_proto::render::{
    client_json, client_line, key_status_json, key_status_text, namespace_json, namespace_line,
};

/// Command-line client of a phivault vault.
#[derive(Parser)]
#[command(name = "phivault-client", version, about, after_help = EXIT_CODES)]
struct Cli {
    #[command(flatten)]
    connection: Connection,
    /// Print JSON instead of plain text.
    #[arg(
        long,
        env = "PHIVAULT_JSON",
        hide_env_values = true,
        value_parser = clap::builder::BoolishValueParser::new(),
        global = true
    )]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Connection {
    /// The vault's address: http://host:port (loopback only, unless
    /// --insecure-plaintext) or https://host:port; for a vault of several
    /// nodes, their addresses separated by commas, used in order, the next
    /// when one goes away.
    #[arg(
        long,
        env = "PHIVAULT_ENDPOINT",
        hide_env_values = true,
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    endpoint: String,
    /// File holding the API key. Without it, PHIVAULT_API_KEY.
    #[arg(
        long,
        env = "PHIVAULT_API_KEY_FILE",
        hide_env_values = true,
        global = true
    )]
    api_key_file: Option<PathBuf>,
    /// PEM CA bundle to verify the server with (default: system roots).
    #[arg(long, env = "PHIVAULT_TLS_CA", hide_env_values = true, global = true)]
    tls_ca: Option<PathBuf>,
    /// PEM client certificate for mTLS.
    #[arg(
        long,
        env = "PHIVAULT_CLIENT_CERT",
        hide_env_values = true,
        global = true,
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// PEM client key for mTLS.
    #[arg(
        long,
        env = "PHIVAULT_CLIENT_KEY",
        hide_env_values = true,
        global = true,
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// The server name to verify, when it differs from the endpoint's host.
    #[arg(
        long,
        env = "PHIVAULT_TLS_DOMAIN",
        hide_env_values = true,
        global = true
    )]
    tls_domain: Option<String>,
    /// DANGEROUS: allow an http:// endpoint that is not loopback; the API
    /// key, values and tokens then cross the network unencrypted.
    #[arg(
        long,
        env = "PHIVAULT_INSECURE_PLAINTEXT",
        hide_env_values = true,
        value_parser = clap::builder::BoolishValueParser::new(),
        global = true
    )]
    insecure_plaintext: bool,
    /// How long each call may take before it is given up (`0s`: no limit).
    /// Streams (bulk runs, audit export) and trail verification have none;
    /// backups, key rotation and calls that hand out a key at least 10
    /// minutes.
    #[arg(
        long,
        env = "PHIVAULT_DEADLINE",
        hide_env_values = true,
        default_value = "30s",
        global = true
    )]
    deadline: humantime::Duration,
    /// Why reveals are made: an HL7 PurposeOfUse code (TREAT, HPAYMT,
    /// HOPERAT, ETREAT to break the glass…), recorded with each reveal.
    #[arg(long, env = "PHIVAULT_PURPOSE", hide_env_values = true, global = true)]
    purpose: Option<String>,
    /// The reason in words that goes with --purpose (up to 200 characters,
    /// never PHI: recorded as given).
    #[arg(
        long,
        env = "PHIVAULT_REASON",
        hide_env_values = true,
        global = true,
        requires = "purpose"
    )]
    reason: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Print a completion script for `shell` (bash, zsh, fish, elvish,
    /// powershell) to standard output. Needs no vault.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write a man page for this command and each subcommand into `dir`.
    /// Needs no vault.
    ManPages {
        /// Where the pages go (created if missing).
        dir: PathBuf,
    },
    /// Tokenize values (arguments, or one per line on standard input).
    Tokenize {
        /// Namespace.
        #[arg(short, long)]
        namespace: String,
        values: Vec<String>,
    },
    /// Reveal tokens (arguments, or one per line on standard input).
    Detokenize {
        /// Namespace.
        #[arg(short, long)]
        namespace: String,
        /// Reveal all but the last 4 characters masked.
        #[arg(long)]
        masked: bool,
        tokens: Vec<String>,
    },
    /// Create or list namespaces.
    #[command(subcommand)]
    Namespaces(NamespaceCommand),
    /// Create, list or revoke clients.
    #[command(subcommand)]
    Clients(ClientCommand),
    /// Rotate keys or show their status.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Have the server write a consistent backup to a new directory PATH on
    /// its own file system.
    Backup {
        /// An absolute path on the server that does not exist yet.
        path: String,
    },
    /// Check the server's health (exit status 0 when serving).
    Health,
    /// The server's version, store and limits (items per request, message
    /// and value sizes).
    Info,
    /// Verify, query and export the audit trail (the audit scope).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Alerts: reveals that broke the glass, and what else the vault flags
    /// for a security team (the audit scope).
    #[command(subcommand)]
    Alerts(AlertCommand),
    /// Tokenize or reveal the mapped cells of whole CSV, NDJSON, FHIR,
    /// HL7 v2 and Parquet files, streaming. Exit status: 0 when every cell went through, 3 when
    /// some cells failed (the run completed), 1 when the run stopped.
    #[command(subcommand)]
    Bulk(BulkCommand),
    /// HL7 v2 feeds.
    #[command(subcommand)]
    Hl7(Hl7Command),
}

#[derive(Subcommand)]
enum Hl7Command {
    /// Relay an MLLP feed: tokenize (or detokenize) every message on its
    /// way to --forward and pass back the receiver's acknowledgement. A
    /// message that cannot be rewritten whole is not passed on: its sender
    /// gets `MSA|AE` naming the part and the reason, and sends it again.
    Proxy {
        /// Where senders connect (127.0.0.1:2575; port 0 for any free one,
        /// printed once listening).
        #[arg(long, value_name = "ADDR")]
        listen: std::net::SocketAddr,
        /// The receiver (host:port).
        #[arg(long, value_name = "ADDR")]
        forward: String,
        /// Detokenize instead: for a feed coming back into the network.
        #[arg(long)]
        detokenize: bool,
        /// With --detokenize: reveal all but the last 4 characters masked.
        #[arg(long, requires = "detokenize")]
        masked: bool,
        /// SEG-F[.C[.S]]=NAMESPACE rules added before the profile's.
        #[arg(long = "map", value_name = "FIELD=NAMESPACE")]
        maps: Vec<String>,
        /// A TOML profile extending (or replacing) the built-in one.
        #[arg(long, value_name = "FILE")]
        profile: Option<PathBuf>,
        /// How long to keep trying the vault for one message before
        /// refusing it.
        #[arg(long, default_value = "30s")]
        retry_for: humantime::Duration,
    },
}

#[derive(Subcommand)]
enum BulkCommand {
    /// Replace the mapped cells with their tokens.
    Tokenize(BulkArgs),
    /// Replace the mapped cells (tokens) with their values.
    Detokenize {
        #[command(flatten)]
        args: BulkArgs,
        /// Reveal all but the last 4 characters masked.
        #[arg(long)]
        masked: bool,
    },
}

#[derive(Args)]
struct BulkArgs {
    /// The input file; standard input when absent or `-`.
    input: Option<PathBuf>,
    /// Write to FILE (mode 0600; it must not exist) instead of standard
    /// output: written as FILE.partial and renamed when the run completes,
    /// removed when it stops.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// The input's format; guessed from its extension (.csv, .tsv, .ndjson,
    /// .jsonl, .hl7, .parquet) when absent.
    #[arg(long, value_enum)]
    format: Option<BulkFormat>,
    /// CSV: COLUMN=NAMESPACE (the header's name, spaces allowed; its
    /// number from 1 with --no-header). NDJSON:
    /// /json/pointer=NAMESPACE (RFC 6901; `*` for every array element).
    /// HL7 v2: SEG-F[.C[.S]]=NAMESPACE (PID-19=ssn, PID-5.1.1=name), in
    /// every repetition, added before the profile's rules. Parquet:
    /// COLUMN=NAMESPACE (a top-level string column). Repeatable.
    #[arg(long = "map", value_name = "FIELD=NAMESPACE")]
    maps: Vec<String>,
    /// CSV: the character between fields: `,` (the default; tab for a .tsv
    /// file), `;`, `tab`, `|`, or another ASCII character.
    #[arg(long, value_name = "CHAR", value_parser = csv_char)]
    delimiter: Option<u8>,
    /// CSV: the character around a field that holds a delimiter, a quote or
    /// a line break (default `"`).
    #[arg(long, value_name = "CHAR", value_parser = csv_char)]
    quote: Option<u8>,
    /// CSV: the character before a quote inside a quoted field (`\` in many
    /// database dumps); without it such a quote is written twice (RFC 4180).
    #[arg(long, value_name = "CHAR", value_parser = csv_char)]
    escape: Option<u8>,
    /// CSV: the file has no header row: its first line is data, and --map
    /// names columns by number from 1 (--map 3=ssn).
    #[arg(long)]
    no_header: bool,
    /// FHIR and HL7 v2: a TOML profile whose rules extend the built-in
    /// profile (or replace it, with `builtin = false`).
    #[arg(long, value_name = "FILE")]
    profile: Option<PathBuf>,
    /// Write every failed cell to FILE (mode 0600; it must not exist) as
    /// CSV: row, line, column (or JSON path), namespace, error code, message.
    /// Never the value.
    #[arg(long, value_name = "FILE")]
    errors: Option<PathBuf>,
    /// A row with a failed cell: keep it with the cell as it was, drop it,
    /// or stop the run there.
    #[arg(long, value_enum, default_value = "keep")]
    on_error: OnErrorArg,
    /// Items per stream message (at most 10,000).
    #[arg(long, default_value_t = 1_000)]
    batch_size: usize,
    /// Stream messages sent and not yet answered.
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    /// While the vault is unreachable, keep reconnecting this long (30s, 10m),
    /// going round the endpoints, before giving up.
    #[arg(long, default_value = "2m")]
    retry_for: humantime::Duration,
    /// How the run reports progress on standard error: `auto` (a bar on a
    /// terminal, else `plain`), `bar`, `plain` (a line every
    /// --progress-every, for logs), `json` (the same as one JSON object per
    /// line), or `none`.
    #[arg(long, value_enum, default_value = "auto")]
    progress: ProgressArg,
    /// How often `plain` and `json` progress lines are written.
    #[arg(long, default_value = "10s")]
    progress_every: humantime::Duration,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ProgressArg {
    Auto,
    Bar,
    Plain,
    Json,
    None,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BulkFormat {
    /// Delimited text: CSV (RFC 4180) or another dialect (--delimiter,
    /// --quote, --escape, --no-header).
    Csv,
    /// One JSON value per line.
    Ndjson,
    /// FHIR R4 resources, one per line (a Bulk Data export file).
    Fhir,
    /// One FHIR Bundle (or resource) as a JSON document.
    FhirBundle,
    /// HL7 v2 messages: a file of messages (segments ended by CR, CRLF or
    /// LF, with or without batch headers) or MLLP frames.
    Hl7v2,
    /// A Parquet file (not standard input: its footer is read first); the
    /// mapped top-level string columns are written again, the others
    /// copied as they are.
    Parquet,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnErrorArg {
    Keep,
    DropRow,
    Fail,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the server's audit hash chain; exits non-zero if it is broken.
    Verify,
    /// Every client that revealed TOKEN (in full or masked), with time and
    /// request id, across key rotations.
    Disclosures {
        /// Namespace.
        #[arg(short, long)]
        namespace: String,
        token: String,
    },
    /// The audit records as NDJSON, one record per line, for a SIEM.
    Export {
        /// Only records at or after TIME: RFC 3339 (2026-11-01T08:00:00Z), a
        /// date (2026-11-01, UTC) or a duration back from now (24h, 7days).
        #[arg(long)]
        since: Option<String>,
        /// Write to FILE (mode 0600; it must not exist) instead of standard
        /// output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Reveals that broke the glass (an emergency purpose with a
    /// break-glass scope), for review: time, client, namespace, items,
    /// purpose and reason. Re-arm a client after review with `clients
    /// release`.
    BreakGlass {
        /// Only records at or after TIME (as for export) [default: 30days].
        #[arg(long, default_value = "30days")]
        since: String,
    },
}

#[derive(Subcommand)]
enum AlertCommand {
    /// The alerts raised, with the reason in words (needs the audit scope).
    List {
        /// Only alerts at or after TIME: RFC 3339, a date, or a duration
        /// back from now [default: 7days].
        #[arg(long, default_value = "7days")]
        since: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Start a key rotation: new writes use the new keys at once; existing
    /// mappings move in the background; no token changes.
    Rotate {
        /// Follow the rotation (progress bar on a terminal) until the old keys
        /// are destroyed.
        #[arg(long)]
        wait: bool,
    },
    /// Key versions and the progress of a running rotation.
    Status,
}

#[derive(Subcommand)]
enum NamespaceCommand {
    /// Create a namespace.
    Create {
        name: String,
        /// ssn, card, phone, email, date, name, alnum or opaque.
        #[arg(long)]
        format: String,
        #[arg(long)]
        keep_prefix: Option<u32>,
        #[arg(long)]
        keep_suffix: Option<u32>,
        /// date: the pattern, e.g. %m/%d/%Y.
        #[arg(long)]
        date_pattern: Option<String>,
        /// date: the first year a value may fall in [default: 1800].
        #[arg(long)]
        value_year_min: Option<u32>,
        /// date: the last year a value may fall in [default: 2199].
        #[arg(long)]
        value_year_max: Option<u32>,
        /// A fresh random token on every call instead of a deterministic one.
        #[arg(long)]
        random: bool,
    },
    /// List namespaces.
    List,
}

#[derive(Subcommand)]
enum ClientCommand {
    /// Create a client; its API key is printed once, alone on stdout.
    Create {
        name: String,
        /// tokenize:<ns>, lookup:<ns>, detokenize:<ns>, detokenize-masked:<ns>, admin, audit
        /// (repeatable).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Allow a masked reveal together with tokenize or lookup on one
        /// namespace, which together reveal whole values (refused without).
        #[arg(long)]
        allow_masked_oracle: bool,
        /// A rate limit, KIND[:NAMESPACE]=N/s (also /m, /h; optionally
        /// ,burst=B) for KIND tokenize or detokenize: items per second in
        /// each namespace, or the one named; `unlimited` lifts the server's
        /// default (repeatable).
        #[arg(long = "rate", value_name = "RULE")]
        rates: Vec<String>,
        /// A quota of new mappings, new-mappings[:NAMESPACE]=N/DURATION
        /// (`100000/24h`): at most N created per fixed window (repeatable).
        #[arg(long = "quota", value_name = "RULE")]
        quotas: Vec<String>,
        /// Refuse this client's reveals that state no purpose of use
        /// (--purpose).
        #[arg(long)]
        require_purpose: bool,
        /// How long its API key, and each new one `rotate-key` gives it, is
        /// accepted (90days, 720h) [default: until revoked].
        #[arg(long)]
        expires_in: Option<humantime::Duration>,
        /// What an alert of reveal-anomaly detection about this client does:
        /// `alert` (record, count, log) or `suspend` (also refuse its calls
        /// until `clients release`).
        #[arg(long, value_parser = ["alert", "suspend"], default_value = "alert")]
        quarantine: String,
    },
    /// List clients.
    List,
    /// Revoke a client.
    Revoke { client_id: String },
    /// Re-arm a client whose break-glass window has opened, after review
    /// (`audit break-glass`): its next emergency reveal opens a new window.
    Release { client_id: String },
    /// Give a client a new API key, printed once alone on stdout; the old
    /// key is still accepted for the grace period.
    RotateKey {
        client_id: String,
        /// How long the old key is still accepted (0s: not at all).
        #[arg(long, default_value = "24h")]
        grace: humantime::Duration,
    },
}

/// What the exit status says, for scripts and schedulers. Distinct from
/// clap's 2 (a usage error), so that a run that finished with failed cells
/// is never taken for a mistyped command.
const EXIT_CODES: &str = "\
Exit status:
  0  done
  1  failed (the call or the input was refused, or the server failed it)
  2  usage error (a bad argument; nothing was sent)
  3  a bulk run finished, but some cells failed (see --errors FILE)
  4  the vault could not be reached or was unavailable: worth retrying
  5  not authenticated or not permitted (API key, scope, revoked client)";

/// Exit status 3: a bulk run that finished with failed cells.
const EXIT_FAILED_CELLS: u8 = 3;
/// Exit status 4: nothing answered, or the vault said it could not serve.
const EXIT_UNAVAILABLE: u8 = 4;
/// Exit status 5: the key or the scope was refused.
const EXIT_DENIED: u8 = 5;

/// The exit status of a command that failed with `error`.
fn exit_status(error: &anyhow::Error) -> ExitCode {
    use phivault_client::ClientError;
    let of_code = |code: tonic::Code| match code {
        tonic::Code::Unavailable
        | tonic::Code::DeadlineExceeded
        | tonic::Code::ResourceExhausted => ExitCode::from(EXIT_UNAVAILABLE),
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => ExitCode::from(EXIT_DENIED),
        _ => ExitCode::FAILURE,
    };
    for cause in error.chain() {
        if let Some(client) = cause.downcast_ref::<ClientError>() {
            return match client {
                ClientError::Unreachable(_) => ExitCode::from(EXIT_UNAVAILABLE),
                ClientError::Status(status) => of_code(status.code()),
                _ => ExitCode::FAILURE,
            };
        }
        if let Some(bulk) = cause.downcast_ref::<bulk::BulkError>() {
            return match bulk {
                bulk::BulkError::Refused { code, .. } => of_code(*code),
                bulk::BulkError::Unanswered(_) => ExitCode::from(EXIT_UNAVAILABLE),
                _ => ExitCode::FAILURE,
            };
        }
    }
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("phivault-client: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("phivault-client: {e:#}");
            exit_status(&e)
        }
    }
}

async fn connect(c: &Connection) -> anyhow::Result<Client> {
    let deadline = Some(*c.deadline).filter(|d| !d.is_zero());
    let mut options = ClientOptions::new(&c.endpoint)
        .insecure_plaintext(c.insecure_plaintext)
        .deadline(deadline);
    // Decided before the key and certificates are read and before anything
    // is sent: a refusal is the first and only thing that happens.
    if options.transport()? == Transport::InsecurePlaintext {
        eprintln!(
            "phivault-client: DANGER: --insecure-plaintext: the API key, values and tokens cross the network unencrypted"
        );
    }
    let key = match &c.api_key_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        ),
        None => std::env::var("PHIVAULT_API_KEY").ok(),
    };
    if let Some(key) = key {
        options = options.api_key(key);
    }
    if let Some(code) = &c.purpose {
        options = options.purpose(phivault_client::Purpose::new(
            code,
            c.reason.clone().unwrap_or_default(),
        ));
    }
    let read =
        |p: &PathBuf| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    if let Some(ca) = &c.tls_ca {
        options = options.ca_pem(read(ca)?);
    }
    if let (Some(cert), Some(key)) = (&c.tls_cert, &c.tls_key) {
        options = options.identity_pem(read(cert)?, read(key)?);
    }
    if let Some(domain) = &c.tls_domain {
        options = options.domain(domain);
    }
    Ok(Client::connect(options).await?)
}

/// Arguments, or when there are none, the lines of standard input.
fn items(args: Vec<String>) -> anyhow::Result<Vec<String>> {
    if !args.is_empty() {
        return Ok(args);
    }
    std::io::stdin()
        .lock()
        .lines()
        .collect::<Result<_, _>>()
        .context("cannot read standard input")
}

/// Prints one line per item (the text, or `error <code>: <message>` on
/// standard error) and says whether every item succeeded.
fn print_items(results: &[ItemResult], json: bool) -> anyhow::Result<bool> {
    let mut out = std::io::stdout().lock();
    let mut all_ok = true;
    for result in results {
        match (result, json) {
            (Ok(text), false) => writeln!(out, "{text}")?,
            (Ok(text), true) => writeln!(out, "{}", serde_json::json!({ "text": text }))?,
            (Err(e), false) => {
                all_ok = false;
                writeln!(out)?;
                eprintln!("error {}: {}", e.code, e.message);
            }
            (Err(e), true) => {
                all_ok = false;
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({ "error": { "code": e.code, "message": e.message } })
                )?;
            }
        }
    }
    Ok(all_ok)
}

/// Milliseconds since the Unix epoch of a `--since` argument.
fn parse_since(since: &str) -> anyhow::Result<u64> {
    use std::time::{SystemTime, UNIX_EPOCH};
    let at = humantime::parse_rfc3339_weak(since)
        .or_else(|_| humantime::parse_rfc3339_weak(&format!("{since}T00:00:00Z")))
        .or_else(|_| {
            humantime::parse_duration(since)
                .map(|ago| SystemTime::now().checked_sub(ago).unwrap_or(UNIX_EPOCH))
        })
        .map_err(|_| {
            anyhow::anyhow!(
                "--since takes an RFC 3339 time (2026-11-01T08:00:00Z), a date (2026-11-01) or a duration (24h); got {since:?}"
            )
        })?;
    Ok(at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64))
}

/// RFC 3339 with milliseconds, UTC.
fn rfc3339(time_ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(time_ms);
    humantime::format_rfc3339_millis(at).to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One audit record as an NDJSON line.
fn audit_record_json(r: &pb::AuditRecord) -> serde_json::Value {
    let tokens: Vec<_> = r
        .tokens
        .iter()
        .map(|t| serde_json::json!({ "mark": hex(&t.mac), "revealed": t.revealed }))
        .collect();
    serde_json::json!({
        "seq": r.seq, "time": rfc3339(r.time_ms), "time_ms": r.time_ms,
        "client_id": r.client_id, "authenticated": r.authenticated, "rpc": r.rpc,
        "namespace": r.namespace, "items": r.items,
        "outcome": code_name(r.outcome), "outcome_code": r.outcome,
        "request_id": r.request_id, "keyset_version": r.keyset_version, "target": r.target,
        "masked": r.masked, "tokens": tokens,
        "purpose": r.purpose, "reason": r.reason, "break_glass": r.break_glass,
        "prev_hash": hex(&r.prev_hash), "hash": hex(&r.hash),
    })
}

/// The `rpc` of an alert's audit record.
const ALERT_RPC: &str = "(alert)";

/// A reveal's purpose as a line shows it: `  purpose TREAT "reason"`, and
/// `BREAK-GLASS` when it broke the glass.
fn purpose_words(code: &str, reason: &str, break_glass: bool) -> String {
    let mut words = String::new();
    if !code.is_empty() {
        words.push_str(&format!("  purpose {code}"));
    }
    if !reason.is_empty() {
        words.push_str(&format!(" {reason:?}"));
    }
    if break_glass {
        words.push_str("  BREAK-GLASS");
    }
    words
}

/// The records from `since_ms` that `keep` keeps, printed as lines (or
/// NDJSON); returns how many.
async fn review(
    client: &Client,
    since_ms: u64,
    json: bool,
    keep: impl Fn(&pb::AuditRecord) -> bool,
    line: impl Fn(&pb::AuditRecord) -> String,
) -> anyhow::Result<u64> {
    use futures_util::StreamExt;
    let mut records = std::pin::pin!(client.export_audit(since_ms).await?);
    let mut count = 0;
    while let Some(record) = records.next().await {
        let record = record?;
        if !keep(&record) {
            continue;
        }
        if json {
            println!("{}", audit_record_json(&record));
        } else {
            println!("{}", line(&record));
        }
        count += 1;
    }
    Ok(count)
}

fn disclosure_json(d: &pb::Disclosure) -> serde_json::Value {
    serde_json::json!({
        "seq": d.seq, "time": rfc3339(d.time_ms), "client_id": d.client_id, "client_name": d.client_name,
        "rpc": d.rpc, "request_id": d.request_id, "masked": d.masked, "keyset_version": d.keyset_version,
        "purpose": d.purpose, "reason": d.reason, "break_glass": d.break_glass,
    })
}

/// Writes every audit record from `since_ms` as NDJSON to `out`; returns how
/// many.
async fn export_audit(client: &Client, since_ms: u64, out: &mut dyn Write) -> anyhow::Result<u64> {
    use futures_util::StreamExt;
    let mut records = std::pin::pin!(client.export_audit(since_ms).await?);
    let mut count = 0;
    while let Some(record) = records.next().await {
        writeln!(out, "{}", audit_record_json(&record?))?;
        count += 1;
    }
    out.flush()?;
    Ok(count)
}

/// Polls the key status until no rotation runs, with a progress bar when
/// standard error is a terminal.
async fn wait_for_rotation(client: &Client) -> anyhow::Result<pb::KeyStatus> {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:<14} [{bar:40}] {pos}/{len} mappings ({per_sec}, ETA {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let mut interval = tokio::time::interval(std::time::Duration::from_millis(250));
    loop {
        interval.tick().await;
        let status = client.key_status().await?;
        let Some(r) = &status.rotation else {
            bar.finish_and_clear();
            return Ok(status);
        };
        bar.set_length(r.total.max(r.done));
        bar.set_position(r.done);
        bar.set_message(r.phase.clone());
    }
}

/// A CSV dialect's character: one ASCII character, or `tab`.
fn csv_char(text: &str) -> Result<u8, String> {
    match text {
        "tab" | "\\t" | "\t" => Ok(b'\t'),
        _ if text.len() == 1 && text.is_ascii() => Ok(text.as_bytes()[0]),
        _ => Err("expected one ASCII character, or tab".into()),
    }
}

/// The layout a bulk run's arguments describe.
fn bulk_layout(args: &BulkArgs) -> anyhow::Result<bulk::Layout> {
    let format = match args.format {
        Some(format) => format,
        None => {
            let extension = args
                .input
                .as_ref()
                .and_then(|p| p.extension())
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase);
            match extension.as_deref() {
                Some("csv" | "tsv") => BulkFormat::Csv,
                Some("ndjson" | "jsonl") => BulkFormat::Ndjson,
                Some("hl7") => BulkFormat::Hl7v2,
                Some("parquet") => BulkFormat::Parquet,
                _ => anyhow::bail!(
                    "give --format csv, ndjson, fhir, fhir-bundle, hl7v2 or parquet (it cannot be guessed from the input's name)"
                ),
            }
        }
    };
    let fhir = matches!(format, BulkFormat::Fhir | BulkFormat::FhirBundle);
    let hl7 = format == BulkFormat::Hl7v2;
    let dialect_given =
        args.delimiter.is_some() || args.quote.is_some() || args.escape.is_some() || args.no_header;
    if format != BulkFormat::Csv && dialect_given {
        anyhow::bail!("--delimiter, --quote, --escape and --no-header are for CSV input");
    }
    if fhir && !args.maps.is_empty() {
        anyhow::bail!("--map is for CSV and NDJSON; FHIR input takes its rules from --profile");
    }
    if !fhir && !hl7 && args.profile.is_some() {
        anyhow::bail!("--profile is for FHIR and HL7 v2 input; CSV, NDJSON and Parquet take --map");
    }
    if format == BulkFormat::FhirBundle && matches!(args.on_error, OnErrorArg::DropRow) {
        anyhow::bail!(
            "--on-error drop-row would drop the whole Bundle, which is one document; use keep or fail"
        );
    }
    if !fhir && !hl7 && args.maps.is_empty() {
        anyhow::bail!("say which cells to send with --map FIELD=NAMESPACE");
    }
    let mut maps = Vec::with_capacity(args.maps.len());
    for map in &args.maps {
        let Some((field, namespace)) = map
            .rsplit_once('=')
            .filter(|(f, n)| !f.is_empty() && !n.is_empty())
        else {
            anyhow::bail!("--map {map:?}: expected FIELD=NAMESPACE");
        };
        maps.push((field.to_owned(), namespace.to_owned()));
    }
    Ok(match format {
        BulkFormat::Csv => {
            let tsv = args
                .input
                .as_ref()
                .and_then(|p| p.extension())
                .is_some_and(|e| e.eq_ignore_ascii_case("tsv"));
            let defaults = bulk::CsvDialect::default();
            let dialect = bulk::CsvDialect {
                delimiter: args
                    .delimiter
                    .unwrap_or(if tsv { b'\t' } else { defaults.delimiter }),
                quote: args.quote.unwrap_or(defaults.quote),
                escape: args.escape,
                header: !args.no_header,
            };
            dialect.check().map_err(anyhow::Error::msg)?;
            bulk::Layout::Csv(bulk::CsvLayout::with_dialect(maps, dialect))
        }
        BulkFormat::Ndjson => {
            let pointers = maps
                .into_iter()
                .map(|(pointer, namespace)| Ok((pointer.parse::<bulk::Pointer>()?, namespace)))
                .collect::<anyhow::Result<_>>()?;
            bulk::Layout::Ndjson(bulk::JsonLayout::new(pointers))
        }
        BulkFormat::Fhir | BulkFormat::FhirBundle => {
            let profile = read_profile(args.profile.as_deref(), bulk::Profile::parse)?;
            bulk::Layout::Fhir {
                layout: bulk::FhirLayout::new(profile.as_ref()),
                bundle: format == BulkFormat::FhirBundle,
            }
        }
        BulkFormat::Parquet => {
            let path = args
                .input
                .as_ref()
                .filter(|p| p.as_os_str() != "-")
                .context(
                    "Parquet is read from a file, not standard input: its footer comes first",
                )?;
            let file = std::fs::File::open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            bulk::Layout::Parquet(bulk::ParquetLayout::new(file, maps))
        }
        BulkFormat::Hl7v2 => {
            let profile = read_profile(args.profile.as_deref(), bulk::Hl7Profile::parse)?;
            let maps = maps
                .into_iter()
                .map(|(field, namespace)| Ok((field.parse::<bulk::Hl7Address>()?, namespace)))
                .collect::<anyhow::Result<Vec<_>>>()?;
            bulk::Layout::Hl7(bulk::Hl7Layout::new(profile.as_ref(), &maps))
        }
    })
}

/// The TOML profile at `path`, if one is given, read with `parse`.
fn read_profile<P>(
    path: Option<&std::path::Path>,
    parse: impl Fn(&str) -> Result<P, bulk::ProfileError>,
) -> anyhow::Result<Option<P>> {
    path.map(|path| {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        parse(&text).with_context(|| format!("the profile {}", path.display()))
    })
    .transpose()
}

/// Runs a bulk job from the command line: files, progress bar, summary,
/// exit status.
async fn bulk(
    client: &Client,
    args: BulkArgs,
    direction: bulk::Direction,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    use std::sync::Arc;

    let layout = bulk_layout(&args)?;
    let stdin = args.input.as_ref().is_none_or(|p| p.as_os_str() == "-");
    let (input, size): (Box<dyn BufRead + Send>, Option<u64>) = if stdin {
        (
            Box::new(std::io::BufReader::with_capacity(1 << 20, std::io::stdin())),
            None,
        )
    } else {
        let path = args.input.as_ref().context("no input")?;
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let size = file
            .metadata()
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len());
        (
            Box::new(std::io::BufReader::with_capacity(1 << 20, file)),
            size,
        )
    };
    let partial = args.output.as_ref().map(|path| {
        let mut name = path.as_os_str().to_owned();
        name.push(".partial");
        PathBuf::from(name)
    });
    if let (Some(input), Some(output)) = (&args.input, &args.output)
        && std::fs::canonicalize(input).ok() == std::fs::canonicalize(output).ok()
    {
        anyhow::bail!("the output would overwrite the input");
    }
    if args.output.is_some() && args.output == args.errors {
        anyhow::bail!("-o and --errors name the same file");
    }
    // Refused now rather than after the whole run; `publish` checks again at
    // the end, atomically.
    if let Some(path) = &args.output {
        ensure_absent(path)?;
    }
    // Both files are created before the run starts, and private from their
    // first byte: they hold revealed values, or tokens beside the rest of a
    // patient's record.
    let output: Box<dyn Write + Send> = match &partial {
        Some(path) => Box::new(create_private(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => {
                anyhow::anyhow!("{e} (a run that was killed leaves its .partial file behind)")
            }
            _ => e.into(),
        })?),
        None => Box::new(std::io::stdout()),
    };
    let errors: Option<Box<dyn Write + Send>> = match &args.errors {
        Some(path) => match create_private(path) {
            Ok(file) => Some(Box::new(file)),
            Err(e) => {
                if let Some(partial) = &partial {
                    let _ = std::fs::remove_file(partial);
                }
                return Err(e.into());
            }
        },
        None => None,
    };
    let options = bulk::Options {
        direction,
        on_error: match args.on_error {
            OnErrorArg::Keep => bulk::OnError::Keep,
            OnErrorArg::DropRow => bulk::OnError::DropRow,
            OnErrorArg::Fail => bulk::OnError::Fail,
        },
        batch_items: args.batch_size.clamp(1, 10_000),
        in_flight: args.in_flight.max(1),
        retry_for: *args.retry_for,
    };

    let progress = Arc::new(bulk::Progress::default());
    let mode = match args.progress {
        ProgressArg::Auto if std::io::IsTerminal::is_terminal(&std::io::stderr()) => {
            ProgressArg::Bar
        }
        ProgressArg::Auto => ProgressArg::Plain,
        other => other,
    };
    let target = if mode == ProgressArg::Bar {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(size, target);
    let template = if size.is_some() {
        "{spinner} [{bar:30}] {bytes}/{total_bytes} {msg} (ETA {eta})"
    } else {
        "{spinner} {bytes} read {msg}"
    };
    bar.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let ticker = {
        let bar = bar.clone();
        let progress = Arc::clone(&progress);
        let started = std::time::Instant::now();
        let every = match mode {
            ProgressArg::Bar => std::time::Duration::from_millis(200),
            _ => (*args.progress_every).max(std::time::Duration::from_millis(100)),
        };
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(every);
            interval.tick().await;
            loop {
                interval.tick().await;
                let rows = bulk::Progress::get(&progress.rows);
                let fields = bulk::Progress::get(&progress.fields);
                let errors = bulk::Progress::get(&progress.errors);
                let read = bulk::Progress::get(&progress.bytes_read);
                let seconds = started.elapsed().as_secs_f64();
                let rate = fields as f64 / seconds.max(0.001);
                match mode {
                    ProgressArg::Plain => {
                        let mut line = format!(
                            "progress: {rows} rows, {fields} fields, {errors} errors, {rate:.0} fields/s, {read} bytes read"
                        );
                        if let Some(total) = size.filter(|t| *t > 0) {
                            line.push_str(&format!(
                                " ({:.1}% of the input)",
                                read as f64 * 100.0 / total as f64
                            ));
                        }
                        eprintln!("{line}");
                    }
                    ProgressArg::Json => eprintln!(
                        "{}",
                        serde_json::json!({
                            "progress": {
                                "rows": rows, "fields": fields, "errors": errors,
                                "fields_per_second": rate, "bytes_read": read,
                                "input_bytes": size, "elapsed_seconds": seconds,
                            }
                        })
                    ),
                    ProgressArg::Bar => {
                        bar.set_position(read);
                        bar.set_message(format!(
                            "{rows} rows, {fields} fields, {errors} errors, {rate:.0} fields/s"
                        ));
                    }
                    ProgressArg::Auto | ProgressArg::None => {}
                }
            }
        })
    };
    let run = bulk::run(
        client,
        input,
        output,
        errors,
        layout,
        options,
        Arc::clone(&progress),
    );
    // Ctrl-C leaves no half-written file under the output's name either.
    let result = tokio::select! {
        result = run => Some(result),
        _ = tokio::signal::ctrl_c() => None,
    };
    ticker.abort();
    bar.finish_and_clear();

    let summary = match result {
        Some(Ok(summary)) => summary,
        None => {
            if let Some(partial) = &partial {
                let _ = std::fs::remove_file(partial);
            }
            let rows = bulk::Progress::get(&progress.rows);
            anyhow::bail!("interrupted after {rows} rows; no output file was written");
        }
        Some(Err(e)) => {
            if let Some(partial) = &partial {
                let _ = std::fs::remove_file(partial);
            }
            let rows = bulk::Progress::get(&progress.rows);
            return Err(anyhow::Error::new(e).context(match &partial {
                Some(_) => format!("the run stopped after {rows} rows; no output file was written"),
                None => format!("the run stopped after {rows} rows written"),
            }));
        }
    };
    if let (Some(partial), Some(path)) = (&partial, &args.output) {
        // On failure the finished output stays in FILE.partial: the run is
        // not thrown away because a file appeared under its name meanwhile.
        publish(partial, path).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => anyhow::anyhow!(
                "{e}; the run completed and its output is left in {}",
                partial.display()
            ),
            _ => e.into(),
        })?;
    }
    let verb = match direction {
        bulk::Direction::Tokenize => "tokenized",
        bulk::Direction::Detokenize { .. } => "detokenized",
    };
    let seconds = summary.elapsed.as_secs_f64();
    let rate = summary.fields as f64 / seconds.max(0.001);
    if json {
        eprintln!(
            "{}",
            serde_json::json!({
                "direction": verb, "rows": summary.rows, "fields": summary.fields, "errors": summary.errors,
                "dropped_rows": summary.dropped_rows, "reconnects": summary.reconnects,
                "elapsed_seconds": seconds, "fields_per_second": rate,
            })
        );
    } else {
        let mut line = format!(
            "{verb} {} rows, {} fields, {} errors in {seconds:.1} s ({rate:.0} fields/s)",
            summary.rows, summary.fields, summary.errors
        );
        if summary.dropped_rows > 0 {
            line.push_str(&format!("; {} rows dropped", summary.dropped_rows));
        }
        if summary.reconnects > 0 {
            line.push_str(&format!("; reconnected {} times", summary.reconnects));
        }
        eprintln!("{line}");
        if summary.errors > 0 {
            match &args.errors {
                Some(path) => eprintln!("failed cells are listed in {}", path.display()),
                None => eprintln!("give --errors FILE to list the failed cells"),
            }
        }
    }
    Ok(if summary.errors > 0 {
        ExitCode::from(EXIT_FAILED_CELLS)
    } else {
        ExitCode::SUCCESS
    })
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    use clap::CommandFactory as _;
    match &cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "phivault-client",
                &mut std::io::stdout(),
            );
            return Ok(ExitCode::SUCCESS);
        }
        Command::ManPages { dir } => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), dir)
                .with_context(|| format!("cannot write the man pages to {}", dir.display()))?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let client = connect(&cli.connection).await?;
    let json = cli.json;
    let ok = match cli.command {
        Command::Tokenize { namespace, values } => {
            print_items(&client.tokenize(&namespace, items(values)?).await?, json)?
        }
        Command::Detokenize {
            namespace,
            masked,
            tokens,
        } => print_items(
            &client
                .detokenize(&namespace, items(tokens)?, masked)
                .await?,
            json,
        )?,
        Command::Namespaces(NamespaceCommand::Create {
            name,
            format,
            keep_prefix,
            keep_suffix,
            date_pattern,
            value_year_min,
            value_year_max,
            random,
        }) => {
            let options = pb::FormatOptions {
                keep_prefix,
                keep_suffix,
                date_pattern,
                value_year_min,
                value_year_max,
                ..Default::default()
            };
            let ns = client
                .create_namespace(pb::CreateNamespaceRequest {
                    name,
                    format,
                    options: Some(options),
                    random,
                })
                .await?;
            if json {
                println!("{}", namespace_json(&ns));
            } else {
                println!("created namespace {} ({})", ns.name, ns.format);
            }
            true
        }
        Command::Namespaces(NamespaceCommand::List) => {
            for ns in client.list_namespaces().await? {
                if json {
                    println!("{}", namespace_json(&ns));
                } else {
                    println!("{}", namespace_line(&ns));
                }
            }
            true
        }
        Command::Clients(ClientCommand::Create {
            name,
            scopes,
            allow_masked_oracle,
            rates,
            quotas,
            require_purpose,
            expires_in,
            quarantine,
        }) => {
            let created = client
                .create_client_with(pb::CreateClientRequest {
                    name,
                    scopes,
                    allow_masked_oracle,
                    limits: rates.into_iter().chain(quotas).collect(),
                    require_purpose,
                    key_lifetime_secs: expires_in.map_or(0, |d| d.as_secs()),
                    suspend_on_alert: quarantine == "suspend",
                })
                .await?;
            let c = created.client.unwrap_or_default();
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "client": client_json(&c), "api_key": created.api_key })
                );
            } else {
                // The key alone on stdout, so `KEY=$(phivault-client clients
                // create …)` works; the rest is for the person at the terminal.
                eprintln!(
                    "created client {} ({}); its API key is shown this once:",
                    c.client_id, c.name
                );
                println!("{}", created.api_key);
            }
            true
        }
        Command::Clients(ClientCommand::List) => {
            for c in client.list_clients().await? {
                if json {
                    println!("{}", client_json(&c));
                } else {
                    println!("{}", client_line(&c));
                }
            }
            true
        }
        Command::Clients(ClientCommand::Revoke { client_id }) => {
            let c = client.revoke_client(&client_id).await?;
            if json {
                println!("{}", client_json(&c));
            } else {
                println!("revoked client {} ({})", c.client_id, c.name);
            }
            true
        }
        Command::Clients(ClientCommand::RotateKey { client_id, grace }) => {
            let rotated = client.rotate_client_key(&client_id, *grace).await?;
            let c = rotated.client.unwrap_or_default();
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "client": client_json(&c), "api_key": rotated.api_key })
                );
            } else {
                eprintln!(
                    "new API key for client {} ({}), shown this once; the old one is accepted for {}:",
                    c.client_id,
                    c.name,
                    humantime::format_duration(*grace)
                );
                println!("{}", rotated.api_key);
            }
            true
        }
        Command::Clients(ClientCommand::Release { client_id }) => {
            let c = client.release_client(&client_id).await?;
            if json {
                println!("{}", client_json(&c));
            } else {
                println!("re-armed client {} ({})", c.client_id, c.name);
            }
            true
        }
        Command::Keys(KeysCommand::Rotate { wait }) => {
            let version = client.rotate_keys().await?;
            if json && !wait {
                println!("{}", serde_json::json!({ "new_version": version }));
            } else if !json {
                eprintln!(
                    "keyset {version} is active for new writes; existing mappings are moving to it"
                );
            }
            if wait {
                let status = wait_for_rotation(&client).await?;
                if json {
                    println!("{}", key_status_json(&status));
                } else {
                    print!("{}", key_status_text(&status));
                }
            }
            true
        }
        Command::Keys(KeysCommand::Status) => {
            let status = client.key_status().await?;
            if json {
                println!("{}", key_status_json(&status));
            } else {
                print!("{}", key_status_text(&status));
            }
            true
        }
        Command::Backup { path } => {
            let backup = client.backup(&path).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "path": backup.path, "bytes": backup.bytes })
                );
            } else {
                println!(
                    "backup written to {} ({} bytes) on the server",
                    backup.path, backup.bytes
                );
            }
            true
        }
        Command::Audit(AuditCommand::Verify) => {
            let report = client.verify_audit().await?;
            let intact = report.first_bad_seq == 0;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "records": report.records, "head_seq": report.head_seq, "intact": intact,
                        "first_bad_seq": (!intact).then_some(report.first_bad_seq),
                        "problem": (!intact).then_some(&report.problem),
                    })
                );
            } else if intact {
                println!(
                    "ok: the audit chain is intact ({} records, head {})",
                    report.records, report.head_seq
                );
            } else {
                println!(
                    "BROKEN at record {}: {} ({} records verified before it; head {})",
                    report.first_bad_seq, report.problem, report.records, report.head_seq
                );
            }
            intact
        }
        Command::Audit(AuditCommand::Disclosures { namespace, token }) => {
            let found = client.list_disclosures(&namespace, &token).await?;
            for d in &found {
                if json {
                    println!("{}", disclosure_json(d));
                } else {
                    let how = if d.masked { "masked" } else { "full" };
                    println!(
                        "{}  {} {:<20} {how:<6} request {}  keyset {}{}",
                        rfc3339(d.time_ms),
                        d.client_id,
                        d.client_name,
                        d.request_id,
                        d.keyset_version,
                        purpose_words(&d.purpose, &d.reason, d.break_glass)
                    );
                }
            }
            if !json {
                eprintln!("{} disclosure(s)", found.len());
            }
            true
        }
        Command::Audit(AuditCommand::Export { since, output }) => {
            let since_ms = since.as_deref().map(parse_since).transpose()?.unwrap_or(0);
            let count = match &output {
                Some(path) => {
                    let file = create_private(path)?;
                    export_audit(&client, since_ms, &mut std::io::BufWriter::new(file)).await?
                }
                None => export_audit(&client, since_ms, &mut std::io::stdout().lock()).await?,
            };
            if output.is_some() {
                eprintln!("{count} audit record(s) exported");
            }
            true
        }
        Command::Audit(AuditCommand::BreakGlass { since }) => {
            let count = review(
                &client,
                parse_since(&since)?,
                json,
                |r| r.break_glass,
                |r| {
                    format!(
                        "{}  {} {:<14} {} item(s) {}{}  request {}",
                        rfc3339(r.time_ms),
                        r.client_id,
                        r.namespace,
                        r.items,
                        if r.masked { "masked" } else { "full" },
                        purpose_words(&r.purpose, &r.reason, false),
                        r.request_id
                    )
                },
            )
            .await?;
            if !json {
                eprintln!("{count} break-glass reveal(s)");
            }
            true
        }
        Command::Alerts(AlertCommand::List { since }) => {
            let count = review(
                &client,
                parse_since(&since)?,
                json,
                |r| r.rpc == ALERT_RPC,
                |r| {
                    format!(
                        "{}  {} {:<14} {}",
                        rfc3339(r.time_ms),
                        r.client_id,
                        r.namespace,
                        r.target
                    )
                },
            )
            .await?;
            if !json {
                eprintln!("{count} alert(s)");
            }
            true
        }
        Command::Bulk(BulkCommand::Tokenize(args)) => {
            return bulk(&client, args, bulk::Direction::Tokenize, json).await;
        }
        Command::Bulk(BulkCommand::Detokenize { args, masked }) => {
            return bulk(&client, args, bulk::Direction::Detokenize { masked }, json).await;
        }
        Command::Hl7(Hl7Command::Proxy {
            listen,
            forward,
            detokenize,
            masked,
            maps,
            profile,
            retry_for,
        }) => {
            let profile = read_profile(profile.as_deref(), bulk::Hl7Profile::parse)?;
            let maps = maps
                .iter()
                .map(|map| {
                    let (field, namespace) = map
                        .rsplit_once('=')
                        .filter(|(f, n)| !f.is_empty() && !n.is_empty())
                        .with_context(|| format!("--map {map:?}: expected FIELD=NAMESPACE"))?;
                    Ok((field.parse::<bulk::Hl7Address>()?, namespace.to_owned()))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            eprintln!("listening on {}", listener.local_addr()?);
            let relay = bulk::mllp::Relay {
                client: client.clone(),
                layout: std::sync::Arc::new(bulk::Hl7Layout::new(profile.as_ref(), &maps)),
                direction: if detokenize {
                    bulk::Direction::Detokenize { masked }
                } else {
                    bulk::Direction::Tokenize
                },
                forward,
                retry_for: retry_for.into(),
            };
            tokio::select! {
                served = relay.serve(listener) => served?,
                _ = tokio::signal::ctrl_c() => {}
            }
            true
        }
        Command::Health => {
            let serving = client.health().await?;
            println!("{}", if serving { "SERVING" } else { "NOT_SERVING" });
            serving
        }
        // Answered above, before connecting.
        Command::Completions { .. } | Command::ManPages { .. } => true,
        Command::Info => {
            let info = client.server_info().await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "version": info.version,
                        "apis": info.apis,
                        "store": info.store,
                        "max_message_bytes": info.max_message_bytes,
                        "max_items": info.max_items,
                        "max_value_bytes": info.max_value_bytes,
                    })
                );
            } else {
                println!("version {}", info.version);
                println!("apis {}", info.apis.join(" "));
                println!("store {}", info.store);
                println!("max_message_bytes {}", info.max_message_bytes);
                println!("max_items {}", info.max_items);
                println!("max_value_bytes {}", info.max_value_bytes);
            }
            true
        }
    };
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
