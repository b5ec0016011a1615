//! The command line: `vendetta agent …` runs and manages the agent;
//! `session`, `service` and `system` are a client of its local API.
//!
//! Exit codes (one mapping, `CliError::exit_code`): 0 success; 1 the
//! command failed; 2 usage or config error; 3 the agent is not running
//! (LSB, for `agent status` and every client verb); `session exec` exits
//! with the command's own code, 124 when it timed out.

pub(crate) mod client;

use crate::cli::client::{Client, ClientError};
use crate::config::{self, ConfigError};
use crate::protocol::{duration, ProviderKind};
use pico_args::Arguments;
use serde_json::{json, Map, Value};
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub(crate) const EXIT_OK: i32 = 0;
pub(crate) const EXIT_FAILED: i32 = 1;
pub(crate) const EXIT_USAGE: i32 = 2;
pub(crate) const EXIT_NOT_RUNNING: i32 = 3;
pub(crate) const EXIT_TIMEOUT: i32 = 124;

#[derive(Debug)]
pub(crate) enum CliError {
    Usage(String),
    Config(ConfigError),
    Agent(crate::agent::AgentError),
    Client(ClientError),
    /// A command ran and failed; the message is the result's error.
    Failed(String),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(m) => write!(f, "{m}"),
            CliError::Config(e) => write!(f, "{e}"),
            CliError::Agent(e) => write!(f, "{e}"),
            CliError::Client(e) => write!(f, "{e}"),
            CliError::Failed(m) => write!(f, "{m}"),
        }
    }
}

impl CliError {
    pub(crate) fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) | CliError::Config(_) => EXIT_USAGE,
            CliError::Client(ClientError::Config(_)) => EXIT_USAGE,
            CliError::Client(ClientError::Unreachable { .. }) => EXIT_NOT_RUNNING,
            CliError::Agent(_) | CliError::Client(_) | CliError::Failed(_) => EXIT_FAILED,
        }
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        CliError::Client(e)
    }
}

impl From<pico_args::Error> for CliError {
    fn from(e: pico_args::Error) -> Self {
        CliError::Usage(e.to_string())
    }
}

const TOP_HELP: &str = "\
vendetta - node agent for vendetta development environments

Usage: vendetta <command> [options]

Agent:
  agent start             run the agent in the foreground
  agent stop              stop the running agent
  agent status            is the agent running, and how is it
  agent config            print the default config, or check one
  agent connect URL       register with a server and save its URL
  agent install USER@HOST install the agent on another machine

Client of the local API:
  session create|start|stop|destroy|list|exec
  service list|status
  system status|info|health

Options:
  -h, --help              help for any command (vendetta session exec --help)
  -V, --version           print the version

See vendetta(1), vendetta-agent(1) and vendetta-agent.yaml(5).
";

const AGENT_HELP: &str = "\
Usage: vendetta agent <start|stop|status|config|connect|install> [options]

  start                   run in the foreground (for systemd Type=simple)
  stop [--timeout D]      send SIGTERM and wait (default 60s)
  status [--json]         summary of the running agent; exit 3 if not running
  config                  print the commented default config
  config --check FILE     validate FILE; exit 2 if it is invalid
  connect URL [--token T] register with a server, then set coordination_url
  install USER@HOST       copy and install over ssh (not available yet)

Options:
  -c, --config FILE       config file (default: $VENDETTA_CONFIG, else
                          /etc/vendetta/agent.yaml if present, else built-in)
  -h, --help              this help
";

const START_HELP: &str = "\
Usage: vendetta agent start [--config FILE]

Runs the agent in the foreground until SIGTERM or SIGINT. Logs go to stderr.
With no config file the agent runs offline on its built-in defaults, with
the local API on 127.0.0.1:8080.

Options:
  -c, --config FILE   config file
  -h, --help          this help

Environment: VENDETTA_CONFIG, VENDETTA_COORD_URL, VENDETTA_AUTH_TOKEN,
VENDETTA_PROVIDER, VENDETTA_LOG_LEVEL, VENDETTA_DEBUG_PPROF.
Exit: 0 after a clean stop, 1 on a runtime error, 2 on a config error.
";

