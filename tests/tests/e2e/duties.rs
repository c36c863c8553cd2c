//! Separation of duties, API key expiry and rotation (issue 14), against
//! the real server.

use std::time::{Duration, Instant};

use phivault_tests::{Server, VaultDir};
use tonic::Code;

use super::hardening::records;
use super::{cli, client_with, code, connect, create_with, status, stdout, texts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_administrator_cannot_grant_itself_a_reveal_nor_read_the_trail() {
    let vault = VaultDir::init();
    let server = Server::start(&vault, &[]);
    // The key `init` wrote holds admin, grant and audit, to set the vault up;
    // day to day, each duty has its own client.
    let root = connect(&server, Some(&vault.admin_key)).await;
    let (operator, _) = client_with(&root, &server, "operator", &["admin"]).await;
    let (officer, _) = client_with(&root, &server, "officer", &["admin", "grant"]).await;
    let (auditor, _) = client_with(&root, &server, "auditor", &["audit"]).await;

    // The operator administers, but grants no reveal and no grant.
    operator
        .create_client("etl", vec!["tokenize:ssn".into()])
        .await
        .expect("a client that reveals nothing");
    for scopes in [
        vec!["detokenize:ssn".to_owned()],
        vec!["detokenize-masked:*".to_owned()],
        vec!["break-glass:ssn".to_owned()],
        vec!["grant".to_owned()],
        vec!["audit".to_owned()],
    ] {
        let (got, message) = status(
            operator
                .create_client("self-serve", scopes.clone())
                .await
                .expect_err("admin alone does not grant"),
        );
        assert_eq!(got, Code::PermissionDenied, "{scopes:?}");
        assert!(message.contains("grant scope"), "{message}");
    }
    // Nor does it read the trail.
    for denied in [
        operator.verify_audit().await.map(drop),
        operator
            .list_disclosures("ssn", "000-00-0000")
            .await
            .map(drop),
    ] {
        assert_eq!(
            code(denied.expect_err("admin is not audit")),
            Code::PermissionDenied
        );
    }
    // The officer grants; the auditor reads and grants nothing.
    let billing = officer
        .create_client("billing", vec!["detokenize:ssn".into()])
        .await
        .expect("grant");
    auditor.verify_audit().await.expect("audit");
    let denied = auditor
        .create_client("x", vec!["tokenize:ssn".into()])
        .await
        .expect_err("audit is not admin");
    assert_eq!(code(denied), Code::PermissionDenied);
    // A new key for a client that reveals is as good as a grant.
    let billing_id = billing.client.expect("client").client_id;
    let denied = operator
        .rotate_client_key(&billing_id, Duration::ZERO)
        .await
        .expect_err("admin alone");
    assert_eq!(code(denied), Code::PermissionDenied);
    // Nor may it lift a suspension or re-arm a break-glass of one, nor
    // re-key the key that set the vault up (it holds grant).
    let denied = operator
        .release_client(&billing_id)
        .await
        .expect_err("admin alone");
    assert_eq!(code(denied), Code::PermissionDenied);
    let root_id = vault.admin_key.split('_').nth(1).expect("id").to_owned();
    let denied = operator
        .rotate_client_key(&root_id, Duration::ZERO)
        .await
        .expect_err("admin alone");
    assert_eq!(code(denied), Code::PermissionDenied);
    // Every refusal is on record.
    let trail = records(&auditor).await;
    let refusals = trail
        .iter()
        .filter(|r| {
            r.rpc.starts_with("/phivault.v1.Admin/") && r.outcome == Code::PermissionDenied as i32
        })
        .count();
    assert_eq!(
        refusals, 11,
        "5 grants, 2 audit reads, 1 create, 2 rotations, 1 release"
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_expires_and_a_rotation_keeps_the_old_one_for_its_grace() {
    let vault = VaultDir::init();
    let server = Server::start(&vault, &[]);
    let root = connect(&server, Some(&vault.admin_key)).await;
    let (pipeline, _) = client_with(&root, &server, "pipeline", &["tokenize:ssn"]).await;
    let token = texts(
        pipeline
            .tokenize("ssn", vec!["123-45-6789".into()])
            .await
            .expect("tokenize"),
    );
    let (key, id) = create_with(
        &server,
        &vault.admin_key,
        "billing",
        &["--scope", "detokenize:ssn", "--expires-in", "90days"],
    );
    let listed: serde_json::Value = serde_json::from_str(
        stdout(&cli(
            &server,
            &vault.admin_key,
            &["--json", "clients", "list"],
            "",
        ))
        .lines()
        .find(|l| l.contains(&id))
        .expect("listed"),
    )
    .expect("json");
    let expires = listed["expires_at"].as_u64().expect("an expiry");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(expires > now + 89 * 86_400 && expires <= now + 90 * 86_400 + 5);

    // A rotation with a grace: both keys work, then only the new one.
    let old = connect(&server, Some(&key)).await;
    let rotated = stdout(&cli(
        &server,
        &vault.admin_key,
        &["clients", "rotate-key", &id, "--grace", "2s"],
        "",
    ));
    let new_key = rotated.trim().to_owned();
    assert!(new_key.starts_with(&format!("pv_{id}_")) && new_key != key);
    let new = connect(&server, Some(&new_key)).await;
    new.detokenize("ssn", token.clone(), false)
        .await
        .expect("the new key");
    old.detokenize("ssn", token.clone(), false)
        .await
        .expect("the old key, within its grace");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match old.detokenize("ssn", token.clone(), false).await {
            Ok(_) => assert!(Instant::now() < deadline, "the grace never ended"),
            Err(e) => {
                assert_eq!(code(e), Code::Unauthenticated);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    new.detokenize("ssn", token.clone(), false)
        .await
        .expect("the new key still");
    // Without a grace, the old key stops at once.
    let again = root
        .rotate_client_key(&id, Duration::ZERO)
        .await
        .expect("rotate");
    let denied = new
        .detokenize("ssn", token.clone(), false)
        .await
        .expect_err("retired at once");
    assert_eq!(code(denied), Code::Unauthenticated);
    let newest = connect(&server, Some(&again.api_key)).await;
    newest
        .detokenize("ssn", token, false)
        .await
        .expect("the newest key");
    // A key made to live seconds is refused once they pass.
    let (short, _) = create_with(
        &server,
        &vault.admin_key,
        "short",
        &["--scope", "detokenize:ssn", "--expires-in", "2s"],
    );
    let short = connect(&server, Some(&short)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match short
            .detokenize("ssn", vec!["000-00-0000".into()], false)
            .await
        {
            Ok(_) => assert!(Instant::now() < deadline, "the key never expired"),
            Err(e) => {
                assert_eq!(code(e), Code::Unauthenticated);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Neither key is ever printed anywhere but on stdout of the command
    // that made it.
    let log = server.stop();
    assert!(!log.contains(&new_key[20..]) && !log.contains(&again.api_key[20..]));
}
