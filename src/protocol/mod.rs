//! The wire contract (`../shared/protocol.md`): commands, results and the
//! value types they carry. Everything from outside is parsed here into types
//! that can only hold valid values.

pub(crate) mod command;
pub(crate) mod duration;
pub(crate) mod event;
pub(crate) mod ids;
pub(crate) mod link;
pub(crate) mod result;
pub(crate) mod session;
pub(crate) mod size;

pub(crate) use command::{Command, ProviderKind};
pub(crate) use ids::{CommandId, SessionId};
pub(crate) use result::{Code, CommandResult};
