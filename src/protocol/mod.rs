//! The wire contract (`../shared/protocol.md`): commands, results and the
//! value types they carry. Everything from outside is parsed here into types
//! that can only hold valid values.

pub mod command;
pub mod duration;
pub mod ids;
pub mod result;
pub mod size;

pub use command::{Command, CommandError, FieldError, ProviderKind, Request};
pub use ids::{CommandId, SessionId};
pub use result::{codes, CommandResult, Status};
