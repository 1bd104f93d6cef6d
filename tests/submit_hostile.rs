//! The relay's submission listeners (the real `Listeners` with the real
//! `SubmissionPolicy` and SQLite queue) against clients that try to hold
//! them hostage, with the session limits shortened to hundreds of
//! milliseconds: too many sessions from one address, a command line
//! dripped byte by byte, message data that crawls, a session that goes on
//! forever, a client that stops reading its replies, and an address that
//! an implicit-TLS listener refuses before any handshake.

mod hostile_common;
mod submit_common;

use hostile_common::*;
use oxirelay::smtp::server::SessionLimits;
use std::time::Duration;
use submit_common::*;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);

/// Limits short enough for tests, long enough not to fire by accident on
/// a loaded 2-core machine where they are not the subject.
fn short_limits() -> SessionLimits {
    SessionLimits {
        command_timeout: Duration::from_secs(5),
        write_timeout: Duration::from_secs(5),
        data_min_rate: 1000,
        data_stall: Duration::from_secs(5),
        lifetime: Duration::from_secs(30),
        closing_write_timeout: 500 * MS,
    }
}

async fn greeted(from: &str, addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let mut stream = connect_from(from, addr, None).await;
    let greeting = read_line(&mut stream, WAIT).await;
    assert!(greeting.starts_with("220 "), "{greeting:?}");
    stream
}

#[tokio::test]
async fn the_eleventh_session_from_one_address_is_refused_while_another_address_gets_in() {
    let relay = Relay::start().await;
    let addr = relay.addr(STARTTLS);
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(greeted(FIRST_LOOPBACK, addr).await);
    }
    let mut eleventh = connect_from(FIRST_LOOPBACK, addr, None).await;
    let (said, closed) = read_until_closed(&mut eleventh, WAIT).await;
    assert!(closed.is_some(), "the eleventh session is closed");
    assert_eq!(
        String::from_utf8_lossy(&said),
        "421 4.7.0 relay.test Too many connections from your address, try again later\r\n"
    );

    // Another address still gets in, and can work.
    let mut other = greeted(SECOND_LOOPBACK, addr).await;
    assert!(command(&mut other, "NOOP", WAIT).await.starts_with("250 "));

    // When one of the ten leaves, its place is free at once.
    let mut leaving = held.pop().expect("a held session");
    assert!(
        command(&mut leaving, "QUIT", WAIT)
            .await
            .starts_with("221 ")
    );
    assert!(read_until_closed(&mut leaving, WAIT).await.1.is_some());
    let mut again = greeted(FIRST_LOOPBACK, addr).await;
    assert!(command(&mut again, "NOOP", WAIT).await.starts_with("250 "));

    // On implicit TLS the refusal comes before any handshake: the socket
    // is closed without a byte.
    let tls_addr = relay.addr(IMPLICIT);
    let mut waiting_for_handshake = Vec::new();
    for _ in 0..10 {
        waiting_for_handshake.push(connect_from(FIRST_LOOPBACK, tls_addr, None).await);
    }
    let mut refused = connect_from(FIRST_LOOPBACK, tls_addr, None).await;
    let (said, closed) = read_until_closed(&mut refused, WAIT).await;
    assert!(
        closed.is_some() && said.is_empty(),
        "closed silently: {said:?}"
    );
    drop((held, waiting_for_handshake));
    relay.shutdown().await;
}

#[tokio::test]
async fn a_command_line_dripped_byte_by_byte_is_cut_off_at_the_line_deadline() {
    let relay = Relay::start_with(|options| {
        options.limits = SessionLimits {
            command_timeout: 400 * MS,
            ..short_limits()
        }
    })
    .await;
    let addr = relay.addr(STARTTLS);

    // A line that arrives within the deadline, even in pieces, is served.
    let mut polite = greeted(FIRST_LOOPBACK, addr).await;
    for byte in b"NOOP\r\n" {
        polite.write_all(&[*byte]).await.expect("write");
        tokio::time::sleep(20 * MS).await; // the client's own pace
    }
    assert!(read_line(&mut polite, WAIT).await.starts_with("250 "));

    // One byte every 50 ms, never a line end: each read comes quickly, but
    // the line never completes.
    let mut dripper = greeted(FIRST_LOOPBACK, addr).await;
    let started = Instant::now();
    let dripped = drip(&mut dripper, 50 * MS, || Some(b"X".to_vec()), false, WAIT).await;
    let took = dripped.at - started;
    eprintln!("dripped line cut after {took:?}");
    assert_eq!(
        String::from_utf8_lossy(&dripped.received),
        "421 4.4.2 relay.test Timeout waiting for the client, closing connection\r\n"
    );
    assert!(
        took >= 350 * MS && took < 400 * MS + Duration::from_secs(2),
        "cut off at the line deadline (400 ms), not per read: {took:?}"
    );
    relay.shutdown().await;
}

