//! Directories opened without following a path out of their root, and
//! bind mounts of an opened directory: what seals a session's workspace
//! (`runtime::workspace`).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

fn c_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))
}

/// Opens the directory `path` as an O_PATH handle, following symlinks:
/// for roots the operator configured.
pub(crate) fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let c = c_path(path)?;
    // SAFETY: c is a valid NUL-terminated path; the flags ask for a new
    // descriptor, which we own if the call succeeds.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the directory `rel` beneath `root` and never outside it: a
/// symlink or `..` that would leave `root` fails (EXDEV), as does a
/// /proc magic link (ELOOP); symlinks that stay inside are followed.
/// `rel` must be relative.
pub(crate) fn open_beneath(root: &OwnedFd, rel: &Path) -> io::Result<OwnedFd> {
    openat2_beneath(root, rel, 0)
}

/// Like [`open_beneath`], but no symlink at all may be on the way, not
/// even one that stays beneath `root`.
pub(crate) fn open_beneath_no_symlinks(root: &OwnedFd, rel: &Path) -> io::Result<OwnedFd> {
    openat2_beneath(root, rel, libc::RESOLVE_NO_SYMLINKS)
}

fn openat2_beneath(root: &OwnedFd, rel: &Path, extra: u64) -> io::Result<OwnedFd> {
    if rel.is_absolute() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path is not relative to its root",
        ));
    }
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let c = c_path(rel)?;
    // SAFETY: open_how is plain old data; all zeroes is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS | extra;
    // SAFETY: root is an open descriptor, c a valid NUL-terminated path and
    // how a fully initialised open_how whose size we pass; the call returns
    // a new descriptor we own, or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nothing else owns; it fits an i32.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The parent directory of `dir` (its `..`), as an O_PATH handle.
pub(crate) fn parent(dir: &OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: dir is an open descriptor and ".." a valid C string; the call
    // returns a new descriptor we own, or -1.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c"..".as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Device and inode: what a directory is, whatever it is called.
pub(crate) fn identity(fd: &OwnedFd) -> io::Result<(u64, u64)> {
    // SAFETY: stat is plain old data; all zeroes is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is an open descriptor and st a struct we own.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    Ok((st.st_dev as u64, st.st_ino as u64))
}

/// Bind-mounts the directory `dir` (an open handle, so no path is looked
/// up again) onto `target`.
pub(crate) fn bind(dir: &OwnedFd, target: &Path) -> io::Result<()> {
    let source = CString::new(format!("/proc/self/fd/{}", dir.as_raw_fd()))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad fd path"))?;
    let target = c_path(target)?;
    // SAFETY: source and target are valid NUL-terminated paths; a bind
    // mount takes no file system type or data (null pointers).
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Detaches the mount on `target`; nothing mounted there is fine.
pub(crate) fn unmount(target: &Path) -> io::Result<()> {
    let c = c_path(target)?;
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(e);
        }
    }
    Ok(())
}

/// Whether something is mounted on `path` (from /proc/self/mountinfo;
/// a bind mount of the same file system keeps the device number, so
/// comparing it with the parent's would not tell).
pub(crate) fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|m| unescape(m) == path.as_os_str().as_bytes())
    })
}

/// Mount points in mountinfo escape space, tab, newline and backslash as
/// octal (`\040`).
fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..=i + 3].iter().all(u8::is_ascii_digit) {
            let n = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(n);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Whether `p` is a plain path: absolute, with no `.` or `..` parts.
pub(crate) fn is_plain_absolute(p: &Path) -> bool {
    p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("vmount-{}", crate::os::random::random_hex(4)));
        std::fs::create_dir_all(d.join("root/inside/deeper")).unwrap();
        std::fs::create_dir_all(d.join("outside")).unwrap();
        d
    }

    #[test]
    fn beneath_follows_inner_symlinks_and_refuses_to_leave() {
        let d = tmp();
        std::os::unix::fs::symlink("inside", d.join("root/in-link")).unwrap();
        std::os::unix::fs::symlink("/", d.join("root/to-slash")).unwrap();
        std::os::unix::fs::symlink("../outside", d.join("root/up")).unwrap();
        let root = open_dir(&d.join("root")).unwrap();
        let inside = open_beneath(&root, Path::new("inside/deeper")).unwrap();
        let via_link = open_beneath(&root, Path::new("in-link/deeper")).unwrap();
        assert_eq!(identity(&inside).unwrap(), identity(&via_link).unwrap());
        for (rel, errno) in [
            ("to-slash", libc::EXDEV),
            ("up", libc::EXDEV),
            ("../outside", libc::EXDEV),
            ("missing", libc::ENOENT),
        ] {
            let e = open_beneath(&root, Path::new(rel)).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(errno), "{rel}: {e}");
        }
        assert_eq!(
            open_beneath(&root, Path::new("/etc")).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        let up = parent(&inside).unwrap();
        assert_eq!(
            identity(&up).unwrap(),
            identity(&open_beneath(&root, Path::new("inside")).unwrap()).unwrap()
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_bind_mount_keeps_the_directory_it_was_given() {
        let d = tmp();
        std::fs::write(d.join("root/inside/file"), "mine").unwrap();
        let root = open_dir(&d.join("root")).unwrap();
        let dir = open_beneath(&root, Path::new("inside")).unwrap();
        let target = d.join("sealed");
        std::fs::create_dir(&target).unwrap();
        bind(&dir, &target).unwrap();
        assert!(is_mount_point(&target));
        // The path is swapped for a symlink to /: the mount does not move.
        std::fs::rename(d.join("root/inside"), d.join("root/moved")).unwrap();
        std::os::unix::fs::symlink("/", d.join("root/inside")).unwrap();
        assert_eq!(
            std::fs::read_to_string(target.join("file")).unwrap(),
            "mine"
        );
        assert!(!target.join("etc").exists());
        unmount(&target).unwrap();
        assert!(!is_mount_point(&target));
        unmount(&target).unwrap();
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn mountinfo_escapes_are_read_back() {
        assert_eq!(unescape(r"/a\040b\134c"), b"/a b\\c");
        assert!(is_plain_absolute(Path::new("/srv/ws/a")));
        assert!(!is_plain_absolute(Path::new("/srv/../etc")));
        assert!(!is_plain_absolute(Path::new("srv/ws")));
    }
}
