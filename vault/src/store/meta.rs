//! Where a vault lives, and the few records a backend keeps about the vault
//! itself: what unseals it (the KDF record and KEK check), the key its rows
//! that shape access are tagged under, and the first commit of a new vault.
//! Opening, creating and rekeying a vault go through here, so that no module
//! above `store/` knows which backend holds the data.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use zeroize::Zeroizing;

use super::postgres::{PgStore, PgTarget};
use super::{StoreError, StoreFuture, StoreOptions};

/// Where a vault's data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An embedded RocksDB database in a directory on this machine.
    Directory(PathBuf),
    /// A database of a PostgreSQL server or cluster, shared by any number
    /// of vault nodes.
    Postgres(Box<PgTarget>),
}

impl Location {
    /// The embedded database in `path`.
    pub fn directory(path: &Path) -> Self {
        Self::Directory(path.to_path_buf())
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Directory(path) => write!(f, "{}", path.display()),
            Self::Postgres(target) => write!(f, "{target}"),
        }
    }
}

/// The records that unseal a vault, as stored. Read without opening the
/// vault for writing, so that a wrong key changes nothing.
#[derive(Debug, Default)]
pub struct MasterRecord {
    /// The stored format version (`schema::u32_bytes`).
    pub format_version: Option<Vec<u8>>,
    /// The KDF record: salt and parameters, no secret.
    pub kdf: Option<Vec<u8>>,
    /// The KEK check: proves a derivation right and says which protection
    /// the rows carry.
    pub kek_check: Option<Vec<u8>>,
}

/// The key rows that shape access (clients, namespaces, keysets, and the
/// records of the active keyset, rotation, namespace ids and audit head)
/// are tagged under: derived from the KEK, so a row written without it is
/// refused. The KDF record, KEK check and audit key row are not tagged: each
/// is checked by what it unlocks.
pub struct RowKey(Zeroizing<[u8; 32]>);

impl RowKey {
    /// The tagging key `key` (32 bytes derived from the KEK).
    pub fn new(key: &[u8; 32]) -> Self {
        Self(Zeroizing::new(*key))
    }

    /// The key's bytes, for the backend that tags with it.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// The first commit of a new vault: everything it needs to be unsealed and
/// to serve, written together or not at all.
pub struct Genesis {
    /// The KDF record.
    pub kdf: Vec<u8>,
    /// The KEK check.
    pub kek_check: Vec<u8>,
    /// Keyset 1, the active one (`schema::KeysetRow`).
    pub keyset: Vec<u8>,
    /// The audit key's row (`schema::AuditKeyRow`).
    pub audit_key: Vec<u8>,
    /// The default namespaces: name and row, ids from 1 in order.
    pub namespaces: Vec<(String, Vec<u8>)>,
}

/// A new master key's records, replacing the old ones in one commit
/// (`phivault rekey`): after a crash exactly one of the two keys unseals the
/// vault.
pub struct MasterChange {
    /// The tagging key derived from the new KEK: every tagged row is tagged
    /// again under it in the same commit.
    pub row_key: RowKey,
    /// The new KDF record.
    pub kdf: Vec<u8>,
    /// The new KEK check.
    pub kek_check: Vec<u8>,
    /// Every live keyset's row, wrapped under the new KEK, by version.
    pub keysets: Vec<(u32, Vec<u8>)>,
    /// The audit key's row, wrapped under the new KEK.
    pub audit_key: Vec<u8>,
}

/// The operations on the records about the vault itself.
pub trait MetaStore: Send + Sync {
    /// The KDF record as stored (it is not tagged: it carries no secret,
    /// and the KEK check proves the derivation it leads to).
    fn kdf_record(&self) -> StoreFuture<'_, Option<Vec<u8>>>;

