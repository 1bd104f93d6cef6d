//! The tokio I/O shell around [`Session`]: accepts connections, caps how
//! many run at once (per listener and per client address), reads and
//! writes within the deadlines of [`super::limits`], asks the
//! [`SessionPolicy`] the session's questions, upgrades to TLS on the same
//! socket for STARTTLS, and stops within a bounded time on a shutdown
//! signal. Protocol decisions are all in the session; what a client may
//! cost is all in `limits`.

use super::limits::{AddressSlot, CutOff, PerAddress, SessionClock, SessionLimits, ShutdownLimits};
use super::policy::{Channel, Credentials, Refusal, SessionContext, SessionEvent, SessionPolicy};
use super::reply::{Reply, standard};
use super::session::{Answer, Question, Session, SessionConfig, SessionError, Step};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_rustls::TlsAcceptor;

pub use crate::config::TlsMode;

/// Bytes asked of the socket per read.
const READ_BUFFER: usize = 16 * 1024;
/// Replies are flushed once this many bytes wait: pipelined `EHLO x` lines
/// of 8 bytes get ~200 bytes each back, so one full read could otherwise
/// queue some 400 KiB of replies per session.
const MAX_PENDING_OUTPUT: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub tls_mode: TlsMode,
    /// Sessions served at once; more get `421 4.3.2`.
    pub max_sessions: usize,
    /// Sessions at once from one client address (IPv6: one /64); more get
    /// `421 4.7.0` at connect (on implicit TLS: closed, no handshake).
    pub max_sessions_per_address: usize,
    /// The name in the greeting and in replies.
    pub hostname: String,
    /// Deadlines, paces and the lifetime of each session.
    pub limits: SessionLimits,
    /// How sessions end when the server stops.
    pub shutdown: ShutdownLimits,
}

/// Sessions per listener: Postfix's default process limit, which in turn
/// caps its smtpd sessions.
pub const DEFAULT_MAX_SESSIONS: usize = 100;
/// A tenth of the listener: enough for a device or an app that opens a few
/// sessions in parallel; one address holding its whole share still leaves
/// 90 places to everyone else.
pub const DEFAULT_MAX_SESSIONS_PER_ADDRESS: usize = 10;

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            tls_mode: TlsMode::Starttls,
            max_sessions: DEFAULT_MAX_SESSIONS,
            max_sessions_per_address: DEFAULT_MAX_SESSIONS_PER_ADDRESS,
            hostname: "localhost".into(),
            limits: SessionLimits::default(),
            shutdown: ShutdownLimits::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "the listener's TLS mode is {mode:?} but no TLS certificate was given; \
         configure cert and key, or use tls = \"none\" on an allow-listed listener"
    )]
    MissingTlsConfig { mode: TlsMode },
}

/// Why one session ended abnormally (logged, never shown to the client).
#[derive(Debug, thiserror::Error)]
enum SessionIoError {
    #[error("network error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the TLS handshake was cut off: {0}")]
    HandshakeCut(CutOff),
    #[error("the session state machine was misused: {0}")]
    Session(#[from] SessionError),
    #[error("the session waited for an answer the shell never gave")]
    Blocked,
    #[error("the session asked for TLS on a listener without a certificate")]
    NoTlsConfig,
    #[error("the session asked for TLS twice")]
    SecondStartTls,
}

/// Tells a running [`serve`] to stop. Dropping it stops the server too.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<Option<Instant>>);

/// What [`serve`] and its sessions watch for shutdown.
#[derive(Debug, Clone)]
pub struct ShutdownSignal(watch::Receiver<Option<Instant>>);

pub fn shutdown_channel() -> (ShutdownTrigger, ShutdownSignal) {
    let (sender, receiver) = watch::channel(None);
    (ShutdownTrigger(sender), ShutdownSignal(receiver))
}

impl ShutdownTrigger {
    /// Stops the server; the first call's time is when the stop began.
    pub fn trigger(&self) {
        self.0.send_if_modified(|stop| {
            let first = stop.is_none();
            stop.get_or_insert_with(Instant::now);
            first
        });
    }
}

impl ShutdownSignal {
    /// Resolves once shutdown is triggered (or the trigger is dropped).
    pub async fn triggered(&mut self) {
        // An error means the trigger is gone: nobody can stop us any more
        // otherwise, so treat it as a stop.
        let _ = self.0.wait_for(|stop| stop.is_some()).await;
    }

    pub fn is_triggered(&self) -> bool {
        self.0.borrow().is_some() || self.0.has_changed().is_err()
    }

