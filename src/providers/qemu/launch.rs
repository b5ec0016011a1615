//! Launching QEMU: the argv (every path escaped for QEMU's option syntax),
//! the launch settings a create request maps to, host ports for published
//! guest ports, and the launch itself, daemonized and paused, with its
//! process recorded only once its pidfile, start time and cmdline agree.

use super::identity::{adopt_from_pidfile, kill, proc_stat, ProcId};
use super::record::{
    clean_stale, VmRecord, DISK, LAUNCH_LOG, PID_FILE, QGA_SOCK, QMP_SOCK, QMP_USER_SOCK,
    SERIAL_LOG,
};
use super::{QemuError, QemuProvider};
use crate::os::process;
use crate::providers::SessionSpec;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A guest port published on a host port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Publish {
    pub(crate) port: u16,
    pub(crate) udp: bool,
}

impl Publish {
    pub(crate) fn key(&self) -> String {
        format!("{}/{}", self.port, if self.udp { "udp" } else { "tcp" })
    }
}

/// What a VM is launched with; kept so `start` can relaunch it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct LaunchSpec {
    pub(crate) memory_mib: u64,
    pub(crate) cpus: u32,
    pub(crate) machine: String,
    pub(crate) workspace: Option<PathBuf>,
    pub(crate) disk: bool,
    pub(crate) publish: Vec<Publish>,
}

/// A path inside a QEMU option value: commas are doubled.
pub(crate) fn opt_path(p: &Path) -> Result<String, QemuError> {
    p.to_str().map(|s| s.replace(',', ",,")).ok_or_else(|| {
        QemuError::Invalid(format!(
            "{} is not valid UTF-8 and cannot be passed to QEMU",
            p.display()
        ))
    })
}

/// Runs a command to completion within `timeout`; output goes to `log`
/// (a file, so a daemon child holding it open cannot block us).
pub(crate) fn run_logged(
    cmd: &mut Command,
    log: &Path,
    step: &str,
    timeout: Duration,
) -> Result<(bool, String), QemuError> {
    let state_err = |source| QemuError::State {
        step: "create",
        path: log.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(log).map_err(state_err)?;
    let err = file.try_clone().map_err(state_err)?;
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .spawn()
        .map_err(|source| QemuError::Tool {
            tool: program,
            source,
        })?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(QemuError::ToolTimeout {
                    step: step.to_string(),
                    after: timeout,
                });
            }
            Err(e) => {
                return Err(QemuError::ToolFailed {
                    step: step.to_string(),
                    detail: format!("waiting for it: {e}"),
                })
            }
        }
    };
    let text = std::fs::read_to_string(log).unwrap_or_default();
    Ok((status.success(), text.trim().to_string()))
}

/// A free loopback port for `udp` or TCP (bound, then released).
fn free_port(udp: bool) -> io::Result<u16> {
    if udp {
        Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    } else {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    }
}

impl QemuProvider {
    pub(crate) fn has_buses(spec: &LaunchSpec) -> bool {
        // `-machine none` has no buses: virtio devices cannot be attached.
        spec.machine != "none"
    }

