//! The local API: routes, auth, status codes, and every kind of bad input.

use crate::util::{api_error, failed, next_id, ok, parse_raw, wait_until, Agent, Events, TOKEN};
use serde_json::json;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The error every request without the right token gets.
const UNAUTHORIZED: &str =
    "missing or invalid bearer token; pass Authorization: Bearer <api_token>";

#[test]
fn health_is_public_and_describes_providers_only_to_a_token() {
    let a = Agent::start("");
    // Every runtime the tests need is here (they fail when one is not):
    // the default provider, docker, is up.
    let (status, body) = a.get_as("/health", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"status": "ok"}), "no detail without a token");
    let (status, body) = a.get_as("/health", Some("a-wrong-token"));
    assert_eq!((status, body), (200, json!({"status": "ok"})));
    let (status, body) = a.get("/health");
    assert_eq!(status, 200, "{body}");
    assert_ne!(body["status"], "down", "{body}");
    for p in ["docker", "lxc", "qemu"] {
        assert!(body["providers"][p]["ok"].is_boolean(), "{body}");
    }
    assert_eq!(body["link"]["state"], "offline");
    assert!(body["node_id"].as_str().unwrap().starts_with("node-"));
}

#[test]
fn health_is_503_when_the_default_provider_is_down() {
    let a = Agent::start("docker:\n  socket: /nonexistent/docker.sock\n");
    assert_eq!(a.get_as("/health", None), (503, json!({"status": "down"})));
    let (status, body) = a.get("/health");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["providers"]["docker"]["ok"], false);
    assert!(
        body["providers"]["docker"]["message"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/docker.sock"),
        "{body}"
    );
    assert!(
        body["problems"][0]
            .as_str()
            .unwrap()
            .contains("default provider docker"),
        "{body}"
    );
}

#[test]
fn system_commands_report_real_values() {
    let a = Agent::start("");
    let r = a.cmd("system", "info", json!({}));
    assert_eq!(r["status"], "success");
    let d = &r["data"];
    assert_eq!(d["arch"], std::env::consts::ARCH);
    assert!(d["cpus"].as_u64().unwrap() >= 1);
    assert!(d["memory_total_bytes"].as_u64().unwrap() > 0);
    assert_eq!(
        d["kernel"].as_str().unwrap(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap()
            .trim()
    );
    assert!(d["disk"]["available_bytes"].as_u64().unwrap() > 0);
    let r = a.cmd("system", "status", json!({}));
    assert_eq!(r["data"]["pid"], a.pid());
    assert_eq!(r["data"]["queue"]["capacity"], 64);
    assert_eq!(r["data"]["workers"]["total"], 4);
    assert_eq!(r["data"]["link"]["state"], "offline");
    let r = a.cmd("system", "health", json!({}));
    assert!(r["data"]["providers"]["docker"].is_object());
    // The result echoes the command and carries Go-style and human durations.
    assert_eq!(r["command"]["action"], "health");
    assert!(r["duration"].as_u64().is_some() && r["duration_ms"].as_f64().is_some());
    assert_eq!(
        r["node_id"],
        a.cmd("system", "status", json!({}))["data"]["node_id"]
    );
}

#[test]
fn async_command_answers_202_then_the_result() {
    let a = Agent::start("");
    let id = format!("async-{}", next_id());
    let (status, body) = a.post_path(
        "/api/v1/commands?async=true",
        &json!({"id": id, "type": "system", "action": "status"}).to_string(),
        Some(TOKEN),
    );
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["id"], id.as_str(), "{body}");
    assert_eq!(body["location"], format!("/api/v1/commands/{id}"));
    let last = a.wait_result(&id, Duration::from_secs(5));
    ok(&last);
    assert_eq!(last["id"], id.as_str());
}

