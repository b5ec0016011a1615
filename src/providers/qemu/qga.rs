//! A QEMU guest agent (qemu-ga) client: runs commands inside a VM over
//! the guest-agent socket.
//!
//! The wire looks like QMP (same command/return/error JSON) but has no
//! greeting and no connection semantics: the host socket accepts writes
//! even when no agent runs in the guest, and then no reply ever comes. So
//! every exchange is bounded by a deadline, and a session starts with the
//! `0xFF` + `guest-sync-delimited` handshake: we discard everything up to
//! the agent's own `0xFF` (which skips the error reply the stray `0xFF`
//! provokes, and any stale output of an earlier client) and check the
//! echoed id.
//!
//! Exec is `guest-exec` (capture-output as a bool: agents older than 8.1
//! reject the string form), then `guest-exec-status` polled with backoff
//! until `exited`; the first exited status reaps the process, so it is the
//! one we keep. Replies are parsed by a small streaming JSON reader that
//! decodes `out-data`/`err-data` base64 as it arrives into a capped
//! [`Capture`]: a 16 MiB guest output (a ~22 MB JSON line) never sits in
//! memory, only the first `max_output` bytes of it do.

use super::wire::{self, clip, ms, Fault, Peer, Refusal, Wire, WireError};
use super::ExecOutput;
use crate::providers::output::{Capture, OutputSink, Stream};
use base64::Engine;
use serde_json::{json, Map, Value};
use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Time allowed for a reply once the agent is known to answer, beyond
/// the exec deadline (a status reply with 16 MiB of output takes a moment).
const REPLY_GRACE: Duration = Duration::from_secs(5);

/// After a timeout kill: how long to wait for the killed process to be
/// reported exited (and reaped).
const REAP_WAIT: Duration = Duration::from_secs(3);

/// What qemu-ga keeps of each stream (GUEST_EXEC_MAX_OUTPUT). Some agents
/// do not set `*-truncated` when they cut there, so reaching it counts as
/// truncated.
const GUEST_MAX_OUTPUT: u64 = 16 << 20;

/// The longest pause between two guest-exec-status polls (there is no
/// completion event): bounds how late a finished command is noticed.
const MAX_POLL: Duration = Duration::from_millis(50);

/// The most non-output JSON we accept in one reply.
const REPLY_BUDGET: usize = 1 << 20;

/// Kills a process and its descendants in the guest: stop each (so it
/// cannot fork), recurse into its children, then kill it.
const KILL_TREE: &str = r#"t() { kill -STOP "$1" 2>/dev/null; for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do t "$c"; done; kill -KILL "$1" 2>/dev/null; }; t "$1""#;

/// Why a guest agent exchange failed.
#[derive(Debug)]
pub(crate) enum QgaError {
    /// The host side socket could not be reached (the VM is not running).
    Connect { path: PathBuf, source: io::Error },
    /// The handshake got no answer: no agent in the guest.
    NotResponding { path: PathBuf, after: Duration },
    /// The exchange broke: closed, timed out, garbled or failed I/O.
    Wire(WireError),
    /// The agent answered with an error.
    Command(Refusal),
}

impl fmt::Display for QgaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QgaError::Connect { path, source } => write!(
                f,
                "cannot connect to the guest agent socket {}: {source}; is the VM running?",
                path.display()
            ),
            QgaError::NotResponding { path, after } => write!(
                f,
                "guest agent not responding on {} within {}: no qemu-ga runs in the guest or the guest has not booted yet; install and enable qemu-guest-agent in the image",
                path.display(),
                ms(*after)
            ),
            QgaError::Wire(e) => e.fmt(f),
            QgaError::Command(Refusal {
                command,
                class,
                desc,
            }) if class == "CommandNotFound" => write!(
                f,
                "the guest agent does not offer {command}: {desc}; it may be blocked in qemu-ga's configuration (--block-rpcs)"
            ),
            QgaError::Command(Refusal {
                command,
                class,
                desc,
            }) => write!(f, "the guest agent refused {command}: {desc} ({class})"),
        }
    }
}

impl std::error::Error for QgaError {}

impl From<WireError> for QgaError {
    fn from(e: WireError) -> QgaError {
        QgaError::Wire(e)
    }
}

