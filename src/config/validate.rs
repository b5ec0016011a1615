//! What types cannot check: ranges, formats, combinations.

use super::{Config, ConfigError, JwtAlgorithm, Lxc};
use std::path::Path;
use std::time::Duration;

impl Config {
    /// Checks what types cannot: ranges, formats, combinations.
    pub(crate) fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.into(),
            message,
        };
        if !self.api_token.is_empty() && self.api_token.expose().len() < 32 {
            return Err(bad(
                "api_token",
                format!(
                    "is {} bytes; use at least 32, e.g. the output of `openssl rand -hex 24`",
                    self.api_token.expose().len()
                ),
            ));
        }
        if let Some(tcp) = self.listen.tcp {
            if !tcp.ip().is_loopback() && !self.metrics_auth && !self.insecure_listen {
                return Err(bad(
                    "listen",
                    format!(
                        "{tcp} is not a loopback address, and /metrics answers without a token there; set metrics_auth: true, or insecure_listen: true to serve it so anyway"
                    ),
                ));
            }
        }
        let group = &self.listen_group;
        if !group.is_empty() {
            if self.listen.unix.is_none() {
                return Err(bad(
                    "listen_group",
                    "is the group of the API's Unix socket, but listen names none (unix:/path)"
                        .into(),
                ));
            }
            let name_ok = group.len() <= 32
                && group
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            if !name_ok {
                return Err(bad(
                    "listen_group",
                    format!("{group:?} is not a group name or number"),
                ));
            }
        }
        if !self.coordination_url.is_empty() {
            let u = &self.coordination_url;
            if !(u.starts_with("http://") || u.starts_with("https://")) || u.len() < 10 {
                return Err(bad(
                    "coordination_url",
                    format!("{u:?} is not an http:// or https:// URL"),
                ));
            }
            if crate::config::url_authority(u).contains('@') {
                // It would show in /health and in logs; the token has its own key.
                return Err(bad(
                    "coordination_url",
                    "must not carry credentials (user:password@); put the token in auth_token"
                        .into(),
                ));
            }
        }
        if self.workers == 0 || self.workers > 256 {
            return Err(bad(
                "workers",
                format!("{} is out of range; use 1 to 256", self.workers),
            ));
        }
        if self.queue_size == 0 || self.queue_size > 100_000 {
            return Err(bad(
                "queue_size",
                format!("{} is out of range; use 1 to 100000", self.queue_size),
            ));
        }
        if self.command_timeout.is_zero() {
            return Err(bad("command_timeout", "must be more than 0s".into()));
        }
        if let Some(max) = self.max_command_timeout {
            if max < self.command_timeout {
                return Err(bad(
                    "max_command_timeout",
                    "must not be less than command_timeout".into(),
                ));
            }
        }
        if self.monitor_interval < Duration::from_millis(100) {
            return Err(bad("monitor_interval", "must be at least 100ms".into()));
        }
        if self.heartbeat.interval < Duration::from_millis(100) {
            return Err(bad("heartbeat.interval", "must be at least 100ms".into()));
        }
        if self.heartbeat.timeout.is_zero() {
            return Err(bad("heartbeat.timeout", "must be more than 0s".into()));
        }
        if self.retry_policy.backoff.is_zero() {
            return Err(bad(
                "retry_policy.backoff",
                "must be more than 0s (a zero backoff would spin)".into(),
            ));
        }
        if self.retry_policy.max_backoff < self.retry_policy.backoff {
            return Err(bad(
                "retry_policy.max_backoff",
                "must not be less than retry_policy.backoff".into(),
            ));
        }
        if self.coordination.min_heartbeat_interval > self.coordination.max_heartbeat_interval {
            return Err(bad(
                "coordination.min_heartbeat_interval",
                "must not exceed max_heartbeat_interval".into(),
            ));
        }
        if self.coordination.min_poll_wait > self.coordination.max_poll_wait {
            return Err(bad(
                "coordination.min_poll_wait",
                "must not exceed max_poll_wait".into(),
            ));
        }
        if self.providers.is_empty() {
            return Err(bad(
                "providers",
                "must enable at least one of docker, lxc, qemu".into(),
            ));
        }
        if !self.providers.contains(&self.provider) {
            return Err(bad(
                "provider",
                format!(
                    "{} is not in providers [{}]",
                    self.provider,
                    self.providers
                        .iter()
                        .map(|p| p.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        if self.limits.max_output < 1024 {
            return Err(bad("limits.max_output", "must be at least 1k".into()));
        }
        if self.limits.max_concurrent_execs == 0 {
            return Err(bad(
                "limits.max_concurrent_execs",
                "must be at least 1".into(),
            ));
        }
        for (name, r) in [
            ("limits.session_defaults", &self.limits.session_defaults),
            ("limits.session_max", &self.limits.session_max),
        ] {
            amounts(name, r.memory, r.cpus, 1024.0).map_err(|(k, m)| bad(&k, m))?;
            if r.pids.is_some_and(|p| p < 1) {
                return Err(bad(&format!("{name}.pids"), "must be at least 1".into()));
            }
        }
        let (d, m) = (&self.limits.session_defaults, &self.limits.session_max);
        let above = |a: Option<f64>, b: Option<f64>| a.zip(b).is_some_and(|(a, b)| a > b);
        for (key, over) in [
            (
                "memory",
                above(d.memory.map(|v| v as f64), m.memory.map(|v| v as f64)),
            ),
            ("cpus", above(d.cpus, m.cpus)),
            (
                "pids",
                above(d.pids.map(|v| v as f64), m.pids.map(|v| v as f64)),
            ),
        ] {
            if over {
                return Err(bad(
                    &format!("limits.session_defaults.{key}"),
                    format!("is more than limits.session_max.{key}"),
                ));
            }
        }
        let quotas =
            std::iter::once(("limits.tenant_quota".to_string(), &self.limits.tenant_quota)).chain(
                self.limits
                    .tenant_quotas
                    .iter()
                    .map(|(t, q)| (format!("limits.tenant_quotas.{t}"), q)),
            );
        for (name, q) in quotas {
            if q.max_sessions == Some(0) {
                return Err(bad(
                    &format!("{name}.max_sessions"),
                    "must be at least 1".into(),
                ));
            }
            amounts(&name, q.memory, q.cpus, 65536.0).map_err(|(k, m)| bad(&k, m))?;
        }
        if self.limits.max_body < 1024 {
            return Err(bad("limits.max_body", "must be at least 1k".into()));
        }
        for pattern in &self.allowed_commands {
            if !valid_command_pattern(pattern) {
                return Err(bad(
                    "allowed_commands",
                    format!("{pattern:?} is not a command pattern; use *, session.*, or type.action such as system.status"),
                ));
            }
        }
        for (i, root) in self.workspace_roots.iter().enumerate() {
            if !root.is_absolute() {
                return Err(bad(
                    &format!("workspace_roots[{i}]"),
                    format!("{} is not an absolute path", root.display()),
                ));
            }
        }
        if let Some(d) = &self.cache_dir {
            if !d.is_absolute() {
                return Err(bad(
                    "cache_dir",
                    format!("{} is not an absolute path", d.display()),
                ));
            }
        }
        if let Some(p) = &self.audit_log.path {
            if !p.is_absolute() {
                return Err(bad(
                    "audit_log.path",
                    format!("{} is not an absolute path", p.display()),
                ));
            }
        }
        if self.results.max_bytes < 1 << 20 {
            return Err(bad("results.max_bytes", "must be at least 1M".into()));
        }
        if self.audit_log.max_size < 4096 {
            return Err(bad("audit_log.max_size", "must be at least 4k".into()));
        }
        if let Some(p) = &self.pid_file {
            if !p.is_absolute() {
                return Err(bad(
                    "pid_file",
                    format!("{} is not an absolute path", p.display()),
                ));
            }
        }
        if !self.node_id.is_empty() && !crate::protocol::ids::valid_node_id(&self.node_id) {
            return Err(bad(
                "node_id",
                format!(
                    "{:?} is not a node id; use 1-64 characters of [A-Za-z0-9._-]",
                    self.node_id
                ),
            ));
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err(bad(
                "tls.cert_file",
                "tls.cert_file and tls.key_file must be set together".into(),
            ));
        }
        validate_jwt(&self.jwt).map_err(|(key, m)| bad(&key, m))?;
        validate_lxc(&self.lxc).map_err(|(key, m)| bad(key, m))?;
        if self.docker.image.is_empty() {
            return Err(bad("docker.image", "must name an image".into()));
        }
        if self.qemu.cpus == 0 {
            return Err(bad("qemu.cpus", "must be at least 1".into()));
        }
        Ok(())
    }
}

fn valid_command_pattern(p: &str) -> bool {
    if p == "*" {
        return true;
    }
    let Some((kind, action)) = p.split_once('.') else {
        return false;
    };
    let Some((_, actions)) = crate::protocol::command::ACTIONS
        .iter()
        .find(|(k, _)| *k == kind)
    else {
        return false;
    };
    action == "*" || actions.contains(&action)
}

/// The lxc section: paths, names and timeouts the provider puts in argv.
fn validate_lxc(lxc: &Lxc) -> Result<(), (&'static str, String)> {
    if !lxc.lxcpath.is_absolute() {
        return Err((
            "lxc.lxcpath",
            format!("{} is not an absolute path", lxc.lxcpath.display()),
        ));
    }
    let name_ok = |s: &str| {
        s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    };
    if !name_ok(&lxc.template) {
        return Err((
            "lxc.template",
            format!(
                "{:?} is not a template name such as busybox or download",
                lxc.template
            ),
        ));
    }
    // Linux interface names: 1-15 bytes, no '/', ':' or whitespace.
    let b = &lxc.bridge;
    if b.is_empty() || b.len() > 15 || b.contains(['/', ':']) || b.chars().any(char::is_whitespace)
    {
        return Err((
            "lxc.bridge",
            format!(
                "{b:?} is not a network interface name (1-15 characters, no '/', ':' or spaces)"
            ),
        ));
    }
    for a in &lxc.template_args {
        if !a.starts_with('-') || a.contains('=') || a.chars().any(char::is_whitespace) {
            return Err((
                "lxc.template_args",
                format!("{a:?} is not an option name such as --dist"),
            ));
        }
    }
    if lxc.tool_timeout < Duration::from_secs(1) {
        return Err(("lxc.tool_timeout", "must be at least 1s".into()));
    }
    Ok(())
}

/// The jwt section: each key names its algorithm and has what that
/// algorithm needs; kids are unique. (The key files are read by `load`.)
fn validate_jwt(jwt: &super::Jwt) -> Result<(), (String, String)> {
    match jwt.algorithm {
        None if !jwt.secret.is_empty() || jwt.public_key_file.is_some() => {
            return Err((
                "jwt.algorithm".into(),
                "set the one accepted algorithm: HS256, RS256 or EdDSA".into(),
            ))
        }
        None => {}
        Some(algorithm) => key_rules("jwt", algorithm, &jwt.secret, &jwt.public_key_file)?,
    }
    let mut kids = std::collections::BTreeSet::new();
    for (i, k) in jwt.keys.iter().enumerate() {
        let at = format!("jwt.keys[{i}]");
        key_rules(&at, k.algorithm, &k.secret, &k.public_key_file)?;
        if !k.kid.is_empty() && !kids.insert(k.kid.as_str()) {
            return Err((
                format!("{at}.kid"),
                format!("{:?} names two keys; give each its own kid", k.kid),
            ));
        }
    }
    if jwt.leeway > Duration::from_secs(600) {
        return Err(("jwt.leeway".into(), "must be at most 10m".into()));
    }
    if jwt.tenant_claim.is_empty() {
        return Err((
            "jwt.tenant_claim".into(),
            "must name a claim (the default is tenant)".into(),
        ));
    }
    Ok(())
}

/// One key: HS256 has a secret of 32 bytes or more and no key file;
/// RS256 and EdDSA have a key file and no secret.
fn key_rules(
    at: &str,
    algorithm: JwtAlgorithm,
    secret: &super::Secret,
    public_key_file: &Option<std::path::PathBuf>,
) -> Result<(), (String, String)> {
    match algorithm {
        JwtAlgorithm::HS256 if secret.expose().len() < 32 => Err((
            format!("{at}.secret"),
            "HS256 needs a secret of at least 32 bytes (256 bits)".into(),
        )),
        JwtAlgorithm::HS256 if public_key_file.is_some() => Err((
            format!("{at}.public_key_file"),
            "an HS256 key is a secret, not a key file".into(),
        )),
        JwtAlgorithm::RS256 | JwtAlgorithm::EdDSA if public_key_file.is_none() => Err((
            format!("{at}.public_key_file"),
            "RS256 and EdDSA need a public key file".into(),
        )),
        JwtAlgorithm::RS256 | JwtAlgorithm::EdDSA if !secret.is_empty() => Err((
            format!("{at}.secret"),
            "RS256 and EdDSA keys have no secret; remove it".into(),
        )),
        _ => Ok(()),
    }
}

/// `NAME.memory` (at least 6m, Docker's least) and `NAME.cpus` (more than
/// 0, at most `max_cpus`): the key and what is wrong.
fn amounts(
    name: &str,
    memory: Option<u64>,
    cpus: Option<f64>,
    max_cpus: f64,
) -> Result<(), (String, String)> {
    if memory.is_some_and(|m| m < 6 << 20) {
        return Err((format!("{name}.memory"), "must be at least 6m".into()));
    }
    if cpus.is_some_and(|c| !(c > 0.0 && c <= max_cpus)) {
        return Err((
            format!("{name}.cpus"),
            format!("must be more than 0 and at most {max_cpus}"),
        ));
    }
    Ok(())
}
