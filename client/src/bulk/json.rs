//! JSON cells addressed by RFC 6901 pointers (with `*` for every element of
//! an array), found without re-serialising anything around them.
//!
//! Each level is parsed into borrowed [`RawValue`]s, whose text is a slice of
//! the line, so a found string's byte span is known exactly and only that
//! span is rewritten; keys, whitespace, number spellings and the order of
//! members stay as they were.

use std::collections::HashSet;
use std::fmt;
use std::io::BufRead;
use std::ops::Range;

use serde_json::value::RawValue;

use super::{BulkError, Cell, Encoding, Location, MAX_UNIT_BYTES, Names, Unit, UnitReader};

/// One step of a pointer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Step {
    /// An object member, or an array element when it is a number.
    Key(String),
    /// Every element of an array.
    Any,
}

/// An RFC 6901 JSON pointer in which `*` stands for every array element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer(Vec<Step>);

/// A pointer that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{pointer:?} is not a JSON pointer: {reason}")]
pub struct PointerError {
    pointer: String,
    reason: &'static str,
}

impl std::str::FromStr for Pointer {
    type Err = PointerError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |reason| PointerError {
            pointer: text.to_owned(),
            reason,
        };
        let Some(rest) = text.strip_prefix('/') else {
            return Err(error("it must start with '/'"));
        };
        let mut steps = Vec::new();
        for token in rest.split('/') {
            if token == "*" {
                steps.push(Step::Any);
                continue;
            }
            let mut key = String::with_capacity(token.len());
            let mut chars = token.chars();
            while let Some(c) = chars.next() {
                match (c, c == '~') {
                    (_, false) => key.push(c),
                    (_, true) => match chars.next() {
                        Some('0') => key.push('~'),
                        Some('1') => key.push('/'),
                        _ => return Err(error("'~' must be followed by 0 or 1")),
                    },
                }
            }
            steps.push(Step::Key(key));
        }
        Ok(Self(steps))
    }
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for step in &self.0 {
            match step {
                Step::Any => f.write_str("/*")?,
                Step::Key(key) => write!(f, "/{}", escape(key))?,
            }
        }
        Ok(())
    }
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// A condition on the object that holds the addressed value.
#[derive(Debug, Clone)]
pub(super) enum Filter {
    /// A string at `path` under the object equals `equals`.
    Equals { path: Pointer, equals: String },
    /// The object is a FHIR Reference that may name a person: its `type`,
    /// or the resource type in its `reference`, is Patient, Practitioner,
    /// RelatedPerson or Person, or says nothing of the target (a
    /// `urn:uuid:`, a contained `#id`, no reference at all), which is
    /// taken to be a person so that a name never passes on a guess.
    Person,
}

/// What happens to a string found at the end of a path.
#[derive(Debug, Clone)]
pub(super) struct Leaf {
    pub(super) namespace: usize,
    pub(super) when: Option<Filter>,
    /// Each word goes alone (a name's text, a reference's display), so
    /// that "Jane Doe" gets the tokens of "Jane" and "Doe", the given and
    /// family names' own; other characters stay.
    pub(super) words: bool,
}

/// Pointers merged into a tree, so that a document is walked once for all
/// of them.
#[derive(Debug, Clone, Default)]
pub(super) struct Rules {
    children: Vec<(Step, Rules)>,
    leaves: Vec<Leaf>,
}

impl Rules {
    /// Adds a pointer; strings found there go to `namespace` when `when`
    /// holds. Earlier rules win when two reach the same value.
    pub(super) fn add(&mut self, pointer: &Pointer, namespace: usize, when: Option<Filter>) {
        self.add_leaf(
            pointer,
            Leaf {
                namespace,
                when,
                words: false,
            },
        );
    }

    /// Adds a pointer with what to do at its end.
    pub(super) fn add_leaf(&mut self, pointer: &Pointer, leaf: Leaf) {
        let mut node = self;
        for step in &pointer.0 {
            let at = match node.children.iter().position(|(s, _)| s == step) {
                Some(at) => at,
                None => {
                    node.children.push((step.clone(), Rules::default()));
                    node.children.len() - 1
                }
            };
            node = &mut node.children[at].1;
        }
        node.leaves.push(leaf);
    }

