//! The monitor thread: refreshes provider health and the session table
//! every `monitor_interval`, publishes session changes it notices (a
//! container that exited on its own), and keeps the journal (results
//! held in memory stored, retention, compaction).

use super::threads::{self, Control, Thread};
use super::Runtime;
use crossbeam_channel::{select, tick, Receiver, Sender};
use std::sync::Arc;

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
    refresh(rt);
    maintain(rt);
    loop {
        select! {
            recv(shutdown) -> _ => return,
            recv(ticker) -> _ => {
                refresh(rt);
                maintain(rt);
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
        if let Err(e) = rt.sync_sessions(p.as_ref()) {
            log::warn!(provider = p.kind().as_str(); "cannot list sessions: {e}");
        }
    }
}

/// Journal upkeep: stores results held in memory, drops results past
/// retention, compacts old segments.
fn maintain(rt: &Runtime) {
    let removed = rt.ledger.maintain();
    if removed > 0 {
        log::info!(removed = removed; "dropped stored results past retention (results.*)");
    }
}
