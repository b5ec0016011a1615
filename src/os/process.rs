//! Processes on the host: reading them from /proc, signalling them, and
//! killing what a session's command left running with everything it
//! started. The agent runs in the host's pid namespace (as dockerd and LXC
//! do), so a container's processes are visible here under their host pids.
//!
//! Every signal the agent sends goes through [`kill`], [`kill_group`] or a
//! [`PidFd`]; they refuse the pids that would widen the target (0 is our own
//! group, -1 is every process), so a bad pid file can never turn a kill of
//! one process into a kill of many.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// The signals the agent sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    Term,
    Kill,
    Stop,
    /// Signal 0: delivers nothing; succeeds when the process exists and may
    /// be signalled by us. Tests use it to prove a signal was (not) sent.
    #[cfg(test)]
    Probe,
}

impl Signal {
    fn number(self) -> libc::c_int {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
            Signal::Stop => libc::SIGSTOP,
            #[cfg(test)]
            Signal::Probe => 0,
        }
    }
}

/// A pid as kill(2) takes it, refused when it is not one process: 0 names
/// our own process group and anything above `i32::MAX` would turn negative,
/// that is into a group (or, as -1, every process we may signal).
fn one_pid(pid: u32) -> io::Result<libc::pid_t> {
    match libc::pid_t::try_from(pid) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{pid} is not a process id"),
        )),
    }
}

/// Sends `sig` to the process `pid`.
pub(crate) fn kill(pid: u32, sig: Signal) -> io::Result<()> {
    let pid = one_pid(pid)?;
    // SAFETY: kill(2) takes no pointers; `pid` is a single positive pid.
    if unsafe { libc::kill(pid, sig.number()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Ends this process at once, as `kill -9` would: no destructors, no
/// flushes (the crash tests' way to die at a chosen point).
pub(crate) fn kill_self() -> ! {
    let _ = kill(std::process::id(), Signal::Kill);
    std::process::abort()
}

/// Sends `sig` to every process in the process group `pgid`. Group 1 (init's)
/// is refused along with the pids [`kill`] refuses: it is never ours.
pub(crate) fn kill_group(pgid: u32, sig: Signal) -> io::Result<()> {
    let pgid = one_pid(pgid)?;
    if pgid == 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "process group 1 is init's, not ours to signal",
        ));
    }
    // SAFETY: kill(2) takes no pointers; `-pgid` names one group (pgid > 1).
    if unsafe { libc::kill(-pgid, sig.number()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A process pinned by a pidfd (Linux 5.3+): a signal sent through it reaches
/// that process or none, never a later one that reuses its pid. The fd also
/// becomes readable when the process exits, so it can be polled.
#[derive(Debug)]
pub(crate) struct PidFd(OwnedFd);

impl PidFd {
    /// Pins `pid`. Fails with ENOSYS on kernels without pidfd_open(2) and
    /// ESRCH when there is no such process.
    pub(crate) fn open(pid: u32) -> io::Result<PidFd> {
        let pid = one_pid(pid)?;
        // SAFETY: pidfd_open(2) takes a pid and flags, no pointers; it returns
        // a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = libc::c_int::try_from(fd).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "pidfd_open returned no descriptor",
            )
        })?;
        // SAFETY: the kernel just gave us this descriptor; nothing else owns it.
        Ok(PidFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Sends `sig` to the pinned process.
    pub(crate) fn send_signal(&self, sig: Signal) -> io::Result<()> {
        // SAFETY: pidfd_send_signal(2) on a pidfd we own, with no siginfo (a
        // null pointer is allowed) and no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                sig.number(),
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl AsFd for PidFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// The real user id of this process.
pub(crate) fn uid() -> u32 {
    // SAFETY: getuid(2) takes nothing and cannot fail.
    unsafe { libc::getuid() }
}

/// The effective user id of this process: 0 when it may act as root.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid(2) takes nothing and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether `/proc/{pid}/environ` holds exactly the entry `entry`.
pub(crate) fn environ_has(pid: u32, entry: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|b| *b == 0).any(|e| e == entry.as_bytes()))
}

/// One process as /proc/PID/stat shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Proc {
    pub(crate) pid: u32,
    pub(crate) state: char,
    pub(crate) ppid: u32,
    pub(crate) pgrp: u32,
    pub(crate) sid: u32,
    /// Clock ticks after boot (field 22): with the pid, it tells a
    /// process from a later one that reuses its pid.
    pub(crate) start_time: Option<u64>,
    /// Exited, not yet reaped (Z), or dead (X).
    pub(crate) zombie: bool,
}

/// The process `pid`, if there is one.
pub(crate) fn read_proc(pid: u32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(pid, &stat)
}

/// Fields after the command name, which may itself hold spaces and ')'.
fn parse_stat(pid: u32, stat: &str) -> Option<Proc> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let state = f.first()?.chars().next()?;
    Some(Proc {
        pid,
        state,
        ppid: f.get(1)?.parse().ok()?,
        pgrp: f.get(2)?.parse().ok()?,
        sid: f.get(3)?.parse().ok()?,
        start_time: f.get(19).and_then(|s| s.parse().ok()),
        zombie: state == 'Z' || state == 'X',
    })
}

