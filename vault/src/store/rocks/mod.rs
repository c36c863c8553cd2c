//! The embedded RocksDB backend: column families, options, key encodings,
//! reads, and the single writer every write goes through (DESIGN.md §3, §5).

pub mod integrity;
pub mod keys;
mod meta;
mod portable;
mod writer;

pub(crate) use meta::read_master_record;

use std::path::Path;
use std::sync::Arc;

use rocksdb::checkpoint::Checkpoint;
use rocksdb::{
    BlockBasedOptions, BottommostLevelCompaction, Cache, ColumnFamily, ColumnFamilyDescriptor,
    CompactOptions, DB, DBCompressionType, Direction, IteratorMode, Options,
};
use tokio::sync::oneshot;

use super::registry::{decode_client, encode_client};
use super::rotation::{active_version, decode_keyset, decode_rotation};
use super::schema;
use super::{
    AuditStore, BackupFinish, ClientChange, ClientRow, Durability, ForwardRow, InsertOutcome,
    Inserted, Lease, LeaseStore, Lifecycle, MappingStore, Moved, NamespaceRow, NewValues,
    NotStarted, OnCommit, PendingRecord, RegistryStore, ReverseEntry, RotationStart, RotationStore,
    StoreError, StoreFuture, WriterStats,
};

pub use writer::Txn;

/// A key and its value, as a scan yields them.
pub type Entry = (Box<[u8]>, Box<[u8]>);

/// The column families of DESIGN.md §3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cf {
    /// Format version, KDF record, KEK check, active keyset, counters.
    Meta,
    /// Wrapped keysets by version.
    Keys,
    /// Namespace definitions by name.
    Namespaces,
    /// Blind index → token.
    Forward,
    /// Token → sealed value.
    Reverse,
    /// API clients.
    Clients,
    /// The audit chain.
    Audit,
    /// The disclosure index: token mark ‖ audit sequence number.
    Disclosures,
}

impl Cf {
    /// Every column family, in a fixed order (their index in [`Cf::index`]).
    pub const ALL: [Self; 8] = [
        Self::Meta,
        Self::Keys,
        Self::Namespaces,
        Self::Forward,
        Self::Reverse,
        Self::Clients,
        Self::Audit,
        Self::Disclosures,
    ];

    /// The RocksDB name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Meta => "meta",
            Self::Keys => "keys",
            Self::Namespaces => "namespaces",
            Self::Forward => "forward",
            Self::Reverse => "reverse",
            Self::Clients => "clients",
            Self::Audit => "audit",
            Self::Disclosures => "disclosures",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Storage tuning.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Commit durability.
    pub durability: Durability,
    /// Bytes of RocksDB block cache shared by all column families.
    pub block_cache_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            durability: Durability::Fsync,
            block_cache_bytes: 256 << 20,
        }
    }
}

impl From<rocksdb::Error> for StoreError {
    fn from(e: rocksdb::Error) -> Self {
        if e.kind() == rocksdb::ErrorKind::Corruption {
            // A block that fails its checksum is damaged data, not a store
            // out of reach: retrying will not help. RocksDB's text names
            // files and offsets, never row contents.
            tracing::error!(error = %e.as_ref(), "the database is damaged");
            return Self::Corrupt {
                table: "database",
                what: "a file failed its checksum",
            };
        }
        Self::Unavailable(e.into_string())
    }
}

struct Inner {
    db: DB,
    /// Job leases. One process holds a RocksDB database (it takes the
    /// directory's lock), so they live in memory: they order the jobs of
    /// this process and are gone with it.
    leases: std::sync::Mutex<std::collections::HashMap<String, HeldLease>>,
    /// Tags protected rows once the vault is unsealed (see [`integrity`]).
    row_mac: std::sync::RwLock<Option<Arc<integrity::RowMac>>>,
}

impl Inner {
    fn row_mac(&self) -> Option<Arc<integrity::RowMac>> {
        self.row_mac
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A row as read from disk, its tag checked and removed when it carries
    /// one.
    fn unseal(
        &self,
        cf: Cf,
        key: &[u8],
        stored: Option<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        // Forward and reverse rows, the hot path, never take the lock.
        if !integrity::protects(cf, key) {
            return Ok(stored);
        }
        match (stored, self.row_mac()) {
            (Some(stored), Some(mac)) => mac.open(cf.name(), key, &stored).map(Some),
            (stored, _) => Ok(stored),
        }
    }

    fn unseal_entry(&self, cf: Cf, (key, value): Entry) -> Result<Entry, StoreError> {
        if !integrity::protects(cf, &key) {
            return Ok((key, value));
        }
        match self.row_mac() {
            Some(mac) => {
                let value = mac.open(cf.name(), &key, &value)?;
                Ok((key, value.into_boxed_slice()))
            }
            None => Ok((key, value)),
        }
    }

    fn scan_after(&self, cf: Cf, after: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
        let mode = if after.is_empty() {
            IteratorMode::Start
        } else {
            IteratorMode::From(after, Direction::Forward)
        };
        let mut entries = Vec::with_capacity(limit.min(4096));
        for entry in self.db.iterator_cf(self.cf(cf), mode) {
            let (key, value) = entry?;
            if !after.is_empty() && *key == *after {
                continue;
            }
            entries.push(self.unseal_entry(cf, (key, value))?);
            if entries.len() >= limit {
                break;
            }
        }
        Ok(entries)
    }

    fn cf(&self, cf: Cf) -> &ColumnFamily {
        // Every column family is created or verified when the database opens
        // (see `Store::open_db`), so the handle always exists.
        #[allow(clippy::expect_used)]
        self.db
            .cf_handle(cf.name())
            .expect("column families are verified at open")
    }
}

fn compact(inner: &Inner, cfs: &[Cf]) -> Result<(), StoreError> {
    inner.db.flush()?;
    let mut options = CompactOptions::default();
    options.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
    options.set_exclusive_manual_compaction(true);
    for &cf in cfs {
        inner.db.flush_cf(inner.cf(cf))?;
        inner
            .db
            .compact_range_cf_opt(inner.cf(cf), None::<&[u8]>, None::<&[u8]>, &options);
    }
    Ok(())
}

/// Reads of an open database, cloneable and `'static`.
#[derive(Clone)]
pub struct StoreReader(Arc<Inner>);

impl StoreReader {
    /// Whether each of `keys` exists in `cf`, in one RocksDB call.
    pub fn contains_many<K: AsRef<[u8]>>(
        &self,
        cf: Cf,
        keys: &[K],
    ) -> Result<Vec<bool>, StoreError> {
        self.0
            .db
            .batched_multi_get_cf(self.0.cf(cf), keys.iter().map(|k| k.as_ref()), false)
            .into_iter()
            .map(|r| Ok(r?.is_some()))
            .collect()
    }
}

/// An open vault database.
pub struct Store {
    inner: Arc<Inner>,
    /// `None` for a read-only view.
    writer: Option<writer::Writer>,
}

impl Store {
    /// Whether `path` holds a database.
    pub fn exists(path: &Path) -> bool {
        path.join("CURRENT").is_file()
    }

