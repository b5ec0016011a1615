//! The life cycle of a VM: create launches it paused (run state
//! `prelaunch`, status created); start is `cont` (or a relaunch when the VM
//! is gone); stop is `system_powerdown` (again after a short delay), then
//! `quit`, SIGTERM, SIGKILL, each only if the previous did not end the VM
//! within the grace; destroy stops hard and removes the directory. Every
//! operation holds the session's lock; `list()` waits for a busy session
//! only briefly and then reports its recorded status.

use super::identity::{adopt_from_pidfile, identify, kill, signal_ours, wait_gone, Identity};
use super::launch::run_logged;
use super::monitor::Call;
use super::qmp::Qmp;
use super::record::{clean_stale, VmRecord, DISK, PID_FILE, QMP_SOCK};
use super::{lock_within, QemuError, QemuProvider};
use crate::os::process::Signal;
use crate::protocol::SessionId;
use crate::providers::{Session, SessionSpec, SessionStatus};
use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One QMP command during an operation.
pub(crate) const QMP_TIMEOUT: Duration = Duration::from_secs(5);
/// QMP during `list()`: short, a slow monitor must not stall the listing.
pub(crate) const LIST_QMP_TIMEOUT: Duration = Duration::from_secs(1);
/// How long `list()` (and exec's look) waits, in all, for sessions busy
/// with another operation before reporting their recorded status.
pub(crate) const LIST_LOCK_WAIT: Duration = Duration::from_secs(1);
/// A (re)launch by `start`, which has no timeout of its own.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The second `system_powerdown` follows the first after this long (a
/// guest still booting may miss the first ACPI event).
const POWERDOWN_REPEAT: Duration = Duration::from_secs(1);
/// After quit / SIGTERM: how long each may take to end the VM.
const QUIT_WAIT: Duration = Duration::from_secs(2);
const TERM_WAIT: Duration = Duration::from_secs(2);
/// How long a QEMU that closed its monitor gets to exit before a listing
/// stops waiting for it.
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// The VM's session status for a QMP run state.
pub(crate) fn status_for(runstate: &str) -> SessionStatus {
    match runstate {
        "prelaunch" | "inmigrate" => SessionStatus::Created,
        "running" | "save-vm" | "finish-migrate" | "colo" | "debug" => SessionStatus::Running,
        _ => SessionStatus::Stopped,
    }
}

/// Run states from which `cont` is refused until a reset.
pub(crate) fn needs_reset(runstate: &str) -> bool {
    matches!(runstate, "shutdown" | "internal-error" | "guest-panicked")
}

impl QemuProvider {
    /// Launches the VM paused. A failure at any step leaves no VM and no
    /// directory behind.
    pub(crate) fn create_vm(&self, spec: &SessionSpec) -> Result<Session, QemuError> {
        let id = spec.id.as_str();
        let lock = Self::lock_for(&self.locks, id);
        let _g = Self::guard(&lock);
        if self.find(id).is_some() {
            return Err(QemuError::Exists { id: id.into() });
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
            created: crate::protocol::time::now_rfc3339(),
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
                kill(p);
            }
            self.kill_strays(&dir);
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        log::info!(session_id = id; "VM launched paused in {}", dir.display());
        Ok(rec.session())
    }

