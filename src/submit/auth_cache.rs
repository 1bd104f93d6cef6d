//! Recently verified passwords, so a device that reconnects for every
//! message costs one Argon2 check per `ttl`, not one per connection (each
//! check is tens of milliseconds of CPU and 19 MiB of memory).
//!
//! Held in memory only, as a SHA-256 over a random per-process key, the
//! user's current password hash (PHC string) and the password: the password
//! itself is not kept, a changed password or removed user stops matching at
//! once (the PHC string differs or the user is gone), and only successes
//! are cached, so guessing gets no faster.

use crate::secret::Secret;
use crate::users::SubmissionUser;
use rand::Rng;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bound on remembered users; past it, the cache starts over.
const MAX_ENTRIES: usize = 10_000;

pub struct VerifiedPasswords {
    key: [u8; 32],
    ttl: Duration,
    entries: Mutex<HashMap<String, ([u8; 32], Instant)>>,
}

impl VerifiedPasswords {
    pub fn new(ttl: Duration) -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        VerifiedPasswords {
            key,
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn digest(&self, user: &SubmissionUser, password: &Secret) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(self.key);
        hasher.update(user.password_hash.as_bytes());
        hasher.update([0u8]);
        hasher.update(password.expose().as_bytes());
        hasher.finalize().into()
    }

    /// Whether `password` was verified for `user` (with its current hash) within the ttl.
    pub fn contains(&self, user: &SubmissionUser, password: &Secret, now: Instant) -> bool {
        let expected = self.digest(user, password);
        // A poisoned lock only means a panic elsewhere; the map is intact.
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(&user.name.to_ascii_lowercase())
            .is_some_and(|(digest, at)| {
                now.duration_since(*at) < self.ttl && constant_time_eq(digest, &expected)
            })
    }

    pub fn remember(&self, user: &SubmissionUser, password: &Secret, now: Instant) {
        let digest = self.digest(user, password);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, (_, at)| now.duration_since(*at) < self.ttl);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(user.name.to_ascii_lowercase(), (digest, now));
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(hash: &str) -> SubmissionUser {
        SubmissionUser {
            name: "Printer".into(),
            password_hash: hash.into(),
            allowed_from: vec![],
            account: "office".into(),
            source: "store",
            header_from_checked: true,
        }
    }

    #[test]
    fn remembers_successes_for_the_ttl_and_the_current_hash_only() {
        let cache = VerifiedPasswords::new(Duration::from_secs(600));
        let now = Instant::now();
        let password = Secret::new("correct horse");
        cache.remember(&user("$argon2id$one"), &password, now);
        assert!(cache.contains(
            &user("$argon2id$one"),
            &password,
            now + Duration::from_secs(60)
        ));
        assert!(!cache.contains(&user("$argon2id$one"), &Secret::new("wrong"), now));
        assert!(
            !cache.contains(&user("$argon2id$two"), &password, now),
            "a changed password invalidates"
        );
        assert!(
            !cache.contains(
                &user("$argon2id$one"),
                &password,
                now + Duration::from_secs(601)
            ),
            "expired"
        );
    }
}
