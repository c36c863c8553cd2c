//! The audit trail in the core: the hash chain against a real RocksDB, its
//! tamper evidence, the disclosure index across key rotations, and what the
//! stored records hold.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use phivault::store::{Cf, Location, Store, StoreOptions};
use phivault::{AuditEvent, Error, MasterKey, TokenMark, Vault, VaultOptions, verify_audit_at};
use zeroize::Zeroizing;

fn key_file() -> MasterKey {
    MasterKey::KeyFile(Zeroizing::new([0x3c; 32]))
}

/// What the server records for a detokenize call by `client` that revealed
/// every one of `tokens`.
fn reveal(
    vault: &Vault,
    client: &str,
    namespace: &str,
    tokens: &[&str],
    masked: bool,
) -> AuditEvent {
    AuditEvent {
        client_id: client.to_owned(),
        authenticated: true,
        rpc: "/phivault.v1.Tokenizer/Detokenize".into(),
        namespace: namespace.to_owned(),
        items: tokens.len() as u32,
        outcome: 0,
        request_id: format!("req-{client}"),
        target: String::new(),
        masked,
        tokens: tokens
            .iter()
            .map(|t| TokenMark {
                mac: vault.token_mark(namespace, t),
                revealed: true,
            })
            .collect(),
        ..AuditEvent::default()
    }
}

fn refused(client: &str) -> AuditEvent {
    AuditEvent {
        client_id: client.to_owned(),
        authenticated: true,
        rpc: "/phivault.v1.Tokenizer/Detokenize".into(),
        namespace: "ssn".into(),
        items: 1,
        outcome: 7,
        request_id: "refused".into(),
        ..AuditEvent::default()
    }
}

async fn open(path: &Path) -> Arc<Vault> {
    Arc::new(
        Vault::open(path, key_file(), VaultOptions::default())
            .await
            .expect("open"),
    )
}

fn close(vault: Arc<Vault>) {
    Arc::into_inner(vault)
        .expect("no other handle")
        .close()
        .expect("close");
}

/// A vault with `n` records (a mix of reveals and refusals), closed.
async fn vault_with_records(dir: &Path, n: u64) {
    let vault = Vault::init(dir, key_file(), VaultOptions::default())
        .await
        .expect("init");
    let token = vault
        .tokenize("ssn", &["123-45-6789"])
        .await
        .expect("tokenize")
        .remove(0)
        .expect("token");
    for i in 0..n {
        let event = if i % 3 == 0 {
            refused("c0ffee0000000001")
        } else {
            reveal(&vault, "c0ffee0000000002", "ssn", &[&token], i % 2 == 0)
        };
        assert_eq!(vault.audit(&event).await.expect("append"), i + 1);
    }
    vault.close().expect("close");
}

/// Edits the closed vault's audit column family directly, as an attacker
/// with access to the files would.
async fn tamper(dir: &Path, edit: impl FnOnce(&mut phivault::store::Txn<'_>) + Send + 'static) {
    let store = Store::open(dir, &StoreOptions::default()).expect("open store");
    store
        .write(move |txn| {
            edit(txn);
            Ok(())
        })
        .await
        .expect("tamper");
    store.close().expect("close store");
}

fn record(dir: &Path, seq: u64) -> Vec<u8> {
    let store = Store::open_read_only(dir, &StoreOptions::default()).expect("open");
    store
        .get(Cf::Audit, &seq.to_be_bytes())
        .expect("read")
        .expect("record exists")
}

#[tokio::test]
async fn the_chain_verifies_across_restarts_and_a_key_rotation() {
    let dir = tempfile::tempdir().expect("tempdir");
    vault_with_records(dir.path(), 5).await;
    let vault = open(dir.path()).await;
    let token = vault
        .tokenize("ssn", &["123-45-6789"])
        .await
        .expect("tokenize")
        .remove(0)
        .expect("token");
    vault
        .audit(&reveal(&vault, "c0ffee0000000003", "ssn", &[&token], false))
        .await
        .expect("append after restart");
    vault.rotate_keys().await.expect("rotate");
    vault.rotation_settled().await;
    vault
        .audit(&reveal(&vault, "c0ffee0000000004", "ssn", &[&token], false))
        .await
        .expect("append after rotation");
    let report = vault.verify_audit().await.expect("verify");
    assert!(report.is_intact(), "{report:?}");
    assert_eq!((report.records, report.head_seq), (7, 7));
    let records = vault.audit_records(0, u64::MAX, 100).await.expect("read");
    assert_eq!(records.len(), 7);
    assert!(
        records
            .windows(2)
            .all(|w| w[1].prev_hash == w[0].hash && w[1].time_ms >= w[0].time_ms)
    );
    assert_eq!(
        (records[5].keyset_version, records[6].keyset_version),
        (1, 2)
    );
    close(vault);

    let offline = verify_audit_at(&Location::directory(dir.path()))
        .await
        .expect("offline verify");
    assert!(offline.is_intact());
    assert_eq!(offline.records, 7);
}

#[tokio::test]
async fn an_edited_record_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    vault_with_records(dir.path(), 10).await;
    let mut edited = record(dir.path(), 4);
    let last = edited.len() - 1;
    edited[last] ^= 0x01;
    tamper(dir.path(), move |txn| {
        txn.put(Cf::Audit, 4u64.to_be_bytes(), edited)
    })
    .await;
    let report = verify_audit_at(&Location::directory(dir.path()))
        .await
        .expect("verify");
    assert_eq!(report.first_bad.map(|(seq, _)| seq), Some(4), "{report:?}");
    assert_eq!(report.records, 3);
}

