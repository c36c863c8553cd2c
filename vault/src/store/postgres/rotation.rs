//! Keysets and the rotation job's steps in PostgreSQL. Every step is
//! conditional on the rotation record being the one the job last saw,
//! compared as stored (tags are deterministic), in the statement that
//! writes the step.

use super::registry::Committed;
use super::{Fail, PgStore, i32_to_u32, names, u32_to_i32};
use crate::store::audit::PendingRecord;
use crate::store::rotation::{
    Moved, NotStarted, OnCommit, ReverseEntry, RotationStart, RotationStore, active_version,
    decode_keyset, decode_rotation,
};
use crate::store::schema::{self as rows, KeysetRow, KeysetState, LastRotationRow, RotationRow};
use crate::store::{StoreError, StoreFuture};

impl PgStore {
    fn sealed_rotation(&self, record: &RotationRow) -> Vec<u8> {
        self.seal_meta(names::ROTATION, &record.encode())
    }

    /// Replaces the rotation record `expected` by `next`; `false` when it
    /// is no longer `expected`.
    async fn advance(
        &self,
        expected: &RotationRow,
        next: &RotationRow,
    ) -> Result<bool, StoreError> {
        let moved = self
            .inner
            .write(
                "UPDATE phivault.meta SET value = $3 WHERE name = $1 AND value = $2 RETURNING 1",
                &[
                    &names::ROTATION,
                    &self.sealed_rotation(expected),
                    &self.sealed_rotation(next),
                ],
            )
            .await?;
        Ok(!moved.is_empty())
    }
}