const STOP_HELP: &str = "\
Usage: vendetta agent stop [--config FILE] [--timeout DURATION]

Sends SIGTERM to the agent named in the pid file and waits until it has
exited. Stopping an agent that is not running succeeds.

Options:
  -c, --config FILE      config file (for pid_file / cache_dir)
  -t, --timeout DURATION how long to wait, e.g. 30s (default 60s)
  -h, --help             this help

Exit: 0 stopped or not running, 1 still running after the timeout.
";

const STATUS_HELP: &str = "\
Usage: vendetta agent status [--config FILE] [--agent URL] [--token T] [--json]

Asks the running agent over its local API and prints a short summary.

Options:
  -c, --config FILE   config file (for listen and the API token)
      --agent URL     the agent's API (default http://<listen>)
      --token TOKEN   API token
      --json          print the status document
  -h, --help          this help

Exit: 0 running, 3 not running.
";

const CONNECT_HELP: &str = "\
Usage: vendetta agent connect URL [--token TOKEN] [--config FILE]

Registers this node with the coordination server at URL (a real round
trip), then writes coordination_url (and auth_token) into the config file:
atomically, mode 0600, every other line and comment kept. Without a config
file, /etc/vendetta/agent.yaml is created. Restart the agent afterwards.

Options:
  -c, --config FILE   config file to update
      --token TOKEN   bearer token for the server (written as auth_token)
  -h, --help          this help

The server URL and token come from the command line only (VENDETTA_COORD_URL
and VENDETTA_AUTH_TOKEN are not read); the TLS keys come from the file.

Exit: 0 connected, 1 the server refused or could not be reached (the file
is left unchanged), 2 the existing file cannot be read or loaded, or the
result would be invalid.
";

const CONFIG_HELP: &str = "\
Usage: vendetta agent config [--check FILE]

Without options, prints the default config with a comment on every key.
With --check, validates FILE and prints what is wrong, naming the key and line.

Exit: 0 valid, 2 invalid or unreadable.
";

const CLIENT_OPTS: &str = "
Client options:
  -c, --config FILE   config file (for listen and token)
      --agent URL     the agent's local API (env VENDETTA_AGENT_URL)
      --token TOKEN   API token (env VENDETTA_API_TOKEN)
      --json          print JSON instead of a table
  -h, --help          this help
";

const SESSION_HELP: &str = "\
Usage: vendetta session <create|start|stop|destroy|list|exec> ...

  create ID [--provider P] [--image I] [--workspace DIR] [--env K=V]...
         [--port PORT[/udp]]... [--memory SIZE] [--cpus N] [--pids N]
         [--label K=V]... [-- COMMAND ARGS...]
  start ID
  stop ID [--grace DURATION]
  destroy ID
  list [--provider P]
  exec ID [--env K=V]... [--workdir DIR] [--user U] [--timeout D] [-i]
       -- COMMAND ARGS...
       (-i passes this program's stdin to the command; exits with the
        command's exit code, 124 on timeout)
";

const SERVICE_HELP: &str = "\
Usage: vendetta service <list|status> ...

  list [--provider P]   running sessions with their published ports and health
  status ID             one session's services
";

const SYSTEM_HELP: &str = "\
Usage: vendetta system <status|info|health>

  status   node id, version, uptime, providers, sessions, queue, link
  info     os, arch, kernel, hostname, cpus, memory, disk
  health   per provider, disk, memory, coordination link (exit 1 if unhealthy)
";

/// Runs the CLI; returns the process exit code.
pub(crate) fn main(argv: Vec<OsString>) -> i32 {
    // Everything after the first "--" is a command line, not options.
    let split = argv.iter().position(|a| a == "--");
    let (head, tail): (Vec<OsString>, Vec<String>) = match split {
        Some(i) => (
            argv[..i].to_vec(),
            argv[i + 1..]
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
        ),
        None => (argv, Vec::new()),
    };
    match run(head, tail) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vendetta: {e}");
            e.exit_code()
        }
    }
}

