//! What an upstream reply means for delivery, decided in one place from the
//! reply code, the enhanced status code and the text (STYLE.md section 4:
//! the engine branches on this, not on strings scattered through the code).
//!
//! The OAuth-specific replies providers give are explained here too:
//! Microsoft's `535 5.7.3` / `535 5.7.139` (authentication unsuccessful,
//! e.g. SMTP AUTH disabled for the mailbox), `550 5.7.30` (basic auth
//! disabled), `5.5.127`/`4.7.x` token close to expiry; Google's `535 5.7.8`
//! (credentials rejected) and `534 5.7.9` (application-specific password or
//! OAuth required), `421 4.7.0` / `454 4.7.0` (too many logins).

/// What to do with the recipients a reply is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyClass {
    Accepted,
    /// Try again later (4xx, network).
    Defer,
    /// Refused for good (5xx).
    Bounce,
    /// The upstream refused our credentials: contract 4 (refresh once, retry once).
    AuthFailure,
    /// The provider is throttling this account: back off the whole account.
    Throttled,
}

/// A reply reduced to what classification needs.
#[derive(Debug, Clone, Copy)]
pub struct ReplyFacts<'a> {
    pub code: u16,
    pub enhanced: Option<(u8, u16, u16)>,
    pub text: &'a str,
}

pub fn classify(reply: ReplyFacts<'_>) -> ReplyClass {
    let text = reply.text.to_ascii_lowercase();
    if (200..400).contains(&reply.code) {
        return ReplyClass::Accepted;
    }
    let throttling = reply.code == 421
        || text.contains("too many")
        || text.contains("rate limit")
        || text.contains("throttl")
        || text.contains("try again later")
        || matches!(
            reply.enhanced,
            Some((4, 7, 0)) | Some((4, 4, 2)) | Some((4, 3, 2))
        );
    if (400..500).contains(&reply.code) && throttling {
        return ReplyClass::Throttled;
    }
    let auth = matches!(reply.code, 530 | 534 | 535 | 454) && !text.contains("send as")
        || matches!(
            reply.enhanced,
            Some((5, 7, 8)) | Some((5, 7, 3)) | Some((5, 7, 139))
        );
    if auth {
        return ReplyClass::AuthFailure;
    }
    if (400..500).contains(&reply.code) {
        ReplyClass::Defer
    } else {
        ReplyClass::Bounce
    }
}

/// A sentence for the operator about a reply the provider gave, when we
/// know what it means and what to do.
pub fn explain(reply: ReplyFacts<'_>) -> Option<&'static str> {
    let text = reply.text.to_ascii_lowercase();
    Some(match (reply.code, reply.enhanced) {
        (_, Some((5, 7, 139))) | (535, Some((5, 7, 3))) => {
            "Microsoft refused the token: SMTP AUTH may be disabled for the mailbox (Set-CASMailbox -SmtpClientAuthenticationDisabled $false), the app may lack SMTP.Send / SMTP.SendAsApp, or the service principal may not be registered in Exchange (New-ServicePrincipal) with rights on the mailbox"
        }
        (550, Some((5, 7, 30))) => {
            "Microsoft says basic authentication is disabled: oxirelay must use OAuth for this account (check provider = \"microsoft\" and sasl = \"xoauth2\")"
        }
        (535, Some((5, 7, 8)))
            if text.contains("username and password") || text.contains("badcredentials") =>
        {
            "Google refused the credentials: the token's account must match user, and the grant must include https://mail.google.com/"
        }
        (534, Some((5, 7, 9))) => {
            "Google requires OAuth or an app password for this account: use provider = \"google\" with an OAuth grant"
        }
        (554, Some((5, 2, 0))) | (550, Some((5, 7, 60)))
            if text.contains("sendasdenied") || text.contains("send as") =>
        {
            "The mailbox is not allowed to send as the From address: grant Send As on the shared mailbox to the account's user, or send from the account's own address"
        }
        _ if text.contains("token will expire soon") || text.contains("5.5.127") => {
            "The provider refused a token close to expiry; oxirelay refreshes earlier (refresh_skew_secs) and retries"
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(code: u16, enhanced: Option<(u8, u16, u16)>, text: &str) -> ReplyFacts<'_> {
        ReplyFacts {
            code,
            enhanced,
            text,
        }
    }

    #[test]
    fn the_usual_replies() {
        assert_eq!(
            classify(facts(250, Some((2, 0, 0)), "OK")),
            ReplyClass::Accepted
        );
        assert_eq!(
            classify(facts(451, Some((4, 3, 0)), "local error")),
            ReplyClass::Defer
        );
        assert_eq!(
            classify(facts(550, Some((5, 1, 1)), "no such user")),
            ReplyClass::Bounce
        );
        assert_eq!(
            classify(facts(421, Some((4, 3, 2)), "too many connections")),
            ReplyClass::Throttled
        );
        assert_eq!(
            classify(facts(452, Some((4, 5, 3)), "too many recipients")),
            ReplyClass::Throttled
        );
        assert_eq!(
            classify(facts(454, Some((4, 7, 0)), "Too many login attempts")),
            ReplyClass::Throttled
        );
        assert_eq!(
            classify(facts(535, Some((5, 7, 3)), "Authentication unsuccessful")),
            ReplyClass::AuthFailure
        );
        assert_eq!(
            classify(facts(
                535,
                Some((5, 7, 8)),
                "Username and Password not accepted"
            )),
            ReplyClass::AuthFailure
        );
        assert_eq!(
            classify(facts(554, Some((5, 7, 1)), "relay denied")),
            ReplyClass::Bounce
        );
    }

    #[test]
    fn provider_oauth_replies_are_explained() {
        assert!(
            explain(facts(535, Some((5, 7, 3)), "Authentication unsuccessful"))
                .expect("known")
                .contains("SMTP AUTH")
        );
        assert!(
            explain(facts(
                550,
                Some((5, 7, 30)),
                "Basic authentication is not supported"
            ))
            .is_some()
        );
        assert!(
            explain(facts(
                534,
                Some((5, 7, 9)),
                "Application-specific password required"
            ))
            .is_some()
        );
        assert!(explain(facts(250, None, "OK")).is_none());
    }
}
