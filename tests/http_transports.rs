//! The HTTP transports end to end: a real relay (submission listener with
//! STARTTLS and AUTH, the SQLite queue, the delivery engine) delivering
//! through the sandbox's Graph- and Gmail-shaped APIs over real HTTPS on
//! loopback, tokens from the sandbox's authorization server. Waits are on
//! the engine's stats, the inbox and the sandbox's counters, with
//! timeouts; no sleep stands in for synchronisation.
//!
//! What the stored message is, precisely: the API receives the queued
//! message (the submitted bytes with the relay's `Received:` header in
//! front) with its `To`/`Cc`/`Bcc` made to match the envelope
//! (`message::recipients`: fields already matching kept byte for byte, a
//! field naming someone outside the envelope rewritten without them, every
//! `Bcc` dropped and one `Bcc:` with the envelope-only recipients added at
//! the end of the header). The sandbox, like the real services, stores
//! the copy without `Bcc`. So when `To`/`Cc` name only envelope
//! recipients, the stored bytes equal the queued bytes exactly.

mod engine_common;
#[path = "line_client/mod.rs"]
mod line_client;

use engine_common::{ACCOUNT, SENDER, WAIT, test_config};
use line_client::Client;
use oxirelay::config::{Config, Transport};
use oxirelay::delivery::engine::{Engine, EngineConfig, EngineStats, RunningEngine};
use oxirelay::oauth::account::Account;
use oxirelay::oauth::broker::Broker;
use oxirelay::sandbox::certs::SandboxCa;
use oxirelay::sandbox::http_api::{Api, ApiFault};
use oxirelay::sandbox::inbox::InboxEntry;
use oxirelay::sandbox::smtp::FaultTimes;
use oxirelay::sandbox::{ProfileName, Sandbox, SandboxOptions, USER};
use oxirelay::secret::{MasterKey, Secret};
use oxirelay::smtp::server::{SessionLimits, ShutdownTrigger, shutdown_channel};
use oxirelay::store::{AccountState, MessageId, MessageState, NewMessage, SqliteStore, Store};
use oxirelay::submit::{Listeners, RunningListeners, SubmissionOptions, SubmissionPolicy};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};

const DEVICE: &str = "scanner";
const DEVICE_PASSWORD: &str = "correct-horse-battery";

