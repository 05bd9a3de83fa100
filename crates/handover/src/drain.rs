//! Drain: stop accepting, let in-flight work finish, bounded by a deadline.
//!
//! Two pieces, usable on their own or through the `hyper` glue:
//!
//! - [`DrainSignal`] tells the application *when* to stop accepting and *why*
//!   ([`DrainReason`]): a successor took over, a graceful stop was asked, or the
//!   process must exit now. It carries the deadline by which every connection must
//!   be closed.
//! - [`ConnectionTracker`] counts live connections. A drain ends as soon as the
//!   count reaches zero — never by sleeping a fixed grace period — or at the
//!   deadline, whichever comes first.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use handover::ConnectionTracker;
//!
//! let tracker = ConnectionTracker::new();
//! let guard = tracker.track(); // one per accepted connection
//! assert_eq!(tracker.active(), 1);
//! drop(guard); // the connection ended
//! let left = tracker.wait_idle(Instant::now() + Duration::from_secs(30));
//! assert_eq!(left, 0); // returned at once: nothing to wait for
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use crate::beacon::Beacon;

/// Why the process is draining.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DrainReason {
    /// A successor is ready and accepting on the same sockets.
    Upgraded {
        /// Pid of the successor that took over.
        successor: u32,
    },
    /// A graceful stop (by default SIGTERM or SIGQUIT, or [`crate::Handover::stop`]).
    Stop,
    /// A fast exit (by default SIGINT, or [`crate::Handover::stop_now`]): close
    /// connections now.
    Exit,
}

impl fmt::Display for DrainReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DrainReason::Upgraded { successor } => write!(f, "upgraded to pid {successor}"),
            DrainReason::Stop => f.write_str("graceful stop"),
            DrainReason::Exit => f.write_str("fast exit"),
        }
    }
}

/// The order to drain: why, and by when every connection must be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainOrder {
    /// Why the process drains.
    pub reason: DrainReason,
    /// Connections still open at this instant are closed.
    pub deadline: Instant,
}

/// Tells the application when to stop accepting. Cheap to clone.
#[derive(Clone)]
pub struct DrainSignal {
    order: Arc<Beacon<Option<DrainOrder>>>,
}

impl DrainSignal {
    pub(crate) fn new() -> Self {
        DrainSignal {
            order: Arc::new(Beacon::new(None)),
        }
    }

    /// Issues the order. The first order wins, except that a fast exit may cut an
    /// ongoing drain short. Returns whether anything changed.
    pub(crate) fn issue(&self, new: DrainOrder) -> bool {
        self.order.update(|order| match order {
            None => {
                *order = Some(new);
                true
            }
            Some(current) if new.reason == DrainReason::Exit && new.deadline < current.deadline => {
                current.deadline = new.deadline;
                true
            }
            Some(_) => false,
        })
    }

    /// Withdraws the order: the successor died on probation and this process
    /// serves again (see [`crate::probation`]); the next order is issued anew.
    pub(crate) fn withdraw(&self) {
        self.order.update(|order| *order = None);
    }

    /// The order, if one was issued.
    pub fn get(&self) -> Option<DrainOrder> {
        self.order.read(|order| *order)
    }

    /// Whether the process is draining.
    pub fn is_draining(&self) -> bool {
        self.get().is_some()
    }

    /// Blocks until the order is issued.
    pub fn wait(&self) -> DrainOrder {
        self.order
            .wait_until(None, |order| *order)
            .expect("waiting without a deadline only returns with a value")
    }

    /// Waits until the order's deadline is moved before `than` (a fast exit
    /// during a drain).
    #[cfg(feature = "hyper")]
    pub(crate) async fn shortened(&self, than: Instant) {
        self.order
            .wait_for(|order| order.filter(|o| o.deadline < than).map(|_| ()))
            .await
    }

    /// Waits until the order is withdrawn (see [`crate::probation`]).
    #[cfg(feature = "hyper")]
    pub(crate) async fn withdrawn(&self) {
        self.order
            .wait_for(|order| order.is_none().then_some(()))
            .await
    }

