//! The vault core end to end: real RocksDB in a temporary directory.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use phivault::format::{FormatKind, FormatSpec};
use phivault::store::Cf;
use phivault::{Durability, Error, ItemCode, MasterKey, NamespaceSpec, Vault, VaultOptions};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

const PASSPHRASE: &str = "correct horse battery staple";

fn passphrase(p: &str) -> MasterKey {
    MasterKey::Passphrase(Zeroizing::new(p.to_owned()))
}

fn key_file() -> MasterKey {
    MasterKey::KeyFile(Zeroizing::new([0x5a; 32]))
}

fn options() -> VaultOptions {
    VaultOptions::default()
}

async fn new_vault(dir: &Path) -> Vault {
    Vault::init(dir, key_file(), options()).await.expect("init")
}

fn ok(results: Vec<phivault::ItemResult>) -> Vec<String> {
    results
        .into_iter()
        .map(|r| r.expect("item succeeds"))
        .collect()
}

/// Row counts of a column family, read straight from RocksDB.
fn count_rows(dir: &Path, cf: &str) -> usize {
    let names = Cf::ALL.map(Cf::name);
    let db = rocksdb::DB::open_cf_for_read_only(&rocksdb::Options::default(), dir, names, false)
        .expect("open");
    let handle = db.cf_handle(cf).expect("cf");
    db.iterator_cf(handle, rocksdb::IteratorMode::Start).count()
}

/// A digest of every file name and content under `dir`.
fn hash_dir(dir: &Path) -> Vec<u8> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    let mut hasher = Sha256::new();
    for path in entries {
        hasher.update(path.file_name().expect("name").as_encoded_bytes());
        if path.is_dir() {
            hasher.update(hash_dir(&path));
        } else {
            hasher.update(std::fs::read(&path).expect("read"));
        }
    }
    hasher.finalize().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_tokenizers_of_the_same_new_values_get_one_token_each() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = Arc::new(new_vault(dir.path()).await);
    let values: Arc<Vec<String>> = Arc::new((0..1000).map(|i| format!("MRN{i:07}")).collect());
    let mut tasks = Vec::new();
    for task in 0..32 {
        let (vault, values) = (Arc::clone(&vault), Arc::clone(&values));
        tasks.push(tokio::spawn(async move {
            // Every task walks the values in its own order and batch size.
            let mut order: Vec<usize> = (0..values.len()).collect();
            order.rotate_left(task * 31 % values.len());
            let mut seen = HashMap::new();
            for chunk in order.chunks(7 + task) {
                let batch: Vec<&str> = chunk.iter().map(|&i| values[i].as_str()).collect();
                for (&i, token) in chunk
                    .iter()
                    .zip(ok(vault.tokenize("mrn", &batch).await.expect("tokenize")))
                {
                    seen.insert(i, token);
                }
            }
            seen
        }));
    }
    let mut agreed: HashMap<usize, String> = HashMap::new();
    for task in tasks {
        for (i, token) in task.await.expect("task") {
            let first = agreed.entry(i).or_insert_with(|| token.clone());
            assert_eq!(*first, token, "two tokens for value {i}");
        }
    }
    assert_eq!(agreed.len(), 1000);
    let distinct: HashSet<_> = agreed.values().collect();
    assert_eq!(distinct.len(), 1000, "two values share a token");
    let stats = vault.writer_stats();
    assert!(
        stats.commits < stats.jobs,
        "group commit folds jobs together: {stats:?}"
    );

    let vault = Arc::into_inner(vault).expect("all tasks done");
    vault.close().expect("close");
    assert_eq!(count_rows(dir.path(), "forward"), 1000);
    assert_eq!(count_rows(dir.path(), "reverse"), 1000);
}

#[tokio::test]
async fn swapped_ciphertexts_fail_their_integrity_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = new_vault(dir.path()).await;
    let tokens = ok(vault
        .tokenize("ssn", &["123-45-6789", "987-65-4321"])
        .await
        .expect("tokenize"));
    vault.close().expect("close");

    {
        // Swap the two reverse rows' values behind the vault's back.
        let names = Cf::ALL.map(Cf::name);
        let db =
            rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.path(), names).expect("open");
        let reverse = db.cf_handle("reverse").expect("cf");
        let rows: Vec<phivault::store::Entry> = db
            .iterator_cf(reverse, rocksdb::IteratorMode::Start)
            .map(|r| r.expect("row"))
            .collect();
        assert_eq!(rows.len(), 2);
        db.put_cf(reverse, &rows[0].0, &rows[1].1).expect("put");
        db.put_cf(reverse, &rows[1].0, &rows[0].1).expect("put");
    }

    let vault = Vault::open(dir.path(), key_file(), options())
        .await
        .expect("open");
    for result in vault.detokenize("ssn", &tokens).await.expect("detokenize") {
        let error = result.expect_err("a swapped row must not decrypt");
        assert_eq!(error.code, ItemCode::DataLoss);
        assert!(error.message.contains("integrity"), "{}", error.message);
    }
}

