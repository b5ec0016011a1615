//! Taking over the files of agents before the journal: `results/` (one
//! record per command id) and `spool/` (results the server had not
//! acknowledged). Each command is written to the journal, the journal is
//! flushed, and only then are the old files removed; a start cut short in
//! between does it again, skipping what the journal already knows.

use super::ledger::{Ledger, Migrated, Origin, State};
use super::StoreError;
use crate::os;
use crate::protocol::tenant::Tenancy;
use crate::protocol::{CommandId, CommandResult};
use serde::Deserialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A record of `results/`, as older agents wrote it.
#[derive(Deserialize)]
struct OldRecord {
    state: State,
    origin: Origin,
    #[serde(default)]
    tenancy: Tenancy,
    command: Value,
    #[serde(default)]
    result: Option<CommandResult>,
}

/// Files of `dir` named `{prefix}{id}.json`, oldest first.
fn files(dir: &Path, prefix: &str) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(SystemTime, String, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let id = name.strip_prefix(prefix)?.strip_suffix(".json")?;
            CommandId::parse(id).ok()?;
            let mtime = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            Some((mtime, id.to_string(), e.path()))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, id, p)| (id, p)).collect()
}

pub(crate) fn from_files(cache_dir: &Path, ledger: &Ledger) -> Result<(), StoreError> {
    let results = cache_dir.join("results");
    let spool = cache_dir.join("spool");
    if !results.is_dir() && !spool.is_dir() {
        return Ok(());
    }
    let corrupt = cache_dir.join("corrupt");
    let spooled: Vec<(String, PathBuf)> = files(&spool, "s-");
    let mut moved = 0;
    for (id, path) in files(&results, "r-") {
        let record: OldRecord = match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(r) => r,
            Err(why) => {
                set_aside(&path, &corrupt, &why);
                continue;
            }
        };
        // Found by the name it was filed under, so it must say that id:
        // a record under another id's name would run under the wrong one.
        let inner_id = record.command.get("id").and_then(Value::as_str);
        if inner_id != Some(id.as_str()) {
            set_aside(
                &path,
                &corrupt,
                &format!("it holds command id {inner_id:?}, not {id:?}"),
            );
            continue;
        }
        let state = match (&record.state, &record.result) {
            (State::Done, None) => {
                set_aside(&path, &corrupt, "a done record without a result");
                continue;
            }
            (s, _) => *s,
        };
        let report = spooled.iter().any(|(s, _)| *s == id);
        ledger.migrate(Migrated {
            id: &id,
            state,
            origin: record.origin,
            tenancy: &record.tenancy,
            command: &record.command,
            result: record.result.as_ref(),
            report,
        })?;
        moved += 1;
    }
    // Spooled results of commands the ledger did not keep (read-only ones).
    for (id, path) in &spooled {
        let result: CommandResult = match std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(r) => r,
            Err(why) => {
                set_aside(path, &corrupt, &why);
                continue;
            }
        };
        if result.id != *id {
            set_aside(path, &corrupt, "it holds another command's result");
            continue;
        }
        ledger.migrate(Migrated {
            id,
            state: State::Done,
            origin: Origin::Coordination,
            tenancy: &Tenancy::everything(),
            command: &result.command,
            result: Some(&result),
            report: true,
        })?;
        moved += 1;
    }
    ledger.sync_all()?;
    for dir in [&results, &spool] {
        if dir.is_dir() {
            std::fs::remove_dir_all(dir)
                .map_err(|e| StoreError::io("remove a migrated directory", dir, e))?;
        }
    }
    log::info!(
        "moved {moved} stored commands from {} and {} into the journal",
        results.display(),
        spool.display()
    );
    Ok(())
}

fn set_aside(path: &Path, corrupt: &Path, why: &str) {
    match os::fs::move_aside(path, corrupt) {
        Ok(to) => log::warn!(
            "stored record {} cannot be taken over ({why}); moved to {}",
            path.display(),
            to.display()
        ),
        Err(e) => log::warn!(
            "stored record {} cannot be taken over ({why}) nor moved aside: {e}",
            path.display()
        ),
    }
}
