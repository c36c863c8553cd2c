//! Class-preserving formats: `name` and `alnum`. A letter of any script
//! becomes an ASCII letter of the same case (caseless scripts become lower
//! case), an ASCII digit becomes a digit, and everything else stays.

use zeroize::Zeroizing;

use super::{FormatError, Keep, Parsed, Shape};
use crate::crypto::SlotRng;

const NAME_RULE: &str = "expected letters with spaces, hyphens, apostrophes, periods or commas, and at least one letter";
const ALNUM_RULE: &str = "expected at least one letter or digit to replace";
const NAME_PUNCTUATION: [char; 6] = [' ', '-', '\'', '\u{2019}', '.', ','];

/// Whether `c` is replaced by the class-preserving formats.
pub(super) fn is_slot(c: char) -> bool {
    c.is_ascii_digit() || c.is_alphabetic()
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

pub(super) fn parse_alnum(value: &str) -> Result<Parsed, FormatError> {
    if !value.chars().any(is_slot) {
        return Err(FormatError::new(ALNUM_RULE));
    }
    Ok(Parsed {
        canonical: Zeroizing::new(value.to_owned()),
        shape: Shape::Canonical,
    })
}

pub(super) fn generate(canonical: &str, keep: Keep, rng: &mut impl SlotRng) -> String {
    let mut slot = 0;
    canonical
        .chars()
        .map(|c| {
            if !is_slot(c) {
                return c;
            }
            let kept = keep.keeps(slot);
            slot += 1;
            match c {
                _ if kept => c,
                _ if c.is_ascii_digit() => char::from(b'0' + rng.below(10) as u8),
                _ if c.is_uppercase() => char::from(b'A' + rng.below(26) as u8),
                _ => char::from(b'a' + rng.below(26) as u8),
            }
        })
        .collect()
}

pub(super) fn domain_size(canonical: &str, keep: Keep) -> u128 {
    let mut slot = 0;
    canonical
        .chars()
        .filter(|&c| is_slot(c))
        .fold(1u128, |size, c| {
            let kept = keep.keeps(slot);
            slot += 1;
            let choices = if kept {
                1
            } else if c.is_ascii_digit() {
                10
            } else {
                26
            };
            size.saturating_mul(choices)
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
    }
}
