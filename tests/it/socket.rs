//! The local API on a Unix socket: born with mode 0660 and its group, the
//! token still required, allowed_ips for TCP only, only a dead agent's
//! socket replaced, removed at stop; the CLI prefers it and falls back to
//! TCP. Other users are real: `setpriv` runs curl and the CLI as nobody.

use crate::util::{file_mode, text, wait_until, Agent, BIN, TOKEN};
use serde_json::Value;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// An agent configured with `listen` set by `listen(port, socket)`, and
/// the socket's path; not started.
fn socket_agent(tag: &str, listen: impl Fn(u16, &Path) -> String, extra: &str) -> (Agent, PathBuf) {
    let a = Agent::configure(tag, extra);
    let socket = a.dir.path().join("run/agent.sock");
    let yaml = std::fs::read_to_string(&a.config).unwrap();
    let yaml = yaml.replace(
        &format!("listen: 127.0.0.1:{}\n", a.port),
        &format!("listen: {}\n", listen(a.port, &socket)),
    );
    std::fs::write(&a.config, yaml).unwrap();
    (a, socket)
}

fn both(port: u16, socket: &Path) -> String {
    format!("[127.0.0.1:{port}, unix:{}]", socket.display())
}

fn wait_socket(a: &Agent, socket: &Path) {
    assert!(
        wait_until(Duration::from_secs(20), || {
            std::os::unix::net::UnixStream::connect(socket).is_ok()
        }),
        "no socket at {}; log:\n{}",
        socket.display(),
        a.log()
    );
}

/// curl on the socket, as `user` (None: as root); (HTTP status, body).
fn curl(socket: &Path, path: &str, token: Option<&str>, user: Option<&[&str]>) -> (u16, String) {
    let mut cmd = match user {
        Some(ids) => {
            let mut c = Command::new("setpriv");
            c.args(ids).arg("curl");
            c
        }
        None => Command::new("curl"),
    };
    cmd.args([
        "-s",
        "--max-time",
        "10",
        "-w",
        "\n%{http_code}",
        "--unix-socket",
    ])
    .arg(socket);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd.arg(format!("http://localhost{path}")).output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = s.rsplit_once('\n').unwrap_or(("", &s));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

const NOBODY: &[&str] = &["--reuid=65534", "--regid=65534", "--clear-groups"];
/// nobody, but in group daemon (gid 1).
const NOBODY_IN_DAEMON: &[&str] = &["--reuid=65534", "--regid=65534", "--groups=1"];

#[test]
fn the_socket_is_born_private_and_still_needs_the_token() {
    let (mut a, socket) = socket_agent(
        "sock",
        both,
        "listen_group: daemon\nallowed_ips: [10.0.0.0/8]\n",
    );
    a.spawn();
    wait_socket(&a, &socket);
    let m = std::fs::symlink_metadata(&socket).unwrap();
    assert!(m.file_type().is_socket());
    assert_eq!(
        (file_mode(&socket), m.gid()),
        (0o660, 1),
        "mode 0660, group daemon"
    );
    // The token is still asked for; allowed_ips is for TCP only.
    let (status, body) = curl(&socket, "/api/v1/sessions?provider=lxc", None, None);
    assert_eq!(status, 401, "{body}");
    let (status, body) = curl(&socket, "/api/v1/sessions?provider=lxc", Some(TOKEN), None);
    assert_eq!(status, 200, "{body}");
    let (status, body) = a.get("/health");
    assert_eq!(
        status, 403,
        "TCP from 127.0.0.1 is outside allowed_ips: {body}"
    );
    // Other users: a member of the group reaches it, nobody else does.
    let (status, body) = curl(&socket, "/health", None, Some(NOBODY_IN_DAEMON));
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, _) = curl(&socket, "/health", None, Some(NOBODY));
    assert_eq!(status, 0, "nobody outside the group cannot connect");
    // A clean stop removes it.
    assert!(a.stop().success());
    assert!(!socket.exists(), "the socket is removed at stop");
}

