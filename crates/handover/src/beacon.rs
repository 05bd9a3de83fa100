//! A value that threads and async tasks can wait on.
//!
//! The drain signal and the connection tracker both need "wait until this value
//! says so": blocking callers wait on a [`Condvar`], async callers (with the
//! `tokio` feature) on a [`tokio::sync::Notify`]. One small type serves both so the
//! rest of the crate never touches either directly.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

pub(crate) struct Beacon<T> {
    value: Mutex<T>,
    changed: Condvar,
    #[cfg(feature = "tokio")]
    notify: tokio::sync::Notify,
}

impl<T> Beacon<T> {
    pub(crate) fn new(value: T) -> Self {
        Beacon {
            value: Mutex::new(value),
            changed: Condvar::new(),
            #[cfg(feature = "tokio")]
            notify: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, T> {
        // A panic while holding the lock cannot leave a counter or an Option
        // half-written, so a poisoned lock is still a valid value.
        self.value.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the value through `f`.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.lock())
    }

    /// Changes the value and wakes every waiter.
    pub(crate) fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let result = f(&mut self.lock());
        self.changed.notify_all();
        #[cfg(feature = "tokio")]
        self.notify.notify_waiters();
        result
    }

    /// Blocks until `test` returns `Some`, or until `deadline` (then `None`).
    /// `test` may take what it returns out of the value (a queue pops).
    pub(crate) fn wait_until<R>(
        &self,
        deadline: Option<Instant>,
        mut test: impl FnMut(&mut T) -> Option<R>,
    ) -> Option<R> {
        let mut guard = self.lock();
        loop {
            if let Some(r) = test(&mut guard) {
                return Some(r);
            }
            guard = match deadline {
                None => self.changed.wait(guard).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let left = deadline.checked_duration_since(Instant::now())?;
                    self.changed
                        .wait_timeout(guard, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }

    /// Waits asynchronously until `test` returns `Some`.
    #[cfg(feature = "tokio")]
    pub(crate) async fn wait_for<R>(&self, mut test: impl FnMut(&mut T) -> Option<R>) -> R {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Register before testing, so an update between test and await is seen.
            notified.as_mut().enable();
            if let Some(r) = test(&mut self.lock()) {
                return r;
            }
            notified.await;
        }
    }
}
