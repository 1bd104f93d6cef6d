//! What one client may cost the server (issue 8, "sessions that cannot hold
//! the relay hostage"), as plain values and clock arithmetic with no
//! sockets, so the I/O shell ([`super::shell`]) only asks "until when may I
//! wait, and what do I say when that passes?" and every rule is tested
//! here with instants.
//!
//! - A command must arrive *complete* within [`SessionLimits::command_timeout`]
//!   of the server's last reply, however its bytes trickle in (Postfix's
//!   `smtpd_per_request_deadline` model): a per-read timeout alone is reset
//!   by every byte.
//! - Message data must keep a minimum pace: a budget of
//!   [`SessionLimits::data_stall`] that each received byte refills by
//!   `1 / data_min_rate` seconds and that time drains, capped at the stall
//!   allowance (Postfix's `smtpd_min_data_rate` model). Over any stretch of
//!   `t` seconds a client must send at least `data_min_rate * (t - data_stall)`
//!   bytes, so a link may stall for the allowance but not crawl forever.
//! - Every write has a deadline ([`SessionLimits::write_timeout`]), and the
//!   last words of a session a shorter one
//!   ([`SessionLimits::closing_write_timeout`]).
//! - Every session has a total lifetime ([`SessionLimits::lifetime`]).
//! - Sessions per client address are capped ([`PerAddress`]).
//! - On shutdown, a session waiting for a command is closed at once, one
//!   receiving a message gets [`ShutdownLimits::data_grace`] to finish it,
//!   and after [`ShutdownLimits::deadline`] every session is dropped.

use super::reply::{Reply, standard};
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The deadlines and paces of one session. The defaults are for real
/// devices on poor networks; tests use hundreds of milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionLimits {
    /// From the server's last reply until the next command line (or SASL
    /// response, or TLS handshake) has arrived complete. RFC 5321 section
    /// 4.5.3.2.7: a server should wait at least 5 minutes for a command.
    pub command_timeout: Duration,
    /// The longest one write of replies may wait for the client to read.
    pub write_timeout: Duration,
    /// The least average pace of message data, in bytes per second, once
    /// the stall allowance is spent. 0 turns the pace rule off (then
    /// `data_stall` bounds only each silence).
    pub data_min_rate: u64,
    /// How far message data may fall behind `data_min_rate`: the longest
    /// silence in DATA, and the credit a burst may bank.
    pub data_stall: Duration,
    /// The longest a session may last from its connection, however busy.
    pub lifetime: Duration,
    /// For a session's last words (a 421, the TLS close_notify): a client
    /// that cannot take them in this long is not reading.
    pub closing_write_timeout: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            // RFC 5321 section 4.5.3.2.7's 5 minutes, now for the whole
            // command instead of each read.
            command_timeout: Duration::from_secs(300),
            // A reply is tens of bytes: a write can wait at all only once
            // the client has left a socket buffer's worth (tens of KiB or
            // more) of replies unread, which no client that reads does; a
            // link stalled by Wi-Fi loss still takes small writes into the
            // buffer. A minute is generous for TCP's own retransmission
            // backoff to recover.
            write_timeout: Duration::from_secs(60),
            // 1 KiB/s (8 kbit/s): a tenth of a GPRS modem and a fraction of
            // a percent of the worst Wi-Fi link that still associates (1
            // Mbit/s at the edge of 802.11b); a printer on bad Wi-Fi sends
            // scans at tens of KiB/s or more. A client holding a session
            // open by trickling must at least pay this bandwidth.
            data_min_rate: 1024,
            // RFC 5321 section 4.5.3.2.5 gives a client 3 minutes per send
            // of message data: a link the client still considers alive may
            // stall that long (Wi-Fi roaming, TCP retransmission backoff
            // after an outage: 1, 2, 4 ... 64 s between retries).
            data_stall: Duration::from_secs(180),
            // 30 minutes: the largest message Microsoft 365 and Gmail accept
            // (35 MiB) fits at 20 KiB/s; many short messages per session fit
            // easily; a client that reconnects after a 421 loses nothing.
            // Exchange Server's receive connectors cut every connection
            // at 10 minutes (ConnectionTimeout); we are more lenient.
            lifetime: Duration::from_secs(30 * 60),
            // A 421 is under a hundred bytes: a socket that cannot take
            // them in 2 s has a full buffer, i.e. a client that reads
            // nothing; waiting longer only keeps its slot taken.
            closing_write_timeout: Duration::from_secs(2),
        }
    }
}

