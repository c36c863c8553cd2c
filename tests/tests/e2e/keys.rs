//! Key lifecycle through the real binaries: rotation under load, a crash in
//! the middle of a rotation, rekey crashes at every step, backups during a
//! bulk load.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use phivault_client::{Client, v1 as pb};
use phivault_tests::{Server, VaultDir};
use tokio::sync::Mutex;
use tonic::Code;

use super::{cli, client_with, code, connect, texts};

/// The longest any wait on the vault's progress may take before the test
/// fails.
const DEADLINE: Duration = Duration::from_secs(300);

/// Distinct MRN-shaped values.
fn mrns(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i:08}")).collect()
}

async fn tokenize_all(client: &Client, ns: &str, values: &[String]) -> Vec<String> {
    let mut tokens = Vec::with_capacity(values.len());
    for chunk in values.chunks(10_000) {
        tokens.extend(texts(
            client.tokenize(ns, chunk.to_vec()).await.expect("tokenize"),
        ));
    }
    tokens
}

/// A client that may tokenize and detokenize everywhere, and its API key.
async fn pipeline(admin: &Client, server: &Server) -> (Client, String) {
    client_with(admin, server, "pipeline", &["tokenize:*", "detokenize:*"]).await
}

/// Polls `GetKeyStatus` until `done` says so (bounded by `DEADLINE`).
async fn wait_for_status(
    admin: &Client,
    mut done: impl FnMut(&pb::KeyStatus) -> bool,
) -> pb::KeyStatus {
    let started = Instant::now();
    let mut interval = tokio::time::interval(Duration::from_millis(20));
    loop {
        interval.tick().await;
        let status = admin.key_status().await.expect("key status");
        if done(&status) {
            return status;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the vault did not get there: {status:?}"
        );
    }
}

