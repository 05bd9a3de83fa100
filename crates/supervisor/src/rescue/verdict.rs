//! What the old child did with one connection, told by the kernel's counters
//! alone, and what the supervisor does with it once the child lets go.
//!
//! The supervisor holds a duplicate of the connection but never reads it while
//! a process of the old child still has it open: the bytes are the child's. It
//! only watches the socket's counters ([`ConnectionInfo`]), which every holder
//! shares. When the child closes its last descriptor of the connection (it
//! "lets go"), the last look decides:
//!
//! | at let-go | verdict | why |
//! |---|---|---|
//! | the child sent its FIN (shutdown, or a `Connection: close` response ended that way) | [`Verdict::Release`] | the child finished it; the peer knows |
//! | the child had read bytes it sent nothing after | [`Verdict::Lost`] | part of a request is gone with the child: nobody can answer it |
//! | the client sent its FIN and nothing is unread | [`Verdict::Release`] | the client is done |
//! | otherwise (idle, or a request the child never read) | [`Verdict::Rescue`] | the next request is relayed to the new child |
//!
//! "Read bytes it sent nothing after" is tracked between looks: a look that
//! finds more bytes consumed and none sent marks the connection as owing an
//! answer; a look that finds bytes sent clears it. When both grew between two
//! looks the answer is assumed to have come last (a request and its response);
//! a child that answered one request and read half of the next within one
//! look's interval is the case this cannot see.
//!
//! Before the stop signal the watch waits until every connection is
//! [`Track::settled`]: the child owes nothing, nothing waits unread (a queued
//! request the child may pick up in the very moment it is told to stop and
//! closes the connection as idle), and no doubt is left by counters that
//! cannot tell the order of a request and a response which fell in the same
//! jiffy (a few looks tell: the child answers, or reads, or neither).

use handover_mechanism::sockets::tcp_info::{ConnectionInfo, TcpState};

/// What becomes of a connection the old child let go of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Close the supervisor's duplicate: the connection ends normally.
    Release,
    /// Serve the client: relay what it sends to the new child.
    Rescue,
    /// Close it: the child consumed part of a request and left.
    Lost,
}

/// How many looks (2 ms apart while the child is letting go) a connection
/// whose last request and last response share one jiffy stays unsure: long
/// enough for a child reading a request to be seen reading or answering it,
/// short enough not to delay the stop signal noticeably.
const UNSURE_LOOKS: u8 = 5;

/// The counters of one connection as last seen, and whether it owes an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Track {
    consumed: u64,
    sent: u64,
    owes: bool,
    /// Bytes waited unread at the last look: a request the child may be
    /// reading right now.
    unread: bool,
    /// Looks left before a connection whose last payload came and went within
    /// one jiffy (the kernel's clock for these counters: 1–10 ms) is taken as
    /// idle: it may be a request and its answer, or an answer and the next
    /// request read at once.
    unsure: u8,
}

impl Track {
    /// The first look, when the duplicate is taken. A connection whose last
    /// payload arrived more recently than the last one left, with nothing
    /// unread, is busy: the child is working on what it read.
    pub fn start(info: &ConnectionInfo) -> Track {
        let read_all = info.unread == 0 && info.consumed() > 0;
        Track {
            consumed: info.consumed(),
            sent: info.bytes_sent,
            owes: read_all && info.ms_since_received < info.ms_since_sent,
            unread: info.unread > 0,
            unsure: if read_all && info.ms_since_received == info.ms_since_sent {
                UNSURE_LOOKS
            } else {
                0
            },
        }
    }

    /// Whether the child has read bytes it has not answered yet (it is busy
    /// with a request).
    pub fn owes(&self) -> bool {
        self.owes
    }

    /// Whether the connection is surely between requests: the child answered
    /// what it read, nothing waits unread, and the last look left no doubt —
    /// the moment a server closing its idle connections can close it without
    /// a request in its hands.
    pub fn settled(&self) -> bool {
        !self.owes && !self.unread && self.unsure == 0
    }

    /// A later look.
    pub fn observe(&mut self, info: &ConnectionInfo) {
        if info.bytes_sent > self.sent {
            self.owes = false;
            self.unsure = 0;
        } else if info.consumed() > self.consumed {
            self.owes = true;
            self.unsure = 0;
        } else {
            self.unsure = self.unsure.saturating_sub(1);
        }
        self.unread = info.unread > 0;
        self.consumed = self.consumed.max(info.consumed());
        self.sent = self.sent.max(info.bytes_sent);
    }

