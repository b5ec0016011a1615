//! The LXC provider with real containers (the busybox template, offline),
//! driven through the agent's API.
//!
//! Every test first runs tests/setup/lxc-probe.sh (once per test binary):
//! when this host cannot run containers, each test fails with the probe's
//! reason (never skips), as the Docker and QEMU tests do when their runtime
//! is missing.
//!
//! Each test gets its own lxcpath under /tmp and session ids holding the
//! test process id, and a `Containers` guard destroys every container it
//! registered when the test ends, also when it fails.

use crate::util::{
    assert_interrupted_and_reaped, create_started, destroy, exec, failed, find_session, host_pids,
    next_id, ok, run_ok, start_sleep, wait_until, Agent, Events, TempDir,
};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const PROBE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/setup/lxc-probe.sh");

/// Fails the test, with the probe's reason, when this host cannot run LXC
/// containers. The probe runs once per test binary.
fn require_lxc() {
    static VERDICT: OnceLock<Result<(), String>> = OnceLock::new();
    let verdict = VERDICT.get_or_init(|| {
        let out = Command::new("bash")
            .arg(PROBE)
            .output()
            .map_err(|e| format!("cannot run {PROBE}: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    });
    if let Err(reason) = verdict {
        panic!("this host cannot run LXC containers, which these tests need: {reason}");
    }
}

/// Destroys the containers it was told about, whatever happened.
struct Containers {
    lxcpath: PathBuf,
    names: Vec<String>,
}

impl Containers {
    fn new(lxcpath: &Path) -> Containers {
        Containers {
            lxcpath: lxcpath.to_path_buf(),
            names: Vec::new(),
        }
    }
    /// Registers a session id (its container is `vendetta-<id>`).
    fn session(&mut self, id: &str) -> String {
        self.names.push(format!("vendetta-{id}"));
        id.to_string()
    }
    fn raw(&mut self, name: &str) {
        self.names.push(name.to_string());
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("lxc-destroy")
                .arg("-P")
                .arg(&self.lxcpath)
                .args(["-n", name, "-f"])
                .output();
        }
    }
}

/// An agent with only the lxc provider, a private lxcpath, and `extra`
/// config. Dropped in reverse order: containers, agent, directory.
struct Lab {
    containers: Containers,
    agent: Agent,
    dir: TempDir,
}

impl Lab {
    fn new(extra: &str) -> Lab {
        let dir = TempDir::new("lxc");
        let lxcpath = dir.path().join("c");
        Lab::with_lxcpath(dir, &lxcpath, extra)
    }

    fn with_lxcpath(dir: TempDir, lxcpath: &Path, extra: &str) -> Lab {
        Lab::with_providers(dir, lxcpath, "[lxc]", extra)
    }

    fn with_providers(dir: TempDir, lxcpath: &Path, providers: &str, extra: &str) -> Lab {
        require_lxc();
        let agent = Agent::start(&format!(
            "providers: {providers}\nprovider: lxc\nlxc:\n  lxcpath: {}\n  tool_timeout: 30s\n{extra}",
            lxcpath.display()
        ));
        Lab {
            containers: Containers::new(lxcpath),
            agent,
            dir,
        }
    }

    fn lxcpath(&self) -> PathBuf {
        self.containers.lxcpath.clone()
    }

    /// A fresh session id for this run, registered for cleanup.
    fn sid(&mut self, tag: &str) -> String {
        let id = format!("{tag}-{}", next_id());
        self.containers.session(&id)
    }

    /// Runs session.ACTION (see `Agent::run`).
    fn cmd(&self, action: &str, params: Value) -> Value {
        self.agent.cmd("session", action, params)
    }

    fn exec(&self, id: &str, params: Value) -> Value {
        exec(&self.agent, id, params)
    }

    /// Creates and starts a busybox session (with `extra` params) with a
    /// fresh id, registered for cleanup; returns the id.
    fn create_started(&mut self, tag: &str, extra: Value) -> String {
        let id = self.sid(tag);
        let mut p = json!({"image": "busybox"});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                p[k] = v;
            }
        }
        create_started(&self.agent, &id, p);
        id
    }

    /// Destroys session `id`, which must exist.
    fn destroy(&self, id: &str) {
        assert_eq!(destroy(&self.agent, id)["destroyed"], true);
    }

    /// The session `id` as session.list shows it.
    fn listed(&self, id: &str) -> Value {
        let list = self.cmd("list", json!({"provider": "lxc"}));
        find_session(ok(&list).as_array().unwrap(), id)
            .unwrap_or_else(|| panic!("{id} is not listed: {list}"))
    }

    /// An lxc tool on this lab's lxcpath.
    fn tool(&self, tool: &str, args: &[&str]) -> Command {
        let mut c = Command::new(tool);
        c.arg("-P").arg(self.lxcpath()).args(args);
        c
    }

    fn lxc(&self, tool: &str, args: &[&str]) -> std::process::Output {
        self.tool(tool, args).output().expect("run an lxc tool")
    }

    fn state(&self, name: &str) -> String {
        let o = self.lxc("lxc-info", &["-n", name, "-s", "-H"]);
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }
}

#[test]
fn lifecycle_create_start_stop_destroy_each_twice() {
    let mut lab = Lab::new("");
    let ws = TempDir::new("lxcws");
    std::fs::write(ws.path().join("hello.txt"), "from the host\n").unwrap();
    let id = lab.sid("life");
    let name = format!("vendetta-{id}");
    let params = json!({
        "session_id": id, "image": "busybox", "workspace_path": ws.path(),
        "env": {"GREETING": "hello world", "EMPTY": ""},
        "labels": {"team": "core"},
        "resources": {"memory": "64m", "cpus": 0.5, "pids": 64},
    });
    let r = lab.cmd("create", params.clone());
    let s = ok(&r);
    assert_eq!(s["id"], id.as_str());
    assert_eq!(s["provider"], "lxc");
    assert_eq!(s["status"], "created");
    assert_eq!(s["image"], "busybox");
    assert_eq!(s["labels"]["team"], "core");
    assert!(s["created"].as_str().unwrap().ends_with('Z'), "{s}");
    // This host has the memory, cpu and pids controllers: every limit is
    // enforced, so the session carries no "not enforced" warning.
    assert_eq!(s.get("warnings"), None, "{s}");
    let config = std::fs::read_to_string(lab.lxcpath().join(&name).join("config")).unwrap();
    assert!(config.contains("# vendetta.managed = true"), "{config}");
    assert!(config.contains("lxc.net.0.type = empty"), "{config}");

    // Create twice: the second is refused and the first is untouched.
    let again = lab.cmd("create", params);
    failed(&again, "conflict", &id);
    assert_eq!(lab.state(&name), "STOPPED");

    for round in 0..2 {
        let r = lab.cmd("start", json!({"session_id": id}));
        assert_eq!(ok(&r)["status"], "running", "round {round}: {r}");
        assert_eq!(lab.state(&name), "RUNNING");
    }

    // The workspace, the env (for exec and for the init), the default workdir.
    let r = lab.exec(&id, json!({"command": ["cat", "/workspace/hello.txt"]}));
    assert_eq!(ok(&r)["stdout"], "from the host\n", "{r}");
    let r = lab.exec(
        &id,
        json!({"command": ["/bin/sh", "-c", "echo \"$GREETING|${EMPTY-unset}|$container\"; pwd"]}),
    );
    assert_eq!(ok(&r)["stdout"], "hello world||lxc\n/workspace\n", "{r}");
    let r = lab.exec(
        &id,
        json!({"command": ["/bin/sh", "-c", "tr '\\0' '\\n' </proc/1/environ | grep GREETING"]}),
    );
    assert_eq!(ok(&r)["stdout"], "GREETING=hello world\n", "{r}");
    let r = lab.exec(
        &id,
        json!({"command": ["/bin/sh", "-c", "echo $GREETING"], "env": {"GREETING": "override"}}),
    );
    assert_eq!(
        ok(&r)["stdout"],
        "override\n",
        "exec env overrides the session's"
    );
    let r = lab.exec(&id, json!({"command": ["touch", "/workspace/made-inside"]}));
    assert_eq!(ok(&r)["exit_code"], 0);
    assert!(ws.path().join("made-inside").exists());

    // Limits: applied in the cgroup.
    let v2 = Command::new("stat")
        .args(["-fc", "%T", "/sys/fs/cgroup"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "cgroup2fs")
        .unwrap_or(false);
    for (limit, v1_key, v2_key, want) in [
        ("memory", "memory.limit_in_bytes", "memory.max", "67108864"),
        ("cpus", "cpu.cfs_quota_us", "cpu.max", "50000"),
        ("pids", "pids.max", "pids.max", "64"),
    ] {
        let key = if v2 { v2_key } else { v1_key };
        let o = lab.lxc("lxc-cgroup", &["-n", &name, key]);
        let got = String::from_utf8_lossy(&o.stdout).trim().to_string();
        assert!(
            got.starts_with(want),
            "{limit}: {key} = {got:?}, want {want}"
        );
    }

    for round in 0..2 {
        let r = lab.cmd("stop", json!({"session_id": id, "timeout": "5s"}));
        assert_eq!(ok(&r)["status"], "stopped", "round {round}: {r}");
        assert_eq!(lab.state(&name), "STOPPED");
    }
    let r = lab.exec(&id, json!({"command": ["true"]}));
    let msg = failed(&r, "conflict", "is not running");
    assert!(msg.contains("start it first"), "{msg}");

    lab.destroy(&id);
    assert!(!lab.lxcpath().join(&name).exists());
    // The workspace is the user's: destroying the session leaves it whole.
    assert_eq!(
        std::fs::read_to_string(ws.path().join("hello.txt")).unwrap(),
        "from the host\n"
    );
    assert!(ws.path().join("made-inside").exists());
    assert_eq!(destroy(&lab.agent, &id)["existed"], false);
    let list = lab.cmd("list", json!({"provider": "lxc"}));
    assert!(!list["data"].to_string().contains(&id), "{list}");
}

#[test]
fn exec_codes_streams_stdin_cap_and_timeout() {
    let mut lab = Lab::new("limits:\n  max_output: 1k\n");
    let id = lab.create_started("exec", json!({}));

    let r = lab.exec(&id, json!({"command": ["echo", "hi"]}));
    let d = ok(&r);
    assert_eq!(
        (d["exit_code"].as_i64(), d["stdout"].as_str()),
        (Some(0), Some("hi\n"))
    );
    assert_eq!(r["exit_code"], 0);
    assert_eq!(r["output"], "hi\n");

    let r = lab.exec(
        &id,
        json!({"command": ["/bin/sh", "-c", "echo out; echo err >&2; exit 7"]}),
    );
    let d = ok(&r);
    assert_eq!(d["exit_code"], 7, "{r}");
    assert_eq!(r["exit_code"], 7);
    assert_eq!(d["stdout"], "out\n");
    assert_eq!(d["stderr"], "err\n");

    // A command that exits 1 on its own is not mistaken for LXC failing.
    let r = lab.exec(
        &id,
        json!({"command": ["/bin/sh", "-c", "echo nope >&2; exit 1"]}),
    );
    assert_eq!(ok(&r)["exit_code"], 1, "{r}");

    let r = lab.exec(&id, json!({"command": ["/no/such/binary"]}));
    assert_eq!(ok(&r)["exit_code"], 127, "{r}");
    let r = lab.exec(&id, json!({"command": ["/bin/sh", "-c", "kill -9 $$"]}));
    assert_eq!(ok(&r)["exit_code"], 137, "{r}");

    let r = lab.exec(
        &id,
        json!({"command": ["cat"], "stdin": "line one\nline two\n"}),
    );
    assert_eq!(ok(&r)["stdout"], "line one\nline two\n", "{r}");
    let big = "z".repeat(300_000);
    let r = lab.exec(&id, json!({"command": ["wc", "-c"], "stdin": big}));
    assert_eq!(ok(&r)["stdout"].as_str().unwrap().trim(), "300000", "{r}");

    // The cap (1k per stream), flagged.
    let r = lab.exec(
        &id,
        json!({"command": ["/bin/sh", "-c", "yes | head -c 5000; yes e | head -c 3000 >&2"]}),
    );
    let d = ok(&r);
    assert_eq!(d["stdout"].as_str().unwrap().len(), 1024, "{r}");
    assert_eq!(d["stdout_truncated"], true);
    assert_eq!(d["stderr"].as_str().unwrap().len(), 1024);
    assert_eq!(d["stderr_truncated"], true);
    let r = lab.exec(&id, json!({"command": ["echo", "small"]}));
    assert_eq!(ok(&r)["stdout_truncated"], false);

    // Env: only what we pass (no host environment), values verbatim.
    let r = lab.exec(
        &id,
        json!({"command": ["env"], "env": {"ONLY": "this one", "MULTI": "a\nb"}}),
    );
    let env = ok(&r)["stdout"].as_str().unwrap().to_string();
    assert!(
        env.contains("ONLY=this one\n") && env.contains("MULTI=a\nb\n"),
        "{env}"
    );
    let tag = format!("VENDETTA_COMMAND_ID={}\n", r["id"].as_str().unwrap());
    assert!(env.contains(&tag), "the agent's tag is set: {env}");
    let env = env.replace(&tag, "");
    assert!(
        !env.contains("VENDETTA") && !env.contains("CARGO") && !env.contains("HOME=/root"),
        "host env leaked: {env}"
    );

    // Workdir, user, and a workdir that is not there.
    let r = lab.exec(&id, json!({"command": ["pwd"], "workdir": "/tmp"}));
    assert_eq!(ok(&r)["stdout"], "/tmp\n");
    let r = lab.exec(&id, json!({"command": ["pwd"]}));
    assert_eq!(
        ok(&r)["stdout"],
        "/\n",
        "no workspace: the default workdir is /"
    );
    let r = lab.exec(&id, json!({"command": ["pwd"], "workdir": "/no such dir"}));
    let d = ok(&r);
    assert_eq!(d["exit_code"], 126, "{r}");
    assert!(
        d["stderr"]
            .as_str()
            .unwrap()
            .contains("workdir /no such dir does not exist"),
        "{r}"
    );
    let r = lab.exec(&id, json!({"command": ["id", "-u"], "user": "65534"}));
    assert_eq!(ok(&r)["stdout"], "65534\n", "{r}");
    let r = lab.exec(&id, json!({"command": ["id"], "user": "nobody"}));
    failed(&r, "invalid_command", "numeric uid");

    // Arguments are arguments: nothing is interpreted by a shell of ours.
    let r = lab.exec(
        &id,
        json!({"command": ["echo", "$(id)", "`id`", ";", "*"], "workdir": "/tmp"}),
    );
    assert_eq!(ok(&r)["stdout"], "$(id) `id` ; *\n", "{r}");

    // A timeout kills the command and whatever it started, in the container
    // and on the host.
    let t = Instant::now();
    let r = lab.exec(
        &id,
        json!({"command": ["/bin/sh", "-c", "sleep 4321 & sleep 4322"], "timeout": "1s"}),
    );
    failed(&r, "timeout", "exec timed out after 1s and was killed");
    assert_eq!(r["data"]["timed_out"], true);
    assert!(r["data"]["exit_code"].is_null(), "{r}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let gone = wait_until(Duration::from_secs(5), || {
        let r = lab.exec(&id, json!({"command": ["ps", "-o", "args"]}));
        let ps = ok(&r)["stdout"].as_str().unwrap().to_string();
        !ps.contains("sleep 4321") && !ps.contains("sleep 4322")
    });
    assert!(
        gone,
        "the timed-out command is still running in the container"
    );
    assert!(host_pids(&["sleep", "4321"]).is_empty());
    assert!(host_pids(&["sleep", "4322"]).is_empty());
    // And the session is still usable.
    let r = lab.exec(&id, json!({"command": ["true"]}));
    assert_eq!(ok(&r)["exit_code"], 0);

    lab.destroy(&id);
}

#[test]
fn sessions_are_readopted_after_kill_9() {
    // Docker is enabled too, with its engine unreachable: that must not
    // keep the clean-up below from telling what it did in the LXC session.
    let dir = TempDir::new("lxc");
    let lxcpath = dir.path().join("c");
    let mut lab = Lab::with_providers(
        dir,
        &lxcpath,
        "[lxc, docker]",
        "docker:\n  socket: /nonexistent/docker.sock\n",
    );
    let id = lab.create_started("adopt", json!({"labels": {"keep": "me"}}));
    let created = lab.sid("adopt-idle");
    ok(&lab.cmd("create", json!({"session_id": created})));
    // A command running at the crash: it lives on in the container (LXC
    // does not stop it), so the restarted agent must stop it before
    // reporting it, or the server could run it twice at once.
    let marker = (400_000 + std::process::id() % 100_000).to_string();
    let cmd_id = start_sleep(&lab.agent, &id, &marker);
    lab.agent.kill9();
    assert!(!host_pids(&["sleep", &marker]).is_empty());
    lab.agent.restart();
    assert_interrupted_and_reaped(&lab.agent, &cmd_id, &marker);

    let list = lab.cmd("list", json!({}));
    let sessions = ok(&list).as_array().unwrap().clone();
    let s = find_session(&sessions, &id).unwrap_or_else(|| panic!("{id} not re-adopted: {list}"));
    assert_eq!(s["status"], "running");
    assert_eq!(s["provider"], "lxc");
    assert_eq!(s["labels"]["keep"], "me");
    let idle = find_session(&sessions, &created).unwrap_or_else(|| panic!("{list}"));
    assert_eq!(idle["status"], "created", "{list}");
    // The restarted agent can use it: exec, stop, destroy.
    let r = lab.exec(&id, json!({"command": ["echo", "still here"]}));
    assert_eq!(ok(&r)["stdout"], "still here\n");
    assert_eq!(
        ok(&lab.cmd("stop", json!({"session_id": id, "timeout": "0s"})))["status"],
        "stopped"
    );
    lab.destroy(&id);
    lab.destroy(&created);
}

#[test]
fn a_container_that_stops_by_itself_is_reported_with_an_event() {
    let mut lab = Lab::new("");
    let mut events = Events::open(&lab.agent);
    // The session's main process ends after a few seconds, and with it the container.
    let id = lab.create_started("selfstop", json!({"command": ["/bin/sh", "-c", "sleep 3"]}));
    let ev = events
        .wait_for(Duration::from_secs(30), |v| {
            v["id"] == id.as_str() && v["status"] == "stopped"
        })
        .unwrap_or_else(|| panic!("no stopped event for {id}"));
    assert_eq!(ev["event"], "status", "{ev}");
    assert_eq!(ev["provider"], "lxc");
    assert_eq!(lab.listed(&id)["status"], "stopped");
    // It starts again (the main command runs again).
    let r = lab.cmd("start", json!({"session_id": id}));
    assert_eq!(ok(&r)["status"], "running", "{r}");
    lab.destroy(&id);
}

#[test]
fn hostile_session_ids_are_refused() {
    let mut lab = Lab::new("");
    for bad in [
        "../../etc",
        "a/b",
        "$(reboot)",
        "A",
        "",
        "-x",
        "a b",
        "a;b",
        &"a".repeat(64),
    ] {
        for action in ["create", "start", "exec", "destroy"] {
            let mut p = json!({"session_id": bad});
            if action == "exec" {
                p["command"] = json!(["true"]);
            }
            let r = lab.cmd(action, p);
            failed(&r, "invalid_command", "params.session_id");
        }
    }
    // Valid for the protocol but too long for an LXC hostname: refused by
    // the provider with the limit, and nothing is left behind.
    // 56 characters: one more than "vendetta-" leaves of a 64-byte hostname.
    let long = format!("l{}-{}", std::process::id(), "x".repeat(60))[..56].to_string();
    let long = &lab.containers.session(&long);
    let r = lab.cmd("create", json!({"session_id": long, "image": "busybox"}));
    failed(&r, "invalid_command", "at most 55 characters");
    assert!(!lab.lxcpath().join(format!("vendetta-{long}")).exists());
    // Odd but valid ids work end to end.
    let odd = lab
        .containers
        .session(&format!("a..b_-.{}", std::process::id()));
    ok(&lab.cmd("create", json!({"session_id": odd})));
    ok(&lab.cmd("start", json!({"session_id": odd})));
    let r = lab.exec(&odd, json!({"command": ["hostname"]}));
    assert_eq!(
        ok(&r)["stdout"].as_str().unwrap().trim(),
        format!("vendetta-{odd}")
    );
    lab.destroy(&odd);
    // Hostile images and ports are refused before anything is made.
    let id = lab.sid("img");
    for (image, why) in [
        ("../../../bin/sh", "not an lxc template name"),
        (
            "/usr/share/lxc/templates/lxc-busybox",
            "not an lxc template name",
        ),
        ("nosuchtemplate", "there is no lxc template"),
        ("download --dist debian", "lxc.template_args allows none"),
    ] {
        let r = lab.cmd("create", json!({"session_id": id, "image": image}));
        failed(&r, "invalid_command", why);
    }
    let r = lab.cmd("create", json!({"session_id": id, "ports": ["8080"]}));
    failed(&r, "invalid_command", "does not publish ports");
    let r = lab.cmd(
        "create",
        json!({"session_id": id, "env": {"A": "two\nlines"}}),
    );
    failed(&r, "invalid_command", "line break");
    assert!(!lab.lxcpath().join(format!("vendetta-{id}")).exists());
    assert!(lab.agent.is_alive());
}

#[test]
fn a_create_that_times_out_is_reported_and_leaves_nothing() {
    let mut lab = Lab::new("");
    let id = lab.sid("slow");
    // The busybox template takes a few hundred ms; 50 ms cuts it short.
    let r = lab.agent.run(json!({"type": "session", "action": "create",
        "params": {"session_id": id}, "timeout": "50ms"}));
    let msg = failed(&r, "timeout", &format!("lxc-create -n vendetta-{id}"));
    assert!(msg.contains("was killed"), "{msg}");
    assert!(
        !lab.lxcpath().join(format!("vendetta-{id}")).exists(),
        "the killed create left its directory behind"
    );
    assert!(lab.agent.is_alive());
    // Nothing stale blocks the same id afterwards.
    let r = lab.cmd("create", json!({"session_id": id}));
    assert_eq!(ok(&r)["status"], "created", "{r}");
    lab.destroy(&id);
}

#[test]
fn foreign_containers_are_never_touched() {
    let mut lab = Lab::new("");
    let lxcpath = lab.lxcpath();
    std::fs::create_dir_all(&lxcpath).unwrap();
    // A container with our naming pattern made by hand: no marker.
    let id = format!("foreign-{}", next_id());
    let name = format!("vendetta-{id}");
    lab.containers.raw(&name);
    let conf = lab.dir.path().join("foreign.conf");
    std::fs::write(&conf, "lxc.net.0.type = empty\n").unwrap();
    let conf = conf.to_str().unwrap();
    run_ok(&mut lab.tool("lxc-create", &["-n", &name, "-t", "busybox", "-f", conf]));
    run_ok(&mut lab.tool("lxc-start", &["-n", &name]));

    let list = lab.cmd("list", json!({}));
    assert!(!ok(&list).to_string().contains(&id), "{list}");
    let r = lab.cmd("create", json!({"session_id": id}));
    failed(&r, "conflict", "no marker");
    for r in [
        lab.cmd("start", json!({"session_id": id})),
        lab.cmd("stop", json!({"session_id": id})),
        lab.exec(&id, json!({"command": ["true"]})),
    ] {
        failed(&r, "not_found", &id);
    }
    assert_eq!(destroy(&lab.agent, &id)["existed"], false);
    assert_eq!(
        lab.state(&name),
        "RUNNING",
        "the foreign container was touched"
    );

    // Another node's session in the same lxcpath: invisible and untouchable.
    let mine = lab.create_started("node-a", json!({}));
    let other = Agent::start(&format!(
        "providers: [lxc]\nprovider: lxc\nlxc:\n  lxcpath: {}\n",
        lxcpath.display()
    ));
    let list = other.cmd("session", "list", json!({}));
    assert!(!ok(&list).to_string().contains(&mine), "{list}");
    let r = other.cmd("session", "create", json!({"session_id": mine}));
    failed(&r, "conflict", "belongs to vendetta node");
    assert_eq!(destroy(&other, &mine)["existed"], false);
    assert_eq!(lab.state(&format!("vendetta-{mine}")), "RUNNING");
    lab.destroy(&mine);
    assert_eq!(lab.state(&name), "RUNNING");
}

#[test]
fn health_reports_lxc_and_a_missing_bridge() {
    let lab = Lab::new("");
    let (status, h) = lab.agent.get("/health");
    assert_eq!(status, 200, "{h}");
    let lxc = &h["providers"]["lxc"];
    assert_eq!(lxc["ok"], true, "{h}");
    assert!(
        lxc["detail"]["version"].as_str().unwrap().starts_with('5'),
        "{h}"
    );
    assert!(lxc["detail"]["cgroup"].is_string(), "{h}");
    assert_eq!(lxc["detail"]["network"], "empty");

    let bridge = format!("vtnb{}", std::process::id() % 100_000);
    let mut veth = Lab::new(&format!("  network: veth\n  bridge: {bridge}\n"));
    let (status, h) = veth.agent.get("/health");
    assert_eq!(status, 503, "{h}");
    let msg = h["providers"]["lxc"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&bridge) && msg.contains("lxc.network: empty"),
        "{msg}"
    );
    // Starting anyway fails with the cause from lxc-start's log, not just
    // "the container failed to start"; the agent stays up.
    let id = veth.sid("nobridge");
    ok(&veth.cmd("create", json!({"session_id": id})));
    let r = veth.cmd("start", json!({"session_id": id}));
    let msg = failed(&r, "failed", &format!("bridge \"{bridge}\""));
    assert!(msg.contains("vendetta-start.log"), "{msg}");
    assert_eq!(veth.listed(&id)["status"], "stopped");
    veth.destroy(&id);
    assert!(veth.agent.is_alive());
}

