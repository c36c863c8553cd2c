//! Unsealing: deriving the KEK of a vault and checking it before anything
//! is opened for writing, and bringing a vault written by an older version
//! up to the protection this one expects. Shared by opening a vault and by
//! the offline operations; below both.

use std::collections::BTreeMap;

use crate::crypto::kek::KdfRecord;
use crate::crypto::{CryptoError, Kek, MasterKey, Protection};
use crate::error::Error;
use crate::keyring::{Keyring, load_keyring, reverse_ad};
use crate::store::schema::{self, ForwardKey, ReverseRow};
use crate::store::{Location, RowKey, Storage};

/// Shortest passphrase a new vault (or `rekey`) accepts.
pub(crate) const MIN_PASSPHRASE_CHARS: usize = 12;

fn master_key_error(e: CryptoError) -> Error {
    match e {
        CryptoError::DecryptionFailed => Error::WrongMasterKey,
        CryptoError::Rng => Error::Crypto(e),
        other => Error::MasterKey(other),
    }
}

/// Runs `derive` off the async workers: Argon2id at 64 MiB takes a
/// noticeable fraction of a second, and an HSM answers over its own link.
async fn off_workers<T: Send + 'static>(
    derive: impl FnOnce() -> Result<T, CryptoError> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(derive)
        .await
        .map_err(|_| {
            Error::Crypto(CryptoError::KdfParams(
                "key derivation was interrupted".into(),
            ))
        })?
        .map_err(master_key_error)
}

pub(crate) async fn derive_kek(master: MasterKey, record: KdfRecord) -> Result<Kek, Error> {
    off_workers(move || Kek::derive(&master, &record)).await
}

/// A new KDF record for `master` (under an HSM, a new secret it wraps) and
/// the KEK it derives.
pub(crate) async fn new_kek(
    master: MasterKey,
    params: crate::crypto::KdfParams,
) -> Result<(KdfRecord, Kek), Error> {
    off_workers(move || {
        let record = KdfRecord::generate(&master, params)?;
        let kek = Kek::derive(&master, &record)?;
        Ok((record, kek))
    })
    .await
}

/// Derives the KEK of the vault at `location` and checks it against the
/// stored KEK check, read without opening the vault for writing: a wrong key
/// changes nothing.
pub(crate) async fn unseal_kek(location: &Location, master: MasterKey) -> Result<Unsealed, Error> {
    let crate::store::MasterRecord {
        format_version: version,
        kdf,
        kek_check: check,
    } = crate::store::read_master_record(location).await?;
    match version.as_deref().and_then(schema::decode_u32) {
        Some(schema::FORMAT_VERSION) => {}
        Some(_) => return Err(Error::Corrupt("unknown format version")),
        None => {
            return Err(Error::Corrupt(
                "missing format version (was init interrupted?)",
            ));
        }
    }
    let record = kdf
        .as_deref()
        .and_then(KdfRecord::decode)
        .ok_or(Error::Corrupt("KDF record"))?;
    let check = check.ok_or(Error::Corrupt("KEK check"))?;
    let kek = derive_kek(master, record.clone()).await?;
    let protection = kek
        .verify(&record, &check)
        .map_err(|_| Error::WrongMasterKey)?;
    Ok(Unsealed { kek, protection })
}

/// A KEK that opened the vault's check, and the protection the vault's rows
/// carry (below [`Protection::CURRENT`]: a vault from before some of it,
/// migrated on open).
pub(crate) struct Unsealed {
    pub(crate) kek: Kek,
    pub(crate) protection: Protection,
}

/// Forward entries bound per commit while a vault is migrated: a few MiB per
/// batch, whatever the vault's size.
const BINDING_CHUNK: usize = 4096;

