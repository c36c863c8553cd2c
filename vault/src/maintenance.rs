//! Operations on a vault as a whole: backups, the integrity check and
//! changing the master key (DESIGN.md §8).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::crypto::{KdfParams, KeyPurpose, MasterKey};
use crate::error::Error;
use crate::keyring::{Keyring, live_keysets, load_keyring, reverse_ad};
use crate::store::schema;
use crate::store::schema::{ForwardKey, ReverseRow};
use crate::unseal::{MIN_PASSPHRASE_CHARS, Unsealed, protect_rows, unseal_kek};
use std::collections::HashMap;

use crate::Namespace;
use crate::failpoint::failpoint;
use crate::store::{ForwardRow, Lifecycle, Location, MasterChange, RowKey, Storage, StoreOptions};

/// Rows read per step of `verify`.
const VERIFY_CHUNK: usize = 4096;
/// Problems listed one by one; beyond this only counted.
const MAX_LISTED_PROBLEMS: usize = 1000;

/// A finished backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupInfo {
    /// The checkpoint directory.
    pub path: PathBuf,
    /// Bytes in its files (hard links to the live files count in full).
    pub bytes: u64,
}

/// Checks a backup destination: an absolute path that does not exist yet,
/// in an existing directory, inside `within` when that is set, and with no
/// symbolic link on the way to it. A link anywhere would let whoever planted
/// it choose where the backup goes — and RocksDB's checkpoint empties a
/// `<path>.tmp` directory first, following links, so a planted one could make
/// a backup delete the live vault. Returns the directory that will hold it.
fn backup_target(path: &Path, within: Option<&Path>) -> Result<PathBuf, Error> {
    let invalid = |why: String| Err(Error::InvalidBackupPath(why));
    if !path.is_absolute() {
        return invalid(format!("{} is not an absolute path", path.display()));
    }
    if path.symlink_metadata().is_ok() {
        return invalid(format!(
            "{} exists already; a backup never overwrites",
            path.display()
        ));
    }
    let Some(parent) = path.parent().filter(|p| p.is_dir()) else {
        return invalid(format!(
            "the directory that would hold {} does not exist",
            path.display()
        ));
    };
    for ancestor in parent.ancestors() {
        if ancestor
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink())
        {
            return invalid(format!(
                "{} is a symbolic link; backup paths may not contain any",
                ancestor.display()
            ));
        }
    }
    if let Some(within) = within {
        let (Ok(parent), Ok(within)) = (parent.canonicalize(), within.canonicalize()) else {
            return invalid("the backup directory cannot be resolved".into());
        };
        if !parent.starts_with(&within) {
            return invalid(format!(
                "backups may only be written under {}",
                within.display()
            ));
        }
    }
    Ok(parent.to_path_buf())
}

/// `path` with the configured backup directory `within`, as the operator
/// named it, replaced by where that resolves. The operator's configuration
/// may reach the directory through a link (a volume mounted elsewhere and
/// linked into place); a caller's path may not hold one below it, which
/// [`backup_target`] checks on the result.
fn under_backup_dir(path: &Path, within: &Path) -> Result<PathBuf, Error> {
    let Ok(rest) = path.strip_prefix(within) else {
        return Ok(path.to_path_buf());
    };
    let real = within.canonicalize().map_err(|e| {
        Error::InvalidBackupPath(format!(
            "the backup directory {} cannot be resolved: {}",
            within.display(),
            e.kind()
        ))
    })?;
    Ok(real.join(rest))
}

/// How staging directories' names begin; 16 hex digits follow.
const STAGING_PREFIX: &str = ".phivault-backup-";

/// A private directory beside a backup's destination, made by this process
/// (so nothing can be planted in it), where the checkpoint is written before
/// it is renamed into place. Removed with what is left in it on drop.
struct Staging(PathBuf);

