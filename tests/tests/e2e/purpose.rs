//! Purpose of use on reveals, and break-glass (issue 14), against the real
//! server.

use std::time::{Duration, Instant};

use phivault_client::{Purpose, v1 as pb};
use phivault_tests::{Server, VaultDir};
use tonic::Code;

use super::hardening::records;
use super::{cli, client_with, code, connect, create_with, status, stdout, texts};

/// The `rpc` of an alert's record.
const ALERT_RPC: &str = "(alert)";
/// The `rpc` of the record of a break-glass window opening.
const OPENED_RPC: &str = "(break-glass window opened)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reveal_states_its_purpose_and_disclosures_show_it() {
    let vault = VaultDir::init();
    let server = Server::start(&vault, &[]);
    let admin = connect(&server, Some(&vault.admin_key)).await;
    let (auditor, audit_key) = client_with(&admin, &server, "auditor", &["audit"]).await;
    let (key, _) = create_with(
        &server,
        &vault.admin_key,
        "billing",
        &[
            "--scope",
            "tokenize:ssn",
            "--scope",
            "detokenize:ssn",
            "--require-purpose",
        ],
    );
    let billing = connect(&server, Some(&key)).await;
    let token = texts(
        billing
            .tokenize("ssn", vec!["123-45-6789".into()])
            .await
            .expect("tokenize"),
    );
    // No purpose: refused, and on record.
    let (got, text) = status(
        billing
            .detokenize("ssn", token.clone(), false)
            .await
            .expect_err("a purpose is required"),
    );
    assert_eq!(got, Code::FailedPrecondition);
    assert!(text.contains("purpose of use"), "{text}");
    // A code that is not one, or a reason with a line break: refused
    // without being repeated.
    for purpose in [
        Purpose::new("123-45-6789", ""),
        Purpose::new("HPAYMT", "line one\nline two"),
    ] {
        let (got, text) = status(
            billing
                .detokenize_for("ssn", token.clone(), false, &purpose)
                .await
                .expect_err("malformed"),
        );
        assert_eq!(got, Code::InvalidArgument);
        assert!(
            !text.contains("123-45") && !text.contains("line one"),
            "{text}"
        );
    }
    let revealed = billing
        .detokenize_for(
            "ssn",
            token.clone(),
            true,
            &Purpose::new("HPAYMT", "statement run 2026-12"),
        )
        .await
        .expect("with a purpose");
    assert_eq!(texts(revealed), ["*******6789"]);
    // From the command line, a purpose for every reveal of the run.
    let shown = stdout(&cli(
        &server,
        &key,
        &[
            "--purpose",
            "TREAT",
            "--reason",
            "ticket 4471",
            "detokenize",
            "-n",
            "ssn",
            &token[0],
        ],
        "",
    ));
    assert_eq!(shown.trim(), "123-45-6789");

    // Disclosures name the purpose and reason of each reveal.
    let found = auditor
        .list_disclosures("ssn", &token[0])
        .await
        .expect("disclosures");
    let purposes: Vec<(&str, &str)> = found
        .iter()
        .map(|d| (d.purpose.as_str(), d.reason.as_str()))
        .collect();
    assert_eq!(
        purposes,
        [
            ("HPAYMT", "statement run 2026-12"),
            ("TREAT", "ticket 4471")
        ]
    );
    assert!(found.iter().all(|d| !d.break_glass));
    let lines = stdout(&cli(
        &server,
        &audit_key,
        &["audit", "disclosures", "-n", "ssn", &token[0]],
        "",
    ));
    assert!(
        lines.contains("purpose HPAYMT \"statement run 2026-12\""),
        "{lines}"
    );
    // The refusals are on record too, without a purpose.
    let refused = records(&auditor)
        .await
        .into_iter()
        .filter(|r| r.rpc.ends_with("/Detokenize") && r.outcome != 0)
        .count();
    assert_eq!(refused, 3);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaking_the_glass_reveals_beyond_scope_flagged_alerted_and_within_a_window() {
    let vault = VaultDir::init();
    let server = Server::start(
        &vault,
        &[
            "--break-glass-window-secs",
            "2",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let admin = connect(&server, Some(&vault.admin_key)).await;
    let (auditor, audit_key) = client_with(&admin, &server, "auditor", &["audit"]).await;
    let (pipeline, _) = client_with(&admin, &server, "pipeline", &["tokenize:ssn"]).await;
    // A clinician's desk sees the last 4 digits, once an hour; it may break
    // the glass for an emergency.
    let (key, id) = create_with(
        &server,
        &vault.admin_key,
        "er-desk",
        &[
            "--scope",
            "detokenize-masked:ssn",
            "--scope",
            "break-glass:ssn",
            "--rate",
            "detokenize=1/h",
        ],
    );
    let desk = connect(&server, Some(&key)).await;
    let token = texts(
        pipeline
            .tokenize("ssn", vec!["123-45-6789".into()])
            .await
            .expect("tokenize"),
    );
    desk.detokenize("ssn", token.clone(), true)
        .await
        .expect("masked, within its rate");
    let over = desk
        .detokenize("ssn", token.clone(), true)
        .await
        .expect_err("over its rate");
    assert_eq!(code(over), Code::ResourceExhausted);
    // A full reveal needs an emergency purpose.
    for purpose in [Purpose::default(), Purpose::new("TREAT", "")] {
        let denied = desk
            .detokenize_for("ssn", token.clone(), false, &purpose)
            .await
            .expect_err("not an emergency");
        assert_eq!(code(denied), Code::PermissionDenied);
    }
    let emergency = Purpose::new("ETREAT", "trauma bay 2, unconscious patient");
    for _ in 0..2 {
        let revealed = desk
            .detokenize_for("ssn", token.clone(), false, &emergency)
            .await
            .expect("breaking the glass: beyond its scope and its rate");
        assert_eq!(texts(revealed), ["123-45-6789"]);
    }
    // Flagged, alerted, and listed for review.
    let all = records(&auditor).await;
    let flagged: Vec<&pb::AuditRecord> = all.iter().filter(|r| r.break_glass).collect();
    assert_eq!(flagged.len(), 2);
    assert!(flagged.iter().all(|r| r.client_id == id
        && r.purpose == "ETREAT"
        && r.reason == "trauma bay 2, unconscious patient"
        && r.outcome == 0));
    assert_eq!(all.iter().filter(|r| r.rpc == OPENED_RPC).count(), 1);
    assert_eq!(all.iter().filter(|r| r.rpc == ALERT_RPC).count(), 2);
    let review = stdout(&cli(&server, &audit_key, &["audit", "break-glass"], ""));
    assert_eq!(review.lines().count(), 2, "{review}");
    assert!(
        review.contains(&id) && review.contains("purpose ETREAT \"trauma bay 2"),
        "{review}"
    );
    let alerts = stdout(&cli(&server, &audit_key, &["alerts", "list"], ""));
    assert_eq!(alerts.lines().count(), 2, "{alerts}");
    assert!(alerts.contains("kind=break-glass"), "{alerts}");
    assert!(!alerts.contains("6789") && !review.contains("6789"));
    let metrics = super::scrape(server.metrics_addr.expect("metrics"));
    assert!(
        metrics.contains("phivault_alerts_total{kind=\"break-glass\"} 2"),
        "{metrics}"
    );

    // The window closes; an administrator re-arms the client after review.
    let deadline = Instant::now() + Duration::from_secs(20);
    let closed = loop {
        match desk
            .detokenize_for("ssn", token.clone(), false, &emergency)
            .await
        {
            Ok(_) => {}
            Err(e) => break status(e),
        }
        assert!(Instant::now() < deadline, "the window never closed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(closed.0, Code::PermissionDenied);
    assert!(closed.1.contains("clients release"), "{}", closed.1);
    stdout(&cli(
        &server,
        &vault.admin_key,
        &["clients", "release", &id],
        "",
    ));
    desk.detokenize_for("ssn", token.clone(), false, &emergency)
        .await
        .expect("re-armed: a new window");
    let opened = records(&auditor)
        .await
        .into_iter()
        .filter(|r| r.rpc == OPENED_RPC)
        .count();
    assert_eq!(opened, 2);

    // A client that may reveal anyway states an emergency without
    // breaking any glass: its purpose is recorded, its limits hold.
    let (doctor, doctor_key) = client_with(&admin, &server, "doctor", &["detokenize:ssn"]).await;
    let doctor_id = doctor_key
        .split('_')
        .nth(1)
        .expect("pv_<id>_<secret>")
        .to_owned();
    let plain = doctor
        .detokenize_for("ssn", token.clone(), false, &emergency)
        .await
        .expect("its own scope");
    assert_eq!(texts(plain), ["123-45-6789"]);
    let all = records(&auditor).await;
    // Found by client: on PostgreSQL the export goes lane by lane, not in
    // time order across lanes.
    let last = all
        .iter()
        .find(|r| r.client_id == doctor_id && r.rpc.ends_with("/Detokenize"))
        .expect("the doctor's reveal");
    assert!(
        !last.break_glass && last.purpose == "ETREAT" && last.outcome == 0,
        "{last:?}"
    );
    server.stop();
}