/// What happens to running sessions when the server is told to stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownLimits {
    /// How long a session receiving a message may go on to finish it (its
    /// 250 comes only after the commit); sessions waiting for a command
    /// get `421 4.3.2` at once.
    pub data_grace: Duration,
    /// From the stop, when every session still running is dropped,
    /// whatever it is doing. A message whose commit was cut off this way
    /// never got its 250, so the client sends it again.
    pub deadline: Duration,
}

/// After the DATA grace: time for the commit of a message that finished
/// at its end (one group commit: milliseconds, a second or two on a slow
/// disk) and for writing its 250 within the closing write timeout.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

impl ShutdownLimits {
    /// A grace for messages in progress, and the hard deadline after it.
    pub fn with_grace(data_grace: Duration) -> Self {
        ShutdownLimits {
            data_grace,
            deadline: data_grace + SHUTDOWN_DRAIN,
        }
    }
}

impl Default for ShutdownLimits {
    /// 15 s of grace: a message already flowing over a working link
    /// finishes (35 MiB at 2.5 MiB/s, a slow Wi-Fi link); the whole stop
    /// stays within 20 s, under the 30 s that Kubernetes and the 90 s that
    /// systemd wait before they kill.
    fn default() -> Self {
        ShutdownLimits::with_grace(Duration::from_secs(15))
    }
}

/// Why the server ends a session that is waiting for its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutOff {
    /// The next command did not arrive complete in time.
    Command,
    /// Message data fell behind the minimum pace.
    DataPace,
    /// The session reached its lifetime.
    Lifetime,
    /// The server is stopping.
    Shutdown,
}

impl CutOff {
    /// The `421` that says so (RFC 5321 section 3.8: the server closes).
    pub fn reply(self, hostname: &str) -> Reply {
        match self {
            CutOff::Command => standard::timeout(hostname),
            CutOff::DataPace => standard::data_too_slow(hostname),
            CutOff::Lifetime => standard::session_too_long(hostname),
            CutOff::Shutdown => standard::shutting_down(hostname),
        }
    }
}

impl fmt::Display for CutOff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CutOff::Command => "the next command did not arrive complete in time",
            CutOff::DataPace => "message data arrived slower than the minimum rate",
            CutOff::Lifetime => "the session reached its lifetime",
            CutOff::Shutdown => "the server is stopping",
        })
    }
}

/// What the session is waiting for, and until when.
#[derive(Debug, Clone, Copy)]
enum Wait {
    Command { by: Instant },
    Data { by: Instant },
}

/// The deadlines of one session, moved along by what the shell sees.
#[derive(Debug, Clone)]
pub struct SessionClock {
    limits: SessionLimits,
    data_grace: Duration,
    ends: Instant,
    wait: Wait,
    stopping: Option<Instant>,
}

impl SessionClock {
    /// A session accepted at `now`, waiting for its first command (the
    /// greeting is the server's first reply).
    pub fn new(limits: &SessionLimits, data_grace: Duration, now: Instant) -> Self {
        SessionClock {
            limits: limits.clone(),
            data_grace,
            ends: now + limits.lifetime,
            wait: Wait::Command {
                by: now + limits.command_timeout,
            },
            stopping: None,
        }
    }

    /// The server has answered and waits for the next command.
    pub fn expect_command(&mut self, now: Instant) {
        self.wait = Wait::Command {
            by: now + self.limits.command_timeout,
        };
    }

    /// The server has sent `354` and waits for message data.
    pub fn start_data(&mut self, now: Instant) {
        self.wait = Wait::Data {
            by: now + self.limits.data_stall,
        };
    }

    pub fn in_data(&self) -> bool {
        matches!(self.wait, Wait::Data { .. })
    }

    /// `bytes` arrived at `now`; in DATA they refill the pace budget.
    pub fn received(&mut self, bytes: usize, now: Instant) {
        let Wait::Data { by } = &mut self.wait else {
            return;
        };
        let credit = match self.limits.data_min_rate {
            0 => self.limits.data_stall,
            rate => {
                let nanos = (bytes as u128).saturating_mul(1_000_000_000) / u128::from(rate);
                Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
            }
        };
        let ceiling = now + self.limits.data_stall;
        *by = by.checked_add(credit).map_or(ceiling, |by| by.min(ceiling));
    }

    /// The server is stopping (since `at`); later calls change nothing.
    pub fn stop(&mut self, at: Instant) {
        self.stopping.get_or_insert(at);
    }

    pub fn stopping(&self) -> bool {
        self.stopping.is_some()
    }

