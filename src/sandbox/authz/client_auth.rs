//! Client authentication at the back-channel endpoints: `client_secret_basic`
//! or `client_secret_post` (RFC 6749 §2.3.1), never both at once.

use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

use super::config::{AuthServerConfig, SandboxClient};
use super::oauth_error::OAuthError;
use super::params::Params;

/// The authenticated client, or `invalid_client`.
pub(crate) fn authenticate<'c>(
    config: &'c AuthServerConfig,
    headers: &HeaderMap,
    params: &Params,
) -> Result<&'c SandboxClient, OAuthError> {
    let basic = basic_credentials(headers)?;
    let post = params
        .get("client_secret")
        .map(|secret| (params.get("client_id").unwrap_or_default(), secret));
    let (client_id, secret) = match (basic, post) {
        (Some(_), Some(_)) => {
            return Err(OAuthError::invalid_request(
                "use one client authentication method: Authorization: Basic or client_secret in the body, not both",
            ));
        }
        (Some((id, secret)), None) => {
            // RFC 6749 §2.3.1: a client_id in the body must agree.
            if params.get("client_id").is_some_and(|body_id| body_id != id) {
                return Err(OAuthError::invalid_request(
                    "client_id in the body differs from the one in Authorization",
                ));
            }
            (id, secret)
        }
        (None, Some((id, secret))) => (id.to_string(), secret.to_string()),
        (None, None) => {
            return Err(OAuthError::invalid_client(
                "client authentication required: send client_id and client_secret (HTTP Basic or form fields)",
            ));
        }
    };
    let client = config.client(&client_id);
    // Compare digests so the time taken does not depend on how many leading
    // characters of a guess are right; compare even for an unknown client so
    // the timing does not reveal which client ids exist.
    let expected = client.map(|c| c.client_secret.expose()).unwrap_or("");
    let secret_ok = digests_equal(expected, &secret);
    match client {
        Some(client) if secret_ok => Ok(client),
        _ => Err(OAuthError::invalid_client(
            "unknown client or wrong client secret; check client_id and client_secret",
        )),
    }
}

fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = || OAuthError::invalid_client("malformed Authorization: Basic header");
    let value = value.to_str().map_err(|_| malformed())?;
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return Err(malformed());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(OAuthError::invalid_client(
            "only HTTP Basic client authentication is supported in the Authorization header",
        ));
    }
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| malformed())?;
    let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(malformed)?;
    // Both halves are form-urlencoded before base64 (RFC 6749 §2.3.1).
    Ok(Some((form_decode(id), form_decode(secret))))
}

fn form_decode(value: &str) -> String {
    url::form_urlencoded::parse(format!("v={value}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn digests_equal(a: &str, b: &str) -> bool {
    let (a, b) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .expect("params")
    }

    fn basic(id: &str, secret: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let value = format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&value).expect("hv"),
        );
        headers
    }

    #[test]
    fn basic_and_post_both_work() {
        let config = AuthServerConfig::default();
        let id = super::super::config::DEMO_CLIENT_ID;
        let secret = super::super::config::DEMO_CLIENT_SECRET;
        assert!(authenticate(&config, &basic(id, secret), &params(&[])).is_ok());
        let post = params(&[("client_id", id), ("client_secret", secret)]);
        assert!(authenticate(&config, &HeaderMap::new(), &post).is_ok());
    }

    #[test]
    fn wrong_secret_both_methods_or_none_are_refused() {
        let config = AuthServerConfig::default();
        let id = super::super::config::DEMO_CLIENT_ID;
        let err = authenticate(&config, &basic(id, "nope"), &params(&[])).expect_err("wrong");
        assert_eq!(err.status(), axum::http::StatusCode::UNAUTHORIZED);
        let both = params(&[("client_id", id), ("client_secret", "x")]);
        assert!(authenticate(&config, &basic(id, "x"), &both).is_err());
        assert!(authenticate(&config, &HeaderMap::new(), &params(&[])).is_err());
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        assert_eq!(form_decode("a%3Ab+c"), "a:b c");
    }
}
