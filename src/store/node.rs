//! The node id (generated once, kept in `cache_dir/node_id`) and the
//! local API token file.

use super::StoreError;
use crate::os;
use crate::protocol::ids::valid_node_id;
use std::path::Path;

/// The cache directory (created if missing), the node id and the node name
/// (the configured one, else the host name): what the agent and
/// `agent connect` both register with.
pub(crate) fn identity(
    config: &crate::config::Config,
    witnesses: &dyn Fn() -> Vec<String>,
) -> Result<(std::path::PathBuf, String, String), StoreError> {
    let cache_dir = config.cache_dir();
    os::fs::ensure_dir(&cache_dir)
        .map_err(|e| StoreError::io("create the cache directory", &cache_dir, e))?;
    // It holds the API token and every result: its owner's alone.
    match os::fs::tighten_dir(&cache_dir) {
        Ok(Some(was)) => log::warn!(
            "cache_dir {} was mode {was:04o}, open to other users; it is now {:04o}",
            cache_dir.display(),
            was & 0o700
        ),
        Ok(None) => {}
        Err(e) => {
            return Err(StoreError::io(
                "restrict the cache directory to its owner",
                &cache_dir,
                e,
            ))
        }
    }
    let id = load_or_create_id(&cache_dir, &config.node_id, witnesses)?;
    let name = if config.node_name.is_empty() {
        crate::os::host::hostname()
    } else {
        config.node_name.clone()
    };
    Ok((cache_dir, id, name))
}

/// The configured id, else the stored one, else a recovered one, else a
/// new one; stored unless configured.
///
/// A `node_id` file that is damaged (not an id, not UTF-8) is set aside
/// and the id recovered before a new one is made: the sessions of this
/// node carry it, and a new id would orphan them ("belongs to another
/// node"). The journal in `cache_dir` (results name their node) is taken
/// as it is; failing that, the node ids on the providers' sessions
/// (`witnesses`, called only then) count when they all agree, since an
/// engine may hold other agents' sessions too. A missing file is
/// recovered from the journal only: a fresh agent beside another must
/// not take its id.
pub(crate) fn load_or_create_id(
    cache_dir: &Path,
    configured: &str,
    witnesses: &dyn Fn() -> Vec<String>,
) -> Result<String, StoreError> {
    if !configured.is_empty() {
        if !valid_node_id(configured) {
            return Err(StoreError::Invalid {
                what: "node_id",
                message: format!(
                    "{configured:?} is not a node id; use 1-64 characters of [A-Za-z0-9._-]"
                ),
            });
        }
        return Ok(configured.to_string());
    }
    let path = cache_dir.join("node_id");
    let damaged = match std::fs::read(&path) {
        Ok(bytes) => match std::str::from_utf8(&bytes).map(str::trim) {
            Ok(s) if valid_node_id(s) => return Ok(s.to_string()),
            _ => true,
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(StoreError::io("read the node id", &path, e)),
    };
    let recovered = match super::journal::newest_node_id(cache_dir) {
        Some(id) => Some((id, "the journal's results".to_string())),
        None if damaged => {
            let mut seen: Vec<String> = witnesses()
                .into_iter()
                .filter(|id| valid_node_id(id))
                .collect();
            seen.sort();
            seen.dedup();
            match seen.as_slice() {
                [one] => Some((one.clone(), "the labels of its sessions".to_string())),
                [] => None,
                many => {
                    log::warn!(
                        "the sessions found name several node ids ({}); none is taken: set node_id in the config to keep one",
                        many.join(", ")
                    );
                    None
                }
            }
        }
        None => None,
    };
    if damaged {
        match os::fs::move_aside(&path, &cache_dir.join("corrupt")) {
            Ok(moved) => log::warn!(
                "node_id file {} was damaged; moved to {}",
                path.display(),
                moved.display()
            ),
            Err(e) => log::warn!(
                "node_id file {} is damaged and cannot be moved aside ({e}); it is overwritten",
                path.display()
            ),
        }
    }
    let id = match recovered {
        Some((id, from)) => {
            log::warn!("node id {id} recovered from {from}");
            id
        }
        None => {
            let id = format!("node-{}", crate::os::random::random_hex(6));
            if damaged {
                log::warn!("no trace of the old node id was found; this node is now {id}");
            }
            id
        }
    };
    os::fs::write_atomic(&path, format!("{id}\n").as_bytes(), 0o644)
        .map_err(|e| StoreError::io("store the node id", &path, e))?;
    Ok(id)
}

/// The local API token when none is configured: generated once into
/// `cache_dir/api_token` (mode 0600), so only the agent's user and root can
/// read it, and the local CLI finds it there.
pub(crate) fn load_or_create_api_token(cache_dir: &Path) -> Result<String, StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let path = cache_dir.join("api_token");
    let mode = std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o777);
    match std::fs::read_to_string(&path) {
        // Others could read it: it is no secret any more.
        Ok(_) if mode.as_ref().is_ok_and(|m| m & 0o077 != 0) => log::warn!(
            "the API token file {} was readable by other users (mode {:04o}); made a new token",
            path.display(),
            mode.unwrap_or_default()
        ),
        Ok(s) if s.trim().len() >= MIN_TOKEN => return Ok(s.trim().to_string()),
        Ok(_) => log::warn!(
            "the API token in {} was shorter than {MIN_TOKEN} bytes; made a new token",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::io("read the API token", &path, e)),
    }
    let token = crate::os::random::random_hex(24);
    os::fs::write_atomic(&path, format!("{token}\n").as_bytes(), 0o600)
        .map_err(|e| StoreError::io("store the API token", &path, e))?;
    Ok(token)
}

