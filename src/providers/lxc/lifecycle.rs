//! The life cycle of a container: create (template, our config, and on
//! failure nothing left behind), start (with the cause read from the start
//! log when it fails), stop (clean within the grace, then killed), destroy
//! and list, each through the lxc tools and only on containers whose
//! marker says they are ours.

use super::argv::{
    create_argv, destroy_argv, ls_argv, parse_image, start_argv, state_argv, stop_argv, wait_argv,
};
use super::cgroup::{self, limit_lines, CgroupHost};
use super::config::{check_env, render_config, ConfigInput, Meta, Owned};
use super::{container_name, LxcError, LxcProvider, PREFIX, START_LOG, TEMPLATE_DIR};
use crate::protocol::{ProviderKind, SessionId};
use crate::providers::{Session, SessionSpec, SessionStatus};
use std::collections::BTreeMap;
use std::io::{self, Read, Seek};
use std::path::Path;
use std::time::Duration;

/// The useful ERROR lines of an `lxc-start` log, without LXC's generic
/// follow-ups and its harmless `lxc.seccomp` getter noise.
pub(crate) fn start_failure_cause(log: &str) -> String {
    const GENERIC: [&str; 6] = [
        "Unsupported config key",
        "The container failed to start",
        "To get more details",
        "Additional information can be obtained",
        "Received container state",
        "Failed to spawn container",
    ];
    let mut causes: Vec<String> = Vec::new();
    for line in log.lines() {
        let Some((_, rest)) = line.split_once(" ERROR ") else {
            continue;
        };
        // "<module> - <file>:<func>:<line> - <message>"
        let mut parts = rest.splitn(3, " - ");
        let (_module, _location) = (parts.next(), parts.next());
        let Some(message) = parts.next() else {
            continue;
        };
        let message = message.trim().to_string();
        if GENERIC.iter().any(|g| message.contains(g)) || causes.contains(&message) {
            continue;
        }
        causes.push(message);
    }
    if causes.is_empty() {
        "the log names no cause".into()
    } else {
        causes.truncate(4);
        causes.join("; ")
    }
}

/// Session status from an LXC state word and whether it was ever started.
pub(crate) fn status_of(state: &str, ever_started: bool) -> SessionStatus {
    match state {
        "RUNNING" | "STARTING" | "FROZEN" | "FREEZING" | "THAWED" => SessionStatus::Running,
        "STOPPED" if !ever_started => SessionStatus::Created,
        "STOPPED" | "STOPPING" | "ABORTING" => SessionStatus::Stopped,
        _ => SessionStatus::Lost,
    }
}

/// (name, state) rows of `lxc-ls -f -F NAME,STATE`; no containers means no
/// output at all, not even the header.
pub(crate) fn parse_ls(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let name = f.next()?;
            let state = f.next()?;
            (name != "NAME").then(|| (name.to_string(), state.to_string()))
        })
        .collect()
}

impl LxcProvider {
    /// The container's LXC state word (`RUNNING`, `STOPPED`, …) from lxc-info.
    pub(crate) fn state(&self, name: &str) -> Result<String, LxcError> {
        let args = state_argv(&self.cfg.lxcpath, name);
        let out = self.tool("lxc-info", args.clone(), self.cfg.tool_timeout)?;
        if !out.success() {
            return Err(Self::failed("lxc-info", &args, &out));
        }
        Ok(out.stdout_text().trim().to_string())
    }

    /// The session of our container `o` in LXC state `state`.
    pub(crate) fn session(&self, o: &Owned, state: &str) -> Session {
        Session {
            id: o.meta.session.clone(),
            provider: ProviderKind::Lxc,
            status: status_of(state, o.dir.join(START_LOG).exists()),
            image: o.meta.image.clone(),
            ports: BTreeMap::new(),
            created: o.created.clone(),
            labels: o.meta.labels.clone(),
            exit_code: None,
            warnings: o.meta.warnings.clone(),
        }
    }