    /// The arguments after the program name.
    pub(crate) fn argv(&self, dir: &Path, rec: &VmRecord) -> Result<Vec<String>, QemuError> {
        let l = &rec.launch;
        let mut a: Vec<String> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
        push(&["-name", &rec.id, "-machine", &l.machine]);
        let extra_accel = self
            .cfg
            .extra_args
            .iter()
            .any(|x| x == "-accel" || x.contains("accel="));
        if !extra_accel {
            // KVM when /dev/kvm works, else TCG.
            push(&["-accel", "kvm", "-accel", "tcg"]);
        }
        push(&["-m", &format!("{}M", l.memory_mib)]);
        if Self::has_buses(l) {
            push(&["-smp", &l.cpus.to_string()]);
        }
        push(&["-nodefaults", "-display", "none"]);
        let qmp = opt_path(&dir.join(QMP_SOCK))?;
        let qmp_user = opt_path(&dir.join(QMP_USER_SOCK))?;
        let qga = opt_path(&dir.join(QGA_SOCK))?;
        let serial = opt_path(&dir.join(SERIAL_LOG))?;
        push(&[
            "-chardev",
            &format!("socket,id=qmp0,path={qmp},server=on,wait=off"),
            "-mon",
            "chardev=qmp0,mode=control",
            "-chardev",
            &format!("socket,id=qmp1,path={qmp_user},server=on,wait=off"),
            "-mon",
            "chardev=qmp1,mode=control",
            "-chardev",
            &format!("socket,id=qga0,path={qga},server=on,wait=off"),
            "-chardev",
            &format!("file,id=serial0,path={serial}"),
            "-serial",
            "chardev:serial0",
        ]);
        if Self::has_buses(l) {
            push(&[
                "-device",
                "virtio-serial,id=vser0",
                "-device",
                "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0",
            ]);
            let mut net = "user,id=net0".to_string();
            for p in &l.publish {
                if let Some(host) = rec.ports.get(&p.key()) {
                    let proto = if p.udp { "udp" } else { "tcp" };
                    net.push_str(&format!(",hostfwd={proto}:127.0.0.1:{host}-:{}", p.port));
                }
            }
            // romfile= : no iPXE option ROM, so the firmware does not try
            // to boot from the network.
            push(&[
                "-netdev",
                &net,
                "-device",
                "virtio-net-pci,netdev=net0,romfile=",
            ]);
            if let Some(ws) = &l.workspace {
                let ws = opt_path(ws)?;
                push(&[
                    "-virtfs",
                    &format!(
                        "local,path={ws},mount_tag=workspace,security_model=none,id=workspace"
                    ),
                ]);
            }
            if l.disk {
                let disk = opt_path(&dir.join(DISK))?;
                push(&["-drive", &format!("file={disk},format=qcow2,if=virtio")]);
            }
        }
        let pidfile = dir.join(PID_FILE);
        push(&[
            "-pidfile",
            &pidfile.to_string_lossy(),
            "-daemonize",
            // Always launch paused: create stays so, start continues.
            "-S",
        ]);
        a.extend(self.cfg.extra_args.iter().cloned());
        Ok(a)
    }

    /// Gives each published port a host port: the recorded one first
    /// (unless `fresh`), else a free one.
    fn assign_ports(&self, rec: &mut VmRecord, fresh: bool) -> Result<(), QemuError> {
        if !Self::has_buses(&rec.launch) {
            return Ok(());
        }
        for p in rec.launch.publish.clone() {
            let key = p.key();
            if fresh || !rec.ports.contains_key(&key) {
                let host = free_port(p.udp).map_err(|e| QemuError::ToolFailed {
                    step: format!("finding a free host port for {key}"),
                    detail: e.to_string(),
                })?;
                rec.ports.insert(key, host);
            }
        }
        Ok(())
    }

