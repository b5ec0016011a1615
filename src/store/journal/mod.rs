//! The append-only journal under `cache_dir/journal/`: segment files of
//! checksummed, length-prefixed records (see `record`).
//!
//! Appending is a plain write into the page cache; `sync` makes everything
//! appended so far durable with one `fdatasync`, shared by every thread
//! that asks meanwhile (group commit): the first to ask flushes for all
//! that wait, the others wait for that flush or the next one.
//!
//! At start every segment is scanned in order. A record cut short (a crash
//! mid-write) or damaged ends its segment: the rest is copied to
//! `corrupt/` and cut off with a warning, and the agent starts.
//!
//! The journal knows records, not commands: which records are still
//! needed, and so when a segment can go, is the ledger's business
//! (`ledger`), which copies what it still needs forward and then removes
//! old segments.

pub(crate) mod record;

use super::StoreError;
use crate::os;
use record::{Decoded, Op, Record};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The first bytes of every segment file.
const MAGIC: &[u8; 8] = b"VNDJRNL1";

/// Space kept allocated ahead of the active segment's end. A new command
/// is taken only while it can be kept, so the small records of commands
/// already taken (start, withdrawal, acknowledgement) always fit, even on
/// a full disk: an accepted command can always be started or withdrawn.
const HEADROOM: u64 = 64 << 10;
/// How far ahead the allocation is pushed at a time.
const RESERVE_STEP: u64 = 256 << 10;

/// What an append is for: whether it must leave the headroom whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Room {
    /// An intake, a result or a copy: refused unless the headroom stays
    /// (a result refused so is kept in memory: `not_durable`).
    New,
    /// A small record of work already taken (start, withdrawal,
    /// acknowledgement): may use the headroom.
    Following,
}

/// Where a record lives: segment number, offset and length of its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    pub(crate) seg: u32,
    pub(crate) off: u32,
    pub(crate) len: u32,
}

/// A position in the stream of appends: `sync(n)` returns once the n-th
/// append is durable.
pub(crate) type Lsn = u64;

/// Counters for `/metrics`.
#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) flushes: AtomicU64,
    pub(crate) records: AtomicU64,
    pub(crate) bytes: AtomicU64,
}

/// Called with each flush's latency (the runtime feeds a histogram).
pub(crate) type FlushObserver = Box<dyn Fn(Duration) + Send + Sync>;

struct Writer {
    file: Arc<File>,
    seg: u32,
    /// End of the last whole record in the active segment.
    pos: u64,
    /// Appends so far.
    lsn: Lsn,
    /// A failed write could not be cut off: start a new segment first.
    broken: bool,
    /// Bytes of the active segment allocated (see `HEADROOM`); None where
    /// the file system cannot allocate ahead.
    reserved: Option<u64>,
}

struct Flush {
    /// Appends known durable.
    synced: Lsn,
    /// A thread is flushing now.
    busy: bool,
    /// Threads waiting for a flush: others are committing at the same
    /// time, so more may be about to.
    waiting: usize,
}

pub(crate) struct Journal {
    dir: PathBuf,
    segment_bytes: u64,
    writer: Mutex<Writer>,
    flush: Mutex<Flush>,
    flushed: Condvar,
    pub(crate) stats: Stats,
    observer: Mutex<Option<FlushObserver>>,
}

fn seg_path(dir: &Path, seg: u32) -> PathBuf {
    dir.join(format!("{seg:08}.seg"))
}

