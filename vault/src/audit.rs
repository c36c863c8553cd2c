//! The audit trail (DESIGN.md §7): one record per call that reveals or
//! changes something, or that was refused, hash-chained so that an edited,
//! deleted, reordered or truncated record is found, with an index of which
//! calls revealed which token.
//!
//! A record holds who, when, which RPC, namespace, item count, outcome,
//! request id and keyset version, and for a detokenize call one *token mark*
//! per item: `HMAC(audit key, namespace ‖ token)`. No value, token or API key
//! is ever in it. The audit key is its own key (not part of a data keyset),
//! so data-key rotation leaves every mark answerable.
//!
//! Records are appended by the single writer, in the same group commit as
//! other writes, and the call is answered only once its record is durable:
//! when the record cannot be written the call fails and reveals nothing
//! (fail closed).
//!
//! The chain: record `n` stores `prev = hash(n-1)` and
//! `hash(n) = SHA-256("phivault audit v1" ‖ n ‖ time ‖ prev ‖ SHA-256(body))`;
//! `meta` keeps the head (sequence number, time, hash), which is how a
//! truncated tail is noticed. The body's digest is taken on the request
//! task, so the writer hashes 88 bytes per record whatever its size.
//!
//! What the chain proves: that the records are the ones written, in order,
//! none missing, as long as the head is genuine — and the head carries a MAC
//! under a key derived from the KEK (see [`crate::store::integrity`]), checked
//! whenever the vault opens. Someone able to rewrite the database can
//! recompute SHA-256 links but not the head's MAC, so a rewritten or truncated
//! chain is refused at the next start. The keyless walk (`phivault audit
//! verify`) checks every link; that the head is genuine needs the key.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use crate::clock::now_secs;
use crate::crypto::AuditKey;
use crate::error::Error;
use crate::store::schema;
use crate::store::{
    AuditStore, PendingRecord, Storage, StoreError, StoredRecord, chain_hash, lane_of, record_id,
    seq_of,
};

/// Format byte of a record body.
const BODY_FORMAT: u8 = 1;
/// Format byte of a record body with a purpose of use (and the break-glass
/// flag); records without one keep format 1, byte for byte.
const BODY_FORMAT_PURPOSE: u8 = 2;
/// Records read per storage call while walking the chain.
const WALK_CHUNK: usize = 4096;

/// The `rpc` of a checkpoint record: the heads of every lane, written
/// now and then on storage many nodes share, so that a lane removed whole
/// (its records and its head) is missed by `verify`.
pub const CHECKPOINT_RPC: &str = "phivault.audit/Checkpoint";
/// Lanes one checkpoint record names at most (its target stays well under
/// the 64 KiB a field holds).
const CHECKPOINT_LANES: usize = 500;

/// `lane:seq:hash` for each head, comma-separated.
fn checkpoint_target(heads: &[(u32, schema::AuditHead)]) -> String {
    heads
        .iter()
        .map(|(lane, head)| {
            let hash: String = head.hash.iter().map(|b| format!("{b:02x}")).collect();
            format!("{lane}:{}:{hash}", head.seq)
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The heads a checkpoint's target names; `None` if it is not one.
fn parse_checkpoint(target: &str) -> Option<Vec<(u32, u64, [u8; 32])>> {
    target
        .split(',')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut fields = part.split(':');
            let lane = fields.next()?.parse().ok()?;
            let seq = fields.next()?.parse().ok()?;
            let hex = fields.next()?;
            if hex.len() != 64 || fields.next().is_some() {
                return None;
            }
            let mut hash = [0u8; 32];
            for (byte, pair) in hash.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
                *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
            }
            Some((lane, seq, hash))
        })
        .collect()
}
/// Disclosures answered per `ListDisclosures` page unless asked otherwise,
/// and at most.
pub const DEFAULT_DISCLOSURES: usize = 1000;
const MAX_DISCLOSURES: usize = 10_000;

/// One (namespace, token) a detokenize call was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenMark {
    /// `HMAC(audit key, namespace ‖ canonical token)`.
    pub mac: [u8; 32],
    /// Whether the call revealed it (in full or masked).
    pub revealed: bool,
}

