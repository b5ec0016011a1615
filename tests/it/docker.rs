//! The Docker provider against this machine's real engine, driven through
//! the agent binary's API and CLI, with the engine's side checked through
//! its own API (curl on the socket, not our client).
//!
//! Needs the engine and the image vendetta-test/busybox:latest (and its
//! -health variant), which `make images` (tests/setup/images.sh) builds
//! offline. Session ids carry this run's pid so parallel runs on the same
//! engine never meet, and every test removes its containers on drop, also
//! when it fails. The only test double is [`EngineProxy`], standing in for
//! an engine outage that cannot be staged on a shared engine.

use crate::util::{
    assert_interrupted_and_reaped, create, create_started, destroy, exec, failed, find_session,
    host_pids, next_id, ok, run_ok, sessions, start_sleep, wait_until, Agent, Events, TempDir,
};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub(crate) const IMAGE: &str = "vendetta-test/busybox:latest";
const HEALTH_IMAGE: &str = "vendetta-test/busybox-health:latest";
const SOCK: &str = "/var/run/docker.sock";

/// One call to the engine's API through curl; unversioned paths (the
/// engine's newest version), so this check does not share our negotiation.
pub(crate) fn engine(method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "--max-time",
        "60",
        "--unix-socket",
        SOCK,
        "-X",
        method,
    ])
    .args(["-w", "\n%{http_code}"]);
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "-d"])
            .arg(b.to_string());
    }
    let out = cmd
        .arg(format!("http://localhost{path}"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let status = code.trim().parse().unwrap_or(0);
    let v = serde_json::from_str(body).unwrap_or(Value::String(body.to_string()));
    (status, v)
}

fn inspect(name: &str) -> (u16, Value) {
    engine("GET", &format!("/containers/{name}/json"), None)
}

/// Fails loudly (never skips) when the engine or the images are missing.
fn require_engine() {
    let (s, _) = engine("GET", "/_ping", None);
    assert_eq!(
        s, 200,
        "no Docker Engine on {SOCK}: these tests need the real engine"
    );
    for image in [IMAGE, HEALTH_IMAGE] {
        let (s, _) = engine("GET", &format!("/images/{image}/json"), None);
        assert_eq!(
            s, 200,
            "image {image} is missing: run `make images` (tests/setup/images.sh)"
        );
    }
}

static RUN: AtomicU32 = AtomicU32::new(0);

/// Unique session ids for one test, and the guard that force-removes every
/// container whose name carries them, also when the test fails.
pub(crate) struct Sessions {
    prefix: String,
}

impl Sessions {
    pub(crate) fn new(tag: &str) -> Sessions {
        require_engine();
        let n = RUN.fetch_add(1, Ordering::SeqCst);
        Sessions {
            prefix: format!("vt{}x{n}-{tag}", std::process::id()),
        }
    }

    pub(crate) fn id(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    fn containers(&self) -> Vec<Value> {
        let filter = json!({"name": [format!("^/vendetta-{}-", self.prefix)]}).to_string();
        let (_, list) = engine(
            "GET",
            &format!("/containers/json?all=1&filters={}", urlencode(&filter)),
            None,
        );
        list.as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Sessions {
    fn drop(&mut self) {
        for c in self.containers() {
            if let Some(id) = c["Id"].as_str() {
                engine("DELETE", &format!("/containers/{id}?force=1&v=1"), None);
            }
        }
    }
}

pub(crate) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

pub(crate) fn docker_agent(extra: &str) -> Agent {
    Agent::start(&format!("docker:\n  image: {IMAGE}\n{extra}"))
}

/// The set-up most Docker tests share: the session guard for `tag`, an
/// agent with `extra` config, and one session created and started in it.
pub(crate) fn running_session(tag: &str, extra: &str) -> (Sessions, Agent, String) {
    let g = Sessions::new(tag);
    let a = docker_agent(extra);
    let id = g.id("a");
    create_started(&a, &id, json!({}));
    (g, a, id)
}

fn sh(a: &Agent, id: &str, script: &str) -> Value {
    exec(a, id, json!({"command": ["sh", "-c", script]}))
}

fn session_list(a: &Agent) -> Vec<Value> {
    sessions(a, "docker")
}

#[test]
fn create_with_workspace_env_ports_and_limits() {
    let g = Sessions::new("create");
    let a = docker_agent("");
    let ws = TempDir::new("dws");
    std::fs::write(ws.path().join("hello.txt"), "from the host").unwrap();
    let id = g.id("a");
    let r = a.cmd(
        "session",
        "create",
        json!({"session_id": id, "workspace_path": ws.path(), "env": {"GREETING": "hi there"},
               "ports": ["8080", "5353/udp"], "resources": {"memory": "64m", "cpus": 0.5, "pids": 64},
               "labels": {"team": "blue"}}),
    );
    let s = ok(&r);
    assert_eq!(s["id"], id.as_str());
    assert_eq!(s["provider"], "docker");
    assert_eq!(s["status"], "created");
    assert_eq!(s["image"], IMAGE);
    assert_eq!(s["labels"]["team"], "blue");
    assert_eq!(s["labels"]["vendetta.managed"], "true");
    assert_eq!(s["labels"]["vendetta.session"], id.as_str());
    assert!(s["created"].as_str().unwrap().ends_with('Z'), "{s}");

    // The engine's side.
    let node = a.cmd("system", "status", json!({}))["data"]["node_id"].clone();
    let (st, c) = inspect(&format!("vendetta-{id}"));
    assert_eq!(st, 200, "{c}");
    let labels = &c["Config"]["Labels"];
    assert_eq!(labels["vendetta.managed"], "true");
    assert_eq!(labels["vendetta.session"], id.as_str());
    assert_eq!(labels["vendetta.node"], node);
    assert_eq!(labels["team"], "blue");
    let h = &c["HostConfig"];
    assert_eq!(h["Memory"], 64 << 20);
    assert_eq!(h["MemorySwap"], 64 << 20);
    assert_eq!(h["NanoCpus"], 500_000_000);
    assert_eq!(h["PidsLimit"], 64);
    assert_eq!(h["Init"], true);
    assert_eq!(
        h["PortBindings"]["8080/tcp"][0]["HostIp"], "127.0.0.1",
        "published on loopback only"
    );
    // The engine binds the agent's seal of the workspace, never the
    // caller's path (which could be swapped before the engine resolves it).
    let sealed = a.cache().join("sealed").join(&id);
    let mount = &c["Mounts"][0];
    assert_eq!(mount["Type"], "bind", "{c}");
    assert_eq!(mount["Source"], sealed.to_str().unwrap());
    assert_eq!(mount["Destination"], "/workspace");
    assert!(c["Config"]["Env"]
        .as_array()
        .unwrap()
        .contains(&json!("GREETING=hi there")));
    assert_eq!(c["Config"]["Cmd"], json!(["sleep", "infinity"]));

    // Host ports are assigned at start and read back into the record.
    let started = ok(&a.cmd("session", "start", json!({"session_id": id}))).clone();
    assert_eq!(started["status"], "running");
    let (_, c) = inspect(&format!("vendetta-{id}"));
    for port in ["8080/tcp", "5353/udp"] {
        let host: u64 = c["NetworkSettings"]["Ports"][port][0]["HostPort"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(host > 0);
        assert_eq!(started["ports"][port], host, "{started}");
    }
    let mine = find_session(&session_list(&a), &id).unwrap();
    assert_eq!(mine["ports"], started["ports"]);

    // The workspace is the host directory, both ways; env and workdir apply.
    let r = exec(&a, &id, json!({"command": ["cat", "hello.txt"]}));
    assert_eq!(ok(&r)["stdout"], "from the host", "workdir is /workspace");
    let r = sh(
        &a,
        &id,
        "echo \"$GREETING\"; echo made > /workspace/out.txt",
    );
    assert_eq!(ok(&r)["stdout"], "hi there\n");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("out.txt")).unwrap(),
        "made\n"
    );
    // The limits hold inside: the cgroup says 64 MiB.
    let r = sh(
        &a,
        &id,
        "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
    );
    assert_eq!(ok(&r)["stdout"], format!("{}\n", 64 << 20));
    assert_eq!(destroy(&a, &id)["existed"], true);
}

#[test]
fn exec_codes_streams_stdin_env_workdir_user() {
    let (_g, a, id) = running_session("exec", "");

    let r = exec(&a, &id, json!({"command": ["true"]}));
    assert_eq!(ok(&r)["exit_code"], 0);
    let r = sh(&a, &id, "echo to-out; echo to-err >&2; exit 7");
    let d = ok(&r);
    assert_eq!(d["exit_code"], 7);
    assert_eq!(r["exit_code"], 7);
    assert_eq!(d["stdout"], "to-out\n");
    assert_eq!(d["stderr"], "to-err\n");
    assert_eq!(d["stdout_truncated"], false);

    let r = exec(
        &a,
        &id,
        json!({"command": ["cat"], "stdin": "line 1\nline 2\n"}),
    );
    assert_eq!(ok(&r)["stdout"], "line 1\nline 2\n");
    // Large stdin while the command writes as much: no deadlock.
    let big = "x".repeat(600_000);
    let r = exec(
        &a,
        &id,
        json!({"command": ["sh", "-c", "cat; cat /dev/null"], "stdin": big}),
    );
    assert_eq!(ok(&r)["stdout"].as_str().unwrap().len(), 600_000);
    // stdin the command never reads.
    let r = exec(&a, &id, json!({"command": ["true"], "stdin": "ignored"}));
    assert_eq!(ok(&r)["exit_code"], 0);

    let r = exec(
        &a,
        &id,
        json!({"command": ["sh", "-c", "echo $X-$Y; pwd; id -u"], "env": {"X": "ex", "Y": "why"},
               "workdir": "/tmp", "user": "nobody"}),
    );
    assert_eq!(ok(&r)["stdout"], "ex-why\n/tmp\n65534\n");

    let r = exec(&a, &id, json!({"command": ["/no/such/binary"]}));
    let d = ok(&r);
    // The engine reports a start failure inside the stream, as for the CLI.
    assert_eq!(d["exit_code"], 126, "{d}");
    assert!(
        d["stdout"].as_str().unwrap().contains("/no/such/binary"),
        "{d}"
    );
    let r = exec(
        &a,
        &id,
        json!({"command": ["true"], "user": "no-such-user"}),
    );
    let d = ok(&r);
    assert_eq!(d["exit_code"], 126, "{d}");
    assert!(
        d["stdout"].as_str().unwrap().contains("no-such-user"),
        "{d}"
    );

    // The CLI passes output and exit code through.
    let out = a.cli(&[
        "session",
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "echo from-cli; echo cli-err >&2; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-cli\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cli-err"));

    // A stopped session refuses exec clearly.
    ok(&a.cmd(
        "session",
        "stop",
        json!({"session_id": id, "timeout": "1s"}),
    ));
    let r = exec(&a, &id, json!({"command": ["true"]}));
    failed(&r, "conflict", "not running");
}

#[test]
fn exec_output_is_cut_at_the_cap() {
    let (_g, a, id) = running_session("cap", "");
    // 5 MB on each stream; the default cap is 1 MiB per stream.
    let r = sh(
        &a,
        &id,
        "head -c 5000000 /dev/zero | tr '\\0' a; head -c 5000000 /dev/zero | tr '\\0' b >&2; exit 3",
    );
    let d = ok(&r);
    assert_eq!(d["exit_code"], 3);
    let out = d["stdout"].as_str().unwrap();
    let err = d["stderr"].as_str().unwrap();
    assert_eq!(out.len(), 1 << 20);
    assert_eq!(err.len(), 1 << 20);
    assert!(out.bytes().all(|b| b == b'a') && err.bytes().all(|b| b == b'b'));
    assert_eq!(d["stdout_truncated"], true);
    assert_eq!(d["stderr_truncated"], true);
    // Small output is not flagged.
    let r = sh(&a, &id, "echo small");
    assert_eq!(ok(&r)["stdout_truncated"], false);
}

#[test]
fn exec_timeout_kills_the_whole_process_tree() {
    let (_g, a, id) = running_session("timeout", "");
    // Durations unique to this run mark our processes on the host.
    let base = 200_000 + (std::process::id() % 100_000) * 3;
    let (n1, n2, n3) = (
        base.to_string(),
        (base + 1).to_string(),
        (base + 2).to_string(),
    );
    let script = format!("sleep {n1} & setsid sleep {n2} & sleep {n3}");
    let cmd_id = format!("to-{}", next_id());
    let started = Instant::now();
    a.submit(&json!({"id": cmd_id, "type": "session", "action": "exec",
            "params": {"session_id": id, "command": ["sh", "-c", script], "timeout": "3s"}}));
    // All three exist on the host while the exec runs...
    assert!(
        wait_until(Duration::from_secs(3), || {
            [&n1, &n2, &n3]
                .iter()
                .all(|n| !host_pids(&["sleep", n]).is_empty())
        }),
        "the exec's processes never showed up"
    );
    let result = a.wait_result(&cmd_id, Duration::from_secs(20));
    let elapsed = started.elapsed();
    failed(&result, "timeout", "exec timed out after 3s and was killed");
    assert_eq!(result["data"]["timed_out"], true);
    assert_eq!(result["data"]["exit_code"], Value::Null);
    assert!(
        elapsed < Duration::from_secs(12),
        "timeout took {elapsed:?}"
    );
    // ...and none of them, not even the setsid'd one, is left.
    for n in [&n1, &n2, &n3] {
        assert!(
            wait_until(Duration::from_secs(2), || host_pids(&["sleep", n])
                .is_empty()),
            "sleep {n} survived the timeout"
        );
    }
    let r = exec(&a, &id, json!({"command": ["ps", "-o", "args"]}));
    let ps = ok(&r)["stdout"].as_str().unwrap().to_string();
    assert!(
        !ps.contains(&n1) && !ps.contains(&n2) && !ps.contains(&n3),
        "{ps}"
    );
    // The session itself is untouched.
    assert_eq!(ok(&sh(&a, &id, "echo alive"))["stdout"], "alive\n");
}

#[test]
fn lifecycle_is_idempotent() {
    let g = Sessions::new("life");
    let a = docker_agent("");
    let id = g.id("a");
    let name = format!("vendetta-{id}");
    create(&a, &id, json!({}));
    for _ in 0..2 {
        assert_eq!(
            ok(&a.cmd("session", "start", json!({"session_id": id})))["status"],
            "running"
        );
        assert_eq!(inspect(&name).1["State"]["Running"], true);
    }
    for _ in 0..2 {
        let t = Instant::now();
        let s = ok(&a.cmd(
            "session",
            "stop",
            json!({"session_id": id, "timeout": "10s"}),
        ))
        .clone();
        assert_eq!(s["status"], "stopped", "{s}");
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "Init stops the default process at once, not after the grace: {:?}",
            t.elapsed()
        );
        assert_eq!(inspect(&name).1["State"]["Running"], false);
    }
    // Still stopped (not exited) when listed: the stop was ours.
    let status_of = |a: &Agent| find_session(&session_list(a), &id).unwrap();
    assert_eq!(status_of(&a)["status"], "stopped");
    // Started and killed behind the agent's back: that exit is not ours.
    // A change the agent did not make shows once its engine event is
    // applied (milliseconds), not at the very next list.
    assert_eq!(
        engine("POST", &format!("/containers/{name}/start"), None).0,
        204
    );
    assert!(
        wait_until(Duration::from_secs(10), || status_of(&a)["status"]
            == "running"),
        "a start behind the agent's back never showed"
    );
    assert_eq!(
        engine("POST", &format!("/containers/{name}/kill"), None).0,
        204
    );
    let mut s = Value::Null;
    assert!(
        wait_until(Duration::from_secs(10), || {
            s = status_of(&a);
            s["status"] == "exited"
        }),
        "{s}"
    );
    assert_eq!(s["exit_code"], 137, "{s}");
    assert_eq!(
        ok(&a.cmd("session", "start", json!({"session_id": id})))["status"],
        "running"
    );
    assert_eq!(destroy(&a, &id)["existed"], true);
    assert_eq!(inspect(&name).0, 404);
    assert_eq!(destroy(&a, &id)["existed"], false);
    let r = a.cmd("session", "start", json!({"session_id": id}));
    failed(&r, "not_found", &id);
}

#[test]
fn a_name_clash_with_a_foreign_container_is_refused() {
    let g = Sessions::new("clash");
    let a = docker_agent("");
    let node = a.cmd("system", "status", json!({}))["data"]["node_id"].clone();
    let id = g.id("a");
    let name = format!("vendetta-{id}");
    // Unlabelled, and labelled as another node's: neither is ours.
    let other = g.id("b");
    let other_name = format!("vendetta-{other}");
    let (s, _) = engine(
        "POST",
        &format!("/containers/create?name={name}"),
        Some(&json!({"Image": IMAGE, "Cmd": ["sleep", "60"]})),
    );
    assert_eq!(s, 201);
    let (s, _) = engine(
        "POST",
        &format!("/containers/create?name={other_name}"),
        Some(&json!({"Image": IMAGE, "Cmd": ["sleep", "60"],
            "Labels": {"vendetta.managed": "true", "vendetta.session": other, "vendetta.node": "node-elsewhere"}})),
    );
    assert_eq!(s, 201);
    assert_ne!(node, "node-elsewhere");
    for (sid, why) in [(&id, "vendetta.managed"), (&other, "node-elsewhere")] {
        let r = a.cmd("session", "create", json!({"session_id": sid}));
        let e = failed(&r, "conflict", "refusing");
        assert!(e.contains(why), "{e}");
    }
    // Not listed, not startable, not destroyable: untouched.
    assert!(session_list(&a).is_empty());
    for action in ["start", "stop", "exec"] {
        let mut p = json!({"session_id": id});
        if action == "exec" {
            p["command"] = json!(["true"]);
        }
        let r = a.cmd("session", action, p);
        failed(&r, "not_found", &id);
    }
    assert_eq!(destroy(&a, &id)["existed"], false);
    let (s, c) = inspect(&name);
    assert_eq!(s, 200, "the foreign container must survive");
    assert_eq!(c["Config"]["Labels"], json!({}));
    assert_eq!(c["State"]["Status"], "created", "never started by us");
    assert_eq!(inspect(&other_name).0, 200);
}

#[test]
fn agent_crash_mid_exec_readopts_sessions_and_reports_the_command() {
    let g = Sessions::new("crash");
    let mut a = docker_agent("");
    let (s1, s2, s3) = (g.id("run"), g.id("stopped"), g.id("created"));
    create_started(&a, &s1, json!({"ports": ["80"]}));
    create_started(&a, &s2, json!({}));
    ok(&a.cmd(
        "session",
        "stop",
        json!({"session_id": s2, "timeout": "1s"}),
    ));
    create(&a, &s3, json!({}));
    let node = a.cmd("system", "status", json!({}))["data"]["node_id"].clone();

    let marker = (300_000 + std::process::id() % 100_000).to_string();
    let cmd_id = start_sleep(&a, &s1, &marker);
    // An exec someone else started in the same container (`docker exec -d`):
    // not the agent's, so it must survive the clean-up after the restart.
    let foreign = (marker.parse::<u32>().unwrap() + 1).to_string();
    let (s, made) = engine(
        "POST",
        &format!("/containers/vendetta-{s1}/exec"),
        Some(&json!({"Cmd": ["sleep", foreign]})),
    );
    assert_eq!(s, 201, "{made}");
    let (s, _) = engine(
        "POST",
        &format!("/exec/{}/start", made["Id"].as_str().unwrap()),
        Some(&json!({"Detach": true})),
    );
    assert_eq!(s, 200);
    assert!(wait_until(Duration::from_secs(5), || !host_pids(&[
        "sleep", &foreign
    ])
    .is_empty()));
    a.kill9();
    assert!(
        !host_pids(&["sleep", &marker]).is_empty(),
        "the engine keeps an exec running when its client dies"
    );
    a.restart();

    assert_interrupted_and_reaped(&a, &cmd_id, &marker);
    // Someone else's exec is untouched.
    assert!(!host_pids(&["sleep", &foreign]).is_empty());

    // The table is rebuilt from the engine: same node, same sessions.
    assert_eq!(
        a.cmd("system", "status", json!({}))["data"]["node_id"],
        node
    );
    let filter = json!({"label": ["vendetta.managed=true", format!("vendetta.node={}", node.as_str().unwrap())]}).to_string();
    let (_, managed) = engine(
        "GET",
        &format!("/containers/json?all=1&filters={}", urlencode(&filter)),
        None,
    );
    let mut engine_side: Vec<(String, String)> = managed
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["Labels"]["vendetta.session"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                c["State"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    engine_side.sort();
    let mut ours: Vec<(String, String)> = session_list(&a)
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    ours.sort();
    fn expect(s: &str) -> &str {
        match s {
            "exited" => "stopped",
            other => other,
        }
    }
    assert_eq!(ours.len(), 3, "{ours:?}");
    assert_eq!(
        ours,
        engine_side
            .iter()
            .map(|(id, st)| (id.clone(), expect(st).to_string()))
            .collect::<Vec<_>>(),
        "session list matches the engine (s2 is stopped by us: the state in cache_dir says so)"
    );
    // The re-adopted sessions work.
    assert_eq!(ok(&sh(&a, &s1, "echo back"))["stdout"], "back\n");
    let s1_rec = find_session(&session_list(&a), &s1).unwrap();
    assert!(s1_rec["ports"]["80/tcp"].as_u64().unwrap() > 0);
    destroy(&a, &s3);
}

#[test]
fn a_container_that_exits_on_its_own_is_exited_with_its_code_and_an_event() {
    let g = Sessions::new("exit");
    let a = docker_agent("");
    let id = g.id("a");
    let mut events = Events::open(&a);
    create_started(&a, &id, json!({"command": ["sh", "-c", "sleep 1; exit 3"]}));
    // The monitor notices the exit and says so on /api/v1/events.
    let seen = events.wait_for(Duration::from_secs(20), |v| {
        v["id"] == id.as_str() && v["status"] == "exited"
    });
    let ev = seen.expect("no session event with status exited");
    assert_eq!(ev["exit_code"], 3, "{ev}");
    let s = find_session(&session_list(&a), &id).unwrap();
    assert_eq!(s["status"], "exited");
    assert_eq!(s["exit_code"], 3);
    // service list shows running sessions only.
    let services = ok(&a.cmd("service", "list", json!({}))).clone();
    assert!(services.as_array().unwrap().is_empty(), "{services}");
}

#[test]
fn twenty_sessions_created_concurrently() {
    let g = Sessions::new("many");
    let a = docker_agent("workers: 8\n");
    let ids: Vec<String> = (0..20).map(|i| g.id(&i.to_string())).collect();
    std::thread::scope(|s| {
        for id in &ids {
            let a = &a;
            s.spawn(move || {
                create_started(a, id, json!({"ports": ["80"]}));
            });
        }
    });
    let listed = session_list(&a);
    let mine: Vec<&Value> = listed
        .iter()
        .filter(|s| ids.contains(&s["id"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(mine.len(), 20);
    assert!(mine.iter().all(|s| s["status"] == "running"));
    let mut ports: Vec<u64> = mine
        .iter()
        .map(|s| s["ports"]["80/tcp"].as_u64().unwrap())
        .collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 20, "each session has its own host port");
    assert_eq!(g.containers().len(), 20);
    std::thread::scope(|s| {
        for id in &ids {
            let a = &a;
            s.spawn(move || {
                destroy(a, id);
            });
        }
    });
    assert!(g.containers().is_empty());
}

/// Test double of an engine outage: a Unix socket that forwards each
/// connection to the real engine, and that the test can take down (its
/// socket file stays and refuses connections, as a dead dockerd's does,
/// and open connections are cut) and bring back. It notes the request line
/// each connection starts with (the agent sends one request per
/// connection), to show which calls the agent made.
struct EngineProxy {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<UnixStream>>>,
    requests: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl EngineProxy {
    fn start(path: &Path) -> EngineProxy {
        let mut p = EngineProxy {
            path: path.to_path_buf(),
            stop: Arc::new(AtomicBool::new(false)),
            conns: Arc::new(Mutex::new(Vec::new())),
            requests: Arc::new(Mutex::new(Vec::new())),
            thread: None,
        };
        p.up();
        p
    }

    /// The request lines seen so far.
    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    fn up(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let listener = UnixListener::bind(&self.path).expect("bind proxy socket");
        listener.set_nonblocking(true).unwrap();
        self.stop.store(false, Ordering::SeqCst);
        let (stop, conns) = (self.stop.clone(), self.conns.clone());
        let requests = self.requests.clone();
        self.thread = Some(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    // Nothing to accept: look at the stop flag again soon.
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let Ok(upstream) = UnixStream::connect(SOCK) else {
                    continue;
                };
                let mut keep = conns.lock().unwrap();
                keep.push(client.try_clone().unwrap());
                keep.push(upstream.try_clone().unwrap());
                for (mut from, to, note) in [
                    (
                        client.try_clone().unwrap(),
                        upstream.try_clone().unwrap(),
                        Some(requests.clone()),
                    ),
                    (upstream, client, None),
                ] {
                    std::thread::spawn(move || {
                        let mut to_w = &to;
                        if let Some(note) = note {
                            // The request is written at once: its line is
                            // in the first read.
                            let mut first = [0u8; 8192];
                            let n = from.read(&mut first).unwrap_or(0);
                            let line = String::from_utf8_lossy(&first[..n]);
                            note.lock()
                                .unwrap()
                                .push(line.lines().next().unwrap_or("").to_string());
                            let _ = to_w.write_all(&first[..n]);
                        }
                        let _ = std::io::copy(&mut from, &mut to_w);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
            // The listener is dropped here; the file stays.
        }));
    }

    fn down(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for EngineProxy {
    fn drop(&mut self) {
        self.down();
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn engine_outage_turns_health_red_fails_clearly_and_recovers() {
    let g = Sessions::new("outage");
    let dir = TempDir::new("dprx");
    let sock = dir.path().join("engine.sock");
    let mut proxy = EngineProxy::start(&sock);
    let a = docker_agent(&format!("  socket: {}\n", sock.display()));
    let id = g.id("a");
    create_started(&a, &id, json!({}));
    assert_eq!(ok(&sh(&a, &id, "echo before"))["stdout"], "before\n");
    let docker_ok = |a: &Agent| a.get("/health").1["providers"]["docker"]["ok"] == true;
    assert!(docker_ok(&a));
    assert!(
        wait_until(Duration::from_secs(10), || following(&a)),
        "the docker events watcher never followed the engine"
    );
    assert_no_listing(&proxy, || {
        assert_eq!(
            find_session(&session_list(&a), &id).unwrap()["status"],
            "running"
        );
    });

    // An exec in flight when the engine goes fails at once, clearly.
    let marker = (400_000 + std::process::id() % 100_000).to_string();
    let cmd_id = format!("out-{}", next_id());
    a.submit(&json!({"id": cmd_id, "type": "session", "action": "exec",
            "params": {"session_id": id, "command": ["sleep", marker], "timeout": "60s"}}));
    assert!(wait_until(Duration::from_secs(5), || !host_pids(&[
        "sleep", &marker
    ])
    .is_empty()));
    let cut = Instant::now();
    proxy.down();
    let r = a.wait_result(&cmd_id, Duration::from_secs(20));
    assert!(
        cut.elapsed() < Duration::from_secs(10),
        "{:?}",
        cut.elapsed()
    );
    let sock_name = sock.to_str().unwrap();
    failed(&r, "provider_unavailable", sock_name);
    assert!(
        wait_until(Duration::from_secs(10), || !docker_ok(&a)),
        "health stayed green with the engine gone"
    );
    let (status, h) = a.get("/health");
    assert_eq!(status, 503, "{h}");
    let msg = h["providers"]["docker"]["message"].as_str().unwrap();
    assert!(
        msg.contains(sock.to_str().unwrap()) && msg.contains("is the engine running"),
        "{msg}"
    );
    for r in [
        sh(&a, &id, "echo during"),
        a.cmd("session", "list", json!({"provider": "docker"})),
        a.cmd("session", "create", json!({"session_id": g.id("b")})),
    ] {
        failed(&r, "provider_unavailable", sock_name);
    }
    assert!(a.is_alive());

    proxy.up();
    assert!(
        wait_until(Duration::from_secs(10), || docker_ok(&a)),
        "health did not turn green again"
    );
    assert_eq!(a.get("/health").0, 200);
    assert_eq!(ok(&sh(&a, &id, "echo after"))["stdout"], "after\n");
    assert!(a.log().contains("provider docker is down"));
    assert!(a.log().contains("provider docker is back"));
    // The list answers at once (from the engine until the events watcher,
    // backing off, follows it again, then from its table).
    assert_eq!(
        find_session(&session_list(&a), &id).unwrap()["status"],
        "running"
    );
    assert!(
        wait_until(Duration::from_secs(40), || a
            .log()
            .contains("following the engine's events again")),
        "the docker events watcher did not come back"
    );
    assert_no_listing(&proxy, || {
        assert_eq!(
            find_session(&session_list(&a), &id).unwrap()["status"],
            "running"
        );
    });
    let warned = a
        .log()
        .lines()
        .filter(|l| l.contains("\"level\":\"warn\"") && l.contains("docker events:"))
        .count();
    assert_eq!(warned, 1, "the lost stream is logged once at warn");
}

/// Whether the agent's Docker provider follows the engine's events (its
/// list answers from them).
fn following(a: &Agent) -> bool {
    a.log()
        .contains("docker events: following the engine's events")
}

/// Runs `f` and checks that the agent listed and inspected no container
/// through `proxy` meanwhile.
fn assert_no_listing(proxy: &EngineProxy, f: impl FnOnce()) {
    let before = proxy.requests().len();
    f();
    let calls = proxy.requests()[before..].to_vec();
    assert!(
        calls.iter().all(|r| !r.contains("/containers/")),
        "the list asked the engine: {calls:?}"
    );
}

#[test]
fn changes_behind_the_agents_back_show_from_the_engines_events() {
    let g = Sessions::new("events");
    let dir = TempDir::new("devt");
    let sock = dir.path().join("engine.sock");
    let proxy = EngineProxy::start(&sock);
    let a = docker_agent(&format!("  socket: {}\n", sock.display()));
    let (killed, removed) = (g.id("killed"), g.id("removed"));
    create_started(&a, &killed, json!({}));
    create_started(&a, &removed, json!({"ports": ["80"]}));
    assert!(
        wait_until(Duration::from_secs(10), || following(&a)),
        "the docker events watcher never followed the engine"
    );
    assert_no_listing(&proxy, || {
        // Made by the agent: listed at once, with what its start assigned.
        let listed = session_list(&a);
        assert_eq!(find_session(&listed, &killed).unwrap()["status"], "running");
        let r = find_session(&listed, &removed).unwrap();
        assert!(r["ports"]["80/tcp"].as_u64().unwrap() > 0, "{r}");

        // Killed behind the agent's back: exited, with the code from the
        // engine's die event, which also reaches the event stream as it
        // arrives, with its cause.
        let mut events = Events::open(&a);
        let (st, _) = engine("POST", &format!("/containers/vendetta-{killed}/kill"), None);
        assert_eq!(st, 204);
        let ev = events
            .wait_for(Duration::from_secs(10), |v| {
                v["id"] == killed.as_str() && v["status"] == "exited"
            })
            .unwrap_or_else(|| panic!("no exited event for {killed}; log:\n{}", a.log()));
        assert_eq!(ev["cause"], "docker:die", "{ev}");
        assert_eq!(ev["exit_code"], 137, "{ev}");
        let mut s = Value::Null;
        assert!(
            wait_until(Duration::from_secs(10), || {
                s = find_session(&session_list(&a), &killed).unwrap();
                s["status"] == "exited"
            }),
            "{s}"
        );
        assert_eq!(s["exit_code"], 137, "{s}");

        // Removed behind its back: gone from the list.
        let (st, _) = engine(
            "DELETE",
            &format!("/containers/vendetta-{removed}?force=1"),
            None,
        );
        assert_eq!(st, 204);
        assert!(
            wait_until(Duration::from_secs(10), || find_session(
                &session_list(&a),
                &removed
            )
            .is_none()),
            "a removed container stayed in the list"
        );
    });
    // The agent's own changes are in the next list, without waiting for
    // their events.
    assert_eq!(
        ok(&a.cmd("session", "start", json!({"session_id": killed})))["status"],
        "running"
    );
    assert_eq!(
        find_session(&session_list(&a), &killed).unwrap()["status"],
        "running"
    );
    destroy(&a, &killed);
    assert!(find_session(&session_list(&a), &killed).is_none());
}

#[test]
fn a_missing_image_is_a_clear_error() {
    let g = Sessions::new("image");
    let a = docker_agent("");
    let id = g.id("a");
    let image = format!("vendetta-test/absent-{}:1", std::process::id());
    let r = a.cmd(
        "session",
        "create",
        json!({"session_id": id, "image": image}),
    );
    let e = failed(&r, "not_found", &image);
    assert!(e.contains("docker.pull: true"), "{e}");
    assert_eq!(inspect(&format!("vendetta-{id}")).0, 404);

    // With pull on, the pull is tried and its failure named (no registry
    // answers on port 9 here).
    let b = docker_agent("  pull: true\n");
    let image = "127.0.0.1:9/vendetta-test/absent:1";
    let r = b.cmd(
        "session",
        "create",
        json!({"session_id": id, "image": image}),
    );
    let e = failed(&r, "failed", "pulling image");
    assert!(e.contains(image), "{e}");
    assert!(b.log().contains("pulling image"));
    assert_eq!(inspect(&format!("vendetta-{id}")).0, 404);
}

#[test]
fn hostile_input_never_reaches_the_engine() {
    let g = Sessions::new("hostile");
    let a = docker_agent("");
    for bad in [
        "../x",
        "a/b",
        "UPPER",
        "x;rm",
        "-x",
        "a b",
        "%2e%2e",
        "",
        &"a".repeat(64),
    ] {
        let r = a.cmd("session", "create", json!({"session_id": bad}));
        failed(&r, "invalid_command", "params.session_id");
    }
    let id = g.id("a");
    for (params, field) in [
        (json!({"image": "../../containers/json"}), "params.image"),
        (json!({"image": "img?x=1"}), "params.image"),
        (json!({"env": {"A=B": "x"}}), "params.env"),
        (
            json!({"labels": {"vendetta.node": "forged"}}),
            "params.labels",
        ),
        (
            json!({"resources": {"memory": "1m"}}),
            "params.resources.memory",
        ),
        (json!({"command": []}), "params.command"),
    ] {
        let mut p = params.clone();
        p["session_id"] = json!(id);
        failed(&a.cmd("session", "create", p), "invalid_command", field);
        assert_eq!(
            inspect(&format!("vendetta-{id}")).0,
            404,
            "refused before the engine: {params}"
        );
    }
}

#[test]
fn service_health_from_the_healthcheck_else_a_tcp_probe() {
    let g = Sessions::new("svc");
    let a = docker_agent("");
    let (hc, web) = (g.id("hc"), g.id("web"));
    create_started(&a, &hc, json!({"image": HEALTH_IMAGE, "ports": ["8080"]}));
    // busybox httpd listens on 8080; nothing listens on 8081, although
    // docker-proxy accepts on its published port.
    create_started(
        &a,
        &web,
        json!({"ports": ["8080", "8081"], "command": ["httpd", "-f", "-p", "8080"]}),
    );
    let status =
        |id: &str| ok(&a.cmd("service", "status", json!({"session_id": id})))["health"].clone();
    let h = status(&hc);
    assert_eq!(h["source"], "healthcheck", "{h}");
    assert!(
        h["status"] == "starting" || h["status"] == "unhealthy",
        "{h}"
    );
    ok(&exec(
        &a,
        &hc,
        json!({"command": ["touch", "/tmp/healthy"]}),
    ));
    assert!(
        wait_until(Duration::from_secs(15), || status(&hc)["status"]
            == "healthy"),
        "{}",
        status(&hc)
    );

    let mut h = Value::Null;
    assert!(wait_until(Duration::from_secs(5), || {
        h = status(&web);
        h["detail"].as_str().unwrap_or("").contains("8081")
    }));
    assert_eq!(h["source"], "tcp", "{h}");
    assert_eq!(h["status"], "unhealthy", "{h}");
    assert!(!h["detail"].as_str().unwrap().contains("8080"), "{h}");
    let services = ok(&a.cmd("service", "list", json!({}))).clone();
    let ids: Vec<&str> = services
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&hc.as_str()) && ids.contains(&web.as_str()),
        "{services}"
    );
    let web_doc = find_session(services.as_array().unwrap(), &web).unwrap();
    assert!(web_doc["ports"]["8080/tcp"].as_u64().unwrap() > 0);
}

#[test]
fn parallel_creates_never_pass_max_sessions() {
    let g = Sessions::new("quota");
    let a = docker_agent("limits:\n  max_sessions: 3\nworkers: 8\nqueue_size: 64\n");
    let results: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let (a, id) = (&a, g.id(&format!("q{i}")));
                scope.spawn(move || {
                    a.run(
                        json!({"id": format!("quota-{}-{i}", next_id()), "type": "session",
                                 "action": "create", "params": {"session_id": id}}),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let created = results.iter().filter(|r| r["status"] == "success").count();
    assert_eq!(created, 3, "{results:#?}");
    for r in results.iter().filter(|r| r["status"] != "success") {
        failed(r, "rejected", "limits.max_sessions (3) reached");
    }
    let listed = a.cmd("session", "list", json!({}));
    assert_eq!(ok(&listed).as_array().unwrap().len(), 3, "{listed}");
}

/// The attack of issue 11: a workspace path swapped for a symlink to /
/// between create and start (and again before a restart) must not give
/// the session the host's root; and one session's workspace may not hold
/// another's.
#[test]
fn a_workspace_swapped_for_a_symlink_stays_sealed() {
    let g = Sessions::new("seal");
    let root = TempDir::new("sealroot");
    let a = docker_agent(&format!("workspace_roots: [{}]\n", root.path().display()));
    std::fs::create_dir_all(root.path().join("tenant/b")).unwrap();
    std::fs::write(root.path().join("tenant/b/mine"), "b's own\n").unwrap();
    // A session whose workspace holds another's is refused.
    let (outer, inner) = (g.id("outer"), g.id("inner"));
    create(
        &a,
        &inner,
        json!({"workspace_path": root.path().join("tenant/b")}),
    );
    let r = a.cmd(
        "session",
        "create",
        json!({"session_id": outer, "workspace_path": root.path().join("tenant")}),
    );
    failed(
        &r,
        "rejected",
        "lies inside the workspace of a live session",
    );
    // Between create and start, the path becomes a symlink to /.
    let moved = root.path().join("tenant/b-moved");
    std::fs::rename(root.path().join("tenant/b"), &moved).unwrap();
    std::os::unix::fs::symlink("/", root.path().join("tenant/b")).unwrap();
    ok(&a.cmd("session", "start", json!({"session_id": inner})));
    let look = || {
        ok(&exec(&a, &inner, json!({"command": ["sh", "-c", "cat /workspace/mine; ls /workspace/etc/shadow 2>&1 || true"]}))).clone()
    };
    let seen = look();
    assert_eq!(
        seen["stdout"], "b's own\nls: /workspace/etc/shadow: No such file or directory\n",
        "{seen}"
    );
    // Writes land in the directory that was sealed, wherever it is now.
    ok(&exec(
        &a,
        &inner,
        json!({"command": ["sh", "-c", "echo from-inside > /workspace/out"]}),
    ));
    assert_eq!(
        std::fs::read_to_string(moved.join("out")).unwrap(),
        "from-inside\n"
    );
    // A restart resolves nothing again.
    ok(&a.cmd(
        "session",
        "stop",
        json!({"session_id": inner, "timeout": "1s"}),
    ));
    ok(&a.cmd("session", "start", json!({"session_id": inner})));
    assert_eq!(look(), seen);
    // A new session cannot be pointed through the symlink either.
    let r = a.cmd(
        "session",
        "create",
        json!({"session_id": g.id("via-link"), "workspace_path": root.path().join("tenant/b")}),
    );
    failed(&r, "rejected", "leads out of");
    destroy(&a, &inner);
    let sealed = a.cache().join("sealed").join(&inner);
    assert!(!sealed.exists(), "the seal goes with the session");
}

#[test]
fn exec_limits_and_allowlists_refuse_at_admission() {
    let (_g, a, id) = running_session(
        "allow",
        // The first line is docker_agent's docker section's.
        "  allowed_images: [\"vendetta-test/*\"]\nlimits:\n  max_concurrent_execs: 1\n  session_defaults: {pids: 50}\n  session_max: {memory: 256m}\nexec:\n  allowed_programs: [sh, sleep, cat]\n",
    );
    // The default pids limit was applied to the session made above.
    let inspect = |cid: &str| {
        let out = run_ok(std::process::Command::new("docker").args(["inspect", cid]));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()[0].clone()
    };
    assert_eq!(
        inspect(&format!("vendetta-{id}"))["HostConfig"]["PidsLimit"],
        50
    );
    let r = exec(&a, &id, json!({"command": ["id"]}));
    failed(
        &r,
        "rejected",
        "params.command: \"id\" is not in exec.allowed_programs (sh, sleep, cat)",
    );
    // One exec runs; a second is refused at once, naming the limit.
    a.submit(
        &json!({"id": format!("first-{}", next_id()), "type": "session", "action": "exec",
                     "params": {"session_id": id, "command": ["sleep", "30"]}}),
    );
    let (status, body) = a.post(
        &json!({"id": format!("second-{}", next_id()), "type": "session", "action": "exec",
                "params": {"session_id": id, "command": ["cat", "/etc/hostname"]}})
        .to_string(),
    );
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["code"], "too_many_execs");
    assert_eq!(
        body["error"],
        "limits.max_concurrent_execs (1) execs are queued or running; retry shortly"
    );
    let r = a.cmd(
        "session",
        "create",
        json!({"session_id": format!("{id}-b"), "image": "debian:12"}),
    );
    failed(
        &r,
        "rejected",
        "params.image: \"debian:12\" is not in docker.allowed_images (vendetta-test/*)",
    );
    let r = a.cmd(
        "session",
        "create",
        json!({"session_id": format!("{id}-c"), "resources": {"memory": "1g"}}),
    );
    failed(
        &r,
        "rejected",
        "params.resources.memory: 1g is more than limits.session_max.memory (256m)",
    );
}
