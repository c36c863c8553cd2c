//! Mappings in PostgreSQL: both directions in one row, new values inserted
//! by batch in one statement (DESIGN.md §9).

use std::collections::HashSet;
use std::sync::Arc;

use tokio_postgres::error::SqlState;

use super::{Fail, PgStore, by_position, names, u32_to_i32};
use crate::store::mappings::{InsertOutcome, Inserted, MappingRows, MappingStore, NewValues};
use crate::store::schema::{self as rows, ForwardKey};
use crate::store::{StoreError, StoreFuture};

/// Inserts a batch unless the active keyset has changed. The share lock on
/// the active keyset's row orders the insert against a rotation's start: a
/// rotation that commits first makes the comparison fail; one that commits
/// later waits for this insert, and its job then finds these rows. With no
/// conflict target, `ON CONFLICT DO NOTHING` arbitrates on the token and on
/// the forward entry alike, waiting for a concurrent insert of either to
/// commit; a skipped row lost a race or collided, which the caller tells
/// apart by looking the value up.
///
/// Parameters: namespace id, keyset version, the active keyset row as
/// stored, then tokens, reverse rows, blind indexes and forward entries as
/// arrays. Public so that the benchmark can drive the same statement bare.
pub const INSERT: &str = "\
    WITH active AS ( \
        SELECT value FROM phivault.meta WHERE name = 'active_keyset' FOR SHARE \
    ), inserted AS ( \
        INSERT INTO phivault.mappings (namespace, token, reverse, keyset, blind, forward) \
        SELECT $1::int4, t.token, t.reverse, CASE WHEN t.blind IS NULL THEN NULL ELSE $2::int4 END, t.blind, t.forward \
        FROM unnest($4::bytea[], $5::bytea[], $6::bytea[], $7::bytea[]) AS t(token, reverse, blind, forward) \
        WHERE (SELECT value FROM active) = $3::bytea \
        ON CONFLICT DO NOTHING \
        RETURNING token \
    ) \
    SELECT coalesce((SELECT value FROM active) = $3::bytea, false), \
           coalesce((SELECT array_agg(token) FROM inserted), '{}'::bytea[])";

/// The stored forward entries of a list of keys, by position (from 1).
const FORWARD: &str = "\
    SELECT k.i, m.forward \
    FROM unnest($1::int4[], $2::int4[], $3::bytea[]) WITH ORDINALITY AS k(namespace, keyset, blind, i) \
    JOIN phivault.mappings m ON m.namespace = k.namespace AND m.keyset = k.keyset AND m.blind = k.blind";

/// The reverse rows of a namespace's tokens, by position (from 1).
const REVERSE: &str = "\
    SELECT k.i, m.reverse \
    FROM unnest($2::bytea[]) WITH ORDINALITY AS k(token, i) \
    JOIN phivault.mappings m ON m.namespace = $1 AND m.token = k.token";

/// A value's candidate on its way into the table.
struct Candidate {
    token: String,
    rows: MappingRows,
}

impl PgStore {
    /// The stored forward entries of `keys`, in order.
    async fn forward_of(&self, keys: &[ForwardKey]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let namespaces: Vec<i32> = keys.iter().map(|k| u32_to_i32(k.namespace())).collect();
        let versions: Vec<i32> = keys.iter().map(|k| u32_to_i32(k.version())).collect();
        let blinds: Vec<&[u8]> = keys.iter().map(|k| &k.0[8..]).collect();
        let found = self
            .inner
            .query(FORWARD, &[&namespaces, &versions, &blinds])
            .await?;
        Ok(by_position(&found, keys.len(), None, |row| {
            row.get::<_, Option<Vec<u8>>>(1)
        }))
    }

    /// Answers each of `items` whose value is stored under one of its
    /// forward keys with [`Inserted::Existing`].
    async fn find_existing(
        &self,
        forward: &[Vec<ForwardKey>],
        items: Vec<usize>,
        outcomes: &mut [Option<Inserted>],
    ) -> Result<(), StoreError> {
        let keys: Vec<(usize, ForwardKey)> = items
            .iter()
            .flat_map(|&item| forward[item].iter().map(move |key| (item, *key)))
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        let only_keys: Vec<ForwardKey> = keys.iter().map(|(_, key)| *key).collect();
        let stored = self.forward_of(&only_keys).await?;
        for ((item, key), stored) in keys.into_iter().zip(stored) {
            if let Some(stored) = stored
                && outcomes[item].is_none()
            {
                outcomes[item] = Some(Inserted::Existing { key, stored });
            }
        }
        Ok(())
    }

