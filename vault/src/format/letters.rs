//! Class-preserving formats: `name` and `alnum`. A letter of any script
//! becomes an ASCII letter of the same case (caseless scripts become lower
//! case), a number of any script becomes an ASCII digit, a separator from a
//! small fixed set stays, and nothing else is accepted.
//!
//! # Which characters may survive into a token
//!
//! Only the separators of [`is_separator`] are copied into a token (besides
//! the slots a namespace keeps on purpose with `keep_prefix`/`keep_suffix`).
//! Every other character of a value is either a slot, replaced by an ASCII
//! character of its class, or makes the value refused. This is an allow list
//! on purpose: an earlier rule copied "everything that is not a letter or an
//! ASCII digit", which carried full-width (`１`), Arabic-Indic (`٣`) and
//! Devanagari (`५`) digits, combining marks, symbols and control characters
//! into tokens verbatim, and so leaked PHI.
//!
//! * Digits of every script (and the other Unicode numbers: superscripts,
//!   fractions, circled digits) are **replaced**, not refused: full-width
//!   digits from East Asian input methods and native digits in Arabic or
//!   Indic records are real MRNs and member ids, and replacing them is as safe
//!   as refusing since nothing of the digit survives. The token keeps the
//!   value's length in Unicode scalar values, as the design demands, though
//!   not its length in bytes.
//! * Combining marks that Unicode counts as alphabetic (the vowel signs of
//!   Indic scripts, for instance) are letters and replaced like any letter.
//!   Any other character — a non-alphabetic combining mark such as U+0301,
//!   a symbol, an emoji, a control or format character, private use — is
//!   **refused**: std has no general-category predicate to tell a mark from
//!   a symbol, no Unicode-table crate is in the dependency tree, and such a
//!   character has no class to draw a replacement from. Refusing says so to
//!   the caller (`opaque` takes any text); a silently invented class would
//!   not.

use zeroize::Zeroizing;

use super::{FormatError, Keep, Parsed, Shape};
use crate::crypto::SlotRng;

const NAME_RULE: &str = "expected letters with spaces, hyphens, apostrophes, periods or commas, and at least one letter";
const ALNUM_RULE: &str = "expected at least one letter or digit to replace";
const ALNUM_CHARS_RULE: &str = "expected letters and digits of any script, separated by ASCII spaces or punctuation \
    or a few Unicode spaces and dashes; symbols, emoji, control and format characters \
    and combining marks that are not letters are refused";
const NAME_PUNCTUATION: [char; 6] = [' ', '-', '\'', '\u{2019}', '.', ','];

/// Non-ASCII separators a token keeps in place. They say no more than the
/// ASCII separators they stand for, and they turn up in real identifiers:
/// pasted from word processors (no-break space, typographic dashes, the
/// typographic apostrophe that `name` also accepts) or typed with East Asian
/// input methods (ideographic space, full-width hyphen-minus). The list is
/// short on purpose: each entry is a character copied into tokens verbatim.
const UNICODE_SEPARATORS: [char; 10] = [
    '\u{00A0}', // NO-BREAK SPACE
    '\u{2010}', // HYPHEN
    '\u{2011}', // NON-BREAKING HYPHEN
    '\u{2012}', // FIGURE DASH
    '\u{2013}', // EN DASH
    '\u{2014}', // EM DASH
    '\u{2019}', // RIGHT SINGLE QUOTATION MARK (typographic apostrophe)
    '\u{2212}', // MINUS SIGN
    '\u{3000}', // IDEOGRAPHIC SPACE
    '\u{FF0D}', // FULLWIDTH HYPHEN-MINUS
];

/// What a character of a class-preserving value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// An upper-case letter of any script: drawn from `A`–`Z`.
    Upper,
    /// Any other letter (lower case, title case, caseless scripts): drawn
    /// from `a`–`z`.
    Lower,
    /// A number of any script: drawn from `0`–`9`.
    Digit,
    /// Copied into the token as it is.
    Separator,
}

impl Class {
    /// The first ASCII character and the size of the alphabet a slot of this
    /// class is drawn from; `None` for a separator. `generate` and
    /// `domain_size` both read this, so the collision search's idea of how
    /// many tokens exist always matches what is drawn.
    fn alphabet(self) -> Option<(u8, u32)> {
        match self {
            Self::Upper => Some((b'A', 26)),
            Self::Lower => Some((b'a', 26)),
            Self::Digit => Some((b'0', 10)),
            Self::Separator => None,
        }
    }
}

/// The class of `c`, or `None` if a class-preserving value may not hold it.
fn class(c: char) -> Option<Class> {
    // Letters first: the Alphabetic property includes the letter numbers
    // (Nl, e.g. Roman numerals), and `name` accepts those as letters, so
    // they must become letters for a `name` token to parse as a name.
    if c.is_alphabetic() {
        Some(if c.is_uppercase() {
            Class::Upper
        } else {
            Class::Lower
        })
    } else if c.is_numeric() {
        // Nd (digits of every script) and No (superscripts, fractions,
        // circled digits): each carries a digit's worth of the value.
        Some(Class::Digit)
    } else if is_separator(c) {
        Some(Class::Separator)
    } else {
        None
    }
}

/// Whether `c` is a separator that class-preserving tokens copy verbatim:
/// ASCII space, ASCII punctuation, or one of [`UNICODE_SEPARATORS`].
pub(super) fn is_separator(c: char) -> bool {
    c == ' ' || c.is_ascii_punctuation() || UNICODE_SEPARATORS.contains(&c)
}

