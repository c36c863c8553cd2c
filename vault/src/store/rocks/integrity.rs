//! Which RocksDB rows carry a MAC (DESIGN.md §10); the MAC itself is
//! [`crate::store::integrity`], shared by every backend.

use super::{Cf, keys};

pub use crate::store::integrity::{RowMac, TAG_LEN, row_name};

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
        Cf::Meta => META_ROWS.contains(&key) || key.starts_with(keys::META_LANE_HEAD_PREFIX),
        Cf::Forward | Cf::Reverse | Cf::Audit | Cf::Disclosures => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rows_that_shape_access_are_protected() {
        assert!(protects(Cf::Clients, b"any"));
        assert!(protects(Cf::Meta, keys::META_ACTIVE_KEYSET));
        assert!(protects(Cf::Meta, keys::META_AUDIT_HEAD));
        assert!(protects(Cf::Meta, &keys::lane_head_key(9)));
        assert!(!protects(Cf::Meta, keys::META_AUDIT_KEY));
        assert!(!protects(Cf::Meta, keys::META_KDF));
        assert!(!protects(Cf::Reverse, b"any"));
    }
}
