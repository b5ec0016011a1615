//! Test harness: runs the real `vendetta` binary in its own temp dir, talks
//! to it over HTTP and its CLI, and cleans up (processes, dirs) on drop,
//! also when a test fails. On failure the agent's log is printed.

mod cmd;
pub(crate) mod coord;
mod events;
pub(crate) mod qmp;

pub(crate) use cmd::{
    api_error, assert_interrupted_and_reaped, create, create_started, destroy, exec, failed,
    find_session, ok, sessions, start_sleep,
};
pub(crate) use events::Events;

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_vendetta");
pub(crate) const TOKEN: &str = "test-token-0123456789abcdef-0123456789";

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub(crate) fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        // The polling interval: the one sleep every wait goes through.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A directory under /tmp removed on drop. Names stay short: QEMU socket
/// paths must fit in 108 bytes.
pub(crate) struct TempDir(pub(crate) PathBuf);

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let p = PathBuf::from(format!("/tmp/vt-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Sealed workspaces an agent left mounted here would otherwise be
        // emptied through their mounts: detach them first.
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for point in info.lines().filter_map(|l| l.split(' ').nth(4)) {
            if Path::new(point).starts_with(&self.0) {
                let c = std::ffi::CString::new(point).unwrap();
                // SAFETY: c is a valid NUL-terminated path.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback port held bound but not listening: connections to it are
/// refused, and no one else can take it until it is dropped.
pub(crate) struct HeldPort {
    fd: i32,
    pub(crate) port: u16,
}

impl HeldPort {
    pub(crate) fn new() -> HeldPort {
        // SAFETY: plain socket calls on a fd this struct owns; the
        // sockaddr_in is zeroed and filled before use.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket");
            // As std's listeners have it: once this socket listens
            // (`into_listener`), the connections it leaves in TIME_WAIT must
            // not keep a later listener off the port.
            let one: libc::c_int = 1;
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            assert_eq!(
                libc::bind(fd, (&addr as *const libc::sockaddr_in).cast(), len),
                0,
                "bind"
            );
            let mut got: libc::sockaddr_in = std::mem::zeroed();
            let mut got_len = len;
            assert_eq!(
                libc::getsockname(
                    fd,
                    (&mut got as *mut libc::sockaddr_in).cast(),
                    &mut got_len
                ),
                0
            );
            HeldPort {
                fd,
                port: u16::from_be(got.sin_port),
            }
        }
    }
}

impl HeldPort {
    /// Starts listening on the held port: no gap in which another socket
    /// (an outgoing connection's source port) could take it.
    pub(crate) fn into_listener(self) -> TcpListener {
        use std::os::fd::FromRawFd;
        let fd = self.fd;
        std::mem::forget(self);
        // SAFETY: `fd` is a bound socket this struct owned; ownership
        // passes to the TcpListener.
        unsafe {
            assert_eq!(libc::listen(fd, 128), 0, "listen");
            TcpListener::from_raw_fd(fd)
        }
    }
}

impl Default for HeldPort {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for HeldPort {
    fn drop(&mut self) {
        // SAFETY: closing the fd this struct owns.
        unsafe { libc::close(self.fd) };
    }
}

/// A free loopback port (bound, then released).
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind :0")
        .local_addr()
        .expect("addr")
        .port()
}

pub(crate) struct Agent {
    pub(crate) dir: TempDir,
    pub(crate) port: u16,
    pub(crate) url: String,
    pub(crate) config: PathBuf,
    child: Option<Child>,
    http: ureq::Agent,
    starts: u32,
}

impl Agent {
    /// Starts an agent whose config is the harness defaults plus `extra`
    /// (YAML lines; later keys must not repeat the defaults').
    pub(crate) fn start(extra: &str) -> Agent {
        let mut a = Agent::configure("agent", extra);
        a.spawn();
        a.wait_ready();
        a
    }

    /// Writes the config but does not start the agent.
    pub(crate) fn configure(tag: &str, extra: &str) -> Agent {
        let dir = TempDir::new(tag);
        let port = free_port();
        let config = dir.path().join("agent.yaml");
        let mut yaml = format!(
            "listen: 127.0.0.1:{port}\ncache_dir: {}\napi_token: {TOKEN}\nlog_format: json\nlog_level: debug\nmonitor_interval: 500ms\nworkspace_roots: [/tmp]\n",
            dir.path().join("cache").display()
        );
        let overridden: Vec<&str> = extra
            .lines()
            .filter_map(|l| l.split(':').next())
            .filter(|k| !k.starts_with(' '))
            .collect();
        yaml = yaml
            .lines()
            .filter(|l| !overridden.contains(&l.split(':').next().unwrap_or("")))
            .map(|l| format!("{l}\n"))
            .collect();
        yaml.push_str(extra);
        yaml.push('\n');
        std::fs::write(&config, yaml).expect("write config");
        let http = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        Agent {
            dir,
            port,
            url: format!("http://127.0.0.1:{port}"),
            config,
            child: None,
            http,
            starts: 0,
        }
    }

    pub(crate) fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("agent-{}.log", self.starts))
    }

    pub(crate) fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    pub(crate) fn spawn(&mut self) {
        self.spawn_with(&[]);
    }

    /// Starts the agent with `env` added to its environment (such as
    /// `VENDETTA_CRASH_AT`, for the crash tests).
    pub(crate) fn spawn_with(&mut self, env: &[(&str, &str)]) {
        self.starts += 1;
        let log = std::fs::File::create(self.log_path()).expect("log file");
        let child = Command::new(BIN)
            .args(["agent", "start", "--config"])
            .arg(&self.config)
            .envs(env.iter().copied())
            .env_remove("VENDETTA_CONFIG")
            .env_remove("VENDETTA_LOG_LEVEL")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn vendetta");
        self.child = Some(child);
    }

    pub(crate) fn wait_ready(&self) {
        let ok = wait_until(Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
        assert!(
            ok,
            "agent did not listen on {} within 20s; log:\n{}",
            self.port,
            self.log()
        );
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// All logs of every start, concatenated.
    pub(crate) fn log(&self) -> String {
        (1..=self.starts)
            .map(|i| {
                std::fs::read_to_string(self.dir.path().join(format!("agent-{i}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }

    pub(crate) fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    /// Waits for the process to exit, up to `timeout`.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let mut status = None;
        wait_until(timeout, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        if status.is_some() {
            self.child = None;
        }
        status
    }

    /// SIGTERM and wait for a clean exit.
    pub(crate) fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(40))
            .unwrap_or_else(|| panic!("agent did not exit after SIGTERM; log:\n{}", self.log()))
    }

    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the agent to die on its own (a crash point): its exit.
    pub(crate) fn wait_crash(&mut self) -> ExitStatus {
        let status = self
            .wait_exit(Duration::from_secs(60))
            .unwrap_or_else(|| panic!("the agent did not crash; log:\n{}", self.log()));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{}", self.log());
        status
    }

    pub(crate) fn restart(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.url);
        let resp = match method {
            "GET" => {
                let mut r = self.http.get(&url);
                if let Some(t) = token {
                    r = r.header("Authorization", format!("Bearer {t}"));
                }
                r.call()
            }
            "POST" => {
                let mut r = self
                    .http
                    .post(&url)
                    .header("Content-Type", "application/json");
                if let Some(t) = token {
                    r = r.header("Authorization", format!("Bearer {t}"));
                }
                r.send(body.unwrap_or("").to_string())
            }
            "DELETE" => {
                let mut r = self.http.delete(&url);
                if let Some(t) = token {
                    r = r.header("Authorization", format!("Bearer {t}"));
                }
                r.call()
            }
            other => panic!("unsupported method {other}"),
        };
        let mut resp =
            resp.unwrap_or_else(|e| panic!("{method} {path}: {e}; log:\n{}", self.log()));
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .unwrap_or_default();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    pub(crate) fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None, Some(TOKEN))
    }

    pub(crate) fn get_as(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.call("GET", path, None, token)
    }

    pub(crate) fn post(&self, body: &str) -> (u16, Value) {
        self.call("POST", "/api/v1/commands", Some(body), Some(TOKEN))
    }

    pub(crate) fn post_path(&self, path: &str, body: &str, token: Option<&str>) -> (u16, Value) {
        self.call("POST", path, Some(body), token)
    }

    /// Runs `command` through the API (an `id` is added when it has none)
    /// and returns its result, asserting the HTTP status the agent gives
    /// that result: 400 for `invalid_command`, 403 for `rejected`, else 200.
    pub(crate) fn run(&self, mut command: Value) -> Value {
        if command.get("id").is_none() {
            command["id"] = json!(format!(
                "t-{}-{}-{}",
                command["type"].as_str().unwrap_or("x"),
                command["action"].as_str().unwrap_or("x"),
                next_id()
            ));
        }
        let (status, body) = self.post(&command.to_string());
        let expected = match body["code"].as_str() {
            Some("invalid_command") => 400,
            Some("rejected") => 403,
            Some("not_found") => 404,
            _ => 200,
        };
        assert_eq!(
            status, expected,
            "{}.{} answered {status}: {body}",
            command["type"], command["action"]
        );
        body
    }

    /// Runs a command of `kind` and `action` (see `run`).
    pub(crate) fn cmd(&self, kind: &str, action: &str, params: Value) -> Value {
        self.run(json!({"type": kind, "action": action, "params": params}))
    }

    /// Posts `command` with `?async=true`: asserts 202 and where its result
    /// will be.
    pub(crate) fn submit(&self, command: &Value) {
        let id = command["id"].as_str().expect("the command has an id");
        let (s, b) = self.post_path(
            "/api/v1/commands?async=true",
            &command.to_string(),
            Some(TOKEN),
        );
        assert_eq!(s, 202, "{b}");
        assert_eq!(b["location"], format!("/api/v1/commands/{id}"), "{b}");
    }

    /// `GET /api/v1/commands/{id}`: 200 and the stored result, 202 and the
    /// state while queued or running, 404.
    pub(crate) fn command(&self, id: &str) -> (u16, Value) {
        self.get(&format!("/api/v1/commands/{id}"))
    }

    /// Polls `GET /api/v1/commands/{id}` until the result is stored (200)
    /// and returns it; fails on any answer but 202 meanwhile, or after
    /// `timeout`.
    pub(crate) fn wait_result(&self, id: &str, timeout: Duration) -> Value {
        let mut last = (0, Value::Null);
        let done = wait_until(timeout, || {
            last = self.command(id);
            assert!(
                matches!(last.0, 200 | 202),
                "GET /api/v1/commands/{id} answered {}: {}",
                last.0,
                last.1
            );
            last.0 == 200
        });
        assert!(done, "no result for {id} within {timeout:?}: {}", last.1);
        last.1
    }

    /// The body of `GET /health`, with its detail (which needs the token).
    pub(crate) fn health(&self) -> Value {
        self.get("/health").1
    }

    /// Waits until /health says the coordination link is in `state`.
    pub(crate) fn wait_link(&self, state: &str, timeout: Duration) {
        assert!(
            wait_until(timeout, || self.health()["link"]["state"] == state),
            "the link never reached {state:?}: {}",
            self.health()
        );
    }

    /// The Prometheus text of `GET /metrics`.
    pub(crate) fn metrics(&self) -> String {
        let (s, m) = self.get_as("/metrics", None);
        assert_eq!(s, 200, "{m}");
        m.as_str().expect("metrics are text").to_string()
    }

    /// Runs the CLI against this agent.
    pub(crate) fn cli(&self, args: &[&str]) -> Output {
        self.cli_command(args).output().expect("run vendetta cli")
    }

    /// The CLI command line against this agent, to spawn as a test likes.
    pub(crate) fn cli_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("VENDETTA_AGENT_URL", &self.url)
            .env("VENDETTA_API_TOKEN", TOKEN)
            .env("VENDETTA_CONFIG", &self.config);
        c
    }

    /// Sends raw bytes and returns the raw answer (for hostile requests).
    pub(crate) fn raw(&self, request: &[u8]) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(15))).ok();
        let _ = s.write_all(request);
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        // Read the status line and headers, then whatever body follows.
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            if out.windows(4).any(|w| w == b"\r\n\r\n") && body_complete(&out) {
                break;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    pub(crate) fn is_alive(&self) -> bool {
        let (status, _) = self.call("GET", "/health", None, None);
        status == 200 || status == 503
    }
}

/// The status and JSON body (or text) of a raw HTTP answer.
pub(crate) fn parse_raw(raw: &str) -> (u16, Value) {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {raw:?}"));
    let v = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_string()));
    (status, v)
}

fn body_complete(resp: &[u8]) -> bool {
    let text = String::from_utf8_lossy(resp);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })
        .and_then(|v| v.parse::<usize>().ok());
    match len {
        Some(n) => body.len() >= n,
        None => true,
    }
}

