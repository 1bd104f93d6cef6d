//! The master key: 32 random bytes from `OXIRELAY_MASTER_KEY` (base64) or a
//! key file that only its owner can read. There is no built-in fallback key:
//! a relay without a master key refuses to start.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand::Rng;
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};
use zeroize::{Zeroize, ZeroizeOnDrop};

pub const MASTER_KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    #[error(
        "no master key: set OXIRELAY_MASTER_KEY to the output of `oxirelay keygen`, or point [secrets] master_key at a key file"
    )]
    Missing,
    #[error(
        "the master key in {origin} is not base64 of {MASTER_KEY_LEN} bytes; make a new one with `oxirelay keygen`"
    )]
    Malformed { origin: String },
    #[error(
        "cannot read the master key file {path}: {source}; check the path in [secrets] master_key"
    )]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the master key file {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}` and start again"
    )]
    TooOpen { path: PathBuf, mode: u32 },
}

/// The key that seals tokens and client secrets at rest. Zeroed on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey {
    bytes: [u8; MASTER_KEY_LEN],
    /// Keys replaced by this one, still able to open what they sealed
    /// until `rotate-key` has re-sealed it.
    previous: Vec<MasterKey>,
}

impl MasterKey {
    pub fn from_bytes(bytes: [u8; MASTER_KEY_LEN]) -> Self {
        MasterKey {
            bytes,
            previous: Vec::new(),
        }
    }

    /// This key, able to open values sealed by `previous` keys as well.
    pub fn with_previous(mut self, previous: Vec<MasterKey>) -> Self {
        self.previous = previous;
        self
    }

    /// The key with this id: this one or a previous one.
    pub(crate) fn by_id(&self, id: u32) -> Option<&MasterKey> {
        if self.key_id() == id {
            return Some(self);
        }
        self.previous.iter().find(|k| k.key_id() == id)
    }

    /// The ids of this key and of the previous ones, for messages that
    /// name which keys are at hand.
    pub(crate) fn ids(&self) -> Vec<u32> {
        std::iter::once(self.key_id())
            .chain(self.previous.iter().map(MasterKey::key_id))
            .collect()
    }

    /// Parses the base64 form that `oxirelay keygen` prints.
    pub fn from_base64(text: &str, origin: &str) -> Result<Self, MasterKeyError> {
        let malformed = || MasterKeyError::Malformed {
            origin: origin.to_string(),
        };
        let mut decoded = BASE64.decode(text.trim()).map_err(|_| malformed())?;
        if decoded.len() != MASTER_KEY_LEN {
            decoded.zeroize();
            return Err(malformed());
        }
        let mut bytes = [0u8; MASTER_KEY_LEN];
        bytes.copy_from_slice(&decoded);
        decoded.zeroize();
        Ok(MasterKey::from_bytes(bytes))
    }

    /// Reads the key from the environment variable `name`.
    pub fn from_env(name: &str) -> Result<Self, MasterKeyError> {
        match std::env::var(name) {
            Ok(value) if !value.trim().is_empty() => Self::from_base64(&value, &format!("${name}")),
            _ => Err(MasterKeyError::Missing),
        }
    }

    /// Reads the key from a file, refusing one that group or others can read.
    pub fn from_file(path: &Path) -> Result<Self, MasterKeyError> {
        check_owner_only(path)?;
        let text = std::fs::read_to_string(path).map_err(|source| MasterKeyError::Unreadable {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_base64(&text, &path.display().to_string())
    }

    pub(crate) fn as_bytes(&self) -> &[u8; MASTER_KEY_LEN] {
        &self.bytes
    }

    /// Which key sealed a value: stored with each sealed value so that
    /// `rotate-key` and error messages can tell keys apart without the key.
    pub fn key_id(&self) -> u32 {
        let digest = Sha256::digest(self.bytes);
        u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey(id {:08x})", self.key_id())
    }
}

#[cfg(unix)]
fn check_owner_only(path: &Path) -> Result<(), MasterKeyError> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = std::fs::metadata(path).map_err(|source| MasterKeyError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(MasterKeyError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_owner_only(_path: &Path) -> Result<(), MasterKeyError> {
    Ok(())
}

/// A fresh random key in the base64 form the loaders accept.
pub fn generate_master_key() -> String {
    let mut bytes = [0u8; MASTER_KEY_LEN];
    rand::rng().fill_bytes(&mut bytes);
    let text = BASE64.encode(bytes);
    bytes.zeroize();
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_round_trips() {
        let text = generate_master_key();
        let key = MasterKey::from_base64(&text, "test").expect("valid key");
        assert_eq!(
            key.key_id(),
            MasterKey::from_base64(&text, "test")
                .expect("valid")
                .key_id()
        );
    }

    #[test]
    fn short_key_is_refused_with_the_fix() {
        let err = MasterKey::from_base64("c2hvcnQ=", "test").expect_err("too short");
        assert!(err.to_string().contains("oxirelay keygen"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn key_file_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("master.key");
        std::fs::write(&path, generate_master_key()).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = MasterKey::from_file(&path).expect_err("mode 644 must be refused");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        MasterKey::from_file(&path).expect("mode 600 is accepted");
    }
}
