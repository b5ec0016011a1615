//! LXC provider: sessions are privileged system containers, driven through
//! LXC 5's command-line tools (`lxc-create`, `lxc-start`, `lxc-wait`,
//! `lxc-stop`, `lxc-destroy`, `lxc-attach`, `lxc-info`, `lxc-ls`).
//!
//! Every tool call is an argv run by [`process::run`] (never a shell
//! string) with a timeout (`lxc.tool_timeout`, or the command's own), and
//! its stderr is kept for the error message.
//!
//! What it owns:
//! - Container `vendetta-{session_id}` under `lxc.lxcpath`, made from the
//!   template named by the session's `image` (default `lxc.template`) and a
//!   config file this module writes ([`render_config`]): networking
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

pub(crate) mod process;

use super::{
    probe, ExecOutput, ExecSpec, Health, OutputSink, Provider, ProviderError, Session, SessionSpec,
    SessionStatus,
};
use crate::config::{self, Config, LxcNetwork};
use crate::os::process as proctree;
use crate::protocol::command::Resources;
use crate::protocol::{ProviderKind, SessionId};
use process::{Outcome, ProcessError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
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
const MARKER: &str = "# vendetta.managed = true";
const NODE_KEY: &str = "# vendetta.node = ";
const CREATED_KEY: &str = "# vendetta.created = ";
const META_KEY: &str = "# vendetta.meta = ";
/// Enough of a tool's output for parsing and error messages.
const TOOL_OUTPUT: usize = 256 * 1024;
/// How long `lxc-checkconfig` findings are reused by the health probe.
const CHECKCONFIG_TTL: Duration = Duration::from_secs(600);
/// CFS period for `cpus` limits, in µs (the kernel default).
const CPU_PERIOD_US: u64 = 100_000;
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
/// A shell snippet that enters a directory and runs its arguments: the
/// directory and the argv arrive as positional parameters, never spliced
/// into the script, so nothing in them is interpreted.
const CD_WRAPPER: &str = r#"cd -- "$1" 2>/dev/null || { printf 'vendetta: workdir %s does not exist or is not a directory in the container\n' "$1" >&2; exit 126; }; shift; exec "$@""#;

pub(crate) struct LxcProvider {
    cfg: config::Lxc,
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
    /// Limits the host cannot enforce while `lxc.require_limits` is true.
    Limits { missing: Vec<String> },
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
}

impl fmt::Display for LxcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LxcError::Name { id, reason } => write!(f, "session id {id:?} cannot name an lxc container: {reason}"),
            LxcError::Spec { field, reason } => write!(f, "params.{field}: {reason}"),
            LxcError::Limits { missing } => write!(
                f,
                "this host cannot enforce {}; lxc.require_limits is true, so the session was not created (drop those resources or set lxc.require_limits: false)",
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
            | LxcError::Io { .. } => ProviderError::Failed(m),
        }
    }
}

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

/// The session's record, kept in the container config as one JSON line.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Meta {
    pub(crate) session: String,
    pub(crate) image: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) command: Option<Vec<String>>,
    /// Whether /workspace is bind-mounted (then it is the default workdir).
    pub(crate) workspace: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) warnings: Vec<String>,
}

/// What the marker lines of a config say.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Marker {
    pub(crate) managed: bool,
    pub(crate) node: Option<String>,
    pub(crate) created: Option<String>,
    pub(crate) meta: Option<Meta>,
    /// The meta line was there but could not be parsed.
    pub(crate) meta_garbled: bool,
}