    /// Creates a new database; fails if one exists at `path`.
    pub fn create(path: &Path, options: &StoreOptions) -> Result<Self, StoreError> {
        if Self::exists(path) {
            return Err(StoreError::AlreadyExists(path.display().to_string()));
        }
        Self::open_db(path, options, true)
    }

    /// Opens an existing database for reading and writing.
    pub fn open(path: &Path, options: &StoreOptions) -> Result<Self, StoreError> {
        Self::open_db(path, options, false)
    }

    /// Reads one `meta` entry without opening the database for writing: no
    /// lock taken, no file created or changed. Unsealing checks the KEK this
    /// way first, so a wrong passphrase leaves the directory byte for byte
    /// as it was.
    pub fn read_meta_read_only(
        path: &Path,
        keys: &[&[u8]],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let options = Options::default();
        // Only `meta`: a vault written by an older version may lack a column
        // family this one adds when it opens it for writing.
        let db = DB::open_cf_for_read_only(&options, path, [Cf::Meta.name()], false)?;
        let cf = db
            .cf_handle(Cf::Meta.name())
            .ok_or(StoreError::MissingTable("meta"))?;
        keys.iter().map(|k| Ok(db.get_cf(cf, k)?)).collect()
    }

    /// Opens an existing database for reading only: no lock is taken, so
    /// it works beside a running server (it sees what was written when it
    /// opened), and nothing on disk changes. Writes fail with
    /// [`StoreError::WriterStopped`].
    pub fn open_read_only(path: &Path, options: &StoreOptions) -> Result<Self, StoreError> {
        let (db_options, descriptors) = rocks_options(options, false);
        let db = DB::open_cf_descriptors_read_only(&db_options, path, descriptors, false)?;
        Self::checked(db, None)
    }

    fn open_db(path: &Path, options: &StoreOptions, create: bool) -> Result<Self, StoreError> {
        let (mut db_options, descriptors) = rocks_options(options, create);
        if !create {
            // Column families a newer version adds (the disclosure index)
            // are created in a vault an older version wrote.
            db_options.create_missing_column_families(true);
        }
        let db = DB::open_cf_descriptors(&db_options, path, descriptors)?;
        Self::checked(db, Some(options.durability))
    }

    fn checked(db: DB, writable: Option<Durability>) -> Result<Self, StoreError> {
        for cf in Cf::ALL {
            if db.cf_handle(cf.name()).is_none() {
                return Err(StoreError::MissingTable(cf.name()));
            }
        }
        let inner = Arc::new(Inner {
            db,
            leases: Default::default(),
            row_mac: std::sync::RwLock::new(None),
        });
        let writer = match writable {
            Some(durability) => Some(writer::Writer::start(Arc::clone(&inner), durability)?),
            None => None,
        };
        Ok(Self { inner, writer })
    }

    /// From now on, protected rows are tagged when written and checked when
    /// read (see [`integrity`]); `None` reads and writes them as they are.
    pub fn set_row_mac(&self, mac: Option<integrity::RowMac>) {
        *self
            .inner
            .row_mac
            .write()
            .unwrap_or_else(|e| e.into_inner()) = mac.map(Arc::new);
    }

    /// Reads one key.
    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let stored = self.inner.db.get_cf(self.inner.cf(cf), key)?;
        self.inner.unseal(cf, key, stored)
    }

    /// Reads many keys of one column family in one RocksDB call.
    pub fn multi_get<K: AsRef<[u8]>>(
        &self,
        cf: Cf,
        keys: &[K],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.inner
            .db
            .batched_multi_get_cf(self.inner.cf(cf), keys.iter().map(|k| k.as_ref()), false)
            .into_iter()
            .zip(keys)
            .map(|(r, key)| self.inner.unseal(cf, key.as_ref(), r?.map(|v| v.to_vec())))
            .collect()
    }

