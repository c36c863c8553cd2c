//! The real `phivault` binary on a loopback port, driven through the client
//! library.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::{StreamExt, stream};
use phivault_client::{Client, ClientOptions, v1 as pb};
use phivault_tests::{Server, VaultDir};
use tonic::Code;

mod audit;
mod bulk;
mod client_safety;
mod cluster;
mod detection;
mod duties;
mod failover;
mod hardening;
mod json_api;
mod keys;
mod limits;
mod portable;
mod purpose;
mod seals;
mod traces;

async fn connect(server: &Server, key: Option<&str>) -> Client {
    let mut options = ClientOptions::new(server.endpoint());
    if let Some(key) = key {
        options = options.api_key(key);
    }
    Client::connect(options).await.expect("connect")
}

async fn client_with(
    admin: &Client,
    server: &Server,
    name: &str,
    scopes: &[&str],
) -> (Client, String) {
    let created = admin
        .create_client(name, scopes.iter().map(|s| (*s).to_owned()).collect())
        .await
        .expect("create client");
    let key = created.api_key;
    (connect(server, Some(&key)).await, key)
}

/// Waits until `server` (started with `--metrics-listen`) has a
/// `TokenizeStream` under way, while `run` is still going: the bulk run is
/// streaming to this node.
fn wait_for_stream(server: &Server, run: &mut std::process::Child) {
    let metrics = server.metrics_addr.expect("started with --metrics-listen");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let streaming = |text: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(
                    r#"phivault_grpc_calls_in_progress{rpc="/phivault.v1.Tokenizer/TokenizeStream"} "#,
                )
            })
            .and_then(|n| n.parse::<i64>().ok())
            .is_some_and(|n| n > 0)
    };
    while !streaming(&scrape(metrics)) {
        assert!(
            run.try_wait().expect("poll").is_none(),
            "the run ended before it streamed to this node"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the run did not stream to this node"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Waits until `file` holds more than `bytes` bytes, while the bulk `run`
/// is still going: a node stops or restarts in the middle of the run, not
/// after it. Returns the size reached.
fn wait_for_growth(file: &std::path::Path, bytes: u64, run: &mut std::process::Child) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let size = std::fs::metadata(file).map_or(0, |m| m.len());
        if size > bytes {
            return size;
        }
        if let Some(status) = run.try_wait().expect("poll") {
            let mut stderr = String::new();
            if let Some(mut pipe) = run.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
            }
            panic!("the run ended ({status}) before the node stopped: {stderr}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the run made no progress"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn texts(results: Vec<phivault_client::ItemResult>) -> Vec<String> {
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("item failed: {} {}", e.code, e.message)))
        .collect()
}

/// The status code and message of a call's error.
fn status(error: phivault_client::ClientError) -> (Code, String) {
    match error {
        phivault_client::ClientError::Status(s) => (s.code(), s.message().to_owned()),
        other => panic!("expected a status, got {other}"),
    }
}

fn code(error: phivault_client::ClientError) -> Code {
    match error {
        phivault_client::ClientError::Status(status) => status.code(),
        other => panic!("expected a status, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_default_namespace_round_trips_and_survives_a_restart() {
    let vault = VaultDir::init();
    let server = Server::start(&vault, &[]);
    let admin = connect(&server, Some(&vault.admin_key)).await;
    let (pipeline, _) =
        client_with(&admin, &server, "pipeline", &["tokenize:*", "detokenize:*"]).await;
    let samples = [
        ("ssn", "123-45-6789"),
        ("card", "4111 1111 1111 1111"),
        ("phone", "+1 (555) 010-0199 x12"),
        ("email", "jane.doe@example.org"),
        ("dob", "1984-02-29"),
        ("name", "Zoë O'Brien"),
        ("mrn", "MRN-0042"),
        ("zip", "02139"),
        ("text", "Patient reports chest pain since Tuesday."),
    ];
    let mut tokens = HashMap::new();
    for (ns, value) in samples {
        let token = texts(
            pipeline
                .tokenize(ns, vec![value.into()])
                .await
                .expect("tokenize"),
        )
        .remove(0);
        assert_ne!(token, value, "{ns}");
        let back = texts(
            pipeline
                .detokenize(ns, vec![token.clone()], false)
                .await
                .expect("detokenize"),
        )
        .remove(0);
        assert_eq!(back, value, "{ns}");
        tokens.insert(ns, token);
    }
    drop((admin, pipeline));
    let log = server.stop();
    for (_, value) in samples {
        assert!(!log.contains(value), "a value reached the server log");
    }
    for token in tokens.values() {
        assert!(
            !log.contains(token.as_str()),
            "a token reached the server log"
        );
    }

    let server = Server::start(&vault, &[]);
    let admin = connect(&server, Some(&vault.admin_key)).await;
    let (pipeline, _) = client_with(&admin, &server, "pipeline-2", &["tokenize:*"]).await;
    for (ns, value) in samples {
        let token = texts(
            pipeline
                .tokenize(ns, vec![value.into()])
                .await
                .expect("tokenize"),
        )
        .remove(0);
        assert_eq!(&token, &tokens[ns], "{ns}: token changed across a restart");
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Tokenize,
    Detokenize,
    DetokenizeMasked,
    CreateClient,
}

/// One caller's expected code for each (operation, namespace).
type Row = [(Op, &'static str, Code); 8];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scope_matrix() {
    let vault = VaultDir::init();
    let server = Server::start(&vault, &[]);
    let admin = connect(&server, Some(&vault.admin_key)).await;
    let (pipeline, _) = client_with(&admin, &server, "pipeline", &["tokenize:*"]).await;
    let ssn_token = texts(
        pipeline
            .tokenize("ssn", vec!["123-45-6789".into()])
            .await
            .expect("t"),
    )
    .remove(0);
    let email_token = texts(
        pipeline
            .tokenize("email", vec!["jane@example.org".into()])
            .await
            .expect("t"),
    )
    .remove(0);
    let (_, revoked_key) = client_with(
        &admin,
        &server,
        "gone",
        &["tokenize:*", "detokenize:*", "admin"],
    )
    .await;
    let revoked_id = revoked_key
        .split('_')
        .nth(1)
        .expect("pv_<id>_<secret>")
        .to_owned();
    admin.revoke_client(&revoked_id).await.expect("revoke");

    let unknown = format!("pv_{}_{}", "0123456789abcdef", "ab".repeat(32));
    let mut callers: Vec<(&str, Client)> = vec![
        ("no key", connect(&server, None).await),
        ("malformed key", connect(&server, Some("not-a-key")).await),
        ("unknown key", connect(&server, Some(&unknown)).await),
        ("revoked key", connect(&server, Some(&revoked_key)).await),
    ];
    for (label, scope) in [
        ("tokenize:ssn", "tokenize:ssn"),
        ("lookup:ssn", "lookup:ssn"),
        ("detokenize:ssn", "detokenize:ssn"),
        ("detokenize-masked:ssn", "detokenize-masked:ssn"),
        ("admin", "admin"),
    ] {
        callers.push((
            label,
            client_with(&admin, &server, &label.replace(':', "-"), &[scope])
                .await
                .0,
        ));
    }

    use Code::{Ok as Allowed, PermissionDenied as Denied, Unauthenticated as Unauth};
    use Op::*;
    // caller → (operation, namespace) → expected code.
    let expected: Vec<(&str, Row)> = vec![
        (
            "no key",
            [
                (Tokenize, "ssn", Unauth),
                (Tokenize, "email", Unauth),
                (Detokenize, "ssn", Unauth),
                (Detokenize, "email", Unauth),
                (DetokenizeMasked, "ssn", Unauth),
                (DetokenizeMasked, "email", Unauth),
                (CreateClient, "ssn", Unauth),
                (CreateClient, "email", Unauth),
            ],
        ),
        (
            "malformed key",
            [
                (Tokenize, "ssn", Unauth),
                (Tokenize, "email", Unauth),
                (Detokenize, "ssn", Unauth),
                (Detokenize, "email", Unauth),
                (DetokenizeMasked, "ssn", Unauth),
                (DetokenizeMasked, "email", Unauth),
                (CreateClient, "ssn", Unauth),
                (CreateClient, "email", Unauth),
            ],
        ),
        (
            "unknown key",
            [
                (Tokenize, "ssn", Unauth),
                (Tokenize, "email", Unauth),
                (Detokenize, "ssn", Unauth),
                (Detokenize, "email", Unauth),
                (DetokenizeMasked, "ssn", Unauth),
                (DetokenizeMasked, "email", Unauth),
                (CreateClient, "ssn", Unauth),
                (CreateClient, "email", Unauth),
            ],
        ),
        (
            "revoked key",
            [
                (Tokenize, "ssn", Unauth),
                (Tokenize, "email", Unauth),
                (Detokenize, "ssn", Unauth),
                (Detokenize, "email", Unauth),
                (DetokenizeMasked, "ssn", Unauth),
                (DetokenizeMasked, "email", Unauth),
                (CreateClient, "ssn", Unauth),
                (CreateClient, "email", Unauth),
            ],
        ),
        (
            "tokenize:ssn",
            [
                (Tokenize, "ssn", Allowed),
                (Tokenize, "email", Denied),
                (Detokenize, "ssn", Denied),
                (Detokenize, "email", Denied),
                (DetokenizeMasked, "ssn", Denied),
                (DetokenizeMasked, "email", Denied),
                (CreateClient, "ssn", Denied),
                (CreateClient, "email", Denied),
            ],
        ),
        (
            "lookup:ssn",
            [
                (Tokenize, "ssn", Allowed),
                (Tokenize, "email", Denied),
                (Detokenize, "ssn", Denied),
                (Detokenize, "email", Denied),
                (DetokenizeMasked, "ssn", Denied),
                (DetokenizeMasked, "email", Denied),
                (CreateClient, "ssn", Denied),
                (CreateClient, "email", Denied),
            ],
        ),
        (
            "detokenize:ssn",
            [
                (Tokenize, "ssn", Denied),
                (Tokenize, "email", Denied),
                (Detokenize, "ssn", Allowed),
                (Detokenize, "email", Denied),
                (DetokenizeMasked, "ssn", Allowed),
                (DetokenizeMasked, "email", Denied),
                (CreateClient, "ssn", Denied),
                (CreateClient, "email", Denied),
            ],
        ),
        (
            "detokenize-masked:ssn",
            [
                (Tokenize, "ssn", Denied),
                (Tokenize, "email", Denied),
                (Detokenize, "ssn", Denied),
                (Detokenize, "email", Denied),
                (DetokenizeMasked, "ssn", Allowed),
                (DetokenizeMasked, "email", Denied),
                (CreateClient, "ssn", Denied),
                (CreateClient, "email", Denied),
            ],
        ),
        (
            "admin",
            [
                (Tokenize, "ssn", Denied),
                (Tokenize, "email", Denied),
                (Detokenize, "ssn", Denied),
                (Detokenize, "email", Denied),
                (DetokenizeMasked, "ssn", Denied),
                (DetokenizeMasked, "email", Denied),
                (CreateClient, "ssn", Allowed),
                (CreateClient, "email", Allowed),
            ],
        ),
    ];

    let mut created = 0;
    for (label, cells) in expected {
        let caller = &callers.iter().find(|(l, _)| *l == label).expect("caller").1;
        for (op, ns, want) in cells {
            let (value, token) = if ns == "ssn" {
                ("123-45-6789", &ssn_token)
            } else {
                ("jane@example.org", &email_token)
            };
            let got = match op {
                Tokenize => caller
                    .tokenize(ns, vec![value.into()])
                    .await
                    .map(|r| texts(r).remove(0)),
                Detokenize => caller
                    .detokenize(ns, vec![token.clone()], false)
                    .await
                    .map(|r| texts(r).remove(0)),
                DetokenizeMasked => caller
                    .detokenize(ns, vec![token.clone()], true)
                    .await
                    .map(|r| texts(r).remove(0)),
                CreateClient => {
                    created += 1;
                    caller
                        .create_client(&format!("made-{created}"), vec!["tokenize:ssn".into()])
                        .await
                        .map(|r| r.api_key)
                }
            };
            match got {
                Ok(text) => {
                    assert_eq!(
                        want, Allowed,
                        "{label} {op:?} {ns}: allowed, expected {want:?}"
                    );
                    match op {
                        Detokenize => assert_eq!(text, value),
                        DetokenizeMasked => assert_eq!(text, "*******6789"),
                        _ => {}
                    }
                }
                Err(e) => assert_eq!(code(e), want, "{label} {op:?} {ns}"),
            }
        }
    }

    // Without detokenize scope an existing and an unknown token look alike.
    let tokenize_only = &callers
        .iter()
        .find(|(l, _)| *l == "tokenize:ssn")
        .expect("caller")
        .1;
    let existing = tokenize_only
        .detokenize("ssn", vec![ssn_token.clone()], false)
        .await
        .err()
        .map(|e| e.to_string());
    let missing = tokenize_only
        .detokenize("ssn", vec!["999-99-9999".into()], false)
        .await
        .err()
        .map(|e| e.to_string());
    let no_namespace = tokenize_only
        .detokenize("nope", vec!["x".into()], false)
        .await
        .err()
        .map(|e| e.to_string());
    assert!(existing.is_some());
    assert_eq!(existing, missing);
    assert_eq!(
        no_namespace.map(|m| m.replace("\"nope\"", "\"ssn\"")),
        existing
    );
}

/// Creates `visit`, a random alphanumeric namespace: every tokenize of a
/// value mints a new token.
async fn random_visit_namespace(admin: &Client) {
    admin
        .create_namespace(pb::CreateNamespaceRequest {
            name: "visit".into(),
            format: "alnum".into(),
            options: None,
            random: true,
        })
        .await
        .expect("random namespace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_client_finds_existing_tokens_and_never_mints() {
    let vault = VaultDir::init();
    let server = Server::start(&vault, &[]);
    let admin = connect(&server, Some(&vault.admin_key)).await;
    let (pipeline, _) = client_with(&admin, &server, "pipeline", &["tokenize:*"]).await;
    let (joiner, _) = client_with(&admin, &server, "joiner", &["lookup:*"]).await;
    random_visit_namespace(&admin).await;
    let known = texts(
        pipeline
            .tokenize("dob", vec!["1976-07-04".into(), "1980-01-31".into()])
            .await
            .expect("tokenize"),
    );

    // Known values, in any accepted spelling, find their tokens; a new one
    // is NOT_FOUND, without its value in the message, and stays unminted.
    let asked = vec![
        "1976-07-04".to_owned(),
        "1999-12-25".to_owned(),
        "1980-01-31".to_owned(),
    ];
    let results = joiner.tokenize("dob", asked.clone()).await.expect("lookup");
    assert_eq!(results[0].as_ref().expect("known"), &known[0]);
    assert_eq!(results[2].as_ref().expect("known"), &known[1]);
    let missing = results[1].as_ref().expect_err("never tokenized");
    assert_eq!(missing.code, Code::NotFound as i32);
    assert!(!missing.message.contains("1999"), "{}", missing.message);
    let again = joiner.tokenize("dob", asked.clone()).await.expect("lookup");
    assert!(
        again[1].is_err(),
        "a lookup minted the value it was asked for"
    );
    // Once a client that may mint brings it, the lookup finds it.
    let minted = texts(
        pipeline
            .tokenize("dob", vec!["1999-12-25".into()])
            .await
            .expect("tokenize"),
    );
    let found = joiner.tokenize("dob", asked).await.expect("lookup");
    assert_eq!(found[1].as_ref().expect("now known"), &minted[0]);

    // The same over a stream.
    let streamed: Vec<_> = joiner
        .tokenize_stream(
            "dob",
            stream::iter(vec![vec!["1976-07-04".into(), "2001-02-03".into()]]),
            2,
        )
        .await
        .expect("stream")
        .collect()
        .await;
    let streamed = streamed
        .into_iter()
        .next()
        .expect("one answer")
        .expect("batch");
    assert_eq!(streamed[0].as_ref().expect("known"), &known[0]);
    assert_eq!(
        streamed[1].as_ref().expect_err("unknown").code,
        Code::NotFound as i32
    );

    // A random namespace mints anew for every value: nothing to look up.
    pipeline
        .tokenize("visit", vec!["V123".into()])
        .await
        .expect("tokenize");
    let random = joiner
        .tokenize("visit", vec!["V123".into()])
        .await
        .expect("lookup");
    let refused = random[0].as_ref().expect_err("random namespace");
    assert_eq!(refused.code, Code::NotFound as i32);
    assert!(
        refused.message.contains("nothing to look up"),
        "{}",
        refused.message
    );
    drop((admin, pipeline, joiner));
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_masked_reveal_that_tokenize_could_complete_is_granted_only_when_allowed() {
    let vault = VaultDir::init();
    let server = Server::start(&vault, &[]);
    let admin = connect(&server, Some(&vault.admin_key)).await;
    for scopes in [
        &["tokenize:ssn", "detokenize-masked:ssn"][..],
        &["lookup:*", "detokenize-masked:ssn"],
        &["tokenize:ssn", "detokenize-masked:*"],
    ] {
        let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
        let error = admin
            .create_client("clerk", scopes.clone())
            .await
            .expect_err("an oracle pair");
        let message = match &error {
            phivault_client::ClientError::Status(status) => status.message().to_owned(),
            other => panic!("expected a status, got {other}"),
        };
        assert_eq!(code(error), Code::InvalidArgument, "{scopes:?}");
        assert!(
            message.contains("\"ssn\"") && message.contains("allow"),
            "{message}"
        );
    }
    let names: Vec<String> = admin
        .list_clients()
        .await
        .expect("clients")
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert!(
        !names.contains(&"clerk".to_owned()),
        "a refused client was created"
    );
    // Different namespaces, or a full reveal, add nothing: granted.
    admin
        .create_client(
            "clerk",
            vec!["tokenize:email".into(), "detokenize-masked:ssn".into()],
        )
        .await
        .expect("no oracle");
    // Allowed explicitly, over the API and from the command line.
    admin
        .create_client_with(pb::CreateClientRequest {
            name: "desk".into(),
            scopes: vec!["tokenize:ssn".into(), "detokenize-masked:ssn".into()],
            allow_masked_oracle: true,
            ..Default::default()
        })
        .await
        .expect("allowed explicitly");
    let args = [
        "clients",
        "create",
        "front",
        "--scope",
        "lookup:ssn",
        "--scope",
        "detokenize-masked:ssn",
    ];
    let refused = cli(&server, &vault.admin_key, &args, "");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--allow-masked-oracle"));
    let mut allowed = args.to_vec();
    allowed.push("--allow-masked-oracle");
    let key = stdout(&cli(&server, &vault.admin_key, &allowed, ""));
    assert!(key.trim().starts_with("pv_"));
    drop(admin);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_give_clear_statuses_and_the_server_keeps_serving() {
    let vault = VaultDir::init();
    let server = Server::start(&vault, &[]);
    let admin = connect(&server, Some(&vault.admin_key)).await;
    let (pipeline, _) =
        client_with(&admin, &server, "pipeline", &["tokenize:*", "detokenize:*"]).await;

    let oversize = vec!["x".repeat(4000); 1100];
    let error = pipeline
        .tokenize("text", oversize)
        .await
        .expect_err("over 4 MiB");
    assert_eq!(code(error), Code::ResourceExhausted);

    let too_many = vec!["123-45-6789".to_owned(); 10_001];
    let error = pipeline
        .tokenize("ssn", too_many)
        .await
        .expect_err("10,001 items");
    assert_eq!(code(error), Code::InvalidArgument);

    let results = pipeline
        .tokenize("text", vec!["y".repeat(5 * 1024), "fine".into()])
        .await
        .expect("call succeeds");
    let item = results[0].as_ref().expect_err("5 KiB value");
    assert_eq!(item.code, Code::InvalidArgument as i32);
    assert!(item.message.contains("4096"), "{}", item.message);
    assert!(results[1].is_ok());

    let error = pipeline
        .tokenize("no-such-namespace", vec!["x".into()])
        .await
        .expect_err("unknown namespace");
    assert_eq!(code(error), Code::NotFound);

    // 1,000 malformed requests of every kind, then business as usual.
    for i in 0..1000 {
        let result = match i % 4 {
            0 => pipeline
                .tokenize("ssn", vec!["not an ssn".into()])
                .await
                .map(drop),
            1 => pipeline
                .detokenize("ssn", vec!["zzz".into()], false)
                .await
                .map(drop),
            2 => pipeline.tokenize("", vec![]).await.map(drop),
            _ => connect(&server, Some("Bearer nonsense"))
                .await
                .tokenize("ssn", vec![])
                .await
                .map(drop),
        };
        let _ = result;
    }
    let token = texts(
        pipeline
            .tokenize("ssn", vec!["123-45-6789".into()])
            .await
            .expect("still serving"),
    )
    .remove(0);
    assert_eq!(
        texts(
            pipeline
                .detokenize("ssn", vec![token], false)
                .await
                .expect("still serving")
        ),
        ["123-45-6789"]
    );
    assert!(admin.health().await.expect("health"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_keep_order_and_survive_a_cancelling_client() {
    let vault = VaultDir::init();
    let server = Server::start(&vault, &[]);
    let admin = connect(&server, Some(&vault.admin_key)).await;
    let (pipeline, _) =
        client_with(&admin, &server, "pipeline", &["tokenize:*", "detokenize:*"]).await;

    let batches: Vec<Vec<String>> = (0..200)
        .map(|b| {
            (0..50)
                .map(|i| format!("{:09}", 100_000_000 + b * 50 + i))
                .collect()
        })
        .collect();
    let responses: Vec<_> = pipeline
        .tokenize_stream("ssn", stream::iter(batches.clone()), 8)
        .await
        .expect("stream")
        .collect()
        .await;
    assert_eq!(responses.len(), 200);
    for (batch, response) in batches.iter().zip(responses) {
        let tokens = texts(response.expect("batch"));
        // Order within and across batches: each token reveals its own value.
        let values = texts(
            pipeline
                .detokenize("ssn", tokens, false)
                .await
                .expect("detokenize"),
        );
        assert_eq!(&values, batch);
    }

    // A client that walks away mid-stream. Its requests are produced no
    // further ahead than the answers it has read plus its window: sent
    // without that bound, small messages pile up in the server's buffers
    // until the server takes the connection for a flood and closes it.
    {
        let produced = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&produced);
        let endless = stream::iter(0..).map(move |b: u64| {
            counted.fetch_add(1, Ordering::SeqCst);
            vec![format!("{:09}", 200_000_000 + b)]
        });
        let mut responses = pipeline
            .tokenize_stream("ssn", endless, 8)
            .await
            .expect("stream");
        for _ in 0..10 {
            responses.next().await.expect("a response").expect("ok");
        }
        let produced = produced.load(Ordering::SeqCst);
        assert!(
            produced <= 10 + 8,
            "{produced} requests made for 10 answers and a window of 8"
        );
    }
    assert!(admin.health().await.expect("health"));
    assert!(
        pipeline
            .tokenize("ssn", vec!["123-45-6789".into()])
            .await
            .is_ok()
    );
    drop((admin, pipeline));
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_is_refused_off_loopback() {
    let vault = VaultDir::init();
    let output = std::process::Command::new(phivault_tests::binary("phivault"))
        .arg("serve")
        .args(vault.store_args())
        .args([
            "--master-key-file",
            vault.key_file().to_str().expect("utf-8"),
        ])
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("refusing plaintext"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_and_clients_are_administered_over_the_wire() {
    let vault = VaultDir::init();
    let server = Server::start(&vault, &[]);
    let admin = connect(&server, Some(&vault.admin_key)).await;
    let created = admin
        .create_namespace(pb::CreateNamespaceRequest {
            name: "visit-date".into(),
            format: "date".into(),
            options: Some(pb::FormatOptions {
                date_pattern: Some("%m/%d/%Y".into()),
                ..Default::default()
            }),
            random: false,
        })
        .await
        .expect("create namespace");
    assert_eq!(created.format, "date");
    let names: Vec<String> = admin
        .list_namespaces()
        .await
        .expect("list")
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert!(names.contains(&"visit-date".to_owned()));
    let error = admin
        .create_namespace(pb::CreateNamespaceRequest {
            name: "x".into(),
            format: "nope".into(),
            options: None,
            random: false,
        })
        .await
        .expect_err("unknown format");
    assert_eq!(code(error), Code::InvalidArgument);

    let (pipeline, key) = client_with(&admin, &server, "pipeline", &["tokenize:visit-date"]).await;
    let token = texts(
        pipeline
            .tokenize("visit-date", vec!["07/04/1976".into()])
            .await
            .expect("tokenize"),
    )
    .remove(0);
    assert_eq!(token.len(), 10);
    assert_eq!(&token[2..3], "/");
    let id = key.split('_').nth(1).expect("id").to_owned();
    let clients = admin.list_clients().await.expect("list");
    assert!(clients.iter().any(|c| c.client_id == id && !c.revoked));
    admin.revoke_client(&id).await.expect("revoke");
    let error = pipeline
        .tokenize("visit-date", vec!["07/04/1976".into()])
        .await
        .expect_err("revoked");
    assert_eq!(code(error), Code::Unauthenticated);
}

/// A throwaway CA with a server certificate for 127.0.0.1 and a client
/// certificate, written as PEM files.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair,
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_key = KeyPair::generate().expect("key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "phivault test CA");
        let ca = ca_params.self_signed(&ca_key).expect("CA");
        let issuer = Issuer::new(ca_params, ca_key);
        let mut files = vec![("ca.pem", ca.pem())];
        for (name, san, usage) in [
            ("server", "127.0.0.1", ExtendedKeyUsagePurpose::ServerAuth),
            (
                "client",
                "pipeline.example",
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
        ] {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(vec![san.to_owned()]).expect("params");
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &issuer).expect("sign");
            files.push((
                if name == "server" {
                    "server.pem"
                } else {
                    "client.pem"
                },
                cert.pem(),
            ));
            files.push((
                if name == "server" {
                    "server.key"
                } else {
                    "client.key"
                },
                key.serialize_pem(),
            ));
        }
        for (file, pem) in files {
            std::fs::write(dir.path().join(file), pem).expect("write");
        }
        Self { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir
            .path()
            .join(file)
            .to_str()
            .expect("utf-8")
            .to_owned()
    }

    fn read(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.dir.path().join(file)).expect("read")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_mutual_tls() {
    let pki = Pki::new();
    let vault = VaultDir::init();

    let server = Server::start(
        &vault,
        &[
            "--tls-cert",
            &pki.path("server.pem"),
            "--tls-key",
            &pki.path("server.key"),
        ],
    );
    let https = format!("https://{}", server.addr);
    let options = ClientOptions::new(&https)
        .api_key(&vault.admin_key)
        .ca_pem(pki.read("ca.pem"));
    let admin = Client::connect(options).await.expect("TLS connect");
    assert!(admin.health().await.expect("health over TLS"));
    assert!(
        !admin
            .list_clients()
            .await
            .expect("admin over TLS")
            .is_empty()
    );
    // A plaintext client gets nowhere.
    let plaintext =
        Client::connect(ClientOptions::new(server.endpoint()).api_key(&vault.admin_key)).await;
    assert!(plaintext.is_err() || plaintext.expect("connected").health().await.is_err());
    drop(admin);
    server.stop();

    let server = Server::start(
        &vault,
        &[
            "--tls-cert",
            &pki.path("server.pem"),
            "--tls-key",
            &pki.path("server.key"),
            "--tls-client-ca",
            &pki.path("ca.pem"),
        ],
    );
    let https = format!("https://{}", server.addr);
    let anonymous = ClientOptions::new(&https)
        .api_key(&vault.admin_key)
        .ca_pem(pki.read("ca.pem"));
    let refused = match Client::connect(anonymous).await {
        Err(_) => true,
        Ok(client) => client.health().await.is_err(),
    };
    assert!(refused, "mTLS must refuse a client without a certificate");
    let with_certificate = ClientOptions::new(&https)
        .api_key(&vault.admin_key)
        .ca_pem(pki.read("ca.pem"))
        .identity_pem(pki.read("client.pem"), pki.read("client.key"));
    let admin = Client::connect(with_certificate)
        .await
        .expect("mTLS connect");
    assert!(admin.health().await.expect("health over mTLS"));
}

/// cert-manager replaces a certificate every 60 to 90 days: SIGHUP makes new
/// connections use the new files, keeps open connections (and their calls)
/// going, and refuses a pair that does not match without losing the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_tls_certificate_without_dropping_a_connection() {
    let (old, new) = (Pki::new(), Pki::new());
    let vault = VaultDir::init();
    let live = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (live.path().join("tls.crt"), live.path().join("tls.key"));
    let install = |pki: &Pki, cert_from: &Pki| {
        std::fs::write(&cert, cert_from.read("server.pem")).expect("cert");
        std::fs::write(&key, pki.read("server.key")).expect("key");
    };
    install(&old, &old);
    let server = Server::start(
        &vault,
        &[
            "--tls-cert",
            cert.to_str().expect("utf-8"),
            "--tls-key",
            key.to_str().expect("utf-8"),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let metrics = scrape(server.metrics_addr.expect("metrics address"));
    assert!(
        metrics.contains("phivault_tls_certificate_expiry_timestamp_seconds "),
        "{metrics}"
    );
    let https = format!("https://{}", server.addr);
    let trusting = |pki: &Pki| {
        ClientOptions::new(&https)
            .api_key(&vault.admin_key)
            .ca_pem(pki.read("ca.pem"))
    };
    let admin = Client::connect(trusting(&old)).await.expect("connect");
    let pipeline_key = admin
        .create_client("pipeline", vec!["tokenize:ssn".into()])
        .await
        .expect("create client")
        .api_key;
    let connected = Client::connect(trusting(&old).api_key(&pipeline_key))
        .await
        .expect("connect");
    let before = connected
        .tokenize("ssn", vec!["123-45-6789".to_owned()])
        .await
        .expect("tokenize");

    // A key that does not go with the certificate is refused; the old pair
    // stays in use for new connections.
    install(&old, &new);
    server.hangup();
    assert!(
        server.wait_for_log(
            "TLS certificate not reloaded",
            std::time::Duration::from_secs(20)
        ),
        "a mismatched pair must be refused"
    );
    let again = Client::connect(trusting(&old))
        .await
        .expect("old pair kept");
    assert!(again.health().await.expect("health"));

    install(&new, &new);
    server.hangup();
    assert!(
        server.wait_for_log(
            "TLS certificate reloaded",
            std::time::Duration::from_secs(20)
        ),
        "no sign of the reload"
    );
    // The connection opened before still answers: a reconnect would have
    // met a certificate its client does not trust.
    let after = connected
        .tokenize("ssn", vec!["123-45-6789".to_owned()])
        .await
        .expect("the open connection survives the reload");
    assert_eq!(texts(before), texts(after));
    let refused = match Client::connect(trusting(&old)).await {
        Err(_) => true,
        Ok(client) => client.health().await.is_err(),
    };
    assert!(refused, "new connections must get the new certificate");
    let renewed = Client::connect(trusting(&new)).await.expect("new pair");
    assert!(renewed.health().await.expect("health"));
    let log = server.stop();
    assert!(!log.contains("123-45-6789"), "{log}");
}

/// Every unary call carries a deadline (grpc-timeout) the server honours:
/// a call that cannot finish in time is ended, not left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_its_deadline_is_ended() {
    let vault = VaultDir::init();
    let server = Server::start(&vault, &[]);
    let admin = connect(&server, Some(&vault.admin_key)).await;
    let (_, key) = client_with(&admin, &server, "pipeline", &["tokenize:ssn"]).await;
    let hurried = Client::connect(
        ClientOptions::new(server.endpoint())
            .api_key(&key)
            .deadline(Some(std::time::Duration::from_millis(1))),
    )
    .await
    .expect("connect");
    let values: Vec<String> = (0..10_000)
        .map(|i| format!("{:09}", 300_000_000 + i))
        .collect();
    let error = hurried
        .tokenize("ssn", values.clone())
        .await
        .expect_err("10,000 new values in a millisecond");
    assert!(
        matches!(code(error), Code::DeadlineExceeded | Code::Cancelled),
        "ended by its deadline"
    );
    // The same call with the default deadline goes through.
    let patient = Client::connect(ClientOptions::new(server.endpoint()).api_key(&key))
        .await
        .expect("connect");
    assert_eq!(
        texts(patient.tokenize("ssn", values).await.expect("in time")).len(),
        10_000
    );
}

/// Any valid key learns the server's version, store and limits; no key,
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_info_names_version_store_and_limits_to_any_valid_key() {
    let vault = VaultDir::init();
    let server = Server::start(&vault, &["--max-items", "500"]);
    let admin = connect(&server, Some(&vault.admin_key)).await;
    let (pipeline, key) = client_with(&admin, &server, "pipeline", &["tokenize:ssn"]).await;
    let info = pipeline.server_info().await.expect("server info");
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(info.apis, ["phivault.v1"]);
    let store = if phivault_tests::on_postgres() {
        "postgres"
    } else {
        "embedded"
    };
    assert_eq!(info.store, store);
    assert_eq!(info.max_items, 500);
    assert_eq!(info.max_message_bytes, 4 << 20);
    assert_eq!(info.max_value_bytes, 4096);
    let anonymous = connect(&server, None).await;
    assert_eq!(
        code(anonymous.server_info().await.expect_err("no key")),
        Code::Unauthenticated
    );
    let printed = cli(&server, &key, &["--json", "info"], "");
    assert!(printed.status.success());
    let printed: serde_json::Value = serde_json::from_slice(&printed.stdout).expect("JSON");
    assert_eq!(printed["max_items"], 500);
    assert_eq!(printed["store"], store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_every_service() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let vault = VaultDir::init();
    let server = Server::start(&vault, &[]);
    let channel = tonic::transport::Endpoint::from_shared(server.endpoint())
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(stream::iter(vec![request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses.next().await.expect("a response").expect("ok");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in [
        "phivault.v1.Tokenizer",
        "phivault.v1.Admin",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == service),
            "{service} missing from {names:?}"
        );
    }
}

/// `GET /metrics` over a plain TCP connection.
/// `GET path` on the operations listener at `addr`: the whole response,
/// status line first.
fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut connection = std::net::TcpStream::connect(addr).expect("connect to the listener");
    connection
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .expect("request");
    let mut response = String::new();
    connection.read_to_string(&mut response).expect("response");
    response
}

fn scrape(addr: std::net::SocketAddr) -> String {
    let response = http_get(addr, "/metrics");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_calls_by_method_and_status() {
    let vault = VaultDir::init();
    let server = Server::start(&vault, &["--metrics-listen", "127.0.0.1:0"]);
    let metrics = server.metrics_addr.expect("metrics address printed");
    let admin = connect(&server, Some(&vault.admin_key)).await;
    let (pipeline, _) = client_with(&admin, &server, "pipeline", &["tokenize:ssn"]).await;
    for _ in 0..3 {
        texts(
            pipeline
                .tokenize("ssn", vec!["123-45-6789".into()])
                .await
                .expect("tokenize"),
        );
    }
    let denied = pipeline
        .detokenize("ssn", vec!["999-99-9999".into()], false)
        .await
        .expect_err("no scope");
    assert_eq!(code(denied), Code::PermissionDenied);
    // Streams count under the status they end with, sent in trailers after
    // the response headers.
    let answered: Vec<_> = pipeline
        .tokenize_stream("ssn", stream::iter(vec![vec!["123-45-6789".to_owned()]]), 1)
        .await
        .expect("stream")
        .collect()
        .await;
    assert!(answered.iter().all(|r| r.is_ok()));
    let refused = match pipeline
        .tokenize_stream("mrn", stream::iter(vec![vec!["MRN0001".to_owned()]]), 1)
        .await
    {
        Err(e) => Some(code(e)),
        Ok(answers) => answers
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .find_map(|r| r.err().map(code)),
    };
    assert_eq!(refused, Some(Code::PermissionDenied));

    let text = scrape(metrics);
    for (rpc, status) in [
        ("TokenizeStream", "OK"),
        ("TokenizeStream", "PERMISSION_DENIED"),
    ] {
        let line = format!(
            r#"phivault_grpc_calls_total{{rpc="/phivault.v1.Tokenizer/{rpc}",code="{status}"}} 1"#
        );
        assert!(text.contains(&line), "{line} not in {text}");
    }
    assert!(text.contains(r#"phivault_build_info{version=""#), "{text}");
    // What only storage knows, read by the server at start and every 15 s.
    let gauge = |text: &str, name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let text = loop {
        let text = scrape(metrics);
        if gauge(&text, "phivault_store_bytes") > 0.0 {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no store size: {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let gauge = |name: &str| gauge(&text, name);
    assert_eq!(gauge("phivault_keyset_active_version"), 1.0);
    assert_eq!(gauge("phivault_rotation_in_progress"), 0.0);
    assert_eq!(gauge("phivault_clients_quarantined"), 0.0);
    // Nothing waits for the writer once the calls are answered.
    assert_eq!(gauge("phivault_writer_queue_depth"), 0.0);
    // Three unary calls and one stream of one value each.
    assert!(
        text.contains(r#"phivault_items_total{operation="tokenize",outcome="OK"} 4"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"phivault_grpc_calls_total{rpc="/phivault.v1.Tokenizer/Tokenize",code="OK"} 3"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"phivault_grpc_calls_total{rpc="/phivault.v1.Tokenizer/Detokenize",code="PERMISSION_DENIED"} 1"#));
    assert!(
        text.contains(
            r#"phivault_grpc_call_seconds_count{rpc="/phivault.v1.Tokenizer/Tokenize"} 3"#
        )
    );
    assert!(text.contains("phivault_writer_jobs_per_commit_bucket"));
    // The first tokenize call wrote its mapping: every commit that wrote
    // was timed, and the buckets add up to the count.
    let commits = gauge("phivault_writer_commit_seconds_count");
    assert!(commits >= 1.0, "{text}");
    assert!(gauge("phivault_writer_commit_seconds_sum") > 0.0, "{text}");
    let buckets: Vec<f64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("phivault_writer_commit_seconds_bucket{le=\""))
        .filter_map(|l| l.split_once("\"} ")?.1.trim().parse().ok())
        .collect();
    assert_eq!(buckets.len(), 13, "twelve bounds and +Inf: {text}");
    assert!(
        buckets.windows(2).all(|w| w[0] <= w[1]),
        "cumulative: {text}"
    );
    assert_eq!(buckets.last(), Some(&commits), "{text}");
    assert!(!text.contains("123-45-6789"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_file_sets_limits_and_flags_override_it() {
    let vault = VaultDir::init();
    let config = vault.root.path().join("phivault.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:1\"\n[limits]\nmax_items = 5\n",
    )
    .expect("write");
    // --listen on the command line wins over the file's unusable port 1.
    let server = Server::start(&vault, &["--config", config.to_str().expect("utf-8")]);
    let admin = connect(&server, Some(&vault.admin_key)).await;
    let (pipeline, _) = client_with(&admin, &server, "pipeline", &["tokenize:ssn"]).await;
    assert!(
        pipeline
            .tokenize("ssn", vec!["123-45-6789".into(); 5])
            .await
            .is_ok()
    );
    let error = pipeline
        .tokenize("ssn", vec!["123-45-6789".into(); 6])
        .await
        .expect_err("over the file's limit");
    assert_eq!(code(error), Code::InvalidArgument);
}

/// Runs `phivault-client` against `server` with `key`, feeding `stdin`.
fn cli(server: &Server, key: &str, args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(phivault_tests::binary("phivault-client"))
        .args(["--endpoint", &server.endpoint()])
        .args(args)
        .env("PHIVAULT_API_KEY", key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run phivault-client");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

/// The key of a client made through the CLI with `args` after its name,
/// and its id.
pub(crate) fn create_with(
    server: &Server,
    admin_key: &str,
    name: &str,
    args: &[&str],
) -> (String, String) {
    let mut all = vec!["--json", "clients", "create", name];
    all.extend_from_slice(args);
    let out: serde_json::Value =
        serde_json::from_str(&stdout(&cli(server, admin_key, &all, ""))).expect("json");
    (
        out["api_key"].as_str().expect("key").to_owned(),
        out["client"]["client_id"].as_str().expect("id").to_owned(),
    )
}

fn stdout(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("utf-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_walkthrough() {
    let vault = VaultDir::init();
    let server = Server::start(&vault, &[]);
    let admin = vault.admin_key.as_str();
    let pipeline = stdout(&cli(
        &server,
        admin,
        &["clients", "create", "pipeline", "--scope", "tokenize:ssn"],
        "",
    ));
    let billing = stdout(&cli(
        &server,
        admin,
        &[
            "clients",
            "create",
            "billing",
            "--scope",
            "detokenize-masked:ssn",
        ],
        "",
    ));
    let (pipeline, billing) = (pipeline.trim(), billing.trim());
    assert!(
        pipeline.starts_with("pv_") && billing.starts_with("pv_"),
        "the key alone on stdout"
    );

    // Values from standard input, one per line; tokens in the same order.
    let tokens = stdout(&cli(
        &server,
        pipeline,
        &["tokenize", "-n", "ssn"],
        "123-45-6789\n987654321\n",
    ));
    let tokens: Vec<&str> = tokens.lines().collect();
    assert_eq!(tokens.len(), 2);
    assert_eq!(tokens[0].len(), 11);
    assert_eq!(tokens[1].len(), 9);

    let masked = stdout(&cli(
        &server,
        billing,
        &["detokenize", "-n", "ssn", "--masked", tokens[0], tokens[1]],
        "",
    ));
    assert_eq!(masked, "*******6789\n*****4321\n");
    let json = stdout(&cli(
        &server,
        billing,
        &["--json", "detokenize", "-n", "ssn", "--masked", tokens[0]],
        "",
    ));
    assert_eq!(json.trim(), r#"{"text":"*******6789"}"#);

    let denied = cli(
        &server,
        billing,
        &["detokenize", "-n", "ssn", tokens[0]],
        "",
    );
    assert!(!denied.status.success());
    let message = String::from_utf8_lossy(&denied.stderr);
    assert!(message.contains("PERMISSION_DENIED"), "{message}");
    assert!(!message.contains("6789"));

    // A bad item fails alone and makes the exit status non-zero.
    let mixed = cli(
        &server,
        pipeline,
        &["tokenize", "-n", "ssn", "123-45-6789", "12-34"],
        "",
    );
    assert!(!mixed.status.success());
    assert!(String::from_utf8_lossy(&mixed.stderr).contains("error 3: namespace \"ssn\""));
    assert_eq!(String::from_utf8_lossy(&mixed.stdout).lines().count(), 2);

    assert_eq!(stdout(&cli(&server, admin, &["health"], "")), "SERVING\n");
    let listed = stdout(&cli(&server, admin, &["clients", "list"], ""));
    assert!(listed.contains("billing") && listed.contains("detokenize-masked:ssn"));
}

/// The TLS of both the server and the client offers the hybrid
/// post-quantum key exchange X25519MLKEM768, and gets it from a peer that
/// supports it: traffic recorded today cannot be decrypted later by a
/// quantum computer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_negotiates_hybrid_post_quantum_key_exchange() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let pki = Pki::new();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let hybrid = rustls::NamedGroup::X25519MLKEM768;

    // The server, to a stock rustls client.
    let vault = VaultDir::init();
    let server = Server::start(
        &vault,
        &[
            "--tls-cert",
            &pki.path("server.pem"),
            "--tls-key",
            &pki.path("server.key"),
        ],
    );
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(&pki.read("ca.pem")).expect("CA"))
        .expect("root");
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let name = ServerName::IpAddress(server.addr.ip().into());
    let tls = connector.connect(name, tcp).await.expect("handshake");
    let group = tls
        .get_ref()
        .1
        .negotiated_key_exchange_group()
        .map(|g| g.name());
    assert_eq!(group, Some(hybrid), "the server's key exchange");
    drop(tls);
    server.stop();

    // The client, to a stock rustls server that accepts every group: it
    // takes the client's first choice.
    let certs = vec![CertificateDer::from_pem_slice(&pki.read("server.pem")).expect("cert")];
    let key = PrivateKeyDer::from_pem_slice(&pki.read("server.key")).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let tls = acceptor.accept(tcp).await.expect("handshake");
        tls.get_ref()
            .1
            .negotiated_key_exchange_group()
            .map(|g| g.name())
    });
    let options = ClientOptions::new(format!("https://{addr}")).ca_pem(pki.read("ca.pem"));
    // Not a gRPC server: the call fails after the handshake, which is what
    // is looked at.
    let _ =
        tokio::time::timeout(std::time::Duration::from_secs(10), Client::connect(options)).await;
    let group = tokio::time::timeout(std::time::Duration::from_secs(10), accepted)
        .await
        .expect("the client shook hands")
        .expect("accept task");
    assert_eq!(group, Some(hybrid), "the client's key exchange");
}
