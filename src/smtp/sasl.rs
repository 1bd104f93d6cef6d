//! SASL mechanisms for SMTP AUTH, in both directions: the client encodes what
//! the server decodes, in one place, so the two can never drift apart.
//!
//! - XOAUTH2 (Google's and Microsoft's format): `user=U\x01auth=Bearer T\x01\x01`.
//! - OAUTHBEARER (RFC 7628): a gs2 header `n,a=U,` then `\x01`-separated
//!   key=value pairs with `auth=Bearer T`, closed by `\x01\x01`.
//! - PLAIN (RFC 4616) and LOGIN (the de-facto two-prompt mechanism) for
//!   local users of the submission listener.
//!
//! Written by hand: mail-send's OAUTHBEARER lacks the gs2 header, and the
//! server-side decoders exist in no maintained crate; each is a few lines.
//! Everything here works on raw bytes; base64 is the caller's framing.

use crate::secret::Secret;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use std::fmt;

/// The mechanisms oxirelay speaks, as named on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mechanism {
    #[serde(rename = "xoauth2")]
    XOAuth2,
    #[serde(rename = "oauthbearer")]
    OAuthBearer,
    Plain,
    Login,
}

impl Mechanism {
    pub fn wire_name(self) -> &'static str {
        match self {
            Mechanism::XOAuth2 => "XOAUTH2",
            Mechanism::OAuthBearer => "OAUTHBEARER",
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
        }
    }

    pub fn from_wire_name(name: &str) -> Option<Self> {
        match name.to_ascii_uppercase().as_str() {
            "XOAUTH2" => Some(Mechanism::XOAuth2),
            "OAUTHBEARER" => Some(Mechanism::OAuthBearer),
            "PLAIN" => Some(Mechanism::Plain),
            "LOGIN" => Some(Mechanism::Login),
            _ => None,
        }
    }

    pub fn is_oauth(self) -> bool {
        matches!(self, Mechanism::XOAuth2 | Mechanism::OAuthBearer)
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.wire_name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    #[error("the SASL response is not valid base64")]
    NotBase64,
    #[error("the SASL response is not valid UTF-8")]
    NotUtf8,
    #[error("the {mechanism} response is malformed: {detail}")]
    Malformed {
        mechanism: Mechanism,
        detail: &'static str,
    },
}

/// What an OAuth mechanism carries: the mailbox and its bearer token.
#[derive(Debug, Clone)]
pub struct BearerCredentials {
    pub user: String,
    pub token: Secret,
}

/// What PLAIN and LOGIN carry.
#[derive(Debug, Clone)]
pub struct PasswordCredentials {
    pub authzid: Option<String>,
    pub user: String,
    pub password: Secret,
}

/// Where the OAUTHBEARER client is connecting (RFC 7628 `host` and `port`).
#[derive(Debug, Clone)]
pub struct ServerName<'a> {
    pub host: &'a str,
    pub port: u16,
}

pub fn encode_base64(raw: &[u8]) -> String {
    BASE64.encode(raw)
}

pub fn decode_base64(text: &[u8]) -> Result<Vec<u8>, SaslError> {
    let trimmed = text.trim_ascii();
    if trimmed == b"=" {
        // RFC 4954: "=" stands for an empty initial response.
        return Ok(Vec::new());
    }
    BASE64.decode(trimmed).map_err(|_| SaslError::NotBase64)
}

/// The client's XOAUTH2 message. The result contains the token: it goes
/// straight into a base64 line on an encrypted connection and nowhere else.
pub fn encode_xoauth2(credentials: &BearerCredentials) -> Secret {
    Secret::new(format!(
        "user={}\x01auth=Bearer {}\x01\x01",
        credentials.user,
        credentials.token.expose()
    ))
}

