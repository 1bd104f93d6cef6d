//! Raw TCP clients that misbehave on purpose, for the tests of the limits
//! that keep one client from holding the relay hostage: they connect from a
//! chosen loopback address, pipeline without reading, or drip bytes on a
//! timer (the pacing is the behaviour under test). Waiting for the
//! server's effect is always an event with a deadline: EOF, an error on
//! write, a reply.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

pub const FIRST_LOOPBACK: &str = "127.0.0.1";
/// Linux routes all of 127.0.0.0/8 to the loopback interface: a second
/// client address without any network.
pub const SECOND_LOOPBACK: &str = "127.0.0.2";

/// Connects to `server` from `local` (port chosen by the kernel). With
/// `receive_buffer`, the client's socket buffer is that small, so a server
/// writing to a client that does not read fills it quickly.
pub async fn connect_from(
    local: &str,
    server: SocketAddr,
    receive_buffer: Option<u32>,
) -> TcpStream {
    let local: IpAddr = local.parse().expect("a loopback address");
    let socket = TcpSocket::new_v4().expect("socket");
    if let Some(size) = receive_buffer {
        socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
    }
    socket
        .bind(SocketAddr::new(local, 0))
        .expect("bind a loopback source address");
    socket.connect(server).await.expect("connect")
}

/// Reads until the server closes (EOF or reset) or `wait` passes; returns
/// what arrived and when the close came (`None`: it did not come in time).
pub async fn read_until_closed(
    stream: &mut TcpStream,
    wait: Duration,
) -> (Vec<u8>, Option<Instant>) {
    let mut received = Vec::new();
    let closed = tokio::time::timeout(wait, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(read) => received.extend_from_slice(&buffer[..read]),
            }
        }
    })
    .await
    .ok();
    (received, closed)
}

/// Reads one reply line (up to CRLF), within `wait`.
pub async fn read_line(stream: &mut TcpStream, wait: Duration) -> String {
    let mut line = Vec::new();
    tokio::time::timeout(wait, async {
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            let read = stream.read(&mut byte).await.expect("read a reply");
            assert!(
                read > 0,
                "closed mid-reply after {:?}",
                String::from_utf8_lossy(&line)
            );
            line.push(byte[0]);
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no reply line in time; got {:?}",
            String::from_utf8_lossy(&line)
        )
    });
    String::from_utf8(line).expect("UTF-8 reply")
}

/// Sends `line` and CRLF, then reads one reply line.
pub async fn command(stream: &mut TcpStream, line: &str, wait: Duration) -> String {
    // A write to a connection the server has just closed may fail; the
    // reply it sent before closing is still there to read.
    let _ = stream.write_all(format!("{line}\r\n").as_bytes()).await;
    read_line(stream, wait).await
}

/// A client that pipelines `total` bytes of `pattern` and never reads.
pub struct Flood {
    /// Bytes the kernel has taken so far, updated after each chunk.
    pub written: tokio::sync::watch::Receiver<usize>,
    /// Ends only when a write fails (the server closed the connection),
    /// with the time of the failure. Once the whole flood is written the
    /// task holds the connection open, unread, until it is aborted.
    pub task: tokio::task::JoinHandle<Instant>,
}

impl Flood {
    pub fn start(mut stream: TcpStream, pattern: &'static [u8], total: usize) -> Flood {
        let (progress, written) = tokio::sync::watch::channel(0);
        let task = tokio::spawn(async move {
            let repeats = (64 * 1024 / pattern.len()).max(1);
            let chunk: Vec<u8> = pattern.repeat(repeats);
            let mut sent = 0;
            while sent < total {
                let size = chunk.len().min(total - sent);
                if stream.write_all(&chunk[..size]).await.is_err() {
                    return Instant::now();
                }
                sent += size;
                progress.send_replace(sent);
            }
            std::future::pending::<()>().await;
            drop(stream);
            Instant::now()
        });
        Flood { written, task }
    }

    /// Waits until at least `bytes` are written, within `wait`.
    pub async fn wait_written(&mut self, bytes: usize, wait: Duration) {
        let reached = tokio::time::timeout(wait, self.written.wait_for(|sent| *sent >= bytes))
            .await
            .is_ok_and(|changed| changed.is_ok());
        assert!(
            reached,
            "the flood wrote only {} of {bytes} bytes in {wait:?}",
            *self.written.borrow()
        );
    }

    /// Waits until a write fails because the server closed the connection,
    /// within `wait`; returns when it failed.
    pub async fn cut_off(self, wait: Duration) -> Instant {
        tokio::time::timeout(wait, self.task)
            .await
            .expect("the server closes the flooding connection in time")
            .expect("the flood task")
    }
}

/// The messages the server logs while it is installed (on this thread: a
/// `#[tokio::test]` runs the server's tasks on the test's thread), to tell
/// how each session ended.
#[derive(Clone, Default)]
pub struct ServerLog(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl ServerLog {
    /// Captures until the guard is dropped.
    pub fn capture() -> (ServerLog, tracing::subscriber::DefaultGuard) {
        use tracing_subscriber::layer::SubscriberExt;
        let log = ServerLog::default();
        let subscriber = tracing_subscriber::registry().with(log.clone());
        (log, tracing::subscriber::set_default(subscriber))
    }

    /// How many logged messages start with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.0
            .lock()
            .expect("log lock")
            .iter()
            .filter(|message| message.starts_with(prefix))
            .count()
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ServerLog {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _context: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        self.0.lock().expect("log lock").push(message.0);
    }
}

/// How a [`drip`] ended.
pub struct Dripped {
    /// What the server sent meanwhile.
    pub received: Vec<u8>,
    /// When it closed the connection, or (with `until_reply`) completed a
    /// reply line.
    pub at: Instant,
}

/// Writes what `next` gives on every tick of `every` (the client's own
/// pace: the behaviour under test) until it gives `None`, reading all the
/// while; ends when the server closes the connection, or with
/// `until_reply` when a reply line is complete; fails after `wait`.
pub async fn drip(
    stream: &mut TcpStream,
    every: Duration,
    mut next: impl FnMut() -> Option<Vec<u8>>,
    until_reply: bool,
    wait: Duration,
) -> Dripped {
    let mut ticks = tokio::time::interval(every);
    let mut received = Vec::new();
    let mut writing = true;
    let at = tokio::time::timeout(wait, async {
        let mut buffer = [0u8; 256];
        loop {
            tokio::select! {
                _ = ticks.tick(), if writing => match next() {
                    // A write fails once the server has closed; the read
                    // says so.
                    Some(bytes) => { let _ = stream.write_all(&bytes).await; }
                    None => writing = false,
                },
                read = stream.read(&mut buffer) => match read {
                    Ok(0) | Err(_) => return Instant::now(),
                    Ok(read) => {
                        received.extend_from_slice(&buffer[..read]);
                        if until_reply && received.ends_with(b"\r\n") {
                            return Instant::now();
                        }
                    }
                },
            }
        }
    })
    .await
    .expect("the server closes the connection or replies in time");
    Dripped { received, at }
}
