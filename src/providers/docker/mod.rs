//! Docker provider: sessions are containers, driven over the Engine API on
//! its Unix socket with our own small HTTP client (no CLI, no SDK, no
//! async).
//!
//! A session `ID` is the container `vendetta-ID`, labelled
//! `vendetta.managed=true`, `vendetta.session=ID` and `vendetta.node=NODE`.
//! The labels are the ownership proof: a container is acted on only after
//! its labels were checked (and then by its immutable id, cached), so a
//! container someone else made under one of our names is refused, never
//! adopted. Listing by label is also how sessions are found again after a
//! restart; `cache_dir/docker/` adds the two facts the engine does not keep
//! (see [`state`]).
//!
//! Submodules: [`engine`] (socket, version negotiation, one call), [`spec`]
//! (create body and session records), [`exec`] (hijacked exec, frame
//! demuxer, kill on timeout), [`state`] (local records).

pub(crate) mod engine;
pub(crate) mod exec;
pub(crate) mod http;
pub(crate) mod spec;
pub(crate) mod state;

use super::{
    probe, ExecOutput, ExecSpec, Health, OutputSink, Provider, ProviderError, ServiceHealth,
    Session, SessionSpec, SessionStatus,
};
use crate::config::Config;
use crate::protocol::{ProviderKind, SessionId};
use engine::{api_error, call_name, message_of, parse_json, Engine, MAX_API, MIN_API};
use http::{encode, HttpError, Request};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Everything that can go wrong talking to the engine, by what failed.
#[derive(Debug)]
pub(crate) enum DockerError {
    SocketMissing {
        socket: PathBuf,
    },
    SocketPermission {
        socket: PathBuf,
    },
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    /// The call was sent but its answer did not arrive whole.
    Http {
        call: String,
        socket: PathBuf,
        timeout: Duration,
        source: HttpError,
    },
    /// The engine answered with an error status.
    Api {
        call: String,
        status: u16,
        message: String,
    },
    /// The engine is older than [`MIN_API`].
    ApiTooOld {
        engine: String,
    },
    /// The engine refuses the version we speak (its minimum is above ours).
    ApiRejected {
        message: String,
    },
    /// The engine answered something we cannot read.
    BadAnswer {
        call: String,
        detail: String,
    },
    /// The container name is taken by something that is not our session.
    NotOurs {
        name: String,
        why: String,
    },
    ImageMissing {
        image: String,
    },
    Pull {
        image: String,
        message: String,
    },
    /// A timed-out exec could not be killed.
    KillFailed {
        pid: u32,
        detail: String,
    },
    NoSession {
        id: String,
    },
    /// A command parameter the engine must never see.
    Invalid(String),
}

