//! The session table: which sessions exist, in which provider, in which
//! state. Filled from the providers at start and by the monitor, updated by
//! every session command. It answers "which provider owns session X" and
//! the session counts; `session list` still asks the providers live.

use super::Runtime;
use crate::config::TenantQuota;
use crate::protocol::event::{Event, SessionChange, SessionEvent};
use crate::protocol::tenant::{CPUS_LABEL, MEMORY_LABEL, TENANT_LABEL};
use crate::protocol::ProviderKind;
use crate::providers::{Provider, ProviderError, Session, SessionStatus};
use std::collections::BTreeMap;
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
    /// Creates admitted and not finished: counted against the limits from
    /// the moment they are admitted, so parallel creates cannot pass them.
    creating: Mutex<BTreeMap<String, Share>>,
    /// Providers listed at least once: until then, their sessions are
    /// not counted, and a create must list them first.
    listed: Mutex<std::collections::BTreeSet<ProviderKind>>,
}

/// What a session takes of its tenant's quota.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Share {
    pub(crate) tenant: Option<String>,
    pub(crate) memory: Option<u64>,
    pub(crate) cpus: Option<f64>,
}

impl Share {
    /// A session's share, from the labels its create gave it.
    fn of(s: &Session) -> Share {
        Share {
            tenant: s.labels.get(TENANT_LABEL).cloned(),
            memory: s.labels.get(MEMORY_LABEL).and_then(|v| v.parse().ok()),
            cpus: s.labels.get(CPUS_LABEL).and_then(|v| v.parse().ok()),
        }
    }
}

/// A tenant quota a create would pass: which, its limit and what is used.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OverQuota {
    pub(crate) tenant: String,
    /// `max_sessions`, `memory` or `cpus`.
    pub(crate) rule: &'static str,
    pub(crate) limit: f64,
    pub(crate) used: f64,
    /// The create names no amount of a quota'd resource.
    pub(crate) no_amount: bool,
}

/// Why a create was not admitted.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum NotAdmitted {
    Exists(Box<Session>),
    /// Another create of the same id is running.
    Creating,
    /// `limits.max_sessions` sessions exist or are being created.
    Full(usize),
    /// The tenant's quota would be passed.
    Quota(OverQuota),
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
    /// Admits a create of `id` taking `share` when no session has that id,
    /// fewer than `max` exist or are being created, and the tenant's
    /// `quota` holds, all checked under one lock.
    pub(crate) fn reserve(
        &self,
        id: &str,
        share: Share,
        max: usize,
        quota: Option<&TenantQuota>,
    ) -> Result<Reservation<'_>, NotAdmitted> {
        let map = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let mut creating = self.creating.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get(id) {
            return Err(NotAdmitted::Exists(Box::new(s.clone())));
        }
        if creating.contains_key(id) {
            return Err(NotAdmitted::Creating);
        }
        // A created session is in the table before its reservation goes.
        let pending = || creating.iter().filter(|(c, _)| !map.contains_key(*c));
        if map.len() + pending().count() >= max {
            return Err(NotAdmitted::Full(max));
        }
        if let (Some(tenant), Some(quota)) = (&share.tenant, quota) {
            let shares: Vec<Share> = map
                .values()
                .map(Share::of)
                .chain(pending().map(|(_, s)| s.clone()))
                .filter(|s| s.tenant.as_ref() == Some(tenant))
                .collect();
            if let Some(over) = over_quota(tenant, &shares, &share, quota) {
                return Err(NotAdmitted::Quota(over));
            }
        }
        creating.insert(id.to_string(), share);
        Ok(Reservation {
            table: self,
            id: id.to_string(),
        })
    }

    /// Whether `kind`'s sessions have been listed since the start.
    pub(crate) fn listed(&self, kind: ProviderKind) -> bool {
        self.listed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&kind)
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
        self.listed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(kind);
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

