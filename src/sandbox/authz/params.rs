//! Form parameters of an OAuth request, parsed by hand so that a malformed
//! or duplicated parameter becomes an RFC 6749 `invalid_request` (and the
//! request is still counted) instead of a framework rejection.

use std::collections::HashMap;

use super::oauth_error::OAuthError;

#[derive(Debug, Default)]
pub(crate) struct Params(HashMap<String, String>);

impl Params {
    /// From an `application/x-www-form-urlencoded` body or query string.
    pub(crate) fn parse(body: &[u8]) -> Result<Self, OAuthError> {
        Self::from_pairs(
            url::form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())),
        )
    }

    pub(crate) fn from_pairs(
        pairs: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, OAuthError> {
        let mut map = HashMap::new();
        for (key, value) in pairs {
            // RFC 6749 §3.1: parameters must not be included more than once.
            if map.insert(key.clone(), value).is_some() {
                return Err(OAuthError::invalid_request(format!(
                    "parameter {key} appears more than once"
                )));
            }
        }
        Ok(Params(map))
    }

    /// The value, treating an empty one as absent (RFC 6749 §3.1).
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub(crate) fn require(&self, key: &str) -> Result<&str, OAuthError> {
        self.get(key)
            .ok_or_else(|| OAuthError::invalid_request(format!("missing parameter {key}")))
    }
}
