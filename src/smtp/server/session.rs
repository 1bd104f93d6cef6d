//! The SMTP server session as a pure state machine: bytes go in with
//! [`Session::feed`], and [`Session::poll`] says what to do next (reply, ask
//! the policy, start TLS, wait for input, close). No sockets, no clocks, so
//! every rule is tested with byte strings (see `session_tests.rs`).
//!
//! Commands are parsed by smtp-proto; line framing, line endings, MAIL and
//! RCPT paths (see `command.rs`), DATA (see `data.rs`) and the SASL exchange
//! are ours.

use super::command::{self, EnvelopeCommand, LineDefect, parse_error_reply};
use super::data::{DataDefect, DataOutcome, DataReceiver};
use super::policy::{
    AuthRefusal, Authenticated, Channel, Credentials, DataPlan, Envelope, Identity, Refusal,
    SessionContext, SessionEvent, SessionRules,
};
use super::reply::{Reply, standard};
use super::sasl_exchange::{self, SaslProgress, SaslStep};
use crate::secret::Fingerprint;
use crate::smtp::sasl::{Mechanism, OAuthErrorStatus};
use smtp_proto::Request;
use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;

/// RFC 4954 section 4: SASL responses (the lines after a `334`) up to
/// 12,288 octets, since bearer tokens are long. No line is buffered beyond
/// it; command lines have the shorter limit of [`SessionRules::line_limit`].
pub const MAX_AUTH_LINE: usize = 12288;
/// Syntax and sequence errors tolerated before the session is closed, so a
/// confused or hostile client cannot keep a session slot forever.
pub const MAX_ERRORS: u32 = 20;
/// Failed AUTH exchanges before the session is closed (slows guessing).
pub const MAX_AUTH_FAILURES: u32 = 3;

/// What the listener knows when a connection is accepted.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The name in the greeting and EHLO reply.
    pub hostname: String,
    pub peer: SocketAddr,
    /// `Tls` for implicit TLS (port 465).
    pub channel: Channel,
    /// The listener can do STARTTLS (it has a certificate).
    pub starttls_available: bool,
    pub rules: SessionRules,
}

/// What the I/O shell must do next.
#[derive(Debug)]
pub enum Step {
    /// Write this reply (replies may be batched until [`Step::NeedInput`]:
    /// PIPELINING, RFC 2920).
    Reply(Reply),
    /// Read more bytes and [`Session::feed`] them.
    NeedInput,
    /// Ask the policy and give its answer to [`Session::resolve`].
    Decide(Question),
    /// Tell the policy's observer.
    Observe(SessionEvent),
    /// The `220` has been emitted: flush it, do the TLS handshake on the
    /// same socket, then call [`Session::tls_established`].
    StartTls,
    /// Close the connection (after flushing replies).
    Close,
    /// The session waits for [`Session::resolve`] or
    /// [`Session::tls_established`]; polling again is a shell bug.
    Blocked,
}

/// A decision the session needs from the policy.
pub enum Question {
    Hello,
    Authenticate(Credentials),
    Sender {
        mail_from: String,
    },
    Recipient {
        envelope: Envelope,
        rcpt_to: String,
    },
    Data {
        envelope: Envelope,
    },
    Message {
        envelope: Envelope,
        message: Vec<u8>,
    },
}

/// The policy's answer to a [`Question`], variant for variant.
#[derive(Debug)]
pub enum Answer {
    Hello(Result<(), Refusal>),
    Authenticate(Result<Identity, AuthRefusal>),
    Sender(Result<(), Refusal>),
    Recipient(Result<(), Refusal>),
    Data(Result<DataPlan, Refusal>),
    Message(Result<String, Refusal>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    #[error(
        "the session was given an answer it did not ask for ({answer}); \
         the I/O shell must resolve exactly the question from the last Step::Decide"
    )]
    UnexpectedAnswer { answer: &'static str },
    #[error("tls_established was called without a preceding Step::StartTls")]
    UnexpectedTls,
}

