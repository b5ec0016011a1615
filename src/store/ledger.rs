//! The idempotency ledger: what happened to each command id.
//!
//! A command that changes something (create, start, stop, destroy, exec) is
//! recorded on disk as `queued` when accepted, `running` before it starts
//! and `done` with its result, each step an atomic write. So after a crash
//! a `queued` command can safely run (it never started) and a `running` one
//! is reported as interrupted rather than run a second time.
//!
//! Read-only commands (system.*, session.list, service.*) are not written to
//! disk: running one again is harmless, and the agent answers thousands of
//! them. Their results stay in a small in-memory window so that a repeated
//! id within it still gets the same answer.
//!
//! Retention: `done` records older than `results.max_age`, or beyond the
//! newest `results.max_entries`, are pruned by the monitor. Records of
//! commands still queued or running are never pruned.

use super::StoreError;
use crate::os;
pub(crate) use crate::protocol::command::Origin;
use crate::protocol::tenant::Tenancy;
use crate::protocol::{CommandId, CommandResult};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// How many read-only results are kept in memory.
const RECENT_CAPACITY: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum State {
    Queued,
    Running,
    Done,
}

impl State {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Running => "running",
            State::Done => "done",
        }
    }
}

/// The same record for writing, borrowing what it holds: a done record's
/// result can be megabytes of output, not worth copying to serialize.
/// Field order and names must stay those of [`Record`].
#[derive(Serialize)]
struct RecordOut<'a> {
    state: State,
    origin: Origin,
    #[serde(skip_serializing_if = "is_default")]
    tenancy: &'a Tenancy,
    updated: String,
    command: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a CommandResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    state: State,
    origin: Origin,
    /// Who sent it: a repeated id, a lookup and a run after a restart get
    /// the sender's reach, not more. Absent in records of older agents.
    #[serde(default)]
    tenancy: Tenancy,
    updated: String,
    command: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<CommandResult>,
}

/// What `begin` found for an id.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Begin {
    /// Not seen before; now recorded as queued.
    New,
    /// Already finished: here is its result.
    Done(Box<CommandResult>),
    /// Accepted earlier and not finished yet.
    InProgress(State),
    /// Used by a caller whose commands this one may not see.
    Taken,
}

/// What `lookup` knows about an id.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Found {
    Done(Box<CommandResult>),
    InProgress(State),
}

/// A command found unfinished when the ledger was opened.
#[derive(Debug, Clone)]
pub(crate) struct Unfinished {
    pub(crate) id: String,
    pub(crate) state: State,
    pub(crate) origin: Origin,
    pub(crate) tenancy: Tenancy,
    pub(crate) command: Value,
}

/// A command accepted and not finished.
struct Flight {
    state: State,
    origin: Origin,
    tenancy: Tenancy,
    /// Recorded on disk (not a read-only command).
    durable: bool,
}

struct Inner {
    inflight: HashMap<String, Flight>,
    /// Read-only results, kept as their JSON text: a parsed result is a
    /// tree of small allocations several times larger.
    recent: VecDeque<(String, Tenancy, Box<str>)>,
}

pub(crate) struct Ledger {
    dir: PathBuf,
    corrupt: PathBuf,
    max_entries: usize,
    max_age: Duration,
    inner: Mutex<Inner>,
}

impl Ledger {
    /// Opens `cache_dir/results`, moving damaged records aside, and returns
    /// the commands that were queued or running when the agent last stopped.
    pub(crate) fn open(
        cache_dir: &Path,
        max_entries: usize,
        max_age: Duration,
    ) -> Result<(Ledger, Vec<Unfinished>), StoreError> {
        let dir = cache_dir.join("results");
        os::fs::ensure_dir(&dir)
            .map_err(|e| StoreError::io("create the results directory", &dir, e))?;
        os::fs::clean_temp_files(&dir);
        let corrupt = cache_dir.join("corrupt");
        let mut unfinished = Vec::new();
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| StoreError::io("read the results directory", &dir, e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(id) = id_of(&path) else { continue };
            // Done records (nearly all) are not parsed at start: they can
            // hold megabytes of output each. A damaged one is found and
            // moved aside when it is looked up.
            if is_done(&path) {
                continue;
            }
            match read_record(&path) {
                Ok(r) if r.state == State::Done => {}
                Ok(r) => unfinished.push(Unfinished {
                    id,
                    state: r.state,
                    origin: r.origin,
                    tenancy: r.tenancy,
                    command: r.command,
                }),
                Err(reason) => match os::fs::move_aside(&path, &corrupt) {
                    Ok(to) => log::warn!(
                        "result record {} is damaged ({reason}); moved to {}",
                        path.display(),
                        to.display()
                    ),
                    Err(e) => log::warn!(
                        "result record {} is damaged ({reason}) and could not be moved: {e}",
                        path.display()
                    ),
                },
            }
        }
        let mut inner = Inner {
            inflight: HashMap::new(),
            recent: VecDeque::new(),
        };
        for u in &unfinished {
            inner.inflight.insert(
                u.id.clone(),
                Flight {
                    state: u.state,
                    origin: u.origin,
                    tenancy: u.tenancy.clone(),
                    durable: true,
                },
            );
        }
        let ledger = Ledger {
            dir,
            corrupt,
            max_entries,
            max_age,
            inner: Mutex::new(inner),
        };
        Ok((ledger, unfinished))
    }

