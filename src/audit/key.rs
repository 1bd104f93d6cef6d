//! The audit log's MAC key: HKDF-SHA256 of the master key with its own
//! label, so that it is never the sealing key itself (a key used for two
//! purposes with two algorithms is a key whose misuse in one can leak into
//! the other) and so that a leaked audit key opens no sealed token.
//!
//! aws-lc-rs does the HKDF and HMAC: it is already the one crypto provider
//! of the relay (rustls, JWTs), so this adds no crate; its `hmac::verify`
//! compares in constant time.

use crate::secret::MasterKey;
use aws_lc_rs::{hkdf, hmac};
use std::collections::HashMap;

/// HKDF `info`: names the purpose, and a version should the scheme change.
const INFO: &[u8] = b"oxirelay audit log HMAC-SHA256 v1";

pub struct AuditKey {
    /// The id of the master key it is derived from, written with each line
    /// so that the verifier knows which key to use after a rotation.
    id: u32,
    key: hmac::Key,
}

impl AuditKey {
    pub fn derive(master: &MasterKey) -> AuditKey {
        // The master key is 32 uniformly random bytes, so extract needs no
        // salt (RFC 5869 section 3.1).
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(master.as_bytes());
        let info = [INFO];
        let okm = prk
            .expand(&info, hmac::HMAC_SHA256)
            // Fails only for an output longer than 255 hash lengths; this is one.
            .expect("HKDF-SHA256 expands to one SHA-256 length");
        AuditKey {
            id: master.key_id(),
            key: hmac::Key::from(okm),
        }
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub(crate) fn mac_hex(&self, bytes: &[u8]) -> String {
        hex::encode(hmac::sign(&self.key, bytes))
    }

    pub(crate) fn verify(&self, bytes: &[u8], mac_hex: &str) -> bool {
        let Some(tag) = decode_hex(mac_hex) else {
            return false;
        };
        hmac::verify(&self.key, bytes, &tag).is_ok()
    }
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditKey(of master key {:08x})", self.id)
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    hex::decode(text).ok()
}

/// The audit keys a verifier can use: those of the master key in the
/// config and of its `previous_master_keys`, derived when first needed.
pub(crate) struct KeyRing<'a> {
    master: &'a MasterKey,
    derived: HashMap<u32, Option<AuditKey>>,
}

impl<'a> KeyRing<'a> {
    pub fn new(master: &'a MasterKey) -> Self {
        KeyRing {
            master,
            derived: HashMap::new(),
        }
    }

    pub fn get(&mut self, id: u32) -> Option<&AuditKey> {
        let master = self.master;
        self.derived
            .entry(id)
            .or_insert_with(|| master.by_id(id).map(AuditKey::derive))
            .as_ref()
    }

    /// The ids of the keys this ring has, for messages.
    pub fn ids(&self) -> Vec<u32> {
        self.master.ids()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_key_is_not_the_master_key_and_is_stable() {
        let master = MasterKey::from_bytes([9; 32]);
        let a = AuditKey::derive(&master);
        let b = AuditKey::derive(&master);
        assert_eq!(a.mac_hex(b"line"), b.mac_hex(b"line"));
        // An HMAC keyed directly with the master key's bytes differs.
        let direct = hmac::Key::new(hmac::HMAC_SHA256, &[9; 32]);
        assert_ne!(
            a.mac_hex(b"line"),
            hex::encode(hmac::sign(&direct, b"line"))
        );
        assert!(a.verify(b"line", &a.mac_hex(b"line")));
        assert!(!a.verify(b"lime", &a.mac_hex(b"line")));
        assert!(!a.verify(b"line", "zz"));
        let other = AuditKey::derive(&MasterKey::from_bytes([8; 32]));
        assert!(!other.verify(b"line", &a.mac_hex(b"line")));
    }
}