fn assert_old_keys_destroyed(status: &pb::KeyStatus, active: u32) {
    assert_eq!(status.active_version, active);
    for v in &status.versions {
        let expected = if v.version == active {
            "active"
        } else {
            "destroyed"
        };
        assert_eq!(v.state, expected, "{status:?}");
    }
    assert!(status.rotation.is_none());
    assert_eq!(
        status.last_rotation.as_ref().map(|l| l.target_version),
        Some(active)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_under_load_fails_no_call_and_changes_no_token() {
    let vault = VaultDir::init();
    let server = Server::start(&vault, &[]);
    let admin = connect(&server, Some(&vault.admin_key)).await;
    let (data, key) = pipeline(&admin, &server).await;
    let values = Arc::new(mrns("MRN", 0..100_000));
    let tokens = Arc::new(tokenize_all(&data, "mrn", &values).await);

    let rotating = Arc::new(AtomicBool::new(true));
    let mut workers = Vec::new();
    for worker in 0..4usize {
        let client = connect(&server, Some(&key)).await;
        let (values, tokens, rotating) = (
            Arc::clone(&values),
            Arc::clone(&tokens),
            Arc::clone(&rotating),
        );
        workers.push(tokio::spawn(async move {
            // Values this worker tokenized for the first time during the
            // rotation, with their tokens.
            let mut fresh: HashMap<String, String> = HashMap::new();
            let mut calls = 0u64;
            let mut round = 0usize;
            while rotating.load(Ordering::Relaxed) || round < 2 {
                let start = (round * 997 + worker * 25_000) % (values.len() - 200);
                let old = values[start..start + 200].to_vec();
                let new = mrns(&format!("NEW{worker}R"), round * 20..round * 20 + 20);
                let mut batch = old.clone();
                batch.extend(new.iter().cloned());
                let got = texts(client.tokenize("mrn", batch).await.expect("tokenize"));
                assert_eq!(got[..200], tokens[start..start + 200], "a token changed");
                for (value, token) in new.iter().zip(&got[200..]) {
                    assert!(fresh.insert(value.clone(), token.clone()).is_none());
                }
                let revealed = texts(
                    client
                        .detokenize("mrn", got.clone(), false)
                        .await
                        .expect("detokenize"),
                );
                assert_eq!(revealed[..200], old[..]);
                assert_eq!(revealed[200..], new[..]);
                calls += 2;
                round += 1;
            }
            (fresh, calls)
        }));
    }

    assert_eq!(admin.rotate_keys().await.expect("rotate"), 2);
    let status = wait_for_status(&admin, |s| s.rotation.is_none()).await;
    rotating.store(false, Ordering::Relaxed);
    let mut fresh = HashMap::new();
    let mut calls = 0;
    for worker in workers {
        let (more, n) = worker.await.expect("worker: every call succeeded");
        fresh.extend(more);
        calls += n;
    }
    assert!(calls >= 16, "{calls} calls during the rotation");
    assert_old_keys_destroyed(&status, 2);
    assert!(status.last_rotation.expect("last").mappings >= 100_000);

    // Every token unchanged, every value still revealed, the values first
    // seen during the rotation too.
    assert_eq!(tokenize_all(&data, "mrn", &values).await, *tokens);
    for (chunk_values, chunk_tokens) in values.chunks(10_000).zip(tokens.chunks(10_000)) {
        let revealed = texts(
            data.detokenize("mrn", chunk_tokens.to_vec(), false)
                .await
                .expect("detokenize"),
        );
        assert_eq!(revealed, chunk_values);
    }
    let (fresh_values, fresh_tokens): (Vec<String>, Vec<String>) = fresh.into_iter().unzip();
    assert_eq!(
        tokenize_all(&data, "mrn", &fresh_values).await,
        fresh_tokens
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_killed_mid_way_resumes_after_a_restart_and_verifies_clean() {
    let vault = VaultDir::init();
    let server = Server::start(&vault, &["--rotation-max-rate", "4000"]);
    let admin = connect(&server, Some(&vault.admin_key)).await;
    let (data, key) = pipeline(&admin, &server).await;
    let values = mrns("MRN", 0..20_000);
    let tokens = tokenize_all(&data, "mrn", &values).await;

    admin.rotate_keys().await.expect("rotate");
    let refused = admin.rotate_keys().await.expect_err("one at a time");
    assert_eq!(code(refused), Code::FailedPrecondition);
    let mid = wait_for_status(&admin, |s| {
        s.rotation.as_ref().is_some_and(|r| r.done >= 2048)
    })
    .await;
    let progress = mid.rotation.expect("running");
    assert_eq!(progress.phase, "re-encrypting");
    assert!(progress.done < progress.total, "{progress:?}");
    assert!(progress.rate > 0.0);
    server.kill();

    // Not finished on disk: the restarted server resumes the job.
    let server = Server::start(&vault, &[]);
    let admin = connect(&server, Some(&vault.admin_key)).await;
    let status = wait_for_status(&admin, |s| s.rotation.is_none()).await;
    assert_old_keys_destroyed(&status, 2);
    let data = connect(&server, Some(&key)).await;
    assert_eq!(tokenize_all(&data, "mrn", &values).await, tokens);
    server.stop();

    let verify = vault
        .command("verify")
        .args([
            "--master-key-file",
            vault.key_file().to_str().expect("utf-8"),
        ])
        .output()
        .expect("run verify");
    let report = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{report}");
    assert!(report.contains("reverse rows:    20000"), "{report}");
    assert!(report.contains("ok: every mapping"), "{report}");
}

/// Runs `phivault status` with `key` ("file" for the master key file, else a
/// passphrase file's contents) and says whether it unsealed.
fn unseals(vault: &VaultDir, key: &str) -> bool {
    let mut command = vault.command("status");
    if key == "file" {
        command.args([
            "--master-key-file",
            vault.key_file().to_str().expect("utf-8"),
        ]);
    } else {
        let path = vault.root.path().join("try.pass");
        std::fs::write(&path, key).expect("write passphrase");
        command.args(["--passphrase-file", path.to_str().expect("utf-8")]);
    }
    let output = command.output().expect("run status");
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        // Refused as the wrong key, or as the wrong kind of key.
        assert!(
            stderr.contains("wrong passphrase or master key") || stderr.contains("sealed with a"),
            "refused for another reason: {stderr}"
        );
    }
    output.status.success()
}

#[test]
fn a_rekey_killed_at_any_step_leaves_exactly_one_key_working() {
    let new_passphrase = "a brand new passphrase for the vault";
    for (step, committed) in [
        ("rekey-opened", false),
        ("rekey-derived", false),
        ("rekey-wrapped", false),
        ("rekey-committing", false),
        ("rekey-committed", true),
        ("", true),
    ] {
        let vault = VaultDir::init();
        let new_file = vault.root.path().join("new.pass");
        std::fs::write(&new_file, new_passphrase).expect("write passphrase");
        let output = vault
            .command("rekey")
            .args([
                "--master-key-file",
                vault.key_file().to_str().expect("utf-8"),
            ])
            .args(["--new-passphrase-file", new_file.to_str().expect("utf-8")])
            .env("PHIVAULT_FAILPOINT", step)
            .output()
            .expect("run rekey");
        if step.is_empty() {
            assert!(output.status.success(), "{output:?}");
        } else {
            assert!(
                !output.status.success()
                    && String::from_utf8_lossy(&output.stderr).contains("failpoint"),
                "the rekey should have crashed at {step} (is the failpoints feature on? `make test` turns it on): {output:?}"
            );
        }
        let (old_works, new_works) = (unseals(&vault, "file"), unseals(&vault, new_passphrase));
        assert_eq!(
            (old_works, new_works),
            (!committed, committed),
            "after a crash at {step:?}: exactly one key must unseal"
        );
    }
}

/// Values, tokens, and when the response arrived, of one acknowledged batch.
type Acked = (Vec<String>, Vec<String>, Instant);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_during_a_bulk_load_restores_every_acknowledged_token() {
    if phivault_tests::embedded_only(
        "a_backup_during_a_bulk_load_restores_every_acknowledged_token",
    ) {
        return;
    }
    let vault = VaultDir::init();
    let restored = vault.empty_twin();
    let backup_dir = restored.root.path().to_str().expect("utf-8");
    let server = Server::start(&vault, &["--backup-dir", backup_dir]);
    let admin = connect(&server, Some(&vault.admin_key)).await;
    let (_, key) = pipeline(&admin, &server).await;
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let loading = Arc::new(AtomicBool::new(true));
    let loader = {
        let (client, acked, loading) = (
            connect(&server, Some(&key)).await,
            Arc::clone(&acked),
            Arc::clone(&loading),
        );
        tokio::spawn(async move {
            let mut batch = 0;
            while loading.load(Ordering::Relaxed) && batch < 2000 {
                let values = mrns(&format!("B{batch:04}X"), 0..500);
                let tokens = texts(
                    client
                        .tokenize("mrn", values.clone())
                        .await
                        .expect("tokenize"),
                );
                acked.lock().await.push((values, tokens, Instant::now()));
                batch += 1;
            }
        })
    };
    let mut interval = tokio::time::interval(Duration::from_millis(10));
    while acked.lock().await.len() < 20 {
        interval.tick().await;
    }
    let backup_path = restored.data();
    // What a backup promises: every write acknowledged before it was asked
    // for (and before its checkpoint, which the caller cannot observe: writes
    // acknowledged while the answer travels back may or may not be in it).
    let requested = Instant::now();
    let backup = admin
        .backup(backup_path.to_str().expect("utf-8"))
        .await
        .expect("backup");
    let returned = Instant::now();
    assert!(backup.bytes > 0);
    // The load went on while the backup was taken.
    while acked
        .lock()
        .await
        .last()
        .is_some_and(|(_, _, at)| *at < returned)
    {
        interval.tick().await;
    }
    loading.store(false, Ordering::Relaxed);
    loader.await.expect("loader");
    server.stop();

    let refused = vault
        .command("backup")
        .args(["--to", backup_path.to_str().expect("utf-8")])
        .output()
        .expect("run backup");
    assert!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("never overwrites")
    );

    let server = Server::start(&restored, &[]);
    let data = connect(&server, Some(&key)).await;
    let acked = acked.lock().await;
    let before: Vec<_> = acked.iter().filter(|(_, _, at)| *at < requested).collect();
    assert!(before.len() >= 20 && before.len() < acked.len());
    for (values, tokens, _) in before {
        let revealed = texts(
            data.detokenize("mrn", tokens.clone(), false)
                .await
                .expect("detokenize"),
        );
        assert_eq!(&revealed, values, "an acknowledged token is in the backup");
    }
    server.stop();

    // The offline backup of a stopped vault opens the same way.
    let offline = restored.empty_twin();
    let output = vault
        .command("backup")
        .args(["--to", offline.data().to_str().expect("utf-8")])
        .output()
        .expect("run backup");
    assert!(output.status.success(), "{output:?}");
    let server = Server::start(&offline, &[]);
    let data = connect(&server, Some(&key)).await;
    let (values, tokens, _) = &acked[acked.len() - 1];
    assert_eq!(
        &texts(
            data.detokenize("mrn", tokens.clone(), false)
                .await
                .expect("detokenize")
        ),
        values
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keys_and_backup_commands_of_the_cli() {
    if phivault_tests::embedded_only("the_keys_and_backup_commands_of_the_cli") {
        return;
    }
    let vault = VaultDir::init();
    let restored = vault.empty_twin();
    let backup_dir = restored.root.path().to_str().expect("utf-8");
    let server = Server::start(&vault, &["--backup-dir", backup_dir]);
    let admin = connect(&server, Some(&vault.admin_key)).await;
    let (data, key) = pipeline(&admin, &server).await;
    let values = mrns("MRN", 0..3000);
    let tokens = tokenize_all(&data, "mrn", &values).await;

    let denied = cli(&server, &key, &["keys", "rotate"], "");
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("PERMISSION_DENIED"));

    let rotated = cli(
        &server,
        &vault.admin_key,
        &["--json", "keys", "rotate", "--wait"],
        "",
    );
    assert!(rotated.status.success(), "{rotated:?}");
    let status: serde_json::Value =
        serde_json::from_slice(&rotated.stdout).expect("one JSON document");
    assert_eq!(status["active_version"], 2);
    assert!(status["rotation"].is_null());
    assert_eq!(status["last_rotation"]["target_version"], 2);
    assert_eq!(status["versions"][0]["state"], "destroyed");

    let shown = cli(&server, &vault.admin_key, &["keys", "status"], "");
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.status.success() && text.contains("active keyset: 2"),
        "{text}"
    );
    assert!(text.contains("no rotation running"), "{text}");

    let path = restored.data();
    let backup = cli(
        &server,
        &vault.admin_key,
        &["backup", path.to_str().expect("utf-8")],
        "",
    );
    assert!(backup.status.success(), "{backup:?}");
    let again = cli(
        &server,
        &vault.admin_key,
        &["backup", path.to_str().expect("utf-8")],
        "",
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("INVALID_ARGUMENT"));
    // What the client shows of the served vault, `phivault status` shows of
    // the stopped one: one rendering for both binaries.
    let served = |args: &[&str]| -> Vec<serde_json::Value> {
        let shown = cli(&server, &vault.admin_key, args, "");
        assert!(shown.status.success(), "{shown:?}");
        serde_json::Deserializer::from_slice(&shown.stdout)
            .into_iter()
            .map(|v| v.expect("JSON"))
            .collect()
    };
    let keys = served(&["--json", "keys", "status"]);
    let namespaces = served(&["--json", "namespaces", "list"]);
    let clients = served(&["--json", "clients", "list"]);
    server.stop();
    let stopped = vault
        .command("status")
        .args([
            "--master-key-file",
            vault.key_file().to_str().expect("utf-8"),
        ])
        .arg("--json")
        .output()
        .expect("run status");
    assert!(stopped.status.success(), "{stopped:?}");
    let status: serde_json::Value = serde_json::from_slice(&stopped.stdout).expect("JSON");
    assert_eq!(status["keys"], keys[0]);
    assert_eq!(status["namespaces"], serde_json::Value::from(namespaces));
    assert_eq!(status["clients"], serde_json::Value::from(clients));

    let server = Server::start(&restored, &[]);
    let data = connect(&server, Some(&key)).await;
    assert_eq!(tokenize_all(&data, "mrn", &values).await, tokens);
    server.stop();
}