/// One command to run in the guest.
#[derive(Debug, Clone)]
pub(crate) struct ExecRequest<'a> {
    /// The program; without a slash it is looked up on the agent's PATH.
    pub(crate) path: &'a str,
    pub(crate) args: &'a [String],
    /// `KEY=VALUE` entries. When given they REPLACE the environment.
    pub(crate) env: Option<Vec<String>>,
    /// Bytes for stdin. None still gives the process an empty stdin.
    pub(crate) input: Option<&'a [u8]>,
    /// Cap per stream.
    pub(crate) max_output: usize,
    /// When the command is killed and the exec reported timed out.
    pub(crate) deadline: Instant,
}

/// A guest agent connection, synchronised.
pub(crate) struct Qga<S> {
    wire: Wire<S>,
    path: PathBuf,
}

impl Qga<UnixStream> {
    /// Connects to the guest agent socket at `path` and synchronises, by
    /// `deadline`. No answer by then is [`QgaError::NotResponding`].
    pub(crate) fn connect(path: &Path, deadline: Instant) -> Result<Qga<UnixStream>, QgaError> {
        let stream = wire::connect(path, deadline).map_err(|source| QgaError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        let mut q = Qga::new(stream, path);
        q.sync(deadline)?;
        Ok(q)
    }
}

/// Which part of a reply the parser is in.
#[derive(Clone, Copy, PartialEq)]
enum Ctx {
    Top,
    Return,
    Other,
}

impl<S: Read + Write> Qga<S> {
    /// Wraps a connected stream; `path` names it in errors.
    pub(crate) fn new(stream: S, path: &Path) -> Qga<S> {
        Qga {
            wire: Wire::new(stream, Peer::Qga),
            path: path.to_path_buf(),
        }
    }

    /// The `0xFF` + `guest-sync-delimited` handshake.
    pub(crate) fn sync(&mut self, deadline: Instant) -> Result<(), QgaError> {
        let mut id_bytes = [0u8; 6];
        crate::os::random::random_bytes(&mut id_bytes);
        let id = id_bytes
            .iter()
            .fold(0i64, |acc, b| (acc << 8) | i64::from(*b));
        self.sync_with(id, deadline)
    }

    fn sync_with(&mut self, id: i64, deadline: Instant) -> Result<(), QgaError> {
        let started = Instant::now();
        let mut msg = vec![0xFF];
        msg.extend_from_slice(
            json!({"execute": "guest-sync-delimited", "arguments": {"id": id}})
                .to_string()
                .as_bytes(),
        );
        msg.push(b'\n');
        let not_responding = |path: &Path| QgaError::NotResponding {
            path: path.to_path_buf(),
            after: started.elapsed(),
        };
        self.wire.send(&msg, "guest-sync-delimited")?;
        loop {
            // Everything before the agent's 0xFF is stale: the error reply
            // our own 0xFF provokes, or output meant for an earlier client.
            loop {
                match self.wire.byte(deadline) {
                    Ok(0xFF) => break,
                    Ok(_) => {}
                    Err(Fault::Timeout) => return Err(not_responding(&self.path)),
                    Err(f) => {
                        return Err(self.wire.error(f, "guest-sync-delimited", started).into())
                    }
                }
            }
            let reply = match self.parse_reply(deadline, "guest-sync-delimited", None) {
                Err(QgaError::Wire(WireError::Timeout { .. })) => {
                    return Err(not_responding(&self.path))
                }
                other => other?,
            };
            if reply.get("return") == Some(&json!(id)) {
                return Ok(());
            }
            log::debug!("qga: skipping a stale sync reply while waiting for {id}");
        }
    }

    /// Runs `command` and returns its `return` value.
    pub(crate) fn call(
        &mut self,
        command: &str,
        args: Option<Value>,
        deadline: Instant,
    ) -> Result<Value, QgaError> {
        self.call_with(command, args, deadline, None)
    }

