//! HMAC-SHA256 as the PRF behind blind indexes and token streams.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::CryptoError;

/// Domain-separation labels: the same key feeds the index and the token
/// stream, and neither output may ever be mistaken for the other.
const INDEX_LABEL: &[u8] = b"idx";
const TOKEN_LABEL: &[u8] = b"tok";
const BINDING_LABEL: &[u8] = b"fwd";

/// Bytes of a forward entry's binding: HMAC-SHA256 truncated to 128 bits, as
/// strong against forgery as the SIV tag on the value it points to, at half
/// the size on a table with a row per distinct value.
pub const BINDING_LEN: usize = 16;

/// A keyed hash of a (namespace, value) pair: the forward index key.
///
/// Without the PRF key it reveals nothing about the value, which is why it may
/// sit on disk and in the token cache.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlindIndex(pub [u8; 32]);

/// A 32-byte HMAC-SHA256 key.
pub struct PrfKey {
    raw: Zeroizing<[u8; 32]>,
    // The keyed state (key XOR ipad/opad already absorbed) saves two SHA-256
    // compressions per call on the hot path. The hmac crate cannot wipe it;
    // it lives exactly as long as `raw`, which is wiped.
    keyed: Hmac<Sha256>,
}

impl PrfKey {
    /// Length of the key in bytes.
    pub const LEN: usize = 32;

    /// Wraps raw key bytes.
    pub fn from_bytes(raw: Zeroizing<[u8; 32]>) -> Self {
        // HMAC takes keys of any length, so this cannot fail.
        #[allow(clippy::expect_used)]
        let keyed = <Hmac<Sha256> as KeyInit>::new_from_slice(&raw[..])
            .expect("HMAC accepts any key length");
        Self { raw, keyed }
    }

    /// A fresh key from the operating system's RNG.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut raw = Zeroizing::new([0u8; 32]);
        super::fill_random(&mut raw[..])?;
        Ok(Self::from_bytes(raw))
    }

    /// The raw key, for wrapping it under another key.
    pub(crate) fn expose(&self) -> &[u8; 32] {
        &self.raw
    }

    /// HMAC of the concatenation of `parts`; callers put a domain label first.
    pub(crate) fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = self.keyed.clone();
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// `HMAC(k, "idx" ‖ ns_id ‖ value)`: the forward index entry of a value.
    pub fn blind_index(&self, namespace_id: u32, value: &[u8]) -> BlindIndex {
        let mut mac = self.keyed.clone();
        mac.update(INDEX_LABEL);
        mac.update(&namespace_id.to_be_bytes());
        mac.update(value);
        BlindIndex(mac.finalize().into_bytes().into())
    }

    /// `HMAC(k, "fwd" ‖ forward key ‖ token)`, truncated: binds a forward
    /// entry's token to the entry's key (namespace, version, blind index), so
    /// that a token written over another entry's, or an entry copied to
    /// another key, no longer verifies.
    pub fn forward_binding(&self, forward_key: &[u8; 40], token: &[u8]) -> [u8; BINDING_LEN] {
        let full = self.binding_mac(forward_key, token).finalize().into_bytes();
        let mut binding = [0u8; BINDING_LEN];
        binding.copy_from_slice(&full[..BINDING_LEN]);
        binding
    }

    /// Whether `binding` is the binding of `token` under `forward_key`
    /// (compared in constant time).
    pub fn verify_forward_binding(
        &self,
        forward_key: &[u8; 40],
        token: &[u8],
        binding: &[u8],
    ) -> bool {
        binding.len() == BINDING_LEN
            && self
                .binding_mac(forward_key, token)
                .verify_truncated_left(binding)
                .is_ok()
    }

    fn binding_mac(&self, forward_key: &[u8; 40], token: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.keyed.clone();
        mac.update(BINDING_LABEL);
        mac.update(forward_key);
        mac.update(token);
        mac
    }

    /// The deterministic byte stream a token is drawn from for a value's
    /// `attempt`-th candidate.
    pub fn token_stream<'a>(
        &'a self,
        namespace_id: u32,
        value: &'a [u8],
        attempt: u32,
    ) -> TokenRng<PrfStream<'a>> {
        TokenRng::new(PrfStream {
            key: self,
            namespace_id,
            value,
            attempt,
            counter: 0,
        })
    }
}

/// Counter-mode HMAC: block i = `HMAC(k, "tok" ‖ ns_id ‖ attempt ‖ i ‖ value)`.
/// Every field before the value has a fixed width, so the encoding is
/// unambiguous.
pub struct PrfStream<'a> {
    key: &'a PrfKey,
    namespace_id: u32,
    value: &'a [u8],
    attempt: u32,
    counter: u32,
}

