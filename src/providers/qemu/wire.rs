//! The transport QMP ([`super::qmp`]) and the guest agent ([`super::qga`])
//! share: JSON commands, one per line, over a Unix socket, every read
//! bounded by a deadline, and the four ways such an exchange fails.
//!
//! The reader is generic over `Read + Write` so unit tests feed it canned
//! bytes; the provider uses a `UnixStream` from [`connect`], whose short
//! read timeout ([`READ_SLICE`]) lets a read that reports
//! `WouldBlock`/`TimedOut` be retried until the deadline: a silent peer
//! costs at most the deadline, never a hang.
//!
//! What fails here is a [`WireError`] naming the peer and the step it
//! failed in; each protocol's own error wraps it and adds only what is its
//! own (a greeting, an agent that never answers, a refused command).

use serde_json::{json, Value};
use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long one blocking socket read may sleep before the deadline is
/// checked again.
pub(crate) const READ_SLICE: Duration = Duration::from_millis(50);

/// Writes to a peer that stopped reading fail after this long.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to the socket at `path` without ever blocking past `deadline`
/// (QEMU listens with a backlog of one while it serves another client: a
/// backlog that stays full is `TimedOut`). The stream returned blocks,
/// with `READ_SLICE` read timeouts.
pub(crate) fn connect(path: &Path, deadline: Instant) -> io::Result<UnixStream> {
    let stream = crate::os::socket::connect_unix(path, deadline)?;
    stream.set_read_timeout(Some(READ_SLICE))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    Ok(stream)
}

/// Which protocol a wire speaks: it words the errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peer {
    /// QEMU's monitor.
    Qmp,
    /// The guest agent inside the VM.
    Qga,
}

impl Peer {
    /// The protocol as messages name it.
    fn name(self) -> &'static str {
        match self {
            Peer::Qmp => "QMP",
            Peer::Qga => "guest agent",
        }
    }
}

/// Why an exchange failed, in the step named.
#[derive(Debug)]
pub(crate) enum WireError {
    /// The peer closed the connection (EOF, reset, broken pipe).
    Closed { peer: Peer, step: String },
    /// Nothing (or not enough) arrived before the deadline.
    Timeout {
        peer: Peer,
        step: String,
        after: Duration,
    },
    /// Something that is not a message of the protocol, or too long.
    Garbage {
        peer: Peer,
        step: String,
        detail: String,
    },
    /// Reading or writing failed.
    Io {
        peer: Peer,
        step: String,
        source: io::Error,
    },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Peer::{Qga, Qmp};
        match self {
            WireError::Closed { peer: Qmp, step } => write!(
                f,
                "QEMU closed the QMP connection during {step}; the VM has probably exited"
            ),
            WireError::Closed { peer: Qga, step } => write!(
                f,
                "the guest agent connection closed during {step}; the VM may have stopped"
            ),
            WireError::Timeout {
                peer: Qmp,
                step,
                after,
            } => write!(
                f,
                "QMP {step} got no answer within {}; QEMU is busy or another client holds its monitor (QMP serves one client at a time)",
                ms(*after)
            ),
            WireError::Timeout {
                peer: Qga,
                step,
                after,
            } => write!(
                f,
                "the guest agent did not finish answering {step} within {}",
                ms(*after)
            ),
            WireError::Garbage {
                peer: Qmp,
                step,
                detail,
            } => write!(f, "QEMU sent something that is not QMP during {step}: {detail}"),
            WireError::Garbage {
                peer: Qga,
                step,
                detail,
            } => write!(f, "the guest agent sent an unreadable reply to {step}: {detail}"),
            WireError::Io { peer, step, source } => {
                write!(f, "{} {step} failed: {source}", peer.name())
            }
        }
    }
}

impl std::error::Error for WireError {}

/// What went wrong below a step: the byte reader does not know which step
/// it serves. [`Wire::error`] turns it into a [`WireError`].
#[derive(Debug)]
pub(crate) enum Fault {
    Timeout,
    Closed,
    TooLong { max: usize },
    Io(io::Error),
}

/// A buffered reader whose every read is bounded by a deadline, and the
/// writer of commands, for one peer.
pub(crate) struct Wire<S> {
    pub(crate) stream: S,
    peer: Peer,
    buf: Vec<u8>,
    pos: usize,
    next_id: u64,
}

impl<S: Read + Write> Wire<S> {
    pub(crate) fn new(stream: S, peer: Peer) -> Wire<S> {
        Wire {
            stream,
            peer,
            buf: Vec::new(),
            pos: 0,
            next_id: 1,
        }
    }

    /// `fault` as the error of `step`, which began at `started`.
    pub(crate) fn error(&self, fault: Fault, step: &str, started: Instant) -> WireError {
        let (peer, step) = (self.peer, step.to_string());
        match fault {
            Fault::Timeout => WireError::Timeout {
                peer,
                step,
                after: started.elapsed(),
            },
            Fault::Closed => WireError::Closed { peer, step },
            Fault::TooLong { max } => WireError::Garbage {
                peer,
                step,
                detail: format!("a message longer than {max} bytes"),
            },
            Fault::Io(source) => WireError::Io { peer, step, source },
        }
    }

