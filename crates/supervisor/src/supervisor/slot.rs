//! Where the current slot is — the one child that serves, or should.
//!
//! ```text
//!   Starting ──ready──▶ Serving ──upgrade──▶ Upgrading ──ready / fails──▶ Serving
//!      ▲  │               │                     │
//!      │  └─exits─┐       └──────crash──────────┴──▶ Backoff ──time──▶ Starting
//!      │          ▼                                    (an upgrade's child, if one
//!      └───── Backoff                                   is starting, becomes Starting)
//!   any ──stop──▶ Stopping
//! ```
//!
//! The slot is not stored: it is read off what the event loop holds (the
//! current child, the starting one and why, the restart time, the stop) by
//! [`Slot::of`], so it can never disagree with them; every rule about the slot
//! is a match on it here.

use std::time::Instant;

use crate::metrics::Reason;

/// Where the current slot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Slot {
    /// No child serves yet and one is starting (the first, a restart, or an
    /// upgrade's whose old child crashed meanwhile).
    Starting { new: u32 },
    /// A child serves; nothing is under way.
    Serving,
    /// A child serves and its successor is starting.
    Upgrading { new: u32 },
    /// No child serves or starts: the last one crashed; a restart is due then.
    Backoff { until: Option<Instant> },
    /// The supervisor is stopping: nothing new starts.
    Stopping,
}

impl Slot {
    /// The slot, from what the event loop holds: whether it is stopping,
    /// whether a child serves, the starting child (pid, and whether for an
    /// upgrade), and the restart time.
    pub fn of(
        stopping: bool,
        serving: bool,
        starting: Option<(u32, bool)>,
        respawn_at: Option<Instant>,
    ) -> Slot {
        match (stopping, serving, starting) {
            (true, _, _) => Slot::Stopping,
            (false, true, Some((new, _))) => Slot::Upgrading { new },
            (false, true, None) => Slot::Serving,
            (false, false, Some((new, _))) => Slot::Starting { new },
            (false, false, None) => Slot::Backoff { until: respawn_at },
        }
    }

    /// Why an upgrade cannot start now (`None`: it can, as far as the slot
    /// goes; `--max-draining` is checked apart).
    pub fn upgrade_refusal(self) -> Option<(Reason, String)> {
        match self {
            Slot::Serving => None,
            Slot::Stopping => Some((Reason::Stopping, "the supervisor is stopping".into())),
            Slot::Starting { new } | Slot::Upgrading { new } => Some((
                Reason::UpgradeInProgress,
                format!("an upgrade or restart is already under way (new pid {new})"),
            )),
            Slot::Backoff { .. } => Some((
                Reason::NoChild,
                "no child is running (it crashed and is being restarted)".into(),
            )),
        }
    }

    /// Why a reload cannot be forwarded now (`None`: it can). Only a child
    /// that serves alone is told: during an upgrade the new child reads the
    /// configuration as it starts anyway, and a signal to one of two
    /// children would leave them disagreeing.
    pub fn reload_refusal(self) -> Option<String> {
        match self {
            Slot::Serving => None,
            Slot::Upgrading { new } => Some(format!(
                "an upgrade is under way (new pid {new}): the new child reads its \
                 configuration as it starts; reload once it is over"
            )),
            other => self
                .upgrade_refusal()
                .map(|(_, why)| why)
                .or_else(|| Some(format!("{other:?}"))),
        }
    }

    /// Whether a crashed child's restart should be scheduled.
    pub fn needs_restart(self) -> bool {
        matches!(self, Slot::Backoff { .. })
    }

    /// Whether the restart is due at `now`.
    pub fn restart_due(self, now: Instant) -> bool {
        matches!(self, Slot::Backoff { until: Some(at) } if at <= now)
    }

    /// Its name in `handover status`.
    pub fn name(self) -> &'static str {
        match self {
            Slot::Starting { .. } => "starting",
            Slot::Serving => "serving",
            Slot::Upgrading { .. } => "upgrading",
            Slot::Backoff { .. } => "backoff",
            Slot::Stopping => "stopping",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_slot_follows_what_the_event_loop_holds() {
        let at = Instant::now();
        assert_eq!(
            Slot::of(false, false, Some((7, false)), None),
            Slot::Starting { new: 7 }
        );
        assert_eq!(Slot::of(false, true, None, None), Slot::Serving);
        assert_eq!(
            Slot::of(false, true, Some((8, true)), None),
            Slot::Upgrading { new: 8 }
        );
        assert_eq!(
            Slot::of(false, false, None, Some(at)),
            Slot::Backoff { until: Some(at) }
        );
        // The old child crashed during an upgrade: its successor is starting.
        assert_eq!(
            Slot::of(false, false, Some((8, true)), None),
            Slot::Starting { new: 8 }
        );
        for serving in [false, true] {
            assert_eq!(
                Slot::of(true, serving, Some((9, true)), Some(at)),
                Slot::Stopping
            );
        }
    }

    #[test]
    fn an_upgrade_starts_only_from_serving() {
        assert_eq!(Slot::Serving.upgrade_refusal(), None);
        let said = |slot: Slot| slot.upgrade_refusal().unwrap();
        let (reason, why) = said(Slot::Stopping);
        assert!(reason == Reason::Stopping && why.contains("stopping"));
        let (reason, why) = said(Slot::Upgrading { new: 3 });
        assert!(reason == Reason::UpgradeInProgress && why.contains("new pid 3"));
        let (reason, why) = said(Slot::Starting { new: 4 });
        assert!(reason == Reason::UpgradeInProgress && why.contains("new pid 4"));
        let (reason, why) = said(Slot::Backoff { until: None });
        assert!(reason == Reason::NoChild && why.contains("being restarted"));
    }

    #[test]
    fn a_reload_is_forwarded_only_to_a_child_that_serves_alone() {
        assert_eq!(Slot::Serving.reload_refusal(), None);
        let said = |slot: Slot| slot.reload_refusal().unwrap();
        assert!(said(Slot::Upgrading { new: 3 }).contains("upgrade is under way"));
        assert!(said(Slot::Starting { new: 4 }).contains("new pid 4"));
        assert!(said(Slot::Backoff { until: None }).contains("being restarted"));
        assert!(said(Slot::Stopping).contains("stopping"));
    }

    #[test]
    fn a_restart_is_scheduled_only_in_backoff_and_due_at_its_time() {
        let now = Instant::now();
        let later = now + Duration::from_millis(100);
        assert!(Slot::Backoff { until: None }.needs_restart());
        for slot in [
            Slot::Serving,
            Slot::Stopping,
            Slot::Starting { new: 1 },
            Slot::Upgrading { new: 1 },
        ] {
            assert!(!slot.needs_restart(), "{slot:?}");
            assert!(!slot.restart_due(later), "{slot:?}");
        }
        let waiting = Slot::Backoff { until: Some(later) };
        assert!(!waiting.restart_due(now));
        assert!(waiting.restart_due(later));
        assert!(
            !Slot::Backoff { until: None }.restart_due(later),
            "not scheduled yet"
        );
    }
}
