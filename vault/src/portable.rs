//! `phivault export` and `phivault import`: a whole vault as one file, to
//! move it between backends (RocksDB and PostgreSQL, either way) or keep a
//! logical copy beside PostgreSQL's own backups.
//!
//! The file holds what the storage holds and no more: ciphertext, keyed
//! hashes, tokens, wrapped keys and audit records, one JSON object per line
//! with bytes in base64 (see [`Line`]). It reveals nothing without the master
//! key, exactly as a backup does, and is written owner-only all the same.
//!
//! Rows lose their storage MACs on the way out (each backend tags its rows
//! its own way), so the file is authenticated as a whole instead: its last
//! line carries the number of rows and an HMAC of every byte before it under
//! a key derived from the vault's KEK. An import derives the KEK from the
//! file's KDF record and the master key, and commits nothing unless that
//! MAC verifies and every row arrived: a file cut short, reordered or edited
//! is refused, and so is one made for another vault.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::crypto::kek::KdfRecord;
use crate::crypto::{Kek, MasterKey, Protection};
use crate::error::Error;
use crate::hex::{hex, unhex};
use crate::store::integrity::{RowMac, TAG_LEN};
use crate::store::{Import, Location, Row, RowKey, Storage, StoreOptions};

/// What the first line names the file as.
const FORMAT: &str = "phivault-export";
/// The file layout's version; an import refuses any other.
const VERSION: u32 = 1;
/// The MAC's domain: no stored table is called this.
const MAC_TABLE: &str = "export";
/// Rows sent to the store per batch on import.
const IMPORT_BATCH: usize = 1024;
/// Longest line an import reads (an audit record of the largest batch is a
/// few hundred KiB): a file of one endless line is refused, not buffered.
const MAX_LINE: u64 = 64 << 20;
/// Rows after the header within which the key records must come (they are
/// among the first `meta` rows), so that nothing much is held before the key
/// is checked.
const KEY_RECORDS_WITHIN: usize = 64;
/// What the reading half of an import says when the store stopped first;
/// the store's own error is then the one reported.
const STORE_STOPPED: &str = "the store stopped taking rows";

/// One line of the file.
#[derive(Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Line {
    /// The first line.
    Header {
        format: String,
        version: u32,
        exported_at_ms: u64,
    },
    Meta {
        name: String,
        #[serde(with = "b64")]
        value: Vec<u8>,
    },
    Keyset {
        version: u32,
        #[serde(with = "b64")]
        row: Vec<u8>,
    },
    Namespace {
        name: String,
        #[serde(with = "b64")]
        row: Vec<u8>,
    },
    Client {
        id: String,
        #[serde(with = "b64")]
        row: Vec<u8>,
    },
    Reverse {
        namespace: u32,
        #[serde(with = "b64")]
        token: Vec<u8>,
        #[serde(with = "b64")]
        row: Vec<u8>,
    },
    Forward {
        #[serde(with = "b64")]
        key: Vec<u8>,
        #[serde(with = "b64")]
        entry: Vec<u8>,
    },
    Audit {
        id: u64,
        #[serde(with = "b64")]
        record: Vec<u8>,
    },
    AuditHead {
        lane: u32,
        #[serde(with = "b64")]
        head: Vec<u8>,
    },
    /// The last line: rows before it (the header aside), and the MAC of
    /// every byte before it.
    End { rows: u64, mac: String },
}

mod b64 {
    use super::STANDARD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <&str>::deserialize(d)?;
        STANDARD
            .decode(text)
            .map_err(|_| serde::de::Error::custom("a field is not base64"))
    }
}

