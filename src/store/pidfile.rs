//! The pid file: written by `agent start`, locked for the agent's life so
//! that a second agent on the same state refuses to start, and so that
//! `agent stop` never signals a process that merely reused the pid.

use super::StoreError;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub(crate) struct PidFile {
    path: PathBuf,
    // Held open: the lock lives as long as the file handle.
    _file: File,
}

impl PidFile {
    pub(crate) fn acquire(path: &Path) -> Result<PidFile, StoreError> {
        if let Some(dir) = path.parent() {
            crate::os::fs::ensure_dir(dir)
                .map_err(|e| StoreError::io("create the pid file directory", dir, e))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map_err(|e| StoreError::io("open the pid file", path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut s = String::new();
                let _ = file.read_to_string(&mut s);
                return Err(StoreError::Locked {
                    path: path.to_path_buf(),
                    pid: s.trim().parse().ok(),
                });
            }
            Err(TryLockError::Error(e)) => {
                return Err(StoreError::io("lock the pid file", path, e))
            }
        }
        file.set_len(0)
            .map_err(|e| StoreError::io("truncate the pid file", path, e))?;
        writeln!(file, "{}", std::process::id())
            .map_err(|e| StoreError::io("write the pid file", path, e))?;
        file.sync_all()
            .map_err(|e| StoreError::io("sync the pid file", path, e))?;
        Ok(PidFile {
            path: path.to_path_buf(),
            _file: file,
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The pid of a running agent: the file names it and its lock is held.
/// A stale file (no lock holder) yields `None`.
pub(crate) fn running_pid(path: &Path) -> Option<u32> {
    let mut file = File::open(path).ok()?;
    match file.try_lock_shared() {
        Ok(()) => None,
        Err(TryLockError::WouldBlock) => {
            let mut s = String::new();
            file.read_to_string(&mut s).ok()?;
            s.trim().parse().ok()
        }
        Err(TryLockError::Error(_)) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_acquire_is_refused() {
        let dir =
            std::env::temp_dir().join(format!("vendetta-pid-{}", crate::os::random::random_hex(4)));
        let path = dir.join("v.pid");
        let held = PidFile::acquire(&path).unwrap();
        assert!(matches!(
            PidFile::acquire(&path),
            Err(StoreError::Locked { pid: Some(_), .. })
        ));
        assert_eq!(running_pid(&path), Some(std::process::id()));
        drop(held);
        assert!(!path.exists());
        assert_eq!(running_pid(&path), None);
        std::fs::write(&path, "12345\n").unwrap();
        assert_eq!(
            running_pid(&path),
            None,
            "a stale file is not a running agent"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
