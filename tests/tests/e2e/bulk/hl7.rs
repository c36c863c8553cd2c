//! HL7 v2 feeds through `phivault-client bulk --format hl7v2`: the built-in
//! profile on messages like an interface engine's (ADT, ORU, SIU; v2.3 to
//! v2.8; custom delimiters; repetitions; escapes; `""` nulls; Z-segments;
//! batch headers), as a file in every line ending and as MLLP frames, with
//! python-hl7 reading input and output independently.

use std::path::Path;
use std::process::Command;

use super::{Setup, client, s, succeeded};

const VERSIONS: [&str; 8] = ["2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.8"];
const FAMILY: [&str; 6] = [
    "DOE",
    "SMITH",
    "O'BRIEN",
    "GARCIA-LOPEZ",
    "NGUYEN",
    "MÜLLER",
];
const GIVEN: [&str; 5] = ["JANE", "JOHN", "MARY ANN", "LI", "JOSÉ"];

/// A segment from its fields by number (MSH from MSH-3); the rest empty.
fn segment(name: &str, fields: &[(usize, String)]) -> String {
    let last = fields.iter().map(|(n, _)| *n).max().unwrap_or(0);
    let mut out = name.to_owned();
    for n in 1..=last {
        out.push('|');
        if let Some((_, value)) = fields.iter().find(|(m, _)| *m == n) {
            out.push_str(value);
        }
    }
    out.push('\r');
    out
}

fn f(n: usize, value: impl Into<String>) -> (usize, String) {
    (n, value.into())
}

