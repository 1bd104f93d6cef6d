//! The store suite: one set of behaviours of the `Store` trait, run against
//! every backend (issue 13: "the whole existing store test suite runs
//! against both backends"). Each case is written once, against
//! `Arc<dyn Store>` from `store::open`, and `suite!` makes a test of it for
//! SQLite (a temporary file) and one for PostgreSQL (a schema of its own in
//! the database `OXIRELAY_TEST_POSTGRES_URL` names; skipped, saying so,
//! when it is unset). Checks that only make sense on one engine (SQLite's
//! query plans, WAL and file modes) stay in the backend's own unit tests.

mod store_suite_common;

use store_suite_common::Backend;

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let backend = super::Backend::sqlite().await;
                    super::cases::$case(&backend).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    let Some(backend) = super::Backend::postgres().await else {
                        return;
                    };
                    super::cases::$case(&backend).await;
                }
            )*
        }
    };
}

suite!(
    token_generation_guards_against_stale_writes,
    credential_epochs_are_read_per_account,
    refresh_lease_is_exclusive_until_it_expires_or_its_holder_is_gone,
    a_claim_holds_while_its_instance_beats_and_returns_when_it_stops,
    lifecycle_with_per_recipient_outcomes,
    expired_lease_returns_the_message_and_the_old_owner_loses_it,
    an_outcome_and_its_events_are_committed_together,
    a_lost_lease_writes_neither_the_outcome_nor_its_events,
    concurrent_enqueues_are_all_committed,
    a_lapsed_lease_comes_before_due_messages,
    expire_retry_and_delete,
    release_gives_a_message_back_untried,
    enqueue_as_keeps_the_chosen_id_and_refuses_it_twice,
    events_newest_in_order,
    pages_cover_every_message_once_while_mail_arrives,
    listing_filters_and_counts,
    hold_release_retry_delete_in_batches_and_dry_run,
    a_finished_message_whose_body_retention_removed_is_not_retried,
    retention_removes_bodies_then_messages_then_events_and_never_open_mail,
    users_are_added_once_and_removed,
    sealed_secrets_are_replaced_and_named,
    audit_anchor_moves_only_from_what_was_expected,
    the_anchor_of_before_is_taken_over_by_the_first_log,
    lockdown_on_and_off,
    a_new_webhook_endpoint_starts_at_the_end_of_the_log_and_one_holder_moves_it,
    a_notification_condition_is_due_once_per_interval,
    a_message_summary_has_its_recipients_and_no_body,
    an_idempotency_claim_is_pending_then_taken_over_answered_and_expires,
    api_keys_are_named_once_while_active_and_revocation_frees_the_name,
    tagged_messages_are_listed_newest_first_by_tag_submitter_and_state,
    two_instances_share_one_accounts_quota_and_back_off,
    a_listing_names_the_instance_that_holds_a_lease,
    two_instances_racing_on_one_idempotency_key_start_it_once,
);

mod cases {
    use super::Backend;
    use super::store_suite_common::{message, now};
    use oxirelay::instance::Holder;
    use oxirelay::secret::SealedValue;
    use oxirelay::store::{
        AccountState, AttemptOutcome, AuditAnchor, Event, LeaseGrant, ListCursor, MessageId,
        MessageState, QueueAction, QueueFilter, QueueSelection, RecipientState, RetentionCutoffs,
        StoreError, TokenRecord, WebhookHold,
    };
    use std::collections::HashSet;

    fn holder(id: &str) -> Holder {
        Holder {
            id: id.into(),
            pid: 4242,
            locality: "host boot:b pidns:pid:[1]".into(),
        }
    }

    fn delivered(indexes: &[usize]) -> AttemptOutcome {
        AttemptOutcome {
            recipients: indexes
                .iter()
                .map(|i| (*i, RecipientState::Delivered, Some("250 ok".into())))
                .collect(),
            next_attempt_at: None,
            error: None,
        }
    }

    fn bounced(indexes: &[usize]) -> AttemptOutcome {
        AttemptOutcome {
            recipients: indexes
                .iter()
                .map(|i| (*i, RecipientState::Bounced, Some("550 no".into())))
                .collect(),
            next_attempt_at: None,
            error: Some("550 no".into()),
        }
    }

    fn delivered_event(id: &MessageId) -> Event {
        Event {
            at: now(),
            kind: "message.delivered".into(),
            account: Some("office".into()),
            message_id: Some(id.clone()),
            detail: format!("message {id} attempt 1: 1 of 1 recipients"),
        }
    }

    pub async fn token_generation_guards_against_stale_writes(backend: &Backend) {
        let store = &backend.store;
        let mut record = TokenRecord::new("office");
        record.generation = 1;
        record.refresh_token = Some(SealedValue::from_stored(vec![1, 2, 3]));
        assert!(store.save_token_record(&record).await.expect("insert"));
        assert!(
            !store
                .save_token_record(&record)
                .await
                .expect("second insert loses")
        );
        let mut newer = record.clone();
        newer.generation = 2;
        newer.state = AccountState::Valid;
        newer.access_token = Some(SealedValue::from_stored(vec![9; 40]));
        newer.access_expires_at = Some(1_900_000_000);
        assert!(store.save_token_record(&newer).await.expect("update"));
        // A writer that read generation 1 and now tries to write 2 loses.
        assert!(!store.save_token_record(&newer).await.expect("stale update"));
        let stored = store
            .token_record("office")
            .await
            .expect("read")
            .expect("row");
        assert_eq!(stored, newer, "every field comes back as written");
        assert_eq!(store.token_records().await.expect("all"), vec![newer]);
        assert!(store.token_record("other").await.expect("read").is_none());
        // Reopening applies no migration twice and keeps the row.
        let again = backend.reopen().await;
        assert_eq!(
            again
                .token_record("office")
                .await
                .expect("read")
                .expect("row")
                .generation,
            2
        );
    }

    pub async fn credential_epochs_are_read_per_account(backend: &Backend) {
        let store = &backend.store;
        let mut record = TokenRecord::new("office");
        record.generation = 1;
        record.credential_epoch = 3;
        assert!(store.save_token_record(&record).await.expect("insert"));
        let mut other = TokenRecord::new("lab");
        other.generation = 1;
        assert!(store.save_token_record(&other).await.expect("insert"));
        let epochs = store.credential_epochs().await.expect("store");
        assert_eq!(epochs.get("office"), Some(&3));
        assert_eq!(epochs.get("lab"), Some(&0));
        assert_eq!(epochs.len(), 2);
    }

    pub async fn refresh_lease_is_exclusive_until_it_expires_or_its_holder_is_gone(
        backend: &Backend,
    ) {
        let store = &backend.store;
        let (a, b) = (holder("a"), holder("b"));
        let granted = |grant: LeaseGrant| grant == LeaseGrant::Granted;
        assert!(granted(
            store
                .acquire_refresh_lease("office", &a, 100, 160, None)
                .await
                .expect("store")
        ));
        match store
            .acquire_refresh_lease("office", &b, 110, 170, None)
            .await
            .expect("store")
        {
            LeaseGrant::HeldBy { holder, expires_at } => {
                assert_eq!(holder, a, "names its holder");
                assert_eq!(expires_at, 160);
            }
            LeaseGrant::Granted => panic!("a held lease was granted to another"),
        }
        assert!(
            granted(
                store
                    .acquire_refresh_lease("other", &b, 110, 170, None)
                    .await
                    .expect("store")
            ),
            "one lease per account"
        );
        assert!(
            granted(
                store
                    .acquire_refresh_lease("office", &a, 120, 180, None)
                    .await
                    .expect("store")
            ),
            "the holder renews"
        );
        assert!(
            granted(
                store
                    .acquire_refresh_lease("office", &b, 130, 190, Some("a"))
                    .await
                    .expect("store")
            ),
            "taken over from a holder found gone"
        );
        assert!(
            granted(
                store
                    .acquire_refresh_lease("office", &a, 191, 250, None)
                    .await
                    .expect("store")
            ),
            "free once expired"
        );
        store
            .release_refresh_lease("office", "b")
            .await
            .expect("store");
        assert!(
            !granted(
                store
                    .acquire_refresh_lease("office", &b, 200, 260, None)
                    .await
                    .expect("store")
            ),
            "only the holder gives it back"
        );
        store
            .release_refresh_lease("office", "a")
            .await
            .expect("store");
        assert!(granted(
            store
                .acquire_refresh_lease("office", &b, 200, 260, None)
                .await
                .expect("store")
        ));
    }