    /// Every row that carries a MAC (see [`integrity`]), as read: checked and
    /// without its tag once the store has a MAC, as stored before.
    pub fn protected_rows(&self) -> Result<Vec<(Cf, Entry)>, StoreError> {
        let mut rows = Vec::new();
        for cf in [Cf::Clients, Cf::Namespaces, Cf::Keys, Cf::Meta] {
            for entry in self.scan(cf) {
                let entry = entry?;
                if integrity::protects(cf, &entry.0) {
                    rows.push((cf, entry));
                }
            }
        }
        Ok(rows)
    }

    /// A handle for reads that can move to a blocking task (the collision
    /// search runs on one, off both the writer and the async workers).
    pub fn reader(&self) -> StoreReader {
        StoreReader(Arc::clone(&self.inner))
    }

    /// Every entry of a column family in key order.
    pub fn scan(&self, cf: Cf) -> impl Iterator<Item = Result<Entry, StoreError>> + '_ {
        self.inner
            .db
            .full_iterator_cf(self.inner.cf(cf), rocksdb::IteratorMode::Start)
            .map(move |r| {
                r.map_err(StoreError::from)
                    .and_then(|entry| self.inner.unseal_entry(cf, entry))
            })
    }

    /// Up to `limit` entries of `cf` in key order, starting after `after`
    /// (from the first key when `after` is empty). Background jobs walk a
    /// column family in chunks this way, persisting the last key as their
    /// cursor.
    pub fn scan_after(&self, cf: Cf, after: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
        self.inner.scan_after(cf, after, limit)
    }

    /// Up to `limit` entries of `cf` whose key starts with `prefix`, in key
    /// order, after the key `after` (from the first such key when `after` is
    /// empty).
    pub fn scan_prefix(
        &self,
        cf: Cf,
        prefix: &[u8],
        after: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let from = if after.is_empty() { prefix } else { after };
        let mut entries = Vec::new();
        let mode = IteratorMode::From(from, Direction::Forward);
        for entry in self.inner.db.iterator_cf(self.inner.cf(cf), mode) {
            let (key, value) = entry?;
            if !key.starts_with(prefix) || entries.len() >= limit {
                break;
            }
            if !after.is_empty() && *key == *after {
                continue;
            }
            entries.push(self.inner.unseal_entry(cf, (key, value))?);
        }
        Ok(entries)
    }

    /// RocksDB's estimate of the number of keys in `cf` (cheap; exact after a
    /// compaction, approximate with overwrites and deletes pending).
    pub fn estimate_keys(&self, cf: Cf) -> Result<u64, StoreError> {
        Ok(self
            .inner
            .db
            .property_int_value_cf(self.inner.cf(cf), "rocksdb.estimate-num-keys")?
            .unwrap_or(0))
    }

    /// [`Store::compact`] as a closure for a blocking task.
    pub fn reader_compact(
        &self,
        cfs: &[Cf],
    ) -> impl FnOnce() -> Result<(), StoreError> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        let cfs = cfs.to_vec();
        move || compact(&inner, &cfs)
    }

    /// Flushes the memtables and rewrites every SST file of `cfs`, so that
    /// overwritten and deleted entries (old ciphertexts, destroyed key
    /// material) leave the disk rather than waiting for compaction to reach
    /// them. Blocking; run it off the async workers.
    pub fn compact(&self, cfs: &[Cf]) -> Result<(), StoreError> {
        compact(&self.inner, cfs)
    }

    /// Writes a consistent checkpoint of the whole database to `path` (a new
    /// directory; SST files are hard-linked when on the same file system).
    ///
    /// The checkpoint is taken on the writer thread right after a commit, and
    /// `finish` (which moves it into place) runs there too, before any later
    /// commit: it holds every write acknowledged before this call was made
    /// (and any acknowledged before the checkpoint), and no write is half in
    /// it. `finish` must not panic.
    pub async fn checkpoint(
        &self,
        path: &Path,
        finish: impl FnOnce(&Path) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<(), StoreError> {
        let (sender, taken) = oneshot::channel();
        let inner = Arc::clone(&self.inner);
        let target = path.to_path_buf();
        self.write(move |txn| {
            txn.after_commit(move || {
                let result = Checkpoint::new(&inner.db)
                    .and_then(|c| c.create_checkpoint(&target))
                    .map_err(|e| StoreError::Checkpoint {
                        path: target.display().to_string(),
                        reason: e.into_string(),
                    })
                    .and_then(|()| finish(&target));
                let _ = sender.send(result);
            });
            Ok(())
        })
        .await?;
        taken.await.map_err(|_| StoreError::WriterStopped)?
    }

    /// Runs `job` on the writer thread inside the next group commit and
    /// returns its result once the commit is durable. A job that fails has
    /// its writes discarded; the other jobs of the commit are unaffected.
    pub async fn write<R, F>(&self, job: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Txn<'_>) -> Result<R, StoreError> + Send + 'static,
    {
        match &self.writer {
            Some(writer) => writer.submit(job).await,
            None => Err(StoreError::WriterStopped),
        }
    }

    /// Commit statistics of the writer.
    pub fn writer_stats(&self) -> WriterStats {
        self.writer
            .as_ref()
            .map(writer::Writer::stats)
            .unwrap_or_default()
    }

    /// Whether writes can be committed now: the writer runs and the latest
    /// commit succeeded. Read-only stores are never healthy for writing.
    pub fn write_path_healthy(&self) -> bool {
        self.writer.as_ref().is_some_and(writer::Writer::is_healthy)
    }

    /// The directory the database lives in.
    pub fn path(&self) -> &Path {
        self.inner.db.path()
    }

    /// Stops the writer after the queued jobs, flushes the write-ahead log
    /// and closes the database (its lock is released).
    pub fn close(self) -> Result<(), StoreError> {
        self.stop()
    }

    /// Stops the writer after the queued jobs and flushes the write-ahead
    /// log. Later calls do nothing; reads go on working until the store is
    /// dropped.
    fn stop(&self) -> Result<(), StoreError> {
        if let Some(writer) = &self.writer {
            writer.stop();
            self.inner.db.flush_wal(true)?;
        }
        Ok(())
    }
}

impl MappingStore for Store {
    fn forward_entries<'a>(
        &'a self,
        keys: &'a [schema::ForwardKey],
    ) -> StoreFuture<'a, Vec<Option<Vec<u8>>>> {
        let keys: Vec<&[u8]> = keys.iter().map(|k| k.0.as_slice()).collect();
        // A point read of the block cache or a few SST blocks: cheaper done
        // here than handed to a blocking task.
        Box::pin(std::future::ready(self.multi_get(Cf::Forward, &keys)))
    }

    fn reverse_rows<'a>(
        &'a self,
        namespace: u32,
        tokens: &'a [&'a str],
    ) -> StoreFuture<'a, Vec<Option<Vec<u8>>>> {
        let keys: Vec<Vec<u8>> = tokens
            .iter()
            .map(|t| keys::reverse_key(namespace, t))
            .collect();
        Box::pin(std::future::ready(self.multi_get(Cf::Reverse, &keys)))
    }

    fn tokens_taken<'a>(
        &'a self,
        namespace: u32,
        tokens: &'a [String],
    ) -> StoreFuture<'a, Vec<bool>> {
        let keys: Vec<Vec<u8>> = tokens
            .iter()
            .map(|t| keys::reverse_key(namespace, t))
            .collect();
        // Only a collision search asks, for many thousands at once: with the
        // search's drawing, at background priority, off the async workers.
        let reader = self.reader();
        Box::pin(async move {
            crate::background::run(move || reader.contains_many(Cf::Reverse, &keys))
                .await
                .map_err(|_| StoreError::JobPanicked)?
        })
    }

    fn insert_mappings(&self, values: Arc<dyn NewValues>) -> StoreFuture<'_, InsertOutcome> {
        Box::pin(self.write(move |txn| insert_mappings(txn, values.as_ref())))
    }

    fn estimate_mappings(&self) -> StoreFuture<'_, u64> {
        Box::pin(std::future::ready(self.estimate_keys(Cf::Reverse)))
    }
}