    async fn insert(&self, values: &dyn NewValues) -> Result<InsertOutcome, StoreError> {
        let count = values.len();
        let namespace = u32_to_i32(values.namespace());
        let keyset = u32_to_i32(values.keyset());
        let active = self.seal_meta(names::ACTIVE_KEYSET, &rows::u32_bytes(values.keyset()));
        let forward: Vec<Vec<ForwardKey>> = (0..count).map(|i| values.forward_keys(i)).collect();
        let mut outcomes: Vec<Option<Inserted>> = vec![None; count];
        // A value stored already, under any live keyset, is answered
        // without drawing a candidate or sealing a row for it, unless it
        // can only be under the active keyset's key: then the insert's
        // conflict on the forward entry finds it, and reading every key
        // first would cost the database an index search per value (§9).
        if !values.older_keys_checked() {
            self.find_existing(&forward, (0..count).collect(), &mut outcomes)
                .await?;
        }
        let mut candidates: Vec<Option<Candidate>> = (0..count).map(|_| None).collect();
        loop {
            // Each value still open brings its candidate; two values of the
            // batch wanting one token or one forward entry go in separate
            // rounds, so that a skipped row is never one of this batch's.
            let mut round: Vec<usize> = Vec::new();
            let mut tokens: HashSet<String> = HashSet::new();
            let mut blinds: HashSet<[u8; 32]> = HashSet::new();
            for item in 0..count {
                if outcomes[item].is_some() {
                    continue;
                }
                if candidates[item].is_none() {
                    candidates[item] = next_candidate(values, item);
                }
                let Some(candidate) = &candidates[item] else {
                    outcomes[item] = Some(Inserted::Taken);
                    continue;
                };
                let blind = forward[item].first().map(blind_of);
                if tokens.contains(&candidate.token) || blind.is_some_and(|b| blinds.contains(&b)) {
                    continue;
                }
                tokens.insert(candidate.token.clone());
                blinds.extend(blind);
                round.push(item);
            }
            if round.is_empty() {
                break;
            }
            // In one order for every node: overlapping batches that lock
            // index entries in different orders deadlock (§9).
            round.sort_by_cached_key(|&item| {
                let token = candidates[item].as_ref().map(|c| c.token.clone());
                (forward[item].first().map(blind_of), token)
            });
            let mut column_tokens: Vec<&[u8]> = Vec::with_capacity(round.len());
            let mut column_reverse: Vec<&[u8]> = Vec::with_capacity(round.len());
            let mut column_blind: Vec<Option<[u8; 32]>> = Vec::with_capacity(round.len());
            let mut column_forward: Vec<Option<&[u8]>> = Vec::with_capacity(round.len());
            for &item in &round {
                let Some(candidate) = &candidates[item] else {
                    continue;
                };
                let blind = forward[item].first().map(blind_of);
                column_tokens.push(candidate.token.as_bytes());
                column_reverse.push(&candidate.rows.reverse);
                column_forward.push(blind.and(candidate.rows.forward.as_deref()));
                column_blind.push(blind.filter(|_| candidate.rows.forward.is_some()));
            }
            let column_blind: Vec<Option<&[u8]>> = column_blind
                .iter()
                .map(|b| b.as_ref().map(|b| b.as_slice()))
                .collect();
            let answer = self
                .inner
                .write(
                    INSERT,
                    &[
                        &namespace,
                        &keyset,
                        &active,
                        &column_tokens,
                        &column_reverse,
                        &column_blind,
                        &column_forward,
                    ],
                )
                .await?;
            let row = answer.first().ok_or(StoreError::Unavailable(
                "PostgreSQL answered an insert with no row".into(),
            ))?;
            if !row.get::<_, bool>(0) {
                return Ok(InsertOutcome::StaleKeyset);
            }
            let inserted: HashSet<Vec<u8>> = row.get::<_, Vec<Vec<u8>>>(1).into_iter().collect();
            let mut skipped = Vec::new();
            for &item in &round {
                let Some(candidate) = candidates[item].take() else {
                    continue;
                };
                if inserted.contains(candidate.token.as_bytes()) {
                    outcomes[item] = Some(Inserted::New(Arc::from(candidate.token)));
                } else {
                    skipped.push(item);
                }
            }
            // A skipped value whose forward entry is there lost a race to
            // another caller; one without collided with another value's
            // token and tries its next candidate.
            self.find_existing(&forward, skipped, &mut outcomes).await?;
        }
        Ok(InsertOutcome::Done(
            outcomes
                .into_iter()
                .map(|o| o.unwrap_or(Inserted::Taken))
                .collect(),
        ))
    }
}

