//! The mapping operations of the storage boundary: what tokenize and
//! detokenize ask of storage, in the vault's terms, one round trip each.
//!
//! A backend never sees a value, a key or a format: it is handed sealed rows
//! and keyed hashes and decides only what DESIGN.md §4–5 leave to storage —
//! whether a value is stored already, whether a candidate token is free, and
//! that two concurrent callers tokenizing one new value end with one token.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::StoreError;
use super::schema::ForwardKey;

/// What a storage operation returns: boxed, so that the traits of the
/// boundary stay object-safe and the engine can hold any backend behind
/// `dyn`.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// The rows that store a value under one of its candidate tokens.
pub struct MappingRows {
    /// The reverse row (the value sealed to the token).
    pub reverse: Vec<u8>,
    /// The forward entry binding the value to the token; `None` in a
    /// namespace without determinism, which keeps no forward index.
    pub forward: Option<Vec<u8>>,
}

/// Values of one namespace, never seen before, as a tokenize call hands them
/// to storage. The caller draws candidate tokens and seals rows; storage
/// only checks and takes them, asking for the next candidate when one is
/// taken and for the rows of the one it takes. A backend that checks many
/// candidates in one round trip may ask for several, and their rows, first.
///
/// Storage calls these from its commit (the RocksDB backend: on its writer
/// thread), so they must be cheap and must not block.
pub trait NewValues: Send + Sync {
    /// The namespace's id.
    fn namespace(&self) -> u32;
    /// The keyset version every forward key, row and entry was made under.
    /// Storage refuses the batch with [`InsertOutcome::StaleKeyset`] when that is
    /// no longer the active version, so that nothing is written under a
    /// retiring keyset.
    fn keyset(&self) -> u32;
    /// How many values.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Where value `item` may be stored already: its forward key under every
    /// live keyset version, the active version's first (that is the one a new
    /// entry goes under). Empty in a namespace without determinism.
    fn forward_keys(&self, item: usize) -> Vec<ForwardKey>;
    /// The next token (canonical form) value `item` may take, or `None`
    /// when it has no more to offer in this call.
    fn next_candidate(&self, item: usize) -> Option<String>;
    /// The rows that store value `item` under `token`, one of its
    /// candidates; `None` when they cannot be made (the value then fails
    /// alone, and is reported [`Inserted::Taken`]).
    fn rows(&self, item: usize, token: &str) -> Option<MappingRows>;
    /// Whether no value of the batch is stored under any of its keys but
    /// the active version's: the caller looked under them all in a read
    /// that began after [`keyset`](Self::keyset) became active and found
    /// nothing, or a value has no other key (no rotation runs). A stored
    /// value can then only be under the key a new forward entry takes, and
    /// a backend whose insert refuses a second entry there may insert
    /// before looking, asking a value stored meanwhile for a candidate
    /// before answering it [`Inserted::Existing`].
    ///
    /// The caller's word holds because nothing is written under a keyset
    /// that is no longer active (the insert refuses a stale batch, ordered
    /// against a rotation's start by a lock on the active keyset), and
    /// because the caller's read saw every write committed before it began
    /// (on PostgreSQL: one primary, a snapshot per statement).
    fn older_keys_checked(&self) -> bool {
        false
    }
}

/// What storage did with one new value. Its `Debug` names the variant only:
/// tokens are not for logs.
#[derive(Clone, PartialEq, Eq)]
pub enum Inserted {
    /// The value is stored already (by an earlier call, or by a concurrent
    /// one that won the race): its forward entry as stored, under `key`.
    Existing {
        /// Which of the value's forward keys holds it.
        key: ForwardKey,
        /// The stored entry, for the caller to open.
        stored: Vec<u8>,
    },
    /// Stored now, under this token. Shared, as the caller keeps it (in its
    /// cache): made where storage took it, so that a batch's tokens sit
    /// together in memory rather than among the request's allocations.
    New(Arc<str>),
    /// Every candidate offered was another value's token.
    Taken,
}

impl std::fmt::Debug for Inserted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Existing { key, .. } => f
                .debug_struct("Existing")
                .field("key", key)
                .finish_non_exhaustive(),
            Self::New(_) => f.write_str("New(..)"),
            Self::Taken => f.write_str("Taken"),
        }
    }
}

/// The answer to [`MappingStore::insert_mappings`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertOutcome {
    /// One result per value, in order.
    Done(Vec<Inserted>),
    /// A rotation made another keyset active since the batch was made:
    /// nothing was written; make it again under the new keyring.
    StaleKeyset,
}

/// The mapping operations of a backend.
pub trait MappingStore: Send + Sync {
    /// The stored forward entry under each key, in order.
    fn forward_entries<'a>(
        &'a self,
        keys: &'a [ForwardKey],
    ) -> StoreFuture<'a, Vec<Option<Vec<u8>>>>;

    /// The reverse row of each token of a namespace, in order.
    fn reverse_rows<'a>(
        &'a self,
        namespace: u32,
        tokens: &'a [&'a str],
    ) -> StoreFuture<'a, Vec<Option<Vec<u8>>>>;

    /// Whether each token of a namespace is some value's token already.
    fn tokens_taken<'a>(
        &'a self,
        namespace: u32,
        tokens: &'a [String],
    ) -> StoreFuture<'a, Vec<bool>>;

    /// Insert-or-get, atomically for the batch: for each value, in order, the
    /// token stored for it already under any of its forward keys, or else the
    /// first candidate no other value holds, stored with its rows. A taken
    /// candidate is never overwritten, and two batches bringing one value
    /// at the same time end with one token for it. A batch that says
    /// [`older_keys_checked`](NewValues::older_keys_checked) answers for
    /// every key but the active one.
    fn insert_mappings(&self, values: Arc<dyn NewValues>) -> StoreFuture<'_, InsertOutcome>;

    /// About how many mappings are stored (cheap; for progress figures).
    fn estimate_mappings(&self) -> StoreFuture<'_, u64>;
}
