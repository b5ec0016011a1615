//! Runs one command: routes it to the system documents or to the provider
//! that owns the session, and turns the outcome into a result.
//!
//! Called on worker threads, except [`Runtime::list_sessions_for_api`],
//! which an API request's thread calls. Provider errors map to result codes here,
//! in one place (`failure_for`).

use super::sessions::{NotAdmitted, Over, OverQuota, Share};
use super::{status, Runtime};
use crate::protocol::command::{CreateParams, ExecParams, ListParams, Request};
use crate::protocol::event::{Event, SessionChange, SessionEvent, SessionState};
use crate::protocol::tenant::{Tenancy, CPUS_LABEL, MEMORY_LABEL, TENANT_LABEL};
use crate::protocol::{Code, Command, CommandResult, ProviderKind, SessionId};
use crate::providers::{
    ExecSpec, OutputSink, Provider, ProviderError, Session, SessionSpec, SessionStatus,
};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Default grace for `session stop` when the command gives none.
const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// Runs `cmd` for a sender of `reach`: the sessions it lists or acts on
/// are those within that reach; others are as if they did not exist.
pub(crate) fn execute(
    rt: &Runtime,
    cmd: &Command,
    reach: &Tenancy,
    sink: &mut dyn OutputSink,
) -> CommandResult {
    let started = SystemTime::now();
    let request = match &cmd.request {
        Ok(r) => r,
        Err(field) => {
            return CommandResult::failure(
                cmd,
                &rt.node_id,
                started,
                Code::Invalid,
                field.to_string(),
            )
        }
    };
    let timeout = rt.config.timeout_for(cmd.timeout_asked());
    let outcome: Result<Value, Failure> = match request {
        Request::SystemStatus => Ok(status::status(rt)),
        Request::SystemInfo => Ok(status::info(rt)),
        Request::SystemHealth => Ok(status::health(rt).1),
        Request::SessionList(p) => rt.list_sessions(p.provider, reach).map(|s| json!(s)),
        Request::SessionCreate(p) => create(rt, reach, p, timeout),
        Request::SessionStart(p) => with_session(rt, reach, &p.session_id, |prov| {
            let s = prov.start(&p.session_id)?;
            Ok(session_changed(rt, s, SessionChange::Started))
        }),
        Request::SessionStop(p) => {
            let grace = p.timeout.unwrap_or(DEFAULT_STOP_GRACE).min(timeout);
            with_session(rt, reach, &p.session_id, |prov| {
                let s = prov.stop(&p.session_id, grace)?;
                Ok(session_changed(rt, s, SessionChange::Stopped))
            })
        }
        Request::SessionDestroy(p) => destroy(rt, reach, &p.session_id),
        Request::SessionExec(p) => {
            return exec(rt, cmd, reach, p, timeout, sink, started);
        }
        Request::ServiceList(p) => service_list(rt, reach, p),
        Request::ServiceStatus(p) => service_status(rt, reach, &p.session_id),
    };
    match outcome {
        Ok(data) => CommandResult::success(cmd, &rt.node_id, started, data),
        Err(f) => CommandResult::failure(cmd, &rt.node_id, started, f.code, f.message),
    }
}

