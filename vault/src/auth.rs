//! Clients, API keys and scopes.
//!
//! An API key is `pv_<client-id>_<secret>`: 8 random bytes of id and 32 of
//! secret, hex-encoded. Only the SHA-256 of the secret is stored; the key is
//! shown once, when the client is created. Authentication compares digests
//! in constant time against an in-memory copy of the `clients` column
//! family, so it costs no disk read, and a revocation takes effect on the
//! client's next call.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::crypto::{self, CryptoError};
use crate::hex::hex;

const KEY_PREFIX: &str = "pv_";
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;

/// Which namespaces a scope covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NamespacePattern {
    /// `*`: every namespace, present and future.
    Any,
    /// One namespace by name.
    Exact(String),
}

impl NamespacePattern {
    fn matches(&self, namespace: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(name) => name == namespace,
        }
    }
}

/// A permission. Default deny: a client may do exactly what its scopes say.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `tokenize:<ns>`
    Tokenize(NamespacePattern),
    /// `lookup:<ns>`: tokenize values already in the vault, never mint a
    /// token: for consumers that only join on tokens others made, so that
    /// the credential cannot grow the vault or enumerate a small domain by
    /// minting (a value not there is answered `NOT_FOUND`).
    Lookup(NamespacePattern),
    /// `detokenize:<ns>`: full reveal (masked reveal too).
    Detokenize(NamespacePattern),
    /// `detokenize-masked:<ns>`: reveal with all but the last 4 characters
    /// masked.
    DetokenizeMasked(NamespacePattern),
    /// `break-glass:<ns>`: reveal in full, beyond the client's other scopes
    /// and its rate limits, when a call states an emergency purpose (ETREAT
    /// or BTG) — each such reveal flagged and alerted, within a window that
    /// an administrator re-arms (see [`crate::purpose`]).
    BreakGlass(NamespacePattern),
    /// `admin`: namespaces, clients and keys.
    Admin,
    /// `audit`: read the audit trail. Not implied by `admin` (for clients
    /// created since duties were separated; see [`Client::separated`]).
    Audit,
    /// `grant`: create clients that may reveal (`detokenize`,
    /// `detokenize-masked`, `break-glass`) or grant. Not implied by `admin`,
    /// so that an administrator cannot give itself a reveal.
    Grant,
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => return Ok(Self::Admin),
            "audit" => return Ok(Self::Audit),
            "grant" => return Ok(Self::Grant),
            _ => {}
        }
        let (kind, namespace) = s
            .split_once(':')
            .ok_or_else(|| format!("unknown scope {s:?}; expected tokenize:<ns>, lookup:<ns>, detokenize:<ns>, detokenize-masked:<ns>, break-glass:<ns>, admin, audit or grant"))?;
        let pattern = match namespace {
            "*" => NamespacePattern::Any,
            name if crate::NamespaceSpec::valid_name(name) => {
                NamespacePattern::Exact(name.to_owned())
            }
            _ => {
                return Err(format!(
                    "scope {s:?} names no valid namespace (a name, or * for every namespace)"
                ));
            }
        };
        match kind {
            "tokenize" => Ok(Self::Tokenize(pattern)),
            "lookup" => Ok(Self::Lookup(pattern)),
            "detokenize" => Ok(Self::Detokenize(pattern)),
            "detokenize-masked" => Ok(Self::DetokenizeMasked(pattern)),
            "break-glass" => Ok(Self::BreakGlass(pattern)),
            _ => Err(format!(
                "unknown scope {s:?}; expected tokenize:<ns>, lookup:<ns>, detokenize:<ns>, detokenize-masked:<ns>, break-glass:<ns>, admin, audit or grant"
            )),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, pattern) = match self {
            Self::Admin => return f.write_str("admin"),
            Self::Audit => return f.write_str("audit"),
            Self::Grant => return f.write_str("grant"),
            Self::Tokenize(p) => ("tokenize", p),
            Self::Lookup(p) => ("lookup", p),
            Self::Detokenize(p) => ("detokenize", p),
            Self::DetokenizeMasked(p) => ("detokenize-masked", p),
            Self::BreakGlass(p) => ("break-glass", p),
        };
        match pattern {
            NamespacePattern::Any => write!(f, "{kind}:*"),
            NamespacePattern::Exact(name) => write!(f, "{kind}:{name}"),
        }
    }
}

