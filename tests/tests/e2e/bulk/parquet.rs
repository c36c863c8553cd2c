//! Parquet through `phivault-client bulk --format parquet`, with pyarrow
//! writing the input and reading the output: three row groups, a
//! dictionary column, nulls and empty strings, nested columns, per-column
//! codecs, a page index and the schema's metadata.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Setup, client, s};

/// pyarrow's interpreter: `make test` installs it (`make python-env`).
fn python() -> Option<PathBuf> {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/python/bin/python");
    if python.exists() {
        return Some(python);
    }
    eprintln!(
        "SKIPPED: the Parquet test needs pyarrow in target/python; `make test` installs it (make python-env)"
    );
    None
}

fn check(python: &Path, args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/bulk/parquet_check.py");
    let output = Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .expect("python");
    assert!(
        output.status.success(),
        "pyarrow disagrees ({}): {}",
        args[0],
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_mapped_columns_change_and_the_other_chunks_are_copied_byte_for_byte() {
    let Some(python) = python() else {
        return;
    };
    let setup = Setup::new(&["tokenize:*", "detokenize:*"]).await;
    let (server, key) = (&setup.server, &setup.key);
    let (input, tokenized, back) = setup.files("records", "parquet");
    check(&python, &["make", s(&input)]);
    let maps = [
        "--map",
        "ssn=ssn",
        "--map",
        "name=name",
        "--map",
        "email=email",
        "--map",
        "mrn=mrn",
    ];
    let errors = setup.dir.path().join("errors.csv");
    let mut args = vec![
        "bulk",
        "tokenize",
        s(&input),
        "-o",
        s(&tokenized),
        "--errors",
        s(&errors),
    ];
    args.extend_from_slice(&maps);
    let output = client(server, key, &args);
    let said = String::from_utf8_lossy(&output.stderr).into_owned();
    // One SSN is not an SSN: the run completes, naming its row.
    assert_eq!(output.status.code(), Some(3), "{said}");
    assert!(said.contains("tokenized 30000 rows"), "{said}");
    let report = std::fs::read_to_string(&errors).expect("errors file");
    assert!(
        report.contains("15001,,ssn,ssn,INVALID_ARGUMENT"),
        "{report}"
    );
    assert!(!report.contains("12-345"), "no value in the errors file");
    check(&python, &["tokenized", s(&input), s(&tokenized)]);

    let mut args = vec!["bulk", "detokenize", s(&tokenized), "-o", s(&back)];
    args.extend_from_slice(&maps);
    let output = client(server, key, &args);
    assert_eq!(
        output.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(check(&python, &["same", s(&input), s(&back)]), "same");

    // What cannot work is refused before anything is sent.
    for (extra, says) in [
        (vec!["--map", "amount=text"], "holds Float64, not strings"),
        (vec!["--map", "nope=text"], "no such column"),
        (
            vec!["--map", "ssn=ssn", "--on-error", "drop-row"],
            "drop-row cannot be used on Parquet",
        ),
    ] {
        let out = setup.dir.path().join("refused.parquet");
        let mut args = vec!["bulk", "tokenize", s(&input), "-o", s(&out)];
        args.extend_from_slice(&extra);
        let output = client(server, key, &args);
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && said.contains(says), "{said}");
        assert!(!out.exists(), "a refused run leaves no file");
    }
    let output = client(
        server,
        key,
        &[
            "bulk", "tokenize", "-", "--format", "parquet", "--map", "ssn=ssn",
        ],
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("not standard input"));
}