impl From<Row> for Line {
    fn from(row: Row) -> Self {
        match row {
            Row::Meta { name, value } => Self::Meta { name, value },
            Row::Keyset { version, row } => Self::Keyset { version, row },
            Row::Namespace { name, row } => Self::Namespace { name, row },
            Row::Client { id, row } => Self::Client { id, row },
            Row::Reverse {
                namespace,
                token,
                row,
            } => Self::Reverse {
                namespace,
                token,
                row,
            },
            Row::Forward { key, entry } => Self::Forward { key, entry },
            Row::Audit { id, record, .. } => Self::Audit { id, record },
            Row::AuditHead { lane, head } => Self::AuditHead { lane, head },
        }
    }
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct ExportInfo {
    /// Rows written (the header and last line aside).
    pub rows: u64,
    /// The file's size.
    pub bytes: u64,
    /// The file's MAC, in hex: an import prints it too, so that the file
    /// imported can be matched with the export that wrote it (an older
    /// export of the same vault is just as authentic).
    pub mac: String,
}

/// What an import wrote.
#[derive(Debug, Clone)]
pub struct ImportInfo {
    /// Rows imported.
    pub rows: u64,
    /// When the file was written, in milliseconds since the Unix epoch.
    pub exported_at_ms: u64,
    /// The file's MAC, in hex.
    pub mac: String,
}

fn file_error(what: impl Into<String>) -> Error {
    Error::Export(what.into())
}

/// The tag of `digest` under the vault's registry key.
fn mac_of(kek: &Kek, digest: &[u8]) -> Vec<u8> {
    let sealed = RowMac::new(kek.registry_key()).seal(MAC_TABLE, &[], digest);
    sealed[sealed.len() - TAG_LEN..].to_vec()
}

/// Lines written, and the hash of every byte so far.
struct Writer {
    out: BufWriter<std::fs::File>,
    hash: Sha256,
    bytes: u64,
}

impl Writer {
    fn line(&mut self, line: &Line) -> Result<(), Error> {
        let mut text =
            serde_json::to_vec(line).map_err(|_| file_error("a row could not be encoded"))?;
        text.push(b'\n');
        self.hash.update(&text);
        self.bytes += text.len() as u64;
        self.out
            .write_all(&text)
            .map_err(|e| file_error(format!("cannot write the export file: {e}")))
    }
}

/// Writes every row of `store` to the new file `path` (owner-only; an
/// existing file is refused), authenticated under `kek`. A failed export
/// removes what it wrote.
pub(crate) async fn export(
    store: &dyn Storage,
    kek: &Kek,
    path: &Path,
) -> Result<ExportInfo, Error> {
    let file = create_private(path)?;
    let written = write_export(store, kek, file).await;
    if written.is_err() {
        let _ = std::fs::remove_file(path);
    }
    written
}

fn create_private(path: &Path) -> Result<std::fs::File, Error> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map_err(|e| {
        file_error(format!(
            "cannot create {} (it must not exist yet): {e}",
            path.display()
        ))
    })
}

async fn write_export(
    store: &dyn Storage,
    kek: &Kek,
    file: std::fs::File,
) -> Result<ExportInfo, Error> {
    let mut writer = Writer {
        out: BufWriter::with_capacity(1 << 20, file),
        hash: Sha256::new(),
        bytes: 0,
    };
    writer.line(&Line::Header {
        format: FORMAT.into(),
        version: VERSION,
        exported_at_ms: crate::clock::now_ms(),
    })?;
    // Each side owns its end of the channel, so that either stopping
    // stops the other instead of leaving it waiting.
    let (sender, mut receiver) = mpsc::channel::<Vec<Row>>(4);
    let reading = async move { store.export_rows(&sender).await };
    let lines = &mut writer;
    let writing = async move {
        let mut rows = 0u64;
        while let Some(batch) = receiver.recv().await {
            for row in batch {
                lines.line(&Line::from(row))?;
                rows += 1;
            }
        }
        Ok::<_, Error>(rows)
    };
    let (sent, rows) = tokio::join!(reading, writing);
    let sent = sent?;
    let rows = rows?;
    if sent != rows {
        return Err(file_error("the export lost rows on the way to the file"));
    }
    let digest = writer.hash.clone().finalize();
    let mac = hex(&mac_of(kek, &digest));
    writer.line(&Line::End {
        rows,
        mac: mac.clone(),
    })?;
    let file = writer
        .out
        .into_inner()
        .map_err(|e| file_error(format!("cannot write the export file: {}", e.error())))?;
    file.sync_all()
        .map_err(|e| file_error(format!("cannot write the export file: {e}")))?;
    Ok(ExportInfo {
        rows,
        bytes: writer.bytes,
        mac,
    })
}

/// Whether `mac` is the MAC of `digest` (compared in constant time).
fn mac_verifies(kek: &Kek, digest: &[u8], mac: &str) -> bool {
    let Some(tag) = unhex(mac) else {
        return false;
    };
    let mut sealed = digest.to_vec();
    sealed.extend_from_slice(&tag);
    RowMac::new(kek.registry_key())
        .open(MAC_TABLE, &[], &sealed)
        .is_ok()
}

/// Lines read, and the hash of every byte before the current one.
struct Reader {
    input: BufReader<std::fs::File>,
    hash: Sha256,
    number: u64,
    text: Vec<u8>,
}

