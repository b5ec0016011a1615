//! Creating, starting, stopping and removing a session's container: the
//! create (with a pull when the image is missing and `docker.pull` allows
//! it, and the engine's warnings kept in the session record), the bodiless
//! lifecycle POSTs, and a stop marked before it is sent, so an exit it
//! causes is never reported as the container's own.

use super::engine::{api_error, call_name, message_of};
use super::inspect::container_id;
use super::{spec, table, Docker, DockerError};
use crate::http::{self, encode, Request};
use crate::protocol::SessionId;
use crate::providers::{Session, SessionSpec};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

impl Docker {
    /// A bodiless lifecycle POST where 204 is done and 304 is "already so".
    fn lifecycle(
        &self,
        id: &SessionId,
        cid: &str,
        action: &str,
        query: &str,
        timeout: Duration,
    ) -> Result<(), DockerError> {
        let path = format!("/containers/{cid}/{action}{query}");
        let resp = self.engine.call("POST", &path, None, timeout)?;
        match resp.status() {
            204 | 304 => Ok(()),
            404 => Err(self.gone(id)),
            _ => Err(api_error(&call_name("POST", &path), &resp)),
        }
    }

    /// The create call: its status, answer and the engine's message.
    fn create_container(
        &self,
        spec: &SessionSpec,
        body: &Value,
    ) -> Result<(u16, Value, String), DockerError> {
        let name = spec::container_name(&spec.id);
        let path = format!("/containers/create?name={}", encode(&name));
        let resp = self
            .engine
            .call("POST", &path, Some(body), self.engine.timeout)?;
        let v = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
        Ok((resp.status(), v, message_of(&resp)))
    }