/// Reads the marker lines from a container config.
pub(crate) fn parse_marker(config: &str) -> Marker {
    let mut m = Marker::default();
    for line in config.lines() {
        let line = line.trim_end();
        if line == MARKER {
            m.managed = true;
        } else if let Some(v) = line.strip_prefix(NODE_KEY) {
            m.node = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix(CREATED_KEY) {
            m.created = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix(META_KEY) {
            match serde_json::from_str::<Meta>(v) {
                Ok(meta) => m.meta = Some(meta),
                Err(_) => m.meta_garbled = true,
            }
        }
    }
    m
}

/// Decides whether a container is ours: marked, by this node, for this id.
pub(crate) fn ownership(
    marker: &Marker,
    node_id: &str,
    id: &str,
    name: &str,
) -> Result<(Meta, String), LxcError> {
    let foreign = |reason: String| LxcError::Foreign {
        name: name.to_string(),
        reason,
    };
    if !marker.managed {
        return Err(foreign(
            "was not created by vendetta (no marker in its config)".into(),
        ));
    }
    match marker.node.as_deref() {
        Some(n) if n == node_id => {}
        Some(n) => {
            return Err(foreign(format!(
                "belongs to vendetta node {n}, not this node ({node_id})"
            )))
        }
        None => return Err(foreign("has a vendetta marker without a node id".into())),
    }
    let mut meta = marker.meta.clone().unwrap_or_default();
    if marker.meta_garbled || marker.meta.is_none() {
        meta.session = id.to_string();
        meta.warnings.push(
            "the vendetta metadata in the container config is unreadable; image, labels and env are unknown".into(),
        );
    }
    if meta.session != id {
        return Err(foreign(format!(
            "is marked for session {:?}, not {id:?}",
            meta.session
        )));
    }
    Ok((meta, marker.created.clone().unwrap_or_default()))
}

/// A template name plus the arguments a create passes to it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Template {
    pub(crate) name: String,
    pub(crate) args: Vec<String>,
}

/// Parses `image`: a template name, optionally followed by template
/// arguments (`download --dist debian --release bookworm --arch amd64`).
/// Each option must be in `allowed` (lxc.template_args); values are plain
/// words (letters, digits, `._:/+,@-`, not starting with `-`).
pub(crate) fn parse_image(image: &str, allowed: &[String]) -> Result<Template, LxcError> {
    let bad = |reason: String| LxcError::Spec {
        field: "image",
        reason,
    };
    let mut words = image.split_whitespace();
    let name = words
        .next()
        .ok_or_else(|| bad("names no lxc template".into()))?;
    let name_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !name_ok || name.len() > 64 {
        return Err(bad(format!(
            "{name:?} is not an lxc template name (lower-case letters, digits, - and _)"
        )));
    }
    let args: Vec<String> = words.map(str::to_string).collect();
    if args.len() > 32 {
        return Err(bad("at most 32 template arguments".into()));
    }
    let value_ok = |v: &str| {
        !v.starts_with('-')
            && !v.is_empty()
            && v.len() <= 256
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._:/+,@-".contains(c))
    };
    let mut expect_value = false;
    for a in &args {
        if a.starts_with('-') {
            let (flag, value) = match a.split_once('=') {
                Some((f, v)) => (f, Some(v)),
                None => (a.as_str(), None),
            };
            if !allowed.iter().any(|x| x == flag) {
                return Err(bad(format!(
                    "template argument {flag:?} is not allowed; lxc.template_args allows {}",
                    if allowed.is_empty() {
                        "none".to_string()
                    } else {
                        allowed.join(", ")
                    }
                )));
            }
            if let Some(v) = value {
                if !value_ok(v) {
                    return Err(bad(format!(
                        "template argument value {v:?} is not a plain word"
                    )));
                }
            }
            expect_value = value.is_none();
        } else {
            if !expect_value {
                return Err(bad(format!(
                    "template argument {a:?} follows no allowed option"
                )));
            }
            if !value_ok(a) {
                return Err(bad(format!(
                    "template argument value {a:?} is not a plain word"
                )));
            }
            expect_value = false;
        }
    }
    Ok(Template {
        name: name.to_string(),
        args,
    })
}

/// How the host's cgroups are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CgroupMode {
    /// cgroup v2 only (`/sys/fs/cgroup` is cgroup2fs): `lxc.cgroup2.*`.
    Unified,
    /// v1 controllers with a v2 hierarchy beside them: `lxc.cgroup.*`.
    Hybrid,
    /// v1 only: `lxc.cgroup.*`.
    Legacy,
    /// No cgroup file system found.
    None,
}

impl CgroupMode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CgroupMode::Unified => "unified (v2)",
            CgroupMode::Hybrid => "hybrid (v1 controllers + v2)",
            CgroupMode::Legacy => "legacy (v1)",
            CgroupMode::None => "none",
        }
    }
}

/// Which limits the host can enforce, and in which key family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CgroupHost {
    pub(crate) mode: CgroupMode,
    pub(crate) memory: bool,
    pub(crate) cpu: bool,
    pub(crate) pids: bool,
}

impl CgroupHost {
    /// Looks at /sys/fs/cgroup: its file system type (cgroup2fs = unified),
    /// then which controllers are there.
    pub(crate) fn detect() -> CgroupHost {
        CgroupHost::detect_at(Path::new("/sys/fs/cgroup"))
    }

    fn detect_at(root: &Path) -> CgroupHost {
        const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
        let fs_type = statfs_type(root);
        if fs_type == Some(CGROUP2_SUPER_MAGIC) {
            let controllers =
                std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
            let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
            return CgroupHost {
                mode: CgroupMode::Unified,
                memory: has("memory"),
                cpu: has("cpu"),
                pids: has("pids"),
            };
        }
        if fs_type.is_none() {
            return CgroupHost {
                mode: CgroupMode::None,
                memory: false,
                cpu: false,
                pids: false,
            };
        }
        let v2_beside = statfs_type(&root.join("unified")) == Some(CGROUP2_SUPER_MAGIC);
        // A controller works in v1 when it is enabled and attached to a
        // v1 hierarchy (a non-zero hierarchy id in /proc/cgroups). The
        // root cgroup has no pids.max, so files there prove little.
        let v1 = v1_controllers(&std::fs::read_to_string("/proc/cgroups").unwrap_or_default());
        let exists = |p: &str| root.join(p).exists();
        CgroupHost {
            mode: if v2_beside {
                CgroupMode::Hybrid
            } else {
                CgroupMode::Legacy
            },
            memory: v1.contains(&"memory".to_string()),
            // CFS bandwidth control (the quota file) is a kernel option.
            cpu: v1.contains(&"cpu".to_string())
                && (exists("cpu/cpu.cfs_quota_us") || exists("cpu,cpuacct/cpu.cfs_quota_us")),
            pids: v1.contains(&"pids".to_string()),
        }
    }
}

/// Controllers enabled and attached to a v1 hierarchy, from /proc/cgroups
/// (`subsys_name hierarchy num_cgroups enabled`).
pub(crate) fn v1_controllers(proc_cgroups: &str) -> Vec<String> {
    proc_cgroups
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [name, hier, _, "1"] if *hier != "0" => Some(name.to_string()),
                _ => None,
            }
        })
        .collect()
}

fn statfs_type(path: &Path) -> Option<i64> {
    crate::os::fs::statfs_type(path).ok()
}