fn run(head: Vec<OsString>, tail: Vec<String>) -> Result<i32, CliError> {
    let mut args = Arguments::from_vec(head);
    if args.contains(["-V", "--version"]) {
        println!("vendetta {}", crate::VERSION);
        return Ok(EXIT_OK);
    }
    let help = args.contains(["-h", "--help"]);
    let group = args.subcommand()?;
    match group.as_deref() {
        None | Some("help") => {
            print!("{TOP_HELP}");
            Ok(if help || group.is_some() {
                EXIT_OK
            } else {
                EXIT_USAGE
            })
        }
        Some("agent") => agent(args, help, tail),
        Some("session") => session(args, help, tail),
        Some("service") => {
            no_tail(&tail)?;
            service(args, help)
        }
        Some("system") => {
            no_tail(&tail)?;
            system(args, help)
        }
        Some(other) => Err(CliError::Usage(format!(
            "unknown command {other:?}; run `vendetta --help` for the list"
        ))),
    }
}

fn config_flag(args: &mut Arguments) -> Result<Option<PathBuf>, CliError> {
    Ok(args.opt_value_from_str(["-c", "--config"])?)
}

/// Refuses leftover arguments, naming them.
fn finish(args: Arguments) -> Result<(), CliError> {
    let rest = args.finish();
    if rest.is_empty() {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "unexpected argument(s): {}; see --help",
            rest.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        )))
    }
}

fn need_free(args: &mut Arguments, what: &str) -> Result<String, CliError> {
    args.opt_free_from_str::<String>()?
        .ok_or_else(|| CliError::Usage(format!("missing {what}; see --help")))
}

fn agent(mut args: Arguments, help: bool, tail: Vec<String>) -> Result<i32, CliError> {
    let verb = args.subcommand()?;
    let usage_help = |text: &str| {
        print!("{text}");
        Ok(EXIT_OK)
    };
    match verb.as_deref() {
        None => {
            print!("{AGENT_HELP}");
            Ok(if help { EXIT_OK } else { EXIT_USAGE })
        }
        Some("start") if help => usage_help(START_HELP),
        Some("stop") if help => usage_help(STOP_HELP),
        Some("status") if help => usage_help(STATUS_HELP),
        Some("config") if help => usage_help(CONFIG_HELP),
        Some("connect") if help => usage_help(CONNECT_HELP),
        Some("install") if help => usage_help(AGENT_HELP),
        Some("start") => {
            let path = config_flag(&mut args)?;
            finish(args)?;
            no_tail(&tail)?;
            start(path)
        }
        Some("stop") => {
            let path = config_flag(&mut args)?;
            let timeout = opt_duration(&mut args, ["-t", "--timeout"])?.unwrap_or(Duration::from_secs(60));
            finish(args)?;
            no_tail(&tail)?;
            stop(path, timeout)
        }
        Some("status") => {
            let path = config_flag(&mut args)?;
            let agent_url: Option<String> = args.opt_value_from_str("--agent")?;
            let token: Option<String> = args.opt_value_from_str("--token")?;
            let json_out = args.contains("--json");
            finish(args)?;
            no_tail(&tail)?;
            status(path, agent_url, token, json_out)
        }
        Some("config") => {
            let check: Option<PathBuf> = args.opt_value_from_str("--check")?;
            finish(args)?;
            no_tail(&tail)?;
            match check {
                None => {
                    print!("{}", config::DEFAULT_YAML);
                    Ok(EXIT_OK)
                }
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .map_err(|source| CliError::Config(ConfigError::Read { path: path.clone(), source }))?;
                    let cfg = config::parse_text(&path, &text).map_err(CliError::Config)?;
                    cfg.validate(&path).map_err(CliError::Config)?;
                    println!("{}: ok", path.display());
                    Ok(EXIT_OK)
                }
            }
        }
        Some("connect") => {
            let path = config_flag(&mut args)?;
            let token: Option<String> = args.opt_value_from_str("--token")?;
            let url = need_free(&mut args, "server URL")?;
            finish(args)?;
            no_tail(&tail)?;
            connect(path, &url, token.as_deref())
        }
        Some("install") => Err(CliError::Usage(
            "`vendetta agent install` is not available yet in this version; copy the static binary with scp and install packaging/vendetta.service".into(),
        )),
        Some(other) => Err(CliError::Usage(format!("unknown agent command {other:?}; see `vendetta agent --help`"))),
    }
}