impl ByteSource for PrfStream<'_> {
    fn next_block(&mut self, out: &mut [u8; 32]) {
        let mut mac = self.key.keyed.clone();
        mac.update(TOKEN_LABEL);
        mac.update(&self.namespace_id.to_be_bytes());
        mac.update(&self.attempt.to_be_bytes());
        mac.update(&self.counter.to_be_bytes());
        mac.update(self.value);
        out.copy_from_slice(&mac.finalize().into_bytes());
        self.counter = self.counter.wrapping_add(1);
    }
}

/// Random bytes for the tokens of non-deterministic namespaces.
pub struct OsStream;

impl ByteSource for OsStream {
    fn next_block(&mut self, out: &mut [u8; 32]) {
        // A failing OS RNG is unrecoverable and must never silently yield
        // predictable tokens.
        #[allow(clippy::expect_used)]
        getrandom::fill(out).expect("the operating system's random number generator failed");
    }
}

/// A source of uniformly random 32-byte blocks.
pub trait ByteSource {
    /// Writes the next block.
    fn next_block(&mut self, out: &mut [u8; 32]);
}

/// Uniform choices for the positions of a token.
pub trait SlotRng {
    /// A uniformly distributed integer in `0..n`; `n` must be at least 1.
    fn below(&mut self, n: u32) -> u32;
}

/// Turns a [`ByteSource`] into unbiased choices by rejection sampling: a draw
/// that falls in the incomplete last copy of `0..n` is discarded, so `x % n` is
/// exactly uniform (no modulo bias).
pub struct TokenRng<S> {
    source: S,
    block: [u8; 32],
    used: usize,
}

impl<S: ByteSource> TokenRng<S> {
    /// A stream over `source`.
    pub fn new(source: S) -> Self {
        Self {
            source,
            block: [0; 32],
            used: 32,
        }
    }

    fn byte(&mut self) -> u8 {
        if self.used == self.block.len() {
            self.source.next_block(&mut self.block);
            self.used = 0;
        }
        let b = self.block[self.used];
        self.used += 1;
        b
    }
}

impl TokenRng<OsStream> {
    /// Random choices from the operating system's RNG.
    pub fn os() -> Self {
        Self::new(OsStream)
    }
}

impl<S: ByteSource> SlotRng for TokenRng<S> {
    fn below(&mut self, n: u32) -> u32 {
        debug_assert!(n >= 1);
        if n <= 256 {
            let zone = 256 - 256 % n;
            loop {
                let x = u32::from(self.byte());
                if x < zone {
                    return x % n;
                }
            }
        }
        let zone = u64::from(u32::MAX) + 1;
        let zone = zone - zone % u64::from(n);
        loop {
            let x = u32::from_be_bytes([self.byte(), self.byte(), self.byte(), self.byte()]);
            if u64::from(x) < zone {
                return x % n;
            }
        }
    }
}

impl<S> Drop for TokenRng<S> {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.block);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> PrfKey {
        PrfKey::from_bytes(Zeroizing::new([byte; 32]))
    }

    #[test]
    fn blind_index_is_keyed_and_namespaced() {
        let a = key(1).blind_index(1, b"123456789");
        assert!(a == key(1).blind_index(1, b"123456789"));
        assert!(a != key(2).blind_index(1, b"123456789"));
        assert!(a != key(1).blind_index(2, b"123456789"));
        assert!(a != key(1).blind_index(1, b"123456780"));
    }

    #[test]
    fn blind_index_matches_plain_hmac() {
        let k = key(7);
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&[7; 32]).expect("any key length");
        mac.update(b"idx\0\0\0\x05value");
        let expected: [u8; 32] = mac.finalize().into_bytes().into();
        assert!(k.blind_index(5, b"value").0 == expected);
    }

    #[test]
    fn token_streams_are_deterministic_per_attempt() {
        let k = key(3);
        let draw = |attempt| {
            let mut s = k.token_stream(1, b"v", attempt);
            (0..64).map(|_| s.below(10)).collect::<Vec<_>>()
        };
        assert_eq!(draw(0), draw(0));
        assert_ne!(draw(0), draw(1));
    }

    #[test]
    fn below_is_roughly_uniform_for_awkward_bounds() {
        let k = key(9);
        let mut s = k.token_stream(1, b"uniform", 0);
        for n in [3u32, 10, 26, 62, 255, 1000, 292_194] {
            let mut hits = vec![0u32; n.min(1000) as usize];
            let draws = 200 * hits.len() as u32;
            for _ in 0..draws {
                let x = s.below(n);
                assert!(x < n);
                if (x as usize) < hits.len() {
                    hits[x as usize] += 1;
                }
            }
            if n <= 1000 {
                // Every bucket expects 200; 5 sigma is about 70.
                assert!(
                    hits.iter().all(|&h| (120..=280).contains(&h)),
                    "n={n}: {hits:?}"
                );
            }
        }
    }
}