impl Reader {
    /// The next line, or `None` at the end of the file; the hash then
    /// covers every line before it.
    fn next(&mut self) -> Result<Option<Line>, Error> {
        self.text.clear();
        let read = std::io::Read::take(&mut self.input, MAX_LINE + 1)
            .read_until(b'\n', &mut self.text)
            .map_err(|e| file_error(format!("cannot read the export file: {e}")))?;
        if read == 0 {
            return Ok(None);
        }
        self.number += 1;
        if read as u64 > MAX_LINE {
            return Err(file_error(format!(
                "line {} is longer than any export row",
                self.number
            )));
        }
        // By line number and the kind of fault only: the line holds tokens.
        let line = serde_json::from_slice(&self.text).map_err(|e| {
            file_error(format!(
                "line {} is not an export row ({:?} error)",
                self.number,
                e.classify()
            ))
        })?;
        Ok(Some(line))
    }

    /// Counts the line just read into the hash.
    fn hash_it(&mut self) {
        self.hash.update(&self.text);
    }
}

/// Imports the export file `path` into a new vault at `location`, unsealed
/// with `master` (the exported vault's passphrase or key). Nothing is left
/// that opens unless every row arrived and the file's MAC verifies; a new
/// directory made for a failed import is removed.
pub async fn import(
    path: &Path,
    location: &Location,
    master: MasterKey,
) -> Result<ImportInfo, Error> {
    let file = std::fs::File::open(path)
        .map_err(|e| file_error(format!("cannot open {}: {e}", path.display())))?;
    let mut reader = Reader {
        input: BufReader::with_capacity(1 << 20, file),
        hash: Sha256::new(),
        number: 0,
        text: Vec::new(),
    };
    let exported_at_ms = match reader.next()? {
        Some(Line::Header {
            format,
            version,
            exported_at_ms,
        }) if format == FORMAT => {
            if version != VERSION {
                return Err(file_error(format!(
                    "the file is export version {version}; this phivault reads version {VERSION}"
                )));
            }
            exported_at_ms
        }
        _ => return Err(file_error("the file is not a phivault export")),
    };
    reader.hash_it();

    // The records that unseal the vault come first; the key is checked
    // before anything is created.
    let mut early = Vec::new();
    let (mut kdf, mut check) = (None, None);
    while kdf.is_none() || check.is_none() {
        if early.len() >= KEY_RECORDS_WITHIN {
            return Err(file_error(
                "the vault's key records are not among the file's first rows",
            ));
        }
        let line = reader
            .next()?
            .ok_or_else(|| file_error("the file ends before the vault's key records"))?;
        reader.hash_it();
        let row = row_of(line, reader.number)?;
        if let Row::Meta { name, value } = &row {
            match name.as_str() {
                "kdf" => kdf = Some(value.clone()),
                "kek_check" => check = Some(value.clone()),
                _ => {}
            }
        }
        early.push(row);
    }
    let record = kdf
        .as_deref()
        .and_then(KdfRecord::decode)
        .ok_or(Error::Corrupt("KDF record"))?;
    let kek = crate::unseal::derive_kek(master, record.clone()).await?;
    let protection = kek
        .verify(&record, check.as_deref().unwrap_or_default())
        .map_err(|_| Error::WrongMasterKey)?;
    if protection != Protection::CURRENT {
        return Err(file_error(
            "the file comes from a vault older than this phivault's protection: open that vault once with this version and export it again",
        ));
    }

    let (rows, mac) = match location {
        Location::Postgres(_) => import_into(location, &kek, &mut reader, early).await?,
        Location::Directory(dir) => {
            // Written beside the destination and renamed into place once
            // whole: whatever stops the import (an error, a kill), the
            // destination never holds part of a vault.
            let staging = staging_dir(dir)?;
            let imported = import_into(
                &Location::Directory(staging.clone()),
                &kek,
                &mut reader,
                early,
            )
            .await
            .and_then(|done| {
                std::fs::rename(&staging, dir).map_err(|e| {
                    file_error(format!("cannot move the vault into {}: {e}", dir.display()))
                })?;
                Ok(done)
            });
            if imported.is_err() {
                let _ = std::fs::remove_dir_all(&staging);
            }
            imported?
        }
    };
    Ok(ImportInfo {
        rows,
        exported_at_ms,
        mac,
    })
}

