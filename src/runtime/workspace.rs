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
//! Records (`sealed/<session>.json`) let the seals be made again after a
//! reboot, when the mounts are gone.

use super::dispatch::Failure;
use crate::os;
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
            let opened = self.open_beneath_root(&record.path);
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
    /// runtime.
    pub(crate) fn seal(&self, session: &SessionId, requested: &Path) -> Result<PathBuf, Failure> {
        let dir = self.open_beneath_root(requested)?;
        let chain = self
            .chain(dir.try_clone().map_err(|e| self.unusable(requested, e))?)
            .map_err(|e| self.unusable(requested, e))?;
        let mut live = self.lock();
        if let Some((other, _)) = live
            .iter()
            .find(|(_, s)| chain.contains(&s.chain[0]) || s.chain.contains(&chain[0]))
        {
            return Err(Failure::new(
                Code::Rejected,
                format!(
                    "params.workspace_path: {} is, holds, or lies inside the workspace of session {other}; give each session a directory of its own",
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
    /// outside the roots.
    fn open_beneath_root(&self, requested: &Path) -> Result<OwnedFd, Failure> {
        let invalid =
            |m: String| Failure::new(Code::Invalid, format!("params.workspace_path: {m}"));
        if !os::mount::is_plain_absolute(requested) {
            return Err(invalid(format!(
                "{} must be an absolute path without . or .. parts",
                requested.display()
            )));
        }
        let Some((root, rel)) = self
            .roots
            .iter()
            .find_map(|r| requested.strip_prefix(r).ok().map(|rel| (r, rel)))
        else {
            return Err(Failure::new(
                Code::Rejected,
                format!(
                    "params.workspace_path: {} is not under workspace_roots ({})",
                    requested.display(),
                    self.roots
                        .iter()
                        .map(|r| r.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        };
        let root_fd = os::mount::open_dir(root).map_err(|e| {
            Failure::new(
                Code::Failed,
                format!("workspace root {} cannot be opened: {e}", root.display()),
            )
        })?;
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
        let b = w.seal(&id("b"), &root.join("tenant/b")).unwrap();
        assert_eq!(b, cache.join("sealed/b"));
        // The name is swapped for a symlink to /: the seal holds b's dir.
        std::fs::rename(root.join("tenant/b"), root.join("tenant/b-old")).unwrap();
        std::os::unix::fs::symlink("/", root.join("tenant/b")).unwrap();
        assert_eq!(std::fs::read_to_string(b.join("file")).unwrap(), "b's");
        let e = w.seal(&id("c"), &root.join("tenant/b")).unwrap_err();
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
        let e = w.seal(&id("a"), &root.join("tenant")).unwrap_err();
        assert!(e.message.ends_with("is, holds, or lies inside the workspace of session b; give each session a directory of its own"), "{}", e.message);
        w.seal(&id("o"), &root.join("other")).unwrap();
        for (p, code) in [
            (PathBuf::from("/etc"), Code::Rejected),
            (root.join("../x"), Code::Invalid),
            (root.join("missing"), Code::Invalid),
        ] {
            assert_eq!(
                w.seal(&id("x"), &p).unwrap_err().code,
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
        w.seal(&id("a"), &root.join("tenant")).unwrap();
        w.release("a");
        std::fs::remove_dir_all(d).unwrap();
    }
}
