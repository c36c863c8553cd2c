//! The `phivault.v1` API's policy, checked by buf (pinned in tools/): the
//! protos pass lint, nothing breaks what was released
//! (`proto/phivault-v1.image.json`), and the check does catch a breaking
//! change. See COMPATIBILITY.md. And the HTTP/JSON API's OpenAPI document
//! (`vault/openapi.json`, kept equal to what the server serves by a test of
//! its own) is valid OpenAPI 3.1 to an independent validator.

use std::path::{Path, PathBuf};
use std::process::Output;

use phivault_tests::said;

fn proto_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto")
}

/// `buf` with `args` in `dir`, or `None` (and a SKIPPED line) where it is
/// not installed.
fn buf(dir: &Path, args: &[&str]) -> Option<Output> {
    phivault_tests::run_tool(
        "buf",
        args,
        dir,
        "install tools/package.json (`make tools`) and put tools/node_modules/.bin on PATH (`make test` does)",
    )
}

#[test]
fn the_protos_pass_lint_and_break_nothing_released() {
    let dir = proto_dir();
    let Some(lint) = buf(&dir, &["lint"]) else {
        return;
    };
    assert!(lint.status.success(), "buf lint:\n{}", said(&lint));
    let breaking =
        buf(&dir, &["breaking", "--against", "phivault-v1.image.json"]).expect("buf ran once");
    assert!(
        breaking.status.success(),
        "a breaking change to phivault.v1 (COMPATIBILITY.md):\n{}",
        said(&breaking)
    );
}

#[test]
fn removing_a_field_or_renaming_an_rpc_is_caught() {
    let dir = proto_dir();
    let copy = tempfile::tempdir().expect("tempdir");
    for file in ["buf.yaml", "phivault-v1.image.json"] {
        std::fs::copy(dir.join(file), copy.path().join(file)).expect("copy");
    }
    let v1 = copy.path().join("phivault/v1");
    std::fs::create_dir_all(&v1).expect("dirs");
    let tokenizer =
        std::fs::read_to_string(dir.join("phivault/v1/tokenizer.proto")).expect("tokenizer.proto");
    let admin = std::fs::read_to_string(dir.join("phivault/v1/admin.proto")).expect("admin.proto");
    std::fs::write(v1.join("admin.proto"), &admin).expect("write");
    for (what, rule, changed) in [
        (
            "a removed field",
            "FIELD_NO_DELETE",
            tokenizer.replacen("bool masked = ", "// bool masked = ", 1),
        ),
        (
            "a renamed RPC",
            "RPC_NO_DELETE",
            tokenizer.replacen("rpc Detokenize(", "rpc Reveal(", 1),
        ),
    ] {
        assert_ne!(changed, tokenizer, "{what}: the edit must change the file");
        std::fs::write(v1.join("tokenizer.proto"), &changed).expect("write");
        let Some(breaking) = buf(
            copy.path(),
            &[
                "breaking",
                "--against",
                "phivault-v1.image.json",
                "--error-format",
                "json",
            ],
        ) else {
            return;
        };
        // Refused for the rule that should catch it, not for any failure.
        assert!(
            !breaking.status.success() && said(&breaking).contains(&format!("\"type\":\"{rule}\"")),
            "{what} was not refused as {rule}:\n{}",
            said(&breaking)
        );
    }
}

#[test]
fn the_http_apis_openapi_document_is_valid_openapi_3_1() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../vault");
    let Some(output) = phivault_tests::run_tool(
        "openapi-spec-validator",
        &["openapi.json"],
        &dir,
        "install tools/requirements.txt into a virtual environment on PATH (`make test` does)",
    ) else {
        return;
    };
    assert!(output.status.success(), "{}", said(&output));
    let text = std::fs::read_to_string(dir.join("openapi.json")).expect("vault/openapi.json");
    let document: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(document["openapi"], "3.1.0");
}
