//! The verifiers over real loopback TCP and real TLS handshakes: a rustls
//! server with a certificate made here, our client configuration on the
//! other side.

use super::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, PublicKeyData};
use rustls::pki_types::{PrivatePkcs8KeyDer, ServerName};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// No handshake on loopback takes this long; a hang fails the test.
const WAIT: Duration = Duration::from_secs(10);

struct TestCert {
    der: CertificateDer<'static>,
    pem: String,
    key: KeyPair,
}

impl TestCert {
    fn new(names: &[&str], configure: impl FnOnce(&mut CertificateParams)) -> TestCert {
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "private.test");
        configure(&mut params);
        let cert = params.self_signed(&key).expect("self-signed");
        TestCert {
            der: cert.der().clone(),
            pem: cert.pem(),
            key,
        }
    }

    /// A self-signed certificate that is its own CA: the private server.
    fn self_signed_ca() -> TestCert {
        TestCert::new(&["localhost", "127.0.0.1"], |params| {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        })
    }

    /// The pin, computed here from rcgen's key, not from the certificate.
    fn pin(&self) -> SpkiPin {
        SpkiPin::of_spki(&self.key.subject_public_key_info())
    }

    fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        server_config(vec![self.der.clone()], self.private_key()).expect("server config")
    }

    fn ca_file(&self) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        std::io::Write::write_all(&mut file, self.pem.as_bytes()).expect("write");
        file
    }
}

/// Presents `certificate` but signs the handshake with `key`: a server
/// replaying someone else's certificate.
#[derive(Debug)]
struct ReplayedCertificate(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for ReplayedCertificate {
    fn resolve(
        &self,
        _client_hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn replaying_server(
    certificate: &TestCert,
    signer: &TestCert,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ServerConfig> {
    install_crypto_provider();
    let key = rustls::crypto::aws_lc_rs::sign::any_supported_type(&signer.private_key())
        .expect("signing key");
    let certified = rustls::sign::CertifiedKey::new(vec![certificate.der.clone()], key);
    Arc::new(
        rustls::ServerConfig::builder_with_protocol_versions(versions)
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(ReplayedCertificate(Arc::new(certified)))),
    )
}

/// One handshake over loopback TCP; the client's result.
async fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    name: &str,
) -> Result<(), rustls::Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server_side = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        // The server's own view does not matter: the client's is tested.
        let _ = tokio_rustls::TlsAcceptor::from(server).accept(tcp).await;
    });
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from(name.to_string()).expect("server name");
    let result = tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(client).connect(name, tcp),
    )
    .await
    .expect("the handshake finishes in time");
    let _ = tokio::time::timeout(WAIT, server_side).await;
    result.map(|_| ()).map_err(|error| {
        error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .cloned()
            .unwrap_or_else(|| rustls::Error::General(error.to_string()))
    })
}

fn rejection(error: &rustls::Error) -> &CertificateRejection {
    CertificateRejection::find(error)
        .unwrap_or_else(|| panic!("expected a certificate rejection, got {error:?}"))
}

/// How a client trusting only `ca` (as `ca_file`) refuses `server`.
async fn refusal_with_ca_file(
    server: &TestCert,
    ca: &TestCert,
    name: &str,
) -> CertificateRejection {
    let file = ca.ca_file();
    let trust = ServerTrust::CaFile(file.path().to_path_buf());
    let client = client_config_for(&trust).expect("client");
    let error = handshake(server.server_config(), client, name)
        .await
        .expect_err("the certificate is refused");
    rejection(&error).clone()
}

#[tokio::test]
async fn a_matching_pin_is_accepted_without_chain_or_name() {
    let cert = TestCert::self_signed_ca();
    let pinned = client_config_for(&ServerTrust::Pinned(vec![cert.pin()])).expect("client");
    // A name the certificate does not list: the key is the identity.
    handshake(cert.server_config(), pinned, "mail.elsewhere.test")
        .await
        .expect("the pinned key is accepted");
}

#[tokio::test]
async fn any_of_several_pins_is_accepted_for_rollover() {
    let old = TestCert::self_signed_ca();
    let new = TestCert::self_signed_ca();
    let both = client_config_for(&ServerTrust::Pinned(vec![old.pin(), new.pin()])).expect("client");
    handshake(new.server_config(), both, "localhost")
        .await
        .expect("the new key is accepted");
}

