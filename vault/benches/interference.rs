//! Whether work that a vault must refuse slows the reveals it serves: one
//! caller's sequential unary `Detokenize` latency while a load runs in
//! one-second bursts with a quiet second between them, p99 during the
//! bursts against p99 in the quiet, measured in the same run. Whatever else
//! loads the machine weighs on both phases alike, so the ratio is the
//! load's own effect. The loads:
//!
//! * an unauthenticated flood: 2,000 calls per burst with an unknown API key
//!   and a 60 KiB namespace name, 16 in flight, from 4 connections;
//! * searches of a full random namespace: every tokenize of a new value
//!   searches its whole budget of candidates and is refused.
//!
//! The end-to-end tests check that reveals go on during both; this measures
//! how much they slow down. Target: at most 3x.
//!
//! `make bench` (or `cargo bench -p phivault --bench interference`).
//! `PHIVAULT_BENCH_BURSTS` sets the number of bursts per load (default 10).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream};
use phivault_client::{Client, ClientOptions};
use phivault_proto::v1 as pb;

mod support;
use support::ServeProcess;

const FLOOD_PER_BURST: usize = 2_000;
const FLOOD_IN_FLIGHT: usize = 16;
/// A key of the right shape that no client holds.
const UNKNOWN_KEY: &str =
    "pv_0123456789abcdef_00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// Reveal latencies sorted by phase: calls made wholly in a quiet phase
/// and calls made wholly during a burst. Calls that straddle a switch are
/// left out.
#[derive(Default)]
struct Phases {
    quiet: Vec<Duration>,
    loud: Vec<Duration>,
}

fn p99(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 - 1.0) * 0.99).round() as usize]
}

/// Reveals `token` in a loop while `load` runs `bursts` bursts of about a
/// second each, a quiet second before each.
async fn measure<F, Fut>(client: &Client, token: &str, bursts: usize, load: F) -> Phases
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let loud = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let driver = {
        let (loud, done) = (Arc::clone(&loud), Arc::clone(&done));
        tokio::spawn(async move {
            for _ in 0..bursts {
                tokio::time::sleep(Duration::from_secs(1)).await;
                loud.store(true, Ordering::Release);
                load().await;
                loud.store(false, Ordering::Release);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            done.store(true, Ordering::Release);
        })
    };
    let mut phases = Phases::default();
    while !done.load(Ordering::Acquire) {
        let before = loud.load(Ordering::Acquire);
        let started = Instant::now();
        let revealed = client
            .detokenize("ssn", vec![token.to_owned()], false)
            .await
            .expect("a legitimate reveal is served");
        let latency = started.elapsed();
        assert!(revealed[0].is_ok());
        match (before, loud.load(Ordering::Acquire)) {
            (false, false) => phases.quiet.push(latency),
            (true, true) => phases.loud.push(latency),
            _ => {}
        }
    }
    driver.await.expect("load driver");
    phases
}

/// A client holding `scopes` on `vault`.
async fn client(admin: &Client, vault: &ServeProcess, name: &str, scopes: &[&str]) -> Client {
    let key = admin
        .create_client(name, scopes.iter().map(|s| s.to_string()).collect())
        .await
        .expect("create client")
        .api_key;
    Client::connect(ClientOptions::new(vault.endpoint()).api_key(key))
        .await
        .expect("connect")
}

/// One burst of the unauthenticated flood, paced over a second.
async fn flood(attackers: Arc<Vec<Client>>, namespace: Arc<String>) {
    let start = tokio::time::Instant::now();
    stream::iter(0..FLOOD_PER_BURST)
        .map(|i| {
            let client = attackers[i % attackers.len()].clone();
            let namespace = Arc::clone(&namespace);
            let at = start + Duration::from_secs(1) * i as u32 / FLOOD_PER_BURST as u32;
            async move {
                tokio::time::sleep_until(at).await;
                let refused = client
                    .detokenize(&namespace, vec!["000-00-0000".into()], false)
                    .await;
                assert!(refused.is_err(), "a flood call is never served");
            }
        })
        .buffer_unordered(FLOOD_IN_FLIGHT)
        .collect::<()>()
        .await;
}

/// One second of tokenize calls against a full namespace, each refused.
async fn searches(filler: Client) {
    let burst = Instant::now();
    while burst.elapsed() < Duration::from_secs(1) {
        let results = filler
            .tokenize("tiny", vec!["Z0000".into(); 4])
            .await
            .expect("tokenize");
        assert!(results.iter().all(Result::is_err), "the namespace is full");
    }
}

/// Creates a random namespace of 10,000 tokens (`Z` + 4 digits kept as
/// their shape) and tokenizes one value into it until it is full.
async fn fill(filler: &Client) {
    let mut refused = 0;
    while refused < 1000 {
        refused = filler
            .tokenize("tiny", vec!["Z0000".into(); 1000])
            .await
            .expect("tokenize")
            .iter()
            .filter(|r| r.is_err())
            .count();
    }
}

fn main() {
    let bursts: usize = std::env::var("PHIVAULT_BENCH_BURSTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        // The searches' refusals are logged as warnings, one per call.
        let vault = ServeProcess::start(&[("PHIVAULT_LOG", "error")]);
        let endpoint = vault.endpoint();
        let admin = Client::connect(ClientOptions::new(&endpoint).api_key(&vault.admin_key))
            .await
            .expect("admin");
        admin
            .create_namespace(pb::CreateNamespaceRequest {
                name: "tiny".into(),
                format: "alnum".into(),
                options: Some(pb::FormatOptions {
                    keep_prefix: Some(1),
                    ..Default::default()
                }),
                random: true,
            })
            .await
            .expect("create namespace");
        let billing = client(
            &admin,
            &vault,
            "billing",
            &["tokenize:ssn", "detokenize:ssn"],
        )
        .await;
        let filler = client(&admin, &vault, "filler", &["tokenize:tiny"]).await;
        let token = billing
            .tokenize("ssn", vec!["123-45-6789".into()])
            .await
            .expect("tokenize")[0]
            .clone()
            .expect("token");
        fill(&filler).await;
        let mut attackers = Vec::new();
        for _ in 0..4 {
            attackers.push(
                Client::connect(ClientOptions::new(&endpoint).api_key(UNKNOWN_KEY))
                    .await
                    .expect("connect"),
            );
        }
        let attackers = Arc::new(attackers);
        let namespace = Arc::new("n".repeat(60 << 10));

        println!("Reveal latency under loads the vault refuses: {bursts} one-second bursts each");
        let mut rows = Vec::new();
        let flooded = measure(&billing, &token, bursts, move || {
            flood(Arc::clone(&attackers), Arc::clone(&namespace))
        })
        .await;
        rows.push(("an unauthenticated flood", flooded));
        let searched = measure(&billing, &token, bursts, move || searches(filler.clone())).await;
        rows.push(("searches of a full namespace", searched));

        println!();
        println!("| load | reveals quiet | reveals during | p99 quiet | p99 during | ratio |");
        println!("|---|---:|---:|---:|---:|---:|");
        for (load, mut phases) in rows {
            let (quiet, loud) = (p99(&mut phases.quiet), p99(&mut phases.loud));
            println!(
                "| {load} | {} | {} | {quiet:.2?} | {loud:.2?} | {:.2} (target at most 3) |",
                phases.quiet.len(),
                phases.loud.len(),
                loud.as_secs_f64() / quiet.as_secs_f64()
            );
        }
    });
}
