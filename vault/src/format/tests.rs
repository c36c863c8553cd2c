//! Property tests of every format: a token fits the format, keeps length,
//! classes, separators and kept characters, and is a function of (key,
//! namespace, value).

use proptest::prelude::*;
use zeroize::Zeroizing;

use super::*;
use crate::crypto::{PrfKey, SlotRng};
use crate::format::digits::luhn_valid;

/// Draws the attempt-0 token of `value` and prints it in the value's shape.
fn token(spec: &FormatSpec, key: &PrfKey, ns: u32, value: &str) -> Option<String> {
    let parsed = spec.parse_value(value).ok()?;
    let canonical = spec.generate(
        &parsed.canonical,
        &mut key.token_stream(ns, parsed.canonical.as_bytes(), 0),
    )?;
    Some(spec.render(&canonical, &parsed.shape))
}

fn key(seed: [u8; 32]) -> PrfKey {
    PrfKey::from_bytes(Zeroizing::new(seed))
}

/// Another namespace draws from another stream: across eight namespaces a
/// value's tokens are not all the same (for the smallest domain here, 26
/// tokens, that would happen with probability 26^-7).
fn namespaces_differ(spec: &FormatSpec, key: &PrfKey, value: &str) -> Result<(), TestCaseError> {
    let tokens: std::collections::HashSet<_> =
        (1..=8).map(|ns| token(spec, key, ns, value)).collect();
    prop_assert!(tokens.len() > 1, "every namespace gave the same token");
    Ok(())
}

#[derive(Debug, PartialEq)]
enum Class {
    Digit,
    Upper,
    Lower,
    Other(char),
}

/// What a class-preserving token must keep at each position. Letters
/// first: a Roman numeral is a number but also a letter, and is replaced as
/// one.
fn class(c: char) -> Class {
    match c {
        _ if c.is_alphabetic() && c.is_uppercase() => Class::Upper,
        _ if c.is_alphabetic() => Class::Lower,
        _ if c.is_numeric() => Class::Digit,
        _ => Class::Other(c),
    }
}

/// Letters and numbers of any script: what an `alnum` token must replace
/// outside its kept slots.
fn replaceable(c: char) -> bool {
    c.is_alphabetic() || c.is_numeric()
}

/// The only characters an `alnum` token may copy from its value outside the
/// kept slots. Pinned here rather than read from the implementation, so that
/// widening the set (and so what tokens reveal) takes a change to this test.
fn kept_verbatim(c: char) -> bool {
    c == ' '
        || c.is_ascii_punctuation()
        || "\u{A0}\u{2010}\u{2011}\u{2012}\u{2013}\u{2014}\u{2019}\u{2212}\u{3000}\u{FF0D}"
            .contains(c)
}

/// Answers every draw with 0 and multiplies the alphabet sizes asked for:
/// the number of distinct tokens the generator can draw for a value, which
/// `domain_size` must match for the collision search to be bounded right.
struct CountingRng(u128);

impl SlotRng for CountingRng {
    fn below(&mut self, n: u32) -> u32 {
        self.0 = self.0.saturating_mul(u128::from(n));
        0
    }
}

prop_compose! {
    /// Candidate `alnum` values over all of Unicode: weighted so that most
    /// are accepted, yet digits of other scripts, letters of any script,
    /// combining marks (alphabetic ones are letters, the rest must be
    /// refused) and Unicode separators are frequent, and symbols, controls,
    /// format characters and arbitrary scalar values turn up too.
    fn unicode_alnum_value()(pieces in prop::collection::vec(prop_oneof![
        4 => "[A-Za-z0-9]",
        4 => r"\p{Nd}",
        1 => r"\p{No}|\p{Nl}",
        3 => r"\p{L}",
        2 => r"\p{M}",
        3 => "[[:punct:] ]|[\u{A0}\u{2010}-\u{2014}\u{2019}\u{2212}\u{3000}\u{FF0D}]",
        1 => r"\p{S}|\p{Zs}|\p{Cc}|\p{Cf}|\p{Co}",
        1 => any::<char>().prop_map(String::from),
    ], 1..=16)) -> String {
        pieces.concat()
    }
}

