//! The results file a chain of server generations writes to and the driver
//! reads.
//!
//! One record per line, appended with `O_APPEND` (a short line lands whole):
//!
//! ```text
//! <kind> <generation> <number>...   e.g. "upgrade 3 81234000 81251000 4242"
//! error <free text>                 a generation failed; the driver stops
//! ```
//!
//! Numbers are `CLOCK_MONOTONIC` nanoseconds (see [`crate::clock`]) or pids.

use std::io::Write;
use std::path::Path;

/// One parsed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: String,
    pub generation: u64,
    pub numbers: Vec<u64>,
}

/// Everything in a results file so far.
#[derive(Debug, Default)]
pub struct Records {
    pub records: Vec<Record>,
    pub errors: Vec<String>,
}

impl Records {
    /// Reads `path`; a missing file is an empty one.
    pub fn read(path: &Path) -> Records {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        // A line being written right now has no newline yet: read it next time.
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        let mut out = Records::default();
        for line in complete.lines() {
            if let Some(error) = line.strip_prefix("error ") {
                out.errors.push(error.to_owned());
                continue;
            }
            let mut words = line.split_whitespace();
            let parsed = (|| {
                let kind = words.next()?.to_owned();
                let generation = words.next()?.parse().ok()?;
                let numbers = words.map(str::parse).collect::<Result<_, _>>().ok()?;
                Some(Record {
                    kind,
                    generation,
                    numbers,
                })
            })();
            match parsed {
                Some(record) => out.records.push(record),
                None => out.errors.push(format!("unparsable record {line:?}")),
            }
        }
        out
    }

    /// The record of `kind` written by `generation`.
    pub fn get(&self, kind: &str, generation: u64) -> Option<&Record> {
        self.records
            .iter()
            .find(|r| r.kind == kind && r.generation == generation)
    }

    /// Whether a record of `kind` exists.
    pub fn has(&self, kind: &str) -> bool {
        self.records.iter().any(|r| r.kind == kind)
    }
}

/// Appends `kind generation numbers...` to `path`.
pub fn append(path: &Path, kind: &str, generation: u64, numbers: &[u64]) -> std::io::Result<()> {
    let mut line = format!("{kind} {generation}");
    for n in numbers {
        line.push_str(&format!(" {n}"));
    }
    append_line(path, &line)
}

/// Appends an `error` line (newlines in `text` are flattened).
pub fn append_error(path: &Path, text: &str) {
    let line = format!("error {}", text.replace('\n', " "));
    if let Err(e) = append_line(path, &line) {
        eprintln!("cannot record error {text:?} in {}: {e}", path.display());
    }
}

fn append_line(path: &Path, line: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(format!("{line}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = crate::scratch::Scratch::new("results-test").unwrap();
        let path = dir.path("results");
        append(&path, "upgrade", 3, &[10, 20]).unwrap();
        append_error(&path, "boom\nbang");
        append(&path, "done", 4, &[]).unwrap();
        let records = Records::read(&path);
        assert_eq!(records.errors, ["boom bang"]);
        assert_eq!(records.get("upgrade", 3).unwrap().numbers, [10, 20]);
        assert!(records.has("done"));
        assert!(records.get("upgrade", 4).is_none());
    }
}
