//! Enforces the rate limits and quotas of [`crate::limits`] for this
//! process: a generic-cell-rate limiter (`governor`) per (client, kind,
//! namespace) for items per second, and a counter per (client, namespace)
//! and fixed window for new mappings.
//!
//! A unary call over its rate is refused at once with `RESOURCE_EXHAUSTED`
//! and the wait in `grpc-retry-pushback-ms`; a message of a stream waits for
//! its allowance (up to [`STREAM_PACE_LIMIT`]), so a bulk job is slowed to
//! its rate instead of failing. A quota refuses either kind of call until
//! its window ends.
//!
//! Only namespaces that exist get a limiter: a call naming another fails
//! anyway, and caller-chosen names must not grow the tables.
//!
//! Nodes that share a PostgreSQL store share their limits within a stated
//! tolerance ([`Limiter::share`]): once a second each publishes what it
//! admitted in each of the last two seconds under each rate, and what it
//! made in the current window under each quota; it charges what the others
//! admitted since it last looked to its own limiters, and adds what they
//! made to its own count. A client spread over N nodes can so exceed a rate
//! by what the other nodes admit in about a second, at most N - 1 times its
//! burst and one second's rate, and a quota by the new mappings the others
//! made in that second.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::auth::Client;
use crate::limits::{Allowance, Limited, Limits};
use crate::store::{SharedUsage, Usage};
use crate::{Error, Vault};

/// How often nodes that share storage exchange what they admitted.
pub(crate) const SHARE_EVERY: Duration = Duration::from_secs(1);
/// How long a node's published rate figures (one per second) are kept.
const RATE_FIGURES_KEPT: Duration = Duration::from_secs(10);

/// Longest a stream message waits for its rate allowance before it is
/// refused like a unary call.
pub(crate) const STREAM_PACE_LIMIT: Duration = Duration::from_secs(30);

/// Whether a call over its rate waits or is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pace {
    /// A unary call: refused with the time to wait.
    Refuse,
    /// A stream message: waits up to [`STREAM_PACE_LIMIT`].
    Wait,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    client: String,
    limited: Limited,
    namespace: String,
}

impl Key {
    /// How the key is published with its slot, the second (a rate) or the
    /// window (a quota) the figure counts: `CLIENT KIND NAMESPACE SLOT` (ids
    /// are hex, names and kinds have no spaces).
    fn published(&self, slot: u64) -> String {
        format!(
            "{} {} {} {slot}",
            self.client,
            self.limited.name(),
            self.namespace
        )
    }

    /// A published key read back, with its slot.
    fn parse(text: &str) -> Option<(Key, u64)> {
        let mut words = text.split(' ');
        let client = words.next()?.to_owned();
        let limited = match words.next()? {
            "tokenize" => Limited::Tokenize,
            "detokenize" => Limited::Detokenize,
            "new-mappings" => Limited::NewMappings,
            _ => return None,
        };
        let namespace = words.next()?.to_owned();
        let slot = words.next()?.parse().ok()?;
        let key = Key {
            client,
            limited,
            namespace,
        };
        words.next().is_none().then_some((key, slot))
    }
}

struct Bucket {
    allowance: Allowance,
    limiter: DefaultDirectRateLimiter,
    /// Items other nodes admitted that this limiter had no room to take
    /// when it learnt of them: paid off before this node admits more, so
    /// that nodes kept busy still share one rate.
    debt: Mutex<u64>,
    /// Items this node admitted in its last two seconds with calls, as
    /// (second, items): what it publishes.
    recent: Mutex<[(u64, u64); 2]>,
}

impl Bucket {
    fn count(&self, items: u64) {
        let second = crate::clock::now_secs();
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent[1].0 == second {
            recent[1].1 += items;
        } else {
            *recent = [recent[1], (second, items)];
        }
    }
}

/// New mappings this node made in the current window.
#[derive(Debug, Clone, Copy)]
struct Window {
    index: u64,
    window_secs: u64,
    used: u64,
}

