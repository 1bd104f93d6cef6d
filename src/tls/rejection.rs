//! Saying exactly why a server's certificate was refused.
//!
//! rustls's errors name the rule ("UnknownIssuer", an opaque webpki
//! `CaUsedAsEndEntity`) but not the certificate, and cannot know what the
//! account already configured, so a message built from them alone tells a
//! user to set `ca_file` when it is set. [`DiagnosingVerifier`] wraps the
//! webpki verifier: it changes no decision, and when webpki refuses, it
//! reads the presented certificate and returns a [`CertificateRejection`]
//! (through rustls as `CertificateError::Other`) that the SMTP client turns
//! into the message, with the next step that fits this account's trust.

use super::ServerTrust;
use super::certificate::CertificateSummary;
use super::pin::SpkiPin;
use crate::clock::format_unix;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use std::fmt;
use std::sync::Arc;

/// Why a self-signed CA certificate on a server fails however it is trusted.
pub const CA_AS_SERVER_CERTIFICATE: &str =
    "webpki does not accept a CA certificate as a server certificate, even when it is in ca_file";

/// What is wrong with the presented certificate.
#[derive(Debug, Clone)]
pub enum Problem {
    /// webpki's `CaUsedAsEndEntity`: the server's own certificate has
    /// basic constraints CA=true. No `ca_file` makes webpki accept it.
    CaAsEndEntity,
    /// No trusted CA issued it (self-signed, or a private CA not trusted).
    UnknownIssuer,
    NameMismatch {
        expected: String,
    },
    Expired {
        now: i64,
    },
    NotYetValid {
        now: i64,
    },
    /// With `tls_pin_sha256`: the key is not one of the pins.
    PinMismatch {
        expected: Vec<SpkiPin>,
        presented: SpkiPin,
    },
    /// Any other refusal, as rustls put it.
    Other(rustls::Error),
}

/// A refused server certificate: the problem, what the certificate says
/// (when it could be read) and how the account was verifying.
#[derive(Debug, Clone)]
pub struct CertificateRejection {
    pub problem: Problem,
    pub certificate: Option<CertificateSummary>,
    pub trust: ServerTrust,
}

impl std::error::Error for CertificateRejection {}

impl fmt::Display for CertificateRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe("HOST:PORT"))
    }
}

impl From<CertificateRejection> for rustls::Error {
    fn from(rejection: CertificateRejection) -> Self {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(rejection))))
    }
}