#[test]
fn repeated_id_is_answered_from_the_store_not_run_again() {
    let a = Agent::start("");
    let id = format!("dup-{}", next_id());
    let body = json!({"id": id, "type": "session", "action": "destroy", "params": {"session_id": "never-was"}}).to_string();
    let (s1, r1) = a.post(&body);
    let (s2, r2) = a.post(&body);
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(r1, r2, "same stored result");
    assert_eq!(r1["data"]["existed"], false);
    let text = a.metrics();
    assert!(text.contains("vendetta_commands_executed_total{type=\"session\",action=\"destroy\",status=\"success\"} 1\n"), "{text}");
    assert!(
        text.contains("vendetta_commands_refused_total{reason=\"duplicate\"} 1\n"),
        "{text}"
    );
}

#[test]
fn unknown_command_id_is_404_and_bad_one_400() {
    let a = Agent::start("");
    api_error(
        a.get("/api/v1/commands/nope-never"),
        404,
        "not_found",
        "no result stored for command nope-never (never seen, or pruned)",
    );
    api_error(
        a.get("/api/v1/commands/a%2F..%2Fb"),
        400,
        "invalid_id",
        "command id a%2F..%2Fb",
    );
}

#[test]
fn auth_is_required_and_checked() {
    let a = Agent::start("");
    let body = json!({"id": "auth-1", "type": "system", "action": "status"}).to_string();
    for token in [None, Some("wrong"), Some(""), Some(&"x".repeat(10_000)[..])] {
        let err = api_error(
            a.post_path("/api/v1/commands", &body, token),
            401,
            "unauthorized",
            UNAUTHORIZED,
        );
        assert!(!err.contains(TOKEN));
    }
    for (path, token) in [
        ("/api/v1/sessions", Some("wrong")),
        ("/api/v1/events", None),
    ] {
        api_error(a.get_as(path, token), 401, "unauthorized", UNAUTHORIZED);
    }
    // The refused command was never recorded: with the token it runs.
    let (s, b) = a.post(&body);
    assert_eq!(s, 200, "{b}");
    assert!(!a.log().contains(TOKEN), "the token must never be logged");
}

#[test]
fn metrics_can_require_auth() {
    let a = Agent::start("metrics_auth: true\n");
    api_error(
        a.get_as("/metrics", None),
        401,
        "unauthorized",
        UNAUTHORIZED,
    );
    assert_eq!(a.get("/metrics").0, 200);
}

#[test]
fn allowed_ips_apply_before_auth() {
    let a = Agent::start("allowed_ips: [\"10.0.0.0/8\"]\n");
    for (path, token) in [("/api/v1/sessions", Some(TOKEN)), ("/health", None)] {
        api_error(a.get_as(path, token), 403, "forbidden", "allowed_ips");
    }
}

/// A GET by curl from source address `from` to `url`: (status, body).
fn curl_from(from: &str, url: &str) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-g",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            "--interface",
            from,
        ])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .arg(url)
        .output()
        .expect("curl");
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = s.rsplit_once('\n').unwrap_or(("", &s));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The allowlist is by the client's own address: 127.0.0.2 and ::1 are
/// other loopback addresses than the agent's 127.0.0.1.
#[test]
fn allowed_ips_tell_loopback_addresses_apart() {
    let a = Agent::start("allowed_ips: [127.0.0.2/32]\n");
    let url = format!("{}/api/v1/sessions?provider=lxc", a.url);
    let (status, body) = curl_from("127.0.0.2", &url);
    assert_eq!(status, 200, "from 127.0.0.2: {body}");
    let (status, body) = curl_from("127.0.0.1", &url);
    assert_eq!(status, 403, "from 127.0.0.1: {body}");
    assert!(body.contains("\"code\":\"forbidden\""), "{body}");
    // IPv6: an agent on [::1], allowing ::1 but not 127.0.0.0/8, and the
    // other way round.
    for (allowed, want) in [("\"::1/128\"", 200), ("127.0.0.0/8", 403)] {
        let mut v6 = Agent::configure("v6", &format!("allowed_ips: [{allowed}]\n"));
        let yaml = std::fs::read_to_string(&v6.config).unwrap();
        std::fs::write(
            &v6.config,
            yaml.replace(
                &format!("listen: 127.0.0.1:{}", v6.port),
                &format!("listen: \"[::1]:{}\"", v6.port),
            ),
        )
        .unwrap();
        v6.spawn();
        let up = crate::util::wait_until(Duration::from_secs(20), || {
            std::net::TcpStream::connect(("::1", v6.port)).is_ok()
        });
        assert!(up, "{}", v6.log());
        let (status, body) = curl_from(
            "::1",
            &format!("http://[::1]:{}/api/v1/sessions?provider=lxc", v6.port),
        );
        assert_eq!(status, want, "allowed_ips [{allowed}], from ::1: {body}");
    }
}

