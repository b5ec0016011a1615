//! The one way in for a command: dedupe by id, check policy, queue.
//!
//! `submit` never blocks: a full queue is answered at once (the API says
//! 429, the poller leaves the command for the server to re-send).

use super::Runtime;
use crate::protocol::command::Request;
use crate::protocol::event::{CommandEvent, CommandState, Event, RefusedReason};
use crate::protocol::tenant::Tenancy;
use crate::protocol::{Code, Command, CommandResult};
use crate::providers::output::Chunk;
use crate::store::ledger::{Begin, Origin, State, Unfinished};
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use serde::Serialize;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

/// Who sent a command: the origin, which decides where its result goes,
/// and for the audit log the caller, its tenant and its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Requester {
    pub(crate) origin: Origin,
    /// `api_token`, `jwt:SUB`, `coordination`, or `recovered`.
    pub(crate) caller: String,
    /// Whose sessions the command may touch.
    pub(crate) tenancy: Tenancy,
    pub(crate) peer: Option<IpAddr>,
}

impl Requester {
    /// The coordination server, through the link.
    pub(crate) fn server() -> Requester {
        Requester {
            origin: Origin::Coordination,
            caller: "coordination".into(),
            tenancy: Tenancy::everything(),
            peer: None,
        }
    }

    /// A command found unfinished at start: its sender's name and address
    /// were not kept, its reach was.
    fn recovered(u: &Unfinished) -> Requester {
        Requester {
            origin: u.origin,
            caller: "recovered".into(),
            tenancy: u.tenancy.clone(),
            peer: None,
        }
    }

    /// A caller of the local API.
    pub(crate) fn api(caller: String, tenancy: Tenancy, peer: Option<IpAddr>) -> Requester {
        Requester {
            origin: Origin::Api,
            caller,
            tenancy,
            peer,
        }
    }
}

/// Who did something, and when: the head of every audit line.
#[derive(Serialize)]
struct Who<'a> {
    time: String,
    caller: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer: Option<String>,
}

impl<'a> Who<'a> {
    fn now(caller: &'a str, tenant: Option<&'a str>, peer: Option<IpAddr>) -> Who<'a> {
        Who {
            time: crate::protocol::time::now_rfc3339(),
            caller,
            tenant,
            peer: peer.map(|p| p.to_string()),
        }
    }
}

/// One line of the audit log for a command.
#[derive(Serialize)]
struct AuditEntry<'a> {
    #[serde(flatten)]
    who: Who<'a>,
    origin: Origin,
    id: &'a str,
    command: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<&'a str>,
    /// The result's status, or `refused`, `replayed`, `in_progress`.
    outcome: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
}

/// Places for execs queued or running at once (`limits.max_concurrent_execs`).
pub(crate) struct ExecSlots {
    max: usize,
    used: AtomicUsize,
}

/// One exec's place, given back when its job is done (dropped).
pub(crate) struct ExecSlot(Arc<ExecSlots>);

impl ExecSlots {
    pub(crate) fn new(max: usize) -> Arc<ExecSlots> {
        Arc::new(ExecSlots {
            max,
            used: AtomicUsize::new(0),
        })
    }

    /// A place, or None when all are taken; `force` takes one regardless
    /// (a command accepted before a restart keeps its place).
    fn take(self: &Arc<Self>, force: bool) -> Option<ExecSlot> {
        let taken = self.used.fetch_add(1, Ordering::SeqCst);
        if taken >= self.max && !force {
            self.used.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(ExecSlot(self.clone()))
    }

    pub(crate) fn in_use(&self) -> usize {
        self.used.load(Ordering::SeqCst)
    }
}

impl Drop for ExecSlot {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A command on its way to a worker, with where its result goes.
pub(crate) struct Job {
    pub(crate) command: Command,
    pub(crate) from: Requester,
    /// An exec's place among `limits.max_concurrent_execs`, held until done.
    pub(crate) _slot: Option<ExecSlot>,
    /// Whoever waits for the result (a sync API request); may be gone.
    pub(crate) reply: Option<Sender<CommandResult>>,
    /// Where exec output goes as it arrives (a streaming API request).
    pub(crate) stream: Option<Sender<Chunk>>,
}

/// What became of a submission.
#[derive(Debug)]
pub(crate) enum Submitted {
    /// Finished: a stored result for a repeated id, or an immediate answer
    /// (invalid, rejected). `replayed` marks a stored one.
    Done {
        result: Box<CommandResult>,
        replayed: bool,
    },
    /// Queued; the result will arrive on the receiver if one was asked for.
    Queued(Option<Receiver<CommandResult>>),
    /// The same id is queued or running already.
    InProgress(State),
    /// Not accepted; nothing was recorded.
    Refused(Refusal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    QueueFull,
    /// `limits.max_concurrent_execs` execs are queued or running.
    ExecLimit,
    ShuttingDown,
    /// The ledger could not record the command (disk full, permissions).
    StoreFailed,
    /// The id is used by a command of a caller out of this one's reach.
    IdTaken,
}

impl Runtime {
    /// Accepts a command for execution. With `want_reply`, the result is
    /// also sent to the returned receiver.
    pub(crate) fn submit(&self, command: Command, from: Requester, want_reply: bool) -> Submitted {
        self.submit_with(command, from, want_reply, None)
    }