#[tokio::test]
async fn a_deleted_record_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    vault_with_records(dir.path(), 10).await;
    tamper(dir.path(), |txn| txn.delete(Cf::Audit, 6u64.to_be_bytes())).await;
    let report = verify_audit_at(&Location::directory(dir.path()))
        .await
        .expect("verify");
    assert_eq!(report.first_bad.map(|(seq, _)| seq), Some(6), "{report:?}");
}

#[tokio::test]
async fn reordered_records_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    vault_with_records(dir.path(), 10).await;
    let (a, b) = (record(dir.path(), 7), record(dir.path(), 8));
    tamper(dir.path(), move |txn| {
        txn.put(Cf::Audit, 7u64.to_be_bytes(), b);
        txn.put(Cf::Audit, 8u64.to_be_bytes(), a);
    })
    .await;
    let report = verify_audit_at(&Location::directory(dir.path()))
        .await
        .expect("verify");
    assert_eq!(report.first_bad.map(|(seq, _)| seq), Some(7), "{report:?}");
}

#[tokio::test]
async fn a_truncated_chain_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    vault_with_records(dir.path(), 10).await;
    tamper(dir.path(), |txn| {
        for seq in 8..=10u64 {
            txn.delete(Cf::Audit, seq.to_be_bytes());
        }
    })
    .await;
    let report = verify_audit_at(&Location::directory(dir.path()))
        .await
        .expect("verify");
    assert_eq!(report.first_bad.map(|(seq, _)| seq), Some(8), "{report:?}");
    assert_eq!((report.records, report.head_seq), (7, 10));
}

/// A truncation that also moves the head back to the last record kept is a
/// consistent chain: the keyless walk cannot tell. The head's MAC, under a
/// key derived from the KEK, can: the vault refuses to start.
#[tokio::test]
async fn a_truncation_with_a_rewritten_head_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    vault_with_records(dir.path(), 10).await;
    let seventh = record(dir.path(), 7);
    // format ‖ time (8) ‖ prev (32) ‖ hash (32) ‖ body
    let time: [u8; 8] = seventh[1..9].try_into().expect("time");
    let hash: [u8; 32] = seventh[41..73].try_into().expect("hash");
    tamper(dir.path(), move |txn| {
        for seq in 8..=10u64 {
            txn.delete(Cf::Audit, seq.to_be_bytes());
        }
        let mut head = Vec::new();
        head.extend_from_slice(&7u64.to_be_bytes());
        head.extend_from_slice(&time);
        head.extend_from_slice(&hash);
        txn.put(
            Cf::Meta,
            phivault::store::rocks::keys::META_AUDIT_HEAD,
            head,
        );
    })
    .await;
    let report = verify_audit_at(&Location::directory(dir.path()))
        .await
        .expect("verify");
    assert!(report.is_intact(), "the links alone look fine: {report:?}");
    match Vault::open(dir.path(), key_file(), VaultOptions::default()).await {
        Err(phivault::Error::Store(phivault::store::StoreError::Tampered { table, row })) => {
            assert_eq!((table, row.as_str()), ("meta", "\"audit_head\""));
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("a rewritten audit trail opened"),
    }
}

