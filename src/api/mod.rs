//! The local HTTP API (tiny_http): health, metrics, commands, sessions and
//! live events. The route table is in [`routes`].
//!
//! One thread per request, end to end: tiny_http gives each connection a
//! thread (`api-conn`, at most 256 at once, our patch) and we answer each
//! request on it: read the body, check the caller, submit the command,
//! wait for its result or stream it, write the answer. A request never
//! calls a provider: commands go through [`Runtime::submit`] like the
//! poller's, and sessions are listed through the runtime.
//!
//! Owns: the listening socket, authentication, the mapping of outcomes to
//! HTTP ([`reply`]). May not touch: providers, the store's files, the
//! coordination link.
//!
//! Accepted sockets get 120 s read and write timeouts (our tiny_http
//! patch, see vendor/README.md), so a client that stalls mid-request or
//! stops reading cannot hold a thread.

pub(crate) mod auth;
pub(crate) mod jwt;
pub(crate) mod refusals;
pub(crate) mod reply;
pub(crate) mod routes;
pub(crate) mod sse;
pub(crate) mod stream;

use crate::runtime::Runtime;
use crossbeam_channel::Receiver;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The API could not listen.
#[derive(Debug)]
pub(crate) struct BindError {
    pub(crate) addr: SocketAddr,
    pub(crate) source: String,
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot listen on {}: {}; set `listen` to a free address or stop what uses it",
            self.addr, self.source
        )
    }
}

impl std::error::Error for BindError {}

/// The serving API. Dropping it closes the listening socket.
pub(crate) struct Api {
    _server: tiny_http::Server,
    busy: Arc<InFlight>,
}

/// Binds `listen`. Done before the other threads start, so that a busy
/// port fails the start with a clear message; connections wait in the
/// kernel's backlog until [`serve`].
pub(crate) fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).map_err(|e| BindError {
        addr,
        source: e.to_string(),
    })
}

/// Serves on `listener` until the returned [`Api`] is dropped. Fails
/// only when the accept thread cannot start.
pub(crate) fn serve(
    rt: &Arc<Runtime>,
    listener: TcpListener,
    shutdown: &Receiver<()>,
) -> std::io::Result<Api> {
    let busy = Arc::new(InFlight::new(usize::MAX));
    let handler = {
        let (rt, shutdown, busy) = (rt.clone(), shutdown.clone(), busy.clone());
        Arc::new(move |request: tiny_http::Request| {
            let _answering = busy.enter();
            answer(&rt, request, &shutdown)
        })
    };
    let server = tiny_http::Server::from_listener_with_handler(listener, "api", handler)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(Api {
        _server: server,
        busy,
    })
}

impl Api {
    /// At shutdown: gives requests still being answered (most wait for a
    /// command that shutdown just dropped, and answer 503) up to `limit`.
    pub(crate) fn wait_idle(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.busy.count() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Requests of one kind being answered, at most `max` at once.
pub(super) struct InFlight {
    n: AtomicUsize,
    max: usize,
}

/// A place in an [`InFlight`], given back on drop, also when the thread
/// holding it unwinds.
pub(super) struct Held<'a>(&'a InFlight);

impl InFlight {
    pub(super) const fn new(max: usize) -> InFlight {
        InFlight {
            n: AtomicUsize::new(0),
            max,
        }
    }

    /// A place, or None when all `max` are taken.
    pub(super) fn enter(&self) -> Option<Held<'_>> {
        if self.n.fetch_add(1, Ordering::SeqCst) >= self.max {
            self.n.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Held(self))
    }

    pub(super) fn count(&self) -> usize {
        self.n.load(Ordering::SeqCst)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.n.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Answers one request. A panic while answering must not take the
/// connection's thread down without a word (tiny_http itself can panic
/// when a client vanishes mid-response).
fn answer(rt: &Arc<Runtime>, request: tiny_http::Request, shutdown: &Receiver<()>) {
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        routes::handle(rt, request, shutdown)
    })) {
        let what = crate::runtime::panic_text(panic.as_ref());
        log::error!(
            "a request handler panicked ({what}); the request was dropped, the API keeps serving"
        );
    }
}
