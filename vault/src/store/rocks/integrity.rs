//! MACs on the rows that grant or shape access (DESIGN.md §10).
//!
//! Reverse rows are ciphertext bound to their row, but client rows (scopes,
//! secret digest, revocation), namespace rows (id, format, kept characters),
//! keyset rows (state) and the `meta` rows that point at the active keyset or
//! describe a rotation were stored in clear: anyone able to write the data
//! directory could add a client with `detokenize:*`, un-revoke one, or swap
//! two namespaces' ids, and the next start would serve them. Each such row
//! now carries `HMAC-SHA256(registry key, table ‖ row key ‖ value)`, the key
//! derived from the KEK with its own HKDF label; a row whose tag does not
//! verify is refused by table and row, never by value.
//!
//! The tag is appended when a commit is written and checked and removed when
//! a row is read, here in the storage layer, so that the code above reads and
//! writes the rows as before and cannot forget either step.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::{Cf, keys};
use crate::store::StoreError;
use crate::store::schema;

/// Bytes a tag adds to a row.
pub const TAG_LEN: usize = schema::ROW_TAG_LEN;

/// `meta` rows that are MACed; every row of `clients`, `namespaces` and
/// `keys` is too. The audit head among them keys the audit chain: the chain
/// is SHA-256 links a reader without the key can walk, but whoever rewrites
/// or truncates it must also make the head match, and cannot without the key.
const META_ROWS: [&[u8]; 5] = [
    keys::META_ACTIVE_KEYSET,
    keys::META_NEXT_NAMESPACE_ID,
    keys::META_ROTATION,
    keys::META_LAST_ROTATION,
    keys::META_AUDIT_HEAD,
];

/// Whether the row `key` of `cf` carries a tag.
pub fn protects(cf: Cf, key: &[u8]) -> bool {
    match cf {
        Cf::Clients | Cf::Namespaces | Cf::Keys => true,
        Cf::Meta => META_ROWS.contains(&key),
        Cf::Forward | Cf::Reverse | Cf::Audit | Cf::Disclosures => false,
    }
}

/// The keyed MAC over protected rows.
pub struct RowMac(Hmac<Sha256>);

impl RowMac {
    /// A MAC under `key` (32 bytes derived from the KEK).
    pub fn new(key: &[u8; 32]) -> Self {
        // HMAC takes keys of any length; 32 bytes always fit.
        Self(<Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!()))
    }

    fn keyed(&self, cf: Cf, key: &[u8], value: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.0.clone();
        mac.update(cf.name().as_bytes());
        mac.update(&[0]);
        mac.update(&(key.len() as u64).to_be_bytes());
        mac.update(key);
        mac.update(value);
        mac
    }

    /// `value` with its tag appended.
    pub fn seal(&self, cf: Cf, key: &[u8], value: &[u8]) -> Vec<u8> {
        let tag = self.keyed(cf, key, value).finalize().into_bytes();
        let mut sealed = Vec::with_capacity(value.len() + TAG_LEN);
        sealed.extend_from_slice(value);
        sealed.extend_from_slice(&tag);
        sealed
    }

    /// The value of a stored row whose tag verifies (compared in constant
    /// time), or which table and row failed.
    pub fn open(&self, cf: Cf, key: &[u8], stored: &[u8]) -> Result<Vec<u8>, StoreError> {
        let tampered = || StoreError::Tampered {
            table: cf.name(),
            row: row_name(cf, key),
        };
        let split = stored.len().checked_sub(TAG_LEN).ok_or_else(tampered)?;
        let (value, tag) = stored.split_at(split);
        self.keyed(cf, key, value)
            .verify_slice(tag)
            .map_err(|_| tampered())?;
        Ok(value.to_vec())
    }
}

/// How an error names a row: a keyset by its version, others by their key
/// (client ids, namespace and `meta` names: none of them PHI), shortened.
pub fn row_name(cf: Cf, key: &[u8]) -> String {
    if cf == Cf::Keys
        && let Some(version) = schema::decode_u32(key)
    {
        return format!("version {version}");
    }
    let text: String = String::from_utf8_lossy(key)
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect();
    format!("{text:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_binds_table_row_and_value() {
        let mac = RowMac::new(&[7; 32]);
        let sealed = mac.seal(Cf::Clients, b"0123456789abcdef", b"row");
        assert_eq!(
            mac.open(Cf::Clients, b"0123456789abcdef", &sealed)
                .expect("opens"),
            b"row"
        );
        let other_row = mac.open(Cf::Clients, b"0123456789abcdee", &sealed);
        let other_table = mac.open(Cf::Namespaces, b"0123456789abcdef", &sealed);
        let mut flipped = sealed.clone();
        flipped[0] ^= 1;
        let changed = mac.open(Cf::Clients, b"0123456789abcdef", &flipped);
        let other_key = RowMac::new(&[8; 32]).open(Cf::Clients, b"0123456789abcdef", &sealed);
        for refused in [other_row, other_table, changed, other_key] {
            assert!(matches!(refused, Err(StoreError::Tampered { .. })));
        }
        assert!(mac.open(Cf::Clients, b"x", b"short").is_err());
    }

    #[test]
    fn only_rows_that_shape_access_are_protected() {
        assert!(protects(Cf::Clients, b"any"));
        assert!(protects(Cf::Meta, keys::META_ACTIVE_KEYSET));
        assert!(protects(Cf::Meta, keys::META_AUDIT_HEAD));
        assert!(!protects(Cf::Meta, keys::META_AUDIT_KEY));
        assert!(!protects(Cf::Meta, keys::META_KDF));
        assert!(!protects(Cf::Reverse, b"any"));
    }
}
