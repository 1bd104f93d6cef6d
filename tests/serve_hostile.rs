//! `oxirelay serve` as a real child process, stopped with SIGTERM while
//! clients try to keep it running (issue 8): five that pipeline 2 MB of
//! NOOP each and never read a reply, and one authenticated client in the
//! middle of a message that it never finishes. The relay must exit within
//! its bound (the DATA grace plus the drain after it), tell the unfinished
//! message's client 421 rather than 250, and queue nothing of it.

mod common;
mod hostile_common;
#[path = "line_client/mod.rs"]
mod line_client;

use common::{Harness, RelayProcess, WAIT};
use hostile_common::*;
use line_client::Client;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_stops_within_its_bound_on_sigterm_whatever_its_clients_do() {
    let harness = Harness::start("client_credentials", "xoauth2", Duration::from_secs(3600)).await;
    let access = harness.add_relay();
    let grace = Duration::from_secs(1);
    let relay = RelayProcess::start(&harness.config_path, &["--shutdown-grace", "1s"]);
    // The relay's shutdown deadline: the grace, then 5 s for a commit that
    // finished at its end (`SHUTDOWN_DRAIN`); and time to exit the process.
    let bound = grace + oxirelay::smtp::server::limits::SHUTDOWN_DRAIN + Duration::from_secs(2);

    // The message client first: once the floods run, the (debug-built)
    // relay spends its cores parsing their NOOPs.
    let mut sending = Client::connect_addr(relay.addr, WAIT).await;
    sending.greet_with_starttls_trusting(&access.ca_file).await;
    assert!(
        sending
            .auth_plain(&access.user, &access.password)
            .await
            .starts_with("235 ")
    );
    let from = oxirelay::sandbox::USER;
    assert!(
        sending
            .command(&format!("MAIL FROM:<{from}>"))
            .await
            .starts_with("250")
    );
    assert!(
        sending
            .command("RCPT TO:<someone@example.net>")
            .await
            .starts_with("250")
    );
    assert!(sending.command("DATA").await.starts_with("354"));
    sending
        .write(b"Subject: never finished\r\n\r\nthe first lines, and then nothing\r\n")
        .await;

    let mut floods = Vec::new();
    for _ in 0..5 {
        let stream = connect_from(FIRST_LOOPBACK, relay.addr, Some(4096)).await;
        floods.push(Flood::start(stream, b"NOOP\r\n", 2 * 1024 * 1024));
    }
    for flood in &mut floods {
        flood.wait_written(1024 * 1024, WAIT).await;
    }

    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || relay.terminate())
        .await
        .expect("join");
    let took = started.elapsed();
    eprintln!("serve exited {took:?} after SIGTERM (bound {bound:?})");
    assert!(status.success(), "a clean exit: {status:?}");
    assert!(
        took < bound,
        "serve took {took:?} to stop; its bound is {bound:?}"
    );

    let last = sending.closed().await;
    assert!(
        last.starts_with("421 4.3.2 "),
        "the unfinished message is not acknowledged: {last:?}"
    );
    let queued = harness
        .context
        .store
        .messages(None, 100)
        .await
        .expect("messages");
    assert!(queued.is_empty(), "nothing of it was queued: {queued:?}");
    for flood in floods {
        flood.task.abort();
    }
}
