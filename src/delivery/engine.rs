//! The delivery engine: workers that take due messages from the queue under
//! a lease (contract 2), send them through the account's pooled upstream
//! sessions, and record what happened to each recipient.
//!
//! - Workers claim with `Store::claim` under an owner id unique to this
//!   process and worker. Idle workers sleep until the `wake` notification
//!   (new mail), the store's next due time, or shutdown; never a busy loop.
//!   Messages whose lease expired are claimable again.
//! - Heartbeat: the engine registers its instance in the store and renews
//!   it every `heartbeat_interval`; its claims hold while the heartbeat
//!   does, so a relay that dies silently (power, SIGKILL on another host)
//!   gives its messages back after `heartbeat_expiry`, not after the whole
//!   lease. The lease stays the cap on one delivery in a live process. A
//!   starting engine gives back at once the claims of instances that are
//!   provably gone (same host, process dead: `instance`) or whose
//!   heartbeat ended, as Postfix requeues its active mail on restart.
//!   Workers claim and start deliveries only while their own heartbeat is
//!   fresh (less than half the expiry old).
//! - When an account's credentials change (`Broker::credentials_version`:
//!   revoked, a new consent), its idle pooled sessions are closed at once,
//!   and a session in use carries no further transaction.
//! - Accounts with an HTTP transport (`graph`, `gmail_api`) go through
//!   `attempt_api` instead of a pooled SMTP session: one request per group
//!   of recipients, the recipient headers made to match the group, the
//!   API's answer mapped onto the same outcomes (429/503 → throttled for
//!   `Retry-After`, 403 → an administrator's step, 4xx → bounce, 5xx and
//!   network → defer), and messages over the API's limit bounced or sent
//!   over SMTP as `large_messages` says. Limits, retries, events and DSNs
//!   are the same code for every transport.
//! - Before a message goes, the account's quotas and throttling back-off
//!   are checked (`limits`) in the store (`Store::admit_delivery`), so
//!   every instance sharing it counts against one allowance and honours
//!   one back-off; a message that may not go now is `release`d until it
//!   may, which is not an attempt.
//! - Every reply is classified by `classify::classify`: per recipient,
//!   2xx delivered, 4xx deferred, 5xx bounced; network errors defer the
//!   whole attempt; throttling replies also back off the whole account.
//!   The attempt is recorded with `Store::complete_attempt`, the next try at
//!   `RetrySchedule::delay_after(attempts)`, with an event per outcome.
//! - A maintenance task expires messages older than the schedule's maximum
//!   age and closes idle sessions. Bounced and expired recipients get a DSN
//!   (`dsn`) when enabled.
//! - `RunningEngine::shutdown` stops claiming, lets deliveries in progress
//!   finish within a grace period, and releases claimed messages not
//!   started. A delivery cut off by the grace period keeps its lease, which
//!   expires and returns the message (at-least-once).

use crate::clock::now_unix;
use crate::config::LargeMessages;
use crate::delivery::classify::{AdminStep, ReplyClass, ReplyFacts, classify};
use crate::delivery::dsn::{DsnOrigin, FailedRecipient, build_dsn};
use crate::delivery::http::{ApiOutcome, ApiVerdict, HttpTransports};
use crate::delivery::limits::{AccountLimits, Admission};
use crate::delivery::pool::{PoolConfig, PoolStats, SessionPool};
use crate::delivery::route::domain_of;
use crate::delivery::schedule::RetrySchedule;
use crate::delivery::upstream::{UpstreamError, ehlo_name};
use crate::instance::Holder;
use crate::metrics::DeliveryOutcome;
use crate::oauth::account::{Account, ApiTarget};
use crate::oauth::broker::{AuditLine, Broker};
use crate::smtp::client::{ClientError, Envelope, RecipientOutcome, Reply, Stage};
use crate::store::{
    AttemptOutcome, ClaimLease, Claimed, Event, MessageId, MessageState, QueuedMessage,
    RecipientState, Store, StoreError,
};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;

/// An idle worker never waits less than this, so a due time that cannot
/// be claimed yet (a lease ending this very second) costs a few wake-ups
/// per second at most, not a busy loop.
const MIN_IDLE_WAIT: Duration = Duration::from_millis(250);
/// After a store error, wait this long before claiming again.
const STORE_ERROR_PAUSE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Concurrent deliveries.
    pub workers: usize,
    /// How long a claim holds a message. Longer than any one delivery (the
    /// client's timeouts bound it to a few minutes); a crashed worker's
    /// messages come back after this.
    pub lease: Duration,
    /// Messages one worker claims at once: fewer store round trips, while
    /// small enough that a batch finishes well inside the lease.
    pub claim_batch: u32,
    pub schedule: RetrySchedule,
    /// Upstream sessions: the cap per account, reuse and retirement.
    pub pool: PoolConfig,
    /// Limits per account name, replacing the provider's defaults.
    pub limits: HashMap<String, AccountLimits>,
    /// How long to leave an account alone after the provider throttled it
    /// (unless its reply says how long) or refused a freshly refreshed token.
    pub throttle_backoff: Duration,
    /// How long to leave an account alone when its provider refuses logins
    /// until an administrator acts (SMTP AUTH turned off): each try is a
    /// failed login at the provider, and the fix takes minutes to apply.
    pub admin_backoff: Duration,
    /// Send DSNs to senders for bounced and expired recipients.
    pub dsn: bool,
    /// The Reporting-MTA name in DSNs.
    pub reporting_mta: String,
    /// How often to expire old messages and close idle sessions; also the
    /// longest an idle worker sleeps without being woken.
    pub maintenance_interval: Duration,
    /// How long `shutdown` waits for deliveries in progress.
    pub shutdown_grace: Duration,
    /// How often the engine renews its instance's heartbeat in the store.
    pub heartbeat_interval: Duration,
    /// How long a claim outlives the last heartbeat: the time a silently
    /// dead instance's messages wait before another instance takes them.
    pub heartbeat_expiry: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            workers: 4,
            lease: Duration::from_secs(5 * 60),
            claim_batch: 8,
            schedule: RetrySchedule::default(),
            pool: PoolConfig::default(),
            limits: HashMap::new(),
            // Providers' throttling windows are about a minute (Exchange's
            // per-minute message rate, Google's "try again later").
            throttle_backoff: Duration::from_secs(60),
            admin_backoff: Duration::from_secs(10 * 60),
            dsn: true,
            reporting_mta: ehlo_name(),
            maintenance_interval: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
            // Six beats per expiry: a store busy for two busy timeouts
            // (10 s each) in a row still leaves the heartbeat standing, and
            // a silent death costs half a minute, not the 5-minute lease.
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_expiry: Duration::from_secs(30),
        }
    }
}