/// A Linux bridge for the veth test, deleted on drop.
struct Bridge(String);

impl Bridge {
    /// Creates the bridge and sets it up; fails the test if it cannot.
    fn create(name: &str) -> Bridge {
        // A bridge left by a killed run of this test would make `add` fail.
        let _ = Command::new("ip").args(["link", "del", name]).output();
        let bridge = Bridge(name.to_string());
        run_ok(Command::new("ip").args(["link", "add", "name", name, "type", "bridge"]));
        run_ok(Command::new("ip").args(["link", "set", name, "up"]));
        bridge
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

#[test]
fn veth_networking_on_a_bridge() {
    let name = format!("vtbr{}", std::process::id() % 100_000);
    let _bridge = Bridge::create(&name);
    let mut lab = Lab::new(&format!("  network: veth\n  bridge: {name}\n"));
    let ws = TempDir::new("lxcws");
    std::fs::write(ws.path().join("keep"), "x").unwrap();
    let id = lab.create_started("veth", json!({"workspace_path": ws.path()}));
    let r = lab.exec(
        &id,
        json!({"command": ["cat", "/sys/class/net/eth0/operstate"]}),
    );
    assert_eq!(ok(&r)["exit_code"], 0, "{r}");
    let brif = std::fs::read_dir(format!("/sys/class/net/{name}/brif"))
        .unwrap()
        .count();
    assert_eq!(brif, 1, "the container's veth is on the bridge");
    lab.destroy(&id);
    // Destroyed while running, with the workspace mounted: the workspace stays.
    assert!(ws.path().join("keep").exists());
}

/// The workspace swap of issue 11, with LXC: the container mounts the
/// agent's seal, so a symlink to / put in its path's place before start
/// shows nothing of the host.
#[test]
fn a_workspace_swapped_for_a_symlink_stays_sealed() {
    let mut lab = Lab::new("");
    let root = TempDir::new("lxcseal");
    let ws = root.path().join("b");
    std::fs::create_dir(&ws).unwrap();
    std::fs::write(ws.join("mine"), "b's own\n").unwrap();
    let id = lab.sid("seal");
    ok(&lab.cmd(
        "create",
        json!({"session_id": id, "image": "busybox", "workspace_path": ws}),
    ));
    std::fs::rename(&ws, root.path().join("b-moved")).unwrap();
    std::os::unix::fs::symlink("/", &ws).unwrap();
    // The session sees only b's files: before a restart, and after one
    // with the symlink still in place (the container mounts the seal again).
    let sees_only_b = |lab: &Lab, when: &str| {
        let r = lab.exec(
            &id,
            json!({"command": ["sh", "-c", "cat /workspace/mine; ls /workspace/etc/shadow 2>&1 || true"]}),
        );
        assert_eq!(
            ok(&r)["stdout"],
            "b's own\nls: /workspace/etc/shadow: No such file or directory\n",
            "{when}: {r}"
        );
    };
    ok(&lab.cmd("start", json!({"session_id": id})));
    sees_only_b(&lab, "after start");
    ok(&lab.cmd("stop", json!({"session_id": id, "timeout": "5s"})));
    ok(&lab.cmd("start", json!({"session_id": id})));
    sees_only_b(&lab, "after a restart");
    lab.destroy(&id);
}
