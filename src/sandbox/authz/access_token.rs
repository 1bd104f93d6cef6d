//! Access tokens in the shape of the server's profile, and recognising them
//! again at the revocation and introspection endpoints:
//!
//! - `Jwt { min_len }` (strict): an RFC 9068 JWT whose `groups` claim (RFC
//!   9068 section 2.2.3.1) lists the user's groups, as many as it takes to
//!   reach `min_len`: group membership is what makes real tokens long.
//! - `Entra` (microsoft): see [`super::entra`].
//! - `Opaque` (google): `ya29.` and random characters, meaningless to
//!   anyone but the server; only the ledger knows what it grants.
//!
//! A token's id is what the ledger files it under: the JWT's `jti` (or
//! Entra's `uti`), or the SHA-256 of an opaque token (the ledger holds no
//! usable credential).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::config::AuthServerConfig;
use super::entra;
use super::ledger::{Grant, random_token};
use super::oauth_error::{ErrorCode, OAuthError};
use crate::oauth::jwt::{AccessTokenClaims, SIGNING_ALGORITHM, SigningKey};
use crate::sandbox::profile::TokenShape;
use crate::secret::Secret;

/// How Google's access tokens begin.
pub const OPAQUE_PREFIX: &str = "ya29.";
/// Random bytes after the prefix: 150 bytes are 200 URL-safe characters,
/// about the length of Google's tokens.
const OPAQUE_RANDOM_BYTES: usize = 150;
/// One more group UUID adds 39 bytes of JSON, 52 characters of token.
const GROUP_ENTRY_CHARS: usize = 52;

/// A newly issued access token.
pub(crate) struct Minted {
    pub token: Secret,
    /// What the ledger files it under.
    pub id: String,
}

/// An RFC 9068 token with the user's groups.
#[derive(Serialize)]
struct GroupClaims<'a> {
    #[serde(flatten)]
    base: &'a AccessTokenClaims,
    #[serde(skip_serializing_if = "no_groups")]
    groups: &'a [String],
}

fn no_groups(groups: &&[String]) -> bool {
    groups.is_empty()
}

/// The ids a JWT may carry, by shape.
#[derive(Deserialize)]
struct TokenIds {
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    uti: Option<String>,
}

/// Issues and recognises one server's access tokens.
pub(crate) struct TokenMint<'a> {
    pub config: &'a AuthServerConfig,
    /// The server's issuer identifier (metadata `issuer`).
    pub issuer: &'a str,
    pub key: &'a SigningKey,
}

impl TokenMint<'_> {
    /// The `iss` of issued JWTs (Entra's v1 tokens name another issuer
    /// than the server's metadata).
    pub(crate) fn token_issuer(&self) -> String {
        match self.config.token_shape {
            TokenShape::Entra => entra::token_issuer(self.config),
            TokenShape::Jwt { .. } | TokenShape::Opaque => self.issuer.to_string(),
        }
    }

    /// The `aud` values issued JWTs may carry.
    pub(crate) fn audiences(&self) -> Vec<String> {
        match self.config.token_shape {
            TokenShape::Entra => entra::audiences(self.config),
            TokenShape::Jwt { .. } => vec![self.config.audience.clone()],
            TokenShape::Opaque => Vec::new(),
        }
    }

    pub(crate) fn mint(&self, grant: &Grant, now: u64, exp: u64) -> Result<Minted, OAuthError> {
        let signing_failed = |e: crate::oauth::jwt::JwtError| {
            OAuthError::new(
                ErrorCode::ServerError,
                format!("cannot sign the token: {e}"),
            )
        };
        match self.config.token_shape {
            TokenShape::Jwt { min_len } => {
                let claims = AccessTokenClaims {
                    iss: self.issuer.to_string(),
                    sub: grant.subject.clone(),
                    aud: self.config.audience.clone(),
                    exp,
                    iat: now,
                    jti: random_token(),
                    scope: grant.scopes.join(" "),
                    client_id: grant.client_id.clone(),
                };
                let mut groups: Vec<String> = Vec::new();
                // Each round adds what the last one measured as missing;
                // two rounds suffice, the bound only guards the loop.
                for _ in 0..8 {
                    let token = self
                        .key
                        .sign_as(
                            &GroupClaims {
                                base: &claims,
                                groups: &groups,
                            },
                            self.config.jwt_header,
                        )
                        .map_err(signing_failed)?;
                    let length = token.expose().len();
                    if length >= min_len {
                        return Ok(Minted {
                            token,
                            id: claims.jti,
                        });
                    }
                    let more = (min_len - length).div_ceil(GROUP_ENTRY_CHARS);
                    let start = groups.len();
                    groups.extend((start..start + more).map(|i| group_id(&grant.subject, i)));
                }
                Err(OAuthError::new(
                    ErrorCode::ServerError,
                    format!("the access token stayed shorter than {min_len} characters"),
                ))
            }
            TokenShape::Entra => {
                let client = self.config.client(&grant.client_id);
                let (token, uti) = entra::mint(self.config, self.key, grant, client, now, exp)?;
                Ok(Minted { token, id: uti })
            }
            TokenShape::Opaque => {
                let random: Vec<u8> = (0..OPAQUE_RANDOM_BYTES).map(|_| rand::random()).collect();
                let token = format!("{OPAQUE_PREFIX}{}", URL_SAFE_NO_PAD.encode(random));
                let id = opaque_id(&token);
                Ok(Minted {
                    token: Secret::new(token),
                    id,
                })
            }
        }
    }

    /// The id of an access token this server could have issued (signature,
    /// issuer and audience checked for a JWT; expiry only if `check_exp`).
    /// Whether the ledger knows it is the caller's question.
    pub(crate) fn token_id(&self, token: &str, check_exp: bool) -> Option<String> {
        if self.config.token_shape == TokenShape::Opaque {
            return token.starts_with(OPAQUE_PREFIX).then(|| opaque_id(token));
        }
        let mut validation = jsonwebtoken::Validation::new(SIGNING_ALGORITHM);
        validation.leeway = 0;
        validation.validate_exp = check_exp;
        validation.set_issuer(&[self.token_issuer()]);
        validation.set_audience(&self.audiences());
        let ids = jsonwebtoken::decode::<TokenIds>(token, &self.key.decoding_key(), &validation)
            .ok()?
            .claims;
        ids.jti.or(ids.uti)
    }
}

/// Whether `token` has the structure of a JWT (three base64url parts).
pub(crate) fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && parts.iter().take(2).all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn opaque_id(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

/// The `i`th group of `subject`: the same groups in every token of a user.
fn group_id(subject: &str, i: usize) -> String {
    entra::uuid_from(&["group", subject, &i.to_string()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_structure_is_recognised() {
        assert!(looks_like_jwt("eyJh.eyJi.c2ln"));
        assert!(!looks_like_jwt("ya29.a0AfB_byC-abc"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("..sig"));
    }

    #[test]
    fn groups_are_stable_per_user() {
        assert_eq!(group_id("a@x", 3), group_id("a@x", 3));
        assert_ne!(group_id("a@x", 3), group_id("b@x", 3));
        assert_eq!(group_id("a@x", 0).len(), 36);
    }
}
