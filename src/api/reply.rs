//! Answers before they are written, and the one mapping from what went
//! wrong to an HTTP status ([`ApiError::status`]).
//!
//! Errors are `{"error": "...", "code": "..."}`, except a command refused
//! by its own result (invalid, rejected by policy): that answer is the
//! result itself, so the caller gets the same document as from
//! `GET /api/v1/commands/{id}`.

use crate::protocol::command::CommandError;
use crate::protocol::{Code, CommandId, CommandResult};
use crate::runtime::dispatch::Failure;
use crate::runtime::intake::Refusal;
use crate::store::ledger::State;
use serde_json::{json, Value};
use std::fmt;
use std::io::Cursor;
use tiny_http::{Header, Response};

/// An HTTP answer before it is written.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
    pub(crate) content_type: &'static str,
    pub(crate) headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub(crate) fn json(status: u16, body: &Value) -> Reply {
        Reply {
            status,
            body: body.to_string().into_bytes(),
            content_type: "application/json",
            headers: Vec::new(),
        }
    }

    pub(crate) fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    /// A command's result as the resource it is: 200 whatever its status
    /// (`GET /api/v1/commands/{id}`).
    pub(crate) fn result(result: &CommandResult) -> Reply {
        Reply {
            status: 200,
            body: serde_json::to_vec(result).unwrap_or_else(|_| b"{}".to_vec()),
            content_type: "application/json",
            headers: Vec::new(),
        }
    }

    /// The answer to a POSTed command that finished: its result, with the
    /// status [`ApiError::status`] gives a refusal.
    pub(crate) fn outcome(result: &CommandResult) -> Reply {
        match ApiError::refused_by_result(result) {
            Some(e) => e.reply(),
            None => Reply::result(result),
        }
    }

    /// 202 with where to find the result.
    pub(crate) fn accepted(id: &CommandId, state: State) -> Reply {
        let location = format!("/api/v1/commands/{id}");
        Reply::json(
            202,
            &json!({"id": id, "status": state.as_str(), "location": location}),
        )
        .header("Location", location)
    }

    /// The body as JSON (for a reply written into a stream).
    pub(crate) fn body_json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub(crate) fn into_response(self) -> Response<Cursor<Vec<u8>>> {
        let mut r = Response::from_data(self.body).with_status_code(self.status);
        let mut add = |name: &str, value: &str| {
            if let Ok(h) = Header::from_bytes(name.as_bytes(), value.as_bytes()) {
                r.add_header(h);
            }
        };
        add("Content-Type", self.content_type);
        add("Cache-Control", "no-store");
        for (name, value) in &self.headers {
            add(name, value);
        }
        r
    }
}

/// Why a request was not served as asked.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// The client's address is outside `allowed_ips`.
    Forbidden,
    /// No token, or not one the agent accepts.
    Unauthorized,
    /// A valid token without the scope needed; says which.
    ForbiddenScope(String),
    NoRoute(String),
    MethodNotAllowed {
        method: String,
        route: &'static str,
        allow: String,
    },
    BodyTooLarge(u64),
    BodyUnreadable(String),
    /// A body that cannot become a command at all.
    BadCommand(CommandError),
    /// A command id in a path that is not one.
    BadId(String),
    UnknownCommand(CommandId),
    /// The runtime did not take the command (queue full, shutting down,
    /// ledger not writable).
    Refused {
        why: Refusal,
        queued: usize,
        busy: usize,
    },
    /// Shutdown came while the request waited for its command.
    Interrupted(String),
    TooManyStreams(usize),
    /// A session listing that failed.
    Sessions(Failure),
    DebugOff,
    /// The command ran and its result refuses it: invalid (400), not
    /// allowed by policy (403), or its session (or image) does not exist
    /// for this caller (404). The answer's body is the result.
    RefusedByResult(Box<CommandResult>),
}

