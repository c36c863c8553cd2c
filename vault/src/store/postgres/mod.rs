//! The PostgreSQL backend (DESIGN.md §9): any number of stateless vault
//! nodes over one PostgreSQL, made highly available by Patroni and etcd.
//!
//! Each operation of the boundary is one statement where it can be — a
//! batch of mappings is one `INSERT … ON CONFLICT DO NOTHING` over arrays,
//! sorted by blind index so that overlapping batches of many nodes never
//! deadlock; a rotation step is one statement whose data-modifying parts all
//! depend on the rotation record being the one expected — and a short
//! transaction where a change must be read first (registry changes with
//! their audit record, a rotation's start, rekey).
//!
//! Correctness across nodes rests on the database, never on a node's
//! memory: uniqueness of tokens and of forward entries is PostgreSQL's,
//! conditional updates order the rotation job's steps, a lease row on the
//! database's clock with a fencing counter says which node runs a job, and
//! every insert takes a share lock on the active keyset's row, so that no
//! mapping is written under a keyset a concurrent rotation retired.
//!
//! The audit chain is linked here, on the node, because the chain head is
//! tagged under a key PostgreSQL never sees: a node keeps the head it last
//! committed and moves it with a conditional update in the same statement
//! as the records; another node having moved it first makes the update
//! match nothing, and the node reads the head again and relinks.

mod audit;
mod mappings;
mod portable;
mod registry;
mod rotation;
mod schema;
pub mod target;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, Row, types::ToSql};

use super::integrity::RowMac;
use super::lifecycle::{BackupFinish, ForwardRow, Lifecycle, WriterStats};
use super::meta::{Genesis, MasterChange, MasterRecord, MetaStore, RowKey};
use super::{Lease, LeaseStore, SharedUsage, StoreError, StoreFuture, Usage, schema as rows};
pub use mappings::INSERT as INSERT_MAPPINGS;
pub use target::{PgTarget, PgTls, TargetError};

/// `meta` rows, named as the RocksDB backend names them so that a row's
/// tag means the same in both.
pub(super) mod names {
    pub(crate) const FORMAT_VERSION: &str = "format_version";
    pub(crate) const KDF: &str = "kdf";
    pub(crate) const KEK_CHECK: &str = "kek_check";
    pub(crate) const ACTIVE_KEYSET: &str = "active_keyset";
    pub(crate) const NEXT_NAMESPACE_ID: &str = "next_namespace_id";
    pub(crate) const ROTATION: &str = "rotation";
    pub(crate) const LAST_ROTATION: &str = "last_rotation";
    pub(crate) const AUDIT_KEY: &str = "audit_key";
    pub(crate) const WRITE_PROBE: &str = "write_probe";
    /// The `meta` rows that carry a tag.
    pub(crate) const TAGGED: [&str; 4] =
        [ACTIVE_KEYSET, NEXT_NAMESPACE_ID, ROTATION, LAST_ROTATION];
}

/// How long a node waits for a pooled connection, or for a new one, before
/// the request fails `UNAVAILABLE` (a failover takes ~11 s on this kind of
/// machine, §9: callers retry).
const POOL_TIMEOUT: Duration = Duration::from_secs(10);

/// A vault in PostgreSQL.
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    target: PgTarget,
    /// Tags protected rows once the vault is unsealed.
    mac: RwLock<Option<Arc<RowMac>>>,
    /// The audit lanes this node appends to, claimed on the first append.
    lanes: tokio::sync::OnceCell<audit::Lanes>,
    /// This process's name on leases: host, process id and a random part.
    holder: String,
    stats: Mutex<WriterStats>,
    /// Whether the last write reached the database.
    healthy: AtomicBool,
    closed: AtomicBool,
    read_only: bool,
}

/// A failed step of an operation: PostgreSQL's error (the connection may be
/// gone) or the vault's.
pub(super) enum Fail {
    Pg(tokio_postgres::Error),
    Store(StoreError),
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Pg(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// PostgreSQL's error in the vault's terms. The text is the SQLSTATE and
/// the server's message, never its `DETAIL`, which quotes key values (a
/// token, a blind index).
fn pg_error(e: &tokio_postgres::Error) -> StoreError {
    StoreError::Unavailable(pg_reason(e))
}

/// PostgreSQL's reason for `e`, with the cause of a failed connection (a
/// refused port, a TLS failure), never a `DETAIL`.
fn pg_reason(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "PostgreSQL refused an operation ({}): {}",
            db.code().code(),
            db.message()
        ),
        None if e.is_closed() => "the PostgreSQL connection closed".into(),
        None => match std::error::Error::source(e) {
            Some(cause) if e.as_db_error().is_none() => format!("PostgreSQL: {e}: {cause}"),
            _ => format!("PostgreSQL: {e}"),
        },
    }
}

