//! The command line: help, version, config checks, agent start/stop/status,
//! and the API client verbs.

use crate::util::{text, Agent, TempDir, BIN};
use std::process::{Command, Output};
use std::time::Duration;

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("VENDETTA_CONFIG")
        .output()
        .expect("run vendetta")
}

/// Asserts the CLI exited with `code` and said `want` (stdout or stderr).
fn exited(o: &Output, code: i32, want: &str) {
    let t = text(o);
    assert_eq!(o.status.code(), Some(code), "{t}");
    assert!(t.contains(want), "the output lacks {want:?}: {t}");
}

#[test]
fn version_and_help_at_every_level() {
    let o = run(&["--version"]);
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("vendetta {}", env!("CARGO_PKG_VERSION"))
    );
    for args in [
        &["--help"][..],
        &["agent", "--help"],
        &["agent", "start", "--help"],
        &["agent", "stop", "--help"],
        &["agent", "status", "--help"],
        &["agent", "config", "--help"],
        &["agent", "connect", "--help"],
        &["session", "--help"],
        &["session", "exec", "--help"],
        &["service", "--help"],
        &["system", "--help"],
    ] {
        let o = run(args);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("Usage"),
            "{args:?}"
        );
    }
    // No command is a usage error: the usage, and exit 2.
    exited(&run(&[]), 2, "Usage: vendetta <command> [options]");
    exited(
        &run(&["frobnicate"]),
        2,
        "unknown command \"frobnicate\"; run `vendetta --help` for the list",
    );
    exited(
        &run(&["agent", "start", "--bogus"]),
        2,
        "unexpected argument(s): --bogus; see --help",
    );
}

#[test]
fn install_is_not_available_yet() {
    exited(
        &run(&["agent", "install", "root@host"]),
        2,
        "`vendetta agent install` is not available yet",
    );
}