#[tokio::test]
async fn reopening_with_the_passphrase_keeps_every_mapping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let values = [
        "123-45-6789",
        "4111 1111 1111 1111",
        "+1 (555) 010-0199 x12",
        "jane.doe@example.org",
        "1984-02-29",
        "Zoë O'Brien",
        "MRN-0042",
        "02139",
        "free text, with anything: ✓",
    ];
    let namespaces = [
        "ssn", "card", "phone", "email", "dob", "name", "mrn", "zip", "text",
    ];
    let vault = Vault::init(dir.path(), passphrase(PASSPHRASE), options())
        .await
        .expect("init");
    let mut issued = Vec::new();
    for (ns, value) in namespaces.iter().zip(values) {
        let token = ok(vault.tokenize(ns, &[value]).await.expect("tokenize")).remove(0);
        assert_ne!(token, value);
        issued.push(token);
    }
    vault.close().expect("close");

    let vault = Vault::open(dir.path(), passphrase(PASSPHRASE), options())
        .await
        .expect("reopen");
    for ((ns, value), token) in namespaces.iter().zip(values).zip(&issued) {
        assert_eq!(
            ok(vault.detokenize(ns, &[token]).await.expect("detokenize")),
            [value],
            "{ns}"
        );
        assert_eq!(
            ok(vault.tokenize(ns, &[value]).await.expect("tokenize")),
            std::slice::from_ref(token),
            "{ns}"
        );
    }
}

#[tokio::test]
async fn a_wrong_passphrase_is_refused_and_changes_nothing_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = Vault::init(dir.path(), passphrase(PASSPHRASE), options())
        .await
        .expect("init");
    ok(vault
        .tokenize("ssn", &["123-45-6789"])
        .await
        .expect("tokenize"));
    vault.close().expect("close");

    let before = hash_dir(dir.path());
    let wrong = Vault::open(
        dir.path(),
        passphrase("correct horse battery stable"),
        options(),
    )
    .await;
    assert!(
        matches!(wrong, Err(Error::WrongMasterKey)),
        "got {:?}",
        wrong.as_ref().err()
    );
    assert_eq!(
        wrong.err().map(|e| e.to_string()).as_deref(),
        Some("wrong passphrase or master key")
    );
    let other_kind = Vault::open(dir.path(), key_file(), options()).await;
    assert!(matches!(other_kind, Err(Error::MasterKey(_))));
    assert_eq!(hash_dir(dir.path()), before, "the data directory changed");
}

#[tokio::test]
async fn init_refuses_short_passphrases_and_existing_vaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(matches!(
        Vault::init(dir.path(), passphrase("short"), options()).await,
        Err(Error::WeakPassphrase { .. })
    ));
    new_vault(dir.path()).await.close().expect("close");
    assert!(matches!(
        Vault::init(dir.path(), key_file(), options()).await,
        Err(Error::AlreadyInitialized(_))
    ));
    let empty = tempfile::tempdir().expect("tempdir");
    assert!(matches!(
        Vault::open(empty.path(), key_file(), options()).await,
        Err(Error::NotInitialized(_))
    ));
}

#[tokio::test]
async fn a_tiny_domain_fills_without_overwriting_then_is_exhausted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = new_vault(dir.path()).await;
    vault
        .create_namespace(NamespaceSpec::new(
            "code3",
            FormatSpec::new(FormatKind::Alnum),
        ))
        .await
        .expect("create");
    let values: Vec<String> = (0..1000).map(|i| format!("{i:03}")).collect();
    let mut issued: HashMap<String, String> = HashMap::new();
    let mut exhausted = 0;
    for chunk in values.chunks(100) {
        for (value, result) in chunk
            .iter()
            .zip(vault.tokenize("code3", chunk).await.expect("tokenize"))
        {
            match result {
                Ok(token) => {
                    assert_ne!(&token, value);
                    assert!(issued.insert(value.clone(), token).is_none());
                }
                Err(e) => {
                    assert_eq!(e.code, ItemCode::ResourceExhausted, "{e}");
                    exhausted += 1;
                }
            }
        }
    }
    let distinct: HashSet<&String> = issued.values().collect();
    assert_eq!(distinct.len(), issued.len(), "a token was issued twice");
    // A value can never take itself, so the very last one may find no room.
    assert!(
        issued.len() >= 999 && issued.len() + exhausted == 1000,
        "{} issued",
        issued.len()
    );
    // Nothing was overwritten: every token still reveals its own value.
    let (values, tokens): (Vec<_>, Vec<_>) =
        issued.iter().map(|(v, t)| (v.clone(), t.clone())).unzip();
    assert_eq!(
        ok(vault
            .detokenize("code3", &tokens)
            .await
            .expect("detokenize")),
        values
    );

    // A random-mode namespace draws a new token per call: 999 of them fit
    // (never the value itself), the 1000th call finds the domain full.
    vault
        .create_namespace(
            NamespaceSpec::new("code3-random", FormatSpec::new(FormatKind::Alnum)).random(),
        )
        .await
        .expect("create");
    let mut tokens = HashSet::new();
    for _ in 0..10 {
        let batch = vec!["123"; 100];
        for result in vault
            .tokenize("code3-random", &batch)
            .await
            .expect("tokenize")
        {
            match result {
                Ok(token) => assert!(tokens.insert(token), "a random token was issued twice"),
                Err(e) => assert_eq!(e.code, ItemCode::ResourceExhausted),
            }
        }
    }
    assert_eq!(tokens.len(), 999);
    assert!(!tokens.contains("123"));
    let again = vault
        .tokenize("code3-random", &["123"])
        .await
        .expect("tokenize")
        .remove(0);
    assert_eq!(again.map_err(|e| e.code), Err(ItemCode::ResourceExhausted));
}