impl AuditStore for Store {
    fn append_audit(&self, records: Vec<PendingRecord>) -> StoreFuture<'_, Vec<u64>> {
        Box::pin(self.write(move |txn| records.iter().map(|r| append_audit(txn, r)).collect()))
    }

    fn audit_heads(&self) -> StoreFuture<'_, Vec<(u32, schema::AuditHead)>> {
        // One writer appends on lane 0, whose record ids are its sequence
        // numbers; other lanes come only with a vault imported from shared
        // storage.
        Box::pin(std::future::ready((|| {
            let mut heads = vec![(
                0,
                read_audit_head(self.get(Cf::Meta, keys::META_AUDIT_HEAD))?,
            )];
            for (key, value) in
                self.scan_prefix(Cf::Meta, keys::META_LANE_HEAD_PREFIX, &[], usize::MAX)?
            {
                let lane = keys::lane_of_head_key(&key).ok_or(StoreError::Corrupt {
                    table: "meta",
                    what: "an audit lane's head is named wrongly",
                })?;
                heads.push((lane, read_audit_head(Ok(Some(value.into_vec())))?));
            }
            Ok(heads)
        })()))
    }

    fn audit_after(&self, after: u64, limit: usize) -> StoreFuture<'_, Vec<(u64, Vec<u8>)>> {
        // An export or a verify walks the whole chain: off the async workers.
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let from = if after == 0 {
                    Vec::new()
                } else {
                    keys::audit_key(after).to_vec()
                };
                inner
                    .scan_after(Cf::Audit, &from, limit)?
                    .into_iter()
                    .map(|(key, value)| {
                        let seq = keys::decode_audit_key(&key).ok_or(StoreError::Corrupt {
                            table: "audit",
                            what: "a record's key is malformed",
                        })?;
                        Ok((seq, value.into_vec()))
                    })
                    .collect()
            })
            .await
            .map_err(|_| StoreError::JobPanicked)?
        })
    }

    fn audit_key_row(&self) -> StoreFuture<'_, Option<Vec<u8>>> {
        Box::pin(std::future::ready(self.get(Cf::Meta, keys::META_AUDIT_KEY)))
    }

    fn create_audit_key(&self, row: Vec<u8>) -> StoreFuture<'_, bool> {
        Box::pin(self.write(move |txn| {
            if txn.contains(Cf::Meta, keys::META_AUDIT_KEY)? {
                return Ok(false);
            }
            txn.put(Cf::Meta, keys::META_AUDIT_KEY, row);
            Ok(true)
        }))
    }

    fn audit_entries<'a>(&'a self, seqs: &'a [u64]) -> StoreFuture<'a, Vec<Option<Vec<u8>>>> {
        let keys: Vec<[u8; 8]> = seqs.iter().map(|&s| keys::audit_key(s)).collect();
        Box::pin(std::future::ready(self.multi_get(Cf::Audit, &keys)))
    }

    fn disclosures<'a>(
        &'a self,
        mark: &'a [u8; 32],
        after: u64,
        limit: usize,
    ) -> StoreFuture<'a, Vec<u64>> {
        let after = if after == 0 {
            Vec::new()
        } else {
            keys::disclosure_key(mark, after).to_vec()
        };
        Box::pin(std::future::ready(
            self.scan_prefix(Cf::Disclosures, mark, &after, limit)
                .map(|entries| {
                    entries
                        .iter()
                        .filter_map(|(key, _)| keys::disclosure_seq(key))
                        .collect()
                }),
        ))
    }
}

