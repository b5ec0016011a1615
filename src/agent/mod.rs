//! The agent runtime: shared state, the threads, and the one shutdown
//! sequence.
//!
//! ```text
//!  signals ──Control──▶ main loop (run)
//!  api-N ──┐                                   ┌─▶ worker-N ─▶ providers
//!  poller ─┴─ Shared::submit ─▶ job queue ─────┘      │
//!            (ledger: dedupe by id)   (bounded)       ├─▶ ledger (result)
//!                                                     ├─▶ spool ─▶ reporter
//!  monitor: provider health, session table, pruning   └─▶ events ─▶ SSE clients
//! ```
//!
//! Every command, from the local API or the coordination server, enters
//! through [`Shared::submit`] and runs on a worker; there is one path.
//! Shutdown is a channel that is closed: every loop selects on it.

pub mod dispatch;
pub mod events;
pub mod intake;
pub mod monitor;
pub mod sessions;
pub mod signals;
pub mod status;
pub mod threads;
pub mod workers;

use crate::config::{self, Config, Secret};
use crate::metrics::Metrics;
use crate::providers::Registry;
use crate::store::{ledger::Ledger, node, pidfile::PidFile, spool::Spool, StoreError};
use crossbeam_channel::{bounded, select, Receiver, Sender};
use intake::Job;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};
use threads::{Control, Thread};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The state of the link to the coordination server, for status and health.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LinkState {
    /// offline | connecting | connected | disconnected
    pub state: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub url: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offline_since: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub last_error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<String>,
}

/// Everything the threads share. Immutable after start except through
/// interior locks and atomics.
pub struct Shared {
    pub config: Config,
    pub config_source: config::Source,
    pub node_id: String,
    pub node_name: String,
    /// The token the local API accepts.
    pub api_token: Secret,
    /// `allowed_ips`, parsed once (validated with the config).
    pub allowed_ips: Vec<crate::api::auth::Cidr>,
    pub started: Instant,
    pub started_at: SystemTime,
    pub metrics: Metrics,
    pub events: events::Events,
    pub ledger: Ledger,
    pub spool: Spool,
    pub registry: Registry,
    pub sessions: sessions::SessionTable,
    pub link: Mutex<LinkState>,
    queue: Sender<Job>,
    /// Wakes the coordination reporter when a result is spooled.
    pub report_wake: (Sender<()>, Receiver<()>),
    accepting: AtomicBool,
    busy: AtomicUsize,
}

impl Shared {
    pub fn queue_depth(&self) -> usize {
        self.queue.len()
    }

    pub fn queue_capacity(&self) -> usize {
        self.config.queue_size
    }

    pub fn busy_workers(&self) -> usize {
        self.busy.load(Ordering::Relaxed)
    }

