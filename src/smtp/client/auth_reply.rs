//! Which replies to AUTH are a verdict on the credential, and which are
//! not (DESIGN.md contract 4). Only a verdict may cost the account its
//! token: a syntax or line-length reply, a `421`, a `454` "try again", a
//! dropped connection say nothing about the token, and refreshing on them
//! would both hide the real problem and spend the provider's patience.
//!
//! A verdict is:
//! - the RFC 7628 error challenge (the server decoded the token and said
//!   why it refuses it), whatever final reply follows;
//! - `535` (RFC 4954: authentication credentials invalid) and `534`
//!   (mechanism too weak: Google's "application-specific password
//!   required", "please log in via your web browser");
//! - a provider's token-specific reply in another class: Exchange's
//!   `501 5.5.127 Invalid XOAUTH2 auth data - Token will expire soon`.

use super::reply::Reply;

/// Enhanced status codes that speak about the token whatever the reply's
/// basic code is.
const TOKEN_SPECIFIC_STATUS: &[(u8, u16, u16)] = &[
    // Exchange Online refuses a token close to its expiry with 501 5.5.127.
    (5, 5, 127),
];

/// Whether `reply`, the final reply of an AUTH exchange, refuses the
/// credential. `error_challenge` says the server sent an RFC 7628 error
/// challenge before it.
pub fn refuses_credential(reply: &Reply, error_challenge: bool) -> bool {
    if reply.is_positive() {
        return false;
    }
    if error_challenge {
        return true;
    }
    if matches!(reply.code, 534 | 535) {
        return true;
    }
    if reply
        .enhanced
        .is_some_and(|status| TOKEN_SPECIFIC_STATUS.contains(&status))
    {
        return true;
    }
    // Exchange sometimes omits the enhanced code from the status position
    // and puts it in the text.
    reply.text().contains("5.5.127")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, enhanced: Option<(u8, u16, u16)>, text: &str) -> Reply {
        Reply {
            code,
            enhanced,
            lines: vec![text.into()],
        }
    }

    #[test]
    fn verdicts_on_the_token() {
        assert!(refuses_credential(
            &reply(535, Some((5, 7, 3)), "Authentication unsuccessful"),
            false
        ));
        assert!(refuses_credential(
            &reply(
                534,
                Some((5, 7, 9)),
                "Application-specific password required"
            ),
            false
        ));
        assert!(refuses_credential(
            &reply(
                501,
                Some((5, 5, 127)),
                "Invalid XOAUTH2 auth data - Token will expire soon"
            ),
            false
        ));
        // The error challenge decides, whatever the final code.
        assert!(refuses_credential(&reply(501, None, "auth failed"), true));
    }

    #[test]
    fn replies_that_do_not_judge_the_token() {
        for (code, enhanced, text) in [
            (500, Some((5, 5, 2)), "Line too long"),
            (555, Some((5, 5, 2)), "Syntax error, command line too long"),
            (501, Some((5, 5, 4)), "Invalid argument"),
            (504, Some((5, 5, 4)), "Unrecognized authentication type"),
            (421, Some((4, 7, 0)), "Try again later, closing connection"),
            (
                454,
                Some((4, 7, 0)),
                "Too many login attempts, please try again later",
            ),
            (
                432,
                Some((4, 3, 2)),
                "STOREDRV.ClientSubmit; sender thread limit exceeded",
            ),
        ] {
            assert!(
                !refuses_credential(&reply(code, enhanced, text), false),
                "{code} {text}"
            );
        }
        assert!(!refuses_credential(
            &reply(235, Some((2, 7, 0)), "ok"),
            false
        ));
    }
}
