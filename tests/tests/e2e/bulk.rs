//! `phivault-client bulk` against the real server: CSV, NDJSON, FHIR and
//! HL7 v2 round trips, failed cells, and a server restarted under a run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use phivault_tests::{Server, VaultDir};

use super::{client_with, connect, wait_for_growth};

mod fhir;
mod hl7;
mod parquet;

/// A deterministic generator (SplitMix64), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Draws a fresh value or, 30% of the time, one drawn before.
struct Column {
    seen: Vec<String>,
}

impl Column {
    fn new() -> Self {
        Self { seen: Vec::new() }
    }

    fn draw(&mut self, rng: &mut Rng, fresh: impl FnOnce(&mut Rng) -> String) -> String {
        if !self.seen.is_empty() && rng.chance(30) {
            return self.seen[rng.below(self.seen.len() as u64) as usize].clone();
        }
        let value = fresh(rng);
        self.seen.push(value.clone());
        value
    }
}

/// Writes a CSV field, quoted when it must be or, at random, when it need
/// not be.
fn field(out: &mut String, value: &str, rng: &mut Rng) {
    if value.contains([',', '"', '\n', '\r']) || rng.chance(10) {
        out.push('"');
        out.push_str(&value.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(value);
    }
}

const GIVEN: &[&str] = &[
    "Zoë",
    "José",
    "Jane",
    "Łukasz",
    "Siobhán",
    "Ana María",
    "Renée",
    "Jean-Luc",
    "Ngọc",
    "Ahmed",
];
const FAMILY: &[&str] = &[
    "O'Brien",
    "Núñez",
    "Doe",
    "Müller-Lüdenscheidt",
    "Smith",
    "St. John",
    "Kowalski",
    "Åberg",
];

const CSV_MAPS: &[&str] = &[
    "--map",
    "SSN=ssn",
    "--map",
    "Full Name=name",
    "--map",
    "phone=phone",
    "--map",
    "e-mail=email",
    "--map",
    "date of birth=dob",
    "--map",
    "home address=text",
];

/// A patient extract with quoting, line breaks inside cells, commas, UTF-8
/// names, empty cells and repeated values.
fn patient_csv(rows: usize) -> String {
    let mut rng = Rng(0x5eed);
    let (mut ssn, mut name, mut phone, mut email, mut dob, mut address) = (
        Column::new(),
        Column::new(),
        Column::new(),
        Column::new(),
        Column::new(),
        Column::new(),
    );
    let mut out = String::from(
        "id,SSN,Full Name,phone,e-mail,date of birth,home address,\"notes, free\"\r\n",
    );
    for i in 0..rows {
        let mut cells = vec![i.to_string()];
        cells.push(if rng.chance(5) {
            String::new()
        } else {
            ssn.draw(&mut rng, |r| {
                let (a, g, s) = (1 + r.below(665), 1 + r.below(99), 1 + r.below(9999));
                if r.chance(50) {
                    format!("{a:03}-{g:02}-{s:04}")
                } else {
                    format!("{a:03}{g:02}{s:04}")
                }
            })
        });
        cells.push(name.draw(&mut rng, |r| {
            let given = GIVEN[r.below(GIVEN.len() as u64) as usize];
            let family = FAMILY[r.below(FAMILY.len() as u64) as usize];
            let tag: String = (0..4)
                .map(|_| char::from(b'a' + r.below(26) as u8))
                .collect();
            if r.chance(20) {
                format!("{family}{tag}, {given}")
            } else {
                format!("{given} {family}{tag}")
            }
        }));
        cells.push(if rng.chance(5) {
            String::new()
        } else {
            phone.draw(&mut rng, |r| {
                format!(
                    "+1 ({:03}) {:03}-{:04}",
                    200 + r.below(800),
                    r.below(1000),
                    r.below(10_000)
                )
            })
        });
        cells.push(email.draw(&mut rng, |r| {
            format!("p{}.{}@example.org", r.below(1_000_000), r.below(1000))
        }));
        cells.push(dob.draw(&mut rng, |r| {
            format!(
                "{}-{:02}-{:02}",
                1920 + r.below(100),
                1 + r.below(12),
                1 + r.below(28)
            )
        }));
        cells.push(address.draw(&mut rng, |r| {
            format!(
                "{} Main St, Apt {}\n{}",
                r.below(999),
                r.below(99),
                if r.chance(50) { "Boston" } else { "Köln" }
            )
        }));
        cells.push(match rng.below(4) {
            0 => String::new(),
            1 => "says \"fine\", thanks".into(),
            2 => "line one\r\nline two".into(),
            _ => "ok".into(),
        });
        for (j, cell) in cells.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            field(&mut out, cell, &mut rng);
        }
        out.push_str("\r\n");
    }
    out
}

