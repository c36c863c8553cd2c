//! Digit formats: `ssn`, `card` and `phone`. Their canonical form is the
//! digits (and, for a phone extension, an `x` before the extension digits);
//! the caller's separators live in the shape.

use zeroize::Zeroizing;

use super::{FormatError, Keep, Parsed, Shape};
use crate::crypto::SlotRng;

const SSN_RULE: &str = "expected ddd-dd-dddd or 9 digits";
const CARD_RULE: &str = "expected 12 to 19 digits, optionally grouped by single spaces or dashes";
const PHONE_RULE: &str = "expected 4 to 20 digits with + ( ) - . or spaces, and an optional extension (x123, ext. 123, #123)";
const PHONE_EXT_MARKERS: [&str; 4] = ["ext.", "ext", "x", "#"];

fn digits_of(s: &str) -> Zeroizing<String> {
    Zeroizing::new(s.chars().filter(char::is_ascii_digit).collect())
}

fn template(value: &str, canonical: Zeroizing<String>) -> Parsed {
    Parsed {
        canonical,
        shape: Shape::Digits(Zeroizing::new(value.to_owned())),
    }
}

pub(super) fn parse_ssn(value: &str) -> Result<Parsed, FormatError> {
    let b = value.as_bytes();
    let dashed = b.len() == 11
        && b[3] == b'-'
        && b[6] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 3 || i == 6 || c.is_ascii_digit());
    let plain = b.len() == 9 && b.iter().all(u8::is_ascii_digit);
    if !(dashed || plain) {
        return Err(FormatError::new(SSN_RULE));
    }
    Ok(template(value, digits_of(value)))
}

pub(super) fn parse_card(value: &str) -> Result<Parsed, FormatError> {
    let b = value.as_bytes();
    let is_sep = |c: u8| c == b' ' || c == b'-';
    let well_formed = b.iter().all(|&c| c.is_ascii_digit() || is_sep(c))
        && b.first().is_some_and(u8::is_ascii_digit)
        && b.last().is_some_and(u8::is_ascii_digit)
        && !b.windows(2).any(|w| is_sep(w[0]) && is_sep(w[1]));
    let count = b.iter().filter(|c| c.is_ascii_digit()).count();
    if !well_formed || !(12..=19).contains(&count) {
        return Err(FormatError::new(CARD_RULE));
    }
    Ok(template(value, digits_of(value)))
}

pub(super) fn parse_phone(value: &str) -> Result<Parsed, FormatError> {
    let is_main = |c: char| c.is_ascii_digit() || matches!(c, ' ' | '-' | '.' | '(' | ')' | '+');
    let end = value.find(|c| !is_main(c)).unwrap_or(value.len());
    let (main, rest) = value.split_at(end);
    // A number starts with a digit, '(' or the international '+', and '+'
    // appears nowhere else.
    let starts_ok = main.starts_with(|c: char| c.is_ascii_digit() || c == '(' || c == '+');
    let plus_ok = !main[1.min(main.len())..].contains('+');
    let main_digits = main.bytes().filter(u8::is_ascii_digit).count();
    if !starts_ok || !plus_ok || !(4..=20).contains(&main_digits) {
        return Err(FormatError::new(PHONE_RULE));
    }
    let mut canonical = digits_of(main);
    if !rest.is_empty() {
        let lower = rest.to_ascii_lowercase();
        let marker = PHONE_EXT_MARKERS
            .iter()
            .find(|m| lower.starts_with(*m))
            .ok_or_else(|| FormatError::new(PHONE_RULE))?;
        let ext = rest[marker.len()..].trim_start_matches(' ');
        if !(1..=8).contains(&ext.len()) || !ext.bytes().all(|c| c.is_ascii_digit()) {
            return Err(FormatError::new(PHONE_RULE));
        }
        canonical.push('x');
        canonical.push_str(ext);
    }
    Ok(template(value, canonical))
}

/// Replaces every digit of `canonical` not kept with a uniform digit; other
/// characters (the extension's `x`) stay.
pub(super) fn generate_digits(canonical: &str, keep: Keep, rng: &mut impl SlotRng) -> String {
    let mut slot = 0;
    canonical
        .chars()
        .map(|c| {
            if !c.is_ascii_digit() {
                return c;
            }
            let kept = keep.keeps(slot);
            slot += 1;
            if kept { c } else { random_digit(rng) }
        })
        .collect()
}

