//! JWT signing and the public half of the key as a JWKS.
//!
//! Owns the sandbox issuer's signing key ([`SigningKey`], RS256 on a
//! 2048-bit RSA key, what Entra ID, Google and most identity servers sign
//! access tokens with), the claims of an RFC 9068 access token
//! ([`AccessTokenClaims`]) and the JWK / JWKS documents it publishes
//! ([`Jwk`], [`Jwks`]). Verification lives in [`crate::oauth::validate`],
//! which reads the JWKS this module writes, so the two are tested against
//! each other.
//!
//! The JWKS types are our own small serde structs rather than
//! `jsonwebtoken::jwk::Jwk` because what we publish must be exactly the
//! fields RFC 7517/7518 name for an RSA key, with the `x5t`/`x5c` pair
//! Entra ID publishes beside them.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

use crate::secret::Secret;

/// The one algorithm the sandbox signs with: RSASSA-PKCS1-v1_5 SHA-256,
/// the algorithm real providers' access tokens use, and large enough
/// signatures (342 characters) that sandbox tokens are as long as theirs.
pub const SIGNING_ALGORITHM: Algorithm = Algorithm::RS256;

/// RFC 9068 media type of a JWT access token, put in the `typ` header so a
/// token cannot be confused with an ID token.
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";

/// Which header a token gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderStyle {
    /// RFC 9068: `typ: at+jwt` and `kid`.
    Rfc9068,
    /// Entra ID: `typ: JWT`, `x5t` (SHA-1 thumbprint of the key's
    /// certificate) and `kid`.
    Entra,
    /// `typ: JWT` and `kid`, as Keycloak and most identity servers write
    /// it (and as Dovecot 2.3's local validation requires).
    Jwt,
}

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("cannot generate an RSA signing key: {0}; the system random source may be unavailable")]
    KeyGeneration(String),
    #[error("the signing key is not a PKCS#8 RSA private key: {0}")]
    BadKey(String),
    #[error("cannot sign the token: {0}")]
    Signing(String),
    #[error("JWK is not an RSA key (kty={kty}); only RS256 keys are supported here")]
    UnsupportedJwk { kty: String },
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

/// An RS256 private key with its key id. `Debug` shows only the key id.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    /// PKCS#8 DER, kept so the key can be persisted by whoever owns storage.
    pkcs8_der: Secret,
    /// PKCS#1 `RSAPublicKey` DER, what `DecodingKey::from_rsa_der` reads.
    public_pkcs1: Vec<u8>,
    /// Modulus and exponent, base64url, as the JWK carries them.
    n: String,
    e: String,
    /// A self-signed certificate for the key (DER, standard base64) and its
    /// SHA-1 thumbprint: Entra ID publishes both (`x5c`, `x5t`).
    x5c: String,
    x5t: String,
}

