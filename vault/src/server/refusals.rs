//! Unauthenticated refusals, tallied in memory and written to the audit trail
//! as a bounded number of summary records per window.
//!
//! A call without a valid key costs its sender nothing, so one record per
//! refusal would let any peer fill the disk and the writer queue, and so fail
//! every reveal closed (DESIGN.md §10). Refusals are instead counted per
//! (peer address, claimed client id, reason); once per window the tallies
//! become at most [`MAX_SUMMARIES`] records, the rest folded into one. The
//! caller is answered at once: nothing it sent waits for the disk.

use std::net::IpAddr;
use std::time::Duration;

use super::tally::{self, Tallies, Window};
use crate::AuditEvent;
use crate::auth::AuthError;

/// The `rpc` field of a summary record: it stands for many calls, possibly of
/// several methods.
pub const SUMMARY_RPC: &str = "(unauthenticated calls, summarised)";
/// Distinct (peer, claimed id, reason) tallies kept per window; the calls of
/// any further source are counted in one overflow tally.
const MAX_SOURCES: usize = 4096;
/// Summary records written per window at most (the largest tallies); the
/// remaining tallies are written as one more record.
pub const MAX_SUMMARIES: usize = 64;
/// The window used when the server is not told otherwise.
pub(crate) const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Source {
    peer: Option<IpAddr>,
    /// The client id a well-formed key claimed (16 hex digits), else empty.
    claimed: String,
    reason: &'static str,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Calls {
    calls: u64,
    first_ms: u64,
    last_ms: u64,
}

/// The tallies of the current window.
pub(crate) struct Refusals {
    pub(crate) tallies: Tallies<Source, Calls>,
}

impl Default for Refusals {
    fn default() -> Self {
        Self {
            tallies: Tallies::new(MAX_SOURCES, "unauthenticated refusals", summaries),
        }
    }
}

fn reason(e: AuthError) -> &'static str {
    match e {
        AuthError::Missing => "no-key",
        AuthError::Malformed => "malformed-key",
        AuthError::Unknown => "unknown-key",
        AuthError::Revoked => "revoked-key",
        AuthError::Expired => "expired-key",
    }
}

impl Calls {
    fn new(now: u64) -> Self {
        Self {
            calls: 1,
            first_ms: now,
            last_ms: now,
        }
    }
}

impl tally::Tally for Calls {
    fn add(&mut self, other: &Calls) {
        self.calls = self.calls.saturating_add(other.calls);
        self.first_ms = self.first_ms.min(other.first_ms);
        self.last_ms = self.last_ms.max(other.last_ms);
    }
}

impl Refusals {
    /// Counts one refused call. `claimed` must already be a validated client
    /// id (or empty): it is written to the audit trail.
    pub(crate) fn count(&self, peer: Option<IpAddr>, claimed: &str, error: AuthError) {
        let source = Source {
            peer,
            claimed: claimed.to_owned(),
            reason: reason(error),
        };
        self.tallies
            .add(source, &Calls::new(crate::clock::now_ms()));
    }
}

/// The records for one window: the `MAX_SUMMARIES` largest tallies, then one
/// record for all the others.
fn summaries(window: &Window<Source, Calls>) -> Vec<AuditEvent> {
    use tally::Tally as _;
    let mut tallies: Vec<(&Source, &Calls)> = window.sources.iter().collect();
    tallies.sort_by(|a, b| {
        b.1.calls
            .cmp(&a.1.calls)
            .then(a.1.first_ms.cmp(&b.1.first_ms))
    });
    let mut rest: Option<Calls> = window.overflow;
    let mut rest_sources = usize::from(window.overflow.is_some());
    let mut events = Vec::new();
    for (i, (source, tally)) in tallies.into_iter().enumerate() {
        if i < MAX_SUMMARIES {
            let peer = source
                .peer
                .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
            // The claimed id goes into `target`, never `client_id`: ids
            // are not secret, and a peer must not be able to pin failed
            // attempts on a real client (an alert that revokes a client
            // after N failures would become a remote revoke).
            let claimed = if source.claimed.is_empty() {
                "none"
            } else {
                source.claimed.as_str()
            };
            events.push(summary(
                format!(
                    "peer={peer} reason={} claimed={claimed} first_ms={} last_ms={}",
                    source.reason, tally.first_ms, tally.last_ms
                ),
                tally.calls,
            ));
        } else {
            match &mut rest {
                Some(kept) => kept.add(tally),
                None => rest = Some(*tally),
            }
            rest_sources += 1;
        }
    }
    if let Some(tally) = rest {
        events.push(summary(
            format!(
                "peer=many reason=many sources={} first_ms={} last_ms={}",
                if window.sources.len() >= MAX_SOURCES {
                    format!("{rest_sources}+")
                } else {
                    rest_sources.to_string()
                },
                tally.first_ms,
                tally.last_ms
            ),
            tally.calls,
        ));
    }
    events
}

fn summary(target: String, calls: u64) -> AuditEvent {
    AuditEvent {
        authenticated: false,
        rpc: SUMMARY_RPC.to_owned(),
        items: u32::try_from(calls).unwrap_or(u32::MAX),
        outcome: tonic::Code::Unauthenticated as i32,
        target,
        ..AuditEvent::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_are_capped_and_summaries_bounded() {
        let refusals = Refusals::default();
        let peer = Some(IpAddr::from([127, 0, 0, 1]));
        for _ in 0..1000 {
            refusals.count(peer, "", AuthError::Missing);
        }
        for i in 0..(MAX_SOURCES as u32 + 500) {
            let ip = IpAddr::from(i.to_be_bytes());
            refusals.count(Some(ip), "0123456789abcdef", AuthError::Unknown);
        }
        let window = refusals.tallies.take();
        assert_eq!(window.sources.len(), MAX_SOURCES);
        assert_eq!(window.overflow.map(|t| t.calls), Some(501));
        let events = summaries(&window);
        assert_eq!(events.len(), MAX_SUMMARIES + 1);
        assert_eq!(events[0].items, 1000, "the largest tally comes first");
        assert!(events[0].target.starts_with("peer=127.0.0.1 reason=no-key"));
        let total: u64 = events.iter().map(|e| u64::from(e.items)).sum();
        assert_eq!(total, 1000 + u64::from(MAX_SOURCES as u32 + 500));
        assert!(events.iter().all(|e| e.outcome == 16 && !e.authenticated));
    }
}
