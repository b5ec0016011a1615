//! QEMU provider: sessions are VMs, launched daemonized by
//! `qemu-system-x86_64`, controlled only over QMP ([`super::qmp`]), with
//! exec through the guest agent ([`super::qga`]).
//!
//! Each session owns one short directory `<cache_dir>/qemu/<8 hex>` (Unix
//! socket paths must stay under 108 bytes): `vm.json` (what we launched,
//! the process identity, the last known status), `qmp.sock`, `qga.sock`,
//! `qemu.pid`, `serial.log`, `qemu.log` (QEMU's own stderr) and, with an
//! image, `disk.qcow2`, an overlay on the base image. The directory is the
//! whole truth: after an agent restart or crash, `list()` rebuilds the
//! sessions from it. A VM counts as ours only while its pid's
//! `/proc/PID/stat` start time and cmdline equal what we recorded at
//! launch; a signal is sent only through a pidfd opened and then checked
//! that way, so a reused pid is never signalled.
//!
//! Life cycle: create launches paused (`-S`, run state `prelaunch`, status
//! created); start is `cont` (or a relaunch when the VM is gone); stop is
//! `system_powerdown` (again after a short delay), then `quit`, SIGTERM,
//! SIGKILL, each only if the previous did not end the VM within the grace;
//! destroy stops hard and removes the directory. A VM that ends without
//! us is `exited` when QEMU removed its pidfile (it shut down) and `lost`
//! otherwise (killed, crashed, or its pid now names another process).
//!
//! QMP serves one client at a time, so operations connect, do their work
//! and disconnect; operations on one session are serialised by a lock,
//! and `list()` reports a busy session's recorded status instead of
//! waiting for it.

pub(crate) mod qga;
pub(crate) mod qmp;
pub(crate) mod wire;

use qga::{ExecRequest, Qga, QgaError};

/// Run in the guest with the tag `VENDETTA_COMMAND_ID=ID` as $1: SIGKILL
/// to every process whose environment holds it, then how many there were.
/// The tag is an argument, never part of the script.
const REAP_SCRIPT: &str = r#"n=0
for d in /proc/[0-9]*; do
  p=${d#/proc/}
  if tr '\000' '\n' 2>/dev/null <"$d/environ" | grep -qxF -e "$1"; then
    kill -9 "$p" 2>/dev/null && n=$((n+1))
  fi
done
echo "$n""#;

/// How long the clean-up after an interrupted exec may take in the guest.
const REAP_TIMEOUT: Duration = Duration::from_secs(10);
use super::{
    probe, ExecOutput, ExecSpec, Health, OutputSink, Provider, ProviderError, Session, SessionSpec,
    SessionStatus,
};
use crate::config::{self, Config};
use crate::os::fs as fsutil;
use crate::os::process::{self, PidFd, Signal};
use crate::protocol::{ProviderKind, SessionId};
use qmp::{Qmp, QmpError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use wire::{ms, WireError};

const STATE_FILE: &str = "vm.json";
const QMP_SOCK: &str = "qmp.sock";
const QGA_SOCK: &str = "qga.sock";
const PID_FILE: &str = "qemu.pid";
const SERIAL_LOG: &str = "serial.log";
const LAUNCH_LOG: &str = "qemu.log";
const DISK: &str = "disk.qcow2";

/// The longest Unix socket path (sun_path holds 108 bytes with the NUL).
const SOCKET_PATH_MAX: usize = 107;
/// One QMP command during an operation.
const QMP_TIMEOUT: Duration = Duration::from_secs(5);
/// QMP during `list()`: short, a slow monitor must not stall the listing.
const LIST_QMP_TIMEOUT: Duration = Duration::from_secs(1);
/// How long `list()` (and exec's look) waits, in all, for sessions busy
/// with another operation before reporting their recorded status.
const LIST_LOCK_WAIT: Duration = Duration::from_secs(1);
/// A (re)launch by `start`, which has no timeout of its own.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The second `system_powerdown` follows the first after this long (a
/// guest still booting may miss the first ACPI event).
const POWERDOWN_REPEAT: Duration = Duration::from_secs(1);
/// After quit / SIGTERM / SIGKILL: how long each may take to end the VM.
const QUIT_WAIT: Duration = Duration::from_secs(2);
const TERM_WAIT: Duration = Duration::from_secs(2);
const KILL_WAIT: Duration = Duration::from_secs(3);
/// How long the outcome of `qemu -version` is trusted.
const HEALTH_TTL: Duration = Duration::from_secs(60);
/// PATH given to guest commands whose env replaces the agent's.
const GUEST_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What went wrong, named by step and inputs.
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
            | QemuError::Unkillable { .. } => ProviderError::Failed(m),
        }
    }
}

/// A guest port published on a host port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Publish {
    port: u16,
    udp: bool,
}

impl Publish {
    fn key(&self) -> String {
        format!("{}/{}", self.port, if self.udp { "udp" } else { "tcp" })
    }
}

/// What a VM is launched with; kept so `start` can relaunch it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LaunchSpec {
    memory_mib: u64,
    cpus: u32,
    machine: String,
    workspace: Option<PathBuf>,
    disk: bool,
    publish: Vec<Publish>,
}

/// Who the VM's process is: pid, start time (clock ticks after boot, from
/// /proc/PID/stat) and cmdline, as read right after launch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ProcId {
    pid: u32,
    start_time: u64,
    cmdline: Vec<String>,
}

/// `vm.json`: everything needed to rebuild the session after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct VmRecord {
    id: String,
    node_id: String,
    image: String,
    created: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    ports: BTreeMap<String, u16>,
    #[serde(default)]
    warnings: Vec<String>,
    status: SessionStatus,
    #[serde(default)]
    exit_code: Option<i32>,
    launch: LaunchSpec,
    #[serde(default)]
    process: Option<ProcId>,
}