impl SigningKey {
    /// A fresh random 2048-bit key; its `kid` is its RFC 7638 thumbprint.
    pub fn generate() -> Result<Self, JwtError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
            .map_err(|e| JwtError::KeyGeneration(e.to_string()))?;
        Self::from_key_pair(&key)
    }

    /// A key from its PKCS#8 DER encoding (as written by [`SigningKey::pkcs8_der`]).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, JwtError> {
        let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
            &rustls_pki_types::PrivatePkcs8KeyDer::from(der.to_vec()),
            &rcgen::PKCS_RSA_SHA256,
        )
        .map_err(|e| JwtError::BadKey(e.to_string()))?;
        Self::from_key_pair(&key)
    }

    fn from_key_pair(key: &rcgen::KeyPair) -> Result<Self, JwtError> {
        let bad = |e: &dyn fmt::Display| JwtError::BadKey(e.to_string());
        // jsonwebtoken signs with a PKCS#1 key; its PEM reader unwraps the
        // PKCS#8 envelope rcgen writes.
        let encoding =
            EncodingKey::from_rsa_pem(key.serialize_pem().as_bytes()).map_err(|e| bad(&e))?;
        let public_pkcs1 = key.public_key_raw().to_vec();
        let public = aws_lc_rs::rsa::PublicKey::from_der(&public_pkcs1).map_err(|e| bad(&e))?;
        let n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
        let e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
        // rcgen's defaults (fixed validity, serial derived from the key)
        // make the certificate, hence x5t, the same for the same key.
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "oxirelay sandbox token signing");
        let certificate = params.self_signed(key).map_err(|e| bad(&e))?;
        let der = certificate.der();
        // x5t is defined as a SHA-1 thumbprint (RFC 7515 §4.1.7); it names
        // a certificate, it protects nothing.
        let sha1 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, der);
        let mut signing = SigningKey {
            kid: String::new(),
            encoding,
            pkcs8_der: Secret::new(URL_SAFE_NO_PAD.encode(key.serialized_der())),
            public_pkcs1,
            n,
            e,
            x5c: STANDARD.encode(der),
            x5t: URL_SAFE_NO_PAD.encode(sha1.as_ref()),
        };
        signing.kid = signing.thumbprint();
        Ok(signing)
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The SHA-1 thumbprint of the key's certificate (the `x5t` header).
    pub fn x5t(&self) -> &str {
        &self.x5t
    }

    /// The private key as base64url PKCS#8 DER, redacted in logs.
    pub fn pkcs8_der(&self) -> &Secret {
        &self.pkcs8_der
    }

    /// Signs `claims` as a compact JWS with the RFC 9068 header (`kid`,
    /// `typ: at+jwt`). The result is a bearer token, hence a [`Secret`].
    pub fn sign<C: Serialize>(&self, claims: &C) -> Result<Secret, JwtError> {
        self.sign_as(claims, HeaderStyle::Rfc9068)
    }

    /// Signs `claims` with the header of `style`.
    pub fn sign_as<C: Serialize>(
        &self,
        claims: &C,
        style: HeaderStyle,
    ) -> Result<Secret, JwtError> {
        let mut header = Header::new(SIGNING_ALGORITHM);
        header.kid = Some(self.kid.clone());
        match style {
            HeaderStyle::Rfc9068 => header.typ = Some(ACCESS_TOKEN_TYPE.to_string()),
            HeaderStyle::Entra => {
                header.typ = Some("JWT".to_string());
                header.x5t = Some(self.x5t.clone());
            }
            HeaderStyle::Jwt => header.typ = Some("JWT".to_string()),
        }
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map(Secret::new)
            .map_err(|e| JwtError::Signing(e.to_string()))
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> Jwk {
        Jwk {
            kty: "RSA".into(),
            n: self.n.clone(),
            e: self.e.clone(),
            kid: self.kid.clone(),
            alg: "RS256".into(),
            key_use: "sig".into(),
            x5t: self.x5t.clone(),
            x5c: vec![self.x5c.clone()],
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
        DecodingKey::from_rsa_der(&self.public_pkcs1)
    }

    /// RFC 7638 thumbprint: SHA-256 over the required members in
    /// lexicographic order, base64url.
    fn thumbprint(&self) -> String {
        let canonical = format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, self.e, self.n);
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

/// An RSA public key as published in a JWKS (RFC 7517 §4, RFC 7518 §6.3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    pub n: String,
    pub e: String,
    pub kid: String,
    pub alg: String,
    #[serde(rename = "use")]
    pub key_use: String,
    pub x5t: String,
    pub x5c: Vec<String>,
}

impl Jwk {
    /// The verification key this JWK describes.
    pub fn decoding_key(&self) -> Result<DecodingKey, JwtError> {
        if self.kty != "RSA" {
            return Err(JwtError::UnsupportedJwk {
                kty: self.kty.clone(),
            });
        }
        DecodingKey::from_rsa_components(&self.n, &self.e)
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
    fn jwk_has_the_rfc_fields_and_a_2048_bit_modulus() {
        let key = SigningKey::generate().expect("key");
        let json = serde_json::to_value(key.jwk()).expect("json");
        for (field, value) in [
            ("kty", "RSA"),
            ("alg", "RS256"),
            ("use", "sig"),
            ("e", "AQAB"),
        ] {
            assert_eq!(json[field], value, "{field}");
        }
        let modulus = URL_SAFE_NO_PAD
            .decode(json["n"].as_str().expect("str"))
            .expect("b64url");
        assert_eq!(modulus.len(), 256);
        assert_eq!(json["kid"], key.kid());
        // x5t names the certificate in x5c.
        let cert = STANDARD
            .decode(json["x5c"][0].as_str().expect("x5c"))
            .expect("b64");
        let sha1 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &cert);
        assert_eq!(json["x5t"], URL_SAFE_NO_PAD.encode(sha1.as_ref()));
    }

    #[test]
    fn entra_header_has_x5t_and_jwt_type() {
        let key = SigningKey::generate().expect("key");
        let token = key.sign_as(&claims(), HeaderStyle::Entra).expect("sign");
        let header = jsonwebtoken::decode_header(token.expose()).expect("header");
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        assert_eq!(header.x5t.as_deref(), Some(key.x5t()));
        assert_eq!(header.kid.as_deref(), Some(key.kid()));
        assert_eq!(header.alg, Algorithm::RS256);
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
        let token = again.sign(&claims()).expect("sign");
        let mut validation = Validation::new(SIGNING_ALGORITHM);
        validation.set_audience(&["smtp"]);
        jsonwebtoken::decode::<AccessTokenClaims>(token.expose(), &key.decoding_key(), &validation)
            .expect("the reloaded key signs like the original");
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
        jwk.kty = "EC".into();
        assert!(matches!(
            jwk.decoding_key(),
            Err(JwtError::UnsupportedJwk { .. })
        ));
    }
}