    /// When the stop began: the trigger's time, or now if the trigger was
    /// dropped without one.
    pub fn stopped_at(&self) -> Instant {
        (*self.0.borrow()).unwrap_or_else(Instant::now)
    }
}

/// Serves SMTP on `listener` until `shutdown` is triggered, then ends the
/// running sessions: those waiting for a command at once with `421 4.3.2`,
/// those receiving a message after it (or after the DATA grace), and any
/// still running at the shutdown deadline are dropped.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    policy: Arc<dyn SessionPolicy>,
    options: ServerOptions,
    mut shutdown: ShutdownSignal,
) -> Result<(), ServeError> {
    let acceptor = match (options.tls_mode, tls) {
        (TlsMode::None, _) => None,
        (_, Some(config)) => Some(TlsAcceptor::from(config)),
        (mode, None) => return Err(ServeError::MissingTlsConfig { mode }),
    };
    let options = Arc::new(options);
    let slots = Arc::new(Semaphore::new(options.max_sessions));
    let per_address = PerAddress::new(options.max_sessions_per_address);
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.triggered() => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Usually out of file descriptors: back off briefly
                        // instead of spinning on the error.
                        tracing::warn!(%error, "accepting an SMTP connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, limit = options.max_sessions, "SMTP connection refused: every session slot of the listener is taken");
                    refuse_at_accept(&stream, &options, standard::too_many_connections(&options.hostname));
                    continue;
                };
                let Some(address) = per_address.try_acquire(peer.ip()) else {
                    tracing::info!(%peer, limit = options.max_sessions_per_address, "SMTP connection refused: too many sessions from this address");
                    refuse_at_accept(&stream, &options, standard::too_many_from_address(&options.hostname));
                    continue;
                };
                let connection = Connection {
                    admission: Some(Admission { _slot: slot, _address: address }),
                    clock: SessionClock::new(&options.limits, options.shutdown.data_grace, Instant::now()),
                    peer,
                    acceptor: acceptor.clone(),
                    policy: policy.clone(),
                    options: options.clone(),
                    shutdown: shutdown.clone(),
                };
                sessions.spawn(connection.run(stream));
            }
        }
    }
    drop(listener);
    let deadline = shutdown.stopped_at() + options.shutdown.deadline;
    let drained = timeout_at(deadline, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            sessions = sessions.len(),
            deadline = ?options.shutdown.deadline,
            "SMTP sessions still running at the shutdown deadline were dropped; \
             none had its message acknowledged, so their clients will send again"
        );
        sessions.shutdown().await;
    }
    Ok(())
}

/// Refuses a connection at accept, without a task: a fresh socket's send
/// buffer is empty, so the reply goes out at once or not at all, and
/// dropping the stream closes it. On an implicit-TLS port a plaintext reply
/// is noise to a client speaking TLS, so it just closes.
fn refuse_at_accept(stream: &TcpStream, options: &ServerOptions, reply: Reply) {
    if options.tls_mode != TlsMode::Implicit {
        let _ = stream.try_write(&reply.to_bytes());
    }
}

/// What ended one pass of [`Connection::drive`].
enum Driven<S> {
    Closed,
    StartTls(S),
}

/// A session's places under the listener's caps; dropped when it ends.
struct Admission {
    _slot: OwnedSemaphorePermit,
    _address: AddressSlot,
}

/// What one read brought.
enum Read {
    Bytes(usize),
    Eof,
    Cut(CutOff),
}

struct Connection {
    /// `None` once the session has ended (see [`Connection::end`]).
    admission: Option<Admission>,
    clock: SessionClock,
    peer: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    policy: Arc<dyn SessionPolicy>,
    options: Arc<ServerOptions>,
    shutdown: ShutdownSignal,
}

impl Connection {
    async fn run(mut self, stream: TcpStream) {
        self.policy.observe(&SessionEvent::Connected);
        if let Err(error) = self.serve_connection(stream).await {
            tracing::debug!(peer = %self.peer, %error, "SMTP session ended with an error");
        }
        self.end();
    }

    /// Frees the session's places and reports its end, once. Called before
    /// the socket is closed when the session ends on purpose, so a client
    /// that sees the close can connect again at once.
    fn end(&mut self) {
        if self.admission.take().is_some() {
            self.policy.on_disconnect(self.peer);
            self.policy.observe(&SessionEvent::Closed);
        }
    }

