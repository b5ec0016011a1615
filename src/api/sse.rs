//! `GET /api/v1/events`: Server-Sent Events, one thread per client.
//!
//! Each event is `id: <seq>`, `event: command|session`, `data: <json>`. A
//! client that reconnects with `Last-Event-ID` first gets what it missed
//! (while it is still in the backlog). A comment line every 15 s keeps
//! proxies from closing an idle stream and tells us when the client left.

use super::reply::ApiError;
use super::routes::send;
use crate::runtime::Runtime;
use crossbeam_channel::{select, Receiver};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tiny_http::Request;

const KEEPALIVE: Duration = Duration::from_secs(15);
/// Event streams at once; each holds its connection's thread.
const MAX_CLIENTS: usize = 32;
static CLIENTS: AtomicUsize = AtomicUsize::new(0);

/// A place among the [`MAX_CLIENTS`], given back on drop (also when the
/// stream's thread unwinds).
struct Place;

impl Place {
    fn take() -> Option<Place> {
        if CLIENTS.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
            CLIENTS.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Place)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        CLIENTS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Streams events on the request's thread until the client goes, it
/// falls too far behind, or the agent stops.
pub(super) fn serve(rt: &Runtime, request: Request, shutdown: &Receiver<()>) {
    let route = "/api/v1/events";
    let Some(_place) = Place::take() else {
        return send(
            rt,
            request,
            route,
            ApiError::TooManyStreams(MAX_CLIENTS).reply(),
        );
    };
    rt.metrics.api_requests.inc(&[route, "200"]);
    let last_seen = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Last-Event-ID"))
        .and_then(|h| h.value.as_str().trim().parse::<u64>().ok());
    let (backlog, events) = rt.events.subscribe(last_seen);
    let mut w = request.into_writer();
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\nX-Accel-Buffering: no\r\n\r\n: vendetta event stream\n\n";
    let mut ok = w.write_all(head.as_bytes()).and_then(|_| w.flush()).is_ok();
    for e in backlog {
        ok = ok && write_event(&mut w, &e).is_ok();
    }
    while ok {
        select! {
            recv(events) -> e => match e {
                Ok(e) => ok = write_event(&mut w, &e).is_ok(),
                Err(_) => {
                    // Dropped as too slow: say so, so the client reconnects.
                    rt.metrics.sse_clients_dropped.inc();
                    let _ = w.write_all(b": dropped: too slow; reconnect with Last-Event-ID\n\n");
                    ok = false;
                }
            },
            recv(shutdown) -> _ => ok = false,
            default(KEEPALIVE) => ok = w.write_all(b": keepalive\n\n").and_then(|_| w.flush()).is_ok(),
        }
    }
}

fn write_event(w: &mut dyn Write, e: &crate::runtime::events::Event) -> std::io::Result<()> {
    write!(w, "id: {}\nevent: {}\ndata: {}\n\n", e.seq, e.kind, e.data)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_and_given_back_even_by_a_panicking_thread() {
        let held: Vec<Place> = (0..MAX_CLIENTS).map(|_| Place::take().unwrap()).collect();
        assert!(Place::take().is_none(), "all taken");
        let mut held = held.into_iter();
        let one = held.next().unwrap();
        let panicked = std::thread::spawn(move || {
            let _held = one;
            panic!("a stream's thread dies");
        })
        .join();
        assert!(panicked.is_err());
        let again = Place::take().expect("the panicking thread gave its place back");
        drop(again);
        drop(held);
        assert_eq!(CLIENTS.load(Ordering::SeqCst), 0);
    }
}
