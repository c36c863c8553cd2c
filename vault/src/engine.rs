//! Tokenize and detokenize orchestration over the store, the keys and the
//! formats. No transport types in here: the server maps these results.
//!
//! The write path (DESIGN.md §5): request tasks parse, hash and look values
//! up (cache, then one `multi_get`); only values never seen before go to the
//! writer, together with a precomputed first candidate token and its sealed
//! row so the single writer thread does as little crypto as possible. The
//! writer re-checks the forward index, dedups within its batch and checks the
//! reverse index before it takes a token, so concurrent callers of the same
//! new value always get one token.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use quick_cache::sync::Cache;
use zeroize::Zeroizing;

use crate::AuditEvent;
use crate::audit::{AuditLog, AuditRecord, AuditReport, Disclosure};
use crate::auth::{self, ApiKey, AuthError, Client, ClientRecord, ClientTable, Scope};
use crate::clock::now_secs;
use crate::coalesce::Coalesced;
use crate::crypto::{
    AuditKey, CryptoError, KdfParams, Kek, KeyPurpose, Keyset, MasterKey, Protection, SlotRng,
    TokenRng,
};
use crate::error::{Error, ItemCode, ItemError};
use crate::format::{Parsed, Shape};
use crate::keyring::{Keyring, Lookup, SharedKeyring, load_keyring, reverse_ad};
use crate::maintenance::{self, BackupInfo, VerifyReport};
use crate::namespace::{self, Namespace, NamespaceSpec, Namespaces};
use crate::rotation::{KeyStatus, Rotator};
use crate::store::schema::{ForwardKey, KeysetRow, KeysetState, ReverseRow};
use crate::store::{
    Genesis, InsertOutcome, Inserted, Location, MappingRows, NamespaceRow, NewValues, RowKey,
    Storage, StoreError, StoreOptions,
};
use crate::unseal::{MIN_PASSPHRASE_CHARS, Unsealed, protect_rows, unseal_kek};

pub use crate::store::Durability;

/// The outcome of one item: a token (or value), or why that item failed.
pub type ItemResult = Result<String, ItemError>;

/// Collision attempts per value: enough to find the last free token of a
/// small domain with overwhelming probability (40 × the domain size misses a
/// single free slot with probability e^-40), capped so that a nearly full
/// large domain fails in bounded time.
const ATTEMPTS_PER_DOMAIN_TOKEN: u128 = 40;
const MAX_ATTEMPTS: u128 = 65_536;

/// Request limits, enforced before any work.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Items in one tokenize or detokenize call.
    pub max_items: usize,
    /// Bytes in one value or token.
    pub max_value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_items: 10_000,
            max_value_bytes: 4096,
        }
    }
}

/// Whether a tokenize call may create mappings for values not in the vault.
#[derive(Clone, Copy)]
pub enum Mint<'a> {
    /// Never: values not there are `NOT_FOUND` (the `lookup` scope).
    Never,
    /// Always.
    Always,
    /// After `reserve` accepted the number of new mappings the call needs
    /// (a quota): an error from it fails the call, with nothing written.
    Reserving(&'a (dyn Fn(u64) -> Result<(), Error> + Sync)),
}

/// What one tokenize call found and made. `items` of the request may exceed
/// the sum: repeats of one new value share the mapping made for the first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenizeCounts {
    /// Values answered by a mapping that existed before the call.
    pub hits: u64,
    /// Mappings the call created.
    pub minted: u64,
    /// Values not in the vault, for a call that may not mint.
    pub not_found: u64,
    /// Values that failed otherwise (invalid, no free token, damaged).
    pub failed: u64,
}

/// A client to create: what `CreateClient` and `pvc clients create` take.
#[derive(Debug, Clone, Default)]
pub struct ClientSpec {
    /// A human name (`billing-service`).
    pub name: String,
    /// Its scopes as written (`detokenize:ssn`, `admin`, …).
    pub scopes: Vec<String>,
    /// Allows a masked reveal together with tokenize or lookup on one
    /// namespace (see [`auth::masked_oracle`]).
    pub allow_masked_oracle: bool,
    /// Its rate limits and quotas as written (`detokenize=50/s`,
    /// `new-mappings=100000/24h`); see [`crate::limits`].
    pub limits: Vec<String>,
    /// Its reveals must state a purpose of use.
    pub require_purpose: bool,
    /// How long its API key (and each key a rotation gives it) is accepted;
    /// `None`: until revoked.
    pub key_lifetime: Option<std::time::Duration>,
    /// Suspend it when the detector raises an alert about it.
    pub suspend_on_alert: bool,
}

/// How a vault is created and run.
#[derive(Debug, Clone)]
pub struct VaultOptions {
    /// Storage tuning and durability.
    pub store: StoreOptions,
    /// Argon2id cost for a new passphrase vault (unsealing uses the stored
    /// parameters).
    pub kdf: KdfParams,
    /// Entries in the forward-key → token cache (0 disables it).
    pub cache_entries: usize,
    /// Request limits.
    pub limits: Limits,
    /// Most mappings a key rotation moves per second (`None`: as fast as
    /// the writer allows), to leave headroom for live traffic.
    pub rotation_max_rate: Option<u32>,
}

impl Default for VaultOptions {
    fn default() -> Self {
        Self {
            store: StoreOptions::default(),
            kdf: KdfParams::default(),
            cache_entries: 1 << 20,
            limits: Limits::default(),
            rotation_max_rate: None,
        }
    }
}

/// An unsealed vault.
pub struct Vault {
    store: Arc<dyn Storage>,
    /// Kept while unsealed so that new keysets can be wrapped.
    kek: Kek,
    keyring: SharedKeyring,
    namespaces: Arc<Namespaces>,
    clients: RwLock<ClientTable>,
    /// Forward key → canonical token. Holds no plaintext: a forward key is a
    /// keyed hash.
    cache: Option<Cache<ForwardKey, Arc<str>>>,
    /// Candidate tokens checked and found taken, by namespace.
    fill: Arc<FillStats>,
    /// How many of each namespace's recent values were new.
    novelty: Novelty,
    limits: Limits,
    rotation: Rotator,
    audit: AuditLog,
    /// The registry epoch the clients, namespaces and keysets in memory
    /// were read at, on storage other nodes write to (0: not shared).
    epoch: std::sync::atomic::AtomicU64,
    /// Reads of the registry epoch, one shared by the calls waiting on it.
    epoch_reads: Coalesced<Option<u64>>,
    /// One reload of the registry at a time.
    reloading: tokio::sync::Mutex<()>,
    /// When this node last read the registry.
    reloaded_at: std::sync::Mutex<std::time::Instant>,
    /// When a key no client in memory has last made this node look again.
    unknown_key_refresh: std::sync::Mutex<Option<std::time::Instant>>,
    /// When this node last looked whether an audit checkpoint was due.
    checkpoint_at: std::sync::Mutex<Option<std::time::Instant>>,
    /// This process's name on leases.
    holder: String,
}

/// How often a node reads the registry again whatever its epoch says.
const REGISTRY_RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
/// How often a key no client in memory has may make a node look again.
const UNKNOWN_KEY_REFRESH_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// How often the holder of the checkpoint lease writes a checkpoint of the
/// audit lanes' heads (when they moved): a lane removed whole after the last
/// checkpoint is the one `verify` cannot tell from one never written.
const AUDIT_CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// A value that missed the cache and the forward index, on its way to
/// storage.
struct NewMapping {
    forward: Option<Lookup>,
    canonical: Zeroizing<String>,
    /// Tokens to try, in order, found before the call to storage: attempt
    /// 0's when the value is first seen (with its row sealed), or the free
    /// ones a collision search found. Storage checks these first.
    candidates: std::collections::VecDeque<Drawn>,
    /// The attempt a search for this value would go on from.
    next_attempt: u32,
    /// Attempts this value's shape may take in all.
    attempts: u32,
    /// A row could not be sealed (the item fails `INTERNAL`).
    failed: bool,
    /// The candidate last handed to storage, with any rows made for it.
    offered: Option<Drawn>,
    /// Candidates handed to storage in the current round.
    offers: u64,
}

impl NewMapping {
    /// A value as first seen: attempt 0's token, its row and forward entry
    /// sealed here, off the writer.
    fn first(
        ns: &Namespace,
        ring: &Keyring,
        forward: Option<Lookup>,
        canonical: Zeroizing<String>,
        now: u64,
    ) -> Self {
        let keyset = &ring.active;
        let candidates = candidate(ns, keyset, &canonical, 0)
            .map(|token| {
                let row = seal_row(ns, keyset, &token, &canonical, now).ok();
                let bound = forward
                    .as_ref()
                    .map(|l| l.active.bind(keyset.prf(), token.as_bytes()));
                Drawn { token, row, bound }
            })
            .into_iter()
            .collect();
        let domain = ns.format.domain_size(&canonical);
        let attempts =
            (domain.saturating_mul(ATTEMPTS_PER_DOMAIN_TOKEN)).clamp(64, MAX_ATTEMPTS) as u32;
        Self {
            forward,
            canonical,
            candidates,
            next_attempt: 1,
            attempts,
            failed: false,
            offered: None,
            offers: 0,
        }
    }

    /// The same value after a rotation made another keyset active: its
    /// forward keys and candidates belonged to the old one.
    fn remade(self, ns: &Namespace, ring: &Keyring, now: u64) -> Self {
        let forward = self
            .forward
            .is_some()
            .then(|| ring.lookup(ns.id, &self.canonical));
        Self::first(ns, ring, forward, self.canonical, now)
    }
}

