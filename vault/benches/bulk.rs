//! Bulk tokenization end to end: a generated patient CSV (SSN, MRN, name,
//! phone, e-mail, date of birth) through `phivault-client bulk tokenize` and
//! a real `phivault serve`, each in its own process, against the engine
//! tokenizing the same cells in-process in the same run. Also the peak RSS
//! of both processes, and of the client on a tenth of the input, which shows
//! whether its memory grows with the input.
//!
//! Then the same values as HL7 v2 messages (an MSH and a PID segment each,
//! the built-in profile), and as a Parquet file of 20 columns (the 6 mapped
//! among 14 others; Snappy, row groups of 131,072 rows), each on a vault of
//! its own, their rates against the CSV's.
//!
//! Then the Python package on the same file, against a vault of its own as
//! cold as the CLI's: `phivault.frames.tokenize_dataframe` on the CSV read
//! into a pandas DataFrame (the read not timed), by
//! `client/python/bench/tokenize_frame.py`, its rate against the CLI's.
//!
//! `make bench` builds `phivault-client` and installs the Python package
//! (release build) into `target/python` first; `PHIVAULT_BENCH_ROWS`
//! overrides the row count (default 1,000,000), `PHIVAULT_BENCH_PYTHON` the
//! interpreter.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use phivault::store::{Durability, StoreOptions};
use phivault::{MasterKey, Vault, VaultOptions};
use phivault_client::{Client, ClientOptions};
use zeroize::Zeroizing;

mod support;
use support::ServeProcess;

/// (CSV column, namespace), in column order after `patient_id`.
const COLUMNS: [(&str, &str); 6] = [
    ("ssn", "ssn"),
    ("mrn", "mrn"),
    ("name", "name"),
    ("phone", "phone"),
    ("email", "email"),
    ("birth_date", "dob"),
];
/// Share of cells that repeat an earlier value of their column, besides the
/// repeats that dates of birth make on their own (about 36,500 exist in the
/// century drawn from); together about 30% of all cells.
const REPEAT_PERCENT: u64 = 17;
/// The engine's callers and batch, as a pipeline client would send them.
const CALLERS: usize = 8;
const BATCH: usize = 1000;

/// SplitMix64: the same file on every run.
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
}

const SYLLABLES: [&str; 16] = [
    "an", "bel", "cor", "da", "el", "fen", "gar", "hal", "is", "jo", "ka", "lin", "mar", "no",
    "ra", "ve",
];

