//! This node's sessions as the engine's event stream keeps them: session id
//! -> the session and its container id, so `list` answers without asking
//! the engine (see [`super::events`], which primes and follows it).
//!
//! The table answers only while it is primed: from the watcher's full
//! listing on (re)connecting until the stream breaks, when it is emptied
//! and `list` asks the engine again.
//!
//! Two writers, one rule. The watcher applies events and the provider's own
//! create/start/stop/destroy write what they just did, so a list right
//! after a create shows it without waiting for the event. Each write
//! carries the time its facts were true (`seen`: an event's `timeNano`, or
//! the clock read before the inspect or listing the facts come from), and
//! an entry only moves forward in time: a write older than the entry is
//! dropped. So the `die` of a stop the provider has already recorded, read
//! late from the stream after the start that followed, cannot make a
//! running session read `stopped`. Both clocks are this host's.
//!
//! A removed session stays for [`TOMBSTONE_TTL`] as a tombstone, so an
//! event's inspect answered just before a destroy cannot bring it back.
//! Memory: one entry per session, plus tombstones of the last minute.

use crate::providers::Session;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a removed session is remembered as removed.
pub(crate) const TOMBSTONE_TTL: Duration = Duration::from_secs(60);

/// Nanoseconds since the Unix epoch, like an event's `timeNano`.
pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

#[derive(Debug, Clone)]
struct Entry {
    /// The container that is (or was) the session.
    cid: String,
    /// When these facts were true, in ns since the epoch.
    seen: i64,
    /// None: removed (a tombstone).
    session: Option<Session>,
}

#[derive(Debug, Default)]
struct Inner {
    primed: bool,
    entries: HashMap<String, Entry>,
}

#[derive(Debug, Default)]
pub(crate) struct Table {
    inner: Mutex<Inner>,
}

impl Table {
    /// A poisoned lock still holds a consistent table: every change is
    /// one insert or one field write.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live sessions, when the table is primed; None means "ask the
    /// engine".
    pub(crate) fn sessions(&self) -> Option<Vec<Session>> {
        let t = self.lock();
        t.primed.then(|| {
            t.entries
                .values()
                .filter_map(|e| e.session.clone())
                .collect()
        })
    }

    /// Replaces the table with a full listing taken at `seen` (session and
    /// container id), keeping what was written after it began, and starts
    /// answering.
    pub(crate) fn prime(&self, listing: Vec<(Session, String)>, seen: i64) {
        let mut t = self.lock();
        let mut entries: HashMap<String, Entry> = listing
            .into_iter()
            .map(|(s, cid)| {
                let id = s.id.clone();
                let entry = Entry {
                    cid,
                    seen,
                    session: Some(s),
                };
                (id, entry)
            })
            .collect();
        for (id, e) in t.entries.drain() {
            if e.seen > seen {
                entries.insert(id, e);
            }
        }
        t.entries = entries;
        t.primed = true;
    }

    /// Stops answering and forgets everything (the stream is broken: the
    /// next prime starts over).
    pub(crate) fn unprime(&self) {
        let mut t = self.lock();
        t.primed = false;
        t.entries.clear();
    }

    /// Whether session `id` was written at or after `seen` (a fact from
    /// `seen` would move it back in time).
    pub(crate) fn newer_than(&self, id: &str, seen: i64) -> bool {
        self.lock().entries.get(id).is_some_and(|e| e.seen > seen)
    }

    /// Records `session` in container `cid` as true at `seen`, unless the
    /// entry is newer.
    pub(crate) fn upsert(&self, session: Session, cid: &str, seen: i64) {
        let mut t = self.lock();
        if t.entries.get(&session.id).is_some_and(|e| e.seen > seen) {
            return;
        }
        t.entries.insert(
            session.id.clone(),
            Entry {
                cid: cid.to_string(),
                seen,
                session: Some(session),
            },
        );
    }

    /// Changes the live session `id` in container `cid` as of `seen`;
    /// false when there is no such entry or it is newer.
    pub(crate) fn update(
        &self,
        id: &str,
        cid: &str,
        seen: i64,
        f: impl FnOnce(&mut Session),
    ) -> bool {
        let mut t = self.lock();
        let Some(e) = t.entries.get_mut(id) else {
            return false;
        };
        match &mut e.session {
            Some(s) if e.cid == cid && e.seen <= seen => {
                f(s);
                e.seen = seen;
                true
            }
            _ => false,
        }
    }

