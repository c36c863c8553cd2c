//! The audit trail against the real binaries: what is recorded, what never
//! is, who a token was disclosed to, and failing closed.

use std::collections::BTreeSet;

use futures_util::{StreamExt, stream};
use phivault_client::Client;
use phivault_tests::{Server, VaultDir};
use tonic::Code;

use super::{cli, client_with, code, connect, scrape, stdout, texts};

/// A well-formed key of a client that does not exist.
const UNKNOWN_KEY: &str =
    "pv_0123456789abcdef_00000000000000000000000000000000000000000000000000000000deadbeef";

fn export(server: &Server, key: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["audit", "export"];
    args.extend_from_slice(extra);
    stdout(&cli(server, key, &args, ""))
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON record per line"))
        .collect()
}

fn field<'a>(record: &'a serde_json::Value, name: &str) -> &'a str {
    record[name].as_str().unwrap_or_default()
}

fn client_id(key: &str) -> String {
    key.split('_').nth(1).expect("pv_<id>_<secret>").to_owned()
}

/// Waits until no key rotation runs.
pub(super) async fn wait_for_rotation(admin: &Client) {
    for _ in 0..2000 {
        if admin.key_status().await.expect("status").rotation.is_none() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the rotation did not finish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_never_reaches_the_audit_trail_or_the_logs() {
    let (ssn, name) = ("078-05-1120", "Zebulon Canarywhistle");
    let vault = VaultDir::init();
    // Debug logging: the most the server ever says. Refusals of
    // unauthenticated calls are summarised every second.
    let config = vault.config("[transport]\nrefusal_window_secs = 1\n");
    let server = Server::start_with_env(
        &vault,
        &["--config", config.to_str().expect("utf-8")],
        &[("PHIVAULT_LOG", "debug")],
    );
    let admin = connect(&server, Some(&vault.admin_key)).await;
    let (pipeline, _) =
        client_with(&admin, &server, "pipeline", &["tokenize:*", "detokenize:*"]).await;
    let (masked, _) = client_with(&admin, &server, "call-centre", &["detokenize-masked:*"]).await;
    let (denied, _) = client_with(&admin, &server, "no-reveal", &["tokenize:*"]).await;
    let (_, auditor_key) = client_with(&admin, &server, "auditor", &["audit"]).await;
    let unknown = connect(&server, Some(UNKNOWN_KEY)).await;
    // A "key" that is PHI: malformed keys must not be echoed either.
    let phi_key = connect(&server, Some(ssn)).await;

    let ssn_token = texts(
        pipeline
            .tokenize("ssn", vec![ssn.into()])
            .await
            .expect("tokenize"),
    )
    .remove(0);
    let name_token = texts(
        pipeline
            .tokenize("name", vec![name.into()])
            .await
            .expect("tokenize"),
    )
    .remove(0);
    let pairs = [
        ("ssn", ssn, ssn_token.as_str()),
        ("name", name, name_token.as_str()),
    ];
    for _ in 0..10 {
        for (ns, value, token) in pairs {
            let revealed = texts(
                pipeline
                    .detokenize(ns, vec![token.into()], false)
                    .await
                    .expect("detokenize"),
            );
            assert_eq!(revealed, [value]);
            let shown = texts(
                masked
                    .detokenize(ns, vec![token.into()], true)
                    .await
                    .expect("masked"),
            );
            assert_ne!(shown, [value]);
            let batches = stream::iter(vec![vec![token.to_owned()]; 3]);
            let streamed: Vec<_> = pipeline
                .detokenize_stream(ns, batches, false, 2)
                .await
                .expect("stream")
                .collect()
                .await;
            assert_eq!(streamed.len(), 3);
            for client in [&denied, &unknown, &phi_key] {
                let refused = client
                    .detokenize(ns, vec![token.into()], false)
                    .await
                    .expect_err("refused");
                assert!(matches!(
                    code(refused),
                    Code::PermissionDenied | Code::Unauthenticated
                ));
            }
            // A value sent where a token belongs, and a bad value to tokenize.
            let _ = pipeline.detokenize(ns, vec![value.into()], false).await;
            let _ = pipeline.tokenize("dob", vec![value.into()]).await;
            let _ = masked.tokenize(ns, vec![value.into()]).await;
        }
        admin
            .list_disclosures("ssn", &ssn_token)
            .await
            .expect("disclosures");
    }

    // The summary of the unauthenticated calls comes within a window.
    let mut records = export(&server, &auditor_key, &[]);
    for _ in 0..100 {
        if records
            .iter()
            .any(|r| field(r, "outcome") == "UNAUTHENTICATED")
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        records = export(&server, &auditor_key, &[]);
    }
    let text = records
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    let outcomes: BTreeSet<(&str, &str)> = records
        .iter()
        .map(|r| (field(r, "rpc"), field(r, "outcome")))
        .collect();
    for expected in [
        ("/phivault.v1.Tokenizer/Detokenize", "OK"),
        ("/phivault.v1.Tokenizer/DetokenizeStream", "OK"),
        ("/phivault.v1.Tokenizer/Detokenize", "PERMISSION_DENIED"),
        ("(unauthenticated calls, summarised)", "UNAUTHENTICATED"),
        ("/phivault.v1.Tokenizer/Tokenize", "PERMISSION_DENIED"),
        ("/phivault.v1.Admin/ListDisclosures", "OK"),
        ("/phivault.v1.Admin/CreateClient", "OK"),
    ] {
        assert!(
            outcomes.contains(&expected),
            "no {expected:?} record in {outcomes:?}"
        );
    }
    let (out, err) = server.stop_with_output();
    assert!(err.contains("DEBUG"), "the server logged at debug level");
    let secrets = [
        ssn,
        "078051120",
        name,
        "Canarywhistle",
        ssn_token.as_str(),
        &ssn_token.replace('-', ""),
        name_token.as_str(),
        &vault.admin_key,
        &auditor_key,
        UNKNOWN_KEY,
    ];
    for (place, haystack) in [
        ("the audit export", &text),
        ("stdout", &out),
        ("stderr", &err),
    ] {
        for secret in secrets {
            assert!(
                !haystack.contains(secret),
                "{place} holds a value, token or key"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disclosures_name_exactly_the_clients_that_revealed_a_token() {
    let vault = VaultDir::init();
    let server = Server::start(&vault, &[]);
    let admin = connect(&server, Some(&vault.admin_key)).await;
    let (pipeline, _) = client_with(&admin, &server, "pipeline", &["tokenize:ssn"]).await;
    let (full, full_key) = client_with(&admin, &server, "billing", &["detokenize:ssn"]).await;
    let (masked, masked_key) =
        client_with(&admin, &server, "call-centre", &["detokenize-masked:ssn"]).await;
    let (denied, denied_key) = client_with(&admin, &server, "analytics", &["tokenize:ssn"]).await;
    let (other, other_key) = client_with(&admin, &server, "other", &["detokenize:ssn"]).await;
    let (auditor, auditor_key) = client_with(&admin, &server, "auditor", &["audit"]).await;
    let tokens = texts(
        pipeline
            .tokenize("ssn", vec!["123-45-6789".into(), "987-65-4321".into()])
            .await
            .expect("tokenize"),
    );
    let (token, other_token) = (tokens[0].clone(), tokens[1].clone());

    // In one batch with a token that does not exist: that one is no
    // disclosure, the batch still is one for `token`.
    let results = full
        .detokenize("ssn", vec![token.clone(), "999-99-9999".into()], false)
        .await
        .expect("detokenize");
    assert!(results[0].is_ok() && results[1].is_err());
    texts(
        masked
            .detokenize("ssn", vec![token.clone()], true)
            .await
            .expect("masked"),
    );
    let refused = denied
        .detokenize("ssn", vec![token.clone()], false)
        .await
        .expect_err("denied");
    assert_eq!(code(refused), Code::PermissionDenied);
    texts(
        other
            .detokenize("ssn", vec![other_token.clone()], false)
            .await
            .expect("other"),
    );

    admin.rotate_keys().await.expect("rotate");
    wait_for_rotation(&admin).await;
    let (after, after_key) =
        client_with(&admin, &server, "after-rotation", &["detokenize:ssn"]).await;
    // Written without its dashes: the same token.
    texts(
        after
            .detokenize("ssn", vec![token.replace('-', "")], false)
            .await
            .expect("after rotation"),
    );

    let found = auditor
        .list_disclosures("ssn", &token)
        .await
        .expect("disclosures");
    let who: Vec<(String, bool)> = found
        .iter()
        .map(|d| (d.client_id.clone(), d.masked))
        .collect();
    assert_eq!(
        who,
        [
            (client_id(&full_key), false),
            (client_id(&masked_key), true),
            (client_id(&after_key), false)
        ]
    );
    assert_eq!(found[0].client_name, "billing");
    assert_eq!(
        found.iter().map(|d| d.keyset_version).collect::<Vec<_>>(),
        [1, 1, 2]
    );
    assert!(
        found
            .iter()
            .all(|d| d.request_id.len() == 32 && d.time_ms > 0)
    );
    let others = auditor
        .list_disclosures("ssn", &other_token)
        .await
        .expect("disclosures");
    assert_eq!(others.len(), 1);
    assert_eq!(others[0].client_id, client_id(&other_key));

    // The refusal is in the log, as a refusal.
    let records = export(&server, &auditor_key, &[]);
    assert!(
        records
            .iter()
            .any(|r| field(r, "client_id") == client_id(&denied_key)
                && field(r, "outcome") == "PERMISSION_DENIED"
                && field(r, "rpc") == "/phivault.v1.Tokenizer/Detokenize")
    );
    // Times never decrease along a lane (a record id's high bits; the
    // embedded store has one), and `--since` picks the tail.
    let times: Vec<(u64, u64)> = records
        .iter()
        .map(|r| {
            let id = r["seq"].as_u64().expect("seq");
            (id >> 40, r["time_ms"].as_u64().expect("time"))
        })
        .collect();
    assert!(
        times
            .windows(2)
            .all(|w| w[0].0 != w[1].0 || w[0].1 <= w[1].1)
    );
    let since = field(&records[records.len() / 2], "time").to_owned();
    let tail = export(&server, &auditor_key, &["--since", &since]);
    assert!(!tail.is_empty() && tail.len() < records.len() + 2);
    assert!(tail.iter().all(|r| field(r, "time") >= since.as_str()));

    // The audit scope reads the trail and nothing else; other scopes cannot
    // read it.
    assert_eq!(
        code(
            auditor
                .detokenize("ssn", vec![token.clone()], false)
                .await
                .expect_err("no reveal")
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code(auditor.list_clients().await.expect_err("no admin")),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            full.list_disclosures("ssn", &token)
                .await
                .expect_err("no audit scope")
        ),
        Code::PermissionDenied
    );
    let bad = auditor
        .list_disclosures("ssn", "not-a-token")
        .await
        .expect_err("bad token");
    assert_eq!(code(bad), Code::InvalidArgument);

    let listed = stdout(&cli(
        &server,
        &auditor_key,
        &["audit", "disclosures", "-n", "ssn", &token],
        "",
    ));
    assert_eq!(listed.lines().count(), 3, "{listed}");
    assert!(listed.contains(&client_id(&masked_key)) && listed.contains("masked"));
    let verified = stdout(&cli(&server, &auditor_key, &["audit", "verify"], ""));
    assert!(
        verified.starts_with("ok: the audit chain is intact"),
        "{verified}"
    );

    // Across a restart the chain goes on and verifies offline and online.
    server.stop();
    let server = Server::start(&vault, &[]);
    let auditor = connect(&server, Some(&auditor_key)).await;
    let full = connect(&server, Some(&full_key)).await;
    texts(
        full.detokenize("ssn", vec![token.clone()], false)
            .await
            .expect("after restart"),
    );
    assert_eq!(
        auditor
            .list_disclosures("ssn", &token)
            .await
            .expect("disclosures")
            .len(),
        4
    );
    let report = auditor.verify_audit().await.expect("verify");
    assert_eq!(report.first_bad_seq, 0, "{}", report.problem);
    assert_eq!(report.records, report.head_seq);
    server.stop();
    let offline = std::process::Command::new(phivault_tests::binary("phivault"))
        .args(["audit", "verify", "--json"])
        .args(vault.store_args())
        .output()
        .expect("phivault audit verify");
    assert!(offline.status.success());
    let report: serde_json::Value = serde_json::from_slice(&offline.stdout).expect("json");
    assert_eq!(report["intact"], true);
    assert_eq!(report["records"], report["head_seq"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_closed_while_records_cannot_be_written_and_recover_after() {
    if phivault_tests::embedded_only(
        "calls_fail_closed_while_records_cannot_be_written_and_recover_after",
    ) {
        return;
    }
    let vault = VaultDir::init();
    let flag = vault.data().with_extension("disk-full");
    let flag_path = flag.to_str().expect("utf-8 path").to_owned();
    let server = Server::start_with_env(
        &vault,
        &["--metrics-listen", "127.0.0.1:0"],
        &[("PHIVAULT_FAIL_COMMITS_WHILE", &flag_path)],
    );
    let admin = connect(&server, Some(&vault.admin_key)).await;
    let (pipeline, _) = client_with(
        &admin,
        &server,
        "pipeline",
        &["tokenize:ssn", "detokenize:ssn"],
    )
    .await;
    let (denied, _) = client_with(&admin, &server, "denied", &["tokenize:ssn"]).await;
    let token = texts(
        pipeline
            .tokenize("ssn", vec!["123-45-6789".into()])
            .await
            .expect("tokenize"),
    )
    .remove(0);

    std::fs::write(&flag, b"").expect("fill the disk");
    for masked in [false, true] {
        let error = pipeline
            .detokenize("ssn", vec![token.clone()], masked)
            .await
            .expect_err("no record, no reveal");
        let phivault_client::ClientError::Status(status) = error else {
            panic!("expected a status");
        };
        assert_eq!(status.code(), Code::Unavailable);
        assert!(!status.message().contains("123-45-6789") && !status.message().contains(&token));
        assert!(status.message().contains("audit"), "{}", status.message());
    }
    let mut streamed = pipeline
        .detokenize_stream("ssn", stream::iter(vec![vec![token.clone()]]), false, 1)
        .await
        .expect("stream opens");
    let first = streamed.next().await.expect("an answer");
    assert_eq!(
        code(first.expect_err("no reveal on the stream")),
        Code::Unavailable
    );
    // Refusals and admin calls cannot be recorded either.
    let refused = denied
        .detokenize("ssn", vec![token.clone()], false)
        .await
        .expect_err("refused");
    assert_eq!(code(refused), Code::Unavailable);
    assert_eq!(
        code(admin.list_clients().await.expect_err("admin")),
        Code::Unavailable
    );
    let metrics = scrape(server.metrics_addr.expect("metrics address"));
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("phivault_audit_records_failed_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );

    std::fs::remove_file(&flag).expect("free the disk");
    let revealed = texts(
        pipeline
            .detokenize("ssn", vec![token.clone()], false)
            .await
            .expect("recovered"),
    );
    assert_eq!(revealed, ["123-45-6789"]);
    let disclosures = admin
        .list_disclosures("ssn", &token)
        .await
        .expect("disclosures");
    assert_eq!(disclosures.len(), 1, "only the reveal that was recorded");
    let report = admin.verify_audit().await.expect("verify");
    assert_eq!(report.first_bad_seq, 0, "{}", report.problem);
    server.stop();
}
