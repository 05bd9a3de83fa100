//! The PID file: written atomically (write a temporary file, then rename) by
//! whichever process is current, so a reader never sees a half-written pid.
//! No fsync: the file describes running processes, which a crash ends anyway.

use std::io::{self, Write};
use std::path::Path;

/// Writes `pid` to `path` atomically.
pub fn write(path: &Path, pid: u32) -> io::Result<()> {
    let file_name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "PID file path has no file name",
        )
    })?;
    let mut temporary_name = file_name.to_owned();
    temporary_name.push(format!(".{}.tmp", std::process::id()));
    let temporary = path.with_file_name(temporary_name);
    let result = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        writeln!(file, "{pid}")?;
        std::fs::rename(&temporary, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

/// Reads the pid in `path`.
pub fn read(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Removes `path` if it still names `pid` (a successor may have replaced it).
pub fn remove_if_holds(path: &Path, pid: u32) {
    if read(path) == Some(pid) {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn write_replace_remove() {
        let dir = std::env::temp_dir().join(format!("handover-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("app.pid");
        super::write(&path, 41).unwrap();
        super::write(&path, 42).unwrap();
        assert_eq!(super::read(&path), Some(42));
        super::remove_if_holds(&path, 41);
        assert!(path.exists(), "another process's pid is left alone");
        super::remove_if_holds(&path, 42);
        assert!(!path.exists());
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "no temporary file left"
        );
        std::fs::remove_dir(&dir).unwrap();
    }
}