/// Same length in scalar values, same class at every position, the kept
/// replaceable characters identical.
fn assert_class_preserving(
    value: &str,
    token: &str,
    keep_prefix: usize,
    keep_suffix: usize,
) -> Result<(), TestCaseError> {
    let v: Vec<char> = value.chars().collect();
    let t: Vec<char> = token.chars().collect();
    prop_assert_eq!(v.len(), t.len());
    let slots: Vec<usize> = (0..v.len()).filter(|&i| letters::is_slot(v[i])).collect();
    for (n, &i) in slots.iter().enumerate() {
        prop_assert_eq!(class(v[i]), class(t[i]));
        if n < keep_prefix || n + keep_suffix >= slots.len() {
            prop_assert_eq!(v[i], t[i]);
        } else {
            prop_assert!(t[i].is_ascii_alphanumeric());
        }
    }
    for i in (0..v.len()).filter(|&i| !letters::is_slot(v[i])) {
        prop_assert_eq!(v[i], t[i]);
    }
    Ok(())
}

fn digit_positions_match(value: &str, token: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(value.len(), token.len());
    for (v, t) in value.chars().zip(token.chars()) {
        prop_assert_eq!(v.is_ascii_digit(), t.is_ascii_digit());
        if !v.is_ascii_digit() {
            prop_assert_eq!(v, t);
        }
    }
    Ok(())
}

prop_compose! {
    fn ssn_value()(digits in "[0-9]{9}", dashed: bool) -> String {
        if dashed { format!("{}-{}-{}", &digits[..3], &digits[3..5], &digits[5..]) } else { digits }
    }
}