/// Whether a client with `scopes` may reveal, grant or read the audit
/// trail: creating it needs the `grant` scope.
pub fn needs_grant(scopes: &[Scope]) -> bool {
    scopes.iter().any(|s| {
        matches!(
            s,
            Scope::Detokenize(_)
                | Scope::DetokenizeMasked(_)
                | Scope::BreakGlass(_)
                | Scope::Grant
                | Scope::Audit
        )
    })
}

/// Namespace patterns that overlap: one namespace both name.
fn overlap(a: &NamespacePattern, b: &NamespacePattern) -> Option<String> {
    match (a, b) {
        (NamespacePattern::Any, NamespacePattern::Any) => Some("*".into()),
        (NamespacePattern::Any, NamespacePattern::Exact(n))
        | (NamespacePattern::Exact(n), NamespacePattern::Any) => Some(n.clone()),
        (NamespacePattern::Exact(x), NamespacePattern::Exact(y)) => (x == y).then(|| x.clone()),
    }
}

/// The namespace on which `scopes` grant a masked reveal (but not a full
/// one) together with tokenize or lookup, if any: together they reveal the
/// full value, since the visible last characters leave few candidates and
/// tokenize checks each against the token (an SSN's last 4 leave 10^5).
pub fn masked_oracle(scopes: &[Scope]) -> Option<String> {
    // A full reveal on the namespace (on every one, for `*`).
    let full = |ns: &str| {
        scopes.iter().any(|s| match s {
            Scope::Detokenize(NamespacePattern::Any) => true,
            Scope::Detokenize(p) => ns != "*" && p.matches(ns),
            _ => false,
        })
    };
    scopes.iter().find_map(|masked| {
        let Scope::DetokenizeMasked(m) = masked else {
            return None;
        };
        scopes.iter().find_map(|checker| match checker {
            Scope::Tokenize(t) | Scope::Lookup(t) => overlap(m, t).filter(|ns| !full(ns)),
            _ => None,
        })
    })
}