    /// After a failed create: removes what lxc-create left. Only called
    /// when the directory did not exist before this create began, so a
    /// directory there now is this create's: with our marker it goes
    /// through lxc-destroy; without a config yet (killed mid-template) it
    /// is removed directly; a config without our marker is left alone.
    fn cleanup_failed_create(&self, id: &str, name: &str) -> String {
        let dir = self.dir(name);
        if !dir.exists() {
            return String::new();
        }
        match self.owned(id) {
            Ok(_) => {
                let args = destroy_argv(&self.cfg.lxcpath, name);
                match self.tool("lxc-destroy", args, self.cfg.tool_timeout) {
                    Ok(o) if o.success() => String::new(),
                    _ => format!("; the partial container {} could not be removed: run lxc-destroy -P {} -n {name} -f", dir.display(), self.cfg.lxcpath.display()),
                }
            }
            Err(LxcError::Missing { .. }) => match std::fs::remove_dir_all(&dir) {
                Ok(()) => String::new(),
                Err(e) => format!(
                    "; the partial directory {} could not be removed ({e}); remove it by hand",
                    dir.display()
                ),
            },
            Err(_) => format!(
                "; a partial directory {} without our marker was left; remove it by hand",
                dir.display()
            ),
        }
    }

    /// Checks the request, then makes the container from its template with
    /// our config; a failed create leaves nothing of its own behind.
    pub(crate) fn do_create(&self, spec: &SessionSpec) -> Result<Session, LxcError> {
        let id = spec.id.as_str();
        let name = container_name(id)?;
        let image = spec
            .image
            .clone()
            .unwrap_or_else(|| self.cfg.template.clone());
        let template = parse_image(&image, &self.cfg.template_args)?;
        let template_file = Path::new(TEMPLATE_DIR).join(format!("lxc-{}", template.name));
        if !template_file.exists() {
            return Err(LxcError::Spec {
                field: "image",
                reason: format!(
                    "there is no lxc template {:?} ({} does not exist; Debian ships them in lxc-templates)",
                    template.name,
                    template_file.display()
                ),
            });
        }
        if !spec.ports.is_empty() {
            return Err(LxcError::Spec {
                field: "ports",
                reason: "the lxc provider does not publish ports; reach the container over lxc.network: veth, or use the docker provider".into(),
            });
        }
        check_env("env", &spec.env)?;
        if let Some(cmd) = &spec.command {
            if cmd.is_empty() || cmd[0].is_empty() {
                return Err(LxcError::Spec {
                    field: "command",
                    reason: "must be a non-empty argv array".into(),
                });
            }
        }
        let host = CgroupHost::detect();
        let (limits, missing) = limit_lines(&spec.resources, &host);
        if !missing.is_empty() && (self.cfg.require_limits || spec.limits_must_hold) {
            return Err(LxcError::Limits {
                missing,
                by_quota: !self.cfg.require_limits,
            });
        }
        let warnings: Vec<String> = missing
            .iter()
            .map(|m| format!("not enforced: {m}"))
            .collect();
        for w in &warnings {
            log::warn!(session_id = id; "lxc session {id}: {w}");
        }
        // The name must be free, and a container we did not make is left alone.
        match self.owned(id) {
            Ok(_) => return Err(LxcError::Exists { id: id.to_string() }),
            Err(LxcError::Missing { .. }) => {}
            Err(e) => return Err(e),
        }
        if self.dir(&name).exists() {
            return Err(LxcError::Foreign {
                name,
                reason: "exists as a directory without a config".into(),
            });
        }
        let created = crate::protocol::time::now_rfc3339();
        let meta = Meta {
            session: id.to_string(),
            image: image.clone(),
            labels: spec.labels.clone(),
            env: spec.env.clone(),
            command: spec.command.clone(),
            workspace: spec.workspace.is_some(),
            warnings,
        };
        let text = render_config(&ConfigInput {
            node_id: &self.node_id,
            created: &created,
            meta: &meta,
            network: self.cfg.network,
            bridge: &self.cfg.bridge,
            workspace: spec.workspace.as_deref(),
            limits: &limits,
        });
        let conf = self.write_temp_config(&name, &text)?;
        let args = create_argv(&self.cfg.lxcpath, &name, &template, &conf.0);
        let result = self.tool("lxc-create", args.clone(), spec.timeout);
        drop(conf);
        match result {
            Ok(out) if out.success() => {}
            Ok(out) if out.stderr_text().contains("already exists") => {
                // Someone else made it meanwhile; it is not ours to clean.
                return Err(LxcError::Exists { id: id.to_string() });
            }
            Ok(out) => {
                let mut e = Self::failed("lxc-create", &args, &out);
                if let LxcError::Tool { stderr, .. } = &mut e {
                    stderr.push_str(&self.cleanup_failed_create(id, &name));
                }
                return Err(e);
            }
            Err(e) => {
                let left = self.cleanup_failed_create(id, &name);
                if !left.is_empty() {
                    log::warn!(session_id = id; "after a failed lxc-create{left}");
                }
                return Err(e);
            }
        }
        let owned = self.owned(id)?;
        Ok(self.session(&owned, "STOPPED"))
    }