#[test]
fn config_prints_defaults_and_checks_files() {
    let o = run(&["agent", "config"]);
    assert!(o.status.success());
    let dir = TempDir::new("cfg");
    let default = dir.path().join("default.yaml");
    std::fs::write(&default, &o.stdout).unwrap();
    let o = run(&["agent", "config", "--check", default.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));

    // Each error names the file, the line, the key and what is wrong.
    let bad = dir.path().join("bad.yaml");
    for (yaml, want) in [
        (
            "log_level: info\nheartbeat:\n  interval: 30s\n  intervl: 5s\n",
            "line 4: key heartbeat.intervl: unknown field `intervl`, expected one of `interval`",
        ),
        (
            "command_timeout: soon\n",
            "line 1: key command_timeout: invalid duration \"soon\": use a number with a unit",
        ),
        (
            "workers: [1, 2]\n",
            "line 1: key workers: invalid type: sequence, expected usize",
        ),
    ] {
        std::fs::write(&bad, yaml).unwrap();
        let o = run(&["agent", "config", "--check", bad.to_str().unwrap()]);
        exited(&o, 2, &format!("config file {}, {want}", bad.display()));
    }

    exited(
        &run(&["agent", "config", "--check", "/nonexistent/agent.yaml"]),
        2,
        "cannot read config file /nonexistent/agent.yaml: No such file or directory",
    );

    let json = dir.path().join("agent.json");
    std::fs::write(&json, r#"{"listen": "127.0.0.1:1", "labels": {"a": "b"}}"#).unwrap();
    assert!(run(&["agent", "config", "--check", json.to_str().unwrap()])
        .status
        .success());
}

#[test]
fn start_with_a_bad_config_exits_2_without_panicking() {
    let dir = TempDir::new("badstart");
    let cfg = dir.path().join("agent.yaml");
    std::fs::write(&cfg, "listen: 127.0.0.1:1\nunknown_key: 1\n").unwrap();
    let o = run(&["agent", "start", "--config", cfg.to_str().unwrap()]);
    let unknown = format!(
        "config file {}, line 2: key unknown_key: unknown field `unknown_key`",
        cfg.display()
    );
    exited(&o, 2, &unknown);
    assert!(!text(&o).contains("panicked"), "{}", text(&o));
    // VENDETTA_CONFIG is honoured.
    let o = Command::new(BIN)
        .args(["agent", "start"])
        .env("VENDETTA_CONFIG", &cfg)
        .output()
        .unwrap();
    exited(&o, 2, &unknown);
    exited(
        &run(&["agent", "start", "--config", "/nonexistent.yaml"]),
        2,
        "cannot read config file /nonexistent.yaml: No such file or directory",
    );
    std::fs::write(&cfg, "listen: 127.0.0.1:1\n").unwrap();
    let o = Command::new(BIN)
        .args(["agent", "start", "--config", cfg.to_str().unwrap()])
        .env("VENDETTA_PROVIDER", "vbox")
        .output()
        .unwrap();
    exited(
        &o,
        2,
        "environment variable VENDETTA_PROVIDER: unknown provider \"vbox\"; use docker, lxc or qemu",
    );
}

#[test]
fn status_stop_and_the_pid_file() {
    let mut a = Agent::start("");
    let o = a.cli(&["agent", "status"]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("running") && t.contains("node-") && t.contains("offline"),
        "{t}"
    );
    let o = a.cli(&["agent", "status", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["running"], true);
    assert_eq!(doc["status"]["pid"], a.pid());

    // A second agent on the same state refuses to start.
    let o = Command::new(BIN)
        .args(["agent", "start", "--config"])
        .arg(&a.config)
        .output()
        .unwrap();
    exited(&o, 1, "already running");

    let o = Command::new(BIN)
        .args(["agent", "stop", "--timeout", "30s", "--config"])
        .arg(&a.config)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let st = a
        .wait_exit(Duration::from_secs(5))
        .expect("stopped when `agent stop` returned");
    assert_eq!(st.code(), Some(0));
    assert!(!a.cache().join("vendetta.pid").exists(), "pid file removed");
    // LSB: not running is 3.
    exited(
        &a.cli(&["agent", "status"]),
        3,
        &format!(
            "vendetta agent is not running (nothing answers at {})",
            a.url
        ),
    );
    let o = Command::new(BIN)
        .args(["agent", "stop", "--config"])
        .arg(&a.config)
        .output()
        .unwrap();
    assert!(o.status.success(), "stopping a stopped agent succeeds");
    // Client verbs say not running too.
    exited(
        &a.cli(&["system", "status"]),
        3,
        &format!(
            "cannot reach the agent at {} (io: Connection refused",
            a.url
        ),
    );
    exited(&a.cli(&["system", "status"]), 3, "is it running?");
}

#[test]
fn client_verbs_print_tables_and_json() {
    let a = Agent::start("providers: [lxc, qemu]\nprovider: lxc\n");
    let o = a.cli(&["system", "status"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("node_id: node-"));
    let o = a.cli(&["system", "info", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["status"], "success");
    assert!(doc["data"]["cpus"].as_u64().unwrap() >= 1);
    let o = a.cli(&["session", "list"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("ID"),
        "{}",
        text(&o)
    );
    let o = a.cli(&["service", "list"]);
    assert!(o.status.success(), "{}", text(&o));
    exited(
        &a.cli(&["session", "start", "../nope"]),
        1,
        "params.session_id: has a character not allowed in a session id at position 0",
    );
    let o = a.cli(&["session", "destroy", "never-was"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("nothing to do"));
    exited(
        &a.cli(&["session", "exec", "s1"]),
        2,
        "missing command: vendetta session exec ID -- COMMAND ARGS...",
    );
    let o = Command::new(BIN)
        .args(["system", "status"])
        .env("VENDETTA_AGENT_URL", &a.url)
        .env("VENDETTA_API_TOKEN", "wrong")
        .output()
        .unwrap();
    exited(
        &o,
        1,
        "(HTTP 401, unauthorized); pass --token or set VENDETTA_API_TOKEN",
    );
}
