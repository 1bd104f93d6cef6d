//! What a certificate says about itself, for messages and `oxirelay tls
//! pin`: subject, issuer, validity, names, whether it is a CA and whether
//! it signed itself, and the pin of its key. Read with x509-parser; nothing
//! here decides trust.

use super::pin::SpkiPin;
use rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

#[derive(Debug, thiserror::Error)]
#[error("the certificate cannot be read as X.509: {0}")]
pub struct CertificateParseError(String);

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertificateSummary {
    /// SHA-256 of the SubjectPublicKeyInfo, base64: the `tls_pin_sha256`.
    #[serde(serialize_with = "serialize_display")]
    pub pin: SpkiPin,
    /// RFC 4514 form, e.g. `CN=mail.internal, O=Example`.
    pub subject: String,
    pub issuer: String,
    /// Seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// The subject alternative names (DNS names and IP addresses).
    pub names: Vec<String>,
    /// Basic constraints say CA: webpki refuses such a certificate as a
    /// server's own (`CaUsedAsEndEntity`).
    pub is_ca: bool,
    /// Issued by its own subject and signed with its own key.
    pub self_signed: bool,
}

impl CertificateSummary {
    pub fn parse(der: &CertificateDer<'_>) -> Result<CertificateSummary, CertificateParseError> {
        let (_, cert) = X509Certificate::from_der(der.as_ref())
            .map_err(|e| CertificateParseError(e.to_string()))?;
        let names = match cert.subject_alternative_name() {
            Ok(Some(extension)) => extension
                .value
                .general_names
                .iter()
                .filter_map(general_name)
                .collect(),
            _ => Vec::new(),
        };
        // Same name on both sides is only "self-issued"; the signature
        // check under its own key is what makes it self-signed.
        let self_signed = cert.subject().as_raw() == cert.issuer().as_raw()
            && cert.verify_signature(None).is_ok();
        Ok(CertificateSummary {
            pin: SpkiPin::of_spki(cert.public_key().raw),
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            names,
            is_ca: cert.is_ca(),
            self_signed,
        })
    }

    /// How messages name the certificate: its subject, or its names when
    /// the subject is empty (rcgen's and many internal tools' default).
    pub fn label(&self) -> String {
        if !self.subject.is_empty() {
            format!("subject {}", self.subject)
        } else if !self.names.is_empty() {
            format!("for {}", self.names.join(", "))
        } else {
            "with no subject".to_string()
        }
    }

    pub fn is_expired_at(&self, unix_seconds: i64) -> bool {
        unix_seconds > self.not_after
    }
}

fn general_name(name: &GeneralName<'_>) -> Option<String> {
    match name {
        GeneralName::DNSName(dns) => Some(dns.to_string()),
        GeneralName::IPAddress(bytes) => match bytes.len() {
            4 => <[u8; 4]>::try_from(*bytes)
                .ok()
                .map(|b| std::net::Ipv4Addr::from(b).to_string()),
            16 => <[u8; 16]>::try_from(*bytes)
                .ok()
                .map(|b| std::net::Ipv6Addr::from(b).to_string()),
            _ => None,
        },
        _ => None,
    }
}

fn serialize_display<S: serde::Serializer>(
    value: &impl std::fmt::Display,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, PublicKeyData};

    #[test]
    fn reads_a_self_signed_ca_and_a_leaf_it_signed() {
        let ca_key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec!["mail.internal".to_string()]).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "mail.internal");
        let ca = params.self_signed(&ca_key).expect("self-signed");
        let summary = CertificateSummary::parse(ca.der()).expect("parses");
        assert!(summary.is_ca && summary.self_signed);
        assert_eq!(summary.subject, "CN=mail.internal");
        assert_eq!(summary.names, ["mail.internal"]);
        assert_eq!(
            summary.pin,
            SpkiPin::of_spki(&ca_key.subject_public_key_info())
        );
        assert!(summary.not_before < summary.not_after);

        let leaf_key = KeyPair::generate().expect("key");
        let mut leaf_params =
            CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
        leaf_params.distinguished_name = rcgen::DistinguishedName::new();
        let leaf = leaf_params
            .signed_by(&leaf_key, &Issuer::new(params, ca_key))
            .expect("leaf");
        let summary = CertificateSummary::parse(leaf.der()).expect("parses");
        assert!(!summary.is_ca && !summary.self_signed);
        assert_eq!(summary.issuer, "CN=mail.internal");
        assert_eq!(summary.names, ["127.0.0.1"]);
        assert_eq!(summary.label(), "for 127.0.0.1");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(
            CertificateSummary::parse(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])).is_err()
        );
    }
}
