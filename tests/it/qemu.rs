//! The QEMU provider against the real qemu-system-x86_64, qemu-img and
//! qemu-ga (installed by tests/setup/deps.sh).
//!
//! VMs run under TCG with no guest OS (`-machine q35 -S`, no disk, or
//! `-machine none`): QMP works, nothing boots. The guest-agent tests start
//! the real qemu-ga binary on the host in unix-listen mode on the session's
//! qga.sock path: a stand-in for the agent inside a guest, speaking the
//! same protocol over the same socket path (qemu-ga replaces QEMU's
//! listener there). Every test kills the VMs and qemu-ga processes it
//! started through Drop guards, also when it fails.

use crate::util::qmp::Qmp;
use crate::util::{
    alive, assert_interrupted_and_reaped, create, create_started, destroy, exec, failed,
    find_session, host_pids, next_id, ok, run_ok, sessions, start_sleep, wait_until, Agent, Events,
    TempDir,
};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::ops::Deref;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The provider config for tests: qemu only, small VMs, TCG (KVM guests
/// were unreliable on these hosts).
fn cfg(machine: &str, more: &str) -> String {
    format!(
        "provider: qemu\nproviders: [qemu]\nqemu:\n  memory: 64m\n  machine: {machine}\n  extra_args: [\"-accel\", \"tcg\"]\n{more}"
    )
}

/// An agent whose VMs (and qemu-ga stand-ins) are killed on drop: every
/// process whose command line names the agent's cache dir.
struct Host(Agent);

impl Host {
    fn start(config: &str) -> Host {
        Host(Agent::start(config))
    }
}

impl Deref for Host {
    type Target = Agent;
    fn deref(&self) -> &Agent {
        &self.0
    }
}

impl std::ops::DerefMut for Host {
    fn deref_mut(&mut self) -> &mut Agent {
        &mut self.0
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.0.kill9();
        for pid in procs_naming(&self.0.cache()) {
            // SAFETY: kill(2) of a process whose cmdline names our own dir.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// Live processes whose command line contains `path`.
fn procs_naming(path: &Path) -> Vec<u32> {
    let needle = path.to_string_lossy().into_owned();
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me && alive(*pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(&needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

fn sid(tag: &str) -> String {
    format!("q{}-{tag}", next_id())
}

/// The session's directory, found through its vm.json.
fn vm_dir(a: &Agent, id: &str) -> Option<PathBuf> {
    std::fs::read_dir(a.cache().join("qemu"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|d| record(d).is_some_and(|r| r["id"] == id))
}

fn record(dir: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(dir.join("vm.json")).ok()?).ok()
}

fn vm_pid(dir: &Path) -> u32 {
    let r = record(dir).expect("vm.json");
    r["process"]["pid"].as_u64().expect("a recorded pid") as u32
}

/// The run state straight from QEMU, through the VM's second monitor
/// (the agent holds the first one open).
fn qmp_status(dir: &Path) -> String {
    Qmp::connect(&dir.join("qmp-user.sock")).status()
}

fn session_status(a: &Agent, id: &str) -> Option<String> {
    find_session(&sessions(a, "qemu"), id).map(|s| s["status"].as_str().unwrap_or("").to_string())
}

/// The real qemu-ga, run on the host on a session's qga.sock path: it
/// stands in for the guest agent inside a VM. Killed on drop.
struct GuestAgent {
    child: Child,
    _state: TempDir,
}

impl GuestAgent {
    fn start(sock: &Path) -> GuestAgent {
        let binary = ["/usr/sbin/qemu-ga", "/usr/bin/qemu-ga"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("qemu-ga is installed by tests/setup/deps.sh");
        let state = TempDir::new("qga");
        let child = Command::new(binary)
            .args(["-m", "unix-listen", "-p"])
            .arg(sock)
            .arg("-t")
            .arg(state.path())
            .arg("-f")
            .arg(state.path().join("qga.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn qemu-ga");
        let g = GuestAgent {
            child,
            _state: state,
        };
        // QEMU's own listener on that path never answers; qemu-ga does.
        assert!(
            wait_until(Duration::from_secs(10), || ping(sock)),
            "qemu-ga did not answer on {}",
            sock.display()
        );
        g
    }
}

impl Drop for GuestAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ping(sock: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(sock) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_millis(200))).ok();
    if s.write_all(b"{\"execute\":\"guest-ping\"}\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(n) if n > 0 && buf[..n].starts_with(b"{\"return\""))
}

#[test]
fn lifecycle_create_start_stop_destroy_twice() {
    let h = Host::start(&cfg("q35", ""));
    let id = sid("life");
    for round in 0..2 {
        let s = create(
            &h,
            &id,
            json!({"ports": ["8080/tcp"], "labels": {"round": round.to_string()}}),
        );
        assert_eq!(s["status"], "created", "{s}");
        assert_eq!(s["provider"], "qemu");
        assert_eq!(s["labels"]["round"], round.to_string());
        let host_port = s["ports"]["8080/tcp"].as_u64().expect("a host port") as u16;
        let dir = vm_dir(&h, &id).expect("session dir");
        assert!(dir.join("qmp.sock").as_os_str().len() < 108);
        assert_eq!(qmp_status(&dir), "prelaunch");
        // QEMU listens on the forwarded port, on loopback.
        assert!(TcpStream::connect(("127.0.0.1", host_port)).is_ok());
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", vm_pid(&dir))).unwrap();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        for want in [
            "-nodefaults",
            "-display none",
            "-daemonize",
            "-S",
            "guest_agent.0",
        ] {
            assert!(cmdline.contains(want), "{want} in {cmdline}");
        }

        let again = h.cmd("session", "create", json!({"session_id": id}));
        failed(&again, "conflict", &id);

        for _ in 0..2 {
            let r = h.cmd("session", "start", json!({"session_id": id}));
            assert_eq!(ok(&r)["status"], "running");
            assert_eq!(qmp_status(&dir), "running");
        }
        let pid = vm_pid(&dir);

        // No guest OS: the powerdowns are ignored, quit must end it, and
        // all within the 2s grace.
        let t = Instant::now();
        let r = h.cmd(
            "session",
            "stop",
            json!({"session_id": id, "timeout": "2s"}),
        );
        let took = t.elapsed();
        assert_eq!(ok(&r)["status"], "stopped");
        assert!(
            took >= Duration::from_secs(1),
            "powerdown phase skipped: {took:?}"
        );
        assert!(took < Duration::from_millis(2500), "stop took {took:?}");
        assert!(!alive(pid), "QEMU {pid} still alive after stop");
        assert!(!dir.join("qmp.sock").exists() && !dir.join("qemu.pid").exists());
        let r = h.cmd(
            "session",
            "stop",
            json!({"session_id": id, "timeout": "2s"}),
        );
        assert_eq!(ok(&r)["status"], "stopped");
        assert_eq!(session_status(&h, &id).as_deref(), Some("stopped"));

        // Start after stop relaunches the VM on the same forwarded port.
        let r = h.cmd("session", "start", json!({"session_id": id}));
        let s = ok(&r);
        assert_eq!(s["status"], "running");
        assert_eq!(s["ports"]["8080/tcp"], host_port);
        assert_ne!(vm_pid(&dir), pid);
        assert_eq!(qmp_status(&dir), "running");

        for expected in [true, false] {
            assert_eq!(destroy(&h, &id)["existed"], expected);
        }
        assert!(!dir.exists(), "{} left behind", dir.display());
        assert!(procs_naming(&dir).is_empty());
        assert_eq!(session_status(&h, &id), None);
    }
}

#[test]
fn machine_none_runs_without_devices_and_says_so() {
    let h = Host::start(&cfg("none", ""));
    let ws = TempDir::new("qws");
    let id = sid("none");
    let s = create(
        &h,
        &id,
        json!({"ports": ["80"], "workspace_path": ws.path(), "resources": {"cpus": 2, "pids": 10}}),
    );
    assert_eq!(s["status"], "created");
    assert_eq!(s["ports"], json!({}), "nothing is forwarded without a NIC");
    let warnings = s["warnings"].to_string();
    for want in ["machine none", "ports", "workspace", "resources.pids"] {
        assert!(warnings.contains(want), "{want} in {warnings}");
    }
    let r = h.cmd("session", "start", json!({"session_id": id}));
    assert_eq!(ok(&r)["status"], "running");
    let dir = vm_dir(&h, &id).unwrap();
    assert_eq!(qmp_status(&dir), "running");
    // No virtio-serial, so no guest agent: said at once, not after a timeout.
    let t0 = Instant::now();
    let r = exec(&h, &id, json!({"command": ["true"], "timeout": "30s"}));
    failed(&r, "invalid_command", "machine none");
    assert!(t0.elapsed() < Duration::from_secs(5));
    let r = h.cmd(
        "session",
        "stop",
        json!({"session_id": id, "timeout": "1s"}),
    );
    assert_eq!(ok(&r)["status"], "stopped");
    assert_eq!(destroy(&h, &id)["existed"], true);
}

#[test]
fn workspace_is_shared_with_mount_tag_workspace() {
    let h = Host::start(&cfg("q35", ""));
    let ws = TempDir::new("q,ws");
    let id = sid("ws");
    create(
        &h,
        &id,
        json!({"workspace_path": ws.path(), "resources": {"memory": "96m", "cpus": 2}}),
    );
    let dir = vm_dir(&h, &id).unwrap();
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", vm_pid(&dir))).unwrap();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    let virtfs = args
        .iter()
        .skip_while(|a| *a != "-virtfs")
        .nth(1)
        .expect("-virtfs");
    // QEMU shares the sealed mount of the workspace, not the caller's path
    // (which has a comma, doubled for QEMU's parser when it is given one).
    let sealed = h.cache().join("sealed").join(&id);
    let escaped = sealed.to_string_lossy().replace(',', ",,");
    assert!(virtfs.contains(&format!("path={escaped},")), "{virtfs}");
    std::fs::write(ws.path().join("seen"), "yes").unwrap();
    assert_eq!(std::fs::read_to_string(sealed.join("seen")).unwrap(), "yes");
    // The caller's path swapped for a symlink to /: the share keeps the
    // directory that was sealed.
    let moved = ws.path().with_file_name(format!("{}-moved", id));
    std::fs::rename(ws.path(), &moved).unwrap();
    std::os::unix::fs::symlink("/", ws.path()).unwrap();
    assert_eq!(std::fs::read_to_string(sealed.join("seen")).unwrap(), "yes");
    assert!(!sealed.join("etc").exists());
    let _moved = TempDir(moved);
    assert!(virtfs.contains("mount_tag=workspace"), "{virtfs}");
    let joined = args.join(" ");
    assert!(joined.contains("-m 96M -smp 2"), "{joined}");
    // QEMU accepted the share: the 9p device is there.
    let mut q = Qmp::connect(&dir.join("qmp-user.sock"));
    let tree = q
        .execute(
            "qom-list",
            Some(json!({"path": "/machine/peripheral-anon"})),
        )
        .unwrap();
    drop(q);
    assert!(tree.to_string().contains("virtio-9p"), "{tree}");
    // After start too: stopped and started with the symlink in place, the
    // new QEMU shares the seal again.
    ok(&h.cmd(
        "session",
        "stop",
        json!({"session_id": id, "timeout": "5s"}),
    ));
    ok(&h.cmd("session", "start", json!({"session_id": id})));
    let dir = vm_dir(&h, &id).unwrap();
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", vm_pid(&dir))).unwrap();
    let again = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(again.contains(&format!("path={escaped},")), "{again}");
    assert_eq!(std::fs::read_to_string(sealed.join("seen")).unwrap(), "yes");
    destroy(&h, &id);
}

#[test]
fn agent_kill9_and_restart_readopts_running_vms() {
    let mut h = Host::start(&cfg("q35", ""));
    let created = sid("adopt-c");
    let running = sid("adopt-r");
    create(&h, &created, json!({}));
    create(&h, &running, json!({"ports": ["22"]}));
    ok(&h.cmd("session", "start", json!({"session_id": running})));
    let (dc, dr) = (vm_dir(&h, &created).unwrap(), vm_dir(&h, &running).unwrap());
    let (pc, pr) = (vm_pid(&dc), vm_pid(&dr));
    let port = h.cmd("session", "list", json!({}))["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == running.as_str())
        .unwrap()["ports"]["22/tcp"]
        .clone();

    h.kill9();
    assert!(alive(pc) && alive(pr), "VMs outlive the agent");
    h.restart();

    let list = h.cmd("session", "list", json!({}));
    let sessions = list["data"].as_array().unwrap();
    let find = |id: &str| sessions.iter().find(|s| s["id"] == id).cloned().unwrap();
    assert_eq!(find(&created)["status"], "created", "{list}");
    assert_eq!(find(&running)["status"], "running", "{list}");
    assert_eq!(find(&running)["ports"]["22/tcp"], port);
    assert_eq!(
        (vm_pid(&dc), vm_pid(&dr)),
        (pc, pr),
        "the same VMs, not new ones"
    );
    // Control works on the adopted VMs.
    ok(&h.cmd("session", "start", json!({"session_id": created})));
    assert_eq!(qmp_status(&dc), "running");
    let r = h.cmd(
        "session",
        "stop",
        json!({"session_id": running, "timeout": "1s"}),
    );
    assert_eq!(ok(&r)["status"], "stopped");
    assert!(!alive(pr));
    for id in [&created, &running] {
        assert_eq!(destroy(&h, id)["existed"], true);
    }
    assert!(procs_naming(&h.cache()).is_empty());
}

#[test]
fn vm_ended_behind_the_agents_back_is_lost_or_exited_with_an_event() {
    let h = Host::start(&cfg("q35", ""));
    let killed = sid("killed");
    let quit = sid("quit");
    for id in [&killed, &quit] {
        create_started(&h, id, json!({}));
    }
    let (dk, dq) = (vm_dir(&h, &killed).unwrap(), vm_dir(&h, &quit).unwrap());
    let mut events = Events::open(&h);

    // SIGKILL: QEMU cannot clean up, its pidfile stays: lost.
    let pk = vm_pid(&dk);
    // SAFETY: kill(2) of the VM this test created.
    unsafe { libc::kill(pk as i32, libc::SIGKILL) };
    let ev = events
        .wait_for(Duration::from_secs(10), |v| {
            v["id"] == killed.as_str() && v["status"] == "lost"
        })
        .unwrap_or_else(|| panic!("no lost event for {killed}; log:\n{}", h.log()));
    assert_eq!(ev["provider"], "qemu");
    assert_eq!(session_status(&h, &killed).as_deref(), Some("lost"));
    // The stale socket and pidfile are cleaned up.
    assert!(!dk.join("qmp.sock").exists() && !dk.join("qemu.pid").exists());

    // quit from someone else: QEMU shuts down cleanly: exited.
    let mut q = Qmp::connect(&dq.join("qmp-user.sock"));
    q.execute("quit", None).unwrap();
    drop(q);
    // QEMU's own SHUTDOWN event, passed on as it happens by the agent's
    // held connection.
    let ev = events
        .wait_for(Duration::from_secs(10), |v| {
            v["id"] == quit.as_str() && v["status"] == "exited"
        })
        .unwrap_or_else(|| panic!("no exited event for {quit}; log:\n{}", h.log()));
    assert_eq!(ev["cause"], "qmp:SHUTDOWN", "{ev}");
    assert_eq!(session_status(&h, &quit).as_deref(), Some("exited"));

    // Stop keeps the truth; start brings a lost VM back.
    let r = h.cmd("session", "stop", json!({"session_id": killed}));
    assert_eq!(ok(&r)["status"], "lost");
    let r = h.cmd("session", "start", json!({"session_id": killed}));
    assert_eq!(ok(&r)["status"], "running");
    assert_eq!(qmp_status(&dk), "running");
    for id in [&killed, &quit] {
        destroy(&h, id);
    }
}

#[test]
fn a_stale_pidfile_naming_a_live_unrelated_pid_is_never_killed() {
    let mut h = Host::start(&cfg("q35", ""));
    let reused = sid("reused");
    let pidfile_only = sid("pidfile");
    for id in [&reused, &pidfile_only] {
        create_started(&h, id, json!({}));
    }
    let (dr, dp) = (
        vm_dir(&h, &reused).unwrap(),
        vm_dir(&h, &pidfile_only).unwrap(),
    );
    let mut sleeper = Command::new("sleep").arg("300").spawn().unwrap();
    struct Reap<'a>(&'a mut Child);
    impl Drop for Reap<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let sleeper = Reap(&mut sleeper);
    let spid = sleeper.0.id();

    // The agent is down while both VMs die and their pids "get reused".
    h.kill9();
    for d in [&dr, &dp] {
        // SAFETY: kill(2) of VMs this test created.
        unsafe { libc::kill(vm_pid(d) as i32, libc::SIGKILL) };
    }
    // One record names the sleeper as its pid (pid reuse); the other has
    // no pid recorded and a pidfile naming the sleeper.
    let mut r = record(&dr).unwrap();
    r["process"]["pid"] = json!(spid);
    std::fs::write(dr.join("vm.json"), r.to_string()).unwrap();
    let mut r = record(&dp).unwrap();
    r["process"] = Value::Null;
    std::fs::write(dp.join("vm.json"), r.to_string()).unwrap();
    for d in [&dr, &dp] {
        std::fs::write(d.join("qemu.pid"), format!("{spid}\n")).unwrap();
    }
    h.restart();

    for id in [&reused, &pidfile_only] {
        assert_eq!(session_status(&h, id).as_deref(), Some("lost"), "{id}");
        let r = h.cmd(
            "session",
            "stop",
            json!({"session_id": id, "timeout": "1s"}),
        );
        ok(&r);
        assert_eq!(destroy(&h, id)["existed"], true);
    }
    assert!(
        matches!(sleeper.0.try_wait(), Ok(None)),
        "the unrelated process {spid} was killed"
    );
    assert!(!h.log().contains(&format!("pid {spid} did not quit")));
}

#[test]
fn another_qmp_client_never_stands_in_the_agent_s_way() {
    let h = Host::start(&cfg("q35", ""));
    let id = sid("qmperr");
    create(&h, &id, json!({}));
    let dir = vm_dir(&h, &id).unwrap();
    {
        // The client's own error handling is tested against a real QEMU
        // in src/providers/qemu/qmp.rs; here: the agent's view while
        // someone else holds the second monitor.
        let mut q = Qmp::connect(&dir.join("qmp-user.sock"));
        let e = q.execute("no-such-command", None).unwrap_err();
        assert_eq!(e["class"], "CommandNotFound", "{e}");
        assert_eq!(q.status(), "prelaunch");

        // The agent holds its own monitor: another client does not stand
        // in its way.
        assert_eq!(session_status(&h, &id).as_deref(), Some("created"));
        let r = h.cmd("session", "start", json!({"session_id": id}));
        assert_eq!(ok(&r)["status"], "running");
        assert_eq!(q.status(), "running");

        // What QEMU announces reaches the event stream as it happens,
        // with its cause (the monitor's listing would not name it).
        let mut events = Events::open(&h);
        q.execute("stop", None).unwrap();
        let ev = events
            .wait_for(Duration::from_secs(10), |v| {
                v["id"] == id.as_str() && v["status"] == "stopped"
            })
            .unwrap_or_else(|| panic!("no stopped event; log:\n{}", h.log()));
        assert_eq!(ev["cause"], "qmp:STOP", "{ev}");
        q.execute("cont", None).unwrap();
        let ev = events
            .wait_for(Duration::from_secs(10), |v| {
                v["id"] == id.as_str() && v["status"] == "running"
            })
            .unwrap_or_else(|| panic!("no running event; log:\n{}", h.log()));
        assert_eq!(ev["cause"], "qmp:RESUME", "{ev}");
    }
    destroy(&h, &id);
}

#[test]
fn exec_through_the_real_qemu_ga() {
    let h = Host::start(&cfg("q35", "limits:\n  max_output: 1k\n"));
    let id = sid("exec");
    create(&h, &id, json!({}));
    let dir = vm_dir(&h, &id).unwrap();

    // Not running yet: a clear conflict, before any guest agent talk.
    let r = exec(&h, &id, json!({"command": ["true"]}));
    failed(&r, "conflict", "start it first");
    ok(&h.cmd("session", "start", json!({"session_id": id})));

    let _ga = GuestAgent::start(&dir.join("qga.sock"));

    let r = exec(
        &h,
        &id,
        json!({"command": ["sh", "-c", "echo out; echo err >&2"]}),
    );
    let d = ok(&r);
    assert_eq!(d["exit_code"], 0);
    assert_eq!(d["stdout"], "out\n");
    assert_eq!(d["stderr"], "err\n");
    assert_eq!(r["exit_code"], 0);

    let r = exec(&h, &id, json!({"command": "exit 7", "shell": true}));
    assert_eq!(r["exit_code"], 7, "{r}");
    assert_eq!(r["data"]["exit_code"], 7, "{r}");

    let r = exec(
        &h,
        &id,
        json!({"command": ["cat"], "stdin": "from stdin\n"}),
    );
    assert_eq!(ok(&r)["stdout"], "from stdin\n");
    // No stdin: an empty one, not the agent's (cat must not hang).
    let r = exec(&h, &id, json!({"command": ["cat"], "timeout": "5s"}));
    assert_eq!(ok(&r)["stdout"], "");

    let r = exec(
        &h,
        &id,
        json!({"command": ["sh", "-c", "pwd; echo \"$A\"; command -v sh >/dev/null && echo path-ok"], "workdir": "/tmp", "env": {"A": "b c"}}),
    );
    assert_eq!(ok(&r)["stdout"], "/tmp\nb c\npath-ok\n");

    // The cap: 5000 bytes written, 1 KiB kept, flagged; stderr kept apart.
    let r = exec(
        &h,
        &id,
        json!({"command": ["sh", "-c", "head -c 5000 /dev/zero | tr '\\0' x; echo e >&2"]}),
    );
    let d = ok(&r);
    assert_eq!(d["stdout"].as_str().unwrap().len(), 1024);
    assert_eq!(d["stdout_truncated"], true);
    assert_eq!(d["stderr"], "e\n");
    assert_eq!(d["stderr_truncated"], false);

    // The timeout kills the command and its children.
    let marker = format!("{}", 40_000 + std::process::id() % 20_000);
    let t0 = Instant::now();
    let r = exec(
        &h,
        &id,
        json!({"command": ["sh", "-c", format!("echo started; sleep {marker} & sleep {marker}; echo never")], "timeout": "1s"}),
    );
    let took = t0.elapsed();
    failed(&r, "timeout", "exec timed out after 1s and was killed");
    assert_eq!(r["data"]["timed_out"], true);
    assert_eq!(r["data"]["exit_code"], Value::Null);
    assert_eq!(r["data"]["stdout"], "started\n", "output so far is kept");
    assert!(took < Duration::from_secs(4), "{took:?}");
    let sleepers = || host_pids(&["sleep", &marker]).len();
    assert!(
        wait_until(Duration::from_secs(3), || sleepers() == 0),
        "sleep {marker} survived"
    );

    // A missing program: the guest agent's own error, surfaced.
    let r = exec(&h, &id, json!({"command": ["/nonexistent/prog"]}));
    failed(&r, "failed", "/nonexistent/prog");
    // user cannot be honoured by guest-exec.
    let r = exec(&h, &id, json!({"command": ["id"], "user": "nobody"}));
    failed(&r, "invalid_command", "params.user");
    destroy(&h, &id);
}

/// Kills host processes whose command line is `argv` on drop: what a test
/// ran through the host's qemu-ga outlives qemu-ga.
struct KillOnDrop(Vec<String>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let argv: Vec<&str> = self.0.iter().map(String::as_str).collect();
        for pid in host_pids(&argv) {
            // SAFETY: kill(2) of a process with this test's own marker argv.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

#[test]
fn an_exec_cut_off_by_an_agent_crash_is_killed_in_the_guest() {
    let mut h = Host::start(&cfg("q35", ""));
    let id = sid("reap");
    create_started(&h, &id, json!({}));
    let dir = vm_dir(&h, &id).unwrap();
    let mut ga = GuestAgent::start(&dir.join("qga.sock"));

    let marker = (600_000 + std::process::id() % 100_000).to_string();
    let foreign = (marker.parse::<u32>().unwrap() + 1).to_string();
    let _cleanup = (
        KillOnDrop(vec!["sleep".into(), marker.clone()]),
        KillOnDrop(vec!["sleep".into(), foreign.clone()]),
    );
    // Someone else's process in the "guest", tagged with another id.
    let mut other = Command::new("sleep")
        .arg(&foreign)
        .env("VENDETTA_COMMAND_ID", "someone-else")
        .spawn()
        .unwrap();
    let cmd_id = start_sleep(&h, &id, &marker);
    h.kill9();
    assert!(
        !host_pids(&["sleep", &marker]).is_empty(),
        "qemu-ga keeps the process running when the agent dies"
    );
    // The stand-in's own quirk: qemu-ga in unix-listen mode exits when a
    // client dies with replies unread (ECONNRESET), which SIGKILL can do.
    // Inside a VM the agent's socket is QEMU's and the guest's qemu-ga
    // never sees that, so the stand-in is started again when it quit. (It
    // serves one client at a time: a ping that gets through means it has
    // dealt with the dead one.)
    if !ping(&dir.join("qga.sock")) {
        drop(ga);
        ga = GuestAgent::start(&dir.join("qga.sock"));
    }
    h.restart();

    assert_interrupted_and_reaped(&h, &cmd_id, &marker);
    assert!(
        !host_pids(&["sleep", &foreign]).is_empty(),
        "not ours: kept"
    );
    let _ = other.kill();
    let _ = other.wait();
    destroy(&h, &id);
    drop(ga);
}

#[test]
fn exec_with_nobody_answering_says_guest_agent_not_responding_in_time() {
    let h = Host::start(&cfg("q35", ""));
    let id = sid("noga");
    create_started(&h, &id, json!({}));
    // QEMU accepts on qga.sock but no guest runs an agent behind it.
    let t0 = Instant::now();
    let r = exec(&h, &id, json!({"command": ["true"], "timeout": "2s"}));
    let took = t0.elapsed();
    failed(&r, "provider_unavailable", "guest agent not responding");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(4),
        "{took:?}"
    );
    // The agent keeps serving.
    assert!(h.is_alive());
    destroy(&h, &id);
}

#[test]
fn image_overlay_and_image_roots() {
    let images = TempDir::new("qimg");
    let base = images.path().join("base.qcow2");
    run_ok(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&base)
            .arg("64M"),
    );
    let outside = TempDir::new("qimgx");
    let stray = outside.path().join("other.qcow2");
    std::fs::copy(&base, &stray).unwrap();
    let h = Host::start(&cfg(
        "q35",
        &format!("  image_roots: [\"{}\"]\n", images.path().display()),
    ));
    let id = sid("img");
    let s = create(&h, &id, json!({"image": base}));
    assert_eq!(s["image"], base.to_string_lossy().as_ref());
    let dir = vm_dir(&h, &id).unwrap();
    let info = Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(dir.join("disk.qcow2"))
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(
        info["backing-filename"],
        base.to_string_lossy().as_ref(),
        "{info}"
    );
    assert_eq!(info["backing-filename-format"], "qcow2");
    destroy(&h, &id);

    for (image, want) in [
        (
            stray.to_string_lossy().into_owned(),
            "not under qemu.image_roots",
        ),
        ("relative.qcow2".to_string(), "not an absolute path"),
        (
            format!("{}/../missing.qcow2", images.path().display()),
            "cannot be used",
        ),
    ] {
        let r = h.cmd(
            "session",
            "create",
            json!({"session_id": sid("badimg"), "image": image}),
        );
        failed(&r, "invalid_command", want);
    }
    assert!(
        std::fs::read_dir(h.cache().join("qemu")).unwrap().count() == 0,
        "failed creates leave no directories"
    );
}

#[test]
fn a_failed_launch_leaves_nothing_behind() {
    let h = Host::start(
        "provider: qemu\nproviders: [qemu]\nqemu:\n  memory: 64m\n  extra_args: [\"-accel\", \"tcg\", \"-no-such-flag\"]\n",
    );
    let r = h.cmd("session", "create", json!({"session_id": sid("badarg")}));
    let e = failed(&r, "failed", "-no-such-flag");
    assert!(e.contains("launching"), "{e}");
    assert_eq!(
        std::fs::read_dir(h.cache().join("qemu")).unwrap().count(),
        0
    );
    assert!(procs_naming(&h.cache()).is_empty());
}

#[test]
fn health_reports_the_binary_and_kvm_and_a_missing_binary_is_clear() {
    let h = Host::start(&cfg("q35", ""));
    let (_, body) = h.get("/health");
    let q = &body["providers"]["qemu"];
    assert_eq!(q["ok"], true, "{body}");
    assert!(
        q["detail"]["version"]
            .as_str()
            .unwrap()
            .contains("QEMU emulator version"),
        "{q}"
    );
    assert!(q["detail"]["kvm"].is_boolean(), "{q}");
    assert!(
        q["detail"]["qemu_img"]
            .as_str()
            .unwrap()
            .ends_with("qemu-img"),
        "{q}"
    );

    let h = Host::start(
        "provider: qemu\nproviders: [qemu]\nqemu:\n  binary: /nonexistent/qemu-system-x86_64\n",
    );
    let (status, body) = h.get("/health");
    assert_eq!(status, 503, "{body}");
    let m = body["providers"]["qemu"]["message"].as_str().unwrap();
    assert!(
        m.contains("/nonexistent/qemu-system-x86_64") && m.contains("qemu.binary"),
        "{m}"
    );
    let r = h.cmd("session", "create", json!({"session_id": sid("nobin")}));
    failed(
        &r,
        "provider_unavailable",
        "/nonexistent/qemu-system-x86_64",
    );
}

#[test]
fn a_cache_dir_too_long_for_sockets_is_reported() {
    let long = format!("/tmp/vt-long-{}/{}", std::process::id(), "d".repeat(90));
    let h = Host::start(&format!("cache_dir: {long}\n{}", cfg("q35", "")));
    let (_, body) = h.get("/health");
    let m = body["providers"]["qemu"]["message"].as_str().unwrap();
    assert!(m.contains("shorter cache_dir"), "{m}");
    let r = h.cmd("session", "create", json!({"session_id": sid("long")}));
    failed(&r, "provider_unavailable", "shorter cache_dir");
    let _ = std::fs::remove_dir_all(format!("/tmp/vt-long-{}", std::process::id()));
}

/// Where tests/setup/guest.sh puts the test guest.
fn guest_dir() -> PathBuf {
    std::env::var_os("VENDETTA_TEST_GUEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/vendetta-test/guest"))
}

/// Execs `command` until the guest agent answers (the guest is booting),
/// within `within`.
fn exec_when_booted(h: &Host, id: &str, dir: &Path, command: Value, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let r = exec(h, id, json!({"command": command.clone(), "timeout": "2s"}));
        if r["status"] == "success" {
            return r;
        }
        // Not up yet, or too slow while it boots under TCG: try again.
        let error = r["error"].as_str().unwrap_or_default();
        let booting = match r["code"].as_str() {
            Some("timeout") => r["status"] == "timeout",
            Some("provider_unavailable") => {
                r["status"] == "failed" && error.contains("guest agent not responding")
            }
            _ => false,
        };
        assert!(booting, "{r}");
        assert!(
            Instant::now() < deadline,
            "the guest did not answer within {within:?}; serial console:\n{}",
            std::fs::read_to_string(dir.join("serial.log")).unwrap_or_default()
        );
    }
}

/// Stretch: a real Linux guest (Debian's cloud kernel, an initramfs of
/// busybox and qemu-ga built by tests/setup/guest.sh) boots under TCG, and
/// exec, port forwarding, the graceful powerdown and a guest-initiated
/// shutdown work against it.
#[test]
fn real_guest_boots_and_runs_exec() {
    let g = guest_dir();
    let (kernel, initrd) = (g.join("vmlinuz"), g.join("initrd.img"));
    assert!(
        kernel.exists() && initrd.exists(),
        "no test guest in {}: build it with tests/setup/guest.sh (tests/setup/deps.sh runs it)",
        g.display()
    );
    let release = std::fs::read_to_string(g.join("release")).unwrap();
    let h = Host::start(&format!(
        "provider: qemu\nproviders: [qemu]\nqemu:\n  memory: 256m\n  extra_args: [\"-accel\", \"tcg\", \"-kernel\", \"{}\", \"-initrd\", \"{}\", \"-append\", \"console=ttyS0 panic=-1\"]\n",
        kernel.display(),
        initrd.display()
    ));
    let id = sid("guest");
    let s = create(&h, &id, json!({"ports": ["80"]}));
    let port = s["ports"]["80/tcp"].as_u64().unwrap() as u16;
    ok(&h.cmd("session", "start", json!({"session_id": id})));
    let dir = vm_dir(&h, &id).unwrap();
    let booted = Instant::now();
    let r = exec_when_booted(
        &h,
        &id,
        &dir,
        json!(["uname", "-r"]),
        Duration::from_secs(60),
    );
    eprintln!("guest answered {:?} after start", booted.elapsed());
    assert_eq!(r["data"]["stdout"], format!("{}\n", release.trim()), "{r}");

    // Inside the guest: exit codes, stdin, stderr, the timeout's kill.
    let r = exec(
        &h,
        &id,
        json!({"command": "cat; echo e >&2; exit 7", "shell": true, "stdin": "in-guest"}),
    );
    assert_eq!(r["data"]["exit_code"], 7, "{r}");
    assert_eq!(r["data"]["stdout"], "in-guest");
    assert_eq!(r["data"]["stderr"], "e\n");
    let r = exec(
        &h,
        &id,
        json!({"command": "sleep 4242 & sleep 4242", "shell": true, "timeout": "1s"}),
    );
    failed(&r, "timeout", "exec timed out after 1s and was killed");
    let r = exec(
        &h,
        &id,
        json!({"command": "ps | grep -c '[s]leep 4242' || true", "shell": true}),
    );
    assert_eq!(
        ok(&r)["stdout"],
        "0\n",
        "sleeps survived the timeout in the guest"
    );

    // The forwarded port reaches the guest's httpd; service health agrees.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut page = String::new();
    let _ = s.read_to_string(&mut page);
    assert!(
        page.contains("hello from the vendetta test guest"),
        "{page}"
    );
    let r = h.cmd("service", "status", json!({"session_id": id}));
    assert_eq!(ok(&r)["health"]["status"], "healthy", "{r}");

    // The guest powers off on the ACPI button: stop is graceful.
    let t = Instant::now();
    let r = h.cmd(
        "session",
        "stop",
        json!({"session_id": id, "timeout": "20s"}),
    );
    assert_eq!(ok(&r)["status"], "stopped");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "powerdown ignored: {:?}",
        t.elapsed()
    );
    assert!(!h.log().contains("ignored system_powerdown"), "{}", h.log());

    // Boot again; a shutdown from inside the guest is `exited`.
    ok(&h.cmd("session", "start", json!({"session_id": id})));
    exec_when_booted(&h, &id, &dir, json!(["true"]), Duration::from_secs(60));
    let _ = exec(
        &h,
        &id,
        json!({"command": ["poweroff", "-f"], "timeout": "5s"}),
    );
    assert!(
        wait_until(Duration::from_secs(20), || session_status(&h, &id)
            .as_deref()
            == Some("exited")),
        "status {:?}",
        session_status(&h, &id)
    );
    destroy(&h, &id);
}
