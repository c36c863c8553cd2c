//! Availability under hostile peers (DESIGN.md §10): unauthenticated floods,
//! connection and stream floods, against the real binary on loopback. Every
//! load here is bounded in count and time and stays on 127.0.0.0/8.

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream};
use phivault_client::{Client, ClientOptions, v1 as pb};
use phivault_tests::{Server, VaultDir};
use tonic::Code;

use super::{client_with, code, connect, texts};

/// The `rpc` of a record that summarises refused unauthenticated calls.
const SUMMARY_RPC: &str = "(unauthenticated calls, summarised)";

/// A well-formed key of a client that does not exist.
const UNKNOWN_KEY: &str =
    "pv_0123456789abcdef_00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn dir_bytes(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .expect("read dir")
        .map(|e| e.expect("dir entry"))
        .map(|e| {
            let meta = e.metadata().expect("metadata");
            if meta.is_dir() {
                dir_bytes(&e.path())
            } else {
                meta.len()
            }
        })
        .sum()
}

/// Audit records as the auditor sees them.
pub(super) async fn records(auditor: &Client) -> Vec<pb::AuditRecord> {
    auditor
        .export_audit(0)
        .await
        .expect("export")
        .map(|r| r.expect("record"))
        .collect()
        .await
}

fn summarised_calls(records: &[pb::AuditRecord]) -> u64 {
    records
        .iter()
        .filter(|r| r.rpc == SUMMARY_RPC)
        .map(|r| u64::from(r.items))
        .sum()
}

/// A `billing` client that may tokenize and reveal SSNs, and the token of
/// the SSN `123-45-6789` it reveals in the latency measurements.
async fn billing(admin: &Client, server: &Server) -> (Client, String) {
    let (billing, _) = client_with(
        admin,
        server,
        "billing",
        &["tokenize:ssn", "detokenize:ssn"],
    )
    .await;
    let token = texts(
        billing
            .tokenize("ssn", vec!["123-45-6789".into()])
            .await
            .expect("tokenize"),
    )
    .remove(0);
    (billing, token)
}