fn connect(path: Option<PathBuf>, url: &str, token: Option<&str>) -> Result<i32, CliError> {
    use crate::coord::connect::{connect as run_connect, ConnectError};
    let done = run_connect(path.as_deref(), url, token).map_err(|e| match e {
        ConnectError::Config(c) => CliError::Config(c),
        other => CliError::Failed(other.to_string()),
    })?;
    println!(
        "registered node {} with {url} (HTTP {})",
        done.node_id, done.status
    );
    let what = if done.wrote_token {
        "coordination_url and auth_token"
    } else {
        "coordination_url"
    };
    let verb = if done.created_file {
        "created"
    } else {
        "updated"
    };
    println!("{verb} {} (mode 0600): set {what}", done.path.display());
    if done.offline_mode {
        println!("note: offline_mode is true in that file; set it to false or the agent will not dial the server");
    }
    println!("restart the agent to use it: systemctl restart vendetta (or vendetta agent stop, then start)");
    Ok(EXIT_OK)
}

fn no_tail(tail: &[String]) -> Result<(), CliError> {
    if tail.is_empty() {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "unexpected arguments after --: {}",
            tail.join(" ")
        )))
    }
}

fn opt_duration(
    args: &mut Arguments,
    keys: [&'static str; 2],
) -> Result<Option<Duration>, CliError> {
    let v: Option<String> = args.opt_value_from_str(keys)?;
    v.map(|s| duration::parse(&s).map_err(|e| CliError::Usage(format!("{}: {e}", keys[1]))))
        .transpose()
}

fn start(path: Option<PathBuf>) -> Result<i32, CliError> {
    let loaded = config::load(path.as_deref()).map_err(CliError::Config)?;
    crate::logging::init(loaded.config.log_format, loaded.config.log_level);
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current().name().unwrap_or("?").to_string();
        log::error!(thread = thread.as_str(); "panic: {info}");
    }));
    for w in &loaded.warnings {
        log::warn!("{w}");
    }
    crate::agent::run(loaded).map_err(CliError::Agent)?;
    Ok(EXIT_OK)
}

