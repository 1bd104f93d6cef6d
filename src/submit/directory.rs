//! Who may submit: the `[[user]]` entries of the config file and the users
//! added with `oxirelay user add` (in the store), looked up by name at each
//! AUTH so a user added while the relay runs can log in at once. Bearer
//! users are found by (issuer, subject) only, never by a subject alone: the
//! same `sub` from another issuer is someone else.

use crate::config::UserConfig;
use crate::store::{Store, StoreError};
use crate::users::SubmissionUser;
use std::sync::Arc;

pub struct UserDirectory {
    configured: Vec<SubmissionUser>,
    bearers: Vec<BearerIdentity>,
    store: Arc<dyn Store>,
}

/// Tokens of `issuer` whose `sub` is `subject` are the config user `user`.
struct BearerIdentity {
    issuer: String,
    subject: String,
    user: usize,
}

impl UserDirectory {
    pub fn new(configured: &[UserConfig], store: Arc<dyn Store>) -> Self {
        UserDirectory {
            configured: configured
                .iter()
                .map(|u| SubmissionUser {
                    name: u.name.clone(),
                    // No hash: an OAuth-only user; PLAIN/LOGIN always fail.
                    password_hash: u.password_hash.clone().unwrap_or_default(),
                    allowed_from: u.allowed_from.clone(),
                    account: u.account.clone(),
                    source: "config",
                    header_from_checked: u.check_header_from,
                })
                .collect(),
            bearers: configured
                .iter()
                .enumerate()
                .filter_map(|(user, u)| {
                    Some(BearerIdentity {
                        issuer: u.issuer.clone()?,
                        subject: u.subject.clone().unwrap_or_else(|| u.name.clone()),
                        user,
                    })
                })
                .collect(),
            store,
        }
    }

    /// The bearer user that tokens of `issuer` with subject `subject` are.
    /// Subjects compare exactly: OpenID Connect makes them case-sensitive.
    pub fn find_bearer(&self, issuer: &str, subject: &str) -> Option<SubmissionUser> {
        self.bearers
            .iter()
            .find(|b| crate::config::same_issuer(&b.issuer, issuer) && b.subject == subject)
            .map(|b| self.configured[b.user].clone())
    }

    /// Every user: the config file's, then the store's.
    pub async fn all(&self) -> Result<Vec<SubmissionUser>, StoreError> {
        let mut users = self.configured.clone();
        users.extend(self.store.users().await?);
        Ok(users)
    }

    /// The user called `name`; the config file wins over the store.
    /// Names compare without case: they are often mail addresses.
    pub async fn find(&self, name: &str) -> Result<Option<SubmissionUser>, StoreError> {
        if let Some(user) = self
            .configured
            .iter()
            .find(|u| u.name.eq_ignore_ascii_case(name))
        {
            return Ok(Some(user.clone()));
        }
        Ok(self
            .store
            .users()
            .await?
            .into_iter()
            .find(|u| u.name.eq_ignore_ascii_case(name)))
    }
}
