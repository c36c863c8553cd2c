//! The vault on PostgreSQL (DESIGN.md §9), against what it sits on, all in
//! one run: a Patroni cluster of a leader and a synchronous standby on this
//! machine (every commit waits for the standby, so commit latency is a lower
//! bound of a real deployment's), the real `phivault serve` on it, one node
//! then two, and the embedded RocksDB vault.
//!
//! * New values tokenized in batches of 1,000 by `WRITERS` concurrent
//!   callers: the vault on PostgreSQL against (a) a bare client driving the
//!   vault's own insert statement with the same crypto (blind index, token
//!   drawn from the value's keyed stream, sealed row, bound forward entry)
//!   over as many connections, the limit the vault sits on, and (b) the
//!   vault on RocksDB. Each also says how many microseconds of CPU a value
//!   cost PostgreSQL, the vault, the bench process and the rest of the
//!   machine.
//! * `Detokenize` of batches of 1,000 tokens by `WRITERS` callers, and
//!   unary `Detokenize` of one token at 32 callers (requests/s, p50, p99),
//!   both against the RocksDB vault.
//! * What the audit trail costs on PostgreSQL: unary `Detokenize` of one
//!   token at 32 callers and at a fixed rate (`OPEN_LOOP_RATE`, an open
//!   loop: p50, p99, p99.9, largest), against a node on the same database
//!   whose audit records are skipped by the bench-only switch
//!   (`PHIVAULT_BENCH_SKIP_AUDIT`), alternating; and the audited node's
//!   commit durations meanwhile, from its metrics.
//!
//! `make bench` (or `cargo bench -p phivault --features bench-switches
//! --bench postgres`; without the feature node c records too).
//! `PHIVAULT_BENCH_SECONDS` sets each measurement's length (default 10).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use phivault::crypto::Keyset;
use phivault::format::{FormatKind, FormatSpec};
use phivault::store::postgres::INSERT_MAPPINGS;
use phivault::store::schema::ForwardKey;
use phivault_client::{Client, ClientOptions};

mod support;
use support::{Cpu, ServeProcess, commit_histogram, commits_between, open_loop_detokenize, tail};

/// Concurrent callers writing new values.
const WRITERS: usize = 4;
/// Values per tokenize call (and per bare statement).
const BATCH: usize = 1000;
/// Concurrent unary detokenize callers.
const CALLERS: usize = 32;
/// Calls a second of the open-loop detokenize measurement: about half what
/// the audited node answers at 32 callers (the gRPC benchmark's 5,000
/// would be beyond it, and an open loop beyond saturation measures only
/// its growing queue).
const OPEN_LOOP_RATE: f64 = 2000.0;
/// Batches of tokens the reveal measurement cycles through.
const REVEAL_BATCHES: usize = 16;
/// The `ssn` namespace's id in a new vault (the default namespaces in order).
const SSN: u32 = 1;

/// A source of values never tokenized before, shared by every caller.
struct Fresh(AtomicU64);

impl Fresh {
    fn batch(&self) -> Vec<String> {
        let first = self.0.fetch_add(BATCH as u64, Ordering::Relaxed);
        (first..first + BATCH as u64)
            .map(|n| {
                format!(
                    "{:03}-{:02}-{:04}",
                    100 + n / 1_000_000 % 800,
                    n / 10_000 % 100,
                    n % 10_000
                )
            })
            .collect()
    }
}

/// A measurement of new values: values/s, and CPU microseconds per value
/// spent by PostgreSQL, the vault servers, this process and the rest of
/// the machine.
#[derive(Clone, Copy)]
struct Phase {
    rate: f64,
    cpu: [f64; 4],
}

