//! LXC provider: sessions are privileged system containers, driven through
//! LXC 5's command-line tools (`lxc-create`, `lxc-start`, `lxc-wait`,
//! `lxc-stop`, `lxc-destroy`, `lxc-attach`, `lxc-info`, `lxc-ls`).
//!
//! Every tool call is an argv run by [`runner::run`] (never a shell
//! string) with a timeout (`lxc.tool_timeout`, or the command's own), and
//! its stderr is kept for the error message.
//!
//! What it owns:
//! - Container `vendetta-{session_id}` under `lxc.lxcpath`, made from the
//!   template named by the session's `image` (default `lxc.template`) and a
//!   config file this module writes ([`config::render_config`]): networking
//!   (`empty` = loopback only, or `veth` on `lxc.bridge`), the workspace
//!   bind-mounted at /workspace, `lxc.environment` for the init, resource
//!   limits in the cgroup keys the host can enforce, and our marker.
//! - The marker: comment lines `# vendetta.managed = true`,
//!   `# vendetta.node = <node id>`, `# vendetta.created = <RFC 3339>` and
//!   `# vendetta.meta = <JSON>` (session id, image, labels, env, command,
//!   warnings) at the top of the container's config. A container without
//!   the marker, or with another node's, is never started, stopped,
//!   attached to or destroyed, whatever its name.
//! - `<lxcpath>/<name>/vendetta-start.log`, the `lxc-start -o` log. Its
//!   existence also tells a never-started container (`created`) from a
//!   stopped one.
//!
//! Environment: the session's env is written as `lxc.environment` lines
//! (the init and its children see it) and passed again with `-v` on every
//! attach, because `lxc-attach --clear-env` starts from an empty
//! environment; the exec's own env overrides it key by key.
//!
//! Exit codes pass through `lxc-attach` (7 -> 7, killed -> 128+signal,
//! exec failure -> 127); its own attach failures (exit 1 with only
//! `lxc-attach: NAME: …` lines on stderr) become provider errors instead.
//!
//! Each file owns one thing:
//! - [`argv`]: the tools' command lines; the template and its arguments.
//! - [`config`]: the config file we render, its marker, and ownership.
//! - [`cgroup`]: the host's cgroup layout and the limit keys it enforces.
//! - [`tool`]: running one lxc tool; [`runner`]: running any host program.
//! - [`lifecycle`]: create, start, stop, destroy, list.
//! - [`attach`]: exec through `lxc-attach`; clean-up after a crash.
//! - [`health`]: tools, root, template, bridge, `lxc-checkconfig`.
//!
//! May not touch: channels, HTTP requests of the local API, the runtime or
//! the coordination link. Syscalls go through [`crate::os`].

pub(crate) mod argv;
pub(crate) mod attach;
pub(crate) mod cgroup;
pub(crate) mod config;
pub(crate) mod health;
pub(crate) mod lifecycle;
pub(crate) mod runner;
pub(crate) mod tool;

use super::{
    ExecOutput, ExecSpec, Health, OutputSink, Provider, ProviderError, Session, SessionSpec,
};
use crate::config::Config;
use crate::os::process::KillTreeError;
use crate::protocol::{ProviderKind, SessionId};
use health::HostProbe;
use runner::ProcessError;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Container names are this prefix plus the session id.
pub(crate) const PREFIX: &str = "vendetta-";
/// The busybox template writes the name as the hostname, which the kernel
/// limits to 64 bytes; a longer name fails inside `lxc-create`.
pub(crate) const MAX_NAME: usize = 64;
/// Where LXC 5 (Debian) keeps its templates, `lxc-<name>`.
pub(crate) const TEMPLATE_DIR: &str = "/usr/share/lxc/templates";
/// The log `lxc-start -o` writes, inside the container's directory.
pub(crate) const START_LOG: &str = "vendetta-start.log";
/// The tools the provider runs.
pub(crate) const TOOLS: [&str; 8] = [
    "lxc-create",
    "lxc-start",
    "lxc-wait",
    "lxc-stop",
    "lxc-destroy",
    "lxc-attach",
    "lxc-info",
    "lxc-ls",
];

/// The LXC provider: containers under `lxc.lxcpath`, marked with this
/// node's id.
pub(crate) struct LxcProvider {
    cfg: crate::config::Lxc,
    node_id: String,
    /// `lxc-checkconfig` and version findings, refreshed every CHECKCONFIG_TTL.
    host_probe: Mutex<Option<(Instant, HostProbe)>>,
}