/// The rate limiters and quota counters of this process.
pub(crate) struct Limiter {
    defaults: Limits,
    clock: DefaultClock,
    rates: Mutex<HashMap<Key, Arc<Bucket>>>,
    quotas: Mutex<HashMap<Key, Window>>,
    /// The other nodes' rate figures as last seen and charged, by (node,
    /// published key).
    charged: Mutex<HashMap<(String, String), u64>>,
    /// New mappings the other nodes made, by quota: (window, count), as
    /// they last published.
    others_made: Mutex<HashMap<Key, (u64, u64)>>,
}

impl Limiter {
    /// Limits under the server's `defaults`.
    pub(crate) fn new(defaults: Limits) -> Self {
        Self {
            defaults,
            clock: DefaultClock::default(),
            rates: Mutex::default(),
            quotas: Mutex::default(),
            charged: Mutex::default(),
            others_made: Mutex::default(),
        }
    }

    /// The client's own rule for `limited` in `namespace`, else the
    /// server's.
    fn allowance(&self, client: &Client, limited: Limited, namespace: &str) -> Option<Allowance> {
        client
            .limits
            .for_namespace(limited, namespace)
            .or_else(|| self.defaults.for_namespace(limited, namespace))
    }

    fn bucket(&self, key: Key, allowance: Allowance) -> Option<Arc<Bucket>> {
        let Allowance::Rate { burst, .. } = allowance else {
            return None;
        };
        let mut rates = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bucket) = rates.get(&key).filter(|b| b.allowance == allowance) {
            return Some(Arc::clone(bucket));
        }
        let period = allowance.replenish()?.max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)?
            .allow_burst(NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN));
        let bucket = Arc::new(Bucket {
            allowance,
            limiter: RateLimiter::direct(quota),
            debt: Mutex::new(0),
            recent: Mutex::default(),
        });
        rates.insert(key, Arc::clone(&bucket));
        Some(bucket)
    }

    /// Takes `items` from the client's rate for `limited` in `namespace`, or
    /// says how long to wait. A namespace that does not exist (`exists`,
    /// asked only when a limit applies) is not limited here: the call fails
    /// on it anyway, and caller-chosen names must not grow the tables.
    pub(crate) async fn admit(
        &self,
        client: &Client,
        limited: Limited,
        namespace: &str,
        items: usize,
        pace: Pace,
        exists: impl FnOnce() -> bool,
    ) -> Result<(), Error> {
        let Some(n) = NonZeroU32::new(u32::try_from(items).unwrap_or(u32::MAX)) else {
            return Ok(());
        };
        let Some(allowance) = self.allowance(client, limited, namespace) else {
            return Ok(());
        };
        if allowance == Allowance::Unlimited || !exists() {
            return Ok(());
        }
        let key = Key {
            client: client.id.clone(),
            limited,
            namespace: namespace.to_owned(),
        };
        let Some(bucket) = self.bucket(key, allowance) else {
            return Ok(());
        };
        let rule = || describe(limited, namespace, allowance);
        let burst = match allowance {
            Allowance::Rate { burst, .. } => burst.max(1),
            _ => 1,
        };
        let mut waited = Duration::ZERO;
        loop {
            // What other nodes admitted goes first, a burst at a time.
            let owed = *bucket.debt.lock().unwrap_or_else(|e| e.into_inner());
            let (cells, paying) =
                match NonZeroU32::new(u32::try_from(owed.min(u64::from(burst))).unwrap_or(burst)) {
                    Some(debt) => (debt, true),
                    None => (n, false),
                };
            match bucket.limiter.check_n(cells) {
                Ok(Ok(())) if paying => {
                    let mut debt = bucket.debt.lock().unwrap_or_else(|e| e.into_inner());
                    *debt = debt.saturating_sub(u64::from(cells.get()));
                }
                Ok(Ok(())) => {
                    bucket.count(u64::from(n.get()));
                    return Ok(());
                }
                Ok(Err(not_until)) => {
                    let wait = not_until.wait_time_from(self.clock.now());
                    if pace == Pace::Refuse || waited + wait > STREAM_PACE_LIMIT {
                        return Err(Error::Limited {
                            what: format!("{} reached", rule()),
                            retry_after: Some(wait),
                        });
                    }
                    tokio::time::sleep(wait).await;
                    waited += wait;
                }
                Err(_) => {
                    return Err(Error::Limited {
                        what: format!(
                            "a call of {items} items exceeds the burst of {}; send at most that many per call",
                            rule()
                        ),
                        retry_after: None,
                    });
                }
            }
        }
    }

    /// The client's quota of new mappings in `namespace`, if it has one.
    pub(crate) fn quota(&self, client: &Client, namespace: &str) -> Option<(u64, u64)> {
        match self.allowance(client, Limited::NewMappings, namespace)? {
            Allowance::Quota { count, window_secs } => Some((count, window_secs)),
            _ => None,
        }
    }

    /// Reserves `n` new mappings from the client's quota in `namespace`
    /// for the current window, or refuses with the time until the next one.
    /// Returns the window reserved in, for [`Limiter::refund`].
    pub(crate) fn reserve(&self, client: &Client, namespace: &str, n: u64) -> Result<u64, Error> {
        let Some((count, window_secs)) = self.quota(client, namespace) else {
            return Ok(0);
        };
        let rule = || {
            describe(
                Limited::NewMappings,
                namespace,
                Allowance::Quota { count, window_secs },
            )
        };
        if n > count {
            return Err(Error::Limited {
                what: format!(
                    "a call that creates {n} new mappings exceeds the {}; send fewer new values per call",
                    rule()
                ),
                retry_after: None,
            });
        }
        let now = crate::clock::now_secs();
        let index = now / window_secs;
        let key = Key {
            client: client.id.clone(),
            limited: Limited::NewMappings,
            namespace: namespace.to_owned(),
        };
        let others = match self
            .others_made
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            Some(&(at, made)) if at == index => made,
            _ => 0,
        };
        let mut quotas = self.quotas.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = Window {
            index,
            window_secs,
            used: 0,
        };
        let window = quotas.entry(key).or_insert(fresh);
        if window.index != index || window.window_secs != window_secs {
            *window = fresh;
        }
        let spent = window.used.saturating_add(others);
        if spent.saturating_add(n) > count {
            let left = count.saturating_sub(spent);
            return Err(Error::Limited {
                what: format!(
                    "the {} is spent ({left} left in this window, {n} needed)",
                    rule()
                ),
                retry_after: Some(Duration::from_secs((index + 1) * window_secs - now)),
            });
        }
        window.used += n;
        Ok(index)
    }

    /// Gives back what a call reserved in window `index` and did not use
    /// (values another call created meanwhile, or a call that failed);
    /// nothing once that window has ended.
    pub(crate) fn refund(&self, client: &Client, namespace: &str, n: u64, index: u64) {
        if n == 0 {
            return;
        }
        let key = Key {
            client: client.id.clone(),
            limited: Limited::NewMappings,
            namespace: namespace.to_owned(),
        };
        let mut quotas = self.quotas.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(window) = quotas.get_mut(&key).filter(|w| w.index == index) {
            window.used = window.used.saturating_sub(n);
        }
    }
}

