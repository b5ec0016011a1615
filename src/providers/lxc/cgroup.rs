//! Resource limits as cgroup keys: which layout the host has (v2 only,
//! hybrid, v1, none) and which controllers work in it, the
//! `lxc.cgroup2.*` or `lxc.cgroup.*` lines for the limits it can enforce,
//! and what is left of a failed start in the cgroup tree.

use crate::protocol::command::Resources;
use std::path::Path;

/// CFS period for `cpus` limits, in µs (the kernel default).
const CPU_PERIOD_US: u64 = 100_000;

/// How the host's cgroups are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CgroupMode {
    /// cgroup v2 only (`/sys/fs/cgroup` is cgroup2fs): `lxc.cgroup2.*`.
    Unified,
    /// v1 controllers with a v2 hierarchy beside them: `lxc.cgroup.*`.
    Hybrid,
    /// v1 only: `lxc.cgroup.*`.
    Legacy,
    /// No cgroup file system found.
    None,
}

impl CgroupMode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CgroupMode::Unified => "unified (v2)",
            CgroupMode::Hybrid => "hybrid (v1 controllers + v2)",
            CgroupMode::Legacy => "legacy (v1)",
            CgroupMode::None => "none",
        }
    }
}

/// Which limits the host can enforce, and in which key family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CgroupHost {
    pub(crate) mode: CgroupMode,
    pub(crate) memory: bool,
    pub(crate) cpu: bool,
    pub(crate) pids: bool,
}

impl CgroupHost {
    /// Looks at /sys/fs/cgroup: its file system type (cgroup2fs = unified),
    /// then which controllers are there.
    pub(crate) fn detect() -> CgroupHost {
        CgroupHost::detect_at(Path::new("/sys/fs/cgroup"))
    }

    fn detect_at(root: &Path) -> CgroupHost {
        const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
        let fs_type = statfs_type(root);
        if fs_type == Some(CGROUP2_SUPER_MAGIC) {
            let controllers =
                std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
            let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
            return CgroupHost {
                mode: CgroupMode::Unified,
                memory: has("memory"),
                cpu: has("cpu"),
                pids: has("pids"),
            };
        }
        if fs_type.is_none() {
            return CgroupHost {
                mode: CgroupMode::None,
                memory: false,
                cpu: false,
                pids: false,
            };
        }
        let v2_beside = statfs_type(&root.join("unified")) == Some(CGROUP2_SUPER_MAGIC);
        // A controller works in v1 when it is enabled and attached to a
        // v1 hierarchy (a non-zero hierarchy id in /proc/cgroups). The
        // root cgroup has no pids.max, so files there prove little.
        let v1 = v1_controllers(&std::fs::read_to_string("/proc/cgroups").unwrap_or_default());
        let exists = |p: &str| root.join(p).exists();
        CgroupHost {
            mode: if v2_beside {
                CgroupMode::Hybrid
            } else {
                CgroupMode::Legacy
            },
            memory: v1.contains(&"memory".to_string()),
            // CFS bandwidth control (the quota file) is a kernel option.
            cpu: v1.contains(&"cpu".to_string())
                && (exists("cpu/cpu.cfs_quota_us") || exists("cpu,cpuacct/cpu.cfs_quota_us")),
            pids: v1.contains(&"pids".to_string()),
        }
    }
}

/// Controllers enabled and attached to a v1 hierarchy, from /proc/cgroups
/// (`subsys_name hierarchy num_cgroups enabled`).
pub(crate) fn v1_controllers(proc_cgroups: &str) -> Vec<String> {
    proc_cgroups
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [name, hier, _, "1"] if *hier != "0" => Some(name.to_string()),
                _ => None,
            }
        })
        .collect()
}

/// The file system type of `path`, None when it cannot be read.
fn statfs_type(path: &Path) -> Option<i64> {
    crate::os::fs::statfs_type(path).ok()
}