/// Message `i` of a feed, in the standard delimiters.
fn message(i: usize) -> String {
    let version = VERSIONS[i % VERSIONS.len()];
    let family = FAMILY[i % FAMILY.len()];
    let given = GIVEN[i % GIVEN.len()];
    let ts = format!("2024{:02}{:02}1200", 1 + i % 12, 1 + i % 28);
    // Some births carry a time, which stays as it is.
    let dob = format!(
        "19{:02}{:02}{:02}{}",
        40 + i % 60,
        1 + i % 12,
        1 + i % 28,
        if i.is_multiple_of(5) { "0830" } else { "" }
    );
    let ssn = format!("{:03}-{:02}-{:04}", 100 + i % 800, 10 + i % 89, 1000 + i);
    let street = match i % 3 {
        0 => format!("{} ELM ST \\T\\ 3RD AVE", 10 + i),
        1 => format!("{} MAIN ST \\E\\ REAR", 10 + i),
        _ => format!("{} OAK DR.", 10 + i),
    };
    let address = format!(
        "{street}^APT {}^SPRINGFIELD^IL^{:05}^USA^H^^SANGAMON",
        i % 40,
        // A ZIP code's token keeps its first three digits, which leaves
        // 100 tokens a prefix: one code a prefix here.
        (100 + i % 800) * 100 + i % 7
    );
    let phone = format!("(217)555-{:04}", i % 10_000);
    let telecom = format!("{phone}~^NET^Internet^pt{i}@example.org");
    let work = format!("^WPN^PH^^1^217^{:07}", 5_550_000 + i);
    let maiden = if i.is_multiple_of(4) {
        "\"\"".to_owned()
    } else {
        format!("{}^^^^^^M", FAMILY[(i + 2) % FAMILY.len()])
    };
    let pid = segment(
        "PID",
        &[
            f(1, "1"),
            f(2, format!("EXT{i}")),
            f(
                3,
                format!("MRN{i:06}^^^GHH^MR~{ssn}^^^USSSA^SS~PI{i}^^^GHH^PI"),
            ),
            f(
                5,
                format!(
                    "{family}^{given}^Q^^^^L~{}^{given}^^^^^A",
                    FAMILY[(i + 1) % 6]
                ),
            ),
            f(6, maiden),
            f(7, dob.clone()),
            f(8, if i.is_multiple_of(2) { "F" } else { "\"\"" }),
            f(10, "2106-3^White^HL70005"),
            f(11, address.clone()),
            f(13, telecom.clone()),
            f(14, work),
            f(16, "M"),
            f(18, format!("AN{i:08}^^^GHH^AN")),
            f(19, ssn.replace('-', "")),
            f(20, format!("D{i:07}^IL^20300101")),
            f(23, "SPRINGFIELD GENERAL"),
        ],
    );
    let msh = |kind: &str| {
        // v2.7 and later name a truncation character as a fifth.
        let encoding = if version >= "2.7" { "^~\\&#" } else { "^~\\&" };
        format!(
            "MSH|{encoding}|ADT1|GOOD HEALTH HOSPITAL|GHH LAB|GHH|{ts}||{kind}|MSG{i:06}|P|{version}\r"
        )
    };
    let mut out = match i % 4 {
        0 => {
            let mut m = msh("ADT^A01^ADT_A01");
            m.push_str(&format!("EVN|A01|{ts}\r"));
            m.push_str(&pid);
            m.push_str(&segment(
                "NK1",
                &[
                    f(1, "1"),
                    f(2, format!("{}^{}", FAMILY[(i + 3) % 6], GIVEN[(i + 1) % 5])),
                    f(3, "SPO^SPOUSE"),
                    f(4, address.clone()),
                    f(5, telecom.clone()),
                    f(7, "NOK^NEXT OF KIN"),
                ],
            ));
            m.push_str(&segment(
                "PV1",
                &[
                    f(1, "1"),
                    f(2, "I"),
                    f(3, "2000^2012^01"),
                    f(7, "004777^ATTEND^AARON^A"),
                    f(10, "SUR"),
                ],
            ));
            m.push_str(&segment(
                "GT1",
                &[
                    f(1, "1"),
                    f(2, format!("G{i}^^^GHH^GT")),
                    f(3, format!("{family}^{given}")),
                    f(5, address.clone()),
                    f(6, phone.clone()),
                    f(8, dob.clone()),
                    f(12, ssn.clone()),
                ],
            ));
            m.push_str(&segment(
                "IN1",
                &[
                    f(1, "1"),
                    f(2, "BCBS01^BLUE PLAN"),
                    f(3, "BCBS"),
                    f(16, format!("{family}^{given}")),
                    f(17, "SEL^Self"),
                    f(18, dob.clone()),
                    f(19, address.clone()),
                    f(36, format!("POL-{i:06}")),
                    f(49, format!("MB{i:07}^^^BCBS^MB")),
                ],
            ));
            m.push_str(&segment("IN2", &[f(1, format!("E{i}")), f(2, ssn.clone())]));
            m
        }
        1 => {
            let mut m = msh("ORU^R01^ORU_R01");
            m.push_str(&pid);
            m.push_str(&format!("ORC|RE|ORD{i}|FIL{i}\r"));
            m.push_str(&format!("OBR|1|ORD{i}|FIL{i}|2345-7^GLUCOSE^LN|||{ts}\r"));
            m.push_str(&format!(
                "OBX|1|NM|2345-7^GLUCOSE^LN||{}|mg/dL|70-99|N|||F\r",
                80 + i % 40
            ));
            m.push_str(
                "OBX|2|TX|11492-6^HISTORY^LN||Fasting\\.br\\sample \\H\\drawn\\N\\ at 08:00||||||F\r",
            );
            m.push_str("NTE|1|L|Repeat in 3 months \\T\\ review\r");
            m
        }
        2 => {
            let mut m = msh("SIU^S12^SIU_S12");
            m.push_str(&format!(
                "SCH|APT{i}|APT{i}|||||ROUTINE^Routine|NORMAL|30|min|^^30^{ts}\r"
            ));
            m.push_str(&pid);
            m.push_str("RGS|1|A\r");
            m.push_str("AIP|1|A|004777^ATTEND^AARON^A|D^Doctor\r");
            m
        }
        _ => {
            let mut m = msh("ADT^A40^ADT_A39");
            m.push_str(&format!("EVN|A40|{ts}\r"));
            m.push_str(&pid);
            m.push_str(&segment(
                "MRG",
                &[
                    f(1, format!("OLD{i:06}^^^GHH^MR")),
                    f(3, format!("OLDAN{i}^^^GHH^AN")),
                    f(7, format!("{}^{given}", FAMILY[(i + 5) % 6])),
                ],
            ));
            m
        }
    };
    out.push_str(&format!("ZPD|1|LOCAL NOTE {i}|{dob}\r"));
    if i % 7 == 3 {
        // Custom delimiters: the same message written with others, its
        // escapes now in the other escape character.
        out = out
            .chars()
            .map(|c| match c {
                '|' => '%',
                '^' => '=',
                '~' => '*',
                '\\' => '!',
                '&' => '+',
                c => c,
            })
            .collect();
    }
    out
}