#[test]
fn wrong_method_and_unknown_route() {
    let a = Agent::start("");
    api_error(
        a.get("/api/v1/commands"),
        405,
        "method_not_allowed",
        "GET is not allowed on /api/v1/commands; use POST",
    );
    let raw = a.raw(b"DELETE /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(
        raw.to_ascii_lowercase()
            .contains("\r\nallow: get, head\r\n"),
        "{raw}"
    );
    api_error(
        parse_raw(&raw),
        405,
        "method_not_allowed",
        "DELETE is not allowed on /health; use GET, HEAD",
    );
    api_error(
        a.get("/api/v2/whatever"),
        404,
        "not_found",
        "no route /api/v2/whatever",
    );
}

/// Each bad body gets a JSON error naming what is wrong, with the right
/// status, and the agent keeps serving.
#[test]
fn bad_commands_get_clear_errors() {
    let a = Agent::start("");
    let cases: Vec<(String, u16, &str, &str)> = vec![
        ("{not json".into(), 400, "malformed_json", "malformed JSON"),
        ("[1,2]".into(), 400, "malformed_command", "JSON object"),
        (json!({"type": "system", "action": "status"}).to_string(), 400, "invalid_id", "id: is required"),
        (json!({"id": "../x", "type": "system", "action": "status"}).to_string(), 400, "invalid_id", "command id"),
        (json!({"id": "a\u{1}b", "type": "system", "action": "status"}).to_string(), 400, "invalid_id", "command id"),
        (json!({"id": "x".repeat(10_240), "type": "system", "action": "status"}).to_string(), 400, "invalid_id", "at most 128"),
        (json!({"id": 42, "type": "system", "action": "status"}).to_string(), 400, "invalid_id", "id"),
        (json!({"id": format!("u1-{}", next_id()), "type": "nuke", "action": "all"}).to_string(), 400, "invalid_command", "type: unknown type"),
        (json!({"id": format!("u2-{}", next_id()), "type": "system", "action": "reboot"}).to_string(), 400, "invalid_command", "action: unknown action"),
        (json!({"id": format!("u3-{}", next_id()), "type": "session", "action": "start"}).to_string(), 400, "invalid_command", "params.session_id: is required"),
        (json!({"id": format!("u4-{}", next_id()), "type": "session", "action": "start", "params": {"session_id": "../etc"}}).to_string(), 400, "invalid_command", "params.session_id"),
        (json!({"id": format!("u5-{}", next_id()), "type": "session", "action": "start", "params": {"session_id": "a".repeat(10_240)}}).to_string(), 400, "invalid_command", "params.session_id"),
        (json!({"id": format!("u6-{}", next_id()), "type": "session", "action": "start", "params": {"session_id": "ab\u{7}c"}}).to_string(), 400, "invalid_command", "params.session_id"),
        (json!({"id": format!("u7-{}", next_id()), "type": "session", "action": "exec", "params": {"session_id": "s", "command": 7}}).to_string(), 400, "invalid_command", "params.command"),
        (json!({"id": format!("u8-{}", next_id()), "type": "session", "action": "create", "params": {"session_id": "s", "resources": {"cpus": "many"}}}).to_string(), 400, "invalid_command", "params.resources.cpus"),
        (json!({"id": format!("u9-{}", next_id()), "type": "system", "action": "status", "params": "x"}).to_string(), 400, "invalid_command", "params: must be a JSON object"),
    ];
    for (body, status, code, needle) in cases {
        let err = api_error(a.post(&body), status, code, needle);
        assert!(
            err.len() < 600,
            "errors never echo huge input: {} bytes",
            err.len()
        );
    }
    // A failed command is stored like any other result.
    let id = format!("stored-{}", next_id());
    let refused = a.run(json!({"id": id, "type": "system", "action": "reboot"}));
    let why =
        "action: unknown action \"reboot\" for type system; expected one of status, info, health";
    failed(&refused, "invalid_command", why);
    let (s, b) = a.command(&id);
    assert_eq!(s, 200, "{b}");
    assert_eq!(b, refused, "the stored result is the one answered");
    ok(&a.cmd("system", "status", json!({})));
}

