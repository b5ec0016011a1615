//! The "docker-events" thread: follows the engine's event stream for this
//! node's containers and keeps the provider's session [`table`] current, so
//! `list` answers without a listing and an inspect per exited container.
//!
//! One connection at a time, in [`run`]'s loop: subscribe to
//! `GET /events?filters={"type":["container"],"label":[managed, node]}`,
//! then prime the table with one full listing (after subscribing, so an
//! event during the listing is in the stream, not lost), then apply events
//! as they come. When anything goes wrong (the engine goes away, the stream
//! ends, an inspect fails, a line is not an event or longer than
//! [`MAX_EVENT`]) the table is emptied (`list` asks the engine again), the
//! failure is logged once at warn (repeats at debug, the recovery at
//! info), and the loop reconnects after a backoff of 1 s doubling to 30 s,
//! back to 1 s after a connection that lasted [`STEADY`]. A panic while
//! applying an event is one more such failure.
//!
//! A change made behind the agent's back shows in a list once its event is
//! applied (milliseconds after the engine made it); the provider's own
//! changes show at once (it writes them to the table itself).
//!
//! A read that times out leaves the de-chunking reader where it was (in a
//! chunk-size line or in chunk data), so idle waits cost nothing. Should a
//! timeout ever fall between a chunk's data and its CRLF, the data is lost
//! and what follows is not an event: garbage, so the stream is re-primed,
//! never misread.
//!
//! Shutdown: the thread holds only a [`Weak`] reference to the provider's
//! state, upgraded while one event is applied. Reads time out every
//! [`POLL`] and the backoff waits in steps of it, and each time the thread
//! looks whether the provider is still there: when it was dropped, the
//! thread ends (within [`POLL`]).
//!
//! What each event means for the listing ([`Docker::apply`]): `create`,
//! `start`, `rename`: one inspect of that container (a start assigns host
//! ports; a rename may take the session's name away or give it back);
//! `die`: exited (or stopped, when the stop was ours) with the event's
//! `exitCode`, no inspect; `destroy`: gone. `stop`, `kill`, `pause`,
//! `unpause` and `health_status` change nothing a listing shows (a stop or
//! kill that ends the container is followed by its `die`; a paused one
//! lists as running). Other actions, other nodes' and unmanaged containers
//! are ignored.

use super::engine::{api_error, call_name};
use super::table;
use super::{spec, Docker, DockerError};
use crate::http::{self, Body, HttpError, Request, Response};
use crate::protocol::SessionId;
use crate::providers::SessionStatus;
use serde_json::Value;
use std::fmt;
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Weak;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often a waiting watcher looks whether the provider is still there.
pub(crate) const POLL: Duration = Duration::from_millis(500);
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A connection that lasted this long resets the backoff.
const STEADY: Duration = Duration::from_secs(30);
/// The longest event line we hold (events are a few hundred bytes; labels
/// make them longer, not this long).
pub(crate) const MAX_EVENT: usize = 64 * 1024;

/// Why the stream was left (and the table emptied).
#[derive(Debug)]
pub(crate) enum EventsError {
    /// Subscribing, the priming listing or an event's inspect failed.
    Engine(DockerError),
    /// Reading the stream failed.
    Read(HttpError),
    /// The engine ended the stream (it is shutting down or restarting).
    Ended,
    /// A line longer than [`MAX_EVENT`] without its end.
    TooLong,
    /// A line that is not an event.
    Garbage { detail: String, start: String },
    /// The watcher panicked while applying an event.
    Panicked(String),
}

impl fmt::Display for EventsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventsError::Engine(e) => write!(f, "{e}"),
            EventsError::Read(e) => write!(f, "reading the docker engine's event stream: {e}"),
            EventsError::Ended => f.write_str(
                "the docker engine ended its event stream (is it restarting?)",
            ),
            EventsError::TooLong => write!(
                f,
                "the docker engine's event stream carried a line longer than {MAX_EVENT} bytes"
            ),
            EventsError::Garbage { detail, start } => write!(
                f,
                "the docker engine's event stream carried something that is not an event ({detail}) in {start:?}"
            ),
            EventsError::Panicked(m) => write!(f, "the docker events watcher panicked: {m}"),
        }
    }
}

impl std::error::Error for EventsError {}

impl From<DockerError> for EventsError {
    fn from(e: DockerError) -> EventsError {
        EventsError::Engine(e)
    }
}

