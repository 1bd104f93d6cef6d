//! Each configured account as the store knows it: its token state, access
//! token expiry and last success or failure, and its last validation.
//! What `oxirelay account list` prints, `oxirelay doctor` judges and the
//! web console shows, read once here.

use crate::clock::format_unix;
use crate::config::Config;
use crate::store::{AccountState, Event, TokenRecord};
use serde::Serialize;

/// One account's state, for people and for `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct AccountStatus {
    pub name: String,
    pub provider: String,
    pub grant: String,
    pub user: String,
    pub state: AccountState,
    pub reason: Option<String>,
    pub token_expires_at: Option<String>,
    pub has_refresh_token: bool,
    pub granted_scope: Option<String>,
    pub last_success_at: Option<String>,
    pub last_failure_at: Option<String>,
    pub consecutive_failures: i64,
    /// The access token's expiry, Unix seconds (`token_expires_at` as text).
    #[serde(skip)]
    pub access_expires_at: Option<i64>,
}

/// Every account of `config`, in config order, with its stored record (a
/// fresh one for an account the store has not seen yet).
pub fn account_statuses(config: &Config, records: &[TokenRecord]) -> Vec<AccountStatus> {
    config
        .accounts
        .iter()
        .map(|account| {
            let record = records
                .iter()
                .find(|r| r.account == account.name)
                .cloned()
                .unwrap_or_else(|| TokenRecord::new(&account.name));
            AccountStatus {
                name: account.name.clone(),
                provider: account.provider.to_string(),
                grant: account.grant.to_string(),
                user: account.user.clone(),
                state: record.state,
                reason: record.state_reason.clone(),
                token_expires_at: record.access_expires_at.map(format_unix),
                has_refresh_token: record.refresh_token.is_some(),
                granted_scope: record.granted_scope.clone(),
                last_success_at: record.last_success_at.map(format_unix),
                last_failure_at: record.last_failure_at.map(format_unix),
                consecutive_failures: record.consecutive_failures,
                access_expires_at: record.access_expires_at,
            }
        })
        .collect()
}

/// The account's newest validation (`account.validated` or
/// `account.validation_failed`, recorded by `oauth::health`) in `events`.
pub fn last_validation<'a>(events: &'a [Event], account: &str) -> Option<&'a Event> {
    events
        .iter()
        .filter(|e| e.account.as_deref() == Some(account) && e.kind.starts_with("account.validat"))
        .max_by_key(|e| e.at)
}