/// What a caller is asking to do, checked against its scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// Tokenize in a namespace: mint tokens for new values (`tokenize`), or
    /// only look up existing ones (`lookup`; see [`Client::may_mint`]).
    Tokenize(&'a str),
    /// Reveal values in full.
    Detokenize(&'a str),
    /// Reveal masked values.
    DetokenizeMasked(&'a str),
    /// Reveal, full or masked, stating an emergency purpose: allowed by a
    /// `break-glass` scope, or by the scope the reveal needs anyway.
    BreakGlass {
        /// The namespace.
        namespace: &'a str,
        /// A masked reveal.
        masked: bool,
    },
    /// Administer the vault.
    Admin,
    /// Read the audit trail.
    Audit,
    /// Grant a reveal (create a client that may reveal or grant).
    Grant,
}

/// A client of the vault as the API shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Client {
    /// 16 hex digits.
    pub id: String,
    /// A human name (`billing-service`).
    pub name: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// When it was revoked, if it was.
    pub revoked_at: Option<u64>,
    /// Its own rate limits and quotas; what it leaves out, the server's
    /// defaults decide.
    pub limits: crate::limits::Limits,
    /// Its reveals must state a purpose of use.
    pub require_purpose: bool,
    /// When its break-glass window opened (seconds since the Unix epoch),
    /// until an administrator re-arms it.
    pub break_glass_opened_at: Option<u64>,
    /// Created since duties were separated: its `admin` scope is only
    /// administration. A client from before keeps what `admin` meant then
    /// (reading the audit trail and granting too).
    pub separated: bool,
    /// When its API key stops being accepted, if it expires.
    pub expires_at: Option<u64>,
    /// Until when the key a rotation retired is still accepted.
    pub previous_key_valid_until: Option<u64>,
    /// Its row's version, raised by every change.
    pub version: u64,
    /// Suspended when the detector raises an alert about it.
    pub suspend_on_alert: bool,
    /// When it was suspended and why, until an administrator releases it.
    pub suspended: Option<(u64, String)>,
}

impl Client {
    /// Whether the client may perform `action`.
    pub fn allows(&self, action: Action<'_>) -> bool {
        self.scopes.iter().any(|scope| match (scope, action) {
            (Scope::Admin, Action::Admin) => true,
            (Scope::Admin, Action::Audit | Action::Grant) => !self.separated,
            (Scope::Audit, Action::Audit) => true,
            (Scope::Grant, Action::Grant) => true,
            (Scope::Tokenize(p) | Scope::Lookup(p), Action::Tokenize(ns)) => p.matches(ns),
            (Scope::Detokenize(p), Action::Detokenize(ns) | Action::DetokenizeMasked(ns)) => {
                p.matches(ns)
            }
            (Scope::DetokenizeMasked(p), Action::DetokenizeMasked(ns)) => p.matches(ns),
            (Scope::BreakGlass(p), Action::BreakGlass { namespace, .. }) => p.matches(namespace),
            (Scope::Detokenize(p), Action::BreakGlass { namespace: ns, .. })
            | (
                Scope::DetokenizeMasked(p),
                Action::BreakGlass {
                    namespace: ns,
                    masked: true,
                },
            ) => p.matches(ns),
            _ => false,
        })
    }

    /// Whether an emergency reveal in `ns` (`masked` or not) breaks the
    /// glass: the client has a `break-glass` scope for it, and no scope that
    /// allows the reveal anyway (such a client reveals as usual, its purpose
    /// recorded).
    pub fn breaks_glass_in(&self, ns: &str, masked: bool) -> bool {
        let normal = self.scopes.iter().any(|s| match s {
            Scope::Detokenize(p) => p.matches(ns),
            Scope::DetokenizeMasked(p) => masked && p.matches(ns),
            _ => false,
        });
        !normal
            && self
                .scopes
                .iter()
                .any(|s| matches!(s, Scope::BreakGlass(p) if p.matches(ns)))
    }

    /// Whether the client may reveal, grant or read the audit trail by any
    /// of its scopes, an `admin` of before separated duties included: a
    /// new key for it, or lifting its suspension, needs `grant`.
    pub fn is_privileged(&self) -> bool {
        needs_grant(&self.scopes) || self.allows(Action::Grant) || self.allows(Action::Audit)
    }

    /// Whether a tokenize in `ns` may mint tokens for values not in the
    /// vault (a `tokenize` scope), or only look up existing ones (`lookup`).
    pub fn may_mint(&self, ns: &str) -> bool {
        self.scopes
            .iter()
            .any(|scope| matches!(scope, Scope::Tokenize(p) if p.matches(ns)))
    }
}

/// A client as stored.
pub(crate) use crate::store::ClientRow as ClientRecord;

impl ClientRecord {
    pub(crate) fn to_client(&self, id: &str) -> Result<Client, String> {
        let scopes = self
            .scopes
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()?;
        Ok(Client {
            id: id.to_owned(),
            name: self.name.clone(),
            scopes,
            created_at: self.created_at,
            revoked_at: self.revoked_at,
            limits: self.limits.clone(),
            require_purpose: self.require_purpose,
            break_glass_opened_at: self.break_glass_opened_at,
            separated: self.separated,
            expires_at: self.expires_at,
            previous_key_valid_until: self
                .previous_secret_sha256
                .as_ref()
                .and(self.previous_valid_until),
            version: self.version,
            suspend_on_alert: self.suspend_on_alert,
            suspended: self.suspended.clone(),
        })
    }
}

/// A freshly minted API key. Printed once; never stored.
pub struct ApiKey(Zeroizing<String>);

impl ApiKey {
    /// The key text, `pv_<client-id>_<secret>`.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A new client id, API key and the digest to store.
pub(crate) fn mint_key() -> Result<(String, ApiKey, String), CryptoError> {
    let mut id = [0u8; ID_BYTES];
    crypto::fill_random(&mut id)?;
    let id = hex(&id);
    let (key, digest) = mint_secret(&id)?;
    Ok((id, key, digest))
}

/// A new API key for client `id`, and the digest to store.
pub(crate) fn mint_secret(id: &str) -> Result<(ApiKey, String), CryptoError> {
    let mut secret = Zeroizing::new([0u8; SECRET_BYTES]);
    crypto::fill_random(&mut secret[..])?;
    let secret = Zeroizing::new(hex(&secret[..]));
    let digest = hex(&Sha256::digest(secret.as_bytes()));
    let key = ApiKey(Zeroizing::new(format!(
        "{KEY_PREFIX}{id}_{}",
        secret.as_str()
    )));
    Ok((key, digest))
}

/// The client id an `authorization` header claims, when the key is
/// well-formed (`Bearer pv_<16 hex digits>_<64 hex digits>`); never any part
/// of the secret. The audit trail records who a refused key claimed to be.
pub fn claimed_client_id(header: Option<&str>) -> Option<&str> {
    let (id, secret) = header?
        .strip_prefix("Bearer ")?
        .strip_prefix(KEY_PREFIX)?
        .split_once('_')?;
    let hex_of = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex_of(id, 2 * ID_BYTES) && hex_of(secret, 2 * SECRET_BYTES)).then_some(id)
}

/// Why a caller could not be authenticated. Deliberately uninformative to the
/// caller: missing, malformed, unknown and revoked keys all look alike on the
/// wire, and only the server log tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `authorization` metadata.
    #[error("no API key")]
    Missing,
    /// Not `Bearer pv_<id>_<secret>`.
    #[error("malformed API key")]
    Malformed,
    /// No client with that id, or the secret does not match.
    #[error("unknown API key")]
    Unknown,
    /// The client was revoked.
    #[error("revoked API key")]
    Revoked,
    /// The key's time ran out (or, for a key a rotation retired, its grace
    /// period).
    #[error("expired API key")]
    Expired,
}