/// Whether a connection that failed with `e` must not be used again: it is
/// closed, or it reaches a server that no longer takes writes (a demoted
/// primary after a failover) or is shutting down.
fn connection_is_spent(e: &tokio_postgres::Error) -> bool {
    e.is_closed()
        || e.code().is_some_and(|code| {
            *code == SqlState::READ_ONLY_SQL_TRANSACTION
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || code.code().starts_with("08")
        })
}

/// The answer to a batch read, in the order asked: each row's value (made
/// by `value`) at the `WITH ORDINALITY` position in its column 0 (from 1),
/// `missing` where no row came back.
fn by_position<T: Clone>(
    rows: &[Row],
    len: usize,
    missing: T,
    value: impl Fn(&Row) -> T,
) -> Vec<T> {
    let mut answer = vec![missing; len];
    for row in rows {
        let position: i64 = row.get(0);
        if let Some(slot) = usize::try_from(position - 1)
            .ok()
            .and_then(|i| answer.get_mut(i))
        {
            *slot = value(row);
        }
    }
    answer
}

/// A forward entry's key (`ForwardKey`'s bytes) from the columns that hold
/// it: `namespace ‖ keyset ‖ blind index`.
fn forward_key(namespace: u32, keyset: u32, blind: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + blind.len());
    key.extend_from_slice(&namespace.to_be_bytes());
    key.extend_from_slice(&keyset.to_be_bytes());
    key.extend_from_slice(blind);
    key
}

fn u32_to_i32(n: u32) -> i32 {
    i32::from_ne_bytes(n.to_ne_bytes())
}

fn i32_to_u32(n: i32) -> u32 {
    u32::from_ne_bytes(n.to_ne_bytes())
}

fn u64_to_i64(n: u64) -> i64 {
    i64::from_ne_bytes(n.to_ne_bytes())
}

fn i64_to_u64(n: i64) -> u64 {
    u64::from_ne_bytes(n.to_ne_bytes())
}

