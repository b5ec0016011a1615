//! The core with commands that take time (Docker `sleep`): a full queue,
//! exec output streamed to the CLI, shutdown with commands running and
//! waiting, and a crash mid-command with a coordination server.

use crate::coord::{link_yaml, registered};
use crate::docker::{create_started, docker_agent, Sessions, IMAGE};
use crate::util::coord::CoordServer;
use crate::util::{next_id, wait_until, Agent, Events, BIN, TOKEN};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn exec_body(id: &str, session: &str, script: &str) -> String {
    json!({"id": id, "type": "session", "action": "exec",
           "params": {"session_id": session, "command": ["sh", "-c", script]}})
    .to_string()
}

fn state_of(a: &Agent, id: &str) -> (u16, Value) {
    a.get(&format!("/api/v1/commands/{id}"))
}

#[test]
fn a_full_queue_answers_429_at_once_and_records_nothing() {
    let s = Sessions::new("queue");
    let a = docker_agent("workers: 1\nqueue_size: 1\n");
    let sid = s.id("q");
    create_started(&a, &sid, json!({}));
    let (busy, queued, refused) = (
        format!("busy-{}", next_id()),
        format!("queued-{}", next_id()),
        format!("refused-{}", next_id()),
    );
    let async_post = |id: &str| {
        a.post_path(
            "/api/v1/commands?async=true",
            &exec_body(id, &sid, "sleep 4"),
            Some(TOKEN),
        )
    };
    assert_eq!(async_post(&busy).0, 202);
    assert!(wait_until(Duration::from_secs(10), || state_of(&a, &busy)
        .1["status"]
        == "running"));
    assert_eq!(async_post(&queued).0, 202);
    let mut events = Events::open(&a);
    let t = Instant::now();
    let (status, body) = a.post(&exec_body(&refused, &sid, "true"));
    assert_eq!(status, 429, "{body}");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "answered at once, took {:?}",
        t.elapsed()
    );
    assert_eq!(body["code"], "queue_full");
    // Watchers saw it queued, then refused: no command is left hanging.
    let refused_event = events
        .wait_for(Duration::from_secs(5), |e| {
            e["id"] == refused.as_str() && e["state"] == "refused"
        })
        .expect("a refused event");
    assert_eq!(refused_event["reason"], "queue_full");
    assert_eq!(
        state_of(&a, &refused).0,
        404,
        "a refused command is not recorded"
    );
    let (_, m) = a.get_as("/metrics", None);
    assert!(m
        .as_str()
        .unwrap()
        .contains("vendetta_commands_refused_total{reason=\"queue_full\"} 1"));
    // Both accepted commands still finish.
    assert!(wait_until(Duration::from_secs(20), || state_of(
        &a, &queued
    )
    .1["status"]
        == "success"));
}

#[test]
fn exec_output_streams_to_the_cli_as_it_arrives() {
    let s = Sessions::new("stream");
    let a = docker_agent("");
    let sid = s.id("s");
    create_started(&a, &sid, json!({}));
    let mut child = Command::new(BIN)
        .args([
            "session",
            "exec",
            &sid,
            "--",
            "sh",
            "-c",
            "echo first; echo oops >&2; sleep 3; echo second; exit 7",
        ])
        .env("VENDETTA_AGENT_URL", &a.url)
        .env("VENDETTA_API_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "first\n");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "first line came after {:?}",
        started.elapsed()
    );
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "second\n");
    let status = child.wait().unwrap();
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert_eq!(
        status.code(),
        Some(7),
        "the CLI exits with the command's code"
    );
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(err, "oops\n");
    // A timeout is exit 124.
    let o = Command::new(BIN)
        .args([
            "session",
            "exec",
            "--timeout",
            "1s",
            &sid,
            "--",
            "sleep",
            "30",
        ])
        .env("VENDETTA_AGENT_URL", &a.url)
        .env("VENDETTA_API_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(124),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn shutdown_finishes_running_commands_and_answers_waiters() {
    let s = Sessions::new("shutdown");
    let mut a = docker_agent("workers: 1\nshutdown_timeout: 20s\n");
    let sid = s.id("d");
    create_started(&a, &sid, json!({}));
    let (running, waiting) = (format!("run-{}", next_id()), format!("wait-{}", next_id()));
    let (first, second) = std::thread::scope(|scope| {
        let first = scope.spawn(|| a.post(&exec_body(&running, &sid, "sleep 3; echo done")));
        assert!(wait_until(Duration::from_secs(10), || state_of(
            &a, &running
        )
        .1["status"]
            == "running"));
        let second = scope.spawn(|| a.post(&exec_body(&waiting, &sid, "echo later")));
        assert!(wait_until(Duration::from_secs(5), || state_of(
            &a, &waiting
        )
        .1["status"]
            == "queued"));
        a.signal(libc::SIGTERM);
        (first.join().unwrap(), second.join().unwrap())
    });
    assert_eq!(first.0, 200, "{}", first.1);
    assert_eq!(
        first.1["data"]["stdout"], "done\n",
        "the running command finished"
    );
    assert_eq!(second.0, 503, "{}", second.1);
    assert!(
        second.1["error"]
            .as_str()
            .unwrap()
            .contains("will run after restart"),
        "{}",
        second.1
    );
    let st = a.wait_exit(Duration::from_secs(25)).expect("exits");
    assert_eq!(st.code(), Some(0));
    a.restart();
    assert!(
        wait_until(Duration::from_secs(20), || state_of(&a, &waiting).1
            ["status"]
            == "success"),
        "{}",
        a.log()
    );
    assert_eq!(state_of(&a, &waiting).1["data"]["stdout"], "later\n");
    assert_eq!(
        state_of(&a, &running).1["status"],
        "success",
        "kept across the restart"
    );
}

