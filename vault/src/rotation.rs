//! Online key rotation (DESIGN.md §8).
//!
//! `rotate_keys` creates keyset v+1 and makes it active in one commit; from
//! the next commit on, every new mapping is written under v+1 (the writer
//! reads the keyring when it runs a job, not when the request looked). A
//! background job then walks the reverse index in chunks: each mapping still
//! under an older keyset is decrypted, resealed under v+1 and given a forward
//! entry under v+1's blind index (the old entries go, by range, with v). One
//! chunk is one writer job: the moved rows and the job's cursor reach the disk
//! in the same batch, so a crash resumes after the last chunk that did.
//!
//! Tokens never change: a token is the reverse key, which is never rewritten,
//! and a value is found under either keyset while the job runs. The job ends
//! with a full pass that finds nothing left to move — only then are the older
//! keysets destroyed and the column families compacted, so that the old
//! ciphertexts and wrapped keys leave the disk.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::AuditEvent;
use crate::clock::now_secs;
use crate::crypto::{Kek, KeyPurpose, Keyset};
use crate::error::Error;
use crate::keyring::{Keyring, SharedKeyring, reverse_ad};
use crate::namespace::{Namespace, Namespaces};
use crate::store::schema::{
    ForwardKey, KeysetRow, KeysetState, LastRotationRow, ReverseRow, RotationPhase, RotationRow,
};
use crate::store::{Moved, NotStarted, OnCommit, ReverseEntry, RotationStart, Storage, StoreError};

/// Mappings per chunk: large enough that one fsync covers many, small enough
/// that the writer job of a chunk (two writes per mapping, no reads, no
/// crypto) keeps live requests waiting only a few milliseconds.
const CHUNK: usize = 1024;
/// Chunks planned ahead of the one being committed.
const PLANNED_AHEAD: usize = 2;
/// Pause before retrying a chunk after a storage error.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The rotation job's in-memory side: the task, its stop signal and the
/// figures for `GetKeyStatus`.
struct RotationState {
    max_rate: Option<u32>,
    /// This process's name for the rotation lease: host, process id and a
    /// random part, so that a restarted process is a new holder.
    holder: String,
    /// The rotation lease as last granted to this process.
    lease: Mutex<Option<crate::store::Lease>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// On storage other nodes share: looks for a rotation another node
    /// started or left behind, and runs it here if nobody holds its lease.
    watcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    stop: watch::Sender<bool>,
    running: watch::Sender<bool>,
    live: Mutex<Option<Live>>,
    /// Rows that could not be moved (failed their integrity check): they are
    /// lost already, and `phivault verify` lists them.
    damaged: AtomicU64,
}

/// Progress since this process took the job over.
#[derive(Clone, Copy)]
struct Live {
    resumed_at: Instant,
    moved: u64,
}

/// The lease on the rotation job: one node moves mappings at a time.
const LEASE_JOB: &str = "key-rotation";
/// How long a holder keeps the lease without renewing it: a node that
/// died mid-rotation is replaced this long after its last step.
const LEASE_TTL: Duration = Duration::from_secs(15);
/// How often a node without the lease, or a watcher, looks again.
const LEASE_POLL: Duration = Duration::from_secs(2);

impl RotationState {
    fn new(max_rate: Option<u32>) -> Self {
        Self {
            max_rate: max_rate.filter(|&r| r > 0),
            holder: crate::store::holder_name(),
            lease: Mutex::new(None),
            task: Mutex::new(None),
            watcher: Mutex::new(None),
            stop: watch::Sender::new(false),
            running: watch::Sender::new(false),
            live: Mutex::new(None),
            damaged: AtomicU64::new(0),
        }
    }
}

/// A keyset version and where it is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVersion {
    /// The version number; never reused.
    pub version: u32,
    /// Active, retiring or destroyed.
    pub state: KeysetState,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
}

/// A running rotation, as `GetKeyStatus` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct RotationProgress {
    /// The version mappings move to.
    pub target: u32,
    /// What the job is doing.
    pub phase: RotationPhase,
    /// Pass over the mappings: 1 moves them, the last one confirms none is
    /// left.
    pub pass: u32,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    /// Mappings examined in the first pass.
    pub done: u64,
    /// Mappings in the vault when the rotation started (an estimate, never
    /// below `done`).
    pub total: u64,
    /// Mappings moved per second since this process took the job over.
    pub rate: f64,
    /// Time left for the first pass at the current rate.
    pub eta: Option<Duration>,
    /// Rows the job could not move because they failed their integrity check.
    pub damaged: u64,
}

