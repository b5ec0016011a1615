//! Integration tests: the real binary, over HTTP and its CLI.

mod api;
mod cli;
mod docker;
mod docs;
mod runtime;
mod util;
