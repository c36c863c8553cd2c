//! Moving a whole vault out of PostgreSQL and into it (see
//! [`crate::store::portable`]). An export reads one snapshot (a read-only
//! repeatable-read transaction), so it can run beside serving nodes; an
//! import is one transaction, so a failed one leaves nothing.

use deadpool_postgres::Transaction;
use tokio::sync::mpsc;
use tokio_postgres::IsolationLevel;

use super::{Fail, PgStore, forward_key, i32_to_u32, i64_to_u64, names, u32_to_i32, u64_to_i64};
use crate::store::portable::{
    EXPORT_BATCH, Import, PortableStore, Row, rotation_running, stays_behind,
};
use crate::store::{StoreError, StoreFuture, StoredRecord, lane_of, record_id, schema, seq_of};

/// Bytes of a forward entry after its token: the binding.
const BINDING_LEN: usize = 16;

/// One batch's reverse rows, column by column, as `unnest` takes them.
#[derive(Default)]
struct ReverseColumns {
    namespace: Vec<i32>,
    token: Vec<Vec<u8>>,
    row: Vec<Vec<u8>>,
}

/// One batch's forward entries, with the token each names.
#[derive(Default)]
struct ForwardColumns {
    namespace: Vec<i32>,
    keyset: Vec<i32>,
    blind: Vec<Vec<u8>>,
    entry: Vec<Vec<u8>>,
    token: Vec<Vec<u8>>,
}

/// One batch's audit records, with each record's time.
#[derive(Default)]
struct AuditColumns {
    time_ms: Vec<i64>,
    lane: Vec<i32>,
    seq: Vec<i64>,
    record: Vec<Vec<u8>>,
}

/// The marks one batch's records revealed, by record.
#[derive(Default)]
struct DisclosureColumns {
    mark: Vec<Vec<u8>>,
    lane: Vec<i32>,
    seq: Vec<i64>,
}

impl PortableStore for PgStore {
    fn export_rows<'a>(&'a self, sink: &'a mpsc::Sender<Vec<Row>>) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            let mut client = self.inner.client().await?;
            let done = async {
                let tx = client
                    .build_transaction()
                    .isolation_level(IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await?;
                let exported = self.export_in(&tx, sink).await?;
                tx.commit().await?;
                Ok(exported)
            }
            .await;
            self.inner.settle(client, done)
        })
    }

    fn import_rows(&self, mut rows: mpsc::Receiver<Import>) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let mut client = self.inner.client().await?;
            let done = async {
                let tx = client.transaction().await?;
                let mut format_version = None;
                // Records wait here to be numbered in the order they were
                // written, across lanes, when the last has arrived.
                tx.batch_execute(
                    "CREATE TEMPORARY TABLE import_audit \
                     (time_ms bigint, lane integer, seq bigint, record bytea, marks bytea[]) \
                     ON COMMIT DROP",
                )
                .await?;
                while let Some(message) = rows.recv().await {
                    match message {
                        Import::Rows(batch) => {
                            self.import_batch(&tx, batch, &mut format_version).await?;
                        }
                        Import::Commit => {
                            let version = format_version.ok_or(StoreError::Corrupt {
                                table: "meta",
                                what: "the export has no format version",
                            })?;
                            // Claims the database as init does: a vault
                            // created meanwhile stops this one.
                            let fresh = tx
                                .execute(
                                    "INSERT INTO phivault.meta (name, value) VALUES ($1, $2) \
                                     ON CONFLICT DO NOTHING",
                                    &[&names::FORMAT_VERSION, &version],
                                )
                                .await?;
                            if fresh == 0 {
                                return Err(Fail::Store(StoreError::AlreadyExists(
                                    self.inner.target.to_string(),
                                )));
                            }
                            // In the order the records were written, so
                            // that disclosures list oldest first.
                            tx.batch_execute(
                                "INSERT INTO phivault.audit (lane, seq, record, marks) \
                                 SELECT lane, seq, record, marks FROM import_audit \
                                 ORDER BY time_ms, lane, seq",
                            )
                            .await?;
                            tx.commit().await?;
                            return Ok(());
                        }
                    }
                }
                Err(Fail::Store(StoreError::Unavailable(
                    "the import stopped before it was complete".into(),
                )))
            }
            .await;
            self.inner.settle(client, done)
        })
    }
}

