//! A session that may authenticate and send: TLS (or loopback plaintext
//! explicitly allowed, see `establish`). AUTH with a bearer token, mail
//! transactions with per-recipient outcomes, RSET, NOOP, QUIT.
//!
//! A session is reused for many messages (the pool keeps it); each `send`
//! ends the transaction it starts, with the reply to the final dot or with
//! RSET, so the next `send` always starts clean.

use super::auth_reply;
use super::capabilities::Capabilities;
use super::envelope::{DataOutcome, Envelope, RecipientReport, SendReport, Transaction};
use super::error::{ClientError, Stage};
use super::reply::Reply;
use super::target::UpstreamTarget;
use super::wire::{Transport, Wire};
use crate::smtp::sasl::{self, BearerCredentials, Mechanism, OAuthErrorStatus};
use std::time::Instant;
use zeroize::Zeroizing;

/// RFC 5321 section 4.5.3.1.4: a command line, CRLF included, is at most
/// 512 octets. RFC 4954 section 4 holds AUTH to it too.
pub const MAX_COMMAND_LINE: usize = 512;

/// How a SASL exchange ended.
struct SaslOutcome {
    /// The server's final reply.
    reply: Reply,
    /// The RFC 7628 error challenge, when the server sent one (boxed to
    /// keep every `Result<_, ClientError>` small).
    status: Option<Box<OAuthErrorStatus>>,
    /// Whether the response rode on the AUTH line.
    inline: bool,
}

/// Commands per pipelined write. Replies are read only after a group is
/// written; a bounded group keeps the server's replies within the socket
/// buffers, so neither side can block writing while the other does too (RFC
/// 2920 section 3.1's deadlock). 100 recipients' replies are a few KiB.
const PIPELINE_GROUP: usize = 100;

pub struct Session {
    wire: Wire<Transport>,
    target: UpstreamTarget,
    capabilities: Capabilities,
    authenticated: bool,
    messages_sent: u64,
    connected_at: Instant,
    /// Known to hold no mail transaction at the server: none was begun
    /// yet, or the last one ended (its final reply, or RSET). False when
    /// unsure (any error of a transaction, even one that opened none):
    /// the next reuse then sends RSET first.
    between_transactions: bool,
}

impl Session {
    pub(crate) fn new(
        wire: Wire<Transport>,
        target: UpstreamTarget,
        capabilities: Capabilities,
    ) -> Self {
        Session {
            wire,
            target,
            capabilities,
            authenticated: false,
            messages_sent: 0,
            connected_at: Instant::now(),
            between_transactions: true,
        }
    }

    /// Whether the server holds no mail transaction of ours: a next MAIL
    /// needs no RSET before it.
    pub fn is_between_transactions(&self) -> bool {
        self.between_transactions && self.wire.ensure_usable().is_ok()
    }

    /// What the server offers on this (secured) connection.
    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    pub fn target(&self) -> &UpstreamTarget {
        &self.target
    }

    /// TLS, as opposed to plaintext allowed on loopback.
    pub fn is_encrypted(&self) -> bool {
        matches!(self.wire.stream(), Transport::Tls(_))
    }