    /// Marks session `id` removed as of `seen` (only when it is container
    /// `cid`, if given), and drops tombstones older than [`TOMBSTONE_TTL`].
    pub(crate) fn remove(&self, id: &str, cid: Option<&str>, seen: i64) {
        let mut t = self.lock();
        let ttl = i64::try_from(TOMBSTONE_TTL.as_nanos()).unwrap_or(i64::MAX);
        let horizon = now().saturating_sub(ttl);
        t.entries
            .retain(|_, e| e.session.is_some() || e.seen >= horizon);
        match t.entries.get_mut(id) {
            Some(e) if cid.is_some_and(|c| c != e.cid) || e.seen > seen => {}
            Some(e) => {
                e.session = None;
                e.seen = seen;
            }
            None => {
                t.entries.insert(
                    id.to_string(),
                    Entry {
                        cid: cid.unwrap_or_default().to_string(),
                        seen,
                        session: None,
                    },
                );
            }
        }
    }

    /// Entries held, tombstones included (for the bounded-memory tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::SessionStatus;

    fn s(id: &str, status: SessionStatus) -> Session {
        Session::bare(id, status)
    }

    fn status(t: &Table, id: &str) -> Option<SessionStatus> {
        t.sessions()?
            .into_iter()
            .find(|x| x.id == id)
            .map(|x| x.status)
    }

    #[test]
    fn answers_only_while_primed() {
        let t = Table::default();
        assert!(t.sessions().is_none());
        t.upsert(s("a", SessionStatus::Created), "c1", 5);
        assert!(t.sessions().is_none(), "written, not primed");
        t.prime(vec![(s("b", SessionStatus::Running), "c2".into())], 10);
        // "a" was written before the listing began: the listing decides.
        assert_eq!(t.sessions().unwrap().len(), 1);
        assert_eq!(status(&t, "b"), Some(SessionStatus::Running));
        t.unprime();
        assert!(t.sessions().is_none());
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn a_write_during_the_listing_survives_the_prime() {
        let t = Table::default();
        t.upsert(s("a", SessionStatus::Running), "c1", 20);
        t.remove("gone", Some("c9"), 21);
        t.prime(
            vec![
                (s("a", SessionStatus::Created), "c1".into()),
                (s("gone", SessionStatus::Running), "c9".into()),
            ],
            10,
        );
        assert_eq!(status(&t, "a"), Some(SessionStatus::Running));
        assert_eq!(status(&t, "gone"), None, "removed after the listing began");
    }

    #[test]
    fn entries_only_move_forward_in_time() {
        let t = Table::default();
        t.prime(vec![], 0);
        t.upsert(s("a", SessionStatus::Running), "c1", 100);
        // A die older than the start the provider recorded: dropped.
        assert!(!t.update("a", "c1", 90, |x| x.status = SessionStatus::Stopped));
        assert!(t.newer_than("a", 90));
        assert_eq!(status(&t, "a"), Some(SessionStatus::Running));
        // A newer one applies.
        assert!(t.update("a", "c1", 110, |x| {
            x.status = SessionStatus::Exited;
            x.exit_code = Some(137);
        }));
        assert_eq!(status(&t, "a"), Some(SessionStatus::Exited));
        // An older inspect does not undo it.
        t.upsert(s("a", SessionStatus::Running), "c1", 105);
        assert_eq!(status(&t, "a"), Some(SessionStatus::Exited));
        // Another container's event is not this session's.
        assert!(!t.update("a", "c-old", 120, |x| x.status = SessionStatus::Lost));
        assert!(!t.update("nobody", "c1", 120, |_| {}));
    }

    #[test]
    fn removal_is_by_container_and_blocks_older_writes() {
        let t = Table::default();
        t.prime(vec![(s("a", SessionStatus::Running), "c2".into())], 0);
        // The destroy of an earlier container of the same session.
        t.remove("a", Some("c1"), 50);
        assert_eq!(status(&t, "a"), Some(SessionStatus::Running));
        t.remove("a", Some("c2"), 60);
        assert_eq!(status(&t, "a"), None);
        // An inspect answered before the removal cannot bring it back...
        t.upsert(s("a", SessionStatus::Running), "c2", 55);
        assert_eq!(status(&t, "a"), None);
        // ...a create after it can.
        t.upsert(s("a", SessionStatus::Created), "c3", 70);
        assert_eq!(status(&t, "a"), Some(SessionStatus::Created));
    }

    #[test]
    fn tombstones_expire() {
        let t = Table::default();
        t.prime(vec![], 0);
        let old = now() - i64::try_from(TOMBSTONE_TTL.as_nanos()).unwrap() - 1;
        for i in 0..100 {
            t.remove(&format!("s{i}"), None, old);
        }
        t.upsert(s("live", SessionStatus::Running), "c", old);
        t.remove("fresh", None, now());
        assert_eq!(t.len(), 2, "only the live session and the fresh tombstone");
    }
}
