//! vendetta node agent.
//!
//! One static binary: `vendetta agent start` runs the agent in the
//! foreground; every other verb is a client of its local API.

mod agent;
mod api;
mod cli;
mod config;
mod coord;
mod logging;
mod metrics;
mod os;
mod protocol;
mod providers;
mod runtime;
mod store;
mod util;

/// The version every document and the User-Agent carry.
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Runs the command line `args` (without the program name) and returns the
/// process exit code.
pub fn main(args: Vec<std::ffi::OsString>) -> i32 {
    cli::main(args)
}