/// The digests of the keys a client's calls may carry: the current one,
/// and one a rotation retired, until its grace period ends.
#[derive(Clone, Copy)]
struct Keys {
    current: [u8; 32],
    previous: Option<([u8; 32], u64)>,
}

fn digest_of(hex_digest: &str) -> [u8; 32] {
    let mut digest = [0u8; 32];
    for (out, pair) in digest.iter_mut().zip(hex_digest.as_bytes().chunks_exact(2)) {
        *out = std::str::from_utf8(pair)
            .ok()
            .and_then(|p| u8::from_str_radix(p, 16).ok())
            .unwrap_or(0);
    }
    digest
}

/// The in-memory view of every client, keyed by id. Records are shared
/// (`Arc`) so that authenticating a call copies no strings or scopes.
#[derive(Default)]
pub(crate) struct ClientTable {
    by_id: HashMap<String, (Arc<Client>, Keys)>,
}

impl ClientTable {
    /// Puts client `id` as `row` stores it (new, or in place of what the
    /// table held), keys included; the client as the API shows it.
    pub(crate) fn put(&mut self, id: &str, row: &ClientRecord) -> Result<Client, String> {
        let client = row.to_client(id)?;
        let keys = Keys {
            current: digest_of(&row.secret_sha256),
            previous: row
                .previous_secret_sha256
                .as_deref()
                .zip(row.previous_valid_until)
                .map(|(digest, until)| (digest_of(digest), until)),
        };
        self.by_id
            .insert(id.to_owned(), (Arc::new(client.clone()), keys));
        Ok(client)
    }

    pub(crate) fn get(&self, id: &str) -> Option<Arc<Client>> {
        self.by_id.get(id).map(|(client, _)| Arc::clone(client))
    }

    pub(crate) fn all(&self) -> Vec<Client> {
        let mut all: Vec<Client> = self.by_id.values().map(|(c, _)| Client::clone(c)).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
        all
    }