/// Runs `phivault-client` with `args` against `server`.
fn client(server: &Server, key: &str, args: &[&str]) -> Output {
    Command::new(phivault_tests::binary("phivault-client"))
        .args(["--endpoint", &server.endpoint()])
        .args(args)
        .env("PHIVAULT_API_KEY", key)
        .stdin(Stdio::null())
        .output()
        .expect("run phivault-client")
}

fn succeeded(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    stderr
}

fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// A vault served on a free port, a client `etl` holding `scopes`, and a
/// scratch folder.
struct Setup {
    vault: VaultDir,
    server: Server,
    admin: phivault_client::Client,
    key: String,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn new(scopes: &[&str]) -> Self {
        let vault = VaultDir::init();
        let server = Server::start(&vault, &[]);
        let admin = connect(&server, Some(&vault.admin_key)).await;
        let (_, key) = client_with(&admin, &server, "etl", scopes).await;
        let dir = tempfile::tempdir().expect("tempdir");
        Self {
            vault,
            server,
            admin,
            key,
            dir,
        }
    }

    /// `STEM.EXT`, `STEM.tok.EXT` and `STEM.back.EXT` in the scratch folder.
    fn files(&self, stem: &str, ext: &str) -> (PathBuf, PathBuf, PathBuf) {
        let dir = self.dir.path();
        (
            path(dir, &format!("{stem}.{ext}")),
            path(dir, &format!("{stem}.tok.{ext}")),
            path(dir, &format!("{stem}.back.{ext}")),
        )
    }
}

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

fn records(bytes: &[u8]) -> Vec<csv::StringRecord> {
    csv::Reader::from_reader(bytes)
        .records()
        .collect::<Result<_, _>>()
        .expect("valid CSV")
}

/// Checks that `token` keeps the shape of `value` as namespace `ns` says.
fn shaped(ns: &str, value: &str, token: &str) -> bool {
    let classes = |text: &str| -> Vec<char> {
        text.chars()
            .map(|c| match c {
                '0'..='9' => 'd',
                c if c.is_alphabetic() => 'a',
                c => c,
            })
            .collect()
    };
    match ns {
        "ssn" => {
            let digits: String = token.chars().filter(char::is_ascii_digit).collect();
            classes(token) == classes(value) && digits.starts_with('9')
        }
        "phone" | "name" => classes(token) == classes(value),
        "email" => token.split_once('@').map(|(_, d)| d) == value.split_once('@').map(|(_, d)| d),
        "dob" => {
            classes(token) == classes(value)
                && token[..4]
                    .parse::<u32>()
                    .is_ok_and(|y| (2200..3000).contains(&y))
        }
        "text" => token.starts_with("tok_"),
        _ => false,
    }
}