impl RotationStore for PgStore {
    fn active_keyset(&self) -> StoreFuture<'_, u32> {
        Box::pin(async move { active_version(self.meta(names::ACTIVE_KEYSET).await?.as_deref()) })
    }

    fn keyset_rows(&self) -> StoreFuture<'_, Vec<(u32, KeysetRow)>> {
        Box::pin(async move {
            self.inner
                .query(
                    "SELECT version, stored FROM phivault.keysets ORDER BY version",
                    &[],
                )
                .await?
                .iter()
                .map(|row| {
                    let version = i32_to_u32(row.get(0));
                    let value = self.open_row("keys", &rows::u32_bytes(version), row.get(1))?;
                    Ok((version, decode_keyset(&value)?))
                })
                .collect()
        })
    }

    fn rotation(&self) -> StoreFuture<'_, Option<RotationRow>> {
        Box::pin(async move {
            self.meta(names::ROTATION)
                .await?
                .as_deref()
                .map(decode_rotation)
                .transpose()
        })
    }

    fn last_rotation(&self) -> StoreFuture<'_, Option<LastRotationRow>> {
        Box::pin(async move {
            self.meta(names::LAST_ROTATION)
                .await?
                .as_deref()
                .map(|bytes| {
                    LastRotationRow::decode(bytes).ok_or(StoreError::Corrupt {
                        table: "meta",
                        what: "the last rotation record is unreadable",
                    })
                })
                .transpose()
        })
    }

    fn start_rotation(
        &self,
        start: RotationStart,
        audit: Option<PendingRecord>,
        on_commit: OnCommit,
    ) -> StoreFuture<'_, Result<u32, NotStarted>> {
        Box::pin(async move {
            let mut lane = self.lane().await?;
            let mut client = self.inner.client().await?;
            let done: Result<Committed<Result<u32, NotStarted>>, Fail> = async {
                let tx = client.transaction().await?;
                // The exclusive lock on the active keyset's row waits for
                // every insert under way (each holds a share lock on it) and
                // makes later ones see the new version.
                let active = tx
                    .query_opt(
                        "SELECT value FROM phivault.meta WHERE name = $1 FOR UPDATE",
                        &[&names::ACTIVE_KEYSET],
                    )
                    .await?;
                let previous = active_version(
                    active
                        .map(|row| self.open_meta(names::ACTIVE_KEYSET, row.get(0)))
                        .transpose()?
                        .as_deref(),
                )?;
                let busy = tx
                    .query_opt(
                        "SELECT 1 FROM phivault.meta WHERE name = $1 \
                         UNION ALL SELECT 1 FROM phivault.keysets WHERE version = $2",
                        &[&names::ROTATION, &u32_to_i32(start.version)],
                    )
                    .await?;
                if busy.is_some() {
                    return Ok((Err(NotStarted::InProgress), None));
                }
                let old = tx
                    .query_opt(
                        "SELECT stored FROM phivault.keysets WHERE version = $1 FOR UPDATE",
                        &[&u32_to_i32(previous)],
                    )
                    .await?
                    .ok_or(StoreError::Corrupt {
                        table: "keys",
                        what: "the active keyset's row is missing",
                    })?;
                let mut old = decode_keyset(&self.open_row(
                    "keys",
                    &rows::u32_bytes(previous),
                    old.get(0),
                )?)?;
                old.state = KeysetState::Retiring;
                tx.execute(
                    "UPDATE phivault.keysets SET stored = $2 WHERE version = $1",
                    &[
                        &u32_to_i32(previous),
                        &self.seal_keyset(previous, &old.encode()),
                    ],
                )
                .await?;
                tx.execute(
                    "INSERT INTO phivault.keysets (version, stored) VALUES ($1, $2)",
                    &[
                        &u32_to_i32(start.version),
                        &self.seal_keyset(start.version, &start.keyset.encode()),
                    ],
                )
                .await?;
                tx.execute(
                    "UPDATE phivault.meta SET value = $2 WHERE name = $1",
                    &[
                        &names::ACTIVE_KEYSET,
                        &self.seal_meta(names::ACTIVE_KEYSET, &rows::u32_bytes(start.version)),
                    ],
                )
                .await?;
                tx.execute(
                    "INSERT INTO phivault.meta (name, value) VALUES ($1, $2)",
                    &[&names::ROTATION, &self.sealed_rotation(&start.record)],
                )
                .await?;
                let moved = self.commit_with(tx, &lane, audit.as_ref()).await?;
                Ok((Ok(previous), moved))
            }
            .await;
            let done = self.keep_head(&mut lane, done);
            let started = self.inner.settle(client, done)?;
            if started.is_ok() {
                on_commit();
            }
            Ok(started)
        })
    }

    fn reverse_after<'a>(
        &'a self,
        cursor: &'a [u8],
        limit: usize,
    ) -> StoreFuture<'a, Vec<ReverseEntry>> {
        Box::pin(async move {
            let (namespace, token) = match cursor.split_first_chunk::<4>() {
                Some((namespace, token)) => (i64::from(u32::from_be_bytes(*namespace)), token),
                None => (-1, &[][..]),
            };
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let found = self
                .inner
                .query(
                    "SELECT namespace, token, reverse FROM phivault.mappings \
                     WHERE (namespace::int8, token) > ($1, $2) ORDER BY namespace, token LIMIT $3",
                    &[&namespace, &token, &limit],
                )
                .await?;
            Ok(found
                .into_iter()
                .map(|row| {
                    let namespace = i32_to_u32(row.get(0));
                    let token: Vec<u8> = row.get(1);
                    let mut cursor = namespace.to_be_bytes().to_vec();
                    cursor.extend_from_slice(&token);
                    ReverseEntry {
                        cursor,
                        namespace: Some(namespace),
                        token,
                        row: row.get(2),
                    }
                })
                .collect())
        })
    }

    fn apply_chunk(
        &self,
        expected: RotationRow,
        next: RotationRow,
        moved: Vec<Moved>,
    ) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            let mut namespaces = Vec::with_capacity(moved.len());
            let mut tokens: Vec<&[u8]> = Vec::with_capacity(moved.len());
            let mut reverse: Vec<&[u8]> = Vec::with_capacity(moved.len());
            let mut versions: Vec<Option<i32>> = Vec::with_capacity(moved.len());
            let mut blinds: Vec<Option<&[u8]>> = Vec::with_capacity(moved.len());
            let mut forward: Vec<Option<&[u8]>> = Vec::with_capacity(moved.len());
            for m in &moved {
                namespaces.push(u32_to_i32(m.namespace));
                tokens.push(m.token.as_bytes());
                reverse.push(&m.row);
                versions.push(m.forward.as_ref().map(|(key, _)| u32_to_i32(key.version())));
                blinds.push(m.forward.as_ref().map(|(key, _)| &key.0[8..]));
                forward.push(m.forward.as_ref().map(|(_, entry)| entry.as_slice()));
            }
            // A mapping's row holds one forward entry: moving it to the new
            // keyset replaces the old one at once, where RocksDB keeps both
            // until the old keyset is destroyed. A node still on the old
            // keyring misses it, tries to insert, is refused (stale keyset)
            // and looks again under both.
            let applied = self
                .inner
                .write(
                    "WITH step AS ( \
                        UPDATE phivault.meta SET value = $3 WHERE name = $1 AND value = $2 RETURNING 1 \
                     ), moved AS ( \
                        UPDATE phivault.mappings AS m SET reverse = t.reverse, \
                            keyset = coalesce(t.keyset, m.keyset), \
                            blind = coalesce(t.blind, m.blind), \
                            forward = coalesce(t.forward, m.forward) \
                        FROM unnest($4::int4[], $5::bytea[], $6::bytea[], $7::int4[], $8::bytea[], $9::bytea[]) \
                            AS t(namespace, token, reverse, keyset, blind, forward) \
                        WHERE m.namespace = t.namespace AND m.token = t.token \
                          AND EXISTS (SELECT 1 FROM step) \
                     ) \
                     SELECT count(*) FROM step",
                    &[
                        &names::ROTATION,
                        &self.sealed_rotation(&expected),
                        &self.sealed_rotation(&next),
                        &namespaces,
                        &tokens,
                        &reverse,
                        &versions,
                        &blinds,
                        &forward,
                    ],
                )
                .await?;
            Ok(applied.first().is_some_and(|row| row.get::<_, i64>(0) == 1))
        })
    }

    fn advance_rotation(&self, expected: RotationRow, next: RotationRow) -> StoreFuture<'_, bool> {
        Box::pin(async move { self.advance(&expected, &next).await })
    }

    fn retire_keysets(
        &self,
        expected: RotationRow,
        next: RotationRow,
        now: u64,
        namespaces: Vec<u32>,
        on_commit: OnCommit,
    ) -> StoreFuture<'_, Vec<u32>> {
        Box::pin(async move {
            let mut client = self.inner.client().await?;
            let done: Result<Option<Vec<u32>>, Fail> = async {
                let tx = client.transaction().await?;
                let step = tx
                    .execute(
                        "UPDATE phivault.meta SET value = $3 WHERE name = $1 AND value = $2",
                        &[
                            &names::ROTATION,
                            &self.sealed_rotation(&expected),
                            &self.sealed_rotation(&next),
                        ],
                    )
                    .await?;
                if step == 0 {
                    return Ok(None);
                }
                let target = next.target;
                let mut destroyed = Vec::new();
                for row in tx
                    .query(
                        "SELECT version, stored FROM phivault.keysets WHERE version < $1 ORDER BY version FOR UPDATE",
                        &[&u32_to_i32(target)],
                    )
                    .await?
                {
                    let version = i32_to_u32(row.get(0));
                    let mut keyset =
                        decode_keyset(&self.open_row("keys", &rows::u32_bytes(version), row.get(1))?)?;
                    if matches!(keyset.state, KeysetState::Destroyed { .. }) {
                        continue;
                    }
                    keyset.state = KeysetState::Destroyed { at: now };
                    keyset.wrapped.clear();
                    tx.execute(
                        "UPDATE phivault.keysets SET stored = $2 WHERE version = $1",
                        &[&u32_to_i32(version), &self.seal_keyset(version, &keyset.encode())],
                    )
                    .await?;
                    destroyed.push(version);
                }
                // Forward entries still under an older version (none, once
                // every mapping was moved) name a destroyed key.
                let namespaces: Vec<i32> = namespaces.iter().map(|&n| u32_to_i32(n)).collect();
                tx.execute(
                    "UPDATE phivault.mappings SET keyset = NULL, blind = NULL, forward = NULL \
                     WHERE namespace = ANY($1) AND keyset < $2",
                    &[&namespaces, &u32_to_i32(target)],
                )
                .await?;
                tx.execute(super::schema::RAISE_EPOCH, &[]).await?;
                tx.commit().await?;
                Ok(Some(destroyed))
            }
            .await;
            self.inner.committed(done.is_ok());
            let Some(destroyed) = self.inner.settle(client, done)? else {
                return Ok(Vec::new());
            };
            on_commit();
            Ok(destroyed)
        })
    }

    fn reclaim(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            // Dead tuples of old ciphertexts and destroyed keys become
            // reusable space; PostgreSQL's WAL archive and base backups keep
            // their copies until those are rotated out.
            self.inner
                .query(
                    "VACUUM phivault.mappings, phivault.keysets, phivault.meta",
                    &[],
                )
                .await
                .map(|_| ())
        })
    }

    fn finish_rotation(
        &self,
        expected: RotationRow,
        last: LastRotationRow,
    ) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            let finished = self
                .inner
                .write(
                    "WITH done AS ( \
                        DELETE FROM phivault.meta WHERE name = $1 AND value = $2 RETURNING 1 \
                     ) \
                     INSERT INTO phivault.meta (name, value) SELECT $3, $4 FROM done \
                     ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value RETURNING 1",
                    &[
                        &names::ROTATION,
                        &self.sealed_rotation(&expected),
                        &names::LAST_ROTATION,
                        &self.seal_meta(names::LAST_ROTATION, &last.encode()),
                    ],
                )
                .await?;
            Ok(!finished.is_empty())
        })
    }
}
