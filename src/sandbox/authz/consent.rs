//! Pending consent forms. Each rendered form carries a random single-use
//! token bound to the request it shows; a POST without a live token is
//! refused, so another site cannot submit consent on the user's behalf
//! (CSRF) and a form cannot be replayed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::ledger::random_token;

/// How long a person has to click Allow or Deny.
const FORM_LIFETIME: Duration = Duration::from_secs(600);
/// Bound on pending forms, so reloading a page in a loop cannot grow memory.
const MAX_PENDING_FORMS: usize = 10_000;

/// An `/authorize` request that passed validation and awaits consent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AuthorizeRequest {
    pub client_id: String,
    pub redirect_uri: String,
    pub state: Option<String>,
    pub code_challenge: String,
    pub scopes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PendingConsent {
    Authorize(AuthorizeRequest),
    /// The device page: the user code comes with the POST.
    Device,
}

#[derive(Debug, Default)]
pub(crate) struct ConsentForms {
    pending: HashMap<String, (PendingConsent, Instant)>,
}

impl ConsentForms {
    /// Registers a form; `None` when too many are pending.
    pub(crate) fn open(&mut self, consent: PendingConsent, now: Instant) -> Option<String> {
        self.pending.retain(|_, (_, expires)| *expires > now);
        if self.pending.len() >= MAX_PENDING_FORMS {
            return None;
        }
        let token = random_token();
        self.pending
            .insert(token.clone(), (consent, now + FORM_LIFETIME));
        Some(token)
    }

    /// The form's request, once: the token is consumed.
    pub(crate) fn take(&mut self, token: &str, now: Instant) -> Option<PendingConsent> {
        let (consent, expires) = self.pending.remove(token)?;
        (expires > now).then_some(consent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_single_use_and_expire() {
        let mut forms = ConsentForms::default();
        let now = Instant::now();
        let token = forms.open(PendingConsent::Device, now).expect("open");
        assert_eq!(forms.take(&token, now), Some(PendingConsent::Device));
        assert_eq!(forms.take(&token, now), None);
        let token = forms.open(PendingConsent::Device, now).expect("open");
        assert_eq!(forms.take(&token, now + FORM_LIFETIME), None);
        assert_eq!(forms.take("forged", now), None);
    }
}
