//! A session that may authenticate and send: TLS (or loopback plaintext
//! explicitly allowed, see `establish`). AUTH with a bearer token, mail
//! transactions with per-recipient outcomes, RSET, NOOP, QUIT.
//!
//! A session is reused for many messages (the pool keeps it); each `send`
//! ends the transaction it starts, with the reply to the final dot or with
//! RSET, so the next `send` always starts clean.

use super::capabilities::Capabilities;
use super::envelope::{DataOutcome, Envelope, RecipientReport, SendReport, Transaction};
use super::error::{ClientError, Stage};
use super::reply::Reply;
use super::target::UpstreamTarget;
use super::wire::{Transport, Wire};
use crate::smtp::sasl::{self, BearerCredentials, Mechanism, OAuthErrorStatus};
use std::time::Instant;
use zeroize::Zeroizing;

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
        }
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
        if !self.capabilities.offers_auth(Mechanism::Plain) {
            return Err(ClientError::MechanismNotOffered {
                address: self.wire.address().to_string(),
                mechanism: Mechanism::Plain,
                offered: self.capabilities.auth.clone(),
            });
        }
        // The line holds the password: wiped from memory once written.
        let line = Zeroizing::new(format!(
            "AUTH PLAIN {}\r\n",
            *Zeroizing::new(sasl::encode_base64(
                sasl::encode_plain(credentials).expose().as_bytes()
            ))
        ));
        let limit = self.target.timeouts.command;
        self.wire.write(line.as_bytes(), Stage::Auth, limit).await?;
        let reply = self.wire.read_reply(Stage::Auth, limit).await?;
        if reply.is_positive() {
            self.authenticated = true;
            return Ok(());
        }
        Err(ClientError::AuthRejected {
            address: self.wire.address().to_string(),
            user: credentials.user.clone(),
            reply,
            status: None,
        })
    }

    /// AUTH with a bearer token, the SASL message sent as the initial
    /// response (RFC 4954 lets it be up to 12,288 octets per line; Microsoft
    /// and Google accept their long tokens this way).
    ///
    /// On refusal returns [`ClientError::AuthRejected`] with the final reply
    /// and, when the server sent the RFC 7628 error challenge, its decoded
    /// status. The session stays usable: the caller may refresh the token and
    /// call this again (contract 4).
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
        if !self.capabilities.offers_auth(mechanism) {
            return Err(ClientError::MechanismNotOffered {
                address: self.wire.address().to_string(),
                mechanism,
                offered: self.capabilities.auth.clone(),
            });
        }
        tracing::debug!(
            address = %self.wire.address(),
            %mechanism,
            user = %credentials.user,
            token = %credentials.token.fingerprint(),
            "authenticating"
        );
        // The line holds the token: wiped from memory once written.
        let line = Zeroizing::new(format!(
            "AUTH {} {}\r\n",
            mechanism.wire_name(),
            *Zeroizing::new(sasl::encode_base64(message.expose().as_bytes()))
        ));
        let limit = self.target.timeouts.command;
        self.wire.write(line.as_bytes(), Stage::Auth, limit).await?;
        let mut reply = self.wire.read_reply(Stage::Auth, limit).await?;
        let mut status = None;
        if reply.code == 334 {
            // RFC 7628 section 3.2.3: the server reports why in a challenge
            // and waits for the client's acknowledgement before failing.
            status =
                OAuthErrorStatus::from_base64(reply.first_line_payload().as_bytes()).map(Box::new);
            let ack = format!("{}\r\n", sasl::error_challenge_ack(mechanism));
            reply = self.wire.command(&ack, Stage::Auth, limit).await?;
            if reply.code == 334 {
                // A second challenge has no meaning for these mechanisms:
                // cancel the exchange (RFC 4954 "*") and report the refusal.
                reply = self.wire.command("*\r\n", Stage::Auth, limit).await?;
            }
        }
        if reply.is_positive() {
            self.authenticated = true;
            tracing::info!(address = %self.wire.address(), user = %credentials.user, "authenticated");
            return Ok(());
        }
        tracing::info!(
            address = %self.wire.address(),
            user = %credentials.user,
            token = %credentials.token.fingerprint(),
            reply = %reply,
            oauth_status = status.as_ref().map(|s| s.status.as_str()),
            "authentication refused"
        );
        Err(ClientError::AuthRejected {
            address: self.wire.address().to_string(),
            user: credentials.user.clone(),
            reply,
            status,
        })
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
                mail_reply = Some(self.wire.read_reply(Stage::Mail, limit).await?);
            }
            for address in addresses {
                let reply = self.wire.read_reply(Stage::Rcpt, limit).await?;
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
        self.simple_command("RSET\r\n", Stage::Rset).await
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
