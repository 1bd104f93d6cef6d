//! API keys: made by `oxirelay apikey create`, shown once, stored as the
//! SHA-256 of their secret (a 256-bit random secret cannot be guessed, so
//! a slow password hash would only cost time on every request), compared
//! in constant time. Each key carries the senders it may use, the accounts
//! it may send through, its scopes and its own rate limit.
//!
//! Scopes:
//! - `send`: `POST /v1/messages`, `/raw`, `/batch`; cancel its own messages.
//! - `read`: `GET /v1/messages` and `GET /v1/messages/{id}` for its own
//!   messages (those it submitted).
//! - `admin`: read and cancel every message, whoever submitted it, and the
//!   web console (`authenticate` is what the console calls). It does not
//!   imply `send`: a key sends only as the senders it was given.
//!
//! The key reads `oxr_<id>_<secret>`: the id finds the row, the secret is
//! checked against its hash.
//!
//! The API's routes read rows through a [`KeyCache`]: a row read from the
//! store is reused for at most [`KEY_CACHE_TTL`], so a revocation (made by
//! another process, the CLI) applies within that time instead of at the
//! next request, and a request costs no store read of its own.

use crate::store::{ApiKeyRecord, Store, StoreError};
use base64::Engine as _;
use governor::clock::Clock as _;
use rand::Rng as _;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PREFIX: &str = "oxr_";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Send,
    Read,
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Send => "send",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Scope> {
        Some(match text {
            "send" => Scope::Send,
            "read" => Scope::Read,
            "admin" => Scope::Admin,
            _ => return None,
        })
    }
}

/// A rate: at most `count` requests per `period` (`10/s`, `600/min`, `1000/h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub period_secs: u32,
}

impl Rate {
    pub fn parse(text: &str) -> Result<Rate, ApiKeyError> {
        let bad = || ApiKeyError::BadRate(text.to_string());
        let (count, unit) = text.split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let period_secs = match unit.trim() {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3600,
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(bad());
        }
        Ok(Rate { count, period_secs })
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.period_secs {
            1 => "s".to_string(),
            60 => "min".to_string(),
            3600 => "h".to_string(),
            n => format!("{n}s"),
        };
        write!(f, "{}/{unit}", self.count)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiKeyError {
    #[error(
        "no API key was given; send it as `Authorization: Bearer oxr_...` (make one with `oxirelay apikey create`)"
    )]
    Missing,
    #[error(
        "the API key is not valid (unknown, mistyped or revoked); check it, or make a new one with `oxirelay apikey create`"
    )]
    Invalid,
    #[error("{0:?} is not a rate; write COUNT/UNIT, e.g. 10/s, 600/min or 1000/h")]
    BadRate(String),
    #[error("{0:?} is not a scope; use send, read or admin")]
    BadScope(String),
    #[error("the store could not be read ({0}); try again")]
    Store(#[from] StoreError),
}

/// An authenticated key: what a request may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub allowed_from: Vec<String>,
    pub accounts: Vec<String>,
    pub rate: Option<Rate>,
}

impl ApiKey {
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    /// How its submissions are named in the queue (`submitted_by`).
    pub fn submitter(&self) -> String {
        format!("api:{}", self.name)
    }