    /// Starts it (a running one is left so) and waits until it runs or its
    /// main command has already ended.
    pub(crate) fn do_start(&self, id: &str) -> Result<Session, LxcError> {
        let o = self.owned(id)?;
        let lxcpath = &self.cfg.lxcpath;
        if self.state(&o.name)? == "RUNNING" {
            // lxc-start would say "already running" and exit 0 anyway.
            return Ok(self.session(&o, "RUNNING"));
        }
        let log = o.dir.join(START_LOG);
        let offset = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let args = start_argv(lxcpath, &o.name, &log, o.meta.command.as_deref());
        let out = self.tool("lxc-start", args.clone(), self.cfg.tool_timeout)?;
        if !out.success() {
            let tail = read_from(&log, offset);
            let cause = if tail.trim().is_empty() {
                out.stderr_text()
            } else {
                start_failure_cause(&tail)
            };
            cgroup::remove_leftovers(&o.name);
            return Err(LxcError::Start {
                name: o.name,
                cause,
                log,
            });
        }
        // lxc-start -d returns once RUNNING was reached, but a main command
        // may already have ended: wait for either state, then read it.
        let secs = self.cfg.tool_timeout.as_secs().max(1);
        let args = wait_argv(lxcpath, &o.name, "RUNNING|STOPPED", secs);
        let out = self.tool(
            "lxc-wait",
            args.clone(),
            self.cfg.tool_timeout + Duration::from_secs(5),
        )?;
        if !out.success() {
            return Err(Self::failed("lxc-wait", &args, &out));
        }
        let state = self.state(&o.name)?;
        Ok(self.session(&o, &state))
    }

    /// A clean stop within `grace`, killed when it hangs; stopping a
    /// stopped one succeeds.
    pub(crate) fn do_stop(&self, id: &str, grace: Duration) -> Result<Session, LxcError> {
        let o = self.owned(id)?;
        let args = stop_argv(&self.cfg.lxcpath, &o.name, grace);
        let timeout = grace + self.cfg.tool_timeout;
        let out = match self.tool("lxc-stop", args.clone(), timeout) {
            Ok(out) => out,
            Err(LxcError::Timeout { .. }) if !grace.is_zero() => {
                // The clean stop hung: kill it.
                let k = stop_argv(&self.cfg.lxcpath, &o.name, Duration::ZERO);
                self.tool("lxc-stop", k, self.cfg.tool_timeout)?
            }
            Err(e) => return Err(e),
        };
        match out.code() {
            // 2: "exists but was not running": stopping a stopped one succeeds.
            Some(0) | Some(2) => {}
            _ => {
                let state = self.state(&o.name)?;
                if state != "STOPPED" {
                    return Err(Self::failed("lxc-stop", &args, &out));
                }
            }
        }
        Ok(self.session(&o, "STOPPED"))
    }

