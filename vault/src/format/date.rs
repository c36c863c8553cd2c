//! `date`: a calendar date in a configurable pattern. Tokens are valid dates
//! in a reserved year range (2200–2999 by default), so a token is never a
//! real birth date and still passes any date validation downstream.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{FormatError, Parsed, Shape};
use crate::crypto::SlotRng;

/// Pattern and token years of a `date` namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DateOptions {
    /// `%Y` (4 digits), `%m` and `%d` (2 digits each) with literal characters
    /// between them, `%%` for a literal `%`. Default `%Y-%m-%d`.
    pub pattern: String,
    /// First year a token may fall in.
    pub token_year_min: u16,
    /// Last year a token may fall in.
    pub token_year_max: u16,
    /// First year a value may fall in. Bounding values keeps the number of
    /// distinct values below the number of tokens: without it, a `tokenize`
    /// client could send every date from year 1 to 9999 and fill the token
    /// space, after which every new value of the namespace fails.
    #[serde(default = "default_value_year_min")]
    pub value_year_min: u16,
    /// Last year a value may fall in.
    #[serde(default = "default_value_year_max")]
    pub value_year_max: u16,
}

fn default_value_year_min() -> u16 {
    1800
}

fn default_value_year_max() -> u16 {
    2199
}

pub(super) static ISO: DateOptions = DateOptions {
    pattern: String::new(),
    token_year_min: 2200,
    token_year_max: 2999,
    value_year_min: 1800,
    value_year_max: 2199,
};

impl Default for DateOptions {
    fn default() -> Self {
        Self {
            pattern: "%Y-%m-%d".into(),
            ..ISO.clone()
        }
    }
}

impl DateOptions {
    pub(super) fn validate(&self) -> Result<(), String> {
        let mut seen = [0u8; 3];
        let mut chars = self.pattern.chars();
        while let Some(c) = chars.next() {
            if c == '%' {
                match chars.next() {
                    Some('Y') => seen[0] += 1,
                    Some('m') => seen[1] += 1,
                    Some('d') => seen[2] += 1,
                    Some('%') => {}
                    _ => return Err("date pattern supports only %Y, %m, %d and %%".into()),
                }
            }
        }
        if seen != [1, 1, 1] {
            return Err("date pattern needs %Y, %m and %d exactly once each".into());
        }
        if !(1..=9999).contains(&self.token_year_min)
            || !(1..=9999).contains(&self.token_year_max)
            || self.token_year_min > self.token_year_max
        {
            return Err(
                "token years must satisfy 1 <= token_year_min <= token_year_max <= 9999".into(),
            );
        }
        if !(1..=9999).contains(&self.value_year_min)
            || !(1..=9999).contains(&self.value_year_max)
            || self.value_year_min > self.value_year_max
        {
            return Err(
                "value years must satisfy 1 <= value_year_min <= value_year_max <= 9999".into(),
            );
        }
        // Days of the value years must not outnumber days of the token
        // years, or the token space can be filled by valid values alone.
        let days = |from: u16, to: u16| {
            days_from_civil(to.into(), 12, 31) - days_from_civil(from.into(), 1, 1) + 1
        };
        if days(self.value_year_min, self.value_year_max)
            > days(self.token_year_min, self.token_year_max)
        {
            return Err(
                "the value years must span no more days than the token years (else valid values alone could use up every token)"
                    .into(),
            );
        }
        Ok(())
    }

