//! `[notify] email_to`: each notification as a short e-mail to the
//! operator, queued like any submission (durable, retried, with events)
//! through the first `email_account` that is in a working state and is
//! not the account the notification is about. In a lockdown, delivery is
//! paused and such mail waits in the queue: the webhook and the command
//! are the channels that reach the operator then.

use super::conditions::Condition;
use crate::config::Config;
use crate::message::Composition;
use crate::store::{AccountState, MessageId, NewMessage, Store, StoreError, TokenRecord};

/// `submitted_by` of the operator's mail, in the queue and in webhooks.
pub const SUBMITTED_BY: &str = "notify";

#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    #[error(
        "no account of [notify] email_account is working (or each is the one in trouble); the notification goes out by webhook and command only"
    )]
    NoWorkingAccount,
    #[error("cannot compose the notification e-mail: {0}")]
    Compose(#[from] crate::message::MessageError),
    #[error("cannot queue the notification e-mail: {0}")]
    Store(#[from] StoreError),
}

/// The account to send through: in `email_account` order, the first that
/// is not `about` and whose state lets it send.
pub fn pick_account<'a>(
    names: &'a [String],
    records: &[TokenRecord],
    about: Option<&str>,
) -> Option<&'a str> {
    names
        .iter()
        .map(String::as_str)
        .filter(|name| Some(*name) != about)
        .find(|name| {
            records
                .iter()
                .find(|r| r.account == *name)
                .is_none_or(|r| matches!(r.state, AccountState::Valid | AccountState::New))
        })
}

/// Queues the e-mail; the caller wakes the delivery engine.
pub async fn queue(
    store: &dyn Store,
    config: &Config,
    to: &str,
    names: &[String],
    records: &[TokenRecord],
    condition: &Condition,
) -> Result<MessageId, EmailError> {
    let account = pick_account(names, records, condition.account.as_deref())
        .and_then(|name| config.accounts.iter().find(|a| a.name == name))
        .ok_or(EmailError::NoWorkingAccount)?;
    let subject = match &condition.account {
        Some(name) => format!("[oxirelay] {}: account {name}", condition.kind),
        None => format!("[oxirelay] {}", condition.kind),
    };
    let message = Composition {
        from: account.user.clone(),
        to: vec![to.to_string()],
        subject,
        body: format!(
            "{}\n\nSent by oxirelay on {} ({}). It is repeated while the condition lasts, at most once per [notify] repeat_every.\n",
            condition.detail,
            crate::instance::host_name(),
            condition.key
        ),
        ..Default::default()
    }
    .build()?;
    Ok(store
        .enqueue(NewMessage {
            account: account.name.clone(),
            mail_from: message.envelope.mail_from,
            recipients: message.envelope.rcpt_to,
            body: message.bytes,
            submitted_by: SUBMITTED_BY.to_string(),
        })
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_about_an_account_goes_through_another_that_works() {
        let names = vec!["office".to_string(), "backup".to_string()];
        let mut broken = TokenRecord::new("backup");
        broken.state = AccountState::NeedsConsent;
        assert_eq!(pick_account(&names, &[], None), Some("office"));
        assert_eq!(pick_account(&names, &[], Some("office")), Some("backup"));
        assert_eq!(
            pick_account(&names, &[broken.clone()], Some("office")),
            None
        );
        assert_eq!(pick_account(&names, &[broken], None), Some("office"));
    }
}
