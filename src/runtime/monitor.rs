//! The monitor thread: refreshes provider health and the session table
//! every `monitor_interval`, publishes session changes it notices (a
//! container that exited on its own), and prunes old results hourly.

use super::sessions::Change;
use super::threads::{self, Control, Thread};
use super::Runtime;
use crate::providers::{Provider, ProviderError, Session};
use crossbeam_channel::{select, tick, Receiver, Sender};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PRUNE_EVERY: Duration = Duration::from_secs(3600);

pub(crate) fn spawn(
    rt: &Arc<Runtime>,
    shutdown: &Receiver<()>,
    control: &Sender<Control>,
) -> std::io::Result<Thread> {
    let (rt, shutdown) = (rt.clone(), shutdown.clone());
    threads::spawn("monitor", Some(control.clone()), move || {
        monitor_loop(&rt, &shutdown)
    })
}

fn monitor_loop(rt: &Runtime, shutdown: &Receiver<()>) {
    let ticker = tick(rt.config.monitor_interval);
    let mut last_prune = Instant::now();
    refresh(rt);
    prune(rt);
    loop {
        select! {
            recv(shutdown) -> _ => return,
            recv(ticker) -> _ => {
                refresh(rt);
                if last_prune.elapsed() >= PRUNE_EVERY {
                    prune(rt);
                    last_prune = Instant::now();
                }
            }
        }
    }
}

/// One pass: provider health, then each healthy provider's sessions.
pub(crate) fn refresh(rt: &Runtime) {
    let health = rt.registry.refresh();
    for p in rt.registry.all() {
        if !health.get(&p.kind()).is_some_and(|h| h.ok) {
            continue;
        }
        if let Err(e) = sync(rt, p.as_ref()) {
            log::warn!(provider = p.kind().as_str(); "cannot list sessions: {e}");
        }
    }
}

/// Lists one provider's sessions, brings the table up to date and
/// publishes what changed. Every listing goes through here, so a change is
/// announced whoever noticed it first (the monitor or a `session list`).
pub(crate) fn sync(rt: &Runtime, p: &dyn Provider) -> Result<Vec<Session>, ProviderError> {
    let list = p.list()?;
    for change in rt.sessions.replace(p.kind(), list.clone()) {
        publish(rt, change);
    }
    Ok(list)
}

fn publish(rt: &Runtime, change: Change) {
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
    rt.events.publish(
        "session",
        json!({"id": s.id, "provider": s.provider, "event": event, "status": s.status.as_str(), "exit_code": s.exit_code}),
    );
}

fn prune(rt: &Runtime) {
    let removed = rt.ledger.prune(|id| rt.spool.contains(id));
    if removed > 0 {
        log::info!(removed = removed; "pruned old stored results");
    }
}
