//! The single writer: one thread owns every RocksDB write. Jobs queue on a
//! bounded channel; the writer drains whatever is queued, runs each job
//! against one overlay of pending writes, commits them as one `WriteBatch`
//! (fsynced by default), then answers every waiter. This is group commit:
//! under load one fsync covers many requests.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use rocksdb::{WriteBatch, WriteOptions};
use tokio::sync::{mpsc, oneshot};

use super::{Cf, Inner, integrity};
use crate::store::{
    BATCH_BUCKETS, COMMIT_MICROS_BUCKETS, Durability, StoreError, WriterStats, commit_bucket,
};

/// Jobs waiting for the writer before submitters have to wait.
const QUEUE_DEPTH: usize = 4096;
/// Jobs folded into one commit at most, so a flood of small requests still
/// sees its answers in bounded time.
const MAX_JOBS_PER_COMMIT: usize = 1024;
/// Reads and writes one commit's jobs may make before the writer stops taking
/// more jobs into it: the jobs queued behind (audit records of reveals among
/// them) wait for at most this much work, whatever a batch asks for.
const COMMIT_BUDGET: usize = 200_000;

type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
type Job = Box<dyn FnOnce(&mut Txn<'_>) -> Completion + Send>;
/// Work a job asks to run on the writer thread once its commit is durable and
/// before any later commit: installing a new keyring, taking a checkpoint.
type AfterCommit = Box<dyn FnOnce() + Send>;

pub(super) struct Writer {
    /// Taken (closing the queue) when the writer stops.
    sender: std::sync::Mutex<Option<mpsc::Sender<Job>>>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    jobs: AtomicU64,
    batches: [AtomicU64; BATCH_BUCKETS.len()],
    /// Commits that wrote, by how long the write and its sync took.
    commit_micros: [AtomicU64; COMMIT_MICROS_BUCKETS.len() + 1],
    commit_micros_sum: AtomicU64,
    failed_commits: AtomicU64,
    panicked_jobs: AtomicU64,
    /// Whether the latest commit failed: the write path is down until one
    /// succeeds again.
    failing: AtomicBool,
    /// Whether the writer thread has ended (stopped or died).
    ended: AtomicBool,
}

impl Counters {
    fn time_commit(&self, took: std::time::Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.commit_micros[commit_bucket(micros)].fetch_add(1, Ordering::Relaxed);
        self.commit_micros_sum.fetch_add(micros, Ordering::Relaxed);
    }
}

/// Marks the writer ended when its thread leaves `run`, however it leaves.
struct EndGuard<'a>(&'a Counters);

impl Drop for EndGuard<'_> {
    fn drop(&mut self) {
        self.0.ended.store(true, Ordering::Release);
    }
}

impl Writer {
    pub(super) fn start(inner: Arc<Inner>, durability: Durability) -> Result<Self, StoreError> {
        let (sender, receiver) = mpsc::channel(QUEUE_DEPTH);
        let counters = Arc::new(Counters::default());
        let thread_counters = Arc::clone(&counters);
        let thread = std::thread::Builder::new()
            .name("phivault-writer".into())
            .spawn(move || {
                let _ended = EndGuard(&thread_counters);
                run(&inner, durability, receiver, &thread_counters);
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            sender: std::sync::Mutex::new(Some(sender)),
            thread: std::sync::Mutex::new(Some(thread)),
            counters,
        })
    }