impl VmRecord {
    fn session(&self) -> Session {
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

/// Whether a recorded process is still our VM.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Identity {
    /// Alive, same start time and cmdline.
    Ours,
    /// The pid now names another (or a dead, unrelated) process.
    Other,
    /// No such process, or our VM as a zombie.
    Gone,
}

fn identify(p: &ProcId) -> Identity {
    let Some((state, start)) = proc_stat(p.pid) else {
        return Identity::Gone;
    };
    if start != p.start_time {
        return Identity::Other;
    }
    // A daemonized QEMU that exited lingers as a zombie until init reaps it.
    if state == 'Z' || state == 'X' {
        return Identity::Gone;
    }
    match process::cmdline(p.pid) {
        Some(c) if c == p.cmdline => Identity::Ours,
        Some(_) => Identity::Other,
        None => Identity::Gone,
    }
}

/// (state, start time) from /proc/PID/stat.
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let p = process::read_proc(pid)?;
    Some((p.state, p.start_time?))
}

/// Sends `sig` to the process if, and only if, it is still our VM. The
/// pidfd pins the process between the identity check and the signal.
fn signal_ours(p: &ProcId, sig: Signal) -> bool {
    match PidFd::open(p.pid) {
        Ok(pidfd) => identify(p) == Identity::Ours && pidfd.send_signal(sig).is_ok(),
        // Kernels before 5.3: the check and the kill are not atomic.
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
            identify(p) == Identity::Ours && process::kill(p.pid, sig).is_ok()
        }
        Err(_) => false,
    }
}

/// Polls until the process is no longer our live VM.
fn wait_gone(p: &ProcId, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if identify(p) != Identity::Ours {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The VM's session status for a QMP run state.
fn status_for(runstate: &str) -> SessionStatus {
    match runstate {
        "prelaunch" | "inmigrate" => SessionStatus::Created,
        "running" | "save-vm" | "finish-migrate" | "colo" | "debug" => SessionStatus::Running,
        _ => SessionStatus::Stopped,
    }
}

/// Run states from which `cont` is refused until a reset.
fn needs_reset(runstate: &str) -> bool {
    matches!(runstate, "shutdown" | "internal-error" | "guest-panicked")
}

/// A path inside a QEMU option value: commas are doubled.
fn opt_path(p: &Path) -> Result<String, QemuError> {
    p.to_str().map(|s| s.replace(',', ",,")).ok_or_else(|| {
        QemuError::Invalid(format!(
            "{} is not valid UTF-8 and cannot be passed to QEMU",
            p.display()
        ))
    })
}

/// Runs a command to completion within `timeout`; output goes to `log`
/// (a file, so a daemon child holding it open cannot block us).
fn run_logged(
    cmd: &mut Command,
    log: &Path,
    step: &str,
    timeout: Duration,
) -> Result<(bool, String), QemuError> {
    let state_err = |source| QemuError::State {
        step: "create",
        path: log.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(log).map_err(state_err)?;
    let err = file.try_clone().map_err(state_err)?;
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .spawn()
        .map_err(|source| QemuError::Tool {
            tool: program,
            source,
        })?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(QemuError::ToolTimeout {
                    step: step.to_string(),
                    after: timeout,
                });
            }
            Err(e) => {
                return Err(QemuError::ToolFailed {
                    step: step.to_string(),
                    detail: format!("waiting for it: {e}"),
                })
            }
        }
    };
    let text = std::fs::read_to_string(log).unwrap_or_default();
    Ok((status.success(), text.trim().to_string()))
}

/// A free loopback port for `udp` or TCP (bound, then released).
fn free_port(udp: bool) -> io::Result<u16> {
    if udp {
        Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    } else {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    }
}

