//! `serve`'s side: takes the drops of `oxirelay sendmail` into the queue.
//! Each round claims the waiting drops (rename into `claimed/ID`, then
//! fsync), reads each claim without following links, learns who wrote it
//! from its owner, and hands it to [`Acceptance::accept`] like any
//! submission; the claim is removed only after the commit. A refused drop
//! goes to `rejected/ID` with `ID.rejected` saying why (no bounce can reach
//! a local user who has no mailbox here), is logged and recorded as a
//! `sendmail.rejected` event. Rounds run every [`POLL`], and at once again
//! while drops keep coming; only one relay per spool picks up (a lock).

use super::format::{self, MAX_ENVELOPE_BYTES};
use super::local::{LocalSenders, SystemUsers, UserDatabase};
use super::{Spool, SpoolError, sync_dir};
use crate::config::SendmailConfig;
use crate::store::{Event, MessageId};
use crate::submit::accept::{AcceptError, Acceptance, Submission};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, watch};

/// How long a new drop may wait while the relay runs: `sendmail` has no
/// way to wake `serve`, and listing a directory that is nearly always empty
/// costs nothing, so it is looked at every second.
pub const POLL: Duration = Duration::from_secs(1);
/// Drops claimed per round; a full round is followed by another at once.
pub const BATCH: usize = 64;
/// Claims read and queued at once: enough to share commits (group
/// commit), few enough that large messages do not pile up in memory.
const PARALLEL: usize = 8;
/// A temporary drop (`.NAME.tmp`) this old was left by a `sendmail` that
/// died while writing, which takes seconds at most; its caller was told it
/// failed, so it is removed.
const STALE_TEMPORARY: Duration = Duration::from_secs(3600);

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RoundReport {
    pub queued: usize,
    pub rejected: usize,
    /// Left claimed for the next round (the store or the user database
    /// failed for now).
    pub kept: usize,
    /// Drops claimed this round.
    pub claimed: usize,
}

enum Outcome {
    Queued,
    Rejected,
    Kept,
}

/// Why a claim is refused, and what to do with the file.
struct Refusal {
    reason: String,
    owner: Option<u32>,
    /// Remove it rather than keep it in `rejected/`: a link, which must not
    /// keep its target (a key, someone's file) alive in the spool.
    discard: bool,
}

impl Refusal {
    fn keep(reason: impl Into<String>, owner: Option<u32>) -> Self {
        Refusal {
            reason: reason.into(),
            owner,
            discard: false,
        }
    }
}

/// A claim read: its owner and bytes.
struct Claim {
    owner: u32,
    bytes: Vec<u8>,
}

struct Inner {
    spool: Spool,
    senders: LocalSenders,
    users: Arc<dyn UserDatabase>,
    acceptance: Acceptance,
    hostname: String,
    slots: Semaphore,
}

pub struct Pickup {
    inner: Arc<Inner>,
    /// Held while this relay is the spool's pickup.
    lock: Option<std::fs::File>,
    said_locked_out: bool,
}

impl Pickup {
    /// Checks the spool ([`Spool::prepare_for_pickup`]) and readies the
    /// pickup; the system's user database says who owns a drop.
    pub fn new(
        sendmail: &SendmailConfig,
        config_path: &Path,
        acceptance: Acceptance,
    ) -> Result<Pickup, SpoolError> {
        let spool = Spool::new(&sendmail.spool);
        spool.prepare_for_pickup()?;
        Ok(Self::with_users(
            spool,
            LocalSenders::new(sendmail, config_path),
            Arc::new(SystemUsers),
            acceptance,
        ))
    }

    /// The same on a spool already prepared, with a given user database.
    pub fn with_users(
        spool: Spool,
        senders: LocalSenders,
        users: Arc<dyn UserDatabase>,
        acceptance: Acceptance,
    ) -> Pickup {
        Pickup {
            inner: Arc::new(Inner {
                spool,
                senders,
                users,
                acceptance,
                hostname: crate::instance::host_name(),
                slots: Semaphore::new(PARALLEL),
            }),
            lock: None,
            said_locked_out: false,
        }
    }