    /// Pulls `image` from its registry, logging progress, bounded by
    /// `deadline`.
    fn pull_image(&self, image: &str, deadline: Instant) -> Result<(), DockerError> {
        let (from, tag) = split_reference(image);
        let mut path = format!("/images/create?fromImage={}", encode(from));
        if let Some(tag) = tag {
            path.push_str(&format!("&tag={}", encode(tag)));
        }
        let call = call_name("POST", &path);
        log::info!(image = image; "pulling image {image}");
        let target = self.engine.target(&path)?;
        let stream = self.engine.connect(self.engine.timeout)?;
        let (head, body) = http::request_streaming(stream, &Request::new("POST", &target))
            .map_err(|e| self.engine.http_error(&call, self.engine.timeout, e))?;
        if head.status != 200 {
            let mut body = body;
            let text = body.read_all(64 * 1024).unwrap_or_default();
            let message = serde_json::from_slice::<Value>(&text)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&text).trim().to_string());
            return Err(DockerError::Pull {
                image: image.into(),
                message: format!("HTTP {}: {message}", head.status),
            });
        }
        // Progress is one JSON object per line; errors after the start
        // arrive inside the 200 body.
        let mut lines = BufReader::new(body);
        let mut line = String::new();
        let mut last_status = String::new();
        loop {
            if Instant::now() >= deadline {
                return Err(DockerError::Pull {
                    image: image.into(),
                    message: "the command's timeout passed before the pull finished".into(),
                });
            }
            line.clear();
            match lines.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    return Err(DockerError::Pull {
                        image: image.into(),
                        message: format!("reading the progress stream: {e}"),
                    })
                }
            }
            let Ok(v) = serde_json::from_str::<Value>(line.trim()) else {
                continue;
            };
            let error = v["errorDetail"]["message"]
                .as_str()
                .or_else(|| v["error"].as_str());
            if let Some(message) = error {
                return Err(DockerError::Pull {
                    image: image.into(),
                    message: message.to_string(),
                });
            }
            let status = v["status"].as_str().unwrap_or("");
            let layer = v["id"].as_str().unwrap_or("");
            if v["progressDetail"]["current"].is_u64() {
                log::debug!(image = image; "pull {layer}: {status}");
            } else if status != last_status {
                log::info!(image = image; "pull {layer}: {status}");
                last_status = status.to_string();
            }
        }
        log::info!(image = image; "pulled image {image}");
        Ok(())
    }

    /// Creates the container (pulling the image first when it is missing
    /// and allowed); a name taken by a container that is not ours is
    /// refused.
    pub(crate) fn create_inner(&self, spec: &SessionSpec) -> Result<Session, DockerError> {
        let deadline = Instant::now() + spec.timeout;
        let image = spec
            .image
            .clone()
            .filter(|i| !i.is_empty())
            .unwrap_or_else(|| self.default_image.clone());
        spec::check_image(&image)?;
        let body = spec::create_body(spec, &image, &self.node_id)?;
        let name = spec::container_name(&spec.id);
        let (mut status, mut answer, mut message) = self.create_container(spec, &body)?;
        if status == 404 {
            if !self.pull {
                return Err(DockerError::ImageMissing { image });
            }
            self.pull_image(&image, deadline)?;
            (status, answer, message) = self.create_container(spec, &body)?;
        }
        match status {
            201 => {}
            409 => {
                // The name is taken: ours (a session that exists) or not.
                return Err(match self.resolve(&spec.id) {
                    Ok(_) => DockerError::Api {
                        call: "POST /containers/create".into(),
                        status: 409,
                        message: format!(
                            "session {} already exists as container {name}; destroy it first or pick another id",
                            spec.id
                        ),
                    },
                    Err(e) => e,
                });
            }
            404 => return Err(DockerError::ImageMissing { image }),
            _ => {
                return Err(DockerError::Api {
                    call: "POST /containers/create".into(),
                    status,
                    message,
                })
            }
        }
        let cid = container_id(&answer, "POST /containers/create")?;
        // Limits the kernel cannot enforce are dropped with a warning, not
        // an error: pass them on in the session record.
        let warnings: Vec<String> = answer["Warnings"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|w| w.as_str())
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect();
        for w in &warnings {
            log::warn!(session_id = spec.id.as_str(); "docker create warning: {w}");
        }
        self.state.update(&spec.id, |r| {
            r.stopped = false;
            r.warnings = warnings;
        });
        self.known()
            .insert(spec.id.as_str().to_string(), cid.clone());
        self.observe(&spec.id, &cid)
    }

    /// Starts it; starting a running one succeeds.
    pub(crate) fn start_container(&self, id: &SessionId) -> Result<Session, DockerError> {
        let cid = self.resolve_existing(id)?;
        self.lifecycle(id, &cid, "start", "", self.engine.timeout)?;
        self.state.update(id, |r| r.stopped = false);
        self.observe(id, &cid)
    }

    /// Stops it within `grace`; marked as stopped by us before the call.
    pub(crate) fn stop_container(
        &self,
        id: &SessionId,
        grace: Duration,
    ) -> Result<Session, DockerError> {
        let cid = self.resolve_existing(id)?;
        let secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
        // The engine waits `t` seconds, then kills and waits up to 2 s more.
        let timeout = Duration::from_secs(secs + 2) + self.engine.timeout;
        // Marked before the call: the container may exit (and the monitor
        // look) before the engine answers.
        let was = self.state.get(id.as_str()).stopped;
        let stops = || self.stops.lock().unwrap_or_else(|p| p.into_inner());
        stops().insert(id.to_string());
        self.state.update(id, |r| r.stopped = true);
        let stopped = self.lifecycle(id, &cid, "stop", &format!("?t={secs}"), timeout);
        stops().remove(id.as_str());
        if let Err(e) = stopped {
            self.state.update(id, |r| r.stopped = was);
            return Err(e);
        }
        self.observe(id, &cid)
    }

    /// Removes it with its anonymous volumes; false when there was none.
    pub(crate) fn destroy_container(&self, id: &SessionId) -> Result<bool, DockerError> {
        let Some(cid) = self.resolve(id)? else {
            self.state.remove(id);
            self.table.remove(id.as_str(), None, table::now());
            return Ok(false);
        };
        let path = format!("/containers/{cid}?force=1&v=1");
        let resp = self
            .engine
            .call("DELETE", &path, None, self.engine.timeout)?;
        let existed = match resp.status() {
            204 => true,
            404 => false,
            409 if message_of(&resp).contains("already in progress") => {
                // Someone else is removing it: wait until it is gone.
                let until = Instant::now() + self.engine.timeout;
                while self.inspect(id, &cid).is_ok() && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(50));
                }
                true
            }
            _ => return Err(api_error(&call_name("DELETE", &path), &resp)),
        };
        self.known().remove(id.as_str());
        self.table.remove(id.as_str(), Some(&cid), table::now());
        self.state.remove(id);
        Ok(existed)
    }
}