impl Staging {
    fn create(parent: &Path) -> Result<Self, Error> {
        use std::os::unix::fs::DirBuilderExt as _;
        let mut suffix = [0u8; 8];
        crate::crypto::fill_random(&mut suffix).map_err(Error::Crypto)?;
        let name: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
        let dir = parent.join(format!("{STAGING_PREFIX}{name}"));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| {
                Error::InvalidBackupPath(format!(
                    "cannot create a staging directory in {}: {}",
                    parent.display(),
                    e.kind()
                ))
            })?;
        Ok(Self(dir))
    }

    fn checkpoint(&self) -> PathBuf {
        self.0.join("checkpoint")
    }
}

/// Makes the checkpoint at `checkpoint` owner-only, then moves it to `path`,
/// failing rather than replacing anything that appeared there meanwhile.
fn publish(checkpoint: &Path, path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    // Hard-linked table files share their mode with the live files:
    // tightening one tightens both, which is right for either.
    for entry in std::fs::read_dir(checkpoint)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600))?;
        }
    }
    std::fs::set_permissions(checkpoint, std::fs::Permissions::from_mode(0o700))?;
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        checkpoint,
        rustix::fs::CWD,
        path,
        rustix::fs::RenameFlags::NOREPLACE,
    )
    .map_err(|e| {
        if e == rustix::io::Errno::INVAL {
            // Some network file systems refuse the flag; a plain rename
            // would replace a directory that appeared meanwhile, so the
            // backup is refused instead.
            std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "the file system of the backup directory cannot rename without replacing (RENAME_NOREPLACE); use a local file system",
            )
        } else {
            std::io::Error::from(e)
        }
    })
}