impl Limiter {
    /// This node's figures, as it publishes them.
    fn usage(&self) -> Vec<Usage> {
        let now = crate::clock::now_secs();
        let mut mine = Vec::new();
        for (key, bucket) in self.rates.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let recent = *bucket.recent.lock().unwrap_or_else(|e| e.into_inner());
            for (second, items) in recent {
                if items > 0 && second + 2 >= now {
                    mine.push(Usage {
                        key: key.published(second),
                        total: items,
                        keep_for: RATE_FIGURES_KEPT,
                    });
                }
            }
        }
        for (key, window) in self.quotas.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            // Zero too, while the window lasts: refunds can bring a count
            // back to it, and the others must not keep the last figure.
            let ends = (window.index + 1) * window.window_secs;
            if ends > now {
                mine.push(Usage {
                    key: key.published(window.index),
                    total: window.used,
                    keep_for: Duration::from_secs(ends - now),
                });
            }
        }
        mine
    }

    /// Publishes this node's figures through the storage other nodes
    /// share, and takes the others' into account: a rate is charged what
    /// each other node admitted since the last exchange (at a node's first
    /// exchange, what the others admitted in the seconds their figures are
    /// kept), a quota's window counts what the others made in it.
    pub(crate) async fn share(&self, vault: &Vault) -> Result<(), Error> {
        let others = vault.share_usage(self.usage()).await?;
        let mut quota_others: HashMap<Key, (u64, u64)> = HashMap::new();
        let mut charges: Vec<(Key, u64)> = Vec::new();
        {
            let mut charged = self.charged.lock().unwrap_or_else(|e| e.into_inner());
            let mut now_charged = HashMap::new();
            for SharedUsage { node, key, total } in others {
                let Some((parsed, slot)) = Key::parse(&key) else {
                    continue;
                };
                if parsed.limited == Limited::NewMappings {
                    let entry = quota_others.entry(parsed).or_insert((slot, 0));
                    if entry.0 == slot {
                        entry.1 = entry.1.saturating_add(total);
                    } else if slot > entry.0 {
                        *entry = (slot, total);
                    }
                    continue;
                }
                let id = (node, key);
                let done = charged.get(&id).copied().unwrap_or(0);
                if total > done {
                    charges.push((parsed, total - done));
                }
                now_charged.insert(id, total);
            }
            *charged = now_charged;
        }
        *self.others_made.lock().unwrap_or_else(|e| e.into_inner()) = quota_others;
        for (key, items) in charges {
            // Rows are not authenticated: only clients and namespaces that
            // exist get a limiter, whatever a row names.
            if vault.namespace(&key.namespace).is_err() {
                continue;
            }
            let Some(client) = vault.client(&key.client) else {
                continue;
            };
            let Some(allowance) = self.allowance(&client, key.limited, &key.namespace) else {
                continue;
            };
            if let Some(bucket) = self.bucket(key, allowance) {
                let left = drain(&bucket.limiter, items);
                if left > 0 {
                    // Owed, up to what ten seconds of the rate and a burst
                    // come to: a node that fell behind catches up, and
                    // never owes without bound.
                    let cap = match allowance {
                        Allowance::Rate {
                            count,
                            per_secs,
                            burst,
                        } => u64::from(burst) + 10 * u64::from(count) / u64::from(per_secs.max(1)),
                        _ => 0,
                    };
                    let mut debt = bucket.debt.lock().unwrap_or_else(|e| e.into_inner());
                    *debt = debt.saturating_add(left).min(cap);
                }
            }
        }
        Ok(())
    }
}

