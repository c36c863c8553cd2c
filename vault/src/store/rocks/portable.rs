//! Moving a whole vault out of RocksDB and into it (see
//! [`crate::store::portable`]).

use std::sync::Arc;

use rocksdb::IteratorMode;
use tokio::sync::mpsc;

use super::{Cf, Inner, Store, keys};
use crate::store::portable::{
    EXPORT_BATCH, Import, PortableStore, Row, rotation_running, stays_behind,
};
use crate::store::{StoreError, StoreFuture, schema};

impl PortableStore for Store {
    fn export_rows<'a>(&'a self, sink: &'a mpsc::Sender<Vec<Row>>) -> StoreFuture<'a, u64> {
        let inner = Arc::clone(&self.inner);
        let sink = sink.clone();
        // Iterators are synchronous: walk on a blocking thread, and wait
        // there whenever the file writer is behind.
        Box::pin(async move {
            tokio::task::spawn_blocking(move || export(&inner, &sink))
                .await
                .map_err(|_| StoreError::JobPanicked)?
        })
    }

    fn import_rows(&self, mut rows: mpsc::Receiver<Import>) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let mut format_version = None;
            while let Some(message) = rows.recv().await {
                let batch = match message {
                    Import::Rows(batch) => batch,
                    Import::Commit => {
                        // Last, so that an import stopped before here leaves
                        // a directory no vault opens from.
                        let version = format_version.ok_or(StoreError::Corrupt {
                            table: "meta",
                            what: "the export has no format version",
                        })?;
                        return self
                            .write(move |txn| {
                                txn.put(Cf::Meta, keys::META_FORMAT_VERSION, version);
                                Ok(())
                            })
                            .await;
                    }
                };
                let mut puts: Vec<(Cf, Vec<u8>, Vec<u8>)> = Vec::with_capacity(batch.len());
                for row in batch {
                    match row {
                        Row::Meta { name, value }
                            if name.as_bytes() == keys::META_FORMAT_VERSION =>
                        {
                            format_version = Some(value);
                        }
                        Row::Audit {
                            id,
                            record,
                            revealed,
                        } => {
                            puts.push((Cf::Audit, keys::audit_key(id).to_vec(), record));
                            for mark in revealed {
                                let key = keys::disclosure_key(&mark, id);
                                puts.push((Cf::Disclosures, key.to_vec(), Vec::new()));
                            }
                        }
                        row => puts.push(placed(row)?),
                    }
                }
                // The writer tags the rows that carry a tag as it stores them.
                self.write(move |txn| {
                    for (cf, key, value) in puts {
                        txn.put(cf, key, value);
                    }
                    Ok(())
                })
                .await?;
            }
            Err(StoreError::Unavailable(
                "the import stopped before it was complete".into(),
            ))
        })
    }
}

/// Where `row` goes in this backend: column family, key, value.
fn placed(row: Row) -> Result<(Cf, Vec<u8>, Vec<u8>), StoreError> {
    Ok(match row {
        Row::Meta { name, value } => {
            if name.starts_with("audit_head") || stays_behind(&name) {
                return Err(StoreError::Corrupt {
                    table: "meta",
                    what: "the export holds a row that is not the vault's",
                });
            }
            (Cf::Meta, name.into_bytes(), value)
        }
        Row::Keyset { version, row } => (Cf::Keys, schema::u32_bytes(version).to_vec(), row),
        Row::Namespace { name, row } => (Cf::Namespaces, name.into_bytes(), row),
        Row::Client { id, row } => (Cf::Clients, id.into_bytes(), row),
        Row::Reverse {
            namespace,
            token,
            row,
        } => {
            let mut key = namespace.to_be_bytes().to_vec();
            key.extend_from_slice(&token);
            (Cf::Reverse, key, row)
        }
        Row::Forward { key, entry } => (Cf::Forward, key, entry),
        Row::AuditHead { lane, head } => (Cf::Meta, keys::lane_head_key(lane), head),
        Row::Audit { id, record, .. } => (Cf::Audit, keys::audit_key(id).to_vec(), record),
    })
}

/// Rows gathered into batches for the file writer.
struct Batches<'a> {
    sink: &'a mpsc::Sender<Vec<Row>>,
    batch: Vec<Row>,
    sent: u64,
}

impl Batches<'_> {
    fn push(&mut self, row: Row) -> Result<(), StoreError> {
        self.batch.push(row);
        if self.batch.len() >= EXPORT_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.sent += batch.len() as u64;
        self.sink
            .blocking_send(batch)
            .map_err(|_| StoreError::Unavailable("the export's writer stopped".into()))
    }
}

/// Every row, read from one snapshot: what a commit landing meanwhile
/// changes is not seen.
fn export(inner: &Inner, sink: &mpsc::Sender<Vec<Row>>) -> Result<u64, StoreError> {
    let snapshot = inner.db.snapshot();
    if snapshot
        .get_cf(inner.cf(Cf::Meta), keys::META_ROTATION)?
        .is_some()
    {
        return Err(rotation_running());
    }
    let mut out = Batches {
        sink,
        batch: Vec::with_capacity(EXPORT_BATCH),
        sent: 0,
    };
    let mut heads = Vec::new();
    let damaged = |table: &'static str, what: &'static str| StoreError::Corrupt { table, what };
    for cf in [
        Cf::Meta,
        Cf::Keys,
        Cf::Namespaces,
        Cf::Clients,
        Cf::Reverse,
        Cf::Forward,
        Cf::Audit,
    ] {
        for entry in snapshot.iterator_cf(inner.cf(cf), IteratorMode::Start) {
            let (key, value) = inner.unseal_entry(cf, entry?)?;
            let (key, value) = (key.into_vec(), value.into_vec());
            let text = |key: Vec<u8>| {
                String::from_utf8(key).map_err(|_| damaged(cf.name(), "a row's name is not text"))
            };
            let row = match cf {
                Cf::Meta => {
                    if let Some(lane) = keys::lane_of_head_key(&key) {
                        heads.push(Row::AuditHead { lane, head: value });
                        continue;
                    }
                    let name = text(key)?;
                    if stays_behind(&name) {
                        continue;
                    }
                    Row::Meta { name, value }
                }
                Cf::Keys => Row::Keyset {
                    version: schema::decode_u32(&key)
                        .ok_or_else(|| damaged("keys", "a keyset's version is malformed"))?,
                    row: value,
                },
                Cf::Namespaces => Row::Namespace {
                    name: text(key)?,
                    row: value,
                },
                Cf::Clients => Row::Client {
                    id: text(key)?,
                    row: value,
                },
                Cf::Reverse => {
                    let (namespace, token) = key
                        .split_first_chunk::<4>()
                        .ok_or_else(|| damaged("reverse", "a row's key is malformed"))?;
                    Row::Reverse {
                        namespace: u32::from_be_bytes(*namespace),
                        token: token.to_vec(),
                        row: value,
                    }
                }
                Cf::Forward => Row::Forward { key, entry: value },
                Cf::Audit => Row::Audit {
                    id: keys::decode_audit_key(&key)
                        .ok_or_else(|| damaged("audit", "a record's key is malformed"))?,
                    record: value,
                    revealed: Vec::new(),
                },
                Cf::Disclosures => continue,
            };
            out.push(row)?;
        }
    }
    for head in heads {
        out.push(head)?;
    }
    out.flush()?;
    Ok(out.sent)
}