    /// The steps of a create in `dir`: record, overlay disk, launch, status.
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
        let ask_kvm = !self.cfg.extra_args.iter().any(|x| x.contains("accel"));
        let (state, kvm) = self
            .monitors
            .with(&rec.id, &dir.join(QMP_SOCK), QMP_TIMEOUT, Call::Act, |q| {
                let state = q.status(QMP_TIMEOUT)?;
                let kvm = if ask_kvm {
                    q.execute("query-kvm", None, QMP_TIMEOUT).ok()
                } else {
                    None
                };
                Ok((state, kvm))
            })
            .map_err(|source| QemuError::Qmp {
                id: rec.id.clone(),
                source,
            })?;
        rec.status = status_for(&state);
        if kvm.is_some_and(|k| k["enabled"] != true) {
            rec.warnings.push(
                "KVM is not usable here: the VM runs under TCG emulation, much slower".into(),
            );
        }
        self.write_record_durable(dir, rec)
    }

    /// `cont`, after a relaunch when the VM is gone and a reset when its run
    /// state refuses `cont`.
    pub(crate) fn start_vm(&self, id: &SessionId) -> Result<Session, QemuError> {
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
        self.monitors
            .with(id, &dir.join(QMP_SOCK), QMP_TIMEOUT, Call::Act, |q| {
                let state = q.status(QMP_TIMEOUT)?;
                if state != "running" {
                    if needs_reset(&state) {
                        q.execute("system_reset", None, QMP_TIMEOUT)?;
                    }
                    q.execute("cont", None, QMP_TIMEOUT)?;
                }
                Ok(())
            })
            .map_err(qmp_err)?;
        rec.status = SessionStatus::Running;
        rec.exit_code = None;
        if rec != before {
            self.write_record(&dir, &rec)?;
        }
        Ok(rec.session())
    }

    /// Ends the VM within `grace` (see [`Self::shut_down`]); a VM already
    /// gone is stopped.
    pub(crate) fn stop_vm(&self, id: &SessionId, grace: Duration) -> Result<Session, QemuError> {
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

    /// Ends the VM hard and removes its directory; false when there was no
    /// such session.
    pub(crate) fn destroy_vm(&self, id: &SessionId) -> Result<bool, QemuError> {
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

    /// Every session of this node, each brought up to date unless another
    /// operation holds it past one shared short wait.
    pub(crate) fn list_vms(&self) -> Vec<Session> {
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
        out
    }

    /// Brings the record up to date with the process and QMP, persists a
    /// change, and cleans up after a VM that is gone. Call with the
    /// session's lock held.
    pub(crate) fn observe(&self, dir: &Path, mut rec: VmRecord, qmp_timeout: Duration) -> VmRecord {
        let before = rec.clone();
        if rec.process.is_none()
            && matches!(rec.status, SessionStatus::Created | SessionStatus::Running)
        {
            // The agent stopped between launch and recording the pid:
            // adopt the process the pidfile names if it is this VM's QEMU.
            rec.process = adopt_from_pidfile(dir);
        }
        let mut identity = rec.process.as_ref().map(identify);
        if identity == Some(Identity::Ours) {
            match self
                .monitors
                .with(&rec.id, &dir.join(QMP_SOCK), qmp_timeout, Call::Look, |q| {
                    q.status(qmp_timeout)
                }) {
                Ok(state) => rec.status = status_for(&state),
                // QEMU closes its monitor only on its way out (its
                // SHUTDOWN may already be in the event stream): wait
                // for it to be gone rather than report it running.
                Err(e)
                    if e.is_gone()
                        && rec
                            .process
                            .as_ref()
                            .is_some_and(|p| wait_gone(p, EXIT_WAIT)) =>
                {
                    identity = rec.process.as_ref().map(identify);
                }
                // Busy or slow: keep what we knew.
                Err(e) => log::debug!(session_id = rec.id.as_str(); "qmp status: {e}"),
            }
        }
        match identity {
            Some(Identity::Ours) => {}
            other => {
                self.monitors.forget(&rec.id);
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
        // The held connection if it still answers (else a new one): its
        // events from now on are this stop's.
        let held = self
            .monitors
            .take(&rec.id)
            .and_then(|mut q| q.status(QMP_TIMEOUT).is_ok().then_some(q));
        let mut qmp = match held {
            Some(q) => Some(q),
            None => match Qmp::connect(&dir.join(QMP_SOCK), connect_timeout) {
                Ok(q) => Some(q),
                Err(e) => {
                    log::warn!(session_id = rec.id.as_str(); "stop: {e}; going on with signals");
                    None
                }
            },
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
        if kill(&p) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_states_map_to_statuses() {
        assert_eq!(status_for("prelaunch"), SessionStatus::Created);
        assert_eq!(status_for("running"), SessionStatus::Running);
        assert_eq!(status_for("paused"), SessionStatus::Stopped);
        assert_eq!(status_for("shutdown"), SessionStatus::Stopped);
        assert!(needs_reset("guest-panicked") && !needs_reset("paused"));
    }
}
