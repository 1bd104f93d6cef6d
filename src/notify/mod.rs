//! Notifications (`[notify]`): the operator hears of an account that needs
//! consent, fails, was revoked, needs an administrator or nears the end of
//! its refresh token, and of a lockdown, without watching logs.
//!
//! `serve` runs one [`Notifier`]. It looks at the store on an interval and
//! whenever the broker reports a change in this process, finds the
//! conditions in force ([`conditions`]), and for each that is due (never
//! told, or last told `repeat_every` ago, as the store's `notify_marks`
//! say, so that restarts and a second relay do not tell again early):
//!
//! - records a `notify.*` event, which the webhooks carry (`src/webhooks`);
//! - runs `[notify] command` with the event in its environment ([`command`]);
//! - queues an e-mail to `[notify] email_to` ([`email`]);
//! - writes an audit line (`notify.sent`) naming the channels used.
//!
//! A condition that ends is forgotten, with a `notify.resolved` event, so
//! its return is told at once. Since conditions are read from account
//! states, not counted from delivery attempts, an account that fails a
//! hundred deliveries is told once per interval.

pub mod command;
pub mod conditions;
pub mod email;

use crate::config::{Config, NotifyConfig};
use crate::oauth::broker::Broker;
use crate::store::{Event, Store, StoreError};
use conditions::Condition;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// Told again while a condition lasts, unless `repeat_every` says otherwise:
/// often enough that a condition is not forgotten over a working day,
/// rarely enough not to train people to ignore it.
pub const DEFAULT_REPEAT: Duration = Duration::from_secs(6 * 3600);
/// How often the store is looked at, unless `check_every` says otherwise:
/// changes made by other processes (`oxirelay lockdown`, `account revoke`)
/// are known no other way; one read of the small account table and the
/// lockdown flag.
pub const DEFAULT_CHECK: Duration = Duration::from_secs(30);

pub struct Notifier {
    store: Arc<dyn Store>,
    broker: Arc<Broker>,
    config: Arc<Config>,
    notify: NotifyConfig,
    /// Woken when a `notify.*` event is recorded (the webhook dispatcher).
    events_recorded: Arc<Notify>,
    /// Woken when the operator's e-mail is queued (the delivery engine).
    mail_queued: Arc<Notify>,
}

