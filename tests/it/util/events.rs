//! The one client of `GET /api/v1/events` (server-sent events) the tests
//! use: it opens the stream, then hands out the JSON of each `data:` line.

use super::{Agent, TOKEN};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A live `/api/v1/events` stream. Once `open` returns, the agent has
/// subscribed it: events published after that are all seen.
pub(crate) struct Events {
    reader: BufReader<TcpStream>,
    /// A line read in part when a read timed out; completed by the next read.
    partial: String,
}

impl Events {
    pub(crate) fn open(a: &Agent) -> Events {
        Events::open_as(a, TOKEN)
    }

    /// A stream opened with `token` (a JWT, say).
    pub(crate) fn open_as(a: &Agent, token: &str) -> Events {
        let mut s = TcpStream::connect(("127.0.0.1", a.port)).expect("connect to the agent");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /api/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .unwrap();
        let mut reader = BufReader::new(s);
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        // Short reads from here on, so that a deadline is looked at often.
        reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Events {
            reader,
            partial: String::new(),
        }
    }

    /// The next event's JSON data, or None when the stream ends or nothing
    /// comes within `timeout`. Headers and comments are passed over.
    pub(crate) fn next(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.reader.read_line(&mut self.partial) {
                Ok(0) => return None,
                Ok(_) => {}
                // A read timeout: what came so far stays in `partial`.
                Err(_) => continue,
            }
            let line = std::mem::take(&mut self.partial);
            if let Some(data) = line.strip_prefix("data: ") {
                let v = serde_json::from_str(data.trim())
                    .unwrap_or_else(|e| panic!("an event that is not JSON ({e}): {line}"));
                return Some(v);
            }
        }
        None
    }

    /// The first event whose JSON data matches `pred` within `timeout`.
    pub(crate) fn wait_for(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        while let Some(v) = self.next(deadline.saturating_duration_since(Instant::now())) {
            if pred(&v) {
                return Some(v);
            }
        }
        None
    }
}
