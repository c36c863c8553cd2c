//! FHIR R4 resources: a built-in Patient profile and TOML profiles that
//! replace or extend it. Resources inside a Bundle (`entry[].resource`) and
//! contained resources are walked with the rules of their own type.

use std::collections::HashMap;
use std::io::{BufRead, Read};

use serde::Deserialize;
use serde_json::value::RawValue;

use super::json::{Filter, FindCells, Found, Members, Pointer, Rules};
use super::{BulkError, Names, Unit, UnitReader};

/// The largest Bundle read: a Bundle is one JSON document and is held in
/// memory whole (Bulk Data exports are NDJSON and are streamed instead).
pub(super) const MAX_BUNDLE_BYTES: u64 = 256 << 20;

const SSN_SYSTEM: &str = "http://hl7.org/fhir/sid/us-ssn";

/// The built-in rules: every direct identifier of a Patient (and of the
/// people in its `contact`) that HIPAA's Safe Harbor list names and the
/// vault's default namespaces can hold.
/// A built-in rule: path, optional (sibling path, required text), namespace.
type BuiltinRule = (
    &'static str,
    Option<(&'static str, &'static str)>,
    &'static str,
);

const PATIENT: &[BuiltinRule] = &[
    ("/identifier/*/value", Some(("/system", SSN_SYSTEM)), "ssn"),
    (
        "/identifier/*/value",
        Some(("/type/coding/*/code", "MR")),
        "mrn",
    ),
    ("/name/*/given/*", None, "name"),
    ("/name/*/family", None, "name"),
    ("/name/*/text", None, "name"),
    ("/telecom/*/value", Some(("/system", "phone")), "phone"),
    ("/telecom/*/value", Some(("/system", "fax")), "phone"),
    ("/telecom/*/value", Some(("/system", "sms")), "phone"),
    ("/telecom/*/value", Some(("/system", "email")), "email"),
    ("/birthDate", None, "dob"),
    ("/address/*/line/*", None, "text"),
    ("/address/*/city", None, "text"),
    ("/address/*/district", None, "text"),
    ("/address/*/text", None, "text"),
    ("/address/*/postalCode", None, "zip"),
    ("/contact/*/name/given/*", None, "name"),
    ("/contact/*/name/family", None, "name"),
    ("/contact/*/name/text", None, "name"),
    (
        "/contact/*/telecom/*/value",
        Some(("/system", "phone")),
        "phone",
    ),
    (
        "/contact/*/telecom/*/value",
        Some(("/system", "fax")),
        "phone",
    ),
    (
        "/contact/*/telecom/*/value",
        Some(("/system", "sms")),
        "phone",
    ),
    (
        "/contact/*/telecom/*/value",
        Some(("/system", "email")),
        "email",
    ),
    ("/contact/*/address/line/*", None, "text"),
    ("/contact/*/address/city", None, "text"),
    ("/contact/*/address/postalCode", None, "zip"),
];

/// A profile file: rules added to (or, with `builtin = false`, used instead
/// of) the built-in Patient rules.
///
/// ```toml
/// builtin = true
///
/// [[rule]]
/// resource = "Patient"
/// path = "/identifier/*/value"
/// when = { path = "/system", equals = "urn:oid:2.16.840.1.113883.4.1" }
/// namespace = "ssn"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Keep the built-in Patient rules (default).
    #[serde(default = "yes")]
    builtin: bool,
    #[serde(default, rename = "rule")]
    rules: Vec<RuleSpec>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    resource: String,
    path: String,
    when: Option<WhenSpec>,
    namespace: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct WhenSpec {
    path: String,
    equals: String,
}

/// A profile file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProfileError(String);

impl ProfileError {
    pub(super) fn new(why: String) -> Self {
        Self(why)
    }
}

impl Profile {
    /// Parses a TOML profile.
    pub fn parse(text: &str) -> Result<Self, ProfileError> {
        let profile: Self = toml::from_str(text).map_err(|e| ProfileError(e.to_string()))?;
        for (i, rule) in profile.rules.iter().enumerate() {
            let at = |e: super::PointerError| ProfileError(format!("rule {}: {e}", i + 1));
            rule.path.parse::<Pointer>().map_err(at)?;
            if let Some(when) = &rule.when {
                when.path.parse::<Pointer>().map_err(at)?;
            }
            if rule.resource.is_empty() || rule.namespace.is_empty() {
                return Err(ProfileError(format!(
                    "rule {}: resource and namespace must not be empty",
                    i + 1
                )));
            }
        }
        if !profile.builtin && profile.rules.is_empty() {
            return Err(ProfileError(
                "the profile drops the built-in rules and has none of its own".into(),
            ));
        }
        Ok(profile)
    }
}