    fn call_with(
        &mut self,
        command: &str,
        args: Option<Value>,
        deadline: Instant,
        mut hook: Option<&mut Hook<'_>>,
    ) -> Result<Value, QgaError> {
        let id = self.wire.send_command(command, args, command)?;
        loop {
            let mut reply = self.parse_reply(deadline, command, hook.as_deref_mut())?;
            match reply.remove("id") {
                Some(Value::String(got)) if got == id => {}
                // Without an id: an error about our request's framing.
                None if reply.contains_key("error") => {}
                other => {
                    log::debug!("qga: skipping a reply with id {other:?} while waiting for {id}");
                    continue;
                }
            }
            if let Some(r) = reply.remove("return") {
                return Ok(r);
            }
            if let Some(e) = reply.remove("error") {
                return Err(QgaError::Command(wire::refusal(command, &e)));
            }
            let detail = "a reply with neither return nor error";
            return Err(self.wire.garbage(command, detail).into());
        }
    }

    /// Runs a command to completion (or its deadline) and collects its
    /// output, passing each decoded chunk to `sink` as it is read.
    pub(crate) fn exec(
        &mut self,
        req: &ExecRequest<'_>,
        sink: &mut dyn OutputSink,
    ) -> Result<ExecOutput, QgaError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut args = json!({
            "path": req.path,
            "arg": req.args,
            // Always a pipe: with none the child would inherit the agent's stdin.
            "input-data": b64.encode(req.input.unwrap_or_default()),
            "capture-output": true,
        });
        if let Some(env) = &req.env {
            args["env"] = json!(env);
        }
        let started = Instant::now();
        let reply = self.call(
            "guest-exec",
            Some(args),
            req.deadline.max(started) + REPLY_GRACE,
        )?;
        let pid = reply["pid"].as_i64().ok_or_else(|| {
            let detail = format!("no pid in {}", clip(&reply.to_string()));
            self.wire.garbage("guest-exec", detail)
        })?;
        let mut out = Capture::new(req.max_output);
        let mut err = Capture::new(req.max_output);
        let mut delay = Duration::from_millis(2);
        loop {
            let status = self.exec_status(pid, &mut out, &mut err, sink)?;
            if status["exited"] == true {
                return Ok(finish(&status, out, err, false));
            }
            let now = Instant::now();
            if now >= req.deadline {
                break;
            }
            std::thread::sleep(delay.min(req.deadline - now));
            delay = (delay * 2).min(MAX_POLL);
        }
        // Timed out: kill the process (and its children), then collect what
        // it wrote and reap it.
        self.kill(pid);
        let reap_by = Instant::now() + REAP_WAIT;
        let mut delay = Duration::from_millis(5);
        while Instant::now() < reap_by {
            match self.exec_status(pid, &mut out, &mut err, sink) {
                Ok(s) if s["exited"] == true => return Ok(finish(&s, out, err, true)),
                Ok(_) => {}
                Err(e) => {
                    log::warn!("qga: could not collect pid {pid} after killing it: {e}");
                    break;
                }
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(100));
        }
        log::warn!("qga: pid {pid} was not reported exited within {REAP_WAIT:?} of its kill");
        Ok(finish(&Value::Null, out, err, true))
    }

    fn exec_status(
        &mut self,
        pid: i64,
        out: &mut Capture,
        err: &mut Capture,
        sink: &mut dyn OutputSink,
    ) -> Result<Value, QgaError> {
        let mut hook = |stream: Stream, data: &[u8]| {
            match stream {
                Stream::Stdout => out.push(data),
                Stream::Stderr => err.push(data),
            }
            sink.chunk(stream, data);
        };
        let deadline = Instant::now() + REPLY_GRACE;
        self.call_with(
            "guest-exec-status",
            Some(json!({"pid": pid})),
            deadline,
            Some(&mut hook),
        )
    }

    /// Kills `pid` and its descendants through guest-exec; falls back to a
    /// plain `kill -KILL` when the guest has no /bin/sh. Best effort: logs
    /// what failed.
    fn kill(&mut self, pid: i64) {
        let by = Instant::now() + REPLY_GRACE;
        let attempts = [
            json!({"path": "/bin/sh", "arg": ["-c", KILL_TREE, "vendetta-kill", pid.to_string()], "capture-output": true}),
            json!({"path": "kill", "arg": ["-KILL", pid.to_string()], "capture-output": true}),
        ];
        for args in attempts {
            match self.call("guest-exec", Some(args), by) {
                Ok(r) => {
                    if let Some(killer) = r["pid"].as_i64() {
                        self.reap(killer);
                    }
                    return;
                }
                Err(e) => log::warn!("qga: killing timed-out pid {pid}: {e}"),
            }
        }
    }

