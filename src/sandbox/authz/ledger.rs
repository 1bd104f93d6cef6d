//! The authorization server's memory: pending authorization and device
//! codes, refresh-token families, issued access tokens (by token id: a JWT's
//! `jti` or `uti`, or the hash of an opaque token) and revocations, and
//! the rules that move them (single-use codes, PKCE, device polling pace,
//! refresh rotation with reuse detection).
//!
//! Pure logic: every call takes `now` and returns a decision, so each rule is
//! unit-tested without sockets or clocks. Tokens and codes are stored only as
//! SHA-256 hashes; a copy of this memory reveals no usable credential.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngExt;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::oauth_error::{ErrorCode, OAuthError};
use crate::secret::Secret;

pub(crate) type TokenHash = [u8; 32];

pub(crate) fn hash_token(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// 256 random bits, base64url: unguessable codes and refresh tokens.
pub(crate) fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// RFC 8628 §6.1: consonants only (no vowels, so no words; no 0/O/1/I
/// confusion), 8 characters shown as XXXX-XXXX: 20^8 ≈ 2^34.6, plenty for
/// codes that live ten minutes and are rate-limited by the device flow.
const USER_CODE_ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";

fn random_user_code() -> String {
    let mut rng = rand::rng();
    let chars: String = (0..8)
        .map(|_| USER_CODE_ALPHABET[rng.random_range(0..USER_CODE_ALPHABET.len())] as char)
        .collect();
    format!("{}-{}", &chars[..4], &chars[4..])
}

/// What a user types may differ in case and dashes from what we showed.
pub(crate) fn normalize_user_code(typed: &str) -> String {
    typed
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// Identifies the tokens descending from one user grant (one consent).
pub(crate) type FamilyId = u64;

/// What the token endpoint should issue after a grant checked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Grant {
    pub client_id: String,
    pub subject: String,
    pub scopes: Vec<String>,
    /// The family access tokens join; `None` for app-only tokens.
    pub family: Option<FamilyId>,
    pub refresh: RefreshIssue,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RefreshIssue {
    /// No refresh token in the response.
    None,
    /// A new refresh token in the grant's family.
    New,
}

#[derive(Debug)]
struct AuthorizationCode {
    client_id: String,
    redirect_uri: String,
    code_challenge: String,
    subject: String,
    scopes: Vec<String>,
    expires_at: Instant,
    /// Set once redeemed; a second redemption revokes what the first issued
    /// (RFC 6749 §4.1.2).
    redeemed_into: Option<FamilyId>,
}

/// A new authorization code's content, from a consented `/authorize`.
#[derive(Clone, Debug)]
pub(crate) struct CodeRequest {
    pub client_id: String,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub subject: String,
    pub scopes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum DeviceDecision {
    Pending,
    Approved { subject: String },
    Denied,
}

#[derive(Debug)]
struct DeviceGrant {
    client_id: String,
    scopes: Vec<String>,
    user_code: String,
    expires_at: Instant,
    interval: Duration,
    last_poll: Option<Instant>,
    decision: DeviceDecision,
}

/// What `/device_authorization` hands out.
#[derive(Debug)]
pub(crate) struct DeviceStart {
    pub device_code: Secret,
    pub user_code: String,
}

#[derive(Debug, PartialEq, Eq)]
enum RefreshState {
    Active,
    /// Used once and replaced: presenting it again is a theft signal.
    Rotated,
}

#[derive(Debug)]
struct RefreshRecord {
    family: FamilyId,
    client_id: String,
    subject: String,
    scopes: Vec<String>,
    state: RefreshState,
}

#[derive(Debug)]
struct Family {
    subject: String,
    revoked: bool,
    access_ids: Vec<String>,
}

#[derive(Debug)]
struct AccessRecord {
    subject: String,
    client_id: String,
    scopes: Vec<String>,
    family: Option<FamilyId>,
    exp_unix: u64,
}

/// What is known about an access token, for introspection: enough to
/// answer for a token whose content says nothing (an opaque one).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct AccessInfo {
    pub subject: String,
    pub client_id: String,
    pub scopes: Vec<String>,
    pub exp_unix: u64,
    pub revoked: bool,
}

/// What is known about a refresh token, for introspection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RefreshInfo {
    pub active: bool,
    pub subject: String,
    pub client_id: String,
    pub scopes: Vec<String>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeviceApprovalError {
    #[error(
        "no pending device authorization has user code {0}; check the code shown on the device, or start the device flow again"
    )]
    UnknownUserCode(String),
    #[error("user code {0} has expired; start the device flow again on the device")]
    Expired(String),
    #[error("{0} is not a user of this sandbox; add it to the sandbox's users")]
    UnknownUser(String),
}

