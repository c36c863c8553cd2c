//! The `phivault` command: create, unseal and inspect a vault.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use phivault::{MasterKey, Vault, VaultOptions};
use zeroize::Zeroizing;

/// Format-preserving tokenization vault for protected health information.
#[derive(Parser)]
#[command(name = "phivault", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new vault with the default namespaces.
    Init {
        #[command(flatten)]
        vault: VaultArgs,
    },
    /// Unseal a vault and print its keys and namespaces.
    Status {
        #[command(flatten)]
        vault: VaultArgs,
    },
    /// DEVELOPMENT ONLY: create (first run) or unseal a throwaway vault whose
    /// master key file sits next to its data, and print its state.
    Dev {
        /// Folder of the development vault.
        #[arg(long, default_value = ".phivault-dev")]
        dir: PathBuf,
    },
}

#[derive(Args)]
struct VaultArgs {
    /// The vault's data directory.
    #[arg(long, env = "PHIVAULT_DATA_DIR")]
    data_dir: PathBuf,
    /// File holding the passphrase (one trailing newline is ignored).
    /// Without it, PHIVAULT_PASSPHRASE, else a prompt on the terminal.
    #[arg(long, conflicts_with = "master_key_file")]
    passphrase_file: Option<PathBuf>,
    /// A 32-byte master key file (raw or 64 hex digits) instead of a
    /// passphrase.
    #[arg(long)]
    master_key_file: Option<PathBuf>,
    /// With `init` and --master-key-file: create the key file first.
    #[arg(long, requires = "master_key_file")]
    create_key_file: bool,
}

impl VaultArgs {
    fn master_key(&self, confirm: bool) -> anyhow::Result<MasterKey> {
        if let Some(path) = &self.master_key_file {
            return Ok(if self.create_key_file {
                MasterKey::create_key_file(path)?
            } else {
                MasterKey::read_key_file(path)?
            });
        }
        if let Some(path) = &self.passphrase_file {
            let text = Zeroizing::new(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
            );
            let line = text.strip_suffix('\n').unwrap_or(&text);
            let line = line.strip_suffix('\r').unwrap_or(line);
            return Ok(MasterKey::Passphrase(Zeroizing::new(line.to_owned())));
        }
        if let Ok(passphrase) = std::env::var("PHIVAULT_PASSPHRASE") {
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
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PHIVAULT_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
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
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("phivault: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Init { vault } => {
            let master = vault.master_key(true)?;
            let opened = Vault::init(&vault.data_dir, master, VaultOptions::default()).await?;
            println!("initialised a vault at {}", vault.data_dir.display());
            print_status(&opened);
            opened.close()?;
        }
        Command::Status { vault } => {
            let opened = Vault::open(
                &vault.data_dir,
                vault.master_key(false)?,
                VaultOptions::default(),
            )
            .await?;
            print_status(&opened);
            opened.close()?;
        }
        Command::Dev { dir } => dev(&dir).await?,
    }
    Ok(())
}

async fn dev(dir: &Path) -> anyhow::Result<()> {
    let data = dir.join("data");
    let key_file = dir.join("master.key");
    eprintln!(
        "WARNING: development vault in {}: its master key file sits next to its data.",
        dir.display()
    );
    eprintln!("WARNING: never put real PHI in it.");
    let vault = if data.join("CURRENT").exists() {
        Vault::open(
            &data,
            MasterKey::read_key_file(&key_file)?,
            VaultOptions::default(),
        )
        .await?
    } else {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let master = if key_file.exists() {
            MasterKey::read_key_file(&key_file)?
        } else {
            MasterKey::create_key_file(&key_file)?
        };
        Vault::init(&data, master, VaultOptions::default()).await?
    };
    print_status(&vault);
    // A synthetic SSN (area 000 is never issued) shows the round trip.
    let sample = "000-12-3456";
    let token = vault.tokenize("ssn", &[sample]).await?.remove(0)?;
    let back = vault.detokenize("ssn", &[&token]).await?.remove(0)?;
    println!("\nsample (synthetic) ssn {sample} -> token {token} -> detokenized {back}");
    println!("\nThe gRPC service is not part of this build yet: nothing is listening.");
    vault.close()?;
    Ok(())
}

fn print_status(vault: &Vault) {
    println!("active keyset version: {}", vault.active_keyset_version());
    println!("namespaces:");
    for ns in vault.namespaces() {
        let mode = if ns.deterministic {
            "deterministic"
        } else {
            "random"
        };
        let mut options = Vec::new();
        if ns.format.keep_prefix > 0 {
            options.push(format!("keep_prefix={}", ns.format.keep_prefix));
        }
        if ns.format.keep_suffix > 0 {
            options.push(format!("keep_suffix={}", ns.format.keep_suffix));
        }
        if let Some(date) = &ns.format.date {
            options.push(format!(
                "pattern={} years={}-{}",
                date.pattern, date.token_year_min, date.token_year_max
            ));
        }
        println!(
            "  {:<12} {:<7} {:<14} {}",
            ns.name,
            ns.format.kind,
            mode,
            options.join(" ")
        );
    }
}
