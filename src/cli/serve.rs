//! `oxirelay serve`: the relay. The listeners accept mail into the durable
//! queue; the delivery engine sends it; every account's grant is validated
//! on an interval. SIGTERM or SIGINT: stop accepting, end idle sessions
//! with 421, give messages being received a grace to finish, let
//! deliveries in progress finish (or release them), exit; each within a
//! bound, whatever the clients do. A lockdown, which another
//! process records in the store, pauses delivery until `unlock`.

use super::Context;
use crate::delivery::engine::{Engine, EngineConfig, RunningEngine};
use crate::smtp::server::{
    DEFAULT_MAX_SESSIONS_PER_ADDRESS, SessionLimits, ShutdownLimits, shutdown_channel,
};
use crate::submit::{Listeners, SubmissionOptions, SubmissionPolicy};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// How often the store is asked whether another process changed an
/// account's credentials (`account revoke`, `lockdown`, `unlock`,
/// `rotate-key`, a new consent): they must reach a running relay within a
/// few seconds, and the question reads one small row per account.
const CREDENTIAL_POLL: Duration = Duration::from_secs(1);
/// How often the lockdown flag is read: it is set by another process
/// (`oxirelay lockdown`), so the store is the only way to learn of it.
const LOCKDOWN_POLL: Duration = Duration::from_secs(2);
/// The longest an idle worker sleeps: mail queued by another process
/// (`oxirelay sendmail`) has no way to wake this one, so it is found by
/// looking, within this long. A claim query is cheap.
const IDLE_POLL: Duration = Duration::from_secs(2);
/// The same on a store that announces new work from every process
/// (PostgreSQL's NOTIFY, `Store::announces_work`): looking is only the
/// fallback should a notification be lost with its connection, and due
/// retries and lapsed leases are waited for by their time (`next_due`).
const ANNOUNCED_IDLE_POLL: Duration = Duration::from_secs(30);
/// On SIGTERM, how long HTTP requests in progress may take to finish.
const HTTP_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Concurrent deliveries.
    #[arg(long, default_value_t = 8)]
    pub workers: usize,
    /// How often every account's grant is validated (introspection or a test SMTP AUTH).
    #[arg(long, default_value = "30m", value_parser = super::parse_duration)]
    pub validate_every: Duration,
    /// How long one delivery may hold a message. A relay that dies gives its messages back sooner: at once when a relay restarts on the same host, else when its heartbeat ends (30 s).
    #[arg(long, default_value = "5m", value_parser = super::parse_duration)]
    pub lease: Duration,
    /// A message still undelivered this long after submission expires (its sender gets a DSN).
    #[arg(long, default_value = "5d", value_parser = super::parse_duration)]
    pub max_age: Duration,
    /// How often retention removes what `[store] keep_delivered` and `keep_events` let go (a pass also runs at start).
    #[arg(long, default_value = "10m", value_parser = super::parse_duration)]
    pub retention_every: Duration,
    /// Do not send delivery status notifications (bounces) to senders.
    #[arg(long)]
    pub no_dsn: bool,
    /// Submission sessions at once from one client address (IPv6: one /64) per listener; more get 421 4.7.0.
    #[arg(long, default_value_t = DEFAULT_MAX_SESSIONS_PER_ADDRESS)]
    pub max_sessions_per_address: usize,
    /// The longest a submission session may last, however busy; then 421 4.4.2.
    #[arg(long, default_value = "30m", value_parser = super::parse_duration)]
    pub session_lifetime: Duration,
    /// On SIGTERM, how long a message being received may take to finish (then 421, not acknowledged).
    #[arg(long, default_value = "15s", value_parser = super::parse_duration)]
    pub shutdown_grace: Duration,
    /// Concurrent sessions per listener; more are answered 421 4.3.2.
    #[arg(long, default_value_t = SubmissionOptions::default().max_sessions)]
    pub max_sessions_per_listener: usize,
}

