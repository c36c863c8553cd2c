//! What a stored row holds, whatever backend stores it: the encodings of
//! reverse rows, forward keys and entries, keysets, the rotation records, the
//! audit head and the audit key. How a backend keys and arranges them is its
//! own (see `rocks::keys`). All integers are big-endian so that encodings
//! sort by their numeric prefix.

use crate::crypto::{BINDING_LEN, BlindIndex, PrfKey};

/// Bytes of the MAC a backend stores after each row that grants or shapes
/// access (DESIGN.md §10).
pub const ROW_TAG_LEN: usize = 32;

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

/// Namespace and version only: the blind index identifies a value, and a
/// debug print must not let a log be joined against the forward index.
impl std::fmt::Debug for ForwardKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardKey")
            .field(
                "namespace",
                &u32::from_be_bytes([self.0[0], self.0[1], self.0[2], self.0[3]]),
            )
            .field("version", &self.version())
            .finish_non_exhaustive()
    }
}

impl ForwardKey {
    /// The forward key of a blind index under keyset `version`.
    pub fn new(namespace_id: u32, version: u32, index: &BlindIndex) -> Self {
        let mut key = [0u8; 40];
        key[..4].copy_from_slice(&namespace_id.to_be_bytes());
        key[4..8].copy_from_slice(&version.to_be_bytes());
        key[8..].copy_from_slice(&index.0);
        Self(key)
    }

    /// A forward key read back from storage (`None`: not 40 bytes).
    pub fn from_slice(key: &[u8]) -> Option<Self> {
        key.try_into().ok().map(Self)
    }

    /// The keyset version the entry's blind index was made under.
    pub fn version(&self) -> u32 {
        u32::from_be_bytes([self.0[4], self.0[5], self.0[6], self.0[7]])
    }

    /// The namespace id the key was made in.
    pub fn namespace(&self) -> u32 {
        u32::from_be_bytes([self.0[0], self.0[1], self.0[2], self.0[3]])
    }

    /// The stored value of this entry: `token ‖ binding`, the binding made
    /// with the PRF key of the entry's own version (DESIGN.md §10: a token
    /// written over another entry's is detected when it is read).
    pub fn bind(&self, prf: &PrfKey, token: &[u8]) -> Vec<u8> {
        let mut stored = Vec::with_capacity(token.len() + BINDING_LEN);
        stored.extend_from_slice(token);
        stored.extend_from_slice(&prf.forward_binding(&self.0, token));
        stored
    }

    /// The token of a stored entry whose binding verifies under `prf`.
    pub fn open<'a>(&self, prf: &PrfKey, stored: &'a [u8]) -> Option<&'a [u8]> {
        let split = stored.len().checked_sub(BINDING_LEN)?;
        let (token, binding) = stored.split_at(split);
        prf.verify_forward_binding(&self.0, token, binding)
            .then_some(token)
    }
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
    /// Still decrypts existing mappings while a rotation moves them; no new
    /// writes.
    Retiring,
    /// Its key material is deleted; the row remains as a record of when.
    Destroyed {
        /// Seconds since the Unix epoch.
        at: u64,
    },
}

/// A `keys` value: `state ‖ created_at ‖ wrapped keyset`, or for a destroyed
/// keyset `state ‖ created_at ‖ destroyed_at` (no key material).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeysetRow {
    /// Lifecycle state.
    pub state: KeysetState,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// The keyset sealed under the KEK; empty once destroyed.
    pub wrapped: Vec<u8>,
}

impl KeysetRow {
    /// Serialises the row.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(17 + self.wrapped.len());
        out.push(match self.state {
            KeysetState::Active => 1,
            KeysetState::Retiring => 2,
            KeysetState::Destroyed { .. } => 3,
        });
        out.extend_from_slice(&self.created_at.to_be_bytes());
        match self.state {
            KeysetState::Destroyed { at } => out.extend_from_slice(&at.to_be_bytes()),
            _ => out.extend_from_slice(&self.wrapped),
        }
        out
    }

    /// Parses a row; `None` if malformed.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (state, rest) = bytes.split_first()?;
        let (created_at, rest) = rest.split_first_chunk::<8>()?;
        let (state, wrapped) = match state {
            1 => (KeysetState::Active, rest.to_vec()),
            2 => (KeysetState::Retiring, rest.to_vec()),
            3 => {
                let at: [u8; 8] = rest.try_into().ok()?;
                (
                    KeysetState::Destroyed {
                        at: u64::from_be_bytes(at),
                    },
                    Vec::new(),
                )
            }
            _ => return None,
        };
        Some(Self {
            state,
            created_at: u64::from_be_bytes(*created_at),
            wrapped,
        })
    }
}

/// What a running rotation is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationPhase {
    /// Walking the reverse index, moving mappings to the target keyset.
    Migrating,
    /// Old keysets are destroyed; their ciphertexts are being compacted away.
    Compacting,
}

