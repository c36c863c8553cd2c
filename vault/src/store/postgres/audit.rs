//! The audit chain in PostgreSQL.
//!
//! Records are linked on the node (the head is tagged under a key the
//! database never sees) and written with the head's move in one statement
//! that moves the head only from the one the node linked to: if another node
//! appended first, nothing is written, and the node reads the head again and
//! relinks. The head a node keeps moves only once its commit succeeded; a
//! commit whose outcome is unknown (a lost connection) makes the node read
//! the head again before its next append.

use deadpool_postgres::GenericClient;

use super::{Fail, PgStore, i64_to_u64, names, u64_to_i64};
use crate::store::audit::{AuditStore, PendingRecord};
use crate::store::schema::{self as rows, AuditHead};
use crate::store::{StoreError, StoreFuture};

/// Moves the head from `$1` to `$2` and stores the records and their
/// disclosure index entries, or does nothing when the head is not `$1`.
const APPEND: &str = "\
    WITH moved AS ( \
        UPDATE phivault.audit_lanes SET head = $2 WHERE lane = 0 AND head = $1 RETURNING 1 \
    ), records AS ( \
        INSERT INTO phivault.audit (lane, seq, record) \
        SELECT 0, t.seq, t.record FROM unnest($3::int8[], $4::bytea[]) AS t(seq, record) \
        WHERE EXISTS (SELECT 1 FROM moved) \
    ), marks AS ( \
        INSERT INTO phivault.disclosures (mark, lane, seq) \
        SELECT t.mark, 0, t.seq FROM unnest($5::bytea[], $6::int8[]) AS t(mark, seq) \
        WHERE EXISTS (SELECT 1 FROM moved) \
        ON CONFLICT DO NOTHING \
    ) \
    SELECT count(*) FROM moved";

/// Attempts at linking to a head other nodes keep moving before giving up.
const APPEND_ATTEMPTS: usize = 16;

impl PgStore {
    /// The chain's head as stored, its tag checked; a missing head row is
    /// put back as an empty chain's (the vault's open refuses a missing head
    /// while records exist, and verify reports it).
    pub(super) async fn read_head(&self, client: &impl GenericClient) -> Result<AuditHead, Fail> {
        let found = client
            .query_opt("SELECT head FROM phivault.audit_lanes WHERE lane = 0", &[])
            .await?;
        let Some(row) = found else {
            client
                .execute(
                    "INSERT INTO phivault.audit_lanes (lane, head) VALUES (0, $1) ON CONFLICT DO NOTHING",
                    &[&self.seal_head(&AuditHead::default())],
                )
                .await?;
            return Ok(AuditHead::default());
        };
        let head = self.open_row("audit_lanes", &rows::u32_bytes(0), row.get(0))?;
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
        head: Option<AuditHead>,
        records: &[PendingRecord],
    ) -> Result<(Vec<u64>, AuditHead), Fail> {
        let mut head = head;
        for _ in 0..APPEND_ATTEMPTS {
            let old = match head {
                Some(head) => head,
                None => self.read_head(client).await?,
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
                        &self.seal_head(&old),
                        &self.seal_head(&new),
                        &seqs,
                        &stored,
                        &marks,
                        &mark_seqs,
                    ],
                )
                .await?
                .get(0);
            if moved == 1 {
                return Ok((seqs.into_iter().map(i64_to_u64).collect(), new));
            }
            // Another node appended since this one last did.
            head = None;
        }
        Err(Fail::Store(StoreError::Unavailable(
            "the audit chain's head kept moving under other nodes' appends; retry".into(),
        )))
    }
}

impl AuditStore for PgStore {
    fn append_audit(&self, records: Vec<PendingRecord>) -> StoreFuture<'_, Vec<u64>> {
        Box::pin(async move {
            let mut lane = self.inner.lane.lock().await;
            let client = self.inner.client().await?;
            let appended = self.append_on(&client, *lane, &records).await;
            *lane = appended.as_ref().ok().map(|(_, head)| *head);
            self.inner.committed(appended.is_ok());
            self.inner.settle(client, appended).map(|(seqs, _)| seqs)
        })
    }

    fn audit_head(&self) -> StoreFuture<'_, AuditHead> {
        Box::pin(async move {
            let found = self
                .inner
                .query("SELECT head FROM phivault.audit_lanes WHERE lane = 0", &[])
                .await?;
            let Some(row) = found.first() else {
                return Ok(AuditHead::default());
            };
            let head = self.open_row("audit_lanes", &rows::u32_bytes(0), row.get(0))?;
            AuditHead::decode(&head).ok_or(StoreError::Corrupt {
                table: "audit_lanes",
                what: "an audit head is unreadable",
            })
        })
    }

    fn audit_after(&self, after: u64, limit: usize) -> StoreFuture<'_, Vec<(u64, Vec<u8>)>> {
        Box::pin(async move {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let found = self
                .inner
                .query(
                    "SELECT seq, record FROM phivault.audit WHERE lane = 0 AND seq > $1 ORDER BY seq LIMIT $2",
                    &[&u64_to_i64(after), &limit],
                )
                .await?;
            Ok(found
                .into_iter()
                .map(|row| (i64_to_u64(row.get(0)), row.get(1)))
                .collect())
        })
    }

    fn audit_entries<'a>(&'a self, seqs: &'a [u64]) -> StoreFuture<'a, Vec<Option<Vec<u8>>>> {
        Box::pin(async move {
            let keys: Vec<i64> = seqs.iter().map(|&s| u64_to_i64(s)).collect();
            let found = self
                .inner
                .query(
                    "SELECT k.i, a.record FROM unnest($1::int8[]) WITH ORDINALITY AS k(seq, i) \
                     JOIN phivault.audit a ON a.lane = 0 AND a.seq = k.seq",
                    &[&keys],
                )
                .await?;
            let mut records = vec![None; seqs.len()];
            for row in found {
                let position: i64 = row.get(0);
                if let Some(slot) = usize::try_from(position - 1)
                    .ok()
                    .and_then(|i| records.get_mut(i))
                {
                    *slot = Some(row.get::<_, Vec<u8>>(1));
                }
            }
            Ok(records)
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
                    "SELECT seq FROM phivault.disclosures WHERE mark = $1 AND lane = 0 AND seq > $2 ORDER BY seq LIMIT $3",
                    &[&mark.as_slice(), &u64_to_i64(after), &limit],
                )
                .await?;
            Ok(found
                .into_iter()
                .map(|row| i64_to_u64(row.get(0)))
                .collect())
        })
    }
}
