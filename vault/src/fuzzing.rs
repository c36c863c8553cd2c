//! Entry points for the fuzz targets under `fuzz/`, compiled only with
//! `--cfg fuzzing` (which `cargo fuzz` sets). Each takes untrusted input as a
//! caller or the disk would hand it over and checks, for any input, what the
//! vault relies on.

use zeroize::Zeroizing;

use crate::crypto::PrfKey;
use crate::format::{FormatKind, FormatSpec};
use crate::store::schema;

/// The format `selector` picks, with `keep_prefix`/`keep_suffix` when the
/// format allows them (`None` otherwise).
pub fn spec(selector: u8, keep_prefix: u8, keep_suffix: u8) -> Option<FormatSpec> {
    let kind = FormatKind::ALL[usize::from(selector) % FormatKind::ALL.len()];
    let spec = FormatSpec::new(kind)
        .keep_prefix(u16::from(keep_prefix % 8))
        .keep_suffix(u16::from(keep_suffix % 8));
    if spec.validate().is_ok() {
        Some(spec)
    } else {
        Some(FormatSpec::new(kind))
    }
}

/// A value is either refused with a message that does not contain it (a
/// value made of the message's own words excepted: see below), or
/// tokenized: each of its first candidate tokens, printed in the value's
/// shape, is accepted as a token of the format with the same canonical form,
/// differs from the value, and keeps its length (all but `opaque`).
pub fn value(spec: &FormatSpec, value: &str) {
    let parsed = match spec.parse_value(value) {
        Ok(parsed) => parsed,
        Err(e) => {
            // A value made of the message's own words (ASCII) may occur in it
            // by chance; one with a character outside ASCII can only get
            // there by being echoed.
            if value.chars().count() >= 6 && !value.is_ascii() {
                assert!(!e.to_string().contains(value), "an error echoes the value");
            }
            return;
        }
    };
    let key = PrfKey::from_bytes(Zeroizing::new([7; 32]));
    for attempt in 0..4 {
        let mut rng = key.token_stream(1, parsed.canonical.as_bytes(), attempt);
        let Some(token) = spec.generate(&parsed.canonical, &mut rng) else {
            continue;
        };
        if token == *parsed.canonical {
            continue;
        }
        let printed = spec.render(&token, &parsed.shape);
        assert_ne!(printed, value, "a token equals its value");
        if spec.kind != FormatKind::Opaque {
            assert_eq!(
                printed.chars().count(),
                value.chars().count(),
                "a token changes the value's length"
            );
        }
        let back = spec
            .parse_token(&printed)
            .unwrap_or_else(|e| panic!("a token of the format is refused: {e}"));
        assert_eq!(
            *back.canonical, token,
            "a token parses to another canonical form"
        );
    }
}

/// A token argument is refused, or parses to a canonical form that printed
/// in its own shape parses back to the same form.
pub fn token(spec: &FormatSpec, token: &str) {
    let Ok(parsed) = spec.parse_token(token) else {
        return;
    };
    let printed = spec.render(&parsed.canonical, &parsed.shape);
    let again = spec
        .parse_token(&printed)
        .unwrap_or_else(|e| panic!("a printed token is refused: {e}"));
    assert_eq!(again.canonical, parsed.canonical);
}

/// Rows as read from disk (or a backup someone else handed over): every
/// decoder refuses or accepts without panicking, and what it accepts it
/// encodes back to the same bytes.
pub fn stored_rows(bytes: &[u8]) {
    if let Some(row) = schema::ReverseRow::decode(bytes) {
        assert_eq!(row.encode(), bytes);
    }
    if let Some(row) = schema::KeysetRow::decode(bytes) {
        assert_eq!(schema::KeysetRow::decode(&row.encode()), Some(row));
    }
    if let Some(row) = schema::RotationRow::decode(bytes) {
        assert_eq!(schema::RotationRow::decode(&row.encode()), Some(row));
    }
    if let Some(row) = schema::LastRotationRow::decode(bytes) {
        assert_eq!(schema::LastRotationRow::decode(&row.encode()), Some(row));
    }
    if let Some(head) = schema::AuditHead::decode(bytes) {
        assert_eq!(schema::AuditHead::decode(&head.encode()), Some(head));
    }
    if let Some(row) = schema::AuditKeyRow::decode(bytes) {
        assert_eq!(schema::AuditKeyRow::decode(&row.encode()), Some(row));
    }
    let seq = bytes.first().map_or(1, |&b| u64::from(b));
    let _ = crate::audit::decode_record(seq, bytes);
}

/// A `serve --config` file: parsing never panics; a refusal is one line and
/// quotes no line of the file (a value in the file may be a secret in the
/// wrong place); a file that parses has its transport caps checked without
/// panicking.
pub fn config(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    match crate::server::config::ConfigFile::parse(text) {
        Ok(file) => {
            let _ = file
                .transport
                .over(crate::server::TransportLimits::default());
        }
        Err(e) => {
            let message = e.to_string();
            assert!(!message.contains('\n'), "a refusal is one line");
            // A line made of the parser's own words (ASCII, and the "…" of
            // a redacted string) may occur in the message by chance; one
            // with another character can only get there by being quoted.
            let quotable = |l: &&str| l.chars().count() >= 24 && !l.is_ascii() && !l.contains('…');
            for line in text.lines().map(str::trim).filter(quotable) {
                assert!(!message.contains(line), "a refusal quotes the file");
            }
        }
    }
}
