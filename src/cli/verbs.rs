//! `vendetta session|service|system …`: a client of the local API. Each
//! verb sends one command and prints its result.

use super::client::Client;
use super::render::{print_doc, print_services, print_sessions};
use super::{
    config_flag, finish, need_free, no_tail, opt_duration, CliError, EXIT_FAILED, EXIT_OK,
    EXIT_TIMEOUT, EXIT_USAGE,
};
use crate::protocol::{duration, ProviderKind};
use pico_args::Arguments;
use serde_json::{json, Map, Value};
use std::path::PathBuf;

const CLIENT_OPTS: &str = "
Client options:
  -c, --config FILE   config file (for listen and token)
      --agent URL     the agent's local API, http://HOST:PORT or unix:/PATH
                      (env VENDETTA_AGENT_URL)
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

/// Says so on stderr when the agent ran the command but could not store
/// its result (code `not_durable`): a crash before it is stored would
/// report the command as interrupted.
fn warn_not_durable(result: &Value) {
    if result["code"] == "not_durable" {
        eprintln!(
            "vendetta: warning: {}",
            result["error"]
                .as_str()
                .unwrap_or("the result could not be stored")
        );
    }
}

/// Prints a result: JSON, or `show` on success; a failure is an error.
fn report(result: Value, json_out: bool, show: impl FnOnce(&Value)) -> Result<i32, CliError> {
    warn_not_durable(&result);
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

pub(super) fn session(mut args: Arguments, help: bool, tail: Vec<String>) -> Result<i32, CliError> {
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
                    ("memory", opt::<String>(&mut args, "--memory")?),
                    ("cpus", opt::<f64>(&mut args, "--cpus")?),
                    ("pids", opt::<i64>(&mut args, "--pids")?),
                ]
                .into_iter()
                .filter_map(|(k, v)| Some((k.to_string(), v?))),
            ));
            let ports: Vec<String> = args.values_from_str("--port")?;
            let mut params = Map::from_iter(
                [
                    ("provider", opt::<String>(&mut args, "--provider")?),
                    ("image", opt::<String>(&mut args, "--image")?),
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
    warn_not_durable(&r);
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

pub(super) fn service(mut args: Arguments, help: bool) -> Result<i32, CliError> {
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

pub(super) fn system(mut args: Arguments, help: bool) -> Result<i32, CliError> {
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

/// An optional flag's value as JSON, for a command's params.
fn opt<T>(args: &mut Arguments, flag: &'static str) -> Result<Option<Value>, CliError>
where
    T: std::str::FromStr + Into<Value>,
    T::Err: std::fmt::Display,
{
    Ok(args.opt_value_from_str::<_, T>(flag)?.map(Into::into))
}
