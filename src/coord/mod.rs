//! The coordination link: the agent dials out to the server (it needs no
//! inbound port) to register, heartbeat, long-poll for commands and report
//! results, per section 2 of the wire contract.
//!
//! ```text
//! poller ── GET …/commands?wait=N ──▶ Runtime::submit ──▶ workers ──▶ spool
//! heartbeat ── POST …/heartbeat every interval (own connection)      │
//! reporter ◀─ wake (new result) ──────────────────────────────────────┘
//!          ── POST …/commands/{id}/result, removed from the spool on 2xx
//! ```
//!
//! All three share one ureq agent (one connection pool) and the [`Link`]:
//! registration state, the server's steering (heartbeat interval, poll
//! wait) and the link state shown in /health. Registration happens in one
//! place (`Link::ensure_registered`), whichever thread finds it needed.
//! After a 404 (the server forgot us, e.g. it restarted) re-registration
//! waits a random part of the heartbeat interval so that a fleet does not
//! arrive all at once.
//!
//! Owns: the connection to the server, registration, the link state.
//! May not touch: providers, the local API; commands go through
//! `Runtime::submit` like the API's.

pub(crate) mod backoff;
pub(crate) mod client;
pub(crate) mod connect;
mod heartbeat;
pub(crate) mod node;
mod poller;
mod reporter;
pub(crate) mod tls;

use crate::protocol::link::LinkStatus;
use crate::runtime::threads::{self, Control, Thread};
use crate::runtime::Runtime;
use backoff::Backoff;
use client::{CoordClient, CoordError};
use crossbeam_channel::{select, Receiver, Sender};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) struct Link {
    pub(crate) rt: Arc<Runtime>,
    pub(crate) client: CoordClient,
    address: String,
    registered: AtomicBool,
    /// Set after a 404: the next registration waits a random spread.
    lost: AtomicBool,
    /// 401/403 from the server: stop dialing, stay up offline.
    refused: AtomicBool,
    register_lock: Mutex<()>,
    /// Heartbeat interval and poll wait in ms, as the server may steer them.
    heartbeat_ms: AtomicU64,
    poll_wait_ms: AtomicU64,
    /// The server answered 405 to the heartbeat POST: use PUT from now on.
    use_put: AtomicBool,
    seq: AtomicU64,
    /// When the current outage began, until a heartbeat reported it.
    outage: Mutex<Option<String>>,
    wake_reporter: Sender<()>,
}

impl Link {
    fn new(rt: Arc<Runtime>, client: CoordClient, wake_reporter: Sender<()>) -> Link {
        let cfg = &rt.config;
        let address = node::local_address(&cfg.coordination_url);
        Link {
            address,
            registered: AtomicBool::new(false),
            lost: AtomicBool::new(false),
            refused: AtomicBool::new(false),
            register_lock: Mutex::new(()),
            heartbeat_ms: AtomicU64::new(cfg.heartbeat.interval.as_millis() as u64),
            poll_wait_ms: AtomicU64::new(cfg.coordination.poll_wait.as_millis() as u64),
            use_put: AtomicBool::new(false),
            seq: AtomicU64::new(0),
            outage: Mutex::new(None),
            wake_reporter,
            client,
            rt,
        }
    }

