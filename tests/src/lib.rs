//! End-to-end harness: starts the real `phivault` binary on `127.0.0.1:0`
//! and waits for its readiness line — no fixed ports, no sleeps.
//!
//! The binaries are the ones `make test` builds (`cargo build --bins`) next to
//! this test executable (`target/<profile>/`).

pub mod patroni;
pub mod postgres;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a server may take to unseal and bind.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The path of a workspace binary built alongside the running test.
pub fn binary(name: &str) -> PathBuf {
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let exe = std::env::current_exe().expect("the test knows its own path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `make test` (or `cargo build --workspace --bins` first)",
        path.display()
    );
    path
}

/// Whether this run puts its vaults in PostgreSQL: `make test` runs the
/// end-to-end suite once on the embedded store and once more with
/// `PHIVAULT_TEST_STORE=postgres`.
pub fn on_postgres() -> bool {
    std::env::var("PHIVAULT_TEST_STORE").is_ok_and(|s| s == "postgres")
}

/// For a test of what only the embedded store has (its directory, its
/// backups, its disk): whether to skip it in the PostgreSQL run, which it
/// would only repeat. Says so on stderr.
pub fn embedded_only(test: &str) -> bool {
    let skip = on_postgres();
    if skip {
        eprintln!("{test}: about the embedded store; it ran in the embedded run");
    }
    skip
}

/// Runs a checker `program` with `args` in `dir` (standard input closed),
/// or, where it cannot start, prints `SKIPPED: … ; {install}` and returns
/// `None`: a test of a file that needs an outside tool says so rather than
/// passing in silence (`make test` installs every one).
pub fn run_tool(
    program: &str,
    args: &[&str],
    dir: &Path,
    install: &str,
) -> Option<std::process::Output> {
    match Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
    {
        Ok(output) => Some(output),
        Err(e) => {
            eprintln!("SKIPPED: {program} cannot run ({e}); {install}");
            None
        }
    }
}

