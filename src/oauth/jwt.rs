//! JWT signing and the public half of the key as a JWKS.
//!
//! Owns the sandbox issuer's signing key ([`SigningKey`], ES256 on P-256),
//! the claims it puts in access tokens ([`AccessTokenClaims`], the RFC 9068
//! profile) and the JWK / JWKS documents it publishes ([`Jwk`], [`Jwks`]).
//! Verification lives in [`crate::oauth::validate`], which reads the JWKS
//! this module writes, so the two are tested against each other.
//!
//! The JWKS types are our own small serde structs rather than
//! `jsonwebtoken::jwk::Jwk` because what we publish must be exactly the
//! fields RFC 7517/7518 name for an EC key, nothing optional left out.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

use crate::secret::Secret;

/// The one algorithm the sandbox signs with: ECDSA P-256 SHA-256, small keys
/// and signatures, supported by every JOSE library.
pub const SIGNING_ALGORITHM: Algorithm = Algorithm::ES256;

/// RFC 9068 media type of a JWT access token, put in the `typ` header so a
/// token cannot be confused with an ID token.
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error(
        "cannot generate a P-256 signing key: {0}; the system random source may be unavailable"
    )]
    KeyGeneration(String),
    #[error("the signing key is not a PKCS#8 P-256 private key: {0}")]
    BadKey(String),
    #[error("cannot sign the token: {0}")]
    Signing(String),
    #[error("JWK is not a P-256 EC key (kty={kty}, crv={crv}); only ES256 keys are supported here")]
    UnsupportedJwk { kty: String, crv: String },
}

/// The claims of an access token issued by the sandbox (RFC 9068 profile).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessTokenClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Unique token id: what revocation lists hold.
    pub jti: String,
    /// Granted scopes, space separated (RFC 6749 §3.3).
    pub scope: String,
    pub client_id: String,
}

/// An ES256 private key with its key id. `Debug` shows only the key id.
pub struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    /// PKCS#8 DER, kept so the key can be persisted by whoever owns storage.
    pkcs8_der: Secret,
    /// Uncompressed public point: 0x04 || x (32 bytes) || y (32 bytes).
    public_point: Vec<u8>,
}

/// Length of an uncompressed P-256 public point.
const P256_POINT_LEN: usize = 65;

impl SigningKey {
    /// A fresh random key; its `kid` is its RFC 7638 thumbprint.
    pub fn generate() -> Result<Self, JwtError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| JwtError::KeyGeneration(e.to_string()))?;
        Self::from_pkcs8_der(&key.serialize_der())
    }

    /// A key from its PKCS#8 DER encoding (as written by [`SigningKey::pkcs8_der`]).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, JwtError> {
        let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
            &rustls_pki_types::PrivatePkcs8KeyDer::from(der.to_vec()),
            &rcgen::PKCS_ECDSA_P256_SHA256,
        )
        .map_err(|e| JwtError::BadKey(e.to_string()))?;
        let public_point = key.public_key_raw().to_vec();
        if public_point.len() != P256_POINT_LEN || public_point[0] != 0x04 {
            return Err(JwtError::BadKey(
                "public key is not an uncompressed P-256 point".into(),
            ));
        }
        let encoding = EncodingKey::from_ec_der(der);
        let pkcs8_der = Secret::new(URL_SAFE_NO_PAD.encode(der));
        let mut signing = SigningKey {
            kid: String::new(),
            encoding,
            pkcs8_der,
            public_point,
        };
        signing.kid = signing.thumbprint();
        Ok(signing)
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The private key as base64url PKCS#8 DER, redacted in logs.
    pub fn pkcs8_der(&self) -> &Secret {
        &self.pkcs8_der
    }

    /// Signs `claims` as a compact JWS with `kid` and `typ: at+jwt` headers.
    /// The result is a bearer token, hence a [`Secret`].
    pub fn sign<C: Serialize>(&self, claims: &C) -> Result<Secret, JwtError> {
        let mut header = Header::new(SIGNING_ALGORITHM);
        header.kid = Some(self.kid.clone());
        header.typ = Some(ACCESS_TOKEN_TYPE.to_string());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map(Secret::new)
            .map_err(|e| JwtError::Signing(e.to_string()))
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> Jwk {
        let (x, y) = self.coordinates();
        Jwk {
            kty: "EC".into(),
            crv: "P-256".into(),
            x: URL_SAFE_NO_PAD.encode(x),
            y: URL_SAFE_NO_PAD.encode(y),
            kid: self.kid.clone(),
            alg: "ES256".into(),
            key_use: "sig".into(),
        }
    }

    /// A JWKS holding this key only.
    pub fn jwks(&self) -> Jwks {
        Jwks {
            keys: vec![self.jwk()],
        }
    }

    /// The public key for verifying what this key signed (the sandbox uses it
    /// for introspection without fetching its own JWKS).
    pub fn decoding_key(&self) -> DecodingKey {
        DecodingKey::from_ec_der(&self.public_point)
    }

    fn coordinates(&self) -> (&[u8], &[u8]) {
        self.public_point[1..].split_at(32)
    }

    /// RFC 7638 thumbprint: SHA-256 over the required members in
    /// lexicographic order, base64url.
    fn thumbprint(&self) -> String {
        let (x, y) = self.coordinates();
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            URL_SAFE_NO_PAD.encode(x),
            URL_SAFE_NO_PAD.encode(y)
        );
        URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// An EC public key as published in a JWKS (RFC 7517 §4, RFC 7518 §6.2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    pub crv: String,
    pub x: String,
    pub y: String,
    pub kid: String,
    pub alg: String,
    #[serde(rename = "use")]
    pub key_use: String,
}

