//! Authenticated calls that are on record in aggregate rather than one
//! record each: tokenize calls (which reveal nothing, and come by the
//! million from pipelines) and calls refused by a rate limit or quota (which
//! the limit answers without work, and a client could repeat at will).
//!
//! Per client and namespace, once per window, the audit trail gets a record
//! of the items, new mappings, hits, values not found and failures of its
//! tokenize calls, and one of its calls over a limit: so a sweep that builds
//! a reverse table of a small domain through tokenize is on record as a run
//! of windows with many items and mints, and a client held back by its
//! limit is seen trying.

use super::tally::{self, Tallies, Window};
use crate::limits::Limited;
use crate::{AuditEvent, TokenizeCounts};

/// The `rpc` of a record that sums up a client's tokenize calls in one
/// namespace over one window.
pub const TOKENIZE_SUMMARY_RPC: &str = "(tokenize calls, summarised)";
/// The `rpc` of a record that sums up a client's calls refused by one of
/// its limits in one namespace over one window.
pub const LIMITED_SUMMARY_RPC: &str = "(calls over a limit, summarised)";
/// Distinct (client, namespace, kind) tallies kept per window; the rest go
/// into one more record.
const MAX_SOURCES: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Source {
    client: String,
    namespace: String,
    /// `None`: tokenize calls; `Some`: calls over this limit.
    limit: Option<Limited>,
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counts {
    calls: u64,
    items: u64,
    minted: u64,
    hits: u64,
    not_found: u64,
    failed: u64,
    first_ms: u64,
    last_ms: u64,
}

impl tally::Tally for Counts {
    fn add(&mut self, o: &Counts) {
        self.calls = self.calls.saturating_add(o.calls);
        self.items = self.items.saturating_add(o.items);
        self.minted = self.minted.saturating_add(o.minted);
        self.hits = self.hits.saturating_add(o.hits);
        self.not_found = self.not_found.saturating_add(o.not_found);
        self.failed = self.failed.saturating_add(o.failed);
        self.first_ms = self.first_ms.min(o.first_ms);
        self.last_ms = self.last_ms.max(o.last_ms);
    }
}

/// The tokenize and over-limit tallies of the current window.
pub(crate) struct Activity {
    pub(crate) tallies: Tallies<Source, Counts>,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            tallies: Tallies::new(
                MAX_SOURCES,
                "tokenize calls and calls over a limit",
                summaries,
            ),
        }
    }
}

impl Activity {
    /// Counts one tokenize call of `items` values.
    pub(crate) fn tokenized(
        &self,
        client: &str,
        namespace: &str,
        items: usize,
        counts: TokenizeCounts,
    ) {
        let now = crate::clock::now_ms();
        self.tallies.add(
            Source {
                client: client.to_owned(),
                namespace: namespace.to_owned(),
                limit: None,
            },
            &Counts {
                calls: 1,
                items: items as u64,
                minted: counts.minted,
                hits: counts.hits,
                not_found: counts.not_found,
                failed: counts.failed,
                first_ms: now,
                last_ms: now,
            },
        );
    }

    /// Counts one call of `items` refused by the client's `limit`.
    pub(crate) fn limited(&self, client: &str, namespace: &str, limit: Limited, items: usize) {
        let now = crate::clock::now_ms();
        self.tallies.add(
            Source {
                client: client.to_owned(),
                namespace: namespace.to_owned(),
                limit: Some(limit),
            },
            &Counts {
                calls: 1,
                items: items as u64,
                first_ms: now,
                last_ms: now,
                ..Counts::default()
            },
        );
    }
}

fn summaries(window: &Window<Source, Counts>) -> Vec<AuditEvent> {
    let mut events: Vec<AuditEvent> = window
        .sources
        .iter()
        .map(|(source, counts)| record(source, counts))
        .collect();
    // Oldest first, so that the trail reads in time order within a window.
    events.sort_by(|a, b| a.target.cmp(&b.target));
    if let Some(counts) = &window.overflow {
        let source = Source {
            client: String::new(),
            namespace: String::new(),
            limit: None,
        };
        let mut event = record(&source, counts);
        event.target = format!("sources=many {}", event.target);
        events.push(event);
    }
    events
}

fn record(source: &Source, c: &Counts) -> AuditEvent {
    let times = format!("first_ms={} last_ms={}", c.first_ms, c.last_ms);
    let (rpc, outcome, target) = match source.limit {
        None => (
            TOKENIZE_SUMMARY_RPC,
            0,
            format!(
                "{times} calls={} minted={} hits={} not_found={} failed={}",
                c.calls, c.minted, c.hits, c.not_found, c.failed
            ),
        ),
        Some(limit) => (
            LIMITED_SUMMARY_RPC,
            tonic::Code::ResourceExhausted as i32,
            format!("{times} calls={} limit={}", c.calls, limit.name()),
        ),
    };
    AuditEvent {
        client_id: source.client.clone(),
        authenticated: true,
        rpc: rpc.to_owned(),
        namespace: source.namespace.clone(),
        items: u32::try_from(c.items).unwrap_or(u32::MAX),
        outcome,
        target,
        ..AuditEvent::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_becomes_one_record_per_client_namespace_and_kind() {
        let activity = Activity::default();
        let counts = |minted, hits| TokenizeCounts {
            minted,
            hits,
            ..TokenizeCounts::default()
        };
        activity.tokenized("c1", "dob", 1000, counts(900, 100));
        activity.tokenized("c1", "dob", 1000, counts(1000, 0));
        activity.tokenized("c2", "dob", 10, counts(0, 10));
        activity.limited("c1", "dob", Limited::NewMappings, 1000);
        let events = summaries(&activity.tallies.take());
        assert_eq!(events.len(), 3);
        let c1 = events
            .iter()
            .find(|e| e.client_id == "c1" && e.rpc == TOKENIZE_SUMMARY_RPC)
            .expect("c1");
        assert_eq!(c1.items, 2000);
        assert!(
            c1.target
                .ends_with("calls=2 minted=1900 hits=100 not_found=0 failed=0"),
            "{}",
            c1.target
        );
        let limited = events
            .iter()
            .find(|e| e.rpc == LIMITED_SUMMARY_RPC)
            .expect("limited");
        assert_eq!(limited.outcome, 8);
        assert!(limited.target.ends_with("calls=1 limit=new-mappings"));
        assert!(events.iter().all(|e| e.authenticated));
    }
}