/// One container event of this node's sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Event {
    /// The container's full id.
    pub(crate) container: String,
    pub(crate) session: SessionId,
    /// When it happened, in ns since the epoch.
    pub(crate) time: i64,
    pub(crate) action: Action,
}

/// The actions that matter to a listing, and those known to change nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    Create,
    Start,
    /// The main process ended; the engine's `exitCode`.
    Die {
        exit_code: Option<i32>,
    },
    Stop,
    Kill,
    Pause,
    Unpause,
    Destroy,
    /// Renamed to `name` (without the leading '/').
    Rename {
        name: String,
    },
    /// `health_status: healthy` and the like.
    Health(String),
}

/// Reads one line of the stream. `Ok(None)`: an event to ignore (another
/// type, action, node, or a container that is not managed by us); `Err`:
/// the line is not an event.
pub(crate) fn parse_event(line: &[u8], node_id: &str) -> Result<Option<Event>, String> {
    let v: Value = serde_json::from_slice(line).map_err(|e| format!("not JSON: {e}"))?;
    let Some(obj) = v.as_object() else {
        return Err("not a JSON object".into());
    };
    let action = obj
        .get("Action")
        .and_then(Value::as_str)
        .ok_or("no Action")?;
    let actor = obj
        .get("Actor")
        .and_then(Value::as_object)
        .ok_or("no Actor")?;
    let attrs = actor.get("Attributes").unwrap_or(&Value::Null);
    if !attrs.is_object() && !attrs.is_null() {
        return Err("Actor.Attributes is not an object".into());
    }
    if obj.get("Type").and_then(Value::as_str) != Some("container") {
        return Ok(None);
    }
    let container = actor.get("ID").and_then(Value::as_str).unwrap_or("");
    if container.is_empty() || !container.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("Actor.ID {container:?} is not a container id"));
    }
    let time = match (obj.get("timeNano"), obj.get("time")) {
        (Some(ns), _) if ns.is_i64() => ns.as_i64().unwrap_or(0),
        (_, Some(s)) if s.is_i64() => s.as_i64().unwrap_or(0).saturating_mul(1_000_000_000),
        _ => return Err("no timeNano or time".into()),
    };
    let attr = |k: &str| attrs.get(k).and_then(Value::as_str);
    // Ours only: the labels are in the attributes (the filter already asks
    // for them; this is the ownership check, not an optimisation).
    let Some(Ok(session)) = attr(spec::LABEL_SESSION).map(SessionId::parse) else {
        return Ok(None);
    };
    if spec::foreign(attrs, session.as_str(), node_id).is_some() {
        return Ok(None);
    }
    let action = match action {
        "create" => Action::Create,
        "start" => Action::Start,
        "die" => Action::Die {
            exit_code: attr("exitCode").and_then(|c| c.parse().ok()),
        },
        "stop" => Action::Stop,
        "kill" => Action::Kill,
        "pause" => Action::Pause,
        "unpause" => Action::Unpause,
        "destroy" => Action::Destroy,
        "rename" => Action::Rename {
            name: attr("name")
                .unwrap_or("")
                .trim_start_matches('/')
                .to_string(),
        },
        a if a.starts_with("health_status") => {
            Action::Health(a.split_once(':').map_or("", |(_, s)| s).trim().to_string())
        }
        _ => return Ok(None),
    };
    Ok(Some(Event {
        container: container.to_string(),
        session,
        time,
        action,
    }))
}

/// Cuts the stream into lines, holding at most [`MAX_EVENT`] bytes of an
/// unfinished one.
#[derive(Debug, Default)]
pub(crate) struct Lines {
    pending: Vec<u8>,
}

impl Lines {
    /// Adds `data` and hands each complete, non-blank line to `f`.
    pub(crate) fn feed(
        &mut self,
        mut data: &[u8],
        f: &mut dyn FnMut(&[u8]) -> Result<(), EventsError>,
    ) -> Result<(), EventsError> {
        while let Some(i) = data.iter().position(|&b| b == b'\n') {
            let line = if self.pending.is_empty() {
                &data[..i]
            } else {
                self.pending.extend_from_slice(&data[..i]);
                &self.pending[..]
            };
            if line.len() > MAX_EVENT {
                return Err(EventsError::TooLong);
            }
            if !line.trim_ascii().is_empty() {
                f(line)?;
            }
            self.pending.clear();
            data = &data[i + 1..];
        }
        if self.pending.len() + data.len() > MAX_EVENT {
            return Err(EventsError::TooLong);
        }
        self.pending.extend_from_slice(data);
        Ok(())
    }
}

