//! One refresh per account across processes (DESIGN.md contract 3): the
//! built binary's `oxirelay token`, several at once, against the sandbox,
//! which rotates refresh tokens and revokes the whole grant when a rotated
//! one is used again. A lease left by a dead process blocks nobody, and a
//! store that refuses the commit of a refreshed token does not lose the
//! rotated refresh token.

mod common;

use async_trait::async_trait;
use common::{ACCOUNT, Harness, WAIT};
use oxirelay::instance::Holder;
use oxirelay::oauth::broker::{Broker, BrokerError};
use oxirelay::sandbox::authz::TokenFault;
use oxirelay::secret::SealedValue;
use oxirelay::store::{
    AttemptOutcome, AuditAnchor, ClaimLease, Claimed, Event, InstanceRecord, LeaseGrant, Lockdown,
    MessageId, MessageState, NewMessage, QueuedMessage, Store, StoreError, TokenRecord,
};
use std::collections::HashMap;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn token_process(config: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_oxirelay"))
        .arg("-c")
        .arg(config)
        .args(["token", ACCOUNT])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("oxirelay token starts")
}

/// Waits for every child, killing those still running after `WAIT` (a
/// failing test must not leave processes behind).
async fn outputs(children: Vec<Child>) -> Vec<Output> {
    let pids: Vec<u32> = children.iter().map(Child::id).collect();
    let (sender, receiver) = std::sync::mpsc::channel();
    for child in children {
        let sender = sender.clone();
        std::thread::spawn(move || {
            let _ = sender.send(child.wait_with_output());
        });
    }
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + WAIT;
        let mut done = Vec::new();
        while done.len() < pids.len() {
            match receiver.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(output) => done.push(output.expect("waited")),
                Err(_) => {
                    for pid in &pids {
                        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                    }
                    panic!("oxirelay token did not finish within {WAIT:?}");
                }
            }
        }
        done
    })
    .await
    .expect("join")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_asking_at_once_for_an_expired_token_make_one_request_and_keep_the_grant() {
    let harness =
        Harness::start("authorization_code", "oauthbearer", Duration::from_secs(10)).await;
    harness.consent().await;
    let (consented_refresh, _) = harness.stored_tokens().await;
    harness.wait_until_refresh_due().await;
    // Slow answers, so that every process asks while the first one waits.
    harness
        .sandbox
        .auth
        .faults()
        .fail_fraction(1.0, TokenFault::Delay(Duration::from_millis(400)));
    let before = harness.sandbox.auth.stats();

    let children: Vec<Child> = (0..6)
        .map(|_| token_process(&harness.config_path))
        .collect();
    let outputs = outputs(children).await;
    for output in &outputs {
        assert!(output.status.success(), "{}", stderr(output));
    }
    let tokens: Vec<String> = outputs
        .iter()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .collect();
    assert!(
        tokens.iter().all(|t| !t.is_empty() && *t == tokens[0]),
        "every process prints the one new token"
    );

    let after = harness.sandbox.auth.stats();
    assert_eq!(
        after.token_requests - before.token_requests,
        1,
        "one token request for six processes"
    );
    assert_eq!(after.refresh_token_reuses, before.refresh_token_reuses);
    assert_eq!(after.families_revoked, before.families_revoked);
    let (rotated, stored_access) = harness.stored_tokens().await;
    let rotated = rotated.expect("a refresh token");
    assert_ne!(
        rotated.expose(),
        consented_refresh.expect("consent's refresh token").expose(),
        "the rotated refresh token was committed"
    );
    assert_eq!(
        stored_access.expect("an access token").expose(),
        tokens[0],
        "the printed token is the committed one"
    );

    // The grant is intact: the rotated refresh token refreshes again.
    harness.sandbox.auth.faults().clear();
    let broker = &harness.context.broker;
    let current = broker.access_token(ACCOUNT).await.expect("stored token");
    assert_eq!(current.secret.expose(), tokens[0], "read from the store");
    broker.invalidate(ACCOUNT, &current).await.expect("drop");
    let fresh = broker.access_token(ACCOUNT).await.expect("refreshes");
    assert_ne!(fresh.secret.expose(), tokens[0]);
    let last = harness.sandbox.auth.stats();
    assert_eq!(last.token_requests - after.token_requests, 1);
    assert_eq!(last.refresh_token_reuses, 0);
    assert_eq!(last.families_revoked, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_lease_left_by_a_dead_process_blocks_nobody() {
    let harness =
        Harness::start("authorization_code", "oauthbearer", Duration::from_secs(10)).await;
    harness.consent().await;
    harness.wait_until_refresh_due().await;
    let store = &harness.context.store;
    // A process on this host took the lease for an hour and died.
    let mut child = Command::new("true").spawn().expect("true runs");
    let pid = child.id();
    child.wait().expect("reaped");
    let here = Holder::new_in_this_process();
    let dead = Holder {
        id: format!("{}:{pid}:deadbeef", oxirelay::instance::host_name()),
        pid,
        locality: here.locality.clone(),
    };
    let now = oxirelay::clock::now_unix();
    assert_eq!(
        store
            .acquire_refresh_lease(ACCOUNT, &dead, now, now + 3600, None)
            .await
            .expect("store"),
        LeaseGrant::Granted
    );
    let before = harness.sandbox.auth.stats().token_requests;
    let started = Instant::now();
    let output = outputs(vec![token_process(&harness.config_path)]).await;
    assert!(output[0].status.success(), "{}", stderr(&output[0]));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "taken over at once, not after the hour: {:?}",
        started.elapsed()
    );
    assert_eq!(harness.sandbox.auth.stats().token_requests, before + 1);

    // A holder on another host cannot be proven dead: its lease is waited
    // out (two seconds here), then taken.
    let broker = &harness.context.broker;
    let token = broker.access_token(ACCOUNT).await.expect("token");
    broker.invalidate(ACCOUNT, &token).await.expect("drop");
    let elsewhere = Holder {
        id: "otherhost:77:cafe0000".into(),
        pid: 77,
        locality: "otherhost boot:x pidns:pid:[1]".into(),
    };
    let now = oxirelay::clock::now_unix();
    assert_eq!(
        store
            .acquire_refresh_lease(ACCOUNT, &elsewhere, now, now + 2, None)
            .await
            .expect("store"),
        LeaseGrant::Granted
    );
    let started = Instant::now();
    let output = outputs(vec![token_process(&harness.config_path)]).await;
    assert!(output[0].status.success(), "{}", stderr(&output[0]));
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited for the lease of a holder it cannot prove dead"
    );
    assert_eq!(harness.sandbox.auth.stats().token_requests, before + 2);
    assert_eq!(harness.sandbox.auth.stats().refresh_token_reuses, 0);
}