pub fn decode_xoauth2(raw: &[u8]) -> Result<BearerCredentials, SaslError> {
    let text = std::str::from_utf8(raw).map_err(|_| SaslError::NotUtf8)?;
    let malformed = |detail| SaslError::Malformed {
        mechanism: Mechanism::XOAuth2,
        detail,
    };
    let body = text
        .strip_suffix("\x01\x01")
        .ok_or(malformed("missing the closing \\x01\\x01"))?;
    let mut user = None;
    let mut token = None;
    for field in body.split('\x01') {
        if let Some(value) = field.strip_prefix("user=") {
            user = Some(value.to_string());
        } else if let Some(value) = field.strip_prefix("auth=") {
            token = Some(parse_bearer(value).ok_or(malformed("auth is not \"Bearer <token>\""))?);
        }
    }
    Ok(BearerCredentials {
        user: user
            .filter(|u| !u.is_empty())
            .ok_or(malformed("missing user="))?,
        token: token.ok_or(malformed("missing auth="))?,
    })
}

/// The client's OAUTHBEARER message (RFC 7628 section 3.1).
pub fn encode_oauthbearer(credentials: &BearerCredentials, server: &ServerName<'_>) -> Secret {
    Secret::new(format!(
        "n,a={},\x01host={}\x01port={}\x01auth=Bearer {}\x01\x01",
        escape_saslname(&credentials.user),
        server.host,
        server.port,
        credentials.token.expose()
    ))
}

pub fn decode_oauthbearer(raw: &[u8]) -> Result<BearerCredentials, SaslError> {
    let text = std::str::from_utf8(raw).map_err(|_| SaslError::NotUtf8)?;
    let malformed = |detail| SaslError::Malformed {
        mechanism: Mechanism::OAuthBearer,
        detail,
    };
    let (gs2_header, rest) = text
        .split_once('\x01')
        .ok_or(malformed("missing the gs2 header"))?;
    let body = rest
        .strip_suffix("\x01\x01")
        .or_else(|| (rest == "\x01").then_some(""))
        .ok_or(malformed("missing the closing \\x01\\x01"))?;
    // gs2 header: cb-flag "," [ "a=" saslname ] ","; channel binding is not supported.
    let mut parts = gs2_header.splitn(3, ',');
    let flag = parts.next().unwrap_or_default();
    if flag != "n" && flag != "y" {
        return Err(malformed(
            "channel binding is not supported; the gs2 flag must be n or y",
        ));
    }
    let authzid = parts.next().ok_or(malformed("gs2 header is incomplete"))?;
    if parts.next() != Some("") {
        return Err(malformed("gs2 header must end with a comma"));
    }
    let user = match authzid.strip_prefix("a=") {
        Some(name) => Some(unescape_saslname(name).ok_or(malformed("bad escape in the authzid"))?),
        None if authzid.is_empty() => None,
        None => return Err(malformed("gs2 authzid must start with a=")),
    };
    let mut token = None;
    for field in body.split('\x01').filter(|f| !f.is_empty()) {
        if let Some(value) = field.strip_prefix("auth=") {
            token = Some(parse_bearer(value).ok_or(malformed("auth is not \"Bearer <token>\""))?);
        }
    }
    Ok(BearerCredentials {
        user: user.ok_or(malformed("missing the user (a=) in the gs2 header"))?,
        token: token.ok_or(malformed("missing auth="))?,
    })
}

pub fn encode_plain(credentials: &PasswordCredentials) -> Secret {
    Secret::new(format!(
        "{}\0{}\0{}",
        credentials.authzid.as_deref().unwrap_or(""),
        credentials.user,
        credentials.password.expose()
    ))
}

pub fn decode_plain(raw: &[u8]) -> Result<PasswordCredentials, SaslError> {
    let text = std::str::from_utf8(raw).map_err(|_| SaslError::NotUtf8)?;
    let malformed = |detail| SaslError::Malformed {
        mechanism: Mechanism::Plain,
        detail,
    };
    let mut parts = text.splitn(3, '\0');
    let (Some(authzid), Some(user), Some(password)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("expected authzid NUL user NUL password"));
    };
    if user.is_empty() {
        return Err(malformed("the user is empty"));
    }
    Ok(PasswordCredentials {
        authzid: (!authzid.is_empty()).then(|| authzid.to_string()),
        user: user.to_string(),
        password: Secret::new(password),
    })
}

