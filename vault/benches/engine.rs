//! Engine-level throughput, no gRPC: tokenizing new values and repeated
//! values with fsync on, against a baseline measured in the same run — raw
//! RocksDB `WriteBatch` commits of the same row pairs with the same HMAC and
//! AES-SIV work — so the engine reads as a fraction of what the store allows.
//!
//! `make bench` (or `cargo bench -p phivault --bench engine`);
//! `PHIVAULT_BENCH_VALUES` overrides the value count (default 1,000,000).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use phivault::crypto::{Keyset, SlotRng};
use phivault::store::{Durability, StoreOptions};
use phivault::{MasterKey, Vault, VaultOptions};
use rocksdb::{
    BlockBasedOptions, ColumnFamilyDescriptor, DB, DBCompressionType, Options, WriteBatch,
    WriteOptions,
};
use zeroize::Zeroizing;

/// Values per request, as a pipeline client would send them.
const BATCH: usize = 1000;
/// Concurrent callers.
const CALLERS: usize = 8;

fn values(n: usize) -> Arc<Vec<String>> {
    // Distinct 9-digit SSN-shaped values, spread over the value space.
    Arc::new(
        (0..n)
            .map(|i| format!("{:09}", (i as u64 * 7_919 + 13) % 1_000_000_000))
            .collect(),
    )
}

async fn tokenize_all(vault: &Arc<Vault>, values: &Arc<Vec<String>>) -> Duration {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (vault, values, next) = (Arc::clone(vault), Arc::clone(values), Arc::clone(&next));
            tokio::spawn(async move {
                loop {
                    let from = next.fetch_add(BATCH, Ordering::Relaxed);
                    if from >= values.len() {
                        break;
                    }
                    let batch = &values[from..(from + BATCH).min(values.len())];
                    let results = vault.tokenize("ssn", batch).await.expect("tokenize");
                    assert!(results.iter().all(Result::is_ok), "every value tokenizes");
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.expect("caller");
    }
    start.elapsed()
}

/// The same rows and the same crypto as the engine's new-value path, straight
/// into RocksDB: per value one blind-index HMAC, one token-stream HMAC, one
/// AES-SIV seal; per batch one synced `WriteBatch` of forward and reverse rows.
fn baseline(values: &[String]) -> Duration {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut table = BlockBasedOptions::default();
    table.set_bloom_filter(10.0, false);
    let mut cf = Options::default();
    cf.set_compression_type(DBCompressionType::None);
    cf.set_block_based_table_factory(&table);
    cf.set_memtable_whole_key_filtering(true);
    cf.set_memtable_prefix_bloom_ratio(0.1);
    let mut db_options = cf.clone();
    db_options.create_if_missing(true);
    db_options.create_missing_column_families(true);
    let cfs = ["forward", "reverse"].map(|name| ColumnFamilyDescriptor::new(name, cf.clone()));
    let db = DB::open_cf_descriptors(&db_options, dir.path(), cfs).expect("open");
    let (forward, reverse) = (
        db.cf_handle("forward").expect("cf"),
        db.cf_handle("reverse").expect("cf"),
    );
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    let keyset = Keyset::generate(1).expect("rng");

    let start = Instant::now();
    for chunk in values.chunks(BATCH) {
        let mut batch = WriteBatch::default();
        for value in chunk {
            let index = keyset.prf().blind_index(1, value.as_bytes());
            let mut stream = keyset.prf().token_stream(1, value.as_bytes(), 0);
            let token: String = (0..9)
                .map(|_| char::from(b'0' + stream.below(10) as u8))
                .collect();
            let ciphertext = keyset
                .enc()
                .seal(
                    &[&1u32.to_be_bytes(), token.as_bytes(), &1u32.to_be_bytes()],
                    value.as_bytes(),
                )
                .expect("seal");
            let mut forward_key = Vec::with_capacity(40);
            forward_key.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
            forward_key.extend_from_slice(&index.0);
            let mut reverse_key = vec![0, 0, 0, 1];
            reverse_key.extend_from_slice(token.as_bytes());
            let mut row = Vec::with_capacity(12 + ciphertext.len());
            row.extend_from_slice(&[0; 12]);
            row.extend_from_slice(&ciphertext);
            batch.put_cf(forward, forward_key, token.as_bytes());
            batch.put_cf(reverse, reverse_key, row);
        }
        db.write_opt(batch, &sync).expect("commit");
    }
    start.elapsed()
}

fn rate(n: usize, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
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
    let values = values(n);
    println!(
        "engine benchmark: {n} values, {BATCH} per request, {CALLERS} concurrent callers, fsync on"
    );

    let base = baseline(&values);
    let (new, repeated) = runtime.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = VaultOptions {
            store: StoreOptions {
                durability: Durability::Fsync,
                ..Default::default()
            },
            cache_entries: n,
            ..Default::default()
        };
        let vault = Vault::init(
            dir.path(),
            MasterKey::KeyFile(Zeroizing::new([7; 32])),
            options,
        )
        .await
        .expect("init");
        let vault = Arc::new(vault);
        let new = tokenize_all(&vault, &values).await;
        let stats = vault.writer_stats();
        println!(
            "writer: {} jobs in {} commits ({:.1} jobs per fsync)",
            stats.jobs,
            stats.commits,
            stats.jobs as f64 / stats.commits as f64
        );
        let repeated = tokenize_all(&vault, &values).await;
        (new, repeated)
    });

    let (base_rate, new_rate, repeated_rate) = (rate(n, base), rate(n, new), rate(n, repeated));
    println!();
    println!("| measure | values/s | vs baseline |");
    println!("|---|---:|---:|");
    println!("| baseline: raw RocksDB WriteBatch + HMAC + AES-SIV | {base_rate:.0} | 1.00 |");
    println!(
        "| engine: new values | {new_rate:.0} | {:.2} |",
        new_rate / base_rate
    );
    println!(
        "| engine: repeated values | {repeated_rate:.0} | {:.2} |",
        repeated_rate / base_rate
    );
}