/// Segment numbers in `dir`, in order.
fn list_segments(dir: &Path) -> Result<Vec<u32>, StoreError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| StoreError::io("read the journal directory", dir, e))?;
    let mut segs: Vec<u32> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let name = name.to_str()?;
            let n = name.strip_suffix(".seg")?;
            (n.len() == 8).then(|| n.parse().ok()).flatten()
        })
        .collect();
    segs.sort_unstable();
    Ok(segs)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Journal {
    /// Opens `cache_dir/journal`, calling `visit` with every whole record
    /// in the order written. Segments grow to about `segment_bytes`.
    pub(crate) fn open(
        cache_dir: &Path,
        segment_bytes: u64,
        mut visit: impl FnMut(Loc, Record),
    ) -> Result<Journal, StoreError> {
        let dir = cache_dir.join("journal");
        let corrupt = cache_dir.join("corrupt");
        os::fs::ensure_dir(&dir)
            .map_err(|e| StoreError::io("create the journal directory", &dir, e))?;
        let segs = list_segments(&dir)?;
        let mut last: Option<(u32, u64)> = None;
        for &seg in &segs {
            let end = scan_segment(&dir, &corrupt, seg, &mut visit)?;
            last = Some((seg, end));
        }
        let (file, seg, pos) = match last {
            Some((seg, end)) if end < segment_bytes => {
                let path = seg_path(&dir, seg);
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| StoreError::io("open a journal segment", &path, e))?;
                (file, seg, end)
            }
            Some((seg, _)) => {
                let (f, pos) = create_segment(&dir, seg + 1)?;
                (f, seg + 1, pos)
            }
            None => {
                let (f, pos) = create_segment(&dir, 1)?;
                (f, 1, pos)
            }
        };
        Ok(Journal {
            dir,
            segment_bytes,
            writer: Mutex::new(Writer {
                file: Arc::new(file),
                seg,
                pos,
                lsn: 0,
                broken: false,
                reserved: Some(pos),
            }),
            flush: Mutex::new(Flush {
                synced: 0,
                busy: false,
                waiting: 0,
            }),
            flushed: Condvar::new(),
            stats: Stats::default(),
            observer: Mutex::new(None),
        })
    }

    pub(crate) fn observe_flushes(&self, f: FlushObserver) {
        *lock(&self.observer) = Some(f);
    }

    /// Appends one record (not yet durable: see `sync`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn append(
        &self,
        room: Room,
        op: Op,
        flags: u8,
        seq: u64,
        time: u64,
        id: &str,
        body: &[u8],
    ) -> Result<(Loc, Lsn), StoreError> {
        self.append_frame(room, &record::encode(op, flags, seq, time, id, body))
    }

    /// Appends an encoded record (a copy made by compaction).
    pub(crate) fn append_frame(&self, room: Room, frame: &[u8]) -> Result<(Loc, Lsn), StoreError> {
        let mut w = lock(&self.writer);
        let len = frame.len() as u64;
        // Only records that take on work open a new segment: the small
        // ones that follow stay in the headroom of this one.
        let full = w.pos > MAGIC.len() as u64 && w.pos + len > self.segment_bytes;
        if w.broken || (full && room == Room::New) {
            self.rotate(&mut w)?;
        }
        if w.pos + len > u32::MAX as u64 {
            return Err(StoreError::Invalid {
                what: "journal record",
                message: format!("{len} bytes do not fit in a segment"),
            });
        }
        let path = seg_path(&self.dir, w.seg);
        let need = w.pos + len + if room == Room::New { HEADROOM } else { 0 };
        if let Err(e) = self.reserve(&mut w, need) {
            if room == Room::New {
                return Err(StoreError::io("find room in the journal", &path, e));
            }
            // Following records try their luck beyond what is kept.
        }
        if let Err(e) = w.file.write_all_at(frame, w.pos) {
            // Cut the partial record off, so the next one follows a whole
            // record; if even that fails, the next append starts a new
            // segment and the next start cuts this tail.
            if w.file.set_len(w.pos).is_err() {
                w.broken = true;
            }
            return Err(StoreError::io("append to the journal", &path, e));
        }
        let loc = Loc {
            seg: w.seg,
            off: w.pos as u32,
            len: len as u32,
        };
        w.pos += len;
        w.lsn += 1;
        self.stats.records.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes.fetch_add(len, Ordering::Relaxed);
        Ok((loc, w.lsn))
    }

    /// Makes sure the active segment has space allocated up to `upto`.
    fn reserve(&self, w: &mut Writer, upto: u64) -> std::io::Result<()> {
        let Some(reserved) = w.reserved else {
            return Ok(());
        };
        if upto <= reserved {
            return Ok(());
        }
        let to = upto + RESERVE_STEP;
        let exact = match os::fs::reserve(&w.file, reserved, to - reserved) {
            Ok(()) => {
                w.reserved = Some(to);
                return Ok(());
            }
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
                log::debug!("the file system under the journal cannot allocate ahead: {e}");
                w.reserved = None;
                return Ok(());
            }
            // Not a step ahead: just what is needed.
            Err(_) => os::fs::reserve(&w.file, reserved, upto - reserved),
        };
        exact.map(|()| w.reserved = Some(upto))
    }

    /// The newest append: `sync(last_lsn())` makes everything durable.
    pub(crate) fn last_lsn(&self) -> Lsn {
        lock(&self.writer).lsn
    }

    /// Starts a new segment, the old one flushed first: a flush only
    /// covers the segment that is active when it starts.
    fn rotate(&self, w: &mut Writer) -> Result<(), StoreError> {
        let old = seg_path(&self.dir, w.seg);
        if !w.broken {
            w.file
                .sync_data()
                .map_err(|e| StoreError::io("flush a journal segment", &old, e))?;
        }
        let (file, pos) = create_segment(&self.dir, w.seg + 1)?;
        w.file = Arc::new(file);
        w.seg += 1;
        w.pos = pos;
        w.broken = false;
        w.reserved = w.reserved.map(|_| pos);
        Ok(())
    }

    /// Starts a new segment now (tests: compaction works on sealed ones).
    #[cfg(test)]
    pub(crate) fn seal_for_test(&self) {
        let mut w = lock(&self.writer);
        self.rotate(&mut w).unwrap();
    }

    /// Makes the next append start a new segment (tests: with the
    /// directory gone, that fails as a full disk would).
    #[cfg(test)]
    pub(crate) fn break_for_test(&self) {
        lock(&self.writer).broken = true;
    }

    /// Returns once append `lsn` and all before it are on disk.
    pub(crate) fn sync(&self, lsn: Lsn) -> Result<(), StoreError> {
        let mut f = lock(&self.flush);
        loop {
            if f.synced >= lsn {
                return Ok(());
            }
            if !f.busy {
                break;
            }
            f.waiting += 1;
            f = self.flushed.wait(f).unwrap_or_else(|p| p.into_inner());
            f.waiting -= 1;
        }
        f.busy = true;
        let crowd = f.waiting > 0;
        drop(f);
        // Under concurrency, let threads that are appending right now join
        // this flush: a yield costs microseconds, a flush of their own far
        // more. Alone, flush at once.
        if crowd {
            std::thread::yield_now();
        }
        // Everything appended until now rides on this flush.
        let (file, upto, seg) = {
            let w = lock(&self.writer);
            (w.file.clone(), w.lsn, w.seg)
        };
        let started = Instant::now();
        let outcome = file.sync_data();
        let took = started.elapsed();
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        if let Some(observe) = lock(&self.observer).as_ref() {
            observe(took);
        }
        let mut f = lock(&self.flush);
        f.busy = false;
        if outcome.is_ok() {
            f.synced = f.synced.max(upto);
        }
        drop(f);
        self.flushed.notify_all();
        outcome.map_err(|e| StoreError::io("flush the journal", &seg_path(&self.dir, seg), e))
    }

    /// Reads a record back.
    pub(crate) fn read(&self, loc: Loc) -> Result<Record, StoreError> {
        let buf = self.read_frame(loc)?;
        let at = || format!("{} at {}", seg_path(&self.dir, loc.seg).display(), loc.off);
        match record::decode(&buf) {
            Decoded::Record(r, _) => Ok(r),
            Decoded::Torn => Err(StoreError::Invalid {
                what: "journal record",
                message: format!("{} is cut short", at()),
            }),
            Decoded::Damaged(why) => Err(StoreError::Invalid {
                what: "journal record",
                message: format!("{}: {why}", at()),
            }),
        }
    }

    /// Reads a record's frame as it is on disk (for copying it as is).
    pub(crate) fn read_frame(&self, loc: Loc) -> Result<Vec<u8>, StoreError> {
        let path = seg_path(&self.dir, loc.seg);
        let file =
            File::open(&path).map_err(|e| StoreError::io("open a journal segment", &path, e))?;
        let mut buf = vec![0u8; loc.len as usize];
        file.read_exact_at(&mut buf, loc.off as u64)
            .map_err(|e| StoreError::io("read the journal", &path, e))?;
        Ok(buf)
    }

    /// The active segment's number: older ones are sealed.
    pub(crate) fn active_segment(&self) -> u32 {
        lock(&self.writer).seg
    }

    /// Sealed segments and their sizes, oldest first.
    pub(crate) fn sealed_segments(&self) -> Vec<(u32, u64)> {
        let active = self.active_segment();
        list_segments(&self.dir)
            .unwrap_or_default()
            .into_iter()
            .filter(|&s| s < active)
            .map(|s| {
                let size = std::fs::metadata(seg_path(&self.dir, s))
                    .map(|m| m.len())
                    .unwrap_or(0);
                (s, size)
            })
            .collect()
    }

    /// Bytes of all segments.
    pub(crate) fn disk_bytes(&self) -> u64 {
        let active = lock(&self.writer).pos;
        self.sealed_segments().iter().map(|(_, n)| n).sum::<u64>() + active
    }

    /// Deletes a sealed segment whose records are no longer needed.
    pub(crate) fn remove_segment(&self, seg: u32) -> Result<(), StoreError> {
        if seg >= self.active_segment() {
            return Ok(());
        }
        let path = seg_path(&self.dir, seg);
        std::fs::remove_file(&path)
            .map_err(|e| StoreError::io("remove a journal segment", &path, e))?;
        os::fs::sync_dir(&self.dir)
            .map_err(|e| StoreError::io("flush the journal directory", &self.dir, e))
    }
}