    pub(super) async fn submit<R, F>(&self, job: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Txn<'_>) -> Result<R, StoreError> + Send + 'static,
    {
        // A clone of the sender (one reference count) so that no lock is
        // held across the wait for a queue slot; dropped once the job is
        // queued, so that a stopping writer waits only for jobs being queued,
        // not for their answers.
        let sender = self
            .sender
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(StoreError::WriterStopped)?;
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |txn: &mut Txn<'_>| {
            txn.begin_job();
            match job(txn) {
                Ok(value) => Box::new(move |committed: Result<(), StoreError>| {
                    let _ = reply.send(committed.map(|()| value));
                }),
                Err(e) => {
                    txn.rollback_job();
                    Box::new(move |_| {
                        let _ = reply.send(Err(e));
                    })
                }
            }
        });
        sender
            .send(job)
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        drop(sender);
        // A reply dropped unanswered while the writer lives means the job
        // panicked (and was discarded); otherwise the writer is gone.
        answer.await.map_err(|_| {
            if self.counters.ended.load(Ordering::Acquire) {
                StoreError::WriterStopped
            } else {
                StoreError::JobPanicked
            }
        })?
    }

    /// Whether commits can be made now: the writer runs and its latest
    /// commit did not fail.
    pub(super) fn is_healthy(&self) -> bool {
        !self.counters.ended.load(Ordering::Acquire)
            && !self.counters.failing.load(Ordering::Acquire)
    }

    pub(super) fn stats(&self) -> WriterStats {
        WriterStats {
            commits: self.counters.commits.load(Ordering::Relaxed),
            jobs: self.counters.jobs.load(Ordering::Relaxed),
            batches: std::array::from_fn(|i| self.counters.batches[i].load(Ordering::Relaxed)),
            commit_micros: std::array::from_fn(|i| {
                self.counters.commit_micros[i].load(Ordering::Relaxed)
            }),
            commit_micros_sum: self.counters.commit_micros_sum.load(Ordering::Relaxed),
            failed_commits: self.counters.failed_commits.load(Ordering::Relaxed),
            panicked_jobs: self.counters.panicked_jobs.load(Ordering::Relaxed),
            queued: self
                .sender
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map_or(0, |s| (s.max_capacity() - s.capacity()) as u64),
        }
    }

    /// Closes the queue, lets the writer commit what was queued, and joins
    /// it. Later calls do nothing.
    pub(super) fn stop(&self) {
        self.sender.lock().unwrap_or_else(|e| e.into_inner()).take();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!("the storage writer thread panicked");
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(
    inner: &Inner,
    durability: Durability,
    mut receiver: mpsc::Receiver<Job>,
    counters: &Counters,
) {
    let mut write_options = WriteOptions::default();
    write_options.set_sync(durability == Durability::Fsync);
    let sync_wait = sync_wait_for_bench();
    let mut jobs = Vec::with_capacity(MAX_JOBS_PER_COMMIT);
    while let Some(first) = receiver.blocking_recv() {
        let mut txn = Txn::new(inner);
        let mut completions: Vec<Completion> = Vec::with_capacity(MAX_JOBS_PER_COMMIT);
        jobs.push(first);
        // Jobs run as they are taken, so that the budget can end the commit
        // early; what is left in the queue goes into the next one.
        while let Some(job) = jobs.pop() {
            completions.extend(run_job(job, &mut txn, counters));
            if completions.len() >= MAX_JOBS_PER_COMMIT || txn.work >= COMMIT_BUDGET {
                break;
            }
            if let Ok(job) = receiver.try_recv() {
                jobs.push(job);
            }
        }
        let (written, after) = txn.commit(&write_options);
        if let (Some(wait), Ok(Some(_))) = (sync_wait, &written) {
            std::thread::sleep(wait);
        }
        if let Ok(Some(took)) = written {
            counters.time_commit(took);
        }
        let written = written.map(|took| took.is_some());
        let committed = written.map(|wrote| {
            // Only a batch that reached the store says the store takes
            // writes: an empty one (every job failed, a checkpoint) does not.
            if wrote {
                counters.failing.store(false, Ordering::Release);
            }
        });
        match &committed {
            Ok(()) => {
                for hook in after {
                    // A post-commit step installs state (a new keyring) that
                    // later commits rely on; if it panics, memory and disk may
                    // disagree, and carrying on could seal mappings under a
                    // keyset being retired. Stop the process so that a
                    // supervisor restarts it from what is on disk.
                    if catch_unwind(AssertUnwindSafe(hook)).is_err() {
                        tracing::error!(
                            "a post-commit step panicked; stopping the process so that it restarts from the state on disk"
                        );
                        std::process::abort();
                    }
                }
            }
            Err(e) => {
                counters.failing.store(true, Ordering::Release);
                counters.failed_commits.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, jobs = completions.len(), "group commit failed; every job in it fails");
            }
        }
        counters.commits.fetch_add(1, Ordering::Relaxed);
        counters
            .jobs
            .fetch_add(completions.len() as u64, Ordering::Relaxed);
        // Jobs that panicked were counted apart; the histogram counts the
        // ones answered.
        let bucket = BATCH_BUCKETS.partition_point(|&upper| upper < completions.len() as u64);
        if let Some(count) = counters.batches.get(bucket) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        for complete in completions {
            complete(committed.clone());
        }
    }
}