/// Rules by resource type.
#[derive(Debug, Clone)]
pub struct FhirLayout {
    by_type: HashMap<String, Rules>,
    names: Names,
}

impl FhirLayout {
    /// The built-in Patient profile, replaced or extended by `profile`.
    pub fn new(profile: Option<&Profile>) -> Self {
        let mut layout = Self {
            by_type: HashMap::new(),
            names: Names::default(),
        };
        if profile.is_none_or(|p| p.builtin) {
            for (path, when, namespace) in PATIENT {
                let when = when.map(|(path, equals)| (path.to_owned(), equals.to_owned()));
                layout.add("Patient", path, when, namespace);
            }
        }
        for rule in profile.map(|p| p.rules.as_slice()).unwrap_or_default() {
            let when = rule
                .when
                .as_ref()
                .map(|w| (w.path.clone(), w.equals.clone()));
            layout.add(&rule.resource, &rule.path, when, &rule.namespace);
        }
        layout
    }

    fn add(&mut self, resource: &str, path: &str, when: Option<(String, String)>, namespace: &str) {
        // Both were parsed before: built-in ones are constants covered by a
        // test, a profile's by `Profile::parse`.
        let Ok(pointer) = path.parse::<Pointer>() else {
            return;
        };
        let when =
            when.and_then(|(path, equals)| path.parse().ok().map(|path| Filter { path, equals }));
        let namespace = self.names.namespace(namespace);
        self.by_type
            .entry(resource.to_owned())
            .or_default()
            .add(&pointer, namespace, when);
    }

    pub(super) fn names(&self) -> Names {
        self.names.clone()
    }

    /// Finds the cells of one resource, of the resources in its Bundle
    /// entries and of its contained resources.
    fn find_in(&self, resource: &RawValue, found: &mut Found<'_>, path: &mut String) {
        let text = resource.get();
        let Some(members) = Members::parse(text, found) else {
            return;
        };
        let kind = members
            .get("resourceType", found)
            .and_then(|t| serde_json::from_str::<String>(t.get()).ok())
            .unwrap_or_default();
        if let Some(rules) = self.by_type.get(&kind) {
            rules.collect(resource, found, path, "");
        }
        let mut nested = |list: &str, inner: Option<&str>| {
            let Some(items) = members.get(list, found) else {
                return;
            };
            let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(items.get()) else {
                return;
            };
            for (i, item) in items.into_iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("/{list}/{i}"));
                let item = match inner {
                    None => Some(item),
                    Some(key) => Members::parse(item.get(), found)
                        .and_then(|entry| entry.get(key, found))
                        .inspect(|_| {
                            path.push('/');
                            path.push_str(key);
                        }),
                };
                if let Some(item) = item {
                    self.find_in(item, found, path);
                }
                path.truncate(len);
            }
        };
        if kind == "Bundle" {
            nested("entry", Some("resource"));
        }
        nested("contained", None);
    }
}

impl FindCells for FhirLayout {
    fn find(&self, document: &str, found: &mut Found<'_>) -> bool {
        let Ok(root) = serde_json::from_str::<&RawValue>(document) else {
            return false;
        };
        self.find_in(root, found, &mut String::new());
        true
    }
}

/// Reads a whole Bundle (or any one resource) as a single unit.
pub(super) struct BundleReader<R> {
    input: Option<R>,
    layout: FhirLayout,
}

impl<R> BundleReader<R> {
    pub(super) fn new(input: R, layout: FhirLayout) -> Self {
        Self {
            input: Some(input),
            layout,
        }
    }
}

