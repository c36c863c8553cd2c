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
    /// Where its Prometheus metrics are served, when
    /// `PHIVAULT_METRICS_LISTEN` was set.
    #[allow(dead_code, reason = "each bench compiles this module")]
    pub(crate) metrics_addr: Option<SocketAddr>,
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
        let (mut addr, mut http_addr, mut metrics_addr) = (None, None, None);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(a) = line.strip_prefix("phivault listening on ") {
                addr = a.parse().ok();
            }
            if let Some(a) = line.strip_prefix("phivault http on ") {
                http_addr = a.parse().ok();
            }
            if let Some(a) = line.strip_prefix("phivault metrics on ") {
                metrics_addr = a.parse().ok();
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
            metrics_addr,
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
    /// The RocksDB data directory of a vault that [`ServeProcess::start`]
    /// initialised.
    #[allow(dead_code, reason = "each bench compiles this module")]
    pub(crate) fn data_dir(&self) -> Option<std::path::PathBuf> {
        self._dir.as_ref().map(|dir| dir.path().join("data"))
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Latencies of unary `Detokenize` calls of one token sent at `rate` a
/// second for `seconds`, whatever the answers do (an open loop: a slow
/// answer does not hold the next call back, as it would a fixed set of
/// callers). Each call is timed from when it was due, so a call the client
/// sent late counts its wait too. A thread of its own paces the calls, off
/// the runtime that serves them; calls run on `handle`. The second value
/// counts calls that failed or answered an item error.
#[allow(dead_code, reason = "each bench compiles this module")]
pub(crate) fn open_loop_detokenize(
    handle: &tokio::runtime::Handle,
    client: phivault_client::Client,
    token: String,
    rate: f64,
    seconds: f64,
) -> (Vec<std::time::Duration>, usize) {
    use std::time::{Duration, Instant};
    let calls = (rate * seconds) as usize;
    let period = Duration::from_secs_f64(1.0 / rate);
    let (done, answers) = std::sync::mpsc::channel();
    let started = Instant::now();
    for n in 0..calls {
        let due = started + period.mul_f64(n as f64);
        if let Some(ahead) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(ahead);
        }
        let (client, token, done) = (client.clone(), token.clone(), done.clone());
        handle.spawn(async move {
            let answer = client.detokenize("ssn", vec![token], false).await;
            let ok = matches!(&answer, Ok(items) if items.iter().all(Result::is_ok));
            let _ = done.send((due.elapsed(), ok));
        });
    }
    drop(done);
    let mut samples = Vec::with_capacity(calls);
    let mut failed = 0;
    for (took, ok) in answers {
        samples.push(took);
        failed += usize::from(!ok);
    }
    // A call whose task ended without answering failed too.
    let unanswered = calls - samples.len().min(calls);
    (samples, failed + unanswered)
}

/// Percentiles of latency samples: p50, p99, p99.9 and the largest.
#[allow(dead_code, reason = "each bench compiles this module")]
pub(crate) fn tail(samples: &mut [std::time::Duration]) -> [std::time::Duration; 4] {
    assert!(!samples.is_empty(), "no latency measured");
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    [at(0.50), at(0.99), at(0.999), samples[samples.len() - 1]]
}

/// The text a vault's metrics listener serves.
fn scrape(metrics: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(metrics).expect("metrics listener");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {metrics}\r\nConnection: close\r\n\r\n"
    )
    .expect("scrape");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("metrics");
    text
}

