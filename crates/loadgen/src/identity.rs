//! Which server process answered: `pid=N` / `generation=N` in a body or
//! line, or the leading `<pid> ` of an echo reply.

/// Bytes of an HTTP body scanned for `pid=N` / `generation=N` when the
/// response has no `x-pid` / `x-generation` header.
pub(crate) const BODY_SCAN_BYTES: usize = 1024;

/// The digits following the first `key=` in `text` that starts a word (is not
/// preceded by a letter, digit, `_` or `-`), e.g. `scan(b"from pid=42", "pid")`
/// is `Some("42")`.
pub(crate) fn scan(text: &[u8], key: &str) -> Option<String> {
    let needle = format!("{key}=");
    let needle = needle.as_bytes();
    let mut from = 0;
    while let Some(pos) = text[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
    {
        let starts_word = pos == 0 || {
            let before = text[pos - 1];
            !(before.is_ascii_alphanumeric() || before == b'_' || before == b'-')
        };
        let digits: Vec<u8> = text[pos + needle.len()..]
            .iter()
            .copied()
            .take_while(u8::is_ascii_digit)
            .collect();
        if starts_word && !digits.is_empty() {
            return String::from_utf8(digits).ok();
        }
        from = pos + 1;
    }
    None
}

/// The pid in a reply `line` to the line `sent` (without line endings):
/// `pid=N` anywhere in it, else the first token when the reply is exactly
/// `<digits> <sent>` (the answer of an echo server that prefixes its pid,
/// e.g. hello's `--echo` listener). A first token alone is not trusted in
/// other replies: `200 ok` is not from pid 200.
pub(crate) fn line_pid(line: &str, sent: &str) -> Option<String> {
    scan(line.as_bytes(), "pid").or_else(|| {
        let (pid, rest) = line.split_once(' ')?;
        let digits = !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit());
        (digits && rest == sent).then(|| pid.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::{line_pid, scan};

    #[test]
    fn line_pids_come_from_pid_keys_or_an_echo_prefix() {
        assert_eq!(line_pid("pong pid=9", "ping").as_deref(), Some("9"));
        assert_eq!(line_pid("4242 ping", "ping").as_deref(), Some("4242"));
        assert_eq!(line_pid("200 ok", "ping"), None);
        assert_eq!(line_pid("ping", "ping"), None);
    }

    #[test]
    fn finds_word_start_keys_with_digits() {
        let body = b"hello from pid=123 generation=4\n";
        assert_eq!(scan(body, "pid").as_deref(), Some("123"));
        assert_eq!(scan(body, "generation").as_deref(), Some("4"));
        assert_eq!(scan(b"pid=7", "pid").as_deref(), Some("7"));
        assert_eq!(
            scan(b"ppid=1 x-pid=2 pid=x pid=3", "pid").as_deref(),
            Some("3")
        );
        assert_eq!(scan(b"no identity here", "pid"), None);
        assert_eq!(scan(b"pid=", "pid"), None);
    }
}
