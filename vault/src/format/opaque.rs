//! `opaque`: any UTF-8 value becomes `tok_` and 22 base62 characters
//! (about 131 bits), for free text, addresses and notes.

use zeroize::Zeroizing;

use super::{FormatError, Parsed, Shape};
use crate::crypto::SlotRng;

const PREFIX: &str = "tok_";
pub(super) const TOKEN_CHARS: usize = 22;
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

pub(super) fn parse_value(value: &str) -> Parsed {
    Parsed {
        canonical: Zeroizing::new(value.to_owned()),
        shape: Shape::Canonical,
    }
}

pub(super) fn parse_token(token: &str) -> Result<Parsed, FormatError> {
    let body = token.strip_prefix(PREFIX).unwrap_or("");
    if body.len() != TOKEN_CHARS || !body.bytes().all(|c| c.is_ascii_alphanumeric()) {
        return Err(FormatError::new(
            "expected tok_ followed by 22 letters and digits",
        ));
    }
    Ok(parse_value(token))
}

pub(super) fn generate(rng: &mut impl SlotRng) -> String {
    let mut token = String::with_capacity(PREFIX.len() + TOKEN_CHARS);
    token.push_str(PREFIX);
    token.extend((0..TOKEN_CHARS).map(|_| char::from(ALPHABET[rng.below(62) as usize])));
    token
}
