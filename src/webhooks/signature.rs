//! `Oxirelay-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` over
//! `"{t}.{body}"`, the scheme Stripe and Svix made familiar: the timestamp
//! is signed with the body, so a receiver that also checks it against its
//! clock (and remembers event ids) refuses a replayed request.
//!
//! HMAC from aws-lc-rs, the crypto provider the relay already carries for
//! rustls and the audit log's keys (`audit::key`): the `hmac` crate in the
//! tree is built on `sha2` 0.11 while the relay uses `sha2` 0.10, so it
//! would add a second SHA-2 for no gain.

use aws_lc_rs::hmac;
use std::time::Duration;

pub const SIGNATURE_HEADER: &str = "Oxirelay-Signature";
pub const EVENT_ID_HEADER: &str = "Oxirelay-Event-Id";

/// The header value for `body` sent at `timestamp` (Unix seconds).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, &signed_bytes(timestamp, body));
    format!("t={timestamp},v1={}", hex::encode(tag))
}

fn signed_bytes(timestamp: i64, body: &[u8]) -> Vec<u8> {
    let mut bytes = format!("{timestamp}.").into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the {SIGNATURE_HEADER} header is not t=<unix>,v1=<hex>")]
    Malformed,
    #[error("the signature does not match the body (wrong secret, or the body was changed)")]
    Mismatch,
    #[error(
        "the signature's timestamp is {age_seconds} s away from now, outside the tolerance: a replay, or a clock out of step"
    )]
    OutsideTolerance { age_seconds: i64 },
}

/// Checks a header value against `body`: the HMAC (in constant time) and
/// that its timestamp is within `tolerance` of `now`. Several `v1=` values
/// (a secret being rotated) pass if any matches.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<i64, SignatureError> {
    let mut timestamp = None;
    let mut tags = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp = value.parse::<i64>().ok(),
            Some(("v1", value)) => tags.push(value),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if tags.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let signed = signed_bytes(timestamp, body);
    let matched = tags
        .iter()
        .any(|tag| unhex(tag).is_some_and(|tag| hmac::verify(&key, &signed, &tag).is_ok()));
    if !matched {
        return Err(SignatureError::Mismatch);
    }
    let age = now - timestamp;
    if age.unsigned_abs() > tolerance.as_secs() {
        return Err(SignatureError::OutsideTolerance { age_seconds: age });
    }
    Ok(timestamp)
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    hex::decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOLERANCE: Duration = Duration::from_secs(300);

    #[test]
    fn a_signature_verifies_with_its_secret_and_body_only() {
        let header = sign(b"whsec", 1_700_000_000, b"{\"id\":1}");
        assert!(header.starts_with("t=1700000000,v1="), "{header}");
        assert_eq!(
            verify(b"whsec", &header, b"{\"id\":1}", 1_700_000_010, TOLERANCE),
            Ok(1_700_000_000)
        );
        assert_eq!(
            verify(b"other", &header, b"{\"id\":1}", 1_700_000_010, TOLERANCE),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"whsec", &header, b"{\"id\":2}", 1_700_000_010, TOLERANCE),
            Err(SignatureError::Mismatch)
        );
        // The timestamp is signed: moving it breaks the signature.
        let moved = header.replace("t=1700000000", "t=1700000500");
        assert_eq!(
            verify(b"whsec", &moved, b"{\"id\":1}", 1_700_000_500, TOLERANCE),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"whsec", &header, b"{\"id\":1}", 1_700_000_301, TOLERANCE),
            Err(SignatureError::OutsideTolerance { age_seconds: 301 })
        );
        assert_eq!(
            verify(b"whsec", "v1=00", b"", 0, TOLERANCE),
            Err(SignatureError::Malformed)
        );
    }
}
