//! Routes of the local API; what each answers is decided in `reply`.
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

use super::auth::{self, Caller, Denied};
use super::refusals::{Refusals, Refused};
use super::reply::{ApiError, Reply};
use crate::protocol::command as wire;
use crate::protocol::scope::Scope;
use crate::protocol::tenant::Tenancy;
use crate::protocol::{Code, CommandId, CommandResult};
use crate::runtime::dispatch::Failure;
use crate::runtime::intake::{Refusal, Requester, Submitted};
use crate::runtime::{status, Runtime};
use crate::store::ledger::{Found, State};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;
use tiny_http::{Method, Request};

/// Extra time a request waits beyond the command's own timeout before it
/// answers 202 (or, streaming, a `running` line) and leaves the client to
/// poll.
pub(super) const WAIT_SLACK: Duration = Duration::from_secs(10);
/// The longest a sync request is held, whatever the command's timeout:
/// clients and proxies commonly give up on a silent answer after 1-2
/// minutes. Longer commands answer 202 and the client polls (the CLI
/// does).
const MAX_SYNC_WAIT: Duration = Duration::from_secs(90);

/// Sends a reply and counts it.
pub(super) fn send(rt: &Runtime, request: Request, route: &str, reply: Reply) {
    rt.metrics
        .api_requests
        .inc(&[route, &reply.status.to_string()]);
    if let Err(e) = request.respond(reply.into_response()) {
        log::debug!("could not send a response: {e}");
    }
}

/// Starts a streamed 200 answer of `content_type` (more header lines may
/// follow it, joined by CRLF) that ends when the connection closes: counts
/// it, writes the head and `preamble`. The flag is false once the client
/// is gone.
pub(super) fn open_stream(
    rt: &Runtime,
    request: Request,
    route: &str,
    content_type: &str,
    preamble: &str,
) -> (Box<dyn std::io::Write + Send>, bool) {
    rt.metrics.api_requests.inc(&[route, "200"]);
    let mut w = request.into_writer();
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nConnection: close\r\n\r\n{preamble}"
    );
    let alive = w.write_all(head.as_bytes()).and_then(|_| w.flush()).is_ok();
    (w, alive)
}

pub(super) fn header<'a>(request: &'a Request, name: &'static str) -> Option<&'a str> {
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str())
}

/// Answers one request, on the caller's thread, start to end.
pub(super) fn handle(
    rt: &Arc<Runtime>,
    mut request: Request,
    shutdown: &Receiver<()>,
    via: super::Via,
) {
    let url = request.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((url.as_str(), ""));
    let route = route_of(path);
    let reply = match admit(rt, &request, route, path, via) {
        Err(e) => e.reply(),
        // Stopping: what would start work is refused; results, metrics
        // and health (which says "stopping") still answer.
        Ok(_) if !rt.accepting() && matches!(route, "/api/v1/sessions" | "/api/v1/events") => {
            ApiError::Refused {
                why: Refusal::ShuttingDown,
                queued: 0,
                busy: rt.busy_workers(),
            }
            .reply()
        }
        Ok(caller) => {
            // Every route that reaches sessions or commands needs a token.
            let reach = caller.as_ref().map(|c| c.tenancy(rt)).unwrap_or_default();
            match route {
                "/health" => {
                    let (ok, doc) = status::health(rt);
                    // Without a valid token, only whether it is well: the
                    // detail (paths, versions, free memory) helps an attacker.
                    let known = auth::check_bearer(rt, header(&request, "Authorization")).is_ok();
                    let doc = if known {
                        doc
                    } else {
                        json!({"status": doc["status"]})
                    };
                    Reply::json(if ok { 200 } else { 503 }, &doc)
                }
                "/metrics" => Reply {
                    status: 200,
                    body: status::metrics_text(rt).into_bytes(),
                    content_type: "text/plain; version=0.0.4; charset=utf-8",
                    headers: Vec::new(),
                },
                "/api/v1/commands" => {
                    let mode = if query_flag(query, "async") {
                        Mode::Async
                    } else if query_flag(query, "stream") {
                        Mode::Stream
                    } else {
                        Mode::Sync
                    };
                    match post_command(rt, &mut request, mode, caller.as_ref(), &reach) {
                        Ok(Answer::Now(reply)) => reply,
                        Ok(Answer::Stream(job)) => return super::stream::serve(rt, request, job),
                        Err(e) => e.reply(),
                    }
                }
                "/api/v1/commands/{id}" => {
                    get_command(rt, path, &reach).unwrap_or_else(ApiError::reply)
                }
                "/api/v1/sessions" => sessions(rt, query, &reach).unwrap_or_else(ApiError::reply),
                "/api/v1/events" => {
                    let caller = caller
                        .as_ref()
                        .map_or_else(|| "anonymous".into(), Caller::name);
                    return super::sse::serve(rt, request, shutdown, &caller, &reach);
                }
                "/debug" => debug(rt, path).unwrap_or_else(ApiError::reply),
                _ => ApiError::NoRoute(wire::clip(path)).reply(),
            }
        }
    };
    send(rt, request, route, reply);
}