    pub fn accepting(&self) -> bool {
        self.accepting.load(Ordering::Relaxed)
    }

    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    pub fn link(&self) -> LinkState {
        self.link.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn update_link(&self, f: impl FnOnce(&mut LinkState)) {
        f(&mut self.link.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// Why the agent could not start or run.
#[derive(Debug)]
pub enum AgentError {
    Store(StoreError),
    Listen {
        addr: String,
        source: String,
    },
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
            AgentError::Listen { addr, source } => {
                write!(f, "cannot listen on {addr}: {source}; set `listen` to a free address or stop what uses it")
            }
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

impl From<StoreError> for AgentError {
    fn from(e: StoreError) -> Self {
        AgentError::Store(e)
    }
}

/// What `build` returns: the shared state, the workers' end of the job
/// queue, and the commands the ledger found unfinished.
pub type Built = (
    Arc<Shared>,
    Receiver<Job>,
    Vec<crate::store::ledger::Unfinished>,
);

/// Builds the shared state: cache dir, node id, token, ledger, spool,
/// providers. Also used by tests that drive the runtime in-process.
pub fn build(loaded: &config::Loaded) -> Result<Built, AgentError> {
    let config = loaded.config.clone();
    let (cache_dir, node_id, node_name) = node::identity(&config)?;
    let api_token = if !config.api_token.is_empty() {
        config.api_token.clone()
    } else if !config.auth_token.is_empty() {
        config.auth_token.clone()
    } else {
        Secret(node::load_or_create_api_token(&cache_dir)?)
    };
    let (ledger, unfinished) = Ledger::open(
        &cache_dir,
        config.results.max_entries,
        config.results.max_age,
    )?;
    let spool = Spool::open(&cache_dir)?;
    let registry = Registry::from_config(&config, &node_id);
    let (queue_tx, queue_rx) = bounded(config.queue_size);
    let offline_reason = if config.offline_mode {
        "offline_mode is true"
    } else if config.coordination_url.is_empty() {
        "no coordination_url configured"
    } else {
        ""
    };
    let link = LinkState {
        state: if offline_reason.is_empty() {
            "connecting"
        } else {
            "offline"
        }
        .into(),
        url: config.coordination_url.clone(),
        reason: offline_reason.into(),
        ..Default::default()
    };
    let shared = Arc::new(Shared {
        config_source: loaded.source.clone(),
        node_id,
        node_name,
        api_token,
        allowed_ips: config
            .allowed_ips
            .iter()
            .filter_map(|c| crate::api::auth::Cidr::parse(c).ok())
            .collect(),
        started: Instant::now(),
        started_at: SystemTime::now(),
        metrics: Metrics::default(),
        events: events::Events::default(),
        ledger,
        spool,
        registry,
        sessions: sessions::SessionTable::default(),
        link: Mutex::new(link),
        queue: queue_tx,
        report_wake: bounded(1),
        accepting: AtomicBool::new(true),
        busy: AtomicUsize::new(0),
        config,
    });
    Ok((shared, queue_rx, unfinished))
}

/// Runs the agent in the foreground until SIGTERM/SIGINT (Ok) or a fatal
/// error. Holds the pid file for its whole life.
pub fn run(loaded: config::Loaded) -> Result<(), AgentError> {
    let pid_path = loaded.config.pid_file();
    let _pid = PidFile::acquire(&pid_path)?;
    let (shared, queue_rx, unfinished) = build(&loaded)?;
    let cfg = &shared.config;
    log::info!(
        node_id = shared.node_id.as_str(), version = VERSION, config = loaded.source.to_string().as_str();
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

    // The API binds first so that a port clash fails the start at once.
    let server = crate::api::bind(&shared)?;
    // Not joined: it blocks in the signal iterator and dies with the process.
    let _signals = signals::spawn(control_tx.clone()).map_err(spawn_err("signals"))?;
    for t in workers::spawn(&shared, &queue_rx, &shutdown_rx, &control_tx)
        .map_err(spawn_err("worker"))?
    {
        threads.push(t);
    }
    intake::recover(&shared, unfinished);
    threads.push(monitor::spawn(&shared, &shutdown_rx, &control_tx).map_err(spawn_err("monitor"))?);
    let mut api_threads = crate::api::spawn(&shared, server.clone(), &shutdown_rx, &control_tx)
        .map_err(spawn_err("api"))?;
    let link = crate::coord::spawn(&shared, &shutdown_rx, &control_tx);

    log::info!(
        listen = cfg.listen.as_str(), workers = cfg.workers, link = shared.link().state.as_str();
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
    shared.accepting.store(false, Ordering::SeqCst);
    // 2. Tell every loop; workers finish the command in hand, queued ones stay journaled.
    drop(shutdown_tx);
    crate::api::unblock_all(&server);
    let deadline = Instant::now() + cfg.shutdown_timeout;
    threads.append(&mut api_threads);
    let joined = threads::join_all(&mut threads, deadline, &control_rx);
    let stuck = joined.stuck;
    // Jobs still queued stay journaled for the next start; dropping them
    // here lets the requests waiting on them answer 503 before we exit.
    while queue_rx.try_recv().is_ok() {}
    if joined.interrupted {
        log::warn!("stopping now: no last delivery round, no unregister; spooled results go out after the restart");
    } else {
        crate::api::routes::wait_for_waiters(std::time::Duration::from_secs(2));
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
    log::info!(uptime_s = shared.uptime().as_secs(); "agent stopped");
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
