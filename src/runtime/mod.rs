//! The runtime: the state the local API and the coordination link share,
//! and the one path every command takes.
//!
//! ```text
//! submit (intake.rs) ─ dedupe by id (ledger) ─ policy ─▶ queue (bounded)
//!   ─▶ worker (workers.rs) ─ dispatch.rs ─▶ provider
//!   ─▶ complete: ledger (the journal: stored, and for the server), metrics, event
//! ```
//!
//! Owns: the [`Runtime`] (config, node identity, ledger, provider
//! registry, session table, events, link state, the job queue's sending
//! end), the worker pool and the monitor loop.
//!
//! May not touch: HTTP, the coordination server's wire, signals. The API
//! and the link call [`Runtime::submit`], read the documents in
//! [`status`] and the ledger, and (the API) list sessions through
//! `Runtime::list_sessions_for_api`; they never call a provider themselves.

pub(crate) mod dispatch;
pub(crate) mod events;
pub(crate) mod intake;
pub(crate) mod lanes;
pub(crate) mod monitor;
pub(crate) mod policy;
pub(crate) mod sessions;
pub(crate) mod status;
#[cfg(test)]
mod tests;
pub(crate) mod threads;
pub(crate) mod workers;
pub(crate) mod workspace;

use crate::config::{self, Config, Secret};
use crate::metrics::Metrics;
use crate::protocol::link::{LinkState, LinkStatus};
use crate::providers::Registry;
use crate::store::{ledger::Ledger, ledger::Retention, node, StoreError};
use crossbeam_channel::{bounded, Receiver, Sender};
use intake::Job;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

/// Everything the threads share. Immutable after start except through
/// interior locks and atomics.
pub(crate) struct Runtime {
    pub(crate) config: Config,
    pub(crate) config_source: config::Source,
    pub(crate) node_id: String,
    pub(crate) node_name: String,
    /// The token the local API accepts.
    pub(crate) api_token: Secret,
    /// The keys JWTs on the local API are checked with.
    pub(crate) jwt_keys: Vec<crate::config::jwt::JwtKey>,
    pub(crate) started: Instant,
    pub(crate) started_at: SystemTime,
    pub(crate) metrics: Metrics,
    pub(crate) events: events::Events,
    pub(crate) ledger: Ledger,
    pub(crate) audit: crate::store::audit::AuditLog,
    pub(crate) registry: Registry,
    pub(crate) sessions: sessions::SessionTable,
    /// Execs queued or running, against `limits.max_concurrent_execs`.
    pub(crate) execs: Arc<intake::ExecSlots>,
    pub(crate) workspaces: workspace::Workspaces,
    link: Mutex<LinkState>,
    queue: Sender<Job>,
    /// Per-session order (jobs parked behind others of their session).
    pub(crate) lanes: lanes::Lanes,
    /// Wakes the coordination reporter when a result is spooled.
    pub(crate) report_wake: (Sender<()>, Receiver<()>),
    accepting: AtomicBool,
    busy: AtomicUsize,
    /// Session listings the API runs at once, bounded like the workers.
    listings: Gate,
}

/// What [`Runtime::open`] returns besides the runtime: the workers' end of
/// the job queue, and the commands the ledger found unfinished (for
/// [`intake::recover`] once the workers run).
pub(crate) struct Opened {
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) jobs: Receiver<Job>,
    pub(crate) unfinished: Vec<crate::store::ledger::Unfinished>,
}

impl Runtime {
    /// Opens the durable state (cache dir, node id, token, ledger)
    /// and builds the providers the config enables.
    pub(crate) fn open(loaded: &config::Loaded) -> Result<Opened, StoreError> {
        Runtime::with_registry(loaded, Registry::from_config)
    }

