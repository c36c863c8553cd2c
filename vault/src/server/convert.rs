//! Conversions between wire messages and the core's types. The binary's
//! `status` uses the public ones to print a stopped vault the way the client
//! prints a served one (`phivault_proto::render`).

use phivault_proto::v1 as pb;
use tonic::Status;

use crate::auth::Client;
use crate::format::{DateOptions, FormatKind, FormatSpec};
use crate::{ItemResult, KeyStatus, KeysetState, Namespace, NamespaceSpec, RotationPhase};

pub(crate) fn item_results(results: Vec<ItemResult>) -> Vec<pb::ItemResult> {
    results
        .into_iter()
        .map(|r| pb::ItemResult {
            outcome: Some(match r {
                Ok(text) => pb::item_result::Outcome::Text(text),
                Err(e) => pb::item_result::Outcome::Error(pb::ItemError {
                    code: e.code.grpc_code(),
                    message: e.message,
                }),
            }),
        })
        .collect()
}

/// A namespace as the wire shows it.
pub fn namespace(ns: &Namespace) -> pb::Namespace {
    let f = &ns.format;
    pb::Namespace {
        name: ns.name.clone(),
        format: f.kind.as_str().to_owned(),
        options: Some(pb::FormatOptions {
            keep_prefix: Some(f.keep_prefix.into()),
            keep_suffix: Some(f.keep_suffix.into()),
            date_pattern: f.date.as_ref().map(|d| d.pattern.clone()),
            token_year_min: f.date.as_ref().map(|d| d.token_year_min.into()),
            token_year_max: f.date.as_ref().map(|d| d.token_year_max.into()),
            value_year_min: f.date.as_ref().map(|d| d.value_year_min.into()),
            value_year_max: f.date.as_ref().map(|d| d.value_year_max.into()),
        }),
        deterministic: ns.deterministic,
        created_at: i64::try_from(ns.created_at).unwrap_or(i64::MAX),
    }
}

impl TryFrom<pb::CreateNamespaceRequest> for NamespaceSpec {
    type Error = Status;

    fn try_from(request: pb::CreateNamespaceRequest) -> Result<Self, Status> {
        let kind: FormatKind = request.format.parse().map_err(Status::invalid_argument)?;
        let mut format = FormatSpec::new(kind);
        let options = request.options.unwrap_or_default();
        let small = |n: Option<u32>, what: &str| -> Result<Option<u16>, Status> {
            n.map(|n| {
                u16::try_from(n)
                    .map_err(|_| Status::invalid_argument(format!("{what} is out of range")))
            })
            .transpose()
        };
        if let Some(n) = small(options.keep_prefix, "keep_prefix")? {
            format.keep_prefix = n;
        }
        if let Some(n) = small(options.keep_suffix, "keep_suffix")? {
            format.keep_suffix = n;
        }
        let year_min = small(options.token_year_min, "token_year_min")?;
        let year_max = small(options.token_year_max, "token_year_max")?;
        let value_min = small(options.value_year_min, "value_year_min")?;
        let value_max = small(options.value_year_max, "value_year_max")?;
        let set = [year_min, year_max, value_min, value_max];
        if options.date_pattern.is_some() || set.iter().any(Option::is_some) {
            let defaults = DateOptions::default();
            format.date = Some(DateOptions {
                pattern: options.date_pattern.unwrap_or(defaults.pattern),
                token_year_min: year_min.unwrap_or(defaults.token_year_min),
                token_year_max: year_max.unwrap_or(defaults.token_year_max),
                value_year_min: value_min.unwrap_or(defaults.value_year_min),
                value_year_max: value_max.unwrap_or(defaults.value_year_max),
            });
        }
        let spec = NamespaceSpec {
            name: request.name,
            format,
            deterministic: !request.random,
        };
        Ok(spec)
    }
}

