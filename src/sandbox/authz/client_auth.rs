//! Client authentication at the back-channel endpoints: `client_secret_basic`,
//! `client_secret_post` (RFC 6749 §2.3.1, never both at once) and `none`
//! for public clients (RFC 6749 §2.1, client_id alone), each accepted only
//! if the server is configured to (and then advertised, RFC 8414).

use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

use super::config::{AuthServerConfig, SandboxClient};
use super::oauth_error::OAuthError;
use super::params::Params;

/// A client authentication method, by its RFC 8414 / RFC 7591 name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuthMethod {
    SecretBasic,
    SecretPost,
    /// A public client: no secret.
    None,
}

impl ClientAuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuthMethod::SecretBasic => "client_secret_basic",
            ClientAuthMethod::SecretPost => "client_secret_post",
            ClientAuthMethod::None => "none",
        }
    }
}

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
    let (method, client_id, secret) = match (basic, post) {
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
            (ClientAuthMethod::SecretBasic, id, Some(secret))
        }
        (None, Some((id, secret))) => (
            ClientAuthMethod::SecretPost,
            id.to_string(),
            Some(secret.to_string()),
        ),
        (None, None) => match params.get("client_id") {
            Some(id) => (ClientAuthMethod::None, id.to_string(), None),
            None => {
                return Err(OAuthError::invalid_client(
                    "client authentication required: send client_id and client_secret (HTTP Basic or form fields)",
                ));
            }
        },
    };
    if !config.client_auth_methods.contains(&method) {
        return Err(OAuthError::invalid_client(format!(
            "this server does not accept {} client authentication; it accepts: {} (see token_endpoint_auth_methods_supported in its metadata)",
            method.as_str(),
            config
                .client_auth_methods
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let client = config.client(&client_id);
    let Some(secret) = secret else {
        // No secret: only a registered public client gets through.
        return match client {
            Some(client) if client.client_secret.is_none() => Ok(client),
            Some(_) => Err(OAuthError::invalid_client(
                "client authentication required: this client is confidential, send its client_secret",
            )),
            None => Err(OAuthError::invalid_client(
                "unknown client; check client_id",
            )),
        };
    };
    // Compare digests so the time taken does not depend on how many leading
    // characters of a guess are right; compare even for an unknown client so
    // the timing does not reveal which client ids exist.
    let expected = client
        .and_then(|c| c.client_secret.as_ref())
        .map(|s| s.expose())
        .unwrap_or("");
    let secret_ok = digests_equal(expected, &secret);
    match client {
        Some(client) if secret_ok && client.client_secret.is_some() => Ok(client),
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
    fn post_only_server_refuses_basic() {
        let config = AuthServerConfig {
            client_auth_methods: vec![ClientAuthMethod::SecretPost],
            ..AuthServerConfig::default()
        };
        let id = super::super::config::DEMO_CLIENT_ID;
        let secret = super::super::config::DEMO_CLIENT_SECRET;
        let err = authenticate(&config, &basic(id, secret), &params(&[])).expect_err("basic");
        assert_eq!(err.status(), axum::http::StatusCode::UNAUTHORIZED);
        assert!(
            err.error_description.contains("client_secret_post"),
            "{err}"
        );
        let post = params(&[("client_id", id), ("client_secret", secret)]);
        assert!(authenticate(&config, &HeaderMap::new(), &post).is_ok());
    }

    #[test]
    fn public_clients_send_only_their_id() {
        let mut config = AuthServerConfig::default();
        config.clients.push(SandboxClient::public("native-app"));
        let id_only = params(&[("client_id", "native-app")]);
        // Not accepted until the server lists `none`.
        assert!(authenticate(&config, &HeaderMap::new(), &id_only).is_err());
        config.client_auth_methods.push(ClientAuthMethod::None);
        assert!(authenticate(&config, &HeaderMap::new(), &id_only).is_ok());
        // A confidential client cannot skip its secret.
        let demo = params(&[("client_id", super::super::config::DEMO_CLIENT_ID)]);
        assert!(authenticate(&config, &HeaderMap::new(), &demo).is_err());
        // A public client has no secret to send.
        let guessed = params(&[("client_id", "native-app"), ("client_secret", "")]);
        assert!(authenticate(&config, &basic("native-app", ""), &guessed).is_err());
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        assert_eq!(form_decode("a%3Ab+c"), "a:b c");
    }
}