    pub fn maildrop(&self) -> PathBuf {
        self.inner.spool.maildrop()
    }

    /// Rounds until `stop` turns true; the round under way finishes.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        loop {
            let report = self.round().await;
            if report.claimed >= BATCH && !*stop.borrow() {
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// One pass: claims what waits in the maildrop, then queues or refuses
    /// every claim (those left by a crash or a failed round included).
    pub async fn round(&mut self) -> RoundReport {
        if !self.hold_lock() {
            return RoundReport::default();
        }
        let inner = self.inner.clone();
        let listed = tokio::task::spawn_blocking(move || inner.claim_waiting()).await;
        let (fresh, all) = match listed {
            Ok(Ok(claims)) => claims,
            Ok(Err(error)) => {
                tracing::error!(%error, spool = %self.inner.spool.root().display(), "cannot pick up sendmail drops now");
                return RoundReport::default();
            }
            Err(error) => {
                tracing::error!(%error, "the sendmail pickup task failed");
                return RoundReport::default();
            }
        };
        let mut report = RoundReport {
            claimed: fresh.len(),
            ..RoundReport::default()
        };
        let mut tasks = tokio::task::JoinSet::new();
        for name in all {
            let recovering = !fresh.contains(&name);
            tasks.spawn(self.inner.clone().process(name, recovering));
        }
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(Outcome::Queued) => report.queued += 1,
                Ok(Outcome::Rejected) => report.rejected += 1,
                Ok(Outcome::Kept) | Err(_) => report.kept += 1,
            }
        }
        report
    }

    /// Takes the spool's lock if it is free; another relay on the same
    /// spool keeps it for as long as it runs (the kernel frees it when that
    /// process ends, however it ends).
    fn hold_lock(&mut self) -> bool {
        if self.lock.is_some() {
            return true;
        }
        let path = self.inner.spool.lock_file();
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
        {
            Ok(file) => file,
            Err(error) => {
                tracing::error!(%error, path = %path.display(), "cannot open the pickup lock");
                return false;
            }
        };
        match file.try_lock() {
            Ok(()) => {
                self.lock = Some(file);
                true
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                if !self.said_locked_out {
                    tracing::info!(spool = %self.inner.spool.root().display(), "another relay picks up the sendmail drops of this spool; this one will if that one stops");
                    self.said_locked_out = true;
                }
                false
            }
            Err(std::fs::TryLockError::Error(error)) => {
                tracing::error!(%error, path = %path.display(), "cannot lock the pickup lock");
                false
            }
        }
    }
}

impl Inner {
    /// Renames the waiting drops into `claimed/`, then fsyncs both
    /// directories, so that no claim can go back to the maildrop after its
    /// message is committed (it would be queued twice). Returns the new
    /// claims and every claim.
    fn claim_waiting(&self) -> std::io::Result<(Vec<String>, Vec<String>)> {
        let maildrop = self.spool.maildrop();
        let claimed = self.spool.claimed();
        let mut waiting = Vec::new();
        for entry in std::fs::read_dir(&maildrop)? {
            let entry = entry?;
            let name = entry.file_name();
            if name.as_encoded_bytes().starts_with(b".") {
                self.remove_if_stale(&entry.path());
                continue;
            }
            waiting.push(name);
        }
        waiting.sort();
        waiting.truncate(BATCH);
        let mut fresh = Vec::with_capacity(waiting.len());
        for name in waiting {
            let id = MessageId::generate().0;
            match std::fs::rename(maildrop.join(&name), claimed.join(&id)) {
                Ok(()) => {
                    tracing::debug!(drop = ?name, claim = %id, "sendmail drop claimed");
                    fresh.push(id);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    tracing::warn!(%error, drop = ?name, "cannot claim a sendmail drop");
                }
            }
        }
        let mut all = Vec::new();
        for entry in std::fs::read_dir(&claimed)? {
            all.push(entry?.file_name().to_string_lossy().into_owned());
        }
        if !all.is_empty() {
            sync_dir(&claimed)?;
            sync_dir(&maildrop)?;
        }
        all.sort();
        Ok((fresh, all))
    }