/// Where the session is.
#[derive(Debug)]
enum Phase {
    /// The greeting is not sent yet.
    Greeting,
    /// Connected, or TLS just started: only EHLO/HELO opens the session.
    AwaitHello,
    /// Greeted, no transaction.
    Ready,
    /// MAIL accepted; recipients so far in the envelope.
    Transaction(Envelope),
    /// Inside AUTH, waiting for the client's line.
    Sasl(SaslStep),
    /// Receiving the message after 354.
    Data {
        envelope: Envelope,
        receiver: Box<DataReceiver>,
    },
    /// Fault injection: close as soon as message bytes arrive.
    DataThenDisconnect,
    /// A question is out to the policy.
    Waiting(Pending),
    /// `220 Ready to start TLS` sent; the handshake is the shell's.
    TlsHandshake,
    Closed,
}

/// What to do with the policy's answer.
#[derive(Debug)]
enum Pending {
    Hello {
        extended: bool,
    },
    Authenticate {
        mechanism: Mechanism,
        user: String,
        credential: Fingerprint,
    },
    Sender(Envelope),
    Recipient {
        envelope: Envelope,
        rcpt_to: String,
    },
    Data(Envelope),
    Message {
        size: usize,
    },
}

/// One SMTP server session.
pub struct Session {
    hostname: String,
    rules: SessionRules,
    starttls_available: bool,
    context: SessionContext,
    phase: Phase,
    input: Vec<u8>,
    /// An over-long line, already answered, is being skipped up to its LF.
    discarding_line: bool,
    /// The last byte skipped was CR: if the next one is LF, the skipped
    /// line ended with CRLF.
    discarded_cr: bool,
    outbox: VecDeque<Step>,
    errors: u32,
    auth_failures: u32,
}

impl Session {
    pub fn new(config: SessionConfig) -> Self {
        Session {
            hostname: config.hostname,
            rules: config.rules,
            starttls_available: config.starttls_available,
            context: SessionContext {
                peer: config.peer,
                channel: config.channel,
                hello: None,
                auth: None,
            },
            phase: Phase::Greeting,
            input: Vec::new(),
            discarding_line: false,
            discarded_cr: false,
            outbox: VecDeque::new(),
            errors: 0,
            auth_failures: 0,
        }
    }