impl fmt::Display for DockerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DockerError::SocketMissing { socket } => write!(
                f,
                "docker socket {} does not exist: is the Docker Engine installed and running? (set docker.socket, or DOCKER_HOST=unix://..., if it lives elsewhere)",
                socket.display()
            ),
            DockerError::SocketPermission { socket } => write!(
                f,
                "permission denied on docker socket {}: run the agent as root or in the socket's group (usually docker)",
                socket.display()
            ),
            DockerError::Connect { socket, source } => write!(
                f,
                "cannot connect to docker socket {}: {source}: is the engine running?",
                socket.display()
            ),
            DockerError::Http {
                call,
                socket,
                timeout,
                source,
            } => {
                write!(f, "docker engine at {}, {call}: {source}", socket.display())?;
                if source.is_timeout() {
                    write!(
                        f,
                        " (no answer within {}: the engine is busy or hung; docker.api_timeout sets the limit)",
                        crate::protocol::duration::format(*timeout)
                    )?;
                }
                Ok(())
            }
            DockerError::Api {
                call,
                status,
                message,
            } => write!(f, "docker engine refused {call} (HTTP {status}): {message}"),
            DockerError::ApiTooOld { engine } => write!(
                f,
                "docker engine API {engine} is older than {MIN_API}, the oldest this agent speaks: upgrade the Docker Engine to 19.03 or newer"
            ),
            DockerError::ApiRejected { message } => write!(
                f,
                "docker engine refuses API {MAX_API} ({message}): this agent speaks {MIN_API} to {MAX_API}; upgrade vendetta or lower the engine's DOCKER_MIN_API_VERSION"
            ),
            DockerError::BadAnswer { call, detail } => {
                write!(f, "unexpected answer from the docker engine to {call}: {detail}")
            }
            DockerError::NotOurs { name, why } => write!(
                f,
                "container {name} exists but is not a session of this node ({why}); refusing to touch it: remove or rename it, or pick another session id"
            ),
            DockerError::ImageMissing { image } => write!(
                f,
                "image {image} is not present on this host; set docker.pull: true or import it (docker load / docker import)"
            ),
            DockerError::Pull { image, message } => {
                write!(f, "pulling image {image} failed: {message}")
            }
            DockerError::KillFailed { pid, detail } => write!(
                f,
                "exec timed out and its process (host pid {pid}) could not be killed: {detail}"
            ),
            DockerError::NoSession { id } => write!(
                f,
                "no docker container for session {id} (it was removed outside the agent?); `session list` shows what exists"
            ),
            DockerError::Invalid(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for DockerError {}

impl From<DockerError> for ProviderError {
    fn from(e: DockerError) -> ProviderError {
        let m = e.to_string();
        match &e {
            DockerError::SocketMissing { .. }
            | DockerError::SocketPermission { .. }
            | DockerError::Connect { .. }
            | DockerError::ApiTooOld { .. }
            | DockerError::ApiRejected { .. } => ProviderError::Unavailable(m),
            DockerError::Http { source, .. } if source.is_timeout() => ProviderError::Timeout(m),
            DockerError::Http { .. } => ProviderError::Unavailable(m),
            DockerError::Api { status: 404, .. } | DockerError::NoSession { .. } => {
                ProviderError::NotFound(m)
            }
            DockerError::Api { status: 409, .. } | DockerError::NotOurs { .. } => {
                ProviderError::Conflict(m)
            }
            DockerError::Api { status: 400, .. } | DockerError::Invalid(_) => {
                ProviderError::Invalid(m)
            }
            DockerError::Api { status: 503, .. } => ProviderError::Unavailable(m),
            DockerError::ImageMissing { .. } => ProviderError::NotFound(m),
            DockerError::Api { .. }
            | DockerError::BadAnswer { .. }
            | DockerError::Pull { .. }
            | DockerError::KillFailed { .. } => ProviderError::Failed(m),
        }
    }
}

pub(crate) struct DockerProvider {
    engine: Engine,
    node_id: String,
    default_image: String,
    pull: bool,
    state: state::LocalState,
    /// Session id -> container id, for containers whose labels we checked.
    known: Mutex<HashMap<String, String>>,
    /// Sessions with a stop in flight: still running, already marked.
    stops: Mutex<HashSet<String>>,
}

impl DockerProvider {
    pub(crate) fn new(config: &Config, node_id: &str) -> DockerProvider {
        DockerProvider {
            engine: Engine::new(
                socket_path(config.docker.socket.as_deref()),
                config.docker.api_timeout,
            ),
            node_id: node_id.to_string(),
            default_image: config.docker.image.clone(),
            pull: config.docker.pull,
            state: state::LocalState::load(config.cache_dir().join("docker")),
            known: Mutex::new(HashMap::new()),
            stops: Mutex::new(HashSet::new()),
        }
    }

    fn stopping(&self, id: &str) -> bool {
        self.stops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The container id of session `id` once its labels say it is ours;
    /// None when no container has the session's name.
    fn resolve(&self, id: &SessionId) -> Result<Option<String>, DockerError> {
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

    fn resolve_existing(&self, id: &SessionId) -> Result<String, DockerError> {
        self.resolve(id)?
            .ok_or_else(|| DockerError::NoSession { id: id.to_string() })
    }

    /// A 404 on a cached id: the container went away behind our back.
    fn gone(&self, id: &SessionId) -> DockerError {
        self.known().remove(id.as_str());
        DockerError::NoSession { id: id.to_string() }
    }

    /// Container inspect by name or id; None when there is no such container.
    fn get_container(&self, key: &str) -> Result<Option<Value>, DockerError> {
        let path = format!("/containers/{key}/json");
        let resp = self.engine.call("GET", &path, None, self.engine.timeout)?;
        match resp.status() {
            200 => parse_json(&call_name("GET", &path), &resp.body).map(Some),
            404 => Ok(None),
            _ => Err(api_error(&call_name("GET", &path), &resp)),
        }
    }

    fn inspect(&self, id: &SessionId, cid: &str) -> Result<Value, DockerError> {
        self.get_container(cid)?.ok_or_else(|| self.gone(id))
    }

    fn session(&self, id: &SessionId, cid: &str) -> Result<Session, DockerError> {
        let v = self.inspect(id, cid)?;
        let rec = self.state.get(id.as_str());
        Ok(spec::session_from_inspect(
            &v,
            id,
            rec.stopped,
            rec.warnings,
        ))
    }

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

    fn create_inner(&self, spec: &SessionSpec) -> Result<Session, DockerError> {
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
        self.session(&spec.id, &cid)
    }

    fn list_inner(&self) -> Result<Vec<Session>, DockerError> {
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
            self.known().insert(s.id.clone(), cid);
            out.push(s);
        }
        Ok(out)
    }

    fn service_health_inner(&self, session: &Session) -> Result<ServiceHealth, DockerError> {
        let id = SessionId::parse(&session.id).map_err(|e| DockerError::Invalid(e.to_string()))?;
        let cid = self.resolve_existing(&id)?;
        let v = self.inspect(&id, &cid)?;
        let health = &v["State"]["Health"];
        if let Some(status) = health["Status"].as_str().filter(|s| *s != "none") {
            let last = health["Log"]
                .as_array()
                .and_then(|l| l.last())
                .map(|l| {
                    format!(
                        "last check exit {}: {}",
                        l["ExitCode"].as_i64().unwrap_or(-1),
                        l["Output"].as_str().unwrap_or("").trim()
                    )
                })
                .unwrap_or_default();
            let status = match status {
                "healthy" | "unhealthy" | "starting" => status,
                _ => "unknown",
            };
            return Ok(ServiceHealth {
                status: status.into(),
                source: "healthcheck".into(),
                detail: last,
            });
        }
        Ok(tcp_probe(session, container_ip(&v)))
    }
}

/// The container's address on its (first) network, when it has one.
fn container_ip(inspect: &Value) -> Option<IpAddr> {
    inspect["NetworkSettings"]["Networks"]
        .as_object()?
        .values()
        .find_map(|n| n["IPAddress"].as_str()?.parse().ok())
}

/// The default probe, aimed at the container itself: connecting to the
/// published port would reach docker-proxy, which accepts whether or not
/// anything listens inside. Without a container address (host or no
/// network), the published ports are probed instead.
fn tcp_probe(session: &Session, ip: Option<IpAddr>) -> ServiceHealth {
    let Some(ip) = ip else {
        return probe::tcp_ports(session);
    };
    let ports: Vec<u16> = session
        .ports
        .keys()
        .filter_map(|k| k.strip_suffix("/tcp")?.parse().ok())
        .collect();
    probe::tcp(ip, &ports, "container port(s)")
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

/// `docker.socket`, else `DOCKER_HOST` when it is `unix://…`, else the
/// standard path.
pub(crate) fn socket_path(configured: Option<&Path>) -> PathBuf {
    socket_path_with(configured, std::env::var("DOCKER_HOST").ok().as_deref())
}

fn socket_path_with(configured: Option<&Path>, docker_host: Option<&str>) -> PathBuf {
    if let Some(p) = configured {
        return p.to_path_buf();
    }
    match docker_host.and_then(|h| h.strip_prefix("unix://")) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        // tcp:// and ssh:// hosts are not for us: the agent talks to the
        // local engine only.
        _ => PathBuf::from("/var/run/docker.sock"),
    }
}

impl Provider for DockerProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Docker
    }

    fn health(&self) -> Health {
        match self.engine.ping() {
            Ok(p) => Health::ok(
                format!(
                    "engine {} answers on {} (API {})",
                    p.server.trim_start_matches("Docker/"),
                    self.engine.socket.display(),
                    p.api
                ),
                json!({
                    "socket": self.engine.socket.display().to_string(),
                    "api_version": p.api.to_string(),
                    "engine_api_version": p.engine_api,
                    "server": p.server,
                    "api_supported": format!("{MIN_API} to {MAX_API}"),
                }),
            ),
            Err(e) => Health::down(e.to_string()),
        }
    }

    fn create(&self, spec: &SessionSpec) -> Result<Session, ProviderError> {
        Ok(self.create_inner(spec)?)
    }

    fn start(&self, id: &SessionId) -> Result<Session, ProviderError> {
        let cid = self.resolve_existing(id)?;
        self.lifecycle(id, &cid, "start", "", self.engine.timeout)?;
        self.state.update(id, |r| r.stopped = false);
        Ok(self.session(id, &cid)?)
    }

    fn stop(&self, id: &SessionId, grace: Duration) -> Result<Session, ProviderError> {
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
            return Err(e.into());
        }
        Ok(self.session(id, &cid)?)
    }

    fn destroy(&self, id: &SessionId) -> Result<bool, ProviderError> {
        let Some(cid) = self.resolve(id)? else {
            self.state.remove(id);
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
            _ => return Err(api_error(&call_name("DELETE", &path), &resp).into()),
        };
        self.known().remove(id.as_str());
        self.state.remove(id);
        Ok(existed)
    }

    fn exec(
        &self,
        id: &SessionId,
        spec: &ExecSpec,
        sink: &mut dyn OutputSink,
    ) -> Result<ExecOutput, ProviderError> {
        let cid = self.resolve_existing(id)?;
        match exec::run(&self.engine, &cid, spec, sink) {
            Ok(out) => Ok(out),
            Err(DockerError::Api { status: 404, .. }) => Err(self.gone(id).into()),
            Err(DockerError::Api {
                status: 409,
                message,
                ..
            }) => Err(ProviderError::Conflict(format!(
                "session {id} is not running ({message}); start it first"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    fn list(&self) -> Result<Vec<Session>, ProviderError> {
        Ok(self.list_inner()?)
    }

    fn reap_interrupted(&self, id: &SessionId, command_id: &str) -> Result<usize, ProviderError> {
        match self.resolve(id)? {
            Some(cid) => Ok(exec::reap(&self.engine, &cid, command_id)?),
            None => Ok(0),
        }
    }

    fn service_health(&self, session: &Session) -> ServiceHealth {
        self.service_health_inner(session)
            .unwrap_or_else(|e| ServiceHealth {
                status: "unknown".into(),
                source: "healthcheck".into(),
                detail: e.to_string(),
            })
    }
}

/// The hex `Id` of an inspect or create answer.
fn container_id(v: &Value, call: &str) -> Result<String, DockerError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{OutputSink, Stream};
    use std::time::Instant;

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

    #[test]
    fn errors_map_to_result_classes_and_say_what_to_do() {
        let e: ProviderError = DockerError::SocketMissing {
            socket: "/x.sock".into(),
        }
        .into();
        assert!(matches!(&e, ProviderError::Unavailable(m) if m.contains("/x.sock")));
        let e: ProviderError = DockerError::ImageMissing {
            image: "img:9".into(),
        }
        .into();
        assert!(
            matches!(&e, ProviderError::NotFound(m) if m.contains("img:9") && m.contains("docker.pull: true")),
            "{e}"
        );
        let e: ProviderError = DockerError::NotOurs {
            name: "vendetta-a".into(),
            why: "no label".into(),
        }
        .into();
        assert!(matches!(e, ProviderError::Conflict(_)));
        let e: ProviderError = DockerError::Http {
            call: "GET /x".into(),
            socket: "/s".into(),
            timeout: Duration::from_secs(30),
            source: HttpError::TimedOut { step: "reading" },
        }
        .into();
        assert!(
            matches!(&e, ProviderError::Timeout(m) if m.contains("docker.api_timeout")),
            "{e}"
        );
        let e: ProviderError = DockerError::SocketPermission {
            socket: "/s".into(),
        }
        .into();
        assert!(
            matches!(&e, ProviderError::Unavailable(m) if m.contains("docker group") || m.contains("group"))
        );
    }

    #[test]
    fn connect_errors_name_the_socket_and_the_fix() {
        use std::io::{Error, ErrorKind};
        let p = Path::new("/run/d.sock");
        let e = engine::connect_error(p, Error::from(ErrorKind::PermissionDenied)).to_string();
        assert!(
            e.contains("permission denied") && e.contains("/run/d.sock"),
            "{e}"
        );
        let e = engine::connect_error(p, Error::from(ErrorKind::ConnectionRefused)).to_string();
        assert!(e.contains("is the engine running"), "{e}");
        let e = engine::connect_error(p, Error::from(ErrorKind::NotFound)).to_string();
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn socket_path_order() {
        let host = Some("unix:///run/user/1/docker.sock");
        assert_eq!(
            socket_path_with(Some(Path::new("/a.sock")), host),
            PathBuf::from("/a.sock")
        );
        assert_eq!(
            socket_path_with(None, host),
            PathBuf::from("/run/user/1/docker.sock")
        );
        for other in [None, Some("tcp://10.0.0.1:2375"), Some("unix://")] {
            assert_eq!(
                socket_path_with(None, other),
                PathBuf::from("/var/run/docker.sock")
            );
        }
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

    /// Records when each chunk came.
    struct Timed(Vec<(Instant, Stream, Vec<u8>)>);

    impl OutputSink for Timed {
        fn chunk(&mut self, stream: Stream, data: &[u8]) {
            self.0.push((Instant::now(), stream, data.to_vec()));
        }
    }

    #[test]
    fn exec_output_reaches_the_sink_as_it_arrives_from_the_real_engine() {
        let dir = std::env::temp_dir().join(format!("vdsink-{}", crate::util::random_hex(4)));
        let mut config = crate::config::Config {
            cache_dir: Some(dir.clone()),
            ..Default::default()
        };
        // Built offline by tests/setup/images.sh (`make test` runs it).
        config.docker.image = "vendetta-test/busybox:latest".into();
        let node = format!("node-vu{}sink", std::process::id());
        let p = DockerProvider::new(&config, &node);
        let id = SessionId::parse(&format!("vu{}-sink", std::process::id())).unwrap();
        // Removes the container and the cache dir, also when the test fails.
        struct Cleanup<'a>(&'a DockerProvider, &'a SessionId, std::path::PathBuf);
        impl Drop for Cleanup<'_> {
            fn drop(&mut self) {
                let _ = self.0.destroy(self.1);
                let _ = std::fs::remove_dir_all(&self.2);
            }
        }
        let _cleanup = Cleanup(&p, &id, dir.clone());
        p.create(&SessionSpec {
            id: id.clone(),
            node_id: node.clone(),
            image: None,
            workspace: None,
            env: Default::default(),
            ports: vec![],
            resources: Default::default(),
            labels: Default::default(),
            command: None,
            timeout: Duration::from_secs(30),
        })
        .unwrap();
        p.start(&id).unwrap();
        let spec = ExecSpec {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "echo first; echo oops >&2; sleep 2; echo second".into(),
            ],
            env: Default::default(),
            workdir: None,
            user: None,
            stdin: None,
            timeout: Duration::from_secs(20),
            max_output: 1 << 20,
        };
        let mut sink = Timed(Vec::new());
        let t0 = Instant::now();
        let out = p.exec(&id, &spec, &mut sink).unwrap();
        let done = t0.elapsed();
        assert_eq!(out.exit_code, Some(0));
        assert_eq!(out.stdout, b"first\nsecond\n");
        let first = sink
            .0
            .iter()
            .find(|(_, s, d)| *s == Stream::Stdout && d.starts_with(b"first"))
            .expect("a chunk with the first line");
        assert!(
            first.0 - t0 < Duration::from_millis(1500) && done >= Duration::from_secs(2),
            "the first line came {:?} in, the exec took {done:?}: output was held back",
            first.0 - t0
        );
        assert!(sink
            .0
            .iter()
            .any(|(_, s, d)| *s == Stream::Stderr && d == b"oops\n"));
        assert!(p.destroy(&id).unwrap());
        assert!(!p.destroy(&id).unwrap());
    }
}
