//! Test harness: runs the real `vendetta` binary in its own temp dir, talks
//! to it over HTTP and its CLI, and cleans up (processes, dirs) on drop,
//! also when a test fails. On failure the agent's log is printed.

pub(crate) mod coord;
pub(crate) mod qmp;

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_vendetta");
pub(crate) const TOKEN: &str = "test-token-0123456789abcdef";

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
            "listen: 127.0.0.1:{port}\ncache_dir: {}\napi_token: {TOKEN}\nlog_format: json\nlog_level: debug\nmonitor_interval: 500ms\n",
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
        self.starts += 1;
        let log = std::fs::File::create(self.log_path()).expect("log file");
        let child = Command::new(BIN)
            .args(["agent", "start", "--config"])
            .arg(&self.config)
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
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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

    /// Runs a command through the API and returns its result (asserting 200).
    pub(crate) fn cmd(&self, kind: &str, action: &str, params: Value) -> Value {
        let id = format!("t-{kind}-{action}-{}", next_id());
        let (status, body) = self
            .post(&json!({"id": id, "type": kind, "action": action, "params": params}).to_string());
        assert_eq!(
            status,
            200,
            "{kind}.{action} answered {status}: {body}\nlog:\n{}",
            self.log()
        );
        body
    }

    /// Runs the CLI against this agent.
    pub(crate) fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("VENDETTA_AGENT_URL", &self.url)
            .env("VENDETTA_API_TOKEN", TOKEN)
            .env("VENDETTA_CONFIG", &self.config)
            .output()
            .expect("run vendetta cli")
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

/// The `data` of a command result that must have succeeded.
pub(crate) fn ok(r: &Value) -> &Value {
    assert_eq!(r["status"], "success", "{r:#}");
    &r["data"]
}

/// Starts `sleep MARKER` in session `id` as an async command and waits
/// until its process shows on the host. Returns the command's id.
pub(crate) fn start_sleep(a: &Agent, id: &str, marker: &str) -> String {
    let cmd_id = format!("crash-{}", next_id());
    let (s, r) = a.post_path(
        "/api/v1/commands?async=true",
        &serde_json::json!({"id": cmd_id, "type": "session", "action": "exec",
                "params": {"session_id": id, "command": ["sleep", marker], "timeout": "10m"}})
        .to_string(),
        Some(TOKEN),
    );
    assert_eq!(s, 202, "{r}");
    assert!(
        wait_until(Duration::from_secs(10), || !host_pids(&["sleep", marker])
            .is_empty()),
        "sleep {marker} did not start"
    );
    cmd_id
}

/// After a crash during `start_sleep`'s command and a restart: the command
/// is reported as interrupted with its process killed, and that process is
/// gone (so the server may run the command again safely).
pub(crate) fn assert_interrupted_and_reaped(a: &Agent, cmd_id: &str, marker: &str) {
    let (s, r) = a.get(&format!("/api/v1/commands/{cmd_id}"));
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["code"], "agent_restarted", "{r}");
    assert!(
        r["error"]
            .as_str()
            .unwrap_or("")
            .contains("has been killed"),
        "{r}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || host_pids(&["sleep", marker])
            .is_empty()),
        "the process the crash left behind still runs"
    );
}

/// A live `/api/v1/events` stream. Once `open` returns, the agent has
/// subscribed it: events published after that are all seen.
pub(crate) struct Events(std::io::BufReader<TcpStream>);

impl Events {
    pub(crate) fn open(a: &Agent) -> Events {
        use std::io::BufRead;
        let mut s = TcpStream::connect(("127.0.0.1", a.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /api/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
        )
        .unwrap();
        let mut r = std::io::BufReader::new(s);
        let mut status = String::new();
        r.read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        r.get_ref()
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Events(r)
    }

    /// The first event whose JSON data matches `pred` within `timeout`.
    pub(crate) fn wait_for(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        use std::io::BufRead;
        let deadline = Instant::now() + timeout;
        let mut line = String::new();
        while Instant::now() < deadline {
            line.clear();
            match self.0.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(_) => continue,
            }
            if let Some(data) = line.strip_prefix("data: ") {
                if let Ok(v) = serde_json::from_str::<Value>(data.trim()) {
                    if pred(&v) {
                        return Some(v);
                    }
                }
            }
        }
        None
    }
}