    pub async fn a_claim_holds_while_its_instance_beats_and_returns_when_it_stops(
        backend: &Backend,
    ) {
        let store = &backend.store;
        let id = store
            .enqueue(message("office", &["a@x"]))
            .await
            .expect("enqueue");
        let now = now();
        let alive = holder("alive");
        store
            .heartbeat(&alive, now, now + 30)
            .await
            .expect("register");
        let claimed = store
            .claim("alive/w0", now, now + 300, 10)
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 1);
        assert!(
            store
                .claim("other/w0", now + 10, now + 310, 10)
                .await
                .expect("claim")
                .is_empty(),
            "a live instance keeps its claim"
        );
        assert_eq!(
            store.next_due().await.expect("due"),
            Some(now + 31),
            "due when the heartbeat ends"
        );
        // No heartbeat since: 31 s later the claim is free, long before
        // the 300-second lease ends.
        let taken = store
            .claim("other/w0", now + 31, now + 331, 10)
            .await
            .expect("claim");
        assert_eq!(taken.len(), 1, "a silent death frees the claim");
        let lost = store.release(&id, &claimed[0].lease, now + 31).await;
        assert!(matches!(lost, Err(StoreError::LeaseLost(_))), "{lost:?}");

        // release_instance gives back what an instance holds at once.
        store
            .heartbeat(&holder("other"), now, now + 60)
            .await
            .expect("register");
        assert_eq!(
            store
                .release_instance("other", now + 32)
                .await
                .expect("store"),
            1
        );
        let (message, _) = store.message(&id).await.expect("read").expect("exists");
        assert_eq!(message.state, MessageState::Queued);
        assert_eq!(message.next_attempt_at, now + 32);
        let instances = store.instances().await.expect("store");
        assert_eq!(
            instances
                .iter()
                .map(|i| i.holder.id.as_str())
                .collect::<Vec<_>>(),
            ["alive"],
            "released instances are forgotten"
        );
        assert_eq!(instances[0].holder, alive);
        assert_eq!(
            (instances[0].started_at, instances[0].heartbeat_until),
            (now, now + 30)
        );
        // A heartbeat renews, keeping the start.
        store
            .heartbeat(&alive, now + 5, now + 90)
            .await
            .expect("renew");
        let renewed = store.instances().await.expect("store");
        assert_eq!(
            (renewed[0].started_at, renewed[0].heartbeat_until),
            (now, now + 90)
        );
    }

    pub async fn lifecycle_with_per_recipient_outcomes(backend: &Backend) {
        let store = &backend.store;
        let id = store
            .enqueue(message("office", &["a@x", "b@x", "c@x"]))
            .await
            .expect("enqueue");
        let claimed = store.claim("w1", 100, 200, 10).await.expect("claim");
        assert!(claimed.is_empty(), "not due before its creation time");
        let now = now();
        let claimed = store.claim("w1", now, now + 60, 10).await.expect("claim");
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].message.id, id);
        assert_eq!(claimed[0].message.state, MessageState::InFlight);
        assert_eq!(claimed[0].body, b"Subject: t\r\n\r\nbody\r\n");
        let addresses: Vec<_> = claimed[0]
            .message
            .recipients
            .iter()
            .map(|r| r.address.as_str())
            .collect();
        assert_eq!(addresses, ["a@x", "b@x", "c@x"], "in order");
        assert!(
            store
                .claim("w2", now, now + 60, 10)
                .await
                .expect("claim")
                .is_empty(),
            "leased"
        );
        let outcome = AttemptOutcome {
            recipients: vec![
                (0, RecipientState::Delivered, Some("250 ok".into())),
                (1, RecipientState::Deferred, Some("451 later".into())),
                (2, RecipientState::Bounced, Some("550 no such user".into())),
            ],
            next_attempt_at: Some(now + 30),
            error: Some("451 later".into()),
        };
        let state = store
            .complete_attempt(&id, &claimed[0].lease, &outcome)
            .await
            .expect("record");
        assert_eq!(state, MessageState::Deferred);
        let (shown, _) = store.message(&id).await.expect("read").expect("exists");
        assert_eq!(shown.last_error.as_deref(), Some("451 later"));
        assert_eq!(
            shown.recipients[2].reply.as_deref(),
            Some("550 no such user")
        );
        assert!(
            store
                .claim("w1", now, now + 60, 10)
                .await
                .expect("claim")
                .is_empty(),
            "not due yet"
        );
        assert_eq!(store.next_due().await.expect("due"), Some(now + 30));
        let again = store
            .claim("w1", now + 30, now + 90, 10)
            .await
            .expect("claim");
        let states: Vec<_> = again[0]
            .message
            .recipients
            .iter()
            .map(|r| r.state)
            .collect();
        assert_eq!(
            states,
            [
                RecipientState::Delivered,
                RecipientState::Deferred,
                RecipientState::Bounced
            ]
        );
        assert_eq!(
            store
                .complete_attempt(&id, &again[0].lease, &delivered(&[1]))
                .await
                .expect("record"),
            MessageState::Delivered
        );
        let (shown, _) = store.message(&id).await.expect("read").expect("exists");
        assert_eq!((shown.attempts, shown.state), (2, MessageState::Delivered));
        assert_eq!(store.next_due().await.expect("due"), None, "nothing left");

        // No recipient delivered, all refused for good: bounced.
        let refused = store
            .enqueue(message("office", &["a@x", "b@x"]))
            .await
            .expect("enqueue");
        let claimed = store
            .claim("w1", now + 100, now + 160, 10)
            .await
            .expect("claim");
        assert_eq!(
            store
                .complete_attempt(&refused, &claimed[0].lease, &bounced(&[0, 1]))
                .await
                .expect("record"),
            MessageState::Bounced
        );
    }

    pub async fn expired_lease_returns_the_message_and_the_old_owner_loses_it(backend: &Backend) {
        let store = &backend.store;
        let id = store
            .enqueue(message("office", &["a@x"]))
            .await
            .expect("enqueue");
        let now = now();
        let first = store
            .claim("crashed", now, now + 5, 10)
            .await
            .expect("claim");
        assert_eq!(first.len(), 1);
        let second = store
            .claim("w2", now + 6, now + 60, 10)
            .await
            .expect("claim");
        assert_eq!(second.len(), 1, "lease expired, claimable again");
        let late = store
            .complete_attempt(&id, &first[0].lease, &delivered(&[0]))
            .await;
        assert!(matches!(late, Err(StoreError::LeaseLost(_))), "{late:?}");
        store
            .complete_attempt(&id, &second[0].lease, &delivered(&[0]))
            .await
            .expect("current lease");
    }

    pub async fn an_outcome_and_its_events_are_committed_together(backend: &Backend) {
        let store = &backend.store;
        let id = store
            .enqueue(message("office", &["a@x"]))
            .await
            .expect("enqueue");
        let now = now();
        let claimed = store.claim("w", now, now + 60, 10).await.expect("claim");
        let event = delivered_event(&id);
        let state = store
            .complete_attempt_with_events(
                &id,
                &claimed[0].lease,
                &delivered(&[0]),
                std::slice::from_ref(&event),
            )
            .await
            .expect("record");
        assert_eq!(state, MessageState::Delivered);
        assert_eq!(
            store.events(10).await.expect("events"),
            std::slice::from_ref(&event)
        );
        let (shown, _) = store.message(&id).await.expect("read").expect("exists");
        assert_eq!((shown.state, shown.attempts), (MessageState::Delivered, 1));
        // The message's history and the log a webhook reader follows.
        let other = store
            .enqueue(message("office", &["b@x"]))
            .await
            .expect("enqueue");
        store
            .record_event(&delivered_event(&other))
            .await
            .expect("event");
        store
            .record_event(&Event {
                at: now,
                kind: "account.validated".into(),
                account: Some("office".into()),
                message_id: None,
                detail: "ok".into(),
            })
            .await
            .expect("account event");
        let history = store.message_events(&id).await.expect("history");
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].event, event);
        let log = store.events_after(0, 10).await.expect("log");
        assert_eq!(log.len(), 3);
        assert!(log.windows(2).all(|w| w[0].id < w[1].id), "ids grow");
        assert_eq!(log[1].event.message_id, Some(other));
        assert_eq!(log[2].event.message_id, None);
        assert!(
            store
                .events_after(log[2].id, 10)
                .await
                .expect("log")
                .is_empty()
        );
        assert_eq!(
            store.events_after(log[0].id, 10).await.expect("log").len(),
            2
        );
        assert_eq!(store.events_after(0, 1).await.expect("log")[0], log[0]);
    }

    pub async fn a_lost_lease_writes_neither_the_outcome_nor_its_events(backend: &Backend) {
        let store = &backend.store;
        let id = store
            .enqueue(message("office", &["a@x"]))
            .await
            .expect("enqueue");
        let now = now();
        let first = store
            .claim("crashed", now, now + 5, 10)
            .await
            .expect("claim");
        let second = store
            .claim("w2", now + 6, now + 60, 10)
            .await
            .expect("claim");
        assert_eq!(second.len(), 1, "lease expired, claimable again");
        let late = store
            .complete_attempt_with_events(
                &id,
                &first[0].lease,
                &bounced(&[0]),
                &[delivered_event(&id)],
            )
            .await;
        assert!(matches!(late, Err(StoreError::LeaseLost(_))), "{late:?}");
        assert!(store.events(10).await.expect("events").is_empty());
        let (shown, _) = store.message(&id).await.expect("read").expect("exists");
        assert_eq!(
            shown.state,
            MessageState::InFlight,
            "still the second worker's"
        );
        assert_eq!(shown.recipients[0].state, RecipientState::Pending);
        assert_eq!(shown.attempts, 0);
    }

    pub async fn concurrent_enqueues_are_all_committed(backend: &Backend) {
        let store = backend.store.clone();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200 {
            let store = store.clone();
            tasks.spawn(async move {
                let mut m = message("office", &["a@x"]);
                m.body = format!("Subject: {i}\r\n\r\n").into_bytes();
                store.enqueue(m).await
            });
        }
        let mut ids = HashSet::new();
        while let Some(result) = tasks.join_next().await {
            ids.insert(result.expect("task").expect("enqueue"));
        }
        assert_eq!(ids.len(), 200);
        // A second store (another process, after a crash) sees them all.
        let reopened = backend.reopen().await;
        let listed = reopened.messages(None, 1000).await.expect("list");
        assert_eq!(listed.len(), 200);
        assert!(listed.iter().all(|m| ids.contains(&m.id)));
        assert!(listed.iter().all(|m| m.state == MessageState::Queued));
    }

    pub async fn a_lapsed_lease_comes_before_due_messages(backend: &Backend) {
        let store = &backend.store;
        let first = store
            .enqueue(message("office", &["a@x"]))
            .await
            .expect("enqueue");
        let now = now();
        assert_eq!(
            store
                .claim("crashed", now, now + 5, 1)
                .await
                .expect("claim")
                .len(),
            1
        );
        for _ in 0..20 {
            store
                .enqueue(message("office", &["b@x"]))
                .await
                .expect("enqueue");
        }
        let taken = store.claim("w", now + 6, now + 60, 1).await.expect("claim");
        assert_eq!(taken[0].message.id, first, "the lapsed lease first");
        assert_eq!(taken[0].body, b"Subject: t\r\n\r\nbody\r\n");
        let rest = store
            .claim("w", now + 6, now + 60, 100)
            .await
            .expect("claim");
        assert_eq!(rest.len(), 20, "the backlog, once each");
    }

    pub async fn expire_retry_and_delete(backend: &Backend) {
        let store = &backend.store;
        let id = store
            .enqueue(message("office", &["a@x"]))
            .await
            .expect("enqueue");
        let now = now();
        assert!(
            store.expire(now - 10).await.expect("expire").is_empty(),
            "younger than the cutoff"
        );
        let expired = store.expire(now + 1).await.expect("expire");
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].state, MessageState::Expired);
        assert_eq!(expired[0].recipients[0].state, RecipientState::Expired);
        assert!(
            store
                .claim("w", now + 10, now + 70, 10)
                .await
                .expect("claim")
                .is_empty()
        );
        assert!(store.retry_now(&id, now + 10).await.expect("retry"));
        let (shown, _) = store.message(&id).await.expect("read").expect("exists");
        assert_eq!(shown.state, MessageState::Deferred);
        assert_eq!(shown.recipients[0].state, RecipientState::Pending);
        assert_eq!(shown.created_at, now + 10, "a new lifetime");
        let claimed = store
            .claim("w", now + 10, now + 70, 10)
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 1);
        assert!(
            !store.retry_now(&id, now + 10).await.expect("retry"),
            "not a message in flight"
        );
        store
            .complete_attempt(&id, &claimed[0].lease, &delivered(&[0]))
            .await
            .expect("delivered");
        assert!(
            !store.retry_now(&id, now + 20).await.expect("retry"),
            "not a delivered one"
        );
        assert!(store.delete(&id).await.expect("delete"));
        assert!(!store.delete(&id).await.expect("delete twice"));
        assert!(store.message(&id).await.expect("read").is_none());
        assert!(
            !store
                .retry_now(&MessageId("0000000000000000".into()), now)
                .await
                .expect("retry")
        );
    }

    pub async fn release_gives_a_message_back_untried(backend: &Backend) {
        let store = &backend.store;
        let id = store
            .enqueue(message("office", &["a@x"]))
            .await
            .expect("enqueue");
        let now = now();
        let claimed = store.claim("w", now, now + 60, 10).await.expect("claim");
        store
            .release(&id, &claimed[0].lease, now + 40)
            .await
            .expect("release");
        let (shown, _) = store.message(&id).await.expect("read").expect("exists");
        assert_eq!(
            (shown.state, shown.attempts, shown.next_attempt_at),
            (MessageState::Queued, 0, now + 40)
        );
        let twice = store.release(&id, &claimed[0].lease, now + 40).await;
        assert!(matches!(twice, Err(StoreError::LeaseLost(_))), "{twice:?}");
        // Tried once, then given back: deferred, not queued.
        let claimed = store
            .claim("w", now + 40, now + 100, 10)
            .await
            .expect("claim");
        store
            .complete_attempt(
                &id,
                &claimed[0].lease,
                &AttemptOutcome {
                    recipients: vec![(0, RecipientState::Deferred, Some("451".into()))],
                    next_attempt_at: Some(now + 50),
                    error: Some("451".into()),
                },
            )
            .await
            .expect("deferred");
        let claimed = store
            .claim("w", now + 50, now + 110, 10)
            .await
            .expect("claim");
        store
            .release(&id, &claimed[0].lease, now + 55)
            .await
            .expect("release");
        let (shown, _) = store.message(&id).await.expect("read").expect("exists");
        assert_eq!((shown.state, shown.attempts), (MessageState::Deferred, 1));
    }

    pub async fn enqueue_as_keeps_the_chosen_id_and_refuses_it_twice(backend: &Backend) {
        let store = &backend.store;
        let id = MessageId::generate();
        store
            .enqueue_as(id.clone(), message("office", &["a@x", "b@x"]))
            .await
            .expect("enqueue_as");
        let (shown, body) = store.message(&id).await.expect("read").expect("exists");
        assert_eq!(shown.recipients.len(), 2);
        assert_eq!(shown.size, body.len() as i64);
        assert_eq!(shown.submitted_by, "test");
        assert!(
            store
                .enqueue_as(id.clone(), message("office", &["c@x"]))
                .await
                .is_err(),
            "an id is queued once"
        );
        let (shown, _) = store.message(&id).await.expect("read").expect("exists");
        assert_eq!(shown.recipients.len(), 2, "the first one is untouched");
        assert_eq!(store.messages(None, 10).await.expect("list").len(), 1);
    }

    pub async fn events_newest_in_order(backend: &Backend) {
        let store = &backend.store;
        for n in 0..5 {
            store
                .record_event(&Event {
                    at: 1000 + n,
                    kind: format!("k{n}"),
                    account: None,
                    message_id: None,
                    detail: String::new(),
                })
                .await
                .expect("event");
        }
        let kinds: Vec<_> = store
            .events(3)
            .await
            .expect("events")
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, ["k2", "k3", "k4"], "the newest three, oldest first");
    }

    pub async fn pages_cover_every_message_once_while_mail_arrives(backend: &Backend) {
        let store = &backend.store;
        let mut ids = HashSet::new();
        for n in 0..25 {
            let m = message("office", &[&format!("a{n}@x"), &format!("b{n}@x")]);
            ids.insert(store.enqueue(m).await.expect("enqueue"));
        }
        let filter = QueueFilter::default();
        let mut seen = Vec::new();
        let mut after: Option<ListCursor> = None;
        for _ in 0..100 {
            let messages = store
                .list_messages(&filter, after.as_ref(), 4)
                .await
                .expect("page");
            let Some(last) = messages.last() else { break };
            after = Some(ListCursor {
                created_at: last.created_at,
                id: last.id.clone(),
            });
            assert!(messages.iter().all(|m| m.recipients.len() == 2));
            assert!(
                messages
                    .windows(2)
                    .all(|w| (w[0].created_at, &w[0].id) > (w[1].created_at, &w[1].id)),
                "newest first"
            );
            seen.extend(messages.into_iter().map(|m| m.id));
            // New mail between pages (in the same second it may sort
            // behind the cursor, and be listed, but never twice).
            store
                .enqueue(message("office", &["late@x", "later@x"]))
                .await
                .expect("enqueue");
        }
        let unique: HashSet<_> = seen.iter().cloned().collect();
        assert_eq!(unique.len(), seen.len(), "no message twice");
        assert!(ids.is_subset(&unique), "every message present at the start");
        // `--after ID` starts behind that message.
        let first = store
            .list_messages(&filter, None, 3)
            .await
            .expect("first page");
        let cursor = store
            .list_cursor(&first[1].id)
            .await
            .expect("cursor")
            .expect("exists");
        let next = store
            .list_messages(&filter, Some(&cursor), 1)
            .await
            .expect("page");
        assert_eq!(next[0].id, first[2].id);
        assert!(
            store
                .list_cursor(&MessageId("0000000000000000".into()))
                .await
                .expect("cursor")
                .is_none()
        );
    }

    pub async fn listing_filters_and_counts(backend: &Backend) {
        let store = &backend.store;
        for _ in 0..3 {
            store
                .enqueue(message("office", &["a@x"]))
                .await
                .expect("enqueue");
        }
        let lab = store
            .enqueue(message("lab", &["a@x"]))
            .await
            .expect("enqueue");
        let now = now();
        let claimed = store.claim("w", now, now + 60, 1).await.expect("claim");
        let by =
            |state: Option<MessageState>, account: Option<&str>, before: Option<i64>| QueueFilter {
                state,
                account: account.map(str::to_string),
                created_before: before,
            };
        assert_eq!(
            store
                .count_messages(&by(None, None, None))
                .await
                .expect("count"),
            4
        );
        assert_eq!(
            store
                .count_messages(&by(None, Some("office"), None))
                .await
                .expect("count"),
            3
        );
        assert_eq!(
            store
                .count_messages(&by(Some(MessageState::InFlight), None, None))
                .await
                .expect("count"),
            1
        );
        assert_eq!(
            store
                .count_messages(&by(Some(MessageState::Queued), Some("lab"), None))
                .await
                .expect("count"),
            u64::from(claimed[0].message.id != lab)
        );
        assert_eq!(
            store
                .count_messages(&by(None, None, Some(now - 3600)))
                .await
                .expect("count"),
            0,
            "none older than an hour"
        );
        let in_flight = store
            .list_messages(&by(Some(MessageState::InFlight), None, None), None, 10)
            .await
            .expect("list");
        assert_eq!(in_flight.len(), 1);
        assert_eq!(in_flight[0].id, claimed[0].message.id);
        let queued = store
            .messages(Some(MessageState::Queued), 10)
            .await
            .expect("list");
        assert_eq!(queued.len(), 3);
        assert_eq!(store.messages(None, 2).await.expect("list").len(), 2);
    }

    pub async fn hold_release_retry_delete_in_batches_and_dry_run(backend: &Backend) {
        let store = &backend.store;
        for n in 0..7 {
            let m = message("office", &[&format!("a{n}@x"), &format!("b{n}@x")]);
            store.enqueue(m).await.expect("enqueue");
        }
        let other = store
            .enqueue(message("other", &["a@x", "b@x"]))
            .await
            .expect("enqueue");
        let office = QueueSelection::Matching(QueueFilter {
            account: Some("office".into()),
            ..Default::default()
        });
        let now = now();
        let run = |action, dry_run| {
            let office = &office;
            async move {
                let mut total = Vec::new();
                let mut after = None;
                for _ in 0..100 {
                    let outcome = store
                        .queue_batch(action, office, after.as_ref(), 3, now, dry_run)
                        .await
                        .expect("batch");
                    total.extend(outcome.affected);
                    match outcome.next {
                        Some(next) => after = Some(next),
                        None => return total,
                    }
                }
                panic!("did not end");
            }
        };
        assert_eq!(run(QueueAction::Hold, true).await.len(), 7);
        let held = QueueFilter {
            state: Some(MessageState::Held),
            ..Default::default()
        };
        assert_eq!(
            store.count_messages(&held).await.expect("count"),
            0,
            "a dry run changes nothing"
        );
        assert_eq!(run(QueueAction::Hold, false).await.len(), 7);
        assert_eq!(store.count_messages(&held).await.expect("count"), 7);
        assert!(
            store
                .claim("w", now + 5, now + 60, 100)
                .await
                .expect("claim")
                .iter()
                .all(|c| c.message.id == other),
            "held mail is never claimed"
        );
        assert!(
            store.expire(now + 10).await.expect("expire").is_empty(),
            "nor expired"
        );
        assert_eq!(
            store.next_due().await.expect("due"),
            Some(now + 60),
            "only the claimed message is due (when its lease ends)"
        );
        let claimed = store
            .claim("w", now + 61, now + 120, 100)
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 1);
        let in_flight = store
            .queue_batch(
                QueueAction::Delete,
                &QueueSelection::Ids(vec![other.clone()]),
                None,
                10,
                now,
                false,
            )
            .await
            .expect("delete in flight");
        assert!(
            in_flight.affected.is_empty(),
            "a message in flight is not touched"
        );
        assert_eq!(in_flight.skipped.len(), 1);
        store
            .complete_attempt(&other, &claimed[0].lease, &bounced(&[0, 1]))
            .await
            .expect("bounced");
        let flush = |state| {
            QueueSelection::Matching(QueueFilter {
                account: Some("other".into()),
                state,
                ..Default::default()
            })
        };
        let flushed = store
            .queue_batch(QueueAction::Retry, &flush(None), None, 10, now, false)
            .await
            .expect("flush");
        assert!(
            flushed.affected.is_empty(),
            "a flush does not resend bounced mail"
        );
        assert_eq!(flushed.skipped.len(), 1);
        let revived = store
            .queue_batch(
                QueueAction::Retry,
                &flush(Some(MessageState::Bounced)),
                None,
                10,
                now + 200,
                false,
            )
            .await
            .expect("retry bounced");
        assert_eq!(
            revived.affected.len(),
            1,
            "asked for by state, it is retried"
        );
        let (shown, _) = store.message(&other).await.expect("read").expect("exists");
        assert_eq!(shown.state, MessageState::Deferred);
        assert_eq!(shown.next_attempt_at, now + 200);
        assert!(
            shown
                .recipients
                .iter()
                .all(|r| r.state == RecipientState::Pending)
        );
        let released = run(QueueAction::Release, false).await;
        assert_eq!(released.len(), 7);
        assert!(released.iter().all(|m| m.state == MessageState::Held));
        let (shown, _) = store
            .message(&released[0].id)
            .await
            .expect("read")
            .expect("exists");
        assert_eq!(shown.state, MessageState::Queued);
        assert_eq!(shown.next_attempt_at, now);
        let deleted = run(QueueAction::Delete, false).await;
        assert_eq!(deleted.len(), 7);
        assert_eq!(
            store
                .count_messages(&QueueFilter::default())
                .await
                .expect("count"),
            1
        );
        let missing = MessageId("0000000000000000".into());
        let by_id = store
            .queue_batch(
                QueueAction::Delete,
                &QueueSelection::Ids(vec![other.clone(), missing.clone(), other.clone()]),
                None,
                10,
                now,
                false,
            )
            .await
            .expect("by id");
        assert_eq!(by_id.affected.len(), 1, "named twice, deleted once");
        assert_eq!(by_id.missing, [missing]);
        assert!(by_id.next.is_none());
        assert!(store.message(&other).await.expect("read").is_none());
    }

    pub async fn a_finished_message_whose_body_retention_removed_is_not_retried(backend: &Backend) {
        let store = &backend.store;
        let id = store
            .enqueue(message("office", &["a@x", "b@x"]))
            .await
            .expect("enqueue");
        let now = now();
        let claimed = store.claim("w", now + 1, now + 60, 1).await.expect("claim");
        store
            .complete_attempt(&id, &claimed[0].lease, &bounced(&[0, 1]))
            .await
            .expect("bounced");
        let by_id = QueueSelection::Ids(vec![id.clone()]);
        let dry = store
            .queue_batch(QueueAction::Retry, &by_id, None, 10, now, true)
            .await
            .expect("dry run");
        assert_eq!(dry.affected.len(), 1, "with its body it can be retried");
        let removed = store
            .remove_expired(
                &RetentionCutoffs {
                    bodies_before: Some(now + 10),
                    records_before: None,
                },
                10,
            )
            .await
            .expect("retention");
        assert_eq!(removed.bodies, 1, "{removed:?}");
        let outcome = store
            .queue_batch(QueueAction::Retry, &by_id, None, 10, now, false)
            .await
            .expect("retry");
        assert!(outcome.affected.is_empty(), "{outcome:?}");
        assert_eq!(outcome.skipped.len(), 1);
        assert!(!outcome.skipped[0].body_kept);
        assert!(!store.retry_now(&id, now).await.expect("retry_now"));
        let (shown, body) = store.message(&id).await.expect("read").expect("kept");
        assert_eq!(shown.state, MessageState::Bounced, "left as it was");
        assert!(body.is_empty(), "the body is gone");
    }

    pub async fn retention_removes_bodies_then_messages_then_events_and_never_open_mail(
        backend: &Backend,
    ) {
        let store = &backend.store;
        let now = now();
        let mut finished = Vec::new();
        for _ in 0..3 {
            let id = store
                .enqueue(message("office", &["a@x"]))
                .await
                .expect("enqueue");
            let claimed = store.claim("w", now + 1, now + 60, 1).await.expect("claim");
            store
                .complete_attempt_with_events(
                    &id,
                    &claimed[0].lease,
                    &delivered(&[0]),
                    &[delivered_event(&id)],
                )
                .await
                .expect("delivered");
            finished.push(id);
        }
        let waiting = store
            .enqueue(message("office", &["a@x"]))
            .await
            .expect("enqueue");
        let held = store
            .enqueue(message("office", &["a@x"]))
            .await
            .expect("enqueue");
        store
            .queue_batch(
                QueueAction::Hold,
                &QueueSelection::Ids(vec![held.clone()]),
                None,
                10,
                now,
                false,
            )
            .await
            .expect("hold");
        let usage = store.usage().await.expect("usage");
        assert!(usage.bytes > 0);
        assert!(usage.oldest_body_at.is_some());
        assert!(usage.oldest_event_at.is_some());
        let cutoffs = RetentionCutoffs {
            bodies_before: Some(now + 100),
            records_before: Some(now + 100),
        };
        let mut steps = Vec::new();
        for _ in 0..20 {
            let removed = store.remove_expired(&cutoffs, 2).await.expect("step");
            if removed.is_empty() {
                break;
            }
            steps.push((removed.bodies, removed.messages, removed.events));
        }
        assert_eq!(
            steps,
            [
                (2, 0, 0),
                (1, 0, 0),
                (0, 2, 0),
                (0, 1, 0),
                (0, 0, 2),
                (0, 0, 1)
            ],
            "bodies first, then messages, then events, in batches"
        );
        for id in &finished {
            assert!(store.message(id).await.expect("read").is_none());
        }
        for id in [&waiting, &held] {
            let (shown, body) = store.message(id).await.expect("read").expect("kept");
            assert!(!shown.state.is_final());
            assert!(!body.is_empty(), "open mail keeps its body");
        }
        let usage = store.usage().await.expect("usage");
        assert_eq!(
            (
                usage.oldest_body_at,
                usage.oldest_record_at,
                usage.oldest_event_at
            ),
            (None, None, None)
        );
        // Nothing past its time: nothing removed.
        let keep = RetentionCutoffs {
            bodies_before: Some(0),
            records_before: Some(0),
        };
        assert!(
            store
                .remove_expired(&keep, 10)
                .await
                .expect("step")
                .is_empty()
        );
    }

    pub async fn users_are_added_once_and_removed(backend: &Backend) {
        let store = &backend.store;
        let user = oxirelay::users::SubmissionUser {
            name: "scanner".into(),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
            allowed_from: vec!["scanner@contoso.com".into(), "@contoso.com".into()],
            account: "office".into(),
            source: "store",
            header_from_checked: true,
        };
        assert!(store.add_user(&user).await.expect("add"));
        assert!(!store.add_user(&user).await.expect("add twice"));
        let users = store.users().await.expect("users");
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].name, "scanner");
        assert_eq!(users[0].password_hash, user.password_hash);
        assert_eq!(users[0].allowed_from, user.allowed_from);
        assert_eq!(users[0].account, "office");
        assert!(store.remove_user("scanner").await.expect("remove"));
        assert!(!store.remove_user("scanner").await.expect("remove twice"));
        assert!(store.users().await.expect("users").is_empty());
    }

    pub async fn sealed_secrets_are_replaced_and_named(backend: &Backend) {
        let store = &backend.store;
        assert!(
            store
                .sealed_secret("office", "jwt_key")
                .await
                .expect("read")
                .is_none()
        );
        store
            .put_sealed_secret("office", "jwt_key", &SealedValue::from_stored(vec![1; 64]))
            .await
            .expect("put");
        store
            .put_sealed_secret("office", "jwt_key", &SealedValue::from_stored(vec![2; 64]))
            .await
            .expect("replace");
        store
            .put_sealed_secret("lab", "client_secret", &SealedValue::from_stored(vec![3]))
            .await
            .expect("put");
        assert_eq!(
            store
                .sealed_secret("office", "jwt_key")
                .await
                .expect("read")
                .expect("kept")
                .as_bytes(),
            [2; 64]
        );
        assert_eq!(
            store.sealed_secret_names().await.expect("names"),
            [
                ("lab".to_string(), "client_secret".to_string()),
                ("office".to_string(), "jwt_key".to_string())
            ]
        );
    }

    pub async fn audit_anchor_moves_only_from_what_was_expected(backend: &Backend) {
        let store = &backend.store;
        const CHAIN: &str = "mail1:/var/log/oxirelay/audit.jsonl";
        assert!(store.audit_anchor(CHAIN).await.expect("read").is_none());
        let first = AuditAnchor {
            seq: 1,
            hash: "aa".into(),
        };
        let second = AuditAnchor {
            seq: 2,
            hash: "bb".into(),
        };
        let advance = |expected: Option<&AuditAnchor>, next: &AuditAnchor| {
            let (expected, next) = (expected.cloned(), next.clone());
            async move {
                store
                    .advance_audit_anchor(CHAIN, expected.as_ref(), &next)
                    .await
                    .expect("advance")
            }
        };
        assert!(advance(None, &first).await, "first");
        assert!(!advance(None, &second).await, "there is one already");
        assert!(
            !advance(Some(&second), &first).await,
            "not from the wrong one"
        );
        assert!(advance(Some(&first), &second).await, "forward");
        assert_eq!(
            store.audit_anchor(CHAIN).await.expect("read"),
            Some(second.clone())
        );
        // Another instance's log has its own anchor, apart from this one.
        const OTHER: &str = "mail2:/var/log/oxirelay/audit.jsonl";
        assert!(store.audit_anchor(OTHER).await.expect("read").is_none());
        assert!(
            store
                .advance_audit_anchor(OTHER, None, &first)
                .await
                .expect("other")
        );
        assert_eq!(
            store.audit_anchors().await.expect("list"),
            vec![(CHAIN.to_string(), second), (OTHER.to_string(), first)]
        );
    }

    /// The one anchor of a store from before logs were told apart (chain
    /// "") is what a log sees while no log has its own, and the first to
    /// move it on takes it over.
    pub async fn the_anchor_of_before_is_taken_over_by_the_first_log(backend: &Backend) {
        let store = &backend.store;
        let old = AuditAnchor {
            seq: 7,
            hash: "77".into(),
        };
        assert!(
            store
                .advance_audit_anchor("", None, &old)
                .await
                .expect("old")
        );
        const CHAIN: &str = "mail1:/var/log/oxirelay/audit.jsonl";
        assert_eq!(
            store.audit_anchor(CHAIN).await.expect("read"),
            Some(old.clone())
        );
        let next = AuditAnchor {
            seq: 8,
            hash: "88".into(),
        };
        assert!(
            store
                .advance_audit_anchor(CHAIN, Some(&old), &next)
                .await
                .expect("taken over")
        );
        assert_eq!(
            store.audit_anchors().await.expect("list"),
            vec![(CHAIN.to_string(), next)],
            "the anchor of before is gone"
        );
        // A log on another host starts its own chain: it never saw the old one.
        assert_eq!(
            store
                .audit_anchor("mail2:/var/log/oxirelay/audit.jsonl")
                .await
                .expect("read"),
            None
        );
    }

    pub async fn lockdown_on_and_off(backend: &Backend) {
        let store = &backend.store;
        assert!(store.lockdown().await.expect("read").is_none());
        let before = now();
        store
            .set_lockdown(Some("token leak suspected"))
            .await
            .expect("on");
        let on = store.lockdown().await.expect("read").expect("on");
        assert_eq!(on.reason, "token leak suspected");
        assert!(on.since >= before);
        // Another instance sees it.
        let other = backend.reopen().await;
        assert!(other.lockdown().await.expect("read").is_some());
        store.set_lockdown(Some("still")).await.expect("again");
        assert_eq!(
            store.lockdown().await.expect("read").expect("on").reason,
            "still"
        );
        store.set_lockdown(None).await.expect("off");
        assert!(other.lockdown().await.expect("read").is_none());
    }

    fn event(kind: &str) -> Event {
        Event {
            at: 1,
            kind: kind.into(),
            account: None,
            message_id: None,
            detail: String::new(),
        }
    }

    pub async fn a_new_webhook_endpoint_starts_at_the_end_of_the_log_and_one_holder_moves_it(
        backend: &Backend,
    ) {
        let store = &backend.store;
        store.record_event(&event("a.one")).await.expect("event");
        store.record_event(&event("a.two")).await.expect("event");
        let end = store.events_after(0, 10).await.expect("log")[1].id;
        let (one, two) = (holder("one"), holder("two"));
        let WebhookHold::Held(cursor) = store
            .hold_webhook("hook", &one, 100, 130, None)
            .await
            .expect("hold")
        else {
            panic!("a free endpoint is held")
        };
        assert_eq!(
            cursor.cursor, end,
            "history is not replayed to a new endpoint"
        );
        assert!(matches!(
            store.hold_webhook("hook", &two, 110, 140, None).await.expect("hold"),
            WebhookHold::HeldBy { holder, expires_at: 130 } if holder == one
        ));
        assert!(
            !store
                .advance_webhook("hook", &two.id, end + 1, 1, 111)
                .await
                .expect("advance"),
            "only the holder moves the cursor"
        );
        assert!(
            store
                .webhook_failed("hook", &one.id, 1, 200, "HTTP 500", 112)
                .await
                .expect("failed")
        );
        store.record_event(&event("a.three")).await.expect("event");
        let third = store.events_after(end, 10).await.expect("log")[0].id;
        let status = &store.webhook_statuses().await.expect("statuses")[0];
        assert_eq!((status.lag, status.cursor.attempts), (third - end, 1));
        assert_eq!(status.cursor.last_error.as_deref(), Some("HTTP 500"));
        assert!(
            store
                .advance_webhook("hook", &one.id, third, 1, 113)
                .await
                .expect("advance")
        );
        assert!(
            !store
                .advance_webhook("hook", &one.id, end, 0, 114)
                .await
                .expect("advance"),
            "a cursor never goes back"
        );
        let status = &store.webhook_statuses().await.expect("statuses")[0];
        assert_eq!(
            (status.lag, status.cursor.attempts, status.cursor.delivered),
            (0, 0, 1)
        );
        assert_eq!(status.cursor.last_error, None);
        assert_eq!(status.cursor.last_delivered_at, Some(113));
        // A hold that lapsed is shown without a holder, and is free.
        assert!(matches!(
            store
                .hold_webhook("hook", &two, 131, 161, None)
                .await
                .expect("hold"),
            WebhookHold::Held(_)
        ));
        // A released endpoint is free for the next process at once.
        store
            .release_webhook("hook", &two.id)
            .await
            .expect("release");
        assert!(matches!(
            store.hold_webhook("hook", &one, 140, 170, None).await.expect("hold"),
            WebhookHold::Held(cursor) if cursor.cursor == third
        ));
    }

    pub async fn a_notification_condition_is_due_once_per_interval(backend: &Backend) {
        let store = &backend.store;
        assert!(store.notify_due("lockdown", 1000, 60).await.expect("due"));
        assert!(!store.notify_due("lockdown", 1001, 60).await.expect("due"));
        assert!(!store.notify_due("lockdown", 1059, 60).await.expect("due"));
        assert!(store.notify_due("lockdown", 1060, 60).await.expect("due"));
        assert!(store.notify_due("other", 1060, 60).await.expect("due"));
        let marks = store.notify_marks().await.expect("marks");
        assert_eq!(marks.len(), 2);
        assert_eq!(
            (
                marks[0].condition.as_str(),
                marks[0].first_at,
                marks[0].last_notified_at,
                marks[0].times
            ),
            ("lockdown", 1000, 1060, 2)
        );
        assert!(store.notify_clear("lockdown").await.expect("clear"));
        assert!(!store.notify_clear("lockdown").await.expect("clear twice"));
        assert!(store.notify_due("lockdown", 1061, 60).await.expect("due"));
    }

    pub async fn a_message_summary_has_its_recipients_and_no_body(backend: &Backend) {
        let store = &backend.store;
        let id = store
            .enqueue(message("office", &["a@x", "b@x"]))
            .await
            .expect("enqueue");
        let summary = store
            .message_summary(&id)
            .await
            .expect("read")
            .expect("exists");
        assert_eq!(summary.id, id);
        assert_eq!(summary.recipients.len(), 2);
        assert!(
            store
                .message_summary(&MessageId("0000000000000000".into()))
                .await
                .expect("read")
                .is_none()
        );
    }

    pub async fn an_idempotency_claim_is_pending_then_taken_over_answered_and_expires(
        backend: &Backend,
    ) {
        use oxirelay::store::IdempotencyState;
        let store = &backend.store;
        let ids = vec![MessageId("AA".into()), MessageId("BB".into())];
        let other = vec![MessageId("CC".into())];
        let begin = |hash: &'static str, reserved: Vec<MessageId>, now: i64, stale: i64| async move {
            store
                .idempotency_begin("k1", "order-1", hash, &reserved, now, now + 100, stale)
                .await
                .expect("begin")
        };
        assert_eq!(
            begin("h", ids.clone(), 10, 0).await,
            IdempotencyState::Started
        );
        assert_eq!(
            begin("h", other.clone(), 11, 0).await,
            IdempotencyState::Pending { created_at: 10 }
        );
        assert_eq!(
            begin("other", other.clone(), 11, 0).await,
            IdempotencyState::Mismatch
        );
        // Its process died: the next one takes the ids it reserved.
        assert_eq!(
            begin("h", other.clone(), 80, 70).await,
            IdempotencyState::TakenOver {
                reserved: ids.clone()
            }
        );
        store
            .idempotency_finish("k1", "order-1", 202, "{\"id\":\"AA\"}")
            .await
            .expect("finish");
        assert_eq!(
            begin("h", other.clone(), 81, 0).await,
            IdempotencyState::Answered {
                status: 202,
                response: "{\"id\":\"AA\"}".into()
            }
        );
        // Another API key's claim of the same name is its own.
        let theirs = store
            .idempotency_begin("k2", "order-1", "x", &other, 81, 181, 0)
            .await
            .expect("begin");
        assert_eq!(theirs, IdempotencyState::Started);
        // Expired (kept until 110): new again.
        assert_eq!(
            begin("new", other.clone(), 200, 0).await,
            IdempotencyState::Started
        );
        // A forgotten claim (the store failed) starts afresh.
        store
            .idempotency_forget("k1", "order-1")
            .await
            .expect("forget");
        assert_eq!(begin("again", ids, 201, 0).await, IdempotencyState::Started);
    }

    pub async fn api_keys_are_named_once_while_active_and_revocation_frees_the_name(
        backend: &Backend,
    ) {
        use oxirelay::store::ApiKeyRecord;
        let store = &backend.store;
        let key = |id: &str, at: i64| ApiKeyRecord {
            id: id.into(),
            name: "billing".into(),
            secret_hash: "ab".repeat(32),
            scopes: vec!["send".into(), "read".into()],
            allowed_from: vec!["@contoso.com".into()],
            accounts: vec!["office".into()],
            rate: Some((60, 60)),
            created_at: at,
            revoked_at: None,
        };
        assert!(store.create_api_key(&key("k1", 10)).await.expect("create"));
        assert!(
            !store.create_api_key(&key("k2", 11)).await.expect("create"),
            "an active key has that name"
        );
        assert_eq!(
            store.api_key("k1").await.expect("read"),
            Some(key("k1", 10))
        );
        assert!(store.api_key("k2").await.expect("read").is_none());
        assert!(store.revoke_api_key("billing", 20).await.expect("revoke"));
        assert!(
            !store
                .revoke_api_key("billing", 21)
                .await
                .expect("revoke twice")
        );
        assert!(store.create_api_key(&key("k3", 30)).await.expect("create"));
        let keys = store.api_keys().await.expect("keys");
        assert_eq!(
            keys.iter()
                .map(|k| (k.id.as_str(), k.revoked_at))
                .collect::<Vec<_>>(),
            [("k1", Some(20)), ("k3", None)]
        );
    }

    pub async fn tagged_messages_are_listed_newest_first_by_tag_submitter_and_state(
        backend: &Backend,
    ) {
        use oxirelay::store::ApiListQuery;
        let store = &backend.store;
        let mut ids = Vec::new();
        for n in 0..5 {
            let mut m = message("office", &["a@x"]);
            m.submitted_by = if n % 2 == 0 {
                "api:billing"
            } else {
                "api:other"
            }
            .into();
            let id = MessageId::generate();
            let tags: Vec<String> = if n < 3 {
                vec!["invoice".into(), "eu".into()]
            } else {
                vec![]
            };
            store
                .tag_message("k1", &id, &tags, 100 + n)
                .await
                .expect("tag");
            store.enqueue_as(id.clone(), m).await.expect("enqueue");
            ids.push(id);
        }
        assert_eq!(
            store.message_tags(&ids[0]).await.expect("tags"),
            ["eu", "invoice"]
        );
        let by_tag = ApiListQuery {
            tag: Some(("k1".into(), "invoice".into())),
            ..Default::default()
        };
        let listed = store
            .api_list_messages(&by_tag, None, 2)
            .await
            .expect("list");
        assert_eq!(
            listed
                .iter()
                .map(|l| l.message.id.clone())
                .collect::<Vec<_>>(),
            [ids[2].clone(), ids[1].clone()],
            "newest tagged first"
        );
        let rest = store
            .api_list_messages(&by_tag, Some(&listed[1].cursor), 10)
            .await
            .expect("next page");
        assert_eq!(
            rest.iter()
                .map(|l| l.message.id.clone())
                .collect::<Vec<_>>(),
            [ids[0].clone()]
        );
        assert_eq!(rest[0].message.recipients.len(), 1);
        let mine = ApiListQuery {
            submitted_by: Some("api:billing".into()),
            state: Some(MessageState::Queued),
            ..Default::default()
        };
        let listed = store
            .api_list_messages(&mine, None, 10)
            .await
            .expect("list");
        let mut got: Vec<_> = listed.iter().map(|l| l.message.id.clone()).collect();
        got.sort();
        let mut want = vec![ids[0].clone(), ids[2].clone(), ids[4].clone()];
        want.sort();
        assert_eq!(got, want);
        let since = ApiListQuery {
            since: Some(now() + 3600),
            ..Default::default()
        };
        assert!(
            store
                .api_list_messages(&since, None, 10)
                .await
                .expect("list")
                .is_empty()
        );
        store.untag_message(&ids[0]).await.expect("untag");
        assert!(store.message_tags(&ids[0]).await.expect("tags").is_empty());
    }

    /// `queue list` says which instance is delivering a message: the
    /// instance part of its lease's owner, and until when, only while it
    /// is in flight.
    pub async fn a_listing_names_the_instance_that_holds_a_lease(backend: &Backend) {
        let store = &backend.store;
        let id = store
            .enqueue(message("office", &["a@example.net"]))
            .await
            .expect("enqueue");
        let listed = |store: std::sync::Arc<dyn oxirelay::store::Store>| async move {
            store
                .list_messages(&QueueFilter::default(), None, 10)
                .await
                .expect("list")
                .remove(0)
        };
        let queued = listed(store.clone()).await;
        assert_eq!(
            (queued.lease_instance, queued.lease_expires_at),
            (None, None)
        );
        let t = now();
        let claimed = store
            .claim("mail1:4242:0badcafe/w3", t, t + 300, 1)
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 1);
        // Seen from another instance, as `queue list` run anywhere sees it.
        let in_flight = listed(backend.reopen().await).await;
        assert_eq!(
            in_flight.lease_instance.as_deref(),
            Some("mail1:4242:0badcafe")
        );
        assert_eq!(in_flight.lease_expires_at, Some(t + 300));
        let json = serde_json::to_value(&in_flight).expect("json");
        assert_eq!(json["lease_instance"], "mail1:4242:0badcafe");
        store
            .complete_attempt(&id, &claimed[0].lease, &delivered(&[0]))
            .await
            .expect("delivered");
        let done = listed(store.clone()).await;
        assert_eq!(done.lease_instance, None, "no lease once delivered");
        assert!(
            serde_json::to_value(&done)
                .expect("json")
                .get("lease_instance")
                .is_none()
        );
    }

    /// Two handles on one store (two instances) charge one allowance:
    /// 40 concurrent asks for a 5-per-minute account, half through each,
    /// let exactly 5 go; a back-off one of them records holds for the
    /// other; an account without quotas always goes (issue 13, item 4).
    pub async fn two_instances_share_one_accounts_quota_and_back_off(backend: &Backend) {
        use oxirelay::delivery::limits::{AccountLimits, Admission};
        use std::time::Duration;
        let other = backend.reopen().await;
        let limits = AccountLimits {
            messages_per_minute: Some(5),
            ..AccountLimits::default()
        };
        let at = 1_800_000_000.0;
        let asks = (0..40).map(|i| {
            let store = if i % 2 == 0 {
                backend.store.clone()
            } else {
                other.clone()
            };
            async move {
                store
                    .admit_delivery("office", &limits, 1, at)
                    .await
                    .expect("admit")
            }
        });
        let verdicts = spawn_all(asks).await;
        let went = verdicts.iter().filter(|v| **v == Admission::Go).count();
        assert_eq!(went, 5, "one allowance for both: {verdicts:?}");
        assert!(
            verdicts
                .iter()
                .all(|v| matches!(v, Admission::Go | Admission::Limited(_)))
        );
        // Five per minute: one more 12 s later, through either instance.
        assert_eq!(
            other
                .admit_delivery("office", &limits, 1, at + 12.5)
                .await
                .expect("admit"),
            Admission::Go
        );
        assert!(matches!(
            backend
                .store
                .admit_delivery("office", &limits, 1, at + 13.0)
                .await
                .expect("admit"),
            Admission::Limited(_)
        ));
        // A back-off recorded by one holds for the other, quotas or not.
        let none = AccountLimits::default();
        assert_eq!(
            other
                .admit_delivery("lab", &none, 3, at)
                .await
                .expect("admit"),
            Admission::Go
        );
        backend
            .store
            .back_off_account("lab", Duration::from_secs(60), at)
            .await
            .expect("back off");
        assert_eq!(
            other
                .admit_delivery("lab", &none, 3, at + 20.0)
                .await
                .expect("admit"),
            Admission::BackedOff(Duration::from_secs(40))
        );
        assert_eq!(
            other
                .admit_delivery("lab", &none, 3, at + 60.0)
                .await
                .expect("admit"),
            Admission::Go
        );
    }

    /// Two instances answering the same request with the same
    /// idempotency key at once: one starts it, the other is told it is
    /// pending, and after the answer both repeat it.
    pub async fn two_instances_racing_on_one_idempotency_key_start_it_once(backend: &Backend) {
        use oxirelay::store::IdempotencyState;
        let other = backend.reopen().await;
        let stores = [backend.store.clone(), other.clone()];
        let begins = (0..8).map(|i| {
            let store = stores[i % 2].clone();
            async move {
                let reserved = [MessageId(format!("M{i}"))];
                store
                    .idempotency_begin("k1", "order-7", "h", &reserved, 10, 1000, 0)
                    .await
                    .expect("begin")
            }
        });
        let states = spawn_all(begins).await;
        let started = states
            .iter()
            .filter(|s| **s == IdempotencyState::Started)
            .count();
        assert_eq!(started, 1, "{states:?}");
        assert!(
            states.iter().all(|s| matches!(
                s,
                IdempotencyState::Started | IdempotencyState::Pending { .. }
            )),
            "{states:?}"
        );
        other
            .idempotency_finish("k1", "order-7", 202, "{}")
            .await
            .expect("finish");
        for store in &stores {
            assert_eq!(
                store
                    .idempotency_begin("k1", "order-7", "h", &[], 11, 1000, 0)
                    .await
                    .expect("begin"),
                IdempotencyState::Answered {
                    status: 202,
                    response: "{}".into()
                }
            );
        }
    }

    /// Runs futures concurrently on this task, all results in order
    /// (without a futures-crate dependency for one helper).
    async fn spawn_all<T: Send + 'static>(
        futures: impl Iterator<Item = impl std::future::Future<Output = T> + Send + 'static>,
    ) -> Vec<T> {
        let handles: Vec<_> = futures.map(tokio::spawn).collect();
        let mut out = Vec::new();
        for handle in handles {
            out.push(handle.await.expect("join"));
        }
        out
    }
}
