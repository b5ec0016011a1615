//! Routes of the local API and the one mapping from outcomes to HTTP status.
//!
//! | route | auth | answer |
//! |---|---|---|
//! | `GET /health` | no | 200 healthy, 503 not (default provider down) |
//! | `GET /metrics` | if `metrics_auth` | Prometheus text 0.0.4 |
//! | `POST /api/v1/commands[?async=true]` | yes | the result (200/400/403), 202 queued, 429 full, 503 stopping |
//! | `GET /api/v1/commands/{id}` | yes | the stored result, 202 while running, 404 |
//! | `GET /api/v1/sessions[?provider=]` | yes | the session list |
//! | `GET /api/v1/events` | yes | Server-Sent Events |
//! | `GET /debug/threads`, `/debug/memory` | yes, and `debug_pprof` | process facts |
//!
//! Errors are `{"error": "...", "code": "..."}`.

use super::auth::{self, Denied};
use crate::protocol::command::{self as wire, CommandError};
use crate::protocol::{codes, CommandId, CommandResult};
use crate::runtime::intake::{Refusal, Submitted};
use crate::runtime::{status, Runtime};
use crate::store::ledger::{Found, Origin, State};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use serde_json::{json, Value};
use std::io::{Cursor, Read};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tiny_http::{Header, Method, Request, Response};

/// Extra time a sync request waits beyond the command's own timeout before
/// it answers 202 and leaves the client to poll.
const WAIT_SLACK: Duration = Duration::from_secs(10);
/// The longest a sync request is held, whatever the command's timeout:
/// below the 120 s socket timeout of our tiny_http patch, which would
/// otherwise end the keep-alive connection under a long answer. Longer
/// commands answer 202 and the client polls (the CLI does).
const MAX_SYNC_WAIT: Duration = Duration::from_secs(90);
/// Requests waiting for results at once; more are answered 202 at once.
static WAITERS: Slots = Slots::new(1024);

/// A bound on threads of one kind. A slot goes back when its guard drops,
/// so a thread that ends early or panics (tiny_http can, in `respond`)
/// does not keep it.
pub(super) struct Slots {
    used: AtomicUsize,
    pub(super) max: usize,
}

