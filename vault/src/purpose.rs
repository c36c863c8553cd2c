//! Purpose of use: why a reveal is made, as HL7's PurposeOfUse value set
//! codes it (TREAT, HPAYMT, HOPERAT, ETREAT…), with an optional short reason
//! in words. Both are kept in the reveal's audit record and shown by
//! disclosures, so that "who saw this, and why" has an answer; a client can
//! be required to give one.

use std::fmt;

/// The codes of HL7 v3's PurposeOfUse value set
/// (2.16.840.1.113883.1.11.20448), as a reveal may state them.
pub const CODES: &[&str] = &[
    "BIORCH",
    "BTG",
    "CAREMGT",
    "CLINTRCH",
    "CLINTRCHNPC",
    "CLINTRCHPC",
    "CLINTRL",
    "CLMATTCH",
    "COC",
    "COVAUTH",
    "COVERAGE",
    "DECEASED",
    "DISASTER",
    "DONAT",
    "DSRCH",
    "ELIGDET",
    "ELIGVER",
    "ENROLLM",
    "ERTREAT",
    "ETREAT",
    "FAMRQT",
    "FRAUD",
    "GOV",
    "HACCRED",
    "HCOMPL",
    "HDECD",
    "HDIRECT",
    "HDM",
    "HLEGAL",
    "HMARKT",
    "HOPERAT",
    "HOUTCOMS",
    "HPAYMT",
    "HPRGRP",
    "HQUALIMP",
    "HRESCH",
    "HSYSADMIN",
    "HTEST",
    "LABELING",
    "MEMADMIN",
    "METAMGT",
    "MILCDM",
    "MILDCRG",
    "PATADMIN",
    "PATRQT",
    "PATSFTY",
    "PERFMSR",
    "POARCH",
    "POPHLTH",
    "PRECLINTRCH",
    "PUBHLTH",
    "PWATRNY",
    "RECORDMGT",
    "REMITADV",
    "SUPNWK",
    "SYSDEV",
    "THREAT",
    "TRAIN",
    "TRANSRCH",
    "TREAT",
];

/// The codes that break the glass: emergency treatment (`ETREAT`, and
/// HL7's `BTG`, "break the glass"). A client with a `break-glass:<ns>`
/// scope may reveal with one of them what it otherwise may not.
pub const BREAK_GLASS: &[&str] = &["ETREAT", "BTG"];

/// Longest reason accepted, in characters.
pub const MAX_REASON_CHARS: usize = 200;

/// A stated purpose of use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Purpose {
    /// The PurposeOfUse code; empty when none was given.
    pub code: String,
    /// The reason in words (a ticket number, "patient called about a
    /// bill"); never PHI — it is kept in the audit trail as given.
    pub reason: String,
}

/// Why a purpose of use is refused, in words that never quote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurposeError(String);

impl fmt::Display for PurposeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Purpose {
    /// A purpose as a caller sent it, checked: a known code (or none) and a
    /// reason of printable characters within [`MAX_REASON_CHARS`]. The
    /// error never repeats what was sent.
    pub fn new(code: &str, reason: &str) -> Result<Self, PurposeError> {
        if !code.is_empty() && !CODES.contains(&code) {
            return Err(PurposeError(format!(
                "the purpose of use is not an HL7 PurposeOfUse code ({} bytes given); use one such as TREAT, HPAYMT, HOPERAT or ETREAT",
                code.len()
            )));
        }
        let chars = reason.chars().count();
        if chars > MAX_REASON_CHARS {
            return Err(PurposeError(format!(
                "the reason is {chars} characters; the limit is {MAX_REASON_CHARS}"
            )));
        }
        if reason.chars().any(char::is_control) {
            return Err(PurposeError(
                "the reason holds a control character (a line break, a tab…)".into(),
            ));
        }
        if code.is_empty() && !reason.is_empty() {
            return Err(PurposeError(
                "a reason needs a purpose of use code with it".into(),
            ));
        }
        Ok(Self {
            code: code.to_owned(),
            reason: reason.to_owned(),
        })
    }

    /// Whether a purpose was stated.
    pub fn is_stated(&self) -> bool {
        !self.code.is_empty()
    }

    /// Whether it is an emergency that breaks the glass.
    pub fn breaks_glass(&self) -> bool {
        BREAK_GLASS.contains(&self.code.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_codes_pass_and_anything_else_is_refused_without_being_quoted() {
        assert!(Purpose::new("TREAT", "").expect("treat").is_stated());
        assert!(
            Purpose::new("ETREAT", "code blue, bed 4")
                .expect("etreat")
                .breaks_glass()
        );
        assert!(!Purpose::new("", "").expect("none").is_stated());
        for (code, reason) in [
            ("123-45-6789", ""),
            ("treat", ""),
            ("TREAT", "Smith\nJohn"),
            ("", "Smith alone"),
        ] {
            let error = Purpose::new(code, reason).expect_err(code).to_string();
            assert!(
                !error.contains("123-45") && !error.contains("Smith"),
                "{error}"
            );
        }
        let long = "x".repeat(MAX_REASON_CHARS + 1);
        assert!(Purpose::new("TREAT", &long).is_err());
        let mut sorted = CODES.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, CODES, "kept sorted, so that a reader finds a code");
    }
}