/// What the engine has done since it started (recipients and messages).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EngineStats {
    /// Delivery attempts recorded with `complete_attempt`.
    pub attempts: u64,
    pub recipients_delivered: u64,
    pub recipients_deferred: u64,
    pub recipients_bounced: u64,
    /// Messages that reached a final state through a delivery attempt.
    pub messages_delivered: u64,
    pub messages_bounced: u64,
    pub messages_expired: u64,
    /// Messages given back untried because of a quota.
    pub released_by_limit: u64,
    /// Messages given back untried because the account is backed off.
    pub released_by_backoff: u64,
    /// Messages given back untried at shutdown.
    pub released_at_shutdown: u64,
    /// Times a provider's throttling reply backed off an account.
    pub throttled: u64,
    /// Times a provider's sending quota paused an account.
    pub quota_pauses: u64,
    /// Attempts stopped by a provider setting only an administrator can change.
    pub needs_admin: u64,
    pub dsns_enqueued: u64,
    /// Outcomes that could not be recorded because the lease was lost.
    pub leases_lost: u64,
    /// Messages claimed by instances found gone at start, given back.
    pub released_from_gone_instances: u64,
}

/// What `shutdown` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Workers still delivering when the grace period ended (their
    /// messages come back when their leases expire).
    pub workers_cut_off: usize,
    pub stats: EngineStats,
}

pub struct Engine;

struct Shared {
    store: Arc<dyn Store>,
    broker: Arc<Broker>,
    config: EngineConfig,
    pool: SessionPool,
    /// The HTTP transports' clients (one per account, keep-alive).
    http: HttpTransports,
    /// Accounts whose stored state this process has checked for an
    /// administrator's step an API send clears (see `api_sent`).
    api_admin_checked: Mutex<std::collections::HashSet<String>>,
    /// Accounts without quotas: the store's answers of a moment ago.
    unmetered: crate::delivery::limits::UnmeteredAdmissions,
    wake: Arc<Notify>,
    stats: watch::Sender<EngineStats>,
    instance: Holder,
    /// Until when (Unix seconds) the store holds our heartbeat; 0 before
    /// the instance is registered.
    heartbeat: watch::Sender<i64>,
    /// To the task that writes recorded attempts' audit lines
    /// ([`write_attempt_tails`]); taken at shutdown, once the workers are
    /// done, so that task ends when it has written the last.
    tails: Mutex<Option<mpsc::Sender<AttemptTail>>>,
}

/// What is left of a recorded attempt once its outcome is committed: its
/// audit lines, then its count in the stats (after the lines, so whoever
/// waits on the stats sees them). One task writes them for every worker,
/// so a worker goes on to its next message instead of waiting for the
/// audit log's flush, and the lines of many attempts share one write and
/// one flush: with each worker waiting for its own line, the audit log
/// cost a fifth of the delivered rate (BENCHMARKS.md, issue 8).
struct AttemptTail {
    lines: Vec<AuditLine>,
    count: AttemptCount,
}

/// An attempt as the stats count it.
struct AttemptCount {
    delivered: usize,
    deferred: usize,
    bounced: usize,
    state: MessageState,
}

impl AttemptCount {
    fn add_to(&self, stats: &mut EngineStats) {
        stats.attempts += 1;
        stats.recipients_delivered += self.delivered as u64;
        stats.recipients_deferred += self.deferred as u64;
        stats.recipients_bounced += self.bounced as u64;
        match self.state {
            MessageState::Delivered => stats.messages_delivered += 1,
            MessageState::Bounced => stats.messages_bounced += 1,
            _ => {}
        }
    }
}

/// At most this many recorded attempts wait for the audit writer; a worker
/// that finds it full waits for room (the log's flush sets the pace).
const TAILS_WAITING: usize = 1024;

/// How long the audit writer lets recorded attempts gather after the first
/// before it appends them: each append is an open, a lock, a read of the
/// log's tail and an fdatasync, and under load they came 2 or 3 attempts
/// at a time (a tenth of the relay's CPU while delivering, BENCHMARKS.md).
/// The lines are written after their outcomes' commit in any case, so a
/// crash within this window loses no mail, only the last lines, as a crash
/// between the commit and the append always could.
const TAILS_GATHER: std::time::Duration = std::time::Duration::from_millis(25);

