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
}

impl KeyPurpose {
    fn label(self) -> &'static [u8] {
        match self {
            Self::Data => b"data",
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
}