    fn path(&self, id: &str) -> PathBuf {
        // The prefix keeps ids such as "." and ".." from naming directories.
        self.dir.join(format!("r-{id}.json"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks an id and, if it is new, records it as queued for a sender
    /// of `tenancy`. `durable` commands are written to disk before this
    /// returns.
    pub(crate) fn begin(
        &self,
        id: &CommandId,
        origin: Origin,
        tenancy: &Tenancy,
        command: &Value,
        durable: bool,
    ) -> Result<Begin, StoreError> {
        let mut inner = self.lock();
        if let Some(f) = inner.inflight.get(id.as_str()) {
            if !tenancy.reaches_command(&f.tenancy) {
                return Ok(Begin::Taken);
            }
            return Ok(Begin::InProgress(f.state));
        }
        if let Some((owner, r)) = recent(&inner, id) {
            if !tenancy.reaches_command(&owner) {
                return Ok(Begin::Taken);
            }
            return Ok(Begin::Done(Box::new(r)));
        }
        let path = self.path(id.as_str());
        if path.exists() {
            match read_record(&path) {
                Ok(r) if !tenancy.reaches_command(&r.tenancy) => return Ok(Begin::Taken),
                Ok(Record {
                    state: State::Done,
                    result: Some(r),
                    ..
                }) => return Ok(Begin::Done(Box::new(r))),
                Ok(r) => return Ok(Begin::InProgress(r.state)),
                Err(reason) => {
                    let _ = os::fs::move_aside(&path, &self.corrupt);
                    log::warn!(
                        "result record {} was damaged ({reason}); moved aside",
                        path.display()
                    );
                }
            }
        }
        inner.inflight.insert(
            id.as_str().to_string(),
            Flight {
                state: State::Queued,
                origin,
                tenancy: tenancy.clone(),
                durable,
            },
        );
        if durable {
            // The in-flight entry claims the id, so the write (an fsync) can
            // happen without holding up every other lookup.
            drop(inner);
            let entry = Entry {
                state: State::Queued,
                origin,
                tenancy,
            };
            if let Err(e) = self.write(&path, entry, command, None) {
                self.lock().inflight.remove(id.as_str());
                return Err(e);
            }
        }
        Ok(Begin::New)
    }

    /// Marks a queued command as started. For durable commands the record
    /// is on disk before the command may run.
    /// Lookups say "running" only once the record does: a command shown
    /// running is one that a crash would report as interrupted.
    pub(crate) fn mark_running(&self, id: &CommandId, command: &Value) -> Result<(), StoreError> {
        let Some((origin, tenancy, durable)) = self.flight(id.as_str()) else {
            return Ok(());
        };
        if durable {
            let entry = Entry {
                state: State::Running,
                origin,
                tenancy: &tenancy,
            };
            self.write(&self.path(id.as_str()), entry, command, None)?;
        }
        if let Some(f) = self.lock().inflight.get_mut(id.as_str()) {
            f.state = State::Running;
        }
        Ok(())
    }

    /// Origin, sender and durability of a command in flight.
    fn flight(&self, id: &str) -> Option<(Origin, Tenancy, bool)> {
        let inner = self.lock();
        let f = inner.inflight.get(id)?;
        Some((f.origin, f.tenancy.clone(), f.durable))
    }

    /// Stores the result and ends the command's in-flight state.
    pub(crate) fn finish(&self, result: &CommandResult) -> Result<(), StoreError> {
        let (origin, tenancy, durable) =
            self.flight(&result.id)
                .unwrap_or((Origin::Api, Tenancy::default(), false));
        // Written while the command is still in flight (lookups see it
        // running until its result is on disk), outside the lock.
        let outcome = if durable {
            let entry = Entry {
                state: State::Done,
                origin,
                tenancy: &tenancy,
            };
            self.write(&self.path(&result.id), entry, &result.command, Some(result))
        } else {
            Ok(())
        };
        let mut inner = self.lock();
        // Read-only results live in memory; so does a durable one whose
        // write failed (disk full), so that this run still answers with it.
        // Its record on disk stays "running": after a restart the command
        // is reported as interrupted, never run again.
        if !durable || outcome.is_err() {
            if inner.recent.len() >= RECENT_CAPACITY {
                inner.recent.pop_front();
            }
            let text = serde_json::to_string(result).unwrap_or_default();
            inner
                .recent
                .push_back((result.id.clone(), tenancy, text.into_boxed_str()));
        }
        inner.inflight.remove(&result.id);
        outcome
    }

    /// Forgets a command that was accepted but could not be queued.
    pub(crate) fn forget(&self, id: &CommandId) {
        let mut inner = self.lock();
        if let Some(f) = inner.inflight.remove(id.as_str()) {
            if f.durable {
                let _ = std::fs::remove_file(self.path(id.as_str()));
            }
        }
    }

    /// The stored result, or the state of an unfinished command, if a
    /// caller of `tenancy` may see it.
    pub(crate) fn lookup(&self, id: &CommandId, tenancy: &Tenancy) -> Option<Found> {
        let inner = self.lock();
        if let Some(f) = inner.inflight.get(id.as_str()) {
            return tenancy
                .reaches_command(&f.tenancy)
                .then_some(Found::InProgress(f.state));
        }
        if let Some((owner, r)) = recent(&inner, id) {
            return tenancy
                .reaches_command(&owner)
                .then(|| Found::Done(Box::new(r)));
        }
        drop(inner);
        match read_record(&self.path(id.as_str())) {
            Ok(r) if !tenancy.reaches_command(&r.tenancy) => None,
            Ok(Record {
                state: State::Done,
                result: Some(r),
                ..
            }) => Some(Found::Done(Box::new(r))),
            Ok(r) => Some(Found::InProgress(r.state)),
            Err(_) => None,
        }
    }

    /// Whether an unfinished command is recorded on disk (so it survives a
    /// restart); read-only commands are not.
    pub(crate) fn journaled(&self, id: &CommandId) -> bool {
        self.lock()
            .inflight
            .get(id.as_str())
            .is_some_and(|f| f.durable)
    }

    /// Deletes done records past the retention limits. Returns how many.
    /// `keep` names ids whose record must stay whatever its age (results
    /// still waiting in the spool: their command may be sent again).
    pub(crate) fn prune(&self, keep: impl Fn(&str) -> bool) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut done: Vec<(SystemTime, PathBuf)> = Vec::new();
        let inflight: Vec<String> = self.lock().inflight.keys().cloned().collect();
        for e in entries.flatten() {
            let path = e.path();
            let Some(id) = id_of(&path) else { continue };
            if inflight.contains(&id) || keep(&id) {
                continue;
            }
            let mtime = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            done.push((mtime, path));
        }
        done.sort();
        let now = SystemTime::now();
        let excess = done.len().saturating_sub(self.max_entries);
        let mut removed = 0;
        for (i, (mtime, path)) in done.iter().enumerate() {
            let old = now
                .duration_since(*mtime)
                .map(|age| age > self.max_age)
                .unwrap_or(false);
            if (i < excess || old) && std::fs::remove_file(path).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    fn write(
        &self,
        path: &Path,
        entry: Entry<'_>,
        command: &Value,
        result: Option<&CommandResult>,
    ) -> Result<(), StoreError> {
        let record = RecordOut {
            state: entry.state,
            origin: entry.origin,
            tenancy: entry.tenancy,
            updated: crate::protocol::time::now_rfc3339(),
            command,
            result,
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| StoreError::Invalid {
            what: "result record",
            message: e.to_string(),
        })?;
        os::fs::write_atomic(path, &bytes, 0o600)
            .map_err(|e| StoreError::io("write a result record", path, e))
    }
}

/// Whether a record says `"state":"done"`, read from its first bytes only
/// (serde writes `state` first).
fn is_done(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 32];
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let n = f.read(&mut head).unwrap_or(0);
    head[..n].starts_with(br#"{"state":"done""#)
}

/// What a record says about its command besides the command itself.
#[derive(Clone, Copy)]
struct Entry<'a> {
    state: State,
    origin: Origin,
    tenancy: &'a Tenancy,
}

fn is_default(t: &&Tenancy) -> bool {
    **t == Tenancy::default()
}

/// A read-only result kept in memory, with its sender.
fn recent(inner: &Inner, id: &CommandId) -> Option<(Tenancy, CommandResult)> {
    let (_, owner, text) = inner.recent.iter().find(|(k, _, _)| k == id.as_str())?;
    Some((owner.clone(), serde_json::from_str(text).ok()?))
}

fn id_of(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let id = name.strip_prefix("r-")?.strip_suffix(".json")?;
    CommandId::parse(id).ok().map(|_| id.to_string())
}

fn read_record(path: &Path) -> Result<Record, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let r: Record = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    if r.state == State::Done && r.result.is_none() {
        return Err("a done record without a result".into());
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::result::Status;
    use serde_json::json;

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "vendetta-ledger-{}",
            crate::os::random::random_hex(4)
        ));
        os::fs::ensure_dir(&d).unwrap();
        d
    }