impl Drop for Staging {
    fn drop(&mut self) {
        // `remove_dir_all` does not follow symbolic links.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Checkpoints `store` to `path` through a private staging directory.
async fn checkpoint_to(
    store: &dyn Lifecycle,
    path: &Path,
    within: Option<&Path>,
) -> Result<(), Error> {
    let parent = backup_target(path, within)?;
    let staging = Staging::create(&parent)?;
    let target = path.to_path_buf();
    let checkpoint = staging.checkpoint();
    // Published on the writer thread, right after the checkpoint, so that no
    // write is acknowledged between the two. The job owns the staging
    // directory: a caller that gives up waiting (a cancelled RPC) does not
    // remove it under a checkpoint being written; it goes when the job does.
    store
        .backup(
            &checkpoint,
            Box::new(move |made: &Path| {
                let published = publish(made, &target);
                drop(staging);
                published.map_err(|e| crate::store::StoreError::Checkpoint {
                    path: target.display().to_string(),
                    reason: if e.kind() == std::io::ErrorKind::Unsupported {
                        e.to_string()
                    } else {
                        e.kind().to_string()
                    },
                })
            }),
        )
        .await?;
    Ok(())
}

/// Removes the staging directories that backups cut short by a crash or a
/// kill left under `dir` (the server's backup directory), and says how many.
/// Only directories this user owns whose names are exactly a staging
/// directory's are touched, never through a symbolic link, never the live
/// `data_dir` or one holding it (a vault served from a recovered staging
/// directory), and nothing inside a database (a directory with a `CURRENT`
/// file: a backup). Run at start, when no backup of this vault can be in
/// progress: the backup directory belongs to one vault.
pub(crate) fn remove_interrupted_backups(dir: &Path, data_dir: &Path) -> usize {
    use std::os::unix::fs::MetadataExt as _;
    fn is_staging(name: &std::ffi::OsStr) -> bool {
        name.to_str()
            .and_then(|n| n.strip_prefix(STAGING_PREFIX))
            .is_some_and(|hex| hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
    }
    let me = rustix::process::geteuid().as_raw();
    let live = data_dir.canonicalize().ok();
    let holds_live = |path: &Path| {
        live.as_ref()
            .is_some_and(|live| path.canonicalize().is_ok_and(|p| live.starts_with(p)))
    };
    let mut removed = 0;
    // Backups may sit in subdirectories; a backup itself holds only files.
    let mut pending = vec![(dir.to_path_buf(), 0)];
    while let Some((at, depth)) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&at) else {
            continue;
        };
        for entry in entries.flatten() {
            // `DirEntry::metadata` does not follow a link.
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_dir() {
                continue;
            }
            let path = entry.path();
            if is_staging(&entry.file_name()) && meta.uid() == me && !holds_live(&path) {
                if std::fs::remove_dir_all(&path).is_ok() {
                    removed += 1;
                }
            } else if depth < 8 && !path.join("CURRENT").exists() {
                pending.push((path, depth + 1));
            }
        }
    }
    removed
}

fn directory_bytes(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Takes a consistent checkpoint of the database at `path` while it is not
/// served (the `phivault backup` command). Needs no key: a backup holds
/// ciphertext and keysets wrapped under the KEK, nothing else.
pub async fn backup_offline(data_dir: &Path, to: &Path) -> Result<BackupInfo, Error> {
    let location = Location::directory(data_dir);
    if !crate::store::exists(&location).await? {
        return Err(Error::NotInitialized(location.to_string()));
    }
    let to = std::path::absolute(to)
        .map_err(|e| Error::InvalidBackupPath(format!("{}: {e}", to.display())))?;
    backup_target(&to, None)?;
    let store = crate::store::open(&location, &StoreOptions::default()).await?;
    let written = checkpoint_to(store.as_ref(), &to, None).await;
    store.close()?;
    written?;
    Ok(BackupInfo {
        bytes: directory_bytes(&to),
        path: to,
    })
}

/// What `verify` found wrong with one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum ProblemKind {
    /// A row too short or malformed to parse.
    UnreadableRow,
    /// A row of a namespace id that no namespace has.
    UnknownNamespace,
    /// A row sealed or indexed under a keyset the vault does not hold.
    UnknownKeyset,
    /// A reverse row whose ciphertext fails authentication (tampered, moved
    /// or corrupted).
    IntegrityFailure,
    /// A reverse row of a deterministic namespace without its forward entry:
    /// the value would get a second token.
    MissingForward,
    /// A forward entry that points at a different token than the row whose
    /// value hashes to it.
    ForwardMismatch,
    /// A forward entry whose token has no reverse row.
    OrphanForward,
    /// A forward entry whose reverse row's value does not hash back to it.
    ForwardDoesNotHashBack,
    /// A forward entry whose binding does not verify: its token was
    /// rewritten, it was moved from another key, or it is damaged.
    ForwardUnbound,
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::UnreadableRow => "unreadable row",
            Self::UnknownNamespace => "row of an unknown namespace",
            Self::UnknownKeyset => "row under a keyset the vault does not hold",
            Self::IntegrityFailure => "reverse row fails its integrity check",
            Self::MissingForward => "reverse row without its forward entry",
            Self::ForwardMismatch => "forward entry points at another token",
            Self::OrphanForward => "forward entry without a reverse row",
            Self::ForwardDoesNotHashBack => "forward entry does not hash back to its value",
            Self::ForwardUnbound => "forward entry fails its binding check",
        })
    }
}

/// One problem: its kind, the namespace, and the row's position in its column
/// family (never the token or value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What is wrong.
    pub kind: ProblemKind,
    /// The namespace name, or its id when unknown.
    pub namespace: String,
    /// `reverse` or `forward`.
    pub table: &'static str,
    /// 1-based position of the row in its column family.
    pub row: u64,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} row {} (namespace {}): {}",
            self.table, self.row, self.namespace, self.kind
        )
    }
}

/// What `verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Reverse rows read.
    pub reverse_rows: u64,
    /// Forward entries read.
    pub forward_entries: u64,
    /// Reverse rows by the keyset version that sealed them.
    pub rows_by_keyset: BTreeMap<u32, u64>,
    /// Problems by kind.
    pub counts: BTreeMap<ProblemKind, u64>,
    /// The first problems, in the order found.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// Whether nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.counts.is_empty()
    }

    fn report(&mut self, kind: ProblemKind, namespace: String, table: &'static str, row: u64) {
        *self.counts.entry(kind).or_default() += 1;
        if self.problems.len() < MAX_LISTED_PROBLEMS {
            self.problems.push(Problem {
                kind,
                namespace,
                table,
                row,
            });
        }
    }
}

