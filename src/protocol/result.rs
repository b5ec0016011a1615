//! Command results, the one shape every path reports.

use super::command::Command;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    Success,
    Failed,
    Timeout,
    Rejected,
}

impl Status {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Success => "success",
            Status::Failed => "failed",
            Status::Timeout => "timeout",
            Status::Rejected => "rejected",
        }
    }
}

/// Machine-readable error classes carried in `code`. The local API maps
/// them to HTTP statuses in one place (`api::routes::status_for`).
pub(crate) mod codes {
    pub(crate) const INVALID: &str = "invalid_command";
    pub(crate) const REJECTED: &str = "rejected";
    pub(crate) const NOT_FOUND: &str = "not_found";
    pub(crate) const CONFLICT: &str = "conflict";
    pub(crate) const UNAVAILABLE: &str = "provider_unavailable";
    pub(crate) const TIMEOUT: &str = "timeout";
    pub(crate) const FAILED: &str = "failed";
    pub(crate) const INTERNAL: &str = "internal_error";
    pub(crate) const RESTARTED: &str = "agent_restarted";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct CommandResult {
    pub(crate) id: String,
    pub(crate) node_id: String,
    pub(crate) status: Status,
    /// For old servers: exec stdout, or the JSON text of `data`.
    #[serde(default)]
    pub(crate) output: String,
    /// Always present (null when a command has no data), as the contract
    /// lists it on every result.
    #[serde(default)]
    pub(crate) data: Value,
    #[serde(default)]
    pub(crate) error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) code: Option<String>,
    /// The exec's exit code; for other commands 0 on success, 1 otherwise.
    #[serde(default)]
    pub(crate) exit_code: i32,
    /// Nanoseconds, as Go's `time.Duration` encodes it.
    #[serde(default)]
    pub(crate) duration: u64,
    #[serde(default)]
    pub(crate) duration_ms: f64,
    #[serde(default)]
    pub(crate) started: String,
    #[serde(default)]
    pub(crate) finished: String,
    #[serde(default)]
    pub(crate) command: Value,
}

impl CommandResult {
    /// A result for `cmd`, timed from `started`.
    pub(crate) fn new(
        cmd_id: &str,
        echo: &Value,
        node_id: &str,
        status: Status,
        started: SystemTime,
    ) -> Self {
        let finished = SystemTime::now();
        let took = finished.duration_since(started).unwrap_or(Duration::ZERO);
        CommandResult {
            id: cmd_id.to_string(),
            node_id: node_id.to_string(),
            status,
            output: String::new(),
            data: Value::Null,
            error: String::new(),
            code: None,
            exit_code: if status == Status::Success { 0 } else { 1 },
            duration: took.as_nanos() as u64,
            duration_ms: (took.as_micros() as f64) / 1000.0,
            started: crate::util::rfc3339(started),
            finished: crate::util::rfc3339(finished),
            command: echo.clone(),
        }
    }

    pub(crate) fn success(cmd: &Command, node_id: &str, started: SystemTime, data: Value) -> Self {
        let mut r = Self::new(
            cmd.id.as_str(),
            &cmd.echo,
            node_id,
            Status::Success,
            started,
        );
        r.output = match &data {
            Value::Null => String::new(),
            other => other.to_string(),
        };
        r.data = data;
        r
    }

    pub(crate) fn failure(
        cmd: &Command,
        node_id: &str,
        started: SystemTime,
        status: Status,
        code: &str,
        error: String,
    ) -> Self {
        let mut r = Self::new(cmd.id.as_str(), &cmd.echo, node_id, status, started);
        r.code = Some(code.to_string());
        r.error = error;
        r
    }
}