    /// A message of `step` that the protocol cannot read.
    pub(crate) fn garbage(&self, step: &str, detail: impl Into<String>) -> WireError {
        WireError::Garbage {
            peer: self.peer,
            step: step.to_string(),
            detail: detail.into(),
        }
    }

    /// Reads more bytes into the buffer, waiting until `deadline`.
    fn fill(&mut self, deadline: Instant) -> Result<(), Fault> {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        let mut chunk = [0u8; 8192];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(Fault::Closed),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(());
                }
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                        if Instant::now() >= deadline {
                            return Err(Fault::Timeout);
                        }
                    }
                    io::ErrorKind::Interrupted => {}
                    // QEMU may reset the connection right after `quit`.
                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
                        return Err(Fault::Closed)
                    }
                    _ => return Err(Fault::Io(e)),
                },
            }
            if Instant::now() >= deadline {
                return Err(Fault::Timeout);
            }
        }
    }

    /// Whether a whole line is buffered, to be read without waiting.
    pub(crate) fn has_line(&self) -> bool {
        self.buf[self.pos..].contains(&b'\n')
    }

    /// The next byte.
    pub(crate) fn byte(&mut self, deadline: Instant) -> Result<u8, Fault> {
        let b = self.peek(deadline)?;
        self.pos += 1;
        Ok(b)
    }

    /// The next byte without consuming it.
    pub(crate) fn peek(&mut self, deadline: Instant) -> Result<u8, Fault> {
        if self.pos == self.buf.len() {
            self.fill(deadline)?;
        }
        Ok(self.buf[self.pos])
    }

    /// The next line without its CR/LF, at most `max` bytes long.
    pub(crate) fn line(&mut self, deadline: Instant, max: usize) -> Result<Vec<u8>, Fault> {
        // Bytes after `pos` already searched: each is scanned once.
        let mut searched = 0;
        loop {
            if let Some(i) = self.buf[self.pos + searched..]
                .iter()
                .position(|b| *b == b'\n')
            {
                let i = searched + i;
                let mut line = self.buf[self.pos..self.pos + i].to_vec();
                self.pos += i + 1;
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                // A long line that came in one read is as long as one
                // that came in many.
                if line.len() > max {
                    return Err(Fault::TooLong { max });
                }
                return Ok(line);
            }
            searched = self.buf.len() - self.pos;
            if searched > max {
                return Err(Fault::TooLong { max });
            }
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            self.fill(deadline)?;
        }
    }

    /// Writes `bytes` whole, for `step`. A peer that hung up is `Closed`.
    pub(crate) fn send(&mut self, bytes: &[u8], step: &str) -> Result<(), WireError> {
        let written = self
            .stream
            .write_all(bytes)
            .and_then(|_| self.stream.flush());
        written.map_err(|e| match e.kind() {
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => WireError::Closed {
                peer: self.peer,
                step: step.to_string(),
            },
            _ => WireError::Io {
                peer: self.peer,
                step: step.to_string(),
                source: e,
            },
        })
    }

    /// Sends `{"execute": command, "id": ID, "arguments": args}` as one
    /// line, for `step`, and returns the id its reply will carry.
    pub(crate) fn send_command(
        &mut self,
        command: &str,
        args: Option<Value>,
        step: &str,
    ) -> Result<String, WireError> {
        let id = format!("vd-{}", self.next_id);
        self.next_id += 1;
        let mut msg = json!({"execute": command, "id": id});
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(b'\n');
        self.send(&bytes, step)?;
        Ok(id)
    }
}

/// A command the peer answered with an `error` reply. Each protocol words
/// it in its own error's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) command: String,
    /// QEMU's error class, e.g. `CommandNotFound`, `GenericError`.
    pub(crate) class: String,
    pub(crate) desc: String,
}

/// The refusal of `command` that `error` (the reply's `error` object)
/// says, with the protocols' defaults for what a peer left out.
pub(crate) fn refusal(command: &str, error: &Value) -> Refusal {
    Refusal {
        command: command.to_string(),
        class: error["class"]
            .as_str()
            .unwrap_or("GenericError")
            .to_string(),
        desc: error["desc"]
            .as_str()
            .unwrap_or("(no description)")
            .to_string(),
    }
}

/// A duration for people, to the millisecond ("1500ms", "2s").
pub(crate) fn ms(d: Duration) -> String {
    crate::protocol::duration::format(Duration::from_millis(d.as_millis() as u64))
}