struct Relay {
    sandbox: Sandbox,
    store: Arc<dyn Store>,
    broker: Arc<Broker>,
    wake: Arc<Notify>,
    engine: Option<RunningEngine>,
    listeners: Option<RunningListeners>,
    trigger: ShutdownTrigger,
    relay_ca: PathBuf,
    _shutdown: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

/// A relay whose one account sends through `transport`, its `[[account]]`
/// as `edit` changes it, with the engine configured by `engine`.
async fn relay(
    transport: Transport,
    edit: impl FnOnce(String) -> String,
    engine: impl FnOnce(&mut EngineConfig),
) -> Relay {
    relay_in(ProfileName::Strict, transport, edit, engine).await
}

/// [`relay`] against the sandbox playing `profile`.
async fn relay_in(
    profile: ProfileName,
    transport: Transport,
    edit: impl FnOnce(String) -> String,
    engine: impl FnOnce(&mut EngineConfig),
) -> Relay {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = SandboxOptions::new(dir.path().join("sandbox"));
    options.profile = profile;
    let sandbox = Sandbox::start(options).await.expect("sandbox");
    let secret = dir.path().join("client.secret");
    std::fs::write(&secret, sandbox.client_secret.expose()).expect("secret");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))
            .expect("private secret");
    }
    let ca = SandboxCa::generate().expect("CA");
    let relay_ca = dir.path().join("relay-ca.pem");
    let cert = dir.path().join("relay-cert.pem");
    let key = dir.path().join("relay-key.pem");
    ca.write_ca(&relay_ca).expect("write CA");
    ca.write_leaf(&cert, &key).expect("write leaf");
    let hash = oxirelay::users::hash_password(&Secret::new(DEVICE_PASSWORD)).expect("hash");
    let account = edit(sandbox.api_account_toml(
        ACCOUNT,
        "client_credentials",
        &format!("file:{}", secret.display()),
        transport,
    ));
    let text = format!(
        r#"
[store]
url = "sqlite://{store}"

{account}

[[listener]]
addr = "127.0.0.1:0"
tls = "starttls"
cert = "{cert}"
key = "{key}"

[[user]]
name = "{DEVICE}"
password_hash = "{hash}"
allowed_from = ["{SENDER}"]
account = "{ACCOUNT}"
"#,
        store = dir.path().join("relay.db").display(),
        cert = cert.display(),
        key = key.display(),
    );
    let config = Config::parse(&text, &dir.path().join("oxirelay.toml")).expect("config");
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&config.store.url).await.expect("store"));
    let accounts = vec![Account::from_config(&config.accounts[0]).expect("account")];
    let broker = Arc::new(Broker::new(
        store.clone(),
        Arc::new(MasterKey::from_bytes([7; 32])),
        accounts,
    ));
    let wake = Arc::new(Notify::new());
    let options = SubmissionOptions {
        hostname: "relay.test".into(),
        limits: SessionLimits {
            command_timeout: Duration::from_secs(30),
            ..SessionLimits::default()
        },
        ..SubmissionOptions::default()
    };
    let policy = SubmissionPolicy::new(&config, store.clone(), wake.clone(), options);
    let (trigger, signal) = shutdown_channel();
    let listeners = Listeners::start(&config, &policy, signal)
        .await
        .expect("listeners");
    let mut engine_config = test_config();
    engine(&mut engine_config);
    let (shutdown, _) = watch::channel(false);
    let engine = Engine::start(
        store.clone(),
        broker.clone(),
        engine_config,
        wake.clone(),
        shutdown.subscribe(),
    );
    Relay {
        sandbox,
        store,
        broker,
        wake,
        engine: Some(engine),
        listeners: Some(listeners),
        trigger,
        relay_ca,
        _shutdown: shutdown,
        _dir: dir,
    }
}

impl Relay {
    fn engine(&self) -> &RunningEngine {
        self.engine.as_ref().expect("running")
    }

    async fn wait_stats(
        &self,
        what: &str,
        condition: impl Fn(&EngineStats) -> bool,
    ) -> EngineStats {
        self.engine()
            .wait_until(condition, WAIT)
            .await
            .unwrap_or_else(|| panic!("{what}: {:?}", self.engine().stats()))
    }

    /// The sandbox's inbox once it holds `count` messages (`what` names
    /// them in the failure).
    async fn arrived(&self, count: usize, what: &str) -> Vec<InboxEntry> {
        self.sandbox
            .smtp
            .inbox()
            .wait_for_count(count, WAIT)
            .await
            .expect(what)
    }

    /// Submits `message` over SMTP (STARTTLS, AUTH PLAIN) to `rcpt`;
    /// returns the queue id.
    async fn submit(&self, rcpt: &[&str], message: &[u8]) -> MessageId {
        let addr = self.listeners.as_ref().expect("running").addrs()[0];
        let mut client = Client::connect_addr(addr, WAIT).await;
        client.greet_with_starttls_trusting(&self.relay_ca).await;
        let reply = client.auth_plain(DEVICE, DEVICE_PASSWORD).await;
        assert!(reply.starts_with("235"), "AUTH: {reply}");
        let reply = client.command(&format!("MAIL FROM:<{SENDER}>")).await;
        assert!(reply.starts_with("250"), "MAIL: {reply}");
        for to in rcpt {
            let reply = client.command(&format!("RCPT TO:<{to}>")).await;
            assert!(reply.starts_with("250"), "RCPT {to}: {reply}");
        }
        let reply = client.command("DATA").await;
        assert!(reply.starts_with("354"), "DATA: {reply}");
        client.write(message).await;
        client.write(b".\r\n").await;
        let reply = client.reply().await;
        assert!(reply.starts_with("250"), "end of data: {reply}");
        let _ = client.command("QUIT").await;
        let id = reply
            .rsplit(' ')
            .next()
            .expect("queue id")
            .trim()
            .to_string();
        MessageId(id)
    }