/// Batches on their way to the file writer, counted.
struct Sent<'a> {
    sink: &'a mpsc::Sender<Vec<Row>>,
    rows: u64,
}

impl Sent<'_> {
    async fn send(&mut self, batch: Vec<Row>) -> Result<(), Fail> {
        if batch.is_empty() {
            return Ok(());
        }
        self.rows += batch.len() as u64;
        self.sink.send(batch).await.map_err(|_| {
            Fail::Store(StoreError::Unavailable(
                "the export's writer stopped".into(),
            ))
        })
    }
}

/// Every row `sql` selects, read through a portal of `tx` a batch at a
/// time, each batch made into rows by `rows_of` and sent.
async fn paged(
    tx: &Transaction<'_>,
    sql: &str,
    out: &mut Sent<'_>,
    mut rows_of: impl FnMut(Vec<tokio_postgres::Row>) -> Vec<Row>,
) -> Result<(), Fail> {
    let portal = tx.bind(sql, &[]).await?;
    loop {
        let found = tx.query_portal(&portal, EXPORT_BATCH as i32).await?;
        if found.is_empty() {
            return Ok(());
        }
        out.send(rows_of(found)).await?;
    }
}

impl PgStore {
    async fn export_in(
        &self,
        tx: &Transaction<'_>,
        sink: &mpsc::Sender<Vec<Row>>,
    ) -> Result<u64, Fail> {
        let mut out = Sent { sink, rows: 0 };
        let running = tx
            .query_opt(
                "SELECT 1 FROM phivault.meta WHERE name = $1",
                &[&names::ROTATION],
            )
            .await?;
        if running.is_some() {
            return Err(Fail::Store(rotation_running()));
        }

        let mut registry = Vec::new();
        for row in tx
            .query("SELECT name, value FROM phivault.meta ORDER BY name", &[])
            .await?
        {
            let name: String = row.get(0);
            if stays_behind(&name) {
                continue;
            }
            let stored: Vec<u8> = row.get(1);
            let value = if names::TAGGED.contains(&name.as_str()) {
                self.open_row("meta", name.as_bytes(), &stored)?
            } else {
                stored
            };
            registry.push(Row::Meta { name, value });
        }
        for row in tx
            .query(
                "SELECT version, stored FROM phivault.keysets ORDER BY version",
                &[],
            )
            .await?
        {
            let version = i32_to_u32(row.get(0));
            let stored: &[u8] = row.get(1);
            let row = self.open_row("keys", &schema::u32_bytes(version), stored)?;
            registry.push(Row::Keyset { version, row });
        }
        for row in tx
            .query(
                "SELECT name, stored FROM phivault.namespaces ORDER BY name",
                &[],
            )
            .await?
        {
            let name: String = row.get(0);
            let row = self.open_row("namespaces", name.as_bytes(), row.get(1))?;
            registry.push(Row::Namespace { name, row });
        }
        for row in tx
            .query("SELECT id, stored FROM phivault.clients ORDER BY id", &[])
            .await?
        {
            let id: String = row.get(0);
            let row = self.open_row("clients", id.as_bytes(), row.get(1))?;
            registry.push(Row::Client { id, row });
        }
        out.send(registry).await?;

        // Each mapping is a reverse row and, for a deterministic namespace,
        // the forward entry that names it right after.
        let mappings =
            "SELECT namespace, token, reverse, keyset, blind, forward FROM phivault.mappings";
        paged(tx, mappings, &mut out, |found| {
            let mut batch = Vec::with_capacity(found.len() * 2);
            for row in found {
                let namespace = i32_to_u32(row.get(0));
                batch.push(Row::Reverse {
                    namespace,
                    token: row.get(1),
                    row: row.get(2),
                });
                let keyset: Option<i32> = row.get(3);
                let blind: Option<Vec<u8>> = row.get(4);
                let forward: Option<Vec<u8>> = row.get(5);
                if let (Some(keyset), Some(blind), Some(entry)) = (keyset, blind, forward) {
                    let key = forward_key(namespace, i32_to_u32(keyset), &blind);
                    batch.push(Row::Forward { key, entry });
                }
            }
            batch
        })
        .await?;

        let records = "SELECT lane, seq, record FROM phivault.audit ORDER BY lane, seq";
        paged(tx, records, &mut out, |found| {
            found
                .iter()
                .map(|row| Row::Audit {
                    id: record_id(i32_to_u32(row.get(0)), i64_to_u64(row.get(1))),
                    record: row.get(2),
                    revealed: Vec::new(),
                })
                .collect()
        })
        .await?;

        let mut heads = Vec::new();
        for row in tx
            .query(
                "SELECT lane, head FROM phivault.audit_lanes ORDER BY lane",
                &[],
            )
            .await?
        {
            let lane = i32_to_u32(row.get(0));
            let head = self.open_row("audit_lanes", &schema::u32_bytes(lane), row.get(1))?;
            heads.push(Row::AuditHead { lane, head });
        }
        out.send(heads).await?;
        Ok(out.rows)
    }