impl CertificateRejection {
    /// The rejection a rustls error carries, if it is one of ours.
    pub fn find(error: &rustls::Error) -> Option<&CertificateRejection> {
        match error {
            rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
                other.0.downcast_ref::<CertificateRejection>()
            }
            _ => None,
        }
    }

    /// What is wrong and what to do, for the server at `address`
    /// (`host:port`, used in the `oxirelay tls pin` command it suggests).
    pub fn describe(&self, address: &str) -> String {
        let label = self
            .certificate
            .as_ref()
            .map(CertificateSummary::label)
            .unwrap_or_else(|| "which cannot be read".to_string());
        let self_signed = self.certificate.as_ref().is_some_and(|c| c.self_signed);
        let issuer = self
            .certificate
            .as_ref()
            .map(|c| c.issuer.clone())
            .unwrap_or_default();
        let pin = pin_advice(address, &self.trust);
        match (&self.problem, &self.trust) {
            (Problem::CaAsEndEntity, _) => format!(
                "the server presents {} ({label}) as its own certificate; {CA_AS_SERVER_CERTIFICATE}. Either give the server a certificate signed by that CA, or {pin}",
                if self_signed {
                    "a self-signed CA certificate".to_string()
                } else {
                    format!("a CA certificate issued by {issuer}")
                },
            ),
            (Problem::UnknownIssuer, ServerTrust::CaFile(path)) if self_signed => format!(
                "the server's certificate ({label}) is self-signed and not in ca_file {}. Either put this certificate (PEM, from the server's administrator) in ca_file, or {pin}",
                path.display()
            ),
            (Problem::UnknownIssuer, ServerTrust::CaFile(path)) => format!(
                "the server's certificate ({label}) is issued by {issuer}, which is not a CA in ca_file {} (with ca_file set, only its CAs are trusted). Put the certificate of {issuer} in ca_file, or {pin}",
                path.display()
            ),
            (Problem::UnknownIssuer, _) if self_signed => format!(
                "the server's certificate ({label}) is self-signed, so no trusted CA vouches for it. Either set ca_file to a copy of this certificate (PEM, from the server's administrator), or {pin}"
            ),
            (Problem::UnknownIssuer, _) => format!(
                "the server's certificate ({label}) is issued by {issuer}, which is not among this system's trusted roots. If that is a private CA, set ca_file to its certificate (PEM), or {pin}"
            ),
            (Problem::NameMismatch { expected }, _) => {
                let names = self
                    .certificate
                    .as_ref()
                    .map(|c| c.names.join(", "))
                    .filter(|names| !names.is_empty())
                    .unwrap_or_else(|| "no name at all".to_string());
                format!(
                    "the server's certificate ({label}) is valid for {names}, not for {expected}. Set the account's smtp host to a name the certificate lists, or give the server a certificate that names {expected}"
                )
            }
            (Problem::Expired { now }, _) => format!(
                "the server's certificate ({label}) expired on {} (this machine's clock says {}). Renew the server's certificate, or correct this machine's clock if it is wrong",
                self.certificate
                    .as_ref()
                    .map(|c| format_unix(c.not_after))
                    .unwrap_or_default(),
                format_unix(*now)
            ),
            (Problem::NotYetValid { now }, _) => format!(
                "the server's certificate ({label}) is not valid before {} (this machine's clock says {}). Correct this machine's clock, or the server's certificate dates",
                self.certificate
                    .as_ref()
                    .map(|c| format_unix(c.not_before))
                    .unwrap_or_default(),
                format_unix(*now)
            ),
            (
                Problem::PinMismatch {
                    expected,
                    presented,
                },
                _,
            ) => format!(
                "the server's key does not match tls_pin_sha256: expected {}, presented \"{presented}\" ({label}); no credentials were sent. If the server's key was replaced on purpose, run `oxirelay tls pin {address}`, check the new pin out of band and add it to tls_pin_sha256; if not, someone may be intercepting the connection",
                expected
                    .iter()
                    .map(|p| format!("\"{p}\""))
                    .collect::<Vec<_>>()
                    .join(" or "),
            ),
            (Problem::Other(error), ServerTrust::SystemRoots) => format!(
                "the server's certificate ({label}) was refused: {error}. If the server uses a private CA, set ca_file to that CA's PEM file"
            ),
            (Problem::Other(error), ServerTrust::CaFile(path)) => format!(
                "the server's certificate ({label}) was refused: {error}. Check that ca_file {} holds the CA that issued it",
                path.display()
            ),
            (Problem::Other(error), ServerTrust::Pinned(_)) => {
                format!("the server's certificate ({label}) was refused: {error}")
            }
        }
    }
}

/// The pinning alternative, said the same way in every message that offers
/// it.
fn pin_advice(address: &str, trust: &ServerTrust) -> String {
    format!(
        "pin the server's key: run `oxirelay tls pin {address}`, check the pin it prints out of band (with the server's administrator), and set tls_pin_sha256 = \"<that pin>\"{}",
        if matches!(trust, ServerTrust::CaFile(_)) {
            " in place of ca_file"
        } else {
            ""
        }
    )
}

/// The webpki chain and name check, unchanged in what it accepts; its
/// refusals come out as [`CertificateRejection`].
#[derive(Debug)]
pub(super) struct DiagnosingVerifier {
    pub(super) inner: Arc<WebPkiServerVerifier>,
    pub(super) trust: ServerTrust,
}

impl DiagnosingVerifier {
    fn diagnose(
        &self,
        error: rustls::Error,
        end_entity: &CertificateDer<'_>,
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> rustls::Error {
        let rustls::Error::InvalidCertificate(certificate_error) = &error else {
            return error;
        };
        let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let problem = match certificate_error {
            CertificateError::Other(other)
                if other.0.downcast_ref::<webpki::Error>()
                    == Some(&webpki::Error::CaUsedAsEndEntity) =>
            {
                Problem::CaAsEndEntity
            }
            CertificateError::UnknownIssuer => Problem::UnknownIssuer,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                Problem::NameMismatch {
                    expected: server_name.to_str().into_owned(),
                }
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                Problem::Expired { now }
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                Problem::NotYetValid { now }
            }
            _ => Problem::Other(error.clone()),
        };
        CertificateRejection {
            problem,
            certificate: CertificateSummary::parse(end_entity).ok(),
            trust: self.trust.clone(),
        }
        .into()
    }
}

impl ServerCertVerifier for DiagnosingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|error| self.diagnose(error, end_entity, server_name, now))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}
