//! Reveal-anomaly detection: per client, a baseline learnt online from its
//! own windows of activity, each new window scored against it, and rules
//! that need no history.
//!
//! **The model.** For every client and window (five minutes by default) the
//! detector keeps a few counts — items revealed, items revealed in full
//! (a client that sees masked values turning to whole ones), distinct
//! tokens revealed, namespaces touched, items tokenized and new mappings
//! made (together, the hit/mint share) — and,
//! per count, the values of the client's last [`HISTORY`] active windows.
//! A window is scored per count as a robust z-score, `(x − median) / (1.4826
//! × MAD)`, with the spread floored so that a client whose count never
//! varies is not alarmed by a handful more. Median and MAD rather than mean
//! and standard deviation because the attacks this is for *are* the
//! outliers: one sweep in the history must not widen the yardstick for the
//! next. A count must also be well above an absolute floor, so that a client
//! going from 2 reveals to 20 is not an incident. A rise too slow for any
//! one window to stand out — a sweep spread over a working day at twice the
//! usual pace — is caught by a cumulative sum of the windows' scores over a
//! small allowance (CUSUM): it fires once the excess adds up. Activity in an hour of the
//! day where the client has almost never been active weighs the score up.
//! Chosen over an isolation forest because every alert must say in words
//! why it fired ("revealed 40,112 distinct tokens in 5 minutes; its median
//! is 210"), and because it learns online with no training step or new
//! dependency. Its memory is bounded per client (288
//! windows of six counts, 64 peers, a day of mint counts in five-minute
//! steps, and up to 8,192 marks for the current window) and clients revoked
//! or gone are forgotten.
//!
//! **Cold start.** A client with fewer than [`WARM`] windows of history is
//! scored against the server-wide prior: the median and MAD of every warm
//! client's medians, so a new credential that starts by sweeping is caught
//! too.
//!
//! **Rules** that need no history: tokens in sequence within a call, or
//! values in sequence in a namespace small enough to sweep (an
//! enumeration), a large share of a small domain minted in a day,
//! the first reveal of a namespace by a client with history, and a call from
//! a peer address the client has not used before.
//!
//! Nothing here holds a value or a token beyond the call that brought it:
//! distinct tokens are counted by their audit marks, and the sequence rule
//! looks at a call's items while the call is in progress.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;

/// Windows of history kept per client and count.
pub const HISTORY: usize = 288;
/// Windows of history before a client is scored against its own baseline.
pub const WARM: usize = 24;
/// Robust z-score over which a window is anomalous.
pub const THRESHOLD: f64 = 8.0;
/// What a window's score must exceed to add to a sustained rise (the
/// cumulative sum's allowance, in robust z-score units).
const SUSTAINED_SLACK: f64 = 2.0;
/// The cumulative sum of a sustained rise at which it is a finding.
const SUSTAINED_LIMIT: f64 = 24.0;
/// Distinct tokens counted per client and window, at most (256 KiB of
/// marks): a sweep saturates it, far above any floor.
const MAX_MARKS: usize = 1 << 13;
/// Peer addresses remembered per client.
const MAX_PEERS: usize = 64;
/// Items of a call the sequence rule looks at.
const SEQUENCE_SAMPLE: usize = 256;

/// What a window's counts are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feature {
    /// Items revealed (full or masked).
    Reveals,
    /// Items revealed in full: a client that sees masked values turning to
    /// whole ones.
    FullReveals,
    /// Distinct tokens revealed.
    DistinctTokens,
    /// Namespaces revealed from.
    Namespaces,
    /// Items tokenized.
    Tokenized,
    /// New mappings made.
    Minted,
}

/// How many counts a window has.
const COUNTS: usize = 6;

const FEATURES: [Feature; COUNTS] = [
    Feature::Reveals,
    Feature::FullReveals,
    Feature::DistinctTokens,
    Feature::Namespaces,
    Feature::Tokenized,
    Feature::Minted,
];

