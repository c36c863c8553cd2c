//! The HTTP/JSON API, through `curl`: every call goes through the same
//! gate, scopes and audit trail as gRPC, and bad requests get a JSON error
//! that never repeats what they held.

use std::io::Write;
use std::process::{Command, Stdio};

use phivault_tests::{Server, VaultDir};

use super::{client_with, connect, texts};

/// An answer as `curl -i` shows it.
struct Answer {
    status: u16,
    headers: String,
    body: String,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    }
}

/// `curl` of `path` on the server's HTTP listener; the body goes through
/// standard input, so that no value is on a command line.
fn curl(server: &Server, method: &str, path: &str, headers: &[String], body: &[u8]) -> Answer {
    let addr = server.http_addr.expect("started with --http-listen");
    curl_url(&format!("http://{addr}{path}"), method, headers, body, &[])
        .unwrap_or_else(|| panic!("no answer from {addr}"))
}

/// `curl` of `url` with `extra` arguments; `None` when no HTTP answer came
/// (a refused handshake, a closed connection).
fn curl_url(
    url: &str,
    method: &str,
    headers: &[String],
    body: &[u8],
    extra: &[&str],
) -> Option<Answer> {
    let mut command = Command::new("curl");
    command
        .args(["-s", "-i", "-X", method, "--max-time", "30"])
        .args(extra)
        .arg(url);
    for header in headers {
        command.args(["-H", header]);
    }
    if method == "POST" {
        command.args(["--data-binary", "@-"]);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl (Debian package curl)");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(body).expect("request body");
    drop(stdin);
    let output = child.wait_with_output().expect("curl");
    let text = String::from_utf8_lossy(&output.stdout).replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some(Answer {
        status,
        headers: head.to_owned(),
        body: body.to_owned(),
    })
}

fn json_headers(key: &str) -> Vec<String> {
    vec![
        format!("Authorization: Bearer {key}"),
        "Content-Type: application/json".into(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_answers_through_the_same_gate_scopes_and_audit_trail() {
    let vault = VaultDir::init();
    let server = Server::start(&vault, &["--http-listen", "127.0.0.1:0"]);
    let admin = connect(&server, Some(&vault.admin_key)).await;
    let (over_grpc, key) = client_with(
        &admin,
        &server,
        "billing",
        &["tokenize:ssn", "detokenize:ssn"],
    )
    .await;
    let (_, tokenize_only) = client_with(&admin, &server, "ingest", &["tokenize:ssn"]).await;

    // Tokenize: one item per value, an item error for a value that does
    // not fit, saying why without repeating it.
    let answer = curl(
        &server,
        "POST",
        "/v1/namespaces/ssn/tokenize",
        &json_headers(&key),
        br#"{"values": ["123-45-6789", "12-x"]}"#,
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    let results = answer.json()["results"].clone();
    let token = results[0]["text"].as_str().expect("a token").to_owned();
    assert_eq!(results[1]["error"]["code"], "INVALID_ARGUMENT");
    assert!(!answer.body.contains("12-x"), "{}", answer.body);
    // The same mapping as over gRPC.
    let grpc = texts(
        over_grpc
            .tokenize("ssn", vec!["123-45-6789".into()])
            .await
            .expect("tokenize"),
    );
    assert_eq!(grpc, vec![token.clone()]);

    // Detokenize, on record with the caller's request id and purpose.
    let mut headers = json_headers(&key);
    headers.push("X-Request-Id: http-reveal-1".into());
    let body = format!(r#"{{"tokens": ["{token}"], "purpose": "TREAT"}}"#);
    let answer = curl(
        &server,
        "POST",
        "/v1/namespaces/ssn/detokenize",
        &headers,
        body.as_bytes(),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["results"][0]["text"], "123-45-6789");
    assert_eq!(
        answer.header("x-request-id").as_deref(),
        Some("http-reveal-1")
    );
    let disclosures = admin
        .list_disclosures("ssn", &token)
        .await
        .expect("disclosures");
    assert!(
        disclosures.iter().any(|d| d.request_id == "http-reveal-1"
            && d.rpc == "/phivault.v1.Tokenizer/Detokenize"
            && d.purpose == "TREAT"),
        "the HTTP reveal is on record"
    );

    // A client without the scope: 403; no key or a wrong one: 401, with a
    // request id all the same.
    let answer = curl(
        &server,
        "POST",
        "/v1/namespaces/ssn/detokenize",
        &json_headers(&tokenize_only),
        body.as_bytes(),
    );
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert_eq!(answer.json()["error"]["code"], "PERMISSION_DENIED");
    assert!(!answer.body.contains(&token));
    for key in ["pv_0000000000000000_notakey", ""] {
        let answer = curl(
            &server,
            "POST",
            "/v1/namespaces/ssn/detokenize",
            &json_headers(key),
            body.as_bytes(),
        );
        assert_eq!(answer.status, 401, "{}", answer.body);
        assert_eq!(answer.json()["error"]["code"], "UNAUTHENTICATED");
        assert_eq!(answer.header("www-authenticate").as_deref(), Some("Bearer"));
        assert!(
            answer
                .header("x-request-id")
                .is_some_and(|id| !id.is_empty())
        );
    }

    // What the server says about itself, to a valid key.
    let answer = curl(
        &server,
        "GET",
        "/v1/server-info",
        &[format!("Authorization: Bearer {key}")],
        b"",
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["apis"][0], "phivault.v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_http_requests_get_a_json_error_that_repeats_nothing() {
    let canary = "078-05-1120";
    let vault = VaultDir::init();
    let server = Server::start_with_env(
        &vault,
        &[
            "--http-listen",
            "127.0.0.1:0",
            "--max-message-bytes",
            "65536",
        ],
        &[("PHIVAULT_LOG", "debug")],
    );
    let admin = connect(&server, Some(&vault.admin_key)).await;
    let (_, key) = client_with(&admin, &server, "billing", &["tokenize:ssn"]).await;
    let path = "/v1/namespaces/ssn/tokenize";
    let cases: [(&str, Vec<u8>, u16); 4] = [
        (
            "cut short",
            format!(r#"{{"values": ["{canary}""#).into_bytes(),
            400,
        ),
        (
            "an unknown field",
            format!(r#"{{"values": [], "{canary}": 1}}"#).into_bytes(),
            400,
        ),
        (
            "a value of the wrong type",
            format!(r#"{{"values": "{canary}"}}"#).into_bytes(),
            400,
        ),
        (
            "larger than the server takes",
            format!(r#"{{"values": ["{}"]}}"#, canary.repeat(8000)).into_bytes(),
            413,
        ),
    ];
    for (what, body, status) in cases {
        let answer = curl(&server, "POST", path, &json_headers(&key), &body);
        assert_eq!(answer.status, status, "{what}: {}", answer.body);
        let error = &answer.json()["error"];
        assert!(error["code"].is_string(), "{what}: {}", answer.body);
        assert!(
            !answer.body.contains(canary),
            "{what} repeated: {}",
            answer.body
        );
    }
    // Without a good key, a body is not read: the key is refused first.
    let answer = curl(
        &server,
        "POST",
        path,
        &json_headers("pv_0000000000000000_notakey"),
        format!(r#"{{"values": ["{canary}""#).as_bytes(),
    );
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert!(!answer.body.contains(canary));
    let answer = curl(
        &server,
        "POST",
        path,
        &[
            format!("Authorization: Bearer {key}"),
            "Content-Type: text/plain".into(),
        ],
        canary.as_bytes(),
    );
    assert_eq!(answer.status, 415, "{}", answer.body);
    assert!(!answer.body.contains(canary));
    let log = server.stop();
    assert!(!log.contains(canary), "the canary reached the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_speaks_tls_with_the_grpc_certificate() {
    let pki = super::Pki::new();
    let vault = VaultDir::init();
    let server = Server::start(
        &vault,
        &[
            "--tls-cert",
            &pki.path("server.pem"),
            "--tls-key",
            &pki.path("server.key"),
            "--http-listen",
            "127.0.0.1:0",
        ],
    );
    let addr = server.http_addr.expect("HTTP listener");
    let key = [format!("Authorization: Bearer {}", vault.admin_key)];
    let ca = pki.path("ca.pem");
    let answer = curl_url(
        &format!("https://{addr}/v1/server-info"),
        "GET",
        &key,
        b"",
        &["--cacert", &ca],
    )
    .expect("an answer over TLS");
    assert_eq!(answer.status, 200, "{}", answer.body);
    // Plaintext on the TLS port gets no HTTP answer.
    assert!(
        curl_url(
            &format!("http://{addr}/v1/server-info"),
            "GET",
            &key,
            b"",
            &[]
        )
        .is_none(),
        "plaintext answered on the TLS listener"
    );
}

#[test]
fn plaintext_http_off_loopback_is_refused() {
    let vault = VaultDir::init();
    let output = Command::new(phivault_tests::binary("phivault"))
        .arg("serve")
        .args(vault.store_args())
        .args(vault.seal_args())
        .args(["--listen", "127.0.0.1:0", "--http-listen", "0.0.0.0:0"])
        .output()
        .expect("phivault serve");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refusing the HTTP/JSON API in plaintext on 0.0.0.0"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_gets_429_with_retry_after() {
    let vault = VaultDir::init();
    let server = Server::start(&vault, &["--http-listen", "127.0.0.1:0"]);
    let (key, _) = super::create_with(
        &server,
        &vault.admin_key,
        "desk",
        &["--scope", "tokenize:ssn", "--rate", "tokenize:ssn=2/m"],
    );
    let body = br#"{"values": ["123-45-6789"]}"#;
    for _ in 0..2 {
        let answer = curl(
            &server,
            "POST",
            "/v1/namespaces/ssn/tokenize",
            &json_headers(&key),
            body,
        );
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    let answer = curl(
        &server,
        "POST",
        "/v1/namespaces/ssn/tokenize",
        &json_headers(&key),
        body,
    );
    assert_eq!(answer.status, 429, "{}", answer.body);
    assert_eq!(answer.json()["error"]["code"], "RESOURCE_EXHAUSTED");
    let wait: u64 = answer
        .header("retry-after")
        .and_then(|s| s.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=30).contains(&wait), "{wait}");
    assert!(answer.json()["error"]["retry_after_ms"].as_u64().is_some());
}
