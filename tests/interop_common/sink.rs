//! The mail sink behind Dovecot: Dovecot's submission service relays what
//! it accepts to `submission_relay_host`, a plain SMTP server. This one is
//! the project's own `smtp::server` session (the same one the sandbox and
//! the listeners use) with a policy that needs no AUTH and stores every
//! message in a Maildir ([`Inbox`]), so a test can wait for arrivals
//! without polling and read the bytes exactly as they were relayed.

use super::WAIT;
use oxirelay::sandbox::inbox::{Delivery, Inbox, InboxEntry};
use oxirelay::secret::Secret;
use oxirelay::smtp::sasl::Mechanism;
use oxirelay::smtp::server::{
    AuthRefusal, BoxFuture, Envelope, Identity, Refusal, Reply, ServerOptions, SessionContext,
    SessionPolicy, SessionRules, ShutdownTrigger, TlsMode, serve, shutdown_channel,
};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinHandle;

pub struct Sink {
    pub addr: SocketAddr,
    pub inbox: Inbox,
    trigger: ShutdownTrigger,
    task: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

struct SinkPolicy {
    inbox: Inbox,
}

impl SessionPolicy for SinkPolicy {
    fn on_connect(&self, _peer: SocketAddr) -> BoxFuture<'_, Result<SessionRules, Refusal>> {
        Box::pin(async {
            Ok(SessionRules {
                // Dovecot relays without authenticating (no
                // submission_relay_user): the sink is a plain MTA on
                // loopback.
                auth_required: false,
                mechanisms: vec![],
                offer_starttls: false,
                ..SessionRules::default()
            })
        })
    }

    fn verify_bearer<'a>(
        &'a self,
        _context: &'a SessionContext,
        _mechanism: Mechanism,
        _user: &'a str,
        _token: &'a Secret,
    ) -> BoxFuture<'a, Result<Identity, AuthRefusal>> {
        Box::pin(async { Err(AuthRefusal::Credentials) })
    }

    fn accept_message<'a>(
        &'a self,
        _context: &'a SessionContext,
        envelope: &'a Envelope,
        message: &'a [u8],
    ) -> BoxFuture<'a, Result<String, Refusal>> {
        Box::pin(async move {
            let delivery = Delivery {
                mail_from: envelope.mail_from.clone(),
                rcpt_to: envelope.rcpt_to.clone(),
                user: None,
                mechanism: None,
                token_fingerprint: None,
            };
            self.inbox
                .store(delivery, message.to_vec())
                .await
                .map(|entry| entry.id)
                .map_err(|e| {
                    Refusal::Reply(Reply::new(451, format!("4.3.0 the sink cannot store: {e}")))
                })
        })
    }
}

impl Sink {
    pub async fn start() -> Sink {
        let dir = tempfile::tempdir().expect("tempdir");
        let inbox = Inbox::open(dir.path().join("Maildir")).expect("the sink's Maildir");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the sink listens");
        let addr = listener.local_addr().expect("address");
        let policy: Arc<dyn SessionPolicy> = Arc::new(SinkPolicy {
            inbox: inbox.clone(),
        });
        let (trigger, signal) = shutdown_channel();
        let options = ServerOptions {
            tls_mode: TlsMode::None,
            hostname: "sink.test".into(),
            ..ServerOptions::default()
        };
        let task = tokio::spawn(async move {
            serve(listener, None, policy, options, signal)
                .await
                .expect("the sink serves");
        });
        Sink {
            addr,
            inbox,
            trigger,
            task,
            _dir: dir,
        }
    }

    /// Waits until `n` messages have arrived (in all) and returns them in
    /// arrival order with their bytes.
    pub async fn wait_for(&self, n: usize) -> Vec<(InboxEntry, Vec<u8>)> {
        let entries = self
            .inbox
            .wait_for_count(n, WAIT)
            .await
            .unwrap_or_else(|e| panic!("{n} messages did not reach the sink: {e}"));
        entries
            .into_iter()
            .map(|entry| {
                let bytes = self.inbox.read(&entry.id).expect("read a sink message");
                (entry, bytes)
            })
            .collect()
    }

    /// The one message with `subject`, waiting until at least `n` arrived.
    pub async fn find(&self, n: usize, subject: &str) -> (InboxEntry, Vec<u8>) {
        let all = self.wait_for(n).await;
        let mut matching: Vec<_> = all
            .into_iter()
            .filter(|(entry, _)| entry.subject.as_deref() == Some(subject))
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "expected one message with subject {subject:?} in the sink"
        );
        matching.remove(0)
    }

    pub fn count(&self) -> usize {
        self.inbox.count()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.trigger.trigger();
        self.task.abort();
    }
}
