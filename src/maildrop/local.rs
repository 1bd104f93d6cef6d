//! Who a local Unix user is as a submitter: the `[[sendmail.local]]` that
//! names the user, else the first that names one of its groups. The uid
//! comes from the kernel (a drop file's owner); names and groups come from
//! the system's user database (NSS: /etc/passwd and /etc/group, LDAP,
//! sssd), asked at each drop so a change there applies at once. There is
//! no default identity: a user no entry names is refused.

use crate::config::{LocalSenderConfig, SendmailConfig};
use crate::users::SubmissionUser;
use std::path::{Path, PathBuf};

/// A local user as the user database knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalUser {
    pub uid: u32,
    pub name: String,
    /// The primary group and every supplementary one.
    pub groups: Vec<u32>,
}

/// The user database; [`SystemUsers`] in the relay, a table in tests.
pub trait UserDatabase: Send + Sync {
    /// `Err` when the database cannot be asked now (an LDAP server down).
    fn user(&self, uid: u32) -> Result<Option<LocalUser>, String>;
    fn group_id(&self, name: &str) -> Result<Option<u32>, String>;
}

/// The system's database through libc (getpwuid_r, getgrnam_r, getgrouplist).
pub struct SystemUsers;

impl UserDatabase for SystemUsers {
    fn user(&self, uid: u32) -> Result<Option<LocalUser>, String> {
        use nix::unistd::{Uid, User, getgrouplist};
        let Some(user) = User::from_uid(Uid::from_raw(uid)).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let name = std::ffi::CString::new(user.name.as_str()).map_err(|e| e.to_string())?;
        let groups = getgrouplist(&name, user.gid).map_err(|e| e.to_string())?;
        Ok(Some(LocalUser {
            uid,
            name: user.name,
            groups: groups.into_iter().map(|g| g.as_raw()).collect(),
        }))
    }

    fn group_id(&self, name: &str) -> Result<Option<u32>, String> {
        Ok(nix::unistd::Group::from_name(name)
            .map_err(|e| e.to_string())?
            .map(|g| g.gid.as_raw()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocalRefusal {
    #[error(
        "uid {uid} is not a user of this system (no entry in the user database); drops must come from a local user named in a [[sendmail.local]]"
    )]
    UnknownUid { uid: u32 },
    #[error(
        "local user {user} (uid {uid}) may not send mail: no [[sendmail.local]] in {config} names it or one of its groups; add it to the users (or groups) of one, with the account and the senders it may use"
    )]
    Unmapped {
        user: String,
        uid: u32,
        config: PathBuf,
    },
    #[error("cannot look up uid {uid} in the user database: {reason}; try again")]
    Lookup { uid: u32, reason: String },
}

impl LocalRefusal {
    /// The user database failed, not the user: the same drop may pass later.
    pub fn is_transient(&self) -> bool {
        matches!(self, LocalRefusal::Lookup { .. })
    }
}

/// The `[[sendmail.local]]` entries.
#[derive(Debug, Clone)]
pub struct LocalSenders {
    entries: Vec<LocalSenderConfig>,
    config: PathBuf,
}

impl LocalSenders {
    pub fn new(sendmail: &SendmailConfig, config_path: &Path) -> Self {
        LocalSenders {
            entries: sendmail.locals.clone(),
            config: config_path.to_path_buf(),
        }
    }

