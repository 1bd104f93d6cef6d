//! A webhook receiver for the tests: a real HTTP server (axum) on
//! 127.0.0.1:0 that records every request it gets, answers 500 while told
//! to fail, and lets a test wait, with a timeout, until what it recorded
//! satisfies a condition. The signature is checked here with aws-lc-rs's
//! HMAC directly, not with the relay's own verifier.

#![allow(dead_code)]

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::watch;

pub const WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub signature: Option<String>,
    pub event_id: Option<String>,
    pub body: Vec<u8>,
    /// What the receiver answered.
    pub status: u16,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    pub fn kind(&self) -> String {
        self.json()["kind"].as_str().unwrap_or_default().to_string()
    }

    pub fn id(&self) -> i64 {
        self.json()["id"].as_i64().expect("an id")
    }

    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Checks `Oxirelay-Signature: t=..,v1=..` as a receiver would: the
    /// HMAC-SHA256 of "{t}.{body}" under `secret`, and t within 5 minutes.
    pub fn assert_signed(&self, secret: &str) {
        let header = self.signature.as_deref().expect("a signature header");
        let mut t = None;
        let mut v1 = None;
        for part in header.split(',') {
            match part.split_once('=') {
                Some(("t", value)) => t = Some(value.to_string()),
                Some(("v1", value)) => v1 = Some(value.to_string()),
                _ => {}
            }
        }
        let (t, v1) = (t.expect("t="), v1.expect("v1="));
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
        let mut signed = format!("{t}.").into_bytes();
        signed.extend_from_slice(&self.body);
        let tag: String = aws_lc_rs::hmac::sign(&key, &signed)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(tag, v1, "the signature is the HMAC of t.body");
        let age = oxirelay::clock::now_unix() - t.parse::<i64>().expect("t is a number");
        assert!(age.abs() < 300, "the timestamp is current ({age} s)");
        assert_eq!(
            self.event_id.as_deref(),
            Some(self.id().to_string().as_str()),
            "Oxirelay-Event-Id names the event in the body"
        );
    }
}

struct Shared {
    received: watch::Sender<Vec<Received>>,
    /// Requests still to refuse with 500.
    fail_next: AtomicUsize,
    fail_always: AtomicBool,
}

pub struct Receiver {
    pub url: String,
    shared: Arc<Shared>,
    received: watch::Receiver<Vec<Received>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let (sender, received) = watch::channel(Vec::new());
        let shared = Arc::new(Shared {
            received: sender,
            fail_next: AtomicUsize::new(0),
            fail_always: AtomicBool::new(false),
        });
        let app = axum::Router::new()
            .route("/{*path}", axum::routing::post(record))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            url,
            shared,
            received,
            task,
        }
    }

    /// Answer the next `n` requests with 500.
    pub fn fail_next(&self, n: usize) {
        self.shared.fail_next.store(n, Ordering::SeqCst);
    }

    pub fn fail_always(&self, on: bool) {
        self.shared.fail_always.store(on, Ordering::SeqCst);
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.borrow().clone()
    }

    /// Waits until the recorded requests satisfy `done`; fails after [`WAIT`].
    pub async fn wait_for(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let mut received = self.received.clone();
        match tokio::time::timeout(WAIT, received.wait_for(|r| done(r))).await {
            Ok(Ok(found)) => found.clone(),
            _ => panic!(
                "the receiver did not get {what} within {WAIT:?}; it got: {:#?}",
                self.received()
                    .iter()
                    .map(|r| (
                        r.path.clone(),
                        r.status,
                        String::from_utf8_lossy(&r.body).to_string()
                    ))
                    .collect::<Vec<_>>()
            ),
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(
    State(shared): State<Arc<Shared>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let failing = shared.fail_always.load(Ordering::SeqCst)
        || shared
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
    let status = if failing {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let request = Received {
        path: uri.path().to_string(),
        signature: header("oxirelay-signature"),
        event_id: header("oxirelay-event-id"),
        body: body.to_vec(),
        status: status.as_u16(),
    };
    shared.received.send_modify(|all| all.push(request));
    status
}
