//! The records about the vault itself, on RocksDB: `meta` rows, the row
//! MAC, and the commits that create and rekey a vault.

use std::path::Path;

use super::integrity::RowMac;
use super::{Cf, Store, keys};
use crate::failpoint::failpoint;
use crate::store::meta::{Genesis, MasterChange, MasterRecord, MetaStore, RowKey};
use crate::store::{StoreError, StoreFuture, schema};

/// Reads the unseal records without opening the database for writing.
pub(crate) fn read_master_record(path: &Path) -> Result<MasterRecord, StoreError> {
    let meta = Store::read_meta_read_only(
        path,
        &[
            keys::META_FORMAT_VERSION,
            keys::META_KDF,
            keys::META_KEK_CHECK,
        ],
    )?;
    let mut meta = meta.into_iter();
    Ok(MasterRecord {
        format_version: meta.next().flatten(),
        kdf: meta.next().flatten(),
        kek_check: meta.next().flatten(),
    })
}

impl Store {
    /// Writes a new vault's first commit, its rows tagged under `row_key`.
    pub(crate) async fn genesis(
        &self,
        row_key: RowKey,
        genesis: Genesis,
    ) -> Result<(), StoreError> {
        self.set_row_mac(Some(RowMac::new(row_key.bytes())));
        self.write(move |txn| {
            let Genesis {
                kdf,
                kek_check,
                keyset,
                audit_key,
                namespaces,
            } = genesis;
            txn.put(
                Cf::Meta,
                keys::META_FORMAT_VERSION,
                schema::u32_bytes(schema::FORMAT_VERSION),
            );
            txn.put(Cf::Meta, keys::META_KDF, kdf);
            txn.put(Cf::Meta, keys::META_KEK_CHECK, kek_check);
            txn.put(Cf::Meta, keys::META_ACTIVE_KEYSET, schema::u32_bytes(1));
            let next_id = u32::try_from(namespaces.len() + 1).unwrap_or(u32::MAX);
            txn.put(
                Cf::Meta,
                keys::META_NEXT_NAMESPACE_ID,
                schema::u32_bytes(next_id),
            );
            txn.put(Cf::Keys, schema::u32_bytes(1), keyset);
            txn.put(Cf::Meta, keys::META_AUDIT_KEY, audit_key);
            for (name, row) in namespaces {
                txn.put(Cf::Namespaces, name.into_bytes(), row);
            }
            Ok(())
        })
        .await
    }
}

impl MetaStore for Store {
    fn kdf_record(&self) -> StoreFuture<'_, Option<Vec<u8>>> {
        Box::pin(std::future::ready(self.get(Cf::Meta, keys::META_KDF)))
    }

    fn protect_rows(&self, key: RowKey, untagged_check: Option<Vec<u8>>) -> StoreFuture<'_, usize> {
        Box::pin(async move {
            let mac = RowMac::new(key.bytes());
            let mut count = 0;
            if let Some(check) = untagged_check {
                // Read before the MAC is installed: as stored, untagged.
                let rows: Vec<_> = self
                    .protected_rows()?
                    .into_iter()
                    .map(|(cf, (key, value))| {
                        let sealed = mac.seal(cf.name(), &key, &value);
                        (cf, key, sealed)
                    })
                    .collect();
                count = rows.len();
                self.write(move |txn| {
                    for (cf, key, sealed) in rows {
                        txn.put(cf, key, sealed);
                    }
                    txn.put(Cf::Meta, keys::META_KEK_CHECK, check);
                    Ok(())
                })
                .await?;
            }
            self.set_row_mac(Some(mac));
            Ok(count)
        })
    }

    fn rewrite_forward_entries(&self, entries: Vec<(Vec<u8>, Vec<u8>)>) -> StoreFuture<'_, ()> {
        Box::pin(self.write(move |txn| {
            for (key, stored) in entries {
                txn.put(Cf::Forward, key, stored);
            }
            Ok(())
        }))
    }

    fn set_kek_check(&self, check: Vec<u8>) -> StoreFuture<'_, ()> {
        Box::pin(self.write(move |txn| {
            txn.put(Cf::Meta, keys::META_KEK_CHECK, check);
            Ok(())
        }))
    }

    fn replace_master(&self, change: MasterChange) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            // Every row that carries a tag is tagged again under the new key
            // in the same commit as the new wrapping: read (and checked under
            // the old key) here, tagged as the commit writes it.
            let tagged_rows = self.protected_rows()?;
            let MasterChange {
                row_key,
                kdf,
                kek_check,
                keysets,
                audit_key,
            } = change;
            self.set_row_mac(Some(RowMac::new(row_key.bytes())));
            self.write(move |txn| {
                for (cf, (key, value)) in tagged_rows {
                    txn.put(cf, key, value);
                }
                txn.put(Cf::Meta, keys::META_KDF, kdf);
                txn.put(Cf::Meta, keys::META_KEK_CHECK, kek_check);
                for (version, row) in keysets {
                    txn.put(Cf::Keys, schema::u32_bytes(version), row);
                }
                txn.put(Cf::Meta, keys::META_AUDIT_KEY, audit_key);
                failpoint("rekey-committing");
                Ok(())
            })
            .await?;
            // The keysets wrapped under the old KEK are overwritten, not
            // gone: they sit in older table files and the write-ahead log
            // until compaction reaches them, and anyone holding the old
            // passphrase could unwrap them from a copy of the directory.
            // Flush and rewrite both column families now, so that they leave
            // the disk.
            let compacting = self.reader_compact(&[Cf::Keys, Cf::Meta]);
            tokio::task::spawn_blocking(compacting)
                .await
                .map_err(|_| StoreError::JobPanicked)?
        })
    }
}
