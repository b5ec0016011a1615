//! Translation between sessions and containers: the create body built from
//! a [`SessionSpec`], and [`Session`] records read back from the engine's
//! inspect and list answers. Pure functions, unit-tested on canned JSON.
//!
//! Everything a command can put into a create (image, env, labels, limits)
//! is checked here before it reaches the engine; the session id is already
//! a validated [`SessionId`], so the container name cannot carry anything
//! but `[a-z0-9_.-]`.

use super::DockerError;
use crate::protocol::{ProviderKind, SessionId};
use crate::providers::{Session, SessionSpec, SessionStatus};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

pub(crate) const LABEL_MANAGED: &str = "vendetta.managed";
pub(crate) const LABEL_SESSION: &str = "vendetta.session";
pub(crate) const LABEL_NODE: &str = "vendetta.node";

/// The main process when a create names none: sleeps until stopped. With
/// `Init: true`, docker-init forwards SIGTERM to it and it dies at once, so a
/// stop takes milliseconds, not the grace period. `sleep infinity` works in
/// busybox and GNU coreutils.
pub(crate) const DEFAULT_COMMAND: [&str; 2] = ["sleep", "infinity"];

/// Docker refuses memory limits below 6 MiB.
const MIN_MEMORY: u64 = 6 << 20;

/// The container that holds session `id`.
pub(crate) fn container_name(id: &SessionId) -> String {
    format!("vendetta-{id}")
}

/// Accepts the image references Docker does (`name[:tag][@digest]`, with an
/// optional registry host and port) and nothing that could change the path
/// of `/images/{name}/json`.
pub(crate) fn check_image(image: &str) -> Result<(), DockerError> {
    let bad = |why: &str| {
        Err(DockerError::Invalid(format!(
            "params.image: {image:?} is not an image reference ({why}); use e.g. debian:stable-slim or registry:5000/team/app:1.2"
        )))
    };
    if image.is_empty() || image.len() > 255 {
        return bad("it must be 1 to 255 characters");
    }
    if !image
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/' | b':' | b'@'))
    {
        return bad("only letters, digits and . _ - / : @ are allowed");
    }
    let first = image.as_bytes()[0];
    if !first.is_ascii_alphanumeric() || image.ends_with(['/', ':', '@', '.', '-']) {
        return bad("it must start and end with a letter or digit");
    }
    if image.contains("//") || image.contains("..") || image.matches('@').count() > 1 {
        return bad("empty or dot-dot path component");
    }
    Ok(())
}

