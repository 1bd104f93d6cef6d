//! Which upstream account carries a message. The submission side decides
//! when it accepts the message and stores the account's name with it (an
//! authenticated user has an account; see `users`); for submissions without
//! one (sendmail, an allow-listed device) the sender address decides:
//! the account whose mailbox it is, then one that may send as it (a shared
//! mailbox), then one whose mailbox is in the same domain.
//!
//! Send-as needs no rewriting: the SASL user stays the account's mailbox and
//! MAIL FROM / From stay the shared address, which is how Microsoft 365 and
//! Google expect a delegate to send for a shared mailbox.

use crate::oauth::account::Account;

/// The account for a message: the authenticated submitter's account when
/// there is one (and it exists), otherwise [`route_by_sender`].
pub fn route<'a>(
    accounts: &'a [Account],
    user_account: Option<&str>,
    sender: &str,
) -> Option<&'a Account> {
    if let Some(name) = user_account {
        return accounts.iter().find(|account| account.name == name);
    }
    route_by_sender(accounts, sender)
}

/// The account whose mailbox is `sender`, else one that lists `sender` in
/// `send_as`, else the first whose mailbox has `sender`'s domain. Addresses
/// compare without regard to ASCII case (providers treat them so). With
/// several candidates at the same level the first in `accounts` wins, so
/// pass accounts in config order.
pub fn route_by_sender<'a>(accounts: &'a [Account], sender: &str) -> Option<&'a Account> {
    let sender = sender.trim();
    if sender.is_empty() {
        return None;
    }
    let same = |a: &str| a.eq_ignore_ascii_case(sender);
    accounts
        .iter()
        .find(|account| same(&account.user))
        .or_else(|| {
            accounts
                .iter()
                .find(|account| account.send_as.iter().any(|shared| same(shared)))
        })
        .or_else(|| {
            let domain = domain_of(sender)?;
            accounts.iter().find(|account| {
                domain_of(&account.user).is_some_and(|d| d.eq_ignore_ascii_case(domain))
            })
        })
}

/// The part after the last `@`, if there is a non-empty one.
pub fn domain_of(address: &str) -> Option<&str> {
    address
        .rsplit_once('@')
        .map(|(_, domain)| domain)
        .filter(|domain| !domain.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn accounts() -> Vec<Account> {
        let text = r#"
[[account]]
name = "office"
provider = "microsoft"
grant = "authorization_code"
tenant = "contoso.onmicrosoft.com"
client_id = "id"
user = "noreply@contoso.com"
send_as = ["Billing@contoso.com"]

[[account]]
name = "lab"
provider = "microsoft"
grant = "authorization_code"
tenant = "fabrikam.onmicrosoft.com"
client_id = "id"
user = "alice@fabrikam.com"
send_as = ["billing@contoso.com"]
"#;
        let config = Config::parse(text, Path::new("test.toml")).expect("config");
        config
            .accounts
            .iter()
            .map(|account| Account::from_config(account).expect("account"))
            .collect()
    }

    #[test]
    fn mailbox_then_send_as_then_domain() {
        let accounts = accounts();
        let name = |sender| route_by_sender(&accounts, sender).map(|a| a.name.as_str());
        assert_eq!(name("alice@fabrikam.com"), Some("lab"));
        assert_eq!(name("NoReply@Contoso.com"), Some("office"));
        // Both may send as billing@: the first in config order wins.
        assert_eq!(name("billing@contoso.com"), Some("office"));
        assert_eq!(name("scanner@contoso.com"), Some("office"));
        assert_eq!(name("printer@FABRIKAM.com"), Some("lab"));
        assert_eq!(name("someone@example.org"), None);
        assert_eq!(name(""), None);
        assert_eq!(name("no-domain@"), None);
    }

    #[test]
    fn an_authenticated_users_account_comes_first() {
        let accounts = accounts();
        let name = |user, sender| route(&accounts, user, sender).map(|a| a.name.as_str());
        assert_eq!(name(Some("lab"), "noreply@contoso.com"), Some("lab"));
        assert_eq!(name(Some("gone"), "noreply@contoso.com"), None);
        assert_eq!(name(None, "noreply@contoso.com"), Some("office"));
    }
}