/// Writes recorded attempts' audit lines, as many as are waiting in one
/// append, then counts them; ends when every sender is gone. It holds the
/// broker and the stats, not `Shared`: `Shared` holds the sender, and an
/// engine dropped without `shutdown` must not leave this task waiting on
/// itself.
async fn write_attempt_tails(
    broker: Arc<Broker>,
    stats: watch::Sender<EngineStats>,
    mut tails: mpsc::Receiver<AttemptTail>,
) {
    let mut batch = Vec::with_capacity(TAILS_WAITING);
    while tails.recv_many(&mut batch, TAILS_WAITING).await > 0 {
        let until = tokio::time::Instant::now() + TAILS_GATHER;
        // Bounded: by the window, the batch's room, or the channel closing.
        while batch.len() < TAILS_WAITING {
            let room = TAILS_WAITING - batch.len();
            match tokio::time::timeout_at(until, tails.recv_many(&mut batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let lines = batch
            .iter_mut()
            .flat_map(|tail| std::mem::take(&mut tail.lines))
            .collect();
        broker.audit_all(lines).await;
        stats.send_modify(|stats| {
            for tail in &batch {
                tail.count.add_to(stats);
            }
        });
        batch.clear();
    }
}

/// A started engine; stop it with [`RunningEngine::shutdown`].
pub struct RunningEngine {
    shared: Arc<Shared>,
    stop: Arc<watch::Sender<bool>>,
    workers: JoinSet<()>,
    background: JoinSet<()>,
    tail_writer: tokio::task::JoinHandle<()>,
}

impl Engine {
    /// Starts `config.workers` workers and the maintenance task. They stop
    /// when `shutdown` turns true or [`RunningEngine::shutdown`] is called.
    /// Whoever enqueues should call `wake.notify_one()` after the commit.
    pub fn start(
        store: Arc<dyn Store>,
        broker: Arc<Broker>,
        config: EngineConfig,
        wake: Arc<Notify>,
        mut shutdown: watch::Receiver<bool>,
    ) -> RunningEngine {
        let (stop, stop_signal) = watch::channel(false);
        let stop = Arc::new(stop);
        let (stats, _) = watch::channel(EngineStats::default());
        let (tails, tails_waiting) = mpsc::channel(TAILS_WAITING);
        let shared = Arc::new(Shared {
            tails: Mutex::new(Some(tails)),
            pool: SessionPool::new(broker.clone(), config.pool),
            http: HttpTransports::new(),
            api_admin_checked: Mutex::new(std::collections::HashSet::new()),
            unmetered: Default::default(),
            store,
            broker,
            wake,
            stats,
            instance: Holder::new_in_this_process(),
            heartbeat: watch::Sender::new(0),
            config,
        });
        let mut background = JoinSet::new();
        {
            let stop = stop.clone();
            background.spawn(async move {
                // The caller's signal becomes ours; a dropped sender means
                // nobody can ask any more, which is not a request to stop.
                if shutdown.wait_for(|stop| *stop).await.is_ok() {
                    let _ = stop.send(true);
                }
            });
        }
        background.spawn(maintain(shared.clone(), stop_signal.clone()));
        background.spawn(beat(shared.clone(), stop_signal.clone()));
        background.spawn(close_retired_sessions(shared.clone(), stop_signal.clone()));
        let tail_writer = tokio::spawn(write_attempt_tails(
            shared.broker.clone(),
            shared.stats.clone(),
            tails_waiting,
        ));
        let mut workers = JoinSet::new();
        for index in 0..shared.config.workers.max(1) {
            workers.spawn(work(shared.clone(), index, stop_signal.clone()));
        }
        tracing::info!(
            instance = %shared.instance.id,
            workers = shared.config.workers.max(1),
            "delivery engine started"
        );
        RunningEngine {
            shared,
            stop,
            workers,
            background,
            tail_writer,
        }
    }
}

impl RunningEngine {
    pub fn stats(&self) -> EngineStats {
        *self.shared.stats.borrow()
    }

    pub fn pool_stats(&self) -> PoolStats {
        self.shared.pool.stats()
    }

    /// Requests sent to HTTP sending APIs (Graph, Gmail) since the start.
    pub fn api_requests(&self) -> u64 {
        self.shared.http.requests()
    }

    /// Waits (woken by each change, no polling) until `condition` holds;
    /// `None` if `timeout` passes first.
    pub async fn wait_until(
        &self,
        condition: impl Fn(&EngineStats) -> bool,
        timeout: Duration,
    ) -> Option<EngineStats> {
        let mut receiver = self.shared.stats.subscribe();
        tokio::time::timeout(timeout, receiver.wait_for(|s| condition(s)))
            .await
            .ok()?
            .ok()
            .map(|stats| *stats)
    }

    /// The owner-id prefix of this engine's claims.
    pub fn instance(&self) -> &str {
        &self.shared.instance.id
    }

    /// Stops claiming, lets deliveries in progress finish (up to the grace
    /// period), releases what was claimed but not started, closes the
    /// upstream sessions.
    pub async fn shutdown(mut self) -> ShutdownReport {
        let _ = self.stop.send(true);
        let grace = self.shared.config.shutdown_grace;
        let drained = tokio::time::timeout(grace, async {
            while self.workers.join_next().await.is_some() {}
        })
        .await
        .is_ok();
        let workers_cut_off = if drained {
            0
        } else {
            let left = self.workers.len();
            tracing::warn!(
                workers = left,
                ?grace,
                "deliveries still running at the end of the grace period were stopped; their messages return when their leases expire"
            );
            self.workers.abort_all();
            while self.workers.join_next().await.is_some() {}
            left
        };
        // The workers are done: the audit lines of their last attempts are
        // written, then the writer ends.
        drop(self.shared.take_tails());
        if let Err(error) = (&mut self.tail_writer).await {
            tracing::error!(%error, "the audit writer of delivery attempts failed; some attempts' audit lines may be missing");
        }
        self.background.abort_all();
        while self.background.join_next().await.is_some() {}
        self.shared.pool.close_all().await;
        // Nothing of ours runs any more: what the cut-off deliveries held
        // goes back to the queue now rather than when the leases end.
        match self
            .shared
            .store
            .release_instance(&self.shared.instance.id, now_unix())
            .await
        {
            Ok(0) => {}
            Ok(released) => {
                tracing::info!(
                    released,
                    "messages of cut-off deliveries returned to the queue"
                )
            }
            Err(error) => {
                tracing::warn!(%error, "cannot unregister this instance; its messages return when its heartbeat ends")
            }
        }
        tracing::info!(instance = %self.shared.instance.id, "delivery engine stopped");
        ShutdownReport {
            workers_cut_off,
            stats: *self.shared.stats.borrow(),
        }
    }
}

async fn work(shared: Arc<Shared>, index: usize, mut stop: watch::Receiver<bool>) {
    let owner = format!("{}/w{index}", shared.instance.id);
    let batch = shared.config.claim_batch.max(1);
    let mut beats = shared.heartbeat.subscribe();
    loop {
        if *stop.borrow() {
            break;
        }
        if !shared.heartbeat_fresh(*beats.borrow_and_update()) {
            // Before registration, or the store has refused our heartbeat
            // for a while: a claim now could be taken by another instance
            // while we deliver it.
            tokio::select! {
                _ = beats.changed() => {}
                _ = stop.wait_for(|stop| *stop) => {}
            }
            continue;
        }
        // Listen before looking: a wake-up sent while we claim is kept.
        let notified = shared.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();

        let now = now_unix();
        let lease_until = now.saturating_add(secs_ceil(shared.config.lease));
        let claimed = match shared.store.claim(&owner, now, lease_until, batch).await {
            Ok(claimed) => claimed,
            Err(error) => {
                tracing::error!(%error, "cannot claim messages from the queue; retrying shortly");
                pause(STORE_ERROR_PAUSE, &mut stop).await;
                continue;
            }
        };
        if claimed.is_empty() {
            let wait = idle_wait(shared.store.as_ref(), shared.config.maintenance_interval).await;
            tokio::select! {
                _ = notified => {}
                // Mail queued by another instance (PostgreSQL's NOTIFY).
                _ = shared.store.wait_for_work(wait) => {}
                _ = stop.wait_for(|stop| *stop) => {}
            }
            continue;
        }
        if claimed.len() == batch as usize {
            // A full batch: more may be due. Wake a peer to share the work.
            shared.wake.notify_one();
        }
        let mut pending = VecDeque::from(claimed);
        while let Some(claimed) = pending.pop_front() {
            if *stop.borrow() {
                pending.push_front(claimed);
                break;
            }
            // Slow deliveries earlier in the batch may have used up most of
            // this one's lease; starting it now could outlive the lease and
            // let another worker send it too. Give it back instead.
            if now_unix() >= claimed.lease.expires_at - lease_margin(shared.config.lease)
                || !shared.heartbeat_fresh(*shared.heartbeat.borrow())
            {
                shared
                    .release(&claimed.message.id, &claimed.lease, now_unix())
                    .await;
                continue;
            }
            shared.deliver(claimed).await;
        }
        for claimed in pending {
            shared
                .release(&claimed.message.id, &claimed.lease, now_unix())
                .await;
            shared.count(|s| s.released_at_shutdown += 1);
        }
    }
}

/// How long an idle worker sleeps: until the next message is due, within
/// [`MIN_IDLE_WAIT`] and `longest`.
async fn idle_wait(store: &dyn Store, longest: Duration) -> Duration {
    let due = match store.next_due().await {
        Ok(Some(due)) => due,
        Ok(None) => return longest,
        Err(error) => {
            tracing::warn!(%error, "cannot read the queue's next due time");
            return STORE_ERROR_PAUSE;
        }
    };
    crate::clock::from_unix(due)
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
        .clamp(MIN_IDLE_WAIT, longest.max(MIN_IDLE_WAIT))
}

async fn pause(period: Duration, stop: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(period) => {}
        _ = stop.wait_for(|stop| *stop) => {}
    }
}

/// A message is started only with at least this much of its lease left:
/// half the lease, which is far more than one delivery takes.
fn lease_margin(lease: Duration) -> i64 {
    secs_ceil(lease / 2)
}

/// Whole seconds, rounded up: the store keeps Unix seconds, and rounding
/// down would make a short delay zero.
fn secs_ceil(duration: Duration) -> i64 {
    let secs = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    i64::try_from(secs).unwrap_or(i64::MAX)
}

/// Registers the instance, gives back the claims of instances that are
/// gone, then renews the heartbeat until stopped (see the module header).
async fn beat(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let started_at = now_unix();
    let expiry = secs_ceil(shared.config.heartbeat_expiry);
    loop {
        let until = now_unix() + expiry;
        match shared
            .store
            .heartbeat(&shared.instance, started_at, until)
            .await
        {
            Ok(()) => {
                if *shared.heartbeat.borrow() == 0 {
                    shared.release_gone_instances().await;
                }
                shared.heartbeat.send_replace(until);
            }
            Err(error) => {
                tracing::warn!(%error, "cannot renew this instance's heartbeat in the store; deliveries pause if it stays refused")
            }
        }
        let period = if *shared.heartbeat.borrow() == 0 {
            STORE_ERROR_PAUSE
        } else {
            shared.config.heartbeat_interval
        };
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

/// Closes the idle sessions of accounts whose credentials changed, as soon
/// as the broker notices.
async fn close_retired_sessions(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut changes = shared.broker.credential_changes();
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                let closed = shared.pool.close_idle();
                tracing::info!(closed, "credentials changed; sessions authenticated before are retired");
            }
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

async fn maintain(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        shared.expire_old().await;
        shared.pool.close_idle();
        tokio::select! {
            _ = tokio::time::sleep(shared.config.maintenance_interval) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

/// What one attempt did to the recipients it tried.
#[derive(Default)]
struct AttemptResult {
    recipients: Vec<(usize, RecipientState, Option<String>)>,
    bounced: Vec<FailedRecipient>,
    /// The first reason something did not go, for `last_error`.
    error: Option<String>,
    throttled: bool,
    /// The upstream refused even a fresh token (contract 4): further
    /// logins now would only add failed logins, which providers punish.
    auth_failed: bool,
    /// Leave the account alone this long (a quota's window, a lockout).
    pause: Option<Duration>,
    /// A provider setting only an administrator can change stopped this.
    admin: Option<AdminStep>,
    quota: bool,
}

impl AttemptResult {
    fn pause_for(&mut self, pause: Duration) {
        self.pause = Some(self.pause.map_or(pause, |p| p.max(pause)));
    }

    /// What a reply means for the account, beyond its recipients.
    fn note_account(&mut self, class: ReplyClass) {
        match class {
            ReplyClass::Throttled { pause } => {
                self.throttled = true;
                if let Some(pause) = pause {
                    self.pause_for(pause);
                }
            }
            ReplyClass::QuotaExceeded { pause } => {
                self.quota = true;
                self.pause_for(pause);
            }
            ReplyClass::NeedsAdmin(step) => self.admin = Some(step),
            _ => {}
        }
    }

    fn note_error(&mut self, error: impl FnOnce() -> String) {
        if self.error.is_none() {
            self.error = Some(error());
        }
    }

    /// The upstream replied `reply` about recipient `index`.
    fn refused(&mut self, index: usize, address: &str, reply: &Reply) {
        let class = classify(ReplyFacts::of(reply, &reply.text()));
        self.note_account(class);
        let state = match class {
            ReplyClass::Accepted => RecipientState::Delivered,
            ReplyClass::Bounce => {
                self.bounced.push(FailedRecipient::refused(address, reply));
                RecipientState::Bounced
            }
            // Throttling, quotas and settings an administrator must change
            // keep the mail queued: none is the recipient's fault. Auth
            // failures after contract 4 (in `open_session`) defer too: the
            // account may recover (a permission still propagating).
            ReplyClass::Throttled { .. }
            | ReplyClass::QuotaExceeded { .. }
            | ReplyClass::NeedsAdmin(_)
            | ReplyClass::TokenNearExpiry
            | ReplyClass::Defer
            | ReplyClass::AuthFailure => RecipientState::Deferred,
        };
        if state != RecipientState::Delivered {
            self.note_error(|| reply.to_string());
        }
        self.recipients
            .push((index, state, Some(reply.to_string())));
    }

    /// No upstream session could be had: every open recipient waits.
    fn no_session(&mut self, open: &[usize], error: &UpstreamError) {
        match error {
            UpstreamError::AuthFailed { .. } => self.auth_failed = true,
            UpstreamError::NeedsAdmin { step, .. } => self.admin = Some(*step),
            UpstreamError::Smtp(client) => {
                if let Some(reply) = client.reply() {
                    self.note_account(classify(ReplyFacts::of(reply, &reply.text())));
                }
            }
            _ => {}
        }
        // Whatever stops a session (network, token endpoint down, consent
        // needed, a refused token after contract 4) is the relay's or the
        // provider's problem, never the recipient's: defer, and the message
        // expires if it never clears.
        self.defer_all(open, &error.to_string());
    }

    fn defer_all(&mut self, indices: &[usize], reason: &str) {
        self.note_error(|| reason.to_string());
        for &index in indices {
            self.recipients
                .push((index, RecipientState::Deferred, Some(reason.to_string())));
        }
    }

    fn bounce_all(&mut self, message: &QueuedMessage, indices: &[usize], reason: &str) {
        self.note_error(|| reason.to_string());
        for &index in indices {
            self.bounced.push(FailedRecipient::refused_without_reply(
                &message.recipients[index].address,
                reason,
            ));
            self.recipients
                .push((index, RecipientState::Bounced, Some(reason.to_string())));
        }
    }

    fn count(&self, state: RecipientState) -> usize {
        self.recipients.iter().filter(|r| r.1 == state).count()
    }

    /// Adds what another attempt on other recipients of the same message
    /// did (the SMTP fallback of an HTTP transport).
    fn merge(&mut self, other: AttemptResult) {
        if let Some(error) = other.error {
            self.note_error(|| error);
        }
        self.recipients.extend(other.recipients);
        self.bounced.extend(other.bounced);
        self.throttled |= other.throttled;
        self.auth_failed |= other.auth_failed;
        self.quota |= other.quota;
        if let Some(pause) = other.pause {
            self.pause_for(pause);
        }
        self.admin = self.admin.or(other.admin);
    }
}

impl Shared {
    fn count(&self, change: impl FnOnce(&mut EngineStats)) {
        self.stats.send_modify(change);
    }

    fn take_tails(&self) -> Option<mpsc::Sender<AttemptTail>> {
        // A poisoned lock only means a worker panicked holding it; the
        // sender in it is whole.
        self.tails
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// Hands a recorded attempt's audit lines and count to their writer;
    /// without one (the engine stopping), writes them here.
    async fn finish_attempt(&self, tail: AttemptTail) {
        let writer = self
            .tails
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let tail = match writer {
            Some(writer) => match writer.send(tail).await {
                Ok(()) => return,
                Err(mpsc::error::SendError(tail)) => tail,
            },
            None => tail,
        };
        self.broker.audit_all(tail.lines).await;
        self.count(|stats| tail.count.add_to(stats));
    }

    /// Whether a heartbeat that holds until `until` still vouches for new
    /// claims: at least half the expiry left, the other half being room for
    /// the deliveries it covers.
    fn heartbeat_fresh(&self, until: i64) -> bool {
        now_unix() + secs_ceil(self.config.heartbeat_expiry / 2) < until
    }

    /// At start: the claims of instances that provably died (same host,
    /// process gone) or whose heartbeat ended go back to the queue now.
    async fn release_gone_instances(&self) {
        let instances = match self.store.instances().await {
            Ok(instances) => instances,
            Err(error) => {
                tracing::warn!(%error, "cannot list the other instances; their messages return when their heartbeats end");
                return;
            }
        };
        let now = now_unix();
        for other in instances {
            if other.holder.id == self.instance.id {
                continue;
            }
            let why = if other.holder.is_provably_gone() {
                "its process is gone"
            } else if other.heartbeat_until < now {
                "its heartbeat ended"
            } else {
                continue;
            };
            match self.store.release_instance(&other.holder.id, now).await {
                Ok(released) => {
                    tracing::info!(instance = %other.holder.id, released, why, "messages of a gone instance returned to the queue");
                    if released > 0 {
                        self.count(|s| s.released_from_gone_instances += released);
                        self.wake.notify_waiters();
                    }
                }
                Err(error) => {
                    tracing::warn!(instance = %other.holder.id, %error, "cannot release a gone instance's messages; they return when its heartbeat ends")
                }
            }
        }
    }

    /// The account's limits: the engine's override, else the account's
    /// (its preset with `[account.limits]`).
    fn limits(&self, account: &Account) -> AccountLimits {
        self.config
            .limits
            .get(&account.name)
            .copied()
            .unwrap_or_else(|| account.limits.into())
    }

    async fn release(&self, id: &MessageId, lease: &ClaimLease, at: i64) {
        match self.store.release(id, lease, at).await {
            Ok(()) => {}
            Err(StoreError::LeaseLost(_)) => self.count(|s| s.leases_lost += 1),
            Err(error) => {
                tracing::error!(%id, %error, "cannot release a message; it returns when its lease expires")
            }
        }
    }

    /// Whether a message to `recipients` recipients may go now. Counted in
    /// the store, for every instance sharing it (issue 13); an account
    /// without quotas asks it at most once a second.
    async fn admit(&self, account: &Account, recipients: usize) -> Result<Admission, StoreError> {
        let limits = self.limits(account);
        let ask = if limits.has_quotas() {
            None
        } else {
            match self.unmetered.admit(&account.name, Instant::now()) {
                Ok(known) => return Ok(known),
                Err(ask) => Some(ask),
            }
        };
        let admission = self
            .store
            .admit_delivery(
                &account.name,
                &limits,
                u32::try_from(recipients).unwrap_or(u32::MAX),
                crate::delivery::limits::now_secs(),
            )
            .await;
        if let (Some(ask), Ok(answer)) = (ask, &admission) {
            self.unmetered.note(&account.name, *answer, ask);
        }
        admission
    }

    /// One claimed message: admit, send, record.
    async fn deliver(&self, claimed: Claimed) {
        let Claimed {
            message,
            body,
            lease,
        } = claimed;
        let open: Vec<usize> = (0..message.recipients.len())
            .filter(|&i| message.recipients[i].state.is_open())
            .collect();
        let Some(account) = self.broker.account(&message.account) else {
            let mut result = AttemptResult::default();
            result.defer_all(
                &open,
                &format!(
                    "the account {:?} is not in the configuration; add it back, or delete the message with `oxirelay queue delete {}`",
                    message.account, message.id
                ),
            );
            self.record(&message, &body, &lease, None, result).await;
            return;
        };
        if open.is_empty() {
            // Nothing left to send (a retry of a finished message): record
            // the state the recipients already have.
            self.record(
                &message,
                &body,
                &lease,
                Some(account),
                AttemptResult::default(),
            )
            .await;
            return;
        }
        let admission = self.admit(account, open.len()).await;
        match admission {
            Ok(Admission::Go) => {}
            Ok(Admission::Limited(wait)) => {
                tracing::debug!(id = %message.id, account = %account.name, ?wait, "account quota used up; message released until it refills");
                self.release(&message.id, &lease, now_unix() + secs_ceil(wait))
                    .await;
                self.count(|s| s.released_by_limit += 1);
                return;
            }
            Ok(Admission::BackedOff(wait)) => {
                self.release(&message.id, &lease, now_unix() + secs_ceil(wait))
                    .await;
                self.count(|s| s.released_by_backoff += 1);
                return;
            }
            Err(error) => {
                tracing::error!(id = %message.id, account = %account.name, %error, "cannot check the account's sending quotas in the store; message released for a moment");
                self.release(
                    &message.id,
                    &lease,
                    now_unix() + secs_ceil(STORE_ERROR_PAUSE),
                )
                .await;
                return;
            }
        }
        let started = Instant::now();
        let mut result = match &account.api {
            Some(api) => self.attempt_api(account, api, &message, &body, &open).await,
            None => self.attempt(account, &message, &body, &open).await,
        };
        result.pause = self.account_backoff(&result);
        self.account_after(account, &message, &result).await;
        self.record(&message, &body, &lease, Some(account), result)
            .await;
        crate::metrics::global().delivery_attempt(&account.name, started.elapsed());
    }

    /// How long the account must be left alone after `result`: the longest
    /// of what the provider asked for (a quota's window, a lockout), the
    /// throttling back-off, and the wait for an administrator. The messages
    /// the attempt deferred are not due before it ends either.
    fn account_backoff(&self, result: &AttemptResult) -> Option<Duration> {
        [
            (result.throttled || result.auth_failed).then_some(self.config.throttle_backoff),
            result.pause,
            result
                .admin
                .filter(|step| step.cleared_by_login() || step.cleared_by_api_send())
                .map(|_| self.config.admin_backoff),
        ]
        .into_iter()
        .flatten()
        .max()
    }

    /// What an attempt means for the account: back off, record that an
    /// administrator must act, or that one has.
    async fn account_after(
        &self,
        account: &Account,
        message: &QueuedMessage,
        result: &AttemptResult,
    ) {
        if let Some(backoff) = result.pause {
            let reason = if result.admin.is_some() {
                "the provider refuses the account until an administrator acts"
            } else if result.quota {
                "the provider's sending quota is used up"
            } else if result.throttled {
                "the provider is throttling the account"
            } else {
                "the provider refused a fresh token"
            };
            tracing::warn!(account = %account.name, ?backoff, reason, "backing off the account");
            if let Err(error) = self
                .store
                .back_off_account(&account.name, backoff, crate::delivery::limits::now_secs())
                .await
            {
                tracing::error!(account = %account.name, %error, "cannot record the account's back-off in the store; other messages may meet the provider's refusal meanwhile");
            }
            // After the write, so that the next admission reads it.
            self.unmetered.forget(&account.name);
        }
        if result.throttled {
            self.count(|s| s.throttled += 1);
        }
        if result.quota {
            self.count(|s| s.quota_pauses += 1);
        }
        match result.admin {
            Some(step) => {
                self.count(|s| s.needs_admin += 1);
                // A login refusal was recorded when the session opened.
                if !step.cleared_by_login()
                    && let Err(error) = self
                        .broker
                        .report_needs_admin(&account.name, &step.instruction(&account.user))
                        .await
                {
                    tracing::error!(account = %account.name, %error, "cannot record that the account needs an administrator");
                }
            }
            None if result.count(RecipientState::Delivered) > 0
                && message
                    .last_error
                    .as_deref()
                    .is_some_and(was_send_as_denied) =>
            {
                // This very message was refused Send As before and went now.
                let resolved =
                    |reason: &str| AdminStep::of_reason(reason) == Some(AdminStep::SendAsDenied);
                if let Err(error) = self.broker.clear_needs_admin(&account.name, resolved).await {
                    tracing::warn!(account = %account.name, %error, "cannot record that Send As works again");
                }
            }
            None => {}
        }
    }

    /// Sends the open recipients, in transactions of at most the account's
    /// recipients-per-message limit, on one pooled session.
    async fn attempt(
        &self,
        account: &Account,
        message: &QueuedMessage,
        body: &[u8],
        open: &[usize],
    ) -> AttemptResult {
        let mut result = AttemptResult::default();
        let mut pooled = match self.pool.checkout(account).await {
            Ok(pooled) => pooled,
            Err(error) => {
                result.no_session(open, &error);
                return result;
            }
        };
        let per_transaction = self
            .limits(account)
            .recipients_per_message
            .map_or(usize::MAX, |n| n.max(1) as usize);
        let mut broken: Option<String> = None;
        for group in open.chunks(per_transaction) {
            if broken.is_none() && !self.pool.is_current(&pooled) {
                // Revoked, or a new consent, since this session logged in:
                // not one more transaction with the old token.
                broken = Some(format!(
                    "the credentials of account {} changed during the attempt (revoked, or a new consent or key); retrying with the current ones",
                    account.name
                ));
            }
            if let Some(reason) = &broken {
                result.defer_all(group, reason);
                continue;
            }
            let envelope = Envelope {
                mail_from: message.mail_from.clone(),
                rcpt_to: group
                    .iter()
                    .map(|&i| message.recipients[i].address.clone())
                    .collect(),
            };
            let unproven = pooled.is_unproven();
            let mut sent = pooled.send(&envelope, body).await;
            if let Err(error) = &sent
                && unproven
                && error.is_gone_before_content()
                && !error.reply().is_some_and(|r| {
                    crate::delivery::classify::says_limited(ReplyFacts::of(r, &r.text()))
                })
            {
                // Reused without RSET, and the server had dropped it while
                // idle (a 421 that says it is limiting us is a throttle,
                // handled below, not this): nothing of the message reached
                // it. Once more, on a session that answers (the first
                // group: nothing sent yet).
                tracing::debug!(account = %account.name, %error, "a reused upstream session had gone; sending on another");
                self.pool.discard_gone(pooled);
                pooled = match self.pool.checkout_probed(account).await {
                    Ok(pooled) => pooled,
                    Err(error) => {
                        result.no_session(open, &error);
                        return result;
                    }
                };
                sent = pooled.send(&envelope, body).await;
            }
            match sent {
                Ok(report) => {
                    for (&index, (address, outcome)) in group.iter().zip(report.outcomes()) {
                        match outcome {
                            RecipientOutcome::Accepted(reply) => result.recipients.push((
                                index,
                                RecipientState::Delivered,
                                Some(reply.to_string()),
                            )),
                            RecipientOutcome::Refused { reply, .. } => {
                                result.refused(index, address, reply)
                            }
                        }
                    }
                }
                Err(error) => self.failed_send(message, group, error, &mut result, &mut broken),
            }
        }
        self.pool.checkin(pooled);
        result
    }

    /// Sends the open recipients through the account's HTTP API: per group
    /// of at most the recipients-per-message limit, one request with the
    /// recipient headers made to match the group (`message::recipients`).
    /// Messages over the API's limit go by SMTP or bounce, as the
    /// account's `large_messages` says.
    async fn attempt_api(
        &self,
        account: &Account,
        api: &ApiTarget,
        message: &QueuedMessage,
        body: &[u8],
        open: &[usize],
    ) -> AttemptResult {
        let mut result = AttemptResult::default();
        let per_transaction = self
            .limits(account)
            .recipients_per_message
            .map_or(usize::MAX, |n| n.max(1) as usize);
        let mut oversize: Vec<usize> = Vec::new();
        let mut oversize_reason = String::new();
        // Set when an answer speaks for the account (throttled, an
        // administrator's step, a refused token, the API unreachable):
        // further requests now would only be refused the same way.
        let mut broken: Option<String> = None;
        for group in open.chunks(per_transaction) {
            if let Some(reason) = &broken {
                result.defer_all(group, reason);
                continue;
            }
            let envelope: Vec<String> = group
                .iter()
                .map(|&i| message.recipients[i].address.clone())
                .collect();
            let mime = match crate::message::recipients::match_envelope(body, &envelope) {
                Ok(mime) => mime,
                Err(error) => {
                    result.defer_all(group, &error.to_string());
                    continue;
                }
            };
            let request = match crate::delivery::http::request_for(api, &account.user, &mime) {
                Ok(request) => request,
                Err(too_large) => {
                    oversize.extend_from_slice(group);
                    oversize_reason = format!(
                        "the message is {} bytes, {} bytes as a request to {}, over its limit of {} bytes",
                        too_large.message_bytes,
                        too_large.request_bytes,
                        api.preset.title,
                        too_large.limit
                    );
                    continue;
                }
            };
            let verdict = match self.http.send(&self.broker, account, api, &request).await {
                Ok(ApiOutcome::Verdict(verdict)) => verdict,
                Ok(ApiOutcome::AuthFailed { detail }) => {
                    result.auth_failed = true;
                    result.defer_all(group, &detail);
                    broken = Some(detail);
                    continue;
                }
                Err(error) => {
                    let reason = error.to_string();
                    result.defer_all(group, &reason);
                    broken = Some(reason);
                    continue;
                }
            };
            match verdict {
                ApiVerdict::Sent { detail } => {
                    for &index in group {
                        result.recipients.push((
                            index,
                            RecipientState::Delivered,
                            Some(detail.clone()),
                        ));
                    }
                    self.api_sent(account).await;
                }
                ApiVerdict::Throttled { pause, detail } => {
                    result.note_account(ReplyClass::Throttled { pause });
                    result.defer_all(group, &detail);
                    broken = Some(detail);
                }
                ApiVerdict::NeedsAdmin { step, detail } => {
                    result.admin = Some(step);
                    self.api_admin_unchecked(account);
                    let reason = format!("{detail}. {}", step.instruction(&account.user));
                    result.defer_all(group, &reason);
                    broken = Some(reason);
                }
                ApiVerdict::Permanent { detail } => result.bounce_all(message, group, &detail),
                ApiVerdict::TooLarge { detail } => {
                    oversize.extend_from_slice(group);
                    oversize_reason = detail;
                }
                ApiVerdict::Transient { detail } | ApiVerdict::Unauthorized { detail } => {
                    result.defer_all(group, &detail);
                    broken = Some(detail);
                }
            }
        }
        if !oversize.is_empty() {
            match account.large_messages {
                LargeMessages::Smtp => {
                    tracing::info!(id = %message.id, account = %account.name, reason = %oversize_reason, "too large for the API; sending over SMTP (large_messages = \"smtp\")");
                    let fallback = self.attempt(account, message, body, &oversize).await;
                    result.merge(fallback);
                }
                LargeMessages::Bounce => {
                    let reason = format!(
                        "{oversize_reason}; it was not sent. Set large_messages = \"smtp\" on account {} to send such messages over SMTP, or send a smaller message",
                        account.name
                    );
                    result.bounce_all(message, &oversize, &reason);
                }
            }
        }
        result
    }

    /// An API accepted a message: an administrator's step recorded for the
    /// account (Mail.Send, the gmail.send scope) has been taken. Checked in
    /// the store once per process and after each such refusal, not per
    /// message.
    async fn api_sent(&self, account: &Account) {
        let first = self
            .api_admin_checked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(account.name.clone());
        if !first {
            return;
        }
        // The API's own steps are taken; and a login step recorded while
        // the account was on SMTP (SMTP AUTH off) no longer applies to it.
        let resolved = |reason: &str| {
            AdminStep::of_reason(reason)
                .is_some_and(|step| step.cleared_by_api_send() || step.cleared_by_login())
        };
        if let Err(error) = self.broker.clear_needs_admin(&account.name, resolved).await {
            tracing::warn!(account = %account.name, %error, "cannot record that the API accepts the account again");
        }
    }

    fn api_admin_unchecked(&self, account: &Account) {
        self.api_admin_checked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&account.name);
    }

    /// A transaction that ended in an error rather than a report.
    fn failed_send(
        &self,
        message: &QueuedMessage,
        group: &[usize],
        error: ClientError,
        result: &mut AttemptResult,
        broken: &mut Option<String>,
    ) {
        match (&error, error.reply()) {
            // MAIL FROM refused: the reply applies to every recipient.
            (
                ClientError::Reply {
                    stage: Stage::Mail, ..
                },
                Some(reply),
            ) => {
                for &index in group {
                    result.refused(index, &message.recipients[index].address, reply);
                }
            }
            // The envelope or the message cannot be sent as it is, to this
            // server or any: too large, a non-ASCII address without
            // SMTPUTF8, an address that is not one.
            (
                ClientError::InvalidEnvelope { .. }
                | ClientError::MessageTooLarge { .. }
                | ClientError::SmtpUtf8NotOffered { .. },
                _,
            ) => {
                result.bounce_all(message, group, &error.to_string());
            }
            _ => {
                // Network, timeout, a dropped connection, a refused RSET, a
                // 421: the session is not to be trusted, nor the rest of
                // the attempt on it. A reply may still speak for the
                // account (a 421 "try again later" is a throttle).
                if let Some(reply) = error.reply() {
                    result.note_account(classify(ReplyFacts::of(reply, &reply.text())));
                }
                let reason = error.to_string();
                result.defer_all(group, &reason);
                *broken = Some(reason);
            }
        }
    }

    /// Records the attempt, its events and DSNs.
    async fn record(
        &self,
        message: &QueuedMessage,
        body: &[u8],
        lease: &ClaimLease,
        account: Option<&Account>,
        result: AttemptResult,
    ) {
        let attempts = u32::try_from(message.attempts.saturating_add(1)).unwrap_or(u32::MAX);
        let delivered = result.count(RecipientState::Delivered);
        let deferred = result.count(RecipientState::Deferred);
        let bounced = result.count(RecipientState::Bounced);
        // Not before the account may go again (a quota's window), so the
        // message is not claimed only to be given back.
        let next_attempt_at = (deferred > 0).then(|| {
            let delay = self.config.schedule.delay_after(attempts);
            now_unix() + secs_ceil(result.pause.map_or(delay, |pause| pause.max(delay)))
        });
        let outcome = AttemptOutcome {
            recipients: result.recipients,
            next_attempt_at,
            error: result.error.clone(),
        };
        // The events are built before the outcome is written so that both
        // go in one commit (`complete_attempt_with_events`): one store
        // transaction per delivered message instead of two, each of them
        // taking the store's single writer in turn (issue 10, item 5).
        let why = result.error.as_deref().unwrap_or("");
        let at = now_unix();
        let mut events = Vec::with_capacity(3);
        for (count, kind, detail) in [
            (delivered, "message.delivered", String::new()),
            (
                deferred,
                "message.deferred",
                match next_attempt_at {
                    Some(at) => format!("; next attempt {} ({why})", crate::clock::format_unix(at)),
                    None => String::new(),
                },
            ),
            (bounced, "message.bounced", format!(" ({why})")),
        ] {
            if count > 0 {
                events.push(Event {
                    at,
                    kind: kind.to_string(),
                    account: Some(message.account.clone()),
                    message_id: Some(message.id.clone()),
                    detail: format!(
                        "message {} (submitted by {}) attempt {attempts}: {count} of {} recipients{detail}",
                        message.id,
                        message.submitted_by,
                        message.recipients.len()
                    ),
                });
            }
        }
        let state = match self
            .store
            .complete_attempt_with_events(&message.id, lease, &outcome, &events)
            .await
        {
            Ok(state) => state,
            Err(StoreError::LeaseLost(_)) => {
                tracing::warn!(id = %message.id, "the lease expired during delivery and another worker took the message; its outcome is theirs to record");
                self.count(|s| s.leases_lost += 1);
                return;
            }
            Err(error) => {
                tracing::error!(id = %message.id, %error, "cannot record a delivery attempt; the message returns when its lease expires");
                return;
            }
        };
        // The audit log after the commit, as before: a line says what the
        // store already holds.
        let lines = events
            .into_iter()
            .map(|event| AuditLine {
                action: event.kind,
                account: Some(message.account.clone()),
                detail: event.detail,
            })
            .collect();
        // Per recipient, as the stats count them; after the commit, so a
        // scrape never shows an outcome the store does not hold.
        let metrics = crate::metrics::global();
        let label = account.map_or(UNCONFIGURED, |a| a.name.as_str());
        for (outcome, count) in [
            (DeliveryOutcome::Delivered, delivered),
            (DeliveryOutcome::Deferred, deferred),
            (DeliveryOutcome::Bounced, bounced),
        ] {
            metrics.deliveries(label, outcome, count as u64);
        }
        if state == MessageState::Delivered {
            metrics.delivered_after(label, now_unix().saturating_sub(message.created_at));
        }
        // Counted only once its events are written and its audit lines
        // too (by the tail writer): whoever waits on the stats (serve's
        // summary, tests) then sees the whole attempt.
        self.finish_attempt(AttemptTail {
            lines,
            count: AttemptCount {
                delivered,
                deferred,
                bounced,
                state,
            },
        })
        .await;
        tracing::info!(id = %message.id, account = %message.account, attempts, delivered, deferred, bounced, %state, "delivery attempt recorded");
        if let Some(account) = account {
            self.send_dsn(message, body, account, &result.bounced).await;
        }
    }

    async fn event(&self, kind: &str, message: &MessageId, account: &str, detail: String) {
        let event = Event {
            at: now_unix(),
            kind: kind.to_string(),
            account: Some(account.to_string()),
            message_id: Some(message.clone()),
            detail,
        };
        if let Err(error) = self.store.record_event(&event).await {
            tracing::error!(%error, kind, "cannot record an event");
        }
        self.broker.audit(kind, Some(account), &event.detail).await;
    }

    async fn send_dsn(
        &self,
        message: &QueuedMessage,
        body: &[u8],
        account: &Account,
        failed: &[FailedRecipient],
    ) {
        if !self.config.dsn {
            return;
        }
        let origin = DsnOrigin {
            reporting_mta: &self.config.reporting_mta,
            domain: domain_of(&account.user).unwrap_or("localhost"),
        };
        let Some(dsn) = build_dsn(message, body, failed, &origin) else {
            return;
        };
        match self.store.enqueue(dsn).await {
            Ok(id) => {
                tracing::info!(original = %message.id, dsn = %id, "DSN queued for the sender");
                self.count(|s| s.dsns_enqueued += 1);
                self.event(
                    "message.dsn_queued",
                    &message.id,
                    &message.account,
                    format!(
                        "message {}: DSN {id} queued for {} failed recipient(s)",
                        message.id,
                        failed.len()
                    ),
                )
                .await;
                self.wake.notify_one();
            }
            Err(error) => {
                tracing::error!(original = %message.id, %error, "cannot queue a DSN");
            }
        }
    }

    /// Expires messages older than the maximum age, with events and DSNs.
    async fn expire_old(&self) {
        let max_age = secs_ceil(self.config.schedule.max_age);
        let expired = match self.store.expire(now_unix().saturating_sub(max_age)).await {
            Ok(expired) => expired,
            Err(error) => {
                tracing::error!(%error, "cannot expire old messages");
                return;
            }
        };
        for message in expired {
            self.count(|s| s.messages_expired += 1);
            let expired_recipients = message
                .recipients
                .iter()
                .filter(|r| r.state == RecipientState::Expired)
                .count();
            let label = self
                .broker
                .account(&message.account)
                .map_or(UNCONFIGURED, |a| a.name.as_str());
            crate::metrics::global().deliveries(
                label,
                DeliveryOutcome::Expired,
                expired_recipients as u64,
            );
            self.event(
                "message.expired",
                &message.id,
                &message.account,
                format!(
                    "message {} expired after {} attempts; last error: {}",
                    message.id,
                    message.attempts,
                    message.last_error.as_deref().unwrap_or("none")
                ),
            )
            .await;
            if !self.config.dsn || message.mail_from.is_empty() {
                continue;
            }
            let Some(account) = self.broker.account(&message.account) else {
                continue;
            };
            let failed: Vec<FailedRecipient> = message
                .recipients
                .iter()
                .filter(|r| r.state == RecipientState::Expired)
                .map(|r| FailedRecipient::expired(&r.address, r.reply.as_deref()))
                .collect();
            let body = match self.store.message(&message.id).await {
                Ok(Some((_, body))) => body,
                Ok(None) => Vec::new(),
                Err(error) => {
                    tracing::warn!(id = %message.id, %error, "cannot read an expired message for its DSN; sending it without the original header");
                    Vec::new()
                }
            };
            self.send_dsn(&message, &body, account, &failed).await;
        }
    }
}

/// The account label of a message whose account is no longer in the
/// config: a fixed word, so that labels stay the configured names.
const UNCONFIGURED: &str = "unconfigured";

/// Whether a message's last error was a provider's refusal of Send As.
fn was_send_as_denied(last_error: &str) -> bool {
    let text = last_error.to_ascii_lowercase();
    text.contains(" 5.7.60 ") || text.contains("sendasdenied")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_up() {
        assert_eq!(secs_ceil(Duration::from_millis(200)), 1);
        assert_eq!(secs_ceil(Duration::from_secs(2)), 2);
        assert_eq!(secs_ceil(Duration::ZERO), 0);
    }

    fn reply(code: u16, enhanced: Option<(u8, u16, u16)>, text: &str) -> Reply {
        Reply {
            code,
            enhanced,
            lines: vec![text.into()],
        }
    }

    #[test]
    fn refusals_are_classified_per_recipient() {
        let mut result = AttemptResult::default();
        result.refused(0, "a@x", &reply(451, Some((4, 3, 0)), "later"));
        result.refused(1, "b@x", &reply(550, Some((5, 1, 1)), "no such user"));
        result.refused(
            2,
            "c@x",
            &reply(421, Some((4, 7, 0)), "too many connections"),
        );
        let states: Vec<_> = result.recipients.iter().map(|r| r.1).collect();
        assert_eq!(
            states,
            [
                RecipientState::Deferred,
                RecipientState::Bounced,
                RecipientState::Deferred
            ]
        );
        assert!(result.throttled);
        assert_eq!(result.bounced.len(), 1);
        assert_eq!(result.bounced[0].status, "5.1.1");
        assert_eq!(result.error.as_deref(), Some("451 later"));
    }
}