    async fn serve_connection(&mut self, stream: TcpStream) -> Result<(), SessionIoError> {
        let admission = self.policy.on_connect(self.peer).await;
        let implicit = self.options.tls_mode == TlsMode::Implicit;
        let acceptor = self.acceptor.clone();
        let rules = match admission {
            Ok(rules) => rules,
            // A refused address gets no TLS handshake: it would cost the
            // server a key exchange and a signature per attempt for a
            // refusal the client could read only after it. Just close.
            Err(_) if implicit => {
                self.end();
                return Ok(());
            }
            Err(Refusal::Reply(reply)) => {
                self.finish(stream, Some(reply)).await;
                return Ok(());
            }
            Err(Refusal::Disconnect) => {
                self.end();
                return Ok(());
            }
        };
        let mut session = Session::new(SessionConfig {
            hostname: self.options.hostname.clone(),
            peer: self.peer,
            channel: if implicit {
                Channel::Tls
            } else {
                Channel::Plaintext
            },
            starttls_available: !implicit && acceptor.is_some(),
            rules,
        });
        match (implicit, acceptor) {
            (true, Some(acceptor)) => {
                let tls = self.handshake(&acceptor, stream).await?;
                self.drive(tls, &mut session).await?;
            }
            (_, acceptor) => {
                if let Driven::StartTls(stream) = self.drive(stream, &mut session).await? {
                    let Some(acceptor) = acceptor else {
                        // The session offers STARTTLS only when the listener
                        // has TLS, so this cannot happen; end the session.
                        return Err(SessionIoError::NoTlsConfig);
                    };
                    let tls = self.handshake(&acceptor, stream).await?;
                    session.tls_established()?;
                    // RFC 3207: the client speaks first again (EHLO).
                    self.clock.expect_command(Instant::now());
                    if let Driven::StartTls(_) = self.drive(tls, &mut session).await? {
                        // A second STARTTLS is refused by the session.
                        return Err(SessionIoError::SecondStartTls);
                    }
                }
            }
        }
        Ok(())
    }

    /// The TLS handshake, within the command deadline and the lifetime,
    /// and given up at once on shutdown.
    async fn handshake(
        &mut self,
        acceptor: &TlsAcceptor,
        stream: TcpStream,
    ) -> Result<tokio_rustls::server::TlsStream<TcpStream>, SessionIoError> {
        let (deadline, reason) = self.clock.handshake_deadline(Instant::now());
        tokio::select! {
            result = acceptor.accept(stream) => Ok(result?),
            _ = sleep_until(deadline) => Err(SessionIoError::HandshakeCut(reason)),
            _ = self.shutdown.triggered() => Err(SessionIoError::HandshakeCut(CutOff::Shutdown)),
        }
    }

