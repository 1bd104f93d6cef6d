//! The one acceptance path (STYLE.md section 7; Postfix's `cleanup` is the
//! model): the SMTP listeners, `oxirelay sendmail` and the pickup of its
//! drops all end in [`Acceptance::accept`]. A front end only translates its
//! protocol and says who submits (a [`SubmissionUser`]: a logged-in user, a
//! mapped network, a mapped local Unix user); this checks what that
//! identity may send and the message itself, puts the front end's trace
//! header in front, and queues it. The id comes back only after the commit
//! (contract 1).
//!
//! The checks repeat what the SMTP session already refused on the wire
//! (sender at MAIL FROM, recipients at RCPT, size, NUL and long lines in
//! DATA), so that a way in without a session (a drop file) meets the same
//! rules with the same words. For a message that came over SMTP they cost
//! one pass over bytes already in memory.

use crate::metrics::SubmissionResult;
use crate::smtp::server::Reply;
use crate::smtp::server::data::MAX_LINE_LEN;
use crate::smtp::server::reply::standard;
use crate::store::{MessageId, NewMessage, Store, StoreError};
use crate::users::SubmissionUser;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::Notify;

/// Why a message is not accepted, whoever submitted it. Each says what to
/// change; [`Refused::reply`] is the same refusal as an SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{user} may not send as <{sender}>: it is not in its allowed_from")]
    Sender { user: String, sender: String },
    #[error(
        "the header From <{from}> is not in the allowed_from of {user}; send from an allowed address (or set check_header_from = false for this user)"
    )]
    HeaderFrom { user: String, from: String },
    #[error("the message has no recipients")]
    NoRecipients,
    #[error(
        "the message has {count} recipients; account {account} takes at most {limit} a message: split the list"
    )]
    TooManyRecipients {
        count: usize,
        account: String,
        limit: usize,
    },
    #[error(
        "the message is {size} bytes; at most {max} are accepted: send large files another way"
    )]
    TooBig { size: usize, max: usize },
    #[error("line {line} does not end with CRLF (a bare CR or LF); end every line with CRLF")]
    BareLineEnding { line: usize },
    #[error(
        "line {line} holds a NUL byte, which mail cannot carry (RFC 5322 section 3.5); remove it, or attach the content base64-encoded"
    )]
    Nul { line: usize },
    #[error(
        "line {line} is longer than {MAX_LINE_LEN} octets (RFC 5322 section 2.1.1); wrap long lines or send the part quoted-printable or base64"
    )]
    LineTooLong { line: usize },
}