    /// What the policy is told with every question.
    pub fn context(&self) -> &SessionContext {
        &self.context
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// Whether the session is receiving a message (the shell's timeouts may
    /// differ there).
    pub fn in_data(&self) -> bool {
        matches!(self.phase, Phase::Data { .. } | Phase::DataThenDisconnect)
    }

    /// Bytes from the client.
    pub fn feed(&mut self, bytes: &[u8]) {
        if !matches!(self.phase, Phase::Closed | Phase::TlsHandshake) {
            self.input.extend_from_slice(bytes);
        }
    }

    /// The next thing to do. Each call either returns a queued step or
    /// consumes input (a line or a DATA chunk), so a loop of `poll` calls
    /// always reaches `NeedInput`, `Decide`, `StartTls` or `Close`.
    pub fn poll(&mut self) -> Step {
        loop {
            if let Some(step) = self.outbox.pop_front() {
                return step;
            }
            match &mut self.phase {
                Phase::Closed => return Step::Close,
                Phase::Waiting(_) | Phase::TlsHandshake => return Step::Blocked,
                Phase::Greeting => {
                    self.phase = Phase::AwaitHello;
                    let greeting = format!("{} ESMTP oxirelay ready", self.hostname);
                    self.reply(Reply::new(220, greeting));
                }
                Phase::DataThenDisconnect => {
                    if self.input.is_empty() {
                        return Step::NeedInput;
                    }
                    self.close();
                }
                Phase::Data { receiver, .. } => {
                    if self.input.is_empty() {
                        return Step::NeedInput;
                    }
                    match receiver.ingest(&self.input) {
                        None => {
                            self.input.clear();
                            return Step::NeedInput;
                        }
                        Some((outcome, used)) => {
                            self.input.drain(..used);
                            self.end_of_data(outcome);
                        }
                    }
                }
                _ => match self.take_line() {
                    // Skipping a line may have queued its reply, which
                    // must go out now, not after the next read.
                    None if self.outbox.is_empty() => return Step::NeedInput,
                    None => {}
                    Some(line) => self.on_line(&line),
                },
            }
        }
    }

    /// Gives the policy's answer to the last [`Step::Decide`].
    pub fn resolve(&mut self, answer: Answer) -> Result<(), SessionError> {
        let pending = match std::mem::replace(&mut self.phase, Phase::Closed) {
            Phase::Waiting(pending) => pending,
            other => {
                self.phase = other;
                return Err(SessionError::UnexpectedAnswer {
                    answer: answer_name(&answer),
                });
            }
        };
        match (pending, answer) {
            (Pending::Hello { extended }, Answer::Hello(verdict)) => {
                self.on_hello_answer(extended, verdict)
            }
            (
                Pending::Authenticate {
                    mechanism,
                    user,
                    credential,
                },
                Answer::Authenticate(verdict),
            ) => self.on_auth_answer(mechanism, user, credential, verdict),
            (Pending::Sender(envelope), Answer::Sender(verdict)) => match verdict {
                Ok(()) => {
                    self.phase = Phase::Transaction(envelope);
                    self.reply(standard::sender_ok());
                }
                Err(refusal) => {
                    self.phase = Phase::Ready;
                    self.refuse(refusal);
                }
            },
            (
                Pending::Recipient {
                    mut envelope,
                    rcpt_to,
                },
                Answer::Recipient(verdict),
            ) => {
                if verdict.is_ok() {
                    envelope.rcpt_to.push(rcpt_to);
                }
                self.phase = Phase::Transaction(envelope);
                match verdict {
                    Ok(()) => self.reply(standard::recipient_ok()),
                    Err(refusal) => self.refuse(refusal),
                }
            }
            (Pending::Data(envelope), Answer::Data(verdict)) => match verdict {
                Ok(DataPlan::Receive) => {
                    self.phase = Phase::Data {
                        receiver: Box::new(DataReceiver::new(self.rules.max_message_size)),
                        envelope,
                    };
                    self.reply(standard::start_data());
                }
                Ok(DataPlan::DisconnectMidMessage) => {
                    self.phase = Phase::DataThenDisconnect;
                    self.reply(standard::start_data());
                }
                Err(refusal) => {
                    self.phase = Phase::Transaction(envelope);
                    self.refuse(refusal);
                }
            },
            (Pending::Message { size }, Answer::Message(verdict)) => {
                self.phase = Phase::Ready;
                match verdict {
                    Ok(id) => {
                        self.observe(SessionEvent::MessageAccepted { size });
                        self.reply(standard::accepted(&id));
                    }
                    Err(refusal) => {
                        if let Refusal::Reply(reply) = &refusal {
                            let reply_code = reply.code();
                            self.observe(SessionEvent::MessageRefused { reply_code });
                        }
                        self.refuse(refusal);
                    }
                }
            }
            (pending, answer) => {
                let name = answer_name(&answer);
                self.phase = Phase::Waiting(pending);
                return Err(SessionError::UnexpectedAnswer { answer: name });
            }
        }
        Ok(())
    }

    /// The TLS handshake after [`Step::StartTls`] succeeded. RFC 3207
    /// section 4.2: the session starts over and must be greeted again;
    /// nothing learnt before TLS (EHLO, AUTH) survives.
    pub fn tls_established(&mut self) -> Result<(), SessionError> {
        if !matches!(self.phase, Phase::TlsHandshake) {
            return Err(SessionError::UnexpectedTls);
        }
        self.context.channel = Channel::Tls;
        self.context.hello = None;
        self.context.auth = None;
        self.input.clear();
        self.discarding_line = false;
        self.discarded_cr = false;
        self.phase = Phase::AwaitHello;
        self.observe(SessionEvent::TlsStarted);
        Ok(())
    }

    fn reply(&mut self, reply: Reply) {
        let closes = reply.closes_connection();
        self.outbox.push_back(Step::Reply(reply));
        if closes {
            self.close();
        }
    }

    fn observe(&mut self, event: SessionEvent) {
        self.outbox.push_back(Step::Observe(event));
    }

    fn close(&mut self) {
        self.phase = Phase::Closed;
        self.input.clear();
        self.outbox.push_back(Step::Close);
    }

    /// A reply for a client mistake; too many of them end the session.
    fn error(&mut self, reply: Reply) {
        self.reply(reply);
        self.errors += 1;
        if self.errors >= MAX_ERRORS && !matches!(self.phase, Phase::Closed) {
            let reply = standard::too_many_errors(&self.hostname);
            self.reply(reply);
        }
    }

    fn refuse(&mut self, refusal: Refusal) {
        match refusal {
            Refusal::Reply(reply) => self.reply(reply),
            Refusal::Disconnect => self.close(),
        }
    }

    fn ask(&mut self, pending: Pending, question: Question) {
        self.phase = Phase::Waiting(pending);
        self.outbox.push_back(Step::Decide(question));
    }

    /// The next complete line (with its line ending), or `None` if more
    /// input is needed. A line longer than its limit is answered as soon as
    /// the limit is crossed, before its LF arrives: the client must not be
    /// able to make the session hold a long line, nor wait for the reply
    /// until it sends another. The rest of the line is skipped up to its LF.
    fn take_line(&mut self) -> Option<Vec<u8>> {
        // Bounded: each pass consumes input or returns.
        loop {
            if self.discarding_line {
                let Some(end) = self.input.iter().position(|b| *b == b'\n') else {
                    if let Some(&last) = self.input.last() {
                        self.discarded_cr = last == b'\r';
                    }
                    self.input.clear();
                    return None;
                };
                let crlf = match end {
                    0 => self.discarded_cr,
                    _ => self.input[end - 1] == b'\r',
                };
                self.input.drain(..=end);
                self.discarding_line = false;
                if !crlf {
                    self.on_bare_line_feed();
                    return None;
                }
                continue;
            }
            let limit = self.line_limit(&self.input);
            let Some(end) = self.input.iter().position(|b| *b == b'\n') else {
                // Its LF is still to come, so at `limit` octets the line is
                // already one too long.
                if !self.input.is_empty() && self.input.len() >= limit {
                    self.discarded_cr = self.input.last() == Some(&b'\r');
                    self.input.clear();
                    self.discarding_line = true;
                    self.on_line_too_long();
                }
                return None;
            };
            let line: Vec<u8> = self.input.drain(..=end).collect();
            if line.len() > limit {
                self.on_line_too_long();
                if matches!(self.phase, Phase::Closed) {
                    return None;
                }
                // As when the line is skipped in pieces: one that ends in a
                // bare LF ends the session, however it arrived.
                if !line.ends_with(b"\r\n") {
                    self.on_bare_line_feed();
                    return None;
                }
                continue;
            }
            return Some(line);
        }
    }

    /// The longest the line starting with `start` may be, CRLF included.
    fn line_limit(&self, start: &[u8]) -> usize {
        let limits = &self.rules.line_limit;
        // Whether the line is (or, with fewer than 5 octets read, may
        // become) an AUTH command.
        let prefix = start.len().min(5);
        let longest = if matches!(self.phase, Phase::Sasl(_)) {
            limits.sasl_response
        } else if start[..prefix].eq_ignore_ascii_case(&b"AUTH "[..prefix]) {
            limits.auth_command
        } else {
            limits.command
        };
        longest.min(MAX_AUTH_LINE)
    }

    fn on_line_too_long(&mut self) {
        if matches!(self.phase, Phase::Sasl(_)) {
            self.phase = Phase::Ready;
        }
        let reply = self.rules.line_limit.reply.clone();
        self.error(reply);
    }

    /// A line ended with LF alone. Postfix (`smtpd_forbid_bare_newline =
    /// yes`) and sendmail (its `g` option) also disconnect: the client and
    /// the server no longer agree where commands end, so whatever follows
    /// might be read as commands the client never meant (injection through
    /// an application that filters CRLF but not LF). The session ends after
    /// a clear reply.
    fn on_bare_line_feed(&mut self) {
        self.reply(standard::bare_lf_in_command());
        self.close();
    }

    fn on_line(&mut self, line: &[u8]) {
        match command::line_defect(line) {
            Some(LineDefect::BareLineFeed) => return self.on_bare_line_feed(),
            Some(LineDefect::BareCarriageReturn) => {
                // Refused whole, never stripped: smtp-proto would drop the
                // CR and read `<a\rRSET\r@x>` as `aRSET@x`.
                if matches!(self.phase, Phase::Sasl(_)) {
                    self.phase = Phase::Ready;
                }
                return self.error(standard::bare_cr_in_command());
            }
            None => {}
        }
        if let Phase::Sasl(step) = &self.phase {
            let step = step.clone();
            let content = strip_line_ending(line);
            let progress = sasl_exchange::continue_with(&step, content);
            self.phase = Phase::Ready;
            self.on_sasl_progress(progress);
            return;
        }
        if let Some(parsed) = command::parse_envelope_command(line) {
            return match parsed {
                Ok(EnvelopeCommand::Mail(from)) => self.on_mail(from),
                Ok(EnvelopeCommand::Rcpt { to, postmaster }) => self.on_rcpt(to, postmaster),
                Err(reply) => self.error(reply),
            };
        }
        match Request::parse(&mut line.iter()) {
            Ok(request) => self.on_request(request.into_owned()),
            Err(error) => self.error(parse_error_reply(error)),
        }
    }

    fn on_request(&mut self, request: Request<String>) {
        match request {
            Request::Ehlo { host } => self.on_hello(host, true),
            Request::Helo { host } => self.on_hello(host, false),
            Request::StartTls => self.on_starttls(),
            Request::Auth {
                mechanism,
                initial_response,
            } => self.on_auth(mechanism, initial_response),
            // Read by `command::parse_envelope_command`; smtp-proto gets here
            // only with a line that function did not take as MAIL or RCPT,
            // and its reading of the address (unquoted, `<postmaster>` as
            // empty) must not be used.
            Request::Mail { .. } => {
                self.error(standard::syntax("MAIL FROM:<reverse-path> [parameters]"))
            }
            Request::Rcpt { .. } => {
                self.error(standard::syntax("RCPT TO:<forward-path> [parameters]"))
            }
            Request::Data => self.on_data(),
            Request::Rset => {
                if matches!(self.phase, Phase::Transaction(_)) {
                    self.phase = Phase::Ready;
                }
                self.reply(standard::reset());
            }
            Request::Noop { .. } => self.reply(standard::ok()),
            Request::Quit => {
                let bye = standard::bye(&self.hostname);
                self.reply(bye);
                self.close();
            }
            Request::Help { .. } => self.reply(standard::help()),
            Request::Vrfy { .. } => self.reply(standard::vrfy()),
            Request::Bdat { .. } => {
                // The chunk's bytes follow the command; without CHUNKING we
                // cannot tell them from commands, so the session ends.
                self.reply(standard::chunking_unsupported());
                self.close();
            }
            other => self.error(standard::not_implemented(other.name())),
        }
    }

    fn on_hello(&mut self, host: String, extended: bool) {
        self.observe(SessionEvent::Hello {
            extended,
            channel: self.context.channel,
        });
        // RFC 5321 section 4.1.4: EHLO resets any transaction.
        self.context.hello = Some(host);
        self.ask(Pending::Hello { extended }, Question::Hello);
    }

    fn on_hello_answer(&mut self, extended: bool, verdict: Result<(), Refusal>) {
        if let Err(refusal) = verdict {
            self.context.hello = None;
            self.phase = Phase::AwaitHello;
            self.refuse(refusal);
            return;
        }
        self.phase = Phase::Ready;
        let host = self.context.hello.clone().unwrap_or_default();
        let greeting = format!("{} greets {host}", self.hostname);
        if !extended {
            self.reply(Reply::new(250, greeting));
            return;
        }
        let mut lines = vec![
            greeting,
            "PIPELINING".to_string(),
            format!("SIZE {}", self.rules.max_message_size),
            "8BITMIME".to_string(),
            "SMTPUTF8".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
        ];
        if self.starttls_offered() {
            lines.push("STARTTLS".to_string());
        }
        if self.auth_permitted() && !self.rules.mechanisms.is_empty() {
            let names: Vec<&str> = self
                .rules
                .mechanisms
                .iter()
                .map(|m| m.wire_name())
                .collect();
            lines.push(format!("AUTH {}", names.join(" ")));
        }
        self.reply(Reply::multiline(250, lines));
    }

    fn starttls_offered(&self) -> bool {
        self.context.channel == Channel::Plaintext
            && self.starttls_available
            && self.rules.offer_starttls
    }

    /// The rule "AUTH only after TLS" (DESIGN.md contract 5), in one place.
    fn auth_permitted(&self) -> bool {
        self.context.channel == Channel::Tls || self.rules.plaintext_auth_allowed
    }

    fn on_starttls(&mut self) {
        if self.context.channel == Channel::Tls {
            self.error(standard::already_tls());
        } else if !self.starttls_offered() {
            self.reply(standard::tls_not_available());
        } else if self.context.hello.is_none() {
            self.error(standard::hello_first());
        } else {
            // Anything pipelined after STARTTLS was sent in plaintext and
            // could have been injected: it must never be executed.
            self.input.clear();
            self.reply(standard::ready_for_tls());
            self.phase = Phase::TlsHandshake;
            self.outbox.push_back(Step::StartTls);
        }
    }

    fn on_auth(&mut self, mechanism_bit: u64, initial_response: String) {
        let mechanism = mechanism_from_bit(mechanism_bit);
        self.observe(SessionEvent::AuthAttempt {
            mechanism,
            channel: self.context.channel,
        });
        if self.context.hello.is_none() {
            return self.error(standard::hello_first());
        }
        if self.context.auth.is_some() {
            return self.error(standard::already_authenticated());
        }
        if matches!(self.phase, Phase::Transaction(_)) {
            return self.error(standard::auth_in_transaction());
        }
        if !self.auth_permitted() {
            return self.error(standard::starttls_first());
        }
        let Some(mechanism) = mechanism.filter(|m| self.rules.mechanisms.contains(m)) else {
            return self.error(standard::unknown_mechanism());
        };
        let initial = (!initial_response.is_empty()).then_some(initial_response.as_str());
        let progress = sasl_exchange::start(mechanism, initial);
        self.on_sasl_progress(progress);
    }

    fn on_sasl_progress(&mut self, progress: SaslProgress) {
        match progress {
            SaslProgress::Challenge(reply, step) => {
                self.phase = Phase::Sasl(step);
                self.reply(reply);
            }
            SaslProgress::Complete(credentials) => {
                let pending = Pending::Authenticate {
                    mechanism: credentials.mechanism(),
                    user: credentials.user().to_string(),
                    credential: credentials.fingerprint(),
                };
                self.ask(pending, Question::Authenticate(credentials));
            }
            SaslProgress::Failed(reply) => {
                self.phase = Phase::Ready;
                let auth_failed = reply.code() == 535;
                self.error(reply);
                if auth_failed {
                    self.count_auth_failure();
                }
            }
        }
    }

    fn on_auth_answer(
        &mut self,
        mechanism: Mechanism,
        user: String,
        credential: Fingerprint,
        verdict: Result<Identity, AuthRefusal>,
    ) {
        self.phase = Phase::Ready;
        let refusal = match verdict {
            Ok(identity) => {
                self.context.auth = Some(Authenticated {
                    identity,
                    mechanism,
                    credential,
                });
                self.observe(SessionEvent::AuthSucceeded { mechanism });
                return self.reply(standard::auth_succeeded());
            }
            Err(refusal) => refusal,
        };
        // `?user`: the client chose it; Debug escapes what could forge a line.
        tracing::info!(?user, %mechanism, %credential, ?refusal, "SMTP AUTH refused");
        self.observe(SessionEvent::AuthFailed { mechanism });
        let (challenge, final_reply) = match refusal {
            AuthRefusal::Temporary => return self.reply(standard::auth_temporary_failure()),
            // RFC 7628 section 3.2.2: a failed bearer token gets an error
            // challenge; the final 535 follows the client's ack.
            AuthRefusal::Token(status) => (Some(status), standard::auth_failed()),
            AuthRefusal::Credentials => (
                mechanism.is_oauth().then(invalid_token_status),
                standard::auth_failed(),
            ),
            AuthRefusal::Reply { challenge, reply } => (challenge.map(|c| *c), reply),
        };
        match challenge.filter(|_| mechanism.is_oauth()) {
            Some(status) => {
                self.phase = Phase::Sasl(SaslStep::ErrorAcknowledgement { final_reply });
                self.reply(Reply::new(334, status.to_base64()));
            }
            None => {
                let failed = final_reply.code() == 535;
                self.reply(final_reply);
                if failed {
                    self.count_auth_failure();
                }
            }
        }
    }

    fn count_auth_failure(&mut self) {
        self.auth_failures += 1;
        if self.auth_failures >= MAX_AUTH_FAILURES && !matches!(self.phase, Phase::Closed) {
            let reply = standard::too_many_auth_failures(&self.hostname);
            self.reply(reply);
        }
    }

    fn on_mail(&mut self, from: smtp_proto::MailFrom<String>) {
        if self.context.hello.is_none() {
            return self.error(standard::hello_first());
        }
        if matches!(self.phase, Phase::Transaction(_)) {
            return self.error(standard::nested_mail());
        }
        if self.rules.auth_required && self.context.auth.is_none() {
            return self.error(if self.auth_permitted() {
                standard::auth_required()
            } else {
                standard::starttls_first()
            });
        }
        let known_flags =
            smtp_proto::MAIL_BODY_7BIT | smtp_proto::MAIL_BODY_8BITMIME | smtp_proto::MAIL_SMTPUTF8;
        // AUTH=<...> (RFC 4954 section 5) is accepted and ignored: some
        // clients always send it once authenticated.
        if from.flags & !known_flags != 0 || from.env_id.is_some() {
            return self.error(standard::unsupported_parameter(
                "(only SIZE, BODY=7BIT/8BITMIME and SMTPUTF8 are offered)",
            ));
        }
        let smtputf8 = from.flags & smtp_proto::MAIL_SMTPUTF8 != 0;
        if !smtputf8 && !from.address.is_ascii() {
            return self.error(standard::non_ascii_address());
        }
        let declared_size = (from.size > 0).then_some(from.size);
        if declared_size.is_some_and(|size| size > self.rules.max_message_size) {
            return self.error(standard::message_too_big());
        }
        let envelope = Envelope {
            mail_from: from.address.clone(),
            rcpt_to: Vec::new(),
            eight_bit: from.flags & smtp_proto::MAIL_BODY_8BITMIME != 0,
            smtputf8,
            declared_size,
        };
        self.ask(
            Pending::Sender(envelope),
            Question::Sender {
                mail_from: from.address,
            },
        );
    }

    /// `postmaster`: the client wrote `<postmaster>`, which goes to the
    /// address the rules name (RFC 5321 section 4.5.1).
    fn on_rcpt(&mut self, to: smtp_proto::RcptTo<String>, postmaster: bool) {
        let Phase::Transaction(envelope) = &self.phase else {
            return self.error(standard::mail_first());
        };
        if envelope.rcpt_to.len() >= self.rules.max_recipients {
            return self.reply(standard::too_many_recipients());
        }
        if !envelope.smtputf8 && !to.address.is_ascii() {
            return self.error(standard::non_ascii_address());
        }
        if to.flags != 0 || to.orcpt.is_some() {
            return self.error(standard::unsupported_parameter("(DSN is not offered)"));
        }
        let rcpt_to = match (postmaster, &self.rules.postmaster) {
            (false, _) => to.address,
            (true, Some(address)) => address.clone(),
            (true, None) => return self.reply(standard::no_postmaster()),
        };
        let envelope = envelope.clone();
        let question = Question::Recipient {
            envelope: envelope.clone(),
            rcpt_to: rcpt_to.clone(),
        };
        self.ask(Pending::Recipient { envelope, rcpt_to }, question);
    }

    fn on_data(&mut self) {
        let Phase::Transaction(envelope) = &self.phase else {
            return self.error(standard::mail_first());
        };
        if envelope.rcpt_to.is_empty() {
            return self.error(standard::rcpt_first());
        }
        let envelope = envelope.clone();
        self.ask(Pending::Data(envelope.clone()), Question::Data { envelope });
    }

    fn end_of_data(&mut self, outcome: DataOutcome) {
        let Phase::Data { envelope, .. } = std::mem::replace(&mut self.phase, Phase::Ready) else {
            return;
        };
        let refused = match outcome {
            DataOutcome::Message(message) => {
                let size = message.len();
                return self.ask(
                    Pending::Message { size },
                    Question::Message { envelope, message },
                );
            }
            DataOutcome::Refused(DataDefect::BareLineEnding) => standard::bare_line_ending(),
            DataOutcome::Refused(DataDefect::TooBig) => standard::message_too_big(),
            DataOutcome::Refused(DataDefect::Nul { line }) => standard::nul_in_message(line),
            DataOutcome::Refused(DataDefect::LineTooLong { line }) => {
                standard::long_line_in_message(line)
            }
        };
        self.observe(SessionEvent::MessageRefused {
            reply_code: refused.code(),
        });
        self.error(refused);
    }
}

impl fmt::Debug for Question {
    /// Shows a message's size, never its content.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Question::Hello => f.write_str("Hello"),
            Question::Authenticate(credentials) => {
                f.debug_tuple("Authenticate").field(credentials).finish()
            }
            Question::Sender { mail_from } => f
                .debug_struct("Sender")
                .field("mail_from", mail_from)
                .finish(),
            Question::Recipient { envelope, rcpt_to } => f
                .debug_struct("Recipient")
                .field("envelope", envelope)
                .field("rcpt_to", rcpt_to)
                .finish(),
            Question::Data { envelope } => {
                f.debug_struct("Data").field("envelope", envelope).finish()
            }
            Question::Message { envelope, message } => f
                .debug_struct("Message")
                .field("envelope", envelope)
                .field("size", &message.len())
                .finish(),
        }
    }
}

