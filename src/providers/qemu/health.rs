//! Whether QEMU can run VMs here: the binary and qemu-img on PATH, the
//! binary's `-version` (cached), the socket path length the cache_dir
//! allows, and whether KVM is usable (else VMs run under TCG).

use super::launch::run_logged;
use super::record::{QMP_SOCK, SOCKET_PATH_MAX};
use super::{QemuError, QemuProvider};
use crate::providers::{probe, Health};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How long the outcome of `qemu -version` is trusted.
const HEALTH_TTL: Duration = Duration::from_secs(60);

/// When a binary's `-version` was run, which binary, and what it said.
pub(crate) type VersionProbe = (Instant, PathBuf, Result<String, String>);

impl QemuProvider {
    /// [`Provider::health`](crate::providers::Provider::health): down with
    /// what to install or change, else the version and whether KVM works.
    pub(crate) fn health_now(&self) -> Health {
        let Some(binary) = probe::which(&self.cfg.binary) else {
            return Health::down(format!(
                "{} not found on PATH; install qemu-system-x86 or set qemu.binary",
                self.cfg.binary
            ));
        };
        let version = match self.version(&binary) {
            Ok(v) => v,
            Err(e) => return Health::down(format!("{e}; reinstall qemu-system-x86")),
        };
        let Some(qemu_img) = probe::which("qemu-img") else {
            return Health::down("qemu-img not found on PATH; install qemu-utils");
        };
        // The longest socket path a session would have.
        let sock = self.root.join("00000000").join(QMP_SOCK);
        if sock.as_os_str().len() > SOCKET_PATH_MAX {
            return Health::down(QemuError::PathTooLong { path: sock }.to_string());
        }
        let kvm = kvm_usable();
        Health::ok(
            format!(
                "{version}; {}",
                if kvm {
                    "KVM usable"
                } else {
                    "KVM not usable, VMs run under TCG"
                }
            ),
            json!({
                "binary": binary,
                "version": version,
                "qemu_img": qemu_img,
                "kvm": kvm,
                "machine": self.cfg.machine,
                "dir": self.root,
            }),
        )
    }

    /// `binary -version`, cached for HEALTH_TTL per binary path.
    fn version(&self, binary: &Path) -> Result<String, String> {
        let mut cache = self.version_probe.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, path, outcome)) = cache.as_ref() {
            if path == binary && at.elapsed() < HEALTH_TTL {
                return outcome.clone();
            }
        }
        let log = std::env::temp_dir().join(format!(
            "vendetta-qemu-version-{}-{}",
            std::process::id(),
            crate::os::random::random_hex(4)
        ));
        let outcome = match run_logged(
            Command::new(binary).arg("-version"),
            &log,
            &format!("{} -version", binary.display()),
            Duration::from_secs(10),
        ) {
            Ok((true, out)) => Ok(out.lines().next().unwrap_or("").to_string()),
            Ok((false, out)) => Err(format!("{} -version failed: {out}", binary.display())),
            Err(e) => Err(e.to_string()),
        };
        let _ = std::fs::remove_file(&log);
        *cache = Some((Instant::now(), binary.to_path_buf(), outcome.clone()));
        outcome
    }
}

/// Whether /dev/kvm can be opened for use.
fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}
