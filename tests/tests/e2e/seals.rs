//! Seals that unseal without a passphrase: the PKCS#11 seal against a real
//! SoftHSM2 token (init, serve, restart, a wrong PIN, a missing key, rekey
//! between a passphrase and the HSM both ways), and a master key split into
//! key shares.

use std::path::{Path, PathBuf};
use std::process::Command;

use phivault_tests::{Server, VaultDir};

use super::{client_with, connect, texts};

const MODULES: [&str; 2] = [
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
];
const PIN: &str = "4096-4711";

/// A SoftHSM2 token of its own, in a temporary directory: its
/// configuration file is what the vault's processes get in SOFTHSM2_CONF.
struct SoftHsm {
    dir: tempfile::TempDir,
    module: PathBuf,
    /// Its configuration file, for SOFTHSM2_CONF.
    conf: String,
}

impl SoftHsm {
    /// A new token labelled `phivault` with user PIN [`PIN`]; `None` (and a
    /// SKIPPED line) where SoftHSM2 is not installed.
    fn start() -> Option<Self> {
        let Some(module) = MODULES.iter().map(PathBuf::from).find(|m| m.exists()) else {
            eprintln!("SKIPPED: SoftHSM2 is not installed; install the `softhsm2` package");
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("tokens")).expect("token dir");
        std::fs::write(
            dir.path().join("softhsm2.conf"),
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                dir.path().join("tokens").display()
            ),
        )
        .expect("conf");
        let conf = dir
            .path()
            .join("softhsm2.conf")
            .to_str()
            .expect("utf-8")
            .to_owned();
        let hsm = Self { dir, module, conf };
        let made = Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", "phivault"])
            .args(["--pin", PIN, "--so-pin", "so-pin-1234"])
            .env("SOFTHSM2_CONF", &hsm.conf)
            .output()
            .expect("softhsm2-util");
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        hsm.pin_file("pin", PIN);
        Some(hsm)
    }

    /// What the vault's processes need to find the token.
    fn env(&self) -> [(&str, &str); 1] {
        [("SOFTHSM2_CONF", self.conf.as_str())]
    }

    /// Writes `pin` to a 0600 file named `name`.
    fn pin_file(&self, name: &str, pin: &str) -> PathBuf {
        private_file(&self.dir.path().join(name), format!("{pin}\n").as_bytes())
    }

    /// The URI of key `key` on the token, logging in with the PIN in
    /// `pin_file`.
    fn uri(&self, key: &str, pin_file: &Path) -> String {
        format!(
            "pkcs11:token=phivault;object={key}?module-path={}&pin-source=file:{}",
            self.module.display(),
            pin_file.display()
        )
    }

    fn good_uri(&self) -> String {
        self.uri("phivault-kek", &self.dir.path().join("pin"))
    }
}

/// Writes `bytes` to `path`, readable by its owner only (as serve demands
/// of secret files).
fn private_file(path: &Path, bytes: &[u8]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, bytes).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path.to_path_buf()
}

/// Serves `vault`, makes a client that may tokenize and reveal everywhere,
/// and tokenizes `value` in `namespace`: its tokens and the client's key.
async fn tokenize_one(vault: &VaultDir, namespace: &str, value: &str) -> (Vec<String>, String) {
    let server = Server::start(vault, &[]);
    let admin = connect(&server, Some(&vault.admin_key)).await;
    let (pipeline, key) =
        client_with(&admin, &server, "pipeline", &["tokenize:*", "detokenize:*"]).await;
    let tokens = texts(
        pipeline
            .tokenize(namespace, vec![value.to_owned()])
            .await
            .expect("tokenize"),
    );
    server.stop();
    (tokens, key)
}

/// Serves `vault` and checks that `tokens` of `namespace` reveal `value`
/// to the client holding `key`; the server's log.
async fn reveals(
    vault: &VaultDir,
    key: &str,
    namespace: &str,
    tokens: &[String],
    value: &str,
) -> String {
    let server = Server::start(vault, &[]);
    let client = connect(&server, Some(key)).await;
    let revealed = texts(
        client
            .detokenize(namespace, tokens.to_vec(), false)
            .await
            .expect("detokenize"),
    );
    assert_eq!(revealed, [value]);
    drop(client);
    server.stop()
}