/// AUTH on the allow-listed plaintext listener, then MAIL, RCPT, DATA.
async fn at_data(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let mut stream = greeted(FIRST_LOOPBACK, addr).await;
    let ehlo = command(&mut stream, "EHLO client.test", WAIT).await;
    assert!(ehlo.starts_with("250-"), "{ehlo}");
    // The rest of the EHLO reply.
    while !read_line(&mut stream, WAIT).await.starts_with("250 ") {}
    let auth = command(
        &mut stream,
        &format!("AUTH PLAIN {}", plain(SCANNER, SCANNER_PASSWORD)),
        WAIT,
    )
    .await;
    assert!(auth.starts_with("235 "), "{auth}");
    for line in [
        format!("MAIL FROM:<{SCANNER_FROM}>"),
        "RCPT TO:<bob@example.com>".to_string(),
    ] {
        let reply = command(&mut stream, &line, WAIT).await;
        assert!(reply.starts_with("250 "), "{line}: {reply}");
    }
    assert!(command(&mut stream, "DATA", WAIT).await.starts_with("354 "));
    stream
}

/// Sends a header, then `chunk` every `every` until `total` bytes went
/// out, then ends the message; returns the server's reply (or what it said
/// before closing) and how long that took.
async fn paced_message(
    stream: &mut tokio::net::TcpStream,
    chunk: &[u8],
    every: Duration,
    total: usize,
) -> (String, Duration) {
    let started = Instant::now();
    let head = format!("From: <{SCANNER_FROM}>\r\nSubject: paced\r\n\r\n");
    stream
        .write_all(head.as_bytes())
        .await
        .expect("write the header");
    let mut sent = 0;
    let next = || {
        if sent > total {
            return None;
        }
        sent += chunk.len();
        Some(if sent > total {
            b"\r\n.\r\n".to_vec()
        } else {
            chunk.to_vec()
        })
    };
    let dripped = drip(stream, every, next, true, WAIT).await;
    (
        String::from_utf8_lossy(&dripped.received).into_owned(),
        dripped.at - started,
    )
}