    fn from_record(record: &ApiKeyRecord) -> Result<ApiKey, ApiKeyError> {
        let scopes = record
            .scopes
            .iter()
            .map(|s| Scope::parse(s).ok_or_else(|| ApiKeyError::BadScope(s.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ApiKey {
            id: record.id.clone(),
            name: record.name.clone(),
            scopes,
            allowed_from: record.allowed_from.clone(),
            accounts: record.accounts.clone(),
            rate: record
                .rate
                .map(|(count, period_secs)| Rate { count, period_secs }),
        })
    }
}

/// A new key: the row to store and the key to show once.
pub struct NewApiKey {
    pub record: ApiKeyRecord,
    pub presented: crate::secret::Secret,
}

fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Makes a key (not stored yet): 64 random bits of id, 256 of secret.
pub fn generate(
    name: &str,
    scopes: &[Scope],
    allowed_from: &[String],
    accounts: &[String],
    rate: Option<Rate>,
    now: i64,
) -> NewApiKey {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut id);
    rand::rng().fill_bytes(&mut secret);
    let id = hex::encode(id);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    let record = ApiKeyRecord {
        id: id.clone(),
        name: name.to_string(),
        secret_hash: hash_secret(&secret),
        scopes: scopes.iter().map(|s| s.as_str().to_string()).collect(),
        allowed_from: allowed_from.to_vec(),
        accounts: accounts.to_vec(),
        rate: rate.map(|r| (r.count, r.period_secs)),
        created_at: now,
        revoked_at: None,
    };
    NewApiKey {
        record,
        presented: crate::secret::Secret::new(format!("{PREFIX}{id}_{secret}")),
    }
}

/// A short, non-reversible name for a presented key, for logs and audit
/// lines (contract 6): never the key.
pub fn fingerprint(presented: &str) -> String {
    hash_secret(presented)[..12].to_string()
}

/// Finds and checks the key `presented` (`oxr_<id>_<secret>`). A key that
/// is unknown, malformed, revoked or wrong gets the same answer.
pub async fn authenticate(store: &dyn Store, presented: &str) -> Result<ApiKey, ApiKeyError> {
    let (id, secret) = split(presented)?;
    let record = store.api_key(id).await?.ok_or(ApiKeyError::Invalid)?;
    check(&record, secret)
}

/// The id and the secret of a presented key, if it has the key's form.
fn split(presented: &str) -> Result<(&str, &str), ApiKeyError> {
    let (id, secret) = presented
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.split_once('_'))
        .ok_or(ApiKeyError::Invalid)?;
    if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiKeyError::Invalid);
    }
    Ok((id, secret))
}

/// The key of `record` if `secret` is its secret and it is not revoked.
fn check(record: &ApiKeyRecord, secret: &str) -> Result<ApiKey, ApiKeyError> {
    let presented_hash = hash_secret(secret);
    let matches = aws_lc_rs::constant_time::verify_slices_are_equal(
        presented_hash.as_bytes(),
        record.secret_hash.as_bytes(),
    )
    .is_ok();
    if !matches || record.revoked_at.is_some() {
        return Err(ApiKeyError::Invalid);
    }
    ApiKey::from_record(record)
}

/// How long a key's row read from the store is used before it is read
/// again: the longest a revocation made elsewhere takes to apply.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(1);

/// Rows of keys recently read, by id. Only rows the store has are kept
/// (an unknown id is read from the store each time), so the map holds at
/// most one entry per key ever made, whatever ids clients send.
pub struct KeyCache {
    ttl: Duration,
    rows: Mutex<HashMap<String, (Instant, Arc<ApiKeyRecord>)>>,
}

impl Default for KeyCache {
    fn default() -> Self {
        KeyCache::new(KEY_CACHE_TTL)
    }
}

impl KeyCache {
    pub fn new(ttl: Duration) -> Self {
        KeyCache {
            ttl,
            rows: Mutex::new(HashMap::new()),
        }
    }

    /// As [`authenticate`], reading the store only for a row older than
    /// the TTL or not read yet.
    pub async fn authenticate(
        &self,
        store: &dyn Store,
        presented: &str,
    ) -> Result<ApiKey, ApiKeyError> {
        let (id, secret) = split(presented)?;
        let record = match self.fresh(id, Instant::now()) {
            Some(record) => record,
            None => {
                let record = Arc::new(store.api_key(id).await?.ok_or(ApiKeyError::Invalid)?);
                self.lock()
                    .insert(id.to_string(), (Instant::now(), record.clone()));
                record
            }
        };
        check(&record, secret)
    }

