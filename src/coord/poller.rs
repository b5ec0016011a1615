//! The poller thread: registers when needed, then long-polls for commands
//! and submits them like the local API does.
//!
//! The long poll's read timeout is the server's wait plus a margin, so a
//! silent server cannot hold it forever. While the queue is full the poller
//! does not fetch: commands stay with the server until there is room. A
//! batch larger than the room left is queued as room frees up, not refused:
//! a refused command would only come back after the server's redelivery
//! delay.

use super::client::CoordError;
use super::{new_backoff, sleep, Link};
use crate::runtime::intake::Requester;
use crate::runtime::intake::{Refusal, Submitted};
use crossbeam_channel::Receiver;
use serde_json::Value;
use std::time::{Duration, Instant};

/// The least time between two fetches that brought nothing new.
const MIN_FETCH_GAP: Duration = Duration::from_secs(1);

/// How often a poller holding fetched commands looks for room in the queue.
const ROOM_POLL: Duration = Duration::from_millis(10);

pub(crate) fn run(link: &Link, shutdown: &Receiver<()>) {
    let rt = &link.rt;
    let mut backoff = new_backoff(link);
    loop {
        if !rt.accepting() || link.refused() {
            // Nothing more to fetch; stay until shutdown.
            let _ = shutdown.recv();
            return;
        }
        if !link.registered() {
            match link.ensure_registered(shutdown) {
                Ok(true) => backoff.reset(),
                Ok(false) => return,
                Err(_) => {
                    if !sleep(shutdown, backoff.next_delay()) {
                        return;
                    }
                }
            }
            continue;
        }
        if rt.queue_depth() >= rt.queue_capacity() {
            if !sleep(shutdown, Duration::from_millis(200)) {
                return;
            }
            continue;
        }
        let wait = link.poll_wait();
        let path = format!(
            "/api/v1/nodes/{}/commands?wait={}",
            rt.node_id,
            wait.as_secs().max(1)
        );
        let started = Instant::now();
        let answer = link
            .client
            .call("GET", &path, None, wait + Duration::from_secs(15));
        let took = started.elapsed();
        match answer {
            Ok(reply) => {
                backoff.reset();
                link.up();
                let result = if reply.status == 204 { "empty" } else { "ok" };
                rt.metrics.poll_duration.observe(&[result], took);
                let mut new = 0;
                if reply.status != 204 {
                    match reply.json() {
                        Some(batch) => match handle_batch(link, batch, shutdown) {
                            Some(n) => new = n,
                            None => return,
                        },
                        None => log::warn!(
                            "the server sent a command batch that is not JSON; skipping it"
                        ),
                    }
                }
                // A server that answers at once with nothing new (it need
                // not hold the poll) is asked at most once per MIN_FETCH_GAP.
                if new == 0 && took < MIN_FETCH_GAP {
                    let pause =
                        MIN_FETCH_GAP - took + crate::os::random::jitter(MIN_FETCH_GAP / 10);
                    if !sleep(shutdown, pause) {
                        return;
                    }
                }
            }
            Err(e) => {
                rt.metrics.poll_duration.observe(&["error"], took);
                match e.status() {
                    Some(404) => link.lost_registration("404 on command fetch"),
                    _ if e.refused() => link.refuse(&e),
                    _ => {
                        link.down(&e);
                        if matches!(e, CoordError::BadBody { .. }) {
                            log::warn!("skipping a command batch: {e}");
                        }
                        if !sleep(shutdown, backoff.next_delay()) {
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// Submits each command of `{"commands": [...]}` (a bare array is taken
/// too), waiting for room in the queue before each one. A command without
/// a usable id cannot be answered and is skipped with a log line; one with
/// wrong fields gets a failed result. Returns how many were new (queued,
/// or answered at once), or None if shutdown came while waiting (the
/// server sends what was not queued again).
fn handle_batch(link: &Link, batch: Value, shutdown: &Receiver<()>) -> Option<usize> {
    let rt = &link.rt;
    let mut new = 0;
    let items = match batch {
        Value::Null => return Some(0),
        Value::Array(items) => items,
        Value::Object(mut obj) => match obj.remove("commands") {
            Some(Value::Array(items)) => items,
            Some(Value::Null) | None => return Some(0),
            Some(_) => {
                log::warn!("the server's batch has a `commands` that is not a list; skipping it");
                return Some(0);
            }
        },
        _ => {
            log::warn!("the server's batch is neither an object nor a list; skipping it");
            return Some(0);
        }
    };
    let total = items.len();
    for (i, item) in items.into_iter().enumerate() {
        while rt.queue_depth() >= rt.queue_capacity() {
            if !sleep(shutdown, ROOM_POLL) {
                log::info!(
                    "stopping with {} fetched commands not queued; the server will send them again",
                    total - i
                );
                return None;
            }
        }
        let command = match crate::protocol::command::from_value(item) {
            Ok(c) => c,
            Err(e) => {
                log::warn!("skipping a command from the server that cannot be answered: {e}");
                continue;
            }
        };
        let id = command.id.clone();
        match rt.submit(command, Requester::server(), false) {
            Submitted::Queued(_) => {
                new += 1;
                log::debug!(command_id = id.as_str(); "command from the server queued")
            }
            Submitted::Done { replayed: true, .. } => {
                log::info!(command_id = id.as_str(); "the server re-sent a finished command; sending its stored result again")
            }
            Submitted::Done { .. } => new += 1,
            Submitted::InProgress(_) => {
                log::debug!(command_id = id.as_str(); "the server re-sent a command that is still running")
            }
            Submitted::Refused(Refusal::QueueFull) => {
                log::warn!(command_id = id.as_str(); "queue full; the server will send the command again")
            }
            Submitted::Refused(r) => {
                log::warn!(command_id = id.as_str(); "command not accepted ({r:?})")
            }
        }
    }
    // The next poll tells the server this batch was taken: what it
    // brought is on disk first.
    if let Err(e) = rt.ledger.sync() {
        log::error!("cannot flush the journal after taking a batch of commands: {e}");
    }
    Some(new)
}
