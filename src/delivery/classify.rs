//! What an upstream reply means for delivery, decided in one place from the
//! reply code, the enhanced status code and the text (STYLE.md section 4:
//! the engine branches on this, not on strings scattered through the code).
//!
//! The providers' own replies are rows of [`PROVIDER_REPLIES`], checked
//! first (a quirk is a row, not a branch): each says what the reply means
//! for the account and what the operator should do. Everything else falls
//! to the generic rules: 2xx/3xx accepted, 421 and 4xx with throttling
//! words throttled, 530/534/535 and 5.7.3/5.7.8 a refused token, other 4xx
//! deferred, other 5xx bounced.

use std::time::Duration;

/// What to do with the recipients a reply is about, and with the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyClass {
    Accepted,
    /// Try again later (4xx, network).
    Defer,
    /// Refused for good (5xx).
    Bounce,
    /// The upstream refused our credentials: contract 4 (refresh once, retry once).
    AuthFailure,
    /// The provider refused a token it says is close to expiry: refresh
    /// and retry; the account is fine.
    TokenNearExpiry,
    /// The provider is throttling this account: back off the whole account
    /// (for `pause`, or the engine's default), keep the mail queued.
    Throttled {
        pause: Option<Duration>,
    },
    /// A sending quota is used up: the account pauses until its window has
    /// passed; the mail stays queued, never bounced.
    QuotaExceeded {
        pause: Duration,
    },
    /// An administrator must change a setting at the provider; no new
    /// token helps. The mail stays queued.
    NeedsAdmin(AdminStep),
}

/// A change only the provider's administrator can make, with the exact
/// step. Its [`AdminStep::instruction`] becomes the account's state reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminStep {
    /// Exchange Online: SMTP AUTH switched off for the mailbox or tenant
    /// (`535 5.7.139 ... SmtpClientAuthentication is disabled`).
    SmtpAuthDisabled,
    /// Entra security defaults block SMTP AUTH (`535 5.7.139 ... security
    /// defaults policy`).
    SecurityDefaults,
    /// Exchange Online: the mailbox may not send as the From address
    /// (`550 5.7.60`, `554 5.2.0 ... SendAsDenied`).
    SendAsDenied,
    /// Microsoft Graph: the app lacks `Mail.Send`, or an application access
    /// policy / RBAC scope keeps it from this mailbox (`403 ErrorAccessDenied`).
    GraphAccessDenied,
    /// The Gmail API: the token lacks the send scope, or a service account's
    /// domain-wide delegation does not list it (`403 insufficientPermissions`).
    GmailInsufficientPermissions,
}