fn stop(path: Option<PathBuf>, timeout: Duration) -> Result<i32, CliError> {
    let loaded = config::load(path.as_deref()).map_err(CliError::Config)?;
    let pid_file = loaded.config.pid_file();
    let Some(pid) = crate::store::pidfile::running_pid(&pid_file) else {
        println!(
            "vendetta agent is not running (no live pid file at {})",
            pid_file.display()
        );
        return Ok(EXIT_OK);
    };
    // The pid comes from a pid file whose lock is held: the agent, not a reused pid.
    if let Err(e) = crate::os::process::kill(pid, crate::os::process::Signal::Term) {
        return Err(CliError::Failed(format!(
            "cannot signal agent pid {pid}: {e}; run as the agent's user or root"
        )));
    }
    let deadline = Instant::now() + timeout;
    while crate::store::pidfile::running_pid(&pid_file).is_some() {
        if Instant::now() >= deadline {
            return Err(CliError::Failed(format!(
                "agent pid {pid} did not stop within {}; it may still be finishing commands (shutdown_timeout)",
                duration::format(timeout)
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("vendetta agent stopped (pid {pid})");
    Ok(EXIT_OK)
}

fn status(
    path: Option<PathBuf>,
    agent_url: Option<String>,
    token: Option<String>,
    json_out: bool,
) -> Result<i32, CliError> {
    let client = Client::new(agent_url, token, path.as_deref())?;
    let health = match client.get("/health") {
        Ok(a) => a,
        Err(ClientError::Unreachable { url, .. }) => {
            if json_out {
                println!("{}", json!({"running": false, "agent": url}));
            } else {
                println!("vendetta agent is not running (nothing answers at {url})");
            }
            return Ok(EXIT_NOT_RUNNING);
        }
        Err(e) => return Err(e.into()),
    };
    if health.status == 403 {
        println!(
            "vendetta agent is running at {}, but this address is not in its allowed_ips",
            client.base()
        );
        return Ok(EXIT_OK);
    }
    let (status, status_error) = match client.command("system", "status", json!({}), None) {
        Ok(r) => (Some(r["data"].clone()), None),
        Err(e) => (None, Some(e.to_string())),
    };
    if json_out {
        println!(
            "{}",
            json!({"running": true, "agent": client.base(), "health": health.body, "status": status})
        );
        return Ok(EXIT_OK);
    }
    let h = &health.body;
    let providers = h["providers"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    format!(
                        "{k} {}",
                        if v["ok"].as_bool() == Some(true) {
                            "ok"
                        } else {
                            "down"
                        }
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    println!(
        "vendetta agent: running, {} ({})",
        h["status"].as_str().unwrap_or("?"),
        client.base()
    );
    println!(
        "  node:       {}  version {}  up {}",
        h["node_id"].as_str().unwrap_or("?"),
        h["version"].as_str().unwrap_or("?"),
        human_secs(h["uptime_s"].as_u64().unwrap_or(0))
    );
    println!(
        "  providers:  {providers} (default: {})",
        h["default_provider"].as_str().unwrap_or("?")
    );
    let link = &h["link"];
    let mut link_line = link["state"].as_str().unwrap_or("?").to_string();
    if let Some(r) = link["reason"].as_str() {
        link_line.push_str(&format!(" ({r})"));
    }
    println!(
        "  link:       {link_line}, {} result(s) pending",
        h["pending_results"].as_u64().unwrap_or(0)
    );
    match status {
        Some(s) => {
            println!(
                "  sessions:   {} ({} running)",
                s["sessions"]["total"].as_u64().unwrap_or(0),
                s["sessions"]["running"].as_u64().unwrap_or(0)
            );
            println!(
                "  queue:      {}/{}, workers {}/{} busy, pid {}",
                s["queue"]["depth"].as_u64().unwrap_or(0),
                s["queue"]["capacity"].as_u64().unwrap_or(0),
                s["workers"]["busy"].as_u64().unwrap_or(0),
                s["workers"]["total"].as_u64().unwrap_or(0),
                s["pid"].as_u64().unwrap_or(0)
            );
        }
        None => println!(
            "  (no status: {}; sessions and queue need the API token, see --token)",
            status_error.unwrap_or_default()
        ),
    }
    if let Some(problems) = h["problems"].as_array() {
        for p in problems {
            println!("  problem:    {}", p.as_str().unwrap_or(""));
        }
    }
    Ok(EXIT_OK)
}

fn human_secs(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{}m", s / 3600, s / 60 % 60),
        _ => format!("{}d{}h", s / 86400, s / 3600 % 24),
    }
}

struct ClientFlags {
    client: Client,
    json: bool,
}

fn client_flags(args: &mut Arguments) -> Result<ClientFlags, CliError> {
    let path = config_flag(args)?;
    let agent_url: Option<String> = args.opt_value_from_str("--agent")?;
    let token: Option<String> = args.opt_value_from_str("--token")?;
    let json = args.contains("--json");
    Ok(ClientFlags {
        client: Client::new(agent_url, token, path.as_deref())?,
        json,
    })
}

fn key_values(args: &mut Arguments, key: &'static str) -> Result<Map<String, Value>, CliError> {
    let mut out = Map::new();
    for kv in args.values_from_str::<_, String>(key)? {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("{key} {kv:?}: use KEY=VALUE")))?;
        out.insert(k.to_string(), Value::from(v));
    }
    Ok(out)
}

/// A map as a JSON value, or nothing when it is empty.
fn non_empty(m: Map<String, Value>) -> Option<Value> {
    (!m.is_empty()).then_some(Value::Object(m))
}

/// Prints a result: JSON, or `show` on success; a failure is an error.
fn report(result: Value, json_out: bool, show: impl FnOnce(&Value)) -> Result<i32, CliError> {
    let ok = result["status"] == "success";
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&result).unwrap_or_default()
        );
        return Ok(if ok { EXIT_OK } else { EXIT_FAILED });
    }
    if ok {
        show(&result["data"]);
        Ok(EXIT_OK)
    } else {
        Err(CliError::Failed(format!(
            "{} ({})",
            result["error"].as_str().unwrap_or("command failed"),
            result["status"].as_str().unwrap_or("failed")
        )))
    }
}

fn session(mut args: Arguments, help: bool, tail: Vec<String>) -> Result<i32, CliError> {
    let verb = args.subcommand()?;
    if help || verb.is_none() {
        print!("{SESSION_HELP}{CLIENT_OPTS}");
        return Ok(if help { EXIT_OK } else { EXIT_USAGE });
    }
    let verb = verb.unwrap_or_default();
    let flags = client_flags(&mut args)?;
    let (client, json_out) = (&flags.client, flags.json);
    match verb.as_str() {
        "create" => {
            let workspace = args
                .opt_value_from_str::<_, PathBuf>("--workspace")?
                .map(|w| {
                    std::path::absolute(&w)
                        .unwrap_or(w)
                        .to_string_lossy()
                        .into_owned()
                });
            let resources = non_empty(Map::from_iter(
                [
                    (
                        "memory",
                        args.opt_value_from_str::<_, String>("--memory")?
                            .map(Value::from),
                    ),
                    (
                        "cpus",
                        args.opt_value_from_str::<_, f64>("--cpus")?
                            .map(Value::from),
                    ),
                    (
                        "pids",
                        args.opt_value_from_str::<_, i64>("--pids")?
                            .map(Value::from),
                    ),
                ]
                .into_iter()
                .filter_map(|(k, v)| Some((k.to_string(), v?))),
            ));
            let ports: Vec<String> = args.values_from_str("--port")?;
            let mut params = Map::from_iter(
                [
                    (
                        "provider",
                        args.opt_value_from_str::<_, String>("--provider")?
                            .map(Value::from),
                    ),
                    (
                        "image",
                        args.opt_value_from_str::<_, String>("--image")?
                            .map(Value::from),
                    ),
                    ("workspace_path", workspace.map(Value::from)),
                    ("env", non_empty(key_values(&mut args, "--env")?)),
                    ("labels", non_empty(key_values(&mut args, "--label")?)),
                    ("ports", (!ports.is_empty()).then(|| json!(ports))),
                    ("resources", resources),
                    ("command", (!tail.is_empty()).then(|| json!(tail))),
                ]
                .into_iter()
                .filter_map(|(k, v)| Some((k.to_string(), v?))),
            );
            let id = need_free(&mut args, "session id")?;
            params.insert("session_id".into(), Value::from(id));
            finish(args)?;
            let r = client.command("session", "create", Value::Object(params), None)?;
            report(r, json_out, |d| print_sessions(std::slice::from_ref(d)))
        }
        "start" | "destroy" => {
            let id = need_free(&mut args, "session id")?;
            finish(args)?;
            no_tail(&tail)?;
            let r = client.command("session", &verb, json!({"session_id": id}), None)?;
            report(r, json_out, |d| {
                if verb == "destroy" {
                    let existed = d["existed"].as_bool().unwrap_or(false);
                    println!(
                        "{id}: {}",
                        if existed {
                            "destroyed"
                        } else {
                            "not there (nothing to do)"
                        }
                    );
                } else {
                    print_sessions(std::slice::from_ref(d));
                }
            })
        }
        "stop" => {
            let grace = opt_duration(&mut args, ["-g", "--grace"])?;
            let id = need_free(&mut args, "session id")?;
            finish(args)?;
            no_tail(&tail)?;
            let mut params = json!({"session_id": id});
            if let Some(g) = grace {
                params["timeout"] = Value::from(duration::format(g));
            }
            let r = client.command("session", "stop", params, None)?;
            report(r, json_out, |d| print_sessions(std::slice::from_ref(d)))
        }
        "list" => {
            let provider = provider_flag(&mut args)?;
            finish(args)?;
            no_tail(&tail)?;
            let params = provider
                .map(|p| json!({"provider": p}))
                .unwrap_or_else(|| json!({}));
            let r = client.command("session", "list", params, None)?;
            report(r, json_out, |d| {
                print_sessions(d.as_array().map(Vec::as_slice).unwrap_or(&[]))
            })
        }
        "exec" => exec(args, client, json_out, tail),
        other => Err(CliError::Usage(format!(
            "unknown session command {other:?}; see `vendetta session --help`"
        ))),
    }
}

fn provider_flag(args: &mut Arguments) -> Result<Option<String>, CliError> {
    let p: Option<String> = args.opt_value_from_str("--provider")?;
    if let Some(p) = &p {
        if ProviderKind::parse(p).is_none() {
            return Err(CliError::Usage(format!(
                "--provider {p:?}: use docker, lxc or qemu"
            )));
        }
    }
    Ok(p)
}

fn exec(
    mut args: Arguments,
    client: &Client,
    json_out: bool,
    tail: Vec<String>,
) -> Result<i32, CliError> {
    let env = key_values(&mut args, "--env")?;
    let workdir: Option<String> = args.opt_value_from_str(["-w", "--workdir"])?;
    let user: Option<String> = args.opt_value_from_str(["-u", "--user"])?;
    let timeout = opt_duration(&mut args, ["-t", "--timeout"])?;
    let stdin = args.contains(["-i", "--interactive"]);
    let id = need_free(&mut args, "session id")?;
    finish(args)?;
    if tail.is_empty() {
        return Err(CliError::Usage(
            "missing command: vendetta session exec ID -- COMMAND ARGS...".into(),
        ));
    }
    let mut params = json!({"session_id": id, "command": tail});
    if !env.is_empty() {
        params["env"] = Value::Object(env);
    }
    if let Some(w) = workdir {
        params["workdir"] = Value::from(w);
    }
    if let Some(u) = user {
        params["user"] = Value::from(u);
    }
    if let Some(t) = timeout {
        params["timeout"] = Value::from(duration::format(t));
    }
    if stdin {
        let mut input = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut input)
            .map_err(|e| CliError::Usage(format!("cannot read stdin for -i: {e}")))?;
        params["stdin"] = Value::from(input);
    }
    let r = if json_out {
        let r = client.command("session", "exec", params, None)?;
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
        r
    } else {
        use std::io::Write;
        // Output passes through as it arrives; the result follows.
        let mut streamed = false;
        let r = client.command_streaming("session", "exec", params, |stream, data| {
            streamed = true;
            let _ = match stream {
                "stderr" => std::io::stderr().write_all(data.as_bytes()),
                _ => std::io::stdout()
                    .write_all(data.as_bytes())
                    .and_then(|_| std::io::stdout().flush()),
            };
        })?;
        let d = &r["data"];
        if !streamed {
            // A stored result (repeated id) comes whole.
            let _ = std::io::stdout().write_all(d["stdout"].as_str().unwrap_or("").as_bytes());
            let _ = std::io::stderr().write_all(d["stderr"].as_str().unwrap_or("").as_bytes());
        }
        if d["stdout_truncated"] == true || d["stderr_truncated"] == true {
            eprintln!("vendetta: output was cut at the agent's limits.max_output");
        }
        r
    };
    match r["status"].as_str() {
        Some("success") => Ok(r["data"]["exit_code"]
            .as_i64()
            .map(|c| c as i32)
            .unwrap_or(EXIT_FAILED)),
        Some("timeout") => {
            eprintln!("vendetta: {}", r["error"].as_str().unwrap_or("timed out"));
            Ok(EXIT_TIMEOUT)
        }
        _ => Err(CliError::Failed(
            r["error"].as_str().unwrap_or("exec failed").to_string(),
        )),
    }
}

