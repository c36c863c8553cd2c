//! How the RocksDB backend keys what it stores: the column families' key
//! encodings and the names of the `meta` rows. All integers are big-endian
//! so that keys sort by their numeric prefix.

/// `meta`: on-disk format version (u32).
pub const META_FORMAT_VERSION: &[u8] = b"format_version";
/// `meta`: how the KEK is derived (kind, Argon2id parameters, salt).
pub const META_KDF: &[u8] = b"kdf";
/// `meta`: a constant sealed under the KEK, bound to the KDF record.
pub const META_KEK_CHECK: &[u8] = b"kek_check";
/// `meta`: the keyset version that new mappings are written under (u32).
pub const META_ACTIVE_KEYSET: &[u8] = b"active_keyset";
/// `meta`: the id the next namespace receives (u32).
pub const META_NEXT_NAMESPACE_ID: &[u8] = b"next_namespace_id";
/// `meta`: the running key rotation and its cursor ([`RotationRow`](crate::store::schema::RotationRow)); absent
/// when none runs.
pub const META_ROTATION: &[u8] = b"rotation";
/// `meta`: the last completed key rotation ([`LastRotationRow`](crate::store::schema::LastRotationRow)).
pub const META_LAST_ROTATION: &[u8] = b"last_rotation";

/// `meta`: the audit key, wrapped under the KEK ([`AuditKeyRow`](crate::store::schema::AuditKeyRow)).
pub const META_AUDIT_KEY: &[u8] = b"audit_key";
/// `meta`: the last record of the audit chain ([`AuditHead`](crate::store::schema::AuditHead)); absent
/// before the first.
pub const META_AUDIT_HEAD: &[u8] = b"audit_head";
/// `meta`: prefix of the heads of audit lanes other than 0, followed by the
/// lane's number in decimal (`audit_head.9`). This backend appends on lane 0
/// only; other lanes come from a vault imported from storage several nodes
/// wrote to, and keep their records and heads as they were.
pub const META_LANE_HEAD_PREFIX: &[u8] = b"audit_head.";

/// The `meta` row holding audit lane `lane`'s head.
pub fn lane_head_key(lane: u32) -> Vec<u8> {
    if lane == 0 {
        META_AUDIT_HEAD.to_vec()
    } else {
        let mut key = META_LANE_HEAD_PREFIX.to_vec();
        key.extend_from_slice(lane.to_string().as_bytes());
        key
    }
}

/// The lane whose head `meta` row `key` is, if it is one.
pub fn lane_of_head_key(key: &[u8]) -> Option<u32> {
    if key == META_AUDIT_HEAD {
        return Some(0);
    }
    let digits = key.strip_prefix(META_LANE_HEAD_PREFIX)?;
    let lane: u32 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    // One spelling per lane: `audit_head.09` is not lane 9's row.
    (lane > 0 && lane_head_key(lane) == key).then_some(lane)
}

/// The time of the latest write-path probe: written only while commits are
/// failing, to find out when the store takes writes again.
pub const META_WRITE_PROBE: &[u8] = b"write_probe";

/// `reverse` key: `ns_id ‖ token` (the token's canonical form).
pub fn reverse_key(namespace_id: u32, token: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + token.len());
    key.extend_from_slice(&namespace_id.to_be_bytes());
    key.extend_from_slice(token.as_bytes());
    key
}

/// `audit` key: the record's sequence number, so the chain reads in order.
pub fn audit_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// Decodes [`audit_key`].
pub fn decode_audit_key(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// `disclosures` key: `token mark ‖ seq`. Every disclosure of one token sits
/// under one prefix, oldest first.
pub fn disclosure_key(mark: &[u8; 32], seq: u64) -> [u8; 40] {
    let mut key = [0u8; 40];
    key[..32].copy_from_slice(mark);
    key[32..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// Decodes the sequence number of a [`disclosure_key`].
pub fn disclosure_seq(key: &[u8]) -> Option<u64> {
    decode_audit_key(key.get(32..)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn audit_keys_round_trip_and_sort_by_sequence(a: u64, b: u64, mark: [u8; 32]) {
            prop_assert_eq!(decode_audit_key(&audit_key(a)), Some(a));
            prop_assert_eq!(disclosure_seq(&disclosure_key(&mark, a)), Some(a));
            prop_assert_eq!(a.cmp(&b), audit_key(a).cmp(&audit_key(b)));
        }
    }

    #[test]
    fn reverse_keys_lead_with_the_namespace() {
        assert_eq!(reverse_key(7, "987-65"), b"\0\0\0\x07987-65");
    }

    #[test]
    fn each_lane_head_has_one_name() {
        assert_eq!(lane_head_key(0), META_AUDIT_HEAD);
        assert_eq!(lane_head_key(9), b"audit_head.9");
        for lane in [0, 1, 9, 4096, u32::MAX] {
            assert_eq!(lane_of_head_key(&lane_head_key(lane)), Some(lane));
        }
        for other in [
            &b"audit_head.09"[..],
            b"audit_head.0",
            b"audit_head.",
            b"audit_head.x",
            b"audit_key",
        ] {
            assert_eq!(lane_of_head_key(other), None);
        }
    }
}
