//! A small QMP (QEMU Machine Protocol) client over the line transport it
//! shares with the guest agent client ([`super::wire`]).
//!
//! The client is generic over `Read + Write` so unit tests feed it canned
//! bytes; the provider uses a `UnixStream`. It reads the greeting, sends
//! `qmp_capabilities`, tags every command with an id and matches the reply
//! by it, and keeps the events that arrive while it waits (QEMU may send an
//! event *before* the reply to the command that caused it). Every read is
//! bounded by a deadline.
//!
//! QMP serves one client at a time: the provider holds one connection per
//! running VM (`monitor`), and leaves a second monitor socket to others.

use super::wire::{self, clip, Peer, Refusal, Wire, WireError};
use serde_json::Value;
use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The longest QMP message we accept (query-qmp-schema is ~200 KiB).
const MAX_LINE: usize = 8 << 20;

/// Why a QMP exchange failed.
#[derive(Debug)]
pub(crate) enum QmpError {
    /// The socket could not be reached.
    Connect { path: PathBuf, source: io::Error },
    /// The exchange broke: closed, timed out, garbled or failed I/O.
    Wire(WireError),
    /// The first message was not a QMP greeting.
    Greeting { got: String },
    /// QEMU answered the command with an error.
    Command(Refusal),
}

impl fmt::Display for QmpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QmpError::Connect { path, source } => write!(
                f,
                "cannot connect to the QMP socket {}: {source}{}",
                path.display(),
                if self.is_gone() {
                    "; the VM is not running"
                } else {
                    ""
                }
            ),
            QmpError::Wire(e) => e.fmt(f),
            QmpError::Greeting { got } => write!(
                f,
                "expected a QMP greeting, got {}; is this a QMP socket?",
                clip(got)
            ),
            QmpError::Command(Refusal {
                command,
                class,
                desc,
            }) => match class.as_str() {
                "CommandNotFound" => write!(
                    f,
                    "QEMU does not know or allow the QMP command {command}: {desc} (CommandNotFound)"
                ),
                "DeviceNotFound" => {
                    write!(f, "QMP {command}: no such device: {desc} (DeviceNotFound)")
                }
                "DeviceNotActive" => write!(
                    f,
                    "QMP {command}: the device is not active: {desc} (DeviceNotActive)"
                ),
                "KVMMissingCap" => write!(
                    f,
                    "QMP {command}: KVM lacks a needed capability: {desc} (KVMMissingCap)"
                ),
                _ => write!(f, "QEMU refused {command}: {desc} ({class})"),
            },
        }
    }
}

impl std::error::Error for QmpError {}

impl From<WireError> for QmpError {
    fn from(e: WireError) -> QmpError {
        QmpError::Wire(e)
    }
}

impl QmpError {
    /// Whether the error means QEMU went away (EOF, reset, refused).
    pub(crate) fn is_gone(&self) -> bool {
        match self {
            QmpError::Wire(WireError::Closed { .. }) => true,
            QmpError::Connect { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ),
            _ => false,
        }
    }
}

/// An asynchronous QMP event.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Event {
    pub(crate) name: String,
    pub(crate) data: Value,
}

/// A QMP connection past capabilities negotiation.
pub(crate) struct Qmp<S> {
    wire: Wire<S>,
    events: VecDeque<Event>,
    /// QEMU's version from the greeting, e.g. "10.0.2".
    pub(crate) version: String,
}

/// One message from QEMU.
enum Message {
    Greeting(Value),
    Event(Event),
    Reply {
        id: Option<Value>,
        /// The `return` value, or the `error` object.
        result: Result<Value, Value>,
    },
}