/// An SSN token: area 9xx, which the SSA never issues, so a token can never
/// be a real SSN.
pub(super) fn generate_ssn(canonical: &str, keep: Keep, rng: &mut impl SlotRng) -> String {
    let mut token = generate_digits(canonical, keep, rng);
    token.replace_range(0..1, "9");
    token
}

/// A card token that fails the Luhn check, so it can never be a valid PAN.
/// Drawing again until the check fails keeps the choice uniform over all
/// Luhn-invalid tokens; one draw in ten is Luhn-valid.
pub(super) fn generate_card(canonical: &str, keep: Keep, rng: &mut impl SlotRng) -> Option<String> {
    (0..64)
        .map(|_| generate_digits(canonical, keep, rng))
        .find(|t| !luhn_valid(t))
}

/// The Luhn (mod 10) check of ISO/IEC 7812.
pub(crate) fn luhn_valid(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, c)| {
            let d = u32::from(c - b'0');
            if i % 2 == 1 {
                if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn random_digit(rng: &mut impl SlotRng) -> char {
    char::from(b'0' + rng.below(10) as u8)
}

/// Prints the digits of `canonical` in the positions of the digits of
/// `template`. Both come from the same format, so the counts agree; were they
/// ever not to, the remaining template digits are printed as `0` rather than
/// panicking or leaking the template.
pub(super) fn render(canonical: &str, template: &str) -> String {
    let mut digits = canonical.chars().filter(char::is_ascii_digit);
    template
        .chars()
        .map(|c| {
            if c.is_ascii_digit() {
                digits.next().unwrap_or('0')
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_matches_known_numbers() {
        assert!(luhn_valid("4111111111111111"));
        assert!(luhn_valid("79927398713"));
        assert!(!luhn_valid("4111111111111112"));
        assert!(luhn_valid("6759649826438453"), "Maestro test number");
    }

    #[test]
    fn ssn_shapes() {
        assert!(parse_ssn("123-45-6789").is_ok());
        assert!(parse_ssn("123456789").is_ok());
        for bad in [
            "12-345-6789",
            "123 45 6789",
            "1234567890",
            "12345678",
            "123-45-678a",
            "１２３456789",
        ] {
            assert!(parse_ssn(bad).is_err(), "{bad}");
        }
        let dashed = parse_ssn("123-45-6789").expect("ok");
        assert_eq!(
            dashed.canonical.as_str(),
            parse_ssn("123456789").expect("ok").canonical.as_str()
        );
    }

    #[test]
    fn card_shapes() {
        for ok in [
            "4111111111111111",
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "675964982643845",
            "123456789012",
        ] {
            assert!(parse_card(ok).is_ok(), "{ok}");
        }
        for bad in [
            "41111111111",
            "41111111111111111111",
            " 4111111111111111",
            "4111  1111 1111 1111",
            "4111-1111-1111-111-",
            "4111x111111111111",
        ] {
            assert!(parse_card(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn phone_shapes_and_extensions() {
        let canon = |s| parse_phone(s).map(|p| p.canonical.to_string());
        assert_eq!(canon("+1 (555) 123-4567").as_deref(), Ok("15551234567"));
        assert_eq!(canon("555.123.4567 x12").as_deref(), Ok("5551234567x12"));
        assert_eq!(
            canon("555-123-4567 ext. 12").as_deref(),
            Ok("5551234567x12")
        );
        assert_eq!(canon("555-123-4567 EXT 12").as_deref(), Ok("5551234567x12"));
        assert_eq!(canon("555-123-4567#12").as_deref(), Ok("5551234567x12"));
        for bad in [
            "123",
            "555-1234 x",
            "555-1234 x123456789",
            "555 1234 ext 12a",
            "1+555-1234",
            "call 5551234",
            "555-1234 y12",
        ] {
            assert!(parse_phone(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn render_puts_digits_back_into_the_shape() {
        assert_eq!(render("987654321", "123-45-6789"), "987-65-4321");
        assert_eq!(
            render("5551234567x12", "+1 (000) 000-000 ext. 00"),
            "+5 (551) 234-567 ext. 12"
        );
        assert_eq!(
            render("12", "000-000"),
            "120-000",
            "never panics on a short canonical"
        );
    }
}
