//! Listening sockets for the relay's servers: SMTP submission, HTTP, and
//! the sandbox's servers.
//!
//! tokio's `TcpListener::bind` listens with the standard library's backlog
//! of 128 connections waiting for `accept`. A burst above that (a fleet of
//! devices at the start of a shift; 1,000 sessions opened at once by
//! `bench/peers.sh`) overflowed the accept queue: the kernel dropped the
//! SYNs (`ListenOverflows` in `nstat`), the clients sent them again after
//! 1, 3, 7... seconds, and some were not connected a minute later.

use std::io;
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpSocket, ToSocketAddrs};

/// Connections the kernel may hold ready for `accept`; it caps this at
/// `net.core.somaxconn` (4096 on current kernels).
pub const BACKLOG: u32 = 1024;

/// Binds the first address `addr` resolves to that can be bound, as
/// `TcpListener::bind` does, with [`BACKLOG`].
pub async fn bind(addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
    let mut last_error = None;
    for addr in tokio::net::lookup_host(addr).await? {
        match bind_one(addr) {
            Ok(listener) => return Ok(listener),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the address resolves to no address to listen on",
        )
    }))
}

fn bind_one(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // As tokio's own bind does: a restarted relay listens at once, even
    // while connections of the one before wait out TIME_WAIT.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// More clients than the standard backlog connect while the server
    /// accepts none: each handshake completes into the accept queue
    /// (with 128, the rest waited for SYN retries and timed out here).
    #[tokio::test]
    async fn a_burst_above_the_standard_backlog_is_queued_not_dropped() {
        const CLIENTS: usize = 300;
        // The kernel caps the backlog at somaxconn (128 before Linux 5.4).
        let cap = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|text| text.trim().parse::<usize>().ok());
        if cap.is_some_and(|cap| cap <= CLIENTS) {
            eprintln!(
                "SKIPPED: net.core.somaxconn is {cap:?}, below {CLIENTS} + 1 waiting connections"
            );
            return;
        }
        let listener = bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..CLIENTS {
            clients.spawn(tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::TcpStream::connect(addr),
            ));
        }
        let mut connected = Vec::new();
        while let Some(joined) = clients.join_next().await {
            let stream = joined
                .expect("task")
                .expect("connected within 5 s, not dropped at a full queue")
                .expect("connect");
            connected.push(stream);
        }
        assert_eq!(connected.len(), CLIENTS);
        drop(listener);
    }

    #[tokio::test]
    async fn an_address_in_use_is_an_error() {
        let first = bind("127.0.0.1:0").await.expect("bind");
        let taken = first.local_addr().expect("addr");
        let error = bind(taken).await.expect_err("in use");
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse);
    }
}
