//! The key-encryption key (KEK): derived from a passphrase with Argon2id,
//! read from a 32-byte master key file, or unwrapped by an HSM; it only
//! wraps keysets.

use std::io::Write as _;
use std::path::Path;

use argon2::{Algorithm, Argon2, Params, Version};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{CryptoError, HsmSeal, SivKey};

const KEK_CHECK_LABEL: &[u8] = b"phivault kek-check";
const KEK_CHECK_PLAINTEXT: &[u8] = b"phivault kek check v1";
const WRAP_KEY_INFO: &[u8] = b"phivault kek wrap v1";
/// HKDF label of the key that MACs the rows that shape access.
const REGISTRY_KEY_INFO: &[u8] = b"phivault registry mac v1";
/// Bound into the KEK check of a vault whose registry rows carry MACs: a
/// check without it marks a vault from before them, whose rows are tagged on
/// first open. Whoever cannot make a KEK check cannot pass a tagged vault off
/// as an untagged one (and have rows they planted tagged).
const REGISTRY_CHECK_LABEL: &[u8] = b"registry rows tagged";
/// Bound into the KEK check, after the registry label, of a vault whose
/// forward entries carry bindings; the same argument holds for them.
const FORWARD_CHECK_LABEL: &[u8] = b"forward entries bound";
const RECORD_VERSION: u8 = 1;
/// A record that carries a wrapped secret after the fixed part.
const RECORD_VERSION_WRAPPED: u8 = 2;
const KIND_ARGON2ID: u8 = 1;
const KIND_KEY_FILE: u8 = 2;
const KIND_PKCS11: u8 = 3;
const SALT_LEN: usize = 16;
const RECORD_LEN: usize = 2 + 12 + SALT_LEN;

/// What a vault's rows carry beyond ciphertext, as its KEK check records it.
/// Each level includes the ones before it; a vault is migrated up to
/// [`Protection::CURRENT`] on open, one level per commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protection {
    /// Only reverse rows are authenticated (their SIV tag).
    None,
    /// Rows that grant or shape access carry MACs.
    RegistryTags,
    /// Forward entries carry bindings too.
    ForwardBindings,
}

impl Protection {
    /// The level every vault is brought to.
    pub const CURRENT: Self = Self::ForwardBindings;

    /// Newest first, so that opening a current vault tries one check.
    const NEWEST_FIRST: [Self; 3] = [Self::ForwardBindings, Self::RegistryTags, Self::None];

    fn labels(self) -> &'static [&'static [u8]] {
        match self {
            Self::None => &[],
            Self::RegistryTags => &[REGISTRY_CHECK_LABEL],
            Self::ForwardBindings => &[REGISTRY_CHECK_LABEL, FORWARD_CHECK_LABEL],
        }
    }
}

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Passes over memory.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl KdfParams {
    /// RFC 9106 §4, second recommended option: the weakest parameters a vault
    /// may be created or unsealed with.
    pub const FLOOR: Self = Self {
        m_cost_kib: 64 * 1024,
        t_cost: 3,
        p_cost: 4,
    };
    /// The most a stored parameter set may demand. A tampered `meta` row must
    /// not be able to make unsealing allocate or spin without bound.
    pub const CEILING: Self = Self {
        m_cost_kib: 1024 * 1024,
        t_cost: 16,
        p_cost: 16,
    };

    /// Refuses parameters outside `FLOOR..=CEILING`; called before any hashing.
    pub fn check(&self) -> Result<(), CryptoError> {
        let (lo, hi) = (Self::FLOOR, Self::CEILING);
        let fields = [
            (
                "memory (KiB)",
                self.m_cost_kib,
                lo.m_cost_kib,
                hi.m_cost_kib,
            ),
            ("passes", self.t_cost, lo.t_cost, hi.t_cost),
            ("lanes", self.p_cost, lo.p_cost, hi.p_cost),
        ];
        for (name, value, min, max) in fields {
            if !(min..=max).contains(&value) {
                return Err(CryptoError::KdfParams(format!(
                    "Argon2id {name} is {value}, allowed {min}..={max}"
                )));
            }
        }
        Ok(())
    }
}

impl Default for KdfParams {
    fn default() -> Self {
        Self::FLOOR
    }
}