/// Bench-only: how long the writer waits after each commit that wrote, as if
/// its sync had taken that long (`PHIVAULT_BENCH_SYNC_WAIT_US`). With
/// `--durability os` it separates what waiting for a sync costs the callers
/// from what the sync itself costs the machine. Compiled in only with the
/// `bench-switches` feature.
fn sync_wait_for_bench() -> Option<std::time::Duration> {
    #[cfg(feature = "bench-switches")]
    if let Some(micros) = std::env::var("PHIVAULT_BENCH_SYNC_WAIT_US")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        tracing::warn!(
            "BENCHMARK BUILD: PHIVAULT_BENCH_SYNC_WAIT_US is set; the writer waits {micros} µs after each commit"
        );
        return Some(std::time::Duration::from_micros(micros));
    }
    None
}

/// Runs one job against the commit's overlay. A job that panics is undone
/// and dropped, and its submitter is told [`StoreError::JobPanicked`]: a bug
/// in one job must not end the writer, and with it every write and every
/// audit record of the process.
fn run_job(job: Job, txn: &mut Txn<'_>, counters: &Counters) -> Option<Completion> {
    match catch_unwind(AssertUnwindSafe(|| job(txn))) {
        Ok(completion) => Some(completion),
        Err(_) => {
            txn.rollback_job();
            counters.panicked_jobs.fetch_add(1, Ordering::Relaxed);
            tracing::error!("a storage job panicked; it was discarded and its caller failed");
            None
        }
    }
}

/// Key → pending value (`None`: a pending delete). Ordered, so that the
/// batch reaches the memtable in key order: consecutive inserts then reuse
/// the skip list's search path (a rotation chunk is a run of adjacent reverse
/// keys), where a hash order made every insert a full descent.
type Overlay = BTreeMap<Box<[u8]>, Option<Box<[u8]>>>;
/// A key a job touched and the overlay's entry for it before (`None`: none).
type Undo = (Cf, Box<[u8]>, Option<Option<Box<[u8]>>>);

/// A range deletion: `(cf, from, to)`, `to` exclusive.
type RangeDelete = (Cf, Box<[u8]>, Box<[u8]>);

/// The pending writes of one group commit, as jobs see them: reads return
/// what earlier jobs of the same commit wrote, then what is on disk.
pub struct Txn<'a> {
    inner: &'a Inner,
    writes: [Overlay; Cf::ALL.len()],
    /// For the running job: each key it touched and what the overlay held
    /// for that key before, so that a failed job can be undone.
    undo: Vec<Undo>,
    ranges: Vec<RangeDelete>,
    after: Vec<AfterCommit>,
    /// `ranges.len()` and `after.len()` when the running job began.
    marks: (usize, usize),
    /// Reads and writes made so far, against the writer's commit budget.
    work: usize,
}

impl<'a> Txn<'a> {
    fn new(inner: &'a Inner) -> Self {
        Self {
            inner,
            writes: Default::default(),
            undo: Vec::new(),
            ranges: Vec::new(),
            after: Vec::new(),
            marks: (0, 0),
            work: 0,
        }
    }

    /// Reads a key as the commit will leave it.
    pub fn get(&mut self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.work += 1;
        match self.writes[cf.index()].get(key) {
            Some(pending) => Ok(pending.as_deref().map(<[u8]>::to_vec)),
            None => {
                let stored = self.inner.db.get_cf(self.inner.cf(cf), key)?;
                self.inner.unseal(cf, key, stored)
            }
        }
    }

