//! A client given the endpoints of several nodes, through the real
//! binaries: it passes over those that do not answer, and when the node it
//! uses stops, it moves on to the next — calls, the command line and a bulk
//! run that resumes there with every row exactly once.
//!
//! The embedded store opens in one process at a time, so there the other
//! node is the same vault served again at another address: what the client
//! sees is the same, the address it used stops answering and another one
//! answers over the same data. In the PostgreSQL pass of the suite two
//! nodes also serve one vault at once, and one is killed under a run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use phivault_client::{Client, ClientError, ClientOptions};
use phivault_tests::{Server, VaultDir, on_postgres};

use super::{client_with, connect, texts, wait_for_growth};

/// A loopback address nothing listens on: a free port, bound and let go.
/// Some tests serve the vault there later, as a node that comes up.
fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("its address")
}

/// Runs `phivault-client ARGS` with the API key `key` and the extra
/// environment `env` (`PHIVAULT_ENDPOINT` only from there).
fn cli(key: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(phivault_tests::binary("phivault-client"))
        .args(args)
        .env("PHIVAULT_API_KEY", key)
        .env_remove("PHIVAULT_ENDPOINT")
        .env_remove("PHIVAULT_INSECURE_PLAINTEXT")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run phivault-client")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A client of `endpoints` with `key`.
async fn connect_to(endpoints: &str, key: &str) -> Client {
    Client::connect(ClientOptions::new(endpoints).api_key(key))
        .await
        .expect("an endpoint answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_that_do_not_answer_are_passed_over() {
    let vault = VaultDir::init();
    let server = Server::start(&vault, &[]);
    let dead = format!("http://{}", free_addr());
    let endpoints = format!("{dead},{}", server.endpoint());

    let admin = connect_to(&endpoints, &vault.admin_key).await;
    assert_eq!(admin.endpoint(), server.endpoint());
    let created = admin
        .create_client(
            "pipeline",
            vec!["tokenize:*".to_owned(), "detokenize:*".to_owned()],
        )
        .await
        .expect("create client");
    let key = created.api_key;
    let pipeline = connect_to(&endpoints, &key).await;
    let token = texts(
        pipeline
            .tokenize("ssn", vec!["123-45-6789".into()])
            .await
            .expect("tokenize"),
    )
    .remove(0);
    let back = texts(
        pipeline
            .detokenize("ssn", vec![token.clone()], false)
            .await
            .expect("detokenize"),
    );
    assert_eq!(back, ["123-45-6789"]);
    assert!(!admin.list_namespaces().await.expect("list").is_empty());
    assert!(admin.health().await.expect("health"));

    // The command line takes the list from --endpoint and from
    // PHIVAULT_ENDPOINT alike.
    let tokenize = ["tokenize", "-n", "ssn", "123-45-6789"];
    let by_flag = cli(
        &key,
        &[&["--endpoint", endpoints.as_str()][..], &tokenize[..]].concat(),
        &[],
    );
    let by_env = cli(
        &key,
        &tokenize,
        &[("PHIVAULT_ENDPOINT", endpoints.as_str())],
    );
    for output in [by_flag, by_env] {
        assert!(output.status.success(), "{}", stderr(&output));
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), token);
    }

    // None answers: the error names every endpoint tried, with why, and
    // never the key.
    let other = format!("http://{}", free_addr());
    let nowhere = format!("{dead},{other}");
    let error = Client::connect(ClientOptions::new(&nowhere).api_key(&key))
        .await
        .err()
        .expect("nothing answers");
    let ClientError::Unreachable(failures) = &error else {
        panic!("expected Unreachable, got {error}");
    };
    let tried: Vec<&str> = failures.iter().map(|f| f.endpoint.as_str()).collect();
    assert_eq!(tried, [dead.as_str(), other.as_str()]);
    let output = cli(&key, &["--endpoint", &nowhere, "health"], &[]);
    let said = stderr(&output);
    // 4: worth retrying, unlike a refusal.
    assert_eq!(output.status.code(), Some(4), "{said}");
    assert!(
        said.contains("cannot connect to any of the 2 endpoints")
            && said.contains(&dead)
            && said.contains(&other),
        "{said}"
    );
    assert!(!said.contains(&key), "{said}");

    // Every endpoint passes the checks one does, before anything is sent:
    // a plaintext one off loopback refuses the whole list, naming it.
    let refused = cli(
        &key,
        &[
            "--endpoint",
            &format!("{},http://10.1.2.3:1", server.endpoint()),
            "health",
        ],
        &[],
    );
    let said = stderr(&refused);
    assert_eq!(refused.status.code(), Some(1), "{said}");
    assert!(said.contains("refusing plaintext to 10.1.2.3"), "{said}");
    let empty = cli(
        &key,
        &["--endpoint", &format!("{},", server.endpoint()), "health"],
        &[],
    );
    let said = stderr(&empty);
    assert_eq!(empty.status.code(), Some(1), "{said}");
    assert!(said.contains("endpoint 2 is empty"), "{said}");
    drop((admin, pipeline));
    server.stop();
}