fn rustls_config(root_cert: &Path) -> Result<rustls::ClientConfig, StoreError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let unreadable = |why: String| {
        StoreError::Unavailable(format!(
            "cannot read the PostgreSQL CA file {}: {why}",
            root_cert.display()
        ))
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(root_cert).map_err(|e| unreadable(e.to_string()))? {
        roots
            .add(cert.map_err(|e| unreadable(e.to_string()))?)
            .map_err(|e| unreadable(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(unreadable("it holds no certificate".into()));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| unreadable(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl PgStore {
    /// A store over `target`; connects on first use.
    fn new(target: &PgTarget, read_only: bool) -> Result<Self, StoreError> {
        let mut config = target.config.clone();
        if read_only {
            // Writes are refused by the server; any member will do, a
            // standby included (a multi-host string asking for a read-write
            // session would refuse every member of a read-only session).
            config.options("-c default_transaction_read_only=on");
            config.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::Any);
        }
        let manager_config = ManagerConfig {
            // A connection broken by a failover is dropped when an operation
            // fails on it (`Inner::settle`); checking each one out with a
            // query would cost a round trip per operation.
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match target.tls() {
            PgTls::Disable => Manager::from_config(config, NoTls, manager_config),
            PgTls::VerifyFull { root_cert } => Manager::from_config(
                config,
                tokio_postgres_rustls::MakeRustlsConnect::new(rustls_config(root_cert)?),
                manager_config,
            ),
        };
        let pool = Pool::builder(manager)
            .max_size(target.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Unavailable(format!("PostgreSQL pool: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                target: target.clone(),
                mac: RwLock::new(None),
                lanes: tokio::sync::OnceCell::new(),
                holder: super::holder_name(),
                stats: Mutex::new(WriterStats::default()),
                healthy: AtomicBool::new(true),
                closed: AtomicBool::new(false),
                read_only,
            }),
        })
    }

    /// Opens the vault at `target` for reading and writing, applying the
    /// schema migrations it lacks.
    pub async fn open(target: &PgTarget) -> Result<Self, StoreError> {
        let store = Self::new(target, false)?;
        store.migrate().await?;
        if !store.vault_exists().await? {
            return Err(StoreError::Unavailable(format!(
                "no vault in {target}: run `phivault init` first"
            )));
        }
        Ok(store)
    }

    /// Opens the vault at `target` for reading only: writes are refused by
    /// the database itself.
    pub async fn open_read_only(target: &PgTarget) -> Result<Self, StoreError> {
        let store = Self::new(target, true)?;
        store.check_version().await?;
        Ok(store)
    }

    /// Creates the schema and the vault's first commit; fails if a vault
    /// is there already.
    pub async fn create(
        target: &PgTarget,
        row_key: RowKey,
        genesis: Genesis,
    ) -> Result<Self, StoreError> {
        let store = Self::new(target, false)?;
        store.migrate().await?;
        store.set_mac(RowMac::new(row_key.bytes()));
        store.genesis(genesis).await?;
        Ok(store)
    }

    /// Whether a vault exists at `target` (false when the database has no
    /// schema of ours).
    pub async fn exists(target: &PgTarget) -> Result<bool, StoreError> {
        let store = Self::new(target, true)?;
        let found = store.vault_exists().await;
        store.inner.pool.close();
        found
    }

    /// The unseal records, read without writing anything.
    pub async fn read_master_record(target: &PgTarget) -> Result<MasterRecord, StoreError> {
        let store = Self::new(target, true)?;
        let read = async {
            Ok(MasterRecord {
                format_version: store.meta(names::FORMAT_VERSION).await?,
                kdf: store.meta(names::KDF).await?,
                kek_check: store.meta(names::KEK_CHECK).await?,
            })
        }
        .await;
        store.inner.pool.close();
        read
    }

    async fn vault_exists(&self) -> Result<bool, StoreError> {
        let client = self.inner.client().await?;
        let found = client
            .query_opt(
                "SELECT 1 FROM phivault.meta WHERE name = $1",
                &[&names::FORMAT_VERSION],
            )
            .await;
        match found {
            Ok(row) => Ok(row.is_some()),
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => Ok(false),
            Err(e) => Err(self.inner.settle_err(client, e)),
        }
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.inner.client().await?;
        let done = async {
            let latest = i32::try_from(schema::MIGRATIONS.len()).unwrap_or(i32::MAX);
            let tx = client.transaction().await?;
            tx.batch_execute(schema::PREPARE).await?;
            let current: i32 = tx
                .query_opt(schema::READ_VERSION, &[])
                .await?
                .map_or(0, |row| row.get(0));
            if current > latest {
                return Err(Fail::Store(StoreError::SchemaTooNew {
                    found: i32_to_u32(current),
                    supported: i32_to_u32(latest),
                }));
            }
            for (version, migration) in (1..)
                .zip(schema::MIGRATIONS)
                .skip(usize::try_from(current).unwrap_or(0))
            {
                tx.batch_execute(migration).await?;
                tx.execute(schema::WRITE_VERSION, &[&version]).await?;
                tracing::info!(version, "PostgreSQL schema migrated");
            }
            tx.commit().await?;
            Ok(())
        }
        .await;
        self.inner.settle(client, done)
    }

    async fn check_version(&self) -> Result<(), StoreError> {
        let client = self.inner.client().await?;
        let found = client.query_opt(schema::READ_VERSION, &[]).await;
        let version: i32 = match found {
            Ok(row) => row.map_or(0, |row| row.get(0)),
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => 0,
            Err(e) => return Err(self.inner.settle_err(client, e)),
        };
        let latest = i32::try_from(schema::MIGRATIONS.len()).unwrap_or(i32::MAX);
        if version > latest {
            return Err(StoreError::SchemaTooNew {
                found: i32_to_u32(version),
                supported: i32_to_u32(latest),
            });
        }
        if version < latest {
            return Err(StoreError::Unavailable(format!(
                "the PostgreSQL schema is at version {version}, older than this binary's {latest}: start `phivault serve` once to migrate it"
            )));
        }
        Ok(())
    }

    async fn genesis(&self, genesis: Genesis) -> Result<(), StoreError> {
        let Genesis {
            kdf,
            kek_check,
            keyset,
            audit_key,
            namespaces,
        } = genesis;
        let next_id = u32::try_from(namespaces.len() + 1).unwrap_or(u32::MAX);
        let mut client = self.inner.client().await?;
        let done = async {
            let tx = client.transaction().await?;
            let fresh = tx
                .execute(
                    "INSERT INTO phivault.meta (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[
                        &names::FORMAT_VERSION,
                        &rows::u32_bytes(rows::FORMAT_VERSION).as_slice(),
                    ],
                )
                .await?;
            if fresh == 0 {
                return Err(Fail::Store(StoreError::AlreadyExists(self.inner.target.to_string())));
            }
            let meta: [(&str, Vec<u8>); 5] = [
                (names::KDF, kdf),
                (names::KEK_CHECK, kek_check),
                (names::AUDIT_KEY, audit_key),
                (
                    names::ACTIVE_KEYSET,
                    self.seal_meta(names::ACTIVE_KEYSET, &rows::u32_bytes(1)),
                ),
                (
                    names::NEXT_NAMESPACE_ID,
                    self.seal_meta(names::NEXT_NAMESPACE_ID, &rows::u32_bytes(next_id)),
                ),
            ];
            for (name, value) in &meta {
                tx.execute(
                    "INSERT INTO phivault.meta (name, value) VALUES ($1, $2)",
                    &[name, value],
                )
                .await?;
            }
            tx.execute(
                "INSERT INTO phivault.keysets (version, stored) VALUES (1, $1)",
                &[&self.seal_keyset(1, &keyset)],
            )
            .await?;
            for (name, row) in &namespaces {
                tx.execute(
                    "INSERT INTO phivault.namespaces (name, stored) VALUES ($1, $2)",
                    &[name, &self.seal("namespaces", name.as_bytes(), row)],
                )
                .await?;
            }
            tx.execute(
                "INSERT INTO phivault.audit_lanes (lane, head) VALUES (0, $1)",
                &[&self.seal_head(0, &rows::AuditHead::default())],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        }
        .await;
        self.inner.settle(client, done)
    }

    fn set_mac(&self, mac: RowMac) {
        *self.inner.mac.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(mac));
    }

    fn mac(&self) -> Option<Arc<RowMac>> {
        self.inner
            .mac
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `value` as row `key` of `table` stores it: tagged once the vault is
    /// unsealed.
    pub(super) fn seal(&self, table: &str, key: &[u8], value: &[u8]) -> Vec<u8> {
        match self.mac() {
            Some(mac) => mac.seal(table, key, value),
            None => value.to_vec(),
        }
    }

    /// A stored row's value, its tag checked.
    pub(super) fn open_row(
        &self,
        table: &'static str,
        key: &[u8],
        stored: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        match self.mac() {
            Some(mac) => mac.open(table, key, stored),
            None => Ok(stored.to_vec()),
        }
    }

    pub(super) fn seal_meta(&self, name: &str, value: &[u8]) -> Vec<u8> {
        self.seal("meta", name.as_bytes(), value)
    }

    pub(super) fn seal_keyset(&self, version: u32, row: &[u8]) -> Vec<u8> {
        self.seal("keys", &rows::u32_bytes(version), row)
    }

    pub(super) fn seal_head(&self, lane: i32, head: &rows::AuditHead) -> Vec<u8> {
        self.seal(
            "audit_lanes",
            &rows::u32_bytes(i32_to_u32(lane)),
            &head.encode(),
        )
    }

    /// A `meta` row's value, its tag checked if it carries one.
    pub(super) async fn meta(&self, name: &'static str) -> Result<Option<Vec<u8>>, StoreError> {
        let rows = self
            .inner
            .query("SELECT value FROM phivault.meta WHERE name = $1", &[&name])
            .await?;
        rows.first()
            .map(|row| self.open_meta(name, row.get(0)))
            .transpose()
    }

    pub(super) fn open_meta(
        &self,
        name: &'static str,
        stored: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        if names::TAGGED.contains(&name) {
            self.open_row("meta", name.as_bytes(), stored)
        } else {
            Ok(stored.to_vec())
        }
    }

    /// The tagged rows of every table, their tags checked: what rekey tags
    /// again.
    async fn tagged_rows(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
    ) -> Result<Vec<Tagged>, Fail> {
        let mut found = Vec::new();
        for row in tx
            .query(
                "SELECT name, value FROM phivault.meta WHERE name = ANY($1) FOR UPDATE",
                &[&names::TAGGED.as_slice()],
            )
            .await?
        {
            let name: String = row.get(0);
            let value = self.open_row("meta", name.as_bytes(), row.get(1))?;
            found.push(Tagged::Meta(name, value));
        }
        for row in tx
            .query(
                "SELECT version, stored FROM phivault.keysets FOR UPDATE",
                &[],
            )
            .await?
        {
            let version: i32 = row.get(0);
            let value = self.open_row("keys", &rows::u32_bytes(i32_to_u32(version)), row.get(1))?;
            found.push(Tagged::Keyset(version, value));
        }
        for row in tx
            .query(
                "SELECT name, stored FROM phivault.namespaces FOR UPDATE",
                &[],
            )
            .await?
        {
            let name: String = row.get(0);
            let value = self.open_row("namespaces", name.as_bytes(), row.get(1))?;
            found.push(Tagged::Namespace(name, value));
        }
        for row in tx
            .query("SELECT id, stored FROM phivault.clients FOR UPDATE", &[])
            .await?
        {
            let id: String = row.get(0);
            let value = self.open_row("clients", id.as_bytes(), row.get(1))?;
            found.push(Tagged::Client(id, value));
        }
        for row in tx
            .query(
                "SELECT lane, head FROM phivault.audit_lanes FOR UPDATE",
                &[],
            )
            .await?
        {
            let lane: i32 = row.get(0);
            let value = self.open_row(
                "audit_lanes",
                &rows::u32_bytes(i32_to_u32(lane)),
                row.get(1),
            )?;
            found.push(Tagged::Lane(lane, value));
        }
        Ok(found)
    }
}

/// A tagged row, by table and key, with its value.
enum Tagged {
    Meta(String, Vec<u8>),
    Keyset(i32, Vec<u8>),
    Namespace(String, Vec<u8>),
    Client(String, Vec<u8>),
    Lane(i32, Vec<u8>),
}

impl Tagged {
    /// Writes the row tagged under `mac`, its value replaced by `keysets`'
    /// for a keyset found there.
    async fn rewrite(
        self,
        tx: &deadpool_postgres::Transaction<'_>,
        mac: &RowMac,
        keysets: &mut std::collections::HashMap<u32, Vec<u8>>,
    ) -> Result<(), tokio_postgres::Error> {
        match self {
            Self::Meta(name, value) => {
                let sealed = mac.seal("meta", name.as_bytes(), &value);
                tx.execute(
                    "UPDATE phivault.meta SET value = $2 WHERE name = $1",
                    &[&name, &sealed],
                )
                .await?;
            }
            Self::Keyset(version, value) => {
                let value = keysets.remove(&i32_to_u32(version)).unwrap_or(value);
                let sealed = mac.seal("keys", &rows::u32_bytes(i32_to_u32(version)), &value);
                tx.execute(
                    "UPDATE phivault.keysets SET stored = $2 WHERE version = $1",
                    &[&version, &sealed],
                )
                .await?;
            }
            Self::Namespace(name, value) => {
                let sealed = mac.seal("namespaces", name.as_bytes(), &value);
                tx.execute(
                    "UPDATE phivault.namespaces SET stored = $2 WHERE name = $1",
                    &[&name, &sealed],
                )
                .await?;
            }
            Self::Client(id, value) => {
                let sealed = mac.seal("clients", id.as_bytes(), &value);
                tx.execute(
                    "UPDATE phivault.clients SET stored = $2 WHERE id = $1",
                    &[&id, &sealed],
                )
                .await?;
            }
            Self::Lane(lane, value) => {
                let sealed = mac.seal("audit_lanes", &rows::u32_bytes(i32_to_u32(lane)), &value);
                tx.execute(
                    "UPDATE phivault.audit_lanes SET head = $2 WHERE lane = $1",
                    &[&lane, &sealed],
                )
                .await?;
            }
        }
        Ok(())
    }
}

impl Inner {
    async fn client(&self) -> Result<Object, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::WriterStopped);
        }
        self.pool.get().await.map_err(|e| {
            self.healthy.store(false, Ordering::Release);
            let why = match &e {
                deadpool_postgres::PoolError::Backend(pg) => pg_reason(pg),
                other => other.to_string(),
            };
            StoreError::Unavailable(format!("cannot reach PostgreSQL at {}: {why}", self.target))
        })
    }

    /// The outcome of an operation on `client`: a spent connection is
    /// dropped rather than returned to the pool.
    pub(super) fn settle<T>(
        &self,
        client: Object,
        result: Result<T, Fail>,
    ) -> Result<T, StoreError> {
        match result {
            Ok(value) => Ok(value),
            Err(Fail::Store(e)) => Err(e),
            Err(Fail::Pg(e)) => Err(self.settle_err(client, e)),
        }
    }

    fn settle_err(&self, client: Object, e: tokio_postgres::Error) -> StoreError {
        if connection_is_spent(&e) {
            self.healthy.store(false, Ordering::Release);
            drop(Object::take(client));
        }
        pg_error(&e)
    }

    /// Runs one statement and returns its rows.
    pub(super) async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let client = self.client().await?;
        let result = async {
            let statement = client.prepare_cached(sql).await?;
            Ok(client.query(&statement, params).await?)
        }
        .await;
        self.settle(client, result)
    }

    /// Counts a commit of `jobs` operations and whether it succeeded.
    pub(super) fn committed(&self, ok: bool) {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        if ok {
            stats.commits += 1;
            stats.jobs += 1;
            stats.batches[0] += 1;
            self.healthy.store(true, Ordering::Release);
        } else {
            stats.failed_commits += 1;
        }
    }

    /// Counts a commit that carried `jobs` operations.
    pub(super) fn committed_group(&self, jobs: usize, ok: bool) {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        if ok {
            stats.commits += 1;
            stats.jobs += jobs as u64;
            let bucket = super::BATCH_BUCKETS
                .iter()
                .position(|&b| jobs as u64 <= b)
                .unwrap_or(super::BATCH_BUCKETS.len() - 1);
            stats.batches[bucket] += 1;
            self.healthy.store(true, Ordering::Release);
        } else {
            stats.failed_commits += 1;
        }
    }

    /// Counts how long a commit took to come back from the server (its
    /// wait for a connection included), for the commit-duration histogram.
    pub(super) fn time_commit(&self, took: std::time::Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats.commit_micros[super::commit_bucket(micros)] += 1;
        stats.commit_micros_sum = stats.commit_micros_sum.saturating_add(micros);
    }

    /// Runs one writing statement and returns its rows.
    pub(super) async fn write(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let started = std::time::Instant::now();
        let result = self.query(sql, params).await;
        if result.is_ok() {
            self.time_commit(started.elapsed());
        }
        self.committed(result.is_ok());
        result
    }
}

