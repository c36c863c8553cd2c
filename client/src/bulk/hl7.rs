//! HL7 v2 messages: files of messages (segments ended by CR, CRLF or LF) or
//! MLLP-framed streams. Each message's delimiters come from its own MSH-1
//! and MSH-2; a cell is a field, a component or a subcomponent, in every
//! repetition, with its escape sequences decoded before it is sent and the
//! answer escaped again in the message's delimiters.
//!
//! A built-in profile names the PHI of the common segments (PID, NK1, GT1,
//! IN1, IN2, MRG; PV1 and PD1 providers when asked); `--map SEG-F[.C[.S]]`
//! rules and a TOML profile add to it or replace it.

use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, Read};
use std::ops::Range;
use std::str::FromStr;

use serde::Deserialize;

use super::fhir::ProfileError;
use super::{BulkError, Cell, Encoding, Location, MAX_UNIT_BYTES, Names, Unit, UnitReader};

/// MLLP's start block (VT): every frame begins with it.
pub(super) const START_BLOCK: u8 = 0x0B;
/// MLLP's end block (FS), followed by a carriage return.
pub(super) const END_BLOCK: u8 = 0x1C;

const NOT_UTF8: &str = "the cell is not valid UTF-8";
/// The most cells one message may hold: a real message holds hundreds, and
/// a bound keeps a unit of millions of repetitions from taking gigabytes.
const MAX_CELLS: usize = 100_000;
const TOO_MANY_CELLS: &str = "the message holds more than 100,000 cells the rules send";
const BEFORE_HEADER: &str =
    "a segment comes before any MSH segment, so its delimiters are unknown; nothing of it was sent";
const MIXED_LINE_ENDS: &str = "a line end of another kind inside the message (LF in a message of CR-ended segments, or CR in one of LF-ended ones), which receivers read differently; nothing of it was sent";
const BAD_DELIMITERS: &str =
    "the MSH segment's delimiters (MSH-1 and MSH-2) are not 5 or 6 distinct punctuation characters";

/// The delimiters of one message, read from its header segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Delimiters {
    field: u8,
    component: u8,
    repetition: u8,
    escape: u8,
    subcomponent: u8,
    /// v2.7's truncation character, when MSH-2 names one.
    truncation: Option<u8>,
}

impl Delimiters {
    /// Reads MSH-1 and MSH-2 (or FHS's or BHS's) from a header segment.
    pub(super) fn read(segment: &[u8]) -> Result<Self, &'static str> {
        let field = *segment.get(3).ok_or(BAD_DELIMITERS)?;
        let rest = &segment[4..];
        let chars = &rest[..memchr::memchr(field, rest).unwrap_or(rest.len())];
        if !(4..=5).contains(&chars.len()) {
            return Err(BAD_DELIMITERS);
        }
        let all = std::iter::once(&field).chain(chars);
        let mut seen = [false; 128];
        for &c in all {
            if !c.is_ascii_punctuation() || std::mem::replace(&mut seen[c as usize], true) {
                return Err(BAD_DELIMITERS);
            }
        }
        Ok(Self {
            field,
            component: chars[0],
            repetition: chars[1],
            escape: chars[2],
            subcomponent: chars[3],
            truncation: chars.get(4).copied(),
        })
    }

    /// The delimiters a message without a readable MSH is answered in.
    pub(super) fn standard() -> Self {
        Self {
            field: b'|',
            component: b'^',
            repetition: b'~',
            escape: b'\\',
            subcomponent: b'&',
            truncation: None,
        }
    }

    /// The field separator.
    pub(super) fn field(&self) -> u8 {
        self.field
    }

    /// The component separator.
    pub(super) fn component(&self) -> u8 {
        self.component
    }

    /// The text of a part, its escape sequences decoded. Formatting,
    /// highlighting and character-set escapes have no text to send and are
    /// refused, so that nothing is sent that could not be written back.
    pub(super) fn decode(&self, raw: &[u8]) -> Result<String, &'static str> {
        if memchr::memchr(self.escape, raw).is_none() {
            return String::from_utf8(raw.to_vec()).map_err(|_| NOT_UTF8);
        }
        let mut out = Vec::with_capacity(raw.len());
        let mut rest = raw;
        while let Some(at) = memchr::memchr(self.escape, rest) {
            out.extend_from_slice(&rest[..at]);
            let after = &rest[at + 1..];
            let end = memchr::memchr(self.escape, after)
                .ok_or("an escape sequence in the cell is not closed")?;
            match &after[..end] {
                b"F" => out.push(self.field),
                b"S" => out.push(self.component),
                b"T" => out.push(self.subcomponent),
                b"R" => out.push(self.repetition),
                b"E" => out.push(self.escape),
                b"P" if self.truncation.is_some() => out.extend(self.truncation),
                [b'X', hex @ ..] if !hex.is_empty() && hex.len() % 2 == 0 => {
                    for pair in hex.chunks(2) {
                        let digits = std::str::from_utf8(pair).ok();
                        let byte = digits
                            .and_then(|d| u8::from_str_radix(d, 16).ok())
                            .ok_or("a \\X..\\ escape in the cell is not hexadecimal")?;
                        out.push(byte);
                    }
                }
                _ => {
                    return Err(
                        "the cell holds a formatting, highlighting or character-set escape, which has no text to send",
                    );
                }
            }
            rest = &after[end + 1..];
        }
        out.extend_from_slice(rest);
        String::from_utf8(out).map_err(|_| NOT_UTF8)
    }

    /// Writes `text` as the content of a part: every delimiter as its
    /// escape, and line breaks as hexadecimal escapes so that they cannot
    /// end the segment. v2.7's truncation character splits nothing and is
    /// written as it is: senders leave it so in addresses (`APT #5`), which
    /// then come back byte for byte.
    pub(super) fn encode(&self, text: &str, out: &mut Vec<u8>) {
        for &b in text.as_bytes() {
            let letter = match b {
                _ if b == self.field => b'F',
                _ if b == self.component => b'S',
                _ if b == self.subcomponent => b'T',
                _ if b == self.repetition => b'R',
                _ if b == self.escape => b'E',
                b'\r' | b'\n' => {
                    out.push(self.escape);
                    out.extend_from_slice(if b == b'\r' { b"X0D" } else { b"X0A" });
                    out.push(self.escape);
                    continue;
                }
                _ => {
                    out.push(b);
                    continue;
                }
            };
            out.extend_from_slice(&[self.escape, letter, self.escape]);
        }
    }
}

/// Writes an answer in place of an HL7 cell: a date cell's `YYYY-MM-DD`
/// back as `YYYYMMDD`, anything else escaped.
pub(super) fn encode(text: &str, delimiters: &Delimiters, date: bool, out: &mut Vec<u8>) {
    let b = text.as_bytes();
    if date && b.len() == 10 && b[4] == b'-' && b[7] == b'-' {
        for part in [&b[..4], &b[5..7], &b[8..]] {
            delimiters.encode(std::str::from_utf8(part).unwrap_or_default(), out);
        }
    } else {
        delimiters.encode(text, out);
    }
}