/// A name part unique to `i`: its base-16 digits as syllables.
fn word(mut i: u64) -> String {
    let mut out = String::new();
    loop {
        out.push_str(SYLLABLES[(i % 16) as usize]);
        i /= 16;
        if i == 0 {
            break;
        }
    }
    let mut chars = out.chars();
    chars
        .next()
        .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

/// The fresh value number `i` of column `c`.
fn fresh(c: usize, i: u64, rng: &mut Rng) -> String {
    match c {
        0 => format!(
            "{:03}-{:02}-{:04}",
            1 + i % 665,
            1 + (i / 665) % 99,
            1 + (i / 65_835) % 9999
        ),
        1 => format!("MRN{:08}", (i * 7_919 + 13) % 100_000_000),
        2 => format!("{} {}", word(i % 4_096), word(i / 4_096 + 17)),
        3 => format!(
            "({:03}) {:03}-{:04}",
            200 + i % 800,
            (i / 800) % 1000,
            (i / 800_000) % 10_000
        ),
        4 => format!("{}.{i}@example.org", word(i % 256).to_ascii_lowercase()),
        _ => format!(
            "{}-{:02}-{:02}",
            1920 + rng.below(100),
            1 + rng.below(12),
            1 + rng.below(28)
        ),
    }
}

/// Writes the CSV and returns its cells by column.
fn generate(path: &Path, rows: usize) -> Vec<Vec<String>> {
    use std::io::Write;
    let mut rng = Rng(0xb01c);
    let mut columns: Vec<Vec<String>> = vec![Vec::with_capacity(rows); COLUMNS.len()];
    let mut fresh_count = [0u64; COLUMNS.len()];
    let file = std::fs::File::create(path).expect("create CSV");
    let mut out = std::io::BufWriter::new(file);
    let header: Vec<&str> = COLUMNS.iter().map(|(c, _)| *c).collect();
    writeln!(out, "patient_id,{}", header.join(",")).expect("write");
    for row in 0..rows {
        write!(out, "{row}").expect("write");
        for (c, column) in columns.iter_mut().enumerate() {
            let value = if !column.is_empty() && rng.below(100) < REPEAT_PERCENT {
                column[rng.below(column.len() as u64) as usize].clone()
            } else {
                fresh_count[c] += 1;
                fresh(c, fresh_count[c], &mut rng)
            };
            write!(out, ",{value}").expect("write");
            column.push(value);
        }
        writeln!(out).expect("write");
    }
    out.flush().expect("flush");
    // On disk before anything is timed: the kernel writing back 90 MiB of
    // dirty pages would otherwise compete with the vault's fsyncs.
    out.get_ref().sync_all().expect("sync");
    columns
}

/// Writes the rows' values as HL7 v2 messages, an MSH and a PID segment
/// each, where the built-in profile finds them: SSN in PID-19, MRN in
/// PID-3 (type MR), the name as surname and given name in PID-5, phone and
/// e-mail in PID-13, the birth date in PID-7. Returns the cells the profile
/// sends (the name is two).
fn generate_hl7(path: &Path, columns: &[Vec<String>]) -> usize {
    use std::io::Write;
    let file = std::fs::File::create(path).expect("create HL7 file");
    let mut out = std::io::BufWriter::new(file);
    let mut cells = 0;
    for (row, ssn) in columns[0].iter().enumerate() {
        let value = |c: usize| columns[c][row].as_str();
        let (given, family) = value(2).split_once(' ').unwrap_or(("", value(2)));
        write!(
            out,
            "MSH|^~\\&|ADT1|GHH|LAB|GHH|20261204120000||ADT^A08^ADT_A01|M{row}|P|2.5.1\r\
             PID|1||{}^^^GHH^MR||{family}^{given}^^^^^L||{}|U|||||{}^PRN^PH^{}||||||{}\r",
            value(1),
            value(5).replace('-', ""),
            value(3),
            value(4),
            ssn,
        )
        .expect("write");
        cells += 6 + usize::from(!given.is_empty());
    }
    out.flush().expect("flush");
    out.get_ref().sync_all().expect("sync");
    cells
}

/// Writes the rows' values as a Parquet file of 20 columns: the six the
/// CSV maps, as strings, among fourteen others of the kinds an export
/// holds (integers, decimals, dates, codes, flags, free text).
fn generate_parquet(path: &Path, columns: &[Vec<String>]) {
    use arrow_array::{
        ArrayRef, BooleanArray, Date32Array, Float64Array, Int32Array, Int64Array, RecordBatch,
        StringArray,
    };
    use parquet::arrow::ArrowWriter;
    use parquet::basic::Compression;
    use parquet::file::properties::WriterProperties;
    use std::sync::Arc;

    const GROUP: usize = 131_072;
    let rows = columns[0].len();
    let properties = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(GROUP))
        .build();
    let file = std::fs::File::create(path).expect("create Parquet file");
    let mut writer: Option<ArrowWriter<std::fs::File>> = None;
    let mut file = Some(file);
    for start in (0..rows).step_by(GROUP) {
        let range = start..(start + GROUP).min(rows);
        let text = |c: usize| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(
                columns[c][range.clone()].iter(),
            ))
        };
        let mut fields: Vec<(String, ArrayRef)> = COLUMNS
            .iter()
            .enumerate()
            .map(|(c, (name, _))| ((*name).to_owned(), text(c)))
            .collect();
        let r = || range.clone();
        let others: [(&str, ArrayRef); 14] = [
            (
                "patient_id",
                Arc::new(Int64Array::from_iter_values(r().map(|i| i as i64))),
            ),
            (
                "encounter_id",
                Arc::new(Int64Array::from_iter_values(r().map(|i| i as i64 * 7 + 3))),
            ),
            (
                "age",
                Arc::new(Int32Array::from_iter_values(r().map(|i| (i % 97) as i32))),
            ),
            (
                "weight_kg",
                Arc::new(Float64Array::from_iter_values(
                    r().map(|i| 40.0 + (i % 600) as f64 / 10.0),
                )),
            ),
            (
                "height_cm",
                Arc::new(Float64Array::from_iter_values(
                    r().map(|i| 140.0 + (i % 500) as f64 / 10.0),
                )),
            ),
            (
                "admitted",
                Arc::new(Date32Array::from_iter_values(
                    r().map(|i| 19_000 + (i % 700) as i32),
                )),
            ),
            (
                "discharged",
                Arc::new(Date32Array::from_iter_values(
                    r().map(|i| 19_003 + (i % 700) as i32),
                )),
            ),
            (
                "ward",
                Arc::new(StringArray::from_iter_values(
                    r().map(|i| format!("W{}", i % 40)),
                )),
            ),
            (
                "icd10",
                Arc::new(StringArray::from_iter_values(
                    r().map(|i| format!("E{:02}.{}", 10 + i % 80, i % 10)),
                )),
            ),
            (
                "payer",
                Arc::new(StringArray::from_iter_values(
                    r().map(|i| ["Medicare", "Medicaid", "Acme", "Self"][i % 4]),
                )),
            ),
            (
                "readmitted",
                Arc::new(BooleanArray::from_iter(r().map(|i| Some(i % 9 == 0)))),
            ),
            (
                "charges",
                Arc::new(Float64Array::from_iter_values(
                    r().map(|i| (i % 100_000) as f64 * 1.37),
                )),
            ),
            (
                "visits",
                Arc::new(Int32Array::from_iter_values(r().map(|i| (i % 23) as i32))),
            ),
            (
                "note",
                Arc::new(StringArray::from_iter_values(
                    r().map(|i| format!("follow-up in {} weeks", 1 + i % 12)),
                )),
            ),
        ];
        fields.extend(
            others
                .into_iter()
                .map(|(name, array)| (name.to_owned(), array)),
        );
        let batch = RecordBatch::try_from_iter(fields).expect("batch");
        let writer = writer.get_or_insert_with(|| {
            let file = file.take().expect("one file");
            ArrowWriter::try_new(file, batch.schema(), Some(properties.clone())).expect("writer")
        });
        writer.write(&batch).expect("write");
    }
    writer.expect("rows").close().expect("close");
}

