//! Who holds a lease in the store, and whether that holder is provably gone.
//!
//! Leases (a worker's claim on a message, a process's right to refresh an
//! account's token) name their holder with a [`Holder`]: an id
//! `host:pid:random` that people can read in `queue show`, the pid, and the
//! holder's *locality*: its host name, the kernel's boot id and its PID
//! namespace. A holder is provably gone when it ran in this very locality
//! (same host, same boot, same PID namespace: its pid means the same
//! process here) and no process has its pid any more. Anything less is no
//! proof, and only the lease's expiry frees it: a holder on another host, in
//! another container (another PID namespace: its pid is someone else's
//! here), before a reboot, or on a system without `/proc`. A pid reused by
//! an unrelated process makes a dead holder look alive, which only delays a
//! takeover until the expiry; it never takes a lease from the living.
//!
//! A leaf module: reads `/proc`, knows nothing of the store.

use std::path::Path;
use std::sync::OnceLock;

/// The holder of a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// `host:pid:random`, unique per holder.
    pub id: String,
    pub pid: u32,
    /// `host boot:ID pidns:INODE`, or empty where it cannot be known (then
    /// the holder is never provably gone).
    pub locality: String,
}

impl Holder {
    /// A new holder in this process: each engine run and each token broker
    /// gets its own, so two of them in one process exclude each other too.
    pub fn new_in_this_process() -> Holder {
        use rand::Rng;
        let pid = std::process::id();
        Holder {
            id: format!("{}:{pid}:{:08x}", host_name(), rand::rng().next_u32()),
            pid,
            locality: this_locality().to_string(),
        }
    }

    /// Whether the holder's process provably no longer exists (see the
    /// module header for what counts as proof).
    pub fn is_provably_gone(&self) -> bool {
        let here = this_locality();
        if here.is_empty() || self.locality != here {
            return false;
        }
        if self.pid == std::process::id() {
            // Another holder in this very process: alive as long as we are.
            return false;
        }
        !Path::new("/proc").join(self.pid.to_string()).exists()
    }
}

/// This machine's host name, as EHLO, `Received:` headers and holder ids
/// give it. Read once per process, as an MTA reads `myhostname` at start:
/// every submission writes it, and a file read per message showed in the
/// send API's profile.
pub fn host_name() -> String {
    static HOST_NAME: OnceLock<String> = OnceLock::new();
    HOST_NAME
        .get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| {
                    !h.is_empty()
                        && h.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                })
                .unwrap_or_else(|| "oxirelay.localdomain".to_string())
        })
        .clone()
}

/// Where pids mean what they mean to this process; empty if unknown.
fn this_locality() -> &'static str {
    static LOCALITY: OnceLock<String> = OnceLock::new();
    LOCALITY.get_or_init(|| {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|b| b.trim().to_string())
            .filter(|b| !b.is_empty());
        // "pid:[4026531836]": the namespace's inode, the same for every
        // process that sees the same pids.
        let namespace = std::fs::read_link("/proc/self/ns/pid")
            .ok()
            .and_then(|link| link.to_str().map(str::to_string));
        match (boot, namespace) {
            (Some(boot), Some(namespace)) => {
                format!("{} boot:{boot} pidns:{namespace}", host_name())
            }
            _ => String::new(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_process_here_is_gone_and_nothing_else_is() {
        let me = Holder::new_in_this_process();
        assert!(!me.is_provably_gone(), "this process is alive");
        if this_locality().is_empty() {
            eprintln!("SKIPPED: no /proc here; nothing is provably gone");
            return;
        }
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("true runs");
        let pid = child.id();
        child.wait().expect("reaped");
        let dead = Holder {
            id: format!("{}:{pid}:00000000", host_name()),
            pid,
            locality: me.locality.clone(),
        };
        assert!(dead.is_provably_gone(), "a reaped child is gone");
        let elsewhere = Holder {
            locality: "otherhost boot:x pidns:pid:[1]".into(),
            ..dead.clone()
        };
        assert!(
            !elsewhere.is_provably_gone(),
            "a pid from another host proves nothing"
        );
        let unknown = Holder {
            locality: String::new(),
            ..dead
        };
        assert!(!unknown.is_provably_gone());
    }
}