/// Takes up to `items` cells from `limiter`: all of them if it has room,
/// else as many as it has. Returns what it could not take.
fn drain(limiter: &DefaultDirectRateLimiter, items: u64) -> u64 {
    let mut left = items;
    let mut n = u32::try_from(left).unwrap_or(u32::MAX);
    while let Some(cells) = NonZeroU32::new(n) {
        match limiter.check_n(cells) {
            Ok(Ok(())) => {
                left -= u64::from(n);
                n = n.min(u32::try_from(left).unwrap_or(u32::MAX));
            }
            // Too many for the burst, or for what is left: try half.
            _ => n /= 2,
        }
    }
    left
}

/// A rule in words: `detokenize limit of 50/s in namespace "ssn"`.
fn describe(limited: Limited, namespace: &str, allowance: Allowance) -> String {
    let rule = crate::limits::LimitRule {
        limited,
        namespace: None,
        allowance,
    }
    .to_string();
    let (_, allowance) = rule.split_once('=').unwrap_or(("", &rule));
    let kind = match limited {
        Limited::NewMappings => "quota of new mappings",
        Limited::Tokenize => "tokenize limit",
        Limited::Detokenize => "detokenize limit",
    };
    format!("this client's {kind} of {allowance} in namespace {namespace:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` reveals by `client` in `ssn`, refused rather than paced when over.
    async fn reveal(limiter: &Limiter, client: &Client, n: usize) -> Result<(), Error> {
        limiter
            .admit(client, Limited::Detokenize, "ssn", n, Pace::Refuse, || true)
            .await
    }

    fn client(limits: &[&str]) -> Client {
        Client {
            id: "0123456789abcdef".into(),
            name: "billing".into(),
            limits: Limits::parse(limits).expect("limits"),
            separated: true,
            ..Client::default()
        }
    }

    #[tokio::test]
    async fn a_unary_call_over_its_rate_is_refused_with_the_wait() {
        let limiter = Limiter::new(Limits::default());
        let billing = client(&["detokenize=10/s"]);
        let admit = |n| reveal(&limiter, &billing, n);
        admit(10).await.expect("the burst");
        match admit(1).await {
            Err(Error::Limited {
                what,
                retry_after: Some(wait),
            }) => {
                assert!(what.contains("detokenize limit of 10/s"), "{what}");
                assert!(wait <= Duration::from_millis(100), "{wait:?}");
            }
            other => panic!("{other:?}"),
        }
        match admit(11).await {
            Err(Error::Limited {
                what,
                retry_after: None,
            }) => assert!(what.contains("exceeds the burst"), "{what}"),
            other => panic!("{other:?}"),
        }
        // Tokenize and other namespaces have their own allowance.
        limiter
            .admit(
                &billing,
                Limited::Detokenize,
                "mrn",
                10,
                Pace::Refuse,
                || true,
            )
            .await
            .expect("another namespace");
        limiter
            .admit(
                &billing,
                Limited::Tokenize,
                "ssn",
                1000,
                Pace::Refuse,
                || true,
            )
            .await
            .expect("no tokenize limit");
    }

    #[tokio::test]
    async fn what_other_nodes_admitted_is_paid_before_more_is_admitted() {
        let limiter = Limiter::new(Limits::default());
        let billing = client(&["detokenize=10/m"]);
        let admit = |n| reveal(&limiter, &billing, n);
        admit(1).await.expect("a bucket for it");
        // Another node admitted 15 while this one's bucket held 9: 9 are
        // taken at once, 6 are owed.
        let key = Key {
            client: billing.id.clone(),
            limited: Limited::Detokenize,
            namespace: "ssn".into(),
        };
        let bucket = limiter
            .rates
            .lock()
            .expect("lock")
            .get(&key)
            .cloned()
            .expect("bucket");
        assert_eq!(drain(&bucket.limiter, 15), 6);
        *bucket.debt.lock().expect("lock") = 6;
        // Nothing is admitted here until the debt is paid off (6 minutes at
        // 10 a minute), even though this node itself admitted only one.
        assert!(matches!(
            admit(1).await,
            Err(Error::Limited {
                retry_after: Some(_),
                ..
            })
        ));
        assert_eq!(*bucket.debt.lock().expect("lock"), 6);
    }

    #[tokio::test]
    async fn server_defaults_apply_unless_the_client_lifts_them() {
        let limiter = Limiter::new(Limits::parse(&["detokenize=1/s"]).expect("defaults"));
        let plain = client(&[]);
        let lifted = client(&["detokenize:ssn=unlimited"]);
        let admit = |c, n| limiter.admit(c, Limited::Detokenize, "ssn", n, Pace::Refuse, || true);
        assert!(admit(&plain, 2).await.is_err());
        admit(&lifted, 1000).await.expect("lifted");
    }

    #[test]
    fn a_quota_counts_what_was_made_and_says_when_it_renews() {
        let limiter = Limiter::new(Limits::default());
        let billing = client(&["new-mappings:mrn=100/1h"]);
        limiter.reserve(&billing, "mrn", 60).expect("60");
        limiter
            .reserve(&billing, "ssn", 1000)
            .expect("no quota there");
        match limiter.reserve(&billing, "mrn", 41) {
            Err(Error::Limited {
                what,
                retry_after: Some(wait),
            }) => {
                assert!(what.contains("40 left"), "{what}");
                assert!(wait <= Duration::from_secs(3600));
            }
            other => panic!("{other:?}"),
        }
        let window = crate::clock::now_secs() / 3600;
        limiter.refund(&billing, "mrn", 10, window);
        limiter
            .reserve(&billing, "mrn", 50)
            .expect("after the refund");
        assert!(matches!(
            limiter.reserve(&billing, "mrn", 101),
            Err(Error::Limited {
                retry_after: None,
                ..
            })
        ));
    }
}
