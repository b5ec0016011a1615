//! The wire contract (`docs/protocol.md`): commands, results, events and
//! the value types they carry. Everything from outside is parsed here into
//! types that can only hold valid values; everything that goes out is
//! serialised from types here.
//!
//! Owns: the shapes on the wire. May not touch: anything that does I/O.

pub(crate) mod command;
pub(crate) mod duration;
pub(crate) mod event;
pub(crate) mod ids;
pub(crate) mod link;
pub(crate) mod result;
pub(crate) mod scope;
pub(crate) mod session;
pub(crate) mod size;
pub(crate) mod tenant;
pub(crate) mod time;

pub(crate) use command::{Command, ProviderKind};

/// A duration or size that does not parse; says what is expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ValueError {
    pub(crate) what: &'static str,
    pub(crate) value: String,
    pub(crate) hint: &'static str,
}

impl std::fmt::Display for ValueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid {} {:?}: {}", self.what, self.value, self.hint)
    }
}

impl std::error::Error for ValueError {}
pub(crate) use ids::{CommandId, SessionId};
pub(crate) use result::{Code, CommandResult};

#[cfg(test)]
mod tests {
    use super::event::SessionChange;
    use super::link::LinkStatus;
    use super::result::Status;
    use super::Code;

    /// The contract in docs/protocol.md, which ships with the project.
    pub(crate) fn contract() -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/protocol.md");
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn the_contract_document_names_every_value_the_code_sends() {
        let doc = contract();
        let quoted = |v: &str| format!("`{v}`");
        // "`session` {create, start, ...}": every action of every type.
        for (kind, actions) in super::command::ACTIONS {
            let listed = format!("`{kind}` {{{}}}", actions.join(", "));
            assert!(doc.contains(&listed), "docs/protocol.md lacks {listed}");
        }
        for code in Code::ALL {
            assert!(doc.contains(&quoted(code.as_str())), "code {code}");
        }
        for status in [
            Status::Success,
            Status::Failed,
            Status::Timeout,
            Status::Rejected,
        ] {
            assert!(doc.contains(&quoted(status.as_str())), "status {status:?}");
        }
        for change in SessionChange::ALL {
            assert!(doc.contains(&quoted(change.as_str())), "event {change:?}");
        }
        for state in ["queued", "refused", "running", "finished"] {
            assert!(
                doc.contains(&format!("state: \"{state}\"")),
                "state {state}"
            );
        }
        for link in [
            LinkStatus::Offline,
            LinkStatus::Connecting,
            LinkStatus::Connected,
            LinkStatus::Disconnected,
            LinkStatus::Refused,
        ] {
            assert!(doc.contains(&quoted(link.as_str())), "link state {link}");
        }
    }
}
