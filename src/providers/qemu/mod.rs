//! QEMU provider: sessions are VMs, launched daemonized by
//! `qemu-system-x86_64`, controlled only over QMP, with exec through the
//! guest agent.
//!
//! Each session owns one short directory `<cache_dir>/qemu/<8 hex>` (Unix
//! socket paths must stay under 108 bytes), which is the whole truth: after
//! an agent restart or crash, `list()` rebuilds the sessions from it. A VM
//! counts as ours only while its process is the one recorded at launch, and
//! only then is it signalled. QMP serves one client at a time, so operations
//! connect, do their work and disconnect; operations on one session are
//! serialised by a lock, and `list()` reports a busy session's recorded
//! status instead of waiting for it.
//!
//! Each file owns one thing:
//! - [`launch`]: the argv, launch settings and host ports; the launch.
//! - [`record`]: the session directory and `vm.json`.
//! - [`identity`]: whether a pid is still our VM; signals only to it.
//! - [`lifecycle`]: create, start, stop, destroy, list, status.
//! - [`exec`]: exec through the guest agent; clean-up after a crash.
//! - [`health`]: binary, version, socket path length, KVM.
//! - [`wire`], [`qmp`], [`qga`]: the line transport and its two protocols.
//!
//! May not touch: channels, HTTP requests of the local API, the runtime or
//! the coordination link. Syscalls go through [`crate::os`].

pub(crate) mod exec;
pub(crate) mod health;
pub(crate) mod identity;
pub(crate) mod launch;
pub(crate) mod lifecycle;
pub(crate) mod monitor;
pub(crate) mod qga;
pub(crate) mod qmp;
pub(crate) mod record;
pub(crate) mod wire;

use super::{
    ExecOutput, ExecSpec, Health, OutputSink, Provider, ProviderError, Session, SessionSpec,
    SessionStatus,
};
use crate::config::{self, Config};
use crate::protocol::{ProviderKind, SessionId};
use health::VersionProbe;
use qga::QgaError;
use qmp::QmpError;
use record::SOCKET_PATH_MAX;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use wire::{ms, WireError};

/// What went wrong, named by step and inputs. [`ProviderError`]'s kind
/// comes from the variant (and a wrapped QMP or guest agent failure).
#[derive(Debug)]
pub(crate) enum QemuError {
    NotFound {
        id: String,
    },
    Exists {
        id: String,
    },
    NotRunning {
        id: String,
        status: SessionStatus,
    },
    /// The request cannot work as given.
    Invalid(String),
    /// A socket path would exceed the Unix limit.
    PathTooLong {
        path: PathBuf,
    },
    /// A tool could not be run.
    Tool {
        tool: String,
        source: io::Error,
    },
    /// A tool ran and failed.
    ToolFailed {
        step: String,
        detail: String,
    },
    ToolTimeout {
        step: String,
        after: Duration,
    },
    State {
        step: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    Qmp {
        id: String,
        source: QmpError,
    },
    Qga {
        id: String,
        source: QgaError,
    },
    Unkillable {
        id: String,
        pid: u32,
    },
    ExecBusy {
        id: String,
        after: Duration,
    },
    /// The clean-up after an interrupted exec did not run in the guest.
    Reap {
        exit_code: Option<i32>,
        stderr: String,
    },
}

impl fmt::Display for QemuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QemuError::NotFound { id } => write!(
                f,
                "no qemu session {id} on this node; `session list` shows the ones there are"
            ),
            QemuError::Exists { id } => write!(
                f,
                "qemu session {id} already exists; destroy it first or pick another id"
            ),
            QemuError::NotRunning { id, status } => write!(
                f,
                "qemu session {id} is {}, not running; start it first",
                status.as_str()
            ),
            QemuError::Invalid(m) => f.write_str(m),
            QemuError::PathTooLong { path } => write!(
                f,
                "the VM socket path {} is {} bytes, over the Unix limit of {SOCKET_PATH_MAX}; set a shorter cache_dir",
                path.display(),
                path.as_os_str().len()
            ),
            QemuError::Tool { tool, source } => write!(
                f,
                "cannot run {tool}: {source}; install qemu-system-x86 and qemu-utils or set qemu.binary"
            ),
            QemuError::ToolFailed { step, detail } => write!(f, "{step} failed: {detail}"),
            QemuError::ToolTimeout { step, after } => {
                write!(f, "{step} did not finish within {} and was killed", ms(*after))
            }
            QemuError::State { step, path, source } => {
                write!(f, "cannot {step} {}: {source}", path.display())
            }
            QemuError::Qmp { id, source } => write!(f, "qemu session {id}: {source}"),
            QemuError::Qga { id, source } => write!(f, "qemu session {id}: {source}"),
            QemuError::Unkillable { id, pid } => write!(
                f,
                "qemu session {id}: QEMU pid {pid} survived quit, SIGTERM and SIGKILL; check the host (D state, ptrace)"
            ),
            QemuError::ExecBusy { id, after } => write!(
                f,
                "qemu session {id}: another exec held the guest agent for {} (it serves one client at a time); retry later or with a longer timeout",
                ms(*after)
            ),
            QemuError::Reap { exit_code, stderr } => write!(
                f,
                "the clean-up script in the guest failed (exit {exit_code:?}: {stderr}); it needs /bin/sh, tr and grep"
            ),
        }
    }
}

impl std::error::Error for QemuError {}

