//! vendetta node agent.
//!
//! One static binary: `vendetta agent start` runs the agent in the
//! foreground; every other verb is a client of its local API (`cli`).
//!
//! # Threads and channels
//!
//! ```text
//!              ┌──────────── control (bounded 16) ─────────────┐
//!   signals ───┤  SIGTERM/SIGINT/SIGHUP; any core thread's panic ├──▶ main (agent::run)
//!              └───────────────────────────────────────────────┘    owns: shutdown sender,
//!                                                                         the Api, the link
//!   api-accept ─▶ api-conn (one per connection, ≤ 256) ──┐
//!   poller (coord) ─────────────────────────────────────┴─ Runtime::submit
//!                                                              │ dedupe (ledger), policy
//!   recover at start (runtime::intake) ── queues journaled ───┤
//!                                                              ▼
//!                                   jobs (bounded queue_size; sender in Runtime)
//!                                                              ▼
//!                                  worker-N ── provider (Docker, LXC, QEMU)
//!                                     │ reply (bounded 1) ──▶ the api-conn waiting, if any
//!                                     │ chunks (bounded 64) ─▶ the api-conn streaming, if any
//!                                     │ (lanes: a session's commands in order; parked jobs
//!                                     │  come back on an unbounded ready channel)
//!                                     ├─▶ ledger (journal) ── report wake (bounded 1) ──▶ reporter
//!                                     └─▶ events ── per subscriber (bounded 256) ──▶ api-conn (SSE)
//!   monitor: provider health, session table (publishes changes), journal
//!     upkeep (results kept in memory stored, retention, compaction)
//!   docker-events: follows the engine's /events, keeps Docker's session table
//!   qmp-events: polls the QMP connections held per VM; QEMU's events go to
//!     the session table and the event stream (weak link to the runtime)
//!   heartbeat (coord): every interval, on its own connection
//!   api-conn also reads the ledger (GET a result) and lists sessions
//!   through the runtime (GET /api/v1/sessions: ≤ workers at once)
//! ```
//!
//! Shutdown is a channel whose sender `main` drops: the workers, the
//! monitor, the link's threads and the event streams all select on it.
//! The providers' watchers (docker-events, qmp-events) hold their
//! provider weakly and end once it is dropped.
//! Every join has a deadline (`shutdown_timeout`).
//!
//! # The path of one command
//!
//! 1. The API (`api::routes`) or the poller (`coord::poller`) parses the
//!    body into a `protocol` `Command` (a bad field becomes a failed
//!    result, never a crash) and calls `Runtime::submit`.
//! 2. `runtime::intake`: a known id answers with the stored result; an
//!    invalid or disallowed command gets its failed result at once; else
//!    the ledger journals it (changes only) and it is queued, or refused
//!    when the queue is full (429 / left with the server).
//! 3. `runtime::workers`: a worker marks it running and runs it
//!    (`runtime::dispatch` routes it to the provider that owns the
//!    session); a panic becomes a failed result.
//! 4. `Runtime::complete`: the ledger stores the result in the journal
//!    (marked for the server when it came from there), an event goes out,
//!    and the waiting request, if any, gets it.
//! 5. `coord::reporter` delivers the results the server has not
//!    acknowledged and records each acknowledgement on a 2xx.
//!
//! # Layers
//!
//! `cli` > `agent` > `api`, `coord` > `runtime` > `providers`, `store`,
//! `metrics`, `logging` > `config` > `protocol`, `os`, `http`: a module
//! uses only modules below it (`tests/layers.py`, run by `make lint`).

mod agent;
mod api;
mod cli;
mod config;
mod coord;
mod http;
mod logging;
mod metrics;
mod os;
mod protocol;
mod providers;
mod runtime;
mod store;

/// The version every document and the User-Agent carry.
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Runs the command line `args` (without the program name) and returns the
/// process exit code.
pub fn main(args: Vec<std::ffi::OsString>) -> i32 {
    cli::main(args)
}