/// The checks before a route runs, in order: the route exists,
/// `allowed_ips` (TCP only), the method, the token.
fn admit(
    rt: &Runtime,
    request: &Request,
    route: &'static str,
    path: &str,
    via: super::Via,
) -> Result<Option<Caller>, ApiError> {
    let from = request.remote_addr().map(|a| a.ip());
    if via == super::Via::Tcp && !auth::ip_allowed(rt, from) {
        refused(
            rt,
            from,
            Refused::Address,
            "its address is not in allowed_ips",
        );
        return Err(ApiError::Forbidden);
    }
    let allowed: &[Method] = match route {
        "/health"
        | "/metrics"
        | "/api/v1/commands/{id}"
        | "/api/v1/sessions"
        | "/api/v1/events"
        | "/debug" => &[Method::Get, Method::Head],
        "/api/v1/commands" => &[Method::Post],
        _ => return Err(ApiError::NoRoute(wire::clip(path))),
    };
    if !allowed.contains(request.method()) {
        return Err(ApiError::MethodNotAllowed {
            method: request.method().to_string(),
            route,
            allow: allowed
                .iter()
                .map(|m| m.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let needs_auth = match route {
        "/health" => false,
        "/metrics" => rt.config.metrics_auth,
        _ => true,
    };
    if !needs_auth {
        return Ok(None);
    }
    let caller = match auth::check_bearer(rt, header(request, "Authorization")) {
        Ok(c) => c,
        Err(Denied::Unauthenticated(why)) => {
            refused(rt, from, Refused::Token, why);
            return Err(ApiError::Unauthorized);
        }
    };
    // What a route needs beyond a valid token; commands are checked one
    // by one (`post_command`), a result by id needs only the token.
    let needed = match route {
        "/metrics" => Some(Scope::SystemRead),
        "/api/v1/sessions" | "/api/v1/events" => Some(Scope::SessionRead),
        "/debug" => Some(Scope::Admin),
        _ => None,
    };
    if let Some(needed) = needed {
        may(rt, &caller, from, needed, route)?;
    }
    Ok(Some(caller))
}

/// Refuses (403 `forbidden_scope`) a caller without `needed` for `what`.
fn may(
    rt: &Runtime,
    caller: &Caller,
    from: Option<std::net::IpAddr>,
    needed: Scope,
    what: &str,
) -> Result<(), ApiError> {
    if caller.may(rt, needed) {
        return Ok(());
    }
    let detail = format!(
        "{} lacks the scope {needed} that {what} needs",
        caller.name()
    );
    refused(rt, from, Refused::Scope, &detail);
    Err(ApiError::ForbiddenScope(detail))
}

/// Counts a refusal, and logs it at info (warn for an address) unless
/// this source was logged so in the last minute: a flood of bad requests
/// is a line a minute, not a line a request. The others go to debug.
fn refused(rt: &Runtime, from: Option<std::net::IpAddr>, why: Refused, detail: &str) {
    static REFUSALS: std::sync::LazyLock<Refusals> = std::sync::LazyLock::new(Refusals::default);
    rt.metrics.api_refusals.inc(&[why.label()]);
    match REFUSALS.note(from, why, detail, std::time::Instant::now()) {
        Some(line) if why == Refused::Address => log::warn!("{line}"),
        Some(line) => log::info!("{line}"),
        // Held back at the usual levels; there for whoever debugs.
        None => log::debug!(
            "API request from {} refused: {detail}",
            from.map_or_else(|| "?".to_string(), |ip| ip.to_string())
        ),
    }
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
fn read_body(request: &mut Request, max: u64) -> Result<Vec<u8>, ApiError> {
    if request.body_length().is_some_and(|n| n as u64 > max) {
        return Err(ApiError::BodyTooLarge(max));
    }
    let mut body = Vec::new();
    request
        .as_reader()
        .take(max + 1)
        .read_to_end(&mut body)
        .map_err(|e| ApiError::BodyUnreadable(e.to_string()))?;
    if body.len() as u64 > max {
        return Err(ApiError::BodyTooLarge(max));
    }
    Ok(body)
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

enum Answer {
    Now(Reply),
    Stream(super::stream::Job),
}

fn post_command(
    rt: &Runtime,
    request: &mut Request,
    mode: Mode,
    caller: Option<&Caller>,
    reach: &Tenancy,
) -> Result<Answer, ApiError> {
    let body = read_body(request, rt.config.limits.max_body)?;
    let command = wire::parse(&body).map_err(ApiError::BadCommand)?;
    let peer = request.remote_addr().map(|a| a.ip());
    if let (Some(caller), Some(needed)) =
        (caller, Scope::needed_for(&command.kind, &command.action))
    {
        may(rt, caller, peer, needed, &command.name())?;
    }
    let from = Requester::api(
        caller.map_or_else(|| "anonymous".into(), Caller::name),
        reach.clone(),
        peer,
    );
    let id = command.id.clone();
    let timeout = rt.config.timeout_for(command.timeout_asked());
    let (chunk_tx, chunk_rx) = crossbeam_channel::bounded(64);
    let submitted = match mode {
        Mode::Stream => rt.submit_streaming(command, from, chunk_tx),
        Mode::Sync => rt.submit(command, from, true),
        Mode::Async => rt.submit(command, from, false),
    };
    let rx = match submitted {
        Submitted::Done { result, replayed } => {
            let reply = Reply::outcome(&result);
            return Ok(Answer::Now(if replayed {
                reply.header("X-Vendetta-Replayed", "true")
            } else {
                reply
            }));
        }
        Submitted::Queued(Some(rx)) => rx,
        // A 202 promises the command: it is on disk first.
        Submitted::Queued(None) => {
            durable(rt, &id)?;
            return Ok(Answer::Now(Reply::accepted(&id, State::Queued)));
        }
        Submitted::InProgress(state) => {
            durable(rt, &id)?;
            return Ok(Answer::Now(Reply::accepted(&id, state)));
        }
        Submitted::Refused(why) => {
            return Err(ApiError::Refused {
                why,
                // For an exec refused by its limit: the limit.
                queued: match why {
                    Refusal::ExecLimit => rt.config.limits.max_concurrent_execs,
                    _ => rt.queue_capacity(),
                },
                busy: rt.busy_workers(),
            });
        }
    };
    if mode == Mode::Stream {
        return Ok(Answer::Stream(super::stream::Job {
            result: rx,
            chunks: chunk_rx,
            timeout,
            id,
        }));
    }
    wait_for(rt, &rx, timeout, &id, reach).map(Answer::Now)
}

/// Waits for a queued command's result; if the wait outlasts the
/// command's timeout (or [`MAX_SYNC_WAIT`]), 202 and the client polls.
fn wait_for(
    rt: &Runtime,
    rx: &Receiver<CommandResult>,
    timeout: Duration,
    id: &CommandId,
    reach: &Tenancy,
) -> Result<Reply, ApiError> {
    match rx.recv_timeout((timeout + WAIT_SLACK).min(MAX_SYNC_WAIT)) {
        Ok(result) => Ok(Reply::outcome(&result)),
        Err(RecvTimeoutError::Timeout) => Ok(Reply::accepted(id, State::Running)),
        // The job was dropped: the agent is shutting down.
        Err(RecvTimeoutError::Disconnected) => match rt.ledger.lookup(id, reach) {
            Some(Found::Done(result)) => Ok(Reply::outcome(&result)),
            Some(Found::InProgress(_)) if rt.ledger.journaled(id) => {
                Err(ApiError::Interrupted(format!(
                    "the agent is shutting down; command {id} is queued and will run after restart"
                )))
            }
            Some(Found::InProgress(_)) => Err(ApiError::Interrupted(format!(
                "the agent is shutting down; command {id} did not run; send it again"
            ))),
            None => Err(ApiError::Interrupted(format!(
                "the agent is shutting down; command {id} did not run"
            ))),
        },
    }
}

/// A stored result, if the caller reaches its sender: another tenant's
/// is as unknown as one never sent.
fn get_command(rt: &Runtime, path: &str, reach: &Tenancy) -> Result<Reply, ApiError> {
    let raw = path.trim_start_matches("/api/v1/commands/");
    let id = CommandId::parse(raw)
        .map_err(|e| ApiError::BadId(format!("command id {}: {e}", wire::clip(raw))))?;
    match rt.ledger.lookup(&id, reach) {
        Some(Found::Done(result)) => Ok(Reply::result(&result)),
        Some(Found::InProgress(state)) => Ok(Reply::accepted(&id, state)),
        None => Err(ApiError::UnknownCommand(id)),
    }
}

/// `GET /api/v1/sessions[?provider=]`: the live list, through the runtime.
fn sessions(rt: &Runtime, query: &str, reach: &Tenancy) -> Result<Reply, ApiError> {
    let params = wire::ListParams::from_query(query_value(query, "provider")).map_err(|e| {
        ApiError::Sessions(Failure {
            code: Code::Invalid,
            message: e.to_string(),
        })
    })?;
    let sessions = rt
        .list_sessions_for_api(params.provider, reach)
        .map_err(ApiError::Sessions)?;
    Ok(Reply::json(200, &json!({"sessions": sessions})))
}

fn debug(rt: &Runtime, path: &str) -> Result<Reply, ApiError> {
    if !rt.config.debug_pprof {
        return Err(ApiError::DebugOff);
    }
    Ok(match path {
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
    })
}

/// Flushes the journal before a 202 is sent for `id`.
fn durable(rt: &Runtime, id: &CommandId) -> Result<(), ApiError> {
    rt.ledger.sync().map_err(|e| {
        log::error!(command_id = id.as_str(); "cannot flush the journal before answering 202: {e}");
        ApiError::Refused {
            why: Refusal::StoreFailed,
            queued: rt.queue_capacity(),
            busy: rt.busy_workers(),
        }
    })
}