/// The `meta` row of a running rotation. It is rewritten in the same batch as
/// each chunk of migrated mappings, so a restart resumes after the last chunk
/// that reached the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationRow {
    /// The keyset version mappings move to (the active one).
    pub target: u32,
    /// What the job is doing.
    pub phase: RotationPhase,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    /// Mappings examined in the first pass.
    pub done: u64,
    /// The estimated number of mappings when the rotation started.
    pub total: u64,
    /// Passes over the reverse index so far: the job ends with a pass that
    /// finds nothing left to move, so no mapping is stranded under a keyset
    /// about to be destroyed.
    pub pass: u32,
    /// Mappings moved in the current pass.
    pub moved_in_pass: u64,
    /// The last reverse key handled in the current pass (empty: none yet).
    pub cursor: Vec<u8>,
}

impl RotationRow {
    /// Serialises the row.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(45 + self.cursor.len());
        out.extend_from_slice(&self.target.to_be_bytes());
        out.push(match self.phase {
            RotationPhase::Migrating => 1,
            RotationPhase::Compacting => 2,
        });
        out.extend_from_slice(&self.started_at.to_be_bytes());
        out.extend_from_slice(&self.done.to_be_bytes());
        out.extend_from_slice(&self.total.to_be_bytes());
        out.extend_from_slice(&self.pass.to_be_bytes());
        out.extend_from_slice(&self.moved_in_pass.to_be_bytes());
        out.extend_from_slice(&self.cursor);
        out
    }

    /// Parses a row; `None` if malformed.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (target, rest) = bytes.split_first_chunk::<4>()?;
        let (phase, rest) = rest.split_first()?;
        let (started_at, rest) = rest.split_first_chunk::<8>()?;
        let (done, rest) = rest.split_first_chunk::<8>()?;
        let (total, rest) = rest.split_first_chunk::<8>()?;
        let (pass, rest) = rest.split_first_chunk::<4>()?;
        let (moved, cursor) = rest.split_first_chunk::<8>()?;
        Some(Self {
            target: u32::from_be_bytes(*target),
            phase: match phase {
                1 => RotationPhase::Migrating,
                2 => RotationPhase::Compacting,
                _ => return None,
            },
            started_at: u64::from_be_bytes(*started_at),
            done: u64::from_be_bytes(*done),
            total: u64::from_be_bytes(*total),
            pass: u32::from_be_bytes(*pass),
            moved_in_pass: u64::from_be_bytes(*moved),
            cursor: cursor.to_vec(),
        })
    }
}

/// The `meta` record of the last completed rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastRotationRow {
    /// The keyset version that became the only one.
    pub target: u32,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    /// Seconds since the Unix epoch, after the compaction.
    pub finished_at: u64,
    /// Mappings examined.
    pub mappings: u64,
}

impl LastRotationRow {
    /// Serialises the row.
    pub fn encode(&self) -> [u8; 28] {
        let mut out = [0u8; 28];
        out[..4].copy_from_slice(&self.target.to_be_bytes());
        out[4..12].copy_from_slice(&self.started_at.to_be_bytes());
        out[12..20].copy_from_slice(&self.finished_at.to_be_bytes());
        out[20..].copy_from_slice(&self.mappings.to_be_bytes());
        out
    }

    /// Parses a row; `None` if malformed.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; 28] = bytes.try_into().ok()?;
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i..i + 8]);
            u64::from_be_bytes(b)
        };
        let mut target = [0u8; 4];
        target.copy_from_slice(&bytes[..4]);
        Some(Self {
            target: u32::from_be_bytes(target),
            started_at: u64_at(4),
            finished_at: u64_at(12),
            mappings: u64_at(20),
        })
    }
}

/// The `meta` row of the audit chain's last record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuditHead {
    /// Its sequence number (0: no record yet).
    pub seq: u64,
    /// Its time, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Its hash.
    pub hash: [u8; 32],
}

impl AuditHead {
    /// Serialises the row.
    pub fn encode(&self) -> [u8; 48] {
        let mut out = [0u8; 48];
        out[..8].copy_from_slice(&self.seq.to_be_bytes());
        out[8..16].copy_from_slice(&self.time_ms.to_be_bytes());
        out[16..].copy_from_slice(&self.hash);
        out
    }

    /// Parses a row; `None` if malformed. A row read without the key still
    /// carries its MAC (see a backend's row tag, [`ROW_TAG_LEN`] bytes): it is dropped unchecked
    /// here, for the keyless walk of the chain, which checks every link but
    /// not that the head is genuine.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let bytes = match bytes.len() {
            48 => bytes,
            n if n == 48 + ROW_TAG_LEN => &bytes[..48],
            _ => return None,
        };
        let (seq, rest) = bytes.split_first_chunk::<8>()?;
        let (time_ms, hash) = rest.split_first_chunk::<8>()?;
        Some(Self {
            seq: u64::from_be_bytes(*seq),
            time_ms: u64::from_be_bytes(*time_ms),
            hash: hash.try_into().ok()?,
        })
    }
}

