//! The operating system seam: files written atomically, process trees and
//! signals, host facts from /proc, statvfs and uname. Every `unsafe` block
//! of the agent lives here or in a provider's own FFI seam, each with its
//! SAFETY note.
//!
//! May not touch: configuration, the wire protocol, channels or HTTP. These
//! are plain functions over paths, pids and file descriptors.

pub(crate) mod fs;
pub(crate) mod host;
pub(crate) mod proctree;
