//! Versioned data keysets, wrapped under the KEK for storage.

use zeroize::Zeroizing;

use super::{CryptoError, Kek, PrfKey, SivKey};

const WRAP_LABEL: &[u8] = b"phivault keyset";

/// What a keyset is for; part of the wrapping AD so that a keyset wrapped for
/// one purpose can never be unwrapped as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyPurpose {
    /// Sealing reverse rows and deriving blind indexes and tokens.
    Data,
    /// Keying the audit trail's token marks.
    Audit,
}

impl KeyPurpose {
    fn label(self) -> &'static [u8] {
        match self {
            Self::Data => b"data",
            Self::Audit => b"audit",
        }
    }
}

/// One version of the data keys: the AES-256-SIV key that seals values and the
/// HMAC key behind blind indexes and token streams.
pub struct Keyset {
    version: u32,
    enc: SivKey,
    prf: PrfKey,
}

impl Keyset {
    /// Fresh keys from the operating system's RNG.
    pub fn generate(version: u32) -> Result<Self, CryptoError> {
        Ok(Self {
            version,
            enc: SivKey::generate()?,
            prf: PrfKey::generate()?,
        })
    }

    /// The version this keyset is stored under.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The value-sealing key.
    pub fn enc(&self) -> &SivKey {
        &self.enc
    }

    /// The PRF key.
    pub fn prf(&self) -> &PrfKey {
        &self.prf
    }

    /// Seals the keyset under `kek`, bound to its version and purpose.
    pub fn wrap(&self, kek: &Kek, purpose: KeyPurpose) -> Result<Vec<u8>, CryptoError> {
        let mut secret = Zeroizing::new([0u8; SivKey::LEN + PrfKey::LEN]);
        secret[..SivKey::LEN].copy_from_slice(self.enc.expose());
        secret[SivKey::LEN..].copy_from_slice(self.prf.expose());
        kek.wrap(
            &[WRAP_LABEL, purpose.label(), &self.version.to_be_bytes()],
            secret.as_ref(),
        )
    }

    /// Opens a keyset that `wrap` sealed for this `version` and `purpose`.
    pub fn unwrap(
        kek: &Kek,
        version: u32,
        purpose: KeyPurpose,
        wrapped: &[u8],
    ) -> Result<Self, CryptoError> {
        let secret = kek.unwrap(
            &[WRAP_LABEL, purpose.label(), &version.to_be_bytes()],
            wrapped,
        )?;
        if secret.len() != SivKey::LEN + PrfKey::LEN {
            return Err(CryptoError::DecryptionFailed);
        }
        let mut enc = Zeroizing::new([0u8; SivKey::LEN]);
        enc.copy_from_slice(&secret[..SivKey::LEN]);
        let mut prf = Zeroizing::new([0u8; PrfKey::LEN]);
        prf.copy_from_slice(&secret[SivKey::LEN..]);
        Ok(Self {
            version,
            enc: SivKey::from_bytes(enc),
            prf: PrfKey::from_bytes(prf),
        })
    }
}

/// The audit key: an HMAC key that marks each (namespace, token) a
/// detokenize call touched, so that "who saw this token" can be answered
/// without the audit trail holding a token.
///
/// It is its own key, never part of a data keyset: data-key rotation
/// destroys old keysets, and the marks must stay answerable for as long as
/// the records are kept.
pub struct AuditKey {
    version: u32,
    key: PrfKey,
}

impl AuditKey {
    /// A fresh key from the operating system's RNG.
    pub fn generate(version: u32) -> Result<Self, CryptoError> {
        Ok(Self {
            version,
            key: PrfKey::generate()?,
        })
    }

    /// The version this key is stored under.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// `HMAC(k, "aud" ‖ len(namespace) ‖ namespace ‖ token)`; the length
    /// prefix keeps (`ab`, `c`) and (`a`, `bc`) apart.
    pub fn token_mark(&self, namespace: &str, token: &str) -> [u8; 32] {
        let len = (namespace.len() as u32).to_be_bytes();
        self.key
            .mac(&[AUDIT_LABEL, &len, namespace.as_bytes(), token.as_bytes()])
    }

    /// Seals the key under `kek`, bound to its version and purpose.
    pub fn wrap(&self, kek: &Kek) -> Result<Vec<u8>, CryptoError> {
        kek.wrap(
            &[
                WRAP_LABEL,
                KeyPurpose::Audit.label(),
                &self.version.to_be_bytes(),
            ],
            self.key.expose(),
        )
    }

    /// Opens a key that `wrap` sealed for this `version`.
    pub fn unwrap(kek: &Kek, version: u32, wrapped: &[u8]) -> Result<Self, CryptoError> {
        let secret = kek.unwrap(
            &[
                WRAP_LABEL,
                KeyPurpose::Audit.label(),
                &version.to_be_bytes(),
            ],
            wrapped,
        )?;
        let raw: [u8; PrfKey::LEN] = secret
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::DecryptionFailed)?;
        Ok(Self {
            version,
            key: PrfKey::from_bytes(Zeroizing::new(raw)),
        })
    }
}

const AUDIT_LABEL: &[u8] = b"aud";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;

    fn kek() -> Kek {
        let master = MasterKey::KeyFile(Zeroizing::new([4; 32]));
        let record =
            crate::crypto::kek::KdfRecord::generate(&master, Default::default()).expect("rng");
        Kek::derive(&master, &record).expect("derive")
    }

    #[test]
    fn wrap_binds_version_and_purpose() {
        let kek = kek();
        let keyset = Keyset::generate(3).expect("rng");
        let wrapped = keyset.wrap(&kek, KeyPurpose::Data).expect("wrap");
        let back = Keyset::unwrap(&kek, 3, KeyPurpose::Data, &wrapped).expect("unwrap");
        assert!(back.prf().blind_index(1, b"x") == keyset.prf().blind_index(1, b"x"));
        assert!(
            Keyset::unwrap(&kek, 4, KeyPurpose::Data, &wrapped).is_err(),
            "moved to another version"
        );
        let mut flipped = wrapped.clone();
        flipped[20] ^= 0x80;
        assert!(Keyset::unwrap(&kek, 3, KeyPurpose::Data, &flipped).is_err());
    }

    #[test]
    fn an_audit_key_is_bound_to_its_purpose_and_separates_namespaces() {
        let kek = kek();
        let key = AuditKey::generate(1).expect("rng");
        let wrapped = key.wrap(&kek).expect("wrap");
        let back = AuditKey::unwrap(&kek, 1, &wrapped).expect("unwrap");
        assert_eq!(back.token_mark("ssn", "9"), key.token_mark("ssn", "9"));
        assert_ne!(key.token_mark("ssn", "9"), key.token_mark("ss", "n9"));
        assert!(
            AuditKey::unwrap(&kek, 2, &wrapped).is_err(),
            "other version"
        );
        let data = Keyset::generate(1).expect("rng");
        let data_wrapped = data.wrap(&kek, KeyPurpose::Data).expect("wrap");
        assert!(
            AuditKey::unwrap(&kek, 1, &data_wrapped).is_err(),
            "a data keyset never opens as the audit key"
        );
    }
}