impl Jwk {
    /// The verification key this JWK describes.
    pub fn decoding_key(&self) -> Result<DecodingKey, JwtError> {
        if self.kty != "EC" || self.crv != "P-256" {
            return Err(JwtError::UnsupportedJwk {
                kty: self.kty.clone(),
                crv: self.crv.clone(),
            });
        }
        DecodingKey::from_ec_components(&self.x, &self.y)
            .map_err(|e| JwtError::BadKey(e.to_string()))
    }
}

/// A JWK set document (`GET /jwks`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

/// Seconds since the Unix epoch, the unit of `exp` and `iat`.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        // A clock before 1970 is a broken host; 0 makes every token expired,
        // which fails closed.
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::Validation;

    fn claims() -> AccessTokenClaims {
        let now = unix_now();
        AccessTokenClaims {
            iss: "http://127.0.0.1:1".into(),
            sub: "alice@sandbox.test".into(),
            aud: "smtp".into(),
            exp: now + 60,
            iat: now,
            jti: "j1".into(),
            scope: "smtp offline_access".into(),
            client_id: "demo".into(),
        }
    }

    #[test]
    fn signed_token_verifies_with_published_jwk() {
        let key = SigningKey::generate().expect("key");
        let token = key.sign(&claims()).expect("sign");
        let header = jsonwebtoken::decode_header(token.expose()).expect("header");
        assert_eq!(header.kid.as_deref(), Some(key.kid()));
        assert_eq!(header.typ.as_deref(), Some(ACCESS_TOKEN_TYPE));

        let jwk = key.jwks().keys.remove(0);
        let mut validation = Validation::new(SIGNING_ALGORITHM);
        validation.set_audience(&["smtp"]);
        let data = jsonwebtoken::decode::<AccessTokenClaims>(
            token.expose(),
            &jwk.decoding_key().expect("jwk"),
            &validation,
        )
        .expect("valid");
        assert_eq!(data.claims, claims_with_same_times(&data.claims));
    }

    fn claims_with_same_times(got: &AccessTokenClaims) -> AccessTokenClaims {
        AccessTokenClaims {
            exp: got.exp,
            iat: got.iat,
            ..claims()
        }
    }

    #[test]
    fn jwk_has_the_rfc_fields_and_raw_coordinates() {
        let key = SigningKey::generate().expect("key");
        let json = serde_json::to_value(key.jwk()).expect("json");
        for (field, value) in [
            ("kty", "EC"),
            ("crv", "P-256"),
            ("alg", "ES256"),
            ("use", "sig"),
        ] {
            assert_eq!(json[field], value, "{field}");
        }
        for coordinate in ["x", "y"] {
            let raw = URL_SAFE_NO_PAD
                .decode(json[coordinate].as_str().expect("str"))
                .expect("b64url");
            assert_eq!(raw.len(), 32, "{coordinate}");
        }
        assert_eq!(json["kid"], key.kid());
    }

    #[test]
    fn key_round_trips_through_pkcs8_and_keeps_kid() {
        let key = SigningKey::generate().expect("key");
        let der = URL_SAFE_NO_PAD
            .decode(key.pkcs8_der().expose())
            .expect("b64");
        let again = SigningKey::from_pkcs8_der(&der).expect("reload");
        assert_eq!(again.kid(), key.kid());
        assert_eq!(again.jwk(), key.jwk());
    }

    #[test]
    fn debug_does_not_show_private_key() {
        let key = SigningKey::generate().expect("key");
        let shown = format!("{key:?}");
        assert!(shown.contains(key.kid()));
        assert!(!shown.contains(key.pkcs8_der().expose()));
    }

    #[test]
    fn other_key_types_are_refused() {
        let mut jwk = SigningKey::generate().expect("key").jwk();
        jwk.crv = "P-384".into();
        assert!(matches!(
            jwk.decoding_key(),
            Err(JwtError::UnsupportedJwk { .. })
        ));
    }
}