impl Feature {
    fn words(self) -> &'static str {
        match self {
            Self::Reveals => "revealed items",
            Self::FullReveals => "items revealed in full",
            Self::DistinctTokens => "distinct tokens revealed",
            Self::Namespaces => "namespaces revealed from",
            Self::Tokenized => "items tokenized",
            Self::Minted => "new mappings made",
        }
    }

    /// Below this a window is not anomalous whatever the baseline.
    fn floor(self) -> f64 {
        match self {
            Self::Reveals | Self::FullReveals | Self::DistinctTokens => 200.0,
            Self::Namespaces => 4.0,
            Self::Tokenized | Self::Minted => 5_000.0,
        }
    }

    fn index(self) -> usize {
        FEATURES.iter().position(|f| *f == self).unwrap_or(0)
    }
}

/// Why an alert fired.
#[derive(Debug, Clone, PartialEq)]
pub enum Finding {
    /// A window's count far above the client's baseline (or the prior).
    Anomalous {
        /// Which count.
        feature: Feature,
        /// The window's value.
        value: f64,
        /// The baseline's median.
        median: f64,
        /// The robust z-score.
        score: f64,
        /// Whether the baseline was the server-wide prior (cold start).
        prior: bool,
        /// The hour of day (UTC) was one the client is rarely active in.
        odd_hour: bool,
    },
    /// Windows in a row somewhat above the baseline, adding up (a slow
    /// sweep).
    Sustained {
        /// Which count.
        feature: Feature,
        /// Windows the rise has lasted.
        windows: u32,
        /// The baseline's median.
        median: f64,
        /// The mean of the count over those windows.
        mean: f64,
    },
    /// A call's items in sequence: an enumeration.
    Sequence {
        /// Tokenize (values) or detokenize (tokens).
        reveal: bool,
        /// Items of the call.
        items: usize,
    },
    /// A large share of a small domain minted within a day.
    DomainShare {
        /// The namespace.
        namespace: String,
        /// New mappings in the last 24 h.
        minted: u64,
        /// The namespace's possible values.
        domain: u64,
    },
    /// The first reveal of a namespace by a client with history.
    FirstNamespace {
        /// The namespace.
        namespace: String,
    },
    /// A call from a peer address the client has not used.
    NewPeer {
        /// The address.
        peer: IpAddr,
    },
}

impl Finding {
    /// The rule or model that fired, for metrics and records.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Anomalous { .. } => "anomaly",
            Self::Sustained { .. } => "sustained-rise",
            Self::Sequence { .. } => "enumeration",
            Self::DomainShare { .. } => "domain-share",
            Self::FirstNamespace { .. } => "first-namespace",
            Self::NewPeer { .. } => "new-peer",
        }
    }

    /// The reason in words, with the figures that decided it.
    pub fn reason(&self) -> String {
        match self {
            Self::Anomalous {
                feature,
                value,
                median,
                score,
                prior,
                odd_hour,
            } => format!(
                "{value:.0} {} in one window; {} median is {median:.0} (robust score {score:.1}){}",
                feature.words(),
                if *prior {
                    "the server-wide (new client)"
                } else {
                    "its"
                },
                if *odd_hour {
                    ", at an hour it is rarely active"
                } else {
                    ""
                }
            ),
            Self::Sustained {
                feature,
                windows,
                median,
                mean,
            } => format!(
                "{mean:.0} {} per window for {windows} windows in a row; its median is {median:.0}",
                feature.words()
            ),
            Self::Sequence { reveal, items } => format!(
                "the {} of one call of {items} items run in sequence (an enumeration)",
                if *reveal { "tokens" } else { "values" }
            ),
            Self::DomainShare {
                namespace,
                minted,
                domain,
            } => format!(
                "{minted} new mappings in namespace {namespace:?} in a day, {:.1}% of its {domain} possible values",
                100.0 * *minted as f64 / *domain as f64
            ),
            Self::FirstNamespace { namespace } => {
                format!("a first reveal from namespace {namespace:?}")
            }
            Self::NewPeer { peer } => format!("a call from {peer}, an address it has not used"),
        }
    }
}

/// One call, as the detector sees it.
#[derive(Debug, Clone, Default)]
pub struct Observation<'a> {
    /// The namespace.
    pub namespace: &'a str,
    /// A reveal (else a tokenize).
    pub reveal: bool,
    /// Masked.
    pub masked: bool,
    /// The audit marks of the tokens revealed.
    pub marks: &'a [[u8; 32]],
    /// The call's items (tokens or values), for the sequence rule only.
    pub items: &'a [String],
    /// Items of the call.
    pub count: usize,
    /// New mappings it made.
    pub minted: u64,
    /// The possible values of the namespace, when small enough to sweep.
    pub domain: Option<u64>,
    /// The peer's address.
    pub peer: Option<IpAddr>,
}