/// `phivault serve` with `seal`, expected to refuse to start: its stderr.
fn serve_refused(vault: &VaultDir, seal: &[String]) -> String {
    let output = vault
        .command("serve")
        .args(seal)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .expect("run serve");
    assert!(!output.status.success(), "serve started with {seal:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn hsm_args(uri: &str) -> Vec<String> {
    vec!["--hsm".into(), uri.into()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hsm_unseals_the_vault_unattended_and_refuses_a_wrong_pin_or_key() {
    let Some(hsm) = SoftHsm::start() else {
        return;
    };
    let uri = hsm.good_uri();
    let env = hsm.env();
    let vault = VaultDir::init_sealed(
        |_| vec!["--hsm".into(), uri.clone(), "--create-hsm-key".into()],
        hsm_args(&uri),
        &env,
    );

    let (tokens, pipeline_key) = tokenize_one(&vault, "ssn", "123-45-6789").await;

    // A restart unseals from the HSM again, with nobody typing anything.
    let log = reveals(&vault, &pipeline_key, "ssn", &tokens, "123-45-6789").await;
    assert!(!log.contains(PIN), "{log}");

    // A wrong PIN: refused, the PIN never shown. (SoftHSM2 counts wrong
    // tries; one is far from locking the token.)
    let wrong = hsm.pin_file("wrong-pin", "0000-0000");
    let refused = serve_refused(&vault, &hsm_args(&hsm.uri("phivault-kek", &wrong)));
    assert!(refused.contains("wrong PIN"), "{refused}");
    assert!(
        !refused.contains("0000-0000") && !refused.contains(PIN),
        "{refused}"
    );

    // A key the token does not have.
    let refused = serve_refused(
        &vault,
        &hsm_args(&hsm.uri("not-there", &hsm.dir.path().join("pin"))),
    );
    assert!(refused.contains("no AES key found"), "{refused}");
    assert!(refused.contains("not-there"), "{refused}");

    // Another key of the token (one made for another vault): it does not
    // open this vault's sealed secret.
    let other = tempfile::tempdir().expect("tempdir");
    let other_uri = hsm.uri("other-kek", &hsm.dir.path().join("pin"));
    let made = Command::new(phivault_tests::binary("phivault"))
        .arg("init")
        .args([
            "--data-dir",
            other.path().join("data").to_str().expect("utf-8"),
        ])
        .args(["--hsm", &other_uri, "--create-hsm-key"])
        .args([
            "--admin-key-file",
            other.path().join("admin.key").to_str().expect("utf-8"),
        ])
        .envs(hsm.env())
        .output()
        .expect("init another vault");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    assert!(String::from_utf8_lossy(&made.stdout).contains("made a new AES-256 key"));
    let refused = serve_refused(&vault, &hsm_args(&other_uri));
    assert!(
        refused.contains("not the key the vault was sealed with"),
        "{refused}"
    );

    // The wrong kind of key says so.
    let key = private_file(&vault.root.path().join("some.key"), &[7u8; 32]);
    let refused = serve_refused(
        &vault,
        &[
            "--master-key-file".into(),
            key.to_str().expect("utf-8").into(),
        ],
    );
    assert!(refused.contains("sealed with an HSM key"), "{refused}");

    // The PIN inside the URI is refused before anything could print it.
    let refused = serve_refused(
        &vault,
        &hsm_args(&format!(
            "pkcs11:token=phivault;object=phivault-kek;pin-value={PIN}?module-path={}",
            hsm.module.display()
        )),
    );
    assert!(refused.contains("pin-source"), "{refused}");
    assert!(!refused.contains(PIN), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_moves_a_vault_from_a_passphrase_to_an_hsm_and_back() {
    let Some(hsm) = SoftHsm::start() else {
        return;
    };
    let uri = hsm.good_uri();
    let env = hsm.env();
    let passphrase_args = |root: &Path| {
        let path = private_file(
            &root.join("passphrase"),
            b"the first passphrase of this vault\n",
        );
        vec![
            "--passphrase-file".to_owned(),
            path.to_str().expect("utf-8").to_owned(),
        ]
    };
    let mut vault = VaultDir::init_sealed(passphrase_args, Vec::new(), &env);
    let by_passphrase = passphrase_args(vault.root.path());
    vault.reseal(by_passphrase.clone());
    let (tokens, pipeline_key) = tokenize_one(&vault, "mrn", "MRN00424242").await;

    // Passphrase → HSM, the key made on the way.
    let rekeyed = vault
        .command("rekey")
        .args(&by_passphrase)
        .args(["--new-hsm", &uri, "--create-new-hsm-key"])
        .output()
        .expect("rekey");
    assert!(
        rekeyed.status.success(),
        "{}",
        String::from_utf8_lossy(&rekeyed.stderr)
    );
    let refused = serve_refused(&vault, &by_passphrase);
    assert!(refused.contains("sealed with an HSM key"), "{refused}");
    vault.reseal(hsm_args(&uri));
    reveals(&vault, &pipeline_key, "mrn", &tokens, "MRN00424242").await;

    // HSM → a new passphrase.
    let new_passphrase = private_file(
        &vault.root.path().join("new-passphrase"),
        b"a second passphrase, after the HSM\n",
    );
    let rekeyed = vault
        .command("rekey")
        .args(hsm_args(&uri))
        .args([
            "--new-passphrase-file",
            new_passphrase.to_str().expect("utf-8"),
        ])
        .output()
        .expect("rekey");
    assert!(
        rekeyed.status.success(),
        "{}",
        String::from_utf8_lossy(&rekeyed.stderr)
    );
    let refused = serve_refused(&vault, &hsm_args(&uri));
    assert!(refused.contains("sealed with a passphrase"), "{refused}");
    vault.reseal(vec![
        "--passphrase-file".into(),
        new_passphrase.to_str().expect("utf-8").into(),
    ]);
    reveals(&vault, &pipeline_key, "mrn", &tokens, "MRN00424242").await;
}

/// The share files `init --key-shares` wrote, in order.
fn share_files(dir: &Path, count: usize) -> Vec<String> {
    (1..=count)
        .map(|i| {
            dir.join(format!("share-{i}.txt"))
                .to_str()
                .expect("utf-8")
                .to_owned()
        })
        .collect()
}

fn share_args(files: &[String]) -> Vec<String> {
    files
        .iter()
        .flat_map(|f| ["--key-share".to_owned(), f.clone()])
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_split_into_shares_unseals_with_any_three_of_five() {
    let shares_dir = tempfile::tempdir().expect("tempdir");
    let dir = shares_dir.path().join("shares");
    let dir_arg = dir.to_str().expect("utf-8").to_owned();
    let files = share_files(&dir, 5);
    let vault = VaultDir::init_sealed(
        |_| {
            vec![
                "--key-shares".into(),
                "5".into(),
                "--key-threshold".into(),
                "3".into(),
                "--key-share-dir".into(),
                dir_arg.clone(),
            ]
        },
        share_args(&files[..3]),
        &[],
    );
    use std::os::unix::fs::PermissionsExt as _;
    for file in &files {
        let mode = std::fs::metadata(file)
            .expect("share file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    let (tokens, pipeline_key) = tokenize_one(&vault, "ssn", "078-05-1120").await;

    // Another three of the five.
    let other_three = share_args(&[files[4].clone(), files[1].clone(), files[3].clone()]);
    let status = vault
        .command("status")
        .args(&other_three)
        .output()
        .expect("status");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );

    // Two are not enough; a mistyped one is named, never shown.
    let refused = serve_refused(&vault, &share_args(&files[..2]));
    assert!(refused.contains("this key needs 3"), "{refused}");
    let typo_file = shares_dir.path().join("typo.txt");
    let mut typo = std::fs::read_to_string(&files[2]).expect("share");
    let at = typo.trim_end().len() - 20;
    let flipped = if &typo[at..=at] == "a" { "b" } else { "a" };
    typo.replace_range(at..=at, flipped);
    private_file(&typo_file, typo.as_bytes());
    let mut given = files[..2].to_vec();
    given.push(typo_file.to_str().expect("utf-8").into());
    let refused = serve_refused(&vault, &share_args(&given));
    assert!(refused.contains("key share 3 is mistyped"), "{refused}");
    assert!(!refused.contains(typo.trim()), "{refused}");

    // Holders typing their shares in turn at one terminal: `script` gives
    // the command a terminal and types what it is fed.
    let typed: String = files[2..]
        .iter()
        .map(|f| std::fs::read_to_string(f).expect("share"))
        .collect();
    let quoted = |arg: &str| format!("'{}'", arg.replace('\'', "'\\''"));
    let command = format!(
        "{} status {} --key-shares-prompt",
        quoted(phivault_tests::binary("phivault").to_str().expect("utf-8")),
        vault
            .store_args()
            .iter()
            .map(|a| quoted(a))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut script = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("PHIVAULT_LOG", "warn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("script (util-linux)");
    {
        use std::io::Write as _;
        let mut stdin = script.stdin.take().expect("stdin");
        stdin.write_all(typed.as_bytes()).expect("type the shares");
    }
    let prompted = script.wait_with_output().expect("status through script");
    let said = String::from_utf8_lossy(&prompted.stdout);
    assert!(prompted.status.success(), "{said}");
    assert!(said.contains("key share 2 of 3"), "{said}");
    assert!(said.contains("clients"), "{said}");

    // Rekey from the shares to a passphrase: the tokens stay.
    let passphrase = private_file(
        &vault.root.path().join("passphrase"),
        b"a passphrase after the key holders\n",
    );
    let rekeyed = vault
        .command("rekey")
        .args(share_args(&files[..3]))
        .args(["--new-passphrase-file", passphrase.to_str().expect("utf-8")])
        .output()
        .expect("rekey");
    assert!(
        rekeyed.status.success(),
        "{}",
        String::from_utf8_lossy(&rekeyed.stderr)
    );
    let mut vault = vault;
    vault.reseal(vec![
        "--passphrase-file".into(),
        passphrase.to_str().expect("utf-8").into(),
    ]);
    reveals(&vault, &pipeline_key, "ssn", &tokens, "078-05-1120").await;
}
