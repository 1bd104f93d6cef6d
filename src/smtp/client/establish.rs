//! Getting from nothing to a [`Session`] that may authenticate (contract 5,
//! TLS before tokens, by the type system):
//!
//! - [`PlaintextSession`] is TCP after the greeting and EHLO. It has no AUTH
//!   and no MAIL: the only ways on are [`PlaintextSession::starttls`] and,
//!   for the sandbox, [`PlaintextSession::allow_plaintext_on_loopback`].
//! - Implicit TLS goes straight to a [`Session`].
//!
//! Certificates are verified as the target's TLS configuration says
//! ([`crate::tls::ServerTrust`]: the configured roots with the target host as
//! the server name, or the account's pinned keys); there is no switch to turn
//! verification off.

use super::capabilities::Capabilities;
use super::error::{ClientError, Stage};
use super::session::Session;
use super::target::{TlsMode, UpstreamTarget, is_loopback_host};
use super::wire::{Transport, Wire};
use crate::tls::CertificateRejection;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A connected, greeted, unencrypted session: it can only be secured or,
/// on loopback, explicitly accepted as plaintext.
pub struct PlaintextSession {
    wire: Wire<TcpStream>,
    target: UpstreamTarget,
    capabilities: Capabilities,
}

impl Session {
    /// Connects as `target.security` says and returns a session ready for
    /// AUTH: STARTTLS (required), implicit TLS, or plaintext to loopback.
    pub async fn connect(target: &UpstreamTarget) -> Result<Session, ClientError> {
        match target.security {
            TlsMode::Starttls => PlaintextSession::connect(target).await?.starttls().await,
            TlsMode::Implicit => {
                check_ehlo_name(target)?;
                let tcp = connect_tcp(target).await?;
                let tls = tls_handshake(tcp, target).await?;
                let mut wire = Wire::new(Transport::Tls(Box::new(tls)), target.address());
                let capabilities = greet_and_ehlo(&mut wire, target).await?;
                Ok(Session::new(wire, target.clone(), capabilities))
            }
            TlsMode::None => {
                // Checked before connecting too, so nothing at all goes to a
                // remote host over plaintext.
                check_plaintext_allowed(target)?;
                PlaintextSession::connect(target)
                    .await?
                    .allow_plaintext_on_loopback()
                    .await
            }
        }
    }
}

impl PlaintextSession {
    /// TCP, the greeting and EHLO, unencrypted: the first half of a
    /// STARTTLS session (or all of a loopback plaintext one).
    pub async fn connect(target: &UpstreamTarget) -> Result<Self, ClientError> {
        check_ehlo_name(target)?;
        let tcp = connect_tcp(target).await?;
        let mut wire = Wire::new(tcp, target.address());
        let capabilities = greet_and_ehlo(&mut wire, target).await?;
        Ok(PlaintextSession {
            wire,
            target: target.clone(),
            capabilities,
        })
    }

    /// What the server offered before TLS (not to be trusted for anything
    /// but the STARTTLS keyword: an attacker can rewrite it).
    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// STARTTLS, the handshake with certificate verification, and EHLO again
    /// (RFC 3207: what was learnt before TLS is forgotten). Refuses when the
    /// server does not offer STARTTLS; no credential has been sent then.
    pub async fn starttls(mut self) -> Result<Session, ClientError> {
        let target = self.target;
        if !self.capabilities.starttls {
            quit_quietly(&mut self.wire, &target).await;
            return Err(ClientError::StartTlsNotOffered {
                address: target.address(),
            });
        }
        let reply = self
            .wire
            .command("STARTTLS\r\n", Stage::StartTls, target.timeouts.command)
            .await?;
        if reply.code != 220 {
            quit_quietly(&mut self.wire, &target).await;
            return Err(ClientError::Reply {
                address: target.address(),
                stage: Stage::StartTls,
                reply,
            });
        }
        if self.wire.buffered() > 0 {
            // Bytes after the 220 were sent before TLS and would be read as
            // if they came over it (the CVE-2011-0411 injection).
            self.wire.shutdown().await;
            return Err(ClientError::Protocol {
                address: target.address(),
                stage: Stage::StartTls,
                detail: "it sent data after its STARTTLS reply, before the TLS handshake; refusing the connection".into(),
            });
        }
        let (tcp, address) = self.wire.into_parts();
        let tls = tls_handshake(tcp, &target).await?;
        let mut wire = Wire::new(Transport::Tls(Box::new(tls)), address);
        let capabilities = ehlo(&mut wire, &target).await?;
        Ok(Session::new(wire, target, capabilities))
    }