/// A forward entry whose reverse row `verify` reads next.
struct ForwardLookup<'a> {
    row_no: u64,
    ns: &'a Arc<Namespace>,
    key: Vec<u8>,
    token: String,
}

fn split_key(key: &[u8]) -> Option<(u32, &[u8])> {
    let (id, rest) = key.split_first_chunk::<4>()?;
    Some((u32::from_be_bytes(*id), rest))
}

/// Writes a consistent backup of `store` to `path` while serving. With
/// `within`, the path must lie inside that directory. The backup is written
/// to a private staging directory beside `path` and renamed into place,
/// owner-only.
pub(crate) async fn backup(
    store: &dyn Lifecycle,
    path: &Path,
    within: Option<&Path>,
) -> Result<BackupInfo, Error> {
    let resolved = match within {
        Some(within) => under_backup_dir(path, within)?,
        None => path.to_path_buf(),
    };
    checkpoint_to(store, &resolved, within).await?;
    let info = BackupInfo {
        path: path.to_path_buf(),
        bytes: directory_bytes(&resolved),
    };
    tracing::info!(path = %info.path.display(), bytes = info.bytes, "backup written");
    Ok(info)
}

/// Checks every mapping: each reverse row opens under its keyset, each
/// deterministic value's forward entry exists and points back at its token,
/// and each forward entry belongs to a reverse row whose value hashes to it.
/// Reads everything; run it on a stopped vault or a backup.
pub(crate) async fn verify(
    store: &dyn Storage,
    ring: &Keyring,
    namespaces: &HashMap<u32, Arc<Namespace>>,
) -> Result<VerifyReport, Error> {
    let ns_name = |id: u32| {
        namespaces
            .get(&id)
            .map_or_else(|| format!("#{id}"), |ns| ns.name.clone())
    };
    let mut report = VerifyReport::default();

    // Reverse rows → their forward entries.
    let mut cursor: Vec<u8> = Vec::new();
    loop {
        let chunk = store.reverse_after(&cursor, VERIFY_CHUNK).await?;
        let Some(last) = chunk.last() else { break };
        cursor = last.cursor.clone();
        let mut expected: Vec<(u64, u32, ForwardKey, Box<[u8]>)> = Vec::new();
        for entry in chunk {
            report.reverse_rows += 1;
            let row_no = report.reverse_rows;
            let (value, token) = (entry.row, entry.token.as_slice());
            let Some(ns_id) = entry.namespace else {
                report.report(ProblemKind::UnreadableRow, "?".into(), "reverse", row_no);
                continue;
            };
            let Some(ns) = namespaces.get(&ns_id) else {
                report.report(
                    ProblemKind::UnknownNamespace,
                    ns_name(ns_id),
                    "reverse",
                    row_no,
                );
                continue;
            };
            let (Some(row), Ok(token_text)) =
                (ReverseRow::decode(&value), std::str::from_utf8(token))
            else {
                report.report(
                    ProblemKind::UnreadableRow,
                    ns.name.clone(),
                    "reverse",
                    row_no,
                );
                continue;
            };
            *report.rows_by_keyset.entry(row.version).or_default() += 1;
            let Some(keyset) = ring.by_version.get(&row.version) else {
                report.report(
                    ProblemKind::UnknownKeyset,
                    ns.name.clone(),
                    "reverse",
                    row_no,
                );
                continue;
            };
            let ad = reverse_ad(ns_id, token_text, row.version);
            let Ok(plain) = keyset.enc().open(&ad.each(), &row.ciphertext) else {
                report.report(
                    ProblemKind::IntegrityFailure,
                    ns.name.clone(),
                    "reverse",
                    row_no,
                );
                continue;
            };
            if ns.deterministic {
                let index = keyset.prf().blind_index(ns_id, &plain);
                let forward = ForwardKey::new(ns_id, row.version, &index);
                expected.push((row_no, ns_id, forward, token.into()));
            }
        }
        let keys: Vec<ForwardKey> = expected.iter().map(|(_, _, k, _)| *k).collect();
        let found = store.forward_entries(&keys).await?;
        for ((row_no, ns_id, key, token), stored) in expected.into_iter().zip(found) {
            let Some(stored) = stored else {
                report.report(
                    ProblemKind::MissingForward,
                    ns_name(ns_id),
                    "reverse",
                    row_no,
                );
                continue;
            };
            // An unbound entry is reported by the second pass, once.
            if ring
                .open_forward(&key, &stored)
                .is_some_and(|t| t.as_bytes() != &*token)
            {
                report.report(
                    ProblemKind::ForwardMismatch,
                    ns_name(ns_id),
                    "reverse",
                    row_no,
                );
            }
        }
    }

    // Forward entries → the reverse rows they name.
    cursor.clear();
    loop {
        let chunk = store.forward_after(&cursor, VERIFY_CHUNK).await?;
        let Some(last) = chunk.last() else { break };
        cursor = last.cursor.clone();
        let mut lookups: Vec<ForwardLookup<'_>> = Vec::new();
        for ForwardRow { key, stored, .. } in chunk {
            report.forward_entries += 1;
            let row_no = report.forward_entries;
            let Some((ns_id, _)) = split_key(&key) else {
                report.report(ProblemKind::UnreadableRow, "?".into(), "forward", row_no);
                continue;
            };
            match namespaces.get(&ns_id) {
                Some(ns) if ns.deterministic => {
                    let opened = match ForwardKey::from_slice(&key) {
                        None => Err(ProblemKind::UnreadableRow),
                        Some(k) if !ring.by_version.contains_key(&k.version()) => {
                            Err(ProblemKind::UnknownKeyset)
                        }
                        Some(k) => ring
                            .open_forward(&k, &stored)
                            .ok_or(ProblemKind::ForwardUnbound),
                    };
                    let token = match opened {
                        Ok(token) => token,
                        Err(kind) => {
                            report.report(kind, ns.name.clone(), "forward", row_no);
                            continue;
                        }
                    };
                    let token = token.to_owned();
                    lookups.push(ForwardLookup {
                        row_no,
                        ns,
                        key,
                        token,
                    });
                }
                Some(ns) => report.report(
                    ProblemKind::OrphanForward,
                    ns.name.clone(),
                    "forward",
                    row_no,
                ),
                None => report.report(
                    ProblemKind::UnknownNamespace,
                    ns_name(ns_id),
                    "forward",
                    row_no,
                ),
            }
        }
        // One read per namespace of the chunk.
        let mut rows: Vec<Option<Vec<u8>>> = vec![None; lookups.len()];
        let mut by_namespace: HashMap<u32, Vec<usize>> = HashMap::new();
        for (i, lookup) in lookups.iter().enumerate() {
            by_namespace.entry(lookup.ns.id).or_default().push(i);
        }
        for (ns_id, positions) in by_namespace {
            let tokens: Vec<&str> = positions
                .iter()
                .map(|&i| lookups[i].token.as_str())
                .collect();
            let found = store.reverse_rows(ns_id, &tokens).await?;
            for (i, row) in positions.into_iter().zip(found) {
                rows[i] = row;
            }
        }
        for (lookup, row) in lookups.into_iter().zip(rows) {
            let ForwardLookup {
                row_no,
                ns,
                key,
                token,
            } = lookup;
            let name = ns.name.clone();
            let Some(row) = row else {
                report.report(ProblemKind::OrphanForward, name, "forward", row_no);
                continue;
            };
            let version = schema::decode_u32(&key[4..8]).unwrap_or(0);
            let (Some(keyset), Some(row)) =
                (ring.by_version.get(&version), ReverseRow::decode(&row))
            else {
                report.report(ProblemKind::UnknownKeyset, name, "forward", row_no);
                continue;
            };
            // A damaged reverse row is reported by the first pass.
            let Some(sealer) = ring.by_version.get(&row.version) else {
                continue;
            };
            let ad = reverse_ad(ns.id, &token, row.version);
            let Ok(plain) = sealer.enc().open(&ad.each(), &row.ciphertext) else {
                continue;
            };
            let index = keyset.prf().blind_index(ns.id, &plain);
            if ForwardKey::new(ns.id, version, &index).0[..] != key[..] {
                report.report(ProblemKind::ForwardDoesNotHashBack, name, "forward", row_no);
            }
        }
    }
    Ok(report)
}