    /// Enqueues as the submission side does, without a session.
    async fn enqueue(&self, rcpt: &[&str], body: Vec<u8>) -> MessageId {
        let id = self
            .store
            .enqueue(NewMessage {
                account: ACCOUNT.into(),
                mail_from: SENDER.into(),
                recipients: rcpt.iter().map(|r| r.to_string()).collect(),
                body,
                submitted_by: "test".into(),
            })
            .await
            .expect("enqueue");
        self.wake.notify_one();
        id
    }

    async fn queued_body(&self, id: &MessageId) -> Vec<u8> {
        self.store
            .message(id)
            .await
            .expect("read")
            .expect("exists")
            .1
    }

    async fn account_state(&self) -> (AccountState, String) {
        let record = self
            .store
            .token_record(ACCOUNT)
            .await
            .expect("read")
            .expect("the account has a row");
        (record.state, record.state_reason.unwrap_or_default())
    }

    fn tokens_issued(&self) -> u64 {
        self.sandbox.auth.stats().tokens_issued
    }

    async fn shutdown(mut self) {
        if let Some(engine) = self.engine.take() {
            engine.shutdown().await;
        }
        self.trigger.trigger();
        if let Some(listeners) = self.listeners.take() {
            let _ = tokio::time::timeout(WAIT, listeners.wait()).await;
        }
        let _ = &self.broker;
        self.sandbox.shutdown().await;
    }
}

fn api_of(transport: Transport) -> Api {
    match transport {
        Transport::Graph => Api::Graph,
        _ => Api::Gmail,
    }
}

fn message(to: &str, cc: Option<&str>, subject: &str) -> Vec<u8> {
    let cc = cc.map(|cc| format!("Cc: {cc}\r\n")).unwrap_or_default();
    format!(
        "From: App <{SENDER}>\r\nTo: {to}\r\n{cc}Subject: {subject}\r\nMessage-ID: <{subject}@example.com>\r\n\r\nHello over HTTP.\r\n..a line that starts with a dot\r\n"
    )
    .into_bytes()
}

async fn to_cc_and_bcc_each_once(transport: Transport) {
    let relay = relay(transport, |t| t, |_| {}).await;
    let submitted = message(
        "Bob <bob@example.net>",
        Some("carol@example.net"),
        "three-ways",
    );
    let id = relay
        .submit(
            &["bob@example.net", "carol@example.net", "hidden@example.net"],
            &submitted,
        )
        .await;
    relay
        .wait_stats("delivered", |s| s.messages_delivered == 1)
        .await;
    let inbox = relay.sandbox.smtp.inbox();
    let entries = inbox.wait_for_count(1, WAIT).await.expect("arrived");
    assert_eq!(entries.len(), 1, "one copy: {entries:?}");
    let entry = &entries[0];
    assert_eq!(entry.transport, api_of(transport).transport());
    assert_eq!(
        entry.rcpt_to,
        ["bob@example.net", "carol@example.net", "hidden@example.net"],
        "each envelope recipient once, nobody else"
    );
    assert_eq!(entry.user.as_deref(), Some(USER));
    // The queued message is what was submitted with the relay's trace
    // header in front...
    let queued = relay.queued_body(&id).await;
    assert!(
        queued.starts_with(b"Received: "),
        "{}",
        String::from_utf8_lossy(&queued)
    );
    let unstuffed = String::from_utf8(submitted.clone())
        .expect("utf-8")
        .replace("\r\n..a line", "\r\n.a line");
    assert!(queued.ends_with(unstuffed.as_bytes()));
    // ...and what arrived is that, byte for byte: the Bcc the relay added
    // for hidden@ is gone from the stored copy, as from real deliveries.
    let stored = inbox.read(&entry.id).expect("read");
    assert_eq!(
        String::from_utf8_lossy(&stored),
        String::from_utf8_lossy(&queued)
    );
    let message = relay
        .store
        .message(&id)
        .await
        .expect("read")
        .expect("exists")
        .0;
    assert_eq!(message.state, MessageState::Delivered);
    // One API request for the message, one token for the account.
    assert_eq!(relay.engine().api_requests(), 1);
    assert_eq!(relay.tokens_issued(), 1);
    relay.shutdown().await;
}

