//! Sockets std cannot make: a Unix-socket connect bounded by a deadline
//! and, for tests, a TCP port that is taken but refuses connections.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

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
}
