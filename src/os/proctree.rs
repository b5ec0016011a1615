//! Process trees on the host, read from /proc: finding what a session's
//! command left running and killing it with everything it started. The
//! agent runs in the host's pid namespace (as dockerd and LXC do), so a
//! container's processes are visible here under their host pids.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

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

/// Kills `root` (a pid in the host namespace) and its session and
/// descendants, each only if `inside` says it is in the session's
/// container (so a recycled pid on the host is never hit). Returns how
/// many signals it sent.
pub(crate) fn kill_tree(root: u32, inside: &dyn Fn(u32) -> bool) -> Result<usize, String> {
    match read_proc(root) {
        None => return Ok(0),
        Some(p) if p.zombie => return Ok(0),
        Some(_) if !inside(root) => {
            return Err(format!(
                "pid {root} is not in the container's cgroup, so it is not ours to kill: the agent must run in the host's pid namespace (as dockerd and LXC do)"
            ))
        }
        Some(_) => {}
    }
    let mut sent = 0;
    for _ in 0..50 {
        let victims: Vec<u32> = tree_of(root, &all_procs())
            .into_iter()
            .filter(|p| inside(*p))
            .collect();
        if victims.is_empty() {
            return Ok(sent);
        }
        // Freeze first so nothing forks or reparents between scan and kill.
        for p in &victims {
            // SAFETY: kill(2) with a pid checked to be in the container.
            unsafe { libc::kill(*p as i32, libc::SIGSTOP) };
        }
        let frozen: BTreeSet<u32> = tree_of(root, &all_procs())
            .into_iter()
            .chain(victims.iter().copied())
            .filter(|p| inside(*p))
            .collect();
        for p in &frozen {
            // SAFETY: as above.
            unsafe { libc::kill(*p as i32, libc::SIGKILL) };
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(format!(
        "processes of pid {root} were still alive after 50 rounds of SIGKILL"
    ))
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
        assert!(e.contains("pid namespace"), "{e}");
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
}