#[tokio::test]
async fn separator_formats_are_deterministic_on_their_digits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = new_vault(dir.path()).await;
    let tokens = ok(vault
        .tokenize("ssn", &["123-45-6789", "123456789"])
        .await
        .expect("tokenize"));
    let digits: String = tokens[0].chars().filter(char::is_ascii_digit).collect();
    assert_eq!(digits, tokens[1]);
    assert_eq!(tokens[0].len(), 11);
    // Detokenize prints the value in the shape of the token it is given.
    assert_eq!(
        ok(vault
            .detokenize("ssn", &[&tokens[1], &tokens[0]])
            .await
            .expect("detokenize")),
        ["123456789", "123-45-6789"]
    );

    let cards = ok(vault
        .tokenize("card", &["4111-1111-1111-1111", "4111 1111 1111 1111"])
        .await
        .expect("tokenize"));
    assert_eq!(cards[0].replace('-', " "), cards[1]);
    assert!(cards[0].ends_with("1111"));
}

#[tokio::test]
async fn bad_items_fail_alone_with_a_message_that_names_the_rule_not_the_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = new_vault(dir.path()).await;
    let secret_looking = "123-45-67890";
    let long = "x".repeat(5000);
    let results = vault
        .tokenize("ssn", &["123-45-6789", secret_looking, "", long.as_str()])
        .await
        .expect("tokenize");
    assert!(results[0].is_ok());
    for result in &results[1..] {
        let e = result.as_ref().expect_err("invalid");
        assert_eq!(e.code, ItemCode::InvalidArgument);
        assert!(
            e.message.starts_with("namespace \"ssn\": "),
            "{}",
            e.message
        );
        assert!(
            !e.message.contains(secret_looking) && !e.message.contains("xxxx"),
            "{}",
            e.message
        );
    }
    assert!(
        results[1]
            .as_ref()
            .is_err_and(|e| e.message.contains("ddd-dd-dddd"))
    );

    let detok = vault
        .detokenize("ssn", &["999-99-9999", "not a token"])
        .await
        .expect("detokenize");
    assert_eq!(
        detok[0].as_ref().map_err(|e| e.code),
        Err(ItemCode::NotFound)
    );
    assert_eq!(
        detok[1].as_ref().map_err(|e| e.code),
        Err(ItemCode::InvalidArgument)
    );
    assert!(
        !detok[0]
            .as_ref()
            .expect_err("missing")
            .message
            .contains("999")
    );

    assert!(matches!(
        vault.tokenize("nope", &["x"]).await,
        Err(Error::NamespaceNotFound(_))
    ));
    let too_many = vec!["123-45-6789"; 10_001];
    assert!(matches!(
        vault.tokenize("ssn", &too_many).await,
        Err(Error::TooManyItems {
            got: 10_001,
            limit: 10_000
        })
    ));
}