/// The next candidate of `item` whose rows can be made.
fn next_candidate(values: &dyn NewValues, item: usize) -> Option<Candidate> {
    let token = values.next_candidate(item)?;
    let rows = values.rows(item, &token)?;
    Some(Candidate { token, rows })
}

fn blind_of(key: &ForwardKey) -> [u8; 32] {
    let mut blind = [0u8; 32];
    blind.copy_from_slice(&key.0[8..]);
    blind
}

impl MappingStore for PgStore {
    fn forward_entries<'a>(
        &'a self,
        keys: &'a [ForwardKey],
    ) -> StoreFuture<'a, Vec<Option<Vec<u8>>>> {
        Box::pin(self.forward_of(keys))
    }

    fn reverse_rows<'a>(
        &'a self,
        namespace: u32,
        tokens: &'a [&'a str],
    ) -> StoreFuture<'a, Vec<Option<Vec<u8>>>> {
        Box::pin(async move {
            let keys: Vec<&[u8]> = tokens.iter().map(|t| t.as_bytes()).collect();
            let found = self
                .inner
                .query(REVERSE, &[&u32_to_i32(namespace), &keys])
                .await?;
            Ok(by_position(&found, tokens.len(), None, |row| {
                Some(row.get::<_, Vec<u8>>(1))
            }))
        })
    }

    fn tokens_taken<'a>(
        &'a self,
        namespace: u32,
        tokens: &'a [String],
    ) -> StoreFuture<'a, Vec<bool>> {
        Box::pin(async move {
            let keys: Vec<&[u8]> = tokens.iter().map(|t| t.as_bytes()).collect();
            let found = self
                .inner
                .query(
                    "SELECT k.i FROM unnest($2::bytea[]) WITH ORDINALITY AS k(token, i) \
                     WHERE EXISTS (SELECT 1 FROM phivault.mappings m WHERE m.namespace = $1 AND m.token = k.token)",
                    &[&u32_to_i32(namespace), &keys],
                )
                .await?;
            Ok(by_position(&found, tokens.len(), false, |_| true))
        })
    }

    fn insert_mappings(&self, values: Arc<dyn NewValues>) -> StoreFuture<'_, InsertOutcome> {
        Box::pin(async move { self.insert(values.as_ref()).await })
    }

    fn estimate_mappings(&self) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            // Exact while counting is quick (a few million rows a second);
            // past that, the planner's and the statistics' figures, which
            // lag behind recent inserts by up to a second or an analyse.
            let mut client = self.inner.client().await?;
            let counted = async {
                let tx = client.transaction().await?;
                tx.batch_execute("SET LOCAL statement_timeout = 2000")
                    .await?;
                let count: i64 = tx
                    .query_one("SELECT count(*) FROM phivault.mappings", &[])
                    .await?
                    .get(0);
                tx.commit().await?;
                Ok(count)
            }
            .await;
            let counted = match counted {
                Err(Fail::Pg(e)) if e.code() == Some(&SqlState::QUERY_CANCELED) => Ok(None),
                other => self.inner.settle(client, other).map(Some),
            };
            if let Some(count) = counted? {
                return Ok(u64::try_from(count).unwrap_or(0));
            }
            let found = self
                .inner
                .query(
                    "SELECT greatest(c.reltuples::int8, coalesce(s.n_live_tup, 0)) \
                     FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid \
                     WHERE c.oid = 'phivault.mappings'::regclass",
                    &[],
                )
                .await?;
            Ok(found
                .first()
                .map_or(0, |row| u64::try_from(row.get::<_, i64>(0)).unwrap_or(0)))
        })
    }
}
