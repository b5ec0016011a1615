//! The local HTTP API (tiny_http): health, metrics, commands, sessions and
//! live events. See the route table in `routes`.
//!
//! A few `api-N` threads take requests off the server. A request never
//! calls a provider: commands go through `Shared::submit` like the
//! poller's, and a request that waits for its result hands the wait to a
//! short-lived thread so that `/health` stays quick while execs run. Each
//! event-stream client gets its own thread, bounded in number.
//!
//! Accepted sockets inherit read and write timeouts set on the listener, so
//! a client that stalls mid-request or stops reading cannot hold a thread.

pub mod auth;
pub mod jwt;
pub mod routes;
pub mod sse;
pub mod stream;

use crate::agent::threads::{self, Control, Thread};
use crate::agent::{AgentError, Shared};
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

const API_THREADS: usize = 4;
/// Socket read/write timeout for API clients.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Binds the listen address. Done before any thread starts so that a busy
/// port fails the start with a clear message.
pub fn bind(shared: &Shared) -> Result<Arc<tiny_http::Server>, AgentError> {
    let addr = shared
        .config
        .listen_addr()
        .map_err(|m| AgentError::Listen {
            addr: shared.config.listen.clone(),
            source: m,
        })?;
    let listener = TcpListener::bind(addr).map_err(|e| AgentError::Listen {
        addr: shared.config.listen.clone(),
        source: e.to_string(),
    })?;
    set_timeouts(&listener, IO_TIMEOUT);
    let server =
        tiny_http::Server::from_listener(listener, None).map_err(|e| AgentError::Listen {
            addr: shared.config.listen.clone(),
            source: e.to_string(),
        })?;
    Ok(Arc::new(server))
}

/// Sets SO_RCVTIMEO/SO_SNDTIMEO on the listener; Linux copies them to every
/// accepted socket.
fn set_timeouts(listener: &TcpListener, d: Duration) {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: the fd is a valid socket for the listener's lifetime and
        // tv is a properly sized timeval.
        let rc = unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            log::warn!(
                "cannot set a socket timeout on the API listener: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

pub fn spawn(
    shared: &Arc<Shared>,
    server: Arc<tiny_http::Server>,
    shutdown: &Receiver<()>,
    control: &Sender<Control>,
) -> std::io::Result<Vec<Thread>> {
    (0..API_THREADS)
        .map(|i| {
            let (shared, server, shutdown) = (shared.clone(), server.clone(), shutdown.clone());
            threads::spawn(&format!("api-{i}"), Some(control.clone()), move || {
                serve(&shared, &server, &shutdown)
            })
        })
        .collect()
}

fn serve(shared: &Arc<Shared>, server: &tiny_http::Server, shutdown: &Receiver<()>) {
    loop {
        if let Err(TryRecvError::Disconnected) = shutdown.try_recv() {
            return;
        }
        match server.recv_timeout(Duration::from_millis(250)) {
            Ok(Some(request)) => {
                // A panic while answering one request must not take the
                // thread down (tiny_http itself can panic when a client
                // vanishes mid-response).
                let shared = shared.clone();
                let shutdown = shutdown.clone();
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    routes::handle(&shared, request, &shutdown)
                }))
                .is_err()
                {
                    log::error!("a request handler panicked; the request was dropped, the API keeps serving");
                }
            }
            Ok(None) => {}
            Err(e) => {
                log::warn!("API server error: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}