impl AdminStep {
    /// The first words of [`AdminStep::instruction`]: how the account's
    /// stored state reason is recognised as this step's.
    pub fn headline(self) -> &'static str {
        match self {
            AdminStep::SmtpAuthDisabled => "Exchange Online has SMTP AUTH turned off",
            AdminStep::SecurityDefaults => "Entra security defaults block SMTP AUTH",
            AdminStep::SendAsDenied => "Exchange Online refuses to let the mailbox send as",
            AdminStep::GraphAccessDenied => "Microsoft Graph denies this app Mail.Send",
            AdminStep::GmailInsufficientPermissions => {
                "The Gmail API refuses the token's permissions"
            }
        }
    }

    /// What the operator must do, for the account whose SASL user is `user`.
    pub fn instruction(self, user: &str) -> String {
        let headline = self.headline();
        match self {
            AdminStep::SmtpAuthDisabled => format!(
                "{headline} for {user} or for the whole tenant. An Exchange administrator turns it on for the mailbox with \
                 `Set-CASMailbox -Identity {user} -SmtpClientAuthenticationDisabled $false` \
                 (Microsoft 365 admin center: Users > Active users > {user} > Mail > Manage email apps > Authenticated SMTP), \
                 and for the tenant with `Set-TransportConfig -SmtpClientAuthenticationDisabled $false` if the mailbox setting is empty. \
                 The change takes up to an hour to apply; the mail stays queued and oxirelay retries."
            ),
            AdminStep::SecurityDefaults => format!(
                "{headline} for {user}. An Entra administrator turns security defaults off \
                 (Entra admin center: Overview > Properties > Manage security defaults) and protects sign-ins with Conditional Access instead, \
                 or excludes this mailbox. The mail stays queued and oxirelay retries."
            ),
            AdminStep::SendAsDenied => format!(
                "{headline} the message's From address. An Exchange administrator grants it with \
                 `Add-RecipientPermission -Identity <From address> -Trustee {user} -AccessRights SendAs` \
                 (for an app-only account the trustee is the app's service principal), or the sender uses {user} as From. \
                 The grant takes up to an hour to apply; the message stays queued and oxirelay retries."
            ),
            AdminStep::GraphAccessDenied => format!(
                "{headline} for {user} (403 ErrorAccessDenied). An Entra administrator grants the app the Microsoft Graph permission Mail.Send \
                 (Entra admin center: App registrations > the app > API permissions > Add > Microsoft Graph: Delegated Mail.Send for a person's sign-in, \
                 Application Mail.Send for client credentials, then Grant admin consent). If the app is restricted to chosen mailboxes, add {user} to its scope: \
                 `New-ApplicationAccessPolicy -AppId <client id> -PolicyScopeGroupId <group with {user}> -AccessRight RestrictAccess`, \
                 or with RBAC for Applications `New-ManagementRoleAssignment -App <service principal> -Role \"Application Mail.Send\" -CustomResourceScope <scope with {user}>`. \
                 Changes take up to an hour to apply; the mail stays queued and oxirelay retries."
            ),
            AdminStep::GmailInsufficientPermissions => format!(
                "{headline} for {user} (403 insufficientPermissions): the token must carry https://www.googleapis.com/auth/gmail.send. \
                 Enable the Gmail API for the Google Cloud project (APIs & Services > Library > Gmail API), add the scope to the OAuth consent screen and run `oxirelay account login` again; \
                 for a service account, a Workspace super administrator lists the scope under domain-wide delegation \
                 (Admin console: Security > Access and data control > API controls > Domain-wide delegation > the client id). The mail stays queued and oxirelay retries."
            ),
        }
    }

    /// Whether a successful login shows the step was taken.
    pub fn cleared_by_login(self) -> bool {
        matches!(
            self,
            AdminStep::SmtpAuthDisabled | AdminStep::SecurityDefaults
        )
    }

    /// Whether a message the HTTP API accepted shows the step was taken.
    pub fn cleared_by_api_send(self) -> bool {
        matches!(
            self,
            AdminStep::GraphAccessDenied | AdminStep::GmailInsufficientPermissions
        )
    }

    /// The step whose instruction `reason` is, if any.
    pub fn of_reason(reason: &str) -> Option<AdminStep> {
        [
            AdminStep::SmtpAuthDisabled,
            AdminStep::SecurityDefaults,
            AdminStep::SendAsDenied,
            AdminStep::GraphAccessDenied,
            AdminStep::GmailInsufficientPermissions,
        ]
        .into_iter()
        .find(|step| reason.starts_with(step.headline()))
    }
}

/// A reply reduced to what classification needs.
#[derive(Debug, Clone, Copy)]
pub struct ReplyFacts<'a> {
    pub code: u16,
    pub enhanced: Option<(u8, u16, u16)>,
    pub text: &'a str,
}

impl<'a> ReplyFacts<'a> {
    pub fn of(reply: &'a crate::smtp::client::Reply, text: &'a str) -> Self {
        ReplyFacts {
            code: reply.code,
            enhanced: reply.enhanced,
            text,
        }
    }
}

/// One provider reply: which replies it matches and what they mean.
struct ProviderReply {
    /// Basic codes it applies to (empty: any).
    codes: &'static [u16],
    /// The enhanced status code, if the row needs one.
    enhanced: Option<(u8, u16, u16)>,
    /// Lowercase words the text must contain (empty: none needed).
    text: &'static str,
    class: ReplyClass,
    /// What the operator reads about it.
    meaning: &'static str,
}

impl ProviderReply {
    fn matches(&self, reply: &ReplyFacts<'_>, text: &str) -> bool {
        (self.codes.is_empty() || self.codes.contains(&reply.code))
            && self.enhanced.is_none_or(|e| reply.enhanced == Some(e))
            && text.contains(self.text)
    }
}

/// Exchange Online counts messages per minute per mailbox.
const EXCHANGE_QUOTA_WINDOW: Duration = Duration::from_secs(60);
/// Gmail's daily limit is a rolling 24 hours: capacity comes back
/// gradually, so look again every hour rather than waiting a whole day.
const GMAIL_DAILY_PROBE: Duration = Duration::from_secs(3600);
/// Gmail locks logins out for a while after many failures; another login
/// sooner only extends the lockout.
const GMAIL_LOGIN_LOCKOUT: Duration = Duration::from_secs(10 * 60);

