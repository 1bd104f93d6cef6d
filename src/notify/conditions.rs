//! The conditions an operator must hear of, read from the store: an
//! account that needs consent, fails, was revoked or needs an
//! administrator (its [`AccountState`], which the broker, the delivery
//! engine and `serve`'s regular validation keep), a Microsoft refresh token
//! near its known end (90 days unused), and the lockdown. Read, not
//! derived from events, so that a condition is known after a restart and
//! whichever process caused it.

use crate::config::AccountConfig;
use crate::oauth::preset::ProviderKind;
use crate::store::{AccountState, Lockdown, TokenRecord};

const DAY: i64 = 86_400;
/// Microsoft refresh tokens die after 90 days unused
/// (`oauth::explain`); warn two weeks before.
pub const MICROSOFT_REFRESH_LIFETIME_DAYS: i64 = 90;
pub const MICROSOFT_REFRESH_WARN_DAYS: i64 = 76;

/// Something the operator is told of while it lasts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// Names it in the store's marks: `account:NAME:needs_consent`, `lockdown`.
    pub key: String,
    /// The event kind: `notify.needs_consent`, `notify.lockdown`, ...
    pub kind: &'static str,
    pub account: Option<String>,
    /// One sentence: what is wrong and what to do.
    pub detail: String,
}

/// Every condition in force, given the configured accounts, their stored
/// records and the lockdown flag.
pub fn detect(
    accounts: &[AccountConfig],
    records: &[TokenRecord],
    lockdown: Option<&Lockdown>,
    now: i64,
) -> Vec<Condition> {
    let mut found = Vec::new();
    if let Some(lockdown) = lockdown {
        found.push(Condition {
            key: "lockdown".into(),
            kind: "notify.lockdown",
            account: None,
            detail: format!(
                "the relay is in lockdown since {} ({}): delivery is paused and queued mail is kept; `oxirelay unlock` resumes it",
                crate::clock::format_unix(lockdown.since),
                lockdown.reason
            ),
        });
    }
    for account in accounts {
        let Some(record) = records.iter().find(|r| r.account == account.name) else {
            continue;
        };
        let name = &account.name;
        let reason = record.state_reason.as_deref();
        let state = match record.state {
            AccountState::NeedsConsent => Some((
                "notify.needs_consent",
                said_once(
                    &format!("account {name} needs consent again"),
                    reason,
                    &format!("its mail stays queued until `oxirelay account login {name}`"),
                ),
            )),
            AccountState::Failing => Some((
                "notify.account_failing",
                said_once(
                    &format!(
                        "account {name} is failing ({} attempts in a row)",
                        record.consecutive_failures
                    ),
                    reason,
                    "its mail is deferred and retried",
                ),
            )),
            // During a lockdown every account is revoked on purpose: the
            // lockdown's own notification says so once.
            AccountState::Revoked if lockdown.is_none() => Some((
                "notify.revoked",
                said_once(
                    &format!("account {name} was revoked"),
                    reason,
                    &format!("nothing is sent through it until `oxirelay account login {name}`"),
                ),
            )),
            AccountState::NeedsAdmin => Some((
                "notify.needs_admin",
                said_once(
                    &format!(
                        "account {name} is refused by the provider until an administrator acts"
                    ),
                    reason,
                    "its mail stays queued",
                ),
            )),
            _ => None,
        };
        if let Some((kind, detail)) = state {
            found.push(Condition {
                key: format!("account:{name}:{}", record.state.as_str()),
                kind,
                account: Some(name.clone()),
                detail,
            });
        }
        let last_use = record.last_success_at.unwrap_or(record.updated_at);
        if account.provider == ProviderKind::Microsoft
            && account.grant.uses_refresh_token()
            && record.refresh_token.is_some()
            && matches!(record.state, AccountState::Valid | AccountState::Failing)
            && now - last_use >= MICROSOFT_REFRESH_WARN_DAYS * DAY
        {
            found.push(Condition {
                key: format!("account:{name}:refresh_token_expiring"),
                kind: "notify.refresh_token_expiring",
                account: Some(name.clone()),
                detail: format!(
                    "account {name}'s refresh token has not been used since {} and dies at {} (Microsoft ends refresh tokens after 90 days unused); `oxirelay token {name}` renews it",
                    crate::clock::format_unix(last_use),
                    crate::clock::format_unix(last_use + MICROSOFT_REFRESH_LIFETIME_DAYS * DAY)
                ),
            });
        }
    }
    found
}

/// "what: reason; what next", with the advice left out when the stored
/// reason already gives it (the broker's reasons name the command).
fn said_once(what: &str, reason: Option<&str>, next: &str) -> String {
    match reason {
        Some(reason) if reason.contains("oxirelay ") || reason.contains(next) => {
            format!("{what}: {reason}")
        }
        Some(reason) => format!("{what}: {reason}; {next}"),
        None => format!("{what}; {next}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accounts() -> Vec<AccountConfig> {
        let text = r#"
[[account]]
name = "office"
provider = "microsoft"
grant = "authorization_code"
tenant = "contoso.onmicrosoft.com"
client_id = "00000000-0000-0000-0000-000000000000"
client_secret = "env:OFFICE_CLIENT_SECRET"
user = "noreply@contoso.com"
"#;
        crate::config::Config::parse(text, std::path::Path::new("/etc/oxirelay/oxirelay.toml"))
            .expect("config")
            .accounts
    }

    fn record(state: AccountState) -> TokenRecord {
        let mut record = TokenRecord::new("office");
        record.state = state;
        record.state_reason = Some("invalid_grant".into());
        record
    }

    #[test]
    fn account_states_and_the_lockdown_are_conditions() {
        let now = 1_000_000_000;
        let found = detect(
            &accounts(),
            &[record(AccountState::NeedsConsent)],
            None,
            now,
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].key, "account:office:needs_consent");
        assert_eq!(found[0].kind, "notify.needs_consent");
        assert!(found[0].detail.contains("oxirelay account login office"));
        assert!(detect(&accounts(), &[record(AccountState::Valid)], None, now).is_empty());

        let lockdown = Lockdown {
            reason: "drill".into(),
            since: now,
        };
        let found = detect(
            &accounts(),
            &[record(AccountState::Revoked)],
            Some(&lockdown),
            now,
        );
        assert_eq!(
            found.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(),
            ["lockdown"],
            "a lockdown's revocations are told once, as the lockdown"
        );
        assert_eq!(
            detect(&accounts(), &[record(AccountState::Revoked)], None, now)[0].kind,
            "notify.revoked"
        );
    }

    #[test]
    fn an_unused_microsoft_refresh_token_is_told_before_it_dies() {
        let now = 1_000_000_000;
        let mut idle = record(AccountState::Valid);
        idle.refresh_token = Some(crate::secret::SealedValue::from_stored(vec![1, 2, 3]));
        idle.last_success_at = Some(now - 80 * DAY);
        let found = detect(&accounts(), std::slice::from_ref(&idle), None, now);
        assert_eq!(found[0].kind, "notify.refresh_token_expiring");
        assert!(found[0].detail.contains("90 days"), "{}", found[0].detail);
        idle.last_success_at = Some(now - 10 * DAY);
        assert!(detect(&accounts(), &[idle], None, now).is_empty());
    }
}
