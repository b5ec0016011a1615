//! Named threads with a deadline on join, and a report when one dies.

use crossbeam_channel::{bounded, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::Instant;

/// Why the main loop should act.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Control {
    /// SIGTERM / SIGINT, or an internal request.
    Shutdown(&'static str),
    /// SIGHUP: reload the log level.
    Reload,
    /// A core thread panicked or returned early.
    ThreadDied(String),
}

pub(crate) struct Thread {
    pub(crate) name: String,
    handle: Option<JoinHandle<()>>,
    done: Receiver<()>,
}

/// Sends `ThreadDied` if the thread unwinds, and closes `done` either way.
struct Guard {
    name: String,
    control: Option<Sender<Control>>,
    _done: Sender<()>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(c) = &self.control {
                let _ = c.send(Control::ThreadDied(self.name.clone()));
            }
        }
    }
}

/// Spawns a named thread. With `control`, a panic in it asks the agent to
/// stop in order (systemd restarts it).
pub(crate) fn spawn<F>(
    name: &str,
    control: Option<Sender<Control>>,
    f: F,
) -> std::io::Result<Thread>
where
    F: FnOnce() + Send + 'static,
{
    let (done_tx, done_rx) = bounded::<()>(0);
    let guard_name = name.to_string();
    let handle = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let _guard = Guard {
                name: guard_name,
                control,
                _done: done_tx,
            };
            f();
        })?;
    Ok(Thread {
        name: name.to_string(),
        handle: Some(handle),
        done: done_rx,
    })
}

impl Thread {
    fn join(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// What `join_all` saw.
pub(crate) struct Joined {
    /// Threads still running at the deadline.
    pub(crate) stuck: Vec<String>,
    /// A second shutdown request (a second Ctrl-C) cut the wait short.
    pub(crate) interrupted: bool,
}

/// Joins `threads` until `deadline`. A second shutdown request on `control`
/// stops the wait at once.
pub(crate) fn join_all(
    threads: &mut [Thread],
    deadline: Instant,
    control: &Receiver<Control>,
) -> Joined {
    let mut interrupted = false;
    for t in threads.iter_mut() {
        while !interrupted && Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            crossbeam_channel::select! {
                recv(t.done) -> _ => {
                    t.join();
                    break;
                }
                recv(control) -> msg => {
                    if let Ok(Control::Shutdown(why)) = msg {
                        log::warn!("second {why} during shutdown: not waiting for running commands any more");
                        interrupted = true;
                    }
                }
                default(left) => {}
            }
        }
    }
    let stuck = threads
        .iter()
        .filter(|t| t.handle.is_some())
        .map(|t| t.name.clone())
        .collect();
    Joined { stuck, interrupted }
}