#[derive(Debug, Default)]
pub(crate) struct Ledger {
    codes: HashMap<TokenHash, AuthorizationCode>,
    devices: HashMap<TokenHash, DeviceGrant>,
    /// Normalized user code → device code hash.
    user_codes: HashMap<String, TokenHash>,
    refresh: HashMap<TokenHash, RefreshRecord>,
    families: HashMap<FamilyId, Family>,
    next_family: FamilyId,
    /// Token id → what it was issued for.
    access: HashMap<String, AccessRecord>,
    revoked_access: HashSet<String>,
    /// Families revoked so far, for the server's counters.
    pub(crate) families_revoked: u64,
    /// Rotated refresh tokens presented again, for the server's counters.
    pub(crate) refresh_reuses: u64,
}

impl Ledger {
    // ---- authorization code (RFC 6749 §4.1, RFC 7636) ----

    pub(crate) fn issue_code(
        &mut self,
        request: CodeRequest,
        now: Instant,
        ttl: Duration,
    ) -> Secret {
        self.codes
            .retain(|_, c| c.expires_at > now || c.redeemed_into.is_some());
        let code = random_token();
        self.codes.insert(
            hash_token(&code),
            AuthorizationCode {
                client_id: request.client_id,
                redirect_uri: request.redirect_uri,
                code_challenge: request.code_challenge,
                subject: request.subject,
                scopes: request.scopes,
                expires_at: now + ttl,
                redeemed_into: None,
            },
        );
        Secret::new(code)
    }

    pub(crate) fn redeem_code(
        &mut self,
        client_id: &str,
        code: &str,
        redirect_uri: Option<&str>,
        code_verifier: Option<&str>,
        now: Instant,
    ) -> Result<Grant, OAuthError> {
        let Some(record) = self.codes.get(&hash_token(code)) else {
            return Err(OAuthError::invalid_grant(
                "unknown authorization code; start the authorization again",
            ));
        };
        if let Some(family) = record.redeemed_into {
            self.revoke_family(family);
            return Err(OAuthError::invalid_grant(
                "authorization code already used; the tokens issued for it are now revoked",
            ));
        }
        if record.client_id != client_id {
            return Err(OAuthError::invalid_grant(
                "authorization code was issued to another client",
            ));
        }
        if record.expires_at <= now {
            return Err(OAuthError::invalid_grant(
                "authorization code expired; codes are short-lived, redeem it at once",
            ));
        }
        if redirect_uri != Some(record.redirect_uri.as_str()) {
            return Err(OAuthError::invalid_grant(
                "redirect_uri must be exactly the one sent to /authorize",
            ));
        }
        let Some(verifier) = code_verifier else {
            return Err(OAuthError::invalid_request(
                "code_verifier is required (PKCE S256)",
            ));
        };
        if !pkce_s256_matches(verifier, &record.code_challenge) {
            return Err(OAuthError::invalid_grant(
                "code_verifier does not match the code_challenge (PKCE S256)",
            ));
        }
        let subject = record.subject.clone();
        let scopes = record.scopes.clone();
        let family = self.new_family(&subject);
        if let Some(record) = self.codes.get_mut(&hash_token(code)) {
            record.redeemed_into = Some(family);
        }
        Ok(Grant {
            client_id: client_id.to_string(),
            refresh: refresh_if_offline(&scopes),
            subject,
            scopes,
            family: Some(family),
        })
    }

    // ---- device authorization (RFC 8628) ----