/// What a call did, as the server reports it for the record. Holds no value,
/// token or key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditEvent {
    /// The caller's client id; empty for unauthenticated calls (a summary of
    /// them names the id a well-formed key claimed in `target`).
    pub client_id: String,
    /// Whether the caller's key was valid.
    pub authenticated: bool,
    /// The full gRPC method, e.g. `/phivault.v1.Tokenizer/Detokenize`.
    pub rpc: String,
    /// The namespace the call addressed (empty for most admin calls).
    pub namespace: String,
    /// Items in the request.
    pub items: u32,
    /// The call's `google.rpc.Code`.
    pub outcome: i32,
    /// The caller's `x-request-id`, or one the server made up.
    pub request_id: String,
    /// What an admin call acted on: a client id, a backup path.
    pub target: String,
    /// A masked reveal.
    pub masked: bool,
    /// One mark per item of a detokenize call.
    pub tokens: Vec<TokenMark>,
    /// The purpose of use a reveal stated (an HL7 PurposeOfUse code).
    pub purpose: String,
    /// The reason in words that came with it.
    pub reason: String,
    /// A reveal allowed only because it broke the glass (see
    /// [`crate::purpose::BREAK_GLASS`]).
    pub break_glass: bool,
}

/// A record as stored: its place in the chain and the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Sequence number, from 1, without gaps.
    pub seq: u64,
    /// Milliseconds since the Unix epoch; never decreases along the chain.
    pub time_ms: u64,
    /// The previous record's hash (zeros for the first).
    pub prev_hash: [u8; 32],
    /// This record's hash.
    pub hash: [u8; 32],
    /// The keyset version active when the call was made.
    pub keyset_version: u32,
    /// What the call did.
    pub event: AuditEvent,
}

/// What walking the chain found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    /// Records that verified, from sequence number 1.
    pub records: u64,
    /// The head's sequence number as `meta` has it.
    pub head_seq: u64,
    /// The first sequence number that is missing, altered, out of place or
    /// unlinked, with what is wrong; `None` when the chain is intact.
    pub first_bad: Option<(u64, &'static str)>,
}

impl AuditReport {
    /// Whether the chain is intact.
    pub fn is_intact(&self) -> bool {
        self.first_bad.is_none()
    }
}

/// One call that revealed a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disclosure {
    /// The audit record's sequence number.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Who.
    pub client_id: String,
    /// The client's name now (empty if no such client).
    pub client_name: String,
    /// Which RPC.
    pub rpc: String,
    /// The caller's request id.
    pub request_id: String,
    /// A masked reveal.
    pub masked: bool,
    /// The keyset version active then.
    pub keyset_version: u32,
    /// The purpose of use stated, if any.
    pub purpose: String,
    /// The reason in words.
    pub reason: String,
    /// Allowed only because it broke the glass.
    pub break_glass: bool,
}

/// A record of `event` on its way to storage: the body encoded and hashed
/// here, on the request task.
pub(crate) fn pending(keyset_version: u32, event: &AuditEvent) -> PendingRecord {
    let revealed = event
        .tokens
        .iter()
        .filter(|t| t.revealed)
        .map(|t| t.mac)
        .collect();
    PendingRecord::new(encode_body(keyset_version, event), revealed)
}

/// Parses a stored record; `None` if it is not one.
pub fn decode_record(seq: u64, value: &[u8]) -> Option<AuditRecord> {
    let stored = StoredRecord::split(value)?;
    let (keyset_version, event) = decode_body(stored.body)?;
    Some(AuditRecord {
        seq,
        time_ms: stored.time_ms,
        prev_hash: stored.prev,
        hash: stored.hash,
        keyset_version,
        event,
    })
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Every field is bounded well below 64 KiB by the server (names, ids,
    // paths); a longer one is cut at a character boundary, never dropped.
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..end]);
}

fn encode_body(keyset_version: u32, event: &AuditEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + event.rpc.len() + 33 * event.tokens.len());
    let stated = !event.purpose.is_empty() || !event.reason.is_empty() || event.break_glass;
    out.push(if stated {
        BODY_FORMAT_PURPOSE
    } else {
        BODY_FORMAT
    });
    out.push(
        u8::from(event.authenticated)
            | (u8::from(event.masked) << 1)
            | (u8::from(event.break_glass) << 2),
    );
    out.extend_from_slice(&event.outcome.to_be_bytes());
    out.extend_from_slice(&keyset_version.to_be_bytes());
    out.extend_from_slice(&event.items.to_be_bytes());
    for s in [
        &event.client_id,
        &event.rpc,
        &event.namespace,
        &event.request_id,
        &event.target,
    ] {
        put_str(&mut out, s);
    }
    if stated {
        put_str(&mut out, &event.purpose);
        put_str(&mut out, &event.reason);
    }
    out.extend_from_slice(&(event.tokens.len() as u32).to_be_bytes());
    for mark in &event.tokens {
        out.push(u8::from(mark.revealed));
        out.extend_from_slice(&mark.mac);
    }
    out
}

