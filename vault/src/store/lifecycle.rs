//! What the vault asks of a backend about itself rather than about its
//! rows: whether it takes writes, its commit figures, a consistent backup,
//! the walk of every mapping that `verify` makes, and shutdown.

use std::path::Path;

use super::{StoreError, StoreFuture};

/// Upper bounds of the jobs-per-commit histogram: 1, 2, 4, … 1024.
pub const BATCH_BUCKETS: [u64; 11] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

/// Upper bounds, in microseconds, of the commit-duration histogram: 100 µs
/// to 1 s. A commit's duration is the time its write took to become
/// durable (the batch written and synced), which is what every request in
/// it waited for beyond its own work.
pub const COMMIT_MICROS_BUCKETS: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// The bucket of a commit of `micros` in [`COMMIT_MICROS_BUCKETS`], or
/// `COMMIT_MICROS_BUCKETS.len()` when it took longer than the last bound.
pub fn commit_bucket(micros: u64) -> usize {
    COMMIT_MICROS_BUCKETS.partition_point(|&upper| upper < micros)
}

/// Counters of the group commit, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Commits made.
    pub commits: u64,
    /// Operations run.
    pub jobs: u64,
    /// Commits by how many operations they carried: `batches[i]` counts
    /// commits of more than `BATCH_BUCKETS[i-1]` and at most
    /// `BATCH_BUCKETS[i]`.
    pub batches: [u64; BATCH_BUCKETS.len()],
    /// Commits that failed (the store refused them).
    pub failed_commits: u64,
    /// Operations that panicked and were discarded.
    pub panicked_jobs: u64,
    /// Commits by how long they took to be durable: `commit_micros[i]`
    /// counts commits of more than `COMMIT_MICROS_BUCKETS[i-1]` µs and at
    /// most `COMMIT_MICROS_BUCKETS[i]`; the last counts the slower ones.
    pub commit_micros: [u64; COMMIT_MICROS_BUCKETS.len() + 1],
    /// The sum of every commit's duration, in microseconds.
    pub commit_micros_sum: u64,
    /// Operations waiting for the writer now (the embedded store's queue;
    /// 0 where there is none).
    pub queued: u64,
}

/// Moves a finished backup into place; runs before the backend commits
/// anything after the backup was taken, and must not panic.
pub type BackupFinish = Box<dyn FnOnce(&Path) -> Result<(), StoreError> + Send>;

/// One forward entry as `verify` walks them.
pub struct ForwardRow {
    /// Where the walk resumes after this entry (opaque).
    pub cursor: Vec<u8>,
    /// The key as stored: `namespace ‖ version ‖ blind index` when intact.
    pub key: Vec<u8>,
    /// The entry as stored: `token ‖ binding` when intact.
    pub stored: Vec<u8>,
}

/// The lifecycle operations of a backend.
pub trait Lifecycle: Send + Sync {
    /// Whether other processes (vault nodes) write to the same storage, so
    /// that this one must look for their changes.
    fn shared(&self) -> bool {
        false
    }

    /// Whether writes can be committed now. While not, every reveal fails
    /// closed (its audit record cannot be written).
    fn writable(&self) -> bool;

    /// Commit figures since the store was opened.
    fn commit_stats(&self) -> WriterStats;

    /// How many bytes the vault takes in storage: RocksDB's files (tables,
    /// write-ahead log, memtables), or the PostgreSQL database's size.
    fn size_bytes(&self) -> StoreFuture<'_, u64>;

    /// Commits a small durable write, to find out whether storage takes
    /// writes again when nothing else is writing.
    fn probe_writes(&self) -> StoreFuture<'_, ()>;

    /// The directory the data lives in, for a backend that keeps it in one
    /// on this machine.
    fn local_dir(&self) -> Option<&Path>;

    /// Writes a consistent copy of everything acknowledged before the call
    /// to `staging` (a new directory), and runs `finish` on it.
    fn backup<'a>(&'a self, staging: &'a Path, finish: BackupFinish) -> StoreFuture<'a, ()>;

    /// Up to `limit` forward entries after `cursor` (from the first when
    /// empty), in a fixed order.
    fn forward_after<'a>(
        &'a self,
        cursor: &'a [u8],
        limit: usize,
    ) -> StoreFuture<'a, Vec<ForwardRow>>;

    /// Stops taking writes once those under way are committed, and makes
    /// them durable. Later calls do nothing.
    fn close(&self) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_falls_in_the_first_bucket_whose_bound_it_does_not_exceed() {
        assert_eq!(commit_bucket(0), 0);
        assert_eq!(commit_bucket(100), 0);
        assert_eq!(commit_bucket(101), 1);
        assert_eq!(commit_bucket(1_000), 3);
        assert_eq!(commit_bucket(1_000_000), COMMIT_MICROS_BUCKETS.len() - 1);
        assert_eq!(commit_bucket(1_000_001), COMMIT_MICROS_BUCKETS.len());
        assert_eq!(commit_bucket(u64::MAX), COMMIT_MICROS_BUCKETS.len());
    }
}