impl RegistryStore for Store {
    fn namespace_rows(&self) -> StoreFuture<'_, Vec<Vec<u8>>> {
        Box::pin(std::future::ready(
            self.scan(Cf::Namespaces)
                .map(|entry| entry.map(|(_, value)| value.into_vec()))
                .collect(),
        ))
    }

    fn client_rows(&self) -> StoreFuture<'_, Vec<(String, ClientRow)>> {
        let unreadable = StoreError::Corrupt {
            table: "clients",
            what: "a client row is unreadable",
        };
        Box::pin(std::future::ready(
            self.scan(Cf::Clients)
                .map(|entry| {
                    let (id, value) = entry?;
                    let id = String::from_utf8(id.into_vec()).map_err(|_| unreadable.clone())?;
                    let row = decode_client(&value)?;
                    Ok((id, row))
                })
                .collect(),
        ))
    }

    fn create_namespace(
        &self,
        name: String,
        row: NamespaceRow,
        audit: Option<PendingRecord>,
    ) -> StoreFuture<'_, Option<u32>> {
        Box::pin(self.write(move |txn| {
            if txn.contains(Cf::Namespaces, name.as_bytes())? {
                return Ok(None);
            }
            let id = txn
                .get(Cf::Meta, keys::META_NEXT_NAMESPACE_ID)?
                .as_deref()
                .and_then(schema::decode_u32)
                .ok_or(StoreError::Corrupt {
                    table: "meta",
                    what: "the next namespace id is missing or unreadable",
                })?;
            txn.put(
                Cf::Meta,
                keys::META_NEXT_NAMESPACE_ID,
                schema::u32_bytes(id + 1),
            );
            txn.put(Cf::Namespaces, name.into_bytes(), row(id));
            if let Some(record) = &audit {
                append_audit(txn, record)?;
            }
            Ok(Some(id))
        }))
    }

    fn create_client(
        &self,
        id: String,
        row: ClientRow,
        audit: Option<PendingRecord>,
    ) -> StoreFuture<'_, bool> {
        Box::pin(self.write(move |txn| {
            if txn.contains(Cf::Clients, id.as_bytes())? {
                return Ok(false);
            }
            txn.put(Cf::Clients, id.into_bytes(), encode_client(&row)?);
            if let Some(record) = &audit {
                append_audit(txn, record)?;
            }
            Ok(true)
        }))
    }

    fn update_client(
        &self,
        id: String,
        change: ClientChange,
        audit: Option<PendingRecord>,
    ) -> StoreFuture<'_, Option<ClientRow>> {
        Box::pin(self.write(move |txn| {
            let Some(bytes) = txn.get(Cf::Clients, id.as_bytes())? else {
                return Ok(None);
            };
            let mut row = decode_client(&bytes)?;
            if !change(&mut row) {
                return Ok(Some(row));
            }
            row.version += 1;
            txn.put(Cf::Clients, id.into_bytes(), encode_client(&row)?);
            if let Some(record) = &audit {
                append_audit(txn, record)?;
            }
            Ok(Some(row))
        }))
    }
}