impl MetaStore for PgStore {
    fn kdf_record(&self) -> StoreFuture<'_, Option<Vec<u8>>> {
        Box::pin(self.meta(names::KDF))
    }

    fn protect_rows(&self, key: RowKey, untagged_check: Option<Vec<u8>>) -> StoreFuture<'_, usize> {
        Box::pin(async move {
            if untagged_check.is_some() {
                // Only a RocksDB vault from before row tags has untagged rows.
                return Err(StoreError::Corrupt {
                    table: "meta",
                    what: "the KEK check says the rows are untagged, which a PostgreSQL vault never is",
                });
            }
            self.set_mac(RowMac::new(key.bytes()));
            Ok(0)
        })
    }

    fn rewrite_forward_entries(&self, entries: Vec<(Vec<u8>, Vec<u8>)>) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let mut namespaces = Vec::new();
            let mut versions = Vec::new();
            let mut blinds = Vec::new();
            let mut stored = Vec::new();
            for (key, entry) in entries {
                let key = rows::ForwardKey::from_slice(&key).ok_or(StoreError::Corrupt {
                    table: "mappings",
                    what: "a forward key is malformed",
                })?;
                namespaces.push(u32_to_i32(key.namespace()));
                versions.push(u32_to_i32(key.version()));
                blinds.push(key.0[8..].to_vec());
                stored.push(entry);
            }
            self.inner
                .write(
                    "UPDATE phivault.mappings AS m SET forward = t.forward \
                     FROM unnest($1::int4[], $2::int4[], $3::bytea[], $4::bytea[]) AS t(namespace, keyset, blind, forward) \
                     WHERE m.namespace = t.namespace AND m.keyset = t.keyset AND m.blind = t.blind",
                    &[&namespaces, &versions, &blinds, &stored],
                )
                .await?;
            Ok(())
        })
    }

    fn set_kek_check(&self, check: Vec<u8>) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.inner
                .write(
                    "UPDATE phivault.meta SET value = $2 WHERE name = $1",
                    &[&names::KEK_CHECK, &check],
                )
                .await?;
            Ok(())
        })
    }

    fn replace_master(&self, change: MasterChange) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let MasterChange {
                row_key,
                kdf,
                kek_check,
                keysets,
                audit_key,
            } = change;
            let new_mac = RowMac::new(row_key.bytes());
            let mut client = self.inner.client().await?;
            let done = async {
                let tx = client.transaction().await?;
                // Read and checked under the old key, tagged under the new
                // one, in the commit that replaces the wrapping.
                let tagged = self.tagged_rows(&tx).await?;
                let mut keyset_rows: std::collections::HashMap<u32, Vec<u8>> =
                    keysets.into_iter().collect();
                for row in tagged {
                    row.rewrite(&tx, &new_mac, &mut keyset_rows).await?;
                }
                for (name, value) in [
                    (names::KDF, &kdf),
                    (names::KEK_CHECK, &kek_check),
                    (names::AUDIT_KEY, &audit_key),
                ] {
                    tx.execute(
                        "UPDATE phivault.meta SET value = $2 WHERE name = $1",
                        &[&name, value],
                    )
                    .await?;
                }
                crate::failpoint::failpoint("rekey-committing");
                tx.commit().await?;
                Ok(())
            }
            .await;
            let done = self.inner.settle(client, done);
            self.inner.committed(done.is_ok());
            done?;
            self.set_mac(new_mac);
            // The rows wrapped under the old KEK are dead tuples now; vacuum
            // makes their space reusable. Copies in PostgreSQL's WAL, its
            // archive and base backups stay until those are rotated out
            // (README, "High availability").
            self.inner
                .query("VACUUM phivault.keysets, phivault.meta", &[])
                .await
                .map(|_| ())
        })
    }
}

