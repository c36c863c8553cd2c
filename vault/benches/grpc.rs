//! gRPC throughput, client and server on this machine, against a bare tonic
//! service with the same messages measured in the same run:
//!
//! * unary `Detokenize` of one item at 32 concurrent callers: requests/s,
//!   p50 and p99 — against an echo `Tokenizer` whose `Detokenize` returns its
//!   tokens unchanged, so the ratio shows what the vault adds to plain gRPC;
//! * the same unary `Detokenize` against a second vault whose audit records
//!   are skipped by a bench-only switch (`PHIVAULT_BENCH_SKIP_AUDIT`, compiled
//!   in only with the `bench-switches` feature), so the ratio shows what the
//!   audit trail costs: a durable, hash-chained record per call before its
//!   answer leaves. The two alternate, twice each, to even out a noisy
//!   machine;
//! * where the audited vault's cost goes, at 32 callers: the same calls
//!   against two more audited vaults, one that does not sync its commits
//!   (`--durability os`) and one that does not sync but whose writer waits
//!   after each commit as long as the as-built vault's commits took
//!   (`PHIVAULT_BENCH_SYNC_WAIT_US`, bench-only): requests/s and the CPU
//!   each call cost the server, the bench's client and the rest of the
//!   machine;
//! * the same unary `Detokenize` against a vault with reveal-anomaly
//!   detection turned off (`--detection-window-secs 0`), so the ratio shows
//!   what watching every call costs (target: at most 5%);
//! * `TokenizeStream` of repeated values: fields/s;
//! * unary detokenize of one token at 32 callers over the HTTP/JSON API
//!   against the same over gRPC, on the same vault, alternating twice: each
//!   HTTP caller keeps its own HTTP/1.1 connection (a connection pool's
//!   way), the gRPC callers share one HTTP/2 connection (the client's way).
//!
//! * unary `Detokenize` sent at a fixed rate (`OPEN_LOOP_RATE`, below
//!   saturation) whatever the answers do, audited against skipped: p50,
//!   p99, p99.9 and the largest, each call timed from when it was due; and
//!   what the audited vault's writer did meanwhile (its commit-duration
//!   histogram from the metrics, RocksDB's flushes, compactions, log files
//!   and stalls from its LOG).
//!
//! `make bench` (or `cargo bench -p phivault --features bench-switches
//! --bench grpc`).
//! `PHIVAULT_BENCH_SECONDS` sets each measurement's length (default 10).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream};
use phivault_client::{Client, ClientOptions};
use phivault_proto::v1 as pb;
use phivault_proto::v1::tokenizer_server::{Tokenizer, TokenizerServer};
use tonic::{Request, Response, Status, Streaming};

mod support;
use support::{
    Commits, Cpu, ServeProcess, commit_histogram, commits_between, commits_so_far,
    open_loop_detokenize, rocksdb_log_summary, tail,
};

/// Concurrent unary callers: a typical service's connection pool.
const CALLERS: usize = 32;
/// Enough callers to keep the audited vault busy: with a durable record per
/// call, each caller waits out a group commit's fsync, so 32 callers leave
/// the server idle between commits and measure latency, not throughput.
const SATURATING_CALLERS: usize = 128;
const STREAM_BATCH: usize = 1000;
/// Calls a second of the open-loop measurement: well below what either
/// vault answers at 32 callers, as a service's steady load would be.
const OPEN_LOOP_RATE: f64 = 5000.0;

/// The bare service: same messages, no vault behind them.
struct Echo;

#[tonic::async_trait]
impl Tokenizer for Echo {
    async fn tokenize(
        &self,
        r: Request<pb::TokenizeRequest>,
    ) -> Result<Response<pb::TokenizeResponse>, Status> {
        Ok(Response::new(pb::TokenizeResponse {
            results: echo(r.into_inner().values),
        }))
    }

    async fn detokenize(
        &self,
        r: Request<pb::DetokenizeRequest>,
    ) -> Result<Response<pb::DetokenizeResponse>, Status> {
        Ok(Response::new(pb::DetokenizeResponse {
            results: echo(r.into_inner().tokens),
        }))
    }

    async fn get_server_info(
        &self,
        _: Request<pb::GetServerInfoRequest>,
    ) -> Result<Response<pb::GetServerInfoResponse>, Status> {
        Ok(Response::new(pb::GetServerInfoResponse::default()))
    }

