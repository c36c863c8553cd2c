//! MACs on the rows that grant or shape access (DESIGN.md §10), whatever
//! backend stores them.
//!
//! Reverse rows are ciphertext bound to their row, but client rows (scopes,
//! secret digest, revocation), namespace rows (id, format, kept characters),
//! keyset rows (state) and the records that point at the active keyset,
//! describe a rotation or hold an audit chain's head would otherwise be
//! stored in clear: anyone able to write the storage could add a client with
//! `detokenize:*`, un-revoke one, or swap two namespaces' ids, and the next
//! start would serve them. Each such row carries
//! `HMAC-SHA256(registry key, table ‖ row key ‖ value)`, the key derived from
//! the KEK with its own HKDF label; a row whose tag does not verify is refused
//! by table and row, never by value.
//!
//! A backend appends the tag when it writes a row and checks and removes it
//! when it reads one, so that the code above reads and writes the rows as
//! they are and cannot forget either step. Both backends name tables and
//! rows alike, so a tag means the same wherever the row is kept.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::StoreError;
use super::schema;

/// Bytes a tag adds to a row.
pub const TAG_LEN: usize = schema::ROW_TAG_LEN;

/// The keyed MAC over protected rows.
pub struct RowMac(Hmac<Sha256>);

impl RowMac {
    /// A MAC under `key` (32 bytes derived from the KEK).
    pub fn new(key: &[u8; 32]) -> Self {
        // HMAC takes keys of any length; 32 bytes always fit.
        Self(<Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!()))
    }

    fn keyed(&self, table: &str, key: &[u8], value: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.0.clone();
        mac.update(table.as_bytes());
        mac.update(&[0]);
        mac.update(&(key.len() as u64).to_be_bytes());
        mac.update(key);
        mac.update(value);
        mac
    }

    /// `value` of row `key` of `table`, with its tag appended.
    pub fn seal(&self, table: &str, key: &[u8], value: &[u8]) -> Vec<u8> {
        let tag = self.keyed(table, key, value).finalize().into_bytes();
        let mut sealed = Vec::with_capacity(value.len() + TAG_LEN);
        sealed.extend_from_slice(value);
        sealed.extend_from_slice(&tag);
        sealed
    }

    /// The value of a stored row whose tag verifies (compared in constant
    /// time), or which table and row failed.
    pub fn open(
        &self,
        table: &'static str,
        key: &[u8],
        stored: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        let tampered = || StoreError::Tampered {
            table,
            row: row_name(table, key),
        };
        let split = stored.len().checked_sub(TAG_LEN).ok_or_else(tampered)?;
        let (value, tag) = stored.split_at(split);
        self.keyed(table, key, value)
            .verify_slice(tag)
            .map_err(|_| tampered())?;
        Ok(value.to_vec())
    }
}

/// How an error names a row: a keyset or an audit lane by its number,
/// others by their key (client ids, namespace and `meta` names: none of them
/// PHI), shortened.
pub fn row_name(table: &str, key: &[u8]) -> String {
    if let Some(n) = schema::decode_u32(key) {
        match table {
            "keys" => return format!("version {n}"),
            "audit_lanes" => return format!("lane {n}"),
            _ => {}
        }
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
        let sealed = mac.seal("clients", b"0123456789abcdef", b"row");
        assert_eq!(
            mac.open("clients", b"0123456789abcdef", &sealed)
                .expect("opens"),
            b"row"
        );
        let other_row = mac.open("clients", b"0123456789abcdee", &sealed);
        let other_table = mac.open("namespaces", b"0123456789abcdef", &sealed);
        let mut flipped = sealed.clone();
        flipped[0] ^= 1;
        let changed = mac.open("clients", b"0123456789abcdef", &flipped);
        let other_key = RowMac::new(&[8; 32]).open("clients", b"0123456789abcdef", &sealed);
        for refused in [other_row, other_table, changed, other_key] {
            assert!(matches!(refused, Err(StoreError::Tampered { .. })));
        }
        assert!(mac.open("clients", b"x", b"short").is_err());
    }

    #[test]
    fn rows_are_named_without_their_values() {
        assert_eq!(row_name("keys", &2u32.to_be_bytes()), "version 2");
        assert_eq!(row_name("audit_lanes", &3u32.to_be_bytes()), "lane 3");
        assert_eq!(row_name("clients", b"ab\ncd"), "\"abcd\"");
    }
}
