//! A recording coordination server for the tests, with fault injection.
//!
//! It speaks the contract's section 2 (register, heartbeat, PUT fallback,
//! long-poll fetch, results, unregister), records every request, and can be
//! told to answer a route with an error status, a delay, a reset
//! connection, a hold, or a given body; it can be stopped (nothing
//! listens) and started again on the same port, with or without forgetting
//! its nodes (a server restart).

use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub(crate) struct Req {
    pub(crate) path: String,
    pub(crate) route: &'static str,
    pub(crate) at: Instant,
    pub(crate) body: Value,
    pub(crate) auth: Option<String>,
    pub(crate) user_agent: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) enum Fault {
    /// Answer with this status (and a short body).
    Status(u16),
    /// Wait, then answer normally.
    Delay(Duration),
    /// Close the connection without an answer.
    Reset,
    /// Answer 200 with these bytes.
    Body(Vec<u8>),
}

#[derive(Default)]
pub(crate) struct Inner {
    pub(crate) requests: Vec<Req>,
    pub(crate) nodes: BTreeMap<String, Value>,
    pub(crate) queued: BTreeMap<String, VecDeque<Value>>,
    pub(crate) results: Vec<Value>,
    pub(crate) heartbeats: Vec<Value>,
    /// route -> (fault, times left; u32::MAX = forever)
    pub(crate) faults: Vec<(&'static str, Fault, u32)>,
    /// Commands handed out per fetch.
    pub(crate) batch: usize,
    /// Longest a fetch is held when nothing is queued.
    pub(crate) max_hold: Option<Duration>,
    /// Extra fields merged into register/heartbeat answers (steering).
    pub(crate) answer_extra: Value,
    /// Commands handed out and not answered yet: (node, command, when).
    /// Like a real server, it sends them again after `redeliver_after`
    /// (delivery is at-least-once).
    pub(crate) inflight: Vec<(String, Value, Instant)>,
    pub(crate) redeliver_after: Option<Duration>,
    /// Result POSTs for these ids always get a 500.
    pub(crate) refuse_results_for: Vec<String>,
    generation: u64,
}

pub(crate) struct Shared {
    inner: Mutex<Inner>,
    cond: Condvar,
    /// Open connections, so that a stop can cut them like a dead server.
    conns: Mutex<Vec<TcpStream>>,
    pub(crate) accepted: AtomicUsize,
}

pub(crate) struct CoordServer {
    pub(crate) port: u16,
    pub(crate) url: String,
    shared: Arc<Shared>,
    listening: Option<Arc<AtomicBool>>,
    /// Holds the port while nothing listens, so that a "down" server's
    /// port cannot be taken by another test meanwhile.
    held: Option<crate::util::HeldPort>,
}

fn route_of(method: &str, path: &str) -> &'static str {
    let p: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, p.as_slice()) {
        ("POST", ["api", "v1", "nodes"]) => "register",
        ("POST", ["api", "v1", "nodes", _, "heartbeat"]) => "heartbeat",
        ("PUT", ["api", "v1", "nodes", _]) => "put",
        ("GET", ["api", "v1", "nodes", _, "commands"]) => "fetch",
        ("POST", ["api", "v1", "commands", _, "result"]) => "result",
        ("DELETE", ["api", "v1", "nodes", _]) => "unregister",
        _ => "other",
    }
}

impl CoordServer {
    /// A server that does not listen yet (the agent finds it down).
    pub(crate) fn reserved() -> CoordServer {
        let held = crate::util::HeldPort::new();
        let port = held.port;
        let inner = Inner {
            batch: 10,
            answer_extra: json!({}),
            redeliver_after: Some(Duration::from_secs(4)),
            ..Default::default()
        };
        let shared = Arc::new(Shared {
            inner: Mutex::new(inner),
            cond: Condvar::new(),
            conns: Mutex::new(Vec::new()),
            accepted: AtomicUsize::new(0),
        });
        CoordServer {
            port,
            url: format!("http://127.0.0.1:{port}"),
            shared,
            listening: None,
            held: Some(held),
        }
    }

    pub(crate) fn start() -> CoordServer {
        let mut s = CoordServer::reserved();
        s.listen();
        s
    }

