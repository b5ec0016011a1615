//! `GET /api/v1/events`: Server-Sent Events, one thread per client.
//!
//! Each event is `id: <seq>`, `event: command|session`, `data: <json>`. A
//! client that reconnects with `Last-Event-ID` first gets what it missed
//! (while it is still in the backlog). A comment line every 15 s keeps
//! proxies from closing an idle stream and tells us when the client left.

use super::reply::ApiError;
use super::routes::{header, open_stream, send};
use super::InFlight;
use crate::protocol::tenant::Tenancy;
use crate::runtime::Runtime;
use crossbeam_channel::{select, Receiver};
use std::io::Write;
use std::time::Duration;
use tiny_http::Request;

const KEEPALIVE: Duration = Duration::from_secs(15);
/// Event streams at once; each holds its connection's thread.
const MAX_CLIENTS: usize = 32;
static CLIENTS: InFlight = InFlight::new(MAX_CLIENTS);

/// Streams events on the request's thread until the client goes, it
/// falls too far behind, or the agent stops.
pub(super) fn serve(
    rt: &Runtime,
    request: Request,
    shutdown: &Receiver<()>,
    caller: &str,
    reach: &Tenancy,
) {
    let route = "/api/v1/events";
    let Some(_place) = CLIENTS.enter() else {
        return send(
            rt,
            request,
            route,
            ApiError::TooManyStreams(MAX_CLIENTS).reply(),
        );
    };
    let (peer, opened) = (
        request.remote_addr().map(|a| a.ip()),
        std::time::Instant::now(),
    );
    rt.audit_stream(caller, reach.tenant_str(), peer, route, None);
    let last_seen = header(&request, "Last-Event-ID").and_then(|v| v.trim().parse::<u64>().ok());
    let (backlog, events) = rt.events.subscribe(last_seen, reach);
    let (mut w, mut ok) = open_stream(
        rt,
        request,
        route,
        "text/event-stream\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no",
        ": vendetta event stream\n\n",
    );
    for e in backlog {
        ok = ok && write_event(&mut w, &e).is_ok();
    }
    while ok {
        select! {
            recv(events) -> e => match e {
                Ok(e) if !e.seen_by(reach) => {}
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
    rt.audit_stream(
        caller,
        reach.tenant_str(),
        peer,
        route,
        Some(opened.elapsed()),
    );
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
        static S: InFlight = InFlight::new(2);
        let a = S.enter().unwrap();
        let b = S.enter().unwrap();
        assert!(S.enter().is_none(), "all taken");
        drop(a);
        let c = S.enter().expect("a dropped place is free again");
        let panicked = std::thread::spawn(move || {
            let _held = b;
            panic!("a stream's thread dies");
        })
        .join();
        assert!(panicked.is_err());
        assert_eq!(S.count(), 1, "the panicking thread gave its place back");
        drop(c);
        assert_eq!(S.count(), 0);
    }
}