/// Distinct MRN-shaped values.
fn mrns(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("MRN{i:08}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_move_on_when_the_node_in_use_stops_and_back_when_it_returns() {
    let vault = VaultDir::init();
    let first = Server::start(&vault, &[]);
    let first_addr = first.addr.to_string();
    let second_addr = free_addr().to_string();
    let first_endpoint = first.endpoint();
    let second_endpoint = format!("http://{second_addr}");
    let endpoints = format!("{first_endpoint},{second_endpoint}");

    let admin = connect_to(&endpoints, &vault.admin_key).await;
    let (_, key) = client_with(&admin, &first, "pipeline", &["tokenize:*", "detokenize:*"]).await;
    let pipeline = connect_to(&endpoints, &key).await;
    let values = mrns(500);
    let tokens = texts(
        pipeline
            .tokenize("mrn", values.clone())
            .await
            .expect("tokenize"),
    );
    assert_eq!(pipeline.endpoint(), first_endpoint);

    // The node in use stops cleanly; the vault answers at the second
    // address. The calls go there, and the tokens are the same.
    first.stop();
    let second = Server::start(&vault, &["--listen", &second_addr]);
    let again = texts(
        pipeline
            .tokenize("mrn", values.clone())
            .await
            .expect("tokenize on the next node"),
    );
    assert_eq!(again, tokens, "a value keeps its token on another node");
    assert_eq!(pipeline.endpoint(), second_endpoint);
    let back = texts(
        pipeline
            .detokenize("mrn", tokens.clone(), false)
            .await
            .expect("detokenize on the next node"),
    );
    assert_eq!(back, values);
    let clients = admin.list_clients().await.expect("list on the next node");
    assert!(clients.iter().any(|c| c.name == "pipeline"));
    assert_eq!(admin.endpoint(), second_endpoint);

    // That node crashes; the vault answers at the first address again. The
    // client goes round its list back to it.
    second.kill();
    let first = Server::start(&vault, &["--listen", &first_addr]);
    let again = texts(
        pipeline
            .tokenize("mrn", values.clone())
            .await
            .expect("tokenize back on the first node"),
    );
    assert_eq!(again, tokens);
    assert_eq!(pipeline.endpoint(), first_endpoint);
    let status = admin.key_status().await.expect("key status");
    assert_eq!(status.active_version, 1);
    // A call that creates goes to the node that answers now: the client
    // moved on before it was sent.
    let made = admin
        .create_client("after-failover", vec!["tokenize:mrn".to_owned()])
        .await
        .expect("create client on the node in use");
    let later = connect(&first, Some(&made.api_key)).await;
    assert_eq!(
        texts(
            later
                .tokenize("mrn", values[..10].to_vec())
                .await
                .expect("tokenize")
        ),
        tokens[..10]
    );
    drop((admin, pipeline, later));
    first.stop();
}

/// A deterministic generator (SplitMix64), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    }
}