/// The last completed rotation.
pub type LastRotation = LastRotationRow;

/// The vault's keys: every version, the rotation in progress and the last
/// one completed.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyStatus {
    /// The version new mappings are written under.
    pub active: u32,
    /// Every version ever created, oldest first.
    pub versions: Vec<KeyVersion>,
    /// The rotation in progress, if any.
    pub rotation: Option<RotationProgress>,
    /// The last rotation that completed, if any.
    pub last_rotation: Option<LastRotation>,
}

/// The reverse rows of one chunk, in order, each with its cursor and plan.
type Chunk = Vec<(Vec<u8>, Planned)>;

/// One reverse row of a chunk and what the job will do with it.
enum Planned {
    /// Reseal and re-index under the target keyset.
    Move(Moved),
    /// Already under the target keyset.
    Skip,
    /// Cannot be opened; left where it is.
    Damaged,
}

/// What one chunk's writer job did.
struct Applied {
    /// The rotation record as the job left it.
    row: RotationRow,
    moved: u64,
}

enum Step {
    Continue,
    Finished,
}

/// The key-rotation job of an unsealed vault: starts rotations, runs the
/// background job that moves the mappings, and reports progress. Owns its
/// state and a handle on the storage, keyring and namespaces it works on;
/// knows nothing of the vault that uses it.
pub(crate) struct Rotator(Arc<Job>);

struct Job {
    store: Arc<dyn Storage>,
    keyring: SharedKeyring,
    namespaces: Arc<Namespaces>,
    rotation: RotationState,
}

impl Rotator {
    pub(crate) fn new(
        store: Arc<dyn Storage>,
        keyring: SharedKeyring,
        namespaces: Arc<Namespaces>,
        max_rate: Option<u32>,
    ) -> Self {
        Self(Arc::new(Job {
            store,
            keyring,
            namespaces,
            rotation: RotationState::new(max_rate),
        }))
    }

    /// Starts a rotation (see [`Job::start`]) and its background job.
    pub(crate) async fn start(&self, kek: &Kek, audit: Option<AuditEvent>) -> Result<u32, Error> {
        let version = self.0.start(kek, audit).await?;
        self.0.spawn_rotation();
        Ok(version)
    }

    /// Resumes a rotation that a previous process left unfinished.
    pub(crate) async fn resume(&self) -> Result<(), Error> {
        self.0.resume().await
    }

    /// Stops the job after its current chunk and waits for it.
    pub(crate) async fn stop(&self) {
        self.0.stop().await;
    }

    /// Tells the job to stop after its current chunk, without waiting.
    pub(crate) fn signal_stop(&self) {
        self.0.rotation.stop.send_replace(true);
    }

    /// Waits until no rotation job runs in this process.
    pub(crate) async fn settled(&self) {
        self.0.settled().await;
    }

    /// Key versions, the rotation in progress and the last one completed.
    pub(crate) async fn status(&self) -> Result<KeyStatus, Error> {
        self.0.status().await
    }
}

