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
//! Each file owns one thing:
//! - [`http`]: HTTP/1.1 over the Unix socket; [`engine`]: the socket, API
//!   version negotiation, one call.
//! - [`spec`]: the create body and session records from engine answers.
//! - [`inspect`]: finding our containers, inspect, the full listing.
//! - [`table`]: this node's sessions as the engine's events keep them,
//!   which `list` answers from; [`events`]: the "docker-events" thread
//!   that primes and follows it.
//! - [`lifecycle`]: create (and pull), start, stop, destroy.
//! - [`exec`]: hijacked exec, frame demuxer, kill on timeout, reap.
//! - [`health`]: the engine's health and a session's services'.
//! - [`state`]: the local records in `cache_dir/docker/`.
//!
//! May not touch: channels, HTTP requests of the local API, the runtime or
//! the coordination link. Syscalls go through [`crate::os`].

pub(crate) mod engine;
pub(crate) mod events;
pub(crate) mod exec;
pub(crate) mod health;
pub(crate) mod inspect;
pub(crate) mod lifecycle;
pub(crate) mod spec;
pub(crate) mod state;
pub(crate) mod table;

use super::{
    ExecOutput, ExecSpec, Health, OutputSink, Provider, ProviderError, ServiceHealth, Session,
    SessionSpec,
};
use crate::config::Config;
use crate::http::HttpError;
use crate::protocol::{ProviderKind, SessionId};
use engine::{Engine, MAX_API, MIN_API};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

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

/// The Docker provider: a handle on the [`Docker`] state it shares with
/// its events watcher, which holds only a weak reference: dropping the
/// provider ends the watcher.
pub(crate) struct DockerProvider {
    docker: Arc<Docker>,
    /// Starts the "docker-events" thread on the first list.
    watcher: Once,
}

/// One engine socket, this node's containers.
pub(crate) struct Docker {
    engine: Engine,
    node_id: String,
    default_image: String,
    pull: bool,
    state: state::LocalState,
    /// Session id -> container id, for containers whose labels we checked.
    known: Mutex<HashMap<String, String>>,
    /// Sessions with a stop in flight: still running, already marked.
    stops: Mutex<HashSet<String>>,
    /// This node's sessions, kept by the engine's events; `list` answers
    /// from it while the watcher follows them.
    table: table::Table,
    /// Where a container's exit behind the agent's back is reported as
    /// the event arrives (`Provider::watch`).
    sink: Mutex<Option<crate::providers::NoticeSink>>,
}

impl DockerProvider {
    pub(crate) fn new(config: &Config, node_id: &str) -> DockerProvider {
        DockerProvider {
            docker: Arc::new(Docker {
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
                table: table::Table::default(),
                sink: Mutex::new(None),
            }),
            watcher: Once::new(),
        }
    }

    /// Starts the events watcher, once. Without it (the thread could not
    /// be made) every list asks the engine.
    fn start_watcher(&self) {
        self.watcher.call_once(|| {
            if let Err(e) = events::spawn(Arc::downgrade(&self.docker)) {
                log::warn!("cannot start the docker-events thread ({e}): every session list asks the docker engine");
            }
        });
    }
}

impl Deref for DockerProvider {
    type Target = Docker;

    fn deref(&self) -> &Docker {
        &self.docker
    }
}

impl Docker {
    /// Whether a stop of session `id` is in flight (then its exit is ours).
    fn stopping(&self, id: &str) -> bool {
        self.stops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }

    /// The cache of checked container ids (a poisoned lock still holds
    /// valid ids: each insert and remove is one step).
    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
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
        self.health_now()
    }

    fn create(&self, spec: &SessionSpec) -> Result<Session, ProviderError> {
        Ok(self.create_inner(spec)?)
    }

    fn start(&self, id: &SessionId) -> Result<Session, ProviderError> {
        Ok(self.start_container(id)?)
    }

    fn stop(&self, id: &SessionId, grace: Duration) -> Result<Session, ProviderError> {
        Ok(self.stop_container(id, grace)?)
    }

    fn destroy(&self, id: &SessionId) -> Result<bool, ProviderError> {
        Ok(self.destroy_container(id)?)
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

    /// From the events-kept table while the watcher follows the engine,
    /// else a full listing (the engine is down, the stream broke, or it is
    /// not primed yet).
    fn list(&self) -> Result<Vec<Session>, ProviderError> {
        self.start_watcher();
        if let Some(sessions) = self.table.sessions() {
            return Ok(sessions);
        }
        Ok(self.list_inner()?)
    }

    fn watch(&self, sink: crate::providers::NoticeSink) {
        *self.docker.sink.lock().unwrap_or_else(|p| p.into_inner()) = Some(sink);
    }

    fn node_ids(&self) -> Vec<String> {
        let filter = serde_json::json!({"label": [format!("{}=true", spec::LABEL_MANAGED)]});
        let path = format!(
            "/containers/json?all=1&filters={}",
            crate::http::encode(&filter.to_string())
        );
        let Ok(serde_json::Value::Array(items)) = self.engine.get_json(&path) else {
            return Vec::new();
        };
        items
            .iter()
            .filter_map(|c| c["Labels"][spec::LABEL_NODE].as_str())
            .map(str::to_string)
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
