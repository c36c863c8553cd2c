//! Property tests of every format: a token fits the format, keeps length,
//! classes, separators and kept characters, and is a function of (key,
//! namespace, value).

use proptest::prelude::*;
use zeroize::Zeroizing;

use super::*;
use crate::crypto::PrfKey;
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

/// What a class-preserving token must keep at each position.
fn class(c: char) -> Class {
    match c {
        _ if c.is_ascii_digit() => Class::Digit,
        _ if c.is_alphabetic() && c.is_uppercase() => Class::Upper,
        _ if c.is_alphabetic() => Class::Lower,
        _ => Class::Other(c),
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
    fn date_tokens(seed: [u8; 32], y in 1900u16..2030, m in 1u8..=12, d in 1u8..=28, us: bool, years in (2200u16..2300, 0u16..50)) {
        let options = DateOptions {
            pattern: if us { "%m/%d/%Y".into() } else { "%Y-%m-%d".into() },
            token_year_min: years.0,
            token_year_max: years.0 + years.1,
        };
        let spec = FormatSpec { date: Some(options.clone()), ..FormatSpec::new(FormatKind::Date) };
        let value = if us { format!("{m:02}/{d:02}/{y:04}") } else { format!("{y:04}-{m:02}-{d:02}") };
        let k = key(seed);
        let t = token(&spec, &k, 1, &value).expect("tokenizes");
        let parsed = spec.parse_value(&t);
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
