//! Health: the engine's (a ping, which also renews the API version we
//! speak) and a session's services' (the container's healthcheck when it
//! has one, else a TCP probe aimed at the container itself).

use super::engine::{MAX_API, MIN_API};
use super::{Docker, DockerError};
use crate::protocol::SessionId;
use crate::providers::{probe, Health, ServiceHealth, Session};
use serde_json::{json, Value};
use std::net::IpAddr;

impl Docker {
    /// [`Provider::health`](crate::providers::Provider::health): whether
    /// the engine answers, at which version.
    pub(crate) fn health_now(&self) -> Health {
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

    pub(crate) fn service_health_inner(
        &self,
        session: &Session,
    ) -> Result<ServiceHealth, DockerError> {
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