    fn fresh(&self, id: &str, now: Instant) -> Option<Arc<ApiKeyRecord>> {
        self.lock()
            .get(id)
            .filter(|(read_at, _)| now.saturating_duration_since(*read_at) < self.ttl)
            .map(|(_, record)| record.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Arc<ApiKeyRecord>)>> {
        // A poisoned lock only means another request panicked while
        // holding it; the map is still whole.
        self.rows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

type Limiter = governor::DefaultDirectRateLimiter;

/// Each key's own rate limiter, made at the key's first request (and made
/// anew if its rate changed).
#[derive(Default)]
pub struct RateLimits {
    limiters: Mutex<HashMap<String, (Rate, Arc<Limiter>)>>,
}

impl RateLimits {
    /// `Err(wait)` if `cells` more requests now would exceed the key's rate.
    pub fn check(&self, key: &ApiKey, cells: u32) -> Result<(), Duration> {
        let Some(rate) = key.rate else { return Ok(()) };
        let limiter = {
            // A poisoned lock only means another request panicked while
            // holding it; the map is still whole.
            let mut limiters = self
                .limiters
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match limiters.get(&key.id) {
                Some((known, limiter)) if *known == rate => limiter.clone(),
                _ => {
                    let limiter = Arc::new(Limiter::direct(quota(rate)));
                    limiters.insert(key.id.clone(), (rate, limiter.clone()));
                    limiter
                }
            }
        };
        let cells = NonZeroU32::new(cells.max(1)).unwrap_or(NonZeroU32::MIN);
        let clock = governor::clock::DefaultClock::default();
        match limiter.check_n(cells) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(clock.now())),
            // More cells than the burst: such a batch can never pass at
            // this rate; wait a whole period and send fewer.
            Err(_) => Err(Duration::from_secs(u64::from(rate.period_secs))),
        }
    }
}

fn quota(rate: Rate) -> governor::Quota {
    let count = NonZeroU32::new(rate.count).unwrap_or(NonZeroU32::MIN);
    let period = Duration::from_secs(u64::from(rate.period_secs)) / rate.count.max(1);
    governor::Quota::with_period(period)
        .unwrap_or_else(|| governor::Quota::per_second(count))
        .allow_burst(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cache answers from a row it read within its TTL (a revocation
    /// made since is not seen yet), from the store once the row is older,
    /// and checks the secret each time either way.
    #[tokio::test]
    async fn the_key_cache_reads_the_store_again_after_its_ttl() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("keys.db").display());
        let store = crate::store::SqliteStore::open(&url).await.expect("open");
        let made = generate("ci", &[Scope::Send], &[], &[], None, 1);
        assert!(store.create_api_key(&made.record).await.expect("create"));
        let presented = made.presented.expose().to_string();
        let cache = KeyCache::new(Duration::from_secs(3600));
        let key = cache.authenticate(&store, &presented).await.expect("valid");
        assert_eq!(key.name, "ci");
        let wrong = format!("{}x", &presented[..presented.len() - 1]);
        assert!(matches!(
            cache.authenticate(&store, &wrong).await,
            Err(ApiKeyError::Invalid)
        ));
        assert!(store.revoke_api_key("ci", 2).await.expect("revoke"));
        assert!(
            cache.authenticate(&store, &presented).await.is_ok(),
            "within the TTL the row read before is used"
        );
        let id = &presented[PREFIX.len()..PREFIX.len() + 16];
        let later = Instant::now() + Duration::from_secs(3601);
        assert!(cache.fresh(id, later).is_none(), "older than the TTL");
        let uncached = KeyCache::new(Duration::ZERO);
        assert!(matches!(
            uncached.authenticate(&store, &presented).await,
            Err(ApiKeyError::Invalid)
        ));
        assert!(matches!(
            authenticate(&store, &presented).await,
            Err(ApiKeyError::Invalid)
        ));
    }

    #[test]
    fn rates_parse_and_print() {
        assert_eq!(
            Rate::parse("10/s").expect("rate"),
            Rate {
                count: 10,
                period_secs: 1
            }
        );
        assert_eq!(Rate::parse("600/min").expect("rate").to_string(), "600/min");
        for bad in ["10", "0/s", "x/s", "10/week"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_key_over_its_rate_waits() {
        let key = ApiKey {
            id: "k".into(),
            name: "k".into(),
            scopes: vec![Scope::Send],
            allowed_from: vec![],
            accounts: vec![],
            rate: Some(Rate {
                count: 2,
                period_secs: 60,
            }),
        };
        let limits = RateLimits::default();
        assert!(limits.check(&key, 1).is_ok());
        assert!(limits.check(&key, 1).is_ok());
        let wait = limits.check(&key, 1).expect_err("third in a minute");
        assert!(wait > Duration::from_secs(20), "{wait:?}");
        assert!(limits.check(&key, 5).is_err(), "more than the burst");
    }

    #[test]
    fn generated_keys_have_their_shape_and_only_a_hash_is_kept() {
        let key = generate("billing", &[Scope::Send], &[], &[], None, 0);
        let text = key.presented.expose();
        assert!(text.starts_with("oxr_"), "{text}");
        assert!(!key.record.secret_hash.is_empty());
        assert!(!text.contains(&key.record.secret_hash));
        let secret = &text["oxr_".len() + 16 + 1..];
        assert_eq!(secret.len(), 43, "256 bits, base64url");
    }
}