/// The `334` prompts of the LOGIN mechanism, already base64 as sent.
pub const LOGIN_USERNAME_PROMPT: &str = "VXNlcm5hbWU6"; // "Username:"
pub const LOGIN_PASSWORD_PROMPT: &str = "UGFzc3dvcmQ6"; // "Password:"

/// RFC 7628 section 3.2.2: the JSON a server sends (base64, in a 334) when
/// a bearer token is refused. The client answers with `\x01` (OAUTHBEARER)
/// or an empty line (XOAUTH2) and the server then sends the final failure.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OAuthErrorStatus {
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schemes: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(
        rename = "openid-configuration",
        skip_serializing_if = "Option::is_none"
    )]
    pub openid_configuration: Option<String>,
}

impl OAuthErrorStatus {
    pub fn to_base64(&self) -> String {
        // Serialising a struct of strings cannot fail.
        let json = serde_json::to_vec(self).expect("OAuthErrorStatus serialises");
        encode_base64(&json)
    }

    pub fn from_base64(text: &[u8]) -> Option<Self> {
        serde_json::from_slice(&decode_base64(text).ok()?).ok()
    }
}

/// What the client sends after an error challenge to receive the final reply.
pub fn error_challenge_ack(mechanism: Mechanism) -> &'static str {
    match mechanism {
        Mechanism::OAuthBearer => "AQ==", // base64 of a single %x01
        _ => "",
    }
}

fn parse_bearer(value: &str) -> Option<Secret> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| Secret::new(token))
}

