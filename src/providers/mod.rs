//! Where sessions live: Docker containers, LXC containers, QEMU VMs.
//!
//! Every provider implements [`Provider`]; the dispatcher never knows which
//! one it talks to. Providers own no threads: they are called from worker
//! threads, the monitor, and (for listings only) an API request's thread
//! through the runtime, and block until done, bounded by the timeouts they
//! are given. Each has its own error enum and converts it into
//! [`ProviderError`], whose kind the dispatcher maps to a result code.
//!
//! Owns: the sessions on this host and the files that record them; the
//! shared probes ([`probe`]), output capture ([`output`]) and the registry
//! of enabled providers ([`registry`]). Each provider's folder says what its
//! files own.
//!
//! May not touch: channels, HTTP requests of the local API, the runtime or
//! the coordination link. Syscalls go through [`crate::os`].

pub(crate) mod docker;
#[cfg(test)]
pub(crate) mod fake;
pub(crate) mod lxc;
pub(crate) mod output;
pub(crate) mod probe;
pub(crate) mod qemu;
pub(crate) mod registry;

use crate::protocol::command::{PortSpec, Resources};
use crate::protocol::{ProviderKind, SessionId};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub(crate) use crate::protocol::session::{Session, SessionStatus};
pub(crate) use output::{Capture, OutputSink, Stream};
pub(crate) use registry::Registry;

/// What a create asks for, checked by the dispatcher (workspace exists and
/// lies under an allowed root; image defaulted).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SessionSpec {
    pub(crate) id: SessionId,
    pub(crate) node_id: String,
    pub(crate) image: Option<String>,
    pub(crate) workspace: Option<PathBuf>,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) ports: Vec<PortSpec>,
    pub(crate) resources: Resources,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) command: Option<Vec<String>>,
    /// How long the provider may take.
    pub(crate) timeout: Duration,
    /// The resource limits must hold (a tenant quota counts them): a
    /// provider that cannot enforce one refuses the create.
    pub(crate) limits_must_hold: bool,
}

/// Set in every exec'd process's environment to the command's id, so that
/// the process can be found again after an agent crash.
pub(crate) const COMMAND_ID_ENV: &str = "VENDETTA_COMMAND_ID";

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ExecSpec {
    pub(crate) argv: Vec<String>,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) workdir: Option<String>,
    pub(crate) user: Option<String>,
    pub(crate) stdin: Option<Vec<u8>>,
    pub(crate) timeout: Duration,
    /// Cap per stream; bytes beyond it are counted, not kept.
    pub(crate) max_output: usize,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct ExecOutput {
    /// None when the process was killed (timeout) or the code is unknown.
    pub(crate) exit_code: Option<i32>,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
    pub(crate) stdout_truncated: bool,
    pub(crate) stderr_truncated: bool,
    pub(crate) timed_out: bool,
}

/// A provider's view of its own health, refreshed by the monitor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Health {
    pub(crate) ok: bool,
    pub(crate) message: String,
    /// Provider-specific facts (engine version, tool paths, …).
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub(crate) detail: serde_json::Value,
}

impl Health {
    pub(crate) fn ok(message: impl Into<String>, detail: serde_json::Value) -> Health {
        Health {
            ok: true,
            message: message.into(),
            detail,
        }
    }
    pub(crate) fn down(message: impl Into<String>) -> Health {
        Health {
            ok: false,
            message: message.into(),
            detail: serde_json::Value::Null,
        }
    }
}

/// The health of one published service (a session's ports).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ServiceHealth {
    /// healthy | unhealthy | starting | unknown
    pub(crate) status: String,
    /// Where the status came from: "healthcheck" or "tcp".
    pub(crate) source: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) detail: String,
}

/// What went wrong, in classes the dispatcher maps to result codes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ProviderError {
    /// No such session (or image, or exec).
    NotFound(String),
    /// The name is taken by something we do not manage, or the state forbids it.
    Conflict(String),
    /// The request cannot work as given (bad image name, limit too small…).
    Invalid(String),
    /// The provider cannot be reached (engine down, tools missing).
    Unavailable(String),
    /// The provider did not answer in time.
    Timeout(String),
    /// Anything else, with the provider's own message.
    Failed(String),
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProviderError::NotFound(m)
            | ProviderError::Conflict(m)
            | ProviderError::Invalid(m)
            | ProviderError::Unavailable(m)
            | ProviderError::Timeout(m)
            | ProviderError::Failed(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ProviderError {}

/// A session's change that its runtime announced by itself.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Notice {
    pub(crate) session_id: String,
    pub(crate) status: SessionStatus,
    /// The main process's exit code, when the runtime said it.
    pub(crate) exit_code: Option<i32>,
    /// What the runtime said, e.g. `qmp:SHUTDOWN`, `docker:die`.
    pub(crate) cause: String,
}

/// Takes a provider's notices (see `Provider::watch`).
pub(crate) type NoticeSink = std::sync::Arc<dyn Fn(Notice) + Send + Sync>;

/// A place sessions can live. All methods block; all are bounded by the
/// timeouts in their arguments or the provider's own config.
pub(crate) trait Provider: Send + Sync {
    fn kind(&self) -> ProviderKind;

    /// Whether the provider can work right now, and why not.
    fn health(&self) -> Health;

    /// Creates a session (not started). Refuses to adopt a name it did not
    /// create.
    fn create(&self, spec: &SessionSpec) -> Result<Session, ProviderError>;

    /// Starts a session; starting a running one succeeds.
    fn start(&self, id: &SessionId) -> Result<Session, ProviderError>;

    /// Stops a session within `grace`, then forcibly; stopping a stopped one
    /// succeeds.
    fn stop(&self, id: &SessionId, grace: Duration) -> Result<Session, ProviderError>;

    /// Removes a session and what it owns. Returns false when it did not exist.
    fn destroy(&self, id: &SessionId) -> Result<bool, ProviderError>;

    /// Runs a command in a running session. Output goes to `sink` as it
    /// arrives and is captured up to `spec.max_output` per stream.
    fn exec(
        &self,
        id: &SessionId,
        spec: &ExecSpec,
        sink: &mut dyn OutputSink,
    ) -> Result<ExecOutput, ProviderError>;

    /// Every session this provider manages for this node.
    fn list(&self) -> Result<Vec<Session>, ProviderError>;

    /// The node ids written on the sessions this provider finds, whatever
    /// their node: witnesses for recovering a damaged node id.
    fn node_ids(&self) -> Vec<String> {
        Vec::new()
    }

    /// Where to report changes the runtime announces on its own (QEMU's
    /// and Docker's events), as they happen; providers that only learn by
    /// listing ignore it.
    fn watch(&self, _sink: NoticeSink) {}

    /// Kills what an exec left running when the agent died during it: the
    /// processes tagged with `command_id` (see [`COMMAND_ID_ENV`]), in
    /// session `id` if it is one of this provider's. Returns how many it
    /// stopped; 0 when nothing was left or the session is not here.
    fn reap_interrupted(&self, _id: &SessionId, _command_id: &str) -> Result<usize, ProviderError> {
        Ok(0)
    }

    /// Health of a session's published services. The default probes each
    /// published port over TCP on loopback.
    fn service_health(&self, session: &Session) -> ServiceHealth {
        probe::tcp_ports(session)
    }
}
