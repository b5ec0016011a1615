//! Finding sessions: a session's container by name, accepted only when its
//! labels say it is ours (then remembered by its immutable id), inspect,
//! and the full listing by label that finds sessions again after a restart
//! (and primes the events-kept [`table`](super::table)).

use super::engine::{api_error, call_name, parse_json};
use super::{spec, table, Docker, DockerError};
use crate::protocol::SessionId;
use crate::providers::{Session, SessionStatus};
use serde_json::Value;

impl Docker {
    /// The container id of session `id` once its labels say it is ours;
    /// None when no container has the session's name.
    pub(crate) fn resolve(&self, id: &SessionId) -> Result<Option<String>, DockerError> {
        if let Some(cid) = self.known().get(id.as_str()) {
            return Ok(Some(cid.clone()));
        }
        let name = spec::container_name(id);
        let Some(v) = self.get_container(&name)? else {
            return Ok(None);
        };
        if let Some(why) = spec::foreign(&v["Config"]["Labels"], id.as_str(), &self.node_id) {
            return Err(DockerError::NotOurs { name, why });
        }
        let cid = container_id(&v, &format!("GET /containers/{name}/json"))?;
        self.known().insert(id.as_str().to_string(), cid.clone());
        Ok(Some(cid))
    }

    /// Like [`Self::resolve`], for operations that need the container.
    pub(crate) fn resolve_existing(&self, id: &SessionId) -> Result<String, DockerError> {
        self.resolve(id)?
            .ok_or_else(|| DockerError::NoSession { id: id.to_string() })
    }

    /// A 404 on a cached id: the container went away behind our back.
    pub(crate) fn gone(&self, id: &SessionId) -> DockerError {
        self.known().remove(id.as_str());
        self.table.remove(id.as_str(), None, table::now());
        DockerError::NoSession { id: id.to_string() }
    }

    /// Container inspect by name or id; None when there is no such container.
    pub(crate) fn get_container(&self, key: &str) -> Result<Option<Value>, DockerError> {
        let path = format!("/containers/{key}/json");
        let resp = self.engine.call("GET", &path, None, self.engine.timeout)?;
        match resp.status() {
            200 => parse_json(&call_name("GET", &path), &resp.body).map(Some),
            404 => Ok(None),
            _ => Err(api_error(&call_name("GET", &path), &resp)),
        }
    }

    /// Inspect of our container `cid`; a 404 forgets it.
    pub(crate) fn inspect(&self, id: &SessionId, cid: &str) -> Result<Value, DockerError> {
        self.get_container(cid)?.ok_or_else(|| self.gone(id))
    }

    /// The session as inspect and the local record show it.
    pub(crate) fn session(&self, id: &SessionId, cid: &str) -> Result<Session, DockerError> {
        let v = self.inspect(id, cid)?;
        let rec = self.state.get(id.as_str());
        Ok(spec::session_from_inspect(
            &v,
            id,
            rec.stopped,
            rec.warnings,
        ))
    }

    /// The session as inspect shows it now, also written to the table (a
    /// change the provider made shows in a list before its event comes).
    pub(crate) fn observe(&self, id: &SessionId, cid: &str) -> Result<Session, DockerError> {
        let seen = table::now();
        let s = self.session(id, cid)?;
        self.table.upsert(s.clone(), cid, seen);
        Ok(s)
    }

    /// The full listing, when the table cannot answer.
    pub(crate) fn list_inner(&self) -> Result<Vec<Session>, DockerError> {
        Ok(self.list_full()?.into_iter().map(|(s, _)| s).collect())
    }

    /// Our containers by label, with their container ids; an exited one is
    /// inspected once more for its exit code, which a listing does not
    /// carry.
    pub(crate) fn list_full(&self) -> Result<Vec<(Session, String)>, DockerError> {
        let path = format!(
            "/containers/json?all=1&filters={}",
            spec::list_filter(&self.node_id)
        );
        let v = self.engine.get_json(&path)?;
        let items = v.as_array().ok_or_else(|| DockerError::BadAnswer {
            call: "GET /containers/json".into(),
            detail: "not a list".into(),
        })?;
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let Some((mut s, cid)) = spec::session_from_list(item, &self.node_id) else {
                continue;
            };
            let id = match SessionId::parse(&s.id) {
                Ok(id) => id,
                Err(_) => continue,
            };
            let rec = self.state.get(&s.id);
            s.warnings = rec.warnings;
            if rec.stopped && s.status == SessionStatus::Running && !self.stopping(&s.id) {
                // Started again behind our back: its next exit is its own.
                self.state.update(&id, |r| r.stopped = false);
            }
            if matches!(s.status, SessionStatus::Exited | SessionStatus::Lost) {
                // A listing has no exit code: read it (and the state) once.
                match self.inspect(&id, &cid) {
                    Ok(full) => {
                        s = spec::session_from_inspect(&full, &id, rec.stopped, s.warnings);
                    }
                    Err(DockerError::NoSession { .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
            self.known().insert(s.id.clone(), cid.clone());
            out.push((s, cid));
        }
        Ok(out)
    }
}

/// The hex `Id` of an inspect or create answer.
pub(crate) fn container_id(v: &Value, call: &str) -> Result<String, DockerError> {
    match v["Id"].as_str() {
        Some(id) if !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(id.to_string())
        }
        _ => Err(DockerError::BadAnswer {
            call: call.to_string(),
            detail: "no container Id".into(),
        }),
    }
}
