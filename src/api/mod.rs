//! The local HTTP API (tiny_http): health, metrics, commands, sessions and
//! live events. See the route table in `routes`.
//!
//! A few `api-N` threads take requests off the server. A request never
//! calls a provider: commands go through `Shared::submit` like the
//! poller's, and a request that waits for its result hands the wait to a
//! short-lived thread so that `/health` stays quick while execs run. Each
//! event-stream client gets its own thread, bounded in number.
//!
//! Accepted sockets get 120 s read and write timeouts (in our tiny_http
//! patch, see vendor/README.md), so a client that stalls mid-request or
//! stops reading cannot hold a thread.

pub(crate) mod auth;
pub(crate) mod jwt;
pub(crate) mod routes;
pub(crate) mod sse;
pub(crate) mod stream;

use crate::agent::AgentError;
use crate::runtime::threads::{self, Control, Thread};
use crate::runtime::Runtime;
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use std::net::TcpListener;
use std::sync::Arc;

const API_THREADS: usize = 4;

/// Binds the listen address. Done before any thread starts so that a busy
/// port fails the start with a clear message.
pub(crate) fn bind(rt: &Runtime) -> Result<Arc<tiny_http::Server>, AgentError> {
    let addr = rt.config.listen;
    let listen_error = |source: String| AgentError::Listen { addr, source };
    let listener = TcpListener::bind(addr).map_err(|e| listen_error(e.to_string()))?;
    let server = tiny_http::Server::from_listener(listener, None)
        .map_err(|e| listen_error(e.to_string()))?;
    Ok(Arc::new(server))
}

pub(crate) fn spawn(
    rt: &Arc<Runtime>,
    server: Arc<tiny_http::Server>,
    shutdown: &Receiver<()>,
    control: &Sender<Control>,
) -> std::io::Result<Vec<Thread>> {
    (0..API_THREADS)
        .map(|i| {
            let (rt, server, shutdown) = (rt.clone(), server.clone(), shutdown.clone());
            threads::spawn(&format!("api-{i}"), Some(control.clone()), move || {
                serve(&rt, &server, &shutdown)
            })
        })
        .collect()
}

/// Wakes every API thread (each `unblock` releases one `recv`), so that
/// they see the shutdown. They block without polling until then.
pub(crate) fn unblock_all(server: &tiny_http::Server) {
    for _ in 0..API_THREADS {
        server.unblock();
    }
}

fn has_body(request: &tiny_http::Request) -> bool {
    request.body_length().is_some_and(|n| n > 0)
        || request
            .headers()
            .iter()
            .any(|h| h.field.equiv("Transfer-Encoding"))
}

/// Answers one request. A panic while answering must not take the thread
/// down (tiny_http itself can panic when a client vanishes mid-response).
fn answer(rt: &Arc<Runtime>, request: tiny_http::Request, shutdown: &Receiver<()>) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        routes::handle(rt, request, shutdown)
    }))
    .is_err()
    {
        log::error!("a request handler panicked; the request was dropped, the API keeps serving");
    }
}

fn serve(rt: &Arc<Runtime>, server: &tiny_http::Server, shutdown: &Receiver<()>) {
    loop {
        match server.recv() {
            // A request with a body is read (and, if refused, its unread
            // rest drained) on a thread of its own, so that a client
            // trickling a body holds up no one else. There are at most as
            // many as open connections (tiny_http patch: 256).
            Ok(request) if has_body(&request) => {
                let (rt, shutdown) = (rt.clone(), shutdown.clone());
                let spawned = std::thread::Builder::new()
                    .name("api-body".into())
                    .stack_size(256 * 1024)
                    .spawn(move || answer(&rt, request, &shutdown));
                if let Err(e) = spawned {
                    log::warn!("cannot start a thread for a request: {e}; it is dropped");
                }
            }
            Ok(request) => answer(rt, request, shutdown),
            // Unblocked: the only wake-up without a request is shutdown.
            Err(_) if matches!(shutdown.try_recv(), Err(TryRecvError::Disconnected)) => return,
            Err(e) => log::debug!("API server woke without a request: {e}"),
        }
    }
}
