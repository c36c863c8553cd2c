//! End-to-end harness: starts the real `phivault` binary on `127.0.0.1:0`
//! and waits for its readiness line — no fixed ports, no sleeps.
//!
//! The binaries are the ones `make test` builds (`cargo build --bins`) next to
//! this test executable (`target/<profile>/`).

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

/// A vault directory with its master key file and admin API key.
pub struct VaultDir {
    /// Keeps the directory alive.
    pub root: tempfile::TempDir,
    /// The admin client's API key.
    pub admin_key: String,
}

impl VaultDir {
    /// Runs `phivault init` with a fresh master key file.
    pub fn init() -> Self {
        Self::init_prepared(|_| {})
    }

    /// Runs `phivault init` after `prepare` has been given the data
    /// directory's path (to mount a file system there, say).
    pub fn init_prepared(prepare: impl FnOnce(&Path)) -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let vault = Self {
            root,
            admin_key: String::new(),
        };
        prepare(&vault.data());
        let status = Command::new(binary("phivault"))
            .arg("init")
            .args(["--data-dir", vault.data().to_str().expect("utf-8 path")])
            .args([
                "--master-key-file",
                vault.key_file().to_str().expect("utf-8 path"),
                "--create-key-file",
            ])
            .args([
                "--admin-key-file",
                vault.admin_file().to_str().expect("utf-8 path"),
            ])
            .env("PHIVAULT_LOG", "warn")
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

    /// `phivault <subcommand> --data-dir <data>`, ready for more arguments.
    pub fn command(&self, subcommand: &str) -> Command {
        let mut command = Command::new(binary("phivault"));
        command
            .arg(subcommand)
            .args(["--data-dir", self.data().to_str().expect("utf-8 path")])
            .env("PHIVAULT_LOG", "warn")
            .env_remove("PHIVAULT_PASSPHRASE")
            .env_remove("PHIVAULT_NEW_PASSPHRASE")
            .env_remove("PHIVAULT_FAILPOINT");
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
    /// Everything it wrote to stderr so far is collected here on `stop`.
    stderr: Option<std::thread::JoinHandle<String>>,
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
            .args(["--data-dir", vault.data().to_str().expect("utf-8 path")])
            .args([
                "--master-key-file",
                vault.key_file().to_str().expect("utf-8 path"),
            ])
            .args(if extra.contains(&"--listen") {
                &[][..]
            } else {
                &["--listen", "127.0.0.1:0"][..]
            })
            .args(extra)
            .env("PHIVAULT_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start phivault serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (ready, wait) = mpsc::channel();
        let stdout = std::thread::spawn(move || {
            let mut metrics = None;
            let mut all = String::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("phivault metrics on ") {
                    metrics = addr.parse::<SocketAddr>().ok();
                }
                if let Some(addr) = line.strip_prefix("phivault listening on ") {
                    let _ = ready.send(addr.parse::<SocketAddr>().ok().map(|a| (a, metrics)));
                }
                all.push_str(&line);
                all.push('\n');
            }
            let _ = ready.send(None);
            all
        });
        let stderr = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        match wait.recv_timeout(READY_TIMEOUT) {
            Ok(Some((addr, metrics_addr))) => Self {
                child,
                addr,
                metrics_addr,
                stderr: Some(stderr),
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
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