impl Job {
    fn keyring(&self) -> Arc<Keyring> {
        Arc::clone(&self.keyring.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Starts a key rotation: keyset v+1 is created and active for new
    /// writes as soon as this returns; a background job moves the existing
    /// mappings and destroys v when done. Returns the new version; `audit`
    /// (its `target` set to the new keyset) is appended in the same commit.
    ///
    /// Fails with [`Error::RotationInProgress`] while a rotation runs.
    async fn start(&self, kek: &Kek, audit: Option<AuditEvent>) -> Result<u32, Error> {
        // Destroyed versions keep their rows, so a number is never reused.
        let newest = self
            .store
            .keyset_rows()
            .await?
            .iter()
            .map(|(version, _)| *version)
            .max()
            .unwrap_or(0);
        let version = newest + 1;
        let audited = audit.map(|mut event| {
            event.target = format!("keyset {version}");
            crate::audit::pending(self.keyring().active.version(), &event)
        });
        let keyset = Arc::new(Keyset::generate(version).map_err(Error::Crypto)?);
        let wrapped = keyset.wrap(kek, KeyPurpose::Data).map_err(Error::Crypto)?;
        let total = self.store.estimate_mappings().await?;
        let shared = Arc::clone(&self.keyring);
        let now = now_secs();
        let start = RotationStart {
            version,
            keyset: KeysetRow {
                state: KeysetState::Active,
                created_at: now,
                wrapped,
            },
            record: RotationRow {
                target: version,
                phase: RotationPhase::Migrating,
                started_at: now,
                done: 0,
                total,
                pass: 1,
                moved_in_pass: 0,
                cursor: Vec::new(),
            },
        };
        // In force before the next commit: no job after this one writes
        // under the retiring keyset.
        let on_commit: OnCommit = Box::new(move || {
            let mut ring = shared.write().unwrap_or_else(|e| e.into_inner());
            let mut by_version = ring.by_version.clone();
            by_version.insert(version, Arc::clone(&keyset));
            *ring = Arc::new(Keyring::new(keyset, by_version));
        });
        let started = self
            .store
            .start_rotation(start, audited, on_commit)
            .await?
            .map_err(|NotStarted::InProgress| Error::RotationInProgress)?;
        tracing::info!(
            from = started,
            to = version,
            estimated_mappings = total,
            "key rotation started"
        );
        Ok(version)
    }

    /// Resumes a rotation that a previous process left unfinished. Call once
    /// after opening, inside the runtime that should run it.
    async fn resume(self: &Arc<Self>) -> Result<(), Error> {
        if self.store.shared() {
            self.spawn_watcher();
        }
        if let Some(row) = self.store.rotation().await? {
            tracing::info!(
                to = row.target,
                pass = row.pass,
                done = row.done,
                "resuming key rotation"
            );
            self.spawn_rotation();
        }
        Ok(())
    }

    /// Stops the background jobs after their current chunk (their cursor is
    /// on disk; the next start resumes them) and waits for them.
    async fn stop(&self) {
        if let Some(watcher) = self
            .rotation
            .watcher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            watcher.abort();
        }
        self.rotation.stop.send_replace(true);
        let task = self
            .rotation
            .task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Waits until no rotation job runs in this process.
    async fn settled(&self) {
        let mut running = self.rotation.running.subscribe();
        let _ = running.wait_for(|r| !r).await;
    }

    /// Key versions, the rotation in progress and the last one completed.
    async fn status(&self) -> Result<KeyStatus, Error> {
        let versions = self
            .store
            .keyset_rows()
            .await?
            .into_iter()
            .map(|(version, row)| KeyVersion {
                version,
                state: row.state,
                created_at: row.created_at,
            })
            .collect();
        let rotation = self.store.rotation().await?.map(|row| {
            let live = *self.rotation.live.lock().unwrap_or_else(|e| e.into_inner());
            let rate = live.map_or(0.0, |l| {
                l.moved as f64 / l.resumed_at.elapsed().as_secs_f64().max(1e-3)
            });
            let total = row.total.max(row.done);
            let eta = (row.phase == RotationPhase::Migrating && row.pass == 1 && rate > 0.0)
                .then(|| Duration::from_secs_f64((total - row.done) as f64 / rate));
            RotationProgress {
                target: row.target,
                phase: row.phase,
                pass: row.pass,
                started_at: row.started_at,
                done: row.done,
                total,
                rate,
                eta,
                damaged: self.rotation.damaged.load(Ordering::Relaxed),
            }
        });
        let last_rotation = self.store.last_rotation().await?;
        Ok(KeyStatus {
            active: self.keyring().active.version(),
            versions,
            rotation,
            last_rotation,
        })
    }

    /// Every [`LEASE_POLL`], runs the rotation job here if a rotation is
    /// recorded and this node runs none: the job then waits for the lease,
    /// which the node that started the rotation holds until it finishes or
    /// dies.
    fn spawn_watcher(self: &Arc<Self>) {
        let job = Arc::clone(self);
        let watcher = tokio::spawn(async move {
            loop {
                tokio::time::sleep(LEASE_POLL).await;
                if matches!(job.store.rotation().await, Ok(Some(_)))
                    && !*job.rotation.running.borrow()
                    && !*job.rotation.stop.borrow()
                {
                    job.spawn_rotation();
                }
            }
        });
        if let Some(old) = self
            .rotation
            .watcher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(watcher)
        {
            old.abort();
        }
    }

    /// Takes or renews the rotation lease; `false` while another node
    /// holds it. The job's steps are each conditional on the rotation
    /// record, so a node that lost the lease without knowing it changes
    /// nothing the holder did: the lease keeps the work from being done
    /// twice, the record keeps it right.
    async fn hold_lease(&self) -> Result<bool, Error> {
        let granted = self
            .store
            .acquire_lease(LEASE_JOB, &self.rotation.holder, LEASE_TTL)
            .await?;
        let held = granted.is_some();
        *self
            .rotation
            .lease
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = granted;
        Ok(held)
    }

    /// Gives the lease up once the rotation is done, so that the next one
    /// starts without waiting for it to expire.
    async fn release_lease(&self) {
        let lease = self
            .rotation
            .lease
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(lease) = lease
            && let Err(e) = self.store.release_lease(&lease).await
        {
            tracing::warn!(error = %e, "cannot give the key rotation lease up; it expires by itself");
        }
    }

    fn spawn_rotation(self: &Arc<Self>) {
        let mut task = self.rotation.task.lock().unwrap_or_else(|e| e.into_inner());
        // `running` is cleared only under this lock, by a job that found no
        // newer rotation waiting and looks once more after clearing it
        // (below): a rotation recorded while a job ends is run either by
        // that job or by a new one.
        if *self.rotation.running.borrow() {
            return;
        }
        self.rotation.stop.send_replace(false);
        self.rotation.running.send_replace(true);
        *self.rotation.live.lock().unwrap_or_else(|e| e.into_inner()) = Some(Live {
            resumed_at: Instant::now(),
            moved: 0,
        });
        let vault = Arc::clone(self);
        *task = Some(tokio::spawn(async move {
            loop {
                async fn target(vault: &Job) -> Option<u32> {
                    vault
                        .store
                        .rotation()
                        .await
                        .ok()
                        .flatten()
                        .map(|r| r.target)
                }
                let ran = target(&vault).await;
                vault.run_rotation().await;
                let next = target(&vault).await;
                let stopping = {
                    let _task = vault
                        .rotation
                        .task
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    let stopping = *vault.rotation.stop.borrow();
                    if !stopping && next.is_some_and(|next| Some(next) > ran) {
                        continue;
                    }
                    *vault
                        .rotation
                        .live
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = None;
                    vault.rotation.running.send_replace(false);
                    stopping
                };
                // A rotation recorded after `next` was read found `running`
                // still set and left itself to this job: look once more now
                // that it is clear (a second spawn while one runs does
                // nothing).
                if !stopping && target(&vault).await.is_some_and(|now| Some(now) > ran) {
                    vault.spawn_rotation();
                }
                break;
            }
        }));
    }

    async fn run_rotation(self: &Arc<Self>) {
        let mut stop = self.rotation.stop.subscribe();
        loop {
            if *stop.borrow() {
                tracing::info!("key rotation paused for shutdown; it resumes on the next start");
                return;
            }
            match self.hold_lease().await {
                Ok(true) => {}
                Ok(false) => {
                    // Another node runs the job; take over if it stops
                    // renewing, or stop waiting once the rotation is done.
                    if matches!(self.store.rotation().await, Ok(None)) {
                        return;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(LEASE_POLL) => {}
                        _ = stop.changed() => {}
                    }
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot take the key rotation lease; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(RETRY_AFTER) => {}
                        _ = stop.changed() => {}
                    }
                    continue;
                }
            }
            match self.rotation_step(&mut stop).await {
                Ok(Step::Continue) => {}
                Ok(Step::Finished) => {
                    self.release_lease().await;
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "key rotation chunk failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(RETRY_AFTER) => {}
                        _ = stop.changed() => {}
                    }
                    continue;
                }
            }
            self.throttle(&mut stop).await;
        }
    }