/// A token a value may take, and its reverse row and bound forward entry if
/// they were made already.
struct Drawn {
    token: String,
    row: Option<Vec<u8>>,
    bound: Option<Vec<u8>>,
}

/// One call's new values of a namespace, as storage sees them: it asks for
/// candidates one at a time, so a value whose first candidate is free costs
/// one sealed row, and a taken one a few more drawn here — a fixed bound per
/// value, so a nearly full space costs storage's commit (and every write and
/// audit record queued behind it) no more than an empty one.
struct Round {
    ns: Arc<Namespace>,
    ring: Arc<Keyring>,
    now: u64,
    len: usize,
    mappings: std::sync::Mutex<Vec<NewMapping>>,
    /// See [`NewValues::older_keys_checked`].
    older_keys_checked: bool,
}

impl Round {
    fn new(
        ns: Arc<Namespace>,
        ring: Arc<Keyring>,
        now: u64,
        mut mappings: Vec<NewMapping>,
        older_keys_checked: bool,
    ) -> Self {
        for mapping in &mut mappings {
            mapping.offers = 0;
        }
        Self {
            ns,
            ring,
            now,
            len: mappings.len(),
            mappings: std::sync::Mutex::new(mappings),
            older_keys_checked,
        }
    }

    fn mappings(&self) -> std::sync::MutexGuard<'_, Vec<NewMapping>> {
        self.mappings.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl NewValues for Round {
    fn namespace(&self) -> u32 {
        self.ns.id
    }

    fn keyset(&self) -> u32 {
        self.ring.active.version()
    }

    fn len(&self) -> usize {
        self.len
    }

    fn forward_keys(&self, item: usize) -> Vec<ForwardKey> {
        self.mappings()
            .get(item)
            .and_then(|m| m.forward.as_ref())
            .map(|l| l.all().copied().collect())
            .unwrap_or_default()
    }

    fn next_candidate(&self, item: usize) -> Option<String> {
        let mut mappings = self.mappings();
        let mapping = mappings.get_mut(item)?;
        let drawn = match mapping.candidates.pop_front() {
            Some(drawn) => drawn,
            None => loop {
                // A handful of further attempts, a fixed bound per value: in
                // a sparse space they settle nearly every collision in this
                // commit, where sending the value back would cost its
                // request another one.
                if mapping.next_attempt >= mapping.attempts.min(WRITER_ATTEMPTS) {
                    return None;
                }
                let attempt = mapping.next_attempt;
                mapping.next_attempt += 1;
                if let Some(token) =
                    candidate(&self.ns, &self.ring.active, &mapping.canonical, attempt)
                {
                    break Drawn {
                        token,
                        row: None,
                        bound: None,
                    };
                }
            },
        };
        let token = drawn.token.clone();
        mapping.offered = Some(drawn);
        mapping.offers += 1;
        Some(token)
    }

    fn rows(&self, item: usize, token: &str) -> Option<MappingRows> {
        let mut mappings = self.mappings();
        let mapping = mappings.get_mut(item)?;
        let keyset = &self.ring.active;
        // Rows made before the call for this very candidate, or made now:
        // only the candidate taken is ever sealed here.
        let (row, bound) = match mapping.offered.take() {
            Some(drawn) if drawn.token == token => (drawn.row, drawn.bound),
            _ => (None, None),
        };
        let reverse = match row {
            Some(row) => row,
            None => match seal_row(&self.ns, keyset, token, &mapping.canonical, self.now) {
                Ok(row) => row,
                Err(_) => {
                    mapping.failed = true;
                    return None;
                }
            },
        };
        let forward = mapping
            .forward
            .as_ref()
            .map(|l| bound.unwrap_or_else(|| l.active.bind(keyset.prf(), token.as_bytes())));
        Some(MappingRows { reverse, forward })
    }

    fn older_keys_checked(&self) -> bool {
        self.older_keys_checked
    }
}

/// Free candidates a collision search hands the writer per value: enough
/// that a concurrent request taking one rarely sends the value back.
const SEARCH_CANDIDATES: usize = 4;
/// Attempts (counted from 0) the writer may draw itself for a value whose
/// candidates were taken, before sending it back to be searched for.
const WRITER_ATTEMPTS: u32 = 4;
/// Candidate tokens checked per storage read while searching.
const SEARCH_CHUNK: u32 = 256;
/// Rounds of search-then-commit per value before it fails: another request
/// would have to take every candidate found, this many times over.
const SEARCH_ROUNDS: usize = 8;
/// Candidates drawn and checked per pass of a collision search, across the
/// values searched for (a chunk each): bounds one storage read and the
/// tokens held for it.
const SEARCH_PASS: u32 = 16_384;
/// Candidates one request may check in all, across its values: a request
/// of 10,000 values of a full shape would otherwise make 655 million checks
/// (65,536 each). Values left when it is spent fail `RESOURCE_EXHAUSTED`.
const SEARCH_BUDGET: u32 = 262_144;

impl Vault {
    /// Creates a vault in the directory `path`: KDF record, KEK check,
    /// keyset 1 and the default namespaces, in one durable commit.
    pub async fn init(
        path: &Path,
        master: MasterKey,
        options: VaultOptions,
    ) -> Result<Self, Error> {
        Self::init_at(&Location::directory(path), master, options).await
    }

    /// Creates a vault at `location`, whatever the backend: KDF record, KEK
    /// check, keyset 1 and the default namespaces, in one durable commit.
    pub async fn init_at(
        location: &Location,
        master: MasterKey,
        options: VaultOptions,
    ) -> Result<Self, Error> {
        if crate::store::exists(location).await? {
            return Err(Error::AlreadyInitialized(location.to_string()));
        }
        if let MasterKey::Passphrase(p) = &master
            && p.chars().count() < MIN_PASSPHRASE_CHARS
        {
            return Err(Error::WeakPassphrase {
                min: MIN_PASSPHRASE_CHARS,
            });
        }
        options.kdf.check().map_err(Error::MasterKey)?;
        let (record, kek) = crate::unseal::new_kek(master, options.kdf).await?;
        let check = kek
            .check_value(&record, Protection::CURRENT)
            .map_err(Error::Crypto)?;
        let keyset = Keyset::generate(1).map_err(Error::Crypto)?;
        let wrapped = keyset.wrap(&kek, KeyPurpose::Data).map_err(Error::Crypto)?;
        let audit_key = AuditKey::generate(1).map_err(Error::Crypto)?;
        let audit_row = crate::audit::new_key_row(&audit_key, &kek)?;
        let now = now_secs();
        let namespaces: Vec<Namespace> = namespace::defaults()
            .into_iter()
            .zip(1u32..)
            .map(|(spec, id)| Namespace {
                name: spec.name,
                id,
                format: spec.format,
                deterministic: spec.deterministic,
                created_at: now,
            })
            .collect();

        let genesis = Genesis {
            kdf: record.encode(),
            kek_check: check,
            keyset: KeysetRow {
                state: KeysetState::Active,
                created_at: now,
                wrapped,
            }
            .encode(),
            audit_key: audit_row,
            namespaces: namespaces
                .iter()
                .map(|ns| (ns.name.clone(), encode_namespace(ns)))
                .collect(),
        };
        let store = crate::store::create(
            location,
            &options.store,
            RowKey::new(kek.registry_key()),
            genesis,
        )
        .await?;
        tracing::info!(%location, namespaces = namespaces.len(), "vault initialised");
        let keyset = Arc::new(keyset);
        let keyring = Keyring::new(
            Arc::clone(&keyset),
            HashMap::from([(1, Arc::clone(&keyset))]),
        );
        Ok(Self::assemble(
            store,
            kek,
            keyring,
            audit_key,
            namespaces,
            ClientTable::default(),
            options,
        ))
    }

    /// Unseals the vault at `path`. The KEK is checked against a read-only
    /// view first: a wrong passphrase or key file fails with
    /// [`Error::WrongMasterKey`] and changes nothing on disk.
    pub async fn open(
        path: &Path,
        master: MasterKey,
        options: VaultOptions,
    ) -> Result<Self, Error> {
        Self::open_at(&Location::directory(path), master, options).await
    }

    /// Unseals the vault at `location`, whatever the backend; see
    /// [`Vault::open`].
    pub async fn open_at(
        location: &Location,
        master: MasterKey,
        options: VaultOptions,
    ) -> Result<Self, Error> {
        if !crate::store::exists(location).await? {
            return Err(Error::NotInitialized(location.to_string()));
        }
        let Unsealed { kek, protection } = unseal_kek(location, master).await?;
        let store = crate::store::open(location, &options.store).await?;
        protect_rows(store.as_ref(), &kek, protection).await?;
        // The audit head's MAC is what keys the chain: check it now, so that
        // a rewritten head stops the start rather than the first reveal. A
        // head deleted while records exist would make the next record
        // overwrite the first: refused too (a record whose key does not
        // decode is a record).
        if store
            .audit_heads()
            .await?
            .iter()
            .all(|(_, head)| head.seq == 0)
            && !matches!(store.audit_after(0, 1).await, Ok(ref none) if none.is_empty())
        {
            return Err(Error::Store(StoreError::Tampered {
                table: "meta",
                row: format!("{:?}", "audit_head"),
            }));
        }
        // Read before the registry, so that a change made while it is read
        // is seen as a newer epoch on the next call.
        let epoch = store.registry_epoch().await?.unwrap_or(0);
        let keyring = load_keyring(store.as_ref(), &kek).await?;
        let audit_key = crate::audit::load_or_create_key(store.as_ref(), &kek).await?;
        let namespaces = read_namespaces(store.as_ref()).await?;
        let clients = read_clients(store.as_ref()).await?;
        tracing::info!(%location, active_keyset = keyring.active.version(), keysets = keyring.by_version.len(), "vault unsealed");
        let vault = Self::assemble(store, kek, keyring, audit_key, namespaces, clients, options);
        vault.epoch.store(epoch, Ordering::Release);
        Ok(vault)
    }

