//! A line-level SMTP client for tests, over real TCP, upgrading to real TLS
//! (trusting a given CA file): one for the sandbox tests and the relay's
//! submission tests. Every wait is bounded by the caller's `wait`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

pub struct Client {
    transport: Option<Transport>,
    received: Vec<u8>,
    wait: Duration,
}

impl Client {
    /// Connects in plaintext; `wait` bounds every reply and handshake.
    pub async fn connect_addr(addr: SocketAddr, wait: Duration) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Client {
            transport: Some(Transport::Plain(stream)),
            received: Vec::new(),
            wait,
        }
    }

    /// Connects in plaintext from the loopback address `source` (any of
    /// 127.0.0.0/8 on Linux), as a device on another host would.
    pub async fn connect_from(
        addr: SocketAddr,
        source: std::net::IpAddr,
        wait: Duration,
    ) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(source, 0))
            .expect("bind the source address");
        let stream = tokio::time::timeout(wait, socket.connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        Client {
            transport: Some(Transport::Plain(stream)),
            received: Vec::new(),
            wait,
        }
    }

    pub async fn handshake(&mut self, ca_file: &Path) {
        let Some(Transport::Plain(stream)) = self.transport.take() else {
            panic!("handshake on a non-plaintext transport");
        };
        let config = oxirelay::tls::client_config(Some(ca_file)).expect("client TLS config");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let tls = tokio::time::timeout(self.wait, TlsConnector::from(config).connect(name, stream))
            .await
            .expect("handshake in time")
            .expect("handshake succeeds with the test CA");
        self.transport = Some(Transport::Tls(Box::new(tls)));
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        let result = match self.transport.as_mut().expect("connected") {
            Transport::Plain(stream) => stream.write_all(bytes).await,
            Transport::Tls(stream) => match stream.write_all(bytes).await {
                Ok(()) => stream.flush().await,
                Err(error) => Err(error),
            },
        };
        result.expect("write");
    }

    /// Reads once; 0 means the server closed (a reset counts as closed).
    async fn read_some(&mut self) -> usize {
        let mut buffer = [0u8; 4096];
        let read = match self.transport.as_mut().expect("connected") {
            Transport::Plain(stream) => stream.read(&mut buffer).await,
            Transport::Tls(stream) => stream.read(&mut buffer).await,
        };
        let read = read.unwrap_or(0);
        self.received.extend_from_slice(&buffer[..read]);
        read
    }

    /// The next complete reply (all its lines), as text.
    pub async fn reply(&mut self) -> String {
        tokio::time::timeout(self.wait, async {
            loop {
                if let Some(end) = complete_reply_end(&self.received) {
                    let reply: Vec<u8> = self.received.drain(..end).collect();
                    return String::from_utf8(reply).expect("UTF-8 reply");
                }
                if self.read_some().await == 0 {
                    panic!(
                        "connection closed before a complete reply; got {:?}",
                        String::from_utf8_lossy(&self.received)
                    );
                }
            }
        })
        .await
        .expect("a reply in time")
    }

    /// Sends a command line and returns the reply.
    pub async fn command(&mut self, line: &str) -> String {
        self.write(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// Waits until the server closes the connection; returns what it sent
    /// before closing.
    pub async fn closed(&mut self) -> String {
        tokio::time::timeout(self.wait, async { while self.read_some().await > 0 {} })
            .await
            .expect("the server closes in time");
        String::from_utf8_lossy(&std::mem::take(&mut self.received)).into_owned()
    }

    /// Greeting, EHLO, STARTTLS, handshake trusting `ca_file`, EHLO again.
    /// Returns the second EHLO reply.
    pub async fn greet_with_starttls_trusting(&mut self, ca_file: &Path) -> String {
        assert!(self.reply().await.starts_with("220 "));
        assert!(self.command("EHLO client.test").await.starts_with("250"));
        assert_eq!(
            self.command("STARTTLS").await,
            "220 2.0.0 Ready to start TLS\r\n"
        );
        self.handshake(ca_file).await;
        self.command("EHLO client.test").await
    }

    pub async fn auth_plain(&mut self, user: &str, password: &str) -> String {
        self.command(&format!("AUTH PLAIN {}", plain(user, password)))
            .await
    }

    /// MAIL, RCPT, DATA and `message` (which must end with CRLF); returns
    /// the reply to the end of data.
    pub async fn send(&mut self, from: &str, to: &str, message: &[u8]) -> String {
        let reply = self.command(&format!("MAIL FROM:<{from}>")).await;
        assert!(reply.starts_with("250"), "MAIL: {reply}");
        let reply = self.command(&format!("RCPT TO:<{to}>")).await;
        assert!(reply.starts_with("250"), "RCPT: {reply}");
        let reply = self.command("DATA").await;
        assert!(reply.starts_with("354"), "DATA: {reply}");
        self.write(message).await;
        self.write(b".\r\n").await;
        self.reply().await
    }
}

/// The end of the first complete reply in `bytes` (after the CRLF of its
/// last line, the one with a space after the code).
fn complete_reply_end(bytes: &[u8]) -> Option<usize> {
    let mut start = 0;
    while let Some(offset) = bytes[start..].windows(2).position(|w| w == b"\r\n") {
        let line = &bytes[start..start + offset];
        start += offset + 2;
        if line.len() < 4 || line[3] == b' ' {
            return Some(start);
        }
    }
    None
}

pub fn base64(raw: &str) -> String {
    oxirelay::smtp::sasl::encode_base64(raw.as_bytes())
}

pub fn plain(user: &str, password: &str) -> String {
    base64(&format!("\0{user}\0{password}"))
}

pub fn xoauth2(user: &str, token: &str) -> String {
    base64(&format!("user={user}\x01auth=Bearer {token}\x01\x01"))
}

pub fn oauthbearer(user: &str, token: &str) -> String {
    base64(&format!(
        "n,a={user},\x01host=localhost\x01port=587\x01auth=Bearer {token}\x01\x01"
    ))
}
