//! Commands as they arrive, parsed into typed requests.
//!
//! Parsing is split in two so that nothing is silently dropped: a body that
//! is not JSON, or has no valid `id`, cannot be answered with a result and
//! is refused outright ([`CommandError`]); anything else becomes a
//! [`Command`] whose `request` is either a typed [`Request`] or a
//! [`FieldError`] naming the bad field, which the agent turns into a
//! `failed` result stored under the id like any other.

use super::duration;
use super::ids::{CommandId, IdError, SessionId};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// A body that cannot become a command at all (HTTP 400 on the local API,
/// a logged skip on the coordination link).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CommandError {
    Malformed(String),
    NotAnObject,
    MissingId,
    InvalidId(IdError),
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::Malformed(e) => write!(f, "malformed JSON: {e}"),
            CommandError::NotAnObject => write!(f, "a command must be a JSON object"),
            CommandError::MissingId => write!(
                f,
                "id: is required (1-128 characters of {})",
                CommandId::RULE
            ),
            CommandError::InvalidId(e) => write!(f, "id: {e}"),
        }
    }
}

impl std::error::Error for CommandError {}

/// A field of a command that is missing or wrong. `field` is a path such as
/// `params.session_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    pub(crate) field: String,
    pub(crate) message: String,
}

impl FieldError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Who sent a command, and so where its result goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Origin {
    Api,
    Coordination,
}

impl Origin {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Origin::Api => "api",
            Origin::Coordination => "coordination",
        }
    }
}

/// The providers a session can live in.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ProviderKind {
    Docker,
    Lxc,
    Qemu,
}

