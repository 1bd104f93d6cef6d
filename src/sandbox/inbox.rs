//! The sandbox inbox: every message the sandbox SMTP server accepts, stored
//! byte-exact in a Maildir (`tmp/`, `new/`, `cur/`), with a JSON sidecar per
//! message in `meta/` saying who sent it and how they authenticated (the
//! token's fingerprint, never the token). Tests wait on it with
//! [`Inbox::wait_for_count`], which is woken by each delivery.
//!
//! For benchmarks only, [`Inbox::count_only`] stores nothing and only
//! counts: the sandbox as a fast sink, so that a benchmark of the relay
//! measures the relay rather than the sandbox's two fsyncs per message.
//! Nothing can be read back from it; tests that look at messages use
//! [`Inbox::open`].

use crate::secret::Fingerprint;
use crate::smtp::sasl::Mechanism;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    #[error(
        "cannot {action} {path}: {source}; check the inbox directory's permissions and free space"
    )]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the sidecar {path} is not valid inbox metadata: {source}")]
    Metadata {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("no message with id {id:?} in the inbox")]
    NotFound { id: String },
    #[error("waited {waited:?} for {wanted} message(s) but the inbox holds {found}")]
    Timeout {
        wanted: usize,
        found: usize,
        waited: Duration,
    },
    #[error("the inbox's storage task failed: {0}")]
    Task(String),
}

/// Who delivered a message and how they authenticated.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// The SASL user.
    pub user: Option<String>,
    pub mechanism: Option<Mechanism>,
    pub token_fingerprint: Option<Fingerprint>,
}

/// The sidecar of one stored message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InboxEntry {
    pub id: String,
    /// RFC 3339, UTC.
    pub received_at: String,
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub user: Option<String>,
    pub mechanism: Option<Mechanism>,
    /// `fp:` and 12 hex digits (see `Secret::fingerprint`).
    pub token_fingerprint: Option<String>,
    pub size: usize,
    pub subject: Option<String>,
    /// How it arrived: `smtp`, `graph` or `gmail_api`. Sidecars written
    /// before the HTTP APIs existed have none: they came by SMTP.
    #[serde(default = "smtp_transport")]
    pub transport: String,
}

fn smtp_transport() -> String {
    "smtp".to_string()
}

impl InboxEntry {
    fn of(
        id: String,
        now: chrono::DateTime<chrono::Utc>,
        delivery: &Delivery,
        message: &[u8],
        subject: Option<String>,
    ) -> InboxEntry {
        InboxEntry {
            id,
            received_at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            mail_from: delivery.mail_from.clone(),
            rcpt_to: delivery.rcpt_to.clone(),
            user: delivery.user.clone(),
            mechanism: delivery.mechanism,
            token_fingerprint: delivery.token_fingerprint.map(|fp| fp.to_string()),
            size: message.len(),
            subject,
            transport: smtp_transport(),
        }
    }
}

/// A Maildir inbox. Cheap to clone; clones share the arrival counter.
#[derive(Debug, Clone)]
pub struct Inbox {
    inner: Arc<InboxInner>,
}

#[derive(Debug)]
struct InboxInner {
    dir: PathBuf,
    count: watch::Sender<usize>,
    sequence: AtomicU64,
    /// Benchmarks only: count accepted messages, store nothing.
    count_only: bool,
}