    /// Polls a helper process until it is reported exited (which reaps it).
    fn reap(&mut self, pid: i64) {
        let by = Instant::now() + REAP_WAIT;
        while Instant::now() < by {
            match self.call(
                "guest-exec-status",
                Some(json!({"pid": pid})),
                by + REPLY_GRACE,
            ) {
                Ok(s) if s["exited"] == true => return,
                Ok(_) => std::thread::sleep(Duration::from_millis(10)),
                Err(_) => return,
            }
        }
    }

    /// Reads one reply object. Stray `0xFF` and whitespace before it are
    /// skipped.
    fn parse_reply(
        &mut self,
        deadline: Instant,
        step: &str,
        hook: Option<&mut Hook<'_>>,
    ) -> Result<Map<String, Value>, QgaError> {
        let started = Instant::now();
        let mut p = Parser {
            wire: &mut self.wire,
            deadline,
            budget: REPLY_BUDGET,
            hook,
        };
        let result = p.skip_blank().and_then(|_| p.value(0, Ctx::Top));
        let e = match result {
            Ok(Value::Object(m)) => return Ok(m),
            Ok(other) => {
                let detail = format!("{} is not a JSON object", clip(&other.to_string()));
                self.wire.garbage(step, detail)
            }
            Err(ParseError::Wire(fault)) => self.wire.error(fault, step, started),
            Err(ParseError::Syntax(detail)) => self.wire.garbage(step, detail),
        };
        Err(e.into())
    }
}

/// Builds the result from the final status (Null when never seen).
fn finish(status: &Value, out: Capture, err: Capture, timed_out: bool) -> ExecOutput {
    let guest_cut = |flag: &str, c: &Capture| status[flag] == true || c.total >= GUEST_MAX_OUTPUT;
    let exit_code = if timed_out {
        None
    } else if let Some(code) = status["exitcode"].as_i64() {
        Some(code as i32)
    } else {
        // Killed by a signal: the shell's convention, 128 + signal.
        status["signal"].as_i64().map(|s| 128 + s as i32)
    };
    ExecOutput {
        exit_code,
        stdout_truncated: out.truncated() || guest_cut("out-truncated", &out),
        stderr_truncated: err.truncated() || guest_cut("err-truncated", &err),
        stdout: out.data,
        stderr: err.data,
        timed_out,
    }
}

#[derive(Debug)]
enum ParseError {
    Wire(Fault),
    Syntax(String),
}

impl From<Fault> for ParseError {
    fn from(e: Fault) -> Self {
        ParseError::Wire(e)
    }
}

fn syntax<T>(m: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError::Syntax(m.into()))
}

/// A pull parser for one JSON value that streams the base64 strings of
/// `return.out-data` / `return.err-data` to a hook instead of keeping
/// them. Everything else counts against `budget`.
struct Parser<'w, 'r, 'h, S> {
    wire: &'w mut Wire<S>,
    deadline: Instant,
    budget: usize,
    hook: Option<&'r mut Hook<'h>>,
}

/// Receives decoded output as a reply is parsed.
type Hook<'h> = dyn FnMut(Stream, &[u8]) + 'h;