/// Every process /proc shows.
pub(crate) fn all_procs() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(read_proc)
        .collect()
}

/// Whether a cgroup path of `pid` contains `needle` (a Docker container id).
pub(crate) fn cgroup_contains(pid: u32, needle: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| c.contains(needle))
}

/// Whether a cgroup path of `pid` has `dir` as one of its directories (an
/// LXC container's `lxc.payload.NAME`; a prefix of another name is no
/// match).
pub(crate) fn cgroup_has_dir(pid: u32, dir: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| has_dir(&c, dir))
}

/// `/proc/PID/cgroup` lines are `id:controllers:path`.
fn has_dir(cgroup: &str, dir: &str) -> bool {
    cgroup
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .any(|path| path.split('/').any(|d| d == dir))
}

/// Live processes whose environment holds exactly `entry`.
pub(crate) fn tagged(entry: &str) -> Vec<u32> {
    all_procs()
        .into_iter()
        .filter(|p| !p.zombie && environ_has(p.pid, entry))
        .map(|p| p.pid)
        .collect()
}

/// Live processes in `root`'s session or below it in the tree.
fn tree_of(root: u32, procs: &[Proc]) -> BTreeSet<u32> {
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for p in procs {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut found: BTreeSet<u32> = procs
        .iter()
        .filter(|p| p.pid == root || p.sid == root)
        .map(|p| p.pid)
        .collect();
    let mut todo: Vec<u32> = found.iter().copied().collect();
    while let Some(p) = todo.pop() {
        for c in children.get(&p).into_iter().flatten() {
            if found.insert(*c) {
                todo.push(*c);
            }
        }
    }
    let live: BTreeSet<u32> = procs.iter().filter(|p| !p.zombie).map(|p| p.pid).collect();
    found.intersection(&live).copied().collect()
}

/// How many freeze-and-kill rounds [`kill_tree`] makes before giving up.
const KILL_ROUNDS: usize = 50;

/// Why [`kill_tree`] left processes alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KillTreeError {
    /// The root is not where the caller's check says it must be.
    Outside { pid: u32 },
    /// Something kept the tree alive through every round.
    Survived { pid: u32 },
}

impl fmt::Display for KillTreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KillTreeError::Outside { pid } => write!(
                f,
                "pid {pid} is not in the container's cgroup, so it is not ours to kill: the agent must run in the host's pid namespace (as dockerd and LXC do)"
            ),
            KillTreeError::Survived { pid } => write!(
                f,
                "processes of pid {pid} were still alive after {KILL_ROUNDS} rounds of SIGKILL"
            ),
        }
    }
}

impl std::error::Error for KillTreeError {}

