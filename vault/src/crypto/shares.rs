//! Key shares: the 32-byte master key split by Shamir's scheme (over
//! GF(256), by the `blahaj` crate) into `count` shares of which any
//! `threshold` rebuild it and fewer tell nothing about it. For a vault that
//! should need several people to start and no single file to steal.
//!
//! A share is one line of text that a person can keep on paper or in a
//! password manager:
//!
//! ```text
//! phivault-share-1-3f2a9c0d-3-2-<64 hex digits>-<8 hex digits>
//! ```
//!
//! that is the format version, the set (random, the same for every share of
//! one split, so that shares of two splits are never mixed), the threshold,
//! the share's number, its bytes and a checksum of everything before it, so
//! that a mistyped share is named as such instead of making a wrong key.

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::CryptoError;

const PREFIX: &str = "phivault-share-1";
/// Most shares a key is split into: a board of key holders, not a crowd,
/// and every share is one more secret to keep.
pub const MAX_SHARES: u8 = 16;

fn share_error(what: impl Into<String>) -> CryptoError {
    CryptoError::KeyShares(what.into())
}

/// Splits `key` into `count` shares, any `threshold` of which rebuild it.
pub fn split(
    key: &[u8; 32],
    threshold: u8,
    count: u8,
) -> Result<Vec<Zeroizing<String>>, CryptoError> {
    if !(2..=MAX_SHARES).contains(&count) {
        return Err(share_error(format!(
            "the key is split into 2 to {MAX_SHARES} shares, not {count}"
        )));
    }
    if !(2..=count).contains(&threshold) {
        return Err(share_error(format!(
            "the threshold is 2 to the number of shares ({count}), not {threshold}"
        )));
    }
    let mut set = [0u8; 4];
    super::fill_random(&mut set)?;
    let set = hex(&set).to_string();
    // blahaj's dealer keeps the polynomials (the key's bytes among their
    // coefficients) in memory it does not wipe when dropped; the shares
    // themselves wipe on drop.
    let dealer = blahaj::Sharks(threshold).dealer(key);
    Ok(dealer
        .take(usize::from(count))
        .map(|share| {
            let bytes = Zeroizing::new(Vec::<u8>::from(&share));
            let data = hex(&bytes[1..]);
            let number = bytes[0].to_string();
            let threshold = threshold.to_string();
            // Sized first and never regrown, so no copy of the share is
            // left behind in freed memory.
            let body_len = PREFIX.len()
                + 1
                + set.len()
                + 1
                + threshold.len()
                + 1
                + number.len()
                + 1
                + data.len();
            let mut line = Zeroizing::new(String::with_capacity(body_len + 1 + 8));
            for piece in [PREFIX, "-", &set, "-", &threshold, "-", &number, "-", &data] {
                line.push_str(piece);
            }
            let check = checksum(&line);
            line.push('-');
            line.push_str(&check);
            line
        })
        .collect())
}

/// Rebuilds the key from `shares` (each one line as [`split`] wrote it;
/// surrounding white space ignored). Refuses, naming the share by its
/// position in `shares` and never quoting it: a line that is not a share, a
/// mistyped one, shares of different sets, one given twice, too few.
pub fn combine(shares: &[impl AsRef<str>]) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    let mut set: Option<(String, u8)> = None;
    let mut parsed: Vec<blahaj::Share> = Vec::new();
    let mut numbers: Vec<u8> = Vec::new();
    for (i, text) in shares.iter().enumerate() {
        let n = i + 1;
        let text = text.as_ref().trim();
        let Some((body, fields)) = fields_of(text) else {
            return Err(share_error(format!(
                "key share {n} is not a phivault key share"
            )));
        };
        let check = &text[body.len() + 1..];
        if checksum(body) != check.to_ascii_lowercase() {
            return Err(share_error(format!(
                "key share {n} is mistyped: its checksum does not match"
            )));
        }
        let [share_set, threshold, number, data] = fields;
        // A share numbered 0 would be the key itself (the polynomial at 0),
        // so that one crafted line decided the result: split never makes
        // one, nor a threshold outside 2..=MAX_SHARES.
        let (Some(threshold), Some(number), Some(data)) = (
            threshold
                .parse::<u8>()
                .ok()
                .filter(|t| (2..=MAX_SHARES).contains(t)),
            number.parse::<u8>().ok().filter(|n| *n >= 1),
            unhex(data).filter(|d| d.len() == 32),
        ) else {
            return Err(share_error(format!("key share {n} is malformed")));
        };
        match &set {
            None => set = Some((share_set.to_owned(), threshold)),
            Some((first, t)) if first != share_set || *t != threshold => {
                return Err(share_error(format!(
                    "key share {n} belongs to another split of a key than the first share given"
                )));
            }
            Some(_) => {}
        }
        if numbers.contains(&number) {
            return Err(share_error(format!(
                "key share {n} was given already (share number {number})"
            )));
        }
        numbers.push(number);
        let mut bytes = Zeroizing::new(Vec::with_capacity(33));
        bytes.push(number);
        bytes.extend_from_slice(&data);
        parsed.push(
            blahaj::Share::try_from(bytes.as_slice())
                .map_err(|_| share_error(format!("key share {n} is malformed")))?,
        );
    }
    let Some((_, threshold)) = set else {
        return Err(share_error("no key share given"));
    };
    if parsed.len() < usize::from(threshold) {
        return Err(share_error(format!(
            "{} key share(s) given; this key needs {threshold}",
            parsed.len()
        )));
    }
    let secret = Zeroizing::new(
        blahaj::Sharks(threshold)
            .recover(&parsed)
            .map_err(|e| share_error(format!("the shares do not combine: {e}")))?,
    );
    let mut key = Zeroizing::new([0u8; 32]);
    if secret.len() != key.len() {
        return Err(share_error("the shares do not combine into a 32-byte key"));
    }
    key.copy_from_slice(&secret);
    Ok(key)
}

