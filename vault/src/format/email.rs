//! `email`: an RFC 5322 addr-spec in its common form — a dot-atom local part
//! and a host name. Quoted local parts, comments and address literals are
//! refused. The local part is replaced class by class; the domain is kept, so
//! a token is still a deliverable-looking address at the same domain.

use zeroize::Zeroizing;

use super::{FormatError, Parsed, Shape};
use crate::crypto::SlotRng;

const RULE: &str = "expected local@domain: a dot-atom local part of at most 64 characters with at least one letter or digit, and a host name";
/// RFC 5322 `atext` besides letters and digits.
const ATEXT_SYMBOLS: &[u8] = b"!#$%&'*+-/=?^_`{|}~";

fn local_ok(local: &str) -> bool {
    let b = local.as_bytes();
    (1..=64).contains(&b.len())
        && b.split(|&c| c == b'.').all(|atom| {
            !atom.is_empty()
                && atom
                    .iter()
                    .all(|c| c.is_ascii_alphanumeric() || ATEXT_SYMBOLS.contains(c))
        })
        && b.iter().any(u8::is_ascii_alphanumeric)
}

fn domain_ok(domain: &str) -> bool {
    (1..=253).contains(&domain.len())
        && domain.split('.').all(|label| {
            let b = label.as_bytes();
            (1..=63).contains(&b.len())
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

pub(super) fn parse(value: &str) -> Result<Parsed, FormatError> {
    let (local, domain) = value
        .rsplit_once('@')
        .ok_or_else(|| FormatError::new(RULE))?;
    if value.len() > 254 || !local_ok(local) || !domain_ok(domain) {
        return Err(FormatError::new(RULE));
    }
    Ok(Parsed {
        canonical: Zeroizing::new(value.to_owned()),
        shape: Shape::Canonical,
    })
}

pub(super) fn generate(canonical: &str, rng: &mut impl SlotRng) -> String {
    let at = canonical.rfind('@').unwrap_or(canonical.len());
    let (local, domain) = canonical.split_at(at);
    let mut token: String = local
        .bytes()
        .map(|c| match c {
            b'0'..=b'9' => char::from(b'0' + rng.below(10) as u8),
            b'A'..=b'Z' => char::from(b'A' + rng.below(26) as u8),
            b'a'..=b'z' => char::from(b'a' + rng.below(26) as u8),
            _ => char::from(c),
        })
        .collect();
    token.push_str(domain);
    token
}

pub(super) fn domain_size(canonical: &str) -> u128 {
    let local = canonical.rsplit_once('@').map_or(canonical, |(l, _)| l);
    local.bytes().fold(1u128, |size, c| {
        let choices = match c {
            b'0'..=b'9' => 10,
            b'A'..=b'Z' | b'a'..=b'z' => 26,
            _ => 1,
        };
        size.saturating_mul(choices)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn practical_addresses() {
        for ok in [
            "jane.doe@example.org",
            "j+tag@mail.example.co.uk",
            "x@localhost",
            "o'neil_2@a-b.example",
        ] {
            assert!(parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "plainaddress",
            "@example.org",
            "jane@",
            ".jane@example.org",
            "jane..doe@example.org",
            "\"jane doe\"@example.org",
            "jane@-example.org",
            "jane@exa_mple.org",
            "jäne@example.org",
            "+-+@example.org",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
