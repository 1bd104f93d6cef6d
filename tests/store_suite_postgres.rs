//! What only the PostgreSQL store has to show: several instances (stores
//! with pools of their own) claiming from one queue at once, their
//! wake-ups by NOTIFY, migrations when instances start together, TLS to
//! the database, and the claim's query plan. Skipped, saying so, when
//! `OXIRELAY_TEST_POSTGRES_URL` is unset.

mod store_suite_common;

use oxirelay::instance::Holder;
use oxirelay::store::{AttemptOutcome, MessageId, RecipientState, TokenRecord};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use store_suite_common::{Backend, SchemaGuard, fresh_schema, message, now, with_search_path};

/// Five instances, four claimers each, one queue of 400 messages: every
/// message is claimed exactly once and delivered, although every claimer
/// races for the same due rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_claimers_on_several_instances_never_get_the_same_message() {
    let Some(backend) = Backend::postgres().await else {
        return;
    };
    let mut queued = HashSet::new();
    for n in 0..400 {
        let m = message("office", &[&format!("r{n}@x")]);
        queued.insert(backend.store.enqueue(m).await.expect("enqueue"));
    }
    let mut instances = Vec::new();
    for i in 0..5 {
        let store = backend.reopen().await;
        // A claim is kept by its instance's heartbeat (an owner naming an
        // instance with none is free for others at once, as on SQLite).
        let holder = Holder {
            id: format!("instance{i}"),
            pid: 1,
            locality: String::new(),
        };
        store
            .heartbeat(&holder, now(), now() + 600)
            .await
            .expect("heartbeat");
        instances.push(store);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut claimers = tokio::task::JoinSet::new();
    for (i, store) in instances.iter().enumerate() {
        for w in 0..4 {
            let store = store.clone();
            let owner = format!("instance{i}/w{w}");
            claimers.spawn(async move {
                let mut mine = Vec::new();
                // Bounded: 400 messages, at least one per round that finds any.
                for _ in 0..1000 {
                    assert!(Instant::now() < deadline, "claiming took too long");
                    let now = now();
                    let claimed = store.claim(&owner, now, now + 300, 7).await.expect("claim");
                    if claimed.is_empty() {
                        break;
                    }
                    for c in claimed {
                        let outcome = AttemptOutcome {
                            recipients: vec![(0, RecipientState::Delivered, None)],
                            next_attempt_at: None,
                            error: None,
                        };
                        store
                            .complete_attempt(&c.message.id, &c.lease, &outcome)
                            .await
                            .expect("our lease holds");
                        mine.push(c.message.id);
                    }
                }
                mine
            });
        }
    }
    let mut times: HashMap<MessageId, u32> = HashMap::new();
    let mut busy = 0;
    while let Some(result) = claimers.join_next().await {
        let mine = result.expect("claimer");
        busy += usize::from(!mine.is_empty());
        for id in mine {
            *times.entry(id).or_default() += 1;
        }
    }
    let twice: Vec<_> = times.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "claimed more than once: {twice:?}");
    assert_eq!(
        times.keys().cloned().collect::<HashSet<_>>(),
        queued,
        "every message claimed"
    );
    assert!(busy > 1, "the work was shared ({busy} claimers got some)");
    let delivered = backend
        .store
        .count_messages(&oxirelay::store::QueueFilter {
            state: Some(oxirelay::store::MessageState::Delivered),
            ..Default::default()
        })
        .await
        .expect("count");
    assert_eq!(delivered, 400);
}

/// An idle instance waits for work with a long timeout; mail queued by
/// another instance wakes it within seconds, not at the timeout.
#[tokio::test]
async fn mail_queued_by_one_instance_wakes_another_at_once() {
    let Some(backend) = Backend::postgres().await else {
        return;
    };
    let idle = backend.reopen().await;
    let started = Instant::now();
    let waiting = tokio::spawn(async move {
        idle.wait_for_work(Duration::from_secs(60)).await;
        started.elapsed()
    });
    // The waiter is listening once the store is open; queue from the other.
    backend
        .store
        .enqueue(message("office", &["a@x"]))
        .await
        .expect("enqueue");
    let waited = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("woken well before its 60 s timeout")
        .expect("task");
    assert!(waited < Duration::from_secs(30), "{waited:?}");
}

