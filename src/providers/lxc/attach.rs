//! Exec in a container: `lxc-attach` with a cleared environment (the
//! session's env and the exec's own passed again with `-v`), a numeric
//! user, the working directory entered by a tiny sh that interprets none
//! of its arguments, and LXC's own attach failures told from a command
//! that exited 1. Exit codes pass through (7 -> 7, killed -> 128+signal,
//! exec failure -> 127). After an agent crash, what an attach left
//! running is found by its tag in the container's payload cgroup.

use super::argv::{base_args, os};
use super::lifecycle::status_of;
use super::runner::{self, Outcome};
use super::{container_name, LxcError, LxcProvider, START_LOG};
use crate::os::process;
use crate::protocol::SessionId;
use crate::providers::{ExecOutput, ExecSpec, OutputSink};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

/// A shell snippet that enters a directory and runs its arguments: the
/// directory and the argv arrive as positional parameters, never spliced
/// into the script, so nothing in them is interpreted.
const CD_WRAPPER: &str = r#"cd -- "$1" 2>/dev/null || { printf 'vendetta: workdir %s does not exist or is not a directory in the container\n' "$1" >&2; exit 126; }; shift; exec "$@""#;

/// `lxc-attach -P path -n name --clear-env [-u uid -g gid] [-v K=V]… --
/// [sh -c CD_WRAPPER vendetta-exec DIR] argv…`
pub(crate) fn attach_argv(
    lxcpath: &Path,
    name: &str,
    env: &BTreeMap<String, String>,
    user: Option<(u32, u32)>,
    workdir: Option<&str>,
    argv: &[String],
) -> Vec<OsString> {
    let mut a = base_args(lxcpath, name);
    // Without --clear-env the agent's own environment leaks in.
    a.push(os("--clear-env"));
    if let Some((uid, gid)) = user {
        a.extend([os("-u"), os(uid.to_string()), os("-g"), os(gid.to_string())]);
    }
    for (k, v) in env {
        a.extend([os("-v"), os(format!("{k}={v}"))]);
    }
    a.push(os("--"));
    // lxc-attach has no working-directory flag: a tiny sh enters it.
    if let Some(dir) = workdir.filter(|d| *d != "/") {
        a.extend([
            os("/bin/sh"),
            os("-c"),
            os(CD_WRAPPER),
            os("vendetta-exec"),
            os(dir),
        ]);
    }
    a.extend(argv.iter().map(os));
    a
}

/// Parses an exec `user`: `uid`, `uid:gid`, or `root`. Names other than
/// root would need the container's passwd file; lxc-attach takes numbers.
pub(crate) fn parse_user(user: &str) -> Result<(u32, u32), LxcError> {
    let bad = || LxcError::Spec {
        field: "user",
        reason: format!(
            "{user:?} is not a numeric uid or uid:gid (the lxc provider takes numbers, or root)"
        ),
    };
    if user == "root" {
        return Ok((0, 0));
    }
    match user.split_once(':') {
        Some((u, g)) => Ok((u.parse().map_err(|_| bad())?, g.parse().map_err(|_| bad())?)),
        None => {
            let u: u32 = user.parse().map_err(|_| bad())?;
            Ok((u, u))
        }
    }
}

/// How a finished `lxc-attach` is read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AttachVerdict {
    /// The command ran; its exit code.
    Ran(i32),
    /// LXC itself could not attach (exit 1 and only its own messages).
    NotAttached(String),
}

/// Tells LXC's attach failures from a command that exited 1: LXC prints
/// only `lxc-attach: NAME: …` lines and the command never ran.
pub(crate) fn classify_attach(code: i32, stderr: &str, name: &str) -> AttachVerdict {
    let prefix = format!("lxc-attach: {name}: ");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    if code == 1 && !lines.is_empty() && lines.iter().all(|l| l.starts_with(&prefix)) {
        AttachVerdict::NotAttached(lines.join("; "))
    } else {
        AttachVerdict::Ran(code)
    }
}

