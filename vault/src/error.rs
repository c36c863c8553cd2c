//! The core's errors: request-level [`Error`] and per-item [`ItemError`].

use std::fmt;

use crate::crypto::CryptoError;
use crate::store::StoreError;

/// A request-level failure: the whole call fails.
///
/// Messages name the rule or the resource that failed and never carry a
/// value, a token or key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The passphrase or master key file does not unseal this vault.
    #[error("wrong passphrase or master key")]
    WrongMasterKey,
    /// The master key is unusable (unreadable file, wrong kind, bad
    /// parameters).
    #[error("{0}")]
    MasterKey(CryptoError),
    /// A passphrase that a new vault will not accept.
    #[error("the passphrase must be at least {min} characters long")]
    WeakPassphrase {
        /// The minimum length in characters.
        min: usize,
    },
    /// No vault exists at the path.
    #[error("no vault at {0} (run `phivault init` first)")]
    NotInitialized(String),
    /// `init` found a vault already there.
    #[error("a vault already exists at {0}")]
    AlreadyInitialized(String),
    /// A stored row is missing or unreadable where the vault's own writes
    /// always leave a readable one: damaged, or written by a version this one
    /// does not understand. Names the row's kind, never its content.
    #[error("the vault's stored data is damaged or not readable by this version: {0}")]
    Corrupt(&'static str),
    /// Stored key material failed authentication under a correct KEK.
    #[error("stored key material failed its integrity check")]
    KeyIntegrity,
    /// The namespace does not exist.
    #[error("namespace {0:?} not found")]
    NamespaceNotFound(String),
    /// A namespace of that name exists already.
    #[error("namespace {0:?} already exists")]
    NamespaceExists(String),
    /// A namespace definition that cannot be created.
    #[error("invalid namespace: {0}")]
    InvalidNamespace(String),
    /// The client does not exist.
    #[error("client {0:?} not found")]
    ClientNotFound(String),
    /// A client definition that cannot be created.
    #[error("invalid client: {0}")]
    InvalidClient(String),
    /// More items in one call than the configured limit.
    #[error("{got} items in one request exceed the limit of {limit}")]
    TooManyItems {
        /// Items in the request.
        got: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A key rotation is already running.
    #[error(
        "a key rotation is already in progress; wait for it to finish (see `keys status`) before starting another"
    )]
    RotationInProgress,
    /// A backup destination that cannot be used.
    #[error("invalid backup path: {0}")]
    InvalidBackupPath(String),
    /// Backups through the API are off: the server was started without a
    /// backup directory.
    #[error(
        "backups through the API need a backup directory: start the server with --backup-dir (or backup_dir in its configuration)"
    )]
    BackupsDisabled,
    /// A token argument that the namespace's format does not accept.
    #[error("{0}")]
    InvalidToken(ItemError),
    /// The audit record of a call could not be written: the call is refused
    /// and reveals nothing (fail closed).
    #[error("the audit record could not be written: {0}")]
    AuditUnavailable(StoreError),
    /// An export file could not be written, or one being imported is not
    /// whole, not authentic or not readable. Names the line and the fault,
    /// never a line's content.
    #[error("export file: {0}")]
    Export(String),
    /// A rate limit or quota of the caller is spent: the call did nothing.
    /// `retry_after` is when it would be allowed, if waiting helps.
    #[error("{what}")]
    Limited {
        /// Which limit, in words (kind, namespace, allowance).
        what: String,
        /// How long until the call would be allowed; `None` when waiting
        /// does not help (a call larger than the burst).
        retry_after: Option<std::time::Duration>,
    },
    /// The storage layer failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A primitive failed outside any per-item path (e.g. the OS RNG).
    #[error("cryptographic operation failed: {0}")]
    Crypto(CryptoError),
}

/// The status of a failed item, as a `google.rpc.Code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ItemCode {
    /// The value or token does not fit the namespace's format or limits.
    InvalidArgument,
    /// No such token in the namespace.
    NotFound,
    /// No free token is left for a value of this shape.
    ResourceExhausted,
    /// The stored mapping failed its integrity check.
    DataLoss,
    /// The vault could not complete the item (details in the server log).
    Internal,
}

impl ItemCode {
    /// The `google.rpc.Code` number.
    pub fn grpc_code(self) -> i32 {
        match self {
            Self::InvalidArgument => 3,
            Self::NotFound => 5,
            Self::ResourceExhausted => 8,
            Self::Internal => 13,
            Self::DataLoss => 15,
        }
    }
}

/// Why one item of a batch failed; the rest of the batch is unaffected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemError {
    /// The status.
    pub code: ItemCode,
    /// Names the namespace and the rule; never the value or token.
    pub message: String,
}

impl ItemError {
    pub(crate) fn new(code: ItemCode, namespace: &str, what: impl fmt::Display) -> Self {
        Self {
            code,
            message: format!("namespace {namespace:?}: {what}"),
        }
    }
}

impl fmt::Display for ItemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ItemError {}
