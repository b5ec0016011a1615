//! Whether a recorded QEMU process is still our VM, and signals that reach
//! it and no other process.
//!
//! A VM is ours only while its pid's /proc start time and cmdline equal what
//! was recorded at launch (a [`ProcId`]); a signal goes through a pidfd
//! opened first and then checked that way, so a reused pid is never
//! signalled. A launch that died before it was recorded is adopted from its
//! pidfile only when the cmdline names this directory's QMP socket.

use super::launch::opt_path;
use super::record::{PID_FILE, QMP_SOCK};
use crate::os::process::{self, PidFd, Signal};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{Duration, Instant};

/// After SIGKILL: how long the VM may take to be gone.
pub(crate) const KILL_WAIT: Duration = Duration::from_secs(3);

/// Who the VM's process is: pid, start time (clock ticks after boot, from
/// /proc/PID/stat) and cmdline, as read right after launch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ProcId {
    pub(crate) pid: u32,
    pub(crate) start_time: u64,
    pub(crate) cmdline: Vec<String>,
}

/// Whether a recorded process is still our VM.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Identity {
    /// Alive, same start time and cmdline.
    Ours,
    /// The pid now names another (or a dead, unrelated) process.
    Other,
    /// No such process, or our VM as a zombie.
    Gone,
}

/// Whether the process `p` names is still our VM, by /proc.
pub(crate) fn identify(p: &ProcId) -> Identity {
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
pub(crate) fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let p = process::read_proc(pid)?;
    Some((p.state, p.start_time?))
}

/// Sends `sig` to the process if, and only if, it is still our VM. The
/// pidfd pins the process between the identity check and the signal.
pub(crate) fn signal_ours(p: &ProcId, sig: Signal) -> bool {
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
pub(crate) fn wait_gone(p: &ProcId, timeout: Duration) -> bool {
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

/// SIGKILLs the VM if it is still ours and waits until it is gone; false
/// when it outlived KILL_WAIT.
pub(crate) fn kill(p: &ProcId) -> bool {
    signal_ours(p, Signal::Kill);
    wait_gone(p, KILL_WAIT)
}

/// The QEMU named by the pidfile, if its cmdline names this directory's
/// QMP socket (so it is this VM and no other process).
pub(crate) fn adopt_from_pidfile(dir: &Path) -> Option<ProcId> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