impl Notifier {
    /// `config.notify` absent: notifications go by webhook only, at the
    /// default interval.
    pub fn new(
        store: Arc<dyn Store>,
        broker: Arc<Broker>,
        config: Arc<Config>,
        events_recorded: Arc<Notify>,
        mail_queued: Arc<Notify>,
    ) -> Self {
        let notify = config.notify.clone().unwrap_or_default();
        Notifier {
            store,
            broker,
            config,
            notify,
            events_recorded,
            mail_queued,
        }
    }

    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut changes = self.broker.subscribe();
        let every = self.notify.check_every.unwrap_or(DEFAULT_CHECK);
        loop {
            if let Err(error) = self.check().await {
                tracing::error!(%error, "cannot check what to notify; trying again");
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                // A state change in this process is looked at at once; a
                // lagged receiver only means several changes: look once.
                // (It never closes: this task holds the broker.)
                _ = changes.recv() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// One look: tells what is due, forgets what ended.
    pub async fn check(&self) -> Result<(), StoreError> {
        let now = crate::clock::now_unix();
        let records = self.store.token_records().await?;
        let lockdown = self.store.lockdown().await?;
        let found = conditions::detect(&self.config.accounts, &records, lockdown.as_ref(), now);
        for mark in self.store.notify_marks().await? {
            if !found.iter().any(|c| c.key == mark.condition)
                && self.store.notify_clear(&mark.condition).await?
            {
                self.record(Event {
                    at: now,
                    kind: "notify.resolved".into(),
                    account: account_of(&mark.condition),
                    message_id: None,
                    detail: format!("{} no longer holds", mark.condition),
                })
                .await;
            }
        }
        let repeat = self.notify.repeat_every.unwrap_or(DEFAULT_REPEAT);
        for condition in found {
            if self
                .store
                .notify_due(&condition.key, now, repeat.as_secs() as i64)
                .await?
            {
                self.tell(&condition, now, &records).await;
            }
        }
        Ok(())
    }

    async fn tell(&self, condition: &Condition, now: i64, records: &[crate::store::TokenRecord]) {
        tracing::warn!(condition = %condition.key, kind = condition.kind, "{}", condition.detail);
        self.record(Event {
            at: now,
            kind: condition.kind.to_string(),
            account: condition.account.clone(),
            message_id: None,
            detail: condition.detail.clone(),
        })
        .await;
        let mut channels = vec!["event"];
        if let Some(command) = self.notify.command.clone() {
            channels.push("command");
            let condition = condition.clone();
            let timeout = self
                .notify
                .command_timeout
                .unwrap_or(command::DEFAULT_TIMEOUT);
            // Its own task: a slow command never holds the next check.
            tokio::spawn(async move {
                if let Err(error) = command::run(&command, &condition, now, timeout).await {
                    tracing::warn!(condition = %condition.key, %error, "the [notify] command failed");
                }
            });
        }
        if let (Some(to), Some(names)) = (&self.notify.email_to, &self.notify.email_account) {
            match email::queue(
                self.store.as_ref(),
                &self.config,
                to,
                names,
                records,
                condition,
            )
            .await
            {
                Ok(id) => {
                    channels.push("email");
                    self.mail_queued.notify_one();
                    tracing::info!(condition = %condition.key, %id, "notification e-mail queued");
                }
                Err(error) => {
                    tracing::warn!(condition = %condition.key, %error, "no notification e-mail")
                }
            }
        }
        self.broker
            .audit(
                "notify.sent",
                condition.account.as_deref(),
                &format!(
                    "{} via {}: {}",
                    condition.kind,
                    channels.join(", "),
                    condition.detail
                ),
            )
            .await;
    }

    async fn record(&self, event: Event) {
        if let Err(error) = self.store.record_event(&event).await {
            tracing::error!(%error, kind = %event.kind, "cannot record a notification event");
        }
        self.events_recorded.notify_waiters();
    }
}

/// What `oxirelay notify test` did on each channel.
#[derive(Debug, Default, serde::Serialize)]
pub struct TestReport {
    /// The `notify.test` event recorded (webhooks carry it while `serve` runs).
    pub event: bool,
    /// `None`: no `[notify] command`; else how its run ended.
    pub command: Option<ChannelOutcome>,
    /// `None`: no `[notify] email_to`; else the queued message's id, or why not.
    pub email: Option<ChannelOutcome>,
}

/// How one channel of a test went: `detail` is the queued message's id
/// for the e-mail, the reason when it failed.
#[derive(Debug, serde::Serialize)]
pub struct ChannelOutcome {
    pub ok: bool,
    pub detail: Option<String>,
}

impl<T: Into<Option<String>>, E: std::fmt::Display> From<Result<T, E>> for ChannelOutcome {
    fn from(result: Result<T, E>) -> Self {
        match result {
            Ok(detail) => ChannelOutcome {
                ok: true,
                detail: detail.into(),
            },
            Err(error) => ChannelOutcome {
                ok: false,
                detail: Some(error.to_string()),
            },
        }
    }
}

/// Sends a `notify.test` notification through every configured channel
/// now, waiting for the command to finish, for `oxirelay notify test`.
pub async fn send_test(store: &dyn Store, config: &Config) -> TestReport {
    let notify = config.notify.clone().unwrap_or_default();
    let now = crate::clock::now_unix();
    let condition = Condition {
        key: "test".into(),
        kind: "notify.test",
        account: None,
        detail: format!(
            "a test notification from oxirelay on {}",
            crate::instance::host_name()
        ),
    };
    let mut report = TestReport {
        event: store
            .record_event(&Event {
                at: now,
                kind: condition.kind.into(),
                account: None,
                message_id: None,
                detail: condition.detail.clone(),
            })
            .await
            .is_ok(),
        ..TestReport::default()
    };
    if let Some(command) = &notify.command {
        let timeout = notify.command_timeout.unwrap_or(command::DEFAULT_TIMEOUT);
        report.command = Some(
            command::run(command, &condition, now, timeout)
                .await
                .map(|()| None)
                .into(),
        );
    }
    if let (Some(to), Some(names)) = (&notify.email_to, &notify.email_account) {
        let records = store.token_records().await.unwrap_or_default();
        report.email = Some(
            email::queue(store, config, to, names, &records, &condition)
                .await
                .map(|id| Some(id.0))
                .into(),
        );
    }
    report
}

/// `account:NAME:state` → NAME.
fn account_of(condition: &str) -> Option<String> {
    let rest = condition.strip_prefix("account:")?;
    rest.rsplit_once(':').map(|(name, _)| name.to_string())
}