#[tokio::test]
async fn message_data_slower_than_the_minimum_rate_is_cut_off_and_not_queued() {
    let relay = Relay::start_with(|options| {
        options.limits = SessionLimits {
            data_min_rate: 1000,
            data_stall: 300 * MS,
            ..short_limits()
        }
    })
    .await;
    let addr = relay.addr(PLAINTEXT_LOOPBACK);

    // 4000 B/s, four times the minimum: accepted.
    let mut fast = at_data(addr).await;
    let line = b"0123456789012345678901234567890123456789012345678901234567\r\n";
    let (reply, _) = paced_message(&mut fast, &line[..], 15 * MS, 2000).await;
    let id = queue_id(&reply);
    assert_eq!(relay.queued().await.len(), 1);

    // 200 B/s: the 300 ms allowance drains at 0.8 s per second.
    let mut slow = at_data(addr).await;
    let (said, took) = paced_message(&mut slow, b"0123456789", 50 * MS, 100_000).await;
    assert_eq!(
        said,
        "421 4.4.2 relay.test Timeout: the message data arrived too slowly, closing connection\r\n"
    );
    assert!(
        took >= 300 * MS && took < 375 * MS + Duration::from_secs(2),
        "cut off by the pace rule, after the allowance: {took:?}"
    );
    let queued = relay.queued().await;
    assert_eq!(queued.len(), 1, "nothing of the slow message was queued");
    assert_eq!(queued[0].id.0, id);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_session_ends_at_its_lifetime_however_busy() {
    let relay = Relay::start_with(|options| {
        options.limits = SessionLimits {
            command_timeout: 400 * MS,
            lifetime: 900 * MS,
            ..short_limits()
        }
    })
    .await;
    let started = Instant::now();
    let mut busy = greeted(FIRST_LOOPBACK, relay.addr(STARTTLS)).await;
    // A NOOP every 100 ms, each answered: never idle, never slow.
    let mut ticks = tokio::time::interval(100 * MS);
    let last = tokio::time::timeout(WAIT, async {
        loop {
            ticks.tick().await;
            let reply = command(&mut busy, "NOOP", WAIT).await;
            if !reply.starts_with("250 ") {
                return reply;
            }
        }
    })
    .await
    .expect("the session ends in time");
    let took = started.elapsed();
    assert_eq!(
        last,
        "421 4.4.2 relay.test Timeout: session time limit reached, closing connection\r\n"
    );
    assert!(read_until_closed(&mut busy, WAIT).await.1.is_some());
    assert!(
        took >= 850 * MS && took < 900 * MS + Duration::from_secs(2),
        "{took:?}"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_at_the_write_deadline_and_its_place_freed() {
    let relay = Relay::start_with(|options| {
        options.max_sessions_per_address = 1;
        options.limits = SessionLimits {
            write_timeout: 300 * MS,
            ..short_limits()
        }
    })
    .await;
    let addr = relay.addr(STARTTLS);
    // EHLO for its long reply (~170 bytes for 8): the server's writes fill
    // the small receive buffer and its own send buffer quickly.
    let hog = connect_from(FIRST_LOOPBACK, addr, Some(4096)).await;
    let flood = Flood::start(hog, b"EHLO x\r\n", usize::MAX);

    // Its place is taken meanwhile.
    let mut second = connect_from(FIRST_LOOPBACK, addr, None).await;
    let (said, _) = read_until_closed(&mut second, WAIT).await;
    assert!(
        String::from_utf8_lossy(&said).starts_with("421 4.7.0 "),
        "{said:?}"
    );

    let started = Instant::now();
    let cut_at = flood.cut_off(WAIT).await;
    eprintln!("write deadline cut after {:?}", cut_at - started);
    assert!(
        cut_at - started < Duration::from_secs(5),
        "closed by the write deadline, before the command deadline (5 s)"
    );
    // The place was freed before the socket closed.
    let mut third = greeted(FIRST_LOOPBACK, addr).await;
    assert!(command(&mut third, "NOOP", WAIT).await.starts_with("250 "));
    relay.shutdown().await;
}

/// The first flight of a real TLS client (rustls), to send by hand.
fn client_hello(ca_file: &std::path::Path) -> Vec<u8> {
    let config = oxirelay::tls::client_config(Some(ca_file)).expect("client TLS config");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut connection = rustls::ClientConnection::new(config, name).expect("client");
    let mut hello = Vec::new();
    connection.write_tls(&mut hello).expect("ClientHello");
    hello
}

#[tokio::test]
async fn an_implicit_tls_listener_refuses_an_address_outside_allow_ips_without_a_handshake() {
    let relay = Relay::start().await;
    let addr = relay.addr(IMPLICIT_SECOND_LOOPBACK);
    let hello = client_hello(&relay.ca_file);

    // Refused: the server closes without a byte, whatever the client sends.
    let mut refused = connect_from(FIRST_LOOPBACK, addr, None).await;
    let _ = refused.write_all(&hello).await;
    let (said, closed) = read_until_closed(&mut refused, WAIT).await;
    assert!(closed.is_some(), "the refused connection is closed");
    assert!(said.is_empty(), "no ServerHello, no reply: {said:?}");

    // A real TLS client sees a closed connection, not a handshake.
    let stream = connect_from(FIRST_LOOPBACK, addr, None).await;
    let config = oxirelay::tls::client_config(Some(&relay.ca_file)).expect("client TLS config");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let outcome = tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(config).connect(name, stream),
    )
    .await
    .expect("the handshake attempt ends in time");
    let Err(error) = outcome else {
        panic!("no handshake for a refused address, yet one completed");
    };
    assert!(
        matches!(
            error.kind(),
            std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe
        ),
        "closed, not a TLS alert: {error:?}"
    );

    // The allowed address gets its ServerHello (a TLS handshake record).
    let mut allowed = connect_from(SECOND_LOOPBACK, addr, None).await;
    allowed.write_all(&hello).await.expect("write ClientHello");
    let mut first = [0u8; 1];
    tokio::time::timeout(
        WAIT,
        tokio::io::AsyncReadExt::read_exact(&mut allowed, &mut first),
    )
    .await
    .expect("a ServerHello in time")
    .expect("read");
    assert_eq!(first[0], 0x16, "a TLS handshake record");
    relay.shutdown().await;
}
