//! The session table: which sessions exist, in which provider, in which
//! state. Filled from the providers at start and by the monitor, updated by
//! every session command. It answers "which provider owns session X" and
//! the session counts; `session list` still asks the providers live.

use super::Runtime;
use crate::config::TenantQuota;
use crate::protocol::event::{Event, SessionChange, SessionEvent};
use crate::protocol::tenant::{tenant_of, CPUS_LABEL, MEMORY_LABEL};
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
    /// When each id was last changed by a command (a counter): a listing
    /// that began before leaves it as the command left it, so a session
    /// just created is never dropped by a listing that missed it.
    touched: Mutex<Touched>,
}

#[derive(Default)]
struct Touched {
    now: u64,
    at: BTreeMap<String, u64>,
}

/// How many changes a listing may lag behind before its ids' marks are
/// forgotten.
const TOUCH_WINDOW: u64 = 4096;

/// What a session takes of its tenant's quota.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Share {
    pub(crate) tenant: Option<String>,
    pub(crate) memory: Option<u64>,
    pub(crate) cpus: Option<f64>,
}

impl Share {
    /// A session's share, from the labels its create gave it. An amount
    /// that is missing or not a finite number ≥ 0 is None: unlimited.
    fn of(s: &Session) -> Share {
        let amount = |key: &str| {
            s.labels
                .get(key)
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v >= 0.0)
        };
        Share {
            tenant: tenant_of(&s.labels).map(str::to_string),
            memory: amount(MEMORY_LABEL).map(|m| m as u64),
            cpus: amount(CPUS_LABEL),
        }
    }
}

