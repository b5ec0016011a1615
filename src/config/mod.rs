//! The agent's configuration: `agent.yaml` (or `.json`), environment
//! overrides, defaults for everything, and validation.
//!
//! Every key is documented in vendetta-agent.yaml(5) and shown with its
//! default in `packaging/agent.yaml`, which `vendetta agent config` prints
//! and a test keeps equal to [`Config::default`].
//!
//! Values are parsed here, once, into what the agent uses (`listen` a
//! `SocketAddr`, `allowed_ips` CIDR ranges, durations, sizes); an error
//! names the file, the key and, where it can, the line. May not touch:
//! anything but the config file and the environment it is given.

pub(crate) mod cidr;
mod env;
pub(crate) mod jwt;
mod listen;
mod load;
mod validate;

pub(crate) use cidr::Cidr;
pub(crate) use env::apply_env;
pub(crate) use listen::Listen;
pub(crate) use load::{check, load, load_with, locate, parse_text, ConfigError, Loaded, Source};

use crate::protocol::{duration, size, ProviderKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The commented default config, printed by `vendetta agent config`.
pub(crate) const DEFAULT_YAML: &str = include_str!("../../packaging/agent.yaml");

/// Where the agent looks for its config when neither `--config` nor
/// `VENDETTA_CONFIG` names one. Missing means: run on embedded defaults.
pub(crate) const SYSTEM_CONFIG: &str = "/etc/vendetta/agent.yaml";

/// A secret string: never printed by `Debug`, never logged.
#[derive(Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub(crate) struct Secret(pub(crate) String);

impl Secret {
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "<redacted>"
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogLevel {
    Error,
    #[serde(alias = "warning")]
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub(crate) fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }

    pub(crate) fn parse(s: &str) -> Option<LogLevel> {
        match s.to_ascii_lowercase().as_str() {
            "error" => Some(LogLevel::Error),
            "warn" | "warning" => Some(LogLevel::Warn),
            "info" => Some(LogLevel::Info),
            "debug" => Some(LogLevel::Debug),
            "trace" => Some(LogLevel::Trace),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Heartbeat {
    #[serde(with = "duration::config")]
    pub(crate) interval: Duration,
    #[serde(with = "duration::config")]
    pub(crate) timeout: Duration,
    pub(crate) retries: u32,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat {
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            retries: 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RetryPolicy {
    pub(crate) max_retries: u32,
    #[serde(with = "duration::config")]
    pub(crate) backoff: Duration,
    #[serde(with = "duration::config")]
    pub(crate) max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Coordination-link settings beyond the seed's keys.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Coordination {
    /// How long the server may hold a command fetch (`?wait=`).
    #[serde(with = "duration::config")]
    pub(crate) poll_wait: Duration,
    /// Send `DELETE /api/v1/nodes/{id}` on a clean stop.
    pub(crate) unregister_on_stop: bool,
    /// Bounds for a heartbeat interval the server asks for.
    #[serde(with = "duration::config")]
    pub(crate) min_heartbeat_interval: Duration,
    #[serde(with = "duration::config")]
    pub(crate) max_heartbeat_interval: Duration,
    /// Bounds for a poll wait the server asks for.
    #[serde(with = "duration::config")]
    pub(crate) min_poll_wait: Duration,
    #[serde(with = "duration::config")]
    pub(crate) max_poll_wait: Duration,
}

impl Default for Coordination {
    fn default() -> Self {
        Coordination {
            poll_wait: Duration::from_secs(30),
            unregister_on_stop: true,
            min_heartbeat_interval: Duration::from_secs(5),
            max_heartbeat_interval: Duration::from_secs(600),
            min_poll_wait: Duration::from_secs(1),
            max_poll_wait: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Tls {
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) cert_file: Option<PathBuf>,
    pub(crate) key_file: Option<PathBuf>,
    pub(crate) insecure_skip_verify: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Limits {
    /// Cap per output stream of an exec (stdout and stderr each).
    #[serde(with = "size")]
    pub(crate) max_output: u64,
    pub(crate) max_sessions: usize,
    /// Largest request body the local API reads.
    #[serde(with = "size")]
    pub(crate) max_body: u64,
    /// Execs queued or running at once; more are rejected at admission.
    pub(crate) max_concurrent_execs: usize,
    /// Resources a session gets when its create names none.
    pub(crate) session_defaults: SessionResources,
    /// The most a create may ask for; more is rejected, not clamped.
    pub(crate) session_max: SessionResources,
    /// What each tenant's sessions may take together, unless
    /// `tenant_quotas` names the tenant.
    pub(crate) tenant_quota: TenantQuota,
    pub(crate) tenant_quotas: BTreeMap<crate::protocol::tenant::Tenant, TenantQuota>,
}

/// The most one tenant's sessions may hold together; unset: no limit
/// beyond the node's.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct TenantQuota {
    pub(crate) max_sessions: Option<usize>,
    #[serde(with = "size::opt")]
    pub(crate) memory: Option<u64>,
    pub(crate) cpus: Option<f64>,
}

/// Memory, CPUs and processes of one session; unset: no default or limit.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct SessionResources {
    #[serde(with = "size::opt")]
    pub(crate) memory: Option<u64>,
    pub(crate) cpus: Option<f64>,
    pub(crate) pids: Option<i64>,
}

/// What an exec may run.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ExecPolicy {
    /// Programs (argv[0]) an exec may start; empty: any. A name without
    /// `/` matches a path ending in it (`sh` matches `/bin/sh`).
    pub(crate) allowed_programs: Vec<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_output: 1 << 20,
            max_sessions: 100,
            max_body: 1 << 20,
            max_concurrent_execs: 16,
            session_defaults: SessionResources::default(),
            session_max: SessionResources::default(),
            tenant_quota: TenantQuota::default(),
            tenant_quotas: BTreeMap::new(),
        }
    }
}

/// The audit log: a JSON line per command and event stream.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AuditLogConfig {
    /// Empty: `cache_dir/audit.log`.
    pub(crate) path: Option<PathBuf>,
    #[serde(with = "size")]
    pub(crate) max_size: u64,
    /// Rotated files kept beside the current one.
    pub(crate) keep: usize,
}

impl Default for AuditLogConfig {
    fn default() -> Self {
        AuditLogConfig {
            path: None,
            max_size: 10 << 20,
            keep: 5,
        }
    }
}

/// Retention of stored results (the journal).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Results {
    pub(crate) max_entries: usize,
    #[serde(with = "duration::config")]
    pub(crate) max_age: Duration,
    /// What finished results may take on disk; unfinished commands and
    /// results the server has not acknowledged come on top.
    #[serde(with = "size")]
    pub(crate) max_bytes: u64,
}

impl Default for Results {
    fn default() -> Self {
        Results {
            max_entries: 10_000,
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 256 << 20,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub(crate) enum JwtAlgorithm {
    HS256,
    RS256,
    EdDSA,
}

/// JWT bearer tokens on the local API. Each key pins its algorithm: a
/// token is checked only with keys of the algorithm its header names.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Jwt {
    /// One key without a `kid`, as a shorthand for a one-entry `keys`.
    pub(crate) algorithm: Option<JwtAlgorithm>,
    pub(crate) secret: Secret,
    pub(crate) public_key_file: Option<PathBuf>,
    /// Keys for rotation: a token's `kid` picks one, else each key of the
    /// token's algorithm is tried.
    pub(crate) keys: Vec<JwtKeyConfig>,
    pub(crate) issuer: String,
    pub(crate) audience: String,
    #[serde(with = "duration::config")]
    pub(crate) leeway: Duration,
    /// The claim naming the caller's tenant.
    pub(crate) tenant_claim: String,
}

/// One entry of `jwt.keys`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JwtKeyConfig {
    #[serde(default)]
    pub(crate) kid: String,
    pub(crate) algorithm: JwtAlgorithm,
    /// HS256: the shared secret, at least 32 bytes.
    #[serde(default)]
    pub(crate) secret: Secret,
    /// RS256, EdDSA: a PEM public key (`PUBLIC KEY`, or `RSA PUBLIC KEY`).
    #[serde(default)]
    pub(crate) public_key_file: Option<PathBuf>,
}

impl Default for Jwt {
    fn default() -> Self {
        Jwt {
            algorithm: None,
            secret: Secret::default(),
            public_key_file: None,
            keys: Vec::new(),
            issuer: String::new(),
            audience: String::new(),
            leeway: Duration::from_secs(30),
            tenant_claim: "tenant".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Docker {
    /// Engine socket; `DOCKER_HOST=unix://…` is used when this is not set.
    pub(crate) socket: Option<PathBuf>,
    /// Image for sessions whose create names none.
    pub(crate) image: String,
    /// Pull a missing image (needs a registry); otherwise fail naming it.
    pub(crate) pull: bool,
    /// Images a session may use; empty: any. `name*` matches by prefix.
    pub(crate) allowed_images: Vec<String>,
    #[serde(with = "duration::config")]
    pub(crate) api_timeout: Duration,
}

impl Default for Docker {
    fn default() -> Self {
        Docker {
            socket: None,
            image: "debian:stable-slim".into(),
            pull: false,
            allowed_images: Vec::new(),
            api_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LxcNetwork {
    Empty,
    Veth,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Lxc {
    pub(crate) lxcpath: PathBuf,
    pub(crate) template: String,
    pub(crate) network: LxcNetwork,
    pub(crate) bridge: String,
    pub(crate) require_limits: bool,
    /// Extra template arguments a create may pass (e.g. `--dist`, `--release`).
    pub(crate) template_args: Vec<String>,
    /// Templates a session may use; empty: any.
    pub(crate) allowed_templates: Vec<String>,
    #[serde(with = "duration::config")]
    pub(crate) tool_timeout: Duration,
}

impl Default for Lxc {
    fn default() -> Self {
        Lxc {
            lxcpath: PathBuf::from("/var/lib/lxc"),
            template: "busybox".into(),
            network: LxcNetwork::Empty,
            bridge: "lxcbr0".into(),
            require_limits: false,
            template_args: Vec::new(),
            allowed_templates: Vec::new(),
            tool_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Qemu {
    pub(crate) binary: String,
    /// Base images must lie under one of these when set.
    pub(crate) image_roots: Vec<PathBuf>,
    /// Extra QEMU arguments added to every VM; only from here, never from commands.
    pub(crate) extra_args: Vec<String>,
    #[serde(with = "size")]
    pub(crate) memory: u64,
    pub(crate) cpus: u32,
    /// `-machine` type.
    pub(crate) machine: String,
}

impl Default for Qemu {
    fn default() -> Self {
        Qemu {
            binary: "qemu-system-x86_64".into(),
            image_roots: Vec::new(),
            extra_args: Vec::new(),
            memory: 512 << 20,
            cpus: 1,
            machine: "q35".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Config {
    pub(crate) coordination_url: String,
    pub(crate) auth_token: Secret,
    pub(crate) offline_mode: bool,
    pub(crate) node_id: String,
    pub(crate) node_name: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) heartbeat: Heartbeat,
    pub(crate) retry_policy: RetryPolicy,
    pub(crate) coordination: Coordination,
    pub(crate) tls: Tls,

    pub(crate) provider: ProviderKind,
    pub(crate) providers: Vec<ProviderKind>,
    pub(crate) workers: usize,
    pub(crate) queue_size: usize,
    #[serde(with = "duration::config")]
    pub(crate) command_timeout: Duration,
    /// Longest timeout a command may ask for; unset = `command_timeout`.
    #[serde(
        default,
        deserialize_with = "opt_duration",
        serialize_with = "ser_opt_duration"
    )]
    pub(crate) max_command_timeout: Option<Duration>,
    #[serde(with = "duration::config")]
    pub(crate) shutdown_timeout: Duration,
    /// How often provider health and the session table are refreshed.
    #[serde(with = "duration::config")]
    pub(crate) monitor_interval: Duration,
    pub(crate) limits: Limits,
    pub(crate) allowed_commands: Vec<String>,
    pub(crate) workspace_roots: Vec<PathBuf>,
    pub(crate) results: Results,
    pub(crate) audit_log: AuditLogConfig,
    pub(crate) exec: ExecPolicy,

    pub(crate) listen: Listen,
    /// The group of the API's Unix socket (mode 0660); empty: the agent's.
    pub(crate) listen_group: String,
    pub(crate) api_token: Secret,
    /// What the static token may do (a JWT carries its own `scope`).
    pub(crate) api_token_scopes: Vec<crate::protocol::scope::Scope>,
    pub(crate) metrics_auth: bool,
    /// Serve a non-loopback `listen` with `/metrics` open to anyone.
    pub(crate) insecure_listen: bool,
    pub(crate) allowed_ips: Vec<Cidr>,
    pub(crate) jwt: Jwt,

    pub(crate) cache_dir: Option<PathBuf>,
    pub(crate) pid_file: Option<PathBuf>,
    pub(crate) log_level: LogLevel,
    pub(crate) log_format: LogFormat,
    pub(crate) debug_pprof: bool,

    pub(crate) docker: Docker,
    pub(crate) lxc: Lxc,
    pub(crate) qemu: Qemu,
}

/// A string parsed by the function it carries. Errors raised inside a
/// visitor keep serde_yaml's key path (`key listen: ...`); errors made
/// after `String::deserialize` would lose it.
pub(crate) struct ParsedStr<F>(pub(crate) F);

impl<T, F: FnOnce(&str) -> Result<T, String>> serde::de::Visitor<'_> for ParsedStr<F> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        (self.0)(v).map_err(E::custom)
    }
}

fn opt_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration::deserialize_config(d).map(Some)
}

fn ser_opt_duration<S: serde::Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(d) => duration::serialize_config(d, s),
        None => s.serialize_none(),
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            coordination_url: String::new(),
            auth_token: Secret::default(),
            offline_mode: false,
            node_id: String::new(),
            node_name: String::new(),
            labels: BTreeMap::new(),
            heartbeat: Heartbeat::default(),
            retry_policy: RetryPolicy::default(),
            coordination: Coordination::default(),
            tls: Tls::default(),
            provider: ProviderKind::Docker,
            providers: ProviderKind::ALL.to_vec(),
            workers: 4,
            queue_size: 64,
            command_timeout: Duration::from_secs(300),
            max_command_timeout: None,
            shutdown_timeout: Duration::from_secs(30),
            monitor_interval: Duration::from_secs(10),
            limits: Limits::default(),
            allowed_commands: vec!["*".into()],
            workspace_roots: Vec::new(),
            results: Results::default(),
            audit_log: AuditLogConfig::default(),
            exec: ExecPolicy::default(),
            listen: Listen::default(),
            listen_group: String::new(),
            api_token: Secret::default(),
            api_token_scopes: vec![crate::protocol::scope::Scope::Admin],
            metrics_auth: false,
            insecure_listen: false,
            allowed_ips: Vec::new(),
            jwt: Jwt::default(),
            cache_dir: None,
            pid_file: None,
            log_level: LogLevel::Info,
            log_format: LogFormat::Json,
            debug_pprof: false,
            docker: Docker::default(),
            lxc: Lxc::default(),
            qemu: Qemu::default(),
        }
    }
}

impl Config {
    /// Offline when asked to be, or when there is nothing to dial.
    pub(crate) fn offline(&self) -> bool {
        self.offline_mode || self.coordination_url.is_empty()
    }

    /// `cache_dir`, or the default: /var/lib/vendetta for root,
    /// `$XDG_STATE_HOME/vendetta` (or ~/.local/state/vendetta) otherwise.
    pub(crate) fn cache_dir(&self) -> PathBuf {
        if let Some(d) = &self.cache_dir {
            return d.clone();
        }
        if crate::os::process::uid() == 0 {
            return PathBuf::from("/var/lib/vendetta");
        }
        if let Some(state) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(state).join("vendetta");
        }
        match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(home) => PathBuf::from(home).join(".local/state/vendetta"),
            None => std::env::temp_dir().join("vendetta"),
        }
    }

    pub(crate) fn pid_file(&self) -> PathBuf {
        self.pid_file
            .clone()
            .unwrap_or_else(|| self.cache_dir().join("vendetta.pid"))
    }

    /// The longest timeout a command may ask for.
    pub(crate) fn timeout_cap(&self) -> Duration {
        self.max_command_timeout.unwrap_or(self.command_timeout)
    }

    /// How long a command may run: its own timeout (or the exec param's),
    /// else `command_timeout`, capped by `max_command_timeout`.
    pub(crate) fn timeout_for(&self, asked: Option<Duration>) -> Duration {
        asked
            .unwrap_or(self.command_timeout)
            .min(self.timeout_cap())
    }

    /// Whether `allowed_commands` lets `name` (`type.action`) run.
    pub(crate) fn command_allowed(&self, name: &str) -> bool {
        let kind = name.split('.').next().unwrap_or("");
        self.allowed_commands
            .iter()
            .any(|p| p == "*" || p == name || p.strip_suffix(".*").is_some_and(|t| t == kind))
    }
}

/// The `host[:port]` (with any `user@`) of an `http(s)://` URL; empty when
/// it has no scheme.
pub(crate) fn url_authority(url: &str) -> &str {
    url.split("://")
        .nth(1)
        .unwrap_or("")
        .split('/')
        .next()
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(name: &str, text: &str) -> Result<Config, ConfigError> {
        let c = parse_text(Path::new(name), text)?;
        c.validate(Path::new(name))?;
        Ok(c)
    }

    #[test]
    fn packaged_example_is_the_default() {
        let c = parse("agent.yaml", DEFAULT_YAML).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn seed_example_parses() {
        let seed = r#"
coordination_url: "http://localhost:3001"
auth_token: ""
provider: "docker"
heartbeat:
  interval: 30s
  timeout: 10s
  retries: 3
command_timeout: 5m
retry_policy:
  max_retries: 3
  backoff: 1s
  max_backoff: 30s
offline_mode: false
cache_dir: "/tmp/vendetta-agent"
log_level: "info"
"#;
        let c = parse("agent.yaml", seed).unwrap();
        assert_eq!(c.coordination_url, "http://localhost:3001");
        assert_eq!(c.command_timeout, Duration::from_secs(300));
        assert!(!c.offline());
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = parse("agent.yaml", "log_level: info\nheartbeat:\n  intervl: 5s\n").unwrap_err();
        let s = e.to_string();
        assert!(s.contains("agent.yaml"), "{s}");
        assert!(s.contains("line 3"), "{s}");
        assert!(s.contains("heartbeat.intervl"), "{s}");
        let e = parse("agent.yaml", "bogus: 1\n").unwrap_err().to_string();
        assert!(e.contains("key bogus") && e.contains("line 1"), "{e}");
        assert_eq!(
            e.matches("bogus").count(),
            2,
            "the key once, and once in serde's quote: {e}"
        );
        let e = parse("agent.yaml", "command_timeout: 5x\n")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("command_timeout: command_timeout"), "{e}");
    }

    #[test]
    fn bad_duration_and_type() {
        let e = parse("agent.yaml", "command_timeout: 5x\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("command_timeout") && e.contains("\"5x\"") && e.contains("line 1"),
            "{e}"
        );
        let e = parse("agent.yaml", "heartbeat:\n  interval: 30\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("heartbeat.interval") && e.contains("no unit"),
            "{e}"
        );
        let e = parse("agent.yaml", "workers: many\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("key workers") && e.contains("invalid type"),
            "{e}"
        );
        let e = parse("agent.yaml", "provider: podman\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("key provider") && e.contains("podman"), "{e}");
    }

    #[test]
    fn json_by_extension() {
        let c = parse(
            "agent.json",
            r#"{"listen":"127.0.0.1:9999","heartbeat":{"interval":"5s"}}"#,
        )
        .unwrap();
        assert_eq!(
            c.listen.tcp,
            Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9999)))
        );
        let e = parse("agent.json", "{\n\"nope\": 1}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("key nope") && e.contains("line 2"), "{e}");
        let e = parse("agent.json", "{\"workers\": 3,\n}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not valid JSON") && e.contains("line 2"), "{e}");
        let c = parse(
            "agent.json",
            "{\n\t\"heartbeat\": {\"interval\": \"5s\"}\n}",
        )
        .unwrap();
        assert_eq!(
            c.heartbeat.interval,
            Duration::from_secs(5),
            "tab-indented JSON"
        );
    }

    /// The message `yaml` is refused with, as the CLI prints it.
    fn refusal(yaml: &str) -> String {
        parse("a.yaml", yaml).unwrap_err().to_string()
    }

    #[test]
    fn semantic_checks() {
        for (yaml, error) in [
            ("workers: 0\n", "key workers: 0 is out of range; use 1 to 256"),
            (
                "listen: nowhere\n",
                "line 1: key listen: \"nowhere\" is not an address:port such as 127.0.0.1:8080, nor unix:/path/to/agent.sock",
            ),
            (
                "provider: qemu\nproviders: [docker]\n",
                "key provider: qemu is not in providers [docker]",
            ),
            (
                "allowed_commands: [\"session.nuke\"]\n",
                "key allowed_commands: \"session.nuke\" is not a command pattern; use *, session.*, or type.action such as system.status",
            ),
            (
                "allowed_ips: [\"10.0.0.1\", \"10.0.0.0/33\"]\n",
                "line 1: key allowed_ips[1]: \"10.0.0.0/33\" is not an address or CIDR range such as 10.0.0.0/8 or ::1/128",
            ),
            (
                "coordination_url: ftp://x\n",
                "key coordination_url: \"ftp://x\" is not an http:// or https:// URL",
            ),
            (
                // The URL itself is not repeated: it holds a password.
                "coordination_url: https://bob:pw@coord:3001/x\n",
                "key coordination_url: must not carry credentials (user:password@); put the token in auth_token",
            ),
            (
                "node_id: ../bad\n",
                "key node_id: \"../bad\" is not a node id; use 1-64 characters of [A-Za-z0-9._-]",
            ),
            (
                "pid_file: run/v.pid\n",
                "key pid_file: run/v.pid is not an absolute path",
            ),
            (
                "jwt:\n  algorithm: HS256\n  secret: short\n",
                "key jwt.secret: HS256 needs a secret of at least 32 bytes (256 bits)",
            ),
            (
                "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n",
                "key jwt.algorithm: set the one accepted algorithm: HS256, RS256 or EdDSA",
            ),
        ] {
            assert_eq!(
                refusal(yaml),
                format!("config file a.yaml{}", if error.starts_with("line") {
                    format!(", {error}")
                } else {
                    format!(": {error}")
                }),
                "{yaml}"
            );
        }
        assert_eq!(
            parse("a.yaml", "log_level: warning\n").unwrap().log_level,
            LogLevel::Warn
        );
    }

    #[test]
    fn env_overrides() {
        let mut c = Config::default();
        let env = |k: &str| match k {
            "VENDETTA_COORD_URL" => Some("http://coord:3001".to_string()),
            "VENDETTA_PROVIDER" => Some("lxc".to_string()),
            "VENDETTA_LOG_LEVEL" => Some("debug".to_string()),
            "VENDETTA_DEBUG_PPROF" => Some("true".to_string()),
            "VENDETTA_AUTH_TOKEN" => Some("t0k".to_string()),
            "VENDETTA_LISTEN" => Some("unix:/run/v.sock, [::1]:9".to_string()),
            _ => None,
        };
        apply_env(&mut c, env).unwrap();
        assert_eq!(c.listen.to_string(), "[::1]:9, unix:/run/v.sock");
        assert_eq!(c.coordination_url, "http://coord:3001");
        assert_eq!(c.provider, ProviderKind::Lxc);
        assert_eq!(c.log_level, LogLevel::Debug);
        assert!(c.debug_pprof);
        assert_eq!(c.auth_token.expose(), "t0k");
        let e = apply_env(&mut c, |k| {
            (k == "VENDETTA_PROVIDER").then(|| "vbox".to_string())
        })
        .unwrap_err();
        assert!(e.to_string().contains("VENDETTA_PROVIDER"));
        let e = apply_env(&mut c, |k| {
            (k == "VENDETTA_LISTEN").then(|| "unix:x".to_string())
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "environment variable VENDETTA_LISTEN: unix:x: the socket path must be absolute, without . or .. parts"
        );
    }

    #[test]
    fn secrets_are_redacted() {
        let c = Config {
            auth_token: Secret("hunter2-very-secret".into()),
            ..Config::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn allowlist() {
        let mut c = Config::default();
        assert!(c.command_allowed("session.exec"));
        c.allowed_commands = vec!["system.*".into(), "session.list".into()];
        assert!(c.command_allowed("system.info"));
        assert!(c.command_allowed("session.list"));
        assert!(!c.command_allowed("session.exec"));
    }

    #[test]
    fn lxc_section_is_checked() {
        for (yaml, key) in [
            ("lxc:\n  lxcpath: relative/dir\n", "lxc.lxcpath"),
            ("lxc:\n  template: ../x\n", "lxc.template"),
            ("lxc:\n  bridge: a-very-long-bridge-name\n", "lxc.bridge"),
            ("lxc:\n  bridge: \"\"\n", "lxc.bridge"),
            ("lxc:\n  template_args: [dist]\n", "lxc.template_args"),
            ("lxc:\n  tool_timeout: 10ms\n", "lxc.tool_timeout"),
        ] {
            match parse("agent.yaml", yaml) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{yaml}"),
                other => panic!("{yaml}: {other:?}"),
            }
        }
        let c = parse(
            "agent.yaml",
            "lxc:\n  network: veth\n  bridge: br0\n  template_args: [--dist, --release]\n",
        )
        .unwrap();
        assert_eq!(c.lxc.network, LxcNetwork::Veth);
    }

    /// The man page and the packaged example move with the code.
    #[test]
    fn every_config_key_is_in_the_man_page_and_the_example() {
        let page = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("man/vendetta-agent.yaml.5"),
        )
        .unwrap();
        let example = DEFAULT_YAML;
        let all = serde_yaml::to_value(Config::default()).unwrap();
        let mut keys = Vec::new();
        for (k, v) in all.as_mapping().unwrap() {
            let k = k.as_str().unwrap().to_string();
            match v.as_mapping() {
                Some(m) if k != "labels" => {
                    for (sub, _) in m {
                        keys.push(format!("{k}.{}", sub.as_str().unwrap()));
                    }
                }
                _ => keys.push(k),
            }
        }
        assert!(keys.len() > 50, "{keys:?}");
        for key in keys {
            // The page names nested keys in full (heartbeat.interval).
            assert!(
                page.contains(&format!("Cm {key}")),
                "vendetta-agent.yaml(5) does not document {key}"
            );
            let leaf = key.rsplit('.').next().unwrap();
            assert!(
                example.contains(&format!("{leaf}:")),
                "packaging/agent.yaml does not show {key}"
            );
        }
    }
}