    /// Starts listening (again) on the same port.
    pub(crate) fn listen(&mut self) {
        let listener = match self.held.take() {
            Some(held) => held.into_listener(),
            // Listening again: an outgoing connection may hold the port
            // as its source for a moment; it is ours again once it closes.
            None => {
                let mut bound = None;
                crate::util::wait_until(Duration::from_secs(10), || {
                    bound = TcpListener::bind(("127.0.0.1", self.port)).ok();
                    bound.is_some()
                });
                bound.expect("bind coordination test server (port taken for 10 s)")
            }
        };
        listener.set_nonblocking(true).unwrap();
        let on = Arc::new(AtomicBool::new(true));
        self.listening = Some(on.clone());
        let shared = self.shared.clone();
        std::thread::spawn(move || {
            while on.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        shared.accepted.fetch_add(1, Ordering::SeqCst);
                        if let Ok(c) = stream.try_clone() {
                            shared.conns.lock().unwrap().push(c);
                        }
                        let shared = shared.clone();
                        std::thread::spawn(move || serve_conn(&shared, stream));
                    }
                    // Nothing to accept: look at the stop flag again soon.
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
    }

    /// Stops listening and cuts every connection: the server is down.
    pub(crate) fn stop(&mut self) {
        if let Some(on) = self.listening.take() {
            on.store(false, Ordering::SeqCst);
        }
        for c in self.shared.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        self.lock().generation += 1;
        self.shared.cond.notify_all();
        // The accept loop notices within a few ms; wait until the port is free.
        crate::util::wait_until(Duration::from_secs(2), || {
            TcpStream::connect(("127.0.0.1", self.port)).is_err()
        });
    }

    /// A restart that loses the server's memory of nodes.
    pub(crate) fn restart_forgetting(&mut self) {
        self.stop();
        self.lock().nodes.clear();
        self.listen();
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.shared.inner.lock().unwrap()
    }

    pub(crate) fn connections(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    pub(crate) fn fault(&self, route: &'static str, fault: Fault, times: u32) {
        self.lock().faults.push((route, fault, times));
    }

    pub(crate) fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    pub(crate) fn queue(&self, node: &str, command: Value) {
        self.lock()
            .queued
            .entry(node.to_string())
            .or_default()
            .push_back(command);
        self.shared.cond.notify_all();
    }

    pub(crate) fn requests(&self, route: &str) -> Vec<Req> {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.route == route)
            .cloned()
            .collect()
    }

    pub(crate) fn count(&self, route: &str) -> usize {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.route == route)
            .count()
    }

    pub(crate) fn results_for(&self, id: &str) -> Vec<Value> {
        self.lock()
            .results
            .iter()
            .filter(|r| r["id"] == id)
            .cloned()
            .collect()
    }

    /// Waits until `n` results for command `id` have come, and returns
    /// them; fails after `timeout`.
    pub(crate) fn wait_results(&self, id: &str, n: usize, timeout: Duration) -> Vec<Value> {
        let came = crate::util::wait_until(timeout, || self.results_for(id).len() >= n);
        let results = self.results_for(id);
        assert!(
            came,
            "{} of {n} results for {id} within {timeout:?}: {results:?}",
            results.len()
        );
        results
    }

    /// The first registered node.
    pub(crate) fn node_id(&self) -> Option<String> {
        self.lock().nodes.keys().next().cloned()
    }
}

/// Link settings for an agent of `url` with `token`, with timings fast
/// enough that link tests take seconds, then `extra` (more config lines).
pub(crate) fn link_config(url: &str, token: &str, extra: &str) -> String {
    format!(
        "coordination_url: {url}\nauth_token: {token}\nheartbeat:\n  interval: 500ms\n  timeout: 2s\n  retries: 1\nretry_policy:\n  max_retries: 2\n  backoff: 100ms\n  max_backoff: 1s\ncoordination:\n  poll_wait: 2s\n  unregister_on_stop: true\n  min_heartbeat_interval: 100ms\n  max_heartbeat_interval: 10m\n{extra}"
    )
}

impl Drop for CoordServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a handler answers: a status and body, or a cut connection.
enum Answer {
    Send(u16, Vec<u8>),
    Cut,
}

fn json_answer(code: u16, v: &Value) -> Answer {
    Answer::Send(code, v.to_string().into_bytes())
}

/// One connection: requests in a keep-alive loop, like a real server.
fn serve_conn(shared: &Shared, stream: TcpStream) {
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, url) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end().to_string();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let get = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let len: usize = get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len.min(16 << 20)];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let close = get("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let answer = handle(
            shared,
            &method,
            &url,
            &body,
            get("authorization"),
            get("user-agent"),
        );
        match answer {
            Answer::Cut => {
                let _ = writer.shutdown(Shutdown::Both);
                return;
            }
            Answer::Send(code, bytes) => {
                let head = if code == 204 {
                    format!(
                        "HTTP/1.1 204 No Content\r\n{}\r\n",
                        if close { "Connection: close\r\n" } else { "" }
                    )
                } else {
                    format!(
                        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n",
                        bytes.len(),
                        if close { "Connection: close\r\n" } else { "" }
                    )
                };
                let sent = writer.write_all(head.as_bytes()).and_then(|_| {
                    if code == 204 {
                        Ok(())
                    } else {
                        writer.write_all(&bytes)
                    }
                });
                if sent.is_err() || close {
                    return;
                }
            }
        }
    }
}