impl ProviderKind {
    pub(crate) const ALL: [ProviderKind; 3] =
        [ProviderKind::Docker, ProviderKind::Lxc, ProviderKind::Qemu];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Docker => "docker",
            ProviderKind::Lxc => "lxc",
            ProviderKind::Qemu => "qemu",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<ProviderKind> {
        ProviderKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A port to publish: `8080`, `"8080"`, `"8080/tcp"` or `"53/udp"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct PortSpec {
    pub(crate) port: u16,
    pub(crate) udp: bool,
}

impl PortSpec {
    pub(crate) fn parse(s: &str) -> Result<PortSpec, String> {
        let (num, proto) = match s.split_once('/') {
            Some((n, p)) => (n, p),
            None => (s, "tcp"),
        };
        let udp = match proto {
            "tcp" => false,
            "udp" => true,
            other => return Err(format!("unknown protocol {other:?}; use tcp or udp")),
        };
        match num.parse::<u16>() {
            Ok(port) if port > 0 => Ok(PortSpec { port, udp }),
            _ => Err(format!(
                "{s:?} is not a port; use 1-65535 with an optional /tcp or /udp"
            )),
        }
    }

    pub(crate) fn proto(&self) -> &'static str {
        if self.udp {
            "udp"
        } else {
            "tcp"
        }
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, self.proto())
    }
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => PortSpec::parse(&n.to_string()),
            Raw::Text(s) => PortSpec::parse(&s),
        }
        .map_err(serde::de::Error::custom)
    }
}

/// Session resources. Each is optional; providers map what they can and say
/// which limits they could not enforce.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Resources {
    #[serde(default, deserialize_with = "super::size::deserialize_opt")]
    pub(crate) memory: Option<u64>,
    pub(crate) cpus: Option<f64>,
    pub(crate) pids: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateParams {
    pub(crate) session_id: SessionId,
    pub(crate) provider: Option<ProviderKind>,
    pub(crate) image: Option<String>,
    pub(crate) workspace_path: Option<PathBuf>,
    #[serde(default)]
    pub(crate) env: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) ports: Vec<PortSpec>,
    #[serde(default)]
    pub(crate) resources: Resources,
    #[serde(default)]
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) command: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SessionParams {
    pub(crate) session_id: SessionId,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StopParams {
    pub(crate) session_id: SessionId,
    /// Grace period before the session is killed.
    #[serde(default, deserialize_with = "duration::deserialize_wire_opt")]
    pub(crate) timeout: Option<Duration>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    pub(crate) provider: Option<ProviderKind>,
}

impl ListParams {
    /// The params of `GET /api/v1/sessions?provider=`, checked as a
    /// `session list` command's are, with the same words on error.
    pub(crate) fn from_query(provider: Option<&str>) -> Result<ListParams, FieldError> {
        use serde::de::{value::Error, IntoDeserializer};
        let provider = match provider {
            None => None,
            Some(p) => {
                let kind: Result<ProviderKind, Error> =
                    ProviderKind::deserialize(clip(p).into_deserializer());
                Some(kind.map_err(|e| FieldError::new("params.provider", e.to_string()))?)
            }
        };
        Ok(ListParams { provider })
    }
}

/// `command` as given: an argv array, or a string that needs `shell: true`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub(crate) enum CommandLine {
    Argv(Vec<String>),
    Shell(String),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExecParams {
    pub(crate) session_id: SessionId,
    pub(crate) command: CommandLine,
    #[serde(default)]
    pub(crate) shell: bool,
    #[serde(default)]
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) workdir: Option<String>,
    pub(crate) user: Option<String>,
    pub(crate) stdin: Option<String>,
    #[serde(default, deserialize_with = "duration::deserialize_wire_opt")]
    pub(crate) timeout: Option<Duration>,
}

impl ExecParams {
    /// The argv to run: the array as given, or `/bin/sh -c STRING`.
    pub(crate) fn argv(&self) -> Vec<String> {
        match &self.command {
            CommandLine::Argv(v) => v.clone(),
            CommandLine::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServiceParams {
    pub(crate) session_id: SessionId,
}

/// What a command asks for, with its parameters checked.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Request {
    SessionCreate(CreateParams),
    SessionStart(SessionParams),
    SessionStop(StopParams),
    SessionDestroy(SessionParams),
    SessionList(ListParams),
    SessionExec(ExecParams),
    ServiceList(ListParams),
    ServiceStatus(ServiceParams),
    SystemStatus,
    SystemInfo,
    SystemHealth,
}

pub(crate) const ACTIONS: [(&str, &[&str]); 3] = [
    (
        "session",
        &["create", "start", "stop", "destroy", "list", "exec"],
    ),
    ("service", &["list", "status"]),
    ("system", &["status", "info", "health"]),
];

impl Request {
    /// The session a request is about, if any.
    pub(crate) fn session_id(&self) -> Option<&SessionId> {
        match self {
            Request::SessionCreate(p) => Some(&p.session_id),
            Request::SessionStart(p) | Request::SessionDestroy(p) => Some(&p.session_id),
            Request::SessionStop(p) => Some(&p.session_id),
            Request::SessionExec(p) => Some(&p.session_id),
            Request::ServiceStatus(p) => Some(&p.session_id),
            _ => None,
        }
    }

    /// Commands that change nothing and may safely run again, e.g. after an
    /// agent restart interrupted them.
    pub(crate) fn read_only(&self) -> bool {
        matches!(
            self,
            Request::SessionList(_)
                | Request::ServiceList(_)
                | Request::ServiceStatus(_)
                | Request::SystemStatus
                | Request::SystemInfo
                | Request::SystemHealth
        )
    }
}

/// A command with a valid id. `request` holds the typed request, or the
/// first field that was wrong.
#[derive(Debug, Clone)]
pub(crate) struct Command {
    pub(crate) id: CommandId,
    /// `type` and `action` as sent (clipped), for logs, metrics and events.
    pub(crate) kind: String,
    pub(crate) action: String,
    pub(crate) request: Result<Request, FieldError>,
    pub(crate) timeout: Option<Duration>,
    /// The command as received, echoed in its result.
    pub(crate) echo: Value,
}

impl Command {
    /// `type.action`, e.g. `session.exec`, clipped and cleaned so that it is
    /// safe as a metric label and in an allowlist match.
    pub(crate) fn name(&self) -> String {
        format!("{}.{}", self.kind, self.action)
    }

    pub(crate) fn read_only(&self) -> bool {
        matches!(&self.request, Ok(r) if r.read_only())
    }

    /// The timeout the command asks for: an exec's own `params.timeout`,
    /// else the command's `timeout`.
    pub(crate) fn timeout_asked(&self) -> Option<Duration> {
        match &self.request {
            Ok(Request::SessionExec(p)) => p.timeout.or(self.timeout),
            _ => self.timeout,
        }
    }
}

/// Parses a command from a request or batch body.
pub(crate) fn parse(body: &[u8]) -> Result<Command, CommandError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| CommandError::Malformed(e.to_string()))?;
    from_value(value)
}

/// Parses a command already decoded as JSON (one element of a batch).
pub(crate) fn from_value(value: Value) -> Result<Command, CommandError> {
    let obj = value.as_object().ok_or(CommandError::NotAnObject)?;
    let id = match obj.get("id") {
        None | Some(Value::Null) => return Err(CommandError::MissingId),
        Some(Value::String(s)) => CommandId::parse(s).map_err(CommandError::InvalidId)?,
        Some(_) => {
            return Err(CommandError::InvalidId(IdError::BadChar {
                what: "command id",
                rule: "a JSON string",
                at: 0,
            }))
        }
    };
    let (kind, action) = labels_of(obj.get("type"), obj.get("action"));
    let mut timeout = None;
    let request = match obj.get("timeout") {
        None | Some(Value::Null) => Ok(()),
        Some(t) => duration::deserialize_wire(t.clone())
            .map(|d| timeout = Some(d))
            .map_err(|e| FieldError::new("timeout", e.to_string())),
    }
    .and_then(|()| parse_request(obj.get("type"), obj.get("action"), obj.get("params")));
    Ok(Command {
        id,
        kind,
        action,
        request,
        timeout,
        echo: value,
    })
}

/// `type` and `action` as labels for logs and metrics: known names pass,
/// anything else becomes "invalid", so hostile input cannot grow the
/// metric label sets.
fn labels_of(kind: Option<&Value>, action: Option<&Value>) -> (String, String) {
    let kind = kind.and_then(Value::as_str);
    let action = action.and_then(Value::as_str);
    match ACTIONS.iter().find(|(k, _)| Some(*k) == kind) {
        Some((k, actions)) => {
            let a = action.filter(|a| actions.contains(a)).unwrap_or("invalid");
            (k.to_string(), a.to_string())
        }
        None => ("invalid".into(), "invalid".into()),
    }
}

fn parse_request(
    kind: Option<&Value>,
    action: Option<&Value>,
    params: Option<&Value>,
) -> Result<Request, FieldError> {
    let kind = match kind {
        None | Some(Value::Null) => {
            return Err(FieldError::new(
                "type",
                "is required: one of session, service, system",
            ))
        }
        Some(Value::String(s)) => s.as_str(),
        Some(_) => {
            return Err(FieldError::new(
                "type",
                "must be a string: one of session, service, system",
            ))
        }
    };
    let Some((_, actions)) = ACTIONS.iter().find(|(k, _)| *k == kind) else {
        return Err(FieldError::new(
            "type",
            format!(
                "unknown type {:?}; expected session, service or system",
                clip(kind)
            ),
        ));
    };
    let action = match action {
        None | Some(Value::Null) => {
            return Err(FieldError::new(
                "action",
                format!("is required: one of {}", actions.join(", ")),
            ))
        }
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(FieldError::new("action", "must be a string")),
    };
    if !actions.contains(&action) {
        return Err(FieldError::new(
            "action",
            format!(
                "unknown action {:?} for type {kind}; expected one of {}",
                clip(action),
                actions.join(", ")
            ),
        ));
    }
    let params = match params {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => return Err(FieldError::new("params", "must be a JSON object")),
    };
    let request = match (kind, action) {
        ("session", "create") => Request::SessionCreate(typed(params)?),
        ("session", "start") => Request::SessionStart(typed(params)?),
        ("session", "stop") => Request::SessionStop(typed(params)?),
        ("session", "destroy") => Request::SessionDestroy(typed(params)?),
        ("session", "list") => Request::SessionList(typed(params)?),
        ("session", "exec") => Request::SessionExec(typed(params)?),
        ("service", "list") => Request::ServiceList(typed(params)?),
        ("service", "status") => Request::ServiceStatus(typed(params)?),
        ("system", "status") => no_params(params, Request::SystemStatus)?,
        ("system", "info") => no_params(params, Request::SystemInfo)?,
        ("system", "health") => no_params(params, Request::SystemHealth)?,
        _ => unreachable!("the action table and this match list the same actions"),
    };
    validate(&request)?;
    Ok(request)
}

fn no_params(params: Value, r: Request) -> Result<Request, FieldError> {
    match params.as_object().and_then(|o| o.keys().next()) {
        Some(k) => Err(FieldError::new(
            format!("params.{}", clip(k)),
            "unknown parameter; this action takes none",
        )),
        None => Ok(r),
    }
}

/// Decodes params, naming the failing field (`params.resources.memory`).
fn typed<T: serde::de::DeserializeOwned>(params: Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(params).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde reports missing and unknown fields at the parent; name the field itself.
        let named = ["missing field `", "unknown field `"]
            .iter()
            .find_map(|p| inner.strip_prefix(p).and_then(|r| r.split('`').next()));
        let field = match (path.as_str(), named) {
            (".", Some(name)) => format!("params.{}", clip(name)),
            (".", None) => "params".to_string(),
            (p, Some(name)) if !p.ends_with(name) => format!("params.{p}.{}", clip(name)),
            (p, _) => format!("params.{}", clip(p)),
        };
        let message = if inner.starts_with("missing field") {
            "is required".to_string()
        } else if inner.starts_with("unknown field") {
            format!(
                "unknown parameter; {}",
                inner
                    .split_once(", ")
                    .map(|x| x.1)
                    .unwrap_or("not accepted here")
            )
        } else {
            inner
        };
        FieldError::new(field, message)
    })
}