    pub(crate) fn start_device(
        &mut self,
        client_id: &str,
        scopes: Vec<String>,
        now: Instant,
        ttl: Duration,
        interval: Duration,
    ) -> DeviceStart {
        self.devices.retain(|_, d| d.expires_at > now);
        let live: HashSet<&String> = self.devices.values().map(|d| &d.user_code).collect();
        self.user_codes.retain(|code, _| live.contains(code));
        let device_code = random_token();
        // Bounded: a collision among live codes is astronomically rare.
        let mut user_code = random_user_code();
        for _ in 0..8 {
            if !self
                .user_codes
                .contains_key(&normalize_user_code(&user_code))
            {
                break;
            }
            user_code = random_user_code();
        }
        let hash = hash_token(&device_code);
        self.user_codes
            .insert(normalize_user_code(&user_code), hash);
        self.devices.insert(
            hash,
            DeviceGrant {
                client_id: client_id.to_string(),
                scopes,
                user_code: normalize_user_code(&user_code),
                expires_at: now + ttl,
                interval,
                last_poll: None,
                decision: DeviceDecision::Pending,
            },
        );
        DeviceStart {
            device_code: Secret::new(device_code),
            user_code,
        }
    }

    /// Records the user's decision for a user code.
    pub(crate) fn decide_device(
        &mut self,
        user_code: &str,
        approve_as: Option<&str>,
        now: Instant,
    ) -> Result<(), DeviceApprovalError> {
        let normalized = normalize_user_code(user_code);
        let device = self
            .user_codes
            .get(&normalized)
            .and_then(|hash| self.devices.get_mut(hash))
            .ok_or_else(|| DeviceApprovalError::UnknownUserCode(user_code.to_string()))?;
        if device.expires_at <= now {
            return Err(DeviceApprovalError::Expired(user_code.to_string()));
        }
        device.decision = match approve_as {
            Some(subject) => DeviceDecision::Approved {
                subject: subject.to_string(),
            },
            None => DeviceDecision::Denied,
        };
        Ok(())
    }

    /// The scopes and client a pending user code asks for (for the consent page).
    pub(crate) fn device_request(&self, user_code: &str) -> Option<(String, Vec<String>)> {
        let device = self
            .user_codes
            .get(&normalize_user_code(user_code))
            .and_then(|hash| self.devices.get(hash))?;
        Some((device.client_id.clone(), device.scopes.clone()))
    }

    pub(crate) fn poll_device(
        &mut self,
        client_id: &str,
        device_code: &str,
        now: Instant,
        slow_down_increment: Duration,
    ) -> Result<Grant, OAuthError> {
        let hash = hash_token(device_code);
        let Some(device) = self.devices.get_mut(&hash) else {
            return Err(OAuthError::invalid_grant(
                "unknown device_code; start the device flow again",
            ));
        };
        if device.client_id != client_id {
            return Err(OAuthError::invalid_grant(
                "device_code was issued to another client",
            ));
        }
        if device.expires_at <= now {
            return Err(OAuthError::new(
                ErrorCode::ExpiredToken,
                "the device code expired before the user approved; start the device flow again",
            ));
        }
        let too_soon = device
            .last_poll
            .is_some_and(|last| now.duration_since(last) < device.interval);
        device.last_poll = Some(now);
        if too_soon {
            device.interval += slow_down_increment;
            return Err(OAuthError::new(
                ErrorCode::SlowDown,
                format!(
                    "polling too fast; wait at least {} s between requests",
                    wire_seconds(device.interval)
                ),
            ));
        }
        match device.decision.clone() {
            DeviceDecision::Pending => Err(OAuthError::new(
                ErrorCode::AuthorizationPending,
                "the user has not approved yet; keep polling at the interval",
            )),
            DeviceDecision::Denied => {
                self.forget_device(&hash);
                Err(OAuthError::new(
                    ErrorCode::AccessDenied,
                    "the user denied the request",
                ))
            }
            DeviceDecision::Approved { subject } => {
                let scopes = device.scopes.clone();
                self.forget_device(&hash);
                let family = self.new_family(&subject);
                Ok(Grant {
                    client_id: client_id.to_string(),
                    refresh: refresh_if_offline(&scopes),
                    subject,
                    scopes,
                    family: Some(family),
                })
            }
        }
    }

    fn forget_device(&mut self, hash: &TokenHash) {
        if let Some(device) = self.devices.remove(hash) {
            self.user_codes.remove(&device.user_code);
        }
    }

