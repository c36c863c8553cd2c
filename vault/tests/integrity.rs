//! Rows that grant or shape access are MACed under a key derived from the
//! KEK (DESIGN.md §10): each edit an attacker with write access to the data
//! directory (but no key) could make is refused at the next start, naming the
//! table and the row.

use std::path::Path;

use phivault::store::integrity::TAG_LEN;
use phivault::store::rocks::keys;
use phivault::store::schema;
use phivault::store::{Cf, Store, StoreError, StoreOptions};
use phivault::{Error, MasterKey, Vault, VaultOptions};
use zeroize::Zeroizing;

fn key_file() -> MasterKey {
    MasterKey::KeyFile(Zeroizing::new([0x5a; 32]))
}

/// A vault with an `analytics` client that may only tokenize, and a revoked
/// `former` client; returns their ids.
async fn vault(path: &Path) -> (String, String) {
    let vault = Vault::init(path, key_file(), VaultOptions::default())
        .await
        .expect("init");
    let (analytics, _) = vault
        .create_client("analytics", &["tokenize:ssn"])
        .await
        .expect("client");
    let (former, _) = vault
        .create_client("former", &["detokenize:ssn"])
        .await
        .expect("client");
    vault.revoke_client(&former.id).await.expect("revoke");
    vault.close().expect("close");
    (analytics.id, former.id)
}