/// The `meta` row of the audit key: `version ‖ created_at ‖ wrapped key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditKeyRow {
    /// The key's version (bound into the wrapping).
    pub version: u32,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// The key sealed under the KEK.
    pub wrapped: Vec<u8>,
}

impl AuditKeyRow {
    /// Serialises the row.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + self.wrapped.len());
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.created_at.to_be_bytes());
        out.extend_from_slice(&self.wrapped);
        out
    }

    /// Parses a row; `None` if malformed.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (version, rest) = bytes.split_first_chunk::<4>()?;
        let (created_at, wrapped) = rest.split_first_chunk::<8>()?;
        Some(Self {
            version: u32::from_be_bytes(*version),
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
        fn keyset_rows_round_trip(state in 0..3u8, created_at: u64, at: u64, wrapped: Vec<u8>) {
            let (state, wrapped) = match state {
                0 => (KeysetState::Active, wrapped),
                1 => (KeysetState::Retiring, wrapped),
                _ => (KeysetState::Destroyed { at }, Vec::new()),
            };
            let row = KeysetRow { state, created_at, wrapped };
            prop_assert_eq!(KeysetRow::decode(&row.encode()), Some(row));
        }

        #[test]
        fn rotation_rows_round_trip(
            target: u32, compacting: bool, started_at: u64, done: u64, total: u64,
            pass: u32, moved_in_pass: u64, cursor: Vec<u8>,
        ) {
            let phase = if compacting { RotationPhase::Compacting } else { RotationPhase::Migrating };
            let row = RotationRow { target, phase, started_at, done, total, pass, moved_in_pass, cursor };
            prop_assert_eq!(RotationRow::decode(&row.encode()), Some(row));
        }

        #[test]
        fn last_rotation_rows_round_trip(target: u32, started_at: u64, finished_at: u64, mappings: u64) {
            let row = LastRotationRow { target, started_at, finished_at, mappings };
            prop_assert_eq!(LastRotationRow::decode(&row.encode()), Some(row));
        }

        #[test]
        fn audit_rows_and_keys_round_trip(seq: u64, time_ms: u64, hash: [u8; 32], version: u32, wrapped: Vec<u8>) {
            let head = AuditHead { seq, time_ms, hash };
            prop_assert_eq!(AuditHead::decode(&head.encode()), Some(head));
            let row = AuditKeyRow { version, created_at: time_ms, wrapped };
            prop_assert_eq!(AuditKeyRow::decode(&row.encode()), Some(row));
        }

        #[test]
        fn u32_round_trips_and_sorts(a: u32, b: u32) {
            prop_assert_eq!(decode_u32(&u32_bytes(a)), Some(a));
            prop_assert_eq!(a.cmp(&b), u32_bytes(a).cmp(&u32_bytes(b)));
        }
    }

    /// A forward entry opens only under its own key and version's PRF key,
    /// with its own token: another entry's token, the entry moved to another
    /// key, a flipped byte, a stripped binding are all refused.
    #[test]
    fn a_forward_binding_ties_the_token_to_its_entry() {
        let prf = PrfKey::generate().expect("rng");
        let key = ForwardKey::new(7, 2, &BlindIndex([0xab; 32]));
        let stored = key.bind(&prf, b"987-65-4321");
        assert_eq!(stored.len(), 11 + BINDING_LEN);
        assert_eq!(key.version(), 2);
        assert!(ForwardKey::from_slice(&key.0) == Some(key));
        assert_eq!(key.open(&prf, &stored), Some(&b"987-65-4321"[..]));

        let other_key = ForwardKey::new(7, 2, &BlindIndex([0xac; 32]));
        let other_token = other_key.bind(&prf, b"987-65-4320");
        let mut swapped = b"987-65-4320".to_vec();
        swapped.extend_from_slice(&stored[11..]);
        let mut flipped = stored.clone();
        flipped[0] ^= 1;
        let other_prf = PrfKey::generate().expect("rng");
        assert_eq!(key.open(&prf, &other_token), None, "another entry's value");
        assert_eq!(
            key.open(&prf, &swapped),
            None,
            "another token, same binding"
        );
        assert_eq!(other_key.open(&prf, &stored), None, "moved to another key");
        assert_eq!(key.open(&prf, &flipped), None);
        assert_eq!(key.open(&prf, b"987-65-4321"), None, "binding stripped");
        assert_eq!(key.open(&other_prf, &stored), None, "another version's key");
    }

    #[test]
    fn forward_keys_lead_with_the_namespace() {
        let key = ForwardKey::new(7, 2, &BlindIndex([0xab; 32]));
        assert_eq!(&key.0[..8], &[0, 0, 0, 7, 0, 0, 0, 2]);
        assert_eq!(ReverseRow::decode(&[0; 11]), None);
    }
}
