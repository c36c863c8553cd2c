//! The registry operations of the storage boundary: namespaces and clients,
//! each change stored with its audit record in one commit, so that a change
//! and its record exist together or not at all.

use serde::{Deserialize, Serialize};

use super::{PendingRecord, StoreError, StoreFuture};

/// A client as stored. No `Debug`: it holds the digest of an API key's
/// secret, which has no business in a log.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct ClientRow {
    /// The administrator's name for it.
    pub name: String,
    /// Its scopes, as written (`tokenize:ssn`, `admin`, …).
    pub scopes: Vec<String>,
    /// SHA-256 of the secret part of the API key, hex.
    pub secret_sha256: String,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// When it was revoked, if it was.
    pub revoked_at: Option<u64>,
    /// Its rate limits and quotas (empty: the server's defaults). Absent
    /// from the rows of clients made before limits existed.
    #[serde(default, skip_serializing_if = "crate::limits::Limits::is_empty")]
    pub limits: crate::limits::Limits,
    /// Its reveals must state a purpose of use.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_purpose: bool,
    /// When its break-glass window opened, until an administrator re-arms
    /// it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass_opened_at: Option<u64>,
    /// Created since duties were separated (`admin` no longer implies
    /// `audit` and `grant`); absent from older rows.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub separated: bool,
    /// When its API key stops being accepted (seconds since the Unix
    /// epoch); `None`: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// How long each new key of it lives, when keys expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_lifetime_secs: Option<u64>,
    /// The digest of the key a rotation retired, still accepted until
    /// `previous_valid_until` (the grace period).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_sha256: Option<String>,
    /// When the retired key stops being accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_valid_until: Option<u64>,
    /// Raised by every change of the row: the MAC proves a row was written
    /// by the vault, and this that it is not an older copy put back (which
    /// could re-arm a break-glass window or bring a retired key back).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: u64,
    /// Its quarantine policy: suspend it when the detector raises an alert
    /// about it (else only alert).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend_on_alert: bool,
    /// When it was suspended, and why in words, until an administrator
    /// releases it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended: Option<(u64, String)>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A change to a client's row, applied where the backend holds it locked;
/// `false` when it found nothing to change, and then nothing is written
/// (the audit record neither).
pub type ClientChange = Box<dyn FnOnce(&mut ClientRow) -> bool + Send>;

/// Makes a new namespace's row once storage has given it its id.
pub type NamespaceRow = Box<dyn FnOnce(u32) -> Vec<u8> + Send>;

/// The registry operations of a backend.
pub trait RegistryStore: Send + Sync {
    /// Every namespace row, as [`RegistryStore::create_namespace`] stored it.
    fn namespace_rows(&self) -> StoreFuture<'_, Vec<Vec<u8>>>;

    /// Every client, by id.
    fn client_rows(&self) -> StoreFuture<'_, Vec<(String, ClientRow)>>;

    /// The registry's epoch, raised by every change of a client, a
    /// namespace or the keysets made by any node: a node that finds it moved
    /// reads the registry again before it answers, so that a revocation on
    /// one node applies on the next call on every node. `None` for a backend
    /// only one process writes, whose changes are all this process's own.
    fn registry_epoch(&self) -> StoreFuture<'_, Option<u64>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Creates namespace `name` with the next free id, its row made by
    /// `row`, and appends `audit`; returns the id, or `None` (and writes
    /// nothing) when the name is taken.
    fn create_namespace(
        &self,
        name: String,
        row: NamespaceRow,
        audit: Option<PendingRecord>,
    ) -> StoreFuture<'_, Option<u32>>;

    /// Stores client `id` and appends `audit`; `false` (and nothing written)
    /// when the id is taken: an existing client is never overwritten.
    fn create_client(
        &self,
        id: String,
        row: ClientRow,
        audit: Option<PendingRecord>,
    ) -> StoreFuture<'_, bool>;

    /// Applies `change` to client `id`'s row, raises its version and
    /// appends `audit`, in one commit; the client as it now is, or `None`
    /// (and nothing written) when there is no such client. A change that
    /// finds nothing to change writes nothing. The change runs on the row as stored (read
    /// under the commit's lock), so two nodes changing one client do not
    /// lose either change.
    fn update_client(
        &self,
        id: String,
        change: ClientChange,
        audit: Option<PendingRecord>,
    ) -> StoreFuture<'_, Option<ClientRow>>;

    /// Marks client `id` revoked at `at` (a revoked client keeps its first
    /// revocation time) and appends `audit`; the client as it now is, or
    /// `None` (and nothing written) when there is no such client.
    fn revoke_client(
        &self,
        id: String,
        at: u64,
        audit: Option<PendingRecord>,
    ) -> StoreFuture<'_, Option<ClientRow>> {
        self.update_client(
            id,
            Box::new(move |row| {
                row.revoked_at.get_or_insert(at);
                true
            }),
            audit,
        )
    }
}

/// A client row as every backend stores it (JSON).
pub(crate) fn encode_client(row: &ClientRow) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(row).map_err(|_| StoreError::Corrupt {
        table: "clients",
        what: "a client row cannot be encoded",
    })
}

/// A stored client row, read back.
pub(crate) fn decode_client(bytes: &[u8]) -> Result<ClientRow, StoreError> {
    serde_json::from_slice(bytes).map_err(|_| StoreError::Corrupt {
        table: "clients",
        what: "a client row is unreadable",
    })
}