/// Where a rule points: a field, or one of its components, or one of their
/// subcomponents, in every repetition of the field and every occurrence of
/// the segment. Written `SEG-F[.C[.S]]`, numbered from 1 as in the HL7
/// standard (`PID-5.1.1` is the patient's surname).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct Address {
    segment: [u8; 3],
    field: u16,
    component: Option<u16>,
    subcomponent: Option<u16>,
}

/// An address that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{address:?}: {why}")]
pub struct AddressError {
    address: String,
    why: &'static str,
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = |why| AddressError {
            address: text.to_owned(),
            why,
        };
        let (segment, rest) = text
            .split_once('-')
            .ok_or_else(|| fail("expected SEG-FIELD[.COMPONENT[.SUBCOMPONENT]], as PID-5.1"))?;
        let segment: [u8; 3] = segment
            .as_bytes()
            .try_into()
            .ok()
            .filter(|s: &[u8; 3]| {
                s[0].is_ascii_uppercase()
                    && s.iter()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
            })
            .ok_or_else(|| fail("a segment name is three capital letters or digits, as PID"))?;
        if matches!(&segment, b"FHS" | b"BHS" | b"BTS" | b"FTS") {
            return Err(fail(
                "file and batch header and trailer segments pass through; they hold no patient data",
            ));
        }
        let mut numbers = rest.split('.').map(|n| {
            n.parse::<u16>()
                .ok()
                .filter(|&n| n >= 1)
                .ok_or_else(|| fail("fields, components and subcomponents are numbered from 1"))
        });
        let field = numbers.next().ok_or_else(|| fail("no field number"))??;
        let component = numbers.next().transpose()?;
        let subcomponent = numbers.next().transpose()?;
        if numbers.next().is_some() {
            return Err(fail("a subcomponent has no parts"));
        }
        if &segment == b"MSH" && field <= 2 {
            return Err(fail("MSH-1 and MSH-2 are the message's delimiters"));
        }
        Ok(Self {
            segment,
            field,
            component,
            subcomponent,
        })
    }
}

impl TryFrom<String> for Address {
    type Error = AddressError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let segment = String::from_utf8_lossy(&self.segment);
        write!(f, "{segment}-{}", self.field)?;
        for n in [self.component, self.subcomponent].into_iter().flatten() {
            write!(f, ".{n}")?;
        }
        Ok(())
    }
}

/// Where one cell was found, for the errors file: the rule's address with
/// the segment's occurrence in its message and the field's repetition,
/// each shown when it is not the first (`NK1[2]-5[3].1`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Place {
    at: Address,
    occurrence: u32,
    repetition: u32,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = &self.at;
        f.write_str(&String::from_utf8_lossy(&a.segment))?;
        if self.occurrence > 1 {
            write!(f, "[{}]", self.occurrence)?;
        }
        write!(f, "-{}", a.field)?;
        if self.repetition > 1 {
            write!(f, "[{}]", self.repetition)?;
        }
        for n in [a.component, a.subcomponent].into_iter().flatten() {
            write!(f, ".{n}")?;
        }
        Ok(())
    }
}

/// A rule: the part at an address goes to a namespace, in repetitions whose
/// component `when.0` reads `when.1` when a condition is given.
#[derive(Debug, Clone)]
struct Rule {
    at: Address,
    when: Option<(u16, Box<str>)>,
    namespace: usize,
    /// The part is an HL7 date (`YYYYMMDD`, perhaps followed by a time):
    /// its date is sent as `YYYY-MM-DD`, so that it shares the `dob`
    /// namespace and its tokens with CSV, NDJSON and FHIR dates, and the
    /// time, finer than a day, stays as it was.
    date: bool,
}

/// The HL7 data types whose parts the built-in profile sends.
#[derive(Clone, Copy)]
enum Kind {
    /// CX, an identifier: `.1`, to `ssn` when its type (`.5`) is SS and
    /// to `mrn` otherwise (record, account, member, licence numbers).
    Identifier,
    /// XPN, a person's name: surname (and own and partner's surnames),
    /// given name, further given names.
    Name,
    /// XAD, an address: street lines, other designation, city, postal
    /// code, other geographic designation, county. State and country are
    /// not identifiers under HIPAA Safe Harbor and stay.
    Address,
    /// XTN, a phone number or e-mail: the whole number (`.1`, `.12`), the
    /// local number (`.7`; the area code stays, as a ZIP code's first
    /// three digits do) and the e-mail address (`.4`).
    Telecom,
    /// XCN, a provider: identifier, surnames, given names.
    Provider,
    /// A date (DT, TS, DTM): `.1` as a date.
    Date,
    /// A number in its first component, to `ssn`.
    Ssn,
    /// A number in its first component, to `mrn`.
    Number,
    /// Text in its first component, to `text`.
    Text,
}

/// A part of a data type the built-in profile sends.
#[derive(Clone, Copy)]
struct Part {
    component: u16,
    subcomponent: Option<u16>,
    /// (component, code): only in repetitions whose component reads code.
    when: Option<(u16, &'static str)>,
    namespace: &'static str,
    date: bool,
}

const fn part(component: u16, subcomponent: Option<u16>, namespace: &'static str) -> Part {
    Part {
        component,
        subcomponent,
        when: None,
        namespace,
        date: false,
    }
}

impl Kind {
    fn parts(self) -> &'static [Part] {
        const SURNAME: [Part; 3] = [
            // FN: surname, own surname, surname from partner.
            part(1, Some(1), "name"),
            part(1, Some(3), "name"),
            part(1, Some(5), "name"),
        ];
        match self {
            Kind::Identifier => {
                const P: &[Part] = &[
                    Part {
                        when: Some((5, "SS")),
                        ..part(1, None, "ssn")
                    },
                    part(1, None, "mrn"),
                ];
                P
            }
            Kind::Name => {
                const P: &[Part] = &[
                    SURNAME[0],
                    SURNAME[1],
                    SURNAME[2],
                    part(2, None, "name"),
                    part(3, None, "name"),
                ];
                P
            }
            Kind::Address => {
                const P: &[Part] = &[
                    part(1, Some(1), "text"),
                    part(1, Some(2), "text"),
                    part(1, Some(3), "text"),
                    part(2, None, "text"),
                    part(3, None, "text"),
                    part(5, None, "zip"),
                    part(8, None, "text"),
                    part(9, None, "text"),
                ];
                P
            }
            Kind::Telecom => {
                const P: &[Part] = &[
                    part(1, None, "phone"),
                    part(4, None, "email"),
                    part(7, None, "phone"),
                    part(12, None, "phone"),
                ];
                P
            }
            Kind::Provider => {
                const P: &[Part] = &[
                    part(1, None, "mrn"),
                    part(2, Some(1), "name"),
                    part(2, Some(3), "name"),
                    part(2, Some(5), "name"),
                    part(3, None, "name"),
                    part(4, None, "name"),
                ];
                P
            }
            Kind::Date => {
                const P: &[Part] = &[Part {
                    date: true,
                    ..part(1, None, "dob")
                }];
                P
            }
            Kind::Ssn => {
                const P: &[Part] = &[part(1, None, "ssn")];
                P
            }
            Kind::Number => {
                const P: &[Part] = &[part(1, None, "mrn")];
                P
            }
            Kind::Text => {
                const P: &[Part] = &[part(1, None, "text")];
                P
            }
        }
    }
}

