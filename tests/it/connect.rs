//! `vendetta agent connect URL [--token T]` against the recording test
//! server (util::coord): a real register round trip, then the config file
//! rewritten atomically (mode 0600, every other line kept); left alone,
//! byte for byte, when the server refuses or cannot be reached.

use crate::util::coord::{CoordServer, Fault};
use crate::util::{
    agent_connect, connect_refused, file_mode, streams, wait_until, Agent, TempDir, BIN,
};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const TOKEN: &str = "connect-token-0123456789";

fn write(p: &Path, text: &str, mode: u32) {
    std::fs::write(p, text).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A temp dir holding the config file `name`, written with `mode`: `text`
/// where `{cache}` stands for the temp dir's cache directory.
fn config_file(name: &str, text: &str, mode: u32) -> (TempDir, PathBuf) {
    let dir = TempDir::new("conn");
    let config = dir.path().join(name);
    let cache = dir.path().join("cache");
    write(
        &config,
        &text.replace("{cache}", cache.to_str().unwrap()),
        mode,
    );
    (dir, config)
}

/// The lines of a YAML config other than the two keys connect sets.
fn other_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.starts_with("coordination_url:") && !l.starts_with("auth_token:"))
        .collect()
}

#[test]
fn connect_registers_then_writes_the_url_and_token_keeping_the_rest() {
    let server = CoordServer::start();
    let mut a = Agent::configure("conn", "");
    let harness = std::fs::read_to_string(&a.config).unwrap();
    let original = format!(
        "# vendetta agent, written by hand\n{harness}\n# the coordination server (set by `vendetta agent connect`)\ncoordination_url: \"\"\nlabels:\n  # where it stands\n  rack: r7 # top of rack\n  coordination_url: not-the-key\nheartbeat:\n  interval: 30s\n"
    );
    write(&a.config, &original, 0o644);

    let out = agent_connect(&a.config, &[&server.url, "--token", TOKEN]);
    let (stdout, stderr) = streams(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );

    // A real registration, with the node id kept in the cache dir.
    let node_id = std::fs::read_to_string(a.cache().join("node_id"))
        .expect("connect stored the node id")
        .trim()
        .to_string();
    let regs = server.requests("register");
    assert_eq!(regs.len(), 1);
    assert_eq!(regs[0].body["id"], node_id.as_str());
    assert_eq!(regs[0].body["labels"]["rack"], "r7");
    assert_eq!(
        regs[0].auth.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str())
    );

    let new = std::fs::read_to_string(&a.config).unwrap();
    assert!(
        new.contains(&format!("\ncoordination_url: \"{}\"\n", server.url)),
        "{new}"
    );
    assert!(
        new.contains(&format!("\nauth_token: \"{TOKEN}\"\n")),
        "{new}"
    );
    assert_eq!(
        other_lines(&new),
        other_lines(&original),
        "every other line and comment is kept, in order"
    );
    // The key stays where it was.
    let pos = |t: &str| t.lines().position(|l| l.starts_with("coordination_url:"));
    assert_eq!(pos(&new), pos(&original));
    assert_eq!(file_mode(&a.config), 0o600);
    assert!(
        stdout.contains(&format!("registered node {node_id} with {}", server.url)),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "updated {} (mode 0600): set coordination_url and auth_token",
            a.config.display()
        )),
        "{stdout}"
    );
    assert!(stdout.contains("restart the agent"), "{stdout}");
    let check = Command::new(BIN)
        .args(["agent", "config", "--check"])
        .arg(&a.config)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", streams(&check).1);

    // An agent started on that file registers with the token, same id.
    a.spawn();
    a.wait_ready();
    assert!(wait_until(Duration::from_secs(15), || server
        .count("register")
        >= 2));
    let reg = server.requests("register")[1].clone();
    assert_eq!(reg.body["id"], node_id.as_str());
    assert_eq!(
        reg.auth.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    a.wait_link("connected", Duration::from_secs(10));
}

#[test]
fn connect_refused_by_the_server_leaves_the_file_alone() {
    let server = CoordServer::start();
    server.fault("register", Fault::Status(401), u32::MAX);
    let (_dir, config) = config_file(
        "agent.yaml",
        "# keep me\ncache_dir: {cache}\ncoordination_url: \"\" # later\n",
        0o640,
    );
    let err = connect_refused(
        &config,
        &[&server.url, "--token", "wrong"],
        1,
        &format!(
            "the server refused the registration: the coordination server answered 401 to {}/api/v1/nodes",
            server.url
        ),
    );
    assert!(
        err.contains("; pass the right token with --token"),
        "says what to do: {err}"
    );
    assert_eq!(server.count("register"), 1);
}