    /// Like [`Runtime::open`] with the providers `registry` makes from the
    /// config and the node id: unit tests pass fakes here.
    pub(crate) fn with_registry(
        loaded: &config::Loaded,
        registry: impl FnOnce(&Config, &str) -> Registry,
    ) -> Result<Opened, StoreError> {
        let config = loaded.config.clone();
        let (cache_dir, node_id, node_name) = node::identity(&config, &|| node_witnesses(&config))?;
        let registry = registry(&config, &node_id);
        let auth_usable = config.auth_token.expose().len() >= node::MIN_TOKEN;
        if config.api_token.is_empty() && !config.auth_token.is_empty() && !auth_usable {
            log::warn!(
                "auth_token is shorter than {} bytes, too short for the local API: it uses the token in cache_dir/api_token; set api_token to choose one",
                node::MIN_TOKEN
            );
        }
        let api_token = if !config.api_token.is_empty() {
            config.api_token.clone()
        } else if auth_usable {
            config.auth_token.clone()
        } else {
            Secret(node::load_or_create_api_token(&cache_dir)?)
        };
        let (ledger, unfinished) = Ledger::open(
            &cache_dir,
            Retention {
                max_entries: config.results.max_entries,
                max_age: config.results.max_age,
                max_bytes: config.results.max_bytes,
            },
        )?;
        let metrics = Metrics::default();
        let flushes = metrics.journal_flush.clone();
        ledger
            .journal()
            .observe_flushes(Box::new(move |took| flushes.observe(&[], took)));
        let (queue_tx, queue_rx) = bounded(config.queue_size);
        let link = LinkState::new(
            &config.coordination_url,
            if config.offline_mode {
                Some("offline_mode is true")
            } else if config.coordination_url.is_empty() {
                Some("no coordination_url configured")
            } else {
                None
            },
        );
        let runtime = Arc::new(Runtime {
            config_source: loaded.source.clone(),
            node_id,
            node_name,
            api_token,
            jwt_keys: loaded.jwt_keys.clone(),
            started: Instant::now(),
            started_at: SystemTime::now(),
            metrics,
            events: events::Events::default(),
            ledger,
            audit: crate::store::audit::AuditLog::new(
                config
                    .audit_log
                    .path
                    .clone()
                    .unwrap_or_else(|| cache_dir.join("audit.log")),
                config.audit_log.max_size,
                config.audit_log.keep,
            ),
            registry,
            sessions: sessions::SessionTable::default(),
            execs: intake::ExecSlots::new(config.limits.max_concurrent_execs),
            workspaces: workspace::Workspaces::open(&cache_dir, &config.workspace_roots),
            link: Mutex::new(link),
            queue: queue_tx,
            lanes: lanes::Lanes::default(),
            report_wake: bounded(1),
            accepting: AtomicBool::new(true),
            busy: AtomicUsize::new(0),
            listings: Gate::new(config.workers),
            config,
        });
        for p in runtime.registry.all() {
            p.watch(sessions::notice_sink(&runtime));
        }
        Ok(Opened {
            runtime,
            jobs: queue_rx,
            unfinished,
        })
    }

    /// Commands accepted and not started: queued, or parked behind
    /// others of their session.
    pub(crate) fn queue_depth(&self) -> usize {
        self.queue.len() + self.lanes.waiting()
    }

    pub(crate) fn queue_capacity(&self) -> usize {
        self.config.queue_size
    }

    pub(crate) fn busy_workers(&self) -> usize {
        self.busy.load(Ordering::Relaxed)
    }

    pub(crate) fn accepting(&self) -> bool {
        self.accepting.load(Ordering::Relaxed)
    }

    /// The first step of a shutdown: the API answers 503 and the poller
    /// fetches nothing more.
    pub(crate) fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::SeqCst);
    }

    pub(crate) fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    pub(crate) fn link(&self) -> LinkState {
        self.link.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn link_status(&self) -> LinkStatus {
        self.link.lock().unwrap_or_else(|p| p.into_inner()).state
    }

    pub(crate) fn update_link(&self, f: impl FnOnce(&mut LinkState)) {
        f(&mut self.link.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// What a caught panic said, for a failed result or a log line.
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// At most `max` holders at once; others wait, up to a deadline.
pub(crate) struct Gate {
    max: usize,
    held: Mutex<usize>,
    freed: std::sync::Condvar,
}

/// A place in a [`Gate`], given back on drop (also when unwinding).
pub(crate) struct Pass<'a>(&'a Gate);

impl Gate {
    pub(crate) fn new(max: usize) -> Gate {
        Gate {
            max: max.max(1),
            held: Mutex::new(0),
            freed: std::sync::Condvar::new(),
        }
    }

    /// A place, or None when none came free within `wait`.
    pub(crate) fn enter(&self, wait: std::time::Duration) -> Option<Pass<'_>> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let (mut held, _) = self
            .freed
            .wait_timeout_while(held, wait, |n| *n >= self.max)
            .unwrap_or_else(|p| p.into_inner());
        if *held >= self.max {
            return None;
        }
        *held += 1;
        Some(Pass(self))
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        *self.0.held.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        self.0.freed.notify_one();
    }
}

/// The node ids on the sessions every enabled provider finds: asked only
/// when the stored node id is damaged.
pub(crate) fn node_witnesses(config: &Config) -> Vec<String> {
    Registry::from_config(config, "")
        .all()
        .flat_map(|p| p.node_ids())
        .collect()
}
