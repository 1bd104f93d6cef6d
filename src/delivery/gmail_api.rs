//! The Gmail API `users.messages.send`, without I/O: the request for a
//! message, and what Gmail's answer means (`http` does the sending).
//!
//! Up to [`SIMPLE_LIMIT`] the message goes as JSON `{"raw": base64url}` to
//! `/gmail/v1/users/{user}/messages/send`; larger ones as `message/rfc822`
//! to the media upload endpoint
//! `/upload/gmail/v1/users/{user}/messages/send?uploadType=media`, which
//! takes Gmail's whole 35 MB. Either way one request per message.

use crate::delivery::classify::AdminStep;
use crate::delivery::graph::with_path;
use crate::delivery::http::{ApiError, ApiReply, ApiRequest, ApiVerdict, TooLarge};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE;
use url::Url;

/// Messages up to this size go as JSON; base64url makes the request a
/// third larger, and Google's metadata endpoint is meant for small bodies.
pub const SIMPLE_LIMIT: usize = 4 * 1024 * 1024;

/// The request that sends `mime` as `user`, or why it cannot be one.
pub fn request(base: &Url, user: &str, mime: &[u8], limit: usize) -> Result<ApiRequest, TooLarge> {
    if mime.len() > limit {
        return Err(TooLarge {
            message_bytes: mime.len(),
            request_bytes: mime.len(),
            limit,
        });
    }
    if mime.len() <= SIMPLE_LIMIT {
        let body = serde_json::json!({ "raw": URL_SAFE.encode(mime) });
        return Ok(ApiRequest {
            url: with_path(base, &["gmail", "v1", "users", user, "messages", "send"]),
            content_type: "application/json",
            body: body.to_string().into_bytes(),
        });
    }
    let mut url = with_path(
        base,
        &["upload", "gmail", "v1", "users", user, "messages", "send"],
    );
    url.set_query(Some("uploadType=media"));
    Ok(ApiRequest {
        url,
        content_type: "message/rfc822",
        body: mime.to_vec(),
    })
}

/// What Gmail's answer means.
pub fn classify(reply: &ApiReply<'_>) -> ApiVerdict {
    let error = ApiError::parse(reply.body);
    let reason = error.reason.as_str();
    let detail = || reply.describe("the Gmail API", &error);
    let rate_limited = matches!(
        reason,
        "rateLimitExceeded" | "userRateLimitExceeded" | "dailyLimitExceeded"
    );
    match reply.status {
        200..=299 => ApiVerdict::Sent {
            detail: match serde_json::from_slice::<serde_json::Value>(reply.body)
                .ok()
                .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_string))
            {
                Some(id) => format!("{} sent by the Gmail API as {id}", reply.status),
                None => format!("{} sent by the Gmail API", reply.status),
            },
        },
        401 => ApiVerdict::Unauthorized { detail: detail() },
        429 | 503 => ApiVerdict::Throttled {
            pause: reply.retry_after,
            detail: detail(),
        },
        403 if rate_limited => ApiVerdict::Throttled {
            pause: reply.retry_after,
            detail: detail(),
        },
        403 => ApiVerdict::NeedsAdmin {
            step: AdminStep::GmailInsufficientPermissions,
            detail: detail(),
        },
        404 => ApiVerdict::Permanent {
            detail: format!(
                "{}; Gmail knows no such user: check `user` (the mailbox the token is for)",
                detail()
            ),
        },
        413 => ApiVerdict::TooLarge { detail: detail() },
        400..=499 => ApiVerdict::Permanent { detail: detail() },
        _ => ApiVerdict::Transient { detail: detail() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, body: &str) -> ApiReply<'_> {
        ApiReply {
            status,
            retry_after: None,
            body: body.as_bytes(),
        }
    }

    #[test]
    fn small_messages_go_as_json_large_ones_as_media() {
        let base = Url::parse("https://gmail.googleapis.com").expect("url");
        let small = request(&base, "a@example.com", b"Subject: x\r\n\r\n\xff", 100).expect("fits");
        assert_eq!(
            small.url.as_str(),
            "https://gmail.googleapis.com/gmail/v1/users/a@example.com/messages/send"
        );
        let json: serde_json::Value = serde_json::from_slice(&small.body).expect("json");
        assert_eq!(
            URL_SAFE
                .decode(json["raw"].as_str().expect("raw"))
                .expect("base64url"),
            b"Subject: x\r\n\r\n\xff"
        );
        let big = vec![b'x'; SIMPLE_LIMIT + 1];
        let media = request(&base, "a@example.com", &big, 35 << 20).expect("fits");
        assert_eq!(
            media.url.as_str(),
            "https://gmail.googleapis.com/upload/gmail/v1/users/a@example.com/messages/send?uploadType=media"
        );
        assert_eq!(media.content_type, "message/rfc822");
        assert_eq!(media.body.len(), big.len());
        assert!(request(&base, "a@example.com", &big, SIMPLE_LIMIT).is_err());
    }

    #[test]
    fn answers_mean_what_gmail_means() {
        assert!(matches!(
            classify(&reply(
                200,
                r#"{"id":"18c","threadId":"18c","labelIds":["SENT"]}"#
            )),
            ApiVerdict::Sent { .. }
        ));
        match classify(&reply(
            403,
            r#"{"error":{"code":403,"message":"Request had insufficient authentication scopes.","errors":[{"message":"Insufficient Permission","domain":"global","reason":"insufficientPermissions"}],"status":"PERMISSION_DENIED"}}"#,
        )) {
            ApiVerdict::NeedsAdmin { step, detail } => {
                assert_eq!(step, AdminStep::GmailInsufficientPermissions);
                assert!(detail.contains("insufficientPermissions"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(&reply(
                403,
                r#"{"error":{"code":403,"message":"User-rate limit exceeded.","errors":[{"reason":"userRateLimitExceeded"}]}}"#
            )),
            ApiVerdict::Throttled { .. }
        ));
        assert!(matches!(
            classify(&reply(401, "{}")),
            ApiVerdict::Unauthorized { .. }
        ));
        assert!(matches!(
            classify(&reply(
                400,
                r#"{"error":{"code":400,"message":"Invalid To header","errors":[{"reason":"invalidArgument"}]}}"#
            )),
            ApiVerdict::Permanent { .. }
        ));
        assert!(matches!(
            classify(&reply(429, "")),
            ApiVerdict::Throttled { .. }
        ));
    }
}