/// What went wrong in the LXC provider. Messages name the step and its
/// inputs and say what to do.
#[derive(Debug)]
pub(crate) enum LxcError {
    /// The session id cannot become a container name.
    Name { id: String, reason: String },
    /// A request field this provider cannot honour.
    Spec { field: &'static str, reason: String },
    /// Limits the host cannot enforce while `lxc.require_limits` is true,
    /// or a tenant quota counts them (`by_quota`).
    Limits {
        missing: Vec<String>,
        by_quota: bool,
    },
    /// No container of ours for this session.
    Missing { id: String },
    /// The name is taken by a container vendetta (on this node) did not create.
    Foreign { name: String, reason: String },
    /// A session of ours already has this id.
    Exists { id: String },
    /// Exec needs a running container.
    NotRunning { id: String, state: String },
    /// A tool could not be run at all.
    Run { step: String, source: ProcessError },
    /// A tool did not finish in time (it was killed).
    Timeout { step: String, after: Duration },
    /// A tool ran and failed.
    Tool {
        step: String,
        code: Option<i32>,
        stderr: String,
    },
    /// `lxc-start` failed; the cause is from its log.
    Start {
        name: String,
        cause: String,
        log: PathBuf,
    },
    /// A file of ours could not be read or written.
    Io {
        step: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// A process an interrupted exec left running could not be killed.
    Reap {
        pid: u32,
        id: String,
        command_id: String,
        source: KillTreeError,
    },
}

impl fmt::Display for LxcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LxcError::Name { id, reason } => write!(f, "session id {id:?} cannot name an lxc container: {reason}"),
            LxcError::Spec { field, reason } => write!(f, "params.{field}: {reason}"),
            LxcError::Limits { missing, by_quota: false } => write!(
                f,
                "this host cannot enforce {}; lxc.require_limits is true, so the session was not created (drop those resources or set lxc.require_limits: false)",
                missing.join("; ")
            ),
            LxcError::Limits { missing, by_quota: true } => write!(
                f,
                "this host cannot enforce {}, and the tenant's quota counts them, so the session was not created (enable those cgroup controllers on the host)",
                missing.join("; ")
            ),
            LxcError::Missing { id } => write!(f, "no lxc session {id} on this node; `session list` shows the ones there are"),
            LxcError::Foreign { name, reason } => write!(f, "lxc container {name} {reason}; vendetta leaves it alone (pick another session id, or remove it by hand if it is stale)"),
            LxcError::Exists { id } => write!(f, "lxc session {id} already exists; destroy it first or pick another id"),
            LxcError::NotRunning { id, state } => write!(f, "lxc session {id} is not running (state {state}); start it first"),
            LxcError::Run { step, source } => write!(f, "{step}: {source}"),
            LxcError::Timeout { step, after } => write!(f, "{step} did not finish within {} and was killed; raise lxc.tool_timeout or the command timeout", crate::protocol::duration::format(*after)),
            LxcError::Tool { step, code, stderr } => {
                let code = code.map_or("was killed".to_string(), |c| format!("exited {c}"));
                if stderr.is_empty() {
                    write!(f, "{step} {code} with no message")
                } else {
                    write!(f, "{step} {code}: {}", clip(stderr, 2000))
                }
            }
            LxcError::Start { name, cause, log } => write!(f, "lxc-start of {name} failed: {cause} (full log: {})", log.display()),
            LxcError::Io { step, path, source } => write!(f, "{step} {}: {source}", path.display()),
            LxcError::Reap { pid, id, command_id, source } => write!(f, "cannot kill process {pid} left in session {id} by command {command_id}: {source}"),
        }
    }
}

impl std::error::Error for LxcError {}

