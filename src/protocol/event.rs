//! Events on `GET /api/v1/events`: what happened to a command or a
//! session, typed here and serialised once, at the edge.
//!
//! Every event's JSON also carries `seq` (its SSE id, growing across
//! restarts) and `time`; `runtime::events` adds both when it publishes.

use super::command::{Origin, ProviderKind};
use super::result::Status;
use super::session::{Session, SessionStatus};
use super::tenant::{tenant_of, Tenancy};
use serde::Serialize;

/// One event, named on the stream (`event: command` or `event: session`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub(crate) enum Event {
    Command(CommandEvent),
    Session(SessionEvent),
}

impl Event {
    /// The SSE event name.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Event::Command(_) => "command",
            Event::Session(_) => "session",
        }
    }

    /// Whether a subscriber of `reach` may see this event: a session's if
    /// it reaches the session's tenant, a command's if it reaches its
    /// sender.
    pub(crate) fn seen_by(&self, reach: &Tenancy) -> bool {
        match self {
            Event::Command(c) => reach.reaches_command(&c.sender),
            Event::Session(s) => reach.reaches(s.tenant.as_deref()),
        }
    }
}

/// A command moved along its path.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct CommandEvent {
    pub(crate) id: String,
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) action: String,
    #[serde(flatten)]
    pub(crate) state: CommandState,
    /// Who sent it; decides who sees the event, not sent.
    #[serde(skip)]
    pub(crate) sender: Tenancy,
}

/// Where the command is, with what that step adds.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub(crate) enum CommandState {
    /// Accepted and queued (published before a worker can take it).
    Queued {
        origin: Origin,
    },
    /// Not queued after all.
    Refused {
        reason: RefusedReason,
    },
    Running,
    Finished {
        status: Status,
        error: String,
        duration_ms: f64,
    },
}

/// Why a command announced as queued was not queued after all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RefusedReason {
    QueueFull,
    ShuttingDown,
}

/// A session changed, by a command or behind the agent's back.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct SessionEvent {
    pub(crate) id: String,
    pub(crate) provider: ProviderKind,
    pub(crate) event: SessionChange,
    pub(crate) status: SessionState,
    /// Only on changes the agent noticed (`discovered`, `status`,
    /// `vanished`): the main process's exit code, `null` while it runs.
    /// Absent on the events of the agent's own commands.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) exit_code: Option<Option<i32>>,
    /// The session's tenant (its `vendetta.tenant` label).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tenant: Option<String>,
    /// What the runtime itself reported, when it did (`qmp:SHUTDOWN`);
    /// absent on changes a listing noticed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cause: Option<String>,
}

impl SessionEvent {
    /// A change the agent noticed in a listing: with the exit code.
    pub(crate) fn noticed(session: &Session, change: SessionChange) -> SessionEvent {
        SessionEvent {
            exit_code: Some(session.exit_code),
            ..SessionEvent::by_command(session, change)
        }
    }

    /// What one of the agent's commands did to `session`.
    pub(crate) fn by_command(session: &Session, change: SessionChange) -> SessionEvent {
        SessionEvent {
            id: session.id.clone(),
            provider: session.provider,
            event: change,
            status: SessionState::Is(session.status),
            exit_code: None,
            tenant: tenant_of(&session.labels).map(str::to_string),
            cause: None,
        }
    }
}

/// What happened to the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum SessionChange {
    Created,
    Started,
    Stopped,
    Destroyed,
    /// Found by a listing (e.g. after a restart) without a command of ours.
    Discovered,
    /// Its status changed without a command (a container exited).
    Status,
    /// Gone from its provider without a command.
    Vanished,
}

impl SessionChange {
    #[cfg(test)]
    pub(crate) const ALL: [SessionChange; 7] = [
        SessionChange::Created,
        SessionChange::Started,
        SessionChange::Stopped,
        SessionChange::Destroyed,
        SessionChange::Discovered,
        SessionChange::Status,
        SessionChange::Vanished,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SessionChange::Created => "created",
            SessionChange::Started => "started",
            SessionChange::Stopped => "stopped",
            SessionChange::Destroyed => "destroyed",
            SessionChange::Discovered => "discovered",
            SessionChange::Status => "status",
            SessionChange::Vanished => "vanished",
        }
    }
}