pub(super) struct Slot(&'static Slots);

impl Slots {
    pub(super) const fn new(max: usize) -> Slots {
        Slots {
            used: AtomicUsize::new(0),
            max,
        }
    }

    /// A slot, or None when all are taken.
    pub(super) fn try_enter(&'static self) -> Option<Slot> {
        if self.used.fetch_add(1, Ordering::SeqCst) >= self.max {
            self.used.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Slot(self))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs `work` on a thread of its own holding `slot`. If the thread cannot
/// start, the work (and the slot) is dropped: the command still runs, only
/// its requester is not answered here.
pub(super) fn spawn_holding(slot: Slot, name: &str, work: impl FnOnce() + Send + 'static) {
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .stack_size(128 * 1024)
        .spawn(move || {
            let _slot = slot;
            work()
        });
    if let Err(e) = spawned {
        log::error!("cannot start a thread ({name}): {e}");
    }
}

/// An HTTP answer before it is written.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
    pub(crate) content_type: &'static str,
    pub(crate) headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub(crate) fn json(status: u16, body: &Value) -> Reply {
        Reply {
            status,
            body: body.to_string().into_bytes(),
            content_type: "application/json",
            headers: Vec::new(),
        }
    }

    pub(crate) fn error(status: u16, code: &str, message: impl Into<String>) -> Reply {
        Reply::json(status, &json!({"error": message.into(), "code": code}))
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    fn into_response(self) -> Response<Cursor<Vec<u8>>> {
        let mut r = Response::from_data(self.body).with_status_code(self.status);
        let mut add = |name: &str, value: &str| {
            if let Ok(h) = Header::from_bytes(name.as_bytes(), value.as_bytes()) {
                r.add_header(h);
            }
        };
        add("Content-Type", self.content_type);
        add("Cache-Control", "no-store");
        for (name, value) in &self.headers {
            add(name, value);
        }
        r
    }
}

/// Sends a reply and counts it.
pub(super) fn send(rt: &Runtime, request: Request, route: &str, reply: Reply) {
    rt.metrics
        .api_requests
        .inc(&[route, &reply.status.to_string()]);
    if let Err(e) = request.respond(reply.into_response()) {
        log::debug!("could not send a response: {e}");
    }
}

fn header<'a>(request: &'a Request, name: &'static str) -> Option<&'a str> {
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str())
}

pub(crate) fn handle(rt: &Arc<Runtime>, mut request: Request, shutdown: &Receiver<()>) {
    let url = request.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((url.as_str(), ""));
    let path = path.to_string();
    let query = query.to_string();
    let method = request.method().clone();
    let route = route_of(&path);

    if !auth::ip_allowed(rt, request.remote_addr().map(|a| a.ip())) {
        log::warn!(remote = request.remote_addr().map(|a| a.ip().to_string()).unwrap_or_default().as_str(); "API request from an address outside allowed_ips");
        return send(
            rt,
            request,
            route,
            Reply::error(403, "forbidden", "your address is not in allowed_ips"),
        );
    }

    let allowed: &[Method] = match route {
        "/health"
        | "/metrics"
        | "/api/v1/commands/{id}"
        | "/api/v1/sessions"
        | "/api/v1/events"
        | "/debug" => &[Method::Get, Method::Head],
        "/api/v1/commands" => &[Method::Post],
        _ => {
            return send(
                rt,
                request,
                "other",
                Reply::error(404, "not_found", format!("no route {}", wire::clip(&path))),
            )
        }
    };
    if !allowed.contains(&method) {
        let allow = allowed
            .iter()
            .map(|m| m.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let reply = Reply::error(
            405,
            "method_not_allowed",
            format!("{method} is not allowed on {route}; use {allow}"),
        )
        .header("Allow", allow);
        return send(rt, request, route, reply);
    }

    let needs_auth = match route {
        "/health" => false,
        "/metrics" => rt.config.metrics_auth,
        _ => true,
    };
    if needs_auth {
        if let Err(denied) = auth::check_bearer(rt, header(&request, "Authorization")) {
            let reply = match denied {
                Denied::Unauthenticated(why) => {
                    log::info!(route = route; "API request refused: {why}");
                    Reply::error(
                        401,
                        "unauthorized",
                        "missing or invalid bearer token; pass Authorization: Bearer <api_token>",
                    )
                    .header("WWW-Authenticate", "Bearer")
                }
            };
            return send(rt, request, route, reply);
        }
    }

    let reply = match route {
        "/health" => {
            let (ok, doc) = status::health(rt);
            Reply::json(if ok { 200 } else { 503 }, &doc)
        }
        "/metrics" => Reply {
            status: 200,
            body: status::metrics_text(rt).into_bytes(),
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            headers: Vec::new(),
        },
        "/api/v1/commands" => {
            let body = match read_body(&mut request, rt.config.limits.max_body) {
                Ok(b) => b,
                Err(reply) => return send(rt, request, route, reply),
            };
            let mode = if query_flag(&query, "async") {
                Mode::Async
            } else if query_flag(&query, "stream") {
                Mode::Stream
            } else {
                Mode::Sync
            };
            match post_command(rt, &body, mode) {
                Outcome::Now(reply) => reply,
                Outcome::Stream(rx, chunks, timeout, id) => {
                    return super::stream::serve(rt.clone(), request, rx, chunks, timeout, id)
                }
                Outcome::Wait(rx, timeout, id) => {
                    return wait_then_send(
                        rt.clone(),
                        request,
                        route,
                        rx,
                        timeout,
                        id,
                        result_reply,
                    )
                }
            }
        }
        "/api/v1/commands/{id}" => get_command(rt, &path),
        "/api/v1/sessions" => return sessions(rt, &query, request),
        "/api/v1/events" => return super::sse::serve(rt, request, shutdown),
        "/debug" => debug(rt, &path),
        _ => Reply::error(404, "not_found", "no such route"),
    };
    send(rt, request, route, reply);
}

/// A route's label for metrics and logs; ids are folded into `{id}`.
fn route_of(path: &str) -> &'static str {
    match path {
        "/health" => "/health",
        "/metrics" => "/metrics",
        "/api/v1/commands" | "/api/v1/commands/" => "/api/v1/commands",
        "/api/v1/sessions" => "/api/v1/sessions",
        "/api/v1/events" => "/api/v1/events",
        "/debug/threads" | "/debug/memory" => "/debug",
        p if p.starts_with("/api/v1/commands/") => "/api/v1/commands/{id}",
        _ => "other",
    }
}

fn query_flag(query: &str, name: &str) -> bool {
    query.split('&').any(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, "true"));
        k == name && matches!(v, "true" | "1" | "yes" | "")
    })
}

fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        kv.split_once('=')
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v)
    })
}

/// Reads at most `max` bytes of body; more is 413 without reading it all.
fn read_body(request: &mut Request, max: u64) -> Result<Vec<u8>, Reply> {
    let too_large = || {
        Reply::error(
            413,
            "body_too_large",
            format!(
                "request body is larger than limits.max_body ({})",
                crate::protocol::size::format(max)
            ),
        )
    };
    if request.body_length().is_some_and(|n| n as u64 > max) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    request
        .as_reader()
        .take(max + 1)
        .read_to_end(&mut body)
        .map_err(|e| {
            Reply::error(
                400,
                "bad_body",
                format!("could not read the request body: {e}"),
            )
        })?;
    if body.len() as u64 > max {
        return Err(too_large());
    }
    Ok(body)
}

