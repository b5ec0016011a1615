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

use crate::config::Listen;
use crate::runtime::Runtime;
use crossbeam_channel::Receiver;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Mode of the API's Unix socket: its owner and group may connect.
const SOCKET_MODE: u32 = 0o660;

/// The API could not listen.
#[derive(Debug)]
pub(crate) enum BindError {
    Listen {
        addr: String,
        source: String,
    },
    /// `listen_group` names no group.
    NoGroup(String),
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BindError::Listen { addr, source } => write!(
                f,
                "cannot listen on {addr}: {source}; set `listen` to a free address or stop what uses it"
            ),
            BindError::NoGroup(g) => write!(
                f,
                "listen_group: there is no group {g:?} in /etc/group; create it (groupadd {g}) or name another"
            ),
        }
    }
}

impl std::error::Error for BindError {}

/// Which listener a request came in on: `allowed_ips` applies to TCP; on
/// the Unix socket its mode and group decide who may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    Tcp,
    Unix,
}

/// The bound sockets, not yet served.
pub(crate) struct Listeners {
    tcp: Option<TcpListener>,
    unix: Option<(UnixListener, PathBuf)>,
}

/// The serving API. Dropping it closes the listening sockets and removes
/// the Unix socket's file (if it is still the one we made).
pub(crate) struct Api {
    _servers: Vec<tiny_http::Server>,
    busy: Arc<InFlight>,
    /// The socket file and its (device, inode).
    socket: Option<(PathBuf, u64, u64)>,
}

impl Drop for Api {
    fn drop(&mut self) {
        if let Some((path, dev, ino)) = &self.socket {
            let ours =
                std::fs::symlink_metadata(path).is_ok_and(|m| m.dev() == *dev && m.ino() == *ino);
            if ours {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// Binds `listen` (the Unix socket with mode 0660 and group `group`, if
/// set). Done before the other threads start, so that a busy port fails
/// the start with a clear message; connections wait in the kernel's
/// backlog until [`serve`].
pub(crate) fn bind(listen: &Listen, group: &str) -> Result<Listeners, BindError> {
    let tcp = match listen.tcp {
        Some(addr) => Some(TcpListener::bind(addr).map_err(|e| BindError::Listen {
            addr: addr.to_string(),
            source: e.to_string(),
        })?),
        None => None,
    };
    let unix = match &listen.unix {
        Some(path) => {
            let gid = match group {
                "" => None,
                g => Some(
                    crate::os::socket::group_id(g).ok_or_else(|| BindError::NoGroup(g.into()))?,
                ),
            };
            let l = crate::os::socket::listen_unix(path, SOCKET_MODE, gid).map_err(|e| {
                BindError::Listen {
                    addr: format!("unix:{}", path.display()),
                    source: e.to_string(),
                }
            })?;
            Some((l, path.clone()))
        }
        None => None,
    };
    Ok(Listeners { tcp, unix })
}

/// Serves on `listeners` until the returned [`Api`] is dropped. Fails
/// only when an accept thread cannot start.
pub(crate) fn serve(
    rt: &Arc<Runtime>,
    listeners: Listeners,
    shutdown: &Receiver<()>,
) -> std::io::Result<Api> {
    let busy = Arc::new(InFlight::new(usize::MAX));
    let handler = |via: Via| {
        let (rt, shutdown, busy) = (rt.clone(), shutdown.clone(), busy.clone());
        Arc::new(move |request: tiny_http::Request| {
            let _answering = busy.enter();
            answer(&rt, request, &shutdown, via)
        })
    };
    type Started = Result<tiny_http::Server, Box<dyn std::error::Error + Send + Sync>>;
    let started = |r: Started| r.map_err(|e| std::io::Error::other(e.to_string()));
    let mut servers = Vec::new();
    if let Some(l) = listeners.tcp {
        servers.push(started(tiny_http::Server::from_listener_with_handler(
            l,
            "api",
            handler(Via::Tcp),
        ))?);
    }
    let mut socket = None;
    if let Some((l, path)) = listeners.unix {
        if let Ok(m) = std::fs::symlink_metadata(&path) {
            socket = Some((path, m.dev(), m.ino()));
        }
        servers.push(started(tiny_http::Server::from_listener_with_handler(
            l,
            "api-unix",
            handler(Via::Unix),
        ))?);
    }
    Ok(Api {
        _servers: servers,
        busy,
        socket,
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
fn answer(rt: &Arc<Runtime>, request: tiny_http::Request, shutdown: &Receiver<()>, via: Via) {
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        routes::handle(rt, request, shutdown, via)
    })) {
        let what = crate::runtime::panic_text(panic.as_ref());
        log::error!(
            "a request handler panicked ({what}); the request was dropped, the API keeps serving"
        );
    }
}