#[derive(Default)]
struct Window {
    counts: [f64; COUNTS],
    marks: HashSet<[u8; 32]>,
    namespaces: HashSet<String>,
    active: bool,
}

/// What the detector knows of one client.
#[derive(Default)]
struct Profile {
    history: Vec<VecDeque<f64>>,
    hours: [u32; 24],
    windows: usize,
    namespaces: HashSet<String>,
    peers: VecDeque<IpAddr>,
    current: Window,
    /// New mappings per namespace over the last day: (window start, count).
    minted_day: HashMap<String, VecDeque<(u64, u64)>>,
    /// Per count: the cumulative sum of a rise, the windows it has lasted
    /// and their total.
    rising: [(f64, u32, f64); COUNTS],
}

/// The detector for every client.
#[derive(Default)]
pub struct Detector {
    profiles: HashMap<String, Profile>,
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// Median and MAD of `values`.
fn robust(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let mut values: Vec<f64> = values.collect();
    let m = median(&mut values);
    let mut deviations: Vec<f64> = values.iter().map(|v| (v - m).abs()).collect();
    (m, median(&mut deviations))
}

/// Whether most adjacent items step by one small constant: an enumeration.
fn in_sequence(items: &[String]) -> bool {
    let numbers: Vec<i128> = items
        .iter()
        .take(SEQUENCE_SAMPLE)
        .filter_map(|item| {
            let digits: String = item.chars().filter(char::is_ascii_digit).collect();
            (!digits.is_empty() && digits.len() <= 30)
                .then(|| digits.parse().ok())
                .flatten()
        })
        .collect();
    if numbers.len() < 20 {
        return false;
    }
    let steps: Vec<i128> = numbers.windows(2).map(|w| w[1] - w[0]).collect();
    let mut by_step: HashMap<i128, usize> = HashMap::new();
    for step in &steps {
        if *step != 0 && step.abs() <= 100 {
            *by_step.entry(*step).or_default() += 1;
        }
    }
    by_step.values().any(|&n| n * 10 >= steps.len() * 8)
}

impl Detector {
    /// Counts a call into its client's current window; returns what the
    /// rules that need no history find in it.
    pub fn observe(&mut self, client: &str, call: &Observation<'_>, now_secs: u64) -> Vec<Finding> {
        let profile = self.profiles.entry(client.to_owned()).or_default();
        if profile.history.is_empty() {
            profile.history = vec![VecDeque::with_capacity(HISTORY); FEATURES.len()];
        }
        let mut found = Vec::new();
        let window = &mut profile.current;
        window.active = true;
        if call.reveal {
            window.counts[Feature::Reveals.index()] += call.count as f64;
            if !call.masked {
                window.counts[Feature::FullReveals.index()] += call.count as f64;
            }
            for mark in call.marks {
                if window.marks.len() < MAX_MARKS {
                    window.marks.insert(*mark);
                }
            }
            window.counts[Feature::DistinctTokens.index()] = window.marks.len() as f64;
            if window.namespaces.insert(call.namespace.to_owned()) {
                window.counts[Feature::Namespaces.index()] = window.namespaces.len() as f64;
            }
            if profile.windows >= WARM && !profile.namespaces.contains(call.namespace) {
                found.push(Finding::FirstNamespace {
                    namespace: call.namespace.to_owned(),
                });
            }
            profile.namespaces.insert(call.namespace.to_owned());
        } else {
            window.counts[Feature::Tokenized.index()] += call.count as f64;
            window.counts[Feature::Minted.index()] += call.minted as f64;
            if let Some(domain) = call.domain.filter(|_| call.minted > 0) {
                let day = profile
                    .minted_day
                    .entry(call.namespace.to_owned())
                    .or_default();
                // One entry per five minutes, so a day holds at most 288.
                match day.back_mut() {
                    Some((at, n)) if *at + 300 > now_secs => *n += call.minted,
                    _ => day.push_back((now_secs, call.minted)),
                }
                while day.front().is_some_and(|(at, _)| *at + 86_400 < now_secs) {
                    day.pop_front();
                }
                let minted: u64 = day.iter().map(|(_, n)| n).sum();
                let before = minted - call.minted;
                // Once per crossing of 5%, not per call past it.
                if minted * 20 >= domain && before * 20 < domain {
                    found.push(Finding::DomainShare {
                        namespace: call.namespace.to_owned(),
                        minted,
                        domain,
                    });
                }
            }
        }
        // Values in sequence matter where the domain is small enough to
        // sweep (a sorted first load of identifiers is not an attack);
        // tokens in sequence are guesses wherever they are.
        let sweepable = call.reveal || call.domain.is_some();
        if sweepable && call.count >= 20 && in_sequence(call.items) {
            found.push(Finding::Sequence {
                reveal: call.reveal,
                items: call.count,
            });
        }
        if let Some(peer) = call.peer
            && !profile.peers.contains(&peer)
        {
            if profile.windows >= WARM {
                found.push(Finding::NewPeer { peer });
            }
            if profile.peers.len() >= MAX_PEERS {
                profile.peers.pop_front();
            }
            profile.peers.push_back(peer);
        }
        found
    }