    /// Runs the session over `stream` until it closes or asks for TLS.
    async fn drive<S>(
        &mut self,
        mut stream: S,
        session: &mut Session,
    ) -> Result<Driven<S>, SessionIoError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut pending_output = Vec::new();
        let mut buffer = vec![0u8; READ_BUFFER];
        // A reply since the last read: the client's next command is due.
        let mut replied = false;
        // Bounded: every turn either writes or reads (each within a
        // deadline), or hands the session an answer that moves it forward.
        loop {
            match session.poll() {
                Step::Reply(reply) => {
                    if let Some(delay) = self.policy.reply_delay() {
                        if !self.flush(&mut stream, &mut pending_output).await? {
                            return Ok(self.abandon(stream));
                        }
                        tokio::time::sleep(delay).await;
                    }
                    pending_output.extend_from_slice(&reply.to_bytes());
                    replied = true;
                    if pending_output.len() >= MAX_PENDING_OUTPUT
                        && !self.flush(&mut stream, &mut pending_output).await?
                    {
                        return Ok(self.abandon(stream));
                    }
                }
                Step::Observe(event) => self.policy.observe(&event),
                Step::Decide(question) => {
                    let answer = decide(self.policy.as_ref(), session.context(), question).await;
                    session.resolve(answer)?;
                }
                Step::StartTls => {
                    if !self.flush(&mut stream, &mut pending_output).await? {
                        return Ok(self.abandon(stream));
                    }
                    return Ok(Driven::StartTls(stream));
                }
                Step::Close => {
                    if !self.flush(&mut stream, &mut pending_output).await? {
                        return Ok(self.abandon(stream));
                    }
                    self.finish(stream, None).await;
                    return Ok(Driven::Closed);
                }
                Step::Blocked => return Err(SessionIoError::Blocked),
                Step::NeedInput => {
                    if !self.flush(&mut stream, &mut pending_output).await? {
                        return Ok(self.abandon(stream));
                    }
                    let now = Instant::now();
                    if session.in_data() {
                        // The 354 just went out (or the clock missed it).
                        if replied || !self.clock.in_data() {
                            self.clock.start_data(now);
                        }
                    } else if replied || self.clock.in_data() {
                        self.clock.expect_command(now);
                    }
                    replied = false;
                    match self.read(&mut stream, &mut buffer).await? {
                        Read::Bytes(read) => {
                            self.clock.received(read, Instant::now());
                            session.feed(&buffer[..read]);
                        }
                        Read::Eof => return Ok(Driven::Closed),
                        Read::Cut(reason) => {
                            tracing::info!(peer = %self.peer, %reason, "SMTP session cut off with 421");
                            let reply = reason.reply(session.hostname());
                            self.finish(stream, Some(reply)).await;
                            return Ok(Driven::Closed);
                        }
                    }
                }
            }
        }
    }

    /// Writes the replies waiting, within the write deadline (shortened if
    /// the server starts stopping meanwhile). `false`: the client did not
    /// take them in time.
    async fn flush<S: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        pending_output: &mut Vec<u8>,
    ) -> std::io::Result<bool> {
        let mut deadline = self.clock.write_deadline(Instant::now());
        {
            let write = async {
                if !pending_output.is_empty() {
                    stream.write_all(pending_output).await?;
                }
                stream.flush().await
            };
            tokio::pin!(write);
            // Bounded: the shutdown branch runs at most once.
            loop {
                tokio::select! {
                    written = &mut write => {
                        written?;
                        break;
                    }
                    _ = sleep_until(deadline) => return Ok(false),
                    _ = self.shutdown.triggered(), if !self.clock.stopping() => {
                        self.clock.stop(self.shutdown.stopped_at());
                        deadline = deadline.min(self.clock.write_deadline(Instant::now()));
                    }
                }
            }
        }
        pending_output.clear();
        Ok(true)
    }

    /// Reads within the session's deadline; on shutdown, waits on only if
    /// a message is being received (its grace).
    async fn read<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
        buffer: &mut [u8],
    ) -> std::io::Result<Read> {
        // Bounded: the shutdown branch runs at most once.
        loop {
            let (deadline, reason) = self.clock.read_deadline();
            if deadline <= Instant::now() {
                return Ok(Read::Cut(reason));
            }
            tokio::select! {
                read = stream.read(buffer) => {
                    return Ok(match read? {
                        0 => Read::Eof,
                        read => Read::Bytes(read),
                    });
                }
                _ = sleep_until(deadline) => return Ok(Read::Cut(reason)),
                _ = self.shutdown.triggered(), if !self.clock.stopping() => {
                    self.clock.stop(self.shutdown.stopped_at());
                }
            }
        }
    }

    /// Ends the session on purpose: its last reply (if any) within the
    /// closing deadline, its places freed, then the socket closed, also
    /// within that deadline (over TLS the close_notify is a write too).
    async fn finish<S: AsyncWrite + Unpin>(&mut self, mut stream: S, reply: Option<Reply>) {
        let deadline = self.clock.closing_deadline(Instant::now());
        if let Some(reply) = reply {
            // The client may be gone or not reading; the session ends
            // either way.
            let _ = timeout_at(deadline, async {
                stream.write_all(&reply.to_bytes()).await?;
                stream.flush().await
            })
            .await;
        }
        self.end();
        let _ = timeout_at(deadline, stream.shutdown()).await;
    }

    /// Ends a session whose client does not read its replies: nothing more
    /// can be written, so the socket is just closed.
    fn abandon<S>(&mut self, stream: S) -> Driven<S> {
        tracing::info!(
            peer = %self.peer,
            write_timeout = ?self.options.limits.write_timeout,
            "SMTP session closed: the client did not read its replies in time"
        );
        self.end();
        drop(stream);
        Driven::Closed
    }
}

/// Puts one question to the policy.
async fn decide(
    policy: &dyn SessionPolicy,
    context: &SessionContext,
    question: Question,
) -> Answer {
    match question {
        Question::Hello => Answer::Hello(policy.check_hello(context).await),
        Question::Authenticate(Credentials::Bearer {
            mechanism,
            user,
            token,
        }) => Answer::Authenticate(
            policy
                .verify_bearer(context, mechanism, &user, &token)
                .await,
        ),
        Question::Authenticate(Credentials::Password { user, password, .. }) => {
            Answer::Authenticate(policy.verify_password(context, &user, &password).await)
        }
        Question::Sender { mail_from } => {
            Answer::Sender(policy.check_sender(context, &mail_from).await)
        }
        Question::Recipient { envelope, rcpt_to } => {
            Answer::Recipient(policy.check_recipient(context, &envelope, &rcpt_to).await)
        }
        Question::Data { envelope } => Answer::Data(policy.check_data(context, &envelope).await),
        Question::Message { envelope, message } => {
            Answer::Message(policy.accept_message(context, &envelope, &message).await)
        }
    }
}
