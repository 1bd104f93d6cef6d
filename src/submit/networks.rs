//! Devices that cannot authenticate at all (most scanners and printers):
//! a `[[network]]` maps their addresses to an identity, the account that
//! delivers their mail and the senders they may use, on the listeners that
//! name it. The address stands in for a login; everything else (sender
//! rules, recipient limits, throttling, the Received header, the events
//! and audit lines of their messages) is what an authenticated user gets.
//! A listener without networks, or an address outside them, still needs
//! AUTH (DESIGN.md contract 8: no default identity).

use super::allow_list::{AllowList, CidrError};
use crate::config::NetworkConfig;
use crate::users::SubmissionUser;

/// One `[[network]]`, parsed.
#[derive(Debug, Clone)]
pub struct Network {
    pub name: String,
    pub addrs: AllowList,
    /// What its devices may do, as a user without a password: named
    /// `network:NAME` in the queue and the logs.
    pub submitter: SubmissionUser,
}

impl Network {
    pub fn from_config(config: &NetworkConfig) -> Result<Network, CidrError> {
        Ok(Network {
            name: config.name.clone(),
            addrs: AllowList::parse(&config.addrs)?,
            submitter: SubmissionUser {
                name: format!("network:{}", config.name),
                password_hash: String::new(),
                allowed_from: config.allowed_from.clone(),
                account: config.account.clone(),
                source: "network",
                header_from_checked: config.check_header_from,
            },
        })
    }
}