    /// Ends every client's window: scores each active one against its
    /// baseline (or the prior), then adds it to the history. `hour` is the
    /// window's hour of day (UTC). Returns the findings by client.
    pub fn close_window(&mut self, hour: usize) -> Vec<(String, Finding)> {
        let prior = self.prior();
        let mut found = Vec::new();
        for (client, profile) in &mut self.profiles {
            let window = std::mem::take(&mut profile.current);
            if profile.history.is_empty() {
                continue;
            }
            let hour = hour % 24;
            let active_hours: u32 = profile.hours.iter().sum();
            let odd_hour = window.active
                && profile.windows >= WARM
                && active_hours > 0
                && profile.hours[hour] * 50 < active_hours;
            let warm = profile.windows >= WARM;
            let mut worst: Option<Finding> = None;
            // What each count may add to the history: itself, or for a warm
            // client's outlier, the edge of the normal range, so that one
            // sweep does not widen the yardstick while a lasting change of
            // behaviour is still learnt, slowly.
            let mut taught = window.counts;
            for feature in FEATURES {
                let value = window.counts[feature.index()];
                let (median, mad) = if warm {
                    robust(profile.history[feature.index()].iter().copied())
                } else {
                    prior[feature.index()]
                };
                let spread = (1.4826 * mad)
                    .max(median * 0.25)
                    .max(feature.floor() / 10.0);
                if warm {
                    taught[feature.index()] = value.min(median + THRESHOLD * spread / 2.0);
                    if window.active {
                        let rise = &mut profile.rising[feature.index()];
                        // Below the floor a count adds nothing, as for one
                        // window: 1 namespace to 3 is not a sweep.
                        let z = if value < feature.floor() {
                            0.0
                        } else {
                            (value - median) / spread
                        };
                        rise.0 = (rise.0 + z - SUSTAINED_SLACK).max(0.0);
                        if rise.0 > 0.0 {
                            rise.1 += 1;
                            rise.2 += value;
                        } else {
                            *rise = (0.0, 0, 0.0);
                        }
                        if rise.0 >= SUSTAINED_LIMIT {
                            if worst.is_none() {
                                worst = Some(Finding::Sustained {
                                    feature,
                                    windows: rise.1,
                                    median,
                                    mean: rise.2 / f64::from(rise.1.max(1)),
                                });
                            }
                            *rise = (0.0, 0, 0.0);
                        }
                    }
                }
                if value < feature.floor() {
                    continue;
                }
                let mut score = (value - median) / spread;
                if odd_hour {
                    score *= 1.5;
                }
                let beats = match &worst {
                    Some(Finding::Anomalous { score: s, .. }) => score > *s,
                    _ => true,
                };
                if score >= THRESHOLD && beats {
                    worst = Some(Finding::Anomalous {
                        feature,
                        value,
                        median,
                        score,
                        prior: !warm,
                        odd_hour,
                    });
                }
            }
            if let Some(finding) = worst {
                found.push((client.clone(), finding));
            }
            if window.active {
                for feature in FEATURES {
                    let history = &mut profile.history[feature.index()];
                    if history.len() >= HISTORY {
                        history.pop_front();
                    }
                    history.push_back(taught[feature.index()]);
                }
                profile.hours[hour] = profile.hours[hour].saturating_add(1);
                profile.windows += 1;
            }
        }
        found
    }

