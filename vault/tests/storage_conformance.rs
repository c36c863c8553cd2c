//! The storage boundary's conformance suite: what every backend must do,
//! written once against the traits of `phivault::store` and run against each
//! backend in [`BACKENDS`].
//!
//! A backend joins by adding a constructor that creates a fresh store with
//! `phivault::store::create` from [`genesis`]: keyset version 1 active, no
//! namespace.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use phivault::store::postgres::PgTarget;
use phivault::store::schema::{
    self, ForwardKey, KeysetRow, KeysetState, LastRotationRow, RotationPhase, RotationRow,
};
use phivault::store::{
    ClientRow, Genesis, InsertOutcome, Inserted, Location, MappingRows, MasterChange, Moved,
    NewValues, NotStarted, PendingRecord, RotationStart, RowKey, Storage, StoreError, StoreOptions,
    StoredRecord, chain_hash, lane_of, record_id, seq_of,
};

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A backend under test.
struct Harness {
    store: Arc<dyn Storage>,
    /// Where it lives.
    location: Location,
    /// What the backend lives in (a directory, a PostgreSQL server): held
    /// by [`each_backend`] until the test is over (a test's `async move`
    /// block captures only the fields it uses).
    files: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

/// Makes a fresh backend, or says why this machine cannot run it.
type Constructor = fn() -> Boxed<Result<Harness, String>>;

/// Every backend the suite runs against.
const BACKENDS: &[(&str, Constructor)] = &[
    ("rocksdb", || Box::pin(rocksdb())),
    ("postgres", || Box::pin(postgres())),
];

/// The row key every fresh backend is created with.
const ROW_KEY: [u8; 32] = [0x5a; 32];

/// The first commit of every fresh backend: keyset 1 active, no namespace.
fn genesis() -> Genesis {
    Genesis {
        kdf: b"kdf record".to_vec(),
        kek_check: b"kek check".to_vec(),
        keyset: keyset_row(KeysetState::Active).encode(),
        audit_key: b"audit key row".to_vec(),
        namespaces: Vec::new(),
    }
}

async fn rocksdb() -> Result<Harness, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let location = Location::directory(dir.path());
    let store = phivault::store::create(
        &location,
        &StoreOptions::default(),
        RowKey::new(&ROW_KEY),
        genesis(),
    )
    .await
    .expect("create");
    Ok(Harness {
        store,
        location,
        files: Some(Arc::new(dir)),
    })
}