    // ---- refresh tokens (RFC 6749 §6, RFC 9700 §4.14) ----

    /// Stores a new refresh token for `grant` (which must have a family).
    pub(crate) fn issue_refresh(&mut self, grant: &Grant) -> Option<Secret> {
        let family = grant.family?;
        let token = random_token();
        self.refresh.insert(
            hash_token(&token),
            RefreshRecord {
                family,
                client_id: grant.client_id.clone(),
                subject: grant.subject.clone(),
                scopes: grant.scopes.clone(),
                state: RefreshState::Active,
            },
        );
        Some(Secret::new(token))
    }

    pub(crate) fn use_refresh(
        &mut self,
        client_id: &str,
        token: &str,
        requested_scopes: Option<Vec<String>>,
        rotate: bool,
    ) -> Result<Grant, OAuthError> {
        let hash = hash_token(token);
        let Some(record) = self.refresh.get(&hash) else {
            return Err(OAuthError::invalid_grant(
                "unknown refresh token; the user must sign in again",
            ));
        };
        if record.client_id != client_id {
            return Err(OAuthError::invalid_grant(
                "refresh token was issued to another client",
            ));
        }
        let family = record.family;
        if self.family_revoked(family) {
            return Err(OAuthError::invalid_grant(
                "refresh token revoked (consent withdrawn or token reuse); the user must sign in again",
            ));
        }
        if record.state == RefreshState::Rotated {
            self.refresh_reuses += 1;
            self.revoke_family(family);
            return Err(OAuthError::invalid_grant(
                "refresh token already used; as a theft precaution every token of this grant is now revoked and the user must sign in again",
            ));
        }
        let scopes = match requested_scopes {
            None => record.scopes.clone(),
            Some(asked) => {
                if let Some(extra) = asked.iter().find(|s| !record.scopes.contains(s)) {
                    return Err(OAuthError::new(
                        ErrorCode::InvalidScope,
                        format!("scope {extra} was not part of the original grant"),
                    ));
                }
                asked
            }
        };
        let grant = Grant {
            client_id: client_id.to_string(),
            subject: record.subject.clone(),
            scopes,
            family: Some(family),
            refresh: if rotate {
                RefreshIssue::New
            } else {
                RefreshIssue::None
            },
        };
        if rotate && let Some(record) = self.refresh.get_mut(&hash) {
            record.state = RefreshState::Rotated;
        }
        Ok(grant)
    }

    pub(crate) fn refresh_info(&self, token: &str) -> Option<RefreshInfo> {
        let record = self.refresh.get(&hash_token(token))?;
        Some(RefreshInfo {
            active: record.state == RefreshState::Active && !self.family_revoked(record.family),
            subject: record.subject.clone(),
            client_id: record.client_id.clone(),
            scopes: record.scopes.clone(),
        })
    }

    /// RFC 7009 for a refresh token: revokes its whole family. Returns false
    /// when the token is unknown or belongs to another client (a no-op).
    pub(crate) fn revoke_refresh(&mut self, client_id: &str, token: &str) -> bool {
        match self.refresh.get(&hash_token(token)) {
            Some(record) if record.client_id == client_id => {
                let family = record.family;
                self.revoke_family(family)
            }
            _ => false,
        }
    }

    // ---- access tokens ----

    /// Records an issued access token under `token_id`.
    pub(crate) fn record_access(
        &mut self,
        token_id: &str,
        grant: &Grant,
        exp_unix: u64,
        now_unix: u64,
    ) {
        // Forget tokens that expired: their id can no longer matter.
        self.access.retain(|_, a| a.exp_unix >= now_unix);
        let live = &self.access;
        self.revoked_access.retain(|id| live.contains_key(id));
        if let Some(family) = grant.family.and_then(|f| self.families.get_mut(&f)) {
            family.access_ids.retain(|id| live.contains_key(id));
            family.access_ids.push(token_id.to_string());
        }
        self.access.insert(
            token_id.to_string(),
            AccessRecord {
                subject: grant.subject.clone(),
                client_id: grant.client_id.clone(),
                scopes: grant.scopes.clone(),
                family: grant.family,
                exp_unix,
            },
        );
    }

