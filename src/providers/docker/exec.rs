//! Running a command in a container: exec create, exec start on a hijacked
//! connection, the stdout/stderr frames taken apart as they arrive, the
//! exit code from exec inspect, and the kill on timeout.
//!
//! Output goes to the sink chunk by chunk and into one [`Capture`] per
//! stream, so memory stays at the cap however much the command writes.
//! stdin is written by a scoped thread while this one reads, so a command
//! that reads stdin and writes a lot cannot deadlock against us.
//!
//! Killing on timeout: an exec'd process is a session leader (runc calls
//! setsid for it), and exec inspect gives its pid in the host's pid
//! namespace. We SIGSTOP then SIGKILL every process in its session or
//! below it in the process tree, and repeat until none is left; each pid is
//! checked to be in the container's cgroup first, so a recycled pid on the
//! host is never hit. This needs the agent to share the engine's pid
//! namespace (it runs on the host as root, like dockerd); when it does not,
//! the kill fails with an error that says so.

use super::engine::{api_error, call_name, message_of, parse_json, Engine};
use super::DockerError;
use crate::http::{self as http, Hijack, Request};
use crate::os::process::{self, KillTreeError};
use crate::providers::{Capture, ExecOutput, ExecSpec, OutputSink, Stream};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

/// How long we keep reading after the kill for the stream to close.
const DRAIN_AFTER_KILL: Duration = Duration::from_secs(5);
/// How long exec inspect may take to report the exit code after EOF.
const EXIT_CODE_WAIT: Duration = Duration::from_secs(3);

/// Runs `spec` in the container with full id `container`.
pub(crate) fn run(
    engine: &Engine,
    container: &str,
    spec: &ExecSpec,
    sink: &mut dyn OutputSink,
) -> Result<ExecOutput, DockerError> {
    let deadline = Instant::now() + spec.timeout;
    if spec.argv.is_empty() {
        return Err(DockerError::Invalid(
            "params.command: is empty; name the program to run".into(),
        ));
    }
    let env = super::spec::env_list(&spec.env, "params.env")?;
    let mut body = json!({
        "AttachStdin": spec.stdin.is_some(),
        "AttachStdout": true,
        "AttachStderr": true,
        "Tty": false,
        "Cmd": spec.argv,
        "Env": env,
    });
    if let Some(w) = &spec.workdir {
        body["WorkingDir"] = w.as_str().into();
    }
    if let Some(u) = &spec.user {
        body["User"] = u.as_str().into();
    }
    let path = format!("/containers/{container}/exec");
    let resp = engine.call("POST", &path, Some(&body), engine.timeout)?;
    if resp.status() != 201 {
        return Err(api_error(&call_name("POST", &path), &resp));
    }
    let created = parse_json(&call_name("POST", &path), &resp.body)?;
    let Some(exec_id) = created["Id"].as_str().filter(|s| is_hex_id(s)) else {
        return Err(DockerError::BadAnswer {
            call: call_name("POST", &path),
            detail: "no exec Id in the answer".into(),
        });
    };
    let exec_id = exec_id.to_string();

    // Start on a connection of its own, hijacked.
    let start_path = format!("/exec/{exec_id}/start");
    let start_call = call_name("POST", &start_path);
    let target = engine.target(&start_path)?;
    let stream = engine.connect(engine.timeout)?;
    let writer = stream.try_clone().map_err(|e| DockerError::Connect {
        socket: engine.socket.clone(),
        source: e,
    })?;
    let req = Request::new("POST", &target)
        .json(br#"{"Detach":false,"Tty":false}"#)
        .upgrade();
    let mut conn = match http::hijack(stream, &req, 1 << 20)
        .map_err(|e| engine.http_error(&start_call, engine.timeout, e))?
    {
        Hijack::Stream(head, conn) => {
            log::trace!(
                "exec {exec_id}: engine answered {} to start; raw stream follows",
                head.status
            );
            conn
        }
        Hijack::Answer(resp) => {
            return Err(DockerError::Api {
                call: start_call,
                status: resp.status(),
                message: message_of(&resp),
            })
        }
    };

    let io_failed = |step: &'static str, source: std::io::Error| {
        engine.http_error(
            &start_call,
            spec.timeout,
            http::HttpError::Io { step, source },
        )
    };
    let mut out = Capture::new(spec.max_output);
    let mut err = Capture::new(spec.max_output);
    let mut demux = Demuxer::default();
    let mut timed_out = false;
    let mut kill_error = None;
    let read_result = std::thread::scope(|scope| {
        if let Some(input) = &spec.stdin {
            let mut w = writer;
            let _ = w.set_write_timeout(Some(spec.timeout.max(Duration::from_millis(1))));
            scope.spawn(move || {
                // A command that exits without reading its stdin makes this
                // fail with EPIPE: nothing to report.
                let _ = w.write_all(input);
                let _ = w.shutdown(Shutdown::Write);
            });
        }
        let mut buf = vec![0u8; 32 * 1024];
        let mut limit = deadline;
        let result = loop {
            let now = Instant::now();
            if now >= limit {
                if timed_out {
                    // Killed, yet the stream stays open: give up on it.
                    break Ok(());
                }
                timed_out = true;
                if let Err(e) = kill_exec(engine, &exec_id, container) {
                    kill_error = Some(e);
                    break Ok(());
                }
                limit = Instant::now() + DRAIN_AFTER_KILL;
                continue;
            }
            if let Err(e) = conn.get_ref().set_read_timeout(Some(limit - now)) {
                break Err(io_failed("setting the read timeout", e));
            }
            match conn.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    let fed = demux.feed(&buf[..n], &mut |stream, data| {
                        match stream {
                            Stream::Stdout => out.push(data),
                            Stream::Stderr => err.push(data),
                        }
                        sink.chunk(stream, data);
                    });
                    if let Err(detail) = fed {
                        break Err(DockerError::BadAnswer {
                            call: start_call.clone(),
                            detail,
                        });
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => break Err(io_failed("reading the exec output", e)),
            }
        };
        // Unblocks the stdin writer if the command never read it.
        let _ = conn.get_ref().shutdown(Shutdown::Both);
        result
    });
    read_result?;
    if let Some(e) = kill_error {
        return Err(e);
    }
    let exit_code = if timed_out {
        None
    } else {
        Some(exit_code(engine, &exec_id)?)
    };
    Ok(ExecOutput {
        exit_code,
        stdout_truncated: out.truncated(),
        stderr_truncated: err.truncated(),
        stdout: out.data,
        stderr: err.data,
        timed_out,
    })
}