/// With nothing queued, the wait lasts its timeout: wake-ups come from
/// work, not from a loop.
#[tokio::test]
async fn without_work_the_wait_lasts_its_timeout() {
    let Some(backend) = Backend::postgres().await else {
        return;
    };
    let started = Instant::now();
    backend
        .store
        .wait_for_work(Duration::from_millis(700))
        .await;
    assert!(started.elapsed() >= Duration::from_millis(650));
}

/// A revocation (the credential epoch moves) on one instance wakes the
/// credential watch of another at once; a plain refresh does not.
#[tokio::test]
async fn a_credential_change_on_one_instance_wakes_another() {
    let Some(backend) = Backend::postgres().await else {
        return;
    };
    let mut record = TokenRecord::new("office");
    record.generation = 1;
    assert!(
        backend
            .store
            .save_token_record(&record)
            .await
            .expect("save")
    );
    let watcher = backend.reopen().await;

    // A refresh: same epoch, no wake-up within a second.
    record.generation = 2;
    record.access_expires_at = Some(now() + 3600);
    assert!(
        backend
            .store
            .save_token_record(&record)
            .await
            .expect("save")
    );
    let started = Instant::now();
    watcher
        .wait_for_credential_change(Duration::from_secs(1))
        .await;
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "a refresh is not a credential change"
    );

    let started = Instant::now();
    let waiting = {
        let watcher = watcher.clone();
        tokio::spawn(async move {
            watcher
                .wait_for_credential_change(Duration::from_secs(60))
                .await;
            started.elapsed()
        })
    };
    record.generation = 3;
    record.credential_epoch = 1;
    assert!(
        backend
            .store
            .save_token_record(&record)
            .await
            .expect("save")
    );
    let waited = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("woken well before its 60 s timeout")
        .expect("task");
    assert!(waited < Duration::from_secs(30), "{waited:?}");
    assert_eq!(
        watcher.credential_epochs().await.expect("epochs")["office"],
        1
    );
}

/// Instances starting together on an empty schema: one applies the schema,
/// the others wait for it and find it done; `store::migrate` then reports
/// nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_starting_together_apply_the_schema_once() {
    let Some((base, schema)) = fresh_schema().await else {
        return;
    };
    let _guard = SchemaGuard(base.clone(), schema.clone());
    let url = with_search_path(&base, &schema);
    let mut starting = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let url = url.clone();
        starting.spawn(async move { oxirelay::store::migrate(&url).await });
    }
    let mut applied = Vec::new();
    while let Some(result) = starting.join_next().await {
        let report = result.expect("task").expect("migrate");
        assert_eq!(report.backend, "postgres");
        assert_eq!(report.version, 4);
        applied.extend(report.applied);
    }
    let mut versions: Vec<i64> = applied.iter().map(|m| m.version).collect();
    versions.sort();
    assert_eq!(versions, [1, 2, 3, 4], "each applied once: {applied:?}");
    let again = oxirelay::store::migrate(&url).await.expect("migrate");
    assert!(again.applied.is_empty(), "{again:?}");
    // The stores of this test hold no connection any more; the guard
    // drops the schema.
}

/// `sslmode=require` in the URL: every connection of the store is
/// encrypted (the server's own view, pg_stat_ssl).
#[tokio::test]
async fn sslmode_require_encrypts_the_connections() {
    let Some((base, schema)) = fresh_schema().await else {
        return;
    };
    let _guard = SchemaGuard(base.clone(), schema.clone());
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&base)
        .await
        .expect("connect");
    let ssl_on: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&mut admin)
        .await
        .expect("show ssl");
    if ssl_on != "on" {
        println!("SKIPPED: the test server has ssl = off; TLS to the database is not checked");
        return;
    }
    let url = format!("{}&sslmode=require", with_search_path(&base, &schema));
    let store = oxirelay::store::open(&url).await.expect("open over TLS");
    store
        .enqueue(message("office", &["a@x"]))
        .await
        .expect("enqueue");
    let sessions: Vec<bool> = sqlx::query_scalar(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a ON a.pid = s.pid WHERE a.application_name = $1",
    )
    .bind(&schema)
    .fetch_all(&mut admin)
    .await
    .expect("sessions");
    assert!(!sessions.is_empty(), "the store's sessions are there");
    assert!(sessions.iter().all(|ssl| *ssl), "{sessions:?}");
    drop(store);
}