    /// Checks `authorization` metadata (`Bearer pv_<id>_<secret>`).
    pub(crate) fn authenticate(&self, header: Option<&str>) -> Result<Arc<Client>, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let key = header.strip_prefix("Bearer ").ok_or(AuthError::Malformed)?;
        let (id, secret) = key
            .strip_prefix(KEY_PREFIX)
            .and_then(|rest| rest.split_once('_'))
            .filter(|(id, secret)| id.len() == 2 * ID_BYTES && secret.len() == 2 * SECRET_BYTES)
            .ok_or(AuthError::Malformed)?;
        let digest = Sha256::digest(secret.as_bytes());
        let (client, keys) = self.by_id.get(id).ok_or(AuthError::Unknown)?;
        let now = crate::clock::now_secs();
        let current = bool::from(digest.as_slice().ct_eq(&keys.current));
        let retired = keys
            .previous
            .map(|(previous, until)| (bool::from(digest.as_slice().ct_eq(&previous)), until));
        match (current, retired) {
            (true, _) => {}
            (false, Some((true, until))) if now < until => {}
            (false, Some((true, _))) => return Err(AuthError::Expired),
            _ => return Err(AuthError::Unknown),
        }
        if client.revoked_at.is_some() {
            return Err(AuthError::Revoked);
        }
        if client.expires_at.is_some_and(|at| now >= at) {
            return Err(AuthError::Expired);
        }
        Ok(Arc::clone(client))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_well_formed_key_claims_an_id() {
        let secret = "ab".repeat(SECRET_BYTES);
        let key = format!("Bearer pv_0123456789abcdef_{secret}");
        assert_eq!(claimed_client_id(Some(&key)), Some("0123456789abcdef"));
        for bad in [
            "Bearer pv_0123456789abcdef_short".to_owned(),
            format!("Bearer pv_0123456789abcdeX_{secret}"),
            format!("pv_0123456789abcdef_{secret}"),
            "Bearer 078-05-1120".to_owned(),
        ] {
            assert_eq!(claimed_client_id(Some(&bad)), None, "{bad}");
        }
        assert_eq!(claimed_client_id(None), None);
    }

    #[test]
    fn scopes_round_trip_and_reject_nonsense() {
        for s in [
            "tokenize:ssn",
            "lookup:mrn",
            "detokenize:*",
            "detokenize-masked:ssn-research",
            "admin",
            "audit",
        ] {
            assert_eq!(s.parse::<Scope>().map(|x| x.to_string()).as_deref(), Ok(s));
        }
        for bad in [
            "tokenize",
            "tokenize:",
            "reveal:ssn",
            "tokenize:SSN",
            "admin:*",
            "*",
        ] {
            assert!(bad.parse::<Scope>().is_err(), "{bad}");
        }
    }

    #[test]
    fn scopes_grant_exactly_what_they_say() {
        let client = |scopes: &[&str]| Client {
            id: "0".repeat(16),
            name: "t".into(),
            scopes: scopes.iter().map(|s| s.parse().expect("scope")).collect(),
            separated: true,
            ..Client::default()
        };
        let masked = client(&["detokenize-masked:ssn"]);
        assert!(masked.allows(Action::DetokenizeMasked("ssn")));
        assert!(!masked.allows(Action::Detokenize("ssn")));
        assert!(!masked.allows(Action::DetokenizeMasked("email")));
        let full = client(&["detokenize:*"]);
        assert!(
            full.allows(Action::Detokenize("email"))
                && full.allows(Action::DetokenizeMasked("ssn"))
        );
        assert!(!full.allows(Action::Tokenize("ssn")));
        let admin = client(&["admin"]);
        assert!(admin.allows(Action::Admin));
        assert!(!admin.allows(Action::Audit) && !admin.allows(Action::Grant));
        let legacy = Client {
            separated: false,
            ..admin.clone()
        };
        assert!(legacy.allows(Action::Audit) && legacy.allows(Action::Grant));
        // Break-glass: a masked emergency reveal by a client that may see
        // masked values anyway breaks nothing; a full one does.
        let desk = client(&["detokenize-masked:ssn", "break-glass:ssn"]);
        assert!(!desk.breaks_glass_in("ssn", true) && desk.breaks_glass_in("ssn", false));
        assert!(!client(&["detokenize:ssn", "break-glass:ssn"]).breaks_glass_in("ssn", false));
        assert!(!admin.allows(Action::Tokenize("ssn")) && !admin.allows(Action::Detokenize("ssn")));
        assert!(!client(&[]).allows(Action::Tokenize("ssn")));
        let joiner = client(&["lookup:ssn", "tokenize:mrn"]);
        assert!(joiner.allows(Action::Tokenize("ssn")) && !joiner.may_mint("ssn"));
        assert!(joiner.allows(Action::Tokenize("mrn")) && joiner.may_mint("mrn"));
        assert!(!joiner.allows(Action::Tokenize("email")) && !joiner.may_mint("email"));
        assert!(!joiner.allows(Action::Detokenize("ssn")));
        let both = client(&["lookup:*", "tokenize:ssn"]);
        assert!(both.may_mint("ssn") && !both.may_mint("mrn"));
    }

