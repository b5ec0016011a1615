//! Durable local state under `cache_dir`:
//!
//! ```text
//! cache_dir/
//!   node_id        the stable node id
//!   api_token      generated local API token (when none is configured)
//!   vendetta.pid   pid file, locked while the agent runs
//!   journal/       the ledger: command intake, start, result and the
//!                  server's acknowledgement, in segment files
//!   corrupt/       damaged files moved aside, for inspection
//! ```
//!
//! The journal is append-only (`journal`); the small files are written
//! atomically (`os::fs::write_atomic`). Damage is moved aside with a log
//! line and never stops the agent from starting.
//!
//! Owns: the files under `cache_dir`. May not touch: threads, channels,
//! providers, HTTP; callers decide what to store and when.

pub(crate) mod audit;
pub(crate) mod journal;
pub(crate) mod ledger;
mod migrate;
pub(crate) mod node;
pub(crate) mod pidfile;

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub(crate) enum StoreError {
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    Locked {
        path: PathBuf,
        pid: Option<u32>,
    },
    Invalid {
        what: &'static str,
        message: String,
    },
}

impl StoreError {
    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        StoreError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io {
                action,
                path,
                source,
            } => {
                write!(f, "cannot {action} ({}): {source}", path.display())?;
                if source.kind() == std::io::ErrorKind::PermissionDenied {
                    write!(
                        f,
                        "; run as the agent's user or set cache_dir to a writable directory"
                    )?;
                }
                Ok(())
            }
            StoreError::Locked { path, pid } => {
                write!(
                    f,
                    "another agent is already running with pid file {}",
                    path.display()
                )?;
                if let Some(pid) = pid {
                    write!(f, " (pid {pid})")?;
                }
                write!(
                    f,
                    "; stop it with `vendetta agent stop`, or give this one its own cache_dir"
                )
            }
            StoreError::Invalid { what, message } => write!(f, "{what}: {message}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// For the crash tests: `VENDETTA_CRASH_AT=POINT[:N]` kills the agent
/// (SIGKILL, as `kill -9` would) the N-th time (default 1st) it passes
/// POINT: `intake` (before an acknowledged command is flushed), `start`
/// (its start flushed, before it runs), `result` (its result flushed,
/// before it is answered or reported), `ack` (the server's
/// acknowledgement recorded). Unset, this is one load of a static.
pub(crate) fn crash_point(point: &str) {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;
    static AT: OnceLock<Option<(String, AtomicU32)>> = OnceLock::new();
    let at = AT.get_or_init(|| {
        let v = std::env::var("VENDETTA_CRASH_AT").ok()?;
        let (name, n) = match v.split_once(':') {
            Some((name, n)) => (name.to_string(), n.parse().unwrap_or(1)),
            None => (v, 1),
        };
        Some((name, AtomicU32::new(n)))
    });
    if let Some((name, left)) = at {
        if name == point && left.fetch_sub(1, Ordering::SeqCst) == 1 {
            log::warn!("VENDETTA_CRASH_AT={point}: killing the agent here, for a test");
            crate::os::process::kill_self();
        }
    }
}