/// Whether `c` is replaced by the class-preserving formats: a letter or a
/// number of any script.
pub(super) fn is_slot(c: char) -> bool {
    class(c).and_then(Class::alphabet).is_some()
}

pub(super) fn parse_name(value: &str) -> Result<Parsed, FormatError> {
    let allowed = value
        .chars()
        .all(|c| c.is_alphabetic() || NAME_PUNCTUATION.contains(&c));
    if !allowed || !value.chars().any(char::is_alphabetic) {
        return Err(FormatError::new(NAME_RULE));
    }
    Ok(Parsed {
        canonical: Zeroizing::new(value.to_owned()),
        shape: Shape::Canonical,
    })
}

/// An `alnum` value: letters and numbers of any script (the slots) and the
/// separators of [`is_separator`], at least one slot. See the module
/// documentation for why everything else is refused.
pub(super) fn parse_alnum(value: &str) -> Result<Parsed, FormatError> {
    if value.chars().any(|c| class(c).is_none()) {
        return Err(FormatError::new(ALNUM_CHARS_RULE));
    }
    parse_alnum_token(value)
}

/// An `alnum` token: any string with at least one slot. Laxer than
/// [`parse_alnum`] on purpose: tokens issued before values were restricted
/// to slots and separators copied the value's other characters, and they
/// must still detokenize. Every token issued now passes [`parse_alnum`] too,
/// and accepting more here reveals nothing: an unknown token is simply not
/// found.
pub(super) fn parse_alnum_token(token: &str) -> Result<Parsed, FormatError> {
    if !token.chars().any(is_slot) {
        return Err(FormatError::new(ALNUM_RULE));
    }
    Ok(Parsed {
        canonical: Zeroizing::new(token.to_owned()),
        shape: Shape::Canonical,
    })
}

/// Draws a token for a parsed `name` or `alnum` value. `None` if the value
/// holds a character that is neither a slot nor a separator, which parsing
/// rules out: drawing nothing is the safe way to fail, copying the character
/// would leak it.
pub(super) fn generate(canonical: &str, keep: Keep, rng: &mut impl SlotRng) -> Option<String> {
    let mut slot = 0;
    canonical
        .chars()
        .map(|c| -> Option<char> {
            let Some((first, size)) = class(c)?.alphabet() else {
                return Some(c);
            };
            let kept = keep.keeps(slot);
            slot += 1;
            if kept {
                return Some(c);
            }
            // `below(size)` is under 26, so the cast cannot truncate.
            Some(char::from(first + rng.below(size) as u8))
        })
        .collect()
}

/// How many tokens `generate` can draw for `canonical`: the product of the
/// alphabet sizes of the slots it does not keep.
pub(super) fn domain_size(canonical: &str, keep: Keep) -> u128 {
    canonical
        .chars()
        .filter_map(|c| class(c).and_then(Class::alphabet))
        .enumerate()
        .fold(1u128, |size, (slot, (_, choices))| {
            if keep.keeps(slot) {
                size
            } else {
                size.saturating_mul(u128::from(choices))
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_any_script() {
        for ok in [
            "O'Brien",
            "Jean-Luc",
            "J. R. R.",
            "Müller",
            "Zoë",
            "李小龍",
            "Smith, John",
            "D\u{2019}Angelo",
            "a",
        ] {
            assert!(parse_name(ok).is_ok(), "{ok}");
        }
        for bad in ["R2D2", "--", "Anne_Marie", "Bob!", " "] {
            assert!(parse_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn alnum_needs_something_to_replace() {
        assert!(parse_alnum("MRN-000123").is_ok());
        assert!(parse_alnum("--//").is_err());
        assert!(parse_alnum("\u{2013}\u{3000}").is_err());
    }

    /// `generate` serves `name` too: a character `name` accepts must never
    /// make it draw nothing.
    #[test]
    fn name_punctuation_is_kept_by_the_generator() {
        for c in NAME_PUNCTUATION {
            assert_eq!(class(c), Some(Class::Separator), "{c:?}");
        }
    }

    #[test]
    fn numbers_of_every_script_are_digit_slots() {
        for c in ['7', '１', '٣', '۴', '५', '৬', '๙', '²', '½', '①'] {
            assert_eq!(class(c), Some(Class::Digit), "U+{:04X}", u32::from(c));
        }
        // Roman numerals are letters by the Alphabetic property.
        assert_eq!(class('Ⅻ'), Some(Class::Upper));
        // An alphabetic combining mark (Devanagari vowel sign AA) is a letter.
        assert_eq!(class('\u{093E}'), Some(Class::Lower));
    }

    #[test]
    fn only_listed_characters_are_separators() {
        for c in [
            ' ', '-', '/', '.', '#', '_', '\u{00A0}', '\u{2013}', '\u{3000}', '\u{FF0D}',
        ] {
            assert_eq!(class(c), Some(Class::Separator), "U+{:04X}", u32::from(c));
        }
        for c in [
            '\u{0301}', // COMBINING ACUTE ACCENT
            '\u{FE0F}', // VARIATION SELECTOR-16
            '\u{200D}', // ZERO WIDTH JOINER
            '\u{202E}', // RIGHT-TO-LEFT OVERRIDE
            '\u{2009}', // THIN SPACE (not listed)
            '\t', '\n', '\0', '©', '°', '€', '😀', '\u{E000}', // private use
            '、',       // IDEOGRAPHIC COMMA (not listed)
        ] {
            assert_eq!(class(c), None, "U+{:04X}", u32::from(c));
        }
    }
}