    /// Like `submit` with a reply, and exec output sent to `stream` as it
    /// arrives.
    pub(crate) fn submit_streaming(
        &self,
        command: Command,
        from: Requester,
        stream: Sender<Chunk>,
    ) -> Submitted {
        self.submit_with(command, from, true, Some(stream))
    }

    fn submit_with(
        &self,
        command: Command,
        from: Requester,
        want_reply: bool,
        stream: Option<Sender<Chunk>>,
    ) -> Submitted {
        let origin = from.origin;
        let (kind, action) = (command.kind.clone(), command.action.clone());
        self.metrics
            .commands_received
            .inc(&[&kind, &action, origin.as_str()]);
        if !self.accepting() {
            self.metrics.commands_refused.inc(&["shutting_down"]);
            self.audit(&command, &from, "refused", Some("shutting_down"));
            return Submitted::Refused(Refusal::ShuttingDown);
        }
        let durable = !command.read_only();
        // Answered at once, but recorded like any result. The journal
        // keeps such a command's echo capped: it never runs, so it is not
        // replayed, and a caller must not fill the disk with it.
        let immediate = match &command.request {
            Err(field) => Some((
                "invalid",
                CommandResult::failure(
                    &command,
                    &self.node_id,
                    SystemTime::now(),
                    Code::Invalid,
                    field.to_string(),
                ),
            )),
            Ok(_) => self.policy_rejection(&command).map(|r| ("policy", r)),
        };
        let echo = match &immediate {
            Some(_) => std::borrow::Cow::Owned(crate::protocol::result::capped_echo(&command.echo)),
            None => std::borrow::Cow::Borrowed(&command.echo),
        };
        let begin = match self
            .ledger
            .begin(&command.id, origin, &from.tenancy, &echo, durable)
        {
            Ok(b) => b,
            Err(e) => {
                log::error!(command_id = command.id.as_str(); "cannot record command: {e}");
                self.metrics.commands_refused.inc(&["store_failed"]);
                self.audit(&command, &from, "refused", Some("store_failed"));
                return Submitted::Refused(Refusal::StoreFailed);
            }
        };
        match begin {
            Begin::Done(result) => {
                self.metrics.commands_refused.inc(&["duplicate"]);
                log::debug!(command_id = command.id.as_str(); "repeated command id: answering with the stored result");
                if origin == Origin::Coordination {
                    // The server asks again because it has no result: send it again.
                    self.ledger.report_again(&result.id);
                    let _ = self.report_wake.0.try_send(());
                }
                self.audit(&command, &from, "replayed", None);
                return Submitted::Done {
                    result,
                    replayed: true,
                };
            }
            Begin::InProgress(state) => {
                self.metrics.commands_refused.inc(&["duplicate"]);
                self.audit(&command, &from, "in_progress", None);
                return Submitted::InProgress(state);
            }
            Begin::Taken => {
                self.metrics.commands_refused.inc(&["duplicate"]);
                self.audit(&command, &from, "refused", Some("id_taken"));
                return Submitted::Refused(Refusal::IdTaken);
            }
            Begin::New => {}
        }

        if let Some((why, result)) = immediate {
            self.metrics.commands_refused.inc(&[why]);
            let result = self.complete(&command, &from, result);
            return Submitted::Done {
                result: Box::new(result),
                replayed: false,
            };
        }

        let slot = match &command.request {
            Ok(Request::SessionExec(_)) => match self.execs.take(false) {
                Some(s) => Some(s),
                None => {
                    self.ledger.forget(&command.id);
                    self.metrics.commands_refused.inc(&["exec_limit"]);
                    self.audit(&command, &from, "refused", Some("exec_limit"));
                    return Submitted::Refused(Refusal::ExecLimit);
                }
            },
            _ => None,
        };
        let (reply, rx) = if want_reply {
            let (tx, rx) = bounded(1);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let id = command.id.clone();
        let sender = from.tenancy.clone();
        // Published before the job is handed over, so that a worker's
        // "running" can never come first; a refusal then says so.
        self.events.publish(command_event(
            id.as_str(),
            &kind,
            &action,
            &sender,
            CommandState::Queued { origin },
        ));
        let refused = |reason: RefusedReason| {
            self.ledger.forget(&id);
            self.events.publish(command_event(
                id.as_str(),
                &kind,
                &action,
                &sender,
                CommandState::Refused { reason },
            ));
        };
        let job = Job {
            command,
            from,
            _slot: slot,
            reply,
            stream,
        };
        // Jobs parked behind others of their session count as queued.
        let queued = if self.lanes.waiting() + self.queue.len() >= self.queue_capacity() {
            Err(TrySendError::Full(job))
        } else {
            self.queue.try_send(job)
        };
        match queued {
            Ok(()) => Submitted::Queued(rx),
            Err(TrySendError::Full(job)) => {
                refused(RefusedReason::QueueFull);
                self.audit(&job.command, &job.from, "refused", Some("queue_full"));
                self.metrics.commands_refused.inc(&["queue_full"]);
                log::warn!(command_id = id.as_str(), queue_size = self.config.queue_size; "command queue is full; refusing");
                Submitted::Refused(Refusal::QueueFull)
            }
            Err(TrySendError::Disconnected(job)) => {
                refused(RefusedReason::ShuttingDown);
                self.audit(&job.command, &job.from, "refused", Some("shutting_down"));
                Submitted::Refused(Refusal::ShuttingDown)
            }
        }
    }

    /// Records a finished command: ledger (stored, and for the server),
    /// metrics, event. Returns the result as it is to be answered: with
    /// code `not_durable` when it could not be stored.
    pub(crate) fn complete(
        &self,
        command: &Command,
        from: &Requester,
        result: CommandResult,
    ) -> CommandResult {
        let origin = from.origin;
        let report = origin == Origin::Coordination;
        let finished = self.ledger.finish(result, report);
        if let Err(e) = &finished.stored {
            log::error!(command_id = finished.result.id.as_str(); "cannot store the result: {e}; it is answered with code not_durable and kept in memory");
            self.metrics.results_unstored.inc();
        }
        let result = finished.result;
        if report {
            let _ = self.report_wake.0.try_send(());
        }
        self.metrics.commands_executed.inc(&[
            &command.kind,
            &command.action,
            result.status.as_str(),
        ]);
        self.events.publish(command_event(
            &result.id,
            &command.kind,
            &command.action,
            &from.tenancy,
            CommandState::Finished {
                status: result.status,
                error: result.error.clone(),
                duration_ms: result.duration_ms,
            },
        ));
        self.audit(
            command,
            from,
            result.status.as_str(),
            result.code.as_ref().map(|c| c.as_str()),
        );
        result
    }

    /// One line in the audit log: who sent `command` and what became of it.
    fn audit(&self, command: &Command, from: &Requester, outcome: &str, code: Option<&str>) {
        self.audit.write(&AuditEntry {
            who: Who::now(&from.caller, from.tenancy.tenant_str(), from.peer),
            origin: from.origin,
            id: command.id.as_str(),
            command: command.name(),
            session: command
                .request
                .as_ref()
                .ok()
                .and_then(|r| r.session_id())
                .map(|s| s.as_str()),
            outcome,
            code,
        });
    }

    /// One line in the audit log for an event stream that opened (`lasted`
    /// None) or ended.
    pub(crate) fn audit_stream(
        &self,
        caller: &str,
        tenant: Option<&str>,
        peer: Option<IpAddr>,
        route: &str,
        lasted: Option<std::time::Duration>,
    ) {
        #[derive(Serialize)]
        struct StreamEntry<'a> {
            #[serde(flatten)]
            who: Who<'a>,
            stream: &'a str,
            outcome: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            seconds: Option<u64>,
        }
        self.audit.write(&StreamEntry {
            who: Who::now(caller, tenant, peer),
            stream: route,
            outcome: if lasted.is_some() { "closed" } else { "opened" },
            seconds: lasted.map(|d| d.as_secs()),
        });
    }

