//! FHIR R4 resources: a built-in profile of the PHI in US Core resources,
//! by data type, and TOML profiles that replace or extend it. Resources inside a Bundle (`entry[].resource`) and
//! contained resources are walked with the rules of their own type.

use std::collections::HashMap;
use std::io::{BufRead, Read};

use serde::Deserialize;
use serde_json::value::RawValue;

use super::json::{Filter, FindCells, Found, Leaf, Members, Pointer, Rules};
use super::{BulkError, Names, Unit, UnitReader};

/// The largest Bundle read: a Bundle is one JSON document and is held in
/// memory whole (Bulk Data exports are NDJSON and are streamed instead).
pub(super) const MAX_BUNDLE_BYTES: u64 = 256 << 20;

const SSN_SYSTEM: &str = "http://hl7.org/fhir/sid/us-ssn";
/// The same, as the OID many exports still use.
const SSN_OID: &str = "urn:oid:2.16.840.1.113883.4.1";

/// The FHIR data types that hold PHI, and which of their elements do.
#[derive(Debug, Clone, Copy)]
enum Type {
    /// A person's name: family, given names and text to `name`, word by
    /// word.
    HumanName,
    /// Street lines, city, district and text to `text`, postal code to
    /// `zip`; state and country stay, as HIPAA Safe Harbor allows.
    Address,
    /// The value, by `system`: phone, fax, SMS and pager numbers to
    /// `phone`, e-mail to `email`, anything else (a URL, `other`, none) to
    /// `text`.
    ContactPoint,
    /// The value: to `ssn` under the US SSN system or with type code SS,
    /// else to `mrn` (record, account, member, licence numbers: Safe
    /// Harbor's "any other unique identifying number").
    Identifier,
    /// The display of a reference that may name a person, to `name` word
    /// by word, so that it gets the tokens of the name itself; the value of
    /// the identifier a logical reference names, as an Identifier's.
    Reference,
    /// A note's text to `text`, its author's name to `name`.
    Annotation,
    /// A document's or photo's title, URL and content to `text`.
    Attachment,
    /// A date (`birthDate`) to `dob`.
    Date,
    /// A member number (`Coverage.subscriberId`) to `mrn`.
    MemberId,
    /// A string (a location's display) to `text`.
    Text,
}

/// A built-in rule: path within its resource, optional (sibling path,
/// required text) or person-reference test, namespace, word by word.
struct Part {
    path: &'static str,
    when: Option<Check>,
    namespace: &'static str,
    words: bool,
}

#[derive(Clone, Copy)]
enum Check {
    Equals(&'static str, &'static str),
    Person,
}

const fn part(path: &'static str, when: Option<Check>, namespace: &'static str) -> Part {
    Part {
        path,
        when,
        namespace,
        words: false,
    }
}

/// A part sent word by word: every word of a name, wherever it is written
/// (a family name, a name's text, a reference's display), gets the same
/// token, so that "St. James" in `family` and "Mary St. James" in a display
/// agree.
const fn by_word(path: &'static str, namespace: &'static str) -> Part {
    Part {
        path,
        when: None,
        namespace,
        words: true,
    }
}

impl Type {
    fn parts(self) -> &'static [Part] {
        const fn equals(path: &'static str, value: &'static str) -> Option<Check> {
            Some(Check::Equals(path, value))
        }
        match self {
            Type::HumanName => {
                const P: &[Part] = &[
                    by_word("/family", "name"),
                    by_word("/given/*", "name"),
                    by_word("/text", "name"),
                ];
                P
            }
            Type::Address => {
                const P: &[Part] = &[
                    part("/line/*", None, "text"),
                    part("/city", None, "text"),
                    part("/district", None, "text"),
                    part("/text", None, "text"),
                    part("/postalCode", None, "zip"),
                ];
                P
            }
            Type::ContactPoint => {
                const P: &[Part] = &[
                    part("/value", equals("/system", "phone"), "phone"),
                    part("/value", equals("/system", "fax"), "phone"),
                    part("/value", equals("/system", "sms"), "phone"),
                    part("/value", equals("/system", "pager"), "phone"),
                    part("/value", equals("/system", "email"), "email"),
                    part("/value", None, "text"),
                ];
                P
            }
            Type::Identifier => {
                const P: &[Part] = &[
                    part("/value", equals("/system", SSN_SYSTEM), "ssn"),
                    part("/value", equals("/system", SSN_OID), "ssn"),
                    part("/value", equals("/type/coding/*/code", "SS"), "ssn"),
                    part("/value", None, "mrn"),
                ];
                P
            }
            Type::Reference => {
                const P: &[Part] = &[
                    Part {
                        when: Some(Check::Person),
                        ..by_word("/display", "name")
                    },
                    // A logical reference: the identifier it names by.
                    part("/identifier/value", equals("/system", SSN_SYSTEM), "ssn"),
                    part("/identifier/value", equals("/system", SSN_OID), "ssn"),
                    part(
                        "/identifier/value",
                        equals("/type/coding/*/code", "SS"),
                        "ssn",
                    ),
                    part("/identifier/value", None, "mrn"),
                ];
                P
            }
            Type::Annotation => {
                const P: &[Part] = &[
                    part("/text", None, "text"),
                    by_word("/authorString", "name"),
                    Part {
                        when: Some(Check::Person),
                        ..by_word("/authorReference/display", "name")
                    },
                ];
                P
            }
            Type::Attachment => {
                // The content itself (a photograph, a document) and where
                // it lies go too: a vault refuses what is too long for a
                // value, and the cell is reported rather than passed.
                const P: &[Part] = &[
                    part("/title", None, "text"),
                    part("/url", None, "text"),
                    part("/data", None, "text"),
                ];
                P
            }
            Type::Date => {
                const P: &[Part] = &[part("", None, "dob")];
                P
            }
            Type::MemberId => {
                const P: &[Part] = &[part("", None, "mrn")];
                P
            }
            Type::Text => {
                const P: &[Part] = &[part("", None, "text")];
                P
            }
        }
    }
}