impl RotationStore for Store {
    fn active_keyset(&self) -> StoreFuture<'_, u32> {
        Box::pin(std::future::ready(
            self.get(Cf::Meta, keys::META_ACTIVE_KEYSET)
                .and_then(|stored| active_version(stored.as_deref())),
        ))
    }

    fn keyset_rows(&self) -> StoreFuture<'_, Vec<(u32, schema::KeysetRow)>> {
        Box::pin(std::future::ready(
            self.scan(Cf::Keys)
                .map(|entry| {
                    let (key, value) = entry?;
                    let version = schema::decode_u32(&key).ok_or(StoreError::Corrupt {
                        table: "keys",
                        what: "a keyset version is malformed",
                    })?;
                    Ok((version, decode_keyset(&value)?))
                })
                .collect(),
        ))
    }

    fn rotation(&self) -> StoreFuture<'_, Option<schema::RotationRow>> {
        Box::pin(std::future::ready(
            self.get(Cf::Meta, keys::META_ROTATION)
                .and_then(|stored| stored.as_deref().map(decode_rotation).transpose()),
        ))
    }

    fn last_rotation(&self) -> StoreFuture<'_, Option<schema::LastRotationRow>> {
        Box::pin(std::future::ready(
            self.get(Cf::Meta, keys::META_LAST_ROTATION)
                .and_then(|stored| {
                    stored
                        .as_deref()
                        .map(|bytes| {
                            schema::LastRotationRow::decode(bytes).ok_or(StoreError::Corrupt {
                                table: "meta",
                                what: "the last rotation record is unreadable",
                            })
                        })
                        .transpose()
                }),
        ))
    }

    fn start_rotation(
        &self,
        start: RotationStart,
        audit: Option<PendingRecord>,
        on_commit: OnCommit,
    ) -> StoreFuture<'_, Result<u32, NotStarted>> {
        Box::pin(self.write(move |txn| {
            if txn.contains(Cf::Meta, keys::META_ROTATION)?
                || txn.contains(Cf::Keys, &schema::u32_bytes(start.version))?
            {
                return Ok(Err(NotStarted::InProgress));
            }
            let previous = active_version(txn.get(Cf::Meta, keys::META_ACTIVE_KEYSET)?.as_deref())?;
            let mut old = decode_keyset(&txn.get(Cf::Keys, &schema::u32_bytes(previous))?.ok_or(
                StoreError::Corrupt {
                    table: "keys",
                    what: "the active keyset's row is missing",
                },
            )?)?;
            old.state = schema::KeysetState::Retiring;
            txn.put(Cf::Keys, schema::u32_bytes(previous), old.encode());
            txn.put(
                Cf::Keys,
                schema::u32_bytes(start.version),
                start.keyset.encode(),
            );
            txn.put(
                Cf::Meta,
                keys::META_ACTIVE_KEYSET,
                schema::u32_bytes(start.version),
            );
            txn.put(Cf::Meta, keys::META_ROTATION, start.record.encode());
            if let Some(record) = &audit {
                append_audit(txn, record)?;
            }
            txn.after_commit(on_commit);
            Ok(Ok(previous))
        }))
    }

    fn reverse_after<'a>(
        &'a self,
        cursor: &'a [u8],
        limit: usize,
    ) -> StoreFuture<'a, Vec<ReverseEntry>> {
        let inner = Arc::clone(&self.inner);
        let cursor = cursor.to_vec();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                Ok(inner
                    .scan_after(Cf::Reverse, &cursor, limit)?
                    .into_iter()
                    .map(|(key, row)| ReverseEntry {
                        namespace: key.first_chunk::<4>().map(|b| u32::from_be_bytes(*b)),
                        token: key.get(4..).unwrap_or_default().to_vec(),
                        cursor: key.into_vec(),
                        row: row.into_vec(),
                    })
                    .collect())
            })
            .await
            .map_err(|_| StoreError::JobPanicked)?
        })
    }

    fn apply_chunk(
        &self,
        expected: schema::RotationRow,
        next: schema::RotationRow,
        moved: Vec<Moved>,
    ) -> StoreFuture<'_, bool> {
        Box::pin(self.write(move |txn| {
            if !rotation_is(txn, &expected)? {
                return Ok(false);
            }
            for m in moved {
                // No re-read of the row: once written, a reverse row is only
                // ever rewritten here, by the one rotation job, whose record
                // check above orders its chunks (new mappings never
                // overwrite an existing reverse key). The plan read the row
                // as it is. The old forward entry stays until the old keyset
                // is destroyed (it names the same token, so lookups under
                // either version agree); one range deletion per namespace
                // drops them all then.
                if let Some((key, entry)) = m.forward {
                    txn.put(Cf::Forward, key.0.as_slice(), entry);
                }
                txn.put(Cf::Reverse, keys::reverse_key(m.namespace, &m.token), m.row);
            }
            txn.put(Cf::Meta, keys::META_ROTATION, next.encode());
            Ok(true)
        }))
    }

    fn advance_rotation(
        &self,
        expected: schema::RotationRow,
        next: schema::RotationRow,
    ) -> StoreFuture<'_, bool> {
        Box::pin(self.write(move |txn| {
            if !rotation_is(txn, &expected)? {
                return Ok(false);
            }
            txn.put(Cf::Meta, keys::META_ROTATION, next.encode());
            Ok(true)
        }))
    }

    fn retire_keysets(
        &self,
        expected: schema::RotationRow,
        next: schema::RotationRow,
        now: u64,
        namespaces: Vec<u32>,
        on_commit: OnCommit,
    ) -> StoreFuture<'_, Vec<u32>> {
        Box::pin(self.write(move |txn| {
            if !rotation_is(txn, &expected)? {
                return Ok(Vec::new());
            }
            let target = next.target;
            let mut destroyed = Vec::new();
            for version in 1..target {
                let Some(bytes) = txn.get(Cf::Keys, &schema::u32_bytes(version))? else {
                    continue;
                };
                let mut keyset = decode_keyset(&bytes)?;
                if matches!(keyset.state, schema::KeysetState::Destroyed { .. }) {
                    continue;
                }
                keyset.state = schema::KeysetState::Destroyed { at: now };
                keyset.wrapped.clear();
                txn.put(Cf::Keys, schema::u32_bytes(version), keyset.encode());
                destroyed.push(version);
            }
            // Every forward entry under an older version, namespace by
            // namespace: `ns ‖ 0` up to `ns ‖ target`.
            for ns_id in namespaces {
                let from = [ns_id.to_be_bytes(), 0u32.to_be_bytes()].concat();
                let to = [ns_id.to_be_bytes(), target.to_be_bytes()].concat();
                txn.delete_range(Cf::Forward, from, to);
            }
            txn.put(Cf::Meta, keys::META_ROTATION, next.encode());
            txn.after_commit(on_commit);
            Ok(destroyed)
        }))
    }

    fn reclaim(&self) -> StoreFuture<'_, ()> {
        let compact = self.reader_compact(&[Cf::Forward, Cf::Reverse, Cf::Keys, Cf::Meta]);
        Box::pin(async move {
            tokio::task::spawn_blocking(compact)
                .await
                .map_err(|_| StoreError::JobPanicked)?
        })
    }

    fn finish_rotation(
        &self,
        expected: schema::RotationRow,
        last: schema::LastRotationRow,
    ) -> StoreFuture<'_, bool> {
        Box::pin(self.write(move |txn| {
            if !rotation_is(txn, &expected)? {
                return Ok(false);
            }
            txn.delete(Cf::Meta, keys::META_ROTATION);
            txn.put(Cf::Meta, keys::META_LAST_ROTATION, last.encode());
            Ok(true)
        }))
    }
}

