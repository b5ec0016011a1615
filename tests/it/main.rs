//! Integration tests: the real binary, over HTTP and its CLI.

mod api;
mod cli;
mod connect;
mod coord;
mod docker;
mod docs;
mod journal;
mod jwt;
mod longrun;
mod lxc;
mod qemu;
mod runtime;
mod security;
mod socket;
mod tenants;
mod tls;
mod util;
