//! Timestamps that can be compared across processes.
//!
//! `CLOCK_MONOTONIC` is one system-wide clock: a value read in one process and a
//! value read in another can be subtracted. (`std::time::Instant` uses the same
//! clock on Linux but does not expose its raw value.)

use std::time::Duration;

use rustix::time::{clock_gettime, ClockId};

/// Nanoseconds on `CLOCK_MONOTONIC`.
pub fn now_ns() -> u64 {
    let now = clock_gettime(ClockId::Monotonic);
    // The monotonic clock counts from boot: both fields are non-negative.
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// `later - earlier` as a duration; zero if the clocks disagree on the order.
pub fn between(earlier: u64, later: u64) -> Duration {
    Duration::from_nanos(later.saturating_sub(earlier))
}
