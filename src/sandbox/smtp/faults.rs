//! Fault injection for the sandbox SMTP server: what a real provider does on
//! a bad day (421 at the greeting, 4xx/5xx at any step, a good token refused
//! at AUTH, a connection dropped
//! mid-DATA, slow replies, no STARTTLS), switchable at run time so tests can
//! check how a client copes.

use crate::sandbox::armed::ArmedFaults;
use crate::smtp::server::Reply;
use std::time::Duration;

/// The step of a session a [`Fault`] hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultStage {
    /// Instead of the `220` greeting.
    Greeting,
    /// In answer to EHLO/HELO.
    Ehlo,
    /// In answer to AUTH with a bearer token, before the token is looked
    /// at: a [`Fault::Reply`] refuses it as the provider refuses a token
    /// (the profile's error challenge, then this reply; counted as a failed
    /// login), as Exchange does now and then with a good one. Only
    /// `Fault::Reply` applies here.
    Auth,
    /// In answer to MAIL FROM.
    Mail,
    /// In answer to RCPT TO.
    Rcpt,
    /// In answer to DATA (instead of 354).
    Data,
    /// After the message's final dot (nothing is stored).
    EndOfData,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Send `reply` (a 4xx or 5xx) at `stage` instead of going on. A 421
    /// also closes the connection.
    Reply { stage: FaultStage, reply: Reply },
    /// Close the connection without a reply at `stage`.
    Disconnect { stage: FaultStage },
    /// Reply 354 to DATA, then close as soon as the message starts arriving.
    DisconnectMidData,
    /// Wait this long before every reply.
    SlowReplies(Duration),
    /// Do not offer (or accept) STARTTLS: a correct client must then refuse
    /// to send any credentials.
    NoStartTls,
}

pub use crate::sandbox::armed::FaultTimes;

/// The faults in force. Cheap to clone; clones share the same set.
#[derive(Debug, Clone, Default)]
pub struct SmtpFaults {
    armed: ArmedFaults<Fault>,
}

impl SmtpFaults {
    pub fn inject(&self, fault: Fault, times: FaultTimes) {
        self.armed.inject(fault, times);
    }

    pub fn clear(&self) {
        self.armed.clear();
    }

    pub(super) fn fire<T>(&self, select: impl Fn(&Fault) -> Option<T>) -> Option<T> {
        self.armed.fire(select)
    }

    /// What to do at `stage`, if a fault says so.
    pub(super) fn at_stage(&self, stage: FaultStage) -> Option<StageFault> {
        self.fire(|fault| match fault {
            Fault::Reply { stage: at, reply } if *at == stage => {
                Some(StageFault::Reply(reply.clone()))
            }
            Fault::Disconnect { stage: at } if *at == stage => Some(StageFault::Disconnect),
            _ => None,
        })
    }

    /// The reply of a [`Fault::Reply`] at [`FaultStage::Auth`], if one
    /// fires now.
    pub(super) fn at_auth(&self) -> Option<Reply> {
        self.fire(|fault| match fault {
            Fault::Reply {
                stage: FaultStage::Auth,
                reply,
            } => Some(reply.clone()),
            _ => None,
        })
    }
}

/// A stage fault that fired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum StageFault {
    Reply(Reply),
    Disconnect,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_n_fires_n_times_then_disappears() {
        let faults = SmtpFaults::default();
        let reply = Reply::new(451, "4.3.0 try later");
        faults.inject(
            Fault::Reply {
                stage: FaultStage::Mail,
                reply: reply.clone(),
            },
            FaultTimes::Next(2),
        );
        assert_eq!(faults.at_stage(FaultStage::Rcpt), None);
        assert_eq!(
            faults.at_stage(FaultStage::Mail),
            Some(StageFault::Reply(reply.clone()))
        );
        assert_eq!(
            faults.at_stage(FaultStage::Mail),
            Some(StageFault::Reply(reply))
        );
        assert_eq!(faults.at_stage(FaultStage::Mail), None);
    }

    #[test]
    fn an_auth_fault_fires_only_at_auth() {
        let faults = SmtpFaults::default();
        let reply = Reply::new(535, "5.7.3 Authentication unsuccessful");
        faults.inject(
            Fault::Reply {
                stage: FaultStage::Auth,
                reply: reply.clone(),
            },
            FaultTimes::Next(2),
        );
        assert_eq!(faults.at_stage(FaultStage::Mail), None);
        assert_eq!(faults.at_auth(), Some(reply.clone()));
        assert_eq!(faults.at_auth(), Some(reply));
        assert_eq!(faults.at_auth(), None);
        // A Reply fault of another stage is not an AUTH fault.
        faults.inject(
            Fault::Reply {
                stage: FaultStage::Mail,
                reply: Reply::new(451, "4.3.0 later"),
            },
            FaultTimes::Always,
        );
        assert_eq!(faults.at_auth(), None);
    }

    #[test]
    fn fractions_zero_and_one_and_clear() {
        let faults = SmtpFaults::default();
        faults.inject(
            Fault::Disconnect {
                stage: FaultStage::Data,
            },
            FaultTimes::Fraction(0.0),
        );
        assert_eq!(faults.at_stage(FaultStage::Data), None);
        faults.inject(
            Fault::Disconnect {
                stage: FaultStage::Data,
            },
            FaultTimes::Fraction(1.0),
        );
        assert_eq!(
            faults.at_stage(FaultStage::Data),
            Some(StageFault::Disconnect)
        );
        faults.clear();
        assert_eq!(faults.at_stage(FaultStage::Data), None);
    }
}