/// Opens the database directly, as someone with write access to the
/// directory but no key would, and applies `edit` to it.
async fn tamper<F>(path: &Path, edit: F)
where
    F: FnOnce(&mut phivault::store::Txn<'_>) -> Result<(), StoreError> + Send + 'static,
{
    let store = Store::open(path, &StoreOptions::default()).expect("raw open");
    store.write(edit).await.expect("raw write");
    store.close().expect("close");
}

/// The JSON of a stored row, without its tag.
fn json(stored: &[u8]) -> serde_json::Value {
    serde_json::from_slice(&stored[..stored.len() - TAG_LEN]).expect("a JSON row")
}

async fn refused(path: &Path) -> (&'static str, String) {
    match Vault::open(path, key_file(), VaultOptions::default()).await {
        Err(Error::Store(StoreError::Tampered { table, row })) => (table, row),
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("a tampered vault opened"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_row_added_with_detokenize_everything_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (analytics, _) = vault(dir.path()).await;
    tamper(dir.path(), move |txn| {
        let stored = txn.get(Cf::Clients, analytics.as_bytes())?.expect("row");
        let mut row = json(&stored);
        row["scopes"] = serde_json::json!(["detokenize:*"]);
        // The attacker's own client, with the old tag or none at all.
        let mut forged = serde_json::to_vec(&row).expect("json");
        txn.put(Cf::Clients, &b"00000000000000aa"[..], forged.clone());
        forged.extend_from_slice(&stored[stored.len() - TAG_LEN..]);
        txn.put(Cf::Clients, &b"00000000000000ab"[..], forged);
        Ok(())
    })
    .await;
    let (table, row) = refused(dir.path()).await;
    assert_eq!(table, "clients");
    assert!(row.contains("00000000000000a"), "{row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_widened_or_a_revocation_undone_is_refused() {
    for edit in ["widen", "unrevoke"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (analytics, former) = vault(dir.path()).await;
        let id = if edit == "widen" { analytics } else { former };
        let target = id.clone();
        tamper(dir.path(), move |txn| {
            let stored = txn.get(Cf::Clients, target.as_bytes())?.expect("row");
            let mut row = json(&stored);
            if edit == "widen" {
                row["scopes"] = serde_json::json!(["detokenize:*"]);
            } else {
                assert!(!row["revoked_at"].is_null());
                row["revoked_at"] = serde_json::Value::Null;
            }
            let mut forged = serde_json::to_vec(&row).expect("json");
            forged.extend_from_slice(&stored[stored.len() - TAG_LEN..]);
            txn.put(Cf::Clients, target.as_bytes(), forged);
            Ok(())
        })
        .await;
        assert_eq!(refused(dir.path()).await, ("clients", format!("{id:?}")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_namespace_ids_and_a_raised_keep_prefix_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    vault(dir.path()).await;
    // Two rows swapped whole, each with its own valid tag.
    tamper(dir.path(), |txn| {
        let ssn = txn.get(Cf::Namespaces, b"ssn")?.expect("ssn");
        let mrn = txn.get(Cf::Namespaces, b"mrn")?.expect("mrn");
        txn.put(Cf::Namespaces, &b"ssn"[..], mrn);
        txn.put(Cf::Namespaces, &b"mrn"[..], ssn);
        Ok(())
    })
    .await;
    let (table, _) = refused(dir.path()).await;
    assert_eq!(table, "namespaces");

    let dir = tempfile::tempdir().expect("tempdir");
    vault(dir.path()).await;
    tamper(dir.path(), |txn| {
        let stored = txn.get(Cf::Namespaces, b"zip")?.expect("zip");
        let mut row = json(&stored);
        row["format"]["keep_prefix"] = serde_json::json!(5);
        let mut forged = serde_json::to_vec(&row).expect("json");
        forged.extend_from_slice(&stored[stored.len() - TAG_LEN..]);
        txn.put(Cf::Namespaces, &b"zip"[..], forged);
        Ok(())
    })
    .await;
    assert_eq!(refused(dir.path()).await, ("namespaces", "\"zip\"".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_keyset_pointer_and_keyset_state_are_protected() {
    let dir = tempfile::tempdir().expect("tempdir");
    vault(dir.path()).await;
    tamper(dir.path(), |txn| {
        txn.put(Cf::Meta, keys::META_ACTIVE_KEYSET, schema::u32_bytes(1));
        Ok(())
    })
    .await;
    assert_eq!(
        refused(dir.path()).await,
        ("meta", "\"active_keyset\"".into())
    );

    let dir = tempfile::tempdir().expect("tempdir");
    vault(dir.path()).await;
    tamper(dir.path(), |txn| {
        let mut stored = txn.get(Cf::Keys, &schema::u32_bytes(1))?.expect("keyset 1");
        // The state byte, then the old tag: a keyset marked otherwise.
        stored[0] ^= 1;
        txn.put(Cf::Keys, schema::u32_bytes(1), stored);
        Ok(())
    })
    .await;
    assert_eq!(refused(dir.path()).await, ("keys", "version 1".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untouched_vault_opens_and_every_row_carries_a_tag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (analytics, _) = vault(dir.path()).await;
    let vault = Vault::open(dir.path(), key_file(), VaultOptions::default())
        .await
        .expect("opens");
    assert!(vault.clients().iter().any(|c| c.id == analytics));
    vault.close().expect("close");
    // Raw, the rows are longer than their JSON by the tag.
    let store = Store::open_read_only(dir.path(), &StoreOptions::default()).expect("raw");
    for entry in store.scan(Cf::Clients) {
        let (_, value) = entry.expect("row");
        assert!(serde_json::from_slice::<serde_json::Value>(&value).is_err());
        json(&value);
    }
}

/// Two values of the `ssn` namespace.
const SSNS: [&str; 2] = ["123-45-6789", "234-56-7890"];

/// [`SSNS`]' tokens, and the vault closed.
async fn two_tokens(path: &Path) -> [String; 2] {
    let vault = Vault::init(path, key_file(), VaultOptions::default())
        .await
        .expect("init");
    let tokens = vault.tokenize("ssn", &SSNS).await.expect("tokenize");
    vault.close().expect("close");
    tokens
        .into_iter()
        .map(|t| t.expect("token"))
        .collect::<Vec<_>>()
        .try_into()
        .expect("two")
}

/// Opens the vault, asks for both values' tokens again and runs `verify`.
async fn retokenize_and_verify(path: &Path) -> (Vec<phivault::ItemResult>, phivault::VerifyReport) {
    let vault = Vault::open(path, key_file(), VaultOptions::default())
        .await
        .expect("forward entries are checked when read, not at open");
    let again = vault.tokenize("ssn", &SSNS).await.expect("tokenize");
    let report = vault.verify().await.expect("verify");
    vault.close().expect("close");
    (again, report)
}

/// Someone with write access to the data directory points one value's
/// forward entry at another value's token, so that a pipeline tokenizing the
/// first value would be handed the second's token (and a later reveal would
/// show the wrong patient). The entry's binding no longer verifies: the
/// value gets `DATA_LOSS`, never the other token, and `verify` names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_entry_rewritten_to_another_token_is_refused() {
    for whole_entry in [true, false] {
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = two_tokens(dir.path()).await;
        let store = Store::open_read_only(dir.path(), &StoreOptions::default()).expect("raw");
        let entries: Vec<_> = store.scan(Cf::Forward).map(|e| e.expect("entry")).collect();
        drop(store);
        let [(victim, own), (_, other)] = &entries[..] else {
            panic!("two forward entries, found {}", entries.len());
        };
        // Either the other entry's stored value as it is (token and
        // binding), or only its token with this entry's binding kept.
        let split = |stored: &[u8]| stored.len() - phivault::crypto::BINDING_LEN;
        let forged = if whole_entry {
            other.to_vec()
        } else {
            [&other[..split(other)], &own[split(own)..]].concat()
        };
        let victim = victim.to_vec();
        tamper(dir.path(), move |txn| {
            txn.put(Cf::Forward, victim, forged);
            Ok(())
        })
        .await;

        let (again, report) = retokenize_and_verify(dir.path()).await;
        let refused: Vec<_> = again.iter().filter_map(|r| r.as_ref().err()).collect();
        let [refused] = refused[..] else {
            panic!("exactly the rewritten entry's value is refused: {again:?}");
        };
        assert_eq!(refused.code, phivault::ItemCode::DataLoss);
        assert!(tokens.iter().all(|t| !refused.message.contains(t.as_str())));
        for (result, token) in again.iter().zip(&tokens) {
            if let Ok(given) = result {
                assert_eq!(given, token, "the untouched value keeps its own token");
            }
        }
        assert_eq!(
            report.counts.get(&phivault::ProblemKind::ForwardUnbound),
            Some(&1),
            "{:?}",
            report.counts
        );
    }
}