/// Sequential detokenize calls until `done`, each checked; how many were
/// made wholly while the load was off and wholly while it was on
/// (`flooding` before and after the call). How much the load slows them is
/// measured by the `interference` benchmark, not here: a timing on a shared
/// machine is not a test.
async fn reveals_by_phase(
    client: &Client,
    token: &str,
    flooding: &std::sync::atomic::AtomicBool,
    done: &std::sync::atomic::AtomicBool,
) -> (usize, usize) {
    use std::sync::atomic::Ordering::Acquire;
    let (mut idle, mut flooded) = (0, 0);
    while !done.load(Acquire) {
        let before = flooding.load(Acquire);
        let revealed = client
            .detokenize("ssn", vec![token.to_owned()], false)
            .await
            .expect("a legitimate reveal is served");
        assert_eq!(texts(revealed), ["123-45-6789"]);
        match (before, flooding.load(Acquire)) {
            (false, false) => idle += 1,
            (true, true) => flooded += 1,
            _ => {}
        }
    }
    (idle, flooded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_flood_neither_fills_the_audit_trail_nor_stops_reveals() {
    if phivault_tests::embedded_only(
        "an_unauthenticated_flood_neither_fills_the_audit_trail_nor_stops_reveals",
    ) {
        return;
    }
    const FLOOD: usize = 20_000;
    const IN_FLIGHT: usize = 16;
    let vault = VaultDir::init();
    let config = vault.config("[transport]\nrefusal_window_secs = 1\n");
    let server = Server::start(&vault, &["--config", config.to_str().expect("utf-8")]);
    let admin = connect(&server, Some(&vault.admin_key)).await;
    let (billing, token) = billing(&admin, &server).await;
    let (auditor, _) = client_with(&admin, &server, "auditor", &["audit"]).await;

    for _ in 0..50 {
        billing
            .detokenize("ssn", vec![token.clone()], false)
            .await
            .expect("warm up");
    }

    let unauthenticated =
        |records: &[pb::AuditRecord]| records.iter().filter(|r| !r.authenticated).count();
    let records_before = unauthenticated(&records(&auditor).await);
    let bytes_before = dir_bytes(&vault.data());

    let attackers: Vec<Client> = {
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(
                Client::connect(ClientOptions::new(server.endpoint()).api_key(UNKNOWN_KEY))
                    .await
                    .expect("connect"),
            );
        }
        clients
    };
    let namespace = "n".repeat(60 << 10);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The flood comes in ten bursts of 2,000 calls, each paced over one
    // second (17 times the rate of the Python client that added 142 MB of
    // records in 20 s), with a quiet second after each. The reveals run
    // throughout, and are sorted into calls made during a burst and calls
    // made in the quiet: whatever else loads the machine meanwhile (other
    // tests) weighs on both alike, so their ratio is the flood's effect.
    let flooding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let done = std::sync::Arc::clone(&done);
        let flooding = std::sync::Arc::clone(&flooding);
        let namespace = namespace.clone();
        tokio::spawn(async move {
            use std::sync::atomic::Ordering::Release;
            const BURSTS: usize = 10;
            let mut codes = Vec::with_capacity(FLOOD);
            for burst in 0..BURSTS {
                tokio::time::sleep(Duration::from_secs(1)).await;
                flooding.store(true, Release);
                let start = tokio::time::Instant::now();
                let per_burst = FLOOD / BURSTS;
                let burst_codes: Vec<Code> = stream::iter(0..per_burst)
                    .map(|i| {
                        let client = attackers[(burst + i) % attackers.len()].clone();
                        let namespace = namespace.clone();
                        let at = start + Duration::from_secs(1) * i as u32 / per_burst as u32;
                        async move {
                            tokio::time::sleep_until(at).await;
                            match client
                                .detokenize(&namespace, vec!["000-00-0000".into()], false)
                                .await
                            {
                                Ok(_) => Code::Ok,
                                Err(phivault_client::ClientError::Status(s)) => s.code(),
                                Err(_) => Code::Unknown,
                            }
                        }
                    })
                    .buffer_unordered(IN_FLIGHT)
                    .collect()
                    .await;
                flooding.store(false, Release);
                codes.extend(burst_codes);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            done.store(true, Release);
            codes
        })
    };
    let (idle, during) = reveals_by_phase(&billing, &token, &flooding, &done).await;
    let codes = flood.await.expect("flood task");
    let refused = codes
        .iter()
        .filter(|&&c| c == Code::Unauthenticated)
        .count();
    // The transport may close an attacker's connection (too many streams
    // reset early); those calls fail without reaching the gate. None is
    // ever served.
    assert!(
        codes
            .iter()
            .all(|&c| c != Code::Ok && c != Code::PermissionDenied),
        "no flood call is served"
    );
    assert!(
        refused >= FLOOD * 95 / 100,
        "{refused} of {FLOOD} flood calls refused UNAUTHENTICATED"
    );
    assert!(
        during >= 200 && idle >= 200,
        "reveals go on during the flood ({idle} quiet, {during} during it)"
    );

    // Every refusal is accounted for in summaries, within a few windows.
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let now = records(&auditor).await;
        if summarised_calls(&now) >= refused as u64 || Instant::now() > deadline {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Every call that reached the gate is counted, once.
    let summarised = summarised_calls(&after);
    assert!(
        (refused as u64..=FLOOD as u64).contains(&summarised),
        "{summarised} refusals summarised, {refused} seen by the client"
    );
    let summaries: Vec<&pb::AuditRecord> = after.iter().filter(|r| r.rpc == SUMMARY_RPC).collect();
    assert!(
        summaries.iter().all(|r| r.client_id.is_empty()
            && !r.authenticated
            && r.outcome == Code::Unauthenticated as i32
            && r.target
                .starts_with("peer=127.0.0.1 reason=unknown-key claimed=0123456789abcdef ")
            && r.namespace.is_empty()),
        "summaries name the peer, the claimed id and the reason, and no namespace"
    );
    let added = unauthenticated(&after) - records_before;
    assert!(
        (1..=40).contains(&added),
        "{added} records for {FLOOD} refused calls (one summary per window expected)"
    );
    // The reveals meanwhile add a record each (~200 bytes with the WAL and
    // the disclosure index); the flood adds next to nothing.
    let reveals = (idle + during + 1) as u64;
    let grown = dir_bytes(&vault.data()).saturating_sub(bytes_before);
    assert!(
        grown < (2 << 20) + reveals * 1024,
        "the data directory grew by {grown} bytes during the flood ({reveals} reveals)"
    );
    let log = server.stop();
    assert!(
        log.matches("unauthenticated").count() < 100,
        "refusals are not logged one by one at the default level"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_namespace_is_recorded_by_its_length_only() {
    let vault = VaultDir::init();
    let server = Server::start(&vault, &[]);
    let admin = connect(&server, Some(&vault.admin_key)).await;
    let (pipeline, _) = client_with(&admin, &server, "pipeline", &["tokenize:ssn"]).await;
    let (auditor, _) = client_with(&admin, &server, "auditor", &["audit"]).await;
    let namespace = format!("{}\u{1}PATIENT", "x".repeat(1000));
    let error = pipeline
        .detokenize(&namespace, vec!["000-00-0000".into()], false)
        .await
        .expect_err("no detokenize scope");
    let message = match &error {
        phivault_client::ClientError::Status(s) => s.message().to_owned(),
        other => panic!("expected a status, got {other}"),
    };
    assert_eq!(code(error), Code::PermissionDenied);
    assert!(!message.contains("PATIENT") && message.contains("1008 bytes"));
    let denied: Vec<pb::AuditRecord> = records(&auditor)
        .await
        .into_iter()
        .filter(|r| r.outcome == Code::PermissionDenied as i32)
        .collect();
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0].namespace, "(invalid namespace name, 1008 bytes)");

    // Without a key, even a message over the size limit is refused from
    // its headers: nothing of the body is read, so the answer is
    // UNAUTHENTICATED, not RESOURCE_EXHAUSTED.
    let stranger = Client::connect(ClientOptions::new(server.endpoint()).api_key(UNKNOWN_KEY))
        .await
        .expect("connect");
    let oversized = "x".repeat(5 << 20);
    let refused = stranger
        .detokenize(&oversized, vec!["000-00-0000".into()], false)
        .await
        .expect_err("no key");
    assert_eq!(code(refused), Code::Unauthenticated);
    drop((admin, pipeline, auditor, stranger));
    let log = server.stop();
    assert!(
        !log.contains("PATIENT"),
        "a caller's string reached the log"
    );
}

/// A client whose connections come from `source` (another loopback
/// address), so that per-peer caps apply to it and not to the test's other
/// clients.
async fn tokenizer_from(
    server: &Server,
    source: std::net::IpAddr,
) -> Option<pb::tokenizer_client::TokenizerClient<tonic::transport::Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(server.endpoint())
        .expect("endpoint")
        .local_address(Some(source))
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .ok()?;
    Some(pb::tokenizer_client::TokenizerClient::new(channel))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_slow_streams_from_one_peer_are_capped_and_others_are_served() {
    const PER_PEER: usize = 8;
    const STREAMS: usize = 16;
    let vault = VaultDir::init();
    let config = vault.config(&format!(
        "[transport]\nmax_connections_per_peer = {PER_PEER}\nmax_concurrent_streams = {STREAMS}\n"
    ));
    let server = Server::start(&vault, &["--config", config.to_str().expect("utf-8")]);
    let admin = connect(&server, Some(&vault.admin_key)).await;
    let (pipeline, key) = client_with(
        &admin,
        &server,
        "pipeline",
        &["tokenize:ssn", "detokenize:ssn"],
    )
    .await;
    let rss_before = server.rss_kib();

    // An authenticated peer (a stolen pipeline key) on 127.0.0.2 opens twice
    // the connections it may, and twice the streams each may carry; every
    // stream sends one message and then nothing, for as long as it is open.
    let attacker = std::net::IpAddr::from([127, 0, 0, 2]);
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut holds = Vec::new();
    for _ in 0..2 * PER_PEER {
        let Some(client) = tokenizer_from(&server, attacker).await else {
            continue;
        };
        for _ in 0..2 * STREAMS {
            let mut client = client.clone();
            let answered = std::sync::Arc::clone(&answered);
            let key = key.clone();
            holds.push(tokio::spawn(async move {
                let first = pb::TokenizeRequest {
                    namespace: "ssn".into(),
                    values: vec!["123-45-6789".into()],
                };
                let messages = stream::once(std::future::ready(first)).chain(stream::pending());
                let mut request = tonic::Request::new(messages);
                request.metadata_mut().insert(
                    "authorization",
                    format!("Bearer {key}").parse().expect("header value"),
                );
                let Ok(response) = client.tokenize_stream(request).await else {
                    return;
                };
                let mut responses = response.into_inner();
                if let Some(Ok(_)) = responses.next().await {
                    answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                // Hold the stream open until the test ends.
                let _ = responses.next().await;
            }));
        }
    }
    // Wait until the admitted streams are answered (and no more arrive).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = (0, Instant::now());
    loop {
        let now = answered.load(std::sync::atomic::Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        }
        if (now >= PER_PEER * STREAMS && last.1.elapsed() > Duration::from_secs(2))
            || Instant::now() > deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answered = answered.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        answered,
        PER_PEER * STREAMS,
        "one peer gets {PER_PEER} connections of {STREAMS} streams, no more"
    );

    // Another client is served meanwhile, promptly.
    let started = Instant::now();
    let token = texts(
        pipeline
            .tokenize("ssn", vec!["987-65-4321".into()])
            .await
            .expect("tokenize while the streams are held"),
    )
    .remove(0);
    let back = texts(
        pipeline
            .detokenize("ssn", vec![token], false)
            .await
            .expect("detokenize while the streams are held"),
    );
    assert_eq!(back, ["987-65-4321"]);
    assert!(started.elapsed() < Duration::from_secs(5));

    let rss_during = server.rss_kib();
    assert!(
        rss_during < rss_before + 64 * 1024,
        "server RSS grew from {rss_before} KiB to {rss_during} KiB"
    );
    for hold in holds {
        hold.abort();
    }
    server.stop();
}

/// Connections that connect and say nothing, or send a few bytes and stop,
/// are closed after the handshake timeout and give their slots back; the
/// peer's later connections are served. Without the deadline a plaintext
/// server keeps them open for ever, and enough of them fill the caps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_and_free_their_slots() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const PER_PEER: usize = 4;
    let vault = VaultDir::init();
    let config = vault.config(&format!(
        "[transport]\nmax_connections_per_peer = {PER_PEER}\nhandshake_timeout_secs = 1\n"
    ));
    let server = Server::start(&vault, &["--config", config.to_str().expect("utf-8")]);
    let mut silent = Vec::new();
    for i in 0..PER_PEER {
        let mut stream = tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("connect");
        if i % 2 == 1 {
            // Half of the preface, then nothing.
            stream.write_all(b"PRI * HTTP/2.0").await.expect("write");
        }
        silent.push(stream);
    }
    let opened = Instant::now();
    for mut stream in silent {
        let mut byte = [0u8; 1];
        // The server may answer a partial preface with nothing but a close:
        // end of stream or a reset both mean the slot is free.
        let closed = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match stream.read(&mut byte).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "a silent connection was still open after 20 s"
        );
    }
    let waited = opened.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}, before the timeout"
    );
    // Every slot came back: the peer's full quota of connections, held at
    // once, is served.
    let mut held = Vec::new();
    for _ in 0..PER_PEER {
        let again = connect(&server, Some(&vault.admin_key)).await;
        again
            .list_clients()
            .await
            .expect("served after the silent ones closed");
        held.push(again);
    }
    server.stop();
}

