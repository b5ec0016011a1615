//! The command line: `vendetta agent …` runs and manages the agent;
//! `session`, `service` and `system` are a client of its local API.
//!
//! Exit codes (one mapping, `CliError::exit_code`): 0 success; 1 the
//! command failed; 2 usage or config error; 3 the agent is not running
//! (LSB, for `agent status` and every client verb); `session exec` exits
//! with the command's own code, 124 when it timed out.
//!
//! `agent.rs` runs and manages the agent on this host; `verbs.rs` holds the
//! API client verbs, `client.rs` the HTTP client they share and
//! `render.rs` how results are printed.
//!
//! May not touch: the runtime or providers of this process; the client
//! verbs reach the agent only through its local API.

mod agent;
pub(crate) mod client;
mod render;
mod verbs;

use crate::cli::client::ClientError;
use crate::config::ConfigError;
use crate::protocol::duration;
use pico_args::Arguments;
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub(crate) const EXIT_OK: i32 = 0;
pub(crate) const EXIT_FAILED: i32 = 1;
pub(crate) const EXIT_USAGE: i32 = 2;
pub(crate) const EXIT_NOT_RUNNING: i32 = 3;
pub(crate) const EXIT_TIMEOUT: i32 = 124;

#[derive(Debug)]
pub(crate) enum CliError {
    Usage(String),
    Config(ConfigError),
    Agent(crate::agent::AgentError),
    Client(ClientError),
    /// A command ran and failed; the message is the result's error.
    Failed(String),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(m) => write!(f, "{m}"),
            CliError::Config(e) => write!(f, "{e}"),
            CliError::Agent(e) => write!(f, "{e}"),
            CliError::Client(e) => write!(f, "{e}"),
            CliError::Failed(m) => write!(f, "{m}"),
        }
    }
}

impl CliError {
    pub(crate) fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) | CliError::Config(_) => EXIT_USAGE,
            CliError::Client(ClientError::Config(_)) => EXIT_USAGE,
            CliError::Client(ClientError::Unreachable { .. }) => EXIT_NOT_RUNNING,
            CliError::Agent(_) | CliError::Client(_) | CliError::Failed(_) => EXIT_FAILED,
        }
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        CliError::Client(e)
    }
}

impl From<pico_args::Error> for CliError {
    fn from(e: pico_args::Error) -> Self {
        CliError::Usage(e.to_string())
    }
}

const TOP_HELP: &str = "\
vendetta - node agent for vendetta development environments

Usage: vendetta <command> [options]

Agent:
  agent start             run the agent in the foreground
  agent stop              stop the running agent
  agent status            is the agent running, and how is it
  agent config            print the default config, or check one
  agent connect URL       register with a server and save its URL
  agent install USER@HOST install the agent on another machine

Client of the local API:
  session create|start|stop|destroy|list|exec
  service list|status
  system status|info|health

Options:
  -h, --help              help for any command (vendetta session exec --help)
  -V, --version           print the version

See vendetta(1), vendetta-agent(1) and vendetta-agent.yaml(5).
";

/// Runs the CLI; returns the process exit code.
pub(crate) fn main(argv: Vec<OsString>) -> i32 {
    // Everything after the first "--" is a command line, not options.
    let split = argv.iter().position(|a| a == "--");
    let (head, tail): (Vec<OsString>, Vec<String>) = match split {
        Some(i) => (
            argv[..i].to_vec(),
            argv[i + 1..]
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
        ),
        None => (argv, Vec::new()),
    };
    match run(head, tail) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vendetta: {e}");
            e.exit_code()
        }
    }
}

fn run(head: Vec<OsString>, tail: Vec<String>) -> Result<i32, CliError> {
    let mut args = Arguments::from_vec(head);
    if args.contains(["-V", "--version"]) {
        println!("vendetta {}", crate::VERSION);
        return Ok(EXIT_OK);
    }
    let help = args.contains(["-h", "--help"]);
    let group = args.subcommand()?;
    match group.as_deref() {
        None | Some("help") => {
            print!("{TOP_HELP}");
            Ok(if help || group.is_some() {
                EXIT_OK
            } else {
                EXIT_USAGE
            })
        }
        Some("agent") => agent::agent(args, help, tail),
        Some("session") => verbs::session(args, help, tail),
        Some("service") => {
            no_tail(&tail)?;
            verbs::service(args, help)
        }
        Some("system") => {
            no_tail(&tail)?;
            verbs::system(args, help)
        }
        Some(other) => Err(CliError::Usage(format!(
            "unknown command {other:?}; run `vendetta --help` for the list"
        ))),
    }
}

fn config_flag(args: &mut Arguments) -> Result<Option<PathBuf>, CliError> {
    Ok(args.opt_value_from_str(["-c", "--config"])?)
}

/// Refuses leftover arguments, naming them.
fn finish(args: Arguments) -> Result<(), CliError> {
    let rest = args.finish();
    if rest.is_empty() {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "unexpected argument(s): {}; see --help",
            rest.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        )))
    }
}

fn need_free(args: &mut Arguments, what: &str) -> Result<String, CliError> {
    args.opt_free_from_str::<String>()?
        .ok_or_else(|| CliError::Usage(format!("missing {what}; see --help")))
}

fn no_tail(tail: &[String]) -> Result<(), CliError> {
    if tail.is_empty() {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "unexpected arguments after --: {}",
            tail.join(" ")
        )))
    }
}

fn opt_duration(
    args: &mut Arguments,
    keys: [&'static str; 2],
) -> Result<Option<Duration>, CliError> {
    let v: Option<String> = args.opt_value_from_str(keys)?;
    v.map(|s| duration::parse(&s).map_err(|e| CliError::Usage(format!("{}: {e}", keys[1]))))
        .transpose()
}
