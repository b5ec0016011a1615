//! Files and file systems: durable writes (temp file, fsync, rename, fsync
//! of the directory) and what statfs/statvfs say about a mount.
//!
//! A reader sees the old file or the new one, never a torn one, and after
//! `write_atomic` returns the new one survives a power cut.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    stage(path, bytes, mode)?.commit()?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// A temp file written and fsynced, not yet renamed into place. Staging is
/// the slow part of a write; a caller that must serialize the rename with
/// other changes can hold its lock for `commit` alone.
pub(crate) struct Staged {
    tmp: PathBuf,
    path: PathBuf,
    committed: bool,
}

pub(crate) fn stage(path: &Path, bytes: &[u8], mode: u32) -> io::Result<Staged> {
    stage_with(path, bytes, mode, true)
}

/// Replaces `path` atomically (temp file, rename) without syncing: a
/// reader, or a process killed midway, sees the old file or the new one,
/// but a power cut may bring back the old one.
pub(crate) fn replace(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    stage_with(path, bytes, mode, false)?.commit()
}

fn stage_with(path: &Path, bytes: &[u8], mode: u32, sync: bool) -> io::Result<Staged> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let staged = Staged {
        tmp: dir.join(format!(".{name}.tmp-{}", crate::os::random::random_hex(4))),
        path: path.to_path_buf(),
        committed: false,
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&staged.tmp)?;
    f.write_all(bytes)?;
    if sync {
        f.sync_all()?;
    }
    Ok(staged)
}

impl Staged {
    /// Renames the file into place. It survives a power cut only after the
    /// directory is synced too (`sync_dir`).
    pub(crate) fn commit(mut self) -> io::Result<()> {
        fs::rename(&self.tmp, &self.path)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` (and parents) with mode 0700 if missing.
pub(crate) fn ensure_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Takes group and other permissions off an existing directory; returns
/// the mode it had when it had any, so the caller can say so.
pub(crate) fn tighten_dir(dir: &Path) -> io::Result<Option<u32>> {
    let mode = fs::metadata(dir)?.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(None);
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(mode & 0o700))?;
    Ok(Some(mode))
}

/// Moves a damaged file into `corrupt/` next to its directory's parent so
/// that it can be inspected, and returns where it went.
pub(crate) fn move_aside(path: &Path, corrupt_dir: &Path) -> io::Result<PathBuf> {
    ensure_dir(corrupt_dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "unnamed".into());
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let dest = corrupt_dir.join(format!(
        "{name}.{stamp}.{}",
        crate::os::random::random_hex(2)
    ));
    fs::rename(path, &dest)?;
    Ok(dest)
}

/// A path as the C calls take it; a NUL byte inside cannot be passed.
fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} holds a NUL byte", path.display()),
        )
    })
}

/// The type of the file system holding `path` (statfs(2) `f_type`, a magic
/// number such as 0x63677270 for cgroup2).
pub(crate) fn statfs_type(path: &Path) -> io::Result<i64> {
    let c = c_path(path)?;
    // SAFETY: statfs is plain old data; all zeroes is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs(2) fills the struct we own; `c` is a NUL-terminated
    // string that outlives the call.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as i64)
}

/// Size and free space of a file system, in blocks of `fragment_size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Statvfs {
    pub(crate) fragment_size: u64,
    pub(crate) blocks: u64,
    /// Free blocks an unprivileged user may take.
    pub(crate) blocks_available: u64,
}

/// What statvfs(3) says about the file system holding `path`.
pub(crate) fn statvfs(path: &Path) -> io::Result<Statvfs> {
    let c = c_path(path)?;
    // SAFETY: statvfs is plain old data; all zeroes is a valid value.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs(3) fills the struct we own; `c` is a NUL-terminated
    // string that outlives the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    Ok(Statvfs {
        fragment_size: s.f_frsize as u64,
        blocks: s.f_blocks as u64,
        blocks_available: s.f_bavail as u64,
    })
}

/// Allocates `len` bytes of `file` from `offset` without changing its
/// size (fallocate with FALLOC_FL_KEEP_SIZE): later writes there cannot
/// fail for want of space. `Unsupported` where the file system cannot.
pub(crate) fn reserve(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "range too large",
        ));
    };
    // SAFETY: fallocate(2) takes a fd we borrow for the call and two
    // integers; it touches no memory of ours.
    if unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, off, len) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
            return Err(io::Error::new(io::ErrorKind::Unsupported, e));
        }
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the temp dir, for one test.
    fn scratch() -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("vendetta-fs-{}", crate::os::random::random_hex(4)));
        ensure_dir(&dir).unwrap();
        dir
    }

    #[test]
    fn atomic_write_replaces() {
        let dir = scratch();
        let p = dir.join("f.json");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "no temp files left");
        let moved = move_aside(&p, &dir.join("corrupt")).unwrap();
        assert!(moved.exists() && !p.exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn staged_file_is_invisible_until_commit_and_gone_if_dropped() {
        let dir = scratch();
        let p = dir.join("f.json");
        let dropped = stage(&p, b"never", 0o600).unwrap();
        assert!(!p.exists());
        drop(dropped);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "temp file removed");
        let kept = stage(&p, b"kept", 0o600).unwrap();
        assert!(!p.exists(), "not in place before commit");
        kept.commit().unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"kept");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "no temp files left");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn file_system_facts_and_their_failures() {
        const PROC_SUPER_MAGIC: i64 = 0x9fa0;
        assert_eq!(statfs_type(Path::new("/proc")).unwrap(), PROC_SUPER_MAGIC);
        let root = statvfs(Path::new("/")).unwrap();
        assert!(
            root.fragment_size > 0 && root.blocks >= root.blocks_available,
            "{root:?}"
        );
        let missing = Path::new("/nonexistent/vendetta");
        assert_eq!(
            statfs_type(missing).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(
            statvfs(missing).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        let e = statvfs(Path::new("/a\0b")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(e.to_string(), "/a\0b holds a NUL byte");
    }
}
