//! A session's directory and its record: `vm.json` (what we launched, the
//! process identity, the last known status) beside the sockets, pidfile and
//! logs QEMU writes there. The directory is the whole truth: after an agent
//! restart or crash, the sessions are rebuilt from these records.
//!
//! vm.json is replaced atomically (temp file, rename), so a reader or an
//! agent killed midway sees the old record or the new one; a record of
//! another node, or one that does not parse, is left alone with one warning.

use super::identity::ProcId;
use super::launch::LaunchSpec;
use super::{QemuError, QemuProvider};
use crate::os;
use crate::protocol::ProviderKind;
use crate::providers::{Session, SessionStatus};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

pub(crate) const STATE_FILE: &str = "vm.json";
pub(crate) const QMP_SOCK: &str = "qmp.sock";
/// The VM's second QMP monitor, left free for operators and tools: the
/// agent holds the first one open (`monitor`).
pub(crate) const QMP_USER_SOCK: &str = "qmp-user.sock";
pub(crate) const QGA_SOCK: &str = "qga.sock";
pub(crate) const PID_FILE: &str = "qemu.pid";
pub(crate) const SERIAL_LOG: &str = "serial.log";
pub(crate) const LAUNCH_LOG: &str = "qemu.log";
pub(crate) const DISK: &str = "disk.qcow2";

/// The longest Unix socket path (sun_path holds 108 bytes with the NUL).
pub(crate) const SOCKET_PATH_MAX: usize = 107;

/// `vm.json`: everything needed to rebuild the session after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct VmRecord {
    pub(crate) id: String,
    pub(crate) node_id: String,
    pub(crate) image: String,
    pub(crate) created: String,
    #[serde(default)]
    pub(crate) labels: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) ports: BTreeMap<String, u16>,
    #[serde(default)]
    pub(crate) warnings: Vec<String>,
    pub(crate) status: SessionStatus,
    #[serde(default)]
    pub(crate) exit_code: Option<i32>,
    pub(crate) launch: LaunchSpec,
    #[serde(default)]
    pub(crate) process: Option<ProcId>,
}

impl VmRecord {
    pub(crate) fn session(&self) -> Session {
        Session {
            id: self.id.clone(),
            provider: ProviderKind::Qemu,
            status: self.status,
            image: self.image.clone(),
            ports: self.ports.clone(),
            created: self.created.clone(),
            labels: self.labels.clone(),
            exit_code: self.exit_code,
            warnings: self.warnings.clone(),
        }
    }
}

impl QemuProvider {
    pub(crate) fn read_record(&self, dir: &Path) -> Option<VmRecord> {
        let path = dir.join(STATE_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            // A directory being created or removed right now.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                self.warn_once(dir, format!("cannot read {}: {e}", path.display()));
                return None;
            }
        };
        match serde_json::from_slice::<VmRecord>(&bytes) {
            Ok(r) if r.node_id == self.node_id => Some(r),
            Ok(r) => {
                self.warn_once(
                    dir,
                    format!(
                        "{} belongs to node {}, not {}; leaving it alone",
                        dir.display(),
                        r.node_id,
                        self.node_id
                    ),
                );
                None
            }
            Err(e) => {
                self.warn_once(
                    dir,
                    format!(
                        "{} is not a VM record ({e}); leaving the directory alone, remove it by hand if no VM uses it",
                        path.display()
                    ),
                );
                None
            }
        }
    }

    fn warn_once(&self, dir: &Path, message: String) {
        if self
            .warned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(dir.to_path_buf())
        {
            log::warn!(provider = "qemu"; "{message}");
        }
    }

    /// Replaces vm.json atomically (temp file, rename): a reader or an
    /// agent killed midway sees the old record or the new one. Not synced
    /// to disk: status and pid are re-derived after a power cut anyway (it
    /// ends every VM); see [`Self::write_record_durable`].
    pub(crate) fn write_record(&self, dir: &Path, rec: &VmRecord) -> Result<(), QemuError> {
        store(dir, rec, os::fs::replace)
    }

    /// Like [`Self::write_record`], and synced: for what must survive a
    /// power cut (that the session exists, with its image and settings).
    pub(crate) fn write_record_durable(&self, dir: &Path, rec: &VmRecord) -> Result<(), QemuError> {
        store(dir, rec, os::fs::write_atomic)
    }

    /// Every VM directory of this node with its record.
    pub(crate) fn scan(&self) -> Vec<(PathBuf, VmRecord)> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut out: Vec<(PathBuf, VmRecord)> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| {
                let dir = e.path();
                self.read_record(&dir).map(|r| (dir, r))
            })
            .collect();
        out.sort_by(|a, b| a.1.id.cmp(&b.1.id));
        out
    }

    pub(crate) fn find(&self, id: &str) -> Option<(PathBuf, VmRecord)> {
        self.scan().into_iter().find(|(_, r)| r.id == id)
    }

    /// A new, short, unique directory for a session.
    pub(crate) fn new_dir(&self) -> Result<PathBuf, QemuError> {
        os::fs::ensure_dir(&self.root).map_err(|source| QemuError::State {
            step: "create the VM directory",
            path: self.root.clone(),
            source,
        })?;
        loop {
            let dir = self.root.join(crate::os::random::random_hex(4));
            match std::fs::DirBuilder::new().create(&dir) {
                Ok(()) => {
                    let sock = dir.join(QMP_SOCK);
                    if sock.as_os_str().len() > SOCKET_PATH_MAX {
                        let _ = std::fs::remove_dir(&dir);
                        return Err(QemuError::PathTooLong { path: sock });
                    }
                    return Ok(dir);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(source) => {
                    return Err(QemuError::State {
                        step: "create the VM directory",
                        path: dir,
                        source,
                    })
                }
            }
        }
    }
}

/// Writes `rec` as `dir/vm.json` with `write` (one of the atomic writers
/// of [`crate::os::fs`]), readable by us alone.
fn store(
    dir: &Path,
    rec: &VmRecord,
    write: fn(&Path, &[u8], u32) -> io::Result<()>,
) -> Result<(), QemuError> {
    let path = dir.join(STATE_FILE);
    let bytes = serde_json::to_vec_pretty(rec).unwrap_or_default();
    write(&path, &bytes, 0o600).map_err(|source| QemuError::State {
        step: "write the VM record",
        path,
        source,
    })
}

/// Removes sockets and the pidfile a dead QEMU left behind.
pub(crate) fn clean_stale(dir: &Path) {
    for f in [QMP_SOCK, QMP_USER_SOCK, QGA_SOCK, PID_FILE] {
        let _ = std::fs::remove_file(dir.join(f));
    }
}