    async fn import_batch(
        &self,
        tx: &Transaction<'_>,
        batch: Vec<Row>,
        format_version: &mut Option<Vec<u8>>,
    ) -> Result<(), Fail> {
        let mut reverse = ReverseColumns::default();
        let mut forward = ForwardColumns::default();
        let mut audit = AuditColumns::default();
        let mut disclosed = DisclosureColumns::default();
        let damaged = |table: &'static str, what: &'static str| {
            Fail::Store(StoreError::Corrupt { table, what })
        };
        for row in batch {
            match row {
                Row::Meta { name, value } => {
                    if name == names::FORMAT_VERSION {
                        *format_version = Some(value);
                        continue;
                    }
                    if stays_behind(&name) || name.starts_with("audit_head") {
                        return Err(damaged(
                            "meta",
                            "the export holds a row that is not the vault's",
                        ));
                    }
                    let stored = if names::TAGGED.contains(&name.as_str()) {
                        self.seal("meta", name.as_bytes(), &value)
                    } else {
                        value
                    };
                    tx.execute(
                        "INSERT INTO phivault.meta (name, value) VALUES ($1, $2)",
                        &[&name, &stored],
                    )
                    .await?;
                }
                Row::Keyset { version, row } => {
                    tx.execute(
                        "INSERT INTO phivault.keysets (version, stored) VALUES ($1, $2)",
                        &[&u32_to_i32(version), &self.seal_keyset(version, &row)],
                    )
                    .await?;
                }
                Row::Namespace { name, row } => {
                    tx.execute(
                        "INSERT INTO phivault.namespaces (name, stored) VALUES ($1, $2)",
                        &[&name, &self.seal("namespaces", name.as_bytes(), &row)],
                    )
                    .await?;
                }
                Row::Client { id, row } => {
                    tx.execute(
                        "INSERT INTO phivault.clients (id, stored) VALUES ($1, $2)",
                        &[&id, &self.seal("clients", id.as_bytes(), &row)],
                    )
                    .await?;
                }
                Row::Reverse {
                    namespace,
                    token,
                    row,
                } => {
                    reverse.namespace.push(u32_to_i32(namespace));
                    reverse.token.push(token);
                    reverse.row.push(row);
                }
                Row::Forward { key, entry } => {
                    let key = schema::ForwardKey::from_slice(&key)
                        .ok_or_else(|| damaged("mappings", "a forward key is malformed"))?;
                    let token = entry
                        .len()
                        .checked_sub(BINDING_LEN)
                        .map(|end| entry[..end].to_vec())
                        .ok_or_else(|| damaged("mappings", "a forward entry is too short"))?;
                    forward.namespace.push(u32_to_i32(key.namespace()));
                    forward.keyset.push(u32_to_i32(key.version()));
                    forward.blind.push(key.0[8..].to_vec());
                    forward.entry.push(entry);
                    forward.token.push(token);
                }
                Row::Audit {
                    id,
                    record,
                    revealed,
                } => {
                    let lane = u32_to_i32(lane_of(id));
                    let seq = u64_to_i64(seq_of(id));
                    let time_ms = StoredRecord::split(&record)
                        .map(|r| u64_to_i64(r.time_ms))
                        .ok_or_else(|| damaged("audit", "a record is unreadable"))?;
                    for mark in revealed {
                        disclosed.mark.push(mark.to_vec());
                        disclosed.lane.push(lane);
                        disclosed.seq.push(seq);
                    }
                    audit.time_ms.push(time_ms);
                    audit.lane.push(lane);
                    audit.seq.push(seq);
                    audit.record.push(record);
                }
                Row::AuditHead { lane, head } => {
                    tx.execute(
                        "INSERT INTO phivault.audit_lanes (lane, head) VALUES ($1, $2)",
                        &[
                            &u32_to_i32(lane),
                            &self.seal("audit_lanes", &schema::u32_bytes(lane), &head),
                        ],
                    )
                    .await?;
                }
            }
        }
        if !reverse.namespace.is_empty() {
            tx.execute(
                "INSERT INTO phivault.mappings (namespace, token, reverse) \
                 SELECT * FROM unnest($1::int4[], $2::bytea[], $3::bytea[])",
                &[&reverse.namespace, &reverse.token, &reverse.row],
            )
            .await?;
        }
        if !forward.namespace.is_empty() {
            // Each entry joins the reverse row of its token, which comes
            // before it and has no entry yet: anything else is a damaged
            // export.
            let joined = tx
                .execute(
                    "UPDATE phivault.mappings m SET keyset = f.keyset, blind = f.blind, forward = f.forward \
                     FROM unnest($1::int4[], $2::int4[], $3::bytea[], $4::bytea[], $5::bytea[]) \
                          AS f(namespace, keyset, blind, forward, token) \
                     WHERE m.namespace = f.namespace AND m.token = f.token AND m.blind IS NULL",
                    &[&forward.namespace, &forward.keyset, &forward.blind, &forward.entry, &forward.token],
                )
                .await?;
            if joined != forward.namespace.len() as u64 {
                return Err(damaged(
                    "mappings",
                    "a forward entry names no reverse row, or one that already has an entry",
                ));
            }
        }
        if !audit.lane.is_empty() {
            tx.execute(
                "WITH marks AS ( \
                     SELECT m.lane, m.seq, array_agg(m.mark) AS marks \
                     FROM unnest($5::bytea[], $6::int4[], $7::int8[]) AS m(mark, lane, seq) \
                     GROUP BY m.lane, m.seq \
                 ) \
                 INSERT INTO import_audit (time_ms, lane, seq, record, marks) \
                 SELECT t.time_ms, t.lane, t.seq, t.record, marks.marks \
                 FROM unnest($1::int8[], $2::int4[], $3::int8[], $4::bytea[]) AS t(time_ms, lane, seq, record) \
                 LEFT JOIN marks ON marks.lane = t.lane AND marks.seq = t.seq",
                &[
                    &audit.time_ms,
                    &audit.lane,
                    &audit.seq,
                    &audit.record,
                    &disclosed.mark,
                    &disclosed.lane,
                    &disclosed.seq,
                ],
            )
            .await?;
        }
        Ok(())
    }

    /// An empty store at `target`, its schema in place and its rows tagged
    /// under `row_key` from now on: what an import writes into. Refused if
    /// the database holds a vault, or rows of one.
    pub(crate) async fn create_empty(
        target: &super::PgTarget,
        row_key: crate::store::RowKey,
    ) -> Result<Self, StoreError> {
        let store = Self::new(target, false)?;
        store.migrate().await?;
        let client = store.inner.client().await?;
        let found = client
            .query_opt(
                "SELECT 1 FROM phivault.meta UNION ALL SELECT 1 FROM phivault.mappings \
                 UNION ALL SELECT 1 FROM phivault.audit LIMIT 1",
                &[],
            )
            .await;
        let found = store.inner.settle(client, found.map_err(Fail::Pg))?;
        if found.is_some() {
            return Err(StoreError::AlreadyExists(target.to_string()));
        }
        store.set_mac(crate::store::integrity::RowMac::new(row_key.bytes()));
        Ok(store)
    }
}
