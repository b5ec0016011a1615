//! Per-session order: commands for one session never overtake each other.
//!
//! Workers take jobs off the queue in acceptance order, but several run
//! at once; without this an exec could start before the create ahead of
//! it finished, or a destroy before the create it should undo. Each
//! session is a lane with reader-writer rules in arrival order:
//!
//! - an exec (shared) starts once nothing exclusive runs in its session;
//!   execs run side by side;
//! - create, start, stop and destroy (exclusive) start once nothing runs
//!   in it: a destroy waits for the execs accepted before it, so that
//!   none of them is cut off halfway by a command that came later;
//! - and none starts while an earlier one of its session still waits.
//!
//! A job that may not start yet is parked here, not in a worker: the
//! worker goes on to the next job. When a job ends, the jobs it held up
//! go to the `ready` channel, which workers drain before the queue.
//! Parked jobs count against `queue_size`. At shutdown they are dropped
//! like queued ones: their intake is in the journal, so they run after
//! the restart, in the same order.

use super::intake::Job;
use crate::protocol::command::Request;
use crate::protocol::{Command, SessionId};
use crossbeam_channel::{unbounded, Receiver, Sender};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Shared,
    Exclusive,
}

/// The lane a command runs in, if it is about one session.
fn lane_of(command: &Command) -> Option<(SessionId, Kind)> {
    let request = command.request.as_ref().ok()?;
    let kind = match request {
        Request::SessionExec(_) => Kind::Shared,
        Request::SessionCreate(_)
        | Request::SessionStart(_)
        | Request::SessionStop(_)
        | Request::SessionDestroy(_) => Kind::Exclusive,
        // Read-only: they order nothing.
        _ => return None,
    };
    Some((request.session_id()?.clone(), kind))
}

#[derive(Default)]
struct Lane {
    shared: usize,
    exclusive: bool,
    waiting: VecDeque<(Kind, Job)>,
}

impl Lane {
    fn may_start(&self, kind: Kind) -> bool {
        match kind {
            Kind::Shared => !self.exclusive,
            Kind::Exclusive => !self.exclusive && self.shared == 0,
        }
    }

    fn start(&mut self, kind: Kind) {
        match kind {
            Kind::Shared => self.shared += 1,
            Kind::Exclusive => self.exclusive = true,
        }
    }

    fn end(&mut self, kind: Kind) {
        match kind {
            Kind::Shared => self.shared = self.shared.saturating_sub(1),
            Kind::Exclusive => self.exclusive = false,
        }
    }

    fn idle(&self) -> bool {
        self.shared == 0 && !self.exclusive && self.waiting.is_empty()
    }
}

pub(crate) struct Lanes {
    lanes: Mutex<HashMap<SessionId, Lane>>,
    parked: AtomicUsize,
    ready: (Sender<Job>, Receiver<Job>),
}

/// What a worker holds while it runs a job: handed back to `done`.
pub(crate) struct Ticket(Option<(SessionId, Kind)>);

impl Default for Lanes {
    fn default() -> Self {
        Lanes {
            lanes: Mutex::new(HashMap::new()),
            parked: AtomicUsize::new(0),
            ready: unbounded(),
        }
    }
}