impl LxcProvider {
    /// [`Provider::exec`](crate::providers::Provider::exec): the session's
    /// env under the exec's own, the workspace as the default workdir.
    pub(crate) fn do_exec(
        &self,
        id: &str,
        spec: &ExecSpec,
        sink: &mut dyn OutputSink,
    ) -> Result<ExecOutput, LxcError> {
        let o = self.owned(id)?;
        if spec.argv.is_empty() || spec.argv[0].is_empty() {
            return Err(LxcError::Spec {
                field: "command",
                reason: "must be a non-empty argv array".into(),
            });
        }
        // Exec env goes as `-v K=V` arguments, which carry any byte but NUL
        // (the protocol refuses NUL), so it needs none of check_env's rules.
        let user = spec.user.as_deref().map(parse_user).transpose()?;
        let mut env = o.meta.env.clone();
        env.extend(spec.env.clone());
        let default_dir = if o.meta.workspace { "/workspace" } else { "/" };
        let workdir = spec.workdir.as_deref().unwrap_or(default_dir);
        let args = attach_argv(
            &self.cfg.lxcpath,
            &o.name,
            &env,
            user,
            Some(workdir),
            &spec.argv,
        );
        let step = format!("lxc-attach -n {}", o.name);
        let mut cmd = runner::command("lxc-attach", args);
        // The attached process keeps our cwd when it exists in the
        // container; "/" always does, and leaks nothing of the host.
        cmd.current_dir("/").env("LC_ALL", "C");
        let out = runner::run(
            &mut cmd,
            spec.stdin.as_deref(),
            spec.timeout,
            spec.max_output,
            sink,
        )
        .map_err(|source| LxcError::Run {
            step: step.clone(),
            source,
        })?;
        log::debug!("{step} exited {:?} in {:?}", out.code(), out.elapsed);
        if out.timed_out {
            log::info!(session_id = id; "exec timed out after {:?}; its process group was killed", spec.timeout);
            return Ok(exec_output(out, None));
        }
        let code = out.code().unwrap_or(-1);
        match classify_attach(code, &out.stderr_text(), &o.name) {
            AttachVerdict::Ran(code) => Ok(exec_output(out, Some(code))),
            AttachVerdict::NotAttached(message) => {
                let state = self.state(&o.name).unwrap_or_else(|_| "unknown".into());
                if state != "RUNNING" {
                    Err(LxcError::NotRunning {
                        id: id.to_string(),
                        state: status_of(&state, o.dir.join(START_LOG).exists())
                            .as_str()
                            .to_string(),
                    })
                } else {
                    Err(LxcError::Tool {
                        step,
                        code: Some(code),
                        stderr: message,
                    })
                }
            }
        }
    }

    /// What `lxc-attach` started lives on in the container when the agent
    /// (and lxc-attach with it, or not) dies: found by its tag among the
    /// processes in the container's payload cgroup.
    pub(crate) fn reap_tagged(&self, id: &SessionId, command_id: &str) -> Result<usize, LxcError> {
        let dir = format!("lxc.payload.{}", container_name(id.as_str())?);
        let tag = format!("{}={command_id}", crate::providers::COMMAND_ID_ENV);
        let inside = |pid| process::cgroup_has_dir(pid, &dir);
        let roots: Vec<u32> = process::tagged(&tag)
            .into_iter()
            .filter(|p| inside(*p))
            .collect();
        for pid in &roots {
            let killed = process::kill_tree(*pid, &inside).map_err(|source| LxcError::Reap {
                pid: *pid,
                id: id.to_string(),
                command_id: command_id.to_string(),
                source,
            })?;
            log::info!(command_id = command_id, pid = *pid, killed = killed; "stopped a process left running by the agent's restart");
        }
        Ok(roots.len())
    }
}

