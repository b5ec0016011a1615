//! TLS on the coordination link against a real TLS server on loopback:
//! python3's `ssl` module (OpenSSL) serving the contract's routes, with
//! certificates made in each test by the openssl CLI. A good chain
//! registers; a wrong CA, an expired certificate and a host-name mismatch
//! each fail with a message that says which, both for `vendetta agent
//! connect` and for a running agent's /health; mutual TLS with and without
//! a client certificate; `tls.insecure_skip_verify`; unusable TLS files.

use crate::util::coord::link_config;
use crate::util::{agent_connect, connect_refused, ok, run_ok, wait_until, Agent, TempDir};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const TOKEN: &str = "tls-test-token";

/// `openssl ca` settings: one database for the three CAs of a test, and an
/// extension section per kind of certificate. Nothing comes from the
/// system's openssl.cnf.
const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
[dn]
[ca]
default_ca = ca_default
[ca_default]
database = index.txt
new_certs_dir = issued
serial = serial
default_md = sha256
policy = policy_any
copy_extensions = none
unique_subject = no
[policy_any]
commonName = supplied
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
[wrong_name]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:coord.example.net,IP:10.9.8.7
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
";

/// The test server: HTTPS on an ephemeral loopback port (printed on the
/// first line of stdout), one JSON line per request or failed handshake in
/// the log file, the handshake in the connection's own thread.
const SERVER_PY: &str = r#"
import json, socket, ssl, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

cert, key, client_ca, log_path = sys.argv[1:5]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
if client_ca != "-":
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(client_ca)
lock = threading.Lock()

def record(entry):
    with lock, open(log_path, "a") as f:
        f.write(json.dumps(entry) + "\n")

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, code, body=None):
        self.send_response(code)
        if code == 204:
            self.end_headers()
            return
        data = json.dumps(body).encode()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def route(self, method):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        path, _, query = self.path.partition("?")
        peer = self.connection.getpeercert() or {}
        cn = [v for rdn in peer.get("subject", ()) for (k, v) in rdn if k == "commonName"]
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        record({"method": method, "path": path, "auth": self.headers.get("Authorization"),
                "client_cn": cn[0] if cn else None, "body": body})
        p = path.strip("/").split("/")
        if method == "POST" and p == ["api", "v1", "nodes"]:
            self.answer(201, {"id": (body or {}).get("id"), "status": "registered"})
        elif method == "POST" and len(p) == 5 and p[4] == "heartbeat":
            self.answer(200, {"ok": True})
        elif method == "PUT" and len(p) == 4:
            self.answer(200, {"ok": True})
        elif method == "GET" and len(p) == 5 and p[4] == "commands":
            wait = 0
            for kv in query.split("&"):
                if kv.startswith("wait="):
                    wait = int(kv[5:] or 0)
            # A long poll held (for at most 1 s): what a server does.
            time.sleep(min(wait, 1))
            self.answer(204)
        elif method == "POST" and len(p) == 5 and p[2] == "commands" and p[4] == "result":
            self.answer(200, {"ok": True})
        elif method == "DELETE" and len(p) == 4:
            self.answer(204)
        else:
            self.answer(404, {"error": "no route"})

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def do_PUT(self):
        self.route("PUT")

    def do_DELETE(self):
        self.route("DELETE")

class Server(ThreadingHTTPServer):
    daemon_threads = True

    def finish_request(self, request, client_address):
        conn = ctx.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        try:
            conn.settimeout(10)
            try:
                conn.do_handshake()
            except (ssl.SSLError, OSError) as e:
                record({"handshake_error": str(e)})
                # Let the alert reach the client before the close: read
                # what it sent (its request) so that close() sends no RST.
                try:
                    conn.shutdown(socket.SHUT_WR)
                    conn.settimeout(2)
                    while conn.recv(4096):
                        pass
                except OSError:
                    pass
                return
            self.RequestHandlerClass(conn, client_address, self)
        finally:
            conn.close()