impl ApiError {
    /// The one mapping to an HTTP status and the error's `code`.
    pub(crate) fn status(&self) -> (u16, &'static str) {
        match self {
            ApiError::Forbidden => (403, "forbidden"),
            ApiError::Unauthorized => (401, "unauthorized"),
            ApiError::ForbiddenScope(_) => (403, "forbidden_scope"),
            ApiError::NoRoute(_) | ApiError::DebugOff | ApiError::UnknownCommand(_) => {
                (404, "not_found")
            }
            ApiError::MethodNotAllowed { .. } => (405, "method_not_allowed"),
            ApiError::BodyTooLarge(_) => (413, "body_too_large"),
            ApiError::BodyUnreadable(_) => (400, "bad_body"),
            ApiError::BadCommand(CommandError::Malformed(_)) => (400, "malformed_json"),
            ApiError::BadCommand(CommandError::NotAnObject) => (400, "malformed_command"),
            ApiError::BadCommand(CommandError::MissingId | CommandError::InvalidId(_))
            | ApiError::BadId(_) => (400, "invalid_id"),
            ApiError::Refused {
                why: Refusal::QueueFull,
                ..
            } => (429, "queue_full"),
            ApiError::Refused {
                why: Refusal::ExecLimit,
                ..
            } => (429, "too_many_execs"),
            ApiError::Refused {
                why: Refusal::ShuttingDown,
                ..
            }
            | ApiError::Interrupted(_) => (503, "shutting_down"),
            ApiError::Refused {
                why: Refusal::StoreFailed,
                ..
            } => (503, "store_failed"),
            ApiError::Refused {
                why: Refusal::IdTaken,
                ..
            } => (409, "id_taken"),
            ApiError::TooManyStreams(_) => (503, "too_many_streams"),
            ApiError::Sessions(f) => match f.code {
                Code::Invalid => (400, "invalid_command"),
                Code::Rejected => (403, "rejected"),
                // Any other failure to list is a provider that cannot answer.
                _ => (503, "provider_unavailable"),
            },
            ApiError::RefusedByResult(r) => match r.code {
                Some(Code::Rejected) => (403, "rejected"),
                Some(Code::NotFound) => (404, "not_found"),
                _ => (400, "invalid_command"),
            },
        }
    }

    /// The refusal a finished command's result carries, if it is one.
    fn refused_by_result(result: &CommandResult) -> Option<ApiError> {
        matches!(
            result.code,
            Some(Code::Invalid | Code::Rejected | Code::NotFound)
        )
        .then(|| ApiError::RefusedByResult(Box::new(result.clone())))
    }