/// A CSV extract of `rows` rows: three columns to tokenize (values repeat,
/// as in real extracts) and a free-text column that passes through, wide
/// enough that the output grows by its 1 MiB buffer every few thousand
/// rows.
fn extract(rows: usize) -> String {
    let mut rng = Rng(0xfa11_0ae2);
    let mut out = String::from("id,ssn,e-mail,phone,notes\r\n");
    for i in 0..rows {
        let ssn = format!(
            "{:03}-{:02}-{:04}",
            1 + rng.below(665),
            1 + rng.below(99),
            1 + rng.below(9999)
        );
        let email = format!("p{}@example.org", rng.below(rows as u64));
        let phone = format!(
            "+1 ({:03}) {:03}-{:04}",
            200 + rng.below(800),
            rng.below(1000),
            rng.below(10_000)
        );
        let notes = "seen in clinic; follow up in six weeks ".repeat(3);
        out.push_str(&format!("{i},{ssn},{email},{phone},{notes}\r\n"));
    }
    out
}

const MAPS: &[&str] = &[
    "--map",
    "ssn=ssn",
    "--map",
    "e-mail=email",
    "--map",
    "phone=phone",
];

/// A bulk run's files in a scratch folder, and the extract it tokenizes.
struct BulkFiles {
    dir: tempfile::TempDir,
    original: String,
}