/// `repo[:tag]` or `repo@digest` into the pull's `fromImage` and `tag`.
fn split_reference(image: &str) -> (&str, Option<&str>) {
    if image.contains('@') {
        return (image, None);
    }
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(i) => (&image[..last_slash + i], Some(&image[last_slash + i + 1..])),
        None => (image, Some("latest")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::providers::docker::{state, DockerProvider};
    use crate::providers::{Provider, SessionStatus};
    use serde_json::json;

    #[test]
    fn splits_references_for_pull() {
        assert_eq!(split_reference("busybox"), ("busybox", Some("latest")));
        assert_eq!(split_reference("debian:12"), ("debian", Some("12")));
        assert_eq!(
            split_reference("reg:5000/team/app"),
            ("reg:5000/team/app", Some("latest"))
        );
        assert_eq!(
            split_reference("reg:5000/team/app:1.2"),
            ("reg:5000/team/app", Some("1.2"))
        );
        assert_eq!(split_reference("a@sha256:00"), ("a@sha256:00", None));
    }

    /// Test double of an engine on a host whose kernel drops limits (this
    /// machine's engine enforces them all, so it never warns): answers
    /// /_ping, the create with a Warnings list, and the inspect.
    #[test]
    fn create_warnings_reach_the_session_record() {
        use std::io::{Read, Write};
        use std::os::unix::net::UnixListener;
        let dir = std::env::temp_dir().join(format!("vt-dwarn-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("engine.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let answer = |body: &str| {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        let warning = "Your kernel does not support swap limit capabilities or the cgroup is not mounted. Memory limited without swap.";
        let answers = [
            "HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Length: 2\r\n\r\nOK".to_string(),
            answer(&json!({"Id": "ab12", "Warnings": [warning]}).to_string()).replacen(
                "200 OK",
                "201 Created",
                1,
            ),
            answer(
                &json!({"Id": "ab12", "Created": "2026-01-01T00:00:00.5Z",
                    "State": {"Status": "created"},
                    "Config": {"Image": "img", "Labels": {"vendetta.session": "s1"}}})
                .to_string(),
            ),
        ];
        let server = std::thread::spawn(move || {
            let mut requests = Vec::new();
            for a in answers {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = vec![0u8; 65536];
                let mut got = Vec::new();
                // Head, then the body its Content-Length announces.
                loop {
                    let n = s.read(&mut buf).unwrap();
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got).into_owned();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("Content-Length: "))
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        if body.len() >= len || n == 0 {
                            break;
                        }
                    }
                }
                requests.push(String::from_utf8_lossy(&got).into_owned());
                s.write_all(a.as_bytes()).unwrap();
            }
            requests
        });
        let mut config = Config {
            cache_dir: Some(dir.join("cache")),
            ..Config::default()
        };
        config.docker.socket = Some(sock);
        let p = DockerProvider::new(&config, "node-1");
        let spec = SessionSpec {
            id: SessionId::parse("s1").unwrap(),
            node_id: "node-1".into(),
            image: Some("img".into()),
            workspace: None,
            env: Default::default(),
            ports: vec![],
            resources: crate::protocol::command::Resources {
                memory: Some(64 << 20),
                ..Default::default()
            },
            labels: Default::default(),
            command: None,
            timeout: Duration::from_secs(10),
            limits_must_hold: false,
        };
        let s = p.create(&spec).unwrap();
        assert_eq!(s.warnings, [warning]);
        assert_eq!(s.status, SessionStatus::Created);
        let requests = server.join().unwrap();
        assert!(requests[0].starts_with("GET /_ping "), "{}", requests[0]);
        assert!(
            requests[1].starts_with("POST /v1.41/containers/create?name=vendetta-s1 "),
            "{}",
            requests[1]
        );
        assert!(
            requests[1].contains("\"Memory\":67108864"),
            "{}",
            requests[1]
        );
        // Kept in cache_dir: a restarted agent still reports them.
        let again = state::LocalState::load(dir.join("cache").join("docker"));
        assert_eq!(again.get("s1").warnings, [warning]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