/// Whether the rotation record is `expected` as this commit leaves it: every
/// step of the job is conditional on it, so that a replayed step does
/// nothing.
fn rotation_is(txn: &mut Txn<'_>, expected: &schema::RotationRow) -> Result<bool, StoreError> {
    Ok(txn.get(Cf::Meta, keys::META_ROTATION)?.as_deref() == Some(&expected.encode()))
}

impl Lifecycle for Store {
    fn writable(&self) -> bool {
        self.write_path_healthy()
    }

    fn commit_stats(&self) -> WriterStats {
        self.writer_stats()
    }

    fn size_bytes(&self) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let mut bytes = 0u64;
            for cf in Cf::ALL {
                for property in [
                    "rocksdb.total-sst-files-size",
                    "rocksdb.cur-size-all-mem-tables",
                ] {
                    bytes += self
                        .inner
                        .db
                        .property_int_value_cf(self.inner.cf(cf), property)?
                        .unwrap_or(0);
                }
            }
            // The write-ahead log is not a property: the files themselves,
            // listed off the async workers (a stalled disk stalls a listing).
            let dir = self.path().to_path_buf();
            let wal: u64 = tokio::task::spawn_blocking(move || {
                std::fs::read_dir(dir)
                    .map(|entries| {
                        entries
                            .filter_map(Result::ok)
                            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                            .filter_map(|e| e.metadata().ok())
                            .map(|m| m.len())
                            .sum()
                    })
                    .unwrap_or(0)
            })
            .await
            .unwrap_or(0);
            Ok(bytes + wal)
        })
    }

    fn probe_writes(&self) -> StoreFuture<'_, ()> {
        let now = crate::clock::now_ms();
        Box::pin(self.write(move |txn| {
            txn.put(Cf::Meta, keys::META_WRITE_PROBE, now.to_be_bytes().to_vec());
            Ok(())
        }))
    }

    fn local_dir(&self) -> Option<&Path> {
        Some(self.path())
    }

    fn backup<'a>(&'a self, staging: &'a Path, finish: BackupFinish) -> StoreFuture<'a, ()> {
        Box::pin(self.checkpoint(staging, finish))
    }

    fn forward_after<'a>(
        &'a self,
        cursor: &'a [u8],
        limit: usize,
    ) -> StoreFuture<'a, Vec<ForwardRow>> {
        Box::pin(std::future::ready(
            self.scan_after(Cf::Forward, cursor, limit).map(|entries| {
                entries
                    .into_iter()
                    .map(|(key, stored)| ForwardRow {
                        cursor: key.to_vec(),
                        key: key.into_vec(),
                        stored: stored.into_vec(),
                    })
                    .collect()
            }),
        ))
    }

    fn close(&self) -> Result<(), StoreError> {
        self.stop()
    }
}

/// A lease as the RocksDB backend holds it.
struct HeldLease {
    holder: String,
    fence: u64,
    until: std::time::Instant,
}

impl LeaseStore for Store {
    fn acquire_lease<'a>(
        &'a self,
        job: &'a str,
        holder: &'a str,
        ttl: std::time::Duration,
    ) -> StoreFuture<'a, Option<Lease>> {
        let now = std::time::Instant::now();
        let mut leases = self.inner.leases.lock().unwrap_or_else(|e| e.into_inner());
        let fence = match leases.get(job) {
            Some(held) if held.holder == holder => held.fence,
            Some(held) if held.until > now => return Box::pin(std::future::ready(Ok(None))),
            Some(held) => held.fence + 1,
            None => 1,
        };
        leases.insert(
            job.to_owned(),
            HeldLease {
                holder: holder.to_owned(),
                fence,
                until: now + ttl,
            },
        );
        Box::pin(std::future::ready(Ok(Some(Lease {
            job: job.to_owned(),
            holder: holder.to_owned(),
            fence,
        }))))
    }

    fn release_lease<'a>(&'a self, lease: &'a Lease) -> StoreFuture<'a, ()> {
        let mut leases = self.inner.leases.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = leases.get_mut(&lease.job)
            && held.holder == lease.holder
            && held.fence == lease.fence
        {
            // Kept, expired, so that the next grant raises the fence.
            held.until = std::time::Instant::now();
            held.holder.clear();
        }
        Box::pin(std::future::ready(Ok(())))
    }
}

/// The audit head as stored (the default before the first record).
fn read_audit_head(
    stored: Result<Option<Vec<u8>>, StoreError>,
) -> Result<schema::AuditHead, StoreError> {
    match stored? {
        None => Ok(schema::AuditHead::default()),
        Some(bytes) => schema::AuditHead::decode(&bytes).ok_or(StoreError::Corrupt {
            table: "meta",
            what: "the audit head is unreadable",
        }),
    }
}