fn service(mut args: Arguments, help: bool) -> Result<i32, CliError> {
    let verb = args.subcommand()?;
    if help || verb.is_none() {
        print!("{SERVICE_HELP}{CLIENT_OPTS}");
        return Ok(if help { EXIT_OK } else { EXIT_USAGE });
    }
    let flags = client_flags(&mut args)?;
    match verb.as_deref() {
        Some("list") => {
            let provider = provider_flag(&mut args)?;
            finish(args)?;
            let params = provider
                .map(|p| json!({"provider": p}))
                .unwrap_or_else(|| json!({}));
            let r = flags.client.command("service", "list", params, None)?;
            report(r, flags.json, |d| {
                print_services(d.as_array().map(Vec::as_slice).unwrap_or(&[]))
            })
        }
        Some("status") => {
            let id = need_free(&mut args, "session id")?;
            finish(args)?;
            let r = flags
                .client
                .command("service", "status", json!({"session_id": id}), None)?;
            report(r, flags.json, |d| print_services(std::slice::from_ref(d)))
        }
        Some(other) => Err(CliError::Usage(format!(
            "unknown service command {other:?}; see `vendetta service --help`"
        ))),
        None => unreachable!("handled above"),
    }
}

fn system(mut args: Arguments, help: bool) -> Result<i32, CliError> {
    let verb = args.subcommand()?;
    if help || verb.is_none() {
        print!("{SYSTEM_HELP}{CLIENT_OPTS}");
        return Ok(if help { EXIT_OK } else { EXIT_USAGE });
    }
    let verb = verb.unwrap_or_default();
    if !matches!(verb.as_str(), "status" | "info" | "health") {
        return Err(CliError::Usage(format!(
            "unknown system command {verb:?}; see `vendetta system --help`"
        )));
    }
    let flags = client_flags(&mut args)?;
    finish(args)?;
    let r = flags.client.command("system", &verb, json!({}), None)?;
    let healthy = verb != "health" || r["data"]["status"] != "down";
    let code = report(r, flags.json, |d| print_doc(d, ""))?;
    Ok(if code == EXIT_OK && !healthy {
        EXIT_FAILED
    } else {
        code
    })
}

