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
        message.contains("suspended by anomaly detection (enumeration)"),
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

/// One HTTP/1.1 request as a receiver sees it: headers (lower-cased names)
/// and body.
async fn read_request(stream: &mut tokio::net::TcpStream) -> (Vec<(String, String)>, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "the connection closed before the request ended");
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .expect("a content length");
    while buffer.len() < head_end + length {
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0);
        buffer.extend_from_slice(&chunk[..n]);
    }
    (headers, buffer[head_end..head_end + length].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_reach_a_webhook_signed_and_retried() {
    use hmac::{Hmac, KeyInit, Mac};
    use tokio::io::AsyncWriteExt;
    let vault = VaultDir::init();
    let secret = "a shared secret of the SIEM, 32+ bytes long";
    let secret_file = vault.config(secret);
    std::fs::set_permissions(
        &secret_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod");
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "http://{}/phivault/alerts",
        receiver.local_addr().expect("addr")
    );
    // The receiver is down for the first attempt, then takes the alert.
    let received = tokio::spawn(async move {
        let (mut first, _) = receiver.accept().await.expect("accept");
        let _ = read_request(&mut first).await;
        first
            .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
            .await
            .expect("answer");
        let (mut second, _) = receiver.accept().await.expect("accept again");
        let request = read_request(&mut second).await;
        second
            .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .expect("answer");
        request
    });
    let server = Server::start(
        &vault,
        &[
            "--alert-webhook",
            &url,
            "--alert-webhook-secret-file",
            secret_file.to_str().expect("utf-8"),
        ],
    );
    let root = connect(&server, Some(&vault.admin_key)).await;
    let (etl, key) = client_with(&root, &server, "etl", &["tokenize:dob"]).await;
    let id = key.split('_').nth(1).expect("id").to_owned();
    let dates: Vec<String> = (1..=28).map(|d| format!("1980-02-{d:02}")).collect();
    texts(etl.tokenize("dob", dates).await.expect("tokenize"));
    let (headers, body) = tokio::time::timeout(Duration::from_secs(30), received)
        .await
        .expect("the alert arrives, retried")
        .expect("receiver");
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {name} header"))
    };
    assert_eq!(header("content-type"), "application/json");
    let timestamp = header("x-phivault-timestamp");
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(&body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(header("x-phivault-signature"), format!("sha256={hex}"));
    let alert: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(alert["kind"], "enumeration");
    assert_eq!(alert["client_id"], id.as_str());
    assert_eq!(alert["namespace"], "dob");
    assert!(!String::from_utf8_lossy(&body).contains("1980"));
    server.stop();
}
