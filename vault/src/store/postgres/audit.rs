//! The audit chains in PostgreSQL.
//!
//! One chain for every writer would serialise them all on its head (721
//! small transactions a second against 3,049 without, §9), so each node
//! appends to lanes of its own: chains it claims with a lease when it first
//! appends, renews while it runs, and that another node takes over once the
//! lease runs out. A node keeps each lane's head in memory and moves it only
//! once its commit succeeded; a commit whose outcome is unknown (a lost
//! connection) makes it read the head again before the lane's next append.
//!
//! Records are linked on the node (the head is tagged under a key the
//! database never sees) and written with the head's move in one statement
//! that moves the head only from the one the node linked to. Ownership of a
//! lane is for speed, not for correctness: if two nodes ever append to one
//! lane, the second's statement matches no head, writes nothing, and the
//! node reads the head again and relinks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use deadpool_postgres::GenericClient;

use super::{
    Fail, Inner, PgStore, by_position, i32_to_u32, i64_to_u64, names, u32_to_i32, u64_to_i64,
};
use crate::store::audit::{AuditStore, PendingRecord, lane_of, record_id, seq_of};
use crate::store::schema::{self as rows, AuditHead};
use crate::store::{LeaseStore, StoreError, StoreFuture};

/// Lanes a node appends to at most: its appends run side by side on this
/// many connections.
const LANES_PER_NODE: usize = 8;
/// Lanes a node looks through for free ones before giving up.
const MAX_LANES: i32 = 1024;
/// How long a node keeps its lanes without renewing them: a node that died
/// leaves its lanes to others this long after.
const LANE_TTL: Duration = Duration::from_secs(60);

/// One lane of this node: its number and its head as this node last
/// committed it (`None`: read it before the next append).
pub(super) struct Lane {
    pub(super) id: i32,
    pub(super) head: Option<AuditHead>,
}

/// Records of one call on their way to a lane, and where their ids go.
struct Job {
    records: Vec<PendingRecord>,
    done: tokio::sync::oneshot::Sender<Result<Vec<u64>, StoreError>>,
}

/// Calls whose records one lane's statement carries at most.
const GROUP_MAX: usize = 128;

