//! AES-256-SIV (RFC 5297) sealing of values and keysets.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use aes_siv::KeyInit;
use aes_siv::siv::Aes256Siv;
use zeroize::Zeroizing;

use super::CryptoError;

/// A 64-byte AES-256-SIV key (32 bytes CMAC, 32 bytes CTR).
///
/// SIV is deterministic and misuse-resistant: it needs no nonce, so a reverse
/// row's ciphertext is fully determined by key, associated data and value, and
/// the associated data (namespace, token, key version) binds it to its row.
///
/// The key is expanded into its ciphers once, when it is loaded, and those
/// ciphers live as long as the key: building one per call would copy the key
/// and its CMAC subkeys into a fresh stack frame on every seal and open, and a
/// move can leave a copy behind that no `Drop` wipes. The crate's ciphers
/// need `&mut self` (the CMAC state is reset between messages), so there is
/// one per core, each behind its own lock: concurrent reveals on different
/// threads take different ciphers instead of queueing on one.
pub struct SivKey {
    raw: Zeroizing<[u8; 64]>,
    ciphers: Box<[Mutex<Aes256Siv>]>,
}

/// How many ciphers a key keeps: one per core the process may run on, so a
/// request thread nearly always finds one free, bounded so a large machine
/// does not hold hundreds of copies of every key.
fn cipher_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .clamp(1, 16)
    })
}

impl SivKey {
    /// Length of the key in bytes.
    pub const LEN: usize = 64;
    /// Bytes a ciphertext adds to its plaintext (the synthetic IV).
    pub const OVERHEAD: usize = 16;

    /// Wraps raw key bytes.
    pub fn from_bytes(raw: Zeroizing<[u8; 64]>) -> Self {
        let ciphers = (0..cipher_count())
            .map(|_| Mutex::new(Aes256Siv::new((&*raw).into())))
            .collect();
        Self { raw, ciphers }
    }