    /// Accepts this unencrypted session for AUTH: only when the target asks
    /// for [`TlsMode::None`], its host is a loopback name or address,
    /// and the peer we are actually connected to is a loopback address.
    pub async fn allow_plaintext_on_loopback(mut self) -> Result<Session, ClientError> {
        let peer_is_loopback = self
            .wire
            .stream()
            .peer_addr()
            .is_ok_and(|peer| peer.ip().to_canonical().is_loopback());
        if let Err(error) = check_plaintext_allowed(&self.target).and_then(|()| {
            if peer_is_loopback {
                Ok(())
            } else {
                Err(ClientError::PlaintextNotLoopback {
                    address: self.target.address(),
                })
            }
        }) {
            quit_quietly(&mut self.wire, &self.target).await;
            return Err(error);
        }
        let (tcp, address) = self.wire.into_parts();
        let wire = Wire::new(Transport::LoopbackPlaintext(tcp), address);
        Ok(Session::new(wire, self.target, self.capabilities))
    }

    pub async fn quit(mut self) {
        quit_quietly(&mut self.wire, &self.target).await;
    }
}

fn check_plaintext_allowed(target: &UpstreamTarget) -> Result<(), ClientError> {
    if target.security == TlsMode::None && is_loopback_host(&target.host) {
        Ok(())
    } else {
        Err(ClientError::PlaintextNotLoopback {
            address: target.address(),
        })
    }
}

/// The EHLO name goes into a command line: it must be one word.
fn check_ehlo_name(target: &UpstreamTarget) -> Result<(), ClientError> {
    let name = &target.ehlo_name;
    if name.is_empty() || name.len() > 255 || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ClientError::InvalidEhloName { name: name.clone() });
    }
    Ok(())
}

async fn connect_tcp(target: &UpstreamTarget) -> Result<TcpStream, ClientError> {
    let limit = target.timeouts.connect;
    match timeout(limit, TcpStream::connect((target.bare_host(), target.port))).await {
        Ok(Ok(tcp)) => {
            // Commands are written whole; waiting to coalesce only adds latency.
            let _ = tcp.set_nodelay(true);
            Ok(tcp)
        }
        Ok(Err(error)) => Err(ClientError::Connect {
            address: target.address(),
            reason: error.to_string(),
        }),
        Err(_) => Err(ClientError::Timeout {
            address: target.address(),
            stage: Stage::Connect,
            after: limit,
        }),
    }
}

async fn tls_handshake(
    tcp: TcpStream,
    target: &UpstreamTarget,
) -> Result<TlsStream<TcpStream>, ClientError> {
    let host = target.bare_host().to_string();
    let server_name = ServerName::try_from(host.clone())
        .map_err(|_| ClientError::InvalidServerName { host: host.clone() })?;
    let connector = TlsConnector::from(target.tls_config.clone());
    let limit = target.timeouts.command;
    match timeout(limit, connector.connect(server_name, tcp)).await {
        Ok(Ok(tls)) => {
            tracing::debug!(address = %target.address(), "TLS established");
            Ok(tls)
        }
        Ok(Err(error)) => {
            let rustls_error = error
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>());
            let certificate = matches!(
                rustls_error,
                Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)
            );
            let reason = match rustls_error.and_then(CertificateRejection::find) {
                Some(rejection) => rejection.describe(&target.address()),
                None => error.to_string(),
            };
            Err(ClientError::TlsHandshake {
                host,
                reason,
                certificate,
            })
        }
        Err(_) => Err(ClientError::Timeout {
            address: target.address(),
            stage: Stage::TlsHandshake,
            after: limit,
        }),
    }
}

async fn greet_and_ehlo<S>(
    wire: &mut Wire<S>,
    target: &UpstreamTarget,
) -> Result<Capabilities, ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let greeting = wire
        .read_reply(Stage::Greeting, target.timeouts.command)
        .await?;
    if greeting.code != 220 {
        quit_quietly(wire, target).await;
        return Err(ClientError::Reply {
            address: target.address(),
            stage: Stage::Greeting,
            reply: greeting,
        });
    }
    ehlo(wire, target).await
}

async fn ehlo<S>(wire: &mut Wire<S>, target: &UpstreamTarget) -> Result<Capabilities, ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let reply = wire
        .command(
            &format!("EHLO {}\r\n", target.ehlo_name),
            Stage::Ehlo,
            target.timeouts.command,
        )
        .await?;
    if !reply.is_positive() {
        quit_quietly(wire, target).await;
        return Err(ClientError::Reply {
            address: target.address(),
            stage: Stage::Ehlo,
            reply,
        });
    }
    Ok(Capabilities::from_ehlo(&reply))
}

/// A server that misbehaved during setup does not get a full command
/// timeout to answer QUIT: the caller is waiting to report the real error.
const QUIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// QUIT on the way out of a failed setup: polite, bounded, and its own
/// failure does not hide the error that led here.
async fn quit_quietly<S>(wire: &mut Wire<S>, target: &UpstreamTarget)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if wire.is_usable() {
        let limit = target.timeouts.command.min(QUIT_TIMEOUT);
        let _ = wire.command("QUIT\r\n", Stage::Quit, limit).await;
    }
    wire.shutdown().await;
}