server = Server(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

/// Three CAs (ours, an unrelated one, one for client certificates) and the
/// certificates the cases need, made with the openssl CLI.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn new() -> Pki {
        let pki = Pki {
            dir: TempDir::new("tls"),
        };
        let d = pki.dir.path();
        std::fs::write(d.join("openssl.cnf"), OPENSSL_CNF).unwrap();
        std::fs::write(d.join("index.txt"), "").unwrap();
        std::fs::write(d.join("serial"), "1000\n").unwrap();
        std::fs::create_dir(d.join("issued")).unwrap();
        std::fs::write(d.join("server.py"), SERVER_PY).unwrap();
        for ca in ["ca", "other-ca", "client-ca"] {
            pki.key(ca);
            run_ok(&mut pki.openssl(&[
                "req",
                "-config",
                "openssl.cnf",
                "-x509",
                "-new",
                "-key",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
                "-days",
                "3650",
                "-subj",
                &format!("/CN=vendetta test {ca}"),
                "-extensions",
                "v3_ca",
            ]));
        }
        pki.issue("server", "ca", "server", None);
        pki.issue("wrong-ca", "other-ca", "server", None);
        pki.issue(
            "expired",
            "ca",
            "server",
            Some(("20200101000000Z", "20210101000000Z")),
        );
        pki.issue("wrong-name", "ca", "wrong_name", None);
        pki.issue("client", "client-ca", "client", None);
        pki.issue("stranger", "other-ca", "client", None);
        pki
    }

    fn openssl(&self, args: &[&str]) -> Command {
        let mut c = Command::new("openssl");
        c.args(args).current_dir(self.dir.path());
        c
    }

    fn key(&self, name: &str) {
        run_ok(&mut self.openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &format!("{name}.key"),
        ]));
    }

    /// `name.pem` and `name.key`, signed by `ca`, with the extension
    /// section `ext`; `dates` backdates it (which `openssl x509` cannot).
    fn issue(&self, name: &str, ca: &str, ext: &str, dates: Option<(&str, &str)>) {
        self.key(name);
        run_ok(&mut self.openssl(&[
            "req",
            "-config",
            "openssl.cnf",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-subj",
            &format!("/CN=vendetta test {name}"),
            "-out",
            &format!("{name}.csr"),
        ]));
        let (cert, key, csr, out) = (
            format!("{ca}.pem"),
            format!("{ca}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        let mut args = vec![
            "ca",
            "-batch",
            "-notext",
            "-config",
            "openssl.cnf",
            "-cert",
            &cert,
            "-keyfile",
            &key,
            "-in",
            &csr,
            "-out",
            &out,
            "-extensions",
            ext,
        ];
        match dates {
            Some((start, end)) => args.extend(["-startdate", start, "-enddate", end]),
            None => args.extend(["-days", "3650"]),
        }
        run_ok(&mut self.openssl(&args));
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Starts a TLS server presenting `name.pem`; with `client_ca`, it
    /// requires a client certificate signed by that CA.
    fn serve(&self, name: &str, client_ca: Option<&str>) -> TlsServer {
        let log = self
            .path(&format!("{name}-{}.log", crate::util::next_id()))
            .to_path_buf();
        let stderr = std::fs::File::create(log.with_extension("stderr")).unwrap();
        let mut child = Command::new("python3")
            .arg(self.path("server.py"))
            .arg(self.path(&format!("{name}.pem")))
            .arg(self.path(&format!("{name}.key")))
            .arg(client_ca.map_or("-".into(), |c| self.path(&format!("{c}.pem"))))
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start python3 (tests/setup/deps.sh installs it)");
        let mut line = String::new();
        let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
        let mut server = TlsServer {
            child,
            port: 0,
            log,
        };
        server.port = line.trim().parse().unwrap_or_else(|_| {
            panic!(
                "the TLS test server did not start: {}",
                server.stderr_text()
            )
        });
        server
    }
}

/// The python TLS server; killed on drop.
struct TlsServer {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl TlsServer {
    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn entries(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// HTTP requests that got through the handshake.
    fn requests(&self) -> Vec<Value> {
        self.entries()
            .into_iter()
            .filter(|e| e["method"].is_string())
            .collect()
    }

    fn registrations(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r["method"] == "POST" && r["path"] == "/api/v1/nodes")
            .collect()
    }

    /// Waits for the first registration that got through, and returns it.
    fn wait_registered(&self) -> Value {
        assert!(
            wait_until(Duration::from_secs(15), || !self.registrations().is_empty()),
            "no registration over TLS; failed handshakes: {:?}",
            self.handshake_errors()
        );
        self.registrations()[0].clone()
    }

    fn handshake_errors(&self) -> Vec<String> {
        self.entries()
            .into_iter()
            .filter_map(|e| e["handshake_error"].as_str().map(String::from))
            .collect()
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(self.log.with_extension("stderr")).unwrap_or_default()
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- TLS test server log ----\n{}\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default(),
                self.stderr_text()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `tls:` section holding `lines` (indented by two), if any.
fn tls_section(lines: &str) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!("tls:\n{lines}")
    }
}

/// Link settings with fast timings, plus `tls` lines (indented by two).
fn link_yaml(url: &str, tls: &str) -> String {
    link_config(url, TOKEN, &tls_section(tls))
}

fn ca_line(pki: &Pki, ca: &str) -> String {
    format!("  ca_file: {}\n", pki.path(&format!("{ca}.pem")).display())
}

/// Waits until the running agent's link reports an error containing `want`.
fn wait_link_error(a: &Agent, want: &str) -> Value {
    let ok = wait_until(Duration::from_secs(15), || {
        a.health()["link"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains(want))
    });
    let h = a.health();
    assert!(ok, "link.last_error never said {want:?}: {h}");
    h
}

/// `tls` lines with our CA and the client certificate `cert` with `key`.
fn client_lines(pki: &Pki, cert: &str, key: &str) -> String {
    format!(
        "{}  cert_file: {}\n  key_file: {}\n",
        ca_line(pki, "ca"),
        pki.path(cert).display(),
        pki.path(key).display()
    )
}

/// How both sides failed to set up the link with the same `tls` lines.
struct Refusal {
    /// What `vendetta agent connect` said on stderr.
    connect: String,
    /// A running agent, which keeps serving.
    agent: Agent,
    /// Its /health once the link reported the reason.
    health: Value,
}

/// `vendetta agent connect` to `server` with `tls` lines fails saying
/// `want` and leaves its config file alone, and a running agent with the
/// same lines reports `want` on /health.
fn refused_by_both(server: &TlsServer, tls: &str, want: &str) -> Refusal {
    let tmp = TempDir::new("tlsc");
    let connect = ConnectFile::new(tmp.path(), tls).refused(&server.url(), want);
    let agent = Agent::start(&link_yaml(&server.url(), tls));
    let health = wait_link_error(&agent, want);
    Refusal {
        connect,
        agent,
        health,
    }
}

/// A config file for `vendetta agent connect`, with comments (mode 0640).
struct ConnectFile {
    path: PathBuf,
}

impl ConnectFile {
    fn new(dir: &Path, tls: &str) -> ConnectFile {
        let path = dir.join("connect.yaml");
        let text = format!(
            "# my agent\nlisten: 127.0.0.1:{} # local API\ncache_dir: {}\n\n# coordination\ncoordination_url: \"\"\n{}",
            crate::util::free_port(),
            dir.join("cache").display(),
            tls_section(tls)
        );
        std::fs::write(&path, &text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        ConnectFile { path }
    }

    fn connect(&self, url: &str) -> Output {
        agent_connect(&self.path, &[url, "--token", TOKEN])
    }

    /// Runs connect, expects exit 1 with `want` on stderr and the file as
    /// it was (bytes and mode).
    fn refused(&self, url: &str, want: &str) -> String {
        connect_refused(&self.path, &[url, "--token", TOKEN], 1, want)
    }
}

#[test]
fn a_good_chain_registers_and_connects() {
    let pki = Pki::new();
    let server = pki.serve("server", None);
    let a = Agent::start(&link_yaml(&server.url(), &ca_line(&pki, "ca")));
    let reg = server.wait_registered();
    assert_eq!(reg["auth"], format!("Bearer {TOKEN}"));
    assert!(reg["body"]["id"].as_str().unwrap().starts_with("node-"));
    a.wait_link("connected", Duration::from_secs(10));
    // The link keeps working: heartbeats and long polls over TLS.
    assert!(
        wait_until(Duration::from_secs(10), || {
            let r = server.requests();
            r.iter()
                .any(|r| r["path"].as_str().unwrap().ends_with("/heartbeat"))
                && r.iter().any(|r| r["method"] == "GET")
        }),
        "{:?}",
        server.requests()
    );
    assert!(server.handshake_errors().is_empty());

    // connect by host name: the certificate lists DNS:localhost.
    let file = ConnectFile::new(a.dir.path(), &ca_line(&pki, "ca"));
    let url = format!("https://localhost:{}", server.port);
    let out = file.connect(&url);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&file.path).unwrap();
    assert!(
        text.contains(&format!("coordination_url: \"{url}\"")),
        "{text}"
    );
}

#[test]
fn a_wrong_ca_fails_and_says_so() {
    let pki = Pki::new();
    let server = pki.serve("wrong-ca", None);
    let r = refused_by_both(&server, &ca_line(&pki, "ca"), "not signed by a trusted CA");
    let err = &r.connect;
    assert!(err.contains("tls.ca_file"), "says what to do: {err}");
    assert!(server.requests().is_empty(), "no request got through");
    assert!(r.agent.is_alive());
}

#[test]
fn an_expired_certificate_fails_and_says_so() {
    let pki = Pki::new();
    let server = pki.serve("expired", None);
    let h = refused_by_both(&server, &ca_line(&pki, "ca"), "has expired").health;
    assert_eq!(h["link"]["state"], "disconnected", "{h}");
    assert!(server.requests().is_empty(), "no request got through");
}

#[test]
fn a_host_name_mismatch_fails_and_says_so() {
    let pki = Pki::new();
    let server = pki.serve("wrong-name", None);
    let r = refused_by_both(
        &server,
        &ca_line(&pki, "ca"),
        "not valid for that host name",
    );
    // It names what the certificate is valid for.
    assert!(r.connect.contains("coord.example.net"), "{}", r.connect);
    assert!(server.requests().is_empty(), "no request got through");
}

#[test]
fn mutual_tls_works_with_a_client_certificate_and_says_when_one_is_missing() {
    let pki = Pki::new();
    let server = pki.serve("server", Some("client-ca"));
    let client = client_lines(&pki, "client.pem", "client.key");
    let a = Agent::start(&link_yaml(&server.url(), &client));
    assert_eq!(
        server.wait_registered()["client_cn"],
        "vendetta test client"
    );
    a.wait_link("connected", Duration::from_secs(10));
    drop(a);

    // Without a client certificate the server refuses the handshake.
    let seen = server.requests().len();
    let r = refused_by_both(
        &server,
        &ca_line(&pki, "ca"),
        "requires a client certificate",
    );
    let err = &r.connect;
    assert!(err.contains("tls.cert_file"), "says what to do: {err}");
    drop(r);

    // A client certificate from a CA the server does not trust.
    let stranger = client_lines(&pki, "stranger.pem", "stranger.key");
    let tmp = TempDir::new("tlsc");
    let file = ConnectFile::new(tmp.path(), &stranger);
    file.refused(&server.url(), "did not accept the client certificate");
    assert_eq!(server.requests().len(), seen, "no request got through");
    assert!(server.handshake_errors().len() >= 3);
}

#[test]
fn a_key_that_does_not_match_the_client_certificate_is_named() {
    let pki = Pki::new();
    let server = pki.serve("server", Some("client-ca"));
    let tls = client_lines(&pki, "client.pem", "server.key");
    let r = refused_by_both(&server, &tls, "does not match tls.cert_file");
    assert!(r.connect.contains("tls.key_file"), "{}", r.connect);
    assert_eq!(r.health["link"]["state"], "offline", "{}", r.health);
    assert!(r.agent.is_alive());
    assert!(server.requests().is_empty());
}

#[test]
fn insecure_skip_verify_connects_to_an_unknown_ca_with_a_loud_warning_at_every_start() {
    let pki = Pki::new();
    let server = pki.serve("wrong-ca", None);
    let mut a = Agent::start(&link_yaml(&server.url(), "  insecure_skip_verify: true\n"));
    server.wait_registered();
    a.wait_link("connected", Duration::from_secs(10));
    let warning = "tls.insecure_skip_verify is true";
    assert!(wait_until(Duration::from_secs(5), || a
        .log()
        .contains(warning)));
    a.stop();
    a.restart();
    let second = a.log_path();
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(&second)
            .unwrap_or_default()
            .contains(warning)),
        "no warning at the second start: {}",
        a.log()
    );
    let line = std::fs::read_to_string(&second)
        .unwrap()
        .lines()
        .find(|l| l.contains(warning))
        .unwrap()
        .to_string();
    assert!(
        line.contains("\"level\":\"warn\""),
        "logged as a warning: {line}"
    );
}