    /// A fresh key from the operating system's RNG.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut bytes = Zeroizing::new([0u8; 64]);
        super::fill_random(&mut bytes[..])?;
        Ok(Self::from_bytes(bytes))
    }

    /// The raw key, for wrapping it under another key.
    pub(crate) fn expose(&self) -> &[u8; 64] {
        &self.raw
    }

    /// Encrypts `plaintext`, authenticating each element of `ad` as a separate
    /// S2V header so that no two different AD vectors can collide.
    pub fn seal(&self, ad: &[&[u8]], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.cipher()
            .encrypt(ad, plaintext)
            .map_err(|_| CryptoError::DecryptionFailed)
    }

    /// Decrypts and authenticates `ciphertext` against `ad`.
    pub fn open(&self, ad: &[&[u8]], ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.cipher()
            .decrypt(ad, ciphertext)
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::DecryptionFailed)
    }

    /// A cipher no other thread is using, or, when every one is busy, the
    /// next in turn (held for one message, a microsecond or so).
    fn cipher(&self) -> MutexGuard<'_, Aes256Siv> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let start = NEXT.fetch_add(1, Ordering::Relaxed) % self.ciphers.len();
        let ring = self.ciphers[start..].iter().chain(&self.ciphers[..start]);
        for slot in ring {
            match slot.try_lock() {
                Ok(cipher) => return cipher,
                Err(std::sync::TryLockError::Poisoned(poisoned)) => {
                    return self.rebuilt(slot, poisoned.into_inner());
                }
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
        }
        let slot = &self.ciphers[start];
        match slot.lock() {
            Ok(cipher) => cipher,
            Err(poisoned) => self.rebuilt(slot, PoisonError::into_inner(poisoned)),
        }
    }

    /// A cipher whose last user panicked may hold a half-fed CMAC state, which
    /// would seal values under a wrong synthetic IV: it is built afresh, once
    /// (the slot is no longer poisoned after).
    fn rebuilt<'a>(
        &self,
        slot: &Mutex<Aes256Siv>,
        mut cipher: MutexGuard<'a, Aes256Siv>,
    ) -> MutexGuard<'a, Aes256Siv> {
        *cipher = Aes256Siv::new((&*self.raw).into());
        slot.clear_poison();
        cipher
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_siv::siv::Aes128Siv;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("test vector is hex"))
            .collect()
    }

    /// The state an AES-SIV cipher holds (expanded AES round keys, CMAC
    /// state) and the hash state behind HMAC are wiped when they drop, with
    /// the `zeroize` features the workspace turns on; this stops compiling
    /// if one of them is lost.
    #[test]
    fn cipher_and_hash_state_are_wiped_on_drop() {
        fn wiped<T: zeroize::ZeroizeOnDrop>() {}
        wiped::<aes::Aes256>();
        wiped::<sha2::Sha256>();
    }

    /// RFC 5297, Appendix A.1 (deterministic authenticated encryption).
    #[test]
    fn rfc5297_a1_known_answer() {
        let key = hex("fffefdfc fbfaf9f8 f7f6f5f4 f3f2f1f0 f0f1f2f3 f4f5f6f7 f8f9fafb fcfdfeff");
        let ad = hex("10111213 14151617 18191a1b 1c1d1e1f 20212223 24252627");
        let plaintext = hex("11223344 55667788 99aabbcc ddee");
        let expected = hex("85632d07 c6e8f37f 950acd32 0a2ecc93 40c02b96 90c4dc04 daef7f6a fe5c");
        let mut cipher = Aes128Siv::new(key.as_slice().try_into().expect("32-byte key"));
        let ciphertext = cipher.encrypt([&ad], &plaintext).expect("encrypts");
        assert_eq!(ciphertext, expected);
        let mut cipher = Aes128Siv::new(key.as_slice().try_into().expect("32-byte key"));
        assert_eq!(
            cipher.decrypt([&ad], &ciphertext).expect("decrypts"),
            plaintext
        );
    }

    #[test]
    fn round_trip_and_every_single_byte_tamper_fails() {
        let key = SivKey::generate().expect("rng");
        let ad: [&[u8]; 2] = [b"ns", b"token"];
        let sealed = key.seal(&ad, b"123456789").expect("seal");
        assert_eq!(sealed.len(), 9 + SivKey::OVERHEAD);
        assert_eq!(
            key.open(&ad, &sealed).expect("open").as_slice(),
            b"123456789"
        );
        for i in 0..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[i] ^= 0x01;
            assert_eq!(
                key.open(&ad, &tampered),
                Err(CryptoError::DecryptionFailed),
                "byte {i}"
            );
        }
    }

    #[test]
    fn associated_data_binds_the_ciphertext() {
        let key = SivKey::generate().expect("rng");
        let sealed = key.seal(&[b"ns", b"token-a"], b"value").expect("seal");
        assert!(key.open(&[b"ns", b"token-b"], &sealed).is_err());
        // Moving bytes between AD elements changes the S2V input too.
        assert!(key.open(&[b"nst", b"oken-a"], &sealed).is_err());
        let other = SivKey::generate().expect("rng");
        assert!(other.open(&[b"ns", b"token-a"], &sealed).is_err());
    }

    /// The kept ciphers give the bytes a freshly built one gives, on every
    /// call, from many threads at once: their CMAC state is reset between
    /// messages, and no two threads share one mid-message.
    #[test]
    fn long_lived_ciphers_match_a_fresh_cipher_under_concurrency() {
        let key = SivKey::generate().expect("rng");
        let fresh = |i: u32| {
            let mut cipher = Aes256Siv::new((&*key.raw).into());
            cipher
                .encrypt(
                    [b"ns".as_slice(), &i.to_be_bytes()],
                    format!("value {i}").as_bytes(),
                )
                .expect("encrypts")
        };
        let expected: Vec<Vec<u8>> = (0..200).map(fresh).collect();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for (i, want) in (0u32..).zip(&expected) {
                        let ad: [&[u8]; 2] = [b"ns", &i.to_be_bytes()];
                        let sealed = key
                            .seal(&ad, format!("value {i}").as_bytes())
                            .expect("seal");
                        assert_eq!(&sealed, want, "message {i}");
                        let opened = key.open(&ad, &sealed).expect("open");
                        assert_eq!(opened.as_slice(), format!("value {i}").as_bytes());
                    }
                });
            }
        });
    }

    #[test]
    fn a_cipher_poisoned_by_a_panic_is_rebuilt() {
        let key = SivKey::generate().expect("rng");
        let sealed = key.seal(&[b"ad"], b"value").expect("seal");
        for slot in key.ciphers.iter() {
            let poisoned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut held = slot.lock().expect("not poisoned yet");
                // Left in a state that would seal wrongly, as a cipher
                // abandoned mid-message might be.
                *held = Aes256Siv::new((&[9u8; 64]).into());
                panic!("a job panicked holding the cipher");
            }));
            assert!(poisoned.is_err());
            assert!(slot.is_poisoned());
        }
        assert_eq!(
            key.open(&[b"ad"], &sealed).expect("open").as_slice(),
            b"value"
        );
        for _ in 0..2 * key.ciphers.len() {
            assert_eq!(key.seal(&[b"ad"], b"value").expect("seal"), sealed);
        }
        assert!(key.ciphers.iter().all(|slot| !slot.is_poisoned()));
    }
}