/// Prints a JSON document as indented `key: value` lines.
fn print_doc(v: &Value, indent: &str) {
    if let Value::Object(m) = v {
        for (k, val) in m {
            match val {
                Value::Object(inner) if !inner.is_empty() => {
                    println!("{indent}{k}:");
                    print_doc(val, &format!("{indent}  "));
                }
                Value::Array(items) => {
                    let parts: Vec<String> = items.iter().map(scalar).collect();
                    println!("{indent}{k}: {}", parts.join(", "));
                }
                _ => println!("{indent}{k}: {}", scalar(val)),
            }
        }
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Object(m) if m.is_empty() => "-".into(),
        other => other.to_string(),
    }
}

fn ports_text(ports: &Value) -> String {
    ports
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{}->{k}", scalar(v)))
                .collect::<Vec<_>>()
                .join(",")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "-".into())
}

fn print_sessions(items: &[Value]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|s| {
            vec![
                scalar(&s["id"]),
                scalar(&s["provider"]),
                scalar(&s["status"]),
                scalar(&s["image"]),
                ports_text(&s["ports"]),
                scalar(&s["created"]),
            ]
        })
        .collect();
    print_table(
        &["ID", "PROVIDER", "STATUS", "IMAGE", "PORTS", "CREATED"],
        &rows,
    );
}

fn print_services(items: &[Value]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|s| {
            vec![
                scalar(&s["id"]),
                scalar(&s["provider"]),
                ports_text(&s["ports"]),
                scalar(&s["health"]["status"]),
                scalar(&s["health"]["detail"]),
            ]
        })
        .collect();
    print_table(&["ID", "PROVIDER", "PORTS", "HEALTH", "DETAIL"], &rows);
}

fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let text: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}