/// RFC 5801 saslname: ',' and '=' are escaped as =2C and =3D.
fn escape_saslname(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

fn unescape_saslname(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(pos) = rest.find('=') {
        out.push_str(&rest[..pos]);
        match rest.get(pos + 1..pos + 3) {
            Some("2C") => out.push(','),
            Some("3D") => out.push('='),
            _ => return None,
        }
        rest = &rest[pos + 3..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bearer(user: &str, token: &str) -> BearerCredentials {
        BearerCredentials {
            user: user.into(),
            token: Secret::new(token),
        }
    }

    #[test]
    fn xoauth2_round_trip_and_google_example() {
        let encoded = encode_xoauth2(&bearer(
            "someuser@example.com",
            "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg",
        ));
        // The example from Google's XOAUTH2 protocol page, base64-encoded.
        assert_eq!(
            encode_base64(encoded.expose().as_bytes()),
            "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
        );
        let decoded = decode_xoauth2(encoded.expose().as_bytes()).expect("decodes");
        assert_eq!(decoded.user, "someuser@example.com");
        assert_eq!(
            decoded.token.expose(),
            "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg"
        );
    }

    #[test]
    fn oauthbearer_matches_rfc7628_example() {
        // RFC 7628 section 4.1.
        let encoded = encode_oauthbearer(
            &bearer(
                "user@example.com",
                "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==",
            ),
            &ServerName {
                host: "server.example.com",
                port: 143,
            },
        );
        assert_eq!(
            encoded.expose(),
            "n,a=user@example.com,\x01host=server.example.com\x01port=143\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01"
        );
        let decoded = decode_oauthbearer(encoded.expose().as_bytes()).expect("decodes");
        assert_eq!(decoded.user, "user@example.com");
        assert_eq!(
            decoded.token.expose(),
            "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg=="
        );
    }

    #[test]
    fn oauthbearer_escapes_commas_and_equals_in_the_user() {
        let encoded =
            encode_oauthbearer(&bearer("a,b=c@x", "t"), &ServerName { host: "h", port: 1 });
        assert!(encoded.expose().starts_with("n,a=a=2Cb=3Dc@x,"));
        assert_eq!(
            decode_oauthbearer(encoded.expose().as_bytes())
                .expect("decodes")
                .user,
            "a,b=c@x"
        );
    }

    #[test]
    fn malformed_inputs_are_refused_not_panicked_on() {
        for raw in [
            &b""[..],
            b"user=x\x01auth=Bearer t\x01",
            b"user=\x01auth=Bearer t\x01\x01",
            b"user=x\x01auth=Basic t\x01\x01",
            b"\xff\xfe",
        ] {
            assert!(decode_xoauth2(raw).is_err(), "{raw:?}");
        }
        for raw in [
            &b""[..],
            b"p=tls-unique,a=u,\x01auth=Bearer t\x01\x01",
            b"n,a=u\x01auth=Bearer t\x01\x01",
            b"n,a=u=ZZ,\x01auth=Bearer t\x01\x01",
            b"n,,\x01auth=Bearer t\x01\x01",
            b"n,a=u,\x01host=h\x01\x01",
        ] {
            assert!(decode_oauthbearer(raw).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn plain_round_trip() {
        let credentials = PasswordCredentials {
            authzid: None,
            user: "scanner".into(),
            password: Secret::new("pa\0ss"),
        };
        let decoded =
            decode_plain(encode_plain(&credentials).expose().as_bytes()).expect("decodes");
        assert_eq!(decoded.user, "scanner");
        assert_eq!(decoded.password.expose(), "pa\0ss");
        assert!(decode_plain(b"only-one-field").is_err());
    }

    #[test]
    fn error_status_round_trip_uses_rfc_field_names() {
        let status = OAuthErrorStatus {
            status: "invalid_token".into(),
            schemes: Some("bearer".into()),
            scope: Some("smtp".into()),
            openid_configuration: None,
        };
        let json = String::from_utf8(decode_base64(status.to_base64().as_bytes()).expect("b64"))
            .expect("utf8");
        assert_eq!(
            json,
            r#"{"status":"invalid_token","schemes":"bearer","scope":"smtp"}"#
        );
        assert_eq!(
            OAuthErrorStatus::from_base64(status.to_base64().as_bytes()),
            Some(status)
        );
    }

    /// Bytes near the SASL formats: their separators, keywords and escapes,
    /// with now and then any bytes at all.
    fn sasl_bytes() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            4 => prop::sample::select(vec![
                &b"\x01"[..], b"\x01\x01", b"\0", b"user=", b"auth=", b"Bearer ", b"bearer",
                b"Basic ", b"n,", b"y,", b"p=tls-unique,", b"a=", b",", b"=", b"=2C", b"=3D",
                b"=Z", b"=\xc3\xa9", b"host=", b"port=", b" ", b"\t", b"u@x", b"tok", b"\xff",
                b"\xc3\xa9", b"*",
            ])
            .prop_map(<[u8]>::to_vec),
            1 => prop::collection::vec(any::<u8>(), 0..8),
        ];
        prop::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
    }

    /// Every place the server reads a SASL line.
    fn steps() -> Vec<crate::smtp::server::sasl_exchange::SaslStep> {
        use crate::smtp::server::sasl_exchange::SaslStep;
        let mut steps: Vec<SaslStep> = [
            Mechanism::XOAuth2,
            Mechanism::OAuthBearer,
            Mechanism::Plain,
            Mechanism::Login,
        ]
        .into_iter()
        .map(SaslStep::Response)
        .collect();
        steps.push(SaslStep::LoginPassword { user: "u".into() });
        steps
    }

    fn bearer_of(
        progress: crate::smtp::server::sasl_exchange::SaslProgress,
    ) -> Option<(String, String)> {
        use crate::smtp::server::Credentials;
        use crate::smtp::server::sasl_exchange::SaslProgress;
        match progress {
            SaslProgress::Complete(Credentials::Bearer { user, token, .. }) => {
                Some((user, token.expose().to_string()))
            }
            _ => None,
        }
    }

    /// A token as providers issue them: base64url, JWT dots, opaque `ya29.`.
    const TOKEN: &str = "[A-Za-z0-9._~+/=-]{1,80}";
    /// A SASL user: anything but the separators of the format.
    const USER: &str = "[^\\x00\\x01]{0,24}";

    proptest! {
        #![proptest_config(crate::fuzzing::config(1024))]

        /// No input makes a decoder panic, raw or base64-framed, nor the
        /// server's exchange at any step; what a decoder accepts is whole
        /// (a user where the format requires one, a token without blanks).
        #[test]
        fn fuzz_sasl_decoders_never_panic(raw in sasl_bytes()) {
            let framed = encode_base64(&raw);
            prop_assert_eq!(decode_base64(framed.as_bytes()), Ok(raw.clone()));
            for input in [&raw[..], framed.as_bytes()] {
                if let Ok(credentials) = decode_xoauth2(input) {
                    prop_assert!(!credentials.user.is_empty());
                    let token = credentials.token.expose();
                    prop_assert!(!token.is_empty() && token.trim() == token);
                }
                if let Ok(credentials) = decode_oauthbearer(input) {
                    let token = credentials.token.expose();
                    prop_assert!(!token.is_empty() && token.trim() == token);
                }
                if let Ok(credentials) = decode_plain(input) {
                    prop_assert!(!credentials.user.is_empty());
                }
                let _ = decode_base64(input);
                let _ = OAuthErrorStatus::from_base64(input);
                for step in steps() {
                    let _ = crate::smtp::server::sasl_exchange::continue_with(&step, input);
                }
                let text = String::from_utf8_lossy(input);
                for mechanism in [Mechanism::XOAuth2, Mechanism::OAuthBearer, Mechanism::Plain, Mechanism::Login] {
                    let _ = crate::smtp::server::sasl_exchange::start(mechanism, Some(&text));
                }
            }
        }

        /// What the client encodes, the server decodes to the same user and
        /// token, through the base64 line and the exchange the session runs.
        #[test]
        fn fuzz_sasl_what_the_client_encodes_the_server_decodes(
            user in USER,
            token in TOKEN,
            host in "[a-z0-9.-]{1,30}",
            port in any::<u16>(),
        ) {
            use crate::smtp::server::sasl_exchange::start;
            let credentials = bearer(&user, &token);
            let xoauth2 = encode_base64(encode_xoauth2(&credentials).expose().as_bytes());
            let server = ServerName { host: &host, port };
            let oauthbearer =
                encode_base64(encode_oauthbearer(&credentials, &server).expose().as_bytes());
            let expected = Some((user.clone(), token.clone()));
            // XOAUTH2 has no way to carry an empty user; the server says so.
            let xoauth2_expected = (!user.is_empty()).then(|| (user.clone(), token.clone()));
            prop_assert_eq!(bearer_of(start(Mechanism::XOAuth2, Some(&xoauth2))), xoauth2_expected);
            prop_assert_eq!(bearer_of(start(Mechanism::OAuthBearer, Some(&oauthbearer))), expected);
        }

        #[test]
        fn fuzz_sasl_plain_round_trips_any_password(
            authzid in proptest::option::of("[^\\x00]{1,12}"),
            user in "[^\\x00]{1,24}",
            password in "(\\PC|\\x00){0,40}",
        ) {
            let credentials = PasswordCredentials {
                authzid: authzid.clone(),
                user: user.clone(),
                password: Secret::new(password.clone()),
            };
            let decoded = decode_plain(encode_plain(&credentials).expose().as_bytes());
            let decoded = decoded.map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(decoded.authzid, authzid);
            prop_assert_eq!(decoded.user, user);
            prop_assert_eq!(decoded.password.expose(), password.as_str());
        }
    }

    #[test]
    fn empty_initial_response_marker() {
        assert_eq!(decode_base64(b"=").expect("ok"), Vec::<u8>::new());
        assert_eq!(decode_base64(b"!!").expect_err("bad"), SaslError::NotBase64);
    }
}