impl Inbox {
    /// Opens (creating if needed) the Maildir at `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, InboxError> {
        let dir = dir.into();
        for sub in ["tmp", "new", "cur", "meta"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).map_err(|source| InboxError::Io {
                action: "create",
                path,
                source,
            })?;
        }
        let inbox = Inbox {
            inner: Arc::new(InboxInner {
                dir,
                count: watch::Sender::new(0),
                sequence: AtomicU64::new(0),
                count_only: false,
            }),
        };
        let existing = inbox.list()?.len();
        inbox.inner.count.send_replace(existing);
        Ok(inbox)
    }

    /// Benchmarks only: an inbox that counts what it is given and stores
    /// nothing (the directory is created all the same, empty). [`Inbox::list`]
    /// stays empty and [`Inbox::read`] finds nothing; [`Inbox::count`] and
    /// [`Inbox::wait_for_count`] count from zero.
    pub fn count_only(dir: impl Into<PathBuf>) -> Result<Self, InboxError> {
        let opened = Inbox::open(dir)?;
        Ok(Inbox {
            inner: Arc::new(InboxInner {
                dir: opened.inner.dir.clone(),
                count: watch::Sender::new(0),
                sequence: AtomicU64::new(0),
                count_only: true,
            }),
        })
    }

    /// Whether this inbox only counts ([`Inbox::count_only`]).
    pub fn is_count_only(&self) -> bool {
        self.inner.count_only
    }

    /// The arrival counter, for a watcher that reports it elsewhere.
    pub fn subscribe_count(&self) -> watch::Receiver<usize> {
        self.inner.count.subscribe()
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Stores a message: written to `tmp/`, fsynced, renamed into `new/`,
    /// then its sidecar the same way. Blocking; see [`Inbox::store`].
    pub fn store_blocking(
        &self,
        delivery: &Delivery,
        message: &[u8],
    ) -> Result<InboxEntry, InboxError> {
        self.store_blocking_via("smtp", delivery, message)
    }

    /// [`Inbox::store_blocking`] for a message that came through
    /// `transport` (the sandbox's HTTP APIs: `graph`, `gmail_api`).
    pub fn store_blocking_via(
        &self,
        transport: &str,
        delivery: &Delivery,
        message: &[u8],
    ) -> Result<InboxEntry, InboxError> {
        if self.inner.count_only {
            let mut entry = self.count_message(delivery, message);
            entry.transport = transport.to_string();
            return Ok(entry);
        }
        let now = chrono::Utc::now();
        let sequence = self.inner.sequence.fetch_add(1, Ordering::Relaxed);
        // Sorts by arrival; the random part keeps two processes sharing a
        // directory from colliding.
        let id = format!(
            "{:013}.{:06}.{:08x}",
            now.timestamp_millis(),
            sequence,
            rand::random::<u32>()
        );
        let mut entry = InboxEntry::of(id.clone(), now, delivery, message, subject_of(message));
        entry.transport = transport.to_string();
        let dir = &self.inner.dir;
        write_durably(
            &dir.join("tmp").join(&id),
            &dir.join("new").join(&id),
            message,
        )?;
        let sidecar = serde_json::to_vec_pretty(&entry).map_err(|source| InboxError::Metadata {
            path: dir.join("meta"),
            source,
        })?;
        write_durably(
            &dir.join("tmp").join(format!("{id}.json")),
            &dir.join("meta").join(format!("{id}.json")),
            &sidecar,
        )?;
        self.inner.count.send_modify(|count| *count += 1);
        Ok(entry)
    }

    /// A count-only inbox's "store": the entry it would have written.
    fn count_message(&self, delivery: &Delivery, message: &[u8]) -> InboxEntry {
        let now = chrono::Utc::now();
        let sequence = self.inner.sequence.fetch_add(1, Ordering::Relaxed);
        self.inner.count.send_modify(|count| *count += 1);
        let id = format!("{:013}.{sequence:06}.counted", now.timestamp_millis());
        InboxEntry::of(id, now, delivery, message, None)
    }

    /// [`Inbox::store_blocking`] on tokio's blocking pool (a count-only
    /// inbox counts in place: it has no I/O to move off the runtime).
    pub async fn store(
        &self,
        delivery: Delivery,
        message: Vec<u8>,
    ) -> Result<InboxEntry, InboxError> {
        if self.inner.count_only {
            return Ok(self.count_message(&delivery, &message));
        }
        let inbox = self.clone();
        tokio::task::spawn_blocking(move || inbox.store_blocking(&delivery, &message))
            .await
            .map_err(|error| InboxError::Task(error.to_string()))?
    }

    /// [`Inbox::store_blocking_via`] on tokio's blocking pool.
    pub async fn store_via(
        &self,
        transport: &'static str,
        delivery: Delivery,
        message: Vec<u8>,
    ) -> Result<InboxEntry, InboxError> {
        if self.inner.count_only {
            let mut entry = self.count_message(&delivery, &message);
            entry.transport = transport.to_string();
            return Ok(entry);
        }
        let inbox = self.clone();
        tokio::task::spawn_blocking(move || {
            inbox.store_blocking_via(transport, &delivery, &message)
        })
        .await
        .map_err(|error| InboxError::Task(error.to_string()))?
    }

    /// Every stored message's sidecar, oldest first.
    pub fn list(&self) -> Result<Vec<InboxEntry>, InboxError> {
        let meta = self.inner.dir.join("meta");
        let listing = fs::read_dir(&meta).map_err(|source| InboxError::Io {
            action: "list",
            path: meta.clone(),
            source,
        })?;
        let mut entries = Vec::new();
        for item in listing {
            let path = item
                .map_err(|source| InboxError::Io {
                    action: "list",
                    path: meta.clone(),
                    source,
                })?
                .path();
            if path.extension().is_none_or(|ext| ext != "json") {
                continue;
            }
            let bytes = fs::read(&path).map_err(|source| InboxError::Io {
                action: "read",
                path: path.clone(),
                source,
            })?;
            let entry: InboxEntry = serde_json::from_slice(&bytes)
                .map_err(|source| InboxError::Metadata { path, source })?;
            entries.push(entry);
        }
        entries.sort_by(|a, b| (&a.received_at, &a.id).cmp(&(&b.received_at, &b.id)));
        Ok(entries)
    }

    /// The message bytes exactly as accepted.
    pub fn read(&self, id: &str) -> Result<Vec<u8>, InboxError> {
        let not_found = || InboxError::NotFound { id: id.to_string() };
        // Ids are ours: digits, hex and dots. Anything else (a path) is
        // simply not an id.
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '.') {
            return Err(not_found());
        }
        let fresh = self.inner.dir.join("new").join(id);
        if fresh.exists() {
            return read_file(&fresh);
        }
        // A mail reader may have moved it to cur/ with ":2,flags" appended.
        let cur = self.inner.dir.join("cur");
        let listing = fs::read_dir(&cur).map_err(|source| InboxError::Io {
            action: "list",
            path: cur.clone(),
            source,
        })?;
        for item in listing.flatten() {
            let name = item.file_name();
            let name = name.to_string_lossy();
            if name == id || name.starts_with(&format!("{id}:")) {
                return read_file(&item.path());
            }
        }
        Err(not_found())
    }

    /// How many messages the inbox holds.
    pub fn count(&self) -> usize {
        *self.inner.count.borrow()
    }

    /// Waits until the inbox holds at least `wanted` messages (woken by
    /// each delivery, no polling) and returns them.
    pub async fn wait_for_count(
        &self,
        wanted: usize,
        timeout: Duration,
    ) -> Result<Vec<InboxEntry>, InboxError> {
        let mut counter = self.inner.count.subscribe();
        let reached = tokio::time::timeout(timeout, counter.wait_for(|count| *count >= wanted));
        match reached.await {
            Ok(Ok(_)) => self.list(),
            // The sender lives in `self`, so it cannot be dropped while we
            // wait; treat it like a timeout all the same.
            Ok(Err(_)) | Err(_) => Err(InboxError::Timeout {
                wanted,
                found: self.count(),
                waited: timeout,
            }),
        }
    }
}