    /// Until when the next read may wait, and why the session ends then.
    pub fn read_deadline(&self) -> (Instant, CutOff) {
        let (waiting, reason) = match self.wait {
            Wait::Command { by } => (by, CutOff::Command),
            Wait::Data { by } => (by, CutOff::DataPace),
        };
        let mut earliest = (self.ends, CutOff::Lifetime);
        if waiting < earliest.0 {
            earliest = (waiting, reason);
        }
        if let Some(at) = self.stopping {
            let stop = match self.wait {
                // Nothing is lost by closing between commands.
                Wait::Command { .. } => at,
                Wait::Data { .. } => at + self.data_grace,
            };
            if stop <= earliest.0 {
                earliest = (stop, CutOff::Shutdown);
            }
        }
        earliest
    }

    /// Until when a write starting `now` may wait for the client. Replies
    /// written after the lifetime or during a stop (the 250 of a message
    /// committed just then) get the closing write timeout, not nothing.
    pub fn write_deadline(&self, now: Instant) -> Instant {
        let normal = now + self.limits.write_timeout;
        let closing = self.closing_deadline(now);
        if self.stopping.is_some() {
            closing
        } else {
            normal.min(self.ends.max(closing))
        }
    }

    /// Until when a session's last words may wait for the client.
    pub fn closing_deadline(&self, now: Instant) -> Instant {
        now + self
            .limits
            .closing_write_timeout
            .min(self.limits.write_timeout)
    }

    /// Until when a TLS handshake starting `now` may take, and why it is
    /// cut off then: a handshake counts as a command.
    pub fn handshake_deadline(&self, now: Instant) -> (Instant, CutOff) {
        if self.stopping.is_some() {
            return (now, CutOff::Shutdown);
        }
        let by = now + self.limits.command_timeout;
        if self.ends < by {
            (self.ends, CutOff::Lifetime)
        } else {
            (by, CutOff::Command)
        }
    }
}

/// Concurrent sessions per client address, shared by one listener's
/// sessions. IPv4 addresses count alone; IPv6 ones by their /64, since a
/// host picks any address in its /64 at will (RFC 4941 temporary
/// addresses) and would otherwise get a fresh count per connection.
#[derive(Debug, Clone)]
pub struct PerAddress {
    cap: usize,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One session's place under [`PerAddress`]'s cap; dropping it frees it.
#[derive(Debug)]
pub struct AddressSlot {
    key: IpAddr,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerAddress {
    pub fn new(cap: usize) -> Self {
        PerAddress {
            cap,
            counts: Arc::default(),
        }
    }

    /// A place for a session from `ip`, or `None` if its address already
    /// has `cap` sessions.
    pub fn try_acquire(&self, ip: IpAddr) -> Option<AddressSlot> {
        let key = address_key(ip);
        let mut counts = lock(&self.counts);
        let count = counts.entry(key).or_insert(0);
        if *count >= self.cap {
            if *count == 0 {
                counts.remove(&key);
            }
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            key,
            counts: self.counts.clone(),
        })
    }

    /// Sessions from `ip`'s address (or /64) now.
    pub fn count(&self, ip: IpAddr) -> usize {
        lock(&self.counts)
            .get(&address_key(ip))
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        if let Some(count) = counts.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                // Forget idle addresses, so the map stays as small as the
                // number of clients connected now.
                counts.remove(&self.key);
            }
        }
    }
}