/// The built-in profile: the fields of the patient, next-of-kin,
/// guarantor, insurance and merge segments that hold what HIPAA's Safe
/// Harbor list names, as defined in v2.5.1 (earlier versions place them
/// the same; later ones only add fields).
const PATIENT: &[(&[u8; 3], u16, Kind)] = &[
    (b"PID", 2, Kind::Identifier),
    (b"PID", 3, Kind::Identifier),
    (b"PID", 4, Kind::Identifier),
    (b"PID", 5, Kind::Name),
    (b"PID", 6, Kind::Name),
    (b"PID", 7, Kind::Date),
    (b"PID", 9, Kind::Name),
    (b"PID", 11, Kind::Address),
    (b"PID", 12, Kind::Text),
    (b"PID", 13, Kind::Telecom),
    (b"PID", 14, Kind::Telecom),
    (b"PID", 18, Kind::Identifier),
    (b"PID", 19, Kind::Ssn),
    (b"PID", 20, Kind::Number),
    (b"PID", 21, Kind::Identifier),
    (b"PID", 23, Kind::Text),
    (b"PID", 29, Kind::Date),
    (b"NK1", 2, Kind::Name),
    (b"NK1", 4, Kind::Address),
    (b"NK1", 5, Kind::Telecom),
    (b"NK1", 6, Kind::Telecom),
    (b"NK1", 16, Kind::Date),
    (b"NK1", 30, Kind::Name),
    (b"NK1", 31, Kind::Telecom),
    (b"NK1", 32, Kind::Address),
    (b"NK1", 33, Kind::Identifier),
    (b"NK1", 37, Kind::Ssn),
    (b"GT1", 2, Kind::Identifier),
    (b"GT1", 3, Kind::Name),
    (b"GT1", 4, Kind::Name),
    (b"GT1", 5, Kind::Address),
    (b"GT1", 6, Kind::Telecom),
    (b"GT1", 7, Kind::Telecom),
    (b"GT1", 8, Kind::Date),
    (b"GT1", 12, Kind::Ssn),
    (b"GT1", 16, Kind::Name),
    (b"GT1", 17, Kind::Address),
    (b"GT1", 18, Kind::Telecom),
    (b"GT1", 19, Kind::Identifier),
    (b"IN1", 16, Kind::Name),
    (b"IN1", 18, Kind::Date),
    (b"IN1", 19, Kind::Address),
    (b"IN1", 36, Kind::Number),
    (b"IN1", 49, Kind::Identifier),
    (b"IN2", 1, Kind::Identifier),
    (b"IN2", 2, Kind::Ssn),
    (b"IN2", 6, Kind::Number),
    (b"IN2", 8, Kind::Number),
    (b"IN2", 61, Kind::Identifier),
    (b"IN2", 63, Kind::Telecom),
    (b"MRG", 1, Kind::Identifier),
    (b"MRG", 2, Kind::Identifier),
    (b"MRG", 3, Kind::Identifier),
    (b"MRG", 4, Kind::Identifier),
    (b"MRG", 7, Kind::Name),
];

/// The providers a visit names (attending, referring, consulting and
/// admitting doctors; the primary care provider), sent when a profile sets
/// `providers = true`: their names identify the clinician, not the
/// patient, and many pipelines keep them.
const PROVIDERS: &[(&[u8; 3], u16, Kind)] = &[
    (b"PV1", 7, Kind::Provider),
    (b"PV1", 8, Kind::Provider),
    (b"PV1", 9, Kind::Provider),
    (b"PV1", 17, Kind::Provider),
    (b"PD1", 4, Kind::Provider),
];