    #[test]
    fn a_masked_reveal_with_tokenize_or_lookup_on_one_namespace_is_an_oracle() {
        let scopes = |list: &[&str]| -> Vec<Scope> {
            list.iter().map(|s| s.parse().expect("scope")).collect()
        };
        let oracle = |list: &[&str]| masked_oracle(&scopes(list));
        assert_eq!(
            oracle(&["tokenize:ssn", "detokenize-masked:ssn"]).as_deref(),
            Some("ssn")
        );
        assert_eq!(
            oracle(&["lookup:*", "detokenize-masked:ssn"]).as_deref(),
            Some("ssn")
        );
        assert_eq!(
            oracle(&["tokenize:ssn", "detokenize-masked:*"]).as_deref(),
            Some("ssn")
        );
        assert_eq!(
            oracle(&["tokenize:*", "detokenize-masked:*"]).as_deref(),
            Some("*")
        );
        assert_eq!(oracle(&["tokenize:email", "detokenize-masked:ssn"]), None);
        assert_eq!(oracle(&["detokenize-masked:ssn", "audit"]), None);
        // A full reveal already shows the value: the pair adds nothing.
        assert_eq!(
            oracle(&["tokenize:ssn", "detokenize:ssn", "detokenize-masked:ssn"]),
            None
        );
        assert_eq!(
            oracle(&["tokenize:*", "detokenize:*", "detokenize-masked:*"]),
            None
        );
        // A full reveal of one namespace does not cover every one.
        assert_eq!(
            oracle(&["tokenize:*", "detokenize:ssn", "detokenize-masked:*"]).as_deref(),
            Some("*")
        );
    }

    #[test]
    fn keys_authenticate_until_revoked_expired_or_retired() {
        let (id, key, digest) = mint_key().expect("rng");
        let mut table = ClientTable::default();
        let row = ClientRecord {
            name: "c".into(),
            scopes: vec!["admin".into()],
            secret_sha256: digest.clone(),
            created_at: 1,
            separated: true,
            ..ClientRecord::default()
        };
        let client = table.put(&id, &row).expect("put");
        let bearer = format!("Bearer {}", key.expose());
        assert_eq!(
            table.authenticate(Some(&bearer)),
            Ok(Arc::new(client.clone()))
        );
        assert_eq!(table.authenticate(None), Err(AuthError::Missing));
        assert_eq!(
            table.authenticate(Some(key.expose())),
            Err(AuthError::Malformed)
        );
        let mut wrong = bearer.clone();
        wrong.pop();
        wrong.push(if bearer.ends_with('0') { '1' } else { '0' });
        assert_eq!(table.authenticate(Some(&wrong)), Err(AuthError::Unknown));
        let other = format!("Bearer pv_{}_{}", "f".repeat(16), "0".repeat(64));
        assert_eq!(table.authenticate(Some(&other)), Err(AuthError::Unknown));

        // A rotation: the new key works, the old one during its grace only.
        let now = crate::clock::now_secs();
        let (new_key, new_digest) = mint_secret(&id).expect("rng");
        let rotated = ClientRecord {
            secret_sha256: new_digest,
            previous_secret_sha256: Some(digest.clone()),
            previous_valid_until: Some(now + 60),
            ..row.clone()
        };
        table.put(&id, &rotated).expect("put");
        let new_bearer = format!("Bearer {}", new_key.expose());
        assert!(table.authenticate(Some(&new_bearer)).is_ok());
        assert!(
            table.authenticate(Some(&bearer)).is_ok(),
            "within its grace"
        );
        let retired = ClientRecord {
            previous_valid_until: Some(now - 1),
            ..rotated.clone()
        };
        table.put(&id, &retired).expect("put");
        assert_eq!(table.authenticate(Some(&bearer)), Err(AuthError::Expired));
        let expired = ClientRecord {
            expires_at: Some(now),
            ..retired.clone()
        };
        table.put(&id, &expired).expect("put");
        assert_eq!(
            table.authenticate(Some(&new_bearer)),
            Err(AuthError::Expired)
        );
        let revoked = ClientRecord {
            revoked_at: Some(2),
            ..retired
        };
        table.put(&id, &revoked).expect("put");
        assert_eq!(
            table.authenticate(Some(&new_bearer)),
            Err(AuthError::Revoked)
        );
    }
}