/// The config lines for the requested limits and, plainly, the limits the
/// host cannot enforce.
pub(crate) fn limit_lines(r: &Resources, host: &CgroupHost) -> (Vec<String>, Vec<String>) {
    let v2 = host.mode == CgroupMode::Unified;
    let mut lines = Vec::new();
    let mut missing = Vec::new();
    let why = |controller: &str| {
        match host.mode {
        CgroupMode::Unified => format!("the {controller} controller is not enabled in this cgroup v2 host's /sys/fs/cgroup/cgroup.controllers"),
        CgroupMode::None => "this host has no cgroup file system at /sys/fs/cgroup".to_string(),
        m => format!("this {} cgroup host has no v1 {controller} controller mounted", m.as_str()),
    }
    };
    if let Some(mem) = r.memory {
        if !host.memory {
            missing.push(format!("resources.memory ({})", why("memory")));
        } else if v2 {
            lines.push(format!("lxc.cgroup2.memory.max = {mem}"));
        } else {
            lines.push(format!("lxc.cgroup.memory.limit_in_bytes = {mem}"));
        }
    }
    if let Some(cpus) = r.cpus {
        // The kernel refuses quotas under 1 ms.
        let quota = ((cpus * CPU_PERIOD_US as f64).round() as u64).max(1000);
        if !host.cpu {
            missing.push(format!("resources.cpus ({})", why("cpu")));
        } else if v2 {
            lines.push(format!("lxc.cgroup2.cpu.max = {quota} {CPU_PERIOD_US}"));
        } else {
            lines.push(format!("lxc.cgroup.cpu.cfs_period_us = {CPU_PERIOD_US}"));
            lines.push(format!("lxc.cgroup.cpu.cfs_quota_us = {quota}"));
        }
    }
    if let Some(pids) = r.pids {
        if !host.pids {
            missing.push(format!("resources.pids ({})", why("pids")));
        } else if v2 {
            lines.push(format!("lxc.cgroup2.pids.max = {pids}"));
        } else {
            lines.push(format!("lxc.cgroup.pids.max = {pids}"));
        }
    }
    (lines, missing)
}

/// Escapes a host path for an fstab-format field (`lxc.mount.entry`):
/// space, tab, newline and backslash as octal, as getmntent(3) reads them.
pub(crate) fn fstab_escape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        match c {
            ' ' => out.push_str("\\040"),
            '\t' => out.push_str("\\011"),
            '\n' => out.push_str("\\012"),
            '\\' => out.push_str("\\134"),
            c => out.push(c),
        }
    }
    out
}

/// Everything the config file is made of.
pub(crate) struct ConfigInput<'a> {
    pub(crate) node_id: &'a str,
    pub(crate) created: &'a str,
    pub(crate) meta: &'a Meta,
    pub(crate) network: LxcNetwork,
    pub(crate) bridge: &'a str,
    pub(crate) workspace: Option<&'a Path>,
    pub(crate) limits: &'a [String],
}

/// The config file passed to `lxc-create -f`. The template appends its own
/// lines (rootfs, hostname, its mounts) after these.
pub(crate) fn render_config(c: &ConfigInput) -> String {
    let mut s = String::new();
    s.push_str("# Written by the vendetta agent. The lines below mark this container as a\n");
    s.push_str("# vendetta session; without them vendetta never touches it.\n");
    s.push_str(MARKER);
    s.push('\n');
    s.push_str(&format!("{NODE_KEY}{}\n", c.node_id));
    s.push_str(&format!("{CREATED_KEY}{}\n", c.created));
    // serde_json escapes control characters, so this stays one line.
    s.push_str(&format!(
        "{META_KEY}{}\n",
        serde_json::to_string(c.meta).unwrap_or_else(|_| "{}".into())
    ));
    match c.network {
        LxcNetwork::Empty => s.push_str("lxc.net.0.type = empty\n"),
        LxcNetwork::Veth => {
            s.push_str("lxc.net.0.type = veth\n");
            s.push_str(&format!("lxc.net.0.link = {}\n", c.bridge));
            s.push_str("lxc.net.0.flags = up\n");
        }
    }
    if let Some(ws) = c.workspace {
        // The target is relative to the rootfs; create=dir makes it.
        s.push_str(&format!(
            "lxc.mount.entry = {} workspace none bind,create=dir 0 0\n",
            fstab_escape(&ws.to_string_lossy())
        ));
    }
    for (k, v) in &c.meta.env {
        s.push_str(&format!("lxc.environment = {k}={v}\n"));
    }
    for l in c.limits {
        s.push_str(l);
        s.push('\n');
    }
    s
}

/// Checks that env keys and values fit config lines and `-v K=V`.
pub(crate) fn check_env(
    field: &'static str,
    env: &BTreeMap<String, String>,
) -> Result<(), LxcError> {
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(LxcError::Spec {
                field,
                reason: format!("{k:?} is not a variable name lxc can pass (no '=', spaces or control characters)"),
            });
        }
        if v.contains(['\n', '\r', '\0']) {
            return Err(LxcError::Spec {
                field,
                reason: format!(
                    "the value of {k} holds a line break, which an lxc config line cannot carry"
                ),
            });
        }
    }
    Ok(())
}

fn os(s: impl AsRef<std::ffi::OsStr>) -> OsString {
    s.as_ref().to_os_string()
}

