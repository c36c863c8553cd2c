//! Moving a vault between backends with `phivault export` and `phivault
//! import`, through the real binaries: RocksDB to PostgreSQL and back, with
//! every token, key, client and audit record; and files that were changed,
//! cut or opened with another vault's key refused without leaving anything behind.
//! Both tests need PostgreSQL, so they run in the PostgreSQL pass.

use std::collections::HashMap;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use phivault_client::{Client, v1 as pb};
use phivault_tests::postgres::Postgres;
use phivault_tests::{Server, VaultDir, on_postgres};

use tonic::Code;

use super::{client_with, code, connect, random_visit_namespace, texts};

/// `phivault <subcommand>` on `vault`'s store with its key file, and more
/// arguments.
fn phivault(vault: &VaultDir, subcommand: &str, args: &[&str]) -> Output {
    vault
        .command(subcommand)
        .args([
            "--master-key-file",
            vault.key_file().to_str().expect("utf-8 path"),
        ])
        .args(args)
        .output()
        .expect("run phivault")
}

fn succeeded(output: &Output) -> String {
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    text
}

fn refused(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn export(vault: &VaultDir, to: &Path) {
    let printed = succeeded(&phivault(
        vault,
        "export",
        &["--to", to.to_str().expect("utf-8")],
    ));
    assert!(printed.contains("exported"), "{printed}");
}

fn import(vault: &VaultDir, from: &Path) -> Output {
    phivault(vault, "import", &["--from", from.to_str().expect("utf-8")])
}

fn start_postgres(test: &str) -> Option<Arc<Postgres>> {
    if !on_postgres() {
        eprintln!("{test}: needs PostgreSQL; runs in the PostgreSQL pass");
        return None;
    }
    Some(Arc::new(Postgres::start().expect("PostgreSQL")))
}

/// What the vault held before it moved, to be found again after.
struct Held {
    /// Namespace → values and their tokens.
    tokens: HashMap<&'static str, (Vec<String>, Vec<String>)>,
    /// Tokens of the random namespace and their values.
    random: (Vec<String>, Vec<String>),
}

fn values(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:07}")).collect()
}

/// Checks that every token reveals its value, that tokenizing a value again
/// finds its token rather than minting one, and that the first token's
/// disclosures name `revealed` reveals at least, oldest first within each
/// audit lane (and across lanes too where `in_time_order`: PostgreSQL lists
/// them so; RocksDB lists an imported vault's lanes one after the other).
async fn still_holds(
    pipeline: &Client,
    admin: &Client,
    held: &Held,
    revealed: usize,
    in_time_order: bool,
) -> Vec<pb::Disclosure> {
    for (namespace, (values, tokens)) in &held.tokens {
        let shown = texts(
            pipeline
                .detokenize(namespace, tokens.clone(), false)
                .await
                .expect("detokenize"),
        );
        assert_eq!(&shown, values, "{namespace}");
        let again = texts(
            pipeline
                .tokenize(namespace, values.clone())
                .await
                .expect("tokenize"),
        );
        assert_eq!(&again, tokens, "{namespace}: a value got a second token");
    }
    let (values, tokens) = &held.random;
    let shown = texts(
        pipeline
            .detokenize("visit", tokens.clone(), false)
            .await
            .expect("detokenize"),
    );
    assert_eq!(&shown, values);
    let (_, tokens) = &held.tokens["ssn"];
    let disclosures = admin
        .list_disclosures("ssn", &tokens[0])
        .await
        .expect("disclosures");
    assert!(
        disclosures.len() >= revealed,
        "{} disclosures, at least {revealed} expected",
        disclosures.len()
    );
    assert!(disclosures.iter().all(|d| d.client_name == "pipeline"));
    let lane = |d: &pb::Disclosure| d.seq >> 40;
    for pair in disclosures.windows(2) {
        if in_time_order || lane(&pair[0]) == lane(&pair[1]) {
            assert!(pair[0].time_ms <= pair[1].time_ms, "{disclosures:?}");
        }
    }
    disclosures
}