#[test]
fn a_crash_mid_command_is_reported_once_to_the_server_and_nothing_runs_twice() {
    let s = Sessions::new("crash");
    let server = CoordServer::start();
    let mut a = Agent::start(&link_yaml(&server, &format!("docker:\n  image: {IMAGE}\n")));
    let node = registered(&server);
    let sid = s.id("c");
    create_started(&a, &sid, json!({}));
    let marker = format!("/tmp/ran-{}", next_id());
    let (long, quick) = (
        format!("long-{}", next_id()),
        format!("quick-{}", next_id()),
    );
    let script = format!("echo x >> {marker}; sleep 30");
    server.queue(
        &node,
        json!({"id": long, "type": "session", "action": "exec",
        "params": {"session_id": sid, "command": ["sh", "-c", script]}}),
    );
    // Killed once the command has really done its first step (a state of
    // "running" alone may come before the process does anything).
    let ran = |a: &Agent| {
        let cat = a.cmd(
            "session",
            "exec",
            json!({"session_id": sid, "command": ["cat", marker]}),
        );
        cat["data"]["stdout"]
            .as_str()
            .unwrap_or_default()
            .matches('x')
            .count()
    };
    assert!(wait_until(Duration::from_secs(15), || ran(&a) == 1));
    a.kill9();
    server.queue(
        &node,
        json!({"id": quick, "type": "system", "action": "status"}),
    );
    a.restart();
    assert!(
        wait_until(Duration::from_secs(20), || !server
            .results_for(&long)
            .is_empty()
            && !server.results_for(&quick).is_empty()),
        "{}",
        a.log()
    );
    let r = &server.results_for(&long)[0];
    assert_eq!(r["status"], "failed");
    assert_eq!(r["code"], "agent_restarted");
    // The server keeps re-sending what it has no result for; none of it runs again.
    std::thread::sleep(Duration::from_secs(5));
    server.queue(
        &node,
        json!({"id": long, "type": "session", "action": "exec",
        "params": {"session_id": sid, "command": ["sh", "-c", script]}}),
    );
    assert!(wait_until(Duration::from_secs(10), || server
        .results_for(&long)
        .len()
        >= 2));
    assert_eq!(ran(&a), 1, "the command ran once");
}

#[test]
fn cli_session_verbs_round_trip() {
    let s = Sessions::new("cli");
    let a = docker_agent("");
    let sid = s.id("c");
    let ws = crate::util::TempDir::new("clews");
    let cli = |args: &[&str]| {
        let o = a.cli(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.code(), text)
    };
    let (code, out) = cli(&[
        "session",
        "create",
        &sid,
        "--image",
        IMAGE,
        "--workspace",
        ws.path().to_str().unwrap(),
        "--env",
        "GREETING=hi",
        "--port",
        "8080",
        "--memory",
        "64m",
        "--cpus",
        "0.5",
        "--pids",
        "64",
        "--label",
        "team=core",
        "--",
        "sleep",
        "1000",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&sid) && out.contains("created"), "{out}");
    let (code, out) = cli(&["session", "start", &sid]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("running") && out.contains("->8080/tcp"),
        "{out}"
    );
    let (code, out) = cli(&[
        "session",
        "exec",
        &sid,
        "--",
        "sh",
        "-c",
        "echo $GREETING; ls -d /workspace",
    ]);
    assert_eq!((code, out.as_str()), (Some(0), "hi\n/workspace\n"));
    let (code, out) = cli(&["session", "list", "--json"]);
    assert_eq!(code, Some(0));
    let doc: Value = serde_json::from_str(&out).unwrap();
    let me = doc["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == sid.as_str())
        .cloned()
        .unwrap();
    assert_eq!(me["labels"]["team"], "core");
    let (code, out) = cli(&["service", "list"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&sid), "{out}");
    let (code, out) = cli(&["session", "stop", "--grace", "1s", &sid]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("stopped"), "{out}");
    let (code, out) = cli(&["session", "destroy", &sid]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("destroyed"), "{out}");
}