#[test]
fn policy_rejects_with_403() {
    let a = Agent::start("allowed_commands: [\"system.*\"]\n");
    let r = a.run(json!({"id": "p1", "type": "session", "action": "list"}));
    failed(&r, "rejected", "allowed_commands");
    ok(&a.cmd("system", "info", json!({})));
    // The sessions route lists as session.list does: the same policy.
    api_error(
        a.get("/api/v1/sessions"),
        403,
        "rejected",
        "session.list is not in allowed_commands on this node",
    );
}

#[test]
fn huge_bodies_are_refused_and_the_agent_keeps_running() {
    let a = Agent::start("");
    // 10 MB of real body.
    let big = format!(
        "{{\"id\":\"big\",\"type\":\"system\",\"action\":\"status\",\"pad\":\"{}\"}}",
        "x".repeat(10 << 20)
    );
    let too_large = "request body is larger than limits.max_body (1m)";
    api_error(a.post(&big), 413, "body_too_large", too_large);
    // A declared length far beyond memory, with almost no body, must not
    // make the agent allocate it.
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let huge = format!("POST /api/v1/commands HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 4611686018427387904\r\nConnection: close\r\n\r\n{{}}");
    let raw = a.raw(huge.as_bytes());
    api_error(parse_raw(&raw), 413, "body_too_large", too_large);
    // Without a token it is refused before the body matters.
    let raw = a.raw(b"POST /api/v1/commands HTTP/1.1\r\nHost: x\r\nContent-Length: 4611686018427387904\r\nConnection: close\r\n\r\n{}");
    api_error(parse_raw(&raw), 401, "unauthorized", UNAUTHORIZED);
    // Chunked bodies are capped too.
    let mut chunked = format!("POST /api/v1/commands HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").into_bytes();
    for _ in 0..(2 << 10) {
        chunked.extend_from_slice(b"400\r\n");
        chunked.extend_from_slice(&[b'x'; 1024]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let raw = a.raw(&chunked);
    api_error(parse_raw(&raw), 413, "body_too_large", too_large);
    assert!(a.is_alive());
    ok(&a.cmd("system", "status", json!({})));
}

#[test]
fn garbage_on_the_socket_does_not_hurt() {
    let a = Agent::start("");
    // The HTTP parser refuses both with a bare 400.
    for garbage in [
        &b"\x00\x01\x02 garbage\r\n\r\n"[..],
        b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header Without Colon\r\n\r\n",
    ] {
        let raw = a.raw(garbage);
        assert_eq!(parse_raw(&raw), (400, json!("")), "{raw}");
    }
    // A client that connects and says nothing.
    let idle = TcpStream::connect(("127.0.0.1", a.port)).unwrap();
    assert!(a.is_alive());
    drop(idle);
}

#[test]
fn sessions_route_lists_live_through_the_runtime() {
    let a = Agent::start("providers: [lxc]\nprovider: lxc\n");
    let (s, b) = a.get("/api/v1/sessions");
    assert_eq!(s, 200, "{b}");
    assert!(b["sessions"].is_array(), "{b}");
    // docker is not enabled here.
    api_error(
        a.get("/api/v1/sessions?provider=docker"),
        503,
        "provider_unavailable",
        "not enabled",
    );
    api_error(
        a.get("/api/v1/sessions?provider=vbox"),
        400,
        "invalid_command",
        "params.provider: unknown variant `vbox`, expected one of `docker`, `lxc`, `qemu`",
    );
}

#[test]
fn events_stream_live_command_changes() {
    let a = Agent::start("");
    let mut events = Events::open(&a);
    let id = format!("ev-{}", next_id());
    ok(&a.run(json!({"id": id, "type": "system", "action": "info"})));
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let Some(v) = events.next(Duration::from_secs(10)) else {
            break;
        };
        if v["id"] == id.as_str() {
            seen.push(v["state"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(seen, ["queued", "running", "finished"]);
}

#[test]
fn metrics_pass_promtool() {
    let a = Agent::start("");
    a.cmd("system", "status", json!({}));
    let text = a.metrics();
    for family in [
        "vendetta_commands_received_total",
        "vendetta_command_duration_seconds_bucket",
        "vendetta_queue_depth",
        "vendetta_provider_up",
        "process_resident_memory_bytes",
    ] {
        assert!(text.contains(family), "missing {family}");
    }
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed by tests/setup/deps.sh");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn debug_routes_only_when_enabled() {
    let a = Agent::start("");
    api_error(
        a.get("/debug/threads"),
        404,
        "not_found",
        "debug routes are off; start with VENDETTA_DEBUG_PPROF=true",
    );
    let a = Agent::start("debug_pprof: true\n");
    let (s, b) = a.get("/debug/threads");
    assert_eq!(s, 200, "{b}");
    let names: Vec<&str> = b["threads"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for t in ["worker-0", "api-accept", "api-conn", "monitor", "signals"] {
        assert!(names.contains(&t), "{t} missing from {names:?}");
    }
    let (s, b) = a.get("/debug/memory");
    assert_eq!(s, 200);
    assert!(b["VmRSS"].as_str().unwrap().ends_with("kB"), "{b}");
    // Debug routes need the token.
    api_error(
        a.get_as("/debug/threads", None),
        401,
        "unauthorized",
        UNAUTHORIZED,
    );
}

/// Unauthenticated abuse of the socket: an endless header line, requests
/// that declare bodies they never send, and a flood of idle connections.
/// The agent stays up, bounded in memory, and answers again afterwards.
#[test]
fn socket_abuse_is_bounded() {
    let a = Agent::start("");
    let rss = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", a.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .unwrap()
            .trim()
            .trim_end_matches(" kB")
            .parse::<u64>()
            .unwrap()
    };
    // 1. A header line that never ends.
    let mut s = TcpStream::connect(("127.0.0.1", a.port)).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"GET /health HTTP/1.1\r\nX-Long: ");
    let chunk = vec![b'a'; 64 * 1024];
    for _ in 0..(128 * 16) {
        if s.write_all(&chunk).is_err() {
            break; // the agent closed the connection
        }
    }
    drop(s);
    assert!(
        rss() < 64 * 1024,
        "RSS {} kB after a 128 MiB header line",
        rss()
    );
    // 2. Bodies declared and never sent do not hold up other requests.
    let holders: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", a.port)).unwrap();
            s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    let t = Instant::now();
    assert!(a.is_alive());
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "/health took {:?} behind stalled bodies",
        t.elapsed()
    );
    drop(holders);
    // 3. A flood of idle connections: beyond the cap they are closed, and
    //    once they go the API answers again.
    let flood: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", a.port)).ok())
        .collect();
    drop(flood);
    let answers = || -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", a.port)) else {
            return false;
        };
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut head = [0u8; 12];
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .is_ok()
            && std::io::Read::read_exact(&mut s, &mut head).is_ok()
            && head.starts_with(b"HTTP/1.1 ")
    };
    assert!(wait_until(Duration::from_secs(10), answers));
    ok(&a.cmd("system", "status", json!({})));
}
