//! Who may log in to the console, and how often one may try: the admin
//! password (read through its secret reference, the value or its Argon2
//! hash) and the login rate limits.

use crate::config::{ConsoleConfig, SecretRef};
use crate::secret::Secret;
use argon2::password_hash::PasswordHash;
use governor::{Quota, RateLimiter};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::num::NonZeroU32;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error(
        "[console] admin_password {reference}: {reason}; point it at a file (mode 0600) or variable holding the password or its Argon2 hash"
    )]
    AdminPassword { reference: String, reason: String },
}

/// The admin password as configured.
pub enum AdminPassword {
    /// The password itself, compared through its SHA-256 in constant time
    /// (so neither its content nor its length shows in the time taken).
    Plain(Secret),
    /// An Argon2 PHC string (`$argon2id$...`).
    Hash(String),
}

impl AdminPassword {
    pub fn load(reference: &SecretRef) -> Result<AdminPassword, ConsoleError> {
        let fail = |reason: String| ConsoleError::AdminPassword {
            reference: reference.to_string(),
            reason,
        };
        let secret = reference.resolve().map_err(|e| fail(e.to_string()))?;
        let value = secret.expose().trim();
        if value.starts_with("$argon2") {
            PasswordHash::new(value)
                .map_err(|e| fail(format!("it looks like an Argon2 hash but is not one ({e})")))?;
            return Ok(AdminPassword::Hash(value.to_string()));
        }
        Ok(AdminPassword::Plain(secret))
    }

    /// The configured password of `[console]`, if any.
    pub fn from_config(config: &ConsoleConfig) -> Result<Option<AdminPassword>, ConsoleError> {
        config.admin_password.as_ref().map(Self::load).transpose()
    }

    /// Whether `presented` is the password. Argon2 is slow on purpose:
    /// call this off the async threads.
    pub fn verify(&self, presented: &str) -> bool {
        match self {
            AdminPassword::Plain(secret) => {
                let want = Sha256::digest(secret.expose().as_bytes());
                let got = Sha256::digest(presented.as_bytes());
                aws_lc_rs::constant_time::verify_slices_are_equal(&want, &got).is_ok()
            }
            // Checked well-formed at load.
            AdminPassword::Hash(hash) => {
                crate::users::verify_hash(hash, presented).unwrap_or(false)
            }
        }
    }
}

/// Login attempts from one address per minute: a person who mistypes
/// gets a few tries; a guesser gets 10 a minute.
const PER_ADDRESS_PER_MINUTE: u32 = 10;
/// Login attempts per minute from everywhere together, against guessing
/// spread over many addresses.
const ALL_PER_MINUTE: u32 = 30;
/// Addresses remembered before the forgotten ones are dropped.
const ADDRESSES_KEPT: usize = 10_000;

type Keyed = RateLimiter<
    IpAddr,
    governor::state::keyed::HashMapStateStore<IpAddr>,
    governor::clock::DefaultClock,
>;

/// The login rate limits.
pub struct LoginLimits {
    per_address: Keyed,
    all: governor::DefaultDirectRateLimiter,
}

fn per_minute(count: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(count).unwrap_or(NonZeroU32::MIN))
}

impl Default for LoginLimits {
    fn default() -> Self {
        LoginLimits {
            per_address: RateLimiter::hashmap(per_minute(PER_ADDRESS_PER_MINUTE)),
            all: RateLimiter::direct(per_minute(ALL_PER_MINUTE)),
        }
    }
}

impl LoginLimits {
    /// Whether an attempt from `address` may go ahead now (and counts it).
    pub fn allow(&self, address: IpAddr) -> bool {
        if self.per_address.len() > ADDRESSES_KEPT {
            self.per_address.retain_recent();
        }
        self.per_address.check_key(&address).is_ok() && self.all.check().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_hashed_passwords_verify() {
        let plain = AdminPassword::Plain(Secret::new("correct horse"));
        assert!(plain.verify("correct horse"));
        assert!(!plain.verify("correct hors"));
        assert!(!plain.verify(""));
        let hash = crate::users::hash_password(&Secret::new("battery staple")).expect("hash");
        let hashed = AdminPassword::Hash(hash);
        assert!(hashed.verify("battery staple"));
        assert!(!hashed.verify("battery"));
    }

    #[test]
    fn a_guesser_is_slowed_down() {
        let limits = LoginLimits::default();
        let guesser: IpAddr = [192, 0, 2, 1].into();
        for _ in 0..PER_ADDRESS_PER_MINUTE {
            assert!(limits.allow(guesser));
        }
        assert!(!limits.allow(guesser));
        assert!(limits.allow([192, 0, 2, 2].into()), "others still may");
    }
}
