//! The ledger: what happened to each command id, and which results the
//! server still waits for, kept in the journal (`journal`).
//!
//! A command that changes something (create, start, stop, destroy, exec)
//! leaves up to four records: `intake` when accepted, `start` before it
//! runs, `result` when done, `ack` once the server has its result. Only
//! what was promised is flushed before the promise: the caller of
//! `begin` flushes (`sync`) before it acknowledges the command to anyone;
//! `mark_running` flushes before the command runs; `finish` before its
//! result is reported. One flush covers every record appended before it,
//! from every thread, so a command usually costs two flushes and sixteen
//! concurrent ones far fewer.
//!
//! After a crash a command with an intake and no start never ran and runs
//! now, in acceptance order; one with a start and no result may have run
//! and is reported as such, never run again.
//!
//! Read-only commands (system.*, session.list, service.*) are not written:
//! running one again is harmless, and the agent answers thousands of them.
//! Their results stay in a small in-memory window so that a repeated id
//! within it still gets the same answer.
//!
//! Retention (`maintain`): finished results the server has (or never
//! wanted) are dropped beyond `results.max_entries`, past
//! `results.max_age`, and oldest first while the journal holds more than
//! `results.max_bytes`. Commands still queued or running, and results not
//! yet acknowledged, are never dropped. Live records of an old segment are
//! copied forward, then the segment is removed.

use super::journal::record::{self, Op, Record, REPORT};
use super::journal::{Journal, Loc, Lsn, Room};
use super::StoreError;
pub(crate) use crate::protocol::command::Origin;
use crate::protocol::result::{capped_text, Code, ERROR_CAP};
use crate::protocol::tenant::Tenancy;
use crate::protocol::{CommandId, CommandResult};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// How many read-only results are kept in memory.
const RECENT_CAPACITY: usize = 256;

/// Segment size: big enough that rotation is rare, small enough that
/// compaction copies little at a time.
const SEGMENT_BYTES: u64 = 8 << 20;

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

/// How long finished results are kept.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retention {
    pub(crate) max_entries: usize,
    pub(crate) max_age: Duration,
    pub(crate) max_bytes: u64,
}

/// The body of an intake record.
#[derive(Serialize)]
struct IntakeOut<'a> {
    origin: Origin,
    tenancy: &'a Tenancy,
    command: &'a Value,
}

#[derive(Deserialize)]
struct IntakeIn {
    origin: Origin,
    #[serde(default)]
    tenancy: Tenancy,
    command: Value,
}

/// The body of a result record.
#[derive(Serialize)]
struct ResultOut<'a> {
    origin: Origin,
    tenancy: &'a Tenancy,
    result: &'a CommandResult,
}

#[derive(Deserialize)]
struct ResultIn {
    #[serde(default)]
    tenancy: Tenancy,
    result: CommandResult,
}

/// What `begin` found for an id.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Begin {
    /// Not seen before; now recorded as queued (not yet flushed).
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

/// A durable command as the journal holds it.
#[derive(Debug, Clone)]
struct Entry {
    seq: u64,
    state: State,
    /// The intake record while unfinished, the result record once done.
    loc: Loc,
    /// The start record while running.
    start: Option<Loc>,
    /// The result waits for the server's acknowledgement.
    report: bool,
    /// Unix seconds of the last step.
    time: u64,
}

/// A command accepted and not finished.
struct Flight {
    state: State,
    origin: Origin,
    tenancy: Tenancy,
    /// Recorded in the journal (not a read-only command).
    durable: bool,
}

/// A result that could not be written: answered from memory, written
/// again by `maintain`.
struct Unstored {
    result: CommandResult,
    origin: Origin,
    tenancy: Tenancy,
    report: bool,
    seq: u64,
}

struct Inner {
    index: HashMap<Box<str>, Entry>,
    inflight: HashMap<String, Flight>,
    /// Read-only results, kept as their JSON text: a parsed result is a
    /// tree of small allocations several times larger.
    recent: VecDeque<(String, Tenancy, Box<str>)>,
    unstored: Vec<Unstored>,
    next_seq: u64,
}

pub(crate) struct Ledger {
    journal: Journal,
    retention: Retention,
    inner: Mutex<Inner>,
}

/// What `finish` made of a result.
pub(crate) struct Finished {
    /// The result as it is answered: with code `not_durable` when it
    /// could not be stored.
    pub(crate) result: CommandResult,
    pub(crate) stored: Result<(), StoreError>,
}

