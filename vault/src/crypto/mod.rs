//! Key material and the primitives built on it.
//!
//! Everything secret in here lives in types that wipe themselves on drop and
//! implement neither `Debug`, `Clone` nor `Serialize`, so a key can only leave
//! this module through an explicit, greppable method. The compiler holds us
//! to that:
//!
//! ```compile_fail
//! fn requires_debug<T: std::fmt::Debug>() {}
//! requires_debug::<phivault::crypto::Keyset>();
//! ```
//! ```compile_fail
//! fn requires_clone<T: Clone>() {}
//! requires_clone::<phivault::crypto::Keyset>();
//! ```
//! ```compile_fail
//! fn requires_serialize<T: serde::Serialize>() {}
//! requires_serialize::<phivault::crypto::Keyset>();
//! ```
//! ```compile_fail
//! fn requires_debug<T: std::fmt::Debug>() {}
//! requires_debug::<phivault::crypto::SivKey>();
//! ```
//! ```compile_fail
//! fn requires_clone<T: Clone>() {}
//! requires_clone::<phivault::crypto::SivKey>();
//! ```
//! ```compile_fail
//! fn requires_serialize<T: serde::Serialize>() {}
//! requires_serialize::<phivault::crypto::SivKey>();
//! ```
//! ```compile_fail
//! fn requires_debug<T: std::fmt::Debug>() {}
//! requires_debug::<phivault::crypto::PrfKey>();
//! ```
//! ```compile_fail
//! fn requires_clone<T: Clone>() {}
//! requires_clone::<phivault::crypto::PrfKey>();
//! ```
//! ```compile_fail
//! fn requires_serialize<T: serde::Serialize>() {}
//! requires_serialize::<phivault::crypto::PrfKey>();
//! ```
//! ```compile_fail
//! fn requires_debug<T: std::fmt::Debug>() {}
//! requires_debug::<phivault::crypto::Kek>();
//! ```
//! ```compile_fail
//! fn requires_clone<T: Clone>() {}
//! requires_clone::<phivault::crypto::Kek>();
//! ```
//! ```compile_fail
//! fn requires_serialize<T: serde::Serialize>() {}
//! requires_serialize::<phivault::crypto::Kek>();
//! ```
//! ```compile_fail
//! fn requires_debug<T: std::fmt::Debug>() {}
//! requires_debug::<phivault::crypto::AuditKey>();
//! ```
//! ```compile_fail
//! fn requires_clone<T: Clone>() {}
//! requires_clone::<phivault::crypto::AuditKey>();
//! ```
//! ```compile_fail
//! fn requires_debug<T: std::fmt::Debug>() {}
//! requires_debug::<phivault::crypto::MasterKey>();
//! ```
//! ```compile_fail
//! fn requires_clone<T: Clone>() {}
//! requires_clone::<phivault::crypto::MasterKey>();
//! ```
//! ```compile_fail
//! fn requires_serialize<T: serde::Serialize>() {}
//! requires_serialize::<phivault::crypto::MasterKey>();
//! ```
//!
//! (The same check against a type that does implement the traits compiles,
//! so these blocks fail for the reason they state.)
//!
//! ```
//! fn debug_clone_serialize<T: std::fmt::Debug + Clone + serde::Serialize>() {}
//! debug_clone_serialize::<phivault::format::FormatSpec>();
//! ```

mod hsm;
pub(crate) mod kek;
mod keyset;
mod prf;
pub mod shares;
mod siv;

pub use hsm::HsmSeal;
pub use kek::{KdfParams, Kek, MasterKey, Protection};
pub use keyset::{AuditKey, KeyPurpose, Keyset};
pub use prf::{
    BINDING_LEN, BlindIndex, ByteSource, OsStream, PrfKey, PrfStream, SlotRng, TokenRng,
};
pub use siv::SivKey;

/// Failures of the primitives. Deliberately coarse: a caller (or an attacker)
/// learns that an operation failed, never which byte or which check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// A ciphertext did not authenticate under the key and associated data.
    #[error("decryption failed: the ciphertext or its context was altered")]
    DecryptionFailed,
    /// The operating system's random number generator failed.
    #[error("the operating system's random number generator failed")]
    Rng,
    /// Argon2id parameters outside the accepted range (checked before hashing).
    #[error("key derivation parameters out of range: {0}")]
    KdfParams(String),
    /// The vault was sealed with another kind of master key.
    #[error("{0}")]
    MasterKeyKind(String),
    /// The master key file could not be used.
    #[error("master key file: {0}")]
    KeyFile(String),
    /// The PKCS#11 seal could not be used: the module, token, PIN or key.
    #[error("HSM: {0}")]
    Hsm(String),
    /// Key shares that cannot be combined: named by position, never quoted.
    #[error("{0}")]
    KeyShares(String),
    /// The sealed secret stored in the vault is malformed.
    #[error("the vault's sealed master secret is malformed")]
    Corrupt,
}

/// Fills `buf` from the operating system's random number generator.
pub fn fill_random(buf: &mut [u8]) -> Result<(), CryptoError> {
    getrandom::fill(buf).map_err(|_| CryptoError::Rng)
}