#[tokio::test]
async fn graph_delivers_to_to_cc_and_bcc_each_once() {
    to_cc_and_bcc_each_once(Transport::Graph).await;
}

#[tokio::test]
async fn gmail_api_delivers_to_to_cc_and_bcc_each_once() {
    to_cc_and_bcc_each_once(Transport::GmailApi).await;
}

async fn header_recipient_outside_the_envelope_is_not_sent_to(transport: Transport) {
    let relay = relay(transport, |t| t, |_| {}).await;
    let submitted = message(
        "bob@example.net, Eve <eve@example.net>",
        Some("mallory@example.net"),
        "strangers",
    );
    relay.submit(&["bob@example.net"], &submitted).await;
    relay
        .wait_stats("delivered", |s| s.messages_delivered == 1)
        .await;
    let entries = relay.arrived(1, "arrived").await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].rcpt_to, ["bob@example.net"]);
    let stored = String::from_utf8(
        relay
            .sandbox
            .smtp
            .inbox()
            .read(&entries[0].id)
            .expect("read"),
    )
    .expect("utf-8");
    // The rewritten field keeps bob's text and loses eve; the Cc that named
    // only mallory is gone.
    assert!(stored.contains("\r\nTo: bob@example.net\r\n"), "{stored:?}");
    assert!(!stored.contains("eve@"), "{stored}");
    assert!(!stored.contains("mallory@"), "{stored}");
    relay.shutdown().await;
}

#[tokio::test]
async fn graph_does_not_send_to_header_recipients_outside_the_envelope() {
    header_recipient_outside_the_envelope_is_not_sent_to(Transport::Graph).await;
}

#[tokio::test]
async fn gmail_api_does_not_send_to_header_recipients_outside_the_envelope() {
    header_recipient_outside_the_envelope_is_not_sent_to(Transport::GmailApi).await;
}

async fn retry_after_is_honoured(transport: Transport) {
    let relay = relay(transport, |t| t, |_| {}).await;
    let api = api_of(transport);
    relay.sandbox.api.faults().inject(
        ApiFault::Status {
            api: Some(api),
            status: 429,
            retry_after: Some(3),
        },
        FaultTimes::Next(1),
    );
    let id = relay
        .enqueue(
            &["bob@example.net"],
            message("bob@example.net", None, "later"),
        )
        .await;
    relay
        .wait_stats("throttled, then delivered", |s| {
            s.throttled >= 1 && s.messages_delivered == 1
        })
        .await;
    let arrivals = relay.sandbox.api.arrivals(api);
    assert_eq!(arrivals.len(), 2, "one refused, one accepted");
    let waited = arrivals[1] - arrivals[0];
    assert!(
        waited >= Duration::from_secs(3),
        "the next request came after {waited:?}, before Retry-After: 3"
    );
    let entries = relay.arrived(1, "nothing lost").await;
    assert_eq!(entries.len(), 1);
    let message = relay
        .store
        .message(&id)
        .await
        .expect("read")
        .expect("exists")
        .0;
    assert_eq!(message.state, MessageState::Delivered);
    assert_eq!(message.attempts, 2);
    let (state, reason) = relay.account_state().await;
    assert_eq!(state, AccountState::Valid, "{reason}");
    relay.shutdown().await;
}

#[tokio::test]
async fn graph_429_with_retry_after_defers_the_account_that_long() {
    retry_after_is_honoured(Transport::Graph).await;
}

#[tokio::test]
async fn gmail_api_429_with_retry_after_defers_the_account_that_long() {
    retry_after_is_honoured(Transport::GmailApi).await;
}