pub async fn run(config_path: Option<PathBuf>, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let context = Context::load_as(config_path, "relay").await?;
    let store = context.store.clone();
    let broker = context.broker.clone();
    let wake = Arc::new(Notify::new());
    // Webhook secrets are read before anything listens, so that a missing
    // one stops the start with its name.
    let endpoints = crate::webhooks::Endpoint::all(&context.config)?;
    let engine_config = EngineConfig {
        workers: args.workers.max(1),
        lease: args.lease,
        schedule: crate::delivery::schedule::RetrySchedule {
            max_age: args.max_age,
            ..Default::default()
        },
        maintenance_interval: if store.announces_work() {
            ANNOUNCED_IDLE_POLL
        } else {
            IDLE_POLL
        },
        dsn: !args.no_dsn,
        ..EngineConfig::default()
    };

    let defaults = SubmissionOptions::default();
    let options = SubmissionOptions {
        max_sessions: args.max_sessions_per_listener.max(1),
        max_sessions_per_address: args.max_sessions_per_address,
        limits: SessionLimits {
            lifetime: args.session_lifetime,
            ..defaults.limits.clone()
        },
        shutdown: ShutdownLimits::with_grace(args.shutdown_grace),
        ..defaults
    };
    let stop_bound = options.shutdown.deadline;
    let policy = SubmissionPolicy::new(&context.config, store.clone(), wake.clone(), options);
    // `oxirelay sendmail` drops (`[sendmail]`), checked and queued as a
    // submission is; an unsafe spool stops the start, before any listener.
    let pickup = match &context.config.sendmail {
        Some(sendmail) => {
            let rules = crate::submit::AcceptRules::from_config(
                &context.config,
                policy.options().max_message_size,
            );
            let acceptance = crate::submit::Acceptance::new(rules, store.clone(), wake.clone());
            Some(crate::maildrop::pickup::Pickup::new(
                sendmail,
                &context.config.path,
                acceptance,
            )?)
        }
        None => None,
    };
    // An unreadable `[http] metrics_token` stops the start, before any
    // listener, rather than leaving /metrics refusing every scrape.
    crate::metrics::check_token(&context.config)?;
    // An unreadable `[console] admin_password` stops the start the same way.
    crate::console::check_config(&context.config)?;
    let (listeners_stop, listeners_signal) = shutdown_channel();
    let listeners = Listeners::start(&context.config, &policy, listeners_signal).await?;
    for addr in listeners.addrs() {
        println!("oxirelay: listening on {addr}");
    }
    // The HTTP API, metrics, health checks and console (`[http]`).
    let http = match &context.config.http {
        Some(http_config) => {
            let state = crate::http::HttpState {
                store: store.clone(),
                broker: broker.clone(),
                config: Arc::new(context.config.clone()),
                wake: wake.clone(),
            };
            let server =
                crate::http::RunningHttpServer::start(http_config, crate::http::router(state))
                    .await?;
            println!("oxirelay: HTTP on {}", server.base_url());
            Some(server)
        }
        None => None,
    };
    if listeners.addrs().is_empty() {
        println!(
            "oxirelay: no [[listener]] configured; delivering what `oxirelay sendmail` queues"
        );
    }

    let (stop, stop_signal) = watch::channel(false);
    // Webhooks (`[[webhook]]`) and notifications (`[notify]`); the
    // notifier wakes the dispatcher when it records an event.
    let events_recorded = Arc::new(Notify::new());
    let webhooks = if endpoints.is_empty() {
        None
    } else {
        let dispatcher =
            crate::webhooks::Dispatcher::new(store.clone(), endpoints, events_recorded.clone());
        dispatcher.open().await;
        for endpoint in dispatcher.endpoints() {
            println!(
                "oxirelay: webhook {} to {}",
                endpoint.name,
                endpoint.origin()
            );
        }
        Some(tokio::spawn(dispatcher.run(stop_signal.clone())))
    };
    let notifier = (context.config.notify.is_some() || webhooks.is_some()).then(|| {
        let notifier = crate::notify::Notifier::new(
            store.clone(),
            broker.clone(),
            Arc::new(context.config.clone()),
            events_recorded.clone(),
            wake.clone(),
        );
        tokio::spawn(notifier.run(stop_signal.clone()))
    });
    let token_counter = tokio::spawn(count_tokens(broker.subscribe(), stop_signal.clone()));
    let supervisor = tokio::spawn(supervise_delivery(
        context.store.clone(),
        broker.clone(),
        engine_config,
        wake.clone(),
        stop_signal.clone(),
    ));
    let credential_watch = tokio::spawn(watch_credentials(broker.clone(), stop_signal.clone()));
    let pickup = pickup.map(|pickup| {
        println!(
            "oxirelay: picking up `oxirelay sendmail` drops from {}",
            pickup.maildrop().display()
        );
        tokio::spawn(pickup.run(stop_signal.clone()))
    });
    let validation = tokio::spawn(validate_regularly(
        broker.clone(),
        args.validate_every,
        stop_signal.clone(),
    ));
    // Retention in its own task, in batches that queue for the writer like
    // any other write: acceptance never waits for more than one batch.
    let retention = tokio::spawn(crate::store::retention::run(
        store.clone(),
        crate::store::retention::RetentionPolicy::new(
            context.config.store.keep_delivered.duration(),
            context.config.store.keep_events.duration(),
        ),
        args.retention_every,
        stop_signal.clone(),
        {
            let broker = broker.clone();
            move |detail: String| {
                let broker = broker.clone();
                async move { broker.audit("store.retention", None, &detail).await }
            }
        },
    ));
    println!("oxirelay: delivering with {} workers", args.workers.max(1));

    wait_for_termination().await?;
    eprintln!(
        "oxirelay: stopping: no new connections; messages being received get {:?}, sessions end within {stop_bound:?}; finishing deliveries in progress",
        args.shutdown_grace
    );
    // Both sides stop at once, so the whole stop takes the longer of the
    // two bounds (sessions: the shutdown deadline; deliveries: the engine's
    // grace), not their sum. Messages committed during the sessions' grace
    // stay queued for the next start.
    listeners_stop.trigger();
    let _ = stop.send(true);
    if let Some(http) = http {
        http.shutdown(HTTP_SHUTDOWN_GRACE).await;
    }
    if let Err(e) = listeners.wait().await {
        tracing::warn!(error = %e, "a listener ended with an error");
    }
    let _ = validation.await;
    let _ = retention.await;
    if let Some(webhooks) = webhooks {
        let _ = webhooks.await;
    }
    if let Some(notifier) = notifier {
        let _ = notifier.await;
    }
    let _ = credential_watch.await;
    if let Some(pickup) = pickup {
        let _ = pickup.await;
    }
    let tokens_obtained = token_counter.await.unwrap_or(0);
    if let Ok(summary) = supervisor.await {
        let per_auth = summary.upstream_messages as f64 / summary.upstream_sessions.max(1) as f64;
        println!(
            "oxirelay: stopped: {} recipients delivered; upstream: {} authenticated sessions, {} messages ({per_auth:.1} per AUTH); {tokens_obtained} access tokens obtained; {} deliveries cut off (their messages return when the lease ends)",
            summary.recipients_delivered,
            summary.upstream_sessions,
            summary.upstream_messages,
            summary.workers_cut_off
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_termination() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = terminate.recv() => {}
            result = tokio::signal::ctrl_c() => result?,
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    Ok(())
}

/// Runs the engine while no lockdown is in force; returns the last
/// engine's shutdown report.
/// What the delivery side did during one `serve` run.
#[derive(Default)]
struct DeliverySummary {
    recipients_delivered: u64,
    workers_cut_off: usize,
    upstream_sessions: u64,
    upstream_messages: u64,
}

impl DeliverySummary {
    async fn add(&mut self, engine: RunningEngine) {
        let pool = engine.pool_stats();
        let report = engine.shutdown().await;
        self.recipients_delivered += report.stats.recipients_delivered;
        self.workers_cut_off += report.workers_cut_off;
        self.upstream_sessions += pool.authentications;
        self.upstream_messages += pool.messages_sent;
    }
}

async fn supervise_delivery(
    store: Arc<dyn crate::store::Store>,
    broker: Arc<crate::oauth::broker::Broker>,
    config: EngineConfig,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) -> DeliverySummary {
    let mut engine: Option<RunningEngine> = None;
    let mut summary = DeliverySummary::default();
    let mut paused = false;
    loop {
        let locked = match store.lockdown().await {
            Ok(lockdown) => lockdown,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the lockdown flag; keeping the current state");
                None
            }
        };
        match (&locked, engine.is_some()) {
            (Some(lockdown), true) => {
                println!(
                    "oxirelay: LOCKDOWN ({}): delivery paused, queued mail kept",
                    lockdown.reason
                );
                if let Some(running) = engine.take() {
                    summary.add(running).await;
                }
                paused = true;
            }
            (None, false) => {
                let running = Engine::start(
                    store.clone(),
                    broker.clone(),
                    config.clone(),
                    wake.clone(),
                    stop.clone(),
                );
                // The name its leases carry (`queue list`, LEASED BY): with
                // several relays on one store, which one holds a message.
                println!("oxirelay: instance {}", running.instance());
                engine = Some(running);
                if paused {
                    println!("oxirelay: lockdown lifted: delivery resumes");
                }
            }
            _ => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(LOCKDOWN_POLL) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    if let Some(running) = engine.take() {
        summary.add(running).await;
    }
    summary
}

/// Counts the access tokens obtained during the run (for the summary: they
/// should not grow with the number of messages).
async fn count_tokens(
    mut events: tokio::sync::broadcast::Receiver<crate::oauth::broker::BrokerEvent>,
    mut stop: watch::Receiver<bool>,
) -> u64 {
    use crate::oauth::broker::BrokerEventKind;
    let mut count = 0;
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(event) if event.kind == BrokerEventKind::TokenIssued => count += 1,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return count,
            },
            _ = stop.wait_for(|s| *s) => return count,
        }
    }
}

/// Revocations, lockdowns and new consents made by other processes reach
/// this one: the broker drops the cached token, the engine the sessions.
async fn watch_credentials(broker: Arc<crate::oauth::broker::Broker>, stop: watch::Receiver<bool>) {
    broker
        .watch_credentials(CREDENTIAL_POLL, stop, |change| {
            println!(
                "oxirelay: account {}: credentials changed ({}{}); cached token dropped, its sessions closed",
                change.account,
                change.state,
                change
                    .reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            )
        })
        .await;
}

async fn validate_regularly(
    broker: Arc<crate::oauth::broker::Broker>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let names: Vec<String> = broker.accounts().map(|a| a.name.clone()).collect();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        for name in &names {
            let report = crate::oauth::health::check_account(&broker, name).await;
            if !report.healthy {
                println!(
                    "oxirelay: account {name} failed validation: {}",
                    report.detail
                );
            }
        }
    }
}
