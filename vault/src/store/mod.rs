//! The storage boundary: the only module that touches storage.
//!
//! The engine, the audit trail, the rotation job and the server talk to
//! storage through [`Storage`], whose operations are the vault's own —
//! insert-or-get a batch of mappings, look up a batch of tokens, append
//! audit records with the change they describe, registry changes, the
//! rotation job's steps, leases — so that each backend can do each in one
//! round trip (DESIGN.md §9). [`meta`] says where a vault lives and opens,
//! creates and rekeys it, whatever the backend. [`schema`] says what a stored row holds,
//! whatever backend stores it; [`rocks`] is the embedded RocksDB backend,
//! with its single group-committing writer; [`postgres`] keeps a vault in
//! PostgreSQL for stateless nodes. The conformance suite in
//! `vault/tests/storage_conformance.rs` runs against every backend.

mod audit;
pub mod integrity;
mod lease;
mod lifecycle;
mod mappings;
pub mod meta;
pub mod portable;
pub mod postgres;
mod registry;
pub mod rocks;
mod rotation;
pub mod schema;

pub use audit::{
    AuditStore, LANE_SHIFT, PendingRecord, StoredRecord, chain_hash, lane_of, record_id, seq_of,
};
pub use lease::{Lease, LeaseStore, SharedUsage, Usage, holder_name};
pub use lifecycle::{
    BATCH_BUCKETS, BackupFinish, COMMIT_MICROS_BUCKETS, ForwardRow, Lifecycle, WriterStats,
    commit_bucket,
};
pub use mappings::{InsertOutcome, Inserted, MappingRows, MappingStore, NewValues, StoreFuture};
pub use meta::{
    Genesis, Location, MasterChange, MasterRecord, MetaStore, RowKey, create, create_empty, exists,
    open, open_read_only, read_master_record,
};
pub use portable::{Import, PortableStore, Row};
pub use registry::{ClientChange, ClientRow, NamespaceRow, RegistryStore};
pub use rocks::{Cf, Entry, Store, StoreOptions, Txn};
pub use rotation::{Moved, NotStarted, OnCommit, ReverseEntry, RotationStart, RotationStore};

/// Everything a backend provides: the vault's own operations, each one
/// round trip (DESIGN.md §9). The conformance suite in
/// `vault/tests/storage_conformance.rs` says what each must do.
pub trait Storage:
    MappingStore
    + AuditStore
    + RegistryStore
    + RotationStore
    + LeaseStore
    + MetaStore
    + Lifecycle
    + PortableStore
{
}

impl<T> Storage for T where
    T: MappingStore
        + AuditStore
        + RegistryStore
        + RotationStore
        + LeaseStore
        + MetaStore
        + Lifecycle
        + PortableStore
{
}

/// How writes reach the disk before a caller is told they succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Every commit is fsynced (the default). Group commit amortises the cost.
    #[default]
    Fsync,
    /// Commits are in the OS page cache only: a power loss can drop
    /// acknowledged mappings. For benchmarks and throwaway vaults.
    Os,
}

/// Storage failures, in terms of the vault rather than of a backend. The
/// text is for operators' logs; it carries file names and the backend's
/// reason, never keys or values of rows.
///
/// [`StoreError::Tampered`] and [`StoreError::Corrupt`] say the stored data
/// itself is wrong (a client sees `DATA_LOSS`); the others say storage could
/// not be reached or used now (`UNAVAILABLE`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend failed an operation: an I/O error, a full disk, a lost
    /// connection. Retrying later may succeed.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The writer is gone (shut down or crashed).
    #[error("the storage writer has stopped")]
    WriterStopped,
    /// The job panicked on the writer; it was discarded, and the writer goes
    /// on with the others.
    #[error("a storage job failed unexpectedly and was discarded")]
    JobPanicked,
    /// A table is missing from an existing database.
    #[error("the database lacks its {0:?} table")]
    MissingTable(&'static str),
    /// `create` found a database already there.
    #[error("a database already exists at {0}")]
    AlreadyExists(String),
    /// A row that grants or shapes access failed its integrity check: it was
    /// written or changed outside phivault. Names the table and the row,
    /// never its value.
    #[error(
        "the {table} table's row {row} failed its integrity check: the data directory was modified outside phivault"
    )]
    Tampered {
        /// The table.
        table: &'static str,
        /// The row, by a name that is not PHI (a client id, a namespace or
        /// `meta` name, a keyset version).
        row: String,
    },
    /// A row is missing or does not decode where the vault's own writes
    /// always leave a readable one: the data was damaged.
    #[error("the {table} table is damaged: {what}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// What was wrong, by a name that is not PHI.
        what: &'static str,
    },
    /// The database's schema is newer than this binary knows: a newer
    /// version of phivault migrated it.
    #[error(
        "the database's schema is at version {found}, newer than this binary's {supported}: run a phivault at least as new as the one that migrated it"
    )]
    SchemaTooNew {
        /// The database's version.
        found: u32,
        /// The newest this binary knows.
        supported: u32,
    },
    /// The backend does not do this; the text says what to do instead.
    #[error("{0}")]
    Unsupported(&'static str),
    /// A checkpoint could not be written.
    #[error("cannot write a checkpoint to {path}: {reason}")]
    Checkpoint {
        /// Where it was to go.
        path: String,
        /// The backend's or the file system's reason.
        reason: String,
    },
}

impl StoreError {
    /// Whether the stored data itself is wrong, as opposed to storage being
    /// out of reach for now.
    pub fn is_data_loss(&self) -> bool {
        matches!(self, Self::Tampered { .. } | Self::Corrupt { .. })
    }
}
