//! The send API end to end: `serve` (the real binary) with `[http]`, keys
//! from the real CLI, the sandbox as upstream. Structured JSON with HTML
//! and an attachment, raw and batch messages arrive in the sandbox inbox
//! as the MIME they should be; a message's history follows its delivery;
//! Idempotency-Key makes retries and concurrent duplicates one message.

mod http_api_common;

use base64::Engine as _;
use http_api_common::{Api, USER, WAIT, simple_message};
use mail_parser::{MessageParser, MimeHeaders};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_raw_and_batch_messages_arrive_as_sent_and_their_history_follows() {
    let api = Api::start().await;
    let key = api.sender_key("shop").await;
    let inbox = api.harness.sandbox.smtp.inbox();

    // Bytes that are not text, to see them come back exactly.
    let attachment: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let request = json!({
        "from": {"email": USER, "name": "Shop Bot"},
        "to": [{"email": "alice@example.net", "name": "Alice Ä"}],
        "cc": ["carol@example.net"],
        "bcc": ["hidden@example.net"],
        "reply_to": "support@example.org",
        "subject": "Your invoice ✓",
        "text": "Plain text\nsecond line",
        "html": "<p>Hello <b>Alice</b></p>",
        "attachments": [{
            "filename": "invoice.bin",
            "content_type": "application/octet-stream",
            "content": base64::engine::general_purpose::STANDARD.encode(&attachment),
        }],
        "headers": {"X-Campaign": "winter-2026"},
        "tags": ["invoice", "winter"],
    });
    let answer = api.post("/v1/messages", &key, &request).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.body["status"], "queued");
    let id = answer.body["id"].as_str().expect("an id").to_string();

    let arrived = inbox.wait_for_count(1, WAIT).await.expect("delivered");
    let entry = &arrived[0];
    let mut rcpt = entry.rcpt_to.clone();
    rcpt.sort();
    assert_eq!(
        rcpt,
        [
            "alice@example.net",
            "carol@example.net",
            "hidden@example.net"
        ]
    );
    assert_eq!(entry.mail_from, USER);
    let bytes = inbox.read(&entry.id).expect("read");
    let parsed = MessageParser::default().parse(&bytes).expect("MIME parses");
    assert_eq!(parsed.subject(), Some("Your invoice ✓"));
    let from = parsed.from().and_then(|a| a.first()).expect("From");
    assert_eq!(
        (from.name(), from.address()),
        (Some("Shop Bot"), Some(USER))
    );
    let to = parsed.to().and_then(|a| a.first()).expect("To");
    assert_eq!(
        (to.name(), to.address()),
        (Some("Alice Ä"), Some("alice@example.net"))
    );
    assert_eq!(
        parsed
            .cc()
            .and_then(|a| a.first())
            .and_then(|a| a.address()),
        Some("carol@example.net")
    );
    assert_eq!(
        parsed
            .reply_to()
            .and_then(|a| a.first())
            .and_then(|a| a.address()),
        Some("support@example.org")
    );
    assert!(parsed.bcc().is_none(), "Bcc is for the envelope only");
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains("hidden@example.net"), "{text}");
    assert_eq!(
        parsed.header("X-Campaign").and_then(|h| h.as_text()),
        Some("winter-2026")
    );
    assert!(
        parsed
            .message_id()
            .is_some_and(|m| m.starts_with(&id.to_ascii_lowercase())),
        "{:?}",
        parsed.message_id()
    );
    assert!(
        text.starts_with("Received: from [127.0.0.1]"),
        "trace header first"
    );
    assert_eq!(
        parsed.body_text(0).as_deref().map(str::trim_end),
        Some("Plain text\r\nsecond line")
    );
    assert!(
        parsed
            .body_html(0)
            .is_some_and(|h| h.contains("<p>Hello <b>Alice</b></p>"))
    );
    assert_eq!(parsed.attachment_count(), 1);
    let part = parsed.attachment(0).expect("attachment");
    assert_eq!(part.attachment_name(), Some("invoice.bin"));
    assert_eq!(
        part.content_type().map(|c| (c.ctype(), c.subtype())),
        Some(("application", Some("octet-stream")))
    );
    assert_eq!(part.contents(), &attachment[..]);

    // Its history, once the relay recorded the attempt.
    api.wait_for_attempts(&[&id]);
    let shown = api.get(&format!("/v1/messages/{id}"), &key).await;
    assert_eq!(shown.status, 200, "{}", shown.body);
    assert_eq!(shown.body["status"], "delivered");
    assert_eq!(shown.body["submitted_by"], "api:shop");
    assert_eq!(shown.body["tags"], json!(["invoice", "winter"]));
    let recipients = shown.body["recipients"].as_array().expect("recipients");
    assert_eq!(recipients.len(), 3);
    for recipient in recipients {
        assert_eq!(recipient["state"], "delivered", "{recipient}");
        assert!(
            recipient["reply"]
                .as_str()
                .is_some_and(|r| r.starts_with("250")),
            "{recipient}"
        );
    }
    let kinds: Vec<&str> = shown.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(kinds.first(), Some(&"queued"), "{kinds:?}");
    assert!(kinds.contains(&"message.delivered"), "{kinds:?}");

    // A delivered message cannot be cancelled, and says why.
    let cancel = api
        .request(
            reqwest::Method::DELETE,
            &format!("/v1/messages/{id}"),
            Some(&key),
            &[],
            None,
        )
        .await;
    assert_eq!(cancel.status, 409, "{}", cancel.body);
    assert_eq!(cancel.body["error"]["code"], "conflict");
    assert!(
        cancel.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("already delivered")),
        "{}",
        cancel.body
    );

    // Raw: the message as given, the envelope as given.
    let raw = format!(
        "From: {USER}\nTo: bob@example.net\nSubject: raw one\nMessage-ID: <raw-1@example.org>\n\nraw body\n"
    );
    let answer = api
        .post(
            "/v1/messages/raw",
            &key,
            &json!({"mail_from": USER, "rcpt_to": ["bob@example.net"], "message": raw, "tags": ["raw"]}),
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let raw_id = answer.body["id"].as_str().expect("id").to_string();

    // Batch: two good messages and one bad, each with its own result.
    let answer = api
        .post(
            "/v1/messages/batch",
            &key,
            &json!({"messages": [
                simple_message("b1@example.net", "batch one"),
                {"from": USER, "to": ["not an address"], "subject": "bad"},
                simple_message("b2@example.net", "batch two"),
            ]}),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let results = answer.body["results"].as_array().expect("results");
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["status"], 202);
    assert_eq!(results[1]["status"], 422);
    assert_eq!(results[1]["error"]["code"], "invalid_address");
    assert_eq!(results[2]["status"], 202);
    let batch_ids: Vec<String> = [&results[0], &results[2]]
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_string())
        .collect();

    let arrived = inbox.wait_for_count(4, WAIT).await.expect("all delivered");
    let raw_entry = arrived
        .iter()
        .find(|e| e.subject.as_deref() == Some("raw one"))
        .expect("raw message");
    assert_eq!(raw_entry.rcpt_to, ["bob@example.net"]);
    let raw_bytes = inbox.read(&raw_entry.id).expect("read");
    let raw_parsed = MessageParser::default().parse(&raw_bytes).expect("parses");
    assert_eq!(raw_parsed.message_id(), Some("raw-1@example.org"));
    assert_eq!(
        raw_parsed.body_text(0).as_deref().map(str::trim_end),
        Some("raw body")
    );
    for subject in ["batch one", "batch two"] {
        assert!(
            arrived
                .iter()
                .any(|e| e.subject.as_deref() == Some(subject)),
            "{subject}"
        );
    }
    assert_eq!(
        api.queue_count().await,
        4,
        "the bad batch item queued nothing"
    );

    // Listing: by tag, by status, in pages that cover everything once.
    let mut all = vec![id.clone(), raw_id.clone()];
    all.extend(batch_ids.iter().cloned());
    let ids: Vec<&str> = [raw_id.as_str()]
        .into_iter()
        .chain(batch_ids.iter().map(String::as_str))
        .collect();
    api.wait_for_attempts(&ids);
    let tagged = api.get("/v1/messages?tag=invoice", &key).await;
    assert_eq!(tagged.status, 200, "{}", tagged.body);
    let listed: Vec<&str> = tagged.body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["id"].as_str().expect("id"))
        .collect();
    assert_eq!(listed, [id.as_str()]);
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let path = match &cursor {
            Some(c) => format!("/v1/messages?status=delivered&limit=1&cursor={c}"),
            None => "/v1/messages?status=delivered&limit=1".to_string(),
        };
        let page = api.get(&path, &key).await;
        assert_eq!(page.status, 200, "{}", page.body);
        for message in page.body["messages"].as_array().expect("messages") {
            seen.push(message["id"].as_str().expect("id").to_string());
        }
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    seen.sort();
    all.sort();
    assert_eq!(seen, all);
    let future = api
        .get("/v1/messages?since=2999-01-01T00:00:00Z", &key)
        .await;
    assert_eq!(future.body["messages"], json!([]));

    assert!(api.relay.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_makes_retries_and_concurrent_duplicates_one_message() {
    let api = Api::start().await;
    let key = api.sender_key("retrying-app").await;
    let body = simple_message("once@example.net", "only once").to_string();
    let send = |idempotency: &'static str, body: String| {
        let api = &api;
        let key = key.clone();
        async move {
            api.request(
                reqwest::Method::POST,
                "/v1/messages",
                Some(&key),
                &[("idempotency-key", idempotency)],
                Some(body.into_bytes()),
            )
            .await
        }
    };

    let first = send("order-1001", body.clone()).await;
    assert_eq!(first.status, 202, "{}", first.body);
    let again = send("order-1001", body.clone()).await;
    assert_eq!(again.status, 202);
    assert_eq!(again.body, first.body, "the first answer, repeated");
    assert_eq!(
        again
            .headers
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    let other = send(
        "order-1001",
        simple_message("else@example.net", "different").to_string(),
    )
    .await;
    assert_eq!(other.status, 422, "{}", other.body);
    assert_eq!(other.body["error"]["code"], "idempotency_key_reused");
    assert_eq!(api.queue_count().await, 1);

    // Eight at once with a new key: one message, eight times its id.
    let body = simple_message("race@example.net", "raced").to_string();
    let answers = futures_join(std::iter::repeat_n(body, 8).map(|b| send("order-1002", b))).await;
    let ids: Vec<&serde_json::Value> = answers.iter().map(|a| &a.body["id"]).collect();
    assert!(answers.iter().all(|a| a.status == 202), "{:?}", ids);
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_eq!(api.queue_count().await, 2);

    // A different key may use the same Idempotency-Key for its own request.
    let second = api.sender_key("other-app").await;
    let theirs = api
        .request(
            reqwest::Method::POST,
            "/v1/messages",
            Some(&second),
            &[("idempotency-key", "order-1001")],
            Some(
                simple_message("theirs@example.net", "theirs")
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await;
    assert_eq!(theirs.status, 202, "{}", theirs.body);
    assert_ne!(theirs.body["id"], first.body["id"]);
    assert_eq!(api.queue_count().await, 3);

    let inbox = api.harness.sandbox.smtp.inbox();
    let arrived = inbox.wait_for_count(3, WAIT).await.expect("delivered");
    assert_eq!(arrived.len(), 3);
    assert!(api.relay.terminate().success());
}

/// Runs the futures concurrently (on this task) and returns their outputs in order.
async fn futures_join<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futures.map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in pinned.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}