/// A session's status in an event: one of a live session's, or
/// `destroyed`, which no live session has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub(crate) enum SessionState {
    Is(SessionStatus),
    #[serde(serialize_with = "destroyed")]
    Destroyed,
}

fn destroyed<S: serde::Serializer>(s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("destroyed")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_keep_their_wire_shape() {
        let queued = Event::Command(CommandEvent {
            id: "c1".into(),
            kind: "session".into(),
            action: "exec".into(),
            state: CommandState::Queued {
                origin: Origin::Api,
            },
            sender: Tenancy::default(),
        });
        assert_eq!(queued.kind(), "command");
        assert_eq!(
            serde_json::to_value(&queued).unwrap(),
            json!({"id": "c1", "type": "session", "action": "exec", "state": "queued", "origin": "api"})
        );
        let finished = Event::Command(CommandEvent {
            id: "c1".into(),
            kind: "session".into(),
            action: "exec".into(),
            state: CommandState::Finished {
                status: Status::Timeout,
                error: "slow".into(),
                duration_ms: 1.5,
            },
            sender: Tenancy::everything(),
        });
        assert_eq!(
            serde_json::to_value(&finished).unwrap(),
            json!({"id": "c1", "type": "session", "action": "exec", "state": "finished",
                   "status": "timeout", "error": "slow", "duration_ms": 1.5})
        );
        let refused = CommandState::Refused {
            reason: RefusedReason::QueueFull,
        };
        assert_eq!(
            serde_json::to_value(&refused).unwrap(),
            json!({"state": "refused", "reason": "queue_full"})
        );
        let gone = Event::Session(SessionEvent {
            id: "s1".into(),
            provider: ProviderKind::Lxc,
            event: SessionChange::Destroyed,
            status: SessionState::Destroyed,
            exit_code: None,
            tenant: None,
            cause: None,
        });
        assert_eq!(gone.kind(), "session");
        let tenant = |t: &str| Tenancy {
            tenant: Some(super::super::tenant::Tenant::parse(t).unwrap()),
            all: false,
        };
        assert!(queued.seen_by(&Tenancy::default()) && !queued.seen_by(&tenant("a")));
        assert!(!finished.seen_by(&Tenancy::default()), "an admin's command");
        assert!(finished.seen_by(&Tenancy::everything()));
        let of_a = Event::Session(SessionEvent {
            tenant: Some("a".into()),
            ..match &gone {
                Event::Session(s) => s.clone(),
                Event::Command(_) => unreachable!(),
            }
        });
        assert!(of_a.seen_by(&tenant("a")) && !of_a.seen_by(&tenant("b")));
        assert!(!of_a.seen_by(&Tenancy::default()) && of_a.seen_by(&Tenancy::everything()));
        assert_eq!(serde_json::to_value(&of_a).unwrap()["tenant"], "a");
        assert_eq!(
            serde_json::to_value(&gone).unwrap(),
            json!({"id": "s1", "provider": "lxc", "event": "destroyed", "status": "destroyed"})
        );
        let exited = SessionEvent {
            status: SessionState::Is(SessionStatus::Exited),
            event: SessionChange::Status,
            exit_code: Some(Some(3)),
            ..match gone {
                Event::Session(s) => s,
                Event::Command(_) => unreachable!(),
            }
        };
        assert_eq!(
            serde_json::to_value(&exited).unwrap(),
            json!({"id": "s1", "provider": "lxc", "event": "status", "status": "exited", "exit_code": 3})
        );
        let running = SessionEvent {
            status: SessionState::Is(SessionStatus::Running),
            exit_code: Some(None),
            ..exited
        };
        assert_eq!(
            serde_json::to_string(&running).unwrap(),
            r#"{"id":"s1","provider":"lxc","event":"status","status":"running","exit_code":null}"#
        );
    }
}
