//! `phivault-client`'s guards against handing PHI to the wrong party: a
//! plaintext endpoint off loopback is refused before anything is sent, and
//! every file it writes is private (0600), new, and never reached through a
//! symbolic link.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use phivault_tests::{Server, VaultDir};

use super::{client_with, connect};

/// A well-formed API key that must never be echoed.
const CANARY_KEY: &str =
    "pv_0123456789abcdef_ca4a7ca4a7ca4a7ca4a7ca4a7ca4a7ca4a7ca4a7ca4a7ca4a7ca4a7ca4a7ca4a";

/// Runs `phivault-client --endpoint ENDPOINT ARGS` with the API key `key`
/// and the extra environment `env`, under `umask 000`: there a file created
/// without an explicit mode would be 0666, readable by everyone.
fn client(endpoint: &str, key: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    run_client(Command::new("sh"), endpoint, key, args, env)
}

/// How this process can make an empty network namespace: `unshare -n` as
/// root, `unshare -rn` (in a user namespace of its own) otherwise, where the
/// kernel allows it.
fn isolation() -> Option<&'static [&'static str]> {
    [&["-n"][..], &["-rn"][..]].into_iter().find(|flags| {
        Command::new("unshare")
            .args(*flags)
            .arg("true")
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// [`client`] in an empty network namespace when the machine allows one:
/// if it tried to connect anywhere, the attempt could not leave the machine.
fn isolated_client(endpoint: &str, key: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let Some(flags) = isolation() else {
        eprintln!("no network namespace can be made here: the client runs unisolated");
        return client(endpoint, key, args, env);
    };
    let mut unshare = Command::new("unshare");
    unshare.args(flags).arg("sh");
    run_client(unshare, endpoint, key, args, env)
}

fn run_client(
    mut shell: Command,
    endpoint: &str,
    key: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Output {
    shell
        .args(["-c", "umask 000 && exec \"$0\" \"$@\""])
        .arg(phivault_tests::binary("phivault-client"))
        .args(["--endpoint", endpoint])
        .args(args)
        .env("PHIVAULT_API_KEY", key)
        .env_remove("PHIVAULT_ENDPOINT")
        .env_remove("PHIVAULT_INSECURE_PLAINTEXT")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run phivault-client")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// The permission bits of `path` itself (a link is not followed).
fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o7777
}

fn absent(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_err()
}

fn refused_as_existing(output: &Output, path: &Path) {
    let stderr = stderr(output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{} already exists", s(path))),
        "{stderr}"
    );
}

#[test]
fn plaintext_off_loopback_is_refused_before_anything_is_sent() {
    // The client runs in an empty network namespace: had it not refused
    // before connecting, its attempt to reach 10.1.2.3 would fail there
    // (`cannot connect`, asserted absent below) instead of leaving the box.
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.csv");
    std::fs::write(&input, "id,ssn\n1,123-45-6789\n").expect("write input");
    let out = dir.path().join("out.csv");
    for args in [
        &["health"][..],
        &["tokenize", "-n", "ssn", "123-45-6789"][..],
        &[
            "bulk",
            "tokenize",
            s(&input),
            "-o",
            s(&out),
            "--map",
            "ssn=ssn",
        ][..],
    ] {
        let started = Instant::now();
        let output = isolated_client("http://10.1.2.3:1", CANARY_KEY, args, &[]);
        let took = started.elapsed();
        let stderr = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("refusing plaintext to 10.1.2.3")
                && stderr.contains("https://")
                && stderr.contains("--insecure-plaintext"),
            "{args:?}: {stderr}"
        );
        // A connection attempt ends in `cannot connect` (or the 10-second
        // connect timeout), not in the refusal.
        assert!(!stderr.contains("cannot connect"), "{stderr}");
        assert!(took < Duration::from_secs(5), "{args:?} took {took:?}");
        assert!(!stderr.contains(CANARY_KEY) && !stderr.contains("ca4a7"));
        assert!(!stderr.contains("123-45-6789"));
    }
    assert!(
        absent(&out) && absent(&dir.path().join("out.csv.partial")),
        "a refused run creates no file"
    );
}

/// Linux routes a connection to 0.0.0.0 to the local host, so a server on
/// 127.0.0.1 can be reached through a host that is not loopback by name
/// without any traffic leaving the machine.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_plaintext_lets_a_non_loopback_host_through_with_a_warning() {
    let vault = VaultDir::init();
    let server = Server::start(&vault, &[]);
    let elsewhere = format!("http://0.0.0.0:{}", server.addr.port());
    let key = vault.admin_key.as_str();

    for env in [&[][..], &[("PHIVAULT_INSECURE_PLAINTEXT", "false")][..]] {
        let refused = client(&elsewhere, key, &["health"], env);
        let stderr = stderr(&refused);
        assert_eq!(refused.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("refusing plaintext to 0.0.0.0"), "{stderr}");
    }

    type Run<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);
    let allowed: [Run<'_>; 2] = [
        (&["--insecure-plaintext", "health"][..], &[][..]),
        (
            &["health"][..],
            &[("PHIVAULT_INSECURE_PLAINTEXT", "true")][..],
        ),
    ];
    for (args, env) in allowed {
        let output = client(&elsewhere, key, args, env);
        let stderr = stderr(&output);
        assert!(output.status.success(), "{args:?} {env:?}: {stderr}");
        assert_eq!(String::from_utf8_lossy(&output.stdout), "SERVING\n");
        assert!(
            stderr.contains("DANGER: --insecure-plaintext"),
            "no warning: {stderr}"
        );
        assert!(!stderr.contains(key));
    }

    // Loopback needs no flag and draws no warning.
    let output = client(&server.endpoint(), key, &["health"], &[]);
    let stderr = stderr(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("DANGER"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_are_private_new_and_never_followed_through_a_link() {
    let vault = VaultDir::init();
    let server = Server::start(&vault, &[]);
    let admin = connect(&server, Some(&vault.admin_key)).await;
    let (_, key) = client_with(&admin, &server, "etl", &["tokenize:*", "detokenize:*"]).await;
    let endpoint = server.endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = |name: &str| dir.path().join(name);
    let input = file("in.csv");
    // The second SSN is malformed, so that the errors file gets a line.
    std::fs::write(&input, "id,ssn\n1,123-45-6789\n2,12-345-678\n").expect("write input");
    let bulk = |direction: &str, input: &Path, out: &Path, errors: Option<&Path>| {
        let mut args = vec![
            "bulk",
            direction,
            s(input),
            "-o",
            s(out),
            "--map",
            "ssn=ssn",
        ];
        if let Some(errors) = errors {
            args.extend(["--errors", s(errors)]);
        }
        client(&endpoint, &key, &args, &[])
    };

    // Tokens beside the rest of the record, and the failed-cell report.
    let (out, errors) = (file("out.csv"), file("errors.csv"));
    let first = bulk("tokenize", &input, &out, Some(&errors));
    assert_eq!(first.status.code(), Some(3), "{}", stderr(&first));
    assert_eq!(mode(&out), 0o600, "bulk output");
    assert_eq!(mode(&errors), 0o600, "errors file");
    assert!(absent(&file("out.csv.partial")));
    let tokenized = std::fs::read(&out).expect("read output");
    let listed = std::fs::read(&errors).expect("read errors");

    // Revealed values.
    let back = file("back.csv");
    let revealed = bulk("detokenize", &out, &back, None);
    assert_eq!(revealed.status.code(), Some(3), "{}", stderr(&revealed));
    assert_eq!(mode(&back), 0o600, "revealed output");
    assert!(
        std::fs::read_to_string(&back)
            .expect("read back")
            .contains("123-45-6789")
    );

    // A rerun onto the same output is refused before it starts, and both
    // files stay as they were.
    let rerun = bulk("tokenize", &input, &out, Some(&errors));
    refused_as_existing(&rerun, &out);
    assert_eq!(std::fs::read(&out).expect("read output"), tokenized);
    assert_eq!(std::fs::read(&errors).expect("read errors"), listed);
    assert!(absent(&file("out.csv.partial")));

    // An existing errors file is refused too, and no output is left behind.
    let out2 = file("out2.csv");
    let rerun = bulk("tokenize", &input, &out2, Some(&errors));
    refused_as_existing(&rerun, &errors);
    assert_eq!(std::fs::read(&errors).expect("read errors"), listed);
    assert!(absent(&out2) && absent(&file("out2.csv.partial")));

    // A link planted at the output's name, or at its .partial, is not
    // followed: its target keeps its content and its mode.
    let victim = file("someone-elses.txt");
    std::fs::write(&victim, "not yours").expect("write victim");
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let linked = file("linked.csv");
    symlink(&victim, &linked).expect("symlink");
    refused_as_existing(&bulk("tokenize", &input, &linked, None), &linked);
    let linked_partial = file("linked2.csv.partial");
    symlink(&victim, &linked_partial).expect("symlink");
    refused_as_existing(
        &bulk("tokenize", &input, &file("linked2.csv"), None),
        &linked_partial,
    );
    let linked_errors = file("linked-errors.csv");
    symlink(&victim, &linked_errors).expect("symlink");
    refused_as_existing(
        &bulk("tokenize", &input, &file("out3.csv"), Some(&linked_errors)),
        &linked_errors,
    );
    assert!(absent(&file("out3.csv.partial")));
    assert_eq!(
        std::fs::read_to_string(&victim).expect("read victim"),
        "not yours"
    );
    assert_eq!(mode(&victim), 0o644);
    // A dangling link would have the file it names created.
    let nowhere = file("nowhere.csv");
    let dangling = file("dangling.csv");
    symlink(&nowhere, &dangling).expect("symlink");
    refused_as_existing(&bulk("tokenize", &input, &dangling, None), &dangling);
    assert!(absent(&nowhere));

    // The audit export.
    let audit = file("audit.ndjson");
    let admin_key = vault.admin_key.as_str();
    let export = client(
        &endpoint,
        admin_key,
        &["audit", "export", "-o", s(&audit)],
        &[],
    );
    assert!(export.status.success(), "{}", stderr(&export));
    assert_eq!(mode(&audit), 0o600, "audit export");
    let exported = std::fs::read(&audit).expect("read export");
    assert!(!exported.is_empty());
    let again = client(
        &endpoint,
        admin_key,
        &["audit", "export", "-o", s(&audit)],
        &[],
    );
    refused_as_existing(&again, &audit);
    assert_eq!(std::fs::read(&audit).expect("read export"), exported);
    let linked_audit = file("linked-audit.ndjson");
    symlink(&victim, &linked_audit).expect("symlink");
    let through_link = client(
        &endpoint,
        admin_key,
        &["audit", "export", "-o", s(&linked_audit)],
        &[],
    );
    refused_as_existing(&through_link, &linked_audit);
    assert_eq!(
        std::fs::read_to_string(&victim).expect("read victim"),
        "not yours"
    );
}