/// An HL7 v2 profile file: rules added to (or, with `builtin = false`,
/// used instead of) the built-in profile.
///
/// ```toml
/// builtin = true
/// providers = true
///
/// [[rule]]
/// field = "PID-3.1"
/// when = { component = 5, equals = "PN" }
/// namespace = "mrn"
///
/// [[rule]]
/// field = "ZPI-4"
/// namespace = "dob"
/// date = true
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hl7Profile {
    /// Keep the built-in rules (default).
    #[serde(default = "yes")]
    builtin: bool,
    /// Add the providers of PV1 and PD1 to the built-in rules.
    #[serde(default)]
    providers: bool,
    #[serde(default, rename = "rule")]
    rules: Vec<Hl7RuleSpec>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Hl7RuleSpec {
    /// Parsed as the profile is, so that a rule cannot be dropped later.
    field: Address,
    when: Option<Hl7When>,
    namespace: String,
    #[serde(default)]
    date: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Hl7When {
    component: u16,
    equals: String,
}

impl Hl7Profile {
    /// Parses a TOML profile.
    pub fn parse(text: &str) -> Result<Self, ProfileError> {
        let profile: Self = toml::from_str(text).map_err(|e| ProfileError::new(e.to_string()))?;
        for (i, rule) in profile.rules.iter().enumerate() {
            let at = |e: String| ProfileError::new(format!("rule {}: {e}", i + 1));
            if rule.namespace.is_empty() {
                return Err(at("the namespace must not be empty".into()));
            }
            if rule.when.as_ref().is_some_and(|w| w.component == 0) {
                return Err(at("components are numbered from 1".into()));
            }
        }
        if !profile.builtin && profile.rules.is_empty() && !profile.providers {
            return Err(ProfileError::new(
                "the profile drops the built-in rules and has none of its own".into(),
            ));
        }
        Ok(profile)
    }
}

/// The rules of an HL7 v2 run.
#[derive(Debug, Clone)]
pub struct Hl7Layout {
    rules: Vec<Rule>,
    /// Rule indices by segment, then by field, in the order they win.
    by_segment: HashMap<[u8; 3], Vec<(u16, Vec<usize>)>>,
    names: Names,
}

impl Hl7Layout {
    /// The built-in profile, replaced or extended by `profile`, with the
    /// `maps` of the command line. Where two rules reach the same part of
    /// a message, the first wins: the command line's, then the profile's,
    /// then the built-in ones.
    pub fn new(profile: Option<&Hl7Profile>, maps: &[(Address, String)]) -> Self {
        let mut layout = Self {
            rules: Vec::new(),
            by_segment: HashMap::new(),
            names: Names::default(),
        };
        for (at, namespace) in maps {
            layout.add(*at, None, namespace, false);
        }
        for rule in profile.map(|p| p.rules.as_slice()).unwrap_or_default() {
            let when = rule.when.as_ref().map(|w| (w.component, w.equals.as_str()));
            layout.add(rule.field, when, &rule.namespace, rule.date);
        }
        let mut tables = Vec::new();
        if profile.is_none_or(|p| p.builtin) {
            tables.push(PATIENT);
        }
        if profile.is_some_and(|p| p.providers) {
            tables.push(PROVIDERS);
        }
        for &(segment, field, kind) in tables.into_iter().flatten() {
            for part in kind.parts() {
                let at = Address {
                    segment: *segment,
                    field,
                    component: Some(part.component),
                    subcomponent: part.subcomponent,
                };
                layout.add(at, part.when, part.namespace, part.date);
            }
        }
        layout
    }

    fn add(&mut self, at: Address, when: Option<(u16, &str)>, namespace: &str, date: bool) {
        let namespace = self.names.namespace(namespace);
        let fields = self.by_segment.entry(at.segment).or_default();
        let index = match fields.iter().position(|(f, _)| *f == at.field) {
            Some(index) => index,
            None => {
                fields.push((at.field, Vec::new()));
                fields.len() - 1
            }
        };
        fields[index].1.push(self.rules.len());
        self.rules.push(Rule {
            at,
            when: when.map(|(c, v)| (c, v.into())),
            namespace,
            date,
        });
    }

    pub(super) fn names(&self) -> Names {
        self.names.clone()
    }

    /// Finds the cells of the segments in `raw[body]`, reading the
    /// delimiters again at every header segment. `Err` names why the unit
    /// cannot be read at all.
    pub(super) fn find(
        &self,
        raw: &[u8],
        body: Range<usize>,
        cells: &mut Vec<Cell>,
    ) -> Result<(), &'static str> {
        let mut delimiters = None;
        let mut fields = Vec::new();
        let mut occurrences: Vec<([u8; 3], u32)> = Vec::new();
        // The line end of the message's header line: CR (the standard's,
        // or CRLF) or LF. A line end of the other kind inside the message
        // is read one way by a receiver that splits on CR only and another
        // by one that splits on both, and either way a segment or its tail
        // could pass unread: the message is refused instead.
        let mut style = None;
        let mut at = body.start;
        while at < body.end {
            let end =
                memchr::memchr2(b'\r', b'\n', &raw[at..body.end]).map_or(body.end, |i| at + i);
            let ended_by = raw.get(end).copied().filter(|_| end < body.end);
            let line = at..end;
            at = end + 1;
            match (style, ended_by) {
                (Some(b'\r'), Some(b'\n')) if end > 0 && raw[end - 1] == b'\r' => {}
                (Some(expected), Some(got)) if expected != got => return Err(MIXED_LINE_ENDS),
                _ => {}
            }
            let Some(start) = raw[line.clone()]
                .iter()
                .position(|b| !b.is_ascii_whitespace())
            else {
                continue;
            };
            let (start, end) = (line.start + start, line.end);
            let segment = &raw[start..end];
            // A line shorter than a segment name inside a message is passed
            // over (free text broken across lines); before any header it
            // is refused, as any segment there is.
            let Some(name) = segment.first_chunk::<3>() else {
                if delimiters.is_none() {
                    return Err(BEFORE_HEADER);
                }
                continue;
            };
            if matches!(name, b"MSH" | b"FHS" | b"BHS") {
                delimiters = Some(Delimiters::read(segment)?);
                style = ended_by;
            }
            let Some(d) = delimiters else {
                return Err(BEFORE_HEADER);
            };
            let Some(by_field) = self.by_segment.get(name) else {
                continue;
            };
            if segment.len() > 3 && segment[3] != d.field {
                continue;
            }
            let occurrence = match occurrences.iter_mut().find(|(n, _)| n == name) {
                Some((_, count)) => {
                    *count += 1;
                    *count
                }
                None => {
                    occurrences.push((*name, 1));
                    1
                }
            };
            fields.clear();
            fields.extend(split(start..end, raw, d.field));
            for (number, rules) in by_field {
                // MSH-1 is the field separator itself, so MSH's fields
                // stand one place later than other segments'.
                let element = usize::from(*number) - usize::from(name == b"MSH");
                let Some(field) = fields.get(element) else {
                    continue;
                };
                for (i, repetition) in split(field.clone(), raw, d.repetition).enumerate() {
                    // Parts of one repetition are the only ones that can
                    // overlap: the earlier rule's cell stands.
                    let first = cells.len();
                    for &rule in rules {
                        let rule = &self.rules[rule];
                        let place = Place {
                            at: rule.at,
                            occurrence,
                            repetition: i as u32 + 1,
                        };
                        let Some(mut cell) = cell(raw, repetition.clone(), rule, &d, place) else {
                            continue;
                        };
                        let taken = cells[first..]
                            .iter()
                            .find(|c| overlaps(&c.span, &cell.span));
                        match taken {
                            None => {}
                            // Inside a part an earlier rule sends: sent.
                            Some(c)
                                if c.span.start <= cell.span.start
                                    && cell.span.end <= c.span.end =>
                            {
                                continue;
                            }
                            // Wider than it: the rest of this part would
                            // pass unread, so the part fails instead.
                            Some(_) => {
                                cell.span = cell.span.start..cell.span.start;
                                cell.text = Err(
                                    "an earlier rule sends only part of this part; map the rest of it too",
                                );
                            }
                        }
                        cells.push(cell);
                        if cells.len() > MAX_CELLS {
                            return Err(TOO_MANY_CELLS);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn overlaps(a: &Range<usize>, b: &Range<usize>) -> bool {
    a.start < b.end && b.start < a.end
}

/// The pieces of `raw[range]` between `separator`s, as ranges of `raw`.
fn split(
    range: Range<usize>,
    raw: &[u8],
    separator: u8,
) -> impl Iterator<Item = Range<usize>> + '_ {
    let mut at = Some(range.start);
    std::iter::from_fn(move || {
        let start = at?;
        match memchr::memchr(separator, &raw[start..range.end]) {
            Some(i) => {
                at = Some(start + i + 1);
                Some(start..start + i)
            }
            None => {
                at = None;
                Some(start..range.end)
            }
        }
    })
}

/// The `n`th piece (from 1) of `raw[range]`; a part without the separator
/// is its own first piece, as the standard reads it.
fn nth(range: Range<usize>, raw: &[u8], separator: u8, n: u16) -> Option<Range<usize>> {
    split(range, raw, separator).nth(usize::from(n) - 1)
}

/// The cell a rule finds in one repetition of a field, if any.
fn cell(
    raw: &[u8],
    repetition: Range<usize>,
    rule: &Rule,
    d: &Delimiters,
    place: Place,
) -> Option<Cell> {
    if let Some((component, equals)) = &rule.when {
        let part = nth(repetition.clone(), raw, d.component, *component)?;
        let part = nth(part, raw, d.subcomponent, 1)?;
        if d.decode(&raw[part]).ok()?.as_str() != &**equals {
            return None;
        }
    }
    let mut part = repetition;
    if let Some(component) = rule.at.component {
        part = nth(part, raw, d.component, component)?;
        if let Some(subcomponent) = rule.at.subcomponent {
            part = nth(part, raw, d.subcomponent, subcomponent)?;
        }
    }
    let bytes = &raw[part.clone()];
    // An empty part has nothing to send, and `""` is HL7's explicit null.
    if bytes.is_empty() || bytes == b"\"\"" {
        return None;
    }
    let deeper = match (rule.at.component, rule.at.subcomponent) {
        (None, _) if bytes.contains(&d.component) => {
            Some("the field holds components; map one of them (SEG-F.C)")
        }
        (_, None) if bytes.contains(&d.subcomponent) => {
            Some("the component holds subcomponents; map one of them (SEG-F.C.S)")
        }
        _ => None,
    };
    let (span, text) = match deeper {
        Some(why) => (part, Err(why)),
        None if rule.date => date(part, bytes),
        None => (part, d.decode(bytes)),
    };
    Some(Cell {
        span,
        namespace: rule.namespace,
        text,
        location: Location::Hl7(place),
        encoding: Encoding::Hl7 {
            delimiters: *d,
            date: rule.date,
        },
    })
}

/// A date cell: the day of an HL7 date or date-time (`YYYYMMDD[HHMM…]`),
/// sent as `YYYY-MM-DD`.
fn date(part: Range<usize>, bytes: &[u8]) -> (Range<usize>, Result<String, &'static str>) {
    match bytes.get(..8) {
        Some(day) if day.iter().all(u8::is_ascii_digit) => {
            let text = format!(
                "{}-{}-{}",
                // ASCII digits, checked above.
                std::str::from_utf8(&day[..4]).unwrap_or_default(),
                std::str::from_utf8(&day[4..6]).unwrap_or_default(),
                std::str::from_utf8(&day[6..]).unwrap_or_default(),
            );
            (part.start..part.start + 8, Ok(text))
        }
        _ => (
            part,
            Err("the cell is not an HL7 date (YYYYMMDD, perhaps followed by a time)"),
        ),
    }
}

/// How the input is cut: decided from its first bytes.
#[derive(Debug, Clone, Copy)]
enum Framing {
    /// Messages one after another.
    Segments,
    /// MLLP: each message between a start block and an end block.
    Mllp,
}

/// What a segment begins: a message, a file or batch header or trailer,
/// another segment, or nothing (a blank line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Begins {
    Message,
    Batch,
    Other,
    Blank,
}

fn begins(segment: &[u8]) -> Begins {
    let text = segment.trim_ascii_start();
    match text.get(..3) {
        _ if text.iter().all(u8::is_ascii_whitespace) => Begins::Blank,
        Some(b"MSH") => Begins::Message,
        Some(b"FHS" | b"BHS" | b"BTS" | b"FTS") => Begins::Batch,
        _ => Begins::Other,
    }
}

/// Reads HL7 v2 messages, one unit each.
pub(super) struct Hl7Reader<R> {
    input: R,
    layout: Hl7Layout,
    framing: Option<Framing>,
    /// The first segment of the next unit, read to find where this one
    /// ended.
    carry: Vec<u8>,
    carry_line: u64,
    /// Segments read so far.
    line: u64,
    row: u64,
}

impl<R: BufRead> Hl7Reader<R> {
    pub(super) fn new(input: R, layout: Hl7Layout) -> Self {
        Self {
            input,
            layout,
            framing: None,
            carry: Vec::new(),
            carry_line: 0,
            line: 0,
            row: 0,
        }
    }

    /// MLLP when the first byte that is not white space is a start block,
    /// read for as long as it takes (a pipe may deliver a line break
    /// alone first); the white space before it begins the first unit.
    fn framing(&mut self) -> Result<Framing, BulkError> {
        if let Some(framing) = self.framing {
            return Ok(framing);
        }
        let framing = loop {
            let buffer = self
                .input
                .fill_buf()
                .map_err(BulkError::io("cannot read the input"))?;
            if buffer.is_empty() {
                break Framing::Segments;
            }
            match buffer.iter().position(|b| !b.is_ascii_whitespace()) {
                Some(i) => {
                    let mllp = buffer[i] == START_BLOCK;
                    self.carry.extend_from_slice(&buffer[..i]);
                    self.input.consume(i);
                    break if mllp {
                        Framing::Mllp
                    } else {
                        Framing::Segments
                    };
                }
                None => {
                    let n = buffer.len();
                    self.carry.extend_from_slice(buffer);
                    self.input.consume(n);
                    if self.carry.len() > MAX_UNIT_BYTES {
                        return Err(BulkError::Input(format!(
                            "the input begins with more than {} MiB of white space; is it HL7 v2?",
                            MAX_UNIT_BYTES >> 20
                        )));
                    }
                }
            }
        };
        self.framing = Some(framing);
        Ok(framing)
    }

    fn too_large(&self) -> BulkError {
        BulkError::Input(format!(
            "a message starting near line {} is larger than {} MiB; is the input HL7 v2?",
            self.line + 1,
            MAX_UNIT_BYTES >> 20
        ))
    }

    /// Appends the input up to and including `end` to `raw`; the bytes
    /// appended (0 at the end of the input).
    fn read_through(&mut self, end: u8, raw: &mut Vec<u8>) -> Result<usize, BulkError> {
        let room = (MAX_UNIT_BYTES + 1).saturating_sub(raw.len()) as u64;
        let n = (&mut self.input)
            .take(room)
            .read_until(end, raw)
            .map_err(BulkError::io("cannot read the input"))?;
        if raw.len() > MAX_UNIT_BYTES {
            return Err(self.too_large());
        }
        Ok(n)
    }

    /// Appends one segment and its end (CR, LF or CRLF) to `raw`; the
    /// bytes appended (0 at the end of the input).
    fn read_segment(&mut self, raw: &mut Vec<u8>) -> Result<usize, BulkError> {
        let mut n = 0;
        loop {
            let buffer = self
                .input
                .fill_buf()
                .map_err(BulkError::io("cannot read the input"))?;
            if buffer.is_empty() {
                return Ok(n);
            }
            let (taken, ended) = match memchr::memchr2(b'\r', b'\n', buffer) {
                Some(i) => (i + 1, Some(buffer[i])),
                None => (buffer.len(), None),
            };
            raw.extend_from_slice(&buffer[..taken]);
            self.input.consume(taken);
            n += taken;
            if raw.len() > MAX_UNIT_BYTES {
                return Err(self.too_large());
            }
            match ended {
                None => {}
                // The line feed of a CRLF ends the same segment.
                Some(b'\r') => {
                    let next = self
                        .input
                        .fill_buf()
                        .map_err(BulkError::io("cannot read the input"))?;
                    if next.first() == Some(&b'\n') {
                        raw.push(b'\n');
                        self.input.consume(1);
                        n += 1;
                    }
                    return Ok(n);
                }
                Some(_) => return Ok(n),
            }
        }
    }

    fn next_message(&mut self) -> Result<Option<Unit>, BulkError> {
        let mut raw = std::mem::take(&mut self.carry);
        let mut first = Some((begins(&raw), self.carry_line)).filter(|(k, _)| *k != Begins::Blank);
        // A file or batch header or trailer is a unit of its own: nothing
        // after it may pass through with it unread.
        while first.is_none_or(|(k, _)| k != Begins::Batch) {
            let start = raw.len();
            if self.read_segment(&mut raw)? == 0 {
                break;
            }
            self.line += 1;
            let this = begins(&raw[start..]);
            match (first, this) {
                (_, Begins::Blank) => {}
                (None, _) => first = Some((this, self.line)),
                (Some(_), Begins::Message | Begins::Batch) => {
                    self.carry = raw.split_off(start);
                    self.carry_line = self.line;
                    break;
                }
                (Some(_), Begins::Other) => {}
            }
        }
        if raw.is_empty() {
            return Ok(None);
        }
        let (kind, line) = match first {
            Some((Begins::Batch, line)) => return Ok(Some(passed(raw, line))),
            Some(first) => first,
            // Blank lines at the end of the input.
            None => return Ok(Some(passed(raw, self.line))),
        };
        self.row += 1;
        let mut unit = Unit {
            row: self.row,
            line,
            raw,
            cells: Vec::new(),
            problem: None,
        };
        if kind == Begins::Other {
            unit.problem = Some(BEFORE_HEADER);
            return Ok(Some(unit));
        }
        let body = 0..unit.raw.len();
        self.fill(&mut unit, body);
        Ok(Some(unit))
    }

    fn next_frame(&mut self) -> Result<Option<Unit>, BulkError> {
        let mut raw = std::mem::take(&mut self.carry);
        if self.read_through(START_BLOCK, &mut raw)? == 0 && raw.is_empty() {
            return Ok(None);
        }
        let outside = &raw[..raw.len() - usize::from(raw.last() == Some(&START_BLOCK))];
        if !outside.iter().all(u8::is_ascii_whitespace) {
            return Err(BulkError::Input(format!(
                "after frame {}: bytes outside an MLLP frame (frames begin with 0x0B); nothing was written past the frame before them",
                self.row
            )));
        }
        if raw.last() != Some(&START_BLOCK) {
            // White space after the last frame.
            return Ok(Some(passed(raw, self.line)));
        }
        let body = raw.len();
        self.read_through(END_BLOCK, &mut raw)?;
        let mut end = [0u8];
        let closed = raw.last() == Some(&END_BLOCK)
            && self
                .input
                .read(&mut end)
                .map_err(BulkError::io("cannot read the input"))?
                == 1
            && end[0] == b'\r';
        if !closed {
            return Err(BulkError::Input(format!(
                "frame {}: an MLLP frame does not end with 0x1C 0x0D; nothing was written past the frame before it",
                self.row + 1
            )));
        }
        raw.push(b'\r');
        self.row += 1;
        let line = self.line + 1;
        let body = body..raw.len() - 2;
        self.line += memchr::memchr2_iter(b'\r', b'\n', &raw[body.clone()]).count() as u64;
        let mut unit = Unit {
            row: self.row,
            line,
            raw,
            cells: Vec::new(),
            problem: None,
        };
        self.fill(&mut unit, body);
        Ok(Some(unit))
    }

    fn fill(&self, unit: &mut Unit, body: Range<usize>) {
        let mut cells = Vec::new();
        match self.layout.find(&unit.raw, body, &mut cells) {
            Ok(()) => unit.cells = cells,
            Err(problem) => unit.problem = Some(problem),
        }
    }
}

/// A unit that is not a message: written as it was, not counted.
fn passed(raw: Vec<u8>, line: u64) -> Unit {
    Unit {
        row: 0,
        line,
        raw,
        cells: Vec::new(),
        problem: None,
    }
}

impl<R: BufRead + Send> UnitReader for Hl7Reader<R> {
    fn next_unit(&mut self) -> Result<Option<Unit>, BulkError> {
        match self.framing()? {
            Framing::Segments => self.next_message(),
            Framing::Mllp => self.next_frame(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(input: &[u8], layout: Hl7Layout) -> Vec<Unit> {
        let mut reader = Hl7Reader::new(input, layout);
        let mut units = Vec::new();
        while let Some(unit) = reader.next_unit().expect("unit") {
            units.push(unit);
        }
        units
    }

    fn cells(unit: &Unit, names: &Names) -> Vec<(String, String, Result<String, &'static str>)> {
        unit.cells
            .iter()
            .map(|c| {
                (
                    names.location(&c.location),
                    names.namespaces[c.namespace].clone(),
                    c.text.clone(),
                )
            })
            .collect()
    }

    const ADT: &str = "MSH|^~\\&|ADT1|GOOD HEALTH HOSPITAL|GHH LAB|GHH|202401011200||ADT^A01|MSG00001|P|2.5.1\r\
EVN|A01|202401011200\r\
PID|1||PATID1234^^^GHH^MR~123-45-6789^^^USSSA^SS~DL998^^^CA^DL||EVERYWOMAN^EVE^E^^^^L||19620320|F|||153 FERNWOOD DR.^^STATESVILLE^OH^35292||(206)3345232|(206)7528123||||AC555444444||67-A4335^OH^20030520\r\
NK1|1|NUCLEAR^NELDA^W|SPO^SPOUSE||||NK^NEXT OF KIN\r\
PV1|1|I|2000^2012^01||||004777^ATTEND^AARON^A|||SUR\r\
ZPI|1|19620320|SECRET\r";

    #[test]
    fn the_builtin_profile_finds_the_patient_and_leaves_the_rest() {
        let layout = Hl7Layout::new(None, &[]);
        let names = layout.names();
        let units = read_all(ADT.as_bytes(), layout);
        assert_eq!(units.len(), 1);
        assert_eq!(
            (units[0].row, units[0].line, units[0].problem),
            (1, 1, None)
        );
        let got = cells(&units[0], &names);
        let want: Vec<(&str, &str, &str)> = vec![
            ("PID-3.1", "mrn", "PATID1234"),
            ("PID-3[2].1", "ssn", "123-45-6789"),
            ("PID-3[3].1", "mrn", "DL998"),
            ("PID-5.1.1", "name", "EVERYWOMAN"),
            ("PID-5.2", "name", "EVE"),
            ("PID-5.3", "name", "E"),
            ("PID-7.1", "dob", "1962-03-20"),
            ("PID-11.1.1", "text", "153 FERNWOOD DR."),
            ("PID-11.3", "text", "STATESVILLE"),
            ("PID-11.5", "zip", "35292"),
            ("PID-13.1", "phone", "(206)3345232"),
            ("PID-14.1", "phone", "(206)7528123"),
            ("PID-18.1", "mrn", "AC555444444"),
            ("PID-20.1", "mrn", "67-A4335"),
            ("NK1-2.1.1", "name", "NUCLEAR"),
            ("NK1-2.2", "name", "NELDA"),
            ("NK1-2.3", "name", "W"),
        ];
        let mut got: Vec<_> = got
            .into_iter()
            .map(|(l, n, t)| (l, n, t.expect("text")))
            .collect();
        got.sort();
        let mut want: Vec<_> = want
            .into_iter()
            .map(|(l, n, t)| (l.to_owned(), n.to_owned(), t.to_owned()))
            .collect();
        want.sort();
        assert_eq!(got, want);
        // Spans are the raw bytes; the date cell's, the day without dashes.
        let unit = &units[0];
        for cell in &unit.cells {
            let raw = std::str::from_utf8(&unit.raw[cell.span.clone()]).expect("ascii");
            let text = cell.text.as_ref().expect("text");
            match names.namespaces[cell.namespace].as_str() {
                "dob" => assert_eq!(raw, text.replace('-', "")),
                _ => assert_eq!(raw, text),
            }
        }
    }

    #[test]
    fn providers_and_maps_and_profiles_add_rules_and_the_first_rule_wins() {
        let profile = Hl7Profile::parse(
            "providers = true\n[[rule]]\nfield = \"ZPI-2\"\nnamespace = \"dob\"\ndate = true\n[[rule]]\nfield = \"PID-3.1\"\nwhen = { component = 5, equals = \"DL\" }\nnamespace = \"licence\"",
        )
        .expect("profile");
        let maps = [("PID-5.2".parse().expect("address"), "text".to_owned())];
        let layout = Hl7Layout::new(Some(&profile), &maps);
        let names = layout.names();
        let units = read_all(ADT.as_bytes(), layout);
        let got = cells(&units[0], &names);
        let find = |l: &str| {
            got.iter()
                .find(|(loc, _, _)| loc == l)
                .map(|(_, n, t)| (n.clone(), t.clone()))
        };
        assert_eq!(find("PID-5.2"), Some(("text".into(), Ok("EVE".into()))));
        assert_eq!(
            find("PID-3[3].1"),
            Some(("licence".into(), Ok("DL998".into())))
        );
        assert_eq!(find("ZPI-2"), Some(("dob".into(), Ok("1962-03-20".into()))));
        assert_eq!(
            find("PV1-7.2.1"),
            Some(("name".into(), Ok("ATTEND".into())))
        );
        assert_eq!(find("PV1-7.1"), Some(("mrn".into(), Ok("004777".into()))));
        assert_eq!(got.iter().filter(|(l, _, _)| l == "PID-5.2").count(), 1);
        let only =
            Hl7Profile::parse("builtin = false\n[[rule]]\nfield = \"ZPI-3\"\nnamespace = \"text\"")
                .expect("profile");
        let layout = Hl7Layout::new(Some(&only), &[]);
        let units = read_all(ADT.as_bytes(), layout);
        assert_eq!(units[0].cells.len(), 1);
    }

    #[test]
    fn escapes_are_decoded_and_encoded_in_the_message_s_own_delimiters() {
        // Delimiters: field #, component *, repetition @, escape !,
        // subcomponent $.
        let msg = "MSH#*@!$#A#B#C#D#20240101##ADT*A08#1#P#2.3\rPID#1##X1***MR##O!T!BRIEN!F!*ANN!X0D0A!##19800102\r";
        let layout = Hl7Layout::new(None, &[]);
        let names = layout.names();
        let units = read_all(msg.as_bytes(), layout);
        let got = cells(&units[0], &names);
        assert!(got.contains(&("PID-5.1.1".into(), "name".into(), Ok("O$BRIEN#".into()))));
        assert!(got.contains(&("PID-5.2".into(), "name".into(), Ok("ANN\r\n".into()))));
        assert!(got.contains(&("PID-3.1".into(), "mrn".into(), Ok("X1".into()))));
        let d = Delimiters::read(b"MSH#*@!$#").expect("delimiters");
        let mut out = Vec::new();
        d.encode("O$BRIEN#*@!\r", &mut out);
        assert_eq!(out, b"O!T!BRIEN!F!!S!!R!!E!!X0D!");
        assert_eq!(d.decode(&out).as_deref(), Ok("O$BRIEN#*@!\r"));
        assert!(d.decode(b"A!H!B").is_err());
        assert!(d.decode(b"A!XZZ!").is_err());
        assert!(d.decode(b"A!F").is_err());
    }

    #[test]
    fn deeper_parts_nulls_and_bad_dates_are_refused_or_passed_over() {
        let msg = "MSH|^~\\&|A|B|C|D|1||ADT^A04|1|P|2.4\rPID|1||\"\"||^JO&HN||1980||||||||||||123456789\r";
        let maps = [("PID-19".parse().expect("address"), "ssn".to_owned())];
        let layout = Hl7Layout::new(None, &maps);
        let names = layout.names();
        let units = read_all(msg.as_bytes(), layout);
        let got = cells(&units[0], &names);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got.iter().any(|(l, _, t)| l == "PID-5.2" && t.is_err()));
        assert!(got.iter().any(|(l, _, t)| l == "PID-7.1" && t.is_err()));
        assert!(
            got.iter()
                .any(|(l, n, t)| l == "PID-19" && n == "ssn" && t.as_deref() == Ok("123456789"))
        );
        let layout = Hl7Layout::new(
            None,
            &[("PID-5".parse().expect("address"), "text".to_owned())],
        );
        let units = read_all(b"MSH|^~\\&|A\rPID|1||||DOE^JANE\r".as_slice(), layout);
        assert!(units[0].cells.iter().any(|c| c.text.is_err()));
    }

    #[test]
    fn messages_are_cut_at_headers_in_any_line_ending_and_batches_pass_through() {
        for end in ["\r", "\n", "\r\n"] {
            let text = format!(
                "FHS|^~\\&|A{end}BHS|^~\\&|A{end}MSH|^~\\&|A|||||ADT^A01|1|P|2.3{end}PID|1||1^^^^MR{end}{end}MSH|^~\\&|A|||||ADT^A01|2|P|2.3{end}PID|1||2^^^^MR{end}BTS|2{end}FTS|1{end}"
            );
            let units = read_all(text.as_bytes(), Hl7Layout::new(None, &[]));
            let rows: Vec<_> = units
                .iter()
                .map(|u| (u.row, u.line, u.cells.len()))
                .collect();
            assert_eq!(
                rows,
                [
                    (0, 1, 0),
                    (0, 2, 0),
                    (1, 3, 1),
                    (2, 6, 1),
                    (0, 8, 0),
                    (0, 9, 0)
                ],
                "{end:?}"
            );
            let joined: Vec<u8> = units.iter().flat_map(|u| u.raw.clone()).collect();
            assert_eq!(joined, text.as_bytes());
        }
        let units = read_all(
            b"PID|1||1^^^^MR\rMSH|^~\\&|A\r".as_slice(),
            Hl7Layout::new(None, &[]),
        );
        assert_eq!(units[0].problem, Some(BEFORE_HEADER));
        assert!(units[0].cells.is_empty());
        let units = read_all(
            b"MSH|^~|A\rPID|1||1^^^^MR\r".as_slice(),
            Hl7Layout::new(None, &[]),
        );
        assert_eq!(units[0].problem, Some(BAD_DELIMITERS));
    }

    #[test]
    fn mllp_frames_are_units_and_broken_frames_stop_the_run() {
        let frame =
            |id: &str| format!("\x0bMSH|^~\\&|A|||||ADT^A01|{id}|P|2.8\rPID|1||{id}^^^^MR\r\x1c\r");
        let text = format!("{}\n{}\n", frame("1"), frame("2"));
        let units = read_all(text.as_bytes(), Hl7Layout::new(None, &[]));
        let rows: Vec<_> = units
            .iter()
            .map(|u| (u.row, u.line, u.cells.len()))
            .collect();
        assert_eq!(rows, [(1, 1, 1), (2, 3, 1), (0, 4, 0)]);
        let joined: Vec<u8> = units.iter().flat_map(|u| u.raw.clone()).collect();
        assert_eq!(joined, text.as_bytes());
        let broken = "\x0bMSH|^~\\&|A\rPID|1||1^^^^MR\r";
        assert!(
            Hl7Reader::new(broken.as_bytes(), Hl7Layout::new(None, &[]))
                .next_unit()
                .is_err()
        );
        let junk = format!("{}junk{}", frame("1"), frame("2"));
        let mut reader = Hl7Reader::new(junk.as_bytes(), Hl7Layout::new(None, &[]));
        assert!(reader.next_unit().is_ok());
        assert!(reader.next_unit().is_err());
    }

    #[test]
    fn mixed_line_ends_leading_space_and_slow_pipes_hide_no_segment() {
        let layout = || Hl7Layout::new(None, &[]);
        // Each kind of line end, a segment indented, and an MLLP frame
        // whose segments end with LF: read.
        for text in [
            "MSH|^~\\&|A\rEVN|A01\rPID|1||123^^^H^MR||DOE^JOHN\r",
            "MSH|^~\\&|A\nEVN|A01\nPID|1||123^^^H^MR||DOE^JOHN\n",
            "MSH|^~\\&|A\r\n  PID|1||123^^^H^MR||DOE^JOHN\r\n",
            "\x0bMSH|^~\\&|A\nPID|1||123^^^H^MR||DOE^JOHN\n\x1c\r",
        ] {
            let units = read_all(text.as_bytes(), layout());
            assert_eq!(units.len(), 1, "{text:?}");
            assert_eq!(units[0].cells.len(), 3, "{text:?}");
        }
        // A line end of the other kind inside a message: a CR-only reader
        // would see the street's line go on into the SSN, a lenient one
        // a segment after EVN. Refused either way, nothing sent.
        for text in [
            "MSH|^~\\&|A\rEVN|A01\nPID|1||123^^^H^MR||DOE^JOHN\r",
            "MSH|^~\\&|A\rPID|1||1^^^H^MR||DOE^JOHN||||||12 ELM\nAPT 4^^CITY^IL^62701|||||||||123456789\r",
            "MSH|^~\\&|A\nEVN|A01\rPID|1||123^^^H^MR||DOE^JOHN\n",
        ] {
            let units = read_all(text.as_bytes(), layout());
            assert_eq!(units[0].problem, Some(MIXED_LINE_ENDS), "{text:?}");
            assert!(units.iter().all(|u| u.cells.is_empty()), "{text:?}");
        }
        // A pipe that first delivers white space alone.
        struct Slow(Vec<&'static [u8]>);
        impl Read for Slow {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let Some(next) = self.0.first_mut() else {
                    return Ok(0);
                };
                let n = next.len().min(buf.len());
                buf[..n].copy_from_slice(&next[..n]);
                *next = &next[n..];
                if next.is_empty() {
                    self.0.remove(0);
                }
                Ok(n)
            }
        }
        let slow = std::io::BufReader::new(Slow(vec![
            b"\n",
            b"\x0bMSH|^~\\&|A",
            b"\rPID|1||1^^^H^MR\r\x1c\r",
        ]));
        let mut reader = Hl7Reader::new(slow, layout());
        let unit = reader.next_unit().expect("unit").expect("a frame");
        assert_eq!((unit.row, unit.cells.len()), (1, 1));
        assert_eq!(unit.raw.first(), Some(&b'\n'));
    }

    #[test]
    fn a_part_wider_than_an_earlier_rule_s_fails_and_truncation_stays() {
        let maps = [("PID-3.1.1".parse().expect("address"), "mrn".to_owned())];
        let layout = Hl7Layout::new(None, &maps);
        let names = layout.names();
        let units = read_all(b"MSH|^~\\&|A\rPID|1||123&456^^^H^MR\r".as_slice(), layout);
        let got = cells(&units[0], &names);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].2.as_deref(), Ok("123"));
        assert!(
            got[1].2.is_err(),
            "the rest of PID-3.1 is reported, not passed"
        );
        let d = Delimiters::read(b"MSH|^~\\&#|").expect("delimiters");
        let mut out = Vec::new();
        d.encode("APT #5", &mut out);
        assert_eq!(out, b"APT #5");
        assert_eq!(d.decode(b"APT \\P\\5").as_deref(), Ok("APT #5"));
    }

    #[test]
    fn a_message_of_millions_of_repetitions_is_refused_quickly() {
        let mut text = b"MSH|^~\\&|A\rPID|||".to_vec();
        for _ in 0..200_000 {
            text.extend_from_slice(b"1~");
        }
        text.push(b'\r');
        let units = read_all(&text, Hl7Layout::new(None, &[]));
        assert_eq!(units[0].problem, Some(TOO_MANY_CELLS));
    }

    #[test]
    fn addresses_are_checked() {
        for bad in [
            "PID",
            "pid-3",
            "PID-0",
            "PID-3.0",
            "PID-3.1.1.1",
            "MSH-2",
            "BHS-3",
            "PI-3",
            "PID-x",
        ] {
            assert!(bad.parse::<Address>().is_err(), "{bad}");
        }
        let a: Address = "ZP1-12.3.4".parse().expect("address");
        assert_eq!(a.to_string(), "ZP1-12.3.4");
        assert!(Hl7Profile::parse("builtin = false").is_err());
        assert!(Hl7Profile::parse("[[rule]]\nfield = \"PID-0\"\nnamespace = \"a\"").is_err());
        assert!(Hl7Profile::parse("colour = 1").is_err());
    }

    use proptest::strategy::Strategy;

    const PIECES: &[&str] = &[
        "MSH|^~\\&|A|B\r",
        "MSH#*@!$#A\n",
        "BHS|^~\\&\r",
        "PID|1|",
        "NK1|1|",
        "|",
        "^",
        "~",
        "&",
        "\\",
        "\\S\\",
        "\\X41\\",
        "!T!",
        "\r",
        "\n",
        "\x0b",
        "\x1c\r",
        "19800102",
        "\"\"",
    ];

    proptest::proptest! {
        /// Any input made of HL7's pieces: the units cover it byte for
        /// byte (or the run stops), cells lie inside their unit without
        /// overlapping, and every cell's text written back in its message's
        /// delimiters reads back as the same text and ends no segment.
        #[test]
        fn any_input_is_covered_and_every_cell_reads_back(pieces in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::sample::select(PIECES).prop_map(str::to_owned),
                "[a-zA-Z0-9 ]{0,4}",
            ],
            0..80,
        ), providers in proptest::bool::ANY) {
            let input = pieces.concat();
            let profile = Hl7Profile::parse(if providers { "providers = true" } else { "" })
                .expect("profile");
            let mut reader = Hl7Reader::new(input.as_bytes(), Hl7Layout::new(Some(&profile), &[]));
            let mut passed = Vec::new();
            loop {
                let unit = match reader.next_unit() {
                    Ok(Some(unit)) => unit,
                    Ok(None) => {
                        proptest::prop_assert_eq!(&passed, input.as_bytes());
                        break;
                    }
                    Err(_) => break,
                };
                let mut end = 0;
                let mut spans: Vec<_> = unit.cells.iter().map(|c| c.span.clone()).collect();
                spans.sort_by_key(|s| s.start);
                for span in spans {
                    proptest::prop_assert!(span.start >= end && span.end <= unit.raw.len());
                    end = span.end;
                }
                for cell in &unit.cells {
                    let (Ok(text), Encoding::Hl7 { delimiters, date }) = (&cell.text, cell.encoding) else {
                        continue;
                    };
                    let mut written = Vec::new();
                    encode(text, &delimiters, date, &mut written);
                    proptest::prop_assert!(!written.contains(&b'\r') && !written.contains(&b'\n'));
                    let want = if date { text.replace('-', "") } else { text.clone() };
                    proptest::prop_assert_eq!(delimiters.decode(&written), Ok(want));
                }
                passed.extend_from_slice(&unit.raw);
            }
        }
    }
}
