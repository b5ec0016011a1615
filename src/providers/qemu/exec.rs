//! Exec in a VM through the guest agent: the command, its env and workdir
//! mapped onto `guest-exec` (which has neither user nor working directory),
//! one exec at a time per session (qemu-ga serves one client at a time),
//! and the clean-up in the guest after an agent crash cut an exec off.

use super::lifecycle::{LIST_LOCK_WAIT, LIST_QMP_TIMEOUT};
use super::qga::{ExecRequest, Qga};
use super::record::QGA_SOCK;
use super::{lock_within, QemuError, QemuProvider};
use crate::protocol::SessionId;
use crate::providers::output::Discard;
use crate::providers::{ExecOutput, ExecSpec, OutputSink, SessionStatus};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

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
/// PATH given to guest commands whose env replaces the agent's.
const GUEST_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl QemuProvider {
    /// [`Provider::exec`](crate::providers::Provider::exec). The session's
    /// status is read under its lock when that comes soon; a long operation
    /// under way (stop, start) is not waited for: the record decides.
    pub(crate) fn exec_in_guest(
        &self,
        id: &SessionId,
        spec: &ExecSpec,
        sink: &mut dyn OutputSink,
    ) -> Result<ExecOutput, QemuError> {
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
                    None => return Err(QemuError::NotFound { id: id.into() }),
                },
                // A long operation (stop, start) is under way: go by the record.
                None => rec,
            }
        };
        if rec.status != SessionStatus::Running {
            return Err(QemuError::NotRunning {
                id: id.into(),
                status: rec.status,
            });
        }
        if !Self::has_buses(&rec.launch) {
            return Err(QemuError::Invalid(format!(
                "qemu session {id} runs machine none, which has no guest agent port; exec needs a machine with PCI such as q35 (qemu.machine)"
            )));
        }
        if spec.user.is_some() {
            return Err(QemuError::Invalid(
                "params.user is not supported by the qemu provider: the guest agent runs commands as its own user (root)".into(),
            ));
        }
        let Some((program, rest)) = spec.argv.split_first() else {
            return Err(QemuError::Invalid("params.command is empty".into()));
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
            });
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
        qga.exec(&req, sink).map_err(qga_err)
    }

    /// qemu-ga keeps a guest-exec'd process running when the agent dies.
    /// The guest agent cannot look processes up, so a small shell script
    /// in the guest kills those whose environment carries the tag (their
    /// children inherit it). Needs sh, tr and grep in the guest; without
    /// them the check fails and the result says so.
    pub(crate) fn reap_in_guest(
        &self,
        id: &SessionId,
        command_id: &str,
    ) -> Result<usize, QemuError> {
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
                format!("{}={command_id}", crate::providers::COMMAND_ID_ENV),
            ],
            env: BTreeMap::new(),
            workdir: None,
            user: None,
            stdin: None,
            timeout: REAP_TIMEOUT,
            max_output: 4096,
        };
        let out = self.exec_in_guest(id, &spec, &mut Discard)?;
        let text = String::from_utf8_lossy(&out.stdout);
        match (out.exit_code, text.trim().parse::<usize>()) {
            (Some(0), Ok(n)) => Ok(n),
            _ => Err(QemuError::Reap {
                exit_code: out.exit_code,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            }),
        }
    }
}
