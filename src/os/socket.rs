//! Sockets std cannot make: a Unix-socket connect bounded by a deadline,
//! a listening Unix socket that is never open to the wrong users, and for
//! tests a TCP port that is taken but refuses connections.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// Listens on a Unix socket at `path` with `mode`, owned by group `gid`
/// (None: the process's). The socket is bound in a fresh 0700 directory
/// beside `path`, given its group and mode there, and only then renamed
/// into place: no one can connect before its permissions are final, and
/// no process-wide umask is touched. A socket left at `path` by a dead
/// process is replaced; one that still answers, or anything that is not a
/// socket, is an error.
pub(crate) fn listen_unix(path: &Path, mode: u32, gid: Option<u32>) -> io::Result<UnixListener> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "the socket path names no file")
    })?;
    if !parent.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "something that is not a socket is there; remove it or pick another path",
            ))
        }
        Ok(_) if UnixStream::connect(path).is_ok() => {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another process listens on it (is an agent running already?)",
            ))
        }
        _ => {}
    }
    let staging = parent.join(format!(
        ".{}.{}",
        name.to_string_lossy(),
        super::random::random_hex(6)
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    let result = (|| {
        let temp = staging.join("s");
        let listener = UnixListener::bind(&temp)?;
        if gid.is_some() {
            std::os::unix::fs::chown(&temp, None, gid)?;
        }
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&temp, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// The id of group `name` (or a number) from /etc/group.
pub(crate) fn group_id(name: &str) -> Option<u32> {
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    std::fs::read_to_string("/etc/group")
        .ok()?
        .lines()
        .find_map(|l| {
            let mut f = l.split(':');
            (f.next() == Some(name)).then(|| f.nth(1)?.parse().ok())?
        })
}

/// Connects to the Unix socket at `path` without ever blocking past
/// `deadline`, and returns a blocking stream without timeouts.
///
/// A plain `connect()` blocks while the listener's backlog is full, and
/// QEMU listens with a backlog of one while it serves another client; so
/// the socket is non-blocking during connect, which is retried until the
/// deadline. A backlog that stays full is `TimedOut`.
pub(crate) fn connect_unix(path: &Path, deadline: Instant) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    let mut addr = libc::sockaddr_un {
        sun_family: libc::AF_UNIX as libc::sa_family_t,
        sun_path: [0; 108],
    };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "socket path is {} bytes; Unix sockets allow at most {}",
                bytes.len(),
                addr.sun_path.len() - 1
            ),
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let fd = socket(
        libc::AF_UNIX,
        libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
    )?;
    let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len()) as libc::socklen_t;
    loop {
        // SAFETY: `addr` is an initialised sockaddr_un that outlives the
        // call, and `len` does not exceed its size.
        let rc = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                len,
            )
        };
        if rc == 0 {
            break;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // Backlog full: the listener is busy with another client.
            Some(libc::EAGAIN) | Some(libc::EINTR) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Some(libc::EAGAIN) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the listener's backlog stayed full (another client is connected)",
                ))
            }
            _ => return Err(e),
        }
    }
    let stream = UnixStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// A new socket of `domain` and `kind`, owned.
fn socket(domain: libc::c_int, kind: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; it returns a new descriptor or -1.
    let fd = unsafe { libc::socket(domain, kind, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A loopback TCP port that is bound (so nothing else gets it while a test
/// runs) but not listening: a connection to it is refused.
#[cfg(test)]
pub(crate) struct ClosedPort {
    _fd: OwnedFd,
    pub(crate) port: u16,
}

#[cfg(test)]
pub(crate) fn closed_tcp_port() -> io::Result<ClosedPort> {
    let fd = socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC)?;
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `addr` is an initialised sockaddr_in of `len` bytes.
    if unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_in).cast(),
            len,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    let mut got = addr;
    let mut got_len = len;
    // SAFETY: getsockname(2) writes at most `got_len` bytes into `got`, a
    // sockaddr_in we own, and updates `got_len`.
    let rc = unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut got as *mut libc::sockaddr_in).cast(),
            &mut got_len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ClosedPort {
        _fd: fd,
        port: u16::from_be(got.sin_port),
    })
}

/// Which of `fds` have something to read (or hung up), waiting at most
/// `timeout` for one to (poll(2)).
pub(crate) fn readable(fds: &[std::os::fd::RawFd], timeout: Duration) -> io::Result<Vec<bool>> {
    let mut polls: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: poll(2) reads and writes `polls`, an array we own of exactly
    // the length passed; the fds are only looked at, never closed.
    let n = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(vec![false; fds.len()]);
        }
        return Err(e);
    }
    Ok(polls.iter().map(|p| p.revents != 0).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn connects_within_the_deadline_and_names_what_failed() {
        let dir = std::env::temp_dir().join(format!("vsock-{}", crate::os::random::random_hex(4)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let soon = Instant::now() + Duration::from_secs(2);
        let mut c = connect_unix(&path, soon).unwrap();
        let (mut s, _) = listener.accept().unwrap();
        c.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        let e = connect_unix(&dir.join("missing.sock"), soon).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let long = dir.join("a".repeat(120));
        let e = connect_unix(&long, soon).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(
            e.to_string().ends_with("Unix sockets allow at most 107"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_closed_port_refuses() {
        let p = closed_tcp_port().unwrap();
        let e = std::net::TcpStream::connect(("127.0.0.1", p.port)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn a_unix_listener_is_born_with_its_mode_and_replaces_only_a_dead_socket() {
        let dir =
            std::env::temp_dir().join(format!("vsock-{}", super::super::random::random_hex(4)));
        let path = dir.join("run/agent.sock");
        let gid = std::fs::metadata("/proc/self").unwrap().gid();
        let l = listen_unix(&path, 0o660, Some(gid)).unwrap();
        let m = std::fs::symlink_metadata(&path).unwrap();
        assert!(m.file_type().is_socket());
        assert_eq!(m.mode() & 0o777, 0o660);
        assert_eq!(m.gid(), gid);
        assert!(
            UnixStream::connect(&path).is_ok(),
            "the renamed socket accepts"
        );
        let e = listen_unix(&path, 0o660, None).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
        drop(l);
        // Its listener gone, the socket file is stale: replaced.
        let _l = listen_unix(&path, 0o600, None).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let file = dir.join("run/not-a-socket");
        std::fs::write(&file, "keep me").unwrap();
        let e = listen_unix(&file, 0o660, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "something that is not a socket is there; remove it or pick another path"
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
        let left: Vec<_> = std::fs::read_dir(dir.join("run"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 2, "no staging directory is left: {left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn group_ids() {
        assert_eq!(group_id("root"), Some(0));
        assert_eq!(group_id("1234"), Some(1234));
        assert_eq!(group_id("no-such-group-here"), None);
    }
}