    /// Holds the job to `rotation_max_rate` mappings per second, if set.
    async fn throttle(&self, stop: &mut watch::Receiver<bool>) {
        let Some(rate) = self.rotation.max_rate else {
            return;
        };
        let Some(live) = *self.rotation.live.lock().unwrap_or_else(|e| e.into_inner()) else {
            return;
        };
        let due = Duration::from_secs_f64(live.moved as f64 / f64::from(rate));
        if let Some(wait) = due.checked_sub(live.resumed_at.elapsed()) {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
    }

    async fn rotation_step(
        self: &Arc<Self>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Step, Error> {
        let Some(row) = self.store.rotation().await? else {
            return Ok(Step::Finished);
        };
        match row.phase {
            RotationPhase::Migrating => self.migrate(row, stop).await,
            RotationPhase::Compacting => {
                self.compact_and_finish(row).await?;
                Ok(Step::Finished)
            }
        }
    }

    /// Runs the rest of a pass as a pipeline: a planner task reads and
    /// re-encrypts the next chunks (on a blocking thread) while the writer
    /// commits the current one, so the crypto and the commits overlap.
    async fn migrate(
        self: &Arc<Self>,
        mut row: RotationRow,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Step, Error> {
        let (sender, mut chunks) = mpsc::channel::<Result<Option<Chunk>, Error>>(PLANNED_AHEAD);
        let planner = {
            let vault = Arc::clone(self);
            let (mut cursor, target) = (row.cursor.clone(), row.target);
            tokio::spawn(async move {
                loop {
                    let planned = vault.plan_chunk(target, cursor.clone()).await;
                    let last = match &planned {
                        Ok(Some(chunk)) => chunk.last().map(|(cursor, _)| cursor.clone()),
                        _ => None,
                    };
                    if sender.send(planned).await.is_err() {
                        return;
                    }
                    match last {
                        Some(last) => cursor = last,
                        None => return,
                    }
                }
            })
        };
        let outcome = loop {
            let step = match chunks.recv().await {
                None => Ok(Step::Continue),
                Some(Err(e)) => Err(e),
                Some(Ok(None)) => self.end_pass(row.clone()).await,
                Some(Ok(Some(chunk))) => match self.commit_chunk(&row, chunk).await {
                    Ok(Some(next)) => {
                        row = next;
                        if *stop.borrow() {
                            Ok(Step::Continue)
                        } else {
                            self.throttle(stop).await;
                            continue;
                        }
                    }
                    // The record changed under the job: start again from what
                    // is on disk.
                    Ok(None) => Ok(Step::Continue),
                    Err(e) => Err(e),
                },
            };
            break step;
        };
        // The planner stops at its next send; wait for it so that nothing
        // holds the vault once the job has returned.
        drop(chunks);
        let _ = planner.await;
        outcome
    }

    /// Reads the chunk after `cursor` and plans each row; `None` at the end
    /// of the reverse index.
    async fn plan_chunk(
        self: &Arc<Self>,
        target: u32,
        cursor: Vec<u8>,
    ) -> Result<Option<Chunk>, Error> {
        let rows = self.store.reverse_after(&cursor, CHUNK).await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let ring = self.keyring();
        let namespaces = self.namespaces.by_id();
        // Opening and resealing a chunk is the job's CPU: off the async
        // workers.
        let chunk = tokio::task::spawn_blocking(move || {
            rows.into_iter()
                .map(|entry| {
                    let plan = plan(&ring, &namespaces, target, &entry);
                    (entry.cursor, plan)
                })
                .collect()
        })
        .await
        .map_err(|_| StoreError::JobPanicked)?;
        Ok(Some(chunk))
    }

    /// Commits one planned chunk with the cursor after it; returns the
    /// rotation record as it now is on disk, or `None` if it was not `row`.
    async fn commit_chunk(
        self: &Arc<Self>,
        row: &RotationRow,
        chunk: Chunk,
    ) -> Result<Option<RotationRow>, Error> {
        // Counted in the first pass only: later passes meet the same rows.
        let damaged = if row.pass == 1 {
            chunk
                .iter()
                .filter(|(_, p)| matches!(p, Planned::Damaged))
                .count() as u64
        } else {
            0
        };
        let mut next = row.clone();
        let examined = chunk.len() as u64;
        let mut moved = Vec::with_capacity(chunk.len());
        for (cursor, plan) in chunk {
            if let Planned::Move(m) = plan {
                moved.push(m);
            }
            next.cursor = cursor;
        }
        if next.pass == 1 {
            next.done += examined;
        }
        let count = moved.len() as u64;
        next.moved_in_pass += count;
        if !self
            .store
            .apply_chunk(row.clone(), next.clone(), moved)
            .await?
        {
            return Ok(None);
        }
        let applied = Applied {
            row: next,
            moved: count,
        };
        if damaged > 0 {
            self.rotation.damaged.fetch_add(damaged, Ordering::Relaxed);
            tracing::error!(
                rows = damaged,
                "key rotation: rows failed their integrity check and stay unreadable; run `phivault verify`"
            );
        }
        if let Some(live) = self
            .rotation
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            live.moved += applied.moved;
        }
        Ok(Some(applied.row))
    }

    /// The cursor reached the end of the reverse index: start another pass,
    /// or — when a whole pass moved nothing — destroy the older keysets.
    async fn end_pass(self: &Arc<Self>, row: RotationRow) -> Result<Step, Error> {
        if row.moved_in_pass > 0 {
            let next = RotationRow {
                pass: row.pass + 1,
                moved_in_pass: 0,
                cursor: Vec::new(),
                ..row.clone()
            };
            tracing::info!(
                pass = next.pass,
                "key rotation: checking that no mapping is left behind"
            );
            self.store.advance_rotation(row, next).await?;
            return Ok(Step::Continue);
        }
        let shared = Arc::clone(&self.keyring);
        let namespace_ids: Vec<u32> = self.namespaces.by_id().into_keys().collect();
        let compacting = RotationRow {
            phase: RotationPhase::Compacting,
            cursor: Vec::new(),
            ..row.clone()
        };
        let on_commit: OnCommit = Box::new(move || {
            let mut ring = shared.write().unwrap_or_else(|e| e.into_inner());
            let active = Arc::clone(&ring.active);
            let by_version = HashMap::from([(active.version(), Arc::clone(&active))]);
            *ring = Arc::new(Keyring::new(active, by_version));
        });
        let destroyed = self
            .store
            .retire_keysets(row, compacting, now_secs(), namespace_ids, on_commit)
            .await?;
        tracing::info!(versions = ?destroyed, "key rotation: every mapping moved; older keysets destroyed");
        Ok(Step::Continue)
    }

    async fn compact_and_finish(self: &Arc<Self>, row: RotationRow) -> Result<(), Error> {
        let started = Instant::now();
        self.store.reclaim().await?;
        let last = LastRotationRow {
            target: row.target,
            started_at: row.started_at,
            finished_at: now_secs(),
            mappings: row.done,
        };
        self.store.finish_rotation(row.clone(), last).await?;
        tracing::info!(
            to = row.target,
            mappings = row.done,
            compaction_ms = started.elapsed().as_millis() as u64,
            "key rotation complete; old ciphertexts compacted away"
        );
        Ok(())
    }
}

/// Off the writer thread: opens a row under its keyset and reseals it under
/// the target, with both blind indexes of its value.
fn plan(
    ring: &Keyring,
    namespaces: &HashMap<u32, Arc<Namespace>>,
    target: u32,
    entry: &ReverseEntry,
) -> Planned {
    let Some(row) = ReverseRow::decode(&entry.row) else {
        return Planned::Damaged;
    };
    if row.version == target {
        return Planned::Skip;
    }
    let (Some(ns_id), Ok(token)) = (entry.namespace, std::str::from_utf8(&entry.token)) else {
        return Planned::Damaged;
    };
    let (Some(ns), Some(old), Some(new)) = (
        namespaces.get(&ns_id),
        ring.by_version.get(&row.version),
        ring.by_version.get(&target),
    ) else {
        return Planned::Damaged;
    };
    let Ok(plain) = old.enc().open(
        &reverse_ad(ns_id, token, row.version).each(),
        &row.ciphertext,
    ) else {
        return Planned::Damaged;
    };
    let Ok(ciphertext) = new
        .enc()
        .seal(&reverse_ad(ns_id, token, target).each(), &plain)
    else {
        return Planned::Damaged;
    };
    let forward = ns.deterministic.then(|| {
        let key = ForwardKey::new(ns_id, target, &new.prf().blind_index(ns_id, &plain));
        (key, key.bind(new.prf(), token.as_bytes()))
    });
    Planned::Move(Moved {
        namespace: ns_id,
        token: token.to_owned(),
        row: ReverseRow {
            version: target,
            created_at: row.created_at,
            ciphertext,
        }
        .encode(),
        forward,
    })
}