impl BulkFiles {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let original = extract(60_000);
        std::fs::write(dir.path().join("in.csv"), &original).expect("write input");
        Self { dir, original }
    }

    fn path(&self, name: &str) -> String {
        self.dir
            .path()
            .join(name)
            .to_str()
            .expect("utf-8 path")
            .to_owned()
    }

    /// `phivault-client --endpoint ENDPOINTS bulk tokenize`, under way.
    fn start_tokenizing(&self, endpoints: &str, key: &str) -> Child {
        Command::new(phivault_tests::binary("phivault-client"))
            .args(["--endpoint", endpoints, "bulk", "tokenize"])
            .args([
                self.path("in.csv"),
                "-o".to_owned(),
                self.path("in.tok.csv"),
            ])
            .args(MAPS)
            // Small chunks, so that the nodes stop early in the run however
            // fast the machine is.
            .args([
                "--batch-size",
                "200",
                "--in-flight",
                "2",
                "--retry-for",
                "60s",
            ])
            .env("PHIVAULT_API_KEY", key)
            .env_remove("PHIVAULT_ENDPOINT")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the bulk run")
    }

    /// The output while the run goes.
    fn partial(&self) -> PathBuf {
        self.dir.path().join("in.tok.csv.partial")
    }

    /// Waits for the run to end, checks that it succeeded after at least
    /// `reconnects` reconnections, reveals its output through `endpoints`
    /// and compares that with the input, byte for byte.
    fn finish(&self, run: Child, reconnects: u32, endpoints: &str, key: &str) {
        let output = run.wait_with_output().expect("wait for the run");
        let said = stderr(&output);
        assert!(output.status.success(), "{said}");
        let made: u32 = said
            .split("reconnected ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(made >= reconnects, "one reconnection per stop: {said}");
        let (tokenized, back) = (self.path("in.tok.csv"), self.path("in.back.csv"));
        let args = [
            &["--endpoint", endpoints, "bulk", "detokenize"][..],
            &[tokenized.as_str(), "-o", back.as_str()][..],
            MAPS,
        ]
        .concat();
        let detokenized = cli(key, &args, &[]);
        assert!(detokenized.status.success(), "{}", stderr(&detokenized));
        assert!(
            std::fs::read(&back).expect("read back") == self.original.as_bytes(),
            "every row exactly once, in order, across the nodes"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_run_resumes_on_the_next_node_with_every_row_exactly_once() {
    let vault = VaultDir::init();
    let first = Server::start(&vault, &[]);
    let admin = connect(&first, Some(&vault.admin_key)).await;
    let (_, key) = client_with(&admin, &first, "etl", &["tokenize:*", "detokenize:*"]).await;
    drop(admin);
    let first_addr = first.addr.to_string();
    let second_addr = free_addr().to_string();
    let endpoints = format!("{},http://{second_addr}", first.endpoint());
    let files = BulkFiles::new();
    let mut run = files.start_tokenizing(&endpoints, &key);

    // The node in use stops cleanly (it ends the stream after the messages
    // it took); the vault comes up at the second address, where nothing
    // listened before: the run can only go on by moving there.
    let size = wait_for_growth(&files.partial(), 0, &mut run);
    first.stop();
    let second = Server::start(
        &vault,
        &["--listen", &second_addr, "--metrics-listen", "127.0.0.1:0"],
    );
    super::wait_for_stream(&second, &mut run);
    // Then that node crashes under the stream, and the vault comes up at the
    // first address again: the run goes round its list back to it.
    wait_for_growth(&files.partial(), size, &mut run);
    second.kill();
    let first = Server::start(&vault, &["--listen", &first_addr]);

    files.finish(run, 2, &endpoints, &key);
    first.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_nodes_serving_a_dead_one_is_passed_over_mid_run() {
    if !on_postgres() {
        eprintln!(
            "with_two_nodes_serving_a_dead_one_is_passed_over_mid_run: two nodes at once need the shared database; runs in the PostgreSQL pass"
        );
        return;
    }
    let vault = VaultDir::init();
    let a = Server::start(&vault, &[]);
    let b = Server::start(&vault, &["--metrics-listen", "127.0.0.1:0"]);
    let a_endpoint = a.endpoint();
    let endpoints = format!("{a_endpoint},{}", b.endpoint());
    let admin = connect(&a, Some(&vault.admin_key)).await;
    let (_, key) = client_with(&admin, &a, "etl", &["tokenize:*", "detokenize:*"]).await;
    drop(admin);
    let pipeline = connect_to(&endpoints, &key).await;
    let values = mrns(500);
    let tokens = texts(
        pipeline
            .tokenize("mrn", values.clone())
            .await
            .expect("tokenize on A"),
    );
    assert_eq!(pipeline.endpoint(), a_endpoint);

    // A bulk run on node A; A is killed under it; B, serving all along,
    // takes the run's stream and every batch A left unanswered.
    let files = BulkFiles::new();
    let mut run = files.start_tokenizing(&endpoints, &key);
    wait_for_growth(&files.partial(), 0, &mut run);
    a.kill();
    super::wait_for_stream(&b, &mut run);
    files.finish(run, 1, &endpoints, &key);

    // A call moves to B too, and the values keep their tokens.
    let again = texts(
        pipeline
            .tokenize("mrn", values.clone())
            .await
            .expect("tokenize on B"),
    );
    assert_eq!(again, tokens);
    assert_eq!(pipeline.endpoint(), b.endpoint());
    drop(pipeline);
    b.stop();
}

/// What a caller saw while the database failed over: the values it was told
/// were stored, with their tokens, and the longest time between two of its
/// calls that succeeded.
struct Seen {
    acknowledged: Vec<(String, String)>,
    longest_gap: Duration,
}

/// Tokenizes a new value and reveals it again, over and over, through every
/// node, until `stop`; counts successes in `progress`.
async fn keep_calling(
    client: Client,
    caller: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    progress: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> Seen {
    use std::sync::atomic::Ordering;
    let mut seen = Seen {
        acknowledged: Vec::new(),
        longest_gap: Duration::ZERO,
    };
    let mut last_ok = Instant::now();
    for n in 0.. {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let value = format!("HA-{caller}-{n:06}");
        let Ok(mut answer) = client.tokenize("mrn", vec![value.clone()]).await else {
            continue;
        };
        let Ok(token) = answer.remove(0) else {
            continue;
        };
        seen.acknowledged.push((value.clone(), token.clone()));
        if let Ok(shown) = client.detokenize("mrn", vec![token], false).await {
            assert_eq!(texts(shown), vec![value], "a reveal gives the value back");
            seen.longest_gap = seen.longest_gap.max(last_ok.elapsed());
            last_ok = Instant::now();
            progress.fetch_add(1, Ordering::AcqRel);
        }
    }
    seen
}

/// DESIGN.md §9's failover, for real: Patroni and etcd run three
/// PostgreSQL members in synchronous mode under two vault nodes; with a
/// bulk run and callers in flight, the PostgreSQL leader is killed. Patroni
/// promotes the synchronous standby, the nodes find it through their
/// multi-host connection string, the run finishes with every row exactly
/// once and every token the callers were given reveals its value
/// afterwards. Then a vault node is killed under another run, which
/// finishes on the other node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_leader_dies_and_nothing_acknowledged_is_lost() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    if !on_postgres() {
        eprintln!(
            "the_database_leader_dies_and_nothing_acknowledged_is_lost: runs in the PostgreSQL pass"
        );
        return;
    }
    let began = Instant::now();
    let mut cluster = phivault_tests::patroni::Cluster::start(3)
        .unwrap_or_else(|why| panic!("{why}: `make test` installs patroni and etcd-server"));
    cluster.create_database("vault");
    let vault = VaultDir::init_store(cluster.connection_string("vault"));
    let a = Server::start(&vault, &[]);
    let b = Server::start(&vault, &["--metrics-listen", "127.0.0.1:0"]);
    let endpoints = format!("{},{}", a.endpoint(), b.endpoint());
    let admin = connect(&a, Some(&vault.admin_key)).await;
    let (_, key) = client_with(&admin, &a, "etl", &["tokenize:*", "detokenize:*"]).await;
    drop(admin);

    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicUsize::new(0));
    let mut callers = Vec::new();
    for caller in 0..4 {
        // Half the callers list the nodes the other way round.
        let list = if caller % 2 == 0 {
            endpoints.clone()
        } else {
            format!("{},{}", b.endpoint(), a.endpoint())
        };
        let client = connect_to(&list, &key).await;
        callers.push(tokio::spawn(keep_calling(
            client,
            caller,
            Arc::clone(&stop),
            Arc::clone(&progress),
        )));
    }
    let files = BulkFiles::new();
    let mut run = files.start_tokenizing(&endpoints, &key);
    wait_for_growth(&files.partial(), 0, &mut run);
    while progress.load(Ordering::Acquire) < 40 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let leader = cluster.leader().expect("a leader");
    cluster.kill(leader);
    let before = progress.load(Ordering::Acquire);
    let killed = Instant::now();
    files.finish(run, 0, &endpoints, &key);
    // Service is back once every caller has succeeded again.
    while progress.load(Ordering::Acquire) < before + 40 {
        assert!(
            killed.elapsed() < Duration::from_secs(90),
            "calls did not resume after the failover"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let new_leader = cluster.leader().expect("a new leader");
    assert_ne!(new_leader, leader, "Patroni promoted another member");
    stop.store(true, Ordering::Release);
    let mut acknowledged = Vec::new();
    let mut longest_gap = Duration::ZERO;
    for caller in callers {
        let seen = caller.await.expect("caller");
        acknowledged.extend(seen.acknowledged);
        longest_gap = longest_gap.max(seen.longest_gap);
    }
    eprintln!(
        "time without service after SIGKILL of the PostgreSQL leader: {:.1} s (longest gap between a caller's successful calls); {} values acknowledged",
        longest_gap.as_secs_f64(),
        acknowledged.len()
    );
    assert!(longest_gap < Duration::from_secs(60), "{longest_gap:?}");

    // Nothing acknowledged was lost: every token reveals its value.
    let reader = connect_to(&endpoints, &key).await;
    for chunk in acknowledged.chunks(1000) {
        let tokens: Vec<String> = chunk.iter().map(|(_, t)| t.clone()).collect();
        let values: Vec<String> = chunk.iter().map(|(v, _)| v.clone()).collect();
        let shown = reader
            .detokenize("mrn", tokens, false)
            .await
            .expect("every acknowledged token reveals");
        assert_eq!(texts(shown), values, "every acknowledged token, its value");
    }
    drop(reader);

    // A vault node dies under a bulk run: the run finishes on the other.
    let again = BulkFiles::new();
    let mut run = again.start_tokenizing(&endpoints, &key);
    wait_for_growth(&again.partial(), 0, &mut run);
    a.kill();
    super::wait_for_stream(&b, &mut run);
    again.finish(run, 1, &b.endpoint(), &key);
    b.stop();
    assert!(
        began.elapsed() < Duration::from_secs(180),
        "the failover test is bounded to 3 minutes: {:?}",
        began.elapsed()
    );
}
