//! Running host programs for providers: an argv (never a shell string),
//! a deadline, stdin fed from memory, stdout and stderr captured up to a
//! cap and passed on as they arrive, and on timeout the whole process group
//! killed and reaped.
//!
//! Each run is one thread: the child's pipes (and a pidfd for its exit,
//! when the kernel has `pidfd_open`) are multiplexed with `poll(2)`, so a
//! run never leaves reader threads behind, even when a grandchild keeps a
//! pipe open after the child has exited. The child leads a new process
//! group; a timeout sends SIGKILL to that group and then waits until no
//! live member is left, so nothing the command started in that group
//! outlives the deadline. Processes that leave the group on purpose
//! (`setsid`, daemons) are out of reach, as they are for `timeout(1)`.

use crate::os::fd::{self, Interest};
use crate::os::process::{self as host, PidFd, Signal};
use crate::providers::output::{Capture, OutputSink, Stream};
use std::ffi::OsString;
use std::fmt;
use std::io::{self, PipeReader, PipeWriter, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a killed process group may take to disappear.
const REAP_LIMIT: Duration = Duration::from_secs(5);
/// How long output left in the pipes is read after the child exited.
const DRAIN_LIMIT: Duration = Duration::from_millis(200);
/// Poll tick when no pidfd is available to signal the child's exit.
const TICK: Duration = Duration::from_millis(10);

/// What a run produced.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// None when the run was killed for its timeout.
    pub(crate) status: Option<ExitStatus>,
    pub(crate) stdout: Capture,
    pub(crate) stderr: Capture,
    pub(crate) timed_out: bool,
    pub(crate) elapsed: Duration,
}

impl Outcome {
    /// The exit code as a shell reports it: the code, or 128+signal when a
    /// signal ended the process. None when killed for the timeout.
    pub(crate) fn code(&self) -> Option<i32> {
        let st = self.status?;
        st.code().or_else(|| st.signal().map(|s| 128 + s))
    }

    pub(crate) fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// Captured stderr as text, trimmed.
    pub(crate) fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.data)
            .trim()
            .to_string()
    }

    /// Captured stdout as text.
    pub(crate) fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout.data).into_owned()
    }
}

/// Why a run could not be carried out (a non-zero exit is not an error
/// here; the caller decides what it means).
#[derive(Debug)]
pub(crate) enum ProcessError {
    /// The program could not be started.
    Spawn { program: String, source: io::Error },
    /// Talking to the running child failed.
    Io {
        program: String,
        step: &'static str,
        source: io::Error,
    },
}

impl ProcessError {
    /// True when the program does not exist (not installed, not on PATH).
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, ProcessError::Spawn { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }

    /// True when the argument list was too long for the kernel (E2BIG).
    pub(crate) fn is_too_long(&self) -> bool {
        matches!(self, ProcessError::Spawn { source, .. } if source.raw_os_error() == Some(libc::E2BIG))
    }
}

impl fmt::Display for ProcessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcessError::Spawn { program, source } if source.kind() == io::ErrorKind::NotFound => {
                write!(
                    f,
                    "cannot run {program}: not found on PATH; is it installed?"
                )
            }
            ProcessError::Spawn { program, source } => write!(f, "cannot run {program}: {source}"),
            ProcessError::Io {
                program,
                step,
                source,
            } => write!(f, "{step} of {program} failed: {source}"),
        }
    }
}

impl std::error::Error for ProcessError {}

/// Runs `cmd` to completion or until `timeout`, feeding it `stdin` (or
/// /dev/null) and capturing each output stream up to `max_output` bytes.
/// Chunks go to `sink` as they arrive. Stdin, stdout, stderr and the
/// process group of `cmd` are set here; everything else (args, env, cwd)
/// is the caller's.
pub(crate) fn run(
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
    max_output: usize,
    sink: &mut dyn OutputSink,
) -> Result<Outcome, ProcessError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let started = Instant::now();
    let deadline = started + timeout;
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    // A group of its own, so a timeout can kill everything it started.
    .process_group(0);
    let mut child = cmd.spawn().map_err(|source| ProcessError::Spawn {
        program: program.clone(),
        source,
    })?;
    let io_err = |step: &'static str, source: io::Error| ProcessError::Io {
        program: program.clone(),
        step,
        source,
    };
    let mut run = Running {
        stdout: child
            .stdout
            .take()
            .map(|p| PipeReader::from(OwnedFd::from(p))),
        stderr: child
            .stderr
            .take()
            .map(|p| PipeReader::from(OwnedFd::from(p))),
        stdin: child
            .stdin
            .take()
            .map(|p| PipeWriter::from(OwnedFd::from(p))),
        input: stdin.unwrap_or_default(),
        written: 0,
        out: Capture::new(max_output),
        err: Capture::new(max_output),
    };
    let fds = [
        run.stdout.as_ref().map(AsFd::as_fd),
        run.stderr.as_ref().map(AsFd::as_fd),
    ];
    for fd in fds
        .into_iter()
        .chain([run.stdin.as_ref().map(AsFd::as_fd)])
        .flatten()
    {
        fd::set_nonblocking(fd).map_err(|e| io_err("setting up the pipes", e))?;
    }
    if run.input.is_empty() {
        run.stdin = None; // closing it is the EOF the child reads
    }
    // Without pidfd_open (kernels before 5.3) the loop ticks instead.
    let pidfd = PidFd::open(child.id()).ok();
    let status = match run.pump(&mut child, pidfd.as_ref(), deadline, sink) {
        Ok(status) => status,
        Err(e) => {
            kill_group(&mut child);
            return Err(io_err("reading the output", e));
        }
    };
    let timed_out = status.is_none();
    if timed_out {
        kill_group(&mut child);
    }
    Ok(Outcome {
        status,
        stdout: run.out,
        stderr: run.err,
        timed_out,
        elapsed: started.elapsed(),
    })
}