/// Tokens must be a function of (namespace, value), one-to-one, never the
/// value itself, and of the value's format.
fn check_tokens(pairs: &[(&str, String, String)]) {
    let mut forward: HashMap<(&str, &str), &str> = HashMap::new();
    let mut backward: HashMap<(&str, &str), &str> = HashMap::new();
    for (ns, value, token) in pairs {
        if value.is_empty() {
            assert!(token.is_empty(), "an empty {ns} cell stays empty");
            continue;
        }
        assert_ne!(value, token, "{ns}: a token equals its value");
        assert!(
            shaped(ns, value, token),
            "{ns}: a token does not keep the value's format"
        );
        assert_eq!(
            *forward.entry((ns, value)).or_insert(token),
            token.as_str(),
            "{ns}: one value, two tokens"
        );
        assert_eq!(
            *backward.entry((ns, token)).or_insert(value),
            value.as_str(),
            "{ns}: one token, two values"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100k_row_csv_round_trips_byte_for_byte() {
    let setup = Setup::new(&["tokenize:*", "detokenize:*"]).await;
    let (server, key) = (&setup.server, &setup.key);
    let (input, tokenized, back) = setup.files("patients", "csv");
    let original = patient_csv(100_000);
    std::fs::write(&input, &original).expect("write input");

    // Progress for a log pipeline, as JSON lines, often enough to see some.
    let mut args = vec![
        "bulk",
        "tokenize",
        s(&input),
        "-o",
        s(&tokenized),
        "--progress",
        "json",
        "--progress-every",
        "100ms",
    ];
    args.extend_from_slice(CSV_MAPS);
    let report = succeeded(&client(server, key, &args));
    assert!(report.contains("tokenized 100000 rows"), "{report}");
    assert!(!path(setup.dir.path(), "patients.tok.csv.partial").exists());
    let progress: Vec<serde_json::Value> = report
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("progress").is_some())
        .collect();
    assert!(!progress.is_empty(), "no JSON progress line: {report}");
    let rows: Vec<u64> = progress
        .iter()
        .map(|v| v["progress"]["rows"].as_u64().expect("rows"))
        .collect();
    assert!(rows.windows(2).all(|w| w[0] <= w[1]), "{rows:?}");
    assert_eq!(
        progress[0]["progress"]["input_bytes"].as_u64(),
        Some(original.len() as u64)
    );

    let before = records(original.as_bytes());
    let after = records(&std::fs::read(&tokenized).expect("read tokenized"));
    assert_eq!(before.len(), 100_000);
    assert_eq!(after.len(), before.len(), "every row once, in order");
    let mapped = [
        (1, "ssn"),
        (2, "name"),
        (3, "phone"),
        (4, "email"),
        (5, "dob"),
        (6, "text"),
    ];
    let mut pairs = Vec::new();
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(
            (&b[0], &b[7]),
            (&a[0], &a[7]),
            "untouched columns pass through"
        );
        for (i, ns) in mapped {
            pairs.push((ns, b[i].to_owned(), a[i].to_owned()));
        }
    }
    check_tokens(&pairs);
    let repeated = pairs.len()
        - pairs
            .iter()
            .map(|(ns, v, _)| (*ns, v.as_str()))
            .collect::<std::collections::HashSet<_>>()
            .len();
    assert!(repeated > 100_000, "the input repeats values ({repeated})");

    let mut args = vec!["bulk", "detokenize", s(&tokenized), "-o", s(&back)];
    args.extend_from_slice(CSV_MAPS);
    succeeded(&client(server, key, &args));
    assert!(
        std::fs::read(&back).expect("read back") == original.as_bytes(),
        "tokenize then detokenize gives back the input byte for byte"
    );
}

fn json_line(rng: &mut Rng, ssn: &mut Column, name: &mut Column, i: u64) -> String {
    let ssn = ssn.draw(rng, |r| {
        format!(
            "{:03}-{:02}-{:04}",
            1 + r.below(665),
            1 + r.below(99),
            1 + r.below(9999)
        )
    });
    let mut names = Vec::new();
    for _ in 0..rng.below(3) {
        names.push(name.draw(rng, |r| {
            let given = GIVEN[r.below(GIVEN.len() as u64) as usize];
            format!("{given}{}", char::from(b'a' + r.below(26) as u8))
        }));
    }
    let names: Vec<String> = names
        .iter()
        .map(|n| serde_json::to_string(n).expect("string"))
        .collect();
    // Spacing, key order and number spellings vary, as they do in the wild.
    match i % 3 {
        0 => format!(
            r#"{{"id":{i},"patient":{{"ssn":"{ssn}","names":[{}]}},"score":1.50,"note":"caf\u00e9 \"ok\""}}"#,
            names.join(",")
        ),
        1 => format!(
            r#"{{ "patient" : {{ "names" : [ {} ], "ssn" : "{ssn}" }}, "id" : {i}, "score": 2e3, "contacts": [{{"email": "c{i}@example.org"}}, {{"phone": "x"}}] }}"#,
            names.join(" , ")
        ),
        _ => format!(r#"{{"id":{i},"patient":{{"ssn":null,"names":[]}},"tags":["a","b"]}}"#),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_round_trips_and_touches_only_the_mapped_paths() {
    let setup = Setup::new(&["tokenize:*", "detokenize:*"]).await;
    let (server, key) = (&setup.server, &setup.key);
    let (input, tokenized, back) = setup.files("events", "ndjson");
    let mut rng = Rng(7);
    let (mut ssn, mut name) = (Column::new(), Column::new());
    let mut original = String::new();
    for i in 0..20_000 {
        original.push_str(&json_line(&mut rng, &mut ssn, &mut name, i));
        original.push('\n');
        if i % 5000 == 0 {
            original.push('\n');
        }
    }
    std::fs::write(&input, &original).expect("write input");
    let maps = [
        "--map",
        "/patient/ssn=ssn",
        "--map",
        "/patient/names/*=name",
        "--map",
        "/contacts/*/email=email",
    ];
    let mut args = vec!["bulk", "tokenize", s(&input), "-o", s(&tokenized)];
    args.extend_from_slice(&maps);
    succeeded(&client(server, key, &args));

    let tokenized_text = std::fs::read_to_string(&tokenized).expect("read");
    assert_eq!(tokenized_text.lines().count(), original.lines().count());
    let mut pairs = Vec::new();
    for (b, a) in original.lines().zip(tokenized_text.lines()) {
        if b.is_empty() {
            assert!(a.is_empty());
            continue;
        }
        let (mut b, mut a): (serde_json::Value, serde_json::Value) = (
            serde_json::from_str(b).expect("json"),
            serde_json::from_str(a).expect("json"),
        );
        let mut take = |pointer: &str, ns: &'static str| {
            if let (Some(bv), Some(av)) = (b.pointer_mut(pointer), a.pointer_mut(pointer))
                && let (Some(bs), Some(as_)) = (bv.as_str(), av.as_str())
            {
                pairs.push((ns, bs.to_owned(), as_.to_owned()));
                *bv = serde_json::Value::Null;
                *av = serde_json::Value::Null;
            }
        };
        take("/patient/ssn", "ssn");
        for i in 0..3 {
            take(&format!("/patient/names/{i}"), "name");
            take(&format!("/contacts/{i}/email"), "email");
        }
        assert_eq!(b, a, "fields outside the mapped paths are untouched");
    }
    assert!(pairs.len() > 20_000);
    check_tokens(&pairs);

    let mut args = vec!["bulk", "detokenize", s(&tokenized), "-o", s(&back)];
    args.extend_from_slice(&maps);
    succeeded(&client(server, key, &args));
    assert!(
        std::fs::read(&back).expect("read back") == original.as_bytes(),
        "NDJSON comes back byte for byte"
    );

    // A masked reveal, through standard input and output, by a client that
    // may see no more than that.
    let (_, masked_key) = client_with(
        &setup.admin,
        server,
        "call-centre",
        &["detokenize-masked:ssn"],
    )
    .await;
    let output = Command::new(phivault_tests::binary("phivault-client"))
        .args(["--endpoint", &server.endpoint(), "bulk", "detokenize", "-"])
        .args([
            "--format",
            "ndjson",
            "--masked",
            "--map",
            "/patient/ssn=ssn",
        ])
        .env("PHIVAULT_API_KEY", &masked_key)
        .stdin(std::fs::File::open(&tokenized).expect("open tokenized"))
        .output()
        .expect("run phivault-client");
    succeeded(&output);
    let revealed = String::from_utf8(output.stdout).expect("utf-8");
    let mut masked = 0;
    for (b, m) in original.lines().zip(revealed.lines()) {
        let ssn = |line: &str| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| {
                    v.pointer("/patient/ssn")
                        .and_then(|s| s.as_str().map(str::to_owned))
                })
        };
        if let (Some(value), Some(shown)) = (ssn(b), ssn(m)) {
            assert_eq!(shown.len(), value.len());
            assert!(shown.ends_with(&value[value.len() - 4..]) && shown.starts_with('*'));
            masked += 1;
        }
    }
    assert!(masked > 10_000, "{masked} masked reveals");
}