/// A client as the wire shows it (no key: none is kept).
pub fn client(c: &Client) -> pb::Client {
    pb::Client {
        client_id: c.id.clone(),
        name: c.name.clone(),
        scopes: c.scopes.iter().map(ToString::to_string).collect(),
        revoked: c.revoked_at.is_some(),
        limits: c.limits.written(),
        require_purpose: c.require_purpose,
        break_glass_opened_at: c.break_glass_opened_at.unwrap_or(0),
        expires_at: c.expires_at.unwrap_or(0),
        previous_key_valid_until: c.previous_key_valid_until.unwrap_or(0),
        suspend_on_alert: c.suspend_on_alert,
        suspended_at: c.suspended.as_ref().map_or(0, |(at, _)| *at),
        suspended_reason: c
            .suspended
            .as_ref()
            .map(|(_, why)| why.clone())
            .unwrap_or_default(),
    }
}

fn timestamp(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX)
}

/// The keysets and rotations as the wire shows them.
pub fn key_status(status: &KeyStatus) -> pb::KeyStatus {
    pb::KeyStatus {
        active_version: status.active,
        versions: status
            .versions
            .iter()
            .map(|v| {
                let (state, destroyed_at) = match v.state {
                    KeysetState::Active => ("active", 0),
                    KeysetState::Retiring => ("retiring", 0),
                    KeysetState::Destroyed { at } => ("destroyed", timestamp(at)),
                };
                pb::KeyVersion {
                    version: v.version,
                    state: state.into(),
                    created_at: timestamp(v.created_at),
                    destroyed_at,
                }
            })
            .collect(),
        rotation: status.rotation.as_ref().map(|r| pb::RotationProgress {
            target_version: r.target,
            phase: match (r.phase, r.pass) {
                (RotationPhase::Migrating, 1) => "re-encrypting",
                (RotationPhase::Migrating, _) => "verifying",
                (RotationPhase::Compacting, _) => "compacting",
            }
            .into(),
            done: r.done,
            total: r.total,
            rate: r.rate,
            eta_seconds: r.eta.map(|d| d.as_secs_f64()),
            started_at: timestamp(r.started_at),
            damaged: r.damaged,
        }),
        last_rotation: status.last_rotation.map(|l| pb::LastRotation {
            target_version: l.target,
            started_at: timestamp(l.started_at),
            finished_at: timestamp(l.finished_at),
            mappings: l.mappings,
        }),
    }
}

pub(crate) fn disclosure(d: &crate::Disclosure) -> pb::Disclosure {
    pb::Disclosure {
        seq: d.seq,
        time_ms: d.time_ms,
        client_id: d.client_id.clone(),
        client_name: d.client_name.clone(),
        rpc: d.rpc.clone(),
        request_id: d.request_id.clone(),
        masked: d.masked,
        keyset_version: d.keyset_version,
        purpose: d.purpose.clone(),
        reason: d.reason.clone(),
        break_glass: d.break_glass,
    }
}

pub(crate) fn audit_record(r: &crate::AuditRecord) -> pb::AuditRecord {
    let e = &r.event;
    pb::AuditRecord {
        seq: r.seq,
        time_ms: r.time_ms,
        client_id: e.client_id.clone(),
        authenticated: e.authenticated,
        rpc: e.rpc.clone(),
        namespace: e.namespace.clone(),
        items: e.items,
        outcome: e.outcome,
        request_id: e.request_id.clone(),
        keyset_version: r.keyset_version,
        target: e.target.clone(),
        masked: e.masked,
        tokens: e
            .tokens
            .iter()
            .map(|t| pb::TokenMark {
                mac: t.mac.to_vec(),
                revealed: t.revealed,
            })
            .collect(),
        prev_hash: r.prev_hash.to_vec(),
        hash: r.hash.to_vec(),
        purpose: e.purpose.clone(),
        reason: e.reason.clone(),
        break_glass: e.break_glass,
    }
}
