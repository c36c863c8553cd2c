//! Evaluates reveal-anomaly detection ([`phivault::detect`]) on a generated
//! month of traffic: a dozen clients with daily and weekly rhythms, and four
//! injected attacks — a slow sweep, a burst at night, a credential used from
//! a new address, a tokenize enumeration of dates of birth. Reports, over
//! several seeds, the detection rate, the time to detect and the false
//! alarms per client-day. The detector is the server's own code, fed the
//! same observations the server makes, window by window.
//!
//! `make eval-detection` (or `cargo run --release -p phivault --example
//! detection_eval`). `PHIVAULT_EVAL_SEEDS` sets the number of runs (default 5).

use std::net::IpAddr;

use phivault::detect::{Detector, Observation};

/// Five-minute windows.
const WINDOW_SECS: u64 = 300;
const WINDOWS_PER_DAY: u64 = 86_400 / WINDOW_SECS;
const DAYS: u64 = 30;
/// Dates of birth over a century.
const DOB_DOMAIN: u64 = 36_525;

/// A small deterministic generator (xorshift64*), so that a seed gives the
/// same month every time.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Around `mean`, with the spread of counts of independent events.
    fn count(&mut self, mean: f64) -> u64 {
        if mean <= 0.0 {
            return 0;
        }
        let normal = (-2.0 * self.unit().max(1e-12).ln()).sqrt()
            * (2.0 * std::f64::consts::PI * self.unit()).cos();
        (mean + normal * mean.sqrt() * 1.5).round().max(0.0) as u64
    }
}

/// How a client behaves: reveals or tokenize items per active window, in
/// which hours, on which days.
struct Kind {
    name: &'static str,
    reveal: bool,
    namespaces: &'static [&'static str],
    /// Mean items per window when active.
    mean: f64,
    /// Share of revealed items that are distinct tokens.
    distinct: f64,
    /// Hours (UTC) of activity.
    hours: std::ops::Range<u64>,
    weekdays_only: bool,
    /// Share of tokenized items that are new.
    mint_share: f64,
}

const CLIENTS: [Kind; 12] = [
    Kind {
        name: "billing-a",
        reveal: true,
        namespaces: &["ssn"],
        mean: 180.0,
        distinct: 0.9,
        hours: 8..18,
        weekdays_only: true,
        mint_share: 0.0,
    },
    Kind {
        name: "billing-b",
        reveal: true,
        namespaces: &["ssn", "mrn"],
        mean: 90.0,
        distinct: 0.9,
        hours: 7..19,
        weekdays_only: true,
        mint_share: 0.0,
    },
    Kind {
        name: "call-centre",
        reveal: true,
        namespaces: &["phone", "mrn"],
        mean: 60.0,
        distinct: 0.95,
        hours: 6..22,
        weekdays_only: false,
        mint_share: 0.0,
    },
    Kind {
        name: "desk-1",
        reveal: true,
        namespaces: &["ssn"],
        mean: 8.0,
        distinct: 1.0,
        hours: 0..24,
        weekdays_only: false,
        mint_share: 0.0,
    },
    Kind {
        name: "desk-2",
        reveal: true,
        namespaces: &["ssn", "dob"],
        mean: 6.0,
        distinct: 1.0,
        hours: 0..24,
        weekdays_only: false,
        mint_share: 0.0,
    },
    Kind {
        name: "desk-3",
        reveal: true,
        namespaces: &["mrn"],
        mean: 10.0,
        distinct: 1.0,
        hours: 7..20,
        weekdays_only: false,
        mint_share: 0.0,
    },
    Kind {
        name: "claims",
        reveal: true,
        namespaces: &["ssn", "mrn", "name"],
        mean: 400.0,
        distinct: 0.7,
        hours: 9..17,
        weekdays_only: true,
        mint_share: 0.0,
    },
    Kind {
        name: "etl-nightly",
        reveal: false,
        namespaces: &["ssn", "mrn", "name"],
        mean: 150_000.0,
        distinct: 1.0,
        hours: 1..4,
        weekdays_only: false,
        mint_share: 0.02,
    },
    Kind {
        name: "etl-dob",
        reveal: false,
        namespaces: &["dob"],
        mean: 20_000.0,
        distinct: 1.0,
        hours: 2..3,
        weekdays_only: false,
        mint_share: 0.001,
    },
    Kind {
        name: "ingest",
        reveal: false,
        namespaces: &["mrn", "name"],
        mean: 2_000.0,
        distinct: 1.0,
        hours: 0..24,
        weekdays_only: false,
        mint_share: 0.3,
    },
    Kind {
        name: "research",
        reveal: true,
        namespaces: &["mrn"],
        mean: 300.0,
        distinct: 0.5,
        hours: 10..16,
        weekdays_only: true,
        mint_share: 0.0,
    },
    Kind {
        name: "portal",
        reveal: true,
        namespaces: &["email", "phone"],
        mean: 40.0,
        distinct: 1.0,
        hours: 0..24,
        weekdays_only: false,
        mint_share: 0.0,
    },
];