    pub(crate) fn access_revoked(&self, token_id: &str) -> bool {
        self.revoked_access.contains(token_id)
            || self
                .access
                .get(token_id)
                .and_then(|a| a.family)
                .is_some_and(|f| self.family_revoked(f))
    }

    /// What an issued access token is, if this ledger issued it.
    pub(crate) fn access_info(&self, token_id: &str) -> Option<AccessInfo> {
        let record = self.access.get(token_id)?;
        Some(AccessInfo {
            subject: record.subject.clone(),
            client_id: record.client_id.clone(),
            scopes: record.scopes.clone(),
            exp_unix: record.exp_unix,
            revoked: self.access_revoked(token_id),
        })
    }

    /// RFC 7009 for an access token we issued to `client_id`.
    pub(crate) fn revoke_access(&mut self, client_id: &str, token_id: &str) -> bool {
        match self.access.get(token_id) {
            Some(record) if record.client_id == client_id => {
                self.revoked_access.insert(token_id.to_string())
            }
            _ => false,
        }
    }

    // ---- families ----

    fn new_family(&mut self, subject: &str) -> FamilyId {
        self.next_family += 1;
        let id = self.next_family;
        self.families.insert(
            id,
            Family {
                subject: subject.to_string(),
                revoked: false,
                access_ids: Vec::new(),
            },
        );
        id
    }

    fn family_revoked(&self, family: FamilyId) -> bool {
        self.families.get(&family).is_none_or(|f| f.revoked)
    }

    /// Revokes a family and every access token in it. True if it was live.
    pub(crate) fn revoke_family(&mut self, family: FamilyId) -> bool {
        let Some(record) = self.families.get_mut(&family) else {
            return false;
        };
        if record.revoked {
            return false;
        }
        record.revoked = true;
        self.families_revoked += 1;
        self.revoked_access
            .extend(record.access_ids.iter().cloned());
        true
    }

    /// Withdraws every consent of `subject` and revokes its app-only access
    /// tokens too. Returns how many families were revoked.
    pub(crate) fn revoke_subject(&mut self, subject: &str) -> usize {
        let families: Vec<FamilyId> = self
            .families
            .iter()
            .filter(|(_, f)| f.subject == subject && !f.revoked)
            .map(|(id, _)| *id)
            .collect();
        for family in &families {
            self.revoke_family(*family);
        }
        let ids: Vec<String> = self
            .access
            .iter()
            .filter(|(_, a)| a.subject == subject)
            .map(|(id, _)| id.clone())
            .collect();
        self.revoked_access.extend(ids);
        families.len()
    }
}

/// RFC 7636 §4.6: BASE64URL(SHA256(ASCII(code_verifier))) == code_challenge.
pub(crate) fn pkce_s256_matches(verifier: &str, challenge: &str) -> bool {
    let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    // Both sides are public after the exchange; equality need not be
    // constant-time, but comparing digests keeps it so anyway.
    hash_token(&computed) == hash_token(challenge)
}