/// What unseals the vault. No variant can be printed or copied.
pub enum MasterKey {
    /// A passphrase, stretched with Argon2id.
    Passphrase(Zeroizing<String>),
    /// 32 random bytes from a key file, for automated unsealing.
    KeyFile(Zeroizing<[u8; 32]>),
    /// A key in an HSM that unwraps the vault's 32-byte secret, for
    /// automated unsealing without the secret on any disk.
    Hsm(HsmSeal),
}

impl MasterKey {
    /// Reads a master key file: exactly 32 raw bytes, or 64 hex digits with an
    /// optional trailing newline (what `openssl rand -hex 32` writes).
    pub fn read_key_file(path: &Path) -> Result<Self, CryptoError> {
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| {
            CryptoError::KeyFile(format!("cannot read {}: {}", path.display(), e.kind()))
        })?);
        let mut key = Zeroizing::new([0u8; 32]);
        if bytes.len() == 32 {
            key.copy_from_slice(&bytes);
            return Ok(Self::KeyFile(key));
        }
        let text = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.len() != 64 {
            return Err(CryptoError::KeyFile(format!(
                "{} must hold 32 raw bytes or 64 hex digits",
                path.display()
            )));
        }
        for (out, pair) in key.iter_mut().zip(text.chunks_exact(2)) {
            let digit = |c: u8| (c as char).to_digit(16);
            match (digit(pair[0]), digit(pair[1])) {
                (Some(hi), Some(lo)) => *out = (hi * 16 + lo) as u8,
                _ => {
                    return Err(CryptoError::KeyFile(format!(
                        "{} holds a character that is not a hex digit",
                        path.display()
                    )));
                }
            }
        }
        Ok(Self::KeyFile(key))
    }

    /// Creates a new key file with 32 random bytes, readable by its owner
    /// only; refuses to overwrite an existing file.
    pub fn create_key_file(path: &Path) -> Result<Self, CryptoError> {
        let mut key = Zeroizing::new([0u8; 32]);
        super::fill_random(&mut key[..])?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let io = |e: std::io::Error| {
            CryptoError::KeyFile(format!("cannot create {}: {}", path.display(), e.kind()))
        };
        let mut file = options.open(path).map_err(io)?;
        file.write_all(&key[..])
            .and_then(|()| file.sync_all())
            .map_err(io)?;
        Ok(Self::KeyFile(key))
    }

    fn kind(&self) -> u8 {
        match self {
            Self::Passphrase(_) => KIND_ARGON2ID,
            Self::KeyFile(_) => KIND_KEY_FILE,
            Self::Hsm(_) => KIND_PKCS11,
        }
    }
}

/// What a kind of master key is called in messages.
fn kind_name(kind: u8) -> &'static str {
    match kind {
        KIND_ARGON2ID => "a passphrase",
        KIND_KEY_FILE => "a master key file",
        KIND_PKCS11 => "an HSM key (PKCS#11)",
        _ => "an unknown kind of key",
    }
}

/// How the KEK is derived, as stored in `meta`: kind, Argon2id parameters,
/// salt and, under an HSM, the secret as the HSM wrapped it. Its exact bytes
/// are the associated data of the KEK check, so editing any of them makes
/// unsealing fail rather than silently weakening it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KdfRecord {
    kind: u8,
    params: KdfParams,
    salt: [u8; SALT_LEN],
    wrapped: Vec<u8>,
}

impl KdfRecord {
    /// A fresh record with a random salt for `master`.
    pub(crate) fn generate(master: &MasterKey, params: KdfParams) -> Result<Self, CryptoError> {
        let mut salt = [0u8; SALT_LEN];
        super::fill_random(&mut salt)?;
        let unused = KdfParams {
            m_cost_kib: 0,
            t_cost: 0,
            p_cost: 0,
        };
        let (params, wrapped) = match master {
            MasterKey::Passphrase(_) => (params, Vec::new()),
            MasterKey::KeyFile(_) => (unused, Vec::new()),
            MasterKey::Hsm(seal) => {
                let mut secret = Zeroizing::new([0u8; 32]);
                super::fill_random(&mut secret[..])?;
                (unused, seal.wrap(&secret, &salt)?)
            }
        };
        Ok(Self {
            kind: master.kind(),
            params,
            salt,
            wrapped,
        })
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD_LEN + self.wrapped.len());
        let version = if self.wrapped.is_empty() {
            RECORD_VERSION
        } else {
            RECORD_VERSION_WRAPPED
        };
        out.extend_from_slice(&[version, self.kind]);
        for n in [
            self.params.m_cost_kib,
            self.params.t_cost,
            self.params.p_cost,
        ] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&self.wrapped);
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let wrapped = match (bytes.first(), bytes.get(1)) {
            (Some(&RECORD_VERSION), _) if bytes.len() == RECORD_LEN => Vec::new(),
            (Some(&RECORD_VERSION_WRAPPED), Some(&KIND_PKCS11))
                if bytes.len() == RECORD_LEN + super::hsm::WRAPPED_LEN =>
            {
                bytes[RECORD_LEN..].to_vec()
            }
            _ => return None,
        };
        let word =
            |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&bytes[14..RECORD_LEN]);
        Some(Self {
            kind: bytes[1],
            params: KdfParams {
                m_cost_kib: word(2),
                t_cost: word(6),
                p_cost: word(10),
            },
            salt,
            wrapped,
        })
    }
}