/// The providers' replies, most specific first.
const PROVIDER_REPLIES: &[ProviderReply] = &[
    ProviderReply {
        codes: &[],
        enhanced: None,
        text: "token will expire soon",
        class: ReplyClass::TokenNearExpiry,
        meaning: "Exchange refused a token close to its expiry (501 5.5.127, seen on its high-volume endpoint); oxirelay refreshes the token and retries. If it recurs, raise refresh_skew_secs for the account (the Microsoft default is 900)",
    },
    ProviderReply {
        codes: &[],
        enhanced: Some((5, 5, 127)),
        text: "",
        class: ReplyClass::TokenNearExpiry,
        meaning: "Exchange refused a token close to its expiry (501 5.5.127, seen on its high-volume endpoint); oxirelay refreshes the token and retries. If it recurs, raise refresh_skew_secs for the account (the Microsoft default is 900)",
    },
    ProviderReply {
        codes: &[535],
        enhanced: Some((5, 7, 139)),
        text: "smtpclientauthentication is disabled",
        class: ReplyClass::NeedsAdmin(AdminStep::SmtpAuthDisabled),
        meaning: "Exchange Online has SMTP AUTH (SmtpClientAuthentication) turned off for the mailbox or the tenant: an administrator must turn it on",
    },
    ProviderReply {
        codes: &[535],
        enhanced: Some((5, 7, 139)),
        text: "security defaults",
        class: ReplyClass::NeedsAdmin(AdminStep::SecurityDefaults),
        meaning: "Entra security defaults block SMTP AUTH for the mailbox: an administrator must turn them off or exclude it",
    },
    ProviderReply {
        codes: &[550],
        enhanced: Some((5, 7, 60)),
        text: "",
        class: ReplyClass::NeedsAdmin(AdminStep::SendAsDenied),
        meaning: "Exchange Online refuses to let the mailbox send as the From address (550 5.7.60): an administrator must grant Send As",
    },
    ProviderReply {
        codes: &[554],
        enhanced: Some((5, 2, 0)),
        text: "sendasdenied",
        class: ReplyClass::NeedsAdmin(AdminStep::SendAsDenied),
        meaning: "Exchange Online refuses to let the mailbox send as the From address (SendAsDeniedException): an administrator must grant Send As",
    },
    ProviderReply {
        codes: &[554],
        enhanced: Some((5, 2, 0)),
        text: "submissionquotaexceeded",
        class: ReplyClass::QuotaExceeded {
            pause: EXCHANGE_QUOTA_WINDOW,
        },
        meaning: "Exchange Online's per-minute submission quota for the mailbox is used up (554 5.2.0 SubmissionQuotaExceededException); the account pauses for a minute and the mail stays queued",
    },
    ProviderReply {
        codes: &[550],
        enhanced: Some((5, 4, 5)),
        text: "",
        class: ReplyClass::QuotaExceeded {
            pause: GMAIL_DAILY_PROBE,
        },
        meaning: "Gmail's daily sending limit for the account is used up (550 5.4.5; 2,000 messages a day for paid Workspace, fewer for trial and consumer accounts); the account pauses, oxirelay tries again every hour, and the mail stays queued",
    },
    ProviderReply {
        codes: &[432],
        enhanced: Some((4, 3, 2)),
        text: "",
        class: ReplyClass::Throttled { pause: None },
        meaning: "Exchange Online allows 3 concurrent sessions per mailbox (432 4.3.2 sender thread limit exceeded); another client or relay instance shares this mailbox. oxirelay backs off the account",
    },
    ProviderReply {
        codes: &[454],
        enhanced: Some((4, 7, 0)),
        text: "too many login attempts",
        class: ReplyClass::Throttled {
            pause: Some(GMAIL_LOGIN_LOCKOUT),
        },
        meaning: "Google locked logins out after too many attempts (454 4.7.0); oxirelay waits ten minutes before logging in again, since trying sooner extends the lockout",
    },
    ProviderReply {
        codes: &[421],
        enhanced: Some((4, 7, 0)),
        text: "try again later",
        class: ReplyClass::Throttled { pause: None },
        meaning: "Google is rate-limiting the account (421 4.7.0 Try again later); oxirelay backs off the account",
    },
    ProviderReply {
        codes: &[535],
        enhanced: Some((5, 7, 8)),
        text: "username and password not accepted",
        class: ReplyClass::AuthFailure,
        meaning: "Google refused the credentials: the token's account must be the account's user, and the grant must include https://mail.google.com/",
    },
    ProviderReply {
        codes: &[534],
        enhanced: Some((5, 7, 9)),
        text: "",
        class: ReplyClass::AuthFailure,
        meaning: "Google requires OAuth or an app password for this account: use provider = \"google\" with an OAuth grant",
    },
    ProviderReply {
        codes: &[535],
        enhanced: Some((5, 7, 3)),
        text: "",
        class: ReplyClass::AuthFailure,
        meaning: "Microsoft refused the token: the app may lack SMTP.Send (delegated) or SMTP.SendAsApp (app-only), or for app-only the service principal may not be registered in Exchange (New-ServicePrincipal) with rights on the mailbox (Add-MailboxPermission)",
    },
    ProviderReply {
        codes: &[550],
        enhanced: Some((5, 7, 30)),
        text: "",
        class: ReplyClass::AuthFailure,
        meaning: "Microsoft says basic authentication is disabled: oxirelay must use OAuth for this account (check provider = \"microsoft\" and sasl = \"xoauth2\")",
    },
];

