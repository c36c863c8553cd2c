//! Key lifecycle in the core: rotation, backup, verify and rekey against a
//! real RocksDB in a temporary directory.

use std::path::Path;
use std::sync::Arc;

use phivault::store::{Cf, Location};
use phivault::{Error, KeysetState, MasterKey, ProblemKind, RotationPhase, Vault, VaultOptions};
use zeroize::Zeroizing;

fn key_file() -> MasterKey {
    MasterKey::KeyFile(Zeroizing::new([0x5a; 32]))
}

fn passphrase(p: &str) -> MasterKey {
    MasterKey::Passphrase(Zeroizing::new(p.to_owned()))
}

fn ok(results: Vec<phivault::ItemResult>) -> Vec<String> {
    results
        .into_iter()
        .map(|r| r.expect("item succeeds"))
        .collect()
}

/// Values for three kinds of namespace: separators (ssn), letters (name) and
/// random-mode free text, so every path of a rotation is walked.
struct Loaded {
    ssns: Vec<String>,
    ssn_tokens: Vec<String>,
    names: Vec<String>,
    name_tokens: Vec<String>,
    texts: Vec<String>,
    text_tokens: Vec<String>,
}

async fn load(vault: &Vault, n: usize) -> Loaded {
    let ssns: Vec<String> = (0..n)
        .map(|i| format!("{:03}-{:02}-{:04}", 100 + i % 700, 10 + i % 89, i))
        .collect();
    let names: Vec<String> = (0..n)
        .map(|i| format!("Patient{}", to_letters(i)))
        .collect();
    let texts: Vec<String> = (0..n / 10).map(|i| format!("note {i}: stable")).collect();
    let mut loaded = Loaded {
        ssn_tokens: Vec::new(),
        name_tokens: Vec::new(),
        text_tokens: Vec::new(),
        ssns,
        names,
        texts,
    };
    for chunk in loaded.ssns.chunks(1000) {
        loaded
            .ssn_tokens
            .extend(ok(vault.tokenize("ssn", chunk).await.expect("tokenize")));
    }
    for chunk in loaded.names.chunks(1000) {
        loaded
            .name_tokens
            .extend(ok(vault.tokenize("name", chunk).await.expect("tokenize")));
    }
    vault
        .create_namespace(phivault::NamespaceSpec {
            name: "notes".into(),
            format: phivault::format::FormatSpec::new(phivault::format::FormatKind::Opaque),
            deterministic: false,
        })
        .await
        .expect("namespace");
    loaded.text_tokens = ok(vault
        .tokenize("notes", &loaded.texts)
        .await
        .expect("tokenize"));
    loaded
}

fn to_letters(mut i: usize) -> String {
    let mut out = String::new();
    loop {
        out.push((b'a' + (i % 26) as u8) as char);
        i /= 26;
        if i == 0 {
            return out;
        }
    }
}

