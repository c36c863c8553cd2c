//! Key and value encodings of every column family, as small typed functions.
//! All integers are big-endian so that keys sort by their numeric prefix.

use crate::crypto::BlindIndex;

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

/// The on-disk format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Encodes a u32 the way every key and counter here stores one.
pub fn u32_bytes(n: u32) -> [u8; 4] {
    n.to_be_bytes()
}

/// Decodes [`u32_bytes`].
pub fn decode_u32(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

/// `forward` key: `ns_id ‖ v ‖ HMAC(prf_key_v, "idx" ‖ ns_id ‖ value)`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ForwardKey(pub [u8; 40]);

impl ForwardKey {
    /// The forward key of a blind index under keyset `version`.
    pub fn new(namespace_id: u32, version: u32, index: &BlindIndex) -> Self {
        let mut key = [0u8; 40];
        key[..4].copy_from_slice(&namespace_id.to_be_bytes());
        key[4..8].copy_from_slice(&version.to_be_bytes());
        key[8..].copy_from_slice(&index.0);
        Self(key)
    }
}

/// `reverse` key: `ns_id ‖ token` (the token's canonical form).
pub fn reverse_key(namespace_id: u32, token: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + token.len());
    key.extend_from_slice(&namespace_id.to_be_bytes());
    key.extend_from_slice(token.as_bytes());
    key
}

/// A `reverse` value: `v ‖ created_at ‖ AES-SIV(enc_key_v, AD, value)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReverseRow {
    /// The keyset version that sealed the value.
    pub version: u32,
    /// Seconds since the Unix epoch when the mapping was created.
    pub created_at: u64,
    /// The sealed value.
    pub ciphertext: Vec<u8>,
}

impl ReverseRow {
    /// Serialises the row.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + self.ciphertext.len());
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.created_at.to_be_bytes());
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// Parses a row; `None` if it is too short to be one.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (version, rest) = bytes.split_first_chunk::<4>()?;
        let (created_at, ciphertext) = rest.split_first_chunk::<8>()?;
        Some(Self {
            version: u32::from_be_bytes(*version),
            created_at: u64::from_be_bytes(*created_at),
            ciphertext: ciphertext.to_vec(),
        })
    }
}

/// The lifecycle state of a stored keyset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeysetState {
    /// Used for new mappings.
    Active,
    /// Still decrypts existing mappings; no new writes.
    Retiring,
}

/// A `keys` value: `state ‖ created_at ‖ wrapped keyset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeysetRow {
    /// Lifecycle state.
    pub state: KeysetState,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// The keyset sealed under the KEK.
    pub wrapped: Vec<u8>,
}

impl KeysetRow {
    /// Serialises the row.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.wrapped.len());
        out.push(match self.state {
            KeysetState::Active => 1,
            KeysetState::Retiring => 2,
        });
        out.extend_from_slice(&self.created_at.to_be_bytes());
        out.extend_from_slice(&self.wrapped);
        out
    }

    /// Parses a row; `None` if malformed.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (state, rest) = bytes.split_first()?;
        let (created_at, wrapped) = rest.split_first_chunk::<8>()?;
        let state = match state {
            1 => KeysetState::Active,
            2 => KeysetState::Retiring,
            _ => return None,
        };
        Some(Self {
            state,
            created_at: u64::from_be_bytes(*created_at),
            wrapped: wrapped.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn reverse_rows_round_trip(version: u32, created_at: u64, ciphertext: Vec<u8>) {
            let row = ReverseRow { version, created_at, ciphertext };
            prop_assert_eq!(ReverseRow::decode(&row.encode()), Some(row));
        }

        #[test]
        fn keyset_rows_round_trip(active: bool, created_at: u64, wrapped: Vec<u8>) {
            let state = if active { KeysetState::Active } else { KeysetState::Retiring };
            let row = KeysetRow { state, created_at, wrapped };
            prop_assert_eq!(KeysetRow::decode(&row.encode()), Some(row));
        }

        #[test]
        fn u32_round_trips_and_sorts(a: u32, b: u32) {
            prop_assert_eq!(decode_u32(&u32_bytes(a)), Some(a));
            prop_assert_eq!(a.cmp(&b), u32_bytes(a).cmp(&u32_bytes(b)));
        }
    }

    #[test]
    fn forward_and_reverse_keys_lead_with_the_namespace() {
        let key = ForwardKey::new(7, 2, &BlindIndex([0xab; 32]));
        assert_eq!(&key.0[..8], &[0, 0, 0, 7, 0, 0, 0, 2]);
        assert_eq!(reverse_key(7, "987-65"), b"\0\0\0\x07987-65");
        assert_eq!(ReverseRow::decode(&[0; 11]), None);
    }
}
