//! The storage boundary's conformance suite: what every backend must do,
//! written once against the traits of `phivault::store` and run against each
//! backend in [`BACKENDS`].
//!
//! A backend joins by adding a constructor that returns a fresh, empty store
//! with keyset version 1 active, and a way to make another version active
//! (what a rotation's start does).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use phivault::store::keys::{self, ForwardKey};
use phivault::store::{
    Candidate, Cf, InsertOutcome, Inserted, MappingStore, NewValues, Store, StoreOptions,
};

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A backend under test.
struct Harness {
    store: Arc<dyn MappingStore>,
    /// Makes keyset `version` the active one.
    activate: Box<dyn Fn(u32) -> Boxed<()> + Send + Sync>,
    _dir: tempfile::TempDir,
}

/// Makes a fresh backend.
type Constructor = fn() -> Boxed<Harness>;

/// Every backend the suite runs against.
const BACKENDS: &[(&str, Constructor)] = &[("rocksdb", || Box::pin(rocksdb()))];

async fn rocksdb() -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::create(dir.path(), &StoreOptions::default()).expect("create"));
    let activating = Arc::clone(&store);
    let activate = move |version: u32| -> Boxed<()> {
        let store = Arc::clone(&activating);
        Box::pin(async move {
            store
                .write(move |txn| {
                    txn.put(Cf::Meta, keys::META_ACTIVE_KEYSET, keys::u32_bytes(version));
                    Ok::<_, phivault::store::StoreError>(())
                })
                .await
                .expect("activate a keyset");
        })
    };
    activate(1).await;
    Harness {
        store,
        activate: Box::new(activate),
        _dir: dir,
    }
}

const NS: u32 = 7;

/// A forward key: a value's blind index under a keyset version. The suite
/// names values by a number; a backend sees only the key.
fn forward(value: u8, version: u32) -> ForwardKey {
    let mut key = [value; 40];
    key[..4].copy_from_slice(&NS.to_be_bytes());
    key[4..8].copy_from_slice(&version.to_be_bytes());
    ForwardKey(key)
}

fn row_of(value: u8, token: &str) -> Vec<u8> {
    [&[value][..], token.as_bytes()].concat()
}

fn entry_of(token: &str) -> Vec<u8> {
    [token.as_bytes(), b"|bound"].concat()
}

/// One new value: the forward keys it may be under and the tokens it
/// offers, in order.
struct Value {
    forward: Vec<ForwardKey>,
    candidates: Mutex<VecDeque<Candidate>>,
}

/// A deterministic value offering `tokens`, looked up under `versions`
/// (the first is the active one).
fn value(id: u8, versions: &[u32], tokens: &[&str]) -> Value {
    Value {
        forward: versions.iter().map(|&v| forward(id, v)).collect(),
        candidates: Mutex::new(
            tokens
                .iter()
                .map(|t| Candidate {
                    token: (*t).to_owned(),
                    row: row_of(id, t),
                    forward: Some(entry_of(t)),
                })
                .collect(),
        ),
    }
}

/// A value of a namespace without determinism: no forward key.
fn random_value(tokens: &[&str]) -> Value {
    Value {
        forward: Vec::new(),
        candidates: Mutex::new(
            tokens
                .iter()
                .map(|t| Candidate {
                    token: (*t).to_owned(),
                    row: row_of(0, t),
                    forward: None,
                })
                .collect(),
        ),
    }
}

struct Batch {
    keyset: u32,
    values: Vec<Value>,
}

impl NewValues for Batch {
    fn namespace(&self) -> u32 {
        NS
    }
    fn keyset(&self) -> u32 {
        self.keyset
    }
    fn len(&self) -> usize {
        self.values.len()
    }
    fn forward_keys(&self, item: usize) -> Vec<ForwardKey> {
        self.values[item].forward.clone()
    }
    fn next_candidate(&self, item: usize) -> Option<Candidate> {
        self.values[item]
            .candidates
            .lock()
            .expect("candidates")
            .pop_front()
    }
}