    /// Whether a key exists as the commit will leave it.
    pub fn contains(&mut self, cf: Cf, key: &[u8]) -> Result<bool, StoreError> {
        self.work += 1;
        match self.writes[cf.index()].get(key) {
            Some(pending) => Ok(pending.is_some()),
            None => Ok(self
                .inner
                .db
                .get_pinned_cf(self.inner.cf(cf), key)?
                .is_some()),
        }
    }

    /// Writes a key.
    pub fn put(&mut self, cf: Cf, key: impl Into<Box<[u8]>>, value: impl Into<Box<[u8]>>) {
        self.set(cf, key.into(), Some(value.into()));
    }

    /// Deletes a key.
    pub fn delete(&mut self, cf: Cf, key: impl Into<Box<[u8]>>) {
        self.set(cf, key.into(), None);
    }

    fn set(&mut self, cf: Cf, key: Box<[u8]>, value: Option<Box<[u8]>>) {
        self.work += 1;
        let previous = self.writes[cf.index()].insert(key.clone(), value);
        self.undo.push((cf, key, previous));
    }

    /// Deletes every key of `cf` in `from..to`. Applied before the commit's
    /// other writes and invisible to reads within the commit: meant for
    /// dropping whole key ranges that nothing reads any more (the forward
    /// entries of a destroyed keyset).
    pub fn delete_range(&mut self, cf: Cf, from: impl Into<Box<[u8]>>, to: impl Into<Box<[u8]>>) {
        self.ranges.push((cf, from.into(), to.into()));
    }

    /// Runs `hook` on the writer thread once this commit is durable, before
    /// the next commit starts and before any job of this commit is answered.
    /// Dropped if the job fails or the commit does.
    pub fn after_commit(&mut self, hook: impl FnOnce() + Send + 'static) {
        self.after.push(Box::new(hook));
    }

    fn begin_job(&mut self) {
        self.undo.clear();
        self.marks = (self.ranges.len(), self.after.len());
    }

    fn rollback_job(&mut self) {
        self.ranges.truncate(self.marks.0);
        self.after.truncate(self.marks.1);
        while let Some((cf, key, previous)) = self.undo.pop() {
            match previous {
                Some(value) => self.writes[cf.index()].insert(key, value),
                None => self.writes[cf.index()].remove(&key),
            };
        }
    }

    /// Commits the batch; `Ok(Some(how long the write took to be durable))`
    /// when it held writes.
    fn commit(
        self,
        options: &WriteOptions,
    ) -> (
        Result<Option<std::time::Duration>, StoreError>,
        Vec<AfterCommit>,
    ) {
        let result = self.write_batch(options);
        (result, self.after)
    }

    fn write_batch(
        &self,
        options: &WriteOptions,
    ) -> Result<Option<std::time::Duration>, StoreError> {
        let mut batch = WriteBatch::default();
        for (cf, from, to) in &self.ranges {
            batch.delete_range_cf(self.inner.cf(*cf), from, to);
        }
        let mac = self.inner.row_mac();
        for cf in Cf::ALL {
            let handle = self.inner.cf(cf);
            for (key, value) in &self.writes[cf.index()] {
                match (value, &mac) {
                    (Some(value), Some(mac)) if integrity::protects(cf, key) => {
                        batch.put_cf(handle, key, mac.seal(cf.name(), key, value));
                    }
                    (Some(value), _) => batch.put_cf(handle, key, value),
                    (None, _) => batch.delete_cf(handle, key),
                }
            }
        }
        if batch.is_empty() {
            return Ok(None);
        }
        refuse_while_failpoint_file_exists()?;
        let started = std::time::Instant::now();
        self.inner.db.write_opt(batch, options)?;
        Ok(Some(started.elapsed()))
    }
}