async fn unauthorized_refreshes_once_and_retries_once(transport: Transport) {
    let relay = relay(transport, |t| t, |_| {}).await;
    let api = api_of(transport);
    relay.sandbox.api.faults().inject(
        ApiFault::Status {
            api: Some(api),
            status: 401,
            retry_after: None,
        },
        FaultTimes::Next(1),
    );
    relay
        .enqueue(
            &["bob@example.net"],
            message("bob@example.net", None, "refresh"),
        )
        .await;
    let stats = relay
        .wait_stats("delivered after one refresh", |s| s.messages_delivered == 1)
        .await;
    assert_eq!(stats.attempts, 1, "the retry is inside the attempt");
    assert_eq!(relay.tokens_issued(), 2, "one token, one refresh");
    assert_eq!(
        relay.sandbox.api.arrivals(api).len(),
        2,
        "one request, one retry"
    );
    assert_eq!(relay.sandbox.api.stats().unauthorized, 1);
    let (state, reason) = relay.account_state().await;
    assert_eq!(state, AccountState::Valid, "{reason}");
    relay.shutdown().await;
}

#[tokio::test]
async fn graph_401_refreshes_once_and_retries_once() {
    unauthorized_refreshes_once_and_retries_once(Transport::Graph).await;
}

#[tokio::test]
async fn gmail_api_401_refreshes_once_and_retries_once() {
    unauthorized_refreshes_once_and_retries_once(Transport::GmailApi).await;
}

#[tokio::test]
async fn a_second_401_marks_the_account_failing_and_keeps_the_mail() {
    // The failed account's back-off is what keeps the message deferred
    // while it is read below: at the harness's 1 s (due again at the next
    // whole second, often sooner) a worker could already hold it again.
    let relay = relay(
        Transport::Graph,
        |t| t,
        |engine| engine.throttle_backoff = Duration::from_secs(120),
    )
    .await;
    relay.sandbox.api.faults().inject(
        ApiFault::Status {
            api: Some(Api::Graph),
            status: 401,
            retry_after: None,
        },
        FaultTimes::Always,
    );
    let id = relay
        .enqueue(
            &["bob@example.net"],
            message("bob@example.net", None, "refused"),
        )
        .await;
    relay.wait_stats("an attempt", |s| s.attempts >= 1).await;
    assert_eq!(
        relay.sandbox.api.arrivals(Api::Graph).len(),
        2,
        "retried once only"
    );
    assert_eq!(relay.tokens_issued(), 2);
    let (state, reason) = relay.account_state().await;
    assert_eq!(state, AccountState::Failing, "{reason}");
    let message = relay
        .store
        .message(&id)
        .await
        .expect("read")
        .expect("exists")
        .0;
    assert_eq!(message.state, MessageState::Deferred, "{message:?}");
    relay.shutdown().await;
}

async fn forbidden_says_what_to_grant(transport: Transport, expect: &[&str]) {
    let relay = relay(transport, |t| t, |_| {}).await;
    let api = api_of(transport);
    relay.sandbox.api.faults().inject(
        ApiFault::Status {
            api: Some(api),
            status: 403,
            retry_after: None,
        },
        FaultTimes::Always,
    );
    let id = relay
        .enqueue(
            &["bob@example.net"],
            message("bob@example.net", None, "denied"),
        )
        .await;
    relay
        .wait_stats("refused by the API", |s| {
            s.needs_admin >= 1 && s.attempts >= 1
        })
        .await;
    let (state, reason) = relay.account_state().await;
    assert_eq!(state, AccountState::NeedsAdmin, "{reason}");
    for words in expect {
        assert!(reason.contains(words), "{words:?} in {reason}");
    }
    let message = relay
        .store
        .message(&id)
        .await
        .expect("read")
        .expect("exists")
        .0;
    assert_eq!(message.state, MessageState::Deferred, "kept: {message:?}");
    // A 403 is not the token's fault: no refresh.
    assert_eq!(relay.tokens_issued(), 1);
    relay.shutdown().await;
}

#[tokio::test]
async fn graph_403_says_to_grant_mail_send() {
    forbidden_says_what_to_grant(
        Transport::Graph,
        &[
            "Mail.Send",
            "ErrorAccessDenied",
            "New-ApplicationAccessPolicy",
        ],
    )
    .await;
}

#[tokio::test]
async fn gmail_api_403_says_to_grant_gmail_send() {
    forbidden_says_what_to_grant(
        Transport::GmailApi,
        &[
            "insufficientPermissions",
            "https://www.googleapis.com/auth/gmail.send",
            "domain-wide delegation",
        ],
    )
    .await;
}

