//! Rate limits, quotas of new mappings, and tokenize calls on record in
//! aggregate (issue 14), against the real server.

use std::time::{Duration, Instant};

use phivault_client::{ClientError, v1 as pb};
use phivault_tests::{Server, VaultDir};
use tonic::Code;

use super::hardening::records;
use super::{cli, client_with, code, connect, stdout, texts};

/// The key of a client made through the CLI with `args` after its name.
fn create_with(server: &Server, admin_key: &str, name: &str, args: &[&str]) -> String {
    super::create_with(server, admin_key, name, args).0
}

/// The `rpc` of a record that sums up a client's tokenize calls.
const TOKENIZE_SUMMARY_RPC: &str = "(tokenize calls, summarised)";
/// The `rpc` of a record that sums up a client's calls over a limit.
const LIMITED_SUMMARY_RPC: &str = "(calls over a limit, summarised)";

/// The refusal's status, message and retry hint.
fn refusal(error: ClientError) -> (Code, String, Option<Duration>) {
    let wait = error.retry_after();
    let pushback = match &error {
        ClientError::Status(s) => s
            .metadata()
            .get("grpc-retry-pushback-ms")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        _ => None,
    };
    let message = match &error {
        ClientError::Status(s) => s.message().to_owned(),
        other => other.to_string(),
    };
    assert!(
        pushback.is_some(),
        "a refusal carries a pushback: {message}"
    );
    (code(error), message, wait)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_reveal_rate_is_refused_with_a_retry_hint() {
    let vault = VaultDir::init();
    let server = Server::start(&vault, &[]);
    let admin = connect(&server, Some(&vault.admin_key)).await;
    // Five reveals a minute in ssn: the sixth in a row waits twelve seconds.
    let key = create_with(
        &server,
        &vault.admin_key,
        "desk",
        &[
            "--scope",
            "tokenize:*",
            "--scope",
            "detokenize:*",
            "--rate",
            "detokenize:ssn=5/m",
        ],
    );
    let desk = connect(&server, Some(&key)).await;
    let listed = stdout(&cli(&server, &vault.admin_key, &["clients", "list"], ""));
    assert!(
        listed.contains("limits: detokenize:ssn=5/m"),
        "the list shows the client's limits: {listed}"
    );
    let token = texts(
        desk.tokenize("ssn", vec!["123-45-6789".into()])
            .await
            .expect("tokenize"),
    )
    .remove(0);
    for _ in 0..5 {
        let revealed = desk
            .detokenize("ssn", vec![token.clone()], false)
            .await
            .expect("within the rate");
        assert_eq!(texts(revealed), ["123-45-6789"]);
    }
    let (status, message, wait) = refusal(
        desk.detokenize("ssn", vec![token.clone()], true)
            .await
            .expect_err("over the rate"),
    );
    assert_eq!(status, Code::ResourceExhausted);
    assert!(
        message.contains("detokenize limit of 5/m in namespace \"ssn\"")
            && message.contains("retry in"),
        "{message}"
    );
    assert!(!message.contains(&token) && !message.contains("6789"));
    let wait = wait.expect("a time to wait");
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_secs(12),
        "{wait:?}"
    );
    // A call larger than the burst can never pass: no time to wait.
    let (status, message, wait) = refusal(
        desk.detokenize("ssn", vec![token.clone(); 6], false)
            .await
            .expect_err("larger than the burst"),
    );
    assert_eq!(status, Code::ResourceExhausted);
    assert!(message.contains("exceeds the burst"), "{message}");
    assert_eq!(wait, None);
    // Other namespaces, tokenize, and other clients are not held back.
    let mrn = texts(
        desk.tokenize("mrn", vec!["MRN-0042".into()])
            .await
            .expect("tokenize"),
    );
    for _ in 0..10 {
        desk.detokenize("mrn", mrn.clone(), false)
            .await
            .expect("no limit in mrn");
    }
    let (other, _) = client_with(&admin, &server, "other", &["detokenize:ssn"]).await;
    other
        .detokenize("ssn", vec![token.clone()], false)
        .await
        .expect("another client's own allowance");
    // A bad rule is named and refused; nothing is created.
    let refused = cli(
        &server,
        &vault.admin_key,
        &[
            "clients",
            "create",
            "bad",
            "--scope",
            "detokenize:ssn",
            "--rate",
            "detokenize=fast",
        ],
        "",
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("detokenize=fast") && stderr.contains("N/s"),
        "{stderr}"
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_paced_to_its_rate_not_refused() {
    let vault = VaultDir::init();
    let server = Server::start(&vault, &[]);
    let key = create_with(
        &server,
        &vault.admin_key,
        "pipeline",
        &[
            "--scope",
            "tokenize:ssn",
            "--rate",
            "tokenize=2000/s,burst=1000",
        ],
    );
    let pipeline = connect(&server, Some(&key)).await;
    let batches: Vec<Vec<String>> = (0..5)
        .map(|b| {
            (0..1000)
                .map(|i| format!("{:09}", 200_000_000 + b * 1000 + i))
                .collect()
        })
        .collect();
    let started = Instant::now();
    let mut answers = pipeline
        .tokenize_stream("ssn", futures_util::stream::iter(batches), 4)
        .await
        .expect("stream");
    let mut answered = 0;
    while let Some(batch) = futures_util::StreamExt::next(&mut answers).await {
        let batch = batch.expect("a paced batch is answered");
        assert!(batch.iter().all(Result::is_ok));
        answered += batch.len();
    }
    assert_eq!(answered, 5000);
    // 5,000 items at 2,000/s with a burst of 1,000 take at least 2 s: the
    // limit held, and nothing was refused.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    server.stop();
}

/// `key=value` of a summary record's target.
fn field(record: &pb::AuditRecord, key: &str) -> u64 {
    record
        .target
        .split(' ')
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {:?}", record.target))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_mappings_are_bounded_by_a_quota_and_tokenize_is_on_record_in_aggregate() {
    let vault = VaultDir::init();
    let server = Server::start(&vault, &["--summary-window-secs", "1"]);
    let admin = connect(&server, Some(&vault.admin_key)).await;
    let (auditor, _) = client_with(&admin, &server, "auditor", &["audit"]).await;
    let (key, id) = super::create_with(
        &server,
        &vault.admin_key,
        "enumerator",
        &[
            "--scope",
            "tokenize:dob",
            "--quota",
            "new-mappings:dob=100/7d",
        ],
    );
    let enumerator = connect(&server, Some(&key)).await;
    let dates = |from: u32, n: u32| -> Vec<String> {
        (from..from + n)
            .map(|d| {
                format!(
                    "19{:02}-{:02}-{:02}",
                    40 + d / 300,
                    1 + d / 28 % 12,
                    1 + d % 28
                )
            })
            .collect()
    };
    let first = enumerator
        .tokenize("dob", dates(0, 60))
        .await
        .expect("60 of 100");
    assert!(first.iter().all(Result::is_ok));
    // 50 more new ones do not fit: refused whole, nothing minted.
    let (status, message, wait) = refusal(
        enumerator
            .tokenize("dob", dates(60, 50))
            .await
            .expect_err("over the quota"),
    );
    assert_eq!(status, Code::ResourceExhausted);
    assert!(
        message.contains("quota of new mappings of 100/7days in namespace \"dob\"")
            && message.contains("40 left"),
        "{message}"
    );
    assert!(wait.expect("until the window ends") <= Duration::from_secs(7 * 86_400));
    // Values already there cost nothing; 40 new ones still fit.
    let again = enumerator
        .tokenize("dob", dates(0, 60))
        .await
        .expect("hits only");
    assert_eq!(texts(again), texts(first));
    enumerator
        .tokenize("dob", dates(60, 40))
        .await
        .expect("the last 40");
    let spent = enumerator
        .tokenize("dob", dates(100, 1))
        .await
        .expect_err("spent");
    assert_eq!(code(spent), Code::ResourceExhausted);

    // Within a few windows, the trail sums up the calls: 3 that succeeded
    // (160 values: 100 minted, 60 hits) and 2 over the quota (51 values).
    let deadline = Instant::now() + Duration::from_secs(30);
    let (tokenized, limited) = loop {
        let all = records(&auditor).await;
        let mine = |rpc: &str| -> Vec<pb::AuditRecord> {
            all.iter()
                .filter(|r| r.rpc == rpc && r.client_id == id && r.namespace == "dob")
                .cloned()
                .collect()
        };
        let (tokenized, limited) = (mine(TOKENIZE_SUMMARY_RPC), mine(LIMITED_SUMMARY_RPC));
        let calls = |rs: &[pb::AuditRecord]| rs.iter().map(|r| field(r, "calls")).sum::<u64>();
        if (calls(&tokenized) >= 3 && calls(&limited) >= 2) || Instant::now() > deadline {
            break (tokenized, limited);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let sum = |rs: &[pb::AuditRecord], key: &str| rs.iter().map(|r| field(r, key)).sum::<u64>();
    assert_eq!(sum(&tokenized, "calls"), 3, "{tokenized:?}");
    assert_eq!(
        tokenized.iter().map(|r| u64::from(r.items)).sum::<u64>(),
        160
    );
    assert_eq!(sum(&tokenized, "minted"), 100);
    assert_eq!(sum(&tokenized, "hits"), 60);
    assert_eq!(sum(&limited, "calls"), 2);
    assert_eq!(limited.iter().map(|r| u64::from(r.items)).sum::<u64>(), 51);
    assert!(
        limited
            .iter()
            .all(|r| r.target.contains("limit=new-mappings")
                && r.outcome == Code::ResourceExhausted as i32)
    );
    assert!(
        tokenized
            .iter()
            .chain(&limited)
            .all(|r| !r.target.contains("1940-")),
        "no value in a summary"
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_defaults_limit_every_client_that_does_not_set_its_own() {
    let vault = VaultDir::init();
    let config = vault.config("[limits]\nclient_defaults = [\"detokenize=3/m\"]\n");
    let server = Server::start(&vault, &["--config", config.to_str().expect("utf-8")]);
    let admin = connect(&server, Some(&vault.admin_key)).await;
    let (plain, _) = client_with(
        &admin,
        &server,
        "plain",
        &["tokenize:ssn", "detokenize:ssn"],
    )
    .await;
    let key = create_with(
        &server,
        &vault.admin_key,
        "batch",
        &[
            "--scope",
            "detokenize:ssn",
            "--rate",
            "detokenize=unlimited",
        ],
    );
    let lifted = connect(&server, Some(&key)).await;
    let token = texts(
        plain
            .tokenize("ssn", vec!["123-45-6789".into()])
            .await
            .expect("tokenize"),
    );
    for _ in 0..3 {
        plain
            .detokenize("ssn", token.clone(), false)
            .await
            .expect("within the default");
    }
    let over = plain
        .detokenize("ssn", token.clone(), false)
        .await
        .expect_err("over the default");
    assert_eq!(code(over), Code::ResourceExhausted);
    for _ in 0..10 {
        lifted
            .detokenize("ssn", token.clone(), false)
            .await
            .expect("the client lifted the default");
    }
    // A bad default stops the server before it serves.
    let bad = vault.config("[limits]\nclient_defaults = [\"detokenize=lots\"]\n");
    let output = vault
        .command("serve")
        .args([
            "--listen",
            "127.0.0.1:0",
            "--config",
            bad.to_str().expect("utf-8"),
        ])
        .output()
        .expect("run serve");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("client limits"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_over_one_database_share_a_clients_limits() {
    if !phivault_tests::on_postgres() {
        eprintln!("nodes_over_one_database_share_a_clients_limits: runs in the PostgreSQL pass");
        return;
    }
    let vault = VaultDir::init();
    let (a, b) = (Server::start(&vault, &[]), Server::start(&vault, &[]));
    let key = create_with(
        &a,
        &vault.admin_key,
        "desk",
        &[
            "--scope",
            "tokenize:*",
            "--scope",
            "detokenize:ssn",
            "--rate",
            "detokenize:ssn=20/h",
            "--quota",
            "new-mappings:mrn=30/7d",
        ],
    );
    let (on_a, on_b) = (connect(&a, Some(&key)).await, connect(&b, Some(&key)).await);
    // 25 new MRNs of a quota of 30 made on node A, then the whole reveal
    // burst spent there.
    on_a.tokenize("mrn", (0..25).map(|i| format!("MRN-{i:04}")).collect())
        .await
        .expect("25 of 30");
    let token = texts(
        on_a.tokenize("ssn", vec!["123-45-6789".into()])
            .await
            .expect("tokenize"),
    );
    for _ in 0..20 {
        on_a.detokenize("ssn", token.clone(), false)
            .await
            .expect("within the burst");
    }
    // Node B learns of the reveals at its next exchange with the database
    // (once a second): it serves far fewer than a fresh burst, then
    // refuses too.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut served_on_b = 0;
    loop {
        match on_b.detokenize("ssn", token.clone(), false).await {
            Ok(_) => served_on_b += 1,
            Err(e) => {
                assert_eq!(code(e), Code::ResourceExhausted);
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node B never learnt of A's reveals"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("node B served {served_on_b} reveals before it knew");
    assert!(
        served_on_b < 20,
        "node B served {served_on_b} reveals after A spent the burst"
    );
    // The exchange that told B of the reveals told it of the 25 mappings
    // A made before them: 6 more do not fit.
    let six: Vec<String> = (0..6).map(|i| format!("MRN-B{i:03}")).collect();
    let (status, message, _) = refusal(
        on_b.tokenize("mrn", six)
            .await
            .expect_err("past a quota A had all but spent"),
    );
    assert_eq!(status, Code::ResourceExhausted);
    assert!(
        message.contains("5 left") && message.contains("6 needed"),
        "{message}"
    );
    on_b.tokenize("mrn", vec!["MRN-B100".into()])
        .await
        .expect("one of the 5 left");
    b.stop();
    a.stop();
}
