//! A scripted SMTP server for the client's tests: a tokio task on
//! 127.0.0.1:0 that follows a list of steps (expect this line, send that
//! reply, start TLS) and records every byte the client sent, split at the
//! TLS upgrade so a test can prove what crossed the wire in plaintext.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Scripts end well within this; a client that stalls fails the test.
const PEER_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub enum Step {
    /// Write these bytes (one or more complete replies).
    Send(String),
    /// Read one line and require it to equal this (without CRLF).
    Expect(String),
    /// Read the DATA content up to and including `CRLF.CRLF` and require it
    /// to equal these bytes exactly.
    ExpectData(Vec<u8>),
    /// TLS handshake as the server (after a 220 to STARTTLS, or first thing
    /// for implicit TLS).
    StartTls,
    /// Read until the client closes.
    ReadToEnd,
}

pub fn send(reply: &str) -> Step {
    Step::Send(reply.to_string())
}

pub fn expect(line: &str) -> Step {
    Step::Expect(line.to_string())
}

/// What the client wrote.
#[derive(Debug, Default)]
pub struct Transcript {
    pub plaintext: Vec<u8>,
    pub encrypted: Vec<u8>,
}

impl Transcript {
    pub fn all(&self) -> Vec<u8> {
        [self.plaintext.as_slice(), self.encrypted.as_slice()].concat()
    }
}

pub struct Peer {
    pub addr: SocketAddr,
    listener: Option<TcpListener>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

pub struct RunningPeer {
    handle: JoinHandle<Result<Transcript, String>>,
}

impl Peer {
    pub async fn bind(tls: Option<Arc<rustls::ServerConfig>>) -> Peer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        Peer {
            addr: listener.local_addr().expect("local addr"),
            listener: Some(listener),
            tls,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Accepts one connection and plays `script` on it.
    pub fn run(mut self, script: Vec<Step>) -> RunningPeer {
        let listener = self.listener.take().expect("run once");
        let tls = self.tls.take();
        let handle = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
            let mut session = PeerSession {
                stream: PeerStream::Plain(tcp),
                buffer: Vec::new(),
                transcript: Transcript::default(),
                tls,
            };
            let outcome = session.play(script).await;
            match outcome {
                Ok(()) => Ok(session.transcript),
                Err(error) => Err(format!(
                    "{error}; the client sent so far: {:?}",
                    String::from_utf8_lossy(&session.transcript.all())
                )),
            }
        });
        RunningPeer { handle }
    }
}

impl RunningPeer {
    /// Waits for the script to finish; the peer's own failure is an `Err`.
    pub async fn finish(self) -> Result<Transcript, String> {
        match tokio::time::timeout(PEER_DEADLINE, self.handle).await {
            Ok(Ok(result)) => result,
            Ok(Err(join_error)) => Err(join_error.to_string()),
            Err(_) => Err("the scripted peer did not finish in time".into()),
        }
    }
}

struct PeerSession {
    stream: PeerStream,
    buffer: Vec<u8>,
    transcript: Transcript,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl PeerSession {
    async fn play(&mut self, script: Vec<Step>) -> Result<(), String> {
        for step in script {
            match step {
                Step::Send(bytes) => {
                    self.stream
                        .write_all(bytes.as_bytes())
                        .await
                        .map_err(|e| format!("writing {bytes:?}: {e}"))?;
                }
                Step::Expect(expected) => {
                    let line = self.read_until(b"\n").await?;
                    let line = String::from_utf8_lossy(&line);
                    let line = line.trim_end_matches("\r\n");
                    if line != expected {
                        return Err(format!("expected {expected:?}, got {line:?}"));
                    }
                }
                Step::ExpectData(expected) => {
                    let mut data = Vec::new();
                    // Bounded by the client's message and the deadline.
                    loop {
                        let line = self.read_until(b"\n").await?;
                        data.extend_from_slice(&line);
                        if line == b".\r\n" {
                            break;
                        }
                    }
                    if data != expected {
                        return Err(format!(
                            "expected data {:?}, got {:?}",
                            String::from_utf8_lossy(&expected),
                            String::from_utf8_lossy(&data)
                        ));
                    }
                }
                Step::StartTls => {
                    if !self.buffer.is_empty() {
                        return Err("the client sent bytes before the TLS handshake".into());
                    }
                    let config = self.tls.clone().ok_or("no TLS config for the peer")?;
                    let PeerStream::Plain(tcp) =
                        std::mem::replace(&mut self.stream, PeerStream::Upgrading)
                    else {
                        return Err("TLS started twice".into());
                    };
                    let tls = tokio_rustls::TlsAcceptor::from(config)
                        .accept(tcp)
                        .await
                        .map_err(|e| format!("TLS handshake: {e}"))?;
                    self.stream = PeerStream::Tls(Box::new(tls));
                }
                Step::ReadToEnd => {
                    let mut chunk = [0u8; 1024];
                    loop {
                        match self.stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => self.record(&chunk[..n]),
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn record(&mut self, bytes: &[u8]) {
        match self.stream {
            PeerStream::Tls(_) => self.transcript.encrypted.extend_from_slice(bytes),
            _ => self.transcript.plaintext.extend_from_slice(bytes),
        }
    }

    /// Reads up to and including `end`.
    async fn read_until(&mut self, end: &[u8]) -> Result<Vec<u8>, String> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(pos) = self.buffer.windows(end.len()).position(|w| w == end) {
                return Ok(self.buffer.drain(..pos + end.len()).collect());
            }
            let n = self
                .stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("reading: {e}"))?;
            if n == 0 {
                return Err("the client closed the connection".into());
            }
            self.record(&chunk[..n]);
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }
}

enum PeerStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Upgrading,
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            PeerStream::Upgrading => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            PeerStream::Upgrading => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_flush(cx),
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            PeerStream::Upgrading => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            PeerStream::Upgrading => Poll::Ready(Ok(())),
        }
    }
}

/// A CA and a leaf certificate for `names`, as the tests' trust setup.
pub struct TestPki {
    pub server_config: Arc<rustls::ServerConfig>,
    pub client_config: Arc<rustls::ClientConfig>,
    _ca_file: tempfile::NamedTempFile,
}

impl TestPki {
    pub fn for_names(names: &[&str]) -> TestPki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf_key = KeyPair::generate().expect("leaf key");
        let leaf_params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        let leaf = leaf_params
            .signed_by(&leaf_key, &issuer)
            .expect("leaf certificate");

        let mut ca_file = tempfile::NamedTempFile::new().expect("temp file");
        std::io::Write::write_all(&mut ca_file, ca_cert.pem().as_bytes()).expect("write CA");
        let client_config = crate::tls::client_config(Some(ca_file.path())).expect("client config");
        let server_config = crate::tls::server_config(
            vec![CertificateDer::from(leaf.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .expect("server config");
        TestPki {
            server_config,
            client_config,
            _ca_file: ca_file,
        }
    }
}
