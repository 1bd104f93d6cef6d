//! The load generator's SMTP submission session: connect (from a chosen
//! source address if asked), EHLO, STARTTLS (trusting a given CA), EHLO
//! again, AUTH PLAIN or XOAUTH2, then message after message; or, for a
//! listener that maps the client's network to an identity (`[[network]]`),
//! plain EHLO and no AUTH. Written here rather than with `oxirelay::smtp::client`
//! because that client authenticates only with OAuth (it is the upstream
//! client) and a benchmark needs PLAIN for the relay; the SASL payloads
//! come from `oxirelay::smtp::sasl`, the one place they are encoded.
//!
//! Every read and write is bounded by the caller's deadline.

use oxirelay::secret::Secret;
use oxirelay::smtp::sasl::{
    BearerCredentials, PasswordCredentials, encode_base64, encode_plain, encode_xoauth2,
};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

/// A longer reply than this is not SMTP; stop reading rather than grow.
const MAX_REPLY_LINES: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("timed out")]
    Timeout,
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server closed the connection")]
    Closed,
    #[error("unexpected reply to {step}: {reply}")]
    Refused { step: &'static str, reply: String },
    #[error("the server does not offer STARTTLS")]
    NoStartTls,
    #[error("TLS: {0}")]
    Tls(String),
}

/// How to authenticate.
#[derive(Clone)]
pub enum Credentials {
    Plain {
        user: String,
        password: Secret,
    },
    XOAuth2 {
        user: String,
        token: Secret,
    },
    /// No TLS and no AUTH: the listener knows the client by its address.
    None,
}

/// What a session needs to open.
#[derive(Clone)]
pub struct Target {
    pub addr: String,
    pub server_name: rustls_pki_types::ServerName<'static>,
    /// The TLS client for STARTTLS; `None` only with [`Credentials::None`].
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub credentials: Credentials,
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A session ready for MAIL FROM: authenticated, or known by its address
/// ([`Credentials::None`]).
pub struct Session {
    io: BufReader<Box<dyn Stream>>,
    pipelining: bool,
    deadline: Instant,
}

impl Session {
    /// Opens a session to `target`, from `source` (an address on this
    /// machine) when given.
    pub async fn open(
        target: &Target,
        source: Option<IpAddr>,
        deadline: Instant,
    ) -> Result<Session, WireError> {
        let tcp = within(deadline, connect(&target.addr, source)).await??;
        tcp.set_nodelay(true)?;
        let mut session = Session {
            io: BufReader::new(Box::new(tcp)),
            pipelining: false,
            deadline,
        };
        session.expect("greeting", 220).await?;
        let ehlo = session
            .command("EHLO", "EHLO loadgen.localhost", 250)
            .await?;
        let Some(line) = auth_line(&target.credentials) else {
            session.pipelining = has_extension(&ehlo, "PIPELINING");
            return Ok(session);
        };
        let Some(tls_config) = target.tls.clone() else {
            return Err(WireError::Tls("AUTH needs a CA file for STARTTLS".into()));
        };
        if !has_extension(&ehlo, "STARTTLS") {
            return Err(WireError::NoStartTls);
        }
        session.command("STARTTLS", "STARTTLS", 220).await?;
        // STARTTLS: nothing read before the handshake may be kept, and the
        // reader holds nothing more here because we sent nothing more.
        let plain = session.io.into_inner();
        let connector = tokio_rustls::TlsConnector::from(tls_config);
        let tls = within(
            deadline,
            connector.connect(target.server_name.clone(), plain),
        )
        .await?
        .map_err(|e| WireError::Tls(e.to_string()))?;
        session.io = BufReader::new(Box::new(tls));
        let ehlo = session
            .command("EHLO", "EHLO loadgen.localhost", 250)
            .await?;
        session.pipelining = has_extension(&ehlo, "PIPELINING");
        session.write(line.expose().as_bytes()).await?;
        session.expect("AUTH", 235).await?;
        Ok(session)
    }