enum Outcome {
    Now(Reply),
    Stream(
        Receiver<CommandResult>,
        Receiver<crate::providers::output::Chunk>,
        Duration,
        CommandId,
    ),
    Wait(Receiver<CommandResult>, Duration, CommandId),
}

/// How a POST wants its answer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Wait and answer with the result.
    Sync,
    /// 202 at once; the client polls.
    Async,
    /// NDJSON: output lines as they arrive, then the result.
    Stream,
}

fn post_command(rt: &Runtime, body: &[u8], mode: Mode) -> Outcome {
    let command = match wire::parse(body) {
        Ok(c) => c,
        Err(e) => {
            let code = match e {
                CommandError::Malformed(_) => "malformed_json",
                CommandError::NotAnObject => "malformed_command",
                CommandError::MissingId | CommandError::InvalidId(_) => "invalid_id",
            };
            return Outcome::Now(Reply::error(400, code, e.to_string()));
        }
    };
    let id = command.id.clone();
    let timeout = rt.config.timeout_for(command.timeout_asked());
    let (chunk_tx, chunk_rx) = crossbeam_channel::bounded(64);
    let submitted = match mode {
        Mode::Stream => rt.submit_streaming(command, Origin::Api, chunk_tx),
        Mode::Sync => rt.submit(command, Origin::Api, true),
        Mode::Async => rt.submit(command, Origin::Api, false),
    };
    match submitted {
        Submitted::Done { result, replayed } => {
            let reply = result_reply(&result);
            Outcome::Now(if replayed {
                reply.header("X-Vendetta-Replayed", "true")
            } else {
                reply
            })
        }
        Submitted::Queued(Some(rx)) if mode == Mode::Stream => {
            Outcome::Stream(rx, chunk_rx, timeout, id)
        }
        Submitted::Queued(Some(rx)) => Outcome::Wait(rx, timeout, id),
        Submitted::Queued(None) => Outcome::Now(accepted(&id, State::Queued)),
        Submitted::InProgress(state) => Outcome::Now(accepted(&id, state)),
        Submitted::Refused(r) => Outcome::Now(refusal_reply(rt, r)),
    }
}

fn refusal_reply(rt: &Runtime, r: Refusal) -> Reply {
    match r {
        Refusal::QueueFull => Reply::error(
            429,
            "queue_full",
            format!(
                "the command queue is full ({} queued, {} workers busy); retry shortly",
                rt.queue_capacity(),
                rt.busy_workers()
            ),
        )
        .header("Retry-After", "1"),
        Refusal::ShuttingDown => Reply::error(503, "shutting_down", "the agent is shutting down; retry after it restarts"),
        Refusal::StoreFailed => Reply::error(
            503,
            "store_failed",
            "the agent could not record the command (is cache_dir full or read-only?); see the agent log",
        ),
    }
}

/// 202 with where to find the result.
pub(super) fn accepted(id: &CommandId, state: State) -> Reply {
    let location = format!("/api/v1/commands/{id}");
    Reply::json(
        202,
        &json!({"id": id, "status": state.as_str(), "location": location}),
    )
    .header("Location", location)
}

/// The one mapping from a result to an HTTP status.
pub(crate) fn status_for(result: &CommandResult) -> u16 {
    match result.code.as_deref() {
        Some(codes::INVALID) => 400,
        Some(codes::REJECTED) => 403,
        _ => 200,
    }
}

pub(super) fn result_reply(result: &CommandResult) -> Reply {
    let body = serde_json::to_vec(result).unwrap_or_else(|_| b"{}".to_vec());
    Reply {
        status: status_for(result),
        body,
        content_type: "application/json",
        headers: Vec::new(),
    }
}

/// A slot for a thread that waits for a result; None when there are too many.
pub(super) fn enter_waiter() -> Option<Slot> {
    WAITERS.try_enter()
}

