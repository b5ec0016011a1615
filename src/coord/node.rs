//! The node document sent at registration and the heartbeat body.
//!
//! The node document carries both our fields and the original vendetta
//! server's (`capabilities` as a list, `address` beside `host`), so either
//! server decodes it. The heartbeat is kept small: it goes out every
//! interval from every node of a fleet.

use crate::config::Config;
use crate::protocol::ProviderKind;
use crate::providers::Registry;
use crate::runtime::Runtime;
use crate::VERSION;
use serde_json::{json, Value};
use std::net::{ToSocketAddrs, UdpSocket};
use std::time::SystemTime;

/// The address this node uses to reach the server: the local end of a
/// (never sent) UDP "connection" to it. Falls back to the host name.
pub(crate) fn local_address(coordination_url: &str) -> String {
    let hostport = crate::config::url_authority(coordination_url);
    let default_port = if coordination_url.starts_with("https") {
        443
    } else {
        80
    };
    let target = if hostport
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        hostport.to_string()
    } else {
        format!("{hostport}:{default_port}")
    };
    let found = target
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .and_then(|server| {
            let bind = if server.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            let sock = UdpSocket::bind(bind).ok()?;
            sock.connect(server).ok()?;
            sock.local_addr().ok().map(|a| a.ip().to_string())
        });
    found.unwrap_or_else(crate::os::host::hostname)
}

/// What the node document says about this node.
pub(crate) struct NodeFacts<'a> {
    pub(crate) id: &'a str,
    pub(crate) name: &'a str,
    pub(crate) address: &'a str,
    pub(crate) port: u16,
    pub(crate) provider: ProviderKind,
    pub(crate) capabilities: Vec<ProviderKind>,
    pub(crate) labels: &'a std::collections::BTreeMap<String, String>,
    /// When the node id was made (stable across restarts).
    pub(crate) created: SystemTime,
}

impl<'a> NodeFacts<'a> {
    pub(crate) fn of(rt: &'a Runtime, address: &'a str) -> NodeFacts<'a> {
        NodeFacts::new(
            &rt.config,
            &rt.node_id,
            &rt.node_name,
            address,
            &rt.registry,
            rt.started_at,
        )
    }

    /// `created` falls back to `started` when the id file has no time.
    pub(crate) fn new(
        config: &'a Config,
        id: &'a str,
        name: &'a str,
        address: &'a str,
        registry: &Registry,
        started: SystemTime,
    ) -> NodeFacts<'a> {
        NodeFacts {
            id,
            name,
            address,
            port: config.listen.tcp.map_or(0, |a| a.port()),
            provider: config.provider,
            capabilities: registry.usable(),
            labels: &config.labels,
            created: node_id_created(&config.cache_dir()).unwrap_or(started),
        }
    }
}

pub(crate) fn node_id_created(cache_dir: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(cache_dir.join("node_id"))
        .and_then(|m| m.modified())
        .ok()
}

pub(crate) fn document(f: &NodeFacts) -> Value {
    let host = crate::os::host::host_info();
    json!({
        "id": f.id,
        "name": f.name,
        "host": f.address,
        "address": f.address,
        "port": f.port,
        "provider": f.provider,
        "capabilities": f.capabilities,
        "status": "active",
        "version": VERSION,
        "labels": f.labels,
        "metadata": {
            "os": host.os,
            "arch": host.arch,
            "kernel": host.kernel,
            "cpus": host.cpus,
            "memory_bytes": host.memory_total_bytes,
            "hostname": host.hostname,
            "agent": format!("vendetta-agent/{VERSION}"),
        },
        "created_at": crate::protocol::time::rfc3339(f.created),
        "last_seen": crate::protocol::time::now_rfc3339(),
    })
}

pub(crate) fn heartbeat(rt: &Runtime, seq: u64, offline_since: Option<&str>) -> Value {
    let (total, running) = rt.sessions.counts();
    let mut body = json!({
        "node_id": rt.node_id,
        "status": "active",
        "seq": seq,
        "timestamp": crate::protocol::time::now_rfc3339(),
        "uptime_s": rt.uptime().as_secs(),
        "sessions": {"total": total, "running": running},
        "load": crate::os::host::load1().map(|l| (l * 100.0).round() / 100.0),
        "memory_available_bytes": crate::os::host::meminfo().map(|m| m.1),
        "pending_results": rt.ledger.pending_reports(),
    });
    if let Some(since) = offline_since {
        body["offline_since"] = Value::from(since);
    }
    body
}