    /// On storage other nodes write to: reads the clients, namespaces and
    /// keysets again if another node changed any since this one read them,
    /// so that a client revoked or a keyset rotated on one node is seen on
    /// the next call on every node. One small read, begun after the call
    /// arrived and shared with the calls that arrived with it (see
    /// [`Coalesced`]); nothing on storage only this process writes.
    pub async fn refresh(&self) -> Result<(), Error> {
        self.refresh_if(false).await
    }

    /// [`Vault::refresh`], and a full reload every [`REGISTRY_RELOAD_EVERY`]
    /// whatever the epoch says (`periodic`): the epoch row carries no MAC,
    /// and one held still would otherwise keep another node's revocation
    /// from this one.
    async fn refresh_if(&self, periodic: bool) -> Result<(), Error> {
        if !self.store.shared() {
            return Ok(());
        }
        let epoch = self
            .epoch_reads
            .get(|| async { Ok(self.store.registry_epoch().await?) })
            .await?
            .ok_or(Error::Store(StoreError::Corrupt {
                table: "registry_epoch",
                what: "the registry epoch is missing",
            }))?;
        let due = || {
            periodic
                && self
                    .reloaded_at
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .elapsed()
                    >= REGISTRY_RELOAD_EVERY
        };
        // Any change, a step back included, means the rows may differ.
        if epoch == self.epoch.load(Ordering::Acquire) && !due() {
            return Ok(());
        }
        let _one = self.reloading.lock().await;
        if epoch == self.epoch.load(Ordering::Acquire) && !due() {
            return Ok(());
        }
        // What this node knew before it read: a change it commits while
        // the rows are read is newer than both, and is not a step back.
        let known = self.clients.read().unwrap_or_else(|e| e.into_inner()).all();
        let keyring = load_keyring(self.store.as_ref(), &self.kek).await?;
        let namespaces = read_namespaces(self.store.as_ref()).await?;
        let clients = read_clients(self.store.as_ref()).await?;
        self.refuse_rollback(&keyring, &known, &clients)?;
        for ns in namespaces {
            self.namespaces.insert(ns);
        }
        *self.clients.write().unwrap_or_else(|e| e.into_inner()) = clients;
        *self.keyring.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keyring);
        self.epoch.store(epoch, Ordering::Release);
        *self.reloaded_at.lock().unwrap_or_else(|e| e.into_inner()) = std::time::Instant::now();
        tracing::debug!(epoch, "registry read again");
        Ok(())
    }

    /// Row MACs prove a row was written by the vault, not that it is the
    /// newest: rows put back from an older copy would un-revoke a client or
    /// bring a retired keyset back. What this node has seen never goes back.
    fn refuse_rollback(
        &self,
        keyring: &Keyring,
        known: &[Client],
        clients: &ClientTable,
    ) -> Result<(), Error> {
        let active = self.keyring().active.version();
        if keyring.active.version() < active {
            tracing::error!(
                seen = active,
                stored = keyring.active.version(),
                "the stored active keyset is older than one this node used: refused"
            );
            return Err(Error::Store(StoreError::Tampered {
                table: "meta",
                row: format!("{:?}", "active_keyset"),
            }));
        }
        let now = clients.all();
        for seen in known {
            if now
                .iter()
                .any(|c| c.id == seen.id && c.version < seen.version)
            {
                tracing::error!(client_id = %seen.id, "a client is stored at a version older than one this node saw: refused");
                return Err(Error::Store(StoreError::Tampered {
                    table: "clients",
                    row: format!("{:?}", seen.id),
                }));
            }
        }
        for revoked in known.iter().filter(|c| c.revoked_at.is_some()) {
            if now
                .iter()
                .any(|c| c.id == revoked.id && c.revoked_at.is_none())
            {
                tracing::error!(client_id = %revoked.id, "a client this node saw revoked is stored unrevoked: refused");
                return Err(Error::Store(StoreError::Tampered {
                    table: "clients",
                    row: format!("{:?}", revoked.id),
                }));
            }
        }
        Ok(())
    }