/// A backup cut short by a crash leaves its staging directory (a partial
/// checkpoint, hard links to live files) in the backup directory; the next
/// start removes it, and backups work as before. The backup directory is
/// configured through a link, as a mounted volume often is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_backups_staging_directory_is_removed_at_start() {
    if phivault_tests::embedded_only("a_crashed_backups_staging_directory_is_removed_at_start") {
        return;
    }
    let vault = VaultDir::init();
    let root = tempfile::tempdir().expect("tempdir");
    let volume = root.path().join("volume");
    std::fs::create_dir(&volume).expect("mkdir");
    let configured = root.path().join("backups");
    std::os::unix::fs::symlink(&volume, &configured).expect("symlink");
    let leftover = volume.join(".phivault-backup-00112233445566aa");
    std::fs::create_dir_all(leftover.join("checkpoint")).expect("mkdir");
    std::fs::write(leftover.join("checkpoint/000012.sst"), b"partial").expect("write");
    let server = Server::start(
        &vault,
        &["--backup-dir", configured.to_str().expect("utf-8")],
    );
    assert!(!leftover.exists(), "removed before the server listens");
    let admin = connect(&server, Some(&vault.admin_key)).await;
    let to = configured.join("after-restart");
    admin
        .backup(to.to_str().expect("utf-8"))
        .await
        .expect("a backup under the configured link");
    let left: Vec<_> = std::fs::read_dir(&volume)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, [std::ffi::OsString::from("after-restart")]);
    let stderr = server.stop();
    assert!(stderr.contains("cut short by a crash"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_takes_small_messages_only() {
    let vault = VaultDir::init();
    let server = Server::start(&vault, &[]);
    let admin = connect(&server, Some(&vault.admin_key)).await;
    let scopes = vec!["tokenize:ssn".to_owned(); 10_000];
    let error = admin
        .create_client("too-big", scopes)
        .await
        .expect_err("a 150 KiB admin request is refused");
    assert_eq!(code(error), Code::ResourceExhausted);
    server.stop();
}

/// Whether health reports `phivault.v1.Tokenizer` SERVING (the readiness a
/// load balancer asks for; the overall status stays SERVING while the
/// process is alive).
async fn tokenizer_serving(server: &Server) -> bool {
    use tonic_health::pb::health_check_response::ServingStatus;
    let channel = tonic::transport::Endpoint::from_shared(server.endpoint())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "phivault.v1.Tokenizer".into(),
        })
        .await
        .expect("health answers")
        .into_inner()
        .status();
    status == ServingStatus::Serving
}