    fn remove_if_stale(&self, path: &Path) {
        let stale = std::fs::symlink_metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|age| age > STALE_TEMPORARY);
        if stale && std::fs::remove_file(path).is_ok() {
            tracing::info!(path = %path.display(), "removed a drop left half-written by a sendmail that died");
        }
    }

    async fn process(self: Arc<Self>, name: String, recovering: bool) -> Outcome {
        let Ok(_slot) = self.slots.acquire().await else {
            return Outcome::Kept;
        };
        let id = MessageId(name.clone());
        if recovering {
            // Committed before a crash (or before a reply that never came)?
            match self.acceptance.store().message(&id).await {
                Ok(Some(_)) => {
                    let _ = std::fs::remove_file(self.spool.claimed().join(&name));
                    tracing::info!(%id, "sendmail drop was queued before the relay stopped; claim removed");
                    return Outcome::Queued;
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%error, %id, "cannot tell whether a claimed sendmail drop is queued; trying again later");
                    return Outcome::Kept;
                }
            }
        }
        let this = self.clone();
        let read = tokio::task::spawn_blocking(move || this.read_and_identify(&name)).await;
        let (claim, user, submitter) = match read {
            Ok(Ok(read)) => read,
            Ok(Err(Some(refusal))) => return self.reject(&id, refusal, None).await,
            Ok(Err(None)) | Err(_) => return Outcome::Kept,
        };
        let drop = match format::parse(&claim.bytes) {
            Ok(drop) => drop,
            Err(error) => {
                return self
                    .reject(
                        &id,
                        Refusal::keep(error.to_string(), Some(claim.owner)),
                        Some(&submitter.account),
                    )
                    .await;
            }
        };
        let trace = self.trace(claim.owner, &id);
        let accepted = self
            .acceptance
            .accept(Submission {
                submitter: &submitter,
                mail_from: &drop.mail_from,
                recipients: &drop.recipients,
                trace: &trace,
                message: drop.message,
                id: Some(id.clone()),
            })
            .await;
        match accepted {
            Ok(_) => {
                if let Err(error) = std::fs::remove_file(self.spool.claimed().join(&id.0)) {
                    // The next round finds it queued and removes it then.
                    tracing::warn!(%error, %id, "cannot remove a queued sendmail drop");
                }
                tracing::info!(%id, user = %user.name, uid = user.uid, "sendmail drop picked up");
                Outcome::Queued
            }
            Err(error @ AcceptError::Store(_)) => {
                tracing::warn!(%error, %id, "sendmail drop not queued now; trying again");
                Outcome::Kept
            }
            Err(AcceptError::Refused(refused)) => {
                self.reject(
                    &id,
                    Refusal::keep(refused.to_string(), Some(claim.owner)),
                    Some(&submitter.account),
                )
                .await
            }
        }
    }

    /// Reads a claim and finds who wrote it. `Err(None)`: leave it for the
    /// next round.
    #[allow(clippy::type_complexity)]
    fn read_and_identify(
        &self,
        name: &str,
    ) -> Result<(Claim, super::local::LocalUser, crate::users::SubmissionUser), Option<Refusal>>
    {
        if !MessageId::is_well_formed(name) {
            return Err(Some(Refusal::keep(
                "it is not a claim the pickup made (a file put into claimed/ by hand?)",
                None,
            )));
        }
        let limit = (self.acceptance.rules().max_message_size + MAX_ENVELOPE_BYTES) as u64;
        let claim = read_claim(&self.spool.claimed().join(name), limit)?;
        match self.senders.submitter_for(claim.owner, self.users.as_ref()) {
            Ok((user, submitter)) => Ok((claim, user, submitter)),
            Err(refusal) if refusal.is_transient() => {
                tracing::warn!(%refusal, "sendmail drop kept for the next round");
                Err(None)
            }
            Err(refusal) => Err(Some(Refusal::keep(refusal.to_string(), Some(claim.owner)))),
        }
    }

    /// The trace header: which local user, as Postfix writes it.
    fn trace(&self, uid: u32, id: &MessageId) -> String {
        format!(
            "Received: by {host} (oxirelay sendmail, from userid {uid})\r\n\tid {id};\r\n\t{date}\r\n",
            host = self.hostname,
            date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S +0000"),
        )
    }

    /// Moves a refused claim aside with the reason beside it (or removes a
    /// link), logs and records it.
    async fn reject(&self, id: &MessageId, refusal: Refusal, account: Option<&str>) -> Outcome {
        let claimed = self.spool.claimed().join(&id.0);
        let rejected = self.spool.rejected().join(&id.0);
        let owner = refusal
            .owner
            .map(|uid| {
                let name = self
                    .users
                    .user(uid)
                    .ok()
                    .flatten()
                    .map(|u| format!(" ({})", u.name))
                    .unwrap_or_default();
                format!("uid {uid}{name}")
            })
            .unwrap_or_else(|| "unknown".to_string());
        let moved = if refusal.discard {
            std::fs::remove_file(&claimed)
        } else {
            std::fs::rename(&claimed, &rejected)
        };
        if let Err(error) = moved {
            tracing::error!(%error, %id, "cannot move a refused sendmail drop aside; it stays in claimed/");
            return Outcome::Kept;
        }
        let note = format!(
            "refused: {}\nowner: {owner}\nwhen: {}\nthe drop: {}\n",
            refusal.reason,
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            if refusal.discard {
                "removed (a link is not kept)".to_string()
            } else {
                rejected.display().to_string()
            },
        );
        let note_path = self.spool.rejected().join(format!("{}.rejected", id.0));
        if let Err(error) = std::fs::write(&note_path, note) {
            tracing::error!(%error, path = %note_path.display(), "cannot write why a sendmail drop was refused");
        }
        tracing::warn!(%id, %owner, reason = %refusal.reason, "sendmail drop refused; see {}", note_path.display());
        let event = Event {
            at: crate::clock::now_unix(),
            kind: "sendmail.rejected".into(),
            account: account.map(str::to_string),
            message_id: None,
            detail: format!("drop {id} of {owner}: {}", refusal.reason),
        };
        if let Err(error) = self.acceptance.store().record_event(&event).await {
            tracing::error!(%error, "cannot record an event");
        }
        Outcome::Rejected
    }
}