    /// [`Vault::refresh`] for a key no client in memory has, at most once
    /// every [`UNKNOWN_KEY_REFRESH_EVERY`]: a flood of made-up keys costs the
    /// database one small read per interval, not one per request. A client
    /// created on another node is therefore known here within that interval.
    pub async fn refresh_for_unknown_key(&self) -> Result<(), Error> {
        let recent = self
            .unknown_key_refresh
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|at| at.elapsed() < UNKNOWN_KEY_REFRESH_EVERY);
        if recent {
            return Ok(());
        }
        // Timed from when a look ends, not when it starts: a caller that
        // arrives while one is under way looks too (and waits for its
        // reload), so a new client's key is never refused for arriving
        // during the reload that brings it.
        self.refresh().await?;
        *self
            .unknown_key_refresh
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
        Ok(())
    }

    /// The health loop's once-a-second look: [`Vault::refresh`], and the
    /// periodic full reload.
    pub async fn refresh_periodically(&self) -> Result<(), Error> {
        self.refresh_if(true).await
    }

    /// Whether other vault nodes share this one's storage.
    pub fn shares_storage(&self) -> bool {
        self.store.shared()
    }

    /// On storage other nodes share: if a checkpoint of the audit lanes is
    /// due and this node holds the checkpoint lease, writes one (see
    /// [`crate::audit::CHECKPOINT_RPC`]). One node writes them at a time;
    /// another takes over when it stops renewing the lease.
    pub async fn checkpoint_audit(&self) -> Result<(), Error> {
        if !self.store.shared() {
            return Ok(());
        }
        {
            let last = self.checkpoint_at.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|at| at.elapsed() < AUDIT_CHECKPOINT_EVERY) {
                return Ok(());
            }
        }
        *self.checkpoint_at.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(std::time::Instant::now());
        let lease = self
            .store
            .acquire_lease("audit-checkpoint", &self.holder, AUDIT_CHECKPOINT_EVERY * 3)
            .await?;
        if lease.is_some() {
            let version = self.keyring().active.version();
            if self.audit.checkpoint(version).await? {
                tracing::debug!("audit checkpoint written");
            }
        }
        Ok(())
    }

    fn assemble(
        store: Arc<dyn Storage>,
        kek: Kek,
        keyring: Keyring,
        audit_key: AuditKey,
        namespaces: Vec<Namespace>,
        clients: ClientTable,
        options: VaultOptions,
    ) -> Self {
        let namespaces = Arc::new(Namespaces::new(namespaces));
        let keyring: SharedKeyring = Arc::new(RwLock::new(Arc::new(keyring)));
        let cache = (options.cache_entries > 0).then(|| Cache::new(options.cache_entries));
        Self {
            audit: AuditLog::new(Arc::clone(&store), audit_key),
            rotation: Rotator::new(
                Arc::clone(&store),
                Arc::clone(&keyring),
                Arc::clone(&namespaces),
                options.rotation_max_rate,
            ),
            store,
            kek,
            keyring,
            namespaces,
            clients: RwLock::new(clients),
            cache,
            fill: Arc::default(),
            novelty: Novelty::default(),
            limits: options.limits,
            epoch: std::sync::atomic::AtomicU64::new(0),
            epoch_reads: Coalesced::new(),
            reloading: tokio::sync::Mutex::new(()),
            reloaded_at: std::sync::Mutex::new(std::time::Instant::now()),
            unknown_key_refresh: std::sync::Mutex::new(None),
            checkpoint_at: std::sync::Mutex::new(None),
            holder: crate::store::holder_name(),
        }
    }

    /// Authenticates `authorization` metadata (`Bearer pv_<id>_<secret>`)
    /// against the clients in memory: no disk read, constant-time digest
    /// comparison.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Arc<Client>, AuthError> {
        self.clients
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .authenticate(authorization)
    }

    /// A client by id, as this node last read the registry.
    pub(crate) fn client(&self, id: &str) -> Option<Arc<Client>> {
        self.clients
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
    }

    /// Publishes what this node admitted under its clients' limits, and
    /// returns what the other nodes sharing its storage published.
    pub(crate) async fn share_usage(
        &self,
        mine: Vec<crate::store::Usage>,
    ) -> Result<Vec<crate::store::SharedUsage>, Error> {
        Ok(self.store.share_usage(&self.holder, mine).await?)
    }

    /// Every client, by name.
    pub fn clients(&self) -> Vec<Client> {
        self.clients.read().unwrap_or_else(|e| e.into_inner()).all()
    }

    /// Creates a client with `scopes` and returns it with its API key, which
    /// is not stored anywhere and cannot be shown again.
    pub async fn create_client(
        &self,
        name: &str,
        scopes: &[impl AsRef<str>],
    ) -> Result<(Client, ApiKey), Error> {
        let spec = ClientSpec {
            name: name.to_owned(),
            scopes: scopes.iter().map(|s| s.as_ref().to_owned()).collect(),
            ..ClientSpec::default()
        };
        self.create_client_with_record(&spec, None).await
    }

    /// `record` ready for the writer, with `complete` applied (the change's
    /// target, known here).
    fn pending_record(
        &self,
        record: Option<AuditEvent>,
        complete: impl FnOnce(&mut AuditEvent),
    ) -> Option<crate::store::PendingRecord> {
        record.map(|mut event| {
            complete(&mut event);
            crate::audit::pending(self.active_keyset_version(), &event)
        })
    }

    /// Creates the client `spec` describes, with `record` (its `target` set
    /// to the new client's id) appended to the audit trail in the same
    /// commit: the client and its record exist together or not at all. A
    /// masked reveal with tokenize or lookup on one namespace is refused
    /// unless the spec allows it (see [`auth::masked_oracle`]).
    pub async fn create_client_with_record(
        &self,
        spec: &ClientSpec,
        audit_record: Option<AuditEvent>,
    ) -> Result<(Client, ApiKey), Error> {
        let ClientSpec {
            name,
            scopes,
            allow_masked_oracle,
            limits,
            require_purpose,
            key_lifetime,
            suspend_on_alert,
        } = spec;
        let limits = crate::limits::Limits::parse(limits).map_err(Error::InvalidClient)?;
        let name_ok = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b" ._-".contains(&c));
        if !name_ok {
            return Err(Error::InvalidClient(
                "a client name is 1 to 64 characters of letters, digits, space, '.', '_' or '-'"
                    .into(),
            ));
        }
        let scopes: Vec<Scope> = scopes
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()
            .map_err(Error::InvalidClient)?;
        if !*allow_masked_oracle && let Some(ns) = auth::masked_oracle(&scopes) {
            return Err(Error::InvalidClient(format!(
                "a masked reveal with tokenize or lookup on namespace {ns:?} reveals whole values (the visible characters leave few candidates, which tokenize checks one by one); grant a full reveal instead, or allow it explicitly (allow_masked_oracle, `--allow-masked-oracle`)"
            )));
        }
        if scopes.is_empty() {
            return Err(Error::InvalidClient(
                "a client needs at least one scope".into(),
            ));
        }
        let (id, key, digest) = auth::mint_key().map_err(Error::Crypto)?;
        let now = now_secs();
        let record = ClientRecord {
            name: name.to_owned(),
            scopes: scopes.iter().map(ToString::to_string).collect(),
            secret_sha256: digest,
            created_at: now,
            limits,
            require_purpose: *require_purpose,
            separated: true,
            expires_at: key_lifetime.map(|d| now.saturating_add(d.as_secs())),
            key_lifetime_secs: key_lifetime.map(|d| d.as_secs()),
            suspend_on_alert: *suspend_on_alert,
            ..ClientRecord::default()
        };
        let client = record.to_client(&id).map_err(Error::InvalidClient)?;
        let audited = self.pending_record(audit_record, |e| e.target = id.clone());
        let recorded = audited.is_some();
        // 64 random bits: a clash is all but impossible, and never silently
        // overwrites.
        if !self
            .store
            .create_client(id.clone(), record.clone(), audited)
            .await?
        {
            return Err(Error::Store(StoreError::Unavailable(
                "client id clash; retry".into(),
            )));
        }
        self.audit.count_record(recorded);
        self.clients
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .put(&id, &record)
            .map_err(Error::InvalidClient)?;
        tracing::info!(client_id = %id, client = %client.name, "client created");
        Ok((client, key))
    }

    /// Revokes a client; its next call is refused. Revoking twice keeps the
    /// first revocation time.
    pub async fn revoke_client(&self, id: &str) -> Result<Client, Error> {
        self.revoke_client_with_record(id, None).await
    }

    /// [`Vault::revoke_client`], with `record` (its `target` set to the
    /// client's id) appended to the audit trail in the same commit.
    pub async fn revoke_client_with_record(
        &self,
        id: &str,
        audit_record: Option<AuditEvent>,
    ) -> Result<Client, Error> {
        let now = now_secs();
        let change = Box::new(move |row: &mut ClientRecord| {
            row.revoked_at.get_or_insert(now);
            true
        });
        let client = self
            .update_client_with_record(id, change, audit_record)
            .await?;
        tracing::info!(client_id = %id, "client revoked");
        Ok(client)
    }

    /// Gives client `id` a new API key, returned once; the key it had is
    /// still accepted for `grace` (none: not at all), never past its own
    /// expiry, and a key an earlier rotation retired stops at once. A client
    /// whose keys expire gets a fresh lifetime. On record like every change.
    pub async fn rotate_client_key_with_record(
        &self,
        id: &str,
        grace: std::time::Duration,
        audit_record: Option<AuditEvent>,
    ) -> Result<(Client, ApiKey), Error> {
        let (key, digest) = auth::mint_secret(id).map_err(Error::Crypto)?;
        let now = now_secs();
        let change = Box::new(move |row: &mut ClientRecord| {
            let retired = std::mem::replace(&mut row.secret_sha256, digest);
            // The retired key lives out its grace, but never past its own
            // expiry: a rotation does not bring an expired key back.
            let until = row
                .expires_at
                .map_or(u64::MAX, |at| at)
                .min(now.saturating_add(grace.as_secs()));
            (row.previous_secret_sha256, row.previous_valid_until) = if until <= now {
                (None, None)
            } else {
                (Some(retired), Some(until))
            };
            if let Some(lifetime) = row.key_lifetime_secs {
                row.expires_at = Some(now.saturating_add(lifetime));
            }
            true
        });
        let client = self
            .update_client_with_record(id, change, audit_record)
            .await?;
        tracing::info!(client_id = %id, grace_secs = grace.as_secs(), "client key rotated");
        Ok((client, key))
    }

    /// Applies `change` to client `id` as stored, with `record` (its
    /// `target` set to the client's id) appended in the same commit; the
    /// client as it now is. Every node applies it on its next call.
    pub(crate) async fn update_client_with_record(
        &self,
        id: &str,
        change: crate::store::ClientChange,
        audit_record: Option<AuditEvent>,
    ) -> Result<Client, Error> {
        let audited = self.pending_record(audit_record, |e| e.target = id.to_owned());
        let recorded = audited.is_some();
        let record = self
            .store
            .update_client(id.to_owned(), change, audited)
            .await?
            .ok_or_else(|| Error::ClientNotFound(id.to_owned()))?;
        self.audit.count_record(recorded);
        self.clients
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .put(id, &record)
            .map_err(|_| Error::Corrupt("client scopes"))
    }

    /// Flushes and closes the vault. A rotation job still running is told
    /// to stop (its cursor is on disk; the next start resumes it); call
    /// [`Vault::stop_background_jobs`] first to wait for it, after which the
    /// directory can be opened again at once.
    pub fn close(self) -> Result<(), Error> {
        self.rotation.signal_stop();
        Ok(self.store.close()?)
    }

    /// The request limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The version new mappings are written under.
    pub fn active_keyset_version(&self) -> u32 {
        self.keyring().active.version()
    }

    /// The keysets as they are now.
    pub(crate) fn data_dir(&self) -> Option<&Path> {
        self.store.local_dir()
    }

    pub(crate) fn keyring(&self) -> Arc<Keyring> {
        Arc::clone(&self.keyring.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// How many bytes the vault takes in storage (see
    /// [`crate::store::Lifecycle::size_bytes`]).
    pub async fn store_size(&self) -> Result<u64, Error> {
        Ok(self.store.size_bytes().await?)
    }

    /// Commit statistics of the single writer.
    pub fn writer_stats(&self) -> crate::store::WriterStats {
        self.store.commit_stats()
    }

    /// For each namespace that has allocated tokens since start, the share
    /// of candidate tokens found taken: an estimate of how full its token
    /// space is for the values being tokenized (see the metric
    /// `phivault_namespace_fill_ratio`).
    pub fn namespace_fill(&self) -> Vec<(String, f64)> {
        self.fill.ratios()
    }

    /// Whether the write path — mappings and audit records alike — takes
    /// commits now. While it does not, every reveal fails closed, so health
    /// reports NOT_SERVING.
    pub fn write_path_healthy(&self) -> bool {
        self.store.writable()
    }

    /// Commits a small durable write to find out whether the store takes
    /// writes again (after a full disk, say) when no call is writing.
    pub async fn probe_write_path(&self) -> Result<(), Error> {
        self.store.probe_writes().await?;
        Ok(())
    }

    /// Appends a record of `event` and returns its sequence number once it
    /// is durable. A caller must not answer the call before this returns,
    /// and must fail it when this fails ([`Error::AuditUnavailable`]).
    pub async fn audit(&self, event: &AuditEvent) -> Result<u64, Error> {
        self.audit.append(self.active_keyset_version(), event).await
    }

    /// Appends records of `events`, in order, in one commit: summaries that
    /// no caller is waiting for, written as one operation so that they take
    /// one place in the writer's queue however many there are.
    pub async fn audit_batch(&self, events: &[AuditEvent]) -> Result<(), Error> {
        self.audit
            .append_batch(self.active_keyset_version(), events)
            .await
    }

    /// The mark of `token` in `namespace`, taken over the token's canonical
    /// form so that every way of writing one token marks alike. A token the
    /// namespace's format does not accept (or of an unknown namespace) is
    /// marked as given: it cannot have been revealed.
    pub fn token_mark(&self, namespace: &str, token: &str) -> [u8; 32] {
        let canonical = self
            .namespace(namespace)
            .ok()
            .and_then(|ns| ns.format.parse_token(token).ok())
            .map(|parsed| parsed.canonical);
        let token = canonical.as_deref().map_or(token, |c| c.as_str());
        self.audit.mark(namespace, token)
    }

    /// Walks the audit chain.
    pub async fn verify_audit(&self) -> Result<AuditReport, Error> {
        self.audit.verify().await
    }

    /// Every call that revealed `token` in `namespace`, oldest first, after
    /// sequence number `after_seq`, at most `limit` (0: the default), and the
    /// `after_seq` of the next page if there is one.
    pub async fn disclosures(
        &self,
        namespace: &str,
        token: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<(Vec<Disclosure>, Option<u64>), Error> {
        let ns = self.namespace(namespace)?;
        let parsed = ns.format.parse_token(token).map_err(|e| {
            Error::InvalidToken(ItemError::new(
                ItemCode::InvalidArgument,
                &ns.name,
                format_args!("not a {} token: {e}", ns.format.kind),
            ))
        })?;
        let mark = self.audit.mark(&ns.name, &parsed.canonical);
        let names: HashMap<String, String> =
            self.clients().into_iter().map(|c| (c.id, c.name)).collect();
        self.audit.disclosures(mark, after_seq, limit, &names).await
    }

    /// Audit records appended, and refused for a storage failure, since the
    /// vault was opened.
    pub fn audit_counts(&self) -> (u64, u64) {
        self.audit.counts()
    }

    /// The head of the audit chain: its sequence number (0: empty).
    pub async fn audit_head_seq(&self) -> Result<u64, Error> {
        self.audit.head_seq().await
    }

    /// How many records the audit trail holds.
    pub async fn audit_record_count(&self) -> Result<u64, Error> {
        self.audit.record_count().await
    }

    /// The first sequence number whose record is at or after `since_ms`.
    pub async fn audit_seq_at(&self, since_ms: u64) -> Result<u64, Error> {
        self.audit.seq_at(since_ms).await
    }

    /// Up to `limit` records after sequence number `after_seq` and no
    /// further than `up_to`, in order.
    pub async fn audit_records(
        &self,
        after_seq: u64,
        up_to: u64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, Error> {
        self.audit.records(after_seq, up_to, limit).await
    }

    /// Every namespace, by name.
    pub fn namespaces(&self) -> Vec<Namespace> {
        self.namespaces.all()
    }

    /// Writes a consistent backup to `path` while serving. With `within`,
    /// the path must lie inside that directory. The backup is written to a
    /// private staging directory beside `path` and renamed into place,
    /// owner-only.
    pub async fn backup(&self, path: &Path, within: Option<&Path>) -> Result<BackupInfo, Error> {
        maintenance::backup(self.store.as_ref(), path, within).await
    }

    /// Checks every mapping: each reverse row opens under its keyset, each
    /// deterministic value's forward entry exists and points back at its
    /// token, and each forward entry belongs to a reverse row whose value
    /// hashes to it. Reads everything; run it on a stopped vault or a backup.
    pub async fn verify(&self) -> Result<VerifyReport, Error> {
        maintenance::verify(
            self.store.as_ref(),
            &self.keyring(),
            &self.namespaces.by_id(),
        )
        .await
    }

    /// Writes every row of the vault to the new file `path`, authenticated
    /// under a key derived from the KEK, for [`crate::import`] into another
    /// backend (see `crate::portable`). On PostgreSQL it reads one snapshot
    /// and can run beside serving nodes; refused while a key rotation runs.
    pub async fn export_to(&self, path: &std::path::Path) -> Result<crate::ExportInfo, Error> {
        crate::portable::export(self.store.as_ref(), &self.kek, path).await
    }

    /// Replaces the master key of the stopped vault at `location`: every
    /// keyset is re-wrapped under the new KEK and the KDF record and KEK
    /// check are replaced in one commit, so after a crash at any point
    /// exactly one of the old and new keys unseals the vault.
    pub async fn rekey(
        location: &Location,
        old: MasterKey,
        new: MasterKey,
        kdf: KdfParams,
    ) -> Result<(), Error> {
        maintenance::rekey(location, old, new, kdf).await
    }

    pub(crate) fn namespace(&self, name: &str) -> Result<Arc<Namespace>, Error> {
        self.namespaces.get(name)
    }

    /// Starts a key rotation: keyset v+1 is created and active for new
    /// writes as soon as this returns; a background job moves the existing
    /// mappings and destroys v when done. Returns the new version.
    ///
    /// Fails with [`Error::RotationInProgress`] while a rotation runs.
    pub async fn rotate_keys(&self) -> Result<u32, Error> {
        self.rotate_keys_with_record(None).await
    }

    /// [`Vault::rotate_keys`], with `record` (its `target` set to the new
    /// keyset) appended to the audit trail in the same commit.
    pub async fn rotate_keys_with_record(
        &self,
        audit_record: Option<AuditEvent>,
    ) -> Result<u32, Error> {
        let recorded = audit_record.is_some();
        let version = self.rotation.start(&self.kek, audit_record).await?;
        self.audit.count_record(recorded);
        Ok(version)
    }

    /// Resumes a rotation that a previous process left unfinished. Call once
    /// after opening, inside the runtime that should run it.
    pub async fn resume_background_jobs(&self) -> Result<(), Error> {
        self.rotation.resume().await
    }

    /// Stops the background jobs after their current chunk (their cursor is
    /// on disk; the next start resumes them) and waits for them.
    pub async fn stop_background_jobs(&self) {
        self.rotation.stop().await;
    }

    /// Waits until no rotation job runs in this process.
    pub async fn rotation_settled(&self) {
        self.rotation.settled().await;
    }

    /// Key versions, the rotation in progress and the last one completed.
    pub async fn key_status(&self) -> Result<KeyStatus, Error> {
        self.rotation.status().await
    }

    /// Creates a namespace.
    pub async fn create_namespace(&self, spec: NamespaceSpec) -> Result<Namespace, Error> {
        self.create_namespace_with_record(spec, None).await
    }

    /// [`Vault::create_namespace`], with `record` (its `namespace` set)
    /// appended to the audit trail in the same commit.
    pub async fn create_namespace_with_record(
        &self,
        spec: NamespaceSpec,
        audit_record: Option<AuditEvent>,
    ) -> Result<Namespace, Error> {
        spec.validate().map_err(Error::InvalidNamespace)?;
        let audited = self.pending_record(audit_record, |e| e.namespace = spec.name.clone());
        let recorded = audited.is_some();
        let ns = Namespace {
            name: spec.name,
            id: 0,
            format: spec.format,
            deterministic: spec.deterministic,
            created_at: now_secs(),
        };
        let template = ns.clone();
        let row: NamespaceRow = Box::new(move |id| encode_namespace(&Namespace { id, ..template }));
        let id = self
            .store
            .create_namespace(ns.name.clone(), row, audited)
            .await?
            .ok_or_else(|| Error::NamespaceExists(ns.name.clone()))?;
        let created = Namespace { id, ..ns };
        self.audit.count_record(recorded);
        self.namespaces.insert(created.clone());
        tracing::info!(namespace = %created.name, format = %created.format.kind, "namespace created");
        Ok(created)
    }

    fn check_batch(&self, items: usize) -> Result<(), Error> {
        if items > self.limits.max_items {
            return Err(Error::TooManyItems {
                got: items,
                limit: self.limits.max_items,
            });
        }
        Ok(())
    }

    fn check_length(&self, ns: &Namespace, item: &str, what: &str) -> Result<(), ItemError> {
        if item.len() > self.limits.max_value_bytes {
            return Err(ItemError::new(
                ItemCode::InvalidArgument,
                &ns.name,
                format_args!(
                    "the {what} is {} bytes; the limit is {}",
                    item.len(),
                    self.limits.max_value_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Tokenizes `values` in `namespace`. The result has one entry per value,
    /// in order; a value that does not fit fails alone.
    pub async fn tokenize<S: AsRef<str>>(
        &self,
        namespace: &str,
        values: &[S],
    ) -> Result<Vec<ItemResult>, Error> {
        self.tokenize_counted(namespace, values, Mint::Always)
            .await
            .map(|(results, _)| results)
    }

    /// The tokens of values already in `namespace`, minting none: a value
    /// not there is an item error `NOT_FOUND`, and nothing is written (the
    /// `lookup` scope). A random namespace's values are never looked up:
    /// each tokenize mints a new token.
    pub async fn look_up<S: AsRef<str>>(
        &self,
        namespace: &str,
        values: &[S],
    ) -> Result<Vec<ItemResult>, Error> {
        self.tokenize_counted(namespace, values, Mint::Never)
            .await
            .map(|(results, _)| results)
    }

    /// Tokenizes `values` in `namespace`, minting as `mint` says, and counts
    /// what it found and made: what the audit trail's tokenize summaries
    /// and the new-mapping quotas are built from.
    pub async fn tokenize_counted<S: AsRef<str>>(
        &self,
        namespace: &str,
        values: &[S],
        mint: Mint<'_>,
    ) -> Result<(Vec<ItemResult>, TokenizeCounts), Error> {
        self.check_batch(values.len())?;
        let mut counts = TokenizeCounts::default();
        let ns = self.namespace(namespace)?;
        let ring = self.keyring();
        let mut results: Vec<Option<ItemResult>> = vec![None; values.len()];
        // (result slot, parsed value, forward keys) of values not in the cache.
        let mut pending: Vec<(usize, Parsed, Option<Lookup>)> = Vec::new();

        for (slot, value) in values.iter().enumerate() {
            let value = value.as_ref();
            let parsed = match self.check_length(&ns, value, "value").and_then(|()| {
                ns.format.parse_value(value).map_err(|e| {
                    ItemError::new(
                        ItemCode::InvalidArgument,
                        &ns.name,
                        format_args!("not a valid {}: {e}", ns.format.kind),
                    )
                })
            }) {
                Ok(parsed) => parsed,
                Err(e) => {
                    results[slot] = Some(Err(e));
                    continue;
                }
            };
            let lookup = ns
                .deterministic
                .then(|| ring.lookup(ns.id, &parsed.canonical));
            if let (Some(lookup), Some(cache)) = (&lookup, &self.cache)
                && let Some(token) = lookup.all().find_map(|key| cache.get(key))
            {
                results[slot] = Some(Ok(ns.format.render(&token, &parsed.shape)));
                counts.hits += 1;
                continue;
            }
            pending.push((slot, parsed, lookup));
        }

        // On storage other nodes share, values of a namespace whose recent
        // values were nearly all new go straight to the insert, whose
        // conflict on the forward entry finds the few stored already:
        // looking each up first as well costs the database one more index
        // search per value, a fifth of its work on a batch of new values
        // (BENCHMARKS.md). Only while this node's keyring holds one keyset,
        // so that a stored value's entry can be under no other key; only
        // for a call that may mint without counting first (no quota, not a
        // look-up client); and only while storage takes writes, so that
        // stored values are answered by a read while it does not.
        let straight = matches!(mint, Mint::Always)
            && ns.deterministic
            && ring.single()
            && self.store.shared()
            && self.store.writable()
            && self.novelty.mostly_new(ns.id);
        if straight && !pending.is_empty() {
            let (minted, existing) = self
                .allocate_counted(&ns, &ring, pending, &mut results, &mut counts)
                .await?;
            self.novelty.record(ns.id, minted + existing, minted);
            return Ok(finish(&ns, results, counts));
        }

        // One multi_get for every deterministic value the cache missed (under
        // each keyset version while a rotation runs).
        let keys: Vec<ForwardKey> = pending
            .iter()
            .filter_map(|(_, _, lookup)| lookup.as_ref())
            .flat_map(|lookup| lookup.all().copied())
            .collect();
        // (A namespace without determinism has nothing to look up, and no
        // round trip is spent on nothing.)
        let found = if keys.is_empty() {
            Vec::new()
        } else {
            self.store.forward_entries(&keys).await?
        };
        let mut found = found.into_iter();
        let mut new_values: Vec<(usize, Parsed, Option<Lookup>)> = Vec::new();
        let looked = pending.len();
        for (slot, parsed, lookup) in pending {
            if let Some(lookup) = &lookup {
                let mut hit = None;
                for key in lookup.all() {
                    if let Some(Some(token)) = found.next()
                        && hit.is_none()
                    {
                        hit = Some((*key, token));
                    }
                }
                if let Some((key, stored)) = hit {
                    results[slot] =
                        Some(self.existing_token(&ns, &ring, key, &stored, &parsed.shape));
                    counts.hits += 1;
                    continue;
                }
            }
            new_values.push((slot, parsed, lookup));
        }
        // Counted once the call has done its writes: a call of new values
        // that fails to write them must not send the next calls straight.
        let novel = (looked as u64, new_values.len() as u64);

        if let Mint::Reserving(reserve) = mint
            && !new_values.is_empty()
        {
            // Repeats of one new value share one mapping.
            let distinct = if ns.deterministic {
                new_values
                    .iter()
                    .filter_map(|(_, _, lookup)| lookup.as_ref().map(|l| l.active))
                    .collect::<std::collections::HashSet<_>>()
                    .len()
            } else {
                new_values.len()
            };
            reserve(distinct as u64)?;
        }
        if matches!(mint, Mint::Never) {
            let why = if ns.deterministic {
                "not in the vault (this client looks values up and never mints a token)"
            } else {
                "this namespace mints a new token for every value, so there is nothing to look up"
            };
            for (slot, _, _) in new_values {
                results[slot] = Some(Err(ItemError::new(ItemCode::NotFound, &ns.name, why)));
            }
        } else if !new_values.is_empty() {
            self.allocate_counted(&ns, &ring, new_values, &mut results, &mut counts)
                .await?;
        }
        if ns.deterministic {
            self.novelty.record(ns.id, novel.0, novel.1);
        }
        Ok(finish(&ns, results, counts))
    }

    fn existing_token(
        &self,
        ns: &Namespace,
        ring: &Keyring,
        key: ForwardKey,
        stored: &[u8],
        shape: &Shape,
    ) -> ItemResult {
        let Some(token) = ring.open_forward(&key, stored) else {
            tracing::error!(
                namespace = %ns.name,
                keyset = key.version(),
                "a forward entry fails its binding check (rewritten, moved or damaged on disk); run `phivault verify`"
            );
            return Err(ItemError::new(
                ItemCode::DataLoss,
                &ns.name,
                "the stored mapping is damaged",
            ));
        };
        if let Some(cache) = &self.cache {
            cache.insert(key, Arc::from(token));
        }
        Ok(ns.format.render(token, shape))
    }

    /// [`allocate`](Self::allocate), its mappings and slots answered by
    /// another call's added to `counts`. A failure makes the namespace look
    /// values up first again: stored ones would have been answered by a
    /// read, which may still work where the insert failed.
    async fn allocate_counted(
        &self,
        ns: &Arc<Namespace>,
        ring: &Arc<Keyring>,
        new_values: Vec<(usize, Parsed, Option<Lookup>)>,
        results: &mut [Option<ItemResult>],
        counts: &mut TokenizeCounts,
    ) -> Result<(u64, u64), Error> {
        let (minted, existing) = self
            .allocate(ns, ring, new_values, results)
            .await
            .inspect_err(|_| self.novelty.forget(ns.id))?;
        counts.minted = minted;
        counts.hits += existing;
        Ok((minted, existing))
    }

    /// Sends values never seen before to storage and fills their slots.
    /// Returns the mappings it created, and the slots answered by a mapping
    /// another call created meanwhile.
    async fn allocate(
        &self,
        ns: &Arc<Namespace>,
        ring: &Arc<Keyring>,
        new_values: Vec<(usize, Parsed, Option<Lookup>)>,
        results: &mut [Option<ItemResult>],
    ) -> Result<(u64, u64), Error> {
        let (mut minted, mut existing) = (0u64, 0u64);
        // Repeats of one new value within the request share one mapping
        // (random namespaces excepted: there every value gets its own token).
        let mut mappings: Vec<NewMapping> = Vec::new();
        let mut slots: Vec<Vec<(usize, Shape)>> = Vec::new();
        let mut by_key: HashMap<ForwardKey, usize> = HashMap::new();
        let now = now_secs();
        for (slot, parsed, forward) in new_values {
            if let Some(&i) = forward.as_ref().and_then(|l| by_key.get(&l.active)) {
                slots[i].push((slot, parsed.shape));
                continue;
            }
            if let Some(lookup) = &forward {
                by_key.insert(lookup.active, mappings.len());
            }
            mappings.push(NewMapping::first(ns, ring, forward, parsed.canonical, now));
            slots.push(vec![(slot, parsed.shape)]);
        }

        // Each round commits what it can; a value whose candidates were all
        // taken comes back, is searched for, and goes again.
        let mut outcomes: Vec<Option<(Allocation, Option<ForwardKey>)>> =
            (0..mappings.len()).map(|_| None).collect();
        let mut round: Vec<(usize, NewMapping)> = mappings.into_iter().enumerate().collect();
        let mut ring = Arc::clone(ring);
        let mut spent = 0u32;
        let mut rounds_left = SEARCH_ROUNDS;
        let mut remakes = 0;
        // The caller looked every value up under this keyring just now, or
        // the keyring has one keyset; after the first round, or under
        // another keyring, storage looks itself.
        let mut older_keys_checked = true;
        while !round.is_empty() && rounds_left > 0 {
            rounds_left -= 1;
            let (indexes, batch): (Vec<usize>, Vec<NewMapping>) = round.into_iter().unzip();
            let values = Arc::new(Round::new(
                Arc::clone(ns),
                Arc::clone(&ring),
                now,
                batch,
                std::mem::replace(&mut older_keys_checked, false),
            ));
            let outcome = self
                .store
                .insert_mappings(Arc::clone(&values) as Arc<dyn NewValues>)
                .await;
            let batch = std::mem::take(&mut *values.mappings());
            let written = match outcome? {
                InsertOutcome::Done(written) => written,
                InsertOutcome::StaleKeyset => {
                    // A rotation started after this request looked: nothing
                    // was written, and nothing ever is under a retiring
                    // keyset. The values go again under the new one. A
                    // rotation cannot start again before a whole pass over
                    // the mappings ends, so this repeats at most once or
                    // twice.
                    remakes += 1;
                    if remakes > 3 {
                        return Err(Error::Store(StoreError::Unavailable(
                            "the active keyset kept changing during the call; retry".into(),
                        )));
                    }
                    rounds_left += 1;
                    // Another node's rotation: read the keysets it made.
                    self.refresh().await?;
                    ring = self.keyring();
                    round = indexes
                        .into_iter()
                        .zip(batch)
                        .map(|(i, mapping)| (i, mapping.remade(ns, &ring, now)))
                        .collect();
                    continue;
                }
            };
            // How full the space is, from the candidates of values that
            // were not stored already: one the insert found stored (by its
            // conflict, having been asked for a candidate) says nothing of
            // it.
            let (mut tried, mut new) = (0u64, 0u64);
            for (mapping, written) in batch.iter().zip(&written) {
                match written {
                    Inserted::Existing { .. } => {}
                    Inserted::New(_) => (tried, new) = (tried + mapping.offers, new + 1),
                    Inserted::Taken => tried += mapping.offers,
                }
            }
            minted += new;
            self.fill.record(&ns.name, tried, tried.saturating_sub(new));
            let mut again = Vec::new();
            for ((i, mapping), written) in indexes.into_iter().zip(batch).zip(written) {
                let stored_under = mapping.forward.as_ref().map(|l| l.active);
                outcomes[i] = match written {
                    Inserted::Existing { key, stored } => {
                        existing += slots[i].len() as u64;
                        let token = values.ring.open_forward(&key, &stored).map(Arc::from);
                        if token.is_none() {
                            tracing::error!(
                                namespace = %ns.name,
                                keyset = key.version(),
                                "a forward entry fails its binding check (rewritten, moved or damaged on disk); run `phivault verify`"
                            );
                        }
                        Some((token.ok_or(ItemCode::DataLoss), Some(key)))
                    }
                    Inserted::New(token) => Some((Ok(token), stored_under)),
                    Inserted::Taken if mapping.failed => {
                        Some((Err(ItemCode::Internal), stored_under))
                    }
                    Inserted::Taken if rounds_left > 0 => {
                        again.push((i, mapping));
                        None
                    }
                    Inserted::Taken => Some((Err(ItemCode::ResourceExhausted), stored_under)),
                };
            }
            ring = self.keyring();
            round = self.search(ns, &ring, again, now, &mut spent).await?;
            round.retain(|(i, mapping)| {
                let searched_out = mapping.candidates.is_empty();
                if searched_out {
                    outcomes[*i] = Some((
                        Err(ItemCode::ResourceExhausted),
                        mapping.forward.as_ref().map(|l| l.active),
                    ));
                }
                !searched_out
            });
        }

        let mut exhausted = 0usize;
        for (outcome, slots) in outcomes.into_iter().zip(slots) {
            let (outcome, stored_under) =
                outcome.unwrap_or((Err(ItemCode::ResourceExhausted), None));
            if let (Ok(token), Some(key), Some(cache)) = (&outcome, stored_under, &self.cache) {
                cache.insert(key, Arc::clone(token));
            }
            exhausted += usize::from(outcome == Err(ItemCode::ResourceExhausted));
            for (slot, shape) in slots {
                results[slot] = Some(match &outcome {
                    Ok(token) => Ok(ns.format.render(token, &shape)),
                    Err(code) => Err(allocation_error(ns, *code)),
                });
            }
        }
        // One line per request, not per value: a request of 10,000 values of a
        // full shape must not write 10,000 lines. Names the namespace (an
        // administrator's name) and a count, never a value.
        if exhausted > 0 {
            tracing::warn!(namespace = %ns.name, values = exhausted, "no free token left for values of these shapes");
        }
        Ok((minted, existing))
    }

    /// Finds up to [`SEARCH_CANDIDATES`] free tokens for each value whose
    /// candidates were all taken. Candidates are drawn on a background thread,
    /// a chunk per value at a time (drawing is the expensive part of a nearly
    /// full token space: it must hold up no async worker, and yields the
    /// cores to reveals, see `background`), and each chunk of
    /// every value is checked in one storage read. A value left with no
    /// candidate has exhausted its attempts, or the request its budget.
    async fn search(
        &self,
        ns: &Arc<Namespace>,
        ring: &Arc<Keyring>,
        mut round: Vec<(usize, NewMapping)>,
        now: u64,
        spent: &mut u32,
    ) -> Result<Vec<(usize, NewMapping)>, Error> {
        if round.is_empty() {
            return Ok(round);
        }
        let keyset_version = ring.active.version();
        for (_, mapping) in &mut round {
            mapping.candidates.clear();
            if mapping
                .forward
                .as_ref()
                .is_some_and(|l| l.active.version() != keyset_version)
            {
                // A rotation started since this value was last looked at:
                // its forward key, and the attempts drawn so far, belong to
                // the retiring keyset.
                mapping.forward = Some(ring.lookup(ns.id, &mapping.canonical));
                mapping.next_attempt = 0;
            }
        }
        let (mut tried, mut taken) = (0u64, 0u64);
        // Where the next pass starts: passes go round the values, so that
        // when the budget runs out every value has had its turns.
        let mut start = 0usize;
        loop {
            // Each pass draws a chunk for every value still short, at most
            // SEARCH_PASS in all: one storage read per pass, of bounded size.
            let left = SEARCH_BUDGET.saturating_sub(*spent).min(SEARCH_PASS);
            let job_ns = Arc::clone(ns);
            let job_ring = Arc::clone(ring);
            // Each value still short of candidates draws its next chunk.
            let (back, drawn, used, next_start) = crate::background::run(move || {
                let keyset = &job_ring.active;
                let mut left = left;
                let mut used = 0u32;
                let mut next_start = start;
                let mut drawn: Vec<(usize, String)> = Vec::new();
                let count = round.len();
                for position in (0..count).map(|i| (start + i) % count) {
                    let mapping = &mut round[position].1;
                    if left == 0 {
                        break;
                    }
                    if mapping.candidates.len() >= SEARCH_CANDIDATES
                        || mapping.next_attempt >= mapping.attempts
                    {
                        continue;
                    }
                    next_start = (position + 1) % count;
                    let end = mapping
                        .next_attempt
                        .saturating_add(SEARCH_CHUNK.min(left))
                        .min(mapping.attempts);
                    left -= end - mapping.next_attempt;
                    used += end - mapping.next_attempt;
                    drawn.extend(
                        (mapping.next_attempt..end)
                            .filter_map(|attempt| {
                                candidate(&job_ns, keyset, &mapping.canonical, attempt)
                            })
                            .map(|token| (position, token)),
                    );
                    mapping.next_attempt = end;
                }
                (round, drawn, used, next_start)
            })
            .await
            .map_err(|_| Error::Store(StoreError::JobPanicked))?;
            round = back;
            start = next_start;
            *spent = spent.saturating_add(used);
            if used == 0 {
                break;
            }
            let tokens: Vec<String> = drawn.iter().map(|(_, t)| t.clone()).collect();
            let present = self.store.tokens_taken(ns.id, &tokens).await?;
            for ((position, token), present) in drawn.into_iter().zip(present) {
                tried += 1;
                let mapping = &mut round[position].1;
                if present {
                    taken += 1;
                } else if mapping.candidates.len() < SEARCH_CANDIDATES
                    && !mapping.candidates.iter().any(|c| c.token == token)
                {
                    mapping.candidates.push_back(Drawn {
                        token,
                        row: None,
                        bound: None,
                    });
                }
            }
        }
        self.fill.record(&ns.name, tried, taken);
        for (_, mapping) in &mut round {
            if let Some(first) = mapping.candidates.front_mut() {
                first.row = seal_row(ns, &ring.active, &first.token, &mapping.canonical, now).ok();
                first.bound = mapping
                    .forward
                    .as_ref()
                    .map(|l| l.active.bind(ring.active.prf(), first.token.as_bytes()));
            }
        }
        Ok(round)
    }

    /// Detokenizes `tokens` in `namespace`: each value is printed in the shape
    /// of the token asked for. A token that is unknown, malformed or fails its
    /// integrity check fails alone.
    pub async fn detokenize<S: AsRef<str>>(
        &self,
        namespace: &str,
        tokens: &[S],
    ) -> Result<Vec<ItemResult>, Error> {
        Ok(self.reveal_tokens(namespace, tokens, false).await?.0)
    }

    /// [`Vault::detokenize`], and each token's audit mark (see
    /// [`Vault::token_mark`]), taken from the form it was parsed into here
    /// rather than parsing every token a second time.
    pub async fn detokenize_marked<S: AsRef<str>>(
        &self,
        namespace: &str,
        tokens: &[S],
    ) -> Result<(Vec<ItemResult>, Vec<[u8; 32]>), Error> {
        self.reveal_tokens(namespace, tokens, true).await
    }

    async fn reveal_tokens<S: AsRef<str>>(
        &self,
        namespace: &str,
        tokens: &[S],
        mark: bool,
    ) -> Result<(Vec<ItemResult>, Vec<[u8; 32]>), Error> {
        self.check_batch(tokens.len())?;
        let ns = self.namespace(namespace)?;
        let mut results: Vec<Option<ItemResult>> = vec![None; tokens.len()];
        let mut marks = Vec::with_capacity(if mark { tokens.len() } else { 0 });
        let mut lookups: Vec<(usize, Parsed)> = Vec::with_capacity(tokens.len());
        for (slot, token) in tokens.iter().enumerate() {
            let token = token.as_ref();
            let parsed = self.check_length(&ns, token, "token").and_then(|()| {
                ns.format.parse_token(token).map_err(|e| {
                    ItemError::new(
                        ItemCode::InvalidArgument,
                        &ns.name,
                        format_args!("not a {} token: {e}", ns.format.kind),
                    )
                })
            });
            if mark {
                let canonical = parsed.as_ref().map_or(token, |p| p.canonical.as_str());
                marks.push(self.audit.mark(&ns.name, canonical));
            }
            match parsed {
                Ok(parsed) => lookups.push((slot, parsed)),
                Err(e) => results[slot] = Some(Err(e)),
            }
        }
        let tokens: Vec<&str> = lookups.iter().map(|(_, p)| p.canonical.as_str()).collect();
        let rows = self.store.reverse_rows(ns.id, &tokens).await?;
        let ring = self.keyring();
        // Rows read just before a rotation moved them, sealed under a keyset
        // destroyed since: read once more, now under the new keyset.
        let mut stale: Vec<(usize, &Parsed)> = Vec::new();
        for ((slot, parsed), row) in lookups.iter().zip(rows) {
            results[*slot] = Some(match row {
                None => Err(not_found(&ns)),
                Some(row) => match reveal(&ring, &ns, parsed, &row) {
                    Revealed::Value(result) => result,
                    Revealed::UnknownKeyset => {
                        stale.push((*slot, parsed));
                        continue;
                    }
                },
            });
        }
        if !stale.is_empty() {
            // Sealed under a keyset this node has not read yet (another
            // node's rotation), or one destroyed since the read.
            self.refresh().await?;
            let ring = self.keyring();
            let tokens: Vec<&str> = stale.iter().map(|(_, p)| p.canonical.as_str()).collect();
            let rows = self.store.reverse_rows(ns.id, &tokens).await?;
            for ((slot, parsed), row) in stale.into_iter().zip(rows) {
                results[slot] = Some(match row {
                    None => Err(not_found(&ns)),
                    Some(row) => match reveal(&ring, &ns, parsed, &row) {
                        Revealed::Value(result) => result,
                        Revealed::UnknownKeyset => Err(damaged(&ns)),
                    },
                });
            }
        }
        let results = results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(internal(&ns))))
            .collect();
        Ok((results, marks))
    }
}

/// What opening a reverse row gave.
enum Revealed {
    Value(ItemResult),
    /// Sealed under a keyset this keyring lacks.
    UnknownKeyset,
}

fn not_found(ns: &Namespace) -> ItemError {
    ItemError::new(ItemCode::NotFound, &ns.name, "no such token")
}

fn damaged(ns: &Namespace) -> ItemError {
    // Logged without the token: the namespace is enough to start from, and
    // `phivault verify` finds the row.
    tracing::error!(namespace = %ns.name, "a reverse row failed its integrity check");
    ItemError::new(
        ItemCode::DataLoss,
        &ns.name,
        "the stored mapping failed its integrity check",
    )
}

fn reveal(ring: &Keyring, ns: &Namespace, token: &Parsed, row: &[u8]) -> Revealed {
    let Some(row) = ReverseRow::decode(row) else {
        return Revealed::Value(Err(damaged(ns)));
    };
    let Some(keyset) = ring.by_version.get(&row.version) else {
        return Revealed::UnknownKeyset;
    };
    let ad = reverse_ad(ns.id, &token.canonical, row.version);
    let Ok(plain) = keyset.enc().open(&ad.each(), &row.ciphertext) else {
        return Revealed::Value(Err(damaged(ns)));
    };
    Revealed::Value(match std::str::from_utf8(&plain) {
        Ok(value) => Ok(ns.format.render(value, &token.shape)),
        Err(_) => Err(damaged(ns)),
    })
}

/// Masks a revealed value for `detokenize-masked`: all but the last 4
/// characters become `*`, and never more than half of them stay visible, so
/// a short value (a 3-letter name) is not revealed whole.
pub fn mask(value: &str) -> String {
    let len = value.chars().count();
    let visible = 4.min(len / 2);
    value
        .chars()
        .enumerate()
        .map(|(i, c)| if i + visible < len { '*' } else { c })
        .collect()
}

fn internal(ns: &Namespace) -> ItemError {
    ItemError::new(ItemCode::Internal, &ns.name, "internal error")
}

fn allocation_error(ns: &Namespace, code: ItemCode) -> ItemError {
    match code {
        ItemCode::ResourceExhausted => ItemError::new(
            code,
            &ns.name,
            "no free token is left for a value of this shape (the format's token space is exhausted)",
        ),
        _ => internal(ns),
    }
}

/// Every namespace as stored.
async fn read_namespaces(store: &dyn Storage) -> Result<Vec<Namespace>, Error> {
    store
        .namespace_rows()
        .await?
        .iter()
        .map(|row| serde_json::from_slice(row).map_err(|_| Error::Corrupt("namespace definition")))
        .collect()
}

/// Every client as stored, as the table that authenticates calls.
async fn read_clients(store: &dyn Storage) -> Result<ClientTable, Error> {
    let mut clients = ClientTable::default();
    for (id, record) in store.client_rows().await? {
        clients
            .put(&id, &record)
            .map_err(|_| Error::Corrupt("client scopes"))?;
    }
    Ok(clients)
}

fn encode_namespace(ns: &Namespace) -> Vec<u8> {
    // Serialising a struct of strings, integers and enums cannot fail.
    serde_json::to_vec(ns).unwrap_or_default()
}

/// The `attempt`-th candidate token of a value: from the PRF stream in a
/// deterministic namespace, from the OS RNG in a random one.
fn candidate(ns: &Namespace, keyset: &Keyset, canonical: &str, attempt: u32) -> Option<String> {
    if ns.deterministic {
        draw(
            ns,
            canonical,
            &mut keyset
                .prf()
                .token_stream(ns.id, canonical.as_bytes(), attempt),
        )
    } else {
        draw(ns, canonical, &mut TokenRng::os())
    }
}

fn draw(ns: &Namespace, canonical: &str, rng: &mut impl SlotRng) -> Option<String> {
    ns.format
        .generate(canonical, rng)
        .filter(|token| token != canonical)
}

fn seal_row(
    ns: &Namespace,
    keyset: &Keyset,
    token: &str,
    canonical: &str,
    now: u64,
) -> Result<Vec<u8>, CryptoError> {
    let ad = reverse_ad(ns.id, token, keyset.version());
    let ciphertext = keyset.enc().seal(&ad.each(), canonical.as_bytes())?;
    Ok(ReverseRow {
        version: keyset.version(),
        created_at: now,
        ciphertext,
    }
    .encode())
}

/// The token a new value received, or why it received none.
type Allocation = Result<Arc<str>, ItemCode>;

/// How full each namespace's token space looks: of the candidate tokens
/// checked since start (by the writer, and by collision searches), how many
/// were taken. Candidates are drawn uniformly, so this estimates the share of
/// the space that is used for the shapes being tokenized; near 1, new values
/// of those shapes are about to fail with `RESOURCE_EXHAUSTED`.
#[derive(Default)]
pub(crate) struct FillStats(std::sync::Mutex<HashMap<String, (u64, u64)>>);

/// Recent values weigh half as much after this many more of a namespace.
const NOVELTY_HALF_LIFE: f64 = 1000.0;
/// The share of recent values that were new above which a call skips its
/// look-up: at 0.9, about one value in ten, on average over recent calls,
/// has its first candidate drawn and sealed for nothing (a single call of
/// stored values seals them all, and turns the namespace back).
const NOVELTY_STRAIGHT: f64 = 0.9;
/// Values (decayed) a namespace must have brought before its share counts.
const NOVELTY_EVIDENCE: f64 = 64.0;

/// How many of each namespace's recent deterministic values were new to
/// the vault, weighted by recency: whether looking values up before
/// inserting them is likely to find any (see `tokenize_counted`). A node
/// knows only the calls it served, which is what its choice is about.
#[derive(Default)]
struct Novelty(std::sync::Mutex<HashMap<u32, (f64, f64)>>);

impl Novelty {
    fn mostly_new(&self, namespace: u32) -> bool {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&namespace)
            .is_some_and(|&(seen, new)| seen >= NOVELTY_EVIDENCE && new >= seen * NOVELTY_STRAIGHT)
    }

    /// `seen` values of a call were looked for (or inserted), `new` of
    /// them were not stored.
    fn record(&self, namespace: u32, seen: u64, new: u64) {
        if seen == 0 {
            return;
        }
        let decay = 0.5f64.powf(seen as f64 / NOVELTY_HALF_LIFE);
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (weight, fresh) = map.entry(namespace).or_default();
        *weight = *weight * decay + seen as f64;
        *fresh = *fresh * decay + new as f64;
    }

    /// Starts the namespace over: its next calls look first.
    fn forget(&self, namespace: u32) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&namespace);
    }
}

/// A tokenize call's answers, every slot filled, and its counts completed
/// with the items that failed.
fn finish(
    ns: &Namespace,
    results: Vec<Option<ItemResult>>,
    mut counts: TokenizeCounts,
) -> (Vec<ItemResult>, TokenizeCounts) {
    let results: Vec<ItemResult> = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(internal(ns))))
        .collect();
    for result in &results {
        match result {
            Err(e) if e.code == ItemCode::NotFound => counts.not_found += 1,
            Err(_) => counts.failed += 1,
            Ok(_) => {}
        }
    }
    (results, counts)
}

impl FillStats {
    fn record(&self, namespace: &str, tried: u64, taken: u64) {
        if tried == 0 {
            return;
        }
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Runs in every writer job that allocates: allocate the key only the
        // first time a namespace is seen.
        let entry = match map.get_mut(namespace) {
            Some(entry) => entry,
            None => map.entry(namespace.to_owned()).or_default(),
        };
        entry.0 = entry.0.saturating_add(tried);
        entry.1 = entry.1.saturating_add(taken);
    }

    fn ratios(&self) -> Vec<(String, f64)> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .map(|(ns, &(tried, taken))| (ns.clone(), taken as f64 / tried as f64))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Novelty;

    #[test]
    fn a_namespace_goes_straight_only_while_its_values_are_new() {
        let novelty = Novelty::default();
        assert!(!novelty.mostly_new(1), "nothing seen: look first");
        novelty.record(1, 10, 10);
        assert!(!novelty.mostly_new(1), "too few values to tell");
        novelty.record(1, 1000, 1000);
        assert!(novelty.mostly_new(1));
        assert!(!novelty.mostly_new(2), "namespaces apart");
        // A batch of values stored already turns it back at once.
        novelty.record(1, 1000, 0);
        assert!(!novelty.mostly_new(1));
        // New values again win it back as the old ones fade.
        for _ in 0..4 {
            novelty.record(1, 1000, 1000);
        }
        assert!(novelty.mostly_new(1));
        // One value in five stored keeps every call looking.
        for _ in 0..10 {
            novelty.record(1, 1000, 800);
        }
        assert!(!novelty.mostly_new(1));
        novelty.record(1, 1000, 1000);
        novelty.forget(1);
        assert!(!novelty.mostly_new(1), "a failed insert starts it over");
    }
}