    fn result(id: &str) -> CommandResult {
        CommandResult::new(
            id,
            &json!({"id": id}),
            "n",
            Status::Success,
            SystemTime::now(),
        )
    }

    #[test]
    fn dedupes_across_reopen() {
        let dir = tmp();
        let id = CommandId::parse("c1").unwrap();
        let (l, unfinished) = Ledger::open(&dir, 100, Duration::from_secs(3600)).unwrap();
        assert!(unfinished.is_empty());
        assert_eq!(
            l.begin(&id, Origin::Api, &Tenancy::everything(), &json!({}), true)
                .unwrap(),
            Begin::New
        );
        assert_eq!(
            l.begin(&id, Origin::Api, &Tenancy::everything(), &json!({}), true)
                .unwrap(),
            Begin::InProgress(State::Queued)
        );
        l.mark_running(&id, &json!({})).unwrap();
        l.finish(&result("c1")).unwrap();
        drop(l);
        let (l, unfinished) = Ledger::open(&dir, 100, Duration::from_secs(3600)).unwrap();
        assert!(unfinished.is_empty());
        assert!(
            matches!(l.begin(&id, Origin::Api, &Tenancy::everything(), &json!({}), true).unwrap(), Begin::Done(r) if r.id == "c1")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A command id is a tenant's own: another tenant repeating it, or
    /// looking it up, learns nothing; the sender survives a restart.
    #[test]
    fn ids_are_kept_per_sender() {
        let dir = tmp();
        let tenant = |t: &str| Tenancy {
            tenant: Some(crate::protocol::tenant::Tenant::parse(t).unwrap()),
            all: false,
        };
        let (a, b) = (tenant("a"), tenant("b"));
        let (l, _) = Ledger::open(&dir, 100, Duration::from_secs(3600)).unwrap();
        let id = CommandId::parse("shared").unwrap();
        let ro = CommandId::parse("ro").unwrap();
        assert_eq!(
            l.begin(&id, Origin::Api, &a, &json!({}), true).unwrap(),
            Begin::New
        );
        assert_eq!(
            l.begin(&ro, Origin::Api, &a, &json!({}), false).unwrap(),
            Begin::New
        );
        assert_eq!(
            l.begin(&id, Origin::Api, &b, &json!({}), true).unwrap(),
            Begin::Taken
        );
        assert_eq!(l.lookup(&id, &b), None);
        assert_eq!(l.lookup(&id, &a), Some(Found::InProgress(State::Queued)));
        l.finish(&result("ro")).unwrap();
        assert_eq!(
            l.begin(&ro, Origin::Api, &b, &json!({}), false).unwrap(),
            Begin::Taken
        );
        assert_eq!(l.lookup(&ro, &b), None);
        assert!(matches!(l.lookup(&ro, &a), Some(Found::Done(_))));
        drop(l);
        let (l, unfinished) = Ledger::open(&dir, 100, Duration::from_secs(3600)).unwrap();
        assert_eq!(
            unfinished[0].tenancy, a,
            "a queued command runs for its sender after a restart"
        );
        l.mark_running(&id, &json!({})).unwrap();
        l.finish(&result("shared")).unwrap();
        assert_eq!(
            l.begin(&id, Origin::Api, &b, &json!({}), true).unwrap(),
            Begin::Taken
        );
        assert_eq!(l.lookup(&id, &Tenancy::default()), None);
        assert!(matches!(l.lookup(&id, &a), Some(Found::Done(_))));
        assert!(matches!(
            l.lookup(&id, &Tenancy::everything()),
            Some(Found::Done(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn running_is_shown_only_once_the_record_says_so() {
        let dir = tmp();
        let (l, _) = Ledger::open(&dir, 100, Duration::from_secs(3600)).unwrap();
        let id = CommandId::parse("r1").unwrap();
        l.begin(&id, Origin::Api, &Tenancy::everything(), &json!({}), true)
            .unwrap();
        // The record cannot be written: the command must not look running
        // (a crash now would run it at the next start, not report it).
        std::fs::remove_dir_all(dir.join("results")).unwrap();
        assert_eq!(
            l.mark_running(&id, &json!({})).unwrap_err().to_string(),
            format!(
                "cannot write a result record ({}): No such file or directory (os error 2)",
                dir.join("results/r-r1.json").display()
            )
        );
        assert!(matches!(
            l.lookup(&id, &Tenancy::everything()),
            Some(Found::InProgress(State::Queued))
        ));
        std::fs::create_dir_all(dir.join("results")).unwrap();
        l.mark_running(&id, &json!({})).unwrap();
        assert!(matches!(
            l.lookup(&id, &Tenancy::everything()),
            Some(Found::InProgress(State::Running))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reports_unfinished_and_moves_garbage_aside() {
        let dir = tmp();
        let (l, _) = Ledger::open(&dir, 100, Duration::from_secs(3600)).unwrap();
        let q = CommandId::parse("queued-1").unwrap();
        let r = CommandId::parse("running-1").unwrap();
        l.begin(
            &q,
            Origin::Coordination,
            &Tenancy::everything(),
            &json!({"id":"queued-1"}),
            true,
        )
        .unwrap();
        l.begin(
            &r,
            Origin::Api,
            &Tenancy::everything(),
            &json!({"id":"running-1"}),
            true,
        )
        .unwrap();
        l.mark_running(&r, &json!({"id":"running-1"})).unwrap();
        drop(l);
        std::fs::write(dir.join("results/r-bad.json"), b"{truncated").unwrap();
        let (_, mut unfinished) = Ledger::open(&dir, 100, Duration::from_secs(3600)).unwrap();
        unfinished.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(unfinished.len(), 2);
        assert_eq!(
            (unfinished[0].id.as_str(), unfinished[0].state),
            ("queued-1", State::Queued)
        );
        assert_eq!(unfinished[0].origin, Origin::Coordination);
        assert_eq!(
            (unfinished[1].id.as_str(), unfinished[1].state),
            ("running-1", State::Running)
        );
        assert!(!dir.join("results/r-bad.json").exists());
        assert_eq!(std::fs::read_dir(dir.join("corrupt")).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn read_only_results_stay_in_memory_and_are_bounded() {
        let dir = tmp();
        let (l, _) = Ledger::open(&dir, 100, Duration::from_secs(3600)).unwrap();
        for i in 0..(RECENT_CAPACITY + 10) {
            let id = CommandId::parse(&format!("s{i}")).unwrap();
            assert_eq!(
                l.begin(&id, Origin::Api, &Tenancy::everything(), &json!({}), false)
                    .unwrap(),
                Begin::New
            );
            l.finish(&result(&format!("s{i}"))).unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.join("results")).unwrap().count(), 0);
        assert!(
            l.lookup(&CommandId::parse("s0").unwrap(), &Tenancy::everything())
                .is_none(),
            "oldest fell out of the window"
        );
        let last = format!("s{}", RECENT_CAPACITY + 9);
        assert!(matches!(
            l.lookup(&CommandId::parse(&last).unwrap(), &Tenancy::everything()),
            Some(Found::Done(_))
        ));
        assert_eq!(l.lock().recent.len(), RECENT_CAPACITY);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn prunes_beyond_max_entries() {
        let dir = tmp();
        let (l, _) = Ledger::open(&dir, 3, Duration::from_secs(3600)).unwrap();
        for i in 0..5 {
            let id = CommandId::parse(&format!("d{i}")).unwrap();
            l.begin(&id, Origin::Api, &Tenancy::everything(), &json!({}), true)
                .unwrap();
            l.finish(&result(&format!("d{i}"))).unwrap();
        }
        let keep = CommandId::parse("still-running").unwrap();
        l.begin(&keep, Origin::Api, &Tenancy::everything(), &json!({}), true)
            .unwrap();
        assert_eq!(l.prune(|id| id == "d0"), 1, "d0 is still spooled: kept");
        assert!(l
            .lookup(&CommandId::parse("d0").unwrap(), &Tenancy::everything())
            .is_some());
        assert_eq!(
            l.prune(|_| false),
            1,
            "once it left the spool, the oldest goes"
        );
        assert!(l.lookup(&keep, &Tenancy::everything()).is_some());
        assert_eq!(std::fs::read_dir(dir.join("results")).unwrap().count(), 4);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