#[test]
fn connect_to_an_unreachable_server_leaves_the_file_alone() {
    let server = CoordServer::reserved();
    let (_dir, config) = config_file("agent.yaml", "cache_dir: {cache}\n", 0o644);
    // It names the server.
    connect_refused(
        &config,
        &[&server.url, "--token", TOKEN],
        1,
        &format!(
            "registration failed, the config was not changed: cannot reach the coordination server at {}/api/v1/nodes: io: Connection refused",
            server.url
        ),
    );
}

#[test]
fn connect_rejects_a_url_that_is_not_http() {
    let (dir, config) = config_file("agent.yaml", "cache_dir: {cache}\n", 0o644);
    connect_refused(
        &config,
        &["ftp://x"],
        2,
        &format!(
            "config file {}: key coordination_url: \"ftp://x\" is not an http:// or https:// URL",
            config.display()
        ),
    );
    assert!(
        !dir.path().join("cache").exists(),
        "nothing done before the URL was checked"
    );
}

#[test]
fn connect_updates_a_json_config() {
    let server = CoordServer::start();
    let (_dir, config) = config_file(
        "agent.json",
        r#"{"cache_dir": "{cache}", "labels": {"rack": "r9"}, "workers": 3}"#,
        0o644,
    );
    let out = agent_connect(&config, &[&server.url]);
    let (stdout, stderr) = streams(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(server.count("register"), 1);
    assert_eq!(server.requests("register")[0].auth, None, "no token given");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    assert_eq!(v["coordination_url"], server.url.as_str());
    assert_eq!(v["labels"]["rack"], "r9");
    assert_eq!(v["workers"], 3);
    assert!(v.get("auth_token").is_none(), "{v}");
    assert_eq!(file_mode(&config), 0o600);
    assert!(
        stdout.contains("(mode 0600): set coordination_url\n"),
        "{stdout}"
    );
}

#[test]
fn connect_creates_a_missing_file() {
    let server = CoordServer::start();
    let dir = TempDir::new("conn");
    let config = dir.path().join("etc/vendetta/agent.yaml");
    // Without a config file the cache dir is the default one: as root that
    // is /var/lib/vendetta, which a test must not touch, so the command
    // runs as nobody with its state under the temp dir.
    let state = dir.path().join("state");
    let mut cmd = Command::new(BIN);
    cmd.args([
        "agent",
        "connect",
        &server.url,
        "--token",
        TOKEN,
        "--config",
    ])
    .arg(&config)
    .env_remove("VENDETTA_CONFIG")
    .env_remove("VENDETTA_COORD_URL")
    .env_remove("VENDETTA_AUTH_TOKEN")
    .env("XDG_STATE_HOME", &state)
    .env("HOME", dir.path());
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
        cmd.uid(65534).gid(65534);
    }
    let out = cmd.output().expect("run vendetta agent connect");
    let (stdout, stderr) = streams(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(file_mode(&config), 0o600);
    let new = std::fs::read_to_string(&config).unwrap();
    assert_eq!(
        new,
        format!(
            "coordination_url: \"{}\"\nauth_token: \"{TOKEN}\"\n",
            server.url
        )
    );
    assert!(
        stdout.contains(&format!("created {} (mode 0600)", config.display())),
        "{stdout}"
    );
    let node_id = std::fs::read_to_string(state.join("vendetta/node_id")).unwrap();
    assert_eq!(server.requests("register")[0].body["id"], node_id.trim());
}

#[test]
fn connect_never_rewrites_a_config_file_it_cannot_read() {
    let server = CoordServer::start();
    // A JSON file with a syntax error and one with an unknown key: neither
    // may be replaced by a file holding only coordination_url.
    for (name, body, why) in [
        (
            "broken.json",
            r#"{"cache_dir": "{cache}", "workers": 3,}"#,
            "line 1: not valid JSON: trailing comma",
        ),
        (
            "unknown.json",
            r#"{"cache_dir": "{cache}", "wrokers": 3}"#,
            "line 1: key wrokers: unknown field `wrokers`",
        ),
        (
            "broken.yaml",
            "cache_dir: {cache}\nlabels: [unclosed\n",
            "line 2: key labels: invalid type: sequence, expected a map",
        ),
    ] {
        let (_dir, config) = config_file(name, body, 0o644);
        let want = format!("config file {}, {why}", config.display());
        connect_refused(&config, &[&server.url, "--token", TOKEN], 2, &want);
    }
    assert_eq!(server.count("register"), 0, "nothing sent");
}
