//! `phivault-client`: tokenize, reveal and administer from the shell.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use phivault_client::{Client, ClientOptions, ItemResult, v1 as pb};

/// Command-line client of a phivault vault.
#[derive(Parser)]
#[command(name = "phivault-client", version, about)]
struct Cli {
    #[command(flatten)]
    connection: Connection,
    /// Print JSON instead of plain text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Connection {
    /// The vault's address: http://host:port (loopback) or https://host:port.
    #[arg(
        long,
        env = "PHIVAULT_ENDPOINT",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    endpoint: String,
    /// File holding the API key. Without it, PHIVAULT_API_KEY.
    #[arg(long, global = true)]
    api_key_file: Option<PathBuf>,
    /// PEM CA bundle to verify the server with (default: system roots).
    #[arg(long, global = true)]
    tls_ca: Option<PathBuf>,
    /// PEM client certificate for mTLS.
    #[arg(long, global = true, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM client key for mTLS.
    #[arg(long, global = true, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The server name to verify, when it differs from the endpoint's host.
    #[arg(long, global = true)]
    tls_domain: Option<String>,
}

#[derive(Subcommand)]
enum Command {
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
    /// Verify, query and export the audit trail (the audit or admin scope).
    #[command(subcommand)]
    Audit(AuditCommand),
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
        /// Write to FILE instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
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
        /// tokenize:<ns>, detokenize:<ns>, detokenize-masked:<ns>, admin, audit
        /// (repeatable).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
    },
    /// List clients.
    List,
    /// Revoke a client.
    Revoke { client_id: String },
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
            ExitCode::FAILURE
        }
    }
}

async fn connect(c: &Connection) -> anyhow::Result<Client> {
    let mut options = ClientOptions::new(&c.endpoint);
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

fn namespace_json(ns: &pb::Namespace) -> serde_json::Value {
    let o = ns.options.clone().unwrap_or_default();
    serde_json::json!({
        "name": ns.name, "format": ns.format, "deterministic": ns.deterministic, "created_at": ns.created_at,
        "keep_prefix": o.keep_prefix, "keep_suffix": o.keep_suffix, "date_pattern": o.date_pattern,
    })
}

fn client_json(c: &pb::Client) -> serde_json::Value {
    serde_json::json!({ "client_id": c.client_id, "name": c.name, "scopes": c.scopes, "revoked": c.revoked })
}

fn key_status_json(s: &pb::KeyStatus) -> serde_json::Value {
    let versions: Vec<_> = s
        .versions
        .iter()
        .map(|v| serde_json::json!({ "version": v.version, "state": v.state, "created_at": v.created_at, "destroyed_at": v.destroyed_at }))
        .collect();
    let rotation = s.rotation.as_ref().map(|r| {
        serde_json::json!({
            "target_version": r.target_version, "phase": r.phase, "done": r.done, "total": r.total,
            "rate": r.rate, "eta_seconds": r.eta_seconds, "started_at": r.started_at, "damaged": r.damaged,
        })
    });
    let last = s.last_rotation.as_ref().map(|l| {
        serde_json::json!({ "target_version": l.target_version, "started_at": l.started_at, "finished_at": l.finished_at, "mappings": l.mappings })
    });
    serde_json::json!({ "active_version": s.active_version, "versions": versions, "rotation": rotation, "last_rotation": last })
}

fn print_key_status(s: &pb::KeyStatus) {
    println!("active keyset: {}", s.active_version);
    for v in &s.versions {
        println!(
            "  keyset {:<4} {:<10} created {}",
            v.version, v.state, v.created_at
        );
    }
    match &s.rotation {
        Some(r) => {
            let eta = r
                .eta_seconds
                .map_or_else(|| "-".to_owned(), |e| format!("{e:.0}s"));
            println!(
                "rotation to keyset {}: {} {}/{} mappings, {:.0}/s, ETA {eta}",
                r.target_version, r.phase, r.done, r.total, r.rate
            );
            if r.damaged > 0 {
                println!(
                    "  {} damaged rows could not be moved (run `phivault verify`)",
                    r.damaged
                );
            }
        }
        None => println!("no rotation running"),
    }
    if let Some(l) = &s.last_rotation {
        println!(
            "last rotation: to keyset {}, {} mappings, finished {} (old keys destroyed, compacted)",
            l.target_version, l.mappings, l.finished_at
        );
    }
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

/// The name of a `google.rpc.Code`.
fn code_name(code: i32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or("UNKNOWN")
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
        "prev_hash": hex(&r.prev_hash), "hash": hex(&r.hash),
    })
}

fn disclosure_json(d: &pb::Disclosure) -> serde_json::Value {
    serde_json::json!({
        "seq": d.seq, "time": rfc3339(d.time_ms), "client_id": d.client_id, "client_name": d.client_name,
        "rpc": d.rpc, "request_id": d.request_id, "masked": d.masked, "keyset_version": d.keyset_version,
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

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
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
            random,
        }) => {
            let options = pb::FormatOptions {
                keep_prefix,
                keep_suffix,
                date_pattern,
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
                    let mode = if ns.deterministic {
                        "deterministic"
                    } else {
                        "random"
                    };
                    println!("{:<16} {:<7} {mode}", ns.name, ns.format);
                }
            }
            true
        }
        Command::Clients(ClientCommand::Create { name, scopes }) => {
            let created = client.create_client(&name, scopes).await?;
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
                    let state = if c.revoked { "revoked" } else { "active" };
                    println!(
                        "{} {:<20} {:<8} {}",
                        c.client_id,
                        c.name,
                        state,
                        c.scopes.join(" ")
                    );
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
                    print_key_status(&status);
                }
            }
            true
        }
        Command::Keys(KeysCommand::Status) => {
            let status = client.key_status().await?;
            if json {
                println!("{}", key_status_json(&status));
            } else {
                print_key_status(&status);
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
                        "{}  {} {:<20} {how:<6} request {}  keyset {}",
                        rfc3339(d.time_ms),
                        d.client_id,
                        d.client_name,
                        d.request_id,
                        d.keyset_version
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
                    let file = std::fs::File::create(path)
                        .with_context(|| format!("cannot create {}", path.display()))?;
                    export_audit(&client, since_ms, &mut std::io::BufWriter::new(file)).await?
                }
                None => export_audit(&client, since_ms, &mut std::io::stdout().lock()).await?,
            };
            if output.is_some() {
                eprintln!("{count} audit record(s) exported");
            }
            true
        }
        Command::Health => {
            let serving = client.health().await?;
            println!("{}", if serving { "SERVING" } else { "NOT_SERVING" });
            serving
        }
    };
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