/// A message whose base64 form is over Graph's 4 MB.
fn oversized() -> Vec<u8> {
    let mut body = message("bob@example.net", None, "large");
    let line = "x".repeat(76) + "\r\n";
    while body.len() < 3_300_000 {
        body.extend_from_slice(line.as_bytes());
    }
    body
}

#[tokio::test]
async fn over_the_graph_limit_bounces_with_the_reason_by_default() {
    let relay = relay(Transport::Graph, |t| t, |_| {}).await;
    let id = relay.enqueue(&["bob@example.net"], oversized()).await;
    relay
        .wait_stats("bounced", |s| {
            s.messages_bounced >= 1 && s.dsns_enqueued == 1
        })
        .await;
    let message = relay
        .store
        .message(&id)
        .await
        .expect("read")
        .expect("exists")
        .0;
    assert_eq!(message.state, MessageState::Bounced);
    let reason = message.recipients[0].reply.clone().unwrap_or_default();
    assert!(
        reason.contains("over its limit of 4194304 bytes"),
        "{reason}"
    );
    assert!(reason.contains("large_messages = \"smtp\""), "{reason}");
    // The DSN to the sender goes through the same account (Graph), at its
    // own pace: wait for it, then the one request Graph saw is the DSN
    // and the large message itself never left.
    let entries = relay.arrived(1, "the DSN arrived").await;
    assert_eq!(entries.len(), 1, "only the DSN: {entries:?}");
    assert_eq!(entries[0].rcpt_to, [SENDER], "{entries:?}");
    assert!(entries[0].size < 100_000, "{entries:?}");
    assert_eq!(relay.sandbox.api.stats().graph_requests, 1, "the DSN only");
    relay.shutdown().await;
}

#[tokio::test]
async fn over_the_graph_limit_goes_over_smtp_when_configured() {
    // The fallback logs in to the SMTP server with the account's token,
    // which then carries the SMTP scope too, on purpose.
    let relay = relay(
        Transport::Graph,
        |toml| {
            toml.replace(
                "scopes = [\"https://graph.microsoft.com/.default\"]",
                "scopes = [\"https://graph.microsoft.com/.default\", \"smtp.send\"]\nlarge_messages = \"smtp\"\nsasl = \"oauthbearer\"",
            )
        },
        |_| {},
    )
    .await;
    let small = relay
        .enqueue(
            &["bob@example.net"],
            message("bob@example.net", None, "small"),
        )
        .await;
    let large = relay.enqueue(&["bob@example.net"], oversized()).await;
    relay
        .wait_stats("both delivered", |s| s.messages_delivered == 2)
        .await;
    let entries = relay.arrived(2, "both arrived").await;
    let mut transports: Vec<&str> = entries.iter().map(|e| e.transport.as_str()).collect();
    transports.sort();
    assert_eq!(transports, ["graph", "smtp"]);
    for id in [small, large] {
        let message = relay
            .store
            .message(&id)
            .await
            .expect("read")
            .expect("exists")
            .0;
        assert_eq!(message.state, MessageState::Delivered);
    }
    assert_eq!(relay.sandbox.api.stats().graph_requests, 1, "the small one");
    relay.shutdown().await;
}

