//! TLS configuration shared by the upstream client, the submission listener
//! and the sandbox. rustls with aws-lc-rs as the one crypto provider
//! (installed once by [`install_crypto_provider`]).

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
    #[error("no trusted root certificates were found on this system; set ca_file for the account")]
    NoRoots,
    #[error("the TLS configuration is invalid: {0}")]
    Config(#[from] rustls::Error),
}

/// Installs aws-lc-rs as the process-wide rustls provider. Safe to call more
/// than once; the first call wins.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A client configuration that trusts the system roots and, if given, one
/// extra CA file (a private CA, or the sandbox's generated one).
pub fn client_config(extra_ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = extra_ca {
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
    Ok(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
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
