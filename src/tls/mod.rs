//! TLS configuration shared by the upstream client, the submission listener
//! and the sandbox. rustls with aws-lc-rs as the one crypto provider
//! (installed once by [`install_crypto_provider`]).
//!
//! How an upstream server is trusted is a [`ServerTrust`]: the system roots,
//! a `ca_file`, or pinned keys (`pin`). Every refusal of a certificate comes
//! out as a [`CertificateRejection`] that says what is wrong and what to do
//! (`rejection`); `certificate` reads what a certificate says about itself.

mod certificate;
pub mod listener;
mod pin;
mod rejection;

pub use certificate::{CertificateParseError, CertificateSummary};
pub use pin::SpkiPin;
pub use rejection::{CA_AS_SERVER_CERTIFICATE, CertificateRejection, Problem};

use pin::{AcceptedKeys, KeyVerifier};
use rejection::DiagnosingVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} from {path}: {reason}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{path} holds no {what}; expected a PEM file")]
    Empty { what: &'static str, path: PathBuf },
    #[error(
        "no trusted root certificates were found on this system; set ca_file for the account, or tls_pin_sha256 for a private server"
    )]
    NoRoots,
    #[error("the TLS configuration is invalid: {0}")]
    Config(#[from] rustls::Error),
    #[error(
        "the certificate verifier cannot be built: {0}; check that ca_file holds CA certificates"
    )]
    Verifier(#[from] rustls::client::VerifierBuilderError),
}

/// Installs aws-lc-rs as the process-wide rustls provider. Safe to call more
/// than once; the first call wins.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// How an upstream server's certificate is checked. One of the three, never
/// a mix: `oauth::account` refuses an account with both `ca_file` and
/// `tls_pin_sha256`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerTrust {
    /// webpki: a chain to one of the system's roots, the name, the dates.
    SystemRoots,
    /// webpki as above, with the CAs of this PEM file as the only roots.
    CaFile(PathBuf),
    /// The end-entity key must be one of these (never empty); no chain,
    /// name or date check (see `pin`'s module header for why).
    Pinned(Vec<SpkiPin>),
}

impl ServerTrust {
    pub fn from_ca_file(ca_file: Option<&Path>) -> ServerTrust {
        ca_file.map_or(ServerTrust::SystemRoots, |path| {
            ServerTrust::CaFile(path.to_path_buf())
        })
    }
}

/// The process's crypto provider (aws-lc-rs, unless something installed
/// another first).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    install_crypto_provider();
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// A client configuration that trusts the system roots or, if given, only
/// the CAs of `extra_ca` (a private CA, or the sandbox's generated one).
pub fn client_config(extra_ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    client_config_for(&ServerTrust::from_ca_file(extra_ca))
}

/// A client configuration that checks the server as `trust` says.
pub fn client_config_for(trust: &ServerTrust) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    install_crypto_provider();
    // A custom verifier goes through rustls's `dangerous()` door; both
    // verify (see `rejection` and `pin`), neither accepts more than asked.
    let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> = match trust {
        ServerTrust::Pinned(pins) => Arc::new(KeyVerifier::new(AcceptedKeys::Pinned(pins.clone()))),
        ServerTrust::SystemRoots | ServerTrust::CaFile(_) => {
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots(trust)?),
                provider(),
            )
            .build()?;
            Arc::new(DiagnosingVerifier {
                inner,
                trust: trust.clone(),
            })
        }
    };
    Ok(Arc::new(
        rustls::ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    ))
}

fn roots(trust: &ServerTrust) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    if let ServerTrust::CaFile(path) = trust {
        for cert in read_certificates(path)? {
            roots.add(cert)?;
        }
    } else {
        let found = rustls_native_certs::load_native_certs();
        for cert in found.certs {
            // A system store may hold a certificate rustls cannot parse; the
            // rest are still good roots.
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err(TlsError::NoRoots);
        }
    }
    Ok(roots)
}

/// For *reading* a server's certificate (`oxirelay tls pin`): accepts any
/// certificate so the handshake completes and the certificate can be shown,
/// and still verifies the handshake signature, so what is shown is a key the
/// peer holds (a replayed certificate does not get this far). Crate-private
/// and used only by `smtp::client::probe`, which sends EHLO, STARTTLS and
/// QUIT over it, never a credential; accounts never get it (contract 5).
pub(crate) fn inspection_client_config() -> Arc<rustls::ClientConfig> {
    install_crypto_provider();
    Arc::new(
        rustls::ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(KeyVerifier::new(
                AcceptedKeys::AnyToInspect,
            )))
            .with_no_client_auth(),
    )
}

/// A server configuration from PEM certificate chain and private key files.
pub fn server_config_from_files(
    cert: &Path,
    key: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = read_certificates(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Pem {
        what: "a private key",
        path: key.to_path_buf(),
        reason: e.to_string(),
    })?;
    server_config(chain, key_der)
}

pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    install_crypto_provider();
    Ok(Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)?,
    ))
}

pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_error = |reason: String| TlsError::Pem {
        what: "certificates",
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what: "certificates",
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests;
