//! Sessions as the wire carries them: `session list`, create/start/stop
//! results and session events.

use super::ProviderKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A session as a provider reports it and the wire carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Session {
    pub(crate) id: String,
    pub(crate) provider: ProviderKind,
    pub(crate) status: SessionStatus,
    pub(crate) image: String,
    /// Container/guest port ("8080/tcp") -> host port.
    #[serde(default)]
    pub(crate) ports: BTreeMap<String, u16>,
    pub(crate) created: String,
    #[serde(default)]
    pub(crate) labels: BTreeMap<String, String>,
    /// Set when the main process has exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) exit_code: Option<i32>,
    /// Limits or settings the host could not apply, said plainly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) warnings: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum SessionStatus {
    Created,
    Running,
    Stopped,
    Exited,
    Lost,
}

impl Session {
    /// A bare Docker session, for tests of what keeps sessions.
    #[cfg(test)]
    pub(crate) fn bare(id: &str, status: SessionStatus) -> Session {
        Session {
            id: id.into(),
            provider: ProviderKind::Docker,
            status,
            image: "img".into(),
            ports: Default::default(),
            created: String::new(),
            labels: Default::default(),
            exit_code: None,
            warnings: vec![],
        }
    }
}

impl SessionStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Created => "created",
            SessionStatus::Running => "running",
            SessionStatus::Stopped => "stopped",
            SessionStatus::Exited => "exited",
            SessionStatus::Lost => "lost",
        }
    }
}

/// Ordered by name, for the metrics gauge's stable label order.
impl PartialOrd for SessionStatus {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SessionStatus {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}