    /// Finds the cells under `value`, a slice of `unit` starting at byte
    /// `base`; `path` is the concrete path of `value` and `parent` the text
    /// of the object or array holding it.
    pub(super) fn collect(
        &self,
        value: &RawValue,
        found: &mut Found<'_>,
        path: &mut String,
        parent: &str,
    ) {
        let text = value.get();
        for leaf in &self.leaves {
            if let Some(filter) = &leaf.when
                && !matches(parent, filter, found)
            {
                continue;
            }
            found.leaf(text, leaf, path);
            break;
        }
        if self.children.is_empty() {
            return;
        }
        match text.as_bytes().first() {
            Some(b'{') => {
                let Some(members) = Members::parse(text, found) else {
                    return;
                };
                for (step, rules) in &self.children {
                    if let Step::Key(key) = step
                        && let Some(member) = members.get(key, found)
                    {
                        let len = path.len();
                        path.push('/');
                        path.push_str(&escape(key));
                        rules.collect(member, found, path, text);
                        path.truncate(len);
                    }
                }
            }
            Some(b'[') => {
                let Ok(elements) = serde_json::from_str::<Vec<&RawValue>>(text) else {
                    return;
                };
                for (step, rules) in &self.children {
                    let chosen: Vec<usize> = match step {
                        Step::Any => (0..elements.len()).collect(),
                        Step::Key(key) => key
                            .parse()
                            .ok()
                            .filter(|i| *i < elements.len())
                            .into_iter()
                            .collect(),
                    };
                    for i in chosen {
                        let len = path.len();
                        path.push('/');
                        path.push_str(&i.to_string());
                        rules.collect(elements[i], found, path, text);
                        path.truncate(len);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Whether `filter` holds for `parent`, the object holding a value.
fn matches(parent: &str, filter: &Filter, found: &mut Found<'_>) -> bool {
    let Ok(root) = serde_json::from_str::<&RawValue>(parent) else {
        return false;
    };
    let mut strings = Vec::new();
    match filter {
        Filter::Equals { path, equals } => {
            strings_at(root, &path.0, &mut strings, found);
            strings.contains(equals)
        }
        Filter::Person => {
            let said = |key: &str, found: &mut Found<'_>| {
                let mut strings = Vec::new();
                strings_at(root, &[Step::Key(key.into())], &mut strings, found);
                strings.pop()
            };
            let kinds = [
                said("type", found).map(|t| Target::of_type(&t)),
                said("reference", found).map(|r| Target::of_reference(&r)),
            ];
            // A person if either names one; not a person only when what
            // they name is known and is not one.
            kinds.contains(&Some(Target::Person))
                || !kinds.iter().flatten().any(|k| *k == Target::Other)
        }
    }
}

/// The FHIR resource types that are people (a PractitionerRole's display
/// is its practitioner's name).
const PEOPLE: [&str; 5] = [
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "RelatedPerson",
    "Person",
];

/// What a reference says it points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// One of [`PEOPLE`].
    Person,
    /// Another resource type.
    Other,
    /// Nothing: a `urn:uuid:`, a contained `#id`, a word that is not a
    /// resource type.
    Unknown,
}

impl Target {
    /// From a Reference's `type`: a resource type, or its definition's URL
    /// (`http://hl7.org/fhir/StructureDefinition/Patient`).
    fn of_type(kind: &str) -> Self {
        Self::named(kind.rsplit('/').next().unwrap_or_default())
    }

    /// From a reference (`Patient/1`, `https://…/Practitioner/7/_history/2`,
    /// `urn:uuid:…`, `#c1`).
    fn of_reference(reference: &str) -> Self {
        let path = reference.split(['?', '#']).next().unwrap_or_default();
        let path = path.split("/_history/").next().unwrap_or_default();
        let mut segments = path.rsplit('/');
        match (segments.next(), segments.next()) {
            (Some(_id), Some(kind)) => Self::named(kind),
            _ => Self::Unknown,
        }
    }

    fn named(kind: &str) -> Self {
        let is_type = kind.starts_with(|c: char| c.is_ascii_uppercase())
            && kind.chars().all(|c| c.is_ascii_alphanumeric());
        if PEOPLE.contains(&kind) {
            Self::Person
        } else if is_type {
            Self::Other
        } else {
            Self::Unknown
        }
    }
}

fn strings_at(value: &RawValue, steps: &[Step], out: &mut Vec<String>, found: &mut Found<'_>) {
    let Some((step, rest)) = steps.split_first() else {
        if let Ok(text) = serde_json::from_str::<String>(value.get()) {
            out.push(text);
        }
        return;
    };
    let text = value.get();
    match (text.as_bytes().first(), step) {
        (Some(b'{'), Step::Key(key)) => {
            if let Some(members) = Members::parse(text, found)
                && let Some(member) = members.get(key, found)
            {
                strings_at(member, rest, out, found);
            }
        }
        (Some(b'['), _) => {
            if let Ok(elements) = serde_json::from_str::<Vec<&RawValue>>(text) {
                for (i, element) in elements.iter().enumerate() {
                    if matches!(step, Step::Any)
                        || matches!(step, Step::Key(k) if k.parse() == Ok(i))
                    {
                        strings_at(element, rest, out, found);
                    }
                }
            }
        }
        _ => {}
    }
}

/// The cells found in one unit.
pub(super) struct Found<'a> {
    /// The whole unit's text: found values are slices of it.
    unit: &'a str,
    pub(super) cells: Vec<Cell>,
    /// Where the cells start: two rules may reach one value (`/a/*` and
    /// `/a/0`), which is still one cell. A set, not a scan of `cells`, as a
    /// Bundle can hold millions.
    starts: HashSet<usize>,
    /// Why the unit cannot be read as the rules mean (a key they read
    /// given twice): then none of its cells is sent.
    pub(super) problem: Option<&'static str>,
}

impl<'a> Found<'a> {
    pub(super) fn new(unit: &'a str) -> Self {
        Self {
            unit,
            cells: Vec::new(),
            starts: HashSet::new(),
            problem: None,
        }
    }

    fn span_of(&self, text: &str) -> Range<usize> {
        // `text` borrows from `unit` (the raw values are slices of it).
        let start = text.as_ptr() as usize - self.unit.as_ptr() as usize;
        start..start + text.len()
    }

    fn leaf(&mut self, text: &str, leaf: &Leaf, path: &str) {
        let span = self.span_of(text);
        if text == "null" || !self.starts.insert(span.start) {
            return;
        }
        let namespace = leaf.namespace;
        if leaf.words
            && let Some(chars) = text
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .and_then(spelled)
        {
            // The string's content starts one byte (the quote) in.
            let base = span.start + 1;
            for word in words(&chars) {
                let (first, last) = (&chars[word.start], &chars[word.end - 1]);
                self.cells.push(Cell {
                    span: base + first.1.start..base + last.1.end,
                    namespace,
                    text: Ok(chars[word].iter().map(|(c, _)| c).collect()),
                    location: Location::Path(path.into()),
                    encoding: Encoding::JsonFragment,
                });
            }
            return;
        }
        let text = if text.starts_with('"') {
            match serde_json::from_str::<String>(text) {
                Ok(s) if s.is_empty() => return,
                Ok(s) => Ok(s),
                Err(_) => Err("the string is not valid JSON"),
            }
        } else {
            Err("the value is not a JSON string")
        };
        self.cells.push(Cell {
            span,
            namespace,
            text,
            location: Location::Path(path.into()),
            encoding: Encoding::Json,
        });
    }
}

/// The characters of a JSON string's content (without its quotes), each
/// with the bytes it is written in there: one for `a`, two for `\n`, six
/// for `\u00e9`, twelve for a surrogate pair. `None` when the content is not
/// a valid JSON string.
fn spelled(content: &str) -> Option<Vec<(char, Range<usize>)>> {
    let bytes = content.as_bytes();
    let hex = |at: usize| {
        let digits = content.get(at..at + 4)?;
        u32::from_str_radix(digits, 16).ok()
    };
    let mut out = Vec::with_capacity(content.len());
    let mut at = 0;
    while at < bytes.len() {
        let start = at;
        let c = if bytes[at] == b'\\' {
            let c = match *bytes.get(at + 1)? {
                b'"' => '"',
                b'\\' => '\\',
                b'/' => '/',
                b'b' => '\u{8}',
                b'f' => '\u{c}',
                b'n' => '\n',
                b'r' => '\r',
                b't' => '\t',
                b'u' => {
                    let high = hex(at + 2)?;
                    at += 4;
                    if (0xd800..0xdc00).contains(&high) {
                        if content.get(at + 2..at + 4)? != "\\u" {
                            return None;
                        }
                        let low = hex(at + 4).filter(|low| (0xdc00..0xe000).contains(low))?;
                        at += 6;
                        char::from_u32(0x10000 + ((high - 0xd800) << 10) + (low - 0xdc00))?
                    } else {
                        char::from_u32(high)?
                    }
                }
                _ => return None,
            };
            at += 2;
            c
        } else {
            let c = content[at..].chars().next()?;
            at += c.len_utf8();
            c
        };
        out.push((c, start..at));
    }
    Some(out)
}

/// The words of a name or a display, as ranges of `chars`: runs of
/// anything but white space and ASCII punctuation, with an apostrophe or a
/// hyphen between two of them inside (`O'Brien`, `Garcia-Lopez`). Digits
/// and marks are parts of words, so that the vault sees them and refuses
/// what is not a name, rather than their passing in clear between words.
fn words(chars: &[(char, Range<usize>)]) -> Vec<Range<usize>> {
    let part = |c: char| !c.is_whitespace() && !c.is_ascii_punctuation();
    let joins = |c: char| matches!(c, '\'' | '-');
    let mut out = Vec::new();
    let mut at = 0;
    while at < chars.len() {
        if !part(chars[at].0) {
            at += 1;
            continue;
        }
        let start = at;
        while at < chars.len() {
            let c = chars[at].0;
            let inside = joins(c) && chars.get(at + 1).is_some_and(|n| part(n.0)) && at > start;
            if !part(c) && !inside {
                break;
            }
            at += 1;
        }
        out.push(start..at);
    }
    out
}

/// What a unit with an object holding a key twice is refused as, where the
/// key is one the rules read (mapped, a filter's, a Bundle's or a
/// resource's): JSON parsers keep one of the two values, and the other
/// would pass through unread, in clear.
pub(super) const DUPLICATE_KEY: &str =
    "an object holds a key the rules read more than once; one of its values would pass unread";

/// An object's members in document order, duplicates kept (a map keeps one
/// value of a key, so a duplicate would go unseen).
pub(super) struct Members<'a>(Vec<(String, &'a RawValue)>);

/// What a unit with an object that cannot be read member by member is
/// refused as: serde_json takes a key with a lone surrogate (`"\ud800"`)
/// as valid JSON, but no string can hold it, and the object's other
/// members would pass through unread.
pub(super) const UNREADABLE_OBJECT: &str =
    "an object holds a key that is not valid Unicode; its members would pass unread";

impl<'a> Members<'a> {
    /// The members of `text`, when it is a JSON object; an object that
    /// cannot be read makes `found`'s unit a problem.
    pub(super) fn parse(text: &'a str, found: &mut Found<'_>) -> Option<Self> {
        let members = serde_json::from_str(text).ok();
        if members.is_none() && text.starts_with('{') {
            found.problem = Some(UNREADABLE_OBJECT);
        }
        members
    }