/// How many shares the split that `share` belongs to needs, if it is a
/// well-formed share: to know how many more to ask for.
pub fn threshold_of(share: &str) -> Option<u8> {
    let text = share.trim();
    let (body, [_, threshold, _, _]) = fields_of(text)?;
    if checksum(body) != text[body.len() + 1..].to_ascii_lowercase() {
        return None;
    }
    threshold
        .parse()
        .ok()
        .filter(|t| (2..=MAX_SHARES).contains(t))
}

/// A share line's body (all but the checksum) and its four fields: set,
/// threshold, number, data. `None` unless it is exactly this format.
fn fields_of(text: &str) -> Option<(&str, [&str; 4])> {
    let (body, _check) = text.rsplit_once('-')?;
    let rest = body.strip_prefix(PREFIX)?.strip_prefix('-')?;
    let mut parts = rest.split('-');
    let fields = [parts.next()?, parts.next()?, parts.next()?, parts.next()?];
    parts.next().is_none().then_some((body, fields))
}

fn checksum(body: &str) -> String {
    hex(&Sha256::digest(body.as_bytes())[..4]).to_string()
}

fn hex(bytes: &[u8]) -> Zeroizing<String> {
    Zeroizing::new(crate::hex::hex(bytes))
}

fn unhex(text: &str) -> Option<Zeroizing<Vec<u8>>> {
    crate::hex::unhex(text).map(Zeroizing::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_threshold_of_the_shares_rebuild_the_key_and_fewer_do_not() {
        let key = [0x5a; 32];
        let shares = split(&key, 3, 5).expect("split");
        assert_eq!(shares.len(), 5);
        assert_eq!(threshold_of(&shares[0]), Some(3));
        for picked in [[0, 1, 2], [4, 2, 0], [1, 3, 4]] {
            let some: Vec<&str> = picked.iter().map(|&i| shares[i].as_str()).collect();
            assert_eq!(*combine(&some).expect("combine"), key);
        }
        let two = [shares[0].as_str(), shares[3].as_str()];
        let refused = combine(&two).expect_err("too few").to_string();
        assert!(refused.contains("needs 3"), "{refused}");
    }

    #[test]
    fn a_bad_share_is_named_by_position_and_never_quoted() {
        let shares = split(&[1; 32], 2, 3).expect("split");
        let other = split(&[2; 32], 2, 3).expect("split");
        let mut typo = shares[1].to_string();
        let at = typo.len() - 20;
        let flipped = if &typo[at..=at] == "0" { "1" } else { "0" };
        typo.replace_range(at..=at, flipped);
        for (given, expected) in [
            (
                vec![shares[0].to_string(), typo.clone()],
                "key share 2 is mistyped",
            ),
            (
                vec![shares[0].to_string(), other[1].to_string()],
                "key share 2 belongs to another split",
            ),
            (
                vec![shares[2].to_string(), shares[2].to_string()],
                "key share 2 was given already",
            ),
            (
                vec!["hunter2".to_owned(), shares[0].to_string()],
                "key share 1 is not a phivault key share",
            ),
        ] {
            let refused = combine(&given).expect_err(expected).to_string();
            assert!(refused.contains(expected), "{refused}");
            for share in &given {
                assert!(!refused.contains(share.as_str()), "{refused}");
            }
            assert!(!refused.contains("hunter2"), "{refused}");
        }
        // Lines split never makes: a share numbered 0 (the key itself), a
        // threshold of 1, another format version. Checksums made right, so
        // that only the fields are wrong.
        let good = shares[0].as_str();
        let fields: Vec<&str> = good.split('-').collect();
        let forge = |number: &str, threshold: &str, prefix: &str| {
            let body = format!("{prefix}-{}-{threshold}-{number}-{}", fields[3], fields[6]);
            let check = checksum(&body);
            format!("{body}-{check}")
        };
        for (forged, expected) in [
            (forge("0", fields[4], PREFIX), "malformed"),
            (forge(fields[5], "1", PREFIX), "malformed"),
            (
                forge(fields[5], fields[4], "phivault-share-10"),
                "not a phivault key share",
            ),
        ] {
            let refused = combine(&[forged.as_str(), shares[1].as_str()])
                .expect_err(&forged)
                .to_string();
            assert!(refused.contains(expected), "{refused}");
        }
        assert!(split(&[0; 32], 1, 3).is_err());
        assert!(split(&[0; 32], 4, 3).is_err());
        assert!(split(&[0; 32], 2, 17).is_err());
    }
}
