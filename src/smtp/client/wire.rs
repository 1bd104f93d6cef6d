//! The thin I/O shell under a session: writes bytes and reads whole replies
//! with a deadline, turning every failure into a [`ClientError`] that names
//! the server and the stage. Once anything goes wrong the wire is marked
//! unusable, because the position in the conversation is no longer known.

use super::error::{ClientError, Stage};
use super::reply::{Reply, ReplyReader};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::client::TlsStream;

/// The transport of a session that may authenticate: TLS, or plaintext that
/// `PlaintextSession::allow_plaintext_on_loopback` let through.
pub(crate) enum Transport {
    Tls(Box<TlsStream<TcpStream>>),
    LoopbackPlaintext(TcpStream),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
            Transport::LoopbackPlaintext(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
            Transport::LoopbackPlaintext(stream) => Pin::new(stream).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
            Transport::LoopbackPlaintext(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
            Transport::LoopbackPlaintext(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}

pub(crate) struct Wire<S> {
    stream: S,
    reader: ReplyReader,
    /// `host:port` for errors.
    address: String,
    usable: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    pub fn new(stream: S, address: String) -> Self {
        Wire {
            stream,
            reader: ReplyReader::new(),
            address,
            usable: true,
        }
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn is_usable(&self) -> bool {
        self.usable
    }

    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// Bytes the server sent that no reply has consumed yet.
    pub fn buffered(&self) -> usize {
        self.reader.buffered()
    }

    /// Hands the stream over (for the TLS upgrade); buffered bytes are dropped.
    pub fn into_parts(self) -> (S, String) {
        (self.stream, self.address)
    }

    pub fn ensure_usable(&self) -> Result<(), ClientError> {
        if self.usable {
            Ok(())
        } else {
            Err(ClientError::Unusable {
                address: self.address.clone(),
            })
        }
    }

    pub async fn write(
        &mut self,
        bytes: &[u8],
        stage: Stage,
        limit: Duration,
    ) -> Result<(), ClientError> {
        let deadline = Instant::now() + limit;
        let result = timeout_at(deadline, async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        })
        .await;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(self.io_error(error, stage)),
            Err(_) => Err(self.timeout(stage, limit)),
        }
    }

    pub async fn read_reply(
        &mut self,
        stage: Stage,
        limit: Duration,
    ) -> Result<Reply, ClientError> {
        let deadline = Instant::now() + limit;
        let mut chunk = [0u8; 4096];
        // Bounded: each turn either completes a reply, fails, or adds bytes
        // to a reader that refuses more than one maximal reply.
        loop {
            match self.reader.next_reply() {
                Ok(Some(reply)) => {
                    // 421: the server is closing the connection (RFC 5321
                    // section 3.8); nothing more can be done on it.
                    if reply.code == 421 {
                        self.usable = false;
                    }
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(error) => {
                    self.usable = false;
                    return Err(ClientError::Protocol {
                        address: self.address.clone(),
                        stage,
                        detail: error.to_string(),
                    });
                }
            }
            match timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) => {
                    self.usable = false;
                    return Err(ClientError::Closed {
                        address: self.address.clone(),
                        stage,
                    });
                }
                Ok(Ok(read)) => self.reader.feed(&chunk[..read]),
                Ok(Err(error)) => return Err(self.io_error(error, stage)),
                Err(_) => return Err(self.timeout(stage, limit)),
            }
        }
    }

    /// Writes one command line and reads its reply.
    pub async fn command(
        &mut self,
        line: &str,
        stage: Stage,
        limit: Duration,
    ) -> Result<Reply, ClientError> {
        self.write(line.as_bytes(), stage, limit).await?;
        self.read_reply(stage, limit).await
    }

    pub async fn shutdown(&mut self) {
        self.usable = false;
        // The server may already have closed; nothing useful to report.
        let _ = self.stream.shutdown().await;
    }

    fn io_error(&mut self, error: io::Error, stage: Stage) -> ClientError {
        self.usable = false;
        match error.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => ClientError::Closed {
                address: self.address.clone(),
                stage,
            },
            _ => ClientError::Io {
                address: self.address.clone(),
                stage,
                reason: error.to_string(),
            },
        }
    }

    fn timeout(&mut self, stage: Stage, after: Duration) -> ClientError {
        self.usable = false;
        ClientError::Timeout {
            address: self.address.clone(),
            stage,
            after,
        }
    }
}
