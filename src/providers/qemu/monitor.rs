//! One QMP connection per running VM, held open.
//!
//! QMP serves one client at a time, and connecting costs a greeting and
//! a capabilities exchange: more than the query itself. So the provider
//! keeps the connection of each VM it has talked to and sends every
//! command over it; a connection that broke (QEMU exited, or was
//! relaunched) is dropped and made again on next use. Operators and tools
//! get the VM's second monitor socket, `qmp-user.sock`.
//!
//! Held connections also carry what QEMU says unasked. One thread,
//! `qmp-events`, waits (poll(2)) on all of them at once and passes
//! SHUTDOWN, STOP, RESUME and GUEST_PANICKED on to the runtime as they
//! happen (`Provider::watch`), as do the calls that only look. Events
//! that arrive during a command of the agent's own are its doing and are
//! not passed on. The thread ends once the provider is gone.

use super::qmp::{Event, Qmp, QmpError};
use super::wire::WireError;
use crate::providers::{Notice, NoticeSink, SessionStatus};
use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

/// How long the events thread waits before it looks for new connections
/// (and whether the provider is still there).
const WATCH_TICK: Duration = Duration::from_millis(200);

type Slot = Arc<Mutex<Option<Qmp<UnixStream>>>>;

/// What a call on a held connection does (see `Monitors::with`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    /// Only asks (query-status): events meanwhile are QEMU's own.
    Look,
    /// Changes the VM (cont, system_reset): events meanwhile are its own.
    Act,
}

#[derive(Default)]
struct Inner {
    held: Mutex<HashMap<String, Slot>>,
    sink: Mutex<Option<NoticeSink>>,
    watching: AtomicBool,
}

#[derive(Default)]
pub(crate) struct Monitors {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Monitors {
    pub(crate) fn set_sink(&self, sink: NoticeSink) {
        *lock(&self.inner.sink) = Some(sink);
    }

    fn slot(&self, id: &str) -> Slot {
        lock(&self.inner.held)
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    /// Runs `f` on VM `id`'s held connection, connecting to `socket` first
    /// if there is none. A connection found closed (QEMU was relaunched)
    /// is made again once and `f` run again. Events that arrive meanwhile
    /// are passed on when `f` only looks (`Call::Look`), and dropped when
    /// it acts (`Call::Act`): then they are its own doing.
    pub(crate) fn with<T>(
        &self,
        id: &str,
        socket: &Path,
        timeout: Duration,
        call: Call,
        mut f: impl FnMut(&mut Qmp<UnixStream>) -> Result<T, QmpError>,
    ) -> Result<T, QmpError> {
        let slot = self.slot(id);
        let mut held = lock(&slot);
        let mut reused = held.is_some();
        loop {
            let q = match held.as_mut() {
                Some(q) => q,
                None => {
                    let fresh = Qmp::connect(socket, timeout)?;
                    self.start_watching();
                    held.insert(fresh)
                }
            };
            let out = f(q);
            let events = q.take_events();
            if call == Call::Look {
                notify(&self.inner, id, &events);
            }
            match out {
                Err(QmpError::Wire(e)) => {
                    // Closed, timed out or garbled: a reply may still be
                    // on its way; the connection is not to be trusted.
                    *held = None;
                    let stale = matches!(e, WireError::Closed { .. } | WireError::Io { .. });
                    if reused && stale {
                        reused = false;
                        continue;
                    }
                    return Err(QmpError::Wire(e));
                }
                other => return other,
            }
        }
    }

    /// Hands over VM `id`'s held connection, if any, for good (stopping the
    /// VM waits on it for SHUTDOWN).
    pub(crate) fn take(&self, id: &str) -> Option<Qmp<UnixStream>> {
        let slot = lock(&self.inner.held).remove(id)?;
        let q = lock(&slot).take();
        q
    }

    /// Drops VM `id`'s connection (the VM is gone).
    pub(crate) fn forget(&self, id: &str) {
        drop(self.take(id));
    }

    /// How many connections are held (for tests).
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        lock(&self.inner.held)
            .values()
            .filter(|s| lock(s).is_some())
            .count()
    }

    fn start_watching(&self) {
        if self.inner.watching.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let spawned = std::thread::Builder::new()
            .name("qmp-events".into())
            .stack_size(64 << 10)
            .spawn(move || watch_loop(&weak));
        if let Err(e) = spawned {
            log::warn!("cannot start the thread that follows QEMU's events ({e}); VM changes are seen by the monitor's listing only");
            self.inner.watching.store(false, Ordering::SeqCst);
        }
    }
}

/// The events thread: waits for any held connection to have something to
/// read, and passes its events on. Returns once the provider is dropped.
fn watch_loop(inner: &Weak<Inner>) {
    loop {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let mut watched: Vec<(String, Slot, std::os::fd::RawFd)> = Vec::new();
        for (id, slot) in lock(&inner.held).iter() {
            // A connection in use is read by its user.
            if let Ok(g) = slot.try_lock() {
                if let Some(q) = g.as_ref() {
                    watched.push((id.clone(), slot.clone(), q.raw_fd()));
                }
            }
        }
        if watched.is_empty() {
            drop(inner);
            std::thread::sleep(WATCH_TICK);
            continue;
        }
        let fds: Vec<_> = watched.iter().map(|w| w.2).collect();
        let ready = match crate::os::socket::readable(&fds, WATCH_TICK) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("qmp-events: poll: {e}");
                std::thread::sleep(WATCH_TICK);
                continue;
            }
        };
        let mut busy = false;
        for ((id, slot, fd), ready) in watched.iter().zip(ready) {
            if !ready {
                continue;
            }
            let Ok(mut g) = slot.try_lock() else {
                busy = true;
                continue;
            };
            // The slot may hold another connection by now.
            let Some(q) = g.as_mut().filter(|q| q.raw_fd() == *fd) else {
                continue;
            };
            match q.pump() {
                Ok(events) => notify(&inner, id, &events),
                Err(e) => {
                    log::debug!(session_id = id.as_str(); "qmp-events: {e}");
                    *g = None;
                }
            }
        }
        drop(inner);
        if busy {
            // Its user reads what is waiting; do not spin meanwhile.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The status a VM is in after `event`, for the events that change it.
pub(crate) fn status_after(event: &str) -> Option<SessionStatus> {
    match event {
        // QEMU runs without -no-shutdown: it exits after the guest's.
        "SHUTDOWN" => Some(SessionStatus::Exited),
        "STOP" | "GUEST_PANICKED" => Some(SessionStatus::Stopped),
        "RESUME" => Some(SessionStatus::Running),
        _ => None,
    }
}

fn notify(inner: &Inner, id: &str, events: &[Event]) {
    let Some(sink) = lock(&inner.sink).clone() else {
        return;
    };
    for e in events {
        if let Some(status) = status_after(&e.name) {
            sink(Notice {
                session_id: id.to_string(),
                status,
                exit_code: None,
                cause: format!("qmp:{}", e.name),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_that_change_a_vm_s_status() {
        assert_eq!(status_after("SHUTDOWN"), Some(SessionStatus::Exited));
        assert_eq!(status_after("STOP"), Some(SessionStatus::Stopped));
        assert_eq!(status_after("GUEST_PANICKED"), Some(SessionStatus::Stopped));
        assert_eq!(status_after("RESUME"), Some(SessionStatus::Running));
        assert_eq!(status_after("RTC_CHANGE"), None);
        let m = Monitors::default();
        assert!(m.take("nothing").is_none());
        assert_eq!(m.held(), 0);
    }
}
