//! Whether this host can run our containers: the lxc tools on PATH, root,
//! the template (and busybox for it), the bridge for veth networking, the
//! essentials `lxc-checkconfig` reports (cached for CHECKCONFIG_TTL), and
//! which limits the cgroup layout can enforce.

use super::argv::os;
use super::cgroup::CgroupHost;
use super::{LxcProvider, TEMPLATE_DIR, TOOLS};
use crate::config::LxcNetwork;
use crate::providers::{probe, Health};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long `lxc-checkconfig` findings are reused by the health probe.
const CHECKCONFIG_TTL: Duration = Duration::from_secs(600);

/// Host facts that take a tool run to learn, cached.
#[derive(Debug, Clone)]
pub(crate) struct HostProbe {
    version: String,
    problems: Vec<String>,
}

/// The essentials of `lxc-checkconfig` that are not "enabled".
pub(crate) fn checkconfig_problems(text: &str, veth: bool) -> Vec<String> {
    let mut essentials = vec![
        "Namespaces",
        "Utsname namespace",
        "Ipc namespace",
        "Pid namespace",
        "Network namespace",
        "Cgroups",
    ];
    if veth {
        essentials.extend(["Veth pair device", "Bridges"]);
    }
    let values: BTreeMap<String, String> = text
        .lines()
        .map(strip_ansi)
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    essentials
        .iter()
        .filter_map(|k| match values.get(*k) {
            Some(v) if v == "enabled" => None,
            Some(v) => Some(format!("{k}: {v}")),
            None => Some(format!("{k}: not reported")),
        })
        .collect()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl LxcProvider {
    /// [`Provider::health`](crate::providers::Provider::health): down with
    /// what to install or change, else the version, layout and limits.
    pub(crate) fn health_now(&self) -> Health {
        let mut tools = serde_json::Map::new();
        let mut missing = Vec::new();
        for t in TOOLS.iter().chain(["lxc-checkconfig"].iter()) {
            match probe::which(t) {
                Some(p) => {
                    tools.insert(t.to_string(), json!(p.display().to_string()));
                }
                None => missing.push(*t),
            }
        }
        if !missing.is_empty() {
            return Health::down(format!(
                "lxc tools not found on PATH: {}; install the lxc package",
                missing.join(", ")
            ));
        }
        if crate::os::process::euid() != 0 {
            return Health::down(
                "the lxc provider runs privileged containers and needs root; run the agent as root or disable lxc in providers",
            );
        }
        let template = self.cfg.template.split_whitespace().next().unwrap_or("");
        if !Path::new(TEMPLATE_DIR)
            .join(format!("lxc-{template}"))
            .exists()
        {
            return Health::down(format!(
                "lxc.template {template:?} is not in {TEMPLATE_DIR}; install lxc-templates or change lxc.template"
            ));
        }
        if template == "busybox" && probe::which("busybox").is_none() {
            return Health::down(
                "the busybox template needs a busybox binary on PATH; install busybox-static",
            );
        }
        if self.cfg.network == LxcNetwork::Veth {
            let bridge = Path::new("/sys/class/net")
                .join(&self.cfg.bridge)
                .join("bridge");
            if !bridge.exists() {
                return Health::down(format!(
                    "lxc.network is veth but bridge {} does not exist; start it (/usr/libexec/lxc/lxc-net start) or set lxc.network: empty",
                    self.cfg.bridge
                ));
            }
        }
        let host = self.probe_host();
        if !host.problems.is_empty() {
            return Health::down(format!(
                "lxc-checkconfig reports missing essentials: {}",
                host.problems.join(", ")
            ));
        }
        let cg = CgroupHost::detect();
        Health::ok(
            format!(
                "lxc {} ready, containers under {}",
                host.version,
                self.cfg.lxcpath.display()
            ),
            json!({
                "version": host.version,
                "lxcpath": self.cfg.lxcpath.display().to_string(),
                "template": self.cfg.template,
                "network": match self.cfg.network { LxcNetwork::Empty => "empty", LxcNetwork::Veth => "veth" },
                "bridge": self.cfg.bridge,
                "cgroup": cg.mode.as_str(),
                "limits": {"memory": cg.memory, "cpus": cg.cpu, "pids": cg.pids},
                "require_limits": self.cfg.require_limits,
                "tools": tools,
            }),
        )
    }

    /// The version and `lxc-checkconfig` findings, run at most once per
    /// CHECKCONFIG_TTL: the monitor asks often, the answers rarely change.
    fn probe_host(&self) -> HostProbe {
        let mut cache = self.host_probe.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, probe)) = cache.as_ref() {
            if at.elapsed() < CHECKCONFIG_TTL {
                return probe.clone();
            }
        }
        let timeout = self.cfg.tool_timeout;
        let version = self
            .tool("lxc-info", vec![os("--version")], timeout)
            .map(|o| o.stdout_text().trim().to_string())
            .unwrap_or_default();
        let problems = match self.tool("lxc-checkconfig", Vec::new(), timeout) {
            Ok(o) => checkconfig_problems(&o.stdout_text(), self.cfg.network == LxcNetwork::Veth),
            Err(e) => vec![format!("lxc-checkconfig: {e}")],
        };
        let probe = HostProbe { version, problems };
        *cache = Some((Instant::now(), probe.clone()));
        probe
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkconfig_essentials() {
        let ok = "LXC version 5.0.2\n--- Namespaces ---\nNamespaces: enabled\nUtsname namespace: enabled\nIpc namespace: enabled\nPid namespace: enabled\nUser namespace: enabled\nNetwork namespace: enabled\n--- Control groups ---\nCgroups: enabled\nVeth pair device: enabled\nBridges: enabled\n";
        assert!(checkconfig_problems(ok, true).is_empty());
        let bad = ok.replace(
            "Pid namespace: enabled",
            "Pid namespace: \u{1b}[1;31mrequired\u{1b}[0;39m",
        );
        assert_eq!(
            checkconfig_problems(&bad, false),
            ["Pid namespace: required"]
        );
        let no_veth = ok.replace("Veth pair device: enabled", "Veth pair device: missing");
        assert!(checkconfig_problems(&no_veth, false).is_empty());
        assert_eq!(
            checkconfig_problems(&no_veth, true),
            ["Veth pair device: missing"]
        );
    }
}
