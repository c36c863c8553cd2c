//! Namespaces: a name, a format, and whether tokens are deterministic.
//! Each namespace has its own id inside every blind index, token stream and
//! reverse key, so the same value gets unrelated tokens in two namespaces.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::format::{FormatKind, FormatSpec};

/// The namespaces of an unsealed vault, by name: read by every call, and by
/// the jobs that walk the mappings; added to by `CreateNamespace`.
#[derive(Default)]
pub(crate) struct Namespaces(RwLock<HashMap<String, Arc<Namespace>>>);

impl Namespaces {
    pub(crate) fn new(all: Vec<Namespace>) -> Self {
        Self(RwLock::new(
            all.into_iter()
                .map(|ns| (ns.name.clone(), Arc::new(ns)))
                .collect(),
        ))
    }

    /// The namespace called `name`.
    pub(crate) fn get(&self, name: &str) -> Result<Arc<Namespace>, Error> {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        map.get(name)
            .cloned()
            .ok_or_else(|| Error::NamespaceNotFound(shown_name(name)))
    }

    /// Every namespace by id, for jobs that walk the mappings.
    pub(crate) fn by_id(&self) -> HashMap<u32, Arc<Namespace>> {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        map.values().map(|ns| (ns.id, Arc::clone(ns))).collect()
    }

    /// Every namespace, by name.
    pub(crate) fn all(&self) -> Vec<Namespace> {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<Namespace> = map.values().map(|ns| (**ns).clone()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    pub(crate) fn insert(&self, ns: Namespace) {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        map.insert(ns.name.clone(), Arc::new(ns));
    }
}

/// A namespace as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    /// Unique name (`[a-z0-9][a-z0-9._-]{0,63}`).
    pub name: String,
    /// Internal id, part of every key derived for this namespace.
    pub id: u32,
    /// Format and its options.
    pub format: FormatSpec,
    /// `true`: the same value always gets the same token (joins work).
    /// `false`: every tokenize call draws a fresh random token, which hides
    /// value frequencies of low-cardinality fields.
    pub deterministic: bool,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
}

/// What a caller asks for when creating a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceSpec {
    /// The name.
    pub name: String,
    /// Format and options.
    pub format: FormatSpec,
    /// Deterministic (default) or random tokens.
    pub deterministic: bool,
}

impl NamespaceSpec {
    /// A deterministic namespace.
    pub fn new(name: impl Into<String>, format: FormatSpec) -> Self {
        Self {
            name: name.into(),
            format,
            deterministic: true,
        }
    }

    /// Makes the namespace issue a fresh random token on every call.
    pub fn random(mut self) -> Self {
        self.deterministic = false;
        self
    }

    /// Whether `name` may name a namespace: 1 to 64 characters of a-z, 0-9,
    /// `.`, `_` or `-`, starting with a letter or digit.
    pub fn valid_name(name: &str) -> bool {
        let name = name.as_bytes();
        (1..=64).contains(&name.len())
            && (name[0].is_ascii_lowercase() || name[0].is_ascii_digit())
            && name
                .iter()
                .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(&c))
    }

    /// Checks the name and the format options.
    pub fn validate(&self) -> Result<(), String> {
        if !Self::valid_name(&self.name) {
            return Err(
                "a namespace name is 1 to 64 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit"
                    .into(),
            );
        }
        self.format.validate()
    }
}

/// The namespaces every new vault starts with (DESIGN.md §4).
pub(crate) fn defaults() -> Vec<NamespaceSpec> {
    use FormatKind::*;
    vec![
        NamespaceSpec::new("ssn", FormatSpec::new(Ssn)),
        NamespaceSpec::new("card", FormatSpec::new(Card)),
        NamespaceSpec::new("phone", FormatSpec::new(Phone)),
        NamespaceSpec::new("email", FormatSpec::new(Email)),
        NamespaceSpec::new("dob", FormatSpec::new(Date)),
        NamespaceSpec::new("name", FormatSpec::new(Name)),
        NamespaceSpec::new("mrn", FormatSpec::new(Alnum)),
        NamespaceSpec::new("zip", FormatSpec::new(Alnum).keep_prefix(3)),
        NamespaceSpec::new("text", FormatSpec::new(Opaque)),
    ]
}

/// A caller-supplied namespace name as a message or a record may carry it:
/// as given when it is a valid name, otherwise only its length, so that a
/// caller cannot make the server store, log or echo arbitrary bytes.
pub(crate) fn shown_name(name: &str) -> String {
    if NamespaceSpec::valid_name(name) {
        name.to_owned()
    } else {
        format!("(invalid namespace name, {} bytes)", name.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        for spec in defaults() {
            spec.validate()
                .unwrap_or_else(|e| panic!("{}: {e}", spec.name));
        }
    }

    #[test]
    fn names_are_restricted() {
        let spec = |name: &str| NamespaceSpec::new(name, FormatSpec::new(FormatKind::Alnum));
        for ok in ["ssn", "ssn-research", "member_id.v2", "9lives"] {
            assert!(spec(ok).validate().is_ok(), "{ok}");
        }
        for bad in ["", "SSN", "-x", "a b", "名前", &"x".repeat(65)] {
            assert!(spec(bad).validate().is_err(), "{bad}");
        }
    }
}
