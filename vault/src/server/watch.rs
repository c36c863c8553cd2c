//! Runs reveal-anomaly detection ([`crate::detect`]) on the calls this
//! node serves: each call is observed after it is answered, each window is
//! scored when it ends, and a finding becomes an alert — and, for a client
//! whose quarantine policy says so, a suspension that every node applies on
//! the client's next call until an administrator releases it.
//!
//! Detection watches what this node serves: on PostgreSQL each node learns
//! the baselines of the calls that reach it (a client spread over nodes is
//! seen in part by each), and its findings are on the one audit trail.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::alerts::{Alert, Alerts};
use crate::Vault;
use crate::auth::Client;
use crate::detect::{Detector, Finding, Observation};

/// Dates of birth over a century: the domain a date namespace is swept in.
const DATE_DOMAIN: u64 = 36_525;

/// The detector of this node and what it acts through.
pub(crate) struct Watch {
    detector: Mutex<Detector>,
    vault: Arc<Vault>,
    alerts: Arc<Alerts>,
    /// When each (client, kind) last raised an alert: at most one per
    /// window, so that a bulk run of a hundred flagged batches is one alert.
    raised: Mutex<HashMap<(String, &'static str), u64>>,
    window: Duration,
}

/// One call, as the server hands it to the detector.
pub(crate) struct Seen<'a> {
    pub(crate) namespace: &'a str,
    pub(crate) reveal: bool,
    pub(crate) masked: bool,
    pub(crate) marks: &'a [[u8; 32]],
    pub(crate) items: &'a [String],
    pub(crate) minted: u64,
    pub(crate) peer: Option<IpAddr>,
}

impl Watch {
    pub(crate) fn new(vault: Arc<Vault>, alerts: Arc<Alerts>, window: Duration) -> Self {
        Self {
            detector: Mutex::default(),
            vault,
            alerts,
            raised: Mutex::default(),
            window,
        }
    }

    /// Observes a call `client` made; acts on what the rules find in it.
    pub(crate) async fn observe(&self, client: &Client, call: Seen<'_>) {
        let domain = self
            .vault
            .namespace(call.namespace)
            .ok()
            .filter(|ns| ns.format.kind == crate::format::FormatKind::Date)
            .map(|_| DATE_DOMAIN);
        let observation = Observation {
            namespace: call.namespace,
            reveal: call.reveal,
            masked: call.masked,
            marks: call.marks,
            items: call.items,
            count: call.items.len(),
            minted: call.minted,
            domain,
            peer: call.peer,
        };
        let found = self
            .detector
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(&client.id, &observation, crate::clock::now_secs());
        for finding in found {
            self.act(&client.id, call.namespace, call.items.len(), finding)
                .await;
        }
    }

    /// Scores every client's window each `window` until `stop` resolves.
    pub(crate) async fn run(&self, window: Duration, stop: impl std::future::Future<Output = ()>) {
        super::every(window, stop, || self.score(window)).await;
    }

    /// Ends the window: scores it, forgets clients revoked or gone, and
    /// acts on what it found.
    async fn score(&self, window: Duration) {
        // The hour the window began in.
        let began = crate::clock::now_secs().saturating_sub(window.as_secs());
        let hour = (began % 86_400 / 3600) as usize;
        let found = {
            let mut detector = self.detector.lock().unwrap_or_else(|e| e.into_inner());
            let found = detector.close_window(hour);
            detector.retain(|id| {
                self.vault
                    .client(id)
                    .is_some_and(|c| c.revoked_at.is_none())
            });
            found
        };
        let now = crate::clock::now_secs();
        self.raised
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, at| *at + window.as_secs() > now);
        for (client, finding) in found {
            self.act(&client, "", 0, finding).await;
        }
    }

    /// Raises the alert of `finding`, and suspends the client if its policy
    /// says so.
    async fn act(&self, client_id: &str, namespace: &str, items: usize, finding: Finding) {
        let now = crate::clock::now_secs();
        {
            let mut raised = self.raised.lock().unwrap_or_else(|e| e.into_inner());
            let last = raised
                .entry((client_id.to_owned(), finding.kind()))
                .or_insert(0);
            if *last > 0 && now < *last + self.window.as_secs() {
                return;
            }
            *last = now;
        }
        let reason = finding.reason();
        self.alerts
            .raise(
                &self.vault,
                Alert {
                    kind: finding.kind(),
                    client_id: client_id.to_owned(),
                    namespace: namespace.to_owned(),
                    items: u32::try_from(items).unwrap_or(u32::MAX),
                    reason: reason.clone(),
                },
            )
            .await;
        let Some(client) = self.vault.client(client_id) else {
            return;
        };
        if !client.suspend_on_alert || client.suspended.is_some() {
            return;
        }
        let why = format!("{}: {reason}", finding.kind());
        let record = crate::AuditEvent {
            client_id: client_id.to_owned(),
            authenticated: true,
            rpc: SUSPENDED_RPC.to_owned(),
            target: why.clone(),
            ..crate::AuditEvent::default()
        };
        let change = Box::new(move |row: &mut crate::store::ClientRow| {
            if row.suspended.is_some() || row.revoked_at.is_some() {
                return false;
            }
            row.suspended = Some((now, why));
            true
        });
        match self
            .vault
            .update_client_with_record(client_id, change, Some(record))
            .await
        {
            Ok(_) => tracing::warn!(
                client_id,
                kind = finding.kind(),
                "client suspended by anomaly detection"
            ),
            Err(e) => tracing::error!(error = %e, client_id, "a client could not be suspended"),
        }
    }
}

/// The `rpc` of the record of a client's suspension.
pub const SUSPENDED_RPC: &str = "(client suspended by anomaly detection)";
