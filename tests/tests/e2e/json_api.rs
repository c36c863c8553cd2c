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
async fn the_http_api_speaks_tls_and_mutual_tls_with_the_grpc_certificates() {
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
    drop(server);

    // Mutual TLS holds on the HTTP listener as on gRPC's: no client
    // certificate, no answer.
    let server = Server::start(
        &vault,
        &[
            "--tls-cert",
            &pki.path("server.pem"),
            "--tls-key",
            &pki.path("server.key"),
            "--tls-client-ca",
            &ca,
            "--http-listen",
            "127.0.0.1:0",
        ],
    );
    let url = format!(
        "https://{}/v1/server-info",
        server.http_addr.expect("HTTP listener")
    );
    assert!(
        curl_url(&url, "GET", &key, b"", &["--cacert", &ca]).is_none(),
        "answered a client without a certificate"
    );
    let (cert, cert_key) = (pki.path("client.pem"), pki.path("client.key"));
    let answer = curl_url(
        &url,
        "GET",
        &key,
        b"",
        &["--cacert", &ca, "--cert", &cert, "--key", &cert_key],
    )
    .expect("an answer over mutual TLS");
    assert_eq!(answer.status, 200, "{}", answer.body);
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

/// `method path` with `key` (none: no Authorization header) and a JSON
/// body when there is one.
fn call(server: &Server, key: Option<&str>, method: &str, path: &str, body: &str) -> Answer {
    let mut headers = Vec::new();
    if let Some(key) = key {
        headers.push(format!("Authorization: Bearer {key}"));
    }
    if method == "POST" {
        headers.push("Content-Type: application/json".into());
    }
    curl(server, method, path, &headers, body.as_bytes())
}

fn ok(answer: Answer, what: &str) -> serde_json::Value {
    assert_eq!(answer.status, 200, "{what}: {}", answer.body);
    answer.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_calls_health_and_the_document_work_over_http() {
    let vault = VaultDir::init();
    let server = Server::start(&vault, &["--http-listen", "127.0.0.1:0"]);
    let admin = Some(vault.admin_key.as_str());

    // The document the server serves is the one checked in, and every
    // route it names is served: one that needs a key refuses without one.
    let served = ok(
        call(&server, None, "GET", "/v1/openapi.json", ""),
        "the document",
    );
    let checked_in: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../vault/openapi.json"
        ))
        .expect("vault/openapi.json"),
    )
    .expect("JSON");
    assert_eq!(served, checked_in);
    let paths = served["paths"].as_object().expect("paths");
    for (path, item) in paths {
        let path = path
            .replace("{namespace}", "ssn")
            .replace("{client_id}", "0000000000000000");
        for (method, operation) in item.as_object().expect("a path item") {
            let keyless = operation["security"].as_array().is_some_and(|s| {
                s.iter()
                    .all(|r| r.as_object().is_some_and(|o| o.is_empty()))
            });
            let answer = call(&server, None, &method.to_uppercase(), &path, "{}");
            let expected = if keyless { 200 } else { 401 };
            assert_eq!(answer.status, expected, "{method} {path}: {}", answer.body);
        }
    }
    assert_eq!(
        ok(call(&server, None, "GET", "/v1/health", ""), "live")["status"],
        "SERVING"
    );
    assert_eq!(
        ok(call(&server, None, "GET", "/v1/health/ready", ""), "ready")["status"],
        "SERVING"
    );

    // Namespaces.
    let created = ok(
        call(
            &server,
            admin,
            "POST",
            "/v1/namespaces",
            r#"{"name": "visit", "format": "alnum"}"#,
        ),
        "create a namespace",
    );
    assert_eq!(created["name"], "visit");
    assert_eq!(created["deterministic"], true);
    let listed = ok(call(&server, admin, "GET", "/v1/namespaces", ""), "list");
    let names: Vec<&str> = listed["namespaces"]
        .as_array()
        .expect("namespaces")
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert!(
        names.contains(&"visit") && names.contains(&"ssn"),
        "{names:?}"
    );
    let again = call(
        &server,
        admin,
        "POST",
        "/v1/namespaces",
        r#"{"name": "visit", "format": "alnum"}"#,
    );
    assert_eq!(again.status, 409, "{}", again.body);
    // An administrative body is held to the Admin service's own limit
    // (64 KiB), below the data plane's.
    let oversize = format!(
        r#"{{"name": "big", "scopes": ["{}"]}}"#,
        "tokenize:ssn".repeat(6000)
    );
    let refused = call(&server, admin, "POST", "/v1/clients", &oversize);
    assert_eq!(refused.status, 413, "{}", refused.body);

    // A client made over HTTP, its key shown once, working over HTTP.
    let created = ok(
        call(
            &server,
            admin,
            "POST",
            "/v1/clients",
            r#"{"name": "registration", "scopes": ["tokenize:visit", "detokenize:visit"]}"#,
        ),
        "create a client",
    );
    let id = created["client"]["client_id"]
        .as_str()
        .expect("an id")
        .to_owned();
    let key = created["api_key"].as_str().expect("a key").to_owned();
    assert!(key.starts_with("pv_"));
    let tokenized = ok(
        call(
            &server,
            Some(&key),
            "POST",
            "/v1/namespaces/visit/tokenize",
            r#"{"values": ["MRN0042317"]}"#,
        ),
        "tokenize",
    );
    let token = tokenized["results"][0]["text"]
        .as_str()
        .expect("a token")
        .to_owned();
    let clients = call(&server, admin, "GET", "/v1/clients", "");
    assert!(!clients.body.contains(&key), "a key is shown once");
    let clients = ok(clients, "list clients");
    assert!(
        clients["clients"]
            .as_array()
            .expect("clients")
            .iter()
            .any(|c| c["client_id"] == id.as_str() && c["revoked"] == false)
    );

    // Its key rotated with no grace: the old key stops at once.
    let rotated = ok(
        call(
            &server,
            admin,
            "POST",
            &format!("/v1/clients/{id}/rotate-key"),
            r#"{"grace_secs": 0}"#,
        ),
        "rotate a client's key",
    );
    let new_key = rotated["api_key"].as_str().expect("a key").to_owned();
    let reveal = format!(r#"{{"tokens": ["{token}"], "purpose": "TREAT"}}"#);
    let detokenize = "/v1/namespaces/visit/detokenize";
    assert_eq!(
        call(&server, Some(&key), "POST", detokenize, &reveal).status,
        401
    );
    let revealed = ok(
        call(&server, Some(&new_key), "POST", detokenize, &reveal),
        "reveal with the new key",
    );
    assert_eq!(revealed["results"][0]["text"], "MRN0042317");

    // Released (nothing to re-arm), then revoked: its next call is refused.
    ok(
        call(
            &server,
            admin,
            "POST",
            &format!("/v1/clients/{id}/release"),
            "",
        ),
        "release",
    );
    let revoked = ok(
        call(
            &server,
            admin,
            "POST",
            &format!("/v1/clients/{id}/revoke"),
            "",
        ),
        "revoke",
    );
    assert_eq!(revoked["revoked"], true);
    assert_eq!(
        call(&server, Some(&new_key), "POST", detokenize, &reveal).status,
        401
    );
    let unknown = call(
        &server,
        admin,
        "POST",
        "/v1/clients/0000000000000000/revoke",
        "",
    );
    assert_eq!(unknown.status, 404, "{}", unknown.body);

    // Keys: a rotation starts, and the new version is active.
    let status = ok(call(&server, admin, "GET", "/v1/keys", ""), "key status");
    assert_eq!(status["active_version"], 1);
    let started = ok(
        call(&server, admin, "POST", "/v1/keys/rotate", ""),
        "rotate keys",
    );
    assert_eq!(started["new_version"], 2);
    let status = ok(call(&server, admin, "GET", "/v1/keys", ""), "key status");
    assert_eq!(status["active_version"], 2);

    // The audit trail: the reveal above is found by its token (in the
    // body, not the URL), and the chain verifies.
    let found = ok(
        call(
            &server,
            admin,
            "POST",
            "/v1/namespaces/visit/disclosures/search",
            &format!(r#"{{"token": "{token}"}}"#),
        ),
        "disclosures",
    );
    let disclosures = found["disclosures"].as_array().expect("disclosures");
    assert_eq!(disclosures.len(), 1, "{found}");
    assert_eq!(disclosures[0]["client_id"], id.as_str());
    assert_eq!(disclosures[0]["purpose"], "TREAT");
    let verified = ok(
        call(&server, admin, "POST", "/v1/audit/verify", ""),
        "verify",
    );
    assert_eq!(verified["first_bad_seq"], 0, "{verified}");
    assert!(verified["records"].as_u64().is_some_and(|n| n > 10));
    let log = server.stop();
    for secret in [key.as_str(), new_key.as_str(), "MRN0042317", token.as_str()] {
        assert!(!log.contains(secret), "the log holds a key, value or token");
    }
}

/// Each scope opens exactly its calls over HTTP, as over gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_scope_opens_exactly_its_http_calls() {
    let vault = VaultDir::init();
    let server = Server::start(&vault, &["--http-listen", "127.0.0.1:0"]);
    let admin = connect(&server, Some(&vault.admin_key)).await;
    let (_, writer) = client_with(&admin, &server, "writer", &["tokenize:ssn"]).await;
    let tokenized = ok(
        call(
            &server,
            Some(&writer),
            "POST",
            "/v1/namespaces/ssn/tokenize",
            r#"{"values": ["123-45-6789"]}"#,
        ),
        "tokenize",
    );
    let token = tokenized["results"][0]["text"]
        .as_str()
        .expect("a token")
        .to_owned();
    let reveal = format!(r#"{{"tokens": ["{token}"]}}"#);
    let masked = format!(r#"{{"tokens": ["{token}"], "masked": true}}"#);
    let search = format!(r#"{{"token": "{token}"}}"#);
    let calls: [(&str, &str, &str); 7] = [
        (
            "POST",
            "/v1/namespaces/ssn/tokenize",
            r#"{"values": ["123-45-6789"]}"#,
        ),
        ("POST", "/v1/namespaces/ssn/detokenize", &reveal),
        ("POST", "/v1/namespaces/ssn/detokenize", &masked),
        ("GET", "/v1/clients", ""),
        ("GET", "/v1/keys", ""),
        ("POST", "/v1/namespaces/ssn/disclosures/search", &search),
        ("POST", "/v1/audit/verify", ""),
    ];
    // Per scope set, the status of each call above.
    let matrix: [(&[&str], [u16; 7]); 7] = [
        (&["tokenize:ssn"], [200, 403, 403, 403, 403, 403, 403]),
        (&["tokenize:email"], [403, 403, 403, 403, 403, 403, 403]),
        (&["detokenize:ssn"], [403, 200, 200, 403, 403, 403, 403]),
        (
            &["detokenize-masked:ssn"],
            [403, 403, 200, 403, 403, 403, 403],
        ),
        (&["audit"], [403, 403, 403, 403, 403, 200, 200]),
        // An administrator made as a client does not read the audit trail
        // it administers (separation of duties), unless also given audit.
        (&["admin"], [403, 403, 403, 200, 200, 403, 403]),
        (&["admin", "audit"], [403, 403, 403, 200, 200, 200, 200]),
    ];
    for (i, (scopes, expected)) in matrix.iter().enumerate() {
        let (_, key) = client_with(&admin, &server, &format!("c{i}"), scopes).await;
        for ((method, path, body), want) in calls.iter().zip(expected) {
            let answer = call(&server, Some(&key), method, path, body);
            assert_eq!(
                answer.status, *want,
                "{scopes:?}: {method} {path}: {}",
                answer.body
            );
            if answer.status == 403 {
                assert_eq!(answer.json()["error"]["code"], "PERMISSION_DENIED");
            }
            assert!(
                !answer.body.contains("123-45-6789") || *want == 200,
                "a refusal repeated the value"
            );
        }
    }
}
