//! phivault: a format-preserving tokenization vault for protected health
//! information.
//!
//! A [`Vault`] swaps PHI values for deterministic tokens that keep the value's
//! format, and keeps the way back in an encrypted mapping:
//!
//! * [`crypto`] — the key hierarchy: an Argon2id (or key-file) KEK wraps
//!   versioned keysets of an AES-256-SIV key and an HMAC-SHA256 PRF key;
//! * [`format`] — how each kind of value is validated and how a token of the
//!   same shape is drawn;
//! * [`store`] — the only module that touches storage: the boundary's
//!   traits, and the embedded RocksDB backend with the single writer that
//!   group-commits every write;
//! * [`Vault`] — tokenize and detokenize orchestration, and the
//!   hash-chained audit trail every reveal is recorded in.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use phivault::{MasterKey, Vault, VaultOptions};
//! let key = MasterKey::read_key_file("vault.key".as_ref())?;
//! let vault = Vault::open("data".as_ref(), key, VaultOptions::default()).await?;
//! let token = vault.tokenize("ssn", &["123-45-6789"]).await?.remove(0)?;
//! let value = vault.detokenize("ssn", &[&token]).await?.remove(0)?;
//! assert_eq!(value, "123-45-6789");
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod audit;
pub mod auth;
mod background;
mod clock;
mod coalesce;
pub mod crypto;
pub mod detect;
mod engine;
mod error;
mod failpoint;
pub mod format;
#[cfg(fuzzing)]
pub mod fuzzing;
mod hex;
mod keyring;
pub mod limits;
mod maintenance;
mod namespace;
mod portable;
pub mod purpose;
mod rotation;
pub mod server;
pub mod store;
mod unseal;

pub use audit::{
    AuditEvent, AuditRecord, AuditReport, CHECKPOINT_RPC, DEFAULT_DISCLOSURES, Disclosure,
    TokenMark, decode_record,
};
pub use crypto::MasterKey;
pub use engine::{
    ClientSpec, Durability, ItemResult, Limits, Mint, TokenizeCounts, Vault, VaultOptions, mask,
};
pub use error::{Error, ItemCode, ItemError};
pub use maintenance::{
    BackupInfo, Problem, ProblemKind, VerifyReport, backup_offline, verify_audit_at,
};
pub use namespace::{Namespace, NamespaceSpec};
pub use portable::{ExportInfo, ImportInfo, import};
pub use rotation::{KeyStatus, KeyVersion, LastRotation, RotationProgress};
pub use store::schema::{KeysetState, RotationPhase};
