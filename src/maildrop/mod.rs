//! `oxirelay sendmail` for local users without the keys (issue 9), split
//! the way Postfix splits `postdrop` from its queue: `sendmail` only
//! writes a file into a drop directory; `serve`, which alone holds the
//! master key and the store, picks it up, checks it as it checks a
//! submission over SMTP ([`crate::submit::accept`]) and queues it.
//!
//! The spool (`[sendmail] spool`):
//!
//! | path | owner, mode | what |
//! | --- | --- | --- |
//! | `spool/` | relay user, 0755 | writable by the relay alone |
//! | `spool/maildrop/` | relay user, drop group, 3770 `drwxrws--T` | where `sendmail` drops |
//! | `spool/claimed/` | relay user, 0700 | drops being queued, named by their queue id |
//! | `spool/rejected/` | relay user, 0700 | refused drops, each with `ID.rejected` saying why |
//! | `spool/pickup.lock` | relay user, 0600 | one pickup per spool |
//!
//! Why those modes: only members of the drop group can write to the
//! maildrop (and the relay user must not be one, see below); sticky, so a
//! member cannot remove or rename another's drop once `sendmail` said it
//! was taken; setgid, so every drop belongs to the drop group; group read,
//! so `sendmail` can fsync the directory (an entry is durable only then).
//! A drop is 0604: its group (the drop group) has no access, so members
//! cannot read each other's mail, while the relay user, outside that group,
//! reads it through the "other" bit; others cannot reach the directory at
//! all. The store, the key and the secrets stay 0600 and the relay's.
//!
//! Identity: the drop's owner, which the kernel sets to the writer's uid and
//! which an unprivileged user cannot change, is who sent it
//! ([`local::LocalSenders`] maps it; nothing in the file is believed). A
//! symlink, a FIFO, a file with several hard links (a link to someone
//! else's file) or one the relay cannot read is refused without being read.
//!
//! Durability: `sendmail` exits 0 only after the file and the directory
//! entry are fsynced ([`write::write_drop`]); the pickup renames a drop into
//! `claimed/ID` and fsyncs before queueing it under that same id
//! ([`crate::store::Store::enqueue_as`]), and removes it only after the
//! commit. A claim left by a crash is looked up in the store by its id:
//! found means committed (the file is removed), not found means it is
//! queued now. So a crash at any point neither loses nor duplicates a drop.

pub mod format;
pub mod local;
pub mod pickup;
pub mod write;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A drop file's mode: see the module header.
pub const DROP_FILE_MODE: u32 = 0o604;
/// The maildrop's mode: see the module header.
pub const MAILDROP_MODE: u32 = 0o3770;
/// The drop group the README's setup steps create.
pub const DEFAULT_GROUP: &str = "oxirelay-drop";

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("{path} {problem}; as root: {fix}")]
    Unsafe {
        path: PathBuf,
        problem: String,
        fix: String,
    },
    #[error("cannot use {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The paths of one spool.
#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
}

