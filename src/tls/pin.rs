//! Certificate pinning for private servers, in the spirit of msmtp's
//! `tls_fingerprint`: an account with `tls_pin_sha256` accepts a server
//! whose end-entity certificate carries a pinned public key.
//!
//! The pin is the base64 SHA-256 of the certificate's SubjectPublicKeyInfo
//! (the form of HPKP and curl's `--pinnedpubkey`), not of the whole
//! certificate: a server that renews its certificate with the same key keeps
//! its pin, and the value can be computed on the server with openssl.
//!
//! Decisions, and why:
//!
//! - **Instead of the chain check, not in addition to it.** Pinning exists
//!   for servers webpki will not accept (a self-signed CA certificate used as
//!   the server's own); requiring both would accept nothing more. And a pin
//!   is exclusive: with one set, a certificate a public CA vouches for but
//!   whose key is not pinned is refused, which is what protects against a
//!   misissued certificate. Several pins are allowed, for key rollover.
//! - **No name or date check with a pin.** The pinned key identifies the
//!   server more exactly than a name does; private servers are often reached
//!   by an IP address or a short name their certificate does not list, and an
//!   internal certificate that lapses should not stop mail while its key is
//!   the one pinned. msmtp's fingerprint makes the same choice.
//! - **The handshake signature is still verified** with the crypto
//!   provider's algorithms, so the server proves it holds the pinned key;
//!   replaying the (public) certificate is not enough. There is no path from
//!   a pin mismatch to an unverified connection.

use super::certificate::CertificateSummary;
use super::rejection::{CertificateRejection, Problem};
use super::{ServerTrust, provider};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use std::fmt;

/// The prefix curl's `--pinnedpubkey` uses; accepted so a pin can be
/// copied from there unchanged.
const CURL_PREFIX: &str = "sha256//";

/// SHA-256 of a DER SubjectPublicKeyInfo.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpkiPin([u8; 32]);

impl SpkiPin {
    pub fn of_spki(spki_der: &[u8]) -> SpkiPin {
        SpkiPin(Sha256::digest(spki_der).into())
    }

    /// Parses the config form: base64 of 32 bytes, optionally `sha256//`
    /// first. The message says what was given and how to get a good value.
    pub fn parse(text: &str) -> Result<SpkiPin, String> {
        let value = text.trim();
        let value = value.strip_prefix(CURL_PREFIX).unwrap_or(value);
        let how = "print the server's pin with `oxirelay tls pin HOST:PORT`";
        let hex_digits = value.chars().filter(|c| c.is_ascii_hexdigit()).count();
        if value.len() >= 64
            && hex_digits == 64
            && value.chars().all(|c| c.is_ascii_hexdigit() || c == ':')
        {
            return Err(format!(
                "{text:?} looks like a hex certificate fingerprint (msmtp's tls_fingerprint); tls_pin_sha256 is the base64 SHA-256 of the server's public key (SubjectPublicKeyInfo): {how}"
            ));
        }
        let bytes = BASE64
            .decode(value)
            .map_err(|e| format!("{text:?} is not base64 ({e}); {how}"))?;
        let hash: [u8; 32] = bytes.try_into().map_err(|bytes: Vec<u8>| {
            format!(
                "{text:?} decodes to {} bytes, not the 32 of a SHA-256 hash; {how}",
                bytes.len()
            )
        })?;
        Ok(SpkiPin(hash))
    }
}

impl fmt::Display for SpkiPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&BASE64.encode(self.0))
    }
}

impl fmt::Debug for SpkiPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpkiPin({self})")
    }
}

/// Which end-entity keys a [`KeyVerifier`] accepts. There is no fallback
/// from one to the other: each client configuration is built with one.
#[derive(Debug)]
pub(super) enum AcceptedKeys {
    /// An account's `tls_pin_sha256`.
    Pinned(Vec<SpkiPin>),
    /// Any key, to read the certificate for `oxirelay tls pin` (see
    /// [`super::inspection_client_config`]); never an account's.
    AnyToInspect,
}

/// Accepts a server by its end-entity key (see the module header), and
/// checks that it signed the handshake with that key.
#[derive(Debug)]
pub(super) struct KeyVerifier {
    accepted: AcceptedKeys,
    algorithms: WebPkiSupportedAlgorithms,
}

impl KeyVerifier {
    pub(super) fn new(accepted: AcceptedKeys) -> KeyVerifier {
        KeyVerifier {
            accepted,
            algorithms: provider().signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for KeyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pins = match &self.accepted {
            AcceptedKeys::Pinned(pins) => pins,
            // Read, not trusted: the connection carries EHLO, STARTTLS and
            // QUIT only, and the user is told to check the pin out of band.
            AcceptedKeys::AnyToInspect => return Ok(ServerCertVerified::assertion()),
        };
        let summary = CertificateSummary::parse(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        if pins.contains(&summary.pin) {
            return Ok(ServerCertVerified::assertion());
        }
        Err(CertificateRejection {
            problem: Problem::PinMismatch {
                expected: pins.clone(),
                presented: summary.pin,
            },
            certificate: Some(summary),
            trust: ServerTrust::Pinned(pins.clone()),
        }
        .into())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_from_base64_and_curl_form() {
        let pin = SpkiPin::of_spki(b"key");
        let text = pin.to_string();
        assert_eq!(text.len(), 44);
        assert_eq!(SpkiPin::parse(&text), Ok(pin));
        assert_eq!(SpkiPin::parse(&format!("sha256//{text}")), Ok(pin));
        assert_eq!(SpkiPin::parse(&format!(" {text}\n")), Ok(pin));
    }

    #[test]
    fn bad_pins_say_what_is_wrong() {
        let err = SpkiPin::parse("not base64!").expect_err("not base64");
        assert!(
            err.contains("not base64") && err.contains("oxirelay tls pin"),
            "{err}"
        );
        let err = SpkiPin::parse(&BASE64.encode([0u8; 20])).expect_err("short");
        assert!(err.contains("20 bytes"), "{err}");
        let hex = (0..32)
            .map(|i| format!("{i:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        let err = SpkiPin::parse(&hex).expect_err("hex fingerprint");
        assert!(err.contains("msmtp"), "{err}");
    }
}
