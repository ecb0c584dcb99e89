//! Answers stored in Redis are sealed with AES-256-GCM (aws-lc-rs): they can hold buyer data,
//! and whoever reads Redis must learn nothing from them nor be able to forge one.
//!
//! Format: `1` (version), the key id (the first 4 bytes of SHA-256 of the key), a random 96-bit
//! nonce, then the ciphertext with its 16-byte tag. The associated data is the record's Redis
//! key and the request's fingerprint, so a sealed answer cannot be moved to another record.
//! Rotation: the current key seals; the previous one (if configured) still opens.

use aws_lc_rs::{
    aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN},
    rand::{SecureRandom, SystemRandom},
};
use sha2::{Digest, Sha256};

const VERSION: u8 = 1;
const HEADER: usize = 1 + 4 + NONCE_LEN;

/// One AES-256 key and its id.
struct Key {
    id: [u8; 4],
    key: LessSafeKey,
}

impl Key {
    fn new(bytes: &[u8; 32]) -> Option<Key> {
        let digest = Sha256::digest(bytes);
        Some(Key {
            id: [digest[0], digest[1], digest[2], digest[3]],
            key: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).ok()?),
        })
    }
}

/// The keys answers are sealed and opened with.
pub struct Sealer {
    current: Key,
    previous: Option<Key>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer([REDACTED])")
    }
}

/// Why a sealed answer could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsealable {
    /// Sealed with a key this instance does not have (rotated twice, or another fleet).
    UnknownKey,
    /// Damaged, forged, or moved from another record.
    Invalid,
}

impl Sealer {
    /// A sealer with `current` and, during a rotation, `previous`.
    pub fn new(current: &[u8; 32], previous: Option<&[u8; 32]>) -> Option<Sealer> {
        Some(Sealer {
            current: Key::new(current)?,
            previous: match previous {
                Some(p) => Some(Key::new(p)?),
                None => None,
            },
            rng: SystemRandom::new(),
        })
    }

    /// Seals `plain` for the record `aad`.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(HEADER + plain.len() + AES_256_GCM.tag_len());
        out.push(VERSION);
        out.extend_from_slice(&self.current.id);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        self.current
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
            )
            .ok()?;
        out.extend_from_slice(&body);
        Some(out)
    }

    /// Opens what [`Sealer::seal`] sealed for the record `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, Unsealable> {
        if sealed.len() < HEADER + AES_256_GCM.tag_len() || sealed[0] != VERSION {
            return Err(Unsealable::Invalid);
        }
        let id = &sealed[1..5];
        let key = [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|k| k.id == id)
            .ok_or(Unsealable::UnknownKey)?;
        let nonce: [u8; NONCE_LEN] = sealed[5..HEADER]
            .try_into()
            .map_err(|_| Unsealable::Invalid)?;
        let mut body = sealed[HEADER..].to_vec();
        let plain = key
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
            )
            .map_err(|_| Unsealable::Invalid)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_opens_rotates_and_refuses_tampering() {
        let (k1, k2) = ([1u8; 32], [2u8; 32]);
        let old = Sealer::new(&k1, None).unwrap();
        let sealed = old.seal(b"rec-a", b"buyer data").unwrap();
        assert!(!sealed.windows(10).any(|w| w == b"buyer data"));
        assert_eq!(old.open(b"rec-a", &sealed).unwrap(), b"buyer data");
        // Two seals of the same answer differ (random nonce).
        assert_ne!(old.seal(b"rec-a", b"buyer data").unwrap(), sealed);
        // Moved to another record, or one bit flipped: refused.
        assert_eq!(old.open(b"rec-b", &sealed), Err(Unsealable::Invalid));
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(old.open(b"rec-a", &flipped), Err(Unsealable::Invalid));
        assert_eq!(old.open(b"rec-a", &sealed[..10]), Err(Unsealable::Invalid));
        // Rotation: the new key seals, the previous still opens; without it, unknown.
        let rotated = Sealer::new(&k2, Some(&k1)).unwrap();
        assert_eq!(rotated.open(b"rec-a", &sealed).unwrap(), b"buyer data");
        let fresh = rotated.seal(b"rec-a", b"x").unwrap();
        assert_eq!(old.open(b"rec-a", &fresh), Err(Unsealable::UnknownKey));
        let only_new = Sealer::new(&k2, None).unwrap();
        assert_eq!(
            only_new.open(b"rec-a", &sealed),
            Err(Unsealable::UnknownKey)
        );
        assert_eq!(format!("{rotated:?}"), "Sealer([REDACTED])");
    }
}
