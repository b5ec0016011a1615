//! File descriptors: waiting on several at once and switching one to
//! non-blocking mode, which std does for sockets but not for pipes. Reads
//! and writes go through std (`PipeReader`, `PipeWriter`): a non-blocking
//! descriptor there reports `WouldBlock` like any other.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

/// What a descriptor is waited on for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interest {
    Read,
    Write,
}

/// Waits up to `timeout` (at least 1 ms) until one of `fds` is ready, and
/// says which are: readable or writable as asked, or hung up or failed,
/// which a read or write then reports. A `None` slot never fires, so a
/// caller keeps its indices when a stream has closed. An interrupted wait
/// returns with nothing ready; callers loop anyway.
pub(crate) fn poll<const N: usize>(
    fds: [(Option<BorrowedFd<'_>>, Interest); N],
    timeout: Duration,
) -> io::Result<[bool; N]> {
    let mut set = fds.map(|(fd, interest)| libc::pollfd {
        // poll(2) skips negative descriptors.
        fd: fd.map_or(-1, |f| f.as_raw_fd()),
        events: match interest {
            Interest::Read => libc::POLLIN,
            Interest::Write => libc::POLLOUT,
        },
        revents: 0,
    });
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
    // SAFETY: `set` is an array of N initialised pollfd that we own and that
    // outlives the call; the borrowed descriptors stay open until we return.
    let n = unsafe { libc::poll(set.as_mut_ptr(), N as libc::nfds_t, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok([false; N]);
        }
        return Err(e);
    }
    Ok(set.map(|p| p.revents != 0))
}

/// Makes reads and writes on `fd` return `WouldBlock` instead of waiting.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl(2) F_GETFL on a descriptor the borrow keeps open.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL with an int argument on the same open descriptor.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn polls_a_pipe_and_reads_it_without_blocking() {
        let (mut r, mut w) = std::io::pipe().unwrap();
        set_nonblocking(r.as_fd()).unwrap();
        let mut buf = [0u8; 8];
        let e = r.read(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        let t = Duration::from_millis(20);
        assert_eq!(
            poll(
                [(Some(r.as_fd()), Interest::Read), (None, Interest::Read)],
                t
            )
            .unwrap(),
            [false, false]
        );
        assert_eq!(
            poll([(Some(w.as_fd()), Interest::Write)], t).unwrap(),
            [true]
        );
        w.write_all(b"hi").unwrap();
        assert_eq!(
            poll(
                [(None, Interest::Read), (Some(r.as_fd()), Interest::Read)],
                t
            )
            .unwrap(),
            [false, true]
        );
        assert_eq!(r.read(&mut buf).unwrap(), 2);
        drop(w);
        // A hung-up pipe is ready: the read that follows says EOF.
        assert_eq!(
            poll([(Some(r.as_fd()), Interest::Read)], t).unwrap(),
            [true]
        );
        assert_eq!(r.read(&mut buf).unwrap(), 0);
    }
}
