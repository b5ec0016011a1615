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
        let greeting = q.read();
        assert!(greeting.get("QMP").is_some(), "no QMP greeting: {greeting}");
        q.execute("qmp_capabilities", None)
            .expect("qmp_capabilities");
        q
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read a QMP line");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("QMP sent {line:?}: {e}"))
    }

    /// Runs `cmd`: Ok(its return value) or Err(QEMU's error object).
    pub(crate) fn execute(&mut self, cmd: &str, args: Option<Value>) -> Result<Value, Value> {
        let mut msg = json!({"execute": cmd});
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        writeln!(self.writer, "{msg}").expect("write to QMP");
        loop {
            let v = self.read();
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
