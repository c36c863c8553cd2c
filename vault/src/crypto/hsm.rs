//! A PKCS#11 seal: the secret the KEK is derived from is stored in the
//! vault only wrapped (AES-256-GCM) by a key that never leaves a hardware
//! security module. Unsealing asks the HSM to unwrap it, so the vault
//! starts without a person, and a copy of the database (or of the host's
//! disk) is useless away from the HSM.
//!
//! The HSM is named by a PKCS#11 URI (RFC 7512), the form OpenSSL, GnuTLS
//! and p11-kit take:
//!
//! ```text
//! pkcs11:token=phivault;object=phivault-kek?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/phivault/hsm-pin
//! ```
//!
//! `token` (or `slot-id`) picks the token, `object` is the AES key's label,
//! `module-path` the vendor's library and `pin-source` a file holding the
//! user PIN. A PIN written into the URI (`pin-value`) is refused: the URI
//! is a setting, printed by `--check-config` and seen in process lists.

use std::path::PathBuf;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as Pkcs11Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use super::CryptoError;

const IV_LEN: usize = 12;
const TAG_BITS: u64 = 128;
/// A wrapped secret: IV, 32 bytes of ciphertext, 16 of tag.
pub(crate) const WRAPPED_LEN: usize = IV_LEN + 32 + 16;
/// Bound into the wrapping as associated data, with the vault's salt, so a
/// blob wrapped for another purpose or another vault under the same HSM key
/// does not unwrap here.
const WRAP_CONTEXT: &[u8] = b"phivault hsm seal v1";

/// Which token of the module holds the key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TokenChoice {
    Label(String),
    Slot(u64),
}

/// Where the wrapping key is and how to log in to its token. `Debug`
/// shows where, never the PIN; it cannot be cloned, like the other master
/// keys.
pub struct HsmSeal {
    module: PathBuf,
    token: TokenChoice,
    key_label: String,
    pin_file: PathBuf,
    pin: Zeroizing<String>,
}

impl std::fmt::Debug for HsmSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsmSeal")
            .field("module", &self.module)
            .field("token", &self.token)
            .field("key", &self.key_label)
            .finish_non_exhaustive()
    }
}

/// The modules this process has loaded and initialised, by path. A module
/// is loaded once and kept: PKCS#11 allows one initialisation per process,
/// and unloading a vendor library under its own worker threads can crash
/// the process.
static MODULES: std::sync::Mutex<Vec<(PathBuf, Pkcs11)>> = std::sync::Mutex::new(Vec::new());

fn loaded(path: &std::path::Path) -> Result<Pkcs11, CryptoError> {
    let mut modules = MODULES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, module)) = modules.iter().find(|(p, _)| p == path) {
        return Ok(module.clone());
    }
    let module = Pkcs11::new(path).map_err(|e| {
        hsm_error(format!(
            "cannot load the PKCS#11 module {}: {}",
            path.display(),
            said(&e)
        ))
    })?;
    match module.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        // Another library of this process initialised it already.
        Ok(()) | Err(Pkcs11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            return Err(hsm_error(format!(
                "the PKCS#11 module would not initialise: {}",
                said(&e)
            )));
        }
    }
    modules.push((path.to_path_buf(), module.clone()));
    Ok(module)
}

fn hsm_error(what: impl Into<String>) -> CryptoError {
    CryptoError::Hsm(what.into())
}

/// A PKCS#11 failure in a few words: the return value's name and the
/// function (the crate's own text is a paragraph of the specification).
fn said(e: &Pkcs11Error) -> String {
    match e {
        Pkcs11Error::Pkcs11(rv, function) => format!("{rv:?} from {function:?}"),
        other => other.to_string(),
    }
}

/// Decodes RFC 3986 percent-escapes of a URI component.
fn percent_decoded(text: &str, what: &str) -> Result<String, CryptoError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let byte = text
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| hsm_error(format!("the PKCS#11 URI's {what} has a bad %-escape")))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| {
        hsm_error(format!(
            "the PKCS#11 URI's {what} is not UTF-8 once decoded"
        ))
    })
}