fn handle(
    shared: &Shared,
    method: &str,
    url: &str,
    raw: &[u8],
    auth: Option<String>,
    user_agent: Option<String>,
) -> Answer {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let route = route_of(method, path);
    let body: Value = serde_json::from_slice(raw).unwrap_or(Value::Null);
    let generation;
    let fault = {
        let mut g = shared.inner.lock().unwrap();
        generation = g.generation;
        g.requests.push(Req {
            path: path.to_string(),
            route,
            at: Instant::now(),
            body: body.clone(),
            auth,
            user_agent,
        });
        let mut found = None;
        if let Some(i) = g.faults.iter().position(|(r, _, n)| *r == route && *n > 0) {
            let entry = &mut g.faults[i];
            if entry.2 != u32::MAX {
                entry.2 -= 1;
            }
            found = Some(entry.1.clone());
        }
        found
    };
    match fault {
        Some(Fault::Status(code)) => {
            return json_answer(code, &json!({"error": format!("injected {code}")}))
        }
        Some(Fault::Reset) => return Answer::Cut,
        Some(Fault::Body(bytes)) => return Answer::Send(200, bytes),
        // A slow server is the fault under test.
        Some(Fault::Delay(d)) => std::thread::sleep(d),
        None => {}
    }
    let node = path.split('/').nth(4).unwrap_or("").to_string();
    let mut g = shared.inner.lock().unwrap();
    let extra = g.answer_extra.clone();
    match route {
        "register" => {
            let id = body["id"].as_str().unwrap_or("").to_string();
            g.nodes.insert(id.clone(), body);
            let mut answer = json!({"id": id, "status": "registered"});
            merge(&mut answer, &extra);
            json_answer(201, &answer)
        }
        "heartbeat" | "put" => {
            if !g.nodes.contains_key(&node) {
                return json_answer(404, &json!({"error": "unknown node"}));
            }
            g.heartbeats.push(body);
            let mut answer = json!({"ok": true});
            merge(&mut answer, &extra);
            json_answer(200, &answer)
        }
        "fetch" => {
            if !g.nodes.contains_key(&node) {
                return json_answer(404, &json!({"error": "unknown node"}));
            }
            let wait: u64 = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("wait="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut hold = Duration::from_secs(wait);
            if let Some(m) = g.max_hold {
                hold = hold.min(m);
            }
            let deadline = Instant::now() + hold;
            loop {
                if g.generation != generation {
                    return Answer::Cut;
                }
                let batch = g.batch;
                let mut cmds: Vec<Value> = Vec::new();
                if let Some(after) = g.redeliver_after {
                    for (n, cmd, at) in g.inflight.iter_mut() {
                        if *n == node && at.elapsed() >= after && cmds.len() < batch {
                            *at = Instant::now();
                            cmds.push(cmd.clone());
                        }
                    }
                }
                if let Some(q) = g.queued.get_mut(&node) {
                    let n = q.len().min(batch - cmds.len());
                    cmds.extend(q.drain(..n));
                }
                if !cmds.is_empty() {
                    for c in &cmds {
                        if !g.inflight.iter().any(|(_, x, _)| x["id"] == c["id"]) {
                            g.inflight.push((node.clone(), c.clone(), Instant::now()));
                        }
                    }
                    return json_answer(200, &json!({"commands": cmds}));
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Answer::Send(204, Vec::new());
                }
                // Wake at least every second to look for redeliveries.
                g = shared
                    .cond
                    .wait_timeout(g, left.min(Duration::from_secs(1)))
                    .unwrap()
                    .0;
            }
        }
        "result"
            if g.refuse_results_for
                .iter()
                .any(|id| body["id"] == id.as_str()) =>
        {
            json_answer(500, &json!({"error": "not this one"}))
        }
        "result" => {
            let id = body["id"].clone();
            g.inflight.retain(|(_, c, _)| c["id"] != id);
            g.results.push(body);
            json_answer(200, &json!({"ok": true}))
        }
        "unregister" => {
            g.nodes.remove(&node);
            Answer::Send(204, Vec::new())
        }
        _ => json_answer(404, &json!({"error": "no route"})),
    }
}

fn merge(a: &mut Value, b: &Value) {
    if let (Some(a), Some(b)) = (a.as_object_mut(), b.as_object()) {
        for (k, v) in b {
            a.insert(k.clone(), v.clone());
        }
    }
}
