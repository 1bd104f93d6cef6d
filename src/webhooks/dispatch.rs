//! The dispatcher `serve` runs: one task per endpoint, each following the
//! store's event log from the endpoint's cursor. An event the endpoint
//! takes is POSTed until a 2xx, and only then does the cursor move past
//! it; a failure (no connection, no answer in time, anything but 2xx)
//! waits out the endpoint's back-off ([`RetrySchedule`]) and retries the
//! same event, so a receiver sees events in log order and none is skipped.
//! Events the endpoint does not take are passed over with the next move.
//!
//! The cursor, the attempts, the next attempt and the last error live in
//! the store (`webhook_cursors`), so a restart resumes where the last run
//! stopped. One process at a time delivers to an endpoint: it holds the
//! endpoint's row for [`HOLD`], renewed as it works, given back on a clean
//! stop and taken over at once from a holder that is provably gone.
//!
//! Following the log by id loses nothing because ids become visible in
//! order: SQLite has one writer, so an event with a lower id is committed
//! before any with a higher one. (A PostgreSQL backend, whose sequences
//! commit out of order, must give the same guarantee to `events_after`.)
//!
//! [`RetrySchedule`]: crate::delivery::schedule::RetrySchedule

use super::endpoint::Endpoint;
use super::payload::WebhookPayload;
use crate::instance::Holder;
use crate::store::{QueuedMessage, Store, StoredEvent, WebhookCursor, WebhookHold};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// Events read from the log per pass: bounds memory and the time between
/// renewals of the hold, whatever the backlog.
pub const BATCH: u32 = 100;
/// How long a hold lasts unless renewed. Another relay on the same store
/// takes a crashed relay's endpoints after this (at once on the same host).
pub const HOLD: Duration = Duration::from_secs(30);
/// Renew the hold once this much of it has passed.
const RENEW_AFTER: Duration = Duration::from_secs(10);
/// How long an idle endpoint waits before it looks at the log again,
/// unless woken. Events are written by the delivery engine and by other
/// processes (`oxirelay lockdown`, `account revoke`, `sendmail`), and a
/// SQLite store cannot tell anyone: looking is one read at the end of the
/// log's primary key that finds nothing when idle, so a second bounds the
/// delay of an event without costing the store anything measurable.
pub const POLL: Duration = Duration::from_secs(1);

/// Runs every endpoint's task until `stop`.
pub struct Dispatcher {
    followers: Vec<Follower>,
}

