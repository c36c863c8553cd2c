//! A real PostgreSQL server for a test: `initdb` into a fresh directory
//! under /tmp, started on a Unix socket in that directory (no TCP port, so
//! nothing to collide with), stopped by its PID when dropped.
//!
//! PostgreSQL refuses to run as root: as root, its binaries run as the
//! `postgres` user through `runuser`, in a directory that user owns (not
//! under /root, which it cannot read). `make test` installs the `postgresql`
//! package; on a machine without it, [`Postgres::start`] says why and the
//! caller skips with that message.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A running PostgreSQL server.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pid: u32,
}

/// The directory of PostgreSQL's server binaries, the newest version
/// installed.
pub fn bin_dir() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("pg_ctl").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// Whether this process runs as root (then PostgreSQL runs as `postgres`).
fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// `program` of PostgreSQL, as the user that may run it.
pub fn pg_command(bin: &Path, program: &str) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command
            .args(["-u", "postgres", "--"])
            .arg(bin.join(program));
        command
    } else {
        Command::new(bin.join(program))
    }
}

fn run(mut command: Command, what: &str) -> Output {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

impl Postgres {
    /// Starts a server, or says why it cannot (PostgreSQL not installed).
    pub fn start() -> Result<Self, String> {
        Self::start_with(&[])
    }

    /// Starts a server with extra `-c name=value` settings.
    pub fn start_with(settings: &[&str]) -> Result<Self, String> {
        let bin = bin_dir().ok_or_else(|| {
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/pg_ctl): `make test` installs the postgresql package".to_owned()
        })?;
        let dir = tempfile::Builder::new()
            .prefix("phivault-pg.")
            .tempdir_in("/tmp")
            .expect("a directory under /tmp");
        if is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg("postgres:").arg(dir.path());
                    c
                },
                "chown",
            );
        }
        let data = dir.path().join("data");
        let mut initdb = pg_command(&bin, "initdb");
        initdb.arg("-D").arg(&data).args([
            "--no-sync",
            "--auth=trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
        ]);
        run(initdb, "initdb");
        let mut options = format!(
            "-c listen_addresses='' -c unix_socket_directories='{}'",
            dir.path().display()
        );
        for setting in settings {
            options.push_str(" -c ");
            options.push_str(setting);
        }
        let mut start = pg_command(&bin, "pg_ctl");
        start
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.path().join("log"))
            .args(["-o", &options, "-w", "start"]);
        run(start, "pg_ctl start");
        let pid = std::fs::read_to_string(data.join("postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse().ok())
            .expect("postmaster.pid names the server's PID");
        Ok(Self { dir, bin, pid })
    }

    /// The directory of the server's socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Creates database `name` and returns its connection string.
    pub fn create_database(&self, name: &str) -> String {
        let mut create = pg_command(&self.bin, "psql");
        create
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir())
            .args(["-U", "postgres", "-d", "postgres", "-c"])
            .arg(format!("CREATE DATABASE \"{name}\""));
        run(create, "CREATE DATABASE");
        self.connection_string(name)
    }

    /// The connection string of database `name`, over the Unix socket.
    pub fn connection_string(&self, name: &str) -> String {
        format!(
            "host={} user=postgres dbname={name}",
            self.socket_dir().display()
        )
    }

    /// Runs SQL in database `name` and returns psql's unaligned output.
    pub fn psql(&self, name: &str, sql: &str) -> String {
        let mut psql = pg_command(&self.bin, "psql");
        psql.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir())
            .args(["-U", "postgres", "-d", name, "-c", sql]);
        String::from_utf8_lossy(&run(psql, "psql").stdout).into_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Stopped by its PID: SIGQUIT is PostgreSQL's immediate shutdown.
        // `pg_ctl stop` waits for the PID to exit.
        let mut stop = pg_command(&self.bin, "pg_ctl");
        stop.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if !stop.status().is_ok_and(|s| s.success()) {
            let _ = Command::new("kill")
                .args(["-QUIT", &self.pid.to_string()])
                .status();
        }
    }
}