    type TokenizeStreamStream =
        futures_util::stream::BoxStream<'static, Result<pb::TokenizeResponse, Status>>;

    async fn tokenize_stream(
        &self,
        r: Request<Streaming<pb::TokenizeRequest>>,
    ) -> Result<Response<Self::TokenizeStreamStream>, Status> {
        Ok(Response::new(
            r.into_inner()
                .map(|m| {
                    m.map(|m| pb::TokenizeResponse {
                        results: echo(m.values),
                    })
                })
                .boxed(),
        ))
    }

    type DetokenizeStreamStream =
        futures_util::stream::BoxStream<'static, Result<pb::DetokenizeResponse, Status>>;

    async fn detokenize_stream(
        &self,
        r: Request<Streaming<pb::DetokenizeRequest>>,
    ) -> Result<Response<Self::DetokenizeStreamStream>, Status> {
        Ok(Response::new(
            r.into_inner()
                .map(|m| {
                    m.map(|m| pb::DetokenizeResponse {
                        results: echo(m.tokens),
                    })
                })
                .boxed(),
        ))
    }
}

fn echo(items: Vec<String>) -> Vec<pb::ItemResult> {
    items
        .into_iter()
        .map(|t| pb::ItemResult {
            outcome: Some(pb::item_result::Outcome::Text(t)),
        })
        .collect()
}

#[derive(Clone)]
struct Latency {
    /// Calls answered (summed over runs by `mean`).
    calls: usize,
    rate: f64,
    p50: Duration,
    p99: Duration,
}

impl Latency {
    /// What the callers' `tasks`, started at `started`, measured: each
    /// answers the latency of every call it made.
    async fn of(tasks: Vec<tokio::task::JoinHandle<Vec<Duration>>>, started: Instant) -> Latency {
        let mut samples = Vec::new();
        for task in tasks {
            samples.extend(task.await.expect("caller"));
        }
        let elapsed = started.elapsed().as_secs_f64();
        samples.sort();
        let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
        Latency {
            calls: samples.len(),
            rate: samples.len() as f64 / elapsed,
            p50: at(0.50),
            p99: at(0.99),
        }
    }

    /// The mean of several runs of the same measurement.
    fn mean(runs: &[Latency]) -> Latency {
        let n = runs.len() as f64;
        let mean = |f: fn(&Latency) -> Duration| runs.iter().map(f).sum::<Duration>().div_f64(n);
        Latency {
            calls: runs.iter().map(|r| r.calls).sum(),
            rate: runs.iter().map(|r| r.rate).sum::<f64>() / n,
            p50: mean(|r| r.p50),
            p99: mean(|r| r.p99),
        }
    }
}

/// `callers` tasks calling `Detokenize` with one token for `seconds`.
async fn unary_detokenize(client: Client, token: String, callers: usize, seconds: f64) -> Latency {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (client, token) = (client.clone(), token.clone());
            tokio::spawn(async move {
                let mut samples = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let results = client
                        .detokenize("ssn", vec![token.clone()], false)
                        .await
                        .expect("detokenize");
                    assert!(results[0].is_ok());
                    samples.push(t.elapsed());
                }
                samples
            })
        })
        .collect();
    Latency::of(tasks, started).await
}

/// `callers` tasks, each on its own keep-alive HTTP/1.1 connection to
/// `addr`, revealing one token through the HTTP/JSON API for `seconds`.
async fn http_detokenize(
    addr: SocketAddr,
    key: &str,
    token: &str,
    callers: usize,
    seconds: f64,
) -> Latency {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let body = Bytes::from(format!(r#"{{"tokens": ["{token}"]}}"#));
    let authorization = format!("Bearer {key}");
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (body, authorization) = (body.clone(), authorization.clone());
            tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
                stream.set_nodelay(true).expect("nodelay");
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await
                        .expect("HTTP/1.1 handshake");
                tokio::spawn(connection);
                let mut samples = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let request = hyper::Request::post("/v1/namespaces/ssn/detokenize")
                        .header("host", addr.to_string())
                        .header("authorization", &authorization)
                        .header("content-type", "application/json")
                        .body(Full::new(body.clone()))
                        .expect("request");
                    let response = sender.send_request(request).await.expect("an answer");
                    let status = response.status();
                    let answer = response
                        .into_body()
                        .collect()
                        .await
                        .expect("a body")
                        .to_bytes();
                    assert!(status.is_success(), "{status}");
                    assert!(
                        answer.starts_with(br#"{"results":[{"text":"#),
                        "an item error"
                    );
                    samples.push(t.elapsed());
                }
                samples
            })
        })
        .collect();
    Latency::of(tasks, started).await
}

