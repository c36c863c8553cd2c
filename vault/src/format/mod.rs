//! Token formats: how a value is validated, what of it is kept, and how a
//! token of the same shape is drawn from a uniform stream.
//!
//! Every format works on a *canonical* form of the value — the part that is
//! hashed, encrypted and replaced — plus a [`Shape`] that says how to print a
//! canonical string the way the caller wrote it. For `ssn`, `card` and
//! `phone` the canonical form is the digits, so `123-45-6789` and `123456789`
//! are one value; every other format takes the value byte for byte (no
//! trimming, no case folding, no Unicode normalisation).

mod date;
mod digits;
mod email;
mod letters;
mod opaque;
#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::SlotRng;
pub use date::DateOptions;

/// The built-in format families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FormatKind {
    /// US Social Security numbers; tokens use area numbers 900–999.
    Ssn,
    /// Payment card numbers (12–19 digits); tokens fail the Luhn check.
    Card,
    /// Telephone numbers with optional extension.
    Phone,
    /// E-mail addresses; the local part is replaced, the domain kept.
    Email,
    /// Calendar dates; tokens fall in a reserved year range.
    Date,
    /// Personal names in any script.
    Name,
    /// Letters and digits of any script with separators (MRNs, member ids,
    /// ZIP codes); letters and digits replaced class by class by ASCII ones.
    Alnum,
    /// Any string; the token is `tok_` and 22 base62 characters.
    Opaque,
}

impl FormatKind {
    /// Every format, in documentation order.
    pub const ALL: [Self; 8] = [
        Self::Ssn,
        Self::Card,
        Self::Phone,
        Self::Email,
        Self::Date,
        Self::Name,
        Self::Alnum,
        Self::Opaque,
    ];

    /// The name used in configuration and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ssn => "ssn",
            Self::Card => "card",
            Self::Phone => "phone",
            Self::Email => "email",
            Self::Date => "date",
            Self::Name => "name",
            Self::Alnum => "alnum",
            Self::Opaque => "opaque",
        }
    }
}

impl fmt::Display for FormatKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for FormatKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|k| k.as_str()).collect();
                format!("unknown format {s:?}; expected one of {}", names.join(", "))
            })
    }
}

/// A format with its options, as a namespace stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormatSpec {
    /// The format family.
    pub kind: FormatKind,
    /// Replaceable characters at the start that the token keeps.
    #[serde(default)]
    pub keep_prefix: u16,
    /// Replaceable characters at the end that the token keeps.
    #[serde(default)]
    pub keep_suffix: u16,
    /// Pattern and token years of a `date` format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<DateOptions>,
}

impl FormatSpec {
    /// The format with its default options (a card keeps its last 4 digits,
    /// a date is ISO `YYYY-MM-DD` with tokens in 2200–2999).
    pub fn new(kind: FormatKind) -> Self {
        let keep_suffix = if kind == FormatKind::Card { 4 } else { 0 };
        let date = (kind == FormatKind::Date).then(DateOptions::default);
        Self {
            kind,
            keep_prefix: 0,
            keep_suffix,
            date,
        }
    }

    /// Keeps the first `n` replaceable characters.
    pub fn keep_prefix(mut self, n: u16) -> Self {
        self.keep_prefix = n;
        self
    }

    /// Keeps the last `n` replaceable characters.
    pub fn keep_suffix(mut self, n: u16) -> Self {
        self.keep_suffix = n;
        self
    }

    /// Checks that the options make sense for the format.
    pub fn validate(&self) -> Result<(), String> {
        let (p, s) = (self.keep_prefix, self.keep_suffix);
        let kept = |max_p: u16, max_s: u16| {
            if p > max_p || s > max_s {
                Err(format!(
                    "{} allows keep_prefix up to {max_p} and keep_suffix up to {max_s}",
                    self.kind
                ))
            } else {
                Ok(())
            }
        };
        match self.kind {
            // The area number is always replaced (that is what makes a token
            // never a real SSN); the last four may be kept.
            FormatKind::Ssn => kept(0, 4)?,
            // At least two digits stay random in the shortest (12-digit) card.
            FormatKind::Card => kept(6, 4)?,
            FormatKind::Phone | FormatKind::Name | FormatKind::Alnum => kept(64, 64)?,
            FormatKind::Email | FormatKind::Date | FormatKind::Opaque => kept(0, 0)?,
        }
        match (self.kind, &self.date) {
            (FormatKind::Date, Some(date)) => date.validate(),
            (FormatKind::Date, None) => Err("date needs its pattern and token years".into()),
            (_, Some(_)) => Err(format!("{} takes no date options", self.kind)),
            (_, None) => Ok(()),
        }
    }

    /// Validates a value and splits it into canonical form and shape.
    pub(crate) fn parse_value(&self, value: &str) -> Result<Parsed, FormatError> {
        if value.is_empty() {
            return Err(FormatError::new("the value is empty"));
        }
        let parsed = match self.kind {
            FormatKind::Ssn => digits::parse_ssn(value)?,
            FormatKind::Card => digits::parse_card(value)?,
            FormatKind::Phone => digits::parse_phone(value)?,
            FormatKind::Email => email::parse(value)?,
            FormatKind::Date => date::parse_value(self.date_options(), value)?,
            FormatKind::Name => letters::parse_name(value)?,
            FormatKind::Alnum => letters::parse_alnum(value)?,
            FormatKind::Opaque => opaque::parse_value(value),
        };
        self.leaves_a_slot(parsed)
    }