/// The engine alone: every cell, batched by column and row range as the
/// bulk client batches them, `CALLERS` requests at once, fsync on.
fn engine(dir: &Path, columns: &[Vec<String>]) -> Duration {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let columns = Arc::new(columns.to_vec());
    runtime.block_on(async {
        let options = VaultOptions {
            store: StoreOptions {
                durability: Durability::Fsync,
                ..Default::default()
            },
            ..Default::default()
        };
        let vault = Arc::new(
            Vault::init(dir, MasterKey::KeyFile(Zeroizing::new([7; 32])), options)
                .await
                .expect("init"),
        );
        let rows = columns[0].len();
        let batches = rows.div_ceil(BATCH) * COLUMNS.len();
        let next = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let callers: Vec<_> = (0..CALLERS)
            .map(|_| {
                let (vault, columns, next) =
                    (Arc::clone(&vault), Arc::clone(&columns), Arc::clone(&next));
                tokio::spawn(async move {
                    loop {
                        let b = next.fetch_add(1, Ordering::Relaxed);
                        if b >= batches {
                            break;
                        }
                        let (chunk, c) = (b / COLUMNS.len(), b % COLUMNS.len());
                        let from = chunk * BATCH;
                        let cells = &columns[c][from..(from + BATCH).min(rows)];
                        let results = vault.tokenize(COLUMNS[c].1, cells).await.expect("tokenize");
                        assert!(results.iter().all(Result::is_ok), "every cell tokenizes");
                    }
                })
            })
            .collect();
        for caller in callers {
            caller.await.expect("caller");
        }
        start.elapsed()
    })
}

/// Writes every dirty page back (`sync`) before a timed phase, so that the
/// files of the phase before it (the CSV, the engine's vault) are not written
/// back during this one, competing with its fsyncs.
fn settle() {
    let synced = Command::new("sync").status().expect("run sync");
    assert!(synced.success(), "sync failed");
}

/// Peak resident set size of a live process, from `/proc`.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

struct Run {
    elapsed: Duration,
    fields: u64,
    client_kib: u64,
    server_kib: u64,
}

/// `phivault-client bulk tokenize` over `input`, sampling both processes'
/// peak RSS until the client exits (VmHWM only grows, so the last sample is
/// the peak up to 50 ms before the end).
fn bulk(
    client_bin: &Path,
    server: &ServeProcess,
    key: &str,
    input: &Path,
    output: &Path,
    rules: &[String],
) -> Run {
    let mut command = Command::new(client_bin);
    command
        .args([
            "--endpoint",
            &server.endpoint(),
            "--json",
            "bulk",
            "tokenize",
        ])
        .arg(input)
        .arg("-o")
        .arg(output)
        .args(rules);
    let start = Instant::now();
    let mut child = command
        .env("PHIVAULT_API_KEY", key)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start phivault-client");
    let (mut client_kib, mut server_kib) = (0, 0);
    while child.try_wait().expect("poll").is_none() {
        client_kib = peak_rss_kib(child.id()).unwrap_or(client_kib);
        server_kib = peak_rss_kib(server.child.id()).unwrap_or(server_kib);
        std::thread::sleep(Duration::from_millis(50));
    }
    let elapsed = start.elapsed();
    let output = child.wait_with_output().expect("client");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bulk tokenize failed: {stderr}");
    let summary: serde_json::Value = stderr
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("the JSON summary");
    assert_eq!(summary["errors"], 0, "every cell tokenizes");
    Run {
        elapsed,
        fields: summary["fields"].as_u64().expect("fields"),
        client_kib,
        server_kib,
    }
}