/// The built-in profile: where the resources of US Core (and the people
/// resources besides) hold the types above. Bundle entries and contained
/// resources are walked with their own type's rules.
const US_CORE: &[(&str, &str, Type)] = {
    use Type::*;
    &[
        ("Patient", "/identifier/*", Identifier),
        ("Patient", "/name/*", HumanName),
        ("Patient", "/telecom/*", ContactPoint),
        ("Patient", "/address/*", Address),
        ("Patient", "/birthDate", Date),
        ("Patient", "/deceasedDateTime", Date),
        ("Patient", "/photo/*", Attachment),
        ("Patient", "/contact/*/name", HumanName),
        ("Patient", "/contact/*/telecom/*", ContactPoint),
        ("Patient", "/contact/*/address", Address),
        ("Patient", "/generalPractitioner/*", Reference),
        ("Patient", "/link/*/other", Reference),
        ("Practitioner", "/identifier/*", Identifier),
        ("Practitioner", "/name/*", HumanName),
        ("Practitioner", "/telecom/*", ContactPoint),
        ("Practitioner", "/address/*", Address),
        ("Practitioner", "/birthDate", Date),
        ("Practitioner", "/photo/*", Attachment),
        ("Practitioner", "/qualification/*/identifier/*", Identifier),
        ("PractitionerRole", "/practitioner", Reference),
        ("PractitionerRole", "/telecom/*", ContactPoint),
        ("RelatedPerson", "/identifier/*", Identifier),
        ("RelatedPerson", "/patient", Reference),
        ("RelatedPerson", "/name/*", HumanName),
        ("RelatedPerson", "/telecom/*", ContactPoint),
        ("RelatedPerson", "/address/*", Address),
        ("RelatedPerson", "/birthDate", Date),
        ("RelatedPerson", "/photo/*", Attachment),
        ("Person", "/identifier/*", Identifier),
        ("Person", "/name/*", HumanName),
        ("Person", "/telecom/*", ContactPoint),
        ("Person", "/address/*", Address),
        ("Person", "/birthDate", Date),
        ("Person", "/photo", Attachment),
        ("Person", "/link/*/target", Reference),
        ("Coverage", "/identifier/*", Identifier),
        ("Coverage", "/subscriber", Reference),
        ("Coverage", "/subscriberId", MemberId),
        ("Coverage", "/beneficiary", Reference),
        ("Coverage", "/policyHolder", Reference),
        ("Coverage", "/payor/*", Reference),
        ("Encounter", "/identifier/*", Identifier),
        ("Encounter", "/subject", Reference),
        ("Encounter", "/participant/*/individual", Reference),
        ("Encounter", "/location/*/location/display", Text),
        ("Observation", "/identifier/*", Identifier),
        ("Observation", "/subject", Reference),
        ("Observation", "/performer/*", Reference),
        ("Observation", "/note/*", Annotation),
        ("Condition", "/identifier/*", Identifier),
        ("Condition", "/subject", Reference),
        ("Condition", "/asserter", Reference),
        ("Condition", "/recorder", Reference),
        ("Condition", "/note/*", Annotation),
        ("AllergyIntolerance", "/identifier/*", Identifier),
        ("AllergyIntolerance", "/patient", Reference),
        ("AllergyIntolerance", "/recorder", Reference),
        ("AllergyIntolerance", "/asserter", Reference),
        ("AllergyIntolerance", "/note/*", Annotation),
        ("Procedure", "/identifier/*", Identifier),
        ("Procedure", "/subject", Reference),
        ("Procedure", "/performer/*/actor", Reference),
        ("Procedure", "/recorder", Reference),
        ("Procedure", "/asserter", Reference),
        ("Procedure", "/note/*", Annotation),
        ("Immunization", "/identifier/*", Identifier),
        ("Immunization", "/patient", Reference),
        ("Immunization", "/performer/*/actor", Reference),
        ("Immunization", "/note/*", Annotation),
        ("MedicationRequest", "/identifier/*", Identifier),
        ("MedicationRequest", "/subject", Reference),
        ("MedicationRequest", "/requester", Reference),
        ("MedicationRequest", "/recorder", Reference),
        ("MedicationRequest", "/performer", Reference),
        ("MedicationRequest", "/note/*", Annotation),
        ("DiagnosticReport", "/identifier/*", Identifier),
        ("DiagnosticReport", "/subject", Reference),
        ("DiagnosticReport", "/performer/*", Reference),
        ("DiagnosticReport", "/resultsInterpreter/*", Reference),
        ("DiagnosticReport", "/presentedForm/*", Attachment),
        ("DocumentReference", "/identifier/*", Identifier),
        ("DocumentReference", "/subject", Reference),
        ("DocumentReference", "/author/*", Reference),
        ("DocumentReference", "/authenticator", Reference),
        ("DocumentReference", "/content/*/attachment", Attachment),
        ("CareTeam", "/identifier/*", Identifier),
        ("CareTeam", "/subject", Reference),
        ("CareTeam", "/participant/*/member", Reference),
        ("CareTeam", "/note/*", Annotation),
        ("CarePlan", "/identifier/*", Identifier),
        ("CarePlan", "/subject", Reference),
        ("CarePlan", "/author", Reference),
        ("CarePlan", "/contributor/*", Reference),
        ("CarePlan", "/note/*", Annotation),
        ("Goal", "/identifier/*", Identifier),
        ("Goal", "/subject", Reference),
        ("Goal", "/expressedBy", Reference),
        ("Goal", "/note/*", Annotation),
        ("ServiceRequest", "/identifier/*", Identifier),
        ("ServiceRequest", "/subject", Reference),
        ("ServiceRequest", "/requester", Reference),
        ("ServiceRequest", "/performer/*", Reference),
        ("ServiceRequest", "/note/*", Annotation),
        ("Claim", "/identifier/*", Identifier),
        ("Claim", "/patient", Reference),
        ("Claim", "/provider", Reference),
        ("Claim", "/enterer", Reference),
        ("Claim", "/payee/party", Reference),
        ("ExplanationOfBenefit", "/identifier/*", Identifier),
        ("ExplanationOfBenefit", "/patient", Reference),
        ("ExplanationOfBenefit", "/provider", Reference),
        ("ExplanationOfBenefit", "/enterer", Reference),
        ("ExplanationOfBenefit", "/payee/party", Reference),
        ("Provenance", "/agent/*/who", Reference),
        ("Provenance", "/agent/*/onBehalfOf", Reference),
    ]
};