/// A batch of `n` messages, segments ended by CR.
fn feed(n: usize) -> String {
    let mut out = "BHS|^~\\&|ADT1|GHH|GHH LAB|GHH|20240101\r".to_owned();
    for i in 0..n {
        out.push_str(&message(i));
    }
    out.push_str(&format!("BTS|{n}\r"));
    out
}

/// The same messages as MLLP frames, a line feed between them.
fn framed(n: usize) -> String {
    (0..n)
        .map(|i| format!("\x0b{}\x1c\r\n", message(i)))
        .collect()
}

/// Runs the independent check on an input and its tokenized copy: the
/// number of leaves that changed, or `None` (said) without python-hl7.
fn python_check(before: &Path, after: &Path) -> Option<u64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/bulk/hl7_check.py");
    let probe = Command::new("python3").args(["-c", "import hl7"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!(
            "SKIPPED: the python-hl7 cross-check; install tools/requirements.txt into a virtual environment on PATH (`make test` does)"
        );
        return None;
    }
    let output = Command::new("python3")
        .arg(&script)
        .args([before, after])
        .output()
        .expect("python3");
    assert!(
        output.status.success(),
        "python-hl7 disagrees: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .expect("a count"),
    )
}

/// The `M fields` of the run's summary line.
fn fields_sent(stderr: &str) -> u64 {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("tokenized "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|l| l.strip_suffix(" fields"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary in {stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hl7_feeds_round_trip_and_python_hl7_sees_only_the_profile_change() {
    let setup = Setup::new(&["tokenize:*", "detokenize:*"]).await;
    let (server, key) = (&setup.server, &setup.key);
    let n = 400;
    let cr = feed(n);
    let variants = [
        ("cr", cr.clone()),
        ("crlf", cr.replace('\r', "\r\n")),
        ("lf", cr.replace('\r', "\n")),
        ("mllp", framed(n)),
    ];
    let mut tokenized_cr = String::new();
    for (name, original) in variants {
        let (input, tokenized, back) = setup.files(name, "hl7");
        std::fs::write(&input, &original).expect("write input");
        let errors = setup.dir.path().join(format!("{name}.errors.csv"));
        let output = client(
            server,
            key,
            &[
                "bulk",
                "tokenize",
                s(&input),
                "-o",
                s(&tokenized),
                "--errors",
                s(&errors),
            ],
        );
        let report = std::fs::read_to_string(&errors).unwrap_or_default();
        let said = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{name}: {said}{report}");
        assert!(
            said.contains(&format!("tokenized {n} rows")),
            "{name}: {said}"
        );
        let out = std::fs::read_to_string(&tokenized).expect("tokenized");
        for secret in ["MRN000007", "pt7@example.org", "SPRINGFIELD^IL", "O'BRIEN"] {
            assert!(
                !out.contains(secret),
                "{name}: a profile value passed in clear"
            );
        }
        for kept in ["LOCAL NOTE 7|", "BTS|400", "2345-7^GLUCOSE^LN", "\\.br\\"] {
            assert!(
                name == "mllp" && kept.starts_with("BTS") || out.contains(kept),
                "{name}: {kept} should pass through"
            );
        }
        match name {
            "cr" => tokenized_cr = out.clone(),
            // Tokens are the same whatever ends the segments.
            "crlf" => assert_eq!(out, tokenized_cr.replace('\r', "\r\n")),
            "lf" => assert_eq!(out, tokenized_cr.replace('\r', "\n")),
            _ => {}
        }
        if let Some(changed) = python_check(&input, &tokenized) {
            assert_eq!(
                changed,
                fields_sent(&said),
                "{name}: python-hl7 sees as many changed parts as the run sent"
            );
        }
        succeeded(&client(
            server,
            key,
            &["bulk", "detokenize", s(&tokenized), "-o", s(&back)],
        ));
        assert!(
            std::fs::read(&back).expect("back") == original.as_bytes(),
            "{name}: tokenize then detokenize gives back the input byte for byte"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hl7_rules_from_the_command_line_and_a_profile_and_failures_by_position() {
    let setup = Setup::new(&["tokenize:*", "detokenize:*"]).await;
    let (server, key) = (&setup.server, &setup.key);
    let dir = setup.dir.path();
    let profile = dir.join("hl7.toml");
    std::fs::write(
        &profile,
        "builtin = false\nproviders = true\n[[rule]]\nfield = \"ZPD-3\"\nnamespace = \"dob\"\ndate = true\n",
    )
    .expect("profile");
    // A name holding the component and subcomponent separators, escaped,
    // mapped whole to `text`; a PID with an unreadable escape; a segment
    // before any MSH.
    let text = "PID|1||X0^^^^MR\rMSH|^~\\&|A|B|C|D|20240101||ADT^A08|1|P|2.5\rPID|1||X1^^^^MR||SM\\S\\ITH \\T\\ CO^ANN||19800102\rPV1|1|O|||||00123^WELBY^MARCUS\rZPD|1|NOTE|19800102\r\
MSH|^~\\&|A|B|C|D|20240101||ADT^A08|2|P|2.5\rPID|1||X2^^^^MR||BAD\\H\\NAME^ANN\r";
    let (input, tokenized, back) = setup.files("rules", "hl7");
    std::fs::write(&input, text).expect("input");
    let errors = dir.join("errors.csv");
    let output = client(
        server,
        key,
        &[
            "bulk",
            "tokenize",
            s(&input),
            "-o",
            s(&tokenized),
            "--profile",
            s(&profile),
            "--map",
            "PID-5.1=text",
            "--errors",
            s(&errors),
        ],
    );
    assert_eq!(
        output.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out = std::fs::read_to_string(&tokenized).expect("tokenized");
    assert!(
        out.starts_with("PID|1||X0^^^^MR\r"),
        "a failed row is kept as it was"
    );
    let first = out.split("MSH").nth(1).expect("first message");
    assert!(!first.contains("SM\\S\\ITH"), "the mapped name was sent");
    assert!(first.contains("PID|1||X1^^^^MR||tok_"), "{first}");
    assert!(
        first.contains("^ANN||19800102\r"),
        "only the --map, profile and provider rules apply"
    );
    assert!(
        !first.contains("WELBY") && !first.contains("00123"),
        "providers = true"
    );
    assert!(
        !first.contains("ZPD|1|NOTE|19800102"),
        "the profile's date rule"
    );
    assert!(
        out.contains("BAD\\H\\NAME"),
        "a failed cell is kept as it was"
    );
    let report = std::fs::read_to_string(&errors).expect("errors file");
    assert!(
        report.contains("1,1,,,INVALID_ARGUMENT,\"a segment comes before any MSH"),
        "{report}"
    );
    assert!(
        report.contains("3,6,PID-5.1,text,INVALID_ARGUMENT"),
        "{report}"
    );
    assert!(
        !report.contains("BAD") && !report.contains("X0"),
        "no value in the errors file"
    );
    let output = client(
        server,
        key,
        &[
            "bulk",
            "detokenize",
            s(&tokenized),
            "-o",
            s(&back),
            "--profile",
            s(&profile),
            "--map",
            "PID-5.1=text",
        ],
    );
    assert_eq!(output.status.code(), Some(3));
    assert_eq!(std::fs::read(&back).expect("back"), text.as_bytes());
    // Bad rules are refused before the run, naming the rule.
    let output = client(
        server,
        key,
        &["bulk", "tokenize", s(&input), "--map", "PID-0=ssn"],
    );
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("PID-0"));
}

/// A process the test started, stopped by its PID when the test ends.
struct Started(std::process::Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The first line a process writes on `stream`, waiting for it (the
/// process says it is ready by writing it); the rest is read and dropped,
/// so that the process never writes to a closed pipe.
fn first_line(stream: impl std::io::Read + Send + 'static) -> String {
    use std::io::BufRead;
    let mut reader = std::io::BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).expect("a line");
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    line.trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mllp_relay_passes_tokenized_messages_and_refuses_what_it_cannot_tokenize() {
    use std::process::Stdio;

    let probe = Command::new("python3").args(["-c", "import hl7"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!(
            "SKIPPED: the MLLP relay test needs python-hl7; install tools/requirements.txt into a virtual environment on PATH (`make test` does)"
        );
        return;
    }
    let setup = Setup::new(&["tokenize:*"]).await;
    let (server, key) = (&setup.server, &setup.key);
    let dir = setup.dir.path();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/bulk/hl7_mllp.py");
    let received = dir.join("received.hl7");
    let mut receiver = Command::new("python3")
        .arg(&script)
        .args(["receive", s(&received)])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let port = first_line(receiver.stdout.take().expect("stdout"));
    let _receiver = Started(receiver);
    let mut relay = Command::new(phivault_tests::binary("phivault-client"))
        .args(["--endpoint", &server.endpoint(), "hl7", "proxy"])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--forward",
            &format!("127.0.0.1:{port}"),
        ])
        .env("PHIVAULT_API_KEY", key)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("phivault-client");
    let listening = first_line(relay.stderr.take().expect("stderr"));
    let _relay = Started(relay);
    let relay_port = listening
        .rsplit(':')
        .next()
        .expect("listening on 127.0.0.1:PORT")
        .to_owned();

    // 40 messages of the feed, then one whose birth date is no date.
    let n = 40;
    let mut sent: String = (0..n).map(|i| format!("{}\n\n", message(i))).collect();
    sent.push_str(
        "MSH|^~\\&|A|B|C|D|20260101||ADT^A08|BAD1|P|2.5\rPID|1||X1^^^^MR||DOE^JANE||1980\r\n\n",
    );
    let to_send = dir.join("to-send.hl7");
    std::fs::write(&to_send, &sent).expect("messages");
    let output = Command::new("python3")
        .arg(&script)
        .args(["send", &relay_port, s(&to_send)])
        .output()
        .expect("python3");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let acks: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(acks.len(), n + 1);
    for (i, ack) in acks[..n].iter().enumerate() {
        assert_eq!(
            ack,
            &format!("AA MSG{i:06}"),
            "the receiver's acknowledgement comes back"
        );
    }
    assert_eq!(
        acks[n], "AE BAD1",
        "a message that cannot be tokenized is refused"
    );

    // What the receiver got: the same messages as a bulk run tokenizes them.
    let got = std::fs::read(&received).expect("received");
    let got: Vec<&[u8]> = got
        .split(|b| *b == b'\n')
        .filter(|m| !m.is_empty())
        .collect();
    assert_eq!(got.len(), n, "the refused message was not passed on");
    let (input, tokenized, _) = setup.files("relayed", "hl7");
    let plain: String = (0..n).map(message).collect();
    std::fs::write(&input, &plain).expect("input");
    succeeded(&client(
        server,
        key,
        &["bulk", "tokenize", s(&input), "-o", s(&tokenized)],
    ));
    let bulk = std::fs::read_to_string(&tokenized).expect("tokenized");
    let relayed: String = got
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect();
    assert_eq!(
        relayed, bulk,
        "the relay and a bulk run give the same tokens"
    );
    assert!(!relayed.contains("MRN000007"), "no mapped value passed");
    let relayed_file = dir.join("relayed.tok.hl7");
    std::fs::write(&relayed_file, &relayed).expect("relayed");
    if let Some(changed) = python_check(&input, &relayed_file) {
        assert!(
            changed > 0,
            "python-hl7 sees the profile's parts changed, and only them"
        );
    }
}
