//! What the benchmarks that drive the real binaries share.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

/// The real `phivault serve` on a free loopback port, fsync on.
pub(crate) struct ServeProcess {
    /// The server process.
    pub(crate) child: Child,
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    /// Where its HTTP/JSON API listens, when `PHIVAULT_HTTP_LISTEN` was set.
    #[allow(
        dead_code,
        reason = "each bench compiles this module; only the gRPC bench serves HTTP"
    )]
    pub(crate) http_addr: Option<SocketAddr>,
    /// The admin client's API key.
    pub(crate) admin_key: String,
    _dir: Option<tempfile::TempDir>,
}

impl ServeProcess {
    /// Initialises a vault in a new temporary directory and serves it with
    /// `env` set.
    pub(crate) fn start(env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (data, key, admin) = (
            dir.path().join("data"),
            dir.path().join("master.key"),
            dir.path().join("admin.key"),
        );
        let bin = env!("CARGO_BIN_EXE_phivault");
        let status = Command::new(bin)
            .args(["init", "--data-dir"])
            .arg(&data)
            .arg("--master-key-file")
            .arg(&key)
            .arg("--create-key-file")
            .arg("--admin-key-file")
            .arg(&admin)
            .env("PHIVAULT_LOG", "warn")
            .stdout(Stdio::null())
            .status()
            .expect("init");
        assert!(status.success());
        let admin_key = std::fs::read_to_string(admin)
            .expect("admin key")
            .trim()
            .to_owned();
        let mut serving = Self::serve(
            &["--data-dir", data.to_str().expect("utf-8 path")],
            &key,
            admin_key,
            env,
        );
        serving._dir = Some(dir);
        serving
    }

    /// Serves a vault initialised already: `vault` names it (`--data-dir
    /// DIR` or `--store STRING`), `key` is its master key file.
    pub(crate) fn serve(
        vault: &[&str],
        key: &std::path::Path,
        admin_key: String,
        env: &[(&str, &str)],
    ) -> Self {
        let bin = env!("CARGO_BIN_EXE_phivault");
        let mut child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(vault)
            .arg("--master-key-file")
            .arg(key)
            .env("PHIVAULT_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .expect("serve");
        let stdout = child.stdout.take().expect("stdout");
        let wants_http = env.iter().any(|(name, _)| *name == "PHIVAULT_HTTP_LISTEN");
        let (mut addr, mut http_addr) = (None, None);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(a) = line.strip_prefix("phivault listening on ") {
                addr = a.parse().ok();
            }
            if let Some(a) = line.strip_prefix("phivault http on ") {
                http_addr = a.parse().ok();
            }
            if addr.is_some() && (http_addr.is_some() || !wants_http) {
                break;
            }
        }
        let addr = addr.expect("readiness line");
        Self {
            child,
            addr,
            http_addr,
            admin_key,
            _dir: None,
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServeProcess {
    /// `http://127.0.0.1:PORT`.
    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}