#[tokio::test]
async fn an_smtp_only_token_is_refused_by_gmail_and_the_config_check_names_the_scope() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sandbox = Sandbox::start(SandboxOptions::new(dir.path().join("sandbox")))
        .await
        .expect("sandbox");
    // A token with the SMTP scope only, from the sandbox's token endpoint.
    let http = oxirelay::oauth::grant::http_client(true);
    let answer: serde_json::Value = http
        .post(sandbox.auth.token_url())
        .basic_auth(
            oxirelay::sandbox::CLIENT_ID,
            Some(sandbox.client_secret.expose()),
        )
        .form(&[("grant_type", "client_credentials"), ("scope", "smtp.send")])
        .send()
        .await
        .expect("token request")
        .json()
        .await
        .expect("token JSON");
    let token = answer["access_token"]
        .as_str()
        .expect("a token")
        .to_string();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(sandbox.ca_file()).expect("CA"))
        .expect("PEM");
    let api = reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .expect("client");
    let raw = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE,
        message("bob@example.net", None, "smtp-scope"),
    );
    let response = api
        .post(format!(
            "{}/gmail/v1/users/{USER}/messages/send",
            sandbox.api.base_url()
        ))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "raw": raw }))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 403);
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(challenge.contains("insufficient_scope"), "{challenge}");
    let body: serde_json::Value = response.json().await.expect("error JSON");
    assert_eq!(
        body["error"]["errors"][0]["reason"],
        "insufficientPermissions"
    );
    assert_eq!(body["error"]["status"], "PERMISSION_DENIED");
    assert_eq!(sandbox.smtp.inbox().count(), 0);

    // The same token's scope in a gmail_api account: the config check says
    // which scope the transport needs.
    let text = sandbox
        .api_account_toml(
            ACCOUNT,
            "client_credentials",
            "env:UNUSED",
            Transport::GmailApi,
        )
        .replace(
            "scopes = [\"https://www.googleapis.com/auth/gmail.send\"]",
            "scopes = [\"smtp.send\"]",
        );
    let error = Config::parse(&text, &dir.path().join("oxirelay.toml"))
        .expect_err("an SMTP scope for the Gmail API")
        .to_string();
    assert!(
        error.contains("https://www.googleapis.com/auth/gmail.send"),
        "{error}"
    );
    sandbox.shutdown().await;
}

/// The benchmark of `bench/http-transports.sh` (ignored in normal runs):
/// delivered messages/s through each transport at 1, 4 and 16 concurrent
/// deliveries (engine workers), the same invocation's SMTP figure beside
/// them, and API requests per message. The queue is filled first and the
/// clock runs from the engine's start to the last delivery; the sandbox
/// counts what it accepts and stores nothing (its SMTP baseline's fsyncs
/// would otherwise be what is measured). `BENCH_MESSAGES` per run (500).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: bench/http-transports.sh runs it"]
async fn bench_http_transports() {
    let messages: usize = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let concurrency: Vec<usize> = std::env::var("BENCH_CONCURRENCY")
        .ok()
        .map(|v| {
            v.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_else(|| vec![1, 4, 16]);
    // libtest prints "test NAME ... " without a newline before our output.
    println!(
        "\ntransport,concurrency,messages,seconds,delivered_per_s,api_requests_per_message,token_requests"
    );
    for &workers in &concurrency {
        for transport in [Transport::Smtp, Transport::Graph, Transport::GmailApi] {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut options = SandboxOptions::new(dir.path().join("sandbox"));
            options.count_only = true;
            options.max_smtp_sessions = 512;
            let sandbox = Sandbox::start(options).await.expect("sandbox");
            let secret = dir.path().join("client.secret");
            std::fs::write(&secret, sandbox.client_secret.expose()).expect("secret");
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))
                    .expect("private");
            }
            let secret_ref = format!("file:{}", secret.display());
            let account = match transport {
                Transport::Smtp => sandbox.account_toml(ACCOUNT, "client_credentials", &secret_ref),
                _ => {
                    sandbox.api_account_toml(ACCOUNT, "client_credentials", &secret_ref, transport)
                }
            };
            let config =
                Config::parse(&account, &dir.path().join("oxirelay.toml")).expect("config");
            let url = format!("sqlite://{}", dir.path().join("relay.db").display());
            let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&url).await.expect("store"));
            let broker = Arc::new(Broker::new(
                store.clone(),
                Arc::new(MasterKey::from_bytes([7; 32])),
                vec![Account::from_config(&config.accounts[0]).expect("account")],
            ));
            let body = {
                let mut body = message("bob@example.net", Some("carol@example.net"), "bench");
                while body.len() < 5120 {
                    body.extend_from_slice(
                        b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n",
                    );
                }
                body
            };
            for _ in 0..messages {
                store
                    .enqueue(NewMessage {
                        account: ACCOUNT.into(),
                        mail_from: SENDER.into(),
                        recipients: vec!["bob@example.net".into(), "carol@example.net".into()],
                        body: body.clone(),
                        submitted_by: "bench".into(),
                    })
                    .await
                    .expect("enqueue");
            }
            let mut config = test_config();
            config.workers = workers;
            config.claim_batch = 4;
            config.pool.max_connections_per_account = workers;
            config.pool.generic_max_connections = workers;
            let (shutdown, _) = watch::channel(false);
            let wake = Arc::new(Notify::new());
            let started = std::time::Instant::now();
            let engine = Engine::start(
                store.clone(),
                broker,
                config,
                wake.clone(),
                shutdown.subscribe(),
            );
            wake.notify_waiters();
            let done = engine
                .wait_until(
                    |s| s.messages_delivered as usize >= messages,
                    Duration::from_secs(600),
                )
                .await
                .unwrap_or_else(|| panic!("{transport} at {workers}: {:?}", engine.stats()));
            let seconds = started.elapsed().as_secs_f64();
            assert_eq!(done.recipients_bounced, 0);
            let requests = engine.api_requests();
            println!(
                "{transport},{workers},{messages},{seconds:.2},{:.0},{:.2},{}",
                messages as f64 / seconds,
                requests as f64 / messages as f64,
                sandbox.auth.stats().tokens_issued
            );
            engine.shutdown().await;
            sandbox.shutdown().await;
        }
    }
}