impl From<QemuError> for ProviderError {
    fn from(e: QemuError) -> ProviderError {
        let m = e.to_string();
        match e {
            QemuError::NotFound { .. } => ProviderError::NotFound(m),
            QemuError::Exists { .. } | QemuError::NotRunning { .. } => ProviderError::Conflict(m),
            QemuError::Invalid(_) => ProviderError::Invalid(m),
            QemuError::PathTooLong { .. } | QemuError::Tool { .. } => ProviderError::Unavailable(m),
            QemuError::ToolTimeout { .. } | QemuError::ExecBusy { .. } => ProviderError::Timeout(m),
            QemuError::Qmp { source, .. } => match source {
                QmpError::Wire(WireError::Timeout { .. }) => ProviderError::Timeout(m),
                QmpError::Connect { .. } => ProviderError::Unavailable(m),
                _ => ProviderError::Failed(m),
            },
            QemuError::Qga { source, .. } => match source {
                QgaError::NotResponding { .. } | QgaError::Connect { .. } => {
                    ProviderError::Unavailable(m)
                }
                QgaError::Wire(WireError::Timeout { .. }) => ProviderError::Timeout(m),
                _ => ProviderError::Failed(m),
            },
            QemuError::ToolFailed { .. }
            | QemuError::State { .. }
            | QemuError::Unkillable { .. }
            | QemuError::Reap { .. } => ProviderError::Failed(m),
        }
    }
}

pub(crate) struct QemuProvider {
    cfg: config::Qemu,
    /// `<cache_dir>/qemu`
    root: PathBuf,
    node_id: String,
    /// Per session id: serialises create/start/stop/destroy (and list's
    /// QMP look) on one VM.
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Per session id: one exec at a time (the guest agent serves one
    /// client at a time).
    exec_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// The last `-version` probe: when, of which binary, and its outcome.
    version_probe: Mutex<Option<VersionProbe>>,
    /// Directories whose vm.json we already warned about.
    warned: Mutex<HashSet<PathBuf>>,
    /// The QMP connection held open per running VM.
    pub(crate) monitors: monitor::Monitors,
}

impl QemuProvider {
    pub(crate) fn new(config: &Config, node_id: &str) -> QemuProvider {
        QemuProvider {
            cfg: config.qemu.clone(),
            root: config.cache_dir().join("qemu"),
            node_id: node_id.to_string(),
            locks: Mutex::new(HashMap::new()),
            exec_locks: Mutex::new(HashMap::new()),
            version_probe: Mutex::new(None),
            warned: Mutex::new(HashSet::new()),
            monitors: monitor::Monitors::default(),
        }
    }

    fn lock_for(map: &Mutex<HashMap<String, Arc<Mutex<()>>>>, id: &str) -> Arc<Mutex<()>> {
        map.lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    fn guard(lock: &Mutex<()>) -> MutexGuard<'_, ()> {
        lock.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The lock, if it can be had by `deadline` (polled: std has no timed lock).
fn lock_within(lock: &Mutex<()>, deadline: Instant) -> Option<MutexGuard<'_, ()>> {
    loop {
        match lock.try_lock() {
            Ok(g) => return Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => return Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(std::sync::TryLockError::WouldBlock) => return None,
        }
    }
}

impl Provider for QemuProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Qemu
    }

    fn health(&self) -> Health {
        self.health_now()
    }

    fn create(&self, spec: &SessionSpec) -> Result<Session, ProviderError> {
        Ok(self.create_vm(spec)?)
    }

    fn start(&self, id: &SessionId) -> Result<Session, ProviderError> {
        Ok(self.start_vm(id)?)
    }

    fn stop(&self, id: &SessionId, grace: Duration) -> Result<Session, ProviderError> {
        Ok(self.stop_vm(id, grace)?)
    }

    fn destroy(&self, id: &SessionId) -> Result<bool, ProviderError> {
        Ok(self.destroy_vm(id)?)
    }

    fn exec(
        &self,
        id: &SessionId,
        spec: &ExecSpec,
        sink: &mut dyn OutputSink,
    ) -> Result<ExecOutput, ProviderError> {
        Ok(self.exec_in_guest(id, spec, sink)?)
    }

    fn reap_interrupted(&self, id: &SessionId, command_id: &str) -> Result<usize, ProviderError> {
        Ok(self.reap_in_guest(id, command_id)?)
    }

    fn list(&self) -> Result<Vec<Session>, ProviderError> {
        Ok(self.list_vms())
    }

    fn watch(&self, sink: crate::providers::NoticeSink) {
        self.monitors.set_sink(sink);
    }

    fn node_ids(&self) -> Vec<String> {
        #[derive(serde::Deserialize)]
        struct Owner {
            node_id: String,
        }
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join(record::STATE_FILE)).ok())
            .filter_map(|b| serde_json::from_slice::<Owner>(&b).ok())
            .map(|o| o.node_id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_provider_classes() {
        let e: ProviderError = QemuError::Qga {
            id: "x".into(),
            source: QgaError::NotResponding {
                path: "/d/qga.sock".into(),
                after: Duration::from_secs(2),
            },
        }
        .into();
        assert!(
            matches!(&e, ProviderError::Unavailable(m) if m.contains("guest agent not responding"))
        );
        let e: ProviderError = QemuError::NotRunning {
            id: "x".into(),
            status: SessionStatus::Created,
        }
        .into();
        assert!(matches!(&e, ProviderError::Conflict(m) if m.contains("is created, not running")));
        let e: ProviderError = QemuError::PathTooLong {
            path: PathBuf::from(format!("/{}", "a".repeat(120))),
        }
        .into();
        assert!(matches!(&e, ProviderError::Unavailable(m) if m.contains("shorter cache_dir")));
    }
}
