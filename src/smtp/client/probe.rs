//! Reading the certificate a server presents, for `oxirelay tls pin`: the
//! greeting, EHLO and STARTTLS (or implicit TLS), a handshake that accepts
//! any certificate but still checks the server's signature
//! ([`crate::tls::inspection_client_config`]), then QUIT.
//!
//! The session this builds is unverified, so it never leaves this module:
//! callers get the certificates, not a [`Session`] they could AUTH on.

use super::error::ClientError;
use super::session::Session;
use super::target::{Timeouts, TlsMode, UpstreamTarget};
use rustls::pki_types::CertificateDer;

/// How to reach TLS on the server being probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeTls {
    Starttls,
    Implicit,
}

/// The certificate chain `host:port` presents, end-entity first.
pub async fn read_server_certificates(
    host: &str,
    port: u16,
    tls: ProbeTls,
    ehlo_name: String,
    timeouts: Timeouts,
) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let target = UpstreamTarget {
        host: host.to_string(),
        port,
        security: match tls {
            ProbeTls::Starttls => TlsMode::Starttls,
            ProbeTls::Implicit => TlsMode::Implicit,
        },
        tls_config: crate::tls::inspection_client_config(),
        ehlo_name,
        timeouts,
    };
    let session = Session::connect(&target).await?;
    let chain = session.peer_certificates();
    // The certificate is read; how the server takes QUIT changes nothing.
    let _ = session.quit().await;
    Ok(chain)
}
