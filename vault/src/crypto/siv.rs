//! AES-256-SIV (RFC 5297) sealing of values and keysets.

use aes_siv::KeyInit;
use aes_siv::siv::Aes256Siv;
use zeroize::Zeroizing;

use super::CryptoError;

/// A 64-byte AES-256-SIV key (32 bytes CMAC, 32 bytes CTR).
///
/// SIV is deterministic and misuse-resistant: it needs no nonce, so a reverse
/// row's ciphertext is fully determined by key, associated data and value, and
/// the associated data (namespace, token, key version) binds it to its row.
pub struct SivKey(Zeroizing<[u8; 64]>);

impl SivKey {
    /// Length of the key in bytes.
    pub const LEN: usize = 64;
    /// Bytes a ciphertext adds to its plaintext (the synthetic IV).
    pub const OVERHEAD: usize = 16;

    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: Zeroizing<[u8; 64]>) -> Self {
        Self(bytes)
    }

    /// A fresh key from the operating system's RNG.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut bytes = Zeroizing::new([0u8; 64]);
        super::fill_random(&mut bytes[..])?;
        Ok(Self(bytes))
    }

    /// The raw key, for wrapping it under another key.
    pub(crate) fn expose(&self) -> &[u8; 64] {
        &self.0
    }

    /// Encrypts `plaintext`, authenticating each element of `ad` as a separate
    /// S2V header so that no two different AD vectors can collide.
    pub fn seal(&self, ad: &[&[u8]], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        // The cipher copies the key; it lives only for this call, and the
        // crate's `zeroize` feature wipes its copy when it drops.
        let mut cipher = self.cipher();
        cipher
            .encrypt(ad, plaintext)
            .map_err(|_| CryptoError::DecryptionFailed)
    }

    /// Decrypts and authenticates `ciphertext` against `ad`.
    pub fn open(&self, ad: &[&[u8]], ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let mut cipher = self.cipher();
        cipher
            .decrypt(ad, ciphertext)
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::DecryptionFailed)
    }

    fn cipher(&self) -> Aes256Siv {
        let key: &[u8; 64] = &self.0;
        Aes256Siv::new(key.into())
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
}