/// Every token still reveals its value, and every deterministic value still
/// gets its token.
async fn assert_intact(vault: &Vault, loaded: &Loaded) {
    for (ns, values, tokens) in [
        ("ssn", &loaded.ssns, &loaded.ssn_tokens),
        ("name", &loaded.names, &loaded.name_tokens),
        ("notes", &loaded.texts, &loaded.text_tokens),
    ] {
        for (values, tokens) in values.chunks(1000).zip(tokens.chunks(1000)) {
            let revealed = ok(vault.detokenize(ns, tokens).await.expect("detokenize"));
            assert_eq!(&revealed, values, "{ns}: every token reveals its value");
            if ns != "notes" {
                let again = ok(vault.tokenize(ns, values).await.expect("tokenize"));
                assert_eq!(&again, tokens, "{ns}: no token changed");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_moves_every_mapping_keeps_every_token_and_destroys_the_old_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = Arc::new(
        Vault::init(dir.path(), key_file(), VaultOptions::default())
            .await
            .expect("init"),
    );
    let loaded = load(&vault, 5000).await;
    let before = vault.verify().await.expect("verify");
    assert!(before.is_clean(), "{:?}", before.problems);
    assert_eq!(
        before.rows_by_keyset.keys().copied().collect::<Vec<_>>(),
        [1]
    );

    assert_eq!(vault.rotate_keys().await.expect("rotate"), 2);
    // New writes use the new keyset at once.
    assert_eq!(vault.active_keyset_version(), 2);
    let fresh = ok(vault
        .tokenize("ssn", &["999-99-0001"])
        .await
        .expect("tokenize"));
    vault.rotation_settled().await;

    let status = vault.key_status().await.expect("status");
    assert_eq!(status.active, 2);
    assert!(status.rotation.is_none(), "the rotation finished");
    let states: Vec<_> = status
        .versions
        .iter()
        .map(|v| (v.version, v.state))
        .collect();
    assert!(
        matches!(states[0], (1, KeysetState::Destroyed { .. })),
        "{states:?}"
    );
    assert_eq!(states[1], (2, KeysetState::Active));
    let last = status.last_rotation.expect("recorded");
    assert_eq!(last.target, 2);
    assert!(
        last.mappings >= 10_500,
        "{} mappings examined",
        last.mappings
    );

    assert_intact(&vault, &loaded).await;
    assert_eq!(
        ok(vault
            .tokenize("ssn", &["999-99-0001"])
            .await
            .expect("tokenize")),
        fresh
    );
    let after = vault.verify().await.expect("verify");
    assert!(after.is_clean(), "{:?}", after.problems);
    assert_eq!(
        after.rows_by_keyset.keys().copied().collect::<Vec<_>>(),
        [2]
    );
    assert_eq!(after.reverse_rows, before.reverse_rows + 1);

    // The destroyed keyset's material is gone from the database: the vault
    // reopens with only version 2.
    let vault = Arc::into_inner(vault).expect("sole owner");
    vault.close().expect("close");
    let reopened = Vault::open(dir.path(), key_file(), VaultOptions::default())
        .await
        .expect("open");
    assert_intact(&reopened, &loaded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_rotation_waits_for_the_first_and_then_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let throttled = VaultOptions {
        rotation_max_rate: Some(500),
        ..VaultOptions::default()
    };
    let vault = Arc::new(
        Vault::init(dir.path(), key_file(), throttled)
            .await
            .expect("init"),
    );
    let loaded = load(&vault, 3000).await;
    vault.rotate_keys().await.expect("rotate");
    let refused = vault.rotate_keys().await.expect_err("one at a time");
    assert!(matches!(refused, Error::RotationInProgress), "{refused}");
    assert!(refused.to_string().contains("already in progress"));
    let running = vault
        .key_status()
        .await
        .expect("status")
        .rotation
        .expect("running");
    assert_eq!(
        (running.target, running.phase),
        (2, RotationPhase::Migrating)
    );

    // Stopped mid-way (as at shutdown), reopened without the throttle: the
    // job resumes from its cursor and completes.
    vault.stop_background_jobs().await;
    let vault = Arc::into_inner(vault).expect("sole owner");
    vault.close().expect("close");
    let vault = Arc::new(
        Vault::open(dir.path(), key_file(), VaultOptions::default())
            .await
            .expect("open"),
    );
    assert!(vault.key_status().await.expect("status").rotation.is_some());
    vault.resume_background_jobs().await.expect("resume");
    vault.rotation_settled().await;
    assert!(vault.key_status().await.expect("status").rotation.is_none());

    // Back to back.
    assert_eq!(vault.rotate_keys().await.expect("rotate"), 3);
    vault.rotation_settled().await;
    let status = vault.key_status().await.expect("status");
    let states: Vec<_> = status.versions.iter().map(|v| v.state).collect();
    assert!(
        matches!(
            states[..],
            [
                KeysetState::Destroyed { .. },
                KeysetState::Destroyed { .. },
                KeysetState::Active
            ]
        ),
        "{states:?}, rotation {:?}",
        status.rotation
    );
    assert_intact(&vault, &loaded).await;
    assert!(vault.verify().await.expect("verify").is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_a_flipped_ciphertext_byte_and_a_deleted_forward_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = Vault::init(dir.path(), key_file(), VaultOptions::default())
        .await
        .expect("init");
    let loaded = load(&vault, 100).await;
    vault.close().expect("close");
    drop(loaded);

    // Damage two rows behind the vault's back.
    {
        let names = Cf::ALL.map(Cf::name);
        let db =
            rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.path(), names).expect("open");
        let reverse = db.cf_handle("reverse").expect("cf");
        let (key, mut value) = db
            .iterator_cf(reverse, rocksdb::IteratorMode::Start)
            .nth(10)
            .expect("row")
            .expect("read");
        let last = value.len() - 1;
        value[last] ^= 0x01;
        db.put_cf(reverse, &key, &value).expect("flip");
        let forward = db.cf_handle("forward").expect("cf");
        // An entry of another mapping than the flipped row's (whose forward
        // entry verify does not look for once its row fails to open): the
        // entry's value is `token ‖ 16-byte binding`, the row's key
        // `namespace ‖ token`.
        let flipped = key;
        let (key, _) = db
            .iterator_cf(forward, rocksdb::IteratorMode::Start)
            .map(|entry| entry.expect("read"))
            .filter(|(fkey, fvalue)| {
                let token = &fvalue[..fvalue.len().saturating_sub(16)];
                !(fkey[..4] == flipped[..4] && token == &flipped[4..])
            })
            .nth(20)
            .expect("entry");
        db.delete_cf(forward, &key).expect("delete");
    }

    let vault = Vault::open(dir.path(), key_file(), VaultOptions::default())
        .await
        .expect("open");
    let report = vault.verify().await.expect("verify");
    assert!(!report.is_clean());
    assert_eq!(report.counts.get(&ProblemKind::IntegrityFailure), Some(&1));
    assert_eq!(report.counts.get(&ProblemKind::MissingForward), Some(&1));
    assert_eq!(report.counts.len(), 2, "{:?}", report.counts);
    let damaged = &report.problems[0];
    assert_eq!(damaged.table, "reverse");
    assert_eq!(damaged.row, 11);
    let text = report
        .problems
        .iter()
        .map(ToString::to_string)
        .collect::<String>();
    assert!(!text.contains("Patient") && !text.contains("-"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_replaces_the_passphrase_and_keeps_every_mapping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = "correct horse battery staple";
    let new = "a completely different passphrase";
    let vault = Vault::init(dir.path(), passphrase(old), VaultOptions::default())
        .await
        .expect("init");
    let tokens = ok(vault
        .tokenize("ssn", &["123-45-6789"])
        .await
        .expect("tokenize"));
    vault.close().expect("close");

    let weak = Vault::rekey(
        &Location::directory(dir.path()),
        passphrase(old),
        passphrase("short"),
        Default::default(),
    )
    .await
    .expect_err("weak");
    assert!(matches!(weak, Error::WeakPassphrase { .. }));
    let wrong = Vault::rekey(
        &Location::directory(dir.path()),
        passphrase(new),
        passphrase(new),
        Default::default(),
    )
    .await
    .expect_err("wrong old passphrase");
    assert!(matches!(wrong, Error::WrongMasterKey));

    // The keysets as wrapped under the old passphrase.
    let old_rows: Vec<Vec<u8>> = {
        let store = phivault::store::Store::open_read_only(dir.path(), &Default::default())
            .expect("read-only");
        store
            .scan(Cf::Keys)
            .map(|e| e.expect("row").1.to_vec())
            .collect()
    };
    assert!(!old_rows.is_empty());

    Vault::rekey(
        &Location::directory(dir.path()),
        passphrase(old),
        passphrase(new),
        Default::default(),
    )
    .await
    .expect("rekey");
    // Rekey compacts them off the disk: no file of the vault holds them.
    for entry in std::fs::read_dir(dir.path()).expect("dir") {
        let path = entry.expect("entry").path();
        let bytes = std::fs::read(&path).expect("read");
        for row in &old_rows {
            assert!(
                !bytes.windows(row.len()).any(|w| w == row.as_slice()),
                "{} still holds a keyset wrapped under the old passphrase",
                path.display()
            );
        }
    }
    let refused = Vault::open(dir.path(), passphrase(old), VaultOptions::default()).await;
    assert!(matches!(refused, Err(Error::WrongMasterKey)));
    let vault = Vault::open(dir.path(), passphrase(new), VaultOptions::default())
        .await
        .expect("the new passphrase unseals");
    assert_eq!(
        ok(vault.detokenize("ssn", &tokens).await.expect("detokenize")),
        ["123-45-6789"]
    );
    vault.close().expect("close");

    // And on to a key file.
    Vault::rekey(
        &Location::directory(dir.path()),
        passphrase(new),
        key_file(),
        Default::default(),
    )
    .await
    .expect("rekey to a key file");
    assert!(
        Vault::open(dir.path(), key_file(), VaultOptions::default())
            .await
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_refuse_relative_existing_and_confined_paths_then_restore() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let vault = Vault::init(&data, key_file(), VaultOptions::default())
        .await
        .expect("init");
    let tokens = ok(vault
        .tokenize("mrn", &["MRN0001", "MRN0002"])
        .await
        .expect("tokenize"));
    for (path, within) in [
        (Path::new("relative/backup").to_path_buf(), None),
        (data.clone(), None),
        (dir.path().join("missing/parent/b"), None),
        (dir.path().join("b"), Some(data.as_path())),
    ] {
        let refused = vault.backup(&path, within).await.expect_err("refused");
        assert!(matches!(refused, Error::InvalidBackupPath(_)), "{refused}");
    }
    let target = dir.path().join("backup-1");
    let info = vault
        .backup(&target, Some(dir.path()))
        .await
        .expect("backup");
    assert!(info.bytes > 0);
    vault.close().expect("close");

    opens_with_both_mrns(&target, &tokens).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_symlink_never_lets_a_backup_touch_the_live_vault() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let backups = dir.path().join("backups");
    std::fs::create_dir(&backups).expect("backup dir");
    let vault = Vault::init(&data, key_file(), VaultOptions::default())
        .await
        .expect("init");
    let tokens = ok(vault
        .tokenize("mrn", &["MRN0001", "MRN0002"])
        .await
        .expect("tokenize"));
    let live_files = || {
        let mut names: Vec<_> = std::fs::read_dir(&data)
            .expect("data dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        names.sort();
        names
    };
    let before = live_files();

    // RocksDB's checkpoint empties `<path>.tmp` first, following links: a
    // link planted there pointing at the live data must change nothing.
    let target = backups.join("nightly");
    std::os::unix::fs::symlink(&data, backups.join("nightly.tmp")).expect("plant");
    let info = vault
        .backup(&target, Some(&backups))
        .await
        .expect("the backup goes through a private staging directory");
    assert!(info.bytes > 0);
    // A checkpoint flushes the memtables (new table files, a new log); every
    // file that describes the database is still there.
    let after = live_files();
    for name in before
        .iter()
        .filter(|n| !n.to_string_lossy().ends_with(".log"))
    {
        assert!(
            after.contains(name),
            "{name:?} was deleted from the live vault"
        );
    }
    assert_eq!(
        ok(vault.detokenize("mrn", &tokens).await.expect("detokenize")),
        ["MRN0001", "MRN0002"]
    );

    // Owner-only: the directory 0700, every file 0600; no staging left.
    let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&target), 0o700);
    for entry in std::fs::read_dir(&target).expect("backup") {
        assert_eq!(mode(&entry.expect("entry").path()), 0o600);
    }
    let leftovers: Vec<_> = std::fs::read_dir(&backups)
        .expect("backups")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".phivault-backup-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A link anywhere on the way is refused, inside the allowed directory
    // or not.
    let linked = dir.path().join("linked");
    std::os::unix::fs::symlink(&backups, &linked).expect("link");
    for within in [None, Some(backups.as_path())] {
        let refused = vault
            .backup(&linked.join("b"), within)
            .await
            .expect_err("a symlinked component");
        assert!(
            matches!(&refused, Error::InvalidBackupPath(why) if why.contains("symbolic link")),
            "{refused}"
        );
    }
    // So is a dangling link at the destination itself.
    std::os::unix::fs::symlink(dir.path().join("nowhere"), backups.join("dangling")).expect("link");
    assert!(vault.backup(&backups.join("dangling"), None).await.is_err());
    vault.close().expect("close");
    opens_with_both_mrns(&data, &tokens).await;
}

/// The vault at `path` opens, reveals `MRN0001` and `MRN0002` from
/// `tokens`, and verifies clean.
async fn opens_with_both_mrns(path: &Path, tokens: &[String]) {
    let vault = Vault::open(path, key_file(), VaultOptions::default())
        .await
        .expect("the vault opens");
    assert_eq!(
        ok(vault.detokenize("mrn", tokens).await.expect("detokenize")),
        ["MRN0001", "MRN0002"]
    );
    assert!(vault.verify().await.expect("verify").is_clean());
}