/// On the writer thread: links the record to the head as this commit leaves
/// it, writes it and its disclosure index entries, and moves the head.
pub(crate) fn append_audit(txn: &mut Txn<'_>, record: &PendingRecord) -> Result<u64, StoreError> {
    let head = read_audit_head(txn.get(Cf::Meta, keys::META_AUDIT_HEAD))?;
    let (head, value) = record.link(&head, crate::clock::now_ms());
    txn.put(Cf::Audit, keys::audit_key(head.seq), value);
    for mark in record.revealed() {
        txn.put(
            Cf::Disclosures,
            keys::disclosure_key(mark, head.seq),
            Vec::new(),
        );
    }
    txn.put(Cf::Meta, keys::META_AUDIT_HEAD, head.encode());
    Ok(head.seq)
}

/// On the writer thread, inside a group commit whose overlay holds the
/// writes of the jobs before it: what one commit sees is what is checked,
/// so two jobs bringing the same value find each other.
fn insert_mappings(txn: &mut Txn<'_>, values: &dyn NewValues) -> Result<InsertOutcome, StoreError> {
    let active = active_version(txn.get(Cf::Meta, keys::META_ACTIVE_KEYSET)?.as_deref())?;
    if active != values.keyset() {
        return Ok(InsertOutcome::StaleKeyset);
    }
    let namespace = values.namespace();
    let mut outcomes = Vec::with_capacity(values.len());
    'value: for item in 0..values.len() {
        let forward = values.forward_keys(item);
        for key in &forward {
            if let Some(stored) = txn.get(Cf::Forward, &key.0)? {
                outcomes.push(Inserted::Existing { key: *key, stored });
                continue 'value;
            }
        }
        while let Some(token) = values.next_candidate(item) {
            let reverse = keys::reverse_key(namespace, &token);
            if txn.contains(Cf::Reverse, &reverse)? {
                continue;
            }
            let Some(rows) = values.rows(item, &token) else {
                break;
            };
            txn.put(Cf::Reverse, reverse, rows.reverse);
            if let (Some(key), Some(entry)) = (forward.first(), rows.forward) {
                txn.put(Cf::Forward, key.0.as_slice(), entry);
            }
            outcomes.push(Inserted::New(Arc::from(token)));
            continue 'value;
        }
        outcomes.push(Inserted::Taken);
    }
    Ok(InsertOutcome::Done(outcomes))
}

/// Write-ahead log bytes kept at most before the column families holding
/// the oldest log are flushed: also about what a restart replays at most.
const MAX_LOG_BYTES: u64 = 256 << 20;

/// Bench-only: RocksDB's own default for the write-ahead log's bound, so
/// that the benchmark measures what [`rocks_options`] changes in the same
/// run. Compiled in only with the `bench-switches` feature.
fn rocksdb_defaults_for_bench() -> bool {
    #[cfg(feature = "bench-switches")]
    if std::env::var_os("PHIVAULT_BENCH_ROCKSDB_DEFAULTS").is_some() {
        tracing::warn!(
            "BENCHMARK BUILD: PHIVAULT_BENCH_ROCKSDB_DEFAULTS is set; RocksDB's own write-ahead log bound (about 4.5 GiB here) is in use"
        );
        return true;
    }
    false
}

fn rocks_options(options: &StoreOptions, create: bool) -> (Options, Vec<ColumnFamilyDescriptor>) {
    let cache = Cache::new_lru_cache(options.block_cache_bytes);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&cache);
    // Most reads are point lookups of keys that do not exist yet (a new
    // value's forward entry, a candidate token's reverse entry): a bloom
    // filter answers those without touching a data block.
    table.set_bloom_filter(10.0, false);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);

    let mut cf_options = Options::default();
    // Values are ciphertext and keys are keyed hashes: incompressible.
    cf_options.set_compression_type(DBCompressionType::None);
    cf_options.set_block_based_table_factory(&table);
    // The same argument in the memtable: the writer's re-check of a new
    // value's forward entry and of each candidate token's reverse entry
    // almost always misses, and without a filter every miss walks the skip
    // list (the writer thread's largest cost in profiles).
    cf_options.set_memtable_whole_key_filtering(true);
    cf_options.set_memtable_prefix_bloom_ratio(0.1);

    let mut db_options = cf_options.clone();
    db_options.create_if_missing(create);
    db_options.create_missing_column_families(create);
    db_options.set_max_background_jobs(2);
    db_options.set_keep_log_file_num(4);
    db_options.set_max_log_file_size(16 << 20);
    if !rocksdb_defaults_for_bench() {
        // A log file is done with only once every column family holding a
        // write from it is flushed. The small ones (the audit head's, a
        // client's) fill slowly, so by default they kept every log since
        // the first alive until the logs reached RocksDB's own bound, four
        // times all memtables together (4.5 GiB here), and a restart
        // replayed all of them. Past this size RocksDB flushes the column
        // families that hold the oldest log.
        db_options.set_max_total_wal_size(MAX_LOG_BYTES);
        // Measured and left out (BENCHMARKS.md, "Detokenize latency with a
        // durable audit record"): reusing old log files
        // (`recycle_log_file_num`) spares each commit's sync an inode write
        // and moved up to 44% of commits under 100 µs, but changed neither
        // throughput nor the tail, and RocksDB's own crash tests leave it
        // off since a recovery that lost data; handing tables to the disk
        // in steps (`bytes_per_sync`) showed no gain either.
    }
    let descriptors = Cf::ALL
        .iter()
        .map(|cf| ColumnFamilyDescriptor::new(cf.name(), cf_options.clone()))
        .collect();
    (db_options, descriptors)
}