    /// From now on, rows that shape access are tagged under `key` when
    /// written and checked when read. With `untagged_check`, the vault's
    /// rows predate tags: each is tagged first, and the KEK check replaced by
    /// `untagged_check`, in one commit; returns the rows tagged.
    fn protect_rows(&self, key: RowKey, untagged_check: Option<Vec<u8>>) -> StoreFuture<'_, usize>;

    /// Replaces forward entries (raw key, entry as stored) in one commit:
    /// the migration that binds the entries of an older vault.
    fn rewrite_forward_entries(&self, entries: Vec<(Vec<u8>, Vec<u8>)>) -> StoreFuture<'_, ()>;

    /// Replaces the KEK check alone (a migration's last step).
    fn set_kek_check(&self, check: Vec<u8>) -> StoreFuture<'_, ()>;

    /// Replaces the master key's records in one commit, then makes sure the
    /// records wrapped under the old key leave the storage's files.
    fn replace_master(&self, change: MasterChange) -> StoreFuture<'_, ()>;
}

/// Whether a vault exists at `location`.
pub async fn exists(location: &Location) -> Result<bool, StoreError> {
    match location {
        Location::Directory(path) => Ok(super::rocks::Store::exists(path)),
        Location::Postgres(target) => PgStore::exists(target).await,
    }
}

/// Reads the records that unseal the vault at `location` without opening
/// it for writing: no lock taken, nothing changed.
pub async fn read_master_record(location: &Location) -> Result<MasterRecord, StoreError> {
    match location {
        Location::Directory(path) => super::rocks::read_master_record(path),
        Location::Postgres(target) => PgStore::read_master_record(target).await,
    }
}

/// Creates the vault at `location` with its first commit; rows are tagged
/// under `row_key`. Fails if one exists there.
pub async fn create(
    location: &Location,
    options: &StoreOptions,
    row_key: RowKey,
    genesis: Genesis,
) -> Result<Arc<dyn super::Storage>, StoreError> {
    match location {
        Location::Directory(path) => {
            let store = super::rocks::Store::create(path, options)?;
            store.genesis(row_key, genesis).await?;
            Ok(Arc::new(store))
        }
        Location::Postgres(target) => {
            Ok(Arc::new(PgStore::create(target, row_key, genesis).await?))
        }
    }
}

/// Creates an empty store at `location` for an import
/// ([`super::PortableStore::import_rows`]), its rows tagged under
/// `row_key`. Fails if a vault, or rows of one, are there.
pub async fn create_empty(
    location: &Location,
    options: &StoreOptions,
    row_key: RowKey,
) -> Result<Arc<dyn super::Storage>, StoreError> {
    match location {
        Location::Directory(path) => {
            let store = super::rocks::Store::create(path, options)?;
            store.set_row_mac(Some(super::integrity::RowMac::new(row_key.bytes())));
            Ok(Arc::new(store))
        }
        Location::Postgres(target) => Ok(Arc::new(PgStore::create_empty(target, row_key).await?)),
    }
}

/// Opens the vault at `location` for reading and writing. Its rows are
/// checked once [`MetaStore::protect_rows`] installs their key.
pub async fn open(
    location: &Location,
    options: &StoreOptions,
) -> Result<Arc<dyn super::Storage>, StoreError> {
    match location {
        Location::Directory(path) => Ok(Arc::new(super::rocks::Store::open(path, options)?)),
        Location::Postgres(target) => Ok(Arc::new(PgStore::open(target).await?)),
    }
}

/// Opens the vault at `location` for reading only, beside a server that
/// may be running on it: it sees what was written when it opened (RocksDB)
/// or what is committed when it reads (PostgreSQL), and writes fail.
pub async fn open_read_only(
    location: &Location,
    options: &StoreOptions,
) -> Result<Arc<dyn super::Storage>, StoreError> {
    match location {
        Location::Directory(path) => Ok(Arc::new(super::rocks::Store::open_read_only(
            path, options,
        )?)),
        Location::Postgres(target) => Ok(Arc::new(PgStore::open_read_only(target).await?)),
    }
}