/// Polls the key status until the rotation to `version` has finished
/// (bounded).
async fn wait_until_rotated(admin: &Client, version: u32) {
    let started = Instant::now();
    let mut interval = tokio::time::interval(Duration::from_millis(20));
    loop {
        interval.tick().await;
        let status = admin.key_status().await.expect("key status");
        if status.active_version == version && status.rotation.is_none() {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_moves_to_postgresql_and_back_with_every_token_and_its_audit_trail() {
    let test = "a_vault_moves_to_postgresql_and_back_with_every_token_and_its_audit_trail";
    let Some(postgres) = start_postgres(test) else {
        return;
    };
    // On RocksDB: tokens in three namespaces and a random one, reveals, and
    // a finished key rotation (so keyset 1 is destroyed and 2 active).
    let embedded = VaultDir::init_prepared(|_| {});
    let server = Server::start(&embedded, &[]);
    let admin = connect(&server, Some(&embedded.admin_key)).await;
    let (pipeline, pipeline_key) =
        client_with(&admin, &server, "pipeline", &["tokenize:*", "detokenize:*"]).await;
    random_visit_namespace(&admin).await;
    let mut held = Held {
        tokens: HashMap::new(),
        random: (values("V", 200), Vec::new()),
    };
    for (namespace, prefix) in [("ssn", "12"), ("mrn", "MRN"), ("email", "")] {
        let values: Vec<String> = match namespace {
            "ssn" => (0..1500).map(|i| format!("12{i:07}")).collect(),
            "email" => (0..500)
                .map(|i| format!("patient{i}@example.org"))
                .collect(),
            _ => values(prefix, 1000),
        };
        let tokens = texts(
            pipeline
                .tokenize(namespace, values.clone())
                .await
                .expect("tokenize"),
        );
        held.tokens.insert(namespace, (values, tokens));
    }
    held.random.1 = texts(
        pipeline
            .tokenize("visit", held.random.0.clone())
            .await
            .expect("tokenize"),
    );
    let version = admin.rotate_keys().await.expect("rotate");
    wait_until_rotated(&admin, version).await;
    still_holds(&pipeline, &admin, &held, 1, true).await;
    // One call revealing a token twice: one record, one disclosure.
    let first_ssn = held.tokens["ssn"].1[0].clone();
    pipeline
        .detokenize("ssn", vec![first_ssn.clone(), first_ssn.clone()], false)
        .await
        .expect("detokenize twice in one call");
    // A revoked client stays revoked wherever the vault goes.
    let (_, former_key) = client_with(&admin, &server, "former", &["detokenize:ssn"]).await;
    let former_id = admin
        .list_clients()
        .await
        .expect("clients")
        .into_iter()
        .find(|c| c.name == "former")
        .expect("former")
        .client_id;
    admin.revoke_client(&former_id).await.expect("revoke");
    drop((admin, pipeline));
    server.stop();

    // Into PostgreSQL.
    let file = embedded.root.path().join("vault.export");
    export(&embedded, &file);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file)
            .expect("export file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the export file is owner-only");
    }
    let on_postgres = embedded.empty_twin_in(Arc::clone(&postgres), "moved");
    let printed = succeeded(&import(&on_postgres, &file));
    assert!(printed.contains("ok: every mapping opens"), "{printed}");
    assert!(printed.contains("sealed under keyset 2"), "{printed}");
    assert!(printed.contains("file MAC"), "{printed}");

    let server = Server::start(&on_postgres, &[]);
    let admin = connect(&server, Some(&on_postgres.admin_key)).await;
    let pipeline = connect(&server, Some(&pipeline_key)).await;
    still_holds(&pipeline, &admin, &held, 3, true).await;
    let former = connect(&server, Some(&former_key)).await;
    let refused = former
        .detokenize("ssn", vec![first_ssn.clone()], false)
        .await
        .expect_err("a revoked client");
    assert_eq!(code(refused), Code::Unauthenticated);
    drop(former);
    let status = admin.key_status().await.expect("key status");
    assert_eq!(status.active_version, version);
    // A second node appends on lanes of its own (the first holds 0 to 7),
    // so the audit trail exported next has several lanes.
    let second_node = Server::start(&on_postgres, &[]);
    let on_second = connect(&second_node, Some(&pipeline_key)).await;
    let (_, ssn_tokens) = &held.tokens["ssn"];
    on_second
        .detokenize("ssn", vec![ssn_tokens[0].clone()], false)
        .await
        .expect("detokenize on the second node");
    drop(on_second);
    second_node.stop();

    // And back into a new RocksDB directory, exported while the node serves.
    let second = on_postgres.root.path().join("again.export");
    export(&on_postgres, &second);
    let back = embedded.empty_twin();
    succeeded(&import(&back, &second));
    drop((admin, pipeline));
    server.stop();
    let server = Server::start(&back, &[]);
    let admin = connect(&server, Some(&back.admin_key)).await;
    let pipeline = connect(&server, Some(&pipeline_key)).await;
    let disclosures = still_holds(&pipeline, &admin, &held, 5, false).await;
    // Records from PostgreSQL's lanes and RocksDB's own, all found.
    let lanes: std::collections::HashSet<u64> = disclosures.iter().map(|d| d.seq >> 40).collect();
    assert!(lanes.len() >= 2, "{disclosures:?}");
    drop((admin, pipeline));
    server.stop();
    let printed = succeeded(&phivault(&back, "verify", &[]));
    assert!(printed.contains("ok: every mapping opens"), "{printed}");
    let audit = succeeded(
        &std::process::Command::new(phivault_tests::binary("phivault"))
            .args(["audit", "verify"])
            .args(back.store_args())
            .output()
            .expect("run phivault audit verify"),
    );
    assert!(audit.contains("ok: the audit chain is intact"), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_files_changed_or_cut_or_opened_with_another_vaults_key_are_refused() {
    let test = "export_files_changed_or_cut_or_opened_with_another_vaults_key_are_refused";
    let Some(postgres) = start_postgres(test) else {
        return;
    };
    let embedded = VaultDir::init_prepared(|_| {});
    let server = Server::start(&embedded, &[]);
    let admin = connect(&server, Some(&embedded.admin_key)).await;
    let (pipeline, _) =
        client_with(&admin, &server, "pipeline", &["tokenize:*", "detokenize:*"]).await;
    let ssns: Vec<String> = (0..300).map(|i| format!("23{i:07}")).collect();
    pipeline.tokenize("ssn", ssns).await.expect("tokenize");
    drop((admin, pipeline));
    server.stop();
    let file = embedded.root.path().join("vault.export");
    export(&embedded, &file);
    let text = std::fs::read_to_string(&file).expect("read the export");

    // An existing file is not overwritten; an existing vault not replaced.
    let error = refused(&phivault(
        &embedded,
        "export",
        &["--to", file.to_str().expect("utf-8")],
    ));
    assert!(error.contains("must not exist"), "{error}");
    let error = refused(&import(&embedded, &file));
    assert!(error.contains("already exists"), "{error}");

    // One character of one reverse row changed (still valid base64).
    let changed = {
        let line = text
            .lines()
            .position(|l| l.contains(r#""t":"reverse""#))
            .expect("a reverse row");
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let at = lines[line].find(r#""row":""#).expect("row field") + 8;
        let old = lines[line].as_bytes()[at];
        let new = if old == b'A' { "B" } else { "A" };
        lines[line].replace_range(at..=at, new);
        lines.join("\n") + "\n"
    };
    // The last line gone, or the file cut in the middle of a row; two rows
    // swapped.
    let cut_mid_row = text[..text.len() / 2].to_owned();
    let cut: String = text
        .lines()
        .take(text.lines().count() - 1)
        .map(|l| format!("{l}\n"))
        .collect();
    let swapped = {
        let mut lines: Vec<&str> = text.lines().collect();
        let n = lines.len();
        lines.swap(n - 3, n - 4);
        lines.join("\n") + "\n"
    };
    for (name, content, expected) in [
        ("changed", &changed, "MAC does not verify"),
        ("cut", &cut, "cut short"),
        ("cut mid-row", &cut_mid_row, "not an export row"),
        ("swapped", &swapped, "MAC does not verify"),
    ] {
        let bad = embedded.root.path().join(name);
        std::fs::write(&bad, content).expect("write");
        let into = embedded.empty_twin();
        let error = refused(&import(&into, &bad));
        assert!(error.contains(expected), "{name}: {error}");
        let left: Vec<_> = std::fs::read_dir(into.root.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .filter(|n| n != "master.key")
            .collect();
        assert!(left.is_empty(), "{name}: a failed import left {left:?}");
    }

    // A directory made ahead for the vault is taken if empty.
    let ready = embedded.empty_twin();
    std::fs::create_dir(ready.data()).expect("mkdir");
    succeeded(&import(&ready, &file));

    // In PostgreSQL the failed import is rolled back: the same database
    // then takes the good file.
    let on_postgres = embedded.empty_twin_in(Arc::clone(&postgres), "moved");
    let bad = embedded.root.path().join("changed");
    let error = refused(&import(&on_postgres, &bad));
    assert!(error.contains("MAC does not verify"), "{error}");
    succeeded(&import(&on_postgres, &file));

    // Another vault's key does not open the file.
    let stranger = VaultDir::init_prepared(|_| {});
    let into = stranger.empty_twin();
    let error = refused(&import(&into, &file));
    assert!(error.contains("wrong passphrase or master key"), "{error}");
    assert!(!into.data().exists());

    // No export while a rotation is under way: the backends keep different
    // forward entries mid-rotation. Slowed to 20 mappings a second, the
    // rotation of 300 is still running when the export is asked for.
    let server = Server::start(&on_postgres, &["--rotation-max-rate", "20"]);
    let admin = connect(&server, Some(&on_postgres.admin_key)).await;
    admin.rotate_keys().await.expect("rotate");
    let error = refused(&phivault(
        &on_postgres,
        "export",
        &[
            "--to",
            on_postgres
                .root
                .path()
                .join("mid.export")
                .to_str()
                .expect("utf-8"),
        ],
    ));
    assert!(error.contains("key rotation is running"), "{error}");
    assert!(!on_postgres.root.path().join("mid.export").exists());
    drop(admin);
    server.stop();
}
