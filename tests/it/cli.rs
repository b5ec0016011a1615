//! The command line: help, version, config checks, agent start/stop/status,
//! and the API client verbs.

use crate::util::{Agent, TempDir, BIN};
use std::process::Command;
use std::time::Duration;

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env_remove("VENDETTA_CONFIG")
        .output()
        .expect("run vendetta")
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
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
    let o = run(&[]);
    assert_eq!(o.status.code(), Some(2), "no command is a usage error");
    let o = run(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("unknown command"));
    let o = run(&["agent", "start", "--bogus"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("--bogus"), "{}", text(&o));
}

#[test]
fn install_is_not_available_yet() {
    let o = run(&["agent", "install", "root@host"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("not available yet"), "{}", text(&o));
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

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "log_level: info\nheartbeat:\n  interval: 30s\n  intervl: 5s\n",
    )
    .unwrap();
    let o = run(&["agent", "config", "--check", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let t = text(&o);
    assert!(
        t.contains("bad.yaml") && t.contains("line 4") && t.contains("heartbeat.intervl"),
        "{t}"
    );

    std::fs::write(&bad, "command_timeout: soon\n").unwrap();
    let t = text(&run(&["agent", "config", "--check", bad.to_str().unwrap()]));
    assert!(
        t.contains("command_timeout") && t.contains("\"soon\""),
        "{t}"
    );

    std::fs::write(&bad, "workers: [1, 2]\n").unwrap();
    let t = text(&run(&["agent", "config", "--check", bad.to_str().unwrap()]));
    assert!(
        t.contains("key workers") && t.contains("invalid type"),
        "{t}"
    );

    let o = run(&["agent", "config", "--check", "/nonexistent/agent.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("cannot read config file /nonexistent/agent.yaml"));

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
    assert_eq!(o.status.code(), Some(2));
    let t = text(&o);
    assert!(
        t.contains("unknown_key") && t.contains("line 2") && !t.contains("panicked"),
        "{t}"
    );
    let o = Command::new(BIN)
        .args(["agent", "start"])
        .env("VENDETTA_CONFIG", &cfg)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "VENDETTA_CONFIG is honoured");
    let o = Command::new(BIN)
        .args(["agent", "start", "--config", "/nonexistent.yaml"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    std::fs::write(&cfg, "listen: 127.0.0.1:1\n").unwrap();
    let o = Command::new(BIN)
        .args(["agent", "start", "--config", cfg.to_str().unwrap()])
        .env("VENDETTA_PROVIDER", "vbox")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("VENDETTA_PROVIDER"));
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
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("already running"), "{}", text(&o));

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
    let o = a.cli(&["agent", "status"]);
    assert_eq!(o.status.code(), Some(3), "LSB: not running; {}", text(&o));
    let o = Command::new(BIN)
        .args(["agent", "stop", "--config"])
        .arg(&a.config)
        .output()
        .unwrap();
    assert!(o.status.success(), "stopping a stopped agent succeeds");
    let o = a.cli(&["system", "status"]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "client verbs say not running: {}",
        text(&o)
    );
    assert!(text(&o).contains("is it running"));
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
    let o = a.cli(&["session", "start", "../nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("params.session_id"), "{}", text(&o));
    let o = a.cli(&["session", "destroy", "never-was"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("nothing to do"));
    let o = a.cli(&["session", "exec", "s1"]);
    assert_eq!(o.status.code(), Some(2), "exec needs a command after --");
    let o = Command::new(BIN)
        .args(["system", "status"])
        .env("VENDETTA_AGENT_URL", &a.url)
        .env("VENDETTA_API_TOKEN", "wrong")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("HTTP 401"), "{}", text(&o));
}
