//! What the engine cannot tell us about a session, kept in
//! `cache_dir/docker/{session}.json`: whether its last stop was ours (so an
//! exited container reads `stopped`, not `exited`) and the warnings its
//! create got (limits the host did not enforce). Loaded once at start, kept
//! in memory, written atomically on change. Losing it costs accuracy of
//! those two fields, nothing else: the engine stays the source of truth for
//! which sessions exist.

use crate::os;
use crate::protocol::SessionId;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    #[serde(default)]
    pub(crate) stopped: bool,
    #[serde(default)]
    pub(crate) warnings: Vec<String>,
}

pub(crate) struct LocalState {
    dir: PathBuf,
    map: Mutex<HashMap<String, Record>>,
}

impl LocalState {
    /// Reads every record in `dir`; damaged ones are moved aside.
    pub(crate) fn load(dir: PathBuf) -> LocalState {
        let mut map = HashMap::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                let Some(id) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".json"))
                    .and_then(|n| SessionId::parse(n).ok())
                else {
                    continue;
                };
                let parsed = std::fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Record>(&b).ok());
                match parsed {
                    Some(r) => {
                        map.insert(id.as_str().to_string(), r);
                    }
                    None => {
                        let aside = os::fs::move_aside(&path, &dir.join("corrupt"));
                        log::warn!("damaged docker session state {} moved aside ({aside:?}); its stopped flag and warnings are lost", path.display());
                    }
                }
            }
        }
        LocalState {
            dir,
            map: Mutex::new(map),
        }
    }

    pub(crate) fn get(&self, id: &str) -> Record {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .unwrap_or_default()
    }

    /// Changes one record and writes it through.
    pub(crate) fn update(&self, id: &SessionId, f: impl FnOnce(&mut Record)) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let rec = map.entry(id.as_str().to_string()).or_default();
        let before = rec.clone();
        f(rec);
        if *rec == before && self.path(id).exists() {
            return;
        }
        let bytes = serde_json::to_vec(rec).unwrap_or_default();
        let written = os::fs::ensure_dir(&self.dir)
            .and_then(|_| os::fs::write_atomic(&self.path(id), &bytes, 0o600));
        if let Err(e) = written {
            log::warn!(session_id = id.as_str(); "cannot write docker session state in {}: {e}", self.dir.display());
        }
    }

    pub(crate) fn remove(&self, id: &SessionId) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id.as_str());
        let _ = std::fs::remove_file(self.path(id));
    }

    fn path(&self, id: &SessionId) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_a_reload_and_moves_damage_aside() {
        let dir = std::env::temp_dir().join(format!("vt-dstate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let id = SessionId::parse("s1").unwrap();
        let s = LocalState::load(dir.clone());
        s.update(&id, |r| {
            r.stopped = true;
            r.warnings = vec!["no swap limit".into()];
        });
        std::fs::write(dir.join("s2.json"), "{\"stopped\": tr").unwrap();
        let again = LocalState::load(dir.clone());
        assert!(again.get("s1").stopped);
        assert_eq!(again.get("s1").warnings, ["no swap limit"]);
        assert_eq!(again.get("s2"), Record::default());
        assert!(dir.join("corrupt").read_dir().unwrap().count() == 1);
        again.remove(&id);
        assert!(!LocalState::load(dir.clone()).get("s1").stopped);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
