//! Durable local state under `cache_dir`:
//!
//! ```text
//! cache_dir/
//!   node_id        the stable node id
//!   api_token      generated local API token (when none is configured)
//!   vendetta.pid   pid file, locked while the agent runs
//!   results/       the idempotency ledger: one file per command id
//!   spool/         results not yet acknowledged by the server
//!   corrupt/       damaged files moved aside, for inspection
//! ```
//!
//! Every write is atomic (`os::fs::write_atomic`). Damaged files are moved
//! aside with a log line and never stop the agent from starting.
//!
//! Owns: the files under `cache_dir`. May not touch: threads, channels,
//! providers, HTTP; callers decide what to store and when.

pub(crate) mod audit;
pub(crate) mod ledger;
pub(crate) mod node;
pub(crate) mod pidfile;
pub(crate) mod spool;

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
