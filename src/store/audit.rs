//! The audit log: one JSON line per command and per event stream, in a
//! file of its own (`audit_log.path`, default `cache_dir/audit.log`),
//! rotated by size (`audit.log.1` … `audit.log.KEEP`). Lines name who
//! asked and what became of it; they never hold a token or a command's
//! parameters (which may hold secrets), only its type, action and session.
//!
//! Writing is best effort: a full disk loses audit lines with a log
//! warning (once a minute), never a command.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub(crate) struct AuditLog {
    path: PathBuf,
    max_size: u64,
    keep: usize,
    state: Mutex<State>,
}

struct State {
    file: Option<File>,
    size: u64,
    /// When a failure was last logged, so a full disk is not a log flood.
    warned: Option<Instant>,
}

impl AuditLog {
    pub(crate) fn new(path: PathBuf, max_size: u64, keep: usize) -> AuditLog {
        AuditLog {
            path,
            max_size,
            keep,
            state: Mutex::new(State {
                file: None,
                size: 0,
                warned: None,
            }),
        }
    }

    /// Appends `entry` as one line, rotating first when the file would
    /// grow past `max_size`.
    pub(crate) fn write(&self, entry: &impl serde::Serialize) {
        let Ok(mut line) = serde_json::to_vec(entry) else {
            return;
        };
        line.push(b'\n');
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = self.append(&mut st, &line) {
            st.file = None;
            if st
                .warned
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
            {
                st.warned = Some(Instant::now());
                log::warn!(
                    "cannot write the audit log {}: {e}; audit lines are lost until it can",
                    self.path.display()
                );
            }
        }
    }

    fn append(&self, st: &mut State, line: &[u8]) -> std::io::Result<()> {
        if st.file.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&self.path)?;
            st.size = file.metadata()?.len();
            st.file = Some(file);
        }
        if st.size > 0 && st.size + line.len() as u64 > self.max_size {
            st.file = None;
            self.rotate()?;
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&self.path)?;
            st.size = 0;
            st.file = Some(file);
        }
        if let Some(f) = st.file.as_mut() {
            f.write_all(line)?;
            st.size += line.len() as u64;
        }
        Ok(())
    }

    /// audit.log.(keep-1) → .keep, …, audit.log → .1; the oldest goes.
    fn rotate(&self) -> std::io::Result<()> {
        let numbered = |n: usize| PathBuf::from(format!("{}.{n}", self.path.display()));
        if self.keep == 0 {
            return std::fs::remove_file(&self.path);
        }
        for n in (1..self.keep).rev() {
            if numbered(n).exists() {
                std::fs::rename(numbered(n), numbered(n + 1))?;
            }
        }
        std::fs::rename(&self.path, numbered(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lines_rotate_by_size_and_only_keep_files_stay() {
        let dir = std::env::temp_dir().join(format!("vaudit-{}", crate::os::random::random_hex(4)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.log");
        let log = AuditLog::new(path.clone(), 200, 2);
        for i in 0..20 {
            log.write(&json!({"n": i, "pad": "x".repeat(40)}));
        }
        let current = std::fs::read_to_string(&path).unwrap();
        let last: serde_json::Value =
            serde_json::from_str(current.lines().last().unwrap()).unwrap();
        assert_eq!(last["n"], 19);
        assert!(std::fs::metadata(&path).unwrap().len() <= 200);
        assert!(dir.join("audit.log.1").exists() && dir.join("audit.log.2").exists());
        assert!(!dir.join("audit.log.3").exists(), "keep: 2");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_unwritable_log_loses_lines_not_commands() {
        let log = AuditLog::new(PathBuf::from("/nonexistent/dir/audit.log"), 1 << 20, 2);
        log.write(&json!({"n": 1}));
        log.write(&json!({"n": 2}));
        let st = log.state.lock().unwrap();
        assert!(st.file.is_none());
        assert!(st.warned.is_some(), "warned once");
    }
}
