//! Reveal-anomaly detection and quarantine (issue 14), against the real
//! server: rules that need no history, a burst scored against the
//! server-wide prior, alerts on record and listed, a suspension every call
//! then meets, and its release.

use std::time::{Duration, Instant};

use phivault_tests::{Server, VaultDir};
use tonic::Code;

use super::hardening::records;
use super::{cli, client_with, code, connect, create_with, status, stdout, texts};

/// The `rpc` of an alert's record.
const ALERT_RPC: &str = "(alert)";
/// The `rpc` of the record of a suspension.
const SUSPENDED_RPC: &str = "(client suspended by anomaly detection)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enumeration_suspends_a_quarantined_client_until_released() {
    let vault = VaultDir::init();
    let server = Server::start(&vault, &["--metrics-listen", "127.0.0.1:0"]);
    let root = connect(&server, Some(&vault.admin_key)).await;
    let (auditor, audit_key) = client_with(&root, &server, "auditor", &["audit"]).await;
    let (key, id) = create_with(
        &server,
        &vault.admin_key,
        "etl",
        &["--scope", "tokenize:dob", "--quarantine", "suspend"],
    );
    let etl = connect(&server, Some(&key)).await;
    // Dates of birth one day apart, in order: an enumeration of the domain.
    let dates: Vec<String> = (1..=28).map(|d| format!("1980-02-{d:02}")).collect();
    texts(etl.tokenize("dob", dates).await.expect("answered"));
    let (got, message) = status(
        etl.tokenize("dob", vec!["1975-06-01".into()])
            .await
            .expect_err("suspended"),
    );
    assert_eq!(got, Code::PermissionDenied);
    assert!(
        message.contains("suspended by anomaly detection") && message.contains("in sequence"),
        "{message}"
    );
    assert!(!message.contains("1980"), "{message}");
    let trail = records(&auditor).await;
    let alert = trail
        .iter()
        .find(|r| r.rpc == ALERT_RPC && r.client_id == id)
        .expect("an alert on record");
    assert!(
        alert.target.starts_with("kind=enumeration"),
        "{}",
        alert.target
    );
    assert_eq!(trail.iter().filter(|r| r.rpc == SUSPENDED_RPC).count(), 1);
    let listed = stdout(&cli(&server, &audit_key, &["alerts", "list"], ""));
    assert!(
        listed.contains("kind=enumeration") && listed.contains(&id),
        "{listed}"
    );
    let clients = stdout(&cli(&server, &vault.admin_key, &["clients", "list"], ""));
    assert!(
        clients
            .lines()
            .any(|l| l.contains(&id) && l.contains("suspended")),
        "{clients}"
    );
    let metrics = super::scrape(server.metrics_addr.expect("metrics"));
    assert!(
        metrics.contains("phivault_alerts_total{kind=\"enumeration\"} 1"),
        "{metrics}"
    );
    // Released after review: served again.
    stdout(&cli(
        &server,
        &vault.admin_key,
        &["clients", "release", &id],
        "",
    ));
    etl.tokenize("dob", vec!["1975-06-01".into()])
        .await
        .expect("released");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_client_that_starts_by_sweeping_is_flagged_against_the_server_prior() {
    let vault = VaultDir::init();
    let server = Server::start(&vault, &["--detection-window-secs", "1"]);
    let root = connect(&server, Some(&vault.admin_key)).await;
    let (auditor, _) = client_with(&root, &server, "auditor", &["audit"]).await;
    let (pipeline, _) = client_with(&root, &server, "pipeline", &["tokenize:ssn"]).await;
    let (key, id) = create_with(
        &server,
        &vault.admin_key,
        "sweeper",
        &["--scope", "detokenize:ssn"],
    );
    let sweeper = connect(&server, Some(&key)).await;
    // Values chosen so that their tokens are in no order.
    let values: Vec<String> = (0..3_000u64)
        .map(|i| format!("{:09}", 100_000_000 + i * 7_919 % 800_000_000))
        .collect();
    let mut tokens = Vec::new();
    for chunk in values.chunks(1_000) {
        tokens.extend(texts(
            pipeline
                .tokenize("ssn", chunk.to_vec())
                .await
                .expect("tokenize"),
        ));
    }
    for chunk in tokens.chunks(1_000) {
        let revealed = sweeper
            .detokenize("ssn", chunk.to_vec(), false)
            .await
            .expect("revealed: the policy only alerts");
        assert!(revealed.iter().all(Result::is_ok));
    }
    // Within a few windows, the alert names the count and the prior.
    let deadline = Instant::now() + Duration::from_secs(30);
    let alert = loop {
        let found = records(&auditor)
            .await
            .into_iter()
            .find(|r| r.rpc == ALERT_RPC && r.client_id == id);
        if let Some(alert) = found {
            break alert;
        }
        assert!(Instant::now() < deadline, "no alert");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        alert.target.starts_with("kind=anomaly") && alert.target.contains("server-wide"),
        "{}",
        alert.target
    );
    assert!(!values.iter().any(|v| alert.target.contains(v.as_str())));
    // Its policy is to alert only: it is still served.
    let again = sweeper
        .detokenize("ssn", tokens[..1].to_vec(), false)
        .await
        .expect("not suspended");
    assert!(again[0].is_ok());
    let denied = sweeper
        .detokenize("mrn", tokens[..1].to_vec(), false)
        .await
        .expect_err("scopes still hold");
    assert_eq!(code(denied), Code::PermissionDenied);
    server.stop();
}