fn base_args(lxcpath: &Path, name: &str) -> Vec<OsString> {
    vec![os("-P"), os(lxcpath), os("-n"), os(name)]
}

/// `lxc-create -P path -n name -t template -f conf [-- args]`
pub(crate) fn create_argv(lxcpath: &Path, name: &str, t: &Template, conf: &Path) -> Vec<OsString> {
    let mut a = base_args(lxcpath, name);
    a.extend([os("-t"), os(&t.name), os("-f"), os(conf)]);
    if !t.args.is_empty() {
        a.push(os("--"));
        a.extend(t.args.iter().map(os));
    }
    a
}

/// `lxc-start -P path -n name -d -o log -l WARN [-- command]`
pub(crate) fn start_argv(
    lxcpath: &Path,
    name: &str,
    log: &Path,
    command: Option<&[String]>,
) -> Vec<OsString> {
    let mut a = base_args(lxcpath, name);
    a.extend([os("-d"), os("-o"), os(log), os("-l"), os("WARN")]);
    if let Some(cmd) = command {
        a.push(os("--"));
        a.extend(cmd.iter().map(os));
    }
    a
}

/// `lxc-wait -P path -n name -s STATES -t secs`
pub(crate) fn wait_argv(lxcpath: &Path, name: &str, states: &str, secs: u64) -> Vec<OsString> {
    let mut a = base_args(lxcpath, name);
    a.extend([os("-s"), os(states), os("-t"), os(secs.to_string())]);
    a
}

/// `lxc-stop -P path -n name -k` when there is no grace, else
/// `-t secs` (LXC then kills after the grace itself). `-k` with `-t` is
/// rejected by lxc-stop, so they never go together.
pub(crate) fn stop_argv(lxcpath: &Path, name: &str, grace: Duration) -> Vec<OsString> {
    let mut a = base_args(lxcpath, name);
    if grace.is_zero() {
        a.push(os("-k"));
    } else {
        let secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
        a.extend([os("-t"), os(secs.to_string())]);
    }
    a
}

/// `lxc-destroy -P path -n name -f`
pub(crate) fn destroy_argv(lxcpath: &Path, name: &str) -> Vec<OsString> {
    let mut a = base_args(lxcpath, name);
    a.push(os("-f"));
    a
}

/// `lxc-info -P path -n name -s -H`: the bare state word.
pub(crate) fn state_argv(lxcpath: &Path, name: &str) -> Vec<OsString> {
    let mut a = base_args(lxcpath, name);
    a.extend([os("-s"), os("-H")]);
    a
}

/// `lxc-ls -P path -f -F NAME,STATE --filter ^vendetta-` (`-F` needs `-f`).
pub(crate) fn ls_argv(lxcpath: &Path) -> Vec<OsString> {
    vec![
        os("-P"),
        os(lxcpath),
        os("-f"),
        os("-F"),
        os("NAME,STATE"),
        os(format!("--filter=^{PREFIX}")),
    ]
}

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