    fn pattern(&self) -> &str {
        if self.pattern.is_empty() {
            "%Y-%m-%d"
        } else {
            &self.pattern
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// A value: a date of the pattern within the namespace's value years.
pub(super) fn parse_value(options: &DateOptions, value: &str) -> Result<Parsed, FormatError> {
    let parsed = parse(options, value)?;
    let year: u16 = parsed
        .canonical
        .get(..4)
        .and_then(|y| y.parse().ok())
        .unwrap_or(0);
    if !(options.value_year_min..=options.value_year_max).contains(&year) {
        return Err(FormatError(format!(
            "the year must be between {} and {}",
            options.value_year_min, options.value_year_max
        )));
    }
    Ok(parsed)
}

/// A date of the pattern, whatever its year: a token, or a value before its
/// year range is checked.
pub(super) fn parse(options: &DateOptions, value: &str) -> Result<Parsed, FormatError> {
    let rule = || {
        FormatError(format!(
            "expected a real calendar date written as {}",
            options.pattern()
        ))
    };
    let mut fields = [0i64; 3];
    let mut input = value.as_bytes();
    let mut pattern = options.pattern().chars();
    while let Some(p) = pattern.next() {
        let (index, width) = match (p, p == '%') {
            (_, true) => match pattern.next() {
                Some('Y') => (0, 4),
                Some('m') => (1, 2),
                Some('d') => (2, 2),
                _ => (3, 0),
            },
            _ => (3, 0),
        };
        if index == 3 {
            let literal = if p == '%' { '%' } else { p };
            let mut buf = [0u8; 4];
            let literal = literal.encode_utf8(&mut buf).as_bytes();
            input = input.strip_prefix(literal).ok_or_else(rule)?;
            continue;
        }
        let digits = input
            .get(..width)
            .filter(|d| d.iter().all(u8::is_ascii_digit))
            .ok_or_else(rule)?;
        fields[index] = digits.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0'));
        input = &input[width..];
    }
    let [y, m, d] = fields;
    if !input.is_empty()
        || y == 0
        || !(1..=12).contains(&m)
        || !(1..=days_in_month(y, m)).contains(&d)
    {
        return Err(rule());
    }
    Ok(Parsed {
        canonical: Zeroizing::new(format!("{y:04}-{m:02}-{d:02}")),
        shape: Shape::Date,
    })
}

pub(super) fn generate(options: &DateOptions, rng: &mut impl SlotRng) -> String {
    let first = days_from_civil(options.token_year_min.into(), 1, 1);
    let offset = rng.below(domain_size(options) as u32);
    let (y, m, d) = civil_from_days(first + i64::from(offset));
    format!("{y:04}-{m:02}-{d:02}")
}

pub(super) fn domain_size(options: &DateOptions) -> u128 {
    let first = days_from_civil(options.token_year_min.into(), 1, 1);
    let last = days_from_civil(options.token_year_max.into(), 12, 31);
    (last - first + 1) as u128
}

/// Prints a canonical `YYYY-MM-DD` in the namespace's pattern.
pub(super) fn render(options: &DateOptions, canonical: &str) -> String {
    let (y, rest) = canonical.split_at(4.min(canonical.len()));
    let (m, d) = rest.get(1..3).zip(rest.get(4..6)).unwrap_or(("00", "00"));
    let mut out = String::with_capacity(canonical.len() + 4);
    let mut pattern = options.pattern().chars();
    while let Some(p) = pattern.next() {
        if p != '%' {
            out.push(p);
            continue;
        }
        match pattern.next() {
            Some('Y') => out.push_str(y),
            Some('m') => out.push_str(m),
            Some('d') => out.push_str(d),
            _ => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pattern: &str) -> DateOptions {
        DateOptions {
            pattern: pattern.into(),
            ..DateOptions::default()
        }
    }

    #[test]
    fn civil_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        for z in (-800_000..2_000_000).step_by(997) {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
            assert!((1..=days_in_month(y, m)).contains(&d));
        }
    }

    #[test]
    fn only_real_dates_in_the_pattern() {
        let iso = DateOptions::default();
        assert_eq!(
            parse(&iso, "1984-02-29")
                .expect("leap day")
                .canonical
                .as_str(),
            "1984-02-29"
        );
        for bad in [
            "1983-02-29",
            "1900-02-29",
            "1984-13-01",
            "1984-00-10",
            "1984-1-5",
            "84-01-05",
            "1984-01-05 ",
            "0000-01-01",
        ] {
            assert!(parse(&iso, bad).is_err(), "{bad}");
        }
        let us = opts("%m/%d/%Y");
        assert!(us.validate().is_ok());
        let parsed = parse(&us, "02/29/2000").expect("US date");
        assert_eq!(parsed.canonical.as_str(), "2000-02-29");
        assert_eq!(render(&us, "2345-07-04"), "07/04/2345");
        assert!(opts("%Y-%m").validate().is_err());
        assert!(opts("%Y-%m-%d %H").validate().is_err());
    }
}