    /// Waits until the order is issued.
    #[cfg(feature = "tokio")]
    pub async fn recv(&self) -> DrainOrder {
        self.order.wait_for(|order| *order).await
    }
}

impl fmt::Debug for DrainSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DrainSignal")
            .field("order", &self.get())
            .finish()
    }
}

/// Counts live connections, so that a drain ends as soon as the count reaches
/// zero (or at the deadline).
#[derive(Clone)]
pub struct ConnectionTracker {
    count: Arc<Beacon<usize>>,
}

impl Default for ConnectionTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl ConnectionTracker {
    /// A tracker with no connections.
    pub fn new() -> Self {
        ConnectionTracker {
            count: Arc::new(Beacon::new(0)),
        }
    }

    /// Counts one connection until the returned guard is dropped.
    pub fn track(&self) -> ConnectionGuard {
        self.count.update(|n| *n += 1);
        ConnectionGuard {
            count: Arc::clone(&self.count),
        }
    }

    /// Connections alive now.
    pub fn active(&self) -> usize {
        self.count.read(|n| *n)
    }

    /// Blocks until no connection is left or `deadline` passes; returns how many
    /// are still open (0 unless the deadline was reached).
    pub fn wait_idle(&self, deadline: Instant) -> usize {
        let started = Instant::now();
        let left = match self
            .count
            .wait_until(Some(deadline), |n| (*n == 0).then_some(()))
        {
            Some(()) => 0,
            None => self.active(),
        };
        crate::metrics::get().drained(started.elapsed(), left);
        left
    }

    /// Waits until no connection is left or `deadline` passes; returns how many
    /// are still open (0 unless the deadline was reached).
    #[cfg(feature = "tokio")]
    pub async fn idle(&self, deadline: Instant) -> usize {
        let started = Instant::now();
        let idle = self.count.wait_for(|n| (*n == 0).then_some(()));
        let left = match tokio::time::timeout_at(deadline.into(), idle).await {
            Ok(()) => 0,
            Err(_) => self.active(),
        };
        crate::metrics::get().drained(started.elapsed(), left);
        left
    }
}

impl fmt::Debug for ConnectionTracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionTracker")
            .field("active", &self.active())
            .finish()
    }
}

/// Keeps one connection counted; see [`ConnectionTracker::track`].
#[must_use = "the connection stops being counted when the guard is dropped"]
pub struct ConnectionGuard {
    count: Arc<Beacon<usize>>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.count.update(|n| *n -= 1);
    }
}

impl fmt::Debug for ConnectionGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConnectionGuard")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn wait_idle_returns_when_last_connection_ends() {
        let tracker = ConnectionTracker::new();
        let guard = tracker.track();
        let waiter = {
            let tracker = tracker.clone();
            std::thread::spawn(move || tracker.wait_idle(Instant::now() + Duration::from_secs(30)))
        };
        let started = Instant::now();
        drop(guard);
        assert_eq!(waiter.join().unwrap(), 0);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn wait_idle_reports_leftovers_at_deadline() {
        let tracker = ConnectionTracker::new();
        let _a = tracker.track();
        let _b = tracker.track();
        assert_eq!(
            tracker.wait_idle(Instant::now() + Duration::from_millis(20)),
            2
        );
    }

    #[test]
    fn first_order_wins_but_exit_shortens() {
        let signal = DrainSignal::new();
        let later = Instant::now() + Duration::from_secs(30);
        assert!(signal.issue(DrainOrder {
            reason: DrainReason::Stop,
            deadline: later
        }));
        let upgraded = DrainOrder {
            reason: DrainReason::Upgraded { successor: 1 },
            deadline: later,
        };
        assert!(!signal.issue(upgraded));
        let now = Instant::now();
        assert!(signal.issue(DrainOrder {
            reason: DrainReason::Exit,
            deadline: now
        }));
        let order = signal.wait();
        assert_eq!(order.reason, DrainReason::Stop);
        assert_eq!(order.deadline, now);
    }
}