impl<R: BufRead + Send> UnitReader for BundleReader<R> {
    fn next_unit(&mut self) -> Result<Option<Unit>, BulkError> {
        let Some(input) = self.input.take() else {
            return Ok(None);
        };
        let mut raw = Vec::new();
        input
            .take(MAX_BUNDLE_BYTES + 1)
            .read_to_end(&mut raw)
            .map_err(BulkError::io("cannot read the input"))?;
        if raw.len() as u64 > MAX_BUNDLE_BYTES {
            return Err(BulkError::Input(format!(
                "the Bundle is larger than {} MiB; export it as NDJSON (one resource per line) instead",
                MAX_BUNDLE_BYTES >> 20
            )));
        }
        let mut unit = Unit {
            row: 1,
            line: 1,
            raw,
            cells: Vec::new(),
            problem: None,
        };
        let Ok(text) = std::str::from_utf8(&unit.raw) else {
            return Err(BulkError::Input("the Bundle is not valid UTF-8".into()));
        };
        let mut found = Found::new(text);
        if !self.layout.find(text.trim(), &mut found) {
            return Err(BulkError::Input(
                "the input is not one JSON document".into(),
            ));
        }
        if let Some(problem) = found.problem {
            return Err(BulkError::Input(format!(
                "the Bundle is refused: {problem}"
            )));
        }
        unit.cells = found.cells;
        Ok(Some(unit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_rules_parse() {
        for (path, when, _) in PATIENT {
            path.parse::<Pointer>().expect("built-in path");
            if let Some((path, _)) = when {
                path.parse::<Pointer>().expect("built-in filter path");
            }
        }
    }

    #[test]
    fn profiles_are_checked() {
        assert!(Profile::parse("builtin = false").is_err());
        assert!(
            Profile::parse("[[rule]]\nresource = \"Patient\"\npath = \"x\"\nnamespace = \"a\"")
                .is_err()
        );
        assert!(
            Profile::parse(
                "[[rule]]\nresource = \"Patient\"\npath = \"/x\"\nnamespace = \"a\"\ncolour = 1"
            )
            .is_err()
        );
        let p = Profile::parse(
            "[[rule]]\nresource = \"Observation\"\npath = \"/subject/display\"\nnamespace = \"name\"\nwhen = { path = \"/x\", equals = \"y\" }",
        )
        .expect("profile");
        assert!(p.builtin);
        let layout = FhirLayout::new(Some(&p));
        assert!(
            layout.by_type.contains_key("Patient") && layout.by_type.contains_key("Observation")
        );
    }

    #[test]
    fn a_bundle_holding_a_key_it_is_read_by_twice_is_refused() {
        // A JSON map keeps the last `entry`: the Patient's birth date in the
        // first would pass through unread.
        let doc = r#"{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Patient","birthDate":"1980-01-02"}}],"entry":[]}"#;
        let mut found = Found::new(doc);
        FhirLayout::new(None).find(doc, &mut found);
        assert_eq!(found.problem, Some(super::super::json::DUPLICATE_KEY));
        let mut reader = BundleReader::new(doc.as_bytes(), FhirLayout::new(None));
        assert!(reader.next_unit().is_err());
        let ok = r#"{"resourceType":"Patient","birthDate":"1980-01-02","meta":{},"meta":{}}"#;
        let mut found = Found::new(ok);
        FhirLayout::new(None).find(ok, &mut found);
        assert_eq!((found.problem, found.cells.len()), (None, 1));
    }

    #[test]
    fn bundle_entries_and_contained_resources_are_walked() {
        let doc = r#"{"resourceType":"Bundle","entry":[{"fullUrl":"urn:a","resource":{"resourceType":"Patient","birthDate":"1980-01-02","name":[{"family":"Doe","given":["Jane","Q"]}]}},{"resource":{"resourceType":"Observation","contained":[{"resourceType":"Patient","telecom":[{"system":"email","value":"j@x.org"},{"system":"url","value":"http://x"}]}]}}]}"#;
        let layout = FhirLayout::new(None);
        let mut found = Found::new(doc);
        layout.find(doc, &mut found);
        let names = layout.names();
        let got: Vec<_> = found
            .cells
            .iter()
            .map(|c| {
                let super::super::Location::Path(p) = &c.location else {
                    unreachable!()
                };
                (p.to_string(), names.namespaces[c.namespace].clone())
            })
            .collect();
        let want = [
            ("/entry/0/resource/name/0/given/0", "name"),
            ("/entry/0/resource/name/0/given/1", "name"),
            ("/entry/0/resource/name/0/family", "name"),
            ("/entry/0/resource/birthDate", "dob"),
            ("/entry/1/resource/contained/0/telecom/0/value", "email"),
        ];
        let mut got_sorted = got.clone();
        got_sorted.sort();
        let mut want: Vec<_> = want
            .iter()
            .map(|(p, n)| ((*p).to_owned(), (*n).to_owned()))
            .collect();
        want.sort();
        assert_eq!(got_sorted, want);
    }
}
