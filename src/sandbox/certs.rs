//! The sandbox's certificates: a throw-away CA generated at start, and a
//! leaf for `localhost`, `127.0.0.1` and `::1` signed by it. Clients trust
//! the sandbox by trusting the CA file (never by turning verification off).
//!
//! [`SandboxCa::generate_self_signed_ca`] makes the other shape, the one
//! many internal servers have: one self-signed CA certificate that is also
//! the server's own. webpki refuses it whatever the trust anchors, so it is
//! what the private-server messages and `tls_pin_sha256` are tested with.

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("cannot generate the sandbox certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error(
        "cannot write the sandbox CA certificate to {path}: {source}; check that the directory exists and is writable"
    )]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// The names the leaf certificate is valid for: the loopback names a client
/// on this machine may use.
pub const LEAF_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// A generated CA and the leaf it signed.
pub struct SandboxCa {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    leaf_der: CertificateDer<'static>,
    leaf_key_der: Vec<u8>,
    leaf_pem: String,
    leaf_key_pem: String,
}

impl std::fmt::Debug for SandboxCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The leaf key stays out of Debug output.
        f.debug_struct("SandboxCa").finish_non_exhaustive()
    }
}

impl SandboxCa {
    pub fn generate() -> Result<Self, CertsError> {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "oxirelay sandbox CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = rcgen::KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let mut leaf_params = rcgen::CertificateParams::new(LEAF_NAMES.map(String::from).to_vec())?;
        leaf_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        leaf_params.use_authority_key_identifier_extension = true;
        leaf_params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_key = rcgen::KeyPair::generate()?;
        let leaf_cert = leaf_params.signed_by(&leaf_key, &issuer)?;

        Ok(SandboxCa {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().clone(),
            leaf_der: leaf_cert.der().clone(),
            leaf_key_der: leaf_key.serialize_der(),
            leaf_pem: leaf_cert.pem(),
            leaf_key_pem: leaf_key.serialize_pem(),
        })
    }

    /// One certificate for [`LEAF_NAMES`] that is its own CA (basic
    /// constraints CA=true) and the server's certificate at once.
    pub fn generate_self_signed_ca() -> Result<Self, CertsError> {
        let mut params = rcgen::CertificateParams::new(LEAF_NAMES.map(String::from).to_vec())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "oxirelay sandbox private server");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(SandboxCa {
            ca_pem: cert.pem(),
            ca_der: cert.der().clone(),
            leaf_der: cert.der().clone(),
            leaf_key_der: key.serialize_der(),
            leaf_pem: cert.pem(),
            leaf_key_pem: key.serialize_pem(),
        })
    }

    /// Whether the server's certificate is the CA certificate itself.
    fn is_self_signed_leaf(&self) -> bool {
        self.leaf_der == self.ca_der
    }

    /// The chain the server sends: the leaf, and the CA unless they are one.
    fn chain(&self) -> Vec<CertificateDer<'static>> {
        if self.is_self_signed_leaf() {
            vec![self.leaf_der.clone()]
        } else {
            vec![self.leaf_der.clone(), self.ca_der.clone()]
        }
    }

    /// The server certificate, DER (the one whose key a client pins).
    pub fn leaf_der(&self) -> &CertificateDer<'static> {
        &self.leaf_der
    }

    /// The CA certificate, PEM: what a client adds as `ca_file`.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// Writes the CA certificate (public; no key) to `path`.
    pub fn write_ca(&self, path: &Path) -> Result<(), CertsError> {
        std::fs::write(path, &self.ca_pem).map_err(|source| CertsError::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Writes the leaf's chain (leaf, then CA) and its private key as PEM
    /// files, the form a `[[listener]]` takes (`cert`, `key`). The key file
    /// is created readable by its owner only.
    pub fn write_leaf(&self, cert: &Path, key: &Path) -> Result<(), CertsError> {
        let write_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CertsError::Write { path, source }
        };
        let chain = if self.is_self_signed_leaf() {
            self.leaf_pem.clone()
        } else {
            format!("{}{}", self.leaf_pem, self.ca_pem)
        };
        std::fs::write(cert, chain).map_err(write_error(cert))?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        use std::io::Write;
        options
            .open(key)
            .and_then(|mut file| file.write_all(self.leaf_key_pem.as_bytes()))
            .map_err(write_error(key))
    }

    /// A rustls server configuration presenting the leaf.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, CertsError> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key_der.clone()));
        Ok(crate::tls::server_config(self.chain(), key)?)
    }

    /// A rustls client configuration trusting only this CA (for tests and
    /// the demo's own client).
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, CertsError> {
        crate::tls::install_crypto_provider();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.ca_der.clone())
            .map_err(crate::tls::TlsError::from)?;
        Ok(Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_a_ca_and_a_usable_server_config() {
        let ca = SandboxCa::generate().expect("generate");
        assert!(ca.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        ca.server_config().expect("server config");
        ca.client_config().expect("client config");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ca.pem");
        ca.write_ca(&path).expect("write");
        assert_eq!(
            crate::tls::read_certificates(&path)
                .expect("read back")
                .len(),
            1
        );
        assert!(!format!("{ca:?}").contains("PRIVATE"));
    }

    #[test]
    fn a_self_signed_ca_is_its_own_server_certificate() {
        let ca = SandboxCa::generate_self_signed_ca().expect("generate");
        assert_eq!(ca.leaf_der(), ca.ca_der());
        assert_eq!(ca.chain().len(), 1);
        let summary = crate::tls::CertificateSummary::parse(ca.leaf_der()).expect("parses");
        assert!(summary.is_ca && summary.self_signed, "{summary:?}");
        assert_eq!(summary.names, LEAF_NAMES);
        ca.server_config().expect("server config");
    }

    #[test]
    fn written_leaf_loads_as_a_server_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = SandboxCa::generate().expect("ca");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        ca.write_leaf(&cert, &key).expect("write");
        crate::tls::server_config_from_files(&cert, &key).expect("loads");
        assert_eq!(
            crate::tls::read_certificates(&cert).expect("chain").len(),
            2
        );
    }
}