/// An injected attack: on which client, from which window, for how many.
struct Attack {
    what: &'static str,
    client: usize,
    start: u64,
    windows: u64,
}

fn mark(client: usize, n: u64) -> [u8; 32] {
    let mut m = [0u8; 32];
    m[..8].copy_from_slice(&n.to_be_bytes());
    m[8] = client as u8;
    m
}

struct Outcome {
    detected: Vec<Option<u64>>,
    false_alarms: u64,
    /// False alarms by rule.
    by_kind: std::collections::BTreeMap<&'static str, u64>,
}

fn run(seed: u64) -> (Vec<Attack>, Outcome) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let at_day =
        |day: u64, hour: u64, rng: &mut Rng| day * WINDOWS_PER_DAY + hour * 12 + rng.next() % 12;
    // A working day, for the attack on a weekday-only client.
    let weekday = |day: u64| day + [0, 0, 0, 0, 0, 2, 1][(day % 7) as usize];
    let attacks = vec![
        // Twice its usual reveals, over a working day: slow.
        Attack {
            what: "slow sweep (billing-a, twice its usual reveals for 8 h)",
            client: 0,
            start: at_day(weekday(10 + rng.next() % 10), 9, &mut rng),
            windows: 96,
        },
        Attack {
            what: "burst at night (call-centre, 20,000 tokens at 03:00)",
            client: 2,
            start: at_day(8 + rng.next() % 15, 3, &mut rng),
            windows: 1,
        },
        Attack {
            what: "credential from a new address (desk-3)",
            client: 5,
            start: at_day(8 + rng.next() % 15, 14, &mut rng),
            windows: 12,
        },
        Attack {
            what: "tokenize enumeration of dob (etl-dob, dates in sequence)",
            client: 8,
            start: at_day(8 + rng.next() % 15, 15, &mut rng),
            windows: 24,
        },
    ];
    let mut detector = Detector::default();
    let mut detected: Vec<Option<u64>> = vec![None; attacks.len()];
    let mut false_alarms = 0;
    let mut by_kind = std::collections::BTreeMap::new();
    let home: IpAddr = IpAddr::from([10, 1, 0, 1]);
    let mut next_mark = vec![0u64; CLIENTS.len()];
    let mut dob_cursor = 0u64;
    for window in 0..DAYS * WINDOWS_PER_DAY {
        let now = window * WINDOW_SECS;
        let hour = (window % WINDOWS_PER_DAY) / 12;
        let weekday = (window / WINDOWS_PER_DAY) % 7 < 5;
        let mut alarms: Vec<(usize, &'static str)> = Vec::new();
        for (c, kind) in CLIENTS.iter().enumerate() {
            let attack = attacks
                .iter()
                .position(|a| a.client == c && (a.start..a.start + a.windows).contains(&window));
            let active = kind.hours.contains(&hour) && (weekday || !kind.weekdays_only);
            if !active && attack.is_none() {
                continue;
            }
            let mut items = if active { rng.count(kind.mean) } else { 0 };
            let mut peer = home;
            let mut sequence: Vec<String> = Vec::new();
            match attack.map(|a| attacks[a].client) {
                Some(0) => items += kind.mean as u64,
                Some(2) => items += 20_000,
                Some(5) => peer = IpAddr::from([203, 0, 113, 7]),
                Some(8) => {
                    // 5,000 dates a window, in order.
                    sequence = (0..5_000)
                        .map(|i| {
                            let d = dob_cursor + i;
                            format!(
                                "19{:02}-{:02}-{:02}",
                                20 + d / 336 % 80,
                                1 + d / 28 % 12,
                                1 + d % 28
                            )
                        })
                        .collect();
                    dob_cursor += 5_000;
                }
                _ => {}
            }
            let namespace = kind.namespaces[(rng.next() % kind.namespaces.len() as u64) as usize];
            let mut found = Vec::new();
            if kind.reveal {
                let distinct = ((items as f64) * kind.distinct) as u64;
                let marks: Vec<[u8; 32]> = (0..items)
                    .map(|i| {
                        if i < distinct {
                            next_mark[c] += 1;
                            mark(c, next_mark[c])
                        } else {
                            mark(c, next_mark[c])
                        }
                    })
                    .collect();
                found.extend(detector.observe(
                    kind.name,
                    &Observation {
                        namespace,
                        reveal: true,
                        // Clinicians' desks see the last 4 digits.
                        masked: kind.name.starts_with("desk"),
                        marks: &marks,
                        count: items as usize,
                        peer: Some(peer),
                        ..Observation::default()
                    },
                    now,
                ));
            } else {
                let minted = ((items as f64) * kind.mint_share) as u64 + sequence.len() as u64;
                found.extend(detector.observe(
                    kind.name,
                    &Observation {
                        namespace: if sequence.is_empty() {
                            namespace
                        } else {
                            "dob"
                        },
                        count: items as usize + sequence.len(),
                        items: &sequence,
                        minted,
                        domain: (namespace == "dob" || !sequence.is_empty()).then_some(DOB_DOMAIN),
                        peer: Some(peer),
                        ..Observation::default()
                    },
                    now,
                ));
            }
            alarms.extend(found.iter().map(|f| (c, f.kind())));
        }
        for (client, finding) in detector.close_window(hour as usize) {
            if let Some(c) = CLIENTS.iter().position(|k| k.name == client) {
                alarms.push((c, finding.kind()));
            }
        }
        alarms.sort_unstable();
        alarms.dedup_by_key(|(c, _)| *c);
        for (c, kind) in alarms {
            match attacks
                .iter()
                .position(|a| a.client == c && (a.start..a.start + a.windows).contains(&window))
            {
                Some(a) => {
                    detected[a].get_or_insert(window - attacks[a].start);
                }
                None => {
                    // The first day, every client is new and no client is
                    // warm yet to make a server-wide prior: told apart.
                    let kind = if window < WINDOWS_PER_DAY {
                        "first day (cold start, no prior yet)"
                    } else {
                        kind
                    };
                    false_alarms += 1;
                    *by_kind.entry(kind).or_insert(0) += 1;
                }
            }
        }
    }
    (
        attacks,
        Outcome {
            detected,
            false_alarms,
            by_kind,
        },
    )
}