    /// The submitter that `uid` is, named `local:USER` in the queue and the
    /// logs, with its entry's account and senders.
    pub fn submitter_for(
        &self,
        uid: u32,
        users: &dyn UserDatabase,
    ) -> Result<(LocalUser, SubmissionUser), LocalRefusal> {
        let lookup = |reason| LocalRefusal::Lookup { uid, reason };
        let user = users
            .user(uid)
            .map_err(lookup)?
            .ok_or(LocalRefusal::UnknownUid { uid })?;
        // A user named outright wins over a group it is in, so an operator
        // can single one member of a group out.
        let mut entry = self
            .entries
            .iter()
            .find(|e| e.users.iter().any(|u| u == &user.name));
        if entry.is_none() {
            for candidate in &self.entries {
                for group in &candidate.groups {
                    if let Some(gid) = users.group_id(group).map_err(lookup)?
                        && user.groups.contains(&gid)
                    {
                        entry = Some(candidate);
                        break;
                    }
                }
                if entry.is_some() {
                    break;
                }
            }
        }
        let Some(entry) = entry else {
            return Err(LocalRefusal::Unmapped {
                user: user.name,
                uid,
                config: self.config.clone(),
            });
        };
        let submitter = SubmissionUser {
            name: format!("local:{}", user.name),
            password_hash: String::new(),
            allowed_from: entry.allowed_from.clone(),
            account: entry.account.clone(),
            source: "local",
            header_from_checked: entry.check_header_from,
        };
        Ok((user, submitter))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A user database as a table.
    pub(crate) struct Table {
        pub users: Vec<LocalUser>,
        pub groups: Vec<(&'static str, u32)>,
    }

    impl UserDatabase for Table {
        fn user(&self, uid: u32) -> Result<Option<LocalUser>, String> {
            Ok(self.users.iter().find(|u| u.uid == uid).cloned())
        }
        fn group_id(&self, name: &str) -> Result<Option<u32>, String> {
            Ok(self.groups.iter().find(|(n, _)| *n == name).map(|g| g.1))
        }
    }

    pub(crate) fn table() -> Table {
        let user = |uid, name: &str, groups: &[u32]| LocalUser {
            uid,
            name: name.into(),
            groups: groups.to_vec(),
        };
        Table {
            users: vec![
                user(33, "www-data", &[33]),
                user(1000, "alice", &[1000, 500]),
                user(1001, "bob", &[1001, 500]),
                user(1002, "mallory", &[1002]),
            ],
            groups: vec![("www-data", 33), ("cron-mail", 500)],
        }
    }

    pub(crate) fn senders() -> LocalSenders {
        let entry = |name: &str, users: &[&str], groups: &[&str], from: &str| LocalSenderConfig {
            name: name.into(),
            users: users.iter().map(|s| s.to_string()).collect(),
            groups: groups.iter().map(|s| s.to_string()).collect(),
            account: "office".into(),
            allowed_from: vec![from.into()],
            check_header_from: true,
        };
        LocalSenders::new(
            &SendmailConfig {
                spool: PathBuf::from("/var/spool/oxirelay"),
                locals: vec![
                    entry(
                        "cron",
                        &[],
                        &["cron-mail", "nonexistent"],
                        "@cron.example.com",
                    ),
                    entry("bob", &["bob"], &[], "bob@example.com"),
                    entry("web", &["www-data"], &[], "web@example.com"),
                ],
            },
            Path::new("/etc/oxirelay/oxirelay.toml"),
        )
    }

    #[test]
    fn users_map_by_name_then_by_group() {
        let (table, senders) = (table(), senders());
        let (_, web) = senders.submitter_for(33, &table).expect("mapped");
        assert_eq!(web.name, "local:www-data");
        assert_eq!(web.account, "office");
        assert!(web.may_send_as("web@example.com"));
        assert!(!web.may_send_as("bob@example.com"));
        let (alice, cron) = senders.submitter_for(1000, &table).expect("by group");
        assert_eq!(alice.name, "alice");
        assert!(cron.may_send_as("alice@cron.example.com"));
        // bob is in cron-mail too, but named outright.
        let (_, bob) = senders.submitter_for(1001, &table).expect("by name");
        assert!(bob.may_send_as("bob@example.com"));
        assert!(!bob.may_send_as("bob@cron.example.com"));
    }

    #[test]
    fn unmapped_and_unknown_users_are_refused() {
        let (table, senders) = (table(), senders());
        let refused = senders.submitter_for(1002, &table).expect_err("unmapped");
        assert!(!refused.is_transient());
        let text = refused.to_string();
        assert!(
            text.contains("local user mallory (uid 1002) may not send mail"),
            "{text}"
        );
        assert!(text.contains("/etc/oxirelay/oxirelay.toml"), "{text}");
        assert_eq!(
            senders.submitter_for(4242, &table),
            Err(LocalRefusal::UnknownUid { uid: 4242 })
        );
    }

    #[test]
    fn the_system_database_knows_root() {
        let root = SystemUsers.user(0).expect("lookup").expect("root exists");
        assert_eq!(root.name, "root");
        assert!(root.groups.contains(&0));
        assert_eq!(SystemUsers.group_id("root").expect("lookup"), Some(0));
    }
}