/// The Python package tokenizing `input` as a DataFrame through `server`,
/// with both processes' peak RSS sampled as in [`bulk`]; `None` (said) when
/// the interpreter or the package is missing.
fn python(interpreter: &Path, server: &ServeProcess, key: &str, input: &Path) -> Option<Run> {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../client/python/bench/tokenize_frame.py");
    let mut command = Command::new(interpreter);
    command.arg(script).arg(input);
    for (column, namespace) in COLUMNS {
        command.arg(format!("{column}={namespace}"));
    }
    let mut child = match command
        .env("PHIVAULT_ENDPOINT", server.endpoint())
        .env("PHIVAULT_API_KEY", key)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            println!(
                "Python package: skipped, {} cannot run ({e}); `make bench` installs it",
                interpreter.display()
            );
            return None;
        }
    };
    let (mut client_kib, mut server_kib) = (0, 0);
    while child.try_wait().expect("poll").is_none() {
        client_kib = peak_rss_kib(child.id()).unwrap_or(client_kib);
        server_kib = peak_rss_kib(server.child.id()).unwrap_or(server_kib);
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("python");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the Python run failed: {stderr}");
    let summary: serde_json::Value = String::from_utf8_lossy(&output.stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("the Python run's JSON line");
    assert_eq!(summary["errors"], 0, "every cell tokenizes");
    Some(Run {
        elapsed: Duration::from_secs_f64(summary["seconds"].as_f64().expect("seconds")),
        fields: summary["fields"].as_u64().expect("fields"),
        client_kib,
        server_kib,
    })
}

/// A fresh `phivault serve` and the key of a client that may tokenize
/// every column.
fn fresh_server(runtime: &tokio::runtime::Runtime) -> (ServeProcess, String) {
    let server = ServeProcess::start(&[]);
    let key = runtime.block_on(async {
        let admin =
            Client::connect(ClientOptions::new(server.endpoint()).api_key(&server.admin_key))
                .await
                .expect("admin");
        let scopes = COLUMNS
            .iter()
            .map(|(_, ns)| format!("tokenize:{ns}"))
            .collect();
        admin
            .create_client("bulk-bench", scopes)
            .await
            .expect("client")
            .api_key
    });
    (server, key)
}

fn main() {
    let rows: usize = std::env::var("PHIVAULT_BENCH_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let client_bin: PathBuf =
        Path::new(env!("CARGO_BIN_EXE_phivault")).with_file_name("phivault-client");
    assert!(
        client_bin.exists(),
        "{} is missing: `make bench` builds it (cargo build --release -p phivault-client)",
        client_bin.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (full, tenth) = (
        dir.path().join("patients.csv"),
        dir.path().join("tenth.csv"),
    );
    let columns = generate(&full, rows);
    generate(&tenth, rows / 10);
    let cells = rows * COLUMNS.len();
    let distinct: usize = columns
        .iter()
        .map(|c| c.iter().collect::<HashSet<_>>().len())
        .sum();
    println!(
        "bulk benchmark: {rows} rows, {cells} cells, {:.0}% of them repeating an earlier value of their column, {} MiB of CSV",
        100.0 * (1.0 - distinct as f64 / cells as f64),
        std::fs::metadata(&full).map_or(0, |m| m.len() >> 20)
    );

    let hl7 = dir.path().join("patients.hl7");
    let hl7_cells = generate_hl7(&hl7, &columns);
    let parquet = dir.path().join("patients.parquet");
    generate_parquet(&parquet, &columns);

    let engine_dir = dir.path().join("engine");
    std::fs::create_dir_all(&engine_dir).expect("engine dir");
    settle();
    let took = engine(&engine_dir, &columns);
    drop(columns);
    let engine_rate = cells as f64 / took.as_secs_f64();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // The small run first, on its own vault, so the large one starts as
    // cold as the engine did.
    let maps: Vec<String> = COLUMNS
        .iter()
        .flat_map(|(column, namespace)| ["--map".to_owned(), format!("{column}={namespace}")])
        .collect();
    let mut runs = Vec::new();
    for (run, input) in [&tenth, &full].into_iter().enumerate() {
        let (server, key) = fresh_server(&runtime);
        settle();
        runs.push(bulk(
            &client_bin,
            &server,
            &key,
            input,
            // Outputs are never overwritten: one name per run.
            &dir.path().join(format!("out-{run}.csv")),
            &maps,
        ));
    }
    let from_hl7 = {
        let (server, key) = fresh_server(&runtime);
        settle();
        let out = dir.path().join("out.hl7");
        bulk(&client_bin, &server, &key, &hl7, &out, &[])
    };
    assert_eq!(
        from_hl7.fields as usize, hl7_cells,
        "the profile finds every value"
    );
    let from_parquet = {
        let (server, key) = fresh_server(&runtime);
        settle();
        let out = dir.path().join("out.parquet");
        bulk(&client_bin, &server, &key, &parquet, &out, &maps)
    };
    assert_eq!(
        from_parquet.fields as usize, cells,
        "every mapped value is sent"
    );
    let interpreter = std::env::var_os("PHIVAULT_BENCH_PYTHON").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/python/bin/python"),
        PathBuf::from,
    );
    let from_python = {
        let (server, key) = fresh_server(&runtime);
        settle();
        python(&interpreter, &server, &key, &full)
    };
    let (small, run) = (&runs[0], &runs[1]);
    assert_eq!(run.fields as usize, cells);
    let rate = run.fields as f64 / run.elapsed.as_secs_f64();

    println!();
    println!("| measure | fields/s | vs engine |");
    println!("|---|---:|---:|");
    println!(
        "| engine in-process, same cells ({CALLERS} callers, {BATCH} per request) | {engine_rate:.0} | 1.00 |"
    );
    println!(
        "| `phivault-client bulk tokenize` end to end ({:.1} s) | {rate:.0} | {:.2} |",
        run.elapsed.as_secs_f64(),
        rate / engine_rate
    );
    println!();
    println!(
        "| process | peak RSS, {} rows | peak RSS, {rows} rows |",
        rows / 10
    );
    println!("|---|---:|---:|");
    println!(
        "| phivault-client | {} MiB | {} MiB |",
        small.client_kib >> 10,
        run.client_kib >> 10
    );
    println!(
        "| phivault serve | {} MiB | {} MiB |",
        small.server_kib >> 10,
        run.server_kib >> 10
    );
    let hl7_rate = from_hl7.fields as f64 / from_hl7.elapsed.as_secs_f64();
    println!();
    println!("| {rows} records, each on a fresh vault | fields/s | vs CSV | client peak RSS |");
    println!("|---|---:|---:|---:|");
    println!(
        "| CSV, {} mapped columns | {rate:.0} | 1.00 | {} MiB |",
        COLUMNS.len(),
        run.client_kib >> 10
    );
    println!(
        "| HL7 v2, MSH + PID, built-in profile ({hl7_cells} cells, {} MiB, {:.1} s) | {hl7_rate:.0} | {:.2} | {} MiB |",
        std::fs::metadata(&hl7).map_or(0, |m| m.len() >> 20),
        from_hl7.elapsed.as_secs_f64(),
        hl7_rate / rate,
        from_hl7.client_kib >> 10
    );
    let parquet_rate = from_parquet.fields as f64 / from_parquet.elapsed.as_secs_f64();
    println!(
        "| Parquet, 6 mapped of 20 columns ({} MiB, {:.1} s) | {parquet_rate:.0} | {:.2} | {} MiB |",
        std::fs::metadata(&parquet).map_or(0, |m| m.len() >> 20),
        from_parquet.elapsed.as_secs_f64(),
        parquet_rate / rate,
        from_parquet.client_kib >> 10
    );
    if let Some(py) = &from_python {
        assert_eq!(py.fields as usize, cells);
        let py_rate = py.fields as f64 / py.elapsed.as_secs_f64();
        println!();
        println!(
            "| {rows} rows, {} columns, each on a fresh vault | fields/s | vs CLI |",
            COLUMNS.len()
        );
        println!("|---|---:|---:|");
        println!("| `phivault-client bulk tokenize` (CSV file to CSV file) | {rate:.0} | 1.00 |");
        println!(
            "| Python `frames.tokenize_dataframe` (DataFrame in memory, {:.1} s) | {py_rate:.0} | {:.2} |",
            py.elapsed.as_secs_f64(),
            py_rate / rate
        );
        println!(
            "peak RSS during the Python run: python {} MiB, phivault serve {} MiB",
            py.client_kib >> 10,
            py.server_kib >> 10
        );
        println!(
            "Python package: {:.2} of the CLI's rate (target at least 0.70)",
            py_rate / rate
        );
    }
    println!();
    println!("end to end: {rate:.0} fields/s (target at least 100,000)");
}
