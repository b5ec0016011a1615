//! The session table: which sessions exist, in which provider, in which
//! state. Filled from the providers at start and by the monitor, updated by
//! every session command. It answers "which provider owns session X" and
//! the session counts; `session list` still asks the providers live.

use super::Runtime;
use crate::protocol::event::{Event, SessionChange, SessionEvent};
use crate::protocol::ProviderKind;
use crate::providers::{Provider, ProviderError, Session, SessionStatus};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, RwLock};

/// A change the monitor noticed, published as an event.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Change {
    Appeared(Session),
    Status {
        session: Session,
        from: SessionStatus,
    },
    Vanished(Session),
}

#[derive(Default)]
pub(crate) struct SessionTable {
    inner: RwLock<BTreeMap<String, Session>>,
    /// Ids being created: counted against `limits.max_sessions` from the
    /// moment a create is admitted, so parallel creates cannot pass it.
    creating: Mutex<BTreeSet<String>>,
}

/// Why a create was not admitted.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum NotAdmitted {
    Exists(Box<Session>),
    /// Another create of the same id is running.
    Creating,
    /// `limits.max_sessions` sessions exist or are being created.
    Full(usize),
}

/// A place for one session being created, given back on drop; by then a
/// created session is in the table.
pub(crate) struct Reservation<'a> {
    table: &'a SessionTable,
    id: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.table
            .creating
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl SessionTable {
    /// Admits a create of `id` when no session has that id and fewer than
    /// `max` exist or are being created, all checked under one lock.
    pub(crate) fn reserve(&self, id: &str, max: usize) -> Result<Reservation<'_>, NotAdmitted> {
        let map = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let mut creating = self.creating.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get(id) {
            return Err(NotAdmitted::Exists(Box::new(s.clone())));
        }
        if creating.contains(id) {
            return Err(NotAdmitted::Creating);
        }
        // A created session is in the table before its reservation goes.
        let pending = creating.iter().filter(|c| !map.contains_key(*c)).count();
        if map.len() + pending >= max {
            return Err(NotAdmitted::Full(max));
        }
        creating.insert(id.to_string());
        Ok(Reservation {
            table: self,
            id: id.to_string(),
        })
    }

    pub(crate) fn get(&self, id: &str) -> Option<Session> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    pub(crate) fn upsert(&self, s: Session) {
        self.inner
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(s.id.clone(), s);
    }

    pub(crate) fn remove(&self, id: &str) -> Option<Session> {
        self.inner
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
    }

    /// Replaces one provider's sessions with a fresh listing and returns
    /// what changed.
    pub(crate) fn replace(&self, kind: ProviderKind, fresh: Vec<Session>) -> Vec<Change> {
        let mut map = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let mut changes = Vec::new();
        let fresh: BTreeMap<String, Session> =
            fresh.into_iter().map(|s| (s.id.clone(), s)).collect();
        let gone: Vec<String> = map
            .iter()
            .filter(|(id, s)| s.provider == kind && !fresh.contains_key(*id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            if let Some(s) = map.remove(&id) {
                changes.push(Change::Vanished(s));
            }
        }
        for (id, s) in fresh {
            match map.get(&id) {
                None => changes.push(Change::Appeared(s.clone())),
                Some(old) if old.status != s.status => changes.push(Change::Status {
                    session: s.clone(),
                    from: old.status,
                }),
                _ => {}
            }
            map.insert(id, s);
        }
        changes
    }

    /// (total, running)
    pub(crate) fn counts(&self) -> (usize, usize) {
        let map = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let running = map
            .values()
            .filter(|s| s.status == SessionStatus::Running)
            .count();
        (map.len(), running)
    }

    /// Sessions per (provider, status), for the metrics gauge.
    pub(crate) fn by_status(&self) -> BTreeMap<(ProviderKind, SessionStatus), usize> {
        let map = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let mut out = BTreeMap::new();
        for s in map.values() {
            *out.entry((s.provider, s.status)).or_insert(0) += 1;
        }
        out
    }
}

/// Lists one provider's sessions, brings the table up to date and
/// publishes what changed. Every listing goes through here, so a change is
/// announced whoever noticed it first (the monitor or a `session list`).
impl Runtime {
    pub(crate) fn sync_sessions(&self, p: &dyn Provider) -> Result<Vec<Session>, ProviderError> {
        let list = p.list()?;
        for change in self.sessions.replace(p.kind(), list.clone()) {
            let (s, event) = match change {
                Change::Appeared(s) => (s, SessionChange::Discovered),
                Change::Status { session, from } => {
                    log::info!(session_id = session.id.as_str(); "session went from {} to {}", from.as_str(), session.status.as_str());
                    (session, SessionChange::Status)
                }
                Change::Vanished(s) => {
                    log::warn!(session_id = s.id.as_str(); "session disappeared from its provider");
                    (s, SessionChange::Vanished)
                }
            };
            self.events
                .publish(Event::Session(SessionEvent::noticed(&s, event)));
        }
        Ok(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(id: &str, status: SessionStatus) -> Session {
        Session {
            id: id.into(),
            provider: ProviderKind::Docker,
            status,
            image: "img".into(),
            ports: Default::default(),
            created: String::new(),
            labels: Default::default(),
            exit_code: None,
            warnings: vec![],
        }
    }

    #[test]
    fn diffs_listings() {
        let t = SessionTable::default();
        let c = t.replace(
            ProviderKind::Docker,
            vec![
                s("a", SessionStatus::Running),
                s("b", SessionStatus::Running),
            ],
        );
        assert_eq!(c.len(), 2);
        let c = t.replace(ProviderKind::Docker, vec![s("a", SessionStatus::Exited)]);
        assert_eq!(c.len(), 2);
        assert!(c.iter().any(|c| matches!(
            c,
            Change::Status {
                from: SessionStatus::Running,
                ..
            }
        )));
        assert!(c
            .iter()
            .any(|c| matches!(c, Change::Vanished(x) if x.id == "b")));
        assert_eq!(t.counts(), (1, 0));
        assert!(
            t.replace(ProviderKind::Lxc, vec![]).is_empty(),
            "other providers' sessions are untouched"
        );
    }

    #[test]
    fn parallel_creates_are_admitted_up_to_the_limit_exactly() {
        let t = std::sync::Arc::new(SessionTable::default());
        t.upsert(s("old", SessionStatus::Running));
        let admitted = std::sync::atomic::AtomicUsize::new(0);
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            for i in 0..64 {
                let (t, admitted, held_tx) = (&t, &admitted, held_tx.clone());
                scope.spawn(move || {
                    if let Ok(r) = t.reserve(&format!("s{i}"), 3) {
                        admitted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        held_tx.send(r.id.clone()).unwrap();
                        // Held while the others try: as a slow create would.
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                });
            }
        });
        drop(held_tx);
        assert_eq!(admitted.into_inner(), 2, "3 minus the session that exists");
        assert_eq!(held_rx.iter().count(), 2);
        assert!(matches!(t.reserve("old", 10), Err(NotAdmitted::Exists(x)) if x.id == "old"));
        let r = t.reserve("new", 10).unwrap();
        assert_eq!(t.reserve("new", 10).err(), Some(NotAdmitted::Creating));
        // Created: in the table, then the reservation goes; never counted twice.
        t.upsert(s("new", SessionStatus::Created));
        assert!(t.reserve("third", 3).is_ok());
        assert_eq!(t.reserve("fourth", 2).err(), Some(NotAdmitted::Full(2)));
        drop(r);
    }
}