/// The shortest token the local API accepts as its static token.
pub(crate) const MIN_TOKEN: usize = 32;

/// Reads the generated token, for the CLI.
pub(crate) fn read_api_token(cache_dir: &Path) -> Option<String> {
    std::fs::read_to_string(cache_dir.join("api_token"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_stable() {
        let dir = std::env::temp_dir().join(format!(
            "vendetta-node-{}",
            crate::os::random::random_hex(4)
        ));
        os::fs::ensure_dir(&dir).unwrap();
        let none = || Vec::new();
        let a = load_or_create_id(&dir, "", &none).unwrap();
        let b = load_or_create_id(&dir, "", &none).unwrap();
        assert_eq!(a, b);
        assert!(a.starts_with("node-"));
        assert_eq!(load_or_create_id(&dir, "edge-7", &none).unwrap(), "edge-7");
        assert_eq!(
            load_or_create_id(&dir, "../etc", &none)
                .unwrap_err()
                .to_string(),
            "node_id: \"../etc\" is not a node id; use 1-64 characters of [A-Za-z0-9._-]"
        );
        std::fs::write(dir.join("node_id"), "garbage/\n").unwrap();
        let c = load_or_create_id(&dir, "", &none).unwrap();
        assert_ne!(c, a);
        assert!(dir.join("corrupt").read_dir().unwrap().count() == 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A damaged file never stops a start, and the id comes back from
    /// the sessions when they agree, not when they disagree; a missing
    /// file with no journal is a new node, whatever the engine holds.
    #[test]
    fn a_damaged_id_is_recovered_from_agreeing_witnesses() {
        let dir = std::env::temp_dir().join(format!(
            "vendetta-node-{}",
            crate::os::random::random_hex(4)
        ));
        os::fs::ensure_dir(&dir).unwrap();
        let agree = || vec!["node-old".to_string(), "node-old".to_string()];
        let split = || vec!["node-old".to_string(), "node-other".to_string()];
        std::fs::write(dir.join("node_id"), b"node-\xff\xfe\n").unwrap();
        assert_eq!(load_or_create_id(&dir, "", &agree).unwrap(), "node-old");
        assert_eq!(
            std::fs::read_to_string(dir.join("node_id")).unwrap(),
            "node-old\n"
        );
        std::fs::write(dir.join("node_id"), b"\0\0\0").unwrap();
        let fresh = load_or_create_id(&dir, "", &split).unwrap();
        assert!(fresh.starts_with("node-") && fresh != "node-old" && fresh != "node-other");
        std::fs::remove_file(dir.join("node_id")).unwrap();
        let new = load_or_create_id(&dir, "", &agree).unwrap();
        assert_ne!(
            new, "node-old",
            "a missing file does not take a neighbour's id"
        );
        assert_eq!(dir.join("corrupt").read_dir().unwrap().count(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