/// A store whose token writes fail while `failing` says so (a disk that
/// filled, a lock held by another program), counting the refusals.
struct FlakyStore {
    inner: Arc<dyn Store>,
    failing: AtomicBool,
    /// Refusals left before writes work again, when not failing for good.
    fail_next: AtomicUsize,
    refused: AtomicUsize,
}

impl FlakyStore {
    fn refuse(&self) -> bool {
        let now = self.failing.load(Ordering::SeqCst)
            || self
                .fail_next
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if now {
            self.refused.fetch_add(1, Ordering::SeqCst);
        }
        now
    }
}

#[async_trait]
impl Store for FlakyStore {
    async fn token_record(&self, account: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.inner.token_record(account).await
    }
    async fn token_records(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.inner.token_records().await
    }
    async fn save_token_record(&self, record: &TokenRecord) -> Result<bool, StoreError> {
        if self.refuse() {
            return Err(StoreError::Open {
                url: "sqlite://flaky".into(),
                reason: "database or disk is full".into(),
            });
        }
        self.inner.save_token_record(record).await
    }
    async fn credential_epochs(&self) -> Result<HashMap<String, i64>, StoreError> {
        self.inner.credential_epochs().await
    }
    async fn acquire_refresh_lease(
        &self,
        account: &str,
        holder: &Holder,
        now: i64,
        until: i64,
        take_over_from: Option<&str>,
    ) -> Result<LeaseGrant, StoreError> {
        self.inner
            .acquire_refresh_lease(account, holder, now, until, take_over_from)
            .await
    }
    async fn release_refresh_lease(&self, account: &str, holder: &str) -> Result<(), StoreError> {
        self.inner.release_refresh_lease(account, holder).await
    }
    async fn heartbeat(
        &self,
        instance: &Holder,
        started: i64,
        until: i64,
    ) -> Result<(), StoreError> {
        self.inner.heartbeat(instance, started, until).await
    }
    async fn instances(&self) -> Result<Vec<InstanceRecord>, StoreError> {
        self.inner.instances().await
    }
    async fn release_instance(&self, id: &str, now: i64) -> Result<u64, StoreError> {
        self.inner.release_instance(id, now).await
    }
    async fn record_event(&self, event: &Event) -> Result<(), StoreError> {
        self.inner.record_event(event).await
    }
    async fn events(&self, limit: u32) -> Result<Vec<Event>, StoreError> {
        self.inner.events(limit).await
    }
    async fn events_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<oxirelay::store::StoredEvent>, StoreError> {
        self.inner.events_after(after, limit).await
    }
    async fn message_events(
        &self,
        id: &MessageId,
    ) -> Result<Vec<oxirelay::store::StoredEvent>, StoreError> {
        self.inner.message_events(id).await
    }
    async fn enqueue(&self, message: NewMessage) -> Result<MessageId, StoreError> {
        self.inner.enqueue(message).await
    }
    async fn claim(
        &self,
        owner: &str,
        now: i64,
        until: i64,
        limit: u32,
    ) -> Result<Vec<Claimed>, StoreError> {
        self.inner.claim(owner, now, until, limit).await
    }
    async fn complete_attempt(
        &self,
        id: &MessageId,
        lease: &ClaimLease,
        outcome: &AttemptOutcome,
    ) -> Result<MessageState, StoreError> {
        self.inner.complete_attempt(id, lease, outcome).await
    }
    async fn release(&self, id: &MessageId, lease: &ClaimLease, at: i64) -> Result<(), StoreError> {
        self.inner.release(id, lease, at).await
    }
    async fn messages(
        &self,
        state: Option<MessageState>,
        limit: u32,
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        self.inner.messages(state, limit).await
    }
    async fn message(
        &self,
        id: &MessageId,
    ) -> Result<Option<(QueuedMessage, Vec<u8>)>, StoreError> {
        self.inner.message(id).await
    }
    async fn retry_now(&self, id: &MessageId, now: i64) -> Result<bool, StoreError> {
        self.inner.retry_now(id, now).await
    }
    async fn delete(&self, id: &MessageId) -> Result<bool, StoreError> {
        self.inner.delete(id).await
    }
    async fn expire(&self, cutoff: i64) -> Result<Vec<QueuedMessage>, StoreError> {
        self.inner.expire(cutoff).await
    }
    async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        self.inner.next_due().await
    }
    async fn users(&self) -> Result<Vec<oxirelay::users::SubmissionUser>, StoreError> {
        self.inner.users().await
    }
    async fn add_user(&self, user: &oxirelay::users::SubmissionUser) -> Result<bool, StoreError> {
        self.inner.add_user(user).await
    }
    async fn remove_user(&self, name: &str) -> Result<bool, StoreError> {
        self.inner.remove_user(name).await
    }
    async fn sealed_secret(
        &self,
        account: &str,
        kind: &str,
    ) -> Result<Option<SealedValue>, StoreError> {
        self.inner.sealed_secret(account, kind).await
    }
    async fn put_sealed_secret(
        &self,
        account: &str,
        kind: &str,
        sealed: &SealedValue,
    ) -> Result<(), StoreError> {
        self.inner.put_sealed_secret(account, kind, sealed).await
    }
    async fn lockdown(&self) -> Result<Option<Lockdown>, StoreError> {
        self.inner.lockdown().await
    }
    async fn set_lockdown(&self, reason: Option<&str>) -> Result<(), StoreError> {
        self.inner.set_lockdown(reason).await
    }
    async fn sealed_secret_names(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.inner.sealed_secret_names().await
    }
    async fn audit_anchor(&self, chain: &str) -> Result<Option<AuditAnchor>, StoreError> {
        self.inner.audit_anchor(chain).await
    }
    async fn advance_audit_anchor(
        &self,
        chain: &str,
        expected: Option<&AuditAnchor>,
        next: &AuditAnchor,
    ) -> Result<bool, StoreError> {
        self.inner.advance_audit_anchor(chain, expected, next).await
    }
    // Webhooks and notifications (issue 12, items 2 and 3).
    async fn hold_webhook(
        &self,
        endpoint: &str,
        holder: &Holder,
        now: i64,
        until: i64,
        take_over_from: Option<&str>,
    ) -> Result<oxirelay::store::WebhookHold, StoreError> {
        self.inner
            .hold_webhook(endpoint, holder, now, until, take_over_from)
            .await
    }
    async fn release_webhook(&self, endpoint: &str, holder_id: &str) -> Result<(), StoreError> {
        self.inner.release_webhook(endpoint, holder_id).await
    }
    async fn advance_webhook(
        &self,
        endpoint: &str,
        holder_id: &str,
        cursor: i64,
        delivered: u32,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.inner
            .advance_webhook(endpoint, holder_id, cursor, delivered, now)
            .await
    }
    async fn webhook_failed(
        &self,
        endpoint: &str,
        holder_id: &str,
        attempts: i64,
        next_attempt_at: i64,
        error: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.inner
            .webhook_failed(endpoint, holder_id, attempts, next_attempt_at, error, now)
            .await
    }
    async fn webhook_statuses(&self) -> Result<Vec<oxirelay::store::WebhookStatus>, StoreError> {
        self.inner.webhook_statuses().await
    }
    async fn message_summary(
        &self,
        id: &oxirelay::store::MessageId,
    ) -> Result<Option<oxirelay::store::QueuedMessage>, StoreError> {
        self.inner.message_summary(id).await
    }
    async fn notify_due(&self, condition: &str, now: i64, repeat: i64) -> Result<bool, StoreError> {
        self.inner.notify_due(condition, now, repeat).await
    }
    async fn notify_marks(&self) -> Result<Vec<oxirelay::store::NotifyMark>, StoreError> {
        self.inner.notify_marks().await
    }
    async fn notify_clear(&self, condition: &str) -> Result<bool, StoreError> {
        self.inner.notify_clear(condition).await
    }

    // The HTTP send API (issue 12): delegated as they are.
    async fn create_api_key(
        &self,
        key: &oxirelay::store::ApiKeyRecord,
    ) -> Result<bool, StoreError> {
        self.inner.create_api_key(key).await
    }
    async fn api_key(&self, id: &str) -> Result<Option<oxirelay::store::ApiKeyRecord>, StoreError> {
        self.inner.api_key(id).await
    }
    async fn api_keys(&self) -> Result<Vec<oxirelay::store::ApiKeyRecord>, StoreError> {
        self.inner.api_keys().await
    }
    async fn revoke_api_key(&self, name: &str, at: i64) -> Result<bool, StoreError> {
        self.inner.revoke_api_key(name, at).await
    }
    async fn tag_message(
        &self,
        key_id: &str,
        id: &MessageId,
        tags: &[String],
        at: i64,
    ) -> Result<(), StoreError> {
        self.inner.tag_message(key_id, id, tags, at).await
    }
    async fn untag_message(&self, id: &MessageId) -> Result<(), StoreError> {
        self.inner.untag_message(id).await
    }
    async fn message_tags(&self, id: &MessageId) -> Result<Vec<String>, StoreError> {
        self.inner.message_tags(id).await
    }
    async fn api_list_messages(
        &self,
        query: &oxirelay::store::ApiListQuery,
        after: Option<&oxirelay::store::ListCursor>,
        limit: u32,
    ) -> Result<Vec<oxirelay::store::ApiListed>, StoreError> {
        self.inner.api_list_messages(query, after, limit).await
    }
    async fn idempotency_begin(
        &self,
        key_id: &str,
        idempotency_key: &str,
        request_hash: &str,
        reserved: &[MessageId],
        now: i64,
        expires_at: i64,
        stale_before: i64,
    ) -> Result<oxirelay::store::IdempotencyState, StoreError> {
        self.inner
            .idempotency_begin(
                key_id,
                idempotency_key,
                request_hash,
                reserved,
                now,
                expires_at,
                stale_before,
            )
            .await
    }
    async fn idempotency_finish(
        &self,
        key_id: &str,
        idempotency_key: &str,
        status: u16,
        response: &str,
    ) -> Result<(), StoreError> {
        self.inner
            .idempotency_finish(key_id, idempotency_key, status, response)
            .await
    }
    async fn idempotency_forget(
        &self,
        key_id: &str,
        idempotency_key: &str,
    ) -> Result<(), StoreError> {
        self.inner.idempotency_forget(key_id, idempotency_key).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_refusing_the_commit_of_a_refreshed_token_cannot_lose_the_rotated_refresh_token() {
    let harness = Harness::start(
        "authorization_code",
        "oauthbearer",
        Duration::from_secs(3600),
    )
    .await;
    let consented = harness.consent().await;
    let flaky = Arc::new(FlakyStore {
        inner: harness.context.store.clone(),
        failing: AtomicBool::new(false),
        fail_next: AtomicUsize::new(0),
        refused: AtomicUsize::new(0),
    });
    let broker = Broker::new(
        flaky.clone(),
        harness.context.key.clone(),
        vec![harness.account()],
    )
    .with_commit_patience(Duration::from_millis(500));
    let stats = || harness.sandbox.auth.stats();

    // A brief refusal: the commit is retried and the call succeeds.
    broker.invalidate(ACCOUNT, &consented).await.expect("drop");
    flaky.fail_next.store(2, Ordering::SeqCst);
    let first = broker.access_token(ACCOUNT).await.expect("retried commit");
    assert_eq!(flaky.refused.load(Ordering::SeqCst), 2);
    assert_eq!(stats().token_requests_by_grant.refresh_token, 1);
    let (refresh_1, access) = harness.stored_tokens().await;
    assert_eq!(
        access.expect("committed").expose(),
        first.secret.expose(),
        "handed out only once committed"
    );

    // A store down for longer than the call's patience: the caller hears
    // so, nothing is written, and the new token is not handed out.
    broker.invalidate(ACCOUNT, &first).await.expect("drop");
    flaky.failing.store(true, Ordering::SeqCst);
    let refused = broker.access_token(ACCOUNT).await;
    assert!(
        matches!(refused, Err(BrokerError::CommitPending { .. })),
        "{refused:?}"
    );
    assert_eq!(stats().token_requests_by_grant.refresh_token, 2);
    let (stored_refresh, stored_access) = harness.stored_tokens().await;
    assert_eq!(
        stored_refresh.as_ref().map(|s| s.expose().to_string()),
        refresh_1.as_ref().map(|s| s.expose().to_string()),
        "not committed yet"
    );
    assert!(stored_access.is_none());
    // Nobody else refreshes with the replaced refresh token meanwhile: the
    // lease stays with the broker holding the rotated one.
    let probe = Holder::new_in_this_process();
    let now = oxirelay::clock::now_unix();
    assert!(matches!(
        harness
            .context
            .store
            .acquire_refresh_lease(ACCOUNT, &probe, now, now + 60, None)
            .await
            .expect("store"),
        LeaseGrant::HeldBy { .. }
    ));
    // Asking again while the store is down asks the provider nothing.
    assert!(broker.access_token(ACCOUNT).await.is_err());
    assert_eq!(stats().token_requests_by_grant.refresh_token, 2);

    // The store is back: the held response is committed without a request.
    flaky.failing.store(false, Ordering::SeqCst);
    let held = broker.access_token(ACCOUNT).await.expect("committed now");
    assert_eq!(stats().token_requests_by_grant.refresh_token, 2);
    let (refresh_2, access) = harness.stored_tokens().await;
    assert_eq!(access.expect("committed").expose(), held.secret.expose());
    assert_ne!(
        refresh_2.as_ref().map(|s| s.expose().to_string()),
        refresh_1.as_ref().map(|s| s.expose().to_string()),
        "the rotated refresh token is the one stored"
    );
    assert!(
        matches!(
            harness
                .context
                .store
                .acquire_refresh_lease(ACCOUNT, &probe, now, now + 60, None)
                .await
                .expect("store"),
            LeaseGrant::Granted
        ),
        "the lease was given back"
    );
    harness
        .context
        .store
        .release_refresh_lease(ACCOUNT, &probe.id)
        .await
        .expect("store");

    // The grant is intact: the stored refresh token works.
    broker.invalidate(ACCOUNT, &held).await.expect("drop");
    broker.access_token(ACCOUNT).await.expect("refreshes again");
    assert_eq!(stats().refresh_token_reuses, 0);
    assert_eq!(stats().families_revoked, 0);
}