static IDS: AtomicU32 = AtomicU32::new(0);

pub(crate) fn next_id() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        IDS.fetch_add(1, Ordering::SeqCst)
    )
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- agent log ({}) ----\n{}\n---- end of agent log ----",
                self.config.display(),
                self.log()
            );
        }
        self.kill9();
    }
}

/// Runs `cmd` and returns its output; fails the test, with what the
/// command said, when it cannot be run or exits non-zero.
pub(crate) fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (tests/setup/deps.sh installs what the tests need)")
    });
    let (stdout, stderr) = streams(&out);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {stdout}{stderr}",
        out.status
    );
    out
}

/// A process's stdout and stderr, as text.
pub(crate) fn streams(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A process's stdout then stderr, as one text.
pub(crate) fn text(o: &Output) -> String {
    let (out, err) = streams(o);
    out + &err
}

/// The permission bits of a file.
pub(crate) fn file_mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Runs `vendetta agent connect ARGS --config CONFIG`, with no
/// coordination settings from the environment.
pub(crate) fn agent_connect(config: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["agent", "connect"])
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("VENDETTA_CONFIG")
        .env_remove("VENDETTA_COORD_URL")
        .env_remove("VENDETTA_AUTH_TOKEN")
        .output()
        .expect("run vendetta agent connect")
}

/// Runs `agent_connect` expecting exit `code`, `want` on stderr, nothing on
/// stdout, and the file as it was (bytes and mode); returns stderr.
pub(crate) fn connect_refused(config: &Path, args: &[&str], code: i32, want: &str) -> String {
    let before = std::fs::read(config).unwrap();
    let before_mode = file_mode(config);
    let out = agent_connect(config, args);
    let (stdout, stderr) = streams(&out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stderr.contains(want), "stderr lacks {want:?}: {stderr}");
    assert!(stdout.is_empty(), "nothing claimed on stdout: {stdout}");
    assert_eq!(std::fs::read(config).unwrap(), before, "the file changed");
    assert_eq!(file_mode(config), before_mode, "the file mode changed");
    stderr
}

/// Host processes whose command line is exactly `argv`.
pub(crate) fn host_pids(argv: &[&str]) -> Vec<u32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            alive(*pid) && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want)
        })
        .collect()
}

/// Whether `pid` is a live process (not a zombie).
pub(crate) fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        let state = s.rsplit(')').next().unwrap_or("").split_whitespace().next();
        !matches!(state, Some("Z") | Some("X"))
    })
}
