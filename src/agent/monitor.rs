//! The monitor thread: refreshes provider health and the session table
//! every `monitor_interval`, publishes session changes it notices (a
//! container that exited on its own), and prunes old results hourly.

use super::sessions::Change;
use super::threads::{self, Control, Thread};
use super::Shared;
use crate::providers::{Provider, ProviderError, Session};
use crossbeam_channel::{select, tick, Receiver, Sender};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PRUNE_EVERY: Duration = Duration::from_secs(3600);

pub fn spawn(
    shared: &Arc<Shared>,
    shutdown: &Receiver<()>,
    control: &Sender<Control>,
) -> std::io::Result<Thread> {
    let (shared, shutdown) = (shared.clone(), shutdown.clone());
    threads::spawn("monitor", Some(control.clone()), move || {
        monitor_loop(&shared, &shutdown)
    })
}

fn monitor_loop(shared: &Shared, shutdown: &Receiver<()>) {
    let ticker = tick(shared.config.monitor_interval);
    let mut last_prune = Instant::now();
    refresh(shared);
    prune(shared);
    loop {
        select! {
            recv(shutdown) -> _ => return,
            recv(ticker) -> _ => {
                refresh(shared);
                if last_prune.elapsed() >= PRUNE_EVERY {
                    prune(shared);
                    last_prune = Instant::now();
                }
            }
        }
    }
}

/// One pass: provider health, then each healthy provider's sessions.
pub fn refresh(shared: &Shared) {
    let health = shared.registry.refresh();
    for p in shared.registry.all() {
        if !health.get(&p.kind()).is_some_and(|h| h.ok) {
            continue;
        }
        if let Err(e) = sync(shared, p.as_ref()) {
            log::warn!(provider = p.kind().as_str(); "cannot list sessions: {e}");
        }
    }
}

/// Lists one provider's sessions, brings the table up to date and
/// publishes what changed. Every listing goes through here, so a change is
/// announced whoever noticed it first (the monitor or a `session list`).
pub fn sync(shared: &Shared, p: &dyn Provider) -> Result<Vec<Session>, ProviderError> {
    let list = p.list()?;
    for change in shared.sessions.replace(p.kind(), list.clone()) {
        publish(shared, change);
    }
    Ok(list)
}

fn publish(shared: &Shared, change: Change) {
    let (s, event) = match change {
        Change::Appeared(s) => (s, "discovered"),
        Change::Status { session, from } => {
            log::info!(session_id = session.id.as_str(); "session went from {} to {}", from.as_str(), session.status.as_str());
            (session, "status")
        }
        Change::Vanished(s) => {
            log::warn!(session_id = s.id.as_str(); "session disappeared from its provider");
            (s, "vanished")
        }
    };
    shared.events.publish(
        "session",
        json!({"id": s.id, "provider": s.provider, "event": event, "status": s.status.as_str(), "exit_code": s.exit_code}),
    );
}

fn prune(shared: &Shared) {
    let removed = shared.ledger.prune(|id| shared.spool.contains(id));
    if removed > 0 {
        log::info!(removed = removed; "pruned old stored results");
    }
}
