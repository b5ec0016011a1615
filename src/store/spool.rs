//! The result spool: results for the coordination server that it has not
//! acknowledged yet. A result is written here (atomically) before its first
//! send and removed only after the server's 2xx, so it survives crashes,
//! reboots and server outages.

use super::StoreError;
use crate::os;
use crate::protocol::{CommandId, CommandResult};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

pub(crate) struct Spool {
    dir: PathBuf,
    corrupt: PathBuf,
    pending: AtomicUsize,
    /// Serializes put and remove, so that `pending` counts each file once.
    lock: std::sync::Mutex<()>,
}

impl Spool {
    pub(crate) fn open(cache_dir: &Path) -> Result<Spool, StoreError> {
        let dir = cache_dir.join("spool");
        os::fs::ensure_dir(&dir)
            .map_err(|e| StoreError::io("create the spool directory", &dir, e))?;
        os::fs::clean_temp_files(&dir);
        let spool = Spool {
            dir,
            corrupt: cache_dir.join("corrupt"),
            pending: AtomicUsize::new(0),
            lock: std::sync::Mutex::new(()),
        };
        let n = spool.ids().len();
        spool.pending.store(n, Ordering::Relaxed);
        Ok(spool)
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("s-{id}.json"))
    }

    pub(crate) fn put(&self, result: &CommandResult) -> Result<(), StoreError> {
        let path = self.path(&result.id);
        let bytes = serde_json::to_vec(result).map_err(|e| StoreError::Invalid {
            what: "spooled result",
            message: e.to_string(),
        })?;
        let failed = |e| StoreError::io("spool a result", &path, e);
        // The fsync happens outside the lock: workers finishing at once
        // must not queue behind each other's disk writes (nor the reporter
        // behind them).
        let staged = os::fs::stage(&path, &bytes, 0o600).map_err(failed)?;
        {
            let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            let existed = path.exists();
            staged.commit().map_err(failed)?;
            if !existed {
                self.pending.fetch_add(1, Ordering::Relaxed);
            }
        }
        os::fs::sync_dir(&self.dir).map_err(failed)
    }

    /// Removes an acknowledged (or deliberately dropped) result.
    pub(crate) fn remove(&self, id: &str) {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if std::fs::remove_file(self.path(id)).is_ok() {
            let _ = self
                .pending
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        self.path(id).exists()
    }

    /// A spooled result; a damaged file is moved aside and yields `None`.
    pub(crate) fn read(&self, id: &str) -> Option<CommandResult> {
        let path = self.path(id);
        let bytes = std::fs::read(&path).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(r) => Some(r),
            Err(e) => {
                // Counted out only when it really left, under the lock like
                // put and remove.
                let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
                if let Ok(to) = os::fs::move_aside(&path, &self.corrupt) {
                    log::warn!(
                        "spooled result {} is damaged ({e}); moved to {}",
                        path.display(),
                        to.display()
                    );
                    let _ = self
                        .pending
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
                }
                None
            }
        }
    }

    /// Spooled ids, oldest first.
    pub(crate) fn ids(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut items: Vec<(SystemTime, String)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                let id = name.strip_prefix("s-")?.strip_suffix(".json")?.to_string();
                CommandId::parse(&id).ok()?;
                let mtime = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                Some((mtime, id))
            })
            .collect();
        items.sort();
        items.into_iter().map(|(_, id)| id).collect()
    }

    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::result::Status;

    #[test]
    fn put_read_remove() {
        let dir = std::env::temp_dir().join(format!(
            "vendetta-spool-{}",
            crate::os::random::random_hex(4)
        ));
        let s = Spool::open(&dir).unwrap();
        let r = CommandResult::new(
            "c1",
            &serde_json::json!({}),
            "n",
            Status::Success,
            SystemTime::now(),
        );
        s.put(&r).unwrap();
        s.put(&r).unwrap();
        assert_eq!(s.pending(), 1);
        assert_eq!(Spool::open(&dir).unwrap().pending(), 1, "survives reopen");
        assert_eq!(s.read("c1").unwrap().id, "c1");
        std::fs::write(dir.join("spool/s-c2.json"), b"{").unwrap();
        let s = Spool::open(&dir).unwrap();
        assert_eq!(s.ids(), vec!["c1".to_string(), "c2".to_string()]);
        assert!(s.read("c2").is_none());
        s.remove("c1");
        assert_eq!(s.pending(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn concurrent_puts_and_removes_count_each_file_once() {
        let dir = std::env::temp_dir().join(format!(
            "vendetta-spool-{}",
            crate::os::random::random_hex(4)
        ));
        let s = Spool::open(&dir).unwrap();
        let result = |id: String| {
            CommandResult::new(
                &id,
                &serde_json::json!({}),
                "n",
                Status::Success,
                SystemTime::now(),
            )
        };
        std::thread::scope(|scope| {
            for t in 0..4 {
                let (s, result) = (&s, &result);
                scope.spawn(move || {
                    for i in 0..25 {
                        // Each id twice (a replay), from two threads at once.
                        let r = result(format!("c{}", (t / 2) * 100 + i));
                        s.put(&r).unwrap();
                        if i % 5 == 0 {
                            s.remove(&r.id);
                        }
                    }
                });
            }
        });
        assert_eq!(s.pending(), s.ids().len(), "the count matches the files");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