/// The address a session counts under: IPv4 (also when mapped into IPv6)
/// as is, IPv6 by its /64.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Counters only: a panic while holding the lock breaks no invariant
    // worth stopping for.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn limits() -> SessionLimits {
        SessionLimits {
            command_timeout: 300 * MS,
            write_timeout: 200 * MS,
            data_min_rate: 1000,
            data_stall: 100 * MS,
            lifetime: 10_000 * MS,
            closing_write_timeout: 50 * MS,
        }
    }

    #[test]
    fn a_command_deadline_is_not_moved_by_bytes() {
        let start = Instant::now();
        let mut clock = SessionClock::new(&limits(), 500 * MS, start);
        assert_eq!(clock.read_deadline(), (start + 300 * MS, CutOff::Command));
        // Bytes of an unfinished line: no reply, so no new deadline.
        clock.received(1, start + 200 * MS);
        assert_eq!(clock.read_deadline(), (start + 300 * MS, CutOff::Command));
        clock.expect_command(start + 250 * MS);
        assert_eq!(clock.read_deadline(), (start + 550 * MS, CutOff::Command));
    }

    #[test]
    fn data_at_the_minimum_rate_keeps_going_and_slower_data_runs_out() {
        let start = Instant::now();
        let mut clock = SessionClock::new(&limits(), 500 * MS, start);
        clock.start_data(start);
        assert_eq!(clock.read_deadline(), (start + 100 * MS, CutOff::DataPace));
        // 1000 B/s: 50 bytes every 50 ms keeps the budget full.
        for tick in 1..=20u32 {
            clock.received(50, start + tick * 50 * MS);
        }
        assert_eq!(clock.read_deadline().0, start + 1100 * MS);
        // 250 B/s: each 50 ms brings 12.5 ms of credit; the budget drains.
        let mut now = start + 1000 * MS;
        let mut cut_at = None;
        for _ in 0..100 {
            now += 50 * MS;
            if clock.read_deadline().0 <= now {
                cut_at = Some(now);
                break;
            }
            clock.received(12, now);
        }
        let cut_at = cut_at.expect("the slow sender is cut off");
        assert!(cut_at - (start + 1000 * MS) <= 200 * MS, "{:?}", cut_at);
        assert_eq!(clock.read_deadline().1, CutOff::DataPace);
    }

    #[test]
    fn a_burst_banks_no_more_than_the_stall_allowance() {
        let start = Instant::now();
        let mut clock = SessionClock::new(&limits(), 500 * MS, start);
        clock.start_data(start);
        clock.received(1_000_000, start);
        assert_eq!(clock.read_deadline().0, start + 100 * MS);
    }

    #[test]
    fn the_lifetime_bounds_every_wait() {
        let start = Instant::now();
        let mut clock = SessionClock::new(&limits(), 500 * MS, start);
        clock.expect_command(start + 9_900 * MS);
        assert_eq!(
            clock.read_deadline(),
            (start + 10_000 * MS, CutOff::Lifetime)
        );
        assert_eq!(
            clock.handshake_deadline(start + 9_900 * MS),
            (start + 10_000 * MS, CutOff::Lifetime)
        );
        // A reply due after the lifetime still gets the closing timeout.
        let late = start + 10_500 * MS;
        assert_eq!(clock.write_deadline(late), late + 50 * MS);
        assert_eq!(
            clock.write_deadline(start),
            start + 200 * MS,
            "the write timeout, well before the lifetime"
        );
    }

    #[test]
    fn shutdown_closes_between_commands_at_once_and_gives_data_its_grace() {
        let start = Instant::now();
        let mut clock = SessionClock::new(&limits(), 500 * MS, start);
        let stop = start + 10 * MS;
        clock.stop(stop);
        assert_eq!(clock.read_deadline(), (stop, CutOff::Shutdown));
        clock.stop(stop + 1000 * MS);
        assert_eq!(
            clock.read_deadline(),
            (stop, CutOff::Shutdown),
            "first stop counts"
        );
        assert_eq!(clock.write_deadline(stop), stop + 50 * MS);

        let mut clock = SessionClock::new(&limits(), 500 * MS, start);
        clock.start_data(start);
        clock.stop(stop);
        // The pace rule still applies inside the grace...
        assert_eq!(clock.read_deadline(), (start + 100 * MS, CutOff::DataPace));
        // ...and the grace ends even a fast sender.
        for tick in 1..=20u32 {
            clock.received(1000, start + tick * 50 * MS);
        }
        assert_eq!(clock.read_deadline(), (stop + 500 * MS, CutOff::Shutdown));
    }

    #[test]
    fn per_address_counts_ipv4_alone_and_ipv6_by_its_64() {
        let per = PerAddress::new(2);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        let first = per.try_acquire(a).expect("first");
        let second = per.try_acquire(mapped).expect("second, the same address");
        assert!(per.try_acquire(a).is_none(), "third from one address");
        assert!(per.try_acquire(b).is_some(), "another address");
        drop(first);
        let third = per.try_acquire(a).expect("a freed place");
        drop((second, third));
        assert_eq!(per.count(a), 0);
        assert!(lock(&per.counts).is_empty(), "idle addresses are forgotten");

        let one: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let other_64: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        let _held = (per.try_acquire(one), per.try_acquire(same_64));
        assert!(per.try_acquire(one).is_none());
        assert!(per.try_acquire(other_64).is_some());
    }

    #[test]
    fn a_cap_of_zero_refuses_everyone_without_keeping_entries() {
        let per = PerAddress::new(0);
        assert!(per.try_acquire("127.0.0.1".parse().expect("ip")).is_none());
        assert!(lock(&per.counts).is_empty());
    }
}