/// Starts the watcher of `docker`'s engine.
pub(crate) fn spawn(docker: Weak<Docker>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("docker-events".into())
        .spawn(move || run(&docker))
}

/// How one connection ended.
enum Exit {
    /// The provider was dropped: the thread ends.
    Dropped,
    /// Reconnect after the backoff.
    Broken(EventsError),
}

/// The watcher's loop: follow, and on failure empty the table, log, wait,
/// follow again; return when the provider is gone.
fn run(weak: &Weak<Docker>) {
    let mut backoff = BACKOFF_MIN;
    // Whether the last attempt failed: a failure is logged at warn once,
    // its repeats at debug.
    let mut failing = false;
    loop {
        let began = Instant::now();
        let exit = catch_unwind(AssertUnwindSafe(|| follow(weak, &mut failing)))
            .unwrap_or_else(|p| Exit::Broken(EventsError::Panicked(panic_text(&*p))));
        let e = match exit {
            Exit::Dropped => return,
            Exit::Broken(e) => e,
        };
        let Some(docker) = weak.upgrade() else { return };
        docker.table.unprime();
        drop(docker);
        if began.elapsed() >= STEADY {
            backoff = BACKOFF_MIN;
        }
        if failing {
            log::debug!("docker events: still failing: {e}; retrying in {backoff:?}");
        } else {
            log::warn!("docker events: {e}; session lists ask the engine each time until the stream is followed again (retrying in {backoff:?})");
            failing = true;
        }
        if !pause(weak, backoff) {
            return;
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection: subscribe, prime, apply events until it breaks.
fn follow(weak: &Weak<Docker>, failing: &mut bool) -> Exit {
    let Some(docker) = weak.upgrade() else {
        return Exit::Dropped;
    };
    let mut body = match subscribe(&docker) {
        Ok(body) => body,
        Err(e) => return Exit::Broken(e.into()),
    };
    let seen = table::now();
    match docker.list_full() {
        Ok(listing) => docker.table.prime(listing, seen),
        Err(e) => return Exit::Broken(e.into()),
    }
    if std::mem::take(failing) {
        log::info!(
            "docker events: following the engine's events again; session lists answer from them"
        );
    } else {
        log::debug!("docker events: following the engine's events");
    }
    // Only the Weak while waiting for the engine.
    drop(docker);
    let mut lines = Lines::default();
    let mut buf = [0u8; 8192];
    loop {
        let n = match body.read_some(&mut buf) {
            Ok(0) => return Exit::Broken(EventsError::Ended),
            Ok(n) => n,
            Err(e) if e.is_timeout() => {
                if weak.strong_count() == 0 {
                    return Exit::Dropped;
                }
                continue;
            }
            Err(e) => return Exit::Broken(EventsError::Read(e)),
        };
        let Some(docker) = weak.upgrade() else {
            return Exit::Dropped;
        };
        let fed = lines.feed(&buf[..n], &mut |line| {
            let event =
                parse_event(line, &docker.node_id).map_err(|detail| EventsError::Garbage {
                    detail,
                    start: String::from_utf8_lossy(&line[..line.len().min(100)]).into_owned(),
                })?;
            match event {
                Some(ev) => docker.apply(&ev).map_err(EventsError::Engine),
                None => Ok(()),
            }
        });
        if let Err(e) = fed {
            return Exit::Broken(e);
        }
    }
}

/// Opens the event stream of this node's containers; reads on it time out
/// every [`POLL`].
fn subscribe(docker: &Docker) -> Result<Body<UnixStream>, DockerError> {
    let filter = serde_json::json!({
        "type": ["container"],
        "label": [
            format!("{}=true", spec::LABEL_MANAGED),
            format!("{}={}", spec::LABEL_NODE, docker.node_id),
        ],
    });
    let path = format!("/events?filters={}", http::encode(&filter.to_string()));
    let call = call_name("GET", &path);
    let engine = &docker.engine;
    let target = engine.target(&path)?;
    let stream = engine.connect(engine.timeout)?;
    let handle = stream.try_clone().map_err(|e| DockerError::Connect {
        socket: engine.socket.clone(),
        source: e,
    })?;
    let (head, mut body) = http::request_streaming(stream, &Request::new("GET", &target))
        .map_err(|e| engine.http_error(&call, engine.timeout, e))?;
    if head.status != 200 {
        let body = body.read_all(64 * 1024).unwrap_or_default();
        return Err(api_error(&call, &Response { head, body }));
    }
    // The engine sends nothing while nothing happens: the timeout is how
    // the watcher notices that the provider was dropped.
    handle
        .set_read_timeout(Some(POLL))
        .map_err(|e| DockerError::Connect {
            socket: engine.socket.clone(),
            source: e,
        })?;
    Ok(body)
}

/// Waits `d` in steps of [`POLL`]; false when the provider was dropped.
fn pause(weak: &Weak<Docker>, d: Duration) -> bool {
    let until = Instant::now() + d;
    loop {
        if weak.strong_count() == 0 {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        std::thread::sleep((until - now).min(POLL));
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

impl Docker {
    /// Brings the table up to date with one event.
    pub(crate) fn apply(&self, ev: &Event) -> Result<(), DockerError> {
        let id = &ev.session;
        if self.table.newer_than(id.as_str(), ev.time) {
            // The provider recorded a later state itself (or the listing
            // that primed the table was taken after this event).
            return Ok(());
        }
        match &ev.action {
            Action::Create | Action::Start => self.note_container(id, &ev.container),
            Action::Rename { name } if *name == spec::container_name(id) => {
                self.note_container(id, &ev.container)
            }
            Action::Rename { .. } | Action::Destroy => {
                // Renamed away from the session's name, or removed: no
                // longer the session.
                self.table.remove(id.as_str(), Some(&ev.container), ev.time);
                self.forget(id, &ev.container);
                Ok(())
            }
            Action::Die { exit_code } => {
                let stopped = self.state.get(id.as_str()).stopped;
                let status = if stopped {
                    SessionStatus::Stopped
                } else {
                    SessionStatus::Exited
                };
                self.table.update(id.as_str(), &ev.container, ev.time, |s| {
                    s.status = status;
                    s.exit_code = *exit_code;
                });
                // An exit of its own (not the agent's stop): the event
                // stream hears of it now, not at the next listing.
                let sink = self.sink.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if let (Some(sink), false) = (sink, stopped) {
                    sink(crate::providers::Notice {
                        session_id: id.as_str().to_string(),
                        status,
                        exit_code: *exit_code,
                        cause: "docker:die".into(),
                    });
                }
                Ok(())
            }
            Action::Stop | Action::Kill | Action::Pause | Action::Unpause | Action::Health(_) => {
                Ok(())
            }
        }
    }

    /// Inspects container `cid` once and records it as session `id` when
    /// it still is (ours, under the session's name); a container that is
    /// gone or renamed away is dropped from the table.
    fn note_container(&self, id: &SessionId, cid: &str) -> Result<(), DockerError> {
        let seen = table::now();
        let Some(v) = self.get_container(cid)? else {
            self.table.remove(id.as_str(), Some(cid), seen);
            return Ok(());
        };
        let named = v["Name"].as_str().map(|n| n.trim_start_matches('/'))
            == Some(spec::container_name(id).as_str());
        if !named || spec::foreign(&v["Config"]["Labels"], id.as_str(), &self.node_id).is_some() {
            self.table.remove(id.as_str(), Some(cid), seen);
            self.forget(id, cid);
            return Ok(());
        }
        let mut rec = self.state.get(id.as_str());
        if rec.stopped && v["State"]["Status"] == "running" && !self.stopping(id.as_str()) {
            // Started again behind our back: its next exit is its own.
            self.state.update(id, |r| r.stopped = false);
            rec.stopped = false;
        }
        let session = spec::session_from_inspect(&v, id, rec.stopped, rec.warnings);
        self.table.upsert(session, cid, seen);
        self.known()
            .insert(id.as_str().to_string(), cid.to_string());
        Ok(())
    }

    /// Drops container `cid` from the checked ids when it is session `id`'s.
    fn forget(&self, id: &SessionId, cid: &str) {
        let mut known = self.known();
        if known.get(id.as_str()).is_some_and(|c| c == cid) {
            known.remove(id.as_str());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CID: &str = "0123456789abcdef";

    fn line(action: &str, attrs: Value) -> Vec<u8> {
        json!({
            "status": action, "id": CID, "from": "img",
            "Type": "container", "Action": action,
            "Actor": {"ID": CID, "Attributes": attrs},
            "scope": "local", "time": 1_700_000_000i64, "timeNano": 1_700_000_000_123_456_789i64,
        })
        .to_string()
        .into_bytes()
    }

    fn ours(extra: Value) -> Value {
        let mut a = json!({
            "image": "img", "name": "vendetta-s1",
            "vendetta.managed": "true", "vendetta.session": "s1", "vendetta.node": "n1",
        });
        for (k, v) in extra.as_object().unwrap() {
            a[k] = v.clone();
        }
        a
    }

    fn action(action: &str, extra: Value) -> Option<Action> {
        parse_event(&line(action, ours(extra)), "n1")
            .unwrap()
            .map(|e| e.action)
    }

    #[test]
    fn reads_each_action() {
        let ev = parse_event(&line("create", ours(json!({}))), "n1")
            .unwrap()
            .unwrap();
        assert_eq!(
            ev,
            Event {
                container: CID.into(),
                session: SessionId::parse("s1").unwrap(),
                time: 1_700_000_000_123_456_789,
                action: Action::Create,
            }
        );
        assert_eq!(action("start", json!({})), Some(Action::Start));
        assert_eq!(
            action("die", json!({"exitCode": "137", "execDuration": "3"})),
            Some(Action::Die {
                exit_code: Some(137)
            })
        );
        assert_eq!(
            action("die", json!({})),
            Some(Action::Die { exit_code: None })
        );
        assert_eq!(action("stop", json!({})), Some(Action::Stop));
        assert_eq!(action("kill", json!({"signal": "9"})), Some(Action::Kill));
        assert_eq!(action("pause", json!({})), Some(Action::Pause));
        assert_eq!(action("unpause", json!({})), Some(Action::Unpause));
        assert_eq!(action("destroy", json!({})), Some(Action::Destroy));
        assert_eq!(
            action(
                "rename",
                json!({"name": "other", "oldName": "/vendetta-s1"})
            ),
            Some(Action::Rename {
                name: "other".into()
            })
        );
        assert_eq!(
            action("health_status: unhealthy", json!({})),
            Some(Action::Health("unhealthy".into()))
        );
        for other in [
            "exec_create: sh -c x",
            "exec_start: sh",
            "attach",
            "oom",
            "top",
            "update",
            "resize",
        ] {
            assert_eq!(action(other, json!({})), None, "{other}");
        }
    }

    #[test]
    fn falls_back_to_seconds_without_time_nano() {
        let mut v: Value = serde_json::from_slice(&line("start", ours(json!({})))).unwrap();
        v.as_object_mut().unwrap().remove("timeNano");
        let ev = parse_event(v.to_string().as_bytes(), "n1")
            .unwrap()
            .unwrap();
        assert_eq!(ev.time, 1_700_000_000_000_000_000);
    }

    #[test]
    fn other_nodes_unmanaged_and_other_types_are_ignored() {
        assert_eq!(parse_event(&line("die", ours(json!({}))), "n2"), Ok(None));
        let unmanaged = ours(json!({"vendetta.managed": "false"}));
        assert_eq!(parse_event(&line("die", unmanaged), "n1"), Ok(None));
        let mut bare = ours(json!({}));
        bare.as_object_mut().unwrap().remove("vendetta.session");
        assert_eq!(parse_event(&line("die", bare), "n1"), Ok(None));
        let hostile = ours(json!({"vendetta.session": "../x"}));
        assert_eq!(parse_event(&line("die", hostile), "n1"), Ok(None));
        let mut image: Value = serde_json::from_slice(&line("pull", ours(json!({})))).unwrap();
        image["Type"] = json!("image");
        assert_eq!(parse_event(image.to_string().as_bytes(), "n1"), Ok(None));
    }

    #[test]
    fn garbage_is_an_error() {
        for (bad, why) in [
            (&b"{\"Type\":\"container\",\"Act"[..], "not JSON"),
            (b"[1,2]", "not a JSON object"),
            (b"HTTP/1.1 200 OK", "not JSON"),
            (br#"{"Type":"container","Actor":{"ID":"ab"}}"#, "no Action"),
            (br#"{"Type":"container","Action":"die"}"#, "no Actor"),
            (
                br#"{"Type":"container","Action":"die","Actor":{"ID":"../x","Attributes":{}},"timeNano":1}"#,
                "is not a container id",
            ),
            (
                br#"{"Type":"container","Action":"die","Actor":{"ID":"ab","Attributes":{}}}"#,
                "no timeNano or time",
            ),
            (
                br#"{"Type":"container","Action":"die","Actor":{"ID":"ab","Attributes":[1]},"timeNano":1}"#,
                "Attributes is not an object",
            ),
        ] {
            let e = parse_event(bad, "n1").unwrap_err();
            assert!(e.contains(why), "{e} for {}", String::from_utf8_lossy(bad));
        }
    }

    fn split(pieces: &[&[u8]]) -> Result<Vec<String>, EventsError> {
        let mut lines = Lines::default();
        let mut out = Vec::new();
        for p in pieces {
            lines.feed(p, &mut |l| {
                out.push(String::from_utf8_lossy(l).into_owned());
                Ok(())
            })?;
        }
        Ok(out)
    }

    #[test]
    fn lines_across_reads_and_an_overlong_one() {
        assert_eq!(
            split(&[b"{\"a\"", b":1}\n{\"b\":2}\n\n{\"c\"", b":3}\n"]).unwrap(),
            ["{\"a\":1}", "{\"b\":2}", "{\"c\":3}"]
        );
        let big = vec![b'x'; MAX_EVENT / 2 + 1];
        let e = split(&[&big, &big]).unwrap_err();
        assert!(matches!(e, EventsError::TooLong), "{e}");
        let mut whole = vec![b'x'; MAX_EVENT + 1];
        whole.push(b'\n');
        assert!(matches!(split(&[&whole]), Err(EventsError::TooLong)));
        let mut fits = vec![b'x'; MAX_EVENT];
        fits.push(b'\n');
        assert_eq!(split(&[&fits]).unwrap().len(), 1);
    }

    #[test]
    fn errors_say_what_failed() {
        assert_eq!(
            EventsError::Garbage {
                detail: "not JSON: x".into(),
                start: "zz".into()
            }
            .to_string(),
            "the docker engine's event stream carried something that is not an event (not JSON: x) in \"zz\""
        );
        assert!(EventsError::TooLong.to_string().contains("65536 bytes"));
    }

    /// A test double of the engine on a Unix socket: answers /_ping, the
    /// listing (one running session, s1 of node n1) and /events, where it
    /// writes what the test sends, one chunk per send. Records each
    /// request line and counts event streams the client closed.
    struct FakeEngine {
        dir: std::path::PathBuf,
        sock: std::path::PathBuf,
        requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
        closed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        send: std::sync::mpsc::Sender<Vec<u8>>,
    }

    impl FakeEngine {
        fn start() -> FakeEngine {
            use std::io::{Read, Write};
            use std::sync::atomic::{AtomicUsize, Ordering};
            use std::sync::{mpsc, Arc, Mutex};
            let dir = std::env::temp_dir()
                .join(format!("vt-devents-{}", crate::os::random::random_hex(4)));
            std::fs::create_dir_all(&dir).unwrap();
            let sock = dir.join("engine.sock");
            let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
            let requests = Arc::new(Mutex::new(Vec::new()));
            let closed = Arc::new(AtomicUsize::new(0));
            let (send, recv) = mpsc::channel::<Vec<u8>>();
            let recv = Arc::new(Mutex::new(recv));
            let (reqs, shut) = (requests.clone(), closed.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    let Ok(mut c) = conn else { return };
                    let (reqs, shut, recv) = (reqs.clone(), shut.clone(), recv.clone());
                    std::thread::spawn(move || {
                        let mut head = Vec::new();
                        let mut b = [0u8; 1];
                        while !head.ends_with(b"\r\n\r\n") && c.read(&mut b).unwrap_or(0) == 1 {
                            head.push(b[0]);
                        }
                        let line = String::from_utf8_lossy(&head)
                            .lines()
                            .next()
                            .unwrap_or("")
                            .to_string();
                        reqs.lock().unwrap().push(line.clone());
                        let answer = |body: &str| {
                            format!("HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                        };
                        if line.starts_with("GET /_ping ") {
                            let _ = c.write_all(answer("OK").as_bytes());
                        } else if line.starts_with("GET /v1.41/containers/json?") {
                            let list = json!([{"Id": CID, "Names": ["/vendetta-s1"], "Image": "img",
                                "State": "running", "Created": 1_795_000_000i64, "Ports": [],
                                "Labels": ours(json!({}))}]);
                            let _ = c.write_all(answer(&list.to_string()).as_bytes());
                        } else if line.starts_with("GET /v1.41/events?") {
                            let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
                            c.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                            loop {
                                // Ends when the client closes its side.
                                if let Ok(0) = c.read(&mut b) {
                                    shut.fetch_add(1, Ordering::SeqCst);
                                    return;
                                }
                                let next =
                                    recv.lock().unwrap().recv_timeout(Duration::from_millis(20));
                                if let Ok(data) = next {
                                    let mut chunk = format!("{:x}\r\n", data.len()).into_bytes();
                                    chunk.extend_from_slice(&data);
                                    chunk.extend_from_slice(b"\r\n");
                                    let _ = c.write_all(&chunk);
                                }
                            }
                        } else {
                            let _ = c.write_all(
                                b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}",
                            );
                        }
                    });
                }
            });
            FakeEngine {
                dir,
                sock,
                requests,
                closed,
                send,
            }
        }

        fn count(&self, prefix: &str) -> usize {
            self.requests
                .lock()
                .unwrap()
                .iter()
                .filter(|r| r.starts_with(prefix))
                .count()
        }
    }

    impl Drop for FakeEngine {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Polls `cond` for up to 10 s.
    fn eventually(mut cond: impl FnMut() -> bool) -> bool {
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn follows_the_stream_reconnects_after_garbage_and_ends_with_the_provider() {
        use crate::providers::docker::DockerProvider;
        use crate::providers::Provider;
        use std::sync::atomic::Ordering;
        let engine = FakeEngine::start();
        let mut config = crate::config::Config {
            cache_dir: Some(engine.dir.join("cache")),
            ..Default::default()
        };
        config.docker.socket = Some(engine.sock.clone());
        let p = DockerProvider::new(&config, "n1");
        let listing = "GET /v1.41/containers/json?";
        // Not primed yet: the first list asks the engine; it also starts
        // the watcher, which subscribes and primes.
        let first = p.list().unwrap();
        assert_eq!(first[0].status, SessionStatus::Running);
        assert!(eventually(|| p.table.sessions().is_some()), "never primed");
        assert_eq!(engine.count("GET /v1.41/events?"), 1);
        let filters = engine
            .requests
            .lock()
            .unwrap()
            .iter()
            .find(|r| r.contains("/events?"))
            .cloned()
            .unwrap();
        assert!(
            filters.contains(&http::encode(
                r#""label":["vendetta.managed=true","vendetta.node=n1"]"#
            )),
            "{filters}"
        );
        let lists = engine.count(listing);

        // Events happen after the priming listing began.
        let fresh = |action: &str, attrs: Value| {
            let mut v: Value = serde_json::from_slice(&line(action, attrs)).unwrap();
            v["timeNano"] = table::now().into();
            let mut bytes = v.to_string().into_bytes();
            bytes.push(b'\n');
            bytes
        };
        // A destroy from before the listing began (already in it) and one
        // of another node change nothing: the die after them finds the
        // session, and shows it from the event, asking nothing.
        let mut old = line("destroy", ours(json!({})));
        old.push(b'\n');
        engine.send.send(old).unwrap();
        engine
            .send
            .send(fresh("destroy", ours(json!({"vendetta.node": "n2"}))))
            .unwrap();
        engine
            .send
            .send(fresh("die", ours(json!({"exitCode": "3"}))))
            .unwrap();
        assert!(eventually(|| {
            let s = p.list().unwrap();
            s.len() == 1 && s[0].status == SessionStatus::Exited && s[0].exit_code == Some(3)
        }));
        assert_eq!(engine.count(listing), lists, "no listing while primed");

        // Garbage: the stream is left, the table emptied, and the watcher
        // subscribes and primes again after the backoff.
        engine
            .send
            .send(b"{\"Type\":\"container\",garbage\n".to_vec())
            .unwrap();
        assert!(eventually(|| engine.closed.load(Ordering::SeqCst) == 1));
        assert!(eventually(
            || engine.count("GET /v1.41/events?") == 2 && p.table.sessions().is_some()
        ));
        assert!(engine.count(listing) > lists, "primed again from a listing");
        assert_eq!(p.list().unwrap()[0].status, SessionStatus::Running);

        // Dropping the provider ends the watcher, which closes its stream.
        drop(p);
        assert!(
            eventually(|| engine.closed.load(Ordering::SeqCst) == 2),
            "the watcher outlived its provider"
        );
    }
}
