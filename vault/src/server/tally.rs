//! Counts kept in memory per source and written to the audit trail as a
//! bounded number of summary records per window: unauthenticated refusals
//! ([`super::refusals`]), tokenize calls and calls over a limit
//! ([`super::activity`]). Calls that are many and cheap are on record this
//! way without a disk write each.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use crate::{AuditEvent, Vault};

/// What one source's tally holds: counts that add up, and the times of its
/// first and last call.
pub(crate) trait Tally: Clone + Send {
    /// Adds `other`'s counts to these.
    fn add(&mut self, other: &Self);
}

/// One window's tallies: up to `max_sources` sources, the calls of any
/// further source in `overflow`.
pub(crate) struct Window<K, V> {
    pub(crate) sources: HashMap<K, V>,
    pub(crate) overflow: Option<V>,
}

impl<K, V> Default for Window<K, V> {
    fn default() -> Self {
        Self {
            sources: HashMap::new(),
            overflow: None,
        }
    }
}

/// Makes a window's records.
pub(crate) type Summaries<K, V> = fn(&Window<K, V>) -> Vec<AuditEvent>;

/// The tallies of the current window.
pub(crate) struct Tallies<K, V> {
    window: Mutex<Window<K, V>>,
    max_sources: usize,
    /// What the tallies count, for the log.
    what: &'static str,
    summaries: Summaries<K, V>,
}

fn merge<V: Tally>(into: &mut Option<V>, tally: &V) {
    match into {
        Some(kept) => kept.add(tally),
        None => *into = Some(tally.clone()),
    }
}

impl<K: Eq + Hash + Send, V: Tally> Tallies<K, V> {
    /// Tallies of at most `max_sources` sources per window, of `what`,
    /// written as the records `summaries` makes of a window.
    pub(crate) fn new(max_sources: usize, what: &'static str, summaries: Summaries<K, V>) -> Self {
        Self {
            window: Mutex::new(Window::default()),
            max_sources,
            what,
            summaries,
        }
    }

    /// Adds `tally` to `source`'s.
    pub(crate) fn add(&self, source: K, tally: &V) {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        self.merge_into(&mut window, source, tally);
    }

    fn merge_into(&self, window: &mut Window<K, V>, source: K, tally: &V) {
        let full = window.sources.len() >= self.max_sources;
        match window.sources.get_mut(&source) {
            Some(kept) => kept.add(tally),
            None if full => merge(&mut window.overflow, tally),
            None => {
                window.sources.insert(source, tally.clone());
            }
        }
    }

    /// The window so far; a new one starts.
    pub(crate) fn take(&self) -> Window<K, V> {
        std::mem::take(&mut *self.window.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Puts back a window whose records could not be written, into the
    /// current one (the caps still hold).
    pub(crate) fn restore(&self, taken: Window<K, V>) {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        for (source, tally) in taken.sources {
            self.merge_into(&mut window, source, &tally);
        }
        if let Some(tally) = taken.overflow {
            merge(&mut window.overflow, &tally);
        }
    }

    /// Writes the window's tallies as summary records and starts a new
    /// window. If the records cannot be written the tallies are kept for
    /// the next attempt (the caps still hold: they are merged back).
    pub(crate) async fn flush(&self, vault: &Vault) {
        let (what, taken) = (self.what, self.take());
        let events = (self.summaries)(&taken);
        if events.is_empty() {
            return;
        }
        match vault.audit_batch(&events).await {
            Ok(()) => {
                tracing::info!(
                    records = events.len(),
                    what,
                    "summarised in the audit trail"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, what, "summaries could not be written; kept for the next window");
                self.restore(taken);
            }
        }
    }
}

impl<K: Eq + Hash + Send, V: Tally> Tallies<K, V> {
    /// Flushes every `window` until `stop` resolves, then once more.
    pub(crate) async fn run(
        &self,
        vault: &Vault,
        window: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        super::every(window, stop, || self.flush(vault)).await;
        self.flush(vault).await;
    }
}