/// `seconds` of `WRITERS` callers, each calling `one` with a fresh batch in
/// a loop; `servers` are the vault processes whose CPU is counted apart.
async fn new_values_rate<F, Fut>(seconds: f64, servers: &[u32], one: F) -> Phase
where
    F: Fn(usize, Vec<String>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let fresh = Arc::new(Fresh(AtomicU64::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64 % 1_000_000_000),
    )));
    let one = Arc::new(one);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let before = Cpu::now(servers);
    let tasks: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let (fresh, one) = (Arc::clone(&fresh), Arc::clone(&one));
            tokio::spawn(async move {
                let mut done = 0usize;
                while Instant::now() < deadline {
                    one(writer, fresh.batch()).await;
                    done += BATCH;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("writer");
    }
    let cpu = Cpu::now(servers).per_value(before, total as f64);
    Phase {
        rate: total as f64 / started.elapsed().as_secs_f64(),
        cpu,
    }
}

/// Batches of tokens to reveal: `REVEAL_BATCHES` batches of `BATCH` new
/// values tokenized through `client`.
async fn tokens_of(client: &Client, fresh: &Fresh) -> Arc<Vec<Vec<String>>> {
    let mut batches = Vec::with_capacity(REVEAL_BATCHES);
    for _ in 0..REVEAL_BATCHES {
        let tokens = client
            .tokenize("ssn", fresh.batch())
            .await
            .expect("tokenize")
            .into_iter()
            .map(|r| r.expect("token"))
            .collect();
        batches.push(tokens);
    }
    Arc::new(batches)
}

/// Tokens/s of `seconds` of `WRITERS` callers, each revealing the batches
/// in turn (every batch audited, as each call is).
async fn reveal_rate(client: Client, batches: Arc<Vec<Vec<String>>>, seconds: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|caller| {
            let (client, batches) = (client.clone(), Arc::clone(&batches));
            tokio::spawn(async move {
                let mut done = 0usize;
                let mut next = caller;
                while Instant::now() < deadline {
                    let batch = batches[next % batches.len()].clone();
                    next += 1;
                    let shown = client
                        .detokenize("ssn", batch, false)
                        .await
                        .expect("detokenize");
                    assert!(shown.iter().all(|r| r.is_ok()));
                    done += shown.len();
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("caller");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// Unary detokenize of one token by `CALLERS` callers: rate, p50, p99.
async fn detokenize_latency(
    client: Client,
    token: String,
    seconds: f64,
) -> (f64, Duration, Duration) {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (client, token) = (client.clone(), token.clone());
            tokio::spawn(async move {
                let mut samples = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let shown = client
                        .detokenize("ssn", vec![token.clone()], false)
                        .await
                        .expect("detokenize");
                    assert!(shown[0].is_ok());
                    samples.push(t.elapsed());
                }
                samples
            })
        })
        .collect();
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await.expect("caller"));
    }
    let rate = samples.len() as f64 / started.elapsed().as_secs_f64();
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    (rate, at(0.50), at(0.99))
}

/// `phivault init --store STORE` in `dir`; returns the admin key.
fn init_store(dir: &Path, store: &str) -> String {
    let bin = env!("CARGO_BIN_EXE_phivault");
    let status = Command::new(bin)
        .args(["init", "--store", store, "--master-key-file"])
        .arg(dir.join("master.key"))
        .arg("--create-key-file")
        .arg("--admin-key-file")
        .arg(dir.join("admin.key"))
        .env("PHIVAULT_LOG", "warn")
        .stdout(Stdio::null())
        .status()
        .expect("init");
    assert!(status.success(), "phivault init --store");
    std::fs::read_to_string(dir.join("admin.key"))
        .expect("admin key")
        .trim()
        .to_owned()
}

/// A client with tokenize and detokenize on `ssn`, through `endpoint`.
async fn pipeline(endpoint: &str, admin_key: &str) -> Client {
    let admin = Client::connect(ClientOptions::new(endpoint).api_key(admin_key))
        .await
        .expect("admin");
    let key = admin
        .create_client(
            "bench",
            vec!["tokenize:ssn".into(), "detokenize:ssn".into()],
        )
        .await
        .expect("client")
        .api_key;
    Client::connect(ClientOptions::new(endpoint).api_key(key))
        .await
        .expect("connect")
}

/// A client of an existing bench client's key on another node.
async fn same_key_on(endpoint: &str, admin_key: &str, name: &str) -> Client {
    let admin = Client::connect(ClientOptions::new(endpoint).api_key(admin_key))
        .await
        .expect("admin");
    let key = admin
        .create_client(name, vec!["tokenize:ssn".into(), "detokenize:ssn".into()])
        .await
        .expect("client")
        .api_key;
    Client::connect(ClientOptions::new(endpoint).api_key(key))
        .await
        .expect("connect")
}

/// One value's blind index, token, sealed reverse row and bound forward
/// entry.
type BareRow = ([u8; 32], String, Vec<u8>, Vec<u8>);

/// The vault's insert statement driven bare: the same crypto per value as
/// the vault does (blind index, token drawn, sealed reverse row, bound
/// forward entry), the same arrays sorted by blind index, over one
/// connection per writer.
struct Bare {
    clients: Vec<tokio_postgres::Client>,
    keyset: Keyset,
    ssn: FormatSpec,
    active: Vec<u8>,
}

impl Bare {
    async fn connect(store: &str) -> Self {
        let mut clients = Vec::new();
        for _ in 0..WRITERS {
            let (client, connection) = tokio_postgres::connect(store, tokio_postgres::NoTls)
                .await
                .expect("connect bare");
            tokio::spawn(connection);
            clients.push(client);
        }
        let active: Vec<u8> = clients[0]
            .query_one(
                "SELECT value FROM phivault.meta WHERE name = 'active_keyset'",
                &[],
            )
            .await
            .expect("the active keyset row")
            .get(0);
        Self {
            clients,
            keyset: Keyset::generate(1).expect("keyset"),
            ssn: FormatSpec::new(FormatKind::Ssn),
            active,
        }
    }

    /// Writes every dirty buffer out, so that the next measurement does not
    /// pay for the last one's writes.
    async fn checkpoint(&self) {
        if let Err(e) = self.clients[0].batch_execute("CHECKPOINT").await {
            eprintln!("CHECKPOINT refused ({e}); measurements may carry each other's writes");
        }
    }

    async fn insert(&self, writer: usize, values: Vec<String>) {
        let mut rows: Vec<BareRow> = values
            .iter()
            .map(|value| {
                let canonical: String = value.chars().filter(char::is_ascii_digit).collect();
                let index = self.keyset.prf().blind_index(SSN, canonical.as_bytes());
                let key = ForwardKey::new(SSN, 1, &index);
                // The token drawn as the vault draws a value's first
                // candidate: from the keyed stream of the value.
                let token = self
                    .ssn
                    .generate(
                        &canonical,
                        &mut self.keyset.prf().token_stream(SSN, canonical.as_bytes(), 0),
                    )
                    .expect("an SSN token");
                let ad = [
                    &SSN.to_be_bytes()[..],
                    token.as_bytes(),
                    &1u32.to_be_bytes(),
                ];
                let reverse = self
                    .keyset
                    .enc()
                    .seal(&ad, canonical.as_bytes())
                    .expect("seal");
                let forward = key.bind(self.keyset.prf(), token.as_bytes());
                (index.0, token, reverse, forward)
            })
            .collect();
        rows.sort_by_key(|row| row.0);
        let tokens: Vec<&[u8]> = rows.iter().map(|r| r.1.as_bytes()).collect();
        let reverse: Vec<&[u8]> = rows.iter().map(|r| r.2.as_slice()).collect();
        let blinds: Vec<Option<&[u8]>> = rows.iter().map(|r| Some(&r.0[..])).collect();
        let forward: Vec<Option<&[u8]>> = rows.iter().map(|r| Some(r.3.as_slice())).collect();
        let client = &self.clients[writer % self.clients.len()];
        client
            .query(
                INSERT_MAPPINGS,
                &[
                    &(SSN as i32),
                    &1i32,
                    &self.active,
                    &tokens,
                    &reverse,
                    &blinds,
                    &forward,
                ],
            )
            .await
            .expect("the bare insert");
    }
}

fn main() {
    let seconds: f64 = std::env::var("PHIVAULT_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10.0);
    let cluster = match phivault_tests::patroni::Cluster::start(2) {
        Ok(cluster) => cluster,
        Err(why) => {
            eprintln!(
                "SKIPPED the PostgreSQL benchmark: {why} (`make bench` installs patroni and etcd-server)"
            );
            return;
        }
    };
    cluster.create_database("vault");
    cluster.create_database("bare");
    cluster.create_database("bare_after");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let bare_dir = tempfile::tempdir().expect("tempdir");
    let store = cluster.connection_string("vault");
    let bare_store = cluster.connection_string("bare");
    let bare_after_store = cluster.connection_string("bare_after");
    let bare_after_dir = tempfile::tempdir().expect("tempdir");
    let admin_key = init_store(dir.path(), &store);
    // The bare statement's databases get the vault's schema and rows.
    init_store(bare_dir.path(), &bare_store);
    init_store(bare_after_dir.path(), &bare_after_store);
    let key_file = dir.path().join("master.key");
    let a = ServeProcess::serve(
        &["--store", &store],
        &key_file,
        admin_key.clone(),
        &[("PHIVAULT_METRICS_LISTEN", "127.0.0.1:0")],
    );
    let b = ServeProcess::serve(&["--store", &store], &key_file, admin_key.clone(), &[]);
    let rocks = ServeProcess::start(&[]);
    let servers = [a.child.id(), b.child.id(), rocks.child.id()];
    runtime.block_on(async {
        println!(
            "PostgreSQL benchmark: a Patroni leader with a synchronous standby on this machine; {WRITERS} writers of batches of {BATCH} new values, {CALLERS} unary detokenize callers; {seconds} s each"
        );
        let bare = Arc::new(Bare::connect(&bare_store).await);
        let bare_again = Arc::new(Bare::connect(&bare_after_store).await);
        let on_a = pipeline(&a.endpoint(), &admin_key).await;
        let on_b = same_key_on(&b.endpoint(), &admin_key, "bench-b").await;
        let on_rocks = pipeline(&rocks.endpoint(), &rocks.admin_key).await;

        let bare_run = |bare: Arc<Bare>| {
            new_values_rate(seconds, &servers, move |writer, values| {
                let bare = Arc::clone(&bare);
                async move { bare.insert(writer, values).await }
            })
        };
        bare.checkpoint().await;
        let bare_first = bare_run(Arc::clone(&bare)).await;
        let tokenize = |clients: Vec<Client>| {
            move |writer: usize, values: Vec<String>| {
                let client = clients[writer % clients.len()].clone();
                async move {
                    let results = client.tokenize("ssn", values).await.expect("tokenize");
                    assert!(results.iter().all(|r| r.is_ok()));
                }
            }
        };
        bare.checkpoint().await;
        let one_node = new_values_rate(seconds, &servers, tokenize(vec![on_a.clone()])).await;
        // The bare statement again, after the vault, into an empty database
        // of its own: a run leaves its rows dirty in shared buffers and its
        // WAL for whoever writes next, so a baseline measured only before
        // the vault favoured itself (it measured half as fast when run
        // second). Each run starts after a checkpoint, into an empty table,
        // and the ratio is taken against the mean of the two (A-B-A).
        bare.checkpoint().await;
        let bare_after = bare_run(Arc::clone(&bare_again)).await;
        let bare_rate = (bare_first.rate + bare_after.rate) / 2.0;
        bare.checkpoint().await;
        let two_nodes = new_values_rate(seconds, &servers, tokenize(vec![on_a.clone(), on_b.clone()])).await;
        let rocks_rate = new_values_rate(seconds, &servers, tokenize(vec![on_rocks.clone()])).await;

        let token = on_a.tokenize("ssn", vec!["123-45-6789".into()]).await.expect("token")[0]
            .clone()
            .expect("token");
        let rocks_token = on_rocks.tokenize("ssn", vec!["123-45-6789".into()]).await.expect("token")[0]
            .clone()
            .expect("token");
        let fresh = Fresh(AtomicU64::new(900_000_000));
        let pg_tokens = tokens_of(&on_a, &fresh).await;
        let rocks_tokens = tokens_of(&on_rocks, &fresh).await;
        let pg_reveal = reveal_rate(on_a.clone(), pg_tokens, seconds).await;
        let rocks_reveal = reveal_rate(on_rocks.clone(), rocks_tokens, seconds).await;
        let (pg_rate, pg_p50, pg_p99) = detokenize_latency(on_a.clone(), token, seconds).await;
        let (rocks_detok, rocks_p50, rocks_p99) = detokenize_latency(on_rocks.clone(), rocks_token, seconds).await;

        // The audit trail's cost on PostgreSQL: node a against node c,
        // which skips its records, on the same database, alternating.
        // Started only now, so that it takes no CPU from the phases before.
        let c = ServeProcess::serve(
            &["--store", &store],
            &key_file,
            admin_key.clone(),
            &[("PHIVAULT_BENCH_SKIP_AUDIT", "1")],
        );
        if !cfg!(feature = "bench-switches") {
            eprintln!("built without the bench-switches feature: node c writes audit records too (run `make bench`)");
        }
        let on_c = same_key_on(&c.endpoint(), &admin_key, "bench-c").await;
        let pg_token = on_a.tokenize("ssn", vec!["123-45-6789".into()]).await.expect("token")[0].clone().expect("token");
        let mut closed: [Vec<(f64, Duration, Duration)>; 2] = Default::default();
        let mut open: [Vec<Duration>; 2] = Default::default();
        let metrics = a.metrics_addr.expect("node a's metrics listener");
        let mut open_commits = Vec::new();
        for _ in 0..2 {
            for (i, node) in [&on_c, &on_a].into_iter().enumerate() {
                closed[i].push(detokenize_latency(node.clone(), pg_token.clone(), seconds).await);
            }
            for (i, node) in [&on_c, &on_a].into_iter().enumerate() {
                let before = commit_histogram(metrics);
                let (handle, node, token) = (tokio::runtime::Handle::current(), node.clone(), pg_token.clone());
                let (taken, failed) = tokio::task::spawn_blocking(move || {
                    open_loop_detokenize(&handle, node, token, OPEN_LOOP_RATE, seconds)
                })
                .await
                .expect("open loop");
                assert_eq!(failed, 0, "calls failed in the open loop");
                open[i].extend(taken);
                if i == 1 {
                    let during = commits_between(&before, &commit_histogram(metrics));
                    if open_commits.is_empty() {
                        open_commits = during;
                    } else {
                        for (sum, (_, n)) in open_commits.iter_mut().zip(during) {
                            sum.1 += n;
                        }
                    }
                }
            }
        }

        println!();
        // CPU per value, by part: on two shared cores, what the vault's
        // phases spend beyond the bare statement's is what they cannot
        // hand PostgreSQL.
        let row = |name: &str, phase: Phase, bare: Option<f64>, rocks: Option<f64>| {
            let ratio = |of: Option<f64>| of.map_or(String::new(), |of| format!("{:.2}", phase.rate / of));
            let [pg, vault, bench, rest] = phase.cpu;
            println!(
                "| {name} | {:.0} | {} | {} | {pg:.1} | {vault:.1} | {bench:.1} | {rest:.1} | {:.1} |",
                phase.rate,
                ratio(bare),
                ratio(rocks),
                pg + vault + bench + rest
            );
        };
        println!("| new values, batches of {BATCH}, {WRITERS} writers | values/s | / bare statement | / RocksDB vault | CPU µs per value: PostgreSQL | vault | bench process | rest | total |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        row("bare insert statement, same crypto, before the vault", bare_first, None, None);
        row("bare insert statement, same crypto, after the vault", bare_after, None, None);
        println!("| bare insert statement, mean of the two | {bare_rate:.0} | 1.00 | | | | | | |");
        row("vault on PostgreSQL, one node", one_node, Some(bare_rate), Some(rocks_rate.rate));
        row("vault on PostgreSQL, two nodes", two_nodes, Some(bare_rate), Some(rocks_rate.rate));
        row("vault on RocksDB", rocks_rate, None, Some(rocks_rate.rate));
        println!();
        println!("| Detokenize, batches of {BATCH}, {WRITERS} callers | tokens/s | / RocksDB vault |");
        println!("|---|---:|---:|");
        println!("| vault on PostgreSQL (one node) | {pg_reveal:.0} | {:.2} |", pg_reveal / rocks_reveal);
        println!("| vault on RocksDB | {rocks_reveal:.0} | 1.00 |");
        println!();
        println!("| unary Detokenize, 1 token, {CALLERS} callers | requests/s | / RocksDB vault | p50 | p99 |");
        println!("|---|---:|---:|---:|---:|");
        println!("| vault on PostgreSQL (one node) | {pg_rate:.0} | {:.2} | {pg_p50:.2?} | {pg_p99:.2?} |", pg_rate / rocks_detok);
        println!("| vault on RocksDB | {rocks_detok:.0} | 1.00 | {rocks_p50:.2?} | {rocks_p99:.2?} |");
        println!();
        println!("| unary Detokenize, 1 token, vault on PostgreSQL (one node) | audit records skipped | audited (as built) | ratio |");
        println!("|---|---:|---:|---:|");
        let mean = |runs: &[(f64, Duration, Duration)], f: fn(&(f64, Duration, Duration)) -> f64| runs.iter().map(f).sum::<f64>() / runs.len() as f64;
        let [skipped_rate, audited_rate] = closed.each_ref().map(|r| mean(r, |x| x.0));
        let [skipped_p50, audited_p50] = closed.each_ref().map(|r| mean(r, |x| x.1.as_secs_f64()));
        let [skipped_p99, audited_p99] = closed.each_ref().map(|r| mean(r, |x| x.2.as_secs_f64()));
        println!("| requests/s, {CALLERS} callers | {skipped_rate:.0} | {audited_rate:.0} | {:.2} |", audited_rate / skipped_rate);
        println!("| p50, {CALLERS} callers | {:.2?} | {:.2?} | |", Duration::from_secs_f64(skipped_p50), Duration::from_secs_f64(audited_p50));
        println!("| p99, {CALLERS} callers | {:.2?} | {:.2?} | |", Duration::from_secs_f64(skipped_p99), Duration::from_secs_f64(audited_p99));
        let [skipped_tail, audited_tail] = open.each_mut().map(|samples| tail(samples));
        for (i, name) in ["p50", "p99", "p99.9", "max"].into_iter().enumerate() {
            println!("| {name}, {OPEN_LOOP_RATE} calls/s open loop | {:.2?} | {:.2?} | |", skipped_tail[i], audited_tail[i]);
        }
        println!();
        let commits: u64 = open_commits.iter().map(|b| b.1).sum();
        println!("node a's commits during its open-loop runs: {commits}, by how long each took (statement and connection wait):");
        println!("| at most | commits | share |");
        println!("|---:|---:|---:|");
        for (le, count) in open_commits.iter().filter(|b| b.1 > 0) {
            let bound = if le.is_finite() { format!("{:.2?}", Duration::from_secs_f64(*le)) } else { "longer".into() };
            println!("| {bound} | {count} | {:.4} |", *count as f64 / commits.max(1) as f64);
        }
        println!();
        println!(
            "targets: new values on PostgreSQL at least 0.70 of the bare statement ({:.2}); detokenize at least 0.50 of RocksDB's (batches {:.2}, unary {:.2})",
            one_node.rate / bare_rate,
            pg_reveal / rocks_reveal,
            pg_rate / rocks_detok
        );
    });
    drop((a, b, rocks));
    drop(cluster);
}
