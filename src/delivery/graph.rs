//! Microsoft Graph `sendMail` with MIME, without I/O: the request for a
//! message, and what Graph's answer means (`http` does the sending).
//!
//! `POST /v1.0/users/{mailbox}/sendMail`, `Content-Type: text/plain`, the
//! body the message's MIME in base64; `202 Accepted` is success. Graph
//! refuses requests over 4 MB ([`crate::oauth::preset::GRAPH`]), counted on
//! the base64 body: about 3 MB of MIME.

use crate::delivery::classify::AdminStep;
use crate::delivery::http::{ApiError, ApiReply, ApiRequest, ApiVerdict, TooLarge};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use url::Url;

/// The request that sends `mime` as `mailbox`, or why it cannot be one.
pub fn request(
    base: &Url,
    mailbox: &str,
    mime: &[u8],
    limit: usize,
) -> Result<ApiRequest, TooLarge> {
    let encoded = STANDARD.encode(mime);
    if encoded.len() > limit {
        return Err(TooLarge {
            message_bytes: mime.len(),
            request_bytes: encoded.len(),
            limit,
        });
    }
    Ok(ApiRequest {
        url: with_path(base, &["v1.0", "users", mailbox, "sendMail"]),
        content_type: "text/plain",
        body: encoded.into_bytes(),
    })
}

/// `base` with `segments` appended, each percent-encoded as one segment
/// (a mailbox address is one, whatever it holds).
pub(crate) fn with_path(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

/// What Graph's answer means.
pub fn classify(reply: &ApiReply<'_>) -> ApiVerdict {
    let error = ApiError::parse(reply.body);
    let code = error.code.as_str();
    let detail = || reply.describe("Microsoft Graph", &error);
    match reply.status {
        200..=299 => ApiVerdict::Sent {
            detail: format!("{} Accepted by Microsoft Graph", reply.status),
        },
        401 => ApiVerdict::Unauthorized { detail: detail() },
        _ if code.eq_ignore_ascii_case("MailboxNotEnabledForRESTAPI") => ApiVerdict::Permanent {
            detail: format!(
                "{}; the mailbox is inactive, soft-deleted or hosted on-premises, so Graph cannot send from it: check `user`, or use transport = \"smtp\"",
                detail()
            ),
        },
        403 if code.eq_ignore_ascii_case("ErrorSendAsDenied") => ApiVerdict::NeedsAdmin {
            step: AdminStep::SendAsDenied,
            detail: detail(),
        },
        403 => ApiVerdict::NeedsAdmin {
            step: AdminStep::GraphAccessDenied,
            detail: detail(),
        },
        404 => ApiVerdict::Permanent {
            detail: format!(
                "{}; Graph knows no such mailbox: check `user` (the mailbox's address or id)",
                detail()
            ),
        },
        413 => ApiVerdict::TooLarge { detail: detail() },
        429 | 503 => ApiVerdict::Throttled {
            pause: reply.retry_after,
            detail: detail(),
        },
        400 if code.to_ascii_lowercase().contains("mime") => ApiVerdict::Permanent {
            detail: format!(
                "{}; Graph cannot read the message as MIME, and would not on any retry",
                detail()
            ),
        },
        400..=499 => ApiVerdict::Permanent { detail: detail() },
        _ => ApiVerdict::Transient { detail: detail() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn reply(status: u16, body: &str) -> ApiReply<'_> {
        ApiReply {
            status,
            retry_after: None,
            body: body.as_bytes(),
        }
    }

    #[test]
    fn the_request_is_base64_mime_to_the_mailbox() {
        let base = Url::parse("https://graph.microsoft.com").expect("url");
        let request =
            request(&base, "a b@contoso.com", b"Subject: x\r\n\r\nhi\r\n", 1000).expect("fits");
        assert_eq!(
            request.url.as_str(),
            "https://graph.microsoft.com/v1.0/users/a%20b@contoso.com/sendMail"
        );
        assert_eq!(request.content_type, "text/plain");
        assert_eq!(
            STANDARD.decode(&request.body).expect("base64"),
            b"Subject: x\r\n\r\nhi\r\n"
        );
        let too_large = super::request(&base, "a@b", &[b'x'; 300], 300).expect_err("base64 grows");
        assert_eq!(too_large.request_bytes, 400);
    }

    #[test]
    fn answers_mean_what_graph_means() {
        assert!(matches!(classify(&reply(202, "")), ApiVerdict::Sent { .. }));
        assert!(matches!(
            classify(&reply(
                401,
                r#"{"error":{"code":"InvalidAuthenticationToken","message":"Access token has expired or is not yet valid."}}"#
            )),
            ApiVerdict::Unauthorized { .. }
        ));
        match classify(&reply(
            403,
            r#"{"error":{"code":"ErrorAccessDenied","message":"Access is denied. Check credentials and try again."}}"#,
        )) {
            ApiVerdict::NeedsAdmin { step, detail } => {
                assert_eq!(step, AdminStep::GraphAccessDenied);
                assert!(detail.contains("403 ErrorAccessDenied"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(&reply(
                404,
                r#"{"error":{"code":"MailboxNotEnabledForRESTAPI","message":"The mailbox is either inactive, soft-deleted, or is hosted on-premise."}}"#
            )),
            ApiVerdict::Permanent { .. }
        ));
        assert!(matches!(
            classify(&reply(
                400,
                r#"{"error":{"code":"ErrorMimeContentInvalidBase64String","message":"Invalid base64 string for MIME content."}}"#
            )),
            ApiVerdict::Permanent { .. }
        ));
        let throttled = ApiReply {
            status: 429,
            retry_after: Some(Duration::from_secs(3)),
            body: br#"{"error":{"code":"ApplicationThrottled","message":"Application is over its MailboxConcurrency limit."}}"#,
        };
        assert_eq!(classify(&throttled).pause(), Some(Duration::from_secs(3)));
        assert!(matches!(
            classify(&reply(503, "")),
            ApiVerdict::Throttled { pause: None, .. }
        ));
        assert!(matches!(
            classify(&reply(413, "")),
            ApiVerdict::TooLarge { .. }
        ));
        assert!(matches!(
            classify(&reply(500, "")),
            ApiVerdict::Transient { .. }
        ));
    }
}