impl From<LxcError> for ProviderError {
    fn from(e: LxcError) -> ProviderError {
        let m = e.to_string();
        match e {
            LxcError::Name { .. } | LxcError::Spec { .. } | LxcError::Limits { .. } => {
                ProviderError::Invalid(m)
            }
            LxcError::Missing { .. } => ProviderError::NotFound(m),
            LxcError::Foreign { .. } | LxcError::Exists { .. } | LxcError::NotRunning { .. } => {
                ProviderError::Conflict(m)
            }
            LxcError::Run { ref source, .. } if source.is_not_found() => {
                ProviderError::Unavailable(m)
            }
            LxcError::Run { ref source, .. } if source.is_too_long() => ProviderError::Invalid(
                format!("{m}: the command line is too long (each argument and env value must stay under 128 KiB)"),
            ),
            LxcError::Timeout { .. } => ProviderError::Timeout(m),
            LxcError::Run { .. }
            | LxcError::Tool { .. }
            | LxcError::Start { .. }
            | LxcError::Io { .. }
            | LxcError::Reap { .. } => ProviderError::Failed(m),
        }
    }
}

/// At most `max` bytes of `s` (cut at a character boundary): a tool's
/// stderr can be long, an error message should not be.
fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The container name for a session id, checked again here (the id also
/// names a directory): `[a-z0-9][a-z0-9_.-]*` and at most MAX_NAME in all.
pub(crate) fn container_name(id: &str) -> Result<String, LxcError> {
    let bad = |reason: String| LxcError::Name {
        id: id.to_string(),
        reason,
    };
    let first_ok = id
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = id
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'));
    if !first_ok || !rest_ok {
        return Err(bad(format!("it must match {}", SessionId::RULE)));
    }
    let name = format!("{PREFIX}{id}");
    if name.len() > MAX_NAME {
        return Err(bad(format!(
            "{name} is {} bytes, but LXC uses the name as the hostname, which is limited to {MAX_NAME}; use a session id of at most {} characters",
            name.len(),
            MAX_NAME - PREFIX.len()
        )));
    }
    Ok(name)
}

impl LxcProvider {
    pub(crate) fn new(config: &Config, node_id: &str) -> LxcProvider {
        LxcProvider {
            cfg: config.lxc.clone(),
            node_id: node_id.to_string(),
            host_probe: Mutex::new(None),
        }
    }

    /// The directory LXC keeps container `name` in.
    fn dir(&self, name: &str) -> PathBuf {
        self.cfg.lxcpath.join(name)
    }
}

impl Provider for LxcProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Lxc
    }

    fn health(&self) -> Health {
        self.health_now()
    }

    fn create(&self, spec: &SessionSpec) -> Result<Session, ProviderError> {
        Ok(self.do_create(spec)?)
    }

    fn start(&self, id: &SessionId) -> Result<Session, ProviderError> {
        Ok(self.do_start(id.as_str())?)
    }

    fn stop(&self, id: &SessionId, grace: Duration) -> Result<Session, ProviderError> {
        Ok(self.do_stop(id.as_str(), grace)?)
    }

    fn destroy(&self, id: &SessionId) -> Result<bool, ProviderError> {
        Ok(self.do_destroy(id.as_str())?)
    }

    fn exec(
        &self,
        id: &SessionId,
        spec: &ExecSpec,
        sink: &mut dyn OutputSink,
    ) -> Result<ExecOutput, ProviderError> {
        Ok(self.do_exec(id.as_str(), spec, sink)?)
    }

    fn list(&self) -> Result<Vec<Session>, ProviderError> {
        Ok(self.do_list()?)
    }

    fn reap_interrupted(&self, id: &SessionId, command_id: &str) -> Result<usize, ProviderError> {
        Ok(self.reap_tagged(id, command_id)?)
    }

    fn node_ids(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.cfg.lxcpath) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(PREFIX))
            .filter_map(|e| std::fs::read_to_string(e.path().join("config")).ok())
            .map(|text| config::parse_marker(&text))
            .filter(|m| m.managed)
            .filter_map(|m| m.node)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_their_limits() {
        assert_eq!(container_name("web-1").unwrap(), "vendetta-web-1");
        assert_eq!(container_name(&"a".repeat(55)).unwrap().len(), 64);
        let e = container_name(&"a".repeat(56)).unwrap_err();
        assert!(e.to_string().contains("at most 55 characters"), "{e}");
        for hostile in [
            "../etc", "a/b", "", "-x", ".x", "A", "a b", "a;reboot", "a\n",
        ] {
            let e = container_name(hostile).unwrap_err();
            assert!(
                matches!(&e, LxcError::Name { id, .. } if id == hostile),
                "{e:?}"
            );
            assert_eq!(
                e.to_string(),
                format!(
                    "session id {hostile:?} cannot name an lxc container: it must match {}",
                    SessionId::RULE
                )
            );
        }
    }
}
