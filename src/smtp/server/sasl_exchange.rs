//! The server's side of one SASL exchange inside AUTH: which `334` to send,
//! when the credentials are complete, and how a cancel (`*`) or a malformed
//! response is answered. The wire formats themselves are decoded by
//! [`crate::smtp::sasl`], shared with the client.

use super::policy::Credentials;
use super::reply::{Reply, standard};
use crate::smtp::sasl::{self, Mechanism};

/// Where an exchange waits for the client's next line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaslStep {
    /// After an empty `334 `: the mechanism's whole response (or LOGIN's user).
    Response(Mechanism),
    /// LOGIN, after `334 UGFzc3dvcmQ6`.
    LoginPassword { user: String },
    /// RFC 7628 section 3.2.3: the error challenge was sent; the client's
    /// next line (`AQ==` or empty) only asks for this final reply.
    ErrorAcknowledgement { final_reply: Reply },
}

#[derive(Debug)]
pub enum SaslProgress {
    /// Send this `334` and wait for a line at `SaslStep`.
    Challenge(Reply, SaslStep),
    /// The credentials are complete; ask the policy.
    Complete(Credentials),
    /// The exchange ended with this reply (cancelled or malformed).
    Failed(Reply),
}

/// Starts an exchange for `AUTH mechanism [initial-response]`.
pub fn start(mechanism: Mechanism, initial_response: Option<&str>) -> SaslProgress {
    let Some(initial) = initial_response else {
        let prompt = match mechanism {
            Mechanism::Login => sasl::LOGIN_USERNAME_PROMPT,
            _ => "",
        };
        return SaslProgress::Challenge(Reply::new(334, prompt), SaslStep::Response(mechanism));
    };
    continue_with(&SaslStep::Response(mechanism), initial.as_bytes())
}

/// Feeds the client's line (without its CRLF) at `step`.
pub fn continue_with(step: &SaslStep, line: &[u8]) -> SaslProgress {
    if line.trim_ascii() == b"*" {
        return SaslProgress::Failed(standard::auth_cancelled());
    }
    if let SaslStep::ErrorAcknowledgement { final_reply } = step {
        // Whatever the client sends after the error challenge (RFC 7628
        // asks for %x01), the exchange has failed.
        return SaslProgress::Failed(final_reply.clone());
    }
    let raw = match sasl::decode_base64(line) {
        Ok(raw) => raw,
        Err(_) => return SaslProgress::Failed(standard::not_base64()),
    };
    let decoded = match step {
        SaslStep::Response(Mechanism::XOAuth2) => {
            sasl::decode_xoauth2(&raw).map(|credentials| Credentials::Bearer {
                mechanism: Mechanism::XOAuth2,
                user: credentials.user,
                token: credentials.token,
            })
        }
        SaslStep::Response(Mechanism::OAuthBearer) => {
            sasl::decode_oauthbearer(&raw).map(|credentials| Credentials::Bearer {
                mechanism: Mechanism::OAuthBearer,
                user: credentials.user,
                token: credentials.token,
            })
        }
        SaslStep::Response(Mechanism::Plain) => sasl::decode_plain(&raw).and_then(|credentials| {
            match &credentials.authzid {
                // Acting for someone else (proxy authorization) is not
                // supported: refuse rather than silently ignore it.
                Some(authzid) if *authzid != credentials.user => Err(sasl::SaslError::Malformed {
                    mechanism: Mechanism::Plain,
                    detail: "an authorization identity different from the user is not supported",
                }),
                _ => Ok(Credentials::Password {
                    mechanism: Mechanism::Plain,
                    user: credentials.user,
                    password: credentials.password,
                }),
            }
        }),
        SaslStep::Response(Mechanism::Login) => {
            return match String::from_utf8(raw) {
                Ok(user) if !user.is_empty() => SaslProgress::Challenge(
                    Reply::new(334, sasl::LOGIN_PASSWORD_PROMPT),
                    SaslStep::LoginPassword { user },
                ),
                _ => SaslProgress::Failed(standard::malformed_sasl(
                    "the LOGIN user name must be non-empty UTF-8",
                )),
            };
        }
        SaslStep::LoginPassword { user } => match String::from_utf8(raw) {
            Ok(password) => Ok(Credentials::Password {
                mechanism: Mechanism::Login,
                user: user.clone(),
                password: crate::secret::Secret::new(password),
            }),
            Err(_) => Err(sasl::SaslError::NotUtf8),
        },
        SaslStep::ErrorAcknowledgement { final_reply } => {
            return SaslProgress::Failed(final_reply.clone());
        }
    };
    match decoded {
        Ok(credentials) => SaslProgress::Complete(credentials),
        Err(error) => SaslProgress::Failed(standard::malformed_sasl(&error.to_string())),
    }
}