    /// Submits one message (`data` is dot-stuffed and ends with
    /// CRLF.CRLF). Returns the time from writing the end of data to the
    /// server's 250: the submission latency the relay's durability costs.
    pub async fn submit(
        &mut self,
        from: &str,
        to: &str,
        data: &[u8],
    ) -> Result<Duration, WireError> {
        let mail = format!("MAIL FROM:<{from}> SIZE={}", data.len());
        let rcpt = format!("RCPT TO:<{to}>");
        if self.pipelining {
            self.write_raw(format!("{mail}\r\n{rcpt}\r\nDATA\r\n").as_bytes())
                .await?;
            self.expect("MAIL FROM", 250).await?;
            self.expect("RCPT TO", 250).await?;
            self.expect("DATA", 354).await?;
        } else {
            self.command("MAIL FROM", &mail, 250).await?;
            self.command("RCPT TO", &rcpt, 250).await?;
            self.command("DATA", "DATA", 354).await?;
        }
        self.write_raw(data).await?;
        let sent = Instant::now();
        self.expect("end of data", 250).await?;
        Ok(sent.elapsed())
    }

    /// Ends a failed transaction so the session can be used again.
    pub async fn reset(&mut self) -> Result<(), WireError> {
        self.command("RSET", "RSET", 250).await.map(drop)
    }

    pub async fn quit(mut self) {
        let _ = self.command("QUIT", "QUIT", 221).await;
    }

    async fn command(
        &mut self,
        step: &'static str,
        line: &str,
        code: u16,
    ) -> Result<String, WireError> {
        self.write(line.as_bytes()).await?;
        self.expect(step, code).await
    }

    async fn write(&mut self, line: &[u8]) -> Result<(), WireError> {
        let mut bytes = Vec::with_capacity(line.len() + 2);
        bytes.extend_from_slice(line);
        bytes.extend_from_slice(b"\r\n");
        self.write_raw(&bytes).await
    }

    async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        let io = self.io.get_mut();
        within(self.deadline, async {
            io.write_all(bytes).await?;
            io.flush().await
        })
        .await??;
        Ok(())
    }

    /// Reads one (possibly multi-line) reply and checks its code.
    async fn expect(&mut self, step: &'static str, code: u16) -> Result<String, WireError> {
        let mut reply = String::new();
        for _ in 0..MAX_REPLY_LINES {
            let mut line = String::new();
            let read = within(self.deadline, self.io.read_line(&mut line)).await??;
            if read == 0 {
                return Err(WireError::Closed);
            }
            reply.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                let got: Option<u16> = line.get(..3).and_then(|c| c.parse().ok());
                if got == Some(code) {
                    return Ok(reply);
                }
                return Err(WireError::Refused {
                    step,
                    reply: reply.trim_end().to_string(),
                });
            }
        }
        Err(WireError::Refused {
            step,
            reply: format!("more than {MAX_REPLY_LINES} reply lines"),
        })
    }
}

/// The AUTH command with its initial response, or `None` without AUTH.
fn auth_line(credentials: &Credentials) -> Option<Secret> {
    let initial = match credentials {
        Credentials::Plain { user, password } => format!(
            "AUTH PLAIN {}",
            encode_base64(
                encode_plain(&PasswordCredentials {
                    authzid: None,
                    user: user.clone(),
                    password: password.clone(),
                })
                .expose()
                .as_bytes()
            )
        ),
        Credentials::XOAuth2 { user, token } => format!(
            "AUTH XOAUTH2 {}",
            encode_base64(
                encode_xoauth2(&BearerCredentials {
                    user: user.clone(),
                    token: token.clone(),
                })
                .expose()
                .as_bytes()
            )
        ),
        Credentials::None => return None,
    };
    Some(Secret::new(initial))
}

/// A TCP connection to `addr`, bound to `source` first when given (another
/// loopback address stands for another host).
async fn connect(addr: &str, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(addr).await;
    };
    let remote: SocketAddr = tokio::net::lookup_host(addr)
        .await?
        .find(|candidate| candidate.is_ipv4() == source.is_ipv4())
        .ok_or_else(|| std::io::Error::other(format!("{addr} has no address like {source}")))?;
    let socket = if source.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(remote).await
}

fn has_extension(ehlo: &str, name: &str) -> bool {
    ehlo.lines().any(|line| {
        line.get(4..)
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|keyword| keyword.eq_ignore_ascii_case(name))
    })
}

/// One step may take this long: far beyond any healthy reply, so a stalled
/// server costs one worker this much, not the whole run.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

async fn within<F: std::future::Future>(
    deadline: Instant,
    future: F,
) -> Result<F::Output, WireError> {
    let until = deadline.min(Instant::now() + STEP_TIMEOUT);
    tokio::time::timeout_at(until.into(), future)
        .await
        .map_err(|_| WireError::Timeout)
}
