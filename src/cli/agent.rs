//! `vendetta agent …`: run, stop, inspect and configure the agent on this
//! host, and join a coordination server.

use super::client::{Client, ClientError};
use super::{
    config_flag, finish, need_free, no_tail, opt_duration, CliError, EXIT_NOT_RUNNING, EXIT_OK,
    EXIT_USAGE,
};
use crate::config::{self, ConfigError};
use crate::protocol::duration;
use pico_args::Arguments;
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

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
Usage: vendetta agent start [--config FILE] [--listen ADDR]

Runs the agent in the foreground until SIGTERM or SIGINT. Logs go to stderr.
With no config file the agent runs offline on its built-in defaults, with
the local API on 127.0.0.1:8080.

Options:
  -c, --config FILE   config file
  -l, --listen ADDR   where the local API listens, over the config's
                      `listen`: 127.0.0.1:8080, unix:/run/vendetta/agent.sock,
                      or one of each separated by a comma
  -h, --help          this help

Environment: VENDETTA_CONFIG, VENDETTA_COORD_URL, VENDETTA_AUTH_TOKEN,
VENDETTA_LISTEN, VENDETTA_PROVIDER, VENDETTA_LOG_LEVEL, VENDETTA_DEBUG_PPROF.
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
      --agent URL     the agent's API: http://HOST:PORT or unix:/PATH
                      (default: the config's listen, its socket first)
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

pub(super) fn agent(mut args: Arguments, help: bool, tail: Vec<String>) -> Result<i32, CliError> {
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
            let listen: Option<String> = args.opt_value_from_str(["-l", "--listen"])?;
            finish(args)?;
            no_tail(&tail)?;
            start(path, listen)
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
                    config::check(&path, &cfg).map_err(CliError::Config)?;
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

fn start(path: Option<PathBuf>, listen: Option<String>) -> Result<i32, CliError> {
    if let Some(l) = &listen {
        config::Listen::parse_list(l).map_err(|e| CliError::Usage(format!("--listen: {e}")))?;
    }
    // The flag wins over VENDETTA_LISTEN and the file.
    let loaded = config::load_with(path.as_deref(), |k| match (k, &listen) {
        ("VENDETTA_LISTEN", Some(l)) => Some(l.clone()),
        _ => std::env::var(k).ok(),
    })
    .map_err(CliError::Config)?;
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