/// With the test-only `failpoints` feature: every commit fails while the
/// file that `PHIVAULT_FAIL_COMMITS_WHILE` names exists, as when the disk is
/// full, and succeeds again once it is gone. How the tests prove that calls
/// fail closed and the vault recovers by itself. Compiled out otherwise.
fn refuse_while_failpoint_file_exists() -> Result<(), StoreError> {
    #[cfg(feature = "failpoints")]
    if let Some(path) = std::env::var_os("PHIVAULT_FAIL_COMMITS_WHILE")
        && std::path::Path::new(&path).exists()
    {
        return Err(StoreError::Unavailable(
            "failpoint: commits refused (simulated I/O error)".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, StoreOptions};

    #[test]
    fn rollback_restores_what_earlier_jobs_of_the_commit_wrote() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::create(dir.path(), &StoreOptions::default()).expect("create");
        let mut txn = Txn::new(&store.inner);
        txn.begin_job();
        txn.put(Cf::Meta, &b"k"[..], &b"first"[..]);
        txn.begin_job();
        txn.put(Cf::Meta, &b"k"[..], &b"second"[..]);
        txn.put(Cf::Meta, &b"new"[..], &b"x"[..]);
        txn.delete(Cf::Meta, &b"new"[..]);
        assert_eq!(
            txn.get(Cf::Meta, b"k").expect("get"),
            Some(b"second".to_vec())
        );
        txn.rollback_job();
        assert_eq!(
            txn.get(Cf::Meta, b"k").expect("get"),
            Some(b"first".to_vec())
        );
        assert!(!txn.contains(Cf::Meta, b"new").expect("get"));
        assert!(
            txn.commit(&WriteOptions::default())
                .0
                .expect("commit")
                .is_some()
        );
        assert_eq!(
            store.get(Cf::Meta, b"k").expect("get"),
            Some(b"first".to_vec())
        );
        assert_eq!(store.get(Cf::Meta, b"new").expect("get"), None);
    }

    #[tokio::test]
    async fn a_panicking_job_fails_alone_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::create(dir.path(), &StoreOptions::default()).expect("create");
        let panicked = store
            .write(|txn| {
                txn.put(Cf::Meta, &b"half"[..], &b"done"[..]);
                if txn.contains(Cf::Meta, b"half")? {
                    panic!("a bug in a job");
                }
                Ok(())
            })
            .await;
        assert_eq!(panicked, Err(StoreError::JobPanicked));
        assert!(store.write_path_healthy(), "one bad job is not an outage");
        store
            .write(|txn| {
                txn.put(Cf::Meta, &b"next"[..], &b"1"[..]);
                Ok(())
            })
            .await
            .expect("the writer still commits");
        assert_eq!(store.get(Cf::Meta, b"half").expect("get"), None, "undone");
        assert_eq!(
            store.get(Cf::Meta, b"next").expect("get"),
            Some(b"1".to_vec())
        );
        assert_eq!(store.writer_stats().panicked_jobs, 1);
        store.close().expect("close");
    }

    #[tokio::test]
    async fn a_failed_job_is_discarded_and_the_others_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::create(dir.path(), &StoreOptions::default()).expect("create");
        let failed = store
            .write(|txn| {
                txn.put(Cf::Meta, &b"a"[..], &b"1"[..]);
                Err::<(), _>(StoreError::Unavailable("refused".into()))
            })
            .await;
        assert_eq!(failed, Err(StoreError::Unavailable("refused".into())));
        let seen = store
            .write(|txn| {
                txn.put(Cf::Meta, &b"b"[..], &b"2"[..]);
                txn.get(Cf::Meta, b"b")
            })
            .await
            .expect("commit");
        assert_eq!(seen, Some(b"2".to_vec()), "a job reads its own writes");
        assert_eq!(store.get(Cf::Meta, b"a").expect("get"), None);
        assert_eq!(store.get(Cf::Meta, b"b").expect("get"), Some(b"2".to_vec()));
        let stats = store.writer_stats();
        assert_eq!((stats.jobs, stats.commits), (2, 2));
        assert_eq!(stats.batches[0], 2, "two commits of one job each");
        // Only the commit that wrote is timed: the failed job left an empty
        // batch, which never reached the disk.
        assert_eq!(stats.commit_micros.iter().sum::<u64>(), 1);
        store.close().expect("close");
    }
}