/// A command's standard output and error, for an assertion's message.
pub fn said(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A vault with its master key file and admin API key: in a directory, or
/// in a database of a PostgreSQL server of its own (see [`on_postgres`]).
pub struct VaultDir {
    /// Keeps the directory alive: the data, key files and configuration.
    pub root: tempfile::TempDir,
    /// The admin client's API key.
    pub admin_key: String,
    /// The server the vault lives in, when this harness started it.
    postgres: Option<std::sync::Arc<postgres::Postgres>>,
    /// The connection string of the vault's database, when it lives in
    /// PostgreSQL.
    store: Option<String>,
    /// What unseals it, when not the master key file: `--hsm URI`, say.
    seal: Option<Vec<String>>,
    /// Environment its commands and servers need (an HSM's configuration).
    env: Vec<(String, String)>,
}

impl VaultDir {
    /// Runs `phivault init` with a fresh master key file, on the store this
    /// run tests.
    pub fn init() -> Self {
        if !on_postgres() {
            return Self::init_prepared(|_| {});
        }
        let server = postgres::Postgres::start()
            .unwrap_or_else(|why| panic!("PHIVAULT_TEST_STORE=postgres, but {why}"));
        Self::init_postgres(std::sync::Arc::new(server))
    }

    /// Runs `phivault init` for a vault in database `vault` of `server`,
    /// which the caller shares with others (nodes, a failover).
    pub fn init_postgres(server: std::sync::Arc<postgres::Postgres>) -> Self {
        server.create_database("vault");
        let store = server.connection_string("vault");
        Self::init_in(Some(server), Some(store), |_| {})
    }

    /// Runs `phivault init` for a vault in the PostgreSQL database that
    /// `store` names (a server the caller runs, a Patroni cluster).
    pub fn init_store(store: String) -> Self {
        Self::init_in(None, Some(store), |_| {})
    }

    /// The arguments that name this vault's store: `--data-dir <data>`, or
    /// `--store <connection string>`.
    pub fn store_args(&self) -> Vec<String> {
        match &self.store {
            Some(store) => vec!["--store".into(), store.clone()],
            None => vec![
                "--data-dir".into(),
                self.data().to_str().expect("utf-8 path").into(),
            ],
        }
    }

    /// The PostgreSQL server the vault lives in, if it does.
    pub fn postgres(&self) -> Option<&postgres::Postgres> {
        self.postgres.as_deref()
    }

    /// Runs `phivault init` after `prepare` has been given the data
    /// directory's path (to mount a file system there, say).
    pub fn init_prepared(prepare: impl FnOnce(&Path)) -> Self {
        Self::init_in(None, None, prepare)
    }

    /// Runs `phivault init` on the store this run tests, sealed by what
    /// `init_seal` gives init (given the vault's root directory, for files
    /// to put there) and unsealed from then on by `seal`, with `env` set for
    /// every command and server.
    pub fn init_sealed(
        init_seal: impl FnOnce(&Path) -> Vec<String>,
        seal: Vec<String>,
        env: &[(&str, &str)],
    ) -> Self {
        let (postgres, store) = if on_postgres() {
            let server = std::sync::Arc::new(
                postgres::Postgres::start()
                    .unwrap_or_else(|why| panic!("PHIVAULT_TEST_STORE=postgres, but {why}")),
            );
            server.create_database("vault");
            let store = server.connection_string("vault");
            (Some(server), Some(store))
        } else {
            (None, None)
        };
        let vault = Self {
            root: tempfile::tempdir().expect("tempdir"),
            admin_key: String::new(),
            postgres,
            store,
            seal: Some(seal),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        let args = init_seal(vault.root.path());
        vault.run_init(&args)
    }

    /// Unseals with `seal` from now on (after a rekey).
    pub fn reseal(&mut self, seal: Vec<String>) {
        self.seal = Some(seal);
    }

    /// The arguments that unseal this vault: its master key file, or what
    /// it was given instead.
    pub fn seal_args(&self) -> Vec<String> {
        match &self.seal {
            Some(seal) => seal.clone(),
            None => vec![
                "--master-key-file".into(),
                self.key_file().to_str().expect("utf-8 path").into(),
            ],
        }
    }

    fn init_in(
        postgres: Option<std::sync::Arc<postgres::Postgres>>,
        store: Option<String>,
        prepare: impl FnOnce(&Path),
    ) -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let vault = Self {
            root,
            admin_key: String::new(),
            postgres,
            store,
            seal: None,
            env: Vec::new(),
        };
        prepare(&vault.data());
        let seal = vec![
            "--master-key-file".to_owned(),
            vault.key_file().to_str().expect("utf-8 path").to_owned(),
            "--create-key-file".to_owned(),
        ];
        vault.run_init(&seal)
    }

    fn run_init(self, seal: &[String]) -> Self {
        let vault = self;
        let status = Command::new(binary("phivault"))
            .arg("init")
            .args(vault.store_args())
            .args(seal)
            .args([
                "--admin-key-file",
                vault.admin_file().to_str().expect("utf-8 path"),
            ])
            .env("PHIVAULT_LOG", "warn")
            .envs(vault.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .status()
            .expect("run phivault init");
        assert!(status.success(), "phivault init failed");
        let admin_key = std::fs::read_to_string(vault.admin_file())
            .expect("admin key")
            .trim()
            .to_owned();
        Self { admin_key, ..vault }
    }

    /// A new directory with this vault's master key file and admin key but
    /// no data yet: the place to restore a backup of it to (`data()`).
    pub fn empty_twin(&self) -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::copy(self.key_file(), root.path().join("master.key")).expect("copy key file");
        Self {
            root,
            admin_key: self.admin_key.clone(),
            postgres: None,
            store: None,
            seal: None,
            env: Vec::new(),
        }
    }

    /// As [`Self::empty_twin`], for a vault to be in database `database`
    /// of `server` (created here, empty).
    pub fn empty_twin_in(
        &self,
        server: std::sync::Arc<postgres::Postgres>,
        database: &str,
    ) -> Self {
        server.create_database(database);
        let store = server.connection_string(database);
        Self {
            store: Some(store),
            postgres: Some(server),
            ..self.empty_twin()
        }
    }

    /// Writes `text` to a configuration file beside the data and returns
    /// its path, for `phivault serve --config`.
    pub fn config(&self, text: &str) -> PathBuf {
        let path = self.root.path().join("phivault.toml");
        std::fs::write(&path, text).expect("write the configuration file");
        path
    }

    /// The RocksDB directory.
    pub fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// The master key file.
    pub fn key_file(&self) -> PathBuf {
        self.root.path().join("master.key")
    }

    fn admin_file(&self) -> PathBuf {
        self.root.path().join("admin.key")
    }

    /// `phivault <subcommand> --data-dir <data>` (or `--store <database>`),
    /// ready for more arguments.
    pub fn command(&self, subcommand: &str) -> Command {
        let mut command = Command::new(binary("phivault"));
        command
            .arg(subcommand)
            .args(self.store_args())
            .env("PHIVAULT_LOG", "warn")
            .env_remove("PHIVAULT_PASSPHRASE")
            .env_remove("PHIVAULT_NEW_PASSPHRASE")
            .env_remove("PHIVAULT_FAILPOINT")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }
}

/// A running `phivault serve`. Killed when dropped.
pub struct Server {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where it serves metrics, when started with `--metrics-listen`.
    pub metrics_addr: Option<SocketAddr>,
    /// Where it serves the HTTP/JSON API, when started with `--http-listen`.
    pub http_addr: Option<SocketAddr>,
    /// Everything it wrote to stderr so far is collected here on `stop`.
    stderr: Option<std::thread::JoinHandle<String>>,
    /// What it has written to stderr so far, while it runs.
    stderr_so_far: std::sync::Arc<std::sync::Mutex<String>>,
    /// And everything it wrote to stdout.
    stdout: Option<std::thread::JoinHandle<String>>,
}

impl Server {
    /// Serves `vault` on a free loopback port (unless `extra` has a
    /// `--listen` of its own) with `extra` arguments.
    pub fn start(vault: &VaultDir, extra: &[&str]) -> Self {
        Self::start_with_env(vault, extra, &[])
    }

    /// Serves `vault` with `extra` arguments and environment variables.
    pub fn start_with_env(vault: &VaultDir, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(binary("phivault"))
            .arg("serve")
            .args(vault.store_args())
            .args(vault.seal_args())
            .args(if extra.contains(&"--listen") {
                &[][..]
            } else {
                &["--listen", "127.0.0.1:0"][..]
            })
            .args(extra)
            .env("PHIVAULT_LOG", "info")
            .envs(vault.env.iter().map(|(k, v)| (k, v)))
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start phivault serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (ready, wait) = mpsc::channel();
        let stdout = std::thread::spawn(move || {
            let (mut metrics, mut http) = (None, None);
            let mut all = String::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("phivault metrics on ") {
                    metrics = addr.parse::<SocketAddr>().ok();
                }
                if let Some(addr) = line.strip_prefix("phivault http on ") {
                    http = addr.parse::<SocketAddr>().ok();
                }
                if let Some(addr) = line.strip_prefix("phivault listening on ") {
                    let _ = ready.send(addr.parse::<SocketAddr>().ok().map(|a| (a, metrics, http)));
                }
                all.push_str(&line);
                all.push('\n');
            }
            let _ = ready.send(None);
            all
        });
        let stderr_so_far = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let so_far = std::sync::Arc::clone(&stderr_so_far);
        let stderr = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                all.push_str(&line);
                all.push('\n');
                if let Ok(mut so_far) = so_far.lock() {
                    so_far.push_str(&line);
                    so_far.push('\n');
                }
            }
            all
        });
        match wait.recv_timeout(READY_TIMEOUT) {
            Ok(Some((addr, metrics_addr, http_addr))) => Self {
                child,
                addr,
                metrics_addr,
                http_addr,
                stderr: Some(stderr),
                stderr_so_far,
                stdout: Some(stdout),
            },
            _ => {
                let _ = child.kill();
                let log = stderr.join().unwrap_or_default();
                panic!("phivault serve did not become ready:\n{log}");
            }
        }
    }

    /// Kills the server with SIGKILL, as a crash would, and returns what it
    /// wrote to stderr.
    pub fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }

    /// Waits until the server has written a line holding `needle` to
    /// stderr, up to `timeout`; whether it did.
    pub fn wait_for_log(&self, needle: &str, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let found = self
                .stderr_so_far
                .lock()
                .map(|log| log.contains(needle))
                .unwrap_or(false);
            if found || std::time::Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Sends the server SIGHUP (reload the log level and TLS files).
    pub fn hangup(&self) {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("kill -HUP");
        assert!(status.success(), "kill -HUP failed");
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's resident set size in KiB, from `/proc`.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends SIGTERM, waits for a clean exit, and returns what the server
    /// wrote to stderr.
    pub fn stop(self) -> String {
        self.stop_with_output().1
    }

    /// Sends SIGTERM, waits for a clean exit, and returns what the server
    /// wrote to stdout and to stderr.
    pub fn stop_with_output(mut self) -> (String, String) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success());
        let status = self.child.wait().expect("wait for phivault");
        let log = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        assert!(
            status.success(),
            "phivault exited with {status} on SIGTERM:\n{log}"
        );
        let out = self
            .stdout
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        (out, log)
    }
}

impl Drop for Server {
    /// Stops the server; when a test is failing, also shows how the server
    /// ended and what it logged, so that a failure that starts on the server
    /// side (an exit, a closed connection) can be told from one in the test.
    fn drop(&mut self) {
        let exited = self.child.try_wait().ok().flatten();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self
                .stderr
                .take()
                .and_then(|h| h.join().ok())
                .unwrap_or_default();
            match exited {
                Some(status) => {
                    eprintln!("phivault serve had exited ({status}) before the test failed")
                }
                None => eprintln!("phivault serve was still running when the test failed"),
            }
            eprintln!("its log:\n{log}");
        }
    }
}