#[tokio::test]
async fn a_pin_mismatch_names_the_expected_and_presented_pins() {
    let cert = TestCert::self_signed_ca();
    let other = TestCert::self_signed_ca();
    let pinned = client_config_for(&ServerTrust::Pinned(vec![other.pin()])).expect("client");
    let error = handshake(cert.server_config(), pinned, "localhost")
        .await
        .expect_err("another key");
    let rejection = rejection(&error);
    assert!(
        matches!(&rejection.problem, Problem::PinMismatch { expected, presented }
            if expected == &[other.pin()] && *presented == cert.pin()),
        "{rejection:?}"
    );
    let text = rejection.describe("mail.test:587");
    assert!(
        text.contains(&format!("expected \"{}\"", other.pin())),
        "{text}"
    );
    assert!(
        text.contains(&format!("presented \"{}\"", cert.pin())),
        "{text}"
    );
    assert!(text.contains("oxirelay tls pin mail.test:587"), "{text}");
    assert!(!text.contains("set ca_file"), "{text}");
}

#[tokio::test]
async fn a_pinned_certificate_signed_with_another_key_is_refused() {
    // The pinned certificate is public; presenting it is not enough, the
    // handshake must be signed with its key. Both TLS versions.
    let pinned_cert = TestCert::self_signed_ca();
    let impostor = TestCert::self_signed_ca();
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let server = replaying_server(&pinned_cert, &impostor, &[version]);
        let client =
            client_config_for(&ServerTrust::Pinned(vec![pinned_cert.pin()])).expect("client");
        let error = handshake(server.clone(), client, "localhost")
            .await
            .expect_err("the signature does not verify");
        let bad_signature =
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature);
        assert_eq!(error, bad_signature, "{version:?}");
        // Reading a certificate for `tls pin` checks the signature too.
        let error = handshake(server, inspection_client_config(), "localhost")
            .await
            .expect_err("the inspection handshake checks the signature");
        assert_eq!(error, bad_signature, "{version:?}");
    }
}

#[tokio::test]
async fn a_self_signed_ca_in_ca_file_is_refused_as_a_server_certificate() {
    let cert = TestCert::self_signed_ca();
    let rejection = refusal_with_ca_file(&cert, &cert, "localhost").await;
    assert!(
        matches!(rejection.problem, Problem::CaAsEndEntity),
        "{rejection:?}"
    );
    let text = rejection.describe("localhost:587");
    assert!(
        text.starts_with("the server presents a self-signed CA certificate (subject CN=private.test) as its own certificate; webpki does not accept a CA certificate as a server certificate, even when it is in ca_file"),
        "{text}"
    );
    assert!(
        text.contains("tls_pin_sha256 = \"<that pin>\" in place of ca_file"),
        "{text}"
    );
    assert!(!text.contains("set ca_file"), "{text}");
}

#[tokio::test]
async fn a_self_signed_server_certificate_in_ca_file_is_trusted() {
    // Not a CA: webpki takes it as its own trust anchor. What README says
    // ca_file does for such a server.
    let cert = TestCert::new(&["localhost"], |_| {});
    let file = cert.ca_file();
    let client = client_config(Some(file.path())).expect("client");
    handshake(cert.server_config(), client, "localhost")
        .await
        .expect("trusted through ca_file");
}

#[tokio::test]
async fn an_untrusted_self_signed_certificate_says_so_for_each_trust() {
    let cert = TestCert::new(&["localhost"], |_| {});
    let unrelated = TestCert::new(&["ca.test"], |params| {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Another CA");
    });
    let rejection = refusal_with_ca_file(&cert, &unrelated, "localhost").await;
    assert!(
        matches!(rejection.problem, Problem::UnknownIssuer),
        "{rejection:?}"
    );
    let text = rejection.describe("localhost:587");
    assert!(text.contains("is self-signed and not in ca_file"), "{text}");
    assert!(!text.contains("set ca_file"), "{text}");

    // Without ca_file, setting one is a fitting next step.
    let without = CertificateRejection {
        trust: ServerTrust::SystemRoots,
        ..rejection
    };
    let text = without.describe("localhost:587");
    assert!(
        text.contains("is self-signed") && text.contains("set ca_file"),
        "{text}"
    );
}

#[tokio::test]
async fn a_name_mismatch_lists_the_names_the_certificate_has() {
    let cert = TestCert::new(&["mail.internal.test"], |_| {});
    let text = refusal_with_ca_file(&cert, &cert, "localhost")
        .await
        .describe("localhost:587");
    assert!(
        text.contains("is valid for mail.internal.test, not for localhost"),
        "{text}"
    );
    assert!(!text.contains("ca_file"), "{text}");
}

#[tokio::test]
async fn an_expired_certificate_says_when_it_expired() {
    let cert = TestCert::new(&["localhost"], |params| {
        params.not_before = rcgen::date_time_ymd(2001, 1, 1);
        params.not_after = rcgen::date_time_ymd(2002, 1, 1);
    });
    let text = refusal_with_ca_file(&cert, &cert, "localhost")
        .await
        .describe("localhost:587");
    assert!(text.contains("expired on 2002-01-01T00:00:00Z"), "{text}");
    assert!(!text.contains("ca_file"), "{text}");
}