    pub(crate) fn reply(self) -> Reply {
        let (status, code) = self.status();
        let reply = match &self {
            ApiError::RefusedByResult(r) => {
                return Reply {
                    status,
                    ..Reply::result(r)
                }
            }
            _ => Reply::json(status, &json!({"error": self.to_string(), "code": code})),
        };
        match self {
            ApiError::Unauthorized => reply.header("WWW-Authenticate", "Bearer"),
            ApiError::MethodNotAllowed { allow, .. } => reply.header("Allow", allow),
            ApiError::Refused {
                why: Refusal::QueueFull | Refusal::ExecLimit,
                ..
            } => reply.header("Retry-After", "1"),
            _ => reply,
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Forbidden => f.write_str("your address is not in allowed_ips"),
            ApiError::Unauthorized => f.write_str(
                "missing or invalid bearer token; pass Authorization: Bearer <api_token>",
            ),
            ApiError::ForbiddenScope(why) => write!(f, "{why}"),
            ApiError::NoRoute(path) => write!(f, "no route {path}"),
            ApiError::MethodNotAllowed {
                method,
                route,
                allow,
            } => write!(f, "{method} is not allowed on {route}; use {allow}"),
            ApiError::BodyTooLarge(max) => write!(
                f,
                "request body is larger than limits.max_body ({})",
                crate::protocol::size::format(*max)
            ),
            ApiError::BodyUnreadable(e) => write!(f, "could not read the request body: {e}"),
            ApiError::BadCommand(e) => write!(f, "{e}"),
            ApiError::BadId(e) => write!(f, "{e}"),
            ApiError::UnknownCommand(id) => write!(
                f,
                "no result stored for command {id} (never seen, or pruned)"
            ),
            ApiError::Refused {
                why: Refusal::QueueFull,
                queued,
                busy,
            } => write!(
                f,
                "the command queue is full ({queued} queued, {busy} workers busy); retry shortly"
            ),
            ApiError::Refused {
                why: Refusal::ExecLimit,
                queued,
                ..
            } => write!(
                f,
                "limits.max_concurrent_execs ({queued}) execs are queued or running; retry shortly"
            ),
            ApiError::Refused {
                why: Refusal::ShuttingDown,
                ..
            } => f.write_str("the agent is shutting down; retry after it restarts"),
            ApiError::Refused {
                why: Refusal::StoreFailed,
                ..
            } => f.write_str(
                "the agent could not record the command (is cache_dir full or read-only?); see the agent log",
            ),
            ApiError::Refused {
                why: Refusal::IdTaken,
                ..
            } => f.write_str(
                "this command id is used by another caller's command; send the command with a fresh id",
            ),
            ApiError::Interrupted(m) => f.write_str(m),
            ApiError::TooManyStreams(max) => write!(f, "at most {max} event streams at once"),
            ApiError::Sessions(failure) => f.write_str(&failure.message),
            ApiError::DebugOff => {
                f.write_str("debug routes are off; start with VENDETTA_DEBUG_PPROF=true")
            }
            ApiError::RefusedByResult(r) => f.write_str(&r.error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::result::Status;

    #[test]
    fn every_error_has_its_status_code_and_headers() {
        let cases: Vec<(ApiError, u16, &str)> = vec![
            (ApiError::Forbidden, 403, "forbidden"),
            (ApiError::Unauthorized, 401, "unauthorized"),
            (ApiError::NoRoute("/x".into()), 404, "not_found"),
            (ApiError::BodyTooLarge(1024), 413, "body_too_large"),
            (
                ApiError::BadCommand(CommandError::NotAnObject),
                400,
                "malformed_command",
            ),
            (
                ApiError::Refused {
                    why: Refusal::QueueFull,
                    queued: 2,
                    busy: 1,
                },
                429,
                "queue_full",
            ),
            (
                ApiError::Refused {
                    why: Refusal::StoreFailed,
                    queued: 0,
                    busy: 0,
                },
                503,
                "store_failed",
            ),
            (
                ApiError::Refused {
                    why: Refusal::IdTaken,
                    queued: 0,
                    busy: 0,
                },
                409,
                "id_taken",
            ),
            (
                ApiError::Sessions(Failure {
                    code: Code::Failed,
                    message: "docker: gone".into(),
                }),
                503,
                "provider_unavailable",
            ),
        ];
        for (e, status, code) in cases {
            assert_eq!(e.status(), (status, code), "{e}");
            let message = e.to_string();
            let reply = e.reply();
            assert_eq!(reply.status, status);
            let body: Value = serde_json::from_slice(&reply.body).unwrap();
            assert_eq!(body, json!({"error": message, "code": code}));
        }
        let full = ApiError::Refused {
            why: Refusal::QueueFull,
            queued: 2,
            busy: 1,
        };
        assert_eq!(
            full.to_string(),
            "the command queue is full (2 queued, 1 workers busy); retry shortly"
        );
        assert_eq!(full.reply().headers, vec![("Retry-After", "1".to_string())]);
    }

    #[test]
    fn the_contract_document_lists_every_error_status_and_code() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/protocol.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let id = CommandId::parse("c1").unwrap();
        let failed = |code| {
            let mut r = CommandResult::new(
                "c1",
                &Value::Null,
                "n",
                Status::Failed,
                std::time::SystemTime::now(),
            );
            r.code = Some(code);
            Box::new(r)
        };
        let every = [
            ApiError::Forbidden,
            ApiError::Unauthorized,
            ApiError::ForbiddenScope(
                "jwt:ci lacks the scope session:exec that session.exec needs".into(),
            ),
            ApiError::NoRoute("/x".into()),
            ApiError::MethodNotAllowed {
                method: "PUT".into(),
                route: "/health",
                allow: "GET, HEAD".into(),
            },
            ApiError::BodyTooLarge(1),
            ApiError::BodyUnreadable("reset".into()),
            ApiError::BadCommand(CommandError::Malformed("eof".into())),
            ApiError::BadCommand(CommandError::NotAnObject),
            ApiError::BadCommand(CommandError::MissingId),
            ApiError::BadId("x".into()),
            ApiError::UnknownCommand(id),
            ApiError::Refused {
                why: Refusal::QueueFull,
                queued: 1,
                busy: 1,
            },
            ApiError::Refused {
                why: Refusal::ShuttingDown,
                queued: 0,
                busy: 0,
            },
            ApiError::Refused {
                why: Refusal::StoreFailed,
                queued: 0,
                busy: 0,
            },
            ApiError::Refused {
                why: Refusal::ExecLimit,
                queued: 16,
                busy: 0,
            },
            ApiError::Interrupted("stopping".into()),
            ApiError::TooManyStreams(32),
            ApiError::Sessions(Failure {
                code: Code::Invalid,
                message: "bad".into(),
            }),
            ApiError::Sessions(Failure {
                code: Code::Unavailable,
                message: "down".into(),
            }),
            ApiError::DebugOff,
            ApiError::RefusedByResult(failed(Code::Invalid)),
            ApiError::RefusedByResult(failed(Code::Rejected)),
        ];
        for e in every {
            let (status, code) = e.status();
            let row = doc
                .lines()
                .find(|l| l.starts_with(&format!("| {status} |")))
                .unwrap_or_else(|| panic!("docs/protocol.md has no row for HTTP {status}"));
            assert!(
                row.contains(&format!("`{code}`")),
                "the HTTP {status} row does not name `{code}`: {row}"
            );
        }
    }
}
