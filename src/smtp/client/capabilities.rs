//! What a server offers, read from its EHLO reply (RFC 5321 section 4.1.1.1
//! and the extensions the client uses: STARTTLS, AUTH, PIPELINING, SIZE,
//! 8BITMIME, SMTPUTF8). Pure: a [`Reply`] in, [`Capabilities`] out.

use super::reply::Reply;
use crate::smtp::sasl::Mechanism;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub starttls: bool,
    pub pipelining: bool,
    /// `SIZE` was advertised; `Some(0)` means "no fixed limit" (RFC 1870).
    pub size: Option<u64>,
    pub eight_bit_mime: bool,
    pub smtp_utf8: bool,
    /// SASL mechanism names as advertised, upper-cased.
    pub auth: Vec<String>,
}

impl Capabilities {
    pub fn from_ehlo(reply: &Reply) -> Self {
        let mut capabilities = Capabilities::default();
        // The first line is the server's name and greeting, not a keyword.
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            let keyword = keyword.to_ascii_uppercase();
            match keyword.as_str() {
                "STARTTLS" => capabilities.starttls = true,
                "PIPELINING" => capabilities.pipelining = true,
                "8BITMIME" => capabilities.eight_bit_mime = true,
                "SMTPUTF8" => capabilities.smtp_utf8 = true,
                "SIZE" => {
                    capabilities.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0))
                }
                // `AUTH=PLAIN LOGIN` is the pre-RFC form some servers still send.
                "AUTH" => capabilities.add_mechanisms(words),
                _ if keyword.starts_with("AUTH=") => {
                    let first = line.get("AUTH=".len()..).unwrap_or_default();
                    capabilities.add_mechanisms(first.split_ascii_whitespace());
                }
                _ => {}
            }
        }
        capabilities
    }

    fn add_mechanisms<'a>(&mut self, names: impl Iterator<Item = &'a str>) {
        for name in names {
            let name = name.to_ascii_uppercase();
            if !self.auth.contains(&name) {
                self.auth.push(name);
            }
        }
    }

    pub fn offers_auth(&self, mechanism: Mechanism) -> bool {
        self.auth.iter().any(|m| m == mechanism.wire_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::client::reply::ReplyReader;

    fn ehlo(bytes: &[u8]) -> Capabilities {
        let mut reader = ReplyReader::new();
        reader.feed(bytes);
        Capabilities::from_ehlo(&reader.next_reply().expect("valid").expect("complete"))
    }

    #[test]
    fn office365_after_starttls() {
        let caps = ehlo(
            b"250-SN4PR0501CA0001.outlook.office365.com Hello [203.0.113.7]\r\n250-SIZE 157286400\r\n250-PIPELINING\r\n250-DSN\r\n250-ENHANCEDSTATUSCODES\r\n250-AUTH LOGIN XOAUTH2\r\n250-8BITMIME\r\n250-BINARYMIME\r\n250-CHUNKING\r\n250 SMTPUTF8\r\n",
        );
        assert_eq!(
            caps,
            Capabilities {
                starttls: false,
                pipelining: true,
                size: Some(157_286_400),
                eight_bit_mime: true,
                smtp_utf8: true,
                auth: vec!["LOGIN".into(), "XOAUTH2".into()],
            }
        );
        assert!(caps.offers_auth(Mechanism::XOAuth2));
        assert!(!caps.offers_auth(Mechanism::OAuthBearer));
    }

    #[test]
    fn keywords_are_case_insensitive_and_old_auth_form_is_read() {
        let caps = ehlo(
            b"250-mx\r\n250-starttls\r\n250-AUTH=oauthbearer xoauth2\r\n250-Size\r\n250 auth PLAIN OAUTHBEARER\r\n",
        );
        assert!(caps.starttls);
        assert_eq!(caps.size, Some(0));
        assert_eq!(caps.auth, ["OAUTHBEARER", "XOAUTH2", "PLAIN"]);
        assert!(caps.offers_auth(Mechanism::OAuthBearer));
    }

    #[test]
    fn greeting_line_is_not_a_keyword() {
        let caps = ehlo(b"250 STARTTLS\r\n");
        assert!(!caps.starttls);
    }
}
