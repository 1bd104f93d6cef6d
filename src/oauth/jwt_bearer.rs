//! The JWT bearer grant (RFC 7523) as Google service accounts use it with
//! domain-wide delegation: the service account signs an assertion naming
//! the mailbox (`sub`) it acts for, and trades it for an access token.

use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Google accepts assertions valid for at most one hour.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum JwtBearerError {
    #[error(
        "the service account key is not a Google service-account JSON key: {0}; download a new JSON key from IAM > Service accounts > Keys"
    )]
    BadKeyFile(String),
    #[error("cannot sign the assertion with the service account key: {0}")]
    Sign(String),
}

#[derive(Deserialize)]
struct ServiceAccountKey {
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    token_uri: Option<String>,
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    scope: String,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

/// The signed assertion and the token endpoint the key names.
pub struct Assertion {
    pub jwt: Secret,
    pub token_uri: Option<String>,
}

/// Signs an assertion for `mailbox` with the service account `key_json`.
pub fn sign_assertion(
    key_json: &Secret,
    mailbox: &str,
    scopes: &[String],
    default_audience: &str,
) -> Result<Assertion, JwtBearerError> {
    let key: ServiceAccountKey = serde_json::from_str(key_json.expose())
        .map_err(|e| JwtBearerError::BadKeyFile(e.to_string()))?;
    let encoding_key = jsonwebtoken::EncodingKey::from_rsa_pem(key.private_key.as_bytes())
        .map_err(|e| JwtBearerError::BadKeyFile(format!("private_key: {e}")))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let audience = key.token_uri.as_deref().unwrap_or(default_audience);
    let claims = AssertionClaims {
        iss: &key.client_email,
        sub: mailbox,
        scope: scopes.join(" "),
        aud: audience,
        iat: now,
        exp: now + ASSERTION_LIFETIME.as_secs(),
    };
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = key.private_key_id.clone();
    let jwt = jsonwebtoken::encode(&header, &claims, &encoding_key)
        .map_err(|e| JwtBearerError::Sign(e.to_string()))?;
    Ok(Assertion {
        jwt: Secret::new(jwt),
        token_uri: key.token_uri,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assertion_is_signed_by_the_key_and_names_the_mailbox() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
        let key_json = serde_json::json!({
            "type": "service_account",
            "client_email": "relay@project.iam.gserviceaccount.com",
            "private_key": key.serialize_pem(),
            "private_key_id": "key-1",
            "token_uri": "https://oauth2.googleapis.com/token",
        });
        let assertion = sign_assertion(
            &Secret::new(key_json.to_string()),
            "noreply@example.com",
            &["https://mail.google.com/".to_string()],
            "https://unused.example/token",
        )
        .expect("signs");
        assert_eq!(
            assertion.token_uri.as_deref(),
            Some("https://oauth2.googleapis.com/token")
        );
        let decoding = jsonwebtoken::DecodingKey::from_rsa_pem(key.public_key_pem().as_bytes())
            .expect("public key");
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.set_audience(&["https://oauth2.googleapis.com/token"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(
            assertion.jwt.expose(),
            &decoding,
            &validation,
        )
        .expect("a valid RS256 assertion for the token endpoint");
        assert_eq!(data.header.kid.as_deref(), Some("key-1"));
        assert_eq!(data.claims["iss"], "relay@project.iam.gserviceaccount.com");
        assert_eq!(
            data.claims["sub"], "noreply@example.com",
            "domain-wide delegation: acts for the mailbox"
        );
        assert_eq!(data.claims["scope"], "https://mail.google.com/");
        assert_eq!(
            data.claims["exp"].as_u64().expect("exp") - data.claims["iat"].as_u64().expect("iat"),
            3600
        );
    }

    #[test]
    fn a_key_file_that_is_not_a_service_account_key_says_so() {
        let err = sign_assertion(&Secret::new("{}"), "a@b", &[], "https://x")
            .err()
            .expect("refused");
        assert!(err.to_string().contains("Service accounts > Keys"), "{err}");
    }
}
