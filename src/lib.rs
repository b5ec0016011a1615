//! vendetta node agent.
//!
//! One static binary: `vendetta agent start` runs the agent in the
//! foreground; the other verbs are a client of its local API. The runtime
//! is threads joined by crossbeam channels; see [`agent`] for the diagram
//! and who owns which channel.
//!
//! Modules by what they own: [`protocol`] the wire types, [`config`] the
//! configuration, [`store`] durable local state, [`providers`] where
//! sessions live, [`agent`] the threads and the command path, [`api`] the
//! local HTTP API, [`cli`] and [`client`] the command line.

pub mod agent;
pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod coord;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub mod providers;
pub mod store;
pub mod sys;
pub mod util;