/// A record's JSON body.
fn body<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Invalid {
        what,
        message: e.to_string(),
    })
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Ledger {
    /// Opens the journal in `cache_dir` (taking over the files of older
    /// agents, `results/` and `spool/`), and returns the commands that were
    /// queued or running when the agent last stopped, in acceptance order.
    pub(crate) fn open(
        cache_dir: &Path,
        retention: Retention,
    ) -> Result<(Ledger, Vec<Unfinished>), StoreError> {
        let mut index: HashMap<Box<str>, Entry> = HashMap::new();
        let mut next_seq = 1;
        let journal = Journal::open(cache_dir, SEGMENT_BYTES, |loc, r| {
            next_seq = next_seq.max(r.seq + 1);
            apply(&mut index, loc, &r);
        })?;
        let ledger = Ledger {
            journal,
            retention,
            inner: Mutex::new(Inner {
                index,
                inflight: HashMap::new(),
                recent: VecDeque::new(),
                unstored: Vec::new(),
                next_seq,
            }),
        };
        super::migrate::from_files(cache_dir, &ledger)?;
        let unfinished = ledger.load_unfinished();
        let mut inner = ledger.lock();
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
        drop(inner);
        Ok((ledger, unfinished))
    }

    /// Unfinished commands, read back from their intake records, oldest
    /// first. One whose intake cannot be read is forgotten with a warning.
    fn load_unfinished(&self) -> Vec<Unfinished> {
        let mut found: Vec<(u64, String, State, Loc)> = self
            .lock()
            .index
            .iter()
            .filter(|(_, e)| e.state != State::Done)
            .map(|(id, e)| (e.seq, id.to_string(), e.state, e.loc))
            .collect();
        found.sort_by_key(|f| f.0);
        let mut out = Vec::new();
        for (_, id, state, loc) in found {
            let parsed = self.journal.read(loc).and_then(|r| {
                serde_json::from_slice::<IntakeIn>(&r.body).map_err(|e| StoreError::Invalid {
                    what: "journal intake record",
                    message: e.to_string(),
                })
            });
            match parsed {
                Ok(i) => out.push(Unfinished {
                    id,
                    state,
                    origin: i.origin,
                    tenancy: i.tenancy,
                    command: i.command,
                }),
                Err(e) => {
                    log::warn!(command_id = id.as_str(); "an unfinished command cannot be read back ({e}); it is dropped");
                    self.lock().index.remove(id.as_str());
                }
            }
        }
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes everything recorded so far durable: the caller is about to
    /// acknowledge a command (a 202, a long-poll batch taken).
    pub(crate) fn sync(&self) -> Result<(), StoreError> {
        super::crash_point("intake");
        self.sync_all()
    }

    /// Checks an id and, if it is new, records it as queued for a sender
    /// of `tenancy`. A `durable` command's intake is appended, not
    /// flushed: see `sync`.
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
        if let Some((owner, r)) = find_kept(&inner, id.as_str()) {
            if !tenancy.reaches_command(&owner) {
                return Ok(Begin::Taken);
            }
            return Ok(Begin::Done(Box::new(r)));
        }
        if let Some(loc) = inner.index.get(id.as_str()).map(|e| e.loc) {
            match self.read_result(loc) {
                Ok((owner, _)) if !tenancy.reaches_command(&owner) => return Ok(Begin::Taken),
                Ok((_, r)) => return Ok(Begin::Done(Box::new(r))),
                Err(e) => {
                    log::warn!(command_id = id.as_str(); "the stored result is damaged ({e}); the id is taken as new");
                    inner.index.remove(id.as_str());
                }
            }
        }
        if durable {
            let entry = self.append_intake(&mut inner, id.as_str(), origin, tenancy, command)?;
            inner.index.insert(id.as_str().into(), entry);
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
        Ok(Begin::New)
    }

    /// Marks a queued command as started: for a durable one, the start is
    /// on disk before this returns, so before the command may run.
    /// Lookups say "running" only once it is: a command shown running is
    /// one that a crash would report as interrupted.
    pub(crate) fn mark_running(&self, id: &CommandId) -> Result<(), StoreError> {
        let lsn = {
            let mut inner = self.lock();
            let Some(f) = inner.inflight.get(id.as_str()) else {
                return Ok(());
            };
            if f.durable {
                let Some(seq) = inner.index.get(id.as_str()).map(|e| e.seq) else {
                    return Ok(());
                };
                let (loc, lsn) = self.journal.append(
                    Room::Following,
                    Op::Start,
                    0,
                    seq,
                    now_secs(),
                    id.as_str(),
                    b"",
                )?;
                if let Some(e) = inner.index.get_mut(id.as_str()) {
                    e.start = Some(loc);
                    e.state = State::Running;
                }
                Some(lsn)
            } else {
                None
            }
        };
        if let Some(lsn) = lsn {
            self.journal.sync(lsn)?;
            super::crash_point("start");
        }
        if let Some(f) = self.lock().inflight.get_mut(id.as_str()) {
            f.state = State::Running;
        }
        Ok(())
    }

    /// Stores the result (for the server too, with `report`) and ends the
    /// command's in-flight state. A durable result is on disk before this
    /// returns. One that cannot be written is kept in memory, answered
    /// with code `not_durable`, and written again by `maintain`; a crash
    /// before then reports the command as interrupted.
    pub(crate) fn finish(&self, result: CommandResult, report: bool) -> Finished {
        let flight = {
            let inner = self.lock();
            inner
                .inflight
                .get(&result.id)
                .map(|f| (f.origin, f.tenancy.clone(), f.durable))
        };
        let (origin, tenancy, durable) = flight.unwrap_or((Origin::Api, Tenancy::default(), false));
        if !durable {
            let mut inner = self.lock();
            if inner.recent.len() >= RECENT_CAPACITY {
                inner.recent.pop_front();
            }
            let text = serde_json::to_string(&result).unwrap_or_default();
            inner
                .recent
                .push_back((result.id.clone(), tenancy, text.into_boxed_str()));
            inner.inflight.remove(&result.id);
            drop(inner);
            if report {
                // A read-only command from the server: delivered from memory.
                self.keep_unstored(result.clone(), origin, Tenancy::everything(), report, 0);
            }
            return Finished {
                result,
                stored: Ok(()),
            };
        }
        let written = self.write_result(&result, origin, &tenancy, report);
        let stored = written.and_then(|lsn| self.journal.sync(lsn));
        let mut inner = self.lock();
        inner.inflight.remove(&result.id);
        drop(inner);
        match stored {
            Ok(()) => {
                super::crash_point("result");
                Finished {
                    result,
                    stored: Ok(()),
                }
            }
            Err(e) => {
                let amended = not_durable(result, &e);
                let seq = self
                    .lock()
                    .index
                    .get(amended.id.as_str())
                    .map_or(0, |e| e.seq);
                self.keep_unstored(amended.clone(), origin, tenancy, report, seq);
                Finished {
                    result: amended,
                    stored: Err(e),
                }
            }
        }
    }

    /// Appends an intake record under the next seq (not yet in the index).
    fn append_intake(
        &self,
        inner: &mut Inner,
        id: &str,
        origin: Origin,
        tenancy: &Tenancy,
        command: &Value,
    ) -> Result<Entry, StoreError> {
        let seq = inner.next_seq;
        let body = body(
            "journal intake record",
            &IntakeOut {
                origin,
                tenancy,
                command,
            },
        )?;
        let time = now_secs();
        let (loc, _) = self
            .journal
            .append(Room::New, Op::Intake, 0, seq, time, id, &body)?;
        inner.next_seq += 1;
        Ok(Entry {
            seq,
            state: State::Queued,
            loc,
            start: None,
            report: false,
            time,
        })
    }

    /// Appends a result record and points the index at it.
    fn write_result(
        &self,
        result: &CommandResult,
        origin: Origin,
        tenancy: &Tenancy,
        report: bool,
    ) -> Result<Lsn, StoreError> {
        let body = body(
            "journal result record",
            &ResultOut {
                origin,
                tenancy,
                result,
            },
        )?;
        let mut inner = self.lock();
        let seq = match inner.index.get(result.id.as_str()) {
            Some(e) => e.seq,
            None => {
                inner.next_seq += 1;
                inner.next_seq - 1
            }
        };
        let time = now_secs();
        let flags = if report { REPORT } else { 0 };
        let (loc, lsn) =
            self.journal
                .append(Room::New, Op::Result, flags, seq, time, &result.id, &body)?;
        inner.index.insert(
            result.id.as_str().into(),
            Entry {
                seq,
                state: State::Done,
                loc,
                start: None,
                report,
                time,
            },
        );
        Ok(lsn)
    }

    fn keep_unstored(
        &self,
        result: CommandResult,
        origin: Origin,
        tenancy: Tenancy,
        report: bool,
        seq: u64,
    ) {
        let mut inner = self.lock();
        inner.unstored.retain(|u| u.result.id != result.id);
        inner.unstored.push(Unstored {
            result,
            origin,
            tenancy,
            report,
            seq,
        });
    }

    /// Forgets a command that was accepted but will not run.
    pub(crate) fn forget(&self, id: &CommandId) {
        let mut inner = self.lock();
        let Some(f) = inner.inflight.remove(id.as_str()) else {
            return;
        };
        if f.durable {
            if let Some(e) = inner.index.remove(id.as_str()) {
                if let Err(err) = self.journal.append(
                    Room::Following,
                    Op::Forget,
                    0,
                    e.seq,
                    now_secs(),
                    id.as_str(),
                    b"",
                ) {
                    // Without it a restart runs the command after all: the
                    // intake stays in the index to say so.
                    log::warn!(command_id = id.as_str(); "cannot record that the command was withdrawn ({err}); it will run after a restart");
                    inner.index.insert(id.as_str().into(), e);
                }
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
        if let Some((owner, r)) = find_kept(&inner, id.as_str()) {
            return tenancy
                .reaches_command(&owner)
                .then(|| Found::Done(Box::new(r)));
        }
        let loc = inner.index.get(id.as_str())?.loc;
        drop(inner);
        match self.read_result(loc) {
            Ok((owner, r)) => tenancy
                .reaches_command(&owner)
                .then(|| Found::Done(Box::new(r))),
            Err(e) => {
                log::warn!(command_id = id.as_str(); "cannot read the stored result: {e}");
                None
            }
        }
    }

    fn read_result(&self, loc: Loc) -> Result<(Tenancy, CommandResult), StoreError> {
        let r = self.journal.read(loc)?;
        if r.op != Op::Result {
            return Err(StoreError::Invalid {
                what: "journal record",
                message: "not a result".into(),
            });
        }
        let body: ResultIn = serde_json::from_slice(&r.body).map_err(|e| StoreError::Invalid {
            what: "journal result record",
            message: e.to_string(),
        })?;
        Ok((body.tenancy, body.result))
    }

    /// Whether an unfinished command is in the journal (so it survives a
    /// restart); read-only commands are not.
    pub(crate) fn journaled(&self, id: &CommandId) -> bool {
        self.lock()
            .inflight
            .get(id.as_str())
            .is_some_and(|f| f.durable)
    }

    // The server's side: results it has not acknowledged.

    /// Ids of results the server has not acknowledged, oldest first.
    pub(crate) fn reports(&self) -> Vec<String> {
        let inner = self.lock();
        // A result is in the index once appended, but goes to the server
        // only once flushed: until then its command is still in flight.
        let mut ids: Vec<(u64, u64, String)> = inner
            .index
            .iter()
            .filter(|(id, e)| e.report && !inner.inflight.contains_key(id.as_ref() as &str))
            .map(|(id, e)| (e.time, e.seq, id.to_string()))
            .collect();
        ids.extend(
            inner
                .unstored
                .iter()
                .filter(|u| u.report)
                .map(|u| (0, u.seq, u.result.id.clone())),
        );
        ids.sort();
        ids.dedup_by(|a, b| a.2 == b.2);
        ids.into_iter().map(|(_, _, id)| id).collect()
    }

    /// A result for the server.
    pub(crate) fn report(&self, id: &str) -> Option<CommandResult> {
        let inner = self.lock();
        if let Some(u) = inner.unstored.iter().find(|u| u.result.id == id) {
            return Some(u.result.clone());
        }
        if inner.inflight.contains_key(id) {
            return None;
        }
        let loc = inner.index.get(id).filter(|e| e.report)?.loc;
        drop(inner);
        match self.read_result(loc) {
            Ok((_, r)) => Some(r),
            Err(e) => {
                // Unreadable: it can never be delivered, so it stops
                // holding up the others.
                log::warn!(command_id = id; "a result for the server cannot be read ({e}); dropping it");
                self.acknowledge(id);
                None
            }
        }
    }

    /// The server has the result (or refused it for good). Not flushed: a
    /// crash before the next flush only sends it again.
    pub(crate) fn acknowledge(&self, id: &str) {
        let mut inner = self.lock();
        for u in inner.unstored.iter_mut().filter(|u| u.result.id == id) {
            u.report = false;
        }
        if let Some(e) = inner.index.get_mut(id).filter(|e| e.report) {
            e.report = false;
            let seq = e.seq;
            if let Err(err) =
                self.journal
                    .append(Room::Following, Op::Ack, 0, seq, now_secs(), id, b"")
            {
                log::debug!(command_id = id; "cannot record the acknowledgement ({err}); the result may be sent again after a restart");
            }
        }
        drop(inner);
        super::crash_point("ack");
    }

    /// The server asked again for a finished command: send its result
    /// again.
    pub(crate) fn report_again(&self, id: &str) {
        let mut inner = self.lock();
        if let Some(u) = inner.unstored.iter_mut().find(|u| u.result.id == id) {
            u.report = true;
            return;
        }
        let Some(e) = inner.index.get_mut(id).filter(|e| e.state == State::Done) else {
            return;
        };
        if e.report {
            return;
        }
        e.report = true;
        let seq = e.seq;
        let _ = self
            .journal
            .append(Room::Following, Op::Report, 0, seq, now_secs(), id, b"");
    }

    /// Results the server has not acknowledged.
    pub(crate) fn pending_reports(&self) -> usize {
        let inner = self.lock();
        let unstored = inner.unstored.iter().filter(|u| u.report);
        let stored = inner.index.values().filter(|e| e.report).count();
        stored
            + unstored
                .filter(|u| {
                    !inner
                        .index
                        .get(u.result.id.as_str())
                        .is_some_and(|e| e.report)
                })
                .count()
    }

    pub(crate) fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Results held in memory because they could not be written.
    pub(crate) fn unstored(&self) -> usize {
        self.lock().unstored.iter().filter(|u| u.seq != 0).count()
    }

    // Upkeep, from the monitor.

    /// Writes results held in memory, applies retention and compacts old
    /// segments. Returns how many results were dropped.
    pub(crate) fn maintain(&self) -> usize {
        self.store_unstored();
        let dropped = self.apply_retention();
        if let Err(e) = self.compact() {
            log::warn!("cannot compact the journal: {e}");
        }
        dropped
    }

    fn store_unstored(&self) {
        let pending: Vec<(String, Origin, Tenancy, bool, CommandResult)> = self
            .lock()
            .unstored
            .iter()
            .filter(|u| u.seq != 0)
            .map(|u| {
                (
                    u.result.id.clone(),
                    u.origin,
                    u.tenancy.clone(),
                    u.report,
                    u.result.clone(),
                )
            })
            .collect();
        for (id, origin, tenancy, report, result) in pending {
            let stored = self
                .write_result(&result, origin, &tenancy, report)
                .and_then(|lsn| self.journal.sync(lsn));
            match stored {
                Ok(()) => {
                    self.lock().unstored.retain(|u| u.result.id != id);
                    log::info!(command_id = id.as_str(); "a result kept in memory is now stored");
                }
                Err(e) => {
                    log::warn!(command_id = id.as_str(); "a result is still not stored ({e}); free space in cache_dir");
                    break;
                }
            }
        }
        // Read-only results for the server, once delivered, are done with.
        self.lock().unstored.retain(|u| u.seq != 0 || u.report);
    }

    fn apply_retention(&self) -> usize {
        let mut inner = self.lock();
        let mut done: Vec<(u64, u64, Box<str>, u32)> = inner
            .index
            .iter()
            .filter(|(_, e)| e.state == State::Done && !e.report)
            .map(|(id, e)| (e.time, e.seq, id.clone(), e.loc.len))
            .collect();
        done.sort();
        let live_bytes: u64 = inner
            .index
            .values()
            .map(|e| e.loc.len as u64 + e.start.map_or(0, |s| s.len as u64))
            .sum();
        let now = now_secs();
        let excess = done.len().saturating_sub(self.retention.max_entries);
        let mut over = live_bytes.saturating_sub(self.retention.max_bytes);
        let mut dropped = 0;
        for (i, (time, _, id, len)) in done.into_iter().enumerate() {
            let old = now.saturating_sub(time) > self.retention.max_age.as_secs();
            if i < excess || old || over > 0 {
                inner.index.remove(&id);
                over = over.saturating_sub(len as u64);
                dropped += 1;
            }
        }
        dropped
    }

    /// Removes sealed segments that hold nothing live, after copying
    /// forward what is live in segments that are mostly dead.
    fn compact(&self) -> Result<(), StoreError> {
        for (seg, size) in self.journal.sealed_segments() {
            let live: u64 = {
                let inner = self.lock();
                inner
                    .index
                    .values()
                    .flat_map(|e| [Some(e.loc), e.start])
                    .flatten()
                    .filter(|l| l.seg == seg)
                    .map(|l| l.len as u64)
                    .sum()
            };
            if live > 0 && live * 2 > size {
                continue;
            }
            if live > 0 {
                self.copy_forward(seg)?;
            }
            self.journal.remove_segment(seg)?;
        }
        Ok(())
    }

    /// Copies the live records of `seg` to the active segment and flushes.
    fn copy_forward(&self, seg: u32) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let ids: Vec<Box<str>> = inner
            .index
            .iter()
            .filter(|(_, e)| e.loc.seg == seg || e.start.is_some_and(|s| s.seg == seg))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            let Some(e) = inner.index.get(&id).cloned() else {
                continue;
            };
            let mut moved = e.clone();
            let mut frame = self.journal.read_frame(e.loc)?;
            if e.state == State::Done {
                record::set_flags(&mut frame, if e.report { REPORT } else { 0 });
            }
            moved.loc = self.journal.append_frame(Room::New, &frame)?.0;
            if let Some(start) = e.start {
                let frame = self.journal.read_frame(start)?;
                moved.start = Some(self.journal.append_frame(Room::New, &frame)?.0);
            }
            inner.index.insert(id, moved);
        }
        drop(inner);
        self.sync_all()
    }
}

/// Folds one record read at start into the index. Records of one command
/// share its seq; one older than what the index holds for the id is stale
/// (the id was used again after its result was dropped).
fn apply(index: &mut HashMap<Box<str>, Entry>, loc: Loc, r: &Record) {
    let current = index.get(r.id.as_str()).map(|e| e.seq);
    if current.is_some_and(|seq| r.seq < seq) {
        return;
    }
    let fresh = current != Some(r.seq);
    match r.op {
        Op::Intake => {
            index.insert(
                r.id.as_str().into(),
                Entry {
                    seq: r.seq,
                    state: State::Queued,
                    loc,
                    start: None,
                    report: false,
                    time: r.time,
                },
            );
        }
        Op::Start if !fresh => {
            if let Some(e) = index.get_mut(r.id.as_str()) {
                if e.state != State::Done {
                    e.state = State::Running;
                    e.start = Some(loc);
                }
            }
        }
        Op::Result => {
            index.insert(
                r.id.as_str().into(),
                Entry {
                    seq: r.seq,
                    state: State::Done,
                    loc,
                    start: None,
                    report: r.flags & REPORT != 0,
                    time: r.time,
                },
            );
        }
        Op::Ack if !fresh => {
            if let Some(e) = index.get_mut(r.id.as_str()) {
                e.report = false;
            }
        }
        Op::Report if !fresh => {
            if let Some(e) = index.get_mut(r.id.as_str()) {
                e.report = e.state == State::Done;
            }
        }
        Op::Forget
            if !fresh
                && index
                    .get(r.id.as_str())
                    .is_some_and(|e| e.state == State::Queued) =>
        {
            index.remove(r.id.as_str());
        }
        _ => {}
    }
}

/// A result held in memory: read-only, or not stored.
fn find_kept(inner: &Inner, id: &str) -> Option<(Tenancy, CommandResult)> {
    if let Some(u) = inner
        .unstored
        .iter()
        .find(|u| u.result.id == id && u.seq != 0)
    {
        return Some((u.tenancy.clone(), u.result.clone()));
    }
    let (_, owner, text) = inner.recent.iter().find(|(k, _, _)| k == id)?;
    Some((owner.clone(), serde_json::from_str(text).ok()?))
}

/// The result as answered when it could not be stored.
fn not_durable(mut result: CommandResult, e: &StoreError) -> CommandResult {
    let what = match &result.code {
        Some(code) => format!("status {}, code {code}", result.status.as_str()),
        None => format!("status {}", result.status.as_str()),
    };
    let earlier = if result.error.is_empty() {
        String::new()
    } else {
        format!("; its error: {}", result.error)
    };
    result.error = capped_text(
        format!(
            "the command ran ({what}) but its result could not be stored: {e}; the agent keeps it in memory and stores it once cache_dir has room again{earlier}"
        ),
        ERROR_CAP,
    );
    result.code = Some(Code::NotDurable);
    result
}

/// Records a command of an older agent's files (see `migrate`).
pub(crate) struct Migrated<'a> {
    pub(crate) id: &'a str,
    pub(crate) state: State,
    pub(crate) origin: Origin,
    pub(crate) tenancy: &'a Tenancy,
    pub(crate) command: &'a Value,
    pub(crate) result: Option<&'a CommandResult>,
    pub(crate) report: bool,
}

