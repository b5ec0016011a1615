//! The agent process: wires the runtime, the local API and the
//! coordination link together, runs the main loop, and owns the one
//! shutdown sequence (the thread diagram is in `lib.rs`).
//!
//! Start: pid file, [`Runtime::open`], bind the API (a busy port fails
//! here), signals, workers, recovery of unfinished commands, monitor, API
//! serving, the link. Stop (SIGTERM/SIGINT): intake stops (the API answers
//! 503), the shutdown channel closes, workers finish the command in hand
//! within `shutdown_timeout`, queued commands stay journaled, a last
//! delivery round and the unregister, exit 0.
//!
//! Owns: the control channel and the shutdown sender. May not touch: the
//! command path itself (that is `runtime`), HTTP, providers.

pub(crate) mod signals;

use crate::config;
use crate::runtime::threads::{self, Control, Thread};
use crate::runtime::{intake, monitor, workers, Opened, Runtime};
use crate::store::{pidfile::PidFile, StoreError};
use crossbeam_channel::{bounded, select};
use std::fmt;
use std::time::Instant;

/// Why the agent could not start or run.
#[derive(Debug)]
pub(crate) enum AgentError {
    Store(StoreError),
    Listen(crate::api::BindError),
    Spawn {
        thread: String,
        source: std::io::Error,
    },
    ThreadDied(String),
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentError::Store(e) => write!(f, "{e}"),
            AgentError::Listen(e) => write!(f, "{e}"),
            AgentError::Spawn { thread, source } => {
                write!(f, "cannot start thread {thread}: {source}")
            }
            AgentError::ThreadDied(name) => {
                write!(f, "thread {name} stopped unexpectedly; see the log above")
            }
        }
    }
}

impl std::error::Error for AgentError {}

impl From<crate::api::BindError> for AgentError {
    fn from(e: crate::api::BindError) -> Self {
        AgentError::Listen(e)
    }
}

impl From<StoreError> for AgentError {
    fn from(e: StoreError) -> Self {
        AgentError::Store(e)
    }
}

/// Runs the agent in the foreground until SIGTERM/SIGINT (Ok) or a fatal
/// error. Holds the pid file for its whole life.
pub(crate) fn run(loaded: config::Loaded) -> Result<(), AgentError> {
    let pid_path = loaded.config.pid_file();
    let _pid = PidFile::acquire(&pid_path)?;
    let Opened {
        runtime: rt,
        jobs: queue_rx,
        unfinished,
    } = Runtime::open(&loaded)?;
    let cfg = &rt.config;
    log::info!(
        node_id = rt.node_id.as_str(), version = crate::VERSION, config = loaded.source.to_string().as_str();
        "agent starting"
    );
    if cfg.tls.insecure_skip_verify {
        log::warn!("tls.insecure_skip_verify is true: the coordination server's certificate is NOT checked; anyone on the path can impersonate it");
    }

    let (control_tx, control_rx) = bounded::<Control>(16);
    let (shutdown_tx, shutdown_rx) = bounded::<()>(0);
    let mut threads: Vec<Thread> = Vec::new();
    let spawn_err = |thread: &str| {
        let thread = thread.to_string();
        move |source| AgentError::Spawn { thread, source }
    };

    // The API binds first so that a port clash fails the start at once;
    // it answers once the unfinished commands are recovered.
    let listeners = crate::api::bind(&cfg.listen, &cfg.listen_group)?;
    // Not joined: it blocks in the signal iterator and dies with the process.
    let _signals = signals::spawn(control_tx.clone()).map_err(spawn_err("signals"))?;
    for t in
        workers::spawn(&rt, &queue_rx, &shutdown_rx, &control_tx).map_err(spawn_err("worker"))?
    {
        threads.push(t);
    }
    intake::recover(&rt, unfinished);
    threads.push(monitor::spawn(&rt, &shutdown_rx, &control_tx).map_err(spawn_err("monitor"))?);
    let api = crate::api::serve(&rt, listeners, &shutdown_rx).map_err(spawn_err("api-accept"))?;
    let link = crate::coord::spawn(&rt, &shutdown_rx, &control_tx);

    log::info!(
        listen = cfg.listen.to_string().as_str(), workers = cfg.workers, link = rt.link_status().as_str();
        "agent ready"
    );

    let outcome = loop {
        select! {
            recv(control_rx) -> msg => match msg {
                Ok(Control::Shutdown(why)) => {
                    log::info!("shutting down ({why})");
                    break Ok(());
                }
                Ok(Control::Reload) => reload_log_level(&loaded),
                Ok(Control::ThreadDied(name)) => {
                    log::error!(thread = name.as_str(); "thread {name} panicked; stopping in order so the supervisor restarts the agent");
                    break Err(AgentError::ThreadDied(name));
                }
                Err(_) => break Ok(()),
            }
        }
    };

    // 1. Stop intake: the API answers 503, the poller stops fetching.
    rt.stop_accepting();
    // 2. Tell every loop; workers finish the command in hand, queued ones
    //    stay journaled. Event streams end.
    drop(shutdown_tx);
    let deadline = Instant::now() + cfg.shutdown_timeout;
    let joined = threads::join_all(&mut threads, deadline, &control_rx);
    let stuck = joined.stuck;
    // Jobs still queued stay journaled for the next start; dropping them
    // here lets the requests waiting on them answer 503 before we exit.
    while queue_rx.try_recv().is_ok() {}
    if joined.interrupted {
        log::warn!("stopping now: no last delivery round, no unregister; spooled results go out after the restart");
    } else {
        api.wait_idle(std::time::Duration::from_secs(2));
        // 3. Deliver what the workers finished and say goodbye to the server.
        if let Some(link) = link {
            link.finish(
                deadline.max(Instant::now() + std::time::Duration::from_secs(2)),
                &control_rx,
            );
        }
    }
    if !stuck.is_empty() && !joined.interrupted {
        log::warn!(
            "shutdown_timeout ({}) passed with threads still busy: {}; exiting anyway, interrupted commands are reported after restart",
            crate::protocol::duration::format(cfg.shutdown_timeout),
            stuck.join(", ")
        );
    }
    log::info!(uptime_s = rt.uptime().as_secs(); "agent stopped");
    // The listening socket closes here, as the process ends.
    drop(api);
    outcome
}

/// SIGHUP: reads the log level again from where the config came from (the
/// same file; for built-in defaults, only VENDETTA_LOG_LEVEL).
fn reload_log_level(loaded: &config::Loaded) {
    let fresh = match &loaded.source {
        config::Source::File(p) => config::load(Some(p.as_path())).map(|l| l.config),
        config::Source::Defaults => {
            let mut c = config::Config::default();
            config::apply_env(&mut c, |k| std::env::var(k).ok()).map(|()| c)
        }
    };
    match fresh {
        Ok(c) => {
            crate::logging::set_level(c.log_level);
            log::info!("SIGHUP: log level is now {:?}", c.log_level);
        }
        Err(e) => log::warn!("SIGHUP: config not reloaded, keeping the current log level: {e}"),
    }
}