/// At shutdown: gives requests waiting on results up to `limit` to answer.
pub(crate) fn wait_for_waiters(limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    while WAITERS.used.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for a queued command's result on its own thread, then answers
/// with `reply_for(result)`; if the wait outlasts the command's timeout, 202.
fn wait_then_send(
    rt: Arc<Runtime>,
    request: Request,
    route: &'static str,
    rx: Receiver<CommandResult>,
    timeout: Duration,
    id: CommandId,
    reply_for: fn(&CommandResult) -> Reply,
) {
    let Some(slot) = enter_waiter() else {
        // Still queued: the client can poll for it.
        return send(&rt, request, route, accepted(&id, State::Queued));
    };
    spawn_holding(slot, "api-wait", move || {
        let reply = match rx.recv_timeout((timeout + WAIT_SLACK).min(MAX_SYNC_WAIT)) {
            Ok(result) => reply_for(&result),
            Err(RecvTimeoutError::Timeout) => accepted(&id, State::Running),
            Err(RecvTimeoutError::Disconnected) => match rt.ledger.lookup(&id) {
                Some(Found::Done(result)) => reply_for(&result),
                Some(Found::InProgress(_)) if rt.ledger.journaled(&id) => Reply::error(
                    503,
                    "shutting_down",
                    format!("the agent is shutting down; command {id} is queued and will run after restart"),
                ),
                Some(Found::InProgress(_)) => Reply::error(
                    503,
                    "shutting_down",
                    format!("the agent is shutting down; command {id} did not run; send it again"),
                ),
                None => Reply::error(
                    503,
                    "shutting_down",
                    format!("the agent is shutting down; command {id} did not run"),
                ),
            },
        };
        send(&rt, request, route, reply);
    });
}

fn get_command(rt: &Runtime, path: &str) -> Reply {
    let raw = path.trim_start_matches("/api/v1/commands/");
    let id = match CommandId::parse(raw) {
        Ok(id) => id,
        Err(e) => {
            return Reply::error(
                400,
                "invalid_id",
                format!("command id {}: {e}", wire::clip(raw)),
            )
        }
    };
    match rt.ledger.lookup(&id) {
        // The stored result is the resource: 200 whatever its status.
        Some(Found::Done(result)) => Reply {
            status: 200,
            ..result_reply(&result)
        },
        Some(Found::InProgress(state)) => accepted(&id, state),
        None => Reply::error(
            404,
            "not_found",
            format!("no result stored for command {id} (never seen, or pruned)"),
        ),
    }
}

/// `GET /api/v1/sessions` runs a `session.list` command like any other.
fn sessions(rt: &Arc<Runtime>, query: &str, request: Request) {
    let route = "/api/v1/sessions";
    let mut params = serde_json::Map::new();
    if let Some(p) = query_value(query, "provider") {
        params.insert("provider".into(), Value::from(p));
    }
    let id = CommandId::generate("api-sessions");
    let cmd = match wire::from_value(
        json!({"id": id, "type": "session", "action": "list", "params": params}),
    ) {
        Ok(c) => c,
        Err(e) => {
            return send(
                rt,
                request,
                route,
                Reply::error(500, "internal_error", e.to_string()),
            )
        }
    };
    let list_reply = |r: &CommandResult| match (r.status, r.code.as_deref()) {
        (crate::protocol::Status::Success, _) => Reply::json(200, &json!({"sessions": r.data})),
        (_, Some(codes::UNAVAILABLE)) => Reply::error(503, codes::UNAVAILABLE, r.error.clone()),
        (_, Some(codes::INVALID)) => Reply::error(400, codes::INVALID, r.error.clone()),
        // Any other failure to list is a provider that cannot answer.
        _ => Reply::error(503, codes::UNAVAILABLE, r.error.clone()),
    };
    match rt.submit(cmd, Origin::Api, true) {
        Submitted::Queued(Some(rx)) => {
            let timeout = rt.config.command_timeout;
            wait_then_send(rt.clone(), request, route, rx, timeout, id, list_reply)
        }
        Submitted::Done { result, .. } => send(rt, request, route, list_reply(&result)),
        Submitted::Refused(r) => send(rt, request, route, refusal_reply(rt, r)),
        Submitted::Queued(None) | Submitted::InProgress(_) => send(
            rt,
            request,
            route,
            Reply::error(500, "internal_error", "session list in an unexpected state"),
        ),
    }
}

fn debug(rt: &Runtime, path: &str) -> Reply {
    if !rt.config.debug_pprof {
        return Reply::error(
            404,
            "not_found",
            "debug routes are off; start with VENDETTA_DEBUG_PPROF=true",
        );
    }
    match path {
        "/debug/threads" => Reply::json(200, &json!({"threads": crate::os::host::thread_names()})),
        _ => {
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            let mut doc = serde_json::Map::new();
            for line in status.lines() {
                if let Some((k, v)) = line.split_once(':') {
                    if k.starts_with("Vm") || k.starts_with("Rss") || k == "Threads" {
                        doc.insert(k.to_string(), Value::from(v.trim()));
                    }
                }
            }
            Reply::json(200, &Value::Object(doc))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_given_back_even_by_a_panicking_thread() {
        static S: Slots = Slots::new(2);
        let a = S.try_enter().unwrap();
        let b = S.try_enter().unwrap();
        assert!(S.try_enter().is_none(), "all taken");
        drop(a);
        let c = S.try_enter().expect("a dropped slot is free again");
        let panicked = std::thread::spawn(move || {
            let _held = b;
            panic!("a request thread dies");
        })
        .join();
        assert!(panicked.is_err());
        assert!(
            S.try_enter().is_some(),
            "the panicking thread gave its slot back"
        );
        drop(c);
    }
}