impl HsmSeal {
    /// Parses a PKCS#11 URI and reads the PIN from its `pin-source` file.
    pub fn from_uri(uri: &str) -> Result<Self, CryptoError> {
        let mut seal = Self::parse(uri)?;
        let text = Zeroizing::new(std::fs::read_to_string(&seal.pin_file).map_err(|e| {
            hsm_error(format!(
                "cannot read the PIN file {}: {}",
                seal.pin_file.display(),
                e.kind()
            ))
        })?);
        let pin = text.strip_suffix('\n').unwrap_or(&text);
        let pin = pin.strip_suffix('\r').unwrap_or(pin);
        if pin.is_empty() {
            return Err(hsm_error(format!(
                "the PIN file {} is empty",
                seal.pin_file.display()
            )));
        }
        seal.pin = Zeroizing::new(pin.to_owned());
        Ok(seal)
    }

    /// Checks a PKCS#11 URI without reading its PIN file: what a setting
    /// must pass before anything prints it.
    pub fn check_uri(uri: &str) -> Result<(), CryptoError> {
        Self::parse(uri).map(|_| ())
    }

    /// The seal a URI names, its PIN not read yet.
    fn parse(uri: &str) -> Result<Self, CryptoError> {
        let rest = uri
            .strip_prefix("pkcs11:")
            .ok_or_else(|| hsm_error("a PKCS#11 URI starts with \"pkcs11:\""))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (mut token, mut slot, mut object) = (None, None, None);
        for part in path.split(';').filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').ok_or_else(|| {
                hsm_error("each attribute of a PKCS#11 URI is NAME=VALUE, separated by ';'")
            })?;
            let value = percent_decoded(value, name)?;
            match name {
                "token" => token = Some(value),
                "slot-id" => {
                    slot = Some(
                        value
                            .parse::<u64>()
                            .map_err(|_| hsm_error("the PKCS#11 URI's slot-id is not a number"))?,
                    )
                }
                "object" => object = Some(value),
                "pin-value" => {
                    return Err(hsm_error(
                        "the PKCS#11 URI holds the PIN (pin-value): put it in a file and give pin-source=file:PATH",
                    ));
                }
                // The type of object is implied (a secret key); what
                // identifies a token or module more narrowly is not needed
                // to find one, and is accepted as written by other tools.
                "type"
                | "id"
                | "manufacturer"
                | "model"
                | "serial"
                | "library-description"
                | "library-manufacturer"
                | "library-version"
                | "slot-description"
                | "slot-manufacturer" => {}
                other => {
                    return Err(hsm_error(format!(
                        "the PKCS#11 URI has an attribute this vault does not know: {other}"
                    )));
                }
            }
        }
        let (mut module, mut pin_source) = (None, None);
        for part in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').ok_or_else(|| {
                hsm_error("each query attribute of a PKCS#11 URI is NAME=VALUE, separated by '&'")
            })?;
            let value = percent_decoded(value, name)?;
            match name {
                "module-path" => module = Some(PathBuf::from(value)),
                "pin-source" => pin_source = Some(value),
                "pin-value" => {
                    return Err(hsm_error(
                        "the PKCS#11 URI holds the PIN (pin-value): put it in a file and give pin-source=file:PATH",
                    ));
                }
                "module-name" => {
                    return Err(hsm_error(
                        "give the module's full path (module-path=…), not its name",
                    ));
                }
                other => {
                    return Err(hsm_error(format!(
                        "the PKCS#11 URI has a query attribute this vault does not know: {other}"
                    )));
                }
            }
        }
        let token = match (token, slot) {
            (Some(_), Some(_)) => {
                return Err(hsm_error(
                    "the PKCS#11 URI names both a token and a slot-id: give one",
                ));
            }
            (Some(label), None) => TokenChoice::Label(label),
            (None, Some(slot)) => TokenChoice::Slot(slot),
            (None, None) => {
                return Err(hsm_error(
                    "the PKCS#11 URI names no token (token=LABEL or slot-id=N)",
                ));
            }
        };
        let key_label =
            object.ok_or_else(|| hsm_error("the PKCS#11 URI names no key (object=LABEL)"))?;
        let module = module.ok_or_else(|| {
            hsm_error("the PKCS#11 URI names no module (module-path=/path/to/library.so)")
        })?;
        let pin_source = pin_source
            .ok_or_else(|| hsm_error("the PKCS#11 URI names no PIN file (pin-source=file:PATH)"))?;
        // Anything but a file: URI may be the PIN itself, typed in the wrong
        // place: refused without repeating it.
        let pin_file = pin_source
            .strip_prefix("file:")
            .map(|rest| rest.strip_prefix("//").unwrap_or(rest))
            .filter(|path| path.starts_with('/'))
            .ok_or_else(|| {
                hsm_error("the PKCS#11 URI's pin-source must be file:/absolute/path of a file holding the PIN")
            })?;
        Ok(Self {
            module,
            token,
            key_label,
            pin_file: PathBuf::from(pin_file),
            pin: Zeroizing::new(String::new()),
        })
    }

    /// The file the PIN was read from (for a check of its permissions).
    pub fn pin_file(&self) -> &std::path::Path {
        &self.pin_file
    }

    /// Where the key is, for messages: the token and the key's label.
    fn place(&self) -> String {
        match &self.token {
            TokenChoice::Label(label) => format!("key {:?} on token {label:?}", self.key_label),
            TokenChoice::Slot(slot) => format!("key {:?} in slot {slot}", self.key_label),
        }
    }

    /// A logged-in session on the chosen token (read-write only to make a
    /// key: a write-protected token still unseals).
    fn session(&self, write: bool) -> Result<Session, CryptoError> {
        let module = loaded(&self.module)?;
        let slot = self.slot(&module)?;
        // Every failed login spends one of the token's tries, and a service
        // manager restarting a vault with a wrong PIN file would lock the
        // token for good: on the last try, stop before spending it.
        if let Ok(info) = module.get_token_info(slot) {
            if info.user_pin_locked() {
                return Err(hsm_error(
                    "the token's user PIN is locked after too many wrong tries; its security officer must unlock it",
                ));
            }
            if info.user_pin_final_try() {
                return Err(hsm_error(
                    "the token allows one more PIN try before it locks: not spending it unattended; check the PIN file, then log in once by hand (or have the security officer reset the count)",
                ));
            }
            if info.user_pin_count_low() {
                tracing::warn!(
                    "the token reports wrong PIN tries since the last good one; it locks after a few more"
                );
            }
        }
        let opened = if write {
            module.open_rw_session(slot)
        } else {
            module.open_ro_session(slot)
        };
        let session = opened.map_err(|e| {
            hsm_error(format!(
                "cannot open a session with the token: {}",
                said(&e)
            ))
        })?;
        let pin = AuthPin::new(self.pin.as_str().into());
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) => {}
            Err(Pkcs11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(Pkcs11Error::Pkcs11(RvError::PinIncorrect, _)) => {
                return Err(hsm_error("the token refused the PIN (wrong PIN)"));
            }
            Err(Pkcs11Error::Pkcs11(RvError::PinLocked, _)) => {
                return Err(hsm_error(
                    "the token's user PIN is locked after too many wrong tries; its security officer must unlock it",
                ));
            }
            Err(e) => {
                return Err(hsm_error(format!(
                    "cannot log in to the token: {}",
                    said(&e)
                )));
            }
        }
        Ok(session)
    }

    fn slot(&self, module: &Pkcs11) -> Result<Slot, CryptoError> {
        let slots = module
            .get_slots_with_token()
            .map_err(|e| hsm_error(format!("cannot list the module's tokens: {}", said(&e))))?;
        let found = match &self.token {
            TokenChoice::Slot(id) => slots.into_iter().find(|s| s.id() == *id),
            TokenChoice::Label(label) => {
                let mut labelled = slots.into_iter().filter(|s| {
                    module
                        .get_token_info(*s)
                        .is_ok_and(|info| info.label().trim_end() == label.as_str())
                });
                let first = labelled.next();
                if first.is_some() && labelled.next().is_some() {
                    return Err(hsm_error(format!(
                        "the module has more than one token labelled {label:?}: name the slot (slot-id=N) instead"
                    )));
                }
                first
            }
        };
        found.ok_or_else(|| match &self.token {
            TokenChoice::Label(label) => {
                hsm_error(format!("the module has no token labelled {label:?}"))
            }
            TokenChoice::Slot(slot) => hsm_error(format!("the module has no token in slot {slot}")),
        })
    }

    fn key(&self, session: &Session) -> Result<Option<ObjectHandle>, CryptoError> {
        let found = session
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Label(self.key_label.as_bytes().to_vec()),
            ])
            .map_err(|e| hsm_error(format!("cannot search the token for the key: {}", said(&e))))?;
        match found.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(*one)),
            _ => Err(hsm_error(format!(
                "the token holds more than one AES key labelled {:?}: the seal must name exactly one",
                self.key_label
            ))),
        }
    }

    fn existing_key(&self, session: &Session) -> Result<ObjectHandle, CryptoError> {
        self.key(session)?.ok_or_else(|| {
            hsm_error(format!(
                "no AES key found: {} (create it with your HSM's tools, or `phivault init --create-hsm-key`)",
                self.place()
            ))
        })
    }

    /// Makes the wrapping key on the token unless one with its label is
    /// there: AES-256, kept on the token, sensitive and never extractable,
    /// usable only to encrypt and decrypt. Whether it made one.
    pub fn create_key(&self) -> Result<bool, CryptoError> {
        let session = self.session(true)?;
        if self.key(&session)?.is_some() {
            return Ok(false);
        }
        session
            .generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(true),
                    Attribute::Wrap(false),
                    Attribute::Unwrap(false),
                    Attribute::Sign(false),
                    Attribute::Verify(false),
                    Attribute::Derive(false),
                    Attribute::ValueLen(32.into()),
                    Attribute::Label(self.key_label.as_bytes().to_vec()),
                ],
            )
            .map_err(|e| hsm_error(format!("the token would not make the key: {}", said(&e))))?;
        Ok(true)
    }

    /// Wraps `secret` under the HSM's key, bound to `salt`: a random IV
    /// followed by the ciphertext and tag. Refuses a key that could leave
    /// the token.
    pub(crate) fn wrap(&self, secret: &[u8; 32], salt: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let session = self.session(false)?;
        let key = self.existing_key(&session)?;
        self.check_kept_inside(&session, key)?;
        let mut iv = [0u8; IV_LEN];
        super::fill_random(&mut iv)?;
        let aad = [WRAP_CONTEXT, salt].concat();
        let params = GcmParams::new(&mut iv, &aad, TAG_BITS.into())
            .map_err(|e| hsm_error(format!("AES-GCM parameters: {e}")))?;
        let sealed = session
            .encrypt(&Mechanism::AesGcm(params), key, secret)
            .map_err(|e| {
                hsm_error(format!(
                    "the token would not encrypt with the key: {}",
                    said(&e)
                ))
            })?;
        // Some HSMs choose the IV themselves and write it back into the
        // parameters (CloudHSM, FIPS modes): keep the one actually used.
        Ok([iv.as_slice(), &sealed].concat())
    }

    /// Unwraps what [`Self::wrap`] made. A blob the key does not open
    /// means another key (or token) than the one this vault was sealed
    /// with.
    pub(crate) fn unwrap(
        &self,
        wrapped: &[u8],
        salt: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        // Tokens do not say why a GCM tag failed: the key is another than
        // the vault was sealed with, or the stored secret was altered.
        let not_this_vault = |e: &Pkcs11Error| {
            hsm_error(format!(
                "the {} does not open this vault's sealed secret: it is not the key the vault was sealed with, or the sealed secret was altered (the token said {})",
                self.place(),
                said(e)
            ))
        };
        if wrapped.len() != WRAPPED_LEN {
            return Err(CryptoError::Corrupt);
        }
        let session = self.session(false)?;
        let key = self.existing_key(&session)?;
        self.check_kept_inside(&session, key)?;
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(&wrapped[..IV_LEN]);
        let aad = [WRAP_CONTEXT, salt].concat();
        let params = GcmParams::new(&mut iv, &aad, TAG_BITS.into())
            .map_err(|e| hsm_error(format!("AES-GCM parameters: {e}")))?;
        let opened = Zeroizing::new(
            session
                .decrypt(&Mechanism::AesGcm(params), key, &wrapped[IV_LEN..])
                // A GCM tag that does not verify is reported as invalid
                // data by some tokens and as a general failure by others
                // (SoftHSM2).
                .map_err(|e| match e {
                    Pkcs11Error::Pkcs11(
                        RvError::EncryptedDataInvalid
                        | RvError::EncryptedDataLenRange
                        | RvError::GeneralError
                        | RvError::FunctionFailed,
                        _,
                    ) => not_this_vault(&e),
                    other => hsm_error(format!(
                        "the token would not decrypt with the key: {}",
                        said(&other)
                    )),
                })?,
        );
        let mut secret = Zeroizing::new([0u8; 32]);
        if opened.len() != secret.len() {
            return Err(CryptoError::Corrupt);
        }
        secret.copy_from_slice(&opened);
        Ok(secret)
    }

    /// Refuses a key whose value exists, or has existed, outside the token
    /// (not sensitive, extractable, once either: an imported key), or that
    /// is not AES-256; an attribute the token will not report counts as a
    /// refusal, not a pass.
    fn check_kept_inside(&self, session: &Session, key: ObjectHandle) -> Result<(), CryptoError> {
        let wanted = [
            AttributeType::Sensitive,
            AttributeType::Extractable,
            AttributeType::AlwaysSensitive,
            AttributeType::NeverExtractable,
            AttributeType::ValueLen,
        ];
        let attributes = session
            .get_attributes(key, &wanted)
            .map_err(|e| hsm_error(format!("cannot read the key's attributes: {}", said(&e))))?;
        let refuse = |why: &str| Err(hsm_error(format!("the {} {why}", self.place())));
        let mut seen = 0;
        for attribute in attributes {
            seen += 1;
            match attribute {
                Attribute::Sensitive(false) | Attribute::AlwaysSensitive(false) => {
                    return refuse(
                        "is, or once was, not sensitive (CKA_SENSITIVE / CKA_ALWAYS_SENSITIVE false): its value has been readable off the token",
                    );
                }
                Attribute::Extractable(true) | Attribute::NeverExtractable(false) => {
                    return refuse(
                        "is, or once was, extractable (CKA_EXTRACTABLE true / CKA_NEVER_EXTRACTABLE false): it can have left the token",
                    );
                }
                Attribute::ValueLen(len) if u64::from(len) != 32 => {
                    return refuse("is not a 256-bit AES key");
                }
                _ => {}
            }
        }
        if seen < wanted.len() {
            return refuse(
                "does not report whether it is sensitive and never extractable, or its length: it cannot be trusted to stay inside",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin_file() -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().expect("temp");
        std::fs::write(file.path(), "1234\n").expect("write");
        file
    }

    #[test]
    fn a_uri_names_module_token_key_and_pin_file() {
        let pin = pin_file();
        let uri = format!(
            "pkcs11:token=My%20Token;object=phivault-kek;type=secret-key?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:{}",
            pin.path().display()
        );
        let seal = HsmSeal::from_uri(&uri).expect("parses");
        assert_eq!(seal.token, TokenChoice::Label("My Token".into()));
        assert_eq!(seal.key_label, "phivault-kek");
        assert_eq!(
            seal.module,
            PathBuf::from("/usr/lib/softhsm/libsofthsm2.so")
        );
        assert_eq!(seal.pin.as_str(), "1234");
        assert!(!format!("{seal:?}").contains("1234"));
    }

    #[test]
    fn a_uri_without_its_parts_or_with_a_pin_is_refused_without_echoing_it() {
        let pin = pin_file();
        let file = pin.path().display().to_string();
        for (uri, expected) in [
            ("token=a;object=b".to_owned(), "starts with"),
            (
                format!("pkcs11:object=b?module-path=/m.so&pin-source=file:{file}"),
                "no token",
            ),
            (
                format!("pkcs11:token=a?module-path=/m.so&pin-source=file:{file}"),
                "no key",
            ),
            (
                format!("pkcs11:token=a;object=b?pin-source=file:{file}"),
                "no module",
            ),
            (
                "pkcs11:token=a;object=b?module-path=/m.so".to_owned(),
                "no PIN file",
            ),
            (
                "pkcs11:token=a;object=b;pin-value=s3cret?module-path=/m.so".to_owned(),
                "pin-source",
            ),
            (
                "pkcs11:token=a;object=b?module-path=/m.so&pin-value=s3cret".to_owned(),
                "pin-source",
            ),
            // The PIN typed where its file goes.
            (
                "pkcs11:token=a;object=b?module-path=/m.so&pin-source=s3cret".to_owned(),
                "file:/absolute/path",
            ),
            (
                format!(
                    "pkcs11:token=a;slot-id=1;object=b?module-path=/m.so&pin-source=file:{file}"
                ),
                "both",
            ),
            (
                format!("pkcs11:token=%zz;object=b?module-path=/m.so&pin-source=file:{file}"),
                "%-escape",
            ),
        ] {
            let refused = HsmSeal::from_uri(&uri).expect_err(&uri).to_string();
            assert!(refused.contains(expected), "{uri}: {refused}");
            assert!(!refused.contains("s3cret"), "{refused}");
        }
    }
}