    /// The verdict once no process of the child holds the connection; `info` is
    /// the look taken after that was seen.
    pub fn verdict(mut self, info: &ConnectionInfo) -> Verdict {
        self.observe(info);
        if info.state.sent_fin() {
            Verdict::Release
        } else if self.owes {
            Verdict::Lost
        } else if info.state == TcpState::CloseWait && info.unread == 0 {
            Verdict::Release
        } else {
            Verdict::Rescue
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn look(state: TcpState, received: u64, unread: u64, sent: u64) -> ConnectionInfo {
        ConnectionInfo {
            state,
            bytes_received: received,
            bytes_sent: sent,
            unread,
            ms_since_received: 50,
            ms_since_sent: 40,
        }
    }
    use TcpState::*;

    #[test]
    fn an_idle_connection_closed_by_the_child_is_rescued() {
        let track = Track::start(&look(Established, 100, 0, 300));
        assert_eq!(
            track.verdict(&look(Established, 100, 0, 300)),
            Verdict::Rescue
        );
    }

    #[test]
    fn a_request_the_child_never_read_is_rescued() {
        let track = Track::start(&look(Established, 100, 0, 300));
        assert_eq!(
            track.verdict(&look(Established, 180, 80, 300)),
            Verdict::Rescue
        );
    }

    #[test]
    fn a_request_read_and_answered_then_closed_with_a_fin_is_released() {
        let mut track = Track::start(&look(Established, 100, 0, 300));
        track.observe(&look(Established, 180, 0, 300));
        assert_eq!(
            track.verdict(&look(FinWait2, 180, 0, 600)),
            Verdict::Release
        );
    }

    #[test]
    fn a_request_read_and_answered_is_not_owed() {
        let mut track = Track::start(&look(Established, 100, 0, 300));
        track.observe(&look(Established, 180, 0, 300));
        track.observe(&look(Established, 180, 0, 600));
        assert_eq!(
            track.verdict(&look(Established, 180, 0, 600)),
            Verdict::Rescue
        );
    }

    #[test]
    fn a_request_read_and_not_answered_is_lost() {
        let mut track = Track::start(&look(Established, 100, 0, 300));
        track.observe(&look(Established, 150, 0, 300));
        assert_eq!(
            track.verdict(&look(Established, 180, 0, 300)),
            Verdict::Lost
        );
        // Read in the last interval before the child let go: lost too.
        let track = Track::start(&look(Established, 100, 0, 300));
        assert_eq!(
            track.verdict(&look(Established, 180, 10, 300)),
            Verdict::Lost
        );
    }

    #[test]
    fn a_connection_busy_when_taken_and_never_answered_is_lost() {
        let mut busy = look(Established, 100, 0, 300);
        busy.ms_since_received = 5;
        let track = Track::start(&busy);
        assert_eq!(
            track.verdict(&look(Established, 100, 0, 300)),
            Verdict::Lost
        );
        let answered = Track::start(&busy);
        assert_eq!(
            answered.verdict(&look(Established, 100, 0, 400)),
            Verdict::Rescue
        );
    }

    #[test]
    fn a_connection_between_requests_is_settled_at_once() {
        assert!(Track::start(&look(Established, 100, 0, 300)).settled());
    }

    #[test]
    fn a_request_waiting_unread_is_settled_only_once_answered() {
        let mut track = Track::start(&look(Established, 180, 80, 300));
        assert!(!track.owes() && !track.settled());
        // Read, not answered yet: busy.
        track.observe(&look(Established, 180, 0, 300));
        assert!(track.owes() && !track.settled());
        track.observe(&look(Established, 180, 0, 600));
        assert!(track.settled());
        // Read and answered between two looks: settled at the next.
        let mut track = Track::start(&look(Established, 180, 80, 300));
        track.observe(&look(Established, 180, 0, 600));
        assert!(track.settled());
    }

    #[test]
    fn a_request_and_answer_in_one_jiffy_is_unsure_for_a_few_looks() {
        let mut same = look(Established, 100, 0, 300);
        same.ms_since_sent = same.ms_since_received;
        let mut track = Track::start(&same);
        assert!(!track.owes() && !track.settled());
        for _ in 1..UNSURE_LOOKS {
            track.observe(&same);
            assert!(!track.settled());
        }
        track.observe(&same);
        assert!(track.settled(), "nothing happened: it was idle");
        // A child that answers (it was busy) settles it at once ...
        let mut track = Track::start(&same);
        track.observe(&look(Established, 100, 0, 400));
        assert!(track.settled());
        // ... one that reads more is busy.
        let mut track = Track::start(&same);
        track.observe(&look(Established, 150, 0, 300));
        assert!(track.owes() && !track.settled());
    }

    #[test]
    fn a_client_that_closed_with_nothing_unread_is_released() {
        let track = Track::start(&look(Established, 100, 0, 300));
        assert_eq!(
            track.verdict(&look(CloseWait, 100, 0, 300)),
            Verdict::Release
        );
        // ... but a request it sent before its FIN is still answered.
        assert_eq!(
            track.verdict(&look(CloseWait, 150, 50, 300)),
            Verdict::Rescue
        );
    }
}