impl Dispatcher {
    /// `wake`: notified by whoever records an event this process knows of
    /// (the notifier), so that it goes out without waiting for [`POLL`].
    pub fn new(store: Arc<dyn Store>, endpoints: Vec<Endpoint>, wake: Arc<Notify>) -> Self {
        let followers = endpoints
            .into_iter()
            .map(|endpoint| Follower {
                store: store.clone(),
                endpoint,
                holder: Holder::new_in_this_process(),
                wake: wake.clone(),
                poll: POLL,
                held: None,
            })
            .collect();
        Dispatcher { followers }
    }

    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.followers.iter().map(|f| &f.endpoint)
    }

    /// Takes each endpoint and gives a new one its cursor (at the end of
    /// the log) now, so that every event recorded after this returns is
    /// the endpoint's to receive. A store error is logged; the endpoint's
    /// task tries again.
    pub async fn open(&self) {
        for follower in &self.followers {
            if let Err(error) = follower.hold().await {
                tracing::error!(webhook = %follower.endpoint.name, %error, "cannot open the webhook's cursor; trying again");
            }
        }
    }

    /// Runs until `stop` turns true; each endpoint's hold is given back.
    pub async fn run(self, stop: watch::Receiver<bool>) {
        let tasks: Vec<_> = self
            .followers
            .into_iter()
            .map(|follower| tokio::spawn(follower.run(stop.clone())))
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// One endpoint's task.
struct Follower {
    store: Arc<dyn Store>,
    endpoint: Endpoint,
    holder: Holder,
    wake: Arc<Notify>,
    poll: Duration,
    /// The endpoint's row as this task last wrote or read it, while it
    /// holds the endpoint, and when the hold was last renewed: an idle
    /// endpoint reads the log each poll but writes its hold only every
    /// [`RENEW_AFTER`].
    held: Option<(WebhookCursor, tokio::time::Instant)>,
}

/// What one pass over the log found.
enum Pass {
    /// Nothing new: wait for the poll or a wake.
    Idle,
    /// A batch was worked through: look again at once.
    More,
    /// Wait this long (back-off, another holder), then look again.
    Wait(Duration),
}

impl Follower {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let name = self.endpoint.name.clone();
        tracing::info!(webhook = %name, to = %self.endpoint.origin(), "delivering events");
        loop {
            if *stop.borrow() {
                break;
            }
            // A stop cuts a POST short: every write of a pass stands on
            // its own, and an event cut off is sent again after the
            // restart (at least once), so `serve` stops within its bound.
            let result = tokio::select! {
                result = self.pass() => result,
                _ = stop.wait_for(|s| *s) => break,
            };
            let pass = match result {
                Ok(pass) => pass,
                Err(error) => {
                    tracing::error!(webhook = %name, %error, "cannot read or move the webhook's cursor; trying again");
                    // Read the row again before going on.
                    self.held = None;
                    Pass::Wait(self.poll * 5)
                }
            };
            let wait = match pass {
                Pass::More => continue,
                Pass::Idle => self.poll,
                Pass::Wait(wait) => wait,
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        if let Err(error) = self.store.release_webhook(&name, &self.holder.id).await {
            tracing::warn!(webhook = %name, %error, "cannot give the webhook's hold back; another relay takes it when it ends");
        }
    }

    /// Takes or renews the hold in the store, reading the endpoint's row.
    async fn hold(&self) -> Result<Option<WebhookCursor>, crate::store::StoreError> {
        let now = crate::clock::now_unix();
        let until = now + HOLD.as_secs() as i64;
        let name = &self.endpoint.name;
        match self
            .store
            .hold_webhook(name, &self.holder, now, until, None)
            .await?
        {
            WebhookHold::Held(cursor) => Ok(Some(cursor)),
            WebhookHold::HeldBy { holder, .. } if holder.is_provably_gone() => {
                match self
                    .store
                    .hold_webhook(name, &self.holder, now, until, Some(&holder.id))
                    .await?
                {
                    WebhookHold::Held(cursor) => Ok(Some(cursor)),
                    WebhookHold::HeldBy { .. } => Ok(None),
                }
            }
            WebhookHold::HeldBy { .. } => Ok(None),
        }
    }

    /// The endpoint's row, renewing the hold if it is due for renewal;
    /// `None` while another process holds the endpoint.
    async fn held(&mut self) -> Result<Option<WebhookCursor>, crate::store::StoreError> {
        if let Some((cursor, at)) = &self.held
            && at.elapsed() < RENEW_AFTER
        {
            return Ok(Some(cursor.clone()));
        }
        let cursor = self.hold().await?;
        self.held = cursor
            .clone()
            .map(|cursor| (cursor, tokio::time::Instant::now()));
        Ok(cursor)
    }

    /// Moves the cursor to `id` in the store and here; false if the hold
    /// was lost (another relay took the endpoint).
    async fn advance(&mut self, id: i64, delivered: u32) -> Result<bool, crate::store::StoreError> {
        let now = crate::clock::now_unix();
        let moved = self
            .store
            .advance_webhook(&self.endpoint.name, &self.holder.id, id, delivered, now)
            .await?;
        match (&mut self.held, moved) {
            (Some((cursor, _)), true) => {
                cursor.cursor = id;
                cursor.attempts = 0;
                cursor.next_attempt_at = None;
                cursor.last_error = None;
            }
            _ => self.held = None,
        }
        Ok(moved)
    }

    async fn pass(&mut self) -> Result<Pass, crate::store::StoreError> {
        let name = self.endpoint.name.clone();
        let Some(cursor) = self.held().await? else {
            return Ok(Pass::Wait(self.poll * 5));
        };
        let now = crate::clock::now_unix();
        if let Some(next) = cursor.next_attempt_at
            && next > now
        {
            // Back-off: woken early only to renew the hold.
            let wait = Duration::from_secs((next - now) as u64).min(RENEW_AFTER);
            return Ok(Pass::Wait(wait));
        }
        let events = self.store.events_after(cursor.cursor, BATCH).await?;
        if events.is_empty() {
            return Ok(Pass::Idle);
        }
        if let Some(first) = events.first()
            && first.id > cursor.cursor + 1
        {
            // SQLite's ids have no gaps (one writer; a rolled-back insert
            // gives its id back): these were removed by retention
            // (`[store] keep_events`) before the endpoint received them.
            tracing::warn!(
                webhook = %name,
                missed = first.id - cursor.cursor - 1,
                "events older than [store] keep_events were removed before this endpoint received them; raise keep_events above the longest outage a receiver may have"
            );
        }
        let full = events.len() as u32 == BATCH;
        // The id up to which the cursor may move: events received, or
        // passed over as not the endpoint's.
        let mut passed = cursor.cursor;
        let mut moved_to = cursor.cursor;
        for event in &events {
            let message = self.message_of(event).await?;
            if !self.endpoint.filter.takes(event, message.as_ref()) {
                passed = event.id;
                continue;
            }
            // A long batch renews the hold as it goes.
            if self.held().await?.is_none() {
                return Ok(Pass::Wait(self.poll * 5));
            }
            let payload = WebhookPayload::new(event, message.as_ref());
            match self.endpoint.post(&payload).await {
                Ok(status) => {
                    tracing::debug!(webhook = %name, id = event.id, kind = %event.event.kind, status, "event received");
                    if !self.advance(event.id, 1).await? {
                        return Ok(Pass::Wait(self.poll * 5));
                    }
                    passed = event.id;
                    moved_to = event.id;
                }
                Err(error) => {
                    if passed > moved_to && !self.advance(passed, 0).await? {
                        return Ok(Pass::Wait(self.poll * 5));
                    }
                    // The attempts belong to the event after the cursor:
                    // the same one as before unless the cursor just moved.
                    let attempts = if passed == cursor.cursor {
                        cursor.attempts + 1
                    } else {
                        1
                    };
                    let delay = self.endpoint.schedule.delay_after(attempts as u32);
                    let text = error.to_string();
                    tracing::warn!(webhook = %name, id = event.id, kind = %event.event.kind, attempts, error = %text, retry_in = ?delay, "the receiver did not take the event; it is sent again, in order");
                    let now = crate::clock::now_unix();
                    let next = now + delay.as_secs().max(1) as i64;
                    let recorded = self
                        .store
                        .webhook_failed(&name, &self.holder.id, attempts, next, &text, now)
                        .await?;
                    match (&mut self.held, recorded) {
                        (Some((cursor, _)), true) => {
                            cursor.attempts = attempts;
                            cursor.next_attempt_at = Some(next);
                            cursor.last_error = Some(text);
                        }
                        _ => self.held = None,
                    }
                    return Ok(Pass::Wait(delay.min(RENEW_AFTER)));
                }
            }
        }
        if passed > moved_to {
            self.advance(passed, 0).await?;
        }
        Ok(if full { Pass::More } else { Pass::Idle })
    }

    /// The message a message event is about, when the payload or the
    /// filter needs it (a kind the endpoint does not take needs no read).
    async fn message_of(
        &self,
        event: &StoredEvent,
    ) -> Result<Option<QueuedMessage>, crate::store::StoreError> {
        match &event.event.message_id {
            Some(id) if self.endpoint.filter.takes_kind(&event.event.kind) => {
                self.store.message_summary(id).await
            }
            _ => Ok(None),
        }
    }
}

/// Sends a signed `webhook.test` event to one endpoint now, outside the
/// log (its id is 0): `oxirelay webhook test NAME`.
pub async fn send_test(endpoint: &Endpoint) -> Result<u16, super::PostError> {
    let now = crate::clock::now_unix();
    let payload = WebhookPayload {
        id: 0,
        kind: "webhook.test".to_string(),
        at: now,
        time: crate::clock::format_unix(now),
        account: None,
        message_id: None,
        submitted_by: None,
        detail: format!(
            "a test of webhook {:?} from oxirelay on {}",
            endpoint.name,
            crate::instance::host_name()
        ),
        recipients: None,
        recipients_omitted: 0,
    };
    endpoint.post(&payload).await
}