#[tokio::test]
async fn namespaces_separate_tokens_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = new_vault(dir.path()).await;
    let names: Vec<String> = vault.namespaces().into_iter().map(|ns| ns.name).collect();
    assert_eq!(
        names,
        [
            "card", "dob", "email", "mrn", "name", "phone", "ssn", "text", "zip"
        ]
    );
    let research = vault
        .create_namespace(NamespaceSpec::new(
            "ssn-research",
            FormatSpec::new(FormatKind::Ssn),
        ))
        .await
        .expect("create");
    assert!(matches!(
        vault
            .create_namespace(NamespaceSpec::new(
                "ssn-research",
                FormatSpec::new(FormatKind::Ssn)
            ))
            .await,
        Err(Error::NamespaceExists(_))
    ));
    assert!(matches!(
        vault
            .create_namespace(NamespaceSpec::new(
                "Bad Name",
                FormatSpec::new(FormatKind::Ssn)
            ))
            .await,
        Err(Error::InvalidNamespace(_))
    ));
    let a = ok(vault
        .tokenize("ssn", &["123-45-6789"])
        .await
        .expect("tokenize"));
    let b = ok(vault
        .tokenize("ssn-research", &["123-45-6789"])
        .await
        .expect("tokenize"));
    assert_ne!(a, b);
    // The token of one namespace means nothing in the other.
    assert_eq!(
        vault
            .detokenize("ssn-research", &a)
            .await
            .expect("detokenize")[0]
            .as_ref()
            .map_err(|e| e.code),
        Err(ItemCode::NotFound)
    );
    vault.close().expect("close");

    let vault = Vault::open(dir.path(), key_file(), options())
        .await
        .expect("open");
    assert!(vault.namespaces().contains(&research));
    assert_eq!(
        ok(vault
            .tokenize("ssn-research", &["123-45-6789"])
            .await
            .expect("tokenize")),
        b
    );
}

#[tokio::test]
async fn random_namespaces_issue_a_fresh_token_every_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = new_vault(dir.path()).await;
    vault
        .create_namespace(NamespaceSpec::new("sex", FormatSpec::new(FormatKind::Opaque)).random())
        .await
        .expect("create");
    let tokens = ok(vault.tokenize("sex", &["F", "F"]).await.expect("tokenize"));
    assert_ne!(tokens[0], tokens[1]);
    assert_eq!(
        ok(vault.detokenize("sex", &tokens).await.expect("detokenize")),
        ["F", "F"]
    );
}

#[tokio::test]
async fn repeated_values_are_served_without_the_writer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = VaultOptions {
        store: phivault::store::StoreOptions {
            durability: Durability::Os,
            ..Default::default()
        },
        ..options()
    };
    let vault = Vault::init(dir.path(), key_file(), options.clone())
        .await
        .expect("init");
    let values: Vec<String> = (0..500)
        .map(|i| format!("{:09}", 100_000_000 + i))
        .collect();
    let first = ok(vault.tokenize("ssn", &values).await.expect("tokenize"));
    let jobs = vault.writer_stats().jobs;
    assert_eq!(
        ok(vault.tokenize("ssn", &values).await.expect("tokenize")),
        first
    );
    assert_eq!(
        vault.writer_stats().jobs,
        jobs,
        "a cache hit must not reach the writer"
    );
    vault.close().expect("close");

    // Without the cache the forward index answers, still without a write.
    let cold = Vault::open(
        dir.path(),
        key_file(),
        VaultOptions {
            cache_entries: 0,
            ..options
        },
    )
    .await
    .expect("open");
    assert_eq!(
        ok(cold.tokenize("ssn", &values).await.expect("tokenize")),
        first
    );
    assert_eq!(cold.writer_stats().jobs, 0);
}

#[tokio::test]
async fn clients_authenticate_until_revoked_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = new_vault(dir.path()).await;
    let (billing, key) = vault
        .create_client("billing", &["detokenize-masked:ssn"])
        .await
        .expect("create");
    let bearer = format!("Bearer {}", key.expose());
    assert_eq!(
        vault.authenticate(Some(&bearer)),
        Ok(std::sync::Arc::new(billing.clone()))
    );
    assert!(matches!(
        vault.create_client("bad", &["reveal:ssn"]).await,
        Err(Error::InvalidClient(_))
    ));
    assert!(matches!(
        vault.create_client("none", &[] as &[&str]).await,
        Err(Error::InvalidClient(_))
    ));
    vault.close().expect("close");

    let vault = Vault::open(dir.path(), key_file(), options())
        .await
        .expect("open");
    assert_eq!(
        vault.authenticate(Some(&bearer)),
        Ok(std::sync::Arc::new(billing.clone())),
        "clients persist"
    );
    let revoked = vault.revoke_client(&billing.id).await.expect("revoke");
    assert!(revoked.revoked_at.is_some());
    assert_eq!(
        vault.authenticate(Some(&bearer)),
        Err(phivault::auth::AuthError::Revoked)
    );
    assert!(matches!(
        vault.revoke_client("0000000000000000").await,
        Err(Error::ClientNotFound(_))
    ));
    vault.close().expect("close");

    let vault = Vault::open(dir.path(), key_file(), options())
        .await
        .expect("open");
    assert_eq!(
        vault.authenticate(Some(&bearer)),
        Err(phivault::auth::AuthError::Revoked),
        "revocation persists"
    );
    assert_eq!(vault.clients().len(), 1);
}
