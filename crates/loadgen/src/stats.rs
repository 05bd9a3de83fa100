//! Live counters, readable while a run is in progress.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct Counters {
    attempts: AtomicU64,
    successes: AtomicU64,
    failures: AtomicU64,
}

/// Cheaply cloneable handle to counters updated as attempts complete.
///
/// Every completed attempt increments `attempts` and exactly one of
/// `successes` or `failures`.
#[derive(Debug, Clone, Default)]
pub struct LiveStats {
    inner: Arc<Counters>,
}

impl LiveStats {
    /// Creates zeroed counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of completed attempts so far.
    pub fn attempts(&self) -> u64 {
        self.inner.attempts.load(Ordering::Relaxed)
    }

    /// Number of successful attempts so far.
    pub fn successes(&self) -> u64 {
        self.inner.successes.load(Ordering::Relaxed)
    }

    /// Number of failed attempts so far.
    pub fn failures(&self) -> u64 {
        self.inner.failures.load(Ordering::Relaxed)
    }

    /// Blocks the calling thread, polling every few milliseconds, until at
    /// least `n` attempts have succeeded. Returns `false` if `timeout` passed
    /// first. Meant for synchronous tests; do not call it on an async runtime.
    pub fn wait_for_successes(&self, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.successes() < n {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    pub(crate) fn record(&self, success: bool) {
        let counter = if success {
            &self.inner.successes
        } else {
            &self.inner.failures
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.inner.attempts.fetch_add(1, Ordering::Relaxed);
    }
}