/// The key-encryption key, expanded to an AES-256-SIV key, and the key of the
/// MACs on rows that shape access, derived from it.
pub struct Kek(SivKey, Zeroizing<[u8; 32]>);

impl Kek {
    /// Derives the KEK for `record` from `master`. Argon2id parameters are
    /// checked against the floor and ceiling before any work is done.
    pub(crate) fn derive(master: &MasterKey, record: &KdfRecord) -> Result<Self, CryptoError> {
        if master.kind() != record.kind {
            return Err(CryptoError::MasterKeyKind(format!(
                "this vault is sealed with {}, not {}",
                kind_name(record.kind),
                kind_name(master.kind())
            )));
        }
        let mut kek = Zeroizing::new([0u8; 32]);
        match master {
            MasterKey::Passphrase(passphrase) => {
                record.params.check()?;
                let p = record.params;
                let params = Params::new(p.m_cost_kib, p.t_cost, p.p_cost, Some(32))
                    .map_err(|e| CryptoError::KdfParams(e.to_string()))?;
                Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                    .hash_password_into(passphrase.as_bytes(), &record.salt, &mut kek[..])
                    .map_err(|e| CryptoError::KdfParams(e.to_string()))?;
            }
            MasterKey::KeyFile(key) => kek.copy_from_slice(&key[..]),
            MasterKey::Hsm(seal) => {
                kek.copy_from_slice(&seal.unwrap(&record.wrapped, &record.salt)?[..]);
            }
        }
        let hkdf = Hkdf::<Sha256>::new(Some(&record.salt), &kek[..]);
        let mut wrap = Zeroizing::new([0u8; 64]);
        let mut registry = Zeroizing::new([0u8; 32]);
        hkdf.expand(WRAP_KEY_INFO, &mut wrap[..])
            .and_then(|()| hkdf.expand(REGISTRY_KEY_INFO, &mut registry[..]))
            .map_err(|_| CryptoError::KdfParams("HKDF output length".into()))?;
        Ok(Self(SivKey::from_bytes(wrap), registry))
    }

    /// The key of the MACs on rows that shape access.
    pub(crate) fn registry_key(&self) -> &[u8; 32] {
        &self.1
    }

    /// The value stored in `meta` that proves a later derivation right, and
    /// says which protection the vault's rows carry.
    pub(crate) fn check_value(
        &self,
        record: &KdfRecord,
        protection: Protection,
    ) -> Result<Vec<u8>, CryptoError> {
        let encoded = record.encode();
        let mut ad: Vec<&[u8]> = vec![KEK_CHECK_LABEL, &encoded];
        ad.extend_from_slice(protection.labels());
        self.0.seal(&ad, KEK_CHECK_PLAINTEXT)
    }

    /// Succeeds only if this KEK made `check` for exactly this `record`, and
    /// says at which level of protection.
    pub(crate) fn verify(
        &self,
        record: &KdfRecord,
        check: &[u8],
    ) -> Result<Protection, CryptoError> {
        let encoded = record.encode();
        for protection in Protection::NEWEST_FIRST {
            let mut ad: Vec<&[u8]> = vec![KEK_CHECK_LABEL, &encoded];
            ad.extend_from_slice(protection.labels());
            if let Ok(opened) = self.0.open(&ad, check) {
                return if opened.as_slice() == KEK_CHECK_PLAINTEXT {
                    Ok(protection)
                } else {
                    Err(CryptoError::DecryptionFailed)
                };
            }
        }
        Err(CryptoError::DecryptionFailed)
    }