fn provider_reply(reply: &ReplyFacts<'_>, text: &str) -> Option<&'static ProviderReply> {
    PROVIDER_REPLIES.iter().find(|row| row.matches(reply, text))
}

/// Whether the reply says the server is limiting this client (too many
/// connections or messages, a rate, "try again later", policy 4.7.0,
/// system 4.3.2), as opposed to a connection that broke or timed out: a
/// 421 of that kind to a session reused without RSET is a throttle to wait
/// out, not a dropped session to replace at once.
pub fn says_limited(reply: ReplyFacts<'_>) -> bool {
    says_limited_in(&reply, &reply.text.to_ascii_lowercase())
}

fn says_limited_in(reply: &ReplyFacts<'_>, lower_text: &str) -> bool {
    ["too many", "rate limit", "throttl", "try again later"]
        .iter()
        .any(|words| lower_text.contains(words))
        || matches!(reply.enhanced, Some((4, 7, 0)) | Some((4, 3, 2)))
}

pub fn classify(reply: ReplyFacts<'_>) -> ReplyClass {
    if (200..400).contains(&reply.code) {
        return ReplyClass::Accepted;
    }
    let text = reply.text.to_ascii_lowercase();
    if let Some(row) = provider_reply(&reply, &text) {
        return row.class;
    }
    let throttling = reply.code == 421
        || says_limited_in(&reply, &text)
        || matches!(reply.enhanced, Some((4, 4, 2)));
    if (400..500).contains(&reply.code) && throttling {
        return ReplyClass::Throttled { pause: None };
    }
    let auth = matches!(reply.code, 530 | 534 | 535)
        || matches!(reply.enhanced, Some((5, 7, 8)) | Some((5, 7, 3)));
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
    provider_reply(&reply, &text).map(|row| row.meaning)
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
            ReplyClass::Throttled { pause: None }
        );
        assert_eq!(
            classify(facts(452, Some((4, 5, 3)), "too many recipients")),
            ReplyClass::Throttled { pause: None }
        );
        assert_eq!(
            classify(facts(535, Some((5, 7, 3)), "Authentication unsuccessful")),
            ReplyClass::AuthFailure
        );
        assert_eq!(
            classify(facts(554, Some((5, 7, 1)), "relay denied")),
            ReplyClass::Bounce
        );
        // A temporary authentication failure is not a verdict on the token.
        assert_eq!(
            classify(facts(
                454,
                Some((4, 7, 0)),
                "Temporary authentication failure"
            )),
            ReplyClass::Throttled { pause: None }
        );
    }

    /// Each provider reply of the sandbox profiles, as the providers word it.
    #[test]
    fn provider_replies_drive_the_account() {
        let cases = [
            (
                facts(
                    501,
                    Some((5, 5, 127)),
                    "Invalid XOAUTH2 auth data - Token will expire soon",
                ),
                ReplyClass::TokenNearExpiry,
            ),
            (
                facts(
                    535,
                    Some((5, 7, 139)),
                    "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information.",
                ),
                ReplyClass::NeedsAdmin(AdminStep::SmtpAuthDisabled),
            ),
            (
                facts(
                    535,
                    Some((5, 7, 139)),
                    "Authentication unsuccessful, user is locked by your organization's security defaults policy. Contact your administrator.",
                ),
                ReplyClass::NeedsAdmin(AdminStep::SecurityDefaults),
            ),
            (
                facts(
                    550,
                    Some((5, 7, 60)),
                    "SMTP; Client does not have permissions to send as this sender",
                ),
                ReplyClass::NeedsAdmin(AdminStep::SendAsDenied),
            ),
            (
                facts(
                    554,
                    Some((5, 2, 0)),
                    "STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message",
                ),
                ReplyClass::QuotaExceeded {
                    pause: EXCHANGE_QUOTA_WINDOW,
                },
            ),
            (
                facts(
                    550,
                    Some((5, 4, 5)),
                    "Daily user sending limit exceeded. For more information on Gmail",
                ),
                ReplyClass::QuotaExceeded {
                    pause: GMAIL_DAILY_PROBE,
                },
            ),
            (
                facts(
                    432,
                    Some((4, 3, 2)),
                    "STOREDRV.ClientSubmit; sender thread limit exceeded",
                ),
                ReplyClass::Throttled { pause: None },
            ),
            (
                facts(
                    454,
                    Some((4, 7, 0)),
                    "Too many login attempts, please try again later.",
                ),
                ReplyClass::Throttled {
                    pause: Some(GMAIL_LOGIN_LOCKOUT),
                },
            ),
            (
                facts(421, Some((4, 7, 0)), "Try again later, closing connection."),
                ReplyClass::Throttled { pause: None },
            ),
            (
                facts(
                    535,
                    Some((5, 7, 8)),
                    "Username and Password not accepted. For more information, go to",
                ),
                ReplyClass::AuthFailure,
            ),
            (
                facts(
                    534,
                    Some((5, 7, 9)),
                    "Application-specific password required.",
                ),
                ReplyClass::AuthFailure,
            ),
            (
                facts(535, Some((5, 7, 3)), "Authentication unsuccessful"),
                ReplyClass::AuthFailure,
            ),
        ];
        for (reply, class) in cases {
            assert_eq!(classify(reply), class, "{reply:?}");
            assert!(explain(reply).is_some(), "{reply:?} is explained");
        }
        assert!(explain(facts(250, None, "OK")).is_none());
        assert!(explain(facts(550, Some((5, 1, 1)), "no such user")).is_none());
    }

    #[test]
    fn admin_steps_give_the_exact_command_and_are_recognised_again() {
        let text = AdminStep::SmtpAuthDisabled.instruction("noreply@contoso.com");
        assert!(text.contains(
            "Set-CASMailbox -Identity noreply@contoso.com -SmtpClientAuthenticationDisabled $false"
        ));
        assert_eq!(
            AdminStep::of_reason(&text),
            Some(AdminStep::SmtpAuthDisabled)
        );
        let text = AdminStep::SendAsDenied.instruction("noreply@contoso.com");
        assert!(text.contains(
            "Add-RecipientPermission -Identity <From address> -Trustee noreply@contoso.com -AccessRights SendAs"
        ));
        assert_eq!(AdminStep::of_reason(&text), Some(AdminStep::SendAsDenied));
        assert!(!AdminStep::SendAsDenied.cleared_by_login());
        assert_eq!(AdminStep::of_reason("refresh failed"), None);
    }

    #[test]
    fn a_421_that_names_a_limit_is_told_from_one_that_names_a_broken_connection() {
        let limited = [
            facts(
                421,
                Some((4, 7, 0)),
                "4.7.0 Too many concurrent connections",
            ),
            facts(421, None, "Try again later, closing connection"),
            facts(
                421,
                Some((4, 3, 2)),
                "4.3.2 System not accepting network messages",
            ),
            facts(421, None, "Rate limit exceeded"),
        ];
        for reply in limited {
            assert!(says_limited(reply), "{:?}", reply.text);
        }
        let broken = [
            facts(
                421,
                Some((4, 4, 2)),
                "4.4.2 mx.example.net Error: timeout exceeded",
            ),
            facts(
                421,
                None,
                "Service not available, closing transmission channel",
            ),
        ];
        for reply in broken {
            assert!(!says_limited(reply), "{:?}", reply.text);
            assert!(matches!(classify(reply), ReplyClass::Throttled { .. }));
        }
    }
}