/// Opens a claim without following a link and without blocking on a FIFO,
/// and reads it if it is one regular file of at most `limit` bytes. Its
/// owner comes from the open file, not from its name.
fn read_claim(path: &Path, limit: u64) -> Result<Claim, Option<Refusal>> {
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let owner_of = |path: &Path| std::fs::symlink_metadata(path).ok().map(|m| m.uid());
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Err(Some(Refusal {
                reason: "it is a symbolic link, not a message".into(),
                owner: owner_of(path),
                discard: true,
            }));
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(Some(Refusal::keep(
                format!(
                    "the relay cannot read it: a drop must be readable by others (mode {:o}, as oxirelay sendmail writes it)",
                    super::DROP_FILE_MODE
                ),
                owner_of(path),
            )));
        }
        Err(error) => {
            tracing::warn!(%error, path = %path.display(), "cannot open a claimed sendmail drop; trying again later");
            return Err(None);
        }
    };
    let meta = file.metadata().map_err(|_| None)?;
    let owner = Some(meta.uid());
    if !meta.is_file() {
        return Err(Some(Refusal::keep("it is not a regular file", owner)));
    }
    if meta.nlink() != 1 {
        return Err(Some(Refusal {
            reason: format!(
                "it has {} hard links; a drop has one (a link to another file is not a message)",
                meta.nlink()
            ),
            owner,
            discard: true,
        }));
    }
    if meta.len() > limit {
        return Err(Some(Refusal::keep(
            format!(
                "it is {} bytes, more than a message may be ({limit} with its envelope)",
                meta.len()
            ),
            owner,
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // Bounded: the file may grow after the check above.
    if let Err(error) = (&mut file).take(limit + 1).read_to_end(&mut bytes) {
        tracing::warn!(%error, path = %path.display(), "cannot read a claimed sendmail drop; trying again later");
        return Err(None);
    }
    if bytes.len() as u64 > limit {
        return Err(Some(Refusal::keep(
            "it grew past the size limit while it was read",
            owner,
        )));
    }
    Ok(Claim {
        owner: meta.uid(),
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maildrop::local::LocalUser;
    use crate::maildrop::local::tests::Table;
    use crate::store::Store;
    use crate::submit::accept::AcceptRules;
    use std::os::unix::fs::PermissionsExt;

    struct Fixture {
        dir: tempfile::TempDir,
        spool: Spool,
        store: Arc<dyn Store>,
        pickup: Pickup,
    }

    const FROM: &str = "cron@example.com";

    /// A spool and store in a temp dir; the user running the test is
    /// "alice", who may send as cron@example.com.
    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::new(&dir.path().join("spool"));
        for path in [
            spool.root().to_path_buf(),
            spool.maildrop(),
            spool.claimed(),
            spool.rejected(),
        ] {
            std::fs::create_dir(&path).expect("mkdir");
        }
        std::fs::set_permissions(spool.maildrop(), std::fs::Permissions::from_mode(0o3770))
            .expect("chmod");
        let store = crate::store::open(&format!("sqlite://{}", dir.path().join("q.db").display()))
            .await
            .expect("store");
        let me = nix::unistd::geteuid().as_raw();
        let users = Table {
            users: vec![LocalUser {
                uid: me,
                name: "alice".into(),
                groups: vec![],
            }],
            groups: vec![],
        };
        let config = SendmailConfig {
            spool: spool.root().to_path_buf(),
            locals: vec![crate::config::LocalSenderConfig {
                name: "cron".into(),
                users: vec!["alice".into()],
                groups: vec![],
                account: "office".into(),
                allowed_from: vec![FROM.into()],
                check_header_from: true,
            }],
        };
        let rules = AcceptRules::from_config(
            &crate::config::Config::parse("", Path::new("/x.toml")).expect("empty config"),
            4096,
        );
        let acceptance =
            Acceptance::new(rules, store.clone(), Arc::new(tokio::sync::Notify::new()));
        let pickup = Pickup::with_users(
            spool.clone(),
            LocalSenders::new(&config, Path::new("/etc/oxirelay/oxirelay.toml")),
            Arc::new(users),
            acceptance,
        );
        Fixture {
            dir,
            spool,
            store,
            pickup,
        }
    }

    fn drop_bytes(from: &str, message: &str) -> Vec<u8> {
        format::encode(from, &["ops@example.net".to_string()], message.as_bytes())
    }

    fn names(path: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(path)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// The `.rejected` notes, read.
    fn notes(spool: &Spool) -> Vec<String> {
        names(&spool.rejected())
            .iter()
            .filter(|n| n.ends_with(".rejected"))
            .map(|n| std::fs::read_to_string(spool.rejected().join(n)).expect("note"))
            .collect()
    }

    async fn queue(store: &Arc<dyn Store>) -> Vec<crate::store::QueuedMessage> {
        store.messages(None, 100).await.expect("messages")
    }

    #[tokio::test]
    async fn a_drop_is_queued_under_its_claim_and_removed() {
        let mut f = fixture().await;
        std::fs::write(
            f.spool.maildrop().join("1.aa"),
            drop_bytes(FROM, "Subject: hi\r\n\r\nbody\r\n"),
        )
        .expect("drop");
        // A half-written drop is not taken.
        std::fs::write(f.spool.maildrop().join(".2.bb.tmp"), b"oxirelay-drop 1\n").expect("tmp");
        let report = f.pickup.round().await;
        assert_eq!((report.claimed, report.queued, report.rejected), (1, 1, 0));
        assert_eq!(names(&f.spool.maildrop()), [".2.bb.tmp"]);
        assert!(names(&f.spool.claimed()).is_empty());
        let queued = queue(&f.store).await;
        assert_eq!(queued.len(), 1);
        let message = &queued[0];
        assert_eq!(message.submitted_by, "local:alice");
        assert_eq!(message.account, "office");
        assert_eq!(message.mail_from, FROM);
        let (_, body) = f
            .store
            .message(&message.id)
            .await
            .expect("read")
            .expect("there");
        let body = String::from_utf8(body).expect("utf8");
        let uid = nix::unistd::geteuid();
        assert!(
            body.starts_with(&format!(
                "Received: by {} (oxirelay sendmail, from userid {uid})\r\n\tid {};",
                crate::instance::host_name(),
                message.id
            )),
            "{body}"
        );
        assert!(body.ends_with("\r\nSubject: hi\r\n\r\nbody\r\n"), "{body}");
        assert_eq!(f.pickup.round().await, RoundReport::default());
    }

    #[tokio::test]
    async fn a_claim_left_by_a_crash_is_queued_once() {
        let mut f = fixture().await;
        let bytes = drop_bytes(FROM, "Subject: committed\r\n\r\nb\r\n");
        // Committed before the crash: the claim is only removed.
        let committed = MessageId::generate();
        f.store
            .enqueue_as(
                committed.clone(),
                crate::store::NewMessage {
                    account: "office".into(),
                    mail_from: FROM.into(),
                    recipients: vec!["ops@example.net".into()],
                    body: b"Subject: committed\r\n\r\nb\r\n".to_vec(),
                    submitted_by: "local:alice".into(),
                },
            )
            .await
            .expect("enqueue_as");
        std::fs::write(f.spool.claimed().join(&committed.0), &bytes).expect("claim");
        // Claimed but not committed: queued now, under the claim's id.
        let pending = MessageId::generate();
        std::fs::write(
            f.spool.claimed().join(&pending.0),
            drop_bytes(FROM, "Subject: pending\r\n\r\nb\r\n"),
        )
        .expect("claim");
        let report = f.pickup.round().await;
        assert_eq!((report.queued, report.rejected, report.kept), (2, 0, 0));
        assert!(names(&f.spool.claimed()).is_empty());
        let mut ids: Vec<MessageId> = queue(&f.store).await.into_iter().map(|m| m.id).collect();
        ids.sort();
        let mut expected = vec![committed, pending];
        expected.sort();
        assert_eq!(ids, expected, "each once");
    }

    #[tokio::test]
    async fn refused_drops_are_set_aside_with_the_reason() {
        let mut f = fixture().await;
        let long = format!("Subject: long\r\n\r\n{}\r\n", "x".repeat(999));
        let cases: [(&str, Vec<u8>, &str); 4] = [
            (
                "1.sender",
                drop_bytes("ceo@example.com", "Subject: x\r\n\r\nb\r\n"),
                "local:alice may not send as <ceo@example.com>",
            ),
            (
                "2.long",
                drop_bytes(FROM, &long),
                "line 3 is longer than 998 octets",
            ),
            (
                "3.nul",
                drop_bytes(FROM, "Subject: x\r\n\r\na\0b\r\n"),
                "line 3 holds a NUL byte",
            ),
            (
                "4.junk",
                b"Subject: not a drop\n\nhi\n".to_vec(),
                "was not written by oxirelay sendmail",
            ),
        ];
        for (name, bytes, _) in &cases {
            std::fs::write(f.spool.maildrop().join(name), bytes).expect("drop");
        }
        let report = f.pickup.round().await;
        assert_eq!((report.queued, report.rejected), (0, 4));
        assert!(queue(&f.store).await.is_empty());
        let rejected = names(&f.spool.rejected());
        assert_eq!(rejected.len(), 8, "{rejected:?}");
        let notes = notes(&f.spool);
        for (_, _, reason) in &cases {
            assert!(
                notes.iter().any(|n| n.contains(reason)),
                "{reason}: {notes:?}"
            );
        }
        assert!(
            notes
                .iter()
                .all(|n| n.contains("owner: uid ") && n.contains("(alice)")),
            "{notes:?}"
        );
        let events = f.store.events(10).await.expect("events");
        assert_eq!(
            events
                .iter()
                .filter(|e| e.kind == "sendmail.rejected")
                .count(),
            4
        );
    }

    #[tokio::test]
    async fn links_fifos_and_unmapped_owners_are_not_read() {
        let mut f = fixture().await;
        let secret = f.dir.path().join("master.key");
        std::fs::write(
            &secret,
            drop_bytes(FROM, "Subject: the key\r\n\r\nSECRET\r\n"),
        )
        .expect("key");
        std::os::unix::fs::symlink(&secret, f.spool.maildrop().join("1.symlink")).expect("symlink");
        std::fs::hard_link(&secret, f.spool.maildrop().join("2.hardlink")).expect("hard link");
        let fifo = std::process::Command::new("mkfifo")
            .arg(f.spool.maildrop().join("3.fifo"))
            .status()
            .is_ok_and(|s| s.success());
        let report = f.pickup.round().await;
        assert_eq!(report.queued, 0, "nothing read through a link");
        assert!(queue(&f.store).await.is_empty());
        assert!(secret.exists(), "the target is untouched");
        let text = notes(&f.spool).concat();
        assert!(text.contains("symbolic link"), "{text}");
        assert!(text.contains("2 hard links"), "{text}");
        assert!(!fifo || text.contains("not a regular file"), "{text}");
        // Links are removed, not kept beside the rejected mail.
        assert_eq!(std::fs::metadata(&secret).expect("stat").nlink(), 1);
        assert!(names(&f.spool.claimed()).is_empty());

        // An owner no [[sendmail.local]] names.
        let mut unmapped = Pickup::with_users(
            f.spool.clone(),
            LocalSenders::new(
                &SendmailConfig {
                    spool: f.spool.root().to_path_buf(),
                    locals: vec![],
                },
                Path::new("/etc/oxirelay/oxirelay.toml"),
            ),
            Arc::new(Table {
                users: vec![],
                groups: vec![],
            }),
            f.pickup.inner.acceptance.clone(),
        );
        std::fs::write(
            f.spool.maildrop().join("4.stranger"),
            drop_bytes(FROM, "S: x\r\n\r\nb\r\n"),
        )
        .expect("drop");
        drop(f.pickup);
        let report = unmapped.round().await;
        assert_eq!(report.rejected, 1);
        let text = notes(&f.spool).concat();
        assert!(text.contains("is not a user of this system"), "{text}");
    }

    #[tokio::test]
    async fn one_pickup_per_spool() {
        let mut f = fixture().await;
        assert!(f.pickup.hold_lock());
        let mut second = Pickup::with_users(
            f.spool.clone(),
            f.pickup.inner.senders.clone(),
            Arc::new(crate::maildrop::local::tests::table()),
            f.pickup.inner.acceptance.clone(),
        );
        std::fs::write(
            f.spool.maildrop().join("1.a"),
            drop_bytes(FROM, "S: x\r\n\r\nb\r\n"),
        )
        .expect("drop");
        assert_eq!(second.round().await, RoundReport::default());
        assert_eq!(names(&f.spool.maildrop()), ["1.a"]);
        drop(f.pickup);
        assert_eq!(
            second.round().await.claimed,
            1,
            "the lock is free once the first is gone"
        );
    }
}