impl Refused {
    /// The refusal as the submission listener sends it: the same replies as
    /// the session's own checks.
    pub fn reply(&self) -> Reply {
        match self {
            Refused::Sender { user, sender } => Reply::new(
                550,
                format!(
                    "5.7.1 Sender not allowed for {user}: <{sender}> is not in its allowed_from"
                ),
            ),
            Refused::HeaderFrom { user, from } => Reply::new(
                550,
                format!(
                    "5.7.1 The header From <{from}> is not in the allowed_from of {user}; send from an allowed address"
                ),
            ),
            Refused::NoRecipients => standard::rcpt_first(),
            Refused::TooManyRecipients { .. } => standard::too_many_recipients(),
            Refused::TooBig { .. } => standard::message_too_big(),
            Refused::BareLineEnding { .. } => standard::bare_line_ending(),
            Refused::Nul { line } => standard::nul_in_message(*line),
            Refused::LineTooLong { line } => standard::long_line_in_message(*line),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("the message could not be queued ({0}); nothing was accepted, try again")]
    Store(#[from] StoreError),
}

impl AcceptError {
    /// True when the same submission may succeed later (the store failed);
    /// a refusal stays a refusal.
    pub fn is_transient(&self) -> bool {
        matches!(self, AcceptError::Store(_))
    }

    pub fn reply(&self) -> Reply {
        match self {
            AcceptError::Refused(refused) => refused.reply(),
            AcceptError::Store(_) => Reply::new(
                451,
                "4.3.0 The message could not be queued and was not accepted; try again later",
            ),
        }
    }
}

/// The recipients per message each account takes, from its provider
/// preset; at least [`MIN_RECIPIENTS`](super::MIN_RECIPIENTS) (RFC 5321
/// section 4.5.3.1.8) where the provider states no limit.
pub fn recipient_limits(config: &crate::config::Config) -> HashMap<String, usize> {
    config
        .accounts
        .iter()
        .map(|account| {
            let limit = crate::oauth::preset::preset(account.provider)
                .limits
                .recipients_per_message
                .map_or(super::MIN_RECIPIENTS, |n| n as usize);
            (account.name.clone(), limit)
        })
        .collect()
}

/// What any submission must satisfy. Needs no store and no key, so
/// `oxirelay sendmail` can tell its caller at once what `serve` would
/// refuse.
#[derive(Debug, Clone)]
pub struct AcceptRules {
    pub max_message_size: usize,
    recipient_limits: HashMap<String, usize>,
}

impl AcceptRules {
    pub fn from_config(config: &crate::config::Config, max_message_size: usize) -> Self {
        AcceptRules {
            max_message_size,
            recipient_limits: recipient_limits(config),
        }
    }

    /// Checks one message of `submitter`; `message` is what follows the
    /// trace header, every line ending in CRLF.
    pub fn check(
        &self,
        submitter: &SubmissionUser,
        mail_from: &str,
        recipients: &[String],
        message: &[u8],
    ) -> Result<(), Refused> {
        if !submitter.may_send_as(mail_from) {
            return Err(Refused::Sender {
                user: submitter.name.clone(),
                sender: mail_from.to_string(),
            });
        }
        if recipients.is_empty() {
            return Err(Refused::NoRecipients);
        }
        let limit = self
            .recipient_limits
            .get(&submitter.account)
            .copied()
            .unwrap_or(super::MIN_RECIPIENTS);
        if recipients.len() > limit {
            return Err(Refused::TooManyRecipients {
                count: recipients.len(),
                account: submitter.account.clone(),
                limit,
            });
        }
        check_content(message, self.max_message_size)?;
        if submitter.header_from_checked {
            // The envelope sender is checked above; the From a reader sees
            // must be one this identity may use as well.
            if let Some(from) = crate::message::header_from_addresses(message)
                .into_iter()
                .find(|from| !submitter.may_send_as(from))
            {
                return Err(Refused::HeaderFrom {
                    user: submitter.name.clone(),
                    from,
                });
            }
        }
        Ok(())
    }
}

/// The message's bytes as the DATA phase would take them: at most `max`
/// bytes, lines ending in CRLF, no NUL, no line over 998 octets.
pub fn check_content(message: &[u8], max: usize) -> Result<(), Refused> {
    if message.len() > max {
        return Err(Refused::TooBig {
            size: message.len(),
            max,
        });
    }
    if is_clean(message) {
        return Ok(());
    }
    let mut first_nul = None;
    let mut first_long = None;
    // One pass over the bytes that matter (LF, CR, NUL), found by SIMD
    // search rather than line by line, to name the first line at fault.
    let mut line = 1;
    let mut line_start = 0;
    for at in memchr::memchr3_iter(b'\n', b'\r', 0, message) {
        match message[at] {
            b'\n' => {
                // A CR before it was checked when it was found: it is
                // this CR LF's, or the message was refused there.
                if at == line_start || message[at - 1] != b'\r' {
                    return Err(Refused::BareLineEnding { line });
                }
                if first_long.is_none() && at - 1 - line_start > MAX_LINE_LEN {
                    first_long = Some(line);
                }
                line += 1;
                line_start = at + 1;
            }
            b'\r' => {
                if message.get(at + 1) != Some(&b'\n') {
                    return Err(Refused::BareLineEnding { line });
                }
            }
            _ => {
                first_nul.get_or_insert(line);
            }
        }
    }
    if line_start < message.len() {
        // The last line has no line end.
        return Err(Refused::BareLineEnding { line });
    }
    // The DATA phase's order: a NUL is named before a long line.
    if let Some(line) = first_nul {
        return Err(Refused::Nul { line });
    }
    if let Some(line) = first_long {
        return Err(Refused::LineTooLong { line });
    }
    Ok(())
}

/// Whether every line ends in CRLF and fits, with no NUL: the common case,
/// which every accepted message meets, decided by whole-message SIMD
/// searches (a NUL search, [`crate::message::crlf_lines`]), where the
/// search that names the line at fault stops at every CR as well
/// (BENCHMARKS.md, issue 12). False sends the message to that search.
fn is_clean(message: &[u8]) -> bool {
    message.ends_with(b"\n")
        && memchr::memchr(0, message).is_none()
        && crate::message::crlf_lines(message, |line| line.len() <= MAX_LINE_LEN)
            .is_some_and(<[u8]>::is_empty)
}

/// One message handed in by a front end.
pub struct Submission<'a> {
    pub submitter: &'a SubmissionUser,
    pub mail_from: &'a str,
    pub recipients: &'a [String],
    /// The front end's `Received:` header, ending in CRLF, put in front.
    pub trace: &'a str,
    pub message: &'a [u8],
    /// The queue id to use (see [`Store::enqueue_as`]); `None` for a new one.
    pub id: Option<MessageId>,
}

/// The rules and the queue: what every way in calls.
#[derive(Clone)]
pub struct Acceptance {
    rules: AcceptRules,
    store: Arc<dyn Store>,
    /// Notified after each message is queued, to wake the delivery engine.
    work_arrived: Arc<Notify>,
}

impl Acceptance {
    pub fn new(rules: AcceptRules, store: Arc<dyn Store>, work_arrived: Arc<Notify>) -> Self {
        Acceptance {
            rules,
            store,
            work_arrived,
        }
    }