/// At most 200 characters of peer text, for error messages.
pub(crate) fn clip(s: &str) -> String {
    if s.chars().count() <= 200 {
        return s.to_string();
    }
    let mut out: String = s.chars().take(200).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::canned::Canned;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(2)
    }

    #[test]
    fn lines_lose_their_cr_lf_and_bytes_come_one_by_one() {
        let mut w = Wire::new(Canned::new("a\r\nbc\n\u{ff}x"), Peer::Qmp);
        assert_eq!(w.line(soon(), 10).unwrap(), b"a");
        assert_eq!(w.peek(soon()).unwrap(), b'b');
        assert_eq!(w.line(soon(), 10).unwrap(), b"bc");
        assert_eq!(w.byte(soon()).unwrap(), 0xC3);
        assert_eq!(w.byte(soon()).unwrap(), 0xBF);
        assert_eq!(w.byte(soon()).unwrap(), b'x');
        assert!(matches!(w.byte(soon()), Err(Fault::Closed)));
    }

    #[test]
    fn each_fault_names_the_peer_and_the_step() {
        let started = Instant::now();
        let qmp = Wire::new(Canned::new(""), Peer::Qmp);
        let qga = Wire::new(Canned::new(""), Peer::Qga);
        let closed = |w: &Wire<Canned>| w.error(Fault::Closed, "step x", started).to_string();
        assert_eq!(
            closed(&qmp),
            "QEMU closed the QMP connection during step x; the VM has probably exited"
        );
        assert_eq!(
            closed(&qga),
            "the guest agent connection closed during step x; the VM may have stopped"
        );
        let long = qmp.error(Fault::TooLong { max: 8 }, "the greeting", started);
        assert_eq!(
            long.to_string(),
            "QEMU sent something that is not QMP during the greeting: a message longer than 8 bytes"
        );
        assert_eq!(
            qga.garbage("guest-exec", "no pid").to_string(),
            "the guest agent sent an unreadable reply to guest-exec: no pid"
        );
        let io = qga.error(Fault::Io(io::Error::other("boom")), "guest-ping", started);
        assert_eq!(io.to_string(), "guest agent guest-ping failed: boom");
        let t = qga.error(Fault::Timeout, "guest-ping", started);
        assert!(
            matches!(&t, WireError::Timeout { peer: Peer::Qga, step, .. } if step == "guest-ping"),
            "{t:?}"
        );
        assert!(
            t.to_string()
                .starts_with("the guest agent did not finish answering guest-ping within "),
            "{t}"
        );
    }

    #[test]
    fn a_silent_peer_times_out_and_a_long_line_is_refused() {
        let mut w = Wire::new(Canned::hanging("no newline yet"), Peer::Qmp);
        let started = Instant::now();
        let by = started + Duration::from_millis(100);
        assert!(matches!(w.line(by, 100), Err(Fault::Timeout)));
        assert!(started.elapsed() < Duration::from_secs(1));
        let mut w = Wire::new(Canned::hanging("x".repeat(100)), Peer::Qmp);
        assert!(matches!(
            w.line(soon(), 50),
            Err(Fault::TooLong { max: 50 })
        ));
    }

    /// A peer that hung up: every write fails with `kind`.
    struct Gone(io::ErrorKind);

    impl Read for Gone {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Ok(0)
        }
    }

    impl Write for Gone {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(self.0.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn commands_are_one_line_with_fresh_ids_and_a_hang_up_is_closed() {
        let mut w = Wire::new(Canned::new(""), Peer::Qga);
        let id = w.send_command("guest-ping", None, "guest-ping").unwrap();
        assert_eq!(id, "vd-1");
        let args = Some(json!({"pid": 7}));
        let id = w.send_command("guest-exec-status", args, "status").unwrap();
        assert_eq!(id, "vd-2");
        let sent = String::from_utf8(w.stream.written.clone()).unwrap();
        let lines: Vec<Value> = sent
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines,
            [
                json!({"execute": "guest-ping", "id": "vd-1"}),
                json!({"execute": "guest-exec-status", "id": "vd-2", "arguments": {"pid": 7}})
            ]
        );
        let mut w = Wire::new(Gone(io::ErrorKind::BrokenPipe), Peer::Qmp);
        let e = w.send_command("cont", None, "command cont").unwrap_err();
        assert!(
            matches!(&e, WireError::Closed { peer: Peer::Qmp, step } if step == "command cont"),
            "{e:?}"
        );
        let mut w = Wire::new(Gone(io::ErrorKind::PermissionDenied), Peer::Qmp);
        let e = w.send(b"x\n", "command cont").unwrap_err();
        assert!(matches!(&e, WireError::Io { .. }), "{e:?}");
        assert_eq!(e.to_string(), "QMP command cont failed: permission denied");
    }

    #[test]
    fn refusals_have_defaults() {
        let refused = |class: &str, desc: &str| Refusal {
            command: "cont".into(),
            class: class.into(),
            desc: desc.into(),
        };
        assert_eq!(
            refusal("cont", &json!({"class": "CommandNotFound", "desc": "no"})),
            refused("CommandNotFound", "no")
        );
        assert_eq!(
            refusal("cont", &json!({})),
            refused("GenericError", "(no description)")
        );
    }

    proptest::proptest! {
        /// QMP or the guest agent sending anything: lines no longer than
        /// asked, or a fault, never a panic.
        #[test]
        fn prop_lines_are_bounded_whatever_arrives(
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..500),
            max in 1usize..64,
        ) {
            let mut w = Wire::new(Canned::new(raw), Peer::Qga);
            while let Ok(line) = w.line(soon(), max) {
                proptest::prop_assert!(line.len() <= max);
            }
        }
    }
}