/// A head deleted while records exist would let the next record overwrite
/// the first: the vault refuses to start.
#[tokio::test]
async fn a_deleted_audit_head_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    vault_with_records(dir.path(), 3).await;
    tamper(dir.path(), |txn| {
        txn.delete(Cf::Meta, phivault::store::rocks::keys::META_AUDIT_HEAD)
    })
    .await;
    assert!(matches!(
        Vault::open(dir.path(), key_file(), VaultOptions::default()).await,
        Err(phivault::Error::Store(
            phivault::store::StoreError::Tampered { table: "meta", .. }
        ))
    ));
    // `audit verify` still answers with a report that says where.
    let report = verify_audit_at(&Location::directory(dir.path()))
        .await
        .expect("a report");
    assert_eq!(
        report.first_bad,
        Some((1, "records follow the head kept in meta")),
        "{report:?}"
    );
}

/// An audit key removed while records exist is never silently replaced.
#[tokio::test]
async fn a_missing_audit_key_is_not_recreated_when_records_exist() {
    let dir = tempfile::tempdir().expect("tempdir");
    vault_with_records(dir.path(), 3).await;
    tamper(dir.path(), |txn| {
        txn.delete(Cf::Meta, phivault::store::rocks::keys::META_AUDIT_KEY)
    })
    .await;
    let refused = Vault::open(dir.path(), key_file(), VaultOptions::default()).await;
    assert!(
        matches!(&refused, Err(e) if e.to_string().contains("audit key is missing")),
        "{:?}",
        refused.err().map(|e| e.to_string())
    );
}

#[tokio::test]
async fn the_verify_command_names_the_first_bad_record_and_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    vault_with_records(dir.path(), 6).await;
    let verify = || {
        Command::new(env!("CARGO_BIN_EXE_phivault"))
            .args(["audit", "verify", "--data-dir"])
            .arg(dir.path())
            .env("PHIVAULT_LOG", "warn")
            .output()
            .expect("run phivault audit verify")
    };
    let intact = verify();
    let text = String::from_utf8_lossy(&intact.stdout);
    assert!(intact.status.success(), "{text}");
    assert!(text.contains("intact (6 records"), "{text}");

    tamper(dir.path(), |txn| txn.delete(Cf::Audit, 3u64.to_be_bytes())).await;
    let broken = verify();
    let text = String::from_utf8_lossy(&broken.stdout);
    assert!(!broken.status.success());
    assert!(text.contains("BROKEN at record 3"), "{text}");
}

#[tokio::test]
async fn disclosures_come_from_the_index_across_rotations_and_pages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = Arc::new(
        Vault::init(dir.path(), key_file(), VaultOptions::default())
            .await
            .expect("init"),
    );
    let tokens: Vec<String> = vault
        .tokenize("ssn", &["123-45-6789", "987-65-4321"])
        .await
        .expect("tokenize")
        .into_iter()
        .map(|t| t.expect("token"))
        .collect();
    let (wanted, other) = (tokens[0].as_str(), tokens[1].as_str());
    vault
        .audit(&reveal(
            &vault,
            "aaaa000000000001",
            "ssn",
            &[wanted, other],
            false,
        ))
        .await
        .expect("a");
    vault
        .audit(&reveal(&vault, "bbbb000000000002", "ssn", &[wanted], true))
        .await
        .expect("b");
    vault.audit(&refused("cccc000000000003")).await.expect("c");
    vault
        .audit(&reveal(&vault, "dddd000000000004", "ssn", &[other], false))
        .await
        .expect("d");
    // A token asked for but not revealed (say NOT_FOUND) is no disclosure.
    let mut unrevealed = reveal(&vault, "eeee000000000005", "ssn", &[wanted], false);
    unrevealed.tokens[0].revealed = false;
    vault.audit(&unrevealed).await.expect("e");

    vault.rotate_keys().await.expect("rotate");
    vault.rotation_settled().await;
    // The same token written without its dashes is the same token.
    let undashed = wanted.replace('-', "");
    vault
        .audit(&reveal(
            &vault,
            "ffff000000000006",
            "ssn",
            &[&undashed],
            false,
        ))
        .await
        .expect("f");

    let (found, next) = vault
        .disclosures("ssn", wanted, 0, 0)
        .await
        .expect("disclosures");
    let who: Vec<(&str, bool, u32)> = found
        .iter()
        .map(|d| (d.client_id.as_str(), d.masked, d.keyset_version))
        .collect();
    assert_eq!(
        who,
        [
            ("aaaa000000000001", false, 1),
            ("bbbb000000000002", true, 1),
            ("ffff000000000006", false, 2)
        ]
    );
    assert_eq!(next, None);
    assert_eq!(found[1].request_id, "req-bbbb000000000002");

    let (first, next) = vault
        .disclosures("ssn", wanted, 0, 2)
        .await
        .expect("page 1");
    assert_eq!(first.len(), 2);
    let next = next.expect("a second page");
    let (second, last) = vault
        .disclosures("ssn", wanted, next, 2)
        .await
        .expect("page 2");
    assert_eq!(
        second.iter().map(|d| d.seq).collect::<Vec<_>>(),
        [found[2].seq]
    );
    assert_eq!(last, None);

    assert!(matches!(
        vault.disclosures("ssn", "not a token", 0, 0).await,
        Err(phivault::Error::InvalidToken(_))
    ));
    assert!(matches!(
        vault.disclosures("nope", wanted, 0, 0).await,
        Err(phivault::Error::NamespaceNotFound(_))
    ));
    close(vault);
}