    /// Validates a token and splits it into canonical form and shape.
    pub(crate) fn parse_token(&self, token: &str) -> Result<Parsed, FormatError> {
        match self.kind {
            FormatKind::Opaque => opaque::parse_token(token),
            // Laxer than an `alnum` value, so that tokens issued before
            // values were restricted still detokenize (see the function).
            FormatKind::Alnum => self.leaves_a_slot(letters::parse_alnum_token(token)?),
            // A token's year lies in the token years, outside the values'.
            FormatKind::Date => self.leaves_a_slot(date::parse(self.date_options(), token)?),
            _ => self.parse_value(token),
        }
    }

    /// Every parser demands something to replace; kept characters must leave
    /// at least one of them.
    fn leaves_a_slot(&self, parsed: Parsed) -> Result<Parsed, FormatError> {
        let kept = usize::from(self.keep_prefix) + usize::from(self.keep_suffix);
        if kept > 0 && self.slots(&parsed.canonical) <= kept {
            return Err(FormatError(format!(
                "needs more than {kept} replaceable characters (keep_prefix + keep_suffix)"
            )));
        }
        Ok(parsed)
    }

    /// Draws the canonical form of a candidate token for `canonical`. `None`
    /// when this draw cannot produce a token (the caller moves on to the next
    /// attempt, as for a collision).
    pub fn generate(&self, canonical: &str, rng: &mut impl SlotRng) -> Option<String> {
        let keep = Keep::new(self, self.slots(canonical));
        match self.kind {
            FormatKind::Ssn => Some(digits::generate_ssn(canonical, keep, rng)),
            FormatKind::Card => digits::generate_card(canonical, keep, rng),
            FormatKind::Phone => Some(digits::generate_digits(canonical, keep, rng)),
            FormatKind::Email => Some(email::generate(canonical, rng)),
            FormatKind::Date => Some(date::generate(self.date_options(), rng)),
            FormatKind::Name | FormatKind::Alnum => letters::generate(canonical, keep, rng),
            FormatKind::Opaque => Some(opaque::generate(rng)),
        }
    }

    /// Prints a canonical string (a value or a token) in `shape`.
    pub(crate) fn render(&self, canonical: &str, shape: &Shape) -> String {
        match shape {
            Shape::Canonical => canonical.to_owned(),
            Shape::Digits(template) => digits::render(canonical, template),
            Shape::Date => date::render(self.date_options(), canonical),
        }
    }

    /// How many distinct tokens a value of this canonical form can have
    /// (saturating). Bounds the collision attempts before a namespace is
    /// declared exhausted for values of this shape.
    pub(crate) fn domain_size(&self, canonical: &str) -> u128 {
        let keep = Keep::new(self, self.slots(canonical));
        let random = keep.random_slots();
        match self.kind {
            FormatKind::Ssn => 100 * pow(10, random.saturating_sub(3)),
            FormatKind::Card => pow(10, random) / 10 * 9,
            FormatKind::Phone => pow(10, random),
            FormatKind::Email => email::domain_size(canonical),
            FormatKind::Date => date::domain_size(self.date_options()),
            FormatKind::Name | FormatKind::Alnum => letters::domain_size(canonical, keep),
            FormatKind::Opaque => pow(62, opaque::TOKEN_CHARS),
        }
    }

    /// The number of replaceable positions in a canonical string, which is
    /// what `keep_prefix`/`keep_suffix` count.
    fn slots(&self, canonical: &str) -> usize {
        match self.kind {
            FormatKind::Ssn | FormatKind::Card | FormatKind::Phone => {
                canonical.bytes().filter(u8::is_ascii_digit).count()
            }
            FormatKind::Name | FormatKind::Alnum => {
                canonical.chars().filter(|&c| letters::is_slot(c)).count()
            }
            FormatKind::Email | FormatKind::Date | FormatKind::Opaque => 0,
        }
    }

    fn date_options(&self) -> &DateOptions {
        self.date.as_ref().unwrap_or(&date::ISO)
    }
}

fn pow(base: u128, exp: usize) -> u128 {
    let exp = u32::try_from(exp).unwrap_or(u32::MAX);
    base.checked_pow(exp).unwrap_or(u128::MAX)
}

/// Which replaceable positions a token keeps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Keep {
    prefix: usize,
    suffix: usize,
    slots: usize,
}

impl Keep {
    fn new(spec: &FormatSpec, slots: usize) -> Self {
        Self {
            prefix: spec.keep_prefix.into(),
            suffix: spec.keep_suffix.into(),
            slots,
        }
    }

    /// Whether the `i`-th replaceable position stays as it is.
    fn keeps(&self, i: usize) -> bool {
        i < self.prefix || i + self.suffix >= self.slots
    }

    fn random_slots(&self) -> usize {
        self.slots.saturating_sub(self.prefix + self.suffix)
    }
}

/// A value or token taken apart.
pub(crate) struct Parsed {
    /// What is hashed, encrypted and replaced. Plaintext: wiped on drop.
    pub(crate) canonical: Zeroizing<String>,
    /// How the caller wrote it.
    pub(crate) shape: Shape,
}

/// How to print a canonical string the way the caller wrote its input.
pub(crate) enum Shape {
    /// The canonical string is the printed form.
    Canonical,
    /// The input itself: its digits are replaced, in order, by the canonical
    /// digits; everything else is printed as is.
    Digits(Zeroizing<String>),
    /// The namespace's date pattern.
    Date,
}

/// Why a value or token does not fit its format: names the rule, never the
/// value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError(pub String);

impl FormatError {
    fn new(rule: &str) -> Self {
        Self(rule.to_owned())
    }
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
