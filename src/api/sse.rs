//! `GET /api/v1/events`: Server-Sent Events, one thread per client.
//!
//! Each event is `id: <seq>`, `event: command|session`, `data: <json>`. A
//! client that reconnects with `Last-Event-ID` first gets what it missed
//! (while it is still in the backlog). A comment line every 15 s keeps
//! proxies from closing an idle stream and tells us when the client left.

use super::routes::{send, spawn_holding, Reply, Slots};
use crate::runtime::Runtime;
use crossbeam_channel::{select, Receiver};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use tiny_http::Request;

const KEEPALIVE: Duration = Duration::from_secs(15);
static CLIENTS: Slots = Slots::new(32);

pub(crate) fn serve(rt: &Arc<Runtime>, request: Request, shutdown: &Receiver<()>) {
    let route = "/api/v1/events";
    let Some(slot) = CLIENTS.try_enter() else {
        let reply = Reply::error(
            503,
            "too_many_streams",
            format!("at most {} event streams at once", CLIENTS.max),
        );
        return send(rt, request, route, reply);
    };
    rt.metrics.api_requests.inc(&[route, "200"]);
    let last_seen = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Last-Event-ID"))
        .and_then(|h| h.value.as_str().trim().parse::<u64>().ok());
    let (rt, shutdown) = (rt.clone(), shutdown.clone());
    spawn_holding(slot, "sse", move || {
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
    });
}

fn write_event(w: &mut dyn Write, e: &crate::runtime::events::Event) -> std::io::Result<()> {
    write!(w, "id: {}\nevent: {}\ndata: {}\n\n", e.seq, e.kind, e.data)?;
    w.flush()
}