impl Lanes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Lane>> {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A job from the queue: returned with its ticket if it may start now,
    /// else parked until the jobs ahead of it in its session end.
    pub(crate) fn admit(&self, job: Job) -> Option<(Job, Ticket)> {
        let Some((session, kind)) = lane_of(&job.command) else {
            return Some((job, Ticket(None)));
        };
        let mut lanes = self.lock();
        let lane = lanes.entry(session.clone()).or_default();
        if lane.waiting.is_empty() && lane.may_start(kind) {
            lane.start(kind);
            return Some((job, Ticket(Some((session, kind)))));
        }
        log::debug!(command_id = job.command.id.as_str(), session_id = session.as_str(); "waiting for the commands ahead of it in its session");
        lane.waiting.push_back((kind, job));
        self.parked.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// A job from `ready`: it was admitted when it left its lane.
    pub(crate) fn ticket_for(&self, job: &Job) -> Ticket {
        Ticket(lane_of(&job.command))
    }

    /// A job ended: the jobs of its session that may start now go to
    /// `ready`.
    pub(crate) fn done(&self, ticket: Ticket) {
        let Some((session, kind)) = ticket.0 else {
            return;
        };
        let mut lanes = self.lock();
        let Some(lane) = lanes.get_mut(&session) else {
            return;
        };
        lane.end(kind);
        while let Some((next, _)) = lane.waiting.front() {
            if !lane.may_start(*next) {
                break;
            }
            let next = *next;
            let Some((_, job)) = lane.waiting.pop_front() else {
                break;
            };
            lane.start(next);
            self.parked.fetch_sub(1, Ordering::Relaxed);
            // Unbounded and never closed while a worker lives: cannot fail.
            let _ = self.ready.0.send(job);
        }
        if lane.idle() {
            lanes.remove(&session);
        }
    }

    /// Jobs accepted and not yet running: parked, or ready for a worker.
    pub(crate) fn waiting(&self) -> usize {
        self.parked.load(Ordering::Relaxed) + self.ready.1.len()
    }

    pub(crate) fn ready(&self) -> &Receiver<Job> {
        &self.ready.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ledger::Origin;
    use serde_json::json;

    fn job(id: &str, action: &str, session: &str) -> Job {
        let mut v = json!({"id": id, "type": "session", "action": action,
            "params": {"session_id": session}});
        if action == "exec" {
            v["params"]["command"] = json!(["true"]);
        }
        if action == "create" {
            v["params"]["image"] = json!("busybox");
        }
        let command = crate::protocol::command::from_value(v).unwrap();
        assert!(command.request.is_ok(), "{action}: {:?}", command.request);
        Job {
            command,
            from: crate::runtime::intake::Requester {
                origin: Origin::Api,
                caller: "test".into(),
                tenancy: Default::default(),
                peer: None,
            },
            _slot: None,
            reply: None,
            stream: None,
        }
    }

    fn ready_ids(l: &Lanes) -> Vec<String> {
        l.ready()
            .try_iter()
            .map(|j| j.command.id.as_str().to_string())
            .collect()
    }

    #[test]
    fn a_session_s_commands_start_in_order_and_execs_share() {
        let l = Lanes::default();
        let (_, create) = l.admit(job("c", "create", "s1")).expect("create starts");
        assert!(l.admit(job("e1", "exec", "s1")).is_none());
        assert!(l.admit(job("e2", "exec", "s1")).is_none());
        assert!(l.admit(job("d", "destroy", "s1")).is_none());
        assert!(l.admit(job("e3", "exec", "s1")).is_none());
        // Another session is not held up.
        let (_, other) = l.admit(job("o", "create", "s2")).expect("s2 is free");
        assert_eq!(l.waiting(), 4);
        l.done(create);
        // Both execs may run together; the destroy waits for them, and
        // the exec behind the destroy for it.
        assert_eq!(ready_ids(&l), ["e1", "e2"]);
        assert_eq!(l.waiting(), 2);
        let [e1, e2, d] = [
            l.ticket_for(&job("e1", "exec", "s1")),
            l.ticket_for(&job("e2", "exec", "s1")),
            l.ticket_for(&job("d", "destroy", "s1")),
        ];
        l.done(e1);
        assert!(ready_ids(&l).is_empty());
        l.done(e2);
        assert_eq!(ready_ids(&l), ["d"]);
        l.done(d);
        assert_eq!(ready_ids(&l), ["e3"]);
        l.done(l.ticket_for(&job("e3", "exec", "s1")));
        l.done(other);
        assert_eq!(l.waiting(), 0);
        assert!(l.lock().is_empty(), "idle lanes are dropped");
    }

    #[test]
    fn an_exclusive_command_waits_for_running_execs() {
        let l = Lanes::default();
        let (_, e) = l.admit(job("e", "exec", "s")).unwrap();
        assert!(l.admit(job("st", "start", "s")).is_none());
        assert!(
            l.admit(job("e2", "exec", "s")).is_none(),
            "no overtaking the waiting start"
        );
        l.done(e);
        assert_eq!(ready_ids(&l), ["st"]);
        l.done(l.ticket_for(&job("st", "start", "s")));
        assert_eq!(ready_ids(&l), ["e2"]);
    }
}
