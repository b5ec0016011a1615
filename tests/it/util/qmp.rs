//! A minimal QMP client of the tests' own, to look at a VM the agent runs
//! without going through the agent (or its QMP code, which
//! `src/providers/qemu/qmp.rs` tests against a real QEMU itself).

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

pub(crate) struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects, reads the greeting and leaves capabilities negotiation.
    pub(crate) fn connect(sock: &Path) -> Qmp {
        let s =
            UnixStream::connect(sock).unwrap_or_else(|e| panic!("connect {}: {e}", sock.display()));
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let writer = s.try_clone().unwrap();
        let mut q = Qmp {
            reader: BufReader::new(s),
            writer,
        };
        let greeting = q.read().expect("a QMP greeting");
        assert!(greeting.get("QMP").is_some(), "no QMP greeting: {greeting}");
        q.execute("qmp_capabilities", None)
            .expect("qmp_capabilities");
        q
    }

    /// The next message, or None when QEMU closed the socket.
    fn read(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("QMP sent {line:?}: {e}")),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
            Err(e) => panic!("read from QMP: {e}"),
        }
    }

    /// Runs `cmd`: Ok(its return value) or Err(QEMU's error object).
    pub(crate) fn execute(&mut self, cmd: &str, args: Option<Value>) -> Result<Value, Value> {
        let mut msg = json!({"execute": cmd});
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        // One write: QEMU acts on a complete object before its newline, and
        // after `quit` a second write would find the socket closed.
        let written = self.writer.write_all(format!("{msg}\n").as_bytes());
        loop {
            let Some(v) = self.read() else {
                // `quit` may close the socket before its reply is read.
                assert_eq!(cmd, "quit", "QMP closed during {cmd}");
                return Ok(Value::Null);
            };
            written.as_ref().expect("write to QMP");
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(e.clone());
            }
            // An event: not the answer.
        }
    }

    /// The run state (`query-status`), e.g. "running" or "prelaunch".
    pub(crate) fn status(&mut self) -> String {
        let v = self.execute("query-status", None).expect("query-status");
        v["status"].as_str().expect("status").to_string()
    }
}
