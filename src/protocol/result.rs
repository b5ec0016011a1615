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

/// Machine-readable error classes carried in a result's `code`. The
/// local API chooses its HTTP status from them in one place
/// (`api::reply::ApiError::status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Code {
    /// `invalid_command`: the command is malformed or a parameter is wrong.
    Invalid,
    /// `rejected`: policy (`allowed_commands`, `workspace_roots`, limits)
    /// refuses it.
    Rejected,
    NotFound,
    Conflict,
    /// `provider_unavailable`
    Unavailable,
    Timeout,
    Failed,
    /// `internal_error`
    Internal,
    /// `agent_restarted`: it was running when the agent stopped; it was
    /// not run again, and its effects are unknown (it may have run).
    Restarted,
    /// `not_durable`: it ran, but its result could not be stored; the
    /// agent holds it in memory and keeps trying to store it.
    NotDurable,
    /// A code this build does not know, read back from a stored result
    /// (written by a newer agent before a rollback): kept as it was, so
    /// the result is still delivered.
    Other(String),
}

impl Code {
    /// Every code this build knows.
    pub(crate) const ALL: [Code; 10] = [
        Code::Invalid,
        Code::Rejected,
        Code::NotFound,
        Code::Conflict,
        Code::Unavailable,
        Code::Timeout,
        Code::Failed,
        Code::Internal,
        Code::Restarted,
        Code::NotDurable,
    ];

    pub(crate) fn as_str(&self) -> &str {
        match self {
            Code::Invalid => "invalid_command",
            Code::Rejected => "rejected",
            Code::NotFound => "not_found",
            Code::Conflict => "conflict",
            Code::Unavailable => "provider_unavailable",
            Code::Timeout => "timeout",
            Code::Failed => "failed",
            Code::Internal => "internal_error",
            Code::Restarted => "agent_restarted",
            Code::NotDurable => "not_durable",
            Code::Other(s) => s,
        }
    }

    fn parse(s: &str) -> Code {
        Code::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .unwrap_or_else(|| Code::Other(s.to_string()))
    }

    /// The status a result with this code has: a code says which.
    pub(crate) fn status(&self) -> Status {
        match self {
            Code::Rejected => Status::Rejected,
            Code::Timeout => Status::Timeout,
            _ => Status::Failed,
        }
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Code {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Code::parse(&String::deserialize(d)?))
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
    pub(crate) code: Option<Code>,
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
            started: crate::protocol::time::rfc3339(started),
            finished: crate::protocol::time::rfc3339(finished),
            command: capped_echo(echo),
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

    /// A failed result; its status follows from `code`.
    pub(crate) fn failure(
        cmd: &Command,
        node_id: &str,
        started: SystemTime,
        code: Code,
        error: String,
    ) -> Self {
        let mut r = Self::new(cmd.id.as_str(), &cmd.echo, node_id, code.status(), started);
        r.code = Some(code);
        r.error = capped_text(error, ERROR_CAP);
        r
    }
}

/// The most a result keeps of the command it answers (its JSON text):
/// a caller must not make the store hold its megabytes twice.
pub(crate) const ECHO_CAP: usize = 4096;
/// The most a result keeps of an error text.
pub(crate) const ERROR_CAP: usize = 4096;

/// The command as a result echoes it: whole when its JSON is at most
/// `ECHO_CAP` bytes, else its id, type and action with `"truncated": N`
/// (the bytes it had).
pub(crate) fn capped_echo(echo: &Value) -> Value {
    let len = serde_json::to_vec(echo).map(|v| v.len()).unwrap_or(0);
    if len <= ECHO_CAP {
        return echo.clone();
    }
    let mut kept = serde_json::Map::new();
    for key in ["id", "type", "action"] {
        if let Some(v) = echo.get(key) {
            let short = match v {
                Value::String(s) => Value::String(capped_text(s.clone(), 256)),
                Value::Number(_) | Value::Bool(_) | Value::Null => v.clone(),
                _ => Value::String("(not a string)".into()),
            };
            kept.insert(key.to_string(), short);
        }
    }
    kept.insert("truncated".into(), Value::from(len));
    Value::Object(kept)
}

/// `text` cut to at most `cap` bytes (at a character boundary), saying
/// how much was cut.
pub(crate) fn capped_text(mut text: String, cap: usize) -> String {
    if text.len() <= cap {
        return text;
    }
    let total = text.len();
    let mut end = cap.saturating_sub(40);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(&format!("... ({} more bytes cut)", total - end));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_and_errors_are_capped() {
        let small = serde_json::json!({"id": "a", "type": "session", "action": "exec"});
        assert_eq!(capped_echo(&small), small);
        let big = serde_json::json!({"id": "a", "type": "session", "action": "create",
            "params": {"image": "x".repeat(900_000)}});
        let capped = capped_echo(&big);
        assert_eq!(
            capped,
            serde_json::json!({"id": "a", "type": "session", "action": "create", "truncated": 900_067})
        );
        let text = capped_text("é".repeat(5000), ERROR_CAP);
        assert!(text.len() <= ERROR_CAP, "{}", text.len());
        assert_eq!(text.len(), 4056 + "... (5944 more bytes cut)".len());
        assert!(text.ends_with("é... (5944 more bytes cut)"));
    }

    #[test]
    fn codes_keep_their_wire_names_and_an_unknown_one_survives_a_round_trip() {
        for code in Code::ALL {
            let text = serde_json::to_string(&code).unwrap();
            assert_eq!(text, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<Code>(&text).unwrap(), code);
        }
        let later: Code = serde_json::from_str("\"from_a_newer_agent\"").unwrap();
        assert_eq!(later, Code::Other("from_a_newer_agent".into()));
        assert_eq!(
            serde_json::to_string(&later).unwrap(),
            "\"from_a_newer_agent\""
        );
        assert_eq!(later.status(), Status::Failed);
    }
}