/// When a binary's `-version` was run, which binary, and what it said.
type VersionProbe = (Instant, PathBuf, Result<String, String>);

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

    // ---- state on disk ----

    fn read_record(&self, dir: &Path) -> Option<VmRecord> {
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
    fn write_record(&self, dir: &Path, rec: &VmRecord) -> Result<(), QemuError> {
        let path = dir.join(STATE_FILE);
        let bytes = serde_json::to_vec_pretty(rec).unwrap_or_default();
        fsutil::replace(&path, &bytes, 0o600).map_err(|source| QemuError::State {
            step: "write the VM record",
            path,
            source,
        })
    }

    /// Like [`Self::write_record`], and synced: for what must survive a
    /// power cut (that the session exists, with its image and settings).
    fn write_record_durable(&self, dir: &Path, rec: &VmRecord) -> Result<(), QemuError> {
        let path = dir.join(STATE_FILE);
        let bytes = serde_json::to_vec_pretty(rec).unwrap_or_default();
        fsutil::write_atomic(&path, &bytes, 0o600).map_err(|source| QemuError::State {
            step: "write the VM record",
            path,
            source,
        })
    }

    /// Every VM directory of this node with its record.
    fn scan(&self) -> Vec<(PathBuf, VmRecord)> {
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

    fn find(&self, id: &str) -> Option<(PathBuf, VmRecord)> {
        self.scan().into_iter().find(|(_, r)| r.id == id)
    }

    /// Brings the record up to date with the process and QMP, persists a
    /// change, and cleans up after a VM that is gone. Call with the
    /// session's lock held.
    fn observe(&self, dir: &Path, mut rec: VmRecord, qmp_timeout: Duration) -> VmRecord {
        let before = rec.clone();
        if rec.process.is_none()
            && matches!(rec.status, SessionStatus::Created | SessionStatus::Running)
        {
            // The agent stopped between launch and recording the pid:
            // adopt the process the pidfile names if it is this VM's QEMU.
            rec.process = self.adopt_from_pidfile(dir);
        }
        let identity = rec.process.as_ref().map(identify);
        match identity {
            Some(Identity::Ours) => {
                match Qmp::connect(&dir.join(QMP_SOCK), qmp_timeout)
                    .and_then(|mut q| q.status(qmp_timeout))
                {
                    Ok(state) => rec.status = status_for(&state),
                    // Busy or slow: keep what we knew.
                    Err(e) => log::debug!(session_id = rec.id.as_str(); "qmp status: {e}"),
                }
            }
            other => {
                if matches!(rec.status, SessionStatus::Created | SessionStatus::Running) {
                    // QEMU removes its pidfile when it shuts down; a pidfile
                    // left behind (or a reused pid) means it did not.
                    let clean = other == Some(Identity::Gone) && !dir.join(PID_FILE).exists();
                    rec.status = if clean {
                        SessionStatus::Exited
                    } else {
                        SessionStatus::Lost
                    };
                    log::warn!(session_id = rec.id.as_str(); "VM ended without the agent: {}", rec.status.as_str());
                }
                rec.process = None;
                clean_stale(dir);
            }
        }
        if rec != before {
            if let Err(e) = self.write_record(dir, &rec) {
                log::warn!(session_id = rec.id.as_str(); "{e}");
            }
        }
        rec
    }

    /// The QEMU named by the pidfile, if its cmdline names this directory's
    /// QMP socket (so it is this VM and no other process).
    fn adopt_from_pidfile(&self, dir: &Path) -> Option<ProcId> {
        let pid: u32 = std::fs::read_to_string(dir.join(PID_FILE))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let (state, start_time) = proc_stat(pid)?;
        let cmdline = process::cmdline(pid)?;
        let qmp = format!("path={},server=on", opt_path(&dir.join(QMP_SOCK)).ok()?);
        if state == 'Z' || !cmdline.iter().any(|a| a.contains(&qmp)) {
            return None;
        }
        Some(ProcId {
            pid,
            start_time,
            cmdline,
        })
    }

    // ---- launch ----

    fn has_buses(spec: &LaunchSpec) -> bool {
        // `-machine none` has no buses: virtio devices cannot be attached.
        spec.machine != "none"
    }

    /// The arguments after the program name.
    fn argv(&self, dir: &Path, rec: &VmRecord) -> Result<Vec<String>, QemuError> {
        let l = &rec.launch;
        let mut a: Vec<String> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
        push(&["-name", &rec.id, "-machine", &l.machine]);
        let extra_accel = self
            .cfg
            .extra_args
            .iter()
            .any(|x| x == "-accel" || x.contains("accel="));
        if !extra_accel {
            // KVM when /dev/kvm works, else TCG.
            push(&["-accel", "kvm", "-accel", "tcg"]);
        }
        push(&["-m", &format!("{}M", l.memory_mib)]);
        if Self::has_buses(l) {
            push(&["-smp", &l.cpus.to_string()]);
        }
        push(&["-nodefaults", "-display", "none"]);
        let qmp = opt_path(&dir.join(QMP_SOCK))?;
        let qga = opt_path(&dir.join(QGA_SOCK))?;
        let serial = opt_path(&dir.join(SERIAL_LOG))?;
        push(&[
            "-chardev",
            &format!("socket,id=qmp0,path={qmp},server=on,wait=off"),
            "-mon",
            "chardev=qmp0,mode=control",
            "-chardev",
            &format!("socket,id=qga0,path={qga},server=on,wait=off"),
            "-chardev",
            &format!("file,id=serial0,path={serial}"),
            "-serial",
            "chardev:serial0",
        ]);
        if Self::has_buses(l) {
            push(&[
                "-device",
                "virtio-serial,id=vser0",
                "-device",
                "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0",
            ]);
            let mut net = "user,id=net0".to_string();
            for p in &l.publish {
                if let Some(host) = rec.ports.get(&p.key()) {
                    let proto = if p.udp { "udp" } else { "tcp" };
                    net.push_str(&format!(",hostfwd={proto}:127.0.0.1:{host}-:{}", p.port));
                }
            }
            // romfile= : no iPXE option ROM, so the firmware does not try
            // to boot from the network.
            push(&[
                "-netdev",
                &net,
                "-device",
                "virtio-net-pci,netdev=net0,romfile=",
            ]);
            if let Some(ws) = &l.workspace {
                let ws = opt_path(ws)?;
                push(&[
                    "-virtfs",
                    &format!(
                        "local,path={ws},mount_tag=workspace,security_model=none,id=workspace"
                    ),
                ]);
            }
            if l.disk {
                let disk = opt_path(&dir.join(DISK))?;
                push(&["-drive", &format!("file={disk},format=qcow2,if=virtio")]);
            }
        }
        let pidfile = dir.join(PID_FILE);
        push(&[
            "-pidfile",
            &pidfile.to_string_lossy(),
            "-daemonize",
            // Always launch paused: create stays so, start continues.
            "-S",
        ]);
        a.extend(self.cfg.extra_args.iter().cloned());
        Ok(a)
    }

    /// Gives each published port a host port: the recorded one first
    /// (unless `fresh`), else a free one.
    fn assign_ports(&self, rec: &mut VmRecord, fresh: bool) -> Result<(), QemuError> {
        if !Self::has_buses(&rec.launch) {
            return Ok(());
        }
        for p in rec.launch.publish.clone() {
            let key = p.key();
            if fresh || !rec.ports.contains_key(&key) {
                let host = free_port(p.udp).map_err(|e| QemuError::ToolFailed {
                    step: format!("finding a free host port for {key}"),
                    detail: e.to_string(),
                })?;
                rec.ports.insert(key, host);
            }
        }
        Ok(())
    }

    /// Launches QEMU (paused) and records its process. Retries with new
    /// host ports when a forwarded port was taken in the meantime.
    fn launch(&self, dir: &Path, rec: &mut VmRecord, timeout: Duration) -> Result<(), QemuError> {
        let deadline = Instant::now() + timeout;
        let mut attempt = 0;
        let args = loop {
            clean_stale(dir);
            self.assign_ports(rec, attempt > 0)?;
            let args = self.argv(dir, rec)?;
            let left = deadline.saturating_duration_since(Instant::now());
            let step = format!("launching {} for session {}", self.cfg.binary, rec.id);
            let (ok, log) = run_logged(
                Command::new(&self.cfg.binary).args(&args),
                &dir.join(LAUNCH_LOG),
                &step,
                left,
            )
            .inspect_err(|_| self.kill_strays(dir))?;
            if ok {
                break args;
            }
            clean_stale(dir);
            attempt += 1;
            let port_taken = log.contains("hostfwd") || log.contains("host forwarding");
            if port_taken && attempt < 3 && !rec.launch.publish.is_empty() {
                log::info!(session_id = rec.id.as_str(); "a forwarded host port was taken; retrying with new ones: {log}");
                continue;
            }
            return Err(QemuError::ToolFailed {
                step,
                detail: if log.is_empty() {
                    "QEMU exited non-zero without a message".into()
                } else {
                    log
                },
            });
        };
        let pidfile = dir.join(PID_FILE);
        let pid: u32 = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| QemuError::ToolFailed {
                step: format!("launching session {}", rec.id),
                detail: format!(
                    "QEMU reported success but {} holds no pid",
                    pidfile.display()
                ),
            })?;
        let identity = proc_stat(pid).zip(process::cmdline(pid));
        let Some(((state, start_time), cmdline)) = identity else {
            return Err(QemuError::ToolFailed {
                step: format!("launching session {}", rec.id),
                detail: format!(
                    "QEMU pid {pid} exited right after starting; see {}",
                    dir.join(LAUNCH_LOG).display()
                ),
            });
        };
        if state == 'Z' || cmdline.get(1..) != Some(&args[..]) {
            return Err(QemuError::ToolFailed {
                step: format!("launching session {}", rec.id),
                detail: format!(
                    "pid {pid} from {} is not the QEMU we started",
                    pidfile.display()
                ),
            });
        }
        rec.process = Some(ProcId {
            pid,
            start_time,
            cmdline,
        });
        rec.exit_code = None;
        self.write_record(dir, rec)
    }

    /// After a failed or timed-out launch: ends a QEMU of this directory
    /// that got as far as writing its pidfile.
    fn kill_strays(&self, dir: &Path) {
        if let Some(p) = self.adopt_from_pidfile(dir) {
            log::warn!(
                "killing QEMU pid {} left by a failed launch in {}",
                p.pid,
                dir.display()
            );
            signal_ours(&p, Signal::Kill);
            wait_gone(&p, KILL_WAIT);
        }
        clean_stale(dir);
    }

    // ---- stopping ----

    /// Ends the VM: powerdown (twice) while the grace allows, then quit,
    /// SIGTERM, SIGKILL. A zero grace skips the powerdown.
    fn shut_down(&self, dir: &Path, rec: &VmRecord, grace: Duration) -> Result<(), QemuError> {
        let Some(p) = rec.process.clone() else {
            return Ok(());
        };
        if identify(&p) != Identity::Ours {
            return Ok(());
        }
        let started = Instant::now();
        // Keep a little of the grace for quit, so the VM is gone within it.
        let soft_until = started + grace.saturating_sub((grace / 4).min(Duration::from_secs(1)));
        let connect_timeout = QMP_TIMEOUT.min(grace.max(Duration::from_secs(1)));
        let mut qmp = match Qmp::connect(&dir.join(QMP_SOCK), connect_timeout) {
            Ok(q) => Some(q),
            Err(e) => {
                log::warn!(session_id = rec.id.as_str(); "stop: {e}; going on with signals");
                None
            }
        };
        if let Some(q) = qmp.as_mut().filter(|_| !grace.is_zero()) {
            // A guest that is not running cannot act on ACPI.
            if q.status(QMP_TIMEOUT).is_ok_and(|s| s == "running") {
                self.powerdown(q, rec, soft_until);
                if wait_gone(&p, Duration::from_millis(200).min(grace)) {
                    return Ok(());
                }
            }
        }
        if let Some(mut q) = qmp.take() {
            if let Err(e) = q.quit(QUIT_WAIT) {
                log::warn!(session_id = rec.id.as_str(); "stop: quit: {e}");
            }
            drop(q);
            if wait_gone(&p, QUIT_WAIT) {
                return Ok(());
            }
        }
        log::warn!(session_id = rec.id.as_str(); "QEMU pid {} did not quit; sending SIGTERM", p.pid);
        if signal_ours(&p, Signal::Term) && wait_gone(&p, TERM_WAIT) {
            return Ok(());
        }
        log::warn!(session_id = rec.id.as_str(); "QEMU pid {} ignored SIGTERM; sending SIGKILL", p.pid);
        signal_ours(&p, Signal::Kill);
        if wait_gone(&p, KILL_WAIT) {
            return Ok(());
        }
        Err(QemuError::Unkillable {
            id: rec.id.clone(),
            pid: p.pid,
        })
    }

    /// Presses the power button, again after a short delay, and waits for
    /// SHUTDOWN (or the connection closing) until `until`.
    fn powerdown<S: io::Read + io::Write>(&self, q: &mut Qmp<S>, rec: &VmRecord, until: Instant) {
        let id = rec.id.as_str();
        if let Err(e) = q.execute("system_powerdown", None, QMP_TIMEOUT) {
            log::warn!(session_id = id; "stop: system_powerdown: {e}");
            return;
        }
        let mut repeated = false;
        loop {
            let next = if repeated {
                until
            } else {
                (Instant::now() + POWERDOWN_REPEAT).min(until)
            };
            match q.wait_event(&["SHUTDOWN"], next) {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() >= until => {
                    log::info!(session_id = id; "the guest ignored system_powerdown; quitting");
                    return;
                }
                Ok(None) => {
                    repeated = true;
                    if let Err(e) = q.execute("system_powerdown", None, QMP_TIMEOUT) {
                        log::debug!(session_id = id; "stop: second system_powerdown: {e}");
                        return;
                    }
                }
                Err(e) => {
                    // Closed: QEMU is exiting.
                    log::debug!(session_id = id; "stop: {e}");
                    return;
                }
            }
        }
    }

    // ---- create helpers ----

    /// The base image: absolute, a file, under qemu.image_roots when set.
    fn base_image(&self, image: &str) -> Result<PathBuf, QemuError> {
        let invalid = |m: String| QemuError::Invalid(format!("params.image: {m}"));
        let path = Path::new(image);
        if !path.is_absolute() {
            return Err(invalid(format!(
                "{image:?} is not an absolute path; give the path of a qcow2 base image on this host"
            )));
        }
        let real = std::fs::canonicalize(path)
            .map_err(|e| invalid(format!("{image} cannot be used: {e}")))?;
        if !real.is_file() {
            return Err(invalid(format!("{image} is not a file")));
        }
        if !self.cfg.image_roots.is_empty()
            && !self
                .cfg
                .image_roots
                .iter()
                .any(|r| std::fs::canonicalize(r).is_ok_and(|root| real.starts_with(root)))
        {
            return Err(invalid(format!(
                "{image} is not under qemu.image_roots ({})",
                self.cfg
                    .image_roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(real)
    }

    /// Launch settings and warnings from a create request.
    fn launch_spec(&self, spec: &SessionSpec) -> Result<(LaunchSpec, Vec<String>), QemuError> {
        let mut warnings = Vec::new();
        let mib = |b: u64| b.div_ceil(1 << 20);
        let memory_mib = match spec.resources.memory {
            Some(0) => {
                return Err(QemuError::Invalid(
                    "params.resources.memory: a VM needs some memory; give e.g. 512m".into(),
                ))
            }
            Some(b) => mib(b),
            None => mib(self.cfg.memory).max(1),
        };
        let cpus = match spec.resources.cpus {
            None => self.cfg.cpus,
            Some(c) if !(c > 0.0 && c <= 1024.0) => {
                return Err(QemuError::Invalid(format!(
                    "params.resources.cpus: {c} is not a vCPU count between 0 and 1024"
                )))
            }
            Some(c) => {
                let whole = c.ceil() as u32;
                if f64::from(whole) != c {
                    warnings.push(format!(
                        "resources.cpus {c} rounded up to {whole} vCPUs: QEMU gives whole vCPUs"
                    ));
                }
                whole
            }
        };
        if spec.resources.pids.is_some() {
            warnings.push(
                "resources.pids is not enforced for VMs: the guest kernel owns its processes"
                    .into(),
            );
        }
        if !spec.env.is_empty() {
            warnings.push("env is not applied to a VM; pass env with each exec".into());
        }
        if spec.command.is_some() {
            warnings.push("command is ignored: a VM boots its image".into());
        }
        let launch = LaunchSpec {
            memory_mib,
            cpus,
            machine: self.cfg.machine.clone(),
            workspace: spec.workspace.clone(),
            disk: spec.image.as_deref().is_some_and(|i| !i.is_empty()),
            publish: spec
                .ports
                .iter()
                .map(|p| Publish {
                    port: p.port,
                    udp: p.udp,
                })
                .collect(),
        };
        if !Self::has_buses(&launch) {
            let mut missing = vec!["the guest agent (exec)"];
            if !launch.publish.is_empty() {
                missing.push("ports");
            }
            if launch.workspace.is_some() {
                missing.push("the workspace share");
            }
            if launch.disk {
                missing.push("the disk");
            }
            if cpus > 1 {
                missing.push("more than one vCPU");
            }
            warnings.push(format!(
                "machine none has no buses, so {} are not attached",
                missing.join(", ")
            ));
        }
        Ok((launch, warnings))
    }

    /// A new, short, unique directory for a session.
    fn new_dir(&self) -> Result<PathBuf, QemuError> {
        fsutil::ensure_dir(&self.root).map_err(|source| QemuError::State {
            step: "create the VM directory",
            path: self.root.clone(),
            source,
        })?;
        loop {
            let dir = self.root.join(crate::util::random_hex(4));
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

    fn create_in(
        &self,
        dir: &Path,
        rec: &mut VmRecord,
        base: Option<&Path>,
        timeout: Duration,
    ) -> Result<(), QemuError> {
        let deadline = Instant::now() + timeout;
        self.write_record(dir, rec)?;
        if let Some(base) = base {
            let step = format!("qemu-img create of an overlay on {}", base.display());
            let (ok, out) = run_logged(
                Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2", "-b"])
                    .arg(base)
                    .args(["-F", "qcow2"])
                    .arg(dir.join(DISK)),
                &dir.join("qemu-img.log"),
                &step,
                timeout,
            )?;
            if !ok {
                return Err(QemuError::ToolFailed { step, detail: out });
            }
        }
        self.launch(dir, rec, deadline.saturating_duration_since(Instant::now()))?;
        let mut q =
            Qmp::connect(&dir.join(QMP_SOCK), QMP_TIMEOUT).map_err(|source| QemuError::Qmp {
                id: rec.id.clone(),
                source,
            })?;
        let state = q.status(QMP_TIMEOUT).map_err(|source| QemuError::Qmp {
            id: rec.id.clone(),
            source,
        })?;
        rec.status = status_for(&state);
        if !self.cfg.extra_args.iter().any(|x| x.contains("accel")) {
            if let Ok(kvm) = q.execute("query-kvm", None, QMP_TIMEOUT) {
                if kvm["enabled"] != true {
                    rec.warnings.push(
                        "KVM is not usable here: the VM runs under TCG emulation, much slower"
                            .into(),
                    );
                }
            }
        }
        self.write_record_durable(dir, rec)
    }

    // ---- health ----

    /// `binary -version`, cached for HEALTH_TTL per binary path.
    fn version(&self, binary: &Path) -> Result<String, String> {
        let mut cache = self.version_probe.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, path, outcome)) = cache.as_ref() {
            if path == binary && at.elapsed() < HEALTH_TTL {
                return outcome.clone();
            }
        }
        let log = std::env::temp_dir().join(format!(
            "vendetta-qemu-version-{}-{}",
            std::process::id(),
            crate::util::random_hex(4)
        ));
        let outcome = match run_logged(
            Command::new(binary).arg("-version"),
            &log,
            &format!("{} -version", binary.display()),
            Duration::from_secs(10),
        ) {
            Ok((true, out)) => Ok(out.lines().next().unwrap_or("").to_string()),
            Ok((false, out)) => Err(format!("{} -version failed: {out}", binary.display())),
            Err(e) => Err(e.to_string()),
        };
        let _ = std::fs::remove_file(&log);
        *cache = Some((Instant::now(), binary.to_path_buf(), outcome.clone()));
        outcome
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

/// Removes sockets and the pidfile a dead QEMU left behind.
fn clean_stale(dir: &Path) {
    for f in [QMP_SOCK, QGA_SOCK, PID_FILE] {
        let _ = std::fs::remove_file(dir.join(f));
    }
}

/// Whether /dev/kvm can be opened for use.
fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

impl Provider for QemuProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Qemu
    }

    fn health(&self) -> Health {
        let Some(binary) = probe::which(&self.cfg.binary) else {
            return Health::down(format!(
                "{} not found on PATH; install qemu-system-x86 or set qemu.binary",
                self.cfg.binary
            ));
        };
        let version = match self.version(&binary) {
            Ok(v) => v,
            Err(e) => return Health::down(format!("{e}; reinstall qemu-system-x86")),
        };
        let Some(qemu_img) = probe::which("qemu-img") else {
            return Health::down("qemu-img not found on PATH; install qemu-utils");
        };
        // The longest socket path a session would have.
        let sock = self.root.join("00000000").join(QMP_SOCK);
        if sock.as_os_str().len() > SOCKET_PATH_MAX {
            return Health::down(QemuError::PathTooLong { path: sock }.to_string());
        }
        let kvm = kvm_usable();
        Health::ok(
            format!(
                "{version}; {}",
                if kvm {
                    "KVM usable"
                } else {
                    "KVM not usable, VMs run under TCG"
                }
            ),
            json!({
                "binary": binary,
                "version": version,
                "qemu_img": qemu_img,
                "kvm": kvm,
                "machine": self.cfg.machine,
                "dir": self.root,
            }),
        )
    }

    fn create(&self, spec: &SessionSpec) -> Result<Session, ProviderError> {
        let id = spec.id.as_str();
        let lock = Self::lock_for(&self.locks, id);
        let _g = Self::guard(&lock);
        if self.find(id).is_some() {
            return Err(QemuError::Exists { id: id.into() }.into());
        }
        let (launch, warnings) = self.launch_spec(spec)?;
        let image = spec.image.clone().unwrap_or_default();
        let base = if launch.disk {
            Some(self.base_image(&image)?)
        } else {
            None
        };
        let dir = self.new_dir()?;
        let mut rec = VmRecord {
            id: id.to_string(),
            node_id: self.node_id.clone(),
            image,
            created: crate::util::now_rfc3339(),
            labels: spec.labels.clone(),
            ports: BTreeMap::new(),
            warnings,
            status: SessionStatus::Created,
            exit_code: None,
            launch,
            process: None,
        };
        if let Err(e) = self.create_in(&dir, &mut rec, base.as_deref(), spec.timeout) {
            // Leave nothing behind: no VM, no directory.
            if let Some(p) = &rec.process {
                signal_ours(p, Signal::Kill);
                wait_gone(p, KILL_WAIT);
            }
            self.kill_strays(&dir);
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e.into());
        }
        log::info!(session_id = id; "VM launched paused in {}", dir.display());
        Ok(rec.session())
    }

    fn start(&self, id: &SessionId) -> Result<Session, ProviderError> {
        let id = id.as_str();
        let lock = Self::lock_for(&self.locks, id);
        let _g = Self::guard(&lock);
        let (dir, rec) = self.find(id).ok_or(QemuError::NotFound { id: id.into() })?;
        let qmp_err = |source| QemuError::Qmp {
            id: id.to_string(),
            source,
        };
        let ours = |r: &VmRecord| r.process.as_ref().map(identify) == Some(Identity::Ours);
        // A live VM needs no look beyond the one QMP connection below.
        let mut rec = if ours(&rec) {
            rec
        } else {
            self.observe(&dir, rec, LIST_QMP_TIMEOUT)
        };
        let before = rec.clone();
        if !ours(&rec) {
            self.launch(&dir, &mut rec, START_TIMEOUT)?;
        }
        let mut q = Qmp::connect(&dir.join(QMP_SOCK), QMP_TIMEOUT).map_err(qmp_err)?;
        let state = q.status(QMP_TIMEOUT).map_err(qmp_err)?;
        if state != "running" {
            if needs_reset(&state) {
                q.execute("system_reset", None, QMP_TIMEOUT)
                    .map_err(qmp_err)?;
            }
            q.execute("cont", None, QMP_TIMEOUT).map_err(qmp_err)?;
        }
        drop(q);
        rec.status = SessionStatus::Running;
        rec.exit_code = None;
        if rec != before {
            self.write_record(&dir, &rec)?;
        }
        Ok(rec.session())
    }

    fn stop(&self, id: &SessionId, grace: Duration) -> Result<Session, ProviderError> {
        let id = id.as_str();
        let lock = Self::lock_for(&self.locks, id);
        let _g = Self::guard(&lock);
        let (dir, rec) = self.find(id).ok_or(QemuError::NotFound { id: id.into() })?;
        let mut rec = self.observe(&dir, rec, LIST_QMP_TIMEOUT);
        if rec.process.is_some() {
            self.shut_down(&dir, &rec, grace)?;
            rec.process = None;
            rec.status = SessionStatus::Stopped;
            clean_stale(&dir);
            self.write_record(&dir, &rec)?;
        }
        Ok(rec.session())
    }

    fn destroy(&self, id: &SessionId) -> Result<bool, ProviderError> {
        let id = id.as_str();
        let lock = Self::lock_for(&self.locks, id);
        let _g = Self::guard(&lock);
        let Some((dir, rec)) = self.find(id) else {
            return Ok(false);
        };
        let rec = self.observe(&dir, rec, LIST_QMP_TIMEOUT);
        self.shut_down(&dir, &rec, Duration::ZERO)?;
        std::fs::remove_dir_all(&dir).map_err(|source| QemuError::State {
            step: "remove the VM directory",
            path: dir.clone(),
            source,
        })?;
        // Forget the id's locks unless someone waits on them (the map's
        // handle, ours, and any other): the maps do not grow with churn.
        for (map, ours) in [(&self.exec_locks, 0), (&self.locks, 1)] {
            let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
            if map
                .get(id)
                .is_some_and(|l| Arc::strong_count(l) <= 1 + ours)
            {
                map.remove(id);
            }
        }
        Ok(true)
    }

    fn exec(
        &self,
        id: &SessionId,
        spec: &ExecSpec,
        sink: &mut dyn OutputSink,
    ) -> Result<ExecOutput, ProviderError> {
        let id = id.as_str();
        let deadline = Instant::now() + spec.timeout;
        let (dir, rec) = self.find(id).ok_or(QemuError::NotFound { id: id.into() })?;
        let rec = {
            let lock = Self::lock_for(&self.locks, id);
            let wait = Instant::now() + LIST_LOCK_WAIT.min(spec.timeout);
            let guard = lock_within(&lock, wait);
            match guard {
                // Re-read: an operation may have changed it meanwhile.
                Some(_) => match self.read_record(&dir) {
                    Some(fresh) => self.observe(&dir, fresh, LIST_QMP_TIMEOUT),
                    None => return Err(QemuError::NotFound { id: id.into() }.into()),
                },
                // A long operation (stop, start) is under way: go by the record.
                None => rec,
            }
        };
        if rec.status != SessionStatus::Running {
            return Err(QemuError::NotRunning {
                id: id.into(),
                status: rec.status,
            }
            .into());
        }
        if !Self::has_buses(&rec.launch) {
            return Err(QemuError::Invalid(format!(
                "qemu session {id} runs machine none, which has no guest agent port; exec needs a machine with PCI such as q35 (qemu.machine)"
            ))
            .into());
        }
        if spec.user.is_some() {
            return Err(QemuError::Invalid(
                "params.user is not supported by the qemu provider: the guest agent runs commands as its own user (root)".into(),
            )
            .into());
        }
        let Some((program, rest)) = spec.argv.split_first() else {
            return Err(QemuError::Invalid("params.command is empty".into()).into());
        };
        // guest-exec has no working directory: go through the guest's sh.
        let (path, args): (&str, Vec<String>) = match &spec.workdir {
            Some(wd) => {
                let mut a = vec![
                    "-c".to_string(),
                    r#"cd -- "$0" && exec "$@""#.to_string(),
                    wd.clone(),
                ];
                a.extend(spec.argv.iter().cloned());
                ("/bin/sh", a)
            }
            None => (program.as_str(), rest.to_vec()),
        };
        // A given env replaces the guest agent's: keep a usable PATH.
        let env = (!spec.env.is_empty()).then(|| {
            let mut e: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            if !spec.env.contains_key("PATH") {
                e.push(GUEST_PATH.to_string());
            }
            e
        });
        let lock = Self::lock_for(&self.exec_locks, id);
        let waited = Instant::now();
        let Some(_g) = lock_within(&lock, deadline) else {
            return Err(QemuError::ExecBusy {
                id: id.into(),
                after: waited.elapsed(),
            }
            .into());
        };
        let qga_err = |source| QemuError::Qga {
            id: id.to_string(),
            source,
        };
        let mut qga = Qga::connect(&dir.join(QGA_SOCK), deadline).map_err(qga_err)?;
        let req = ExecRequest {
            path,
            args: &args,
            env,
            input: spec.stdin.as_deref(),
            max_output: spec.max_output,
            deadline,
        };
        Ok(qga.exec(&req, sink).map_err(qga_err)?)
    }

    /// qemu-ga keeps a guest-exec'd process running when the agent dies.
    /// The guest agent cannot look processes up, so a small shell script
    /// in the guest kills those whose environment carries the tag (their
    /// children inherit it). Needs sh, tr and grep in the guest; without
    /// them the check fails and the result says so.
    fn reap_interrupted(&self, id: &SessionId, command_id: &str) -> Result<usize, ProviderError> {
        match self.find(id.as_str()) {
            Some((_, rec)) if rec.status == SessionStatus::Running => {}
            // Not here, or not running: nothing of it can be left.
            _ => return Ok(0),
        }
        let spec = ExecSpec {
            argv: vec![
                "/bin/sh".into(),
                "-c".into(),
                REAP_SCRIPT.into(),
                "reap".into(),
                format!("{}={command_id}", super::COMMAND_ID_ENV),
            ],
            env: BTreeMap::new(),
            workdir: None,
            user: None,
            stdin: None,
            timeout: REAP_TIMEOUT,
            max_output: 4096,
        };
        let out = self.exec(id, &spec, &mut super::output::Discard)?;
        let text = String::from_utf8_lossy(&out.stdout);
        match (out.exit_code, text.trim().parse::<usize>()) {
            (Some(0), Ok(n)) => Ok(n),
            _ => Err(ProviderError::Failed(format!(
                "the clean-up script in the guest failed (exit {:?}: {}); it needs /bin/sh, tr and grep",
                out.exit_code,
                String::from_utf8_lossy(&out.stderr).trim()
            ))),
        }
    }

    fn list(&self) -> Result<Vec<Session>, ProviderError> {
        let mut out = Vec::new();
        // One wait for busy sessions for the whole listing.
        let wait = Instant::now() + LIST_LOCK_WAIT;
        for (dir, rec) in self.scan() {
            let lock = Self::lock_for(&self.locks, &rec.id);
            let rec = match lock_within(&lock, wait) {
                // Re-read: an operation may have changed it meanwhile.
                Some(_g) => match self.read_record(&dir) {
                    Some(fresh) => self.observe(&dir, fresh, LIST_QMP_TIMEOUT),
                    None => continue,
                },
                // A long operation is under way: report what we last knew.
                None => rec,
            };
            out.push(rec.session());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(extra: &[&str], machine: &str) -> QemuProvider {
        let mut c = Config {
            cache_dir: Some(PathBuf::from("/tmp/vendetta-qemu-unit")),
            ..Default::default()
        };
        c.qemu.extra_args = extra.iter().map(|s| s.to_string()).collect();
        c.qemu.machine = machine.into();
        QemuProvider::new(&c, "node-test")
    }

    fn record(publish: Vec<Publish>, workspace: Option<&str>) -> VmRecord {
        VmRecord {
            id: "web-1".into(),
            node_id: "node-test".into(),
            image: String::new(),
            created: String::new(),
            labels: BTreeMap::new(),
            ports: BTreeMap::new(),
            warnings: vec![],
            status: SessionStatus::Created,
            exit_code: None,
            launch: LaunchSpec {
                memory_mib: 256,
                cpus: 2,
                machine: "q35".into(),
                workspace: workspace.map(PathBuf::from),
                disk: false,
                publish,
            },
            process: None,
        }
    }

    #[test]
    fn argv_has_the_agreed_flags_and_escapes_commas() {
        let p = provider(&["-cpu", "max"], "q35");
        let mut rec = record(
            vec![
                Publish {
                    port: 80,
                    udp: false,
                },
                Publish {
                    port: 53,
                    udp: true,
                },
            ],
            Some("/srv/a,b"),
        );
        rec.ports.insert("80/tcp".into(), 18080);
        rec.ports.insert("53/udp".into(), 15353);
        let a = p.argv(Path::new("/c/qemu/0a1b2c3d"), &rec).unwrap();
        let s = a.join(" ");
        for want in [
            "-name web-1 -machine q35 -accel kvm -accel tcg -m 256M -smp 2 -nodefaults -display none",
            "socket,id=qmp0,path=/c/qemu/0a1b2c3d/qmp.sock,server=on,wait=off -mon chardev=qmp0,mode=control",
            "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0",
            "user,id=net0,hostfwd=tcp:127.0.0.1:18080-:80,hostfwd=udp:127.0.0.1:15353-:53",
            "local,path=/srv/a,,b,mount_tag=workspace,",
            "-pidfile /c/qemu/0a1b2c3d/qemu.pid -daemonize -S -cpu max",
        ] {
            assert!(s.contains(want), "missing {want:?} in {s}");
        }
        // Extra args naming an accelerator replace ours.
        let p = provider(&["-accel", "tcg"], "none");
        let mut rec = record(
            vec![Publish {
                port: 80,
                udp: false,
            }],
            Some("/srv"),
        );
        rec.launch.machine = "none".into();
        let s = p.argv(Path::new("/c/d"), &rec).unwrap().join(" ");
        assert!(!s.contains("-accel kvm"), "{s}");
        assert!(!s.contains("virtio") && !s.contains("-smp"), "{s}");
    }

    #[test]
    fn launch_spec_maps_resources_and_warns() {
        let p = provider(&[], "none");
        let mut spec = SessionSpec {
            id: SessionId::parse("a").unwrap(),
            node_id: "n".into(),
            image: None,
            workspace: None,
            env: [("A".to_string(), "b".to_string())].into(),
            ports: vec![],
            resources: Default::default(),
            labels: Default::default(),
            command: Some(vec!["x".into()]),
            timeout: Duration::from_secs(1),
        };
        spec.resources.memory = Some((300 << 20) + 1);
        spec.resources.cpus = Some(1.5);
        spec.resources.pids = Some(10);
        let (l, w) = p.launch_spec(&spec).unwrap();
        assert_eq!((l.memory_mib, l.cpus), (301, 2));
        let w = w.join("\n");
        for want in ["rounded up to 2", "pids", "env", "command", "machine none"] {
            assert!(w.contains(want), "{want} in {w}");
        }
        spec.resources.cpus = Some(0.0);
        assert!(matches!(p.launch_spec(&spec), Err(QemuError::Invalid(_))));
        spec.resources.cpus = Some(f64::NAN);
        assert!(matches!(p.launch_spec(&spec), Err(QemuError::Invalid(_))));
    }

    #[test]
    fn proc_identity_of_ourselves() {
        let pid = std::process::id();
        let (state, start) = proc_stat(pid).unwrap();
        assert!(state == 'R' || state == 'S', "{state}");
        let me = ProcId {
            pid,
            start_time: start,
            cmdline: process::cmdline(pid).unwrap(),
        };
        assert_eq!(identify(&me), Identity::Ours);
        let other = ProcId {
            start_time: start + 1,
            ..me.clone()
        };
        assert_eq!(identify(&other), Identity::Other);
        let reused = ProcId {
            cmdline: vec!["qemu".into()],
            ..me.clone()
        };
        assert_eq!(identify(&reused), Identity::Other);
        // Never signalled: signal 0 would succeed on ourselves if it were sent.
        assert!(!signal_ours(&reused, Signal::Probe));
        assert!(signal_ours(&me, Signal::Probe));
    }

    #[test]
    fn run_states_map_to_statuses() {
        assert_eq!(status_for("prelaunch"), SessionStatus::Created);
        assert_eq!(status_for("running"), SessionStatus::Running);
        assert_eq!(status_for("paused"), SessionStatus::Stopped);
        assert_eq!(status_for("shutdown"), SessionStatus::Stopped);
        assert!(needs_reset("guest-panicked") && !needs_reset("paused"));
    }

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
