//! Docker provider: sessions are containers, driven over the Engine API on
//! its Unix socket.

use super::{
    ExecOutput, ExecSpec, Health, OutputSink, Provider, ProviderError, Session, SessionSpec,
};
use crate::config::Config;
use crate::protocol::{ProviderKind, SessionId};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

pub struct DockerProvider {
    socket: PathBuf,
}

impl DockerProvider {
    pub fn new(config: &Config, _node_id: &str) -> DockerProvider {
        DockerProvider {
            socket: socket_path(config.docker.socket.as_deref()),
        }
    }
}

/// `docker.socket`, else `DOCKER_HOST` when it is `unix://…`, else the
/// standard path.
pub fn socket_path(configured: Option<&std::path::Path>) -> PathBuf {
    if let Some(p) = configured {
        return p.to_path_buf();
    }
    if let Ok(host) = std::env::var("DOCKER_HOST") {
        if let Some(p) = host.strip_prefix("unix://") {
            return PathBuf::from(p);
        }
    }
    PathBuf::from("/var/run/docker.sock")
}

fn not_yet() -> ProviderError {
    ProviderError::Unavailable("docker sessions are not supported by this build yet".into())
}

impl Provider for DockerProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Docker
    }

    fn health(&self) -> Health {
        let sock = self.socket.display();
        let mut stream = match UnixStream::connect(&self.socket) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Health::down(format!("docker socket {sock} does not exist: is the Docker Engine installed and running?"))
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Health::down(format!(
                    "permission denied on docker socket {sock}: run the agent as root or in the docker group"
                ))
            }
            Err(e) => return Health::down(format!("cannot connect to docker socket {sock}: {e}: is the engine running?")),
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(3)));
        let req = b"GET /_ping HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        let mut buf = Vec::new();
        if let Err(e) = stream
            .write_all(req)
            .and_then(|_| stream.read_to_end(&mut buf))
        {
            return Health::down(format!(
                "docker engine at {sock} did not answer /_ping: {e}"
            ));
        }
        let text = String::from_utf8_lossy(&buf);
        if !text.starts_with("HTTP/1.1 200") {
            return Health::down(format!(
                "docker engine at {sock} answered /_ping with {:?}",
                text.lines().next().unwrap_or("")
            ));
        }
        let api = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("Api-Version:")
                    .or_else(|| l.strip_prefix("api-version:"))
            })
            .map(|v| v.trim().to_string())
            .unwrap_or_default();
        Health::ok(
            format!("engine answers on {sock}"),
            serde_json::json!({"socket": sock.to_string(), "api_version": api}),
        )
    }

    fn create(&self, _spec: &SessionSpec) -> Result<Session, ProviderError> {
        Err(not_yet())
    }

    fn start(&self, _id: &SessionId) -> Result<Session, ProviderError> {
        Err(not_yet())
    }

    fn stop(&self, _id: &SessionId, _grace: Duration) -> Result<Session, ProviderError> {
        Err(not_yet())
    }

    fn destroy(&self, _id: &SessionId) -> Result<bool, ProviderError> {
        Err(not_yet())
    }

    fn exec(
        &self,
        _id: &SessionId,
        _spec: &ExecSpec,
        _sink: &mut dyn OutputSink,
    ) -> Result<ExecOutput, ProviderError> {
        Err(not_yet())
    }

    fn list(&self) -> Result<Vec<Session>, ProviderError> {
        Ok(Vec::new())
    }
}
