//! The key-rotation operations of the storage boundary (DESIGN.md §8):
//! keysets and the rotation record, and the chunks of the background job
//! that moves every mapping to the new keyset.
//!
//! Every step is conditional on the rotation record being the one the job
//! last saw, and writes the record it leaves in the same commit: a step
//! replayed after a crash, or by a second job, finds the record changed and
//! does nothing.

use super::schema::{ForwardKey, KeysetRow, LastRotationRow, RotationRow};
use super::{PendingRecord, StoreError, StoreFuture};

/// Runs once a change is durable, before the backend commits anything after
/// it where the backend can order that (the RocksDB writer does): how a new
/// keyring comes into force on this node.
pub type OnCommit = Box<dyn FnOnce() + Send>;

/// A rotation to start.
pub struct RotationStart {
    /// The new keyset's version (one above every version ever stored).
    pub version: u32,
    /// Its row, active and wrapped.
    pub keyset: KeysetRow,
    /// The rotation record to store.
    pub record: RotationRow,
}

/// Why a rotation did not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStarted {
    /// One runs already, or another request took this version first.
    InProgress,
}

/// One reverse row as the rotation job reads it.
pub struct ReverseEntry {
    /// Where the job resumes after this row (opaque to the job).
    pub cursor: Vec<u8>,
    /// The namespace's id, if the row's place says.
    pub namespace: Option<u32>,
    /// The token (canonical form), as stored; not always valid UTF-8 in a
    /// damaged store.
    pub token: Vec<u8>,
    /// The row.
    pub row: Vec<u8>,
}

/// One mapping moved to the new keyset.
pub struct Moved {
    /// The namespace's id.
    pub namespace: u32,
    /// The token, which does not change.
    pub token: String,
    /// The reverse row resealed under the new keyset.
    pub row: Vec<u8>,
    /// The value's forward entry under the new keyset, in a deterministic
    /// namespace.
    pub forward: Option<(ForwardKey, Vec<u8>)>,
}

/// The key-rotation operations of a backend.
pub trait RotationStore: Send + Sync {
    /// The active keyset version.
    fn active_keyset(&self) -> StoreFuture<'_, u32>;

    /// Every keyset row by version, destroyed ones included.
    fn keyset_rows(&self) -> StoreFuture<'_, Vec<(u32, KeysetRow)>>;

    /// The rotation in progress.
    fn rotation(&self) -> StoreFuture<'_, Option<RotationRow>>;

    /// The last rotation that finished.
    fn last_rotation(&self) -> StoreFuture<'_, Option<LastRotationRow>>;

    /// Starts a rotation when none runs and the version is free: the active
    /// keyset becomes retiring, the new one active, the record and `audit`
    /// are stored, and `on_commit` runs. Returns the version that was
    /// active.
    fn start_rotation(
        &self,
        start: RotationStart,
        audit: Option<PendingRecord>,
        on_commit: OnCommit,
    ) -> StoreFuture<'_, Result<u32, NotStarted>>;

    /// Up to `limit` reverse rows after `cursor` (from the first when
    /// empty), in a fixed order.
    fn reverse_after<'a>(
        &'a self,
        cursor: &'a [u8],
        limit: usize,
    ) -> StoreFuture<'a, Vec<ReverseEntry>>;

    /// Stores `moved` and replaces the rotation record `expected` by `next`,
    /// in one commit; `false` (nothing written) when the record is no longer
    /// `expected`. A moved row is written as given: only the rotation job
    /// rewrites a reverse row.
    fn apply_chunk(
        &self,
        expected: RotationRow,
        next: RotationRow,
        moved: Vec<Moved>,
    ) -> StoreFuture<'_, bool>;

    /// Replaces the rotation record `expected` by `next`; `false` when it is
    /// no longer `expected`.
    fn advance_rotation(&self, expected: RotationRow, next: RotationRow) -> StoreFuture<'_, bool>;

    /// Destroys every keyset below `next.target` not destroyed yet (its
    /// wrapped key erased, destroyed at `now`), drops every forward entry of
    /// `namespaces` under those versions, replaces the record `expected` by
    /// `next`, and runs `on_commit`. Returns the versions destroyed; none
    /// (and nothing written) when the record is no longer `expected`.
    fn retire_keysets(
        &self,
        expected: RotationRow,
        next: RotationRow,
        now: u64,
        namespaces: Vec<u32>,
        on_commit: OnCommit,
    ) -> StoreFuture<'_, Vec<u32>>;

    /// Makes rewritten and deleted rows (old ciphertexts, destroyed keys)
    /// leave the disk rather than wait for the backend to get to them.
    fn reclaim(&self) -> StoreFuture<'_, ()>;

    /// Ends the rotation `expected`: removes its record and stores `last`.
    /// `false` when the record is no longer `expected`.
    fn finish_rotation(
        &self,
        expected: RotationRow,
        last: LastRotationRow,
    ) -> StoreFuture<'_, bool>;
}

/// The active keyset version as stored.
pub(crate) fn active_version(stored: Option<&[u8]>) -> Result<u32, StoreError> {
    stored
        .and_then(super::schema::decode_u32)
        .ok_or(StoreError::Corrupt {
            table: "meta",
            what: "the active keyset version is missing or unreadable",
        })
}

/// A stored keyset row, read back.
pub(crate) fn decode_keyset(bytes: &[u8]) -> Result<KeysetRow, StoreError> {
    KeysetRow::decode(bytes).ok_or(StoreError::Corrupt {
        table: "keys",
        what: "a keyset row is unreadable",
    })
}

/// The stored rotation record, read back.
pub(crate) fn decode_rotation(bytes: &[u8]) -> Result<RotationRow, StoreError> {
    RotationRow::decode(bytes).ok_or(StoreError::Corrupt {
        table: "meta",
        what: "the rotation record is unreadable",
    })
}