/// A cursor over a body being decoded.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    fn string(&mut self) -> Option<String> {
        let len = u16::from_be_bytes(self.take()?) as usize;
        let (s, rest) = self.0.split_at_checked(len)?;
        self.0 = rest;
        String::from_utf8(s.to_vec()).ok()
    }
}

fn decode_body(body: &[u8]) -> Option<(u32, AuditEvent)> {
    let mut r = Reader(body);
    let [format, flags] = r.take::<2>()?;
    let stated = match format {
        BODY_FORMAT if flags <= 3 => false,
        BODY_FORMAT_PURPOSE if flags <= 7 => true,
        _ => return None,
    };
    let outcome = i32::from_be_bytes(r.take()?);
    let keyset_version = u32::from_be_bytes(r.take()?);
    let items = u32::from_be_bytes(r.take()?);
    let client_id = r.string()?;
    let rpc = r.string()?;
    let namespace = r.string()?;
    let request_id = r.string()?;
    let target = r.string()?;
    let (purpose, reason) = if stated {
        (r.string()?, r.string()?)
    } else {
        (String::new(), String::new())
    };
    let count = u32::from_be_bytes(r.take()?) as usize;
    if r.0.len() != count.checked_mul(33)? {
        return None;
    }
    let tokens =
        r.0.chunks_exact(33)
            .map(|chunk| {
                let (&revealed, mac) = chunk.split_first()?;
                Some(TokenMark {
                    mac: mac.try_into().ok()?,
                    revealed: match revealed {
                        0 => false,
                        1 => true,
                        _ => return None,
                    },
                })
            })
            .collect::<Option<Vec<_>>>()?;
    Some((
        keyset_version,
        AuditEvent {
            client_id,
            authenticated: flags & 1 != 0,
            rpc,
            namespace,
            items,
            outcome,
            request_id,
            target,
            masked: flags & 2 != 0,
            tokens,
            purpose,
            reason,
            break_glass: flags & 4 != 0,
        },
    ))
}

