//! Running one lxc tool: its argv through [`super::runner`] with a timeout
//! and `LC_ALL=C` (the messages we parse are English), a timeout or a
//! failure to run turned into an error that names the tool and the
//! container, and stderr kept for the message when it exits non-zero.

use super::argv::step_name;
use super::runner::{self, Outcome};
use super::{LxcError, LxcProvider};
use std::ffi::OsString;
use std::time::Duration;

/// Enough of a tool's output for parsing and error messages.
const TOOL_OUTPUT: usize = 256 * 1024;

impl LxcProvider {
    /// Runs one lxc tool; a timeout or a failure to run becomes an error,
    /// a non-zero exit is left to the caller.
    pub(crate) fn tool(
        &self,
        tool: &str,
        args: Vec<OsString>,
        timeout: Duration,
    ) -> Result<Outcome, LxcError> {
        let step = step_name(tool, &args);
        let mut cmd = runner::command(tool, args);
        cmd.env("LC_ALL", "C");
        let out = runner::run(
            &mut cmd,
            None,
            timeout,
            TOOL_OUTPUT,
            &mut crate::providers::output::Discard,
        )
        .map_err(|source| LxcError::Run {
            step: step.clone(),
            source,
        })?;
        if out.timed_out {
            return Err(LxcError::Timeout {
                step,
                after: timeout,
            });
        }
        log::debug!("{step} exited {:?} in {:?}", out.code(), out.elapsed);
        Ok(out)
    }

    /// The error for a tool that ran and exited non-zero: its stderr says
    /// why.
    pub(crate) fn failed(tool: &str, args: &[OsString], out: &Outcome) -> LxcError {
        LxcError::Tool {
            step: step_name(tool, args),
            code: out.code(),
            stderr: out.stderr_text(),
        }
    }
}