/// A tmpfs of `bytes` mounted at a path, unmounted on drop. Needs root.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, bytes: u64) -> Result<Self, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let output = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .map_err(|e| e.to_string())?;
        if output.status.success() {
            Ok(Self(at.to_owned()))
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills the file system of `dir` with one file, 1 MiB at a time, until a
/// write fails for want of space.
fn fill(dir: &Path) -> std::path::PathBuf {
    use std::io::Write as _;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("create the filler");
    let chunk = vec![0xa5u8; 1 << 20];
    while file
        .write_all(&chunk)
        .and_then(|()| file.sync_data())
        .is_ok()
    {}
    // The last, partial chunk: byte by byte is too slow, 4 KiB pages do.
    while file
        .write_all(&chunk[..4096])
        .and_then(|()| file.sync_data())
        .is_ok()
    {}
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_closed_and_the_vault_heals_when_space_returns() {
    if phivault_tests::embedded_only(
        "a_full_disk_fails_closed_and_the_vault_heals_when_space_returns",
    ) {
        return;
    }
    let mut mounted = None;
    let vault = VaultDir::init_prepared(|data| {
        mounted = Some(Tmpfs::mount(data, 256 << 20));
    });
    let _tmpfs = match mounted.expect("prepare runs before init") {
        Ok(tmpfs) => tmpfs,
        Err(why) => {
            eprintln!(
                "SKIPPED: a real full disk needs a tmpfs, and mounting one failed (not root?): {why}"
            );
            return;
        }
    };
    let server = Server::start(
        &vault,
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ],
    );
    let ops = server.metrics_addr.expect("the operations listener");
    let api = server.http_addr.expect("the HTTP/JSON API");
    assert!(super::http_get(ops, "/readyz").starts_with("HTTP/1.1 200"));
    let admin = connect(&server, Some(&vault.admin_key)).await;
    // Free text (opaque tokens) of 2 KiB a value, so that RocksDB soon needs
    // more space than its write-ahead log preallocated.
    let (pipeline, _) = client_with(
        &admin,
        &server,
        "pipeline",
        &["tokenize:text", "detokenize:text"],
    )
    .await;
    let mut acknowledged: Vec<(String, String)> = Vec::new();
    let mut batch_no = 0u32;
    let mut next_batch = || {
        batch_no += 1;
        (0..500)
            .map(|i| format!("{batch_no:05}-{i:04} {}", "note ".repeat(400)))
            .collect::<Vec<String>>()
    };
    let values = next_batch();
    let tokens = texts(
        pipeline
            .tokenize("text", values.clone())
            .await
            .expect("tokenize"),
    );
    acknowledged.extend(values.into_iter().zip(tokens));

    let filler = fill(&vault.data());
    // Writes fail once RocksDB needs space it cannot get (the WAL's
    // preallocated tail may take a few batches first).
    let mut failed = None;
    for _ in 0..400 {
        let values = next_batch();
        match pipeline.tokenize("text", values.clone()).await {
            Ok(results) => acknowledged.extend(values.into_iter().zip(texts(results))),
            Err(e) => {
                failed = Some(code(e));
                break;
            }
        }
    }
    assert_eq!(
        failed,
        Some(Code::Unavailable),
        "a full disk makes writes fail"
    );
    // A reveal needs its audit record: it fails closed too, revealing nothing.
    let (value, token) = acknowledged[0].clone();
    let refused = pipeline
        .detokenize("text", vec![token.clone()], false)
        .await
        .expect_err("no reveal without its record");
    assert_eq!(code(refused), Code::Unavailable);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokenizer_serving(&server).await && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !tokenizer_serving(&server).await,
        "NOT_SERVING while the disk is full"
    );
    assert!(
        admin.health().await.expect("health answers"),
        "the process stays alive (liveness): restarting it would not free the disk"
    );
    // The same over plain HTTP, for probes that cannot speak gRPC over TLS.
    let readyz = super::http_get(ops, "/readyz");
    assert!(
        readyz.starts_with("HTTP/1.1 503") && readyz.contains("the write path is down"),
        "{readyz}"
    );
    assert!(super::http_get(ops, "/healthz").starts_with("HTTP/1.1 200"));
    // And on the HTTP/JSON API's port, and to the client library.
    let ready = super::http_get(api, "/v1/health/ready");
    assert!(
        ready.starts_with("HTTP/1.1 503") && ready.contains("NOT_SERVING"),
        "{ready}"
    );
    assert!(super::http_get(api, "/v1/health").starts_with("HTTP/1.1 200"));
    assert!(!admin.ready().await.expect("ready answers"));

    std::fs::remove_file(&filler).expect("free the space");
    // RocksDB's recovery polls for space every few seconds.
    let deadline = Instant::now() + Duration::from_secs(60);
    let healed = loop {
        match pipeline
            .detokenize("text", vec![token.clone()], false)
            .await
        {
            Ok(results) => break texts(results),
            Err(phivault_client::ClientError::Status(s))
                if s.code() == Code::Unavailable && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("the vault did not heal within 60 s: {e}"),
        }
    };
    assert_eq!(healed, [value]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tokenizer_serving(&server).await && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(tokenizer_serving(&server).await, "SERVING again");
    assert!(super::http_get(ops, "/readyz").starts_with("HTTP/1.1 200"));
    assert!(super::http_get(api, "/v1/health/ready").starts_with("HTTP/1.1 200"));
    assert!(admin.ready().await.expect("ready answers"));
    let values = next_batch();
    let tokens = texts(
        pipeline
            .tokenize("text", values.clone())
            .await
            .expect("tokenize after healing"),
    );
    acknowledged.extend(values.into_iter().zip(tokens));

    // Nothing acknowledged was lost, in this process or after a restart.
    drop((admin, pipeline));
    server.stop();
    let server = Server::start(&vault, &[]);
    let admin = connect(&server, Some(&vault.admin_key)).await;
    let (reader, _) = client_with(&admin, &server, "reader", &["detokenize:text"]).await;
    for chunk in acknowledged.chunks(500) {
        let tokens = chunk.iter().map(|(_, t)| t.clone()).collect();
        let values = texts(
            reader
                .detokenize("text", tokens, false)
                .await
                .expect("detokenize"),
        );
        let expected: Vec<&String> = chunk.iter().map(|(v, _)| v).collect();
        assert_eq!(values.iter().collect::<Vec<_>>(), expected);
    }
    drop((admin, reader));
    server.stop();
    let verify = vault
        .command("verify")
        .args([
            "--master-key-file",
            vault.key_file().to_str().expect("utf-8"),
        ])
        .output()
        .expect("run phivault verify");
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_and_secrets_on_the_machine_are_owner_only() {
    if phivault_tests::embedded_only("files_and_secrets_on_the_machine_are_owner_only") {
        return;
    }
    let vault = VaultDir::init();
    assert_eq!(mode(&vault.data()), 0o700, "the data directory");
    for entry in std::fs::read_dir(vault.data()).expect("data dir") {
        let path = entry.expect("entry").path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
    assert_eq!(mode(&vault.key_file()), 0o600);

    // The server runs without core dumps, and writes owner-only files.
    let server = Server::start(&vault, &[]);
    let limits =
        std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).expect("read limits");
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("core limit line");
    assert_eq!(
        core.split_whitespace().skip(4).take(2).collect::<Vec<_>>(),
        ["0", "0"],
        "{core}"
    );
    let admin = connect(&server, Some(&vault.admin_key)).await;
    // Backups through the API need a configured directory.
    let refused = admin
        .backup(vault.root.path().join("b").to_str().expect("utf-8"))
        .await
        .expect_err("no backup directory configured");
    assert_eq!(code(refused), Code::FailedPrecondition);
    drop(admin);
    server.stop();
    for entry in std::fs::read_dir(vault.data()).expect("data dir") {
        let path = entry.expect("entry").path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }

    // A data directory or key file others can read is refused, by name.
    let refused_with = |vault: &VaultDir| {
        let output = vault
            .command("serve")
            .args([
                "--master-key-file",
                vault.key_file().to_str().expect("utf-8"),
            ])
            .args(["--listen", "127.0.0.1:0"])
            .output()
            .expect("run phivault serve");
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let chmod = |path: &Path, mode: u32| {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    chmod(&vault.data(), 0o755);
    let error = refused_with(&vault);
    assert!(
        error.contains("the data directory") && error.contains("mode 755"),
        "{error}"
    );
    chmod(&vault.data(), 0o700);
    chmod(&vault.key_file(), 0o644);
    let error = refused_with(&vault);
    assert!(
        error.contains("the master key file") && error.contains("chmod 600"),
        "{error}"
    );
    chmod(&vault.key_file(), 0o600);
    drop(Server::start(&vault, &[]));
}

#[test]
fn init_writes_the_admin_key_only_to_a_new_private_file() {
    if phivault_tests::embedded_only("init_writes_the_admin_key_only_to_a_new_private_file") {
        return;
    }
    let root = tempfile::tempdir().expect("tempdir");
    let init = |extra: &[&str]| {
        std::process::Command::new(phivault_tests::binary("phivault"))
            .arg("init")
            .args([
                "--data-dir",
                root.path().join("data").to_str().expect("utf-8"),
            ])
            .args([
                "--master-key-file",
                root.path().join("key").to_str().expect("utf-8"),
                "--create-key-file",
            ])
            .args(extra)
            .env("PHIVAULT_LOG", "warn")
            .output()
            .expect("run phivault init")
    };
    let without = init(&[]);
    assert!(!without.status.success());
    assert!(String::from_utf8_lossy(&without.stderr).contains("--admin-key-file"));
    let weak = init(&[
        "--admin-key-file",
        "/nonexistent/x",
        "--argon2-memory-kib",
        "1024",
    ]);
    assert!(!weak.status.success());
    assert!(
        String::from_utf8_lossy(&weak.stderr).contains("memory"),
        "{}",
        String::from_utf8_lossy(&weak.stderr)
    );
    assert!(!root.path().join("data").exists(), "nothing created");
    // A key file that cannot be written stops init before any vault exists.
    let nowhere = init(&["--admin-key-file", "/nonexistent/dir/admin.key"]);
    assert!(!nowhere.status.success());
    assert!(String::from_utf8_lossy(&nowhere.stderr).contains("/nonexistent/dir/admin.key"));
    assert!(
        !root.path().join("data").exists(),
        "no vault without its admin key"
    );
    let admin_file = root.path().join("admin.key");
    let done = init(&["--admin-key-file", admin_file.to_str().expect("utf-8")]);
    assert!(done.status.success(), "{done:?}");
    let key = std::fs::read_to_string(&admin_file).expect("admin key");
    assert!(key.starts_with("pv_"));
    assert_eq!(mode(&admin_file), 0o600);
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(!stdout.contains(key.trim()), "the key is never printed");
}

#[test]
fn a_passphrase_from_the_environment_is_warned_about() {
    if phivault_tests::embedded_only("a_passphrase_from_the_environment_is_warned_about") {
        return;
    }
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("data");
    let output = std::process::Command::new(phivault_tests::binary("phivault"))
        .arg("init")
        .args(["--data-dir", data.to_str().expect("utf-8")])
        .args([
            "--admin-key-file",
            root.path().join("admin.key").to_str().expect("utf-8"),
        ])
        .args(["--argon2-memory-kib", "131072"])
        .env("PHIVAULT_PASSPHRASE", "correct horse battery staple")
        .env("PHIVAULT_LOG", "warn")
        .output()
        .expect("run phivault init");
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("PHIVAULT_PASSPHRASE") && stderr.contains("--passphrase-file"));
    assert!(!stderr.contains("correct horse"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_token_space_does_not_stall_reveals() {
    let vault = VaultDir::init();
    let server = Server::start(&vault, &["--metrics-listen", "127.0.0.1:0"]);
    let admin = connect(&server, Some(&vault.admin_key)).await;
    // A random namespace of 10,000 tokens for values shaped `Z` + 4 digits:
    // every call of one value mints a new token, so it fills up.
    admin
        .create_namespace(pb::CreateNamespaceRequest {
            name: "tiny".into(),
            format: "alnum".into(),
            options: Some(pb::FormatOptions {
                keep_prefix: Some(1),
                ..Default::default()
            }),
            random: true,
        })
        .await
        .expect("create namespace");
    let (filler, _) = client_with(&admin, &server, "filler", &["tokenize:tiny"]).await;
    let (billing, token) = billing(&admin, &server).await;
    let mut exhausted = 0;
    for _ in 0..12 {
        let results = filler
            .tokenize("tiny", vec!["Z0000".into(); 1000])
            .await
            .expect("tokenize");
        exhausted += results
            .iter()
            .filter(|r| matches!(r, Err(e) if e.code == Code::ResourceExhausted as i32))
            .count();
    }
    assert!(exhausted >= 1000, "the space is full ({exhausted} refused)");
    let metrics = super::scrape(server.metrics_addr.expect("metrics"));
    let fill: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"phivault_namespace_fill_ratio{namespace="tiny"} "#))
        .and_then(|v| v.parse().ok())
        .expect("a fill ratio for the namespace");
    assert!(fill > 0.5, "fill ratio {fill}");

    // Now every call of the filler searches its whole budget of candidates
    // and fails. In bursts, while reveals run throughout.
    let flooding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let searches =
        {
            let (flooding, done) = (
                std::sync::Arc::clone(&flooding),
                std::sync::Arc::clone(&done),
            );
            tokio::spawn(async move {
                use std::sync::atomic::Ordering::Release;
                let mut calls = 0;
                for _ in 0..5 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    flooding.store(true, Release);
                    let burst = Instant::now();
                    while burst.elapsed() < Duration::from_secs(1) {
                        let results = filler
                            .tokenize("tiny", vec!["Z0000".into(); 4])
                            .await
                            .expect("tokenize");
                        assert!(results.iter().all(
                            |r| matches!(r, Err(e) if e.code == Code::ResourceExhausted as i32)
                        ));
                        calls += 1;
                    }
                    flooding.store(false, Release);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                done.store(true, Release);
                calls
            })
        };
    let (idle, during) = reveals_by_phase(&billing, &token, &flooding, &done).await;
    let calls = searches.await.expect("searches");
    assert!(calls >= 5, "the searches ran ({calls} calls)");
    assert!(
        idle >= 100 && during >= 100,
        "reveals go on during the searches ({idle} quiet, {during} during them)"
    );
    server.stop();
}

/// Group commits made so far, from the metrics.
fn commits(server: &Server) -> u64 {
    super::scrape(server.metrics_addr.expect("metrics"))
        .lines()
        .find_map(|l| l.strip_prefix("phivault_writer_jobs_per_commit_count "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the commit count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_change_and_its_audit_record_are_one_commit() {
    let vault = VaultDir::init();
    let server = Server::start(&vault, &["--metrics-listen", "127.0.0.1:0"]);
    let admin = connect(&server, Some(&vault.admin_key)).await;
    let (auditor, _) = client_with(&admin, &server, "auditor", &["audit"]).await;

    let before = commits(&server);
    let created = admin
        .create_client("billing", vec!["detokenize:ssn".into()])
        .await
        .expect("create");
    let id = created.client.expect("client").client_id;
    assert_eq!(commits(&server) - before, 1, "the client and its record");
    let before = commits(&server);
    admin.revoke_client(&id).await.expect("revoke");
    assert_eq!(
        commits(&server) - before,
        1,
        "the revocation and its record"
    );
    let before = commits(&server);
    admin
        .create_namespace(pb::CreateNamespaceRequest {
            name: "visit-date".into(),
            format: "date".into(),
            options: None,
            random: false,
        })
        .await
        .expect("create namespace");
    assert_eq!(commits(&server) - before, 1, "the namespace and its record");

    let records = records(&auditor).await;
    let find = |rpc: &str| {
        records
            .iter()
            .rev()
            .find(|r| r.rpc == format!("/phivault.v1.Admin/{rpc}"))
            .unwrap_or_else(|| panic!("no {rpc} record"))
    };
    assert_eq!(find("CreateClient").target, id);
    assert_eq!(find("RevokeClient").target, id);
    assert_eq!(find("CreateNamespace").namespace, "visit-date");
    assert!(
        records
            .iter()
            .filter(|r| r.rpc.starts_with("/phivault.v1.Admin/Create"))
            .all(|r| r.outcome == 0 && r.authenticated)
    );
    // A refused change still leaves its record (and changes nothing).
    let duplicate = admin
        .create_namespace(pb::CreateNamespaceRequest {
            name: "visit-date".into(),
            format: "date".into(),
            options: None,
            random: false,
        })
        .await
        .expect_err("exists");
    assert_eq!(code(duplicate), Code::AlreadyExists);
    let records = super::hardening::records(&auditor).await;
    assert!(
        records
            .iter()
            .any(|r| r.rpc == "/phivault.v1.Admin/CreateNamespace"
                && r.outcome == Code::AlreadyExists as i32)
    );
    server.stop();
}
