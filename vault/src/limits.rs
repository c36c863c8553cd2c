//! Rate limits and quotas: what a client may do per unit of time, as an
//! administrator writes it (`detokenize:ssn=50/s,burst=200`,
//! `new-mappings=100000/24h`) and as the client's row stores it.
//!
//! Two kinds, because they answer two questions. A **rate** bounds items
//! per second (tokenize, detokenize) with a burst: a generic cell rate, as
//! the server's limiter enforces it, so a client that stays under it is
//! never refused and one that sweeps is slowed to it. A **quota** bounds the
//! new mappings a client may create per fixed window (aligned to the Unix
//! epoch, so `24h` is a UTC day): it caps how far one credential can grow
//! the vault, or enumerate a small domain by minting, whatever its rate.
//!
//! A client's rules are sealed in its row like its scopes (a database
//! administrator cannot lift them); rules the client does not name fall back
//! to the server's defaults (`[rate_limits]` in the configuration file).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a rule limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Limited {
    /// Items tokenized (looked up included), per second.
    Tokenize,
    /// Items revealed, full or masked, per second.
    Detokenize,
    /// New mappings created, per window.
    NewMappings,
}

impl Limited {
    /// The rule's name as written.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tokenize => "tokenize",
            Self::Detokenize => "detokenize",
            Self::NewMappings => "new-mappings",
        }
    }

    /// Whether this kind takes a rate (`N/s`) rather than a quota.
    pub fn is_rate(self) -> bool {
        !matches!(self, Self::NewMappings)
    }
}

/// How much of it is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Allowance {
    /// No limit (lifts a server default for this client).
    Unlimited,
    /// `count` per `per` (one second, minute or hour), up to `burst` at once.
    Rate {
        /// Items per period.
        count: u32,
        /// The period, in seconds: 1, 60 or 3600.
        per_secs: u32,
        /// Items allowed at once when the client has been idle.
        burst: u32,
    },
    /// `count` per fixed window of `window_secs`.
    Quota {
        /// Items per window.
        count: u64,
        /// The window, in seconds.
        window_secs: u64,
    },
}

impl Allowance {
    /// The time one item takes to come back under a rate.
    pub fn replenish(&self) -> Option<Duration> {
        match *self {
            Self::Rate {
                count, per_secs, ..
            } => Some(Duration::from_secs(u64::from(per_secs)) / count.max(1)),
            _ => None,
        }
    }
}

/// One rule: what, in which namespace (`None`: each namespace), how much.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitRule {
    /// What it limits.
    pub limited: Limited,
    /// The namespace it applies to; `None` for every namespace, each on its
    /// own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// How much.
    pub allowance: Allowance,
}

/// A set of rules: a client's own, or the server's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// At most one rule per (kind, namespace).
    pub rules: Vec<LimitRule>,
}

impl Limits {
    /// The rule for `limited` in `namespace`: one naming the namespace, else
    /// one for every namespace.
    pub fn for_namespace(&self, limited: Limited, namespace: &str) -> Option<Allowance> {
        let of_kind = || self.rules.iter().filter(move |r| r.limited == limited);
        of_kind()
            .find(|r| r.namespace.as_deref() == Some(namespace))
            .or_else(|| of_kind().find(|r| r.namespace.is_none()))
            .map(|r| r.allowance)
    }

    /// Whether it has no rule.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Rules from their written forms (`--rate`, `--quota`), checked: each
    /// kind takes its own form, and one (kind, namespace) appears once.
    pub fn parse<S: AsRef<str>>(written: &[S]) -> Result<Self, String> {
        let mut rules: Vec<LimitRule> = Vec::with_capacity(written.len());
        for text in written {
            let rule: LimitRule = text.as_ref().parse()?;
            if rules
                .iter()
                .any(|r| r.limited == rule.limited && r.namespace == rule.namespace)
            {
                return Err(format!(
                    "two limits for {}{}",
                    rule.limited.name(),
                    rule.namespace
                        .as_deref()
                        .map_or(String::new(), |ns| format!(" in namespace {ns:?}"))
                ));
            }
            rules.push(rule);
        }
        Ok(Self { rules })
    }

    /// Each rule as written.
    pub fn written(&self) -> Vec<String> {
        self.rules.iter().map(ToString::to_string).collect()
    }
}

const FORMS: &str = "expected KIND[:NAMESPACE]=ALLOWANCE: tokenize or detokenize with N/s, N/m or N/h (optionally ,burst=B), new-mappings with N/DURATION (24h, 7d), or unlimited";

impl FromStr for LimitRule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (target, allowance) = s
            .split_once('=')
            .ok_or_else(|| format!("limit {s:?}: {FORMS}"))?;
        let (kind, namespace) = match target.split_once(':') {
            Some((kind, ns)) if crate::NamespaceSpec::valid_name(ns) => (kind, Some(ns.to_owned())),
            Some(_) => return Err(format!("limit {s:?} names no valid namespace")),
            None => (target, None),
        };
        let limited = match kind {
            "tokenize" => Limited::Tokenize,
            "detokenize" => Limited::Detokenize,
            "new-mappings" => Limited::NewMappings,
            _ => return Err(format!("limit {s:?}: unknown kind {kind:?}; {FORMS}")),
        };
        let allowance = if allowance == "unlimited" {
            Allowance::Unlimited
        } else if limited.is_rate() {
            parse_rate(allowance).map_err(|why| format!("limit {s:?}: {why}"))?
        } else {
            parse_quota(allowance).map_err(|why| format!("limit {s:?}: {why}"))?
        };
        Ok(Self {
            limited,
            namespace,
            allowance,
        })
    }
}