/// Makes `store` tag and check the rows that shape access, under `kek`, and
/// brings a vault from before some protection up to
/// [`Protection::CURRENT`]: its registry rows are tagged (with the KEK check
/// replaced by one that says so, in one commit), then its forward entries
/// bound, chunk by chunk, the check replaced again after the last. From then
/// on an untagged or altered row, an unbound or rebound entry, is refused.
pub(crate) async fn protect_rows(
    store: &dyn Storage,
    kek: &Kek,
    protection: Protection,
) -> Result<(), Error> {
    let untagged_check = if protection < Protection::RegistryTags {
        Some(
            kek.check_value(&kdf_record(store).await?, Protection::RegistryTags)
                .map_err(Error::Crypto)?,
        )
    } else {
        None
    };
    let count = store
        .protect_rows(RowKey::new(kek.registry_key()), untagged_check)
        .await?;
    if protection < Protection::RegistryTags {
        tracing::info!(
            rows = count,
            "rows that shape access now carry MACs under a key derived from the KEK"
        );
    }
    if protection < Protection::ForwardBindings {
        bind_forward_entries(store, kek).await?;
    }
    Ok(())
}

/// Binds every forward entry of a vault from before bindings to its key.
/// Runs at open, before anything else writes. An interrupted run leaves
/// some chunks bound and the KEK check unchanged; the next one skips entries
/// whose binding already verifies (an unbound token's last 16 bytes verify
/// by chance with probability 2^-128).
///
/// An entry is bound only if it agrees with the reverse row it names: that
/// row opens under its keyset and its value hashes back to the entry's key.
/// The KEK check that says a vault predates bindings is a fixed value, so
/// one kept from before the upgrade (in a backup, or in files RocksDB has
/// not compacted yet) can be put back; without this check an entry pointed
/// at another value's token before the check was put back would be bound
/// here, and its wrong token served from then on.
async fn bind_forward_entries(store: &dyn Storage, kek: &Kek) -> Result<(), Error> {
    let check = kek
        .check_value(&kdf_record(store).await?, Protection::ForwardBindings)
        .map_err(Error::Crypto)?;
    let ring = load_keyring(store, kek).await?;
    let (mut bound, mut unbindable) = (0u64, 0u64);
    let mut cursor: Vec<u8> = Vec::new();
    loop {
        let chunk = store.forward_after(&cursor, BINDING_CHUNK).await?;
        let Some(last) = chunk.last() else { break };
        cursor.clone_from(&last.cursor);
        // Unbound entries by namespace: reverse rows are read a namespace at
        // a time.
        let mut unbound: BTreeMap<u32, Vec<(ForwardKey, String)>> = BTreeMap::new();
        for row in chunk {
            let Some((key, keyset)) = ForwardKey::from_slice(&row.key)
                .and_then(|k| Some((k, ring.by_version.get(&k.version())?)))
            else {
                // Not an entry any lookup reads; `verify` reports it.
                unbindable += 1;
                continue;
            };
            if key.open(keyset.prf(), &row.stored).is_some() {
                continue;
            }
            match String::from_utf8(row.stored) {
                Ok(token) => unbound
                    .entry(key.namespace())
                    .or_default()
                    .push((key, token)),
                // No token is anything but UTF-8.
                Err(_) => unbindable += 1,
            }
        }
        let mut rows = Vec::new();
        for (namespace, entries) in unbound {
            let tokens: Vec<&str> = entries.iter().map(|(_, t)| t.as_str()).collect();
            let named = store.reverse_rows(namespace, &tokens).await?;
            for ((key, token), row) in entries.iter().zip(named) {
                match ring.by_version.get(&key.version()) {
                    Some(keyset)
                        if agrees_with_its_row(&ring, key, token.as_bytes(), row.as_deref()) =>
                    {
                        rows.push((key.0.to_vec(), key.bind(keyset.prf(), token.as_bytes())));
                    }
                    _ => unbindable += 1,
                }
            }
        }
        bound += rows.len() as u64;
        store.rewrite_forward_entries(rows).await?;
    }
    store.set_kek_check(check).await?;
    if unbindable > 0 {
        tracing::warn!(
            entries = unbindable,
            "forward entries that do not agree with their reverse rows were left unbound (their values get DATA_LOSS); `phivault verify` lists them"
        );
    }
    tracing::info!(
        entries = bound,
        "forward entries are now bound to their keys; a rewritten one is refused"
    );
    Ok(())
}