impl Ledger {
    /// Takes over one command from an older agent's files, unless the
    /// journal knows it already (a migration cut short and run again).
    pub(crate) fn migrate(&self, m: Migrated<'_>) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.index.contains_key(m.id) {
            return Ok(());
        }
        if let (State::Done, Some(result)) = (m.state, m.result) {
            // Under a new seq: the index does not know the id.
            drop(inner);
            return self
                .write_result(result, m.origin, m.tenancy, m.report)
                .map(|_| ());
        }
        let mut entry = self.append_intake(&mut inner, m.id, m.origin, m.tenancy, m.command)?;
        if m.state == State::Running {
            let (start, _) = self.journal.append(
                Room::Following,
                Op::Start,
                0,
                entry.seq,
                entry.time,
                m.id,
                b"",
            )?;
            entry.start = Some(start);
            entry.state = State::Running;
        }
        inner.index.insert(m.id.into(), entry);
        Ok(())
    }

    /// Flushes everything appended so far.
    pub(crate) fn sync_all(&self) -> Result<(), StoreError> {
        self.journal.sync(self.journal.last_lsn())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::result::Status;
    use crate::protocol::tenant::Tenant;
    use serde_json::json;

    fn tmp() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "vendetta-ledger-{}",
            crate::os::random::random_hex(4)
        ));
        crate::os::fs::ensure_dir(&d).unwrap();
        d
    }

    const KEEP: Retention = Retention {
        max_entries: 100,
        max_age: Duration::from_secs(3600),
        max_bytes: 1 << 30,
    };

    fn id(s: &str) -> CommandId {
        CommandId::parse(s).unwrap()
    }

    fn result(i: &str) -> CommandResult {
        CommandResult::new(
            i,
            &json!({"id": i}),
            "n",
            Status::Success,
            SystemTime::now(),
        )
    }

    /// Runs `i` through intake, start and result.
    fn run(l: &Ledger, i: &str, report: bool) {
        let origin = if report {
            Origin::Coordination
        } else {
            Origin::Api
        };
        let e = Tenancy::everything();
        assert_eq!(
            l.begin(&id(i), origin, &e, &json!({"id": i}), true)
                .unwrap(),
            Begin::New
        );
        l.mark_running(&id(i)).unwrap();
        assert!(l.finish(result(i), report).stored.is_ok());
    }

    #[test]
    fn ids_hold_across_reopen_and_unfinished_come_back_in_acceptance_order() {
        let dir = tmp();
        let (l, unfinished) = Ledger::open(&dir, KEEP).unwrap();
        assert!(unfinished.is_empty());
        let e = Tenancy::everything();
        run(&l, "done", false);
        for i in ["q3", "q1", "q2"] {
            l.begin(&id(i), Origin::Api, &e, &json!({"id": i}), true)
                .unwrap();
        }
        l.mark_running(&id("q1")).unwrap();
        l.forget(&id("q2"));
        assert_eq!(
            l.begin(&id("q3"), Origin::Api, &e, &json!({}), true)
                .unwrap(),
            Begin::InProgress(State::Queued)
        );
        l.sync().unwrap();
        drop(l);
        let (l, unfinished) = Ledger::open(&dir, KEEP).unwrap();
        let got: Vec<(&str, State)> = unfinished
            .iter()
            .map(|u| (u.id.as_str(), u.state))
            .collect();
        assert_eq!(
            got,
            [("q3", State::Queued), ("q1", State::Running)],
            "acceptance order; the withdrawn one is gone"
        );
        assert!(matches!(
            l.begin(&id("done"), Origin::Api, &e, &json!({}), true).unwrap(),
            Begin::Done(r) if r.id == "done"
        ));
        assert_eq!(
            l.begin(&id("q1"), Origin::Api, &e, &json!({}), true)
                .unwrap(),
            Begin::InProgress(State::Running)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A command id is a tenant's own: another tenant repeating it, or
    /// looking it up, learns nothing; the sender survives a restart.
    #[test]
    fn ids_are_kept_per_sender() {
        let dir = tmp();
        let tenant = |t: &str| Tenancy {
            tenant: Some(Tenant::parse(t).unwrap()),
            all: false,
        };
        let (a, b) = (tenant("a"), tenant("b"));
        let (l, _) = Ledger::open(&dir, KEEP).unwrap();
        assert_eq!(
            l.begin(&id("shared"), Origin::Api, &a, &json!({}), true)
                .unwrap(),
            Begin::New
        );
        assert_eq!(
            l.begin(&id("ro"), Origin::Api, &a, &json!({}), false)
                .unwrap(),
            Begin::New
        );
        assert_eq!(
            l.begin(&id("shared"), Origin::Api, &b, &json!({}), true)
                .unwrap(),
            Begin::Taken
        );
        assert_eq!(l.lookup(&id("shared"), &b), None);
        l.finish(result("ro"), false);
        assert_eq!(
            l.begin(&id("ro"), Origin::Api, &b, &json!({}), false)
                .unwrap(),
            Begin::Taken
        );
        drop(l);
        let (l, unfinished) = Ledger::open(&dir, KEEP).unwrap();
        assert_eq!(unfinished[0].tenancy, a, "it runs for its sender");
        l.mark_running(&id("shared")).unwrap();
        assert!(l.finish(result("shared"), false).stored.is_ok());
        assert_eq!(l.lookup(&id("shared"), &b), None);
        assert!(matches!(l.lookup(&id("shared"), &a), Some(Found::Done(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn results_for_the_server_wait_for_its_acknowledgement_across_reopen() {
        let dir = tmp();
        let (l, _) = Ledger::open(&dir, KEEP).unwrap();
        run(&l, "r1", true);
        run(&l, "r2", true);
        run(&l, "local", false);
        assert_eq!(l.reports(), ["r1", "r2"]);
        assert_eq!(l.pending_reports(), 2);
        l.acknowledge("r1");
        assert_eq!(l.reports(), ["r2"]);
        drop(l);
        let (l, _) = Ledger::open(&dir, KEEP).unwrap();
        assert_eq!(l.reports(), ["r2"], "the acknowledgement was kept");
        assert_eq!(l.report("r2").unwrap().id, "r2");
        l.report_again("r1");
        assert_eq!(l.pending_reports(), 2);
        l.acknowledge("r1");
        l.acknowledge("r2");
        assert_eq!(l.pending_reports(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Retention drops the oldest finished results beyond the count, and
    /// never one the server waits for; compaction then removes segments
    /// that hold nothing live, and what is live survives it.
    #[test]
    fn retention_and_compaction_keep_what_is_live() {
        let dir = tmp();
        let few = Retention {
            max_entries: 3,
            ..KEEP
        };
        let (l, _) = Ledger::open(&dir, few).unwrap();
        run(&l, "server", true);
        for i in 0..6 {
            run(&l, &format!("d{i}"), false);
        }
        l.begin(
            &id("waiting"),
            Origin::Api,
            &Tenancy::everything(),
            &json!({"id": "waiting"}),
            true,
        )
        .unwrap();
        assert_eq!(l.maintain(), 3, "d0, d1 and d2 go; the reported one stays");
        let e = Tenancy::everything();
        assert!(l.lookup(&id("d0"), &e).is_none());
        assert!(matches!(l.lookup(&id("d5"), &e), Some(Found::Done(_))));
        assert!(matches!(l.lookup(&id("server"), &e), Some(Found::Done(_))));
        drop(l);
        // Reopened, the dropped ones are read back from the old segment
        // and dropped again; segments hold at most 8 MiB, so force a
        // rotation by hand: compaction works on sealed segments.
        let (l, unfinished) = Ledger::open(&dir, few).unwrap();
        assert_eq!(unfinished.len(), 1);
        l.journal.seal_for_test();
        assert_eq!(l.maintain(), 3);
        assert_eq!(l.journal.sealed_segments().len(), 0, "the old segment went");
        drop(l);
        let (l, unfinished) = Ledger::open(&dir, few).unwrap();
        assert_eq!(unfinished.len(), 1, "the queued one survived compaction");
        assert_eq!(l.reports(), ["server"]);
        assert!(matches!(l.lookup(&id("d4"), &e), Some(Found::Done(_))));
        assert!(l.lookup(&id("d1"), &e).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn max_bytes_drops_the_oldest_results() {
        let dir = tmp();
        let (l, _) = Ledger::open(
            &dir,
            Retention {
                max_bytes: 1,
                ..KEEP
            },
        )
        .unwrap();
        run(&l, "a", false);
        run(&l, "b", true);
        assert_eq!(l.maintain(), 1, "only the one the server has may go");
        assert!(l.lookup(&id("a"), &Tenancy::everything()).is_none());
        assert_eq!(l.reports(), ["b"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_result_that_cannot_be_written_is_kept_and_stored_later() {
        let dir = tmp();
        let (l, _) = Ledger::open(&dir, KEEP).unwrap();
        let e = Tenancy::everything();
        l.begin(
            &id("x"),
            Origin::Coordination,
            &e,
            &json!({"id": "x"}),
            true,
        )
        .unwrap();
        l.mark_running(&id("x")).unwrap();
        // The next append needs a new segment, in a directory that is
        // gone: refused, as on a full disk.
        l.journal.break_for_test();
        std::fs::remove_dir_all(dir.join("journal")).unwrap();
        let f = l.finish(result("x"), true);
        let err = f.stored.unwrap_err().to_string();
        assert!(err.starts_with("cannot create a journal segment"), "{err}");
        assert_eq!(f.result.code, Some(Code::NotDurable));
        assert!(f.result.error.starts_with(
            "the command ran (status success) but its result could not be stored: cannot create a journal segment"
        ));
        assert_eq!(l.unstored(), 1);
        assert_eq!(l.reports(), ["x"], "delivered from memory");
        assert!(
            matches!(l.lookup(&id("x"), &e), Some(Found::Done(r)) if r.code == Some(Code::NotDurable))
        );
        l.maintain();
        assert_eq!(l.unstored(), 1, "still no room");
        crate::os::fs::ensure_dir(&dir.join("journal")).unwrap();
        l.maintain();
        assert_eq!(l.unstored(), 0, "stored once there is room");
        assert_eq!(l.reports(), ["x"]);
        drop(l);
        let (l, unfinished) = Ledger::open(&dir, KEEP).unwrap();
        assert!(unfinished.is_empty());
        assert!(
            matches!(l.lookup(&id("x"), &e), Some(Found::Done(r)) if r.code == Some(Code::NotDurable)),
            "as it was answered"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
