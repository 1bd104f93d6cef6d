//! Faults armed in a sandbox server, shared by the SMTP server and the HTTP
//! APIs: each kind of server has its own fault type, and both fire them
//! the same way (the first that applies, `Next(n)` used up one at a time).

use std::sync::{Arc, Mutex, MutexGuard};

/// How often a fault fires. Each chance to fire is one session (NoStartTls,
/// Greeting), one command (the other stages) or one reply (SlowReplies);
/// for the HTTP APIs, one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FaultTimes {
    /// The next `n` chances, then the fault is gone.
    Next(u32),
    /// Each chance with this probability (0.0 to 1.0).
    Fraction(f64),
    /// Until cleared.
    Always,
}

/// The faults of type `F` in force. Cheap to clone; clones share the set.
#[derive(Debug)]
pub struct ArmedFaults<F> {
    armed: Arc<Mutex<Vec<(F, FaultTimes)>>>,
}

impl<F> Clone for ArmedFaults<F> {
    fn clone(&self) -> Self {
        ArmedFaults {
            armed: Arc::clone(&self.armed),
        }
    }
}

impl<F> Default for ArmedFaults<F> {
    fn default() -> Self {
        ArmedFaults {
            armed: Arc::new(Mutex::new(Vec::new())),
        }
    }
}

impl<F> ArmedFaults<F> {
    pub fn inject(&self, fault: F, times: FaultTimes) {
        self.lock().push((fault, times));
    }

    pub fn clear(&self) {
        self.lock().clear();
    }

    /// The first armed fault that `select` picks and that fires now; firing
    /// uses up one of its `Next(n)`.
    pub fn fire<T>(&self, select: impl Fn(&F) -> Option<T>) -> Option<T> {
        let mut armed = self.lock();
        let position = armed.iter().position(|(fault, times)| {
            select(fault).is_some()
                && match times {
                    FaultTimes::Next(n) => *n > 0,
                    FaultTimes::Fraction(p) => rand::random::<f64>() < *p,
                    FaultTimes::Always => true,
                }
        })?;
        let chosen = select(&armed[position].0);
        if let FaultTimes::Next(n) = &mut armed[position].1 {
            *n -= 1;
            if *n == 0 {
                armed.remove(position);
            }
        }
        chosen
    }

    fn lock(&self) -> MutexGuard<'_, Vec<(F, FaultTimes)>> {
        // A panic while holding this lock leaves a plain Vec behind, still
        // usable: recover it rather than poisoning every later session.
        self.armed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