/// Whether a forward entry (`key` → `token`) names a reverse row that opens
/// under its keyset and whose value hashes back to `key`.
fn agrees_with_its_row(ring: &Keyring, key: &ForwardKey, token: &[u8], row: Option<&[u8]>) -> bool {
    let namespace_id = key.namespace();
    let (Some(row), Ok(token), Some(indexer)) = (
        row.and_then(ReverseRow::decode),
        std::str::from_utf8(token),
        ring.by_version.get(&key.version()),
    ) else {
        return false;
    };
    let Some(sealer) = ring.by_version.get(&row.version) else {
        return false;
    };
    let ad = reverse_ad(namespace_id, token, row.version);
    let Ok(value) = sealer.enc().open(&ad.each(), &row.ciphertext) else {
        return false;
    };
    ForwardKey::new(
        namespace_id,
        key.version(),
        &indexer.prf().blind_index(namespace_id, &value),
    ) == *key
}

async fn kdf_record(store: &dyn Storage) -> Result<KdfRecord, Error> {
    store
        .kdf_record()
        .await?
        .as_deref()
        .and_then(KdfRecord::decode)
        .ok_or(Error::Corrupt("KDF record"))
}

#[cfg(test)]
mod migration_tests {
    //! Older vaults are made by rewriting a new RocksDB vault's rows as an
    //! older version left them: only these fixtures name the backend.
    use std::path::Path;

    use zeroize::Zeroizing;

    use super::*;
    use crate::store::integrity::RowMac;
    use crate::store::rocks::{Cf, Store, keys};
    use crate::store::{StoreError, StoreOptions};
    use crate::{ItemCode, Vault, VaultOptions};

    fn key_file() -> MasterKey {
        MasterKey::KeyFile(Zeroizing::new([0x3c; 32]))
    }

    const VALUES: [&str; 3] = ["123-45-6789", "234-56-7890", "345-67-8901"];

    /// A vault holding tokens for [`VALUES`], closed.
    async fn vault_with_tokens(path: &Path) -> Vec<String> {
        let vault = Vault::init(path, key_file(), VaultOptions::default())
            .await
            .expect("init");
        let tokens = vault.tokenize("ssn", &VALUES).await.expect("tokenize");
        vault.close().expect("close");
        tokens.into_iter().map(|t| t.expect("token")).collect()
    }

    /// Rewrites the closed vault at `path` as an older version left it:
    /// registry rows untagged (below [`Protection::RegistryTags`]), the first
    /// `unbound` forward entries without bindings, and the KEK check of
    /// `protection`.
    async fn downgrade(path: &Path, protection: Protection, unbound: usize) {
        let Unsealed {
            kek,
            protection: now,
        } = unseal_kek(&Location::directory(path), key_file())
            .await
            .expect("kek");
        assert_eq!(now, Protection::CURRENT);
        let store = Store::open(path, &StoreOptions::default()).expect("raw");
        let check = kek
            .check_value(&kdf_record(&store).await.expect("record"), protection)
            .expect("check");
        let mac = RowMac::new(kek.registry_key());
        let registry: Vec<_> = store
            .protected_rows()
            .expect("rows")
            .into_iter()
            .map(|(cf, (key, value))| {
                let plain = mac.open(cf.name(), &key, &value).expect("tagged");
                (cf, key, plain)
            })
            .collect();
        assert!(registry.len() > 10);
        let strip_registry = protection < Protection::RegistryTags;
        let forward: Vec<_> = store
            .scan(Cf::Forward)
            .take(unbound)
            .map(|entry| {
                let (key, stored) = entry.expect("entry");
                let token = stored[..stored.len() - crate::crypto::BINDING_LEN].to_vec();
                (key, token)
            })
            .collect();
        assert_eq!(forward.len(), unbound);
        store
            .write(move |txn| {
                if strip_registry {
                    for (cf, key, plain) in registry {
                        txn.put(cf, key, plain);
                    }
                }
                for (key, token) in forward {
                    txn.put(Cf::Forward, key, token);
                }
                txn.put(Cf::Meta, keys::META_KEK_CHECK, check);
                Ok(())
            })
            .await
            .expect("write");
        store.close().expect("close");
    }