/// `sslmode=verify-full` against a server whose certificate no trusted CA
/// signed: refused, with an error that says where to look, and nothing
/// is sent in the clear instead.
#[tokio::test]
async fn verify_full_refuses_a_certificate_it_cannot_verify() {
    let Some(base) = store_suite_common::postgres_url() else {
        return;
    };
    let separator = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{separator}sslmode=verify-full&pool_size=2");
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&base)
        .await
        .expect("connect");
    let ssl_on: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&mut admin)
        .await
        .expect("show ssl");
    if ssl_on != "on" {
        println!("SKIPPED: the test server has ssl = off; certificate checks are not exercised");
        return;
    }
    let error = match oxirelay::store::open(&url).await {
        Ok(_) => panic!("a certificate no trusted CA signed was accepted"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("sslrootcert") || error.contains("certificate"),
        "{error}"
    );
}

/// Nothing listening at the URL: a clear error that names the URL (without
/// its password) and says what to check.
#[tokio::test]
async fn an_unreachable_database_is_a_clear_error() {
    let url = "postgres://relay:hunter2@127.0.0.1:9/mail?pool_size=2";
    let error = match tokio::time::timeout(Duration::from_secs(60), oxirelay::store::open(url))
        .await
        .expect("gives up within a minute")
    {
        Ok(_) => panic!("opened a store where nothing listens"),
        Err(error) => error.to_string(),
    };
    assert!(!error.contains("hunter2"), "{error}");
    assert!(error.contains("127.0.0.1:9"), "{error}");
    assert!(error.contains("reachable"), "{error}");
}

/// `sslmode=verify-full` with `sslrootcert` naming the CA of the server's
/// certificate (here the server's self-signed certificate itself, when the
/// test can read it and the server is on this machine): accepted, and the
/// sessions are encrypted.
#[tokio::test]
async fn verify_full_with_the_servers_ca_connects_encrypted() {
    let Some((base, schema)) = fresh_schema().await else {
        return;
    };
    let _guard = SchemaGuard(base.clone(), schema.clone());
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&base)
        .await
        .expect("connect");
    let (ssl, cert_file): (String, String) =
        sqlx::query_as("SELECT current_setting('ssl'), current_setting('ssl_cert_file')")
            .fetch_one(&mut admin)
            .await
            .expect("settings");
    let mut url = url::Url::parse(&with_search_path(&base, &schema)).expect("url");
    let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost"));
    if ssl != "on" || !loopback || std::fs::metadata(&cert_file).is_err() {
        println!(
            "SKIPPED: needs a TLS server on this machine whose certificate ({cert_file}) the test can read"
        );
        return;
    }
    // The certificate names `localhost` (a Debian snakeoil certificate does).
    url.set_host(Some("localhost")).expect("host");
    let url = format!("{url}&sslmode=verify-full&sslrootcert={cert_file}");
    let store = match oxirelay::store::open(&url).await {
        Ok(store) => store,
        Err(error) if error.to_string().contains("not valid for name") => {
            println!("SKIPPED: the server's certificate does not name localhost: {error}");
            return;
        }
        Err(error) => panic!("verify-full with the server's CA: {error}"),
    };
    store
        .enqueue(message("office", &["a@x"]))
        .await
        .expect("enqueue");
    let sessions: Vec<bool> = sqlx::query_scalar(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a ON a.pid = s.pid WHERE a.application_name = $1",
    )
    .bind(&schema)
    .fetch_all(&mut admin)
    .await
    .expect("sessions");
    assert!(
        !sessions.is_empty() && sessions.iter().all(|ssl| *ssl),
        "{sessions:?}"
    );
}

/// `oxirelay migrate --url`, as an operator runs it before starting the
/// instances: applies the schema, says so, and says nothing is left the
/// second time; `--json` for scripts.
#[tokio::test]
async fn the_migrate_command_applies_the_schema_and_reports_it() {
    let Some((base, schema)) = fresh_schema().await else {
        return;
    };
    let _guard = SchemaGuard(base.clone(), schema.clone());
    let url = with_search_path(&base, &schema);
    let run = |json: bool| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_oxirelay"));
        command.args(["migrate", "--url", &url]);
        if json {
            command.arg("--json");
        }
        let output = command.output().expect("run oxirelay migrate");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8")
    };
    let first = run(false);
    assert!(
        first.contains("(postgres): applied migrations 1, 2, 3, 4; now at schema version 4"),
        "{first}"
    );
    let again: serde_json::Value = serde_json::from_str(&run(true)).expect("json");
    assert_eq!(
        again,
        serde_json::json!({"backend": "postgres", "applied": [], "version": 4})
    );
}