/// The parent's ends of a running child's pipes and what came out of them.
struct Running<'a> {
    stdout: Option<PipeReader>,
    stderr: Option<PipeReader>,
    stdin: Option<PipeWriter>,
    input: &'a [u8],
    written: usize,
    out: Capture,
    err: Capture,
}

impl Running<'_> {
    /// Moves bytes until the child has exited (Some(status)) or the
    /// deadline passed (None).
    fn pump(
        &mut self,
        child: &mut Child,
        pidfd: Option<&PidFd>,
        deadline: Instant,
        sink: &mut dyn OutputSink,
    ) -> io::Result<Option<ExitStatus>> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(st) = child.try_wait()? {
                // The child is gone; what it wrote is in the pipes. Take
                // that and stop: a grandchild may hold the pipes open.
                self.drain(&mut buf, sink)?;
                return Ok(Some(st));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let mut wait = deadline - now;
            if pidfd.is_none() || (self.stdout.is_none() && self.stderr.is_none()) {
                wait = wait.min(TICK);
            }
            // The pidfd only wakes us: the exit is read by try_wait above.
            let [out, err, input, _exited] = fd::poll(
                [
                    (self.stdout.as_ref().map(AsFd::as_fd), Interest::Read),
                    (self.stderr.as_ref().map(AsFd::as_fd), Interest::Read),
                    (self.stdin.as_ref().map(AsFd::as_fd), Interest::Write),
                    (pidfd.map(AsFd::as_fd), Interest::Read),
                ],
                wait,
            )?;
            if out {
                self.read_some(Stream::Stdout, &mut buf, sink)?;
            }
            if err {
                self.read_some(Stream::Stderr, &mut buf, sink)?;
            }
            if input {
                self.write_some();
            }
        }
    }

    /// One read from a ready stream; EOF closes our end.
    fn read_some(
        &mut self,
        stream: Stream,
        buf: &mut [u8],
        sink: &mut dyn OutputSink,
    ) -> io::Result<bool> {
        let (slot, cap) = match stream {
            Stream::Stdout => (&mut self.stdout, &mut self.out),
            Stream::Stderr => (&mut self.stderr, &mut self.err),
        };
        let Some(pipe) = slot.as_mut() else {
            return Ok(false);
        };
        match pipe.read(buf) {
            Ok(0) => {
                *slot = None;
                Ok(false)
            }
            Ok(n) => {
                cap.push(&buf[..n]);
                sink.chunk(stream, &buf[..n]);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Reads what is buffered in both pipes without waiting for more (and
    /// for at most DRAIN_LIMIT, should a grandchild keep writing).
    fn drain(&mut self, buf: &mut [u8], sink: &mut dyn OutputSink) -> io::Result<()> {
        let until = Instant::now() + DRAIN_LIMIT;
        while Instant::now() < until && self.read_some(Stream::Stdout, buf, sink)? {}
        while Instant::now() < until && self.read_some(Stream::Stderr, buf, sink)? {}
        self.stdout = None;
        self.stderr = None;
        Ok(())
    }

    /// Writes what the pipe takes; closes stdin when all is written or the
    /// child stopped reading (EPIPE: its choice, not our error).
    fn write_some(&mut self) {
        let Some(pipe) = self.stdin.as_mut() else {
            return;
        };
        match pipe.write(&self.input[self.written..]) {
            Ok(n) => {
                self.written += n;
                if self.written >= self.input.len() {
                    self.stdin = None;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => self.stdin = None,
        }
    }
}

/// SIGKILLs the child's process group, reaps the child and waits (bounded)
/// until no live process is left in the group.
fn kill_group(child: &mut Child) {
    let pgid = child.id();
    let deadline = Instant::now() + REAP_LIMIT;
    // The group we created for this child: gone already is fine.
    let _ = host::kill_group(pgid, Signal::Kill);
    while Instant::now() < deadline {
        if let Ok(Some(_)) | Err(_) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let live = host::kill_group_until_gone(pgid, deadline);
    if !live.is_empty() {
        log::warn!(
            "process group {pgid} still has live members {live:?} {} after SIGKILL",
            crate::protocol::duration::format(REAP_LIMIT)
        );
    }
}

/// Turns a program and its arguments into a `Command` (argv, no shell).
pub(crate) fn command<I, S>(program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let mut c = Command::new(program);
    c.args(args.into_iter().map(Into::into));
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::output::Discard;

    fn sh(script: &str) -> Command {
        command("/bin/sh", ["-c", script])
    }

    /// Runs `script` in sh with no stdin, output capped at `cap`.
    fn run_sh(script: &str, timeout: Duration, cap: usize) -> Outcome {
        run(&mut sh(script), None, timeout, cap, &mut Discard).unwrap()
    }

    struct Collect(Vec<(Stream, Vec<u8>)>);
    impl OutputSink for Collect {
        fn chunk(&mut self, s: Stream, d: &[u8]) {
            self.0.push((s, d.to_vec()));
        }
    }

    #[test]
    fn captures_both_streams_and_the_exit_code() {
        let mut sink = Collect(Vec::new());
        let o = run(
            &mut sh("echo out; echo err >&2; exit 7"),
            None,
            Duration::from_secs(10),
            1024,
            &mut sink,
        )
        .unwrap();
        assert_eq!(o.code(), Some(7));
        assert_eq!(o.stdout.data, b"out\n");
        assert_eq!(o.stderr.data, b"err\n");
        assert!(!o.timed_out && !o.stdout.truncated());
        assert!(sink.0.contains(&(Stream::Stdout, b"out\n".to_vec())));
        assert!(sink.0.contains(&(Stream::Stderr, b"err\n".to_vec())));
    }

    #[test]
    fn signals_become_128_plus() {
        let o = run_sh("kill -9 $$", Duration::from_secs(10), 64);
        assert_eq!(o.code(), Some(137));
    }

    #[test]
    fn feeds_large_stdin_while_reading_large_output() {
        // Both directions exceed a pipe buffer (64 KiB): a runner that wrote
        // all stdin before reading would deadlock here.
        let input = vec![b'x'; 1 << 20];
        let o = run(
            &mut command("cat", Vec::<String>::new()),
            Some(&input),
            Duration::from_secs(20),
            2 << 20,
            &mut Discard,
        )
        .unwrap();
        assert_eq!(o.code(), Some(0));
        assert_eq!(o.stdout.data.len(), 1 << 20);
    }

    #[test]
    fn caps_output_but_counts_it() {
        let o = run_sh("head -c 100000 /dev/zero", Duration::from_secs(10), 1000);
        assert_eq!(o.stdout.data.len(), 1000);
        assert_eq!(o.stdout.total, 100_000);
        assert!(o.stdout.truncated());
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        let t = Instant::now();
        let script = "sleep 1013 & sleep 1017 & echo started; wait";
        let o = run_sh(script, Duration::from_millis(300), 1024);
        assert!(o.timed_out);
        assert_eq!(o.code(), None);
        assert_eq!(o.stdout.data, b"started\n");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        // No sleep of ours survives: look for them by their unusual argument.
        let left: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok())
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c == "sleep 1013 " || c == "sleep 1017 ")
            .collect();
        assert!(left.is_empty(), "survivors: {left:?}");
    }

    #[test]
    fn returns_when_the_child_exits_even_if_a_grandchild_holds_the_pipe() {
        let t = Instant::now();
        let o = run_sh("sleep 3 & echo done", Duration::from_secs(20), 1024);
        assert_eq!(o.code(), Some(0));
        assert_eq!(o.stdout.data, b"done\n");
        // The background sleep (gone by itself in 3 s) did not hold us up.
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }

    #[test]
    fn missing_program_is_a_clear_error() {
        let e = run(
            &mut command("definitely-not-a-tool-xyz", ["a"]),
            None,
            Duration::from_secs(1),
            10,
            &mut Discard,
        )
        .unwrap_err();
        assert!(matches!(e, ProcessError::Spawn { .. }), "{e:?}");
        assert!(e.is_not_found());
        assert_eq!(
            e.to_string(),
            "cannot run definitely-not-a-tool-xyz: not found on PATH; is it installed?"
        );
    }
}
