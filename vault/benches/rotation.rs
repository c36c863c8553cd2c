//! Key rotation throughput while a light tokenize load runs, and that load's
//! latency during the rotation against the same load just before it (same
//! run, same vault).
//!
//! `make bench` (or `cargo bench -p phivault --bench rotation`);
//! `PHIVAULT_BENCH_VALUES` overrides the mapping count (default 1,000,000).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use phivault::{MasterKey, RotationPhase, Vault, VaultOptions};
use zeroize::Zeroizing;

/// Values per load request: a service tokenizing one record's fields.
const LOAD_BATCH: usize = 8;
/// Interval between load requests: about 500 requests (4,000 fields) per
/// second, a light load next to what the vault serves.
const LOAD_EVERY: Duration = Duration::from_millis(2);
/// How long the load is measured before the rotation starts.
const BEFORE: Duration = Duration::from_secs(5);

fn values(n: usize) -> Arc<Vec<String>> {
    Arc::new(
        (0..n)
            .map(|i| format!("{:09}", (i as u64 * 7_919 + 13) % 1_000_000_000))
            .collect(),
    )
}

async fn load_vault(vault: &Arc<Vault>, values: &Arc<Vec<String>>) {
    let next = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let (vault, values, next) = (Arc::clone(vault), Arc::clone(values), Arc::clone(&next));
            tokio::spawn(async move {
                loop {
                    let from = next.fetch_add(1000, Ordering::Relaxed);
                    if from >= values.len() {
                        break;
                    }
                    let batch = &values[from..(from + 1000).min(values.len())];
                    let results = vault.tokenize("ssn", batch).await.expect("tokenize");
                    assert!(results.iter().all(Result::is_ok));
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.expect("caller");
    }
}

/// Issues a request every `LOAD_EVERY` until `stop`: half the values were
/// loaded before, half are new. Returns each request's latency.
async fn light_load(
    vault: Arc<Vault>,
    values: Arc<Vec<String>>,
    first_new: usize,
    stop: Arc<AtomicBool>,
) -> Vec<Duration> {
    let mut latencies = Vec::new();
    let mut interval = tokio::time::interval(LOAD_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        interval.tick().await;
        let mut batch: Vec<String> = (0..LOAD_BATCH / 2)
            .map(|k| values[(i * 7_877 + k * 131) % values.len()].clone())
            .collect();
        batch.extend((0..LOAD_BATCH / 2).map(|k| format!("{:09}", first_new + i * LOAD_BATCH + k)));
        let start = Instant::now();
        let results = vault.tokenize("ssn", &batch).await.expect("tokenize");
        latencies.push(start.elapsed());
        assert!(results.iter().all(Result::is_ok));
        i += 1;
    }
    latencies
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summary(mut latencies: Vec<Duration>) -> (usize, Duration, Duration) {
    latencies.sort();
    (
        latencies.len(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let n: usize = std::env::var("PHIVAULT_BENCH_VALUES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "rotation benchmark: {n} mappings, fsync on; light load of {LOAD_BATCH}-value tokenize requests every {LOAD_EVERY:?}"
    );
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let vault = Arc::new(
            Vault::init(
                dir.path(),
                MasterKey::KeyFile(Zeroizing::new([7; 32])),
                VaultOptions::default(),
            )
            .await
            .expect("init"),
        );
        let values = values(n);
        load_vault(&vault, &values).await;
        // Fresh values for the load sit above every loaded one.
        let first_new = 1_000_000_000 - 10_000_000;

        let stop = Arc::new(AtomicBool::new(false));
        let before = tokio::spawn(light_load(
            Arc::clone(&vault),
            Arc::clone(&values),
            first_new,
            Arc::clone(&stop),
        ));
        tokio::time::sleep(BEFORE).await;
        stop.store(true, Ordering::Relaxed);
        let before = summary(before.await.expect("load"));

        let stop = Arc::new(AtomicBool::new(false));
        let during = tokio::spawn(light_load(
            Arc::clone(&vault),
            Arc::clone(&values),
            first_new + 5_000_000,
            Arc::clone(&stop),
        ));
        let started = Instant::now();
        vault.rotate_keys().await.expect("rotate");
        // The first pass moves every mapping; the timings below split it from
        // the confirming pass and the compaction.
        let mut first_pass = None;
        let mut check_pass = None;
        let mut poll = tokio::time::interval(Duration::from_millis(50));
        loop {
            poll.tick().await;
            let status = vault.key_status().await.expect("status");
            let Some(r) = status.rotation else { break };
            if first_pass.is_none() && (r.pass > 1 || r.phase == RotationPhase::Compacting) {
                first_pass = Some(started.elapsed());
            }
            if check_pass.is_none() && r.phase == RotationPhase::Compacting {
                check_pass = Some(started.elapsed());
            }
        }
        let total = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        let during = summary(during.await.expect("load"));
        let first_pass = first_pass.unwrap_or(total);
        let check_pass = check_pass.unwrap_or(total);
        let status = vault.key_status().await.expect("status");
        let moved = status.last_rotation.map_or(0, |l| l.mappings);

        println!();
        println!("| measure | value |");
        println!("|---|---:|");
        println!("| mappings examined (first pass) | {moved} |");
        println!(
            "| re-encrypting pass | {:.1} s, {:.0} mappings/s |",
            first_pass.as_secs_f64(),
            moved as f64 / first_pass.as_secs_f64()
        );
        println!(
            "| confirming pass | {:.1} s |",
            (check_pass - first_pass).as_secs_f64()
        );
        println!(
            "| compaction | {:.1} s |",
            (total - check_pass).as_secs_f64()
        );
        println!(
            "| whole rotation | {:.1} s, {:.0} mappings/s |",
            total.as_secs_f64(),
            moved as f64 / total.as_secs_f64()
        );
        println!();
        println!("| light load | requests | p50 | p99 |");
        println!("|---|---:|---:|---:|");
        println!(
            "| before the rotation | {} | {:.2} ms | {:.2} ms |",
            before.0,
            ms(before.1),
            ms(before.2)
        );
        println!(
            "| during the rotation | {} | {:.2} ms | {:.2} ms |",
            during.0,
            ms(during.1),
            ms(during.2)
        );
        println!(
            "| during / before | | {:.2} | {:.2} |",
            ms(during.1) / ms(before.1).max(1e-6),
            ms(during.2) / ms(before.2).max(1e-6)
        );
    });
}