/// A failed outcome on its way to a result (its status follows from the
/// code), or to an API error for `GET /api/v1/sessions`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Failure {
    pub(crate) code: Code,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(code: Code, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl From<ProviderError> for Failure {
    fn from(e: ProviderError) -> Failure {
        failure_for(e)
    }
}

/// The one mapping from provider errors to result status and code.
fn failure_for(e: ProviderError) -> Failure {
    let code = match &e {
        ProviderError::NotFound(_) => Code::NotFound,
        ProviderError::Conflict(_) => Code::Conflict,
        ProviderError::Invalid(_) => Code::Invalid,
        ProviderError::Unavailable(_) => Code::Unavailable,
        ProviderError::Timeout(_) => Code::Timeout,
        ProviderError::Failed(_) => Code::Failed,
    };
    Failure::new(code, e.to_string())
}

fn provider(rt: &Runtime, kind: ProviderKind) -> Result<Arc<dyn Provider>, Failure> {
    rt.registry.get(kind).ok_or_else(|| {
        Failure::new(
            Code::Unavailable,
            format!(
                "provider {kind} is not enabled on this node (providers: {})",
                rt.registry
                    .kinds()
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })
}

/// A session within `reach`: the table, else a fresh listing. Another
/// tenant's session is not there, for this sender.
fn session(rt: &Runtime, reach: &Tenancy, id: &SessionId) -> Option<Session> {
    let found = rt.sessions.get(id.as_str()).or_else(|| {
        refresh_sessions(rt, None);
        rt.sessions.get(id.as_str())
    })?;
    reach.reaches_labels(&found.labels).then_some(found)
}

/// Which provider owns a session within `reach`.
fn owner(rt: &Runtime, reach: &Tenancy, id: &SessionId) -> Option<Arc<dyn Provider>> {
    session(rt, reach, id).and_then(|s| rt.registry.get(s.provider))
}

/// The same words whether the session is missing or another tenant's.
fn no_session(id: &SessionId) -> Failure {
    Failure::new(
        Code::NotFound,
        format!("no session {id} on this node; `session list` shows the ones there are"),
    )
}

fn with_session(
    rt: &Runtime,
    reach: &Tenancy,
    id: &SessionId,
    f: impl FnOnce(&Arc<dyn Provider>) -> Result<Value, ProviderError>,
) -> Result<Value, Failure> {
    match owner(rt, reach, id) {
        Some(p) => f(&p).map_err(failure_for),
        None => Err(no_session(id)),
    }
}

/// Lists providers live (all, or one) and refreshes the table from them.
fn refresh_sessions(rt: &Runtime, only: Option<ProviderKind>) -> (Vec<Session>, Vec<String>) {
    let mut all = Vec::new();
    let mut errors = Vec::new();
    for p in rt.registry.all() {
        if only.is_some_and(|k| k != p.kind()) {
            continue;
        }
        match rt.sync_sessions(p.as_ref()) {
            Ok(list) => all.extend(list),
            Err(e) => errors.push(format!("{}: {e}", p.kind())),
        }
    }
    (all, errors)
}

impl Runtime {
    /// Every session (or one provider's) within `reach`, asked of the
    /// providers now; the table follows. `session list` and `GET
    /// /api/v1/sessions` both come here. A provider that cannot answer is
    /// an error only when it was the one asked for.
    pub(crate) fn list_sessions(
        &self,
        only: Option<ProviderKind>,
        reach: &Tenancy,
    ) -> Result<Vec<Session>, Failure> {
        if let Some(kind) = only {
            provider(self, kind)?;
        }
        let (mut sessions, errors) = refresh_sessions(self, only);
        if sessions.is_empty() && !errors.is_empty() && only.is_some() {
            return Err(Failure::new(Code::Unavailable, errors.join("; ")));
        }
        for e in &errors {
            log::warn!("session list: provider unavailable: {e}");
        }
        sessions.retain(|s| reach.reaches_labels(&s.labels));
        sessions.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(sessions)
    }

    /// `GET /api/v1/sessions`, on the request's thread: the checks a
    /// `session list` command gets (policy; the caller checks that the
    /// agent is accepting), at most `workers` listings at once, and a
    /// panic is a failure, not a dropped request.
    pub(crate) fn list_sessions_for_api(
        &self,
        only: Option<ProviderKind>,
        reach: &Tenancy,
    ) -> Result<Vec<Session>, Failure> {
        if !self.config.command_allowed("session.list") {
            return Err(Failure::new(
                Code::Rejected,
                "session.list is not in allowed_commands on this node",
            ));
        }
        let Some(_pass) = self.listings.enter(self.config.command_timeout) else {
            return Err(Failure::new(
                Code::Unavailable,
                format!(
                    "{} session listings are already running; retry shortly",
                    self.config.workers
                ),
            ));
        };
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.list_sessions(only, reach)))
            .unwrap_or_else(|panic| {
                let what = super::panic_text(panic.as_ref());
                log::error!("session listing panicked: {what}");
                Err(Failure::new(
                    Code::Internal,
                    format!("internal error while listing sessions ({what}); the agent keeps running, please report this"),
                ))
            })
    }
}

fn create(
    rt: &Runtime,
    reach: &Tenancy,
    p: &CreateParams,
    timeout: Duration,
) -> Result<Value, Failure> {
    let kind = p.provider.unwrap_or(rt.config.provider);
    let prov = provider(rt, kind)?;
    let limits = &rt.config.limits;
    let resources = super::policy::with_defaults(&p.resources, &limits.session_defaults);
    // What the session will really take: QEMU gives whole vCPUs.
    let cpus = match kind {
        ProviderKind::Qemu => resources.cpus.map(f64::ceil),
        _ => resources.cpus,
    };
    let share = Share {
        tenant: reach.tenant_str().map(str::to_string),
        memory: resources.memory,
        cpus,
    };
    let quota = reach
        .tenant
        .as_ref()
        .map(|t| limits.tenant_quotas.get(t).unwrap_or(&limits.tenant_quota));
    // Just after a start, the monitor may not have listed every provider
    // yet: the limits count what exists, so list now.
    if rt.registry.all().any(|p| !rt.sessions.listed(p.kind())) {
        let (_, errors) = refresh_sessions(rt, None);
        // A quota cannot be counted without every tenant session.
        if quota.is_some() && !errors.is_empty() {
            return Err(Failure::new(
                Code::Unavailable,
                format!(
                    "tenant quotas cannot be counted while a provider cannot be listed ({}); retry when it is back",
                    errors.join("; ")
                ),
            ));
        }
    }
    // Held until the created session is in the table.
    let _admitted = rt
        .sessions
        .reserve(p.session_id.as_str(), share.clone(), limits.max_sessions, quota)
        .map_err(|refused| match refused {
            // Another tenant's: taken, and nothing more is said of it.
            NotAdmitted::Exists(existing) if !reach.reaches_labels(&existing.labels) => {
                Failure::new(
                    Code::Conflict,
                    format!(
                        "session id {} is taken on this node; pick another id",
                        p.session_id
                    ),
                )
            }
            NotAdmitted::Exists(existing) => Failure::new(
                Code::Conflict,
                format!(
                    "session {} already exists ({}, {}); destroy it first or pick another id",
                    existing.id,
                    existing.provider,
                    existing.status.as_str()
                ),
            ),
            NotAdmitted::Creating => Failure::new(
                Code::Conflict,
                format!(
                    "session {} is being created by another command; wait for it or pick another id",
                    p.session_id
                ),
            ),
            NotAdmitted::Full(max) => Failure::new(
                Code::Rejected,
                format!(
                    "limits.max_sessions ({max}) reached, counting sessions being created; destroy a session or raise the limit"
                ),
            ),
            NotAdmitted::Quota(over) => Failure::new(Code::Rejected, quota_refusal(&over)),
        })?;
    // The runtime is given the sealed path, never the caller's.
    let workspace = match &p.workspace_path {
        // A tenant's caller only within its tenant's directories.
        Some(w) => Some(rt.workspaces.seal(
            &p.session_id,
            w,
            reach.tenant.as_ref().filter(|_| !reach.all),
        )?),
        None => None,
    };
    // The protocol refuses `vendetta.*` labels in a command: these are
    // ours, written even when empty, so that an image's own labels (which
    // Docker copies to its containers) can never supply them.
    let mut labels = p.labels.clone();
    let ours = [
        (TENANT_LABEL, reach.tenant_str().map(str::to_string)),
        (MEMORY_LABEL, share.memory.map(|m| m.to_string())),
        (CPUS_LABEL, share.cpus.map(|c| c.to_string())),
    ];
    for (key, value) in ours {
        labels.insert(key.to_string(), value.unwrap_or_default());
    }
    let spec = SessionSpec {
        id: p.session_id.clone(),
        node_id: rt.node_id.clone(),
        image: p.image.clone(),
        workspace,
        env: p.env.clone(),
        ports: p.ports.clone(),
        resources,
        labels,
        command: p.command.clone(),
        timeout,
        limits_must_hold: quota.is_some_and(|q| q.memory.is_some() || q.cpus.is_some()),
    };
    let session = prov.create(&spec).inspect_err(|_| {
        if spec.workspace.is_some() {
            rt.workspaces.release(p.session_id.as_str());
        }
    })?;
    Ok(session_changed(rt, session, SessionChange::Created))
}

/// Why a tenant's create is refused by its quota, naming the rule.
fn quota_refusal(over: &OverQuota) -> String {
    let (t, rule) = (&over.tenant, over.rule);
    let key = format!("limits.tenant_quotas.{t} (or limits.tenant_quota)");
    let amount = |v: f64| match rule {
        "memory" => crate::protocol::size::format(v as u64),
        _ => format!("{v}"),
    };
    match &over.how {
        Over::Unsized => format!(
            "tenant {t} has a {rule} quota ({key}.{rule}), so a create must name params.resources.{rule} (or the node set limits.session_defaults.{rule})"
        ),
        Over::Unlimited(id) => format!(
            "tenant {t} has a {rule} quota ({key}.{rule} = {}), and its session {id} has no {rule} limit, so it counts as all of it; destroy that session",
            amount(over.limit)
        ),
        Over::Used(used) => format!(
            "tenant {t} would pass its quota {key}.{rule} = {} ({} in use or being created); destroy one of its sessions or ask for less",
            amount(over.limit),
            amount(*used)
        ),
    }
}

fn destroy(rt: &Runtime, reach: &Tenancy, id: &SessionId) -> Result<Value, Failure> {
    let Some(prov) = owner(rt, reach, id) else {
        // Idempotent: destroying what is not there succeeds (and frees a
        // seal a crash may have left, unless the session is another
        // tenant's: then it is only "not there" for this sender).
        if rt.sessions.get(id.as_str()).is_none() && !rt.sessions.is_creating(id.as_str()) {
            rt.workspaces.release(id.as_str());
        }
        return Ok(json!({"id": id, "destroyed": false, "existed": false}));
    };
    let existed = prov.destroy(id)?;
    rt.workspaces.release(id.as_str());
    if let Some(s) = rt.sessions.remove(id.as_str()) {
        rt.events.publish(Event::Session(SessionEvent {
            status: SessionState::Destroyed,
            ..SessionEvent::by_command(&s, SessionChange::Destroyed)
        }));
    }
    log::info!(session_id = id.as_str(); "session destroyed");
    Ok(json!({"id": id, "destroyed": existed, "existed": existed}))
}

/// Updates the table, publishes the event and returns the record.
fn session_changed(rt: &Runtime, s: Session, change: SessionChange) -> Value {
    // The table first: a client acting on the event finds the session.
    rt.sessions.upsert(s.clone());
    rt.events
        .publish(Event::Session(SessionEvent::by_command(&s, change)));
    log::info!(session_id = s.id.as_str(), provider = s.provider.as_str(); "session {}", change.as_str());
    serde_json::to_value(&s).unwrap_or(Value::Null)
}

fn exec(
    rt: &Runtime,
    cmd: &Command,
    reach: &Tenancy,
    p: &ExecParams,
    timeout: Duration,
    sink: &mut dyn OutputSink,
    started: SystemTime,
) -> CommandResult {
    let node = &rt.node_id;
    let Some(prov) = owner(rt, reach, &p.session_id) else {
        let f = no_session(&p.session_id);
        return CommandResult::failure(cmd, node, started, f.code, f.message);
    };
    let mut env = p.env.clone();
    env.insert(
        crate::providers::COMMAND_ID_ENV.to_string(),
        cmd.id.to_string(),
    );
    let spec = ExecSpec {
        argv: p.argv(),
        env,
        workdir: p.workdir.clone(),
        user: p.user.clone(),
        stdin: p.stdin.as_ref().map(|s| s.as_bytes().to_vec()),
        timeout,
        max_output: usize::try_from(rt.config.limits.max_output).unwrap_or(usize::MAX),
    };
    match prov.exec(&p.session_id, &spec, sink) {
        Ok(out) => {
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            let exit_code = out.exit_code.unwrap_or(-1);
            let data = json!({
                "exit_code": out.exit_code,
                "stdout": stdout,
                "stderr": stderr,
                "stdout_truncated": out.stdout_truncated,
                "stderr_truncated": out.stderr_truncated,
                "timed_out": out.timed_out,
            });
            let mut r = if out.timed_out {
                let mut r = CommandResult::failure(
                    cmd,
                    node,
                    started,
                    Code::Timeout,
                    format!(
                        "exec timed out after {} and was killed",
                        crate::protocol::duration::format(timeout)
                    ),
                );
                r.data = data;
                r
            } else {
                CommandResult::success(cmd, node, started, data)
            };
            r.output = stdout;
            r.exit_code = exit_code;
            r
        }
        Err(e) => {
            let f = failure_for(e);
            CommandResult::failure(cmd, node, started, f.code, f.message)
        }
    }
}

fn service_list(rt: &Runtime, reach: &Tenancy, p: &ListParams) -> Result<Value, Failure> {
    let sessions = rt.list_sessions(p.provider, reach)?;
    let services: Vec<Value> = sessions
        .iter()
        .filter(|s| s.status == SessionStatus::Running)
        .map(|s| service_doc(rt, s))
        .collect();
    Ok(json!(services))
}

fn service_status(rt: &Runtime, reach: &Tenancy, id: &SessionId) -> Result<Value, Failure> {
    let s = session(rt, reach, id).ok_or_else(|| no_session(id))?;
    Ok(service_doc(rt, &s))
}

fn service_doc(rt: &Runtime, s: &Session) -> Value {
    let health = match (s.status, rt.registry.get(s.provider)) {
        (SessionStatus::Running, Some(p)) => {
            serde_json::to_value(p.service_health(s)).unwrap_or(Value::Null)
        }
        _ => {
            json!({"status": "down", "source": "session", "detail": format!("session is {}", s.status.as_str())})
        }
    };
    json!({"id": s.id, "provider": s.provider, "status": s.status.as_str(), "ports": s.ports, "health": health})
}