#[tokio::test]
async fn records_hold_marks_never_values_tokens_or_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let canary = "Zebulon Canarywhistle";
    let vault = Vault::init(dir.path(), key_file(), VaultOptions::default())
        .await
        .expect("init");
    let token = vault
        .tokenize("name", &[canary])
        .await
        .expect("tokenize")
        .remove(0)
        .expect("token");
    for masked in [false, true] {
        vault
            .audit(&reveal(
                &vault,
                "c0ffee0000000009",
                "name",
                &[&token],
                masked,
            ))
            .await
            .expect("append");
    }
    vault.close().expect("close");
    let store = Store::open_read_only(dir.path(), &StoreOptions::default()).expect("open");
    let mut records = 0;
    for cf in [Cf::Audit, Cf::Disclosures] {
        for entry in store.scan(cf) {
            let (key, value) = entry.expect("read");
            for needle in [canary.as_bytes(), token.as_bytes(), &token.as_bytes()[..6]] {
                for hay in [&key[..], &value[..]] {
                    assert!(
                        !hay.windows(needle.len()).any(|w| w == needle),
                        "{} holds a value or token",
                        cf.name()
                    );
                }
            }
            records += usize::from(cf == Cf::Audit);
        }
    }
    assert_eq!(records, 2);
}

/// A served vault's chain is walked in chunks while calls go on appending:
/// records that arrive during the walk are not a broken chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walk_beside_appends_finds_the_chain_intact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = Arc::new(
        Vault::init(dir.path(), key_file(), VaultOptions::default())
            .await
            .expect("init"),
    );
    // More than one chunk of the walk (4,096 records), in few commits.
    let batch: Vec<AuditEvent> = (0..1000).map(|_| refused("c0ffee0000000001")).collect();
    for _ in 0..5 {
        vault.audit_batch(&batch).await.expect("append");
    }
    let appending = {
        let vault = Arc::clone(&vault);
        tokio::spawn(async move {
            for _ in 0..400 {
                vault
                    .audit(&refused("c0ffee0000000002"))
                    .await
                    .expect("append");
            }
        })
    };
    for _ in 0..5 {
        let report = vault.verify_audit().await.expect("verify");
        assert!(report.is_intact(), "{:?}", report.first_bad);
        assert!(report.records >= 5000);
    }
    appending.await.expect("appender");
    let report = vault.verify_audit().await.expect("verify");
    assert_eq!((report.records, report.first_bad), (5400, None));
    close(vault);
}