prop_compose! {
    fn card_value()(digits in "[0-9]{12,19}", sep in prop::sample::select(vec!["", " ", "-"])) -> String {
        digits.as_bytes().chunks(4).map(|c| std::str::from_utf8(c).unwrap_or_default()).collect::<Vec<_>>().join(sep)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn ssn_tokens(seed: [u8; 32], value in ssn_value(), keep_suffix in 0u16..=4) {
        let spec = FormatSpec::new(FormatKind::Ssn).keep_suffix(keep_suffix);
        let k = key(seed);
        let t = token(&spec, &k, 1, &value).expect("every 9-digit value tokenizes");
        digit_positions_match(&value, &t)?;
        prop_assert!(spec.parse_value(&t).is_ok());
        let digits: String = t.chars().filter(char::is_ascii_digit).collect();
        let area: u32 = digits[..3].parse().expect("digits");
        prop_assert!((900..=999).contains(&area), "area {}", area);
        let keep = usize::from(keep_suffix);
        prop_assert_eq!(&value[value.len() - keep..], &t[t.len() - keep..]);
        prop_assert_eq!(token(&spec, &k, 1, &value), Some(t.clone()));
        // Same digits, other shape: same token digits.
        let plain: String = value.chars().filter(char::is_ascii_digit).collect();
        let plain_token = token(&spec, &k, 1, &plain).expect("tokenizes");
        prop_assert_eq!(plain_token, digits);
        if keep_suffix == 0 {
            prop_assert_ne!(token(&spec, &k, 2, &value), Some(t));
        }
    }

    #[test]
    fn card_tokens(seed: [u8; 32], value in card_value(), keep_prefix in 0u16..=6) {
        let spec = FormatSpec::new(FormatKind::Card).keep_prefix(keep_prefix);
        let k = key(seed);
        let t = token(&spec, &k, 1, &value).expect("every 12-19 digit value tokenizes");
        digit_positions_match(&value, &t)?;
        let vd: String = value.chars().filter(char::is_ascii_digit).collect();
        let td: String = t.chars().filter(char::is_ascii_digit).collect();
        prop_assert!(!luhn_valid(&td), "token passes Luhn");
        prop_assert_eq!(&vd[vd.len() - 4..], &td[td.len() - 4..]);
        prop_assert_eq!(&vd[..usize::from(keep_prefix)], &td[..usize::from(keep_prefix)]);
        prop_assert_eq!(token(&spec, &k, 1, &value), Some(t));
        namespaces_differ(&spec, &k, &value)?;
    }

    #[test]
    fn phone_tokens(seed: [u8; 32], value in r"(\+1 )?\([0-9]{3}\) [0-9]{3}-[0-9]{4}( (x|ext\. |#)[0-9]{1,5})?", keep_suffix in 0u16..=4) {
        let spec = FormatSpec::new(FormatKind::Phone).keep_suffix(keep_suffix);
        let k = key(seed);
        let t = token(&spec, &k, 1, &value).expect("tokenizes");
        digit_positions_match(&value, &t)?;
        prop_assert!(spec.parse_value(&t).is_ok());
        prop_assert_eq!(token(&spec, &k, 1, &value), Some(t));
        namespaces_differ(&spec, &k, &value)?;
    }

    #[test]
    fn email_tokens(seed: [u8; 32], local in "[A-Za-z0-9]{1,10}([._+-][A-Za-z0-9]{1,10}){0,2}", domain in "[a-z0-9]{1,10}\\.(org|example|co\\.uk)") {
        let spec = FormatSpec::new(FormatKind::Email);
        let value = format!("{local}@{domain}");
        let k = key(seed);
        let t = token(&spec, &k, 1, &value).expect("tokenizes");
        prop_assert!(spec.parse_value(&t).is_ok(), "token is a valid address");
        let (tl, td) = t.rsplit_once('@').expect("an address");
        prop_assert_eq!(td, domain.as_str());
        assert_class_preserving(&local, tl, 0, 0)?;
        prop_assert_eq!(token(&spec, &k, 1, &value), Some(t.clone()));
        namespaces_differ(&spec, &k, &value)?;
    }

    #[test]
    fn date_tokens(seed: [u8; 32], y in 1900u16..2030, m in 1u8..=12, d in 1u8..=28, us: bool, years in (2200u16..2300, 131u16..200)) {
        let options = DateOptions {
            pattern: if us { "%m/%d/%Y".into() } else { "%Y-%m-%d".into() },
            token_year_min: years.0,
            token_year_max: years.0 + years.1,
            value_year_min: 1900,
            value_year_max: 2030,
        };
        prop_assert!(options.validate().is_ok());
        let spec = FormatSpec { date: Some(options.clone()), ..FormatSpec::new(FormatKind::Date) };
        let value = if us { format!("{m:02}/{d:02}/{y:04}") } else { format!("{y:04}-{m:02}-{d:02}") };
        let k = key(seed);
        let t = token(&spec, &k, 1, &value).expect("tokenizes");
        prop_assert!(spec.parse_value(&t).is_err(), "a token is never a value: its year is outside the value years");
        let parsed = spec.parse_token(&t);
        prop_assert!(parsed.is_ok(), "token is a real date in the pattern");
        let canonical = parsed.map(|p| p.canonical.to_string()).unwrap_or_default();
        let year: u16 = canonical[..4].parse().expect("year");
        prop_assert!((options.token_year_min..=options.token_year_max).contains(&year));
        prop_assert_eq!(token(&spec, &k, 1, &value), Some(t));
        namespaces_differ(&spec, &k, &value)?;
    }

    #[test]
    fn name_tokens(seed: [u8; 32], value in r"[A-Z][a-z]{0,8}(['\- ][A-Z][a-zé]{1,8})?|[ÀÉÎÕÜ][à-öø-ÿ]{1,6}|[一-龥]{1,4}", keep in (0u16..=1, 0u16..=1)) {
        let spec = FormatSpec::new(FormatKind::Name).keep_prefix(keep.0).keep_suffix(keep.1);
        let k = key(seed);
        let Some(t) = token(&spec, &k, 1, &value) else {
            // Only a value with nothing left to replace after the kept
            // characters is refused.
            let letters = value.chars().filter(|c| c.is_alphabetic()).count();
            prop_assert!(letters <= usize::from(keep.0 + keep.1));
            return Ok(());
        };
        assert_class_preserving(&value, &t, keep.0.into(), keep.1.into())?;
        prop_assert!(spec.parse_value(&t).is_ok());
        prop_assert_eq!(token(&spec, &k, 1, &value), Some(t));
        namespaces_differ(&spec, &k, &value)?;
    }

    #[test]
    fn alnum_tokens(seed: [u8; 32], value in r"[A-Za-z0-9 _/#-]{1,24}", keep in (0u16..=3, 0u16..=3)) {
        let spec = FormatSpec::new(FormatKind::Alnum).keep_prefix(keep.0).keep_suffix(keep.1);
        let k = key(seed);
        let Some(t) = token(&spec, &k, 1, &value) else {
            let slots = value.chars().filter(|&c| letters::is_slot(c)).count();
            prop_assert!(slots <= usize::from(keep.0 + keep.1));
            return Ok(());
        };
        assert_class_preserving(&value, &t, keep.0.into(), keep.1.into())?;
        prop_assert_eq!(token(&spec, &k, 1, &value), Some(t.clone()));
        namespaces_differ(&spec, &k, &value)?;
        let big_domain = spec.domain_size(&value) >= 1_000_000;
        if big_domain {
            prop_assert_ne!(token(&spec, &k, 2, &value), Some(t));
        }
    }

    /// No character of an `alnum` value that carries information survives
    /// into its token: outside the kept slots, a position holds either the
    /// value's own separator from the fixed set or a freshly drawn ASCII
    /// letter or digit of the value's class. Values with characters that are
    /// neither are refused, not copied.
    #[test]
    fn alnum_tokens_leak_nothing_but_separators(seed: [u8; 32], value in unicode_alnum_value(), keep in (0u16..=2, 0u16..=2)) {
        let spec = FormatSpec::new(FormatKind::Alnum).keep_prefix(keep.0).keep_suffix(keep.1);
        let (keep_prefix, keep_suffix) = (usize::from(keep.0), usize::from(keep.1));
        let k = key(seed);
        let v: Vec<char> = value.chars().collect();
        let unclassed = v.iter().any(|&c| !replaceable(c) && !kept_verbatim(c));
        let slots = v.iter().filter(|&&c| replaceable(c)).count();
        let Some(t) = token(&spec, &k, 1, &value) else {
            prop_assert!(
                unclassed || slots <= keep_prefix + keep_suffix,
                "refused a value of letters, digits and separators"
            );
            return Ok(());
        };
        prop_assert!(!unclassed, "accepted a character that is neither a slot nor a kept separator");
        let w: Vec<char> = t.chars().collect();
        prop_assert_eq!(v.len(), w.len(), "length in scalar values");
        let mut slot = 0;
        for (i, (&vc, &tc)) in v.iter().zip(&w).enumerate() {
            if !replaceable(vc) {
                prop_assert_eq!(vc, tc, "separator at {} not kept", i);
                continue;
            }
            let kept = slot < keep_prefix || slot + keep_suffix >= slots;
            slot += 1;
            if kept {
                prop_assert_eq!(vc, tc, "kept slot at {} changed", i);
                continue;
            }
            prop_assert!(tc.is_ascii_alphanumeric(), "position {} is U+{:04X}, not ASCII", i, u32::from(tc));
            if !vc.is_ascii() {
                prop_assert_ne!(vc, tc, "U+{:04X} copied at {}", u32::from(vc), i);
            }
            prop_assert_eq!(class(vc), class(tc), "class at {}", i);
        }
        // A new token is a valid value in turn, and detokenizes.
        prop_assert!(spec.parse_value(&t).is_ok());
        prop_assert!(spec.parse_token(&t).is_ok());
        let mut counting = CountingRng(1);
        prop_assert!(spec.generate(&value, &mut counting).is_some());
        prop_assert_eq!(spec.domain_size(&value), counting.0);
        prop_assert_eq!(token(&spec, &k, 1, &value), Some(t));
    }

    #[test]
    fn opaque_tokens(seed: [u8; 32], value in "\\PC{1,64}") {
        let spec = FormatSpec::new(FormatKind::Opaque);
        let k = key(seed);
        let t = token(&spec, &k, 1, &value).expect("tokenizes");
        prop_assert!(spec.parse_token(&t).is_ok());
        prop_assert_eq!(t.len(), 26);
        prop_assert!(t.starts_with("tok_") && t[4..].bytes().all(|c| c.is_ascii_alphanumeric()));
        prop_assert_eq!(token(&spec, &k, 1, &value), Some(t.clone()));
        prop_assert_ne!(token(&spec, &k, 2, &value), Some(t));
    }

    /// Parsing never panics and never echoes the input in its error.
    #[test]
    fn errors_never_echo_the_input(value in "[A-Za-z0-9@.+ -]{16,40}") {
        for kind in FormatKind::ALL {
            let spec = FormatSpec::new(kind);
            if let Err(e) = spec.parse_value(&value) {
                prop_assert!(!e.0.contains(&value));
            }
        }
    }
}

#[test]
fn empty_values_are_refused_by_every_format() {
    for kind in FormatKind::ALL {
        assert!(FormatSpec::new(kind).parse_value("").is_err(), "{kind}");
    }
}

#[test]
fn option_validation() {
    assert!(
        FormatSpec::new(FormatKind::Ssn)
            .keep_prefix(1)
            .validate()
            .is_err(),
        "area is always replaced"
    );
    assert!(
        FormatSpec::new(FormatKind::Ssn)
            .keep_suffix(5)
            .validate()
            .is_err()
    );
    assert!(
        FormatSpec::new(FormatKind::Card)
            .keep_prefix(6)
            .validate()
            .is_ok()
    );
    assert!(
        FormatSpec::new(FormatKind::Email)
            .keep_prefix(1)
            .validate()
            .is_err()
    );
    let mut alnum_with_date = FormatSpec::new(FormatKind::Alnum);
    alnum_with_date.date = Some(DateOptions::default());
    assert!(alnum_with_date.validate().is_err());
    for kind in FormatKind::ALL {
        assert!(FormatSpec::new(kind).validate().is_ok(), "{kind} defaults");
        assert_eq!(kind.as_str().parse::<FormatKind>(), Ok(kind));
    }
}

/// The attempt-0 token of an `alnum` value that must be accepted.
fn alnum_token(spec: &FormatSpec, value: &str) -> String {
    token(spec, &key([7; 32]), 1, value).expect("the value is accepted")
}

#[test]
fn non_ascii_digits_never_reach_an_alnum_token() {
    let spec = FormatSpec::new(FormatKind::Alnum);
    for value in [
        // Full-width, as East Asian input methods type them.
        "MRN-\u{FF11}\u{FF12}\u{FF13}\u{FF14}\u{FF15}\u{FF16}",
        "\u{FF11}\u{FF12}\u{FF13}\u{FF14}\u{FF15}",
        // Arabic-Indic.
        "\u{663}\u{664}\u{665}\u{666}-\u{667}\u{668}",
        // Devanagari.
        "\u{96B}\u{96B}\u{96B}/\u{967}\u{968}\u{969}\u{96A}",
        "A\u{FF11}\u{663}\u{96B}9",
    ] {
        let t = alnum_token(&spec, value);
        assert_eq!(t.chars().count(), value.chars().count(), "{t}");
        for (v, c) in value.chars().zip(t.chars()) {
            if v.is_numeric() {
                assert!(c.is_ascii_digit(), "{t}");
            }
        }
        // The separators here are ASCII, so nothing of the value's script
        // is left at all.
        assert!(t.is_ascii(), "{t}");
    }
}

#[test]
fn combining_marks_never_reach_an_alnum_token() {
    let spec = FormatSpec::new(FormatKind::Alnum);
    // A mark that is not a letter has no class to draw a replacement from:
    // the value is refused, and the error does not echo it.
    for value in ["JOSE\u{301}-1234", "ID\u{308}77", "12\u{FE0F}34"] {
        let err = spec.parse_value(value).err().expect("refused");
        assert!(!err.0.contains(value));
        assert!(token(&spec, &key([7; 32]), 1, value).is_none());
    }
    // A mark Unicode counts as alphabetic (DEVANAGARI VOWEL SIGN AA) is a
    // letter like the consonant it follows.
    let value = "\u{915}\u{93E}-42";
    let t = alnum_token(&spec, value);
    assert_eq!(t.chars().count(), 5);
    assert!(t.chars().take(2).all(|c| c.is_ascii_lowercase()), "{t}");
    assert_eq!(t.chars().nth(2), Some('-'));
}

#[test]
fn alnum_keeps_separators_in_place() {
    let spec = FormatSpec::new(FormatKind::Alnum);
    let value = "MRN-\u{FF10}\u{FF10}1/23 4.5_6#7\u{2013}8\u{A0}9\u{3000}0\u{FF0D}1";
    let t = alnum_token(&spec, value);
    assert_eq!(t.chars().count(), value.chars().count());
    for (v, c) in value.chars().zip(t.chars()) {
        if v.is_alphanumeric() {
            assert!(c.is_ascii_alphanumeric(), "{t}");
        } else {
            assert_eq!(v, c, "{t}");
        }
    }
}

#[test]
fn alnum_refuses_symbols_and_controls() {
    let spec = FormatSpec::new(FormatKind::Alnum);
    for value in [
        "MRN\t123",
        "ID\u{A9}12",
        "12\u{B0}C",
        "A\u{200D}1",
        "\u{1F600}1",
        "1\u{202E}23",
        "77\n",
    ] {
        let err = spec.parse_value(value).err().expect("refused");
        assert!(!err.0.contains(value));
    }
}

#[test]
fn alnum_domain_counts_digits_of_every_script() {
    let value = "\u{FF11}\u{663}\u{96B}-ab";
    for (keep_prefix, size) in [(0, 1000 * 26 * 26), (1, 100 * 26 * 26), (3, 26 * 26)] {
        let spec = FormatSpec::new(FormatKind::Alnum).keep_prefix(keep_prefix);
        assert_eq!(spec.domain_size(value), size, "keep_prefix {keep_prefix}");
        let mut counting = CountingRng(1);
        assert!(spec.generate(value, &mut counting).is_some());
        assert_eq!(counting.0, size, "keep_prefix {keep_prefix}");
    }
}

#[test]
fn zip_keeps_full_width_prefix() {
    let spec = FormatSpec::new(FormatKind::Alnum).keep_prefix(3);
    let value = "\u{FF11}\u{FF12}\u{FF13}\u{FF14}\u{FF15}";
    let t = alnum_token(&spec, value);
    assert!(t.starts_with("\u{FF11}\u{FF12}\u{FF13}"), "{t}");
    assert_eq!(t.chars().count(), 5);
    assert!(t.chars().skip(3).all(|c| c.is_ascii_digit()), "{t}");
}

/// Tokens issued before `alnum` refused symbols copied them from their
/// values; they must still detokenize, while such a value is now refused.
#[test]
fn alnum_tokens_issued_under_the_old_rule_still_parse() {
    let spec = FormatSpec::new(FormatKind::Alnum);
    let old_token = "XQ\u{A9}84";
    assert!(spec.parse_value(old_token).is_err());
    assert!(spec.parse_token(old_token).is_ok());
    assert!(spec.parse_token("\u{A9}\u{A9}").is_err());
    let kept = FormatSpec::new(FormatKind::Alnum).keep_prefix(2);
    assert!(kept.parse_token(old_token).is_ok());
    assert!(kept.parse_token("XQ\u{A9}").is_err());
}

#[test]
fn date_values_are_bounded_to_their_years() {
    let spec = FormatSpec::new(FormatKind::Date);
    assert!(spec.parse_value("1984-02-29").is_ok());
    for outside in ["0001-01-01", "1799-12-31", "2200-01-01", "9999-12-31"] {
        let Err(error) = spec.parse_value(outside) else {
            panic!("{outside} accepted")
        };
        assert!(
            error.to_string().contains("between 1800 and 2199"),
            "{error}"
        );
        assert!(
            !error.to_string().contains(outside),
            "never echoes the value"
        );
    }
    // Tokens lie in the token years and still parse as tokens.
    assert!(spec.parse_token("2345-06-07").is_ok());
    // Value years spanning more days than the token years are refused.
    let wide = DateOptions {
        value_year_min: 1,
        value_year_max: 9999,
        ..DateOptions::default()
    };
    assert!(wide.validate().is_err());
}