impl Qmp<UnixStream> {
    /// The socket, for poll(2).
    pub(crate) fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.wire.stream.as_raw_fd()
    }

    /// Connects to the socket at `path` and negotiates, within `timeout`.
    pub(crate) fn connect(path: &Path, timeout: Duration) -> Result<Qmp<UnixStream>, QmpError> {
        let started = Instant::now();
        let deadline = started + timeout;
        let stream = wire::connect(path, deadline).map_err(|source| {
            if source.kind() == io::ErrorKind::TimedOut {
                // The listener is busy with another client.
                QmpError::Wire(WireError::Timeout {
                    peer: Peer::Qmp,
                    step: "connect".into(),
                    after: started.elapsed(),
                })
            } else {
                QmpError::Connect {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        Qmp::handshake(stream, deadline)
    }
}

impl<S: Read + Write> Qmp<S> {
    /// Reads the greeting and sends `qmp_capabilities`, by `deadline`.
    pub(crate) fn handshake(stream: S, deadline: Instant) -> Result<Qmp<S>, QmpError> {
        let mut q = Qmp {
            wire: Wire::new(stream, Peer::Qmp),
            events: VecDeque::new(),
            version: String::new(),
        };
        match q.read_message(deadline, "the greeting")? {
            Message::Greeting(g) => {
                let v = &g["version"]["qemu"];
                q.version = format!("{}.{}.{}", v["major"], v["minor"], v["micro"]);
            }
            Message::Event(e) => {
                return Err(QmpError::Greeting {
                    got: format!("event {}", e.name),
                })
            }
            Message::Reply { .. } => {
                return Err(QmpError::Greeting {
                    got: "a command reply".into(),
                })
            }
        }
        q.execute_by("qmp_capabilities", None, deadline)?;
        Ok(q)
    }

    /// Runs `command` with `args` and returns its `return` value.
    pub(crate) fn execute(
        &mut self,
        command: &str,
        args: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        self.execute_by(command, args, Instant::now() + timeout)
    }

    /// Like [`Qmp::execute`] with an absolute deadline.
    pub(crate) fn execute_by(
        &mut self,
        command: &str,
        args: Option<Value>,
        deadline: Instant,
    ) -> Result<Value, QmpError> {
        let step = format!("command {command}");
        let id = self.wire.send_command(command, args, &step)?;
        loop {
            match self.read_message(deadline, &step)? {
                Message::Event(e) => self.events.push_back(e),
                Message::Reply { id: Some(got), .. } if got != Value::String(id.clone()) => {
                    // A reply to a command of an earlier client or call: not ours.
                    log::debug!("qmp: skipping a reply with id {got} while waiting for {id}");
                }
                // Without OOB, commands answer in order; a reply with no id
                // is a parse error of our own request.
                Message::Reply { result, .. } => {
                    return result.map_err(|e| QmpError::Command(wire::refusal(command, &e)))
                }
                Message::Greeting(_) => {
                    return Err(self.wire.garbage(&step, "a second greeting").into())
                }
            }
        }
    }

    /// Sends `quit`. Success whether QEMU replies or just closes the
    /// connection (the reply "is not guaranteed").
    pub(crate) fn quit(&mut self, timeout: Duration) -> Result<(), QmpError> {
        match self.execute("quit", None, timeout) {
            Ok(_) | Err(QmpError::Wire(WireError::Closed { .. })) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Waits until one of the events `names` arrives (queued ones first)
    /// or `deadline` passes (`Ok(None)`). A closed connection is
    /// `Err(Closed)`.
    pub(crate) fn wait_event(
        &mut self,
        names: &[&str],
        deadline: Instant,
    ) -> Result<Option<Event>, QmpError> {
        if let Some(i) = self
            .events
            .iter()
            .position(|e| names.contains(&e.name.as_str()))
        {
            return Ok(self.events.remove(i));
        }
        let step = format!("waiting for {}", names.join("/"));
        loop {
            match self.read_message(deadline, &step) {
                Ok(Message::Event(e)) if names.contains(&e.name.as_str()) => return Ok(Some(e)),
                Ok(Message::Event(e)) => self.events.push_back(e),
                Ok(_) => {}
                Err(QmpError::Wire(WireError::Timeout { .. })) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// The events received so far and not yet taken.
    pub(crate) fn take_events(&mut self) -> Vec<Event> {
        self.events.drain(..).collect()
    }

    /// Reads what QEMU sent unasked (events), once the socket has
    /// something to read: the messages buffered or arriving within a
    /// short wait. A closed connection is `Err(Closed)`.
    pub(crate) fn pump(&mut self) -> Result<Vec<Event>, QmpError> {
        let deadline = Instant::now() + Duration::from_millis(20);
        loop {
            match self.read_message(deadline, "reading events") {
                Ok(Message::Event(e)) => self.events.push_back(e),
                // A late reply to a call that gave up: nobody's.
                Ok(_) => {}
                Err(QmpError::Wire(WireError::Timeout { .. })) => break,
                Err(e) => return Err(e),
            }
            if !self.wire.has_line() {
                break;
            }
        }
        Ok(self.take_events())
    }

    /// `query-status`: the run state, e.g. "prelaunch", "running".
    pub(crate) fn status(&mut self, timeout: Duration) -> Result<String, QmpError> {
        let v = self.execute("query-status", None, timeout)?;
        v["status"].as_str().map(str::to_string).ok_or_else(|| {
            let detail = format!("no status in {}", clip(&v.to_string()));
            self.wire.garbage("query-status", detail).into()
        })
    }

    fn read_message(&mut self, deadline: Instant, step: &str) -> Result<Message, QmpError> {
        let started = Instant::now();
        loop {
            let line = match self.wire.line(deadline, MAX_LINE) {
                Ok(line) => line,
                Err(fault) => return Err(self.wire.error(fault, step, started).into()),
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return parse_message(&line).map_err(|detail| self.wire.garbage(step, detail).into());
        }
    }
}

fn parse_message(line: &[u8]) -> Result<Message, String> {
    let v: Value = serde_json::from_slice(line)
        .map_err(|e| format!("{e} in {}", clip(&String::from_utf8_lossy(line))))?;
    let Value::Object(mut m) = v else {
        return Err(format!(
            "{} is not a JSON object",
            clip(&String::from_utf8_lossy(line))
        ));
    };
    if let Some(g) = m.remove("QMP") {
        return Ok(Message::Greeting(g));
    }
    if let Some(name) = m.get("event").and_then(Value::as_str) {
        return Ok(Message::Event(Event {
            name: name.to_string(),
            data: m.remove("data").unwrap_or(Value::Null),
        }));
    }
    let id = m.remove("id");
    if let Some(r) = m.remove("return") {
        return Ok(Message::Reply { id, result: Ok(r) });
    }
    if let Some(e) = m.remove("error") {
        return Ok(Message::Reply { id, result: Err(e) });
    }
    Err(format!(
        "{} is neither a reply nor an event",
        clip(&String::from_utf8_lossy(line))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::http::canned::Canned;

    const GREETING: &str = "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 2, \"minor\": 0, \"major\": 10}, \"package\": \"\"}, \"capabilities\": [\"oob\"]}}\r\n";

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(2)
    }

    #[test]
    fn negotiates_and_matches_replies_by_id_keeping_events() {
        let server = format!(
            "{GREETING}{{\"return\": {{}}, \"id\": \"vd-1\"}}\r\n\
             {{\"timestamp\": {{\"seconds\": 1, \"microseconds\": 2}}, \"event\": \"STOP\"}}\r\n\
             {{\"return\": {{}}, \"id\": \"stale-7\"}}\r\n\
             {{\"return\": {{\"status\": \"paused\", \"running\": false}}, \"id\": \"vd-2\"}}\r\n"
        );
        let mut q = Qmp::handshake(Canned::new(server.clone()), soon()).unwrap();
        assert_eq!(q.version, "10.0.2");
        assert_eq!(q.status(Duration::from_secs(1)).unwrap(), "paused");
        let written = String::from_utf8(q.wire.stream.written.clone()).unwrap();
        let lines: Vec<Value> = written
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["execute"], "qmp_capabilities");
        assert_eq!(lines[1], json!({"execute": "query-status", "id": "vd-2"}));
        // The event that came before the reply is kept.
        let events = q.take_events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].name, "STOP");
    }

    #[test]
    fn event_already_queued_satisfies_a_wait() {
        let server = format!(
            "{GREETING}{{\"return\": {{}}, \"id\": \"vd-1\"}}\r\n\
             {{\"event\": \"SHUTDOWN\", \"data\": {{\"guest\": false, \"reason\": \"host-qmp-quit\"}}}}\r\n\
             {{\"return\": {{}}, \"id\": \"vd-2\"}}\r\n"
        );
        let mut q = Qmp::handshake(Canned::new(server.clone()), soon()).unwrap();
        q.execute("system_powerdown", None, Duration::from_secs(1))
            .unwrap();
        let e = q.wait_event(&["SHUTDOWN"], soon()).unwrap().unwrap();
        assert_eq!(e.data["reason"], "host-qmp-quit");
    }

    #[test]
    fn error_replies_carry_class_and_desc() {
        let server = format!(
            "{GREETING}{{\"return\": {{}}, \"id\": \"vd-1\"}}\r\n\
             {{\"id\": \"vd-2\", \"error\": {{\"class\": \"CommandNotFound\", \"desc\": \"The command nope has not been found\"}}}}\r\n\
             {{\"id\": \"vd-3\", \"error\": {{\"class\": \"GenericError\", \"desc\": \"Parameter 'x' is unexpected\"}}}}\r\n\
             {{\"error\": {{\"class\": \"GenericError\", \"desc\": \"JSON parse error\"}}}}\r\n"
        );
        let mut q = Qmp::handshake(Canned::new(server.clone()), soon()).unwrap();
        let t = Duration::from_secs(1);
        let e = q.execute("nope", None, t).unwrap_err();
        assert!(
            matches!(&e, QmpError::Command(r) if r.class == "CommandNotFound"),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "QEMU does not know or allow the QMP command nope: The command nope has not been found (CommandNotFound)"
        );
        let e = q.execute("cont", Some(json!({"x": 1})), t).unwrap_err();
        assert_eq!(
            e.to_string(),
            "QEMU refused cont: Parameter 'x' is unexpected (GenericError)"
        );
        // An error without id (a parse error) answers the pending command.
        let e = q.execute("stop", None, t).unwrap_err();
        assert!(e.to_string().contains("JSON parse error"), "{e}");
    }

    #[test]
    fn eof_after_quit_is_the_end_not_an_error() {
        let server = format!(
            "{GREETING}{{\"return\": {{}}, \"id\": \"vd-1\"}}\r\n\
             {{\"event\": \"SHUTDOWN\", \"data\": {{\"guest\": false, \"reason\": \"host-qmp-quit\"}}}}\r\n"
        );
        let mut q = Qmp::handshake(Canned::new(server.clone()), soon()).unwrap();
        q.quit(Duration::from_secs(1)).unwrap();
        assert_eq!(q.take_events()[0].name, "SHUTDOWN");
        // A wait on a closed connection says closed.
        let e = q.wait_event(&["RESUME"], soon()).unwrap_err();
        assert!(e.is_gone(), "{e:?}");
    }

    #[test]
    fn eof_mid_command_is_closed() {
        let server = format!("{GREETING}{{\"return\": {{}}, \"id\": \"vd-1\"}}\r\n");
        let mut q = Qmp::handshake(Canned::new(server.clone()), soon()).unwrap();
        let e = q.execute("cont", None, Duration::from_secs(1)).unwrap_err();
        assert!(
            matches!(e, QmpError::Wire(WireError::Closed { .. })),
            "{e:?}"
        );
        assert!(e.to_string().contains("during command cont"), "{e}");
    }

    #[test]
    fn silence_times_out() {
        let mut c = Canned::new("");
        c.hang = true;
        let started = Instant::now();
        let e = Qmp::handshake(c, Instant::now() + Duration::from_millis(150))
            .err()
            .unwrap();
        assert!(
            matches!(e, QmpError::Wire(WireError::Timeout { .. })),
            "{e:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(e.to_string().contains("one client at a time"), "{e}");
    }

    #[test]
    fn garbage_is_named() {
        let e = Qmp::handshake(Canned::new("hello there\r\n"), soon())
            .err()
            .unwrap();
        assert!(
            matches!(e, QmpError::Wire(WireError::Garbage { .. })),
            "{e:?}"
        );
        let e = Qmp::handshake(Canned::new("[1,2]\n"), soon())
            .err()
            .unwrap();
        assert!(e.to_string().contains("not a JSON object"), "{e}");
        let e = Qmp::handshake(Canned::new("{\"return\": {}}\r\n"), soon())
            .err()
            .unwrap();
        assert!(matches!(e, QmpError::Greeting { .. }), "{e:?}");
    }

    #[test]
    fn overlong_line_is_refused_not_buffered() {
        let mut c = Canned::new("x".repeat(MAX_LINE + 10_000));
        c.hang = true;
        let e = Qmp::handshake(c, soon()).err().unwrap();
        assert!(e.to_string().contains("longer than"), "{e}");
    }

    #[test]
    fn connect_to_a_missing_socket_names_it() {
        let e = Qmp::connect(
            Path::new("/nonexistent/vendetta/qmp.sock"),
            Duration::from_millis(100),
        )
        .err()
        .unwrap();
        assert!(e.is_gone());
        assert!(
            e.to_string().contains("/nonexistent/vendetta/qmp.sock"),
            "{e}"
        );
        let long = PathBuf::from(format!("/tmp/{}", "a".repeat(120)));
        let e = Qmp::connect(&long, Duration::from_millis(100))
            .err()
            .unwrap();
        assert!(e.to_string().contains("at most 107"), "{e}");
    }

    /// A real QEMU (`-machine none -S`), killed on drop, also when the
    /// test fails. Fails (never skips) when qemu-system-x86_64 is missing:
    /// tests/setup/deps.sh installs it.
    struct RealQemu {
        child: std::process::Child,
        dir: std::path::PathBuf,
    }

    impl RealQemu {
        fn start() -> RealQemu {
            let dir = std::env::temp_dir().join(format!(
                "vqmp-{}-{}",
                std::process::id(),
                crate::os::random::random_hex(3)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let sock = dir.join("qmp.sock");
            let child = std::process::Command::new("qemu-system-x86_64")
                .args(["-machine", "none", "-nodefaults", "-display", "none", "-S"])
                .arg("-qmp")
                .arg(format!("unix:{},server=on,wait=off", sock.display()))
                .stdin(std::process::Stdio::null())
                .spawn()
                .expect("qemu-system-x86_64 (installed by tests/setup/deps.sh)");
            let q = RealQemu { child, dir };
            let deadline = Instant::now() + Duration::from_secs(10);
            while !sock.exists() {
                assert!(Instant::now() < deadline, "QEMU made no QMP socket");
                std::thread::sleep(Duration::from_millis(10));
            }
            q
        }
    }

    impl Drop for RealQemu {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn a_real_qemu_s_error_replies_are_surfaced_and_the_connection_lives_on() {
        let vm = RealQemu::start();
        let t = Duration::from_secs(5);
        let mut q = Qmp::connect(&vm.dir.join("qmp.sock"), t).unwrap();
        let e = q.execute("no-such-command", None, t).unwrap_err();
        assert!(
            matches!(&e, QmpError::Command(r) if r.class == "CommandNotFound"),
            "{e:?}"
        );
        assert!(e.to_string().contains("no-such-command"), "{e}");
        let e = q.execute("cont", Some(json!({"bogus": 1})), t).unwrap_err();
        assert_eq!(
            e.to_string(),
            "QEMU refused cont: Parameter 'bogus' is unexpected (GenericError)"
        );
        let e = q
            .execute("device_del", Some(json!({"id": "nope"})), t)
            .unwrap_err();
        assert!(
            matches!(&e, QmpError::Command(r) if r.class == "DeviceNotFound"),
            "{e:?}"
        );
        let e = q.execute("qmp_capabilities", None, t).unwrap_err();
        assert!(e.to_string().contains("already complete"), "{e}");
        // The connection still works after errors.
        assert_eq!(q.status(t).unwrap(), "prelaunch");
    }
}
