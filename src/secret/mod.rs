//! Secrets: a holder that never prints its value, short fingerprints for logs,
//! the master key, and sealing of tokens and client secrets at rest.
//!
//! Contract 6 of DESIGN.md: a secret is held in [`Secret`] from the moment it
//! is read until it is written to a TLS connection or sealed; `Debug` and
//! `Display` show only its fingerprint.

mod master_key;
mod seal;

pub use master_key::{MasterKey, MasterKeyError, generate_master_key};
pub use seal::{SealError, SealedValue};

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::fmt;

/// A secret string (token, client secret, password). Its value is reachable
/// only through [`Secret::expose`], which makes every use greppable.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(SecretString::from(value.into()))
    }

    /// The value itself: call only to put it on an encrypted wire or into a seal.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(self.expose().as_bytes())
    }

    pub fn is_empty(&self) -> bool {
        self.expose().is_empty()
    }
}

impl PartialEq for Secret {
    /// Constant-time in the length of the shorter value is not needed here:
    /// comparisons happen on values we issued, not on guesses an attacker
    /// can time (the sandbox compares token hashes instead).
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.fingerprint())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[redacted {}]", self.fingerprint())
    }
}

/// A short, stable, non-reversible name for a secret: what logs, audit events
/// and `account list` show instead of the value. 48 bits of SHA-256 are
/// enough to tell tokens apart and far too few to help guess one.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 6]);

impl Fingerprint {
    pub fn of(bytes: &[u8]) -> Self {
        let digest = Sha256::digest(bytes);
        let mut short = [0u8; 6];
        short.copy_from_slice(&digest[..6]);
        Fingerprint(short)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("fp:")?;
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let secret = Secret::new("super-secret-token-value");
        for shown in [format!("{secret:?}"), format!("{secret}")] {
            assert!(!shown.contains("super-secret"), "{shown}");
            assert!(shown.contains("fp:"), "{shown}");
        }
    }

    #[test]
    fn fingerprint_is_stable_and_distinguishes() {
        let a = Secret::new("a").fingerprint();
        assert_eq!(a, Secret::new("a").fingerprint());
        assert_ne!(a, Secret::new("b").fingerprint());
        assert_eq!(a.to_string().len(), "fp:".len() + 12);
    }
}
