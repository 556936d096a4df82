//! One run per checkpoint directory: an exclusive `flock` on `DIR/train_gpt.lock`, held for the
//! whole run. The kernel releases it when the process exits, however it exits, so the file a
//! killed run leaves behind never blocks the next run; the file's text (PID, start time,
//! command line) only serves the message of a run that is refused.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

pub const LOCK_FILE: &str = "train_gpt.lock";

/// Holds the lock until dropped.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    pub path: PathBuf,
}

impl RunLock {
    /// Takes the lock on `dir` (which must exist), or says which process holds it.
    pub fn acquire(dir: &Path) -> Result<RunLock, String> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false) // the holder's text must survive until we own the lock
            .open(&path)
            .map_err(|e| format!("cannot open the lock file {}: {e}", path.display()))?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(format!(
                    "cannot lock {} ({e}): without the lock two runs could write the same checkpoints; use a --checkpoint-dir on a local filesystem",
                    path.display()
                ));
            }
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(format!(
                "checkpoint directory {} is in use by another run ({}; lock file {}): two runs would overwrite each other's checkpoints. Wait for that run to end or stop it, or pick another --checkpoint-dir.",
                dir.display(),
                describe_holder(&text),
                path.display()
            ));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let command: Vec<String> = std::env::args().collect();
        let info = format!(
            "pid {}\nstarted {now}\ncommand {}\n",
            std::process::id(),
            command.join(" ")
        );
        file.set_len(0)
            .and_then(|_| (&file).write_all(info.as_bytes()))
            .map_err(|e| format!("cannot write the lock file {}: {e}", path.display()))?;
        Ok(RunLock { _file: file, path })
    }
}

/// "PID 1234, started 2025-01-02 03:04:05 UTC (7m ago), command train_gpt ..." from the file.
fn describe_holder(text: &str) -> String {
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
    };
    let Some(pid) = field("pid ") else {
        return "its PID is not recorded yet: it is starting".into();
    };
    let mut s = format!("PID {pid}");
    if let Some(t) = field("started ").and_then(|t| t.parse::<u64>().ok()) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(t, |d| d.as_secs());
        s += &format!(
            ", started {} ({} ago)",
            utc(t),
            crate::trainer::format_duration(now.saturating_sub(t) as f64)
        );
    }
    if let Some(c) = field("command ") {
        s += &format!(", command: {c}");
    }
    s
}

/// Unix seconds as "YYYY-MM-DD HH:MM:SS UTC" (days to civil date: Howard Hinnant's algorithm).
fn utc(secs: u64) -> String {
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400 + 3661), "2000-02-29 01:01:01 UTC");
        assert_eq!(utc(1_735_689_599), "2024-12-31 23:59:59 UTC");
    }

    #[test]
    fn a_second_lock_is_refused_until_the_first_is_dropped() {
        let d = std::env::temp_dir().join(format!("mxgpt-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let first = RunLock::acquire(&d).unwrap();
        // flock locks belong to the open file, so a second open in this process conflicts too.
        let e = RunLock::acquire(&d).unwrap_err();
        assert!(
            e.contains(&format!("PID {}", std::process::id())) && e.contains("started"),
            "{e}"
        );
        drop(first);
        RunLock::acquire(&d).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }
}
