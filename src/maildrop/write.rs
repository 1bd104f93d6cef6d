//! `sendmail`'s side: one drop, written so that it is whole and durable
//! before `sendmail` exits 0. The file is written under a dot-name (the
//! pickup ignores those), fsynced, made 0604, renamed to its final name and
//! the directory fsynced. Runs as the submitting user, with no key.

use super::{DROP_FILE_MODE, sync_dir};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DropError {
    #[error(
        "the maildrop {path} {problem}, so the message was not taken; ask the relay's administrator to set it up (README: \"sendmail for local users\")"
    )]
    NotSetUp { path: PathBuf, problem: String },
    #[error(
        "this user may not write to the maildrop {path}: it must be a member of the group {group} (as root: usermod -aG {group} USER, then log in again)"
    )]
    PermissionDenied { path: PathBuf, group: String },
    #[error("cannot write the message to {path}: {source}; nothing was taken, try again")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl DropError {
    /// The sysexits code: a setup to fix, a permission to grant, or a
    /// failure (a full disk) that may pass.
    pub fn exit_code(&self) -> u8 {
        match self {
            DropError::NotSetUp { .. } => crate::sendmail::EX_CONFIG,
            DropError::PermissionDenied { .. } => crate::sendmail::EX_NOPERM,
            DropError::Io { .. } => crate::sendmail::EX_TEMPFAIL,
        }
    }
}

/// Writes `contents` (from [`super::format::encode`]) as a new drop in
/// `maildrop`; returns its name once it is durable.
pub fn write_drop(maildrop: &Path, contents: &[u8]) -> Result<String, DropError> {
    let meta = match std::fs::metadata(maildrop) {
        Ok(meta) if meta.is_dir() => meta,
        Ok(_) => {
            return Err(DropError::NotSetUp {
                path: maildrop.to_path_buf(),
                problem: "is not a directory".into(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(DropError::NotSetUp {
                path: maildrop.to_path_buf(),
                problem: "does not exist".into(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(permission_denied(maildrop, None));
        }
        Err(source) => {
            return Err(DropError::Io {
                path: maildrop.to_path_buf(),
                source,
            });
        }
    };
    // Without the sticky bit any member could remove the drop after this
    // process has said it was taken.
    if meta.mode() & 0o1000 == 0 {
        return Err(DropError::NotSetUp {
            path: maildrop.to_path_buf(),
            problem: format!("is not sticky (mode {:o})", meta.mode() & 0o7777),
        });
    }
    let name = drop_name();
    let temporary = maildrop.join(format!(".{name}.tmp"));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source: std::io::Error| DropError::Io { path, source }
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&temporary)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => permission_denied(maildrop, Some(meta.gid())),
            _ => io(&temporary)(e),
        })?;
    let written = (|| {
        file.write_all(contents)?;
        file.set_permissions(std::fs::Permissions::from_mode(DROP_FILE_MODE))?;
        file.sync_all()
    })();
    let path = maildrop.join(&name);
    let placed = written.and_then(|()| std::fs::rename(&temporary, &path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&temporary);
        return Err(io(&temporary)(e));
    }
    if let Err(e) = sync_dir(maildrop) {
        // Not durable, so not taken: remove it, so that a retry by the
        // caller does not send the message twice.
        let _ = std::fs::remove_file(&path);
        return Err(io(maildrop)(e));
    }
    Ok(name)
}

fn permission_denied(maildrop: &Path, gid: Option<u32>) -> DropError {
    let group = gid
        .and_then(|gid| {
            nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
                .ok()
                .flatten()
        })
        .map_or_else(|| super::DEFAULT_GROUP.to_string(), |g| g.name);
    DropError::PermissionDenied {
        path: maildrop.to_path_buf(),
        group,
    }
}

/// `SECONDS.RANDOM`: names sort by time, so drops are picked up in order,
/// and 128 random bits keep two writers apart.
fn drop_name() -> String {
    use rand::Rng;
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    let random = hex::encode(bytes);
    format!("{}.{random}", crate::clock::now_unix())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drop_is_whole_0604_and_named_by_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let maildrop = dir.path().join("maildrop");
        std::fs::create_dir(&maildrop).expect("mkdir");
        std::fs::set_permissions(&maildrop, std::fs::Permissions::from_mode(0o3770))
            .expect("chmod");
        let name = write_drop(&maildrop, b"contents").expect("dropped");
        assert!(
            name.split_once('.').is_some_and(|(secs, random)| {
                secs.parse::<i64>().is_ok() && random.len() == 32
            })
        );
        let path = maildrop.join(&name);
        assert_eq!(std::fs::read(&path).expect("read"), b"contents");
        let mode = std::fs::metadata(&path).expect("stat").mode() & 0o7777;
        assert_eq!(mode, DROP_FILE_MODE);
        let entries: Vec<_> = std::fs::read_dir(&maildrop).expect("list").collect();
        assert_eq!(entries.len(), 1, "no temporary file left");
    }

    #[test]
    fn a_maildrop_that_is_missing_or_not_sticky_takes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = write_drop(&dir.path().join("nope"), b"x").expect_err("missing");
        assert!(matches!(missing, DropError::NotSetUp { .. }));
        assert_eq!(missing.exit_code(), crate::sendmail::EX_CONFIG);
        let plain = dir.path().join("plain");
        std::fs::create_dir(&plain).expect("mkdir");
        let err = write_drop(&plain, b"x").expect_err("not sticky");
        assert!(err.to_string().contains("is not sticky"), "{err}");
        assert_eq!(std::fs::read_dir(&plain).expect("list").count(), 0);
    }
}