/// `TokenizeStream` of repeated values for `seconds`: fields/s.
async fn stream_tokenize(client: Client, values: Arc<Vec<String>>, seconds: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let batches = stream::iter(0..)
        .take_while(move |_| std::future::ready(Instant::now() < deadline))
        .map(move |_| values.as_ref().clone());
    let started = Instant::now();
    let mut responses = client
        .tokenize_stream("ssn", batches, 16)
        .await
        .expect("stream");
    let mut fields = 0usize;
    while let Some(response) = responses.next().await {
        fields += response.expect("batch").len();
    }
    fields as f64 / started.elapsed().as_secs_f64()
}

/// Starts the echo server on its own threads and runtime, as the vault has
/// its own process, so that neither server shares a scheduler with the
/// benchmark's callers.
fn start_echo() -> SocketAddr {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            sender
                .send(listener.local_addr().expect("addr"))
                .expect("report the address");
            tonic::transport::Server::builder()
                .add_service(TokenizerServer::new(Echo))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
                .expect("echo server");
        });
    });
    receiver.recv().expect("echo server address")
}

fn main() {
    let seconds: f64 = std::env::var("PHIVAULT_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10.0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let echo_addr = start_echo();
        let echo = Client::connect(ClientOptions::new(format!("http://{echo_addr}"))).await.expect("echo");

        let vault = ServeProcess::start(&[
            ("PHIVAULT_HTTP_LISTEN", "127.0.0.1:0"),
            ("PHIVAULT_METRICS_LISTEN", "127.0.0.1:0"),
        ]);
        let (client, key) = bench_client(&vault).await;
        let unaudited_vault = ServeProcess::start(&[("PHIVAULT_BENCH_SKIP_AUDIT", "1")]);
        let (unaudited, _) = bench_client(&unaudited_vault).await;
        // Audited as well, with RocksDB's own default for the log's bound:
        // what the store's setting changes, in the same run.
        let defaults_vault = ServeProcess::start(&[
            ("PHIVAULT_BENCH_ROCKSDB_DEFAULTS", "1"),
            ("PHIVAULT_METRICS_LISTEN", "127.0.0.1:0"),
        ]);
        let (defaults, _) = bench_client(&defaults_vault).await;
        let unwatched_vault = ServeProcess::start(&[("PHIVAULT_DETECTION_WINDOW_SECS", "0")]);
        let (unwatched, _) = bench_client(&unwatched_vault).await;
        if !cfg!(feature = "bench-switches") {
            eprintln!("built without the bench-switches feature: every vault writes audit records with the same options (run `make bench`)");
        }
        let values: Arc<Vec<String>> = Arc::new((0..STREAM_BATCH).map(|i| format!("{:09}", 100_000_000 + i)).collect());
        let tokens = client.tokenize("ssn", values.as_ref().clone()).await.expect("warm-up");
        let token = tokens[0].clone().expect("token");
        let unaudited_token = unaudited.tokenize("ssn", vec![values[0].clone()]).await.expect("warm-up")[0].clone().expect("token");
        let defaults_token = defaults.tokenize("ssn", vec![values[0].clone()]).await.expect("warm-up")[0].clone().expect("token");

        println!("gRPC benchmark: {CALLERS} and {SATURATING_CALLERS} concurrent unary callers, stream batches of {STREAM_BATCH}, {OPEN_LOOP_RATE} calls/s open loop, {seconds} s each");
        let bare = unary_detokenize(echo.clone(), token.clone(), CALLERS, seconds).await;
        // Skipped, audited as built, audited on RocksDB's defaults.
        let compared = [(&unaudited, &unaudited_token), (&client, &token), (&defaults, &defaults_token)];
        // A vault that has served for a while has flushed its memtables and
        // rolled its write-ahead log over, as built up to the log's bound:
        // records until it has, the same number in each audited vault,
        // before anything is measured.
        let data = vault.data_dir().expect("a vault of its own");
        let mut warm_up = 0;
        while !std::fs::read_to_string(data.join("LOG")).unwrap_or_default().contains("while max_total_wal_size is") {
            assert!(warm_up < 24, "the write-ahead log did not reach its bound after {warm_up} rounds of records");
            for (target, token) in &compared[1..] {
                unary_detokenize((*target).clone(), (*token).clone(), SATURATING_CALLERS, 5.0).await;
            }
            warm_up += 1;
        }
        println!("warm-up: {warm_up} rounds of 5 s at {SATURATING_CALLERS} callers in each audited vault, until the write-ahead log reached its bound");
        let mut audit_rows = Vec::new();
        let built_metrics = vault.metrics_addr.expect("the metrics listener");
        for callers in [CALLERS, SATURATING_CALLERS] {
            let mut runs: [Vec<Latency>; 3] = Default::default();
            let mut group = Commits::default();
            for _ in 0..2 {
                for (i, ((target, token), runs)) in compared.iter().zip(&mut runs).enumerate() {
                    let before = commits_so_far(built_metrics);
                    runs.push(unary_detokenize((*target).clone(), (*token).clone(), callers, seconds).await);
                    if i == 1 {
                        group = group + (commits_so_far(built_metrics) - before);
                    }
                }
            }
            audit_rows.push((callers, runs.map(|r| Latency::mean(&r)), group));
        }
        // Where the audited vault's cost at 32 callers goes: the same record
        // path without its sync (`--durability os`), then without its sync
        // but with the writer waiting after each commit as long as the
        // as-built vault's commits took on average — a sync's wait without
        // its work.
        let synced = audit_rows[0].2;
        let sync_wait = format!("{:.0}", synced.seconds * 1e6 / synced.timed.max(1.0));
        let unsynced_vault = ServeProcess::start(&[("PHIVAULT_DURABILITY", "os")]);
        let waiting_vault = ServeProcess::start(&[("PHIVAULT_DURABILITY", "os"), ("PHIVAULT_BENCH_SYNC_WAIT_US", &sync_wait)]);
        let (unsynced, _) = bench_client(&unsynced_vault).await;
        let (waiting, _) = bench_client(&waiting_vault).await;
        let unsynced_token = unsynced.tokenize("ssn", vec![values[0].clone()]).await.expect("warm-up")[0].clone().expect("token");
        let waiting_token = waiting.tokenize("ssn", vec![values[0].clone()]).await.expect("warm-up")[0].clone().expect("token");
        let split = [
            (&unaudited, &unaudited_token, &unaudited_vault),
            (&client, &token, &vault),
            (&unsynced, &unsynced_token, &unsynced_vault),
            (&waiting, &waiting_token, &waiting_vault),
        ];
        let mut split_runs: [Vec<(Latency, [f64; 4])>; 4] = Default::default();
        for _ in 0..2 {
            for ((target, token, served), runs) in split.iter().zip(&mut split_runs) {
                let server = [served.child.id()];
                let before = Cpu::now(&server);
                let measured = unary_detokenize((*target).clone(), (*token).clone(), CALLERS, seconds).await;
                let cpu = Cpu::now(&server).per_value(before, measured.calls as f64);
                runs.push((measured, cpu));
            }
        }
        let split_rows = split_runs.map(|runs| {
            let rate = Latency::mean(&runs.iter().map(|(l, _)| l.clone()).collect::<Vec<_>>());
            let cpu: [f64; 4] = std::array::from_fn(|i| runs.iter().map(|(_, c)| c[i]).sum::<f64>() / runs.len() as f64);
            (rate, cpu)
        });
        let metrics = [&vault, &defaults_vault].map(|v| v.metrics_addr.expect("the metrics listener"));
        let commits_before = metrics.map(commit_histogram);
        let mut open_samples: [Vec<Duration>; 3] = Default::default();
        for _ in 0..2 {
            for ((target, token), samples) in compared.iter().zip(&mut open_samples) {
                let (handle, target, token) = (tokio::runtime::Handle::current(), (*target).clone(), (*token).clone());
                let (taken, failed) = tokio::task::spawn_blocking(move || {
                    open_loop_detokenize(&handle, target, token, OPEN_LOOP_RATE, seconds)
                })
                .await
                .expect("open loop");
                assert_eq!(failed, 0, "calls failed in the open loop");
                samples.extend(taken);
            }
        }
        let open_commits = [0, 1].map(|i| commits_between(&commits_before[i], &commit_histogram(metrics[i])));
        let unwatched_token = unwatched.tokenize("ssn", vec![values[0].clone()]).await.expect("warm-up")[0].clone().expect("token");
        let (mut watched_runs, mut unwatched_runs) = (Vec::new(), Vec::new());
        for _ in 0..2 {
            unwatched_runs.push(unary_detokenize(unwatched.clone(), unwatched_token.clone(), CALLERS, seconds).await);
            watched_runs.push(unary_detokenize(client.clone(), token.clone(), CALLERS, seconds).await);
        }
        let (watched, unwatched) = (Latency::mean(&watched_runs), Latency::mean(&unwatched_runs));
        let (mut http_runs, mut grpc_runs) = (Vec::new(), Vec::new());
        let http_addr = vault.http_addr.expect("the HTTP listener");
        let records_before = audit_head(&vault).await;
        for _ in 0..2 {
            http_runs.push(http_detokenize(http_addr, &key, &token, CALLERS, seconds).await);
            grpc_runs.push(unary_detokenize(client.clone(), token.clone(), CALLERS, seconds).await);
        }
        let (over_http, over_grpc) = (Latency::mean(&http_runs), Latency::mean(&grpc_runs));
        // Every reveal over either API left its own record.
        let recorded = audit_head(&vault).await - records_before;
        assert!(
            recorded >= (over_http.calls + over_grpc.calls) as u64,
            "{recorded} records for {} HTTP and {} gRPC reveals",
            over_http.calls,
            over_grpc.calls
        );
        let real = &audit_rows[0].1[1];
        let audit_records = audit_head(&vault).await;
        let bare_stream = stream_tokenize(echo, Arc::clone(&values), seconds).await;
        let real_stream = stream_tokenize(client, values, seconds).await;

        println!();
        println!("| measure | bare tonic echo | phivault | ratio |");
        println!("|---|---:|---:|---:|");
        println!("| unary Detokenize (1 item), requests/s | {:.0} | {:.0} | {:.2} |", bare.rate, real.rate, real.rate / bare.rate);
        println!("| unary Detokenize p50 | {:.2?} | {:.2?} | |", bare.p50, real.p50);
        println!("| unary Detokenize p99 | {:.2?} | {:.2?} | |", bare.p99, real.p99);
        println!("| TokenizeStream of repeated values, fields/s | {bare_stream:.0} | {real_stream:.0} | {:.2} |", real_stream / bare_stream);
        println!();
        println!("| unary Detokenize (1 item) | callers | audit records skipped | audited (as built) | ratio | audited, RocksDB's defaults | ratio |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for (callers, [skipped, audited, defaults], _) in &audit_rows {
            println!("| requests/s | {callers} | {:.0} | {:.0} | {:.2} | {:.0} | {:.2} |", skipped.rate, audited.rate, audited.rate / skipped.rate, defaults.rate, defaults.rate / skipped.rate);
            println!("| p50 | {callers} | {:.2?} | {:.2?} | | {:.2?} | |", skipped.p50, audited.p50, defaults.p50);
            println!("| p99 | {callers} | {:.2?} | {:.2?} | | {:.2?} | |", skipped.p99, audited.p99, defaults.p99);
        }
        println!();
        for (callers, [skipped, audited, _], group) in &audit_rows {
            println!(
                "audited throughput at {callers} callers: {:.2} of the unaudited vault's (target at least 0.60 at {CALLERS}); as built, {:.0} group commits of {:.1} calls on average, each durable in {:.0} µs on average, the writer inside a commit {:.0}% of the time",
                audited.rate / skipped.rate,
                group.commits,
                group.jobs / group.commits.max(1.0),
                group.seconds * 1e6 / group.timed.max(1.0),
                100.0 * group.seconds / (2.0 * seconds),
            );
        }
        println!();
        let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        println!("| unary Detokenize (1 item), {CALLERS} callers | requests/s | of skipped | CPU a call: server | bench client | rest of the machine | machine busy |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        let names = ["audit records skipped", "audited (as built)", "audited, not synced (`--durability os`)", &format!("audited, not synced, the writer waiting {sync_wait} µs a commit")];
        for (name, (rate, [_, server, bench, rest])) in names.iter().zip(&split_rows) {
            let busy = (server + bench + rest) * rate.rate / 1e6 / cores;
            println!("| {name} | {:.0} | {:.2} | {server:.1} µs | {bench:.1} µs | {rest:.1} µs | {:.0}% |", rate.rate, rate.rate / split_rows[0].0.rate, 100.0 * busy);
        }
        println!();
        println!("| unary Detokenize (1 item), {CALLERS} callers | detection off | detection on (as served) | ratio |");
        println!("|---|---:|---:|---:|");
        println!("| requests/s | {:.0} | {:.0} | {:.3} |", unwatched.rate, watched.rate, watched.rate / unwatched.rate);
        println!("| p50 | {:.2?} | {:.2?} | |", unwatched.p50, watched.p50);
        println!("| p99 | {:.2?} | {:.2?} | |", unwatched.p99, watched.p99);
        println!(
            "detection's cost on throughput: {:.1}% (target at most 5%)",
            100.0 * (1.0 - watched.rate / unwatched.rate)
        );
        println!();
        println!("| unary detokenize (1 item), {CALLERS} callers, same vault | gRPC | HTTP/JSON | ratio |");
        println!("|---|---:|---:|---:|");
        println!("| requests/s | {:.0} | {:.0} | {:.2} |", over_grpc.rate, over_http.rate, over_http.rate / over_grpc.rate);
        println!("| p50 | {:.2?} | {:.2?} | |", over_grpc.p50, over_http.p50);
        println!("| p99 | {:.2?} | {:.2?} | |", over_grpc.p99, over_http.p99);
        println!("{audit_records} records in the audited vault's chain, which verifies");
        println!();
        println!("| unary Detokenize (1 item), {OPEN_LOOP_RATE} calls/s open loop | calls | p50 | p99 | p99.9 | max |");
        println!("|---|---:|---:|---:|---:|---:|");
        for (name, samples) in ["audit records skipped", "audited (as built)", "audited, RocksDB's defaults"].into_iter().zip(&mut open_samples) {
            let [p50, p99, p999, max] = tail(samples);
            println!("| {name} | {} | {p50:.2?} | {p99:.2?} | {p999:.2?} | {max:.2?} |", samples.len());
        }
        println!();
        println!("commits of each audited vault during its open-loop runs, by how long each took to be durable (share of its commits):");
        println!("| at most | as built | RocksDB's defaults |");
        println!("|---:|---:|---:|");
        let totals = open_commits.each_ref().map(|c| c.iter().map(|b| b.1).sum::<u64>());
        for (i, &(le, built)) in open_commits[0].iter().enumerate() {
            let default = open_commits[1][i].1;
            if built + default == 0 {
                continue;
            }
            let bound = if le.is_finite() { format!("{:.2?}", Duration::from_secs_f64(le)) } else { "longer".into() };
            println!("| {bound} | {built} ({:.4}) | {default} ({:.4}) |", built as f64 / totals[0].max(1) as f64, default as f64 / totals[1].max(1) as f64);
        }
        println!("| commits | {} | {} |", totals[0], totals[1]);
        for (name, served) in [("as built", &vault), ("RocksDB's defaults", &defaults_vault)] {
            if let Some(data) = served.data_dir() {
                println!("the audited vault's RocksDB ({name}) over the whole run: {}", rocksdb_log_summary(&data));
            }
        }
    });
}

/// A client with `tokenize:ssn` and `detokenize:ssn` on `vault`, and its
/// API key.
async fn bench_client(vault: &ServeProcess) -> (Client, String) {
    let endpoint = vault.endpoint();
    let admin = Client::connect(ClientOptions::new(&endpoint).api_key(&vault.admin_key))
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
    let client = Client::connect(ClientOptions::new(&endpoint).api_key(&key))
        .await
        .expect("connect");
    (client, key)
}

/// The number of records in `vault`'s audit chain, as `VerifyAudit` walks it.
async fn audit_head(vault: &ServeProcess) -> u64 {
    let endpoint = vault.endpoint();
    let admin = Client::connect(ClientOptions::new(&endpoint).api_key(&vault.admin_key))
        .await
        .expect("admin");
    let report = admin.verify_audit().await.expect("verify");
    assert_eq!(report.first_bad_seq, 0, "the chain verifies after the load");
    report.records
}
