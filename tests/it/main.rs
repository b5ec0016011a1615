//! Integration tests: the real binary, over HTTP and its CLI.

mod api;
mod cli;
mod docs;
mod qemu;
mod runtime;
mod util;
