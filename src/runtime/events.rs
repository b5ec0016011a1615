//! Live events for `/api/v1/events`: command and session state changes.
//!
//! Publishing never blocks: each subscriber has a bounded channel, and one
//! that falls behind is dropped (it reconnects with `Last-Event-ID` and gets
//! the backlog). The last events are kept so that a reconnect misses
//! nothing that is still in the window.

use crate::protocol::event::Event as Change;
use crate::protocol::tenant::Tenancy;
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

const BACKLOG: usize = 256;
const SUBSCRIBER_BUFFER: usize = 256;

/// An event as subscribers get it: serialised once for all of them.
#[derive(Debug)]
pub(crate) struct Event {
    pub(crate) seq: u64,
    /// `command` or `session`.
    pub(crate) kind: &'static str,
    /// The JSON payload, with `seq` and `time`.
    pub(crate) data: String,
    /// The change itself, for who may see it.
    change: Change,
}

impl Event {
    pub(crate) fn seen_by(&self, reach: &Tenancy) -> bool {
        self.change.seen_by(reach)
    }
}

/// The payload on the wire: the change, its sequence number and time.
#[derive(Serialize)]
struct Stamped<'a> {
    #[serde(flatten)]
    change: &'a Change,
    seq: u64,
    time: String,
}

#[derive(Default)]
struct Inner {
    seq: u64,
    /// Each gets every event and passes on what its caller may see
    /// (`Event::seen_by`): a send that fails is how a gone one is found.
    subscribers: Vec<Sender<Arc<Event>>>,
    backlog: VecDeque<Arc<Event>>,
}

pub(crate) struct Events {
    inner: Mutex<Inner>,
}

impl Default for Events {
    /// Event ids start from the start time in microseconds, so they keep
    /// growing across restarts and a client's `Last-Event-ID` from before
    /// a restart still selects everything after it.
    fn default() -> Self {
        let base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        Events {
            inner: Mutex::new(Inner {
                seq: base,
                ..Default::default()
            }),
        }
    }
}

impl Events {
    /// Publishes to every subscriber; returns how many were dropped as slow.
    pub(crate) fn publish(&self, change: Change) -> usize {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.seq += 1;
        let seq = inner.seq;
        let stamped = Stamped {
            change: &change,
            seq,
            time: crate::protocol::time::now_rfc3339(),
        };
        let event = Arc::new(Event {
            seq,
            kind: change.kind(),
            // Plain structs of strings and numbers: serialising cannot fail.
            data: serde_json::to_string(&stamped).unwrap_or_default(),
            change,
        });
        if inner.backlog.len() >= BACKLOG {
            inner.backlog.pop_front();
        }
        inner.backlog.push_back(event.clone());
        let before = inner.subscribers.len();
        inner
            .subscribers
            .retain(|s| match s.try_send(event.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
            });
        before - inner.subscribers.len()
    }

    /// A new subscription, with the backlog after `last_seen` (if given)
    /// that a caller of `reach` may see.
    pub(crate) fn subscribe(
        &self,
        last_seen: Option<u64>,
        reach: &Tenancy,
    ) -> (Vec<Arc<Event>>, Receiver<Arc<Event>>) {
        let (tx, rx) = bounded(SUBSCRIBER_BUFFER);
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let backlog = match last_seen {
            Some(seen) => inner
                .backlog
                .iter()
                .filter(|e| e.seq > seen && e.seen_by(reach))
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        inner.subscribers.push(tx);
        (backlog, rx)
    }

    pub(crate) fn subscribers(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .subscribers
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::event::{CommandEvent, CommandState};

    fn running(id: &str) -> Change {
        Change::Command(CommandEvent {
            id: id.into(),
            kind: "system".into(),
            action: "status".into(),
            state: CommandState::Running,
            sender: Tenancy::everything(),
        })
    }

    #[test]
    fn delivers_and_replays() {
        let ev = Events::default();
        let (_, rx) = ev.subscribe(None, &Tenancy::everything());
        ev.publish(running("a"));
        ev.publish(running("b"));
        let first = rx.try_recv().unwrap().seq;
        assert!(first > 1_700_000_000_000_000, "ids start at the start time");
        let (backlog, _) = ev.subscribe(Some(first), &Tenancy::everything());
        assert_eq!(backlog.len(), 1);
        let b: serde_json::Value = serde_json::from_str(&backlog[0].data).unwrap();
        assert_eq!(b["id"], "b");
        assert_eq!(b["state"], "running");
        assert_eq!(b["seq"], first + 1);
        assert!(b["time"].as_str().unwrap().ends_with('Z'), "{b}");
        let (backlog, _) = ev.subscribe(Some(first - 1), &Tenancy::default());
        assert!(
            backlog.is_empty(),
            "an admin's commands are not in a tenant's backlog"
        );
    }

    #[test]
    fn slow_subscriber_is_dropped_not_waited_for() {
        let ev = Events::default();
        let (_, _rx) = ev.subscribe(None, &Tenancy::everything());
        let mut dropped = 0;
        for i in 0..(SUBSCRIBER_BUFFER + 1) {
            dropped += ev.publish(running(&i.to_string()));
        }
        assert_eq!(dropped, 1);
        assert_eq!(ev.subscribers(), 0);
    }
}