    pub fn rules(&self) -> &AcceptRules {
        &self.rules
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Checks the submission and queues it; `Ok` only once it is committed.
    pub async fn accept(&self, submission: Submission<'_>) -> Result<MessageId, AcceptError> {
        let Submission {
            submitter,
            mail_from,
            recipients,
            trace,
            message,
            id,
        } = submission;
        // Every front end calls this right after it has the whole message
        // (end of DATA, the API's request body): from here to the commit
        // is the submission latency `/metrics` shows.
        let started = std::time::Instant::now();
        let metrics = crate::metrics::global();
        if let Err(refused) = self.rules.check(submitter, mail_from, recipients, message) {
            tracing::info!(user = %submitter.name, ?mail_from, %refused, "message refused");
            metrics.submission(SubmissionResult::Refused, started.elapsed());
            return Err(refused.into());
        }
        let mut body = Vec::with_capacity(trace.len() + message.len());
        body.extend_from_slice(trace.as_bytes());
        body.extend_from_slice(message);
        let size = body.len();
        let new = NewMessage {
            account: submitter.account.clone(),
            mail_from: mail_from.to_string(),
            recipients: recipients.to_vec(),
            body,
            submitted_by: submitter.name.clone(),
        };
        let queued = match id {
            Some(id) => self.store.enqueue_as(id.clone(), new).await.map(|()| id),
            None => self.store.enqueue(new).await,
        };
        match queued {
            Ok(id) => {
                metrics.submission(SubmissionResult::Accepted, started.elapsed());
                self.work_arrived.notify_one();
                tracing::info!(%id, user = %submitter.name, account = %submitter.account, size, recipients = recipients.len(), "message queued");
                Ok(id)
            }
            Err(error) => {
                metrics.submission(SubmissionResult::Failed, started.elapsed());
                tracing::error!(%error, user = %submitter.name, "cannot queue a submitted message");
                Err(error.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> SubmissionUser {
        SubmissionUser {
            name: "local:cron".into(),
            password_hash: String::new(),
            allowed_from: vec!["cron@example.com".into()],
            account: "office".into(),
            source: "local",
            header_from_checked: true,
        }
    }

    fn rules() -> AcceptRules {
        AcceptRules {
            max_message_size: 1000,
            recipient_limits: HashMap::from([("office".to_string(), 2)]),
        }
    }

    #[test]
    fn content_is_checked_as_data_would() {
        assert_eq!(check_content(b"", 10), Ok(()));
        assert_eq!(check_content(b"a\r\nb\r\n", 10), Ok(()));
        assert_eq!(
            check_content(b"a\r\nb\n", 10),
            Err(Refused::BareLineEnding { line: 2 })
        );
        assert_eq!(
            check_content(b"a\rb\r\n", 10),
            Err(Refused::BareLineEnding { line: 1 })
        );
        assert_eq!(
            check_content(b"no end", 10),
            Err(Refused::BareLineEnding { line: 1 })
        );
        assert_eq!(
            check_content(b"0123456789\r\n", 10),
            Err(Refused::TooBig { size: 12, max: 10 })
        );
        let long = format!("ok\r\n{}\r\nnul \0\r\n", "x".repeat(999));
        assert_eq!(
            check_content(long.as_bytes(), 5000),
            Err(Refused::Nul { line: 3 })
        );
        let long = format!("ok\r\n{}\r\n{}\r\n", "x".repeat(998), "y".repeat(999));
        let refused = check_content(long.as_bytes(), 5000).expect_err("long");
        assert_eq!(refused, Refused::LineTooLong { line: 3 });
        assert_eq!(refused.reply().code(), 550);
    }

    #[test]
    fn the_header_from_is_read_for_an_identity_that_asks_for_it() {
        let rules = rules();
        let one = ["a@example.net".to_string()];
        let message = b"From: ceo@example.com\r\nSubject: x\r\n\r\nx\r\n";
        let read = rules.check(&user(), "cron@example.com", &one, message);
        assert!(
            matches!(&read, Err(Refused::HeaderFrom { from, .. }) if from == "ceo@example.com"),
            "{read:?}"
        );
        // The structured API writes From itself from the sender it checked
        // and so does not ask for the message's headers to be read back.
        let unread = SubmissionUser {
            header_from_checked: false,
            ..user()
        };
        let own = b"From: cron@example.com\r\nSubject: x\r\n\r\nx\r\n";
        assert_eq!(rules.check(&unread, "cron@example.com", &one, own), Ok(()));
        assert!(
            rules.check(&unread, "ceo@example.com", &one, own).is_err(),
            "the sender is still checked"
        );
    }

    #[test]
    fn sender_and_recipients_follow_the_identity() {
        let rules = rules();
        let one = ["a@example.net".to_string()];
        assert_eq!(
            rules.check(&user(), "cron@example.com", &one, b"x\r\n"),
            Ok(())
        );
        let refused = rules
            .check(&user(), "ceo@example.com", &one, b"x\r\n")
            .expect_err("sender");
        assert!(
            refused
                .to_string()
                .contains("local:cron may not send as <ceo@example.com>")
        );
        assert_eq!(refused.reply().code(), 550);
        assert_eq!(
            rules.check(&user(), "cron@example.com", &[], b"x\r\n"),
            Err(Refused::NoRecipients)
        );
        let three = ["a@x.net", "b@x.net", "c@x.net"].map(String::from);
        assert!(matches!(
            rules.check(&user(), "cron@example.com", &three, b"x\r\n"),
            Err(Refused::TooManyRecipients { limit: 2, .. })
        ));
    }

    /// The checks line by line, as they were written first: the one-pass
    /// version must give the same answer for every message.
    fn checked_line_by_line(message: &[u8]) -> Result<(), Refused> {
        let mut first_nul = None;
        let mut first_long = None;
        for (index, line) in message.split_inclusive(|b| *b == b'\n').enumerate() {
            let number = index + 1;
            let Some(text) = line.strip_suffix(b"\r\n") else {
                return Err(Refused::BareLineEnding { line: number });
            };
            if text.contains(&b'\r') || text.contains(&b'\n') {
                return Err(Refused::BareLineEnding { line: number });
            }
            if first_nul.is_none() && text.contains(&0) {
                first_nul = Some(number);
            }
            if first_long.is_none() && text.len() > MAX_LINE_LEN {
                first_long = Some(number);
            }
        }
        match (first_nul, first_long) {
            (Some(line), _) => Err(Refused::Nul { line }),
            (None, Some(line)) => Err(Refused::LineTooLong { line }),
            (None, None) => Ok(()),
        }
    }

    use proptest::strategy::Strategy;

    proptest::proptest! {
        #![proptest_config(crate::fuzzing::config(512))]

        #[test]
        fn fuzz_content_is_checked_as_line_by_line(message in crate::fuzzing::data_bytes(48)) {
            proptest::prop_assert_eq!(check_content(&message, 1 << 20), checked_line_by_line(&message));
        }

        /// The fast path passes exactly the messages the rule accepts
        /// (the empty message aside, which it leaves to the full search):
        /// it can neither let a fault through nor send a clean message
        /// the long way. Lines that are mostly right, so that both
        /// answers come up often.
        #[test]
        fn fuzz_the_clean_path_is_the_rule(
            message in proptest::collection::vec(
                proptest::prop_oneof![
                    8 => proptest::sample::select(vec![&b"a line\r\n"[..], b"\r\n", b"\t.\r\n"]).prop_map(<[u8]>::to_vec),
                    1 => crate::fuzzing::data_piece(),
                    1 => (997..1001usize).prop_map(|n| [vec![b'y'; n], b"\r\n".to_vec()].concat()),
                ],
                0..12,
            ).prop_map(|pieces| pieces.concat()),
        ) {
            proptest::prop_assert_eq!(
                is_clean(&message),
                !message.is_empty() && checked_line_by_line(&message).is_ok()
            );
        }
    }
}