/// The config lines for the requested limits and, plainly, the limits the
/// host cannot enforce.
pub(crate) fn limit_lines(r: &Resources, host: &CgroupHost) -> (Vec<String>, Vec<String>) {
    let v2 = host.mode == CgroupMode::Unified;
    let mut lines = Vec::new();
    let mut missing = Vec::new();
    let why = |controller: &str| {
        match host.mode {
        CgroupMode::Unified => format!("the {controller} controller is not enabled in this cgroup v2 host's /sys/fs/cgroup/cgroup.controllers"),
        CgroupMode::None => "this host has no cgroup file system at /sys/fs/cgroup".to_string(),
        m => format!("this {} cgroup host has no v1 {controller} controller mounted", m.as_str()),
    }
    };
    // One requested limit: its lines in the host's key family, or why not.
    let mut limit = |resource: &str,
                     controller: &str,
                     enforced: bool,
                     v2_keys: Vec<String>,
                     v1_keys: Vec<String>| {
        if !enforced {
            missing.push(format!("resources.{resource} ({})", why(controller)));
        } else {
            lines.extend(if v2 { v2_keys } else { v1_keys });
        }
    };
    if let Some(mem) = r.memory {
        limit(
            "memory",
            "memory",
            host.memory,
            vec![format!("lxc.cgroup2.memory.max = {mem}")],
            vec![format!("lxc.cgroup.memory.limit_in_bytes = {mem}")],
        );
    }
    if let Some(cpus) = r.cpus {
        // The kernel refuses quotas under 1 ms.
        let quota = ((cpus * CPU_PERIOD_US as f64).round() as u64).max(1000);
        limit(
            "cpus",
            "cpu",
            host.cpu,
            vec![format!("lxc.cgroup2.cpu.max = {quota} {CPU_PERIOD_US}")],
            vec![
                format!("lxc.cgroup.cpu.cfs_period_us = {CPU_PERIOD_US}"),
                format!("lxc.cgroup.cpu.cfs_quota_us = {quota}"),
            ],
        );
    }
    if let Some(pids) = r.pids {
        limit(
            "pids",
            "pids",
            host.pids,
            vec![format!("lxc.cgroup2.pids.max = {pids}")],
            vec![format!("lxc.cgroup.pids.max = {pids}")],
        );
    }
    (lines, missing)
}

/// Empty `lxc.monitor.<name>` cgroups a failed start can leave behind
/// (only ours, only empty ones: rmdir refuses anything else).
pub(crate) fn remove_leftovers(name: &str) {
    let Ok(dir) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for hierarchy in dir.filter_map(|e| e.ok()) {
        for leaf in [format!("lxc.monitor.{name}"), format!("lxc.payload.{name}")] {
            let p = hierarchy.path().join(&leaf);
            if p.is_dir() {
                let _ = std::fs::remove_dir(&p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::lxc::LxcError;
    use crate::providers::ProviderError;

    #[test]
    fn limits_follow_the_cgroup_mode() {
        let r = Resources {
            memory: Some(64 << 20),
            cpus: Some(0.5),
            pids: Some(64),
        };
        let all = |mode| CgroupHost {
            mode,
            memory: true,
            cpu: true,
            pids: true,
        };
        let (v2, missing) = limit_lines(&r, &all(CgroupMode::Unified));
        assert!(missing.is_empty());
        assert_eq!(
            v2,
            [
                "lxc.cgroup2.memory.max = 67108864",
                "lxc.cgroup2.cpu.max = 50000 100000",
                "lxc.cgroup2.pids.max = 64"
            ]
        );
        let (v1, _) = limit_lines(&r, &all(CgroupMode::Hybrid));
        assert_eq!(
            v1,
            [
                "lxc.cgroup.memory.limit_in_bytes = 67108864",
                "lxc.cgroup.cpu.cfs_period_us = 100000",
                "lxc.cgroup.cpu.cfs_quota_us = 50000",
                "lxc.cgroup.pids.max = 64"
            ]
        );
        let partial = CgroupHost {
            mode: CgroupMode::Hybrid,
            memory: true,
            cpu: false,
            pids: false,
        };
        let (lines, missing) = limit_lines(&r, &partial);
        assert_eq!(lines, ["lxc.cgroup.memory.limit_in_bytes = 67108864"]);
        assert_eq!(missing.len(), 2);
        assert!(
            missing[0].starts_with("resources.cpus (this hybrid"),
            "{missing:?}"
        );
        assert!(missing[1].starts_with("resources.pids"), "{missing:?}");
        let e = LxcError::Limits {
            missing,
            by_quota: false,
        };
        assert!(
            matches!(ProviderError::from(e), ProviderError::Invalid(m) if m.contains("lxc.require_limits is true"))
        );
        // Tiny cpu shares still get the kernel's minimum quota.
        let (lines, _) = limit_lines(
            &Resources {
                cpus: Some(0.001),
                ..Default::default()
            },
            &all(CgroupMode::Unified),
        );
        assert_eq!(lines, ["lxc.cgroup2.cpu.max = 1000 100000"]);
        assert_eq!(
            limit_lines(&Resources::default(), &all(CgroupMode::None))
                .0
                .len(),
            0
        );
    }

    #[test]
    fn reads_proc_cgroups() {
        let text = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t1\t6\t1\nmemory\t4\t51\t1\nnet_cls\t0\t6\t1\npids\t8\t6\t0\n";
        assert_eq!(v1_controllers(text), ["cpu", "memory"]);
        assert!(v1_controllers("").is_empty());
    }

    #[test]
    fn detects_this_hosts_cgroups() {
        let h = CgroupHost::detect();
        let fs = statfs_type(Path::new("/sys/fs/cgroup"));
        assert_eq!(
            h.mode == CgroupMode::Unified,
            fs == Some(0x6367_7270),
            "{h:?}"
        );
    }
}