/// The node id named by the newest result in `cache_dir`'s journal, read
/// without opening it (the agent's identity comes first): a witness for
/// recovering a damaged `node_id` file.
pub(crate) fn newest_node_id(cache_dir: &Path) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Body {
        result: Named,
    }
    #[derive(serde::Deserialize)]
    struct Named {
        node_id: String,
    }
    let dir = cache_dir.join("journal");
    for seg in list_segments(&dir).ok()?.into_iter().rev() {
        let Ok(bytes) = std::fs::read(seg_path(&dir, seg)) else {
            continue;
        };
        let mut pos = MAGIC.len().min(bytes.len());
        let mut newest = None;
        while let Decoded::Record(r, n) = record::decode(&bytes[pos..]) {
            if r.op == Op::Result {
                if let Ok(b) = serde_json::from_slice::<Body>(&r.body) {
                    newest = Some(b.result.node_id);
                }
            }
            pos += n;
        }
        if newest.is_some() {
            return newest;
        }
    }
    None
}

/// Creates segment `seg` with its magic, durable with its directory entry.
fn create_segment(dir: &Path, seg: u32) -> Result<(File, u64), StoreError> {
    let path = seg_path(dir, seg);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| StoreError::io("create a journal segment", &path, e))?;
    let made = file
        .write_all_at(MAGIC, 0)
        .and_then(|_| file.sync_data())
        .and_then(|_| os::fs::sync_dir(dir));
    if let Err(e) = made {
        let _ = std::fs::remove_file(&path);
        return Err(StoreError::io("create a journal segment", &path, e));
    }
    Ok((file, MAGIC.len() as u64))
}