impl Lifecycle for PgStore {
    fn shared(&self) -> bool {
        true
    }

    fn writable(&self) -> bool {
        !self.inner.read_only
            && !self.inner.closed.load(Ordering::Acquire)
            && self.inner.healthy.load(Ordering::Acquire)
    }

    fn commit_stats(&self) -> WriterStats {
        *self.inner.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn size_bytes(&self) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let found = self
                .inner
                .query("SELECT pg_database_size(current_database())", &[])
                .await?;
            Ok(found
                .first()
                .map_or(0, |row| u64::try_from(row.get::<_, i64>(0)).unwrap_or(0)))
        })
    }

    fn probe_writes(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let now = crate::clock::now_ms().to_be_bytes();
            self.inner
                .write(
                    "INSERT INTO phivault.meta (name, value) VALUES ($1, $2) \
                     ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                    &[&names::WRITE_PROBE, &now.as_slice()],
                )
                .await
                .map(|_| ())
        })
    }

    fn local_dir(&self) -> Option<&Path> {
        None
    }

    fn backup<'a>(&'a self, _staging: &'a Path, _finish: BackupFinish) -> StoreFuture<'a, ()> {
        Box::pin(std::future::ready(Err(StoreError::Unsupported(
            "a vault in PostgreSQL is backed up by PostgreSQL itself: pg_basebackup and WAL archiving, for point-in-time recovery (README: High availability)",
        ))))
    }

    fn forward_after<'a>(
        &'a self,
        cursor: &'a [u8],
        limit: usize,
    ) -> StoreFuture<'a, Vec<ForwardRow>> {
        Box::pin(async move {
            let (namespace, keyset, blind) = match rows::ForwardKey::from_slice(cursor) {
                Some(key) => (
                    i64::from(key.namespace()),
                    i64::from(key.version()),
                    key.0[8..].to_vec(),
                ),
                None => (-1, -1, Vec::new()),
            };
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let found = self
                .inner
                .query(
                    "SELECT namespace, keyset, blind, forward FROM phivault.mappings \
                     WHERE blind IS NOT NULL AND (namespace::int8, keyset::int8, blind) > ($1, $2, $3) \
                     ORDER BY namespace, keyset, blind LIMIT $4",
                    &[&namespace, &keyset, &blind, &limit],
                )
                .await?;
            Ok(found
                .iter()
                .map(|row| {
                    let key = forward_key(
                        i32_to_u32(row.get(0)),
                        i32_to_u32(row.get(1)),
                        row.get::<_, &[u8]>(2),
                    );
                    ForwardRow {
                        cursor: key.clone(),
                        key,
                        stored: row.get::<_, Option<Vec<u8>>>(3).unwrap_or_default(),
                    }
                })
                .collect())
        })
    }

    fn close(&self) -> Result<(), StoreError> {
        // Every acknowledged write is committed in PostgreSQL already.
        if !self.inner.closed.swap(true, Ordering::AcqRel) {
            self.inner.pool.close();
        }
        Ok(())
    }
}