    /// Opens the vault and checks that every value keeps its token and
    /// every token reveals its value, then that the vault is current.
    async fn opens_and_keeps_its_tokens(path: &Path, tokens: &[String]) {
        let vault = Vault::open(path, key_file(), VaultOptions::default())
            .await
            .expect("the old vault opens and is migrated");
        let again = vault.tokenize("ssn", &VALUES).await.expect("tokenize");
        let revealed = vault.detokenize("ssn", tokens).await.expect("detokenize");
        for ((token, again), (value, revealed)) in
            tokens.iter().zip(again).zip(VALUES.iter().zip(revealed))
        {
            assert_eq!(&again.expect("same token"), token);
            assert_eq!(&revealed.expect("value"), value);
        }
        assert!(vault.verify().await.expect("verify").is_clean());
        vault.close().expect("close");
        let Unsealed { protection, .. } = unseal_kek(&Location::directory(path), key_file())
            .await
            .expect("kek");
        assert_eq!(protection, Protection::CURRENT, "the KEK check says so");
    }

    /// A vault from before registry tags and forward bindings opens, is
    /// migrated once, and from then on refuses an untagged row.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_vault_from_before_tags_is_migrated_on_first_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = vault_with_tokens(dir.path()).await;
        downgrade(dir.path(), Protection::None, VALUES.len()).await;
        opens_and_keeps_its_tokens(dir.path(), &tokens).await;

        // From now on an untagged row is refused.
        let store = Store::open(dir.path(), &StoreOptions::default()).expect("raw");
        store
            .write(|txn| {
                txn.put(Cf::Namespaces, &b"planted"[..], &b"{}"[..]);
                Ok(())
            })
            .await
            .expect("write");
        store.close().expect("close");
        let refused = Vault::open(dir.path(), key_file(), VaultOptions::default()).await;
        assert!(matches!(
            refused,
            Err(Error::Store(StoreError::Tampered {
                table: "namespaces",
                ..
            }))
        ));
    }

    /// A migration of forward entries stopped part way (some chunks bound,
    /// the KEK check not yet replaced) finishes on the next open without
    /// binding an entry twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_interrupted_binding_of_forward_entries_finishes_on_the_next_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = vault_with_tokens(dir.path()).await;
        downgrade(dir.path(), Protection::RegistryTags, 1).await;
        opens_and_keeps_its_tokens(dir.path(), &tokens).await;
    }

    /// Someone points one value's entry at another value's token and puts
    /// back a KEK check from before bindings (a fixed value, kept from
    /// before the upgrade): the migration binds only entries that agree
    /// with their reverse rows, so that value gets `DATA_LOSS`, never the
    /// other value's token.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_migration_leaves_an_entry_pointed_at_another_token_unbound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = vault_with_tokens(dir.path()).await;
        downgrade(dir.path(), Protection::RegistryTags, VALUES.len()).await;
        let store = Store::open(dir.path(), &StoreOptions::default()).expect("raw");
        let entries: Vec<_> = store.scan(Cf::Forward).map(|e| e.expect("entry")).collect();
        let (victim, other) = (entries[0].0.clone(), entries[1].1.clone());
        store
            .write(move |txn| {
                txn.put(Cf::Forward, victim, other);
                Ok(())
            })
            .await
            .expect("write");
        store.close().expect("close");

        let vault = Vault::open(dir.path(), key_file(), VaultOptions::default())
            .await
            .expect("open");
        let again = vault.tokenize("ssn", &VALUES).await.expect("tokenize");
        let refused = again.iter().filter(|r| r.is_err()).count();
        assert_eq!(refused, 1, "{again:?}");
        for (result, token) in again.iter().zip(&tokens) {
            if let Ok(given) = result {
                assert_eq!(given, token);
            }
        }
        let report = vault.verify().await.expect("verify");
        assert_eq!(
            report.counts.get(&crate::ProblemKind::ForwardUnbound),
            Some(&1)
        );
        vault.close().expect("close");
    }

    /// Once the KEK check says entries are bound, an unbound one (a binding
    /// stripped to pass for an old vault) is refused when read.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unbound_entry_in_a_current_vault_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        vault_with_tokens(dir.path()).await;
        downgrade(dir.path(), Protection::CURRENT, 1).await;
        let vault = Vault::open(dir.path(), key_file(), VaultOptions::default())
            .await
            .expect("open");
        let again = vault.tokenize("ssn", &VALUES).await.expect("tokenize");
        let refused: Vec<_> = again.iter().filter_map(|r| r.as_ref().err()).collect();
        assert_eq!(refused.len(), 1, "{again:?}");
        assert_eq!(refused[0].code, ItemCode::DataLoss);
        vault.close().expect("close");
    }
}