/// The create body for `spec`, with our labels on top of the caller's.
pub(crate) fn create_body(
    spec: &SessionSpec,
    image: &str,
    node_id: &str,
) -> Result<Value, DockerError> {
    let invalid = |m: String| Err(DockerError::Invalid(m));
    let mut labels = Map::new();
    for (k, v) in &spec.labels {
        // Commands cannot set `vendetta.*` (the protocol refuses them);
        // the runtime sets the tenant's, never these, which prove ownership.
        if [LABEL_MANAGED, LABEL_SESSION, LABEL_NODE].contains(&k.as_str()) {
            return invalid(format!(
                "params.labels: {k:?} is set by the Docker provider; pick another key"
            ));
        }
        if k.is_empty() {
            return invalid("params.labels: a label key is empty".into());
        }
        labels.insert(k.clone(), Value::from(v.as_str()));
    }
    labels.insert(LABEL_MANAGED.into(), "true".into());
    labels.insert(LABEL_SESSION.into(), spec.id.as_str().into());
    labels.insert(LABEL_NODE.into(), node_id.into());

    let env = env_list(&spec.env, "params.env")?;
    let cmd: Vec<String> = match &spec.command {
        Some(c) if c.is_empty() => {
            return invalid("params.command: is empty; leave it out for the default".into())
        }
        Some(c) => c.clone(),
        None => DEFAULT_COMMAND.iter().map(|s| s.to_string()).collect(),
    };

    let mut exposed = Map::new();
    let mut bindings = Map::new();
    for p in &spec.ports {
        let key = format!("{}/{}", p.port, p.proto());
        exposed.insert(key.clone(), json!({}));
        // HostPort "" lets the engine pick a free port at start; 127.0.0.1
        // keeps sessions off the network: callers reach them through this
        // host (or a tunnel), never unauthenticated from outside.
        bindings.insert(key, json!([{"HostIp": "127.0.0.1", "HostPort": ""}]));
    }

    let mut host = json!({
        "Init": true,
        "PortBindings": bindings,
        "RestartPolicy": {"Name": "no"},
    });
    if let Some(ws) = &spec.workspace {
        let Some(src) = ws.to_str() else {
            return invalid(format!(
                "params.workspace_path: {} is not valid UTF-8",
                ws.display()
            ));
        };
        // A Mount, not a Binds string: the path may hold ':' or ','.
        host["Mounts"] = json!([{"Type": "bind", "Source": src, "Target": "/workspace"}]);
    }
    let r = &spec.resources;
    if let Some(mem) = r.memory {
        if mem < MIN_MEMORY {
            return invalid(format!(
                "params.resources.memory: {mem} bytes is below docker's minimum of 6 MiB"
            ));
        }
        let mem = i64::try_from(mem).map_err(|_| {
            DockerError::Invalid(format!("params.resources.memory: {mem} bytes is too large"))
        })?;
        host["Memory"] = mem.into();
        // No swap beyond the memory limit: the limit means what it says.
        host["MemorySwap"] = mem.into();
    }
    if let Some(cpus) = r.cpus {
        if !(0.01..=1e6).contains(&cpus) {
            return invalid(format!(
                "params.resources.cpus: {cpus} is out of range; use 0.01 or more, e.g. 1.5"
            ));
        }
        host["NanoCpus"] = ((cpus * 1e9).round() as i64).into();
    }
    if let Some(pids) = r.pids {
        if pids < 1 {
            return invalid(format!(
                "params.resources.pids: {pids} is out of range; use 1 or more (leave it out for no limit)"
            ));
        }
        host["PidsLimit"] = pids.into();
    }

    let mut body = json!({
        "Image": image,
        "Cmd": cmd,
        "Env": env,
        "Labels": labels,
        "ExposedPorts": exposed,
        "Tty": false,
        "OpenStdin": false,
        "HostConfig": host,
    });
    if spec.workspace.is_some() {
        body["WorkingDir"] = "/workspace".into();
    }
    Ok(body)
}

/// `K=V` strings, refusing keys Docker would misread.
pub(crate) fn env_list(
    env: &BTreeMap<String, String>,
    field: &str,
) -> Result<Vec<String>, DockerError> {
    env.iter()
        .map(|(k, v)| {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                Err(DockerError::Invalid(format!(
                    "{field}: {k:?} is not a usable variable name (empty, or holds '=' or NUL)"
                )))
            } else {
                Ok(format!("{k}={v}"))
            }
        })
        .collect()
}

/// Why a container's labels say it is not one of ours, if they do.
pub(crate) fn foreign(labels: &Value, id: &str, node_id: &str) -> Option<String> {
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    if get(LABEL_MANAGED) != Some("true") {
        return Some("it has no vendetta.managed=true label".into());
    }
    if get(LABEL_SESSION) != Some(id) {
        return Some(format!(
            "its vendetta.session label is {:?}",
            get(LABEL_SESSION).unwrap_or("")
        ));
    }
    if get(LABEL_NODE) != Some(node_id) {
        return Some(format!(
            "it belongs to node {:?}",
            get(LABEL_NODE).unwrap_or("")
        ));
    }
    None
}

/// Our status for an engine state. A container that exited after our own
/// stop is `stopped`; one that exited by itself is `exited`.
pub(crate) fn status_of(state: &str, stopped_by_us: bool) -> SessionStatus {
    match state {
        "created" => SessionStatus::Created,
        "running" | "paused" | "restarting" => SessionStatus::Running,
        "exited" if stopped_by_us => SessionStatus::Stopped,
        "exited" => SessionStatus::Exited,
        "removing" => SessionStatus::Stopped,
        _ => SessionStatus::Lost,
    }
}