    /// Launches QEMU (paused) and records its process. Retries with new
    /// host ports when a forwarded port was taken in the meantime.
    pub(crate) fn launch(
        &self,
        dir: &Path,
        rec: &mut VmRecord,
        timeout: Duration,
    ) -> Result<(), QemuError> {
        let deadline = Instant::now() + timeout;
        let mut attempt = 0;
        let args = loop {
            clean_stale(dir);
            self.assign_ports(rec, attempt > 0)?;
            let args = self.argv(dir, rec)?;
            let left = deadline.saturating_duration_since(Instant::now());
            let step = format!("launching {} for session {}", self.cfg.binary, rec.id);
            let (ok, log) = run_logged(
                Command::new(&self.cfg.binary).args(&args),
                &dir.join(LAUNCH_LOG),
                &step,
                left,
            )
            .inspect_err(|_| self.kill_strays(dir))?;
            if ok {
                break args;
            }
            clean_stale(dir);
            attempt += 1;
            let port_taken = log.contains("hostfwd") || log.contains("host forwarding");
            if port_taken && attempt < 3 && !rec.launch.publish.is_empty() {
                log::info!(session_id = rec.id.as_str(); "a forwarded host port was taken; retrying with new ones: {log}");
                continue;
            }
            return Err(QemuError::ToolFailed {
                step,
                detail: if log.is_empty() {
                    "QEMU exited non-zero without a message".into()
                } else {
                    log
                },
            });
        };
        let pidfile = dir.join(PID_FILE);
        let pid: u32 = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| QemuError::ToolFailed {
                step: format!("launching session {}", rec.id),
                detail: format!(
                    "QEMU reported success but {} holds no pid",
                    pidfile.display()
                ),
            })?;
        let identity = proc_stat(pid).zip(process::cmdline(pid));
        let Some(((state, start_time), cmdline)) = identity else {
            return Err(QemuError::ToolFailed {
                step: format!("launching session {}", rec.id),
                detail: format!(
                    "QEMU pid {pid} exited right after starting; see {}",
                    dir.join(LAUNCH_LOG).display()
                ),
            });
        };
        if state == 'Z' || cmdline.get(1..) != Some(&args[..]) {
            return Err(QemuError::ToolFailed {
                step: format!("launching session {}", rec.id),
                detail: format!(
                    "pid {pid} from {} is not the QEMU we started",
                    pidfile.display()
                ),
            });
        }
        rec.process = Some(ProcId {
            pid,
            start_time,
            cmdline,
        });
        rec.exit_code = None;
        self.write_record(dir, rec)
    }

    /// After a failed or timed-out launch: ends a QEMU of this directory
    /// that got as far as writing its pidfile.
    pub(crate) fn kill_strays(&self, dir: &Path) {
        if let Some(p) = adopt_from_pidfile(dir) {
            log::warn!(
                "killing QEMU pid {} left by a failed launch in {}",
                p.pid,
                dir.display()
            );
            kill(&p);
        }
        clean_stale(dir);
    }

    /// The base image: absolute, a file, under qemu.image_roots when set.
    pub(crate) fn base_image(&self, image: &str) -> Result<PathBuf, QemuError> {
        let invalid = |m: String| QemuError::Invalid(format!("params.image: {m}"));
        let path = Path::new(image);
        if !path.is_absolute() {
            return Err(invalid(format!(
                "{image:?} is not an absolute path; give the path of a qcow2 base image on this host"
            )));
        }
        let real = std::fs::canonicalize(path)
            .map_err(|e| invalid(format!("{image} cannot be used: {e}")))?;
        if !real.is_file() {
            return Err(invalid(format!("{image} is not a file")));
        }
        if !self.cfg.image_roots.is_empty()
            && !self
                .cfg
                .image_roots
                .iter()
                .any(|r| std::fs::canonicalize(r).is_ok_and(|root| real.starts_with(root)))
        {
            return Err(invalid(format!(
                "{image} is not under qemu.image_roots ({})",
                self.cfg
                    .image_roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(real)
    }

    /// Launch settings and warnings from a create request.
    pub(crate) fn launch_spec(
        &self,
        spec: &SessionSpec,
    ) -> Result<(LaunchSpec, Vec<String>), QemuError> {
        let mut warnings = Vec::new();
        let mib = |b: u64| b.div_ceil(1 << 20);
        let memory_mib = match spec.resources.memory {
            Some(0) => {
                return Err(QemuError::Invalid(
                    "params.resources.memory: a VM needs some memory; give e.g. 512m".into(),
                ))
            }
            Some(b) => mib(b),
            None => mib(self.cfg.memory).max(1),
        };
        let cpus = match spec.resources.cpus {
            None => self.cfg.cpus,
            Some(c) if !(c > 0.0 && c <= 1024.0) => {
                return Err(QemuError::Invalid(format!(
                    "params.resources.cpus: {c} is not a vCPU count between 0 and 1024"
                )))
            }
            Some(c) => {
                let whole = c.ceil() as u32;
                if f64::from(whole) != c {
                    warnings.push(format!(
                        "resources.cpus {c} rounded up to {whole} vCPUs: QEMU gives whole vCPUs"
                    ));
                }
                whole
            }
        };
        if spec.resources.pids.is_some() {
            warnings.push(
                "resources.pids is not enforced for VMs: the guest kernel owns its processes"
                    .into(),
            );
        }
        if !spec.env.is_empty() {
            warnings.push("env is not applied to a VM; pass env with each exec".into());
        }
        if spec.command.is_some() {
            warnings.push("command is ignored: a VM boots its image".into());
        }
        let launch = LaunchSpec {
            memory_mib,
            cpus,
            machine: self.cfg.machine.clone(),
            workspace: spec.workspace.clone(),
            disk: spec.image.as_deref().is_some_and(|i| !i.is_empty()),
            publish: spec
                .ports
                .iter()
                .map(|p| Publish {
                    port: p.port,
                    udp: p.udp,
                })
                .collect(),
        };
        if !Self::has_buses(&launch) {
            let mut missing = vec!["the guest agent (exec)"];
            if !launch.publish.is_empty() {
                missing.push("ports");
            }
            if launch.workspace.is_some() {
                missing.push("the workspace share");
            }
            if launch.disk {
                missing.push("the disk");
            }
            if cpus > 1 {
                missing.push("more than one vCPU");
            }
            warnings.push(format!(
                "machine none has no buses, so {} are not attached",
                missing.join(", ")
            ));
        }
        Ok((launch, warnings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::protocol::SessionId;
    use crate::providers::SessionStatus;
    use std::collections::BTreeMap;

    fn provider(extra: &[&str], machine: &str) -> QemuProvider {
        let mut c = Config {
            cache_dir: Some(PathBuf::from("/tmp/vendetta-qemu-unit")),
            ..Default::default()
        };
        c.qemu.extra_args = extra.iter().map(|s| s.to_string()).collect();
        c.qemu.machine = machine.into();
        QemuProvider::new(&c, "node-test")
    }

    fn record(publish: Vec<Publish>, workspace: Option<&str>) -> VmRecord {
        VmRecord {
            id: "web-1".into(),
            node_id: "node-test".into(),
            image: String::new(),
            created: String::new(),
            labels: BTreeMap::new(),
            ports: BTreeMap::new(),
            warnings: vec![],
            status: SessionStatus::Created,
            exit_code: None,
            launch: LaunchSpec {
                memory_mib: 256,
                cpus: 2,
                machine: "q35".into(),
                workspace: workspace.map(PathBuf::from),
                disk: false,
                publish,
            },
            process: None,
        }
    }

    #[test]
    fn argv_has_the_agreed_flags_and_escapes_commas() {
        let p = provider(&["-cpu", "max"], "q35");
        let mut rec = record(
            vec![
                Publish {
                    port: 80,
                    udp: false,
                },
                Publish {
                    port: 53,
                    udp: true,
                },
            ],
            Some("/srv/a,b"),
        );
        rec.ports.insert("80/tcp".into(), 18080);
        rec.ports.insert("53/udp".into(), 15353);
        let a = p.argv(Path::new("/c/qemu/0a1b2c3d"), &rec).unwrap();
        let s = a.join(" ");
        for want in [
            "-name web-1 -machine q35 -accel kvm -accel tcg -m 256M -smp 2 -nodefaults -display none",
            "socket,id=qmp0,path=/c/qemu/0a1b2c3d/qmp.sock,server=on,wait=off -mon chardev=qmp0,mode=control",
            "socket,id=qmp1,path=/c/qemu/0a1b2c3d/qmp-user.sock,server=on,wait=off -mon chardev=qmp1,mode=control",
            "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0",
            "user,id=net0,hostfwd=tcp:127.0.0.1:18080-:80,hostfwd=udp:127.0.0.1:15353-:53",
            "local,path=/srv/a,,b,mount_tag=workspace,",
            "-pidfile /c/qemu/0a1b2c3d/qemu.pid -daemonize -S -cpu max",
        ] {
            assert!(s.contains(want), "missing {want:?} in {s}");
        }
        // Extra args naming an accelerator replace ours.
        let p = provider(&["-accel", "tcg"], "none");
        let mut rec = record(
            vec![Publish {
                port: 80,
                udp: false,
            }],
            Some("/srv"),
        );
        rec.launch.machine = "none".into();
        let s = p.argv(Path::new("/c/d"), &rec).unwrap().join(" ");
        assert!(!s.contains("-accel kvm"), "{s}");
        assert!(!s.contains("virtio") && !s.contains("-smp"), "{s}");
    }

    #[test]
    fn launch_spec_maps_resources_and_warns() {
        let p = provider(&[], "none");
        let mut spec = SessionSpec {
            id: SessionId::parse("a").unwrap(),
            node_id: "n".into(),
            image: None,
            workspace: None,
            env: [("A".to_string(), "b".to_string())].into(),
            ports: vec![],
            resources: Default::default(),
            labels: Default::default(),
            command: Some(vec!["x".into()]),
            timeout: Duration::from_secs(1),
            limits_must_hold: false,
        };
        spec.resources.memory = Some((300 << 20) + 1);
        spec.resources.cpus = Some(1.5);
        spec.resources.pids = Some(10);
        let (l, w) = p.launch_spec(&spec).unwrap();
        assert_eq!((l.memory_mib, l.cpus), (301, 2));
        let w = w.join("\n");
        for want in ["rounded up to 2", "pids", "env", "command", "machine none"] {
            assert!(w.contains(want), "{want} in {w}");
        }
        for (cpus, shown) in [(0.0, "0"), (f64::NAN, "NaN"), (2000.0, "2000")] {
            spec.resources.cpus = Some(cpus);
            match p.launch_spec(&spec) {
                Err(QemuError::Invalid(m)) => assert_eq!(
                    m,
                    format!(
                        "params.resources.cpus: {shown} is not a vCPU count between 0 and 1024"
                    )
                ),
                other => panic!("{cpus}: expected Invalid, got {other:?}"),
            }
        }
    }
}