/// Kills `root` (a pid in the host namespace) and its session and
/// descendants, each only if `inside` says it is in the session's
/// container (so a recycled pid on the host is never hit). Returns how
/// many signals it sent.
pub(crate) fn kill_tree(root: u32, inside: &dyn Fn(u32) -> bool) -> Result<usize, KillTreeError> {
    match read_proc(root) {
        None => return Ok(0),
        Some(p) if p.zombie => return Ok(0),
        Some(_) if !inside(root) => return Err(KillTreeError::Outside { pid: root }),
        Some(_) => {}
    }
    let mut sent = 0;
    for _ in 0..KILL_ROUNDS {
        let victims: Vec<u32> = tree_of(root, &all_procs())
            .into_iter()
            .filter(|p| inside(*p))
            .collect();
        if victims.is_empty() {
            return Ok(sent);
        }
        // Freeze first so nothing forks or reparents between scan and kill.
        // A process gone meanwhile is what we want: errors are not failures.
        for p in &victims {
            let _ = kill(*p, Signal::Stop);
        }
        let frozen: BTreeSet<u32> = tree_of(root, &all_procs())
            .into_iter()
            .chain(victims.iter().copied())
            .filter(|p| inside(*p))
            .collect();
        for p in &frozen {
            let _ = kill(*p, Signal::Kill);
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(KillTreeError::Survived { pid: root })
}

/// Live (not zombie) processes whose process group is `pgid`.
pub(crate) fn group_members(pgid: u32) -> Vec<u32> {
    all_procs()
        .into_iter()
        .filter(|p| !p.zombie && p.pgrp == pgid)
        .map(|p| p.pid)
        .collect()
}

/// SIGKILLs the group `pgid` until no live member is left or `deadline`
/// passes: members forked after one signal get the next. Returns the
/// members still alive at the deadline (empty when the group is gone).
pub(crate) fn kill_group_until_gone(pgid: u32, deadline: Instant) -> Vec<u32> {
    while Instant::now() < deadline {
        if group_members(pgid).is_empty() {
            return Vec::new();
        }
        let _ = kill_group(pgid, Signal::Kill);
        std::thread::sleep(Duration::from_millis(5));
    }
    group_members(pgid)
}

/// The arguments of `pid` as /proc/PID/cmdline holds them; None when the
/// process is gone.
pub(crate) fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_with_odd_names() {
        let p = parse_stat(42, "42 (a b) c)) S 7 41 42 0 -1 4194560 0").unwrap();
        assert_eq!(
            (p.state, p.ppid, p.pgrp, p.sid, p.zombie),
            ('S', 7, 41, 42, false)
        );
        assert_eq!(p.start_time, None, "short line: no start time");
        let z = parse_stat(43, "43 (sleep) Z 1 43 43 0").unwrap();
        assert!(z.zombie);
        assert!(parse_stat(1, "garbage").is_none());
        // A whole line: starttime is field 22.
        let full = "7 (x) S 1 7 7 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 98765 1 1";
        assert_eq!(parse_stat(7, full).unwrap().start_time, Some(98765));
    }

    #[test]
    fn tree_covers_session_and_descendants() {
        let p = |pid, ppid, sid| Proc {
            pid,
            state: 'S',
            ppid,
            pgrp: sid,
            sid,
            start_time: None,
            zombie: false,
        };
        let procs = [
            p(10, 1, 10),  // the exec'd process
            p(11, 10, 10), // its child
            p(12, 11, 12), // a grandchild that called setsid
            p(13, 2, 10),  // orphaned into init, still in the session
            p(20, 1, 20),  // unrelated
            Proc {
                zombie: true,
                ..p(14, 10, 10)
            },
        ];
        let t: Vec<u32> = tree_of(10, &procs).into_iter().collect();
        assert_eq!(t, [10, 11, 12, 13]);
    }

    #[test]
    fn refuses_to_kill_outside_the_container() {
        let me = std::process::id();
        let e = kill_tree(me, &|_| false).unwrap_err();
        assert_eq!(e, KillTreeError::Outside { pid: me });
        assert!(e.to_string().contains("pid namespace"), "{e}");
        assert_eq!(
            kill_tree(u32::MAX - 1, &|_| true).unwrap(),
            0,
            "a gone pid is fine"
        );
    }

    #[test]
    fn matches_whole_cgroup_directories() {
        let v2 = "0::/lxc.payload.vendetta-web-1/init.scope\n";
        assert!(has_dir(v2, "lxc.payload.vendetta-web-1"));
        assert!(
            !has_dir(v2, "lxc.payload.vendetta-web"),
            "a prefix is no match"
        );
        let hybrid = "4:memory:/lxc.payload.vendetta-a\n0::/\n";
        assert!(has_dir(hybrid, "lxc.payload.vendetta-a"));
        assert!(!has_dir("0::/\n", "lxc.payload.vendetta-a"));
        assert!(!has_dir("garbage", "garbage"));
    }

    #[test]
    fn finds_tagged_processes() {
        let tag = format!("VENDETTA_TEST_TAG={}", std::process::id());
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env_clear()
            .env("VENDETTA_TEST_TAG", std::process::id().to_string())
            .spawn()
            .unwrap();
        let found = tagged(&tag);
        assert_eq!(found, [child.id()]);
        assert!(
            !tagged(&format!("{tag}0")).contains(&child.id()),
            "exact entries only"
        );
        let sent = kill_tree(child.id(), &|_| true).unwrap();
        assert!(sent >= 1);
        child.wait().unwrap();
    }

    #[test]
    fn refuses_pids_that_name_more_than_one_process() {
        for pid in [0, u32::MAX, i32::MAX as u32 + 1] {
            let e = kill(pid, Signal::Probe).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{pid}");
            assert_eq!(e.to_string(), format!("{pid} is not a process id"));
            let e = kill_group(pid, Signal::Probe).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{pid}");
            let e = PidFd::open(pid).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{pid}");
        }
        let e = kill_group(1, Signal::Probe).unwrap_err();
        assert_eq!(
            e.to_string(),
            "process group 1 is init's, not ours to signal"
        );
        kill(std::process::id(), Signal::Probe).unwrap();
    }

    #[test]
    fn a_pidfd_signals_its_process_and_reports_its_exit() {
        use crate::os::fd::{poll, Interest};
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pidfd = PidFd::open(child.id()).unwrap();
        let t = Duration::from_millis(20);
        assert_eq!(
            poll([(Some(pidfd.as_fd()), Interest::Read)], t).unwrap(),
            [false]
        );
        pidfd.send_signal(Signal::Kill).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        assert_eq!(
            poll([(Some(pidfd.as_fd()), Interest::Read)], t).unwrap(),
            [true]
        );
        // Reaped: the pinned process is gone, and no other gets the signal.
        let e = pidfd.send_signal(Signal::Probe).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ESRCH));
    }

    #[test]
    fn uids_are_this_process_s() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        let ids: Vec<u32> = line[4..]
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect();
        assert_eq!((uid(), euid()), (ids[0], ids[1]));
    }

    #[test]
    fn kills_a_process_group_until_it_is_gone() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 1021 & sleep 1023 & wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = child.id();
        let until = Instant::now() + Duration::from_secs(5);
        while group_members(pgid).len() < 3 {
            assert!(Instant::now() < until, "{:?}", group_members(pgid));
            std::thread::sleep(Duration::from_millis(5));
        }
        kill_group(pgid, Signal::Kill).unwrap();
        child.wait().unwrap();
        let left = kill_group_until_gone(pgid, Instant::now() + Duration::from_secs(5));
        assert_eq!(left, Vec::<u32>::new());
        assert_eq!(group_members(pgid), Vec::<u32>::new());
        assert_eq!(cmdline(u32::MAX - 1), None);
        assert_eq!(
            cmdline(std::process::id()).unwrap(),
            std::env::args().collect::<Vec<_>>()
        );
    }
}