/// A FHIR R4 Patient with every kind of identifier and telecom the profile
/// tells apart.
/// Its ZIP codes are 40 of the 100 in one 3-digit area: the `zip` namespace
/// keeps the first three digits, and a hundred distinct codes of one area
/// would leave no token free for the last ones.
fn patient(i: u64, rng: &mut Rng) -> serde_json::Value {
    let given = GIVEN[rng.below(GIVEN.len() as u64) as usize];
    let family = format!(
        "{}{}",
        FAMILY[rng.below(FAMILY.len() as u64) as usize],
        char::from(b'a' + (i % 26) as u8)
    );
    serde_json::json!({
        "resourceType": "Patient",
        "id": format!("p{i}"),
        "meta": { "profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"] },
        "identifier": [
            { "system": "http://hl7.org/fhir/sid/us-ssn", "value": format!("{:03}-{:02}-{:04}", 1 + i % 665, 1 + i % 99, 1 + i % 9999) },
            { "type": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR" }] },
              "system": "urn:oid:1.2.36.146.595.217.0.1", "value": format!("MRN-{i:06}") },
            { "system": "urn:example:insurer", "value": format!("INS{i}") }
        ],
        "active": true,
        "name": [{ "use": "official", "family": family, "given": [given, "Q."] }],
        "telecom": [
            { "system": "phone", "value": format!("(555) 010-{:04}", i % 10_000), "use": "home" },
            { "system": "email", "value": format!("patient{i}@example.org") },
            { "system": "url", "value": "https://example.org/portal" }
        ],
        "gender": "female",
        "birthDate": format!("{}-{:02}-{:02}", 1930 + i % 80, 1 + i % 12, 1 + i % 28),
        "address": [{ "line": [format!("{} Elm St", i % 500), "Apt 2"], "city": "Springfield", "state": "MA", "postalCode": format!("{:05}", 2100 + i % 40) }]
    })
}