/// Visits a segment's whole records and cuts off what follows the last
/// one (kept in `corrupt/`). Returns the segment's end.
fn scan_segment(
    dir: &Path,
    corrupt: &Path,
    seg: u32,
    visit: &mut impl FnMut(Loc, Record),
) -> Result<u64, StoreError> {
    let path = seg_path(dir, seg);
    let bytes = std::fs::read(&path).map_err(|e| StoreError::io("read the journal", &path, e))?;
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        // Not ours, or its creation was cut short: set it aside whole.
        if !bytes.is_empty() {
            let _ = os::fs::ensure_dir(corrupt);
            let to = corrupt.join(format!("{seg:08}.seg.{}", stamp()));
            let _ = std::fs::write(&to, &bytes);
            log::warn!(
                "journal segment {} does not start like one; kept a copy in {} and started it afresh",
                path.display(),
                to.display()
            );
        }
        let (_, pos) = create_segment(dir, seg)?;
        return Ok(pos);
    }
    let mut pos = MAGIC.len();
    let mut problem = None;
    while pos < bytes.len() {
        match record::decode(&bytes[pos..]) {
            Decoded::Record(r, n) => {
                visit(
                    Loc {
                        seg,
                        off: pos as u32,
                        len: n as u32,
                    },
                    r,
                );
                pos += n;
            }
            Decoded::Torn => {
                problem = Some("a record cut short (a crash while writing)");
                break;
            }
            Decoded::Damaged(why) => {
                problem = Some(why);
                break;
            }
        }
    }
    if let Some(why) = problem {
        let _ = os::fs::ensure_dir(corrupt);
        let to = corrupt.join(format!("{seg:08}.seg.tail-at-{pos}.{}", stamp()));
        let kept = std::fs::write(&to, &bytes[pos..]).is_ok();
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(pos as u64).and_then(|_| f.sync_data()));
        if let Err(e) = file {
            return Err(StoreError::io("cut a damaged journal tail", &path, e));
        }
        log::warn!(
            "journal segment {}: {why} at byte {pos}; cut off {} bytes{}",
            path.display(),
            bytes.len() - pos,
            if kept {
                format!(" (kept in {})", to.display())
            } else {
                String::new()
            }
        );
    }
    Ok(pos as u64)
}