/// A new, owner-only directory beside `dir` to import into, after checking
/// that `dir` is free: absent, or an empty directory (one made ahead for
/// the service, say).
fn staging_dir(dir: &Path) -> Result<std::path::PathBuf, Error> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::AlreadyInitialized(format!(
                    "{} (an import needs a new or empty directory)",
                    dir.display()
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(file_error(format!("cannot read {}: {e}", dir.display()))),
    }
    let name = dir
        .file_name()
        .ok_or_else(|| file_error(format!("{} names no directory", dir.display())))?;
    let mut random = [0u8; 8];
    getrandom::fill(&mut random)
        .map_err(|_| file_error("the OS random number generator failed"))?;
    let staging = dir.with_file_name(format!(
        ".{}.import-{}",
        name.to_string_lossy(),
        hex(&random)
    ));
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(&staging)
        .map_err(|e| file_error(format!("cannot create {}: {e}", staging.display())))?;
    Ok(staging)
}

/// Streams the rest of the file into a new store at `location`; returns
/// the rows imported and the file's MAC.
async fn import_into(
    location: &Location,
    kek: &Kek,
    reader: &mut Reader,
    early: Vec<Row>,
) -> Result<(u64, String), Error> {
    let store = crate::store::create_empty(
        location,
        &StoreOptions::default(),
        RowKey::new(kek.registry_key()),
    )
    .await?;
    // The reading side owns the sender: when it stops, the store sees the
    // channel close without a commit and keeps nothing.
    let (sender, receiver) = mpsc::channel::<Import>(4);
    let writing = store.import_rows(receiver);
    let reading = async move {
        let mut rows = early.len() as u64;
        let mut batch = early;
        let mac = loop {
            let line = reader.next()?.ok_or_else(|| {
                file_error("the file ends before its last line: it was cut short")
            })?;
            if let Line::End { rows: said, mac } = line {
                if reader.next()?.is_some() {
                    return Err(file_error("the file goes on after its last line"));
                }
                let digest = reader.hash.clone().finalize();
                if said != rows || !mac_verifies(kek, &digest, &mac) {
                    return Err(file_error(
                        "the file's MAC does not verify: it was changed, cut or reordered, or made for another vault",
                    ));
                }
                break mac;
            }
            reader.hash_it();
            batch.push(row_of(line, reader.number)?);
            rows += 1;
            if batch.len() >= IMPORT_BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(IMPORT_BATCH));
                sender
                    .send(Import::Rows(full))
                    .await
                    .map_err(|_| file_error(STORE_STOPPED))?;
            }
        };
        let stopped = |_| file_error(STORE_STOPPED);
        sender.send(Import::Rows(batch)).await.map_err(stopped)?;
        sender.send(Import::Commit).await.map_err(stopped)?;
        Ok::<_, Error>((rows, mac))
    };
    let (written, read) = tokio::join!(writing, reading);
    let closed = store.close();
    match (read, written) {
        // The store stopped first: its error says why.
        (Err(Error::Export(why)), Err(failed)) if why == STORE_STOPPED => Err(failed.into()),
        (Err(e), _) => Err(e),
        (Ok(_), Err(failed)) => Err(failed.into()),
        (Ok(done), Ok(())) => {
            closed?;
            Ok(done)
        }
    }
}

/// The row a line carries; an audit record with the marks it revealed,
/// for the disclosure index.
fn row_of(line: Line, number: u64) -> Result<Row, Error> {
    Ok(match line {
        Line::Meta { name, value } => Row::Meta { name, value },
        Line::Keyset { version, row } => Row::Keyset { version, row },
        Line::Namespace { name, row } => Row::Namespace { name, row },
        Line::Client { id, row } => Row::Client { id, row },
        Line::Reverse {
            namespace,
            token,
            row,
        } => Row::Reverse {
            namespace,
            token,
            row,
        },
        Line::Forward { key, entry } => Row::Forward { key, entry },
        Line::Audit { id, record } => {
            // A call that revealed one token twice names it twice; the
            // index holds it once.
            let mut revealed: Vec<[u8; 32]> = crate::audit::decode_record(id, &record)
                .ok_or_else(|| file_error(format!("line {number}: an audit record is unreadable")))?
                .event
                .tokens
                .iter()
                .filter(|t| t.revealed)
                .map(|t| t.mac)
                .collect();
            revealed.sort_unstable();
            revealed.dedup();
            Row::Audit {
                id,
                record,
                revealed,
            }
        }
        Line::AuditHead { lane, head } => Row::AuditHead { lane, head },
        Line::Header { .. } | Line::End { .. } => {
            return Err(file_error(format!("line {number} is out of place")));
        }
    })
}