/// What the runner saw, as the provider reports it; `code` is None after a
/// timeout.
fn exec_output(out: Outcome, code: Option<i32>) -> ExecOutput {
    ExecOutput {
        exit_code: code,
        stdout_truncated: out.stdout.truncated(),
        stderr_truncated: out.stderr.truncated(),
        timed_out: out.timed_out,
        stdout: out.stdout.data,
        stderr: out.stderr.data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(v: &[OsString]) -> Vec<String> {
        v.iter().map(|s| s.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn attach_argv_clears_env_and_keeps_user_input_as_arguments() {
        let p = Path::new("/var/lib/lxc");
        let env: BTreeMap<String, String> = [("A".to_string(), "x y=z".to_string())].into();
        let argv = vec!["echo".to_string(), "$(reboot)".to_string()];
        let a = strs(&attach_argv(
            p,
            "n",
            &env,
            Some((65534, 65534)),
            Some("/"),
            &argv,
        ));
        assert_eq!(
            a,
            [
                "-P",
                "/var/lib/lxc",
                "-n",
                "n",
                "--clear-env",
                "-u",
                "65534",
                "-g",
                "65534",
                "-v",
                "A=x y=z",
                "--",
                "echo",
                "$(reboot)"
            ]
        );
        let a = strs(&attach_argv(
            p,
            "n",
            &BTreeMap::new(),
            None,
            Some("/tmp/d'ir"),
            &argv,
        ));
        assert_eq!(&a[5..7], ["--", "/bin/sh"]);
        assert_eq!(a[8], CD_WRAPPER);
        assert_eq!(a[9..], ["vendetta-exec", "/tmp/d'ir", "echo", "$(reboot)"]);
    }

    #[test]
    fn the_workdir_wrapper_interprets_nothing() {
        // Run the wrapper on the host's sh with hostile arguments.
        let dir = std::env::temp_dir().join(format!("vt lxc '$(x)' {}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", CD_WRAPPER, "vendetta-exec"])
            .arg(&dir)
            .args([
                "sh",
                "-c",
                "pwd; printf '%s|' \"$@\"",
                "x",
                "a b",
                "$(echo no)",
                "*",
                "'",
            ])
            .output()
            .unwrap();
        let _ = std::fs::remove_dir(&dir);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{}\na b|$(echo no)|*|'|", dir.display())
        );
        let out = std::process::Command::new("/bin/sh")
            .args([
                "-c",
                CD_WRAPPER,
                "vendetta-exec",
                "/nonexistent dir",
                "true",
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(126));
        assert!(String::from_utf8_lossy(&out.stderr)
            .contains("workdir /nonexistent dir does not exist"));
    }

    #[test]
    fn users() {
        assert_eq!(parse_user("root").unwrap(), (0, 0));
        assert_eq!(parse_user("1000").unwrap(), (1000, 1000));
        assert_eq!(parse_user("1000:50").unwrap(), (1000, 50));
        for bad in ["nobody", "1:x", "-1", ""] {
            let e = parse_user(bad).unwrap_err();
            assert!(matches!(e, LxcError::Spec { field: "user", .. }), "{e:?}");
            assert_eq!(
                e.to_string(),
                format!("params.user: {bad:?} is not a numeric uid or uid:gid (the lxc provider takes numbers, or root)")
            );
        }
    }

    #[test]
    fn attach_failures_are_told_from_exit_1() {
        let lxc = "lxc-attach: vendetta-a: ../src/lxc/attach.c: get_attach_context: 406 Connection refused - Failed to get init pid\nlxc-attach: vendetta-a: ../src/lxc/attach.c: lxc_attach: 1470 Connection refused - Failed to get attach context\n";
        assert!(
            matches!(classify_attach(1, lxc, "vendetta-a"), AttachVerdict::NotAttached(m) if m.contains("Failed to get init pid"))
        );
        assert_eq!(classify_attach(1, "", "vendetta-a"), AttachVerdict::Ran(1));
        assert_eq!(
            classify_attach(1, "grep: no match\n", "vendetta-a"),
            AttachVerdict::Ran(1)
        );
        assert_eq!(classify_attach(7, lxc, "vendetta-a"), AttachVerdict::Ran(7));
        // The command's own stderr mixed in: it ran.
        let mixed = format!("{lxc}oops\n");
        assert_eq!(
            classify_attach(1, &mixed, "vendetta-a"),
            AttachVerdict::Ran(1)
        );
        // Another container's name is not LXC talking about ours.
        assert_eq!(classify_attach(1, lxc, "vendetta-b"), AttachVerdict::Ran(1));
    }
}