/// Checks that go beyond types: no NUL bytes, sane numbers, shell rules.
fn validate(r: &Request) -> Result<(), FieldError> {
    match r {
        Request::SessionCreate(p) => {
            if let Some(image) = &p.image {
                text("params.image", image, 512)?;
                if image.is_empty() {
                    return Err(FieldError::new("params.image", "must not be empty"));
                }
            }
            if let Some(w) = &p.workspace_path {
                if !w.is_absolute() {
                    return Err(FieldError::new(
                        "params.workspace_path",
                        "must be an absolute host path",
                    ));
                }
                text("params.workspace_path", &w.to_string_lossy(), 4096)?;
            }
            env_map("params.env", &p.env)?;
            for (k, v) in &p.labels {
                if k.is_empty() {
                    return Err(FieldError::new(
                        "params.labels",
                        "label names must not be empty",
                    ));
                }
                text("params.labels", k, 256)?;
                text("params.labels", v, 4096)?;
                if k.starts_with(super::tenant::RESERVED_LABEL_PREFIX) {
                    return Err(FieldError::new(
                        "params.labels",
                        format!(
                            "{:?} uses the prefix {:?}, which is the agent's (it sets the tenant there); pick another key",
                            clip(k),
                            super::tenant::RESERVED_LABEL_PREFIX
                        ),
                    ));
                }
            }
            if let Some(mem) = p.resources.memory {
                if mem < 6 << 20 {
                    return Err(FieldError::new(
                        "params.resources.memory",
                        "must be at least 6m",
                    ));
                }
            }
            if let Some(cpus) = p.resources.cpus {
                if !(0.01..=1024.0).contains(&cpus) {
                    return Err(FieldError::new(
                        "params.resources.cpus",
                        "must be between 0.01 and 1024",
                    ));
                }
            }
            if let Some(pids) = p.resources.pids {
                if pids < 1 {
                    return Err(FieldError::new(
                        "params.resources.pids",
                        "must be at least 1",
                    ));
                }
            }
            if let Some(cmd) = &p.command {
                argv("params.command", cmd)?;
            }
            if p.ports.len() > 64 {
                return Err(FieldError::new(
                    "params.ports",
                    "at most 64 ports can be published",
                ));
            }
        }
        Request::SessionExec(p) => {
            match (&p.command, p.shell) {
                (CommandLine::Shell(_), false) => {
                    return Err(FieldError::new(
                        "params.command",
                        "a string needs \"shell\": true; otherwise pass an argv array",
                    ))
                }
                (CommandLine::Shell(s), true) => text("params.command", s, 1 << 20)?,
                (CommandLine::Argv(v), _) => argv("params.command", v)?,
            }
            env_map("params.env", &p.env)?;
            if let Some(w) = &p.workdir {
                text("params.workdir", w, 4096)?;
                if !w.starts_with('/') {
                    return Err(FieldError::new(
                        "params.workdir",
                        "must be an absolute path",
                    ));
                }
            }
            if let Some(u) = &p.user {
                text("params.user", u, 256)?;
            }
            if let Some(s) = &p.stdin {
                text("params.stdin", s, usize::MAX)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn text(field: &str, s: &str, max: usize) -> Result<(), FieldError> {
    if s.len() > max {
        return Err(FieldError::new(
            field,
            format!("is longer than {max} bytes"),
        ));
    }
    if s.contains('\0') {
        return Err(FieldError::new(field, "must not contain NUL bytes"));
    }
    Ok(())
}

fn argv(field: &str, v: &[String]) -> Result<(), FieldError> {
    if v.is_empty() || v[0].is_empty() {
        return Err(FieldError::new(field, "must be a non-empty argv array"));
    }
    for a in v {
        text(field, a, 1 << 20)?;
    }
    Ok(())
}

fn env_map(field: &str, env: &BTreeMap<String, String>) -> Result<(), FieldError> {
    for (k, v) in env {
        if k.is_empty() || k.contains('=') {
            return Err(FieldError::new(
                field,
                format!("{:?} is not a variable name", clip(k)),
            ));
        }
        text(field, k, 1024)?;
        text(field, v, 1 << 20)?;
    }
    Ok(())
}

/// Keeps hostile input out of error messages beyond a short, printable prefix.
pub(crate) fn clip(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().count() > 64 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(v: Value) -> Result<Request, FieldError> {
        from_value(v).unwrap().request
    }

    #[test]
    fn refuses_what_cannot_be_answered() {
        assert!(matches!(parse(b"{nope"), Err(CommandError::Malformed(_))));
        assert_eq!(parse(b"[1]").unwrap_err(), CommandError::NotAnObject);
        assert_eq!(
            parse(br#"{"type":"system"}"#).unwrap_err(),
            CommandError::MissingId
        );
        assert!(matches!(
            parse(br#"{"id":"../x"}"#),
            Err(CommandError::InvalidId(_))
        ));
        assert!(matches!(
            parse(br#"{"id":7}"#),
            Err(CommandError::InvalidId(_))
        ));
    }

    #[test]
    fn parses_exec() {
        let r = req(json!({"id":"c1","type":"session","action":"exec",
            "params":{"session_id":"web-1","command":["ls","-la"],"timeout":"5s"}}));
        let Ok(Request::SessionExec(p)) = r else {
            panic!("{r:?}")
        };
        assert_eq!(p.argv(), vec!["ls", "-la"]);
        assert_eq!(p.timeout, Some(Duration::from_secs(5)));
    }

    #[test]
    fn names_the_bad_field() {
        let e = req(json!({"id":"c","type":"session","action":"exec","params":{"command":["ls"]}}))
            .unwrap_err();
        assert_eq!(e.field, "params.session_id");
        assert_eq!(e.message, "is required");
        let e = req(json!({"id":"c","type":"session","action":"create","params":{"session_id":"a","resources":{"memory":"lots"}}})).unwrap_err();
        assert_eq!(e.field, "params.resources.memory");
        let e = req(json!({"id":"c","type":"session","action":"create","params":{"session_id":"a","bogus":1}})).unwrap_err();
        assert_eq!(e.field, "params.bogus");
        let e =
            req(json!({"id":"c","type":"session","action":"start","params":{"session_id":"../x"}}))
                .unwrap_err();
        assert_eq!(e.field, "params.session_id");
        let e = req(json!({"id":"c","type":"session","action":"exec","params":{"session_id":"a","command":"ls"}})).unwrap_err();
        assert_eq!(e.field, "params.command");
        let e = req(json!({"id":"c","type":"session","action":"exec","params":{"session_id":"a","command":[]}})).unwrap_err();
        assert_eq!(e.field, "params.command");
        let e = req(json!({"id":"c","type":"session","action":"exec","params":{"session_id":5,"command":["x"]}})).unwrap_err();
        assert_eq!(e.field, "params.session_id");
        let e =
            req(json!({"id":"c","type":"system","action":"status","params":{"x":1}})).unwrap_err();
        assert_eq!(e.field, "params.x");
        let e =
            req(json!({"id":"c","type":"system","action":"status","timeout":"soon"})).unwrap_err();
        assert_eq!(e.field, "timeout");
    }

    #[test]
    fn unknown_type_and_action() {
        let e = req(json!({"id":"c","type":"nuke","action":"all"})).unwrap_err();
        assert_eq!(e.field, "type");
        let e = req(json!({"id":"c","type":"system","action":"reboot"})).unwrap_err();
        assert_eq!(e.field, "action");
        assert!(e.message.contains("status, info, health"));
        let c = from_value(json!({"id":"c","type":"Sys tem\n","action":"x"})).unwrap();
        assert_eq!(c.name(), "invalid.invalid");
        let c = from_value(json!({"id":"c","type":"system","action":"made_up"})).unwrap();
        assert_eq!(c.name(), "system.invalid");
    }

    #[test]
    fn shell_string_and_ports() {
        let r = req(
            json!({"id":"c","type":"session","action":"exec","params":{"session_id":"a","command":"echo hi","shell":true}}),
        );
        let Ok(Request::SessionExec(p)) = r else {
            panic!()
        };
        assert_eq!(p.argv(), vec!["/bin/sh", "-c", "echo hi"]);
        let r = req(
            json!({"id":"c","type":"session","action":"create","params":{"session_id":"a","ports":[8080,"53/udp"]}}),
        );
        let Ok(Request::SessionCreate(p)) = r else {
            panic!()
        };
        assert_eq!(p.ports[0].to_string(), "8080/tcp");
        assert_eq!(p.ports[1].to_string(), "53/udp");
        assert_eq!(
            req(
                json!({"id":"c","type":"session","action":"create","params":{"session_id":"a","ports":[0]}})
            ),
            Err(FieldError::new(
                "params.ports[0]",
                "\"0\" is not a port; use 1-65535 with an optional /tcp or /udp"
            ))
        );
    }

    #[test]
    fn read_only_set() {
        assert!(
            from_value(json!({"id":"c","type":"system","action":"status"}))
                .unwrap()
                .read_only()
        );
        assert!(!from_value(
            json!({"id":"c","type":"session","action":"destroy","params":{"session_id":"a"}})
        )
        .unwrap()
        .read_only());
    }

    proptest::proptest! {
        /// Any body: a command or a refusal, never a panic.
        #[test]
        fn prop_any_body_is_a_command_or_refused(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = parse(&body);
        }

        /// Any JSON with a valid id becomes a command with that id; its
        /// request may be a field error, never a panic.
        #[test]
        fn prop_any_json_with_an_id_is_answered(
            kind in proptest::option::of("(session|service|system|plugin|[a-z]{0,8})"),
            action in proptest::option::of("[a-z]{0,10}"),
            params in json_value(3),
            timeout in json_value(1),
        ) {
            let v = json!({"id": "c-1", "type": kind, "action": action, "params": params, "timeout": timeout});
            let c = from_value(v).unwrap();
            proptest::prop_assert_eq!(c.id.as_str(), "c-1");
        }
    }

    /// JSON values of depth at most `depth`.
    fn json_value(depth: u32) -> proptest::prelude::BoxedStrategy<Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(depth, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(
                    "(session_id|command|ports|env|resources|timeout|[a-z]{1,6})",
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
        .boxed()
    }
}