    /// The certificate chain the server presented, end-entity first
    /// (empty for loopback plaintext).
    pub fn peer_certificates(&self) -> Vec<rustls::pki_types::CertificateDer<'static>> {
        match self.wire.stream() {
            Transport::Tls(tls) => tls
                .get_ref()
                .1
                .peer_certificates()
                .unwrap_or_default()
                .to_vec(),
            Transport::LoopbackPlaintext(_) => Vec::new(),
        }
    }

    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// False after a timeout, an I/O error, a malformed reply or a 421: the
    /// session cannot continue and should be dropped, not pooled.
    pub fn is_usable(&self) -> bool {
        self.wire.is_usable()
    }

    /// Messages the server accepted on this connection.
    pub fn messages_sent(&self) -> u64 {
        self.messages_sent
    }

    pub fn connected_at(&self) -> Instant {
        self.connected_at
    }

    /// AUTH PLAIN (RFC 4616) with a password, for submitting to a relay's
    /// listener (the demo, the benchmark). Upstream providers get tokens,
    /// never passwords: the delivery path does not call this.
    pub async fn authenticate_password(
        &mut self,
        credentials: &sasl::PasswordCredentials,
    ) -> Result<(), ClientError> {
        self.wire.ensure_usable()?;
        self.require_mechanism(Mechanism::Plain)?;
        let message = sasl::encode_plain(credentials);
        let exchange = self.sasl_exchange(Mechanism::Plain, &message).await?;
        if exchange.reply.is_positive() {
            self.authenticated = true;
            return Ok(());
        }
        Err(self.auth_refused(&credentials.user, exchange))
    }

    /// AUTH with a bearer token (XOAUTH2 or OAUTHBEARER).
    ///
    /// On refusal of the token (`535`, `534`, the RFC 7628 error challenge,
    /// a provider's token-specific reply: see [`auth_reply`]) returns
    /// [`ClientError::AuthRejected`] with the final reply and the decoded
    /// status. Any other reply (a syntax or line-length error, `421`, `454`)
    /// is [`ClientError::AuthNotJudged`]: the token was not looked at, and
    /// contract 4's refresh must not run. The session stays usable after a
    /// refusal: the caller may refresh the token and call this again.
    pub async fn authenticate(
        &mut self,
        mechanism: Mechanism,
        credentials: &BearerCredentials,
    ) -> Result<(), ClientError> {
        self.wire.ensure_usable()?;
        let message = match mechanism {
            Mechanism::XOAuth2 => sasl::encode_xoauth2(credentials),
            Mechanism::OAuthBearer => sasl::encode_oauthbearer(
                credentials,
                &sasl::ServerName {
                    host: self.target.bare_host(),
                    port: self.target.port,
                },
            ),
            other => return Err(ClientError::UnsupportedMechanism(other)),
        };
        self.require_mechanism(mechanism)?;
        tracing::debug!(
            address = %self.wire.address(),
            %mechanism,
            user = %credentials.user,
            token = %credentials.token.fingerprint(),
            "authenticating"
        );
        let exchange = self.sasl_exchange(mechanism, &message).await?;
        if exchange.reply.is_positive() {
            self.authenticated = true;
            tracing::info!(address = %self.wire.address(), user = %credentials.user, "authenticated");
            return Ok(());
        }
        tracing::info!(
            address = %self.wire.address(),
            user = %credentials.user,
            token = %credentials.token.fingerprint(),
            reply = %exchange.reply,
            oauth_status = exchange.status.as_ref().map(|s| s.status.as_str()),
            inline = exchange.inline,
            "authentication refused"
        );
        Err(self.auth_refused(&credentials.user, exchange))
    }

    fn require_mechanism(&self, mechanism: Mechanism) -> Result<(), ClientError> {
        if self.capabilities.offers_auth(mechanism) {
            return Ok(());
        }
        Err(ClientError::MechanismNotOffered {
            address: self.wire.address().to_string(),
            mechanism,
            offered: self.capabilities.auth.clone(),
        })
    }

    /// One SASL exchange for a single-message mechanism (PLAIN, XOAUTH2,
    /// OAUTHBEARER), up to the server's final reply.
    ///
    /// RFC 4954 section 4: the initial response rides on the AUTH line
    /// only when that line stays within 512 octets with its CRLF; otherwise
    /// `AUTH MECH` alone, the server's empty `334 ` challenge, then the
    /// response on a line of its own (where RFC 4954 allows 12,288
    /// octets). Real bearer tokens are 1-4 KB and real servers refuse long
    /// command lines (Gmail `555 5.5.2`, Dovecot `500 5.5.2`).
    ///
    /// RFC 7628 section 3.2.2: a refused bearer token is reported in a
    /// `334` error challenge, acknowledged before the final reply comes.
    async fn sasl_exchange(
        &mut self,
        mechanism: Mechanism,
        message: &crate::secret::Secret,
    ) -> Result<SaslOutcome, ClientError> {
        let limit = self.target.timeouts.command;
        // The lines hold the credential: wiped from memory once written.
        let response = Zeroizing::new(sasl::encode_base64(message.expose().as_bytes()));
        let inline = Zeroizing::new(format!("AUTH {} {}\r\n", mechanism.wire_name(), *response));
        let fits_inline = inline.len() <= MAX_COMMAND_LINE;
        let mut reply = if fits_inline {
            self.wire
                .write(inline.as_bytes(), Stage::Auth, limit)
                .await?;
            self.wire.read_reply(Stage::Auth, limit).await?
        } else {
            let start = format!("AUTH {}\r\n", mechanism.wire_name());
            let prompt = self.wire.command(&start, Stage::Auth, limit).await?;
            if prompt.code != 334 {
                // Refused before the credential was sent: nothing was judged.
                return Ok(SaslOutcome {
                    reply: prompt,
                    status: None,
                    inline: false,
                });
            }
            let line = Zeroizing::new(format!("{}\r\n", *response));
            self.wire.write(line.as_bytes(), Stage::Auth, limit).await?;
            self.wire.read_reply(Stage::Auth, limit).await?
        };
        let mut status = None;
        if reply.code == 334 {
            if mechanism.is_oauth() {
                status = OAuthErrorStatus::from_base64(reply.first_line_payload().as_bytes())
                    .map(Box::new);
                let ack = format!("{}\r\n", sasl::error_challenge_ack(mechanism));
                reply = self.wire.command(&ack, Stage::Auth, limit).await?;
            }
            if reply.code == 334 {
                // A further challenge has no meaning for these mechanisms:
                // cancel the exchange (RFC 4954 "*") and report the refusal.
                reply = self.wire.command("*\r\n", Stage::Auth, limit).await?;
            }
        }
        Ok(SaslOutcome {
            reply,
            status,
            inline: fits_inline,
        })
    }

    /// The error for a failed exchange: a refusal of the credential, or a
    /// reply that did not judge it.
    fn auth_refused(&self, user: &str, exchange: SaslOutcome) -> ClientError {
        let address = self.wire.address().to_string();
        if auth_reply::refuses_credential(&exchange.reply, exchange.status.is_some()) {
            ClientError::AuthRejected {
                address,
                user: user.to_string(),
                reply: exchange.reply,
                status: exchange.status,
            }
        } else {
            ClientError::AuthNotJudged {
                address,
                reply: exchange.reply,
            }
        }
    }

    /// One mail transaction: MAIL FROM, RCPT TO per recipient, DATA. With
    /// PIPELINING they go in one write (in groups of 100 recipients for
    /// larger envelopes) and the replies are read in order. Returns the outcome per recipient; a refused MAIL FROM is an
    /// error (it applies to every recipient). The message body is never logged.
    pub async fn send(
        &mut self,
        envelope: &Envelope,
        message: &[u8],
    ) -> Result<SendReport, ClientError> {
        self.wire.ensure_usable()?;
        let transaction =
            Transaction::plan(envelope, message, &self.capabilities, self.wire.address())?;
        // Until the transaction ends, one way or the other (both paths
        // below end every transaction they open before returning Ok).
        self.between_transactions = false;
        tracing::debug!(
            address = %self.wire.address(),
            mail_from = %envelope.mail_from,
            recipients = envelope.rcpt_to.len(),
            size = message.len(),
            pipelining = self.capabilities.pipelining,
            "sending a message"
        );
        let report = if self.capabilities.pipelining {
            self.send_pipelined(envelope, transaction).await?
        } else {
            self.send_step_by_step(envelope, transaction).await?
        };
        self.between_transactions = true;
        tracing::debug!(
            address = %self.wire.address(),
            accepted = report.accepted(),
            refused_recipients = report.recipients.iter().filter(|r| !r.accepted()).count(),
            "message sent"
        );
        Ok(report)
    }

    async fn send_pipelined(
        &mut self,
        envelope: &Envelope,
        transaction: Transaction,
    ) -> Result<SendReport, ClientError> {
        let limit = self.target.timeouts.command;
        let mut recipients = Vec::with_capacity(envelope.rcpt_to.len());
        let mut mail_reply = None;
        let group_count = transaction.rcpts.len().div_ceil(PIPELINE_GROUP);
        let groups = transaction
            .rcpts
            .chunks(PIPELINE_GROUP)
            .zip(envelope.rcpt_to.chunks(PIPELINE_GROUP));
        for (index, (rcpts, addresses)) in groups.enumerate() {
            let mut batch = Vec::new();
            if index == 0 {
                batch.extend_from_slice(transaction.mail.as_bytes());
            }
            for rcpt in rcpts {
                batch.extend_from_slice(rcpt.as_bytes());
            }
            if index + 1 == group_count {
                batch.extend_from_slice(b"DATA\r\n");
            }
            let stage = if index == 0 { Stage::Mail } else { Stage::Rcpt };
            self.wire.write(&batch, stage, limit).await?;
            if index == 0 {
                let reply = self.wire.read_reply(Stage::Mail, limit).await?;
                if reply.code == 421 {
                    // The server is closing: no further reply will come.
                    return Err(self.refused(Stage::Mail, reply));
                }
                mail_reply = Some(reply);
            }
            for address in addresses {
                let reply = self.wire.read_reply(Stage::Rcpt, limit).await?;
                if reply.code == 421 {
                    return Err(self.refused(Stage::Rcpt, reply));
                }
                recipients.push(RecipientReport {
                    address: address.clone(),
                    reply,
                });
            }
        }
        // `Transaction::plan` refuses an envelope without recipients, so
        // the first group was written and its MAIL reply read.
        let mail_reply = mail_reply.ok_or_else(|| ClientError::InvalidEnvelope {
            detail: "it has no recipients".into(),
        })?;
        let data_reply = self.wire.read_reply(Stage::Data, limit).await?;
        let any_accepted = recipients.iter().any(RecipientReport::accepted);

        if data_reply.code == 354 {
            if mail_reply.is_positive() && any_accepted {
                return self.transfer(transaction.data, recipients).await;
            }
            // RFC 2920 section 3.1: a server must refuse DATA without a valid
            // recipient; one that did not gets an empty message, thrown away
            // by the RSET below.
            self.wire
                .write(b".\r\n", Stage::DataEnd, self.target.timeouts.data)
                .await?;
            self.wire
                .read_reply(Stage::DataEnd, self.target.timeouts.data)
                .await?;
        }
        self.reset().await?;
        if !mail_reply.is_positive() {
            return Err(self.refused(Stage::Mail, mail_reply));
        }
        let data = if any_accepted {
            DataOutcome::Refused(data_reply)
        } else {
            DataOutcome::NotSent
        };
        Ok(SendReport { recipients, data })
    }

    async fn send_step_by_step(
        &mut self,
        envelope: &Envelope,
        transaction: Transaction,
    ) -> Result<SendReport, ClientError> {
        let limit = self.target.timeouts.command;
        let mail_reply = self
            .wire
            .command(&transaction.mail, Stage::Mail, limit)
            .await?;
        if !mail_reply.is_positive() {
            // No transaction was opened: nothing to reset.
            return Err(self.refused(Stage::Mail, mail_reply));
        }
        let mut recipients = Vec::with_capacity(envelope.rcpt_to.len());
        for (address, rcpt) in envelope.rcpt_to.iter().zip(&transaction.rcpts) {
            let reply = self.wire.command(rcpt, Stage::Rcpt, limit).await?;
            recipients.push(RecipientReport {
                address: address.clone(),
                reply,
            });
        }
        if !recipients.iter().any(RecipientReport::accepted) {
            self.reset().await?;
            return Ok(SendReport {
                recipients,
                data: DataOutcome::NotSent,
            });
        }
        let data_reply = self.wire.command("DATA\r\n", Stage::Data, limit).await?;
        if data_reply.code != 354 {
            self.reset().await?;
            return Ok(SendReport {
                recipients,
                data: DataOutcome::Refused(data_reply),
            });
        }
        self.transfer(transaction.data, recipients).await
    }

    /// After 354: the dot-stuffed content and the reply to the final dot,
    /// which ends the transaction either way.
    async fn transfer(
        &mut self,
        data: Vec<u8>,
        recipients: Vec<RecipientReport>,
    ) -> Result<SendReport, ClientError> {
        let limit = self.target.timeouts.data;
        self.wire.write(&data, Stage::DataEnd, limit).await?;
        let reply = self.wire.read_reply(Stage::DataEnd, limit).await?;
        if reply.is_positive() {
            self.messages_sent += 1;
        }
        Ok(SendReport {
            recipients,
            data: DataOutcome::Final(reply),
        })
    }

    /// RSET: abandons any transaction in progress.
    pub async fn reset(&mut self) -> Result<(), ClientError> {
        self.simple_command("RSET\r\n", Stage::Rset).await?;
        self.between_transactions = true;
        Ok(())
    }

    /// NOOP: checks that the server is still there (before reusing a pooled
    /// session, for example).
    pub async fn noop(&mut self) -> Result<(), ClientError> {
        self.simple_command("NOOP\r\n", Stage::Noop).await
    }

    /// QUIT and close. The session is consumed whatever the server answers.
    pub async fn quit(mut self) -> Result<(), ClientError> {
        let result = match self.wire.ensure_usable() {
            Ok(()) => self
                .wire
                .command("QUIT\r\n", Stage::Quit, self.target.timeouts.command)
                .await
                .map(|_| ()),
            Err(error) => Err(error),
        };
        self.wire.shutdown().await;
        result
    }

    async fn simple_command(&mut self, line: &str, stage: Stage) -> Result<(), ClientError> {
        self.wire.ensure_usable()?;
        let reply = self
            .wire
            .command(line, stage, self.target.timeouts.command)
            .await?;
        if reply.is_positive() {
            Ok(())
        } else {
            Err(self.refused(stage, reply))
        }
    }

    fn refused(&self, stage: Stage, reply: Reply) -> ClientError {
        ClientError::Reply {
            address: self.wire.address().to_string(),
            stage,
            reply,
        }
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("address", &self.wire.address())
            .field("encrypted", &self.is_encrypted())
            .field("authenticated", &self.authenticated)
            .field("messages_sent", &self.messages_sent)
            .finish_non_exhaustive()
    }
}