async fn insert(store: &dyn MappingStore, keyset: u32, values: Vec<Value>) -> InsertOutcome {
    store
        .insert_mappings(Arc::new(Batch { keyset, values }))
        .await
        .expect("insert_mappings")
}

async fn insert_done(store: &dyn MappingStore, keyset: u32, values: Vec<Value>) -> Vec<Inserted> {
    match insert(store, keyset, values).await {
        InsertOutcome::Done(done) => done,
        InsertOutcome::StaleKeyset => panic!("keyset {keyset} is the active one"),
    }
}

async fn each_backend<F>(test: F)
where
    F: Fn(&'static str, Harness) -> Boxed<()>,
{
    for (name, make) in BACKENDS {
        test(name, make().await).await;
    }
}

#[tokio::test]
async fn a_new_value_is_stored_both_ways() {
    each_backend(|name, h| {
        Box::pin(async move {
            let store = h.store.as_ref();
            let done = insert_done(store, 1, vec![value(1, &[1], &["111"])]).await;
            assert_eq!(done, vec![Inserted::New("111".into())], "{name}");
            let entries = store
                .forward_entries(&[forward(1, 1), forward(2, 1)])
                .await
                .expect("forward_entries");
            assert_eq!(entries, vec![Some(entry_of("111")), None], "{name}");
            let rows = store
                .reverse_rows(NS, &["111", "222"])
                .await
                .expect("reverse_rows");
            assert_eq!(rows, vec![Some(row_of(1, "111")), None], "{name}");
            let taken = store
                .tokens_taken(NS, &["111".into(), "222".into()])
                .await
                .expect("tokens_taken");
            assert_eq!(taken, vec![true, false], "{name}");
            // Another namespace is another token space.
            let elsewhere = store
                .tokens_taken(NS + 1, &["111".into()])
                .await
                .expect("tokens_taken");
            assert_eq!(elsewhere, vec![false], "{name}");
        })
    })
    .await;
}

#[tokio::test]
async fn a_stored_value_is_found_not_stored_again() {
    each_backend(|name, h| {
        Box::pin(async move {
            let store = h.store.as_ref();
            insert_done(store, 1, vec![value(1, &[1], &["111"])]).await;
            let again = insert_done(store, 1, vec![value(1, &[1], &["999"])]).await;
            assert_eq!(
                again,
                vec![Inserted::Existing {
                    key: forward(1, 1),
                    stored: entry_of("111"),
                }],
                "{name}"
            );
            let taken = store
                .tokens_taken(NS, &["999".into()])
                .await
                .expect("tokens_taken");
            assert_eq!(taken, vec![false], "{name}: nothing was written");
        })
    })
    .await;
}

#[tokio::test]
async fn concurrent_inserts_of_one_value_end_with_one_token() {
    each_backend(|name, h| {
        Box::pin(async move {
            let store = Arc::clone(&h.store);
            let racers: Vec<_> = (0..16u8)
                .map(|i| {
                    let store = Arc::clone(&store);
                    tokio::spawn(async move {
                        let token = format!("{i:03}");
                        insert_done(store.as_ref(), 1, vec![value(1, &[1], &[token.as_str()])])
                            .await
                    })
                })
                .collect();
            let mut winners = Vec::new();
            let mut seen = Vec::new();
            for racer in racers {
                match racer.await.expect("racer").remove(0) {
                    Inserted::New(token) => winners.push(token),
                    Inserted::Existing { stored, .. } => seen.push(stored),
                    Inserted::Taken => panic!("{name}: every racer offered a free token"),
                }
            }
            assert_eq!(winners.len(), 1, "{name}: exactly one racer stores it");
            assert!(
                seen.iter().all(|s| *s == entry_of(&winners[0])),
                "{name}: every other racer finds the winner's token"
            );
            let tokens: Vec<String> = (0..16u8).map(|i| format!("{i:03}")).collect();
            let taken = store.tokens_taken(NS, &tokens).await.expect("tokens_taken");
            assert_eq!(
                taken.iter().filter(|t| **t).count(),
                1,
                "{name}: the losers' candidates stay free"
            );
        })
    })
    .await;
}

#[tokio::test]
async fn a_taken_token_is_never_overwritten() {
    each_backend(|name, h| {
        Box::pin(async move {
            let store = h.store.as_ref();
            insert_done(store, 1, vec![value(1, &[1], &["111"])]).await;
            // Value 2's first candidate is value 1's token.
            let done = insert_done(store, 1, vec![value(2, &[1], &["111", "222"])]).await;
            assert_eq!(done, vec![Inserted::New("222".into())], "{name}");
            let rows = store
                .reverse_rows(NS, &["111", "222"])
                .await
                .expect("reverse_rows");
            assert_eq!(
                rows,
                vec![Some(row_of(1, "111")), Some(row_of(2, "222"))],
                "{name}: the first row is untouched"
            );
            // Offered only taken tokens, a value is reported and not stored.
            let done = insert_done(store, 1, vec![value(3, &[1], &["111", "222"])]).await;
            assert_eq!(done, vec![Inserted::Taken], "{name}");
            let entries = store
                .forward_entries(&[forward(3, 1)])
                .await
                .expect("forward_entries");
            assert_eq!(entries, vec![None], "{name}");
        })
    })
    .await;
}

#[tokio::test]
async fn one_batch_sees_its_own_writes() {
    each_backend(|name, h| {
        Box::pin(async move {
            let store = h.store.as_ref();
            let done = insert_done(
                store,
                1,
                vec![
                    value(1, &[1], &["111"]),
                    // Another value offering the token just taken.
                    value(2, &[1], &["111", "222"]),
                    // The first value again.
                    value(1, &[1], &["333"]),
                    random_value(&["222", "444"]),
                ],
            )
            .await;
            assert_eq!(
                done,
                vec![
                    Inserted::New("111".into()),
                    Inserted::New("222".into()),
                    Inserted::Existing {
                        key: forward(1, 1),
                        stored: entry_of("111"),
                    },
                    Inserted::New("444".into()),
                ],
                "{name}"
            );
        })
    })
    .await;
}

#[tokio::test]
async fn lookups_span_every_live_keyset_version() {
    each_backend(|name, h| {
        Box::pin(async move {
            let store = h.store.as_ref();
            insert_done(store, 1, vec![value(1, &[1], &["111"])]).await;
            (h.activate)(2).await;
            // Under version 2 the value's key differs; while version 1 lives
            // a lookup carries both, and finds the older entry.
            let done = insert_done(store, 2, vec![value(1, &[2, 1], &["999"])]).await;
            assert_eq!(
                done,
                vec![Inserted::Existing {
                    key: forward(1, 1),
                    stored: entry_of("111"),
                }],
                "{name}"
            );
            // A value new under version 2 is stored under its version-2 key.
            let done = insert_done(store, 2, vec![value(2, &[2, 1], &["222"])]).await;
            assert_eq!(done, vec![Inserted::New("222".into())], "{name}");
            let entries = store
                .forward_entries(&[forward(2, 2), forward(2, 1)])
                .await
                .expect("forward_entries");
            assert_eq!(entries, vec![Some(entry_of("222")), None], "{name}");
        })
    })
    .await;
}

#[tokio::test]
async fn a_batch_made_under_a_retired_keyset_writes_nothing() {
    each_backend(|name, h| {
        Box::pin(async move {
            let store = h.store.as_ref();
            (h.activate)(2).await;
            let outcome = insert(store, 1, vec![value(1, &[1], &["111"])]).await;
            assert_eq!(outcome, InsertOutcome::StaleKeyset, "{name}");
            let taken = store
                .tokens_taken(NS, &["111".into()])
                .await
                .expect("tokens_taken");
            assert_eq!(taken, vec![false], "{name}");
            let entries = store
                .forward_entries(&[forward(1, 1)])
                .await
                .expect("forward_entries");
            assert_eq!(entries, vec![None], "{name}");
        })
    })
    .await;
}