/// The lanes this node claimed, and their appenders: one task per lane
/// takes every call waiting when it is free and appends all their records
/// in one statement (group commit, as the RocksDB writer does), so a
/// synchronous standby's round trip is paid once per group, not per call.
pub(super) struct Lanes {
    slots: Vec<tokio::sync::Mutex<Lane>>,
    next: AtomicUsize,
    queue: tokio::sync::mpsc::UnboundedSender<Job>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Lanes {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn lane_job(lane: i32) -> String {
    format!("audit-lane-{lane}")
}

/// Moves the head from `$1` to `$2` and stores the records, each with the
/// marks it revealed (`$5`, by the sequence number in `$6`) for the
/// disclosure index, or does nothing when the head is not `$1`.
const APPEND: &str = "\
    WITH moved AS ( \
        UPDATE phivault.audit_lanes SET head = $2 WHERE lane = $7 AND head = $1 RETURNING 1 \
    ), marks AS ( \
        SELECT m.seq, array_agg(m.mark) AS marks \
        FROM unnest($5::bytea[], $6::int8[]) AS m(mark, seq) GROUP BY m.seq \
    ), records AS ( \
        INSERT INTO phivault.audit (lane, seq, record, marks) \
        SELECT $7, t.seq, t.record, marks.marks \
        FROM unnest($3::int8[], $4::bytea[]) WITH ORDINALITY AS t(seq, record, i) \
        LEFT JOIN marks ON marks.seq = t.seq \
        WHERE EXISTS (SELECT 1 FROM moved) \
        ORDER BY t.i \
    ) \
    SELECT count(*) FROM moved";

/// Attempts at linking to a head other nodes keep moving before giving up.
const APPEND_ATTEMPTS: usize = 16;

impl PgStore {
    /// The chain's head as stored, its tag checked; a missing head row is
    /// put back as an empty chain's (the vault's open refuses a missing head
    /// while records exist, and verify reports it).
    pub(super) async fn read_head(
        &self,
        client: &impl GenericClient,
        lane: i32,
    ) -> Result<AuditHead, Fail> {
        let found = client
            .query_opt(
                "SELECT head FROM phivault.audit_lanes WHERE lane = $1",
                &[&lane],
            )
            .await?;
        let Some(row) = found else {
            client
                .execute(
                    "INSERT INTO phivault.audit_lanes (lane, head) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&lane, &self.seal_head(lane, &AuditHead::default())],
                )
                .await?;
            return Ok(AuditHead::default());
        };
        let head = self.open_row(
            "audit_lanes",
            &rows::u32_bytes(i32_to_u32(lane)),
            row.get(0),
        )?;
        Ok(AuditHead::decode(&head).ok_or(StoreError::Corrupt {
            table: "audit_lanes",
            what: "an audit head is unreadable",
        })?)
    }

    /// Links `records` after the head (`head`, or the stored one when
    /// `None`) and writes them on `client`, alone or inside its transaction.
    /// Returns their sequence numbers and the head they leave, for the
    /// caller to keep once its commit succeeded.
    pub(super) async fn append_on(
        &self,
        client: &impl GenericClient,
        lane: &Lane,
        records: &[PendingRecord],
    ) -> Result<(Vec<u64>, AuditHead), Fail> {
        let mut head = lane.head;
        for _ in 0..APPEND_ATTEMPTS {
            let old = match head {
                Some(head) => head,
                None => {
                    let stored = self.read_head(client, lane.id).await?;
                    // A head behind the one this node committed was put
                    // back from an older copy: records after it were
                    // removed.
                    if lane.head.is_some_and(|known| stored.seq < known.seq) {
                        tracing::error!(lane = lane.id, "an audit lane's head went back: refused");
                        return Err(Fail::Store(StoreError::Tampered {
                            table: "audit_lanes",
                            row: format!("lane {}", lane.id),
                        }));
                    }
                    stored
                }
            };
            let now = crate::clock::now_ms();
            let mut new = old;
            let mut seqs = Vec::with_capacity(records.len());
            let mut stored = Vec::with_capacity(records.len());
            let mut marks: Vec<&[u8]> = Vec::new();
            let mut mark_seqs = Vec::new();
            for record in records {
                let (next, value) = record.link(&new, now);
                new = next;
                seqs.push(u64_to_i64(next.seq));
                stored.push(value);
                for mark in record.revealed() {
                    marks.push(mark);
                    mark_seqs.push(u64_to_i64(next.seq));
                }
            }
            let statement = client.prepare_cached(APPEND).await?;
            let moved: i64 = client
                .query_one(
                    &statement,
                    &[
                        &self.seal_head(lane.id, &old),
                        &self.seal_head(lane.id, &new),
                        &seqs,
                        &stored,
                        &marks,
                        &mark_seqs,
                        &lane.id,
                    ],
                )
                .await?
                .get(0);
            if moved == 1 {
                let lane = i32_to_u32(lane.id);
                let ids = seqs
                    .into_iter()
                    .map(|seq| record_id(lane, i64_to_u64(seq)))
                    .collect();
                return Ok((ids, new));
            }
            // Another node appended since this one last did.
            head = None;
        }
        Err(Fail::Store(StoreError::Unavailable(
            "the audit chain's head kept moving under other nodes' appends; retry".into(),
        )))
    }
}

impl PgStore {
    /// A lane of this node to append to: a free one if there is one, else
    /// the next in turn once its append is done. The lanes are claimed on
    /// the first call.
    pub(super) async fn lane(&self) -> Result<tokio::sync::MutexGuard<'_, Lane>, StoreError> {
        let lanes = self
            .inner
            .lanes
            .get_or_try_init(|| self.claim_lanes())
            .await?;
        let count = lanes.slots.len();
        let start = lanes.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..count {
            if let Ok(lane) = lanes.slots[(start + i) % count].try_lock() {
                return Ok(lane);
            }
        }
        Ok(lanes.slots[start % count].lock().await)
    }

    /// Claims up to [`LANES_PER_NODE`] lanes nobody else holds, creating
    /// their heads when new, and keeps renewing them while the store is
    /// open.
    async fn claim_lanes(&self) -> Result<Lanes, StoreError> {
        let want = LANES_PER_NODE.min(self.inner.target.pool_size);
        let mut claimed = Vec::with_capacity(want);
        let mut lane = 0;
        while claimed.len() < want && lane < MAX_LANES {
            if self
                .acquire_lease(&lane_job(lane), &self.inner.holder, LANE_TTL)
                .await?
                .is_some()
            {
                self.inner
                    .write(
                        "INSERT INTO phivault.audit_lanes (lane, head) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                        &[&lane, &self.seal_head(lane, &AuditHead::default())],
                    )
                    .await?;
                claimed.push(lane);
            }
            lane += 1;
        }
        if claimed.is_empty() {
            return Err(StoreError::Unavailable(format!(
                "every one of the {MAX_LANES} audit lanes is held by another node"
            )));
        }
        tracing::info!(lanes = ?claimed, "audit lanes claimed");
        let mut tasks = vec![tokio::spawn(renew_lanes(
            Arc::downgrade(&self.inner),
            claimed.clone(),
        ))];
        let (queue, waiting) = tokio::sync::mpsc::unbounded_channel();
        let waiting = Arc::new(tokio::sync::Mutex::new(waiting));
        for slot in 0..claimed.len() {
            tasks.push(tokio::spawn(append_groups(
                Arc::downgrade(&self.inner),
                slot,
                Arc::clone(&waiting),
            )));
        }
        Ok(Lanes {
            slots: claimed
                .into_iter()
                .map(|id| tokio::sync::Mutex::new(Lane { id, head: None }))
                .collect(),
            next: AtomicUsize::new(0),
            queue,
            tasks,
        })
    }

    /// Appends the records of `jobs`, in order, to lane `slot` in one
    /// statement; their ids in the same order.
    async fn append_group(&self, slot: usize, jobs: &[Job]) -> Result<Vec<u64>, StoreError> {
        let lanes = self.inner.lanes.get().ok_or(StoreError::WriterStopped)?;
        let mut lane = lanes.slots[slot].lock().await;
        let records: Vec<PendingRecord> = jobs
            .iter()
            .flat_map(|job| job.records.iter().cloned())
            .collect();
        let started = std::time::Instant::now();
        let client = self.inner.client().await?;
        let appended = self.append_on(&client, &lane, &records).await;
        if appended.is_ok() {
            self.inner.time_commit(started.elapsed());
        }
        lane.head = appended.as_ref().ok().map(|(_, head)| *head);
        self.inner.committed_group(jobs.len(), appended.is_ok());
        self.inner.settle(client, appended).map(|(ids, _)| ids)
    }
}

/// One lane's appender: waits for a call, takes every other one waiting
/// too (up to [`GROUP_MAX`]), appends them together, answers each.
async fn append_groups(
    inner: Weak<Inner>,
    slot: usize,
    waiting: Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Job>>>,
) {
    loop {
        let jobs = {
            let mut waiting = waiting.lock().await;
            let Some(first) = waiting.recv().await else {
                return;
            };
            let mut jobs = vec![first];
            while jobs.len() < GROUP_MAX {
                match waiting.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            jobs
        };
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let store = PgStore { inner };
        match store.append_group(slot, &jobs).await {
            Ok(ids) => {
                let mut ids = ids.into_iter();
                for job in jobs {
                    let mine: Vec<u64> = ids.by_ref().take(job.records.len()).collect();
                    let _ = job.done.send(Ok(mine));
                }
            }
            Err(e) => {
                for job in jobs {
                    let _ = job.done.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Renews this node's lane leases every third of their time, while the
/// store lives. A lane whose lease was lost (a long pause) is still
/// appended to correctly; another node may then share it, slower.
async fn renew_lanes(inner: Weak<Inner>, lanes: Vec<i32>) {
    let mut ticks = tokio::time::interval(LANE_TTL / 3);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let store = PgStore { inner };
        for &lane in &lanes {
            match store
                .acquire_lease(&lane_job(lane), &store.inner.holder, LANE_TTL)
                .await
            {
                Ok(Some(_)) => {}
                Ok(None) => tracing::warn!(lane, "another node took this node's audit lane over"),
                Err(e) => tracing::warn!(lane, error = %e, "cannot renew an audit lane"),
            }
        }
    }
}

impl AuditStore for PgStore {
    fn append_audit(&self, records: Vec<PendingRecord>) -> StoreFuture<'_, Vec<u64>> {
        Box::pin(async move {
            let lanes = self
                .inner
                .lanes
                .get_or_try_init(|| self.claim_lanes())
                .await?;
            let (done, answer) = tokio::sync::oneshot::channel();
            lanes
                .queue
                .send(Job { records, done })
                .map_err(|_| StoreError::WriterStopped)?;
            answer.await.map_err(|_| StoreError::WriterStopped)?
        })
    }

    fn audit_heads(&self) -> StoreFuture<'_, Vec<(u32, AuditHead)>> {
        Box::pin(async move {
            self.inner
                .query(
                    "SELECT lane, head FROM phivault.audit_lanes ORDER BY lane",
                    &[],
                )
                .await?
                .iter()
                .map(|row| {
                    let lane = i32_to_u32(row.get(0));
                    let head = self.open_row("audit_lanes", &rows::u32_bytes(lane), row.get(1))?;
                    let head = AuditHead::decode(&head).ok_or(StoreError::Corrupt {
                        table: "audit_lanes",
                        what: "an audit head is unreadable",
                    })?;
                    Ok((lane, head))
                })
                .collect()
        })
    }

    fn audit_after(&self, after: u64, limit: usize) -> StoreFuture<'_, Vec<(u64, Vec<u8>)>> {
        Box::pin(async move {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let found = self
                .inner
                .query(
                    "SELECT lane, seq, record FROM phivault.audit \
                     WHERE (lane, seq) > ($1, $2) ORDER BY lane, seq LIMIT $3",
                    &[
                        &u32_to_i32(lane_of(after)),
                        &u64_to_i64(seq_of(after)),
                        &limit,
                    ],
                )
                .await?;
            Ok(found
                .into_iter()
                .map(|row| {
                    let id = record_id(i32_to_u32(row.get(0)), i64_to_u64(row.get(1)));
                    (id, row.get(2))
                })
                .collect())
        })
    }

    fn audit_entries<'a>(&'a self, ids: &'a [u64]) -> StoreFuture<'a, Vec<Option<Vec<u8>>>> {
        Box::pin(async move {
            let lanes: Vec<i32> = ids.iter().map(|&id| u32_to_i32(lane_of(id))).collect();
            let seqs: Vec<i64> = ids.iter().map(|&id| u64_to_i64(seq_of(id))).collect();
            let found = self
                .inner
                .query(
                    "SELECT k.i, a.record FROM unnest($1::int4[], $2::int8[]) WITH ORDINALITY AS k(lane, seq, i) \
                     JOIN phivault.audit a ON a.lane = k.lane AND a.seq = k.seq",
                    &[&lanes, &seqs],
                )
                .await?;
            Ok(by_position(&found, ids.len(), None, |row| {
                Some(row.get::<_, Vec<u8>>(1))
            }))
        })
    }

    fn audit_key_row(&self) -> StoreFuture<'_, Option<Vec<u8>>> {
        Box::pin(self.meta(names::AUDIT_KEY))
    }

    fn create_audit_key(&self, row: Vec<u8>) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            let created = self
                .inner
                .write(
                    "INSERT INTO phivault.meta (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING 1",
                    &[&names::AUDIT_KEY, &row],
                )
                .await?;
            Ok(!created.is_empty())
        })
    }

    fn disclosures<'a>(
        &'a self,
        mark: &'a [u8; 32],
        after: u64,
        limit: usize,
    ) -> StoreFuture<'a, Vec<u64>> {
        Box::pin(async move {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let found = self
                .inner
                .query(
                    // Oldest first across lanes; a page resumes after the
                    // entry of the record it ended with.
                    "SELECT lane, seq FROM phivault.audit \
                     WHERE marks @> ARRAY[$1::bytea] AND ord > coalesce( \
                         (SELECT ord FROM phivault.audit WHERE lane = $2 AND seq = $3), 0) \
                     ORDER BY ord LIMIT $4",
                    &[
                        &mark.as_slice(),
                        &u32_to_i32(lane_of(after)),
                        &u64_to_i64(seq_of(after)),
                        &limit,
                    ],
                )
                .await?;
            Ok(found
                .into_iter()
                .map(|row| record_id(i32_to_u32(row.get(0)), i64_to_u64(row.get(1))))
                .collect())
        })
    }
}