/// A tenant quota a create would pass: which rule, and how.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OverQuota {
    pub(crate) tenant: String,
    /// `max_sessions`, `memory` or `cpus`.
    pub(crate) rule: &'static str,
    pub(crate) limit: f64,
    pub(crate) how: Over,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Over {
    /// What is in use (or being created) plus the create passes it.
    Used(f64),
    /// The create names no amount of the resource: unlimited.
    Unsized,
    /// One of the tenant's sessions has no limit of it, so it takes all.
    Unlimited(String),
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
            let shares: Vec<(String, Share)> = map
                .values()
                .map(|s| (s.id.clone(), Share::of(s)))
                .chain(pending().map(|(id, s)| (id.clone(), s.clone())))
                .filter(|(_, s)| s.tenant.as_ref() == Some(tenant))
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

    /// A session a command created or changed.
    pub(crate) fn upsert(&self, s: Session) {
        let mut map = self.inner.write().unwrap_or_else(|p| p.into_inner());
        self.touch(&s.id);
        map.insert(s.id.clone(), s);
    }

    /// A session a command destroyed.
    pub(crate) fn remove(&self, id: &str) -> Option<Session> {
        let mut map = self.inner.write().unwrap_or_else(|p| p.into_inner());
        self.touch(id);
        map.remove(id)
    }

    /// Whether a create of `id` is admitted and not finished.
    pub(crate) fn is_creating(&self, id: &str) -> bool {
        self.creating
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id)
    }

    fn touch(&self, id: &str) {
        let mut t = self.touched.lock().unwrap_or_else(|p| p.into_inner());
        t.now += 1;
        let now = t.now;
        t.at.insert(id.to_string(), now);
        if t.at.len() as u64 > TOUCH_WINDOW {
            t.at.retain(|_, at| *at + TOUCH_WINDOW > now);
        }
    }

    /// The mark to pass to [`SessionTable::replace`] for a listing that
    /// begins now.
    pub(crate) fn mark(&self) -> u64 {
        self.touched.lock().unwrap_or_else(|p| p.into_inner()).now
    }

    /// Replaces one provider's sessions with a fresh listing begun at
    /// `mark` and returns what changed. Sessions a command changed since
    /// `mark` stay as the command left them.
    pub(crate) fn replace(
        &self,
        kind: ProviderKind,
        fresh: Vec<Session>,
        mark: u64,
    ) -> Vec<Change> {
        let mut map = self.inner.write().unwrap_or_else(|p| p.into_inner());
        self.listed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(kind);
        let newer: std::collections::BTreeSet<String> = {
            let t = self.touched.lock().unwrap_or_else(|p| p.into_inner());
            t.at.iter()
                .filter(|(_, at)| **at > mark)
                .map(|(id, _)| id.clone())
                .collect()
        };
        let mut changes = Vec::new();
        let fresh: BTreeMap<String, Session> = fresh
            .into_iter()
            .filter(|s| !newer.contains(&s.id))
            .map(|s| (s.id.clone(), s))
            .collect();
        let gone: Vec<String> = map
            .iter()
            .filter(|(id, s)| {
                s.provider == kind && !fresh.contains_key(*id) && !newer.contains(*id)
            })
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
    held: &[(String, Share)],
    want: &Share,
    quota: &TenantQuota,
) -> Option<OverQuota> {
    let over = |rule, limit: f64, how| OverQuota {
        tenant: tenant.to_string(),
        rule,
        limit,
        how,
    };
    if let Some(max) = quota.max_sessions {
        if held.len() >= max {
            return Some(over(
                "max_sessions",
                max as f64,
                Over::Used(held.len() as f64),
            ));
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
        // A session without a limit of it (made before the quota was
        // set) could take all of it: nothing more fits.
        if let Some((id, _)) = held.iter().find(|(_, s)| amount(s).is_none()) {
            return Some(over(rule, limit, Over::Unlimited(id.clone())));
        }
        let used: f64 = held.iter().filter_map(|(_, s)| amount(s)).sum();
        match amount(want) {
            None => return Some(over(rule, limit, Over::Unsized)),
            Some(w) if used + w > limit + 1e-9 => return Some(over(rule, limit, Over::Used(used))),
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
        let mark = self.sessions.mark();
        let list = p.list()?;
        for change in self.sessions.replace(p.kind(), list.clone(), mark) {
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

/// Where providers report what their runtimes announce (QEMU's and
/// Docker's events):
/// the session table takes the new status and the event stream shows it
/// with its cause. A notice that changes nothing (the agent's own command
/// already said so) makes no event. Holds the runtime weakly: providers
/// live inside it.
pub(crate) fn notice_sink(rt: &std::sync::Arc<Runtime>) -> crate::providers::NoticeSink {
    let weak = std::sync::Arc::downgrade(rt);
    std::sync::Arc::new(move |n: crate::providers::Notice| {
        let Some(rt) = weak.upgrade() else {
            return;
        };
        // Not in the table yet: the next listing finds it.
        let Some(mut s) = rt.sessions.get(&n.session_id) else {
            return;
        };
        if s.status == n.status {
            return;
        }
        log::info!(session_id = n.session_id.as_str(), cause = n.cause.as_str(); "session went from {} to {}", s.status.as_str(), n.status.as_str());
        s.status = n.status;
        if n.exit_code.is_some() {
            s.exit_code = n.exit_code;
        }
        rt.sessions.upsert(s.clone());
        rt.events.publish(Event::Session(SessionEvent {
            cause: Some(n.cause),
            ..SessionEvent::noticed(&s, SessionChange::Status)
        }));
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(id: &str, status: SessionStatus) -> Session {
        Session::bare(id, status)
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
            t.mark(),
        );
        assert_eq!(c.len(), 2);
        let c = t.replace(
            ProviderKind::Docker,
            vec![s("a", SessionStatus::Exited)],
            t.mark(),
        );
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
            t.replace(ProviderKind::Lxc, vec![], t.mark()).is_empty(),
            "other providers' sessions are untouched"
        );
    }

    /// A listing that began before a create finished (or a destroy) does
    /// not undo it: the session counts from its create on.
    #[test]
    fn a_listing_older_than_a_command_leaves_its_session_alone() {
        let t = SessionTable::default();
        t.upsert(s("old", SessionStatus::Running));
        let mark = t.mark();
        // Meanwhile: "new" created, "old" destroyed.
        t.upsert(s("new", SessionStatus::Created));
        t.remove("old");
        // The listing still shows "old" and not "new".
        let c = t.replace(
            ProviderKind::Docker,
            vec![s("old", SessionStatus::Running)],
            mark,
        );
        assert!(c.is_empty(), "{c:?}");
        assert!(t.get("new").is_some() && t.get("old").is_none());
        // A listing begun after both is believed.
        let c = t.replace(ProviderKind::Docker, vec![], t.mark());
        assert!(matches!(&c[..], [Change::Vanished(x)] if x.id == "new"));
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
        use crate::protocol::tenant::TENANT_LABEL;
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
            (over.tenant.as_str(), over.rule, over.how),
            ("a", "memory", Over::Used((2u64 << 30) as f64))
        );
        let Err(NotAdmitted::Quota(over)) = t.reserve("a3", share("a", None, Some(0.1)), 100, q)
        else {
            panic!("a create naming no memory cannot be counted")
        };
        assert_eq!((over.rule, over.how), ("memory", Over::Unsized));
        drop(r1);
        let Err(NotAdmitted::Quota(over)) =
            t.reserve("a3", share("a", Some(1 << 20), Some(0.6)), 100, q)
        else {
            panic!("cpus: 1.5 + 0.6 > 2")
        };
        assert_eq!(
            (over.rule, over.limit, over.how),
            ("cpus", 2.0, Over::Used(1.5))
        );
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
            (over.rule, over.limit, over.how),
            ("max_sessions", 1.0, Over::Used(1.0))
        );
        assert!(t
            .reserve("c1", share("c", None, None), 100, Some(&only_count))
            .is_ok());
        assert!(
            t.reserve("u1", Share::default(), 100, Some(&only_count))
                .is_ok(),
            "the untenanted have no tenant quota"
        );
        // Labels that are not finite amounts ≥ 0 (NaN, negative, missing)
        // are no limit: that session takes the whole quota.
        for bad in ["NaN", "-4", "inf", ""] {
            let t = SessionTable::default();
            t.upsert(tenant_session("x1", "x", 1 << 20, bad));
            let Err(NotAdmitted::Quota(over)) =
                t.reserve("x2", share("x", Some(1 << 20), Some(0.1)), 100, q)
            else {
                panic!("cpus {bad:?} must not count as little")
            };
            assert_eq!(
                (over.rule, over.how),
                ("cpus", Over::Unlimited("x1".into())),
                "{bad:?}"
            );
        }
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
