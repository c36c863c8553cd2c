//! A highly available PostgreSQL for a test: one etcd and Patroni members
//! on loopback, in a directory under /tmp, with synchronous replication
//! (DESIGN.md §9). Patroni, not the test, decides which member leads and
//! promotes a standby when the leader dies.
//!
//! Patroni starts PostgreSQL, which refuses to run as root: as root, Patroni
//! runs as the `postgres` user through `setpriv`, which execs rather than
//! forks, so that the process the test holds is Patroni itself and can be
//! killed by its PID. Ports are picked free on 127.0.0.1 just before use.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::postgres::{bin_dir, pg_command};

/// How long a cluster may take to elect a leader with a synchronous
/// standby (4–12 s on the reference machine).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Bring-ups tried before a test gives up: a cluster that did not form is
/// stopped and started afresh once, its members' logs printed.
const BRING_UPS: usize = 2;

/// One Patroni member: its PostgreSQL port, its configuration and process.
struct Member {
    pg_port: u16,
    data: PathBuf,
    patroni: Option<Child>,
}

/// etcd and Patroni members, stopped by their PIDs when dropped.
pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    etcd: Child,
    members: Vec<Member>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
    })
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// The postmaster's PID from its data directory, if it runs.
fn postmaster(data: &Path) -> Option<u32> {
    std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

impl Cluster {
    /// Starts etcd and `members` Patroni members, and waits until one leads
    /// with a synchronous standby. Says why it cannot when Patroni, etcd or
    /// PostgreSQL is missing.
    pub fn start(members: usize) -> Result<Self, String> {
        for attempt in 1..=BRING_UPS {
            let cluster = Self::spawn(members)?;
            match cluster.wait_ready() {
                Ok(()) => return Ok(cluster),
                Err(why) if attempt < BRING_UPS => {
                    eprintln!("{why}; starting the cluster again");
                }
                Err(why) => panic!("{why}"),
            }
        }
        unreachable!("the last bring-up returns or panics")
    }

    /// Starts etcd and the members, without waiting for them.
    fn spawn(members: usize) -> Result<Self, String> {
        let bin = bin_dir().ok_or("PostgreSQL is not installed")?;
        let patroni = which("patroni").ok_or("Patroni is not installed (no patroni on PATH)")?;
        let etcd_bin = which("etcd").ok_or("etcd is not installed (no etcd on PATH)")?;
        let dir = tempfile::Builder::new()
            .prefix("phivault-ha.")
            .tempdir_in("/tmp")
            .expect("a directory under /tmp");
        let (client, peer) = (free_port(), free_port());
        let etcd = Command::new(etcd_bin)
            .args(["--name", "e0", "--data-dir"])
            .arg(dir.path().join("etcd"))
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-cluster",
                &format!("e0=http://127.0.0.1:{peer}"),
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("etcd.log")).expect("etcd log"))
            .spawn()
            .expect("start etcd");
        let mut cluster = Self {
            dir,
            bin,
            etcd,
            members: Vec::new(),
        };
        for i in 0..members {
            let (rest, pg_port) = (free_port(), free_port());
            let data = cluster.dir.path().join(format!("m{i}"));
            let config = cluster.dir.path().join(format!("m{i}.yml"));
            std::fs::write(&config, cluster.member_config(i, rest, pg_port, client))
                .expect("write the member's configuration");
            cluster.members.push(Member {
                pg_port,
                data,
                patroni: None,
            });
        }
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(cluster.dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown the cluster's directory");
        }
        for i in 0..members {
            let config = cluster.dir.path().join(format!("m{i}.yml"));
            let log = std::fs::File::create(cluster.dir.path().join(format!("m{i}.log")))
                .expect("member log");
            let mut command = if is_root() {
                let mut c = Command::new("setpriv");
                c.args([
                    "--reuid=postgres",
                    "--regid=postgres",
                    "--init-groups",
                    "--",
                ])
                .arg(&patroni);
                c
            } else {
                Command::new(&patroni)
            };
            let child = command
                .arg(&config)
                .env("HOME", cluster.dir.path())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("start patroni");
            cluster.members[i].patroni = Some(child);
        }
        Ok(cluster)
    }

    fn member_config(&self, i: usize, rest: u16, pg_port: u16, etcd: u16) -> String {
        let dir = self.dir.path().display();
        let bin = self.bin.display();
        // Short timings so that a failover takes seconds: the leader key
        // lives 10 s; members look every second.
        format!(
            "scope: phivault-test
name: m{i}
restapi:
  listen: 127.0.0.1:{rest}
  connect_address: 127.0.0.1:{rest}
etcd3:
  hosts: 127.0.0.1:{etcd}
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 1
    retry_timeout: 4
    synchronous_mode: true
    postgresql:
      use_pg_rewind: false
      parameters:
        max_wal_senders: 10
        max_replication_slots: 10
  initdb:
    - encoding: UTF8
    - auth: trust
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
postgresql:
  listen: 127.0.0.1:{pg_port}
  connect_address: 127.0.0.1:{pg_port}
  data_dir: {dir}/m{i}
  bin_dir: {bin}
  pgpass: {dir}/pgpass{i}
  authentication:
    superuser:
      username: postgres
      password: unused
    replication:
      username: postgres
      password: unused
  parameters:
    unix_socket_directories: {dir}
"
        )
    }

    /// `SELECT …` on member `i`, over TCP; `None` if it does not answer.
    fn query(&self, i: usize, sql: &str) -> Option<String> {
        let mut psql = pg_command(&self.bin, "psql");
        let output = psql
            .args(["-X", "-q", "-A", "-t", "-h", "127.0.0.1", "-p"])
            .arg(self.members[i].pg_port.to_string())
            .args(["-U", "postgres", "-d", "postgres", "-c", sql])
            .env("PGCONNECT_TIMEOUT", "2")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// The member that leads now (takes writes), if one does.
    pub fn leader(&self) -> Option<usize> {
        (0..self.members.len()).find(|&i| {
            self.members[i].patroni.is_some()
                && self.query(i, "SELECT pg_is_in_recovery()").as_deref() == Some("f")
        })
    }

    /// Waits until a member leads with a synchronous standby streaming;
    /// says why not, with the end of every log, after `READY_TIMEOUT`.
    fn wait_ready(&self) -> Result<(), String> {
        let started = Instant::now();
        loop {
            if let Some(leader) = self.leader()
                && self
                    .query(
                        leader,
                        "SELECT count(*) FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum')",
                    )
                    .is_some_and(|n| n != "0")
            {
                eprintln!(
                    "the Patroni cluster led with a synchronous standby after {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            if started.elapsed() >= READY_TIMEOUT {
                return Err(format!(
                    "the Patroni cluster elected no leader with a synchronous standby in {READY_TIMEOUT:?}\n{}",
                    self.log_tails()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The last lines of etcd's and every member's log, for a failure
    /// message: CI keeps what a test prints, not its directory.
    fn log_tails(&self) -> String {
        const LINES: usize = 25;
        let mut names = vec!["etcd.log".to_owned()];
        names.extend((0..self.members.len()).map(|i| format!("m{i}.log")));
        let mut out = String::new();
        for name in names {
            let text = std::fs::read_to_string(self.dir.path().join(&name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- last lines of {name}\n"));
            for line in &lines[lines.len().saturating_sub(LINES)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// A connection string that finds whichever member leads.
    pub fn connection_string(&self, database: &str) -> String {
        let hosts = vec!["127.0.0.1"; self.members.len()].join(",");
        let ports: Vec<String> = self.members.iter().map(|m| m.pg_port.to_string()).collect();
        format!(
            "host={hosts} port={} user=postgres dbname={database} target_session_attrs=read-write connect_timeout=2",
            ports.join(",")
        )
    }

    /// Creates `database` on the leader (the standbys replicate it).
    pub fn create_database(&self, database: &str) {
        let leader = self.leader().expect("a leader");
        let made = self.query(leader, &format!("CREATE DATABASE \"{database}\""));
        assert!(made.is_some(), "CREATE DATABASE on the leader");
    }

    /// Kills member `i` as a crash would: SIGKILL to its Patroni and to its
    /// PostgreSQL, by their PIDs.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut patroni) = self.members[i].patroni.take() {
            let _ = patroni.kill();
            let _ = patroni.wait();
        }
        if let Some(pid) = postmaster(&self.members[i].data) {
            signal(pid, "KILL");
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            if let Some(mut patroni) = member.patroni.take() {
                let _ = patroni.kill();
                let _ = patroni.wait();
            }
            // SIGQUIT: PostgreSQL's immediate shutdown, children included.
            if let Some(pid) = postmaster(&member.data) {
                signal(pid, "QUIT");
            }
        }
        let _ = self.etcd.kill();
        let _ = self.etcd.wait();
    }
}
