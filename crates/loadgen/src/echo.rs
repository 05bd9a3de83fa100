//! The echo check of the line protocols ([`LoadConfig::echo_check`]): every
//! line sent is unique to its worker and position, `c<worker>-<seq>
//! <payload>`, and the server must answer it with `<pid> <that line>`. A reply
//! that echoes another line means a line was lost, duplicated or reordered
//! (or came from another connection), and says which.
//!
//! [`LoadConfig::echo_check`]: crate::LoadConfig::echo_check

use crate::outcome::{Failure, FailureKind};

/// Numbers the lines of one worker. Sequence numbers start at 1 and go on
/// across reopened connections, so a line is never sent twice.
#[derive(Debug)]
pub(crate) struct Numbering {
    worker: usize,
    next: u64,
    /// The configured message without its line ending (may be empty).
    payload: String,
}

impl Numbering {
    pub fn new(worker: usize, message: &[u8]) -> Numbering {
        let text = String::from_utf8_lossy(message);
        Numbering {
            worker,
            next: 1,
            payload: text.trim_end_matches(['\r', '\n']).to_owned(),
        }
    }

    /// The next line, without its `\n`: `c<worker>-<seq> <payload>`
    /// (`c<worker>-<seq>` when the payload is empty).
    pub fn next_line(&mut self) -> String {
        let tag = format!("c{}-{}", self.worker, self.next);
        self.next += 1;
        if self.payload.is_empty() {
            tag
        } else {
            format!("{tag} {}", self.payload)
        }
    }
}

/// `(worker, seq)` of a `c<worker>-<seq>` tag at the start of `line`.
fn tag_of(line: &str) -> Option<(u64, u64)> {
    let tag = line.split(' ').next()?.strip_prefix('c')?;
    let (worker, seq) = tag.split_once('-')?;
    Some((worker.parse().ok()?, seq.parse().ok()?))
}

/// Checks that `reply` is exactly `<digits> <sent>`; returns the digits (the
/// pid of the process that answered). Anything else is a
/// [`FailureKind::Malformed`] failure whose detail names the expected and the
/// received line (and their sequence numbers when the reply has one).
pub(crate) fn verify(sent: &str, reply: &str) -> Result<String, Failure> {
    let malformed = |what: String| {
        Failure::new(
            FailureKind::Malformed,
            format!("{what}: expected \"<pid> {sent}\", received {reply:?}"),
        )
    };
    let Some((pid, echoed)) = reply
        .split_once(' ')
        .filter(|(pid, _)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
    else {
        return Err(malformed(
            "echo check: reply is not \"<pid> <line sent>\"".to_owned(),
        ));
    };
    if echoed == sent {
        return Ok(pid.to_owned());
    }
    let expected = tag_of(sent);
    let what = match (expected, tag_of(echoed)) {
        (Some((worker, seq)), Some((got_worker, got_seq))) if got_worker == worker => {
            let why = match got_seq.cmp(&seq) {
                std::cmp::Ordering::Less => "an earlier line again (duplicated or reordered)",
                std::cmp::Ordering::Greater => "a later line first (lost or reordered)",
                std::cmp::Ordering::Equal => "the right line with other bytes (corrupted)",
            };
            format!("echo check: expected seq {seq}, received seq {got_seq}: {why}")
        }
        (Some((worker, seq)), Some((got_worker, got_seq))) => format!(
            "echo check: expected seq {seq} of connection c{worker}, received seq {got_seq} \
             of connection c{got_worker} (another connection's line)"
        ),
        (Some((_, seq)), None) => {
            format!("echo check: expected seq {seq}, received a line without a seq")
        }
        (None, _) => "echo check: the reply is not the echo of the line sent".to_owned(),
    };
    Err(malformed(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_numbered_per_worker_across_calls() {
        let mut numbering = Numbering::new(3, b"ping\r\n");
        assert_eq!(numbering.next_line(), "c3-1 ping");
        assert_eq!(numbering.next_line(), "c3-2 ping");
        assert_eq!(Numbering::new(0, b"\n").next_line(), "c0-1");
    }

    #[test]
    fn an_exact_echo_gives_the_pid_and_anything_else_names_both_seqs() {
        assert_eq!(verify("c3-18 ping", "4242 c3-18 ping").unwrap(), "4242");
        let detail = |reply: &str| {
            let failure = verify("c3-18 ping", reply).unwrap_err();
            assert_eq!(failure.kind, FailureKind::Malformed);
            failure.detail
        };
        let earlier = detail("4242 c3-17 ping");
        assert!(
            earlier.contains("expected seq 18, received seq 17"),
            "{earlier}"
        );
        assert!(earlier.contains("duplicated"), "{earlier}");
        let later = detail("4242 c3-19 ping");
        assert!(
            later.contains("expected seq 18, received seq 19"),
            "{later}"
        );
        assert!(later.contains("lost"), "{later}");
        assert!(detail("4242 c5-18 ping").contains("of connection c5"));
        assert!(detail("4242 c3-18 pong").contains("corrupted"));
        assert!(detail("c3-18 ping").contains("not \"<pid> <line sent>\""));
        assert!(detail(" c3-18 ping").contains("not \"<pid> <line sent>\""));
        assert!(detail("pid=1 c3-18 ping").contains("not \"<pid> <line sent>\""));
        assert!(detail("4242 pong").contains("without a seq"));
    }
}