/// Walks every lane's chain of `store` from its record 1 to its head as it
/// was when the walk began: records appended while it walks (a served vault)
/// are left for the next walk; records past a head that no append accounts
/// for are reported, and so is a head whose records are gone. On one lane
/// (the embedded store) a record's id is its sequence number.
pub(crate) async fn verify_chain(store: &dyn AuditStore) -> Result<AuditReport, Error> {
    let heads: HashMap<u32, schema::AuditHead> = store.audit_heads().await?.into_iter().collect();
    let mut report = AuditReport {
        records: 0,
        head_seq: heads.values().map(|h| h.seq).sum(),
        first_bad: None,
    };
    // The lane being walked, the next sequence number it expects and the
    // hash its last record had.
    let mut lane: Option<u32> = None;
    let mut expected = 1;
    let mut prev = [0u8; 32];
    // Lanes walked to their end, to check against their heads.
    let mut walked: HashMap<u32, (u64, [u8; 32])> = HashMap::new();
    // A lane whose walk reached records appended since it began.
    let mut caught_up: Option<u32> = None;
    // The newest record of each lane a checkpoint named, and its hash.
    let mut claimed: HashMap<u32, (u64, [u8; 32])> = HashMap::new();
    let mut after = 0;
    let mut chunk_size = WALK_CHUNK;
    loop {
        let chunk = match store.audit_after(after, chunk_size).await {
            Ok(chunk) => chunk,
            // A record whose key does not decode: read one at a time up to
            // it, so that the report names where it is.
            Err(StoreError::Corrupt { table: "audit", .. }) if chunk_size > 1 => {
                chunk_size = 1;
                continue;
            }
            Err(StoreError::Corrupt { table: "audit", .. }) => {
                let next = record_id(lane.unwrap_or(0), expected);
                report.first_bad = Some((next, "a record has a malformed key"));
                return Ok(report);
            }
            Err(e) => return Err(e.into()),
        };
        let Some(&(last, _)) = chunk.last() else {
            break;
        };
        for (id, value) in chunk {
            let (this_lane, seq) = (lane_of(id), seq_of(id));
            if lane != Some(this_lane) {
                if let Some(done) = lane {
                    walked.insert(done, (expected - 1, prev));
                }
                lane = Some(this_lane);
                expected = 1;
                prev = [0u8; 32];
            }
            if caught_up == Some(this_lane) {
                continue;
            }
            let head = heads.get(&this_lane).map_or(0, |h| h.seq);
            if seq > head && lane_head(store, this_lane).await? >= seq {
                // Appended since the walk began, with its head.
                caught_up = Some(this_lane);
                continue;
            }
            match check_link(expected, &prev, seq, &value) {
                Ok(hash) => prev = hash,
                Err(why) => {
                    report.first_bad = Some((record_id(this_lane, expected), why));
                    return Ok(report);
                }
            }
            for (lane, seq, hash) in checkpoint_of(&value) {
                let newest = claimed.entry(lane).or_insert((seq, hash));
                if seq > newest.0 {
                    *newest = (seq, hash);
                }
            }
            expected += 1;
            report.records += 1;
        }
        after = last;
    }
    if let Some(done) = lane {
        walked.insert(done, (expected - 1, prev));
    }
    let mut lanes: Vec<u32> = heads.keys().chain(walked.keys()).copied().collect();
    lanes.sort_unstable();
    lanes.dedup();
    for lane in lanes {
        let head = heads.get(&lane).copied().unwrap_or_default();
        let (count, last_hash) = walked.get(&lane).copied().unwrap_or((0, [0u8; 32]));
        let problem = if head.seq > count {
            Some((
                record_id(lane, count + 1),
                "the record is missing (the chain was truncated)",
            ))
        } else if head.seq < count && caught_up != Some(lane) {
            Some((
                record_id(lane, head.seq + 1),
                "records follow the head kept in meta",
            ))
        } else if head.seq > 0 && head.seq == count && head.hash != last_hash {
            Some((
                record_id(lane, head.seq),
                "the record does not match the head kept in meta",
            ))
        } else {
            None
        };
        if problem.is_some() {
            report.first_bad = problem;
            return Ok(report);
        }
    }
    // A lane is a chain that its own head proves, but a lane removed whole,
    // head and all, leaves nothing behind: the checkpoints name it.
    let mut claims: Vec<(u32, (u64, [u8; 32]))> = claimed.into_iter().collect();
    claims.sort_unstable();
    for (lane, (seq, hash)) in claims {
        let id = record_id(lane, seq);
        let found = store.audit_entries(&[id]).await?.pop().flatten();
        let intact = found
            .as_deref()
            .and_then(StoredRecord::split)
            .is_some_and(|stored| stored.hash == hash);
        if !intact {
            report.first_bad = Some((
                id,
                "a checkpoint names this record, which is gone or different (a lane was truncated or removed)",
            ));
            break;
        }
    }
    Ok(report)
}

/// The heads a stored record names, if it is a checkpoint.
fn checkpoint_of(value: &[u8]) -> Vec<(u32, u64, [u8; 32])> {
    StoredRecord::split(value)
        .and_then(|stored| decode_body(stored.body))
        .filter(|(_, event)| event.rpc == CHECKPOINT_RPC)
        .and_then(|(_, event)| parse_checkpoint(&event.target))
        .unwrap_or_default()
}

/// The sequence number of `lane`'s head now.
async fn lane_head(store: &dyn AuditStore, lane: u32) -> Result<u64, Error> {
    Ok(store
        .audit_heads()
        .await?
        .into_iter()
        .find(|(l, _)| *l == lane)
        .map_or(0, |(_, head)| head.seq))
}

/// Checks that the entry `key → value` is record `expected` and follows the
/// record whose hash is `prev`; returns its hash, or what is wrong with it.
fn check_link(
    expected: u64,
    prev: &[u8; 32],
    seq: u64,
    value: &[u8],
) -> Result<[u8; 32], &'static str> {
    if seq > expected {
        return Err("the record is missing");
    }
    if seq < expected {
        return Err("a record is out of place");
    }
    let stored = StoredRecord::split(value).ok_or("the record is unreadable")?;
    if stored.prev != *prev {
        return Err(
            "the record does not link to the one before it (reordered, or the one before was altered)",
        );
    }
    let digest = Sha256::digest(stored.body).into();
    if chain_hash(expected, stored.time_ms, prev, &digest) != stored.hash {
        return Err("the record was altered (its hash does not match)");
    }
    decode_body(stored.body).ok_or("the record is unreadable")?;
    Ok(stored.hash)
}

