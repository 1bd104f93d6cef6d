//! The tokio I/O shell around [`Session`]: accepts connections, caps how
//! many run at once, reads with a timeout, asks the [`SessionPolicy`] the
//! session's questions, upgrades to TLS on the same socket for STARTTLS, and
//! stops on a shutdown signal. Protocol decisions are all in the session.

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
use tokio_rustls::TlsAcceptor;

pub use crate::config::TlsMode;

#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub tls_mode: TlsMode,
    /// How long to wait for each read from the client. RFC 5321 section
    /// 4.5.3.2 suggests 5 minutes for commands.
    pub read_timeout: Duration,
    /// Sessions served at once; more get `421 4.3.2`.
    pub max_sessions: usize,
    /// The name in the greeting and in replies.
    pub hostname: String,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            tls_mode: TlsMode::Starttls,
            read_timeout: Duration::from_secs(300),
            max_sessions: 100,
            hostname: "localhost".into(),
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
    #[error("the TLS handshake did not finish within {0:?}")]
    HandshakeTimeout(Duration),
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
pub struct ShutdownTrigger(watch::Sender<bool>);

/// What [`serve`] and its sessions watch for shutdown.
#[derive(Debug, Clone)]
pub struct ShutdownSignal(watch::Receiver<bool>);

pub fn shutdown_channel() -> (ShutdownTrigger, ShutdownSignal) {
    let (sender, receiver) = watch::channel(false);
    (ShutdownTrigger(sender), ShutdownSignal(receiver))
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}

impl ShutdownSignal {
    /// Resolves once shutdown is triggered (or the trigger is dropped).
    pub async fn triggered(&mut self) {
        // An error means the trigger is gone: nobody can stop us any more
        // otherwise, so treat it as a stop.
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }
}

/// Serves SMTP on `listener` until `shutdown` is triggered, then waits for
/// the running sessions to end (each ends at its next read, with 421).
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
                    sessions.spawn(refuse_busy(stream, options.clone()));
                    continue;
                };
                let connection = Connection {
                    slot,
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
    while sessions.join_next().await.is_some() {}
    Ok(())
}

async fn refuse_busy(mut stream: TcpStream, options: Arc<ServerOptions>) {
    // On an implicit-TLS port a plaintext reply is noise; just close.
    if options.tls_mode != TlsMode::Implicit {
        let reply = standard::too_many_connections(&options.hostname).to_bytes();
        let _ = tokio::time::timeout(options.read_timeout, stream.write_all(&reply)).await;
    }
    let _ = stream.shutdown().await;
}

/// What ended one pass of [`Connection::drive`].
enum Driven<S> {
    Closed,
    StartTls(S),
}

struct Connection {
    /// This session's place under `max_sessions`.
    slot: OwnedSemaphorePermit,
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
        // Free the slot before reporting the end, so whoever waits for
        // "session closed" can connect again at once.
        let Connection {
            slot, policy, peer, ..
        } = self;
        drop(slot);
        policy.on_disconnect(peer);
        policy.observe(&SessionEvent::Closed);
    }

    async fn serve_connection(&mut self, stream: TcpStream) -> Result<(), SessionIoError> {
        let admission = self.policy.on_connect(self.peer).await;
        let implicit = self.options.tls_mode == TlsMode::Implicit;
        let acceptor = self.acceptor.clone();
        let rules = match admission {
            Ok(rules) => rules,
            Err(refusal) => {
                return match (implicit, acceptor) {
                    (true, Some(acceptor)) => {
                        let tls = self.handshake(&acceptor, stream).await?;
                        refuse_connection(tls, refusal).await
                    }
                    _ => refuse_connection(stream, refusal).await,
                };
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
                    if let Driven::StartTls(_) = self.drive(tls, &mut session).await? {
                        // A second STARTTLS is refused by the session.
                        return Err(SessionIoError::SecondStartTls);
                    }
                }
            }
        }
        Ok(())
    }

    async fn handshake(
        &self,
        acceptor: &TlsAcceptor,
        stream: TcpStream,
    ) -> Result<tokio_rustls::server::TlsStream<TcpStream>, SessionIoError> {
        let timeout = self.options.read_timeout;
        match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(SessionIoError::HandshakeTimeout(timeout)),
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
        let mut buffer = vec![0u8; 16 * 1024];
        // Bounded: every turn either writes, reads (with a timeout), or
        // hands the session an answer that moves it forward.
        loop {
            match session.poll() {
                Step::Reply(reply) => {
                    if let Some(delay) = self.policy.reply_delay() {
                        write_out(&mut stream, &mut pending_output).await?;
                        tokio::time::sleep(delay).await;
                    }
                    pending_output.extend_from_slice(&reply.to_bytes());
                }
                Step::Observe(event) => self.policy.observe(&event),
                Step::Decide(question) => {
                    let answer = decide(self.policy.as_ref(), session.context(), question).await;
                    session.resolve(answer)?;
                }
                Step::StartTls => {
                    write_out(&mut stream, &mut pending_output).await?;
                    return Ok(Driven::StartTls(stream));
                }
                Step::Close => {
                    write_out(&mut stream, &mut pending_output).await?;
                    let _ = stream.shutdown().await;
                    return Ok(Driven::Closed);
                }
                Step::Blocked => return Err(SessionIoError::Blocked),
                Step::NeedInput => {
                    write_out(&mut stream, &mut pending_output).await?;
                    let read = tokio::select! {
                        read = tokio::time::timeout(
                            self.options.read_timeout,
                            stream.read(&mut buffer),
                        ) => read,
                        _ = self.shutdown.triggered() => {
                            let reply = standard::shutting_down(session.hostname());
                            return close_with(stream, reply).await;
                        }
                    };
                    match read {
                        Err(_elapsed) => {
                            let reply = standard::timeout(session.hostname());
                            return close_with(stream, reply).await;
                        }
                        Ok(Ok(0)) => return Ok(Driven::Closed),
                        Ok(Ok(read)) => session.feed(&buffer[..read]),
                        Ok(Err(error)) => return Err(error.into()),
                    }
                }
            }
        }
    }
}

async fn write_out<S: AsyncWrite + Unpin>(
    stream: &mut S,
    pending_output: &mut Vec<u8>,
) -> std::io::Result<()> {
    if !pending_output.is_empty() {
        stream.write_all(pending_output).await?;
        pending_output.clear();
    }
    stream.flush().await
}

async fn close_with<S: AsyncWrite + Unpin>(
    mut stream: S,
    reply: Reply,
) -> Result<Driven<S>, SessionIoError> {
    // The client may be gone already; the session ends either way.
    let _ = stream.write_all(&reply.to_bytes()).await;
    let _ = stream.shutdown().await;
    Ok(Driven::Closed)
}

async fn refuse_connection<S: AsyncWrite + Unpin>(
    stream: S,
    refusal: Refusal,
) -> Result<(), SessionIoError> {
    match refusal {
        Refusal::Reply(reply) => close_with(stream, reply).await.map(|_| ()),
        Refusal::Disconnect => Ok(()),
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