/// A new vault in a database of a PostgreSQL server of its own (`None`,
/// said on stderr, where PostgreSQL is missing and the run allows it).
async fn vault_in_postgres() -> Option<(phivault_tests::postgres::Postgres, Location, Arc<Vault>)> {
    let server = match phivault_tests::postgres::Postgres::start() {
        Ok(server) => server,
        Err(why) if std::env::var_os("PHIVAULT_TESTS_WITHOUT_POSTGRES").is_some() => {
            eprintln!("SKIPPED: {why}");
            return None;
        }
        Err(why) => panic!("{why} (PHIVAULT_TESTS_WITHOUT_POSTGRES=1 skips this test)"),
    };
    let target = phivault::store::postgres::PgTarget::parse(&server.create_database("vault"))
        .expect("connection string");
    let location = Location::Postgres(Box::new(target));
    let vault = Arc::new(
        Vault::init_at(&location, key_file(), VaultOptions::default())
            .await
            .expect("init"),
    );
    Some((server, location, vault))
}

/// On PostgreSQL, nodes append to lanes of their own; a checkpoint names
/// every lane's head, so that a lane removed whole — records (with their
/// disclosure marks) and head — is found by `verify`, which a lane's own head could
/// not do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_removed_whole_is_found_by_the_checkpoint_that_names_it() {
    let Some((server, location, vault)) = vault_in_postgres().await else {
        return;
    };
    let token = vault
        .tokenize("ssn", &["123-45-6789"])
        .await
        .expect("tokenize")
        .remove(0)
        .expect("token");
    // Appends side by side spread over the node's lanes.
    let mut appends = Vec::new();
    for i in 0..64 {
        let vault = Arc::clone(&vault);
        let token = token.clone();
        appends.push(tokio::spawn(async move {
            let client = format!("c0ffee00000000{i:02x}");
            let event = reveal(&vault, &client, "ssn", &[&token], false);
            vault.audit(&event).await.expect("append")
        }));
    }
    let mut ids = Vec::new();
    for append in appends {
        ids.push(append.await.expect("append task"));
    }
    let lanes: std::collections::BTreeSet<u64> = ids.iter().map(|id| id >> 40).collect();
    assert!(
        lanes.len() > 1,
        "appends side by side use several lanes: {lanes:?}"
    );
    vault.checkpoint_audit().await.expect("checkpoint");
    let report = vault.verify_audit().await.expect("verify");
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.records, 65, "64 reveals and the checkpoint");
    let disclosures = vault
        .disclosures("ssn", &token, 0, 100)
        .await
        .expect("disclosures")
        .0;
    assert_eq!(disclosures.len(), 64, "reveals in every lane are found");
    close(vault);

    // Remove a lane that holds no checkpoint, as a database administrator
    // could: its records and its head.
    let lane = server.psql(
        "vault",
        "SELECT lane FROM phivault.audit GROUP BY lane \
         HAVING bool_and(position(convert_to('phivault.audit/Checkpoint', 'UTF8') in record) = 0) \
         ORDER BY lane LIMIT 1",
    );
    let lane = lane.trim();
    assert!(!lane.is_empty(), "a lane without a checkpoint");
    server.psql(
        "vault",
        &format!(
            "DELETE FROM phivault.audit WHERE lane = {lane}; \
             DELETE FROM phivault.audit_lanes WHERE lane = {lane};"
        ),
    );
    let report = verify_audit_at(&location).await.expect("verify");
    let (id, why) = report.first_bad.expect("the removal is found");
    assert_eq!((id >> 40).to_string(), lane, "{why}");
    assert!(why.contains("checkpoint"), "{why}");
}