/// The essentials of `lxc-checkconfig` that are not "enabled".
pub(crate) fn checkconfig_problems(text: &str, veth: bool) -> Vec<String> {
    let mut essentials = vec![
        "Namespaces",
        "Utsname namespace",
        "Ipc namespace",
        "Pid namespace",
        "Network namespace",
        "Cgroups",
    ];
    if veth {
        essentials.extend(["Veth pair device", "Bridges"]);
    }
    let values: BTreeMap<String, String> = text
        .lines()
        .map(strip_ansi)
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    essentials
        .iter()
        .filter_map(|k| match values.get(*k) {
            Some(v) if v == "enabled" => None,
            Some(v) => Some(format!("{k}: {v}")),
            None => Some(format!("{k}: not reported")),
        })
        .collect()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Host facts that take a tool run to learn, cached.
#[derive(Debug, Clone)]
struct HostProbe {
    version: String,
    problems: Vec<String>,
}

/// A container of ours, as found on disk.
struct Owned {
    name: String,
    dir: PathBuf,
    meta: Meta,
    created: String,
}

/// Removes a temporary file when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl LxcProvider {
    pub(crate) fn new(config: &Config, node_id: &str) -> LxcProvider {
        LxcProvider {
            cfg: config.lxc.clone(),
            node_id: node_id.to_string(),
            host_probe: Mutex::new(None),
        }
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.cfg.lxcpath.join(name)
    }

    /// Runs one lxc tool; a timeout or a failure to run becomes an error,
    /// a non-zero exit is left to the caller.
    fn tool(
        &self,
        tool: &str,
        args: Vec<OsString>,
        timeout: Duration,
    ) -> Result<Outcome, LxcError> {
        let step = step_name(tool, &args);
        let mut cmd = process::command(tool, args);
        cmd.env("LC_ALL", "C");
        let out = process::run(
            &mut cmd,
            None,
            timeout,
            TOOL_OUTPUT,
            &mut super::output::Discard,
        )
        .map_err(|source| LxcError::Run {
            step: step.clone(),
            source,
        })?;
        if out.timed_out {
            return Err(LxcError::Timeout {
                step,
                after: timeout,
            });
        }
        log::debug!("{step} exited {:?} in {:?}", out.code(), out.elapsed);
        Ok(out)
    }

    fn failed(tool: &str, args: &[OsString], out: &Outcome) -> LxcError {
        LxcError::Tool {
            step: step_name(tool, args),
            code: out.code(),
            stderr: out.stderr_text(),
        }
    }

    /// Finds our container for `id`: Missing when there is no config,
    /// Foreign when the config lacks our marker.
    fn owned(&self, id: &str) -> Result<Owned, LxcError> {
        let name = container_name(id)?;
        let dir = self.dir(&name);
        let path = dir.join("config");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(LxcError::Missing { id: id.to_string() })
            }
            Err(source) => {
                return Err(LxcError::Io {
                    step: "reading the container config",
                    path,
                    source,
                })
            }
        };
        let (meta, created) = ownership(&parse_marker(&text), &self.node_id, id, &name)?;
        Ok(Owned {
            name,
            dir,
            meta,
            created,
        })
    }

    fn state(&self, name: &str) -> Result<String, LxcError> {
        let args = state_argv(&self.cfg.lxcpath, name);
        let out = self.tool("lxc-info", args.clone(), self.cfg.tool_timeout)?;
        if !out.success() {
            return Err(Self::failed("lxc-info", &args, &out));
        }
        Ok(out.stdout_text().trim().to_string())
    }

    fn session(&self, o: &Owned, state: &str) -> Session {
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

    /// Writes the create config to a private temporary file.
    fn write_temp_config(&self, name: &str, text: &str) -> Result<TempFile, LxcError> {
        let path = std::env::temp_dir().join(format!(
            "vendetta-lxc-{name}-{}.conf",
            crate::util::random_hex(6)
        ));
        let io_err = |source| LxcError::Io {
            step: "writing the container config",
            path: path.clone(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600) // it holds the session's env
            .open(&path)
            .map_err(io_err)?;
        let guard = TempFile(path.clone());
        f.write_all(text.as_bytes()).map_err(io_err)?;
        Ok(guard)
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

    /// Empty `lxc.monitor.<name>` cgroups a failed start can leave behind
    /// (only ours, only empty ones: rmdir refuses anything else).
    fn remove_monitor_cgroups(&self, name: &str) {
        let Ok(dir) = std::fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        for hierarchy in dir.filter_map(|e| e.ok()) {
            for leaf in [format!("lxc.monitor.{name}"), format!("lxc.payload.{name}")] {
                let p = hierarchy.path().join(&leaf);
                if p.is_dir() {
                    let _ = std::fs::remove_dir(&p);
                }
            }
        }
    }

    fn probe_host(&self) -> HostProbe {
        let mut cache = self.host_probe.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, probe)) = cache.as_ref() {
            if at.elapsed() < CHECKCONFIG_TTL {
                return probe.clone();
            }
        }
        let timeout = self.cfg.tool_timeout;
        let version = self
            .tool("lxc-info", vec![os("--version")], timeout)
            .map(|o| o.stdout_text().trim().to_string())
            .unwrap_or_default();
        let problems = match self.tool("lxc-checkconfig", Vec::new(), timeout) {
            Ok(o) => checkconfig_problems(&o.stdout_text(), self.cfg.network == LxcNetwork::Veth),
            Err(e) => vec![format!("lxc-checkconfig: {e}")],
        };
        let probe = HostProbe { version, problems };
        *cache = Some((Instant::now(), probe.clone()));
        probe
    }

    fn do_create(&self, spec: &SessionSpec) -> Result<Session, LxcError> {
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
        if !missing.is_empty() && self.cfg.require_limits {
            return Err(LxcError::Limits { missing });
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
        let created = crate::util::now_rfc3339();
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

    fn do_start(&self, id: &str) -> Result<Session, LxcError> {
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
            self.remove_monitor_cgroups(&o.name);
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

    fn do_stop(&self, id: &str, grace: Duration) -> Result<Session, LxcError> {
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

    fn do_destroy(&self, id: &str) -> Result<bool, LxcError> {
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
        self.remove_monitor_cgroups(&o.name);
        Ok(true)
    }

    fn do_exec(
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
        let mut cmd = process::command("lxc-attach", args);
        // The attached process keeps our cwd when it exists in the
        // container; "/" always does, and leaks nothing of the host.
        cmd.current_dir("/").env("LC_ALL", "C");
        let out = process::run(
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

    fn do_list(&self) -> Result<Vec<Session>, LxcError> {
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

/// "lxc-stop -n vendetta-x" for messages: the tool and the container.
fn step_name(tool: &str, args: &[OsString]) -> String {
    let name = args
        .iter()
        .position(|a| a == "-n")
        .and_then(|i| args.get(i + 1))
        .map(|n| format!(" -n {}", n.to_string_lossy()))
        .unwrap_or_default();
    format!("{tool}{name}")
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

impl Provider for LxcProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Lxc
    }

    fn health(&self) -> Health {
        let mut tools = serde_json::Map::new();
        let mut missing = Vec::new();
        for t in TOOLS.iter().chain(["lxc-checkconfig"].iter()) {
            match probe::which(t) {
                Some(p) => {
                    tools.insert(t.to_string(), json!(p.display().to_string()));
                }
                None => missing.push(*t),
            }
        }
        if !missing.is_empty() {
            return Health::down(format!(
                "lxc tools not found on PATH: {}; install the lxc package",
                missing.join(", ")
            ));
        }
        if crate::os::process::euid() != 0 {
            return Health::down(
                "the lxc provider runs privileged containers and needs root; run the agent as root or disable lxc in providers",
            );
        }
        let template = self.cfg.template.split_whitespace().next().unwrap_or("");
        if !Path::new(TEMPLATE_DIR)
            .join(format!("lxc-{template}"))
            .exists()
        {
            return Health::down(format!(
                "lxc.template {template:?} is not in {TEMPLATE_DIR}; install lxc-templates or change lxc.template"
            ));
        }
        if template == "busybox" && probe::which("busybox").is_none() {
            return Health::down(
                "the busybox template needs a busybox binary on PATH; install busybox-static",
            );
        }
        if self.cfg.network == LxcNetwork::Veth {
            let bridge = Path::new("/sys/class/net")
                .join(&self.cfg.bridge)
                .join("bridge");
            if !bridge.exists() {
                return Health::down(format!(
                    "lxc.network is veth but bridge {} does not exist; start it (/usr/libexec/lxc/lxc-net start) or set lxc.network: empty",
                    self.cfg.bridge
                ));
            }
        }
        let host = self.probe_host();
        if !host.problems.is_empty() {
            return Health::down(format!(
                "lxc-checkconfig reports missing essentials: {}",
                host.problems.join(", ")
            ));
        }
        let cg = CgroupHost::detect();
        Health::ok(
            format!(
                "lxc {} ready, containers under {}",
                host.version,
                self.cfg.lxcpath.display()
            ),
            json!({
                "version": host.version,
                "lxcpath": self.cfg.lxcpath.display().to_string(),
                "template": self.cfg.template,
                "network": match self.cfg.network { LxcNetwork::Empty => "empty", LxcNetwork::Veth => "veth" },
                "bridge": self.cfg.bridge,
                "cgroup": cg.mode.as_str(),
                "limits": {"memory": cg.memory, "cpus": cg.cpu, "pids": cg.pids},
                "require_limits": self.cfg.require_limits,
                "tools": tools,
            }),
        )
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

    /// What `lxc-attach` started lives on in the container when the agent
    /// (and lxc-attach with it, or not) dies: found by its tag among the
    /// processes in the container's payload cgroup.
    fn reap_interrupted(&self, id: &SessionId, command_id: &str) -> Result<usize, ProviderError> {
        let dir = format!("lxc.payload.{}", container_name(id.as_str())?);
        let tag = format!("{}={command_id}", crate::providers::COMMAND_ID_ENV);
        let inside = |pid| proctree::cgroup_has_dir(pid, &dir);
        let roots: Vec<u32> = proctree::tagged(&tag)
            .into_iter()
            .filter(|p| inside(*p))
            .collect();
        for pid in &roots {
            let killed = proctree::kill_tree(*pid, &inside).map_err(|detail| {
                ProviderError::Failed(format!(
                    "cannot kill process {pid} left in session {id} by command {command_id}: {detail}"
                ))
            })?;
            log::info!(command_id = command_id, pid = *pid, killed = killed; "stopped a process left running by the agent's restart");
        }
        Ok(roots.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(v: &[OsString]) -> Vec<String> {
        v.iter().map(|s| s.to_string_lossy().into_owned()).collect()
    }

    fn meta() -> Meta {
        Meta {
            session: "web-1".into(),
            image: "busybox".into(),
            labels: [("team".to_string(), "a\nb \"c\"".to_string())].into(),
            env: [("GREETING".to_string(), "hello world".to_string())].into(),
            command: None,
            workspace: true,
            warnings: vec![],
        }
    }

    #[test]
    fn names_and_their_limits() {
        assert_eq!(container_name("web-1").unwrap(), "vendetta-web-1");
        assert_eq!(container_name(&"a".repeat(55)).unwrap().len(), 64);
        let e = container_name(&"a".repeat(56)).unwrap_err();
        assert!(e.to_string().contains("at most 55 characters"), "{e}");
        for hostile in [
            "../etc", "a/b", "", "-x", ".x", "A", "a b", "a;reboot", "a\n",
        ] {
            assert!(container_name(hostile).is_err(), "{hostile:?}");
        }
    }

    #[test]
    fn config_has_marker_network_mount_env_and_limits() {
        let m = meta();
        let limits = vec!["lxc.cgroup.memory.limit_in_bytes = 67108864".to_string()];
        let text = render_config(&ConfigInput {
            node_id: "node-1",
            created: "2026-11-27T00:00:00.000Z",
            meta: &m,
            network: LxcNetwork::Empty,
            bridge: "lxcbr0",
            workspace: Some(Path::new("/srv/ws with space\\x")),
            limits: &limits,
        });
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.contains(&"# vendetta.managed = true"));
        assert!(lines.contains(&"# vendetta.node = node-1"));
        assert!(lines.contains(&"# vendetta.created = 2026-11-27T00:00:00.000Z"));
        assert!(lines.contains(&"lxc.net.0.type = empty"));
        assert!(!text.contains("lxc.net.0.link"));
        assert!(lines.contains(
            &"lxc.mount.entry = /srv/ws\\040with\\040space\\134x workspace none bind,create=dir 0 0"
        ));
        assert!(lines.contains(&"lxc.environment = GREETING=hello world"));
        assert!(lines.contains(&"lxc.cgroup.memory.limit_in_bytes = 67108864"));
        // Every line is a comment or a key = value line: the label's newline
        // and quotes stayed inside the JSON.
        for l in &lines {
            assert!(l.starts_with('#') || l.starts_with("lxc."), "{l:?}");
        }
        // What we wrote reads back as ours, with the same meta.
        let marker = parse_marker(&text);
        assert_eq!(marker.meta.as_ref(), Some(&m));
        let (back, created) = ownership(&marker, "node-1", "web-1", "vendetta-web-1").unwrap();
        assert_eq!(back, m);
        assert_eq!(created, "2026-11-27T00:00:00.000Z");
    }

    #[test]
    fn veth_network_names_the_bridge() {
        let m = meta();
        let text = render_config(&ConfigInput {
            node_id: "n",
            created: "t",
            meta: &m,
            network: LxcNetwork::Veth,
            bridge: "br-test",
            workspace: None,
            limits: &[],
        });
        assert!(text
            .contains("lxc.net.0.type = veth\nlxc.net.0.link = br-test\nlxc.net.0.flags = up\n"));
        assert!(!text.contains("lxc.mount.entry"));
    }

    #[test]
    fn ownership_refuses_what_we_did_not_make() {
        let foreign = parse_marker("lxc.net.0.type = empty\n# vendetta.node = node-1\n");
        let e = ownership(&foreign, "node-1", "x", "vendetta-x").unwrap_err();
        assert!(matches!(e, LxcError::Foreign { .. }));
        assert!(e.to_string().contains("no marker"), "{e}");
        let other = parse_marker("# vendetta.managed = true\n# vendetta.node = node-2\n");
        let e = ownership(&other, "node-1", "x", "vendetta-x").unwrap_err();
        assert!(e.to_string().contains("node-2"), "{e}");
        let wrong = parse_marker(
            "# vendetta.managed = true\n# vendetta.node = n\n# vendetta.meta = {\"session\":\"y\"}\n",
        );
        assert!(ownership(&wrong, "n", "x", "vendetta-x").is_err());
        let garbled = parse_marker(
            "# vendetta.managed = true\n# vendetta.node = n\n# vendetta.meta = {oops\n",
        );
        let (m, _) = ownership(&garbled, "n", "x", "vendetta-x").unwrap();
        assert_eq!(m.session, "x");
        assert!(m.warnings[0].contains("unreadable"));
        assert_eq!(
            ProviderError::from(LxcError::Foreign {
                name: "n".into(),
                reason: "r".into()
            }),
            ProviderError::Conflict(
                "lxc container n r; vendetta leaves it alone (pick another session id, or remove it by hand if it is stale)".into()
            )
        );
    }

    #[test]
    fn limits_follow_the_cgroup_mode() {
        let r = Resources {
            memory: Some(64 << 20),
            cpus: Some(0.5),
            pids: Some(64),
        };
        let all = |mode| CgroupHost {
            mode,
            memory: true,
            cpu: true,
            pids: true,
        };
        let (v2, missing) = limit_lines(&r, &all(CgroupMode::Unified));
        assert!(missing.is_empty());
        assert_eq!(
            v2,
            [
                "lxc.cgroup2.memory.max = 67108864",
                "lxc.cgroup2.cpu.max = 50000 100000",
                "lxc.cgroup2.pids.max = 64"
            ]
        );
        let (v1, _) = limit_lines(&r, &all(CgroupMode::Hybrid));
        assert_eq!(
            v1,
            [
                "lxc.cgroup.memory.limit_in_bytes = 67108864",
                "lxc.cgroup.cpu.cfs_period_us = 100000",
                "lxc.cgroup.cpu.cfs_quota_us = 50000",
                "lxc.cgroup.pids.max = 64"
            ]
        );
        let partial = CgroupHost {
            mode: CgroupMode::Hybrid,
            memory: true,
            cpu: false,
            pids: false,
        };
        let (lines, missing) = limit_lines(&r, &partial);
        assert_eq!(lines, ["lxc.cgroup.memory.limit_in_bytes = 67108864"]);
        assert_eq!(missing.len(), 2);
        assert!(
            missing[0].starts_with("resources.cpus (this hybrid"),
            "{missing:?}"
        );
        assert!(missing[1].starts_with("resources.pids"), "{missing:?}");
        let e = LxcError::Limits { missing };
        assert!(
            matches!(ProviderError::from(e), ProviderError::Invalid(m) if m.contains("lxc.require_limits is true"))
        );
        // Tiny cpu shares still get the kernel's minimum quota.
        let (lines, _) = limit_lines(
            &Resources {
                cpus: Some(0.001),
                ..Default::default()
            },
            &all(CgroupMode::Unified),
        );
        assert_eq!(lines, ["lxc.cgroup2.cpu.max = 1000 100000"]);
        assert_eq!(
            limit_lines(&Resources::default(), &all(CgroupMode::None))
                .0
                .len(),
            0
        );
    }

    #[test]
    fn reads_proc_cgroups() {
        let text = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t1\t6\t1\nmemory\t4\t51\t1\nnet_cls\t0\t6\t1\npids\t8\t6\t0\n";
        assert_eq!(v1_controllers(text), ["cpu", "memory"]);
        assert!(v1_controllers("").is_empty());
    }

    #[test]
    fn detects_this_hosts_cgroups() {
        let h = CgroupHost::detect();
        let fs = statfs_type(Path::new("/sys/fs/cgroup"));
        assert_eq!(
            h.mode == CgroupMode::Unified,
            fs == Some(0x6367_7270),
            "{h:?}"
        );
    }

    #[test]
    fn images_and_the_template_allowlist() {
        assert_eq!(
            parse_image("busybox", &[]).unwrap(),
            Template {
                name: "busybox".into(),
                args: vec![]
            }
        );
        let allow = vec!["--dist".to_string(), "--release".to_string()];
        let t = parse_image("download --dist debian --release=bookworm", &allow).unwrap();
        assert_eq!(t.args, ["--dist", "debian", "--release=bookworm"]);
        for (image, why) in [
            ("download --arch amd64", "not allowed"),
            ("download --dist", ""),
            ("download debian", "follows no allowed option"),
            ("download --dist $(reboot)", "not a plain word"),
            ("download --dist --release", ""),
            ("../../bin/sh", "not an lxc template name"),
            (
                "/usr/share/lxc/templates/lxc-busybox",
                "not an lxc template name",
            ),
            ("Busybox", "not an lxc template name"),
            ("  ", "names no lxc template"),
        ] {
            match parse_image(image, &allow) {
                // Options may be flags: the template itself judges its values.
                Ok(t) if why.is_empty() => assert_eq!(t.args[0], "--dist"),
                Ok(t) => panic!("{image:?} parsed as {t:?}"),
                Err(e) => assert!(e.to_string().contains(why), "{image:?}: {e}"),
            }
        }
        let e = parse_image("download --dist x", &[]).unwrap_err();
        assert!(
            e.to_string().contains("lxc.template_args allows none"),
            "{e}"
        );
    }

    #[test]
    fn argv_builders() {
        let p = Path::new("/var/lib/lxc");
        let t = Template {
            name: "download".into(),
            args: vec!["--dist".into(), "debian".into()],
        };
        assert_eq!(
            strs(&create_argv(p, "vendetta-a", &t, Path::new("/tmp/c.conf"))),
            [
                "-P",
                "/var/lib/lxc",
                "-n",
                "vendetta-a",
                "-t",
                "download",
                "-f",
                "/tmp/c.conf",
                "--",
                "--dist",
                "debian"
            ]
        );
        let busybox = Template {
            name: "busybox".into(),
            args: vec![],
        };
        assert!(!strs(&create_argv(p, "n", &busybox, Path::new("c"))).contains(&"--".to_string()));
        assert_eq!(
            strs(&start_argv(p, "n", Path::new("/l"), None)),
            [
                "-P",
                "/var/lib/lxc",
                "-n",
                "n",
                "-d",
                "-o",
                "/l",
                "-l",
                "WARN"
            ]
        );
        let cmd = vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            "sleep 1; exit 3".to_string(),
        ];
        assert_eq!(
            strs(&start_argv(p, "n", Path::new("/l"), Some(&cmd)))[9..],
            ["--", "/bin/sh", "-c", "sleep 1; exit 3"]
        );
        assert_eq!(
            strs(&wait_argv(p, "n", "RUNNING|STOPPED", 60))[4..],
            ["-s", "RUNNING|STOPPED", "-t", "60"]
        );
        // -k and -t never go together.
        assert_eq!(strs(&stop_argv(p, "n", Duration::ZERO))[4..], ["-k"]);
        assert_eq!(
            strs(&stop_argv(p, "n", Duration::from_secs(10)))[4..],
            ["-t", "10"]
        );
        assert_eq!(
            strs(&stop_argv(p, "n", Duration::from_millis(200)))[4..],
            ["-t", "1"]
        );
        assert_eq!(strs(&destroy_argv(p, "n"))[4..], ["-f"]);
        assert_eq!(strs(&state_argv(p, "n"))[4..], ["-s", "-H"]);
        assert_eq!(
            strs(&ls_argv(p)),
            [
                "-P",
                "/var/lib/lxc",
                "-f",
                "-F",
                "NAME,STATE",
                "--filter=^vendetta-"
            ]
        );
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
            assert!(parse_user(bad).is_err(), "{bad}");
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

    #[test]
    fn checkconfig_essentials() {
        let ok = "LXC version 5.0.2\n--- Namespaces ---\nNamespaces: enabled\nUtsname namespace: enabled\nIpc namespace: enabled\nPid namespace: enabled\nUser namespace: enabled\nNetwork namespace: enabled\n--- Control groups ---\nCgroups: enabled\nVeth pair device: enabled\nBridges: enabled\n";
        assert!(checkconfig_problems(ok, true).is_empty());
        let bad = ok.replace(
            "Pid namespace: enabled",
            "Pid namespace: \u{1b}[1;31mrequired\u{1b}[0;39m",
        );
        assert_eq!(
            checkconfig_problems(&bad, false),
            ["Pid namespace: required"]
        );
        let no_veth = ok.replace("Veth pair device: enabled", "Veth pair device: missing");
        assert!(checkconfig_problems(&no_veth, false).is_empty());
        assert_eq!(
            checkconfig_problems(&no_veth, true),
            ["Veth pair device: missing"]
        );
    }

    #[test]
    fn env_that_cannot_be_carried_is_refused() {
        let ok: BTreeMap<String, String> = [("A_1".to_string(), " x = y ".to_string())].into();
        assert!(check_env("env", &ok).is_ok());
        for (k, v) in [
            ("A B", "x"),
            ("A\n", "x"),
            ("A", "line\nbreak"),
            ("A", "cr\r"),
        ] {
            let env: BTreeMap<String, String> = [(k.to_string(), v.to_string())].into();
            let e = check_env("env", &env).unwrap_err();
            assert!(e.to_string().starts_with("params.env: "), "{e}");
        }
    }

    #[test]
    fn escapes_fstab_fields() {
        assert_eq!(fstab_escape("/a b\tc\nd\\e"), "/a\\040b\\011c\\012d\\134e");
        assert_eq!(fstab_escape("/plain/path"), "/plain/path");
    }
}