fn observation(i: u64, display: &str) -> serde_json::Value {
    serde_json::json!({
        "resourceType": "Observation", "id": format!("o{i}"), "status": "final",
        "code": { "text": "Heart rate" },
        "subject": { "reference": format!("Patient/p{i}"), "display": display },
        "valueQuantity": { "value": 72, "unit": "beats/minute" }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_ndjson_and_bundles_follow_the_patient_profile() {
    let setup = Setup::new(&["tokenize:*", "detokenize:*"]).await;
    let (server, key, dir) = (&setup.server, &setup.key, &setup.dir);
    let mut rng = Rng(11);
    let mut ndjson = String::new();
    let mut entries = Vec::new();
    for i in 0..2_000 {
        let p = patient(i, &mut rng);
        let o = observation(i, p["name"][0]["family"].as_str().unwrap_or_default());
        ndjson.push_str(&format!("{p}\n{o}\n"));
        if i < 300 {
            entries.push(serde_json::json!({ "fullUrl": format!("urn:uuid:p{i}"), "resource": p }));
            entries.push(serde_json::json!({ "resource": o }));
        }
    }
    let bundle = serde_json::to_string_pretty(&serde_json::json!({
        "resourceType": "Bundle", "type": "collection", "entry": entries
    }))
    .expect("bundle");
    let profile = path(dir.path(), "profile.toml");
    std::fs::write(
        &profile,
        "# A path the built-in profile leaves.\n[[rule]]\nresource = \"Observation\"\npath = \"/code/text\"\nnamespace = \"text\"\n",
    )
    .expect("write profile");

    let run = |format: &str, input: &str, name: &str, extra: &[&str]| -> (Vec<u8>, Vec<u8>) {
        let (inp, tok, back) = (
            path(dir.path(), &format!("{name}.json")),
            path(dir.path(), &format!("{name}.tok.json")),
            path(dir.path(), &format!("{name}.back.json")),
        );
        std::fs::write(&inp, input).expect("write input");
        let errors = path(dir.path(), &format!("{name}.errors.csv"));
        let mut args = vec![
            "bulk",
            "tokenize",
            "--format",
            format,
            s(&inp),
            "-o",
            s(&tok),
            "--errors",
            s(&errors),
        ];
        args.extend_from_slice(extra);
        let output = client(server, key, &args);
        assert!(
            output.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(&errors).unwrap_or_default()
        );
        let mut args = vec![
            "bulk",
            "detokenize",
            "--format",
            format,
            s(&tok),
            "-o",
            s(&back),
        ];
        args.extend_from_slice(extra);
        succeeded(&client(server, key, &args));
        (
            std::fs::read(&tok).expect("read tokenized"),
            std::fs::read(&back).expect("read back"),
        )
    };
    let (tok_lines, back_lines) = run("fhir", &ndjson, "export", &[]);
    assert!(
        back_lines == ndjson.as_bytes(),
        "FHIR NDJSON comes back byte for byte"
    );
    let (tok_bundle, back_bundle) = run("fhir-bundle", &bundle, "bundle", &[]);
    assert!(
        back_bundle == bundle.as_bytes(),
        "a Bundle comes back byte for byte"
    );
    let (tok_profiled, _) = run("fhir", &ndjson, "profiled", &["--profile", s(&profile)]);

    let lines = |bytes: &[u8]| -> Vec<serde_json::Value> {
        std::str::from_utf8(bytes)
            .expect("utf-8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect()
    };
    let before = lines(ndjson.as_bytes());
    let after = lines(&tok_lines);
    let profiled = lines(&tok_profiled);
    let bundled: serde_json::Value = serde_json::from_slice(&tok_bundle).expect("bundle json");
    let at = |v: &serde_json::Value, p: &str| {
        v.pointer(p)
            .and_then(|x| x.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let mut pairs = Vec::new();
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        if b["resourceType"] == "Observation" {
            let patient_family = at(&after[i - 1], "/name/0/family");
            assert_eq!(
                at(a, "/subject/display"),
                patient_family,
                "a reference's display gets the token of the name it shows"
            );
            assert_eq!(at(b, "/code/text"), at(a, "/code/text"));
            assert_ne!(
                at(b, "/code/text"),
                at(&profiled[i], "/code/text"),
                "a profile rule adds a path"
            );
            continue;
        }
        for (p, ns) in [
            ("/identifier/0/value", "ssn"),
            ("/name/0/family", "name"),
            ("/name/0/given/0", "name"),
            ("/name/0/given/1", "name"),
            ("/telecom/0/value", "phone"),
            ("/telecom/1/value", "email"),
            ("/birthDate", "dob"),
            ("/address/0/line/0", "text"),
            ("/address/0/city", "text"),
        ] {
            pairs.push((ns, at(b, p), at(a, p)));
        }
        let mrn = (at(b, "/identifier/1/value"), at(a, "/identifier/1/value"));
        assert!(
            mrn.0 != mrn.1 && mrn.1.len() == mrn.0.len(),
            "the MR identifier is tokenized"
        );
        for (p, changed) in [
            ("/identifier/2/value", "an insurer's number"),
            ("/telecom/2/value", "a URL"),
        ] {
            assert_ne!(at(b, p), at(a, p), "{changed} is tokenized too");
        }
        for untouched in ["/id", "/address/0/state", "/gender", "/meta/profile/0"] {
            assert_eq!(
                at(b, untouched),
                at(a, untouched),
                "{untouched} is not PHI the profile names"
            );
        }
        assert_ne!(
            at(b, "/address/0/postalCode"),
            at(a, "/address/0/postalCode")
        );
        if i / 2 < 300 {
            let entry = format!("/entry/{i}/resource");
            assert_eq!(
                bundled.pointer(&entry),
                Some(a),
                "a Bundle entry gets the tokens its resource got in the export"
            );
        }
    }
    check_tokens(&pairs);
}

const INVALID_SSN: &str = "12-345-678";
const INVALID_DOB: &str = "1984-13-45";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_cells_are_listed_by_row_and_column_never_by_value() {
    let setup = Setup::new(&["tokenize:*"]).await;
    let (server, key, dir) = (&setup.server, &setup.key, &setup.dir);
    let input = path(dir.path(), "in.csv");
    let mut text = String::from("id,ssn,dob\n");
    for i in 0..1_000 {
        let ssn = if i % 250 == 7 {
            INVALID_SSN.to_owned()
        } else {
            format!("{:03}-45-{:04}", 1 + i % 600, i)
        };
        let dob = if i == 500 { INVALID_DOB } else { "1970-01-01" };
        text.push_str(&format!("{i},{ssn},{dob}\n"));
    }
    std::fs::write(&input, &text).expect("write input");
    let (out, errors) = (path(dir.path(), "out.csv"), path(dir.path(), "errors.csv"));
    let maps = ["--map", "ssn=ssn", "--map", "dob=dob"];

    let mut args = vec![
        "bulk",
        "tokenize",
        s(&input),
        "-o",
        s(&out),
        "--errors",
        s(&errors),
    ];
    args.extend_from_slice(&maps);
    let output = client(server, key, &args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    // 3: finished with failed cells, apart from clap's 2 for a usage error.
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("5 errors"), "{stderr}");
    let listed = std::fs::read_to_string(&errors).expect("errors file");
    let rows: Vec<Vec<String>> = listed
        .lines()
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect();
    assert_eq!(
        rows[0],
        ["row", "line", "column", "namespace", "code", "message"]
    );
    let got: Vec<_> = rows[1..]
        .iter()
        .map(|r| {
            (
                r[0].as_str(),
                r[1].as_str(),
                r[2].as_str(),
                r[3].as_str(),
                r[4].as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("8", "9", "ssn", "ssn", "INVALID_ARGUMENT"),
            ("258", "259", "ssn", "ssn", "INVALID_ARGUMENT"),
            ("501", "502", "dob", "dob", "INVALID_ARGUMENT"),
            ("508", "509", "ssn", "ssn", "INVALID_ARGUMENT"),
            ("758", "759", "ssn", "ssn", "INVALID_ARGUMENT"),
        ]
    );
    for leak in [INVALID_SSN, INVALID_DOB] {
        assert!(
            !listed.contains(leak) && !stderr.contains(leak),
            "a value in a report"
        );
    }
    let written = records(&std::fs::read(&out).expect("output"));
    assert_eq!(written.len(), 1_000);
    for (i, r) in written.iter().enumerate() {
        if i % 250 == 7 {
            assert_eq!(&r[1], INVALID_SSN, "a failed cell is kept as it was");
        } else {
            assert!(r[1].starts_with('9'), "the rest is tokenized");
        }
    }

    let dropped = path(dir.path(), "dropped.csv");
    let mut args = vec![
        "bulk",
        "tokenize",
        s(&input),
        "-o",
        s(&dropped),
        "--on-error",
        "drop-row",
    ];
    args.extend_from_slice(&maps);
    assert_eq!(client(server, key, &args).status.code(), Some(3));
    let kept = records(&std::fs::read(&dropped).expect("output"));
    assert_eq!(
        kept.len(),
        995,
        "the five rows with a failed cell are left out"
    );
    assert!(
        kept.iter()
            .all(|r| &r[1] != INVALID_SSN && &r[2] != INVALID_DOB)
    );

    let failed = path(dir.path(), "failed.csv");
    let mut args = vec![
        "bulk",
        "tokenize",
        s(&input),
        "-o",
        s(&failed),
        "--on-error",
        "fail",
    ];
    args.extend_from_slice(&maps);
    let output = client(server, key, &args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("row 8 (line 9), ssn, namespace ssn: INVALID_ARGUMENT"),
        "{stderr}"
    );
    assert!(!failed.exists() && !path(dir.path(), "failed.csv.partial").exists());

    // A namespace the client may not use refuses the stream: nothing written.
    let mut args = vec!["bulk", "detokenize", s(&out), "-o", s(&failed)];
    args.extend_from_slice(&maps);
    let output = client(server, key, &args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("PERMISSION_DENIED"), "{stderr}");
    assert!(!failed.exists() && !path(dir.path(), "failed.csv.partial").exists());

    // A malformed file stops the run with the place named, and writes nothing.
    std::fs::write(&input, "id,ssn\n1,\"123-45-6789\n").expect("write");
    let mut args = vec!["bulk", "tokenize", s(&input), "-o", s(&failed)];
    args.extend_from_slice(&maps[..2]);
    let output = client(server, key, &args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr.contains("row 1 (line 2)") && !stderr.contains("123-45"),
        "{stderr}"
    );
    let mut args = vec!["bulk", "tokenize", s(&input), "--map", "SSN=ssn"];
    args.push("-o");
    args.push(s(&failed));
    let stderr = String::from_utf8_lossy(&client(server, key, &args).stderr).into_owned();
    assert!(
        stderr.contains("no column \"SSN\"") && stderr.contains("did you mean \"ssn\""),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_survives_server_restarts_with_every_row_exactly_once() {
    let setup = Setup::new(&["tokenize:*", "detokenize:*"]).await;
    let (input, tokenized, back) = setup.files("in", "csv");
    let Setup {
        vault,
        server,
        key,
        dir,
        ..
    } = setup;
    let addr = server.addr.to_string();
    let endpoint = server.endpoint();
    let original = patient_csv(30_000);
    std::fs::write(&input, &original).expect("write input");

    let mut run = Command::new(phivault_tests::binary("phivault-client"))
        .args([
            "--endpoint",
            &endpoint,
            "bulk",
            "tokenize",
            s(&input),
            "-o",
            s(&tokenized),
        ])
        .args(CSV_MAPS)
        // Small chunks, so that both restarts land in the first few percent
        // of the run however fast the machine is.
        .args([
            "--batch-size",
            "200",
            "--in-flight",
            "2",
            "--retry-for",
            "60s",
        ])
        .env("PHIVAULT_API_KEY", &key)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the bulk run");
    let partial = path(dir.path(), "in.tok.csv.partial");
    // A graceful restart: the server ends the stream after the messages it
    // took; the client resends the rest.
    let size = wait_for_growth(&partial, 0, &mut run);
    server.stop();
    let server = Server::start(
        &vault,
        &["--listen", &addr, "--metrics-listen", "127.0.0.1:0"],
    );
    // A crash: the connection drops under the stream — once the client is
    // streaming to this server (the output file can grow from answers it
    // had buffered before the restart, so its growth alone does not say).
    super::wait_for_stream(&server, &mut run);
    wait_for_growth(&partial, size, &mut run);
    server.kill();
    let server = Server::start(&vault, &["--listen", &addr]);

    let output = run.wait_with_output().expect("wait for the run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let reconnects: u32 = stderr
        .split("reconnected ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(reconnects >= 2, "one reconnection per restart: {stderr}");
    let mut args = vec!["bulk", "detokenize", s(&tokenized), "-o", s(&back)];
    args.extend_from_slice(CSV_MAPS);
    succeeded(&client(&server, &key, &args));
    assert!(
        std::fs::read(&back).expect("read back") == original.as_bytes(),
        "every row exactly once, in order, through two restarts"
    );
}

/// A delimited dialect as the test writes and reads it, and the arguments
/// that tell `phivault-client bulk` about it.
struct Dialect {
    ext: &'static str,
    delimiter: char,
    quote: char,
    escape: Option<char>,
    header: bool,
    args: &'static [&'static str],
}

impl Dialect {
    /// `rows` rows, every field written the one way the dialect writes it:
    /// quoted only when it must be, quotes doubled or escaped. Columns:
    /// ssn, name, note (unmapped, full of delimiters, quotes and line
    /// breaks).
    fn file(&self, rows: usize) -> String {
        let write = |text: &str, out: &mut String| {
            let special = |c: char| {
                c == self.delimiter
                    || c == self.quote
                    || Some(c) == self.escape
                    || c == '\r'
                    || c == '\n'
            };
            if !text.chars().any(special) {
                out.push_str(text);
                return;
            }
            out.push(self.quote);
            for c in text.chars() {
                if c == self.quote || Some(c) == self.escape {
                    out.push(self.escape.unwrap_or(self.quote));
                }
                out.push(c);
            }
            out.push(self.quote);
        };
        // Names the name format takes that still need quoting in some dialect.
        let names = [
            "Jane Doe",
            "O'Brien, Pat",
            "Zoë Ng",
            "de la Cruz, Ana",
            "N'Dour",
        ];
        let notes = [
            "plain",
            "semi; colon, comma | pipe",
            "quote \" and ' apostrophe",
            "two\r\nlines",
            "back\\slash",
            "",
        ];
        let d = self.delimiter;
        let mut out = String::new();
        if self.header {
            out.push_str(&format!("ssn{d}name{d}note\r\n"));
        }
        for i in 0..rows {
            let ssn = format!("{:03}-{:02}-{:04}", 100 + i % 600, 10 + i % 89, 1000 + i);
            write(&ssn, &mut out);
            out.push(d);
            write(names[i % names.len()], &mut out);
            out.push(d);
            write(notes[i % notes.len()], &mut out);
            out.push_str("\r\n");
        }
        out
    }

    /// The fields of `file` as Python's csv module reads them in the
    /// dialect: an independent reader, to check that ours reads what the
    /// file says.
    fn python_fields(&self, file: &Path) -> Vec<Vec<String>> {
        let script = format!(
            "import csv, json, sys\n\
             with open(sys.argv[1], newline='', encoding='utf-8') as f:\n\
             \x20   rows = list(csv.reader(f, delimiter={delimiter:?}, quotechar={quote:?}, escapechar={escape}, doublequote={double}))\n\
             print(json.dumps(rows))\n",
            delimiter = self.delimiter.to_string(),
            quote = self.quote.to_string(),
            escape = self
                .escape
                .map_or("None".to_owned(), |e| format!("{:?}", e.to_string())),
            double = if self.escape.is_some() {
                "False"
            } else {
                "True"
            },
        );
        let output = Command::new("python3")
            .args(["-c", &script])
            .arg(file)
            .output()
            .expect("python3 (Debian's python3, which `make test` installs with python3-venv)");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("JSON rows")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delimited_dialects_round_trip_and_an_independent_reader_agrees() {
    let setup = Setup::new(&["tokenize:*", "detokenize:*"]).await;
    let (server, key) = (&setup.server, &setup.key);
    let dialects = [
        Dialect {
            ext: "csv",
            delimiter: ';',
            quote: '"',
            escape: None,
            header: true,
            args: &["--delimiter", ";"],
        },
        Dialect {
            ext: "tsv",
            delimiter: '\t',
            quote: '"',
            escape: None,
            header: true,
            args: &[],
        },
        Dialect {
            ext: "txt",
            delimiter: '|',
            quote: '\'',
            escape: Some('\\'),
            header: false,
            args: &[
                "--format",
                "csv",
                "--delimiter",
                "|",
                "--quote",
                "'",
                "--escape",
                "\\",
                "--no-header",
            ],
        },
        Dialect {
            ext: "csv",
            delimiter: ',',
            quote: '"',
            escape: Some('\\'),
            header: true,
            args: &["--escape", "\\"],
        },
    ];
    for (n, dialect) in dialects.iter().enumerate() {
        let (input, tokenized, back) = setup.files(&format!("dialect{n}"), dialect.ext);
        let original = dialect.file(2_000);
        std::fs::write(&input, &original).expect("write input");
        let maps: &[&str] = if dialect.header {
            &["--map", "ssn=ssn", "--map", "name=name"]
        } else {
            &["--map", "1=ssn", "--map", "2=name"]
        };
        let mut args = vec!["bulk", "tokenize", s(&input), "-o", s(&tokenized)];
        args.extend_from_slice(dialect.args);
        args.extend_from_slice(maps);
        succeeded(&client(server, key, &args));
        let before = dialect.python_fields(&input);
        let after = dialect.python_fields(&tokenized);
        assert_eq!(before.len(), after.len(), "dialect {n}: every row once");
        let skip = usize::from(dialect.header);
        assert_eq!(
            before[..skip],
            after[..skip],
            "dialect {n}: the header passes"
        );
        for (b, a) in before[skip..].iter().zip(&after[skip..]) {
            assert_eq!(
                b.len(),
                3,
                "dialect {n}: the independent reader sees 3 fields"
            );
            assert_eq!(b[2], a[2], "dialect {n}: the note passes through");
            assert!(
                b[0] != a[0] && b[1] != a[1],
                "dialect {n}: mapped cells change"
            );
            assert!(
                shaped("ssn", &b[0], &a[0]),
                "dialect {n}: an SSN token keeps the shape"
            );
        }
        let mut args = vec!["bulk", "detokenize", s(&tokenized), "-o", s(&back)];
        args.extend_from_slice(dialect.args);
        args.extend_from_slice(maps);
        succeeded(&client(server, key, &args));
        assert!(
            std::fs::read(&back).expect("read back") == original.as_bytes(),
            "dialect {n}: tokenize then detokenize gives back the input byte for byte"
        );
    }
}