fn subject_of(message: &[u8]) -> Option<String> {
    mail_parser::MessageParser::default()
        .parse_headers(message)
        .and_then(|parsed| parsed.subject().map(str::to_string))
}

fn read_file(path: &Path) -> Result<Vec<u8>, InboxError> {
    fs::read(path).map_err(|source| InboxError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `bytes` to `temporary`, fsyncs, renames to `destination` and
/// fsyncs the destination directory, so a crash leaves either nothing or
/// the whole file.
fn write_durably(temporary: &Path, destination: &Path, bytes: &[u8]) -> Result<(), InboxError> {
    let io = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| InboxError::Io {
            action,
            path,
            source,
        }
    };
    let mut file = File::create(temporary).map_err(io("create", temporary))?;
    file.write_all(bytes).map_err(io("write", temporary))?;
    file.sync_all().map_err(io("fsync", temporary))?;
    drop(file);
    fs::rename(temporary, destination).map_err(io("rename into place", destination))?;
    if let Some(parent) = destination.parent() {
        File::open(parent)
            .and_then(|dir| dir.sync_all())
            .map_err(io("fsync", parent))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn delivery() -> Delivery {
        Delivery {
            mail_from: "alice@example.com".into(),
            rcpt_to: vec!["bob@example.net".into()],
            user: Some("alice@example.com".into()),
            mechanism: Some(Mechanism::OAuthBearer),
            token_fingerprint: Some(Secret::new("the-token").fingerprint()),
        }
    }

    #[tokio::test]
    async fn stores_byte_exact_with_a_sidecar_and_wakes_waiters() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inbox = Inbox::open(dir.path()).expect("open");
        let waiter = {
            let inbox = inbox.clone();
            tokio::spawn(async move { inbox.wait_for_count(2, Duration::from_secs(10)).await })
        };
        let first = b"Subject: =?utf-8?q?caf=C3=A9?=\r\n\r\n.dot\r\n\xff\r\n".to_vec();
        let stored = inbox.store(delivery(), first.clone()).await.expect("store");
        inbox
            .store(delivery(), b"Subject: second\r\n\r\nx\r\n".to_vec())
            .await
            .expect("store");
        let entries = waiter.await.expect("join").expect("two messages");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0], stored);
        assert_eq!(entries[0].subject.as_deref(), Some("café"));
        assert_eq!(entries[1].subject.as_deref(), Some("second"));
        assert_eq!(inbox.read(&stored.id).expect("read"), first);
        let sidecar =
            fs::read_to_string(dir.path().join("meta").join(format!("{}.json", stored.id)))
                .expect("sidecar");
        assert!(!sidecar.contains("the-token"));
        assert!(sidecar.contains("fp:"));
        assert!(sidecar.contains("\"oauthbearer\""));
        // Reopening counts what is there.
        assert_eq!(Inbox::open(dir.path()).expect("reopen").count(), 2);
    }

    #[tokio::test]
    async fn a_count_only_inbox_counts_and_stores_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inbox = Inbox::count_only(dir.path()).expect("open");
        assert!(inbox.is_count_only());
        let mut count = inbox.subscribe_count();
        for n in 0..3 {
            let entry = inbox
                .store(
                    delivery(),
                    format!("Subject: {n}\r\n\r\nx\r\n").into_bytes(),
                )
                .await
                .expect("counted");
            assert_eq!(entry.size, "Subject: 0\r\n\r\nx\r\n".len());
        }
        assert_eq!(*count.borrow_and_update(), 3);
        assert_eq!(
            inbox
                .wait_for_count(3, Duration::from_secs(1))
                .await
                .expect("3")
                .len(),
            0
        );
        for sub in ["tmp", "new", "meta"] {
            assert_eq!(
                fs::read_dir(dir.path().join(sub)).expect("dir").count(),
                0,
                "{sub}"
            );
        }
        // A normal inbox on the same directory finds nothing either.
        assert_eq!(Inbox::open(dir.path()).expect("reopen").count(), 0);
    }

    #[tokio::test]
    async fn waiting_times_out_with_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inbox = Inbox::open(dir.path()).expect("open");
        let error = inbox
            .wait_for_count(1, Duration::from_millis(20))
            .await
            .expect_err("nothing arrives");
        assert!(error.to_string().contains("holds 0"), "{error}");
        assert!(matches!(
            inbox.read("../etc/passwd"),
            Err(InboxError::NotFound { .. })
        ));
    }
}
