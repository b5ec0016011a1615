//! The core with commands that take time (Docker `sleep`): a full queue,
//! exec output streamed to the CLI, shutdown with commands running and
//! waiting, and a crash mid-command with a coordination server.

use crate::coord::{link_yaml, registered};
use crate::docker::{docker_agent, running_session, Sessions, IMAGE};
use crate::util::coord::CoordServer;
use crate::util::{
    api_error, create_started, failed, next_id, ok, text, wait_until, Agent, Events,
};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A session.exec of `sh -c SCRIPT` in `session`, with id `id`.
fn exec_cmd(id: &str, session: &str, script: &str) -> Value {
    json!({"id": id, "type": "session", "action": "exec",
           "params": {"session_id": session, "command": ["sh", "-c", script]}})
}

fn exec_body(id: &str, session: &str, script: &str) -> String {
    exec_cmd(id, session, script).to_string()
}

/// Waits until command `id` is in `state` (queued, running) by its own
/// record, `GET /api/v1/commands/{id}`.
fn wait_state(a: &Agent, id: &str, state: &str, timeout: Duration) {
    assert!(
        wait_until(timeout, || a.command(id).1["status"] == state),
        "{id} never was {state}: {}",
        a.command(id).1
    );
}

#[test]
fn a_full_queue_answers_429_at_once_and_records_nothing() {
    let (_s, a, sid) = running_session("queue", "workers: 1\nqueue_size: 1\n");
    let (busy, queued, refused) = (
        format!("busy-{}", next_id()),
        format!("queued-{}", next_id()),
        format!("refused-{}", next_id()),
    );
    a.submit(&exec_cmd(&busy, &sid, "sleep 4"));
    wait_state(&a, &busy, "running", Duration::from_secs(10));
    a.submit(&exec_cmd(&queued, &sid, "sleep 4"));
    let mut events = Events::open(&a);
    let t = Instant::now();
    let answer = a.post(&exec_body(&refused, &sid, "true"));
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "answered at once, took {:?}",
        t.elapsed()
    );
    api_error(answer, 429, "queue_full", "queue");
    // Watchers saw it queued, then refused: no command is left hanging.
    let refused_event = events
        .wait_for(Duration::from_secs(5), |e| {
            e["id"] == refused.as_str() && e["state"] == "refused"
        })
        .expect("a refused event");
    assert_eq!(refused_event["reason"], "queue_full");
    // A refused command is not recorded.
    api_error(
        a.command(&refused),
        404,
        "not_found",
        &format!("no result stored for command {refused}"),
    );
    assert!(a
        .metrics()
        .contains("vendetta_commands_refused_total{reason=\"queue_full\"} 1"));
    // Both accepted commands still finish.
    ok(&a.wait_result(&busy, Duration::from_secs(20)));
    ok(&a.wait_result(&queued, Duration::from_secs(20)));
}

/// Output, a pause, more output, and a failing exit.
const SLOW_OUTPUT: &str = "echo first; echo oops >&2; sleep 3; echo second; exit 7";

#[test]
fn exec_output_streams_to_the_cli_as_it_arrives() {
    let (_s, a, sid) = running_session("stream", "");
    let mut child = a
        .cli_command(&["session", "exec", &sid, "--", "sh", "-c", SLOW_OUTPUT])
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
    let o = a.cli(&[
        "session",
        "exec",
        "--timeout",
        "1s",
        &sid,
        "--",
        "sleep",
        "30",
    ]);
    assert_eq!(o.status.code(), Some(124), "{}", text(&o));
    assert!(
        text(&o).contains("exec timed out after 1s and was killed"),
        "{}",
        text(&o)
    );
}

#[test]
fn shutdown_finishes_running_commands_and_answers_waiters() {
    let (_s, mut a, sid) = running_session("shutdown", "workers: 1\nshutdown_timeout: 20s\n");
    let (running, waiting) = (format!("run-{}", next_id()), format!("wait-{}", next_id()));
    let (first, second) = std::thread::scope(|scope| {
        let first = scope.spawn(|| a.post(&exec_body(&running, &sid, "sleep 6; echo done")));
        wait_state(&a, &running, "running", Duration::from_secs(10));
        let second = scope.spawn(|| a.post(&exec_body(&waiting, &sid, "echo later")));
        wait_state(&a, &waiting, "queued", Duration::from_secs(5));
        a.signal(libc::SIGTERM);
        // While the running command finishes, the API answers: health
        // says stopping, and nothing new starts.
        assert!(
            wait_until(Duration::from_secs(5), || a.get("/health").0 == 503),
            "/health did not turn 503 during the drain"
        );
        let (_, health) = a.get("/health");
        assert_eq!(health["status"], "stopping", "{health}");
        assert_eq!(
            health["problems"][0], "the agent is shutting down",
            "{health}"
        );
        for route in ["/api/v1/sessions", "/api/v1/events"] {
            api_error(
                a.get(route),
                503,
                "shutting_down",
                "the agent is shutting down",
            );
        }
        let late = exec_body(&format!("late-{}", next_id()), &sid, "true");
        api_error(
            a.post(&late),
            503,
            "shutting_down",
            "retry after it restarts",
        );
        (first.join().unwrap(), second.join().unwrap())
    });
    assert_eq!(first.0, 200, "{}", first.1);
    assert_eq!(
        first.1["data"]["stdout"], "done\n",
        "the running command finished"
    );
    api_error(second, 503, "shutting_down", "will run after restart");
    let st = a.wait_exit(Duration::from_secs(25)).expect("exits");
    assert_eq!(st.code(), Some(0));
    a.restart();
    let later = a.wait_result(&waiting, Duration::from_secs(20));
    assert_eq!(ok(&later)["stdout"], "later\n");
    let (s, done) = a.command(&running);
    assert_eq!((s, &done), (200, &first.1), "kept across the restart");
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
    let r = server.wait_results(&long, 1, Duration::from_secs(20))[0].clone();
    failed(&r, "agent_restarted", "agent restarted during execution");
    server.wait_results(&quick, 1, Duration::from_secs(20));
    // The server sends it again, as it does with what it has no result
    // for: it is answered with the stored result, not run again.
    server.queue(
        &node,
        json!({"id": long, "type": "session", "action": "exec",
        "params": {"session_id": sid, "command": ["sh", "-c", script]}}),
    );
    let results = server.wait_results(&long, 2, Duration::from_secs(10));
    for again in &results[1..] {
        assert_eq!(again["started"], r["started"], "{again}");
        failed(again, "agent_restarted", "agent restarted during execution");
    }
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
        (o.status.code(), text(&o))
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
    let greet = "echo $GREETING; ls -d /workspace";
    let (code, out) = cli(&["session", "exec", &sid, "--", "sh", "-c", greet]);
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
