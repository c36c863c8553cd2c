//! The deployment files under `deploy/`, checked by the tools that run
//! them: the systemd unit by `systemd-analyze`, and the server's side of it
//! (readiness through `NOTIFY_SOCKET`) against the real binary.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use phivault_tests::{Server, VaultDir};

/// The unit with its `ExecStart` pointing at the binary this build made
/// (`verify` checks that the program exists).
fn unit_for_this_build(dir: &Path) -> std::path::PathBuf {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/phivault.service"),
    )
    .expect("deploy/systemd/phivault.service");
    let binary = phivault_tests::binary("phivault");
    let path = dir.join("phivault.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/phivault", binary.to_str().expect("utf-8")),
    )
    .expect("write the unit");
    path
}

fn systemd_analyze(args: &[&str]) -> Option<std::process::Output> {
    phivault_tests::run_tool(
        "systemd-analyze",
        args,
        Path::new("."),
        "install the `systemd` package",
    )
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = unit_for_this_build(dir.path());
    let unit = unit.to_str().expect("utf-8");
    let Some(verify) = systemd_analyze(&["verify", unit]) else {
        return;
    };
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success() && said.trim().is_empty(), "{said}");
    let security = systemd_analyze(&["security", "--offline=true", "--threshold=20", unit])
        .expect("systemd-analyze ran once");
    let report = String::from_utf8_lossy(&security.stdout);
    assert!(security.status.success(), "{report}");
    let exposure: f64 = report
        .lines()
        .find_map(|l| l.split("exposure level for phivault.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in {report}"));
    eprintln!("systemd-analyze security: exposure {exposure}");
    assert!(
        exposure <= 2.0,
        "exposure {exposure} (README says 1.2)\n{report}"
    );
    for must in [
        "MemoryDenyWriteExecute=",
        "NoNewPrivileges=",
        "PrivateTmp=",
        "ProtectSystem=",
    ] {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with('✓') && l.contains(must)),
            "{must} not in force:\n{report}"
        );
    }
}

#[test]
fn the_server_tells_systemd_it_is_ready_once_it_accepts_calls() {
    let vault = VaultDir::init();
    let dir = tempfile::tempdir().expect("tempdir");
    let socket_path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let server = Server::start_with_env(
        &vault,
        &[],
        &[("NOTIFY_SOCKET", socket_path.to_str().expect("utf-8"))],
    );
    let mut buffer = [0u8; 256];
    let n = socket.recv(&mut buffer).expect("a readiness datagram");
    let message = String::from_utf8_lossy(&buffer[..n]);
    assert!(message.lines().any(|l| l == "READY=1"), "{message}");
    server.stop();
}

#[test]
fn logs_are_json_lines_on_request_and_sighup_changes_the_level() {
    let vault = VaultDir::init();
    let dir = tempfile::tempdir().expect("tempdir");
    let level_file = dir.path().join("log-level");
    std::fs::write(&level_file, "debug\n").expect("level file");
    let server = Server::start_with_env(
        &vault,
        &[],
        &[
            ("PHIVAULT_LOG_FORMAT", "json"),
            ("PHIVAULT_LOG", "info"),
            ("PHIVAULT_LOG_FILE", level_file.to_str().expect("utf-8")),
        ],
    );
    server.hangup();
    assert!(
        server.wait_for_log("log level changed", Duration::from_secs(20)),
        "no sign of the SIGHUP"
    );
    let log = server.stop();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "SIGHUP: log level changed"),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string())
    );
}

/// Shell completions and man pages come from the same definitions as
/// `--help`: the scripts parse in bash, and groff formats every page.
#[test]
fn completions_and_man_pages_are_generated_for_both_binaries() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (binary, subcommand) in [("phivault", "serve"), ("phivault-client", "bulk")] {
        let script = Command::new(phivault_tests::binary(binary))
            .args(["completions", "bash"])
            .output()
            .expect("completions");
        assert!(script.status.success());
        let text = String::from_utf8_lossy(&script.stdout);
        assert!(text.contains(subcommand), "{binary}: {text}");
        let path = dir.path().join(format!("{binary}.bash"));
        std::fs::write(&path, &script.stdout).expect("write");
        let parsed = Command::new("bash")
            .arg("-n")
            .arg(&path)
            .output()
            .expect("bash -n");
        assert!(
            parsed.status.success(),
            "{}",
            String::from_utf8_lossy(&parsed.stderr)
        );

        let pages = dir.path().join(format!("{binary}-man"));
        let made = Command::new(phivault_tests::binary(binary))
            .arg("man-pages")
            .arg(&pages)
            .output()
            .expect("man-pages");
        assert!(made.status.success());
        let top = pages.join(format!("{binary}.1"));
        let sub = pages.join(format!("{binary}-{subcommand}.1"));
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&top).expect("page").permissions().mode() & 0o777;
            assert_eq!(mode, 0o644, "{binary}'s man pages are for every user");
        }
        for page in [&top, &sub] {
            let Ok(formatted) = Command::new("groff")
                .args(["-man", "-Tutf8", "-z"])
                .arg(page)
                .output()
            else {
                eprintln!("SKIPPED: groff cannot run; install the `groff-base` package");
                return;
            };
            assert!(
                formatted.status.success() && formatted.stderr.is_empty(),
                "{}: {}",
                page.display(),
                String::from_utf8_lossy(&formatted.stderr)
            );
        }
    }
}
