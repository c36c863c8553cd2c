//! Alerts: something a security team should look at now. Each is an audit
//! record (`rpc` [`ALERT_RPC`], listed by `pvc alerts list`), a Prometheus
//! counter `phivault_alerts_total{kind}`, and a structured log line at
//! `warn` — none of them holds a value, a token or a key: an alert names the
//! client, the namespace, a count and the reason in words.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::{AuditEvent, Vault};

/// The `rpc` of an alert's audit record.
pub const ALERT_RPC: &str = "(alert)";

/// One alert.
#[derive(Debug, Clone)]
pub(crate) struct Alert {
    /// What raised it: `break-glass`, or a detector rule (`anomaly`,
    /// `sustained-rise`, `enumeration`, `domain-share`, `first-namespace`,
    /// `new-peer`).
    pub(crate) kind: &'static str,
    pub(crate) client_id: String,
    pub(crate) namespace: String,
    /// Items of the call that raised it.
    pub(crate) items: u32,
    /// Why, in words: what an operator reads in `pvc alerts list`.
    pub(crate) reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabel {
    kind: &'static str,
}

/// Raises alerts, and counts them for the metrics.
#[derive(Default)]
pub(crate) struct Alerts {
    pub(crate) raised: Family<KindLabel, Counter>,
    /// Where alerts are also sent, if anywhere.
    pub(crate) webhook: Option<super::webhook::Webhook>,
}

impl Alerts {
    /// Records `alert` in the audit trail, counts and logs it. A record that
    /// cannot be written is logged as an error: what raised the alert (a
    /// flagged reveal) is on record already.
    pub(crate) async fn raise(&self, vault: &Vault, alert: Alert) {
        self.raised
            .get_or_create(&KindLabel { kind: alert.kind })
            .inc();
        tracing::warn!(
            kind = alert.kind,
            client_id = %alert.client_id,
            namespace = %alert.namespace,
            items = alert.items,
            reason = %alert.reason,
            "alert"
        );
        if let Some(webhook) = &self.webhook {
            webhook.send(serde_json::json!({
                "kind": alert.kind,
                "client_id": alert.client_id,
                "namespace": alert.namespace,
                "items": alert.items,
                "reason": alert.reason,
                "time_ms": crate::clock::now_ms(),
            }));
        }
        let event = AuditEvent {
            client_id: alert.client_id,
            authenticated: true,
            rpc: ALERT_RPC.to_owned(),
            namespace: alert.namespace,
            items: alert.items,
            target: format!("kind={} {}", alert.kind, alert.reason),
            ..AuditEvent::default()
        };
        if let Err(e) = vault.audit(&event).await {
            tracing::error!(error = %e, kind = alert.kind, "an alert could not be recorded in the audit trail");
        }
    }
}