/// The `phivault_writer_commit_seconds` histogram a vault's metrics
/// listener serves: (upper bound in seconds, commits at most that long),
/// cumulative, as scraped.
#[allow(dead_code, reason = "each bench compiles this module")]
pub(crate) fn commit_histogram(metrics: SocketAddr) -> Vec<(f64, u64)> {
    scrape(metrics)
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("phivault_writer_commit_seconds_bucket{le=\"")?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// What a vault's writer did since it started, from its metrics.
#[derive(Clone, Copy, Default)]
#[allow(dead_code, reason = "each bench compiles this module")]
pub(crate) struct Commits {
    /// Group commits made.
    pub(crate) commits: f64,
    /// Jobs (calls' writes) they carried.
    pub(crate) jobs: f64,
    /// Commits that wrote and succeeded, the ones timed.
    pub(crate) timed: f64,
    /// Seconds the timed commits took to be durable, together.
    pub(crate) seconds: f64,
}

impl std::ops::Sub for Commits {
    type Output = Commits;
    fn sub(self, earlier: Commits) -> Commits {
        Commits {
            commits: self.commits - earlier.commits,
            jobs: self.jobs - earlier.jobs,
            timed: self.timed - earlier.timed,
            seconds: self.seconds - earlier.seconds,
        }
    }
}

impl std::ops::Add for Commits {
    type Output = Commits;
    fn add(self, other: Commits) -> Commits {
        Commits {
            commits: self.commits + other.commits,
            jobs: self.jobs + other.jobs,
            timed: self.timed + other.timed,
            seconds: self.seconds + other.seconds,
        }
    }
}

/// What a vault's writer did since it started, as its metrics say.
#[allow(dead_code, reason = "each bench compiles this module")]
pub(crate) fn commits_so_far(metrics: SocketAddr) -> Commits {
    let text = scrape(metrics);
    let value = |name: &str| {
        text.lines()
            .find_map(|line| {
                line.strip_prefix(name)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or_default()
    };
    Commits {
        commits: value("phivault_writer_jobs_per_commit_count"),
        jobs: value("phivault_writer_jobs_per_commit_sum"),
        timed: value("phivault_writer_commit_seconds_count"),
        seconds: value("phivault_writer_commit_seconds_sum"),
    }
}

/// What `after` counted that `before` had not, bucket by bucket, as
/// commits per bucket (not cumulative), with the bucket's upper bound.
#[allow(dead_code, reason = "each bench compiles this module")]
pub(crate) fn commits_between(before: &[(f64, u64)], after: &[(f64, u64)]) -> Vec<(f64, u64)> {
    let mut below = 0;
    after
        .iter()
        .map(|&(le, count)| {
            let earlier = before.iter().find(|b| b.0 == le).map_or(0, |b| b.1);
            let cumulative = count - earlier;
            let own = cumulative - below;
            below = cumulative;
            (le, own)
        })
        .collect()
}

/// What RocksDB's own log in `data` says it did in the background: memtable
/// flushes begun, the times the log's bound called for flushes,
/// compactions begun, write-ahead log files started, and the
/// times it slowed or stopped writes.
#[allow(dead_code, reason = "each bench compiles this module")]
pub(crate) fn rocksdb_log_summary(data: &std::path::Path) -> String {
    // RocksDB starts a new LOG when a server opens the database and keeps
    // the earlier ones as LOG.old.*: all of them cover the run.
    let mut log = String::new();
    for entry in std::fs::read_dir(data).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with("LOG") {
            log.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    let count = |needle: &str| log.lines().filter(|line| line.contains(needle)).count();
    // Each column family switching to a new log file says so: count files.
    let log_files: std::collections::BTreeSet<&str> = log
        .lines()
        .filter_map(|line| {
            line.split_once("New memtable created with log file: #")?
                .1
                .split('.')
                .next()
        })
        .collect();
    format!(
        "{} memtable flushes, {} times the write-ahead log's bound called for flushes, {} compactions, {} write-ahead log files started, {} write slowdowns, {} write stops",
        count("\"event\": \"flush_started\""),
        count("while max_total_wal_size is"),
        count("\"event\": \"compaction_started\""),
        log_files.len(),
        count("Stalling writes"),
        count("Stopping writes"),
    )
}

/// CPU time, in seconds of one core, spent by each part of the machine: what
/// a measurement on two shared cores spends per value, and where.
#[derive(Clone, Copy, Default)]
#[allow(dead_code, reason = "each bench compiles this module")]
pub(crate) struct Cpu {
    /// Every PostgreSQL process on the machine, with the children its
    /// postmasters have reaped (autovacuum workers come and go).
    pub(crate) postgres: f64,
    /// The `phivault serve` processes measured.
    pub(crate) servers: f64,
    /// This process: the bench's callers or its bare client.
    pub(crate) bench: f64,
    /// The whole machine's busy time.
    pub(crate) machine: f64,
}

#[allow(dead_code, reason = "each bench compiles this module")]
impl Cpu {
    /// The counters now; `servers` are the vault processes' ids.
    pub(crate) fn now(servers: &[u32]) -> Self {
        let tick = rustix::param::clock_ticks_per_second() as f64;
        // utime, stime, cutime, cstime of /proc/PID/stat, after the command.
        let times = |stat: &str| -> Option<(String, [f64; 4])> {
            let (head, rest) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1.to_owned();
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let at = |i: usize| {
                fields
                    .get(i)
                    .and_then(|f| f.parse::<f64>().ok())
                    .unwrap_or(0.0)
                    / tick
            };
            Some((comm, [at(11), at(12), at(13), at(14)]))
        };
        let mut cpu = Cpu::default();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let Some((comm, [utime, stime, cutime, cstime])) = times(&stat) else {
                continue;
            };
            if comm == "postgres" {
                cpu.postgres += utime + stime + cutime + cstime;
            } else if servers.contains(&pid) {
                cpu.servers += utime + stime;
            } else if pid == std::process::id() {
                cpu.bench += utime + stime;
            }
        }
        // user nice system idle iowait irq softirq steal, in ticks.
        if let Ok(stat) = std::fs::read_to_string("/proc/stat")
            && let Some(line) = stat.lines().next()
        {
            let ticks: Vec<f64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|f| f.parse().ok())
                .collect();
            let busy: f64 = ticks
                .iter()
                .take(8)
                .enumerate()
                .filter(|(i, _)| *i != 3 && *i != 4)
                .map(|(_, t)| t)
                .sum();
            cpu.machine = busy / tick;
        }
        cpu
    }

    /// Microseconds of CPU per value (or call) from `before` to now, for
    /// `values`: PostgreSQL, the servers, the bench, and the rest of the
    /// machine (the kernel's work for no process, other processes).
    pub(crate) fn per_value(self, before: Cpu, values: f64) -> [f64; 4] {
        let us = |now: f64, then: f64| (now - then) * 1e6 / values;
        let machine = us(self.machine, before.machine);
        let (pg, vault, bench) = (
            us(self.postgres, before.postgres),
            us(self.servers, before.servers),
            us(self.bench, before.bench),
        );
        [pg, vault, bench, (machine - pg - vault - bench).max(0.0)]
    }
}