    /// Destroys our container; false when there was none.
    pub(crate) fn do_destroy(&self, id: &str) -> Result<bool, LxcError> {
        let o = match self.owned(id) {
            Ok(o) => o,
            Err(LxcError::Missing { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        let args = destroy_argv(&self.cfg.lxcpath, &o.name);
        let out = self.tool("lxc-destroy", args.clone(), self.cfg.tool_timeout)?;
        if !out.success() {
            if out.stderr_text().contains("not defined") {
                return Ok(false); // destroyed meanwhile
            }
            return Err(Self::failed("lxc-destroy", &args, &out));
        }
        cgroup::remove_leftovers(&o.name);
        Ok(true)
    }

    /// Our containers on this node; anything else `lxc-ls` shows is skipped.
    pub(crate) fn do_list(&self) -> Result<Vec<Session>, LxcError> {
        let args = ls_argv(&self.cfg.lxcpath);
        let out = self.tool("lxc-ls", args.clone(), self.cfg.tool_timeout)?;
        if !out.success() {
            return Err(Self::failed("lxc-ls", &args, &out));
        }
        let mut sessions = Vec::new();
        for (name, state) in parse_ls(&out.stdout_text()) {
            let Some(id) = name.strip_prefix(PREFIX) else {
                continue;
            };
            if SessionId::parse(id).is_err() {
                continue;
            }
            match self.owned(id) {
                Ok(o) => sessions.push(self.session(&o, &state)),
                Err(e) => log::debug!("lxc list skips {name}: {e}"),
            }
        }
        Ok(sessions)
    }
}

/// The part of a log written after `offset` (at most 64 KiB of it).
fn read_from(path: &Path, offset: u64) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    if f.seek(io::SeekFrom::Start(offset)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(64 * 1024).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_log_causes() {
        let log = r#"lxc-start t1 20261127032423.601 ERROR    network - ../src/lxc/network.c:netdev_configure_server_veth:711 - No such file or directory - Failed to attach "vethe5rBQ5" to bridge "nobr0", bridge interface doesn't exist
lxc-start t1 20261127032423.768 ERROR    network - ../src/lxc/network.c:lxc_create_network_priv:3427 - No such file or directory - Failed to create network device
lxc-start t1 20261127032423.769 ERROR    lxccontainer - ../src/lxc/lxccontainer.c:wait_on_daemonized_start:878 - Received container state "ABORTING" instead of "RUNNING"
lxc-start t1 20261127032423.770 ERROR    lxc_start - ../src/lxc/tools/lxc_start.c:main:306 - The container failed to start
lxc-start t1 20261127031744.677 ERROR    confile - ../src/lxc/confile.c:get_config_unsupported_key:170 - Invalid argument - Unsupported config key "lxc.seccomp"
lxc-start t1 20261127032423.779 WARN     start - ../src/lxc/start.c:lxc_abort:1036 - No such process - Failed to send SIGKILL"#;
        assert_eq!(
            start_failure_cause(log),
            "No such file or directory - Failed to attach \"vethe5rBQ5\" to bridge \"nobr0\", bridge interface doesn't exist; No such file or directory - Failed to create network device"
        );
        assert_eq!(start_failure_cause(""), "the log names no cause");
    }

    #[test]
    fn states_and_listings() {
        assert_eq!(status_of("RUNNING", true), SessionStatus::Running);
        assert_eq!(status_of("STOPPED", false), SessionStatus::Created);
        assert_eq!(status_of("STOPPED", true), SessionStatus::Stopped);
        assert_eq!(status_of("ABORTING", true), SessionStatus::Stopped);
        assert_eq!(status_of("??", true), SessionStatus::Lost);
        let out = "NAME           STATE   \nvendetta-a     RUNNING \nvendetta-b.c   STOPPED \n";
        assert_eq!(
            parse_ls(out),
            [
                ("vendetta-a".to_string(), "RUNNING".to_string()),
                ("vendetta-b.c".to_string(), "STOPPED".to_string())
            ]
        );
        assert!(parse_ls("").is_empty());
    }
}
