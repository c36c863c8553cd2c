//! A whole vault as rows no backend owns: what `phivault export` reads out
//! of one backend and `phivault import` writes into another.
//!
//! Every row is carried as the vault stores it (ciphertext, keyed hashes,
//! encoded records) except for the MACs on rows that shape access: each
//! backend checks and removes them on the way out and adds its own on the
//! way in, since a backend keys some rows its own way (an audit lane's head
//! is a `meta` row in RocksDB, a row of `audit_lanes` in PostgreSQL). What
//! keeps the rows honest between the two is the export file's own MAC, under
//! a key derived from the same KEK (`crate::portable`).
//!
//! Rows no vault needs elsewhere stay behind: leases, the registry epoch,
//! the write probe and the disclosure index (rebuilt from the records,
//! which name what they revealed).

use tokio::sync::mpsc;

use super::{StoreError, StoreFuture};

/// One row of a vault, whatever backend stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Row {
    /// A `meta` row by name, without its tag.
    Meta {
        /// Its name (`kdf`, `active_keyset`…).
        name: String,
        /// Its value.
        value: Vec<u8>,
    },
    /// A keyset, wrapped under the KEK, without its tag.
    Keyset {
        /// Its version.
        version: u32,
        /// The encoded `KeysetRow`.
        row: Vec<u8>,
    },
    /// A namespace, without its tag.
    Namespace {
        /// Its name.
        name: String,
        /// The encoded `NamespaceRow`.
        row: Vec<u8>,
    },
    /// A client, without its tag.
    Client {
        /// Its id.
        id: String,
        /// The encoded `ClientRow`.
        row: Vec<u8>,
    },
    /// A reverse row: a token and its sealed value.
    Reverse {
        /// The namespace's id.
        namespace: u32,
        /// The token's canonical form.
        token: Vec<u8>,
        /// The encoded `ReverseRow`.
        row: Vec<u8>,
    },
    /// A forward entry; always after the reverse row it names.
    Forward {
        /// `namespace ‖ keyset ‖ blind index` (`ForwardKey`).
        key: Vec<u8>,
        /// The token and its binding, as stored.
        entry: Vec<u8>,
    },
    /// An audit record, as stored.
    Audit {
        /// Its id (`record_id(lane, seq)`): checkpoints and cursors name
        /// records by id, so ids never change.
        id: u64,
        /// The record.
        record: Vec<u8>,
        /// On import only: the marks of the tokens it revealed, for the
        /// disclosure index (empty on export).
        revealed: Vec<[u8; 32]>,
    },
    /// An audit lane's head, without its tag.
    AuditHead {
        /// The lane.
        lane: u32,
        /// The encoded `AuditHead`.
        head: Vec<u8>,
    },
}

/// What an import is sent: rows, then the word to commit. A channel that
/// closes without [`Import::Commit`] leaves nothing behind that opens.
#[derive(Debug)]
pub enum Import {
    /// More rows.
    Rows(Vec<Row>),
    /// Everything was sent and checked: make the vault exist.
    Commit,
}

/// Rows per batch on the way out.
pub const EXPORT_BATCH: usize = 1024;

/// Moving a whole vault out of a backend and into another.
pub trait PortableStore: Send + Sync {
    /// Sends every row of the vault as of one moment, in batches: `meta`
    /// rows first, then keysets, namespaces, clients, reverse rows, forward
    /// entries, audit records and lane heads. Tags are checked on the way
    /// (a tampered row stops the export). Refused while a key rotation
    /// runs: mid-rotation, the backends keep different forward entries.
    fn export_rows<'a>(&'a self, sink: &'a mpsc::Sender<Vec<Row>>) -> StoreFuture<'a, u64>;

    /// Writes what `rows` brings into this new, empty store, tagging what
    /// needs a tag, and rebuilds the disclosure index. The vault exists only
    /// after [`Import::Commit`]: its format version is written last (the
    /// RocksDB backend) or everything is one transaction (PostgreSQL).
    fn import_rows(&self, rows: mpsc::Receiver<Import>) -> StoreFuture<'_, ()>;
}

/// The `meta` rows that belong to one backend's running, not to the vault.
pub(crate) fn stays_behind(meta_name: &str) -> bool {
    meta_name == "write_probe"
}

/// The error for an export started while a rotation runs.
pub(crate) fn rotation_running() -> StoreError {
    StoreError::Unsupported(
        "a key rotation is running: export the vault once it has finished (`phivault-client keys status`)",
    )
}