#[tokio::test]
async fn graph_has_at_most_four_requests_per_mailbox_in_flight() {
    // Eight workers, each with a message, and every Graph answer slowed:
    // without the cap all eight would be in flight at once.
    let relay = relay(
        Transport::Graph,
        |t| t,
        |config| {
            config.workers = 8;
            config.claim_batch = 1;
        },
    )
    .await;
    relay.sandbox.api.faults().inject(
        ApiFault::Slow(Duration::from_millis(300)),
        FaultTimes::Always,
    );
    for i in 0..12 {
        relay
            .enqueue(
                &["bob@example.net"],
                message("bob@example.net", None, &format!("concurrent-{i}")),
            )
            .await;
    }
    relay
        .wait_stats("all delivered", |s| s.messages_delivered == 12)
        .await;
    let stats = relay.sandbox.api.stats();
    assert!(stats.max_in_flight <= 4, "{stats:?}");
    assert!(
        stats.max_in_flight >= 2,
        "deliveries ran in parallel: {stats:?}"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn oxirelay_send_works_through_each_api() {
    for transport in [Transport::Graph, Transport::GmailApi] {
        let relay = relay(transport, |t| t, |_| {}).await;
        let account = relay.broker.account(ACCOUNT).expect("account").clone();
        let outgoing = oxirelay::message::OutgoingMessage {
            envelope: oxirelay::message::Envelope {
                mail_from: SENDER.into(),
                rcpt_to: vec!["bob@example.net".into(), "hidden@example.net".into()],
            },
            bytes: message("bob@example.net", None, "one-shot"),
        };
        let report = oxirelay::delivery::upstream::send_now(&relay.broker, &account, &outgoing)
            .await
            .expect("sent");
        assert!(report.accepted(), "{report:?}");
        let entries = relay.arrived(1, "arrived").await;
        assert_eq!(
            entries[0].rcpt_to,
            ["bob@example.net", "hidden@example.net"]
        );
        assert_eq!(entries[0].transport, api_of(transport).transport());
        relay.shutdown().await;
    }
}

#[tokio::test]
async fn graph_takes_entra_app_tokens_and_gmail_takes_google_tokens() {
    // The microsoft profile issues Entra tokens (app-only: `roles`
    // Mail.Send for the Graph resource); the google profile opaque tokens
    // that only introspection vouches for.
    for (profile, transport) in [
        (ProfileName::Microsoft, Transport::Graph),
        (ProfileName::Google, Transport::GmailApi),
    ] {
        let relay = relay_in(profile, transport, |t| t, |_| {}).await;
        relay
            .enqueue(
                &["bob@example.net"],
                message("bob@example.net", None, "profiles"),
            )
            .await;
        relay
            .wait_stats("delivered", |s| s.messages_delivered == 1)
            .await;
        let entries = relay.arrived(1, "arrived").await;
        assert_eq!(entries[0].transport, api_of(transport).transport());
        relay.shutdown().await;
    }
}