/// A fresh database on a PostgreSQL server of its own.
async fn postgres() -> Result<Harness, String> {
    let server = phivault_tests::postgres::Postgres::start()?;
    let target = PgTarget::parse(&server.create_database("vault")).expect("connection string");
    let location = Location::Postgres(Box::new(target));
    let store = phivault::store::create(
        &location,
        &StoreOptions::default(),
        RowKey::new(&ROW_KEY),
        genesis(),
    )
    .await
    .expect("create");
    Ok(Harness {
        store,
        location,
        files: Some(Arc::new(server)),
    })
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
/// offers, in order, and how many of them storage asked for.
struct Value {
    id: u8,
    forward: Vec<ForwardKey>,
    deterministic: bool,
    candidates: Mutex<VecDeque<String>>,
    pulled: AtomicUsize,
    sealed: AtomicUsize,
}

/// A deterministic value offering `tokens`, looked up under `versions`
/// (the first is the active one).
fn value(id: u8, versions: &[u32], tokens: &[&str]) -> Value {
    Value {
        id,
        forward: versions.iter().map(|&v| forward(id, v)).collect(),
        deterministic: true,
        candidates: Mutex::new(tokens.iter().map(|t| (*t).to_owned()).collect()),
        pulled: AtomicUsize::new(0),
        sealed: AtomicUsize::new(0),
    }
}

/// A value of a namespace without determinism: no forward key.
fn random_value(tokens: &[&str]) -> Value {
    Value {
        forward: Vec::new(),
        deterministic: false,
        ..value(0, &[], tokens)
    }
}

struct Batch {
    keyset: u32,
    values: Vec<Value>,
    /// What the batch tells storage of the caller's own look-up.
    older_keys_checked: bool,
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
    fn next_candidate(&self, item: usize) -> Option<String> {
        let value = &self.values[item];
        let next = value.candidates.lock().expect("candidates").pop_front();
        value
            .pulled
            .fetch_add(usize::from(next.is_some()), Ordering::Relaxed);
        next
    }
    fn rows(&self, item: usize, token: &str) -> Option<MappingRows> {
        let value = &self.values[item];
        value.sealed.fetch_add(1, Ordering::Relaxed);
        Some(MappingRows {
            reverse: row_of(value.id, token),
            forward: value.deterministic.then(|| entry_of(token)),
        })
    }
    fn older_keys_checked(&self) -> bool {
        self.older_keys_checked
    }
}

async fn insert(store: &dyn Storage, keyset: u32, values: Vec<Value>) -> InsertOutcome {
    insert_batch(
        store,
        Arc::new(Batch {
            keyset,
            values,
            older_keys_checked: false,
        }),
    )
    .await
}

async fn insert_batch(store: &dyn Storage, batch: Arc<Batch>) -> InsertOutcome {
    store.insert_mappings(batch).await.expect("insert_mappings")
}

async fn insert_done(store: &dyn Storage, keyset: u32, values: Vec<Value>) -> Vec<Inserted> {
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
        let harness = match make().await {
            Ok(harness) => harness,
            Err(why) if std::env::var_os("PHIVAULT_TESTS_WITHOUT_POSTGRES").is_some() => {
                eprintln!("SKIPPED the {name} backend: {why}");
                continue;
            }
            Err(why) => panic!(
                "the {name} backend cannot run here: {why} (PHIVAULT_TESTS_WITHOUT_POSTGRES=1 skips it)"
            ),
        };
        let files = harness.files.clone();
        test(name, harness).await;
        drop(files);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
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
                    Inserted::New(token) => winners.push(token.to_string()),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_values_offering_one_token_never_share_it() {
    each_backend(|name, h| {
        Box::pin(async move {
            let store = Arc::clone(&h.store);
            let racers: Vec<_> = (1..=16u8)
                .map(|i| {
                    let store = Arc::clone(&store);
                    tokio::spawn(async move {
                        let own = format!("{i:03}");
                        let done =
                            insert_done(store.as_ref(), 1, vec![value(i, &[1], &["777", &own])])
                                .await;
                        (i, done)
                    })
                })
                .collect();
            let mut winners = Vec::new();
            for racer in racers {
                let (i, mut done) = racer.await.expect("racer");
                match done.remove(0) {
                    Inserted::New(token) if &*token == "777" => winners.push(i),
                    Inserted::New(token) => assert_eq!(&*token, format!("{i:03}"), "{name}"),
                    other => panic!("{name}: value {i} got {other:?}"),
                }
            }
            assert_eq!(winners.len(), 1, "{name}: one value holds the shared token");
            let rows = store
                .reverse_rows(NS, &["777"])
                .await
                .expect("reverse_rows");
            assert_eq!(
                rows,
                vec![Some(row_of(winners[0], "777"))],
                "{name}: the winner's row stands"
            );
            let entry = store
                .forward_entries(&[forward(winners[0], 1)])
                .await
                .expect("forward_entries");
            assert_eq!(entry, vec![Some(entry_of("777"))], "{name}");
        })
    })
    .await;
}

#[tokio::test]
async fn candidates_and_rows_are_asked_for_only_as_needed() {
    each_backend(|name, h| {
        Box::pin(async move {
            let store = h.store.as_ref();
            insert_done(store, 1, vec![value(1, &[1], &["111"])]).await;
            let batch = Arc::new(Batch {
                keyset: 1,
                older_keys_checked: false,
                values: vec![
                    // Stored already: no candidate is needed.
                    value(1, &[1], &["900", "901"]),
                    // Its first candidate is taken, its second free.
                    value(2, &[1], &["111", "222", "902"]),
                ],
            });
            let outcome = insert_batch(store, Arc::clone(&batch)).await;
            assert!(matches!(outcome, InsertOutcome::Done(_)), "{name}");
            let asked: Vec<(usize, usize)> = batch
                .values
                .iter()
                .map(|v| {
                    (
                        v.pulled.load(Ordering::Relaxed),
                        v.sealed.load(Ordering::Relaxed),
                    )
                })
                .collect();
            // A backend checking candidates in one round trip may ask for
            // more than it takes, but never seals what it does not store
            // beyond what it asked for, and asks nothing of a stored value.
            assert_eq!(asked[0], (0, 0), "{name}: a stored value offers nothing");
            assert!(asked[1].0 >= 2, "{name}");
            assert!(asked[1].1 >= 1 && asked[1].1 <= asked[1].0, "{name}");
        })
    })
    .await;
}

#[tokio::test]
async fn a_value_stored_since_the_caller_looked_keeps_its_one_token() {
    each_backend(|name, h| {
        Box::pin(async move {
            let store = h.store.as_ref();
            // Stored by another caller after this one looked and found
            // nothing: a backend may take the caller's word and not look
            // again, but the value still has one token, the first.
            insert_done(store, 1, vec![value(1, &[1], &["111"])]).await;
            let batch = Arc::new(Batch {
                keyset: 1,
                older_keys_checked: true,
                values: vec![value(1, &[1], &["900"]), value(2, &[1], &["901"])],
            });
            let InsertOutcome::Done(done) = insert_batch(store, batch).await else {
                panic!("{name}: keyset 1 is the active one");
            };
            assert_eq!(
                done,
                vec![
                    Inserted::Existing {
                        key: forward(1, 1),
                        stored: entry_of("111"),
                    },
                    Inserted::New("901".into()),
                ],
                "{name}"
            );
            let taken = store
                .tokens_taken(NS, &["111".into(), "900".into(), "901".into()])
                .await
                .expect("tokens_taken");
            assert_eq!(taken, vec![true, false, true], "{name}: no second row");
            let rows = store
                .reverse_rows(NS, &["111"])
                .await
                .expect("reverse_rows");
            assert_eq!(rows, vec![Some(row_of(1, "111"))], "{name}");
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
            // The first value takes its token; the same value again finds
            // it. A token is never given to two values: which of the two
            // others offering "222" gets it depends on the order a backend
            // tries them in (RocksDB: batch order; PostgreSQL: a round per
            // candidate), and the one that does not is left with its next
            // candidate, or none.
            assert_eq!(done[0], Inserted::New("111".into()), "{name}");
            assert_eq!(
                done[2],
                Inserted::Existing {
                    key: forward(1, 1),
                    stored: entry_of("111"),
                },
                "{name}"
            );
            match (&done[1], &done[3]) {
                (Inserted::New(a), Inserted::New(b)) => {
                    assert_eq!((&**a, &**b), ("222", "444"), "{name}");
                }
                (Inserted::Taken, Inserted::New(b)) => assert_eq!(&**b, "222", "{name}"),
                other => panic!("{name}: {other:?}"),
            }
            if name == "rocksdb" {
                assert_eq!(done[1], Inserted::New("222".into()), "{name}: batch order");
            }
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
            activate(store, 2).await;
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
            activate(store, 2).await;
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

fn record(body: &str, revealed: &[[u8; 32]]) -> PendingRecord {
    PendingRecord::new(body.as_bytes().to_vec(), revealed.to_vec())
}

fn client(name: &str) -> ClientRow {
    ClientRow {
        name: name.into(),
        scopes: vec!["admin".into()],
        secret_sha256: "00".repeat(32),
        created_at: 1,
        separated: true,
        ..ClientRow::default()
    }
}

#[tokio::test]
async fn audit_records_chain_in_order_and_index_their_disclosures() {
    each_backend(|name, h| {
        Box::pin(async move {
            let store = h.store.as_ref();
            assert_eq!(records_on_record(store).await, 0, "{name}");
            let first = store
                .append_audit(vec![record("a", &[[1; 32]]), record("b", &[])])
                .await
                .expect("append");
            // One call's records go to one lane, one after the other.
            assert_eq!(first.len(), 2, "{name}");
            assert_eq!(lane_of(first[0]), lane_of(first[1]), "{name}");
            assert_eq!(first[1], first[0] + 1, "{name}");
            let second = store
                .append_audit(vec![record("c", &[[1; 32], [2; 32]])])
                .await
                .expect("append");
            let ids = [first[0], first[1], second[0]];
            let mut sorted = ids;
            sorted.sort_unstable();

            let all = store.audit_after(0, 10).await.expect("audit_after");
            assert_eq!(
                all.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
                sorted,
                "{name}: in id order, lane by lane"
            );
            // Every lane is a chain of its own from a zero hash; its head
            // names its last record.
            let bodies: HashMap<u64, &str> = ids.into_iter().zip(["a", "b", "c"]).collect();
            let mut last: HashMap<u32, (u64, [u8; 32])> = HashMap::new();
            for (id, stored) in &all {
                let stored = StoredRecord::split(stored).expect("a stored record");
                assert_eq!(stored.body, bodies[id].as_bytes(), "{name}");
                let (count, prev) = last.get(&lane_of(*id)).copied().unwrap_or((0, [0; 32]));
                assert_eq!(seq_of(*id), count + 1, "{name}: lanes count from 1");
                assert_eq!(
                    stored.prev, prev,
                    "{name}: record {id} links to the one before"
                );
                let digest: [u8; 32] = sha256(stored.body);
                assert_eq!(
                    chain_hash(seq_of(*id), stored.time_ms, &prev, &digest),
                    stored.hash,
                    "{name}"
                );
                last.insert(lane_of(*id), (count + 1, stored.hash));
            }
            for (lane, head) in store.audit_heads().await.expect("heads") {
                let (count, hash) = last.get(&lane).copied().unwrap_or((0, [0; 32]));
                assert_eq!((head.seq, head.hash), (count, hash), "{name}: lane {lane}");
            }
            assert_eq!(records_on_record(store).await, 3, "{name}");

            let after = store.audit_after(sorted[0], 1).await.expect("audit_after");
            assert_eq!(after.len(), 1, "{name}");
            assert_eq!(after[0].0, sorted[1], "{name}");
            let missing = record_id(lane_of(ids[2]), 9);
            let picked = store
                .audit_entries(&[ids[2], missing])
                .await
                .expect("entries");
            let third = all.iter().find(|(id, _)| *id == ids[2]).expect("third");
            assert_eq!(picked, vec![Some(third.1.clone()), None], "{name}");

            // In the order the records were appended, across lanes.
            let marked = vec![ids[0], ids[2]];
            let one = store
                .disclosures(&[1; 32], 0, 10)
                .await
                .expect("disclosures");
            assert_eq!(one, marked, "{name}");
            let paged = store
                .disclosures(&[1; 32], marked[0], 10)
                .await
                .expect("disclosures");
            assert_eq!(paged, vec![marked[1]], "{name}");
            let two = store
                .disclosures(&[2; 32], 0, 10)
                .await
                .expect("disclosures");
            assert_eq!(two, vec![ids[2]], "{name}");
            let none = store
                .disclosures(&[3; 32], 0, 10)
                .await
                .expect("disclosures");
            assert!(none.is_empty(), "{name}");
        })
    })
    .await;
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// How many records every lane's head accounts for.
async fn records_on_record(store: &dyn Storage) -> u64 {
    store
        .audit_heads()
        .await
        .expect("heads")
        .iter()
        .map(|(_, head)| head.seq)
        .sum()
}

#[tokio::test]
async fn a_registry_change_and_its_audit_record_commit_together() {
    each_backend(|name, h| {
        Box::pin(async move {
            let store = h.store.as_ref();
            // The fresh store's next namespace id is 1.
            let first = store
                .create_namespace(
                    "ssn".into(),
                    Box::new(|id| format!("ssn:{id}").into_bytes()),
                    Some(record("created ssn", &[])),
                )
                .await
                .expect("create");
            let second = store
                .create_namespace(
                    "mrn".into(),
                    Box::new(|id| format!("mrn:{id}").into_bytes()),
                    None,
                )
                .await
                .expect("create");
            assert!(
                matches!((first, second), (Some(a), Some(b)) if b == a + 1),
                "{name}"
            );
            let again = store
                .create_namespace(
                    "ssn".into(),
                    Box::new(|_| b"overwritten".to_vec()),
                    Some(record("again", &[])),
                )
                .await
                .expect("create");
            assert_eq!(again, None, "{name}: a taken name is refused");
            let mut rows = store.namespace_rows().await.expect("rows");
            rows.sort();
            let expected = vec![
                format!("mrn:{}", first.unwrap_or_default() + 1).into_bytes(),
                format!("ssn:{}", first.unwrap_or_default()).into_bytes(),
            ];
            assert_eq!(rows, expected, "{name}");
            assert_eq!(
                records_on_record(store).await,
                1,
                "{name}: only the change that happened is on record"
            );

            assert!(
                store
                    .create_client("c1".into(), client("one"), Some(record("c1", &[])))
                    .await
                    .expect("create client"),
                "{name}"
            );
            assert!(
                !store
                    .create_client("c1".into(), client("impostor"), Some(record("again", &[])))
                    .await
                    .expect("create client"),
                "{name}: an existing client is never overwritten"
            );
            let revoked = store
                .revoke_client("c1".into(), 50, Some(record("revoke", &[])))
                .await
                .expect("revoke")
                .expect("the client exists");
            assert_eq!(revoked.revoked_at, Some(50), "{name}");
            let twice = store
                .revoke_client("c1".into(), 99, None)
                .await
                .expect("revoke")
                .expect("the client exists");
            assert_eq!(
                twice.revoked_at,
                Some(50),
                "{name}: the first revocation stands"
            );
            let missing = store
                .revoke_client("nobody".into(), 50, Some(record("nobody", &[])))
                .await
                .expect("revoke");
            assert!(missing.is_none(), "{name}");
            let clients = store.client_rows().await.expect("clients");
            assert_eq!(clients.len(), 1, "{name}");
            assert_eq!(
                (
                    clients[0].0.as_str(),
                    clients[0].1.name.as_str(),
                    clients[0].1.revoked_at
                ),
                ("c1", "one", Some(50)),
                "{name}"
            );
            assert_eq!(
                records_on_record(store).await,
                3,
                "{name}: namespace, client and revocation records; none for refusals"
            );
        })
    })
    .await;
}

fn keyset_row(state: KeysetState) -> KeysetRow {
    KeysetRow {
        state,
        created_at: 1,
        wrapped: vec![7; 96],
    }
}

fn rotation_to(target: u32) -> RotationRow {
    RotationRow {
        target,
        phase: RotationPhase::Migrating,
        started_at: 10,
        done: 0,
        total: 2,
        pass: 1,
        moved_in_pass: 0,
        cursor: Vec::new(),
    }
}

fn start(version: u32) -> RotationStart {
    RotationStart {
        version,
        keyset: keyset_row(KeysetState::Active),
        record: rotation_to(version),
    }
}

/// Makes keyset `version` the active one, as a rotation's start does.
async fn activate(store: &dyn Storage, version: u32) {
    store
        .start_rotation(start(version), None, Box::new(|| ()))
        .await
        .expect("start a rotation")
        .expect("no rotation runs");
}

fn counting(counter: &Arc<AtomicUsize>) -> Box<dyn FnOnce() + Send> {
    let counter = Arc::clone(counter);
    Box::new(move || {
        counter.fetch_add(1, Ordering::SeqCst);
    })
}

#[tokio::test]
async fn a_rotation_starts_once() {
    each_backend(|name, h| {
        Box::pin(async move {
            let store = h.store.as_ref();
            let committed = Arc::new(AtomicUsize::new(0));
            let started = store
                .start_rotation(start(2), Some(record("rotate", &[])), counting(&committed))
                .await
                .expect("start");
            assert_eq!(started, Ok(1), "{name}: version 1 was active");
            assert_eq!(committed.load(Ordering::SeqCst), 1, "{name}");
            let again = store
                .start_rotation(start(3), Some(record("again", &[])), counting(&committed))
                .await
                .expect("start");
            assert_eq!(again, Err(NotStarted::InProgress), "{name}");
            assert_eq!(committed.load(Ordering::SeqCst), 1, "{name}");
            assert_eq!(store.active_keyset().await.expect("active"), 2, "{name}");
            let states: Vec<(u32, KeysetState)> = store
                .keyset_rows()
                .await
                .expect("keysets")
                .into_iter()
                .map(|(v, row)| (v, row.state))
                .collect();
            assert_eq!(
                states,
                vec![(1, KeysetState::Retiring), (2, KeysetState::Active)],
                "{name}"
            );
            assert_eq!(
                store.rotation().await.expect("rotation"),
                Some(rotation_to(2)),
                "{name}"
            );
            assert_eq!(records_on_record(store).await, 1, "{name}");
        })
    })
    .await;
}

#[tokio::test]
async fn rotation_steps_replayed_change_nothing() {
    each_backend(|name, h| {
        Box::pin(async move {
            let store = h.store.as_ref();
            insert_done(
                store,
                1,
                vec![value(1, &[1], &["111"]), value(2, &[1], &["222"])],
            )
            .await;
            let committed = Arc::new(AtomicUsize::new(0));
            store
                .start_rotation(start(2), None, counting(&committed))
                .await
                .expect("start")
                .expect("started");
            let chunk = store.reverse_after(&[], 10).await.expect("reverse_after");
            assert_eq!(chunk.len(), 2, "{name}");
            assert!(chunk.iter().all(|e| e.namespace == Some(NS)), "{name}");
            let tokens: Vec<&[u8]> = chunk.iter().map(|e| e.token.as_slice()).collect();
            assert_eq!(tokens, vec![&b"111"[..], &b"222"[..]], "{name}");
            let rest = store
                .reverse_after(&chunk[0].cursor, 10)
                .await
                .expect("reverse_after");
            assert_eq!(rest.len(), 1, "{name}: a cursor resumes after its row");

            let moved = |id: u8, token: &str| Moved {
                namespace: NS,
                token: token.into(),
                row: row_of(id + 100, token),
                forward: Some((forward(id, 2), entry_of(token))),
            };
            let before = rotation_to(2);
            let after = RotationRow {
                done: 2,
                moved_in_pass: 2,
                cursor: chunk[1].cursor.clone(),
                ..rotation_to(2)
            };
            let applied = store
                .apply_chunk(
                    before.clone(),
                    after.clone(),
                    vec![moved(1, "111"), moved(2, "222")],
                )
                .await
                .expect("apply");
            assert!(applied, "{name}");
            // The same chunk again, as after a crash between commit and
            // reply, or from a second job: the record moved on, so nothing.
            let replayed = store
                .apply_chunk(
                    before.clone(),
                    after.clone(),
                    vec![Moved {
                        row: b"replayed".to_vec(),
                        ..moved(1, "111")
                    }],
                )
                .await
                .expect("apply");
            assert!(!replayed, "{name}");
            let rows = store.reverse_rows(NS, &["111", "222"]).await.expect("rows");
            assert_eq!(
                rows,
                vec![Some(row_of(101, "111")), Some(row_of(102, "222"))],
                "{name}"
            );
            assert!(
                !store
                    .advance_rotation(before.clone(), rotation_to(9))
                    .await
                    .expect("advance"),
                "{name}"
            );
            assert_eq!(
                store.rotation().await.expect("rotation"),
                Some(after.clone()),
                "{name}"
            );

            let compacting = RotationRow {
                phase: RotationPhase::Compacting,
                cursor: Vec::new(),
                ..after.clone()
            };
            let destroyed = store
                .retire_keysets(
                    after.clone(),
                    compacting.clone(),
                    50,
                    vec![NS],
                    counting(&committed),
                )
                .await
                .expect("retire");
            assert_eq!(destroyed, vec![1], "{name}");
            assert_eq!(committed.load(Ordering::SeqCst), 2, "{name}");
            let again = store
                .retire_keysets(
                    after.clone(),
                    compacting.clone(),
                    60,
                    vec![NS],
                    counting(&committed),
                )
                .await
                .expect("retire");
            assert!(again.is_empty(), "{name}");
            assert_eq!(committed.load(Ordering::SeqCst), 2, "{name}");
            let keysets = store.keyset_rows().await.expect("keysets");
            assert_eq!(
                keysets[0].1.state,
                KeysetState::Destroyed { at: 50 },
                "{name}"
            );
            assert!(
                keysets[0].1.wrapped.is_empty(),
                "{name}: the wrapped key is erased"
            );
            let entries = store
                .forward_entries(&[forward(1, 1), forward(2, 1), forward(1, 2), forward(2, 2)])
                .await
                .expect("forward");
            assert_eq!(
                entries,
                vec![None, None, Some(entry_of("111")), Some(entry_of("222"))],
                "{name}: entries under the destroyed version are gone"
            );

            store.reclaim().await.expect("reclaim");
            let last = LastRotationRow {
                target: 2,
                started_at: 10,
                finished_at: 70,
                mappings: 2,
            };
            assert!(
                store
                    .finish_rotation(compacting.clone(), last)
                    .await
                    .expect("finish"),
                "{name}"
            );
            assert!(
                !store
                    .finish_rotation(compacting, last)
                    .await
                    .expect("finish"),
                "{name}"
            );
            assert_eq!(store.rotation().await.expect("rotation"), None, "{name}");
            assert_eq!(
                store.last_rotation().await.expect("last"),
                Some(last),
                "{name}"
            );
        })
    })
    .await;
}

#[tokio::test]
async fn a_lease_has_one_holder_at_a_time() {
    use std::time::Duration;
    each_backend(|name, h| {
        Box::pin(async move {
            let store = h.store.as_ref();
            let long = Duration::from_secs(600);
            let a = store
                .acquire_lease("rotation", "node-a", long)
                .await
                .expect("acquire")
                .expect("free");
            assert_eq!(
                store
                    .acquire_lease("rotation", "node-b", long)
                    .await
                    .expect("acquire"),
                None,
                "{name}: held by another"
            );
            let other_job = store
                .acquire_lease("checkpoint", "node-b", long)
                .await
                .expect("acquire");
            assert!(other_job.is_some(), "{name}: leases are per job");
            let renewed = store
                .acquire_lease("rotation", "node-a", long)
                .await
                .expect("acquire")
                .expect("renewed");
            assert_eq!(renewed.fence, a.fence, "{name}: a renewal keeps the fence");
            // Released, the lease goes to the next asker with a higher fence.
            store.release_lease(&renewed).await.expect("release");
            let b = store
                .acquire_lease("rotation", "node-b", long)
                .await
                .expect("acquire")
                .expect("released");
            assert!(b.fence > a.fence, "{name}");
            // A holder that lost the lease cannot release the new holder's.
            store.release_lease(&a).await.expect("release");
            assert_eq!(
                store
                    .acquire_lease("rotation", "node-a", long)
                    .await
                    .expect("acquire"),
                None,
                "{name}"
            );
            // A lease whose time ran out goes to the next asker.
            store.release_lease(&b).await.expect("release");
            let brief = store
                .acquire_lease("rotation", "node-c", Duration::ZERO)
                .await
                .expect("acquire")
                .expect("free");
            let taken_over = store
                .acquire_lease("rotation", "node-d", long)
                .await
                .expect("acquire")
                .expect("expired");
            assert!(taken_over.fence > brief.fence, "{name}");
        })
    })
    .await;
}

#[tokio::test]
async fn a_new_store_holds_its_first_commit_and_is_not_created_twice() {
    each_backend(|name, h| {
        Box::pin(async move {
            let store = h.store.as_ref();
            let master = phivault::store::read_master_record(&h.location)
                .await
                .expect("master");
            assert_eq!(
                master.format_version.as_deref(),
                Some(&schema::u32_bytes(schema::FORMAT_VERSION)[..]),
                "{name}"
            );
            assert_eq!(master.kdf.as_deref(), Some(&b"kdf record"[..]), "{name}");
            assert_eq!(
                master.kek_check.as_deref(),
                Some(&b"kek check"[..]),
                "{name}"
            );
            let kdf = store.kdf_record().await.expect("kdf");
            assert_eq!(kdf.as_deref(), Some(&b"kdf record"[..]), "{name}");
            assert_eq!(store.active_keyset().await.expect("active"), 1, "{name}");
            let keysets = store.keyset_rows().await.expect("keysets");
            assert_eq!(
                keysets,
                vec![(1, keyset_row(KeysetState::Active))],
                "{name}"
            );
            let audit_key = store.audit_key_row().await.expect("audit key");
            assert_eq!(audit_key.as_deref(), Some(&b"audit key row"[..]), "{name}");
            assert!(store.namespace_rows().await.expect("rows").is_empty());
            assert!(
                phivault::store::exists(&h.location).await.expect("exists"),
                "{name}"
            );
            let again = phivault::store::create(
                &h.location,
                &StoreOptions::default(),
                RowKey::new(&ROW_KEY),
                genesis(),
            )
            .await;
            assert!(
                matches!(again, Err(StoreError::AlreadyExists(_))),
                "{name}: a second create is refused"
            );
        })
    })
    .await;
}

#[tokio::test]
async fn a_master_change_replaces_its_records_and_retags_every_row() {
    each_backend(|name, h| {
        Box::pin(async move {
            let store = h.store.as_ref();
            store
                .create_namespace("ssn".into(), Box::new(|id| vec![1, id as u8]), None)
                .await
                .expect("namespace");
            assert!(
                store
                    .create_client("billing".into(), client("billing"), None)
                    .await
                    .expect("client")
            );
            let rewrapped = KeysetRow {
                wrapped: vec![8; 96],
                ..keyset_row(KeysetState::Active)
            };
            store
                .replace_master(MasterChange {
                    row_key: RowKey::new(&[0x6b; 32]),
                    kdf: b"new kdf record".to_vec(),
                    kek_check: b"new kek check".to_vec(),
                    keysets: vec![(1, rewrapped.encode())],
                    audit_key: b"new audit key row".to_vec(),
                })
                .await
                .expect("replace the master records");
            let kdf = store.kdf_record().await.expect("kdf");
            assert_eq!(kdf.as_deref(), Some(&b"new kdf record"[..]), "{name}");
            let master = phivault::store::read_master_record(&h.location)
                .await
                .expect("master");
            assert_eq!(
                master.kek_check.as_deref(),
                Some(&b"new kek check"[..]),
                "{name}"
            );
            let keysets = store.keyset_rows().await.expect("keysets");
            assert_eq!(keysets, vec![(1, rewrapped)], "{name}");
            let audit_key = store.audit_key_row().await.expect("audit key");
            assert_eq!(
                audit_key.as_deref(),
                Some(&b"new audit key row"[..]),
                "{name}"
            );
            // Rows the change did not rewrite are tagged under the new key
            // too: they read back under it, and not under the old one.
            assert_eq!(
                store.namespace_rows().await.expect("rows"),
                vec![vec![1, 1]],
                "{name}"
            );
            assert_eq!(store.client_rows().await.expect("clients").len(), 1);
            store
                .protect_rows(RowKey::new(&ROW_KEY), None)
                .await
                .expect("install the old key");
            assert!(
                matches!(
                    store.namespace_rows().await,
                    Err(StoreError::Tampered { .. })
                ),
                "{name}: rows under the old key are refused"
            );
        })
    })
    .await;
}