fn is_hex_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn inspect(engine: &Engine, exec_id: &str) -> Result<Value, DockerError> {
    engine.get_json(&format!("/exec/{exec_id}/json"))
}

/// The exit code, once exec inspect has one. Read after EOF: before the
/// process exits it is null, which must not be read as 0.
fn exit_code(engine: &Engine, exec_id: &str) -> Result<i32, DockerError> {
    let until = Instant::now() + EXIT_CODE_WAIT;
    loop {
        let v = inspect(engine, exec_id)?;
        if v["Running"] == false {
            if let Some(code) = v["ExitCode"].as_i64() {
                return Ok(i32::try_from(code).unwrap_or(-1));
            }
        }
        if Instant::now() >= until {
            return Err(DockerError::BadAnswer {
                call: format!("GET /exec/{exec_id}/json"),
                detail: "the output ended but the engine reports no exit code".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill_exec(engine: &Engine, exec_id: &str, container: &str) -> Result<(), DockerError> {
    // The pid can read 0 for a moment right after start.
    let until = Instant::now() + Duration::from_secs(2);
    let pid = loop {
        let v = inspect(engine, exec_id)?;
        match v["Pid"].as_u64() {
            Some(pid) if pid > 0 => break pid as u32,
            _ if v["Running"] == false && v["ExitCode"].is_i64() => return Ok(()),
            _ if Instant::now() >= until => {
                return Err(DockerError::KillFailed {
                    pid: 0,
                    detail: "the engine reports no pid for the exec".into(),
                })
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let killed = kill_tree(pid, container).map_err(|e| DockerError::KillFailed {
        pid,
        detail: e.to_string(),
    })?;
    log::info!(pid = pid, killed = killed; "exec timed out; killed its processes");
    Ok(())
}

/// Kills the exec'd processes in `container` that carry `command_id` in
/// their environment (an exec the agent started and lost in a crash), with
/// their trees. Execs that others started (`docker exec` by a person) carry
/// no tag and are left alone. Returns how many execs it stopped.
pub(crate) fn reap(
    engine: &Engine,
    container: &str,
    command_id: &str,
) -> Result<usize, DockerError> {
    let c = engine.get_json(&format!("/containers/{container}/json"))?;
    let tag = format!("{}={command_id}", crate::providers::COMMAND_ID_ENV);
    let mut reaped = 0;
    let exec_ids = c["ExecIDs"].as_array().cloned().unwrap_or_default();
    for exec_id in exec_ids
        .iter()
        .filter_map(Value::as_str)
        .filter(|s| is_hex_id(s))
    {
        let v = inspect(engine, exec_id)?;
        let Some(pid) = v["Pid"].as_u64().and_then(|p| u32::try_from(p).ok()) else {
            continue;
        };
        if v["Running"] != true || pid == 0 || !process::environ_has(pid, &tag) {
            continue;
        }
        let killed = kill_tree(pid, container).map_err(|e| DockerError::KillFailed {
            pid,
            detail: e.to_string(),
        })?;
        log::info!(command_id = command_id, pid = pid, killed = killed; "stopped an exec left running by the agent's restart");
        reaped += 1;
    }
    Ok(reaped)
}

/// Kills `root` (a pid in the host namespace) and its session and
/// descendants, all inside `container`'s cgroup. Returns how many signals
/// it sent.
pub(crate) fn kill_tree(root: u32, container: &str) -> Result<usize, KillTreeError> {
    process::kill_tree(root, &|pid| process::cgroup_contains(pid, container))
}

/// Takes apart Docker's multiplexed stream: 8-byte headers (stream type,
/// three zero bytes, big-endian payload length) each followed by its
/// payload. Headers and payloads may be split across reads anywhere;
/// payload bytes are passed on as they come, never buffered.
#[derive(Debug, Default)]
pub(crate) struct Demuxer {
    header: [u8; 8],
    have: usize,
    /// The stream and bytes left of the current frame's payload.
    current: Option<(Stream, u32)>,
}

impl Demuxer {
    pub(crate) fn feed(
        &mut self,
        mut data: &[u8],
        out: &mut dyn FnMut(Stream, &[u8]),
    ) -> Result<(), String> {
        while !data.is_empty() {
            match self.current {
                Some((stream, left)) => {
                    let n = data.len().min(left as usize);
                    out(stream, &data[..n]);
                    data = &data[n..];
                    let left = left - n as u32;
                    self.current = (left > 0).then_some((stream, left));
                }
                None => {
                    let n = (8 - self.have).min(data.len());
                    self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
                    self.have += n;
                    data = &data[n..];
                    if self.have < 8 {
                        continue;
                    }
                    self.have = 0;
                    let h = self.header;
                    let stream = match (h[0], h[1..4] == [0, 0, 0]) {
                        // 0 is stdin echoed back: show it as stdout.
                        (0 | 1, true) => Stream::Stdout,
                        // 3 carries the engine's own error text.
                        (2 | 3, true) => Stream::Stderr,
                        _ => {
                            return Err(format!(
                                "bad stream frame header {h:02x?}: the exec output is not a multiplexed stream"
                            ))
                        }
                    };
                    let len = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                    self.current = (len > 0).then_some((stream, len));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::SessionId;
    use crate::providers::docker::DockerProvider;
    use crate::providers::{Provider, SessionSpec};

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![kind, 0, 0, 0];
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn demux_in_pieces(bytes: &[u8], piece: usize) -> (Vec<u8>, Vec<u8>, usize) {
        let mut d = Demuxer::default();
        let (mut o, mut e, mut calls) = (Vec::new(), Vec::new(), 0);
        for part in bytes.chunks(piece) {
            d.feed(part, &mut |s, data| {
                calls += 1;
                match s {
                    Stream::Stdout => o.extend_from_slice(data),
                    Stream::Stderr => e.extend_from_slice(data),
                }
            })
            .unwrap();
        }
        (o, e, calls)
    }

    #[test]
    fn demuxes_split_and_joined_frames() {
        let mut bytes = frame(1, b"hello ");
        bytes.extend(frame(2, b"oops"));
        bytes.extend(frame(1, b""));
        bytes.extend(frame(1, b"world"));
        bytes.extend(frame(0, b"!"));
        for piece in [1, 2, 3, 7, 8, 9, 1000] {
            let (o, e, _) = demux_in_pieces(&bytes, piece);
            assert_eq!(o, b"hello world!", "piece {piece}");
            assert_eq!(e, b"oops", "piece {piece}");
        }
    }

    #[test]
    fn payloads_are_passed_on_as_they_arrive() {
        // A 1 MB frame fed in 4 KiB reads: many calls, no whole-frame buffer.
        let big = vec![b'a'; 1 << 20];
        let bytes = frame(1, &big);
        let (o, _, calls) = demux_in_pieces(&bytes, 4096);
        assert_eq!(o.len(), 1 << 20);
        assert!(calls >= 256, "{calls}");
    }

    #[test]
    fn garbage_headers_are_errors() {
        let mut d = Demuxer::default();
        let e = d
            .feed(b"HTTP/1.1 500 oops\r\n", &mut |_, _| {})
            .unwrap_err();
        assert!(e.contains("bad stream frame header"), "{e}");
        let mut d = Demuxer::default();
        assert_eq!(
            d.feed(&frame(9, b"x"), &mut |_, _| {}),
            Err("bad stream frame header [09, 00, 00, 00, 00, 00, 00, 01]: the exec output is not a multiplexed stream".to_string())
        );
    }

    #[test]
    fn refuses_to_kill_outside_the_container() {
        // Our own pid is in no container of that id.
        let me = std::process::id();
        let e = kill_tree(me, "0123456789abcdef0123456789abcdef").unwrap_err();
        assert_eq!(e, KillTreeError::Outside { pid: me });
        assert!(e.to_string().contains("pid namespace"), "{e}");
        assert_eq!(
            kill_tree(u32::MAX - 1, "x").unwrap(),
            0,
            "a gone pid is fine"
        );
    }

    /// Records when each chunk came.
    struct Timed(Vec<(Instant, Stream, Vec<u8>)>);

    impl OutputSink for Timed {
        fn chunk(&mut self, stream: Stream, data: &[u8]) {
            self.0.push((Instant::now(), stream, data.to_vec()));
        }
    }

    #[test]
    fn exec_output_reaches_the_sink_as_it_arrives_from_the_real_engine() {
        let dir = std::env::temp_dir().join(format!("vdsink-{}", crate::os::random::random_hex(4)));
        let mut config = crate::config::Config {
            cache_dir: Some(dir.clone()),
            ..Default::default()
        };
        // Built offline by tests/setup/images.sh (`make test` runs it).
        config.docker.image = "vendetta-test/busybox:latest".into();
        let node = format!("node-vu{}sink", std::process::id());
        let p = DockerProvider::new(&config, &node);
        let id = SessionId::parse(&format!("vu{}-sink", std::process::id())).unwrap();
        // Removes the container and the cache dir, also when the test fails.
        struct Cleanup<'a>(&'a DockerProvider, &'a SessionId, std::path::PathBuf);
        impl Drop for Cleanup<'_> {
            fn drop(&mut self) {
                let _ = self.0.destroy(self.1);
                let _ = std::fs::remove_dir_all(&self.2);
            }
        }
        let _cleanup = Cleanup(&p, &id, dir.clone());
        p.create(&SessionSpec {
            id: id.clone(),
            node_id: node.clone(),
            image: None,
            workspace: None,
            env: Default::default(),
            ports: vec![],
            resources: Default::default(),
            labels: Default::default(),
            command: None,
            timeout: Duration::from_secs(30),
            limits_must_hold: false,
        })
        .unwrap();
        p.start(&id).unwrap();
        let spec = ExecSpec {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "echo first; echo oops >&2; sleep 2; echo second".into(),
            ],
            env: Default::default(),
            workdir: None,
            user: None,
            stdin: None,
            timeout: Duration::from_secs(20),
            max_output: 1 << 20,
        };
        let mut sink = Timed(Vec::new());
        let t0 = Instant::now();
        let out = p.exec(&id, &spec, &mut sink).unwrap();
        let done = t0.elapsed();
        assert_eq!(out.exit_code, Some(0));
        assert_eq!(out.stdout, b"first\nsecond\n");
        let first = sink
            .0
            .iter()
            .find(|(_, s, d)| *s == Stream::Stdout && d.starts_with(b"first"))
            .expect("a chunk with the first line");
        assert!(
            first.0 - t0 < Duration::from_millis(1500) && done >= Duration::from_secs(2),
            "the first line came {:?} in, the exec took {done:?}: output was held back",
            first.0 - t0
        );
        assert!(sink
            .0
            .iter()
            .any(|(_, s, d)| *s == Stream::Stderr && d == b"oops\n"));
        assert!(p.destroy(&id).unwrap());
        assert!(!p.destroy(&id).unwrap());
    }

    proptest::proptest! {
        /// Frames split anywhere come out whole, in order, per stream.
        #[test]
        fn prop_demux_reassembles_frames_split_anywhere(
            frames in proptest::collection::vec(
                (proptest::bool::ANY, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)),
                0..20,
            ),
            piece in 1usize..64,
        ) {
            let mut bytes = Vec::new();
            let (mut want_out, mut want_err) = (Vec::new(), Vec::new());
            for (stderr, payload) in &frames {
                bytes.extend(frame(if *stderr { 2 } else { 1 }, payload));
                if *stderr { want_err.extend(payload) } else { want_out.extend(payload) }
            }
            let (o, e, _) = demux_in_pieces(&bytes, piece);
            proptest::prop_assert_eq!((o, e), (want_out, want_err));
        }

        /// Garbage from the engine is an error or output, never a panic.
        #[test]
        fn prop_demux_takes_any_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000)) {
            let mut d = Demuxer::default();
            let _ = d.feed(&bytes, &mut |_, _| {});
        }
    }
}