/// The first of `quota`'s rules that one more session taking `want`
/// would break, given the tenant's `held` sessions.
fn over_quota(
    tenant: &str,
    held: &[Share],
    want: &Share,
    quota: &TenantQuota,
) -> Option<OverQuota> {
    let over = |rule, limit: f64, used: f64, no_amount| OverQuota {
        tenant: tenant.to_string(),
        rule,
        limit,
        used,
        no_amount,
    };
    if let Some(max) = quota.max_sessions {
        if held.len() >= max {
            return Some(over("max_sessions", max as f64, held.len() as f64, false));
        }
    }
    /// A quota'd resource: its rule, its limit, and what a share takes.
    type Amount = fn(&Share) -> Option<f64>;
    let amounts: [(&'static str, Option<f64>, Amount); 2] = [
        ("memory", quota.memory.map(|m| m as f64), |s| {
            s.memory.map(|m| m as f64)
        }),
        ("cpus", quota.cpus, |s| s.cpus),
    ];
    for (rule, limit, amount) in amounts {
        let Some(limit) = limit else { continue };
        let used: f64 = held.iter().filter_map(amount).sum();
        match amount(want) {
            None => return Some(over(rule, limit, used, true)),
            Some(w) if used + w > limit + 1e-9 => return Some(over(rule, limit, used, false)),
            Some(_) => {}
        }
    }
    None
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
                    if let Ok(r) = t.reserve(&format!("s{i}"), Share::default(), 3, None) {
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
        assert!(
            matches!(t.reserve("old", Share::default(), 10, None), Err(NotAdmitted::Exists(x)) if x.id == "old")
        );
        let r = t.reserve("new", Share::default(), 10, None).unwrap();
        assert_eq!(
            t.reserve("new", Share::default(), 10, None).err(),
            Some(NotAdmitted::Creating)
        );
        // Created: in the table, then the reservation goes; never counted twice.
        t.upsert(s("new", SessionStatus::Created));
        assert!(t.reserve("third", Share::default(), 3, None).is_ok());
        assert_eq!(
            t.reserve("fourth", Share::default(), 2, None).err(),
            Some(NotAdmitted::Full(2))
        );
        drop(r);
    }

    fn tenant_session(id: &str, tenant: &str, memory: u64, cpus: &str) -> Session {
        let mut s = s(id, SessionStatus::Running);
        s.labels = [
            (TENANT_LABEL, tenant.to_string()),
            (MEMORY_LABEL, memory.to_string()),
            (CPUS_LABEL, cpus.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        s
    }

    fn share(tenant: &str, memory: Option<u64>, cpus: Option<f64>) -> Share {
        Share {
            tenant: Some(tenant.into()),
            memory,
            cpus,
        }
    }

    #[test]
    fn tenant_quotas_count_sessions_and_creates_in_flight() {
        let t = SessionTable::default();
        t.upsert(tenant_session("a1", "a", 1 << 30, "1.5"));
        t.upsert(tenant_session("b1", "b", 4 << 30, "4"));
        let quota = TenantQuota {
            max_sessions: Some(3),
            memory: Some(2 << 30),
            cpus: Some(2.0),
        };
        let q = Some(&quota);
        // 1 GiB + 0.5 CPU more fits; b's sessions do not count for a.
        let r1 = t
            .reserve("a2", share("a", Some(1 << 30), Some(0.5)), 100, q)
            .unwrap();
        let Err(NotAdmitted::Quota(over)) =
            t.reserve("a3", share("a", Some(1 << 20), Some(0.1)), 100, q)
        else {
            panic!("memory is used up by a1 and the create in flight")
        };
        assert_eq!(
            (over.tenant.as_str(), over.rule, over.used, over.no_amount),
            ("a", "memory", (2u64 << 30) as f64, false)
        );
        let Err(NotAdmitted::Quota(over)) = t.reserve("a3", share("a", None, Some(0.1)), 100, q)
        else {
            panic!("a create naming no memory cannot be counted")
        };
        assert!(over.no_amount && over.rule == "memory");
        drop(r1);
        let Err(NotAdmitted::Quota(over)) =
            t.reserve("a3", share("a", Some(1 << 20), Some(0.6)), 100, q)
        else {
            panic!("cpus: 1.5 + 0.6 > 2")
        };
        assert_eq!((over.rule, over.limit, over.used), ("cpus", 2.0, 1.5));
        let only_count = TenantQuota {
            max_sessions: Some(1),
            ..TenantQuota::default()
        };
        let Err(NotAdmitted::Quota(over)) =
            t.reserve("a3", share("a", None, None), 100, Some(&only_count))
        else {
            panic!("a has 1 session")
        };
        assert_eq!(
            (over.rule, over.limit, over.used),
            ("max_sessions", 1.0, 1.0)
        );
        assert!(t
            .reserve("c1", share("c", None, None), 100, Some(&only_count))
            .is_ok());
        assert!(
            t.reserve("u1", Share::default(), 100, Some(&only_count))
                .is_ok(),
            "the untenanted have no tenant quota"
        );
    }

    #[test]
    fn parallel_creates_of_one_tenant_stop_at_its_quota() {
        let t = SessionTable::default();
        let quota = TenantQuota {
            max_sessions: Some(3),
            ..TenantQuota::default()
        };
        // Every admitted create stays in flight until all have tried.
        let held = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for i in 0..64 {
                let (t, held, quota) = (&t, &held, &quota);
                scope.spawn(move || {
                    let tenant = if i % 2 == 0 { "a" } else { "b" };
                    let want = share(tenant, None, None);
                    if let Ok(r) = t.reserve(&format!("s{i}"), want, 100, Some(quota)) {
                        held.lock().unwrap().push((tenant, r));
                    }
                });
            }
        });
        let held = held.into_inner().unwrap();
        let count = |x: &str| held.iter().filter(|(t, _)| *t == x).count();
        assert_eq!((count("a"), count("b")), (3, 3));
    }
}
