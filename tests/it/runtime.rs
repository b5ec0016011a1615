//! The runtime: signals, shutdown, restarts, durable state, logs.

use crate::util::{next_id, wait_until, Agent};
use serde_json::json;
use std::time::{Duration, Instant};

#[test]
fn sigterm_and_sigint_stop_cleanly() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut a = Agent::start("");
        a.cmd("system", "status", json!({}));
        let t = Instant::now();
        a.signal(sig);
        let st = a.wait_exit(Duration::from_secs(10)).expect("exits");
        assert_eq!(st.code(), Some(0), "{}", a.log());
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "took {:?}",
            t.elapsed()
        );
        assert!(a.log().contains("agent stopped"));
    }
}

#[test]
fn sighup_reloads_the_log_level() {
    let mut a = Agent::start("log_level: info\n");
    a.cmd("system", "status", json!({}));
    assert!(!a.log().contains("\"level\":\"debug\""));
    let text = std::fs::read_to_string(&a.config)
        .unwrap()
        .replace("log_level: info", "log_level: debug");
    std::fs::write(&a.config, text).unwrap();
    a.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(5), || a
            .log()
            .contains("log level is now Debug")),
        "{}",
        a.log()
    );
    a.cmd("system", "status", json!({}));
    assert!(wait_until(Duration::from_secs(5), || a
        .log()
        .contains("\"level\":\"debug\"")));
    assert_eq!(a.stop().code(), Some(0));
}

#[test]
fn node_id_and_results_survive_a_restart() {
    let mut a = Agent::start("");
    let node = a.cmd("system", "status", json!({}))["data"]["node_id"].clone();
    let id = format!("keep-{}", next_id());
    let body =
        json!({"id": id, "type": "session", "action": "destroy", "params": {"session_id": "gone"}})
            .to_string();
    let (_, first) = a.post(&body);
    a.kill9();
    a.restart();
    assert_eq!(
        a.cmd("system", "status", json!({}))["data"]["node_id"],
        node
    );
    let (s, again) = a.post(&body);
    assert_eq!(s, 200);
    assert_eq!(again, first, "answered from the store after a crash");
    let (s, stored) = a.get(&format!("/api/v1/commands/{id}"));
    assert_eq!((s, stored), (200, first));
}

#[test]
fn interrupted_and_queued_commands_are_recovered() {
    let mut a = Agent::configure("recover", "");
    // Journal records as a crash would leave them: one queued, one running.
    let results = a.cache().join("results");
    std::fs::create_dir_all(&results).unwrap();
    let queued = json!({"state": "queued", "origin": "api", "updated": "x",
        "command": {"id": "was-queued", "type": "session", "action": "destroy", "params": {"session_id": "q"}}});
    let running = json!({"state": "running", "origin": "api", "updated": "x",
        "command": {"id": "was-running", "type": "session", "action": "destroy", "params": {"session_id": "r"}}});
    std::fs::write(results.join("r-was-queued.json"), queued.to_string()).unwrap();
    std::fs::write(results.join("r-was-running.json"), running.to_string()).unwrap();
    std::fs::write(results.join("r-garbled.json"), "{\"state\": \"do").unwrap();
    a.spawn();
    a.wait_ready();
    let mut q = serde_json::Value::Null;
    assert!(wait_until(Duration::from_secs(5), || {
        let (s, b) = a.get("/api/v1/commands/was-queued");
        q = b;
        s == 200
    }));
    assert_eq!(
        q["status"], "success",
        "a queued command never ran, so it runs now: {q}"
    );
    let (s, r) = a.get("/api/v1/commands/was-running");
    assert_eq!(s, 200);
    assert_eq!(r["status"], "failed");
    assert_eq!(r["code"], "agent_restarted");
    assert!(r["error"]
        .as_str()
        .unwrap()
        .contains("agent restarted during execution"));
    assert!(
        a.cache().join("corrupt").read_dir().unwrap().count() >= 1,
        "garbled record moved aside"
    );
    assert!(a.log().contains("damaged"));
    a.stop();
}

#[test]
fn a_token_in_a_readable_config_is_warned_about() {
    let a = Agent::start("auth_token: s3cret-value-do-not-log\n");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&a.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    drop(a);
    let mut a = Agent::configure("perm", "auth_token: s3cret-value-do-not-log\n");
    std::fs::set_permissions(&a.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    a.spawn();
    a.wait_ready();
    assert!(
        wait_until(Duration::from_secs(5), || a.log().contains("chmod 600")),
        "{}",
        a.log()
    );
    assert!(!a.log().contains("s3cret-value-do-not-log"));
}

#[test]
fn logs_are_json_lines_shaped_like_the_seed() {
    let a = Agent::start("");
    a.cmd("system", "status", json!({}));
    let log = a.log();
    let mut seen_command = false;
    for line in log.lines().filter(|l| !l.is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for key in ["level", "timestamp", "component", "message"] {
            assert!(v[key].is_string(), "{key} missing: {line}");
        }
        if v["message"] == "command finished" {
            assert!(
                v["command_id"].is_string() && v["duration"].is_string(),
                "{line}"
            );
            seen_command = true;
        }
    }
    assert!(seen_command, "{log}");
}

#[test]
fn text_logs_carry_key_values() {
    let a = Agent::start("log_format: text\n");
    a.cmd("system", "status", json!({}));
    assert!(
        wait_until(Duration::from_secs(5), || a.log().contains("command_id=")),
        "{}",
        a.log()
    );
    assert!(a.log().contains("INFO"));
}
