//! The monitor thread: refreshes provider health and the session table
//! every `monitor_interval`, publishes session changes it notices (a
//! container that exited on its own), and prunes old results hourly.

use super::threads::{self, Control, Thread};
use super::Runtime;
use crossbeam_channel::{select, tick, Receiver, Sender};
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
        if let Err(e) = rt.sync_sessions(p.as_ref()) {
            log::warn!(provider = p.kind().as_str(); "cannot list sessions: {e}");
        }
    }
}

fn prune(rt: &Runtime) {
    let removed = rt.ledger.prune(|id| rt.spool.contains(id));
    if removed > 0 {
        log::info!(removed = removed; "pruned old stored results");
    }
}
