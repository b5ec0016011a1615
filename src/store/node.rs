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
    let id = load_or_create_id(&cache_dir, &config.node_id)?;
    let name = if config.node_name.is_empty() {
        crate::os::host::hostname()
    } else {
        config.node_name.clone()
    };
    Ok((cache_dir, id, name))
}

/// The configured id, else the stored one, else a new one that is stored.
pub(crate) fn load_or_create_id(cache_dir: &Path, configured: &str) -> Result<String, StoreError> {
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
    match std::fs::read_to_string(&path) {
        Ok(s) if valid_node_id(s.trim()) => return Ok(s.trim().to_string()),
        Ok(_) => {
            let moved = os::fs::move_aside(&path, &cache_dir.join("corrupt"))
                .map_err(|e| StoreError::io("move aside a damaged node_id file", &path, e))?;
            log::warn!(
                "node_id file {} was damaged; moved to {} and made a new id",
                path.display(),
                moved.display()
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::io("read the node id", &path, e)),
    }
    let id = format!("node-{}", crate::os::random::random_hex(6));
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
        let a = load_or_create_id(&dir, "").unwrap();
        let b = load_or_create_id(&dir, "").unwrap();
        assert_eq!(a, b);
        assert!(a.starts_with("node-"));
        assert_eq!(load_or_create_id(&dir, "edge-7").unwrap(), "edge-7");
        assert_eq!(
            load_or_create_id(&dir, "../etc").unwrap_err().to_string(),
            "node_id: \"../etc\" is not a node id; use 1-64 characters of [A-Za-z0-9._-]"
        );
        std::fs::write(dir.join("node_id"), "garbage/\n").unwrap();
        let c = load_or_create_id(&dir, "").unwrap();
        assert_ne!(c, a);
        assert!(dir.join("corrupt").read_dir().unwrap().count() == 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