    /// The value of member `key`; an object holding it more than once
    /// makes `found`'s unit a problem.
    pub(super) fn get(&self, key: &str, found: &mut Found<'_>) -> Option<&'a RawValue> {
        let mut named = self.0.iter().filter(|(k, _)| k == key);
        let (_, first) = named.next()?;
        if named.next().is_some() {
            found.problem = Some(DUPLICATE_KEY);
        }
        Some(*first)
    }
}

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Members<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, &'de RawValue>()? {
                    members.push((key, value));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

/// Which NDJSON paths go to which namespaces.
#[derive(Debug, Clone)]
pub struct JsonLayout {
    maps: Vec<(Pointer, String)>,
}

impl JsonLayout {
    /// `maps` are (pointer, namespace) pairs, as given by
    /// `--map /pointer=NAMESPACE`.
    pub fn new(maps: Vec<(Pointer, String)>) -> Self {
        Self { maps }
    }

    pub(super) fn rules(&self) -> (Rules, Names) {
        let mut names = Names::default();
        let mut rules = Rules::default();
        for (pointer, namespace) in &self.maps {
            rules.add(pointer, names.namespace(namespace), None);
        }
        (rules, names)
    }
}

impl Names {
    /// The index of `namespace`, added if new.
    pub(super) fn namespace(&mut self, namespace: &str) -> usize {
        match self.namespaces.iter().position(|n| n == namespace) {
            Some(i) => i,
            None => {
                self.namespaces.push(namespace.to_owned());
                self.namespaces.len() - 1
            }
        }
    }
}

/// Finds the cells of one JSON document.
pub(super) trait FindCells: Send {
    /// Adds the cells of `document`, a slice of `found`'s unit, to `found`;
    /// false when `document` is not one JSON value.
    fn find(&self, document: &str, found: &mut Found<'_>) -> bool;
}

/// Reads one line at a time and hands each JSON line to `find`.
pub(super) struct LineReader<R, F> {
    input: R,
    line: u64,
    row: u64,
    find: F,
}

impl<R, F> LineReader<R, F>
where
    R: BufRead + Send,
    F: FindCells,
{
    pub(super) fn new(input: R, find: F) -> Self {
        Self {
            input,
            line: 0,
            row: 0,
            find,
        }
    }
}

impl<R, F> UnitReader for LineReader<R, F>
where
    R: BufRead + Send,
    F: FindCells,
{
    fn next_unit(&mut self) -> Result<Option<Unit>, BulkError> {
        let mut raw = Vec::new();
        let n = std::io::Read::take(&mut self.input, MAX_UNIT_BYTES as u64 + 1)
            .read_until(b'\n', &mut raw)
            .map_err(BulkError::io("cannot read the input"))?;
        if n == 0 {
            return Ok(None);
        }
        self.line += 1;
        let line = self.line;
        if raw.len() > MAX_UNIT_BYTES {
            return Err(BulkError::Input(format!(
                "line {line} is longer than {} MiB",
                MAX_UNIT_BYTES >> 20
            )));
        }
        let mut unit = Unit {
            row: 0,
            line,
            raw,
            cells: Vec::new(),
            problem: None,
        };
        if unit.raw.iter().all(u8::is_ascii_whitespace) {
            return Ok(Some(unit));
        }
        self.row += 1;
        unit.row = self.row;
        let Ok(text) = std::str::from_utf8(&unit.raw) else {
            unit.problem = Some("the line is not valid UTF-8");
            return Ok(Some(unit));
        };
        let body = text.trim_end_matches(['\n', '\r']);
        let mut found = Found::new(text);
        if !self.find.find(body, &mut found) {
            unit.problem = Some("the line is not one JSON value");
            return Ok(Some(unit));
        }
        if let Some(problem) = found.problem {
            unit.problem = Some(problem);
            return Ok(Some(unit));
        }
        unit.cells = found.cells;
        Ok(Some(unit))
    }
}

impl FindCells for Rules {
    fn find(&self, document: &str, found: &mut Found<'_>) -> bool {
        let Ok(root) = serde_json::from_str::<&RawValue>(document) else {
            return false;
        };
        self.collect(root, found, &mut String::new(), "");
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pointer(text: &str) -> Pointer {
        text.parse().expect("pointer")
    }

    #[test]
    fn pointers_follow_rfc_6901() {
        assert_eq!(
            pointer("/a~1b/m~0n/*/0").0,
            [
                Step::Key("a/b".into()),
                Step::Key("m~n".into()),
                Step::Any,
                Step::Key("0".into())
            ]
        );
        assert_eq!(pointer("/a~1b/*").to_string(), "/a~1b/*");
        assert!("a/b".parse::<Pointer>().is_err());
        assert!("/a~2".parse::<Pointer>().is_err());
    }

    fn cells(line: &str, maps: &[(&str, &str)]) -> Vec<(String, String, usize)> {
        let layout = JsonLayout::new(
            maps.iter()
                .map(|(p, n)| (pointer(p), (*n).to_owned()))
                .collect(),
        );
        let (rules, _) = layout.rules();
        let mut found = Found::new(line);
        rules.find(line, &mut found);
        found
            .cells
            .into_iter()
            .map(|c| {
                let text = c.text.unwrap_or_else(|e| e.to_owned());
                let Location::Path(path) = c.location else {
                    unreachable!()
                };
                (path.to_string(), text, c.span.start)
            })
            .collect()
    }

    #[test]
    fn strings_are_found_at_their_bytes() {
        let line = r#"{"id": 7, "p": {"ssn": "123-45-6789", "names": ["Ann", null, "Bo\u00e9"]}, "a/b": "x"}"#;
        let found = cells(
            line,
            &[
                ("/p/ssn", "ssn"),
                ("/p/names/*", "name"),
                ("/a~1b", "text"),
                ("/missing", "x"),
            ],
        );
        assert_eq!(
            found,
            [
                (
                    "/p/ssn".into(),
                    "123-45-6789".into(),
                    line.find("\"123").unwrap_or(0)
                ),
                (
                    "/p/names/0".into(),
                    "Ann".into(),
                    line.find("\"Ann").unwrap_or(0)
                ),
                (
                    "/p/names/2".into(),
                    "Bo\u{e9}".into(),
                    line.find("\"Bo").unwrap_or(0)
                ),
                ("/a~1b".into(), "x".into(), line.find("\"x\"").unwrap_or(0)),
            ]
        );
        let found = cells(line, &[("/id", "mrn")]);
        assert_eq!(found[0].1, "the value is not a JSON string");
    }

    #[test]
    fn lines_that_are_not_json_are_problems_and_blank_lines_are_not_rows() {
        let input = "{\"a\":\"x\"}\n\n{\"a\": nope}\r\n{\"a\":\"y\"}";
        let mut rules = Rules::default();
        rules.add(&pointer("/a"), 0, None);
        let mut reader = LineReader::new(input.as_bytes(), rules);
        let mut units = Vec::new();
        while let Some(unit) = reader.next_unit().expect("unit") {
            units.push((unit.row, unit.line, unit.cells.len(), unit.problem));
        }
        assert_eq!(
            units,
            [
                (1, 1, 1, None),
                (0, 2, 0, None),
                (2, 3, 0, Some("the line is not one JSON value")),
                (3, 4, 1, None),
            ]
        );
    }

    #[test]
    fn a_key_the_rules_read_given_twice_refuses_the_line() {
        let input = concat!(
            "{\"ssn\":\"078-05-1120\",\"ssn\":\"219-09-9999\"}\n",
            "{\"note\":\"a\",\"note\":\"b\",\"ssn\":\"078-05-1120\"}\n",
            "{\"t\":[{\"system\":\"url\",\"system\":\"email\",\"value\":\"j@x.org\"}]}\n",
            "{\"p\":{\"ssn\":\"1\"},\"p\":{\"ssn\":\"2\"}}\n",
            "{\"ssn\":\"078-05-1120\",\"\\ud800\":0}\n",
        );
        let mut rules = Rules::default();
        rules.add(&pointer("/ssn"), 0, None);
        rules.add(&pointer("/p/ssn"), 0, None);
        rules.add(
            &pointer("/t/*/value"),
            1,
            Some(Filter::Equals {
                path: pointer("/system"),
                equals: "email".into(),
            }),
        );
        let mut reader = LineReader::new(input.as_bytes(), rules);
        let mut units = Vec::new();
        while let Some(unit) = reader.next_unit().expect("unit") {
            units.push((unit.row, unit.cells.len(), unit.problem));
        }
        assert_eq!(
            units,
            [
                // A mapped key twice: neither value is sent, the line is a
                // problem.
                (1, 0, Some(DUPLICATE_KEY)),
                // A key no rule reads may repeat.
                (2, 1, None),
                // A filter's key twice: which one decides is ambiguous.
                (3, 0, Some(DUPLICATE_KEY)),
                // An object on a mapped path twice.
                (4, 0, Some(DUPLICATE_KEY)),
                // A key no string can hold: the object cannot be read.
                (5, 0, Some(UNREADABLE_OBJECT)),
            ]
        );
    }

    #[test]
    fn filters_look_at_siblings() {
        let doc = r#"{"identifier":[{"system":"a","value":"1"},{"type":{"coding":[{"code":"MR"}]},"value":"2"}]}"#;
        let mut rules = Rules::default();
        rules.add(
            &pointer("/identifier/*/value"),
            0,
            Some(Filter::Equals {
                path: pointer("/system"),
                equals: "b".into(),
            }),
        );
        rules.add(
            &pointer("/identifier/*/value"),
            1,
            Some(Filter::Equals {
                path: pointer("/type/coding/*/code"),
                equals: "MR".into(),
            }),
        );
        let mut found = Found::new(doc);
        rules.find(doc, &mut found);
        let got: Vec<_> = found
            .cells
            .iter()
            .map(|c| (c.namespace, c.text.clone()))
            .collect();
        assert_eq!(got, [(1, Ok("2".to_owned()))]);
    }

    #[test]
    fn words_go_alone_and_references_are_told_apart() {
        let text = "Dr. Jane O'Brien-Smith, Jr 3rd Jos\\u00e9 \\ud83d\\ude00x (MRN 0012)";
        let chars = spelled(text).expect("a JSON string");
        let got: Vec<(String, &str)> = words(&chars)
            .into_iter()
            .map(|w| {
                let raw = chars[w.start].1.start..chars[w.end - 1].1.end;
                (chars[w].iter().map(|(c, _)| c).collect(), &text[raw])
            })
            .collect();
        let want = [
            ("Dr", "Dr"),
            ("Jane", "Jane"),
            ("O'Brien-Smith", "O'Brien-Smith"),
            ("Jr", "Jr"),
            ("3rd", "3rd"),
            ("Jos\u{e9}", "Jos\\u00e9"),
            ("\u{1f600}x", "\\ud83d\\ude00x"),
            ("MRN", "MRN"),
            ("0012", "0012"),
        ];
        let want: Vec<(String, &str)> = want.iter().map(|(w, r)| ((*w).to_owned(), *r)).collect();
        assert_eq!(got, want);
        assert!(spelled("\\ud83d").is_none() && spelled("\\x").is_none());
        for (reference, target) in [
            ("Patient/1", Target::Person),
            (
                "https://fhir.example.org/r4/Practitioner/7/_history/2",
                Target::Person,
            ),
            ("PractitionerRole/x?_format=json", Target::Person),
            ("Organization/9", Target::Other),
            ("https://fhir.example.org/r4/Location/9", Target::Other),
            (
                "urn:uuid:2b0c6c1e-8e1f-4a0e-bb5a-0b9f1f3e6a11",
                Target::Unknown,
            ),
            ("#contained-1", Target::Unknown),
        ] {
            assert_eq!(Target::of_reference(reference), target, "{reference}");
        }
        assert_eq!(
            Target::of_type("http://hl7.org/fhir/StructureDefinition/Patient"),
            Target::Person
        );
        let doc = r#"{"a":{"reference":"Organization/1","display":"Good Health"},"b":{"type":"Patient","display":"Jane Doe"},"c":{"display":"J\u00e9 D"},"d":{"type":"Organization","reference":"Patient/1","display":"X"}}"#;
        let mut rules = Rules::default();
        for key in ["a", "b", "c", "d"] {
            rules.add_leaf(
                &pointer(&format!("/{key}/display")),
                Leaf {
                    namespace: 0,
                    when: Some(Filter::Person),
                    words: true,
                },
            );
        }
        let mut found = Found::new(doc);
        rules.find(doc, &mut found);
        let got: Vec<_> = found
            .cells
            .iter()
            .map(|c| (c.text.clone().unwrap_or_default(), c.encoding))
            .collect();
        assert_eq!(
            got,
            [
                ("Jane".to_owned(), Encoding::JsonFragment),
                ("Doe".to_owned(), Encoding::JsonFragment),
                ("J\u{e9}".to_owned(), Encoding::JsonFragment),
                ("D".to_owned(), Encoding::JsonFragment),
                ("X".to_owned(), Encoding::JsonFragment),
            ]
        );
    }

    proptest::proptest! {
        /// Any string, as serde_json writes it or with every character
        /// escaped: its characters come back, in spans that tile it.
        #[test]
        fn a_json_string_is_spelled_back_character_by_character(text in "\\PC*", escape_all in proptest::bool::ANY) {
            let written = if escape_all {
                text.encode_utf16().map(|u| format!("\\u{u:04x}")).collect::<String>()
            } else {
                let quoted = serde_json::to_string(&text).expect("a string");
                quoted[1..quoted.len() - 1].to_owned()
            };
            let chars = spelled(&written).expect("valid");
            proptest::prop_assert_eq!(chars.iter().map(|(c, _)| c).collect::<String>(), text);
            let mut at = 0;
            for (_, span) in &chars {
                proptest::prop_assert_eq!(span.start, at);
                at = span.end;
            }
            proptest::prop_assert_eq!(at, written.len());
        }
    }
}
