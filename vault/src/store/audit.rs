//! The audit operations of the storage boundary, and the stored form of an
//! audit record that every backend writes alike (DESIGN.md §7).
//!
//! A record's body is opaque here: the audit trail encodes it and takes its
//! digest on the request task. What storage does is link it to the head of
//! its chain, store it with its disclosure index entries, and move the head,
//! in the same commit as the state change it describes when there is one.
//!
//! Records sit in lanes: chains of their own, each with its head, so that
//! many writers never wait on one head (DESIGN.md §9). The embedded store,
//! one writer, keeps everything in lane 0; the PostgreSQL backend gives each
//! node lanes of its own. A record is named by one number, its lane in the
//! high bits and its place in the lane's chain in the low ones
//! ([`record_id`]), so that records read in lane order and, on one lane, a
//! record's id is its sequence number.

use sha2::{Digest, Sha256};

use super::StoreFuture;
use super::schema::AuditHead;

/// Domain label of the chain hash.
const CHAIN_LABEL: &[u8] = b"phivault audit v1";
/// Format byte of a stored record.
const RECORD_FORMAT: u8 = 1;
/// `format ‖ time_ms ‖ prev ‖ hash` before the body.
const HEADER_LEN: usize = 1 + 8 + 32 + 32;

/// A record on its way to storage: the body encoded and hashed off the
/// writer, and the marks of the tokens it revealed (its disclosure index
/// entries).
#[derive(Clone)]
pub struct PendingRecord {
    body: Vec<u8>,
    digest: [u8; 32],
    revealed: Vec<[u8; 32]>,
}

impl PendingRecord {
    /// A record of `body`, revealing the tokens of `revealed`.
    pub fn new(body: Vec<u8>, revealed: Vec<[u8; 32]>) -> Self {
        Self {
            digest: Sha256::digest(&body).into(),
            body,
            revealed,
        }
    }

    /// The marks of the tokens the record revealed.
    pub fn revealed(&self) -> &[[u8; 32]] {
        &self.revealed
    }

    /// The record linked after `head`: the head it leaves and its stored
    /// form. The time is never earlier than the head's, so that records sort
    /// by time as they do by sequence number even if the clock steps back.
    pub fn link(&self, head: &AuditHead, now_ms: u64) -> (AuditHead, Vec<u8>) {
        let seq = head.seq + 1;
        let time_ms = now_ms.max(head.time_ms);
        let hash = chain_hash(seq, time_ms, &head.hash, &self.digest);
        let mut value = Vec::with_capacity(HEADER_LEN + self.body.len());
        value.push(RECORD_FORMAT);
        value.extend_from_slice(&time_ms.to_be_bytes());
        value.extend_from_slice(&head.hash);
        value.extend_from_slice(&hash);
        value.extend_from_slice(&self.body);
        (AuditHead { seq, time_ms, hash }, value)
    }
}

/// Bits of a record id that hold its sequence number in its lane.
pub const LANE_SHIFT: u32 = 40;

/// The id of record `seq` of `lane`.
pub fn record_id(lane: u32, seq: u64) -> u64 {
    (u64::from(lane) << LANE_SHIFT) | (seq & ((1 << LANE_SHIFT) - 1))
}

/// The lane of a record id.
pub fn lane_of(id: u64) -> u32 {
    u32::try_from(id >> LANE_SHIFT).unwrap_or(u32::MAX)
}

/// The sequence number in its lane of a record id.
pub fn seq_of(id: u64) -> u64 {
    id & ((1 << LANE_SHIFT) - 1)
}

/// `hash(n) = SHA-256(label ‖ n ‖ time ‖ prev ‖ SHA-256(body))`.
pub fn chain_hash(seq: u64, time_ms: u64, prev: &[u8; 32], body_digest: &[u8; 32]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(CHAIN_LABEL);
    hash.update(seq.to_be_bytes());
    hash.update(time_ms.to_be_bytes());
    hash.update(prev);
    hash.update(body_digest);
    hash.finalize().into()
}

/// A stored record's header and body, split.
pub struct StoredRecord<'a> {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The hash of the record before it in its lane.
    pub prev: [u8; 32],
    /// Its own hash.
    pub hash: [u8; 32],
    /// The body, as the audit trail encoded it.
    pub body: &'a [u8],
}

impl<'a> StoredRecord<'a> {
    /// Splits a stored record; `None` if it is not one.
    pub fn split(value: &'a [u8]) -> Option<Self> {
        let (&format, rest) = value.split_first()?;
        if format != RECORD_FORMAT {
            return None;
        }
        let (time_ms, rest) = rest.split_first_chunk::<8>()?;
        let (prev, rest) = rest.split_first_chunk::<32>()?;
        let (hash, body) = rest.split_first_chunk::<32>()?;
        Some(Self {
            time_ms: u64::from_be_bytes(*time_ms),
            prev: *prev,
            hash: *hash,
            body,
        })
    }
}

/// The audit operations of a backend.
pub trait AuditStore: Send + Sync {
    /// Appends `records`, in order, in one commit, to one lane, and returns
    /// their ids once the commit is durable.
    fn append_audit(&self, records: Vec<PendingRecord>) -> StoreFuture<'_, Vec<u64>>;

    /// The head of every lane, by lane (all zero before a lane's first
    /// record, or when its head is missing: `verify` reports records beyond
    /// it).
    fn audit_heads(&self) -> StoreFuture<'_, Vec<(u32, AuditHead)>>;

    /// Up to `limit` stored records after id `after` (from the first when
    /// 0), in id order: lane by lane, each in sequence.
    fn audit_after(&self, after: u64, limit: usize) -> StoreFuture<'_, Vec<(u64, Vec<u8>)>>;

    /// The stored records of `ids`, in order.
    fn audit_entries<'a>(&'a self, ids: &'a [u64]) -> StoreFuture<'a, Vec<Option<Vec<u8>>>>;

    /// The audit key's row ([`AuditKeyRow`](super::schema::AuditKeyRow)),
    /// wrapped under the KEK.
    fn audit_key_row(&self) -> StoreFuture<'_, Option<Vec<u8>>>;

    /// Stores the audit key's row if there is none; `false` (nothing
    /// written) if there is one.
    fn create_audit_key(&self, row: Vec<u8>) -> StoreFuture<'_, bool>;

    /// Ids of the records that revealed the token marked `mark`, in the
    /// order they were appended, after the record `after` (from the first
    /// when 0), at most `limit`.
    fn disclosures<'a>(
        &'a self,
        mark: &'a [u8; 32],
        after: u64,
        limit: usize,
    ) -> StoreFuture<'a, Vec<u64>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_id_holds_its_lane_and_sequence_number() {
        assert_eq!(record_id(0, 7), 7);
        for (lane, seq) in [
            (0, 1),
            (3, 42),
            (u32::from(u16::MAX), (1 << LANE_SHIFT) - 1),
        ] {
            let id = record_id(lane, seq);
            assert_eq!((lane_of(id), seq_of(id)), (lane, seq));
        }
        assert!(record_id(1, 1) > record_id(0, 1 << 30));
    }
}