/// A PostgreSQL vault from before the disclosure index moved into the audit
/// rows (schema 3: a `disclosures` table) keeps every disclosure, oldest
/// first, when a node of this version migrates it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disclosures_survive_the_move_of_their_index_into_the_audit_rows() {
    let Some((server, location, vault)) = vault_in_postgres().await else {
        return;
    };
    let tokens: Vec<String> = vault
        .tokenize("ssn", &["123-45-6789", "987-65-4321"])
        .await
        .expect("tokenize")
        .into_iter()
        .map(|t| t.expect("token"))
        .collect();
    let mut appends = Vec::new();
    for i in 0..24 {
        let vault = Arc::clone(&vault);
        let tokens = tokens.clone();
        appends.push(tokio::spawn(async move {
            let client = format!("c0ffee00000000{i:02x}");
            let revealed: Vec<&str> = if i % 3 == 0 {
                vec![&tokens[0], &tokens[1]]
            } else {
                vec![&tokens[i % 2]]
            };
            let event = reveal(&vault, &client, "ssn", &revealed, false);
            vault.audit(&event).await.expect("append")
        }));
    }
    for append in appends {
        append.await.expect("append task");
    }
    let before: Vec<Vec<u64>> = {
        let mut lists = Vec::new();
        for token in &tokens {
            let (found, _) = vault
                .disclosures("ssn", token, 0, 100)
                .await
                .expect("disclosures");
            lists.push(found.iter().map(|d| d.seq).collect());
        }
        lists
    };
    assert_eq!(before.iter().map(Vec::len).sum::<usize>(), 24 + 8);
    close(vault);

    // Put the database back in schema 3's shape, as a vault of the previous
    // version left it.
    server.psql(
        "vault",
        "CREATE TABLE phivault.disclosures ( \
             mark bytea NOT NULL, lane integer NOT NULL, seq bigint NOT NULL, \
             PRIMARY KEY (mark, lane, seq)); \
         ALTER TABLE phivault.disclosures ADD COLUMN ord bigint GENERATED ALWAYS AS IDENTITY; \
         CREATE INDEX disclosures_in_order ON phivault.disclosures (mark, ord); \
         INSERT INTO phivault.disclosures (mark, lane, seq) \
             SELECT m.mark, a.lane, a.seq FROM phivault.audit a, unnest(a.marks) AS m(mark) \
             ORDER BY a.ord; \
         ALTER TABLE phivault.audit DROP COLUMN marks, DROP COLUMN ord; \
         DROP TABLE phivault.limit_usage; \
         UPDATE phivault.schema_version SET version = 3;",
    );
    let vault = Vault::open_at(&location, key_file(), VaultOptions::default())
        .await
        .expect("open and migrate");
    for (token, expected) in tokens.iter().zip(&before) {
        let (found, _) = vault
            .disclosures("ssn", token, 0, 100)
            .await
            .expect("disclosures");
        let found: Vec<u64> = found.iter().map(|d| d.seq).collect();
        assert_eq!(&found, expected, "every disclosure, in the same order");
        // Paged one at a time, the same list.
        let mut paged = Vec::new();
        let mut after = 0;
        loop {
            let (page, _) = vault
                .disclosures("ssn", token, after, 1)
                .await
                .expect("page");
            let Some(last) = page.last() else { break };
            after = last.seq;
            paged.push(last.seq);
        }
        assert_eq!(&paged, expected);
    }
    let report = vault.verify_audit().await.expect("verify");
    assert!(report.is_intact(), "{report:?}");
    // New reveals land in the new index, after the migrated ones.
    let event = reveal(&vault, "c0ffee0000000099", "ssn", &[&tokens[0]], false);
    let id = vault.audit(&event).await.expect("append");
    let (found, _) = vault
        .disclosures("ssn", &tokens[0], 0, 100)
        .await
        .expect("disclosures");
    assert_eq!(found.last().map(|d| d.seq), Some(id));
    assert_eq!(found.len(), before[0].len() + 1);
    vault.close().expect("close");
}

/// The row MAC proves a client row was written by the vault, its version
/// that it is the newest: a row put back from before a key rotation (to
/// bring the retired key back, or re-arm a break-glass window) is refused
/// by the next read of the registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_row_put_back_from_an_older_copy_is_refused() {
    let Some((server, _location, vault)) = vault_in_postgres().await else {
        return;
    };
    let (billing, _) = vault
        .create_client("billing", &["detokenize:ssn"])
        .await
        .expect("client");
    server.psql(
        "vault",
        &format!(
            "CREATE TABLE public.saved AS SELECT stored FROM phivault.clients WHERE id = '{}'",
            billing.id
        ),
    );
    vault
        .rotate_client_key_with_record(&billing.id, std::time::Duration::ZERO, None)
        .await
        .expect("rotate");
    vault.refresh().await.expect("the rotation is seen");
    server.psql(
        "vault",
        &format!(
            "UPDATE phivault.clients SET stored = (SELECT stored FROM public.saved) WHERE id = '{}'; \
             UPDATE phivault.registry_epoch SET epoch = epoch + 1;",
            billing.id
        ),
    );
    match vault.refresh().await {
        Err(Error::Store(phivault::store::StoreError::Tampered { table, row })) => {
            assert_eq!(table, "clients");
            assert!(row.contains(&billing.id), "{row}");
        }
        other => panic!("an older client row was taken: {other:?}"),
    }
}