fn stamp() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "vendetta-journal-{}",
            crate::os::random::random_hex(4)
        ));
        os::fs::ensure_dir(&d).unwrap();
        d
    }

    fn collect(dir: &Path, seg_bytes: u64) -> (Journal, Vec<(Loc, Record)>) {
        let mut seen = Vec::new();
        let j = Journal::open(dir, seg_bytes, |l, r| seen.push((l, r))).unwrap();
        (j, seen)
    }

    #[test]
    fn appends_survive_reopen_in_order_and_rotate() {
        let dir = tmp();
        let (j, seen) = collect(&dir, 200);
        assert!(seen.is_empty());
        let mut last = 0;
        for i in 0..20u64 {
            let (_, lsn) = j
                .append(
                    Room::New,
                    Op::Intake,
                    0,
                    i,
                    0,
                    &format!("c{i}"),
                    b"{\"x\":1}",
                )
                .unwrap();
            last = lsn;
        }
        j.sync(last).unwrap();
        assert!(j.sealed_segments().len() >= 2, "200-byte segments rotate");
        drop(j);
        let (j, seen) = collect(&dir, 200);
        let ids: Vec<_> = seen.iter().map(|(_, r)| r.id.clone()).collect();
        assert_eq!(ids, (0..20).map(|i| format!("c{i}")).collect::<Vec<_>>());
        let (loc, rec) = &seen[3];
        assert_eq!(&j.read(*loc).unwrap(), rec);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_or_damaged_tail_is_cut_and_kept_aside() {
        let dir = tmp();
        let (j, _) = collect(&dir, 1 << 20);
        let (_, a) = j
            .append(Room::New, Op::Intake, 0, 1, 0, "a", b"{}")
            .unwrap();
        let (_, b) = j
            .append(Room::New, Op::Intake, 0, 2, 0, "b", b"{}")
            .unwrap();
        j.sync(a.max(b)).unwrap();
        drop(j);
        let seg = dir.join("journal/00000001.seg");
        let whole = std::fs::read(&seg).unwrap();
        // Half of "b" written: a crash mid-append.
        std::fs::write(&seg, &whole[..whole.len() - 5]).unwrap();
        let (j, seen) = collect(&dir, 1 << 20);
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].1.id, "a");
        assert_eq!(std::fs::read_dir(dir.join("corrupt")).unwrap().count(), 1);
        // Appends go on after the last whole record.
        let (_, c) = j
            .append(Room::New, Op::Intake, 0, 3, 0, "c", b"{}")
            .unwrap();
        j.sync(c).unwrap();
        drop(j);
        // A flipped bit in "c".
        let mut bytes = std::fs::read(&seg).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 0x40;
        std::fs::write(&seg, &bytes).unwrap();
        let (_, seen) = collect(&dir, 1 << 20);
        assert_eq!(
            seen.iter().map(|(_, r)| r.id.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
        // Garbage for a segment.
        std::fs::write(&seg, b"not a journal").unwrap();
        let (j, seen) = collect(&dir, 1 << 20);
        assert!(seen.is_empty());
        let (_, d) = j
            .append(Room::New, Op::Intake, 0, 4, 0, "d", b"{}")
            .unwrap();
        j.sync(d).unwrap();
        drop(j);
        assert_eq!(collect(&dir, 1 << 20).1.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Threads that ask for a flush while one runs share the next one.
    #[test]
    fn concurrent_syncs_share_flushes() {
        let dir = tmp();
        let (j, _) = collect(&dir, 1 << 20);
        std::thread::scope(|s| {
            for t in 0..8 {
                let j = &j;
                s.spawn(move || {
                    for i in 0..50 {
                        let (_, lsn) = j
                            .append(Room::New, Op::Start, 0, i, 0, &format!("t{t}-{i}"), b"")
                            .unwrap();
                        j.sync(lsn).unwrap();
                    }
                });
            }
        });
        let flushes = j.stats.flushes.load(Ordering::Relaxed);
        assert_eq!(j.stats.records.load(Ordering::Relaxed), 400);
        assert!(flushes <= 400, "never more flushes than syncs: {flushes}");
        drop(j);
        assert_eq!(collect(&dir, 1 << 20).1.len(), 400);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