fn main() {
    let seeds: u64 = std::env::var("PHIVAULT_EVAL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    println!(
        "Reveal-anomaly detection on a generated month: {} clients, {DAYS} days of {}-minute windows, 4 injected attacks, {seeds} seeds",
        CLIENTS.len(),
        WINDOW_SECS / 60
    );
    let mut names = Vec::new();
    let mut found = [0u64; 4];
    let mut minutes: Vec<Vec<u64>> = vec![Vec::new(); 4];
    let mut false_alarms = Vec::new();
    let mut by_kind = std::collections::BTreeMap::new();
    for seed in 1..=seeds {
        let (attacks, outcome) = run(seed);
        names = attacks.iter().map(|a| a.what).collect();
        for (i, d) in outcome.detected.iter().enumerate() {
            if let Some(windows) = d {
                found[i] += 1;
                // Found at the end of the window it was seen in.
                minutes[i].push((windows + 1) * WINDOW_SECS / 60);
            }
        }
        false_alarms.push(outcome.false_alarms);
        for (kind, n) in outcome.by_kind {
            *by_kind.entry(kind).or_insert(0u64) += n;
        }
    }
    println!();
    println!(
        "| attack | detected | time to detect (minutes from its start to the end of the window that flagged it; worst run) |"
    );
    println!("|---|---:|---:|");
    for (i, name) in names.iter().enumerate() {
        let worst = minutes[i]
            .iter()
            .max()
            .map_or("—".to_owned(), |m| format!("≤ {m}"));
        println!("| {name} | {}/{seeds} | {worst} |", found[i]);
    }
    let client_days = (CLIENTS.len() as u64 * DAYS) as f64;
    let mean = false_alarms.iter().sum::<u64>() as f64 / seeds as f64;
    println!();
    println!(
        "false alarms: {mean:.1} per run ({:.3} per client-day; runs: {false_alarms:?})",
        mean / client_days
    );
    let first_day = by_kind
        .iter()
        .filter(|(kind, _)| kind.starts_with("first day"))
        .map(|(_, n)| n)
        .sum::<u64>() as f64
        / seeds as f64;
    println!(
        "after the first day: {:.1} per run ({:.4} per client-day)",
        mean - first_day,
        (mean - first_day) / (CLIENTS.len() as u64 * (DAYS - 1)) as f64
    );
    println!("false alarms by rule, over every run: {by_kind:?}");
    let total: u64 = found.iter().sum();
    println!(
        "detection rate: {total}/{} attacks ({:.0}%)",
        4 * seeds,
        100.0 * total as f64 / (4 * seeds) as f64
    );
}