    pub(crate) fn wrap(&self, ad: &[&[u8]], secret: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.0.seal(ad, secret)
    }

    pub(crate) fn unwrap(
        &self,
        ad: &[&[u8]],
        wrapped: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.0.open(ad, wrapped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passphrase(s: &str) -> MasterKey {
        MasterKey::Passphrase(Zeroizing::new(s.to_owned()))
    }

    #[test]
    fn params_outside_floor_and_ceiling_are_refused_before_hashing() {
        assert!(KdfParams::FLOOR.check().is_ok());
        assert!(KdfParams::CEILING.check().is_ok());
        for bad in [
            KdfParams {
                m_cost_kib: 32 * 1024,
                ..KdfParams::FLOOR
            },
            KdfParams {
                t_cost: 2,
                ..KdfParams::FLOOR
            },
            KdfParams {
                p_cost: 1,
                ..KdfParams::FLOOR
            },
            KdfParams {
                m_cost_kib: u32::MAX,
                ..KdfParams::FLOOR
            },
            KdfParams {
                t_cost: 1000,
                ..KdfParams::FLOOR
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
            let record = KdfRecord {
                kind: KIND_ARGON2ID,
                params: bad,
                salt: [0; 16],
                wrapped: Vec::new(),
            };
            // An absurd memory cost would take seconds or abort; refusing
            // returns at once.
            assert!(matches!(
                Kek::derive(&passphrase("pw"), &record),
                Err(CryptoError::KdfParams(_))
            ));
        }
    }

    #[test]
    fn a_record_with_a_wrapped_secret_round_trips_and_only_for_an_hsm() {
        let record = KdfRecord {
            kind: KIND_PKCS11,
            params: KdfParams {
                m_cost_kib: 0,
                t_cost: 0,
                p_cost: 0,
            },
            salt: [7; SALT_LEN],
            wrapped: vec![9; super::super::hsm::WRAPPED_LEN],
        };
        let encoded = record.encode();
        assert_eq!(encoded[0], RECORD_VERSION_WRAPPED);
        assert_eq!(KdfRecord::decode(&encoded), Some(record));
        let mut other_kind = encoded.clone();
        other_kind[1] = KIND_KEY_FILE;
        assert_eq!(KdfRecord::decode(&other_kind), None);
        assert_eq!(KdfRecord::decode(&encoded[..RECORD_LEN]), None);
    }

    #[test]
    fn record_round_trips_and_binds_the_check() {
        let master = passphrase("correct horse battery staple");
        let record = KdfRecord::generate(&master, KdfParams::FLOOR).expect("rng");
        assert_eq!(KdfRecord::decode(&record.encode()), Some(record.clone()));
        let kek = Kek::derive(&master, &record).expect("derive");
        for protection in Protection::NEWEST_FIRST {
            let check = kek.check_value(&record, protection).expect("seal");
            assert_eq!(kek.verify(&record, &check), Ok(protection));
        }
        let check = kek.check_value(&record, Protection::CURRENT).expect("seal");
        let mut edited = record.clone();
        edited.params.t_cost += 1;
        assert!(
            kek.verify(&edited, &check).is_err(),
            "edited parameters must not verify"
        );
        let wrong =
            Kek::derive(&passphrase("Correct horse battery staple"), &record).expect("derive");
        assert!(wrong.verify(&record, &check).is_err());
    }

    #[test]
    fn key_files_accept_raw_and_hex_and_refuse_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let raw = dir.path().join("raw");
        let MasterKey::KeyFile(created) = MasterKey::create_key_file(&raw).expect("create") else {
            panic!("a key file makes a key-file master key");
        };
        assert!(
            MasterKey::create_key_file(&raw).is_err(),
            "never overwrites"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&raw).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let hex: String = created.iter().map(|b| format!("{b:02x}")).collect();
        let hex_path = dir.path().join("hex");
        std::fs::write(&hex_path, format!("{hex}\n")).expect("write");
        let MasterKey::KeyFile(read) = MasterKey::read_key_file(&hex_path).expect("hex") else {
            panic!("a key file makes a key-file master key");
        };
        assert_eq!(read[..], created[..]);
        for bad in [&b"short"[..], &[b'z'; 64][..], &[0u8; 33][..]] {
            std::fs::write(&hex_path, bad).expect("write");
            assert!(MasterKey::read_key_file(&hex_path).is_err());
        }
    }
}
