//! `sd_notify` messages: newline-separated `KEY=VALUE` assignments in one datagram.
//!
//! ```
//! use handover_mechanism::protocol::message::Message;
//!
//! let msg = Message::parse(b"READY=1\nSTATUS=serving\n").unwrap();
//! assert!(msg.is_ready());
//! assert_eq!(msg.get("STATUS"), Some("serving"));
//! assert_eq!(Message::parse(b"garbage").unwrap_err().to_string(),
//!            "line 1 is not KEY=VALUE: \"garbage\"");
//! ```

use std::fmt;

/// The largest datagram read from a notify socket; systemd accepts about as much.
pub const MAX_MESSAGE_LEN: usize = 4096;

/// One notify message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    fields: Vec<(String, String)>,
}

/// Why a datagram is not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The datagram is larger than [`MAX_MESSAGE_LEN`].
    #[error("message of {0} bytes is larger than {MAX_MESSAGE_LEN}")]
    TooLong(usize),
    /// The datagram is not UTF-8.
    #[error("message is not UTF-8")]
    NotUtf8,
    /// A line has no `=` or an empty key.
    #[error("line {line} is not KEY=VALUE: {text:?}")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// The offending line, cut to 64 characters.
        text: String,
    },
}

impl Message {
    /// A message with a single assignment.
    pub fn new(key: &str, value: &str) -> Self {
        Message::default().with(key, value)
    }

    /// Adds an assignment.
    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.fields.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Parses one datagram. Empty lines are skipped.
    pub fn parse(bytes: &[u8]) -> Result<Self, MessageError> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(MessageError::TooLong(bytes.len()));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| MessageError::NotUtf8)?;
        let mut fields = Vec::new();
        for (index, line) in text.split('\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            match line.split_once('=') {
                Some((key, value)) if !key.is_empty() => {
                    fields.push((key.to_owned(), value.to_owned()))
                }
                _ => {
                    return Err(MessageError::BadLine {
                        line: index + 1,
                        text: line.chars().take(64).collect(),
                    })
                }
            }
        }
        Ok(Message { fields })
    }

    /// The last value assigned to `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the message says `READY=1`.
    pub fn is_ready(&self) -> bool {
        self.get("READY") == Some("1")
    }

    /// The datagram bytes.
    pub fn encode(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (key, value) in &self.fields {
            writeln!(f, "{key}={value}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let msg = Message::new("READY", "1").with("MAINPID", "42");
        assert_eq!(Message::parse(&msg.encode()).unwrap(), msg);
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(Message::parse(&[0xff, 0xfe]), Err(MessageError::NotUtf8));
        assert!(matches!(
            Message::parse(b"=1"),
            Err(MessageError::BadLine { line: 1, .. })
        ));
        assert!(matches!(
            Message::parse(&vec![b'a'; MAX_MESSAGE_LEN + 1]),
            Err(MessageError::TooLong(_))
        ));
        assert!(!Message::parse(b"READY=0\n").unwrap().is_ready());
    }
}