    /// The rejection for a command the operator's policy does not let run.
    fn policy_rejection(&self, command: &Command) -> Option<CommandResult> {
        super::policy::refusal(&self.config, command).map(|why| {
            CommandResult::failure(
                command,
                &self.node_id,
                SystemTime::now(),
                Code::Rejected,
                why,
            )
        })
    }
}

/// An event about a command; `kind` and `action` are the command's
/// cleaned labels; only subscribers that reach `sender` see it.
pub(crate) fn command_event(
    id: &str,
    kind: &str,
    action: &str,
    sender: &Tenancy,
    state: CommandState,
) -> Event {
    Event::Command(CommandEvent {
        id: id.to_string(),
        kind: kind.to_string(),
        action: action.to_string(),
        state,
        sender: sender.clone(),
    })
}

/// Stops what an interrupted exec left running in its session, so that
/// nothing of it runs on. Returns a clause for the failed result's
/// message.
fn reap_interrupted(rt: &Runtime, command: &Command) -> String {
    let Ok(Request::SessionExec(p)) = &command.request else {
        return String::new();
    };
    // The session lives with one provider; the others find nothing. One
    // that cannot look (its engine is down) matters only if none found it.
    let mut reaped = 0;
    let mut failed = Vec::new();
    for provider in rt.registry.all() {
        match provider.reap_interrupted(&p.session_id, command.id.as_str()) {
            Ok(n) => reaped += n,
            Err(e) => failed.push(format!("{}: {e}", provider.kind().as_str())),
        }
    }
    if reaped > 0 {
        format!(
            "; its process was still running in session {} and has been killed",
            p.session_id
        )
    } else if !failed.is_empty() {
        let why = failed.join("; ");
        log::warn!(command_id = command.id.as_str(), session_id = p.session_id.as_str(); "cannot look for processes the interrupted exec left running: {why}");
        format!(
            "; its process may still be running in session {} (could not check: {why})",
            p.session_id
        )
    } else {
        String::new()
    }
}

/// Handles commands found unfinished in the journal at start, in the
/// order they were accepted. Queued ones never started, so they run now.
/// Running ones were interrupted: they may have run, wholly or in part,
/// and are reported as such (`agent_restarted`), never run twice.
/// (Read-only commands are never journaled, so a read-only command is
/// simply run again when the server re-sends it.) Call with the workers
/// running: queuing blocks until there is room.
pub(crate) fn recover(rt: &Runtime, unfinished: Vec<Unfinished>) {
    for u in unfinished {
        let command = match crate::protocol::command::from_value(u.command.clone()) {
            Ok(c) => c,
            Err(e) => {
                log::warn!(command_id = u.id.as_str(); "unfinished command cannot be parsed again ({e}); dropping it");
                if let Ok(id) = crate::protocol::CommandId::parse(&u.id) {
                    rt.ledger.forget(&id);
                }
                continue;
            }
        };
        if u.state == State::Running {
            log::warn!(command_id = u.id.as_str(); "command was running when the agent stopped; reporting its outcome as unknown, not running it again");
            let result = CommandResult::failure(
                &command,
                &rt.node_id,
                SystemTime::now(),
                Code::Restarted,
                format!(
                    "agent restarted during execution: the command may have run, wholly or in part, and was not run again; check its effects before sending it again under a new id{}",
                    reap_interrupted(rt, &command)
                ),
            );
            rt.complete(&command, &Requester::recovered(&u), result);
            continue;
        }
        if let Some(result) = rt.policy_rejection(&command) {
            // The config changed meanwhile: the policy of this start applies.
            rt.complete(&command, &Requester::recovered(&u), result);
            continue;
        }
        log::info!(command_id = u.id.as_str(); "running a command accepted before the restart");
        let slot = matches!(command.request, Ok(Request::SessionExec(_)))
            .then(|| rt.execs.take(true))
            .flatten();
        let job = Job {
            command,
            from: Requester::recovered(&u),
            _slot: slot,
            reply: None,
            stream: None,
        };
        if rt.queue.send(job).is_err() {
            log::warn!(command_id = u.id.as_str(); "workers are gone; the command stays queued for the next start");
        }
    }
}
