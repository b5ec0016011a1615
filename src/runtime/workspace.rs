//! Sealed workspaces. A session's `workspace_path` is opened beneath one of
//! `workspace_roots` without following any path out of it (openat2
//! RESOLVE_BENEATH), and the directory so opened is bind-mounted onto
//! `cache_dir/sealed/<session>`: that path, which only the agent controls,
//! is what the runtime (Docker, LXC, QEMU) mounts. Swapping a part of the
//! workspace path for a symlink, before or after create or start, changes
//! nothing: the mount holds the directory, not its name.
//!
//! A workspace may not contain, or lie inside, a live session's (nor be
//! the same): one session could otherwise reach into another's files.
//! A tenant's workspaces lie in its own directory of a root,
//! `ROOT/TENANT/`, opened without any symlink and then used as the root:
//! no symlink a tenant's session makes can lead into another tenant's.
//! Records (`sealed/<session>.json`) let the seals be made again after a
//! reboot, when the mounts are gone.

use super::dispatch::Failure;
use crate::os;
use crate::protocol::tenant::Tenant;
use crate::protocol::{Code, SessionId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The roots and the seals of live sessions.
pub(crate) struct Workspaces {
    roots: Vec<PathBuf>,
    dir: PathBuf,
    live: Mutex<BTreeMap<String, Seal>>,
}

struct Seal {
    /// The directory, then each parent up to its root: (device, inode).
    chain: Vec<(u64, u64)>,
}

/// What `sealed/<session>.json` keeps.
#[derive(Serialize, Deserialize)]
struct Record {
    path: PathBuf,
    /// The tenant whose directory confines it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tenant: Option<Tenant>,
}

impl Workspaces {
    /// The roots (the default, `cache_dir/workspaces`, when none are
    /// configured) and the seals already made, made again where a reboot
    /// took the mount.
    pub(crate) fn open(cache_dir: &Path, configured: &[PathBuf]) -> Workspaces {
        let roots = if configured.is_empty() {
            let default = cache_dir.join("workspaces");
            if let Err(e) = std::fs::create_dir_all(&default) {
                log::warn!(
                    "cannot create the workspace root {}: {e}",
                    default.display()
                );
            }
            vec![default]
        } else {
            configured.to_vec()
        };
        if roots.iter().any(|r| r == Path::new("/")) {
            log::warn!("workspace_roots holds /: a caller that may create sessions can mount any directory of this host into one; name the directories workspaces live in");
        }
        let w = Workspaces {
            roots,
            dir: cache_dir.join("sealed"),
            live: Mutex::new(BTreeMap::new()),
        };
        w.reopen();
        w
    }

    fn reopen(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Some(session) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .map(str::to_string)
            else {
                continue;
            };
            let record: Option<Record> = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let Some(record) = record else {
                log::warn!(
                    "workspace record {} is damaged; ignoring it",
                    path.display()
                );
                continue;
            };
            let target = self.dir.join(&session);
            let opened = self.open_beneath_root(&record.path, record.tenant.as_ref());
            match opened {
                Ok(dir) => {
                    if !os::mount::is_mount_point(&target) {
                        if let Err(e) = os::mount::bind(&dir, &target) {
                            log::warn!(session_id = session.as_str(); "cannot seal the workspace {} again: {e}; the session sees an empty /workspace until it is recreated", record.path.display());
                        }
                    }
                    if let Ok(chain) = self.chain(dir) {
                        self.lock().insert(session, Seal { chain });
                    }
                }
                Err(f) => {
                    log::warn!(session_id = session.as_str(); "cannot seal the workspace again: {}", f.message)
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Seal>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Seals `requested` for `session` and returns the path to give the
    /// runtime; with `tenant`, only inside that tenant's directories.
    pub(crate) fn seal(
        &self,
        session: &SessionId,
        requested: &Path,
        tenant: Option<&Tenant>,
    ) -> Result<PathBuf, Failure> {
        let dir = self.open_beneath_root(requested, tenant)?;
        let chain = self
            .chain(dir.try_clone().map_err(|e| self.unusable(requested, e))?)
            .map_err(|e| self.unusable(requested, e))?;
        let mut live = self.lock();
        // The other session is not named: it may be another tenant's.
        if live
            .values()
            .any(|s| chain.contains(&s.chain[0]) || s.chain.contains(&chain[0]))
        {
            return Err(Failure::new(
                Code::Rejected,
                format!(
                    "params.workspace_path: {} is, holds, or lies inside the workspace of a live session; give each session a directory of its own",
                    requested.display()
                ),
            ));
        }
        let target = self.dir.join(session.as_str());
        let sealing = std::fs::create_dir_all(&target)
            .and_then(|()| os::fs::tighten_dir(&self.dir).map(drop))
            .and_then(|()| os::mount::unmount(&target))
            .and_then(|()| os::mount::bind(&dir, &target));
        if let Err(e) = sealing {
            return Err(Failure::new(
                Code::Failed,
                format!(
                    "cannot seal the workspace {} at {}: {e}; the agent must run as root to mount workspaces",
                    requested.display(),
                    target.display()
                ),
            ));
        }
        let record = serde_json::to_vec(&Record {
            path: requested.to_path_buf(),
            tenant: tenant.cloned(),
        })
        .unwrap_or_default();
        let path = self.dir.join(format!("{session}.json"));
        if let Err(e) = os::fs::write_atomic(&path, &record, 0o600) {
            log::warn!(session_id = session.as_str(); "cannot record the sealed workspace ({e}); it is not sealed again after a reboot");
        }
        live.insert(session.to_string(), Seal { chain });
        Ok(target)
    }

    /// Takes a session's seal away (the runtime no longer uses it).
    /// Idempotent.
    pub(crate) fn release(&self, session: &str) {
        self.lock().remove(session);
        let target = self.dir.join(session);
        let record = self.dir.join(format!("{session}.json"));
        if std::fs::symlink_metadata(&target).is_err() {
            // Never sealed (a session without a workspace, or none at all).
            let _ = std::fs::remove_file(record);
            return;
        }
        if let Err(e) = os::mount::unmount(&target) {
            log::warn!(session_id = session; "cannot unmount the sealed workspace {}: {e}", target.display());
            return;
        }
        let _ = std::fs::remove_dir(&target);
        let _ = std::fs::remove_file(record);
    }

    /// Opens `requested` beneath the root it names, refusing anything
    /// outside the roots (or, for `tenant`, outside its directory of a
    /// root, made when missing).
    fn open_beneath_root(
        &self,
        requested: &Path,
        tenant: Option<&Tenant>,
    ) -> Result<OwnedFd, Failure> {
        let invalid =
            |m: String| Failure::new(Code::Invalid, format!("params.workspace_path: {m}"));
        if !os::mount::is_plain_absolute(requested) {
            return Err(invalid(format!(
                "{} must be an absolute path without . or .. parts",
                requested.display()
            )));
        }
        let bases: Vec<PathBuf> = match tenant {
            Some(t) => self.roots.iter().map(|r| r.join(t.as_str())).collect(),
            None => self.roots.clone(),
        };
        let Some((base, rel)) = bases
            .iter()
            .find_map(|b| requested.strip_prefix(b).ok().map(|rel| (b, rel)))
        else {
            let listed = bases
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Failure::new(
                Code::Rejected,
                match tenant {
                    Some(t) => format!(
                        "params.workspace_path: {} is not in tenant {t}'s workspace directories ({listed})",
                        requested.display()
                    ),
                    None => format!(
                        "params.workspace_path: {} is not under workspace_roots ({listed})",
                        requested.display()
                    ),
                },
            ));
        };
        let root = base.parent().filter(|_| tenant.is_some()).unwrap_or(base);
        let root_fd = os::mount::open_dir(root).map_err(|e| {
            Failure::new(
                Code::Failed,
                format!("workspace root {} cannot be opened: {e}", root.display()),
            )
        })?;
        // A tenant's directory: made if missing, and never a symlink
        // (which could point at another tenant's).
        let root_fd = match tenant {
            None => root_fd,
            Some(t) => {
                let _ = std::fs::create_dir(base);
                os::mount::open_beneath_no_symlinks(&root_fd, Path::new(t.as_str())).map_err(
                    |e| {
                        Failure::new(
                            Code::Rejected,
                            format!(
                                "tenant {t}'s workspace directory {} cannot be used ({e}); it must be a directory, not a symlink",
                                base.display()
                            ),
                        )
                    },
                )?
            }
        };
        let root = base;
        os::mount::open_beneath(&root_fd, rel).map_err(|e| match e.raw_os_error() {
            Some(libc::EXDEV) | Some(libc::ELOOP) => Failure::new(
                Code::Rejected,
                format!(
                    "params.workspace_path: {} leads out of {} (through a symlink)",
                    requested.display(),
                    root.display()
                ),
            ),
            _ => invalid(format!("{} cannot be used: {e}", requested.display())),
        })
    }

    /// The directory and its parents up to the filesystem's top.
    fn chain(&self, dir: OwnedFd) -> std::io::Result<Vec<(u64, u64)>> {
        let mut chain = vec![os::mount::identity(&dir)?];
        let mut at = dir;
        // Deep enough for any real tree; a loop cannot happen, but bound it.
        for _ in 0..256 {
            let up = os::mount::parent(&at)?;
            let id = os::mount::identity(&up)?;
            if chain.last() == Some(&id) {
                break;
            }
            chain.push(id);
            at = up;
        }
        Ok(chain)
    }

    fn unusable(&self, requested: &Path, e: std::io::Error) -> Failure {
        Failure::new(
            Code::Invalid,
            format!(
                "params.workspace_path: {} cannot be used: {e}",
                requested.display()
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_refuse_escapes_and_nesting_and_survive_a_swap() {
        let d = std::env::temp_dir().join(format!("vws-{}", crate::os::random::random_hex(4)));
        let root = d.join("root");
        std::fs::create_dir_all(root.join("tenant/b")).unwrap();
        std::fs::create_dir_all(root.join("other")).unwrap();
        std::fs::write(root.join("tenant/b/file"), "b's").unwrap();
        let cache = d.join("cache");
        std::fs::create_dir_all(&cache).unwrap();
        let w = Workspaces::open(&cache, std::slice::from_ref(&root));
        let id = |s: &str| SessionId::parse(s).unwrap();
        let b = w.seal(&id("b"), &root.join("tenant/b"), None).unwrap();
        assert_eq!(b, cache.join("sealed/b"));
        // The name is swapped for a symlink to /: the seal holds b's dir.
        std::fs::rename(root.join("tenant/b"), root.join("tenant/b-old")).unwrap();
        std::os::unix::fs::symlink("/", root.join("tenant/b")).unwrap();
        assert_eq!(std::fs::read_to_string(b.join("file")).unwrap(), "b's");
        let e = w.seal(&id("c"), &root.join("tenant/b"), None).unwrap_err();
        assert_eq!(e.code, Code::Rejected);
        assert_eq!(
            e.message,
            format!(
                "params.workspace_path: {} leads out of {} (through a symlink)",
                root.join("tenant/b").display(),
                root.display()
            )
        );
        // Holding b's directory (its parent) is refused; a sibling is fine.
        let e = w.seal(&id("a"), &root.join("tenant"), None).unwrap_err();
        assert!(e.message.ends_with("is, holds, or lies inside the workspace of a live session; give each session a directory of its own"), "{}", e.message);
        w.seal(&id("o"), &root.join("other"), None).unwrap();
        for (p, code) in [
            (PathBuf::from("/etc"), Code::Rejected),
            (root.join("../x"), Code::Invalid),
            (root.join("missing"), Code::Invalid),
        ] {
            assert_eq!(
                w.seal(&id("x"), &p, None).unwrap_err().code,
                code,
                "{}",
                p.display()
            );
        }
        w.release("b");
        w.release("o");
        w.release("b");
        assert!(!os::mount::is_mount_point(&b) && !b.exists());
        // Free again once b is gone.
        w.seal(&id("a"), &root.join("tenant"), None).unwrap();
        w.release("a");
        std::fs::remove_dir_all(d).unwrap();
    }

    /// A tenant's workspaces are confined to ROOT/TENANT: a symlink there
    /// (which its own session could make) cannot lead to a neighbour's,
    /// and ROOT/TENANT itself may not be a symlink.
    #[test]
    fn a_tenants_workspaces_stay_in_its_directory() {
        let d = std::env::temp_dir().join(format!("vwt-{}", crate::os::random::random_hex(4)));
        let root = d.join("root");
        std::fs::create_dir_all(root.join("b/secret")).unwrap();
        let cache = d.join("cache");
        std::fs::create_dir_all(&cache).unwrap();
        let w = Workspaces::open(&cache, std::slice::from_ref(&root));
        let id = |s: &str| SessionId::parse(s).unwrap();
        let a = Tenant::parse("a").unwrap();
        // ROOT/a is made on first use.
        std::fs::create_dir_all(root.join("a")).ok();
        std::fs::remove_dir(root.join("a")).unwrap();
        let e = w
            .seal(&id("x"), &root.join("a/missing"), Some(&a))
            .unwrap_err();
        assert_eq!(e.code, Code::Invalid, "{}", e.message);
        assert!(root.join("a").is_dir());
        std::fs::create_dir(root.join("a/ws")).unwrap();
        w.seal(&id("a1"), &root.join("a/ws"), Some(&a)).unwrap();
        // Outside its directory, even under the root: refused.
        let e = w
            .seal(&id("a2"), &root.join("b/secret"), Some(&a))
            .unwrap_err();
        assert_eq!(
            (e.code, e.message),
            (
                Code::Rejected,
                format!(
                    "params.workspace_path: {} is not in tenant a's workspace directories ({})",
                    root.join("b/secret").display(),
                    root.join("a").display()
                )
            )
        );
        // A symlink inside a's directory to b's: out of a's directory.
        std::os::unix::fs::symlink("../b/secret", root.join("a/peek")).unwrap();
        let e = w
            .seal(&id("a3"), &root.join("a/peek"), Some(&a))
            .unwrap_err();
        assert_eq!(e.code, Code::Rejected, "{}", e.message);
        assert!(e.message.contains("leads out of"), "{}", e.message);
        // Untenanted, the same symlink stays beneath the root: allowed.
        w.seal(&id("u1"), &root.join("a/peek"), None).unwrap();
        // ROOT/c planted as a symlink to b's directory: refused for c.
        std::os::unix::fs::symlink(root.join("b"), root.join("c")).unwrap();
        let c = Tenant::parse("c").unwrap();
        let e = w
            .seal(&id("c1"), &root.join("c/secret"), Some(&c))
            .unwrap_err();
        assert_eq!(e.code, Code::Rejected, "{}", e.message);
        assert!(
            e.message.contains("it must be a directory, not a symlink"),
            "{}",
            e.message
        );
        for s in ["a1", "u1"] {
            w.release(s);
        }
        std::fs::remove_dir_all(d).unwrap();
    }
}
