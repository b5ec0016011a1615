//! vendetta patch: deadlines on reading a request, and which connections
//! may be dropped to make room.
//!
//! Every accepted connection has a `Watch`, shared by its reading half
//! (which enforces the deadline on each read), its `ClientConnection`
//! (which moves it between phases) and the accept thread (which, when all
//! connection slots are taken, drops the connection that has waited
//! longest for a request or is slowest sending one, instead of the new
//! one). A per-read socket timeout cannot stop a client that sends one
//! byte just before each timeout; a deadline for the whole head can.

use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::connection::Connection;

/// How long a connection may wait for the first byte of a request.
pub const IDLE: Duration = Duration::from_secs(60);
/// How long a request head may take from its first byte.
pub const HEAD: Duration = Duration::from_secs(10);
/// How long reading a request body may take from the end of its head.
pub const BODY: Duration = Duration::from_secs(30);

const IDLE_PHASE: u8 = 0;
const HEAD_PHASE: u8 = 1;
const BUSY_PHASE: u8 = 2;
/// Dropped to make room: never chosen again while its thread winds down.
const DROPPED_PHASE: u8 = 3;

pub struct Watch {
    /// A handle on the socket, to shut it down and set its read timeout.
    conn: Mutex<Option<Connection>>,
    epoch: Instant,
    phase: AtomicU8,
    /// Milliseconds after `epoch`: when the phase began, and the deadline
    /// for reading in it.
    since: AtomicU64,
    deadline: AtomicU64,
}

impl Watch {
    pub fn new(conn: Option<Connection>, epoch: Instant) -> Arc<Watch> {
        let w = Arc::new(Watch {
            conn: Mutex::new(conn),
            epoch,
            phase: AtomicU8::new(IDLE_PHASE),
            since: AtomicU64::new(0),
            deadline: AtomicU64::new(0),
        });
        w.idle();
        w
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn enter(&self, phase: u8, limit: Duration) {
        let now = self.now();
        self.since.store(now, Ordering::SeqCst);
        self.deadline
            .store(now + limit.as_millis() as u64, Ordering::SeqCst);
        self.phase.store(phase, Ordering::SeqCst);
    }

    /// Waiting for the next request.
    pub fn idle(&self) {
        self.enter(IDLE_PHASE, IDLE);
    }

    /// A request head was read; its body (if any) may be read until BODY.
    pub fn busy(&self) {
        self.enter(BUSY_PHASE, BODY);
    }

    /// Before a read: the timeout to read with, or TimedOut when the
    /// deadline has passed.
    pub fn before_read(&self) -> io::Result<()> {
        let left = self
            .deadline
            .load(Ordering::SeqCst)
            .saturating_sub(self.now());
        if left == 0 {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request deadline passed",
            ));
        }
        if let Some(c) = &*self.conn.lock().unwrap_or_else(|p| p.into_inner()) {
            c.set_read_timeout(Duration::from_millis(left));
        }
        Ok(())
    }

    /// After a read of `n` bytes: the first byte of a head starts the
    /// head's own, shorter deadline.
    pub fn after_read(&self, n: usize) {
        if n > 0 && self.phase.load(Ordering::SeqCst) == IDLE_PHASE {
            self.enter(HEAD_PHASE, HEAD);
        }
    }

    /// Milliseconds since it began waiting for or reading a head; None
    /// while a request is being answered (it is not to be dropped then).
    fn waiting(&self) -> Option<u64> {
        matches!(self.phase.load(Ordering::SeqCst), IDLE_PHASE | HEAD_PHASE)
            .then(|| self.now().saturating_sub(self.since.load(Ordering::SeqCst)))
    }

    fn drop_connection(&self) {
        self.phase.store(DROPPED_PHASE, Ordering::SeqCst);
        if let Some(c) = self.conn.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

/// The watches of the open connections, for the accept thread.
#[derive(Default)]
pub struct Watches(Vec<Weak<Watch>>);

impl Watches {
    pub fn add(&mut self, w: &Arc<Watch>) {
        self.0.retain(|w| w.strong_count() > 0);
        self.0.push(Arc::downgrade(w));
    }

    /// Drops the connection that has waited longest for a request, or has
    /// been sending one longest; false when every one is being answered.
    pub fn drop_longest_waiting(&mut self) -> bool {
        self.0.retain(|w| w.strong_count() > 0);
        let victim = self
            .0
            .iter()
            .filter_map(Weak::upgrade)
            .filter_map(|w| w.waiting().map(|t| (t, w)))
            .max_by_key(|(t, _)| *t);
        match victim {
            Some((_, w)) => {
                w.drop_connection();
                true
            }
            None => false,
        }
    }
}