impl fmt::Debug for Session {
    /// Leaves out the input buffer: it may hold an AUTH line (a token) or
    /// message content.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("hostname", &self.hostname)
            .field("context", &self.context)
            .field("phase", &self.phase)
            .field("buffered_bytes", &self.input.len())
            .field("errors", &self.errors)
            .field("auth_failures", &self.auth_failures)
            .finish_non_exhaustive()
    }
}

fn strip_line_ending(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn mechanism_from_bit(bit: u64) -> Option<Mechanism> {
    match bit {
        smtp_proto::AUTH_XOAUTH2 => Some(Mechanism::XOAuth2),
        smtp_proto::AUTH_OAUTHBEARER => Some(Mechanism::OAuthBearer),
        smtp_proto::AUTH_PLAIN => Some(Mechanism::Plain),
        smtp_proto::AUTH_LOGIN => Some(Mechanism::Login),
        _ => None,
    }
}

fn invalid_token_status() -> OAuthErrorStatus {
    OAuthErrorStatus {
        status: "invalid_token".into(),
        schemes: Some("bearer".into()),
        scope: None,
        openid_configuration: None,
    }
}

fn answer_name(answer: &Answer) -> &'static str {
    match answer {
        Answer::Hello(_) => "Hello",
        Answer::Authenticate(_) => "Authenticate",
        Answer::Sender(_) => "Sender",
        Answer::Recipient(_) => "Recipient",
        Answer::Data(_) => "Data",
        Answer::Message(_) => "Message",
    }
}