/// Verifies the audit chain of the vault at `path` without its master key
/// and without stopping a server that runs on it: the database is opened
/// read-only and the chain checked as it was at that moment.
pub async fn verify_audit_at(location: &Location) -> Result<crate::AuditReport, Error> {
    if !crate::store::exists(location).await? {
        return Err(Error::NotInitialized(location.to_string()));
    }
    let store = crate::store::open_read_only(location, &StoreOptions::default()).await?;
    crate::audit::verify_chain(store.as_ref()).await
}

/// Replaces the master key of the stopped vault at `location`: every keyset is
/// re-wrapped under the new KEK and the KDF record and KEK check are
/// replaced in one synced batch, so after a crash at any point exactly one
/// of the old and new keys unseals the vault.
pub(crate) async fn rekey(
    location: &Location,
    old: MasterKey,
    new: MasterKey,
    kdf: KdfParams,
) -> Result<(), Error> {
    if !crate::store::exists(location).await? {
        return Err(Error::NotInitialized(location.to_string()));
    }
    if let MasterKey::Passphrase(p) = &new
        && p.chars().count() < MIN_PASSPHRASE_CHARS
    {
        return Err(Error::WeakPassphrase {
            min: MIN_PASSPHRASE_CHARS,
        });
    }
    kdf.check().map_err(Error::MasterKey)?;
    let Unsealed {
        kek: old_kek,
        protection,
    } = unseal_kek(location, old).await?;
    // Opening for writing takes the embedded database's lock: a running
    // server holds it.
    let store = crate::store::open(location, &StoreOptions::default()).await?;
    protect_rows(store.as_ref(), &old_kek, protection).await?;
    failpoint("rekey-opened");
    let rows = live_keysets(store.as_ref(), &old_kek).await?;
    let (record, new_kek) = crate::unseal::new_kek(new, kdf).await?;
    failpoint("rekey-derived");
    let check = new_kek
        .check_value(&record, crate::crypto::Protection::CURRENT)
        .map_err(Error::Crypto)?;
    let mut keysets: Vec<(u32, Vec<u8>)> = Vec::with_capacity(rows.len());
    for (version, mut row, keyset) in rows {
        row.wrapped = keyset
            .wrap(&new_kek, KeyPurpose::Data)
            .map_err(Error::Crypto)?;
        keysets.push((version, row.encode()));
    }
    // The audit key too: its marks must stay answerable under the new
    // master key.
    let audit_key = crate::audit::load_or_create_key(store.as_ref(), &old_kek).await?;
    let audit_row = store
        .audit_key_row()
        .await?
        .as_deref()
        .and_then(schema::AuditKeyRow::decode)
        .ok_or(Error::Corrupt("audit key row"))?;
    let audit_row = schema::AuditKeyRow {
        wrapped: audit_key.wrap(&new_kek).map_err(Error::Crypto)?,
        ..audit_row
    }
    .encode();
    drop(old_kek);
    failpoint("rekey-wrapped");
    let count = keysets.len();
    store
        .replace_master(MasterChange {
            row_key: RowKey::new(new_kek.registry_key()),
            kdf: record.encode(),
            kek_check: check,
            keysets,
            audit_key: audit_row,
        })
        .await?;
    failpoint("rekey-committed");
    load_keyring(store.as_ref(), &new_kek).await?;
    crate::audit::load_or_create_key(store.as_ref(), &new_kek).await?;
    store.close()?;
    tracing::info!(%location, keysets = count, "master key replaced");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Leftover staging directories go, at any depth; a backup, a directory
    /// that only looks like one, and a link named like one (and what it
    /// points at) stay.
    /// A backup directory configured through a link is followed once; a
    /// link below it in a caller's path is still refused.
    #[test]
    fn the_configured_backup_directory_may_be_a_link_but_nothing_below_it() {
        let root = tempfile::tempdir().expect("tempdir");
        let real = root.path().join("volume");
        std::fs::create_dir_all(real.join("daily")).expect("mkdir");
        let configured = root.path().join("backups");
        std::os::unix::fs::symlink(&real, &configured).expect("symlink");
        std::os::unix::fs::symlink(root.path(), real.join("escape")).expect("symlink");

        let wanted = configured.join("daily/b1");
        let resolved = under_backup_dir(&wanted, &configured).expect("resolves");
        assert_eq!(
            resolved,
            real.canonicalize().expect("real").join("daily/b1")
        );
        assert!(backup_target(&resolved, Some(&configured)).is_ok());
        assert!(
            backup_target(&wanted, Some(&configured)).is_err(),
            "unresolved, the configured link itself is on the way"
        );

        let through =
            under_backup_dir(&configured.join("escape/b2"), &configured).expect("resolves");
        assert!(matches!(
            backup_target(&through, Some(&configured)),
            Err(Error::InvalidBackupPath(why)) if why.contains("symbolic link")
        ));
        let outside = under_backup_dir(&configured.join("../b3"), &configured).expect("resolves");
        assert!(backup_target(&outside, Some(&configured)).is_err());
        let elsewhere = root.path().join("b4");
        assert_eq!(
            under_backup_dir(&elsewhere, &configured).expect("as is"),
            elsewhere
        );
    }

    #[test]
    fn only_interrupted_backups_staging_directories_are_removed() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("backups");
        let mkdir = |p: &Path| std::fs::create_dir_all(p).expect("mkdir");
        let top = dir.join(".phivault-backup-0123456789abcdef");
        let nested = dir.join("daily/.phivault-backup-fedcba9876543210");
        let backup = dir.join("daily/2026-11-23");
        let lookalike = dir.join(".phivault-backup-not-hex-digits!");
        let outside = root.path().join("live-vault");
        for d in [
            &top.join("checkpoint"),
            &nested,
            &backup,
            &lookalike,
            &outside,
        ] {
            mkdir(d);
        }
        std::fs::write(top.join("checkpoint/000008.sst"), b"x").expect("write");
        std::fs::write(backup.join("CURRENT"), b"x").expect("write");
        std::fs::write(outside.join("CURRENT"), b"x").expect("write");
        let link = dir.join(".phivault-backup-aaaaaaaaaaaaaaaa");
        std::os::unix::fs::symlink(&outside, &link).expect("symlink");

        // A vault served from a staging directory recovered by hand.
        let served = dir.join(".phivault-backup-5555555555555555/checkpoint");
        mkdir(&served);
        // A backup's files are never walked into.
        let inside = backup.join(".phivault-backup-6666666666666666");
        mkdir(&inside);

        assert_eq!(remove_interrupted_backups(&dir, &served), 2);
        assert!(served.exists() && inside.exists());
        assert!(!top.exists() && !nested.exists());
        assert!(backup.join("CURRENT").exists());
        assert!(lookalike.exists());
        assert!(link.symlink_metadata().is_ok());
        assert!(outside.join("CURRENT").exists());
        assert_eq!(remove_interrupted_backups(&dir, &served), 0);
    }
}
