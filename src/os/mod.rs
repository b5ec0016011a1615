//! The operating system seam: every syscall the agent makes through libc,
//! each behind one safe function, and the facts it reads from /proc.
//!
//! - [`fs`]: files written atomically; statfs and statvfs.
//! - [`fd`]: poll(2) over several descriptors; non-blocking pipes.
//! - [`process`]: processes from /proc, kill(2), process groups, pidfds,
//!   uids; killing a session's process tree.
//! - [`socket`]: a Unix-socket connect bounded by a deadline.
//! - [`host`]: host facts from /proc, uname, statvfs and sysconf.
//!
//! Every `unsafe` block of the agent lives here, each with its SAFETY note
//! (`grep -rn unsafe src` outside `src/os` finds nothing). A wrapper takes
//! and returns owned or borrowed Rust values only, so no caller handles a
//! raw pointer or descriptor number.
//!
//! May not touch: configuration, the wire protocol, channels, HTTP or
//! providers. These are plain functions over paths, pids and descriptors.

pub(crate) mod fd;
pub(crate) mod fs;
pub(crate) mod host;
pub(crate) mod mount;
pub(crate) mod process;
pub(crate) mod random;
pub(crate) mod socket;
