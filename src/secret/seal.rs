//! Sealing at rest with XChaCha20-Poly1305 (RustCrypto's audited AEAD): a
//! random 192-bit nonce per value makes nonce reuse a non-issue without a
//! counter, and the account name as associated data stops a sealed token
//! from being moved to another account's row.
//!
//! Layout: `version (1) | key id (4, big endian) | nonce (24) | ciphertext+tag`.

use super::{MasterKey, Secret};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::Rng;

const FORMAT_VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("a sealed value is damaged or of an unknown format")]
    Malformed,
    #[error(
        "a sealed value was made with master key {found:08x}, but the key in use is {expected:08x}; start with the key that sealed it, or run `oxirelay rotate-key` with both keys"
    )]
    WrongKey { expected: u32, found: u32 },
    #[error(
        "a sealed value failed authentication: it was altered, moved to another account, or sealed with another key"
    )]
    Tampered,
}

/// Bytes as stored: opaque without the master key.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedValue(Vec<u8>);

impl std::fmt::Debug for SealedValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedValue({} bytes)", self.0.len())
    }
}

impl SealedValue {
    pub fn from_stored(bytes: Vec<u8>) -> Self {
        SealedValue(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The id of the key that sealed this value, if the header is intact.
    pub fn key_id(&self) -> Option<u32> {
        let id = self.0.get(1..5)?;
        Some(u32::from_be_bytes([id[0], id[1], id[2], id[3]]))
    }
}

impl MasterKey {
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> SealedValue {
        let cipher = XChaCha20Poly1305::new(self.as_bytes().into());
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: context.as_bytes(),
                },
            )
            // Encryption fails only for inputs beyond 256 GiB; tokens are kilobytes.
            .expect("XChaCha20-Poly1305 encrypts any input under 256 GiB");
        let mut out = Vec::with_capacity(HEADER_LEN + ciphertext.len());
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&self.key_id().to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        SealedValue(out)
    }

    pub fn open(&self, context: &str, sealed: &SealedValue) -> Result<Vec<u8>, SealError> {
        let bytes = sealed.as_bytes();
        if bytes.len() < HEADER_LEN || bytes[0] != FORMAT_VERSION {
            return Err(SealError::Malformed);
        }
        let found = sealed.key_id().ok_or(SealError::Malformed)?;
        let key = self.by_id(found).ok_or(SealError::WrongKey {
            expected: self.key_id(),
            found,
        })?;
        let cipher = XChaCha20Poly1305::new(key.as_bytes().into());
        cipher
            .decrypt(
                XNonce::from_slice(&bytes[5..HEADER_LEN]),
                Payload {
                    msg: &bytes[HEADER_LEN..],
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| SealError::Tampered)
    }

    pub fn seal_secret(&self, context: &str, secret: &Secret) -> SealedValue {
        self.seal(context, secret.expose().as_bytes())
    }

    pub fn open_secret(&self, context: &str, sealed: &SealedValue) -> Result<Secret, SealError> {
        let bytes = self.open(context, sealed)?;
        String::from_utf8(bytes)
            .map(Secret::new)
            .map_err(|_| SealError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(fill: u8) -> MasterKey {
        MasterKey::from_bytes([fill; 32])
    }

    #[test]
    fn round_trip_and_ciphertext_hides_plaintext() {
        let sealed = key(1).seal("account:office", b"refresh-token-123");
        assert!(!sealed.as_bytes().windows(7).any(|w| w == b"refresh"));
        assert_eq!(
            key(1).open("account:office", &sealed).expect("opens"),
            b"refresh-token-123"
        );
    }

    #[test]
    fn other_account_context_fails() {
        let sealed = key(1).seal("account:office", b"token");
        assert!(matches!(
            key(1).open("account:lab", &sealed),
            Err(SealError::Tampered)
        ));
    }

    #[test]
    fn other_key_is_named() {
        let sealed = key(1).seal("a", b"token");
        assert!(matches!(
            key(2).open("a", &sealed),
            Err(SealError::WrongKey { .. })
        ));
    }

    #[test]
    fn previous_keys_open_what_they_sealed() {
        let sealed = key(1).seal("a", b"token");
        let rotated = key(2).with_previous(vec![key(1)]);
        assert_eq!(
            rotated
                .open("a", &sealed)
                .expect("opens with the previous key"),
            b"token"
        );
        assert_eq!(
            rotated.seal("a", b"t").key_id(),
            Some(key(2).key_id()),
            "new seals use the new key"
        );
    }

    #[test]
    fn flipped_bit_is_detected() {
        let mut bytes = key(1).seal("a", b"token").as_bytes().to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(matches!(
            key(1).open("a", &SealedValue::from_stored(bytes)),
            Err(SealError::Tampered)
        ));
    }
}