/// RFC 3339 to the second: `2026-11-27T03:19:50.123456789Z` ->
/// `2026-11-27T03:19:50Z` (list answers only have seconds, and a record
/// should not change between a create and a list).
pub(crate) fn created_from_rfc3339(s: &str) -> String {
    match s.get(..19) {
        Some(head) if s.len() >= 20 => format!("{head}Z"),
        _ => s.to_string(),
    }
}

pub(crate) fn created_from_unix(secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    created_from_rfc3339(&crate::protocol::time::rfc3339(t))
}

fn labels_of(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// A session from `GET /containers/{id}/json`.
pub(crate) fn session_from_inspect(
    v: &Value,
    id: &SessionId,
    stopped_by_us: bool,
    warnings: Vec<String>,
) -> Session {
    let state = &v["State"];
    let status = status_of(state["Status"].as_str().unwrap_or(""), stopped_by_us);
    let mut ports = BTreeMap::new();
    if let Some(map) = v["NetworkSettings"]["Ports"].as_object() {
        for (key, binds) in map {
            // IPv4 and IPv6 bindings of one port share the host port.
            let host = binds
                .as_array()
                .into_iter()
                .flatten()
                .find_map(|b| b["HostPort"].as_str().and_then(|p| p.parse::<u16>().ok()));
            if let Some(host) = host.filter(|p| *p > 0) {
                ports.insert(key.clone(), host);
            }
        }
    }
    Session {
        id: id.as_str().to_string(),
        provider: ProviderKind::Docker,
        status,
        image: v["Config"]["Image"].as_str().unwrap_or("").to_string(),
        ports,
        created: created_from_rfc3339(v["Created"].as_str().unwrap_or("")),
        labels: labels_of(&v["Config"]["Labels"]),
        exit_code: exit_code(status, state["ExitCode"].as_i64()),
        warnings,
    }
}

fn exit_code(status: SessionStatus, code: Option<i64>) -> Option<i32> {
    match status {
        SessionStatus::Exited | SessionStatus::Stopped | SessionStatus::Lost => {
            code.and_then(|c| i32::try_from(c).ok())
        }
        _ => None,
    }
}

/// One item of `GET /containers/json`, when it is a session of ours: the
/// session and the container's id. The exit code is not in a listing; the
/// caller fills it in from an inspect.
pub(crate) fn session_from_list(v: &Value, node_id: &str) -> Option<(Session, String)> {
    let labels = &v["Labels"];
    let id = SessionId::parse(labels.get(LABEL_SESSION)?.as_str()?).ok()?;
    if foreign(labels, id.as_str(), node_id).is_some() {
        return None;
    }
    // Only the container named for the session is the session: a copy
    // wearing our labels under another name is not ours.
    let want = format!("/{}", container_name(&id));
    let named = v["Names"]
        .as_array()
        .is_some_and(|n| n.iter().any(|x| x.as_str() == Some(want.as_str())));
    if !named {
        return None;
    }
    let mut ports = BTreeMap::new();
    for p in v["Ports"].as_array().into_iter().flatten() {
        let (Some(private), Some(public)) = (p["PrivatePort"].as_u64(), p["PublicPort"].as_u64())
        else {
            continue;
        };
        let proto = p["Type"].as_str().unwrap_or("tcp");
        if let Ok(public) = u16::try_from(public) {
            ports.insert(format!("{private}/{proto}"), public);
        }
    }
    let session = Session {
        id: id.as_str().to_string(),
        provider: ProviderKind::Docker,
        status: status_of(v["State"].as_str().unwrap_or(""), false),
        image: v["Image"].as_str().unwrap_or("").to_string(),
        ports,
        created: created_from_unix(v["Created"].as_i64().unwrap_or(0)),
        labels: labels_of(labels),
        exit_code: None,
        warnings: Vec::new(),
    };
    Some((session, v["Id"].as_str().unwrap_or("").to_string()))
}

/// The list filter for this node's sessions, percent-encoded.
pub(crate) fn list_filter(node_id: &str) -> String {
    let f = json!({"label": [format!("{LABEL_MANAGED}=true"), format!("{LABEL_NODE}={node_id}")]});
    crate::http::encode(&f.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::command::{PortSpec, Resources};
    use std::time::Duration;

    /// The message of a refusal, which must be `Invalid`: the request's
    /// fault, never the engine's.
    fn invalid<T: std::fmt::Debug>(r: Result<T, DockerError>) -> String {
        match r {
            Err(DockerError::Invalid(m)) => m,
            other => panic!("expected DockerError::Invalid, got {other:?}"),
        }
    }

    fn spec() -> SessionSpec {
        SessionSpec {
            id: SessionId::parse("s1").unwrap(),
            node_id: "node-1".into(),
            image: None,
            workspace: Some("/srv/ws:odd,path".into()),
            env: [("A".to_string(), "1=2".to_string())].into(),
            ports: vec![
                PortSpec {
                    port: 8080,
                    udp: false,
                },
                PortSpec {
                    port: 53,
                    udp: true,
                },
            ],
            resources: Resources {
                memory: Some(64 << 20),
                cpus: Some(1.5),
                pids: Some(100),
            },
            labels: [("team".to_string(), "red".to_string())].into(),
            command: None,
            timeout: Duration::from_secs(30),
            limits_must_hold: false,
        }
    }

    #[test]
    fn builds_the_create_body() {
        let b = create_body(&spec(), "img:1", "node-1").unwrap();
        assert_eq!(b["Image"], "img:1");
        assert_eq!(b["Cmd"], json!(["sleep", "infinity"]));
        assert_eq!(b["Env"], json!(["A=1=2"]));
        assert_eq!(b["Labels"]["team"], "red");
        assert_eq!(b["Labels"]["vendetta.managed"], "true");
        assert_eq!(b["Labels"]["vendetta.session"], "s1");
        assert_eq!(b["Labels"]["vendetta.node"], "node-1");
        assert_eq!(b["WorkingDir"], "/workspace");
        let h = &b["HostConfig"];
        assert_eq!(h["Init"], true);
        assert_eq!(h["Memory"], 64 << 20);
        assert_eq!(h["MemorySwap"], 64 << 20);
        assert_eq!(h["NanoCpus"], 1_500_000_000i64);
        assert_eq!(h["PidsLimit"], 100);
        assert_eq!(h["Mounts"][0]["Source"], "/srv/ws:odd,path");
        assert_eq!(
            h["PortBindings"]["8080/tcp"],
            json!([{"HostIp": "127.0.0.1", "HostPort": ""}])
        );
        assert!(h["PortBindings"]["53/udp"].is_array());
        assert!(b["ExposedPorts"]["53/udp"].is_object());
    }

    #[test]
    fn refuses_bad_input() {
        /// Spoils a good spec in one way.
        type Spoil = fn(&mut SessionSpec);
        let cases: [(Spoil, &str); 6] = [
            (
                |s| {
                    s.labels.insert("vendetta.session".into(), "other".into());
                },
                "params.labels: \"vendetta.session\" is set by the Docker provider; pick another key",
            ),
            (
                |s| {
                    s.env.insert("A=B".into(), "x".into());
                },
                "params.env: \"A=B\" is not a usable variable name (empty, or holds '=' or NUL)",
            ),
            (
                |s| s.resources.memory = Some(1 << 20),
                "params.resources.memory: 1048576 bytes is below docker's minimum of 6 MiB",
            ),
            (
                |s| s.resources.cpus = Some(f64::NAN),
                "params.resources.cpus: NaN is out of range; use 0.01 or more, e.g. 1.5",
            ),
            (
                |s| s.resources.pids = Some(0),
                "params.resources.pids: 0 is out of range; use 1 or more (leave it out for no limit)",
            ),
            (
                |s| s.command = Some(vec![]),
                "params.command: is empty; leave it out for the default",
            ),
        ];
        for (spoil, want) in cases {
            let mut s = spec();
            spoil(&mut s);
            assert_eq!(invalid(create_body(&s, "i", "n")), want);
        }
    }

    #[test]
    fn image_references() {
        for ok in [
            "busybox",
            "debian:stable-slim",
            "vendetta-test/busybox:latest",
            "registry.local:5000/team/app:1.2",
            "alpine@sha256:0123abcd",
        ] {
            check_image(ok).unwrap();
        }
        let length = "it must be 1 to 255 characters";
        let chars = "only letters, digits and . _ - / : @ are allowed";
        let ends = "it must start and end with a letter or digit";
        let paths = "empty or dot-dot path component";
        for (bad, why) in [
            ("", length),
            ("../../containers/json", ends),
            ("a/../../b", paths),
            ("a b", chars),
            ("img?x=1", chars),
            ("img#frag", chars),
            ("/abs", ends),
            ("a//b", paths),
            ("img:", ends),
            ("x@y@z", paths),
            ("%2e%2e", chars),
        ] {
            assert_eq!(
                invalid(check_image(bad)),
                format!("params.image: {bad:?} is not an image reference ({why}); use e.g. debian:stable-slim or registry:5000/team/app:1.2")
            );
        }
    }

    #[test]
    fn statuses() {
        assert_eq!(status_of("created", false), SessionStatus::Created);
        assert_eq!(status_of("running", true), SessionStatus::Running);
        assert_eq!(status_of("exited", false), SessionStatus::Exited);
        assert_eq!(status_of("exited", true), SessionStatus::Stopped);
        assert_eq!(status_of("dead", false), SessionStatus::Lost);
    }

    #[test]
    fn reads_inspect_and_list() {
        let id = SessionId::parse("s1").unwrap();
        let inspect = json!({
            "Id": "abc", "Created": "2026-11-27T03:19:50.123456789Z",
            "State": {"Status": "exited", "ExitCode": 3},
            "Config": {"Image": "img:1", "Labels": {"vendetta.session": "s1", "team": "red"}},
            "NetworkSettings": {"Ports": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "32768"}], "9/tcp": null}}
        });
        let s = session_from_inspect(&inspect, &id, false, vec!["w".into()]);
        assert_eq!(s.status, SessionStatus::Exited);
        assert_eq!(s.exit_code, Some(3));
        assert_eq!(s.created, "2026-11-27T03:19:50Z");
        assert_eq!(s.ports, [("8080/tcp".to_string(), 32768)].into());
        assert_eq!(s.labels["team"], "red");
        assert_eq!(s.warnings, ["w"]);
        let running = json!({"State": {"Status": "running", "ExitCode": 0}});
        assert_eq!(
            session_from_inspect(&running, &id, false, vec![]).exit_code,
            None
        );

        let item = json!({
            "Id": "abc", "Names": ["/vendetta-s1"], "Image": "img:1", "State": "running",
            "Created": 1_795_000_000i64,
            "Labels": {"vendetta.managed": "true", "vendetta.session": "s1", "vendetta.node": "n1"},
            "Ports": [{"IP": "127.0.0.1", "PrivatePort": 8080, "PublicPort": 32768, "Type": "tcp"}, {"PrivatePort": 9, "Type": "tcp"}]
        });
        let (s, cid) = session_from_list(&item, "n1").unwrap();
        assert_eq!(cid, "abc");
        assert_eq!(s.status, SessionStatus::Running);
        assert_eq!(s.ports, [("8080/tcp".to_string(), 32768)].into());
        assert_eq!(s.created, "2026-11-18T11:06:40Z");
        assert!(session_from_list(&item, "other-node").is_none());
        let mut renamed = item.clone();
        renamed["Names"] = json!(["/impostor"]);
        assert!(session_from_list(&renamed, "n1").is_none());
        let mut hostile = item;
        hostile["Labels"]["vendetta.session"] = json!("../x");
        assert!(session_from_list(&hostile, "n1").is_none());
    }

    #[test]
    fn foreign_labels() {
        let ours =
            json!({"vendetta.managed": "true", "vendetta.session": "s1", "vendetta.node": "n"});
        assert!(foreign(&ours, "s1", "n").is_none());
        assert!(foreign(&json!({}), "s1", "n").unwrap().contains("managed"));
        assert_eq!(
            foreign(&ours, "s2", "n"),
            Some("its vendetta.session label is \"s1\"".to_string())
        );
        assert!(foreign(&ours, "s1", "m").unwrap().contains("node"));
    }
}