/// RFC 7636 §4.1: 43 to 128 characters of [A-Za-z0-9-._~].
pub(crate) fn is_valid_pkce_value(value: &str) -> bool {
    (43..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

fn refresh_if_offline(scopes: &[String]) -> RefreshIssue {
    if scopes.iter().any(|s| s == super::config::OFFLINE_ACCESS) {
        RefreshIssue::New
    } else {
        RefreshIssue::None
    }
}

/// Whole seconds as sent on the wire, rounded up so a client never polls early.
pub(crate) fn wire_seconds(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    // RFC 7636 Appendix B.
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    fn code_request() -> CodeRequest {
        CodeRequest {
            client_id: "app".into(),
            redirect_uri: "http://127.0.0.1:5000/cb".into(),
            code_challenge: CHALLENGE.into(),
            subject: "alice@sandbox.test".into(),
            scopes: vec!["smtp".into(), "offline_access".into()],
        }
    }

    #[test]
    fn pkce_matches_rfc_example() {
        assert!(pkce_s256_matches(VERIFIER, CHALLENGE));
        assert!(!pkce_s256_matches("x", CHALLENGE));
        assert!(is_valid_pkce_value(VERIFIER));
        assert!(!is_valid_pkce_value("short"));
    }

    #[test]
    fn code_is_single_use_and_reuse_revokes_its_tokens() {
        let mut ledger = Ledger::default();
        let now = Instant::now();
        let code = ledger.issue_code(code_request(), now, Duration::from_secs(60));
        let redeem = |l: &mut Ledger| {
            l.redeem_code(
                "app",
                code.expose(),
                Some("http://127.0.0.1:5000/cb"),
                Some(VERIFIER),
                now,
            )
        };
        let grant = redeem(&mut ledger).expect("first use");
        assert_eq!(grant.refresh, RefreshIssue::New);
        ledger.record_access("jti-1", &grant, u64::MAX, 0);
        let refresh = ledger.issue_refresh(&grant).expect("refresh");
        let err = redeem(&mut ledger).expect_err("second use");
        assert_eq!(err.error, ErrorCode::InvalidGrant);
        assert!(ledger.access_revoked("jti-1"));
        assert!(!ledger.refresh_info(refresh.expose()).expect("known").active);
    }

    #[test]
    fn code_checks_client_redirect_verifier_and_expiry() {
        let mut ledger = Ledger::default();
        let now = Instant::now();
        let ttl = Duration::from_secs(60);
        // (client, redirect_uri, verifier, redeemed at, expected error)
        type Case<'a> = (
            &'a str,
            Option<&'a str>,
            Option<&'a str>,
            Instant,
            ErrorCode,
        );
        let cases: [Case; 4] = [
            (
                "other",
                Some("http://127.0.0.1:5000/cb"),
                Some(VERIFIER),
                now,
                ErrorCode::InvalidGrant,
            ),
            (
                "app",
                Some("http://127.0.0.1:5001/cb"),
                Some(VERIFIER),
                now,
                ErrorCode::InvalidGrant,
            ),
            (
                "app",
                Some("http://127.0.0.1:5000/cb"),
                Some("wrong-verifier"),
                now,
                ErrorCode::InvalidGrant,
            ),
            (
                "app",
                Some("http://127.0.0.1:5000/cb"),
                Some(VERIFIER),
                now + ttl,
                ErrorCode::InvalidGrant,
            ),
        ];
        for (client, redirect, verifier, at, expected) in cases {
            let code = ledger.issue_code(code_request(), now, ttl);
            let err = ledger
                .redeem_code(client, code.expose(), redirect, verifier, at)
                .expect_err("refused");
            assert_eq!(err.error, expected, "{client} {redirect:?} {verifier:?}");
        }
    }

    #[test]
    fn rotation_retires_old_token_and_reuse_revokes_family() {
        let mut ledger = Ledger::default();
        let now = Instant::now();
        let code = ledger.issue_code(code_request(), now, Duration::from_secs(60));
        let grant = ledger
            .redeem_code(
                "app",
                code.expose(),
                Some("http://127.0.0.1:5000/cb"),
                Some(VERIFIER),
                now,
            )
            .expect("grant");
        let first = ledger.issue_refresh(&grant).expect("rt1");
        let next = ledger
            .use_refresh("app", first.expose(), None, true)
            .expect("rotate");
        let second = ledger.issue_refresh(&next).expect("rt2");
        ledger.record_access("jti-2", &next, u64::MAX, 0);
        assert!(ledger.refresh_info(second.expose()).expect("rt2").active);

        let reuse = ledger
            .use_refresh("app", first.expose(), None, true)
            .expect_err("reuse");
        assert_eq!(reuse.error, ErrorCode::InvalidGrant);
        assert!(!ledger.refresh_info(second.expose()).expect("rt2").active);
        assert!(ledger.access_revoked("jti-2"));
        let after = ledger
            .use_refresh("app", second.expose(), None, true)
            .expect_err("family dead");
        assert_eq!(after.error, ErrorCode::InvalidGrant);
    }

    #[test]
    fn refresh_scope_may_only_narrow() {
        let mut ledger = Ledger::default();
        let grant = Grant {
            client_id: "app".into(),
            subject: "a".into(),
            scopes: vec!["smtp".into()],
            family: Some(ledger.new_family("a")),
            refresh: RefreshIssue::New,
        };
        let token = ledger.issue_refresh(&grant).expect("rt");
        let err = ledger
            .use_refresh("app", token.expose(), Some(vec!["admin".into()]), true)
            .expect_err("wider");
        assert_eq!(err.error, ErrorCode::InvalidScope);
        let err = ledger
            .use_refresh("other", token.expose(), None, true)
            .expect_err("other client");
        assert_eq!(err.error, ErrorCode::InvalidGrant);
    }

    #[test]
    fn device_flow_pending_slow_down_then_approved() {
        let mut ledger = Ledger::default();
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let start = ledger.start_device(
            "app",
            vec!["smtp".into()],
            t0,
            Duration::from_secs(600),
            second,
        );
        let poll =
            |l: &mut Ledger, at| l.poll_device("app", start.device_code.expose(), at, second);

        assert_eq!(
            poll(&mut ledger, t0).expect_err("p").error,
            ErrorCode::AuthorizationPending
        );
        assert_eq!(
            poll(&mut ledger, t0 + second / 2).expect_err("s").error,
            ErrorCode::SlowDown
        );
        // The interval is now 2 s: 1.5 s later is still too fast.
        assert_eq!(
            poll(&mut ledger, t0 + second * 2).expect_err("s").error,
            ErrorCode::SlowDown
        );
        let user_code = start.user_code.to_lowercase();
        ledger
            .decide_device(&user_code, Some("alice@sandbox.test"), t0)
            .expect("approve");
        let grant = poll(&mut ledger, t0 + second * 10).expect("approved");
        assert_eq!(grant.subject, "alice@sandbox.test");
        assert_eq!(grant.refresh, RefreshIssue::None);
        // The device code is single use.
        assert_eq!(
            poll(&mut ledger, t0 + second * 20).expect_err("gone").error,
            ErrorCode::InvalidGrant
        );
    }

    #[test]
    fn device_flow_denied_and_expired() {
        let mut ledger = Ledger::default();
        let t0 = Instant::now();
        let ttl = Duration::from_secs(600);
        let denied = ledger.start_device("app", vec![], t0, ttl, Duration::ZERO);
        ledger
            .decide_device(&denied.user_code, None, t0)
            .expect("deny");
        let err = ledger
            .poll_device("app", denied.device_code.expose(), t0, Duration::ZERO)
            .expect_err("denied");
        assert_eq!(err.error, ErrorCode::AccessDenied);

        let late = ledger.start_device("app", vec![], t0, ttl, Duration::ZERO);
        let err = ledger
            .poll_device("app", late.device_code.expose(), t0 + ttl, Duration::ZERO)
            .expect_err("expired");
        assert_eq!(err.error, ErrorCode::ExpiredToken);
        assert_eq!(
            ledger.decide_device(&late.user_code, Some("a"), t0 + ttl),
            Err(DeviceApprovalError::Expired(late.user_code.clone()))
        );
        assert!(matches!(
            ledger.decide_device("ZZZZ-ZZZZ", Some("a"), t0),
            Err(DeviceApprovalError::UnknownUserCode(_))
        ));
    }

    #[test]
    fn user_codes_are_human() {
        let code = random_user_code();
        assert_eq!(code.len(), 9);
        assert_eq!(&code[4..5], "-");
        assert_eq!(normalize_user_code(&code.to_lowercase()).len(), 8);
    }

    #[test]
    fn revoke_subject_kills_families_and_app_tokens() {
        let mut ledger = Ledger::default();
        let family = ledger.new_family("bob");
        let user_grant = Grant {
            client_id: "app".into(),
            subject: "bob".into(),
            scopes: vec![],
            family: Some(family),
            refresh: RefreshIssue::New,
        };
        let app_grant = Grant {
            family: None,
            ..user_grant.clone()
        };
        let refresh = ledger.issue_refresh(&user_grant).expect("rt");
        ledger.record_access("u", &user_grant, u64::MAX, 0);
        ledger.record_access("a", &app_grant, u64::MAX, 0);
        assert_eq!(ledger.revoke_subject("bob"), 1);
        assert!(ledger.access_revoked("u") && ledger.access_revoked("a"));
        assert!(!ledger.refresh_info(refresh.expose()).expect("rt").active);
    }
}