/// `N/s`, `N/m` or `N/h`, optionally `,burst=B` (default: one period's
/// worth, N).
fn parse_rate(text: &str) -> Result<Allowance, String> {
    let (rate, burst) = match text.split_once(',') {
        Some((rate, burst)) => {
            let burst = burst
                .strip_prefix("burst=")
                .ok_or("after the rate, only ,burst=B")?;
            (rate, Some(positive(burst, "the burst")?))
        }
        None => (text, None),
    };
    let (count, unit) = rate.split_once('/').ok_or("a rate is N/s, N/m or N/h")?;
    let count = positive(count, "the rate")?;
    let per_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err("a rate is per s, m or h".into()),
    };
    Ok(Allowance::Rate {
        count,
        per_secs,
        burst: burst.unwrap_or(count),
    })
}

/// `N/DURATION`: `100000/24h`, `5000/1h`, `1000000/7d`; at least a minute.
fn parse_quota(text: &str) -> Result<Allowance, String> {
    let (count, window) = text
        .split_once('/')
        .ok_or("a quota is N/DURATION, such as 100000/24h")?;
    let count = u64::from(positive(count, "the quota")?);
    let window = humantime::parse_duration(window)
        .map_err(|_| "a quota's window is a duration such as 1h, 24h or 7d")?;
    if window < Duration::from_secs(60)
        || window > Duration::from_secs(366 * 86_400)
        || window.subsec_nanos() != 0
    {
        return Err("a quota's window is whole seconds, from a minute to 366 days".into());
    }
    Ok(Allowance::Quota {
        count,
        window_secs: window.as_secs(),
    })
}

fn positive(text: &str, what: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{what} is a whole number from 1 to {}", u32::MAX)),
    }
}

impl fmt::Display for LimitRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.limited.name())?;
        if let Some(ns) = &self.namespace {
            write!(f, ":{ns}")?;
        }
        f.write_str("=")?;
        match self.allowance {
            Allowance::Unlimited => f.write_str("unlimited"),
            Allowance::Rate {
                count,
                per_secs,
                burst,
            } => {
                let unit = match per_secs {
                    1 => "s",
                    60 => "m",
                    _ => "h",
                };
                write!(f, "{count}/{unit}")?;
                if burst != count {
                    write!(f, ",burst={burst}")?;
                }
                Ok(())
            }
            Allowance::Quota { count, window_secs } => write!(
                f,
                "{count}/{}",
                humantime::format_duration(Duration::from_secs(window_secs))
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_read_back_as_written() {
        for text in [
            "detokenize=50/s",
            "detokenize:ssn=10/s,burst=40",
            "tokenize=30000/m",
            "tokenize:dob=unlimited",
            "new-mappings=100000/1day",
            "new-mappings:mrn=5000/1h",
        ] {
            let rule: LimitRule = text.parse().expect(text);
            assert_eq!(rule.to_string(), text);
        }
        let rule: LimitRule = "new-mappings=100/24h".parse().expect("24h");
        assert_eq!(
            rule.allowance,
            Allowance::Quota {
                count: 100,
                window_secs: 86_400
            }
        );
    }

    #[test]
    fn a_bad_rule_is_named_and_refused() {
        for (text, says) in [
            ("detokenize", "expected KIND"),
            ("reveal=5/s", "unknown kind"),
            ("detokenize=0/s", "from 1"),
            ("detokenize=5/d", "per s, m or h"),
            ("detokenize=5/s,b=3", "burst"),
            ("new-mappings=5/s", "duration"),
            ("new-mappings=5/10s", "from a minute"),
            ("new-mappings=5/400days", "366 days"),
            ("tokenize:no such=5/s", "no valid namespace"),
        ] {
            let error = text.parse::<LimitRule>().expect_err(text);
            assert!(error.contains(says), "{text}: {error}");
        }
        let twice = Limits::parse(&["detokenize=5/s", "detokenize=9/s"]).expect_err("twice");
        assert!(twice.contains("two limits"), "{twice}");
    }

    #[test]
    fn a_namespace_rule_wins_over_the_general_one() {
        let limits = Limits::parse(&["detokenize=50/s", "detokenize:ssn=5/s"]).expect("parse");
        let rate = |ns| match limits.for_namespace(Limited::Detokenize, ns) {
            Some(Allowance::Rate { count, .. }) => count,
            other => panic!("{other:?}"),
        };
        assert_eq!(rate("ssn"), 5);
        assert_eq!(rate("mrn"), 50);
        assert_eq!(limits.for_namespace(Limited::Tokenize, "ssn"), None);
    }
}