#[test]
fn a_missing_or_garbage_ca_file_is_named() {
    let pki = Pki::new();
    let server = pki.serve("server", None);
    let missing = pki.path("no-such-ca.pem");
    let garbage = pki.path("garbage.pem");
    std::fs::write(&garbage, "this is not a certificate\n").unwrap();
    let bad_der = pki.path("bad-der.pem");
    std::fs::write(
        &bad_der,
        "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    for (file, want) in [
        (&missing, "cannot read tls.ca_file"),
        (&garbage, "tls.ca_file"),
        (&bad_der, "tls.ca_file"),
    ] {
        let tls = format!("  ca_file: {}\n", file.display());
        let Refusal {
            connect: err,
            agent: a,
            health: h,
        } = refused_by_both(&server, &tls, want);
        assert!(err.contains(&file.display().to_string()), "{err}");
        assert_eq!(h["link"]["state"], "offline", "{h}");
        assert_eq!(h["status"], "degraded", "{h}");
        assert!(h["problems"].to_string().contains("tls.ca_file"), "{h}");
        assert!(
            h["link"]["last_error"]
                .as_str()
                .unwrap()
                .contains(&file.display().to_string()),
            "{h}"
        );
        // The agent keeps serving its local API.
        ok(&a.cmd("system", "status", serde_json::json!({})));
    }
    assert!(server.requests().is_empty());
}