impl LeaseStore for PgStore {
    fn acquire_lease<'a>(
        &'a self,
        job: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, Option<Lease>> {
        Box::pin(async move {
            let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
            // On the database's clock: nodes' clocks may disagree.
            let granted = self
                .inner
                .write(
                    "INSERT INTO phivault.leases AS l (job, holder, fence, expires) \
                     VALUES ($1, $2, 1, now() + $3::int8 * interval '1 millisecond') \
                     ON CONFLICT (job) DO UPDATE SET holder = EXCLUDED.holder, \
                       fence = CASE WHEN l.holder = EXCLUDED.holder THEN l.fence ELSE l.fence + 1 END, \
                       expires = EXCLUDED.expires \
                     WHERE l.holder = EXCLUDED.holder OR l.expires < now() \
                     RETURNING fence",
                    &[&job, &holder, &ttl_ms],
                )
                .await?;
            Ok(granted.first().map(|row| Lease {
                job: job.to_owned(),
                holder: holder.to_owned(),
                fence: i64_to_u64(row.get(0)),
            }))
        })
    }

    fn share_usage<'a>(
        &'a self,
        node: &'a str,
        mine: Vec<Usage>,
    ) -> StoreFuture<'a, Vec<SharedUsage>> {
        Box::pin(async move {
            let keys: Vec<&str> = mine.iter().map(|u| u.key.as_str()).collect();
            let totals: Vec<i64> = mine.iter().map(|u| u64_to_i64(u.total)).collect();
            let keep_ms: Vec<i64> = mine
                .iter()
                .map(|u| i64::try_from(u.keep_for.as_millis()).unwrap_or(i64::MAX))
                .collect();
            // One statement: publish, drop what expired, read the others'.
            // The SELECT sees the table as the statement began, which is
            // all it needs: the rows it returns are other nodes'.
            let rows = self
                .inner
                .query(
                    "WITH published AS ( \
                       INSERT INTO phivault.limit_usage AS u (node, key, total, expires) \
                       SELECT $1, k, t, now() + ms * interval '1 millisecond' \
                       FROM unnest($2::text[], $3::int8[], $4::int8[]) AS m(k, t, ms) \
                       ON CONFLICT (node, key) DO UPDATE \
                         SET total = EXCLUDED.total, expires = EXCLUDED.expires), \
                     expired AS (DELETE FROM phivault.limit_usage WHERE expires < now()) \
                     SELECT node, key, total FROM phivault.limit_usage \
                     WHERE node <> $1 AND expires >= now()",
                    &[&node, &keys, &totals, &keep_ms],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|row| SharedUsage {
                    node: row.get(0),
                    key: row.get(1),
                    total: i64_to_u64(row.get(2)),
                })
                .collect())
        })
    }

    fn release_lease<'a>(&'a self, lease: &'a Lease) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            // Kept, expired, so that the next grant raises the fence.
            self.inner
                .write(
                    "UPDATE phivault.leases SET holder = '', expires = now() \
                     WHERE job = $1 AND holder = $2 AND fence = $3",
                    &[&lease.job, &lease.holder, &u64_to_i64(lease.fence)],
                )
                .await
                .map(|_| ())
        })
    }
}