impl Spool {
    pub fn new(root: &Path) -> Self {
        Spool {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn maildrop(&self) -> PathBuf {
        self.root.join("maildrop")
    }

    pub fn claimed(&self) -> PathBuf {
        self.root.join("claimed")
    }

    pub fn rejected(&self) -> PathBuf {
        self.root.join("rejected")
    }

    pub fn lock_file(&self) -> PathBuf {
        self.root.join("pickup.lock")
    }

    /// What the operator runs to lay the spool out for `relay_user`.
    pub fn setup_commands(&self, relay_user: &str, group: &str) -> String {
        format!(
            "groupadd --system {group}; install -d -m 0755 -o {relay_user} {root}; install -d -m 3770 -o {relay_user} -g {group} {maildrop}",
            root = self.root.display(),
            maildrop = self.maildrop().display(),
        )
    }

    /// Checks the spool before `serve` picks up from it, and makes the
    /// relay's own directories. Refuses a layout that would let a local
    /// user read, remove or forge another's drop, or that the relay could
    /// not read; each refusal names the command that fixes it.
    pub fn prepare_for_pickup(&self) -> Result<(), SpoolError> {
        let me = nix::unistd::geteuid();
        let relay_user = nix::unistd::User::from_uid(me)
            .ok()
            .flatten()
            .map_or_else(|| me.as_raw().to_string(), |u| u.name);
        let maildrop = self.maildrop();
        let group = std::fs::symlink_metadata(&maildrop)
            .ok()
            .and_then(|m| {
                nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(m.gid()))
                    .ok()
                    .flatten()
            })
            .map_or_else(|| DEFAULT_GROUP.to_string(), |g| g.name);
        let setup = self.setup_commands(&relay_user, &group);
        let unsafe_ = |path: &Path, problem: String, fix: String| SpoolError::Unsafe {
            path: path.to_path_buf(),
            problem,
            fix,
        };
        let stat = |path: &Path| match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => Ok(meta),
            Ok(_) => Err(unsafe_(path, "is not a directory".into(), setup.clone())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(unsafe_(
                path,
                "does not exist (the spool of [sendmail])".into(),
                setup.clone(),
            )),
            Err(source) => Err(SpoolError::Io {
                path: path.to_path_buf(),
                source,
            }),
        };

        let root = stat(&self.root)?;
        let owned = |path: &Path, meta: &std::fs::Metadata| {
            if meta.uid() == me.as_raw() {
                Ok(())
            } else {
                Err(unsafe_(
                    path,
                    format!(
                        "belongs to uid {}, not to the relay's user {relay_user}",
                        meta.uid()
                    ),
                    format!("chown {relay_user} {}", path.display()),
                ))
            }
        };
        owned(&self.root, &root)?;
        if root.mode() & 0o022 != 0 {
            return Err(unsafe_(
                &self.root,
                format!(
                    "is writable by group or others (mode {:o}), who could replace the maildrop",
                    root.mode() & 0o7777
                ),
                format!("chmod 0755 {}", self.root.display()),
            ));
        }

        let drop = stat(&maildrop)?;
        owned(&maildrop, &drop)?;
        let mode = drop.mode() & 0o7777;
        let chmod = format!("chmod 3770 {}", maildrop.display());
        for (wrong, problem) in [
            (
                mode & 0o007 != 0,
                "lets every local user in; only members of its group may drop",
            ),
            (
                mode & 0o1000 == 0,
                "is not sticky, so one member could remove or replace another's drop",
            ),
            (
                mode & 0o2000 == 0,
                "is not setgid, so drops would keep their writer's group and other members could read them",
            ),
            (
                mode & 0o070 != 0o070,
                "does not give its group rwx: sendmail could not write or fsync drops",
            ),
        ] {
            if wrong {
                return Err(unsafe_(
                    &maildrop,
                    format!("(mode {mode:o}) {problem}"),
                    chmod.clone(),
                ));
            }
        }
        if me.as_raw() != 0 && in_group(drop.gid()) {
            return Err(unsafe_(
                &maildrop,
                format!(
                    "has the group {group}, and the relay's user {relay_user} is in it: drops are 0604 (no access for the group), so the relay could not read them"
                ),
                format!("gpasswd -d {relay_user} {group}, then restart the relay"),
            ));
        }

        for path in [self.claimed(), self.rejected()] {
            match std::fs::symlink_metadata(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::create_dir(&path).map_err(|source| SpoolError::Io {
                        path: path.clone(),
                        source,
                    })?;
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
                        .map_err(|source| SpoolError::Io {
                            path: path.clone(),
                            source,
                        })?;
                }
                _ => {
                    let meta = stat(&path)?;
                    owned(&path, &meta)?;
                    if meta.mode() & 0o077 != 0 {
                        return Err(unsafe_(
                            &path,
                            format!(
                                "is open to group or others (mode {:o}); it holds other users' mail",
                                meta.mode() & 0o7777
                            ),
                            format!("chmod 0700 {}", path.display()),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether this process has `gid` as its group or a supplementary group.
fn in_group(gid: u32) -> bool {
    let gid = nix::unistd::Gid::from_raw(gid);
    nix::unistd::getegid() == gid
        || nix::unistd::getgroups().is_ok_and(|groups| groups.contains(&gid))
}

/// Opens a directory to fsync it: the last step that makes a new, renamed
/// or removed entry in it durable.
pub(crate) fn sync_dir(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spool_must_keep_drops_apart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::new(&dir.path().join("spool"));
        let refusal = spool.prepare_for_pickup().expect_err("missing");
        assert!(refusal.to_string().contains("does not exist"), "{refusal}");
        assert!(
            refusal.to_string().contains("install -d -m 3770"),
            "{refusal}"
        );
        std::fs::create_dir(spool.root()).expect("mkdir");
        std::fs::set_permissions(spool.root(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        std::fs::create_dir(spool.maildrop()).expect("mkdir");
        let chmod = |mode| {
            std::fs::set_permissions(spool.maildrop(), std::fs::Permissions::from_mode(mode))
                .expect("chmod")
        };
        for (mode, says) in [
            (0o3777, "lets every local user in"),
            (0o0770, "is not sticky"),
            (0o1770, "is not setgid"),
            (0o3730, "does not give its group rwx"),
        ] {
            chmod(mode);
            let refusal = spool.prepare_for_pickup().expect_err(says).to_string();
            assert!(refusal.contains(says), "{mode:o}: {refusal}");
            assert!(refusal.contains("chmod 3770"), "{refusal}");
        }
        chmod(MAILDROP_MODE);
        match spool.prepare_for_pickup() {
            Ok(()) => {
                for made in [spool.claimed(), spool.rejected()] {
                    let mode = std::fs::metadata(&made).expect("made").mode() & 0o7777;
                    assert_eq!(mode, 0o700, "{}", made.display());
                }
            }
            // Not root: the maildrop has this user's own group, which is
            // the relay's here, so the relay could not read the drops.
            Err(refusal) => {
                assert!(nix::unistd::geteuid().as_raw() != 0, "{refusal}");
                assert!(
                    refusal.to_string().contains("could not read them"),
                    "{refusal}"
                );
            }
        }
    }
}
