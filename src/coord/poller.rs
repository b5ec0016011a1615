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
use crate::agent::intake::{Refusal, Submitted};
use crate::store::ledger::Origin;
use crossbeam_channel::Receiver;
use serde_json::Value;
use std::time::{Duration, Instant};

/// How often a poller holding fetched commands looks for room in the queue.
const ROOM_POLL: Duration = Duration::from_millis(10);

pub fn run(link: &Link, shutdown: &Receiver<()>) {
    let shared = &link.shared;
    let mut backoff = new_backoff(link);
    loop {
        if !shared.accepting() || link.refused() {
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
        if shared.queue_depth() >= shared.queue_capacity() {
            if !sleep(shutdown, Duration::from_millis(200)) {
                return;
            }
            continue;
        }
        let wait = link.poll_wait();
        let path = format!(
            "/api/v1/nodes/{}/commands?wait={}",
            shared.node_id,
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
                shared.metrics.poll_duration.observe(&[result], took);
                if reply.status != 204 {
                    match reply.json() {
                        Some(batch) => {
                            if !handle_batch(link, batch, shutdown) {
                                return;
                            }
                        }
                        None => log::warn!(
                            "the server sent a command batch that is not JSON; skipping it"
                        ),
                    }
                }
            }
            Err(e) => {
                shared.metrics.poll_duration.observe(&["error"], took);
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
/// too), waiting for room in the queue before each one. A command without a
/// usable id cannot be answered and is skipped with a log line; one with
/// wrong fields gets a failed result. False if shutdown came while waiting
/// (the server sends what was not queued again).
fn handle_batch(link: &Link, batch: Value, shutdown: &Receiver<()>) -> bool {
    let shared = &link.shared;
    let items = match batch {
        Value::Null => return true,
        Value::Array(items) => items,
        Value::Object(mut obj) => match obj.remove("commands") {
            Some(Value::Array(items)) => items,
            Some(Value::Null) | None => return true,
            Some(_) => {
                log::warn!("the server's batch has a `commands` that is not a list; skipping it");
                return true;
            }
        },
        _ => {
            log::warn!("the server's batch is neither an object nor a list; skipping it");
            return true;
        }
    };
    let total = items.len();
    for (i, item) in items.into_iter().enumerate() {
        while shared.queue_depth() >= shared.queue_capacity() {
            if !sleep(shutdown, ROOM_POLL) {
                log::info!(
                    "stopping with {} fetched commands not queued; the server will send them again",
                    total - i
                );
                return false;
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
        match shared.submit(command, Origin::Coordination, false) {
            Submitted::Queued(_) => {
                log::debug!(command_id = id.as_str(); "command from the server queued")
            }
            Submitted::Done { replayed: true, .. } => {
                log::info!(command_id = id.as_str(); "the server re-sent a finished command; sending its stored result again")
            }
            Submitted::Done { .. } => {}
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
    true
}