/// The audit trail of an unsealed vault: appends records and answers
/// questions about them. Owns the audit key and its storage; knows nothing
/// of the vault that uses it.
pub(crate) struct AuditLog {
    store: Arc<dyn Storage>,
    key: AuditKey,
    /// Records appended and refused since start, for metrics.
    appended: AtomicU64,
    failed: AtomicU64,
    /// Bench-only: records are not written, so the benchmark can measure
    /// what they cost. Compiled in only with the `bench-switches` feature.
    skip_for_bench: bool,
    /// The heads this process's last checkpoint left.
    checkpointed: std::sync::Mutex<Vec<(u32, schema::AuditHead)>>,
}

impl AuditLog {
    pub(crate) fn new(store: Arc<dyn Storage>, key: AuditKey) -> Self {
        #[cfg(feature = "bench-switches")]
        let skip_for_bench = std::env::var_os("PHIVAULT_BENCH_SKIP_AUDIT").is_some();
        #[cfg(not(feature = "bench-switches"))]
        let skip_for_bench = false;
        if skip_for_bench {
            tracing::warn!(
                "BENCHMARK BUILD: PHIVAULT_BENCH_SKIP_AUDIT is set; no audit record is written"
            );
        }
        Self {
            store,
            key,
            appended: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            skip_for_bench,
            checkpointed: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Appends a record of `event` and returns its sequence number once it
    /// is durable.
    pub(crate) async fn append(
        &self,
        keyset_version: u32,
        event: &AuditEvent,
    ) -> Result<u64, Error> {
        if self.skip_for_bench {
            return Ok(0);
        }
        let record = pending(keyset_version, event);
        let appended = self
            .store
            .append_audit(vec![record])
            .await
            .map_err(Error::AuditUnavailable)
            .map(|seqs| seqs.first().copied().unwrap_or_default());
        self.count(appended.is_ok());
        appended
    }

    /// Appends records of `events`, in order, in one commit.
    pub(crate) async fn append_batch(
        &self,
        keyset_version: u32,
        events: &[AuditEvent],
    ) -> Result<(), Error> {
        if self.skip_for_bench || events.is_empty() {
            return Ok(());
        }
        let records: Vec<PendingRecord> = events
            .iter()
            .map(|event| pending(keyset_version, event))
            .collect();
        let appended = self
            .store
            .append_audit(records)
            .await
            .map(drop)
            .map_err(Error::AuditUnavailable);
        for _ in events {
            self.count(appended.is_ok());
        }
        appended
    }

    /// Counts a record appended with the change it describes.
    pub(crate) fn count_record(&self, recorded: bool) {
        if recorded {
            self.count(true);
        }
    }

    fn count(&self, ok: bool) {
        let counter = if ok { &self.appended } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// (records appended, records that could not be) since start.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.appended.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// The mark of a token (canonical form) in `namespace`.
    pub(crate) fn mark(&self, namespace: &str, token: &str) -> [u8; 32] {
        self.key.token_mark(namespace, token)
    }

    /// Walks the chain.
    pub(crate) async fn verify(&self) -> Result<AuditReport, Error> {
        verify_chain(self.store.as_ref()).await
    }

    /// The calls that revealed the token marked `mark`, oldest first, after
    /// sequence number `after_seq`, at most `limit` (0: the default), and
    /// the `after_seq` of the next page if there is one. Read from the
    /// disclosure index; each answer is checked against its record. `names`
    /// gives client names by id.
    pub(crate) async fn disclosures(
        &self,
        mark: [u8; 32],
        after_seq: u64,
        limit: usize,
        names: &HashMap<String, String>,
    ) -> Result<(Vec<Disclosure>, Option<u64>), Error> {
        let limit = match limit {
            0 => DEFAULT_DISCLOSURES,
            n => n.min(MAX_DISCLOSURES),
        };
        let mut seqs = self.store.disclosures(&mark, after_seq, limit + 1).await?;
        let more = seqs.len() > limit;
        seqs.truncate(limit);
        let records = self.store.audit_entries(&seqs).await?;
        let mut found = Vec::with_capacity(seqs.len());
        for (&seq, value) in seqs.iter().zip(records) {
            let record = value.as_deref().and_then(|v| decode_record(seq, v));
            let Some(record) =
                record.filter(|r| r.event.tokens.iter().any(|t| t.revealed && t.mac == mark))
            else {
                tracing::error!(
                    seq,
                    "a disclosure index entry has no matching audit record; run `phivault audit verify`"
                );
                continue;
            };
            found.push(Disclosure {
                seq,
                time_ms: record.time_ms,
                client_name: names
                    .get(&record.event.client_id)
                    .cloned()
                    .unwrap_or_default(),
                client_id: record.event.client_id,
                rpc: record.event.rpc,
                request_id: record.event.request_id,
                masked: record.event.masked,
                keyset_version: record.keyset_version,
                purpose: record.event.purpose,
                reason: record.event.reason,
                break_glass: record.event.break_glass,
            });
        }
        let next = more.then(|| seqs.last().copied()).flatten();
        Ok((found, next))
    }

    /// The id of the newest record of the last lane (0: none): where an
    /// export that starts now stops. On one lane, the head's sequence
    /// number.
    pub(crate) async fn head_seq(&self) -> Result<u64, Error> {
        Ok(self
            .store
            .audit_heads()
            .await?
            .into_iter()
            .filter(|(_, head)| head.seq > 0)
            .map(|(lane, head)| record_id(lane, head.seq))
            .max()
            .unwrap_or(0))
    }

    /// Appends a checkpoint over every lane's head, unless they have not
    /// moved since this process's last one. Returns whether it wrote one.
    pub(crate) async fn checkpoint(&self, keyset_version: u32) -> Result<bool, Error> {
        let heads: Vec<(u32, schema::AuditHead)> = self
            .store
            .audit_heads()
            .await?
            .into_iter()
            .filter(|(_, head)| head.seq > 0)
            .collect();
        if heads.is_empty() || *self.checkpointed.lock().unwrap_or_else(|e| e.into_inner()) == heads
        {
            return Ok(false);
        }
        for part in heads.chunks(CHECKPOINT_LANES) {
            let event = AuditEvent {
                authenticated: true,
                rpc: CHECKPOINT_RPC.into(),
                target: checkpoint_target(part),
                ..AuditEvent::default()
            };
            self.append(keyset_version, &event).await?;
        }
        // The heads as the checkpoint left them: the next one is due only
        // once something else moved them.
        let now: Vec<(u32, schema::AuditHead)> = self
            .store
            .audit_heads()
            .await?
            .into_iter()
            .filter(|(_, head)| head.seq > 0)
            .collect();
        *self.checkpointed.lock().unwrap_or_else(|e| e.into_inner()) = now;
        Ok(true)
    }

    /// How many records the trail holds, in every lane.
    pub(crate) async fn record_count(&self) -> Result<u64, Error> {
        Ok(self
            .store
            .audit_heads()
            .await?
            .iter()
            .map(|(_, head)| head.seq)
            .sum())
    }

    /// Where an export of the records at or after `since_ms` starts: the
    /// first record of any lane at or after that time (a binary search in
    /// each lane, as times never decrease along a chain). Later lanes may
    /// hold older records; the export reads lane by lane.
    pub(crate) async fn seq_at(&self, since_ms: u64) -> Result<u64, Error> {
        let mut first: Option<u64> = None;
        for (lane, head) in self.store.audit_heads().await? {
            let (mut low, mut high) = (1, head.seq + 1);
            while low < high {
                let mid = low + (high - low) / 2;
                let time = self
                    .store
                    .audit_entries(&[record_id(lane, mid)])
                    .await?
                    .pop()
                    .flatten()
                    .as_deref()
                    .and_then(StoredRecord::split)
                    .map_or(0, |s| s.time_ms);
                if time < since_ms {
                    low = mid + 1;
                } else {
                    high = mid;
                }
            }
            if low <= head.seq {
                let id = record_id(lane, low);
                first = Some(first.map_or(id, |f| f.min(id)));
            }
        }
        match first {
            Some(id) => Ok(id),
            None => Ok(self.head_seq().await? + 1),
        }
    }

    /// Up to `limit` records after sequence number `after_seq` and no
    /// further than `up_to`, in order. A record that does not parse ends
    /// the read with [`Error::Corrupt`]: an export must not skip one.
    pub(crate) async fn records(
        &self,
        after_seq: u64,
        up_to: u64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, Error> {
        let mut records = Vec::new();
        for (seq, value) in self.store.audit_after(after_seq, limit).await? {
            if seq > up_to {
                break;
            }
            records.push(decode_record(seq, &value).ok_or(Error::Corrupt("audit record"))?);
        }
        Ok(records)
    }
}

/// Loads the audit key of an unsealed vault, creating it for a vault that an
/// older version initialised without one.
pub(crate) async fn load_or_create_key(
    store: &dyn AuditStore,
    kek: &crate::crypto::Kek,
) -> Result<AuditKey, Error> {
    if let Some(bytes) = store.audit_key_row().await? {
        let row = schema::AuditKeyRow::decode(&bytes).ok_or(Error::Corrupt("audit key row"))?;
        return AuditKey::unwrap(kek, row.version, &row.wrapped).map_err(|_| Error::KeyIntegrity);
    }
    // A vault without an audit key is one from before the audit trail.
    // If records exist, the key was removed: a new one would make every
    // token mark of the trail unanswerable, so refuse rather than hide it.
    if store
        .audit_heads()
        .await?
        .iter()
        .any(|(_, head)| head.seq > 0)
    {
        return Err(Error::Corrupt(
            "the audit key is missing while audit records exist; refusing to create another",
        ));
    }
    let key = AuditKey::generate(1).map_err(Error::Crypto)?;
    let row = new_key_row(&key, kek)?;
    if !store.create_audit_key(row).await? {
        return Err(Error::Store(StoreError::Unavailable(
            "the audit key appeared while it was being created; retry".into(),
        )));
    }
    tracing::info!("audit key created");
    Ok(key)
}

/// The `meta` row of a new audit key.
pub(crate) fn new_key_row(key: &AuditKey, kek: &crate::crypto::Kek) -> Result<Vec<u8>, Error> {
    Ok(schema::AuditKeyRow {
        version: key.version(),
        created_at: now_secs(),
        wrapped: key.wrap(kek).map_err(Error::Crypto)?,
    }
    .encode())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event() -> impl Strategy<Value = AuditEvent> {
        (
            (
                "[0-9a-f]{0,16}",
                any::<bool>(),
                "/[a-zA-Z./]{0,40}",
                "[a-z-]{0,20}",
            ),
            (
                any::<u32>(),
                any::<i32>(),
                "\\PC{0,30}",
                "\\PC{0,30}",
                any::<bool>(),
            ),
            proptest::collection::vec((any::<[u8; 32]>(), any::<bool>()), 0..20),
            ("[A-Z]{0,8}", "\\PC{0,20}", any::<bool>()),
        )
            .prop_map(
                |(
                    (client_id, authenticated, rpc, namespace),
                    (items, outcome, request_id, target, masked),
                    tokens,
                    (purpose, reason, break_glass),
                )| AuditEvent {
                    client_id,
                    authenticated,
                    rpc,
                    namespace,
                    items,
                    outcome,
                    request_id,
                    target,
                    masked,
                    tokens: tokens
                        .into_iter()
                        .map(|(mac, revealed)| TokenMark { mac, revealed })
                        .collect(),
                    purpose,
                    reason,
                    break_glass,
                },
            )
    }

    proptest! {
        #[test]
        fn bodies_round_trip(version: u32, event in event()) {
            let body = encode_body(version, &event);
            prop_assert_eq!(decode_body(&body), Some((version, event)));
        }

        #[test]
        fn a_cut_or_extended_body_does_not_parse(event in event(), cut in 1usize..8) {
            let body = encode_body(1, &event);
            prop_assert_eq!(decode_body(&body[..body.len() - cut.min(body.len())]), None);
            let mut longer = body.clone();
            longer.push(0);
            prop_assert_eq!(decode_body(&longer), None);
        }
    }

    #[test]
    fn the_chain_hash_covers_every_header_field() {
        let base = chain_hash(1, 2, &[3; 32], &[4; 32]);
        assert_ne!(base, chain_hash(2, 2, &[3; 32], &[4; 32]));
        assert_ne!(base, chain_hash(1, 3, &[3; 32], &[4; 32]));
        assert_ne!(base, chain_hash(1, 2, &[5; 32], &[4; 32]));
        assert_ne!(base, chain_hash(1, 2, &[3; 32], &[5; 32]));
    }
}
