//! Several vault nodes over one PostgreSQL (DESIGN.md §9): what one node
//! does, every node sees on its next call. Runs in the PostgreSQL pass of
//! the suite (`PHIVAULT_TEST_STORE=postgres`), where every node is a real
//! `phivault serve` on a loopback port and the database a real server.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use phivault_tests::postgres::Postgres;
use phivault_tests::{Server, VaultDir, on_postgres};
use tonic::Code;

use super::{client_with, code, connect, texts};

/// Callers tokenizing the same new values at once, spread over the nodes.
const CALLERS: usize = 32;
/// The new values every caller brings.
const VALUES: usize = 5_000;

fn values(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}{i:07}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_serve_one_vault_as_one() {
    if !on_postgres() {
        eprintln!("three_nodes_serve_one_vault_as_one: runs in the PostgreSQL pass");
        return;
    }
    let server = Arc::new(Postgres::start().expect("PostgreSQL"));
    let vault = VaultDir::init_postgres(Arc::clone(&server));
    // Node A moves at most 1,000 mappings a second during a rotation, so
    // that it is still moving them when it is killed.
    let mut nodes = vec![
        Server::start(&vault, &["--rotation-max-rate", "1000"]),
        Server::start(&vault, &[]),
        Server::start(&vault, &[]),
    ];
    let admin_a = connect(&nodes[0], Some(&vault.admin_key)).await;
    // A client created on node A is known to B and C at once.
    let (_, key) = client_with(
        &admin_a,
        &nodes[0],
        "pipeline",
        &["tokenize:mrn", "detokenize:mrn"],
    )
    .await;

    // The same new values from 32 callers on three nodes: one token each.
    let new = values("MRN-", VALUES);
    let mut callers = Vec::new();
    for caller in 0..CALLERS {
        let node = connect(&nodes[caller % 3], Some(&key)).await;
        let mut mine = new.clone();
        // Different orders, so that batches overlap in every way.
        mine.rotate_left(caller * VALUES / CALLERS);
        callers.push(tokio::spawn(async move {
            let mut tokens = Vec::with_capacity(VALUES);
            for chunk in mine.chunks(500) {
                tokens.extend(texts(
                    node.tokenize("mrn", chunk.to_vec())
                        .await
                        .expect("tokenize"),
                ));
            }
            tokens.rotate_right(caller * VALUES / CALLERS);
            tokens
        }));
    }
    let mut answers = Vec::new();
    for caller in callers {
        answers.push(caller.await.expect("caller"));
    }
    let tokens = answers[0].clone();
    for (i, answer) in answers.iter().enumerate() {
        assert!(answer == &tokens, "caller {i} got other tokens");
    }
    assert_eq!(
        tokens.iter().collect::<HashSet<_>>().len(),
        VALUES,
        "one token per value"
    );
    let rows = server.psql("vault", "SELECT count(*) FROM phivault.mappings");
    assert_eq!(rows.trim(), VALUES.to_string(), "one row per value");

    // Reveals on every node, all on record.
    let token = tokens[7].clone();
    for node in &nodes {
        let reader = connect(node, Some(&key)).await;
        let shown = texts(
            reader
                .detokenize("mrn", vec![token.clone()], false)
                .await
                .expect("detokenize"),
        );
        assert_eq!(shown, vec![new[7].clone()]);
    }

    // Revoked on node A: refused on the next call on B and C.
    let (_, doomed_key) = client_with(&admin_a, &nodes[0], "doomed", &["tokenize:mrn"]).await;
    let doomed_b = connect(&nodes[1], Some(&doomed_key)).await;
    let doomed_c = connect(&nodes[2], Some(&doomed_key)).await;
    for doomed in [&doomed_b, &doomed_c] {
        doomed
            .tokenize("mrn", vec!["MRN-before".into()])
            .await
            .expect("allowed before the revocation");
    }
    let doomed_id = admin_a
        .list_clients()
        .await
        .expect("clients")
        .into_iter()
        .find(|c| c.name == "doomed")
        .expect("doomed")
        .client_id;
    admin_a.revoke_client(&doomed_id).await.expect("revoke");
    for doomed in [&doomed_b, &doomed_c] {
        let refused = doomed
            .tokenize("mrn", vec!["MRN-after".into()])
            .await
            .expect_err("revoked");
        assert_eq!(code(refused), Code::Unauthenticated);
    }

    // A rotation started on A, A killed mid-way: B or C takes the lease
    // over once A's runs out, and finishes.
    admin_a.rotate_keys().await.expect("rotate");
    let started = Instant::now();
    loop {
        let status = admin_a.key_status().await.expect("status");
        let done = status.rotation.map_or(u64::MAX, |r| r.done);
        if done >= 1_000 {
            assert!(done < VALUES as u64 + 2, "A finished before it was killed");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "A never moved 1,000 mappings"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nodes.remove(0).kill();
    let admin_b = connect(&nodes[0], Some(&vault.admin_key)).await;
    let started = Instant::now();
    let status = loop {
        let status = admin_b.key_status().await.expect("status");
        if status.rotation.is_none() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the rotation was not taken over: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status.active_version, 2);
    for v in &status.versions {
        let expected = if v.version == 2 {
            "active"
        } else {
            "destroyed"
        };
        assert_eq!(v.state, expected, "{status:?}");
    }
    let data_c = connect(&nodes[1], Some(&key)).await;
    let again = texts(
        data_c
            .tokenize("mrn", new[..100].to_vec())
            .await
            .expect("tokenize after the rotation"),
    );
    assert_eq!(again, tokens[..100].to_vec(), "tokens never change");

    // One audit trail, verifiable, that knows every node's reveals.
    let report = admin_b.verify_audit().await.expect("verify");
    assert_eq!(report.first_bad_seq, 0, "{}", report.problem);
    let disclosures = admin_b
        .list_disclosures("mrn", &token)
        .await
        .expect("disclosures");
    assert_eq!(disclosures.len(), 3, "one reveal on each node");
    for node in nodes {
        node.stop();
    }
}

/// A node whose recent values of a namespace were all new inserts without
/// looking first (BENCHMARKS.md); values another node stored meanwhile must
/// still come back with their one token, found by the insert's conflict.
/// A key rotation between the two makes the stored tokens differ from the
/// candidates the inserting node draws, so that a value answered with its
/// candidate instead of its stored token fails the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_stored_by_another_node_keep_their_token_when_a_node_inserts_first() {
    if !on_postgres() {
        eprintln!(
            "values_stored_by_another_node_keep_their_token_when_a_node_inserts_first: runs in the PostgreSQL pass"
        );
        return;
    }
    let server = Arc::new(Postgres::start().expect("PostgreSQL"));
    let vault = VaultDir::init_postgres(Arc::clone(&server));
    let nodes = [Server::start(&vault, &[]), Server::start(&vault, &[])];
    let admin = connect(&nodes[0], Some(&vault.admin_key)).await;
    let (_, key) = client_with(&admin, &nodes[0], "pipeline", &["tokenize:mrn"]).await;
    let on_a = connect(&nodes[0], Some(&key)).await;
    let on_b = connect(&nodes[1], Some(&key)).await;

    // Node A stores 500 values that node B has never seen.
    let stored = values("A-", 500);
    let stored_tokens = texts(
        on_a.tokenize("mrn", stored.clone())
            .await
            .expect("tokenize"),
    );
    // Node B sees nothing but new values for a while, before and after a
    // key rotation that moves A's values under the new keyset...
    for batch in 0..3 {
        if batch == 2 {
            admin.rotate_keys().await.expect("rotate");
            super::audit::wait_for_rotation(&admin).await;
        }
        let fresh = values(&format!("B{batch}-"), 500);
        texts(on_b.tokenize("mrn", fresh).await.expect("tokenize"));
    }
    // ...then a batch of A's values, new ones, and repeats of both.
    let new = values("C-", 250);
    let mut mixed: Vec<String> = stored.iter().step_by(2).cloned().collect();
    mixed.extend(new.iter().cloned());
    mixed.extend(stored.iter().take(10).cloned());
    mixed.extend(new.iter().take(10).cloned());
    let answers = texts(on_b.tokenize("mrn", mixed.clone()).await.expect("tokenize"));
    for (value, token) in mixed.iter().zip(&answers) {
        if let Some(i) = stored.iter().position(|v| v == value) {
            assert_eq!(
                token, &stored_tokens[i],
                "a value A stored got another token on B"
            );
        }
    }
    let new_tokens: Vec<&String> = answers[250..500].iter().collect();
    assert_eq!(
        answers[510..520].iter().collect::<Vec<_>>(),
        new_tokens[..10]
    );
    // And A answers B's new values with B's tokens.
    let again = texts(on_a.tokenize("mrn", new.clone()).await.expect("tokenize"));
    assert_eq!(again.iter().collect::<Vec<_>>(), new_tokens);
    let rows = server.psql("vault", "SELECT count(*) FROM phivault.mappings");
    assert_eq!(
        rows.trim(),
        (500 + 3 * 500 + 250).to_string(),
        "one row per value"
    );
}
