//! Commands and their results, written once for every test file: what a
//! result must say (success, or a failure with its code and message), the
//! session commands every provider test runs, and the crash check the
//! provider tests share.

use super::{host_pids, next_id, wait_until, Agent};
use serde_json::{json, Value};
use std::time::Duration;

/// The `data` of a command result that must have succeeded.
pub(crate) fn ok(r: &Value) -> &Value {
    assert_eq!(r["status"], "success", "{r:#}");
    &r["data"]
}

/// Asserts `r` is a result that failed with `code` and an error containing
/// `text`, and returns the error. The status follows the code, as the agent
/// sets them: `rejected` and `timeout` are statuses of their own, every
/// other code comes with `failed`.
pub(crate) fn failed<'a>(r: &'a Value, code: &str, text: &str) -> &'a str {
    let status = match code {
        "rejected" | "timeout" => code,
        _ => "failed",
    };
    assert_eq!(r["status"], status, "{r:#}");
    assert_eq!(r["code"], code, "{r:#}");
    let error = r["error"].as_str().unwrap_or_default();
    assert!(error.contains(text), "the error lacks {text:?}: {r:#}");
    error
}

/// Asserts an HTTP answer is the API error `status` with `code` and an
/// `error` containing `text`, and returns the error.
pub(crate) fn api_error(answer: (u16, Value), status: u16, code: &str, text: &str) -> String {
    let (got, body) = answer;
    assert_eq!(got, status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains(text), "the error lacks {text:?}: {body}");
    error.to_string()
}

/// session.create of `id` with `params`, which must succeed: the session.
pub(crate) fn create(a: &Agent, id: &str, params: Value) -> Value {
    let mut p = params;
    p["session_id"] = json!(id);
    ok(&a.cmd("session", "create", p)).clone()
}

/// session.create then session.start of `id` (with `params` added to the
/// create); returns the started session.
pub(crate) fn create_started(a: &Agent, id: &str, params: Value) -> Value {
    create(a, id, params);
    let started = ok(&a.cmd("session", "start", json!({"session_id": id}))).clone();
    assert_eq!(started["status"], "running", "{started}");
    started
}

/// session.exec in `id` with `params` (command, stdin, env...): the result.
pub(crate) fn exec(a: &Agent, id: &str, params: Value) -> Value {
    let mut p = params;
    p["session_id"] = json!(id);
    a.cmd("session", "exec", p)
}

/// session.destroy of `id`, which must succeed: its data (`existed`...).
pub(crate) fn destroy(a: &Agent, id: &str) -> Value {
    ok(&a.cmd("session", "destroy", json!({"session_id": id}))).clone()
}

/// session.list of one provider, which must succeed.
pub(crate) fn sessions(a: &Agent, provider: &str) -> Vec<Value> {
    let r = a.cmd("session", "list", json!({"provider": provider}));
    ok(&r).as_array().cloned().unwrap_or_default()
}

/// The session `id` in a session list.
pub(crate) fn find_session(list: &[Value], id: &str) -> Option<Value> {
    list.iter().find(|s| s["id"] == id).cloned()
}

/// Starts `sleep MARKER` in session `id` as an async command and waits
/// until its process shows on the host. Returns the command's id.
pub(crate) fn start_sleep(a: &Agent, id: &str, marker: &str) -> String {
    let cmd_id = format!("crash-{}", next_id());
    a.submit(&json!({"id": cmd_id, "type": "session", "action": "exec",
            "params": {"session_id": id, "command": ["sleep", marker], "timeout": "10m"}}));
    assert!(
        wait_until(Duration::from_secs(10), || !host_pids(&["sleep", marker])
            .is_empty()),
        "sleep {marker} did not start"
    );
    cmd_id
}

/// After a crash during `start_sleep`'s command and a restart: the command
/// is reported as interrupted with its process killed, and that process is
/// gone (so the server may run the command again safely).
pub(crate) fn assert_interrupted_and_reaped(a: &Agent, cmd_id: &str, marker: &str) {
    let (s, r) = a.command(cmd_id);
    assert_eq!(s, 200, "{r}");
    failed(&r, "agent_restarted", "has been killed");
    assert!(
        wait_until(Duration::from_secs(5), || host_pids(&["sleep", marker])
            .is_empty()),
        "the process the crash left behind still runs"
    );
}