    /// The server-wide prior per feature: median and MAD of the medians of
    /// the warm clients that do it at all (generous defaults before any
    /// does).
    fn prior(&self) -> [(f64, f64); COUNTS] {
        let mut prior = [(0.0, 0.0); COUNTS];
        for feature in FEATURES {
            let medians: Vec<f64> = self
                .profiles
                .values()
                .filter(|p| p.windows >= WARM)
                .map(|p| robust(p.history[feature.index()].iter().copied()).0)
                .filter(|m| *m > 0.0)
                .collect();
            prior[feature.index()] = if medians.is_empty() {
                (feature.floor(), feature.floor())
            } else {
                robust(medians.into_iter())
            };
        }
        prior
    }

    /// Keeps the clients `keep` says yes to and forgets the others (revoked
    /// or gone): what bounds the detector's memory by the clients there are.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.profiles.retain(|client, _| keep(client));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reveal<'a>(marks: &'a [[u8; 32]]) -> Observation<'a> {
        Observation {
            namespace: "ssn",
            reveal: true,
            marks,
            count: marks.len(),
            ..Observation::default()
        }
    }

    #[test]
    fn a_burst_far_above_the_baseline_is_found_and_told_in_words() {
        let mut detector = Detector::default();
        let marks: Vec<[u8; 32]> = (0..100u32)
            .map(|i| {
                let mut m = [0u8; 32];
                m[..4].copy_from_slice(&i.to_be_bytes());
                m
            })
            .collect();
        for w in 0..48 {
            detector.observe("billing", &reveal(&marks[..80 + w % 20]), 0);
            assert!(detector.close_window(9 + w % 8).is_empty(), "window {w}");
        }
        let sweep: Vec<[u8; 32]> = (0..40_000u32)
            .map(|i| {
                let mut m = [1u8; 32];
                m[..4].copy_from_slice(&i.to_be_bytes());
                m
            })
            .collect();
        detector.observe("billing", &reveal(&sweep), 0);
        let found = detector.close_window(3);
        assert_eq!(found.len(), 1);
        let reason = found[0].1.reason();
        assert!(
            reason.contains("40000") && reason.contains("median"),
            "{reason}"
        );
        assert!(reason.contains("rarely active"), "{reason}");
    }

    #[test]
    fn sequences_new_namespaces_new_peers_and_domain_shares_need_no_model() {
        let mut detector = Detector::default();
        let items: Vec<String> = (0..50)
            .map(|i| format!("1980-01-{:02}", 1 + i % 28))
            .collect();
        let sequential: Vec<String> = (0..50).map(|i| format!("{:09}", 100_000_000 + i)).collect();
        let found = detector.observe(
            "etl",
            &Observation {
                namespace: "ssn",
                items: &sequential,
                count: 50,
                ..Observation::default()
            },
            0,
        );
        assert!(
            found.is_empty(),
            "a sorted load of a large domain: {found:?}"
        );
        let found = detector.observe(
            "etl",
            &Observation {
                namespace: "ssn",
                reveal: true,
                items: &sequential,
                count: 50,
                ..Observation::default()
            },
            0,
        );
        assert!(found.iter().any(|f| f.kind() == "enumeration"), "{found:?}");
        let found = detector.observe(
            "etl",
            &Observation {
                namespace: "dob",
                items: &items,
                count: 50,
                minted: 2_000,
                domain: Some(36_525),
                ..Observation::default()
            },
            0,
        );
        assert!(
            found.iter().any(|f| f.kind() == "domain-share"),
            "{found:?}"
        );
        // With history: a first namespace and a first address are findings.
        let peer = |last| Some(IpAddr::from([10, 0, 0, last]));
        for _ in 0..WARM {
            detector.observe(
                "desk",
                &Observation {
                    peer: peer(1),
                    ..reveal(&[[0; 32]])
                },
                0,
            );
            detector.close_window(10);
        }
        let found = detector.observe(
            "desk",
            &Observation {
                namespace: "mrn",
                peer: peer(2),
                ..reveal(&[[0; 32]])
            },
            0,
        );
        let kinds: Vec<&str> = found.iter().map(Finding::kind).collect();
        assert_eq!(kinds, ["first-namespace", "new-peer"]);
    }
}
