//! Lower-case hexadecimal, for the few places bytes travel as text (export
//! MACs, key ids, key shares). Sized up front, so a secret being encoded is
//! never copied into a buffer that is then grown and freed.

use std::fmt::Write as _;

/// `bytes` as lower-case hex digits.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The bytes of an even number of hex digits (either case), or `None`.
pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 2);
    for i in (0..text.len()).step_by(2) {
        out.push(u8::from_str_radix(text.get(i..i + 2)?, 16).ok()?);
    }
    Some(out)
}