/// A profile file: rules added to (or, with `builtin = false`, used instead
/// of) the built-in rules.
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
    /// Keep the built-in rules (default).
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
    /// The built-in profile, replaced or extended by `profile`. Where two
    /// rules reach the same value, the first wins: the built-in ones, then
    /// the profile's.
    pub fn new(profile: Option<&Profile>) -> Self {
        let mut layout = Self {
            by_type: HashMap::new(),
            names: Names::default(),
        };
        if profile.is_none_or(|p| p.builtin) {
            for &(resource, at, kind) in US_CORE {
                for part in kind.parts() {
                    let when = match part.when {
                        None => None,
                        Some(Check::Person) => Some(Filter::Person),
                        Some(Check::Equals(path, equals)) => Some(Filter::Equals {
                            path: path.parse().expect("a built-in path, parsed in a test"),
                            equals: equals.to_owned(),
                        }),
                    };
                    let path = format!("{at}{}", part.path);
                    layout.add(resource, &path, when, part.namespace, part.words);
                }
            }
        }
        for rule in profile.map(|p| p.rules.as_slice()).unwrap_or_default() {
            let when = match &rule.when {
                None => None,
                // Parsed before, by `Profile::parse`.
                Some(w) => {
                    let Ok(path) = w.path.parse() else { continue };
                    Some(Filter::Equals {
                        path,
                        equals: w.equals.clone(),
                    })
                }
            };
            layout.add(&rule.resource, &rule.path, when, &rule.namespace, false);
        }
        layout
    }

    fn add(
        &mut self,
        resource: &str,
        path: &str,
        when: Option<Filter>,
        namespace: &str,
        words: bool,
    ) {
        // Built-in paths are constants covered by a test, a profile's were
        // parsed by `Profile::parse`.
        let Ok(pointer) = path.parse::<Pointer>() else {
            return;
        };
        let namespace = self.names.namespace(namespace);
        self.by_type
            .entry(resource.to_owned())
            .or_default()
            .add_leaf(
                &pointer,
                Leaf {
                    namespace,
                    when,
                    words,
                },
            );
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
        for (_, at, kind) in US_CORE {
            for part in kind.parts() {
                format!("{at}{}", part.path)
                    .parse::<Pointer>()
                    .expect("built-in path");
                if let Some(Check::Equals(path, _)) = part.when {
                    path.parse::<Pointer>().expect("built-in filter path");
                }
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
            // A URL is a personal web address, Safe Harbor's (N).
            ("/entry/1/resource/contained/0/telecom/1/value", "text"),
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