impl<S: Read + Write> Parser<'_, '_, '_, S> {
    fn next(&mut self) -> Result<u8, ParseError> {
        if self.budget == 0 {
            return syntax(format!(
                "a reply larger than {REPLY_BUDGET} bytes outside its output"
            ));
        }
        self.budget -= 1;
        Ok(self.wire.byte(self.deadline)?)
    }

    fn peek(&mut self) -> Result<u8, ParseError> {
        Ok(self.wire.peek(self.deadline)?)
    }

    /// Skips whitespace and stray 0xFF delimiters.
    fn skip_blank(&mut self) -> Result<(), ParseError> {
        while matches!(self.peek()?, b' ' | b'\t' | b'\r' | b'\n' | 0xFF) {
            self.next()?;
        }
        Ok(())
    }

    fn expect(&mut self, want: u8) -> Result<(), ParseError> {
        self.skip_blank()?;
        let got = self.next()?;
        if got != want {
            return syntax(format!(
                "expected {:?}, found {:?}",
                want as char, got as char
            ));
        }
        Ok(())
    }

    fn value(&mut self, depth: usize, ctx: Ctx) -> Result<Value, ParseError> {
        if depth > 32 {
            return syntax("nested too deeply");
        }
        self.skip_blank()?;
        match self.peek()? {
            b'{' => {
                self.next()?;
                let mut m = Map::new();
                self.skip_blank()?;
                if self.peek()? == b'}' {
                    self.next()?;
                    return Ok(Value::Object(m));
                }
                loop {
                    self.expect(b'"')?;
                    let key = self.string()?;
                    self.expect(b':')?;
                    self.skip_blank()?;
                    let stream = match (ctx, key.as_str()) {
                        (Ctx::Return, "out-data") => Some(Stream::Stdout),
                        (Ctx::Return, "err-data") => Some(Stream::Stderr),
                        _ => None,
                    };
                    let v = match stream {
                        Some(s) if self.peek()? == b'"' && self.hook.is_some() => {
                            self.next()?;
                            self.base64_string(s)?;
                            Value::Bool(true)
                        }
                        _ => {
                            let child = match (ctx, key.as_str()) {
                                (Ctx::Top, "return") => Ctx::Return,
                                _ => Ctx::Other,
                            };
                            self.value(depth + 1, child)?
                        }
                    };
                    m.insert(key, v);
                    self.skip_blank()?;
                    match self.next()? {
                        b',' => continue,
                        b'}' => return Ok(Value::Object(m)),
                        c => return syntax(format!("expected ',' or '}}', found {:?}", c as char)),
                    }
                }
            }
            b'[' => {
                self.next()?;
                let mut a = Vec::new();
                self.skip_blank()?;
                if self.peek()? == b']' {
                    self.next()?;
                    return Ok(Value::Array(a));
                }
                loop {
                    a.push(self.value(depth + 1, Ctx::Other)?);
                    self.skip_blank()?;
                    match self.next()? {
                        b',' => continue,
                        b']' => return Ok(Value::Array(a)),
                        c => return syntax(format!("expected ',' or ']', found {:?}", c as char)),
                    }
                }
            }
            b'"' => {
                self.next()?;
                Ok(Value::String(self.string()?))
            }
            b't' => self.literal("true", Value::Bool(true)),
            b'f' => self.literal("false", Value::Bool(false)),
            b'n' => self.literal("null", Value::Null),
            b'-' | b'0'..=b'9' => {
                let mut text = String::new();
                while matches!(self.peek()?, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                    text.push(self.next()? as char);
                }
                serde_json::from_str(&text).or_else(|_| syntax(format!("{text:?} is not a number")))
            }
            c => syntax(format!("unexpected {:?}", c as char)),
        }
    }

    fn literal(&mut self, word: &str, v: Value) -> Result<Value, ParseError> {
        for want in word.bytes() {
            if self.next()? != want {
                return syntax(format!("a broken literal (expected {word})"));
            }
        }
        Ok(v)
    }

    /// The rest of a string after its opening quote.
    fn string(&mut self) -> Result<String, ParseError> {
        let mut out: Vec<u8> = Vec::new();
        loop {
            match self.next()? {
                b'"' => {
                    return String::from_utf8(out).or_else(|_| syntax("a string that is not UTF-8"))
                }
                b'\\' => {
                    let c = match self.next()? {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            if (0xD800..0xDC00).contains(&hi) {
                                if self.next()? != b'\\' || self.next()? != b'u' {
                                    return syntax("a lone surrogate in a string");
                                }
                                let lo = self.hex4()?;
                                let code = 0x10000
                                    + ((hi - 0xD800) << 10)
                                    + (lo.wrapping_sub(0xDC00) & 0x3FF);
                                char::from_u32(code).unwrap_or('\u{FFFD}')
                            } else {
                                char::from_u32(hi).unwrap_or('\u{FFFD}')
                            }
                        }
                        c => return syntax(format!("a bad escape \\{}", c as char)),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                c => out.push(c),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, ParseError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let c = self.next()?;
            let d = (c as char)
                .to_digit(16)
                .ok_or_else(|| ParseError::Syntax("a bad \\u escape".into()))?;
            v = v * 16 + d;
        }
        Ok(v)
    }

    /// Streams a base64 string (after its opening quote) to the hook,
    /// decoded, in chunks. Does not count against the budget.
    fn base64_string(&mut self, stream: Stream) -> Result<(), ParseError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut chunk: Vec<u8> = Vec::with_capacity(4096);
        let mut decoded = vec![0u8; 3072];
        loop {
            let c = self.wire.byte(self.deadline)?;
            match c {
                b'"' => break,
                // JSON may escape the slash of the base64 alphabet.
                b'\\' => match self.wire.byte(self.deadline)? {
                    b'/' => chunk.push(b'/'),
                    c => {
                        return syntax(format!(
                            "a bad escape \\{} in {} data",
                            c as char,
                            stream.as_str()
                        ))
                    }
                },
                c => chunk.push(c),
            }
            if chunk.len() == 4096 {
                let n = b64
                    .decode_slice(&chunk, &mut decoded)
                    .or_else(|e| syntax(format!("bad base64 in {} data: {e}", stream.as_str())))?;
                if let Some(h) = self.hook.as_mut() {
                    h(stream, &decoded[..n]);
                }
                chunk.clear();
            }
        }
        if !chunk.is_empty() {
            let n = b64
                .decode_slice(&chunk, &mut decoded)
                .or_else(|e| syntax(format!("bad base64 in {} data: {e}", stream.as_str())))?;
            if let Some(h) = self.hook.as_mut() {
                h(stream, &decoded[..n]);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::output::Discard;

    use crate::http::canned::Canned;

    fn qga(input: Vec<u8>) -> Qga<Canned> {
        Qga::new(Canned::hanging(input), Path::new("/test/qga.sock"))
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(2)
    }

    #[test]
    fn parses_replies_and_streams_output_within_the_cap() {
        let mut input = Vec::new();
        input.extend_from_slice(b"{\"return\": {\"pid\": 42}, \"id\": \"vd-1\"}\n");
        input.extend_from_slice(b"{\"return\": {\"exited\": false}, \"id\": \"vd-2\"}\n");
        // "hello world" with an escaped slash-free body, and an escaped '/'
        // in "??>" style data: base64 of [0xff, 0xfe, 0xfd] is "//79".
        input.extend_from_slice(
            b"{\"return\": {\"exitcode\": 7, \"out-data\": \"aGVsbG8gd29ybGQ=\", \"err-data\": \"\\/\\/79\", \"exited\": true}, \"id\": \"vd-3\"}\n",
        );
        let mut q = qga(input);
        let args: Vec<String> = vec!["-c".into(), "x".into()];
        let req = ExecRequest {
            path: "/bin/sh",
            args: &args,
            env: None,
            input: Some(b"in"),
            max_output: 5,
            deadline: soon(),
        };
        let out = q.exec(&req, &mut Discard).unwrap();
        assert_eq!(out.exit_code, Some(7));
        assert_eq!(out.stdout, b"hello");
        assert!(out.stdout_truncated);
        assert_eq!(out.stderr, [0xff, 0xfe, 0xfd]);
        assert!(!out.stderr_truncated);
        let sent = String::from_utf8(q.wire.stream.written.clone()).unwrap();
        let first: Value = serde_json::from_str(sent.lines().next().unwrap()).unwrap();
        assert_eq!(first["arguments"]["input-data"], "aW4=");
        assert_eq!(first["arguments"]["capture-output"], true);
    }

    #[test]
    fn sync_survives_the_stray_error_reply_and_stale_delimiters() {
        // What a real agent sends for `0xFF` + guest-sync-delimited: an
        // error reply for the stray byte, then 0xFF and the echoed id.
        // Here a stale delimited reply of an earlier client comes first,
        // then a reply to a command that must be matched by id afterwards.
        let input = b"\xff{\"return\": 1}\n{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '\\uFFFD'\"}}\n\xff{\"return\": 77}\n{\"return\": {}, \"id\": \"vd-1\"}\n".to_vec();
        let mut q = qga(input);
        q.sync_with(77, soon()).unwrap();
        let sent = q.wire.stream.written.clone();
        assert_eq!(sent[0], 0xFF);
        let v: Value = serde_json::from_slice(&sent[1..]).unwrap();
        assert_eq!(v["execute"], "guest-sync-delimited");
        assert_eq!(v["arguments"]["id"], 77);
        assert_eq!(q.call("guest-ping", None, soon()).unwrap(), json!({}));
    }

    #[test]
    fn silence_is_not_responding_within_the_deadline() {
        let mut q = qga(Vec::new());
        let started = Instant::now();
        let e = q
            .sync(Instant::now() + Duration::from_millis(100))
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(matches!(e, QgaError::NotResponding { .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("guest agent not responding on /test/qga.sock"),
            "{e}"
        );
    }

    #[test]
    fn errors_and_ids() {
        let input = b"{\"return\": {}, \"id\": \"old\"}\n{\"id\": \"vd-1\", \"error\": {\"class\": \"GenericError\", \"desc\": \"Failed to execute child process \\u201C/nope\\u201D (No such file or directory)\"}}\n{\"id\": \"vd-2\", \"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command guest-exec has not been found\"}}\n".to_vec();
        let mut q = qga(input);
        let e = q
            .call("guest-exec", Some(json!({"path": "/nope"})), soon())
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "the guest agent refused guest-exec: Failed to execute child process \u{201c}/nope\u{201d} (No such file or directory) (GenericError)"
        );
        let e = q.call("guest-exec", None, soon()).unwrap_err();
        assert!(e.to_string().contains("--block-rpcs"), "{e}");
    }

    #[test]
    fn signal_death_and_garbage() {
        let input = b"{\"return\": {\"pid\": 5}, \"id\": \"vd-1\"}\n{\"return\": {\"exited\": true, \"signal\": 9}, \"id\": \"vd-2\"}\n".to_vec();
        let mut q = qga(input);
        let req = ExecRequest {
            path: "x",
            args: &[],
            env: Some(vec!["A=b".into()]),
            input: None,
            max_output: 10,
            deadline: soon(),
        };
        let out = q.exec(&req, &mut Discard).unwrap();
        assert_eq!(out.exit_code, Some(137));
        assert!(!out.timed_out);
        for bad in [
            &b"[1]\n"[..],
            b"{\"return\": tru}\n",
            b"{\"return\": {\"exited\": true, \"out-data\": \"!!!!\"}, \"id\": \"vd-1\"}\n",
            b"{\"return\" 1}\n",
        ] {
            let mut q = qga(bad.to_vec());
            let mut out = Capture::new(10);
            let mut err = Capture::new(10);
            let e = q
                .exec_status(1, &mut out, &mut err, &mut Discard)
                .unwrap_err();
            assert!(
                matches!(e, QgaError::Wire(WireError::Garbage { .. })),
                "{e:?}"
            );
        }
    }

    #[test]
    fn oversized_reply_outside_output_is_refused() {
        let mut input = b"{\"return\": {\"x\": \"".to_vec();
        input.extend(std::iter::repeat_n(b'a', REPLY_BUDGET + 10));
        input.extend_from_slice(b"\"}}\n");
        let mut q = qga(input);
        let e = q.call("guest-info", None, soon()).unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
    }

    #[test]
    fn big_output_is_streamed_not_kept() {
        // 3 MiB of output in one reply, cap 1000: only 1000 bytes kept.
        let raw = vec![b'z'; 3 << 20];
        let b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
        let mut input = b"{\"return\": {\"pid\": 1}, \"id\": \"vd-1\"}\n".to_vec();
        input.extend_from_slice(
            format!("{{\"return\": {{\"exitcode\": 0, \"out-data\": \"{b64}\", \"exited\": true}}, \"id\": \"vd-2\"}}\n").as_bytes(),
        );
        let mut q = qga(input);
        struct Count(usize);
        impl OutputSink for Count {
            fn chunk(&mut self, _: Stream, d: &[u8]) {
                self.0 += d.len();
            }
        }
        let mut seen = Count(0);
        let req = ExecRequest {
            path: "x",
            args: &[],
            env: None,
            input: None,
            max_output: 1000,
            deadline: soon(),
        };
        let out = q.exec(&req, &mut seen).unwrap();
        assert_eq!(out.stdout.len(), 1000);
        assert!(out.stdout_truncated);
        assert_eq!(seen.0, 3 << 20, "every byte passed to the sink");
    }
}
