//! How both binaries print the vault's registry and key state: one line of
//! text, or one JSON object, per message. `phivault status` (which reads a
//! stopped vault) converts to these messages and prints through here, as
//! `phivault-client` does with what the server sends, so the two never
//! disagree about how a namespace, a client or the keys look.
//!
//! Nothing here prints a value, token or API key: none of these messages
//! carries one.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::v1::{Client, KeyStatus, Namespace};

/// A namespace as one JSON object.
pub fn namespace_json(ns: &Namespace) -> Value {
    let o = ns.options.clone().unwrap_or_default();
    json!({
        "name": ns.name, "format": ns.format, "deterministic": ns.deterministic,
        "created_at": ns.created_at, "keep_prefix": o.keep_prefix,
        "keep_suffix": o.keep_suffix, "date_pattern": o.date_pattern,
        "token_year_min": o.token_year_min, "token_year_max": o.token_year_max,
    })
}

/// A namespace as one line: name, format, mode and the options set.
pub fn namespace_line(ns: &Namespace) -> String {
    let mode = if ns.deterministic {
        "deterministic"
    } else {
        "random"
    };
    let o = ns.options.clone().unwrap_or_default();
    let mut options = Vec::new();
    if let Some(n) = o.keep_prefix.filter(|&n| n > 0) {
        options.push(format!("keep_prefix={n}"));
    }
    if let Some(n) = o.keep_suffix.filter(|&n| n > 0) {
        options.push(format!("keep_suffix={n}"));
    }
    if let Some(pattern) = &o.date_pattern {
        options.push(format!("pattern={pattern}"));
    }
    if let (Some(min), Some(max)) = (o.token_year_min, o.token_year_max) {
        options.push(format!("years={min}-{max}"));
    }
    format!(
        "{:<16} {:<7} {mode:<14} {}",
        ns.name,
        ns.format,
        options.join(" ")
    )
    .trim_end()
    .to_owned()
}

/// A client as one JSON object (its API key is never part of it).
pub fn client_json(c: &Client) -> Value {
    json!({
        "client_id": c.client_id, "name": c.name, "scopes": c.scopes, "revoked": c.revoked,
        "limits": c.limits, "require_purpose": c.require_purpose,
        "break_glass_opened_at": (c.break_glass_opened_at > 0).then_some(c.break_glass_opened_at),
        "expires_at": (c.expires_at > 0).then_some(c.expires_at),
        "previous_key_valid_until": (c.previous_key_valid_until > 0).then_some(c.previous_key_valid_until),
        "quarantine": if c.suspend_on_alert { "suspend" } else { "alert" },
        "suspended_at": (c.suspended_at > 0).then_some(c.suspended_at),
        "suspended_reason": (c.suspended_at > 0).then_some(&c.suspended_reason),
    })
}

/// A client as one line: id, name, state and scopes.
pub fn client_line(c: &Client) -> String {
    let state = if c.revoked {
        "revoked"
    } else if c.suspended_at > 0 {
        "suspended"
    } else {
        "active"
    };
    let limits = if c.limits.is_empty() {
        String::new()
    } else {
        format!(" limits: {}", c.limits.join(" "))
    };
    format!(
        "{} {:<20} {:<8} {}{limits}",
        c.client_id,
        c.name,
        state,
        c.scopes.join(" ")
    )
}

/// The keysets and rotations as one JSON object.
pub fn key_status_json(s: &KeyStatus) -> Value {
    let versions: Vec<_> = s
        .versions
        .iter()
        .map(|v| json!({ "version": v.version, "state": v.state, "created_at": v.created_at, "destroyed_at": v.destroyed_at }))
        .collect();
    let rotation = s.rotation.as_ref().map(|r| {
        json!({
            "target_version": r.target_version, "phase": r.phase, "done": r.done, "total": r.total,
            "rate": r.rate, "eta_seconds": r.eta_seconds, "started_at": r.started_at, "damaged": r.damaged,
        })
    });
    let last = s.last_rotation.as_ref().map(|l| {
        json!({ "target_version": l.target_version, "started_at": l.started_at, "finished_at": l.finished_at, "mappings": l.mappings })
    });
    json!({ "active_version": s.active_version, "versions": versions, "rotation": rotation, "last_rotation": last })
}

/// The keysets and rotations as lines of text, each ending in a newline.
pub fn key_status_text(s: &KeyStatus) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(out, "active keyset: {}", s.active_version);
    for v in &s.versions {
        let _ = writeln!(
            out,
            "  keyset {:<4} {:<10} created {}",
            v.version, v.state, v.created_at
        );
    }
    match &s.rotation {
        Some(r) => {
            let eta = r
                .eta_seconds
                .map_or_else(|| "-".to_owned(), |e| format!("{e:.0}s"));
            let _ = writeln!(
                out,
                "rotation to keyset {}: {} {}/{} mappings, {:.0}/s, ETA {eta}",
                r.target_version, r.phase, r.done, r.total, r.rate
            );
            if r.damaged > 0 {
                let _ = writeln!(
                    out,
                    "  {} damaged rows could not be moved (run `phivault verify`)",
                    r.damaged
                );
            }
        }
        None => {
            let _ = writeln!(out, "no rotation running");
        }
    }
    if let Some(l) = &s.last_rotation {
        let _ = writeln!(
            out,
            "last rotation: to keyset {}, {} mappings, finished {} (old keys destroyed, compacted)",
            l.target_version, l.mappings, l.finished_at
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{FormatOptions, KeyVersion};

    #[test]
    fn lines_show_what_is_set_and_json_carries_every_field() {
        let ns = Namespace {
            name: "dob".into(),
            format: "date".into(),
            deterministic: true,
            created_at: 5,
            options: Some(FormatOptions {
                date_pattern: Some("%Y-%m-%d".into()),
                token_year_min: Some(1900),
                token_year_max: Some(2000),
                ..FormatOptions::default()
            }),
        };
        assert_eq!(
            namespace_line(&ns),
            "dob              date    deterministic  pattern=%Y-%m-%d years=1900-2000"
        );
        assert_eq!(namespace_json(&ns)["date_pattern"], "%Y-%m-%d");
        let status = KeyStatus {
            active_version: 2,
            versions: vec![KeyVersion {
                version: 2,
                state: "active".into(),
                created_at: 9,
                destroyed_at: 0,
            }],
            rotation: None,
            last_rotation: None,
        };
        assert_eq!(
            key_status_text(&status),
            "active keyset: 2\n  keyset 2    active     created 9\nno rotation running\n"
        );
        assert_eq!(key_status_json(&status)["active_version"], 2);
    }
}