    pub(crate) fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn poll_wait(&self) -> Duration {
        Duration::from_millis(self.poll_wait_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn registered(&self) -> bool {
        self.registered.load(Ordering::SeqCst)
    }

    pub(crate) fn refused(&self) -> bool {
        self.refused.load(Ordering::SeqCst)
    }

    /// The server no longer knows this node (404): register again.
    pub(crate) fn lost_registration(&self, why: &str) {
        if self.registered.swap(false, Ordering::SeqCst) {
            log::warn!(node_id = self.rt.node_id.as_str(); "the coordination server does not know this node any more ({why}); registering again");
            self.lost.store(true, Ordering::SeqCst);
        }
    }

    /// Registers unless registered. After a lost registration, first waits
    /// a random part of the heartbeat interval (returns Ok(false) if
    /// shutdown came meanwhile).
    pub(crate) fn ensure_registered(&self, shutdown: &Receiver<()>) -> Result<bool, CoordError> {
        if self.registered() {
            return Ok(true);
        }
        if self.lost.swap(false, Ordering::SeqCst) {
            let spread = crate::os::random::jitter(self.heartbeat_interval());
            log::debug!("re-registering in {spread:?} (spread over the heartbeat interval)");
            if !sleep(shutdown, spread) {
                return Ok(false);
            }
        }
        let _guard = self.register_lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.registered() {
            return Ok(true);
        }
        let doc = node::document(&node::NodeFacts::of(&self.rt, &self.address));
        let timeout = self
            .rt
            .config
            .heartbeat
            .timeout
            .max(Duration::from_secs(10));
        match self
            .client
            .call("POST", "/api/v1/nodes", Some(&doc), timeout)
        {
            Ok(reply) => {
                self.registered.store(true, Ordering::SeqCst);
                self.rt.metrics.registrations.inc();
                self.steer(reply.json().as_ref());
                log::info!(
                    node_id = self.rt.node_id.as_str(), server = self.client.base();
                    "registered with the coordination server"
                );
                self.up();
                Ok(true)
            }
            Err(e) => {
                if e.refused() {
                    self.refuse(&e);
                } else {
                    self.down(&e);
                }
                Err(e)
            }
        }
    }

    /// The server refused us (401/403): log why, stop dialing, stay up.
    pub(crate) fn refuse(&self, e: &CoordError) {
        if !self.refused.swap(true, Ordering::SeqCst) {
            log::error!("{e}; the agent stops dialing the server and keeps serving its local API (fix the token and restart)");
            self.rt.update_link(|l| {
                l.state = LinkStatus::Refused;
                l.last_error = e.to_string();
                l.offline_since
                    .get_or_insert_with(crate::protocol::time::now_rfc3339);
            });
        }
    }

    /// A request succeeded: the link is up.
    pub(crate) fn up(&self) {
        let mut was = LinkStatus::Connected;
        let mut since = None;
        self.rt.update_link(|l| {
            was = std::mem::replace(&mut l.state, LinkStatus::Connected);
            l.last_heartbeat
                .get_or_insert_with(crate::protocol::time::now_rfc3339);
            if was != LinkStatus::Connected {
                since = l.offline_since.take();
            }
        });
        if was != LinkStatus::Connected {
            if was == LinkStatus::Disconnected {
                self.rt.metrics.reconnects.inc();
                let since = since.unwrap_or_default();
                log::info!(offline_since = since.as_str(); "coordination link restored");
                *self.outage.lock().unwrap_or_else(|p| p.into_inner()) = Some(since);
            }
            let _ = self.wake_reporter.try_send(());
        }
    }

    /// A request failed: remember why; the first failure starts an outage.
    pub(crate) fn down(&self, e: &CoordError) {
        let mut was = None;
        self.rt.update_link(|l| {
            l.last_error = e.to_string();
            if matches!(l.state, LinkStatus::Connected | LinkStatus::Connecting) {
                was = Some(std::mem::replace(&mut l.state, LinkStatus::Disconnected));
                l.offline_since
                    .get_or_insert_with(crate::protocol::time::now_rfc3339);
            }
        });
        match was {
            Some(LinkStatus::Connected) => log::warn!(
                "coordination link lost: {e}; retrying with backoff, commands keep running locally"
            ),
            Some(LinkStatus::Connecting) => log::warn!("coordination server not reachable yet: {e}; retrying with backoff, the local API keeps serving"),
            _ => {}
        }
    }

    /// Applies `heartbeat_interval` / `poll_wait` from a server answer,
    /// within the bounds the config sets.
    pub(crate) fn steer(&self, answer: Option<&Value>) {
        let Some(obj) = answer.and_then(Value::as_object) else {
            return;
        };
        let cfg = &self.rt.config.coordination;
        let parse = |v: &Value| crate::protocol::duration::deserialize_wire(v.clone()).ok();
        if let Some(d) = obj.get("heartbeat_interval").and_then(parse) {
            let d = d.clamp(cfg.min_heartbeat_interval, cfg.max_heartbeat_interval);
            if self
                .heartbeat_ms
                .swap(d.as_millis() as u64, Ordering::Relaxed)
                != d.as_millis() as u64
            {
                log::info!(
                    "the server set the heartbeat interval to {}",
                    crate::protocol::duration::format(d)
                );
            }
        }
        if let Some(d) = obj.get("poll_wait").and_then(parse) {
            let d = d.clamp(cfg.min_poll_wait, cfg.max_poll_wait);
            self.poll_wait_ms
                .store(d.as_millis() as u64, Ordering::Relaxed);
        }
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// Sleeps up to `d`; false if shutdown came first.
pub(crate) fn sleep(shutdown: &Receiver<()>, d: Duration) -> bool {
    select! {
        recv(shutdown) -> _ => false,
        default(d) => true,
    }
}

/// The running link: its threads and what the shutdown sequence needs.
pub(crate) struct Running {
    pub(crate) link: Arc<Link>,
    pub(crate) threads: Vec<Thread>,
}

/// Starts the link threads, or nothing in offline mode. A setup failure
/// (TLS files) is logged and leaves the agent offline, never down.
pub(crate) fn spawn(
    rt: &Arc<Runtime>,
    shutdown: &Receiver<()>,
    control: &Sender<Control>,
) -> Option<Running> {
    if rt.config.offline() {
        return None;
    }
    let client = match CoordClient::new(&rt.config) {
        Ok(c) => c,
        Err(e) => {
            log::error!("coordination link not started: {e}");
            rt.update_link(|l| {
                l.state = LinkStatus::Offline;
                l.reason = "link setup failed".into();
                l.last_error = e.to_string();
            });
            return None;
        }
    };
    let (wake_tx, wake_rx) = rt.report_wake.clone();
    let link = Arc::new(Link::new(rt.clone(), client, wake_tx));
    let mut threads = Vec::new();
    let spawn_one =
        |name: &str, f: Box<dyn FnOnce() + Send>| threads::spawn(name, Some(control.clone()), f);
    let (l, s) = (link.clone(), shutdown.clone());
    let started = [
        spawn_one("poller", Box::new(move || poller::run(&l, &s))),
        {
            let (l, s) = (link.clone(), shutdown.clone());
            spawn_one("heartbeat", Box::new(move || heartbeat::run(&l, &s)))
        },
        {
            let (l, s) = (link.clone(), shutdown.clone());
            spawn_one(
                "reporter",
                Box::new(move || reporter::run(&l, &s, &wake_rx)),
            )
        },
    ];
    for t in started {
        match t {
            Ok(t) => threads.push(t),
            Err(e) => log::error!("cannot start a coordination thread: {e}"),
        }
    }
    Some(Running { link, threads })
}

impl Running {
    /// The end of a clean stop: a last delivery round for spooled results
    /// and the unregister, both within `deadline`.
    pub(crate) fn finish(mut self, deadline: Instant, control: &Receiver<Control>) {
        // The poller may sit in a long poll; it is not waited for.
        let short = Instant::now() + Duration::from_millis(500);
        let _ = threads::join_all(&mut self.threads, short.min(deadline), control);
        let link = &self.link;
        if link.refused() {
            return;
        }
        if link.rt.ledger.pending_reports() > 0 && Instant::now() < deadline {
            reporter::round(link, None, deadline);
        }
        if link.rt.config.coordination.unregister_on_stop && link.registered() {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(5));
            let path = format!("/api/v1/nodes/{}", link.rt.node_id);
            match link
                .client
                .call("DELETE", &path, None, left.max(Duration::from_millis(200)))
            {
                Ok(_) => log::info!("unregistered from the coordination server"),
                Err(e) => log::warn!("could not unregister: {e}"),
            }
        }
    }
}

pub(crate) fn new_backoff(link: &Link) -> Backoff {
    Backoff::new(&link.rt.config.retry_policy)
}
