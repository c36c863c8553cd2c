//! Namespaces and clients in PostgreSQL, each change committed with its
//! audit record.

use deadpool_postgres::Transaction;

use super::audit::Lane;
use super::{Fail, PgStore, names};
use crate::store::audit::PendingRecord;
use crate::store::registry::{
    ClientChange, ClientRow, NamespaceRow, RegistryStore, decode_client, encode_client,
};
use crate::store::schema::{self as rows, AuditHead};
use crate::store::{StoreError, StoreFuture};

/// A change's outcome and the audit head its commit left, if it wrote a
/// record.
pub(super) type Committed<T> = (T, Option<AuditHead>);

impl PgStore {
    /// Raises the registry's epoch and appends `audit` inside `tx` after
    /// `head`, and commits: every change that calls this is one other nodes
    /// must see on their next call.
    pub(super) async fn commit_with(
        &self,
        tx: Transaction<'_>,
        lane: &Lane,
        audit: Option<&PendingRecord>,
    ) -> Result<Option<AuditHead>, Fail> {
        tx.execute(super::schema::RAISE_EPOCH, &[]).await?;
        let moved = match audit {
            Some(record) => Some(
                self.append_on(&tx, lane, std::slice::from_ref(record))
                    .await?
                    .1,
            ),
            None => None,
        };
        tx.commit().await?;
        Ok(moved)
    }

    /// Keeps the head a change's commit left; forgets it when the commit
    /// failed (its outcome may be unknown).
    pub(super) fn keep_head<T>(
        &self,
        lane: &mut Lane,
        result: Result<Committed<T>, Fail>,
    ) -> Result<T, Fail> {
        self.inner.committed(result.is_ok());
        match result {
            Ok((value, moved)) => {
                if moved.is_some() {
                    lane.head = moved;
                }
                Ok(value)
            }
            Err(e) => {
                lane.head = None;
                Err(e)
            }
        }
    }
}

impl RegistryStore for PgStore {
    fn namespace_rows(&self) -> StoreFuture<'_, Vec<Vec<u8>>> {
        Box::pin(async move {
            self.inner
                .query(
                    "SELECT name, stored FROM phivault.namespaces ORDER BY name",
                    &[],
                )
                .await?
                .iter()
                .map(|row| {
                    self.open_row("namespaces", row.get::<_, &str>(0).as_bytes(), row.get(1))
                })
                .collect()
        })
    }

    fn client_rows(&self) -> StoreFuture<'_, Vec<(String, ClientRow)>> {
        Box::pin(async move {
            self.inner
                .query("SELECT id, stored FROM phivault.clients ORDER BY id", &[])
                .await?
                .iter()
                .map(|row| {
                    let id: String = row.get(0);
                    let value = self.open_row("clients", id.as_bytes(), row.get(1))?;
                    Ok((id, decode_client(&value)?))
                })
                .collect()
        })
    }

    fn registry_epoch(&self) -> StoreFuture<'_, Option<u64>> {
        Box::pin(async move {
            let found = self
                .inner
                .query("SELECT epoch FROM phivault.registry_epoch", &[])
                .await?;
            Ok(found.first().map(|row| super::i64_to_u64(row.get(0))))
        })
    }

    fn create_namespace(
        &self,
        name: String,
        row: NamespaceRow,
        audit: Option<PendingRecord>,
    ) -> StoreFuture<'_, Option<u32>> {
        Box::pin(async move {
            let mut lane = self.lane().await?;
            let mut client = self.inner.client().await?;
            let done = async {
                let tx = client.transaction().await?;
                // The lock on the id counter orders concurrent creations on
                // every node; the name is checked under it.
                let counter = tx
                    .query_opt(
                        "SELECT value FROM phivault.meta WHERE name = $1 FOR UPDATE",
                        &[&names::NEXT_NAMESPACE_ID],
                    )
                    .await?;
                let missing = StoreError::Corrupt {
                    table: "meta",
                    what: "the next namespace id is missing or unreadable",
                };
                let Some(counter) = counter else {
                    return Err(Fail::Store(missing));
                };
                let id =
                    rows::decode_u32(&self.open_meta(names::NEXT_NAMESPACE_ID, counter.get(0))?)
                        .ok_or(missing)?;
                let taken = tx
                    .query_opt(
                        "SELECT 1 FROM phivault.namespaces WHERE name = $1",
                        &[&name],
                    )
                    .await?;
                if taken.is_some() {
                    return Ok((None, None));
                }
                tx.execute(
                    "UPDATE phivault.meta SET value = $2 WHERE name = $1",
                    &[
                        &names::NEXT_NAMESPACE_ID,
                        &self.seal_meta(names::NEXT_NAMESPACE_ID, &rows::u32_bytes(id + 1)),
                    ],
                )
                .await?;
                tx.execute(
                    "INSERT INTO phivault.namespaces (name, stored) VALUES ($1, $2)",
                    &[&name, &self.seal("namespaces", name.as_bytes(), &row(id))],
                )
                .await?;
                let moved = self.commit_with(tx, &lane, audit.as_ref()).await?;
                Ok((Some(id), moved))
            }
            .await;
            let done = self.keep_head(&mut lane, done);
            self.inner.settle(client, done)
        })
    }

    fn create_client(
        &self,
        id: String,
        row: ClientRow,
        audit: Option<PendingRecord>,
    ) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            let sealed = self.seal("clients", id.as_bytes(), &encode_client(&row)?);
            let mut lane = self.lane().await?;
            let mut client = self.inner.client().await?;
            let done = async {
                let tx = client.transaction().await?;
                let created = tx
                    .execute(
                        "INSERT INTO phivault.clients (id, stored) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                        &[&id, &sealed],
                    )
                    .await?;
                if created == 0 {
                    return Ok((false, None));
                }
                let moved = self.commit_with(tx, &lane, audit.as_ref()).await?;
                Ok((true, moved))
            }
            .await;
            let done = self.keep_head(&mut lane, done);
            self.inner.settle(client, done)
        })
    }

    fn update_client(
        &self,
        id: String,
        change: ClientChange,
        audit: Option<PendingRecord>,
    ) -> StoreFuture<'_, Option<ClientRow>> {
        Box::pin(async move {
            let mut lane = self.lane().await?;
            let mut client = self.inner.client().await?;
            let done = async {
                let tx = client.transaction().await?;
                let Some(found) = tx
                    .query_opt(
                        "SELECT stored FROM phivault.clients WHERE id = $1 FOR UPDATE",
                        &[&id],
                    )
                    .await?
                else {
                    return Ok((None, None));
                };
                let mut row =
                    decode_client(&self.open_row("clients", id.as_bytes(), found.get(0))?)?;
                if !change(&mut row) {
                    // Nothing to write: the transaction rolls back.
                    return Ok((Some(row), None));
                }
                row.version += 1;
                tx.execute(
                    "UPDATE phivault.clients SET stored = $2 WHERE id = $1",
                    &[
                        &id,
                        &self.seal("clients", id.as_bytes(), &encode_client(&row)?),
                    ],
                )
                .await?;
                let moved = self.commit_with(tx, &lane, audit.as_ref()).await?;
                Ok((Some(row), moved))
            }
            .await;
            let done = self.keep_head(&mut lane, done);
            self.inner.settle(client, done)
        })
    }
}