#[test]
fn only_a_dead_agents_socket_is_replaced() {
    let (mut a, socket) = socket_agent("sockstale", |_, s| format!("unix:{}", s.display()), "");
    a.spawn();
    wait_socket(&a, &socket);
    // A second agent (its own state) on the same socket: refused, and the
    // first keeps serving.
    let (mut b, _) = socket_agent("sockrival", |_, _| format!("unix:{}", socket.display()), "");
    b.spawn();
    let status = b
        .wait_exit(Duration::from_secs(20))
        .expect("the rival exits");
    assert_eq!(status.code(), Some(1), "{}", b.log());
    assert!(
        b.log().contains(&format!(
            "cannot listen on unix:{}: another process listens on it (is an agent running already?)",
            socket.display()
        )),
        "{}",
        b.log()
    );
    assert_eq!(curl(&socket, "/health", None, None).0, 200);
    // kill -9 leaves the socket file behind; the next start replaces it.
    a.kill9();
    assert!(socket.exists());
    a.spawn();
    wait_socket(&a, &socket);
    assert_eq!(curl(&socket, "/health", None, None).0, 200);
    a.kill9();
    // What is not a socket is never removed: a file, or a symlink to one.
    for (what, make) in [
        (
            "file",
            &(|p: &Path| std::fs::write(p, "precious").unwrap()) as &dyn Fn(&Path),
        ),
        ("symlink", &|p: &Path| {
            let target = p.with_file_name("target");
            std::fs::write(&target, "precious").unwrap();
            std::os::unix::fs::symlink(&target, p).unwrap();
        }),
    ] {
        std::fs::remove_file(&socket).ok();
        make(&socket);
        a.spawn();
        let status = a
            .wait_exit(Duration::from_secs(20))
            .expect("the agent exits");
        assert_eq!(status.code(), Some(1), "{what}");
        assert!(
            a.log().contains(
                "something that is not a socket is there; remove it or pick another path"
            ),
            "{what}: {}",
            a.log()
        );
        assert_eq!(
            std::fs::read_to_string(&socket).unwrap(),
            "precious",
            "{what}"
        );
    }
}

fn cli(args: &[&str], config: &Path, user: Option<&[&str]>) -> Output {
    let mut cmd = match user {
        Some(ids) => {
            let mut c = Command::new("setpriv");
            c.args(ids).arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    cmd.args(args)
        .arg("--config")
        .arg(config)
        .env_remove("VENDETTA_AGENT_URL")
        .env_remove("VENDETTA_API_TOKEN")
        .output()
        .unwrap()
}

#[test]
fn the_cli_prefers_the_socket_and_falls_back_to_tcp() {
    let (mut a, socket) = socket_agent("sockcli", both, "");
    a.spawn();
    a.wait_ready();
    wait_socket(&a, &socket);
    let out = cli(&["agent", "status", "--json"], &a.config, None);
    assert!(out.status.success(), "{}", text(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["agent"], format!("unix:{}", socket.display()), "{doc}");
    // nobody cannot open the socket (root's group): the CLI goes over TCP,
    // with the token given (the token file is root's too).
    std::fs::set_permissions(&a.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = cli(
        &["system", "status", "--json", "--token", TOKEN],
        &a.config,
        Some(NOBODY),
    );
    assert!(out.status.success(), "{}", text(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["status"], "success", "{doc}");
    // Only the socket, and it is gone: the CLI says where it looked.
    a.kill9();
    std::fs::remove_file(&socket).unwrap();
    let (b, _) = socket_agent("sockcli2", |_, _| format!("unix:{}", socket.display()), "");
    let out = cli(&["system", "status"], &b.config, None);
    assert_eq!(out.status.code(), Some(3), "not running: {}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "cannot reach the agent at unix:{}",
            socket.display()
        )),
        "{}",
        text(&out)
    );
}

#[test]
fn the_listen_flag_and_env_override_the_config() {
    let mut a = Agent::configure("socklisten", "");
    let socket = a.dir.path().join("flag.sock");
    let out = Command::new(BIN)
        .args(["agent", "start", "--config"])
        .arg(&a.config)
        .args(["--listen", "unix:relative.sock"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("--listen: unix:relative.sock: the socket path must be absolute"),
        "{}",
        text(&out)
    );
    // The flag wins over the config's TCP address: only the socket.
    let mut child = Command::new(BIN)
        .args(["agent", "start", "--config"])
        .arg(&a.config)
        .arg("--listen")
        .arg(format!("unix:{}", socket.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let up = wait_until(Duration::from_secs(20), || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    });
    let tcp = std::net::TcpStream::connect(("127.0.0.1", a.port)).is_ok();
    let _ = child.kill();
    let _ = child.wait();
    assert!(up, "no socket from --listen");
    assert!(!tcp, "the config's TCP address is not used");
    // VENDETTA_LISTEN that does not parse: a config error naming it.
    let out = Command::new(BIN)
        .args(["agent", "start", "--config"])
        .arg(&a.config)
        .env("VENDETTA_LISTEN", "nowhere")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out)
            .contains("environment variable VENDETTA_LISTEN: \"nowhere\" is not an address:port"),
        "{}",
        text(&out)
    );
    a.kill9();
}
