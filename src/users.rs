//! Local submission users: app passwords for devices that speak only
//! PLAIN/LOGIN, stored as Argon2id hashes (the password is shown once, when
//! it is made), each bound to the sender addresses it may use and the
//! upstream account that carries its mail (contract 8: no open relay).

use crate::secret::Secret;
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand::Rng;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error(
        "the password hash of user {user} is not a valid PHC string (expected $argon2id$...); make a new one with `oxirelay user add`"
    )]
    BadHash { user: String },
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// A user who may submit mail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubmissionUser {
    pub name: String,
    #[serde(skip)]
    pub password_hash: String,
    /// Sender addresses (or `@domain` for a whole domain) this user may use.
    pub allowed_from: Vec<String>,
    pub account: String,
    /// "config" or "store": where the user is defined.
    pub source: &'static str,
    /// The header `From:` must be one of `allowed_from` too, not only the
    /// envelope sender (on unless the config turns it off for this user).
    pub header_from_checked: bool,
}

impl SubmissionUser {
    /// Whether `sender` is one this user may put in MAIL FROM.
    pub fn may_send_as(&self, sender: &str) -> bool {
        let sender = sender.to_ascii_lowercase();
        self.allowed_from.iter().any(|allowed| {
            let allowed = allowed.to_ascii_lowercase();
            match allowed.strip_prefix('@') {
                Some(domain) => sender.rsplit_once('@').is_some_and(|(_, d)| d == domain),
                None => sender == allowed,
            }
        })
    }
}

/// 24 characters from a 57-symbol alphabet without look-alikes (no 0/O,
/// 1/l/I): about 140 bits, typeable into a printer's web form.
pub fn generate_app_password() -> Secret {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    let password: String = bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect();
    Secret::new(password)
}

/// Argon2id with the crate's defaults (RFC 9106's second recommended
/// option: m=19 MiB, t=2, p=1), as a PHC string.
pub fn hash_password(password: &Secret) -> Result<String, UserError> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| UserError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.expose().as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| UserError::Hash(e.to_string()))
}

/// Checks `password` against the user's hash in constant time.
pub fn verify_password(user: &SubmissionUser, password: &Secret) -> Result<bool, UserError> {
    verify_hash(&user.password_hash, password.expose()).ok_or_else(|| UserError::BadHash {
        user: user.name.clone(),
    })
}

/// Whether `password` matches the Argon2 PHC string `hash`; `None` if
/// `hash` is not one. The one Argon2 check of the relay: submission users
/// and the console's admin password both come here.
pub fn verify_hash(hash: &str, password: &str) -> Option<bool> {
    let parsed = PasswordHash::new(hash).ok()?;
    Some(
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(hash: String) -> SubmissionUser {
        SubmissionUser {
            name: "scanner".into(),
            password_hash: hash,
            allowed_from: vec!["scanner@contoso.com".into(), "@reports.contoso.com".into()],
            account: "office".into(),
            source: "store",
            header_from_checked: true,
        }
    }

    #[test]
    fn hash_and_verify() {
        let password = generate_app_password();
        assert_eq!(password.expose().len(), 24);
        let hash = hash_password(&password).expect("hash");
        assert!(hash.starts_with("$argon2id$"));
        let user = user(hash);
        assert!(verify_password(&user, &password).expect("verify"));
        assert!(!verify_password(&user, &Secret::new("wrong")).expect("verify"));
    }

    #[test]
    fn sender_rules() {
        let user = user(String::new());
        assert!(user.may_send_as("Scanner@Contoso.com"));
        assert!(user.may_send_as("daily@reports.contoso.com"));
        assert!(!user.may_send_as("ceo@contoso.com"));
        assert!(!user.may_send_as("x@evilreports.contoso.com"));
    }

    #[test]
    fn bad_hash_says_how_to_fix() {
        let err = verify_password(&user("plaintext".into()), &Secret::new("x")).expect_err("bad");
        assert!(err.to_string().contains("oxirelay user add"));
    }
}
