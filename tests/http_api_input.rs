//! What the send API refuses, through the real `serve`: header injection,
//! bad addresses, oversize bodies and messages, malformed JSON and unknown
//! fields each get their documented 4xx and queue nothing; keys are
//! checked for presence, validity, revocation, scope, senders, accounts
//! and rate; DELETE cancels a message that is still queued.

mod http_api_common;

use http_api_common::{ACCOUNT, Api, USER, simple_message};
use serde_json::{Value, json};

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("(no code)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_documented_error_and_queues_nothing() {
    let api = Api::start().await;
    let key = api.sender_key("forms").await;
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "CRLF in the subject",
            json!({"from": USER, "to": ["a@example.net"], "subject": "hi\r\nBcc: victim@example.org"}),
            422,
            "header_injection",
        ),
        (
            "LF in a display name",
            json!({"from": {"email": USER, "name": "Bot\nBcc: victim@example.org"}, "to": ["a@example.net"]}),
            422,
            "header_injection",
        ),
        (
            "CR in a custom header",
            json!({"from": USER, "to": ["a@example.net"], "headers": {"X-Ref": "1\rX-Evil: 2"}}),
            422,
            "header_injection",
        ),
        (
            "a line break in an address",
            json!({"from": USER, "to": ["a@example.net\r\nRCPT TO:<victim@example.org>"]}),
            422,
            "header_injection",
        ),
        (
            "an invalid recipient",
            json!({"from": USER, "to": ["not-an-address"]}),
            422,
            "invalid_address",
        ),
        (
            "an invalid sender",
            json!({"from": "me@@example.net", "to": ["a@example.net"]}),
            422,
            "invalid_address",
        ),
        (
            "no recipients",
            json!({"from": USER, "subject": "to nobody"}),
            422,
            "invalid_request",
        ),
        (
            "a header the relay writes",
            json!({"from": USER, "to": ["a@example.net"], "headers": {"Bcc": "x@example.org"}}),
            422,
            "invalid_request",
        ),
        (
            "an attachment that is not base64",
            json!({"from": USER, "to": ["a@example.net"], "attachments": [{"filename": "a.txt", "content_type": "text/plain", "content": "%%%"}]}),
            422,
            "invalid_request",
        ),
        (
            "an unknown field",
            json!({"from": USER, "to": ["a@example.net"], "priority": "high"}),
            400,
            "malformed_json",
        ),
        (
            "a wrong type",
            json!({"from": USER, "to": "a@example.net"}),
            400,
            "malformed_json",
        ),
    ];
    for (what, body, status, expected) in cases {
        let answer = api.post("/v1/messages", &key, &body).await;
        assert_eq!(answer.status, status, "{what}: {}", answer.body);
        assert_eq!(code(&answer.body), expected, "{what}: {}", answer.body);
        assert!(
            answer.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}"
        );
    }
    let unknown = api
        .post(
            "/v1/messages",
            &key,
            &json!({"from": USER, "to": ["a@example.net"], "priority": 1}),
        )
        .await;
    assert!(
        unknown.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("unknown field `priority`")),
        "{}",
        unknown.body
    );

    let malformed = api
        .request(
            reqwest::Method::POST,
            "/v1/messages",
            Some(&key),
            &[],
            Some(b"{\"from\": ".to_vec()),
        )
        .await;
    assert_eq!(
        (malformed.status, code(&malformed.body)),
        (400, "malformed_json")
    );

    // Raw: an unknown field, a header From the key may not use, a message
    // over the size limit (35 MB), a body over the request limit.
    let raw_unknown = api
        .post(
            "/v1/messages/raw",
            &key,
            &json!({"mail_from": USER, "rcpt_to": ["a@example.net"], "message": "x", "sender": "y"}),
        )
        .await;
    assert_eq!(
        (raw_unknown.status, code(&raw_unknown.body)),
        (400, "malformed_json")
    );
    let big = format!(
        "From: {USER}\r\nSubject: big\r\n\r\n{}",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n"
            .repeat(36 * 1024 * 1024 / 65 + 1)
    );
    let oversize = api
        .post(
            "/v1/messages/raw",
            &key,
            &json!({"mail_from": USER, "rcpt_to": ["a@example.net"], "message": big}),
        )
        .await;
    assert_eq!(
        (oversize.status, code(&oversize.body)),
        (413, "message_too_large"),
        "{}",
        oversize.body
    );
    let huge = vec![b' '; 50 * 1024 * 1024];
    let too_long = api
        .request(
            reqwest::Method::POST,
            "/v1/messages",
            Some(&key),
            &[],
            Some(huge),
        )
        .await;
    assert_eq!(
        (too_long.status, code(&too_long.body)),
        (413, "body_too_large")
    );

    assert_eq!(api.queue_count().await, 0, "nothing was queued");
    assert!(api.relay.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_checked_for_scope_senders_accounts_and_rate() {
    let api = Api::start().await;
    let sender = api.sender_key("sender").await;
    let reader = api
        .create_key(
            "reader",
            &[
                "--scope",
                "read",
                "--allowed-from",
                USER,
                "--account",
                ACCOUNT,
            ],
        )
        .await;
    let send_only = api
        .create_key(
            "send-only",
            &[
                "--scope",
                "send",
                "--allowed-from",
                USER,
                "--account",
                ACCOUNT,
            ],
        )
        .await;
    let slow = api
        .create_key(
            "slow",
            &[
                "--scope",
                "send",
                "--allowed-from",
                USER,
                "--account",
                ACCOUNT,
                "--rate",
                "2/min",
            ],
        )
        .await;
    let message = simple_message("a@example.net", "scoped");

    // No key, a made-up key, a mangled real key: 401 with a header.
    let none = api
        .request(
            reqwest::Method::POST,
            "/v1/messages",
            None,
            &[],
            Some(message.to_string().into_bytes()),
        )
        .await;
    assert_eq!((none.status, code(&none.body)), (401, "unauthenticated"));
    assert!(none.headers.contains_key("www-authenticate"));
    let made_up = api
        .post("/v1/messages", "oxr_0000000000000000_abc", &message)
        .await;
    assert_eq!(made_up.status, 401);
    let mut mangled = sender.clone();
    mangled.pop();
    mangled.push(if sender.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(
        api.post("/v1/messages", &mangled, &message).await.status,
        401
    );

    // Scopes.
    let denied = api.post("/v1/messages", &reader, &message).await;
    assert_eq!((denied.status, code(&denied.body)), (403, "missing_scope"));
    let no_read = api.get("/v1/messages", &send_only).await;
    assert_eq!(
        (no_read.status, code(&no_read.body)),
        (403, "missing_scope")
    );

    // Senders and accounts the key does not have.
    let other_sender = api
        .post(
            "/v1/messages",
            &sender,
            &json!({"from": "ceo@example.com", "to": ["a@example.net"]}),
        )
        .await;
    assert_eq!(
        (other_sender.status, code(&other_sender.body)),
        (403, "forbidden")
    );
    let header_from = api
        .post(
            "/v1/messages/raw",
            &sender,
            &json!({"mail_from": USER, "rcpt_to": ["a@example.net"], "message": "From: ceo@example.com\r\nSubject: x\r\n\r\nx\r\n"}),
        )
        .await;
    assert_eq!(
        (header_from.status, code(&header_from.body)),
        (403, "forbidden")
    );
    let other_account = api
        .post(
            "/v1/messages",
            &sender,
            &json!({"from": USER, "to": ["a@example.net"], "account": "payroll"}),
        )
        .await;
    assert_eq!(
        (other_account.status, code(&other_account.body)),
        (403, "forbidden")
    );
    assert_eq!(api.queue_count().await, 0);

    // Rate: two a minute, the third waits, with Retry-After.
    for _ in 0..2 {
        assert_eq!(api.post("/v1/messages", &slow, &message).await.status, 202);
    }
    let limited = api.post("/v1/messages", &slow, &message).await;
    assert_eq!((limited.status, code(&limited.body)), (429, "rate_limited"));
    let retry_after: u64 = limited
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(api.queue_count().await, 2);

    // A key sees its own messages only.
    let mine = api.post("/v1/messages", &sender, &message).await;
    let id = mine.body["id"].as_str().expect("id");
    assert_eq!(
        api.get(&format!("/v1/messages/{id}"), &sender).await.status,
        200
    );
    let theirs = api.get(&format!("/v1/messages/{id}"), &reader).await;
    assert_eq!((theirs.status, code(&theirs.body)), (404, "not_found"));

    // Revoked: refused once the relay's cached row of the key is older
    // than its TTL (one second), though the key was used just before.
    let revoked = api.cli(&["apikey", "revoke", "sender"]).await;
    assert!(revoked.status.success());
    let since = std::time::Instant::now();
    let path = format!("/v1/messages/{id}");
    loop {
        let status = api.get(&path, &sender).await.status;
        if status == 401 {
            break;
        }
        assert_eq!(status, 200, "the key works until its revocation applies");
        assert!(
            since.elapsed() < std::time::Duration::from_secs(3),
            "the revocation applied within the key cache's second (and slack)"
        );
        // A poll's pace, not a synchronisation: the loop ends on the 401.
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(
        api.post("/v1/messages", &sender, &message).await.status,
        401
    );
    let listed = api.cli(&["apikey", "list", "--json"]).await;
    let keys: Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    let names: Vec<&str> = keys
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["reader", "send-only", "slow"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(!text.contains("secret") && !text.contains("oxr_"), "{text}");

    // The audit log has the keys' lifecycle and the refusals.
    let log = std::fs::read_to_string(api.harness.dir.path().join("oxirelay-audit.jsonl"))
        .expect("the audit log");
    for action in ["apikey.created", "apikey.revoked", "api.refused"] {
        assert!(log.contains(action), "{action} in {log}");
    }
    assert!(!log.contains(&sender), "no key in the audit log");
    assert!(api.relay.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_cancels_a_queued_message() {
    let api = Api::start().await;
    let key = api.sender_key("canceller").await;
    // Delivery paused: the message stays queued.
    let locked = api.cli(&["lockdown", "--reason", "cancel drill"]).await;
    assert!(
        locked.status.success(),
        "{}",
        String::from_utf8_lossy(&locked.stderr)
    );
    let answer = api
        .post(
            "/v1/messages",
            &key,
            &simple_message("late@example.net", "cancel me"),
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let id = answer.body["id"].as_str().expect("id").to_string();
    let path = format!("/v1/messages/{id}");
    let other = api.sender_key("someone-else").await;
    let foreign = api
        .request(reqwest::Method::DELETE, &path, Some(&other), &[], None)
        .await;
    assert_eq!(foreign.status, 404, "another key cannot cancel it");

    let cancelled = api
        .request(reqwest::Method::DELETE, &path, Some(&key), &[], None)
        .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    assert_eq!(cancelled.body, json!({"id": id, "status": "cancelled"}));
    assert_eq!(api.get(&path, &key).await.status, 404);
    let again = api
        .request(reqwest::Method::DELETE, &path, Some(&key), &[], None)
        .await;
    assert_eq!(again.status, 404);
    assert_eq!(api.queue_count().await, 0);
    assert!(api.relay.terminate().success());
}
