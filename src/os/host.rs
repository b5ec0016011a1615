//! Facts about the host and this process, read from /proc, uname and statvfs.
//!
//! Every reader returns `Option`: a missing file (a container without
//! /proc/loadavg, say) leaves one field empty, never fails a command.

use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct HostInfo {
    pub(crate) os: String,
    pub(crate) arch: &'static str,
    pub(crate) kernel: String,
    pub(crate) hostname: String,
    pub(crate) cpus: usize,
    pub(crate) memory_total_bytes: u64,
    pub(crate) memory_available_bytes: u64,
    pub(crate) uptime_s: u64,
}

pub(crate) fn host_info() -> HostInfo {
    let mem = meminfo();
    HostInfo {
        os: os_name(),
        arch: std::env::consts::ARCH,
        kernel: read_trim("/proc/sys/kernel/osrelease").unwrap_or_default(),
        hostname: hostname(),
        cpus: cpus(),
        memory_total_bytes: mem.map(|m| m.0).unwrap_or(0),
        memory_available_bytes: mem.map(|m| m.1).unwrap_or(0),
        uptime_s: read_trim("/proc/uptime")
            .and_then(|s| {
                s.split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
            })
            .map(|v| v as u64)
            .unwrap_or(0),
    }
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

pub(crate) fn hostname() -> String {
    read_trim("/proc/sys/kernel/hostname")
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

pub(crate) fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

pub(crate) fn os_name() -> String {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .map(|v| v.trim_matches('"').to_string())
    };
    field("PRETTY_NAME")
        .or_else(|| field("NAME"))
        .unwrap_or_else(|| std::env::consts::OS.to_string())
}

/// (MemTotal, MemAvailable) in bytes.
pub(crate) fn meminfo() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |key: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}

/// The 1-minute load average.
pub(crate) fn load1() -> Option<f64> {
    read_trim("/proc/loadavg")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Disk {
    pub(crate) total_bytes: u64,
    pub(crate) available_bytes: u64,
}

/// Space on the file system holding `path`.
pub(crate) fn disk(path: &Path) -> Option<Disk> {
    let s = super::fs::statvfs(path).ok()?;
    Some(Disk {
        total_bytes: s.blocks * s.fragment_size,
        available_bytes: s.blocks_available * s.fragment_size,
    })
}

/// A sysconf(3) value; None when the system does not say.
fn sysconf(name: libc::c_int) -> Option<i64> {
    // SAFETY: sysconf takes an int and no pointers, and has no preconditions.
    let v = unsafe { libc::sysconf(name) };
    (v > 0).then_some(v as i64)
}

/// Resident set size of this process in bytes.
pub(crate) fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page = sysconf(libc::_SC_PAGESIZE).unwrap_or(4096);
    Some(pages * page.max(4096) as u64)
}

/// User plus system CPU time of this process, in seconds.
pub(crate) fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let tick = sysconf(libc::_SC_CLK_TCK).unwrap_or(1) as f64;
    Some((utime + stime) / tick)
}

pub(crate) fn open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

pub(crate) fn threads() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Names of this process's threads, for /debug/threads.
pub(crate) fn thread_names() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .map(|s| s.trim().to_string())
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_real_values() {
        let h = host_info();
        assert!(h.cpus >= 1);
        assert!(h.memory_total_bytes > 0);
        assert!(!h.kernel.is_empty());
        assert!(rss_bytes().unwrap() > 0);
        assert!(cpu_seconds().is_some());
        assert!(disk(Path::new("/")).unwrap().total_bytes > 0);
        assert!(threads().unwrap() >= 1);
    }
}
